/* SPDX-License-Identifier: MIT */
#pragma once

/* Broker addresses: mqtt://host[:port] (default 1883) and mqtts://host[:port] (TLS, default 8883).
 * IPv6 literals in brackets: mqtt://[::1]:1883. A list names the nodes of one (clustered)
 * broker, separated by spaces or commas. Pure; no I/O. */

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

/* Most nodes in one list. */
#define BROKER_URL_LIST_MAX 16

/* Parses a list of 1 to BROKER_URL_LIST_MAX URLs separated by spaces, tabs or commas, all
 * mqtt:// or all mqtts:// (TLS is set up once per client), into a new array *ret of *ret_n
 * entries (free with broker_url_list_free()). Returns 0, -EINVAL with a reason in err, or
 * -ENOMEM. */
int broker_url_list_parse(const char *list, BrokerUrl **ret, size_t *ret_n, char *err,
                          size_t errlen);

/* Frees an array from broker_url_list_parse(). Accepts NULL; returns NULL. */
BrokerUrl *broker_url_list_free(BrokerUrl *urls, size_t n);
