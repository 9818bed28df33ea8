/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Azure shared access signatures, pure: no clock, no I/O. A token for resource URI r with key k
 * (base64) expiring at e (seconds since the epoch) is
 *
 *     SharedAccessSignature sr={enc(r)}&sig={enc(base64(HMAC-SHA256(k, enc(r) + "\n" + e)))}&se={e}
 *
 * plus "&skn={enc(policy)}" for a shared access policy (service side), where enc() is
 * encodeURIComponent's percent-encoding (upper-case hex, as Microsoft's SDKs send it). The HMAC
 * is taken over sr exactly as it appears in the token.
 */

#include <stddef.h>
#include <stdint.h>

/* Percent-encodes s as JavaScript's encodeURIComponent does: A-Z a-z 0-9 and - _ . ! ~ * ' ( )
 * stay, every other byte becomes %XX. Returns a malloc'd string or NULL on ENOMEM. */
char *sas_url_encode(const char *s);

/* Decodes base64 (standard alphabet, '=' padding required as RFC 4648 has it) into *ret
 * (malloc'd, *ret_len bytes). Returns 0, -EINVAL for anything that is not base64, or -ENOMEM.
 * The caller wipes *ret. */
int sas_base64_decode(const char *text, unsigned char **ret, size_t *ret_len);

/* Makes a token (see above) into *ret (malloc'd; the caller wipes it). policy may be NULL (a
 * device's own key). Returns 0, -EINVAL when key is not base64 or resource is empty, or
 * -ENOMEM. */
int sas_token_make(const char *resource, const char *key, const char *policy, int64_t expiry,
                   char **ret);
