#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// An Azure IoT Hub emulator for tests: device twins over MQTT/TLS, the twin REST API over
// HTTPS, SAS tokens, and a control API. Usage: node emulator.js --config FILE [--lifeline]
// Prints one JSON line on stdout once every listener is up; see README.md.
'use strict'

const fs = require('fs')
const { Registry } = require('./lib/registry')
const { Journal } = require('./lib/journal')
const { Faults } = require('./lib/faults')
const { DeviceSide } = require('./lib/mqtt')
const { ServiceSide } = require('./lib/rest')
const { Control } = require('./lib/control')

const ALL_RIGHTS = ['RegistryRead', 'RegistryWrite', 'ServiceConnect', 'DeviceConnect']
// A new hub's policies (iot-hub-dev-guide-sas.md, "IoT hub-level shared access policies").
const DEFAULT_POLICIES = [
  { name: 'iothubowner', rights: ALL_RIGHTS },
  { name: 'service', rights: ['ServiceConnect'] },
  { name: 'device', rights: ['DeviceConnect'] },
  { name: 'registryRead', rights: ['RegistryRead'] },
  { name: 'registryReadWrite', rights: ['RegistryRead', 'RegistryWrite'] }
]

function isLoopback (host) {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host)
}

class Hub {
  constructor (config) {
    this.config = config
    this.registry = new Registry(config.hostName)
    this.journal = new Journal()
    this.faults = new Faults()
    for (const p of config.policies || DEFAULT_POLICIES) this.registry.addPolicy(p)
    for (const d of config.devices || []) this.registry.add(d)
    const read = f => (f ? fs.readFileSync(f) : undefined)
    const tlsOptions = { key: read(config.key), cert: read(config.cert), ca: read(config.clientCa) }
    this.deviceSide = new DeviceSide({ registry: this.registry, journal: this.journal, faults: this.faults, tlsOptions })
    this.serviceSide = new ServiceSide({
      registry: this.registry, journal: this.journal, faults: this.faults, deviceSide: this.deviceSide, tlsOptions
    })
    this.control = new Control({ hub: this })
    this.ports = {}
  }

  async start () {
    const bind = this.config.bind || '127.0.0.1'
    this.ports.mqtt = await this.deviceSide.listen(this.config.mqttPort || 0, bind)
    this.ports.https = await this.serviceSide.listen(this.config.httpsPort || 0, bind)
    this.ports.control = await this.control.listen(this.config.controlPort || 0, bind)
  }

  async stop () {
    await Promise.all([this.deviceSide.close(), this.serviceSide.close(), this.control.close()])
  }

  state () {
    return {
      hostName: this.registry.hostName,
      ports: this.ports,
      identities: this.registry.identities.size,
      connections: this.deviceSide.connections(),
      faults: this.faults.snapshot()
    }
  }
}

function loadConfig (argv) {
  let config = {}
  let lifeline = false
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--config') config = JSON.parse(fs.readFileSync(argv[++i], 'utf8'))
    else if (argv[i] === '--lifeline') lifeline = true
    else throw new Error(`unknown argument '${argv[i]}' (usage: emulator.js --config FILE [--lifeline])`)
  }
  if (!config.hostName) throw new Error('config: hostName is required')
  if (!config.cert || !config.key) throw new Error('config: cert and key (PEM files) are required')
  const bind = config.bind || '127.0.0.1'
  if (!isLoopback(bind)) throw new Error(`config: bind ${bind} is not a loopback address`)
  return { config, lifeline }
}

async function main () {
  const { config, lifeline } = loadConfig(process.argv.slice(2))
  const hub = new Hub(config)
  // A readable trace on stderr: every connection event, every twin request.
  hub.journal.sink = e => process.stderr.write(JSON.stringify(e) + '\n')
  await hub.start()
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    await hub.stop()
    process.exit(0)
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  // --lifeline: the harness holds our stdin; when it goes away, so do we.
  if (lifeline) {
    process.stdin.on('end', stop)
    process.stdin.on('error', stop)
    process.stdin.resume()
  }
  const policies = {}
  for (const p of hub.registry.policies.values()) policies[p.name] = { primaryKey: p.primaryKey, rights: p.rights }
  process.stdout.write(JSON.stringify({
    event: 'listening',
    pid: process.pid,
    hostName: config.hostName,
    mqttPort: hub.ports.mqtt,
    httpsPort: hub.ports.https,
    controlPort: hub.ports.control,
    policies
  }) + '\n')
}

if (require.main === module) {
  main().catch(e => {
    process.stderr.write(`azure-iothub emulator: ${e.message}\n`)
    process.exit(1)
  })
}

module.exports = { Hub }
