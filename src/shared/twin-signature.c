/* SPDX-License-Identifier: MIT */
#include "twin-signature.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "error-text.h"
#include "json-util.h"
#include "sas-token.h"
#include "utf8.h"

#define P TWIN_SIGNATURE_PROPERTY

static const char *const check_names[_TWIN_SIGNATURE_CHECK_MAX] = {
        [TWIN_SIGNATURE_CHECK_UNSIGNED] = "unsigned",
        [TWIN_SIGNATURE_CHECK_MALFORMED] = "malformed signature",
        [TWIN_SIGNATURE_CHECK_UNKNOWN_KEY] = "unknown key",
        [TWIN_SIGNATURE_CHECK_BAD_SIGNATURE] = "bad signature",
        [TWIN_SIGNATURE_CHECK_WRONG_DEVICE] = "wrong device",
        [TWIN_SIGNATURE_CHECK_EXPIRED] = "expired",
        [TWIN_SIGNATURE_CHECK_REPLAYED] = "replayed",
};

const char *twin_signature_check_to_string(enum TwinSignatureCheck c)
{
        return c < _TWIN_SIGNATURE_CHECK_MAX ? check_names[c] : NULL;
}

bool twin_signature_key_id_is_valid(const char *id)
{
        /* The same characters as a device id, and no '/': a key id may be a file's name. */
        return twin_device_id_is_valid(id);
}

/* ---- canonical encoding ------------------------------------------------------------------ */

typedef struct Buf {
        char *data;
        size_t len, cap;
} Buf;

static int buf_add(Buf *b, const char *s, size_t n)
{
        if (b->cap - b->len <= n) {
                size_t cap = b->cap ? b->cap : 256;
                char *d;

                while (cap - b->len <= n) {
                        if (cap > SIZE_MAX / 2)
                                return -ENOMEM;
                        cap *= 2;
                }
                d = realloc(b->data, cap);
                if (!d)
                        return -ENOMEM;
                b->data = d;
                b->cap = cap;
        }
        memcpy(b->data + b->len, s, n);
        b->len += n;
        b->data[b->len] = '\0';
        return 0;
}

static int buf_puts(Buf *b, const char *s)
{
        return buf_add(b, s, strlen(s));
}

/* One code point (cp < 0x10000) as \uXXXX, lower-case hex as Python's json writes it. */
static int buf_add_escape(Buf *b, unsigned cp)
{
        static const char hex[] = "0123456789abcdef";
        char seq[6] = { '\\',        'u', hex[cp >> 12 & 15], hex[cp >> 8 & 15], hex[cp >> 4 & 15],
                        hex[cp & 15] };

        return buf_add(b, seq, sizeof seq);
}

/* The letter of a two-character escape, as JSON has them (but \/), or 0. */
static char short_escape(unsigned cp)
{
        static const struct {
                unsigned cp;
                char letter;
        } table[] = {
                { '"', '"' },  { '\\', '\\' }, { '\b', 'b' }, { '\f', 'f' },
                { '\n', 'n' }, { '\r', 'r' },  { '\t', 't' },
        };

        for (size_t i = 0; i < ARRAY_SIZE(table); i++)
                if (table[i].cp == cp)
                        return table[i].letter;
        return 0;
}

/* A JSON string: '"' and '\' escaped, \b \f \n \r \t short, every other code point below
 * U+0020 or from U+007F up as \uXXXX (beyond the BMP a surrogate pair), printable ASCII
 * (with '/') as it is. s is valid UTF-8 (jansson checked it). */
static int encode_string(Buf *b, const char *s, size_t n)
{
        const unsigned char *p = (const unsigned char *)s;
        int r = buf_add(b, "\"", 1);

        for (size_t i = 0; r >= 0 && i < n;) {
                unsigned cp = p[i];
                size_t len = utf8_sequence_length(p + i, n - i);

                if (len == 0)
                        return -EINVAL;
                if (len == 2)
                        cp = (p[i] & 0x1fu) << 6 | (p[i + 1] & 0x3fu);
                else if (len == 3)
                        cp = (p[i] & 0x0fu) << 12 | (p[i + 1] & 0x3fu) << 6 | (p[i + 2] & 0x3fu);
                else if (len == 4)
                        cp = (p[i] & 0x07u) << 18 | (p[i + 1] & 0x3fu) << 12 |
                             (p[i + 2] & 0x3fu) << 6 | (p[i + 3] & 0x3fu);
                i += len;

                if (short_escape(cp)) {
                        char seq[2] = { '\\', short_escape(cp) };
                        r = buf_add(b, seq, sizeof seq);
                        continue;
                }
                if (cp >= 0x20 && cp < 0x7f) {
                        char c = (char)cp;
                        r = buf_add(b, &c, 1);
                } else if (cp < 0x10000)
                        r = buf_add_escape(b, cp);
                else {
                        cp -= 0x10000;
                        r = buf_add_escape(b, 0xd800 + (cp >> 10));
                        if (r >= 0)
                                r = buf_add_escape(b, 0xdc00 + (cp & 0x3ff));
                }
        }
        return r < 0 ? r : buf_add(b, "\"", 1);
}

static int strcmp_ptr(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int encode_value(Buf *b, const json_t *v, unsigned depth, char *err, size_t errlen)
{
        char num[32];
        size_t i;
        int r;

        switch (json_typeof(v)) {
        case JSON_NULL:
                return buf_puts(b, "null");
        case JSON_TRUE:
                return buf_puts(b, "true");
        case JSON_FALSE:
                return buf_puts(b, "false");
        case JSON_INTEGER:
                snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
                return buf_puts(b, num);
        case JSON_REAL:
                /* Python and jansson write reals differently (1e+16, 0.1): there is no one
                 * text both sides would agree on. */
                return error_text(-EINVAL, err, errlen,
                                  "it holds the real number %.17g, and a signed document may hold "
                                  "only integers",
                                  json_real_value(v));
        case JSON_STRING:
                r = encode_string(b, json_string_value(v), json_string_length(v));
                return r == -EINVAL ? error_text(r, err, errlen, "a string is not valid UTF-8") : r;
        case JSON_ARRAY:
        case JSON_OBJECT:
                break;
        }

        if (depth >= TWIN_CANONICAL_MAX_DEPTH)
                return error_text(-EINVAL, err, errlen, "objects and arrays nest more than %d deep",
                                  TWIN_CANONICAL_MAX_DEPTH);
        if (json_is_array(v)) {
                json_t *x;

                r = buf_add(b, "[", 1);
                json_array_foreach ((json_t *)v, i, x) {
                        if (r >= 0 && i > 0)
                                r = buf_add(b, ",", 1);
                        if (r >= 0)
                                r = encode_value(b, x, depth + 1, err, errlen);
                }
                return r < 0 ? r : buf_add(b, "]", 1);
        }

        {
                size_t n = json_object_size(v), k = 0;
                _cleanup_free_ const char **keys = calloc(n ? n : 1, sizeof(char *));
                const char *key;
                json_t *x;

                if (!keys)
                        return -ENOMEM;
                json_object_foreach ((json_t *)v, key, x)
                        keys[k++] = key;
                /* Byte order of UTF-8 is code point order: the order Python's sort_keys gives. */
                qsort(keys, n, sizeof(char *), strcmp_ptr);
                r = buf_add(b, "{", 1);
                for (k = 0; r >= 0 && k < n; k++) {
                        if (k > 0)
                                r = buf_add(b, ",", 1);
                        if (r >= 0)
                                r = encode_string(b, keys[k], strlen(keys[k]));
                        if (r >= 0)
                                r = buf_add(b, ":", 1);
                        if (r >= 0)
                                r = encode_value(b, json_object_get(v, keys[k]), depth + 1, err,
                                                 errlen);
                }
                if (r == -EINVAL && err && !err[0])
                        error_text(r, err, errlen, "a key is not valid UTF-8");
                return r < 0 ? r : buf_add(b, "}", 1);
        }
}

int twin_canonical_encode(const json_t *v, char **ret, size_t *ret_len, char *err, size_t errlen)
{
        Buf b = { 0 };
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        if (!v)
                return error_text(-EINVAL, err, errlen, "no value");
        r = encode_value(&b, v, 0, err, errlen);
        if (r >= 0 && !b.data)
                r = -ENOMEM;
        if (r < 0) {
                free(b.data);
                return r;
        }
        *ret = b.data;
        if (ret_len)
                *ret_len = b.len;
        return 0;
}

/* ---- the signature property -------------------------------------------------------------- */

int twin_time_parse(const char *s, int64_t *ret)
{
        struct tm tm = { 0 };
        char again[32];
        time_t t;
        int n = 0;

        if (!s || strlen(s) != 20 ||
            sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6 ||
            n != 20)
                return -EINVAL;
        if (tm.tm_year < 1970 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
            tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
                return -EINVAL;
        tm.tm_year -= 1900;
        tm.tm_mon -= 1;
        t = timegm(&tm);
        if (t == (time_t)-1)
                return -EINVAL;
        /* Written back the same way, or it was not a real date (February 30th, signs, ...). */
        twin_format_time((int64_t)t, again);
        if (strcmp(again, s) != 0)
                return -EINVAL;
        *ret = (int64_t)t;
        return 0;
}

static const char *const members[] = { "alg", "keyId", "seq", "deviceId", "notAfter", "sig" };

int twin_signature_parse(const json_t *doc, TwinSignature *ret, char *err, size_t errlen)
{
        TwinSignature s = { .not_after = -1 };
        json_t *prop = json_object_get(doc, P), *v;
        _cleanup_free_ unsigned char *raw = NULL;
        char again[TWIN_SIGNATURE_TEXT_SIZE];
        const char *key, *text;
        size_t raw_len = 0;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';
        if (!prop)
                return -ENOENT;
        if (!json_is_object(prop))
                return error_text(-EINVAL, err, errlen, P " is not an object");
        json_object_foreach (prop, key, v) {
                size_t i;

                for (i = 0; i < ARRAY_SIZE(members); i++)
                        if (strcmp(key, members[i]) == 0)
                                break;
                if (i == ARRAY_SIZE(members))
                        return error_text(-EINVAL, err, errlen,
                                          P " has the unknown member \"%.64s\"", key);
        }

        text = json_string_value(json_object_get(prop, "alg"));
        if (!text || strcmp(text, TWIN_SIGNATURE_ALGORITHM) != 0)
                return error_text(-EINVAL, err, errlen,
                                  P ".alg is not \"" TWIN_SIGNATURE_ALGORITHM "\"");

        text = json_string_value(json_object_get(prop, "keyId"));
        if (!text || !twin_signature_key_id_is_valid(text))
                return error_text(
                    -EINVAL, err, errlen,
                    P ".keyId is not a key id (1 to %d characters of A-Z a-z 0-9 - . _ :)",
                    TWIN_SIGNATURE_KEY_ID_MAX);
        snprintf(s.key_id, sizeof s.key_id, "%s", text);

        v = json_object_get(prop, "seq");
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > TWIN_SIGNATURE_SEQ_MAX)
                return error_text(-EINVAL, err, errlen,
                                  P ".seq is not an integer from 1 to %" PRId64,
                                  TWIN_SIGNATURE_SEQ_MAX);
        s.seq = json_integer_value(v);

        text = json_string_value(json_object_get(prop, "deviceId"));
        if (!text || !twin_device_id_is_valid(text))
                return error_text(
                    -EINVAL, err, errlen,
                    P ".deviceId is not a device id (1 to %d characters of A-Z a-z 0-9 - "
                      ". _ :)",
                    TWIN_DEVICE_ID_MAX);
        snprintf(s.device_id, sizeof s.device_id, "%s", text);

        v = json_object_get(prop, "notAfter");
        if (v && (!json_is_string(v) || twin_time_parse(json_string_value(v), &s.not_after) < 0))
                return error_text(-EINVAL, err, errlen,
                                  P ".notAfter is not a UTC time such as \"2026-11-26T09:41:58Z\"");

        text = json_string_value(json_object_get(prop, "sig"));
        if (!text || strlen(text) != TWIN_SIGNATURE_TEXT_SIZE - 1)
                return error_text(-EINVAL, err, errlen,
                                  P ".sig is not the base64 of a %d-byte signature (%d characters)",
                                  TWIN_SIGNATURE_BYTES, TWIN_SIGNATURE_TEXT_SIZE - 1);
        r = sas_base64_decode(text, &raw, &raw_len);
        if (r == -ENOMEM)
                return r;
        /* Only one text per signature: the digest that tells a redelivery is over the text. */
        if (r >= 0 && raw_len == TWIN_SIGNATURE_BYTES)
                EVP_EncodeBlock((unsigned char *)again, raw, TWIN_SIGNATURE_BYTES);
        if (r < 0 || raw_len != TWIN_SIGNATURE_BYTES || strcmp(again, text) != 0)
                return error_text(-EINVAL, err, errlen,
                                  P ".sig is not the base64 of a %d-byte signature (%d characters)",
                                  TWIN_SIGNATURE_BYTES, TWIN_SIGNATURE_TEXT_SIZE - 1);
        memcpy(s.sig, raw, TWIN_SIGNATURE_BYTES);

        *ret = s;
        return 0;
}

int twin_signature_message(const json_t *doc, char **ret, size_t *ret_len, char *err, size_t errlen)
{
        _cleanup_json_ json_t *covered = json_object(), *prop = NULL;
        const char *key;
        json_t *v;

        if (err && errlen > 0)
                err[0] = '\0';
        if (!covered)
                return -ENOMEM;
        if (!json_is_object(json_object_get(doc, P)))
                return error_text(-EINVAL, err, errlen, "the document has no " P " object");
        json_object_foreach ((json_t *)doc, key, v) {
                if (key[0] == '$' || strcmp(key, P) == 0)
                        continue;
                if (json_object_set(covered, key, v) < 0)
                        return -ENOMEM;
        }
        prop = json_copy(json_object_get(doc, P));
        if (!prop)
                return -ENOMEM;
        json_object_del(prop, "sig");
        if (json_object_set(covered, P, prop) < 0)
                return -ENOMEM;
        return twin_canonical_encode(covered, ret, ret_len, err, errlen);
}

int twin_signature_verify(const json_t *doc, const TwinSignature *sig, EVP_PKEY *key, char *err,
                          size_t errlen)
{
        _cleanup_free_ char *msg = NULL;
        EVP_MD_CTX *ctx;
        size_t len = 0;
        int r, ok;

        r = twin_signature_message(doc, &msg, &len, err, errlen);
        if (r < 0)
                return r;
        ctx = EVP_MD_CTX_new();
        if (!ctx)
                return -ENOMEM;
        /* Ed25519 hashes by itself: no digest, one shot. */
        ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestVerify(ctx, sig->sig, TWIN_SIGNATURE_BYTES, (const unsigned char *)msg,
                              len) == 1;
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        return ok ? 0 : -EBADMSG;
}

int twin_signature_add(json_t *doc, EVP_PKEY *key, const TwinSignatureParams *p, char *err,
                       size_t errlen)
{
        _cleanup_free_ char *msg = NULL;
        unsigned char raw[TWIN_SIGNATURE_BYTES];
        char text[TWIN_SIGNATURE_TEXT_SIZE], when[32];
        size_t len = 0, siglen = sizeof raw;
        json_t *prop;
        EVP_MD_CTX *ctx;
        int r, ok;

        if (err && errlen > 0)
                err[0] = '\0';
        json_object_del(doc, P);
        if (!p->key_id || !twin_signature_key_id_is_valid(p->key_id))
                return error_text(-EINVAL, err, errlen,
                                  "the key id is not 1 to %d characters of A-Z a-z 0-9 - . _ :",
                                  TWIN_SIGNATURE_KEY_ID_MAX);
        if (p->seq < 1 || p->seq > TWIN_SIGNATURE_SEQ_MAX)
                return error_text(-EINVAL, err, errlen,
                                  "the sequence number %" PRId64 " is not from 1 to %" PRId64,
                                  p->seq, TWIN_SIGNATURE_SEQ_MAX);
        if (!p->device_id || !twin_device_id_is_valid(p->device_id))
                return error_text(-EINVAL, err, errlen, "the device id is not valid");

        prop = json_pack("{s:s, s:s, s:I, s:s}", "alg", TWIN_SIGNATURE_ALGORITHM, "keyId",
                         p->key_id, "seq", (json_int_t)p->seq, "deviceId", p->device_id);
        if (!prop || json_object_set_new(doc, P, prop) < 0)
                return -ENOMEM;
        if (p->not_after >= 0) {
                twin_format_time(p->not_after, when);
                if (json_object_set_new(prop, "notAfter", json_string(when)) < 0)
                        goto oom;
        }

        r = twin_signature_message(doc, &msg, &len, err, errlen);
        if (r < 0) {
                json_object_del(doc, P);
                return r;
        }
        ctx = EVP_MD_CTX_new();
        if (!ctx)
                goto oom;
        ok = EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestSign(ctx, raw, &siglen, (const unsigned char *)msg, len) == 1 &&
             siglen == sizeof raw;
        EVP_MD_CTX_free(ctx);
        ERR_clear_error();
        if (!ok) {
                json_object_del(doc, P);
                return error_text(-EIO, err, errlen, "OpenSSL cannot sign with this key");
        }
        EVP_EncodeBlock((unsigned char *)text, raw, sizeof raw);
        if (json_object_set_new(prop, "sig", json_string(text)) < 0)
                goto oom;
        return 0;
oom:
        json_object_del(doc, P);
        return -ENOMEM;
}

/* ---- keys -------------------------------------------------------------------------------- */

/* Never asks for a pass phrase (OpenSSL would prompt on the terminal): an encrypted key fails. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
        return 0;
}

static size_t count_pem_blocks(const char *s, size_t len)
{
        static const char begin[] = "-----BEGIN ";
        size_t n = 0;

        for (const char *p = s; (p = memmem(p, len - (size_t)(p - s), begin, sizeof begin - 1));
             p += sizeof begin - 1)
                n++;
        return n;
}

int twin_key_from_pem(const void *pem, size_t len, bool private, EVP_PKEY **ret, char *err,
                      size_t errlen)
{
        const char *what = private ? "an unencrypted Ed25519 private key (PEM \"PRIVATE KEY\")"
                                   : "an Ed25519 public key (PEM \"PUBLIC KEY\")";
        EVP_PKEY *key;
        BIO *bio;

        if (err && errlen > 0)
                err[0] = '\0';
        if (len > INT32_MAX || count_pem_blocks(pem, len) != 1)
                return error_text(-EINVAL, err, errlen,
                                  "not %s: it must hold exactly one PEM block", what);
        bio = BIO_new_mem_buf(pem, (int)len);
        if (!bio)
                return -ENOMEM;
        key = private ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL)
                      : PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
        BIO_free(bio);
        ERR_clear_error();
        if (!key)
                return error_text(-EINVAL, err, errlen, "not %s", what);
        if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
                EVP_PKEY_free(key);
                return error_text(-EINVAL, err, errlen, "not %s: a key of another type", what);
        }
        *ret = key;
        return 0;
}

int twin_key_generate(EVP_PKEY **ret)
{
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
        EVP_PKEY *key = NULL;
        int ok;

        ok = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &key) == 1;
        EVP_PKEY_CTX_free(ctx);
        ERR_clear_error();
        if (!ok)
                return -EIO;
        *ret = key;
        return 0;
}

int twin_key_to_pem(EVP_PKEY *key, bool private, char **ret)
{
        BIO *bio = BIO_new(BIO_s_mem());
        char *data = NULL, *copy = NULL;
        long n;
        int ok;

        if (!bio)
                return -EIO;
        ok = private ? PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) == 1
                     : PEM_write_bio_PUBKEY(bio, key) == 1;
        n = ok ? BIO_get_mem_data(bio, &data) : 0;
        if (n > 0) {
                copy = malloc((size_t)n + 1);
                if (copy) {
                        memcpy(copy, data, (size_t)n);
                        copy[n] = '\0';
                }
                /* The memory BIO held the private key too. */
                OPENSSL_cleanse(data, (size_t)n);
        }
        BIO_free(bio);
        ERR_clear_error();
        if (!copy)
                return -EIO;
        *ret = copy;
        return 0;
}

int twin_key_fingerprint(EVP_PKEY *key, char ret[static TWIN_DIGEST_STRING_SIZE])
{
        unsigned char raw[32];
        size_t len = sizeof raw;

        if (EVP_PKEY_get_raw_public_key(key, raw, &len) != 1 || len != sizeof raw) {
                ERR_clear_error();
                return -EIO;
        }
        return twin_digest(raw, len, ret);
}
