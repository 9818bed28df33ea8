/* SPDX-License-Identifier: MIT */
#pragma once

/* What every twinctl module shares: exit codes, the parsed command line, the verbs. */

#include <stdbool.h>
#include <stdint.h>

/* Exit codes, documented in twinctl(1) and `twinctl --help`. Scripts rely on them: never renumber.
 */
enum TwinctlExit {
        TWINCTL_EXIT_SUCCESS = 0,
        TWINCTL_EXIT_FAILURE = 1,       /* anything not named below */
        TWINCTL_EXIT_USAGE = 2,         /* bad command line */
        TWINCTL_EXIT_DEVICE_FAILED = 3, /* the device reported $status failed */
        TWINCTL_EXIT_TIMEOUT = 4,       /* --timeout (or a default bound) passed */
        TWINCTL_EXIT_CONFLICT = 5,      /* --if-version mismatch, or a concurrent writer */
        TWINCTL_EXIT_NOT_FOUND = 6,     /* no such device, or nothing to reapply */
        TWINCTL_EXIT_UNREACHABLE = 7,   /* cannot reach the broker or the agent */
        TWINCTL_EXIT_ACCESS_DENIED = 8, /* the agent or the broker refused us */
};

/* How long to wait for the broker or the agent when --timeout is not given, and how long
 * set --wait waits for the device. */
#define TWINCTL_CONNECT_TIMEOUT_MS 10000ULL
#define TWINCTL_WAIT_TIMEOUT_MS    60000ULL

#define TWINCTL_SOCKET_DEFAULT "/run/twind/control.sock"

/* The command line after parsing; configuration file values are merged in by twinctl-conf.c. */
typedef struct TwinctlArgs {
        /* broker (service-side verbs) */
        char *broker_url;
        char *username;
        char *password_file;
        char *cafile;
        char *certfile;
        char *keyfile;
        char *topic_root;
        /* agent (device-side verbs) */
        char *socket_path;
        /* --config: the broker settings file instead of /etc/twind/twinctl.conf */
        char *config_path;
        /* IoT Hub: the service connection string file (--azure, $TWINCTL_AZURE) */
        char *azure_file;
        /* AWS IoT (--dialect aws): the thing's shadow, NULL for the classic one */
        bool aws;
        bool dialect_azure; /* --dialect azure: needs azure_file */
        bool dialect_given; /* --dialect was given (standard included) */
        char *profile;      /* --profile NAME */
        char *shadow;
        /* output */
        bool json;
        bool no_color;
        /* timing: timeout_ms 0 means "not given" (defaults apply) */
        uint64_t timeout_ms;
        /* verb options */
        bool wait;
        bool has_if_version;
        int64_t if_version;
        bool until_converged;
        bool filter_pending;
        bool filter_failed;
        bool filter_offline;
        bool filter_success;
        bool filter_online;
        bool list_devices; /* list --devices ID... */
        bool force;        /* delete --force */
        char *set_file;    /* set --file FILE: a JSON object as the patch ("-": stdin) */
        /* set: sign with this private key (--sign-key, $TWINCTL_SIGN_KEY; "" or NULL: do not),
         * under this key id (NULL: the key's fingerprint), valid until not_after (seconds since
         * the epoch; -1: no limit) */
        char *sign_key;
        char *key_id;
        int64_t not_after;
} TwinctlArgs;

/* Verbs: each returns an exit code (enum TwinctlExit). argv[0] is the verb name. */
int verb_get(int argc, char **argv, const TwinctlArgs *args);
int verb_set(int argc, char **argv, const TwinctlArgs *args);
int verb_watch(int argc, char **argv, const TwinctlArgs *args);
int verb_list(int argc, char **argv, const TwinctlArgs *args);
int verb_query(int argc, char **argv, const TwinctlArgs *args);
int verb_status(int argc, char **argv, const TwinctlArgs *args);
int verb_events(int argc, char **argv, const TwinctlArgs *args);
int verb_reapply(int argc, char **argv, const TwinctlArgs *args);
int verb_report(int argc, char **argv, const TwinctlArgs *args);
int verb_delete(int argc, char **argv, const TwinctlArgs *args);
/* keygen NAME: NAME.key (the private key, mode 0600) and NAME.pem (the public key). */
int verb_keygen(int argc, char **argv, const TwinctlArgs *args);

/* Milliseconds on CLOCK_MONOTONIC. */
uint64_t now_ms(void);

/* The deadline of a step: the end of --timeout (counted from the start of the command) when it
 * was given, else now + default_ms; 0 (no deadline) when neither applies. */
uint64_t twinctl_deadline(const TwinctlArgs *args, uint64_t default_ms);
