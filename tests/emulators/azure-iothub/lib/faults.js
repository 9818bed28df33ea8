// SPDX-License-Identifier: MIT
// Faults the tests ask for: refusing connects for a while, answering the next N requests of
// some kinds with an error status, and holding answers back for a while.
'use strict'

// Request kinds: MQTT twin GET, MQTT reported PATCH, and any REST call on twins or queries.
const KINDS = ['get', 'reported', 'rest']
const ALIASES = { twin: ['get', 'reported'], any: KINDS }

function expandKinds (kinds) {
  const list = Array.isArray(kinds) ? kinds : [kinds]
  const out = new Set()
  for (const k of list) {
    for (const e of ALIASES[k] || [k]) {
      if (!KINDS.includes(e)) throw new Error(`unknown request kind '${k}' (one of ${KINDS.concat(Object.keys(ALIASES)).join(', ')})`)
      out.add(e)
    }
  }
  return out
}

class Faults {
  constructor () {
    this.refusal = null // { until (ms, Infinity: until lifted), code }
    this.queue = [] // { id, kinds: Set, remaining, status, retryAfter, message }
    this.delays = { get: 0, reported: 0, rest: 0 }
    this.nextId = 0
  }

  refuse (seconds, code) {
    if (![2, 3, 4, 5].includes(code)) throw new Error('code: a CONNACK refusal code 2..5')
    const until = seconds === undefined || seconds === null ? Infinity : Date.now() + seconds * 1000
    this.refusal = { until, code }
    return this.describeRefusal()
  }

  lift () {
    this.refusal = null
  }

  // The CONNACK code to refuse with now, or 0.
  refusing () {
    if (!this.refusal) return 0
    if (Date.now() >= this.refusal.until) {
      this.refusal = null
      return 0
    }
    return this.refusal.code
  }

  describeRefusal () {
    if (!this.refusing()) return null
    const u = this.refusal.until
    return { code: this.refusal.code, until: u === Infinity ? null : new Date(u).toISOString() }
  }

  add ({ kinds, count, status, retryAfter, message }) {
    if (!Number.isInteger(count) || count < 1) throw new Error('count: a positive integer')
    if (!Number.isInteger(status) || status < 400 || status > 599) throw new Error('status: 400..599')
    if (retryAfter !== undefined && retryAfter !== null && !(Number.isInteger(retryAfter) && retryAfter >= 0)) {
      throw new Error('retryAfter: whole seconds')
    }
    const f = {
      id: ++this.nextId,
      kinds: expandKinds(kinds),
      remaining: count,
      status,
      retryAfter: retryAfter === undefined ? null : retryAfter,
      message: message || null
    }
    this.queue.push(f)
    return this.describe(f)
  }

  // The fault for one request of this kind, used up by taking it, or null.
  take (kind) {
    const f = this.queue.find(q => q.kinds.has(kind) && q.remaining > 0)
    if (!f) return null
    f.remaining--
    if (f.remaining === 0) this.queue.splice(this.queue.indexOf(f), 1)
    return f
  }

  clear () {
    this.queue = []
  }

  setDelay (kinds, ms) {
    if (!Number.isInteger(ms) || ms < 0 || ms > 600000) throw new Error('ms: 0..600000')
    for (const k of expandKinds(kinds)) this.delays[k] = ms
    return { ...this.delays }
  }

  describe (f) {
    return { id: f.id, kinds: [...f.kinds], remaining: f.remaining, status: f.status, retryAfter: f.retryAfter }
  }

  snapshot () {
    return { refusal: this.describeRefusal(), faults: this.queue.map(f => this.describe(f)), delays: { ...this.delays } }
  }
}

module.exports = { Faults, expandKinds }
