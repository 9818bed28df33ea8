// SPDX-License-Identifier: MIT
// The twin document model: validation by IoT Hub's rules, JSON merge patch, $metadata,
// $version and etag, and the two renderings (the MQTT GET body and the REST twin).
// Rules: iot-hub-devguide-device-twins.md, "Tags and properties format" and "Device twin size".
'use strict'

const LIMITS = {
  keyBytes: 1024,
  stringBytes: 4096,
  depth: 10,
  sectionSize: { desired: 32768, reported: 32768, tags: 8192 },
  intMin: -4503599627370496n,
  intMax: 4503599627370495n
}

const NEVER = '0001-01-01T00:00:00Z'

class TwinError extends Error {
  // status 400 and IoT Hub's ArgumentInvalid code unless told otherwise
  constructor (message, status = 400, code = 400004) {
    super(message)
    this.status = status
    this.code = code
  }
}

function isObject (v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

// C0, DEL and C1 control characters (the docs: "segments C0 and C1").
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

function checkKey (key, where) {
  if (key.length === 0) throw new TwinError(`${where}: empty key`)
  if (Buffer.byteLength(key, 'utf8') > LIMITS.keyBytes) {
    throw new TwinError(`${where}: key longer than ${LIMITS.keyBytes} bytes`)
  }
  if (/[.$ ]/.test(key) || CONTROL.test(key)) {
    throw new TwinError(`${where}: key '${key.slice(0, 64)}' contains '.', '$', space or a control character`)
  }
}

// depth: how many objects or arrays enclose v below the section's root object. The docs'
// example (tags.one.two...ten.property) is valid, so the root does not count and ten nested
// objects below it are the maximum.
function checkValue (v, where, depth, patch) {
  if (v === null) {
    if (!patch) throw new TwinError(`${where}: null is only allowed in a patch (it deletes)`)
    return
  }
  switch (typeof v) {
    case 'string':
      if (Buffer.byteLength(v, 'utf8') > LIMITS.stringBytes) {
        throw new TwinError(`${where}: string value longer than ${LIMITS.stringBytes} bytes`)
      }
      return
    case 'number':
    case 'boolean':
      return
    case 'object':
      break
    default:
      throw new TwinError(`${where}: unsupported value`)
  }
  if (depth + 1 > LIMITS.depth) {
    throw new TwinError(`${where}: nesting deeper than ${LIMITS.depth} levels`)
  }
  if (Array.isArray(v)) {
    v.forEach((e, i) => checkValue(e, `${where}[${i}]`, depth + 1, false))
    return
  }
  for (const [k, e] of Object.entries(v)) {
    checkKey(k, where)
    checkValue(e, `${where}.${k}`, depth + 1, patch)
  }
}

// Integer literals outside IoT Hub's range, read from the JSON text itself (JSON.parse has
// already rounded them). Strings are matched first so that digits inside them are skipped.
function checkIntegers (text, where) {
  const token = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g
  let m
  while ((m = token.exec(text)) !== null) {
    const t = m[0]
    if (t[0] === '"' || /[.eE]/.test(t)) continue
    const n = BigInt(t)
    if (n < LIMITS.intMin || n > LIMITS.intMax) {
      throw new TwinError(`${where}: integer ${t} outside [${LIMITS.intMin}, ${LIMITS.intMax}]`)
    }
  }
}

// The size as the docs compute it: keys and string values count their characters (control
// characters excluded), numbers 8 bytes, booleans 4; objects and arrays the sum of their parts.
function size (v) {
  if (v === null || v === undefined) return 0
  switch (typeof v) {
    case 'string': return [...v].filter(c => !CONTROL.test(c)).length
    case 'number': return 8
    case 'boolean': return 4
  }
  if (Array.isArray(v)) return v.reduce((s, e) => s + size(e), 0)
  let s = 0
  for (const [k, e] of Object.entries(v)) s += size(k) + size(e)
  return s
}

// Parses a section or patch sent as JSON text; throws TwinError naming the problem.
function parseSection (text, where, { patch }) {
  let v
  try {
    v = JSON.parse(text)
  } catch (e) {
    throw new TwinError(`${where}: malformed JSON: ${e.message}`)
  }
  checkIntegers(text, where)
  validateSection(v, where, { patch })
  return v
}

function validateSection (v, where, { patch }) {
  if (!isObject(v)) throw new TwinError(`${where}: not a JSON object`)
  for (const [k, e] of Object.entries(v)) {
    checkKey(k, where)
    checkValue(e, `${where}.${k}`, 0, patch)
  }
}

function checkSize (section, doc) {
  const s = size(doc)
  if (s > LIMITS.sectionSize[section]) {
    throw new TwinError(`${section}: ${s} bytes, more than ${LIMITS.sectionSize[section]}`, 400, 400004)
  }
}

function clone (v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v))
}

// RFC 7396 merge of patch into target (both plain objects); metadata follows: every object
// on a changed path gets $lastUpdated = now, a replaced value gets a fresh metadata node.
function merge (target, meta, patch, now) {
  meta.$lastUpdated = now
  for (const [k, p] of Object.entries(patch)) {
    if (p === null) {
      delete target[k]
      delete meta[k]
    } else if (isObject(p) && isObject(target[k])) {
      if (!isObject(meta[k])) meta[k] = {}
      merge(target[k], meta[k], p, now)
    } else {
      target[k] = stripNulls(clone(p))
      meta[k] = metadataFor(target[k], now)
    }
  }
}

function stripNulls (v) {
  if (isObject(v)) {
    for (const [k, e] of Object.entries(v)) {
      if (e === null) delete v[k]
      else stripNulls(e)
    }
  }
  return v
}

function metadataFor (v, now) {
  const m = { $lastUpdated: now }
  if (isObject(v)) {
    for (const [k, e] of Object.entries(v)) m[k] = metadataFor(e, now)
  }
  return m
}

function nowIso () {
  return new Date().toISOString()
}

// One twin (a device's or a module's): its sections, versions and identity-side fields.
class Twin {
  constructor (deviceId, moduleId) {
    const now = nowIso()
    this.deviceId = deviceId
    this.moduleId = moduleId || null
    this.tags = {}
    this.desired = {}
    this.reported = {}
    this.desiredMeta = { $lastUpdated: now }
    this.reportedMeta = { $lastUpdated: now }
    this.desiredVersion = 1
    this.reportedVersion = 1
    this.version = 1 // the twin's version, also behind its etag
  }

  get etag () {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(BigInt(this.version))
    return b.toString('base64')
  }

  // The section after merging patch (or replacing it by doc), with its metadata, size-checked;
  // nothing changes until commit.
  candidate (section, value, replace) {
    const now = nowIso()
    let doc, meta
    if (replace) {
      doc = stripNulls(clone(value))
      meta = metadataFor(doc, now)
    } else {
      doc = clone(this[section])
      meta = clone(this[section + 'Meta'] || {})
      merge(doc, meta, value, now)
    }
    checkSize(section, doc)
    return { section, doc, meta }
  }

  commit (c) {
    this[c.section] = c.doc
    if (c.section !== 'tags') this[c.section + 'Meta'] = c.meta
    this.version++
    if (c.section === 'desired') return ++this.desiredVersion
    if (c.section === 'reported') return ++this.reportedVersion
    return this.version
  }

  // A device's reported patch (parsed and validated); returns the new reported $version.
  patchReported (patch) {
    return this.commit(this.candidate('reported', patch, false))
  }

  // A back end's update of { tags?, desired? }, merged or replacing, all or nothing. Returns
  // the new desired $version, or null when desired was not part of it.
  updateFromService ({ tags, desired }, replace) {
    const cs = []
    if (tags !== undefined) cs.push(this.candidate('tags', tags, replace))
    if (desired !== undefined) cs.push(this.candidate('desired', desired, replace))
    let version = null
    for (const c of cs) {
      const v = this.commit(c)
      if (c.section === 'desired') version = v
    }
    return version
  }

  // The body of the answer to $iothub/twin/GET (iot-mqtt-connect-to-iot-hub.md): the
  // properties with $version, no $metadata, no tags.
  mqttDocument () {
    return {
      desired: { ...clone(this.desired), $version: this.desiredVersion },
      reported: { ...clone(this.reported), $version: this.reportedVersion }
    }
  }

  // The twin as REST's Get Twin and queries return it; identity: the registry's entry.
  restDocument (identity) {
    const t = {
      deviceId: this.deviceId
    }
    if (this.moduleId) t.moduleId = this.moduleId
    Object.assign(t, {
      etag: this.etag,
      deviceEtag: identity.etag,
      status: identity.status,
      statusReason: identity.statusReason || null,
      statusUpdateTime: identity.statusUpdateTime || NEVER,
      connectionState: identity.connected ? 'Connected' : 'Disconnected',
      lastActivityTime: identity.lastActivityTime || NEVER,
      cloudToDeviceMessageCount: 0,
      authenticationType: identity.authenticationType,
      x509Thumbprint: {
        primaryThumbprint: identity.primaryThumbprint || null,
        secondaryThumbprint: identity.secondaryThumbprint || null
      },
      modelId: '',
      version: this.version,
      tags: clone(this.tags),
      properties: {
        desired: {
          ...clone(this.desired),
          $metadata: clone(this.desiredMeta),
          $version: this.desiredVersion
        },
        reported: {
          ...clone(this.reported),
          $metadata: clone(this.reportedMeta),
          $version: this.reportedVersion
        }
      }
    })
    if (!this.moduleId) t.capabilities = { iotEdge: false }
    return t
  }
}

module.exports = { Twin, TwinError, LIMITS, parseSection, validateSection, checkIntegers, size, isObject }
