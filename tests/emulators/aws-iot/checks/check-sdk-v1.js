// SPDX-License-Identifier: MIT
// Holds the emulator to AWS's own v1 device SDK (aws-iot-device-sdk 2.2.16, thingShadow): the
// SDK's classic-shadow flow must pass against it as it passes against AWS IoT. The SDK puts
// the last version it saw into every request, GET and DELETE included.
'use strict'

const fs = require('fs')
const assert = require('assert/strict')
const c = require('./common')

const awsIot = c.requireOrSkip('aws-iot-device-sdk')

const THING = 'dev-1'
const T = 10000 // bound of one wait, ms

let certs
let emu
const clients = []

function shadowClient (name, clientId) {
  const ts = awsIot.thingShadow({
    keyPath: certs.file(name, 'key'),
    certPath: certs.file(name, 'crt'),
    caPath: certs.file('ca', 'crt'),
    clientId,
    host: 'localhost',
    port: emu.mqttPort,
    baseReconnectTimeMs: 250,
    keepalive: 30
  }, { operationTimeout: T })
  ts.on('error', () => {})
  clients.push(ts)
  return ts
}

async function connectAndRegister (ts) {
  await c.waitFor(ts, 'connect', () => true, T, 'connect')
  await new Promise((resolve, reject) => {
    ts.register(THING, { persistentSubscribe: true }, (err, failed) => {
      if (err) reject(new Error(`register: ${err} ${JSON.stringify(failed)}`))
      else resolve()
    })
  })
}

/** Starts an operation and resolves to [status, stateObject] of its answer. */
async function operation (ts, start) {
  const statusP = new Promise((resolve, reject) => {
    let token = null
    const timer = setTimeout(() => reject(new Error(`no answer to ${token}`)), T)
    ts.on('status', function on (thing, stat, clientToken, obj) {
      if (token === null || clientToken !== token) return
      clearTimeout(timer)
      ts.removeListener('status', on)
      resolve([stat, obj])
    })
    token = start()
    assert.ok(token, 'the SDK refused to start the operation')
  })
  return statusP
}

async function peek () {
  const r = await c.control(emu, 'GET', `/things/${THING}/shadow`)
  assert.equal(r.status, 200)
  return r.body
}

let device
let service

const steps = [
  ['emulator starts and takes the device and service certificates', async () => {
    certs = c.makeCerts(['device', 'service', 'stranger'])
    emu = await c.startEmulator(certs)
    const device = await c.control(emu, 'POST', '/certificates', {
      certificatePem: fs.readFileSync(certs.file('device', 'crt'), 'utf8'), clientIds: [THING], things: [THING]
    })
    assert.equal(device.status, 201, JSON.stringify(device.body))
    const service = await c.control(emu, 'POST', '/certificates', {
      certificatePem: fs.readFileSync(certs.file('service', 'crt'), 'utf8'), clientIds: ['svc-*'], things: ['*'], events: true
    })
    assert.equal(service.status, 201)
  }],

  ['thingShadow connects over mutual TLS and registers the thing', async () => {
    device = shadowClient('device', THING)
    await connectAndRegister(device)
  }],

  ['get of a shadow never written is rejected with 404', async () => {
    const [stat, obj] = await operation(device, () => device.get(THING))
    assert.equal(stat, 'rejected')
    assert.equal(obj.code, 404)
    assert.match(obj.message, /No shadow exists/)
  }],

  ['update reported is accepted as version 1 and the emulator holds it', async () => {
    const [stat, obj] = await operation(device, () => device.update(THING, { state: { reported: { temp: 20, mode: 'idle' } } }))
    assert.equal(stat, 'accepted', JSON.stringify(obj))
    assert.equal(obj.version, 1)
    assert.deepEqual(obj.state, { reported: { temp: 20, mode: 'idle' } })
    assert.equal(typeof obj.metadata.reported.temp.timestamp, 'number')
    const s = await peek()
    assert.deepEqual(s.state, { reported: { temp: 20, mode: 'idle' } })
    assert.equal(s.version, 1)
  }],

  ['a foreign update through the control API reaches the device as a delta only', async () => {
    const deltaP = c.waitFor(device, 'delta', (thing) => thing === THING, T, 'delta')
    let foreign = 0
    device.on('foreignStateChange', () => { foreign++ })
    const r = await c.control(emu, 'POST', `/things/${THING}/shadow`, { state: { desired: { mode: 'cool' } } })
    assert.equal(r.status, 200, JSON.stringify(r.body))
    assert.equal(r.body.version, 2)
    const [, delta] = await deltaP
    assert.deepEqual(delta.state, { mode: 'cool' })
    assert.equal(delta.version, 2)
    // The REST-style answer goes to its caller: no update/accepted reaches MQTT subscribers.
    const [stat] = await operation(device, () => device.get(THING))
    assert.equal(stat, 'accepted')
    assert.equal(foreign, 0)
  }],

  ['an update by a second SDK client reaches the device as delta and foreignStateChange', async () => {
    service = shadowClient('service', 'svc-1')
    await connectAndRegister(service)
    const deltaP = c.waitFor(device, 'delta', (thing, d) => d.state.fan !== undefined, T, 'delta with fan')
    const foreignP = c.waitFor(device, 'foreignStateChange', (thing, op) => op === 'update', T, 'foreignStateChange')
    const [stat, obj] = await operation(service, () => service.update(THING, { state: { desired: { fan: 'high' } } }))
    assert.equal(stat, 'accepted', JSON.stringify(obj))
    assert.equal(obj.version, 3)
    const [, delta] = await deltaP
    assert.deepEqual(delta.state, { mode: 'cool', fan: 'high' }, 'the delta holds every difference')
    await foreignP
  }],

  ['the device reports the desired state and the delta is gone', async () => {
    const [stat, obj] = await operation(device, () => device.update(THING, { state: { reported: { mode: 'cool', fan: 'high' } } }))
    assert.equal(stat, 'accepted', JSON.stringify(obj))
    assert.equal(obj.version, 4)
    const [gstat, doc] = await operation(device, () => device.get(THING))
    assert.equal(gstat, 'accepted')
    assert.equal(doc.state.delta, undefined)
    assert.deepEqual(doc.state.reported, { temp: 20, mode: 'cool', fan: 'high' })
    assert.deepEqual(doc.state.desired, { mode: 'cool', fan: 'high' })
    assert.equal(doc.version, 4)
  }],

  ['an update with a stale version is rejected with 409; a GET with it is answered', async () => {
    // A foreign report moves the version on without telling the device (no delta).
    const r = await c.control(emu, 'POST', `/things/${THING}/shadow`, { state: { reported: { temp: 21 } } })
    assert.equal(r.body.version, 5)
    const [stat, obj] = await operation(device, () => device.update(THING, { state: { reported: { temp: 22 } } }))
    assert.equal(stat, 'rejected')
    assert.equal(obj.code, 409)
    assert.equal(obj.message, 'Version conflict')
    const [gstat, doc] = await operation(device, () => device.get(THING)) // carries version 4
    assert.equal(gstat, 'accepted')
    assert.equal(doc.version, 5)
    const [ustat, upd] = await operation(device, () => device.update(THING, { state: { reported: { temp: 22 } } }))
    assert.equal(ustat, 'accepted', JSON.stringify(upd))
    assert.equal(upd.version, 6)
  }],

  ['delete keeps the version counter: the next update follows on', async () => {
    const [stat, obj] = await operation(device, () => device.delete(THING))
    assert.equal(stat, 'accepted', JSON.stringify(obj))
    assert.equal(obj.version, 6)
    const s = await peek()
    assert.equal(s.exists, false)
    assert.equal(s.version, 6)
    const [gstat, g] = await operation(device, () => device.get(THING))
    assert.equal(gstat, 'rejected')
    assert.equal(g.code, 404)
    const [ustat, upd] = await operation(device, () => device.update(THING, { state: { reported: { temp: 23 } } }))
    assert.equal(ustat, 'accepted', JSON.stringify(upd))
    assert.equal(upd.version, 7)
    assert.deepEqual((await peek()).state, { reported: { temp: 23 } })
  }],

  ['certificates from another CA, or not registered, never connect', async () => {
    for (const name of ['rogue', 'stranger']) {
      const before = (await c.control(emu, 'GET', '/log')).body.length
      const ts = shadowClient(name, THING + '-' + name)
      let connected = false
      ts.on('connect', () => { connected = true })
      const log = await c.poll(async () => {
        const l = (await c.control(emu, 'GET', '/log')).body.slice(before)
        return l.find((e) => e.event === 'tls-refused' || e.event === 'refused')
      }, T, `a refusal of ${name}`)
      assert.equal(connected, false)
      assert.equal(log.event, name === 'rogue' ? 'tls-refused' : 'refused')
      if (name === 'stranger') assert.equal(log.reason, 'certificate not registered')
      ts.end(true)
    }
  }]
]

async function cleanup () {
  for (const ts of clients) await new Promise((resolve) => ts.end(true, () => resolve()))
  if (emu) await c.stopEmulator(emu)
  if (certs) certs.remove()
}

c.runSteps('aws-iot-sdk-v1', steps, cleanup)
