/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Whom the agent trusts to sign desired documents: the public keys in [trust] keys, one PEM file
 * each, loaded at start and on SIGHUP; and the check of a desired document's signature against
 * them (docs/protocol.md, "Signed desired documents"). The signature format itself is pure code
 * in src/shared/twin-signature.[ch].
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "macro.h"
#include "twin-signature.h"
#include "twind-state.h"

/* At most this many key files, of at most this many bytes each. */
#define TRUST_KEYS_MAX     256
#define TRUST_KEY_FILE_MAX (16 * 1024)
#define TRUST_KEY_FILE_EXT ".pem"

typedef struct TrustStore TrustStore;

/*
 * Loads every NAME.pem in dir (names starting with '.' and other names are ignored): an Ed25519
 * public key each, known by the key id NAME and by its fingerprint. A missing directory is an
 * empty store. Returns 0, -ENOMEM, or a negative errno with one line in err naming the file and
 * the problem (a directory that cannot be read, a file that is not a key, a NAME that is not a
 * key id, one NAME that is another key's fingerprint, too many files).
 */
int trust_store_load(const char *dir, TrustStore **ret, char *err, size_t errlen);
TrustStore *trust_store_free(TrustStore *t);
DEFINE_FREE_FUNC(TrustStore, trust_store_free)

/* How many keys the store holds. */
size_t trust_store_size(const TrustStore *t);

/* The directory the store was loaded from. */
const char *trust_store_dir(const TrustStore *t);

/* "ops-2026, sha256:..." for the log: every key's name (malloc'd; "" for none), or NULL. */
char *trust_store_describe(const TrustStore *t);

/* What an accepted signature says: the key that verified it and the sequence to record. */
typedef struct TrustVerdict {
        char key_name[TWIN_SIGNATURE_KEY_ID_MAX + 1];
        char fingerprint[TWIN_DIGEST_STRING_SIZE];
        int64_t seq;
} TrustVerdict;

/*
 * Checks the signature of desired document doc for device device_id at time now (seconds since
 * the epoch), in the order of enum TwinSignatureCheck: present, well-formed, by a trusted key,
 * verifying, for this device, not expired, and its sequence above the one state last accepted
 * from that key. Returns 0 with *ret filled; -EPERM with the failed check in *ret_check and one
 * line in err that begins with its name ("replayed: ..."); or -ENOMEM.
 */
int trust_check(const TrustStore *t, const json_t *doc, const char *device_id, int64_t now,
                const TwinState *state, TrustVerdict *ret, enum TwinSignatureCheck *ret_check,
                char *err, size_t errlen);
