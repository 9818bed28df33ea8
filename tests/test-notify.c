/* SPDX-License-Identifier: MIT */
/* systemd notification against a fake NOTIFY_SOCKET: what arrives, in which order, and the
 * watchdog pings from the loop. Each loop runs for a fixed, short time. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "test-util.h"
#include "twind-notify.h"

#define MAX_MSGS 256

static char tmpdir[] = "/tmp/test-notify-XXXXXX";

typedef struct Receiver {
        int fd;
        uv_poll_t poll;
        char *msgs[MAX_MSGS];
        size_t n_msgs;
} Receiver;

static int receiver_open(Receiver *rcv, const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        memset(rcv, 0, sizeof(*rcv));
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        rcv->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (rcv->fd < 0)
                return -errno;
        if (bind(rcv->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                return -errno;
        return 0;
}

/* Drained as they come: a full datagram queue would block sd_notify(). */
static void on_readable(uv_poll_t *p, int status, int events)
{
        Receiver *rcv = p->data;
        char buf[4096];
        ssize_t n;

        while ((n = recv(rcv->fd, buf, sizeof(buf) - 1, 0)) >= 0) {
                buf[n] = '\0';
                if (rcv->n_msgs < MAX_MSGS)
                        rcv->msgs[rcv->n_msgs++] = strdup(buf);
        }
}

static void receiver_close(Receiver *rcv)
{
        for (size_t i = 0; i < rcv->n_msgs; i++)
                free(rcv->msgs[i]);
        close(rcv->fd);
}

static size_t count(const Receiver *rcv, const char *msg)
{
        size_t c = 0;

        for (size_t i = 0; i < rcv->n_msgs; i++)
                c += strcmp(rcv->msgs[i], msg) == 0;
        return c;
}

static void on_stop(uv_timer_t *t)
{
        Receiver *rcv = t->data;

        uv_poll_stop(&rcv->poll);
        uv_stop(t->loop);
}

/* Runs the loop for msec while draining the socket, then frees the notifier and checks that
 * every handle is closed. */
static void run_for(uv_loop_t *loop, Receiver *rcv, Notifier *n, uint64_t msec)
{
        uv_timer_t stop;

        uv_poll_init(loop, &rcv->poll, rcv->fd);
        rcv->poll.data = rcv;
        uv_poll_start(&rcv->poll, UV_READABLE, on_readable);
        uv_timer_init(loop, &stop);
        stop.data = rcv;
        uv_timer_start(&stop, on_stop, msec, 0);
        uv_run(loop, UV_RUN_DEFAULT);
        /* What is still queued. */
        on_readable(&rcv->poll, 0, UV_READABLE);

        notifier_free(n);
        uv_close((uv_handle_t *)&rcv->poll, NULL);
        uv_close((uv_handle_t *)&stop, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        CHECK_INT_EQ(uv_loop_close(loop), 0);
}

static void set_env(const char *sock, const char *usec, long pid)
{
        char buf[32];

        setenv("NOTIFY_SOCKET", sock, 1);
        setenv("WATCHDOG_USEC", usec, 1);
        snprintf(buf, sizeof(buf), "%ld", pid);
        setenv("WATCHDOG_PID", buf, 1);
}

static void test_messages_and_watchdog(const char *sock)
{
        char long_status[2048], *status_msg = NULL;
        Receiver rcv;
        Notifier *n = NULL;
        uv_loop_t loop;
        size_t pings, k = 0;
        static const char *const expected_prefix[] = {
                "READY=1", "STATUS=x",  "STATUS=a b", "STATUS=", "RELOADING=1\nMONOTONIC_USEC=",
                "READY=1", "STOPPING=1"
        };

        CHECK_INT_EQ(receiver_open(&rcv, sock), 0);
        set_env(sock, "200000", (long)getpid());
        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        CHECK_INT_EQ(notifier_new(&n, &loop), 0);
        CHECK(n != NULL);
        /* The watchdog timer does not keep the loop alive. */
        CHECK(!uv_loop_alive(&loop));

        /* 1000 × "é": cut to whole characters, well below systemd's limits. */
        for (size_t i = 0; i + 2 < sizeof(long_status); i += 2)
                memcpy(long_status + i, "\xc3\xa9", 2);
        long_status[sizeof(long_status) - 2] = '\0';

        notifier_ready(n);
        notifier_status(n, "x");
        notifier_status(n, "a\nb");
        notifier_status(n, long_status);
        notifier_reloading(n);
        notifier_ready(n);
        notifier_stopping(n);
        run_for(&loop, &rcv, n, 1000);

        /* The non-watchdog messages, in the order they were sent. */
        for (size_t i = 0; i < rcv.n_msgs; i++) {
                if (strcmp(rcv.msgs[i], "WATCHDOG=1") == 0)
                        continue;
                if (k < ARRAY_SIZE(expected_prefix)) {
                        const char *e = expected_prefix[k];

                        if (strncmp(rcv.msgs[i], e, strlen(e)) != 0) {
                                fprintf(stderr, "message %zu is \"%s\", expected \"%s...\"\n", k,
                                        rcv.msgs[i], e);
                                test_failures++;
                        }
                        if (k == 3)
                                status_msg = rcv.msgs[i];
                }
                k++;
        }
        CHECK_INT_EQ(k, ARRAY_SIZE(expected_prefix));
        CHECK(status_msg != NULL);
        if (status_msg) {
                size_t l = strlen(status_msg + strlen("STATUS="));

                /* Shortened, and only whole two-byte characters. */
                CHECK(l > 0 && l < strlen(long_status));
                CHECK_INT_EQ(l % 2, 0);
                CHECK(strncmp(status_msg + strlen("STATUS="), long_status, l) == 0);
        }
        CHECK_INT_EQ(count(&rcv, "STATUS=x"), 1);

        /* 100 ms pings over about 1 s: a count, generous both ways. */
        pings = count(&rcv, "WATCHDOG=1");
        if (pings < 3 || pings > 15) {
                fprintf(stderr, "%zu watchdog pings in 1 s, expected about 10\n", pings);
                test_failures++;
        }
        receiver_close(&rcv);
        unlink(sock);
}

static void test_watchdog_for_another_process(const char *sock)
{
        Receiver rcv;
        Notifier *n = NULL;
        uv_loop_t loop;

        /* systemd set the watchdog up for some other process (our parent): not ours to ping. */
        CHECK_INT_EQ(receiver_open(&rcv, sock), 0);
        set_env(sock, "100000", (long)getppid());
        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        CHECK_INT_EQ(notifier_new(&n, &loop), 0);
        notifier_ready(n);
        run_for(&loop, &rcv, n, 400);
        CHECK_INT_EQ(rcv.n_msgs, 1);
        CHECK_INT_EQ(count(&rcv, "READY=1"), 1);
        CHECK_INT_EQ(count(&rcv, "WATCHDOG=1"), 0);
        receiver_close(&rcv);
        unlink(sock);
}

static void test_not_under_systemd(void)
{
        Notifier *n = NULL;
        uv_loop_t loop;

        unsetenv("NOTIFY_SOCKET");
        unsetenv("WATCHDOG_USEC");
        unsetenv("WATCHDOG_PID");
        CHECK_INT_EQ(uv_loop_init(&loop), 0);
        CHECK_INT_EQ(notifier_new(&n, &loop), 0);
        notifier_ready(n);
        notifier_status(n, "nobody listens");
        notifier_reloading(n);
        notifier_stopping(n);
        /* NULL is accepted everywhere. */
        notifier_ready(NULL);
        notifier_status(NULL, "x");
        CHECK(notifier_free(n) == NULL);
        CHECK(notifier_free(NULL) == NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK_INT_EQ(uv_loop_close(&loop), 0);
}

int main(void)
{
        char sock[sizeof(tmpdir) + 16];

        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }
        snprintf(sock, sizeof(sock), "%s/notify", tmpdir);

        test_messages_and_watchdog(sock);
        test_watchdog_for_another_process(sock);
        test_not_under_systemd();

        rmdir(tmpdir);
        return test_exit("test-notify");
}
