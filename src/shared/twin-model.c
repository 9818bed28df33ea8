/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>

#include "error-text.h"
#include "json-util.h"
#include "macro.h"
#include "twin-model.h"
#include "utf8.h"

/* Longest piece of untrusted text (a key, a value) quoted in an error message. */
#define QUOTE_MAX 64

bool twin_device_id_is_valid(const char *id)
{
        size_t n = 0;

        if (!id)
                return false;
        for (const char *p = id; *p; p++, n++) {
                char c = *p;
                if (n >= TWIN_DEVICE_ID_MAX)
                        return false;
                if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '.' || c == '_' || c == ':'))
                        return false;
        }
        return n > 0;
}

bool twin_topic_root_is_valid(const char *root)
{
        size_t n;

        if (!root)
                return false;
        n = strlen(root);
        if (n == 0 || root[0] == '/' || root[n - 1] == '/')
                return false;
        return !strpbrk(root, "+#");
}

/* One step of the path to a value, for error messages: an object key or an array index. */
typedef struct PathSegment {
        const char *key; /* NULL for an array element */
        size_t index;
} PathSegment;

static void path_format(const PathSegment *segs, size_t n, char *buf, size_t size)
{
        size_t len = 0;

        buf[0] = '\0';
        for (size_t i = 0; i < n && len < size; i++) {
                int k;
                if (segs[i].key)
                        k = snprintf(buf + len, size - len, "%s%.*s", i > 0 ? "." : "", QUOTE_MAX,
                                     segs[i].key);
                else
                        k = snprintf(buf + len, size - len, "[%zu]", segs[i].index);
                if (k < 0)
                        break;
                len += (size_t)k;
        }
}

const TwinLimits twin_limits_standard = {
        .service = "the twin protocol",
        .max_bytes = TWIN_DESIRED_MAX_BYTES,
        .max_depth = TWIN_MAX_DEPTH,
};

const TwinLimits twin_limits_azure = {
        .service = "IoT Hub",
        .max_bytes = TWIN_DESIRED_MAX_BYTES,
        .max_depth = TWIN_MAX_DEPTH,
        .max_key_bytes = 1024,
        .key_refused = ". $",
        .key_no_control = true,
        .max_string_bytes = 4096,
        .integer_range = true,
        .integer_min = -4503599627370496LL,
        .integer_max = 4503599627370495LL,
};

const TwinLimits twin_limits_aws = {
        .service = "AWS IoT",
        .max_bytes = TWIN_AWS_STATE_MAX_BYTES,
        .max_depth = 6,
};

/* Whether the UTF-8 text holds a C0 or C1 control character or DEL. */
static bool has_control(const char *s)
{
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                if (*p < 0x20 || *p == 0x7f)
                        return true;
                /* U+0080..U+009F are encoded as C2 80 .. C2 9F. */
                if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
                        return true;
        }
        return false;
}

/* Why key breaks limits' key rules (not the '$' rule), or NULL. */
static const char *key_problem(const TwinLimits *l, const char *key, char *buf, size_t len)
{
        const char *bad;

        if (l->max_key_bytes && strlen(key) > l->max_key_bytes) {
                snprintf(buf, len, "is longer than %zu bytes", l->max_key_bytes);
                return buf;
        }
        if (l->key_refused && (bad = strpbrk(key, l->key_refused))) {
                snprintf(buf, len, "holds '%c', which %s does not allow in keys", *bad, l->service);
                return buf;
        }
        if (l->key_no_control && has_control(key)) {
                snprintf(buf, len, "holds a control character, which %s does not allow in keys",
                         l->service);
                return buf;
        }
        return NULL;
}

bool twin_limits_key_is_valid(const TwinLimits *limits, const char *key)
{
        char buf[128];

        if (!limits)
                limits = &twin_limits_standard;
        return key && key[0] != '\0' && key[0] != '$' &&
               !key_problem(limits, key, buf, sizeof(buf));
}

/* Checks a scalar value against the limits' string and integer rules. */
static int check_value(const TwinLimits *l, const json_t *v, const PathSegment *segs, size_t n,
                       char *err, size_t errlen)
{
        char path[256];

        if (l->max_string_bytes && json_is_string(v) &&
            json_string_length(v) > l->max_string_bytes) {
                path_format(segs, n, path, sizeof(path));
                return error_text(-EINVAL, err, errlen,
                                  "the string at %s is %zu bytes, %s allows at most %zu", path,
                                  json_string_length(v), l->service, l->max_string_bytes);
        }
        if (l->integer_range && json_is_integer(v) &&
            (json_integer_value(v) < l->integer_min || json_integer_value(v) > l->integer_max)) {
                path_format(segs, n, path, sizeof(path));
                return error_text(-EINVAL, err, errlen,
                                  "the integer at %s is outside the range %s allows (%" PRId64
                                  " to %" PRId64 ")",
                                  path, l->service, l->integer_min, l->integer_max);
        }
        return 0;
}

/* Walks a container at nesting level depth (the document is level 1), refusing '$' keys,
 * nesting past the limit and what else the limits forbid. segs holds the path to v (n entries,
 * room for max_depth). */
static int check_container(const TwinLimits *l, const json_t *v, unsigned depth, PathSegment *segs,
                           size_t n, bool allow_version, char *err, size_t errlen)
{
        char path[256], why[128];
        int r;

        if (depth > l->max_depth) {
                path_format(segs, n, path, sizeof(path));
                return error_text(-EINVAL, err, errlen,
                                  "objects and arrays nest more than %u levels deep at %s",
                                  l->max_depth, path);
        }

        if (json_is_object(v)) {
                const char *key;
                json_t *child;

                json_object_foreach ((json_t *)v, key, child) {
                        bool version = allow_version && strcmp(key, "$version") == 0;

                        if (key[0] == '$' && !version) {
                                if (n == 0)
                                        return error_text(-EINVAL, err, errlen,
                                                          "property key \"%.*s\" begins with '$'",
                                                          QUOTE_MAX, key);
                                path_format(segs, n, path, sizeof(path));
                                return error_text(-EINVAL, err, errlen,
                                                  "property key \"%.*s\" at %s begins with '$'",
                                                  QUOTE_MAX, key, path);
                        }
                        if (n == 0 && l->reserved_key && strcmp(key, l->reserved_key) == 0)
                                return error_text(-EINVAL, err, errlen,
                                                  "property key \"%.*s\" is reserved for the "
                                                  "agent's status",
                                                  QUOTE_MAX, key);
                        if (!version && key_problem(l, key, why, sizeof(why))) {
                                if (n == 0)
                                        return error_text(-EINVAL, err, errlen,
                                                          "property key \"%.*s\" %s", QUOTE_MAX,
                                                          key, why);
                                path_format(segs, n, path, sizeof(path));
                                return error_text(-EINVAL, err, errlen,
                                                  "property key \"%.*s\" at %s %s", QUOTE_MAX, key,
                                                  path, why);
                        }
                        segs[n] = (PathSegment){ .key = key };
                        if (!json_is_object(child) && !json_is_array(child)) {
                                r = version ? 0 : check_value(l, child, segs, n + 1, err, errlen);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        r = check_container(l, child, depth + 1, segs, n + 1, false, err, errlen);
                        if (r < 0)
                                return r;
                }
        } else if (json_is_array(v)) {
                size_t i;
                json_t *child;

                json_array_foreach (v, i, child) {
                        segs[n] = (PathSegment){ .index = i };
                        if (!json_is_object(child) && !json_is_array(child)) {
                                r = check_value(l, child, segs, n + 1, err, errlen);
                                if (r < 0)
                                        return r;
                                continue;
                        }
                        r = check_container(l, child, depth + 1, segs, n + 1, false, err, errlen);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static const char *json_type_name(const json_t *v)
{
        switch (json_typeof(v)) {
        case JSON_OBJECT:
                return "an object";
        case JSON_ARRAY:
                return "an array";
        case JSON_STRING:
                return "a string";
        case JSON_INTEGER:
                return "an integer";
        case JSON_REAL:
                return "a real number";
        case JSON_TRUE:
        case JSON_FALSE:
                return "a boolean";
        case JSON_NULL:
                return "null";
        }
        return "an unknown value";
}

/* Why v is not a usable "$version", for the error message. */
static int version_err(const json_t *v, char *err, size_t errlen)
{
        _cleanup_free_ char *dump = NULL;

        if (json_is_integer(v))
                return error_text(
                    -EINVAL, err, errlen,
                    "\"$version\" must be a non-negative integer, got %" JSON_INTEGER_FORMAT,
                    json_integer_value(v));
        if (json_is_object(v) || json_is_array(v) || json_is_null(v))
                return error_text(-EINVAL, err, errlen,
                                  "\"$version\" must be a non-negative integer, got %s",
                                  json_type_name(v));
        dump = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!dump)
                return -ENOMEM;
        return error_text(-EINVAL, err, errlen,
                          "\"$version\" must be a non-negative integer, got %s %.*s",
                          json_type_name(v), QUOTE_MAX, dump);
}

int twin_desired_parse(const void *payload, size_t len, const TwinLimits *limits, json_t **ret,
                       int64_t *ret_version, char *err, size_t errlen)
{
        const TwinLimits *l = limits ? limits : &twin_limits_standard;
        _cleanup_json_ json_t *doc = NULL;
        _cleanup_free_ PathSegment *segs = NULL;
        json_error_t jerr;
        const json_t *v;
        size_t off;
        int r;

        if (ret_version)
                *ret_version = -1;
        if (!payload && len > 0)
                return error_text(-EINVAL, err, errlen, "desired document is missing");

        /* Checked before parsing, so the reasons are ours and precise, and jansson never sees
         * more than the limit. */
        if (len > l->max_bytes)
                return error_text(-E2BIG, err, errlen, "desired document is %zu bytes, limit %zu",
                                  len, l->max_bytes);
        if (len == 0)
                return error_text(-EINVAL, err, errlen, "desired document is empty");
        if (memchr(payload, '\0', len)) {
                off = (size_t)((const char *)memchr(payload, '\0', len) - (const char *)payload);
                return error_text(-EINVAL, err, errlen,
                                  "desired document contains a NUL byte at byte offset %zu", off);
        }
        off = utf8_invalid_offset(payload, len);
        if (off < len)
                return error_text(-EINVAL, err, errlen, "invalid UTF-8 at byte offset %zu", off);

        doc = json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!doc) {
                switch (json_error_code(&jerr)) {
                case json_error_out_of_memory:
                        return -ENOMEM;
                case json_error_stack_overflow:
                        return error_text(-EINVAL, err, errlen,
                                          "objects and arrays nest more than %u levels deep",
                                          l->max_depth);
                default:
                        return error_text(
                            -EINVAL, err, errlen,
                            "desired document is not valid JSON: %s (line %d, column %d)",
                            jerr.text, jerr.line, jerr.column);
                }
        }
        if (!json_is_object(doc))
                return error_text(-EINVAL, err, errlen, "desired document is %s, not an object",
                                  json_type_name(doc));

        v = json_object_get(doc, "$version");
        if (!v)
                return error_text(-EINVAL, err, errlen, "\"$version\" is missing");
        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return version_err(v, err, errlen);
        /* Known from here on, even if the rest is refused: the report can name the request. */
        if (ret_version)
                *ret_version = json_integer_value(v);

        segs = calloc(l->max_depth + 1, sizeof(*segs));
        if (!segs)
                return -ENOMEM;
        r = check_container(l, doc, 1, segs, 0, true, err, errlen);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(doc);
        return 0;
}

int twin_properties_validate(const json_t *props, const TwinLimits *limits, char *err,
                             size_t errlen)
{
        const TwinLimits *l = limits ? limits : &twin_limits_standard;
        _cleanup_free_ PathSegment *segs = NULL;

        if (!json_is_object(props))
                return error_text(-EINVAL, err, errlen, "properties are %s, not an object",
                                  props ? json_type_name(props) : "missing");
        segs = calloc(l->max_depth + 1, sizeof(*segs));
        if (!segs)
                return -ENOMEM;
        return check_container(l, props, 1, segs, 0, false, err, errlen);
}

int64_t twin_document_version(const json_t *doc)
{
        const json_t *v = json_object_get(doc, "$version");

        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return -1;
        return json_integer_value(v);
}

bool twin_key_is_property(const char *key)
{
        return key[0] != '$' && strcmp(key, TWIN_SIGNATURE_PROPERTY) != 0;
}

json_t *twin_properties(const json_t *doc)
{
        _cleanup_json_ json_t *props = json_object();
        const char *key;
        json_t *v;

        if (!props)
                return NULL;
        if (!json_is_object(doc))
                return TAKE_PTR(props);
        json_object_foreach ((json_t *)doc, key, v) {
                if (!twin_key_is_property(key))
                        continue;
                /* A deep copy: the caller may patch the result without touching doc. */
                if (json_object_set_new(props, key, json_deep_copy(v)) < 0)
                        return NULL;
        }
        return TAKE_PTR(props);
}

json_t *twin_config_id(const json_t *props)
{
        return json_object_get(props, "configId");
}

bool twin_properties_equal(const json_t *a, const json_t *b)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)a, key, v)
                if (twin_key_is_property(key) && !json_equal(v, json_object_get(b, key)))
                        return false;
        json_object_foreach ((json_t *)b, key, v)
                if (twin_key_is_property(key) && !json_object_get(a, key))
                        return false;
        return true;
}

bool twin_needs_apply(const json_t *desired_props, const json_t *applied_props)
{
        const json_t *desired_id = twin_config_id(desired_props);

        if (desired_id)
                return !json_equal(desired_id, twin_config_id(applied_props));
        return !twin_properties_equal(desired_props, applied_props);
}

int twin_merge_patch(json_t *target, const json_t *patch)
{
        const char *key;
        json_t *pv;

        if (!json_is_object(target) || !json_is_object(patch))
                return -EINVAL;

        json_object_foreach ((json_t *)patch, key, pv) {
                json_t *tv = json_object_get(target, key);

                if (json_is_null(pv)) {
                        json_object_del(target, key);
                        continue;
                }
                if (json_is_object(pv)) {
                        int r;

                        /* RFC 7396: a member that is not an object is replaced by {} and patched,
                         * which also drops nulls nested in the patch. */
                        if (!json_is_object(tv)) {
                                tv = json_object();
                                if (!tv || json_object_set_new(target, key, tv) < 0)
                                        return -ENOMEM;
                        }
                        r = twin_merge_patch(tv, pv);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (json_object_set_new(target, key, json_deep_copy(pv)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

json_t *twin_merge_patch_diff(const json_t *from, const json_t *to)
{
        _cleanup_json_ json_t *patch = json_object();
        const char *key;
        json_t *v;

        if (!patch)
                return NULL;
        if (!json_is_object(from))
                from = NULL;
        if (!json_is_object(to))
                to = NULL;
        json_object_foreach ((json_t *)from, key, v)
                if (!json_object_get(to, key) && json_object_set_new(patch, key, json_null()) < 0)
                        return NULL;
        json_object_foreach ((json_t *)to, key, v) {
                json_t *old = json_object_get(from, key);

                if (old && json_equal(old, v))
                        continue;
                if (json_is_object(old) && json_is_object(v)) {
                        json_t *sub = twin_merge_patch_diff(old, v);

                        if (!sub || json_object_set_new(patch, key, sub) < 0)
                                return NULL;
                        continue;
                }
                if (json_object_set_new(patch, key, json_deep_copy(v)) < 0)
                        return NULL;
        }
        return TAKE_PTR(patch);
}

static int strcmp_ptr(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

json_t *twin_diff_keys(const json_t *a, const json_t *b)
{
        _cleanup_json_ json_t *result = json_array();
        _cleanup_free_ const char **keys = NULL;
        size_t n = 0;
        const char *key;
        json_t *v;

        if (!result)
                return NULL;
        if (!json_is_object(a))
                a = NULL;
        if (!json_is_object(b))
                b = NULL;
        keys = calloc(json_object_size(a) + json_object_size(b) + 1, sizeof(char *));
        if (!keys)
                return NULL;

        json_object_foreach ((json_t *)a, key, v)
                if (twin_key_is_property(key) && !json_equal(v, json_object_get(b, key)))
                        keys[n++] = key;
        json_object_foreach ((json_t *)b, key, v)
                if (twin_key_is_property(key) && !json_object_get(a, key))
                        keys[n++] = key;

        qsort(keys, n, sizeof(char *), strcmp_ptr);
        for (size_t i = 0; i < n; i++)
                if (json_array_append_new(result, json_string(keys[i])) < 0)
                        return NULL;
        return TAKE_PTR(result);
}

void twin_format_time(int64_t t, char buf[static 32])
{
        struct tm tm;
        time_t tt = t >= 0 ? (time_t)t : time(NULL);

        if (!gmtime_r(&tt, &tm) || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                /* Only for times beyond year 2^31: not worth an error path for callers. */
                snprintf(buf, 32, "%s", "9999-12-31T23:59:59Z");
}

char *twin_config_id_to_string(const json_t *config_id)
{
        if (!config_id)
                return strdup("");
        if (json_is_string(config_id))
                return strndup(json_string_value(config_id), json_string_length(config_id));
        return json_dumps_compact(config_id);
}

int twin_digest(const void *data, size_t len, char ret[static TWIN_DIGEST_STRING_SIZE])
{
        static const char hex[] = "0123456789abcdef";
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;

        if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
                return -EIO;
        memcpy(ret, "sha256:", 7);
        for (unsigned i = 0; i < n; i++) {
                ret[7 + 2 * i] = hex[md[i] >> 4];
                ret[7 + 2 * i + 1] = hex[md[i] & 15];
        }
        ret[7 + 2 * n] = '\0';
        return 0;
}

int twin_document_digest(const json_t *doc, char ret[static TWIN_DIGEST_STRING_SIZE])
{
        _cleanup_free_ char *text = json_dumps_compact(doc);

        if (!text)
                return -ENOMEM;
        return twin_digest(text, strlen(text), ret);
}

bool twin_digest_is_valid(const char *s)
{
        if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != TWIN_DIGEST_STRING_SIZE - 1)
                return false;
        return strspn(s + 7, "0123456789abcdef") == 64;
}
