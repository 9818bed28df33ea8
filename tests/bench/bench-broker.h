/* SPDX-License-Identifier: MIT */
#pragma once

/* A private mosquitto on a free loopback port, for the benchmark. */

#include <sys/types.h>

typedef struct Broker {
        pid_t pid;
        int port;
} Broker;

/* Starts `mosquitto` (path or name on PATH) with a config written into dir, and waits until it
 * accepts connections. max_queued is its max_queued_messages (0: no limit). 0 or negative
 * errno. */
int broker_start(Broker *b, const char *mosquitto, const char *dir, long max_queued);

/* Stops the broker (SIGTERM, then SIGKILL after 5 s) and reaps it. */
void broker_stop(Broker *b);

/* Stops pid with SIGTERM, waits up to timeout_ms, then SIGKILLs; reaps it. */
void process_stop(pid_t pid, int timeout_ms);
