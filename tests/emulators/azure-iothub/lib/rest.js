// SPDX-License-Identifier: MIT
// The service side: IoT Hub's REST API for twins (Devices/Modules - Get, Update, Replace Twin;
// Query IoT Hub; Devices - Delete Identity), api-version 2021-04-12 and the others the SDKs
// send, over HTTPS.
'use strict'

const https = require('https')
const sas = require('./sas')
const errors = require('./errors')
const query = require('./query')
const { validateSection, checkIntegers, TwinError, isObject } = require('./twin')

const MAX_BODY = 256 * 1024
const DEFAULT_PAGE = 1000
const MAX_PAGE = 1000
// Fields of the Twin object that a back end may send back unchanged; they are read-only.
const READ_ONLY = new Set(['deviceId', 'moduleId', 'etag', 'deviceEtag', 'status', 'statusReason',
  'statusUpdateTime', 'connectionState', 'lastActivityTime', 'cloudToDeviceMessageCount',
  'authenticationType', 'x509Thumbprint', 'version', 'capabilities', 'deviceScope', 'parentScopes', 'modelId'])

class HttpError extends Error {
  constructor (status, message, name, headers) {
    super(message)
    this.status = status
    this.errorName = name
    this.headers = headers
  }
}

function readBody (req) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let n = 0
    req.on('data', c => {
      n += c.length
      if (n > MAX_BODY) {
        reject(new HttpError(413, `request body larger than ${MAX_BODY} bytes`))
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.on('error', reject)
  })
}

function sendJson (res, status, body, headers = {}) {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    ...headers
  })
  res.end(text)
}

function unquoteEtag (e) {
  return e.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1')
}

class ServiceSide {
  // deviceSide: where desired changes are delivered (notifyDesired)
  constructor ({ registry, journal, faults, deviceSide, tlsOptions }) {
    this.registry = registry
    this.journal = journal
    this.faults = faults
    this.deviceSide = deviceSide
    this.server = https.createServer({ key: tlsOptions.key, cert: tlsOptions.cert }, (req, res) => {
      this.handle(req, res).catch(e => this.fail(res, e))
    })
    // No Nagle (see mqtt.js): a reused connection's answer must not wait for a delayed ACK.
    this.server.on('secureConnection', sock => sock.setNoDelay(true))
    this.server.on('tlsClientError', () => this.journal.count('tlsErrors'))
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

  fail (res, e) {
    if (res.headersSent) return res.destroy()
    if (e instanceof HttpError) return errors.sendRest(res, e.status, e.message, { name: e.errorName, headers: e.headers })
    if (e instanceof TwinError) return errors.sendRest(res, e.status, e.message)
    if (e instanceof query.QueryError) return errors.sendRest(res, 400, e.message)
    errors.sendRest(res, 500, `emulator bug: ${e.message}`)
  }

  async handle (req, res) {
    const url = new URL(req.url, 'https://emulator')
    const route = this.route(req.method, url.pathname)
    this.journal.count(`rest.${route.name}`)
    if (!url.searchParams.get('api-version')) {
      throw new HttpError(400, 'api-version is required', 'InvalidProtocolVersion')
    }
    this.authorize(req, route.resource, route.right || 'ServiceConnect')
    const entry = { kind: `rest.${route.name}`, deviceId: route.deviceId || null, moduleId: route.moduleId || null }
    const fault = this.faults.take('rest')
    const delay = this.faults.delays.rest
    if (delay) await new Promise(resolve => setTimeout(resolve, delay))
    if (fault) {
      entry.status = fault.status
      this.journal.request(entry)
      const headers = fault.retryAfter === null ? {} : { 'Retry-After': String(fault.retryAfter) }
      throw new HttpError(fault.status, fault.message || `injected ${fault.status}`, undefined, headers)
    }
    const body = ['PATCH', 'PUT', 'POST', 'DELETE'].includes(req.method) ? await readBody(req) : ''
    try {
      await route.handler(req, res, body, entry)
    } catch (e) {
      entry.status = e.status || 500
      entry.error = e.message
      this.journal.request(entry)
      throw e
    }
    this.journal.request(entry)
  }

  // { name, resource (what the token must cover), handler, deviceId?, moduleId? }
  route (method, pathname) {
    const segs = pathname.split('/').filter(Boolean).map(s => {
      try { return decodeURIComponent(s) } catch (e) { throw new HttpError(400, 'malformed path') }
    })
    const host = this.registry.hostName
    if (segs[0] === 'twins' && (segs.length === 2 || (segs.length === 4 && segs[2] === 'modules'))) {
      const deviceId = segs[1]
      const moduleId = segs[3] || null
      const resource = `${host}/devices/${deviceId}` + (moduleId ? `/modules/${moduleId}` : '')
      const r = { resource, deviceId, moduleId }
      if (method === 'GET') return { ...r, name: 'getTwin', handler: (q, s, b, e) => this.getTwin(s, r, e) }
      if (method === 'PATCH') return { ...r, name: 'updateTwin', handler: (q, s, b, e) => this.updateTwin(q, s, r, b, false, e) }
      if (method === 'PUT') return { ...r, name: 'replaceTwin', handler: (q, s, b, e) => this.updateTwin(q, s, r, b, true, e) }
      throw new HttpError(405, `${method} is not supported on twins`, 'InvalidOperation')
    }
    if (segs.length === 2 && segs[0] === 'devices' && segs[1] !== 'query') {
      // Devices - Delete Identity: the device, its twin and its modules go; RegistryWrite.
      const r = { resource: `${host}/devices/${segs[1]}`, deviceId: segs[1], moduleId: null }
      if (method !== 'DELETE') throw new HttpError(405, `the emulator does not implement ${method} on devices`, 'InvalidOperation')
      return { ...r, name: 'deleteDevice', right: 'RegistryWrite', handler: (q, s, b, e) => this.deleteDevice(q, s, r, e) }
    }
    if (segs.length === 2 && segs[0] === 'devices' && segs[1] === 'query') {
      if (method !== 'POST') throw new HttpError(405, 'queries are POSTed', 'InvalidOperation')
      return { name: 'query', resource: `${host}/devices`, handler: (q, s, b, e) => this.query(q, s, b, e) }
    }
    throw new HttpError(404, `the emulator does not implement ${method} ${pathname}`, 'NotFound')
  }

  // A shared access policy token with the right (ServiceConnect, RegistryWrite) whose resource
  // covers this one.
  authorize (req, resource, right) {
    const unauthorized = msg => {
      this.journal.count('rest.unauthorized')
      return new HttpError(401, msg, 'IotHubUnauthorizedAccess')
    }
    const header = req.headers.authorization
    if (!header) throw unauthorized('Unauthorized: no Authorization header')
    let t
    try {
      t = sas.parse(header)
    } catch (e) {
      throw unauthorized(`Unauthorized: ${e.message}`)
    }
    if (!t.skn) throw unauthorized('Unauthorized: a device token cannot call the service API')
    const p = this.registry.policies.get(t.skn)
    if (!p) throw unauthorized(`Unauthorized: no shared access policy '${t.skn}'`)
    if (![p.primaryKey, p.secondaryKey].some(k => sas.signatureMatches(t, k))) {
      throw unauthorized('Unauthorized: signature does not match')
    }
    if (sas.expired(t)) throw unauthorized('Unauthorized: token expired')
    if (!sas.coversResource(t.resource, resource)) {
      throw unauthorized(`Unauthorized: token for '${t.resource}' does not cover '${resource}'`)
    }
    if (!p.rights.includes(right)) throw unauthorized(`Unauthorized: policy '${p.name}' lacks ${right}`)
  }

  identity (r) {
    const id = this.registry.get(r.deviceId, r.moduleId)
    if (!id) {
      const what = r.moduleId ? `module '${r.moduleId}' on device '${r.deviceId}'` : `device '${r.deviceId}'`
      throw new HttpError(404, `${what} not found`, r.moduleId ? 'ModuleNotFound' : 'DeviceNotFound')
    }
    return id
  }

  getTwin (res, r, entry) {
    const id = this.identity(r)
    entry.status = 200
    sendJson(res, 200, id.twin.restDocument(id))
  }

  // PATCH (merge) or PUT (replace) of tags and desired properties.
  updateTwin (req, res, r, text, replace, entry) {
    const id = this.identity(r)
    let body
    try {
      body = JSON.parse(text)
    } catch (e) {
      throw new TwinError(`malformed JSON: ${e.message}`)
    }
    if (!isObject(body)) throw new TwinError('the twin update is not a JSON object')
    checkIntegers(text, 'twin')
    const update = {}
    for (const [k, v] of Object.entries(body)) {
      if (k === 'tags') {
        validateSection(v, 'tags', { patch: !replace })
        update.tags = v
      } else if (k === 'properties') {
        if (!isObject(v)) throw new TwinError('properties is not a JSON object')
        for (const [pk, pv] of Object.entries(v)) {
          if (pk === 'desired') {
            validateSection(pv, 'desired', { patch: !replace })
            update.desired = pv
          } else if (pk === 'reported') {
            throw new TwinError('reported properties are written by the device only')
          } else {
            throw new TwinError(`unknown member properties.${pk}`)
          }
        }
      } else if (!READ_ONLY.has(k)) {
        throw new TwinError(`unknown twin member '${k}'`)
      }
    }
    if (replace) {
      update.tags = update.tags || {}
      update.desired = update.desired || {}
    }
    const ifMatch = req.headers['if-match']
    if (ifMatch && unquoteEtag(ifMatch) !== '*' && unquoteEtag(ifMatch) !== id.twin.etag) {
      throw new HttpError(412, `etag ${ifMatch} does not match "${id.twin.etag}"`, 'PreconditionFailed')
    }
    const version = id.twin.updateFromService(update, replace)
    entry.status = 200
    entry.body = update
    if (version !== null) {
      entry.version = version
      this.deviceSide.notifyDesired(id, replace ? id.twin.desired : update.desired, version)
    }
    sendJson(res, 200, id.twin.restDocument(id))
  }

  // If-Match: '*' (what the SDK sends) or the identity's etag; without it the delete is
  // unconditional, as the REST reference allows. 204 without a body.
  deleteDevice (req, res, r, entry) {
    const id = this.identity(r)
    const ifMatch = req.headers['if-match']
    if (ifMatch && unquoteEtag(ifMatch) !== '*' && unquoteEtag(ifMatch) !== id.etag) {
      throw new HttpError(412, `etag ${ifMatch} does not match "${id.etag}"`, 'PreconditionFailed')
    }
    this.registry.remove(r.deviceId)
    entry.status = 204
    res.writeHead(204)
    res.end()
  }

  query (req, res, text, entry) {
    let body
    try {
      body = JSON.parse(text)
    } catch (e) {
      throw new TwinError(`malformed JSON: ${e.message}`)
    }
    if (!isObject(body) || typeof body.query !== 'string') throw new TwinError('the body is not {"query": "..."}')
    const q = query.parse(body.query)
    let pageSize = DEFAULT_PAGE
    const max = req.headers['x-ms-max-item-count']
    if (max !== undefined) {
      pageSize = Number(max)
      if (!Number.isInteger(pageSize) || pageSize < 1) throw new TwinError('x-ms-max-item-count: a positive integer')
      pageSize = Math.min(pageSize, MAX_PAGE)
    }
    let offset = 0
    const token = req.headers['x-ms-continuation']
    if (token) {
      try {
        const c = JSON.parse(Buffer.from(token, 'base64').toString('utf8'))
        if (c.q !== body.query || !Number.isInteger(c.o) || c.o < 0) throw new Error('mismatch')
        offset = c.o
      } catch (e) {
        throw new TwinError('x-ms-continuation is not a token of this query')
      }
    }
    const ids = this.registry.twins(q.from === 'devices.modules')
    const { items, itemType } = query.run(q, ids.map(id => id.twin.restDocument(id)))
    const page = items.slice(offset, offset + pageSize)
    const headers = { 'x-ms-item-type': itemType }
    if (offset + pageSize < items.length) {
      headers['x-ms-continuation'] = Buffer.from(JSON.stringify({ q: body.query, o: offset + pageSize })).toString('base64')
    }
    entry.status = 200
    entry.query = body.query
    entry.items = page.length
    sendJson(res, 200, page, headers)
  }
}

module.exports = { ServiceSide }
