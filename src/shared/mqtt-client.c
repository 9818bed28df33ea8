/* SPDX-License-Identifier: MIT */
#include "mqtt-client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mosquitto.h>
#include <netdb.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "broker-url.h"
#include "macro.h"

/* loop_misc runs one keepalive plus this after the last read or write: the library keeps time
 * in whole seconds, so the extra second guarantees its deadline has passed when we call it, and
 * the ping is at most that late (the broker allows 1.5 keepalives). */
#define KEEPALIVE_SLACK_MS 1000
#define BACKOFF_FIRST_MS   1000u
#define BACKOFF_MAX_MS     60000u
/* The backoff starts over only after a connection stayed up this long (or one keepalive, when
 * shorter), not at every CONNACK: two devices with the same client id (a cloned image) knock each
 * other off right after each CONNACK, and would otherwise retry every 1-2 s forever. 30 s is long
 * past such a fight's first rounds and short enough that a device on a flaky link soon gets fast
 * retries back; a connection that lived through a keepalive has proven it carries pings. */
#define BACKOFF_RESET_MS 30000u
/* mosquitto_loop_read() reads one packet. A readable callback reads on while more bytes wait
 * (in the socket, or decrypted inside OpenSSL where epoll cannot see them), up to this many
 * packets, so that a burst is read before the user acts on it (twind coalesces desired
 * documents that way) and one busy connection still cannot starve the loop. */
#define READ_ROUNDS_MAX 64
/* With several broker nodes, a failure moves on to the next node after a delay drawn from
 * [1, FAILOVER_MAX_MS] ms: soon, since the other nodes are likely up, but spread out, so that the
 * devices of a lost node do not all arrive on the next one in the same millisecond. The usual
 * backoff applies once every node of the list failed in a row. */
#define FAILOVER_MAX_MS 500u

typedef enum ClientState {
        CLIENT_STATE_IDLE,       /* not started, or stopped for good */
        CLIENT_STATE_WAITING,    /* connect timer armed (first attempt, retry, or final notice) */
        CLIENT_STATE_RESOLVING,  /* uv_getaddrinfo in flight */
        CLIENT_STATE_CONNECTING, /* socket open, no CONNACK yet */
        CLIENT_STATE_CONNECTED,  /* CONNACK 0 received */
} ClientState;

struct MqttClient {
        uv_loop_t *loop;
        struct mosquitto *mosq;
        MqttClientCallbacks cb;
        void *userdata;

        BrokerUrl *urls; /* the broker's nodes, in the configured order */
        size_t n_urls;
        size_t node;        /* urls[node] is the node connected to, tried, or tried next */
        BrokerUrl url;      /* a copy of urls[node], borrowing its strings */
        char hostport[280]; /* "host:port" or "[v6]:port", for reasons */
        char address[300];  /* hostport plus " (TLS)", for mqtt_client_address() */
        int keepalive;
        bool reconnect;

        ClientState state;
        bool stopping;         /* mqtt_client_disconnect() was called: no more attempts */
        bool freed;            /* mqtt_client_free() was called while dispatching */
        unsigned depth;        /* nesting of our libuv entry points, see client_leave() */
        unsigned open_handles; /* initialised uv handles not yet closed */
        unsigned attempts;     /* backoff rounds since the last connection that stayed up */
        size_t node_failures;  /* nodes failed in a row in this round */
        bool was_up;           /* CONNACK 0 since mqtt_client_start() */
        uint64_t connected_ms; /* loop time of the last CONNACK 0 */

        uv_timer_t connect_timer;
        uv_timer_t keepalive_timer;
        /* Continues a read that stopped at READ_ROUNDS_MAX: bytes already decrypted inside
         * OpenSSL never make the socket readable again, so epoll would not call us back. */
        uv_timer_t read_timer;
        uv_poll_t *poll; /* one per connection: the fd changes on every connect */
        uv_getaddrinfo_t *resolve;
        /* Loop time of the last call that may have read (loop_read) or written (loop_write,
         * loop_misc, connect): never earlier than the library's own keepalive clocks, as with
         * mosquitto_threaded_set() nothing else does I/O. */
        uint64_t last_read_ms, last_write_ms;

        /* What went wrong with the current attempt, for the disconnected callback. */
        int connack_rc;
        int sock_error;
        char tls_error[200];
};

static bool lib_initialised;

static void reason_printf(char *buf, size_t len, const char *fmt, ...) _printf_(3, 4);

static void client_connection_lost(MqttClient *c, int mosq_rc, int saved_errno);
static void poll_cb(uv_poll_t *handle, int status, int events);
static void read_timer_cb(uv_timer_t *t);

static int errno_from_mosq(int rc, int saved_errno)
{
        switch (rc) {
        case MOSQ_ERR_SUCCESS:
                return 0;
        case MOSQ_ERR_NOMEM:
                return -ENOMEM;
        case MOSQ_ERR_INVAL:
        case MOSQ_ERR_MALFORMED_UTF8:
                return -EINVAL;
        case MOSQ_ERR_NO_CONN:
                return -ENOTCONN;
        case MOSQ_ERR_CONN_REFUSED:
        case MOSQ_ERR_AUTH:
        case MOSQ_ERR_ACL_DENIED:
                return -EACCES;
        case MOSQ_ERR_CONN_LOST:
                return -ECONNRESET;
        case MOSQ_ERR_TLS:
        case MOSQ_ERR_TLS_HANDSHAKE:
        case MOSQ_ERR_PROTOCOL:
        case MOSQ_ERR_MALFORMED_PACKET:
        case MOSQ_ERR_DUPLICATE_PROPERTY:
                return -EPROTO;
        case MOSQ_ERR_PAYLOAD_SIZE:
        case MOSQ_ERR_OVERSIZE_PACKET:
                return -EMSGSIZE;
        case MOSQ_ERR_NOT_SUPPORTED:
        case MOSQ_ERR_QOS_NOT_SUPPORTED:
        case MOSQ_ERR_RETAIN_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        case MOSQ_ERR_KEEPALIVE:
        case MOSQ_ERR_TIMEOUT:
                return -ETIMEDOUT;
        case MOSQ_ERR_EAI:
        case MOSQ_ERR_LOOKUP:
                return -EHOSTUNREACH;
        case MOSQ_ERR_ERRNO:
                return saved_errno > 0 ? -saved_errno : -EIO;
        default:
                return -EIO;
        }
}

static const char *connack_text(int rc)
{
        switch (rc) {
        case 1:
                return "unacceptable protocol version";
        case 2:
                return "client identifier rejected";
        case 3:
                return "server unavailable";
        case 4:
                return "bad user name or password";
        case 5:
                return "not authorised";
        default:
                return "unknown reason";
        }
}

static int connack_errno(int rc)
{
        switch (rc) {
        case 1:
                return -EPROTONOSUPPORT;
        case 2:
                return -EINVAL;
        case 3:
                return -ECONNREFUSED;
        default:
                return -EACCES;
        }
}

static uint32_t random_u32(void)
{
        uint32_t rnd;

        if (uv_random(NULL, NULL, &rnd, sizeof(rnd), 0, NULL) < 0)
                rnd = (uint32_t)uv_hrtime();
        return rnd;
}

static uint64_t backoff_ms(unsigned attempt)
{
        /* Exponential with jitter in the upper half of each window: [1,2] s, [2,4] s, ... up to
         * [32,60] s. Devices that lost the same broker spread out, no delay is ever below 1 s or
         * above 60 s, and successive delays never shrink (visible in logs as growing). */
        uint64_t base = (uint64_t)BACKOFF_FIRST_MS << (attempt < 5 ? attempt : 5);
        uint64_t hi = base * 2 < BACKOFF_MAX_MS ? base * 2 : BACKOFF_MAX_MS;

        return base + random_u32() % (hi - base + 1);
}

/* Makes urls[i] the current node: the one the next attempt goes to and that
 * mqtt_client_address() names. */
static void client_set_node(MqttClient *c, size_t i)
{
        c->node = i;
        c->url = c->urls[i];
        if (strchr(c->url.host, ':'))
                reason_printf(c->hostport, sizeof(c->hostport), "[%s]:%d", c->url.host,
                              c->url.port);
        else
                reason_printf(c->hostport, sizeof(c->hostport), "%s:%d", c->url.host, c->url.port);
        reason_printf(c->address, sizeof(c->address), "%s%s", c->hostport,
                      c->url.tls ? " (TLS)" : "");
}

static void client_close_cb(uv_handle_t *handle)
{
        MqttClient *c = handle->data;

        if (handle->type == UV_POLL)
                free(handle);
        if (--c->open_handles == 0 && c->freed) {
                broker_url_list_free(c->urls, c->n_urls);
                free(c);
        }
}

static void client_close_poll(MqttClient *c)
{
        if (!c->poll)
                return;
        /* uv_close stops watching at once, before libmosquitto closes (or reuses) the fd. */
        uv_close((uv_handle_t *)c->poll, client_close_cb);
        c->poll = NULL;
}

static void client_destroy(MqttClient *c)
{
        if (c->resolve) {
                /* The request finishes on its own; its callback sees no owner and frees it. */
                c->resolve->data = NULL;
                (void)uv_cancel((uv_req_t *)c->resolve);
                c->resolve = NULL;
        }
        client_close_poll(c);
        if (c->mosq) {
                mosquitto_destroy(c->mosq);
                c->mosq = NULL;
        }
        uv_close((uv_handle_t *)&c->connect_timer, client_close_cb);
        uv_close((uv_handle_t *)&c->keepalive_timer, client_close_cb);
        uv_close((uv_handle_t *)&c->read_timer, client_close_cb);
}

/* Every libuv entry point brackets its work with enter/leave, so that a user callback may call
 * mqtt_client_free(): the destruction waits until the outermost entry point unwinds. */
static void client_enter(MqttClient *c)
{
        c->depth++;
}

static void client_leave(MqttClient *c)
{
        if (--c->depth == 0 && c->freed)
                client_destroy(c);
}

static bool client_has_connection(const MqttClient *c)
{
        return c->state == CLIENT_STATE_CONNECTING || c->state == CLIENT_STATE_CONNECTED;
}

static bool client_want_write(MqttClient *c)
{
        SSL *ssl = mosquitto_ssl_get(c->mosq);

        /* During the TLS handshake mosquitto_want_write() reports the queued CONNECT while the
         * handshake itself may be waiting to read: ask OpenSSL instead, or the loop spins. */
        if (ssl && !SSL_is_init_finished(ssl))
                return SSL_want_write(ssl);
        return mosquitto_want_write(c->mosq);
}

static void keepalive_cb(uv_timer_t *t);

static uint64_t client_keepalive_due(const MqttClient *c)
{
        /* The library pings when either direction was quiet for a keepalive: a client that only
         * receives must still send, so the older of the two counts. */
        uint64_t last = c->last_read_ms < c->last_write_ms ? c->last_read_ms : c->last_write_ms;

        return last + (uint64_t)c->keepalive * 1000 + KEEPALIVE_SLACK_MS;
}

static void client_keepalive_start(MqttClient *c)
{
        uint64_t due = client_keepalive_due(c);
        uint64_t now = uv_now(c->loop);

        (void)uv_timer_start(&c->keepalive_timer, keepalive_cb, due > now ? due - now : 0, 0);
}

/* Watches the socket for reading, and for writing only while there is something to write. */
static void client_update_poll(MqttClient *c)
{
        int events = UV_READABLE;

        if (!c->poll)
                return;
        if (client_want_write(c))
                events |= UV_WRITABLE;
        (void)uv_poll_start(c->poll, events, poll_cb);
}

/* After every call into libmosquitto from a libuv callback: notices a connection the library
 * dropped without telling us, re-arms the poll and the keepalive timer. */
static void client_after_call(MqttClient *c, int rc, int saved_errno)
{
        if (!c->poll)
                return;
        if (mosquitto_socket(c->mosq) < 0) {
                client_connection_lost(c, rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_CONN_LOST,
                                       saved_errno);
                return;
        }
        client_update_poll(c);
        if (!uv_is_active((uv_handle_t *)&c->keepalive_timer))
                client_keepalive_start(c);
}

static void reason_printf(char *buf, size_t len, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(buf, len, fmt, ap);
        va_end(ap);
}

static void connect_timer_cb(uv_timer_t *t);

/* Reports a finished connection or attempt, and arms the next attempt when one is due: on the
 * next node soon while some node of this round has not failed yet, else after the backoff.
 * Either way the attempt after a failure goes to the next node of the list.
 * Without reconnect, each node is tried once until one accepts, and a lost connection ends it. */
static void client_report_down(MqttClient *c, int error, const char *reason)
{
        bool other_node = c->n_urls > 1 && c->node_failures + 1 < c->n_urls;
        uint64_t retry_ms = 0;

        if (error != 0 && !c->stopping && (c->reconnect || (other_node && !c->was_up))) {
                if (other_node) {
                        c->node_failures++;
                        retry_ms = 1 + random_u32() % FAILOVER_MAX_MS; /* 0 means "none" */
                } else {
                        c->node_failures = 0;
                        retry_ms = backoff_ms(c->attempts);
                        if (c->attempts < UINT_MAX)
                                c->attempts++;
                }
                /* The reason names the node that failed; the address is now the next one. */
                client_set_node(c, (c->node + 1) % c->n_urls);
                c->state = CLIENT_STATE_WAITING;
                (void)uv_timer_start(&c->connect_timer, connect_timer_cb, retry_ms, 0);
        } else
                c->state = CLIENT_STATE_IDLE;

        if (!c->freed && c->cb.disconnected)
                c->cb.disconnected(c, error, reason, retry_ms, c->userdata);
}

/* The connection (or the attempt) is over: say why, without secrets, and go on. */
static void client_connection_lost(MqttClient *c, int mosq_rc, int saved_errno)
{
        bool was_connected = c->state == CLIENT_STATE_CONNECTED;
        const char *verb = was_connected ? "connection lost to" : "cannot connect to";
        const char *a = c->hostport;
        char reason[512];
        int error;

        client_close_poll(c);
        (void)uv_timer_stop(&c->keepalive_timer);
        (void)uv_timer_stop(&c->read_timer);

        if (was_connected) {
                uint64_t stable_ms = (uint64_t)c->keepalive * 1000;

                if (stable_ms > BACKOFF_RESET_MS)
                        stable_ms = BACKOFF_RESET_MS;
                if (uv_now(c->loop) - c->connected_ms >= stable_ms) {
                        c->attempts = 0;
                        c->node_failures = 0;
                }
        }

        if (c->stopping) {
                /* We asked for it; how the socket went away on the way out does not matter. */
                error = 0;
                reason_printf(reason, sizeof(reason), "disconnected from %s", a);
        } else if (c->connack_rc != 0) {
                error = connack_errno(c->connack_rc);
                reason_printf(reason, sizeof(reason), "connection refused by %s: %s", a,
                              connack_text(c->connack_rc));
        } else if (c->tls_error[0] && !was_connected) {
                error = -EPROTO;
                reason_printf(reason, sizeof(reason), "TLS handshake with %s failed: %s", a,
                              c->tls_error);
        } else if (c->sock_error != 0 || mosq_rc == MOSQ_ERR_ERRNO) {
                int e = c->sock_error ? c->sock_error : saved_errno > 0 ? saved_errno : EIO;

                error = -e;
                reason_printf(reason, sizeof(reason), "%s %s: %s", verb, a, strerror(e));
        } else if (mosq_rc == MOSQ_ERR_TLS || mosq_rc == MOSQ_ERR_TLS_HANDSHAKE) {
                error = -EPROTO;
                reason_printf(reason, sizeof(reason), "%s %s failed: %s",
                              was_connected ? "TLS connection to" : "TLS handshake with", a,
                              c->tls_error[0] ? c->tls_error : "TLS error");
        } else if (mosq_rc == MOSQ_ERR_CONN_LOST || mosq_rc == MOSQ_ERR_SUCCESS) {
                error = -ECONNRESET;
                reason_printf(reason, sizeof(reason), "%s %s: connection closed by the broker",
                              verb, a);
        } else if (mosq_rc == MOSQ_ERR_KEEPALIVE) {
                error = -ETIMEDOUT;
                reason_printf(reason, sizeof(reason), "%s %s: no reply within %d s", verb, a,
                              c->keepalive);
        } else {
                error = errno_from_mosq(mosq_rc, saved_errno);
                reason_printf(reason, sizeof(reason), "%s %s: %s", verb, a,
                              mosquitto_strerror(mosq_rc));
        }

        client_report_down(c, error, reason);
}

/* The library keeps a socket it no longer notices is dead (a TLS handshake hit a socket error):
 * drop our side now; the next mosquitto_connect_async() or mosquitto_destroy() closes the fd. */
static void client_abandon_connection(MqttClient *c, int error)
{
        if (c->sock_error == 0)
                c->sock_error = error;
        client_connection_lost(c, MOSQ_ERR_ERRNO, error);
}

/* 0 when the socket looks alive, else the errno that killed it (ECONNRESET for EOF). */
static int socket_dead_error(int fd)
{
        char b;
        ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

        if (n == 0)
                return ECONNRESET;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                return errno;
        return 0;
}

static int socket_pending_error(int fd)
{
        int e = 0;
        socklen_t len = sizeof(e);

        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
                return errno;
        return e;
}

static void client_connect_to(MqttClient *c, const char *host)
{
        char reason[512];
        int rc, fd, r;

        c->connack_rc = 0;
        c->sock_error = 0;
        c->tls_error[0] = '\0';

        errno = 0;
        rc = mosquitto_connect_async(c->mosq, host, c->url.port, c->keepalive);
        c->last_read_ms = c->last_write_ms = uv_now(c->loop);
        fd = mosquitto_socket(c->mosq);
        if (rc != MOSQ_ERR_SUCCESS || fd < 0) {
                int saved = errno;
                int error = errno_from_mosq(rc != MOSQ_ERR_SUCCESS ? rc : MOSQ_ERR_NO_CONN, saved);

                if (c->tls_error[0])
                        reason_printf(reason, sizeof(reason), "TLS handshake with %s failed: %s",
                                      c->hostport, c->tls_error);
                else if (rc == MOSQ_ERR_ERRNO)
                        reason_printf(reason, sizeof(reason), "cannot connect to %s: %s",
                                      c->hostport, strerror(saved > 0 ? saved : EIO));
                else
                        reason_printf(reason, sizeof(reason), "cannot connect to %s: %s",
                                      c->hostport, mosquitto_strerror(rc));
                client_report_down(c, error, reason);
                return;
        }

        /* libmosquitto opens the socket without SOCK_CLOEXEC. A child that inherits it (the
         * apply command, anything forked meanwhile) keeps it open after we close it, and with it
         * its epoll registration, which then reports the dead socket's EOF under the fd number
         * of the next connection: the loop spins and that connection never sends CONNECT. */
        r = fcntl(fd, F_GETFD);
        if (r >= 0)
                (void)fcntl(fd, F_SETFD, r | FD_CLOEXEC);

        if (c->url.tls) {
                /* The library already tried the first handshake write. On loopback a refusal
                 * arrives before it, and that write consumed the socket error: keep it from
                 * errno (set by the failing send, untouched after). */
                int saved = errno;

                if (saved == ECONNREFUSED || saved == ECONNRESET || saved == ENETUNREACH ||
                    saved == EHOSTUNREACH || saved == ETIMEDOUT)
                        c->sock_error = saved;
        }

        c->poll = malloc(sizeof(*c->poll));
        if (!c->poll) {
                client_report_down(c, -ENOMEM, "out of memory");
                return;
        }
        r = uv_poll_init_socket(c->loop, c->poll, fd);
        if (r < 0) {
                free(c->poll);
                c->poll = NULL;
                reason_printf(reason, sizeof(reason), "cannot watch the socket to %s: %s",
                              c->hostport, uv_strerror(r));
                client_report_down(c, r, reason);
                return;
        }
        c->poll->data = c;
        c->open_handles++;
        c->state = CLIENT_STATE_CONNECTING;
        client_after_call(c, MOSQ_ERR_SUCCESS, 0);
}

static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
        MqttClient *c = req->data;
        char addr[INET6_ADDRSTRLEN] = "";
        char reason[512];
        struct addrinfo *ai;
        unsigned n = 0, pick;

        free(req);
        if (!c) {
                uv_freeaddrinfo(res);
                return;
        }
        c->resolve = NULL;
        client_enter(c);

        if (status < 0 || !res) {
                int error = status == UV_EAI_MEMORY  ? -ENOMEM
                            : status == UV_EAI_AGAIN ? -EAGAIN
                                                     : -EHOSTUNREACH;

                reason_printf(reason, sizeof(reason), "cannot resolve %s: %s", c->url.host,
                              uv_strerror(status < 0 ? status : UV_EAI_NONAME));
                client_report_down(c, error, reason);
                goto out;
        }

        /* Rotate through the addresses across attempts, so one dead address does not block. */
        for (ai = res; ai; ai = ai->ai_next)
                n++;
        pick = c->attempts % n;
        for (ai = res; pick > 0; ai = ai->ai_next)
                pick--;
        if (ai->ai_family == AF_INET6)
                (void)uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, addr, sizeof(addr));
        else
                (void)uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, addr, sizeof(addr));
        uv_freeaddrinfo(res);
        res = NULL;

        client_connect_to(c, addr);
out:
        uv_freeaddrinfo(res);
        client_leave(c);
}

static bool is_ip_literal(const char *host)
{
        unsigned char buf[sizeof(struct in6_addr)];

        return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static void client_connect_now(MqttClient *c)
{
        struct addrinfo hints = {
                .ai_family = AF_UNSPEC,
                .ai_socktype = SOCK_STREAM,
                .ai_protocol = IPPROTO_TCP,
                .ai_flags = AI_ADDRCONFIG,
        };
        char reason[512];
        int r;

        /* libmosquitto resolves with a blocking getaddrinfo(). For plain MQTT we resolve on the
         * libuv thread pool and hand it an address. For TLS the library needs the name itself
         * (SNI and certificate host name check) and offers no way to pass both, so mqtts://
         * with a host name accepts the short blocking lookup. */
        if (c->url.tls || is_ip_literal(c->url.host)) {
                client_connect_to(c, c->url.host);
                return;
        }

        c->resolve = malloc(sizeof(*c->resolve));
        if (!c->resolve) {
                client_report_down(c, -ENOMEM, "out of memory");
                return;
        }
        c->resolve->data = c;
        r = uv_getaddrinfo(c->loop, c->resolve, resolve_cb, c->url.host, NULL, &hints);
        if (r < 0) {
                free(c->resolve);
                c->resolve = NULL;
                reason_printf(reason, sizeof(reason), "cannot resolve %s: %s", c->url.host,
                              uv_strerror(r));
                client_report_down(c, r == UV_ENOMEM ? -ENOMEM : -EHOSTUNREACH, reason);
                return;
        }
        c->state = CLIENT_STATE_RESOLVING;
}

static void connect_timer_cb(uv_timer_t *t)
{
        MqttClient *c = t->data;

        client_enter(c);
        if (c->stopping) {
                /* mqtt_client_disconnect() while no connection existed: the promised notice. */
                char reason[320];

                reason_printf(reason, sizeof(reason), "stopped connecting to %s", c->hostport);
                client_report_down(c, 0, reason);
        } else
                client_connect_now(c);
        client_leave(c);
}

static void keepalive_cb(uv_timer_t *t)
{
        MqttClient *c = t->data;
        uint64_t due = client_keepalive_due(c);
        int rc;

        if (!c->poll)
                return;
        /* Lazy timer: traffic moved the deadline, so sleep until the new one. */
        if (uv_now(c->loop) < due) {
                client_keepalive_start(c);
                return;
        }

        client_enter(c);
        errno = 0;
        rc = mosquitto_loop_misc(c->mosq);
        /* Our deadline is never before the library's, so it pinged (a write, answered by a
         * read) or gave up on the connection: the next check is a keepalive away. */
        c->last_read_ms = c->last_write_ms = uv_now(c->loop);
        client_after_call(c, rc, errno);
        /* Re-arm from now even when the call did nothing, so an idle client wakes once per
         * keepalive interval and never spins. */
        if (c->poll)
                client_keepalive_start(c);
        client_leave(c);
}

/* Whether the connection's socket has bytes waiting to be read. */
static bool socket_has_input(MqttClient *c)
{
        int fd = mosquitto_socket(c->mosq), n = 0;

        return fd >= 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* Reads the packets already waiting, up to READ_ROUNDS_MAX. When it stops at that cap with input
 * left, a zero timer continues from the next loop turn: the socket may look empty to epoll while
 * OpenSSL holds decrypted bytes, and those would otherwise wait for the next traffic. */
static int client_read_burst(MqttClient *c, int *ret_errno)
{
        int rounds = 0, rc;
        bool more;
        SSL *ssl;

        do {
                errno = 0;
                rc = mosquitto_loop_read(c->mosq, 1);
                *ret_errno = errno;
                c->last_read_ms = uv_now(c->loop);
                ssl = c->poll ? mosquitto_ssl_get(c->mosq) : NULL;
                /* FIONREAD is a system call: after the first packet, ask only every 8th round.
                 * In between "more" is a guess, and a wrong one costs one read that finds
                 * nothing; a fleet's twinctl list reads 300,000 packets in a row. */
                more = rc == MOSQ_ERR_SUCCESS && c->poll &&
                       ((ssl && SSL_has_pending(ssl)) ||
                        (rounds % 8 != 0 ? true : socket_has_input(c)));
        } while (more && ++rounds < READ_ROUNDS_MAX);

        if (more)
                (void)uv_timer_start(&c->read_timer, read_timer_cb, 0, 0);
        return rc;
}

static void read_timer_cb(uv_timer_t *t)
{
        MqttClient *c = t->data;
        int rc, saved = 0;

        if (!c->poll)
                return;
        client_enter(c);
        rc = client_read_burst(c, &saved);
        client_after_call(c, rc, saved);
        client_leave(c);
}

static void poll_cb(uv_poll_t *handle, int status, int events)
{
        MqttClient *c = handle->data;
        int rc = MOSQ_ERR_SUCCESS, saved = 0, fd;
        SSL *ssl;

        if (handle != c->poll)
                return;
        client_enter(c);
        fd = mosquitto_socket(c->mosq);

        if (status < 0) {
                /* libuv reports POLLERR as an error and stops the handle. Keep the socket's own
                 * error for the reason, then let the library run into it. */
                int e = fd >= 0 ? socket_pending_error(fd) : 0;

                if (e != 0)
                        c->sock_error = e;
                events = UV_READABLE | UV_WRITABLE;
        }

        ssl = mosquitto_ssl_get(c->mosq);
        if (ssl && !SSL_is_init_finished(ssl)) {
                /* loop_read drives the handshake whichever way the socket is ready. */
                errno = 0;
                rc = mosquitto_loop_read(c->mosq, 1);
                saved = errno;
                c->last_read_ms = uv_now(c->loop);
                if (rc != MOSQ_ERR_SUCCESS && c->poll) {
                        /* MOSQ_ERR_TLS and the like end the attempt now, with OpenSSL's reason
                         * from on_log. 2.0.11 closes the socket itself, but whether it does
                         * varies across versions, and a peer that keeps a socket open would
                         * leave the failure unreported until the keepalive. */
                        client_connection_lost(c, rc, saved);
                        goto out;
                }
                ssl = c->poll ? mosquitto_ssl_get(c->mosq) : NULL;
                if (c->poll && fd >= 0 && mosquitto_socket(c->mosq) == fd && ssl &&
                    !SSL_is_init_finished(ssl)) {
                        /* libmosquitto treats a socket error during the handshake as "try
                         * again"; see for ourselves whether the peer is gone. */
                        int e = c->sock_error ? c->sock_error : socket_dead_error(fd);

                        if (e != 0) {
                                client_abandon_connection(c, e);
                                goto out;
                        }
                }
        } else {
                if (events & UV_READABLE)
                        rc = client_read_burst(c, &saved);
                if ((events & UV_WRITABLE) && rc == MOSQ_ERR_SUCCESS && c->poll &&
                    mosquitto_socket(c->mosq) >= 0) {
                        errno = 0;
                        rc = mosquitto_loop_write(c->mosq, 1);
                        saved = errno;
                        c->last_write_ms = uv_now(c->loop);
                }
        }

        if (status < 0 && c->poll && mosquitto_socket(c->mosq) >= 0) {
                /* The library did not notice the error: do not poll a dead socket forever. */
                client_abandon_connection(c, c->sock_error ? c->sock_error : EIO);
                goto out;
        }
        client_after_call(c, rc, saved);
out:
        client_leave(c);
}

/* libmosquitto callbacks: they run inside mosquitto_loop_*() called from the functions above. */

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
        MqttClient *c = obj;

        if (rc != 0) {
                /* The library follows up with a disconnect; remember why for that report. */
                c->connack_rc = rc;
                return;
        }
        c->state = CLIENT_STATE_CONNECTED;
        c->was_up = true;
        c->connected_ms = uv_now(c->loop);
        c->sock_error = 0;
        c->tls_error[0] = '\0';
        if (!c->freed && !c->stopping && c->cb.connected)
                c->cb.connected(c, c->userdata);
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc)
{
        MqttClient *c = obj;
        int saved = errno;

        /* The socket is closed (or about to be): stop watching it right now. */
        if (c->poll)
                client_connection_lost(c, rc, saved);
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
        MqttClient *c = obj;

        if (!c->freed && c->cb.message && msg->topic && msg->payloadlen >= 0)
                c->cb.message(c, msg->topic, msg->payload, (size_t)msg->payloadlen, msg->retain,
                              c->userdata);
}

static void on_publish(struct mosquitto *m, void *obj, int mid)
{
        MqttClient *c = obj;

        if (!c->freed && c->cb.published)
                c->cb.published(c, mid, c->userdata);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int qos_count,
                         const int *granted_qos)
{
        MqttClient *c = obj;

        if (!c->freed && c->cb.subscribed)
                c->cb.subscribed(c, mid, c->userdata);
}

/* The library reports OpenSSL's errors only through its log; keep the first one of an attempt,
 * plus the certificate verification result, which says more than "certificate verify failed". */
static void on_log(struct mosquitto *m, void *obj, int level, const char *str)
{
        MqttClient *c = obj;
        const char *s;
        SSL *ssl;
        long v;

        if (level != MOSQ_LOG_ERR || c->tls_error[0] || !str || !strstr(str, "OpenSSL Error"))
                return;
        s = strrchr(str, ':');
        s = s ? s + 1 : str;
        ssl = mosquitto_ssl_get(m);
        v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        if (v == X509_V_ERR_UNSPECIFIED)
                /* libmosquitto's verify callback rejects an otherwise valid chain only for the
                 * host name (we set no OCSP), without naming a reason. */
                reason_printf(c->tls_error, sizeof(c->tls_error),
                              "%s (certificate does not match the host name %s)", s, c->url.host);
        else if (v != X509_V_OK)
                reason_printf(c->tls_error, sizeof(c->tls_error), "%s (%s)", s,
                              X509_verify_cert_error_string(v));
        else
                reason_printf(c->tls_error, sizeof(c->tls_error), "%s", s);
}

static int no_key_passphrase(char *buf, int size, int rwflag, void *userdata)
{
        /* Never prompt on a terminal from a daemon: an encrypted key simply fails to load. */
        return 0;
}

static int check_readable(const char *what, const char *path, char *err, size_t errlen)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);

        if (fd < 0) {
                int r = negative_errno();

                reason_printf(err, errlen, "cannot read %s %s: %s", what, path, strerror(-r));
                return r;
        }
        return 0;
}

static int client_setup_mosquitto(MqttClient *c, const MqttClientOptions *o, char *err,
                                  size_t errlen)
{
        int rc;

        c->mosq = mosquitto_new(o->client_id, true, c);
        if (!c->mosq) {
                int r = errno == EINVAL ? -EINVAL : -ENOMEM;

                reason_printf(err, errlen, "cannot create the MQTT client: %s", strerror(-r));
                return r;
        }
        /* "Threaded" only stops the library from writing inside publish() and friends: every
         * write then happens from our poll callback, so no callback (published, disconnected)
         * ever runs inside an mqtt_client_*() call, e.g. before publish() returned the mid. */
        (void)mosquitto_threaded_set(c->mosq, true);
        (void)mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        (void)mosquitto_int_option(c->mosq, MOSQ_OPT_TCP_NODELAY, 1);

        mosquitto_connect_callback_set(c->mosq, on_connect);
        mosquitto_disconnect_callback_set(c->mosq, on_disconnect);
        mosquitto_message_callback_set(c->mosq, on_message);
        mosquitto_publish_callback_set(c->mosq, on_publish);
        mosquitto_subscribe_callback_set(c->mosq, on_subscribe);
        mosquitto_log_callback_set(c->mosq, on_log);

        if (o->username) {
                rc = mosquitto_username_pw_set(c->mosq, o->username, o->password);
                if (rc != MOSQ_ERR_SUCCESS) {
                        reason_printf(err, errlen, "invalid user name: %s", mosquitto_strerror(rc));
                        return errno_from_mosq(rc, errno);
                }
        }

        if (o->will_topic) {
                size_t len = o->will_payload ? strlen(o->will_payload) : 0;

                rc = mosquitto_will_set(c->mosq, o->will_topic, (int)len, o->will_payload, 1,
                                        o->will_retain);
                if (rc != MOSQ_ERR_SUCCESS) {
                        reason_printf(err, errlen, "invalid will topic \"%s\": %s", o->will_topic,
                                      mosquitto_strerror(rc));
                        return errno_from_mosq(rc, errno);
                }
        }

        if (c->url.tls) {
                rc = mosquitto_tls_set(c->mosq, o->cafile, o->cafile ? NULL : "/etc/ssl/certs",
                                       o->certfile, o->keyfile, no_key_passphrase);
                if (rc == MOSQ_ERR_SUCCESS)
                        rc = mosquitto_tls_opts_set(c->mosq, SSL_VERIFY_PEER, NULL, NULL);
                if (rc == MOSQ_ERR_SUCCESS)
                        rc = mosquitto_tls_insecure_set(c->mosq, false);
                if (rc != MOSQ_ERR_SUCCESS) {
                        reason_printf(err, errlen, "cannot set up TLS: %s", mosquitto_strerror(rc));
                        return errno_from_mosq(rc, errno);
                }
        }
        return 0;
}

int mqtt_client_new(MqttClient **ret, uv_loop_t *loop, const MqttClientOptions *opts,
                    const MqttClientCallbacks *cb, void *userdata, char *err, size_t errlen)
{
        char dummy[1];
        MqttClient *c;
        int r;

        if (!err || errlen == 0) {
                err = dummy;
                errlen = sizeof(dummy);
        }
        err[0] = '\0';
        if (!ret || !loop || !opts || !opts->url) {
                reason_printf(err, errlen, "no broker URL");
                return -EINVAL;
        }
        if (opts->keepalive != 0 && (opts->keepalive < 5 || opts->keepalive > 65535)) {
                reason_printf(err, errlen, "keepalive %d s out of range (5..65535)",
                              opts->keepalive);
                return -EINVAL;
        }
        if (opts->password && !opts->username) {
                reason_printf(err, errlen, "a password needs a user name");
                return -EINVAL;
        }
        if (!opts->certfile != !opts->keyfile) {
                reason_printf(err, errlen, "a client certificate needs its key and vice versa");
                return -EINVAL;
        }

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;

        r = broker_url_list_parse(opts->url, &c->urls, &c->n_urls, err, errlen);
        if (r < 0)
                goto fail;
        client_set_node(c, 0);
        if (!c->url.tls && (opts->cafile || opts->certfile)) {
                reason_printf(err, errlen, "TLS files given but %s is not an mqtts:// URL",
                              opts->url);
                r = -EINVAL;
                goto fail;
        }
        if (opts->cafile && (r = check_readable("CA file", opts->cafile, err, errlen)) < 0)
                goto fail;
        if (opts->certfile &&
            (r = check_readable("client certificate", opts->certfile, err, errlen)) < 0)
                goto fail;
        if (opts->keyfile && (r = check_readable("client key", opts->keyfile, err, errlen)) < 0)
                goto fail;

        if (!lib_initialised) {
                /* Once per process and never cleaned up: mosquitto_lib_cleanup() unloads
                 * OpenSSL configuration that a later mosquitto_lib_init() does not restore. */
                (void)mosquitto_lib_init();
                lib_initialised = true;
        }

        c->loop = loop;
        c->cb = cb ? *cb : (MqttClientCallbacks){ 0 };
        c->userdata = userdata;
        c->keepalive = opts->keepalive ? opts->keepalive : 60;
        c->reconnect = opts->reconnect;
        c->state = CLIENT_STATE_IDLE;

        r = client_setup_mosquitto(c, opts, err, errlen);
        if (r < 0)
                goto fail;

        (void)uv_timer_init(loop, &c->connect_timer);
        (void)uv_timer_init(loop, &c->keepalive_timer);
        (void)uv_timer_init(loop, &c->read_timer);
        c->connect_timer.data = c;
        c->keepalive_timer.data = c;
        c->read_timer.data = c;
        c->open_handles = 3;

        *ret = c;
        return 0;

fail:
        if (c->mosq)
                mosquitto_destroy(c->mosq);
        broker_url_list_free(c->urls, c->n_urls);
        free(c);
        return r;
}

int mqtt_client_start(MqttClient *c)
{
        if (!c || c->freed)
                return -EINVAL;
        if (c->state != CLIENT_STATE_IDLE)
                return -EALREADY;
        c->stopping = false;
        c->attempts = 0;
        c->node_failures = 0;
        c->was_up = false;
        c->state = CLIENT_STATE_WAITING;
        /* From a timer, never from the caller's stack (which may be a callback of ours). */
        return uv_timer_start(&c->connect_timer, connect_timer_cb, 0, 0);
}

int mqtt_client_publish(MqttClient *c, const char *topic, const void *payload, size_t len, int qos,
                        bool retain, int *ret_mid)
{
        int mid = 0, rc;

        if (!c || c->freed || !topic || qos < 0 || qos > 2 || (len > 0 && !payload))
                return -EINVAL;
        if (len > INT_MAX)
                return -EMSGSIZE;
        if (c->state != CLIENT_STATE_CONNECTED || c->stopping)
                return -ENOTCONN;

        rc = mosquitto_publish(c->mosq, &mid, topic, (int)len, payload, qos, retain);
        if (rc != MOSQ_ERR_SUCCESS)
                return errno_from_mosq(rc, errno);
        client_update_poll(c);
        if (ret_mid)
                *ret_mid = mid;
        return 0;
}

int mqtt_client_subscribe(MqttClient *c, const char *pattern, int qos, int *ret_mid)
{
        int mid = 0, rc;

        if (!c || c->freed || !pattern || qos < 0 || qos > 2)
                return -EINVAL;
        if (c->state != CLIENT_STATE_CONNECTED || c->stopping)
                return -ENOTCONN;

        rc = mosquitto_subscribe(c->mosq, &mid, pattern, qos);
        if (rc != MOSQ_ERR_SUCCESS)
                return errno_from_mosq(rc, errno);
        client_update_poll(c);
        if (ret_mid)
                *ret_mid = mid;
        return 0;
}

bool mqtt_client_is_connected(const MqttClient *c)
{
        return c && !c->freed && c->state == CLIENT_STATE_CONNECTED;
}

int mqtt_client_disconnect(MqttClient *c)
{
        int rc;

        if (!c || c->freed)
                return -EINVAL;
        if (c->state == CLIENT_STATE_IDLE)
                return -ENOTCONN;
        if (c->stopping)
                return 0; /* already on its way; the callback comes once */
        c->stopping = true;

        if (client_has_connection(c)) {
                rc = mosquitto_disconnect(c->mosq);
                if (rc == MOSQ_ERR_SUCCESS) {
                        client_update_poll(c);
                        return 0;
                }
                /* No socket after all: fall through to the notice from the timer. */
                client_close_poll(c);
                (void)uv_timer_stop(&c->keepalive_timer);
        }
        if (c->resolve) {
                c->resolve->data = NULL;
                (void)uv_cancel((uv_req_t *)c->resolve);
                c->resolve = NULL;
        }
        c->state = CLIENT_STATE_WAITING;
        return uv_timer_start(&c->connect_timer, connect_timer_cb, 0, 0);
}

bool mqtt_client_has_pending_output(const MqttClient *c)
{
        return c && !c->freed && c->poll && mosquitto_want_write(c->mosq);
}

MqttClient *mqtt_client_free(MqttClient *c)
{
        if (!c || c->freed)
                return NULL;
        c->freed = true;
        c->cb = (MqttClientCallbacks){ 0 };
        if (c->depth == 0)
                client_destroy(c);
        return NULL;
}

const char *mqtt_client_address(const MqttClient *c)
{
        return c ? c->address : NULL;
}
