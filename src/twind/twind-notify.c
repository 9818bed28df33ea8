/* SPDX-License-Identifier: MIT */
#include "twind-notify.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"

/* STATUS= is free text from the manager: bounded, and kept to one line because sd_notify's
 * message is newline-separated assignments. */
#define NOTIFY_STATUS_MAX 512

struct Notifier {
        uv_timer_t watchdog;
        bool watchdog_live; /* initialised and not yet closed */
};

static void notify_send(const char *msg)
{
        int r = sd_notify(0, msg);

        if (r < 0)
                log_debug("Failed to notify systemd (%s): %s, ignoring", msg, strerror(-r));
}

static void on_watchdog(uv_timer_t *t)
{
        notify_send("WATCHDOG=1");
}

static void on_closed(uv_handle_t *h)
{
        free(h->data);
}

int notifier_new(Notifier **ret, uv_loop_t *loop)
{
        Notifier *n;
        uint64_t usec = 0;
        int r;

        if (!ret || !loop)
                return -EINVAL;
        n = calloc(1, sizeof(*n));
        if (!n)
                return -ENOMEM;

        /* > 0 only when systemd asked this very process (WATCHDOG_PID) for pings. */
        r = sd_watchdog_enabled(0, &usec);
        if (r < 0)
                log_warning_errno(r, "Invalid watchdog settings from systemd, ignoring");
        if (r > 0 && usec > 0) {
                /* Half the interval, as sd_watchdog_enabled(3) advises; at least 1 ms. */
                uint64_t msec = usec / 2000;

                if (msec == 0)
                        msec = 1;
                r = uv_timer_init(loop, &n->watchdog);
                if (r < 0) {
                        free(n);
                        return r;
                }
                n->watchdog.data = n;
                n->watchdog_live = true;
                r = uv_timer_start(&n->watchdog, on_watchdog, msec, msec);
                if (r < 0) {
                        notifier_free(n);
                        return r;
                }
                /* The pings must not keep a finished loop running. */
                uv_unref((uv_handle_t *)&n->watchdog);
                log_debug("Pinging the systemd watchdog every %" PRIu64 " ms", msec);
        }

        *ret = n;
        return 0;
}

void notifier_ready(Notifier *n)
{
        notify_send("READY=1");
}

void notifier_status(Notifier *n, const char *status)
{
        char msg[sizeof("STATUS=") + NOTIFY_STATUS_MAX];
        size_t len;

        if (!status)
                return;
        /* systemd drops a STATUS= that is not valid UTF-8: never cut inside a character. */
        len = strlen(status);
        if (len > NOTIFY_STATUS_MAX) {
                len = NOTIFY_STATUS_MAX;
                while (len > 0 && ((unsigned char)status[len] & 0xC0) == 0x80)
                        len--;
        }
        snprintf(msg, sizeof(msg), "STATUS=%.*s", (int)len, status);
        for (char *p = msg; *p; p++)
                if (*p == '\n' || *p == '\r')
                        *p = ' ';
        notify_send(msg);
}

void notifier_reloading(Notifier *n)
{
        struct timespec ts;
        char msg[64];

        /* systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1 to tell this
         * reload from an earlier one; older versions ignore it. */
        clock_gettime(CLOCK_MONOTONIC, &ts);
        snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64,
                 (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000);
        notify_send(msg);
}

void notifier_stopping(Notifier *n)
{
        notify_send("STOPPING=1");
}

Notifier *notifier_free(Notifier *n)
{
        if (!n)
                return NULL;
        if (n->watchdog_live) {
                n->watchdog_live = false;
                uv_close((uv_handle_t *)&n->watchdog, on_closed);
        } else
                free(n);
        return NULL;
}
