/* SPDX-License-Identifier: MIT */
/* The apply command runner against real commands on a real loop. Every loop is bounded by a
 * guard timer that fails the test and frees the job. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "test-util.h"
#include "twind-apply.h"

#define GUARD_MSEC 10000

static char tmpdir[] = "/tmp/test-apply-XXXXXX";

static bool refuse_sigkill;
static int n_sigkill_refused;

/*
 * Stands in for libc's kill() in this test binary (twind-apply.c calls it directly, libuv through
 * the executable's dynamic symbols): while refuse_sigkill is set a SIGKILL fails with EPERM, as
 * for a process we may not signal, and the process keeps running. That is what a command that
 * "does not die after SIGKILL" looks like to the agent; a process in uninterruptible sleep cannot
 * be made on demand, but it looks the same (no exit after the kill).
 */
int kill(pid_t pid, int sig)
{
        if (refuse_sigkill && sig == SIGKILL) {
                n_sigkill_refused++;
                errno = EPERM;
                return -1;
        }
        return (int)syscall(SYS_kill, pid, sig);
}

typedef struct Result {
        int calls;
        int error;
        bool has_message;
        char message[4096];
        ApplyJob *job;
        uv_timer_t guard;
} Result;

static void on_done(ApplyJob *job, int error, const char *message, void *userdata)
{
        Result *res = userdata;

        res->calls++;
        res->error = error;
        res->has_message = message != NULL;
        if (message)
                snprintf(res->message, sizeof(res->message), "%s", message);
        /* Freeing from inside the callback is allowed. */
        res->job = apply_job_free(job);
        uv_timer_stop(&res->guard);
}

static void on_guard(uv_timer_t *t)
{
        Result *res = t->data;

        fprintf(stderr, "guard timer fired: the apply job did not finish\n");
        test_failures++;
        res->job = apply_job_free(res->job);
}

/* Runs one job to its end; returns what apply_job_start returned. */
static int run_job(const ApplyRequest *req, Result *res)
{
        uv_loop_t loop;
        int r;

        memset(res, 0, sizeof(*res));
        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        uv_timer_init(&loop, &res->guard);
        res->guard.data = res;
        r = apply_job_start(&res->job, &loop, req, on_done, res);
        if (r == 0)
                uv_timer_start(&res->guard, on_guard, GUARD_MSEC, 0);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_close((uv_handle_t *)&res->guard, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        /* Every handle of the job was closed. */
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
        return r;
}

static ApplyRequest request(char *const *argv, const char *input)
{
        return (ApplyRequest){
                .argv = argv,
                .input = input,
                .input_len = input ? strlen(input) : 0,
                .device_id = "dev-1",
                .config_id = "7",
                .desired_version = 42,
                .timeout_usec = 30ULL * 1000000, /* the guard fires first */
        };
}

static char *path_in_tmp(const char *name)
{
        char *p;

        if (asprintf(&p, "%s/%s", tmpdir, name) < 0)
                abort();
        unlink(p);
        return p;
}

static char *read_all(const char *path, size_t *ret_len)
{
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0, len = 0, n;

        if (!f)
                return NULL;
        do {
                if (len + 65536 > size) {
                        size = (len + 65536) * 2;
                        buf = realloc(buf, size + 1);
                        if (!buf)
                                abort();
                }
                n = fread(buf + len, 1, size - len, f);
                len += n;
        } while (n > 0);
        fclose(f);
        buf[len] = '\0';
        if (ret_len)
                *ret_len = len;
        return buf;
}

static pid_t read_pid(const char *path)
{
        char *s = read_all(path, NULL);
        long pid = s ? strtol(s, NULL, 10) : 0;

        free(s);
        return (pid_t)pid;
}

/* Gone, or a zombie waiting for a reaper that is not us (the grandchild's is init). */
static bool process_gone(pid_t pid)
{
        char path[64], *stat, *paren;
        bool gone;

        if (kill(pid, 0) < 0 && errno == ESRCH)
                return true;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        stat = read_all(path, NULL);
        if (!stat)
                return true;
        paren = strrchr(stat, ')');
        gone = paren && paren[1] == ' ' && paren[2] == 'Z';
        free(stat);
        return gone;
}

/* SIGKILL is delivered at once, but dying takes the victim a moment: poll, bounded. */
static bool process_gone_soon(pid_t pid)
{
        for (int i = 0; i < 200; i++) {
                if (process_gone(pid))
                        return true;
                nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
        }
        return false;
}

static char *big_input(size_t len)
{
        char *s = malloc(len + 1);

        if (!s)
                abort();
        for (size_t i = 0; i < len; i++)
                s[i] = (char)('a' + (i * 7 + i / 1000) % 26);
        s[len] = '\0';
        return s;
}

static void test_success_stdin(void)
{
        char *out = path_in_tmp("stdin-copy");
        char *input = big_input(300 * 1024);
        /* "sh", not "/bin/sh": found through PATH. */
        char *const argv[] = { "sh", "-c", "cat > \"$1\"", "sh", out, NULL };
        ApplyRequest req = request(argv, input);
        Result res;
        size_t len = 0;
        char *got;

        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, 0);
        CHECK(!res.has_message);
        got = read_all(out, &len);
        CHECK(got != NULL);
        CHECK_INT_EQ(len, strlen(input));
        CHECK(got && memcmp(got, input, strlen(input)) == 0);
        free(got);
        free(input);
        free(out);
}

static void test_environment(void)
{
        char *out = path_in_tmp("env");
        char *const argv[] = { "/bin/sh",
                               "-c",
                               "printf '%s|%s|%s|%s|%s' \"$TWIN_DEVICE_ID\" \"$TWIN_CONFIG_ID\" "
                               "\"$TWIN_DESIRED_VERSION\" \"$TEST_APPLY_INHERITED\" "
                               "\"$(env | grep -c '^TWIN_DEVICE_ID=')\" > \"$1\"",
                               "sh",
                               out,
                               NULL };
        ApplyRequest req = request(argv, "{}");
        Result res;
        char *got;

        /* A stale value in the agent's environment is replaced, not duplicated. */
        setenv("TWIN_DEVICE_ID", "stale", 1);
        setenv("TEST_APPLY_INHERITED", "inherited", 1);
        req.config_id = "{\"a\":1}";
        req.desired_version = 9000000000LL;
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.error, 0);
        got = read_all(out, NULL);
        CHECK_STR_EQ(got, "dev-1|{\"a\":1}|9000000000|inherited|1");
        free(got);

        /* No configId: empty. */
        req.config_id = "";
        CHECK_INT_EQ(run_job(&req, &res), 0);
        got = read_all(out, NULL);
        CHECK_STR_EQ(got, "dev-1||9000000000|inherited|1");
        free(got);
        unsetenv("TWIN_DEVICE_ID");
        unsetenv("TEST_APPLY_INHERITED");
        free(out);
}

static void test_exit_status(void)
{
        char *const argv[] = { "/bin/sh", "-c",
                               "cat >/dev/null; echo 'first line' >&2; "
                               "printf '  bad\\tthing\\r\\n\\n' >&2; exit 3",
                               NULL };
        ApplyRequest req = request(argv, "{\"x\":1}");
        Result res;

        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, -ECHILD);
        CHECK_STR_EQ(res.message, "apply command exited with status 3: first line bad thing");

        /* No stderr at all: no dangling colon. */
        char *const argv_false[] = { "/bin/false", NULL };
        req = request(argv_false, NULL);
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.error, -ECHILD);
        CHECK_STR_EQ(res.message, "apply command exited with status 1");
}

static void test_stderr_tail(void)
{
        /* 1 MiB of 'x' then "END": only the last APPLY_STDERR_TAIL_MAX bytes are kept. */
        char *const argv[] = { "/bin/sh", "-c",
                               "head -c 1048576 /dev/zero | tr '\\0' x >&2; printf END >&2; "
                               "exit 1",
                               NULL };
        ApplyRequest req = request(argv, NULL);
        char expected[128 + APPLY_STDERR_TAIL_MAX];
        Result res;
        int n;

        n = snprintf(expected, sizeof(expected), "apply command exited with status 1: ");
        memset(expected + n, 'x', APPLY_STDERR_TAIL_MAX - 3);
        strcpy(expected + n + APPLY_STDERR_TAIL_MAX - 3, "END");
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.error, -ECHILD);
        CHECK_STR_EQ(res.message, expected);

        /* Invalid UTF-8 becomes '?', valid multi-byte characters stay. */
        char *const argv_utf8[] = {
                "/bin/sh", "-c",
                "printf 'caf\\303\\251 \\377\\300\\257 \\355\\240\\200 ok' >&2; "
                "exit 2",
                NULL
        };
        req = request(argv_utf8, NULL);
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_STR_EQ(res.message, "apply command exited with status 2: caf\xc3\xa9 ??? ??? ok");
}

static void test_signal(void)
{
        char *const argv[] = { "/bin/sh", "-c", "echo dying >&2; kill -9 $$", NULL };
        ApplyRequest req = request(argv, NULL);
        Result res;

        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, -ECHILD);
        CHECK_STR_EQ(res.message, "apply command was killed by signal 9 (Killed): dying");
}

static void test_timeout(void)
{
        char *shell_pid = path_in_tmp("shell.pid"), *sleep_pid = path_in_tmp("sleep.pid");
        /* The backgrounded sleep is a grandchild holding stderr open: killed with the group. */
        char *const argv[] = {
                "/bin/sh", "-c",      "echo $$ > \"$1\"; sleep 30 & echo $! > \"$2\"; wait",
                "sh",      shell_pid, sleep_pid,
                NULL
        };
        ApplyRequest req = request(argv, NULL);
        Result res;
        pid_t p1, p2;

        req.timeout_usec = 200 * 1000;
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, -ETIMEDOUT);
        CHECK_STR_EQ(res.message, "apply command timed out after 200 ms");
        p1 = read_pid(shell_pid);
        p2 = read_pid(sleep_pid);
        CHECK(p1 > 0);
        CHECK(p2 > 0);
        if (p1 > 0)
                CHECK(process_gone_soon(p1));
        if (p2 > 0)
                CHECK(process_gone_soon(p2));

        char *const argv_sleep[] = { "sleep", "30", NULL };
        req = request(argv_sleep, NULL);
        req.timeout_usec = 1500 * 1000;
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.error, -ETIMEDOUT);
        CHECK_STR_EQ(res.message, "apply command timed out after 1.5 s");
        free(shell_pid);
        free(sleep_pid);
}

static void noop_timer(uv_timer_t *t)
{
}

/* Without the real kill the loop would wait for the unkillable command forever. */
static void on_guard_kill_for_real(uv_timer_t *t)
{
        refuse_sigkill = false;
        on_guard(t);
}

/* A command that survives the timeout's SIGKILL: the job still ends, 5 s after the kill, with
 * its own message, and the command is reaped once it does die. */
static void test_does_not_die(void)
{
        char *pidfile = path_in_tmp("undying.pid");
        char *const argv[] = { "/bin/sh", "-c",    "echo $$ > \"$1\"; exec sleep 30",
                               "sh",      pidfile, NULL };
        ApplyRequest req = request(argv, NULL);
        Result res;
        uv_loop_t loop;
        pid_t pid;

        memset(&res, 0, sizeof(res));
        req.timeout_usec = 200 * 1000;
        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        uv_timer_init(&loop, &res.guard);
        res.guard.data = &res;
        refuse_sigkill = true;
        n_sigkill_refused = 0;
        CHECK_INT_EQ(apply_job_start(&res.job, &loop, &req, on_done, &res), 0);
        uv_timer_start(&res.guard, on_guard_kill_for_real, GUARD_MSEC, 0);
        /* Returns after the callback: the process handle left behind no longer holds the loop. */
        uv_run(&loop, UV_RUN_DEFAULT);
        refuse_sigkill = false;

        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, -ETIMEDOUT);
        CHECK_STR_EQ(res.message,
                     "apply command timed out after 200 ms and did not die after SIGKILL");
        CHECK(n_sigkill_refused > 0);
        pid = read_pid(pidfile);
        CHECK(pid > 0);
        /* The message is true: the command was still there when the job gave up on it. */
        if (pid > 0)
                CHECK(!process_gone(pid));

        /* Now it dies: libuv reaps it and the job's last handle closes. The loop only polls
         * while a referenced handle is active, as the agent's always has one: the guard again,
         * ticking, until the command is reaped (bounded). */
        if (pid > 0)
                kill(-pid, SIGKILL);
        uv_timer_start(&res.guard, noop_timer, 10, 10);
        for (int i = 0; i < 500 && pid > 0 && !(kill(pid, 0) < 0 && errno == ESRCH); i++)
                uv_run(&loop, UV_RUN_ONCE);
        /* Our own child: reaped by libuv, so really gone, not a zombie. */
        if (pid > 0)
                CHECK(kill(pid, 0) < 0 && errno == ESRCH);
        uv_close((uv_handle_t *)&res.guard, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        /* Every handle of the job was closed, the process handle too. */
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
        free(pidfile);
}

static void test_grandchild_holds_stderr(void)
{
        char *pidfile = path_in_tmp("holder.pid");
        /* Exits 0 at once but leaves a process holding stderr open far longer than the guard. */
        char *const argv[] = { "/bin/sh", "-c",    "sleep 60 & echo $! > \"$1\"; exit 0",
                               "sh",      pidfile, NULL };
        ApplyRequest req = request(argv, NULL);
        Result res;
        pid_t p;

        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, 0);
        /* A normal exit does not kill what the command left behind; clean up ourselves. */
        p = read_pid(pidfile);
        CHECK(p > 0);
        if (p > 0) {
                CHECK(!process_gone(p));
                kill(p, SIGKILL);
        }
        free(pidfile);
}

static void test_not_found(void)
{
        char *const argv_abs[] = { "/nonexistent/twind-test-command", NULL };
        char *const argv_path[] = { "twind-test-no-such-command", NULL };
        ApplyRequest req = request(argv_abs, "{}");
        Result res;

        CHECK_INT_EQ(run_job(&req, &res), -ENOENT);
        CHECK_INT_EQ(res.calls, 0);
        req = request(argv_path, "{}");
        CHECK_INT_EQ(run_job(&req, &res), -ENOENT);
        CHECK_INT_EQ(res.calls, 0);

        char *const argv_empty[] = { "", NULL };
        req = request(argv_empty, "{}");
        CHECK_INT_EQ(run_job(&req, &res), -EINVAL);
        CHECK_INT_EQ(res.calls, 0);
}

static void test_input_not_read(void)
{
        char *input = big_input(1024 * 1024);
        char *const argv_close[] = { "/bin/sh", "-c", "exec 0<&-; sleep 0.2; exit 0", NULL };
        char *const argv_exit[] = { "/bin/true", NULL };
        ApplyRequest req = request(argv_close, input);
        Result res;

        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, 0);

        req = request(argv_exit, input);
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.calls, 1);
        CHECK_INT_EQ(res.error, 0);

        /* Its exit status still decides. */
        char *const argv_fail[] = { "/bin/sh", "-c", "head -c 10 >/dev/null; exit 4", NULL };
        req = request(argv_fail, input);
        CHECK_INT_EQ(run_job(&req, &res), 0);
        CHECK_INT_EQ(res.error, -ECHILD);
        CHECK_STR_EQ(res.message, "apply command exited with status 4");
        free(input);
}

typedef struct FreeCtx {
        Result res;
        const char *pidfile;
        pid_t pid;
        uv_timer_t poll;
} FreeCtx;

static void on_poll(uv_timer_t *t)
{
        FreeCtx *ctx = t->data;

        ctx->pid = read_pid(ctx->pidfile);
        if (ctx->pid <= 0)
                return;
        ctx->res.job = apply_job_free(ctx->res.job);
        uv_timer_stop(&ctx->poll);
        uv_timer_stop(&ctx->res.guard);
}

static void test_free_while_running(void)
{
        char *pidfile = path_in_tmp("free.pid");
        char *const argv[] = { "/bin/sh", "-c",    "echo $$ > \"$1\"; exec sleep 30",
                               "sh",      pidfile, NULL };
        ApplyRequest req = request(argv, "{}");
        FreeCtx ctx = { .pidfile = pidfile };
        uv_loop_t loop;

        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        uv_timer_init(&loop, &ctx.res.guard);
        ctx.res.guard.data = &ctx.res;
        uv_timer_init(&loop, &ctx.poll);
        ctx.poll.data = &ctx;
        CHECK_INT_EQ(apply_job_start(&ctx.res.job, &loop, &req, on_done, &ctx.res), 0);
        uv_timer_start(&ctx.res.guard, on_guard, GUARD_MSEC, 0);
        uv_timer_start(&ctx.poll, on_poll, 20, 20);
        /* Returns once the job's handles are closed, which waits for the killed child. */
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_close((uv_handle_t *)&ctx.res.guard, NULL);
        uv_close((uv_handle_t *)&ctx.poll, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK_INT_EQ(uv_loop_close(&loop), 0);

        CHECK_INT_EQ(ctx.res.calls, 0);
        CHECK(ctx.pid > 0);
        /* Our own child: libuv reaped it, so it is really gone, not a zombie. */
        if (ctx.pid > 0)
                CHECK(kill(ctx.pid, 0) < 0 && errno == ESRCH);
        free(pidfile);
}

int main(void)
{
        char *cmd;

        /* As in the agent's main(): a command closing stdin must not kill us. */
        signal(SIGPIPE, SIG_IGN);
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }

        test_success_stdin();
        test_environment();
        test_exit_status();
        test_stderr_tail();
        test_signal();
        test_timeout();
        test_does_not_die();
        test_grandchild_holds_stderr();
        test_not_found();
        test_input_not_read();
        test_free_while_running();

        if (asprintf(&cmd, "rm -rf '%s'", tmpdir) >= 0) {
                if (system(cmd) != 0)
                        fprintf(stderr, "could not remove %s\n", tmpdir);
                free(cmd);
        }
        return test_exit("test-apply");
}
