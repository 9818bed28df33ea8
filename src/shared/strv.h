/* SPDX-License-Identifier: MIT */
#pragma once

/* NULL-terminated string vectors, and command-line splitting without a shell. */

#include <stdbool.h>
#include <stddef.h>

#include "macro.h"

/* Frees every string and the vector; accepts NULL; returns NULL. */
char **strv_free(char **l);
DEFINE_FREE_FUNC(char *, strv_free)
#define _cleanup_strv_free_ _cleanup_(strv_freep)

size_t strv_length(char *const *l);

/* Whether l (may be NULL) holds the string s. */
bool strv_contains(char *const *l, const char *s);

/* Appends a copy of s to *l (which may be NULL). Returns 0 or -ENOMEM (*l unchanged). */
int strv_extend(char ***l, const char *s);

/* The strings of l joined by sep, malloc'd; "" for an empty or NULL l; NULL on ENOMEM. */
char *strv_join(char *const *l, const char *sep);

/*
 * Splits a command line into words the way systemd's ExecStart= does for the common cases:
 * words separated by blanks (space, tab, newline), "double" and 'single' quotes group (and may
 * make an empty word: ""), backslash escapes the next character outside single quotes; inside
 * single quotes everything is literal, as in the shell. No variables, globs or other shell
 * features. Returns 0 and a vector of at least one word, -EINVAL for an empty command, an
 * unterminated quote or a trailing backslash, or -ENOMEM.
 */
int strv_split_command(const char *cmdline, char ***ret);
