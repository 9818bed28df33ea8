/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json-util.h"
#include "test-util.h"
#include "twin-model.h"

static char err[256];
static int64_t version;

/* Parses s (len bytes, or strlen when len is 0); leaves the reason in err and $version in
 * version. */
static int parse_len(const char *s, size_t len, json_t **ret)
{
        json_t *doc = NULL;
        int r;

        err[0] = '\0';
        version = -2;
        r = twin_desired_parse(s, len ? len : strlen(s), NULL, &doc, &version, err, sizeof(err));
        if (r < 0) {
                CHECK(doc == NULL);
                /* Every reason is one line, starts lowercase or with a quote, has no period. */
                CHECK(strlen(err) > 0);
                CHECK(!strchr(err, '\n'));
                CHECK(err[strlen(err) - 1] != '.');
                CHECK((err[0] >= 'a' && err[0] <= 'z') || err[0] == '"');
        }
        if (ret)
                *ret = doc;
        else
                json_decref(doc);
        return r;
}

static int parse(const char *s)
{
        return parse_len(s, strlen(s), NULL);
}

static json_t *J(const char *s)
{
        json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
        if (!j) {
                fprintf(stderr, "bad test JSON: %s\n", s);
                abort();
        }
        return j;
}

static bool json_eq_str(const json_t *a, const char *expected)
{
        _cleanup_json_ json_t *e = J(expected);
        return json_equal(a, e);
}

/* {"$version":1,"p":"xxx..."} of exactly size bytes. */
static char *doc_of_size(size_t size)
{
        const char *head = "{\"$version\":1,\"p\":\"", *tail = "\"}";
        size_t fill = size - strlen(head) - strlen(tail);
        char *s = malloc(size + 1);

        strcpy(s, head);
        memset(s + strlen(head), 'x', fill);
        strcpy(s + strlen(head) + fill, tail);
        return s;
}

/* A document nesting depth levels of objects (depth 1: the document alone) via keys "a". */
static char *doc_of_depth(unsigned depth, char open, char close)
{
        char *s = malloc(64 + depth * 16);
        size_t n = 0;

        n += sprintf(s + n, "{\"$version\":1");
        for (unsigned i = 1; i < depth; i++)
                if (open == '{')
                        n += sprintf(s + n, ",\"a\":{\"x\":1");
                else
                        n += sprintf(s + n, i == 1 ? ",\"a\":[1" : ",[1");
        for (unsigned i = 1; i < depth; i++)
                s[n++] = close;
        s[n++] = '}';
        s[n] = '\0';
        return s;
}

static void test_parse_valid(void)
{
        json_t *doc = NULL;

        CHECK_INT_EQ(
            parse_len("{\"$version\": 4, \"configId\": 3, \"sendFrequency\": \"5m\"}", 0, &doc), 0);
        CHECK_INT_EQ(version, 4);
        CHECK(json_eq_str(doc, "{\"$version\": 4, \"configId\": 3, \"sendFrequency\": \"5m\"}"));
        json_decref(doc);

        CHECK_INT_EQ(parse("{\"$version\": 0}"), 0);
        CHECK_INT_EQ(version, 0);
        CHECK_INT_EQ(parse("{\"$version\": 9223372036854775807}"), 0);
        CHECK_INT_EQ(version, INT64_MAX);
        CHECK_INT_EQ(parse("{\"$version\": 1, \"name\": \"caf\xc3\xa9 \xf0\x9f\x98\x80\"}"), 0);
        /* Leading and trailing whitespace is JSON, not garbage. */
        CHECK_INT_EQ(parse(" {\"$version\": 1}\n"), 0);
        /* Keys containing '$' elsewhere than at the start are ordinary. */
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a$\": {\"b$c\": 1}}"), 0);
}

static void test_parse_size(void)
{
        char *s = doc_of_size(TWIN_DESIRED_MAX_BYTES);
        CHECK_INT_EQ(strlen(s), 32768);
        CHECK_INT_EQ(parse(s), 0);
        CHECK_INT_EQ(version, 1);
        free(s);

        s = doc_of_size(TWIN_DESIRED_MAX_BYTES + 1);
        CHECK_INT_EQ(parse(s), -E2BIG);
        CHECK_STR_EQ(err, "desired document is 32769 bytes, limit 32768");
        CHECK_INT_EQ(version, -1);
        free(s);

        CHECK_INT_EQ(parse_len("", 0, NULL), -EINVAL);
        CHECK_STR_EQ(err, "desired document is empty");
}

static void test_parse_depth(void)
{
        char *s;

        s = doc_of_depth(10, '{', '}');
        CHECK_INT_EQ(parse(s), 0);
        free(s);
        s = doc_of_depth(11, '{', '}');
        CHECK_INT_EQ(parse(s), -EINVAL);
        CHECK_STR_EQ(err,
                     "objects and arrays nest more than 10 levels deep at a.a.a.a.a.a.a.a.a.a");
        /* The version was readable, so the report can still name it. */
        CHECK_INT_EQ(version, 1);
        free(s);

        s = doc_of_depth(10, '[', ']');
        CHECK_INT_EQ(parse(s), 0);
        free(s);
        s = doc_of_depth(11, '[', ']');
        CHECK_INT_EQ(parse(s), -EINVAL);
        CHECK_STR_EQ(
            err,
            "objects and arrays nest more than 10 levels deep at a[1][1][1][1][1][1][1][1][1]");
        free(s);

        /* Deeper than jansson's own parser allows: still our message. */
        s = doc_of_depth(3000, '[', ']');
        CHECK_INT_EQ(parse(s), -EINVAL);
        CHECK_STR_EQ(err, "objects and arrays nest more than 10 levels deep");
        free(s);
}

static void test_parse_encoding(void)
{
        CHECK_INT_EQ(parse_len("{\"$ve\0sion\": 1}", 15, NULL), -EINVAL);
        CHECK_STR_EQ(err, "desired document contains a NUL byte at byte offset 5");

        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"\xff\"}"), -EINVAL);
        CHECK_STR_EQ(err, "invalid UTF-8 at byte offset 22");
        /* Overlong encoding of '/', a UTF-16 surrogate, beyond U+10FFFF, truncated sequence. */
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"\xc0\xaf\"}"), -EINVAL);
        CHECK_STR_EQ(err, "invalid UTF-8 at byte offset 22");
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"\xed\xa0\x80\"}"), -EINVAL);
        CHECK_STR_EQ(err, "invalid UTF-8 at byte offset 22");
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"\xf4\x90\x80\x80\"}"), -EINVAL);
        CHECK_STR_EQ(err, "invalid UTF-8 at byte offset 22");
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"\xe2\x82\"}"), -EINVAL);
        CHECK_STR_EQ(err, "invalid UTF-8 at byte offset 22");
        /* An escaped NUL is refused by the JSON parser, not passed on. */
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": \"x\\u0000\"}"), -EINVAL);
        CHECK(strstr(err, "not valid JSON"));
}

static void test_parse_syntax(void)
{
        CHECK_INT_EQ(parse("{"), -EINVAL);
        CHECK(strncmp(err, "desired document is not valid JSON: ", 36) == 0);
        CHECK_INT_EQ(version, -1);

        CHECK_INT_EQ(parse("{\"$version\": 1} x"), -EINVAL);
        CHECK(strstr(err, "not valid JSON"));
        CHECK_INT_EQ(parse("{\"$version\": 1}{}"), -EINVAL);
        CHECK(strstr(err, "not valid JSON"));
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": 1, \"a\": 2}"), -EINVAL);
        CHECK(strstr(err, "duplicate"));
        CHECK_INT_EQ(parse("{\"$version\": 1, \"a\": 99999999999999999999}"), -EINVAL);
        CHECK(strstr(err, "not valid JSON"));

        CHECK_INT_EQ(parse("[1, 2]"), -EINVAL);
        CHECK_STR_EQ(err, "desired document is an array, not an object");
        CHECK_INT_EQ(parse("3"), -EINVAL);
        CHECK_STR_EQ(err, "desired document is an integer, not an object");
        CHECK_INT_EQ(parse("\"x\""), -EINVAL);
        CHECK_STR_EQ(err, "desired document is a string, not an object");
        CHECK_INT_EQ(parse("null"), -EINVAL);
        CHECK_STR_EQ(err, "desired document is null, not an object");
}

static void test_parse_version(void)
{
        CHECK_INT_EQ(parse("{\"configId\": 1}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" is missing");
        CHECK_INT_EQ(version, -1);

        CHECK_INT_EQ(parse("{\"$version\": 3.0}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got a real number 3.0");
        CHECK_INT_EQ(version, -1);
        CHECK_INT_EQ(parse("{\"$version\": \"4\"}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got a string \"4\"");
        CHECK_INT_EQ(version, -1);
        CHECK_INT_EQ(parse("{\"$version\": -1}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got -1");
        CHECK_INT_EQ(version, -1);
        CHECK_INT_EQ(parse("{\"$version\": null}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got null");
        CHECK_INT_EQ(parse("{\"$version\": true}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got a boolean true");
        CHECK_INT_EQ(parse("{\"$version\": {}}"), -EINVAL);
        CHECK_STR_EQ(err, "\"$version\" must be a non-negative integer, got an object");
        CHECK_INT_EQ(parse("{\"$version\": 9223372036854775808}"), -EINVAL);
        CHECK_INT_EQ(version, -1);
}

static void test_parse_dollar_keys(void)
{
        CHECK_INT_EQ(parse("{\"$version\": 7, \"$foo\": 1}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$foo\" begins with '$'");
        CHECK_INT_EQ(version, 7);

        CHECK_INT_EQ(parse("{\"$version\": 7, \"a\": {\"b\": {\"$foo\": 1}}}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$foo\" at a.b begins with '$'");
        CHECK_INT_EQ(version, 7);

        CHECK_INT_EQ(parse("{\"$version\": 7, \"a\": [0, {\"$x\": 1}]}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$x\" at a[1] begins with '$'");

        /* "$version" is the document's, not a property's. */
        CHECK_INT_EQ(parse("{\"$version\": 7, \"a\": {\"$version\": 1}}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$version\" at a begins with '$'");

        /* A key spelled with an escape is the same key. */
        CHECK_INT_EQ(parse("{\"$version\": 7, \"\\u0024x\": 1}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$x\" begins with '$'");

        /* Control characters in a key do not break the one-line reason. */
        CHECK_INT_EQ(parse("{\"$version\": 7, \"$a\\nb\": 1}"), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$a?b\" begins with '$'");
}

static void test_properties_validate(void)
{
        _cleanup_json_ json_t *ok = J("{\"a\": {\"b\": [1, {\"c\": 2}]}}");
        _cleanup_json_ json_t *dollar = J("{\"a\": {\"b\": [1, {\"$c\": 2}]}}");
        _cleanup_json_ json_t *version_key = J("{\"$version\": 1}");
        _cleanup_json_ json_t *arr = J("[]");
        json_t *deep = json_object(), *cur = deep;

        CHECK_INT_EQ(twin_properties_validate(ok, NULL, err, sizeof(err)), 0);
        CHECK_INT_EQ(twin_properties_validate(dollar, NULL, err, sizeof(err)), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$c\" at a.b[1] begins with '$'");
        CHECK_INT_EQ(twin_properties_validate(version_key, NULL, err, sizeof(err)), -EINVAL);
        CHECK_STR_EQ(err, "property key \"$version\" begins with '$'");
        CHECK_INT_EQ(twin_properties_validate(arr, NULL, err, sizeof(err)), -EINVAL);
        CHECK_STR_EQ(err, "properties are an array, not an object");
        CHECK_INT_EQ(twin_properties_validate(NULL, NULL, err, sizeof(err)), -EINVAL);

        for (int i = 1; i < 10; i++) {
                json_t *n = json_object();
                json_object_set_new(cur, "k", n);
                cur = n;
        }
        CHECK_INT_EQ(twin_properties_validate(deep, NULL, err, sizeof(err)), 0);
        json_object_set_new(cur, "k", json_array());
        CHECK_INT_EQ(twin_properties_validate(deep, NULL, err, sizeof(err)), -EINVAL);
        CHECK(strstr(err, "more than 10 levels"));
        json_decref(deep);

        /* A tiny buffer is filled, terminated, not overrun. */
        char small[8];
        CHECK_INT_EQ(twin_properties_validate(dollar, NULL, small, sizeof(small)), -EINVAL);
        CHECK_STR_EQ(small, "propert");
}

static void test_document_version_and_properties(void)
{
        _cleanup_json_ json_t *doc =
            J("{\"$version\": 4, \"$meta\": 1, \"configId\": 3, \"a\": {\"b\": 1}}");
        _cleanup_json_ json_t *neg = J("{\"$version\": -4}");
        _cleanup_json_ json_t *real = J("{\"$version\": 4.0}");
        _cleanup_json_ json_t *props = NULL, *empty = NULL;

        CHECK_INT_EQ(twin_document_version(doc), 4);
        CHECK_INT_EQ(twin_document_version(neg), -1);
        CHECK_INT_EQ(twin_document_version(real), -1);
        CHECK_INT_EQ(twin_document_version(NULL), -1);

        props = twin_properties(doc);
        CHECK(json_eq_str(props, "{\"configId\": 3, \"a\": {\"b\": 1}}"));
        /* A copy: changing it leaves the document alone. */
        json_object_set_new(json_object_get(props, "a"), "b", json_integer(2));
        CHECK(json_eq_str(json_object_get(doc, "a"), "{\"b\": 1}"));

        CHECK(json_eq_str(twin_config_id(props), "3"));
        empty = twin_properties(NULL);
        CHECK(json_eq_str(empty, "{}"));
        CHECK(twin_config_id(empty) == NULL);
}

static bool needs_apply(const char *desired, const char *applied)
{
        _cleanup_json_ json_t *d = J(desired), *a = applied ? J(applied) : NULL;
        return twin_needs_apply(d, a);
}

static void test_needs_apply(void)
{
        /* configId decides when the desired side has one. */
        CHECK(!needs_apply("{\"configId\": 3, \"f\": \"5m\"}", "{\"configId\": 3, \"f\": \"1m\"}"));
        CHECK(!needs_apply("{\"configId\": 3}", "{\"configId\": 3, \"f\": \"1m\"}"));
        CHECK(needs_apply("{\"configId\": 4, \"f\": \"5m\"}", "{\"configId\": 3, \"f\": \"5m\"}"));
        CHECK(needs_apply("{\"configId\": 3}", "{\"f\": \"5m\"}"));
        CHECK(needs_apply("{\"configId\": 3}", "{}"));
        CHECK(needs_apply("{\"configId\": 3}", NULL));
        CHECK(needs_apply("{\"configId\": \"3\"}", "{\"configId\": 3}"));
        CHECK(!needs_apply("{\"configId\": {\"a\": 1, \"b\": 2}}",
                           "{\"configId\": {\"b\": 2, \"a\": 1}}"));
        CHECK(needs_apply("{\"configId\": null}", "{}"));

        /* Without configId, the properties decide. */
        CHECK(!needs_apply("{\"f\": \"5m\", \"g\": [1]}", "{\"g\": [1], \"f\": \"5m\"}"));
        CHECK(needs_apply("{\"f\": \"5m\"}", "{\"f\": \"1m\"}"));
        CHECK(needs_apply("{\"f\": \"5m\"}", "{\"f\": \"5m\", \"g\": 1}"));
        CHECK(needs_apply("{\"f\": \"5m\"}", "{\"f\": \"5m\", \"configId\": 3}"));
        CHECK(needs_apply("{\"f\": \"5m\"}", "{}"));
        CHECK(needs_apply("{\"f\": \"5m\"}", NULL));
        CHECK(!needs_apply("{}", "{}"));
        CHECK(!needs_apply("{}", NULL));
        CHECK(needs_apply("{}", "{\"f\": 1}"));
        /* '$' keys are not properties. */
        CHECK(!needs_apply("{\"$version\": 9, \"f\": 1}", "{\"f\": 1}"));
}

/* Applies patch to target and checks the result; both are JSON texts. */
static void check_merge(const char *target, const char *patch, const char *expected, int line)
{
        _cleanup_json_ json_t *t = J(target), *p = J(patch);
        int r = twin_merge_patch(t, p);

        if (r != 0 || !json_eq_str(t, expected)) {
                _cleanup_free_ char *got = json_dumps_compact(t);
                fprintf(stderr, "%s:%d: merge %s + %s = %s (r=%d), expected %s\n", __FILE__, line,
                        target, patch, got, r, expected);
                test_failures++;
        }
}

static void test_merge_patch(void)
{
        /* The examples of RFC 7396, appendix A, where the target is an object. */
        check_merge("{\"a\":\"b\"}", "{\"a\":\"c\"}", "{\"a\":\"c\"}", __LINE__);
        check_merge("{\"a\":\"b\"}", "{\"b\":\"c\"}", "{\"a\":\"b\",\"b\":\"c\"}", __LINE__);
        check_merge("{\"a\":\"b\"}", "{\"a\":null}", "{}", __LINE__);
        check_merge("{\"a\":\"b\",\"b\":\"c\"}", "{\"a\":null}", "{\"b\":\"c\"}", __LINE__);
        check_merge("{\"a\":[\"b\"]}", "{\"a\":\"c\"}", "{\"a\":\"c\"}", __LINE__);
        check_merge("{\"a\":\"c\"}", "{\"a\":[\"b\"]}", "{\"a\":[\"b\"]}", __LINE__);
        check_merge("{\"a\":{\"b\":\"c\"}}", "{\"a\":{\"b\":\"d\",\"c\":null}}",
                    "{\"a\":{\"b\":\"d\"}}", __LINE__);
        check_merge("{\"a\":[{\"b\":\"c\"}]}", "{\"a\":[1]}", "{\"a\":[1]}", __LINE__);
        check_merge("{\"e\":null}", "{\"a\":1}", "{\"e\":null,\"a\":1}", __LINE__);
        check_merge("{}", "{\"a\":{\"bb\":{\"ccc\":null}}}", "{\"a\":{\"bb\":{}}}", __LINE__);
        /* A non-object member is replaced by the patched object; nulls inside vanish. */
        check_merge("{\"a\":\"foo\"}", "{\"a\":{\"b\":{\"c\":null,\"d\":1}}}",
                    "{\"a\":{\"b\":{\"d\":1}}}", __LINE__);
        /* Nested merge keeps untouched siblings at every level. */
        check_merge("{\"x\":1,\"a\":{\"k\":1,\"b\":{\"m\":1,\"n\":2}}}",
                    "{\"a\":{\"b\":{\"n\":3}}}",
                    "{\"x\":1,\"a\":{\"k\":1,\"b\":{\"m\":1,\"n\":3}}}", __LINE__);
        /* Deleting a key that is not there is fine. */
        check_merge("{\"a\":1}", "{\"zz\":null}", "{\"a\":1}", __LINE__);

        /* Non-object patch or target: refused, target untouched. */
        _cleanup_json_ json_t *t = J("{\"a\":1}"), *arr = J("[1]"), *num = J("2");
        CHECK_INT_EQ(twin_merge_patch(t, arr), -EINVAL);
        CHECK_INT_EQ(twin_merge_patch(t, num), -EINVAL);
        CHECK_INT_EQ(twin_merge_patch(arr, t), -EINVAL);
        CHECK_INT_EQ(twin_merge_patch(t, NULL), -EINVAL);
        CHECK(json_eq_str(t, "{\"a\":1}"));
        CHECK(json_eq_str(arr, "[1]"));

        /* The result does not share values with the patch. */
        _cleanup_json_ json_t *p = J("{\"l\":[1]}");
        CHECK_INT_EQ(twin_merge_patch(t, p), 0);
        json_array_append_new(json_object_get(p, "l"), json_integer(2));
        CHECK(json_eq_str(t, "{\"a\":1,\"l\":[1]}"));
}

static bool diff_is(const char *a, const char *b, const char *expected)
{
        _cleanup_json_ json_t *ja = a ? J(a) : NULL, *jb = b ? J(b) : NULL;
        _cleanup_json_ json_t *d = twin_diff_keys(ja, jb);
        if (!json_eq_str(d, expected)) {
                _cleanup_free_ char *got = json_dumps_compact(d);
                fprintf(stderr, "diff %s %s = %s, expected %s\n", a, b, got, expected);
                return false;
        }
        return true;
}

static void test_diff_keys(void)
{
        CHECK(diff_is("{\"c\":{\"x\":1},\"a\":1,\"b\":2,\"$version\":1}",
                      "{\"b\":2,\"c\":{\"x\":2},\"d\":0,\"$version\":2}", "[\"a\",\"c\",\"d\"]"));
        CHECK(diff_is("{\"a\":1}", "{\"a\":1}", "[]"));
        CHECK(diff_is(NULL, NULL, "[]"));
        CHECK(diff_is(NULL, "{\"z\":1,\"y\":null,\"$v\":1}", "[\"y\",\"z\"]"));
        CHECK(diff_is("{\"z\":1,\"b\":1}", NULL, "[\"b\",\"z\"]"));
        CHECK(diff_is("{\"a\":1}", "{\"a\":1.0}", "[\"a\"]"));
        CHECK(diff_is("{\"a\":null}", "{}", "[\"a\"]"));
}

static void test_device_id(void)
{
        char id[TWIN_DEVICE_ID_MAX + 2];

        memset(id, 'a', sizeof(id));
        id[TWIN_DEVICE_ID_MAX] = '\0';
        CHECK(twin_device_id_is_valid(id));
        id[TWIN_DEVICE_ID_MAX] = 'a';
        id[TWIN_DEVICE_ID_MAX + 1] = '\0';
        CHECK(!twin_device_id_is_valid(id));

        CHECK(twin_device_id_is_valid("a"));
        CHECK(twin_device_id_is_valid("ABCXYZ"));
        CHECK(twin_device_id_is_valid("abcxyz"));
        CHECK(twin_device_id_is_valid("0123456789"));
        CHECK(twin_device_id_is_valid("-"));
        CHECK(twin_device_id_is_valid("."));
        CHECK(twin_device_id_is_valid("_"));
        CHECK(twin_device_id_is_valid(":"));
        CHECK(twin_device_id_is_valid("sensor-01.site_a:7"));

        CHECK(!twin_device_id_is_valid(""));
        CHECK(!twin_device_id_is_valid(NULL));
        CHECK(!twin_device_id_is_valid("a/b"));
        CHECK(!twin_device_id_is_valid("a+"));
        CHECK(!twin_device_id_is_valid("#"));
        CHECK(!twin_device_id_is_valid("a b"));
        CHECK(!twin_device_id_is_valid("a\tb"));
        CHECK(!twin_device_id_is_valid("caf\xc3\xa9"));
        CHECK(!twin_device_id_is_valid("a$"));
}

static void test_topic_root(void)
{
        CHECK(twin_topic_root_is_valid(TWIN_TOPIC_ROOT_DEFAULT));
        CHECK(twin_topic_root_is_valid("a/b/c"));
        CHECK(twin_topic_root_is_valid("x"));
        CHECK(!twin_topic_root_is_valid(""));
        CHECK(!twin_topic_root_is_valid(NULL));
        CHECK(!twin_topic_root_is_valid("/twins"));
        CHECK(!twin_topic_root_is_valid("twins/"));
        CHECK(!twin_topic_root_is_valid("/"));
        CHECK(!twin_topic_root_is_valid("tw+ins"));
        CHECK(!twin_topic_root_is_valid("twins/#"));
}

static void test_format_time(void)
{
        char buf[32];
        struct tm tm = { 0 };
        time_t before, after, parsed;

        twin_format_time(0, buf);
        CHECK_STR_EQ(buf, "1970-01-01T00:00:00Z");
        twin_format_time(1795686118, buf);
        CHECK_STR_EQ(buf, "2026-11-26T09:41:58Z");

        /* Negative means now. */
        before = time(NULL);
        twin_format_time(-1, buf);
        after = time(NULL);
        CHECK(strptime(buf, "%Y-%m-%dT%H:%M:%SZ", &tm) == buf + strlen(buf));
        parsed = timegm(&tm);
        CHECK(parsed >= before && parsed <= after);
}

static void check_config_id_string(const char *json, const char *expected)
{
        _cleanup_json_ json_t *j = json ? J(json) : NULL;
        _cleanup_free_ char *s = twin_config_id_to_string(j);
        CHECK_STR_EQ(s, expected);
}

static void test_config_id_to_string(void)
{
        check_config_id_string(NULL, "");
        check_config_id_string("\"blue-7\"", "blue-7");
        check_config_id_string("\"a \\\"q\\\"\"", "a \"q\"");
        check_config_id_string("3", "3");
        check_config_id_string("-12", "-12");
        check_config_id_string("true", "true");
        check_config_id_string("null", "null");
        check_config_id_string("{\"b\": 1, \"a\": [1, 2]}", "{\"a\":[1,2],\"b\":1}");
}

static void test_digest(void)
{
        _cleanup_json_ json_t *a =
            json_pack("{s:i, s:i, s:{s:s, s:n}}", "$version", 1, "configId", 2, "z", "k", "v", "n");
        _cleanup_json_ json_t *b = json_loads(
            "{\"z\": {\"n\": null, \"k\": \"v\"}, \"configId\": 2, \"$version\": 1}", 0, NULL);
        _cleanup_json_ json_t *c =
            json_pack("{s:i, s:i, s:{s:s, s:n}}", "$version", 2, "configId", 2, "z", "k", "v", "n");
        char da[TWIN_DIGEST_STRING_SIZE], db[TWIN_DIGEST_STRING_SIZE], dc[TWIN_DIGEST_STRING_SIZE];
        char dt[TWIN_DIGEST_STRING_SIZE];

        /* The known answer of SHA-256("test"), and of the canonical text of a document: the same
         * digest whatever the key order, another for another $version. */
        CHECK_INT_EQ(twin_digest("test", 4, dt), 0);
        CHECK_STR_EQ(dt, "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        CHECK_INT_EQ(twin_document_digest(a, da), 0);
        CHECK_INT_EQ(twin_document_digest(b, db), 0);
        CHECK_INT_EQ(twin_document_digest(c, dc), 0);
        CHECK_STR_EQ(da, db);
        CHECK(strcmp(da, dc) != 0);
        {
                const char *canonical =
                    "{\"$version\":1,\"configId\":2,\"z\":{\"k\":\"v\",\"n\":null}}";
                CHECK_INT_EQ(twin_digest(canonical, strlen(canonical), dt), 0);
                CHECK_STR_EQ(da, dt);
        }
        CHECK(twin_digest_is_valid(da));
        CHECK(!twin_digest_is_valid(NULL));
        CHECK(!twin_digest_is_valid("sha256:"));
        CHECK(!twin_digest_is_valid(
            "sha1:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f0"));
        CHECK(!twin_digest_is_valid(
            "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"));
        CHECK(!twin_digest_is_valid(
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0800"));
}

/* diff(from, to) applied to from gives to; and what the patch holds. */
static void check_diff(const char *from_text, const char *to_text, const char *want)
{
        _cleanup_json_ json_t *from = json_loads(from_text, 0, NULL);
        _cleanup_json_ json_t *to = json_loads(to_text, 0, NULL);
        _cleanup_json_ json_t *patch = twin_merge_patch_diff(from, to);
        _cleanup_json_ json_t *expected = json_loads(want, 0, NULL);
        _cleanup_json_ json_t *applied = json_deep_copy(from);

        CHECK(patch && expected && json_equal(patch, expected));
        if (patch && expected && !json_equal(patch, expected)) {
                _cleanup_free_ char *got = json_dumps_compact(patch);
                fprintf(stderr, "diff(%s, %s) = %s, expected %s\n", from_text, to_text, got, want);
        }
        CHECK_INT_EQ(twin_merge_patch(applied, patch), 0);
        CHECK(json_equal(applied, to));
}

static void test_merge_patch_diff(void)
{
        check_diff("{}", "{}", "{}");
        check_diff("{\"a\":1}", "{\"a\":1}", "{}");
        check_diff("{\"a\":1}", "{\"a\":2}", "{\"a\":2}");
        check_diff("{\"a\":1,\"b\":2}", "{\"a\":1}", "{\"b\":null}");
        check_diff("{}", "{\"n\":{\"x\":1}}", "{\"n\":{\"x\":1}}");
        check_diff("{\"n\":{\"x\":1,\"y\":2}}", "{\"n\":{\"x\":1,\"z\":3}}",
                   "{\"n\":{\"y\":null,\"z\":3}}");
        check_diff("{\"n\":{\"x\":1}}", "{\"n\":{}}", "{\"n\":{\"x\":null}}");
        check_diff("{\"n\":{\"x\":1}}", "{\"n\":5}", "{\"n\":5}");
        check_diff("{\"n\":5}", "{\"n\":{\"x\":1}}", "{\"n\":{\"x\":1}}");
        /* Arrays replace whole. */
        check_diff("{\"l\":[1,2,3]}", "{\"l\":[1,3]}", "{\"l\":[1,3]}");
        {
                /* NULL is empty on either side. */
                _cleanup_json_ json_t *to = json_pack("{s:i}", "a", 1);
                _cleanup_json_ json_t *p = twin_merge_patch_diff(NULL, to);
                _cleanup_json_ json_t *q = twin_merge_patch_diff(to, NULL);

                CHECK(json_equal(p, to));
                CHECK(q && json_is_null(json_object_get(q, "a")));
        }
}

static void test_limits(void)
{
        json_t *doc = NULL;
        int64_t v;
        const char *ok = "{\"$version\":1,\"a\":{\"b\":\"c\"},\"n\":4503599627370495}";

        CHECK_INT_EQ(
            twin_desired_parse(ok, strlen(ok), &twin_limits_azure, &doc, &v, err, sizeof(err)), 0);
        json_decref(doc);
        doc = NULL;
#define REFUSED(text, want)                                                                        \
        do {                                                                                       \
                CHECK_INT_EQ(twin_desired_parse(text, strlen(text), &twin_limits_azure, &doc, &v,  \
                                                err, sizeof(err)),                                 \
                             -EINVAL);                                                             \
                CHECK_STR_EQ(err, want);                                                           \
        } while (0)
        REFUSED("{\"$version\":1,\"a.b\":1}",
                "property key \"a.b\" holds '.', which IoT Hub does not allow in keys");
        REFUSED("{\"$version\":1,\"x\":{\"a b\":1}}",
                "property key \"a b\" at x holds ' ', which IoT Hub does not allow in keys");
        REFUSED("{\"$version\":1,\"a\\u0007\":1}",
                "property key \"a?\" holds a control character, which IoT Hub does not allow in "
                "keys");
        REFUSED("{\"$version\":1,\"n\":4503599627370496}",
                "the integer at n is outside the range IoT Hub allows (-4503599627370496 to "
                "4503599627370495)");
        {
                char big[5000];

                snprintf(big, sizeof(big), "{\"$version\":1,\"s\":\"%4097d\"}", 1);
                REFUSED(big, "the string at s is 4097 bytes, IoT Hub allows at most 4096");
        }
        /* The standard dialect has none of these rules. */
        {
                const char *t = "{\"$version\":1,\"a.b c\":4503599627370496}";

                CHECK_INT_EQ(twin_desired_parse(t, strlen(t), NULL, &doc, &v, err, sizeof(err)), 0);
                json_decref(doc);
        }
        CHECK(twin_limits_key_is_valid(&twin_limits_azure, "twinStatus"));
        CHECK(!twin_limits_key_is_valid(&twin_limits_azure, "twin.status"));
        CHECK(!twin_limits_key_is_valid(&twin_limits_azure, "$status"));
        CHECK(!twin_limits_key_is_valid(&twin_limits_azure, ""));
#undef REFUSED
}

static void test_properties_equal(void)
{
        _cleanup_json_ json_t *a =
            json_pack("{s:i, s:i, s:s}", "$version", 1, "configId", 2, "x", "y");
        _cleanup_json_ json_t *b = json_pack("{s:i, s:s}", "configId", 2, "x", "y");
        _cleanup_json_ json_t *c = json_pack("{s:i, s:s, s:i}", "configId", 2, "x", "y", "w", 1);

        CHECK(twin_properties_equal(a, b));
        CHECK(!twin_properties_equal(b, c));
        CHECK(!twin_properties_equal(c, b));
        CHECK(twin_properties_equal(NULL, NULL));
        CHECK(!twin_properties_equal(NULL, b));
}

/* The signature property is the protocol's, not a property: the apply command never gets it,
 * the device never reports it, and a signed desired document equals what the device runs. */
static void test_signature_property_is_no_property(void)
{
        _cleanup_json_ json_t *signed_doc =
            J("{\"$version\": 2, \"configId\": 1, \"twinSignature\": {\"seq\": 1}}");
        _cleanup_json_ json_t *applied = J("{\"configId\": 1}");
        _cleanup_json_ json_t *props = twin_properties(signed_doc);
        _cleanup_json_ json_t *diff = twin_diff_keys(signed_doc, applied);
        _cleanup_json_ json_t *nested = J("{\"a\": {\"twinSignature\": 1}}");

        CHECK(!twin_key_is_property("twinSignature"));
        CHECK(!twin_key_is_property("$version"));
        CHECK(twin_key_is_property("twinSignatures"));
        CHECK(json_equal(props, applied));
        CHECK(twin_properties_equal(signed_doc, applied));
        CHECK_INT_EQ(json_array_size(diff), 0);
        CHECK(!twin_needs_apply(props, applied));
        /* Only the top-level member is reserved. */
        CHECK_INT_EQ(twin_properties_validate(nested, &twin_limits_azure, err, sizeof(err)), 0);
}

int main(void)
{
        test_parse_valid();
        test_parse_size();
        test_parse_depth();
        test_parse_encoding();
        test_parse_syntax();
        test_parse_version();
        test_parse_dollar_keys();
        test_properties_validate();
        test_document_version_and_properties();
        test_needs_apply();
        test_merge_patch();
        test_diff_keys();
        test_device_id();
        test_topic_root();
        test_format_time();
        test_config_id_to_string();
        test_digest();
        test_properties_equal();
        test_signature_property_is_no_property();
        test_merge_patch_diff();
        test_limits();
        return test_exit("test-twin-model");
}
