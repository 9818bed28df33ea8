/* SPDX-License-Identifier: MIT */
/*
 * The control socket server. Each client is a uv_pipe_t with a line buffer bounded by
 * CONTROL_LINE_MAX and an output counter bounded by CONTROL_OUTPUT_MAX. Requests are answered in
 * order; a client that pipelines requests without reading its replies is paused (no more
 * reading, no more processing) until its output drains, and an event follower whose output
 * still grows past the limit is dropped. Nothing here ever blocks the loop.
 *
 * Memory of a client and of the server goes only in close callbacks: the server lives until the
 * listener and every client handle have been closed.
 */
#include "twind-control.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "control-protocol.h"
#include "json-util.h"
#include "log.h"

/* As deep as the kernel allows (net.core.somaxconn caps it): a burst of clients connecting at
 * once waits in the kernel instead of failing with EAGAIN. */
#define CONTROL_LISTEN_BACKLOG SOMAXCONN
#define CONTROL_READ_CHUNK     4096
/* A client whose queued output reaches this is paused until it falls to the low mark. Replies
 * therefore never push a client near CONTROL_OUTPUT_MAX; only events, which cannot wait, can. */
#define CONTROL_OUTPUT_HIGH   (CONTROL_OUTPUT_MAX / 2)
#define CONTROL_OUTPUT_LOW    (CONTROL_OUTPUT_MAX / 4)
#define CONTROL_ERROR_MSG_MAX 256
#define CONTROL_UID_UNKNOWN   ((uid_t)-1)
/* Descriptors kept free of control clients: each client holds one, and idle clients must not
 * take those the agent needs for its work (the loop's own, the broker connection, state saves,
 * the apply command's pipes, the journal, a reload's config and password files; a few dozen).
 * Under systemd the soft RLIMIT_NOFILE may be 1024, below CONTROL_CLIENTS_MAX: clients beyond
 * the limit minus this reserve get Busy instead of the agent getting EMFILE. */
#define CONTROL_FD_RESERVE 128

typedef struct ControlClient ControlClient;

struct ControlServer {
        uv_loop_t *loop;
        Manager *manager;
        uv_pipe_t listener;
        bool listener_open; /* initialised and not yet closed */
        char *bound_path;   /* set only when we bound the socket ourselves */
        ControlClient *clients;
        unsigned n_active;    /* clients not closing */
        unsigned n_handles;   /* handles whose close callback has not run yet */
        unsigned clients_max; /* CONTROL_CLIENTS_MAX, or less under a low RLIMIT_NOFILE */
        bool freeing;
};

struct ControlClient {
        ControlServer *server;
        uv_pipe_t pipe;
        ControlClient *prev, *next;

        char *buf; /* unprocessed input */
        size_t len, alloc;

        uid_t uid; /* from SO_PEERCRED at accept */
        gid_t gid;
        pid_t pid;

        size_t queued; /* bytes in writes whose callback has not run */
        bool following;
        bool reading;
        bool paused;      /* reading stopped because of queued output */
        bool eof;         /* peer sent EOF: close once the replies are out */
        bool close_after; /* LineTooLong: close once the replies are out */
        bool closing;
};

typedef struct WriteReq {
        uv_write_t req;
        ControlClient *client;
        size_t size;
        char data[];
} WriteReq;

static void client_process(ControlClient *c);
static void client_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void server_maybe_free(ControlServer *s)
{
        if (!s->freeing || s->n_handles > 0)
                return;
        free(s->bound_path);
        free(s);
}

static void client_close_cb(uv_handle_t *h)
{
        ControlClient *c = h->data;
        ControlServer *s = c->server;

        if (c->prev)
                c->prev->next = c->next;
        else
                s->clients = c->next;
        if (c->next)
                c->next->prev = c->prev;

        free(c->buf);
        free(c);
        s->n_handles--;
        server_maybe_free(s);
}

/* Pending writes are cancelled by libuv; their callbacks run before client_close_cb. */
static void client_close(ControlClient *c)
{
        if (c->closing)
                return;
        c->closing = true;
        c->server->n_active--;
        uv_close((uv_handle_t *)&c->pipe, client_close_cb);
}

/* Closes the client when nothing more will be written: after LineTooLong, or after EOF once
 * every request read before it has been answered. */
static void client_maybe_finish(ControlClient *c)
{
        if (c->closing || c->queued > 0)
                return;
        if (c->close_after || (c->eof && c->len == 0))
                client_close(c);
}

static void client_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        ControlClient *c = h->data;

        /* Room for the longest line, its '\r' and one byte more, which tells it is too long. */
        if (c->alloc - c->len < CONTROL_READ_CHUNK && c->alloc < CONTROL_LINE_MAX + 2) {
                size_t n = c->alloc < CONTROL_READ_CHUNK ? CONTROL_READ_CHUNK : c->alloc * 2;
                char *p;

                if (n > CONTROL_LINE_MAX + 2)
                        n = CONTROL_LINE_MAX + 2;
                p = realloc(c->buf, n);
                if (p) {
                        c->buf = p;
                        c->alloc = n;
                }
        }
        /* A zero-length buffer makes libuv report UV_ENOBUFS, which closes the client. */
        *buf = uv_buf_init(c->buf ? c->buf + c->len : NULL, (unsigned)(c->alloc - c->len));
}

static void client_write_cb(uv_write_t *req, int status)
{
        WriteReq *w = (WriteReq *)req;
        ControlClient *c = w->client;

        c->queued -= w->size;
        free(w);

        if (c->closing)
                return;
        if (status < 0) {
                log_debug("Control client (pid %d) write failed: %s", (int)c->pid,
                          uv_strerror(status));
                client_close(c);
                return;
        }
        if (c->paused && c->queued <= CONTROL_OUTPUT_LOW) {
                c->paused = false;
                client_process(c);
        }
        client_maybe_finish(c);
}

/* Queues data plus '\n'. Drops the client when its unwritten output would pass
 * CONTROL_OUTPUT_MAX: a reader that slow is not worth memory or waiting for. */
static int client_write(ControlClient *c, const char *data, size_t len)
{
        WriteReq *w;
        uv_buf_t b;
        int r;

        if (c->closing)
                return -ECONNRESET;
        if (c->queued + len + 1 > CONTROL_OUTPUT_MAX) {
                log_info("Dropping slow control client (pid %d, uid %d): %zu bytes unread",
                         (int)c->pid, (int)c->uid, c->queued);
                client_close(c);
                return -ENOBUFS;
        }

        w = malloc(sizeof(WriteReq) + len + 1);
        if (!w) {
                client_close(c);
                return -ENOMEM;
        }
        w->client = c;
        w->size = len + 1;
        memcpy(w->data, data, len);
        w->data[len] = '\n';

        b = uv_buf_init(w->data, (unsigned)w->size);
        r = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, client_write_cb);
        if (r < 0) {
                free(w);
                log_debug("Control client (pid %d) write failed: %s", (int)c->pid, uv_strerror(r));
                client_close(c);
                return r;
        }
        c->queued += w->size;
        return 0;
}

static int client_write_json(ControlClient *c, const json_t *j)
{
        _cleanup_free_ char *s = NULL;

        s = json_dumps_compact(j);
        if (!s) {
                client_close(c);
                return -ENOMEM;
        }
        return client_write(c, s, strlen(s));
}

static int reply_set_id(json_t *reply, const ControlRequest *req)
{
        if (!req || !req->has_id)
                return 0;
        return json_object_set_new(reply, "id", json_integer(req->id)) < 0 ? -ENOMEM : 0;
}

/* Takes ownership of result. */
static int client_reply_result(ControlClient *c, const ControlRequest *req, json_t *result)
{
        _cleanup_json_ json_t *reply = NULL;

        reply = json_object();
        /* json_object_set_new takes the reference even when it fails. */
        if (!reply || json_object_set_new(reply, "result", result) < 0 ||
            reply_set_id(reply, req) < 0) {
                if (!reply)
                        json_decref(result);
                client_close(c);
                return -ENOMEM;
        }
        return client_write_json(c, reply);
}

static int client_reply_error(ControlClient *c, const ControlRequest *req, const char *name,
                              const char *message)
{
        _cleanup_json_ json_t *reply = NULL;

        reply = json_object();
        if (!reply || reply_set_id(reply, req) < 0 ||
            json_object_set_new(reply, "error",
                                json_pack("{s:s, s:s}", "name", name, "message", message)) < 0) {
                client_close(c);
                return -ENOMEM;
        }
        return client_write_json(c, reply);
}

static bool client_is_privileged(const ControlClient *c)
{
        return c->uid != CONTROL_UID_UNKNOWN && (c->uid == 0 || c->uid == geteuid());
}

/* Whether the client is in group gid: its primary group, or one of its supplementary groups
 * (SO_PEERGROUPS, as the kernel recorded them at connect). */
static bool client_in_group(ControlClient *c, gid_t gid)
{
        _cleanup_free_ gid_t *groups = NULL;
        socklen_t len = 64 * sizeof(gid_t);
        uv_os_fd_t fd;

        if (c->uid == CONTROL_UID_UNKNOWN)
                return false;
        if (c->gid == gid)
                return true;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
                return false;
        for (int tries = 0; tries < 2; tries++) {
                free(groups);
                groups = malloc(len ? len : sizeof(gid_t));
                if (!groups)
                        return false;
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) {
                        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                                if (groups[i] == gid)
                                        return true;
                        return false;
                }
                if (errno != ERANGE)
                        break; /* len now says how much the kernel has */
        }
        return false;
}

static bool client_may_call(ControlClient *c, enum ControlMethod m)
{
        const TwindGroup *g = &manager_config(c->server->manager)->control_report_group;

        switch (control_method_access(m)) {
        case CONTROL_ACCESS_READ:
                return true;
        case CONTROL_ACCESS_REPORT:
                return client_is_privileged(c) || (g->name && client_in_group(c, g->gid));
        case CONTROL_ACCESS_ADMIN:
                return client_is_privileged(c);
        }
        return false;
}

/* One handler per method; each answers the request itself. */
typedef void (*control_handler)(ControlClient *c, const ControlRequest *req);

static void handle_status(ControlClient *c, const ControlRequest *req)
{
        json_t *result = manager_status_json(c->server->manager);

        if (!result) {
                client_reply_error(c, req, CONTROL_ERROR_INTERNAL, "out of memory");
                return;
        }
        client_reply_result(c, req, result);
}

static void handle_twin(ControlClient *c, const ControlRequest *req)
{
        json_t *result = manager_twin_json(c->server->manager);

        if (!result) {
                client_reply_error(c, req, CONTROL_ERROR_INTERNAL, "out of memory");
                return;
        }
        client_reply_result(c, req, result);
}

static void handle_reapply(ControlClient *c, const ControlRequest *req)
{
        char msg[CONTROL_ERROR_MSG_MAX];
        int64_t version = -1;
        bool queued = false;
        int r;

        r = manager_reapply(c->server->manager, &queued, &version);
        if (r == -ENOENT) {
                client_reply_error(c, req, CONTROL_ERROR_NO_DESIRED,
                                   "no valid desired configuration has been received yet");
                return;
        }
        if (r < 0) {
                snprintf(msg, sizeof(msg), "cannot start the apply: %s", strerror(-r));
                client_reply_error(c, req, CONTROL_ERROR_INTERNAL, msg);
                return;
        }
        log_info("Reapply requested over the control socket (pid %d, uid %d)", (int)c->pid,
                 (int)c->uid);
        client_reply_result(c, req,
                            json_pack("{s:b, s:b, s:I}", "started", 1, "queued", queued,
                                      "desiredVersion", (json_int_t)version));
}

static void handle_report(ControlClient *c, const ControlRequest *req)
{
        _cleanup_free_ char *keys = NULL;
        char msg[CONTROL_ERROR_MSG_MAX];
        size_t n = 0;
        const char *key;
        json_t *v;
        int r;

        r = manager_report(c->server->manager, req->properties, msg, sizeof(msg));
        if (r == -EINVAL || r == -EIO) {
                log_info("Report over the control socket refused (pid %d, uid %d): %s", (int)c->pid,
                         (int)c->uid, msg);
                client_reply_error(
                    c, req, r == -EIO ? CONTROL_ERROR_SAVE_FAILED : CONTROL_ERROR_REFUSED, msg);
                return;
        }
        if (r < 0) {
                client_reply_error(c, req, CONTROL_ERROR_INTERNAL, "out of memory");
                return;
        }
        /* The keys, never the values: a device may report what is not for the journal. */
        json_object_foreach (req->properties, key, v)
                n += strlen(key) + 2;
        keys = malloc(n + 1);
        if (keys) {
                keys[0] = '\0';
                json_object_foreach (req->properties, key, v) {
                        if (keys[0])
                                strcat(keys, ", ");
                        strcat(keys, key);
                }
        }
        log_info("Device properties reported over the control socket (pid %d, uid %d): %s",
                 (int)c->pid, (int)c->uid, keys ? keys : "?");
        client_reply_result(c, req, json_pack("{s:b}", "accepted", 1));
}

static void handle_events(ControlClient *c, const ControlRequest *req)
{
        /* Following starts after this reply, so the reply is always the first line. */
        if (client_reply_result(c, req, json_pack("{s:b}", "following", 1)) >= 0)
                c->following = true;
}

static const control_handler control_handlers[_CONTROL_METHOD_MAX] = {
        [CONTROL_METHOD_STATUS] = handle_status,   [CONTROL_METHOD_TWIN] = handle_twin,
        [CONTROL_METHOD_REAPPLY] = handle_reapply, [CONTROL_METHOD_EVENTS] = handle_events,
        [CONTROL_METHOD_REPORT] = handle_report,
};

static void client_handle_line(ControlClient *c, const char *line, size_t len)
{
        ControlRequest req = { .method = _CONTROL_METHOD_INVALID, .id = -1, .has_id = false };
        const char *error_name = NULL;
        char err[CONTROL_ERROR_MSG_MAX] = "";
        int r;

        r = control_request_parse(line, len, &req, &error_name, err, sizeof(err));
        if (r < 0 || req.method < 0 || req.method >= _CONTROL_METHOD_MAX) {
                log_debug("Control request refused: %s", err);
                client_reply_error(c, &req, error_name ? error_name : CONTROL_ERROR_INVALID_REQUEST,
                                   err[0] ? err : "invalid request");
                return;
        }
        if (!client_may_call(c, req.method)) {
                log_debug("Control method %s refused to uid %d",
                          control_method_to_string(req.method), (int)c->uid);
                client_reply_error(c, &req, CONTROL_ERROR_ACCESS_DENIED,
                                   control_method_access(req.method) == CONTROL_ACCESS_REPORT
                                       ? "only root, the agent's user and the members of "
                                         "[control] report_group may report properties"
                                       : "only root or the agent's user may call this method");
                control_request_done(&req);
                return;
        }
        control_handlers[req.method](c, &req);
        control_request_done(&req);
}

static void client_set_reading(ControlClient *c, bool on)
{
        int r;

        if (c->closing || c->reading == on)
                return;
        if (!on) {
                uv_read_stop((uv_stream_t *)&c->pipe);
                c->reading = false;
                return;
        }
        r = uv_read_start((uv_stream_t *)&c->pipe, client_alloc_cb, client_read_cb);
        if (r < 0) {
                log_debug("Control client (pid %d): cannot read: %s", (int)c->pid, uv_strerror(r));
                client_close(c);
                return;
        }
        c->reading = true;
}

/* Answers every complete line in the buffer, unless the client's output reaches the high mark:
 * then the rest waits, unread, until client_write_cb sees the output drain. */
static void client_process(ControlClient *c)
{
        size_t start = 0;

        while (!c->closing && start < c->len) {
                char *nl = memchr(c->buf + start, '\n', c->len - start);
                size_t n;

                if (!nl)
                        break;
                n = (size_t)(nl - (c->buf + start));
                /* The limit is on the line itself, a '\r' before the '\n' not counted. */
                if (n > 0 && c->buf[start + n - 1] == '\r')
                        n--;
                if (n > CONTROL_LINE_MAX)
                        break; /* reported below, as for a line still without its '\n' */
                if (n > 0)
                        client_handle_line(c, c->buf + start, n);
                start = (size_t)(nl - c->buf) + 1;

                if (c->queued >= CONTROL_OUTPUT_HIGH) {
                        c->paused = true;
                        break;
                }
        }
        if (c->closing)
                return;

        if (start > 0) {
                memmove(c->buf, c->buf + start, c->len - start);
                c->len -= start;
        }

        /* Without its '\n' yet, a line is too long once it cannot be one of at most
         * CONTROL_LINE_MAX bytes and a '\r'. */
        if (!c->paused && (c->len > CONTROL_LINE_MAX + 1 ||
                           (c->len == CONTROL_LINE_MAX + 1 && c->buf[c->len - 1] != '\r'))) {
                char msg[CONTROL_ERROR_MSG_MAX];

                snprintf(msg, sizeof(msg), "request line longer than %d bytes", CONTROL_LINE_MAX);
                log_debug("Control client (pid %d): %s, closing", (int)c->pid, msg);
                c->len = 0;
                c->close_after = true;
                client_set_reading(c, false);
                client_reply_error(c, NULL, CONTROL_ERROR_LINE_TOO_LONG, msg);
                client_maybe_finish(c);
                return;
        }
        if (!c->paused && c->eof && c->len > 0) {
                /* The last request had no '\n'; answer it all the same. */
                size_t n = c->len;

                c->len = 0;
                client_handle_line(c, c->buf, n);
                if (c->closing)
                        return;
        }

        /* Keep an idle client small: the buffer only grows while a long line arrives. */
        if (c->len == 0 && c->alloc > CONTROL_READ_CHUNK) {
                free(c->buf);
                c->buf = NULL;
                c->alloc = 0;
        }

        client_set_reading(c, !c->paused && !c->eof && !c->close_after);
}

static void client_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
        ControlClient *c = stream->data;

        if (c->closing)
                return;
        if (nread == UV_EOF) {
                c->eof = true;
                client_set_reading(c, false);
                client_process(c);
                client_maybe_finish(c);
                return;
        }
        if (nread < 0) {
                log_debug("Control client (pid %d) read failed: %s", (int)c->pid,
                          uv_strerror((int)nread));
                client_close(c);
                return;
        }
        c->len += (size_t)nread;
        client_process(c);
}

static void client_credentials(ControlClient *c)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);
        uv_os_fd_t fd;

        c->uid = CONTROL_UID_UNKNOWN;
        c->pid = 0;
        if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0)
                return;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || len != sizeof(cred)) {
                log_full(LOG_DEBUG, negative_errno(), NULL,
                         "Control client: cannot read peer credentials");
                return;
        }
        c->uid = cred.uid;
        c->gid = cred.gid;
        c->pid = cred.pid;
}

static void server_connection_cb(uv_stream_t *listener, int status)
{
        ControlServer *s = listener->data;
        ControlClient *c;
        int r;

        if (status < 0) {
                log_warning("Control socket: accept failed: %s, ignoring", uv_strerror(status));
                return;
        }

        c = calloc(1, sizeof(ControlClient));
        if (!c) {
                log_warning("Control socket: out of memory for a client, ignoring");
                return;
        }
        c->server = s;
        r = uv_pipe_init(s->loop, &c->pipe, 0);
        if (r < 0) {
                free(c);
                log_warning("Control socket: cannot set up a client: %s, ignoring", uv_strerror(r));
                return;
        }
        c->pipe.data = c;
        c->next = s->clients;
        if (s->clients)
                s->clients->prev = c;
        s->clients = c;
        s->n_handles++;
        s->n_active++;

        r = uv_accept(listener, (uv_stream_t *)&c->pipe);
        if (r < 0) {
                log_warning("Control socket: accept failed: %s, ignoring", uv_strerror(r));
                client_close(c);
                return;
        }
        client_credentials(c);

        if (s->n_active > s->clients_max) {
                static const char busy[] = "{\"error\":{\"message\":\"too many control clients\","
                                           "\"name\":\"" CONTROL_ERROR_BUSY "\"}}\n";
                uv_buf_t b = uv_buf_init((char *)busy, sizeof(busy) - 1);

                log_warning("Control socket: more than %u clients, refusing pid %d", s->clients_max,
                            (int)c->pid);
                /* A fresh socket has room for one short line; never wait for it. */
                (void)uv_try_write((uv_stream_t *)&c->pipe, &b, 1);
                client_close(c);
                return;
        }

        log_debug("Control client connected (pid %d, uid %d)", (int)c->pid, (int)c->uid);
        client_set_reading(c, true);
}

static void listener_close_cb(uv_handle_t *h)
{
        ControlServer *s = h->data;

        s->n_handles--;
        server_maybe_free(s);
}

static int mkdir_parents(const char *path, mode_t mode)
{
        _cleanup_free_ char *p = strdup(path);
        char *slash;

        if (!p)
                return -ENOMEM;
        slash = strrchr(p, '/');
        if (!slash || slash == p)
                return 0;
        *slash = '\0';

        for (char *q = p + 1; *q; q++) {
                if (*q != '/')
                        continue;
                *q = '\0';
                if (mkdir(p, mode) < 0 && errno != EEXIST)
                        return negative_errno();
                *q = '/';
        }
        if (mkdir(p, mode) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
}

/* Removes a socket file left by an agent that is gone. A socket someone still accepts on is
 * another agent's: refuse rather than steal it. Anything that is not a socket is not ours. */
static int remove_stale_socket(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -1;
        struct stat st;

        if (lstat(path, &st) < 0)
                return errno == ENOENT ? 0 : negative_errno();
        if (!S_ISSOCK(st.st_mode))
                return -EEXIST;

        /* Non-blocking, so a live agent with a full backlog (EAGAIN) cannot stall us. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return negative_errno();
        memcpy(sa.sun_path, path, strlen(path));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN)
                return -EADDRINUSE;

        if (unlink(path) < 0 && errno != ENOENT)
                return negative_errno();
        return 0;
}

static int server_bind(ControlServer *s, const char *path)
{
        struct sockaddr_un sa;
        int r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return log_error_errno(-ENAMETOOLONG, "Control socket path %s is too long", path);

        r = mkdir_parents(path, 0755);
        if (r < 0)
                return log_error_errno(r, "Failed to create the directory of %s", path);

        r = remove_stale_socket(path);
        if (r == -EEXIST)
                return log_error_errno(r, "Control socket path %s exists and is not a socket",
                                       path);
        if (r == -EADDRINUSE)
                return log_error_errno(r, "Control socket %s is in use by another process", path);
        if (r < 0)
                return log_error_errno(r, "Failed to remove stale control socket %s", path);

        r = uv_pipe_bind(&s->listener, path);
        if (r < 0)
                return log_error_errno(r, "Failed to bind control socket %s", path);

        s->bound_path = strdup(path);
        if (!s->bound_path) {
                (void)unlink(path);
                return log_error_errno(-ENOMEM, "Failed to bind control socket %s", path);
        }

        if (chmod(path, CONTROL_SOCKET_MODE) < 0)
                return log_error_errno(negative_errno(), "Failed to set the mode of %s", path);
        return 0;
}

/* How many clients fit in the soft RLIMIT_NOFILE next to CONTROL_FD_RESERVE, at most
 * CONTROL_CLIENTS_MAX. Read once: the limit is raised, if at all, before the server starts. */
static unsigned clients_max_for_rlimit(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
            rl.rlim_cur >= (rlim_t)CONTROL_CLIENTS_MAX + CONTROL_FD_RESERVE)
                return CONTROL_CLIENTS_MAX;
        if (rl.rlim_cur <= CONTROL_FD_RESERVE)
                return 1; /* the agent is short of descriptors anyway; still answer someone */
        return (unsigned)(rl.rlim_cur - CONTROL_FD_RESERVE);
}

int control_server_new(ControlServer **ret, uv_loop_t *loop, Manager *manager, const char *path,
                       int listen_fd)
{
        ControlServer *s;
        int r;

        if (!ret || !loop || !manager || (listen_fd < 0 && !path))
                return -EINVAL;

        s = calloc(1, sizeof(ControlServer));
        if (!s)
                return log_error_errno(-ENOMEM, "Failed to set up the control socket");
        s->loop = loop;
        s->manager = manager;
        s->clients_max = clients_max_for_rlimit();
        if (s->clients_max < CONTROL_CLIENTS_MAX)
                log_debug("Control socket: at most %u clients (the soft RLIMIT_NOFILE less %d "
                          "descriptors reserved)",
                          s->clients_max, CONTROL_FD_RESERVE);

        r = uv_pipe_init(loop, &s->listener, 0);
        if (r < 0) {
                free(s);
                return log_error_errno(r, "Failed to set up the control socket");
        }
        s->listener.data = s;
        s->listener_open = true;
        s->n_handles = 1;

        if (listen_fd >= 0) {
                r = uv_pipe_open(&s->listener, listen_fd);
                if (r < 0) {
                        log_error_errno(r, "Failed to use the control socket passed by systemd");
                        goto fail;
                }
        } else {
                r = server_bind(s, path);
                if (r < 0)
                        goto fail;
        }

        r = uv_listen((uv_stream_t *)&s->listener, CONTROL_LISTEN_BACKLOG, server_connection_cb);
        if (r < 0) {
                log_error_errno(r, "Failed to listen on the control socket");
                goto fail;
        }

        if (s->bound_path)
                log_debug("Control socket listening on %s", s->bound_path);
        else
                log_debug("Control socket listening on the socket passed by systemd");
        *ret = s;
        return 0;

fail:
        control_server_free(s);
        return r;
}

bool control_server_has_followers(const ControlServer *s)
{
        if (!s || s->freeing)
                return false;
        for (const ControlClient *c = s->clients; c; c = c->next)
                if (c->following && !c->closing)
                        return true;
        return false;
}

void control_server_broadcast(ControlServer *s, const json_t *event)
{
        _cleanup_free_ char *line = NULL;
        size_t len;

        if (!s || !event || s->freeing)
                return;

        line = json_dumps_compact(event);
        if (!line) {
                log_warning("Control socket: cannot encode an event, ignoring");
                return;
        }
        len = strlen(line);

        /* client_write may close a client, which only marks it: the list stays intact until
         * the close callbacks run. */
        for (ControlClient *c = s->clients; c; c = c->next)
                if (c->following && !c->closing)
                        (void)client_write(c, line, len);
}

ControlServer *control_server_free(ControlServer *s)
{
        if (!s || s->freeing)
                return NULL;
        s->freeing = true;

        if (s->listener_open) {
                s->listener_open = false;
                uv_close((uv_handle_t *)&s->listener, listener_close_cb);
        }
        /* Only a socket we bound ourselves: systemd's stays for the next start. */
        if (s->bound_path && unlink(s->bound_path) < 0 && errno != ENOENT)
                log_warning_errno(negative_errno(), "Failed to remove %s, ignoring", s->bound_path);

        for (ControlClient *c = s->clients; c; c = c->next)
                client_close(c);

        server_maybe_free(s);
        return NULL;
}
