/* SPDX-License-Identifier: MIT */
/*
 * The apply command runs in a session of its own (UV_PROCESS_DETACHED: libuv calls setsid() in
 * the child), so its pid is also its process group id. On timeout, or when the job is freed while
 * the command runs, kill(-pid, SIGKILL) therefore also takes down whatever a shell script started
 * (its children would otherwise keep running, and keep our stderr pipe open). A command that exits
 * normally is not touched: a grandchild it left behind on purpose stays.
 *
 * The job is over when the command has exited and its stderr reached EOF, or APPLY_STDERR_GRACE
 * after the exit, whichever comes first, so a grandchild holding stderr open cannot hang it.
 *
 * A command that does not exit APPLY_KILL_GRACE after the timeout's SIGKILL (uninterruptible
 * sleep, or EPERM) ends the job anyway, so the agent does not stay "applying" forever. Its
 * process handle stays open, so that libuv reaps it should it ever exit (the job's memory goes
 * then), but unreferenced, so it holds neither the loop nor the agent's shutdown.
 */
#include "twind-apply.h"

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

#define APPLY_STDERR_GRACE_MSEC 1000
#define APPLY_KILL_GRACE_MSEC   5000
#define APPLY_READ_CHUNK        16384

extern char **environ;

struct ApplyJob {
        uv_process_t process;
        uv_pipe_t stdin_pipe;
        uv_pipe_t stderr_pipe;
        /* The timeout while the command runs, then the kill grace period after a timeout, then
         * the stderr grace period after the exit. */
        uv_timer_t timer;
        uv_write_t write_req;

        /* Handles initialised and not yet closed (the *_live flags), and handles whose close
         * callback has not run yet (n_open): the memory goes when n_open drops to 0 after free. */
        bool process_live, stdin_live, stderr_live, timer_live;
        unsigned n_open;

        bool running;   /* spawned, exit not yet seen */
        bool timed_out; /* we killed it for the timeout */
        bool finished;  /* done was called, or the job was freed: never call back again */
        bool freed;

        int64_t exit_status;
        int term_signal;
        uint64_t timeout_usec;

        char *input; /* our copy, alive until the write completes */
        size_t input_len;

        /* The last APPLY_STDERR_TAIL_MAX bytes of stderr; tail_truncated when more came. */
        char tail[APPLY_STDERR_TAIL_MAX];
        size_t tail_len;
        bool tail_truncated;
        char read_buf[APPLY_READ_CHUNK];

        apply_done_fn done;
        void *userdata;
};

static void job_on_closed(uv_handle_t *h)
{
        ApplyJob *job = h->data;

        job->n_open--;
        if (job->n_open == 0 && job->freed) {
                free(job->input);
                free(job);
        }
}

static void job_close(ApplyJob *job, uv_handle_t *h, bool *live)
{
        if (!*live)
                return;
        *live = false;
        uv_close(h, job_on_closed);
}

static void job_close_stdio_and_timer(ApplyJob *job)
{
        job_close(job, (uv_handle_t *)&job->stdin_pipe, &job->stdin_live);
        job_close(job, (uv_handle_t *)&job->stderr_pipe, &job->stderr_live);
        job_close(job, (uv_handle_t *)&job->timer, &job->timer_live);
}

static void job_kill(ApplyJob *job)
{
        if (!job->running)
                return;
        /* The whole process group first; fall back to the pid should the group be gone. */
        if (kill(-job->process.pid, SIGKILL) < 0)
                (void)uv_process_kill(&job->process, SIGKILL);
}

/* Length of the valid UTF-8 sequence at s, 0 when invalid (overlong, surrogate, truncated). */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
        unsigned char c = s[0];
        uint32_t cp;
        size_t len;

        if (c < 0x80)
                return 1;
        if (c >= 0xC2 && c <= 0xDF) {
                len = 2;
                cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
                len = 3;
                cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
                len = 4;
                cp = c & 0x07;
        } else
                return 0;
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xC0) != 0x80)
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3F);
        }
        if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
                return 0;
        if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))
                return 0;
        return len;
}

/* The stderr tail as one line fit for a JSON string: control characters and runs of blanks
 * become one space, the ends are trimmed, invalid UTF-8 bytes become '?'. out holds len + 1. */
static void tail_sanitize(const char *in, size_t len, bool truncated, char *out)
{
        const unsigned char *s = (const unsigned char *)in;
        bool blank = false;
        size_t i = 0, o = 0;

        /* Cut off mid-character by the tail window: drop the orphaned continuation bytes. */
        if (truncated)
                while (i < len && i < 3 && (s[i] & 0xC0) == 0x80)
                        i++;

        while (i < len) {
                size_t n;

                if (s[i] <= 0x20 || s[i] == 0x7F) {
                        blank = true;
                        i++;
                        continue;
                }
                if (blank && o > 0)
                        out[o++] = ' ';
                blank = false;
                n = utf8_char_len(s + i, len - i);
                if (n == 0) {
                        out[o++] = '?';
                        i++;
                        continue;
                }
                memcpy(out + o, s + i, n);
                o += n;
                i += n;
        }
        out[o] = '\0';
}

/* "60 s", "1.5 s", "200 ms", "250 us". */
static void format_duration(char *buf, size_t size, uint64_t usec)
{
        uint64_t unit;
        const char *name;
        char frac[8] = "";

        if (usec >= 1000000) {
                unit = 1000000;
                name = "s";
        } else if (usec >= 1000) {
                unit = 1000;
                name = "ms";
        } else {
                snprintf(buf, size, "%" PRIu64 " us", usec);
                return;
        }

        /* Three decimals at most, trailing zeros dropped. */
        uint64_t rest = (usec % unit) / (unit / 1000);
        if (rest > 0) {
                size_t l;

                snprintf(frac, sizeof(frac), ".%03" PRIu64, rest);
                l = strlen(frac);
                while (frac[l - 1] == '0')
                        frac[--l] = '\0';
        }
        snprintf(buf, size, "%" PRIu64 "%s %s", usec / unit, frac, name);
}

static void job_finish(ApplyJob *job)
{
        char message[160 + APPLY_STDERR_TAIL_MAX];
        char tail[APPLY_STDERR_TAIL_MAX + 1];
        apply_done_fn done = job->done;
        void *userdata = job->userdata;
        int error = 0;

        if (job->finished)
                return;
        job->finished = true;
        job_close_stdio_and_timer(job);

        tail_sanitize(job->tail, job->tail_len, job->tail_truncated, tail);

        if (job->running) {
                /* Only the kill grace period ends a job whose command still runs. */
                char d[32];

                format_duration(d, sizeof(d), job->timeout_usec);
                error = -ETIMEDOUT;
                snprintf(message, sizeof(message),
                         "apply command timed out after %s and did not die after SIGKILL", d);
        } else if (job->term_signal == 0 && job->exit_status == 0) {
                /* Success even if the timeout fired just as it exited: the change was made. */
        } else if (job->timed_out) {
                char d[32];

                format_duration(d, sizeof(d), job->timeout_usec);
                error = -ETIMEDOUT;
                snprintf(message, sizeof(message), "apply command timed out after %s", d);
        } else if (job->term_signal != 0) {
                error = -ECHILD;
                snprintf(message, sizeof(message), "apply command was killed by signal %d (%s)%s%s",
                         job->term_signal, strsignal(job->term_signal), tail[0] ? ": " : "", tail);
        } else {
                error = -ECHILD;
                snprintf(message, sizeof(message),
                         "apply command exited with status %" PRId64 "%s%s", job->exit_status,
                         tail[0] ? ": " : "", tail);
        }

        /* Last thing: the callback may free the job. */
        done(job, error, error ? message : NULL, userdata);
}

static void job_on_timer(uv_timer_t *t)
{
        ApplyJob *job = t->data;

        if (job->running && !job->timed_out) {
                job->timed_out = true;
                job_kill(job);
                /* The exit callback follows at once, unless the command cannot die. */
                if (uv_timer_start(&job->timer, job_on_timer, APPLY_KILL_GRACE_MSEC, 0) < 0)
                        log_debug("Cannot bound the wait for the killed apply command, ignoring");
                return;
        }
        if (job->running)
                /* Still there after SIGKILL: give up on it, see the top. */
                uv_unref((uv_handle_t *)&job->process);
        /* Kill or stderr grace period over: whoever holds stderr open, we stop listening. */
        job_finish(job);
}

static void job_on_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
        ApplyJob *job = p->data;

        job->running = false;
        job->exit_status = exit_status;
        job->term_signal = term_signal;
        job_close(job, (uv_handle_t *)&job->process, &job->process_live);

        if (job->finished)
                return;

        /* Nobody is left to read the rest of the input. */
        job_close(job, (uv_handle_t *)&job->stdin_pipe, &job->stdin_live);

        if (!job->stderr_live) {
                job_finish(job);
                return;
        }
        /* The timer (restarted) now bounds the wait for stderr's EOF. */
        if (!job->timer_live ||
            uv_timer_start(&job->timer, job_on_timer, APPLY_STDERR_GRACE_MSEC, 0) < 0)
                job_finish(job);
}

static void job_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        ApplyJob *job = h->data;

        *buf = uv_buf_init(job->read_buf, sizeof(job->read_buf));
}

static void tail_append(ApplyJob *job, const char *data, size_t n)
{
        if (n >= APPLY_STDERR_TAIL_MAX) {
                memcpy(job->tail, data + n - APPLY_STDERR_TAIL_MAX, APPLY_STDERR_TAIL_MAX);
                job->tail_truncated =
                    job->tail_truncated || n > APPLY_STDERR_TAIL_MAX || job->tail_len > 0;
                job->tail_len = APPLY_STDERR_TAIL_MAX;
                return;
        }
        if (job->tail_len + n > APPLY_STDERR_TAIL_MAX) {
                size_t drop = job->tail_len + n - APPLY_STDERR_TAIL_MAX;

                memmove(job->tail, job->tail + drop, job->tail_len - drop);
                job->tail_len -= drop;
                job->tail_truncated = true;
        }
        memcpy(job->tail + job->tail_len, data, n);
        job->tail_len += n;
}

static void job_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
        ApplyJob *job = s->data;

        if (nread > 0) {
                tail_append(job, buf->base, (size_t)nread);
                return;
        }
        if (nread == 0)
                return;
        if (nread != UV_EOF)
                log_debug("Reading the apply command's stderr failed: %s, ignoring",
                          uv_strerror((int)nread));
        job_close(job, (uv_handle_t *)&job->stderr_pipe, &job->stderr_live);
        if (!job->running && !job->finished)
                job_finish(job);
}

static void job_on_written(uv_write_t *req, int status)
{
        ApplyJob *job = req->data;

        /* EPIPE/ECONNRESET: the command did not read all of its input; its exit status decides. */
        if (status < 0 && status != UV_ECANCELED)
                log_debug("The apply command did not take all of its input: %s, ignoring",
                          uv_strerror(status));
        /* Closing our end is the command's EOF. */
        job_close(job, (uv_handle_t *)&job->stdin_pipe, &job->stdin_live);
        free(job->input);
        job->input = NULL;
}

static bool env_is_ours(const char *e)
{
        static const char *const names[] = { "TWIN_DEVICE_ID=", "TWIN_CONFIG_ID=",
                                             "TWIN_DESIRED_VERSION=" };

        for (size_t i = 0; i < ARRAY_SIZE(names); i++)
                if (strncmp(e, names[i], strlen(names[i])) == 0)
                        return true;
        return false;
}

static void env_freep(char ***p)
{
        /* Only the last three entries are ours; the rest is borrowed from environ. */
        if (!*p)
                return;
        for (char **e = *p; *e; e++)
                if (env_is_ours(*e))
                        free(*e);
        free(*p);
}

/* environ without our three variables, then ours. The strings of environ are borrowed. */
static int env_build(const ApplyRequest *req, char ***ret)
{
        __attribute__((cleanup(env_freep))) char **env = NULL;
        size_t n = 0, k = 0;

        for (char **e = environ; e && *e; e++)
                n++;
        env = calloc(n + 4, sizeof(char *));
        if (!env)
                return -ENOMEM;
        for (char **e = environ; e && *e; e++)
                if (!env_is_ours(*e))
                        env[k++] = *e;
        if (asprintf(&env[k], "TWIN_DEVICE_ID=%s", req->device_id) < 0) {
                env[k] = NULL;
                return -ENOMEM;
        }
        k++;
        if (asprintf(&env[k], "TWIN_CONFIG_ID=%s", req->config_id ? req->config_id : "") < 0) {
                env[k] = NULL;
                return -ENOMEM;
        }
        k++;
        if (asprintf(&env[k], "TWIN_DESIRED_VERSION=%" PRId64, req->desired_version) < 0) {
                env[k] = NULL;
                return -ENOMEM;
        }
        *ret = TAKE_PTR(env);
        return 0;
}

int apply_job_start(ApplyJob **ret, uv_loop_t *loop, const ApplyRequest *req, apply_done_fn done,
                    void *userdata)
{
        __attribute__((cleanup(env_freep))) char **env = NULL;
        uv_process_options_t opts = { 0 };
        uv_stdio_container_t stdio[3];
        ApplyJob *job;
        int r;

        if (!ret || !loop || !req || !done || !req->argv || !req->argv[0] || !req->argv[0][0] ||
            !req->device_id || (!req->input && req->input_len > 0))
                return -EINVAL;

        job = calloc(1, sizeof(*job));
        if (!job)
                return -ENOMEM;
        job->done = done;
        job->userdata = userdata;
        job->timeout_usec = req->timeout_usec;
        job->process.data = job->stdin_pipe.data = job->stderr_pipe.data = job->timer.data = job;
        job->write_req.data = job;

        if (req->input_len > 0) {
                job->input = malloc(req->input_len);
                if (!job->input) {
                        free(job);
                        return -ENOMEM;
                }
                memcpy(job->input, req->input, req->input_len);
                job->input_len = req->input_len;
        }

        /* uv_*_init cannot fail for these on Unix; checked anyway. */
        r = uv_pipe_init(loop, &job->stdin_pipe, 0);
        if (r == 0) {
                job->stdin_live = true;
                job->n_open++;
                r = uv_pipe_init(loop, &job->stderr_pipe, 0);
        }
        if (r == 0) {
                job->stderr_live = true;
                job->n_open++;
                r = uv_timer_init(loop, &job->timer);
        }
        if (r == 0) {
                job->timer_live = true;
                job->n_open++;
                r = env_build(req, &env);
        }
        if (r < 0) {
                apply_job_free(job);
                return r;
        }

        stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
        stdio[0].data.stream = (uv_stream_t *)&job->stdin_pipe;
        /* Its output goes where ours goes (the journal under systemd); nowhere if we have none. */
        if (fcntl(STDOUT_FILENO, F_GETFD) >= 0) {
                stdio[1].flags = UV_INHERIT_FD;
                stdio[1].data.fd = STDOUT_FILENO;
        } else
                stdio[1].flags = UV_IGNORE;
        stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
        stdio[2].data.stream = (uv_stream_t *)&job->stderr_pipe;

        opts.exit_cb = job_on_exit;
        opts.file = req->argv[0]; /* libuv searches PATH like execvp() */
        opts.args = (char **)req->argv;
        opts.env = env;
        opts.stdio = stdio;
        opts.stdio_count = ARRAY_SIZE(stdio);
        opts.flags = UV_PROCESS_DETACHED; /* own session and process group, see the top */

        /* uv_spawn initialises the handle even when it fails; it must be closed either way. */
        job->process_live = true;
        job->n_open++;
        r = uv_spawn(loop, &job->process, &opts);
        if (r < 0) {
                apply_job_free(job);
                return r;
        }
        job->running = true;

        r = uv_read_start((uv_stream_t *)&job->stderr_pipe, job_on_alloc, job_on_read);
        if (r < 0) {
                apply_job_free(job);
                return r;
        }

        if (job->timeout_usec > 0) {
                uint64_t msec = job->timeout_usec / 1000 + (job->timeout_usec % 1000 != 0);

                r = uv_timer_start(&job->timer, job_on_timer, msec, 0);
                if (r < 0) {
                        apply_job_free(job);
                        return r;
                }
        }

        if (job->input_len > 0) {
                uv_buf_t buf = { .base = job->input, .len = job->input_len };

                r = uv_write(&job->write_req, (uv_stream_t *)&job->stdin_pipe, &buf, 1,
                             job_on_written);
                if (r < 0) {
                        log_debug("Writing the apply command's input failed: %s, ignoring",
                                  uv_strerror(r));
                        job_close(job, (uv_handle_t *)&job->stdin_pipe, &job->stdin_live);
                }
        } else
                job_close(job, (uv_handle_t *)&job->stdin_pipe, &job->stdin_live);

        *ret = job;
        return 0;
}

ApplyJob *apply_job_free(ApplyJob *job)
{
        if (!job)
                return NULL;

        job->finished = true;
        job->freed = true;
        job_close_stdio_and_timer(job);
        if (job->running)
                /* Keep the process handle until the exit is seen, so libuv reaps the child. */
                job_kill(job);
        else
                job_close(job, (uv_handle_t *)&job->process, &job->process_live);

        if (job->n_open == 0) {
                free(job->input);
                free(job);
        }
        return NULL;
}
