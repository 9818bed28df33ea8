// SPDX-License-Identifier: MIT
// The device side: MQTT 3.1.1 over TLS as IoT Hub speaks it (iot-mqtt-connect-to-iot-hub.md),
// on aedes. IoT Hub is no general broker: nothing a device publishes is routed to anyone.
// Every message a device receives is written to its own connection (aedes' client.publish);
// authorizeForward lets only those through, so broker routing delivers nothing, ever.
'use strict'

const crypto = require('crypto')
const tls = require('tls')
const Aedes = require('aedes')
const sas = require('./sas')
const { parseSection, TwinError } = require('./twin')
const errors = require('./errors')

const RES_FILTER = '$iothub/twin/res/#'
const DESIRED_FILTER = '$iothub/twin/PATCH/properties/desired/#'
const MAX_TIMER_MS = 2147483647

function topicMatches (filter, topic) {
  const f = filter.split('/')
  const t = topic.split('/')
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true
    if (i >= t.length) return false
    if (f[i] !== '+' && f[i] !== t[i]) return false
  }
  return f.length === t.length
}

// "$iothub/twin/GET/?$rid=1" -> { path: "$iothub/twin/GET/", props: { $rid: "1" } }; values
// stay as received, since the answer echoes $rid.
function splitTopic (topic) {
  const q = topic.indexOf('?')
  if (q < 0) return { path: topic, props: {} }
  const props = {}
  for (const part of topic.slice(q + 1).split('&')) {
    if (!part) continue
    const eq = part.indexOf('=')
    if (eq < 0) props[part] = ''
    else props[part.slice(0, eq)] = part.slice(eq + 1)
  }
  return { path: topic.slice(0, q), props }
}

// The filters a device or module may subscribe to; anything else gets SUBACK 0x80.
function allowedFilters (emu) {
  const own = emu.moduleId
    ? [`devices/${emu.deviceId}/modules/${emu.moduleId}/#`, `devices/${emu.deviceId}/modules/${emu.moduleId}/inputs/#`]
    : [`devices/${emu.deviceId}/messages/devicebound/#`]
  return [RES_FILTER, DESIRED_FILTER, '$iothub/methods/POST/#', ...own]
}

function thumbprints (raw) {
  return [
    crypto.createHash('sha1').update(raw).digest('hex').toUpperCase(),
    crypto.createHash('sha256').update(raw).digest('hex').toUpperCase()
  ]
}

class DeviceSide {
  // tlsOptions: { key, cert, ca? } (ca: the CAs that sign device certificates)
  constructor ({ registry, journal, faults, tlsOptions }) {
    this.registry = registry
    this.journal = journal
    this.faults = faults
    this.connSeq = 0
    this.direct = new WeakSet() // payloads of the messages written by the emulator itself
    this.broker = Aedes({
      authenticate: this.authenticate.bind(this),
      authorizePublish: this.authorizePublish.bind(this),
      authorizeSubscribe: this.authorizeSubscribe.bind(this),
      authorizeForward: (client, packet) => (this.direct.has(packet.payload) ? packet : null)
    })
    this.broker.on('client', c => this.onConnected(c))
    this.broker.on('clientDisconnect', c => this.onClosed(c))
    this.broker.on('clientError', (c, err) => { if (c.emu) c.emu.lastError = err.message })
    this.broker.on('connectionError', (c, err) => { if (c.emu) c.emu.lastError = err.message })
    this.server = tls.createServer({
      key: tlsOptions.key,
      cert: tlsOptions.cert,
      ca: tlsOptions.ca,
      requestCert: true,
      rejectUnauthorized: false
    }, conn => this.accept(conn))
    this.server.on('tlsClientError', () => this.journal.count('tlsErrors'))
    registry.on('removed', id => this.drop(id.key, 'identity deleted'))
    registry.on('disabled', id => this.drop(id.key, 'device disabled'))
  }

  // "When a device app subscribes to a topic with QoS 2, IoT Hub grants maximum QoS level
  // 1": aedes grants what was asked before authorizeSubscribe runs, so the request itself is
  // lowered as it comes off the wire.
  accept (conn) {
    // No Nagle, as for every broker the tests use (mosquitto's set_tcp_nodelay): otherwise an
    // answer waits up to 40 ms for the device's delayed ACK, and timings measure that.
    conn.setNoDelay(true)
    const client = this.broker.handle(conn)
    client._parser.prependListener('packet', packet => {
      if (packet.cmd !== 'subscribe') return
      for (const sub of packet.subscriptions) sub.qos = Math.min(sub.qos, 1)
    })
  }

  listen (port, host) {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => resolve(this.server.address().port))
    })
  }

  close () {
    return new Promise(resolve => {
      this.broker.close(() => this.server.close(() => resolve()))
    })
  }

  authenticate (client, username, password, done) {
    const emu = { conn: ++this.connSeq, clientId: client.id, closeReason: null, timers: new Set() }
    client.emu = emu
    const refuse = (code, reason) => {
      this.journal.count('refusals')
      this.journal.connection({ event: 'refuse', conn: emu.conn, clientId: client.id, code, reason })
      const e = new Error(reason)
      e.returnCode = code
      done(e, false)
    }
    const code = this.faults.refusing()
    if (code) return refuse(code, 'refused by the refuse control')

    const slash = client.id.indexOf('/')
    const deviceId = slash < 0 ? client.id : client.id.slice(0, slash)
    const moduleId = slash < 0 ? null : client.id.slice(slash + 1)
    const id = this.registry.get(deviceId, moduleId)
    if (!id) return refuse(5, `unknown ${moduleId ? 'module' : 'device'} '${client.id}'`)

    // {HostName}/{deviceId}[/{moduleId}]/?api-version=...[&more]; the host name compares
    // case-insensitively, the ids (case-sensitive in IoT Hub) exactly.
    const host = this.registry.hostName
    const user = username || ''
    const rest = `/${client.id}/?`
    if (user.slice(0, host.length).toLowerCase() !== host.toLowerCase() || !user.startsWith(rest, host.length)) {
      return refuse(5, `user name '${user.slice(0, 200)}' is not '${host}${rest}api-version=...'`)
    }
    if (!/(^|&)api-version=[^&]+/.test(user.slice(host.length + rest.length))) {
      return refuse(5, 'user name without api-version')
    }

    let se = null
    if (password && password.length) {
      const r = this.checkToken(id, password.toString('utf8'))
      if (r.error) return refuse(5, r.error)
      se = r.se
    } else {
      const err = this.checkCertificate(id, client.conn)
      if (err) return refuse(5, err)
    }
    if (id.status !== 'enabled') return refuse(3, 'device disabled')

    const old = this.broker.clients[client.id]
    if (old && old.emu && !old.closed) {
      old.emu.closeReason = { event: 'drop', reason: `replaced by connection ${emu.conn}` }
    }
    Object.assign(emu, { deviceId, moduleId, key: id.key, se, clean: client.clean })
    done(null, true)
  }

  // Returns { se } for a good token, { error } naming the problem otherwise.
  checkToken (id, token) {
    let t
    try {
      t = sas.parse(token)
    } catch (e) {
      return { error: `password: ${e.message}` }
    }
    if (t.resource.toLowerCase() !== this.registry.resourceOf(id).toLowerCase()) {
      return { error: `token resource '${t.resource}' is not '${this.registry.resourceOf(id)}'` }
    }
    let keys
    if (t.skn) {
      const p = this.registry.policies.get(t.skn)
      if (!p || !p.rights.includes('DeviceConnect')) return { error: `no policy '${t.skn}' with DeviceConnect` }
      keys = [p.primaryKey, p.secondaryKey]
    } else {
      if (id.authenticationType !== 'sas') return { error: `'${id.key}' authenticates with ${id.authenticationType} certificates` }
      keys = [id.primaryKey, id.secondaryKey]
    }
    if (!keys.some(k => sas.signatureMatches(t, k))) return { error: 'token signature does not match the key' }
    if (sas.expired(t)) return { error: 'token expired' }
    return { se: t.se }
  }

  checkCertificate (id, socket) {
    if (id.authenticationType === 'sas') return 'no password (SAS token) given'
    const cert = socket.getPeerCertificate ? socket.getPeerCertificate() : null
    if (!cert || !cert.raw) return 'no client certificate'
    const now = Date.now()
    if (now < Date.parse(cert.valid_from) || now > Date.parse(cert.valid_to)) return 'client certificate not valid now'
    if (id.authenticationType === 'selfSigned') {
      const got = thumbprints(cert.raw)
      const want = [id.primaryThumbprint, id.secondaryThumbprint].filter(Boolean)
      if (!got.some(g => want.includes(g))) return 'client certificate thumbprint does not match'
      return null
    }
    if (!socket.authorized) return `client certificate not signed by a known CA: ${socket.authorizationError}`
    const cn = cert.subject && cert.subject.CN
    if (cn !== id.key && cn !== id.deviceId) return `client certificate CN '${cn}' is not '${id.key}'`
    return null
  }

  onConnected (client) {
    const emu = client.emu
    const id = this.registry.get(emu.deviceId, emu.moduleId)
    if (id) {
      id.connected = true
      id.lastActivityTime = new Date().toISOString()
    }
    if (emu.se !== null) this.armExpiry(client)
    this.journal.count('connects')
    this.journal.flight(emu.conn, client.id)
    this.journal.connection({
      event: 'connect',
      conn: emu.conn,
      clientId: client.id,
      deviceId: emu.deviceId,
      moduleId: emu.moduleId,
      clean: client.clean,
      tokenExpiry: emu.se === null ? null : new Date(emu.se * 1000).toISOString()
    })
  }

  // IoT Hub closes the connection when its token expires (iot-hub-dev-guide-sas.md).
  armExpiry (client) {
    const ms = client.emu.se * 1000 - Date.now()
    const t = setTimeout(() => {
      client.emu.timers.delete(t)
      if (client.emu.se * 1000 > Date.now()) return this.armExpiry(client)
      client.emu.closeReason = { event: 'token-expired', reason: 'SAS token expired' }
      client.close()
    }, Math.max(0, Math.min(ms, MAX_TIMER_MS)))
    client.emu.timers.add(t)
  }

  onClosed (client) {
    const emu = client.emu
    if (!emu || emu.closed) return
    emu.closed = true
    for (const t of emu.timers) clearTimeout(t)
    emu.timers.clear()
    for (const kind of ['get', 'reported']) {
      const f = this.journal.flight(emu.conn, client.id)[kind]
      f.current = 0
    }
    const id = this.registry.get(emu.deviceId, emu.moduleId)
    if (id && !this.broker.clients[client.id]) id.connected = false
    const r = emu.closeReason ||
      { event: 'disconnect', reason: client._disconnected ? 'client sent DISCONNECT' : (emu.lastError || 'connection closed by the client') }
    this.journal.connection({ ...r, conn: emu.conn, clientId: client.id, deviceId: emu.deviceId, moduleId: emu.moduleId })
  }

  // Closes the identity's connection; false when it had none.
  drop (key, reason) {
    const c = this.broker.clients[key]
    if (!c || c.closed) return false
    c.emu.closeReason = { event: 'drop', reason }
    c.close()
    return true
  }

  connections () {
    return Object.values(this.broker.clients).filter(c => c.emu && !c.closed).map(c => ({
      conn: c.emu.conn,
      clientId: c.id,
      deviceId: c.emu.deviceId,
      moduleId: c.emu.moduleId,
      clean: c.clean,
      subscriptions: Object.keys(c.subscriptions),
      tokenExpiry: c.emu.se === null ? null : new Date(c.emu.se * 1000).toISOString()
    }))
  }

  authorizeSubscribe (client, sub, done) {
    const ok = client.emu && allowedFilters(client.emu).includes(sub.topic)
    this.journal.request({
      kind: 'subscribe',
      conn: client.emu && client.emu.conn,
      clientId: client.id,
      topic: sub.topic,
      granted: ok ? sub.qos : 128,
      // restored from a CleanSession 0 session rather than sent in a SUBSCRIBE
      restored: Boolean(client.connecting)
    })
    done(null, ok ? sub : null)
  }

  authorizePublish (client, packet, done) {
    // Wills are not delivered (there is no telemetry pipeline), not even the obsolete ones.
    if (!client || !client.emu || packet === client.will) return done(new Error('wills are not delivered'))
    const emu = client.emu
    const violation = reason => {
      emu.closeReason = { event: 'drop', reason }
      done(new Error(reason))
    }
    // "If a device app publishes a message with QoS 2, IoT Hub closes the network connection."
    if (packet.qos === 2) return violation('QoS 2 publish')
    // IoT Hub retains nothing.
    packet.retain = false
    const id = this.registry.get(emu.deviceId, emu.moduleId)
    if (id) id.lastActivityTime = new Date().toISOString()
    const topic = packet.topic
    if (topic.startsWith('$iothub/twin/')) {
      const err = this.twinRequest(client, topic, packet.payload)
      if (err) return violation(err)
    } else if (topic.startsWith(this.eventsPrefix(emu))) {
      this.journal.count('telemetry')
    } else if (topic.startsWith('$iothub/methods/res/')) {
      this.journal.count('methodResponses')
    } else {
      return violation(`publish to unsupported topic '${topic.slice(0, 200)}'`)
    }
    done(null)
  }

  eventsPrefix (emu) {
    return emu.moduleId
      ? `devices/${emu.deviceId}/modules/${emu.moduleId}/messages/events/`
      : `devices/${emu.deviceId}/messages/events/`
  }

  // Queues the answer to one twin request; returns a reason to close the connection or null.
  twinRequest (client, topic, payload) {
    const { path, props } = splitTopic(topic)
    let kind
    if (path === '$iothub/twin/GET/') kind = 'get'
    else if (path === '$iothub/twin/PATCH/properties/reported/') kind = 'reported'
    else return `publish to unsupported twin topic '${topic.slice(0, 200)}'`
    if (!props.$rid) return `twin request without $rid: '${topic.slice(0, 200)}'`
    const emu = client.emu
    this.journal.count(kind)
    this.journal.begin(emu.conn, client.id, kind)
    const body = Buffer.from(payload || '')
    const answer = () => {
      this.journal.end(emu.conn, client.id, kind)
      if (emu.closed) return
      this.answerTwin(client, kind, props.$rid, body)
    }
    const delay = this.faults.delays[kind]
    const t = setTimeout(() => { emu.timers.delete(t); answer() }, delay)
    emu.timers.add(t)
    return null
  }

  answerTwin (client, kind, rid, body) {
    const emu = client.emu
    const id = this.registry.get(emu.deviceId, emu.moduleId)
    const entry = { kind, conn: emu.conn, clientId: client.id, deviceId: emu.deviceId, moduleId: emu.moduleId, rid }
    let status, answer, version
    const fault = this.faults.take(kind)
    if (kind === 'reported') {
      try {
        entry.body = JSON.parse(body.toString('utf8'))
      } catch (e) {
        entry.body = body.toString('utf8').slice(0, 1000)
      }
    }
    if (fault) {
      status = fault.status
      answer = errors.mqttBody(status, fault.message || `injected ${status}`)
    } else if (!id) {
      status = 404
      answer = errors.mqttBody(404, 'identity deleted')
    } else if (kind === 'get') {
      status = 200
      answer = id.twin.mqttDocument()
    } else {
      try {
        const patch = parseSection(body.toString('utf8'), 'reported', { patch: true })
        version = id.twin.patchReported(patch)
        status = 204
        answer = null
      } catch (e) {
        if (!(e instanceof TwinError)) throw e
        status = e.status
        answer = errors.mqttBody(e.status, e.message, e.code)
      }
    }
    let topic = `$iothub/twin/res/${status}/?$rid=${rid}`
    if (version !== undefined) topic += `&$version=${version}`
    entry.status = status
    if (version !== undefined) entry.version = version
    if (answer && answer.errorCode) entry.error = answer
    entry.delivered = this.send(client, topic, answer === null ? '' : JSON.stringify(answer))
    this.journal.request(entry)
  }

  // Writes one message to this connection if it subscribed to a filter that matches; QoS
  // as granted. Returns whether it was written.
  send (client, topic, text) {
    if (client.closed) return false
    const sub = Object.entries(client.subscriptions).find(([f]) => topicMatches(f, topic))
    if (!sub) return false
    const payload = Buffer.from(text, 'utf8')
    this.direct.add(payload)
    client.publish({ topic, payload, qos: Math.min(sub[1].qos || 0, 1), retain: false }, () => {})
    return true
  }

  // A desired change for id: body is the patch (or the whole desired document after a
  // replace) without $version. Delivered only to a connected, subscribed device.
  notifyDesired (id, body, version) {
    const c = this.broker.clients[id.key]
    const entry = { kind: 'desired-notification', deviceId: id.deviceId, moduleId: id.moduleId, version, delivered: false }
    if (c && c.emu && !c.closed) {
      entry.conn = c.emu.conn
      const topic = `$iothub/twin/PATCH/properties/desired/?$version=${version}`
      entry.delivered = this.send(c, topic, JSON.stringify({ ...body, $version: version }))
    }
    if (entry.delivered) this.journal.count('desiredNotifications')
    this.journal.request(entry)
    return entry.delivered
  }
}

module.exports = { DeviceSide, topicMatches, splitTopic }
