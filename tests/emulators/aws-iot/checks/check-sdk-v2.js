// SPDX-License-Identifier: MIT
// Holds the emulator to AWS's v2 device SDK (aws-iot-device-sdk-v2 1.28.0 on the aws-crt
// native client, MQTT 3.1.1): named shadows through IotShadowClientv2 (request-response with
// wildcard subscriptions and clientToken correlation, delta and documents streams), and the
// older IotShadowClient, whose request bodies carry thingName and shadowName.
'use strict'

const fs = require('fs')
const assert = require('assert/strict')
const c = require('./common')

const sdk = c.requireOrSkip('aws-iot-device-sdk-v2')
const { mqtt, iot, iotshadow } = sdk
const rr = c.requireOrSkip('aws-crt').mqtt_request_response // the SDK's own dependency

const THING = 'dev-2'
const SHADOW = 'config'
const T = 10000
const N = { thingName: THING, shadowName: SHADOW }
const Q1 = mqtt.QoS.AtLeastOnce

let certs
let emu
let conn
let shadow
const streams = []

function connection (name, clientId) {
  const builder = iot.AwsIotMqttConnectionConfigBuilder
  const cfg = builder.new_mtls_builder_from_path(certs.file(name, 'crt'), certs.file(name, 'key'))
    .with_certificate_authority_from_path(undefined, certs.file('ca', 'crt'))
    .with_endpoint('localhost')
    .with_port(emu.mqttPort)
    .with_client_id(clientId)
    .with_clean_session(true)
    .with_keep_alive_seconds(30)
    .build()
  return new mqtt.MqttClient().new_connection(cfg)
}

async function openStream (s) {
  const established = c.waitFor(s, 'subscriptionStatus',
    (ev) => ev.type === rr.SubscriptionStatusEventType.SubscriptionEstablished, T, 'stream subscription')
  s.open()
  streams.push(s)
  await established
}

function rejection (promise) {
  return promise.then(
    (v) => { throw new Error(`expected a rejection, got ${JSON.stringify(v)}`) },
    (e) => e.modeledError || Promise.reject(e))
}

const steps = [
  ['emulator starts and takes the device certificate', async () => {
    certs = c.makeCerts(['device'])
    emu = await c.startEmulator(certs)
    const r = await c.control(emu, 'POST', '/certificates', {
      certificatePem: fs.readFileSync(certs.file('device', 'crt'), 'utf8'), clientIds: [THING], things: [THING]
    })
    assert.equal(r.status, 201)
  }],

  ['the aws-crt MQTT 3.1.1 client connects over mutual TLS', async () => {
    conn = connection('device', THING)
    await conn.connect()
    shadow = iotshadow.IotShadowClientv2.newFromMqtt311(conn, {
      maxRequestResponseSubscriptions: 6, maxStreamingSubscriptions: 4, operationTimeoutInSeconds: 10
    })
  }],

  ['getNamedShadow of a shadow never written is rejected with 404', async () => {
    const err = await rejection(shadow.getNamedShadow(N))
    assert.equal(err.code, 404)
    assert.match(err.message, new RegExp(`No shadow exists with name: ${SHADOW}`))
  }],

  ['updateNamedShadow creates the shadow; the classic shadow stays apart', async () => {
    const r = await shadow.updateNamedShadow({ ...N, state: { reported: { rate: 5, tags: ['a', 'b'] } } })
    assert.equal(r.version, 1)
    assert.deepEqual(r.state.reported, { rate: 5, tags: ['a', 'b'] })
    const named = (await c.control(emu, 'GET', `/things/${THING}/shadow?name=${SHADOW}`)).body
    assert.equal(named.exists, true)
    assert.deepEqual(named.state, { reported: { rate: 5, tags: ['a', 'b'] } })
    assert.equal((await c.control(emu, 'GET', `/things/${THING}/shadow`)).body.exists, false)
  }],

  ['a foreign desired update arrives on the delta and documents streams', async () => {
    const deltas = shadow.createNamedShadowDeltaUpdatedStream(N)
    const docs = shadow.createNamedShadowUpdatedStream(N)
    await openStream(deltas)
    await openStream(docs)
    const deltaP = c.waitFor(deltas, 'incomingPublish', () => true, T, 'delta event')
    const docP = c.waitFor(docs, 'incomingPublish', () => true, T, 'documents event')
    const r = await c.control(emu, 'POST', `/things/${THING}/shadow?name=${SHADOW}`,
      { state: { desired: { rate: 10, tags: ['a', 'b'] } }, thingName: THING })
    assert.equal(r.status, 200, JSON.stringify(r.body))
    const [{ message: delta }] = await deltaP
    assert.deepEqual(delta.state, { rate: 10 }, 'equal arrays are not in the delta')
    assert.equal(delta.version, 2)
    assert.equal(typeof delta.metadata.rate.timestamp, 'number')
    const [{ message: doc }] = await docP
    assert.equal(doc.previous.version, 1)
    assert.equal(doc.current.version, 2)
    assert.deepEqual(doc.current.state.desired, { rate: 10, tags: ['a', 'b'] })
  }],

  ['getNamedShadow shows the delta; an update answers with the echoed request', async () => {
    const g = await shadow.getNamedShadow(N)
    assert.equal(g.version, 2)
    assert.deepEqual(g.state.delta, { rate: 10 })
    const u = await shadow.updateNamedShadow({ ...N, state: { reported: { rate: 10 } }, version: 2 })
    assert.equal(u.version, 3)
    assert.deepEqual(u.state, { reported: { rate: 10 } })
    const g2 = await shadow.getNamedShadow(N)
    assert.equal(g2.state.delta, undefined)
  }],

  ['a stale version is rejected with 409 through the request-response client', async () => {
    const err = await rejection(shadow.updateNamedShadow({ ...N, state: { reported: { rate: 11 } }, version: 1 }))
    assert.equal(err.code, 409)
  }],

  ['injected faults (429, 500) reach the SDK as rejections, then service resumes', async () => {
    assert.equal((await c.control(emu, 'POST', '/faults', { count: 1, code: 429, kind: 'update' })).status, 201)
    assert.equal((await c.control(emu, 'POST', '/faults', { count: 1, code: 500, kind: 'get' })).status, 201)
    const e1 = await rejection(shadow.updateNamedShadow({ ...N, state: { reported: { rate: 12 } } }))
    assert.equal(e1.code, 429)
    const e2 = await rejection(shadow.getNamedShadow(N))
    assert.equal(e2.code, 500)
    const g = await shadow.getNamedShadow(N)
    assert.equal(g.version, 3)
  }],

  ['IotShadowClient bodies carry thingName and shadowName: they are ignored', async () => {
    const old = new iotshadow.IotShadowClient(conn)
    const acceptedP = new Promise((resolve, reject) => {
      old.subscribeToUpdateNamedShadowAccepted(N, Q1, (err, resp) => (err ? reject(err) : resolve(resp)))
        .then(() => old.publishUpdateNamedShadow({ ...N, clientToken: 'old-client', state: { reported: { mode: 'x' } } }, Q1))
        .catch(reject)
    })
    const timer = new Promise((resolve, reject) => setTimeout(() => reject(new Error('no update/accepted')), T))
    const resp = await Promise.race([acceptedP, timer])
    assert.equal(resp.clientToken, 'old-client')
    assert.equal(resp.version, 4)
    const stored = (await c.control(emu, 'GET', `/things/${THING}/shadow?name=${SHADOW}`)).body
    assert.deepEqual(Object.keys(stored.state).sort(), ['desired', 'reported'])
  }],

  ['deleteNamedShadow keeps the version counter', async () => {
    const d = await shadow.deleteNamedShadow(N)
    assert.equal(d.version, 4)
    const err = await rejection(shadow.getNamedShadow(N))
    assert.equal(err.code, 404)
    const u = await shadow.updateNamedShadow({ ...N, state: { desired: { rate: 1 } } })
    assert.equal(u.version, 5)
  }]
]

async function cleanup () {
  for (const s of streams) s.close()
  if (shadow) shadow.close()
  if (conn) await conn.disconnect().catch(() => {})
  if (emu) await c.stopEmulator(emu)
  if (certs) certs.remove()
}

c.runSteps('aws-iot-sdk-v2', steps, cleanup)
