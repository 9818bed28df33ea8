/* SPDX-License-Identifier: MIT */
/* twind.conf parsing, the exact error lines a user sees, verification and the password file. */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "test-tmpdir.h"
#include "test-util.h"
#include "twin-signature.h"
#include "twind-conf.h"
#include "twind-dialect.h"

static char tmpdir[] = "/tmp/test-conf-XXXXXX";

/* Writes content to tmpdir/name and returns the path (static buffer per call site is enough). */
static const char *write_file(const char *name, const char *content, mode_t mode)
{
        static char path[4][512];
        static int next;
        char *p = path[next++ % 4];
        FILE *f;

        snprintf(p, 512, "%s/%s", tmpdir, name);
        f = fopen(p, "we");
        if (!f) {
                perror(p);
                exit(2);
        }
        fputs(content, f);
        fclose(f);
        chmod(p, mode);
        return p;
}

/* Loads content as a fresh configuration; returns the result and the error line in err. */
static int load_text(const char *content, TwindConfig **ret, char *err, size_t errlen)
{
        const char *path = write_file("twind.conf", content, 0644);
        TwindConfig *c = NULL;
        int r;

        if (twind_config_new(&c) < 0)
                exit(2);
        r = twind_config_load_file(c, path, true, err, errlen);
        *ret = c;
        return r;
}

/* Expects content to be refused with "<path>:<expected>". */
static void check_refused(const char *content, const char *expected, int line)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512], want[1024];
        int r;

        r = load_text(content, &c, err, sizeof err);
        snprintf(want, sizeof want, "%s/twind.conf:%s", tmpdir, expected);
        if (r != -EINVAL || strcmp(err, want) != 0) {
                fprintf(stderr, "%s:%d: got %d \"%s\", expected -EINVAL \"%s\"\n", __FILE__, line,
                        r, err, want);
                test_failures++;
        }
}
#define CHECK_REFUSED(content, expected) check_refused(content, expected, __LINE__)

static void test_defaults(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;

        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK(c->path == NULL);
        CHECK_STR_EQ(c->broker_url, TWIND_BROKER_URL_DEFAULT);
        CHECK_STR_EQ(c->topic_root, "twins");
        CHECK_STR_EQ(c->state_dir, TWIND_STATE_DIR_DEFAULT);
        CHECK_STR_EQ(c->control_socket, TWIND_CONTROL_SOCKET_DEFAULT);
        CHECK_INT_EQ(c->keepalive, 60);
        CHECK_INT_EQ(c->apply_timeout_usec, 60 * 1000000ULL);
        CHECK(c->device_id == NULL);
        CHECK(c->apply_command == NULL);
        CHECK(c->username == NULL);
        CHECK(c->password_file == NULL);
        CHECK_STR_EQ(c->trust_keys, TWIND_SYSCONFDIR "/twind/trusted-keys.d");
        CHECK(!c->require_signature);
}

static void test_report_group(void)
{
        _cleanup_(twind_config_freep) TwindConfig *a = NULL, *b = NULL;
        char err[512] = "";

        CHECK_INT_EQ(load_text("[control]\nreport_group = root\n", &a, err, sizeof err), 0);
        CHECK_STR_EQ(a->control_report_group.name, "root");
        CHECK_INT_EQ(a->control_report_group.gid, 0);
        CHECK_INT_EQ(load_text("[control]\nreport_group = 4242\n", &b, err, sizeof err), 0);
        CHECK_INT_EQ(b->control_report_group.gid, 4242);
        CHECK_REFUSED("[control]\nreport_group = no-such-group-here\n",
                      "2: [control] report_group: group 'no-such-group-here' does not exist");
}

static void test_valid_file(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "";
        char path[512];

        CHECK_INT_EQ(load_text("# twind configuration\n"
                               "; another comment style\n"
                               "\n"
                               "[broker]\n"
                               "url = mqtts://broker.example.com:8883\n"
                               "username = dev-1\n"
                               "password_file = /etc/twind/password\n"
                               "cafile = /etc/ssl/ca.pem\n"
                               "certfile = /etc/twind/cert.pem\n"
                               "keyfile = /etc/twind/key.pem\n"
                               "keepalive = 30 ; inline comment\n"
                               "topic_root = fleet/a\n"
                               "[device]\n"
                               "  id = dev-1\n" /* indented: an ordinary key, not a continuation */
                               "[apply]\n"
                               "command = /usr/lib/twind/apply --verbose\n"
                               "timeout = 2min\n"
                               "[state]\n"
                               "directory: /var/lib/twind-test\n"
                               "[control]\n"
                               "socket = /run/twind-test/control.sock\n",
                               &c, err, sizeof err),
                     0);
        CHECK_STR_EQ(err, "");
        snprintf(path, sizeof path, "%s/twind.conf", tmpdir);
        CHECK_STR_EQ(c->path, path);
        CHECK_STR_EQ(c->broker_url, "mqtts://broker.example.com:8883");
        CHECK_STR_EQ(c->username, "dev-1");
        CHECK_STR_EQ(c->password_file, "/etc/twind/password");
        CHECK_STR_EQ(c->cafile, "/etc/ssl/ca.pem");
        CHECK_STR_EQ(c->certfile, "/etc/twind/cert.pem");
        CHECK_STR_EQ(c->keyfile, "/etc/twind/key.pem");
        CHECK_INT_EQ(c->keepalive, 30);
        CHECK_STR_EQ(c->topic_root, "fleet/a");
        CHECK_STR_EQ(c->device_id, "dev-1");
        CHECK_STR_EQ(c->apply_command, "/usr/lib/twind/apply --verbose");
        CHECK_INT_EQ(c->apply_timeout_usec, 120 * 1000000ULL);
        CHECK_STR_EQ(c->state_dir, "/var/lib/twind-test");
        CHECK_STR_EQ(c->control_socket, "/run/twind-test/control.sock");
}

static void test_timeouts(void)
{
        static const struct {
                const char *text;
                unsigned long long usec;
        } ok[] = {
                { "60", 60000000ULL },    { "60s", 60000000ULL },    { "2min", 120000000ULL },
                { "1m30s", 90000000ULL }, { "1m 30s", 90000000ULL }, { "500ms", 500000ULL },
                { "1h", 3600000000ULL },  { "24h", 86400000000ULL }, { "90 sec", 90000000ULL },
        };
        static const char *bad[] = { "0",  "0s",   "abc",       "25h", "86401",
                                     "-5", "1.5s", "5 parsecs", "s" };

        for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
                _cleanup_(twind_config_freep) TwindConfig *c = NULL;
                char text[128], err[512] = "";

                snprintf(text, sizeof text, "[apply]\ntimeout = %s\n", ok[i].text);
                CHECK_INT_EQ(load_text(text, &c, err, sizeof err), 0);
                CHECK_STR_EQ(err, "");
                CHECK_INT_EQ(c->apply_timeout_usec, ok[i].usec);
        }
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                char text[128], expected[256];

                snprintf(text, sizeof text, "[apply]\ntimeout = %s\n", bad[i]);
                snprintf(expected, sizeof expected,
                         "2: [apply] timeout: '%s' is not a time span above 0 and at most 24h "
                         "(such as 60, 90s, 2min, 1m30s)",
                         bad[i]);
                CHECK_REFUSED(text, expected);
        }
}

static void test_errors(void)
{
        CHECK_REFUSED("[broker]\nurl = mqtt://h\nfoo = 1\n",
                      "3: unknown key 'foo' in section [broker]");
        CHECK_REFUSED("[device]\nname = x\n", "2: unknown key 'name' in section [device]");
        /* An unknown section is reported at its header, even when it holds no key. */
        CHECK_REFUSED("[broker]\n[nope]\n", "2: unknown section [nope]");
        CHECK_REFUSED("[Broker]\nurl = mqtt://h\n", "1: unknown section [Broker]");
        CHECK_REFUSED("id = x\n[device]\n", "1: key 'id' outside of any section");
        CHECK_REFUSED("[broker]\nkeepalive = abc\n",
                      "2: [broker] keepalive: 'abc' is not a number of seconds between 5 and 3600");
        CHECK_REFUSED("[broker]\nkeepalive = 4\n",
                      "2: [broker] keepalive: '4' is not a number of seconds between 5 and 3600");
        CHECK_REFUSED("[broker]\nkeepalive = 3601\n",
                      "2: [broker] keepalive: '3601' is not a number of seconds between 5 and "
                      "3600");
        CHECK_REFUSED("[broker]\nkeepalive = 30s\n",
                      "2: [broker] keepalive: '30s' is not a number of seconds between 5 and "
                      "3600");
        CHECK_REFUSED("[broker]\njust some words\n", "2: syntax error");
        CHECK_REFUSED("[broker\nurl = mqtt://h\n", "1: syntax error");
        /* The first problem in the file is the one reported, whoever found it. */
        CHECK_REFUSED("[broker]\nwords\nfoo = 1\n", "2: syntax error");
        CHECK_REFUSED("[broker]\nfoo = 1\nwords\n", "2: unknown key 'foo' in section [broker]");
        CHECK_REFUSED("[nope]\nwords\n", "1: unknown section [nope]");

        /* inih reads at most 199 characters per line; a longer one is refused, not split. */
        {
                char text[400];
                memset(text, 'a', sizeof text);
                memcpy(text, "[apply]\ncommand = ", 18);
                text[18 + 250] = '\n';
                text[18 + 251] = '\0';
                CHECK_REFUSED(text, "2: line too long (at most 199 characters)");
        }
}

static void test_overrides(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        const char *first, *second;
        char err[512] = "";

        /* Last wins within a file; empty clears an optional key and restores a default. */
        CHECK_INT_EQ(load_text("[broker]\n"
                               "url = mqtt://a\n"
                               "url = mqtt://b\n"
                               "username = u\n"
                               "username =\n"
                               "[state]\n"
                               "directory = /x\n"
                               "directory =\n",
                               &c, err, sizeof err),
                     0);
        CHECK_STR_EQ(c->broker_url, "mqtt://b");
        CHECK(c->username == NULL);
        CHECK_STR_EQ(c->state_dir, TWIND_STATE_DIR_DEFAULT);

        /* A second file overrides the first key by key. */
        first = write_file("a.conf",
                           "[broker]\nurl = mqtt://a\nkeepalive = 10\n[device]\nid = d1\n", 0644);
        second = write_file("b.conf", "[device]\nid = d2\n", 0644);
        twind_config_free(TAKE_PTR(c));
        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK_INT_EQ(twind_config_load_file(c, first, true, err, sizeof err), 0);
        CHECK_INT_EQ(twind_config_load_file(c, second, true, err, sizeof err), 0);
        CHECK_STR_EQ(c->broker_url, "mqtt://a");
        CHECK_INT_EQ(c->keepalive, 10);
        CHECK_STR_EQ(c->device_id, "d2");
        CHECK_STR_EQ(c->path, second);

        /* Command-line style override after the file. */
        CHECK_INT_EQ(twind_config_set_string(&c->device_id, "d3"), 0);
        CHECK_STR_EQ(c->device_id, "d3");
        CHECK_INT_EQ(twind_config_set_string(&c->device_id, NULL), 0);
        CHECK(c->device_id == NULL);
}

static void test_missing_file(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char path[512], err[512] = "", want[600];

        snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir);
        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK_INT_EQ(twind_config_load_file(c, path, false, err, sizeof err), 0);
        CHECK(c->path == NULL);
        CHECK_STR_EQ(c->broker_url, TWIND_BROKER_URL_DEFAULT);
        CHECK_INT_EQ(twind_config_load_file(c, path, true, err, sizeof err), -ENOENT);
        snprintf(want, sizeof want, "cannot open %s: No such file or directory", path);
        CHECK_STR_EQ(err, want);

        /* A directory is not a configuration file. */
        CHECK_INT_EQ(twind_config_load_file(c, tmpdir, true, err, sizeof err), -EISDIR);
        snprintf(want, sizeof want, "%s is not a regular file", tmpdir);
        CHECK_STR_EQ(err, want);
}

/* A FIFO as the configuration or password file is refused at once: opening or reading one
 * would block the agent's loop (on SIGHUP) until a writer shows up. The alarm turns such a
 * hang into a failure of this test instead of a stuck test run. */
static void test_fifo_refused(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char fifo[512], err[512] = "", want[600];
        char *pw = NULL;

        snprintf(fifo, sizeof fifo, "%s/fifo", tmpdir);
        CHECK_INT_EQ(mkfifo(fifo, 0600), 0);
        CHECK_INT_EQ(twind_config_new(&c), 0);
        alarm(10);

        CHECK_INT_EQ(twind_config_load_file(c, fifo, true, err, sizeof err), -EINVAL);
        snprintf(want, sizeof want, "%s is not a regular file", fifo);
        CHECK_STR_EQ(err, want);

        CHECK_INT_EQ(twind_config_set_string(&c->password_file, fifo), 0);
        CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), -EINVAL);
        snprintf(want, sizeof want, "password file %s is not a regular file", fifo);
        CHECK_STR_EQ(err, want);
        CHECK(pw == NULL);

        alarm(0);
}

static void check_verify(const char *content, const char *expected, int line)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "", want[600] = "";
        int r;

        if (load_text(content, &c, err, sizeof err) != 0) {
                fprintf(stderr, "%s:%d: load failed: %s\n", __FILE__, line, err);
                test_failures++;
                return;
        }
        /* "N: ..." names line N of the file: the error starts with the file and that line. */
        if (expected && expected[0] >= '0' && expected[0] <= '9')
                snprintf(want, sizeof want, "%s/twind.conf:%s", tmpdir, expected);
        else if (expected)
                snprintf(want, sizeof want, "%s", expected);
        expected = expected ? want : NULL;
        r = twind_config_verify(c, err, sizeof err);
        if (expected ? (r != -EINVAL || strncmp(err, expected, strlen(expected)) != 0) : r != 0) {
                fprintf(stderr, "%s:%d: verify gave %d \"%s\", expected %s\n", __FILE__, line, r,
                        err, expected ? expected : "success");
                test_failures++;
        }
}
#define CHECK_VERIFY(content, expected) check_verify(content, expected, __LINE__)

static void test_verify(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "";

        /* Without any file the message points at the default path. */
        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK_INT_EQ(twind_config_verify(c, err, sizeof err), -EINVAL);
        CHECK_STR_EQ(err, "[device] id: missing (set it in /etc/twind/twind.conf or pass "
                          "--device-id)");

        CHECK_VERIFY("[device]\nid = dev-1\n", NULL);
        CHECK_VERIFY("[device]\nid = A.b_c:d-9\n[broker]\nurl = mqtt://[::1]:1884\n", NULL);
        CHECK_VERIFY("[broker]\nurl = mqtt://h\n", "[device] id: missing (set it in /tmp/");
        CHECK_VERIFY("[device]\nid = bad/id\n",
                     "2: [device] id: 'bad/id' is not a valid device id (1 to 128 characters of "
                     "A-Z a-z 0-9 - . _ :)");
        CHECK_VERIFY("[device]\nid = d\n[broker]\nurl = http://h\n", "4: [broker] url: ");
        CHECK_VERIFY("[device]\nid = d\n[broker]\nurl = mqtt://a:1883, mqtt://b:1883 mqtt://c\n",
                     NULL);
        CHECK_VERIFY("[device]\nid = d\n[broker]\nurl = mqtt://a mqtts://b\n",
                     "4: [broker] url: invalid broker URL \"mqtts://b\": all broker URLs must be");
        CHECK_VERIFY("[device]\nid = d\n[broker]\ntopic_root = a/#\n",
                     "4: [broker] topic_root: 'a/#' is not a valid topic root");
        CHECK_VERIFY("[device]\nid = d\n[broker]\ntopic_root = /a\n",
                     "4: [broker] topic_root: '/a' is not a valid topic root");
        CHECK_VERIFY("[device]\nid = d\n[broker]\ncertfile = /c.pem\n",
                     "4: [broker] certfile: set without keyfile");
        CHECK_VERIFY("[device]\nid = d\n[broker]\nkeyfile = /k.pem\n",
                     "4: [broker] keyfile: set without certfile");
        CHECK_VERIFY("[device]\nid = d\n[broker]\ncertfile = /c.pem\nkeyfile = /k.pem\n", NULL);
        CHECK_VERIFY("[device]\nid = d\n[broker]\npassword_file = /p\n",
                     "4: [broker] password_file: set without username");
        CHECK_VERIFY("[device]\nid = d\n[state]\ndirectory = var/lib/twind\n",
                     "4: [state] directory: 'var/lib/twind' is not an absolute path");
        CHECK_VERIFY("[device]\nid = d\n[control]\nsocket = control.sock\n",
                     "4: [control] socket: 'control.sock' is not an absolute path");
        CHECK_VERIFY("[device]\nid = d\n[control]\nsocket = /run/"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/c.sock\n",
                     "4: [control] socket: '/run/aaaa");
}

/* Runs twind_config_read_password with stderr captured into *stderr_text. */
static int read_password_capturing(const TwindConfig *c, char **ret, char *err, size_t errlen,
                                   char *stderr_text, size_t stderr_len)
{
        char path[512];
        int fd, saved, r;
        ssize_t n;

        snprintf(path, sizeof path, "%s/stderr.txt", tmpdir);
        fflush(stderr);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        saved = dup(STDERR_FILENO);
        if (fd < 0 || saved < 0)
                exit(2);
        dup2(fd, STDERR_FILENO);
        r = twind_config_read_password(c, ret, err, errlen);
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);
        n = pread(fd, stderr_text, stderr_len - 1, 0);
        stderr_text[n > 0 ? n : 0] = '\0';
        close(fd);
        return r;
}

static void test_password(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "", out[1024], creds[512], want[600];
        char *pw = NULL;
        const char *path;

        CHECK_INT_EQ(twind_config_new(&c), 0);

        /* None configured. */
        pw = (char *)"sentinel";
        CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), 0);
        CHECK(pw == NULL);

        /* Absolute path, one trailing newline stripped, only one. */
        path = write_file("pw", "s3cret-pass\n\n", 0600);
        CHECK_INT_EQ(twind_config_set_string(&c->password_file, path), 0);
        CHECK_INT_EQ(read_password_capturing(c, &pw, err, sizeof err, out, sizeof out), 0);
        CHECK_STR_EQ(pw, "s3cret-pass\n");
        CHECK_STR_EQ(out, "");
        free(pw);

        /* A Windows line end goes as a whole, as in twinctl. */
        path = write_file("pw", "s3cret-pass\r\n", 0600);
        CHECK_INT_EQ(read_password_capturing(c, &pw, err, sizeof err, out, sizeof out), 0);
        CHECK_STR_EQ(pw, "s3cret-pass");
        free(pw);

        /* Readable by others: warned about, not fatal, and the warning holds no secret. */
        path = write_file("pw", "s3cret-pass\n", 0644);
        CHECK_INT_EQ(read_password_capturing(c, &pw, err, sizeof err, out, sizeof out), 0);
        CHECK_STR_EQ(pw, "s3cret-pass");
        snprintf(want, sizeof want,
                 "warning: password file %s is readable by others; chmod 600 it\n", path);
        CHECK_STR_EQ(out, want);
        CHECK(!strstr(out, "s3cret"));
        free(pw);

        /* A relative name is a systemd credential. */
        snprintf(creds, sizeof creds, "%s/creds", tmpdir);
        CHECK_INT_EQ(mkdir(creds, 0700), 0);
        write_file("creds/twind-password", "from-credential", 0400);
        CHECK_INT_EQ(twind_config_set_string(&c->password_file, "twind-password"), 0);
        unsetenv("CREDENTIALS_DIRECTORY");
        CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), -EINVAL);
        CHECK(strstr(err, "[broker] password_file: 'twind-password' is a relative name but "
                          "$CREDENTIALS_DIRECTORY is not set") == err);
        setenv("CREDENTIALS_DIRECTORY", creds, 1);
        CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), 0);
        CHECK_STR_EQ(pw, "from-credential");
        free(pw);
        CHECK_INT_EQ(twind_config_set_string(&c->password_file, "missing"), 0);
        CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), -ENOENT);
        snprintf(want, sizeof want,
                 "cannot open password file %s/missing: No such file or directory", creds);
        CHECK_STR_EQ(err, want);
        unsetenv("CREDENTIALS_DIRECTORY");

        /* Size limit: 4 KiB is fine, one byte more is refused without echoing the content. */
        {
                char big[4098];
                memset(big, 'x', sizeof big);
                big[4096] = '\0';
                path = write_file("pw-4k", big, 0600);
                CHECK_INT_EQ(twind_config_set_string(&c->password_file, path), 0);
                CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), 0);
                CHECK_INT_EQ(pw ? strlen(pw) : 0, 4096);
                free(pw);
                big[4096] = 'x';
                big[4097] = '\0';
                path = write_file("pw-4k", big, 0600);
                CHECK_INT_EQ(twind_config_read_password(c, &pw, err, sizeof err), -E2BIG);
                snprintf(want, sizeof want, "password file %s is larger than 4096 bytes", path);
                CHECK_STR_EQ(err, want);
        }
}

/* A relative cafile, certfile or keyfile names a systemd credential, like password_file. */
static void test_credential_files(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "";

        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->cafile, "/etc/twind/ca.pem"), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->certfile, "client.pem"), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->keyfile, "client-key"), 0);

        unsetenv("CREDENTIALS_DIRECTORY");
        CHECK_INT_EQ(twind_config_resolve_credentials(c, err, sizeof err), -EINVAL);
        CHECK_STR_EQ(err, "[broker] certfile: 'client.pem' is a relative name but "
                          "$CREDENTIALS_DIRECTORY is not set (give an absolute path, or use "
                          "LoadCredential= in the unit)");

        setenv("CREDENTIALS_DIRECTORY", "/run/credentials/twind.service", 1);
        CHECK_INT_EQ(twind_config_resolve_credentials(c, err, sizeof err), 0);
        CHECK_STR_EQ(c->cafile, "/etc/twind/ca.pem");
        CHECK_STR_EQ(c->certfile, "/run/credentials/twind.service/client.pem");
        CHECK_STR_EQ(c->keyfile, "/run/credentials/twind.service/client-key");
        /* Resolved paths are absolute: resolving twice changes nothing. */
        CHECK_INT_EQ(twind_config_resolve_credentials(c, err, sizeof err), 0);
        CHECK_STR_EQ(c->keyfile, "/run/credentials/twind.service/client-key");
        unsetenv("CREDENTIALS_DIRECTORY");

        /* None configured: nothing to do, even without the environment variable. */
        CHECK_INT_EQ(twind_config_set_string(&c->certfile, NULL), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->keyfile, NULL), 0);
        CHECK_INT_EQ(twind_config_resolve_credentials(c, err, sizeof err), 0);
        CHECK(c->certfile == NULL && c->keyfile == NULL);
}

/* Errors name where the value came from: the file and line, or the command-line option. */
static void test_origins(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "", want[600], where[600];

        CHECK_INT_EQ(
            load_text("[device]\nid = from-file\n[broker]\nkeepalive = 30\n", &c, err, sizeof err),
            0);
        snprintf(want, sizeof want, "%s/twind.conf:2: [device] id", tmpdir);
        CHECK_STR_EQ(twind_config_where(c, TWIND_KEY_DEVICE_ID, where, sizeof where), want);
        CHECK_STR_EQ(twind_config_where(c, TWIND_KEY_BROKER_URL, where, sizeof where),
                     "[broker] url");

        /* A bad value given on the command line is the option's fault, not the file's. */
        CHECK_INT_EQ(
            twind_config_set_option(c, TWIND_KEY_DEVICE_ID, "--device-id", "a b", err, sizeof err),
            0);
        CHECK_INT_EQ(twind_config_verify(c, err, sizeof err), -EINVAL);
        CHECK_STR_EQ(err, "--device-id: 'a b' is not a valid device id (1 to 128 characters of "
                          "A-Z a-z 0-9 - . _ :)");
        CHECK_INT_EQ(twind_config_set_option(c, TWIND_KEY_BROKER_URL, "--broker", "http://x", err,
                                             sizeof err),
                     0);
        CHECK_INT_EQ(
            twind_config_set_option(c, TWIND_KEY_DEVICE_ID, "--device-id", "ok", err, sizeof err),
            0);
        CHECK_INT_EQ(twind_config_verify(c, err, sizeof err), -EINVAL);
        CHECK(strncmp(err, "--broker: invalid broker URL", 28) == 0);
        /* An option that does not parse is refused at once, naming it. */
        CHECK_INT_EQ(twind_config_set_option(c, TWIND_KEY_BROKER_KEEPALIVE, "--keepalive", "x", err,
                                             sizeof err),
                     -EINVAL);
        CHECK_STR_EQ(err, "--keepalive: 'x' is not a number of seconds between 5 and 3600");
}

static void test_dialect_keys(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "";

        CHECK_INT_EQ(twind_config_new(&c), 0);
        CHECK_STR_EQ(c->dialect, "standard");
        CHECK_INT_EQ(c->azure_token_lifetime_usec, 3600 * 1000000ULL);
        {
                char want[256];

                snprintf(want, sizeof want, "2: [broker] dialect: 'mqtt5' is not a dialect (%s)",
                         twin_dialect_names());
                CHECK_REFUSED("[broker]\ndialect = mqtt5\n", want);
        }
        CHECK_REFUSED("[azure]\ntoken_lifetime = 4s\n",
                      "2: [azure] token_lifetime: '4s' is not a time span from 5s to 365d (such "
                      "as 90s, 30min, 1h)");
        CHECK_REFUSED("[azure]\nmystery = 1\n", "2: unknown key 'mystery' in section [azure]");
        twind_config_free(TAKE_PTR(c));
        CHECK_INT_EQ(
            load_text("[azure]\ntoken_lifetime = 5s\nstatus_property = st\n", &c, err, sizeof err),
            0);
        CHECK_INT_EQ(c->azure_token_lifetime_usec, 5 * 1000000ULL);
        CHECK_STR_EQ(c->azure_status_property, "st");
}

/* --check-config looks at what the start will need: the apply command and the files. */
static void test_check_files(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "", want[700];
        const char *script, *plain;

        script = write_file("apply.sh", "#!/bin/sh\nexit 0\n", 0755);
        plain = write_file("not-executable", "x", 0644);
        CHECK_VERIFY("[device]\nid = d\n[apply]\ncommand = apply.sh --x\n",
                     "4: [apply] command: 'apply.sh' is not an absolute path");
        CHECK_VERIFY("[device]\nid = d\n[apply]\ncommand = '/bin/true\n",
                     "4: [apply] command: cannot split");

        CHECK_INT_EQ(twind_config_new(&c), 0);
        /* Not the machine's own trusted keys. */
        snprintf(want, sizeof want, "%s/no-trusted-keys", tmpdir);
        CHECK_INT_EQ(twind_config_set_string(&c->trust_keys, want), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->apply_command, script), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), 0);

        CHECK_INT_EQ(twind_config_set_string(&c->apply_command, "/nonexistent/apply --go"), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -ENOENT);
        CHECK_STR_EQ(err, "[apply] command: /nonexistent/apply: No such file or directory");

        CHECK_INT_EQ(twind_config_set_string(&c->apply_command, plain), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -EACCES);
        snprintf(want, sizeof want,
                 "[apply] command: %s is not executable by this user: Permission denied", plain);
        CHECK_STR_EQ(err, want);

        CHECK_INT_EQ(twind_config_set_string(&c->apply_command, NULL), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->cafile, "/nonexistent/ca.pem"), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -ENOENT);
        CHECK_STR_EQ(err, "[broker] cafile: cannot use CA file /nonexistent/ca.pem: No such file "
                          "or directory");
        CHECK_INT_EQ(twind_config_set_string(&c->cafile, NULL), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->password_file, tmpdir), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -EINVAL);
        snprintf(want, sizeof want,
                 "[broker] password_file: password file %s is not a regular file", tmpdir);
        CHECK_STR_EQ(err, want);
}

/* Writes a fresh public key to dir/name. */
static void write_public_key(const char *dir, const char *name)
{
        _cleanup_evp_pkey_ EVP_PKEY *key = NULL;
        _cleanup_free_ char *pem = NULL;
        char path[600];
        FILE *f;

        if (twin_key_generate(&key) < 0 || twin_key_to_pem(key, false, &pem) < 0)
                exit(2);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        if (!f || fputs(pem, f) < 0 || fclose(f) != 0)
                exit(2);
}

/* [trust]: the keys directory and require_signature, and what --check-config says of them. */
static void test_trust(void)
{
        _cleanup_(twind_config_freep) TwindConfig *c = NULL;
        char err[512] = "", dir[512], want[1200];

        CHECK_REFUSED("[trust]\nrequire_signature = maybe\n",
                      "2: [trust] require_signature: 'maybe' is not a boolean (yes or no)");
        CHECK_REFUSED("[trust]\nkeyring = /x\n", "2: unknown key 'keyring' in section [trust]");
        CHECK_VERIFY("[device]\nid = d\n[trust]\nkeys = keys.d\n",
                     "4: [trust] keys: 'keys.d' is not an absolute path");
        CHECK_INT_EQ(
            load_text("[trust]\nkeys = /etc/k\nrequire_signature = yes\n", &c, err, sizeof err), 0);
        CHECK_STR_EQ(c->trust_keys, "/etc/k");
        CHECK(c->require_signature);
        twind_config_free(TAKE_PTR(c));
        CHECK_INT_EQ(load_text("[trust]\nrequire_signature = Off\n", &c, err, sizeof err), 0);
        CHECK(!c->require_signature);
        twind_config_free(TAKE_PTR(c));
        /* An empty value is the default again. */
        CHECK_INT_EQ(load_text("[trust]\nrequire_signature = on\nrequire_signature =\nkeys =\n", &c,
                               err, sizeof err),
                     0);
        CHECK(!c->require_signature);
        CHECK_STR_EQ(c->trust_keys, TWIND_SYSCONFDIR "/twind/trusted-keys.d");

        /* Signatures required with no key: every document would be refused. */
        snprintf(dir, sizeof dir, "%s/keys.d", tmpdir);
        CHECK_INT_EQ(mkdir(dir, 0755), 0);
        CHECK_INT_EQ(twind_config_set_string(&c->trust_keys, dir), 0);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), 0);
        c->require_signature = true;
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -EINVAL);
        snprintf(want, sizeof want,
                 "%s/twind.conf:3: [trust] require_signature: signatures are required but %s holds "
                 "no trusted key (*.pem): every desired document would be refused",
                 tmpdir, dir);
        CHECK_STR_EQ(err, want);
        write_public_key(dir, "ops-2026.pem");
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), 0);
        /* A file that is no key is named. */
        write_file("keys.d/broken.pem",
                   "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", 0644);
        CHECK_INT_EQ(twind_config_check_files(c, err, sizeof err), -EINVAL);
        snprintf(want, sizeof want,
                 "%s/twind.conf:4: [trust] keys: %s/broken.pem: not an Ed25519 public key (PEM "
                 "\"PUBLIC KEY\")",
                 tmpdir, dir);
        CHECK_STR_EQ(err, want);
}

int main(void)
{
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 2;
        }

        test_defaults();
        test_report_group();
        test_valid_file();
        test_timeouts();
        test_errors();
        test_overrides();
        test_missing_file();
        test_fifo_refused();
        test_verify();
        test_password();
        test_credential_files();
        test_origins();
        test_dialect_keys();
        test_check_files();
        test_trust();

        test_remove_tree(tmpdir);
        return test_exit("test-conf");
}
