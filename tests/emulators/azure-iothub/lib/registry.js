// SPDX-License-Identifier: MIT
// The identity registry: devices and modules with their credentials, status and twin, and the
// hub's shared access policies. Both sides (MQTT and REST) and the control API share one.
'use strict'

const crypto = require('crypto')
const EventEmitter = require('events')
const { Twin } = require('./twin')

// Device ids: iot-hub-devguide-identity-registry.md (up to 128 characters of ASCII
// alphanumerics and - . + % _ # * ? ! ( ) , : = @ $ '), module ids the same.
const ID = /^[A-Za-z0-9\-.+%_#*?!(),:=@$']{1,128}$/

const RIGHTS = ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect']

function randomKey () {
  return crypto.randomBytes(32).toString('base64')
}

function identityKey (deviceId, moduleId) {
  return moduleId ? `${deviceId}/${moduleId}` : deviceId
}

function normalizeThumbprint (t) {
  return t ? String(t).replace(/[^0-9a-fA-F]/g, '').toUpperCase() : null
}

class Registry extends EventEmitter {
  constructor (hostName) {
    super()
    this.hostName = hostName
    this.identities = new Map() // identityKey -> identity
    this.policies = new Map() // name -> { name, primaryKey, secondaryKey, rights }
  }

  addPolicy ({ name, primaryKey, secondaryKey, rights }) {
    for (const r of rights) {
      if (!RIGHTS.includes(r)) throw new Error(`policy ${name}: unknown right ${r}`)
    }
    const p = { name, primaryKey: primaryKey || randomKey(), secondaryKey: secondaryKey || randomKey(), rights }
    this.policies.set(name, p)
    return p
  }

  // spec: { deviceId, moduleId?, primaryKey?, secondaryKey?, status?, authenticationType?
  //         ('sas', 'selfSigned', 'certificateAuthority'), primaryThumbprint?, secondaryThumbprint? }
  add (spec) {
    const { deviceId, moduleId } = spec
    if (!ID.test(deviceId || '')) throw new Error(`invalid device id '${deviceId}'`)
    if (moduleId !== undefined && moduleId !== null && !ID.test(moduleId)) {
      throw new Error(`invalid module id '${moduleId}'`)
    }
    if (moduleId && !this.identities.has(deviceId)) throw new Error(`module of unknown device '${deviceId}'`)
    const key = identityKey(deviceId, moduleId)
    if (this.identities.has(key)) throw new Error(`'${key}' already exists`)
    const authenticationType = spec.authenticationType || 'sas'
    if (!['sas', 'selfSigned', 'certificateAuthority'].includes(authenticationType)) {
      throw new Error(`unknown authenticationType '${authenticationType}'`)
    }
    const status = spec.status || 'enabled'
    if (!['enabled', 'disabled'].includes(status)) throw new Error(`unknown status '${status}'`)
    const id = {
      key,
      deviceId,
      moduleId: moduleId || null,
      authenticationType,
      primaryKey: authenticationType === 'sas' ? (spec.primaryKey || randomKey()) : null,
      secondaryKey: authenticationType === 'sas' ? (spec.secondaryKey || randomKey()) : null,
      primaryThumbprint: normalizeThumbprint(spec.primaryThumbprint),
      secondaryThumbprint: normalizeThumbprint(spec.secondaryThumbprint),
      status,
      statusReason: null,
      statusUpdateTime: null,
      identityVersion: 1,
      connected: false,
      lastActivityTime: null,
      twin: new Twin(deviceId, moduleId)
    }
    Object.defineProperty(id, 'etag', {
      get () { return Buffer.from(String(this.identityVersion)).toString('base64') }
    })
    this.identities.set(key, id)
    return id
  }

  get (deviceId, moduleId) {
    return this.identities.get(identityKey(deviceId, moduleId)) || null
  }

  // Removes the identity (a device takes its modules along); 'removed' lets the MQTT side
  // close their connections.
  remove (deviceId, moduleId) {
    const key = identityKey(deviceId, moduleId)
    const id = this.identities.get(key)
    if (!id) return false
    const gone = [id]
    if (!moduleId) {
      for (const other of this.identities.values()) {
        if (other.moduleId && other.deviceId === deviceId) gone.push(other)
      }
    }
    for (const g of gone) {
      this.identities.delete(g.key)
      this.emit('removed', g)
    }
    return true
  }

  setStatus (id, status, reason) {
    if (!['enabled', 'disabled'].includes(status)) throw new Error(`unknown status '${status}'`)
    id.status = status
    id.statusReason = reason || null
    id.statusUpdateTime = new Date().toISOString()
    id.identityVersion++
    if (status === 'disabled') this.emit('disabled', id)
  }

  // The twins a query runs over, in a stable order (device id, then module id).
  twins (modules) {
    return [...this.identities.values()]
      .filter(id => Boolean(id.moduleId) === Boolean(modules))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
  }

  // The resource a device or module token names: {host}/devices/{id}[/modules/{m}].
  resourceOf (id) {
    let r = `${this.hostName}/devices/${id.deviceId}`
    if (id.moduleId) r += `/modules/${id.moduleId}`
    return r
  }
}

module.exports = { Registry, identityKey, normalizeThumbprint, randomKey }
