/* SPDX-License-Identifier: MIT */
#include "rlimit-util.h"

#include <sys/resource.h>

#include "macro.h"

int rlimit_nofile_raise(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return negative_errno();
        if (rl.rlim_cur >= rl.rlim_max)
                return 0;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                return negative_errno();
        return 0;
}
