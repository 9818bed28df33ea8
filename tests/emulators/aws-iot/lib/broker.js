// SPDX-License-Identifier: MIT
// The AWS IoT message broker in front of the shadow service: MQTT 3.1.1 (aedes) over mutual
// TLS, the registry's policy at connect, publish and subscribe, the rules for reserved topics,
// lifecycle events, one connection per client id, and a log of connections for the tests.
'use strict'

const crypto = require('crypto')
const tls = require('tls')
const aedesFactory = require('aedes')
const model = require('./shadow-model')
const { allowsClientId, allowsThing, certificateIdOfDer } = require('./registry')

const MAX_PAYLOAD = 128 * 1024 // message broker quota: 128 KB per PUBLISH
const MAX_CLIENT_ID_BYTES = 128
const LOG_LIMIT = 10000

// Why a connection ended, as lifecycle events name it (life-cycle-events.md).
const REASON = Object.freeze({
  CLIENT_INITIATED: 'CLIENT_INITIATED_DISCONNECT',
  CLIENT_ERROR: 'CLIENT_ERROR',
  CONNECTION_LOST: 'CONNECTION_LOST',
  DUPLICATE: 'DUPLICATE_CLIENTID',
  AUTH: 'AUTH_ERROR',
  KEEPALIVE: 'MQTT_KEEP_ALIVE_TIMEOUT',
  API: 'API_INITIATED_DISCONNECT',
  SERVER: 'SERVER_INITIATED_DISCONNECT'
})

class Broker {
  constructor ({ registry, tlsOptions, log }) {
    this.registry = registry
    this.logLine = log || (() => {})
    this.connections = [] // the connection log
    this.seq = 0
    this.nextConnId = 1
    this.versionNumbers = new Map() // client id -> lifecycle versionNumber of its last connection
    this.refusal = null // {until (ms or null: until lifted), returnCode, mode}
    this.service = null // set by the caller: a ShadowService

    this.aedes = aedesFactory({
      maxClientsIdLength: MAX_CLIENT_ID_BYTES,
      preConnect: (client, packet, cb) => this.preConnect(client, packet, cb),
      authenticate: (client, username, password, cb) => this.authenticate(client, username, password, cb),
      authorizePublish: (client, packet, cb) => this.authorizePublish(client, packet, cb),
      authorizeSubscribe: (client, sub, cb) => this.authorizeSubscribe(client, sub, cb)
    })
    this.aedes.on('clientReady', (client) => this.onReady(client))
    this.aedes.on('clientDisconnect', (client) => this.onGone(client))
    this.aedes.on('keepaliveTimeout', (client) => this.setReason(client, REASON.KEEPALIVE))
    this.aedes.on('clientError', (client, err) => this.onClientError(client, err))
    this.aedes.on('connectionError', (client, err) => this.onClientError(client, err))

    this.server = tls.createServer(Object.assign({
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2'
    }, tlsOptions))
    this.server.on('secureConnection', (socket) => this.onSecureConnection(socket))
    this.server.on('tlsClientError', (err, socket) => {
      // A client certificate that does not verify is refused after the handshake, by closing
      // (Node checks it there); the socket still says why.
      const reason = (socket && socket.authorizationError) || err.code || err.message
      this.record({ event: 'tls-refused', reason, detail: err.message, remote: remoteOf(socket) })
    })
  }

  listen (port, host) {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => {
        this.server.removeListener('error', reject)
        resolve(this.server.address().port)
      })
    })
  }

  close () {
    for (const c of Object.values(this.aedes.clients)) this.setReason(c, REASON.SERVER)
    return new Promise((resolve) => {
      this.server.close()
      this.aedes.close(() => resolve())
    })
  }

  /** Appends to the connection log (and the stderr log). */
  record (entry) {
    const e = Object.assign({ seq: ++this.seq, time: Date.now() }, entry)
    this.connections.push(e)
    if (this.connections.length > LOG_LIMIT) this.connections.shift()
    this.logLine(JSON.stringify(e))
    return e
  }

  onSecureConnection (socket) {
    // AWS refuses connections without the SNI extension (mqtt.md).
    if (!socket.servername) {
      this.record({
        event: 'tls-refused', reason: 'NO_SNI', detail: 'no server name indication', remote: remoteOf(socket)
      })
      socket.destroy()
      return
    }
    socket.setNoDelay(true)
    this.aedes.handle(socket)
  }

  // --- connect ------------------------------------------------------------------------------

  refuse (client, packet, cb, reason, returnCode, mode) {
    const peer = peerOf(client)
    this.record({
      event: 'refused',
      clientId: packet.clientId,
      reason,
      returnCode: mode === 'close' ? null : returnCode,
      certificateId: peer.certificateId,
      commonName: peer.commonName,
      remote: remoteOf(client.conn)
    })
    if (mode === 'close') {
      client.conn.destroy()
    } else {
      // aedes writes only the codes of MQTT 3.1.1; AWS answers 7 where the spec says 5
      // (mqtt.md, "AWS IoT differences"), so the CONNACK is written here.
      const conn = client.conn
      conn.end(Buffer.from([0x20, 0x02, 0x00, returnCode]))
      setTimeout(() => conn.destroy(), 2000).unref() // a peer that never closes its side
    }
    cb(null, false)
  }

  preConnect (client, packet, cb) {
    const r = this.refusal
    if (r && (r.until === null || Date.now() < r.until)) {
      return this.refuse(client, packet, cb, 'refusal window', r.returnCode, r.mode)
    }
    if (r) this.refusal = null

    const peer = peerOf(client)
    const entry = this.registry.lookup(peer.certificate)
    if (!entry) return this.refuse(client, packet, cb, 'certificate not registered', 7)
    const clientId = packet.clientId || ''
    if (clientId === '' || Buffer.byteLength(clientId) > MAX_CLIENT_ID_BYTES) {
      return this.refuse(client, packet, cb, 'client id empty or longer than 128 bytes', 2)
    }
    if (!allowsClientId(entry, clientId)) {
      return this.refuse(client, packet, cb, 'client id not allowed by policy', 7)
    }
    const will = packet.will
    if (will && will.topic.startsWith('$')) {
      const op = model.parseRequestTopic(will.topic)
      if (will.retain) return this.refuse(client, packet, cb, 'retained will on a reserved topic', 7)
      if (!op || !allowsThing(entry, op.thing)) {
        return this.refuse(client, packet, cb, 'will on a reserved topic not allowed by policy', 7)
      }
    }
    if (will && will.qos === 2) return this.refuse(client, packet, cb, 'will with QoS 2', 7)

    // Grows with each connection of a client id; connect and disconnect events share it.
    const versionNumber = this.versionNumbers.has(clientId) ? this.versionNumbers.get(clientId) + 1 : 0
    this.versionNumbers.set(clientId, versionNumber)
    client.aws = {
      connId: this.nextConnId++,
      entry,
      certificateId: peer.certificateId,
      commonName: peer.commonName,
      sessionIdentifier: crypto.randomBytes(16).toString('hex'),
      versionNumber,
      remote: remoteOf(client.conn),
      reason: null
    }
    cb(null, true)
  }

  // Runs after aedes's own CONNECT checks, just before it closes an older connection of the
  // same client id: that one ends as DUPLICATE_CLIENTID.
  authenticate (client, username, password, cb) {
    const old = this.aedes.clients[client.id]
    if (old && old !== client) this.setReason(old, REASON.DUPLICATE)
    cb(null, true)
  }

  onReady (client) {
    const a = client.aws
    if (!a) return
    a.connectedAt = Date.now()
    this.record({
      event: 'connected',
      clientId: client.id,
      connId: a.connId,
      certificateId: a.certificateId,
      commonName: a.commonName,
      cleanSession: client.clean,
      remote: a.remote
    })
    this.lifecycle(client, 'connected')
  }

  onGone (client) {
    const a = client.aws
    if (!a) return
    let reason = a.reason
    if (!reason) reason = client._disconnected ? REASON.CLIENT_INITIATED : REASON.CONNECTION_LOST
    a.reason = reason
    this.record({ event: 'disconnected', clientId: client.id, connId: a.connId, reason })
    this.lifecycle(client, 'disconnected')
  }

  onClientError (client, err) {
    if (!client || !client.aws) return
    const lost = ['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ERR_STREAM_PREMATURE_CLOSE'].includes(err && err.code)
    this.setReason(client, lost ? REASON.CONNECTION_LOST : REASON.CLIENT_ERROR)
  }

  setReason (client, reason) {
    if (client.aws && !client.aws.reason) client.aws.reason = reason
  }

  /** Publishes $aws/events/presence/{connected,disconnected}/{clientId}. */
  lifecycle (client, eventType) {
    // "Client IDs that contain # or + do not receive lifecycle events."
    if (/[#+]/.test(client.id)) return
    const a = client.aws
    const ev = {
      clientId: client.id,
      timestamp: Date.now(),
      eventType,
      sessionIdentifier: a.sessionIdentifier,
      principalIdentifier: a.certificateId
    }
    if (eventType === 'connected') {
      ev.ipAddress = a.remote
    } else {
      ev.clientInitiatedDisconnect = a.reason === REASON.CLIENT_INITIATED
      ev.disconnectReason = a.reason
    }
    ev.versionNumber = a.versionNumber
    this.publishJson(`$aws/events/presence/${eventType}/${client.id}`, ev)
  }

  /** Sends one message to subscribers as the service would (QoS 1, not retained). */
  publishJson (topic, obj) {
    this.publishRaw(topic, Buffer.from(JSON.stringify(obj)), 1, false)
  }

  publishRaw (topic, payload, qos, retain) {
    this.aedes.publish({ cmd: 'publish', topic, payload, qos, retain, dup: false }, (err) => {
      if (err) this.logLine(JSON.stringify({ event: 'publish-error', topic, error: err.message }))
    })
  }

  /** Closes a client's connection as the broker would, with a lifecycle reason. */
  disconnect (client, reason) {
    this.setReason(client, reason)
    client.close()
  }

  /** Drops the connections of clientId (all connections when it is undefined). */
  drop (clientId) {
    let n = 0
    for (const c of Object.values(this.aedes.clients)) {
      if (clientId === undefined || c.id === clientId) {
        this.disconnect(c, REASON.API)
        n++
      }
    }
    return n
  }

  /** Drops the connections made with a certificate that was just revoked. */
  dropEntry (entry) {
    let n = 0
    for (const c of Object.values(this.aedes.clients)) {
      if (c.aws && c.aws.entry === entry) {
        this.disconnect(c, REASON.AUTH)
        n++
      }
    }
    return n
  }

  clients () {
    return Object.values(this.aedes.clients).filter((c) => c.aws).map((c) => ({
      clientId: c.id,
      connId: c.aws.connId,
      certificateId: c.aws.certificateId,
      commonName: c.aws.commonName,
      cleanSession: c.clean,
      subscriptions: Object.keys(c.subscriptions),
      connectedAt: c.aws.connectedAt || null
    }))
  }

  // --- publish and subscribe -----------------------------------------------------------------

  forbid (client, reason, what, cb) {
    this.record({ event: 'forbidden', clientId: client.id, connId: client.aws.connId, reason, what })
    this.setReason(client, reason === 'client error' ? REASON.CLIENT_ERROR : REASON.AUTH)
    cb(new Error(`${what}: ${reason}`))
  }

  authorizePublish (client, packet, cb) {
    if (!client) return cb(null)
    const topic = packet.topic
    if (client.closed) {
      // A will, published after the connection ended: delivered to subscribers, never handled
      // by the shadow service (device-shadow-comms-app.md, "Detecting a device is connected").
      return cb(null)
    }
    const entry = client.aws && client.aws.entry
    if (!entry) return cb(new Error('not connected'))
    if (packet.qos === 2) return this.forbid(client, 'client error', `publish QoS 2 to ${topic}`, cb)
    if (packet.payload && packet.payload.length > MAX_PAYLOAD) {
      return this.forbid(client, 'client error', `publish of ${packet.payload.length} bytes to ${topic}`, cb)
    }
    if (!topic.startsWith('$')) return cb(null)

    if (packet.retain) return this.forbid(client, 'retained publish to a reserved topic', topic, cb)
    const op = model.parseRequestTopic(topic)
    if (!op) return this.forbid(client, 'publish to a reserved topic that takes no publishes', topic, cb)
    if (!allowsThing(entry, op.thing)) return this.forbid(client, 'thing not allowed by policy', topic, cb)
    cb(null)
    const payload = packet.payload
    const origin = { clientId: client.id, connId: client.aws.connId }
    setImmediate(() => this.service.request(op, payload, origin))
  }

  authorizeSubscribe (client, sub, cb) {
    const entry = client.aws && client.aws.entry
    if (!entry) return cb(new Error('not connected'))
    if (sub.qos === 2) return this.forbid(client, 'client error', `subscribe QoS 2 to ${sub.topic}`, cb)
    const t = sub.topic.split('/')
    if (t[0].startsWith('$')) {
      let ok = false
      if (t[0] === '$aws' && t[1] === 'things' && t.length >= 3) {
        ok = (t[2] === '+' || t[2] === '#') ? entry.things.includes('*') : allowsThing(entry, t[2])
      } else if (t[0] === '$aws' && t[1] === 'events') {
        ok = entry.events
      }
      if (!ok) {
        return this.forbid(client, 'topic filter not allowed by policy', `subscribe to ${sub.topic}`, cb)
      }
    }
    cb(null, sub)
  }
}

function remoteOf (socket) {
  return (socket && socket.remoteAddress) || null
}

function peerOf (client) {
  const conn = client.conn
  const cert = conn && typeof conn.getPeerCertificate === 'function' ? conn.getPeerCertificate() : null
  if (!cert || !cert.raw) return { certificate: null, certificateId: null, commonName: null }
  return {
    certificate: cert,
    certificateId: certificateIdOfDer(cert.raw),
    commonName: (cert.subject && cert.subject.CN) || null
  }
}

module.exports = { Broker, REASON }
