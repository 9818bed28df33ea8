/* SPDX-License-Identifier: MIT */
#include "sas-token.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"

static bool url_unreserved(unsigned char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               strchr("-_.!~*'()", c) != NULL;
}

char *sas_url_encode(const char *s)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t n = strlen(s);
        char *out, *p;

        out = malloc(3 * n + 1);
        if (!out)
                return NULL;
        p = out;
        for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
                if (url_unreserved(*q)) {
                        *p++ = (char)*q;
                        continue;
                }
                *p++ = '%';
                *p++ = hex[*q >> 4];
                *p++ = hex[*q & 15];
        }
        *p = '\0';
        return out;
}

static int base64_value(unsigned char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == '/')
                return 63;
        return -1;
}

int sas_base64_decode(const char *text, unsigned char **ret, size_t *ret_len)
{
        size_t n = strlen(text), pad = 0, out_len, k = 0;
        unsigned char *out;

        /* Checked by hand: OpenSSL's EVP_DecodeBlock skips whitespace and does not say how much
         * padding it read, and a key must be exactly what was given. */
        if (n == 0 || n % 4 != 0)
                return -EINVAL;
        if (text[n - 1] == '=')
                pad = text[n - 2] == '=' ? 2 : 1;
        for (size_t i = 0; i < n - pad; i++)
                if (base64_value((unsigned char)text[i]) < 0)
                        return -EINVAL;
        out_len = n / 4 * 3 - pad;
        out = malloc(out_len + 1);
        if (!out)
                return -ENOMEM;
        for (size_t i = 0; i < n; i += 4) {
                uint32_t v = 0;

                for (size_t j = 0; j < 4; j++) {
                        int d = text[i + j] == '=' ? 0 : base64_value((unsigned char)text[i + j]);
                        v = v << 6 | (uint32_t)d;
                }
                for (int shift = 16; shift >= 0 && k < out_len; shift -= 8)
                        out[k++] = (unsigned char)(v >> shift);
        }
        *ret = out;
        *ret_len = out_len;
        return 0;
}

int sas_token_make(const char *resource, const char *key, const char *policy, int64_t expiry,
                   char **ret)
{
        _cleanup_free_ char *sr = NULL, *to_sign = NULL, *sig_enc = NULL, *skn = NULL;
        unsigned char *raw_key = NULL, mac[EVP_MAX_MD_SIZE];
        char sig[EVP_ENCODE_LENGTH(EVP_MAX_MD_SIZE) + 1];
        unsigned mac_len = 0;
        size_t key_len = 0;
        int r, n;

        if (!resource || !*resource || !key)
                return -EINVAL;
        r = sas_base64_decode(key, &raw_key, &key_len);
        if (r < 0)
                return r;

        sr = sas_url_encode(resource);
        if (!sr || asprintf(&to_sign, "%s\n%" PRId64, sr, expiry) < 0) {
                to_sign = NULL;
                r = -ENOMEM;
                goto out;
        }
        if (!HMAC(EVP_sha256(), raw_key, (int)key_len, (const unsigned char *)to_sign,
                  strlen(to_sign), mac, &mac_len)) {
                r = -EIO;
                goto out;
        }
        n = EVP_EncodeBlock((unsigned char *)sig, mac, (int)mac_len);
        sig[n > 0 ? n : 0] = '\0';
        sig_enc = sas_url_encode(sig);
        if (policy)
                skn = sas_url_encode(policy);
        if (!sig_enc || (policy && !skn)) {
                r = -ENOMEM;
                goto out;
        }
        if (asprintf(ret, "SharedAccessSignature sr=%s&sig=%s&se=%" PRId64 "%s%s", sr, sig_enc,
                     expiry, skn ? "&skn=" : "", skn ? skn : "") < 0) {
                *ret = NULL;
                r = -ENOMEM;
                goto out;
        }
        r = 0;
out:
        explicit_bzero(raw_key, key_len);
        free(raw_key);
        explicit_bzero(mac, sizeof(mac));
        explicit_bzero(sig, sizeof(sig));
        if (sig_enc)
                explicit_bzero(sig_enc, strlen(sig_enc));
        return r;
}
