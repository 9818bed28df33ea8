/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdbool.h>

#include "broker-url.h"
#include "test-util.h"

static void check_ok(int line, const char *url, const char *host, int port, bool tls)
{
        BrokerUrl u = { 0 };
        char err[256] = "";
        int r = broker_url_parse(url, &u, err, sizeof(err));

        if (r != 0 || !u.host || strcmp(u.host, host) != 0 || u.port != port || u.tls != tls) {
                fprintf(stderr, "%s:%d: <%s> gave r=%d host=%s port=%d tls=%d (%s)\n", __FILE__,
                        line, url, r, u.host ? u.host : "(null)", u.port, u.tls, err);
                test_failures++;
        }
        broker_url_done(&u);
        CHECK(u.host == NULL);
        broker_url_done(&u); /* twice is harmless */
}

/* Expects a refusal whose message contains reason and quotes the URL. */
static void check_refused(int line, const char *url, const char *reason)
{
        BrokerUrl u = { 0 };
        char err[256] = "";
        int r = broker_url_parse(url, &u, err, sizeof(err));

        if (r != -EINVAL || u.host || !strstr(err, reason) || (url && !strstr(err, url)) ||
            strchr(err, '\n')) {
                fprintf(stderr, "%s:%d: <%s> gave r=%d err=<%s>, expected -EINVAL and <%s>\n",
                        __FILE__, line, url ? url : "(null)", r, err, reason);
                test_failures++;
        }
        broker_url_done(&u);
}

/* Expects a refusal with reason that never shows the user name ("alice") or the password. */
static void check_redacted(int line, const char *url, const char *reason, const char *secret,
                           const char *shown)
{
        BrokerUrl u = { 0 };
        char err[256] = "";
        int r = broker_url_parse(url, &u, err, sizeof(err));

        if (r != -EINVAL || u.host || !strstr(err, reason) || strstr(err, secret) ||
            strstr(err, "alice") || !strstr(err, shown)) {
                fprintf(stderr,
                        "%s:%d: <%s> gave r=%d err=<%s>, expected -EINVAL, <%s> and no <%s>\n",
                        __FILE__, line, url, r, err, shown, secret);
                test_failures++;
        }
        broker_url_done(&u);
}

/* A list parses into these "host:port" entries, all with this tls. */
static void check_list_ok(int line, const char *list, bool tls, size_t n, const char *const *want)
{
        BrokerUrl *urls = NULL;
        size_t got = 0;
        char err[256] = "", hp[300];
        int r = broker_url_list_parse(list, &urls, &got, err, sizeof(err));
        bool ok = r == 0 && got == n;

        for (size_t i = 0; ok && i < n; i++) {
                snprintf(hp, sizeof(hp), "%s:%d", urls[i].host, urls[i].port);
                ok = strcmp(hp, want[i]) == 0 && urls[i].tls == tls;
        }
        if (!ok) {
                fprintf(stderr, "%s:%d: <%s> gave r=%d n=%zu (%s)\n", __FILE__, line, list, r, got,
                        err);
                test_failures++;
        }
        CHECK(broker_url_list_free(urls, got) == NULL);
}

static void check_list_refused(int line, const char *list, const char *reason)
{
        BrokerUrl *urls = NULL;
        size_t n = 99;
        char err[256] = "";
        int r = broker_url_list_parse(list, &urls, &n, err, sizeof(err));

        if (r != -EINVAL || urls || n != 99 || !strstr(err, reason)) {
                fprintf(stderr, "%s:%d: <%s> gave r=%d err=<%s>, expected -EINVAL and <%s>\n",
                        __FILE__, line, list ? list : "(null)", r, err, reason);
                test_failures++;
        }
}

static void test_lists(void)
{
        char many[64 * 20] = "";

        check_list_ok(__LINE__, "mqtt://a", false, 1, (const char *const[]){ "a:1883" });
        check_list_ok(__LINE__, "mqtt://a:1 mqtt://b:2", false, 2,
                      (const char *const[]){ "a:1", "b:2" });
        check_list_ok(__LINE__, " mqtts://a,mqtts://[::1]:9 ,\tmqtts://c, ", true, 3,
                      (const char *const[]){ "a:8883", "::1:9", "c:8883" });
        check_list_ok(__LINE__, "mqtt://a,,mqtt://a", false, 2,
                      (const char *const[]){ "a:1883", "a:1883" });

        check_list_refused(__LINE__, NULL, "it is empty");
        check_list_refused(__LINE__, "", "it is empty");
        check_list_refused(__LINE__, " , ", "it is empty");
        check_list_refused(__LINE__, "mqtt://a mqtts://b",
                           "all broker URLs must be mqtt:// or all mqtts://");
        check_list_refused(__LINE__, "mqtts://a,mqtt://b",
                           "all broker URLs must be mqtt:// or all mqtts://");
        check_list_refused(__LINE__, "mqtt://a mqtt://b:0", "port must be 1..65535");
        check_list_refused(__LINE__, "mqtt://a b:1883", "no scheme");
        {
                /* A password with a space in it is not split and half shown. */
                BrokerUrl *urls = NULL;
                size_t n = 0;
                char err[256] = "";

                CHECK_INT_EQ(broker_url_list_parse("mqtt://a mqtt://alice:s3 cr3t@b", &urls, &n,
                                                   err, sizeof(err)),
                             -EINVAL);
                CHECK(strstr(err, "user info is not supported") != NULL);
                CHECK(strstr(err, "s3") == NULL && strstr(err, "cr3t") == NULL);
                CHECK(strstr(err, "alice") == NULL);
        }
        for (int i = 0; i <= BROKER_URL_LIST_MAX; i++)
                snprintf(many + strlen(many), sizeof(many) - strlen(many), "mqtt://h%d ", i);
        check_list_refused(__LINE__, many, "more than 16 broker URLs");
        many[strlen(many) - strlen("mqtt://h16 ")] = '\0';
        {
                BrokerUrl *urls = NULL;
                size_t n = 0;

                CHECK_INT_EQ(broker_url_list_parse(many, &urls, &n, NULL, 0), 0);
                CHECK_INT_EQ(n, BROKER_URL_LIST_MAX);
                broker_url_list_free(urls, n);
        }
        CHECK(broker_url_list_free(NULL, 3) == NULL);
}

int main(void)
{
        check_ok(__LINE__, "mqtt://127.0.0.1:1883", "127.0.0.1", 1883, false);
        check_ok(__LINE__, "mqtt://broker.example.com", "broker.example.com", 1883, false);
        check_ok(__LINE__, "mqtts://broker.example.com", "broker.example.com", 8883, true);
        check_ok(__LINE__, "mqtts://broker:18883", "broker", 18883, true);
        check_ok(__LINE__, "mqtt://localhost/", "localhost", 1883, false);
        check_ok(__LINE__, "MQTT://Host_1:1", "Host_1", 1, false);
        check_ok(__LINE__, "mqtt://h:65535", "h", 65535, false);
        check_ok(__LINE__, "mqtt://[::1]:1884", "::1", 1884, false);
        check_ok(__LINE__, "mqtts://[2001:db8::7]", "2001:db8::7", 8883, true);
        check_ok(__LINE__, "mqtt://[fe80::1%eth0]:1883/", "fe80::1%eth0", 1883, false);
        check_ok(__LINE__, "mqtt://[::ffff:192.0.2.1]", "::ffff:192.0.2.1", 1883, false);

        check_refused(__LINE__, "", "it is empty");
        check_refused(__LINE__, NULL, "it is empty");
        check_refused(__LINE__, "tcp://broker:1883", "unsupported scheme");
        check_refused(__LINE__, "http://broker", "unsupported scheme");
        check_refused(__LINE__, "broker:1883", "no scheme");
        check_refused(__LINE__, "mqtt://", "no host");
        check_refused(__LINE__, "mqtt://:1883", "no host");
        check_refused(__LINE__, "mqtt://[]:1883", "is not an IPv6 address");
        check_refused(__LINE__, "mqtt://h:0", "port must be 1..65535");
        check_refused(__LINE__, "mqtt://h:65536", "port must be 1..65535");
        check_refused(__LINE__, "mqtt://h:99999999999999999999", "port must be 1..65535");
        check_refused(__LINE__, "mqtt://h:", "empty port");
        check_refused(__LINE__, "mqtt://h:-1", "port is not a number");
        check_refused(__LINE__, "mqtt://h:12a", "port is not a number");
        check_refused(__LINE__, "mqtt://h:1883/twins", "a path, query or fragment");
        check_refused(__LINE__, "mqtt://h//", "a path, query or fragment");
        check_refused(__LINE__, "mqtt://h?x=1", "a path, query or fragment");
        check_refused(__LINE__, "mqtt://h#frag", "a path, query or fragment");
        check_redacted(__LINE__, "mqtt://alice:S3cret@host", "user info is not supported", "S3cret",
                       "mqtt://***@host");
        check_redacted(__LINE__, "mqtts://alice:S3cret@h:8883", "user info is not supported",
                       "S3cret", "mqtts://***@h:8883");
        /* A '/', '?', '#' or '@' inside the password does not end the redaction early. */
        check_redacted(__LINE__, "mqtt://alice:pa/ss@h", "user info is not supported", "pa/ss",
                       "mqtt://***@h");
        check_redacted(__LINE__, "mqtt://alice:p@s?s#x@h", "user info is not supported", "p@s?s#x",
                       "mqtt://***@h");
        check_redacted(__LINE__, "tcp://alice:S3cret@h", "unsupported scheme", "S3cret",
                       "tcp://***@h");
        check_redacted(__LINE__, "alice:S3cret@h:1883", "no scheme", "S3cret", "\"***@h:1883\"");
        check_refused(__LINE__, "mqtt://::1:1883", "put an IPv6 address in brackets");
        check_refused(__LINE__, "mqtt://[::1:1883", "closing ']'");
        check_refused(__LINE__, "mqtt://[::g]:1883", "is not an IPv6 address");
        check_refused(__LINE__, "mqtt://[::1]x", "unexpected text after the host");
        check_refused(__LINE__, "mqtt://bro ker", "invalid character ' '");
        check_refused(__LINE__, "mqtt://h\xc3\xa9", "invalid character '?'");

        /* A refused URL leaves *ret untouched. */
        BrokerUrl u = { .host = NULL, .port = 42, .tls = true };
        char err[16];
        CHECK_INT_EQ(broker_url_parse("mqtt://h:0", &u, err, sizeof(err)), -EINVAL);
        CHECK_INT_EQ(u.port, 42);
        /* A short buffer is still terminated. */
        CHECK_INT_EQ(strlen(err), sizeof(err) - 1);

        test_lists();
        return test_exit("test-broker-url");
}
