// SPDX-License-Identifier: MIT
// What the SDK checks share: throwaway certificates made with openssl, the emulator started as
// a child process (its start-up line read, no sleeps), the control API, bounded waits.
'use strict'

const { execFileSync, spawn } = require('child_process')
const fs = require('fs')
const http = require('http')
const os = require('os')
const path = require('path')

const EMULATOR = path.join(__dirname, '..', 'emulator.js')
const SKIP = 77 // meson's exit status for a skipped test

/** Exits with 77 when the npm packages were not installed (scripts/install-deps does it). */
function requireOrSkip (name) {
  try {
    return require(name)
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND') throw e
    const dir = path.dirname(__dirname)
    process.stdout.write(`SKIP: ${name} is not installed (run scripts/install-deps, or npm ci in ${dir})\n`)
    process.exit(SKIP)
  }
}

function openssl (dir, ...args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 30000 })
}

/** A throwaway PKI in a new temp dir: ca, server (localhost and 127.0.0.1), and one client
 *  certificate per name in clients (CN = the name). rogue-ca and rogue (a client certificate
 *  by rogue-ca) for refusals. Returns {dir, file(name, ext)}. */
function makeCerts (clients) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'awsiot-'))
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  const ca = (name) => openssl(dir, 'req', '-x509', ...ec, '-days', '2', '-subj', `/CN=${name}`,
    '-keyout', `${name}.key`, '-out', `${name}.crt`)
  const leaf = (name, issuer, cn, ext) => {
    fs.writeFileSync(path.join(dir, `${name}.ext`), ext + '\n')
    openssl(dir, 'req', '-new', ...ec, '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`)
    openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.crt`, '-CAkey', `${issuer}.key`,
      '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`)
  }
  ca('ca')
  ca('rogue-ca')
  leaf('server', 'ca', 'localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth')
  for (const c of clients) leaf(c, 'ca', c, 'extendedKeyUsage=clientAuth')
  leaf('rogue', 'rogue-ca', 'rogue', 'extendedKeyUsage=clientAuth')
  return {
    dir,
    file: (name, ext) => path.join(dir, `${name}.${ext}`),
    remove: () => fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** Starts the emulator; resolves to {mqttPort, controlPort, child, stderr()} once it printed
 *  its start-up line, rejects if it exits first or takes longer than timeoutMs. */
function startEmulator (certs, { node = process.execPath, timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    // stdin is a pipe from this process: should it die, the emulator stops too.
    const child = spawn(node, [EMULATOR, '--ca', certs.file('ca', 'crt'), '--cert', certs.file('server', 'crt'),
      '--key', certs.file('server', 'key'), '--exit-with-stdin'], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`emulator did not start in ${timeoutMs} ms:\n${err}`))
    }, timeoutMs)
    child.stderr.on('data', (d) => { err += d })
    child.stdout.on('data', (d) => {
      out += d
      const nl = out.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      const info = JSON.parse(out.slice(0, nl))
      resolve(Object.assign(info, { child, stderr: () => err }))
    })
    child.on('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`emulator exited with ${code} before listening:\n${err}`))
    })
  })
}

function stopEmulator (emu) {
  return new Promise((resolve) => {
    if (emu.child.exitCode !== null) return resolve()
    emu.child.once('exit', () => resolve())
    emu.child.kill('SIGTERM')
  })
}

/** One control API call; resolves to {status, body}. */
function control (emu, method, urlPath, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? '' : JSON.stringify(body)
    const req = http.request({
      host: '127.0.0.1',
      port: emu.controlPort,
      method,
      path: urlPath,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
      timeout: 10000
    }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      res.on('end', () => resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null }))
    })
    req.on('timeout', () => req.destroy(new Error(`control ${method} ${urlPath} timed out`)))
    req.on('error', reject)
    req.end(data)
  })
}

/** Resolves when emitter emits event with arguments that satisfy predicate (all arguments are
 *  passed), rejects after timeoutMs naming what was awaited. */
function waitFor (emitter, event, predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, listener)
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what || event}`))
    }, timeoutMs)
    function listener (...args) {
      if (!predicate(...args)) return
      clearTimeout(timer)
      emitter.removeListener(event, listener)
      resolve(args)
    }
    emitter.on(event, listener)
  })
}

/** Polls fn (async, returns a value or undefined) until it gives a value, at most timeoutMs. */
async function poll (fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v !== undefined && v !== null && v !== false) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Runs the named steps in order, prints one line per step and a closing count, and exits
 *  nonzero on the first failure, after cleanup. */
async function runSteps (name, steps, cleanup) {
  let passed = 0
  let failed = 0
  for (const [title, fn] of steps) {
    const t0 = Date.now()
    try {
      await fn()
      passed++
      process.stdout.write(`ok ${passed + failed} - ${title} (${Date.now() - t0} ms)\n`)
    } catch (e) {
      failed++
      process.stdout.write(`not ok ${passed + failed} - ${title}\n  ${String(e.stack || e).replace(/\n/g, '\n  ')}\n`)
      break
    }
  }
  try {
    await cleanup()
  } catch (e) {
    process.stdout.write(`cleanup failed: ${e.message}\n`)
    failed++
  }
  process.stdout.write(`${name}: ${passed} passed, ${failed} failed\n`)
  process.exit(failed ? 1 : 0)
}

module.exports = { requireOrSkip, makeCerts, startEmulator, stopEmulator, control, waitFor, poll, runSteps, SKIP }
