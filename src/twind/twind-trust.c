/* SPDX-License-Identifier: MIT */
#include "twind-trust.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error-text.h"
#include "strv.h"

typedef struct TrustedKey {
        char *name; /* the file's name without ".pem": a key id */
        char fingerprint[TWIN_DIGEST_STRING_SIZE];
        EVP_PKEY *key;
} TrustedKey;

struct TrustStore {
        char *dir;
        TrustedKey *keys;
        size_t n_keys;
};

TrustStore *trust_store_free(TrustStore *t)
{
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_keys; i++) {
                free(t->keys[i].name);
                EVP_PKEY_free(t->keys[i].key);
        }
        free(t->keys);
        free(t->dir);
        free(t);
        return NULL;
}

size_t trust_store_size(const TrustStore *t)
{
        return t ? t->n_keys : 0;
}

const char *trust_store_dir(const TrustStore *t)
{
        return t->dir;
}

char *trust_store_describe(const TrustStore *t)
{
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);

        if (!f)
                return NULL;
        for (size_t i = 0; i < t->n_keys; i++)
                fprintf(f, "%s%s (%.19s...)", i > 0 ? ", " : "", t->keys[i].name,
                        t->keys[i].fingerprint);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

static bool has_key_suffix(const char *name)
{
        size_t n = strlen(name), k = strlen(TRUST_KEY_FILE_EXT);

        return n > k && strcmp(name + n - k, TRUST_KEY_FILE_EXT) == 0;
}

static int strcmp_ptr(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The names of the key files in dir, sorted (so that messages and the log are the same every
 * time). A missing directory has none. */
static int list_key_files(const char *dir, char ***ret, char *err, size_t errlen)
{
        _cleanup_strv_free_ char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        DIR *d;
        int r = 0;

        d = opendir(dir);
        if (!d && errno == ENOENT) {
                *ret = NULL;
                return 0;
        }
        if (!d) {
                r = negative_errno();
                return error_text(r, err, errlen, "cannot open the trusted key directory %s: %s",
                                  dir, strerror(-r));
        }
        for (;;) {
                char **l;

                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0) {
                                r = negative_errno();
                                error_text(r, err, errlen, "cannot read %s: %s", dir, strerror(-r));
                        }
                        break;
                }
                if (de->d_name[0] == '.' || !has_key_suffix(de->d_name))
                        continue;
                if (n >= TRUST_KEYS_MAX) {
                        r = error_text(-E2BIG, err, errlen, "%s holds more than %d keys", dir,
                                       TRUST_KEYS_MAX);
                        break;
                }
                l = realloc(names, (n + 2) * sizeof(char *));
                if (!l) {
                        r = -ENOMEM;
                        break;
                }
                names = l;
                names[n] = strdup(de->d_name);
                names[n + 1] = NULL;
                if (!names[n]) {
                        r = -ENOMEM;
                        break;
                }
                n++;
        }
        closedir(d);
        if (r < 0)
                return r;
        if (n > 0)
                qsort(names, n, sizeof(char *), strcmp_ptr);
        *ret = TAKE_PTR(names);
        return 0;
}

/* Opens dir/name for reading, a regular file only. O_NONBLOCK: a FIFO would block the open, and
 * keys are loaded again on SIGHUP, on the agent's loop. */
static int open_key_file(const char *dir, const char *name, char *err, size_t errlen)
{
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        int r;

        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return -ENOMEM;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
                r = negative_errno();
                return error_text(r, err, errlen, "cannot open %s: %s", path, strerror(-r));
        }
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                return error_text(r, err, errlen, "cannot stat %s: %s", path, strerror(-r));
        }
        if (!S_ISREG(st.st_mode))
                return error_text(-EINVAL, err, errlen, "%s is not a regular file", path);
        return TAKE_FD(fd);
}

/* Reads dir/name (a regular file of at most TRUST_KEY_FILE_MAX bytes) into key. */
static int load_key_file(const char *dir, const char *name, TrustedKey *key, char *err,
                         size_t errlen)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        char reason[256];
        size_t len = 0;
        int r;

        fd = open_key_file(dir, name, err, errlen);
        if (fd < 0)
                return fd;
        buf = malloc(TRUST_KEY_FILE_MAX + 1);
        if (!buf)
                return -ENOMEM;
        while (len <= TRUST_KEY_FILE_MAX) {
                ssize_t n = read(fd, buf + len, TRUST_KEY_FILE_MAX + 1 - len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = negative_errno();
                        return error_text(r, err, errlen, "cannot read %s/%s: %s", dir, name,
                                          strerror(-r));
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        if (len > TRUST_KEY_FILE_MAX)
                return error_text(-E2BIG, err, errlen, "%s/%s is larger than %d bytes", dir, name,
                                  TRUST_KEY_FILE_MAX);

        r = twin_key_from_pem(buf, len, false, &key->key, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return error_text(r, err, errlen, "%s/%s: %s", dir, name, reason);
        r = twin_key_fingerprint(key->key, key->fingerprint);
        if (r < 0)
                return error_text(r, err, errlen, "%s/%s: cannot read the public key", dir, name);
        return 0;
}

int trust_store_load(const char *dir, TrustStore **ret, char *err, size_t errlen)
{
        _cleanup_(trust_store_freep) TrustStore *t = NULL;
        _cleanup_strv_free_ char **names = NULL;
        size_t n;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->dir = strdup(dir);
        if (!t->dir)
                return -ENOMEM;
        r = list_key_files(dir, &names, err, errlen);
        if (r < 0)
                return r;
        n = strv_length(names);
        t->keys = calloc(n ? n : 1, sizeof(*t->keys));
        if (!t->keys)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                TrustedKey *k = &t->keys[t->n_keys];

                k->name = strndup(names[i], strlen(names[i]) - strlen(TRUST_KEY_FILE_EXT));
                if (!k->name)
                        return -ENOMEM;
                t->n_keys++;
                if (!twin_signature_key_id_is_valid(k->name))
                        return error_text(
                            -EINVAL, err, errlen,
                            "%s/%s: the name before .pem is the key's id, and must be "
                            "1 to %d characters of A-Z a-z 0-9 - . _ :",
                            dir, names[i], TWIN_SIGNATURE_KEY_ID_MAX);
                r = load_key_file(dir, names[i], k, err, errlen);
                if (r < 0)
                        return r;
        }
        /* A key id must name one key: a file named like another key's fingerprint would make
         * the signer's choice of id decide which key checks the signature. */
        for (size_t i = 0; i < t->n_keys; i++)
                for (size_t j = 0; j < t->n_keys; j++)
                        if (strcmp(t->keys[i].name, t->keys[j].fingerprint) == 0 &&
                            strcmp(t->keys[i].fingerprint, t->keys[j].fingerprint) != 0)
                                return error_text(-EINVAL, err, errlen,
                                                  "%s/%s.pem is named like the fingerprint of "
                                                  "%s/%s.pem, another key",
                                                  dir, t->keys[i].name, dir, t->keys[j].name);
        *ret = TAKE_PTR(t);
        return 0;
}

/* The key a key id names: a file's name, or a key's fingerprint. */
static const TrustedKey *find_key(const TrustStore *t, const char *key_id)
{
        for (size_t i = 0; i < t->n_keys; i++)
                if (strcmp(t->keys[i].name, key_id) == 0 ||
                    strcmp(t->keys[i].fingerprint, key_id) == 0)
                        return &t->keys[i];
        return NULL;
}

static int refuse(enum TwinSignatureCheck check, enum TwinSignatureCheck *ret_check, char *err,
                  size_t errlen, const char *fmt, ...) _printf_(5, 6);
static int refuse(enum TwinSignatureCheck check, enum TwinSignatureCheck *ret_check, char *err,
                  size_t errlen, const char *fmt, ...)
{
        va_list ap;
        int k;

        *ret_check = check;
        if (!err || errlen == 0)
                return -EPERM;
        k = snprintf(err, errlen, "%s: ", twin_signature_check_to_string(check));
        if (k >= 0 && (size_t)k < errlen) {
                va_start(ap, fmt);
                vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
                va_end(ap);
        }
        return -EPERM;
}

int trust_check(const TrustStore *t, const json_t *doc, const char *device_id, int64_t now,
                const TwinState *state, TrustVerdict *ret, enum TwinSignatureCheck *ret_check,
                char *err, size_t errlen)
{
        const TrustedKey *key;
        TwinSignature sig;
        char reason[256] = "", when[32], at[32];
        int64_t last;
        int r;

        r = twin_signature_parse(doc, &sig, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r == -ENOENT)
                return refuse(TWIN_SIGNATURE_CHECK_UNSIGNED, ret_check, err, errlen,
                              "the desired document has no " TWIN_SIGNATURE_PROPERTY
                              ", and [trust] require_signature is on");
        if (r < 0)
                return refuse(TWIN_SIGNATURE_CHECK_MALFORMED, ret_check, err, errlen, "%s", reason);

        key = find_key(t, sig.key_id);
        if (!key)
                return refuse(TWIN_SIGNATURE_CHECK_UNKNOWN_KEY, ret_check, err, errlen,
                              "signed with key '%s', which is not among the %zu trusted keys in "
                              "%s",
                              sig.key_id, t->n_keys, t->dir);

        r = twin_signature_verify(doc, &sig, key->key, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r == -EINVAL)
                return refuse(TWIN_SIGNATURE_CHECK_BAD_SIGNATURE, ret_check, err, errlen,
                              "the document cannot have been signed: %s", reason);
        if (r < 0)
                return refuse(TWIN_SIGNATURE_CHECK_BAD_SIGNATURE, ret_check, err, errlen,
                              "the signature does not verify with key '%s' (%s): the document "
                              "was changed after it was signed, or signed with another key",
                              key->name, key->fingerprint);

        /* From here on the fields are the signer's own. */
        if (strcmp(sig.device_id, device_id) != 0)
                return refuse(TWIN_SIGNATURE_CHECK_WRONG_DEVICE, ret_check, err, errlen,
                              "signed for device '%s', this is '%s'", sig.device_id, device_id);

        if (sig.not_after >= 0 && now > sig.not_after) {
                twin_format_time(sig.not_after, when);
                twin_format_time(now, at);
                return refuse(TWIN_SIGNATURE_CHECK_EXPIRED, ret_check, err, errlen,
                              "signed to be applied until %s, and it is %s", when, at);
        }

        last = twin_state_signer_sequence(state, key->fingerprint);
        if (sig.seq <= last)
                return refuse(TWIN_SIGNATURE_CHECK_REPLAYED, ret_check, err, errlen,
                              "sequence %" PRId64 " of key '%s' is not above %" PRId64
                              ", the last one accepted from it",
                              sig.seq, key->name, last);

        snprintf(ret->key_name, sizeof ret->key_name, "%s", key->name);
        memcpy(ret->fingerprint, key->fingerprint, sizeof ret->fingerprint);
        ret->seq = sig.seq;
        return 0;
}
