/* SPDX-License-Identifier: MIT */
/*
 * Subscriptions are QoS 0 on purpose: mosquitto delivers QoS 1 messages through an in-flight
 * window (20) and a bounded queue (1000 by default) and drops what overflows, which would lose
 * retained messages when listing a large fleet; QoS 0 messages go out in order, straight away. On
 * one TCP connection nothing is lost while we stay connected, and a lost connection ends the
 * command anyway.
 */
#include "twinctl-broker.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <uv.h>

#include "log.h"
#include "mqtt-client.h"
#include "secret-file.h"
#include "twinctl-conf.h"

#define DISCONNECT_TIMEOUT_MS 2000

struct BrokerSession {
        uv_loop_t loop;
        uv_timer_t timer;
        uv_signal_t sigint, sigterm;
        bool loop_ready, timer_ready, signals_ready;

        MqttClient *client;
        char *url;
        char *password;
        char *sync_topic;
        char *probe_topic;  /* a retained message of ours that a wildcard must deliver */
        bool wildcard;      /* a subscription with + or # was made */
        bool probe_checked; /* the probe came back through a wildcard subscription */
        bool probe_seen;

        bool connected;
        bool ever_connected;
        int error; /* negative errno once the connection failed or was lost */
        char reason[256];
        bool timed_out;
        bool interrupted;

        uint64_t sync_sent, sync_received;
        unsigned subscribes_pending; /* SUBSCRIBEs sent and not yet acknowledged */
        int awaited_mid;
        bool awaited_mid_done;

        BrokerMessageFunc on_message;
        void *userdata;
};

static void on_connected(MqttClient *c, void *userdata)
{
        BrokerSession *s = userdata;

        s->connected = true;
        s->ever_connected = true;
}

static void on_disconnected(MqttClient *c, int error, const char *reason, uint64_t retry_in_ms,
                            void *userdata)
{
        BrokerSession *s = userdata;

        if (retry_in_ms > 0) {
                /* Another node of the --broker list is tried next (only before the first
                 * CONNACK: without reconnect the client never retries after a loss). */
                log_debug("%s; trying %s", reason ? reason : "connection failed",
                          mqtt_client_address(c));
                snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "");
                return;
        }
        s->connected = false;
        s->error = error < 0 ? error : -ECONNRESET;
        snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "");
        log_debug("disconnected from %s: %s", s->url, s->reason);
}

static void on_message(MqttClient *c, const char *topic, const void *payload, size_t len,
                       bool retained, void *userdata)
{
        BrokerSession *s = userdata;

        if (s->probe_topic && strcmp(topic, s->probe_topic) == 0) {
                if (len > 0)
                        s->probe_seen = true;
                return;
        }
        if (strcmp(topic, s->sync_topic) == 0) {
                char buf[32];
                uint64_t n;

                if (len == 0 || len >= sizeof buf)
                        return;
                memcpy(buf, payload, len);
                buf[len] = '\0';
                if (sscanf(buf, "%" SCNu64, &n) == 1 && n > s->sync_received)
                        s->sync_received = n;
                return;
        }
        if (s->on_message)
                s->on_message(s, topic, payload, len, s->userdata);
}

static void on_published(MqttClient *c, int mid, void *userdata)
{
        BrokerSession *s = userdata;

        if (mid == s->awaited_mid)
                s->awaited_mid_done = true;
}

static void on_subscribed(MqttClient *c, int mid, size_t n_granted, const int *granted,
                          void *userdata)
{
        BrokerSession *s = userdata;

        if (s->subscribes_pending > 0)
                s->subscribes_pending--;
}

static void on_timer(uv_timer_t *t)
{
        BrokerSession *s = t->data;

        s->timed_out = true;
}

static void on_signal(uv_signal_t *h, int signum)
{
        BrokerSession *s = h->data;

        s->interrupted = true;
}

static bool is_connected(void *userdata)
{
        BrokerSession *s = userdata;

        return s->connected;
}

int broker_session_wait(BrokerSession *s, BrokerDoneFunc done, void *userdata, uint64_t deadline_ms)
{
        int r = 0;

        s->timed_out = false;
        if (deadline_ms > 0) {
                uint64_t now = now_ms();
                uv_timer_start(&s->timer, on_timer, deadline_ms > now ? deadline_ms - now : 0, 0);
        }
        for (;;) {
                if (done(userdata))
                        break;
                if (s->error < 0) {
                        /* Before the first CONNACK the caller reports the failure itself. */
                        if (s->ever_connected)
                                log_error("lost the connection to broker %s%s%s", s->url,
                                          s->reason[0] ? ": " : "", s->reason);
                        r = s->ever_connected ? -ECONNRESET : s->error;
                        break;
                }
                if (s->interrupted) {
                        r = -EINTR;
                        break;
                }
                if (s->timed_out) {
                        r = -ETIMEDOUT;
                        break;
                }
                if (uv_run(&s->loop, UV_RUN_ONCE) == 0 && !done(userdata) && s->error == 0 &&
                    !s->timed_out && !s->interrupted) {
                        /* Nothing left that could ever wake us. */
                        log_error("lost the connection to broker %s", s->url);
                        r = -ECONNRESET;
                        break;
                }
        }
        uv_timer_stop(&s->timer);
        return r;
}

static int random_hex(char *buf, size_t n_bytes)
{
        uint8_t b[16];

        if (n_bytes > sizeof b)
                return -EINVAL;
        if (getrandom(b, n_bytes, 0) != (ssize_t)n_bytes)
                return -EIO;
        for (size_t i = 0; i < n_bytes; i++)
                sprintf(buf + 2 * i, "%02x", b[i]);
        return 0;
}

int broker_session_connect(BrokerSession **ret, const TwinctlArgs *args, uint64_t deadline_ms,
                           bool catch_interrupt, BrokerMessageFunc message_cb, void *userdata)
{
        static const MqttClientCallbacks callbacks = {
                .connected = on_connected,
                .disconnected = on_disconnected,
                .message = on_message,
                .published = on_published,
                .subscribed = on_subscribed,
        };
        _cleanup_broker_session_ BrokerSession *s = NULL;
        char token[33], client_id[48], err[256] = "";
        MqttClientOptions opts;
        int r;

        s = calloc(1, sizeof *s);
        if (!s)
                return log_error_errno(-ENOMEM, "Out of memory");
        s->on_message = message_cb;
        s->userdata = userdata;
        s->url = strdup(args->broker_url);
        if (!s->url)
                return log_error_errno(-ENOMEM, "Out of memory");

        r = uv_loop_init(&s->loop);
        if (r < 0)
                return log_error_errno(r, "Failed to set up the event loop");
        s->loop_ready = true;
        uv_timer_init(&s->loop, &s->timer);
        s->timer.data = s;
        s->timer_ready = true;
        if (catch_interrupt) {
                uv_signal_init(&s->loop, &s->sigint);
                uv_signal_init(&s->loop, &s->sigterm);
                s->sigint.data = s->sigterm.data = s;
                s->signals_ready = true;
                uv_signal_start(&s->sigint, on_signal, SIGINT);
                uv_signal_start(&s->sigterm, on_signal, SIGTERM);
                /* Signal handlers alone must not keep the loop alive. */
                uv_unref((uv_handle_t *)&s->sigint);
                uv_unref((uv_handle_t *)&s->sigterm);
        }

        r = random_hex(token, 8);
        if (r < 0)
                return log_error_errno(r, "Failed to get random bytes");
        /* Under the topic root so that an ACL granting the root covers it; four levels deep so
         * that ROOT/+/desired and friends never match it; no '.', which RabbitMQ delivers as
         * '/' (the echo would never match). */
        if (asprintf(&s->sync_topic, "%s/" BROKER_PRIVATE_LEVEL "/%s/sync", args->topic_root,
                     token) < 0 ||
            asprintf(&s->probe_topic, "%s/" BROKER_PRIVATE_LEVEL "/%s/probe", args->topic_root,
                     token) < 0) {
                s->sync_topic = s->probe_topic = NULL;
                return log_error_errno(-ENOMEM, "Out of memory");
        }

        if (args->password_file) {
                r = twinctl_read_password_file(args->password_file, &s->password);
                if (r < 0)
                        return r;
        }

        /* A client id of our own: AWS IoT, for one, refuses the empty one MQTT 3.1.1 allows. */
        snprintf(client_id, sizeof client_id, "twinctl-%s", token);
        opts = (MqttClientOptions){
                .url = args->broker_url,
                .client_id = client_id,
                .username = args->username,
                .password = s->password,
                .cafile = args->cafile,
                .certfile = args->certfile,
                .keyfile = args->keyfile,
                .keepalive = 60,
                .reconnect = false,
        };
        r = mqtt_client_new(&s->client, &s->loop, &opts, &callbacks, s, err, sizeof err);
        if (r == -EINVAL) {
                log_error("%s", err[0] ? err : "invalid broker options");
                return r;
        }
        if (r < 0)
                return log_error_errno(r, "Failed to set up the MQTT client");

        r = mqtt_client_start(s->client);
        if (r >= 0)
                r = broker_session_wait(s, is_connected, s, deadline_ms);
        if (r == -ETIMEDOUT) {
                log_error("cannot reach broker %s: %s", s->url, strerror(ETIMEDOUT));
                return -ENOTCONN;
        }
        if (r == -EACCES || r == -EPERM) {
                log_error("broker %s refused the connection%s%s", s->url, s->reason[0] ? ": " : "",
                          s->reason);
                return -EACCES;
        }
        if (r == -EINTR)
                return r;
        if (r < 0) {
                /* For name lookups, TLS and refusals the client's reason says more than errno
                 * does. */
                if ((r == -EPROTO || r == -EHOSTUNREACH || r == -EINVAL || r == -EPROTONOSUPPORT ||
                     r == -ECONNREFUSED) &&
                    s->reason[0])
                        log_error("cannot reach broker %s: %s", s->url, s->reason);
                else
                        log_error("cannot reach broker %s: %s", s->url, strerror(-r));
                log_debug("broker %s: %s", s->url, s->reason);
                return -ENOTCONN;
        }

        /* Subscribed first: a later sync proves every subscription before it took effect. AWS
         * IoT needs none (its GET answers prove them), and its policies may not allow it. */
        if (!args->aws) {
                r = mqtt_client_subscribe(s->client, s->sync_topic, 0, NULL);
                if (r < 0)
                        return log_error_errno(r, "Failed to subscribe to %s", s->sync_topic);
                s->subscribes_pending++;
        }

        *ret = TAKE_PTR(s);
        return 0;
}

int broker_session_subscribe(BrokerSession *s, const char *pattern)
{
        int r = mqtt_client_subscribe(s->client, pattern, 0, NULL);

        if (r < 0)
                return log_error_errno(r, "Failed to subscribe to %s", pattern);
        s->subscribes_pending++;
        if (strpbrk(pattern, "+#"))
                s->wildcard = true;
        return 0;
}

static int sync_round_trip(BrokerSession *s, uint64_t deadline_ms);

/* Some brokers (RabbitMQ's MQTT plugin) deliver retained messages only to subscriptions that
 * name the exact topic: a wildcard then finds nothing, and "no devices" would be a lie. Proves
 * the broker does: publishes a retained message of ours, subscribes to it through a wildcard and
 * sees it arrive before the sync's echo (which follows every retained message); then deletes
 * it. A twinctl killed in between leaves one stale message below the private level, which no
 * device pattern matches. Two round trips, once per session. */
static int probe_wildcard_retained(BrokerSession *s, uint64_t deadline_ms)
{
        _cleanup_free_ char *pattern = NULL;
        int r;

        r = broker_session_publish(s, s->probe_topic, "1", 1, true, deadline_ms);
        if (r < 0)
                return r;
        /* ROOT/_twinctl/TOKEN/+: a wildcard that matches the probe and nothing of anyone else. */
        pattern = strdup(s->probe_topic);
        if (!pattern)
                return log_error_errno(-ENOMEM, "Out of memory");
        strcpy(strrchr(pattern, '/') + 1, "+");
        r = mqtt_client_subscribe(s->client, pattern, 0, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to subscribe to %s", pattern);
        s->subscribes_pending++;
        r = sync_round_trip(s, deadline_ms);
        if (r < 0)
                return r;
        s->probe_checked = true;
        r = broker_session_publish(s, s->probe_topic, NULL, 0, true, deadline_ms);
        if (r < 0)
                return r;
        if (!s->probe_seen) {
                log_error("broker %s does not deliver retained messages to wildcard subscriptions "
                          "(RabbitMQ's MQTT plugin does not): this command cannot see the twins "
                          "there; twinctl get DEVICE works",
                          s->url);
                return -EOPNOTSUPP;
        }
        return 0;
}

static bool subscribed_all(void *userdata)
{
        BrokerSession *s = userdata;

        return s->subscribes_pending == 0;
}

int broker_session_wait_subscribed(BrokerSession *s, uint64_t deadline_ms)
{
        int r = broker_session_wait(s, subscribed_all, s, deadline_ms);

        if (r == -ETIMEDOUT)
                log_error("broker %s did not acknowledge a subscription in time", s->url);
        return r;
}

static bool sync_done(void *userdata)
{
        BrokerSession *s = userdata;

        return s->sync_received >= s->sync_sent;
}

int broker_session_sync(BrokerSession *s, uint64_t deadline_ms)
{
        if (s->wildcard && !s->probe_checked)
                return probe_wildcard_retained(s, deadline_ms);
        return sync_round_trip(s, deadline_ms);
}

static int sync_round_trip(BrokerSession *s, uint64_t deadline_ms)
{
        char payload[32];
        int r, n;

        /* A broker may handle a connection's packets concurrently (aedes): a publish right
         * behind a SUBSCRIBE could be routed before the subscription exists. */
        r = broker_session_wait_subscribed(s, deadline_ms);
        if (r < 0)
                return r;

        s->sync_sent++;
        n = snprintf(payload, sizeof payload, "%" PRIu64, s->sync_sent);
        r = mqtt_client_publish(s->client, s->sync_topic, payload, (size_t)n, 0, false, NULL);
        if (r < 0)
                return log_error_errno(r, "Failed to publish to %s", s->sync_topic);
        r = broker_session_wait(s, sync_done, s, deadline_ms);
        if (r == -ETIMEDOUT)
                log_error("broker %s did not echo a message on %s in time (does its ACL let "
                          "twinctl publish and subscribe there?)",
                          s->url, s->sync_topic);
        return r;
}

static bool publish_done(void *userdata)
{
        BrokerSession *s = userdata;

        return s->awaited_mid_done;
}

int broker_session_publish(BrokerSession *s, const char *topic, const void *payload, size_t len,
                           bool retain, uint64_t deadline_ms)
{
        int r, mid = 0;

        r = mqtt_client_publish(s->client, topic, payload, len, 1, retain, &mid);
        if (r < 0)
                return log_error_errno(r, "Failed to publish to %s", topic);
        s->awaited_mid = mid;
        s->awaited_mid_done = false;
        r = broker_session_wait(s, publish_done, s, deadline_ms);
        if (r == -ETIMEDOUT)
                log_error("broker %s did not acknowledge the message on %s in time", s->url, topic);
        return r;
}

bool broker_session_published(const BrokerSession *s)
{
        return s->awaited_mid_done;
}

const char *broker_session_url(const BrokerSession *s)
{
        return s->url;
}

static bool is_disconnected(void *userdata)
{
        BrokerSession *s = userdata;

        return !s->connected;
}

BrokerSession *broker_session_free(BrokerSession *s)
{
        if (!s)
                return NULL;
        /* A Ctrl-C that ended the command must not cut the goodbye short. */
        s->interrupted = false;
        if (s->client && s->connected && mqtt_client_disconnect(s->client) >= 0)
                (void)broker_session_wait(s, is_disconnected, s, now_ms() + DISCONNECT_TIMEOUT_MS);
        s->client = mqtt_client_free(s->client);
        if (s->signals_ready) {
                uv_close((uv_handle_t *)&s->sigint, NULL);
                uv_close((uv_handle_t *)&s->sigterm, NULL);
        }
        if (s->timer_ready)
                uv_close((uv_handle_t *)&s->timer, NULL);
        if (s->loop_ready) {
                uv_run(&s->loop, UV_RUN_DEFAULT);
                (void)uv_loop_close(&s->loop);
        }
        s->password = secret_free(s->password);
        free(s->sync_topic);
        free(s->probe_topic);
        free(s->url);
        free(s);
        return NULL;
}
