#!/usr/bin/env node
// SPDX-License-Identifier: MIT
// AWS IoT Device Shadow emulator for twind's tests: MQTT 3.1.1 over mutual TLS on one loopback
// port, a plain-HTTP JSON control API on another. Once both listen it prints one JSON line on
// stdout, {"event":"listening","mqttPort":...,"controlPort":...,"pid":...}; everything else it
// logs goes to stderr, one JSON object a line. SIGTERM or SIGINT stops it, and so does the end
// of stdin with --exit-with-stdin (a test that dies leaves no emulator behind). See README.md.
'use strict'

const fs = require('fs')
const { Registry } = require('./lib/registry')
const { Broker } = require('./lib/broker')
const { ShadowService } = require('./lib/shadow-service')
const { createControlServer } = require('./lib/control')

const USAGE = `usage: emulator.js --ca FILE --cert FILE --key FILE [--host 127.0.0.1]
                   [--mqtt-port 0] [--control-port 0] [--register FILE.json]...
                   [--exit-with-stdin]
  --ca            CA certificate(s) that client certificates must chain to
  --cert, --key   the server's certificate and key (SAN DNS:localhost,IP:127.0.0.1)
  --mqtt-port     MQTT over TLS port (0: any free port)
  --control-port  control API port (0: any free port)
  --register      a JSON file with one certificate registration or a list of them
                  (the body of POST /certificates)
  --exit-with-stdin  stop when stdin reaches its end (give it a pipe from the test)`

// [option, key, parser]: one row per option; a flag has no parser and takes no value.
const OPTIONS = [
  ['--ca', 'ca', String],
  ['--cert', 'cert', String],
  ['--key', 'key', String],
  ['--host', 'host', String],
  ['--mqtt-port', 'mqttPort', port],
  ['--control-port', 'controlPort', port],
  ['--register', 'register', String],
  ['--exit-with-stdin', 'exitWithStdin', null]
]

function port (s) {
  const n = Number(s)
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`not a port: ${s}`)
  return n
}

function parseArgs (argv) {
  const opts = { host: '127.0.0.1', mqttPort: 0, controlPort: 0, register: [], exitWithStdin: false }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--help' || argv[i] === '-h') {
      process.stdout.write(USAGE + '\n')
      process.exit(0)
    }
    const row = OPTIONS.find((o) => o[0] === argv[i])
    if (row && row[2] === null) {
      opts[row[1]] = true
      continue
    }
    if (!row || i + 1 >= argv.length) throw new Error(`unknown option or missing value: ${argv[i]}`)
    const value = row[2](argv[++i])
    if (row[1] === 'register') opts.register.push(value)
    else opts[row[1]] = value
  }
  for (const k of ['ca', 'cert', 'key']) {
    if (!opts[k]) throw new Error(`--${k} is required`)
  }
  return opts
}

function log (line) {
  process.stderr.write(line + '\n')
}

async function main () {
  let opts
  try {
    opts = parseArgs(process.argv.slice(2))
  } catch (e) {
    process.stderr.write(`emulator.js: ${e.message}\n${USAGE}\n`)
    process.exit(2)
  }
  const registry = new Registry()
  for (const file of opts.register) {
    const spec = JSON.parse(fs.readFileSync(file, 'utf8'))
    for (const s of Array.isArray(spec) ? spec : [spec]) registry.register(s)
  }
  const broker = new Broker({
    registry,
    log,
    tlsOptions: {
      ca: fs.readFileSync(opts.ca),
      cert: fs.readFileSync(opts.cert),
      key: fs.readFileSync(opts.key)
    }
  })
  const service = new ShadowService((topic, obj) => broker.publishJson(topic, obj))
  broker.service = service
  const control = createControlServer(broker, service, registry)

  const mqttPort = await broker.listen(opts.mqttPort, opts.host)
  const controlPort = await new Promise((resolve, reject) => {
    control.once('error', reject)
    control.listen(opts.controlPort, opts.host, () => resolve(control.address().port))
  })

  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    control.close()
    broker.close().then(() => process.exit(0))
    setTimeout(() => process.exit(0), 2000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  if (opts.exitWithStdin) {
    process.stdin.on('end', stop)
    process.stdin.on('error', stop)
    process.stdin.resume()
  }

  process.stdout.write(JSON.stringify({
    event: 'listening',
    host: opts.host,
    mqttPort,
    controlPort,
    pid: process.pid,
    node: process.version
  }) + '\n')
}

main().catch((e) => {
  process.stderr.write(`emulator.js: ${e.stack || e.message}\n`)
  process.exit(1)
})
