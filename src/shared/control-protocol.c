/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "control-protocol.h"
#include "json-util.h"
#include "macro.h"
#include "utf8.h"

/* Longest piece of the request quoted back in an error message. */
#define QUOTE_MAX 64

static const char *const method_table[_CONTROL_METHOD_MAX] = {
        [CONTROL_METHOD_STATUS] = "status",   [CONTROL_METHOD_TWIN] = "twin",
        [CONTROL_METHOD_REAPPLY] = "reapply", [CONTROL_METHOD_EVENTS] = "events",
        [CONTROL_METHOD_REPORT] = "report",
};

const char *control_method_to_string(enum ControlMethod m)
{
        if (m < 0 || m >= _CONTROL_METHOD_MAX)
                return NULL;
        return method_table[m];
}

enum ControlMethod control_method_from_string(const char *s)
{
        if (!s)
                return _CONTROL_METHOD_INVALID;
        for (int m = 0; m < _CONTROL_METHOD_MAX; m++)
                if (strcmp(method_table[m], s) == 0)
                        return (enum ControlMethod)m;
        return _CONTROL_METHOD_INVALID;
}

enum ControlAccess control_method_access(enum ControlMethod m)
{
        switch (m) {
        case CONTROL_METHOD_STATUS:
        case CONTROL_METHOD_TWIN:
        case CONTROL_METHOD_EVENTS:
                return CONTROL_ACCESS_READ;
        case CONTROL_METHOD_REPORT:
                return CONTROL_ACCESS_REPORT;
        case CONTROL_METHOD_REAPPLY:
                return CONTROL_ACCESS_ADMIN;
        case _CONTROL_METHOD_MAX:
        case _CONTROL_METHOD_INVALID:
                break;
        }
        /* Unknown methods never run; if one did, it would not be by anyone's right. */
        return CONTROL_ACCESS_ADMIN;
}

void control_request_done(ControlRequest *req)
{
        if (!req)
                return;
        json_decref(req->properties);
        req->properties = NULL;
}

static int request_err(int r, const char *name, const char **ret_error_name, char *err,
                       size_t errlen, const char *fmt, ...) _printf_(6, 7);
static int request_err(int r, const char *name, const char **ret_error_name, char *err,
                       size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (ret_error_name)
                *ret_error_name = name;
        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
                /* The message goes back as a JSON string: keep it valid UTF-8 and one line. */
                utf8_sanitize_line(err);
        }
        return r;
}

/* errno values, so that callers that only look at the return value still tell cases apart:
 * ParseError -EBADMSG, InvalidRequest -EINVAL, UnknownMethod -EOPNOTSUPP, UnsupportedVersion
 * -EPROTONOSUPPORT, LineTooLong -E2BIG, InternalError -ENOMEM. */
int control_request_parse(const char *line, size_t len, ControlRequest *ret,
                          const char **ret_error_name, char *err, size_t errlen)
{
        _cleanup_json_ json_t *req = NULL;
        json_error_t jerr;
        const json_t *id, *version, *method, *params, *props;
        enum ControlMethod m;

        *ret = (ControlRequest){ .method = _CONTROL_METHOD_INVALID, .id = -1, .has_id = false };
        if (ret_error_name)
                *ret_error_name = NULL;

        if (len > CONTROL_LINE_MAX)
                return request_err(-E2BIG, CONTROL_ERROR_LINE_TOO_LONG, ret_error_name, err, errlen,
                                   "request line is %zu bytes, limit %d", len, CONTROL_LINE_MAX);
        if (!line && len > 0)
                return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name, err,
                                   errlen, "request line is missing");

        req = json_loadb(line ? line : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
        if (!req) {
                if (json_error_code(&jerr) == json_error_out_of_memory)
                        return request_err(-ENOMEM, CONTROL_ERROR_INTERNAL, ret_error_name, err,
                                           errlen, "out of memory");
                return request_err(-EBADMSG, CONTROL_ERROR_PARSE, ret_error_name, err, errlen,
                                   "request is not valid JSON: %s (column %d)", jerr.text,
                                   jerr.column);
        }
        if (!json_is_object(req))
                return request_err(-EBADMSG, CONTROL_ERROR_PARSE, ret_error_name, err, errlen,
                                   "request is not a JSON object");

        /* The id first, so that even an error reply can carry it. */
        id = json_object_get(req, "id");
        if (id) {
                if (!json_is_integer(id))
                        return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name,
                                           err, errlen, "\"id\" must be an integer");
                ret->id = json_integer_value(id);
                ret->has_id = true;
        }

        /* The version before the method: a newer client's method is unknown here because of
         * the version, and that is the useful thing to say. */
        version = json_object_get(req, "version");
        if (version) {
                if (!json_is_integer(version))
                        return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name,
                                           err, errlen, "\"version\" must be an integer");
                if (json_integer_value(version) < CONTROL_PROTOCOL_VERSION_MIN ||
                    json_integer_value(version) > CONTROL_PROTOCOL_VERSION)
                        return request_err(-EPROTONOSUPPORT, CONTROL_ERROR_UNSUPPORTED_VERSION,
                                           ret_error_name, err, errlen,
                                           "protocol version %" JSON_INTEGER_FORMAT
                                           " is not supported, this agent speaks versions %d to %d",
                                           json_integer_value(version),
                                           CONTROL_PROTOCOL_VERSION_MIN, CONTROL_PROTOCOL_VERSION);
        }

        method = json_object_get(req, "method");
        if (!method)
                return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name, err,
                                   errlen, "\"method\" is missing");
        if (!json_is_string(method))
                return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name, err,
                                   errlen, "\"method\" must be a string");
        m = control_method_from_string(json_string_value(method));
        if (m < 0)
                return request_err(-EOPNOTSUPP, CONTROL_ERROR_UNKNOWN_METHOD, ret_error_name, err,
                                   errlen, "unknown method \"%.*s\"", QUOTE_MAX,
                                   json_string_value(method));

        params = json_object_get(req, "params");
        if (params && !json_is_object(params))
                return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name, err,
                                   errlen, "\"params\" must be an object");
        if (m == CONTROL_METHOD_REPORT) {
                props = json_object_get(params, "properties");
                if (!json_is_object(props))
                        return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name,
                                           err, errlen,
                                           "report needs \"params\": {\"properties\": {...}}");
                if (json_object_size(props) == 0)
                        return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name,
                                           err, errlen, "report names no properties");
                if (json_object_size(props) > CONTROL_REPORT_KEYS_MAX)
                        return request_err(-EINVAL, CONTROL_ERROR_INVALID_REQUEST, ret_error_name,
                                           err, errlen,
                                           "report names %zu properties, at most %d in one",
                                           json_object_size(props), CONTROL_REPORT_KEYS_MAX);
                ret->properties = json_incref((json_t *)props);
        }

        ret->method = m;
        return 0;
}
