/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker-url.h"
#include "macro.h"
#include "utf8.h"

#define MQTT_PORT_DEFAULT  1883
#define MQTTS_PORT_DEFAULT 8883
/* Longest URL quoted back in an error message. */
#define QUOTE_MAX 128

static bool is_scheme_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '+' || c == '-' || c == '.';
}

/* Copies url into buf with any user info replaced by "***@": error messages end up on stderr and
 * in the journal, and user info usually holds a password. Everything up to the last '@' counts,
 * since a password may itself contain '/', '?', '#' or '@'. */
static void url_redact(const char *url, char *buf, size_t buflen)
{
        const char *sep = strstr(url, "://"), *start = url, *at;
        size_t prefix;

        /* Only a real scheme ends before "://"; "a:b://c@h" has none and all of it is hidden. */
        if (sep && sep > url) {
                start = sep + 3;
                for (const char *c = url; c < sep; c++)
                        if (!is_scheme_char(*c)) {
                                start = url;
                                break;
                        }
        }
        at = strrchr(start, '@');
        if (!at) {
                snprintf(buf, buflen, "%s", url);
                return;
        }
        prefix = (size_t)(start - url);
        snprintf(buf, buflen, "%.*s***@%s", (int)(prefix < QUOTE_MAX ? prefix : QUOTE_MAX), url,
                 at + 1);
}

static int url_err(char *err, size_t errlen, const char *url, const char *fmt, ...) _printf_(4, 5);
static int url_err(char *err, size_t errlen, const char *url, const char *fmt, ...)
{
        char reason[256], shown[QUOTE_MAX + 1];
        va_list ap;

        if (!err || errlen == 0)
                return -EINVAL;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        url_redact(url, shown, sizeof(shown));
        snprintf(err, errlen, "invalid broker URL \"%s\": %s", shown, reason);
        utf8_sanitize_line(err);
        return -EINVAL;
}

static bool is_host_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-' || c == '.' || c == '_';
}

/* An IPv6 literal, optionally with a zone ("fe80::1%eth0"), as getaddrinfo() takes it. */
static bool is_ipv6_literal(const char *s, size_t n)
{
        char addr[INET6_ADDRSTRLEN];
        struct in6_addr a;
        const char *zone = memchr(s, '%', n);
        size_t alen = zone ? (size_t)(zone - s) : n;

        if (alen == 0 || alen >= sizeof(addr))
                return false;
        memcpy(addr, s, alen);
        addr[alen] = '\0';
        if (inet_pton(AF_INET6, addr, &a) != 1)
                return false;
        if (zone) {
                if (zone + 1 == s + n)
                        return false;
                for (const char *p = zone + 1; p < s + n; p++)
                        if (!is_host_char(*p))
                                return false;
        }
        return true;
}

int broker_url_parse(const char *url, BrokerUrl *ret, char *err, size_t errlen)
{
        const char *p, *host, *end;
        size_t host_len;
        bool tls;
        long port;

        if (!url || !*url)
                return url_err(err, errlen, "", "it is empty");

        if (strncasecmp(url, "mqtt://", 7) == 0) {
                tls = false;
                p = url + 7;
        } else if (strncasecmp(url, "mqtts://", 8) == 0) {
                tls = true;
                p = url + 8;
        } else if (strstr(url, "://"))
                return url_err(err, errlen, url,
                               "unsupported scheme, use mqtt://host[:port] or mqtts://host[:port]");
        else
                return url_err(err, errlen, url,
                               "no scheme, use mqtt://host[:port] or mqtts://host[:port]");

        /* The authority ends at the path, query or fragment. Any '@' is refused as user info,
         * even after a '/', since a password may contain one. */
        end = p + strcspn(p, "/?#");
        if (strchr(p, '@'))
                return url_err(err, errlen, url,
                               "user info is not supported, configure username and password_file "
                               "instead");
        if (*end && strcmp(end, "/") != 0)
                return url_err(err, errlen, url, "a path, query or fragment is not supported");

        if (*p == '[') {
                const char *close = memchr(p, ']', (size_t)(end - p));
                if (!close)
                        return url_err(err, errlen, url, "IPv6 address lacks its closing ']'");
                host = p + 1;
                host_len = (size_t)(close - host);
                if (!is_ipv6_literal(host, host_len))
                        return url_err(err, errlen, url, "\"%.*s\" is not an IPv6 address",
                                       (int)host_len, host);
                p = close + 1;
        } else {
                host = p;
                while (p < end && *p != ':')
                        p++;
                host_len = (size_t)(p - host);
                if (p < end && memchr(p + 1, ':', (size_t)(end - p - 1)))
                        return url_err(err, errlen, url,
                                       "too many ':', put an IPv6 address in brackets: "
                                       "mqtt://[::1]:1883");
                for (size_t i = 0; i < host_len; i++)
                        if (!is_host_char(host[i]))
                                return url_err(err, errlen, url,
                                               "invalid character '%c' in the host name",
                                               host[i] >= 0x20 && host[i] < 0x7f ? host[i] : '?');
        }
        if (host_len == 0)
                return url_err(err, errlen, url, "no host");

        if (p == end)
                port = tls ? MQTTS_PORT_DEFAULT : MQTT_PORT_DEFAULT;
        else if (*p != ':')
                return url_err(err, errlen, url, "unexpected text after the host");
        else {
                size_t digits = (size_t)(end - p - 1);

                if (digits == 0)
                        return url_err(err, errlen, url, "empty port");
                port = 0;
                for (const char *d = p + 1; d < end; d++) {
                        if (*d < '0' || *d > '9')
                                return url_err(err, errlen, url, "port is not a number");
                        if (port <= 65535) /* stop growing: out of range either way */
                                port = port * 10 + (*d - '0');
                }
                if (port < 1 || port > 65535)
                        return url_err(err, errlen, url, "port must be 1..65535");
        }

        char *h = strndup(host, host_len);
        if (!h)
                return -ENOMEM;
        *ret = (BrokerUrl){ .host = h, .port = (int)port, .tls = tls };
        return 0;
}

void broker_url_done(BrokerUrl *u)
{
        if (!u)
                return;
        free(u->host);
        u->host = NULL;
}

/* Characters that separate the URLs of a list: none of them can occur inside a valid URL. */
#define LIST_SEPARATORS " \t,"

int broker_url_list_parse(const char *list, BrokerUrl **ret, size_t *ret_n, char *err,
                          size_t errlen)
{
        BrokerUrl parsed[BROKER_URL_LIST_MAX] = { 0 };
        _cleanup_free_ char *copy = NULL;
        BrokerUrl *urls;
        size_t n = 0;
        char *word, *save = NULL;
        int r = 0;

        if (!list)
                return url_err(err, errlen, "", "it is empty");
        /* Before splitting: a password with a space or comma in it must not end up quoted. */
        if (strchr(list, '@'))
                return url_err(err, errlen, list,
                               "user info is not supported, configure username and password_file "
                               "instead");
        copy = strdup(list);
        if (!copy)
                return -ENOMEM;
        for (word = strtok_r(copy, LIST_SEPARATORS, &save); word;
             word = strtok_r(NULL, LIST_SEPARATORS, &save)) {
                if (n == BROKER_URL_LIST_MAX) {
                        r = url_err(err, errlen, word, "more than %d broker URLs",
                                    BROKER_URL_LIST_MAX);
                        goto fail;
                }
                r = broker_url_parse(word, &parsed[n], err, errlen);
                if (r < 0)
                        goto fail;
                n++;
                if (parsed[n - 1].tls != parsed[0].tls) {
                        r = url_err(err, errlen, word,
                                    "all broker URLs must be mqtt:// or all mqtts://");
                        goto fail;
                }
        }
        if (n == 0)
                return url_err(err, errlen, list, "it is empty");

        urls = calloc(n, sizeof(*urls));
        if (!urls) {
                r = -ENOMEM;
                goto fail;
        }
        memcpy(urls, parsed, n * sizeof(*urls));
        *ret = urls;
        *ret_n = n;
        return 0;

fail:
        for (size_t i = 0; i < n; i++)
                broker_url_done(&parsed[i]);
        return r;
}

BrokerUrl *broker_url_list_free(BrokerUrl *urls, size_t n)
{
        if (!urls)
                return NULL;
        for (size_t i = 0; i < n; i++)
                broker_url_done(&urls[i]);
        free(urls);
        return NULL;
}
