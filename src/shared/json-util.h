/* SPDX-License-Identifier: MIT */
#pragma once

/* jansson glue: cleanup for owned references, and one-line serialisation. */

#include <jansson.h>

#include "macro.h"

/* json_decrefp() comes from jansson itself (>= 2.9, GNU C), which resets the pointer too. */
#define _cleanup_json_ _cleanup_(json_decrefp)

/* Serialise compactly with stable key order; returns a malloc'd string or NULL on ENOMEM. */
static inline char *json_dumps_compact(const json_t *j)
{
        return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}
