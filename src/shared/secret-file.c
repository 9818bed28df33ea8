/* SPDX-License-Identifier: MIT */
#include "secret-file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "macro.h"

char *secret_free(char *s)
{
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
        return NULL;
}

/* Wipes the whole buffer (it may hold bytes past a NUL) and frees it. */
static void buffer_free(char *buf, size_t size)
{
        if (buf) {
                explicit_bzero(buf, size);
                free(buf);
        }
}

int secret_file_read(const char *path, const char *label, char **ret, struct stat *ret_st,
                     char *err, size_t errlen)
{
        /* One byte more than allowed, to tell "exactly at the limit" from "too large". */
        const size_t size = SECRET_FILE_MAX_BYTES + 2;
        _cleanup_close_ int fd = -1;
        struct stat st;
        size_t len = 0;
        char *buf;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        /* O_NONBLOCK: a FIFO would block the open until a writer appears; it is refused below
         * and has no effect on a regular file. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot open %s %s: %s", label, path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot stat %s %s: %s", label, path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                if (err)
                        snprintf(err, errlen, "%s %s is not a regular file", label, path);
                return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        }

        buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        while (len < SECRET_FILE_MAX_BYTES + 1) {
                ssize_t n = read(fd, buf + len, SECRET_FILE_MAX_BYTES + 1 - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = negative_errno();
                        buffer_free(buf, size);
                        if (err)
                                snprintf(err, errlen, "cannot read %s %s: %s", label, path,
                                         strerror(-r));
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > SECRET_FILE_MAX_BYTES) {
                buffer_free(buf, size);
                if (err)
                        snprintf(err, errlen, "%s %s is larger than %d bytes", label, path,
                                 SECRET_FILE_MAX_BYTES);
                return -E2BIG;
        }
        /* One line end, as an editor or `echo` leaves it; anything before it is the secret. */
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        if (len > 0 && buf[len - 1] == '\r')
                len--;
        if (memchr(buf, '\0', len)) {
                buffer_free(buf, size);
                if (err)
                        snprintf(err, errlen, "%s %s contains a NUL byte", label, path);
                return -EINVAL;
        }
        /* What follows the secret (its line end) goes too: secret_free() wipes up to the NUL. */
        explicit_bzero(buf + len, size - len);
        if (ret_st)
                *ret_st = st;
        *ret = buf;
        return 0;
}
