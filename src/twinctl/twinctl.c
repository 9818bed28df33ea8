/* SPDX-License-Identifier: MIT */
/* twinctl: the device twin from the service side (broker) and from the device (control socket). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "log.h"
#include "macro.h"
#include "twinctl-conf.h"
#include "twin-signature.h"
#include "twinctl-output.h"
#include "twinctl.h"

#define TWINCTL_CONF_PATH TWIND_SYSCONFDIR "/twind/twinctl.conf"

static uint64_t start_ms;

uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000ULL + (uint64_t)ts.tv_nsec / 1000000ULL;
}

uint64_t twinctl_deadline(const TwinctlArgs *args, uint64_t default_ms)
{
        if (args->timeout_ms > 0)
                return start_ms + args->timeout_ms;
        if (default_ms > 0)
                return now_ms() + default_ms;
        return 0;
}

/* Which verb-specific options a verb accepts. */
enum VerbOption {
        VERB_OPTION_WAIT = 1 << 0,
        VERB_OPTION_IF_VERSION = 1 << 1,
        VERB_OPTION_UNTIL_CONVERGED = 1 << 2,
        VERB_OPTION_FILTERS = 1 << 3,
        VERB_OPTION_DEVICES = 1 << 4,
        VERB_OPTION_FILE = 1 << 5,
        VERB_OPTION_FORCE = 1 << 6,
        VERB_OPTION_SIGN = 1 << 7,
};

typedef struct Verb {
        const char *name;
        int (*run)(int argc, char **argv, const TwinctlArgs *args);
        bool broker; /* needs the broker settings */
        unsigned options;
} Verb;

static const Verb verbs[] = {
        { "get", verb_get, true, 0 },
        { "set", verb_set, true,
          VERB_OPTION_WAIT | VERB_OPTION_IF_VERSION | VERB_OPTION_FILE | VERB_OPTION_SIGN },
        { "watch", verb_watch, true, VERB_OPTION_UNTIL_CONVERGED | VERB_OPTION_DEVICES },
        { "list", verb_list, true, VERB_OPTION_FILTERS | VERB_OPTION_DEVICES },
        { "query", verb_query, true, 0 },
        { "delete", verb_delete, true, VERB_OPTION_FORCE },
        { "status", verb_status, false, 0 },
        { "events", verb_events, false, 0 },
        { "reapply", verb_reapply, false, VERB_OPTION_WAIT },
        { "report", verb_report, false, VERB_OPTION_FILE },
        { "keygen", verb_keygen, false, 0 },
};

static void help(void)
{
        printf("twinctl [OPTIONS...] COMMAND ...\n"
               "\n"
               "Query and change device twins through the MQTT broker, or ask the local twind.\n"
               "\n"
               "Service side (through the broker):\n"
               "  get DEVICE                  Show desired and reported side by side, $status,\n"
               "                              connection\n"
               "  set DEVICE KEY=VALUE...     Merge the pairs into the desired document and\n"
               "                              publish it (VALUE is JSON when it parses as JSON,\n"
               "                              otherwise a string; KEY=null deletes; a.b=1\n"
               "                              changes member b of a; write a dot of a name \\.)\n"
               "  watch [DEVICE]              Print each change of the twin (of every twin) as\n"
               "                              it happens: the members that changed\n"
               "  list [PATTERN...]           Every device under the topic root (or the hub's),\n"
               "                              or those whose id matches a shell PATTERN\n"
               "  query QUERY                 IoT Hub: run a query ('SELECT * FROM devices ...')\n"
               "  delete DEVICE...            Remove the twins (IoT Hub: the device identities;\n"
               "                              AWS IoT: the shadows); not of online devices\n"
               "\n"
               "Device side (through the agent's control socket):\n"
               "  status                      The agent's state\n"
               "  events                      Follow the agent's events until Ctrl-C\n"
               "  reapply                     Run the apply of the current desired again\n"
               "  report KEY=VALUE...         Report properties of the device itself next to\n"
               "                              the applied ones (KEY=null removes one)\n"
               "\n"
               "Signing keys:\n"
               "  keygen NAME                 Make an Ed25519 key pair: NAME.key (private,\n"
               "                              mode 0600) and NAME.pem (public, for the\n"
               "                              devices' /etc/twind/trusted-keys.d/)\n"
               "\n");
        /* In parts: C11 compilers need not take longer string literals. */
        printf("Options:\n"
               "  -h --help                   Show this help\n"
               "     --version                Show the version\n"
               "     --config=FILE            Service settings from FILE instead of\n"
               "                              %s and ~/.config/twinctl/twinctl.conf\n"
               "     --profile=NAME           The settings of [profile NAME] (also\n"
               "                              $TWINCTL_PROFILE)\n"
               "  -b --broker=URL             mqtt://HOST[:PORT] or mqtts://HOST[:PORT]\n"
               "     --username=NAME          Broker user name\n"
               "     --password-file=PATH     File holding the broker password\n"
               "     --cafile=PATH            CA bundle for mqtts://\n"
               "     --certfile=PATH          TLS client certificate\n"
               "     --keyfile=PATH           TLS client key\n"
               "     --topic-root=ROOT        Topic root of the twins (default: twins)\n"
               "     --azure=FILE             Azure IoT Hub: its service connection string is\n"
               "                              in FILE (also $TWINCTL_AZURE)\n"
               "     --dialect=standard|aws   aws: AWS IoT Device Shadows over --broker with\n"
               "                              --certfile/--keyfile\n"
               "     --shadow=NAME            aws: a named shadow (default: the classic one)\n"
               "  -s --socket=PATH            Agent control socket (default: %s)\n"
               "  -j --json                   Machine-readable output\n"
               "     --no-color               No colour, even on a terminal\n"
               "  -t --timeout=SECONDS        Give up after this long (whole command)\n"
               "  -w --wait                   set: wait until the device answers; reapply:\n"
               "                              until the apply finished\n"
               "     --if-version=N           set: only if the desired $version is N\n"
               "     --file=FILE              set, report: a JSON object merged in first (- for\n"
               "                              stdin)\n"
               "     --sign-key=KEY.key       set: sign the new desired document with this\n"
               "                              private key (also $TWINCTL_SIGN_KEY)\n"
               "     --key-id=ID              set: the key id in the signature (default: the\n"
               "                              key's fingerprint; NAME for a device's NAME.pem)\n"
               "     --not-after=WHEN         set: the device applies it only until WHEN\n"
               "                              (2026-12-31T23:59:59Z, or from now: 90m, 12h, 7d)\n"
               "     --until-converged        watch: exit once the device answered the\n"
               "                              current desired $version\n"
               "     --pending                list: devices not yet converged\n"
               "     --failed                 list: devices whose $status is failed\n"
               "     --success                list: devices that converged\n"
               "     --offline                list: devices not online\n"
               "     --online                 list: devices online\n"
               "     --devices                list, watch: only the DEVICEs given after the\n"
               "                              options\n"
               "     --force                  delete: also devices that are online\n"
               "\n"
               "Exit status:\n"
               "  0 success                   5 version conflict\n"
               "  1 failure                   6 not found\n"
               "  2 usage error               7 cannot reach the broker or the agent\n"
               "  3 device reported failed    8 access denied\n"
               "  4 timed out\n"
               "\n"
               "Service settings: command line, then $TWINCTL_BROKER and $TWINCTL_AZURE, then\n"
               "the profile, then [broker] of ~/.config/twinctl/twinctl.conf and of\n"
               "%s, then mqtt://127.0.0.1:1883.\n"
               "See twinctl(1) for details.\n",
               TWINCTL_CONF_PATH, TWINCTL_SOCKET_DEFAULT, TWINCTL_CONF_PATH);
}

static void args_done(TwinctlArgs *a)
{
        free(a->broker_url);
        free(a->username);
        free(a->password_file);
        free(a->cafile);
        free(a->certfile);
        free(a->keyfile);
        free(a->topic_root);
        free(a->socket_path);
        free(a->config_path);
        free(a->profile);
        free(a->azure_file);
        free(a->set_file);
        free(a->shadow);
        free(a->sign_key);
        free(a->key_id);
}

static int set_arg(char **dst, const char *value)
{
        char *s = strdup(value);

        if (!s)
                return log_error_errno(-ENOMEM, "Out of memory");
        free(*dst);
        *dst = s;
        return 0;
}

static int parse_timeout(const char *s, uint64_t *ret)
{
        char *end;
        double d;

        errno = 0;
        d = strtod(s, &end);
        if (errno != 0 || end == s || *end || !isfinite(d) || d <= 0 || d > 86400.0 * 365) {
                log_error("invalid --timeout '%s': give a positive number of seconds", s);
                return -EINVAL;
        }
        *ret = (uint64_t)ceil(d * 1000.0);
        return 0;
}

static int parse_if_version(const char *s, int64_t *ret)
{
        char *end;
        long long v;

        errno = 0;
        v = strtoll(s, &end, 10);
        if (errno != 0 || end == s || *end || v < 0) {
                log_error("invalid --if-version '%s': give a non-negative integer", s);
                return -EINVAL;
        }
        *ret = v;
        return 0;
}

/* --not-after: a UTC time as the protocol writes it, or a span from now (90m, 12h, 7d). */
static int parse_not_after(const char *s, int64_t *ret)
{
        static const struct {
                char suffix;
                int64_t seconds;
        } units[] = { { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 } };
        char *end;
        long long n;

        if (twin_time_parse(s, ret) == 0)
                return 0;
        errno = 0;
        n = strtoll(s, &end, 10);
        if (errno == 0 && end != s && s[0] >= '0' && s[0] <= '9' && n > 0 && end[0] && !end[1] &&
            n <= 100LL * 365 * 86400)
                for (size_t i = 0; i < ARRAY_SIZE(units); i++)
                        if (end[0] == units[i].suffix) {
                                *ret = (int64_t)time(NULL) + n * units[i].seconds;
                                return 0;
                        }
        log_error("invalid --not-after '%s': give a UTC time such as 2026-12-31T23:59:59Z, or a "
                  "span from now such as 90m, 12h or 7d",
                  s);
        return -EINVAL;
}

enum {
        ARG_VERSION = 0x100,
        ARG_USERNAME,
        ARG_PASSWORD_FILE,
        ARG_CAFILE,
        ARG_CERTFILE,
        ARG_KEYFILE,
        ARG_TOPIC_ROOT,
        ARG_NO_COLOR,
        ARG_IF_VERSION,
        ARG_UNTIL_CONVERGED,
        ARG_PENDING,
        ARG_FAILED,
        ARG_OFFLINE,
        ARG_CONFIG,
        ARG_AZURE,
        ARG_DIALECT,
        ARG_SHADOW,
        ARG_DEVICES,
        ARG_FORCE,
        ARG_SUCCESS,
        ARG_PROFILE,
        ARG_ONLINE,
        ARG_FILE,
        ARG_SIGN_KEY,
        ARG_KEY_ID,
        ARG_NOT_AFTER,
};

/* Returns 0 to go on, 1 when --help/--version was handled, or -EINVAL on a usage error. */
static int parse_argv(int argc, char **argv, TwinctlArgs *a)
{
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "broker", required_argument, NULL, 'b' },
                { "username", required_argument, NULL, ARG_USERNAME },
                { "password-file", required_argument, NULL, ARG_PASSWORD_FILE },
                { "cafile", required_argument, NULL, ARG_CAFILE },
                { "certfile", required_argument, NULL, ARG_CERTFILE },
                { "keyfile", required_argument, NULL, ARG_KEYFILE },
                { "topic-root", required_argument, NULL, ARG_TOPIC_ROOT },
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "no-color", no_argument, NULL, ARG_NO_COLOR },
                { "timeout", required_argument, NULL, 't' },
                { "wait", no_argument, NULL, 'w' },
                { "if-version", required_argument, NULL, ARG_IF_VERSION },
                { "until-converged", no_argument, NULL, ARG_UNTIL_CONVERGED },
                { "pending", no_argument, NULL, ARG_PENDING },
                { "failed", no_argument, NULL, ARG_FAILED },
                { "offline", no_argument, NULL, ARG_OFFLINE },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "azure", required_argument, NULL, ARG_AZURE },
                { "dialect", required_argument, NULL, ARG_DIALECT },
                { "shadow", required_argument, NULL, ARG_SHADOW },
                { "devices", no_argument, NULL, ARG_DEVICES },
                { "force", no_argument, NULL, ARG_FORCE },
                { "success", no_argument, NULL, ARG_SUCCESS },
                { "profile", required_argument, NULL, ARG_PROFILE },
                { "online", no_argument, NULL, ARG_ONLINE },
                { "file", required_argument, NULL, ARG_FILE },
                { "sign-key", required_argument, NULL, ARG_SIGN_KEY },
                { "key-id", required_argument, NULL, ARG_KEY_ID },
                { "not-after", required_argument, NULL, ARG_NOT_AFTER },
                { NULL, 0, NULL, 0 },
        };
        int c, r = 0;

        /* Leading '+' would stop at the first verb; options may come anywhere (permute). Leading
         * ':' lets us word the errors ourselves. */
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":hb:s:jt:w", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return 1;
                case ARG_VERSION:
                        printf("twinctl %s\n", TWIND_VERSION);
                        return 1;
                case 'b':
                        r = set_arg(&a->broker_url, optarg);
                        break;
                case ARG_USERNAME:
                        r = set_arg(&a->username, optarg);
                        break;
                case ARG_PASSWORD_FILE:
                        r = set_arg(&a->password_file, optarg);
                        break;
                case ARG_CAFILE:
                        r = set_arg(&a->cafile, optarg);
                        break;
                case ARG_CERTFILE:
                        r = set_arg(&a->certfile, optarg);
                        break;
                case ARG_KEYFILE:
                        r = set_arg(&a->keyfile, optarg);
                        break;
                case ARG_TOPIC_ROOT:
                        r = set_arg(&a->topic_root, optarg);
                        break;
                case 's':
                        r = set_arg(&a->socket_path, optarg);
                        break;
                case 'j':
                        a->json = true;
                        break;
                case ARG_NO_COLOR:
                        a->no_color = true;
                        break;
                case 't':
                        r = parse_timeout(optarg, &a->timeout_ms);
                        break;
                case 'w':
                        a->wait = true;
                        break;
                case ARG_IF_VERSION:
                        r = parse_if_version(optarg, &a->if_version);
                        a->has_if_version = true;
                        break;
                case ARG_UNTIL_CONVERGED:
                        a->until_converged = true;
                        break;
                case ARG_PENDING:
                        a->filter_pending = true;
                        break;
                case ARG_FAILED:
                        a->filter_failed = true;
                        break;
                case ARG_OFFLINE:
                        a->filter_offline = true;
                        break;
                case ARG_PROFILE:
                        r = set_arg(&a->profile, optarg);
                        break;
                case ARG_SUCCESS:
                        a->filter_success = true;
                        break;
                case ARG_ONLINE:
                        a->filter_online = true;
                        break;
                case ARG_CONFIG:
                        r = set_arg(&a->config_path, optarg);
                        break;
                case ARG_AZURE:
                        r = set_arg(&a->azure_file, optarg);
                        break;
                case ARG_DIALECT:
                        a->dialect_given = true;
                        if (strcmp(optarg, "aws") == 0)
                                a->aws = true;
                        else if (strcmp(optarg, "azure") == 0)
                                a->dialect_azure = true;
                        else if (strcmp(optarg, "standard") != 0) {
                                log_error("invalid --dialect '%s': standard, azure or aws", optarg);
                                return -EINVAL;
                        }
                        break;
                case ARG_SHADOW:
                        r = set_arg(&a->shadow, optarg);
                        break;
                case ARG_FORCE:
                        a->force = true;
                        break;
                case ARG_DEVICES:
                        a->list_devices = true;
                        break;
                case ARG_FILE:
                        r = set_arg(&a->set_file, optarg);
                        break;
                case ARG_SIGN_KEY:
                        r = set_arg(&a->sign_key, optarg);
                        break;
                case ARG_KEY_ID:
                        r = set_arg(&a->key_id, optarg);
                        break;
                case ARG_NOT_AFTER:
                        r = parse_not_after(optarg, &a->not_after);
                        break;
                case ':':
                        log_error("option '%s' needs an argument", argv[optind - 1]);
                        return -EINVAL;
                case '?': {
                        const char *arg = argv[optind - 1];

                        /* getopt sets optopt also for a long option given an argument it does
                         * not take ("--json=x"), and then the word is the one to name. */
                        if (optopt && strncmp(arg, "--", 2) == 0 && strchr(arg, '='))
                                log_error("option '%.*s' takes no argument",
                                          (int)(strchr(arg, '=') - arg), arg);
                        else if (optopt && strncmp(arg, "--", 2) != 0)
                                log_error("unknown option '-%c'", optopt);
                        else
                                log_error("unknown option '%s'", arg);
                        return -EINVAL;
                }
                default:
                        log_error("unhandled option");
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
        }
        if (!a->socket_path)
                return set_arg(&a->socket_path, TWINCTL_SOCKET_DEFAULT);
        return 0;
}

/* Refuses verb options given to a verb that has no use for them, rather than ignoring them. */
static int check_verb_options(const Verb *v, const TwinctlArgs *a)
{
        static const struct {
                unsigned flag;
                const char *name;
        } names[] = {
                { VERB_OPTION_WAIT, "--wait" },
                { VERB_OPTION_IF_VERSION, "--if-version" },
                { VERB_OPTION_UNTIL_CONVERGED, "--until-converged" },
                { VERB_OPTION_FILTERS, "--pending, --failed, --success, --offline and --online" },
                { VERB_OPTION_DEVICES, "--devices" },
                { VERB_OPTION_FILE, "--file" },
                { VERB_OPTION_FORCE, "--force" },
                { VERB_OPTION_SIGN, "--sign-key, --key-id and --not-after" },
        };
        unsigned given = (a->wait ? VERB_OPTION_WAIT : 0) |
                         (a->has_if_version ? VERB_OPTION_IF_VERSION : 0) |
                         (a->until_converged ? VERB_OPTION_UNTIL_CONVERGED : 0) |
                         (a->filter_pending || a->filter_failed || a->filter_success ||
                                  a->filter_offline || a->filter_online
                              ? VERB_OPTION_FILTERS
                              : 0) |
                         (a->list_devices ? VERB_OPTION_DEVICES : 0) |
                         (a->set_file ? VERB_OPTION_FILE : 0) | (a->force ? VERB_OPTION_FORCE : 0) |
                         (a->sign_key || a->key_id || a->not_after >= 0 ? VERB_OPTION_SIGN : 0);

        for (size_t i = 0; i < ARRAY_SIZE(names); i++)
                if ((given & names[i].flag) && !(v->options & names[i].flag)) {
                        log_error("%s cannot be used with '%s'", names[i].name, v->name);
                        return -EINVAL;
                }
        return 0;
}

int main(int argc, char **argv)
{
        _cleanup_(args_done) TwinctlArgs args = { .not_after = -1 };
        const Verb *verb = NULL;
        int r;

        start_ms = now_ms();
        log_setup("twinctl");
        /* Errors are one line on stderr for the person at the terminal, even under systemd. */
        log_set_journal(0);

        r = parse_argv(argc, argv, &args);
        if (r > 0)
                return TWINCTL_EXIT_SUCCESS;
        if (r < 0)
                return r == -ENOMEM ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_USAGE;

        if (optind >= argc) {
                log_error("missing command; see twinctl --help");
                return TWINCTL_EXIT_USAGE;
        }
        for (size_t i = 0; i < ARRAY_SIZE(verbs); i++)
                if (strcmp(verbs[i].name, argv[optind]) == 0)
                        verb = &verbs[i];
        if (!verb) {
                log_error("unknown command '%s'; see twinctl --help", argv[optind]);
                return TWINCTL_EXIT_USAGE;
        }
        if (check_verb_options(verb, &args) < 0)
                return TWINCTL_EXIT_USAGE;
        if (verb->options & VERB_OPTION_SIGN) {
                const char *env = getenv("TWINCTL_SIGN_KEY");

                /* --sign-key= (empty) signs nothing, whatever the environment says. */
                if (!args.sign_key && env && *env && set_arg(&args.sign_key, env) < 0)
                        return TWINCTL_EXIT_FAILURE;
                if ((!args.sign_key || !args.sign_key[0]) && (args.key_id || args.not_after >= 0)) {
                        log_error("--key-id and --not-after need a key to sign with: --sign-key "
                                  "KEY (or $TWINCTL_SIGN_KEY)");
                        return TWINCTL_EXIT_USAGE;
                }
        }

        if (verb->broker) {
                r = twinctl_conf_load(&args, TWINCTL_CONF_PATH);
                if (r < 0)
                        return r == -EINVAL ? TWINCTL_EXIT_USAGE : TWINCTL_EXIT_FAILURE;
        }
        output_setup(args.no_color);
        return verb->run(argc - optind, argv + optind, &args);
}
