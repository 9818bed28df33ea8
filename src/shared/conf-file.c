/* SPDX-License-Identifier: MIT */
#include "conf-file.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"

typedef struct ConfFileParse {
        const ConfFileCallbacks *cb;
        void *userdata;
        const char *path;
        FILE *f;
        unsigned line;     /* counted exactly as inih counts: one per reader call */
        unsigned err_line; /* first error we detected ourselves, 0 none */
        int err_errno;     /* a read error, 0 none */
        int err_r;         /* the first refusal's errno */
        char *err;
        size_t errlen;
} ConfFileParse;

static void parse_error(ConfFileParse *p, int r, const char *fmt, ...) _printf_(3, 4);
static void parse_error(ConfFileParse *p, int r, const char *fmt, ...)
{
        va_list ap;
        int k;

        if (p->err_line != 0)
                return; /* keep the first one */
        p->err_line = p->line;
        p->err_r = r;
        if (!p->err || p->errlen == 0)
                return;
        k = snprintf(p->err, p->errlen, "%s:%u: ", p->path, p->line);
        if (k < 0 || (size_t)k >= p->errlen)
                return;
        va_start(ap, fmt);
        vsnprintf(p->err + k, p->errlen - (size_t)k, fmt, ap);
        va_end(ap);
}

/* Feeds inih one line at a time so that the line number is known in the handler. */
static char *conf_reader(char *str, int num, void *stream)
{
        ConfFileParse *p = stream;
        _cleanup_free_ char *buf = NULL;
        size_t cap = 0, len;
        ssize_t n;
        char *s;

        errno = 0;
        n = getline(&buf, &cap, p->f);
        if (n < 0) {
                if (ferror(p->f))
                        p->err_errno = errno > 0 ? errno : EIO;
                return NULL;
        }
        p->line++;
        len = (size_t)n;
        if (len > 0 && buf[len - 1] == '\n')
                buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
                buf[--len] = '\0';
        if (memchr(buf, '\0', len)) {
                parse_error(p, -EINVAL, "NUL byte in line");
                snprintf(str, (size_t)num, "%s", "");
                return str;
        }
        s = buf + strspn(buf, " \t");
        len = strlen(s);
        if (num <= 0 || len >= (size_t)num) {
                parse_error(p, -EINVAL, "line too long (at most %d characters)", num - 1);
                snprintf(str, (size_t)num, "%s", "");
                return str;
        }
        memcpy(str, s, len + 1);

        /* Section headers are checked here so that an unknown one is reported at its own line,
         * even when it holds no key (inih calls the handler only for keys). Same parsing as
         * inih: the name runs from '[' to the first ']'. */
        if (s[0] == '[') {
                char *close = strchr(s + 1, ']');

                if (close) {
                        *close = '\0';
                        if (!p->cb->section(p->userdata, s + 1))
                                parse_error(p, -EINVAL, "unknown section [%s]", s + 1);
                }
        }
        return str;
}

static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
        ConfFileParse *p = user;
        char reason[512] = "";
        int r;

        if (p->err_line != 0)
                return 0;
        if (section[0] == '\0') {
                parse_error(p, -EINVAL, "key '%s' outside of any section", name);
                return 0;
        }
        if (!p->cb->section(p->userdata, section)) {
                parse_error(p, -EINVAL, "unknown section [%s]", section);
                return 0;
        }
        r = p->cb->key(p->userdata, section, name, value, p->line, reason, sizeof(reason));
        if (r == -ENOMEM) {
                parse_error(p, r, "out of memory");
                return 0;
        }
        if (r < 0) {
                parse_error(p, r, "%s", reason[0] ? reason : strerror(-r));
                return 0;
        }
        return 1;
}

/* Opens path and refuses anything but a regular file. O_NONBLOCK because a FIFO would
 * otherwise block the open (and then the read) until a writer appears. */
static int open_regular_file(const char *path, char *err, size_t errlen)
{
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot open %s: %s", path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot stat %s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                if (err)
                        snprintf(err, errlen, "%s is not a regular file", path);
                return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        }
        return TAKE_FD(fd);
}

int conf_file_parse(const char *path, const ConfFileCallbacks *cb, void *userdata, char *err,
                    size_t errlen)
{
        ConfFileParse p = {
                .cb = cb,
                .userdata = userdata,
                .path = path,
                .err = err,
                .errlen = errlen,
        };
        int fd, r;

        if (err && errlen > 0)
                err[0] = '\0';
        fd = open_regular_file(path, err, errlen);
        if (fd < 0)
                return fd;
        p.f = fdopen(fd, "re");
        if (!p.f) {
                r = negative_errno();
                close(fd);
                if (err)
                        snprintf(err, errlen, "cannot open %s: %s", path, strerror(-r));
                return r;
        }

        r = ini_parse_stream(conf_reader, &p, conf_handler, &p);
        fclose(p.f);

        if (p.err_errno != 0) {
                if (err)
                        snprintf(err, errlen, "cannot read %s: %s", path, strerror(p.err_errno));
                return -p.err_errno;
        }
        if (r == -2) {
                if (err)
                        snprintf(err, errlen, "%s: out of memory", path);
                return -ENOMEM;
        }
        /* inih returns the first line it refused; ours may be earlier (a section header). */
        if (r > 0 && (p.err_line == 0 || (unsigned)r < p.err_line)) {
                if (err)
                        snprintf(err, errlen, "%s:%d: syntax error", path, r);
                return -EINVAL;
        }
        if (p.err_line != 0)
                return p.err_r == -ENOMEM ? -ENOMEM : -EINVAL;
        return r == 0 ? 0 : -EINVAL;
}
