// SPDX-License-Identifier: MIT
// The Device Shadow service: the store of shadows, answers to MQTT requests on the reserved
// topics, foreign writes from the control API, injected faults and request counters.
'use strict'

const model = require('./shadow-model')

const KINDS = ['get', 'update', 'delete']

function nowSeconds () {
  return Math.floor(Date.now() / 1000)
}

function zeroCounts () {
  return { get: 0, update: 0, delete: 0 }
}

class ShadowService {
  /** publish(topic, object): sends one JSON message to the topic's subscribers. */
  constructor (publish) {
    this.publish = publish
    this.shadows = new Map() // 'thing' or 'thing/shadow' -> record
    this.faults = []
    this.resetCounters()
  }

  key (thing, shadow) {
    return shadow ? `${thing}/${shadow}` : thing
  }

  record (thing, shadow) {
    return this.shadows.get(this.key(thing, shadow)) || model.emptyRecord()
  }

  resetCounters () {
    this.counters = {
      requests: zeroCounts(),
      accepted: zeroCounts(),
      rejected: zeroCounts(),
      injected: 0,
      unanswered: 0,
      foreign: zeroCounts(),
      byClient: {},
      byConnection: {}
    }
  }

  /** Queues a fault: the next `count` requests (of `kind`, or any) are answered with `code`, or
   *  not answered at all when `drop` is true. */
  addFault (spec) {
    const count = spec.count === undefined ? 1 : spec.count
    if (!Number.isSafeInteger(count) || count < 1 || count > 100000) throw new Error('count: 1 to 100000')
    if (spec.kind !== undefined && spec.kind !== null && !KINDS.includes(spec.kind)) {
      throw new Error('kind: get, update or delete')
    }
    const drop = spec.drop === true
    if (!drop && !(Number.isSafeInteger(spec.code) && spec.code >= 400 && spec.code <= 599)) {
      throw new Error('code: an HTTP error code (400 to 599), or drop: true')
    }
    if (spec.message !== undefined && typeof spec.message !== 'string') throw new Error('message: a string')
    const fault = {
      remaining: count,
      kind: spec.kind || null,
      code: drop ? null : spec.code,
      drop,
      message: spec.message || null
    }
    this.faults.push(fault)
    return fault
  }

  takeFault (kind) {
    const i = this.faults.findIndex((f) => f.kind === null || f.kind === kind)
    if (i < 0) return null
    const f = this.faults[i]
    if (--f.remaining === 0) this.faults.splice(i, 1)
    return f
  }

  count (op, origin) {
    this.counters.requests[op.kind]++
    const byClient = this.counters.byClient
    const c = byClient[origin.clientId] || (byClient[origin.clientId] = zeroCounts())
    c[op.kind]++
    const k = String(origin.connId)
    const b = this.counters.byConnection[k] ||
      (this.counters.byConnection[k] = Object.assign({ clientId: origin.clientId }, zeroCounts()))
    b[op.kind]++
  }

  /** An MQTT request from a client: op is {thing, shadow, kind}, origin {clientId, connId}. */
  request (op, payload, origin) {
    this.count(op, origin)
    const prefix = model.topicPrefix(op.thing, op.shadow)
    const now = nowSeconds()
    const parsed = model.parseRequest(op.kind, payload)
    const fault = this.takeFault(op.kind)
    if (fault) {
      if (fault.drop) {
        this.counters.unanswered++
        return
      }
      this.counters.injected++
      this.reject(op, prefix, fault.code, fault.message, parsed.clientToken, now)
      return
    }
    const r = this.apply(op, parsed, now)
    if (r.error) {
      this.reject(op, prefix, r.error.code, r.error.message, r.clientToken, now)
      return
    }
    this.counters.accepted[op.kind]++
    this.publish(`${prefix}/${op.kind}/accepted`, r.accepted)
    this.notify(prefix, r)
  }

  reject (op, prefix, code, message, clientToken, now) {
    this.counters.rejected[op.kind]++
    this.publish(`${prefix}/${op.kind}/rejected`, model.errorDocument(code, message, clientToken, now))
  }

  /** Publishes what an accepted update tells every subscriber: delta, then documents. */
  notify (prefix, r) {
    if (r.delta) this.publish(`${prefix}/update/delta`, r.delta)
    if (r.documents) this.publish(`${prefix}/update/documents`, r.documents)
  }

  /** Runs one parsed request against the store. Returns {error, clientToken} or
   *  {accepted, delta?, documents?}. */
  apply (op, parsed, now) {
    if (parsed.error) return parsed
    const record = this.record(op.thing, op.shadow)
    const missingName = op.shadow || op.thing
    let r
    switch (op.kind) {
      case 'get':
        r = model.getDocument(record, parsed, now, missingName)
        return r.error ? r : { accepted: r.payload }
      case 'update':
        r = model.applyUpdate(record, parsed, now)
        break
      case 'delete':
        r = model.applyDelete(record, parsed, now, missingName)
        break
    }
    if (r.error) return r
    this.shadows.set(this.key(op.thing, op.shadow), r.record)
    return r
  }

  /** A write by someone else (the REST API of AWS): the answer goes to the caller only, and
   *  subscribers get delta and documents. Returns {status, body}. */
  foreign (kind, thing, shadow, body) {
    this.counters.foreign[kind]++
    const now = nowSeconds()
    const payload = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body))
    const parsed = model.parseRequest(kind, payload)
    const r = this.apply({ thing, shadow, kind }, parsed, now)
    if (r.error) {
      const body = model.errorDocument(r.error.code, r.error.message, r.clientToken, now)
      return { status: r.error.code, body }
    }
    if (kind === 'update') this.notify(model.topicPrefix(thing, shadow), r)
    return { status: 200, body: r.accepted }
  }

  /** What the store holds for one shadow, for the control API. */
  peek (thing, shadow) {
    const r = this.record(thing, shadow)
    return { exists: r.exists, version: r.version, state: r.state, metadata: r.metadata }
  }

  list () {
    return [...this.shadows.entries()].map(([k, r]) => {
      const [thing, shadow] = k.split('/')
      return { thing, shadow: shadow || null, exists: r.exists, version: r.version }
    })
  }
}

module.exports = { ShadowService, KINDS }
