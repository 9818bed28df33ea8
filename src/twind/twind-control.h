/* SPDX-License-Identifier: MIT */
#pragma once

/* The control socket server: line-delimited JSON (src/shared/control-protocol.h) on a Unix
 * stream socket, bound by the agent or passed by systemd (sd_listen_fds). Read-only methods for
 * anyone who can open the socket; privileged ones for root and the agent's own user
 * (SO_PEERCRED). Per-client memory is bounded; slow readers are dropped, never waited for. */

#include <jansson.h>
#include <uv.h>

#include "macro.h"
#include "twind-manager.h"

typedef struct ControlServer ControlServer;

/* Listens on listen_fd when >= 0 (already bound and listening, from systemd), otherwise binds
 * path (removing a stale socket, mode 0660). Returns 0 or a negative errno, logged. */
int control_server_new(ControlServer **ret, uv_loop_t *loop, Manager *manager, const char *path,
                       int listen_fd);

/* Whether any client follows events (so that events need to be built at all). */
bool control_server_has_followers(const ControlServer *s);

/* Sends an event line to every client following events. */
void control_server_broadcast(ControlServer *s, const json_t *event);

/* Closes the listener (removing the socket file when we bound it) and every client. Memory goes
 * when libuv has closed the handles. Accepts NULL; returns NULL. */
ControlServer *control_server_free(ControlServer *s);
