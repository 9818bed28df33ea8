/* SPDX-License-Identifier: MIT */
/* Precedence: command line > TWINCTL_BROKER (URL only) > the configuration file > defaults. */
#include "twinctl-conf.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker-url.h"
#include "log.h"
#include "macro.h"
#include "secret-file.h"
#include "twin-model.h"

typedef struct ConfParse {
        TwinctlArgs *args;
        const char *path;
        /* Values from the file; applied only where the command line left a gap. */
        char *url, *username, *password_file, *cafile, *certfile, *keyfile, *topic_root;
        int error;
} ConfParse;

static int set_string(char **dst, const char *value)
{
        char *s = strdup(value);

        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

/* Debian's inih is built without INI_HANDLER_LINENO: warnings name the file, not the line. */
static int conf_handler(void *user, const char *section, const char *name, const char *value)
{
        ConfParse *p = user;
        char **dst = NULL;

        if (strcmp(section, "broker") != 0) {
                log_warning("%s: unknown section [%s], ignoring", p->path, section);
                return 1;
        }
        if (strcmp(name, "url") == 0)
                dst = &p->url;
        else if (strcmp(name, "username") == 0)
                dst = &p->username;
        else if (strcmp(name, "password_file") == 0)
                dst = &p->password_file;
        else if (strcmp(name, "cafile") == 0)
                dst = &p->cafile;
        else if (strcmp(name, "certfile") == 0)
                dst = &p->certfile;
        else if (strcmp(name, "keyfile") == 0)
                dst = &p->keyfile;
        else if (strcmp(name, "topic_root") == 0)
                dst = &p->topic_root;
        else {
                log_warning("%s: unknown key '%s' in [broker], ignoring", p->path, name);
                return 1;
        }
        if (!*value) {
                /* An empty value leaves the setting to the default. */
                free(*dst);
                *dst = NULL;
                return 1;
        }
        if (set_string(dst, value) < 0) {
                p->error = -ENOMEM;
                return 0;
        }
        return 1;
}

/* Moves *from into *to when *to is still unset. */
static void fill(char **to, char **from)
{
        if (!*to && *from)
                *to = TAKE_PTR(*from);
}

static void conf_parse_done(ConfParse *p)
{
        free(p->url);
        free(p->username);
        free(p->password_file);
        free(p->cafile);
        free(p->certfile);
        free(p->keyfile);
        free(p->topic_root);
}

int twinctl_conf_load(TwinctlArgs *args, const char *path, bool required)
{
        _cleanup_(conf_parse_done) ConfParse p = { .args = args, .path = path };
        const char *env, *source = "the default";
        char file_source[600], reason[256] = "";
        BrokerUrl *urls = NULL;
        size_t n_urls = 0;
        FILE *f;
        int r;

        f = fopen(path, "re");
        if (f) {
                r = ini_parse_file(f, conf_handler, &p);
                fclose(f);
                if (p.error < 0)
                        return log_error_errno(p.error, "Failed to read %s", path);
                if (r > 0) {
                        log_error("%s:%d: syntax error", path, r);
                        return -EINVAL;
                }
                if (r < 0)
                        return log_error_errno(-EIO, "Failed to read %s", path);
        } else if (errno != ENOENT || required)
                return log_error_errno(negative_errno(), "Failed to open %s", path);

        /* Where the URL comes from, so that a bad one is named by its source. */
        if (args->broker_url)
                source = "--broker";
        env = getenv("TWINCTL_BROKER");
        if (!args->broker_url && env && *env) {
                if (set_string(&args->broker_url, env) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory");
                source = "$TWINCTL_BROKER";
        }
        if (!args->broker_url && p.url) {
                snprintf(file_source, sizeof file_source, "%s: [broker] url", path);
                source = file_source;
        }
        fill(&args->broker_url, &p.url);
        fill(&args->username, &p.username);
        fill(&args->password_file, &p.password_file);
        fill(&args->cafile, &p.cafile);
        fill(&args->certfile, &p.certfile);
        fill(&args->keyfile, &p.keyfile);
        fill(&args->topic_root, &p.topic_root);

        if (!args->broker_url && set_string(&args->broker_url, TWINCTL_BROKER_DEFAULT) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        /* One URL, or the nodes of one clustered broker. */
        r = broker_url_list_parse(args->broker_url, &urls, &n_urls, reason, sizeof reason);
        broker_url_list_free(urls, n_urls);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0) {
                log_error("%s: %s", source, reason[0] ? reason : "not a valid broker URL");
                return -EINVAL;
        }
        if (!args->topic_root && set_string(&args->topic_root, TWIN_TOPIC_ROOT_DEFAULT) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        if (!twin_topic_root_is_valid(args->topic_root)) {
                log_error("invalid topic root '%s': it must be non-empty, without '+', '#', and "
                          "not start or end with '/'",
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
