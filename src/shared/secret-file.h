/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Reading a secret (a broker password, a connection string holding a key) from a file, the same
 * way in twind and twinctl: a regular file only (a FIFO would block), at most
 * SECRET_FILE_MAX_BYTES, one trailing line end ("\n" or "\r\n") dropped, no NUL byte. Every copy
 * of the content this module made is wiped before it is freed, on every path. Messages name the
 * file, never its content.
 */

#include <stddef.h>
#include <sys/stat.h>

#define SECRET_FILE_MAX_BYTES 4096

/* Reads path; label names it in messages ("password file"). Returns 0 with the NUL-terminated
 * content in *ret (malloc'd; wipe it with secret_free()) and the file's status in *ret_st (may
 * be NULL), or a negative errno with one line in err: -EISDIR / -EINVAL for what is not a
 * regular file, -E2BIG over the limit, -EINVAL for a NUL byte, or the error of open/read. */
int secret_file_read(const char *path, const char *label, char **ret, struct stat *ret_st,
                     char *err, size_t errlen);

/* Wipes and frees a secret string. Accepts NULL; returns NULL. */
char *secret_free(char *s);
