/* SPDX-License-Identifier: MIT */
#pragma once

/* systemd notification: READY=1, STATUS=, RELOADING=1, STOPPING=1, and WATCHDOG=1 from a libuv
 * timer at half the interval sd_watchdog_enabled() gives, so a stalled loop stops the pings and
 * systemd restarts the agent. All calls are no-ops when not run by systemd. */

#include <uv.h>

#include "macro.h"

typedef struct Notifier Notifier;

/* Starts the watchdog pings when systemd asked for them; succeeds (doing nothing) otherwise. */
int notifier_new(Notifier **ret, uv_loop_t *loop);
/* READY=1: started, or done reloading. n may be NULL (all functions here accept it). */
void notifier_ready(Notifier *n);
/* STATUS=: one line shown by systemctl status; newlines become spaces, long text is cut. */
void notifier_status(Notifier *n, const char *status);
/* RELOADING=1 with MONOTONIC_USEC=, as Type=notify-reload wants; send READY=1 when done. */
void notifier_reloading(Notifier *n);
/* STOPPING=1: shutting down. */
void notifier_stopping(Notifier *n);
/* Stops the pings; the memory goes when libuv has closed the timer. Accepts NULL. */
Notifier *notifier_free(Notifier *n);
DEFINE_FREE_FUNC(Notifier, notifier_free)
