#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// Conformance: Microsoft's device SDK (azure-iot-device + azure-iot-device-mqtt) against the
// emulator, in the flow of Microsoft's device twin tutorial (device-twins-node.md): open,
// getTwin, a desired change, a reported update; then a throttled and a refused update, and a
// dropped connection after which the SDK re-subscribes and still gets desired changes.
'use strict'

const assert = require('assert')
const fs = require('fs')
const { requireSdk, makeCerts, tempDir, randomKey, within, poll, startEmulator, run } = require('./lib')
const { Client } = requireSdk('azure-iot-device')
const { Mqtt } = requireSdk('azure-iot-device-mqtt')

const HOST = 'test-hub.azure-devices.net'
const STEP_MS = 15000

function nextDesired (twin, predicate, what) {
  return within(STEP_MS, new Promise(resolve => {
    const on = delta => {
      if (predicate(delta)) {
        twin.removeListener('properties.desired', on)
        resolve(delta)
      }
    }
    twin.on('properties.desired', on)
  }), what)
}

function report (twin, patch) {
  return within(STEP_MS, new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, err => (err ? reject(err) : resolve()))
  }), `the answer to reported ${JSON.stringify(patch)}`)
}

async function main (state) {
  const dir = tempDir()
  const certs = makeCerts(dir)
  const key = randomKey()
  const hub = state.hub = await startEmulator(dir, {
    hostName: HOST,
    cert: certs.cert,
    key: certs.key,
    devices: [{ deviceId: 'dev-1', primaryKey: key }]
  })
  const port = hub.ready.mqttPort
  process.stdout.write(`emulator listening after ${hub.startMs} ms (mqtt ${port})\n`)

  const cs = `HostName=${HOST};DeviceId=dev-1;SharedAccessKey=${key};GatewayHostName=localhost:${port}`
  const client = Client.fromConnectionString(cs, Mqtt)
  client.on('error', e => process.stderr.write(`device client error: ${e.message}\n`))
  await client.setOptions({ ca: fs.readFileSync(certs.ca, 'utf8') })
  await within(STEP_MS, client.open(), 'client.open()')

  const twin = await within(STEP_MS, client.getTwin(), 'client.getTwin()')
  assert.strictEqual(twin.properties.desired.$version, 1, 'a new twin has desired $version 1')
  assert.strictEqual(twin.properties.reported.$version, 1, 'a new twin has reported $version 1')

  // A desired change through the control API reaches the device as a patch with $version.
  const changed = nextDesired(twin, d => d.mode === 'eco', 'the desired change event')
  const set = await hub.control('POST', '/twins/dev-1/desired', { patch: { configId: 1, mode: 'eco' } })
  assert.strictEqual(set.delivered, true, 'the desired change was delivered')
  const delta = await changed
  assert.strictEqual(delta.$version, 2)
  assert.strictEqual(twin.properties.desired.mode, 'eco', 'the SDK merged the patch')

  // A reported update shows in the emulator's twin, with reported $version + 1.
  await report(twin, { mode: 'eco', configId: 1, status: { state: 'success' } })
  let t = await hub.control('GET', '/twins/dev-1')
  assert.strictEqual(t.properties.reported.mode, 'eco')
  assert.deepStrictEqual(t.properties.reported.status, { state: 'success' })
  assert.strictEqual(t.properties.reported.$version, 2)
  assert.strictEqual(t.connectionState, 'Connected')

  // null deletes a reported property.
  await report(twin, { status: null })
  t = await hub.control('GET', '/twins/dev-1')
  assert.strictEqual(t.properties.reported.status, undefined)

  // Errors reach the SDK as errors: a 429 from the throttling control, a 400 for a key
  // with '.', and the next update after them works.
  await hub.control('POST', '/faults', { kinds: 'reported', count: 1, status: 429 })
  await assert.rejects(report(twin, { n: 1 }), /429|injected/, 'a throttled update fails')
  await assert.rejects(report(twin, { 'a.b': 1 }), /'\.'/, 'a key with . is refused')
  await report(twin, { n: 2 })
  t = await hub.control('GET', '/twins/dev-1')
  assert.strictEqual(t.properties.reported.n, 2)
  assert.strictEqual(t.properties.reported['a.b'], undefined)

  // Every GET and PATCH was answered on this connection, and no more than one at a time.
  const counters = await hub.control('GET', '/counters')
  assert.ok(counters.counters.get >= 1, 'the SDK sent a GET')
  assert.strictEqual(counters.counters.reported, 5)

  // A dropped connection: the SDK reconnects with CleanSession 0 and sends no SUBSCRIBE (its
  // twin topic state survives the reconnect), nor a GET (Azure/azure-iot-sdk-node#885); the
  // session restores its subscriptions, so a desired change after it still arrives.
  const before = (await hub.control('GET', '/connections'))[0].conn
  const dropped = await hub.control('POST', '/connections/dev-1/drop', {})
  assert.strictEqual(dropped.dropped, true)
  await poll(async () => {
    const cs = await hub.control('GET', '/connections')
    return cs.find(c => c.conn !== before && c.subscriptions.includes('$iothub/twin/PATCH/properties/desired/#'))
  }, STEP_MS, 'the SDK to reconnect and re-subscribe')
  const again = nextDesired(twin, d => d.mode === 'turbo', 'the desired change after the reconnect')
  await poll(async () => (await hub.control('POST', '/twins/dev-1/desired', { patch: { mode: 'turbo' } })).delivered,
    STEP_MS, 'a delivered desired change')
  const d2 = await again
  assert.ok(d2.$version >= 3)
  const subs = (await hub.control('GET', '/requests?kind=subscribe')).entries.filter(e => e.conn !== before)
  assert.ok(subs.length >= 2 && subs.every(e => e.restored), 'the subscriptions came back from the session')
  const log = await hub.control('GET', '/log')
  assert.ok(log.entries.some(e => e.event === 'drop' && e.conn === before), 'the drop is in the connection log')

  await within(STEP_MS, client.close(), 'client.close()')
  await poll(async () => (await hub.control('GET', '/twins/dev-1')).connectionState === 'Disconnected',
    STEP_MS, 'the twin to show Disconnected')
}

run('device-sdk conformance', main, 120000)
