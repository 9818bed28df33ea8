/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * INI configuration files (libinih), read one line at a time so that every error names its
 * file and line: Debian's inih is built without INI_HANDLER_LINENO. Shared by twind.conf and
 * twinctl.conf; what the sections and keys mean is the caller's.
 */

#include <stdbool.h>
#include <stddef.h>

typedef struct ConfFileCallbacks {
        /* Whether a section name is known; an unknown one is an error at its header's line. */
        bool (*section)(void *userdata, const char *section);
        /* A key of a known section: 0, -ENOMEM, or another negative errno with the reason in
         * err (without the file and line, which are added). */
        int (*key)(void *userdata, const char *section, const char *name, const char *value,
                   unsigned line, char *err, size_t errlen);
} ConfFileCallbacks;

/*
 * Reads path, which must be a regular file (a FIFO would block, so it is opened non-blocking
 * and refused: -EINVAL; a directory: -EISDIR). Leading whitespace is dropped, so an indented
 * key is an ordinary key, never the continuation of a value. Stops at the first error: a key
 * outside of any section, an unknown section, a refused key, a NUL byte, a line longer than inih
 * reads, a
 * syntax error. Returns 0; -ENOENT for a missing file; or a negative errno with one line in
 * err ("PATH:LINE: reason", or "cannot open PATH: reason").
 */
int conf_file_parse(const char *path, const ConfFileCallbacks *cb, void *userdata, char *err,
                    size_t errlen);
