#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// The device app of Microsoft's tutorial "use desired properties to configure devices", on
// Microsoft's Node device SDK, for azure-bench.py to compare twind with: it waits for desired
// changes, acts only when the configId changed, and reports the configuration with a status
// in the same shape twind uses (twinStatus), so that the benchmark times both alike.
// Environment: AZURE_CS (the device connection string), AZURE_CA (the hub's CA file).
'use strict'

const fs = require('fs')
const path = require('path')

const modules = path.join(__dirname, '..', 'emulators', 'azure-iothub', 'node_modules')
const { Client } = require(path.join(modules, 'azure-iot-device'))
const { Mqtt } = require(path.join(modules, 'azure-iot-device-mqtt'))

async function main () {
  const client = Client.fromConnectionString(process.env.AZURE_CS, Mqtt)
  client.on('error', e => process.stderr.write(`client error: ${e.message}\n`))
  await client.setOptions({ ca: fs.readFileSync(process.env.AZURE_CA, 'utf8') })
  await client.open()
  const twin = await client.getTwin()
  let applied = null
  twin.on('properties.desired', desired => {
    if (desired.configId === undefined || desired.configId === applied) return
    applied = desired.configId
    const config = { configId: desired.configId, sendFrequency: desired.sendFrequency }
    const patch = {
      ...config,
      twinStatus: { state: 'success', desiredVersion: desired.$version, configId: desired.configId }
    }
    twin.properties.reported.update(patch, err => {
      if (err) process.stderr.write(`report failed: ${err.message}\n`)
    })
  })
  process.stdout.write('ready\n')
}

main().catch(e => {
  process.stderr.write(`${e.stack || e}\n`)
  process.exit(1)
})
