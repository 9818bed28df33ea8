/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>

#include "control-protocol.h"
#include "test-util.h"

static ControlRequest req;
static const char *error_name;
static char err[256];

static int parse_len(const char *line, size_t len)
{
        control_request_done(&req);
        error_name = "unset";
        err[0] = '\0';
        int r = control_request_parse(line, len, &req, &error_name, err, sizeof(err));
        if (r < 0) {
                CHECK(strlen(err) > 0);
                CHECK(!strchr(err, '\n'));
        }
        return r;
}

static int parse(const char *line)
{
        return parse_len(line, strlen(line));
}

static void test_methods(void)
{
        for (int m = 0; m < _CONTROL_METHOD_MAX; m++) {
                const char *s = control_method_to_string(m);
                CHECK(s != NULL);
                CHECK_INT_EQ(control_method_from_string(s), m);
        }
        CHECK_STR_EQ(control_method_to_string(CONTROL_METHOD_STATUS), "status");
        CHECK_STR_EQ(control_method_to_string(CONTROL_METHOD_TWIN), "twin");
        CHECK_STR_EQ(control_method_to_string(CONTROL_METHOD_REAPPLY), "reapply");
        CHECK_STR_EQ(control_method_to_string(CONTROL_METHOD_EVENTS), "events");
        CHECK(control_method_to_string(_CONTROL_METHOD_MAX) == NULL);
        CHECK(control_method_to_string(_CONTROL_METHOD_INVALID) == NULL);
        CHECK_INT_EQ(control_method_from_string("Status"), _CONTROL_METHOD_INVALID);
        CHECK_INT_EQ(control_method_from_string(""), _CONTROL_METHOD_INVALID);
        CHECK_INT_EQ(control_method_from_string(NULL), _CONTROL_METHOD_INVALID);

        CHECK_INT_EQ(control_method_access(CONTROL_METHOD_REAPPLY), CONTROL_ACCESS_ADMIN);
        CHECK_INT_EQ(control_method_access(CONTROL_METHOD_REPORT), CONTROL_ACCESS_REPORT);
        CHECK_INT_EQ(control_method_access(CONTROL_METHOD_STATUS), CONTROL_ACCESS_READ);
        CHECK_INT_EQ(control_method_access(CONTROL_METHOD_TWIN), CONTROL_ACCESS_READ);
        CHECK_INT_EQ(control_method_access(CONTROL_METHOD_EVENTS), CONTROL_ACCESS_READ);
        CHECK_INT_EQ(control_method_access(_CONTROL_METHOD_INVALID), CONTROL_ACCESS_ADMIN);
}

static void test_valid(void)
{
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"id\": 7, \"version\": 1}"), 0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_STATUS);
        CHECK(req.has_id);
        CHECK_INT_EQ(req.id, 7);
        CHECK(error_name == NULL);

        CHECK_INT_EQ(parse("{\"method\": \"reapply\"}"), 0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_REAPPLY);
        CHECK(!req.has_id);
        CHECK_INT_EQ(req.id, -1);

        CHECK_INT_EQ(parse("  {\"id\": -3, \"method\": \"events\", \"future\": [1]}\r"), 0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_EVENTS);
        CHECK_INT_EQ(req.id, -3);

        CHECK_INT_EQ(parse("{\"method\": \"twin\", \"id\": 9223372036854775807}"), 0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_TWIN);
        CHECK_INT_EQ(req.id, INT64_MAX);

        /* Only len bytes count: the rest of a buffer is not part of the line. */
        CHECK_INT_EQ(parse_len("{\"method\": \"status\"}{\"garbage", 20), 0);
}

static void test_parse_error(void)
{
        CHECK_INT_EQ(parse("{\"method\": \"status\""), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK(strncmp(err, "request is not valid JSON: ", 27) == 0);
        CHECK(!req.has_id);

        CHECK_INT_EQ(parse("{\"method\": \"status\"} x"), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_INT_EQ(parse(""), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_INT_EQ(parse("status"), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_INT_EQ(parse("{\"method\": \"a\xff\"}"), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_INT_EQ(parse_len("{\"method\":\0\"x\"}", 15), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"method\": \"twin\"}"), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);

        CHECK_INT_EQ(parse("[\"status\"]"), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
        CHECK_STR_EQ(err, "request is not a JSON object");
        CHECK_INT_EQ(parse("\"status\""), -EBADMSG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_PARSE);
}

static void test_invalid_request(void)
{
        CHECK_INT_EQ(parse("{\"id\": 4}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_STR_EQ(err, "\"method\" is missing");
        /* The id still comes back, so the reply can carry it. */
        CHECK(req.has_id);
        CHECK_INT_EQ(req.id, 4);

        CHECK_INT_EQ(parse("{\"method\": 1, \"id\": 5}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_STR_EQ(err, "\"method\" must be a string");
        CHECK_INT_EQ(req.id, 5);

        CHECK_INT_EQ(parse("{\"method\": \"status\", \"id\": \"5\"}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_STR_EQ(err, "\"id\" must be an integer");
        CHECK(!req.has_id);
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"id\": 5.0}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"id\": null}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);

        CHECK_INT_EQ(parse("{\"method\": \"status\", \"version\": \"1\", \"id\": 2}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_STR_EQ(err, "\"version\" must be an integer");
        CHECK_INT_EQ(req.id, 2);
}

static void test_unknown_and_version(void)
{
        CHECK_INT_EQ(parse("{\"method\": \"shutdown\", \"id\": 8}"), -EOPNOTSUPP);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_UNKNOWN_METHOD);
        CHECK_STR_EQ(err, "unknown method \"shutdown\"");
        CHECK_INT_EQ(req.id, 8);
        CHECK_INT_EQ(req.method, _CONTROL_METHOD_INVALID);

        /* A control character in the method does not break the one-line message. */
        CHECK_INT_EQ(parse("{\"method\": \"a\\nb\"}"), -EOPNOTSUPP);
        CHECK_STR_EQ(err, "unknown method \"a?b\"");

        CHECK_INT_EQ(parse("{\"method\": \"status\", \"version\": 3, \"id\": 9}"),
                     -EPROTONOSUPPORT);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_UNSUPPORTED_VERSION);
        CHECK_STR_EQ(err, "protocol version 3 is not supported, this agent speaks versions 1 to 2");
        CHECK_INT_EQ(req.id, 9);
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"version\": 0}"), -EPROTONOSUPPORT);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_UNSUPPORTED_VERSION);
        /* A newer client's new method: the version is what to report. */
        CHECK_INT_EQ(parse("{\"method\": \"new-thing\", \"version\": 3}"), -EPROTONOSUPPORT);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_UNSUPPORTED_VERSION);
}

static void test_report(void)
{
        CHECK_INT_EQ(parse("{\"method\": \"report\", \"version\": 2, \"params\": "
                           "{\"properties\": {\"fw\": \"1.2\", \"old\": null}}}"),
                     0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_REPORT);
        CHECK(json_is_object(req.properties));
        CHECK_STR_EQ(json_string_value(json_object_get(req.properties, "fw")), "1.2");
        CHECK(json_is_null(json_object_get(req.properties, "old")));
        /* Version 1 requests still work; params of other methods are ignored. */
        CHECK_INT_EQ(parse("{\"method\": \"status\", \"version\": 1, \"params\": {}}"), 0);
        CHECK(req.properties == NULL);

        CHECK_INT_EQ(parse("{\"method\": \"report\"}"), -EINVAL);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_INVALID_REQUEST);
        CHECK_STR_EQ(err, "report needs \"params\": {\"properties\": {...}}");
        CHECK_INT_EQ(parse("{\"method\": \"report\", \"params\": []}"), -EINVAL);
        CHECK_STR_EQ(err, "\"params\" must be an object");
        CHECK_INT_EQ(parse("{\"method\": \"report\", \"params\": {\"properties\": [1]}}"), -EINVAL);
        CHECK_INT_EQ(parse("{\"method\": \"report\", \"params\": {\"properties\": {}}}"), -EINVAL);
        CHECK_STR_EQ(err, "report names no properties");
        CHECK(req.properties == NULL);
        control_request_done(&req);
}

static void test_line_length(void)
{
        /* {"method":"status","pad":"xxx..."} of exactly n bytes. */
        const char *head = "{\"method\":\"status\",\"pad\":\"", *tail = "\"}";
        size_t n = CONTROL_LINE_MAX + 1;
        char *line = malloc(n + 1);

        strcpy(line, head);
        memset(line + strlen(head), 'x', n - strlen(head) - strlen(tail));
        strcpy(line + n - strlen(tail), tail);

        CHECK_INT_EQ(parse_len(line, n), -E2BIG);
        CHECK_STR_EQ(error_name, CONTROL_ERROR_LINE_TOO_LONG);
        CHECK_STR_EQ(err, "request line is 65537 bytes, limit 65536");

        /* One byte shorter: exactly at the limit, accepted. */
        memmove(line + strlen(head), line + strlen(head) + 1, n - strlen(head));
        CHECK_INT_EQ(strlen(line), CONTROL_LINE_MAX);
        CHECK_INT_EQ(parse_len(line, CONTROL_LINE_MAX), 0);
        CHECK_INT_EQ(req.method, CONTROL_METHOD_STATUS);
        free(line);
}

int main(void)
{
        test_methods();
        test_valid();
        test_parse_error();
        test_invalid_request();
        test_unknown_and_version();
        test_report();
        test_line_length();
        control_request_done(&req);
        return test_exit("test-control-protocol");
}
