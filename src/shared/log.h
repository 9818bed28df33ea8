/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Logging: readable lines on stderr when run by hand; journal entries through sd_journal_send
 * when stderr is connected to the journal (JOURNAL_STREAM names it). Structured fields on the
 * lines about applies. Errors are negative errno values; log_*_errno() return them unchanged so
 * that "return log_error_errno(r, ...)" logs once where the error is handled.
 *
 * Whatever is passed is written out: callers never put secrets (passwords, key material) in a
 * message or a field. On stderr, info lines are the bare message and warnings/errors are
 * prefixed "warning: " / "error: ". Prefer the appended ": strerror" over %m: -Wpedantic
 * rejects %m in a printf-checked format.
 */

#include <stdint.h>
#include <syslog.h>

#include "macro.h"

/* Fields attached to a log line; any may be NULL / negative to leave it out. */
typedef struct LogFields {
        const char *device_id;   /* TWIN_DEVICE_ID */
        const char *config_id;   /* TWIN_CONFIG_ID */
        int64_t desired_version; /* TWIN_DESIRED_VERSION, < 0 to omit */
} LogFields;

/* Sets the program name for stderr lines and picks stderr or the journal. */
void log_setup(const char *program);

/* Forces the destination (tests, twinctl): 0 stderr, 1 journal. */
void log_set_journal(int on);

/* Puts the local time in front of each line on stderr (never in the journal, which keeps its
 * own). Also on when TWIND_LOG_TIME=1 is in the environment at log_setup(). */
void log_set_time(int on);

/* Lowest priority printed (LOG_DEBUG..LOG_ERR); LOG_INFO by default, LOG_DEBUG when
 * TWIND_DEBUG=1 is in the environment. */
void log_set_max_level(int level);

/* Logs one line; err is a negative errno appended as ": strerror" when non-zero. Returns err. */
int log_full(int level, int err, const LogFields *fields, const char *fmt, ...) _printf_(4, 5);

#define log_debug(...)   log_full(LOG_DEBUG, 0, NULL, __VA_ARGS__)
#define log_info(...)    log_full(LOG_INFO, 0, NULL, __VA_ARGS__)
#define log_notice(...)  log_full(LOG_NOTICE, 0, NULL, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, 0, NULL, __VA_ARGS__)
#define log_error(...)   log_full(LOG_ERR, 0, NULL, __VA_ARGS__)

#define log_warning_errno(r, ...) log_full(LOG_WARNING, (r), NULL, __VA_ARGS__)
#define log_error_errno(r, ...)   log_full(LOG_ERR, (r), NULL, __VA_ARGS__)
