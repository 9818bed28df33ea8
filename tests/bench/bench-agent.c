/* SPDX-License-Identifier: MIT */
#include "bench-agent.h"
#include "bench-broker.h"
#include "bench-util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

int agent_prepare(Agent *a, const char *parent, const char *id, int port, const char *apply_command)
{
        char conf[4096 + 3 * PATH_MAX];

        memset(a, 0, sizeof(*a));
        snprintf(a->id, sizeof(a->id), "%s", id);
        snprintf(a->dir, sizeof(a->dir), "%s/%s", parent, id);
        snprintf(a->conf, sizeof(a->conf), "%s/twind.conf", a->dir);
        snprintf(a->control, sizeof(a->control), "%s/control.sock", a->dir);
        snprintf(a->log, sizeof(a->log), "%s/twind.log", a->dir);
        if (mkdir(a->dir, 0755) < 0 && errno != EEXIST)
                return -errno;
        snprintf(conf, sizeof(conf),
                 "[broker]\nurl = mqtt://127.0.0.1:%d\nkeepalive = 60\n"
                 "[device]\nid = %s\n"
                 "[apply]\n%s%s%stimeout = 10\n"
                 "[state]\ndirectory = %s\n"
                 "[control]\nsocket = %s\n",
                 port, id, apply_command ? "command = " : "", apply_command ? apply_command : "",
                 apply_command ? "\n" : "", a->dir, a->control);
        return write_file(a->conf, conf, 0644);
}

int agent_spawn(Agent *a, const char *twind, const char *notify_socket, uint64_t *ret_start_ns)
{
        uint64_t start;
        pid_t pid;

        start = now_ns();
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int fd;

                prctl(PR_SET_PDEATHSIG, SIGTERM);
                fd = open(a->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd >= 0) {
                        dup2(fd, STDERR_FILENO);
                        dup2(fd, STDOUT_FILENO);
                }
                fd = open("/dev/null", O_RDONLY);
                if (fd >= 0)
                        dup2(fd, STDIN_FILENO);
                /* Nothing of ours (the service's broker connection) leaks into the agent. */
                close_range(3, ~0u, 0);
                if (notify_socket)
                        setenv("NOTIFY_SOCKET", notify_socket, 1);
                else
                        unsetenv("NOTIFY_SOCKET");
                unsetenv("JOURNAL_STREAM");
                unsetenv("LISTEN_FDS");
                unsetenv("WATCHDOG_USEC");
                execl(twind, twind, "-c", a->conf, (char *)NULL);
                _exit(127);
        }
        a->pid = pid;
        if (ret_start_ns)
                *ret_start_ns = start;
        return 0;
}

void agent_kill(Agent *a)
{
        if (a->pid > 0)
                kill(a->pid, SIGTERM);
}

void agent_reap(Agent *a, int timeout_ms)
{
        process_stop(a->pid, timeout_ms);
        a->pid = 0;
}

int agent_applies(const Agent *a, long *ret)
{
        static const char req[] = "{\"method\": \"status\", \"id\": 1, \"version\": 1}\n";
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        char buf[65536];
        size_t len = 0;
        json_t *doc, *applies;
        int fd, r = 0;

        if (strlen(a->control) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, a->control);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
                r = -errno;
                close(fd);
                return r;
        }
        while (len < sizeof(buf) - 1 && !memchr(buf, '\n', len)) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (poll(&p, 1, 5000) <= 0) {
                        close(fd);
                        return -ETIMEDOUT;
                }
                n = read(fd, buf + len, sizeof(buf) - 1 - len);
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        close(fd);
        doc = json_loadb(buf, len, JSON_DISABLE_EOF_CHECK, NULL);
        applies =
            json_object_get(json_object_get(json_object_get(doc, "result"), "counters"), "applies");
        if (json_is_integer(applies))
                *ret = (long)json_integer_value(applies);
        else
                r = -EBADMSG;
        json_decref(doc);
        return r;
}

int notify_socket_new(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        return fd;
}

int notify_wait_ready(int fd, int timeout_ms, uint64_t *ret_ns)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;

        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                char buf[4096];
                uint64_t now = now_ns();
                ssize_t n;

                if (now >= deadline)
                        return -ETIMEDOUT;
                if (poll(&p, 1, (int)((deadline - now) / 1000000u) + 1) < 0 && errno != EINTR)
                        return -errno;
                while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) >= 0) {
                        buf[n] = 0;
                        /* One datagram may carry several assignments, one per line. */
                        if (strncmp(buf, "READY=1", 7) == 0 || strstr(buf, "\nREADY=1")) {
                                *ret_ns = now_ns();
                                return 0;
                        }
                }
        }
}
