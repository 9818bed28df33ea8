/* SPDX-License-Identifier: MIT */
#pragma once

/* The one-line reasons pure modules hand back in (err, errlen) next to a negative errno. */

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#include "macro.h"
#include "utf8.h"

/* Writes the reason into err (when there is room for one) and returns r. The text may quote
 * input and be cut short: it is made valid UTF-8, for the JSON strings and log lines it ends up
 * in. */
static inline int error_text(int r, char *err, size_t errlen, const char *fmt, ...) _printf_(4, 5);
static inline int error_text(int r, char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (!err || errlen == 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        utf8_sanitize_line(err);
        return r;
}
