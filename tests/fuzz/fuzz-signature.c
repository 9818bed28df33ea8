/* SPDX-License-Identifier: MIT */
/* Feeds arbitrary bytes, as a desired document, to the signature property's parser and the
 * canonical encoder, and checks what the agent relies on: every refusal has a one-line reason,
 * the canonical text is JSON that reads back as the same value, and a parsed signature survives
 * being made again with its own fields. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-util.h"
#include "json-util.h"
#include "twin-signature.h"

static EVP_PKEY *key;

/* A fixed key: the fuzzer explores the documents, not the keys. */
static EVP_PKEY *fuzz_key(void)
{
        static const unsigned char seed[32] = { 1, 2, 3, 4, 5, 6, 7, 8 };

        if (!key)
                key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
        REQUIRE(key);
        return key;
}

static void require_reason(const char *err)
{
        _cleanup_json_ json_t *s = json_string(err);

        REQUIRE(strlen(err) > 0 && !strchr(err, '\n'));
        REQUIRE(s); /* valid UTF-8: it goes into $status.error */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        _cleanup_json_ json_t *doc = NULL, *back = NULL, *again = NULL;
        _cleanup_free_ char *text = NULL, *msg = NULL;
        TwinSignature sig, sig2;
        char err[256];
        size_t len = 0;
        int r;

        doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
        if (!doc || !json_is_object(doc))
                return 0;

        r = twin_canonical_encode(doc, &text, &len, err, sizeof err);
        if (r == -EINVAL)
                require_reason(err);
        if (r == 0) {
                REQUIRE(len == strlen(text));
                for (size_t i = 0; i < len; i++)
                        REQUIRE((unsigned char)text[i] >= 0x20 && (unsigned char)text[i] < 0x7f);
                back = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
                REQUIRE(back && json_equal(back, doc));
        }

        r = twin_signature_parse(doc, &sig, err, sizeof err);
        if (r == -ENOENT)
                REQUIRE(!json_object_get(doc, TWIN_SIGNATURE_PROPERTY));
        if (r == -EINVAL)
                require_reason(err);
        if (r < 0)
                return 0;
        REQUIRE(twin_signature_key_id_is_valid(sig.key_id));
        REQUIRE(twin_device_id_is_valid(sig.device_id));
        REQUIRE(sig.seq >= 1 && sig.seq <= TWIN_SIGNATURE_SEQ_MAX);

        r = twin_signature_message(doc, &msg, &len, err, sizeof err);
        if (r == -EINVAL)
                require_reason(err);
        /* A signature the fuzzer made up does not verify (and must not crash). */
        r = twin_signature_verify(doc, &sig, fuzz_key(), err, sizeof err);
        REQUIRE(r != 0);

        /* Made again with the same fields, it parses to the same fields and verifies. */
        again = json_deep_copy(doc);
        REQUIRE(again);
        TwinSignatureParams p = {
                .key_id = sig.key_id,
                .seq = sig.seq,
                .device_id = sig.device_id,
                .not_after = sig.not_after,
        };
        r = twin_signature_add(again, fuzz_key(), &p, err, sizeof err);
        if (r == -EINVAL) {
                require_reason(err);
                return 0;
        }
        REQUIRE(r == 0);
        REQUIRE(twin_signature_parse(again, &sig2, err, sizeof err) == 0);
        REQUIRE(strcmp(sig.key_id, sig2.key_id) == 0 && sig.seq == sig2.seq &&
                strcmp(sig.device_id, sig2.device_id) == 0 && sig.not_after == sig2.not_after);
        REQUIRE(twin_signature_verify(again, &sig2, fuzz_key(), err, sizeof err) == 0);
        return 0;
}
