/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The agent: keeps the device's applied configuration in step with the twin's desired
 * properties. Owns the persisted state, the dialect connection and the running apply; decides
 * what to apply (docs/protocol.md, "Agent behaviour"), reports progress, and tells listeners
 * (the control socket, sd_notify) about state changes.
 */

#include <stdbool.h>
#include <jansson.h>
#include <uv.h>

#include "macro.h"
#include "twind-conf.h"
#include "twind-state.h"

typedef struct Manager Manager;

/* Receives every event (a JSON object with at least "event" and "time"); borrowed. */
typedef void (*manager_event_fn)(const json_t *event, void *userdata);
/* Whether anyone reads events now; events are not even built while it says false. */
typedef bool (*manager_event_wanted_fn)(void *userdata);
/* Receives a new one-line STATUS= text whenever what the agent does changes. */
typedef void (*manager_status_fn)(const char *status, void *userdata);

/* Prepares the agent and its dialect from config and the loaded state (see twin_state_load()).
 * Does not connect yet. Takes ownership of config and state, also on failure. Returns a
 * negative errno after logging it. */
int manager_new(Manager **ret, uv_loop_t *loop, TwindConfig *config, TwinState *state);

/* Starts connecting to the broker. */
int manager_start(Manager *m);

/* Replaces the configuration (SIGHUP): reconnects when the broker settings changed. On error
 * the old configuration stays and the error is logged. */
int manager_reload(Manager *m, TwindConfig *config);

/* Clean shutdown: waits for a running apply to be killed, publishes offline, disconnects, calls
 * done within deadline_ms. */
void manager_shutdown(Manager *m, uint64_t deadline_ms, void (*done)(void *userdata),
                      void *userdata);

/* Sets the event listener; wanted may be NULL (always wanted). */
void manager_set_event_listener(Manager *m, manager_event_fn fn, manager_event_wanted_fn wanted,
                                void *userdata);
void manager_set_status_listener(Manager *m, manager_status_fn fn, void *userdata);

/* The "status" reply of the control socket (new reference). */
json_t *manager_status_json(Manager *m);
/* The "twin" reply: {"desired": ..., "reported": ...} as held (new reference). */
json_t *manager_twin_json(Manager *m);
/* Runs the apply of the current desired configuration again. -ENOENT when no valid desired
 * document has been received. Returns 0 when started or queued (*ret_queued: behind the
 * running apply), with the desired $version asked for in *ret_version. */
int manager_reapply(Manager *m, bool *ret_queued, int64_t *ret_version);

/* Merges patch (a merge patch of properties the device reports itself; null removes) into the
 * device's properties, saves them and publishes them soon (a burst in one publish). Returns 0;
 * -EINVAL with one line in err when refused (a key of the desired or applied configuration,
 * the status property, or what breaks the dialect's limits); -EIO with err when the state
 * could not be saved (nothing changed); -ENOMEM. */
int manager_report(Manager *m, const json_t *patch, char *err, size_t errlen);

const TwindConfig *manager_config(const Manager *m);

Manager *manager_free(Manager *m);
DEFINE_FREE_FUNC(Manager, manager_free)
