/* SPDX-License-Identifier: MIT */
#pragma once

/* twind's configuration: /etc/twind/twind.conf (INI, parsed by libinih), then command-line
 * overrides. The keys are rows of one table in twind-conf.c (section, name, parser, field,
 * default); every key is described in man/twind.conf.5.scd. Each value remembers where it came
 * from (file and line, or the command-line option), so that every error names it. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "macro.h"

#define TWIND_CONFIG_PATH_DEFAULT    "/etc/twind/twind.conf"
#define TWIND_BROKER_URL_DEFAULT     "mqtt://127.0.0.1:1883"
#define TWIND_STATE_DIR_DEFAULT      "/var/lib/twind"
#define TWIND_CONTROL_SOCKET_DEFAULT "/run/twind/control.sock"
#define TWIND_KEEPALIVE_DEFAULT      60
#define TWIND_APPLY_TIMEOUT_DEFAULT  60 /* seconds */

/* One per key of the table in twind-conf.c, in its order. */
enum TwindConfigKey {
        TWIND_KEY_BROKER_DIALECT,
        TWIND_KEY_BROKER_URL,
        TWIND_KEY_BROKER_USERNAME,
        TWIND_KEY_BROKER_PASSWORD_FILE,
        TWIND_KEY_BROKER_CAFILE,
        TWIND_KEY_BROKER_CERTFILE,
        TWIND_KEY_BROKER_KEYFILE,
        TWIND_KEY_BROKER_KEEPALIVE,
        TWIND_KEY_BROKER_TOPIC_ROOT,
        TWIND_KEY_DEVICE_ID,
        TWIND_KEY_APPLY_COMMAND,
        TWIND_KEY_APPLY_TIMEOUT,
        TWIND_KEY_STATE_DIRECTORY,
        TWIND_KEY_CONTROL_SOCKET,
        TWIND_KEY_CONTROL_REPORT_GROUP,
        TWIND_KEY_AZURE_CONNECTION_STRING_FILE,
        TWIND_KEY_AZURE_TOKEN_LIFETIME,
        TWIND_KEY_AZURE_STATUS_PROPERTY,
        TWIND_KEY_AWS_THING,
        TWIND_KEY_AWS_SHADOW,
        TWIND_KEY_AWS_STATUS_PROPERTY,
        TWIND_KEY_TRUST_KEYS,
        TWIND_KEY_TRUST_REQUIRE_SIGNATURE,
        _TWIND_KEY_MAX,
};

/* Where a value came from: a line of a file, a command-line option, or the default. */
typedef struct TwindConfigOrigin {
        const char *file; /* borrowed from TwindConfig.files; NULL: not from a file */
        unsigned line;
        const char *option; /* static; NULL: not from the command line */
} TwindConfigOrigin;

/* A group named in the configuration, resolved when it is read. The name comes first: the
 * configuration frees it as it frees its strings. */
typedef struct TwindGroup {
        char *name; /* as written; NULL: unset */
        gid_t gid;
} TwindGroup;

typedef struct TwindConfig {
        char *path;   /* the last file read, NULL when none was */
        char **files; /* every file read (strv), for origins */
        TwindConfigOrigin origin[_TWIND_KEY_MAX];

        /* [broker] */
        char *dialect; /* "standard", "azure", "aws": see twin_dialect_exists() */
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
        TwindGroup control_report_group; /* may call "report" too; name NULL: nobody else */

        /* [azure] */
        char *azure_connection_string_file;
        uint64_t azure_token_lifetime_usec;
        char *azure_status_property;

        /* [aws] */
        char *aws_thing;  /* NULL: [device] id */
        char *aws_shadow; /* NULL: the classic (unnamed) shadow */
        char *aws_status_property;

        /* [trust] */
        char *trust_keys;       /* the directory of trusted public keys */
        bool require_signature; /* apply only documents a trusted key signed */
} TwindConfig;

/* Defaults only. Returns 0 or -ENOMEM. */
int twind_config_new(TwindConfig **ret);

/*
 * Reads path into c, key by key over what is there. A missing file is -ENOENT when required is
 * true and ignored otherwise; anything but a regular file (a FIFO would block) is -EISDIR or
 * -EINVAL. Unknown sections or keys, bad values, and syntax errors are -EINVAL with one line in
 * err naming the file, the line, the key and what is wrong.
 */
int twind_config_load_file(TwindConfig *c, const char *path, bool required, char *err,
                           size_t errlen);

/* Sets key from the command-line option named option ("--device-id"), parsed as a value in the
 * file would be. Returns 0, -ENOMEM, or -EINVAL with one line in err naming the option. */
int twind_config_set_option(TwindConfig *c, enum TwindConfigKey key, const char *option,
                            const char *value, char *err, size_t errlen);

/* Checks the whole configuration after overrides (device id present and valid, URL parses, ...).
 * Returns 0 or -EINVAL with one line in err that starts with where the value came from. */
int twind_config_verify(const TwindConfig *c, char *err, size_t errlen);

/* Checks what a start would need from the file system, for --check-config: the apply command
 * exists and is executable, the password, CA, certificate and key files (and a dialect's own
 * files) can be read, the trusted keys load (and there is one when signatures are required),
 * all by the user running the check. Returns 0 or a negative errno with one line in err naming
 * the key, its origin and the file. */
int twind_config_check_files(const TwindConfig *c, char *err, size_t errlen);

/* Writes where key's value came from into buf: "FILE:LINE: [section] key", "--option", or
 * "[section] key" for a default. Returns buf. */
const char *twind_config_where(const TwindConfig *c, enum TwindConfigKey key, char *buf,
                               size_t len);

/* Replaces *field with a copy of value (NULL clears). Returns 0 or -ENOMEM. */
int twind_config_set_string(char **field, const char *value);

/* Replaces a relative [broker] cafile, certfile or keyfile by its path in $CREDENTIALS_DIRECTORY
 * (a systemd credential, as for password_file). Returns 0 or -EINVAL with one line in err. */
int twind_config_resolve_credentials(TwindConfig *c, char *err, size_t errlen);

/* Reads the secret file that key names (credential-aware: a relative name is looked up in
 * $CREDENTIALS_DIRECTORY), with secret_file_read(). Warns when the file is readable by others.
 * Returns 0 with *ret NULL when the key is unset; wipe *ret with secret_free(). */
int twind_config_read_secret(const TwindConfig *c, enum TwindConfigKey key, const char *label,
                             char **ret, char *err, size_t errlen);

/* twind_config_read_secret() of [broker] password_file. */
int twind_config_read_password(const TwindConfig *c, char **ret, char *err, size_t errlen);

TwindConfig *twind_config_free(TwindConfig *c);
DEFINE_FREE_FUNC(TwindConfig, twind_config_free)
