// SPDX-License-Identifier: MIT
// One aedes node of a cluster: nodes started with the same redis-server share subscriptions,
// retained messages, wills (aedes-persistence-redis) and message routing (mqemitter-redis).
//
//   node aedes-node.js PORT REDIS_PORT [HEARTBEAT_MS]
//
// Listens on 127.0.0.1:PORT with TCP_NODELAY, prints "listening PORT" on stdout once it
// accepts, and runs until SIGTERM (clean close) or SIGKILL (the test's way of losing a node).
// HEARTBEAT_MS (default 60000) is aedes' heartbeatInterval: another node publishes the wills of
// a dead node's clients once it missed 3 heartbeats, checked every 4.
'use strict'

const net = require('net')
const aedesFactory = require('aedes')
const mqemitterRedis = require('mqemitter-redis')
const persistenceRedis = require('aedes-persistence-redis')

const port = Number(process.argv[2])
const redisPort = Number(process.argv[3])
const heartbeat = Number(process.argv[4] || 60000)
if (!port || !redisPort || !heartbeat) {
  console.error('usage: node aedes-node.js PORT REDIS_PORT [HEARTBEAT_MS]')
  process.exit(2)
}

const redis = { host: '127.0.0.1', port: redisPort, family: 4 }
const mq = mqemitterRedis(redis)
const persistence = persistenceRedis(redis)

// Without these a redis hiccup is an unhandled 'error' event and kills every node at once.
mq.state.on('error', (err) => console.error('mqemitter-redis:', err.message))

const broker = aedesFactory({
  mq,
  persistence,
  heartbeatInterval: heartbeat,
  // twind uses the device id (up to 128 characters) as its client id.
  maxClientsIdLength: 256
})
broker.on('error', (err) => console.error('aedes:', err.message))

const server = net.createServer({ noDelay: true }, broker.handle)
server.on('error', (err) => {
  console.error('listen:', err.message)
  process.exit(1)
})
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${port}\n`)
})

function shutdown () {
  server.close()
  broker.close(() => process.exit(0))
  // A redis that is already gone must not keep the node alive.
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
