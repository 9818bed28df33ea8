/* SPDX-License-Identifier: MIT */
#pragma once

/* The floor: a minimal echo device that answers every desired document with a success report,
 * optionally after a small fsync'd file write. */

#include <sys/types.h>

/* What the echo device does with each message before answering. */
enum echo_save {
        ECHO_SAVE_NONE,    /* nothing */
        ECHO_SAVE_FSYNC,   /* write the payload to dir/echo.dat (truncated) and fsync it */
        ECHO_SAVE_ATOMIC,  /* as twind saves state: temp file, fsync, rename, fsync the dir */
        ECHO_SAVE_INPLACE, /* pwrite into an open, preallocated file, then fdatasync: what an
                              A/B-slot state file would cost */
};

/* Forks an echo device for twins/<id>/ on 127.0.0.1:port, saving each message into dir as save
 * says. Returns the child's pid or negative errno. */
pid_t echo_device_spawn(int port, const char *id, enum echo_save save, const char *dir);
