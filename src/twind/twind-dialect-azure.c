/* SPDX-License-Identifier: MIT */
/*
 * The Azure IoT Hub dialect: the device twin over MQTT 3.1.1 and TLS, as docs/protocol.md,
 * "Azure IoT Hub", describes it.
 *
 * Every connect subscribes to the twin responses and desired patches, and once both SUBACKs
 * are in, GETs the whole twin: the desired properties (with the hub's $version) go to the agent
 * whole; the reported ones are what the hub holds, against which each report becomes a merge
 * patch. Patches of desired properties are merged in when their $version is the next one,
 * ignored when not newer, and a gap fetches the twin again. One request is in flight at a time
 * (a GET or a reported PATCH); a report made meanwhile replaces the one waiting. Throttling
 * (429) and server errors (5xx) are retried with backoff; other refusals are problems, not
 * retried. The SAS token is made anew for every connection attempt and renewed by reconnecting
 * when a fifth of its life is left.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "azure-connection-string.h"
#include "json-util.h"
#include "log.h"
#include "sas-token.h"
#include "secret-file.h"
#include "twin-model.h"
#include "twind-dialect-impl.h"
#include "utf8.h"

#define AZURE_API_VERSION   "2021-04-12"
#define AZURE_PORT          8883
#define TOPIC_RESPONSES     "$iothub/twin/res/#"
#define TOPIC_RESPONSE      "$iothub/twin/res/"
#define TOPIC_DESIRED       "$iothub/twin/PATCH/properties/desired/#"
#define TOPIC_DESIRED_PATCH "$iothub/twin/PATCH/properties/desired/"
#define TOPIC_GET           "$iothub/twin/GET/?$rid="
#define TOPIC_REPORT        "$iothub/twin/PATCH/properties/reported/?$rid="
/* No answer to a request in this long: the hub dropped it; ask again (as after a 5xx). */
#define REQUEST_TIMEOUT_MS 30000
#define RETRY_FIRST_MS     1000
#define RETRY_MAX_MS       60000

enum AzureRequest {
        AZURE_REQUEST_NONE,
        AZURE_REQUEST_GET,
        AZURE_REQUEST_REPORT,
};

typedef struct AzureDialect {
        TwinDialect base;
        TwinLimits limits; /* IoT Hub's, with the status property reserved */
        AzureConnectionString cs;
        char *status_property;
        uint64_t token_lifetime_ms;
        int64_t token_expiry; /* the se of the token of the last attempt, seconds since the epoch */

        /* This connection: subscriptions not yet acknowledged, the request in flight. */
        bool connected;
        unsigned subacks_missing;
        bool get_wanted; /* a GET is due (after the SUBACKs, after a gap, after an error) */
        enum AzureRequest in_flight;
        uint64_t rid, in_flight_rid;
        json_t *sent; /* the reported document of the PATCH in flight */

        json_t *desired;  /* the hub's desired properties with "$version"; NULL before a GET */
        json_t *acked;    /* the reported properties the hub holds; NULL before a GET */
        json_t *wanted;   /* the newest reported document the agent asked for (mapped) */
        unsigned retries; /* consecutive retryable failures, for the backoff */

        uv_timer_t *request_timer; /* the in-flight request's deadline, or the retry's delay */
        bool retry_pending;
        uv_timer_t *renew_timer; /* renews the token by reconnecting */
} AzureDialect;

static AzureDialect *azure(TwinDialect *d)
{
        return (AzureDialect *)d;
}

static void azure_pump(AzureDialect *a);

/* ---- the connection ------------------------------------------------------------------------ */

static int azure_credentials(TwinDialect *d, char **ret_username, char **ret_password, char *err,
                             size_t errlen)
{
        AzureDialect *a = azure(d);
        _cleanup_free_ char *resource = NULL, *username = NULL;
        char *token = NULL;
        int r;

        if (asprintf(&username, "%s/%s%s%s/?api-version=" AZURE_API_VERSION, a->cs.host_name,
                     a->cs.device_id, a->cs.module_id ? "/" : "",
                     a->cs.module_id ? a->cs.module_id : "") < 0) {
                username = NULL;
                return -ENOMEM;
        }
        if (a->cs.x509) {
                /* The client certificate is the identity; IoT Hub wants no password. */
                *ret_username = TAKE_PTR(username);
                *ret_password = NULL;
                return 0;
        }
        if (asprintf(&resource, "%s/devices/%s%s%s", a->cs.host_name, a->cs.device_id,
                     a->cs.module_id ? "/modules/" : "",
                     a->cs.module_id ? a->cs.module_id : "") < 0) {
                resource = NULL;
                return -ENOMEM;
        }
        /* Whole seconds, rounded up: the token lives at least token_lifetime; azure_connected()
         * times the renewal from this expiry. */
        a->token_expiry = (int64_t)time(NULL) + 1 + (int64_t)(a->token_lifetime_ms / 1000);
        r = sas_token_make(resource, a->cs.shared_access_key, NULL, a->token_expiry, &token);
        if (r < 0) {
                snprintf(err, errlen, "cannot make a SAS token: %s", strerror(-r));
                return r;
        }
        *ret_username = TAKE_PTR(username);
        *ret_password = token;
        return 0;
}

static void on_renew(uv_timer_t *t)
{
        AzureDialect *a = t->data;
        int r;

        log_info("Renewing the SAS token for %s", a->cs.host_name);
        r = mqtt_client_reconnect(a->base.client);
        if (r < 0 && r != -ENOTCONN)
                log_warning_errno(r, "Failed to reconnect for a new SAS token, ignoring");
}

static void request_stop(AzureDialect *a)
{
        a->in_flight = AZURE_REQUEST_NONE;
        a->retry_pending = false;
        uv_timer_stop(a->request_timer);
}

static void azure_connected(TwinDialect *d)
{
        AzureDialect *a = azure(d);
        int r;

        a->connected = true;
        a->subacks_missing = 0;
        a->get_wanted = true;
        a->retries = 0;
        request_stop(a);
        json_decref(TAKE_PTR(a->sent));
        /* What the hub holds is read again with this connection's GET. */
        json_decref(TAKE_PTR(a->acked));

        r = dialect_subscribe(d, TOPIC_RESPONSES, 0, NULL);
        if (r >= 0) {
                a->subacks_missing++;
                r = dialect_subscribe(d, TOPIC_DESIRED, 0, NULL);
        }
        if (r >= 0)
                a->subacks_missing++;
        else
                log_warning_errno(r, "Failed to subscribe to the twin topics, ignoring");

        /* Renew with a fifth of the token's life left, and at least a second: counted from now
         * to its expiry, so that the time the connection took does not eat the margin. */
        if (!a->cs.x509) {
                struct timespec ts;
                int64_t left_ms, margin_ms;

                clock_gettime(CLOCK_REALTIME, &ts);
                left_ms =
                    a->token_expiry * 1000 - ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
                margin_ms = left_ms / 5 > 1000 ? left_ms / 5 : 1000;
                uv_timer_start(a->renew_timer, on_renew,
                               left_ms > margin_ms ? (uint64_t)(left_ms - margin_ms) : 0, 0);
        }
}

static void azure_disconnected(TwinDialect *d)
{
        AzureDialect *a = azure(d);

        a->connected = false;
        request_stop(a);
        uv_timer_stop(a->renew_timer);
        json_decref(TAKE_PTR(a->sent));
}

static void azure_subscribed(TwinDialect *d, int mid, bool granted)
{
        AzureDialect *a = azure(d);

        if (a->subacks_missing > 0 && --a->subacks_missing == 0)
                /* Only now: a patch sent between the GET and our subscription would be lost. */
                azure_pump(a);
}

/* ---- requests ------------------------------------------------------------------------------ */

static uint64_t retry_delay_ms(unsigned retries)
{
        uint64_t ms = (uint64_t)RETRY_FIRST_MS << (retries < 6 ? retries : 6);
        uint32_t rnd;

        if (ms > RETRY_MAX_MS)
                ms = RETRY_MAX_MS;
        if (uv_random(NULL, NULL, &rnd, sizeof(rnd), 0, NULL) < 0)
                rnd = (uint32_t)uv_hrtime();
        /* Jitter over the upper half, as for connections: devices throttled together spread. */
        return ms / 2 + rnd % (ms / 2 + 1);
}

static void on_request_timer(uv_timer_t *t)
{
        AzureDialect *a = t->data;

        if (a->retry_pending) {
                a->retry_pending = false;
                azure_pump(a);
                return;
        }
        if (a->in_flight == AZURE_REQUEST_NONE)
                return;
        log_warning("IoT Hub did not answer the twin %s (request %" PRIu64 ") in %d s, asking "
                    "again",
                    a->in_flight == AZURE_REQUEST_GET ? "GET" : "reported PATCH", a->in_flight_rid,
                    REQUEST_TIMEOUT_MS / 1000);
        if (a->in_flight == AZURE_REQUEST_GET)
                a->get_wanted = true;
        a->in_flight = AZURE_REQUEST_NONE;
        json_decref(TAKE_PTR(a->sent));
        azure_pump(a);
}

/* Waits before the next request (throttled, a server error). */
static void retry_later(AzureDialect *a, const char *what)
{
        uint64_t ms = retry_delay_ms(a->retries);

        if (a->retries < 1000)
                a->retries++;
        log_warning("IoT Hub %s; trying again in %.1f s", what, (double)ms / 1000.0);
        a->retry_pending = true;
        uv_timer_start(a->request_timer, on_request_timer, ms, 0);
}

static int send_request(AzureDialect *a, enum AzureRequest kind, const char *payload)
{
        char topic[128];
        int r;

        a->rid++;
        snprintf(topic, sizeof(topic), "%s%" PRIu64,
                 kind == AZURE_REQUEST_GET ? TOPIC_GET : TOPIC_REPORT, a->rid);
        /* QoS 0, as Microsoft's SDKs publish twin requests: the answer is the acknowledgement,
         * and a request without one is sent again (on_request_timer). */
        r = mqtt_client_publish(a->base.client, topic, payload, strlen(payload), 0, false, NULL);
        if (r < 0)
                return r;
        a->in_flight = kind;
        a->in_flight_rid = a->rid;
        uv_timer_start(a->request_timer, on_request_timer, REQUEST_TIMEOUT_MS, 0);
        return 0;
}

/* Sends what is due, when nothing is in flight: a GET first, then the report. */
static void azure_pump(AzureDialect *a)
{
        _cleanup_json_ json_t *patch = NULL;
        _cleanup_free_ char *text = NULL;
        int r;

        if (!a->connected || a->subacks_missing > 0 || a->in_flight != AZURE_REQUEST_NONE ||
            a->retry_pending || a->base.shutting_down)
                return;
        if (a->get_wanted || !a->acked) {
                a->get_wanted = false;
                /* An empty body: the request says it all. */
                r = send_request(a, AZURE_REQUEST_GET, "");
                if (r < 0)
                        log_warning_errno(r, "Failed to ask IoT Hub for the twin, will ask on the "
                                             "next connect");
                return;
        }
        if (!a->wanted)
                return;
        patch = twin_merge_patch_diff(a->acked, a->wanted);
        if (!patch) {
                log_error_errno(-ENOMEM, "Failed to build the reported patch");
                return;
        }
        if (json_object_size(patch) == 0)
                return; /* the hub holds it already */
        text = json_dumps_compact(patch);
        if (!text) {
                log_error_errno(-ENOMEM, "Failed to build the reported patch");
                return;
        }
        r = send_request(a, AZURE_REQUEST_REPORT, text);
        if (r < 0) {
                log_warning_errno(r, "Failed to send the reported properties, will send them on "
                                     "the next connect");
                return;
        }
        a->sent = json_incref(a->wanted);
        log_debug("Sent reported patch (request %" PRIu64 "): %s", a->rid, text);
}

/* What the hub would refuse is never sent: it would only come back as a 400. */
static int check_mapped(AzureDialect *a, const json_t *wanted, char *err, size_t errlen)
{
        _cleanup_free_ char *text = json_dumps_compact(wanted);

        if (!text)
                return -ENOMEM;
        if (strlen(text) > a->limits.max_bytes) {
                snprintf(err, errlen,
                         "the reported properties would be %zu bytes, IoT Hub allows %zu",
                         strlen(text), a->limits.max_bytes);
                return -E2BIG;
        }
        return twin_properties_validate(wanted, &twin_limits_azure, err, errlen);
}

static int azure_check_reported(TwinDialect *d, const json_t *reported, char *err, size_t errlen)
{
        _cleanup_json_ json_t *wanted = dialect_map_reported(reported, azure(d)->status_property);

        if (!wanted)
                return -ENOMEM;
        return check_mapped(azure(d), wanted, err, errlen);
}

/* Checked by twin_dialect_check_reported() first. */
static int azure_publish_reported(TwinDialect *d, const json_t *reported)
{
        AzureDialect *a = azure(d);
        json_t *wanted = dialect_map_reported(reported, a->status_property);

        if (!wanted)
                return -ENOMEM;
        json_decref(a->wanted);
        a->wanted = wanted;
        if (!a->connected)
                return -ENOTCONN;
        azure_pump(a);
        return 0;
}

/* ---- answers -------------------------------------------------------------------------------- */

/* Reads NAME=number from a topic's query string ("?$rid=7&$version=3"). */
static bool query_number(const char *topic, const char *name, uint64_t *ret)
{
        const char *q = strchr(topic, '?');
        size_t n = strlen(name);

        for (const char *p = q; p; p = strchr(p + 1, '&')) {
                if (strncmp(p + 1, name, n) == 0 && p[1 + n] == '=') {
                        char *end;
                        unsigned long long v;

                        errno = 0;
                        v = strtoull(p + 2 + n, &end, 10);
                        if (errno || end == p + 2 + n || (*end && *end != '&'))
                                return false;
                        *ret = v;
                        return true;
                }
        }
        return false;
}

/* The hub's error message from an answer body, for people: sanitised and cut short. */
static void error_text(const void *payload, size_t len, char *buf, size_t size)
{
        _cleanup_json_ json_t *body = len > 0 ? json_loadb(payload, len, 0, NULL) : NULL;
        const char *msg = json_string_value(json_object_get(body, "message"));
        json_t *code = json_object_get(body, "errorCode");

        if (msg && json_is_integer(code))
                snprintf(buf, size, "%.300s (errorCode %" JSON_INTEGER_FORMAT ")", msg,
                         json_integer_value(code));
        else if (msg)
                snprintf(buf, size, "%.300s", msg);
        else
                snprintf(buf, size, "no message");
        utf8_sanitize_line(buf);
}

/* Drops the '$' members ($version, $metadata) of a twin section, in place. */
static void drop_dollar_keys(json_t *o)
{
        const char *key;
        json_t *v;
        void *tmp;

        json_object_foreach_safe (o, tmp, key, v)
                if (key[0] == '$')
                        json_object_del(o, key);
}

static void emit_desired(AzureDialect *a)
{
        _cleanup_free_ char *text = json_dumps_compact(a->desired);

        if (!text) {
                log_error_errno(-ENOMEM, "Failed to hand over the desired properties");
                return;
        }
        dialect_emit_desired(&a->base, text, strlen(text));
}

static void handle_twin(AzureDialect *a, const void *payload, size_t len)
{
        _cleanup_json_ json_t *twin = json_loadb(payload, len, 0, NULL);
        json_t *desired = json_object_get(twin, "desired");
        json_t *reported = json_object_get(twin, "reported");
        json_t *version = json_object_get(desired, "$version");

        if (!json_is_object(desired) || !json_is_object(reported) || !json_is_integer(version)) {
                dialect_emit_problem(&a->base, -EPROTO,
                                     "IoT Hub answered the twin GET with something that is not a "
                                     "twin (desired, reported, $version)");
                return;
        }
        json_incref(version);
        drop_dollar_keys(desired);
        json_object_set_new(desired, "$version", version);
        json_decref(a->desired);
        a->desired = json_incref(desired);
        drop_dollar_keys(reported);
        json_decref(a->acked);
        a->acked = json_incref(reported);
        log_debug("IoT Hub twin: desired $version %" JSON_INTEGER_FORMAT,
                  json_integer_value(version));
        emit_desired(a);
}

static void handle_response(AzureDialect *a, const char *topic, const void *payload, size_t len)
{
        const char *p = topic + strlen(TOPIC_RESPONSE);
        enum AzureRequest kind = a->in_flight;
        uint64_t rid = 0, version = 0;
        char *end, msg[400];
        long status;

        status = strtol(p, &end, 10);
        if (end == p || *end != '/' || !query_number(topic, "$rid", &rid)) {
                log_debug("Ignoring a twin answer on %s", topic);
                return;
        }
        if (kind == AZURE_REQUEST_NONE || rid != a->in_flight_rid) {
                log_debug("Ignoring the answer to twin request %" PRIu64 " (none or another in "
                          "flight)",
                          rid);
                return;
        }
        a->in_flight = AZURE_REQUEST_NONE;
        uv_timer_stop(a->request_timer);

        if (status == 429 || status >= 500) {
                error_text(payload, len, msg, sizeof(msg));
                if (kind == AZURE_REQUEST_GET)
                        a->get_wanted = true;
                json_decref(TAKE_PTR(a->sent));
                char what[512];
                snprintf(what, sizeof(what), "answered the twin %s with %ld: %s",
                         kind == AZURE_REQUEST_GET ? "GET" : "reported PATCH", status, msg);
                retry_later(a, what);
                return;
        }
        if (status < 200 || status >= 300) {
                error_text(payload, len, msg, sizeof(msg));
                if (kind == AZURE_REQUEST_REPORT) {
                        /* Not retried: the same content would be refused again. A newer report
                         * is sent as usual, diffed against what the hub last took. */
                        dialect_emit_problem(&a->base, -EINVAL,
                                             "IoT Hub refused the reported properties: %ld %s",
                                             status, msg);
                        json_decref(TAKE_PTR(a->sent));
                        json_decref(TAKE_PTR(a->wanted));
                } else
                        dialect_emit_problem(&a->base, -EPROTO,
                                             "IoT Hub refused the twin GET: %ld %s", status, msg);
                a->retries = 0;
                return;
        }

        a->retries = 0;
        if (kind == AZURE_REQUEST_GET)
                handle_twin(a, payload, len);
        else {
                json_decref(a->acked);
                a->acked = TAKE_PTR(a->sent);
                if (query_number(topic, "$version", &version))
                        log_debug(
                            "IoT Hub took the reported properties: reported $version %" PRIu64,
                            version);
        }
        azure_pump(a);
}

static void handle_desired_patch(AzureDialect *a, const char *topic, const void *payload,
                                 size_t len)
{
        _cleanup_json_ json_t *patch = json_loadb(payload, len, 0, NULL);
        json_t *v = json_object_get(patch, "$version");
        int64_t have, version;

        if (!json_is_object(patch) || !json_is_integer(v)) {
                log_warning("IoT Hub sent a desired patch without a readable $version, fetching "
                            "the twin");
                a->get_wanted = true;
                azure_pump(a);
                return;
        }
        version = json_integer_value(v);
        if (!a->desired) {
                /* The GET of this connection is on its way and holds this change already. */
                log_debug("Desired patch $version %" PRId64 " before the twin; the GET has it",
                          version);
                return;
        }
        have = twin_document_version(a->desired);
        if (version <= have) {
                log_debug("Ignoring desired patch $version %" PRId64 " (have %" PRId64 ")", version,
                          have);
                return;
        }
        if (version != have + 1) {
                log_info("Desired patch $version %" PRId64 " after %" PRId64
                         ": missed a change, fetching the twin",
                         version, have);
                a->get_wanted = true;
                azure_pump(a);
                return;
        }
        json_object_del(patch, "$version");
        if (twin_merge_patch(a->desired, patch) < 0) {
                log_error_errno(-ENOMEM, "Failed to merge the desired patch; fetching the twin");
                a->get_wanted = true;
                azure_pump(a);
                return;
        }
        json_object_set_new(a->desired, "$version", json_integer(version));
        emit_desired(a);
}

static void azure_message(TwinDialect *d, const char *topic, const void *payload, size_t len,
                          bool retained)
{
        AzureDialect *a = azure(d);

        if (strncmp(topic, TOPIC_RESPONSE, strlen(TOPIC_RESPONSE)) == 0)
                handle_response(a, topic, payload, len);
        else if (strncmp(topic, TOPIC_DESIRED_PATCH, strlen(TOPIC_DESIRED_PATCH)) == 0)
                handle_desired_patch(a, topic, payload, len);
        else
                log_debug("Ignoring a message on %s", topic);
}

/* ---- configuration and life cycle ------------------------------------------------------- */

/* Reads and parses the connection string that c names. */
static int read_connection_string(const TwindConfig *c, AzureConnectionString *ret, char *err,
                                  size_t errlen)
{
        char *text = NULL, reason[256], where[600];
        int r;

        r = twind_config_read_secret(c, TWIND_KEY_AZURE_CONNECTION_STRING_FILE,
                                     "connection string file", &text, reason, sizeof(reason));
        if (r < 0) {
                snprintf(err, errlen, "%s: %s",
                         twind_config_where(c, TWIND_KEY_AZURE_CONNECTION_STRING_FILE, where,
                                            sizeof(where)),
                         reason);
                return r;
        }
        r = azure_connection_string_parse(text, AZURE_CONNECTION_STRING_DEVICE, ret, reason,
                                          sizeof(reason));
        secret_free(text);
        if (r < 0)
                snprintf(err, errlen, "connection string in %s: %s",
                         c->azure_connection_string_file, reason);
        return r;
}

static int azure_prepare_config(TwindConfig *c, char *err, size_t errlen)
{
        _cleanup_(azure_connection_string_done) AzureConnectionString cs = { 0 };
        char where[600];
        int r;

        r = read_connection_string(c, &cs, err, errlen);
        if (r < 0)
                return r;
        if (c->device_id && c->device_id[0] && strcmp(c->device_id, cs.device_id) != 0) {
                snprintf(err, errlen,
                         "%s: '%s' is not the DeviceId '%s' of the connection string in %s",
                         twind_config_where(c, TWIND_KEY_DEVICE_ID, where, sizeof(where)),
                         c->device_id, cs.device_id, c->azure_connection_string_file);
                return -EINVAL;
        }
        if (cs.x509 && (!c->certfile || !c->keyfile)) {
                snprintf(err, errlen,
                         "connection string in %s: x509=true needs [broker] certfile and keyfile",
                         c->azure_connection_string_file);
                return -EINVAL;
        }
        return twind_config_set_string(&c->device_id, cs.device_id);
}

static void on_timer_closed(uv_handle_t *h)
{
        free(h);
}

static void azure_free(TwinDialect *d)
{
        AzureDialect *a = azure(d);

        azure_connection_string_done(&a->cs);
        free(a->status_property);
        json_decref(a->sent);
        json_decref(a->desired);
        json_decref(a->acked);
        json_decref(a->wanted);
        if (a->request_timer)
                uv_close((uv_handle_t *)a->request_timer, on_timer_closed);
        if (a->renew_timer)
                uv_close((uv_handle_t *)a->renew_timer, on_timer_closed);
        free(a);
}

static int azure_new(TwinDialect **ret, const TwinDialectSetup *setup, char *err, size_t errlen)
{
        const TwindConfig *c = setup->config;
        _cleanup_free_ char *url = NULL, *client_id = NULL;
        char keepalive[16], lifetime[32];
        AzureDialect *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        dialect_init(&a->base, &twind_dialect_azure, setup);
        a->limits = twin_limits_azure;
        a->token_lifetime_ms = c->azure_token_lifetime_usec / 1000;
        a->status_property = strdup(c->azure_status_property);
        a->request_timer = malloc(sizeof(*a->request_timer));
        a->renew_timer = malloc(sizeof(*a->renew_timer));
        if (!a->status_property || !a->request_timer || !a->renew_timer) {
                free(a->request_timer);
                free(a->renew_timer);
                a->request_timer = a->renew_timer = NULL;
                r = -ENOMEM;
                goto fail;
        }
        uv_timer_init(setup->loop, a->request_timer);
        uv_timer_init(setup->loop, a->renew_timer);
        a->request_timer->data = a->renew_timer->data = a;
        /* The agent's status goes into this reported property: a desired one of that name
         * would be overwritten by it. */
        a->limits.reserved_key = a->status_property;
        a->base.limits = &a->limits;

        r = read_connection_string(c, &a->cs, err, errlen);
        if (r < 0)
                goto fail;
        if (asprintf(&url, "mqtts://%s:%d", azure_connection_string_connect_host(&a->cs),
                     a->cs.gateway_port ? a->cs.gateway_port : AZURE_PORT) < 0 ||
            asprintf(&client_id, "%s%s%s", a->cs.device_id, a->cs.module_id ? "/" : "",
                     a->cs.module_id ? a->cs.module_id : "") < 0) {
                url = client_id = NULL;
                r = -ENOMEM;
                goto fail;
        }

        MqttClientOptions mo = {
                .url = url,
                .client_id = client_id,
                /* The user name comes with each attempt's token, from azure_credentials(). */
                .cafile = c->cafile,
                .certfile = a->cs.x509 ? c->certfile : NULL,
                .keyfile = a->cs.x509 ? c->keyfile : NULL,
                .keepalive = (int)c->keepalive,
                .reconnect = true,
        };
        r = dialect_client_new(&a->base, &mo, err, errlen);
        if (r < 0)
                goto fail;

        snprintf(keepalive, sizeof(keepalive), "%u", c->keepalive);
        snprintf(lifetime, sizeof(lifetime), "%" PRIu64, a->token_lifetime_ms);
        r = dialect_set_fingerprint(
            &a->base, 12,
            (const char *const[]){
                a->cs.host_name, a->cs.device_id, a->cs.module_id, a->cs.shared_access_key, url,
                a->cs.x509 ? "x509" : "sas", c->cafile, a->cs.x509 ? c->certfile : NULL,
                a->cs.x509 ? c->keyfile : NULL, keepalive, lifetime, a->status_property });
        if (r < 0)
                goto fail;
        *ret = &a->base;
        return 0;
fail:
        twin_dialect_free(&a->base);
        return r;
}

const TwinDialectImpl twind_dialect_azure = {
        .name = "azure",
        .limits = &twin_limits_azure,
        .prepare_config = azure_prepare_config,
        .new = azure_new,
        .connected = azure_connected,
        .disconnected = azure_disconnected,
        .message = azure_message,
        .subscribed = azure_subscribed,
        .credentials = azure_credentials,
        .check_reported = azure_check_reported,
        .publish_reported = azure_publish_reported,
        .free = azure_free,
};
