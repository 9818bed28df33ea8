/* SPDX-License-Identifier: MIT */
#pragma once

/* Signed desired documents on the service side (docs/protocol.md, "Signed desired documents"):
 * twinctl keygen, and the signature set --sign-key adds to the new desired document. */

#include <jansson.h>

#include "macro.h"
#include "twinctl.h"

typedef struct Signer Signer;

/* The signer of set: the private key of --sign-key (or $TWINCTL_SIGN_KEY), the key id of
 * --key-id (default: the key's fingerprint) and --not-after. *ret is NULL when set does not
 * sign. Returns 0, or a negative errno after saying why (the key file is named, never its
 * content). */
int signer_new(const TwinctlArgs *args, Signer **ret);
Signer *signer_free(Signer *s);
DEFINE_FREE_FUNC(Signer, signer_free)

/* Signs doc, the whole new desired properties of device_id, in place, with a sequence number
 * above the one of current's signature (current: the desired document it replaces, or NULL).
 * Returns 0, or a negative errno after saying why. */
int signer_sign(const Signer *s, json_t *doc, const json_t *current, const char *device_id);
