// SPDX-License-Identifier: MIT
// The shadow document rules on their own, case by case against the examples of AWS's
// developer guide (device-shadow-document.md, device-shadow-data-flow.md,
// device-shadow-error-messages.md). No broker, no network.
'use strict'

const test = require('node:test')
const assert = require('assert/strict')
const m = require('../lib/shadow-model')

const NOW = 1700000000

function req (kind, body) {
  return m.parseRequest(kind, Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)))
}

/** Applies updates in order to a fresh record; returns the last result and the record. */
function updates (...bodies) {
  let record = m.emptyRecord()
  let r
  for (const b of bodies) {
    const p = req('update', b)
    assert.equal(p.error, undefined, JSON.stringify(p))
    r = m.applyUpdate(record, p, NOW)
    assert.equal(r.error, undefined, JSON.stringify(r))
    record = r.record
  }
  return [r, record]
}

test('the first update creates version 1 and echoes the request state', () => {
  const [r] = updates({ state: { reported: { color: 'red' } }, clientToken: 'tok' })
  assert.deepEqual(r.accepted, {
    state: { reported: { color: 'red' } },
    metadata: { reported: { color: { timestamp: NOW } } },
    version: 1,
    timestamp: NOW,
    clientToken: 'tok'
  })
  assert.equal(r.documents.previous, null)
  assert.equal(r.documents.current.version, 1)
  assert.equal(r.delta, null)
})

test('version grows on every accepted update, reports included', () => {
  const [r] = updates({ state: { reported: { a: 1 } } }, { state: { reported: { a: 1 } } }, { state: { desired: { a: 1 } } })
  assert.equal(r.accepted.version, 3)
})

test('nested objects merge; null removes a key; a null section removes the section', () => {
  const [r, rec] = updates(
    { state: { desired: { lights: { color: { r: 1, g: 2 } }, engine: 'ON' }, reported: { x: 1 } } },
    { state: { desired: { lights: { color: { g: null, b: 3 } }, engine: null } } })
  assert.deepEqual(rec.state.desired, { lights: { color: { r: 1, b: 3 } } })
  assert.deepEqual(rec.metadata.desired, { lights: { color: { r: { timestamp: NOW }, b: { timestamp: NOW } } } })
  assert.deepEqual(r.accepted.metadata.desired,
    { lights: { color: { g: { timestamp: NOW }, b: { timestamp: NOW } } }, engine: { timestamp: NOW } })
  const [r2, rec2] = updates({ state: { desired: { a: 1 }, reported: { a: 2 } } }, { state: { reported: { a: 1 }, desired: null } })
  assert.equal(rec2.state.desired, undefined)
  assert.deepEqual(r2.accepted.state, { reported: { a: 1 }, desired: null })
  assert.deepEqual(r2.accepted.metadata.desired, { timestamp: NOW })
})

test('arrays are values: an update replaces the whole array', () => {
  const [, rec] = updates({ state: { desired: { colors: ['RED', 'GREEN', 'BLUE'] } } }, { state: { desired: { colors: ['RED'] } } })
  assert.deepEqual(rec.state.desired, { colors: ['RED'] })
  assert.deepEqual(rec.metadata.desired.colors, [{ timestamp: NOW }])
})

test('arrays with null are rejected', () => {
  const p = req('update', { state: { desired: { colors: [null, 'RED', 'GREEN'] } } })
  assert.equal(p.error.code, 400)
})

test('delta: desired fields missing from or different in reported, with the path to the root', () => {
  const [r, rec] = updates(
    { state: { reported: { color: 'GREEN', engine: 'ON', lights: { color: { r: 255, g: 0, b: 255 } } } } },
    { state: { desired: { color: 'RED', state: 'STOP', lights: { color: { r: 255, g: 255, b: 255 } } } } })
  assert.deepEqual(r.delta.state, { color: 'RED', state: 'STOP', lights: { color: { g: 255 } } })
  assert.deepEqual(r.delta.metadata,
    { color: { timestamp: NOW }, state: { timestamp: NOW }, lights: { color: { g: { timestamp: NOW } } } })
  assert.equal(r.delta.version, 2)
  const g = m.getDocument(rec, req('get', ''), NOW, 'dev')
  assert.deepEqual(g.payload.state.delta, r.delta.state)
  assert.deepEqual(g.payload.metadata.delta, r.delta.metadata)
})

test('delta: a differing array is copied whole; equal arrays are not in it', () => {
  const [r] = updates({ state: { reported: { a: [1, 2], b: [3] } } }, { state: { desired: { a: [1, 2], b: [3, 4] } } })
  assert.deepEqual(r.delta.state, { b: [3, 4] })
})

test('delta: a report alone publishes no delta; a desired update matching reported neither', () => {
  const [r1] = updates({ state: { desired: { a: 1 } } }, { state: { reported: { b: 1 } } })
  assert.equal(r1.delta, null)
  const [r2] = updates({ state: { reported: { a: 1 } } }, { state: { desired: { a: 1 } } })
  assert.equal(r2.delta, null)
})

test('version: an update carrying the current version is accepted, another one is 409', () => {
  const [, rec] = updates({ state: { desired: { colors: ['RED'] } } })
  const staleReq = req('update', { state: { desired: { colors: ['BLUE'] } }, version: 9, clientToken: 't' })
  const stale = m.applyUpdate(rec, staleReq, NOW)
  assert.deepEqual(stale.error, { code: 409, message: 'Version conflict' })
  assert.equal(stale.clientToken, 't')
  const ok = m.applyUpdate(rec, req('update', { state: { desired: { colors: ['BLUE'] } }, version: 1 }), NOW)
  assert.equal(ok.accepted.version, 2)
})

test('GET carrying a version is answered whatever the version', () => {
  const [, rec] = updates({ state: { reported: { a: 1 } } })
  const g = m.getDocument(rec, req('get', { version: 99, clientToken: 'x' }), NOW, 'dev')
  assert.equal(g.payload.version, 1)
  assert.equal(g.payload.clientToken, 'x')
})

test('delete keeps the version: the next update follows on, previous is null', () => {
  const [, rec] = updates({ state: { reported: { a: 1 } } }, { state: { reported: { a: 2 } } })
  const d = m.applyDelete(rec, req('delete', { clientToken: 'd' }), NOW, 'dev')
  assert.deepEqual(d.accepted, { version: 2, timestamp: NOW, clientToken: 'd' })
  assert.equal(m.getDocument(d.record, req('get', ''), NOW, 'dev').error.code, 404)
  assert.equal(m.applyDelete(d.record, req('delete', ''), NOW, 'dev').error.code, 404)
  const u = m.applyUpdate(d.record, req('update', { state: { reported: { b: 1 } } }), NOW)
  assert.equal(u.accepted.version, 3)
  assert.equal(u.documents.previous, null)
  assert.deepEqual(u.record.state, { reported: { b: 1 } })
})

test('a delete body is ignored, even when it is not JSON', () => {
  assert.deepEqual(req('delete', 'not json').body, {})
})

test('400s as documented, with the clientToken echoed when it is valid', () => {
  const cases = [
    ['{', 'Invalid JSON'],
    ['[1]', 'Invalid JSON'],
    ['', 'Invalid JSON'],
    [{ clientToken: 'c' }, 'Missing required node: state'],
    [{ state: 3, clientToken: 'c' }, 'State node must be an object'],
    [{ state: { desired: [1] }, clientToken: 'c' }, 'Desired node must be an object'],
    [{ state: { reported: 'x' }, clientToken: 'c' }, 'Reported node must be an object'],
    [{ state: { delta: {} }, clientToken: 'c' }, 'State contains an invalid node'],
    [{ state: {}, version: 'x', clientToken: 'c' }, 'Invalid version'],
    [{ state: {}, version: 1.5, clientToken: 'c' }, 'Invalid version'],
    [{ state: {}, clientToken: 'x'.repeat(65) }, 'Invalid clientToken'],
    [{ state: {}, clientToken: 7 }, 'Invalid clientToken']
  ]
  for (const [body, message] of cases) {
    const p = req('update', body)
    assert.deepEqual(p.error, { code: 400, message }, JSON.stringify(body))
    if (typeof body === 'object' && body.clientToken === 'c') assert.equal(p.clientToken, 'c')
  }
  assert.equal(req('update', { state: {}, clientToken: 'é'.repeat(32) }).error, undefined, '64 bytes is allowed')
  assert.equal(req('update', { state: {}, clientToken: 'é'.repeat(33) }).error.code, 400, '66 bytes is not')
})

test('nesting: six levels inside desired are allowed, seven are not', () => {
  const nest = (n) => (n === 0 ? 1 : { k: nest(n - 1) })
  assert.equal(req('update', { state: { desired: nest(6) } }).error, undefined)
  assert.deepEqual(req('update', { state: { reported: nest(7) } }).error,
    { code: 400, message: 'JSON contains too many levels of nesting; maximum is 6' })
})

test('413 when the request state or the stored state passes 8 KB', () => {
  assert.equal(req('update', { state: { reported: { big: 'x'.repeat(8200) } } }).error.code, 413)
  let rec = m.emptyRecord()
  rec = m.applyUpdate(rec, req('update', { state: { reported: { a: 'x'.repeat(5000) } } }), NOW).record
  const r = m.applyUpdate(rec, req('update', { state: { desired: { b: 'y'.repeat(5000) } } }), NOW)
  assert.equal(r.error.code, 413)
  assert.equal(rec.version, 1)
})

test('415 for a body that is not UTF-8', () => {
  assert.equal(m.parseRequest('update', Buffer.from([0x7b, 0xff, 0x7d])).error.code, 415)
})

test('unknown top-level fields are ignored (the v2 SDK sends thingName and shadowName)', () => {
  const [, rec] = updates({ state: { reported: { a: 1 } }, thingName: 'dev', shadowName: 'cfg', extra: [1] })
  assert.deepEqual(rec.state, { reported: { a: 1 } })
})

test('state null empties the shadow but keeps it', () => {
  const [r, rec] = updates({ state: { desired: { a: 1 }, reported: { b: 2 } } }, { state: null })
  assert.equal(rec.exists, true)
  assert.deepEqual(rec.state, {})
  assert.equal(r.accepted.version, 2)
})

test('request topics, classic and named', () => {
  assert.deepEqual(m.parseRequestTopic('$aws/things/dev-1/shadow/update'), { thing: 'dev-1', shadow: null, kind: 'update' })
  assert.deepEqual(m.parseRequestTopic('$aws/things/dev-1/shadow/name/cfg/get'), { thing: 'dev-1', shadow: 'cfg', kind: 'get' })
  for (const t of ['$aws/things/dev-1/shadow/update/accepted', '$aws/things/dev-1/shadow/name/get',
    '$aws/things/dev 1/shadow/get', '$aws/things/dev-1/jobs/get',
    '$aws/things/dev-1/shadow/name/' + 'x'.repeat(65) + '/get']) {
    assert.equal(m.parseRequestTopic(t), null, t)
  }
})
