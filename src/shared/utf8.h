/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * UTF-8 checks for the places where untrusted bytes meet JSON strings: jansson refuses to build a
 * string from invalid UTF-8, so an error message quoting input (or cut short by snprintf) must be
 * made valid before it is reported. Header-only so that every pure module can use it.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF), or 0 when the bytes there are not one. n is the bytes available. */
static inline size_t utf8_sequence_length(const uint8_t *s, size_t n)
{
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;

        if (n == 0)
                return 0;
        if (s[0] < 0x80)
                return 1;
        if (s[0] >= 0xC2 && s[0] <= 0xDF)
                len = 2;
        else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
                len = 3;
                if (s[0] == 0xE0)
                        lo = 0xA0; /* overlong */
                else if (s[0] == 0xED)
                        hi = 0x9F; /* surrogates */
        } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
                len = 4;
                if (s[0] == 0xF0)
                        lo = 0x90; /* overlong */
                else if (s[0] == 0xF4)
                        hi = 0x8F; /* above U+10FFFF */
        } else
                return 0;

        if (n < len || s[1] < lo || s[1] > hi)
                return 0;
        for (size_t i = 2; i < len; i++)
                if (s[i] < 0x80 || s[i] > 0xBF)
                        return 0;
        return len;
}

/* Returns the offset of the first byte that is not part of valid UTF-8, or n when all is valid. */
static inline size_t utf8_invalid_offset(const void *p, size_t n)
{
        const uint8_t *s = p;
        size_t i = 0;

        while (i < n) {
                size_t l = utf8_sequence_length(s + i, n - i);
                if (l == 0)
                        return i;
                i += l;
        }
        return n;
}

/* Makes a NUL-terminated message safe to report as one JSON string line: bytes of invalid UTF-8
 * and control characters become '?', in place. */
static inline void utf8_sanitize_line(char *s)
{
        uint8_t *u = (uint8_t *)s;

        while (*u) {
                size_t n = 0;
                while (n < 4 && u[n])
                        n++;
                size_t l = utf8_sequence_length(u, n);
                if (l == 0 || (l == 1 && (*u < 0x20 || *u == 0x7F))) {
                        *u++ = '?';
                        continue;
                }
                u += l;
        }
}
