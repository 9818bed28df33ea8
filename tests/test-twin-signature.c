/* SPDX-License-Identifier: MIT */
/* Signed desired documents: the canonical encoding, the signature property, signing and
 * verifying. The known answers (argv[1], tests/twin-signature-vectors.json) come from a second
 * implementation, tests/integration/twinsign.py (Python's json and python3-cryptography), so the
 * format is not defined by this code alone: Ed25519 is deterministic, so signing the same
 * document with the same key must give the very same bytes. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "json-util.h"
#include "test-util.h"
#include "twin-signature.h"

static json_t *vectors;
static EVP_PKEY *vector_key; /* the vectors' private key */
static EVP_PKEY *vector_pub; /* its public half, from the vectors' PEM */

static json_t *load(const char *text)
{
        json_error_t e;
        json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &e);

        if (!v)
                fprintf(stderr, "test JSON does not parse: %s: %s\n", text, e.text);
        return v;
}

static void test_canonical_vectors(void)
{
        size_t i;
        json_t *c;

        json_array_foreach (json_object_get(vectors, "canonical"), i, c) {
                _cleanup_free_ char *text = NULL;
                const char *want = json_string_value(json_object_get(c, "text"));
                size_t len = 0;
                char err[256];

                CHECK_INT_EQ(twin_canonical_encode(json_object_get(c, "value"), &text, &len, err,
                                                   sizeof err),
                             0);
                if (!text || strcmp(text, want) != 0)
                        fprintf(stderr, "canonical case '%s'\n",
                                json_string_value(json_object_get(c, "name")));
                CHECK_STR_EQ(text, want);
                CHECK_INT_EQ(len, strlen(want));
        }
        CHECK(i >= 10);
}

static void test_canonical_refusals(void)
{
        _cleanup_json_ json_t *real = load("{\"a\": [1, {\"b\": 1.5}]}");
        _cleanup_json_ json_t *deep = json_array(), *whole = load("{\"n\": 1.0}");
        char *text = NULL, err[256];
        json_t *inner = deep;

        CHECK_INT_EQ(twin_canonical_encode(real, &text, NULL, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "real number 1.5") && strstr(err, "only integers"));
        /* 1.0 is a real too: jansson keeps the distinction, and so does Python. */
        CHECK_INT_EQ(twin_canonical_encode(whole, &text, NULL, err, sizeof err), -EINVAL);
        for (int i = 0; i < TWIN_CANONICAL_MAX_DEPTH + 1; i++) {
                json_t *a = json_array();
                json_array_append_new(inner, a);
                inner = a;
        }
        CHECK_INT_EQ(twin_canonical_encode(deep, &text, NULL, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "nest"));
        CHECK(text == NULL);
}

static void test_keys(void)
{
        const char *priv = json_string_value(json_object_get(vectors, "privateKeyPem"));
        const char *pub = json_string_value(json_object_get(vectors, "publicKeyPem"));
        _cleanup_evp_pkey_ EVP_PKEY *from_seed = NULL, *wrong = NULL, *fresh = NULL, *again = NULL;
        _cleanup_free_ char *pem = NULL, *fresh_pub = NULL, *two = NULL;
        char fp[TWIN_DIGEST_STRING_SIZE], fp2[TWIN_DIGEST_STRING_SIZE], err[256];
        unsigned char seed[32];
        const char *hex = json_string_value(json_object_get(vectors, "seed"));

        CHECK_INT_EQ(twin_key_from_pem(priv, strlen(priv), true, &vector_key, err, sizeof err), 0);
        CHECK_INT_EQ(twin_key_from_pem(pub, strlen(pub), false, &vector_pub, err, sizeof err), 0);
        CHECK_INT_EQ(twin_key_fingerprint(vector_key, fp), 0);
        CHECK_STR_EQ(fp, json_string_value(json_object_get(vectors, "fingerprint")));
        CHECK_INT_EQ(twin_key_fingerprint(vector_pub, fp), 0);
        CHECK_STR_EQ(fp, json_string_value(json_object_get(vectors, "fingerprint")));

        /* The PEM is PKCS#8 of the seed, as OpenSSL writes it too. */
        for (int i = 0; i < 32; i++)
                sscanf(hex + 2 * i, "%2hhx", &seed[i]);
        from_seed = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof seed);
        CHECK(from_seed != NULL);
        CHECK_INT_EQ(twin_key_to_pem(from_seed, true, &pem), 0);
        CHECK_STR_EQ(pem, priv);
        free(TAKE_PTR(pem));
        CHECK_INT_EQ(twin_key_to_pem(from_seed, false, &pem), 0);
        CHECK_STR_EQ(pem, pub);

        /* A public key is not a private one and the other way round; nor is garbage, nor two
         * keys in one file. */
        CHECK_INT_EQ(twin_key_from_pem(pub, strlen(pub), true, &wrong, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "PRIVATE KEY"));
        CHECK_INT_EQ(twin_key_from_pem(priv, strlen(priv), false, &wrong, err, sizeof err),
                     -EINVAL);
        CHECK(strstr(err, "PUBLIC KEY"));
        CHECK_INT_EQ(twin_key_from_pem("hello", 5, false, &wrong, err, sizeof err), -EINVAL);
        CHECK_INT_EQ(asprintf(&two, "%s%s", pub, pub) > 0, 1);
        CHECK_INT_EQ(twin_key_from_pem(two, strlen(two), false, &wrong, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "exactly one PEM block"));
        CHECK(wrong == NULL);

        /* A fresh pair goes through PEM and keeps its fingerprint. */
        CHECK_INT_EQ(twin_key_generate(&fresh), 0);
        CHECK_INT_EQ(twin_key_to_pem(fresh, false, &fresh_pub), 0);
        CHECK(strncmp(fresh_pub, "-----BEGIN PUBLIC KEY-----\n", 27) == 0);
        CHECK_INT_EQ(
            twin_key_from_pem(fresh_pub, strlen(fresh_pub), false, &again, err, sizeof err), 0);
        CHECK_INT_EQ(twin_key_fingerprint(fresh, fp), 0);
        CHECK_INT_EQ(twin_key_fingerprint(again, fp2), 0);
        CHECK_STR_EQ(fp, fp2);
        CHECK(strcmp(fp, json_string_value(json_object_get(vectors, "fingerprint"))) != 0);
}

static void test_other_key_types(void)
{
        _cleanup_evp_pkey_ EVP_PKEY *rsa = NULL, *got = NULL;
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);
        BIO *bio = BIO_new(BIO_s_mem());
        char *data = NULL, err[256];
        long n;

        CHECK(ctx && EVP_PKEY_keygen_init(ctx) == 1 &&
              EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 1024) == 1 && EVP_PKEY_keygen(ctx, &rsa) == 1);
        EVP_PKEY_CTX_free(ctx);
        CHECK(PEM_write_bio_PUBKEY(bio, rsa) == 1);
        n = BIO_get_mem_data(bio, &data);
        CHECK_INT_EQ(twin_key_from_pem(data, (size_t)n, false, &got, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "another type"));
        BIO_free(bio);

        /* An encrypted private key fails at once, without asking for a pass phrase. */
        bio = BIO_new(BIO_s_mem());
        CHECK(PEM_write_bio_PrivateKey(bio, vector_key, EVP_aes_128_cbc(), NULL, 0, NULL,
                                       (void *)"secret phrase") == 1);
        n = BIO_get_mem_data(bio, &data);
        CHECK(strstr(data, "ENCRYPTED PRIVATE KEY") != NULL);
        CHECK_INT_EQ(twin_key_from_pem(data, (size_t)n, true, &got, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "unencrypted"));
        BIO_free(bio);
        CHECK(got == NULL);
}

/* Each vector: the message is the Python one byte for byte, its signature verifies, and
 * signing it again here gives Python's signature. */
static void test_document_vectors(void)
{
        size_t i;
        json_t *d;

        json_array_foreach (json_object_get(vectors, "documents"), i, d) {
                json_t *doc = json_object_get(d, "document");
                _cleanup_json_ json_t *resigned = json_deep_copy(doc);
                _cleanup_free_ char *msg = NULL;
                TwinSignature sig;
                char err[256];
                size_t len = 0;

                CHECK_INT_EQ(twin_signature_message(doc, &msg, &len, err, sizeof err), 0);
                CHECK_STR_EQ(msg, json_string_value(json_object_get(d, "message")));
                CHECK_INT_EQ(twin_signature_parse(doc, &sig, err, sizeof err), 0);
                CHECK_INT_EQ(twin_signature_verify(doc, &sig, vector_pub, err, sizeof err), 0);

                TwinSignatureParams p = {
                        .key_id = sig.key_id,
                        .seq = sig.seq,
                        .device_id = sig.device_id,
                        .not_after = sig.not_after,
                };
                CHECK_INT_EQ(twin_signature_add(resigned, vector_key, &p, err, sizeof err), 0);
                CHECK(json_equal(resigned, doc));
                if (!json_equal(resigned, doc))
                        fprintf(stderr, "vector '%s' signs differently\n",
                                json_string_value(json_object_get(d, "name")));
        }
        CHECK(i >= 3);
}

static json_t *vector_document(size_t i)
{
        return json_deep_copy(
            json_object_get(json_array_get(json_object_get(vectors, "documents"), i), "document"));
}

static int verify(const json_t *doc, EVP_PKEY *key)
{
        TwinSignature sig;
        char err[256];
        int r = twin_signature_parse(doc, &sig, err, sizeof err);

        return r < 0 ? r : twin_signature_verify(doc, &sig, key, err, sizeof err);
}

/* Every change to what is signed breaks the signature; what is not signed ($version) does not. */
static void test_tampering(void)
{
        _cleanup_json_ json_t *doc = vector_document(1);
        _cleanup_evp_pkey_ EVP_PKEY *other = NULL;
        json_t *sig = json_object_get(doc, TWIN_SIGNATURE_PROPERTY);
        json_t *tele = json_object_get(doc, "telemetry");

        CHECK_INT_EQ(verify(doc, vector_pub), 0);
        json_object_set_new(doc, "$version", json_integer(999));
        CHECK_INT_EQ(verify(doc, vector_pub), 0);

        json_object_set_new(tele, "interval", json_integer(16));
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_set_new(tele, "interval", json_integer(15));
        CHECK_INT_EQ(verify(doc, vector_pub), 0);

        json_object_set_new(doc, "extra", json_true());
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_del(doc, "extra");
        json_object_del(doc, "limit");
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_set_new(doc, "limit", json_null());
        CHECK_INT_EQ(verify(doc, vector_pub), 0);

        json_object_set_new(sig, "deviceId", json_string("sensor-0043"));
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_set_new(sig, "deviceId", json_string("sensor-0042"));
        json_object_set_new(sig, "seq", json_integer(2));
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_set_new(sig, "seq", json_integer(1));
        json_object_del(sig, "notAfter");
        CHECK_INT_EQ(verify(doc, vector_pub), -EBADMSG);
        json_object_set_new(sig, "notAfter", json_string("2030-01-01T00:00:00Z"));
        CHECK_INT_EQ(verify(doc, vector_pub), 0);

        CHECK_INT_EQ(twin_key_generate(&other), 0);
        CHECK_INT_EQ(verify(doc, other), -EBADMSG);

        /* A real number has no canonical form: refused, not verified. */
        json_object_set_new(tele, "interval", json_real(15.0));
        CHECK_INT_EQ(verify(doc, vector_pub), -EINVAL);
}

static void check_malformed(const char *member, json_t *value, const char *want)
{
        _cleanup_json_ json_t *doc = vector_document(0);
        json_t *sig = json_object_get(doc, TWIN_SIGNATURE_PROPERTY);
        TwinSignature parsed;
        char err[256] = "";

        if (value)
                json_object_set_new(sig, member, value);
        else
                json_object_del(sig, member);
        CHECK_INT_EQ(twin_signature_parse(doc, &parsed, err, sizeof err), -EINVAL);
        if (!strstr(err, want))
                fprintf(stderr, "%s: '%s' does not hold '%s'\n", member, err, want);
        CHECK(strstr(err, want) != NULL);
}

static void test_parse(void)
{
        _cleanup_json_ json_t *doc = vector_document(1), *unsigned_doc = load("{\"a\": 1}");
        _cleanup_json_ json_t *not_object = load("{\"twinSignature\": [1]}");
        const char *text;
        char bad[TWIN_SIGNATURE_TEXT_SIZE], err[256];
        TwinSignature s;

        CHECK_INT_EQ(twin_signature_parse(doc, &s, err, sizeof err), 0);
        CHECK_STR_EQ(s.device_id, "sensor-0042");
        CHECK_INT_EQ(s.seq, 1);
        CHECK_INT_EQ(s.not_after, 1893456000); /* 2030-01-01T00:00:00Z */
        CHECK(strncmp(s.key_id, "sha256:", 7) == 0);

        CHECK_INT_EQ(twin_signature_parse(unsigned_doc, &s, err, sizeof err), -ENOENT);
        CHECK_INT_EQ(twin_signature_parse(not_object, &s, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "not an object"));

        check_malformed("alg", json_string("rsa"), "twinSignature.alg");
        check_malformed("alg", NULL, "twinSignature.alg");
        check_malformed("keyId", json_string("a/b"), "twinSignature.keyId");
        check_malformed("keyId", json_string(""), "twinSignature.keyId");
        check_malformed("keyId", json_integer(5), "twinSignature.keyId");
        check_malformed("seq", json_integer(0), "twinSignature.seq");
        check_malformed("seq", json_integer(TWIN_SIGNATURE_SEQ_MAX + 1), "twinSignature.seq");
        check_malformed("seq", json_string("5"), "twinSignature.seq");
        check_malformed("seq", json_real(5.0), "twinSignature.seq");
        check_malformed("seq", NULL, "twinSignature.seq");
        check_malformed("deviceId", json_string("two words"), "twinSignature.deviceId");
        check_malformed("deviceId", NULL, "twinSignature.deviceId");
        check_malformed("notAfter", json_string("2030-02-30T00:00:00Z"), "twinSignature.notAfter");
        check_malformed("notAfter", json_string("2030-01-01 00:00:00"), "twinSignature.notAfter");
        check_malformed("notAfter", json_integer(1893456000), "twinSignature.notAfter");
        check_malformed("sig", json_string("AAAA"), "twinSignature.sig");
        check_malformed("sig", NULL, "twinSignature.sig");
        check_malformed("expires", json_string("x"), "unknown member \"expires\"");
        check_malformed("\xc3\xa9t\xc3\xa9", json_true(), "unknown member \"\xc3\xa9t\xc3\xa9\"");

        /* Base64 has one text per signature: unused bits set, or an '=' inside, are refused. */
        text = json_string_value(
            json_object_get(json_object_get(doc, TWIN_SIGNATURE_PROPERTY), "sig"));
        snprintf(bad, sizeof bad, "%s", text);
        bad[85] = bad[85] == 'A' ? 'B' : (char)(bad[85] ^ 1);
        check_malformed("sig", json_string(bad), "twinSignature.sig");
        snprintf(bad, sizeof bad, "%s", text);
        bad[40] = '=';
        check_malformed("sig", json_string(bad), "twinSignature.sig");
}

static void test_add(void)
{
        _cleanup_json_ json_t *doc =
            load("{\"$version\": 3, \"configId\": 2, \"x\": \"caf\xc3\xa9\"}");
        _cleanup_json_ json_t *real = load("{\"x\": 0.5, \"twinSignature\": {\"old\": 1}}");
        TwinSignatureParams p = {
                .key_id = "ops", .seq = 7, .device_id = "dev-1", .not_after = -1
        };
        TwinSignature s;
        char err[256];

        CHECK_INT_EQ(twin_signature_add(doc, vector_key, &p, err, sizeof err), 0);
        CHECK_INT_EQ(verify(doc, vector_pub), 0);
        CHECK_INT_EQ(twin_signature_parse(doc, &s, err, sizeof err), 0);
        CHECK_INT_EQ(s.not_after, -1);
        CHECK(!json_object_get(json_object_get(doc, TWIN_SIGNATURE_PROPERTY), "notAfter"));

        /* Signing again replaces the signature, not merges into it. */
        p.not_after = 1893456000;
        p.seq = 8;
        CHECK_INT_EQ(twin_signature_add(doc, vector_key, &p, err, sizeof err), 0);
        CHECK_INT_EQ(twin_signature_parse(doc, &s, err, sizeof err), 0);
        CHECK_INT_EQ(s.seq, 8);
        CHECK_INT_EQ(s.not_after, 1893456000);
        CHECK_STR_EQ(json_string_value(json_object_get(
                         json_object_get(doc, TWIN_SIGNATURE_PROPERTY), "notAfter")),
                     "2030-01-01T00:00:00Z");

        CHECK_INT_EQ(twin_signature_add(real, vector_key, &p, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "only integers"));
        CHECK(!json_object_get(real, TWIN_SIGNATURE_PROPERTY));

        p.seq = 0;
        CHECK_INT_EQ(twin_signature_add(doc, vector_key, &p, err, sizeof err), -EINVAL);
        p.seq = 1;
        p.key_id = "not/valid";
        CHECK_INT_EQ(twin_signature_add(doc, vector_key, &p, err, sizeof err), -EINVAL);
        p.key_id = "ops";
        p.device_id = "";
        CHECK_INT_EQ(twin_signature_add(doc, vector_key, &p, err, sizeof err), -EINVAL);
        CHECK(!json_object_get(doc, TWIN_SIGNATURE_PROPERTY));
}

static void test_time_parse(void)
{
        int64_t t = 0;

        CHECK_INT_EQ(twin_time_parse("2026-11-26T09:41:58Z", &t), 0);
        CHECK_INT_EQ(t, 1795686118);
        CHECK_INT_EQ(twin_time_parse("1970-01-01T00:00:00Z", &t), 0);
        CHECK_INT_EQ(t, 0);
        CHECK_INT_EQ(twin_time_parse("2024-02-29T23:59:59Z", &t), 0);
        CHECK_INT_EQ(twin_time_parse("2023-02-29T00:00:00Z", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("2026-11-26T09:41:58", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("2026-11-26T09:41:58+00:00", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("2026-11-26 09:41:58Z", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("2026-11-26T24:00:00Z", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse(" 2026-1-26T09:41:58Z", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("1969-12-31T23:59:59Z", &t), -EINVAL);
        CHECK_INT_EQ(twin_time_parse("", &t), -EINVAL);
}

static void test_check_names(void)
{
        CHECK_STR_EQ(twin_signature_check_to_string(TWIN_SIGNATURE_CHECK_UNSIGNED), "unsigned");
        CHECK_STR_EQ(twin_signature_check_to_string(TWIN_SIGNATURE_CHECK_REPLAYED), "replayed");
        for (int c = 0; c < _TWIN_SIGNATURE_CHECK_MAX; c++)
                CHECK(twin_signature_check_to_string(c) != NULL);
        CHECK(twin_signature_check_to_string(_TWIN_SIGNATURE_CHECK_MAX) == NULL);
}

int main(int argc, char **argv)
{
        json_error_t e;

        if (argc != 2) {
                fprintf(stderr, "usage: %s twin-signature-vectors.json\n", argv[0]);
                return 2;
        }
        /* The control-character case holds U+0000. */
        vectors = json_load_file(argv[1], JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
        if (!vectors) {
                fprintf(stderr, "%s: %s\n", argv[1], e.text);
                return 2;
        }
        test_canonical_vectors();
        test_canonical_refusals();
        test_keys();
        test_other_key_types();
        test_document_vectors();
        test_tampering();
        test_parse();
        test_add();
        test_time_parse();
        test_check_names();
        EVP_PKEY_free(vector_key);
        EVP_PKEY_free(vector_pub);
        json_decref(vectors);
        return test_exit("test-twin-signature");
}
