/* SPDX-License-Identifier: MIT */
#include "twinctl-device.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* What list shows of a document (see device_map_update_summary()); NULL on ENOMEM. */
static json_t *summarize(enum DeviceKind kind, const json_t *doc)
{
        static const char *const desired[] = { "$version", "configId", NULL };
        static const char *const reported[] = { "configId", NULL };
        static const char *const status[] = { "state", "desiredVersion", "configId", NULL };
        static const char *const connection[] = { "state", NULL };
        json_t *o, *st;

        switch (kind) {
        case DEVICE_KIND_DESIRED:
                return pick(doc, desired);
        case DEVICE_KIND_REPORTED:
                o = pick(doc, reported);
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
                entry = json_pack("[n,n,n]");
                if (!entry || json_object_set_new(map, idbuf, entry) < 0) {
                        json_decref(doc);
                        return -ENOMEM;
                }
        }
        if (json_array_set_new(entry, (size_t)kind, doc ? doc : json_null()) < 0)
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

static enum DeviceState state_from_string(const char *s)
{
        if (s && strcmp(s, "success") == 0)
                return DEVICE_STATE_SUCCESS;
        if (s && strcmp(s, "failed") == 0)
                return DEVICE_STATE_FAILED;
        return DEVICE_STATE_PENDING;
}

enum DeviceState device_state(const json_t *desired, const json_t *reported)
{
        json_t *status = device_reported_status(reported), *dv;
        const char *state;
        int64_t version;

        if (!status)
                return desired ? DEVICE_STATE_PENDING : DEVICE_STATE_NONE;
        state = json_string_value(json_object_get(status, "state"));
        if (!desired)
                return state_from_string(state);

        version = twin_document_version(desired);
        dv = json_object_get(status, "desiredVersion");
        if (version < 0)
                /* The device refuses a desired document without a readable $version, and says so
                 * without naming a version. */
                return !dv && state && strcmp(state, "failed") == 0 ? DEVICE_STATE_FAILED
                                                                    : DEVICE_STATE_PENDING;
        if (json_is_integer(dv) && json_integer_value(dv) == version)
                return state_from_string(state);
        return DEVICE_STATE_PENDING;
}

bool device_is_online(const json_t *connection)
{
        const char *s = json_string_value(json_object_get(connection, "state"));

        return s && strcmp(s, "online") == 0;
}
