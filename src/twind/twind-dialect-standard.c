/* SPDX-License-Identifier: MIT */
/*
 * The standard dialect of docs/protocol.md on any MQTT broker: {root}/{id}/desired (subscribed),
 * {root}/{id}/reported and {root}/{id}/connection (published, retained, QoS 1), with the
 * connection document doubling as the MQTT will. The connection document is subscribed to as
 * well: a broker that publishes a stale will while the device is connected (a cluster node
 * that declared another dead) is answered with the online document again.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "json-util.h"
#include "log.h"
#include "secret-file.h"
#include "twin-model.h"
#include "twind-dialect-impl.h"

#define OFFLINE_DOCUMENT "{\"state\":\"offline\"}"

/* Online documents sent again on one connection at most, should something keep answering them
 * with offline ones. */
#define REANNOUNCE_MAX 5

typedef struct StandardDialect {
        TwinDialect base;
        char *topic_desired;
        char *topic_reported;
        char *topic_connection;
        char *online; /* the online document of this connection; NULL while not connected */
        unsigned reannounced;
} StandardDialect;

static StandardDialect *standard(TwinDialect *d)
{
        return (StandardDialect *)d;
}

static void publish_online(StandardDialect *s)
{
        int r = mqtt_client_publish(s->base.client, s->topic_connection, s->online,
                                    strlen(s->online), 1, true, NULL);

        if (r < 0)
                log_warning_errno(r, "Failed to publish connection state, ignoring");
}

static void standard_connected(TwinDialect *d)
{
        StandardDialect *s = standard(d);
        char since[32], agent[64];
        int r;

        r = dialect_subscribe(d, s->topic_desired, 1, NULL);
        if (r < 0)
                log_warning_errno(r, "Failed to subscribe to %s, ignoring", s->topic_desired);
        /* Not through dialect_subscribe(): a broker whose ACL lets the device write its
         * connection document but not read it (an older mosquitto-twins.acl) refuses this one,
         * and that is no problem, only the loss of the stale-will repair. */
        r = mqtt_client_subscribe(d->client, s->topic_connection, 0, NULL);
        if (r < 0)
                log_full(LOG_DEBUG, r, NULL, "Failed to subscribe to %s, ignoring",
                         s->topic_connection);

        twin_format_time(-1, since);
        snprintf(agent, sizeof(agent), "twind %s", TWIND_VERSION);
        _cleanup_json_ json_t *doc =
            json_pack("{s:s, s:s, s:s}", "state", "online", "since", since, "agent", agent);
        free(s->online);
        s->online = doc ? json_dumps_compact(doc) : NULL;
        s->reannounced = 0;
        if (s->online)
                publish_online(s);
}

static void standard_disconnected(TwinDialect *d)
{
        StandardDialect *s = standard(d);

        free(s->online);
        s->online = NULL;
}

/* The device's own connection document, live: an offline one while this connection is up is a
 * will the broker published late (a cluster node that took the device's old node for dead), or
 * someone else's mistake. The retained one a new subscription brings is the previous
 * connection's, which the online document just sent replaces anyway. */
static void connection_message(StandardDialect *s, const void *payload, size_t len, bool retained)
{
        _cleanup_json_ json_t *doc = NULL;
        const char *state;

        if (retained || len == 0 || !s->online)
                return;
        doc = json_loadb(payload, len, 0, NULL);
        state = json_string_value(json_object_get(doc, "state"));
        if (!state || strcmp(state, "offline") != 0)
                return;
        if (s->reannounced >= REANNOUNCE_MAX) {
                if (s->reannounced++ == REANNOUNCE_MAX)
                        log_warning("%s keeps publishing this device's connection document as "
                                    "offline while it is connected; no longer answering it",
                                    mqtt_client_address(s->base.client));
                return;
        }
        s->reannounced++;
        log_notice("%s published this device's connection document as offline while it is "
                   "connected (a stale will?); announcing online again",
                   mqtt_client_address(s->base.client));
        publish_online(s);
}

static void standard_message(TwinDialect *d, const char *topic, const void *payload, size_t len,
                             bool retained)
{
        StandardDialect *s = standard(d);

        if (strcmp(topic, s->topic_connection) == 0) {
                connection_message(s, payload, len, retained);
                return;
        }
        if (strcmp(topic, s->topic_desired) != 0)
                return;
        /* An empty retained payload is how MQTT deletes a retained message: the service side
         * removed the desired document. */
        if (len == 0)
                dialect_emit_desired_removed(d);
        else
                dialect_emit_desired(d, payload, len);
}

/* The broker takes a reported document of any size, and the agent's own part of it (the
 * applied properties, which were a valid desired document, and $status) is what it is. The
 * properties the device reports itself are held to the size of a desired document, so that a
 * twin written here reads the same everywhere (docs/protocol.md, "Limits"). */
static int standard_check_reported(TwinDialect *d, const json_t *reported, char *err, size_t errlen)
{
        json_t *keys = json_object_get(json_object_get(reported, "$status"), "deviceProperties");
        _cleanup_json_ json_t *own = json_object();
        _cleanup_free_ char *text = NULL;
        size_t i;
        json_t *k;

        if (!own)
                return -ENOMEM;
        json_array_foreach (keys, i, k) {
                json_t *v = json_object_get(reported, json_string_value(k));

                if (v && json_object_set(own, json_string_value(k), v) < 0)
                        return -ENOMEM;
        }
        text = json_dumps_compact(own);
        if (!text)
                return -ENOMEM;
        if (strlen(text) > d->limits->max_bytes) {
                snprintf(err, errlen,
                         "the properties the device reports would be %zu bytes, the limit is %zu",
                         strlen(text), d->limits->max_bytes);
                return -E2BIG;
        }
        return 0;
}

static int standard_publish_reported(TwinDialect *d, const json_t *reported)
{
        _cleanup_free_ char *text = json_dumps_compact(reported);

        if (!text)
                return -ENOMEM;
        return mqtt_client_publish(d->client, standard(d)->topic_reported, text, strlen(text), 1,
                                   true, NULL);
}

/* The will of the next connection attempt: when the broker publishes it, the device was last
 * seen some time after the connection began, which is now. */
static char *standard_will(TwinDialect *d)
{
        char now[32];
        _cleanup_json_ json_t *doc = NULL;

        twin_format_time(-1, now);
        doc = json_pack("{s:s, s:s}", "state", "offline", "connectedSince", now);
        return doc ? json_dumps_compact(doc) : NULL;
}

/* A clean goodbye knows when it is. */
static int standard_goodbye(TwinDialect *d, int *ret_mid)
{
        _cleanup_json_ json_t *doc = NULL;
        _cleanup_free_ char *text = NULL;
        char now[32];

        twin_format_time(-1, now);
        doc = json_pack("{s:s, s:s}", "state", "offline", "since", now);
        text = doc ? json_dumps_compact(doc) : NULL;
        if (!text)
                return -ENOMEM;
        return mqtt_client_publish(d->client, standard(d)->topic_connection, text, strlen(text), 1,
                                   true, ret_mid);
}

static void standard_free(TwinDialect *d)
{
        StandardDialect *s = standard(d);

        free(s->topic_desired);
        free(s->topic_reported);
        free(s->topic_connection);
        free(s->online);
        free(s);
}

static int make_topic(char **ret, const char *root, const char *device_id, const char *leaf)
{
        if (asprintf(ret, "%s/%s/%s", root, device_id, leaf) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

static int standard_new(TwinDialect **ret, const TwinDialectSetup *setup, char *err, size_t errlen)
{
        const TwindConfig *c = setup->config;
        _cleanup_free_ char *password = NULL;
        StandardDialect *s;
        char keepalive[16];
        int r;

        if (!twin_device_id_is_valid(c->device_id)) {
                snprintf(err, errlen, "invalid device id '%s'", c->device_id);
                return -EINVAL;
        }
        r = twind_config_read_password(c, &password, err, errlen);
        if (r < 0)
                return r;

        s = calloc(1, sizeof(*s));
        if (!s) {
                secret_free(TAKE_PTR(password));
                return -ENOMEM;
        }
        dialect_init(&s->base, &twind_dialect_standard, setup);
        if (make_topic(&s->topic_desired, c->topic_root, c->device_id, "desired") < 0 ||
            make_topic(&s->topic_reported, c->topic_root, c->device_id, "reported") < 0 ||
            make_topic(&s->topic_connection, c->topic_root, c->device_id, "connection") < 0) {
                r = -ENOMEM;
                goto fail;
        }

        /* One session per device: the device id is the MQTT client id, so a second agent for the
         * same device takes the session over instead of both answering. */
        MqttClientOptions mo = {
                .url = c->broker_url,
                .client_id = c->device_id,
                .username = c->username,
                .password = password,
                .cafile = c->cafile,
                .certfile = c->certfile,
                .keyfile = c->keyfile,
                .keepalive = (int)c->keepalive,
                .will_topic = s->topic_connection,
                .will_payload = OFFLINE_DOCUMENT,
                .will_retain = true,
                .reconnect = true,
        };
        r = dialect_client_new(&s->base, &mo, err, errlen);
        if (r < 0)
                goto fail;

        snprintf(keepalive, sizeof(keepalive), "%u", c->keepalive);
        r = dialect_set_fingerprint(
            &s->base, 9,
            (const char *const[]){ c->broker_url, c->username, password, c->cafile, c->certfile,
                                   c->keyfile, keepalive, c->topic_root, c->device_id });
        if (r < 0)
                goto fail;
        secret_free(TAKE_PTR(password));
        *ret = &s->base;
        return 0;
fail:
        secret_free(TAKE_PTR(password));
        twin_dialect_free(&s->base);
        return r;
}

const TwinDialectImpl twind_dialect_standard = {
        .name = "standard",
        .limits = &twin_limits_standard,
        .new = standard_new,
        .connected = standard_connected,
        .disconnected = standard_disconnected,
        .message = standard_message,
        .check_reported = standard_check_reported,
        .publish_reported = standard_publish_reported,
        .will = standard_will,
        .goodbye = standard_goodbye,
        .free = standard_free,
};
