/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr or the journal. Callers never pass secrets (passwords, key material) in the
 * message or the fields: this module writes whatever it is given.
 */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <systemd/sd-journal.h>

#define LOG_LINE_MAX 2048

static const char *log_program = "twind";
static int log_max_level = LOG_INFO;
static int log_to_journal;
static int log_with_time;

/* systemd sets JOURNAL_STREAM to "dev:ino" of the stream it connected; compare with stderr so a
 * child whose stderr was redirected elsewhere does not log to the journal by mistake. */
static int stderr_is_journal(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return 0;
        if (fstat(STDERR_FILENO, &st) < 0)
                return 0;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_setup(const char *program)
{
        const char *d;

        if (program) {
                const char *slash = strrchr(program, '/');
                log_program = slash ? slash + 1 : program;
        }
        log_to_journal = stderr_is_journal();
        d = getenv("TWIND_DEBUG");
        if (d && strcmp(d, "1") == 0)
                log_max_level = LOG_DEBUG;
        d = getenv("TWIND_LOG_TIME");
        if (d && strcmp(d, "1") == 0)
                log_with_time = 1;
}

void log_set_time(int on)
{
        log_with_time = !!on;
}

void log_set_journal(int on)
{
        log_to_journal = !!on;
}

void log_set_max_level(int level)
{
        if (level < LOG_EMERG)
                level = LOG_EMERG;
        if (level > LOG_DEBUG)
                level = LOG_DEBUG;
        log_max_level = level;
}

static void log_stderr(int level, const char *msg)
{
        const char *prefix = "";
        char stamp[40] = "";

        if (level <= LOG_ERR)
                prefix = "error: ";
        else if (level == LOG_WARNING)
                prefix = "warning: ";
        /* Only by hand: the journal has its own timestamps. Local time, to the millisecond. */
        if (log_with_time) {
                struct timespec ts;
                struct tm tm;

                clock_gettime(CLOCK_REALTIME, &ts);
                if (localtime_r(&ts.tv_sec, &tm) &&
                    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm) > 0)
                        snprintf(stamp + strlen(stamp), sizeof stamp - strlen(stamp), ".%03ld ",
                                 ts.tv_nsec / 1000000L);
        }
        /* One fprintf per line so concurrent writers do not interleave within a line. */
        fprintf(stderr, "%s%s%s\n", stamp, prefix, msg);
}

static int log_journal(int level, int err, const LogFields *fields, const char *msg)
{
        char prio[32], ident[128], errno_field[32], dev[300], cfg[300], ver[64];
        _cleanup_free_ char *message = NULL;
        struct iovec iov[8];
        size_t n = 0;

        if (asprintf(&message, "MESSAGE=%s", msg) < 0)
                return -ENOMEM;
        iov[n++] = (struct iovec){ message, strlen(message) };
        snprintf(prio, sizeof prio, "PRIORITY=%d", level);
        iov[n++] = (struct iovec){ prio, strlen(prio) };
        snprintf(ident, sizeof ident, "SYSLOG_IDENTIFIER=%s", log_program);
        iov[n++] = (struct iovec){ ident, strlen(ident) };
        if (err != 0) {
                snprintf(errno_field, sizeof errno_field, "ERRNO=%d", err < 0 ? -err : err);
                iov[n++] = (struct iovec){ errno_field, strlen(errno_field) };
        }
        if (fields && fields->device_id) {
                snprintf(dev, sizeof dev, "TWIN_DEVICE_ID=%s", fields->device_id);
                iov[n++] = (struct iovec){ dev, strlen(dev) };
        }
        if (fields && fields->config_id) {
                snprintf(cfg, sizeof cfg, "TWIN_CONFIG_ID=%s", fields->config_id);
                iov[n++] = (struct iovec){ cfg, strlen(cfg) };
        }
        if (fields && fields->desired_version >= 0) {
                snprintf(ver, sizeof ver, "TWIN_DESIRED_VERSION=%" PRId64, fields->desired_version);
                iov[n++] = (struct iovec){ ver, strlen(ver) };
        }
        return sd_journal_sendv(iov, (int)n);
}

int log_full(int level, int err, const LogFields *fields, const char *fmt, ...)
{
        char msg[LOG_LINE_MAX];
        int saved_errno = errno;
        va_list ap;
        int k;

        if (level > log_max_level)
                return err;

        /* %m in fmt expands to the error being logged, as in systemd. */
        if (err != 0)
                errno = err < 0 ? -err : err;
        va_start(ap, fmt);
        k = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (k < 0)
                snprintf(msg, sizeof msg, "(unformattable log message)");

        /* Append the error unless the caller already placed it with %m. */
        if (err != 0 && !strstr(fmt, "%m")) {
                size_t len = strlen(msg);
                snprintf(msg + len, sizeof msg - len, ": %s", strerror(err < 0 ? -err : err));
        }

        if (!log_to_journal || log_journal(level, err, fields, msg) < 0)
                log_stderr(level, msg);

        errno = saved_errno;
        return err;
}
