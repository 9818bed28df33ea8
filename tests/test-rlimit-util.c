/* SPDX-License-Identifier: MIT */
/* rlimit_nofile_raise: a lowered soft RLIMIT_NOFILE (as systemd gives services) comes back up to
 * the hard limit, so the agent does not run out of descriptors at 1024. */
#include <sys/resource.h>

#include "rlimit-util.h"
#include "test-util.h"

int main(void)
{
        struct rlimit rl, low;

        CHECK_INT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max <= 64) {
                fprintf(stderr, "hard RLIMIT_NOFILE %llu leaves nothing to raise\n",
                        (unsigned long long)rl.rlim_max);
                return 77;
        }

        /* Lowered as under systemd: raised to the hard limit, which stays as it was. */
        low = (struct rlimit){ .rlim_cur = 64, .rlim_max = rl.rlim_max };
        CHECK_INT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
        CHECK_INT_EQ(rlimit_nofile_raise(), 0);
        CHECK_INT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
        CHECK(rl.rlim_cur == rl.rlim_max);
        CHECK(rl.rlim_max == low.rlim_max);

        /* Already there: nothing to do, still 0. */
        CHECK_INT_EQ(rlimit_nofile_raise(), 0);
        CHECK_INT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
        CHECK(rl.rlim_cur == low.rlim_max);
        return test_exit("test-rlimit-util");
}
