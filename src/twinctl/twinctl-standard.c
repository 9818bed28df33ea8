/* SPDX-License-Identifier: MIT */
/*
 * The standard broker back end: twins as docs/protocol.md keeps them, three retained documents
 * per device under the topic root, read by subscribing (which delivers them) and written by
 * publishing the whole desired document. MQTT has no compare-and-set: --if-version is checked
 * against what was read, and a concurrent writer is noticed by set --wait (twinctl-service.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "log.h"
#include "twin-model.h"
#include "twinctl-backend.h"
#include "twinctl-broker.h"

typedef struct StandardBackend {
        TwinBackend base;
        const TwinctlArgs *args;
        BrokerSession *session;
        json_t *map;
        const char *id;
        bool summary; /* keep summaries of the documents (TwinBackendFilter.summary) */
        TwinBackendChangeFunc on_change;
        void *userdata;
} StandardBackend;

static StandardBackend *standard(TwinBackend *b)
{
        return (StandardBackend *)b;
}

static void on_message(BrokerSession *s, const char *topic, const void *payload, size_t len,
                       void *userdata)
{
        StandardBackend *sb = userdata;
        enum DeviceKind kind;
        const char *id;
        int r;

        /* list needs only a summary of each document: far less memory for a fleet. */
        r = (sb->summary ? device_map_update_summary : device_map_update)(
            sb->map, sb->args->topic_root, topic, payload, len, &id, &kind);
        if (r == -ENOENT)
                return;
        if (r == -ENOMEM) {
                log_error_errno(r, "Out of memory");
                exit(TWINCTL_EXIT_FAILURE);
        }
        if (r == -EBADMSG)
                log_warning("%s document of %s is not a JSON object, ignoring it",
                            device_kind_to_string(kind), id);
        if (sb->id && strcmp(id, sb->id) != 0)
                return;
        if (sb->on_change)
                sb->on_change(&sb->base, id, kind, json_object_get(sb->map, id), sb->userdata);
}

static void standard_free(TwinBackend *b)
{
        StandardBackend *sb = standard(b);

        broker_session_free(sb->session);
        json_decref(sb->map);
        free(sb);
}

static int standard_open(TwinBackend **ret, const TwinctlArgs *args, const char *id,
                         const TwinBackendFilter *filter, bool catch_interrupt,
                         TwinBackendChangeFunc on_change, void *userdata)
{
        _cleanup_(twin_backend_freep) TwinBackend *b = NULL;
        StandardBackend *sb;
        int r;

        sb = calloc(1, sizeof(*sb));
        if (!sb)
                return log_error_errno(-ENOMEM, "Out of memory");
        sb->base.impl = &twinctl_backend_broker;
        b = &sb->base;
        sb->args = args;
        sb->summary = !id && filter && filter->summary;
        sb->id = id;
        sb->on_change = on_change;
        sb->userdata = userdata;
        sb->map = json_object();
        if (!sb->map)
                return log_error_errno(-ENOMEM, "Out of memory");

        r = broker_session_connect(&sb->session, args,
                                   twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS),
                                   catch_interrupt, on_message, sb);
        if (r < 0)
                return r == -ETIMEDOUT ? -ENOTCONN : r;
        for (enum DeviceKind k = 0; k < _DEVICE_KIND_MAX; k++) {
                _cleanup_free_ char *topic = device_topic(args->topic_root, id ? id : "+", k);

                if (!topic)
                        return log_error_errno(-ENOMEM, "Out of memory");
                r = broker_session_subscribe(sb->session, topic);
                if (r < 0)
                        return r;
        }
        /* Every retained document has arrived once the round trip comes back. */
        r = broker_session_sync(sb->session, twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS));
        if (r < 0)
                return r;
        *ret = TAKE_PTR(b);
        return 0;
}

static int standard_set(TwinBackend *b, const char *id, const json_t *doc, const json_t *patch,
                        int64_t next_version, int64_t if_version, int64_t *ret_version)
{
        StandardBackend *sb = standard(b);
        json_t *current = device_entry_get(json_object_get(sb->map, id), DEVICE_KIND_DESIRED);
        int64_t current_version = current ? twin_document_version(current) : -1;
        _cleanup_json_ json_t *full = json_deep_copy(doc);
        _cleanup_free_ char *payload = NULL, *topic = NULL;
        int r;

        /* A check, not a lock: see twinctl(1), --if-version. An absent (or unreadable)
         * $version counts as 0. */
        if (if_version >= 0 && if_version != (current_version < 0 ? 0 : current_version)) {
                log_error("version conflict: desired $version of %s is %" PRId64 ", not %" PRId64
                          "; nothing published",
                          id, current_version < 0 ? 0 : current_version, if_version);
                return -ESTALE;
        }
        if (!full || json_object_set_new(full, "$version", json_integer(next_version)) < 0 ||
            !(payload = json_dumps_compact(full)) ||
            !(topic = device_topic(sb->args->topic_root, id, DEVICE_KIND_DESIRED)))
                return log_error_errno(-ENOMEM, "Out of memory");
        r = broker_session_publish(sb->session, topic, payload, strlen(payload), true,
                                   twinctl_deadline(sb->args, TWINCTL_CONNECT_TIMEOUT_MS));
        if (r < 0)
                return r;
        *ret_version = next_version;
        return 0;
}

/* Deletes the three retained messages (an empty retained payload is MQTT's delete), each
 * acknowledged by the broker. */
static int standard_remove(TwinBackend *b, const char *id)
{
        StandardBackend *sb = standard(b);
        int r;

        for (enum DeviceKind k = 0; k < _DEVICE_KIND_MAX; k++) {
                _cleanup_free_ char *topic = device_topic(sb->args->topic_root, id, k);

                if (!topic)
                        return log_error_errno(-ENOMEM, "Out of memory");
                r = broker_session_publish(sb->session, topic, NULL, 0, true,
                                           twinctl_deadline(sb->args, TWINCTL_CONNECT_TIMEOUT_MS));
                if (r < 0)
                        return r;
        }
        return 0;
}

static bool standard_acknowledged(const TwinBackend *b)
{
        return broker_session_published(((const StandardBackend *)b)->session);
}

static int standard_wait(TwinBackend *b, bool (*done)(void *userdata), void *userdata,
                         uint64_t deadline_ms)
{
        return broker_session_wait(standard(b)->session, done, userdata, deadline_ms);
}

static json_t *standard_devices(TwinBackend *b)
{
        return standard(b)->map;
}

static const char *standard_address(const TwinBackend *b)
{
        return broker_session_url(((const StandardBackend *)b)->session);
}

const TwinBackendImpl twinctl_backend_broker = {
        .name = "broker",
        .flags = TWIN_BACKEND_PUSH | TWIN_BACKEND_LIST,
        .limits = &twin_limits_standard,
        .open = standard_open,
        .set = standard_set,
        .acknowledged = standard_acknowledged,
        .remove = standard_remove,
        .wait = standard_wait,
        .devices = standard_devices,
        .address = standard_address,
        .free = standard_free,
};
