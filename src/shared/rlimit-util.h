/* SPDX-License-Identifier: MIT */
#pragma once

/* Resource limits of the process. */

/* Raises the soft RLIMIT_NOFILE to the hard limit (under systemd the soft limit is 1024 while the
 * hard one is far higher). Only for a program that never uses select(), whose FD_SETSIZE is 1024.
 * Returns 0, also when nothing needed raising, or a negative errno. */
int rlimit_nofile_raise(void);
