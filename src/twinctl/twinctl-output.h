/* SPDX-License-Identifier: MIT */
#pragma once

/* Output for people (aligned columns, colour only on a terminal) and for programs (--json). */

#include <jansson.h>
#include <stdbool.h>
#include <time.h>
#include <stddef.h>

enum OutputColor {
        OUTPUT_COLOR_NONE,
        OUTPUT_COLOR_RED,
        OUTPUT_COLOR_GREEN,
        OUTPUT_COLOR_YELLOW,
        OUTPUT_COLOR_BOLD,
        OUTPUT_COLOR_GREY,
};

/* Decides once whether stdout gets colour: a terminal, NO_COLOR unset, TERM not "dumb", and not
 * disabled by --no-color. */
void output_setup(bool no_color);

/* The escape sequence that starts colour c, or "" when colour is off. */
const char *output_color_on(enum OutputColor c);

/* The colour of a configuration state: success green, failed red, pending, applying or drifted
 * yellow. */
enum OutputColor output_state_color(const char *state);

/* The escape sequence that resets colour, or "" when colour is off. */
const char *output_color_off(void);

/* Prints one JSON value on stdout: indented on a terminal, one line otherwise. Returns 0 or
 * -ENOMEM/-EIO. */
int output_json(const json_t *j);

/* Prints one JSON value as a single line on stdout and flushes (streams: watch, events). */
int output_json_line(const json_t *j);

/* Renders a value for people: strings bare when bare is true (else quoted JSON), true/false as
 * yes/no, NULL as "-", everything else as compact JSON; sanitised (see output_sanitize()).
 * Returns a malloc'd string or NULL. */
char *output_value(const json_t *v, bool bare);

/* Makes s, in place, fit to print on a terminal: each control character (C0, DEL, C1, so also
 * ESC) and each byte of invalid UTF-8 becomes '?'. For every string that came from the broker or
 * the agent. Accepts NULL; returns s. */
char *output_sanitize(char *s);

/* Writes how long ago the ISO 8601 UTC time iso was, seen from now: "12s ago", "5m ago",
 * "3h ago", "2d ago" ("0s ago" for a time ahead of now). Returns buf, or NULL when iso is not
 * such a time (fractions of seconds allowed). */
char *output_ago(const char *iso, time_t now, char *buf, size_t len);

typedef struct Table Table;

/* A table with n_columns columns headed by the given (upper-case) names. */
Table *table_new(size_t n_columns, const char *const *headers);

/* Appends a row: exactly n_columns strings (copied and sanitised; NULL shows as "-") and a colour
 * per cell (colors may be NULL). Returns 0 or -ENOMEM. */
int table_add_row(Table *t, const char *const *cells, const enum OutputColor *colors);

/* Prints the table with columns aligned to their widest cell. */
void table_print(const Table *t);

/* Accepts NULL; returns NULL. */
Table *table_free(Table *t);

/* Prints "key: value" lines with the keys right-aligned to the widest (like systemctl status).
 * keys and values hold n entries; values may be NULL ("-"). */
void output_fields(size_t n, char *const *keys, char *const *values);
