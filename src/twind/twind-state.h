/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The agent's persistent state: what it applied and what it answered, in one JSON file
 * (state.json) in the state directory, replaced atomically. Encoding and decoding are pure;
 * load and save do the I/O. Format in docs/protocol.md, "State file".
 */

#include <stdint.h>
#include <jansson.h>

#include "macro.h"

#define TWIN_STATE_FILE_NAME "state.json"
#define TWIN_STATE_FORMAT    1
#define TWIN_STATE_MAX_BYTES (256 * 1024)
/* The reported $version is reserved in blocks so that a publish needs no fsync of its own. */
#define TWIN_STATE_VERSION_RESERVE 64
/* Largest reportedVersion a state file may hold. The agent adds reserve blocks and increments
 * to it; half the int64 range leaves room for more publishes than a device will ever make, so
 * that arithmetic cannot overflow (a tampered or corrupt file must not cause undefined
 * behaviour). */
#define TWIN_STATE_REPORTED_VERSION_MAX (INT64_MAX / 2)
/* Signing keys whose last sequence number the file keeps; past this many the lowest sequence
 * is forgotten (a key rotated out long ago). */
#define TWIN_STATE_SIGNERS_MAX 1024

typedef struct TwinState {
        json_t *applied;          /* applied properties (object, never NULL) */
        int64_t desired_version;  /* the desired $version last answered; -1 none */
        int64_t reported_version; /* the last reported $version published (or reserved) */
        json_t *status;           /* the last $status object published; NULL none */
        /* twin_digest() of the desired request last answered (its canonical document, or the
         * raw bytes of a refused one), so that a redelivery is told from a new request that
         * reuses its $version and configId; NULL when unknown (a file from an older agent). */
        char *answered_digest;
        /* What a dialect keeps across restarts, by dialect name (AWS: the shadow version at
         * which desired last changed); NULL when none. */
        json_t *dialects;
        /* The properties the device reports itself (twinctl report), published next to the
         * applied ones; NULL when none. */
        json_t *device;
        /* The last signature sequence number accepted from each signing key, by the key's
         * fingerprint ("sha256:..." -> integer), so that an old signed document is refused as
         * a replay, also after a restart; NULL when none. */
        json_t *signers;
} TwinState;

/* Empty state: applied {}, desired_version -1, reported_version 0, status NULL. */
int twin_state_new(TwinState **ret);
TwinState *twin_state_free(TwinState *s);
DEFINE_FREE_FUNC(TwinState, twin_state_free)

/* A deep copy (for keeping the old state while a save is attempted). */
int twin_state_copy(const TwinState *s, TwinState **ret);

/* The last sequence number accepted from the key with this fingerprint; 0 when none. */
int64_t twin_state_signer_sequence(const TwinState *s, const char *fingerprint);

/* Records seq as the last one accepted from the key with this fingerprint (when above the one
 * kept), forgetting the key with the lowest sequence past TWIN_STATE_SIGNERS_MAX keys. Returns 0
 * or -ENOMEM. */
int twin_state_set_signer_sequence(TwinState *s, const char *fingerprint, int64_t seq);

/* Pure: serialise to a malloc'd NUL-terminated JSON text. Returns 0 or -ENOMEM. */
int twin_state_encode(const TwinState *s, char **ret);

/* Pure: parse text (len bytes); reportedVersion at most TWIN_STATE_REPORTED_VERSION_MAX.
 * Returns 0, or -EINVAL / -E2BIG with a reason in err. */
int twin_state_decode(const char *text, size_t len, TwinState **ret, char *err, size_t errlen);

/*
 * Loads dir/state.json. A missing file gives empty state and 0. A stale temporary file from an
 * interrupted save is removed. A file that was read but cannot be decoded is renamed to
 * state.json.corrupt-<UTC time> (never overwritten), the reason goes to err, and the return is
 * -EBADMSG with empty state in *ret so the caller can start fresh and log it. A file that cannot
 * be read (permissions, I/O error, not a regular file) is left alone: a negative errno with the
 * reason in err, and nothing in *ret.
 */
int twin_state_load(const char *dir, TwinState **ret, char **ret_kept_aside, char *err,
                    size_t errlen);

/* Atomically replaces dir/state.json: temp file in dir, write, fsync, rename, fsync dir. On a
 * failure up to the rename the old file stays intact, the temp file is removed and a negative
 * errno returned; once renamed the new file is in place, so a failing directory fsync is only
 * logged as a warning and 0 returned. */
int twin_state_save(const char *dir, const TwinState *s);
