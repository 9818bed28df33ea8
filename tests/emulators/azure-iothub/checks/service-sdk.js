#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// Conformance: Microsoft's service SDK (azure-iothub) against the emulator's REST side:
// Registry.fromConnectionString, getTwin, twin.update (desired and tags, delivered to a device
// connected with Microsoft's device SDK), a stale etag, createQuery(...).nextAsTwin() over
// several pages, a projection, Registry.delete, and the errors the SDK translates (404, 401,
// 429, 400).
// The service SDK only talks to https://{HostName}:443, so the REST side binds
// 127.0.0.1:443 with HostName=localhost, and the CA comes in through NODE_EXTRA_CA_CERTS,
// which Node reads at start-up: the check makes the CA, then runs itself again with it.
// Exits 77 (skipped) when port 443 cannot be bound.
'use strict'

const assert = require('assert')
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')
const { requireSdk, makeCerts, tempDir, randomKey, within, poll, startEmulator, run } = require('./lib')

const HOST = 'localhost'
const STEP_MS = 15000
const SKIP = 77

if (!process.env.AZURE_EMU_CHECK_DIR) {
  const dir = tempDir()
  const certs = makeCerts(dir)
  const r = spawnSync(process.execPath, [__filename], {
    stdio: 'inherit',
    env: { ...process.env, NODE_EXTRA_CA_CERTS: certs.ca, AZURE_EMU_CHECK_DIR: dir },
    timeout: 150000
  })
  fs.rmSync(dir, { recursive: true, force: true })
  process.exit(r.status === null ? 1 : r.status)
}

const { Registry } = requireSdk('azure-iothub')
const { Client } = requireSdk('azure-iot-device')
const { Mqtt } = requireSdk('azure-iot-device-mqtt')

async function main (state) {
  const dir = process.env.AZURE_EMU_CHECK_DIR
  const certs = { ca: path.join(dir, 'ca.crt'), cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key') }
  const ownerKey = randomKey()
  const deviceKey = randomKey()
  const serviceKey = randomKey()
  const devices = ['dev-1', 'dev-2', 'dev-3', 'dev-4', 'dev-5']
    .map(d => ({ deviceId: d, primaryKey: d === 'dev-1' ? deviceKey : randomKey() }))
  devices[4].status = 'disabled'
  try {
    state.hub = await startEmulator(dir, {
      hostName: HOST,
      cert: certs.cert,
      key: certs.key,
      httpsPort: 443,
      policies: [{
        name: 'iothubowner',
        primaryKey: ownerKey,
        rights: ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect']
      }, { name: 'service', primaryKey: serviceKey, rights: ['ServiceConnect'] }],
      devices
    })
  } catch (e) {
    if (/EADDRINUSE|EACCES/.test(e.message)) {
      process.stdout.write(`SKIP: cannot bind 127.0.0.1:443: ${e.message.split('\n')[0]}\n`)
      process.exit(SKIP)
    }
    throw e
  }
  const hub = state.hub
  process.stdout.write(`emulator listening after ${hub.startMs} ms (https 443, mqtt ${hub.ready.mqttPort})\n`)

  const registry = Registry.fromConnectionString(`HostName=${HOST};SharedAccessKeyName=iothubowner;SharedAccessKey=${ownerKey}`)

  // A device connected with Microsoft's device SDK gets the back end's desired change.
  const device = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=dev-1;SharedAccessKey=${deviceKey};GatewayHostName=localhost:${hub.ready.mqttPort}`, Mqtt)
  device.on('error', e => process.stderr.write(`device client error: ${e.message}\n`))
  await within(STEP_MS, device.open(), 'device open()')
  const deviceTwin = await within(STEP_MS, device.getTwin(), 'device getTwin()')
  const changed = within(STEP_MS, new Promise(resolve => {
    deviceTwin.on('properties.desired', d => { if (d.mode === 'eco') resolve(d) })
  }), 'the desired change at the device')
  await poll(async () => (await hub.control('GET', '/connections'))
    .some(c => c.subscriptions.includes('$iothub/twin/PATCH/properties/desired/#')), STEP_MS, 'the device to subscribe')

  const got = await within(STEP_MS, registry.getTwin('dev-1'), 'registry.getTwin')
  const twin = got.responseBody
  assert.strictEqual(twin.deviceId, 'dev-1')
  assert.strictEqual(twin.properties.desired.$version, 1)
  assert.ok(twin.properties.desired.$metadata.$lastUpdated, 'desired has $metadata')
  assert.match(twin.etag, /^[A-Za-z0-9+/]+=*$/)
  const staleEtag = twin.etag

  const updated = (await within(STEP_MS, twin.update({ tags: { site: 'lab' }, properties: { desired: { mode: 'eco', configId: 1 } } }),
    'twin.update')).result
  assert.strictEqual(updated.properties.desired.mode, 'eco')
  assert.strictEqual(updated.properties.desired.$version, 2)
  assert.strictEqual(updated.tags.site, 'lab')
  assert.notStrictEqual(updated.etag, staleEtag, 'the etag changed')
  const delta = await changed
  assert.strictEqual(delta.$version, 2)
  assert.strictEqual(delta.configId, 1)

  // If-Match with the old etag: 412, which the SDK calls InvalidEtagError.
  await assert.rejects(registry.updateTwin('dev-1', { properties: { desired: { mode: 'x' } } }, staleEtag),
    e => e.name === 'InvalidEtagError')
  // And '*' matches any etag.
  const star = (await registry.updateTwin('dev-1', { properties: { desired: { mode: 'eco2' } } }, '*')).responseBody
  assert.strictEqual(star.properties.desired.$version, 3)

  // The device's report is visible to the back end.
  await within(STEP_MS, new Promise((resolve, reject) => deviceTwin.properties.reported.update({ mode: 'eco2', battery: 80 },
    e => (e ? reject(e) : resolve()))), 'the reported update')
  const withReport = (await registry.getTwin('dev-1')).responseBody
  assert.strictEqual(withReport.properties.reported.battery, 80)
  assert.strictEqual(withReport.connectionState, 'Connected')

  // A query over more than one page (page size 2, four enabled devices).
  const q = registry.createQuery("SELECT * FROM devices WHERE status = 'enabled'", 2)
  const seen = []
  let pages = 0
  while (q.hasMoreResults) {
    const page = (await within(STEP_MS, q.nextAsTwin(), 'query.nextAsTwin')).result
    pages++
    assert.ok(page.length <= 2)
    for (const t of page) {
      assert.ok(t.properties && t.properties.desired, 'a Twin with properties')
      seen.push(t.deviceId)
    }
    assert.ok(pages < 10, 'the query ends')
  }
  assert.deepStrictEqual(seen.sort(), ['dev-1', 'dev-2', 'dev-3', 'dev-4'])
  assert.strictEqual(pages, 2)

  const eco = (await registry.createQuery(
    "SELECT * FROM devices WHERE properties.desired.mode = 'eco2' AND properties.reported.battery >= 50"
  ).nextAsTwin()).result
  assert.deepStrictEqual(eco.map(t => t.deviceId), ['dev-1'])

  const proj = await registry.createQuery(
    'SELECT deviceId, properties.reported.battery FROM devices WHERE IS_DEFINED(properties.reported.battery)'
  ).next()
  assert.deepStrictEqual(proj.result, [{ deviceId: 'dev-1', battery: 80 }])
  assert.strictEqual(proj.message.headers['x-ms-item-type'], 'JSON')

  // Registry.delete: the identity and its twin go; a policy without RegistryWrite may not.
  const serviceOnly = Registry.fromConnectionString(`HostName=${HOST};SharedAccessKeyName=service;SharedAccessKey=${serviceKey}`)
  await assert.rejects(serviceOnly.delete('dev-3'), e => e.name === 'UnauthorizedError')
  await within(STEP_MS, registry.delete('dev-3'), 'registry.delete')
  await assert.rejects(registry.getTwin('dev-3'), e => e.name === 'DeviceNotFoundError')
  await assert.rejects(registry.delete('dev-3'), e => e.name === 'DeviceNotFoundError')

  // Errors as the SDK translates them.
  await assert.rejects(registry.getTwin('no-such-device'), e => e.name === 'DeviceNotFoundError')
  const wrong = Registry.fromConnectionString(`HostName=${HOST};SharedAccessKeyName=iothubowner;SharedAccessKey=${randomKey()}`)
  await assert.rejects(wrong.getTwin('dev-1'), e => e.name === 'UnauthorizedError')
  await hub.control('POST', '/faults', { kinds: 'rest', count: 1, status: 429, retryAfter: 3 })
  await assert.rejects(registry.getTwin('dev-1'), e => e.name === 'ThrottlingError' && e.response.headers['retry-after'] === '3')
  await assert.rejects(registry.createQuery('SELECT COUNT() AS n FROM devices').next(),
    e => e.name === 'ArgumentError' && /does not support/.test(e.message))
  await assert.rejects(registry.updateTwin('dev-1', { properties: { desired: { 'bad key': 1 } } }, '*'),
    e => e.name === 'ArgumentError')

  await within(STEP_MS, device.close(), 'device close()')
}

run('service-sdk conformance', main, 120000)
