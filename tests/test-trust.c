/* SPDX-License-Identifier: MIT */
/* The trusted keys directory and the device's check of a signed desired document: every check
 * that can fail, in its order, with the error a user reads in $status. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json-util.h"
#include "test-tmpdir.h"
#include "test-util.h"
#include "twind-trust.h"

#define NOW 1795686118 /* 2026-11-26T09:41:58Z */

static char tmpdir[] = "/tmp/test-trust-XXXXXX";
static EVP_PKEY *key_a, *key_b, *key_c; /* a and b are trusted, c is not */
static char fp_a[TWIN_DIGEST_STRING_SIZE], fp_b[TWIN_DIGEST_STRING_SIZE];

static const char *new_dir(const char *name)
{
        return test_subdir(tmpdir, name, 0755);
}

static void write_text(const char *dir, const char *name, const char *text)
{
        char path[700];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
                perror(path);
                exit(2);
        }
}

static void write_key(const char *dir, const char *name, EVP_PKEY *key)
{
        _cleanup_free_ char *pem = NULL;

        if (twin_key_to_pem(key, false, &pem) < 0)
                exit(2);
        write_text(dir, name, pem);
}

static void check_load_error(const char *dir, int want_r, const char *want, int line)
{
        TrustStore *t = NULL;
        char err[512] = "";
        int r = trust_store_load(dir, &t, err, sizeof err);

        if (r != want_r || !strstr(err, want) || t) {
                fprintf(stderr, "%s:%d: load gave %d \"%s\", expected %d \"...%s...\"\n", __FILE__,
                        line, r, err, want_r, want);
                test_failures++;
        }
        trust_store_free(t);
}
#define CHECK_LOAD_ERROR(dir, r, want) check_load_error(dir, r, want, __LINE__)

static void test_load(void)
{
        _cleanup_(trust_store_freep) TrustStore *t = NULL, *missing = NULL;
        _cleanup_free_ char *names = NULL;
        char err[512] = "", path[600];
        const char *dir = new_dir("keys.d"), *bad;

        CHECK_INT_EQ(trust_store_load("/nonexistent/keys.d", &missing, err, sizeof err), 0);
        CHECK_INT_EQ(trust_store_size(missing), 0);

        write_key(dir, "ops-2026.pem", key_a);
        write_key(dir, "backup.pem", key_b);
        /* Not keys: other names, hidden files (an editor's), a backup copy. */
        write_text(dir, "README", "not a key");
        write_text(dir, ".ops-2026.pem.swp", "not a key");
        write_text(dir, ".hidden.pem", "not a key");
        write_text(dir, "ops-2026.pem~", "not a key");
        CHECK_INT_EQ(trust_store_load(dir, &t, err, sizeof err), 0);
        CHECK_INT_EQ(trust_store_size(t), 2);
        CHECK_STR_EQ(trust_store_dir(t), dir);
        names = trust_store_describe(t);
        CHECK(names && strstr(names, "backup (sha256:") && strstr(names, "ops-2026 (sha256:"));
        /* Sorted by file name. */
        CHECK(names && strstr(names, "backup") < strstr(names, "ops-2026"));

        bad = new_dir("not-a-key");
        write_text(bad, "x.pem", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
        CHECK_LOAD_ERROR(bad, -EINVAL, "/x.pem: not an Ed25519 public key");

        bad = new_dir("bad-name");
        write_key(bad, "two words.pem", key_a);
        CHECK_LOAD_ERROR(bad, -EINVAL, "/two words.pem: the name before .pem is the key's id");

        bad = new_dir("directory");
        snprintf(path, sizeof path, "%s/sub.pem", bad);
        CHECK_INT_EQ(mkdir(path, 0755), 0);
        CHECK_LOAD_ERROR(bad, -EINVAL, "/sub.pem is not a regular file");

        bad = new_dir("private");
        {
                _cleanup_free_ char *pem = NULL;
                CHECK_INT_EQ(twin_key_to_pem(key_a, true, &pem), 0);
                write_text(bad, "leaked.pem", pem);
        }
        CHECK_LOAD_ERROR(bad, -EINVAL, "/leaked.pem: not an Ed25519 public key");

        /* A file named like another key's fingerprint: which key would "sha256:..." be? */
        bad = new_dir("confusing");
        write_key(bad, "a.pem", key_a);
        snprintf(path, sizeof path, "%s.pem", fp_a);
        write_key(bad, path, key_b);
        CHECK_LOAD_ERROR(bad, -EINVAL, "is named like the fingerprint of");
        /* The same key under its own fingerprint is no confusion. */
        bad = new_dir("same-key");
        write_key(bad, "a.pem", key_a);
        write_key(bad, path, key_a);
        {
                _cleanup_(trust_store_freep) TrustStore *same = NULL;
                CHECK_INT_EQ(trust_store_load(bad, &same, err, sizeof err), 0);
                CHECK_INT_EQ(trust_store_size(same), 2);
        }

        bad = new_dir("large");
        {
                _cleanup_free_ char *big = malloc(TRUST_KEY_FILE_MAX + 2);
                memset(big, 'x', TRUST_KEY_FILE_MAX + 1);
                big[TRUST_KEY_FILE_MAX + 1] = '\0';
                write_text(bad, "big.pem", big);
        }
        CHECK_LOAD_ERROR(bad, -E2BIG, "/big.pem is larger than 16384 bytes");

        bad = new_dir("many");
        for (int i = 0; i <= TRUST_KEYS_MAX; i++) {
                char name[32];
                snprintf(name, sizeof name, "k%d.pem", i);
                write_text(bad, name, "x");
        }
        CHECK_LOAD_ERROR(bad, -E2BIG, "holds more than 256 keys");

        if (geteuid() != 0) {
                bad = new_dir("unreadable");
                chmod(bad, 0);
                CHECK_LOAD_ERROR(bad, -EACCES, "cannot open the trusted key directory");
                chmod(bad, 0755);
        }
}

/* {"$version": 3, "configId": 7, "mode": "eco"} signed as told. */
static json_t *signed_doc(EVP_PKEY *key, const char *key_id, int64_t seq, const char *device,
                          int64_t not_after)
{
        json_t *doc = json_pack("{s:i, s:i, s:s}", "$version", 3, "configId", 7, "mode", "eco");
        TwinSignatureParams p = {
                .key_id = key_id, .seq = seq, .device_id = device, .not_after = not_after
        };
        char err[256];

        CHECK_INT_EQ(twin_signature_add(doc, key, &p, err, sizeof err), 0);
        return doc;
}

static void check_refused(const TrustStore *t, const json_t *doc, const TwinState *state,
                          enum TwinSignatureCheck want, const char *want_err, int line)
{
        enum TwinSignatureCheck check = _TWIN_SIGNATURE_CHECK_MAX;
        TrustVerdict v;
        char err[512] = "";
        int r = trust_check(t, doc, "dev-1", NOW, state, &v, &check, err, sizeof err);

        if (r != -EPERM || check != want || strncmp(err, want_err, strlen(want_err)) != 0) {
                fprintf(stderr, "%s:%d: check gave %d (%s) \"%s\", expected %s \"%s...\"\n",
                        __FILE__, line, r,
                        check < _TWIN_SIGNATURE_CHECK_MAX ? twin_signature_check_to_string(check)
                                                          : "none",
                        err, twin_signature_check_to_string(want), want_err);
                test_failures++;
        }
}
#define CHECK_REFUSED(doc, want, err) check_refused(t, doc, state, want, err, __LINE__)

static void check_accepted(const TrustStore *t, const json_t *doc, const TwinState *state,
                           const char *name, const char *fp, int64_t seq, int line)
{
        enum TwinSignatureCheck check;
        TrustVerdict v = { 0 };
        char err[512] = "";
        int r = trust_check(t, doc, "dev-1", NOW, state, &v, &check, err, sizeof err);

        if (r != 0 || strcmp(v.key_name, name) != 0 || strcmp(v.fingerprint, fp) != 0 ||
            v.seq != seq) {
                fprintf(stderr, "%s:%d: check gave %d \"%s\" (%s, %lld), expected %s %lld\n",
                        __FILE__, line, r, err, v.key_name, (long long)v.seq, name, (long long)seq);
                test_failures++;
        }
}
#define CHECK_ACCEPTED(doc, name, fp, seq) check_accepted(t, doc, state, name, fp, seq, __LINE__)

static void test_check(void)
{
        _cleanup_(trust_store_freep) TrustStore *t = NULL;
        _cleanup_(twin_state_freep) TwinState *state = NULL;
        _cleanup_json_ json_t *ok = NULL, *by_fp = NULL, *unsigned_doc = NULL, *bad = NULL,
                              *unknown = NULL, *forged = NULL, *other_device = NULL, *old = NULL,
                              *last_second = NULL, *from_b = NULL, *real = NULL;
        const char *dir = new_dir("check.d");
        char err[512];

        write_key(dir, "ops.pem", key_a);
        write_key(dir, "backup.pem", key_b);
        CHECK_INT_EQ(trust_store_load(dir, &t, err, sizeof err), 0);
        CHECK_INT_EQ(twin_state_new(&state), 0);

        /* By the file's name or by the key's fingerprint: the same key, the same sequence. */
        ok = signed_doc(key_a, "ops", 10, "dev-1", -1);
        CHECK_ACCEPTED(ok, "ops", fp_a, 10);
        by_fp = signed_doc(key_a, fp_a, 11, "dev-1", -1);
        CHECK_ACCEPTED(by_fp, "ops", fp_a, 11);

        unsigned_doc = json_pack("{s:i, s:i}", "$version", 3, "configId", 7);
        CHECK_REFUSED(unsigned_doc, TWIN_SIGNATURE_CHECK_UNSIGNED,
                      "unsigned: the desired document has no twinSignature");

        bad = json_deep_copy(ok);
        json_object_set_new(json_object_get(bad, TWIN_SIGNATURE_PROPERTY), "seq",
                            json_string("10"));
        CHECK_REFUSED(bad, TWIN_SIGNATURE_CHECK_MALFORMED,
                      "malformed signature: twinSignature.seq is not an integer");

        unknown = signed_doc(key_a, "nobody", 12, "dev-1", -1);
        CHECK_REFUSED(unknown, TWIN_SIGNATURE_CHECK_UNKNOWN_KEY,
                      "unknown key: signed with key 'nobody', which is not among the 2 trusted "
                      "keys in ");

        /* Someone else's key under a trusted name, and a trusted signature over changed
         * properties, are one and the same failure. */
        forged = signed_doc(key_c, "ops", 12, "dev-1", -1);
        CHECK_REFUSED(forged, TWIN_SIGNATURE_CHECK_BAD_SIGNATURE,
                      "bad signature: the signature does not verify with key 'ops' (sha256:");
        json_decref(bad);
        bad = json_deep_copy(ok);
        json_object_set_new(bad, "mode", json_string("turbo"));
        CHECK_REFUSED(bad, TWIN_SIGNATURE_CHECK_BAD_SIGNATURE, "bad signature: ");
        json_object_set_new(bad, "mode", json_real(1.5));
        CHECK_REFUSED(bad, TWIN_SIGNATURE_CHECK_BAD_SIGNATURE,
                      "bad signature: the document cannot have been signed: it holds the real "
                      "number");
        /* The device id is checked after the signature: a forged one is a bad signature. */
        json_decref(bad);
        bad = json_deep_copy(ok);
        json_object_set_new(json_object_get(bad, TWIN_SIGNATURE_PROPERTY), "deviceId",
                            json_string("dev-2"));
        CHECK_REFUSED(bad, TWIN_SIGNATURE_CHECK_BAD_SIGNATURE, "bad signature: ");

        other_device = signed_doc(key_a, "ops", 12, "dev-2", -1);
        CHECK_REFUSED(other_device, TWIN_SIGNATURE_CHECK_WRONG_DEVICE,
                      "wrong device: signed for device 'dev-2', this is 'dev-1'");

        old = signed_doc(key_a, "ops", 12, "dev-1", NOW - 1);
        CHECK_REFUSED(old, TWIN_SIGNATURE_CHECK_EXPIRED,
                      "expired: signed to be applied until 2026-11-26T09:41:57Z, and it is "
                      "2026-11-26T09:41:58Z");
        last_second = signed_doc(key_a, "ops", 12, "dev-1", NOW);
        CHECK_ACCEPTED(last_second, "ops", fp_a, 12);

        /* Replays: per key, strictly above the last one accepted. */
        CHECK_INT_EQ(twin_state_set_signer_sequence(state, fp_a, 11), 0);
        CHECK_REFUSED(ok, TWIN_SIGNATURE_CHECK_REPLAYED,
                      "replayed: sequence 10 of key 'ops' is not above 11, the last one accepted "
                      "from it");
        CHECK_REFUSED(by_fp, TWIN_SIGNATURE_CHECK_REPLAYED, "replayed: sequence 11 of key 'ops'");
        CHECK_ACCEPTED(last_second, "ops", fp_a, 12);
        from_b = signed_doc(key_b, "backup", 5, "dev-1", -1);
        CHECK_ACCEPTED(from_b, "backup", fp_b, 5);

        /* Checked in order: an unknown key is named before its device or its age. */
        real = signed_doc(key_c, "stranger", 1, "dev-2", NOW - 100);
        CHECK_REFUSED(real, TWIN_SIGNATURE_CHECK_UNKNOWN_KEY, "unknown key: ");
}

int main(void)
{
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 2;
        }
        if (twin_key_generate(&key_a) < 0 || twin_key_generate(&key_b) < 0 ||
            twin_key_generate(&key_c) < 0 || twin_key_fingerprint(key_a, fp_a) < 0 ||
            twin_key_fingerprint(key_b, fp_b) < 0)
                return 2;

        test_load();
        test_check();

        EVP_PKEY_free(key_a);
        EVP_PKEY_free(key_b);
        EVP_PKEY_free(key_c);
        test_remove_tree(tmpdir);
        return test_exit("test-trust");
}
