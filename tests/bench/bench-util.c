/* SPDX-License-Identifier: MIT */
#include "bench-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int write_file(const char *path, const char *content, mode_t mode)
{
        size_t len = strlen(content);
        ssize_t n;
        int fd, r = 0;

        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        if (fd < 0)
                return -errno;
        n = write(fd, content, len);
        if (n < 0)
                r = -errno;
        else if ((size_t)n != len)
                r = -EIO;
        if (fchmod(fd, mode) < 0 && r == 0)
                r = -errno;
        close(fd);
        return r;
}

long count_lines(const char *path)
{
        FILE *f;
        long n = 0;
        int c;

        f = fopen(path, "re");
        if (!f)
                return 0;
        while ((c = getc(f)) != EOF)
                if (c == '\n')
                        n++;
        fclose(f);
        return n;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        remove(path);
        return 0;
}

void rm_rf(const char *path)
{
        nftw(path, rm_one, 64, FTW_DEPTH | FTW_PHYS);
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

        return x < y ? -1 : x > y;
}

static double rank(const uint64_t *sorted, size_t n, double q)
{
        size_t i = (size_t)(q * (double)n + 0.999999);

        if (i < 1)
                i = 1;
        if (i > n)
                i = n;
        return (double)sorted[i - 1] / 1e6;
}

void percentiles_compute(uint64_t *samples, size_t n, Percentiles *ret)
{
        double sum = 0;

        *ret = (Percentiles){ .n = n };
        if (n == 0)
                return;
        qsort(samples, n, sizeof(*samples), cmp_u64);
        for (size_t i = 0; i < n; i++)
                sum += (double)samples[i];
        ret->p50 = rank(samples, n, 0.50);
        ret->p90 = rank(samples, n, 0.90);
        ret->p99 = rank(samples, n, 0.99);
        ret->max = (double)samples[n - 1] / 1e6;
        ret->mean = sum / (double)n / 1e6;
}

int proc_mem(pid_t pid, MemInfo *ret)
{
        char path[64], line[256];
        MemInfo m = { -1, -1, -1 };
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int)pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                long v;

                if (sscanf(line, "Rss: %ld kB", &v) == 1)
                        m.rss_kib = v;
                else if (sscanf(line, "Pss: %ld kB", &v) == 1)
                        m.pss_kib = v;
                else if (sscanf(line, "Private_Dirty: %ld kB", &v) == 1)
                        m.private_dirty_kib = v;
        }
        fclose(f);
        if (m.rss_kib < 0 || m.pss_kib < 0 || m.private_dirty_kib < 0)
                return -EBADMSG;
        *ret = m;
        return 0;
}

int proc_ctxt_switches(pid_t pid, long *voluntary, long *involuntary, int *threads)
{
        char path[64];
        long vol = 0, invol = 0;
        int nthreads = 0;
        struct dirent *de;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
        d = opendir(path);
        if (!d)
                return -errno;
        while ((de = readdir(d))) {
                char spath[352], line[256];
                FILE *f;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(spath, sizeof(spath), "%s/%s/status", path, de->d_name);
                f = fopen(spath, "re");
                if (!f)
                        continue; /* the thread exited meanwhile */
                nthreads++;
                while (fgets(line, sizeof(line), f)) {
                        long v;

                        if (sscanf(line, "voluntary_ctxt_switches: %ld", &v) == 1)
                                vol += v;
                        else if (sscanf(line, "nonvoluntary_ctxt_switches: %ld", &v) == 1)
                                invol += v;
                }
                fclose(f);
        }
        closedir(d);
        *voluntary = vol;
        *involuntary = invol;
        *threads = nthreads;
        return 0;
}
