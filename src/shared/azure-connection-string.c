/* SPDX-License-Identifier: MIT */
#include "azure-connection-string.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "sas-token.h"
#include "twin-model.h"

/* Longest field we take (a host name, an id, a key): anything longer is not a connection
 * string. */
#define FIELD_MAX 1024

static int fail(char *err, size_t errlen, const char *fmt, ...) _printf_(3, 4);
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

static void wipe_free(char *s)
{
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

void azure_connection_string_done(AzureConnectionString *c)
{
        free(c->host_name);
        free(c->device_id);
        free(c->module_id);
        wipe_free(c->shared_access_key);
        free(c->shared_access_key_name);
        free(c->gateway_host);
        *c = (AzureConnectionString){ 0 };
}

const char *azure_connection_string_connect_host(const AzureConnectionString *c)
{
        return c->gateway_host ? c->gateway_host : c->host_name;
}

/* A DNS name or an IPv4 address: letters, digits, '-' and '.', not empty. */
static bool host_is_valid(const char *h)
{
        return h[0] != '\0' && strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789-.") == strlen(h);
}

static int parse_gateway(AzureConnectionString *c, const char *value, char *err, size_t errlen)
{
        const char *colon = strrchr(value, ':');
        char *host;

        if (colon) {
                char *end;
                long port = strtol(colon + 1, &end, 10);

                if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
                        return fail(err, errlen,
                                    "GatewayHostName: '%s' is not host[:port] with a port from 1 "
                                    "to 65535",
                                    value);
                c->gateway_port = (int)port;
                host = strndup(value, (size_t)(colon - value));
        } else
                host = strdup(value);
        if (!host)
                return -ENOMEM;
        if (!host_is_valid(host)) {
                free(host);
                return fail(err, errlen, "GatewayHostName: '%s' is not a host name", value);
        }
        c->gateway_host = host;
        return 0;
}

int azure_connection_string_parse(const char *text, enum AzureConnectionStringKind kind,
                                  AzureConnectionString *ret, char *err, size_t errlen)
{
        _cleanup_(azure_connection_string_done) AzureConnectionString c = { 0 };
        const char *p = text;
        bool seen_x509 = false;
        int r;

        *ret = (AzureConnectionString){ 0 };
        if (err && errlen > 0)
                err[0] = '\0';
        p += strspn(p, " \t");
        if (*p == '\0')
                return fail(err, errlen, "empty connection string");

        while (*p) {
                const char *end = strchr(p, ';'), *eq;
                size_t len = end ? (size_t)(end - p) : strlen(p);
                _cleanup_free_ char *name = NULL;
                char *value, **field = NULL;

                if (len == 0) { /* ";;" or a trailing ';' */
                        p += end ? 1 : 0;
                        continue;
                }
                eq = memchr(p, '=', len);
                if (!eq || eq == p) {
                        /* Not echoed: a stray key pasted without its name would show here. */
                        return fail(err, errlen, "the field at character %zu is not Name=Value",
                                    (size_t)(p - text) + 1);
                }
                name = strndup(p, (size_t)(eq - p));
                if (!name)
                        return -ENOMEM;
                if (len - (size_t)(eq - p) - 1 > FIELD_MAX)
                        return fail(err, errlen, "%s: longer than %d characters", name, FIELD_MAX);
                value = strndup(eq + 1, len - (size_t)(eq - p) - 1);
                if (!value)
                        return -ENOMEM;

                if (strcmp(name, "HostName") == 0)
                        field = &c.host_name;
                else if (strcmp(name, "DeviceId") == 0)
                        field = &c.device_id;
                else if (strcmp(name, "ModuleId") == 0)
                        field = &c.module_id;
                else if (strcmp(name, "SharedAccessKey") == 0)
                        field = &c.shared_access_key;
                else if (strcmp(name, "SharedAccessKeyName") == 0)
                        field = &c.shared_access_key_name;
                else if (strcmp(name, "GatewayHostName") == 0) {
                        if (c.gateway_host) {
                                free(value);
                                return fail(err, errlen, "GatewayHostName: given twice");
                        }
                        r = parse_gateway(&c, value, err, errlen);
                        free(value);
                        if (r < 0)
                                return r;
                } else if (strcmp(name, "x509") == 0) {
                        bool on = strcmp(value, "true") == 0 || strcmp(value, "True") == 0;

                        if (!on && strcmp(value, "false") != 0 && strcmp(value, "False") != 0) {
                                fail(err, errlen, "x509: '%.64s' is not true or false", value);
                                free(value);
                                return -EINVAL;
                        }
                        free(value);
                        if (seen_x509)
                                return fail(err, errlen, "x509: given twice");
                        seen_x509 = true;
                        c.x509 = on;
                } else if (strcmp(name, "SharedAccessSignature") == 0) {
                        wipe_free(value);
                        return fail(err, errlen,
                                    "SharedAccessSignature: a fixed token expires; give the "
                                    "SharedAccessKey instead, so that tokens are made as needed");
                } else {
                        wipe_free(value);
                        return fail(err, errlen, "unknown field '%.64s'", name);
                }
                if (field) {
                        if (*field) {
                                wipe_free(value);
                                return fail(err, errlen, "%s: given twice", name);
                        }
                        *field = value;
                }
                p += len + (end ? 1 : 0);
        }

        if (!c.host_name)
                return fail(err, errlen, "HostName: missing");
        if (!host_is_valid(c.host_name))
                return fail(err, errlen, "HostName: '%s' is not a host name", c.host_name);
        if (c.shared_access_key) {
                unsigned char *raw = NULL;
                size_t raw_len = 0;

                r = sas_base64_decode(c.shared_access_key, &raw, &raw_len);
                if (r == -ENOMEM)
                        return r;
                if (raw) {
                        explicit_bzero(raw, raw_len);
                        free(raw);
                }
                if (r < 0 || raw_len == 0)
                        return fail(err, errlen, "SharedAccessKey: not base64");
        }

        if (kind == AZURE_CONNECTION_STRING_DEVICE) {
                if (!c.device_id)
                        return fail(err, errlen, "DeviceId: missing");
                if (!twin_device_id_is_valid(c.device_id))
                        return fail(err, errlen,
                                    "DeviceId: '%.128s' is not a device id twind accepts (1 to "
                                    "%d characters of A-Z a-z 0-9 - . _ :)",
                                    c.device_id, TWIN_DEVICE_ID_MAX);
                if (c.module_id && !twin_device_id_is_valid(c.module_id))
                        return fail(err, errlen, "ModuleId: '%.128s' is not a valid module id",
                                    c.module_id);
                if (c.shared_access_key_name)
                        return fail(err, errlen,
                                    "SharedAccessKeyName: a device's connection string has "
                                    "none (this looks like a service connection string)");
                if (c.x509 && c.shared_access_key)
                        return fail(err, errlen, "x509: given together with SharedAccessKey");
                if (!c.x509 && !c.shared_access_key)
                        return fail(err, errlen, "SharedAccessKey: missing (or x509=true)");
        } else {
                if (c.device_id || c.module_id)
                        return fail(err, errlen,
                                    "%s: a service connection string has none (this looks like a "
                                    "device connection string)",
                                    c.device_id ? "DeviceId" : "ModuleId");
                if (!c.shared_access_key_name)
                        return fail(err, errlen, "SharedAccessKeyName: missing");
                if (!c.shared_access_key)
                        return fail(err, errlen, "SharedAccessKey: missing");
                if (c.x509)
                        return fail(err, errlen, "x509: not for a service connection string");
        }

        *ret = c;
        c = (AzureConnectionString){ 0 };
        return 0;
}
