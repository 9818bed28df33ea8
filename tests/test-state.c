/* SPDX-License-Identifier: MIT */
/*
 * The state file: encoding, every decode refusal, atomic save, and what load does with stale
 * temporary files and corrupt files. A full disk is exercised by the integration suite (it
 * needs a small file system), not faked here.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json-util.h"
#include "test-tmpdir.h"
#include "test-util.h"
#include "twin-model.h"
#include "twind-state.h"

static char tmpdir[] = "/tmp/test-state-XXXXXX";

/* Fingerprints of signing keys. */
#define FP1 "sha256:1111111111111111111111111111111111111111111111111111111111111111"
#define FP2 "sha256:2222222222222222222222222222222222222222222222222222222222222222"

static const char *new_dir(const char *name)
{
        return test_subdir(tmpdir, name, 0700);
}

static void write_text(const char *dir, const char *name, const char *text, size_t len)
{
        char path[600];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        if (!f || fwrite(text, 1, len, f) != len) {
                perror(path);
                exit(2);
        }
        fclose(f);
}

/* Reads a whole file; NULL if it cannot be read. */
static char *read_text(const char *path)
{
        char *buf = NULL;
        size_t size = 0;
        FILE *f = fopen(path, "re");
        FILE *m;
        char chunk[4096];
        size_t n;

        if (!f)
                return NULL;
        m = open_memstream(&buf, &size);
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
                fwrite(chunk, 1, n, m);
        fclose(f);
        fclose(m);
        return buf;
}

/* The names in dir other than "." and "..", sorted, joined with ' '. */
static char *list_dir(const char *dir)
{
        struct dirent **names;
        char *buf = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&buf, &size);
        int n = scandir(dir, &names, NULL, alphasort);

        const char *sep = "";

        for (int i = 0; i < n; i++) {
                if (strcmp(names[i]->d_name, ".") != 0 && strcmp(names[i]->d_name, "..") != 0) {
                        fprintf(m, "%s%s", sep, names[i]->d_name);
                        sep = " ";
                }
                free(names[i]);
        }
        free(n >= 0 ? names : NULL);
        fclose(m);
        return buf;
}

static TwinState *sample_state(void)
{
        TwinState *s = NULL;

        CHECK_INT_EQ(twin_state_new(&s), 0);
        json_decref(s->applied);
        s->applied = json_pack("{s:i, s:s, s:{s:[i,i]}}", "configId", 3, "sendFrequency", "5m",
                               "nested", "list", 1, 2);
        s->desired_version = 4;
        s->reported_version = 81;
        s->status = json_pack("{s:s, s:i, s:i, s:s}", "state", "success", "desiredVersion", 4,
                              "configId", 3, "updatedAt", "2026-11-26T09:41:58Z");
        s->answered_digest =
            strdup("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        s->dialects =
            json_pack("{s:{s:s, s:I}}", "aws", "thing", "dev-1", "desiredVersion", (json_int_t)7);
        s->device = json_pack("{s:s, s:{s:i}}", "firmware", "1.4.2", "battery", "percent", 81);
        CHECK_INT_EQ(twin_state_set_signer_sequence(s, FP1, 1732611718000), 0);
        return s;
}

static int states_equal(const TwinState *a, const TwinState *b)
{
        return json_equal(a->applied, b->applied) && a->desired_version == b->desired_version &&
               a->reported_version == b->reported_version &&
               (a->status ? b->status && json_equal(a->status, b->status) : !b->status) &&
               (a->answered_digest
                    ? b->answered_digest && strcmp(a->answered_digest, b->answered_digest) == 0
                    : !b->answered_digest) &&
               (a->device ? b->device && json_equal(a->device, b->device) : !b->device) &&
               (a->dialects ? b->dialects && json_equal(a->dialects, b->dialects) : !b->dialects) &&
               (a->signers ? b->signers && json_equal(a->signers, b->signers) : !b->signers);
}

static int state_is_empty(const TwinState *s)
{
        return s && json_is_object(s->applied) && json_object_size(s->applied) == 0 &&
               s->desired_version == -1 && s->reported_version == 0 && !s->status &&
               !s->answered_digest;
}

static void test_new_and_copy(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *c = NULL, *e = NULL;

        CHECK_INT_EQ(twin_state_new(&e), 0);
        CHECK(state_is_empty(e));

        s = sample_state();
        CHECK_INT_EQ(twin_state_copy(s, &c), 0);
        CHECK(states_equal(s, c));
        /* A deep copy: changing the copy leaves the original alone. */
        json_object_set_new(json_object_get(c->applied, "nested"), "list", json_null());
        json_object_set_new(c->status, "state", json_string("failed"));
        CHECK(!states_equal(s, c));
        CHECK_INT_EQ(twin_state_set_signer_sequence(c, FP1, 1732611718001), 0);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP1), 1732611718000);
        CHECK_STR_EQ(json_string_value(json_object_get(s->status, "state")), "success");
        CHECK(json_is_array(json_object_get(json_object_get(s->applied, "nested"), "list")));
}

static void test_round_trip(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *d = NULL, *e = NULL, *e2 = NULL;
        _cleanup_free_ char *text = NULL, *text2 = NULL;
        char err[256] = "";

        s = sample_state();
        CHECK_INT_EQ(twin_state_encode(s, &text), 0);
        CHECK_INT_EQ(twin_state_decode(text, strlen(text), &d, err, sizeof err), 0);
        CHECK_STR_EQ(err, "");
        CHECK(d && states_equal(s, d));

        /* The documented field names, so the file can be read by a person and other tools. */
        {
                _cleanup_json_ json_t *j = json_loads(text, 0, NULL);
                CHECK(json_integer_value(json_object_get(j, "format")) == 1);
                CHECK(json_integer_value(json_object_get(j, "desiredVersion")) == 4);
                CHECK(json_integer_value(json_object_get(j, "reportedVersion")) == 81);
                CHECK(json_equal(json_object_get(j, "applied"), s->applied));
                CHECK(json_equal(json_object_get(j, "status"), s->status));
                CHECK(json_integer_value(json_object_get(json_object_get(j, "signers"), FP1)) ==
                      1732611718000);
        }

        /* Empty state: no status at all, and it comes back empty. */
        CHECK_INT_EQ(twin_state_new(&e), 0);
        CHECK_INT_EQ(twin_state_encode(e, &text2), 0);
        CHECK(!strstr(text2, "status"));
        CHECK(!strstr(text2, "signers"));
        CHECK_INT_EQ(twin_state_decode(text2, strlen(text2), &e2, err, sizeof err), 0);
        CHECK(state_is_empty(e2));
}

static void check_decode_refused(const char *text, int expected_r, const char *expected_err,
                                 int line)
{
        TwinState *s = NULL;
        char err[256] = "";
        int r = twin_state_decode(text, strlen(text), &s, err, sizeof err);

        if (r != expected_r || strncmp(err, expected_err, strlen(expected_err)) != 0 || s) {
                fprintf(stderr, "%s:%d: decode gave %d \"%s\", expected %d \"%s...\"\n", __FILE__,
                        line, r, err, expected_r, expected_err);
                test_failures++;
        }
        twin_state_free(s);
}
#define CHECK_DECODE_REFUSED(text, err) check_decode_refused(text, -EINVAL, err, __LINE__)

#define GOOD_TAIL "\"desiredVersion\": 4, \"reportedVersion\": 81"

static void test_decode_refusals(void)
{
        TwinState *s = NULL;
        char err[256] = "";

        CHECK_DECODE_REFUSED("", "not JSON: ");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}", "not JSON: ");
        CHECK_DECODE_REFUSED("[1, 2]", "not a JSON object");
        CHECK_DECODE_REFUSED("{\"applied\": {}, " GOOD_TAIL "}", "format: missing");
        CHECK_DECODE_REFUSED("{\"format\": 2, \"applied\": {}, " GOOD_TAIL "}",
                             "format: unsupported (expected 1)");
        CHECK_DECODE_REFUSED("{\"format\": \"1\", \"applied\": {}, " GOOD_TAIL "}",
                             "format: unsupported (expected 1)");
        CHECK_DECODE_REFUSED("{\"format\": 1, " GOOD_TAIL "}", "applied: missing");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": [], " GOOD_TAIL "}",
                             "applied: not an object");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {\"a\": {\"$b\": 1}}, " GOOD_TAIL "}",
                             "applied: ");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": "
                             "{\"a\":[[[[[[[[[[[[1]]]]]]]]]]]]}, " GOOD_TAIL "}",
                             "applied: ");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"reportedVersion\": 1}",
                             "desiredVersion: missing");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": -2, "
                             "\"reportedVersion\": 1}",
                             "desiredVersion: not an integer of at least -1");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 1.5, "
                             "\"reportedVersion\": 1}",
                             "desiredVersion: not an integer of at least -1");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": \"4\", "
                             "\"reportedVersion\": 1}",
                             "desiredVersion: not an integer of at least -1");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 4}",
                             "reportedVersion: missing");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 4, "
                             "\"reportedVersion\": -1}",
                             "reportedVersion: not a non-negative integer");
        /* So high that the reserve blocks and increments the agent adds would overflow. */
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 4, "
                             "\"reportedVersion\": 9223372036854775807}",
                             "reportedVersion: larger than 4611686018427387903");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 4, "
                             "\"reportedVersion\": 4611686018427387904}",
                             "reportedVersion: larger than 4611686018427387903");
        /* Beyond what a JSON integer here can hold at all. */
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, \"desiredVersion\": 4, "
                             "\"reportedVersion\": 9223372036854775808}",
                             "not JSON: ");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"status\": 3}",
                             "status: not an object");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"status\": {}}",
                             "status: state missing or not a string");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL
                             ", \"status\": {\"state\": 1}}",
                             "status: state missing or not a string");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL
                             ", \"status\": {\"state\": \"done\"}}",
                             "status: state is not pending, success or failed");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"dialects\": []}",
                             "dialects: not an object");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"device\": 1}",
                             "device: not an object");
        CHECK_DECODE_REFUSED(
            "{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"device\": {\"$x\": 1}}", "device: ");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"signers\": [1]}",
                             "signers: not an object");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL
                             ", \"signers\": {\"ops\": 1}}",
                             "signers: a key that is not a fingerprint");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"signers\": {\"" FP1
                             "\": 0}}",
                             "signers: the sequence of " FP1 " is not an integer from 1 to");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"signers\": {\"" FP1
                             "\": 4503599627370496}}",
                             "signers: the sequence of");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"signers\": {\"" FP1
                             "\": \"5\"}}",
                             "signers: the sequence of");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL ", \"answered\": 1}",
                             "answered: not a digest");
        CHECK_DECODE_REFUSED("{\"format\": 1, \"applied\": {}, " GOOD_TAIL
                             ", \"answered\": \"sha256:XYZ\"}",
                             "answered: not a digest");
        /* Two values for one key: which one would win is not something to guess. */
        CHECK_DECODE_REFUSED("{\"format\": 1, \"format\": 1, \"applied\": {}, " GOOD_TAIL "}",
                             "not JSON: ");

        /* Accepted: status null, -1 for "never answered", a pending status. */
        {
                const char *t = "{\"format\": 1, \"applied\": {}, \"desiredVersion\": -1, "
                                "\"reportedVersion\": 0, \"status\": null}";
                CHECK_INT_EQ(twin_state_decode(t, strlen(t), &s, err, sizeof err), 0);
        }
        CHECK(state_is_empty(s));
        twin_state_free(s);
        s = NULL;

        /* The largest accepted values: a desired $version may be any the protocol allows. */
        {
                const char *t = "{\"format\": 1, \"applied\": {}, "
                                "\"desiredVersion\": 9223372036854775807, "
                                "\"reportedVersion\": 4611686018427387903}";
                CHECK_INT_EQ(twin_state_decode(t, strlen(t), &s, err, sizeof err), 0);
                CHECK(s && s->desired_version == INT64_MAX &&
                      s->reported_version == TWIN_STATE_REPORTED_VERSION_MAX);
        }
        twin_state_free(s);
        s = NULL;

        /* Too large, whatever it holds. */
        {
                size_t len = TWIN_STATE_MAX_BYTES + 1;
                char *big = malloc(len);
                memset(big, ' ', len);
                CHECK_INT_EQ(twin_state_decode(big, len, &s, err, sizeof err), -E2BIG);
                CHECK_STR_EQ(err, "larger than 262144 bytes");
                CHECK(s == NULL);
                free(big);
        }
}

static void test_save_load(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *l = NULL, *l2 = NULL;
        _cleanup_free_ char *names = NULL, *kept = NULL;
        char *sentinel;
        const char *dir = new_dir("save-load");
        char path[600], err[256] = "";
        struct stat st;

        s = sample_state();
        CHECK_INT_EQ(twin_state_save(dir, s), 0);
        snprintf(path, sizeof path, "%s/state.json", dir);
        CHECK_INT_EQ(stat(path, &st), 0);
        CHECK_INT_EQ(st.st_mode & 07777, 0600);

        /* The sentinel is freed here unless load (wrongly) left it in kept. */
        sentinel = strdup("sentinel");
        kept = sentinel;
        CHECK_INT_EQ(twin_state_load(dir, &l, &kept, err, sizeof err), 0);
        CHECK(l && states_equal(s, l));
        CHECK(kept == NULL);
        if (kept != sentinel)
                free(sentinel);

        /* Replace: the new content wins and no temporary file is left behind. */
        s->reported_version = 145;
        json_object_set_new(s->applied, "configId", json_integer(4));
        CHECK_INT_EQ(twin_state_save(dir, s), 0);
        CHECK_INT_EQ(twin_state_save(dir, s), 0);
        names = list_dir(dir);
        CHECK_STR_EQ(names, "state.json");
        CHECK_INT_EQ(twin_state_load(dir, &l2, NULL, err, sizeof err), 0);
        CHECK(l2 && states_equal(s, l2));
}

static void test_load_missing(void)
{
        _cleanup_(twin_state_freep) TwinState *a = NULL, *b = NULL;
        char dir[600], err[256] = "";
        struct stat st;

        /* Missing file: empty state, no error. */
        CHECK_INT_EQ(twin_state_load(new_dir("empty"), &a, NULL, err, sizeof err), 0);
        CHECK(state_is_empty(a));

        /* Missing directory: created, private. */
        snprintf(dir, sizeof dir, "%s/not-yet", tmpdir);
        CHECK_INT_EQ(twin_state_load(dir, &b, NULL, err, sizeof err), 0);
        CHECK(state_is_empty(b));
        CHECK_INT_EQ(stat(dir, &st), 0);
        CHECK(S_ISDIR(st.st_mode));
        CHECK_INT_EQ(st.st_mode & 0777, 0700);
}

static void test_stale_temp_removed(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *l = NULL;
        _cleanup_free_ char *names = NULL;
        const char *dir = new_dir("stale");
        char err[256] = "";

        s = sample_state();
        CHECK_INT_EQ(twin_state_save(dir, s), 0);
        write_text(dir, ".state.json.Ab12Cd", "{\"half", 6);
        write_text(dir, "unrelated", "x", 1);
        CHECK_INT_EQ(twin_state_load(dir, &l, NULL, err, sizeof err), 0);
        CHECK(l && states_equal(s, l));
        names = list_dir(dir);
        CHECK_STR_EQ(names, "state.json unrelated");
}

/* Formats the current UTC time as a keep-aside stamp, for bounding the one load used. */
static void stamp_now(char buf[32])
{
        struct tm tm;
        time_t t = time(NULL);

        gmtime_r(&t, &tm);
        strftime(buf, 32, "%Y%m%dT%H%M%SZ", &tm);
}

/* Loads dir whose state.json holds something unusable; checks it is kept aside and returns the
 * kept path (malloc'd). */
static char *check_kept_aside(const char *dir, const char *reason, int line)
{
        _cleanup_(twin_state_freep) TwinState *l = NULL;
        _cleanup_free_ char *names = NULL;
        char err[512] = "", before[32], after[32], prefix[600], want_err[700];
        char *kept = NULL;
        int r;

        stamp_now(before);
        r = twin_state_load(dir, &l, &kept, err, sizeof err);
        stamp_now(after);

        snprintf(want_err, sizeof want_err, "%s/state.json: %s", dir, reason);
        snprintf(prefix, sizeof prefix, "%s/state.json.corrupt-", dir);
        if (r != -EBADMSG || !state_is_empty(l) || strncmp(err, want_err, strlen(want_err)) != 0 ||
            !kept || strncmp(kept, prefix, strlen(prefix)) != 0) {
                fprintf(stderr,
                        "%s:%d: load gave %d err \"%s\" kept \"%s\", expected -EBADMSG "
                        "\"%s...\" and \"%s...\"\n",
                        __FILE__, line, r, err, kept ? kept : "(null)", want_err, prefix);
                test_failures++;
                return kept;
        }

        /* state.json.corrupt-YYYYmmddTHHMMSSZ, the time of the load, maybe with "-N". */
        {
                const char *stamp = kept + strlen(prefix);
                char only[32];

                snprintf(only, sizeof only, "%.16s", stamp);
                CHECK(strlen(stamp) >= 16);
                CHECK(stamp[8] == 'T' && stamp[15] == 'Z');
                CHECK(strcmp(before, only) <= 0 && strcmp(only, after) <= 0);
                CHECK(stamp[16] == '\0' || stamp[16] == '-');
        }
        /* state.json itself is gone, so the next save starts fresh. */
        snprintf(prefix, sizeof prefix, "%s/state.json", dir);
        CHECK(access(prefix, F_OK) < 0 && errno == ENOENT);
        return kept;
}

static void test_corrupt_kept_aside(void)
{
        const char *dir = new_dir("corrupt");
        _cleanup_free_ char *kept1 = NULL, *kept2 = NULL, *c1 = NULL, *c2 = NULL, *text = NULL;
        _cleanup_(twin_state_freep) TwinState *s = NULL;

        write_text(dir, "state.json", "{garbage", 8);
        kept1 = check_kept_aside(dir, "not JSON: ", __LINE__);

        /* Again, most likely within the same second: the first one is not overwritten. */
        write_text(dir, "state.json", "[]", 2);
        kept2 = check_kept_aside(dir, "not a JSON object", __LINE__);
        CHECK(kept1 && kept2 && strcmp(kept1, kept2) != 0);
        c1 = kept1 ? read_text(kept1) : NULL;
        c2 = kept2 ? read_text(kept2) : NULL;
        CHECK_STR_EQ(c1, "{garbage");
        CHECK_STR_EQ(c2, "[]");

        /* A truncated file, as a crash in the middle of a non-atomic writer would leave. */
        s = sample_state();
        CHECK_INT_EQ(twin_state_encode(s, &text), 0);
        {
                const char *d = new_dir("truncated");
                _cleanup_free_ char *k = NULL;

                write_text(d, "state.json", text, strlen(text) / 2);
                k = check_kept_aside(d, "not JSON: ", __LINE__);
        }
        /* Too large. */
        {
                const char *d = new_dir("too-large");
                _cleanup_free_ char *k = NULL;
                size_t len = TWIN_STATE_MAX_BYTES + 10;
                char *big = malloc(len);

                memset(big, ' ', len);
                write_text(d, "state.json", big, len);
                free(big);
                k = check_kept_aside(d, "larger than 262144 bytes", __LINE__);
        }
        /* Wrong content in valid JSON is corrupt too (below). */
        /* Wrong content in valid JSON is corrupt too. */
        {
                const char *d = new_dir("wrong-format");
                _cleanup_free_ char *k = NULL;
                const char *t = "{\"format\": 7, \"applied\": {}, " GOOD_TAIL "}";

                write_text(d, "state.json", t, strlen(t));
                k = check_kept_aside(d, "format: unsupported (expected 1)", __LINE__);
        }
}

/* A file that cannot be read is an error and stays where it is: only what was read and does
 * not decode is kept aside. Tests run as root, so chmod 000 would not stop a read; a directory
 * in the file's place and a symbolic link loop do. */
static void test_unreadable_left_alone(void)
{
        _cleanup_(twin_state_freep) TwinState *l = NULL;
        _cleanup_free_ char *names = NULL;
        char sub[600], err[512] = "";
        struct stat st;

        {
                const char *d = new_dir("not-a-file");

                snprintf(sub, sizeof sub, "%s/state.json", d);
                CHECK_INT_EQ(mkdir(sub, 0700), 0);
                CHECK_INT_EQ(twin_state_load(d, &l, NULL, err, sizeof err), -EISDIR);
                CHECK(l == NULL);
                CHECK(strstr(err, "state.json: not a regular file") != NULL);
                CHECK(stat(sub, &st) == 0 && S_ISDIR(st.st_mode));
                names = list_dir(d);
                CHECK_STR_EQ(names, "state.json");
        }
        {
                const char *d = new_dir("link-loop");

                snprintf(sub, sizeof sub, "%s/state.json", d);
                CHECK_INT_EQ(symlink("state.json", sub), 0);
                CHECK_INT_EQ(twin_state_load(d, &l, NULL, err, sizeof err), -ELOOP);
                CHECK(l == NULL);
                CHECK(strstr(err, "cannot read ") != NULL && strstr(err, strerror(ELOOP)) != NULL);
                free(names);
                names = list_dir(d);
                CHECK_STR_EQ(names, "state.json");
                CHECK(lstat(sub, &st) == 0 && S_ISLNK(st.st_mode));
        }
}

static void test_save_failures(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *l = NULL;
        _cleanup_free_ char *names = NULL, *before = NULL, *after = NULL;
        const char *dir = new_dir("save-fail");
        char path[600], missing[600], err[256] = "";

        s = sample_state();

        /* No such directory. */
        snprintf(missing, sizeof missing, "%s/nowhere", tmpdir);
        CHECK_INT_EQ(twin_state_save(missing, s), -ENOENT);

        /* The rename fails (a directory is in the way): the temporary file is removed. */
        snprintf(path, sizeof path, "%s/state.json", dir);
        CHECK_INT_EQ(mkdir(path, 0700), 0);
        write_text(path, "keep", "x", 1);
        CHECK(twin_state_save(dir, s) < 0);
        names = list_dir(dir);
        CHECK_STR_EQ(names, "state.json");

        /* Too large to be loaded again: refused, the old file stays as it was. */
        {
                const char *d = new_dir("save-too-large");
                char *big = malloc(TWIN_STATE_MAX_BYTES);
                _cleanup_free_ char *n2 = NULL;

                CHECK_INT_EQ(twin_state_save(d, s), 0);
                snprintf(path, sizeof path, "%s/state.json", d);
                before = read_text(path);
                memset(big, 'a', TWIN_STATE_MAX_BYTES - 1);
                big[TWIN_STATE_MAX_BYTES - 1] = '\0';
                json_object_set_new(s->applied, "big", json_string(big));
                free(big);
                CHECK_INT_EQ(twin_state_save(d, s), -E2BIG);
                after = read_text(path);
                CHECK_STR_EQ(after, before);
                n2 = list_dir(d);
                CHECK_STR_EQ(n2, "state.json");
                CHECK_INT_EQ(twin_state_load(d, &l, NULL, err, sizeof err), 0);
                CHECK(l && json_object_get(l->applied, "big") == NULL);
        }
}

/* The replay guard: sequences only grow, files from before signed documents have none, and the
 * number of keys kept is bounded. */
static void test_signers(void)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *old = NULL;
        _cleanup_free_ char *text = NULL;
        static const char older[] =
            "{\"format\": 1, \"applied\": {\"configId\": 3}, " GOOD_TAIL "}";
        char err[256] = "", fp[TWIN_DIGEST_STRING_SIZE];

        CHECK_INT_EQ(twin_state_decode(older, strlen(older), &old, err, sizeof err), 0);
        CHECK(old && !old->signers);
        CHECK_INT_EQ(twin_state_signer_sequence(old, FP1), 0);

        CHECK_INT_EQ(twin_state_new(&s), 0);
        CHECK_INT_EQ(twin_state_set_signer_sequence(s, FP1, 5), 0);
        CHECK_INT_EQ(twin_state_set_signer_sequence(s, FP1, 3), 0);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP1), 5);
        CHECK_INT_EQ(twin_state_set_signer_sequence(s, FP2, 9), 0);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP2), 9);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP1), 5);

        /* Full: a new key forgets the one with the lowest sequence (FP1's 5, not FP2's 9). */
        for (int i = 0; json_object_size(s->signers) < TWIN_STATE_SIGNERS_MAX; i++) {
                snprintf(fp, sizeof fp, "sha256:%064x", i + 16);
                CHECK_INT_EQ(twin_state_set_signer_sequence(s, fp, 100 + i), 0);
        }
        CHECK_INT_EQ(twin_state_set_signer_sequence(s,
                                                    "sha256:"
                                                    "f"
                                                    "000000000000000000000000000000"
                                                    "000000000000000000000000000000000",
                                                    7),
                     0);
        CHECK_INT_EQ(json_object_size(s->signers), TWIN_STATE_SIGNERS_MAX);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP1), 0);
        CHECK_INT_EQ(twin_state_signer_sequence(s, FP2), 9);
        /* What is saved loads again. */
        CHECK_INT_EQ(twin_state_encode(s, &text), 0);
        twin_state_free(TAKE_PTR(old));
        CHECK_INT_EQ(twin_state_decode(text, strlen(text), &old, err, sizeof err), 0);
        CHECK(old && json_equal(old->signers, s->signers));
}

int main(void)
{
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 2;
        }

        test_new_and_copy();
        test_round_trip();
        test_decode_refusals();
        test_signers();
        test_save_load();
        test_load_missing();
        test_stale_temp_removed();
        test_corrupt_kept_aside();
        test_unreadable_left_alone();
        test_save_failures();

        test_remove_tree(tmpdir);
        return test_exit("test-state");
}
