/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Runs the apply command: uv_spawn without a shell, the desired properties as JSON on stdin,
 * TWIN_DEVICE_ID, TWIN_CONFIG_ID and TWIN_DESIRED_VERSION in its environment, its stdout to the
 * agent's stdout, the tail of its stderr kept (bounded) for the error, killed after the timeout.
 */

#include <stdint.h>
#include <uv.h>

#include "macro.h"

#define APPLY_STDERR_TAIL_MAX 1024

typedef struct ApplyJob ApplyJob;

/* Called once when the job is over. error is 0 on exit 0, otherwise a negative errno
 * (-ETIMEDOUT when killed for the timeout, -ECHILD for a non-zero exit or a signal); message
 * describes the failure on one line ("apply command exited with status 3: <stderr tail>",
 * "apply command was killed by signal 9 (Killed)", "apply command timed out after 60 s", "apply
 * command timed out after 60 s and did not die after SIGKILL" 5 s after the kill) or is NULL on
 * success. The job may be freed from inside the callback. */
typedef void (*apply_done_fn)(ApplyJob *job, int error, const char *message, void *userdata);

typedef struct ApplyRequest {
        char *const *argv; /* the command, already split */
        const char *input; /* written to stdin, then stdin is closed */
        size_t input_len;
        const char *device_id;
        const char *config_id; /* rendered for the environment; "" when none */
        int64_t desired_version;
        uint64_t timeout_usec; /* 0: no timeout */
} ApplyRequest;

/* Spawns the command. On failure to spawn returns a negative errno and the callback never runs. */
int apply_job_start(ApplyJob **ret, uv_loop_t *loop, const ApplyRequest *req, apply_done_fn done,
                    void *userdata);

/* Kills a running job (SIGKILL) without calling back, and closes its handles; the memory goes
 * when libuv has closed them. Accepts NULL; returns NULL. */
ApplyJob *apply_job_free(ApplyJob *job);
