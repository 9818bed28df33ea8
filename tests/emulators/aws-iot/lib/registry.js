// SPDX-License-Identifier: MIT
// Registered certificates and the little policy each carries: which client ids it may connect
// as, which things' shadows it may use, whether it may read lifecycle events. AWS names a
// certificate by its ID, the SHA-256 of its DER encoding in hex; a test may also register a
// common name. Patterns use AWS policy wildcards: '*' any run of characters, '?' one.
'use strict'

const crypto = require('crypto')

function certificateIdOfDer (der) {
  return crypto.createHash('sha256').update(der).digest('hex')
}

function globToRegExp (pattern) {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${body}$`)
}

function matchesAny (patterns, value) {
  return patterns.some((p) => globToRegExp(p).test(value))
}

function stringList (v, name) {
  if (v === undefined) return undefined
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 256)) {
    throw new Error(`${name} must be a list of non-empty strings`)
  }
  return v.slice()
}

class Registry {
  constructor () {
    this.entries = new Map() // key: 'id:<hex>' or 'cn:<name>'
  }

  /** Adds or replaces an entry. spec: {certificatePem | certificateId | commonName, clientIds,
   *  things, events}. clientIds defaults to the certificate's common name, things to none. */
  register (spec) {
    if (spec === null || typeof spec !== 'object') throw new Error('expected a JSON object')
    let key
    let certificateId = null
    let commonName = null
    if (typeof spec.certificatePem === 'string') {
      let x509
      try {
        x509 = new crypto.X509Certificate(spec.certificatePem)
      } catch (e) {
        throw new Error(`certificatePem: ${e.message}`)
      }
      certificateId = certificateIdOfDer(x509.raw)
      const cn = /(?:^|\n)CN=([^\n]*)/.exec(x509.subject)
      commonName = cn ? cn[1] : null
      key = `id:${certificateId}`
    } else if (typeof spec.certificateId === 'string' && /^[0-9a-f]{64}$/.test(spec.certificateId)) {
      certificateId = spec.certificateId
      key = `id:${certificateId}`
    } else if (typeof spec.commonName === 'string' && spec.commonName.length > 0) {
      commonName = spec.commonName
      key = `cn:${commonName}`
    } else {
      throw new Error('one of certificatePem, certificateId (64 hex digits) or commonName is required')
    }
    const entry = {
      key,
      certificateId,
      commonName,
      clientIds: stringList(spec.clientIds, 'clientIds') || (commonName ? [commonName] : []),
      things: stringList(spec.things, 'things') || [],
      events: spec.events === true
    }
    this.entries.set(key, entry)
    return entry
  }

  /** Removes an entry by its key, certificate ID or common name; returns it or null. */
  revoke (name) {
    for (const k of [name, `id:${name}`, `cn:${name}`]) {
      const e = this.entries.get(k)
      if (e) {
        this.entries.delete(k)
        return e
      }
    }
    return null
  }

  /** The entry for a peer certificate (Node's getPeerCertificate()), by ID first, then CN. */
  lookup (peer) {
    if (!peer || !peer.raw) return null
    const id = certificateIdOfDer(peer.raw)
    const byId = this.entries.get(`id:${id}`)
    if (byId) return byId
    const cn = peer.subject && peer.subject.CN
    return (cn && this.entries.get(`cn:${cn}`)) || null
  }

  list () {
    return [...this.entries.values()]
  }
}

function allowsClientId (entry, clientId) {
  return matchesAny(entry.clientIds, clientId)
}

function allowsThing (entry, thing) {
  return matchesAny(entry.things, thing)
}

module.exports = { Registry, allowsClientId, allowsThing, certificateIdOfDer, matchesAny }
