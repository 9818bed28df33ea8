/* SPDX-License-Identifier: MIT */
/* The secret reader shared by twind and twinctl: line ends, limits, what is refused. */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret-file.h"
#include "test-util.h"

static char tmpdir[] = "/tmp/test-secret-file-XXXXXX";

static const char *write_bytes(const char *name, const char *data, size_t len)
{
        static char path[512];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", tmpdir, name);
        f = fopen(path, "we");
        if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
                exit(2);
        return path;
}

/* Reads content back through secret_file_read(); returns its result, the secret in *ret. */
static int read_back(const char *data, size_t len, char **ret, char *err, size_t errlen)
{
        const char *path = write_bytes("secret", data, len);

        *ret = NULL;
        return secret_file_read(path, "password file", ret, NULL, err, errlen);
}

static void check_read(const char *data, const char *want)
{
        char err[512] = "", *s = NULL;

        CHECK_INT_EQ(read_back(data, strlen(data), &s, err, sizeof err), 0);
        CHECK_STR_EQ(s, want);
        CHECK_STR_EQ(err, "");
        secret_free(s);
}

int main(void)
{
        char err[512], want[600], *s = NULL, big[SECRET_FILE_MAX_BYTES + 2];
        const char *path;

        if (!mkdtemp(tmpdir))
                return 2;

        /* One line end goes, "\n" or "\r\n" alike; only one, and nothing else. */
        check_read("pw", "pw");
        check_read("pw\n", "pw");
        check_read("pw\r\n", "pw");
        check_read("pw\n\n", "pw\n");
        check_read("pw\r\n\r\n", "pw\r\n");
        check_read(" pw \t\n", " pw \t");
        check_read("\n", "");
        check_read("", "");

        /* Exactly the limit is fine (a line end beyond it too), one byte more is not. */
        memset(big, 'x', sizeof big);
        CHECK_INT_EQ(read_back(big, SECRET_FILE_MAX_BYTES, &s, err, sizeof err), 0);
        CHECK_INT_EQ(s ? strlen(s) : 0, SECRET_FILE_MAX_BYTES);
        secret_free(s);
        big[SECRET_FILE_MAX_BYTES] = '\n';
        CHECK_INT_EQ(read_back(big, SECRET_FILE_MAX_BYTES + 1, &s, err, sizeof err), -E2BIG);
        big[SECRET_FILE_MAX_BYTES] = 'x';
        CHECK_INT_EQ(read_back(big, SECRET_FILE_MAX_BYTES + 1, &s, err, sizeof err), -E2BIG);
        snprintf(want, sizeof want, "password file %s/secret is larger than %d bytes", tmpdir,
                 SECRET_FILE_MAX_BYTES);
        CHECK_STR_EQ(err, want);
        CHECK(s == NULL);

        /* A NUL byte is refused and never echoed. */
        CHECK_INT_EQ(read_back("top\0secret", 10, &s, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "contains a NUL byte") && !strstr(err, "top"));

        /* Only regular files: a directory, a FIFO (which would block), nothing at all. */
        CHECK_INT_EQ(secret_file_read(tmpdir, "password file", &s, NULL, err, sizeof err), -EISDIR);
        snprintf(want, sizeof want, "%s/fifo", tmpdir);
        CHECK_INT_EQ(mkfifo(want, 0600), 0);
        alarm(10);
        CHECK_INT_EQ(secret_file_read(want, "password file", &s, NULL, err, sizeof err), -EINVAL);
        alarm(0);
        CHECK(strstr(err, "is not a regular file") != NULL);
        unlink(want);
        snprintf(want, sizeof want, "%s/missing", tmpdir);
        CHECK_INT_EQ(secret_file_read(want, "connection string file", &s, NULL, err, sizeof err),
                     -ENOENT);
        CHECK(strstr(err, "cannot open connection string file ") == err);

        path = write_bytes("secret", "x", 1);
        unlink(path);
        rmdir(tmpdir);
        return test_exit("test-secret-file");
}
