/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The twin dialect: how a twin is carried to a twin service. The agent sees only "connected,
 * the whole desired document arrived, publish the whole reported document, connection state";
 * topics, retained flags, wills, versions and the service's own rules live behind this
 * interface. Each dialect is an ops table (twind-dialect-impl.h) in a file of its own
 * (twind-dialect-standard.c for docs/protocol.md's topics on any broker, twind-dialect-azure.c
 * for Azure IoT Hub), picked by [broker] dialect.
 */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "macro.h"
#include "twin-model.h"
#include "twind-conf.h"

typedef struct TwinDialect TwinDialect;

typedef struct TwinDialectCallbacks {
        /* Connected; the dialect subscribes and announces on its own. */
        void (*connected)(TwinDialect *d, void *userdata);
        /* Lost or failed; retry_in_ms is when the next attempt is due (0: at once or none). An
         * error of 0 is a disconnect that was asked for (a shutdown, or renewing credentials:
         * then a new connection follows). */
        void (*disconnected)(TwinDialect *d, int error, const char *reason, uint64_t retry_in_ms,
                             void *userdata);
        /* The whole desired document arrived: a JSON object with "$version", not validated. */
        void (*desired)(TwinDialect *d, const void *payload, size_t len, void *userdata);
        /* The service side removed the desired document. */
        void (*desired_removed)(TwinDialect *d, void *userdata);
        /* While connected, something keeps the twin from working or lost a report: a refused
         * subscription, a report the service refused. error is a negative errno, message one
         * line without secrets. Lasts until the next connect. */
        void (*problem)(TwinDialect *d, int error, const char *message, void *userdata);
        /* The dialect's memory changed: the caller keeps memory (a JSON object, borrowed) in
         * its state file and hands it back to twin_dialect_new() after a restart. */
        void (*remember)(TwinDialect *d, const json_t *memory, void *userdata);
} TwinDialectCallbacks;

/* Whether name is a dialect built into this twind. */
bool twin_dialect_exists(const char *name);

/* The dialects built in, for messages: "standard, azure". */
const char *twin_dialect_names(void);

/* Completes and checks what only the configuration's dialect knows, after
 * twind_config_verify(): for Azure, reads the connection string, takes the device id from it
 * (or checks that [device] id matches). Returns 0 or a negative errno with one line in err. */
int twin_dialect_prepare_config(TwindConfig *c, char *err, size_t errlen);

/* Makes the dialect that c names, with its connection to the service (not started). memory is
 * what it last asked to be remembered (NULL: nothing; borrowed). Returns 0, or a negative errno
 * with one line in err. */
int twin_dialect_new(TwinDialect **ret, uv_loop_t *loop, const TwindConfig *c, const json_t *memory,
                     const TwinDialectCallbacks *cb, void *userdata, char *err, size_t errlen);

/* Starts connecting. */
int twin_dialect_start(TwinDialect *d);

/* Publishes the whole reported document: the applied properties, "$version" (the agent's
 * count) and "$status". The dialect maps it to its service (a retained document, a merge patch,
 * a shadow update). -ENOTCONN when offline: the caller publishes again on the next connect. */
int twin_dialect_publish_reported(TwinDialect *d, const json_t *reported);

/* Whether the service would take the reported document (its size and key rules, which
 * publishing checks too): 0, or -E2BIG / -EINVAL (or -ENOMEM) with one line in err. */
int twin_dialect_check_reported(TwinDialect *d, const json_t *reported, char *err, size_t errlen);

/* Says goodbye (an offline announcement where the dialect has one), disconnects cleanly, and
 * calls done once the connection is closed or deadline_ms has passed, whichever is first. */
int twin_dialect_shutdown(TwinDialect *d, uint64_t deadline_ms, void (*done)(void *userdata),
                          void *userdata);

/* The service's address for logs and status ("host:port (TLS)"). Borrowed. */
const char *twin_dialect_address(const TwinDialect *d);

/* The dialect's name, as in [broker] dialect. */
const char *twin_dialect_name(const TwinDialect *d);

/* What the service accepts in a document. */
const TwinLimits *twin_dialect_limits(const TwinDialect *d);

/* A digest of every setting the connection uses, secrets included: a reload that yields the
 * same fingerprint needs no reconnect. */
const char *twin_dialect_fingerprint(const TwinDialect *d);

TwinDialect *twin_dialect_free(TwinDialect *d);
DEFINE_FREE_FUNC(TwinDialect, twin_dialect_free)
