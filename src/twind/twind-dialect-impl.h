/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * For dialect implementations only: the ops table every dialect fills in (in the manner of
 * seatd's struct seat_impl) and the base that each dialect's own struct embeds as its first
 * member. twind-dialect.c owns the MQTT connection's callbacks and hands them to the ops; it
 * also checks every SUBACK and runs the clean shutdown, so a dialect only speaks its topics.
 */

#include "config.h"
#include "mqtt-client.h"
#include "twind-dialect.h"

#define DIALECT_SUBSCRIPTIONS_MAX 8

/* What twin_dialect_new() hands to a dialect's new(). */
typedef struct TwinDialectSetup {
        uv_loop_t *loop;
        const TwindConfig *config;
        const json_t *memory; /* see twin_dialect_new(); NULL: none */
        const TwinDialectCallbacks *cb;
        void *userdata;
} TwinDialectSetup;

typedef struct TwinDialectImpl {
        const char *name;
        const TwinLimits *limits;
        /* Optional: see twin_dialect_prepare_config(). */
        int (*prepare_config)(TwindConfig *c, char *err, size_t errlen);
        /* Allocates the dialect's struct, calls dialect_init() and dialect_client_new(), and
         * sets the fingerprint with dialect_set_fingerprint(). */
        int (*new)(TwinDialect **ret, const TwinDialectSetup *setup, char *err, size_t errlen);
        /* CONNACK: subscribe (with dialect_subscribe()) and announce. */
        void (*connected)(TwinDialect *d);
        /* Optional: the connection is gone; forget what belonged to it. */
        void (*disconnected)(TwinDialect *d);
        /* A message on a subscribed topic; retained: it came from the broker's retained store
         * for a new subscription, not live. */
        void (*message)(TwinDialect *d, const char *topic, const void *payload, size_t len,
                        bool retained);
        /* Optional: a publish was acknowledged. */
        void (*published)(TwinDialect *d, int mid);
        /* Optional: the SUBACK of a dialect_subscribe() arrived; granted is false when the
         * service refused it (already reported as a problem). */
        void (*subscribed)(TwinDialect *d, int mid, bool granted);
        /* Optional: see MqttClientCallbacks.credentials. */
        int (*credentials)(TwinDialect *d, char **ret_username, char **ret_password, char *err,
                           size_t errlen);
        /* Optional: see MqttClientCallbacks.will. */
        char *(*will)(TwinDialect *d);
        /* Whether the service would take this reported document: 0, or -E2BIG / -EINVAL with
         * one line in err (see twin_dialect_check_reported()). Called before every
         * publish_reported(), which then need not check again. */
        int (*check_reported)(TwinDialect *d, const json_t *reported, char *err, size_t errlen);
        int (*publish_reported)(TwinDialect *d, const json_t *reported);
        /* Optional: the last publish before a clean shutdown (offline); *ret_mid is waited for. */
        int (*goodbye)(TwinDialect *d, int *ret_mid);
        /* Frees the dialect's own fields and its struct; the base is already torn down. */
        void (*free)(TwinDialect *d);
} TwinDialectImpl;

struct TwinDialect {
        const TwinDialectImpl *impl;
        uv_loop_t *loop;
        MqttClient *client;
        TwinDialectCallbacks cb;
        void *userdata;
        const TwinLimits *limits; /* impl->limits unless the dialect has its own */
        char fingerprint[TWIN_DIGEST_STRING_SIZE];

        /* SUBSCRIBEs sent on this connection, waiting for their SUBACK. */
        struct {
                int mid;
                char *topic;
        } subscriptions[DIALECT_SUBSCRIPTIONS_MAX];
        size_t n_subscriptions;

        /* Clean shutdown: goodbye published, then DISCONNECT, then done(); or the deadline. */
        bool shutting_down;
        uv_timer_t *shutdown_timer;
        void (*shutdown_done)(void *userdata);
        void *shutdown_userdata;
        int goodbye_mid;
};

extern const TwinDialectImpl twind_dialect_standard;
#if HAVE_DIALECT_AZURE
extern const TwinDialectImpl twind_dialect_azure;
#endif
#if HAVE_DIALECT_AWS
extern const TwinDialectImpl twind_dialect_aws;
#endif

/* Fills the base. */
void dialect_init(TwinDialect *d, const TwinDialectImpl *impl, const TwinDialectSetup *setup);

/* Makes d->client from o, with the base's callbacks. Returns 0 or a negative errno with err. */
int dialect_client_new(TwinDialect *d, const MqttClientOptions *o, char *err, size_t errlen);

/* Sets the fingerprint from n strings (NULL allowed), secrets among them. */
int dialect_set_fingerprint(TwinDialect *d, size_t n, const char *const *settings);

/* Subscribes and remembers the topic, so a refusal in the SUBACK is reported by name. */
int dialect_subscribe(TwinDialect *d, const char *topic, int qos, int *ret_mid);

void dialect_emit_desired(TwinDialect *d, const void *payload, size_t len);
void dialect_emit_desired_removed(TwinDialect *d);
void dialect_emit_problem(TwinDialect *d, int error, const char *fmt, ...) _printf_(3, 4);

/* The reported properties as a cloud holds them: the document's properties (the device's own
 * included) with $status under status_property, and no $version (the agent's count is not
 * the service's). New reference; NULL on ENOMEM. */
json_t *dialect_map_reported(const json_t *reported, const char *status_property);
void dialect_remember(TwinDialect *d, const json_t *memory);
