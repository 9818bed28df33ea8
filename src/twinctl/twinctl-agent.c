/* SPDX-License-Identifier: MIT */
/* The device-side verbs: status, events and reapply, over the agent's control socket. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control-protocol.h"
#include "json-util.h"
#include "log.h"
#include "macro.h"
#include "twin-model.h"
#include "twinctl-output.h"
#include "twinctl-patch.h"
#include "twinctl.h"

/* The agent bounds a client's unwritten output at CONTROL_OUTPUT_MAX, so no reply line is
 * longer; refuse anything beyond instead of growing without bound. */
#define AGENT_LINE_MAX CONTROL_OUTPUT_MAX

typedef struct AgentConnection {
        int fd;
        const char *path;
        char *buf;
        size_t len;
} AgentConnection;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
        interrupted = 1;
}

static void agent_connection_done(AgentConnection *c)
{
        if (c->fd >= 0)
                close(c->fd);
        free(c->buf);
}

/* Returns 0 or an exit code, after saying what went wrong. */
static int agent_connect(AgentConnection *c, const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        c->path = path;
        if (strlen(path) >= sizeof sa.sun_path) {
                log_error("socket path %s is too long", path);
                return TWINCTL_EXIT_USAGE;
        }
        strcpy(sa.sun_path, path);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
                return log_error_errno(negative_errno(), "Failed to create a socket"),
                       TWINCTL_EXIT_FAILURE;
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
                int r = negative_errno();

                if (r == -EACCES || r == -EPERM) {
                        log_error("access denied to the agent's socket %s: %s", path, strerror(-r));
                        return TWINCTL_EXIT_ACCESS_DENIED;
                }
                log_error("cannot reach the agent at %s: %s (is twind running?)", path,
                          strerror(-r));
                return TWINCTL_EXIT_UNREACHABLE;
        }
        return 0;
}

/* Sends a request with params (NULL: none), naming the oldest protocol version that has the
 * method, so that an older agent still answers what it knows. */
static int agent_send(AgentConnection *c, const char *method, const json_t *params, int64_t id)
{
        int version = control_method_from_string(method) == CONTROL_METHOD_REPORT
                          ? 2
                          : CONTROL_PROTOCOL_VERSION_MIN;
        _cleanup_json_ json_t *req =
            json_pack("{s:s,s:I,s:i,s:O*}", "method", method, "id", (json_int_t)id, "version",
                      version, "params", params);
        _cleanup_free_ char *line = NULL;
        size_t len, off = 0;

        if (!req)
                return -ENOMEM;
        line = json_dumps(req, JSON_COMPACT);
        if (!line)
                return -ENOMEM;
        len = strlen(line);
        line[len++] = '\n'; /* over the NUL: the length is tracked */
        while (off < len) {
                ssize_t n = send(c->fd, line + off, len - off, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return negative_errno();
                off += (size_t)n;
        }
        return 0;
}

/*
 * Reads one line (without '\n') into *ret (malloc'd). Returns 0, -ETIMEDOUT at deadline_ms (0:
 * none), -EINTR after SIGINT/SIGTERM, -ECONNRESET at end of file, -E2BIG for an overlong line, or
 * another negative errno.
 */
static int agent_read_line(AgentConnection *c, uint64_t deadline_ms, char **ret)
{
        for (;;) {
                char *nl = c->buf ? memchr(c->buf, '\n', c->len) : NULL;
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                int timeout = -1, k;
                ssize_t n;
                char *b;

                if (nl) {
                        size_t l = (size_t)(nl - c->buf);
                        char *line = strndup(c->buf, l);

                        if (!line)
                                return -ENOMEM;
                        memmove(c->buf, nl + 1, c->len - l - 1);
                        c->len -= l + 1;
                        *ret = line;
                        return 0;
                }
                if (c->len >= AGENT_LINE_MAX)
                        return -E2BIG;
                if (interrupted)
                        return -EINTR;
                if (deadline_ms > 0) {
                        uint64_t now = now_ms();
                        if (now >= deadline_ms)
                                return -ETIMEDOUT;
                        /* --timeout allows a year, more milliseconds than an int holds. */
                        timeout = deadline_ms - now > INT_MAX ? INT_MAX : (int)(deadline_ms - now);
                }
                k = poll(&p, 1, timeout);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return negative_errno();
                if (k == 0)
                        continue;

                b = realloc(c->buf, c->len + 65536);
                if (!b)
                        return -ENOMEM;
                c->buf = b;
                n = recv(c->fd, c->buf + c->len, 65536, 0);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -ECONNRESET;
                c->len += (size_t)n;
        }
}

/* A sanitised copy of a JSON string for people (see output_sanitize()); NULL when v is not a
 * string (or on ENOMEM). */
static char *safe_string(const json_t *v)
{
        return json_is_string(v) ? output_sanitize(strdup(json_string_value(v))) : NULL;
}

/* Maps the agent's error names to exit codes. */
static int agent_error_to_exit(const char *name)
{
        if (!name)
                return TWINCTL_EXIT_FAILURE;
        if (strcmp(name, CONTROL_ERROR_ACCESS_DENIED) == 0)
                return TWINCTL_EXIT_ACCESS_DENIED;
        if (strcmp(name, CONTROL_ERROR_NO_DESIRED) == 0)
                return TWINCTL_EXIT_NOT_FOUND;
        if (strcmp(name, CONTROL_ERROR_BUSY) == 0)
                return TWINCTL_EXIT_UNREACHABLE;
        /* Refused and SaveFailed: nothing changed, said why. */
        return TWINCTL_EXIT_FAILURE;
}

static int agent_read_error_to_exit(AgentConnection *c, int r)
{
        switch (r) {
        case -ETIMEDOUT:
                log_error("the agent at %s did not answer in time", c->path);
                return TWINCTL_EXIT_TIMEOUT;
        case -ECONNRESET:
                log_error("the agent at %s closed the connection", c->path);
                return TWINCTL_EXIT_UNREACHABLE;
        case -E2BIG:
                log_error("the agent at %s sent a line longer than %d bytes", c->path,
                          AGENT_LINE_MAX);
                return TWINCTL_EXIT_FAILURE;
        default:
                log_error_errno(r, "Failed to read from the agent at %s", c->path);
                return TWINCTL_EXIT_FAILURE;
        }
}

/*
 * Calls method and waits for its response; events that arrive meanwhile are appended to events
 * (NULL: skipped). Returns 0 with the "result" in *ret, or an exit code after saying what went
 * wrong (the agent's own message for its errors).
 */
static int agent_call(AgentConnection *c, const char *method, const json_t *params,
                      uint64_t deadline_ms, json_t *events, json_t **ret)
{
        int r;

        r = agent_send(c, method, params, 1);
        if (r < 0) {
                log_error_errno(r, "Failed to send to the agent at %s", c->path);
                return TWINCTL_EXIT_UNREACHABLE;
        }
        for (;;) {
                _cleanup_free_ char *line = NULL;
                _cleanup_json_ json_t *reply = NULL;
                json_t *error, *result;

                r = agent_read_line(c, deadline_ms, &line);
                if (r < 0)
                        return agent_read_error_to_exit(c, r);
                reply = json_loads(line, 0, NULL);
                if (!json_is_object(reply)) {
                        log_error("the agent at %s sent something that is not a JSON object",
                                  c->path);
                        return TWINCTL_EXIT_FAILURE;
                }
                if (json_object_get(reply, "event")) {
                        if (events && json_array_append(events, reply) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory"),
                                       TWINCTL_EXIT_FAILURE;
                        continue;
                }
                error = json_object_get(reply, "error");
                if (error) {
                        const char *name = json_string_value(json_object_get(error, "name"));
                        _cleanup_free_ char *msg = safe_string(json_object_get(error, "message"));
                        _cleanup_free_ char *safe_name =
                            safe_string(json_object_get(error, "name"));

                        if (name && strcmp(name, CONTROL_ERROR_ACCESS_DENIED) == 0)
                                log_error("access denied: %s %s", method,
                                          msg ? msg : "needs root or the agent's own user");
                        else
                                log_error("the agent refused %s: %s (%s)", method,
                                          msg ? msg : "no reason given",
                                          safe_name ? safe_name : "?");
                        return agent_error_to_exit(name);
                }
                result = json_object_get(reply, "result");
                if (!result) {
                        log_error("the agent at %s sent a reply without result or error", c->path);
                        return TWINCTL_EXIT_FAILURE;
                }
                *ret = json_incref(result);
                return 0;
        }
}

typedef struct Fields {
        char **keys, **values;
        size_t n, cap;
} Fields;

static void fields_done(Fields *f)
{
        for (size_t i = 0; i < f->n; i++) {
                free(f->keys[i]);
                free(f->values[i]);
        }
        free(f->keys);
        free(f->values);
}

/* Takes ownership of key and value (value NULL shows as "-"). */
static int fields_add(Fields *f, char *key, char *value)
{
        if (!key)
                goto oom;
        if (f->n == f->cap) {
                size_t cap = f->cap ? f->cap * 2 : 32;
                char **k, **v;

                k = realloc(f->keys, cap * sizeof *k);
                if (!k)
                        goto oom;
                f->keys = k;
                v = realloc(f->values, cap * sizeof *v);
                if (!v)
                        goto oom;
                f->values = v;
                f->cap = cap;
        }
        f->keys[f->n] = key;
        f->values[f->n++] = value;
        return 0;
oom:
        free(key);
        free(value);
        return -ENOMEM;
}

/* Prints an object as aligned "key: value" lines, in the agent's order; nested objects one level
 * deep as "key.sub: value", deeper values as JSON. */
static int print_object(const json_t *o)
{
        _cleanup_(fields_done) Fields f = { 0 };
        const char *key, *sub;
        json_t *v, *w;
        int r;

        json_object_foreach ((json_t *)o, key, v) {
                if (!json_is_object(v) || json_object_size(v) == 0) {
                        r = fields_add(&f, output_sanitize(strdup(key)),
                                       json_is_null(v) ? NULL : output_value(v, true));
                        if (r < 0)
                                return r;
                        continue;
                }
                json_object_foreach (v, sub, w) {
                        char *k;

                        if (asprintf(&k, "%s.%s", key, sub) < 0)
                                return -ENOMEM;
                        r = fields_add(&f, output_sanitize(k),
                                       json_is_null(w) ? NULL : output_value(w, true));
                        if (r < 0)
                                return r;
                }
        }
        output_fields(f.n, f.keys, f.values);
        return 0;
}

static char *str_or_dash(const json_t *v)
{
        return json_is_null(v) || !v ? NULL : output_value(v, true);
}

/* The status reply for people: a curated summary in the manner of chronyc tracking, the fields
 * a person looks for first; --json has every field. */
static int print_status(const json_t *o)
{
        _cleanup_(fields_done) Fields f = { 0 };
        const json_t *st = json_object_get(o, "status");
        const json_t *counters = json_object_get(o, "counters");
        _cleanup_free_ char *state = safe_string(json_object_get(o, "state"));
        _cleanup_free_ char *since = safe_string(json_object_get(o, "connectedSince"));
        _cleanup_free_ char *broker = safe_string(json_object_get(o, "broker"));
        char *v;
        int r = 0;

#define ADD(key, value)                                                                            \
        do {                                                                                       \
                char *_v = (value);                                                                \
                if (r >= 0)                                                                        \
                        r = fields_add(&f, strdup(key), _v);                                       \
                else                                                                               \
                        free(_v);                                                                  \
        } while (0)
#define ADDF(key, ...)                                                                             \
        do {                                                                                       \
                if (asprintf(&v, __VA_ARGS__) < 0)                                                 \
                        v = NULL;                                                                  \
                ADD(key, v);                                                                       \
        } while (0)

        ADD("Device", str_or_dash(json_object_get(o, "deviceId")));
        if (json_is_true(json_object_get(o, "connected")))
                ADDF("Broker", "%s, connected since %s", broker ? broker : "?",
                     since ? since : "?");
        else
                ADDF("Broker", "%s%s, not connected%s", broker ? broker : "?",
                     output_color_on(OUTPUT_COLOR_RED), output_color_off());
        ADDF("State", "%s%s%s", output_color_on(output_state_color(state)), state ? state : "-",
             output_color_off());
        ADD("Doing", str_or_dash(json_object_get(o, "statusText")));
        ADD("Config id", str_or_dash(json_object_get(o, "configId")));
        ADD("Applied", output_value(json_object_get(o, "applied"), false));
        if (json_object_size(json_object_get(o, "deviceProperties")) > 0)
                ADD("Device reports", output_value(json_object_get(o, "deviceProperties"), false));
        if (json_is_object(st)) {
                _cleanup_free_ char *error = safe_string(json_object_get(st, "error"));
                _cleanup_free_ char *at = safe_string(json_object_get(st, "updatedAt"));

                ADDF("Answered", "desired $version %" JSON_INTEGER_FORMAT " at %s",
                     json_integer_value(json_object_get(st, "desiredVersion")), at ? at : "?");
                if (error)
                        ADDF("Error", "%s%s%s", output_color_on(OUTPUT_COLOR_RED), error,
                             output_color_off());
        } else
                ADD("Answered", strdup("nothing yet"));
        ADDF("Reported", "$version %" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(o, "reportedVersion")));
        ADD("Last error", str_or_dash(json_object_get(o, "lastError")));
        ADDF("Uptime", "%" JSON_INTEGER_FORMAT " s",
             json_integer_value(json_object_get(o, "uptimeSeconds")));
        ADDF("Counters",
             "%" JSON_INTEGER_FORMAT " applies, %" JSON_INTEGER_FORMAT
             " failures, %" JSON_INTEGER_FORMAT " reconnects",
             json_integer_value(json_object_get(counters, "applies")),
             json_integer_value(json_object_get(counters, "failures")),
             json_integer_value(json_object_get(counters, "reconnects")));
#undef ADDF
#undef ADD
        if (r < 0)
                return r;
        output_fields(f.n, f.keys, f.values);
        return 0;
}

static int agent_simple_verb(int argc, char **argv, const TwinctlArgs *args, const char *method)
{
        _cleanup_(agent_connection_done) AgentConnection c = { .fd = -1 };
        _cleanup_json_ json_t *result = NULL;
        int r;

        if (argc != 1) {
                log_error("%s takes no arguments", argv[0]);
                return TWINCTL_EXIT_USAGE;
        }
        r = agent_connect(&c, args->socket_path);
        if (r != 0)
                return r;
        r = agent_call(&c, method, NULL, twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS), NULL,
                       &result);
        if (r != 0)
                return r;
        if (args->json)
                return output_json(result) < 0 ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_SUCCESS;
        if (json_is_object(result) && strcmp(method, "status") == 0)
                r = print_status(result);
        else if (json_is_object(result))
                r = print_object(result);
        else {
                _cleanup_free_ char *s = output_value(result, true);
                printf("%s\n", s ? s : "?");
        }
        if (r < 0)
                return log_error_errno(r, "Out of memory"), TWINCTL_EXIT_FAILURE;
        return TWINCTL_EXIT_SUCCESS;
}

int verb_status(int argc, char **argv, const TwinctlArgs *args)
{
        return agent_simple_verb(argc, argv, args, control_method_to_string(CONTROL_METHOD_STATUS));
}

int verb_report(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(agent_connection_done) AgentConnection c = { .fd = -1 };
        _cleanup_json_ json_t *patches = NULL, *props = NULL, *params = NULL, *result = NULL;
        bool has_config_id;
        int r;

        if (argc < 2 && !args->set_file) {
                log_error("report needs KEY=VALUE pairs or --file FILE");
                return TWINCTL_EXIT_USAGE;
        }
        r = twinctl_parse_pairs(args->set_file, argc - 1, argv + 1, &patches, &has_config_id);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory"), TWINCTL_EXIT_FAILURE;
        if (r < 0)
                return TWINCTL_EXIT_USAGE;
        props = twinctl_patches_compose(patches);
        params = props ? json_pack("{s:O}", "properties", props) : NULL;
        if (!params)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        if (json_object_size(props) == 0) {
                log_error("%s: an empty object, nothing to report", args->set_file);
                return TWINCTL_EXIT_USAGE;
        }

        r = agent_connect(&c, args->socket_path);
        if (r != 0)
                return r;
        r = agent_call(&c, control_method_to_string(CONTROL_METHOD_REPORT), params,
                       twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS), NULL, &result);
        if (r != 0)
                return r;
        if (args->json)
                return output_json(result) < 0 ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_SUCCESS;
        return TWINCTL_EXIT_SUCCESS;
}

static bool event_is(const json_t *ev, const char *name)
{
        const char *n = json_string_value(json_object_get(ev, "event"));

        return n && strcmp(n, name) == 0;
}

/* The apply-finished event of the apply that serves a reapply, from the events seen so far
 * (borrowed), or NULL. The apply that serves it is the last one that started before the reply
 * when the reapply started at once, else the first one that started after it (the queued
 * reapply, or a newer desired document's apply, which serves it too); *started is its desired
 * $version once known. */
static const json_t *reapply_outcome(const json_t *events, size_t reply_at, bool queued,
                                     int64_t *started)
{
        size_t i, from = SIZE_MAX;
        json_t *ev;

        json_array_foreach (events, i, ev)
                if (event_is(ev, CONTROL_EVENT_APPLY_STARTED) &&
                    (queued ? i >= reply_at && from == SIZE_MAX : i < reply_at))
                        from = i;
        if (from == SIZE_MAX)
                return NULL;
        *started =
            json_integer_value(json_object_get(json_array_get(events, from), "desiredVersion"));
        for (i = from + 1; i < json_array_size(events); i++) {
                ev = json_array_get(events, i);
                if (event_is(ev, CONTROL_EVENT_APPLY_FINISHED) &&
                    json_integer_value(json_object_get(ev, "desiredVersion")) == *started)
                        return ev;
        }
        return NULL;
}

/* reapply --wait: follows events on the same connection, then asks, then waits for the
 * apply-finished of the apply that serves the request. */
static int reapply_wait(const TwinctlArgs *args)
{
        _cleanup_(agent_connection_done) AgentConnection c = { .fd = -1 };
        _cleanup_json_ json_t *events = json_array(), *result = NULL, *following = NULL;
        uint64_t deadline = twinctl_deadline(args, TWINCTL_WAIT_TIMEOUT_MS);
        const json_t *done = NULL;
        int64_t started = -1;
        size_t reply_at;
        bool queued;
        int r;

        if (!events)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        r = agent_connect(&c, args->socket_path);
        if (r != 0)
                return r;
        r = agent_call(&c, control_method_to_string(CONTROL_METHOD_EVENTS), NULL, deadline, NULL,
                       &following);
        if (r != 0)
                return r;
        r = agent_call(&c, control_method_to_string(CONTROL_METHOD_REAPPLY), NULL, deadline, events,
                       &result);
        if (r != 0)
                return r;
        reply_at = json_array_size(events);
        queued = json_is_true(json_object_get(result, "queued"));
        while (!(done = reapply_outcome(events, reply_at, queued, &started))) {
                _cleanup_free_ char *line = NULL;
                _cleanup_json_ json_t *ev = NULL;

                r = agent_read_line(&c, deadline, &line);
                if (r == -ETIMEDOUT) {
                        log_error("the apply did not finish in time");
                        return TWINCTL_EXIT_TIMEOUT;
                }
                if (r == -EINTR)
                        return TWINCTL_EXIT_SUCCESS;
                if (r < 0)
                        return agent_read_error_to_exit(&c, r);
                ev = json_loads(line, 0, NULL);
                if (json_is_object(ev) && json_object_get(ev, "event") &&
                    json_array_append(events, ev) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        }
        if (args->json) {
                const char *res = json_string_value(json_object_get(done, "result"));

                if (output_json(done) < 0)
                        return TWINCTL_EXIT_FAILURE;
                return res && strcmp(res, "success") == 0 ? TWINCTL_EXIT_SUCCESS
                                                          : TWINCTL_EXIT_DEVICE_FAILED;
        }
        {
                _cleanup_free_ char *cid = output_value(json_object_get(done, "configId"), true);
                _cleanup_free_ char *error = safe_string(json_object_get(done, "error"));
                const char *res = json_string_value(json_object_get(done, "result"));
                bool ok = res && strcmp(res, "success") == 0;
                int64_t asked = json_integer_value(json_object_get(result, "desiredVersion"));
                char served[96] = "";

                if (json_is_integer(json_object_get(result, "desiredVersion")) && asked != started)
                        snprintf(served, sizeof served,
                                 " (a newer desired document, $version %" PRId64
                                 ", was applied instead)",
                                 started);
                if (ok) {
                        printf("Re-applied configId %s (desired $version %" PRId64 "): success%s\n",
                               cid ? cid : "-", started, served);
                        return TWINCTL_EXIT_SUCCESS;
                }
                log_error("re-applying configId %s (desired $version %" PRId64 ") failed%s: %s",
                          cid ? cid : "-", started, served, error ? error : "(no error given)");
                return TWINCTL_EXIT_DEVICE_FAILED;
        }
}

int verb_reapply(int argc, char **argv, const TwinctlArgs *args)
{
        if (args->wait) {
                if (argc != 1) {
                        log_error("reapply takes no arguments");
                        return TWINCTL_EXIT_USAGE;
                }
                return reapply_wait(args);
        }
        return agent_simple_verb(argc, argv, args,
                                 control_method_to_string(CONTROL_METHOD_REAPPLY));
}

static void print_event(const json_t *ev)
{
        _cleanup_free_ char *name = safe_string(json_object_get(ev, "event"));
        _cleanup_free_ char *time = safe_string(json_object_get(ev, "time"));
        const char *key;
        json_t *v;

        printf("%s %s", time ? time : "-", name ? name : "?");
        json_object_foreach ((json_t *)ev, key, v) {
                _cleanup_free_ char *s = NULL, *k = NULL;

                if (strcmp(key, "event") == 0 || strcmp(key, "time") == 0)
                        continue;
                /* A string that would not read back as one value (empty, spaces, '=', quotes)
                 * is quoted as JSON, so that each key=value stays one word. */
                if (json_is_string(v) &&
                    (json_string_length(v) == 0 || strpbrk(json_string_value(v), " \t=\"")))
                        s = output_value(v, false);
                else
                        s = json_is_null(v) ? strdup("-") : output_value(v, true);
                k = output_sanitize(strdup(key));
                printf(" %s=%s", k ? k : "?", s ? s : "?");
        }
        putchar('\n');
        fflush(stdout);
}

int verb_events(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(agent_connection_done) AgentConnection c = { .fd = -1 };
        _cleanup_json_ json_t *result = NULL;
        struct sigaction sa = { .sa_handler = on_interrupt };
        uint64_t deadline;
        int r;

        if (argc != 1) {
                log_error("events takes no arguments");
                return TWINCTL_EXIT_USAGE;
        }
        /* No SA_RESTART: poll() must return so that Ctrl-C ends the stream cleanly. */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);

        r = agent_connect(&c, args->socket_path);
        if (r != 0)
                return r;
        r = agent_call(&c, control_method_to_string(CONTROL_METHOD_EVENTS), NULL,
                       twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS), NULL, &result);
        if (r != 0)
                return interrupted ? TWINCTL_EXIT_SUCCESS : r;

        /* Follows until Ctrl-C, or for --timeout seconds when given. */
        deadline = args->timeout_ms > 0 ? twinctl_deadline(args, 0) : 0;
        for (;;) {
                _cleanup_free_ char *line = NULL;
                _cleanup_json_ json_t *ev = NULL;

                r = agent_read_line(&c, deadline, &line);
                if (r == -EINTR || r == -ETIMEDOUT)
                        return TWINCTL_EXIT_SUCCESS;
                if (r < 0)
                        return agent_read_error_to_exit(&c, r);
                ev = json_loads(line, 0, NULL);
                if (!json_is_object(ev) || !json_is_string(json_object_get(ev, "event")))
                        continue; /* replies and anything this version does not know */
                if (args->json)
                        (void)output_json_line(ev); /* re-encoded, not the agent's raw bytes */
                else
                        print_event(ev);
        }
}
