/* SPDX-License-Identifier: MIT */
#include "twinctl-device.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
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

int device_map_update(json_t *map, const char *root, const char *topic, const void *payload,
                      size_t len, const char **ret_id, enum DeviceKind *ret_kind)
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
                }
        }

        entry = json_object_get(map, idbuf);
        if (!entry) {
                entry = json_pack("{s:n,s:n,s:n}", "desired", "reported", "connection");
                if (!entry || json_object_set_new(map, idbuf, entry) < 0) {
                        json_decref(doc);
                        return -ENOMEM;
                }
        }
        if (json_object_set_new(entry, kind_names[kind], doc ? doc : json_null()) < 0)
                return -ENOMEM;

        /* Hand out the map's own copy of the key, which lives as long as the entry. */
        iter = json_object_iter_at(map, idbuf);
        if (ret_id)
                *ret_id = json_object_iter_key(iter);
        if (ret_kind)
                *ret_kind = kind;
        return r;
}

json_t *device_entry_get(const json_t *entry, enum DeviceKind kind)
{
        json_t *d = json_object_get(entry, device_kind_to_string(kind));

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
        enum DeviceState s;

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
        if (!json_is_integer(dv) || json_integer_value(dv) != version)
                return DEVICE_STATE_PENDING;
        s = state_from_string(state);
        if (s == DEVICE_STATE_SUCCESS && !twin_properties_equal(desired, reported))
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

bool device_is_online(const json_t *connection)
{
        const char *s = json_string_value(json_object_get(connection, "state"));

        return s && strcmp(s, "online") == 0;
}
