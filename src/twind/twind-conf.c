/* SPDX-License-Identifier: MIT */
#include "twind-conf.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "broker-url.h"
#include "log.h"
#include "twin-model.h"

#define PASSWORD_MAX_BYTES 4096
#define USEC_PER_MSEC      UINT64_C(1000)
#define USEC_PER_SEC       UINT64_C(1000000)
#define APPLY_TIMEOUT_MAX  (UINT64_C(24) * 3600 * USEC_PER_SEC)

int twind_config_set_string(char **field, const char *value)
{
        char *copy = NULL;

        if (value) {
                copy = strdup(value);
                if (!copy)
                        return -ENOMEM;
        }
        free(*field);
        *field = copy;
        return 0;
}

int twind_config_new(TwindConfig **ret)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->keepalive = TWIND_KEEPALIVE_DEFAULT;
        c->apply_timeout_usec = (uint64_t)TWIND_APPLY_TIMEOUT_DEFAULT * USEC_PER_SEC;
        if (twind_config_set_string(&c->broker_url, TWIND_BROKER_URL_DEFAULT) < 0 ||
            twind_config_set_string(&c->topic_root, TWIN_TOPIC_ROOT_DEFAULT) < 0 ||
            twind_config_set_string(&c->state_dir, TWIND_STATE_DIR_DEFAULT) < 0 ||
            twind_config_set_string(&c->control_socket, TWIND_CONTROL_SOCKET_DEFAULT) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 0;
}

TwindConfig *twind_config_free(TwindConfig *c)
{
        if (!c)
                return NULL;
        free(c->path);
        free(c->broker_url);
        free(c->username);
        free(c->password_file);
        free(c->cafile);
        free(c->certfile);
        free(c->keyfile);
        free(c->topic_root);
        free(c->device_id);
        free(c->apply_command);
        free(c->state_dir);
        free(c->control_socket);
        free(c);
        return NULL;
}

/* Plain seconds, or systemd-style spans such as "90s", "2min", "1m 30s", "500ms". */
static int parse_time_span(const char *s, uint64_t *ret)
{
        static const struct {
                const char *suffix;
                uint64_t usec;
        } units[] = {
                /* Longer suffixes first so that "ms" is not read as "m" followed by junk. */
                { "usec", 1 },
                { "us", 1 },
                { "msec", USEC_PER_MSEC },
                { "ms", USEC_PER_MSEC },
                { "seconds", USEC_PER_SEC },
                { "second", USEC_PER_SEC },
                { "sec", USEC_PER_SEC },
                { "s", USEC_PER_SEC },
                { "minutes", 60 * USEC_PER_SEC },
                { "minute", 60 * USEC_PER_SEC },
                { "min", 60 * USEC_PER_SEC },
                { "m", 60 * USEC_PER_SEC },
                { "hours", 3600 * USEC_PER_SEC },
                { "hour", 3600 * USEC_PER_SEC },
                { "hr", 3600 * USEC_PER_SEC },
                { "h", 3600 * USEC_PER_SEC },
        };
        uint64_t total = 0;
        const char *p = s;
        bool any = false;

        for (;;) {
                unsigned long long n;
                uint64_t unit = USEC_PER_SEC;
                char *end;
                size_t i;

                p += strspn(p, " \t");
                if (*p == '\0')
                        break;
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                errno = 0;
                n = strtoull(p, &end, 10);
                if (errno != 0 || n > APPLY_TIMEOUT_MAX)
                        return -ERANGE;
                p = end;
                p += strspn(p, " \t");
                for (i = 0; i < ARRAY_SIZE(units); i++) {
                        size_t l = strlen(units[i].suffix);
                        if (strncmp(p, units[i].suffix, l) == 0 &&
                            (p[l] == '\0' || p[l] == ' ' || p[l] == '\t' ||
                             (p[l] >= '0' && p[l] <= '9'))) {
                                unit = units[i].usec;
                                p += l;
                                break;
                        }
                }
                /* A bare number is seconds, but only as the last component ("1m 30"). */
                if (i == ARRAY_SIZE(units) && *p != '\0')
                        return -EINVAL;
                if ((uint64_t)n > (APPLY_TIMEOUT_MAX - total) / unit)
                        return -ERANGE;
                total += (uint64_t)n * unit;
                any = true;
        }
        if (!any)
                return -EINVAL;
        *ret = total;
        return 0;
}

typedef struct ParseContext {
        TwindConfig *config;
        const char *path;
        FILE *f;
        unsigned line;     /* counted exactly as inih counts: one per reader call */
        unsigned err_line; /* first error we detected ourselves, 0 none */
        int err_errno;     /* a read error, 0 none */
        char *err;
        size_t errlen;
} ParseContext;

static void ctx_error(ParseContext *ctx, const char *fmt, ...) _printf_(2, 3);
static void ctx_error(ParseContext *ctx, const char *fmt, ...)
{
        va_list ap;
        int k;

        if (ctx->err_line != 0)
                return; /* keep the first one */
        ctx->err_line = ctx->line;
        if (!ctx->err || ctx->errlen == 0)
                return;
        k = snprintf(ctx->err, ctx->errlen, "%s:%u: ", ctx->path, ctx->line);
        if (k < 0 || (size_t)k >= ctx->errlen)
                return;
        va_start(ap, fmt);
        vsnprintf(ctx->err + k, ctx->errlen - (size_t)k, fmt, ap);
        va_end(ap);
}

static bool section_is_known(const char *s)
{
        return strcmp(s, "broker") == 0 || strcmp(s, "device") == 0 || strcmp(s, "apply") == 0 ||
               strcmp(s, "state") == 0 || strcmp(s, "control") == 0;
}

/*
 * Feeds inih one line at a time so we know the line number in the handler (Debian's inih is
 * built without INI_HANDLER_LINENO). Leading whitespace is dropped so that an indented key is
 * an ordinary key, never a continuation of the previous value (inih's INI_ALLOW_MULTILINE).
 */
static char *config_reader(char *str, int num, void *stream)
{
        ParseContext *ctx = stream;
        _cleanup_free_ char *buf = NULL;
        size_t cap = 0, len;
        ssize_t n;
        char *s;

        errno = 0;
        n = getline(&buf, &cap, ctx->f);
        if (n < 0) {
                if (ferror(ctx->f))
                        ctx->err_errno = errno > 0 ? errno : EIO;
                return NULL;
        }
        ctx->line++;
        len = (size_t)n;
        if (len > 0 && buf[len - 1] == '\n')
                buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
                buf[--len] = '\0';
        if (memchr(buf, '\0', len)) {
                ctx_error(ctx, "NUL byte in line");
                snprintf(str, (size_t)num, "%s", "");
                return str;
        }
        s = buf + strspn(buf, " \t");
        len = strlen(s);
        if (num <= 0 || len >= (size_t)num) {
                ctx_error(ctx, "line too long (at most %d characters)", num - 1);
                snprintf(str, (size_t)num, "%s", "");
                return str;
        }
        memcpy(str, s, len + 1);

        /* Check section headers here so that an unknown one is reported at its own line, even
         * when it holds no key (inih calls the handler only for keys). Same parsing as inih:
         * the name runs from '[' to the first ']'. */
        if (s[0] == '[') {
                char *close = strchr(s + 1, ']');
                if (close) {
                        *close = '\0';
                        if (!section_is_known(s + 1))
                                ctx_error(ctx, "unknown section [%s]", s + 1);
                }
        }
        return str;
}

/* Empty value: clear an optional setting, or restore the default of one that has a default. */
static int set_string_or_default(char **field, const char *value, const char *def)
{
        return twind_config_set_string(field, value[0] ? value : def);
}

static int config_handler(void *user, const char *section, const char *name, const char *value)
{
        ParseContext *ctx = user;
        TwindConfig *c = ctx->config;
        char **field = NULL;
        const char *def = NULL;
        int r;

        if (section[0] == '\0') {
                ctx_error(ctx, "key '%s' outside of any section", name);
                return 0;
        }
        if (!section_is_known(section)) {
                /* Normally already reported at the section header by config_reader(). */
                ctx_error(ctx, "unknown section [%s]", section);
                return 0;
        }

        if (strcmp(section, "broker") == 0) {
                if (strcmp(name, "url") == 0) {
                        field = &c->broker_url;
                        def = TWIND_BROKER_URL_DEFAULT;
                } else if (strcmp(name, "username") == 0)
                        field = &c->username;
                else if (strcmp(name, "password_file") == 0)
                        field = &c->password_file;
                else if (strcmp(name, "cafile") == 0)
                        field = &c->cafile;
                else if (strcmp(name, "certfile") == 0)
                        field = &c->certfile;
                else if (strcmp(name, "keyfile") == 0)
                        field = &c->keyfile;
                else if (strcmp(name, "topic_root") == 0) {
                        field = &c->topic_root;
                        def = TWIN_TOPIC_ROOT_DEFAULT;
                } else if (strcmp(name, "keepalive") == 0) {
                        unsigned long v;
                        char *end;

                        if (value[0] == '\0') {
                                c->keepalive = TWIND_KEEPALIVE_DEFAULT;
                                return 1;
                        }
                        errno = 0;
                        v = strtoul(value, &end, 10);
                        if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 ||
                            v < 5 || v > 3600) {
                                ctx_error(ctx,
                                          "[broker] keepalive: '%s' is not a number of seconds "
                                          "between 5 and 3600",
                                          value);
                                return 0;
                        }
                        c->keepalive = (unsigned)v;
                        return 1;
                }
        } else if (strcmp(section, "device") == 0) {
                if (strcmp(name, "id") == 0)
                        field = &c->device_id;
        } else if (strcmp(section, "apply") == 0) {
                if (strcmp(name, "command") == 0)
                        field = &c->apply_command;
                else if (strcmp(name, "timeout") == 0) {
                        uint64_t usec;

                        if (value[0] == '\0') {
                                c->apply_timeout_usec =
                                    (uint64_t)TWIND_APPLY_TIMEOUT_DEFAULT * USEC_PER_SEC;
                                return 1;
                        }
                        if (parse_time_span(value, &usec) < 0 || usec == 0) {
                                ctx_error(ctx,
                                          "[apply] timeout: '%s' is not a time span above 0 and "
                                          "at most 24h (such as 60, 90s, 2min, 1m30s)",
                                          value);
                                return 0;
                        }
                        c->apply_timeout_usec = usec;
                        return 1;
                }
        } else if (strcmp(section, "state") == 0) {
                if (strcmp(name, "directory") == 0) {
                        field = &c->state_dir;
                        def = TWIND_STATE_DIR_DEFAULT;
                }
        } else if (strcmp(section, "control") == 0) {
                if (strcmp(name, "socket") == 0) {
                        field = &c->control_socket;
                        def = TWIND_CONTROL_SOCKET_DEFAULT;
                }
        }

        if (!field) {
                ctx_error(ctx, "unknown key '%s' in section [%s]", name, section);
                return 0;
        }
        r = set_string_or_default(field, value, def);
        if (r < 0) {
                ctx_error(ctx, "out of memory");
                return 0;
        }
        return 1;
}

/* Opens path for reading and refuses anything but a regular file. O_NONBLOCK because a FIFO
 * would otherwise block the open (and then the read) until a writer appears, and these files
 * are read again on SIGHUP, on the agent's loop. label prefixes the path in err ("password file
 * "). Returns the fd, or a negative errno (-EISDIR / -EINVAL when not a regular file) with err
 * set. */
static int open_regular_file(const char *path, const char *label, struct stat *ret_st, char *err,
                             size_t errlen)
{
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot open %s%s: %s", label, path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot stat %s%s: %s", label, path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                if (err)
                        snprintf(err, errlen, "%s%s is not a regular file", label, path);
                return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        }
        /* O_NONBLOCK has no effect on a regular file; nothing to undo. */
        if (ret_st)
                *ret_st = st;
        return TAKE_FD(fd);
}

int twind_config_load_file(TwindConfig *c, const char *path, bool required, char *err,
                           size_t errlen)
{
        ParseContext ctx = {
                .config = c,
                .path = path,
                .err = err,
                .errlen = errlen,
        };
        _cleanup_close_ int fd = -1;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';

        fd = open_regular_file(path, "", NULL, err, errlen);
        if (fd < 0) {
                if (fd == -ENOENT && !required) {
                        if (err && errlen > 0)
                                err[0] = '\0';
                        return 0;
                }
                return fd;
        }
        ctx.f = fdopen(fd, "re");
        if (!ctx.f) {
                r = negative_errno();
                if (err)
                        snprintf(err, errlen, "cannot open %s: %s", path, strerror(-r));
                return r;
        }
        fd = -1; /* owned by ctx.f now */

        r = ini_parse_stream(config_reader, &ctx, config_handler, &ctx);
        fclose(ctx.f);

        if (ctx.err_errno != 0) {
                if (err)
                        snprintf(err, errlen, "cannot read %s: %s", path, strerror(ctx.err_errno));
                return -ctx.err_errno;
        }
        if (r == -2) {
                if (err)
                        snprintf(err, errlen, "%s: out of memory", path);
                return -ENOMEM;
        }
        /* inih returns the first line it refused; ours may be earlier (a section header). */
        if (r > 0 && (ctx.err_line == 0 || (unsigned)r < ctx.err_line)) {
                if (err)
                        snprintf(err, errlen, "%s:%d: syntax error", path, r);
                return -EINVAL;
        }
        if (ctx.err_line != 0 || r != 0)
                return -EINVAL;

        return twind_config_set_string(&c->path, path);
}

static int verify_error(char *err, size_t errlen, const char *fmt, ...) _printf_(3, 4);
static int verify_error(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

int twind_config_verify(const TwindConfig *c, char *err, size_t errlen)
{
        BrokerUrl *urls = NULL;
        size_t n_urls = 0;
        char reason[256] = "";
        int r;

        if (err && errlen > 0)
                err[0] = '\0';

        if (!c->device_id || c->device_id[0] == '\0')
                return verify_error(err, errlen,
                                    "[device] id: missing (set it in %s or pass --device-id)",
                                    c->path ? c->path : TWIND_CONFIG_PATH_DEFAULT);
        if (!twin_device_id_is_valid(c->device_id))
                return verify_error(err, errlen,
                                    "[device] id: '%s' is not a valid device id (1 to %d "
                                    "characters of A-Z a-z 0-9 - . _ :)",
                                    c->device_id, TWIN_DEVICE_ID_MAX);

        if (!c->broker_url || c->broker_url[0] == '\0')
                return verify_error(err, errlen, "[broker] url: missing");
        r = broker_url_list_parse(c->broker_url, &urls, &n_urls, reason, sizeof reason);
        broker_url_list_free(urls, n_urls);
        if (r == -ENOMEM) {
                verify_error(err, errlen, "out of memory");
                return -ENOMEM;
        }
        /* broker_url_list_parse's reason already quotes the URL. */
        if (r < 0 && reason[0])
                return verify_error(err, errlen, "[broker] url: %s", reason);
        if (r < 0)
                return verify_error(err, errlen, "[broker] url: '%s' is not a valid broker address",
                                    c->broker_url);

        if (!c->topic_root || !twin_topic_root_is_valid(c->topic_root))
                return verify_error(err, errlen,
                                    "[broker] topic_root: '%s' is not a valid topic root "
                                    "(non-empty, no '+' or '#', no leading or trailing '/')",
                                    c->topic_root ? c->topic_root : "");

        if (c->password_file && !c->username)
                return verify_error(err, errlen,
                                    "[broker] password_file: set without username (MQTT sends a "
                                    "password only with a username)");
        if (c->certfile && !c->keyfile)
                return verify_error(err, errlen,
                                    "[broker] certfile: set without keyfile (a client "
                                    "certificate needs both)");
        if (c->keyfile && !c->certfile)
                return verify_error(err, errlen,
                                    "[broker] keyfile: set without certfile (a client "
                                    "certificate needs both)");

        if (c->keepalive < 5 || c->keepalive > 3600)
                return verify_error(err, errlen,
                                    "[broker] keepalive: %u is not a number of seconds between 5 "
                                    "and 3600",
                                    c->keepalive);
        if (c->apply_timeout_usec == 0 || c->apply_timeout_usec > APPLY_TIMEOUT_MAX)
                return verify_error(err, errlen,
                                    "[apply] timeout: must be above 0 and at most 24h");

        if (!c->state_dir || c->state_dir[0] != '/')
                return verify_error(err, errlen, "[state] directory: '%s' is not an absolute path",
                                    c->state_dir ? c->state_dir : "");
        if (!c->control_socket || c->control_socket[0] != '/')
                return verify_error(err, errlen, "[control] socket: '%s' is not an absolute path",
                                    c->control_socket ? c->control_socket : "");
        if (strlen(c->control_socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
                return verify_error(err, errlen,
                                    "[control] socket: '%s' is too long for a socket path (at "
                                    "most %zu characters)",
                                    c->control_socket,
                                    sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
        return 0;
}

static void erase_and_free(char *p, size_t n)
{
        if (p) {
                explicit_bzero(p, n);
                free(p);
        }
}

/* A relative name is a systemd credential (LoadCredential=NAME:...): the file of that name in
 * $CREDENTIALS_DIRECTORY. An absolute path is used as it is (*ret NULL). */
static int credential_path(const char *key, const char *value, char **ret, char *err, size_t errlen)
{
        const char *creds;

        *ret = NULL;
        if (value[0] == '/')
                return 0;
        creds = getenv("CREDENTIALS_DIRECTORY");
        if (!creds || creds[0] == '\0')
                return verify_error(err, errlen,
                                    "[broker] %s: '%s' is a relative name but "
                                    "$CREDENTIALS_DIRECTORY is not set (give an absolute "
                                    "path, or use LoadCredential= in the unit)",
                                    key, value);
        if (asprintf(ret, "%s/%s", creds, value) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

int twind_config_resolve_credentials(TwindConfig *c, char *err, size_t errlen)
{
        struct {
                const char *key;
                char **field;
        } files[] = {
                { "cafile", &c->cafile },
                { "certfile", &c->certfile },
                { "keyfile", &c->keyfile },
        };
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
                char *path;

                if (!*files[i].field || (*files[i].field)[0] == '\0')
                        continue;
                r = credential_path(files[i].key, *files[i].field, &path, err, errlen);
                if (r < 0)
                        return r;
                if (path) {
                        free(*files[i].field);
                        *files[i].field = path;
                }
        }
        return 0;
}

int twind_config_read_password(const TwindConfig *c, char **ret, char *err, size_t errlen)
{
        _cleanup_free_ char *joined = NULL;
        _cleanup_close_ int fd = -1;
        const char *path;
        char *buf = NULL;
        size_t len = 0;
        struct stat st;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';

        if (!c->password_file || c->password_file[0] == '\0') {
                *ret = NULL;
                return 0;
        }

        r = credential_path("password_file", c->password_file, &joined, err, errlen);
        if (r < 0)
                return r;
        path = joined ? joined : c->password_file;

        fd = open_regular_file(path, "password file ", &st, err, errlen);
        if (fd < 0)
                return fd;
        if (st.st_mode & S_IRWXO)
                log_warning("password file %s is readable by others; chmod 600 it", path);

        /* One byte more than allowed, to tell "exactly at the limit" from "too large". */
        buf = malloc(PASSWORD_MAX_BYTES + 2);
        if (!buf)
                return -ENOMEM;
        while (len < PASSWORD_MAX_BYTES + 1) {
                ssize_t n = read(fd, buf + len, PASSWORD_MAX_BYTES + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        erase_and_free(buf, PASSWORD_MAX_BYTES + 2);
                        if (err)
                                snprintf(err, errlen, "cannot read password file %s: %s", path,
                                         strerror(-r));
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > PASSWORD_MAX_BYTES) {
                erase_and_free(buf, PASSWORD_MAX_BYTES + 2);
                if (err)
                        snprintf(err, errlen, "password file %s is larger than %d bytes", path,
                                 PASSWORD_MAX_BYTES);
                return -E2BIG;
        }
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        if (memchr(buf, '\0', len)) {
                erase_and_free(buf, PASSWORD_MAX_BYTES + 2);
                if (err)
                        snprintf(err, errlen, "password file %s contains a NUL byte", path);
                return -EINVAL;
        }
        buf[len] = '\0';
        *ret = buf;
        return 0;
}
