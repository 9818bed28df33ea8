/* SPDX-License-Identifier: MIT */
#pragma once

/* The service side of the benchmark: publishes desired documents and watches reported and
 * connection documents of a group of devices named "<prefix>-<index>". */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What the service has seen of a group of devices. */
typedef struct Tracker {
        const char *prefix;
        size_t n;
        int64_t target;           /* the desired $version every device should answer */
        int64_t *success_version; /* per device: desiredVersion of the newest success seen */
        uint64_t *success_ns;     /* per device: when that success arrived (now_ns) */
        bool *online;             /* per device: a connection document "online" seen */
        size_t n_at_target;       /* devices whose success answers target or newer */
        size_t n_online;
        size_t n_pending, n_success, n_failed; /* reports seen, by $status.state */
} Tracker;

/* Allocates a tracker for n devices; NULL on out of memory. */
Tracker *tracker_new(const char *prefix, size_t n);
Tracker *tracker_free(Tracker *t);

/* Sets the version to wait for, and counts again which devices already answered it. */
void tracker_set_target(Tracker *t, int64_t target);

typedef struct BenchClient BenchClient;

/* Connects a client to 127.0.0.1:port (TCP_NODELAY) and subscribes to every reported and
 * connection document. 0 or negative errno. */
int bench_client_new(BenchClient **ret, int port);
BenchClient *bench_client_free(BenchClient *c);

/* Messages for the tracker's devices update it from now on; NULL stops tracking. */
void bench_client_track(BenchClient *c, Tracker *t);

/* Also drains this datagram socket while waiting (an agent's NOTIFY_SOCKET, so that a full
 * queue never blocks the agent); -1 for none. */
void bench_client_set_drain_fd(BenchClient *c, int fd);

/* Publishes {"$version": v, "configId": v, "sendFrequency": "5m"} retained, QoS 1, to the
 * device's desired topic. 0 or negative errno. */
int bench_client_publish_desired(BenchClient *c, const char *device, int64_t version);

/* Runs the client until *counter >= want or timeout_ms passed: 0 or -ETIMEDOUT (or another
 * negative errno when the connection broke). counter NULL: just runs for timeout_ms. */
int bench_client_wait(BenchClient *c, const size_t *counter, size_t want, int timeout_ms);
