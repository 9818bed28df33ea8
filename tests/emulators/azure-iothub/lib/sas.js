// SPDX-License-Identifier: MIT
// Shared access signatures (iot-hub-dev-guide-sas.md, "Security token structure"):
// "SharedAccessSignature sr=...&sig=...&se=...[&skn=...]", fields in any order.
'use strict'

const crypto = require('crypto')

const PREFIX = 'SharedAccessSignature '

// Returns { srRaw, resource, sig, se, seRaw, skn } or throws an Error naming the problem.
// srRaw is kept as received: the signature covers it exactly as the signer encoded it.
function parse (token) {
  if (typeof token !== 'string' || !token.startsWith(PREFIX)) {
    throw new Error('not a SharedAccessSignature token')
  }
  const fields = {}
  for (const part of token.slice(PREFIX.length).split('&')) {
    const eq = part.indexOf('=')
    if (eq <= 0) throw new Error(`malformed token field '${part.slice(0, 32)}'`)
    fields[part.slice(0, eq)] = part.slice(eq + 1)
  }
  for (const f of ['sr', 'sig', 'se']) {
    if (!fields[f]) throw new Error(`token without ${f}`)
  }
  if (!/^\d+$/.test(fields.se)) throw new Error('token se is not a number of seconds')
  let resource, sig, skn
  try {
    resource = decodeURIComponent(fields.sr)
    sig = Buffer.from(decodeURIComponent(fields.sig), 'base64')
    skn = fields.skn === undefined ? null : decodeURIComponent(fields.skn)
  } catch (e) {
    throw new Error('token field is not URL-encoded')
  }
  return { srRaw: fields.sr, resource, sig, seRaw: fields.se, se: Number(fields.se), skn }
}

// True when the HMAC-SHA256 with the base64-decoded key over sr + "\n" + se is sig.
function signatureMatches (parsed, keyBase64) {
  if (!keyBase64) return false
  const mac = crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64'))
    .update(parsed.srRaw + '\n' + parsed.seRaw)
    .digest()
  return mac.length === parsed.sig.length && crypto.timingSafeEqual(mac, parsed.sig)
}

function expired (parsed, nowMs = Date.now()) {
  return parsed.se * 1000 <= nowMs
}

// "The URI prefix is computed by segment and not by character": /a/b covers /a/b/c, not /a/bc.
// Compared case-insensitively.
function coversResource (tokenResource, resource) {
  const t = tokenResource.toLowerCase().replace(/\/+$/, '')
  const r = resource.toLowerCase()
  return r === t || r.startsWith(t + '/')
}

// A token for tests and tools: sr is encodeURIComponent(resource), as Microsoft's SDKs send it.
function create (resource, keyBase64, expirySeconds, keyName) {
  const sr = encodeURIComponent(resource)
  const sig = crypto.createHmac('sha256', Buffer.from(keyBase64, 'base64'))
    .update(sr + '\n' + expirySeconds).digest('base64')
  let t = `${PREFIX}sr=${sr}&sig=${encodeURIComponent(sig)}&se=${expirySeconds}`
  if (keyName) t += `&skn=${encodeURIComponent(keyName)}`
  return t
}

module.exports = { parse, signatureMatches, expired, coversResource, create }
