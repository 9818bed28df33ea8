/* SPDX-License-Identifier: MIT */
#include "bench-broker.h"
#include "bench-util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int free_port(void)
{
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(sa);
        int fd, port = -1;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
                port = ntohs(sa.sin_port);
        close(fd);
        return port > 0 ? port : -EADDRNOTAVAIL;
}

static int try_connect(int port)
{
        struct sockaddr_in sa = { .sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                  .sin_port = htons((uint16_t)port) };
        int fd, r;

        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
        close(fd);
        return r;
}

void process_stop(pid_t pid, int timeout_ms)
{
        uint64_t deadline;

        if (pid <= 0)
                return;
        kill(pid, SIGTERM);
        deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        while (now_ns() < deadline) {
                if (waitpid(pid, NULL, WNOHANG) == pid)
                        return;
                usleep(2000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
}

int broker_start(Broker *b, const char *mosquitto, const char *dir, long max_queued)
{
        char conf[4096], path[4096], log[4096];
        uint64_t deadline;
        int port, r;
        pid_t pid;

        port = free_port();
        if (port < 0)
                return port;
        /* The queue limits are raised so that a burst or a fleet never loses a message at the
         * broker: we measure the agent, not mosquitto's default of 1000 queued messages. */
        snprintf(conf, sizeof(conf),
                 "listener %d 127.0.0.1\n"
                 "allow_anonymous true\n"
                 "set_tcp_nodelay true\n"
                 "persistence false\n"
                 "max_queued_messages %ld\n"
                 "log_type error\n"
                 "log_type warning\n",
                 port, max_queued);
        snprintf(path, sizeof(path), "%s/mosquitto.conf", dir);
        r = write_file(path, conf, 0644);
        if (r < 0)
                return r;
        snprintf(log, sizeof(log), "%s/mosquitto.log", dir);

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                struct rlimit rl;
                int fd;

                /* A fleet of 1000 agents needs more than the usual 1024 descriptors. */
                if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                        rl.rlim_cur = rl.rlim_max;
                        setrlimit(RLIMIT_NOFILE, &rl);
                }
                fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
                if (fd >= 0) {
                        dup2(fd, STDOUT_FILENO);
                        dup2(fd, STDERR_FILENO);
                }
                execlp(mosquitto, mosquitto, "-c", path, (char *)NULL);
                _exit(127);
        }

        deadline = now_ns() + 10ull * 1000000000u;
        while (now_ns() < deadline) {
                if (try_connect(port) == 0) {
                        b->pid = pid;
                        b->port = port;
                        return 0;
                }
                if (waitpid(pid, NULL, WNOHANG) == pid) {
                        fprintf(stderr, "mosquitto exited at start, see %s\n", log);
                        return -ECHILD;
                }
                usleep(5000);
        }
        process_stop(pid, 1000);
        return -ETIMEDOUT;
}

void broker_stop(Broker *b)
{
        process_stop(b->pid, 5000);
        b->pid = 0;
}
