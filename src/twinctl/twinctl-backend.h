/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Where the service-side verbs (get, set, watch, list, query) find twins: the back end, an ops
 * table in the manner of seatd's struct seat_impl. The standard broker (twinctl-broker.c), IoT
 * Hub's REST API (twinctl-azure.c) and AWS IoT's shadow topics (twinctl-aws.c) are one each;
 * the verbs (twinctl-service.c) see only normalised twins:
 *
 *   desired:    the desired document, properties and "$version" (the version that names the
 *               request, whatever the service calls it)
 *   reported:   the reported document, properties, "$version" and "$status" (the status
 *               property of a cloud, renamed)
 *   connection: {"state": "online"|"offline", "since"?, "agent"?, "lastActivity"?}
 *
 * kept in a map of devices (see device_map_update()) that the back end fills as it learns
 * things, telling the verbs of each change.
 */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "macro.h"
#include "twin-model.h"
#include "twinctl-device.h"
#include "twinctl.h"

typedef struct TwinBackend TwinBackend;

/* A document of device id changed (or arrived first); entry is its map entry (borrowed). */
typedef void (*TwinBackendChangeFunc)(TwinBackend *b, const char *id, enum DeviceKind kind,
                                      const json_t *entry, void *userdata);

/* What a back end can do beyond get, set and watch. */
enum TwinBackendFlag {
        TWIN_BACKEND_PUSH = 1 << 0,  /* changes arrive as they happen (else: polled) */
        TWIN_BACKEND_LIST = 1 << 1,  /* can list every device */
        TWIN_BACKEND_QUERY = 1 << 2, /* runs the service's own queries */
        /* The service numbers desired versions itself: set() tells which one it gave. */
        TWIN_BACKEND_SERVICE_VERSION = 1 << 3,
};

/* What list asks for, so that a back end can filter at the service where it can. */
typedef struct TwinBackendFilter {
        bool pending, failed, success, offline, online;
        char *const *ids; /* NULL: every device; else only these (NULL-terminated) */
        /* Only what list shows is read from the entries (see device_map_update_summary()): a
         * back end may keep that much of each document instead of the whole. */
        bool summary;
} TwinBackendFilter;

typedef struct TwinBackendImpl {
        const char *name;
        unsigned flags;
        /* What the service accepts in a desired document (see twin-model.h). */
        const TwinLimits *limits;
        /* Connects and learns the current twin of id (NULL: of every device the filter
         * admits, which needs TWIN_BACKEND_LIST unless filter->ids names them). Changes go to
         * on_change from then on, from inside wait(). Returns 0, -EINTR when interrupted, or
         * a negative errno after saying why. */
        int (*open)(TwinBackend **ret, const TwinctlArgs *args, const char *id,
                    const TwinBackendFilter *filter, bool catch_interrupt,
                    TwinBackendChangeFunc on_change, void *userdata);
        /* Makes doc (a whole desired document, without "$version") the desired state of id;
         * patch is the merge patch from the current desired properties to it. With
         * if_version >= 0, only when the desired $version is still that one (-ESTALE, logged,
         * otherwise). Sets *ret_version to the $version that names the new request. */
        int (*set)(TwinBackend *b, const char *id, const json_t *doc, const json_t *patch,
                   int64_t next_version, int64_t if_version, int64_t *ret_version);
        /* Whether the service acknowledged the last set; answers read before that may be old. */
        bool (*acknowledged)(const TwinBackend *b);
        /* Runs until done(userdata), the deadline (-ETIMEDOUT; 0: none), an interrupt (-EINTR)
         * or a lost service (a logged negative errno). */
        int (*wait)(TwinBackend *b, bool (*done)(void *userdata), void *userdata,
                    uint64_t deadline_ms);
        /* Optional: removes the twin of id, opened before, from the service: the broker's
         * retained documents, IoT Hub's device identity (a twin lives as long as it), AWS IoT's
         * shadow. Returns 0 or a logged negative errno (-ENOENT: not there). */
        int (*remove)(TwinBackend *b, const char *id);
        /* Optional (TWIN_BACKEND_QUERY): the rows of the service's own query. */
        int (*query)(TwinBackend *b, const char *query, json_t **ret_rows);
        /* The devices map: id -> {"desired", "reported", "connection"}. Borrowed. */
        json_t *(*devices)(TwinBackend *b);
        /* For messages: the service's address. */
        const char *(*address)(const TwinBackend *b);
        void (*free)(TwinBackend *b);
} TwinBackendImpl;

struct TwinBackend {
        const TwinBackendImpl *impl;
};

extern const TwinBackendImpl twinctl_backend_broker;
#if HAVE_DIALECT_AZURE
extern const TwinBackendImpl twinctl_backend_azure;
#endif
#if HAVE_DIALECT_AWS
extern const TwinBackendImpl twinctl_backend_aws;
#endif

/* The back end the command line names (--azure, --dialect aws, else the broker). */
const TwinBackendImpl *twin_backend_for(const TwinctlArgs *args);

static inline TwinBackend *twin_backend_free(TwinBackend *b)
{
        if (b)
                b->impl->free(b);
        return NULL;
}
DEFINE_FREE_FUNC(TwinBackend, twin_backend_free)

/* Maps a negative errno from a back end to an exit code (enum TwinctlExit). */
int twin_backend_error_to_exit(int r);
