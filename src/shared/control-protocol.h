/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The control socket protocol between twind and twinctl, defined once here and documented in
 * docs/protocol.md ("Control socket"). One JSON object per line (UTF-8, '\n' terminated),
 * request then response; the "events" method turns the connection into a stream of event lines.
 *
 * Request:  {"method": "status", "id": 7, "version": 2}      ("id" and "version" optional)
 *           {"method": "report", "params": {"properties": {"firmware": "1.4.2"}}}
 * Response: {"id": 7, "result": {...}}
 *       or  {"id": 7, "error": {"name": "UnknownMethod", "message": "..."}}
 * Event:    {"event": "connected", "time": "2026-11-26T09:41:58Z", ...}
 *
 * Version history (bump CONTROL_PROTOCOL_VERSION on any incompatible change):
 *   1  status, twin, reapply, events.
 *   2  report (with "params"); an agent of version 2 also accepts requests of version 1.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define CONTROL_PROTOCOL_VERSION 2
/* The oldest version a request may name. */
#define CONTROL_PROTOCOL_VERSION_MIN 1

/* Limits. A request line longer than CONTROL_LINE_MAX gets CONTROL_ERROR_LINE_TOO_LONG and the
 * connection is closed. A client whose unread output exceeds CONTROL_OUTPUT_MAX is dropped, so
 * slow readers never hold memory or stall the agent. */
#define CONTROL_LINE_MAX    (64 * 1024)
#define CONTROL_OUTPUT_MAX  (256 * 1024)
#define CONTROL_CLIENTS_MAX 4096

#define CONTROL_SOCKET_MODE 0660

enum ControlMethod {
        CONTROL_METHOD_STATUS,  /* read-only: the agent's state and counters */
        CONTROL_METHOD_TWIN,    /* read-only: desired and reported as the agent holds them */
        CONTROL_METHOD_REAPPLY, /* privileged: apply the current desired configuration again */
        CONTROL_METHOD_EVENTS,  /* read-only: follow state changes */
        CONTROL_METHOD_REPORT,  /* report access: merge properties the device reports itself */
        _CONTROL_METHOD_MAX,
        _CONTROL_METHOD_INVALID = -1,
};

/* Error names, as they appear in "error": {"name": ...}. */
#define CONTROL_ERROR_PARSE               "ParseError"     /* not JSON, or not an object */
#define CONTROL_ERROR_INVALID_REQUEST     "InvalidRequest" /* fields of the wrong type */
#define CONTROL_ERROR_UNKNOWN_METHOD      "UnknownMethod"
#define CONTROL_ERROR_UNSUPPORTED_VERSION "UnsupportedVersion"
#define CONTROL_ERROR_ACCESS_DENIED       "AccessDenied" /* privileged method, other user */
#define CONTROL_ERROR_LINE_TOO_LONG       "LineTooLong"  /* connection closed after it */
#define CONTROL_ERROR_NO_DESIRED          "NoDesired"    /* reapply before any desired */
#define CONTROL_ERROR_BUSY                "Busy"         /* too many clients */
#define CONTROL_ERROR_REFUSED             "Refused"      /* a report the agent does not take */
#define CONTROL_ERROR_SAVE_FAILED         "SaveFailed"   /* could not be persisted; not taken */
#define CONTROL_ERROR_INTERNAL            "InternalError"

/* Event names, as they appear in "event". */
#define CONTROL_EVENT_CONNECTED       "connected"
#define CONTROL_EVENT_DISCONNECTED    "disconnected"
#define CONTROL_EVENT_DESIRED         "desired-received"
#define CONTROL_EVENT_APPLY_STARTED   "apply-started"
#define CONTROL_EVENT_APPLY_FINISHED  "apply-finished"
#define CONTROL_EVENT_DEVICE_REPORTED "device-reported"

/* Who may call a method: anyone who can connect, the report group too, or only root and the
 * agent's own user. */
enum ControlAccess {
        CONTROL_ACCESS_READ,
        CONTROL_ACCESS_REPORT,
        CONTROL_ACCESS_ADMIN,
};

/* Most members in the properties of one report. */
#define CONTROL_REPORT_KEYS_MAX 256

typedef struct ControlRequest {
        enum ControlMethod method;
        int64_t id; /* -1 when the request carried none */
        bool has_id;
        /* report: params.properties, a merge patch (an object; null removes); owned, free with
         * control_request_done(). NULL for the other methods. */
        json_t *properties;
} ControlRequest;

/* Method name <-> enum. */
const char *control_method_to_string(enum ControlMethod m);
enum ControlMethod control_method_from_string(const char *s);

/* Who may call the method. */
enum ControlAccess control_method_access(enum ControlMethod m);

/* Releases what control_request_parse() stored in req (safe on a zeroed or parsed one). */
void control_request_done(ControlRequest *req);

/*
 * Pure: parses one request line (without the '\n'). Returns 0 and fills *ret, or a negative
 * errno with *ret_error_name set to one of the CONTROL_ERROR_* names and a reason in err. When the
 * line was an object with a usable "id", ret->id/has_id are filled even on error, so the reply
 * can carry it.
 */
int control_request_parse(const char *line, size_t len, ControlRequest *ret,
                          const char **ret_error_name, char *err, size_t errlen);
