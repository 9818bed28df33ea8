/* SPDX-License-Identifier: MIT */
#include "twinctl-device.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "twin-model.h"

static const char *const kind_names[_DEVICE_KIND_MAX] = {
        [DEVICE_KIND_DESIRED] = "desired",
        [DEVICE_KIND_REPORTED] = "reported",
        [DEVICE_KIND_CONNECTION] = "connection",
};

const char *device_kind_to_string(enum DeviceKind k)
{
        if (k < 0 || k >= _DEVICE_KIND_MAX)
                return NULL;
        return kind_names[k];
}

const char *device_state_to_string(enum DeviceState s)
{
        switch (s) {
        case DEVICE_STATE_NONE:
                return "-";
        case DEVICE_STATE_PENDING:
                return "pending";
        case DEVICE_STATE_SUCCESS:
                return "success";
        case DEVICE_STATE_FAILED:
                return "failed";
        case DEVICE_STATE_DRIFTED:
                return "drifted";
        }
        return "-";
}

char *device_topic(const char *root, const char *id, enum DeviceKind kind)
{
        char *t;

        if (asprintf(&t, "%s/%s/%s", root, id, device_kind_to_string(kind)) < 0)
                return NULL;
        return t;
}

/* Copies into a new object the members of doc named in keys (NULL-terminated). */
static json_t *pick(const json_t *doc, const char *const *keys)
{
        json_t *o = json_object(), *v;

        for (; o && *keys; keys++)
                if ((v = json_object_get(doc, *keys)) && json_object_set(o, *keys, v) < 0)
                        return json_decref(o), NULL;
        return o;
}

/* The member of a summary that stands for the document's properties. */
#define DIGEST_KEY "$props"

/* Adds to summary o a digest of doc's properties (the members twin_properties_equal() compares:
 * twin_key_is_property()), FNV-1a 64 of their compact sorted text: equal properties give
 * equal digests, and json_equal()'s distinctions (1 against 1.0, key sets) show in the text.
 * Consumes o; NULL on ENOMEM. */
static json_t *with_digest(json_t *o, const json_t *doc)
{
        json_t *props = json_object(), *v;
        uint64_t h = UINT64_C(14695981039346656037);
        const char *key;
        char *text, hex[17];

        if (!o || !props)
                goto fail;
        json_object_foreach ((json_t *)doc, key, v)
                if (twin_key_is_property(key) && !device_reported_is_own(doc, key) &&
                    json_object_set(props, key, v) < 0)
                        goto fail;
        text = json_dumps(props, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        if (!text)
                goto fail;
        for (const char *p = text; *p; p++)
                h = (h ^ (unsigned char)*p) * UINT64_C(1099511628211);
        free(text);
        json_decref(props);
        snprintf(hex, sizeof hex, "%016" PRIx64, h);
        if (json_object_set_new(o, DIGEST_KEY, json_string(hex)) < 0)
                return json_decref(o), NULL;
        return o;
fail:
        json_decref(props);
        json_decref(o);
        return NULL;
}

/* What list shows of a document (see device_map_update_summary()); NULL on ENOMEM. */
static json_t *summarize(enum DeviceKind kind, const json_t *doc)
{
        static const char *const desired[] = { "$version", "configId", NULL };
        static const char *const reported[] = { "$version", "configId", NULL };
        static const char *const status[] = { "state", "desiredVersion",   "configId",
                                              "error", "deviceProperties", NULL };
        static const char *const connection[] = { "state", "since", "connectedSince",
                                                  "lastActivity", NULL };
        json_t *o, *st;

        switch (kind) {
        case DEVICE_KIND_DESIRED:
                return with_digest(pick(doc, desired), doc);
        case DEVICE_KIND_REPORTED:
                o = with_digest(pick(doc, reported), doc);
                st = device_reported_status(doc);
                if (o && st && json_object_set_new(o, "$status", pick(st, status)) < 0)
                        return json_decref(o), NULL;
                return o;
        case DEVICE_KIND_CONNECTION:
                return pick(doc, connection);
        case _DEVICE_KIND_MAX:
        case _DEVICE_KIND_INVALID:
                break;
        }
        return NULL;
}

/* Summaries are shared: across a fleet most devices have the same few (the same desired
 * $version and configId after a fleet-wide set, "online"), so list keeps each distinct one
 * once, keyed by its compact text. Lives as long as the process: twinctl runs one command. */
static json_t *summary_cache;

/* Returns doc's summary (a new reference, shared with identical ones), NULL on ENOMEM. */
static json_t *summary_interned(enum DeviceKind kind, const json_t *doc)
{
        json_t *small = summarize(kind, doc), *known;
        char *text;

        if (!small)
                return NULL;
        if (!summary_cache && !(summary_cache = json_object()))
                return json_decref(small), NULL;
        text = json_dumps(small, JSON_COMPACT | JSON_SORT_KEYS);
        if (!text)
                return json_decref(small), NULL;
        /* The kind is part of the key: a desired and a reported summary never mix. */
        text[0] = (char)('0' + kind);
        known = json_object_get(summary_cache, text);
        if (known) {
                json_decref(small);
                small = json_incref(known);
        } else if (json_object_set(summary_cache, text, small) < 0) {
                json_decref(small);
                small = NULL;
        }
        free(text);
        return small;
}

static int map_update(json_t *map, const char *root, const char *topic, const void *payload,
                      size_t len, bool summary, const char **ret_id, enum DeviceKind *ret_kind)
{
        size_t rl = strlen(root);
        const char *id, *slash;
        char idbuf[TWIN_DEVICE_ID_MAX + 1];
        enum DeviceKind kind = _DEVICE_KIND_INVALID;
        json_t *entry, *doc = NULL;
        void *iter;
        int r = 0;

        if (strncmp(topic, root, rl) != 0 || topic[rl] != '/')
                return -ENOENT;
        id = topic + rl + 1;
        slash = strchr(id, '/');
        if (!slash || (size_t)(slash - id) > TWIN_DEVICE_ID_MAX)
                return -ENOENT;
        memcpy(idbuf, id, (size_t)(slash - id));
        idbuf[slash - id] = '\0';
        if (!twin_device_id_is_valid(idbuf))
                return -ENOENT;
        for (int k = 0; k < _DEVICE_KIND_MAX; k++)
                if (strcmp(slash + 1, kind_names[k]) == 0)
                        kind = k;
        if (kind == _DEVICE_KIND_INVALID)
                return -ENOENT;

        if (len > 0) {
                doc = json_loadb(payload, len, 0, NULL);
                if (!json_is_object(doc)) {
                        json_decref(doc);
                        doc = NULL;
                        r = -EBADMSG;
                } else if (summary) {
                        json_t *small = summary_interned(kind, doc);

                        json_decref(doc);
                        if (!small)
                                return -ENOMEM;
                        doc = small;
                }
        }

        /* An entry is an array indexed by kind, not an object: a fleet's list holds 100,000 of
         * them, and an array costs a third of an object. */
        entry = json_object_get(map, idbuf);
        if (!entry) {
                entry = device_entry_new();
                if (!entry || json_object_set_new(map, idbuf, entry) < 0) {
                        json_decref(doc);
                        return -ENOMEM;
                }
        }
        if (device_entry_set(entry, kind, doc) < 0)
                return -ENOMEM;

        /* Hand out the map's own copy of the key, which lives as long as the entry. */
        iter = json_object_iter_at(map, idbuf);
        if (ret_id)
                *ret_id = json_object_iter_key(iter);
        if (ret_kind)
                *ret_kind = kind;
        return r;
}

int device_map_update(json_t *map, const char *root, const char *topic, const void *payload,
                      size_t len, const char **ret_id, enum DeviceKind *ret_kind)
{
        return map_update(map, root, topic, payload, len, false, ret_id, ret_kind);
}

int device_map_update_summary(json_t *map, const char *root, const char *topic, const void *payload,
                              size_t len, const char **ret_id, enum DeviceKind *ret_kind)
{
        return map_update(map, root, topic, payload, len, true, ret_id, ret_kind);
}

json_t *device_entry_new(void)
{
        return json_pack("[n,n,n]");
}

int device_entry_set(json_t *entry, enum DeviceKind kind, json_t *doc)
{
        if (kind < 0 || kind >= _DEVICE_KIND_MAX || !entry) {
                json_decref(doc);
                return kind < 0 || kind >= _DEVICE_KIND_MAX ? -EINVAL : -ENOMEM;
        }
        /* Takes doc also when it fails. */
        return json_array_set_new(entry, (size_t)kind, doc ? doc : json_null()) < 0 ? -ENOMEM : 0;
}

json_t *device_entry_get(const json_t *entry, enum DeviceKind kind)
{
        json_t *d =
            kind >= 0 && kind < _DEVICE_KIND_MAX ? json_array_get(entry, (size_t)kind) : NULL;

        return json_is_object(d) ? d : NULL;
}

json_t *device_reported_status(const json_t *reported)
{
        json_t *s = json_object_get(reported, "$status");

        return json_is_object(s) ? s : NULL;
}

bool device_reported_is_own(const json_t *reported, const char *key)
{
        json_t *keys = json_object_get(device_reported_status(reported), "deviceProperties"), *k;
        size_t i;

        json_array_foreach (keys, i, k)
                if (json_is_string(k) && strcmp(json_string_value(k), key) == 0)
                        return true;
        return false;
}

json_t *device_reported_properties(const json_t *reported, bool own)
{
        json_t *o = json_object(), *v;
        const char *key;

        json_object_foreach ((json_t *)reported, key, v)
                if (key[0] != '$' && device_reported_is_own(reported, key) == own &&
                    json_object_set(o, key, v) < 0)
                        return json_decref(o), NULL;
        return o;
}

static enum DeviceState state_from_string(const char *s)
{
        if (s && strcmp(s, "success") == 0)
                return DEVICE_STATE_SUCCESS;
        if (s && strcmp(s, "failed") == 0)
                return DEVICE_STATE_FAILED;
        return DEVICE_STATE_PENDING;
}

/* Whether the properties agree: by their digests when both are summaries. */
static bool properties_agree(const json_t *desired, const json_t *reported)
{
        const char *a = json_string_value(json_object_get(desired, DIGEST_KEY));
        const char *b = json_string_value(json_object_get(reported, DIGEST_KEY));

        _cleanup_json_ json_t *runs = NULL;

        if (a && b)
                return strcmp(a, b) == 0;
        /* What the device reports itself is not part of the configuration. */
        runs = device_reported_properties(reported, false);
        return runs && twin_properties_equal(desired, runs);
}

enum DeviceState device_state(const json_t *desired, const json_t *reported)
{
        json_t *status = device_reported_status(reported), *dv;
        const char *state;
        int64_t version;
        enum DeviceState s;

        state = json_string_value(json_object_get(status, "state"));
        /* A $status without a state only lists the device's own properties: nothing was
         * answered yet. */
        if (!status || !state)
                return desired ? DEVICE_STATE_PENDING : DEVICE_STATE_NONE;
        if (!desired)
                return state_from_string(state);

        version = twin_document_version(desired);
        dv = json_object_get(status, "desiredVersion");
        if (version < 0)
                /* The device refuses a desired document without a readable $version, and says so
                 * without naming a version. */
                return !dv && state && strcmp(state, "failed") == 0 ? DEVICE_STATE_FAILED
                                                                    : DEVICE_STATE_PENDING;
        if (!json_is_integer(dv) || json_integer_value(dv) != version)
                return DEVICE_STATE_PENDING;
        s = state_from_string(state);
        if (s == DEVICE_STATE_SUCCESS && !properties_agree(desired, reported))
                return DEVICE_STATE_DRIFTED;
        return s;
}

int64_t device_last_version(const json_t *desired, const json_t *reported)
{
        json_t *dv = json_object_get(device_reported_status(reported), "desiredVersion");
        int64_t v = desired ? twin_document_version(desired) : -1;

        if (json_is_integer(dv) && json_integer_value(dv) > v)
                v = json_integer_value(dv);
        return v;
}

int device_last_config_id(const json_t *desired, const json_t *reported, int64_t *ret,
                          const json_t **ret_non_integer)
{
        const json_t *ids[] = {
                json_object_get(desired, "configId"),
                json_object_get(reported, "configId"),
                json_object_get(device_reported_status(reported), "configId"),
        };
        bool found = false;
        int64_t max = 0;

        if (ret_non_integer)
                *ret_non_integer = NULL;
        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
                if (!ids[i])
                        continue;
                if (!json_is_integer(ids[i])) {
                        if (ret_non_integer && !*ret_non_integer)
                                *ret_non_integer = ids[i];
                        continue;
                }
                if (!found || json_integer_value(ids[i]) > max)
                        max = json_integer_value(ids[i]);
                found = true;
        }
        if (found)
                *ret = max;
        return found;
}

bool device_never_connected(const json_t *connection, const json_t *reported)
{
        const char *last = json_string_value(json_object_get(connection, "lastActivity"));
        const char *key;
        json_t *v;

        if (device_reported_status(reported))
                return false;
        json_object_foreach ((json_t *)reported, key, v)
                if (key[0] != '$')
                        return false;
        if (!connection)
                return true;
        if (device_is_online(connection) || json_object_get(connection, "since"))
                return false;
        return !last || strncmp(last, "0001-", 5) == 0;
}

bool device_last_seen(const json_t *connection, const char **ret_time, bool *ret_exact)
{
        const char *since = json_string_value(json_object_get(connection, "since"));
        const char *last = json_string_value(json_object_get(connection, "lastActivity"));
        const char *after = json_string_value(json_object_get(connection, "connectedSince"));

        *ret_time = NULL;
        *ret_exact = true;
        if (device_is_online(connection))
                return true;
        if (last && strncmp(last, "0001-", 5) != 0) {
                *ret_time = last;
                return true;
        }
        if (since && strncmp(since, "0001-", 5) != 0) {
                *ret_time = since;
                return true;
        }
        if (after) {
                *ret_time = after;
                *ret_exact = false;
                return true;
        }
        return false;
}

bool device_is_online(const json_t *connection)
{
        const char *s = json_string_value(json_object_get(connection, "state"));

        return s && strcmp(s, "online") == 0;
}
