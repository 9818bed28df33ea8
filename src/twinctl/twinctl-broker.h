/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * A synchronous-looking MQTT session for a command-line tool: each call runs a private libuv loop
 * until its step is done, the deadline passes or the connection is lost. Messages are handed to a
 * callback as they arrive, from inside those calls.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"
#include "twinctl.h"

typedef struct BrokerSession BrokerSession;

/* The topic level below the topic root that holds twinctl's private topics
 * ({root}/_twinctl/{random}/sync and .../probe): four levels deep, so that no device pattern
 * matches them, and without '.', which some brokers rewrite. */
#define BROKER_PRIVATE_LEVEL "_twinctl"

/* A message arrived (payload not NUL-terminated; len 0 is a deleted retained message). */
typedef void (*BrokerMessageFunc)(BrokerSession *s, const char *topic, const void *payload,
                                  size_t len, void *userdata);

/* Whether the awaited condition holds; checked after every loop iteration. */
typedef bool (*BrokerDoneFunc)(void *userdata);

/*
 * Connects to the broker named in args (URL, credentials, TLS files), waiting until deadline_ms
 * (CLOCK_MONOTONIC, see now_ms()). catch_interrupt makes SIGINT/SIGTERM end broker_session_wait()
 * with -EINTR instead of killing the process. Logs one clear line on failure and returns a
 * negative errno: -ETIMEDOUT, -EACCES (credentials refused), or the connect error.
 */
int broker_session_connect(BrokerSession **ret, const TwinctlArgs *args, uint64_t deadline_ms,
                           bool catch_interrupt, BrokerMessageFunc on_message, void *userdata);

/* Subscribes to pattern (QoS 0, see the .c file for why) without waiting for the SUBACK; a later
 * broker_session_sync() proves it took effect. Returns 0 or a logged negative errno. */
int broker_session_subscribe(BrokerSession *s, const char *pattern);

/* Returns once the broker acknowledged every SUBSCRIBE sent so far, when each subscription
 * exists. Returns 0 or a logged negative errno (-ETIMEDOUT, -ECONNRESET, -EINTR). */
int broker_session_wait_subscribed(BrokerSession *s, uint64_t deadline_ms);

/* Returns once every retained message of the subscriptions made so far has been delivered: it
 * round-trips a message on a private topic, which the broker queues behind them. The first sync
 * after a wildcard subscription also proves that the broker delivers retained messages to
 * wildcards at all (-EOPNOTSUPP, logged, when it does not). Returns 0 or a logged negative errno
 * (-ETIMEDOUT, -ECONNRESET, -EINTR, -EOPNOTSUPP). */
int broker_session_sync(BrokerSession *s, uint64_t deadline_ms);

/* Publishes QoS 1 and waits for the PUBACK. Returns 0 or a logged negative errno. */
int broker_session_publish(BrokerSession *s, const char *topic, const void *payload, size_t len,
                           bool retain, uint64_t deadline_ms);

/* Whether the PUBACK of the last broker_session_publish() has arrived; already true inside the
 * message callback for messages read after it, before that call returns. */
bool broker_session_published(const BrokerSession *s);

/* Runs the loop until done(userdata) is true (0), the deadline passes (-ETIMEDOUT; deadline 0 is
 * no deadline), the connection is lost (-ECONNRESET, logged) or an interrupt arrives (-EINTR).
 * Timeouts and interrupts are not logged: the caller knows what it was waiting for. */
int broker_session_wait(BrokerSession *s, BrokerDoneFunc done, void *userdata,
                        uint64_t deadline_ms);

/* The broker URL, for messages. */
const char *broker_session_url(const BrokerSession *s);

/* Disconnects cleanly (bounded), closes every handle and frees. Accepts NULL; returns NULL. */
BrokerSession *broker_session_free(BrokerSession *s);
DEFINE_FREE_FUNC(BrokerSession, broker_session_free)
#define _cleanup_broker_session_ _cleanup_(broker_session_freep)
