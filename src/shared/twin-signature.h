/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Signed desired documents, pure: the canonical encoding, the signature property (parse,
 * validate, make), Ed25519 signing and verification through OpenSSL, keys in memory. No I/O, no
 * clock, no logging above debug. The format is written down byte for byte in docs/protocol.md,
 * "Signed desired documents"; tests/integration/twinsign.py is a second implementation of it.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "macro.h"
#include "twin-model.h"

/* TWIN_SIGNATURE_PROPERTY, the member that holds the signature, is in twin-model.h. */
#define TWIN_SIGNATURE_ALGORITHM "ed25519"
/* The largest sequence number: 2^52 - 1, an integer IoT Hub and AWS IoT keep exactly. */
#define TWIN_SIGNATURE_SEQ_MAX    INT64_C(4503599627370495)
#define TWIN_SIGNATURE_KEY_ID_MAX 128
#define TWIN_SIGNATURE_BYTES      64
/* base64 of TWIN_SIGNATURE_BYTES with padding, and its NUL. */
#define TWIN_SIGNATURE_TEXT_SIZE 89
/* Nesting the canonical encoder follows at most; deeper values are refused (documents nest
 * far less: TWIN_MAX_DEPTH). */
#define TWIN_CANONICAL_MAX_DEPTH 64

/* What a device checks, in this order; the first that fails names the refusal. */
enum TwinSignatureCheck {
        TWIN_SIGNATURE_CHECK_UNSIGNED,      /* no signature property, and one is required */
        TWIN_SIGNATURE_CHECK_MALFORMED,     /* the property breaks its own rules */
        TWIN_SIGNATURE_CHECK_UNKNOWN_KEY,   /* keyId names no trusted key */
        TWIN_SIGNATURE_CHECK_BAD_SIGNATURE, /* sig does not verify over the document */
        TWIN_SIGNATURE_CHECK_WRONG_DEVICE,  /* signed for another device */
        TWIN_SIGNATURE_CHECK_EXPIRED,       /* past notAfter */
        TWIN_SIGNATURE_CHECK_REPLAYED,      /* seq not above the last one accepted from the key */
        _TWIN_SIGNATURE_CHECK_MAX,
};

/* "unsigned", "malformed signature", "unknown key", "bad signature", "wrong device", "expired",
 * "replayed": the words that begin a refusal's error. */
const char *twin_signature_check_to_string(enum TwinSignatureCheck c);

/* A parsed signature property. */
typedef struct TwinSignature {
        char key_id[TWIN_SIGNATURE_KEY_ID_MAX + 1];
        int64_t seq;
        char device_id[TWIN_DEVICE_ID_MAX + 1];
        int64_t not_after; /* seconds since the epoch; -1: none */
        unsigned char sig[TWIN_SIGNATURE_BYTES];
} TwinSignature;

/* Whether id is 1..128 characters of A-Z a-z 0-9 - . _ : (a key id, and a key file's name). */
bool twin_signature_key_id_is_valid(const char *id);

/* The canonical encoding of v into *ret (malloc'd, NUL-terminated, *ret_len bytes): sorted keys,
 * no white space, ASCII with lower-case \u escapes, integers only. Returns 0, -EINVAL with a
 * reason in err (a real number, nesting past TWIN_CANONICAL_MAX_DEPTH), or -ENOMEM. */
int twin_canonical_encode(const json_t *v, char **ret, size_t *ret_len, char *err, size_t errlen);

/* Parses the signature property of desired document doc. Returns 0, -ENOENT when doc has none,
 * or -EINVAL with a reason in err ("twinSignature.seq is ..."). */
int twin_signature_parse(const json_t *doc, TwinSignature *ret, char *err, size_t errlen);

/* The bytes a signature covers: the canonical encoding of doc's properties (no '$' keys) with
 * the signature property minus its "sig" member. Same return as twin_canonical_encode(), and
 * -EINVAL when doc has no signature property object. */
int twin_signature_message(const json_t *doc, char **ret, size_t *ret_len, char *err,
                           size_t errlen);

/* Verifies sig over doc's message with key. Returns 0, -EBADMSG when it does not verify, or
 * -EINVAL (err says why: a document without a canonical form), -ENOMEM. */
int twin_signature_verify(const json_t *doc, const TwinSignature *sig, EVP_PKEY *key, char *err,
                          size_t errlen);

/* What twin_signature_add() writes into the signature property. */
typedef struct TwinSignatureParams {
        const char *key_id;
        int64_t seq;
        const char *device_id;
        int64_t not_after; /* -1: none */
} TwinSignatureParams;

/* Signs doc in place with private key: sets its signature property (replacing any). Returns 0,
 * or -EINVAL with a reason in err (a parameter out of range, a real number in doc), -ENOMEM,
 * -EIO (OpenSSL failed); doc then has no signature property. */
int twin_signature_add(json_t *doc, EVP_PKEY *key, const TwinSignatureParams *p, char *err,
                       size_t errlen);

/* An Ed25519 key from PEM text: a public key ("PUBLIC KEY") or, with private, an unencrypted
 * PKCS#8 private key ("PRIVATE KEY"). Exactly one PEM block. Returns 0, -EINVAL with a reason
 * in err, or -ENOMEM. err never holds key material. */
int twin_key_from_pem(const void *pem, size_t len, bool private, EVP_PKEY **ret, char *err,
                      size_t errlen);

/* A new Ed25519 key pair. Returns 0 or -EIO. */
int twin_key_generate(EVP_PKEY **ret);

/* The PEM text of key's public half, or with private of the private key (PKCS#8, unencrypted).
 * Returns 0 with a malloc'd string in *ret (wipe a private one with secret_free()), or -EIO. */
int twin_key_to_pem(EVP_PKEY *key, bool private, char **ret);

/* A key's fingerprint: twin_digest() of its raw 32-byte public key, "sha256:<hex>". */
int twin_key_fingerprint(EVP_PKEY *key, char ret[static TWIN_DIGEST_STRING_SIZE]);

/* Parses exactly "YYYY-MM-DDTHH:MM:SSZ" (UTC, as twin_format_time() writes) into seconds since
 * the epoch. Returns 0 or -EINVAL. */
int twin_time_parse(const char *s, int64_t *ret);

static inline void evp_pkey_freep(EVP_PKEY **p)
{
        if (*p)
                EVP_PKEY_free(*p);
}
#define _cleanup_evp_pkey_ _cleanup_(evp_pkey_freep)
