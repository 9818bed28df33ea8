/* SPDX-License-Identifier: MIT */
/* The MQTT client against a real mosquitto on loopback: connect, subscribe, retained QoS 1
 * publish, keepalive while idle (and how rarely an idle client wakes), the will after a client
 * falls silent, reconnect with backoff after the broker goes away and comes back, a broker that
 * is not there at all, two clients with one client id backing off, clean disconnect, failover
 * across the nodes of a URL list (with and without reconnect), and TLS
 * (good CA, wrong CA, wrong host name; against fake brokers: a burst of packets in one record,
 * a non-TLS reply to the handshake). */

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "macro.h"
#include "mqtt-client.h"
#include "test-util.h"

#define WAIT_MS 20000

static char tmpdir[] = "/tmp/test-mqtt-client.XXXXXX";

typedef struct Broker {
        pid_t pid;
        int port;
        int tls_port;     /* TLS listener with a certificate for 127.0.0.1, or 0 */
        int tls_bad_port; /* TLS listener with a certificate for another name, or 0 */
        bool deny_all;    /* no anonymous clients and no users: every CONNECT is refused */
} Broker;

typedef struct Events {
        int connected, disconnected, published, subscribed, messages;
        int last_granted; /* the first granted QoS of the last SUBACK */
        int last_error;
        char last_reason[512];
        uint64_t retries[16];
        int last_pub_mid, last_sub_mid;
        char last_topic[256], last_payload[256];
        bool last_retained;
        bool in_api;          /* set around mqtt_client_*() calls in the test */
        bool callback_in_api; /* a callback ran inside one of those calls */
        const char *subscribe_on_connect;
        int free_on_disconnect; /* free the client from the n-th disconnected callback */
        bool eagain_in_message; /* the message callback leaves errno at EAGAIN */
        MqttClient **client;
} Events;

static int free_port(void)
{
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM, 0), port;

        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
                perror("free_port");
                exit(77);
        }
        port = ntohs(sa.sin_port);
        close(fd);
        return port;
}

static bool port_accepts(int port)
{
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;

        if (fd >= 0)
                close(fd);
        return ok;
}

static void sleep_ms(long ms)
{
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

        nanosleep(&ts, NULL);
}

static void broker_start(Broker *b)
{
        char conf[PATH_MAX];
        const char *mosquitto = getenv("MOSQUITTO") ? getenv("MOSQUITTO") : "/usr/sbin/mosquitto";
        struct passwd *pw = getpwuid(geteuid());
        FILE *f;

        snprintf(conf, sizeof(conf), "%s/mosquitto-%d.conf", tmpdir, b->port);
        f = fopen(conf, "w");
        if (!f) {
                perror(conf);
                exit(1);
        }
        fprintf(f,
                "persistence false\nallow_anonymous %s\nlog_dest stderr\nlog_type error\n"
                "log_type warning\n",
                b->deny_all ? "false" : "true");
        /* Started as root, mosquitto would switch to its own user and not read our files. */
        if (pw)
                fprintf(f, "user %s\n", pw->pw_name);
        fprintf(f, "listener %d 127.0.0.1\nset_tcp_nodelay true\n", b->port);
        if (b->tls_port)
                fprintf(f,
                        "listener %d 127.0.0.1\ncafile %s/ca.pem\ncertfile %s/srv.pem\n"
                        "keyfile %s/srv.key\n",
                        b->tls_port, tmpdir, tmpdir, tmpdir);
        if (b->tls_bad_port)
                fprintf(f,
                        "listener %d 127.0.0.1\ncafile %s/ca.pem\ncertfile %s/bad.pem\n"
                        "keyfile %s/bad.key\n",
                        b->tls_bad_port, tmpdir, tmpdir, tmpdir);
        fclose(f);

        b->pid = fork();
        if (b->pid < 0) {
                perror("fork");
                exit(1);
        }
        if (b->pid == 0) {
                execl(mosquitto, mosquitto, "-c", conf, (char *)NULL);
                perror(mosquitto);
                _exit(127);
        }
        for (int i = 0; i < 500; i++) {
                int status;

                if (port_accepts(b->port))
                        return;
                if (waitpid(b->pid, &status, WNOHANG) == b->pid) {
                        fprintf(stderr, "mosquitto exited early\n");
                        exit(1);
                }
                sleep_ms(20);
        }
        fprintf(stderr, "mosquitto did not start listening on %d\n", b->port);
        exit(1);
}

static void broker_stop(Broker *b)
{
        if (b->pid <= 0)
                return;
        kill(b->pid, SIGTERM);
        waitpid(b->pid, NULL, 0);
        b->pid = 0;
}

/* Runs the loop until *counter reaches target, or WAIT_MS pass. */
static bool timed_out;
static uv_loop_t *running_loop;

/* Every event ends uv_run(UV_RUN_ONCE) at once, so that run_until() sees it without waiting
 * for the poll of the same iteration to time out. */
static void event_seen(void)
{
        if (running_loop)
                uv_stop(running_loop);
}

static void timeout_cb(uv_timer_t *t)
{
        timed_out = true;
}

/* Runs the loop for ms, whatever happens. */
static void run_for(uv_loop_t *loop, uint64_t ms)
{
        uv_timer_t t;

        uv_timer_init(loop, &t);
        timed_out = false;
        uv_timer_start(&t, timeout_cb, ms, 0);
        while (!timed_out)
                uv_run(loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&t, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
}

static bool run_until(uv_loop_t *loop, const int *counter, int target, uint64_t ms)
{
        uv_timer_t t;

        uv_timer_init(loop, &t);
        timed_out = false;
        uv_timer_start(&t, timeout_cb, ms, 0);
        running_loop = loop;
        while (*counter < target && !timed_out)
                uv_run(loop, UV_RUN_ONCE);
        running_loop = NULL;
        uv_close((uv_handle_t *)&t, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        if (*counter < target)
                fprintf(stderr, "timed out after %llu ms waiting for an event\n",
                        (unsigned long long)ms);
        return *counter >= target;
}

static void ev_connected(MqttClient *c, void *userdata)
{
        Events *e = userdata;

        event_seen();

        e->connected++;
        if (e->in_api)
                e->callback_in_api = true;
        if (e->subscribe_on_connect) {
                int r = mqtt_client_subscribe(c, e->subscribe_on_connect, 1, &e->last_sub_mid);

                CHECK_INT_EQ(r, 0);
        }
}

static void ev_disconnected(MqttClient *c, int error, const char *reason, uint64_t retry_in_ms,
                            void *userdata)
{
        Events *e = userdata;

        event_seen();

        if (e->in_api)
                e->callback_in_api = true;
        if (e->disconnected < (int)ARRAY_SIZE(e->retries))
                e->retries[e->disconnected] = retry_in_ms;
        e->disconnected++;
        e->last_error = error;
        snprintf(e->last_reason, sizeof(e->last_reason), "%s", reason);
        fprintf(stderr, "  disconnected: %d (%s), retry in %llu ms\n", error, reason,
                (unsigned long long)retry_in_ms);
        if (e->free_on_disconnect && e->disconnected == e->free_on_disconnect) {
                *e->client = mqtt_client_free(c);
        }
}

static void ev_message(MqttClient *c, const char *topic, const void *payload, size_t len,
                       bool retained, void *userdata)
{
        Events *e = userdata;

        event_seen();

        e->messages++;
        snprintf(e->last_topic, sizeof(e->last_topic), "%s", topic);
        snprintf(e->last_payload, sizeof(e->last_payload), "%.*s", (int)len, (const char *)payload);
        e->last_retained = retained;
        /* As a callback does whose last call was a non-blocking write that would block. */
        if (e->eagain_in_message)
                errno = EAGAIN;
}

static void ev_published(MqttClient *c, int mid, void *userdata)
{
        Events *e = userdata;

        event_seen();

        e->published++;
        if (e->in_api)
                e->callback_in_api = true;
        CHECK_INT_EQ(mid, e->last_pub_mid);
}

static void ev_subscribed(MqttClient *c, int mid, size_t n_granted, const int *granted,
                          void *userdata)
{
        Events *e = userdata;

        event_seen();

        e->subscribed++;
        e->last_granted = n_granted > 0 ? granted[0] : -1;
        CHECK_INT_EQ(mid, e->last_sub_mid);
}

static const MqttClientCallbacks callbacks = {
        .connected = ev_connected,
        .disconnected = ev_disconnected,
        .message = ev_message,
        .published = ev_published,
        .subscribed = ev_subscribed,
};

static MqttClient *client_new(uv_loop_t *loop, const MqttClientOptions *o, Events *e)
{
        MqttClient *c = NULL;
        char err[256];
        int r = mqtt_client_new(&c, loop, o, &callbacks, e, err, sizeof(err));

        if (r < 0) {
                fprintf(stderr, "mqtt_client_new: %s (%s)\n", strerror(-r), err);
                exit(1);
        }
        return c;
}

/* Frees and lets libuv finish closing the handles. */
static void client_free(uv_loop_t *loop, MqttClient *c)
{
        mqtt_client_free(c);
        uv_run(loop, UV_RUN_NOWAIT);
}

static void test_options(void)
{
        uv_loop_t *loop = uv_default_loop();
        MqttClient *c = NULL;
        char err[256], missing[PATH_MAX];
        MqttClientOptions o = { .url = "http://127.0.0.1" };

        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), -EINVAL);
        CHECK(err[0] != '\0');
        CHECK(c == NULL);

        snprintf(missing, sizeof(missing), "%s/no-such-ca.pem", tmpdir);
        o = (MqttClientOptions){ .url = "mqtts://127.0.0.1", .cafile = missing };
        CHECK(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)) < 0);
        CHECK(strstr(err, missing) != NULL);

        o = (MqttClientOptions){ .url = "mqtts://127.0.0.1", .certfile = "/etc/hostname" };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "key") != NULL);

        o = (MqttClientOptions){ .url = "mqtt://127.0.0.1", .cafile = "/etc/hostname" };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "mqtts") != NULL);

        o = (MqttClientOptions){ .url = "mqtt://127.0.0.1", .keepalive = 2 };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), -EINVAL);

        o = (MqttClientOptions){ .url = "mqtt://127.0.0.1", .password = "secret" };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "secret") == NULL);
        CHECK(c == NULL);

        o = (MqttClientOptions){ .url = "mqtt://127.0.0.1:1" };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &callbacks, NULL, err, sizeof(err)), 0);
        CHECK_STR_EQ(mqtt_client_address(c), "127.0.0.1:1");
        CHECK(!mqtt_client_is_connected(c));
        CHECK_INT_EQ(mqtt_client_publish(c, "t", "x", 1, 0, false, NULL), -ENOTCONN);
        CHECK_INT_EQ(mqtt_client_disconnect(c), -ENOTCONN);
        client_free(loop, c);
}

static int iterations;

static void count_iteration(uv_check_t *h)
{
        iterations++;
}

static void test_basic(const Broker *b)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64];
        Events e = { .subscribe_on_connect = "live/#" };
        MqttClientOptions o = { .url = url, .client_id = "test-basic", .keepalive = 60 };
        MqttClient *c;
        uv_check_t check;
        int r;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b->port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        CHECK(mqtt_client_is_connected(c));
        /* The subscription made inside the connected callback went out and was acknowledged. */
        CHECK(run_until(loop, &e.subscribed, 1, WAIT_MS));

        /* A retained QoS 1 message is acknowledged, then delivered as retained to a later
         * subscription. */
        e.in_api = true;
        r = mqtt_client_publish(c, "ret/x", "hello", 5, 1, true, &e.last_pub_mid);
        e.in_api = false;
        CHECK_INT_EQ(r, 0);
        CHECK(run_until(loop, &e.published, 1, WAIT_MS));
        CHECK_INT_EQ(mqtt_client_subscribe(c, "ret/x", 1, &e.last_sub_mid), 0);
        CHECK(run_until(loop, &e.messages, 1, WAIT_MS));
        CHECK_STR_EQ(e.last_topic, "ret/x");
        CHECK_STR_EQ(e.last_payload, "hello");
        CHECK(e.last_retained);

        /* A live QoS 0 message on the subscription from the connected callback. */
        e.in_api = true;
        r = mqtt_client_publish(c, "live/y", "now", 3, 0, false, &e.last_pub_mid);
        e.in_api = false;
        CHECK_INT_EQ(r, 0);
        CHECK(run_until(loop, &e.messages, 2, WAIT_MS));
        CHECK_STR_EQ(e.last_topic, "live/y");
        CHECK_STR_EQ(e.last_payload, "now");
        CHECK(!e.last_retained);
        CHECK(run_until(loop, &e.published, 2, WAIT_MS));
        /* Callbacks come from the loop, never from inside publish(). */
        CHECK(!e.callback_in_api);

        /* An idle connection with keepalive 60 leaves the loop asleep: over 5 s the loop turns
         * only for the test's own timer, not once a second. */
        uv_check_init(loop, &check);
        uv_check_start(&check, count_iteration);
        uv_unref((uv_handle_t *)&check);
        iterations = 0;
        run_for(loop, 5000);
        fprintf(stderr, "  idle: %d loop iterations in 5 s\n", iterations);
        CHECK(iterations <= 3);
        uv_close((uv_handle_t *)&check, NULL);
        CHECK(mqtt_client_is_connected(c));
        CHECK_INT_EQ(e.disconnected, 0);

        /* Clean disconnect: error 0, no retry, and the broker saw a DISCONNECT (no will). */
        e.in_api = true;
        CHECK_INT_EQ(mqtt_client_disconnect(c), 0);
        e.in_api = false;
        CHECK(!e.callback_in_api);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK_INT_EQ(e.last_error, 0);
        CHECK_INT_EQ(e.retries[0], 0);
        CHECK(!mqtt_client_is_connected(c));
        CHECK_INT_EQ(mqtt_client_publish(c, "t", "x", 1, 0, false, NULL), -ENOTCONN);
        client_free(loop, c);
}

/* With keepalive 5 the broker drops a client that sent nothing for 1.5 keepalives. Over 12 s (the
 * broker checks about once a second), a client that only receives, one that only sends and one that
 * stays idle must all keep their connection: each pings in time on its own. */
static void tick_publish(uv_timer_t *t)
{
        Events *e = t->data;

        CHECK_INT_EQ(
            mqtt_client_publish(*e->client, "ka/stream", "tick", 4, 0, false, &e->last_pub_mid), 0);
}

static void test_keepalive(const Broker *b)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64];
        Events re = { .subscribe_on_connect = "ka/#" }, se = { 0 }, ie = { 0 };
        MqttClientOptions o = { .url = url, .keepalive = 5 };
        MqttClient *receiver, *sender, *idle;
        uv_timer_t ticker;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b->port);
        receiver = client_new(loop, &o, &re);
        sender = client_new(loop, &o, &se);
        idle = client_new(loop, &o, &ie);
        CHECK_INT_EQ(mqtt_client_start(receiver), 0);
        CHECK_INT_EQ(mqtt_client_start(sender), 0);
        CHECK_INT_EQ(mqtt_client_start(idle), 0);
        CHECK(run_until(loop, &re.subscribed, 1, WAIT_MS));
        CHECK(run_until(loop, &se.connected, 1, WAIT_MS));
        CHECK(run_until(loop, &ie.connected, 1, WAIT_MS));

        uv_timer_init(loop, &ticker);
        se.client = &sender;
        ticker.data = &se;
        uv_timer_start(&ticker, tick_publish, 500, 500);
        run_for(loop, 15000);
        uv_close((uv_handle_t *)&ticker, NULL);
        CHECK(re.messages >= 10);
        CHECK(se.published >= 10);
        CHECK_INT_EQ(re.disconnected, 0);
        CHECK_INT_EQ(se.disconnected, 0);
        CHECK_INT_EQ(ie.disconnected, 0);
        CHECK(mqtt_client_is_connected(receiver));
        CHECK(mqtt_client_is_connected(sender));
        CHECK(mqtt_client_is_connected(idle));
        mqtt_client_free(receiver);
        mqtt_client_free(sender);
        client_free(loop, idle);
}

/* A client that falls silent (its loop no longer runs, as when a device hangs or loses its
 * network) is declared dead by the broker, which publishes its will. */
static void test_will(const Broker *b)
{
        uv_loop_t *loop = uv_default_loop(), silent_loop;
        char url[64];
        Events we = { .subscribe_on_connect = "will/#" }, se = { 0 };
        MqttClientOptions wo = { .url = url }, so = {
                .url = url,
                .keepalive = 5,
                .will_topic = "will/dev1",
                .will_payload = "offline",
        };
        MqttClient *watcher, *silent;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b->port);
        watcher = client_new(loop, &wo, &we);
        CHECK_INT_EQ(mqtt_client_start(watcher), 0);
        CHECK(run_until(loop, &we.subscribed, 1, WAIT_MS));

        uv_loop_init(&silent_loop);
        silent = client_new(&silent_loop, &so, &se);
        CHECK_INT_EQ(mqtt_client_start(silent), 0);
        CHECK(run_until(&silent_loop, &se.connected, 1, WAIT_MS));
        CHECK_INT_EQ(we.messages, 0);

        CHECK(run_until(loop, &we.messages, 1, WAIT_MS));
        CHECK_STR_EQ(we.last_topic, "will/dev1");
        CHECK_STR_EQ(we.last_payload, "offline");

        client_free(&silent_loop, silent);
        uv_run(&silent_loop, UV_RUN_DEFAULT);
        CHECK_INT_EQ(uv_loop_close(&silent_loop), 0);
        client_free(loop, watcher);
}

/* A host name goes through the resolver before the connect. */
static void test_resolve(const Broker *b)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .reconnect = true };
        MqttClient *c;

        snprintf(url, sizeof(url), "mqtt://localhost:%d", b->port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        client_free(loop, c);

        /* A name that does not resolve is a failed attempt like any other. */
        memset(&e, 0, sizeof(e));
        o.url = "mqtt://no-such-host.invalid:1883";
        o.reconnect = false;
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK(e.last_error < 0);
        CHECK(strstr(e.last_reason, "no-such-host.invalid") != NULL);
        CHECK_INT_EQ(e.retries[0], 0);
        client_free(loop, c);
}

/* Two clients with the same client id (a cloned device image): the broker drops the older one
 * whenever the other connects, so each sees a CONNACK and then a loss, over and over. Their
 * retry delays must grow as for failed attempts, not start over at 1-2 s after every CONNACK. */
static void test_same_client_id(const Broker *b)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64];
        Events ae = { 0 }, be = { 0 };
        MqttClientOptions o = { .url = url, .client_id = "cloned-device", .reconnect = true };
        MqttClient *a, *bc;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b->port);
        a = client_new(loop, &o, &ae);
        CHECK_INT_EQ(mqtt_client_start(a), 0);
        CHECK(run_until(loop, &ae.connected, 1, WAIT_MS));
        bc = client_new(loop, &o, &be);
        CHECK_INT_EQ(mqtt_client_start(bc), 0);
        CHECK(run_until(loop, &ae.disconnected, 3, 3 * WAIT_MS));
        /* Each loss followed a CONNACK: the fight is real, not a broker that is down. */
        CHECK(ae.connected >= 3);
        CHECK_INT_EQ(ae.last_error, -ECONNRESET);
        CHECK(ae.retries[0] >= 1000 && ae.retries[0] <= 2000);
        CHECK(ae.retries[1] >= 2000 && ae.retries[1] <= 4000);
        CHECK(ae.retries[2] >= 4000 && ae.retries[2] <= 8000);
        CHECK(ae.retries[0] < ae.retries[1] && ae.retries[1] < ae.retries[2]);
        /* By the third such loss the reason says what is probably going on. */
        CHECK(strstr(ae.last_reason, "another client probably uses the same client id "
                                     "(cloned-device)") != NULL);
        mqtt_client_free(a);
        client_free(loop, bc);
}

typedef struct Credentials {
        int calls;
        bool fail; /* refuse to make credentials: the attempt fails with that reason */
        uint64_t last_call_ms;
} Credentials;

static Credentials credentials_state;

static int ev_credentials(MqttClient *c, char **ret_username, char **ret_password, char *err,
                          size_t errlen, void *userdata)
{
        char pw[32];

        credentials_state.calls++;
        credentials_state.last_call_ms = uv_now(uv_default_loop());
        if (credentials_state.fail) {
                snprintf(err, errlen, "no token today");
                return -EKEYEXPIRED;
        }
        snprintf(pw, sizeof(pw), "token-%d", credentials_state.calls);
        *ret_username = strdup("dev");
        *ret_password = strdup(pw);
        return *ret_username && *ret_password ? 0 : -ENOMEM;
}

/* Credentials made anew for every attempt; a reconnect asked for is not a failure (no
 * backoff, error 0); the granted QoS of each SUBACK reaches the caller. */
static void test_credentials_and_reconnect(const Broker *b)
{
        static const MqttClientCallbacks cbs = {
                .connected = ev_connected,
                .disconnected = ev_disconnected,
                .message = ev_message,
                .published = ev_published,
                .subscribed = ev_subscribed,
                .credentials = ev_credentials,
        };
        uv_loop_t *loop = uv_default_loop();
        char url[64], err[256];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .client_id = "test-creds", .reconnect = true };
        MqttClient *c = NULL;
        uint64_t asked;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b->port);
        credentials_state = (Credentials){ 0 };
        CHECK_INT_EQ(mqtt_client_new(&c, loop, &o, &cbs, &e, err, sizeof(err)), 0);
        CHECK_INT_EQ(mqtt_client_reconnect(c), -ENOTCONN);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        CHECK_INT_EQ(credentials_state.calls, 1);
        CHECK_INT_EQ(mqtt_client_subscribe(c, "creds/#", 1, &e.last_sub_mid), 0);
        CHECK(run_until(loop, &e.subscribed, 1, WAIT_MS));
        CHECK_INT_EQ(e.last_granted, 1);

        asked = uv_now(loop);
        CHECK_INT_EQ(mqtt_client_reconnect(c), 0);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK_INT_EQ(e.last_error, 0);
        CHECK_INT_EQ(e.retries[0], 0);
        CHECK(strstr(e.last_reason, "reconnecting to") != NULL);
        CHECK(run_until(loop, &e.connected, 2, WAIT_MS));
        CHECK_INT_EQ(credentials_state.calls, 2);
        /* At once, not after a backoff of a second or more. */
        CHECK(credentials_state.last_call_ms - asked < 1000);

        /* Credentials that cannot be made fail the attempt with their reason, retried. */
        credentials_state.fail = true;
        CHECK_INT_EQ(mqtt_client_reconnect(c), 0);
        CHECK(run_until(loop, &e.disconnected, 3, WAIT_MS));
        CHECK_INT_EQ(e.last_error, -EKEYEXPIRED);
        CHECK(strstr(e.last_reason, "no token today") != NULL);
        CHECK(e.retries[2] >= 1000 && e.retries[2] <= 2000);
        credentials_state.fail = false;
        CHECK(run_until(loop, &e.connected, 3, WAIT_MS));
        client_free(loop, c);
}

/* The broker goes away and comes back on the same port. */
static void test_reconnect(void)
{
        uv_loop_t *loop = uv_default_loop();
        Broker b = { .port = free_port() };
        char url[64], addr[64];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .reconnect = true, .keepalive = 5 };
        MqttClient *c;

        broker_start(&b);
        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b.port);
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", b.port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));

        for (int round = 0; round < 2; round++) {
                int seen = e.disconnected;

                /* The backoff starts over after a connection that stayed up for a keepalive
                 * (5 s here); round 0's came right after the first and only attempt. */
                if (round > 0)
                        run_for(loop, 5500);
                broker_stop(&b);
                CHECK(run_until(loop, &e.disconnected, seen + 1, WAIT_MS));
                CHECK(e.last_error < 0);
                CHECK(strstr(e.last_reason, addr) != NULL);
                /* First retry after the loss of a stable connection: 1..2 s. */
                CHECK(e.retries[seen] >= 1000 && e.retries[seen] <= 2000);
                CHECK(!mqtt_client_is_connected(c));

                broker_start(&b);
                CHECK(run_until(loop, &e.connected, round + 2, WAIT_MS));
                CHECK(mqtt_client_is_connected(c));
        }

        /* Disconnect while waiting for a retry: the callback still confirms the stop. */
        broker_stop(&b);
        CHECK(run_until(loop, &e.disconnected, 3, WAIT_MS));
        CHECK_INT_EQ(mqtt_client_disconnect(c), 0);
        CHECK(run_until(loop, &e.disconnected, 4, WAIT_MS));
        CHECK_INT_EQ(e.last_error, 0);
        CHECK_INT_EQ(e.retries[3], 0);
        client_free(loop, c);
}

/* Nobody listens: refused attempts, growing delays, no crash; freed from its own callback. */
static void test_no_broker(void)
{
        uv_loop_t *loop = uv_default_loop();
        int port = free_port();
        char url[64], expect[128];
        Events e = { .free_on_disconnect = 3 };
        MqttClientOptions o = { .url = url, .reconnect = true };
        MqttClient *c;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", port);
        snprintf(expect, sizeof(expect), "cannot connect to 127.0.0.1:%d", port);
        c = client_new(loop, &o, &e);
        e.client = &c;
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 3, WAIT_MS));
        CHECK_INT_EQ(e.last_error, -ECONNREFUSED);
        CHECK(strstr(e.last_reason, expect) != NULL);
        CHECK(e.retries[0] >= 1000 && e.retries[0] <= 2000);
        CHECK(e.retries[1] >= 2000 && e.retries[1] <= 4000);
        CHECK(e.retries[2] >= 4000 && e.retries[2] <= 8000);
        CHECK(e.retries[0] < e.retries[1] && e.retries[1] < e.retries[2]);
        CHECK(c == NULL);
        uv_run(loop, UV_RUN_NOWAIT);
        CHECK_INT_EQ(e.connected, 0);
}

/* The broker answers CONNECT with a refusal: a disconnect with the broker's reason. */
static void test_refused(void)
{
        uv_loop_t *loop = uv_default_loop();
        Broker b = { .port = free_port(), .deny_all = true };
        char url[64];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .username = "dev", .password = "hunter2" };
        MqttClient *c;

        broker_start(&b);
        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", b.port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK_INT_EQ(e.connected, 0);
        CHECK_INT_EQ(e.last_error, -EACCES);
        CHECK(strstr(e.last_reason, "connection refused by 127.0.0.1:") != NULL);
        CHECK(strstr(e.last_reason, "hunter2") == NULL);
        client_free(loop, c);
        broker_stop(&b);
}

/* "host:port" of the node the client names now. */
static bool address_has_port(MqttClient *c, int port)
{
        char want[32];

        snprintf(want, sizeof(want), "127.0.0.1:%d", port);
        return strcmp(mqtt_client_address(c), want) == 0;
}

/* Two nodes: the client starts on the first, moves to the second soon after losing the first,
 * and backs off as usual once both failed in a row (no connection stayed up). The first node
 * restarts (a fork) while the client is connected to the second: a child must not inherit the
 * socket, or the next connection never sends its CONNECT (see client_connect_to()). */
static void test_failover(void)
{
        uv_loop_t *loop = uv_default_loop();
        Broker a = { .port = free_port() }, b = { .port = free_port() };
        char url[128], port_a[32];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .keepalive = 5, .reconnect = true };
        MqttClient *c;

        broker_start(&a);
        broker_start(&b);
        snprintf(url, sizeof(url), " mqtt://127.0.0.1:%d ,mqtt://127.0.0.1:%d", a.port, b.port);
        snprintf(port_a, sizeof(port_a), "127.0.0.1:%d", a.port);
        c = client_new(loop, &o, &e);
        CHECK(address_has_port(c, a.port));
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        CHECK(address_has_port(c, a.port));

        broker_stop(&a);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK(strstr(e.last_reason, port_a) != NULL);
        CHECK(e.retries[0] >= 1 && e.retries[0] <= 500);
        CHECK(address_has_port(c, b.port));
        CHECK(run_until(loop, &e.connected, 2, WAIT_MS));
        CHECK(address_has_port(c, b.port));

        /* Both nodes failed in a row: the backoff's first window, then back on the first. */
        broker_start(&a);
        broker_stop(&b);
        CHECK(run_until(loop, &e.disconnected, 2, WAIT_MS));
        CHECK(e.retries[1] >= 1000 && e.retries[1] <= 2000);
        CHECK(address_has_port(c, a.port));
        CHECK(run_until(loop, &e.connected, 3, WAIT_MS));
        CHECK(address_has_port(c, a.port));
        client_free(loop, c);
        broker_stop(&a);

        /* No node up: fast to the second node, backoff after it, growing per round. */
        memset(&e, 0, sizeof(e));
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 4, WAIT_MS));
        CHECK_INT_EQ(e.connected, 0);
        CHECK(e.retries[0] >= 1 && e.retries[0] <= 500);
        CHECK(e.retries[1] >= 1000 && e.retries[1] <= 2000);
        CHECK(e.retries[2] >= 1 && e.retries[2] <= 500);
        CHECK(e.retries[3] >= 2000 && e.retries[3] <= 4000);
        client_free(loop, c);
}

/* Without reconnect (twinctl): each node once, in order, until one accepts; no retry after a
 * loss. */
static void test_failover_once(void)
{
        uv_loop_t *loop = uv_default_loop();
        Broker b = { .port = free_port() };
        int dead = free_port();
        char url[128];
        Events e = { 0 };
        MqttClientOptions o = { .url = url };
        MqttClient *c;

        broker_start(&b);
        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d mqtt://127.0.0.1:%d", dead, b.port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        CHECK_INT_EQ(e.disconnected, 1);
        CHECK(e.retries[0] >= 1 && e.retries[0] <= 500);
        CHECK(address_has_port(c, b.port));
        broker_stop(&b);
        CHECK(run_until(loop, &e.disconnected, 2, WAIT_MS));
        CHECK_INT_EQ(e.retries[1], 0);
        run_for(loop, 600);
        CHECK_INT_EQ(e.disconnected, 2);
        CHECK_INT_EQ(e.connected, 1);
        client_free(loop, c);

        /* Nobody there: two attempts, the last one says that none follows. */
        memset(&e, 0, sizeof(e));
        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d,mqtt://127.0.0.1:%d", dead, b.port);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 2, WAIT_MS));
        CHECK(e.retries[0] >= 1 && e.retries[0] <= 500);
        CHECK_INT_EQ(e.retries[1], 0);
        CHECK_INT_EQ(e.last_error, -ECONNREFUSED);
        run_for(loop, 600);
        CHECK_INT_EQ(e.disconnected, 2);
        client_free(loop, c);
}

/* TLS to a port where nobody listens fails like plain TCP, without spinning. */
static void test_tls_no_broker(void)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64], ca[PATH_MAX];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .cafile = ca };
        MqttClient *c;
        uv_check_t check;

        snprintf(url, sizeof(url), "mqtts://127.0.0.1:%d", free_port());
        snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
        c = client_new(loop, &o, &e);
        uv_check_init(loop, &check);
        uv_check_start(&check, count_iteration);
        uv_unref((uv_handle_t *)&check);
        iterations = 0;
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK(iterations < 100);
        uv_close((uv_handle_t *)&check, NULL);
        CHECK_INT_EQ(e.last_error, -ECONNREFUSED);
        CHECK(strstr(e.last_reason, "cannot connect to 127.0.0.1:") != NULL);
        client_free(loop, c);
}

/* A fake broker in a child process, for what a real mosquitto never does: it accepts one
 * connection on a loopback port and then plays its part (below), holds the connection open until
 * the client closes it (or 30 s pass) and exits. */
typedef enum FakeBroker {
        FAKE_BROKER_BURST,   /* TLS: CONNACK and BURST_COUNT publishes in one TLS record */
        FAKE_BROKER_GARBAGE, /* plain TCP that answers a TLS ClientHello with non-TLS bytes */
} FakeBroker;

#define BURST_COUNT 200

static void fake_broker_burst(int fd)
{
        unsigned char buf[BURST_COUNT * 16], in[512];
        size_t n = 0;
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        char path[PATH_MAX];
        SSL *ssl;

        snprintf(path, sizeof(path), "%s/srv.pem", tmpdir);
        if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, path) != 1)
                _exit(2);
        snprintf(path, sizeof(path), "%s/srv.key", tmpdir);
        if (SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM) != 1)
                _exit(2);
        ssl = SSL_new(ctx);
        if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1)
                _exit(3);
        /* The CONNECT (its content does not matter here). */
        if (SSL_read(ssl, in, sizeof(in)) <= 0)
                _exit(4);
        buf[n++] = 0x20; /* CONNACK, accepted */
        buf[n++] = 2;
        buf[n++] = 0;
        buf[n++] = 0;
        for (int i = 0; i < BURST_COUNT; i++) {
                n += (size_t)sprintf((char *)buf + n, "%c%c%c%cburst/t%03d", 0x30, 2 + 7 + 3, 0, 7,
                                     i);
        }
        /* One write, one record: after the first packet the rest sits decrypted in the client's
         * OpenSSL buffer, invisible to epoll. */
        if (SSL_write(ssl, buf, (int)n) != (int)n)
                _exit(5);
        while (SSL_read(ssl, in, sizeof(in)) > 0)
                ;
        _exit(0);
}

static pid_t fake_broker_start(FakeBroker kind, int *ret_port)
{
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        struct timeval tv = { .tv_sec = 30 };
        socklen_t len = sizeof(sa);
        int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), fd;
        pid_t pid;

        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            getsockname(lfd, (struct sockaddr *)&sa, &len) < 0 || listen(lfd, 1) < 0 ||
            setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
                perror("fake broker");
                exit(1);
        }
        *ret_port = ntohs(sa.sin_port);
        pid = fork();
        if (pid < 0) {
                perror("fork");
                exit(1);
        }
        if (pid > 0) {
                close(lfd);
                return pid;
        }
        fd = accept(lfd, NULL, NULL);
        if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
                _exit(1);
        switch (kind) {
        case FAKE_BROKER_BURST:
                fake_broker_burst(fd);
                break;
        case FAKE_BROKER_GARBAGE: {
                static const char reply[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
                char in[512];

                if (write(fd, reply, sizeof(reply) - 1) < 0)
                        _exit(5);
                while (read(fd, in, sizeof(in)) > 0)
                        ;
                break;
        }
        }
        _exit(0);
}

static void fake_broker_stop(pid_t pid)
{
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
}

/* More packets arrive in one TLS record than one readable callback reads: the rest must still
 * come through soon, not at the next keepalive (60 s, beyond the test's wait). libmosquitto
 * reads on by itself while OpenSSL holds decrypted bytes, unless errno says EAGAIN after a
 * packet, which a message callback can leave behind: then each read returns after one packet,
 * and the client's own read cap is reached with the rest of the record still in OpenSSL. */
static void test_tls_burst(void)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64], ca[PATH_MAX];
        Events e = { .eagain_in_message = true };
        MqttClientOptions o = { .url = url, .cafile = ca, .keepalive = 60 };
        MqttClient *c;
        int port;
        pid_t pid = fake_broker_start(FAKE_BROKER_BURST, &port);

        snprintf(url, sizeof(url), "mqtts://127.0.0.1:%d", port);
        snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
        CHECK(run_until(loop, &e.messages, BURST_COUNT, WAIT_MS));
        CHECK_INT_EQ(e.messages, BURST_COUNT);
        CHECK_STR_EQ(e.last_payload, "199");
        CHECK_INT_EQ(e.disconnected, 0);
        client_free(loop, c);
        fake_broker_stop(pid);
}

/* The server answers the TLS handshake with something that is not TLS and keeps the connection
 * open: the failure is reported at once with OpenSSL's reason, not at the keepalive. */
static void test_tls_garbage(void)
{
        uv_loop_t *loop = uv_default_loop();
        char url[64], ca[PATH_MAX];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .cafile = ca, .keepalive = 60 };
        MqttClient *c;
        int port;
        pid_t pid = fake_broker_start(FAKE_BROKER_GARBAGE, &port);

        snprintf(url, sizeof(url), "mqtts://127.0.0.1:%d", port);
        snprintf(ca, sizeof(ca), "%s/ca.pem", tmpdir);
        c = client_new(loop, &o, &e);
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
        CHECK_INT_EQ(e.connected, 0);
        CHECK_INT_EQ(e.last_error, -EPROTO);
        CHECK(strstr(e.last_reason, "TLS handshake with 127.0.0.1:") != NULL);
        /* OpenSSL's words for a reply that is not a TLS record. */
        CHECK(strstr(e.last_reason, "wrong version number") != NULL ||
              strstr(e.last_reason, "packet length too long") != NULL ||
              strstr(e.last_reason, "record layer failure") != NULL);
        client_free(loop, c);
        fake_broker_stop(pid);
}

static bool make_certs(void)
{
        char cmd[4096];

        snprintf(cmd, sizeof(cmd),
                 "set -e; cd %s; exec >openssl.log 2>&1;"
                 "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 "
                 "  -subj /CN=test-ca;"
                 "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem "
                 "  -days 2 -subj /CN=other-ca;"
                 "for n in srv:IP:127.0.0.1 bad:DNS:broker.invalid; do"
                 "  f=${n%%%%:*}; san=${n#*:};"
                 "  openssl req -newkey rsa:2048 -nodes -keyout $f.key -out $f.csr -subj /CN=$f;"
                 "  printf 'subjectAltName=%%s\\n' $san > $f.ext;"
                 "  openssl x509 -req -in $f.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
                 "    -out $f.pem -days 2 -extfile $f.ext;"
                 "done",
                 tmpdir);
        return system(cmd) == 0;
}

static void tls_attempt(uv_loop_t *loop, int port, const char *cafile, bool expect_ok)
{
        char url[64], ca[PATH_MAX];
        Events e = { 0 };
        MqttClientOptions o = { .url = url, .cafile = ca };
        MqttClient *c;

        snprintf(url, sizeof(url), "mqtts://127.0.0.1:%d", port);
        snprintf(ca, sizeof(ca), "%s/%s", tmpdir, cafile);
        c = client_new(loop, &o, &e);
        CHECK_STR_EQ(strstr(mqtt_client_address(c), "(TLS)"), "(TLS)");
        CHECK_INT_EQ(mqtt_client_start(c), 0);
        if (expect_ok) {
                CHECK(run_until(loop, &e.connected, 1, WAIT_MS));
                CHECK_INT_EQ(e.disconnected, 0);
        } else {
                CHECK(run_until(loop, &e.disconnected, 1, WAIT_MS));
                CHECK_INT_EQ(e.connected, 0);
                CHECK_INT_EQ(e.last_error, -EPROTO);
                CHECK(strstr(e.last_reason, "TLS handshake") != NULL);
                CHECK(strstr(e.last_reason, "certificate verify failed") != NULL);
                CHECK_INT_EQ(e.retries[0], 0); /* reconnect off */
        }
        client_free(loop, c);
}

static void test_tls(void)
{
        uv_loop_t *loop = uv_default_loop();
        Broker b = { .port = free_port(), .tls_port = free_port(), .tls_bad_port = free_port() };

        if (!make_certs()) {
                fprintf(stderr, "openssl failed, TLS not tested (see %s/openssl.log)\n", tmpdir);
                test_failures++;
                return;
        }
        broker_start(&b);
        for (int i = 0; i < 250 && (!port_accepts(b.tls_port) || !port_accepts(b.tls_bad_port));
             i++)
                sleep_ms(20);
        tls_attempt(loop, b.tls_port, "ca.pem", true);
        tls_attempt(loop, b.tls_port, "other.pem", false);  /* unknown CA */
        tls_attempt(loop, b.tls_bad_port, "ca.pem", false); /* name does not match */
        broker_stop(&b);
        test_tls_no_broker();
        test_tls_burst();
        test_tls_garbage();
}

int main(void)
{
        Broker b = { 0 };
        char cmd[PATH_MAX + 16];

        signal(SIGPIPE, SIG_IGN);
        setvbuf(stderr, NULL, _IOLBF, 0);
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_options();

        b.port = free_port();
        broker_start(&b);
        test_basic(&b);
        test_keepalive(&b);
        test_will(&b);
        test_resolve(&b);
        test_same_client_id(&b);
        test_credentials_and_reconnect(&b);
        broker_stop(&b);

        test_reconnect();
        test_no_broker();
        test_refused();
        test_failover();
        test_failover_once();
        test_tls();

        CHECK_INT_EQ(uv_loop_close(uv_default_loop()), 0);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s\n", tmpdir);
        return test_exit("test-mqtt-client");
}
