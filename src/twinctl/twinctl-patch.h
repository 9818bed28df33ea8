/* SPDX-License-Identifier: MIT */
#pragma once

/* What set and report change, from the command line: KEY=VALUE pairs (a.b=1 for a member of a
 * nested object, "\\." for a dot that is part of a name) and a JSON object from --file. */

#include <jansson.h>
#include <stdbool.h>

/* The patches, applied in order: --file's object first (file NULL: none; "-": standard input),
 * then one per KEY=VALUE pair, a path making nested objects ({"telemetry": {"interval": 15}}
 * merges into telemetry). VALUE is JSON when it parses as JSON, else the text itself; what
 * starts like a JSON object, array or string but does not parse is an error. *ret is an array
 * of merge patches; *ret_has_config_id tells whether one sets the top-level configId. Returns 0,
 * -EINVAL after saying what is wrong, or -ENOMEM. */
int twinctl_parse_pairs(const char *file, int n, char **pairs, json_t **ret,
                        bool *ret_has_config_id);

/* One merge patch that does what the patches of twinctl_parse_pairs() do in order, nulls
 * (removals) kept. New reference, NULL on ENOMEM. */
json_t *twinctl_patches_compose(const json_t *patches);
