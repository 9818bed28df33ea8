/* SPDX-License-Identifier: MIT */
#pragma once

/* Broker addresses: mqtt://host[:port] (default 1883) and mqtts://host[:port] (TLS, default 8883).
 * IPv6 literals in brackets: mqtt://[::1]:1883. Pure; no I/O. */

#include <stdbool.h>
#include <stddef.h>

typedef struct BrokerUrl {
        char *host; /* without brackets */
        int port;
        bool tls;
} BrokerUrl;

/* Parses url into *ret (fields owned by ret, free with broker_url_done()). Returns 0, -EINVAL
 * with a reason in err, or -ENOMEM. */
int broker_url_parse(const char *url, BrokerUrl *ret, char *err, size_t errlen);

/* Frees the fields of u (not u itself); safe on a zeroed or already-cleared value. */
void broker_url_done(BrokerUrl *u);
