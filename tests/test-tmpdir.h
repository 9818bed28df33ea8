/* SPDX-License-Identifier: MIT */
#pragma once

/* The private directory of a unit test (mkdtemp() in main()): fresh subdirectories in it, and
 * its removal at the end. */

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static int test_remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st, (void)flag, (void)ftw;
        return remove(path);
}

/* Removes dir and everything below it; symbolic links are removed, never followed. */
static inline void test_remove_tree(const char *dir)
{
        nftw(dir, test_remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fresh empty directory parent/name with mode (the path is good for the next seven calls);
 * exits when it cannot be made. */
static inline const char *test_subdir(const char *parent, const char *name, mode_t mode)
{
        static char path[8][512];
        static int next;
        char *p = path[next++ % 8];

        snprintf(p, 512, "%s/%s", parent, name);
        if (mkdir(p, mode) < 0) {
                perror(p);
                exit(2);
        }
        return p;
}
