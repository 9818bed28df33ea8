/* SPDX-License-Identifier: MIT */
#pragma once

/* Clocks, percentiles, files and /proc readings for the benchmark. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Nanoseconds on the monotonic clock. */
uint64_t now_ns(void);

/* Writes content to path (created or truncated) with the given mode; 0 or negative errno. */
int write_file(const char *path, const char *content, mode_t mode);

/* Counts the lines of a file; 0 when it does not exist. */
long count_lines(const char *path);

/* Removes a directory tree; errors are ignored (best effort clean-up of our own temp dir). */
void rm_rf(const char *path);

/* Summary of a sample of durations, in milliseconds. */
typedef struct Percentiles {
        size_t n;
        double p50, p90, p99, max, mean;
} Percentiles;

/* Sorts samples (nanoseconds) and fills ret with nearest-rank percentiles in ms. */
void percentiles_compute(uint64_t *samples, size_t n, Percentiles *ret);

/* Memory of a process from /proc/PID/smaps_rollup, in KiB. */
typedef struct MemInfo {
        long rss_kib, pss_kib, private_dirty_kib;
} MemInfo;

/* Reads /proc/PID/smaps_rollup; 0 or negative errno. */
int proc_mem(pid_t pid, MemInfo *ret);

/* Sums voluntary and involuntary context switches over every thread of pid; also counts the
 * threads. 0 or negative errno. */
int proc_ctxt_switches(pid_t pid, long *voluntary, long *involuntary, int *threads);
