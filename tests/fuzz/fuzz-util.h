/* SPDX-License-Identifier: MIT */
#pragma once

/* What every libFuzzer target shares: its entry point, and REQUIRE(), which aborts (so that
 * libFuzzer keeps the input) when an invariant of the code under test does not hold. */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(expr)                                                                              \
        do {                                                                                       \
                if (!(expr)) {                                                                     \
                        fprintf(stderr, "invariant failed: %s\n", #expr);                          \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)
