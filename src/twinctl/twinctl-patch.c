/* SPDX-License-Identifier: MIT */
#include "twinctl-patch.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "log.h"
#include "macro.h"
#include "twin-model.h"
#include "utf8.h"

/* Splits KEY into the members of a path: "telemetry.interval" is telemetry, then interval; a
 * dot or a backslash that is part of a name is written "\." or "\\". Returns a new array of
 * strings, or NULL after saying what is wrong (or on ENOMEM). */
static json_t *key_path(const char *key)
{
        _cleanup_json_ json_t *path = json_array();
        _cleanup_free_ char *seg = malloc(strlen(key) + 1);
        size_t n = 0;

        if (!path || !seg)
                return NULL;
        for (const char *p = key;; p++) {
                if (*p == '\\' && (p[1] == '.' || p[1] == '\\')) {
                        seg[n++] = *++p;
                        continue;
                }
                if (*p == '.' || *p == '\0') {
                        seg[n] = '\0';
                        if (n == 0) {
                                log_error("'%s': an empty member name (write a dot that is part "
                                          "of a name as \\.)",
                                          key);
                                return NULL;
                        }
                        if (json_array_append_new(path, json_string(seg)) < 0)
                                return NULL;
                        n = 0;
                        if (*p == '\0')
                                break;
                        continue;
                }
                seg[n++] = *p;
        }
        return TAKE_PTR(path);
}

/* The value of KEY=VALUE: JSON when it parses as JSON, else the text itself (sendFrequency=5m).
 * What starts like a JSON object, array or string but does not parse is a mistake, not text. */
static json_t *pair_value(const char *key, const char *value)
{
        json_error_t jerr;
        json_t *v = json_loads(value, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);

        if (v)
                return v;
        if (value[0] == '{' || value[0] == '[' || value[0] == '"') {
                log_error("'%s': the value starts like JSON but is not: %s (column %d)", key,
                          jerr.text, jerr.column);
                return NULL;
        }
        v = json_string(value);
        if (!v)
                log_error("'%s': the value is not valid UTF-8", key);
        return v;
}

/* Reads the patch of --file FILE (- for standard input): one JSON object. */
static json_t *read_patch_file(const char *path)
{
        json_error_t jerr;
        json_t *v;
        FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "re");

        if (!f) {
                log_error_errno(negative_errno(), "Failed to open %s", path);
                return NULL;
        }
        v = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
        if (f != stdin)
                fclose(f);
        if (!v) {
                log_error("%s:%d: not JSON: %s", strcmp(path, "-") == 0 ? "standard input" : path,
                          jerr.line, jerr.text);
                return NULL;
        }
        if (!json_is_object(v)) {
                log_error("%s: not a JSON object", path);
                json_decref(v);
                return NULL;
        }
        return v;
}

int twinctl_parse_pairs(const char *file, int n, char **pairs, json_t **ret,
                        bool *ret_has_config_id)
{
        _cleanup_json_ json_t *patches = json_array();
        bool has_config_id = false;
        char err[256];

        if (!patches)
                return -ENOMEM;
        if (file) {
                json_t *patch = read_patch_file(file);

                if (!patch)
                        return -EINVAL;
                if (twin_properties_validate(patch, NULL, err, sizeof err) < 0) {
                        log_error("%s: %s", file, err);
                        json_decref(patch);
                        return -EINVAL;
                }
                if (json_object_get(patch, TWIN_SIGNATURE_PROPERTY)) {
                        log_error("%s: " TWIN_SIGNATURE_PROPERTY " holds the signature, which "
                                  "set --sign-key makes",
                                  file);
                        json_decref(patch);
                        return -EINVAL;
                }
                has_config_id = json_object_get(patch, "configId") != NULL;
                if (json_array_append_new(patches, patch) < 0)
                        return -ENOMEM;
        }
        for (int i = 0; i < n; i++) {
                _cleanup_free_ char *key = NULL;
                _cleanup_json_ json_t *path = NULL, *patch = NULL;
                const char *eq = strchr(pairs[i], '=');
                size_t off, k;
                json_t *v, *name;

                if (!eq) {
                        log_error("'%s' is not KEY=VALUE", pairs[i]);
                        return -EINVAL;
                }
                /* jansson refuses invalid UTF-8 in keys and strings; say so rather than fail
                 * later as if memory had run out. The bytes are not echoed: they are not text. */
                off = utf8_invalid_offset(pairs[i], strlen(pairs[i]));
                if (off < strlen(pairs[i])) {
                        log_error("KEY=VALUE pair %d: the %s is not valid UTF-8 (byte %zu)", i + 1,
                                  pairs[i] + off < eq ? "property name" : "value", off + 1);
                        return -EINVAL;
                }
                key = strndup(pairs[i], (size_t)(eq - pairs[i]));
                if (!key)
                        return -ENOMEM;
                if (!*key) {
                        log_error("'%s': the property name is empty", pairs[i]);
                        return -EINVAL;
                }
                if (key[0] == '$') {
                        log_error("'%s': keys that start with '$' belong to the protocol", key);
                        return -EINVAL;
                }
                path = key_path(key);
                if (!path)
                        return -EINVAL;
                if (strcmp(json_string_value(json_array_get(path, 0)), TWIN_SIGNATURE_PROPERTY) ==
                    0) {
                        log_error("'%s': " TWIN_SIGNATURE_PROPERTY " holds the signature, which "
                                  "set --sign-key makes",
                                  key);
                        return -EINVAL;
                }
                v = pair_value(key, eq + 1);
                if (!v)
                        return -EINVAL;
                /* Built from the innermost member out: a.b.c=1 is {"a": {"b": {"c": 1}}}. */
                for (k = json_array_size(path); k-- > 0;) {
                        json_t *o = json_object();

                        name = json_array_get(path, k);
                        if (!o || json_object_set_new(o, json_string_value(name), v) < 0) {
                                json_decref(o);
                                return -ENOMEM;
                        }
                        v = o;
                }
                patch = v;
                /* The same rules the device applies, checked before touching the service. */
                if (twin_properties_validate(patch, NULL, err, sizeof err) < 0) {
                        log_error("'%s': %s", key, err);
                        return -EINVAL;
                }
                if (json_array_append_new(patches, TAKE_PTR(patch)) < 0)
                        return -ENOMEM;
                if (json_array_size(path) == 1 &&
                    strcmp(json_string_value(json_array_get(path, 0)), "configId") == 0)
                        has_config_id = true;
        }
        *ret = TAKE_PTR(patches);
        *ret_has_config_id = has_config_id;
        return 0;
}

/* Writes patch over into (both merge patches): a member that is an object in both is composed
 * member by member, anything else replaces what into had (a null too: it still removes). */
static int compose_into(json_t *into, const json_t *patch)
{
        const char *key;
        json_t *v;

        json_object_foreach ((json_t *)patch, key, v) {
                json_t *was = json_object_get(into, key);

                if (json_is_object(v) && json_is_object(was)) {
                        if (compose_into(was, v) < 0)
                                return -ENOMEM;
                        continue;
                }
                if (json_object_set_new(into, key, json_deep_copy(v)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

json_t *twinctl_patches_compose(const json_t *patches)
{
        _cleanup_json_ json_t *all = json_object();
        json_t *patch;
        size_t i;

        if (!all)
                return NULL;
        json_array_foreach (patches, i, patch)
                if (compose_into(all, patch) < 0)
                        return NULL;
        return TAKE_PTR(all);
}
