/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The twin document model: pure functions over jansson values, no I/O, no logging above
 * debug. Used by the agent (validation, change detection) and by twinctl (merge patch, diff).
 * The rules are written down in docs/protocol.md.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#define TWIN_DEVICE_ID_MAX      128
#define TWIN_DESIRED_MAX_BYTES  (32 * 1024)
#define TWIN_MAX_DEPTH          10
#define TWIN_TOPIC_ROOT_DEFAULT "twins"
/* The reserved top-level member of a desired document that holds its signature (no '$', which
 * IoT Hub and AWS IoT refuse in names): not a property. See twin-signature.h. */
#define TWIN_SIGNATURE_PROPERTY "twinSignature"

/*
 * What a twin service accepts in a document, beyond the protocol's own rules (JSON object,
 * UTF-8 without NUL, no '$' keys but the top-level "$version"). docs/protocol.md lists each
 * dialect's limits; the agent refuses a desired document that breaks them and never sends a
 * report that would.
 */
typedef struct TwinLimits {
        const char *service;     /* for messages: "the broker protocol", "IoT Hub", "AWS IoT" */
        size_t max_bytes;        /* the whole document as sent */
        unsigned max_depth;      /* nesting of objects and arrays; the document is level 1 */
        size_t max_key_bytes;    /* 0: no limit */
        const char *key_refused; /* characters no key may hold; NULL: none */
        bool key_no_control;     /* no C0 or C1 control characters, nor DEL, in keys */
        size_t max_string_bytes; /* 0: no limit */
        bool integer_range;      /* integers must lie within [integer_min, integer_max] */
        int64_t integer_min, integer_max;
        const char *reserved_key; /* a top-level key the agent uses itself; NULL: none */
} TwinLimits;

/* The standard dialect's limits (as Azure IoT Hub has them for sizes): 32 KiB, depth 10. */
extern const TwinLimits twin_limits_standard;
/* IoT Hub's twin rules: keys up to 1 KB without '.', '$', space or control characters, strings
 * up to 4 KB, integers within +-2^52, depth 10, 32 KiB. */
extern const TwinLimits twin_limits_azure;

/* AWS IoT's shadow rules: the desired (and the reported) section nests at most 6 levels, and
 * the stored state (desired and reported together) is at most 8 KB. */
#define TWIN_AWS_STATE_MAX_BYTES 8192
extern const TwinLimits twin_limits_aws;

/* Whether key is a valid property key under limits (not empty, no leading '$'). */
bool twin_limits_key_is_valid(const TwinLimits *limits, const char *key);

/* Whether id is 1..128 characters of A-Z a-z 0-9 - . _ : */
bool twin_device_id_is_valid(const char *id);

/* Whether root is a usable MQTT topic prefix: non-empty, no wildcards, no leading or trailing '/'.
 */
bool twin_topic_root_is_valid(const char *root);

/*
 * Parses and validates a desired document received from the broker under limits (NULL:
 * twin_limits_standard): at most limits->max_bytes, valid UTF-8 without NUL, a JSON object,
 * nesting at most limits->max_depth, "$version" a non-negative integer, no property key (at any
 * depth) starting with '$' other than the top-level "$version", and the limits' key, string and
 * integer rules. On success stores the document in *ret and returns 0. On failure returns
 * -EINVAL (or -E2BIG for size, -ENOMEM) and writes a one-line reason that names the problem
 * into err; when the $version could still be read it is stored in *ret_version, otherwise
 * *ret_version is set to -1. The size is checked first: when len exceeds the limit, payload is
 * not read at all (the agent keeps only the length of such a document).
 */
int twin_desired_parse(const void *payload, size_t len, const TwinLimits *limits, json_t **ret,
                       int64_t *ret_version, char *err, size_t errlen);

/* Validates a property object under limits (NULL: twin_limits_standard): no '$' keys at any
 * depth, the depth, key, string and integer rules (not the size); same error contract. */
int twin_properties_validate(const json_t *props, const TwinLimits *limits, char *err,
                             size_t errlen);

/* Returns the "$version" of a document, or -1 if absent or not a non-negative integer. */
int64_t twin_document_version(const json_t *doc);

/* Whether top-level key key of a document names a property: neither a '$' key nor
 * TWIN_SIGNATURE_PROPERTY. */
bool twin_key_is_property(const char *key);

/* Returns a new object holding doc's properties (see twin_key_is_property()). */
json_t *twin_properties(const json_t *doc);

/* Borrowed "configId" of a property object, or NULL. */
json_t *twin_config_id(const json_t *props);

/* Whether a and b hold the same properties (twin_key_is_property()); NULL counts as empty. */
bool twin_properties_equal(const json_t *a, const json_t *b);

/*
 * The change rule: desired properties ask for an apply when their configId differs from the
 * applied one, or, when they carry no configId, when the properties differ from the applied ones.
 */
bool twin_needs_apply(const json_t *desired_props, const json_t *applied_props);

/* RFC 7396 JSON merge patch applied to the object target in place (null deletes, nested objects
 * merge). Returns 0, -EINVAL when target or patch is not an object, or -ENOMEM (target may then
 * be partly patched). */
int twin_merge_patch(json_t *target, const json_t *patch);

/* The RFC 7396 merge patch that turns object from into object to: changed and new members as
 * in to (nested objects as patches of their own), removed ones as null; arrays and other values
 * replace whole. Applying it to a copy of from gives to, unless to holds null values (a merge
 * patch cannot set a member to null). Either side may be NULL (empty). Returns a new object
 * (empty when they agree), or NULL on ENOMEM. */
json_t *twin_merge_patch_diff(const json_t *from, const json_t *to);

/* Returns a new array of the top-level property keys (twin_key_is_property()) whose values differ
 * between a and b, sorted; either side may be NULL (treated as empty). */
json_t *twin_diff_keys(const json_t *a, const json_t *b);

/* Size of a digest string: "sha256:" and 64 hex digits, NUL-terminated. */
#define TWIN_DIGEST_STRING_SIZE (7 + 64 + 1)

/* Writes "sha256:<hex>" of len bytes of data into ret. Returns 0, or -ENOMEM/-EIO. */
int twin_digest(const void *data, size_t len, char ret[static TWIN_DIGEST_STRING_SIZE]);

/* twin_digest() of doc's canonical text (compact, keys sorted): the identity of a desired
 * request, which tells a redelivery from a new request by its content. Returns 0 or -ENOMEM. */
int twin_document_digest(const json_t *doc, char ret[static TWIN_DIGEST_STRING_SIZE]);

/* Whether s is a digest string as twin_digest() writes it. */
bool twin_digest_is_valid(const char *s);

/* Writes "now" (or t when >= 0, seconds since the epoch) as ISO 8601 UTC, "2026-11-26T09:41:58Z".
 */
void twin_format_time(int64_t t, char buf[static 32]);

/* Renders a configId for logs, the journal and the environment (strings bare, others as JSON).
 * Returns a malloc'd string, "" for NULL, or NULL on ENOMEM. */
char *twin_config_id_to_string(const json_t *config_id);
