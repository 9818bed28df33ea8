/* SPDX-License-Identifier: MIT */
#pragma once

/* twind's configuration: /etc/twind/twind.conf (INI, parsed by libinih), then command-line
 * overrides. Every key is described in man/twind.conf.5.scd. */

#include <stdbool.h>
#include <stdint.h>

#include "macro.h"

#define TWIND_CONFIG_PATH_DEFAULT    "/etc/twind/twind.conf"
#define TWIND_BROKER_URL_DEFAULT     "mqtt://127.0.0.1:1883"
#define TWIND_STATE_DIR_DEFAULT      "/var/lib/twind"
#define TWIND_CONTROL_SOCKET_DEFAULT "/run/twind/control.sock"
#define TWIND_KEEPALIVE_DEFAULT      60
#define TWIND_APPLY_TIMEOUT_DEFAULT  60 /* seconds */

typedef struct TwindConfig {
        char *path; /* the file it came from, NULL when none was read */

        /* [broker] */
        char *broker_url;
        char *username;
        char *password_file;
        char *cafile;
        char *certfile;
        char *keyfile;
        unsigned keepalive; /* seconds, 5..3600 */
        char *topic_root;

        /* [device] */
        char *device_id;

        /* [apply] */
        char *apply_command;         /* NULL: accept configurations as they are */
        uint64_t apply_timeout_usec; /* > 0 */

        /* [state] */
        char *state_dir;

        /* [control] */
        char *control_socket;
} TwindConfig;

/* Defaults only. Returns 0 or -ENOMEM. */
int twind_config_new(TwindConfig **ret);

/*
 * Reads path into c, key by key over the defaults. A missing file is -ENOENT when required is
 * true and ignored otherwise; anything but a regular file (a FIFO would block) is -EISDIR or
 * -EINVAL. Unknown sections or keys, bad values, and syntax errors are -EINVAL with one line in
 * err naming the file, the line, the key and what is wrong.
 */
int twind_config_load_file(TwindConfig *c, const char *path, bool required, char *err,
                           size_t errlen);

/* Checks the whole configuration after overrides (device id present and valid, URL parses, ...).
 * Returns 0 or -EINVAL with one line in err. */
int twind_config_verify(const TwindConfig *c, char *err, size_t errlen);

/* Replaces *field with a copy of value (NULL clears). Returns 0 or -ENOMEM. */
int twind_config_set_string(char **field, const char *value);

/* Replaces a relative [broker] cafile, certfile or keyfile by its path in $CREDENTIALS_DIRECTORY
 * (a systemd credential, as for password_file). Returns 0 or -EINVAL with one line in err. */
int twind_config_resolve_credentials(TwindConfig *c, char *err, size_t errlen);

/* Reads the password file named by the configuration (credential-aware: a relative name is
 * looked up in $CREDENTIALS_DIRECTORY). Strips one trailing newline. Warns when the file is
 * readable by others. Refuses anything but a regular file. Returns 0 with *ret NULL when none is
 * configured. */
int twind_config_read_password(const TwindConfig *c, char **ret, char *err, size_t errlen);

TwindConfig *twind_config_free(TwindConfig *c);
DEFINE_FREE_FUNC(TwindConfig, twind_config_free)
