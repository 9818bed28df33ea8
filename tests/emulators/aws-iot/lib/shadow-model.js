// SPDX-License-Identifier: MIT
// The shadow document rules of AWS IoT Device Shadow, as pure functions over plain values:
// request validation, merge, metadata, delta, versions. No I/O, no clock (callers pass `now`,
// seconds since the epoch). References: developerguide device-shadow-document.md,
// device-shadow-data-flow.md, device-shadow-error-messages.md (see README.md).
'use strict'

const LIMITS = Object.freeze({
  stateBytes: 8192, // desired + reported, metadata excluded (diagnosing-shadows)
  depth: 6, // levels inside desired or reported (quota "maximum depth of JSON device state")
  clientTokenBytes: 64,
  thingNameBytes: 128,
  shadowNameBytes: 64
})

const MESSAGES = Object.freeze({
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Version conflict',
  413: 'The payload exceeds the maximum size allowed',
  415: 'Unsupported documented encoding; supported encoding is UTF-8',
  429: 'Too Many Requests',
  500: 'Internal service failure'
})

const NAME_RE = /^[A-Za-z0-9:_-]+$/

function isObject (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function deepEqual (a, b) {
  if (a === b) return true
  if (Array.isArray(a)) {
    return Array.isArray(b) && a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  }
  if (isObject(a) && isObject(b)) {
    const ka = Object.keys(a)
    return ka.length === Object.keys(b).length &&
      ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual(a[k], b[k]))
  }
  return false
}

function clone (v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v))
}

/** Levels of containers in v: a scalar is 0, {a: 1} is 1, {a: {b: 1}} is 2. */
function depth (v) {
  if (Array.isArray(v)) return 1 + v.reduce((m, x) => Math.max(m, depth(x)), 0)
  if (isObject(v)) return 1 + Object.values(v).reduce((m, x) => Math.max(m, depth(x)), 0)
  return 0
}

function hasNullInArray (v, inArray) {
  if (v === null) return inArray
  if (Array.isArray(v)) return v.some((x) => hasNullInArray(x, true))
  if (isObject(v)) return Object.values(v).some((x) => hasNullInArray(x, false))
  return false
}

/** The metadata of a value written at `now`: {timestamp} per leaf, arrays element by element. */
function metadataOf (v, now) {
  if (isObject(v)) {
    const m = {}
    for (const k of Object.keys(v)) m[k] = metadataOf(v[k], now)
    return m
  }
  if (Array.isArray(v)) return v.map((x) => metadataOf(x, now))
  return { timestamp: now }
}

/** Merges patch into a copy of base: null removes a key, objects merge, anything else replaces.
 *  Returns [value, metadata]; meta is base's metadata, updated along the patched paths. */
function mergeSection (base, meta, patch, now) {
  if (!isObject(patch) || !isObject(base)) {
    return [clone(patch), metadataOf(patch, now)]
  }
  const out = clone(base)
  const outMeta = isObject(meta) ? clone(meta) : {}
  for (const k of Object.keys(patch)) {
    const p = patch[k]
    if (p === null) {
      delete out[k]
      delete outMeta[k]
    } else if (isObject(p) && isObject(out[k])) {
      const [v, m] = mergeSection(out[k], outMeta[k], p, now)
      out[k] = v
      outMeta[k] = m
    } else {
      out[k] = clone(p)
      outMeta[k] = metadataOf(p, now)
    }
  }
  return [out, outMeta]
}

/** The delta of desired against reported, with the desired metadata of its paths; arrays are
 *  values. Returns null when nothing differs. */
function computeDelta (desired, reported, desiredMeta) {
  if (!isObject(desired)) return null
  const rep = isObject(reported) ? reported : {}
  const meta = isObject(desiredMeta) ? desiredMeta : {}
  const state = {}
  const metadata = {}
  for (const k of Object.keys(desired)) {
    const d = desired[k]
    if (isObject(d) && isObject(rep[k])) {
      const sub = computeDelta(d, rep[k], meta[k])
      if (sub) {
        state[k] = sub.state
        metadata[k] = sub.metadata
      }
    } else if (!Object.prototype.hasOwnProperty.call(rep, k) || !deepEqual(d, rep[k])) {
      state[k] = clone(d)
      if (meta[k] !== undefined) metadata[k] = clone(meta[k])
    }
  }
  return Object.keys(state).length ? { state, metadata } : null
}

function byteLength (s) {
  return Buffer.byteLength(s, 'utf8')
}

/** A shadow that was never written. version counts accepted updates, and survives delete. */
function emptyRecord () {
  return { exists: false, version: 0, state: {}, metadata: {} }
}

function error (code, message, clientToken) {
  return { error: { code, message: message || MESSAGES[code] }, clientToken }
}

/** Parses a request body (a Buffer). Returns {body, clientToken} or {error, clientToken}.
 *  kind is 'get', 'update' or 'delete'. Unknown top-level fields are ignored. */
function parseRequest (kind, payload) {
  const buf = Buffer.isBuffer(payload) ? payload : Buffer.from(payload || '')
  let text
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf)
  } catch (e) {
    return kind === 'delete' ? { body: {} } : error(415)
  }
  if (text.trim() === '') {
    return kind === 'update' ? error(400, 'Invalid JSON') : { body: {} }
  }
  let body
  try {
    body = JSON.parse(text)
  } catch (e) {
    // The delete body is ignored (device-shadow-mqtt: "The content of the message is ignored").
    return kind === 'delete' ? { body: {} } : error(400, 'Invalid JSON')
  }
  if (!isObject(body)) return kind === 'delete' ? { body: {} } : error(400, 'Invalid JSON')

  let clientToken
  if (body.clientToken !== undefined) {
    const t = body.clientToken
    if (typeof t !== 'string' || byteLength(t) > LIMITS.clientTokenBytes) {
      if (kind === 'delete') return { body: {} }
      return error(400, 'Invalid clientToken')
    }
    clientToken = t
  }
  if (kind !== 'update') return { body, clientToken }

  if (body.version !== undefined &&
      !(typeof body.version === 'number' && Number.isSafeInteger(body.version) && body.version >= 0)) {
    return error(400, 'Invalid version', clientToken)
  }
  if (!Object.prototype.hasOwnProperty.call(body, 'state')) {
    return error(400, 'Missing required node: state', clientToken)
  }
  const state = body.state
  if (state !== null) {
    if (!isObject(state)) return error(400, 'State node must be an object', clientToken)
    for (const k of Object.keys(state)) {
      if (k !== 'desired' && k !== 'reported') {
        return error(400, 'State contains an invalid node', clientToken)
      }
    }
    for (const section of ['desired', 'reported']) {
      const v = state[section]
      if (v === undefined || v === null) continue
      if (!isObject(v)) {
        const name = section === 'desired' ? 'Desired' : 'Reported'
        return error(400, `${name} node must be an object`, clientToken)
      }
      if (depth(v) > LIMITS.depth) {
        return error(400, 'JSON contains too many levels of nesting; maximum is 6', clientToken)
      }
      if (hasNullInArray(v, false)) {
        return error(400, 'State contains an invalid node', clientToken)
      }
    }
    if (byteLength(JSON.stringify(state)) > LIMITS.stateBytes) return error(413, null, clientToken)
  }
  return { body, clientToken }
}

function documentOf (record) {
  return { state: clone(record.state), metadata: clone(record.metadata), version: record.version }
}

function withToken (payload, clientToken) {
  if (clientToken !== undefined) payload.clientToken = clientToken
  return payload
}

/** An update already parsed by parseRequest. Returns {error, clientToken} or
 *  {record, accepted, delta, documents}: delta is null unless the request wrote desired and
 *  desired still differs from reported. */
function applyUpdate (record, parsed, now) {
  const { body, clientToken } = parsed
  if (body.version !== undefined && body.version !== record.version) {
    return error(409, null, clientToken)
  }
  const reqState = body.state
  const next = {
    exists: true,
    version: record.version + 1,
    state: record.exists ? clone(record.state) : {},
    metadata: record.exists ? clone(record.metadata) : {}
  }
  const acceptedMeta = {}
  const sections = reqState === null ? { desired: null, reported: null } : reqState
  for (const section of ['desired', 'reported']) {
    if (!Object.prototype.hasOwnProperty.call(sections, section)) continue
    const patch = sections[section]
    if (patch === null) {
      delete next.state[section]
      delete next.metadata[section]
      acceptedMeta[section] = { timestamp: now }
      continue
    }
    const [v, m] = mergeSection(next.state[section] || {}, next.metadata[section], patch, now)
    next.state[section] = v
    next.metadata[section] = m
    acceptedMeta[section] = metadataOf(patch, now)
  }
  const stored = { desired: next.state.desired, reported: next.state.reported }
  if (byteLength(JSON.stringify(stored)) > LIMITS.stateBytes) return error(413, null, clientToken)

  const accepted = withToken({
    state: clone(reqState),
    metadata: acceptedMeta,
    version: next.version,
    timestamp: now
  }, clientToken)

  let delta = null
  if (reqState !== null && isObject(reqState.desired)) {
    const d = computeDelta(next.state.desired, next.state.reported, next.metadata.desired)
    if (d) {
      delta = withToken({ version: next.version, timestamp: now, state: d.state, metadata: d.metadata },
        clientToken)
    }
  }
  const documents = withToken({
    previous: record.exists ? documentOf(record) : null,
    current: documentOf(next),
    timestamp: now
  }, clientToken)
  return { record: next, accepted, delta, documents }
}

/** The /get/accepted document, with state.delta when desired and reported differ. */
function getDocument (record, parsed, now, missingName) {
  const { clientToken } = parsed
  if (!record.exists) return error(404, `No shadow exists with name: ${missingName}`, clientToken)
  const state = clone(record.state)
  const metadata = clone(record.metadata)
  const d = computeDelta(record.state.desired, record.state.reported, record.metadata.desired)
  if (d) {
    state.delta = d.state
    metadata.delta = d.metadata
  }
  return { payload: withToken({ state, metadata, version: record.version, timestamp: now }, clientToken) }
}

/** Deletes a shadow; its version counter stays, so the next update follows on from it. */
function applyDelete (record, parsed, now, missingName) {
  const { clientToken } = parsed
  if (!record.exists) return error(404, `No shadow exists with name: ${missingName}`, clientToken)
  return {
    record: { exists: false, version: record.version, state: {}, metadata: {} },
    accepted: withToken({ version: record.version, timestamp: now }, clientToken)
  }
}

/** The error document published on .../rejected. */
function errorDocument (code, message, clientToken, now) {
  return withToken({ code, message: message || MESSAGES[code] || 'Error', timestamp: now }, clientToken)
}

/** Parses a shadow request topic: {thing, shadow (null for classic), kind} or null. */
function parseRequestTopic (topic) {
  const t = topic.split('/')
  if (t[0] !== '$aws' || t[1] !== 'things' || t[3] !== 'shadow') return null
  let shadow = null
  let rest = t.slice(4)
  if (rest[0] === 'name' && rest.length === 3) {
    shadow = rest[1]
    rest = rest.slice(2)
  }
  if (rest.length !== 1 || !['get', 'update', 'delete'].includes(rest[0])) return null
  if (!validName(t[2], LIMITS.thingNameBytes)) return null
  if (shadow !== null && !validName(shadow, LIMITS.shadowNameBytes)) return null
  return { thing: t[2], shadow, kind: rest[0] }
}

function validName (name, maxBytes) {
  return typeof name === 'string' && NAME_RE.test(name) && byteLength(name) <= maxBytes
}

/** The topic prefix of a shadow: $aws/things/T/shadow[/name/S]. */
function topicPrefix (thing, shadow) {
  return shadow ? `$aws/things/${thing}/shadow/name/${shadow}` : `$aws/things/${thing}/shadow`
}

module.exports = {
  LIMITS,
  MESSAGES,
  emptyRecord,
  parseRequest,
  applyUpdate,
  applyDelete,
  getDocument,
  errorDocument,
  computeDelta,
  mergeSection,
  metadataOf,
  parseRequestTopic,
  topicPrefix,
  validName,
  isObject
}
