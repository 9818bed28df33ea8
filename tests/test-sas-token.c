/* SPDX-License-Identifier: MIT */
/* SAS tokens and IoT Hub connection strings. The expected tokens were computed by a second
 * implementation (Python's hmac, base64 and urllib.parse.quote with encodeURIComponent's safe
 * characters), so the format is not defined by this code alone. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "azure-connection-string.h"
#include "sas-token.h"
#include "test-util.h"

/* base64 of "twind test key, not a secret!!" */
#define KEY "dHdpbmQgdGVzdCBrZXksIG5vdCBhIHNlY3JldCEh"

static void check_token(const char *resource, const char *policy, long long expiry,
                        const char *want)
{
        char *t = NULL;

        CHECK_INT_EQ(sas_token_make(resource, KEY, policy, expiry, &t), 0);
        CHECK_STR_EQ(t, want);
        free(t);
}

static void test_tokens(void)
{
        char *t = NULL;

        check_token("test-hub.azure-devices.net/devices/dev-1", NULL, 1796000000,
                    "SharedAccessSignature sr=test-hub.azure-devices.net%2Fdevices%2Fdev-1&sig="
                    "0mTrApvonsjmHzzKq4cBXFovvG616kWYufCg%2F7QPR8w%3D&se=1796000000");
        check_token("test-hub.azure-devices.net/devices/dev:1/modules/m.1", NULL, 1796000000,
                    "SharedAccessSignature sr=test-hub.azure-devices.net%2Fdevices%2Fdev%3A1%2F"
                    "modules%2Fm.1&sig=u54TLyHVERGsVf8cUd0ym5lY3zBIf8XV0iLMaPS2LOk%3D&se="
                    "1796000000");
        check_token("test-hub.azure-devices.net", "iothubowner", 2000000000,
                    "SharedAccessSignature sr=test-hub.azure-devices.net&sig=%2FDIpRBGnQLSHLss%2F"
                    "NhPzG4KhneVnaQIHA4yGTsbteyg%3D&se=2000000000&skn=iothubowner");

        CHECK_INT_EQ(sas_token_make("h/devices/d", "not base64!", NULL, 1, &t), -EINVAL);
        CHECK_INT_EQ(sas_token_make("h/devices/d", "YWJj=", NULL, 1, &t), -EINVAL);
        CHECK_INT_EQ(sas_token_make("", KEY, NULL, 1, &t), -EINVAL);
        CHECK(t == NULL);
}

static void test_encode_and_base64(void)
{
        char *e = sas_url_encode("a b/c:d?e=f&g~h*i'j(k)l!m.n_o-p%q\xc3\xa9");
        unsigned char *raw = NULL;
        size_t len = 0;

        CHECK_STR_EQ(e, "a%20b%2Fc%3Ad%3Fe%3Df%26g~h*i'j(k)l!m.n_o-p%25q%C3%A9");
        free(e);

        CHECK_INT_EQ(sas_base64_decode("YWJj", &raw, &len), 0);
        CHECK(len == 3 && memcmp(raw, "abc", 3) == 0);
        free(raw);
        CHECK_INT_EQ(sas_base64_decode("YWI=", &raw, &len), 0);
        CHECK(len == 2 && memcmp(raw, "ab", 2) == 0);
        free(raw);
        CHECK_INT_EQ(sas_base64_decode("YQ==", &raw, &len), 0);
        CHECK(len == 1 && raw[0] == 'a');
        free(raw);
        CHECK_INT_EQ(sas_base64_decode("YQ", &raw, &len), -EINVAL);
        CHECK_INT_EQ(sas_base64_decode("Y=Q=", &raw, &len), -EINVAL);
        CHECK_INT_EQ(sas_base64_decode("YW J", &raw, &len), -EINVAL);
        CHECK_INT_EQ(sas_base64_decode("", &raw, &len), -EINVAL);
}

static void check_refused(const char *text, enum AzureConnectionStringKind kind, const char *want)
{
        AzureConnectionString c;
        char err[256] = "";

        CHECK_INT_EQ(azure_connection_string_parse(text, kind, &c, err, sizeof err), -EINVAL);
        CHECK_STR_EQ(err, want);
        /* The key never shows in a message. */
        CHECK(!strstr(err, KEY));
        CHECK(c.host_name == NULL && c.shared_access_key == NULL);
}

static void test_connection_strings(void)
{
        AzureConnectionString c;
        char err[256] = "";

        CHECK_INT_EQ(azure_connection_string_parse("HostName=hub.azure-devices.net;DeviceId=dev-1;"
                                                   "SharedAccessKey=" KEY,
                                                   AZURE_CONNECTION_STRING_DEVICE, &c, err,
                                                   sizeof err),
                     0);
        CHECK_STR_EQ(c.host_name, "hub.azure-devices.net");
        CHECK_STR_EQ(c.device_id, "dev-1");
        CHECK_STR_EQ(c.shared_access_key, KEY);
        CHECK(!c.module_id && !c.gateway_host && !c.x509);
        CHECK_STR_EQ(azure_connection_string_connect_host(&c), "hub.azure-devices.net");
        azure_connection_string_done(&c);

        /* Any order, a module, a gateway with a port, a trailing ';'. */
        CHECK_INT_EQ(azure_connection_string_parse("DeviceId=d;ModuleId=m1;SharedAccessKey=" KEY
                                                   ";GatewayHostName=localhost:18883;HostName=h;",
                                                   AZURE_CONNECTION_STRING_DEVICE, &c, err,
                                                   sizeof err),
                     0);
        CHECK_STR_EQ(c.module_id, "m1");
        CHECK_STR_EQ(c.gateway_host, "localhost");
        CHECK_INT_EQ(c.gateway_port, 18883);
        CHECK_STR_EQ(azure_connection_string_connect_host(&c), "localhost");
        azure_connection_string_done(&c);

        CHECK_INT_EQ(azure_connection_string_parse("HostName=h;DeviceId=d;x509=true",
                                                   AZURE_CONNECTION_STRING_DEVICE, &c, err,
                                                   sizeof err),
                     0);
        CHECK(c.x509 && !c.shared_access_key);
        azure_connection_string_done(&c);

        CHECK_INT_EQ(azure_connection_string_parse("HostName=h;SharedAccessKeyName=iothubowner;"
                                                   "SharedAccessKey=" KEY,
                                                   AZURE_CONNECTION_STRING_SERVICE, &c, err,
                                                   sizeof err),
                     0);
        CHECK_STR_EQ(c.shared_access_key_name, "iothubowner");
        azure_connection_string_done(&c);

        const enum AzureConnectionStringKind D = AZURE_CONNECTION_STRING_DEVICE;
        const enum AzureConnectionStringKind S = AZURE_CONNECTION_STRING_SERVICE;
        check_refused("", D, "empty connection string");
        check_refused("DeviceId=d;SharedAccessKey=" KEY, D, "HostName: missing");
        check_refused("HostName=h;SharedAccessKey=" KEY, D, "DeviceId: missing");
        check_refused("HostName=h;DeviceId=d", D, "SharedAccessKey: missing (or x509=true)");
        check_refused("HostName=h;DeviceId=d;SharedAccessKey=" KEY "!", D,
                      "SharedAccessKey: not base64");
        check_refused("HostName=h;DeviceId=a b;SharedAccessKey=" KEY, D,
                      "DeviceId: 'a b' is not a device id twind accepts (1 to 128 characters of "
                      "A-Z a-z 0-9 - . _ :)");
        check_refused("HostName=h;DeviceId=d;DeviceId=e;SharedAccessKey=" KEY, D,
                      "DeviceId: given twice");
        check_refused("HostName=h;DeviceId=d;Color=blue;SharedAccessKey=" KEY, D,
                      "unknown field 'Color'");
        check_refused("HostName=h;DeviceId=d;" KEY, D,
                      "the field at character 23 is not Name=Value");
        check_refused("HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=x", D,
                      "SharedAccessSignature: a fixed token expires; give the SharedAccessKey "
                      "instead, so that tokens are made as needed");
        check_refused("HostName=h;DeviceId=d;SharedAccessKey=" KEY ";GatewayHostName=g:0", D,
                      "GatewayHostName: 'g:0' is not host[:port] with a port from 1 to 65535");
        check_refused("HostName=h/x;DeviceId=d;SharedAccessKey=" KEY, D,
                      "HostName: 'h/x' is not a host name");
        check_refused("HostName=h;SharedAccessKeyName=p;SharedAccessKey=" KEY, D,
                      "DeviceId: missing");
        check_refused("HostName=h;DeviceId=d;SharedAccessKeyName=p;SharedAccessKey=" KEY, S,
                      "DeviceId: a service connection string has none (this looks like a device "
                      "connection string)");
        check_refused("HostName=h;SharedAccessKey=" KEY, S, "SharedAccessKeyName: missing");
        check_refused("HostName=h;DeviceId=d;x509=yes", D, "x509: 'yes' is not true or false");
}

int main(void)
{
        test_tokens();
        test_encode_and_base64();
        test_connection_strings();
        return test_exit("test-sas-token");
}
