// SPDX-License-Identifier: MIT
// The test control API: plain HTTP with JSON bodies on a loopback port. Not part of IoT Hub;
// README.md lists every route.
'use strict'

const http = require('http')
const { parseSection, TwinError } = require('./twin')

const MAX_BODY = 1024 * 1024

class ControlError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

function identityJson (id) {
  return {
    deviceId: id.deviceId,
    moduleId: id.moduleId,
    status: id.status,
    authenticationType: id.authenticationType,
    primaryKey: id.primaryKey,
    secondaryKey: id.secondaryKey,
    primaryThumbprint: id.primaryThumbprint,
    secondaryThumbprint: id.secondaryThumbprint,
    connected: id.connected
  }
}

function readJson (req) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let n = 0
    req.on('data', c => {
      n += c.length
      if (n > MAX_BODY) reject(new ControlError(413, 'body too large'))
      else chunks.push(c)
    })
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8')
      if (!text.trim()) return resolve({ value: {}, text: '{}' })
      try {
        resolve({ value: JSON.parse(text), text })
      } catch (e) {
        reject(new ControlError(400, `malformed JSON: ${e.message}`))
      }
    })
    req.on('error', reject)
  })
}

class Control {
  constructor ({ hub }) {
    this.hub = hub
    this.server = http.createServer((req, res) => {
      this.handle(req, res).catch(e => {
        const status = e instanceof ControlError ? e.status : e instanceof TwinError ? e.status : 400
        this.send(res, status, { error: e.message })
      })
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
      this.server.close(() => resolve())
      if (this.server.closeAllConnections) this.server.closeAllConnections()
    })
  }

  send (res, status, body) {
    const text = JSON.stringify(body) + '\n'
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) })
    res.end(text)
  }

  identity (deviceId, moduleId) {
    const id = this.hub.registry.get(deviceId, moduleId)
    if (!id) throw new ControlError(404, `no identity '${moduleId ? `${deviceId}/${moduleId}` : deviceId}'`)
    return id
  }

  async handle (req, res) {
    const url = new URL(req.url, 'http://control')
    const segs = url.pathname.split('/').filter(Boolean).map(decodeURIComponent)
    const body = ['POST', 'PATCH', 'PUT', 'DELETE'].includes(req.method) ? await readJson(req) : { value: {}, text: '{}' }
    const result = this.dispatch(req.method, segs, body, url.searchParams)
    this.send(res, 200, result === undefined ? {} : result)
  }

  // /devices/{id}[/modules/{m}][/rest...] -> { deviceId, moduleId, rest }
  target (segs) {
    const deviceId = segs[1]
    if (!deviceId) throw new ControlError(404, 'no device id in the path')
    if (segs[2] === 'modules') return { deviceId, moduleId: segs[3], rest: segs.slice(4) }
    return { deviceId, moduleId: null, rest: segs.slice(2) }
  }

  dispatch (method, segs, body, params) {
    const hub = this.hub
    const b = body.value
    const route = `${method} ${segs[0] || ''}`
    switch (route) {
      case 'GET state':
        return hub.state()
      case 'GET devices':
        return [...hub.registry.identities.values()].map(identityJson)
      case 'POST devices':
        return identityJson(hub.registry.add(b))
      case 'DELETE devices': {
        const t = this.target(segs)
        this.identity(t.deviceId, t.moduleId)
        hub.registry.remove(t.deviceId, t.moduleId)
        return {}
      }
      case 'PATCH devices': {
        const t = this.target(segs)
        const id = this.identity(t.deviceId, t.moduleId)
        if (b.status !== undefined) hub.registry.setStatus(id, b.status, b.statusReason)
        return identityJson(id)
      }
      case 'GET twins': {
        const t = this.target(segs)
        const id = this.identity(t.deviceId, t.moduleId)
        return id.twin.restDocument(id)
      }
      case 'POST twins':
        return this.twinChange(this.target(segs), b, body.text)
      case 'GET connections':
        return hub.deviceSide.connections()
      case 'POST connections': {
        const t = this.target(segs)
        if (t.rest[0] !== 'drop') throw new ControlError(404, 'POST /connections/{id}[/modules/{m}]/drop')
        const key = t.moduleId ? `${t.deviceId}/${t.moduleId}` : t.deviceId
        return { dropped: hub.deviceSide.drop(key, b.reason || 'dropped by the control API') }
      }
      case 'POST refuse':
        return { refusal: hub.faults.refuse(b.seconds, b.code === undefined ? 3 : b.code) }
      case 'DELETE refuse':
        hub.faults.lift()
        return { refusal: null }
      case 'GET faults':
        return hub.faults.snapshot()
      case 'POST faults':
        return hub.faults.add({
          kinds: b.kinds || 'twin',
          count: b.count === undefined ? 1 : b.count,
          status: b.status === undefined ? 429 : b.status,
          retryAfter: b.retryAfter,
          message: b.message
        })
      case 'DELETE faults':
        hub.faults.clear()
        return hub.faults.snapshot()
      case 'POST delays':
        return { delays: hub.faults.setDelay(b.kinds || 'twin', b.ms) }
      case 'GET counters':
        return hub.journal.snapshot()
      case 'DELETE counters':
        hub.journal.reset()
        return hub.journal.snapshot()
      case 'GET log':
        return since(hub.journal, hub.journal.connections, params)
      case 'GET requests':
        return since(hub.journal, hub.journal.requests, params)
    }
    throw new ControlError(404, `no control route ${method} /${segs.join('/')}`)
  }

  // POST /twins/{id}[/modules/{m}]/desired|reported|tags|notification
  twinChange (t, b, text) {
    const id = this.identity(t.deviceId, t.moduleId)
    const section = t.rest[0]
    if (section === 'notification') {
      // A desired notification sent as given, the twin unchanged: the stale or repeated
      // notification a device may see when the network holds one back.
      if (typeof b.patch !== 'object' || b.patch === null || !Number.isInteger(b.version)) {
        throw new ControlError(400, 'give "patch" (an object) and "version" (an integer)')
      }
      return { delivered: this.hub.deviceSide.notifyDesired(id, b.patch, b.version) }
    }
    const replace = b.replace !== undefined
    const value = replace ? b.replace : b.patch
    if (!['desired', 'reported', 'tags'].includes(section)) {
      throw new ControlError(404, 'POST /twins/{id}[/modules/{m}]/desired|reported|tags')
    }
    if (value === undefined) throw new ControlError(400, 'give "patch" or "replace"')
    // The same rules as the device and REST sides apply.
    parseSection(JSON.stringify(value), section, { patch: !replace })
    if (section === 'reported') {
      const c = id.twin.candidate('reported', value, replace)
      return { version: id.twin.commit(c) }
    }
    if (section === 'tags') {
      id.twin.updateFromService({ tags: value }, replace)
      return { etag: id.twin.etag }
    }
    const version = id.twin.updateFromService({ desired: value }, replace)
    const notify = b.notify !== false
    const delivered = notify ? this.hub.deviceSide.notifyDesired(id, replace ? id.twin.desired : value, version) : false
    if (!notify) this.hub.journal.request({ kind: 'desired-silent', deviceId: id.deviceId, moduleId: id.moduleId, version })
    return { version, notified: notify, delivered }
  }
}

function since (journal, list, params) {
  const seq = Number(params.get('since') || 0)
  const kind = params.get('kind')
  let out = journal.since(list, seq)
  if (kind) out = out.filter(e => e.kind === kind || e.event === kind)
  return { seq: journal.seq, entries: out }
}

module.exports = { Control }
