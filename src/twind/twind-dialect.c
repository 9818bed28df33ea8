/* SPDX-License-Identifier: MIT */
/*
 * The standard-MQTT twin dialect of docs/protocol.md: {root}/{id}/desired (subscribed),
 * {root}/{id}/reported and {root}/{id}/connection (published, retained, QoS 1), with the
 * connection document doubling as the MQTT will.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "json-util.h"
#include "log.h"
#include "mqtt-client.h"
#include "twin-model.h"
#include "twind-dialect.h"

#define OFFLINE_DOCUMENT "{\"state\":\"offline\"}"

struct TwinDialect {
        uv_loop_t *loop;
        MqttClient *client;
        TwinDialectCallbacks cb;
        void *userdata;

        char *topic_desired;
        char *topic_reported;
        char *topic_connection;

        /* Clean shutdown: offline published, then DISCONNECT, then done(); or the deadline. */
        uv_timer_t *shutdown_timer;
        void (*shutdown_done)(void *userdata);
        void *shutdown_userdata;
        int offline_mid;
        bool shutting_down;
};

static void dialect_finish_shutdown(TwinDialect *d)
{
        void (*done)(void *) = d->shutdown_done;

        if (!done)
                return;
        d->shutdown_done = NULL;
        if (d->shutdown_timer)
                uv_timer_stop(d->shutdown_timer);
        done(d->shutdown_userdata);
}

static void on_connected(MqttClient *c, void *userdata)
{
        TwinDialect *d = userdata;
        char since[32], agent[64];
        _cleanup_free_ char *online = NULL;
        int r;

        r = mqtt_client_subscribe(c, d->topic_desired, 1, NULL);
        if (r < 0)
                log_warning_errno(r, "Failed to subscribe to %s, ignoring", d->topic_desired);

        twin_format_time(-1, since);
        snprintf(agent, sizeof(agent), "twind %s", TWIND_VERSION);
        _cleanup_json_ json_t *doc =
            json_pack("{s:s, s:s, s:s}", "state", "online", "since", since, "agent", agent);
        online = doc ? json_dumps_compact(doc) : NULL;
        if (online) {
                r = mqtt_client_publish(c, d->topic_connection, online, strlen(online), 1, true,
                                        NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to publish connection state, ignoring");
        }

        if (d->cb.connected)
                d->cb.connected(d, d->userdata);
}

static void on_disconnected(MqttClient *c, int error, const char *reason, uint64_t retry_in_ms,
                            void *userdata)
{
        TwinDialect *d = userdata;

        if (d->shutting_down) {
                dialect_finish_shutdown(d);
                return;
        }
        if (d->cb.disconnected)
                d->cb.disconnected(d, error, reason, retry_in_ms, d->userdata);
}

static void on_message(MqttClient *c, const char *topic, const void *payload, size_t len,
                       bool retained, void *userdata)
{
        TwinDialect *d = userdata;

        if (strcmp(topic, d->topic_desired) != 0)
                return;
        if (len == 0) {
                /* An empty retained payload is how MQTT deletes a retained message: the service
                 * side removed the desired document. */
                if (d->cb.desired_removed && !d->shutting_down)
                        d->cb.desired_removed(d, d->userdata);
                return;
        }
        if (d->cb.desired && !d->shutting_down)
                d->cb.desired(d, payload, len, d->userdata);
}

static void on_published(MqttClient *c, int mid, void *userdata)
{
        TwinDialect *d = userdata;
        int r;

        if (d->shutting_down && mid == d->offline_mid) {
                r = mqtt_client_disconnect(c);
                if (r < 0)
                        dialect_finish_shutdown(d);
        }
}

static int make_topic(char **ret, const char *root, const char *device_id, const char *leaf)
{
        if (asprintf(ret, "%s/%s/%s", root, device_id, leaf) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

int twin_dialect_new(TwinDialect **ret, uv_loop_t *loop, const TwinDialectOptions *opts,
                     const TwinDialectCallbacks *cb, void *userdata, char *err, size_t errlen)
{
        static const MqttClientCallbacks mqtt_callbacks = {
                .connected = on_connected,
                .disconnected = on_disconnected,
                .message = on_message,
                .published = on_published,
        };
        _cleanup_(twin_dialect_freep) TwinDialect *d = NULL;
        _cleanup_free_ char *client_id = NULL;
        int r;

        if (!twin_device_id_is_valid(opts->device_id)) {
                snprintf(err, errlen, "invalid device id '%s'", opts->device_id);
                return -EINVAL;
        }

        d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->loop = loop;
        d->cb = *cb;
        d->userdata = userdata;
        d->offline_mid = -1;

        if (make_topic(&d->topic_desired, opts->topic_root, opts->device_id, "desired") < 0 ||
            make_topic(&d->topic_reported, opts->topic_root, opts->device_id, "reported") < 0 ||
            make_topic(&d->topic_connection, opts->topic_root, opts->device_id, "connection") < 0)
                return -ENOMEM;

        /* One session per device: the device id is the MQTT client id, so a second agent for the
         * same device takes the session over instead of both answering. */
        client_id = strdup(opts->device_id);
        if (!client_id)
                return -ENOMEM;

        MqttClientOptions mo = {
                .url = opts->url,
                .client_id = client_id,
                .username = opts->username,
                .password = opts->password,
                .cafile = opts->cafile,
                .certfile = opts->certfile,
                .keyfile = opts->keyfile,
                .keepalive = opts->keepalive,
                .will_topic = d->topic_connection,
                .will_payload = OFFLINE_DOCUMENT,
                .will_retain = true,
                .reconnect = true,
        };
        r = mqtt_client_new(&d->client, loop, &mo, &mqtt_callbacks, d, err, errlen);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(d);
        return 0;
}

int twin_dialect_start(TwinDialect *d)
{
        return mqtt_client_start(d->client);
}

int twin_dialect_publish_reported(TwinDialect *d, const char *json, size_t len)
{
        if (d->shutting_down)
                return -ESHUTDOWN;
        return mqtt_client_publish(d->client, d->topic_reported, json, len, 1, true, NULL);
}

bool twin_dialect_is_connected(const TwinDialect *d)
{
        return mqtt_client_is_connected(d->client);
}

const char *twin_dialect_address(const TwinDialect *d)
{
        return mqtt_client_address(d->client);
}

static void on_shutdown_timer(uv_timer_t *t)
{
        TwinDialect *d = t->data;

        log_warning("Broker did not acknowledge the offline state in time, disconnecting anyway");
        dialect_finish_shutdown(d);
}

static void on_timer_closed(uv_handle_t *h)
{
        free(h);
}

int twin_dialect_shutdown(TwinDialect *d, uint64_t deadline_ms, void (*done)(void *userdata),
                          void *userdata)
{
        int r;

        d->shutting_down = true;
        d->shutdown_done = done;
        d->shutdown_userdata = userdata;

        d->shutdown_timer = malloc(sizeof(*d->shutdown_timer));
        if (!d->shutdown_timer)
                return -ENOMEM;
        uv_timer_init(d->loop, d->shutdown_timer);
        d->shutdown_timer->data = d;

        if (!mqtt_client_is_connected(d->client)) {
                /* Nothing to say goodbye to: stop reconnecting and finish now. */
                (void)mqtt_client_disconnect(d->client);
                dialect_finish_shutdown(d);
                return 0;
        }

        r = mqtt_client_publish(d->client, d->topic_connection, OFFLINE_DOCUMENT,
                                strlen(OFFLINE_DOCUMENT), 1, true, &d->offline_mid);
        if (r < 0) {
                (void)mqtt_client_disconnect(d->client);
                dialect_finish_shutdown(d);
                return 0;
        }
        uv_timer_start(d->shutdown_timer, on_shutdown_timer, deadline_ms, 0);
        return 0;
}

TwinDialect *twin_dialect_free(TwinDialect *d)
{
        if (!d)
                return NULL;
        d->shutdown_done = NULL;
        mqtt_client_free(d->client);
        if (d->shutdown_timer)
                uv_close((uv_handle_t *)d->shutdown_timer, on_timer_closed);
        free(d->topic_desired);
        free(d->topic_reported);
        free(d->topic_connection);
        free(d);
        return NULL;
}
