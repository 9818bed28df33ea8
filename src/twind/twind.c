/* SPDX-License-Identifier: MIT */
/*
 * twind: the device twin agent. main() reads the configuration, wires the manager, the control
 * socket and systemd notification onto one libuv loop, and handles signals.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sysexits.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "log.h"
#include "rlimit-util.h"
#include "twind-conf.h"
#include "twind-control.h"
#include "twind-dialect.h"
#include "twind-manager.h"
#include "twind-notify.h"
#include "twind-state.h"

/* SIGTERM must end the agent within 2 s: the broker gets this long to take the offline state. */
#define SHUTDOWN_DEADLINE_MS 1500

typedef struct Arguments {
        const char *config_path;
        bool config_given;
        bool check_config;
        const char *broker_url;
        const char *device_id;
        const char *state_dir;
} Arguments;

typedef struct Twind {
        uv_loop_t loop;
        Arguments args;
        Manager *manager;
        ControlServer *control;
        Notifier *notifier;
        uv_signal_t sig_term, sig_int, sig_hup;
        bool stopping;
} Twind;

static void help(void)
{
        printf("Usage: twind [OPTIONS]\n"
               "\n"
               "The device twin agent: applies the desired configuration of this device's twin\n"
               "and reports what it runs.\n"
               "\n"
               "  -c, --config PATH     configuration file (default %s/twind/twind.conf)\n"
               "      --check-config    check the configuration and exit\n"
               "      --broker URL      broker address, mqtt://host[:port] or mqtts://...\n"
               "      --device-id ID    this device's id\n"
               "      --state-dir DIR   where the applied state is kept\n"
               "      --log-time        timestamps in front of log lines on stderr (not in the\n"
               "                        journal, which has its own); also TWIND_LOG_TIME=1\n"
               "  -h, --help            show this help\n"
               "      --version         show the version\n"
               "\n"
               "See twind(8) and twind.conf(5).\n",
               TWIND_SYSCONFDIR);
}

/* Returns 1 to go on, 0 to exit successfully, a negative errno for a usage error. */
static int parse_argv(int argc, char *argv[], Arguments *a)
{
        enum {
                ARG_CHECK_CONFIG = 0x100,
                ARG_BROKER,
                ARG_DEVICE_ID,
                ARG_STATE_DIR,
                ARG_VERSION,
                ARG_LOG_TIME,
        };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, ARG_CHECK_CONFIG },
                { "broker", required_argument, NULL, ARG_BROKER },
                { "device-id", required_argument, NULL, ARG_DEVICE_ID },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "log-time", no_argument, NULL, ARG_LOG_TIME },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { 0 },
        };
        int c;

        a->config_path = TWIND_SYSCONFDIR "/twind/twind.conf";
        while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0) {
                switch (c) {
                case 'c':
                        a->config_path = optarg;
                        a->config_given = true;
                        break;
                case ARG_CHECK_CONFIG:
                        a->check_config = true;
                        break;
                case ARG_BROKER:
                        a->broker_url = optarg;
                        break;
                case ARG_DEVICE_ID:
                        a->device_id = optarg;
                        break;
                case ARG_STATE_DIR:
                        a->state_dir = optarg;
                        break;
                case ARG_LOG_TIME:
                        log_set_time(1);
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("twind %s\n", TWIND_VERSION);
                        return 0;
                default:
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "twind: unexpected argument '%s'; see twind --help\n",
                        argv[optind]);
                return -EINVAL;
        }
        return 1;
}

/* The file (required when named with -c), then the command line over it, then the checks.
 * Errors are one line on stderr or in the journal. */
static int load_config(const Arguments *a, TwindConfig **ret)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[1024] = "";
        int r;

        r = twind_config_new(&c);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the configuration");

        r = twind_config_load_file(c, a->config_path, a->config_given, err, sizeof(err));
        if (r < 0) {
                if (*err)
                        log_error("%s", err);
                else
                        log_error("%s: cannot read configuration file: %s", a->config_path,
                                  strerror(-r));
                return r;
        }

        {
                const struct {
                        const char *value;
                        enum TwindConfigKey key;
                        const char *option;
                } overrides[] = {
                        { a->broker_url, TWIND_KEY_BROKER_URL, "--broker" },
                        { a->device_id, TWIND_KEY_DEVICE_ID, "--device-id" },
                        { a->state_dir, TWIND_KEY_STATE_DIRECTORY, "--state-dir" },
                };

                for (size_t i = 0; i < ARRAY_SIZE(overrides); i++) {
                        if (!overrides[i].value)
                                continue;
                        r = twind_config_set_option(c, overrides[i].key, overrides[i].option,
                                                    overrides[i].value, err, sizeof(err));
                        if (r == -ENOMEM)
                                return log_error_errno(r, "Failed to apply the command line");
                        if (r < 0)
                                return log_error("%s", err), r;
                }
        }

        /* Each of these names where the value came from (file and line, or option). */
        r = twind_config_verify(c, err, sizeof(err));
        if (r >= 0)
                r = twin_dialect_prepare_config(c, err, sizeof(err));
        if (r >= 0)
                r = twind_config_resolve_credentials(c, err, sizeof(err));
        if (r >= 0 && a->check_config)
                r = twind_config_check_files(c, err, sizeof(err));
        if (r == -ENOMEM)
                return log_error_errno(r, "Failed to check the configuration");
        if (r < 0)
                return log_error("%s", err), r;

        *ret = TAKE_PTR(c);
        return 0;
}

/* The persisted state. A file that was read but does not decode is kept aside and the agent
 * starts empty; one that cannot be read at all stops the start: starting empty would forget
 * the applied configuration for good. */
static int load_state(const TwindConfig *c, TwinState **ret)
{
        _cleanup_free_ char *kept = NULL;
        char err[1024] = "";
        int r;

        r = twin_state_load(c->state_dir, ret, &kept, err, sizeof(err));
        if (r == -EBADMSG) {
                log_error("State file %s is unusable; kept aside as %s, starting from empty state",
                          err, kept ? kept : "(could not rename it)");
                return 0;
        }
        if (r == -ENOMEM)
                return log_error_errno(r, "Failed to load the state");
        if (r < 0)
                return log_error(
                           "%s; not starting, so that the applied configuration is not "
                           "forgotten (fix the file or its permissions, or remove it to start "
                           "from empty state)",
                           err),
                       r;
        return 0;
}

static void on_status(const char *status, void *userdata)
{
        Twind *t = userdata;

        notifier_status(t->notifier, status);
}

static void on_event(const json_t *event, void *userdata)
{
        Twind *t = userdata;

        if (t->control)
                control_server_broadcast(t->control, event);
}

static bool on_event_wanted(void *userdata)
{
        Twind *t = userdata;

        return control_server_has_followers(t->control);
}

static void on_handle_closed(uv_handle_t *h)
{
}

static void close_handle(uv_handle_t *h, void *arg)
{
        if (!uv_is_closing(h))
                uv_close(h, on_handle_closed);
}

static void on_shutdown_done(void *userdata)
{
        Twind *t = userdata;

        log_info("Stopped");
        uv_close((uv_handle_t *)&t->sig_term, on_handle_closed);
        uv_close((uv_handle_t *)&t->sig_int, on_handle_closed);
        uv_close((uv_handle_t *)&t->sig_hup, on_handle_closed);
        t->manager = manager_free(t->manager);
        t->notifier = notifier_free(t->notifier);
        /* The loop ends once the handles above are closed. */
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
        Twind *t = s->data;

        if (t->stopping)
                return;
        t->stopping = true;
        log_info("Received %s, shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
        notifier_stopping(t->notifier);
        t->control = control_server_free(t->control);
        manager_shutdown(t->manager, SHUTDOWN_DEADLINE_MS, on_shutdown_done, t);
}

static void on_reload_signal(uv_signal_t *s, int signum)
{
        Twind *t = s->data;
        TwindConfig *c = NULL;

        if (t->stopping)
                return;
        log_info("Received SIGHUP, reloading %s", t->args.config_path);
        notifier_reloading(t->notifier);
        if (load_config(&t->args, &c) < 0)
                log_warning("Keeping the running configuration");
        else if (manager_reload(t->manager, c) < 0)
                log_warning("Keeping the running configuration");
        notifier_ready(t->notifier);
}

/* The control socket: systemd's when it passed one (twind.socket), otherwise our own. */
static int setup_control(Twind *t)
{
        const TwindConfig *c = manager_config(t->manager);
        int n, fd = -1;

        n = sd_listen_fds(1);
        if (n < 0)
                log_warning_errno(n, "Failed to read the sockets systemd passed, ignoring");
        else if (n > 1)
                log_warning("systemd passed %d sockets, expected one; using the first", n);
        if (n >= 1) {
                fd = SD_LISTEN_FDS_START;
                if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0) {
                        log_warning("The socket systemd passed is not a listening Unix stream "
                                    "socket, ignoring it");
                        fd = -1;
                }
        }
        return control_server_new(&t->control, &t->loop, t->manager, c->control_socket, fd);
}

static int start_signal(Twind *t, uv_signal_t *s, uv_signal_cb cb, int signum)
{
        int r;

        r = uv_signal_init(&t->loop, s);
        if (r < 0)
                return r;
        s->data = t;
        return uv_signal_start(s, cb, signum);
}

int main(int argc, char *argv[])
{
        Twind t = { 0 };
        TwindConfig *config = NULL;
        TwinState *state = NULL;
        int status = EXIT_FAILURE, r;

        log_setup("twind");

        r = parse_argv(argc, argv, &t.args);
        if (r <= 0)
                return r < 0 ? EX_USAGE : EXIT_SUCCESS;

        r = load_config(&t.args, &config);
        if (r < 0)
                return EX_CONFIG;
        if (t.args.check_config) {
                printf("%s: configuration OK (device %s, dialect %s, broker %s)\n",
                       t.args.config_path, config->device_id, config->dialect, config->broker_url);
                twind_config_free(config);
                return EXIT_SUCCESS;
        }

        /* Writes to a closed socket (TLS goes through OpenSSL) must fail with EPIPE, not kill. */
        signal(SIGPIPE, SIG_IGN);

        /* Control clients, the apply command's pipes, the broker and the state file share one
         * descriptor table; systemd's default soft limit (1024) is far below its hard one. */
        r = rlimit_nofile_raise();
        if (r < 0)
                log_warning_errno(r, "Failed to raise the open file limit, ignoring");

        r = uv_loop_init(&t.loop);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the event loop");
                twind_config_free(config);
                return EXIT_FAILURE;
        }

        r = notifier_new(&t.notifier, &t.loop);
        if (r < 0)
                log_warning_errno(r, "Failed to set up systemd notification, ignoring");

        r = load_state(config, &state);
        if (r < 0) {
                twind_config_free(config);
                /* Restarting does not make an unreadable file readable (RestartPreventExitStatus=
                 * in twind.service). */
                status = EX_IOERR;
                goto fail;
        }
        r = manager_new(&t.manager, &t.loop, config, state);
        if (r < 0) {
                /* A file the configuration names that cannot be used (a password file, a CA):
                 * restarting does not help either. */
                if (r != -ENOMEM)
                        status = EX_CONFIG;
                goto fail;
        }
        manager_set_status_listener(t.manager, on_status, &t);

        r = setup_control(&t);
        if (r < 0)
                goto fail;
        manager_set_event_listener(t.manager, on_event, on_event_wanted, &t);

        if ((r = start_signal(&t, &t.sig_term, on_stop_signal, SIGTERM)) < 0 ||
            (r = start_signal(&t, &t.sig_int, on_stop_signal, SIGINT)) < 0 ||
            (r = start_signal(&t, &t.sig_hup, on_reload_signal, SIGHUP)) < 0) {
                log_error_errno(r, "Failed to set up signal handling");
                goto fail;
        }

        r = manager_start(t.manager);
        if (r < 0)
                goto fail;

        notifier_ready(t.notifier);
        r = uv_run(&t.loop, UV_RUN_DEFAULT);
        (void)r;
        r = uv_loop_close(&t.loop);
        if (r < 0)
                log_debug("Event loop closed with handles left: %s", uv_strerror(r));
        return EXIT_SUCCESS;

fail:
        t.control = control_server_free(t.control);
        t.manager = manager_free(t.manager);
        t.notifier = notifier_free(t.notifier);
        uv_walk(&t.loop, close_handle, NULL);
        uv_run(&t.loop, UV_RUN_DEFAULT);
        uv_loop_close(&t.loop);
        return status;
}
