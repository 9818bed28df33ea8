/* SPDX-License-Identifier: MIT */
#include "bench-client.h"
#include "bench-util.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <mosquitto.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

struct BenchClient {
        struct mosquitto *mosq;
        Tracker *tracker;
        int drain_fd;
        bool connected, subscribed;
        int connack;
};

Tracker *tracker_new(const char *prefix, size_t n)
{
        Tracker *t = calloc(1, sizeof(*t));

        if (!t)
                return NULL;
        t->prefix = prefix;
        t->n = n;
        t->target = -1;
        t->success_version = malloc(n * sizeof(*t->success_version));
        t->success_ns = calloc(n, sizeof(*t->success_ns));
        t->online = calloc(n, sizeof(*t->online));
        if (!t->success_version || !t->success_ns || !t->online)
                return tracker_free(t);
        for (size_t i = 0; i < n; i++)
                t->success_version[i] = -1;
        return t;
}

Tracker *tracker_free(Tracker *t)
{
        if (!t)
                return NULL;
        free(t->success_version);
        free(t->success_ns);
        free(t->online);
        free(t);
        return NULL;
}

void tracker_set_target(Tracker *t, int64_t target)
{
        t->target = target;
        t->n_at_target = 0;
        for (size_t i = 0; i < t->n; i++)
                if (t->success_version[i] >= target)
                        t->n_at_target++;
}

/* "twins/<prefix>-<index>/<kind>" -> index and kind, or -1. */
static long device_index(const Tracker *t, const char *topic, const char **ret_kind)
{
        size_t plen = strlen(t->prefix);
        const char *p;
        char *end;
        long i;

        if (strncmp(topic, "twins/", 6) != 0)
                return -1;
        p = topic + 6;
        if (strncmp(p, t->prefix, plen) != 0 || p[plen] != '-')
                return -1;
        p += plen + 1;
        errno = 0;
        i = strtol(p, &end, 10);
        if (errno || end == p || *end != '/' || i < 0 || (size_t)i >= t->n)
                return -1;
        *ret_kind = end + 1;
        return i;
}

static void on_reported(Tracker *t, long i, json_t *doc, uint64_t now)
{
        json_t *status = json_object_get(doc, "$status");
        const char *state = json_string_value(json_object_get(status, "state"));
        json_t *dv = json_object_get(status, "desiredVersion");
        int64_t v;

        if (!state)
                return;
        if (strcmp(state, "pending") == 0) {
                t->n_pending++;
                return;
        }
        if (strcmp(state, "success") != 0) {
                t->n_failed++;
                return;
        }
        t->n_success++;
        if (!json_is_integer(dv))
                return;
        v = json_integer_value(dv);
        if (v <= t->success_version[i])
                return; /* a retained or repeated report */
        if (t->success_version[i] < t->target && v >= t->target)
                t->n_at_target++;
        t->success_version[i] = v;
        t->success_ns[i] = now;
}

static void on_message(struct mosquitto *m, void *userdata, const struct mosquitto_message *msg)
{
        BenchClient *c = userdata;
        uint64_t now = now_ns();
        Tracker *t = c->tracker;
        const char *kind;
        json_t *doc;
        long i;

        if (!t || !msg->payloadlen)
                return;
        i = device_index(t, msg->topic, &kind);
        if (i < 0)
                return;
        doc = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
        if (!doc)
                return;
        if (strcmp(kind, "reported") == 0) {
                on_reported(t, i, doc, now);
        } else if (strcmp(kind, "connection") == 0) {
                const char *state = json_string_value(json_object_get(doc, "state"));

                if (state && strcmp(state, "online") == 0 && !t->online[i]) {
                        t->online[i] = true;
                        t->n_online++;
                }
        }
        json_decref(doc);
}

static void on_connect(struct mosquitto *m, void *userdata, int rc)
{
        BenchClient *c = userdata;

        c->connack = rc;
        c->connected = rc == 0;
}

static void on_subscribe(struct mosquitto *m, void *userdata, int mid, int n, const int *qos)
{
        BenchClient *c = userdata;

        c->subscribed = true;
}

int bench_client_new(BenchClient **ret, int port)
{
        char *const subs[] = { "twins/+/reported", "twins/+/connection" };
        BenchClient *c;
        size_t sentinel;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->drain_fd = -1;
        c->connack = -1;
        c->mosq = mosquitto_new("twin-bench-service", true, c);
        if (!c->mosq) {
                free(c);
                return -ENOMEM;
        }
        mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);
        /* A burst or a fleet update must leave at once, not 20 messages per round trip. */
        mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, 65535);
        mosquitto_connect_callback_set(c->mosq, on_connect);
        mosquitto_message_callback_set(c->mosq, on_message);
        mosquitto_subscribe_callback_set(c->mosq, on_subscribe);

        r = mosquitto_connect(c->mosq, "127.0.0.1", port, 600);
        if (r != MOSQ_ERR_SUCCESS) {
                bench_client_free(c);
                return -ECONNREFUSED;
        }
        /* Wait for CONNACK, then for SUBACK: the sentinel counts nothing, the flags tell. */
        sentinel = 0;
        for (int i = 0; i < 500 && c->connack < 0; i++)
                bench_client_wait(c, &sentinel, 1, 10);
        if (!c->connected) {
                bench_client_free(c);
                return -ECONNREFUSED;
        }
        /* QoS 0 towards the service: the broker forwards at once, with no acknowledgements
         * on our side to disturb the timing. */
        r = mosquitto_subscribe_multiple(c->mosq, NULL, 2, subs, 0, 0, NULL);
        if (r != MOSQ_ERR_SUCCESS) {
                bench_client_free(c);
                return -EIO;
        }
        for (int i = 0; i < 500 && !c->subscribed; i++)
                bench_client_wait(c, &sentinel, 1, 10);
        if (!c->subscribed) {
                bench_client_free(c);
                return -ETIMEDOUT;
        }
        *ret = c;
        return 0;
}

BenchClient *bench_client_free(BenchClient *c)
{
        if (!c)
                return NULL;
        if (c->connected)
                mosquitto_disconnect(c->mosq);
        mosquitto_destroy(c->mosq);
        free(c);
        return NULL;
}

void bench_client_track(BenchClient *c, Tracker *t)
{
        c->tracker = t;
}

void bench_client_set_drain_fd(BenchClient *c, int fd)
{
        c->drain_fd = fd;
}

int bench_client_publish_desired(BenchClient *c, const char *device, int64_t version)
{
        char topic[256], payload[256];
        int n, r;

        snprintf(topic, sizeof(topic), "twins/%s/desired", device);
        n = snprintf(payload, sizeof(payload),
                     "{\"$version\": %" PRId64 ", \"configId\": %" PRId64
                     ", \"sendFrequency\": \"5m\"}",
                     version, version);
        r = mosquitto_publish(c->mosq, NULL, topic, n, payload, 1, true);
        return r == MOSQ_ERR_SUCCESS ? 0 : -EIO;
}

static void drain(int fd)
{
        char buf[4096];

        while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) >= 0)
                ;
}

int bench_client_wait(BenchClient *c, const size_t *counter, size_t want, int timeout_ms)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;

        for (;;) {
                struct pollfd p[2];
                uint64_t now;
                int nfds = 1, wait_ms, fd;

                if (counter && *counter >= want)
                        return 0;
                now = now_ns();
                if (now >= deadline)
                        return -ETIMEDOUT;
                wait_ms = (int)((deadline - now + 999999) / 1000000);
                if (wait_ms > 1000)
                        wait_ms = 1000;

                fd = mosquitto_socket(c->mosq);
                if (fd < 0)
                        return -ENOTCONN;
                p[0] = (struct pollfd){ .fd = fd, .events = POLLIN };
                if (mosquitto_want_write(c->mosq))
                        p[0].events |= POLLOUT;
                if (c->drain_fd >= 0)
                        p[nfds++] = (struct pollfd){ .fd = c->drain_fd, .events = POLLIN };
                if (poll(p, (nfds_t)nfds, wait_ms) < 0 && errno != EINTR)
                        return -errno;
                if (p[0].revents & (POLLIN | POLLERR | POLLHUP))
                        if (mosquitto_loop_read(c->mosq, 1) != MOSQ_ERR_SUCCESS)
                                return -ECONNRESET;
                if (p[0].revents & POLLOUT)
                        if (mosquitto_loop_write(c->mosq, 1) != MOSQ_ERR_SUCCESS)
                                return -ECONNRESET;
                if (nfds > 1 && (p[1].revents & POLLIN))
                        drain(c->drain_fd);
                mosquitto_loop_misc(c->mosq);
        }
}
