/* SPDX-License-Identifier: MIT */
#pragma once

/* systemd notification: READY=1, STATUS=, RELOADING=1, STOPPING=1, and WATCHDOG=1 from a libuv
 * timer at half the interval sd_watchdog_enabled() gives, so a stalled loop stops the pings and
 * systemd restarts the agent. All calls are no-ops when not run by systemd. */

#include <uv.h>

#include "macro.h"

typedef struct Notifier Notifier;

int notifier_new(Notifier **ret, uv_loop_t *loop);
void notifier_ready(Notifier *n);
void notifier_status(Notifier *n, const char *status);
void notifier_reloading(Notifier *n);
void notifier_stopping(Notifier *n);
Notifier *notifier_free(Notifier *n);
DEFINE_FREE_FUNC(Notifier, notifier_free)
