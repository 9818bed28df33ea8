// SPDX-License-Identifier: MIT
// What happened, for tests to read: the connection log, the twin request log, counters of
// requests by kind and in-flight twin requests per connection. Every entry has a sequence
// number so that a test can ask for what came after the last one it saw.
'use strict'

const LOG_LIMIT = 10000 // entries kept per log; older ones are dropped first

class Journal {
  constructor () {
    this.seq = 0
    this.connections = [] // connect, refuse, drop, token-expired, disconnect
    this.requests = [] // twin requests (MQTT and REST) with their answer status
    this.counters = {}
    this.inFlight = new Map() // connection number -> { conn, client, get: {current, max}, reported: {...} }
    this.sink = null // called with every new log entry
  }

  _push (list, entry) {
    const e = { seq: ++this.seq, time: new Date().toISOString(), ...entry }
    list.push(e)
    if (list.length > LOG_LIMIT) list.splice(0, list.length - LOG_LIMIT)
    if (this.sink) this.sink(e)
    return e
  }

  connection (entry) {
    return this._push(this.connections, entry)
  }

  request (entry) {
    return this._push(this.requests, entry)
  }

  count (kind, n = 1) {
    this.counters[kind] = (this.counters[kind] || 0) + n
  }

  flight (conn, client) {
    let f = this.inFlight.get(conn)
    if (!f) {
      f = { conn, client, get: { current: 0, max: 0 }, reported: { current: 0, max: 0 } }
      this.inFlight.set(conn, f)
    }
    return f
  }

  begin (conn, client, kind) {
    const f = this.flight(conn, client)[kind]
    f.current++
    if (f.current > f.max) f.max = f.current
  }

  end (conn, client, kind) {
    const f = this.flight(conn, client)[kind]
    if (f.current > 0) f.current--
  }

  since (list, seq) {
    return list.filter(e => e.seq > seq)
  }

  reset () {
    this.counters = {}
    for (const f of this.inFlight.values()) {
      for (const k of ['get', 'reported']) f[k].max = f[k].current
    }
  }

  snapshot () {
    return {
      seq: this.seq,
      counters: { ...this.counters },
      inFlight: [...this.inFlight.values()].map(f => JSON.parse(JSON.stringify(f)))
    }
  }
}

module.exports = { Journal }
