// SPDX-License-Identifier: MIT
// The test control API: plain HTTP with JSON bodies on a loopback port. Routes are data, one
// row each: [method, path pattern, handler(ctx) -> [status, body]]. README.md lists them.
'use strict'

const http = require('http')
const { validName, LIMITS } = require('./shadow-model')

const MAX_BODY = 1024 * 1024

class HttpError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

function need (cond, message) {
  if (!cond) throw new HttpError(400, message)
}

function shadowArgs (ctx) {
  const thing = ctx.params.thing
  const shadow = ctx.query.get('name')
  need(validName(thing, LIMITS.thingNameBytes), 'thing name: 1 to 128 of A-Z a-z 0-9 : _ -')
  need(shadow === null || validName(shadow, LIMITS.shadowNameBytes),
    'shadow name: 1 to 64 of A-Z a-z 0-9 : _ -')
  return [thing, shadow]
}

function routes (broker, service, registry) {
  return [
    ['GET', '/health', () => [200, { ok: true }]],

    ['GET', '/certificates', () => [200, registry.list()]],
    ['POST', '/certificates', (ctx) => {
      try {
        return [201, registry.register(ctx.body)]
      } catch (e) {
        throw new HttpError(400, e.message)
      }
    }],
    ['DELETE', '/certificates/:name', (ctx) => {
      const entry = registry.revoke(ctx.params.name)
      if (!entry) throw new HttpError(404, `no certificate ${ctx.params.name}`)
      const dropped = ctx.query.get('keepConnections') ? 0 : broker.dropEntry(entry)
      return [200, { revoked: entry, dropped }]
    }],

    ['GET', '/shadows', () => [200, service.list()]],
    ['GET', '/things/:thing/shadow', (ctx) => [200, service.peek(...shadowArgs(ctx))]],
    ['POST', '/things/:thing/shadow', (ctx) => {
      const [thing, shadow] = shadowArgs(ctx)
      const r = service.foreign('update', thing, shadow, ctx.body)
      return [r.status, r.body]
    }],
    ['DELETE', '/things/:thing/shadow', (ctx) => {
      const [thing, shadow] = shadowArgs(ctx)
      const r = service.foreign('delete', thing, shadow, undefined)
      return [r.status, r.body]
    }],

    ['GET', '/clients', () => [200, broker.clients()]],
    ['POST', '/clients/drop', () => [200, { dropped: broker.drop(undefined) }]],
    ['POST', '/clients/:clientId/drop', (ctx) => [200, { dropped: broker.drop(ctx.params.clientId) }]],

    ['GET', '/refusal', () => [200, broker.refusal]],
    ['PUT', '/refusal', (ctx) => {
      const b = ctx.body || {}
      need(b.seconds === undefined || (typeof b.seconds === 'number' && b.seconds > 0),
        'seconds: a positive number')
      const returnCode = b.returnCode === undefined ? 3 : b.returnCode
      need(Number.isInteger(returnCode) && returnCode >= 1 && returnCode <= 255, 'returnCode: 1 to 255')
      const mode = b.mode || 'connack'
      need(mode === 'connack' || mode === 'close', "mode: 'connack' or 'close'")
      const until = b.seconds === undefined ? null : Date.now() + b.seconds * 1000
      broker.refusal = { until, returnCode, mode }
      return [200, broker.refusal]
    }],
    ['DELETE', '/refusal', () => {
      broker.refusal = null
      return [200, { lifted: true }]
    }],

    ['GET', '/faults', () => [200, service.faults]],
    ['POST', '/faults', (ctx) => {
      try {
        return [201, service.addFault(ctx.body || {})]
      } catch (e) {
        throw new HttpError(400, e.message)
      }
    }],
    ['DELETE', '/faults', () => {
      service.faults = []
      return [200, { cleared: true }]
    }],

    ['GET', '/counters', () => [200, service.counters]],
    ['DELETE', '/counters', () => {
      service.resetCounters()
      return [200, service.counters]
    }],

    ['GET', '/log', (ctx) => {
      const since = Number(ctx.query.get('since') || 0)
      need(Number.isFinite(since), 'since: a sequence number')
      return [200, broker.connections.filter((e) => e.seq > since)]
    }],

    ['POST', '/publish', (ctx) => {
      const b = ctx.body || {}
      need(typeof b.topic === 'string' && b.topic.length > 0 && !/[#+]/.test(b.topic), 'topic: a topic name')
      need(b.payload === undefined || typeof b.payload === 'string', 'payload: a string (or json: any value)')
      const qos = b.qos === undefined ? 0 : b.qos
      need(qos === 0 || qos === 1, 'qos: 0 or 1')
      const payload = b.json !== undefined ? JSON.stringify(b.json) : (b.payload || '')
      broker.publishRaw(b.topic, Buffer.from(payload), qos, b.retain === true)
      return [200, { published: true }]
    }]
  ].map(([method, pattern, handler]) => {
    const names = []
    const re = new RegExp('^' + pattern.replace(/:([a-zA-Z]+)/g, (m, n) => {
      names.push(n)
      return '([^/]+)'
    }) + '$')
    return { method, re, names, handler }
  })
}

function createControlServer (broker, service, registry) {
  const table = routes(broker, service, registry)
  return http.createServer((req, res) => {
    const chunks = []
    let size = 0
    req.on('data', (c) => {
      size += c.length
      if (size > MAX_BODY) req.destroy()
      else chunks.push(c)
    })
    req.on('end', () => {
      let status = 200
      let body
      try {
        const url = new URL(req.url, 'http://localhost')
        const path = url.pathname
        const candidates = table.filter((r) => r.re.test(path))
        if (candidates.length === 0) throw new HttpError(404, `no route ${path}`)
        const route = candidates.find((r) => r.method === req.method)
        if (!route) throw new HttpError(405, `${req.method} not allowed on ${path}`)
        const m = route.re.exec(path)
        const params = {}
        route.names.forEach((n, i) => { params[n] = decodeURIComponent(m[i + 1]) })
        let parsed
        const text = Buffer.concat(chunks).toString('utf8')
        if (text.trim() !== '') {
          try {
            parsed = JSON.parse(text)
          } catch (e) {
            throw new HttpError(400, `body is not JSON: ${e.message}`)
          }
        }
        ;[status, body] = route.handler({ params, query: url.searchParams, body: parsed })
      } catch (e) {
        status = e instanceof HttpError ? e.status : 500
        body = { error: e.message }
      }
      const out = JSON.stringify(body === undefined ? null : body)
      res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(out) })
      res.end(out)
    })
  })
}

module.exports = { createControlServer }
