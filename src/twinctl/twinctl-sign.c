/* SPDX-License-Identifier: MIT */
#include "twinctl-sign.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json-util.h"
#include "log.h"
#include "secret-file.h"
#include "twin-signature.h"
#include "twinctl-output.h"

struct Signer {
        EVP_PKEY *key;
        char key_id[TWIN_SIGNATURE_KEY_ID_MAX + 1];
        int64_t not_after; /* -1: none */
};

Signer *signer_free(Signer *s)
{
        if (!s)
                return NULL;
        EVP_PKEY_free(s->key);
        free(s);
        return NULL;
}

int signer_new(const TwinctlArgs *args, Signer **ret)
{
        _cleanup_(signer_freep) Signer *s = NULL;
        char err[512] = "", fp[TWIN_DIGEST_STRING_SIZE];
        struct stat st;
        char *pem = NULL;
        int r;

        *ret = NULL;
        if (!args->sign_key || !args->sign_key[0])
                return 0;
        s = calloc(1, sizeof(*s));
        if (!s)
                return log_error_errno(-ENOMEM, "Out of memory");
        s->not_after = args->not_after;

        r = secret_file_read(args->sign_key, "signing key", &pem, &st, err, sizeof err);
        if (r < 0)
                return log_error("%s", err), r;
        if (st.st_mode & (S_IRWXG | S_IRWXO))
                log_warning("signing key %s is readable by others; chmod 600 it", args->sign_key);
        r = twin_key_from_pem(pem, strlen(pem), true, &s->key, err, sizeof err);
        pem = secret_free(pem);
        if (r < 0)
                return log_error("%s: %s", args->sign_key, err), r;

        if (args->key_id) {
                if (!twin_signature_key_id_is_valid(args->key_id)) {
                        log_error("invalid --key-id '%s': use 1 to %d characters of A-Z a-z 0-9 "
                                  "- . _ :",
                                  args->key_id, TWIN_SIGNATURE_KEY_ID_MAX);
                        return -EINVAL;
                }
                snprintf(s->key_id, sizeof s->key_id, "%s", args->key_id);
        } else {
                r = twin_key_fingerprint(s->key, fp);
                if (r < 0)
                        return log_error("%s: cannot read the public key", args->sign_key), r;
                snprintf(s->key_id, sizeof s->key_id, "%s", fp);
        }
        *ret = TAKE_PTR(s);
        return 0;
}

/* Milliseconds since the epoch. */
static int64_t realtime_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int signer_sign(const Signer *s, json_t *doc, const json_t *current, const char *device_id)
{
        json_t *old = json_object_get(json_object_get(current, TWIN_SIGNATURE_PROPERTY), "seq");
        int64_t seq = realtime_ms();
        char err[512] = "";
        int r;

        /* Time-based, so that it grows when the desired document was lost and when several
         * people sign with one key; and above the current one, whatever the clock says. */
        if (json_is_integer(old) && json_integer_value(old) >= seq)
                seq = json_integer_value(old) + 1;
        if (seq > TWIN_SIGNATURE_SEQ_MAX) {
                log_error("the sequence number of the signature of %s would pass %" PRId64
                          ": sign with a new key",
                          device_id, TWIN_SIGNATURE_SEQ_MAX);
                return -ERANGE;
        }
        if (s->not_after >= 0 && s->not_after <= realtime_ms() / 1000) {
                log_error("--not-after has passed already: the device would refuse the document "
                          "as expired");
                return -EINVAL;
        }
        TwinSignatureParams p = {
                .key_id = s->key_id,
                .seq = seq,
                .device_id = device_id,
                .not_after = s->not_after,
        };
        r = twin_signature_add(doc, s->key, &p, err, sizeof err);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory");
        if (r < 0) {
                log_error("cannot sign the new desired document of %s: %s", device_id, err);
                return r;
        }
        return 0;
}

/* Writes text to a new file path (never over an existing one) with mode. */
static int write_new_file(const char *path, const char *text, mode_t mode)
{
        _cleanup_close_ int fd = -1;
        size_t len = strlen(text), done = 0;
        int r;

        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0) {
                r = negative_errno();
                return log_error_errno(r, "Failed to create %s%s", path,
                                       r == -EEXIST ? " (it exists; keys are never overwritten)"
                                                    : "");
        }
        /* The mode asked for, whatever the umask: a private key must not be readable by
         * others, a public one should be readable by the agent. */
        if (fchmod(fd, mode) < 0)
                goto fail;
        while (done < len) {
                ssize_t n = write(fd, text + done, len - done);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        goto fail;
                done += (size_t)n;
        }
        if (fsync(fd) < 0 || close(TAKE_FD(fd)) < 0)
                goto fail;
        return 0;
fail:
        r = negative_errno();
        (void)unlink(path);
        return log_error_errno(r, "Failed to write %s", path);
}

int verb_keygen(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_evp_pkey_ EVP_PKEY *key = NULL;
        _cleanup_free_ char *priv_path = NULL, *pub_path = NULL, *pub = NULL;
        char *priv = NULL, fp[TWIN_DIGEST_STRING_SIZE];
        const char *name, *base;
        int r;

        if (argc != 2) {
                log_error("keygen needs exactly one NAME (it writes NAME.key and NAME.pem)");
                return TWINCTL_EXIT_USAGE;
        }
        name = argv[1];
        base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        /* NAME.pem is installed on the devices as it is: its name is the key's id there. */
        if (!twin_signature_key_id_is_valid(base)) {
                log_error("invalid key NAME '%s': use 1 to %d characters of A-Z a-z 0-9 - . _ : "
                          "(on the devices NAME.pem names the key)",
                          base, TWIN_SIGNATURE_KEY_ID_MAX);
                return TWINCTL_EXIT_USAGE;
        }
        if (asprintf(&priv_path, "%s.key", name) < 0 || asprintf(&pub_path, "%s.pem", name) < 0)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;

        if (twin_key_generate(&key) < 0 || twin_key_fingerprint(key, fp) < 0 ||
            twin_key_to_pem(key, false, &pub) < 0)
                return log_error("OpenSSL cannot make an Ed25519 key"), TWINCTL_EXIT_FAILURE;
        r = twin_key_to_pem(key, true, &priv);
        if (r < 0)
                return log_error("OpenSSL cannot write the private key"), TWINCTL_EXIT_FAILURE;
        r = write_new_file(priv_path, priv, 0600);
        priv = secret_free(priv);
        if (r < 0)
                return TWINCTL_EXIT_FAILURE;
        r = write_new_file(pub_path, pub, 0644);
        if (r < 0) {
                (void)unlink(priv_path);
                return TWINCTL_EXIT_FAILURE;
        }

        if (args->json) {
                _cleanup_json_ json_t *j =
                    json_pack("{s:s, s:s, s:s, s:s}", "privateKey", priv_path, "publicKey",
                              pub_path, "keyId", base, "fingerprint", fp);
                return j && output_json(j) >= 0 ? TWINCTL_EXIT_SUCCESS : TWINCTL_EXIT_FAILURE;
        }
        printf("Wrote %s (the private key: keep it secret) and %s (the public key).\n"
               "Fingerprint: %s\n"
               "Install %s in /etc/twind/trusted-keys.d/ on the devices, then sign with\n"
               "  twinctl set --sign-key %s --key-id %s DEVICE KEY=VALUE...\n",
               priv_path, pub_path, fp, pub_path, priv_path, base);
        return TWINCTL_EXIT_SUCCESS;
}
