/* SPDX-License-Identifier: MIT */
#pragma once

/* One real twind for the benchmark: its directory, config, process and control socket. */

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct Agent {
        pid_t pid;
        char id[64];
        char dir[PATH_MAX - 64];
        char conf[PATH_MAX];
        char control[PATH_MAX];
        char log[PATH_MAX];
} Agent;

/* Creates parent/id/ with a twind.conf for device id on 127.0.0.1:port; apply_command may be
 * NULL. 0 or negative errno. */
int agent_prepare(Agent *a, const char *parent, const char *id, int port,
                  const char *apply_command);

/* Starts twind -c conf, stderr to dir/twind.log, NOTIFY_SOCKET set when notify_socket is not
 * NULL; *ret_start_ns (may be NULL) is the time just before the fork. 0 or negative errno. */
int agent_spawn(Agent *a, const char *twind, const char *notify_socket, uint64_t *ret_start_ns);

/* Sends SIGTERM without waiting (a fleet stops all at once, then reaps). */
void agent_kill(Agent *a);

/* Reaps the agent, SIGKILL after timeout_ms. */
void agent_reap(Agent *a, int timeout_ms);

/* Asks the control socket for status and returns counters.applies. 0 or negative errno. */
int agent_applies(const Agent *a, long *ret);

/* Binds a datagram socket at path for NOTIFY_SOCKET. fd or negative errno. */
int notify_socket_new(const char *path);

/* Waits for a datagram containing READY=1; *ret_ns is when it arrived. 0 or negative errno. */
int notify_wait_ready(int fd, int timeout_ms, uint64_t *ret_ns);
