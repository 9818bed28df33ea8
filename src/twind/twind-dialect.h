/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The twin dialect: how a twin is carried over the broker. The agent sees only "connect,
 * desired arrived, publish reported, connection state"; topics, retained flags, the will and the
 * online/offline documents live behind this interface. Today's dialect is the standard-MQTT one
 * of docs/protocol.md (twins/{deviceId}/desired|reported|connection); a second one (Azure IoT
 * Hub's $iothub/twin/... topics) would implement this same header.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "macro.h"

typedef struct TwinDialect TwinDialect;

typedef struct TwinDialectOptions {
        const char *url;
        const char *username;
        const char *password;
        const char *cafile;
        const char *certfile;
        const char *keyfile;
        int keepalive;
        const char *topic_root;
        const char *device_id;
} TwinDialectOptions;

typedef struct TwinDialectCallbacks {
        /* Connected, subscribed (or subscribing) to desired, online announced. */
        void (*connected)(TwinDialect *d, void *userdata);
        /* Lost or failed; retry_in_ms is when the next attempt is due (0: none). */
        void (*disconnected)(TwinDialect *d, int error, const char *reason, uint64_t retry_in_ms,
                             void *userdata);
        /* A desired document arrived (raw payload, not validated). */
        void (*desired)(TwinDialect *d, const void *payload, size_t len, void *userdata);
        /* The service side removed the desired document (an empty retained message). */
        void (*desired_removed)(TwinDialect *d, void *userdata);
} TwinDialectCallbacks;

int twin_dialect_new(TwinDialect **ret, uv_loop_t *loop, const TwinDialectOptions *opts,
                     const TwinDialectCallbacks *cb, void *userdata, char *err, size_t errlen);

/* Starts connecting. */
int twin_dialect_start(TwinDialect *d);

/* Publishes the whole reported document (retained, QoS 1). -ENOTCONN when offline: the caller
 * republishes on the next connect. */
int twin_dialect_publish_reported(TwinDialect *d, const char *json, size_t len);

bool twin_dialect_is_connected(const TwinDialect *d);

/* Announces offline, disconnects cleanly, and calls done once the connection is closed or
 * deadline_ms has passed, whichever is first. */
int twin_dialect_shutdown(TwinDialect *d, uint64_t deadline_ms, void (*done)(void *userdata),
                          void *userdata);

/* The broker address for logs and status. Borrowed. */
const char *twin_dialect_address(const TwinDialect *d);

TwinDialect *twin_dialect_free(TwinDialect *d);
DEFINE_FREE_FUNC(TwinDialect, twin_dialect_free)
