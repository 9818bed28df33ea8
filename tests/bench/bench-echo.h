/* SPDX-License-Identifier: MIT */
#pragma once

/* The floor: a minimal echo device that answers every desired document with a success report,
 * optionally after a small fsync'd file write. */

#include <sys/types.h>

/* Forks an echo device for twins/<id>/ on 127.0.0.1:port. With fsync_path, each message is
 * first written to that file and fsync'd. Returns the child's pid or negative errno. */
pid_t echo_device_spawn(int port, const char *id, const char *fsync_path);
