/* SPDX-License-Identifier: MIT */
/*
 * twin-bench: convergence latency of twind against the physical floor, burst coalescing, fleet
 * scale, footprint and idle cost, all in one run against one private mosquitto on loopback.
 * See docs/performance.md for the command and the figures.
 */
#include "bench-agent.h"
#include "bench-broker.h"
#include "bench-client.h"
#include "bench-echo.h"
#include "bench-fleetsim.h"
#include "bench-util.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
        SECTION_FLOOR = 1 << 0,
        SECTION_TWIND = 1 << 1,
        SECTION_BURST = 1 << 2,
        SECTION_FLEET = 1 << 3,
        SECTION_FOOTPRINT = 1 << 4,
        SECTION_ALL = (1 << 5) - 1,
        SECTION_SCALE = 1 << 5, /* only on request: --only scale */
};

static const struct {
        const char *name;
        unsigned bit;
} section_names[] = {
        { "floor", SECTION_FLOOR }, { "twind", SECTION_TWIND },         { "burst", SECTION_BURST },
        { "fleet", SECTION_FLEET }, { "footprint", SECTION_FOOTPRINT }, { "scale", SECTION_SCALE },
};

typedef struct Options {
        const char *twind;
        const char *mosquitto;
        const char *tmpdir;
        const char *fleet_apply;
        const char *twinctl;
        unsigned sections;
        size_t updates, warmup, burst, devices, ready_runs, twins, scale_agents;
        int idle_settle_s, idle_window_s;
        bool markdown, keep;
} Options;

typedef struct Row {
        char section[16], measure[80], value[48], target[40], met[16];
} Row;

typedef struct Bench {
        Options o;
        char dir[256];
        Broker broker;
        BenchClient *client;
        Row rows[128];
        size_t n_rows;
} Bench;

static void row_add(Bench *b, const char *section, const char *measure, const char *target,
                    const char *met, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void row_add(Bench *b, const char *section, const char *measure, const char *target,
                    const char *met, const char *fmt, ...)
{
        Row *r;
        va_list ap;

        if (b->n_rows >= sizeof(b->rows) / sizeof(b->rows[0]))
                return;
        r = &b->rows[b->n_rows++];
        snprintf(r->section, sizeof(r->section), "%s", section);
        snprintf(r->measure, sizeof(r->measure), "%s", measure);
        snprintf(r->target, sizeof(r->target), "%s", target ? target : "");
        snprintf(r->met, sizeof(r->met), "%s", met ? met : "");
        va_start(ap, fmt);
        vsnprintf(r->value, sizeof(r->value), fmt, ap);
        va_end(ap);
        if (!b->o.markdown) /* progress while the run goes on */
                fprintf(stderr, "  %-10s %-48s %s\n", section, measure, r->value);
}

static const char *verdict(bool met)
{
        return met ? "yes" : "NO";
}

static void row_percentiles(Bench *b, const char *section, const char *what, const Percentiles *p)
{
        char m[80];

        snprintf(m, sizeof(m), "%s p50 / p90 / p99 (n=%zu)", what, p->n);
        row_add(b, section, m, NULL, NULL, "%.3f / %.3f / %.3f ms", p->p50, p->p90, p->p99);
}

/* Waits until the tracker's devices all said "online". */
static int wait_online(Bench *b, Tracker *t, int timeout_ms)
{
        int r;

        r = bench_client_wait(b->client, &t->n_online, t->n, timeout_ms);
        if (r < 0)
                fprintf(stderr, "%s: only %zu of %zu devices came online: %s\n", t->prefix,
                        t->n_online, t->n, strerror(-r));
        return r;
}

/* One device, sequential updates: desired publish -> success report for that version. */
static int measure_one(Bench *b, Tracker *t, int64_t *version, uint64_t *ret_ns)
{
        char device[96];
        uint64_t t0;
        int r;

        snprintf(device, sizeof(device), "%s-0", t->prefix);
        bench_client_track(b->client, t);
        tracker_set_target(t, ++*version);
        t0 = now_ns();
        r = bench_client_publish_desired(b->client, device, *version);
        if (r == 0)
                r = bench_client_wait(b->client, &t->n_at_target, 1, 10000);
        if (r < 0) {
                fprintf(stderr, "%s: no success for version %" PRId64 ": %s\n", device, *version,
                        strerror(-r));
                return r;
        }
        *ret_ns = t->success_ns[0] - t0;
        return 0;
}

/* A device of the latency series: an echo device (the floor) or a real twind. */
typedef struct LatencyDevice {
        const char *prefix, *section, *label;
        bool twind;
        enum echo_save save; /* echo devices */
        const char *apply;   /* twind: apply command or NULL */
        Tracker *t;
        pid_t echo_pid;
        Agent agent;
        int64_t version;
        uint64_t *samples;
        Percentiles p;
} LatencyDevice;

static int latency_device_start(Bench *b, LatencyDevice *d)
{
        char id[96];
        int r;

        d->t = tracker_new(d->prefix, 1);
        d->samples = calloc(b->o.updates, sizeof(*d->samples));
        if (!d->t || !d->samples)
                return -ENOMEM;
        snprintf(id, sizeof(id), "%s-0", d->prefix);
        if (!d->twind) {
                char dir[512];

                snprintf(dir, sizeof(dir), "%s/%s", b->dir, id);
                if (mkdir(dir, 0755) < 0)
                        return -errno;
                fflush(NULL);
                d->echo_pid = echo_device_spawn(b->broker.port, id, d->save, dir);
                /* Its desired document is retained: the device answers it once subscribed, so
                 * the first (warm-up) update also waits for the echo device to be up. */
                return d->echo_pid < 0 ? d->echo_pid : 0;
        }
        r = agent_prepare(&d->agent, b->dir, id, b->broker.port, d->apply);
        if (r >= 0)
                r = agent_spawn(&d->agent, b->o.twind, NULL, NULL);
        if (r >= 0) {
                bench_client_track(b->client, d->t);
                r = wait_online(b, d->t, 10000);
        }
        if (r < 0)
                fprintf(stderr, "Failed to start twind for %s (see %s): %s\n", id, d->agent.log,
                        strerror(-r));
        return r;
}

static void latency_device_stop(LatencyDevice *d)
{
        if (d->echo_pid > 0)
                process_stop(d->echo_pid, 2000);
        if (d->agent.pid > 0)
                agent_reap(&d->agent, 5000);
        tracker_free(d->t);
        free(d->samples);
}

/*
 * The floor and twind, interleaved: every round sends one update to each device in turn, so
 * that all series see the same disk and scheduler conditions (a virtual disk's fsync latency
 * drifts over minutes; series measured one after another would compare different weather).
 */
static int section_latency(Bench *b)
{
        LatencyDevice devs[] = {
                { .prefix = "floor", .section = "floor", .label = "echo device, no write" },
                { .prefix = "floorfsync",
                  .section = "floor",
                  .label = "echo device, fsync'd write",
                  .save = ECHO_SAVE_FSYNC },
                { .prefix = "flooratomic",
                  .section = "floor",
                  .label = "echo device, atomic save as twind does",
                  .save = ECHO_SAVE_ATOMIC },
                { .prefix = "floorinplace",
                  .section = "floor",
                  .label = "echo device, pwrite + fdatasync in place",
                  .save = ECHO_SAVE_INPLACE },
                { .prefix = "twindnocmd",
                  .section = "twind",
                  .label = "twind, no apply command",
                  .twind = true },
                { .prefix = "twindtrue",
                  .section = "twind",
                  .label = "twind, apply /bin/true",
                  .twind = true,
                  .apply = "/bin/true" },
        };
        const size_t n_devs = sizeof(devs) / sizeof(devs[0]);
        bool use[sizeof(devs) / sizeof(devs[0])];
        const Percentiles *floor_fsync = NULL;
        int r = 0;

        for (size_t j = 0; j < n_devs; j++)
                /* The fsync'd floor is measured with twind too: the ratios need it. */
                use[j] = (devs[j].twind && (b->o.sections & SECTION_TWIND)) ||
                         (!devs[j].twind && (b->o.sections & SECTION_FLOOR)) ||
                         (devs[j].save == ECHO_SAVE_FSYNC && (b->o.sections & SECTION_TWIND));
        for (size_t j = 0; j < n_devs && r == 0; j++)
                if (use[j])
                        r = latency_device_start(b, &devs[j]);

        for (size_t i = 0; i < b->o.warmup + b->o.updates && r == 0; i++)
                for (size_t j = 0; j < n_devs && r == 0; j++) {
                        uint64_t ns;

                        if (!use[j])
                                continue;
                        r = measure_one(b, devs[j].t, &devs[j].version, &ns);
                        if (r == 0 && i >= b->o.warmup)
                                devs[j].samples[i - b->o.warmup] = ns;
                }
        bench_client_track(b->client, NULL);

        for (size_t j = 0; j < n_devs && r == 0; j++) {
                if (!use[j])
                        continue;
                percentiles_compute(devs[j].samples, b->o.updates, &devs[j].p);
                row_percentiles(b, devs[j].section, devs[j].label, &devs[j].p);
                if (devs[j].save == ECHO_SAVE_FSYNC)
                        floor_fsync = &devs[j].p;
        }
        for (size_t j = 0; j < n_devs && r == 0 && floor_fsync; j++) {
                char m[96];
                double q50, q99;

                if (!use[j] || !devs[j].twind)
                        continue;
                q50 = devs[j].p.p50 / floor_fsync->p50;
                q99 = devs[j].p.p99 / floor_fsync->p99;
                snprintf(m, sizeof(m), "%s: p50 / floor-with-fsync p50", devs[j].label);
                row_add(b, "twind", m, "<= 1.25", verdict(q50 <= 1.25), "%.2f", q50);
                snprintf(m, sizeof(m), "%s: p99 / floor-with-fsync p99", devs[j].label);
                row_add(b, "twind", m, "<= 2", verdict(q99 <= 2.0), "%.2f", q99);
        }
        for (size_t j = 0; j < n_devs; j++)
                latency_device_stop(&devs[j]);
        return r;
}

static int start_agent(Bench *b, Agent *a, Tracker *t, const char *apply_command)
{
        char id[96];
        int r;

        snprintf(id, sizeof(id), "%s-0", t->prefix);
        r = agent_prepare(a, b->dir, id, b->broker.port, apply_command);
        if (r >= 0)
                r = agent_spawn(a, b->o.twind, NULL, NULL);
        if (r >= 0)
                r = wait_online(b, t, 10000);
        if (r < 0)
                fprintf(stderr, "Failed to start twind for %s (see %s): %s\n", id, a->log,
                        strerror(-r));
        return r;
}

static int section_burst(Bench *b)
{
        char script[512], counter[512], content[1200];
        const char *names[] = { "burstcount", "burstnocmd" };
        int r;

        /* The apply command counts its own runs, independently of the agent's counters. */
        snprintf(script, sizeof(script), "%s/count-apply.sh", b->dir);
        snprintf(counter, sizeof(counter), "%s/burst-applies.log", b->dir);
        snprintf(content, sizeof(content), "#!/bin/sh\necho \"$TWIN_DESIRED_VERSION\" >> '%s'\n",
                 counter);
        r = write_file(script, content, 0755);
        if (r < 0)
                return r;

        for (size_t k = 0; k < 2 && r == 0; k++) {
                Tracker *t = tracker_new(names[k], 1);
                int64_t version = 0;
                long applies0 = 0, applies1 = 0, lines0, lines1;
                size_t pending0, success0;
                uint64_t t0;
                char device[96], m[96];
                const char *what = k ? "no apply command" : "counting apply script";
                Agent a;

                if (!t)
                        return -ENOMEM;
                snprintf(device, sizeof(device), "%s-0", names[k]);
                bench_client_track(b->client, t);
                r = start_agent(b, &a, t, k ? NULL : script);
                if (r == 0) {
                        uint64_t ns;

                        /* One update first, so that the burst starts from a settled agent. */
                        r = measure_one(b, t, &version, &ns);
                }
                if (r == 0)
                        r = agent_applies(&a, &applies0);
                if (r == 0) {
                        lines0 = count_lines(counter);
                        pending0 = t->n_pending;
                        success0 = t->n_success;
                        tracker_set_target(t, version + (int64_t)b->o.burst);
                        t0 = now_ns();
                        for (size_t i = 0; i < b->o.burst && r == 0; i++)
                                r = bench_client_publish_desired(b->client, device, ++version);
                        if (r == 0)
                                r = bench_client_wait(b->client, &t->n_at_target, 1, 300000);
                        if (r < 0)
                                fprintf(stderr, "%s: burst did not converge: %s\n", device,
                                        strerror(-r));
                }
                if (r == 0) {
                        /* Let a report that would follow the last success arrive too. */
                        bench_client_wait(b->client, NULL, 0, 200);
                        r = agent_applies(&a, &applies1);
                }
                if (r == 0) {
                        lines1 = count_lines(counter);
                        snprintf(m, sizeof(m), "%zu updates, %s: time to last applied", b->o.burst,
                                 what);
                        row_add(b, "burst", m, NULL, NULL, "%.1f ms",
                                (double)(t->success_ns[0] - t0) / 1e6);
                        snprintf(m, sizeof(m), "%zu updates, %s: applies run", b->o.burst, what);
                        if (k)
                                row_add(b, "burst", m, NULL, NULL, "%ld", applies1 - applies0);
                        else
                                row_add(b, "burst", m, NULL, NULL, "%ld (agent), %ld (script)",
                                        applies1 - applies0, lines1 - lines0);
                        snprintf(m, sizeof(m), "%zu updates, %s: reports pending / success",
                                 b->o.burst, what);
                        row_add(b, "burst", m, NULL, NULL, "%zu / %zu", t->n_pending - pending0,
                                t->n_success - success0);
                }
                bench_client_track(b->client, NULL);
                if (a.pid > 0)
                        agent_reap(&a, 5000);
                tracker_free(t);
        }
        return r;
}

static int section_fleet(Bench *b)
{
        size_t n = b->o.devices;
        Tracker *t = tracker_new("fleet", n);
        Agent *agents = calloc(n, sizeof(*agents));
        uint64_t *samples = calloc(n, sizeof(*samples));
        uint64_t t0, spawn0, last = 0;
        long pss = 0, rss = 0, dirty = 0;
        size_t measured = 0;
        char m[96];
        Percentiles p;
        int r = 0;

        if (!t || !agents || !samples) {
                r = -ENOMEM;
                goto out;
        }
        bench_client_track(b->client, t);
        spawn0 = now_ns();
        for (size_t i = 0; i < n && r == 0; i++) {
                char id[64];

                snprintf(id, sizeof(id), "fleet-%zu", i);
                r = agent_prepare(&agents[i], b->dir, id, b->broker.port, b->o.fleet_apply);
                if (r == 0)
                        r = agent_spawn(&agents[i], b->o.twind, NULL, NULL);
        }
        if (r == 0)
                r = wait_online(b, t, 30000 + (int)n * 100);
        if (r < 0)
                goto out;
        snprintf(m, sizeof(m), "%zu agents: start to all online", n);
        row_add(b, "fleet", m, NULL, NULL, "%.0f ms", (double)(now_ns() - spawn0) / 1e6);
        /* Let the start-up reports and subscriptions settle before the update. */
        bench_client_wait(b->client, NULL, 0, 1000);

        tracker_set_target(t, 1);
        t0 = now_ns();
        for (size_t i = 0; i < n && r == 0; i++)
                r = bench_client_publish_desired(b->client, agents[i].id, 1);
        if (r == 0)
                r = bench_client_wait(b->client, &t->n_at_target, n, 120000);
        if (r < 0) {
                fprintf(stderr, "fleet: %zu of %zu converged: %s\n", t->n_at_target, n,
                        strerror(-r));
                goto out;
        }
        for (size_t i = 0; i < n; i++) {
                samples[i] = t->success_ns[i] - t0;
                if (samples[i] > last)
                        last = samples[i];
        }
        percentiles_compute(samples, n, &p);
        snprintf(m, sizeof(m), "%zu agents, one update each%s: all report success", n,
                 b->o.fleet_apply ? " (with apply command)" : "");
        row_add(b, "fleet", m, n >= 1000 ? "<= 2 s (1000 agents)" : "(target is for 1000)",
                n >= 1000 ? verdict(last <= 2000000000u) : "-", "%.0f ms", (double)last / 1e6);
        row_percentiles(b, "fleet", "per-agent convergence", &p);

        for (size_t i = 0; i < n; i++) {
                MemInfo mi;

                if (proc_mem(agents[i].pid, &mi) == 0) {
                        pss += mi.pss_kib;
                        rss += mi.rss_kib;
                        dirty += mi.private_dirty_kib;
                        measured++;
                }
        }
        if (measured > 0) {
                snprintf(m, sizeof(m), "%zu agents: total PSS", measured);
                row_add(b, "fleet", m, NULL, NULL, "%.1f MiB", (double)pss / 1024);
                row_add(b, "fleet", "per agent: PSS / RSS / Private_Dirty", NULL, NULL,
                        "%.0f / %.0f / %.0f KiB", (double)pss / (double)measured,
                        (double)rss / (double)measured, (double)dirty / (double)measured);
        }
out:
        bench_client_track(b->client, NULL);
        if (agents) {
                for (size_t i = 0; i < n; i++)
                        agent_kill(&agents[i]);
                for (size_t i = 0; i < n; i++)
                        if (agents[i].pid > 0)
                                agent_reap(&agents[i], 10000);
        }
        free(agents);
        free(samples);
        tracker_free(t);
        return r;
}

static int measure_ready(Bench *b, const char *id, const char *notify_path, Agent *a,
                         double *ret_ms)
{
        uint64_t start, ready;
        int fd, r;

        fd = notify_socket_new(notify_path);
        if (fd < 0)
                return fd;
        r = agent_prepare(a, b->dir, id, b->broker.port, "/bin/true");
        if (r == 0)
                r = agent_spawn(a, b->o.twind, notify_path, &start);
        if (r == 0)
                r = notify_wait_ready(fd, 10000, &ready);
        if (r < 0) {
                fprintf(stderr, "%s: no READY=1: %s\n", id, strerror(-r));
                close(fd);
                return r;
        }
        *ret_ms = (double)(ready - start) / 1e6;
        return fd;
}

static int section_footprint(Bench *b)
{
        uint64_t *samples = calloc(b->o.ready_runs, sizeof(*samples));
        Tracker *t = tracker_new("idle", 1);
        long vol0, vol1, invol0, invol1;
        char notify_path[512];
        int64_t version = 0;
        Percentiles p;
        MemInfo mi;
        Agent a = { 0 };
        double ms;
        int fd = -1, threads, r = 0;

        if (!samples || !t) {
                r = -ENOMEM;
                goto out;
        }
        snprintf(notify_path, sizeof(notify_path), "%s/notify.sock", b->dir);

        /* exec -> READY=1, several fresh starts (each with its own empty state directory). */
        for (size_t i = 0; i < b->o.ready_runs && r == 0; i++) {
                char id[64];
                Agent ra;

                snprintf(id, sizeof(id), "ready-%zu", i);
                fd = measure_ready(b, id, notify_path, &ra, &ms);
                if (fd < 0) {
                        r = fd;
                        fd = -1;
                        if (ra.pid > 0)
                                agent_reap(&ra, 5000);
                        break;
                }
                samples[i] = (uint64_t)(ms * 1e6);
                close(fd);
                fd = -1;
                agent_reap(&ra, 5000);
        }
        if (r < 0)
                goto out;
        percentiles_compute(samples, b->o.ready_runs, &p);
        {
                char m[80];

                snprintf(m, sizeof(m), "exec -> READY=1, p50 / max of %zu starts", b->o.ready_runs);
                row_add(b, "footprint", m, "<= 20 ms", verdict(p.p50 <= 20.0), "%.1f / %.1f ms",
                        p.p50, p.max);
        }

        /* The agent that idles: started, one apply, then left alone. */
        bench_client_track(b->client, t);
        fd = measure_ready(b, "idle-0", notify_path, &a, &ms);
        if (fd < 0) {
                r = fd;
                fd = -1;
                goto out;
        }
        bench_client_set_drain_fd(b->client, fd);
        r = wait_online(b, t, 10000);
        if (r == 0) {
                uint64_t ns;

                r = measure_one(b, t, &version, &ns);
        }
        if (r < 0)
                goto out;

        bench_client_wait(b->client, NULL, 0, b->o.idle_settle_s * 1000);
        r = proc_mem(a.pid, &mi);
        if (r < 0)
                goto out;
        {
                char m[80];

                snprintf(m, sizeof(m), "after %d s idle: RSS", b->o.idle_settle_s);
                row_add(b, "footprint", m, "<= 6 MiB", verdict(mi.rss_kib <= 6 * 1024), "%.2f MiB",
                        (double)mi.rss_kib / 1024);
                snprintf(m, sizeof(m), "after %d s idle: PSS", b->o.idle_settle_s);
                row_add(b, "footprint", m, NULL, NULL, "%.2f MiB", (double)mi.pss_kib / 1024);
                snprintf(m, sizeof(m), "after %d s idle: Private_Dirty", b->o.idle_settle_s);
                row_add(b, "footprint", m, "<= 1 MiB", verdict(mi.private_dirty_kib <= 1024),
                        "%.2f MiB", (double)mi.private_dirty_kib / 1024);
        }

        r = proc_ctxt_switches(a.pid, &vol0, &invol0, &threads);
        if (r < 0)
                goto out;
        bench_client_wait(b->client, NULL, 0, b->o.idle_window_s * 1000);
        r = proc_ctxt_switches(a.pid, &vol1, &invol1, &threads);
        if (r < 0)
                goto out;
        {
                char m[80];
                double w = (double)(vol1 - vol0) / b->o.idle_window_s;

                snprintf(m, sizeof(m), "idle wakeups (voluntary switches over %d s)",
                         b->o.idle_window_s);
                row_add(b, "footprint", m, "<= 0.1 /s", verdict(w <= 0.1), "%.3f /s (%ld)", w,
                        vol1 - vol0);
                row_add(b, "footprint", "idle involuntary switches; threads", NULL, NULL, "%ld; %d",
                        invol1 - invol0, threads);
        }
out:
        bench_client_set_drain_fd(b->client, -1);
        bench_client_track(b->client, NULL);
        if (a.pid > 0)
                agent_reap(&a, 5000);
        if (fd >= 0)
                close(fd);
        free(samples);
        tracker_free(t);
        return r;
}

/* twin-bench --measure-child RESULT OUT ERR CMD [ARG...]: runs CMD with stdout to OUT and
 * stderr to ERR, and writes "NANOSECONDS MAXRSS_KIB STATUS" to RESULT. A fresh twin-bench forks
 * CMD, because ru_maxrss counts what a forked child had before its exec: a child forked from the
 * benchmark itself (tens of MiB by then) would report at least that. */
static int measure_child(int argc, char *argv[])
{
        struct rusage ru;
        uint64_t t0;
        int status;
        FILE *f;
        pid_t pid;

        if (argc < 6)
                return 2;
        t0 = now_ns();
        pid = fork();
        if (pid < 0)
                return 1;
        if (pid == 0) {
                int o = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
                int e = open(argv[4], O_WRONLY | O_CREAT | O_APPEND, 0644);

                if (o >= 0)
                        dup2(o, STDOUT_FILENO);
                if (e >= 0)
                        dup2(e, STDERR_FILENO);
                execv(argv[5], argv + 5);
                _exit(127);
        }
        if (wait4(pid, &status, 0, &ru) != pid)
                return 1;
        f = fopen(argv[2], "w");
        if (!f)
                return 1;
        fprintf(f, "%" PRIu64 " %ld %d\n", now_ns() - t0, ru.ru_maxrss,
                WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        return fclose(f) == 0 ? 0 : 1;
}

/* Runs argv with stdout to out (NULL: /dev/null), stderr to err, through --measure-child; its
 * wall time and peak RSS. 0 or negative errno; *ret_status is the exit status (or 128 +
 * signal). */
static int run_measured(const Bench *b, char *const argv[], const char *out, const char *err,
                        uint64_t *ret_ns, long *ret_maxrss_kib, int *ret_status)
{
        char result[300], *args[24];
        size_t n = 0;
        int status;
        FILE *f;
        pid_t pid;

        snprintf(result, sizeof(result), "%s/measure.result", b->dir);
        args[n++] = "/proc/self/exe";
        args[n++] = "--measure-child";
        args[n++] = result;
        args[n++] = (char *)(out ? out : "/dev/null");
        args[n++] = (char *)err;
        for (size_t i = 0; argv[i] && n < 23; i++)
                args[n++] = argv[i];
        args[n] = NULL;
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                execv(args[0], args);
                _exit(127);
        }
        if (waitpid(pid, &status, 0) != pid)
                return -errno;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return -EIO;
        f = fopen(result, "r");
        if (!f)
                return -errno;
        if (fscanf(f, "%" SCNu64 " %ld %d", ret_ns, ret_maxrss_kib, ret_status) != 3) {
                fclose(f);
                return -EIO;
        }
        fclose(f);
        return 0;
}

/* One twinctl command against the scale broker: a row with its time and peak RSS. */
static int scale_twinctl(Bench *b, const Broker *broker, const char *label, const char *target,
                         double max_s, long max_kib, const char *const args[])
{
        char url[64], out[300], err[300], m[96], *argv[16];
        size_t n = 0;
        uint64_t ns = 0;
        long kib = 0;
        int status = -1, r;

        snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", broker->port);
        snprintf(out, sizeof(out), "%s/scale/twinctl.out", b->dir);
        snprintf(err, sizeof(err), "%s/scale/twinctl.err", b->dir);
        argv[n++] = (char *)b->o.twinctl;
        argv[n++] = "--broker";
        argv[n++] = url;
        argv[n++] = "--timeout";
        argv[n++] = "120";
        for (size_t i = 0; args[i] && n < 15; i++)
                argv[n++] = (char *)args[i];
        argv[n] = NULL;
        r = run_measured(b, argv, out, err, &ns, &kib, &status);
        if (r < 0 || status != 0) {
                fprintf(stderr, "scale: twinctl %s failed (status %d), see %s\n", label, status,
                        err);
                return r < 0 ? r : -EIO;
        }
        snprintf(m, sizeof(m), "twinctl %s: time / peak RSS (%ld lines)", label, count_lines(out));
        row_add(b, "scale", m, target,
                target ? verdict((double)ns / 1e9 <= max_s && kib <= max_kib) : NULL,
                "%.2f s / %.1f MiB", (double)ns / 1e9, (double)kib / 1024);
        return 0;
}

/* N twins on one mosquitto: N - M simulated (their retained documents published straight to the
 * broker) and M real agents; twinctl on all of them; the M agents converge on a fleet-wide
 * change. Its own broker with max_queued_messages 0: a list of the fleet is one subscription
 * handed 3 N retained messages at once (docs/brokers.md). */
static int section_scale(Bench *b)
{
        size_t m = b->o.scale_agents, n = b->o.twins, sim = n - m;
        Broker broker = { 0 };
        BenchClient *client = NULL;
        Tracker *t = tracker_new("scale", m);
        Agent *agents = calloc(m, sizeof(*agents));
        uint64_t *samples = calloc(m, sizeof(*samples));
        MemInfo before, after;
        char dir[300], label[96], id[64], one[64];
        uint64_t t0, last = 0;
        Percentiles p;
        int r;

        snprintf(dir, sizeof(dir), "%s/scale", b->dir);
        if (!t || !agents || !samples) {
                r = -ENOMEM;
                goto out;
        }
        r = mkdir(dir, 0755) < 0 ? -errno : 0;
        if (r == 0)
                r = broker_start(&broker, b->o.mosquitto, dir, 0);
        if (r == 0)
                r = bench_client_new(&client, broker.port);
        if (r < 0)
                goto out;
        (void)proc_mem(broker.pid, &before);

        t0 = now_ns();
        r = fleet_simulate(broker.port, "sim", 0, sim);
        if (r < 0)
                goto out;
        snprintf(label, sizeof(label), "%zu simulated twins: publish all documents", sim);
        row_add(b, "scale", label, NULL, NULL, "%.1f s", (double)(now_ns() - t0) / 1e9);

        bench_client_track(client, t);
        t0 = now_ns();
        for (size_t i = 0; i < m && r == 0; i++) {
                snprintf(id, sizeof(id), "scale-%zu", i);
                r = agent_prepare(&agents[i], b->dir, id, broker.port, NULL);
                if (r == 0)
                        r = agent_spawn(&agents[i], b->o.twind, NULL, NULL);
        }
        if (r == 0)
                r = bench_client_wait(client, &t->n_online, m, 30000 + (int)m * 100);
        if (r < 0) {
                fprintf(stderr, "scale: %zu of %zu agents online\n", t->n_online, m);
                goto out;
        }
        snprintf(label, sizeof(label), "%zu real agents: start to all online", m);
        row_add(b, "scale", label, NULL, NULL, "%.1f s", (double)(now_ns() - t0) / 1e9);
        bench_client_wait(client, NULL, 0, 1000);

        if (proc_mem(broker.pid, &after) == 0) {
                snprintf(label, sizeof(label), "broker RSS with %zu twins (per twin)", n);
                row_add(b, "scale", label, NULL, NULL, "%.0f MiB (%.2f KiB)",
                        (double)after.rss_kib / 1024,
                        (double)(after.rss_kib - before.rss_kib) / (double)n);
        }

        r = scale_twinctl(b, &broker, "list", n >= 100000 ? "<= 2 s, <= 200 MiB" : NULL, 2.0,
                          200 * 1024, (const char *const[]){ "list", NULL });
        if (r == 0)
                r = scale_twinctl(b, &broker, "list --pending", NULL, 0, 0,
                                  (const char *const[]){ "list", "--pending", NULL });
        if (r == 0)
                r = scale_twinctl(b, &broker, "--json list", NULL, 0, 0,
                                  (const char *const[]){ "--json", "list", NULL });
        snprintf(one, sizeof(one), "sim-%zu", sim / 2);
        if (r == 0)
                r = scale_twinctl(b, &broker, "get (one twin)", NULL, 0, 0,
                                  (const char *const[]){ "get", one, NULL });
        if (r == 0)
                r = scale_twinctl(
                    b, &broker, "set --wait (one real agent)", NULL, 0, 0,
                    (const char *const[]){ "set", "scale-0", "mode=one", "--wait", NULL });
        if (r < 0)
                goto out;

        /* The fleet-wide change: one desired document to each real agent, back to back. */
        bench_client_wait(client, NULL, 0, 500);
        tracker_set_target(t, 2);
        t0 = now_ns();
        for (size_t i = 0; i < m && r == 0; i++)
                r = bench_client_publish_desired(client, agents[i].id, 2);
        if (r == 0)
                r = bench_client_wait(client, &t->n_at_target, m, 120000);
        if (r < 0) {
                fprintf(stderr, "scale: %zu of %zu converged\n", t->n_at_target, m);
                goto out;
        }
        for (size_t i = 0; i < m; i++) {
                samples[i] = t->success_ns[i] - t0;
                if (samples[i] > last)
                        last = samples[i];
        }
        percentiles_compute(samples, m, &p);
        snprintf(label, sizeof(label), "%zu real agents among %zu twins: fleet-wide change", m, n);
        row_add(b, "scale", label, m >= 1000 ? "<= 2 s" : NULL,
                m >= 1000 ? verdict(last <= 2000000000u) : NULL, "%.0f ms", (double)last / 1e6);
        row_percentiles(b, "scale", "per-agent convergence", &p);

        /* The same change made by twinctl: one set per agent, 4 commands at a time. */
        {
                char url[64], err[400], key[64];
                pid_t running[4] = { 0 };
                size_t next = 0, done = 0;

                snprintf(url, sizeof(url), "mqtt://127.0.0.1:%d", broker.port);
                snprintf(err, sizeof(err), "%s/twinctl-set.err", dir);
                tracker_set_target(t, 3); /* each set bumps the agent's $version 2 to 3 */
                t0 = now_ns();
                while (done < m) {
                        for (int k = 0; k < 4; k++) {
                                int st;

                                if (running[k] > 0 && waitpid(running[k], &st, WNOHANG) > 0) {
                                        running[k] = 0;
                                        done++;
                                }
                                if (running[k] == 0 && next < m) {
                                        pid_t pid = fork();

                                        if (pid == 0) {
                                                int e =
                                                    open(err, O_WRONLY | O_CREAT | O_APPEND, 0644);
                                                int o = open("/dev/null", O_WRONLY);

                                                dup2(o, STDOUT_FILENO);
                                                dup2(e, STDERR_FILENO);
                                                snprintf(key, sizeof(key), "mode=all%zu", next);
                                                execl(b->o.twinctl, b->o.twinctl, "--broker", url,
                                                      "set", agents[next].id, key, (char *)NULL);
                                                _exit(127);
                                        }
                                        running[k] = pid;
                                        next++;
                                }
                        }
                        bench_client_wait(client, NULL, 0, 1);
                }
                r = bench_client_wait(client, &t->n_at_target, m, 120000);
                if (r < 0) {
                        fprintf(stderr, "scale: %zu of %zu applied the twinctl sets\n",
                                t->n_at_target, m);
                        goto out;
                }
                snprintf(label, sizeof(label),
                         "twinctl set to %zu devices, 4 at a time: until all applied", m);
                row_add(b, "scale", label, NULL, NULL, "%.1f s (%.1f ms per set)",
                        (double)(now_ns() - t0) / 1e9, (double)(now_ns() - t0) / 1e6 / (double)m);
        }
out:
        if (client)
                bench_client_track(client, NULL);
        if (agents) {
                for (size_t i = 0; i < m; i++)
                        agent_kill(&agents[i]);
                for (size_t i = 0; i < m; i++)
                        if (agents[i].pid > 0)
                                agent_reap(&agents[i], 10000);
        }
        bench_client_free(client);
        if (broker.pid > 0)
                broker_stop(&broker);
        free(agents);
        free(samples);
        tracker_free(t);
        return r;
}

static void print_table(const Bench *b)
{
        if (b->o.markdown) {
                printf("| section | measure | value | target | met |\n");
                printf("|---|---|---|---|---|\n");
                for (size_t i = 0; i < b->n_rows; i++) {
                        const Row *r = &b->rows[i];

                        printf("| %s | %s | %s | %s | %s |\n", r->section, r->measure, r->value,
                               r->target, r->met);
                }
                return;
        }
        printf("\n%-10s %-64s %-26s %-22s %s\n", "section", "measure", "value", "target", "met");
        for (size_t i = 0; i < b->n_rows; i++) {
                const Row *r = &b->rows[i];

                printf("%-10s %-64s %-26s %-22s %s\n", r->section, r->measure, r->value, r->target,
                       r->met);
        }
}

static void help(void)
{
        printf(
            "Usage: twin-bench [OPTIONS]\n\n"
            "Measures twind against the floor of the broker round trip, on a private mosquitto.\n\n"
            "      --twind PATH        the agent (default $TWIND or ./build/src/twind/twind)\n"
            "      --mosquitto PATH    the broker (default mosquitto on PATH or /usr/sbin)\n"
            "      --only LIST         sections, comma separated: "
            "floor,twind,burst,fleet,footprint (default), scale\n"
            "      --updates N         sequential updates per latency series (default 1000)\n"
            "      --burst N           updates in the burst (default 1000)\n"
            "      --devices N         agents in the fleet (default 100)\n"
            "      --fleet-apply CMD   apply command of the fleet's agents (default none)\n"
            "      --twins N           twins in the scale section (default 100000)\n"
            "      --scale-agents N    real agents among them (default 1000)\n"
            "      --twinctl PATH      twinctl for the scale section (default $TWINCTL or\n"
            "                          ./build/src/twinctl/twinctl)\n"
            "      --quick             small counts and short idle windows (a smoke run)\n"
            "      --markdown          print the table for docs/performance.md\n"
            "      --tmpdir DIR        where the run's directory goes (default $TMPDIR or /tmp)\n"
            "      --keep              keep the run's directory (logs, states) afterwards\n"
            "  -h, --help              show this help\n");
}

static int parse_sections(const char *s, unsigned *ret)
{
        char *copy = strdup(s), *tok, *save = NULL;
        unsigned bits = 0;

        if (!copy)
                return -ENOMEM;
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                size_t i;

                for (i = 0; i < sizeof(section_names) / sizeof(section_names[0]); i++)
                        if (strcmp(tok, section_names[i].name) == 0)
                                break;
                if (i == sizeof(section_names) / sizeof(section_names[0])) {
                        fprintf(stderr, "Unknown section '%s'\n", tok);
                        free(copy);
                        return -EINVAL;
                }
                bits |= section_names[i].bit;
        }
        free(copy);
        *ret = bits;
        return 0;
}

static int parse_count(const char *s, size_t min, size_t *ret)
{
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || end == s || v < min || v > 1000000) {
                fprintf(stderr, "Invalid count '%s'\n", s);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

static int parse_argv(int argc, char *argv[], Options *o)
{
        enum {
                ARG_TWIND = 0x100,
                ARG_MOSQUITTO,
                ARG_ONLY,
                ARG_UPDATES,
                ARG_BURST,
                ARG_DEVICES,
                ARG_FLEET_APPLY,
                ARG_QUICK,
                ARG_MARKDOWN,
                ARG_TMPDIR,
                ARG_KEEP,
                ARG_TWINS,
                ARG_SCALE_AGENTS,
                ARG_TWINCTL,
        };
        static const struct option opts[] = {
                { "twind", required_argument, NULL, ARG_TWIND },
                { "mosquitto", required_argument, NULL, ARG_MOSQUITTO },
                { "only", required_argument, NULL, ARG_ONLY },
                { "updates", required_argument, NULL, ARG_UPDATES },
                { "burst", required_argument, NULL, ARG_BURST },
                { "devices", required_argument, NULL, ARG_DEVICES },
                { "fleet-apply", required_argument, NULL, ARG_FLEET_APPLY },
                { "quick", no_argument, NULL, ARG_QUICK },
                { "markdown", no_argument, NULL, ARG_MARKDOWN },
                { "tmpdir", required_argument, NULL, ARG_TMPDIR },
                { "keep", no_argument, NULL, ARG_KEEP },
                { "twins", required_argument, NULL, ARG_TWINS },
                { "scale-agents", required_argument, NULL, ARG_SCALE_AGENTS },
                { "twinctl", required_argument, NULL, ARG_TWINCTL },
                { "help", no_argument, NULL, 'h' },
                { NULL, 0, NULL, 0 },
        };
        bool quick = false, set_updates = false, set_burst = false, set_devices = false;
        int c;

        *o = (Options){
                .twind = getenv("TWIND") ? getenv("TWIND") : "./build/src/twind/twind",
                .mosquitto =
                    access("/usr/sbin/mosquitto", X_OK) == 0 ? "/usr/sbin/mosquitto" : "mosquitto",
                .tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
                .sections = SECTION_ALL,
                .updates = 1000,
                .warmup = 20,
                .burst = 1000,
                .devices = 100,
                .ready_runs = 5,
                .twins = 100000,
                .scale_agents = 1000,
                .twinctl = getenv("TWINCTL") ? getenv("TWINCTL") : "./build/src/twinctl/twinctl",
                .idle_settle_s = 10,
                .idle_window_s = 30,
        };
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case ARG_TWIND:
                        o->twind = optarg;
                        break;
                case ARG_MOSQUITTO:
                        o->mosquitto = optarg;
                        break;
                case ARG_ONLY:
                        if (parse_sections(optarg, &o->sections) < 0)
                                return -EINVAL;
                        break;
                case ARG_UPDATES:
                        if (parse_count(optarg, 1, &o->updates) < 0)
                                return -EINVAL;
                        set_updates = true;
                        break;
                case ARG_BURST:
                        if (parse_count(optarg, 1, &o->burst) < 0)
                                return -EINVAL;
                        set_burst = true;
                        break;
                case ARG_DEVICES:
                        if (parse_count(optarg, 1, &o->devices) < 0)
                                return -EINVAL;
                        set_devices = true;
                        break;
                case ARG_FLEET_APPLY:
                        o->fleet_apply = optarg;
                        break;
                case ARG_QUICK:
                        quick = true;
                        break;
                case ARG_MARKDOWN:
                        o->markdown = true;
                        break;
                case ARG_TMPDIR:
                        o->tmpdir = optarg;
                        break;
                case ARG_TWINS:
                        if (parse_count(optarg, 1, &o->twins) < 0)
                                return -EINVAL;
                        break;
                case ARG_SCALE_AGENTS:
                        if (parse_count(optarg, 1, &o->scale_agents) < 0)
                                return -EINVAL;
                        break;
                case ARG_TWINCTL:
                        o->twinctl = optarg;
                        break;
                case ARG_KEEP:
                        o->keep = true;
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "Unexpected argument '%s'\n", argv[optind]);
                return -EINVAL;
        }
        if (quick) {
                if (!set_updates)
                        o->updates = 100;
                if (!set_burst)
                        o->burst = 100;
                if (!set_devices)
                        o->devices = 10;
                o->warmup = 5;
                o->ready_runs = 3;
                o->idle_settle_s = 1;
                o->idle_window_s = 3;
        }
        if (o->scale_agents > o->twins) {
                fprintf(stderr, "--scale-agents %zu exceeds --twins %zu\n", o->scale_agents,
                        o->twins);
                return -EINVAL;
        }
        if ((o->sections & SECTION_SCALE) && access(o->twinctl, X_OK) < 0) {
                fprintf(stderr, "twinctl not found at %s (use --twinctl PATH or TWINCTL=)\n",
                        o->twinctl);
                return -ENOENT;
        }
        if (access(o->twind, X_OK) < 0 && (o->sections & ~SECTION_FLOOR)) {
                fprintf(stderr, "twind not found at %s (use --twind PATH or TWIND=)\n", o->twind);
                return -ENOENT;
        }
        return 1;
}

int main(int argc, char *argv[])
{
        static const struct {
                unsigned bit;
                int (*run)(Bench *b);
                const char *name;
        } sections[] = {
                { SECTION_FLOOR | SECTION_TWIND, section_latency, "floor and twind" },
                { SECTION_BURST, section_burst, "burst" },
                { SECTION_FLEET, section_fleet, "fleet" },
                { SECTION_FOOTPRINT, section_footprint, "footprint" },
                { SECTION_SCALE, section_scale, "scale" },
        };
        Bench *b;
        int r, failed = 0;

        if (argc > 1 && strcmp(argv[1], "--measure-child") == 0)
                return measure_child(argc, argv);
        b = calloc(1, sizeof(*b));
        if (!b)
                return EXIT_FAILURE;
        r = parse_argv(argc, argv, &b->o);
        if (r <= 0) {
                free(b);
                return r < 0 ? 2 : EXIT_SUCCESS;
        }
        signal(SIGPIPE, SIG_IGN);

        snprintf(b->dir, sizeof(b->dir), "%s/twin-bench.XXXXXX", b->o.tmpdir);
        if (!mkdtemp(b->dir)) {
                perror("mkdtemp");
                free(b);
                return EXIT_FAILURE;
        }
        mosquitto_lib_init();
        r = broker_start(&b->broker, b->o.mosquitto, b->dir, 100000);
        if (r < 0) {
                fprintf(stderr, "Failed to start mosquitto: %s\n", strerror(-r));
                goto out;
        }
        r = bench_client_new(&b->client, b->broker.port);
        if (r < 0) {
                fprintf(stderr, "Failed to connect to mosquitto: %s\n", strerror(-r));
                goto out;
        }
        if (!b->o.markdown)
                fprintf(stderr, "twin-bench: mosquitto on 127.0.0.1:%d, run directory %s\n",
                        b->broker.port, b->dir);

        for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
                if (!(b->o.sections & sections[i].bit))
                        continue;
                r = sections[i].run(b);
                if (r < 0) {
                        fprintf(stderr, "Section %s failed: %s\n", sections[i].name, strerror(-r));
                        failed++;
                }
        }
        print_table(b);
        r = failed ? -EIO : 0;
out:
        b->client = bench_client_free(b->client);
        if (b->broker.pid > 0)
                broker_stop(&b->broker);
        mosquitto_lib_cleanup();
        if (b->o.keep || r < 0)
                fprintf(stderr, "Run directory kept: %s\n", b->dir);
        else
                rm_rf(b->dir);
        free(b);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
