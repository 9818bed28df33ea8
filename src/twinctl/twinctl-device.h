/* SPDX-License-Identifier: MIT */
#pragma once

/* A device's twin as the broker holds it: its three topics, the documents collected from them,
 * and what they say together (converged, pending, failed; online or not). Pure, no I/O. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

enum DeviceKind {
        DEVICE_KIND_DESIRED,
        DEVICE_KIND_REPORTED,
        DEVICE_KIND_CONNECTION,
        _DEVICE_KIND_MAX,
        _DEVICE_KIND_INVALID = -1,
};

/* The device's state for its current desired $version (see twinctl(1), "list"). */
enum DeviceState {
        DEVICE_STATE_NONE,    /* no desired document and no $status */
        DEVICE_STATE_PENDING, /* an apply runs, or the device has not answered this version */
        DEVICE_STATE_SUCCESS,
        DEVICE_STATE_FAILED,
        /* Answered success for the current desired $version, but the reported properties
         * differ from the desired ones: the device did not take them (an unchanged configId is
         * answered without applying), so the twin has not converged. */
        DEVICE_STATE_DRIFTED,
};

/* "desired", "reported", "connection". */
const char *device_kind_to_string(enum DeviceKind k);

/* "-", "pending", "success", "failed", "drifted". */
const char *device_state_to_string(enum DeviceState s);

/* Returns "{root}/{id}/{kind}" (id may be "+"), malloc'd, or NULL on ENOMEM. */
char *device_topic(const char *root, const char *id, enum DeviceKind kind);

/*
 * Records a message on "{root}/{id}/{kind}" in map, an object of devices keyed by id, each an
 * entry holding the desired, reported and connection documents (read it with
 * device_entry_get()) where a missing document is null.
 * An empty payload (a deleted retained message) stores null. A payload that is not a JSON object
 * stores null and returns -EBADMSG. Topics that are not twin topics with a valid device id return
 * -ENOENT. On success (and on -EBADMSG) *ret_id (borrowed from map) and *ret_kind are set.
 */
int device_map_update(json_t *map, const char *root, const char *topic, const void *payload,
                      size_t len, const char **ret_id, enum DeviceKind *ret_kind);

/* The same, keeping of each document only what device_state(), device_is_online() and the list
 * columns read: desired $version and configId, reported configId and $status (state,
 * desiredVersion, configId), connection state, and for desired and reported a digest of their
 * properties ("$props") so that drift is still seen; identical summaries are one shared,
 * read-only value. A fleet's list then holds about 100 bytes per device instead of its whole
 * documents. */
int device_map_update_summary(json_t *map, const char *root, const char *topic, const void *payload,
                              size_t len, const char **ret_id, enum DeviceKind *ret_kind);

/* A new device entry with no documents, for back ends that fill the map themselves; NULL on
 * ENOMEM. */
json_t *device_entry_new(void);

/* Stores doc (taken, also on failure and when entry is NULL; NULL for none) as the entry's
 * document of that kind. 0 or -ENOMEM. */
int device_entry_set(json_t *entry, enum DeviceKind kind, json_t *doc);

/* Borrowed document of a device entry (from the map), or NULL when absent. */
json_t *device_entry_get(const json_t *entry, enum DeviceKind kind);

/* The reported "$status" object, or NULL. Borrowed. */
json_t *device_reported_status(const json_t *reported);

/* Whether key is one the device reports itself ($status.deviceProperties lists them). */
bool device_reported_is_own(const json_t *reported, const char *key);

/* The reported properties of the configuration (own == false: without those the device
 * reports itself) or only the device's own (own == true). New reference; NULL on ENOMEM. */
json_t *device_reported_properties(const json_t *reported, bool own);

/* What desired and reported say together: the $status answering the desired $version, and
 * whether the properties agree once it says success. */
enum DeviceState device_state(const json_t *desired, const json_t *reported);

/* The largest desired $version the twin has seen, in the desired document or answered in the
 * reported $status; -1 when neither has one. A new request goes above it, so that it is never
 * taken for one the device already answered. */
int64_t device_last_version(const json_t *desired, const json_t *reported);

/* The largest integer configId in the desired document, the reported properties and the
 * reported $status: *ret is set, and 1 returned, when there is one; 0 when none is an integer
 * (*ret untouched). A non-integer configId in any of them is returned borrowed in
 * *ret_non_integer (may be NULL), for the caller to name. */
int device_last_config_id(const json_t *desired, const json_t *reported, int64_t *ret,
                          const json_t **ret_non_integer);

/* Whether nothing shows the device ever connected: no $status and no reported properties, and
 * a connection document that is absent or says it never was (IoT Hub's last activity in year
 * 1). A set then most likely names a device that does not exist. */
bool device_never_connected(const json_t *connection, const json_t *reported);

/* When the device was last seen, from its connection document: the time of an online one (or
 * of the list, now), an offline one's "since" or IoT Hub's last activity, or a lower bound from
 * a will's "connectedSince" (the lost connection began then: the device was seen after it).
 * *ret_time is borrowed from connection (NULL for now); false when nothing says. */
bool device_last_seen(const json_t *connection, const char **ret_time, bool *ret_exact);

/* Whether the connection document says online. */
bool device_is_online(const json_t *connection);
