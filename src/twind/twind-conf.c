/* SPDX-License-Identifier: MIT */
#include "twind-conf.h"

#include <errno.h>
#include <stdarg.h>
#include <grp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker-url.h"
#include "conf-file.h"
#include "config.h"
#include "log.h"
#include "secret-file.h"
#include "strv.h"
#include "twin-model.h"
#include "twind-dialect.h"
#include "twind-trust.h"

#define USEC_PER_MSEC      UINT64_C(1000)
#define USEC_PER_SEC       UINT64_C(1000000)
#define APPLY_TIMEOUT_MAX  (UINT64_C(24) * 3600 * USEC_PER_SEC)
#define TOKEN_LIFETIME_MIN (UINT64_C(5) * USEC_PER_SEC)
/* IoT Hub accepts tokens of any lifetime; a year is far more than a device needs between
 * renewals and keeps the expiry arithmetic far from overflow. */
#define TOKEN_LIFETIME_MAX (UINT64_C(365) * 24 * 3600 * USEC_PER_SEC)
#define TRUST_KEYS_DEFAULT TWIND_SYSCONFDIR "/twind/trusted-keys.d"

/* ---- the keys -------------------------------------------------------------------------------- */

typedef struct ConfigKey ConfigKey;

/* Parses value into the field at field; on error writes what is wrong (after "[s] k: ") to err. */
typedef int (*ConfigParser)(const ConfigKey *k, const char *value, void *field, char *err,
                            size_t errlen);

struct ConfigKey {
        const char *section;
        const char *name;
        ConfigParser parse;
        size_t offset;
        /* The default, as text for the parser; NULL: unset. An empty value in a file restores
         * it. */
        const char *def;
        uint64_t min, max; /* ranges of numbers (in the field's unit) */
};

static int parse_string(const ConfigKey *k, const char *value, void *field, char *err,
                        size_t errlen);
static int parse_seconds(const ConfigKey *k, const char *value, void *field, char *err,
                         size_t errlen);
static int parse_time_span(const ConfigKey *k, const char *value, void *field, char *err,
                           size_t errlen);
static int parse_dialect(const ConfigKey *k, const char *value, void *field, char *err,
                         size_t errlen);
static int parse_group(const ConfigKey *k, const char *value, void *field, char *err,
                       size_t errlen);
static int parse_bool(const ConfigKey *k, const char *value, void *field, char *err, size_t errlen);

#define KEY(s, n, p, f, ...)                                                                       \
        {                                                                                          \
                .section = s, .name = n, .parse = p, .offset = offsetof(TwindConfig, f),           \
                __VA_ARGS__                                                                        \
        }

static const ConfigKey config_keys[_TWIND_KEY_MAX] = {
        [TWIND_KEY_BROKER_DIALECT] =
            KEY("broker", "dialect", parse_dialect, dialect, .def = "standard"),
        [TWIND_KEY_BROKER_URL] =
            KEY("broker", "url", parse_string, broker_url, .def = TWIND_BROKER_URL_DEFAULT),
        [TWIND_KEY_BROKER_USERNAME] = KEY("broker", "username", parse_string, username),
        [TWIND_KEY_BROKER_PASSWORD_FILE] =
            KEY("broker", "password_file", parse_string, password_file),
        [TWIND_KEY_BROKER_CAFILE] = KEY("broker", "cafile", parse_string, cafile),
        [TWIND_KEY_BROKER_CERTFILE] = KEY("broker", "certfile", parse_string, certfile),
        [TWIND_KEY_BROKER_KEYFILE] = KEY("broker", "keyfile", parse_string, keyfile),
        [TWIND_KEY_BROKER_KEEPALIVE] = KEY("broker", "keepalive", parse_seconds, keepalive,
                                           .def = "60", .min = 5, .max = 3600),
        [TWIND_KEY_BROKER_TOPIC_ROOT] =
            KEY("broker", "topic_root", parse_string, topic_root, .def = TWIN_TOPIC_ROOT_DEFAULT),
        [TWIND_KEY_DEVICE_ID] = KEY("device", "id", parse_string, device_id),
        [TWIND_KEY_APPLY_COMMAND] = KEY("apply", "command", parse_string, apply_command),
        [TWIND_KEY_APPLY_TIMEOUT] = KEY("apply", "timeout", parse_time_span, apply_timeout_usec,
                                        .def = "60s", .min = 1, .max = APPLY_TIMEOUT_MAX),
        [TWIND_KEY_STATE_DIRECTORY] =
            KEY("state", "directory", parse_string, state_dir, .def = TWIND_STATE_DIR_DEFAULT),
        [TWIND_KEY_CONTROL_SOCKET] = KEY("control", "socket", parse_string, control_socket,
                                         .def = TWIND_CONTROL_SOCKET_DEFAULT),
        [TWIND_KEY_CONTROL_REPORT_GROUP] =
            KEY("control", "report_group", parse_group, control_report_group),
        [TWIND_KEY_AZURE_CONNECTION_STRING_FILE] =
            KEY("azure", "connection_string_file", parse_string, azure_connection_string_file),
        [TWIND_KEY_AZURE_TOKEN_LIFETIME] =
            KEY("azure", "token_lifetime", parse_time_span, azure_token_lifetime_usec, .def = "1h",
                .min = TOKEN_LIFETIME_MIN, .max = TOKEN_LIFETIME_MAX),
        [TWIND_KEY_AZURE_STATUS_PROPERTY] = KEY("azure", "status_property", parse_string,
                                                azure_status_property, .def = "twinStatus"),
        [TWIND_KEY_AWS_THING] = KEY("aws", "thing", parse_string, aws_thing),
        [TWIND_KEY_AWS_SHADOW] = KEY("aws", "shadow", parse_string, aws_shadow),
        [TWIND_KEY_AWS_STATUS_PROPERTY] =
            KEY("aws", "status_property", parse_string, aws_status_property, .def = "twinStatus"),
        [TWIND_KEY_TRUST_KEYS] =
            KEY("trust", "keys", parse_string, trust_keys, .def = TRUST_KEYS_DEFAULT),
        [TWIND_KEY_TRUST_REQUIRE_SIGNATURE] =
            KEY("trust", "require_signature", parse_bool, require_signature, .def = "no"),
};

static void *key_field(TwindConfig *c, enum TwindConfigKey k)
{
        return (char *)c + config_keys[k].offset;
}

static bool key_is_string(enum TwindConfigKey k)
{
        /* A TwindGroup starts with its name. */
        return config_keys[k].parse == parse_string || config_keys[k].parse == parse_dialect ||
               config_keys[k].parse == parse_group;
}

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

static int parse_string(const ConfigKey *k, const char *value, void *field, char *err,
                        size_t errlen)
{
        return twind_config_set_string(field, value);
}

static int parse_dialect(const ConfigKey *k, const char *value, void *field, char *err,
                         size_t errlen)
{
        if (!twin_dialect_exists(value)) {
                snprintf(err, errlen, "'%s' is not a dialect (%s)", value, twin_dialect_names());
                return -EINVAL;
        }
        return twind_config_set_string(field, value);
}

/* A group name or number, resolved now: a group that does not exist is an error when the
 * configuration is read, not a silent refusal at the first report. */
static int parse_group(const ConfigKey *k, const char *value, void *field, char *err, size_t errlen)
{
        TwindGroup *g = field;
        struct group grp, *found = NULL;
        char buf[4096];
        unsigned long n;
        char *end;
        int r;

        errno = 0;
        n = strtoul(value, &end, 10);
        if (value[0] >= '0' && value[0] <= '9' && *end == '\0' && errno == 0 &&
            n < (unsigned long)(gid_t)-1) {
                r = twind_config_set_string(&g->name, value);
                if (r == 0)
                        g->gid = (gid_t)n;
                return r;
        }
        r = getgrnam_r(value, &grp, buf, sizeof buf, &found);
        if (r != 0 || !found) {
                snprintf(err, errlen, "group '%s' %s", value,
                         r != 0 ? strerror(r) : "does not exist");
                return -EINVAL;
        }
        r = twind_config_set_string(&g->name, value);
        if (r == 0)
                g->gid = found->gr_gid;
        return r;
}

/* yes or no, and the other spellings of systemd's booleans (true/false, on/off, 1/0). */
static int parse_bool(const ConfigKey *k, const char *value, void *field, char *err, size_t errlen)
{
        static const char *const yes[] = { "yes", "true", "on", "1" };
        static const char *const no[] = { "no", "false", "off", "0" };

        for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
                if (strcasecmp(value, yes[i]) == 0) {
                        *(bool *)field = true;
                        return 0;
                }
                if (strcasecmp(value, no[i]) == 0) {
                        *(bool *)field = false;
                        return 0;
                }
        }
        snprintf(err, errlen, "'%s' is not a boolean (yes or no)", value);
        return -EINVAL;
}

static int parse_seconds(const ConfigKey *k, const char *value, void *field, char *err,
                         size_t errlen)
{
        unsigned long v;
        char *end;

        errno = 0;
        v = strtoul(value, &end, 10);
        if (value[0] < '0' || value[0] > '9' || *end != '\0' || errno != 0 || v < k->min ||
            v > k->max) {
                snprintf(err, errlen, "'%s' is not a number of seconds between %llu and %llu",
                         value, (unsigned long long)k->min, (unsigned long long)k->max);
                return -EINVAL;
        }
        *(unsigned *)field = (unsigned)v;
        return 0;
}

/* Plain seconds, or systemd-style spans such as "90s", "2min", "1m 30s", "500ms", at most max. */
static int time_span_from_string(const char *s, uint64_t max, uint64_t *ret)
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
                { "days", 86400 * USEC_PER_SEC },
                { "day", 86400 * USEC_PER_SEC },
                { "d", 86400 * USEC_PER_SEC },
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
                if (errno != 0 || n > max)
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
                if ((uint64_t)n > (max - total) / unit)
                        return -ERANGE;
                total += (uint64_t)n * unit;
                any = true;
        }
        if (!any)
                return -EINVAL;
        *ret = total;
        return 0;
}

/* "24h", "5s", "365d": a limit for people. */
static void format_span(uint64_t usec, char buf[static 32])
{
        if (usec % (86400 * USEC_PER_SEC) == 0 && usec >= 2 * 86400 * USEC_PER_SEC)
                snprintf(buf, 32, "%llud", (unsigned long long)(usec / (86400 * USEC_PER_SEC)));
        else if (usec % (3600 * USEC_PER_SEC) == 0)
                snprintf(buf, 32, "%lluh", (unsigned long long)(usec / (3600 * USEC_PER_SEC)));
        else if (usec % USEC_PER_SEC == 0)
                snprintf(buf, 32, "%llus", (unsigned long long)(usec / USEC_PER_SEC));
        else
                snprintf(buf, 32, "%lluus", (unsigned long long)usec);
}

static int parse_time_span(const ConfigKey *k, const char *value, void *field, char *err,
                           size_t errlen)
{
        uint64_t usec;

        if (time_span_from_string(value, k->max, &usec) < 0 || usec < k->min) {
                char lo[32], hi[32];

                format_span(k->max, hi);
                if (k->min <= 1)
                        snprintf(err, errlen,
                                 "'%s' is not a time span above 0 and at most %s (such as 60, "
                                 "90s, 2min, 1m30s)",
                                 value, hi);
                else {
                        format_span(k->min, lo);
                        snprintf(err, errlen,
                                 "'%s' is not a time span from %s to %s (such as 90s, 30min, "
                                 "1h)",
                                 value, lo, hi);
                }
                return -EINVAL;
        }
        *(uint64_t *)field = usec;
        return 0;
}

/* Sets key k from value with its parser (the default for an empty value). */
static int key_set(TwindConfig *c, enum TwindConfigKey k, const char *value, char *err,
                   size_t errlen)
{
        const ConfigKey *key = &config_keys[k];

        if (value[0] == '\0') {
                if (!key->def)
                        return twind_config_set_string(key_field(c, k), NULL);
                value = key->def;
        }
        return key->parse(key, value, key_field(c, k), err, errlen);
}

static int key_find(const char *section, const char *name)
{
        for (int k = 0; k < _TWIND_KEY_MAX; k++)
                if (strcmp(config_keys[k].section, section) == 0 &&
                    strcmp(config_keys[k].name, name) == 0)
                        return k;
        return -1;
}

static bool section_is_known(const char *s)
{
        for (int k = 0; k < _TWIND_KEY_MAX; k++)
                if (strcmp(config_keys[k].section, s) == 0)
                        return true;
        return false;
}

int twind_config_new(TwindConfig **ret)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[256];
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        for (int k = 0; k < _TWIND_KEY_MAX; k++)
                if (config_keys[k].def) {
                        r = config_keys[k].parse(&config_keys[k], config_keys[k].def,
                                                 key_field(c, k), err, sizeof(err));
                        if (r < 0)
                                return r;
                }
        *ret = TAKE_PTR(c);
        return 0;
}

TwindConfig *twind_config_free(TwindConfig *c)
{
        if (!c)
                return NULL;
        for (int k = 0; k < _TWIND_KEY_MAX; k++)
                if (key_is_string(k))
                        free(*(char **)key_field(c, k));
        free(c->path);
        strv_free(c->files);
        free(c);
        return NULL;
}

const char *twind_config_where(const TwindConfig *c, enum TwindConfigKey key, char *buf, size_t len)
{
        const TwindConfigOrigin *o = &c->origin[key];

        if (o->option)
                snprintf(buf, len, "%s", o->option);
        else if (o->file)
                snprintf(buf, len, "%s:%u: [%s] %s", o->file, o->line, config_keys[key].section,
                         config_keys[key].name);
        else
                snprintf(buf, len, "[%s] %s", config_keys[key].section, config_keys[key].name);
        return buf;
}

int twind_config_set_option(TwindConfig *c, enum TwindConfigKey key, const char *option,
                            const char *value, char *err, size_t errlen)
{
        char reason[256] = "";
        int r;

        r = key_set(c, key, value, reason, sizeof(reason));
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                snprintf(err, errlen, "%s: %s", option, reason);
                return r;
        }
        c->origin[key] = (TwindConfigOrigin){ .option = option };
        return 0;
}

/* ---- reading a file -------------------------------------------------------------------------- */

typedef struct ParseContext {
        TwindConfig *config;
        const char *path; /* the copy in config->files */
} ParseContext;

static bool config_section(void *userdata, const char *section)
{
        return section_is_known(section);
}

static int config_key(void *userdata, const char *section, const char *name, const char *value,
                      unsigned line, char *err, size_t errlen)
{
        ParseContext *ctx = userdata;
        char reason[256] = "";
        int k, r;

        k = key_find(section, name);
        if (k < 0) {
                snprintf(err, errlen, "unknown key '%s' in section [%s]", name, section);
                return -EINVAL;
        }
        r = key_set(ctx->config, k, value, reason, sizeof(reason));
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                snprintf(err, errlen, "[%s] %s: %s", section, name, reason);
                return r;
        }
        ctx->config->origin[k] = (TwindConfigOrigin){ .file = ctx->path, .line = line };
        return 0;
}

/* Keeps a copy of path in c->files for the origins; returns the copy. */
static const char *config_add_file(TwindConfig *c, const char *path)
{
        size_t n = strv_length(c->files);
        char **l, *copy;

        for (size_t i = 0; i < n; i++)
                if (strcmp(c->files[i], path) == 0)
                        return c->files[i];
        copy = strdup(path);
        if (!copy)
                return NULL;
        l = realloc(c->files, (n + 2) * sizeof(char *));
        if (!l) {
                free(copy);
                return NULL;
        }
        l[n] = copy;
        l[n + 1] = NULL;
        c->files = l;
        return copy;
}

int twind_config_load_file(TwindConfig *c, const char *path, bool required, char *err,
                           size_t errlen)
{
        static const ConfFileCallbacks callbacks = {
                .section = config_section,
                .key = config_key,
        };
        ParseContext ctx = { .config = c };
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        ctx.path = config_add_file(c, path);
        if (!ctx.path)
                return -ENOMEM;
        r = conf_file_parse(path, &callbacks, &ctx, err, errlen);
        if (r == -ENOENT && !required) {
                if (err && errlen > 0)
                        err[0] = '\0';
                return 0;
        }
        if (r < 0)
                return r;
        return twind_config_set_string(&c->path, path);
}

/* ---- checking the whole -------------------------------------------------------------------- */

/* Writes "WHERE: reason" for key into err; returns -EINVAL. */
static int key_error(const TwindConfig *c, enum TwindConfigKey key, char *err, size_t errlen,
                     const char *fmt, ...) _printf_(5, 6);
static int key_error(const TwindConfig *c, enum TwindConfigKey key, char *err, size_t errlen,
                     const char *fmt, ...)
{
        char where[600];
        va_list ap;
        int k;

        if (!err || errlen == 0)
                return -EINVAL;
        k = snprintf(err, errlen, "%s: ", twind_config_where(c, key, where, sizeof(where)));
        if (k < 0 || (size_t)k >= errlen)
                return -EINVAL;
        va_start(ap, fmt);
        vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

static bool is_set(const char *s)
{
        return s && s[0] != '\0';
}

/* AWS IoT's thing and shadow names: A-Z a-z 0-9 : _ -, 1 to max characters. */
static bool aws_name_is_valid(const char *s, size_t max)
{
        size_t n = s ? strlen(s) : 0;

        return n > 0 && n <= max &&
               strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-") == n;
}

int twind_config_verify(const TwindConfig *c, char *err, size_t errlen)
{
        BrokerUrl *urls = NULL;
        size_t n_urls = 0;
        char reason[256] = "";
        bool standard = strcmp(c->dialect, "standard") == 0;
        bool azure = strcmp(c->dialect, "azure") == 0;
        bool aws = strcmp(c->dialect, "aws") == 0;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';

        /* The Azure dialect takes the device id from the connection string when none is set
         * (twin_dialect_prepare_config() fills it in). */
        if (!is_set(c->device_id) && !azure)
                return key_error(c, TWIND_KEY_DEVICE_ID, err, errlen,
                                 "missing (set it in %s or pass --device-id)",
                                 c->path ? c->path : TWIND_CONFIG_PATH_DEFAULT);
        if (is_set(c->device_id) && !twin_device_id_is_valid(c->device_id))
                return key_error(c, TWIND_KEY_DEVICE_ID, err, errlen,
                                 "'%s' is not a valid device id (1 to %d characters of A-Z a-z "
                                 "0-9 - . _ :)",
                                 c->device_id, TWIN_DEVICE_ID_MAX);

        if (!azure) {
                if (!is_set(c->broker_url))
                        return key_error(c, TWIND_KEY_BROKER_URL, err, errlen, "missing");
                r = broker_url_list_parse(c->broker_url, &urls, &n_urls, reason, sizeof reason);
                broker_url_list_free(urls, n_urls);
                if (r == -ENOMEM) {
                        snprintf(err, errlen, "out of memory");
                        return -ENOMEM;
                }
                /* broker_url_list_parse's reason already quotes the URL. */
                if (r < 0)
                        return key_error(c, TWIND_KEY_BROKER_URL, err, errlen, "%s",
                                         reason[0] ? reason : "not a valid broker address");
        }

        if (standard && (!c->topic_root || !twin_topic_root_is_valid(c->topic_root)))
                return key_error(c, TWIND_KEY_BROKER_TOPIC_ROOT, err, errlen,
                                 "'%s' is not a valid topic root (non-empty, no '+' or '#', no "
                                 "leading or trailing '/')",
                                 c->topic_root ? c->topic_root : "");

        if (is_set(c->password_file) && !is_set(c->username))
                return key_error(c, TWIND_KEY_BROKER_PASSWORD_FILE, err, errlen,
                                 "set without username (MQTT sends a password only with a "
                                 "username)");
        if (is_set(c->certfile) && !is_set(c->keyfile))
                return key_error(c, TWIND_KEY_BROKER_CERTFILE, err, errlen,
                                 "set without keyfile (a client certificate needs both)");
        if (is_set(c->keyfile) && !is_set(c->certfile))
                return key_error(c, TWIND_KEY_BROKER_KEYFILE, err, errlen,
                                 "set without certfile (a client certificate needs both)");

        if (is_set(c->apply_command)) {
                _cleanup_strv_free_ char **argv = NULL;

                r = strv_split_command(c->apply_command, &argv);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        return key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen,
                                         "cannot split '%s' into words (an unterminated quote "
                                         "or a trailing backslash)",
                                         c->apply_command);
                /* No search through $PATH: which program runs must not depend on the
                 * environment the agent was started in. */
                if (argv[0][0] != '/')
                        return key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen,
                                         "'%s' is not an absolute path", argv[0]);
        }

        if (!c->state_dir || c->state_dir[0] != '/')
                return key_error(c, TWIND_KEY_STATE_DIRECTORY, err, errlen,
                                 "'%s' is not an absolute path", c->state_dir ? c->state_dir : "");
        if (!c->trust_keys || c->trust_keys[0] != '/')
                return key_error(c, TWIND_KEY_TRUST_KEYS, err, errlen,
                                 "'%s' is not an absolute path",
                                 c->trust_keys ? c->trust_keys : "");
        if (!c->control_socket || c->control_socket[0] != '/')
                return key_error(c, TWIND_KEY_CONTROL_SOCKET, err, errlen,
                                 "'%s' is not an absolute path",
                                 c->control_socket ? c->control_socket : "");
        if (strlen(c->control_socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
                return key_error(c, TWIND_KEY_CONTROL_SOCKET, err, errlen,
                                 "'%s' is too long for a socket path (at most %zu characters)",
                                 c->control_socket,
                                 sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);

        if (azure && !is_set(c->azure_connection_string_file))
                return key_error(c, TWIND_KEY_AZURE_CONNECTION_STRING_FILE, err, errlen,
                                 "missing: the azure dialect needs the device's connection "
                                 "string");
        if (azure && !twin_limits_key_is_valid(&twin_limits_azure, c->azure_status_property))
                return key_error(c, TWIND_KEY_AZURE_STATUS_PROPERTY, err, errlen,
                                 "'%s' is not a valid IoT Hub property name",
                                 c->azure_status_property);

        if (aws) {
                if (strncmp(c->broker_url, "mqtts://", 8) != 0)
                        return key_error(c, TWIND_KEY_BROKER_URL, err, errlen,
                                         "'%s': AWS IoT needs mqtts:// (mutual TLS)",
                                         c->broker_url);
                if (!is_set(c->certfile))
                        return key_error(c, TWIND_KEY_BROKER_CERTFILE, err, errlen,
                                         "missing: AWS IoT authenticates the device by its "
                                         "client certificate (certfile and keyfile)");
                if (is_set(c->aws_thing) && !aws_name_is_valid(c->aws_thing, 128))
                        return key_error(c, TWIND_KEY_AWS_THING, err, errlen,
                                         "'%s' is not a thing name (1 to 128 characters of A-Z "
                                         "a-z 0-9 : _ -)",
                                         c->aws_thing);
                if (!is_set(c->aws_thing) && !aws_name_is_valid(c->device_id, 128))
                        return key_error(c, TWIND_KEY_DEVICE_ID, err, errlen,
                                         "'%s' is not a thing name (A-Z a-z 0-9 : _ -): set "
                                         "[aws] thing",
                                         c->device_id);
                if (is_set(c->aws_shadow) && !aws_name_is_valid(c->aws_shadow, 64))
                        return key_error(c, TWIND_KEY_AWS_SHADOW, err, errlen,
                                         "'%s' is not a shadow name (1 to 64 characters of A-Z "
                                         "a-z 0-9 : _ -)",
                                         c->aws_shadow);
                if (!twin_limits_key_is_valid(&twin_limits_aws, c->aws_status_property))
                        return key_error(c, TWIND_KEY_AWS_STATUS_PROPERTY, err, errlen,
                                         "'%s' is not a valid property name",
                                         c->aws_status_property);
        }
        return 0;
}

/* ---- files ----------------------------------------------------------------------------------- */

/* A relative name is a systemd credential (LoadCredential=NAME:...): the file of that name in
 * $CREDENTIALS_DIRECTORY. An absolute path is used as it is (*ret NULL). */
static int credential_path(const TwindConfig *c, enum TwindConfigKey key, const char *value,
                           char **ret, char *err, size_t errlen)
{
        const char *creds;

        *ret = NULL;
        if (value[0] == '/')
                return 0;
        creds = getenv("CREDENTIALS_DIRECTORY");
        if (!creds || creds[0] == '\0')
                return key_error(c, key, err, errlen,
                                 "'%s' is a relative name but $CREDENTIALS_DIRECTORY is not set "
                                 "(give an absolute path, or use LoadCredential= in the unit)",
                                 value);
        if (asprintf(ret, "%s/%s", creds, value) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

int twind_config_resolve_credentials(TwindConfig *c, char *err, size_t errlen)
{
        static const enum TwindConfigKey files[] = {
                TWIND_KEY_BROKER_CAFILE,
                TWIND_KEY_BROKER_CERTFILE,
                TWIND_KEY_BROKER_KEYFILE,
        };
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
                char **field = key_field(c, files[i]);
                char *path;

                if (!is_set(*field))
                        continue;
                r = credential_path(c, files[i], *field, &path, err, errlen);
                if (r < 0)
                        return r;
                if (path) {
                        free(*field);
                        *field = path;
                }
        }
        return 0;
}

int twind_config_read_secret(const TwindConfig *c, enum TwindConfigKey key, const char *label,
                             char **ret, char *err, size_t errlen)
{
        _cleanup_free_ char *joined = NULL;
        const char *value = *(char *const *)key_field((TwindConfig *)c, key), *path;
        struct stat st;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        if (!is_set(value)) {
                *ret = NULL;
                return 0;
        }
        r = credential_path(c, key, value, &joined, err, errlen);
        if (r < 0)
                return r;
        path = joined ? joined : value;
        r = secret_file_read(path, label, ret, &st, err, errlen);
        if (r < 0)
                return r;
        if (st.st_mode & S_IRWXO)
                log_warning("%s %s is readable by others; chmod 600 it", label, path);
        return 0;
}

int twind_config_read_password(const TwindConfig *c, char **ret, char *err, size_t errlen)
{
        return twind_config_read_secret(c, TWIND_KEY_BROKER_PASSWORD_FILE, "password file", ret,
                                        err, errlen);
}

/* Whether the user running this may read path; an error in err naming key otherwise. */
static int check_readable(const TwindConfig *c, enum TwindConfigKey key, const char *what,
                          char *err, size_t errlen)
{
        const char *value = *(char *const *)key_field((TwindConfig *)c, key);
        _cleanup_free_ char *joined = NULL;
        const char *path;
        struct stat st;
        int r;

        if (!is_set(value))
                return 0;
        r = credential_path(c, key, value, &joined, err, errlen);
        if (r < 0)
                return r;
        path = joined ? joined : value;
        if (stat(path, &st) < 0) {
                r = negative_errno();
                key_error(c, key, err, errlen, "cannot use %s %s: %s", what, path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                key_error(c, key, err, errlen, "%s %s is not a regular file", what, path);
                return -EINVAL;
        }
        if (faccessat(AT_FDCWD, path, R_OK, AT_EACCESS) < 0) {
                r = negative_errno();
                key_error(c, key, err, errlen, "cannot read %s %s: %s", what, path, strerror(-r));
                return r;
        }
        return 0;
}

/* The trusted keys load; and signatures required with no key to check them, which the agent
 * itself only warns about (removing the last key at a reload must still revoke it). */
static int check_trust(const TwindConfig *c, char *err, size_t errlen)
{
        _cleanup_(trust_store_freep) TrustStore *t = NULL;
        char reason[512] = "";
        int r;

        r = trust_store_load(c->trust_keys, &t, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                key_error(c, TWIND_KEY_TRUST_KEYS, err, errlen, "%s", reason);
                return r;
        }
        if (c->require_signature && trust_store_size(t) == 0)
                return key_error(c, TWIND_KEY_TRUST_REQUIRE_SIGNATURE, err, errlen,
                                 "signatures are required but %s holds no trusted key (*.pem): "
                                 "every desired document would be refused",
                                 c->trust_keys);
        return 0;
}

int twind_config_check_files(const TwindConfig *c, char *err, size_t errlen)
{
        static const struct {
                enum TwindConfigKey key;
                const char *what;
        } files[] = {
                { TWIND_KEY_BROKER_PASSWORD_FILE, "password file" },
                { TWIND_KEY_BROKER_CAFILE, "CA file" },
                { TWIND_KEY_BROKER_CERTFILE, "client certificate" },
                { TWIND_KEY_BROKER_KEYFILE, "client key" },
                { TWIND_KEY_AZURE_CONNECTION_STRING_FILE, "connection string file" },
        };
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
                r = check_readable(c, files[i].key, files[i].what, err, errlen);
                if (r < 0)
                        return r;
        }
        r = check_trust(c, err, errlen);
        if (r < 0)
                return r;
        if (is_set(c->apply_command)) {
                _cleanup_strv_free_ char **argv = NULL;
                struct stat st;

                r = strv_split_command(c->apply_command, &argv);
                if (r < 0)
                        return r == -ENOMEM ? r
                                            : key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen,
                                                        "cannot split '%s'", c->apply_command);
                if (stat(argv[0], &st) < 0) {
                        r = negative_errno();
                        key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen, "%s: %s", argv[0],
                                  strerror(-r));
                        return r;
                }
                if (!S_ISREG(st.st_mode)) {
                        key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen,
                                  "%s is not a regular file", argv[0]);
                        return -EINVAL;
                }
                if (faccessat(AT_FDCWD, argv[0], X_OK, AT_EACCESS) < 0) {
                        r = negative_errno();
                        key_error(c, TWIND_KEY_APPLY_COMMAND, err, errlen,
                                  "%s is not executable by this user: %s", argv[0], strerror(-r));
                        return r;
                }
        }
        return 0;
}
