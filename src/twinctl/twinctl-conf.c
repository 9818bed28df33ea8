/* SPDX-License-Identifier: MIT */
/*
 * Where twinctl's service settings come from, lowest first: the defaults; [broker] of
 * /etc/twind/twinctl.conf, then of the user's ~/.config/twinctl/twinctl.conf; [profile NAME] of
 * the same two files (--profile NAME, $TWINCTL_PROFILE); $TWINCTL_BROKER and $TWINCTL_AZURE;
 * the command line. --config FILE reads that file instead of both. Every value remembers its
 * source, so that a bad one is named by it.
 */
#include "twinctl-conf.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker-url.h"
#include "conf-file.h"
#include "log.h"
#include "macro.h"
#include "secret-file.h"
#include "strv.h"
#include "twin-model.h"

enum TwinctlKey {
        TWINCTL_KEY_URL,
        TWINCTL_KEY_USERNAME,
        TWINCTL_KEY_PASSWORD_FILE,
        TWINCTL_KEY_CAFILE,
        TWINCTL_KEY_CERTFILE,
        TWINCTL_KEY_KEYFILE,
        TWINCTL_KEY_TOPIC_ROOT,
        TWINCTL_KEY_AZURE,
        TWINCTL_KEY_DIALECT,
        TWINCTL_KEY_SHADOW,
        _TWINCTL_KEY_MAX,
};

#define NO_FIELD SIZE_MAX

/* A key: its name in a section, the field of TwinctlArgs it fills (NO_FIELD: handled apart),
 * the command-line option and the environment variable that set it too. */
static const struct {
        const char *name;
        size_t offset;
        const char *option, *env;
} keys[_TWINCTL_KEY_MAX] = {
        [TWINCTL_KEY_URL] = { "url", offsetof(TwinctlArgs, broker_url), "--broker",
                              "TWINCTL_BROKER" },
        [TWINCTL_KEY_USERNAME] = { "username", offsetof(TwinctlArgs, username), "--username" },
        [TWINCTL_KEY_PASSWORD_FILE] = { "password_file", offsetof(TwinctlArgs, password_file),
                                        "--password-file" },
        [TWINCTL_KEY_CAFILE] = { "cafile", offsetof(TwinctlArgs, cafile), "--cafile" },
        [TWINCTL_KEY_CERTFILE] = { "certfile", offsetof(TwinctlArgs, certfile), "--certfile" },
        [TWINCTL_KEY_KEYFILE] = { "keyfile", offsetof(TwinctlArgs, keyfile), "--keyfile" },
        [TWINCTL_KEY_TOPIC_ROOT] = { "topic_root", offsetof(TwinctlArgs, topic_root),
                                     "--topic-root" },
        [TWINCTL_KEY_AZURE] = { "azure", offsetof(TwinctlArgs, azure_file), "--azure",
                                "TWINCTL_AZURE" },
        [TWINCTL_KEY_DIALECT] = { "dialect", NO_FIELD, "--dialect" },
        [TWINCTL_KEY_SHADOW] = { "shadow", offsetof(TwinctlArgs, shadow), "--shadow" },
};

#define PROFILE_PREFIX "profile "

/* A value from a file, and where: "FILE:LINE: [section] key". */
typedef struct Setting {
        char *value;
        char *source;
} Setting;

typedef struct ConfParse {
        const char *profile;              /* the profile asked for, NULL: none */
        Setting base[_TWINCTL_KEY_MAX];   /* [broker], the last file's winning */
        Setting chosen[_TWINCTL_KEY_MAX]; /* [profile <profile>] */
        char **profiles;                  /* every profile the files define */
        const char *path;
} ConfParse;

static void conf_parse_done(ConfParse *p)
{
        for (int k = 0; k < _TWINCTL_KEY_MAX; k++) {
                free(p->base[k].value);
                free(p->base[k].source);
                free(p->chosen[k].value);
                free(p->chosen[k].source);
        }
        strv_free(p->profiles);
}

static int set_string(char **dst, const char *value)
{
        char *s = value ? strdup(value) : NULL;

        if (value && !s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

static bool profile_name_is_valid(const char *s)
{
        size_t n = strlen(s);

        return n > 0 && n <= 64 &&
               strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

static bool conf_section(void *userdata, const char *section)
{
        return strcmp(section, "broker") == 0 ||
               (strncmp(section, PROFILE_PREFIX, strlen(PROFILE_PREFIX)) == 0 &&
                profile_name_is_valid(section + strlen(PROFILE_PREFIX)));
}

static int key_find(const char *name)
{
        for (int k = 0; k < _TWINCTL_KEY_MAX; k++)
                if (strcmp(keys[k].name, name) == 0)
                        return k;
        return -1;
}

static bool dialect_is_valid(const char *s)
{
        return strcmp(s, "standard") == 0 || strcmp(s, "azure") == 0 || strcmp(s, "aws") == 0;
}

static int conf_key(void *userdata, const char *section, const char *name, const char *value,
                    unsigned line, char *err, size_t errlen)
{
        ConfParse *p = userdata;
        const char *profile = NULL;
        Setting *slot = NULL;
        int k = key_find(name);

        if (k < 0) {
                snprintf(err, errlen, "unknown key '%s' in [%s]", name, section);
                return -EINVAL;
        }
        if (k == TWINCTL_KEY_DIALECT && *value && !dialect_is_valid(value)) {
                snprintf(err, errlen, "[%s] dialect: '%s' is not standard, azure or aws", section,
                         value);
                return -EINVAL;
        }
        if (strncmp(section, PROFILE_PREFIX, strlen(PROFILE_PREFIX)) == 0) {
                profile = section + strlen(PROFILE_PREFIX);
                if (!strv_contains(p->profiles, profile) && strv_extend(&p->profiles, profile) < 0)
                        return -ENOMEM;
                if (p->profile && strcmp(profile, p->profile) == 0)
                        slot = &p->chosen[k];
        } else
                slot = &p->base[k];
        if (!slot)
                return 0; /* another profile: checked, not used */
        /* An empty value brings back what a lower layer says (in the end the default). */
        if (set_string(&slot->value, *value ? value : NULL) < 0)
                return -ENOMEM;
        free(slot->source);
        if (asprintf(&slot->source, "%s:%u: [%s] %s", p->path, line, section, name) < 0) {
                slot->source = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* Reads one file into p; a missing one is fine unless required. */
static int conf_read(ConfParse *p, const char *path, bool required)
{
        static const ConfFileCallbacks callbacks = {
                .section = conf_section,
                .key = conf_key,
        };
        char err[700];
        int r;

        p->path = path;
        r = conf_file_parse(path, &callbacks, p, err, sizeof err);
        if (r == -ENOENT && !required)
                return 0;
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0) {
                log_error("%s", err);
                return r;
        }
        return 0;
}

/* The user's own file: $XDG_CONFIG_HOME/twinctl/twinctl.conf, else
 * $HOME/.config/twinctl/twinctl.conf; NULL when neither variable says. */
static char *user_conf_path(void)
{
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        char *path = NULL;

        if (xdg && xdg[0] == '/') {
                if (asprintf(&path, "%s/twinctl/twinctl.conf", xdg) < 0)
                        return NULL;
        } else if (home && home[0] == '/') {
                if (asprintf(&path, "%s/.config/twinctl/twinctl.conf", home) < 0)
                        return NULL;
        }
        return path;
}

static void log_profiles_defined(const ConfParse *p, const char *files)
{
        _cleanup_free_ char *list = p->profiles ? strv_join(p->profiles, ", ") : NULL;

        log_error("profile '%s' is not defined in %s (%s%s)", p->profile, files,
                  list ? "profiles there: " : "no profiles there", list ? list : "");
}

int twinctl_conf_load(TwinctlArgs *args, const char *system_path)
{
        _cleanup_(conf_parse_done) ConfParse p = { 0 };
        _cleanup_free_ char *user_path = NULL, *files = NULL;
        const char *source[_TWINCTL_KEY_MAX] = { 0 }, *env;
        char reason[256] = "";
        BrokerUrl *urls = NULL;
        size_t n_urls = 0;
        int r;

        env = getenv("TWINCTL_PROFILE");
        p.profile = args->profile ? args->profile : env && *env ? env : NULL;
        if (p.profile && !profile_name_is_valid(p.profile)) {
                log_error("%s: '%s' is not a profile name (letters, digits, - _ .)",
                          args->profile ? "--profile" : "$TWINCTL_PROFILE", p.profile);
                return -EINVAL;
        }

        if (args->config_path) {
                r = conf_read(&p, args->config_path, true);
                files = strdup(args->config_path);
        } else {
                user_path = user_conf_path();
                r = conf_read(&p, system_path, false);
                if (r >= 0 && user_path)
                        r = conf_read(&p, user_path, false);
                if (asprintf(&files, "%s%s%s", system_path, user_path ? " and " : "",
                             user_path ? user_path : "") < 0)
                        files = NULL;
        }
        if (r < 0)
                return r;
        if (!files)
                return log_error_errno(-ENOMEM, "Out of memory");
        if (p.profile && !strv_contains(p.profiles, p.profile)) {
                log_profiles_defined(&p, files);
                return -EINVAL;
        }

        /* Highest first: the command line, the environment, the profile, [broker]. */
        for (int k = 0; k < _TWINCTL_KEY_MAX; k++) {
                char **field =
                    keys[k].offset == NO_FIELD ? NULL : (char **)((char *)args + keys[k].offset);
                const Setting *from = p.chosen[k].value ? &p.chosen[k]
                                      : p.base[k].value ? &p.base[k]
                                                        : NULL;

                if (k == TWINCTL_KEY_DIALECT) {
                        if (args->dialect_given)
                                source[k] = keys[k].option;
                        else if (from) {
                                args->aws = strcmp(from->value, "aws") == 0;
                                args->dialect_azure = strcmp(from->value, "azure") == 0;
                                source[k] = from->source;
                        }
                        continue;
                }
                if (*field) {
                        source[k] = keys[k].option;
                        continue;
                }
                env = keys[k].env ? getenv(keys[k].env) : NULL;
                if (env && *env) {
                        if (set_string(field, env) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory");
                        source[k] = k == TWINCTL_KEY_URL ? "$TWINCTL_BROKER" : "$TWINCTL_AZURE";
                        continue;
                }
                if (from) {
                        if (set_string(field, from->value) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory");
                        source[k] = from->source;
                }
        }

        /* What the settings say together. */
        if (args->dialect_azure && !args->azure_file) {
                log_error("%s: the azure dialect needs the service connection string: --azure "
                          "FILE, $TWINCTL_AZURE or an azure key",
                          source[TWINCTL_KEY_DIALECT]);
                return -EINVAL;
        }
        if (args->azure_file && args->aws) {
                log_error("%s and %s: IoT Hub and AWS IoT cannot be used together",
                          source[TWINCTL_KEY_AZURE], source[TWINCTL_KEY_DIALECT]);
                return -EINVAL;
        }
        if (args->shadow && !args->aws) {
                log_error("%s: a shadow is for the aws dialect", source[TWINCTL_KEY_SHADOW]);
                return -EINVAL;
        }

        if (!args->broker_url) {
                if (set_string(&args->broker_url, TWINCTL_BROKER_DEFAULT) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory");
                source[TWINCTL_KEY_URL] = "the default";
        }
        /* One URL, or the nodes of one clustered broker. */
        r = broker_url_list_parse(args->broker_url, &urls, &n_urls, reason, sizeof reason);
        broker_url_list_free(urls, n_urls);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0) {
                log_error("%s: %s", source[TWINCTL_KEY_URL],
                          reason[0] ? reason : "not a valid broker URL");
                return -EINVAL;
        }
        if (!args->topic_root && set_string(&args->topic_root, TWIN_TOPIC_ROOT_DEFAULT) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        if (!twin_topic_root_is_valid(args->topic_root)) {
                log_error("%s: invalid topic root '%s': it must be non-empty, without '+', '#', "
                          "and not start or end with '/'",
                          source[TWINCTL_KEY_TOPIC_ROOT] ? source[TWINCTL_KEY_TOPIC_ROOT]
                                                         : "--topic-root",
                          args->topic_root);
                return -EINVAL;
        }
        return 0;
}

int twinctl_read_password_file(const char *path, char **ret)
{
        char err[600];
        int r;

        r = secret_file_read(path, "password file", ret, NULL, err, sizeof err);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0)
                log_error("%s", err);
        return r;
}
