/* SPDX-License-Identifier: MIT */
#pragma once

/* A minimal test harness: each check prints what failed with its location; main() returns the
 * number of failures through test_exit(). */

#include <stdio.h>
#include <string.h>

static int test_failures;

#define CHECK(expr)                                                                                \
        do {                                                                                       \
                if (!(expr)) {                                                                     \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr);   \
                        test_failures++;                                                           \
                }                                                                                  \
        } while (0)

#define CHECK_INT_EQ(a, b)                                                                         \
        do {                                                                                       \
                long long _a = (long long)(a), _b = (long long)(b);                                \
                if (_a != _b) {                                                                    \
                        fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,      \
                                __LINE__, #a, _a, #b, _b);                                         \
                        test_failures++;                                                           \
                }                                                                                  \
        } while (0)

#define CHECK_STR_EQ(a, b)                                                                         \
        do {                                                                                       \
                const char *_a = (a), *_b = (b);                                                   \
                if (!_a || !_b || strcmp(_a, _b) != 0) {                                           \
                        fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__,        \
                                __LINE__, #a, _a ? _a : "(null)", _b ? _b : "(null)");             \
                        test_failures++;                                                           \
                }                                                                                  \
        } while (0)

static inline int test_exit(const char *name)
{
        if (test_failures)
                fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
        return test_failures ? 1 : 0;
}
