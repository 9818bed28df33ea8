/* SPDX-License-Identifier: MIT */
/* Precedence: command line > TWINCTL_BROKER (URL only) > the configuration file > defaults. */
#include "twinctl-conf.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "twin-model.h"

#define PASSWORD_FILE_MAX 4096

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

int twinctl_conf_load(TwinctlArgs *args, const char *path)
{
        _cleanup_(conf_parse_done) ConfParse p = { .args = args, .path = path };
        const char *env;
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
        } else if (errno != ENOENT)
                return log_error_errno(negative_errno(), "Failed to open %s", path);

        env = getenv("TWINCTL_BROKER");
        if (!args->broker_url && env && *env && set_string(&args->broker_url, env) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        fill(&args->broker_url, &p.url);
        fill(&args->username, &p.username);
        fill(&args->password_file, &p.password_file);
        fill(&args->cafile, &p.cafile);
        fill(&args->certfile, &p.certfile);
        fill(&args->keyfile, &p.keyfile);
        fill(&args->topic_root, &p.topic_root);

        if (!args->broker_url && set_string(&args->broker_url, TWINCTL_BROKER_DEFAULT) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
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
        _cleanup_free_ char *buf = NULL;
        size_t n;
        FILE *f;

        f = fopen(path, "re");
        if (!f)
                return log_error_errno(negative_errno(), "Failed to open password file %s", path);
        buf = malloc(PASSWORD_FILE_MAX + 1);
        if (!buf) {
                fclose(f);
                return log_error_errno(-ENOMEM, "Out of memory");
        }
        n = fread(buf, 1, PASSWORD_FILE_MAX + 1, f);
        if (ferror(f)) {
                fclose(f);
                return log_error_errno(-EIO, "Failed to read password file %s", path);
        }
        fclose(f);
        if (n > PASSWORD_FILE_MAX) {
                log_error("password file %s is larger than %d bytes", path, PASSWORD_FILE_MAX);
                return -E2BIG;
        }
        if (memchr(buf, '\0', n)) {
                log_error("password file %s contains a NUL byte", path);
                return -EINVAL;
        }
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0';
        *ret = TAKE_PTR(buf);
        return 0;
}
