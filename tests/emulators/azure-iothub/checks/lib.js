// SPDX-License-Identifier: MIT
// What the SDK conformance checks share: a throwaway CA and server certificate made with
// openssl, the emulator as a child process, its control API, and bounded waits.
'use strict'

const { execFileSync, spawn } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')
const readline = require('readline')

const EMULATOR = path.join(__dirname, '..', 'emulator.js')

function openssl (dir, ...args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30000 })
}

// dir/ca.crt, dir/server.{crt,key} for DNS:localhost and IP:127.0.0.1, like the Python
// harness's tests/integration/certs.py.
function makeCerts (dir) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(dir, 'req', '-x509', ...ec, '-days', '2', '-subj', '/CN=emulator-test-ca', '-keyout', 'ca.key', '-out', 'ca.crt')
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
  openssl(dir, 'req', '-new', ...ec, '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr')
  openssl(dir, 'x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial',
    '-days', '2', '-extfile', 'server.ext', '-out', 'server.crt')
  return { ca: path.join(dir, 'ca.crt'), cert: path.join(dir, 'server.crt'), key: path.join(dir, 'server.key') }
}

function tempDir () {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'azure-emu-'))
}

function randomKey () {
  return crypto.randomBytes(32).toString('base64')
}

// Rejects with a message naming what was awaited when ms pass first.
function within (ms, promise, what) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// Polls fn (async, returns a truthy value when done) every 50 ms for at most ms.
async function poll (fn, ms, what) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    last = await fn()
    if (last) return last
    if (Date.now() >= deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

// Starts the emulator with config (certificates filled in); resolves with
// { ports, control(method, path, body), stop() } once it printed its listening line.
async function startEmulator (dir, config, { timeoutMs = 15000 } = {}) {
  const configFile = path.join(dir, 'emulator.json')
  fs.writeFileSync(configFile, JSON.stringify(config))
  const log = fs.openSync(path.join(dir, 'emulator.log'), 'a')
  const proc = spawn(process.execPath, [EMULATOR, '--config', configFile, '--lifeline'], {
    stdio: ['pipe', 'pipe', log]
  })
  fs.closeSync(log)
  const exited = new Promise(resolve => proc.once('exit', code => resolve(code)))
  const first = new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout })
    rl.once('line', line => resolve(JSON.parse(line)))
    exited.then(code => reject(new Error(`emulator exited with ${code}:\n${tail(path.join(dir, 'emulator.log'))}`)))
  })
  const started = Date.now()
  const ready = await within(timeoutMs, first, 'the emulator to listen')
  const control = (method, p, body) => request(ready.controlPort, method, p, body)
  return {
    ready,
    startMs: Date.now() - started,
    control,
    log: () => tail(path.join(dir, 'emulator.log'), 200),
    stop: async () => {
      proc.kill('SIGTERM')
      await within(10000, exited, 'the emulator to exit')
    }
  }
}

function tail (file, lines = 40) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n')
  } catch (e) {
    return '(no log)'
  }
}

function request (port, method, p, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body))
    const req = http.request({
      host: '127.0.0.1',
      port,
      method,
      path: p,
      headers: data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}
    }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8')
        const value = text ? JSON.parse(text) : null
        if (res.statusCode !== 200) reject(new Error(`control ${method} ${p}: ${res.statusCode} ${text}`))
        else resolve(value)
      })
    })
    req.setTimeout(10000, () => req.destroy(new Error(`control ${method} ${p}: no answer`)))
    req.on('error', reject)
    if (data) req.write(data)
    req.end()
  })
}

// Runs main() and exits 0 on success, 1 with the error (and the emulator's log) otherwise.
function run (name, main, timeoutMs) {
  const state = { hub: null }
  within(timeoutMs, main(state), `${name} to finish`).then(async () => {
    if (state.hub) await state.hub.stop()
    process.stdout.write(`${name}: ok\n`)
    process.exit(0)
  }, async e => {
    process.stderr.write(`${name}: FAILED: ${e.stack || e}\n`)
    if (state.hub) {
      process.stderr.write(`---- emulator log (tail)\n${state.hub.log()}\n`)
      await state.hub.stop().catch(() => {})
    }
    process.exit(1)
  })
}

// require() for the SDKs, with the way out when npm ci has not run.
function requireSdk (name) {
  try {
    return require(name)
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND') throw e
    process.stderr.write(`${name} is not installed: run scripts/install-deps (npm ci in ${path.dirname(__dirname)})\n`)
    process.exit(1)
  }
}

module.exports = { requireSdk, makeCerts, tempDir, randomKey, within, poll, startEmulator, run }
