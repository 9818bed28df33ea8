/* SPDX-License-Identifier: MIT */
/*
 * The AWS IoT Device Shadow dialect: the thing's classic or named shadow over MQTT 3.1.1 and
 * mutual TLS, as docs/protocol.md, "AWS IoT Device Shadow", describes it.
 *
 * Every connect subscribes to the answers of get and update and to update/documents, and once
 * the SUBACKs are in, GETs the shadow. The desired document the agent acts on is
 * state.desired with, as its $version, the shadow version at which state.desired last
 * changed: the shadow version grows with every update, the device's own reports included, so
 * the current version would make every report look like a new request. That version is seen
 * in update/documents (current.version when desired differs from previous) and, across
 * restarts, kept in the agent's state file (the dialect's memory: the version and a digest of
 * the desired state it names). Reports are updates of state.reported as merge patches against
 * the shadow's reported state, one in flight, matched by clientToken.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "json-util.h"
#include "log.h"
#include "twin-model.h"
#include "twind-dialect-impl.h"
#include "utf8.h"

#define REQUEST_TIMEOUT_MS 30000
#define RETRY_FIRST_MS     1000
#define RETRY_MAX_MS       60000
#define CLIENT_TOKEN_MAX   64

enum AwsRequest {
        AWS_REQUEST_NONE,
        AWS_REQUEST_GET,
        AWS_REQUEST_REPORT,
};

typedef struct AwsDialect {
        TwinDialect base;
        TwinLimits limits; /* AWS's, with the status property reserved */
        char *thing, *shadow;
        char *prefix; /* $aws/things/{thing}/shadow[/name/{shadow}] */
        char *topic_get_accepted, *topic_get_rejected;
        char *topic_update_accepted, *topic_update_rejected, *topic_documents;
        char *status_property;
        char token_prefix[24]; /* "twind-XXXXXXXX-": this agent's client tokens */

        bool connected;
        unsigned subacks_missing;
        bool get_wanted;
        enum AwsRequest in_flight;
        uint64_t counter;
        char in_flight_token[CLIENT_TOKEN_MAX + 1];
        json_t *sent; /* the reported state of the update in flight */

        json_t *desired;         /* state.desired as last seen (without $version); NULL: none */
        int64_t desired_version; /* the shadow version at which it last changed; -1 unknown */
        /* From the state file: the version that named this digest of state.desired. */
        int64_t remembered_version;
        char remembered_digest[TWIN_DIGEST_STRING_SIZE];
        json_t *acked;  /* state.reported as the shadow holds it; NULL before a GET */
        json_t *wanted; /* the newest reported state the agent asked for */
        unsigned retries;

        uv_timer_t *request_timer;
        bool retry_pending;
} AwsDialect;

static AwsDialect *aws(TwinDialect *d)
{
        return (AwsDialect *)d;
}

static void aws_pump(AwsDialect *a);

/* ---- desired, and the version that names it ------------------------------------------------ */

static int desired_digest(const json_t *desired, char digest[static TWIN_DIGEST_STRING_SIZE])
{
        _cleanup_json_ json_t *empty = desired ? NULL : json_object();

        if (!desired && !empty)
                return -ENOMEM;
        return twin_document_digest(desired ? desired : empty, digest);
}

/* Remembers (in the agent's state file) which shadow version named this desired state. */
static void remember_desired(AwsDialect *a)
{
        char digest[TWIN_DIGEST_STRING_SIZE];
        _cleanup_json_ json_t *memory = NULL;

        if (desired_digest(a->desired, digest) < 0)
                return;
        memory =
            json_pack("{s:s, s:s?, s:I, s:s}", "thing", a->thing, "shadow", a->shadow,
                      "desiredVersion", (json_int_t)a->desired_version, "desiredDigest", digest);
        if (memory)
                dialect_remember(&a->base, memory);
}

/* Hands state.desired over to the agent, or says the desired state is gone. */
static void emit_desired(AwsDialect *a)
{
        _cleanup_json_ json_t *doc = NULL;
        _cleanup_free_ char *text = NULL;

        if (!a->desired || json_object_size(a->desired) == 0) {
                /* A shadow without desired state asks for nothing: what runs stays. */
                dialect_emit_desired_removed(&a->base);
                return;
        }
        doc = json_deep_copy(a->desired);
        if (!doc || json_object_set_new(doc, "$version", json_integer(a->desired_version)) < 0 ||
            !(text = json_dumps_compact(doc))) {
                log_error_errno(-ENOMEM, "Failed to hand over the desired state");
                return;
        }
        dialect_emit_desired(&a->base, text, strlen(text));
}

static bool same_desired(const json_t *a, const json_t *b)
{
        return a && b ? json_equal(a, b) : a == b;
}

/* A new view of state.desired at shadow version: when it differs from the one known, version
 * is where it changed. */
static void desired_seen(AwsDialect *a, const json_t *desired, int64_t version)
{
        char digest[TWIN_DIGEST_STRING_SIZE];

        if (!json_is_object(desired) || json_object_size(desired) == 0)
                desired = NULL;
        if (a->desired_version >= 0 && same_desired(desired, a->desired)) {
                emit_desired(a); /* unchanged: the agent sees a redelivery */
                return;
        }
        json_decref(a->desired);
        a->desired = desired ? json_deep_copy(desired) : NULL;
        /* The first view after a start: the same desired state as before it keeps the version
         * that named it then, though reports have moved the shadow's version since. */
        if (a->desired_version < 0 && a->remembered_version >= 0 &&
            desired_digest(a->desired, digest) == 0 && strcmp(digest, a->remembered_digest) == 0) {
                a->desired_version = a->remembered_version;
                emit_desired(a);
                return;
        }
        a->desired_version = version;
        remember_desired(a);
        emit_desired(a);
}

/* ---- the connection ------------------------------------------------------------------------ */

static void request_stop(AwsDialect *a)
{
        a->in_flight = AWS_REQUEST_NONE;
        a->retry_pending = false;
        a->in_flight_token[0] = '\0';
        uv_timer_stop(a->request_timer);
}

static void aws_connected(TwinDialect *d)
{
        AwsDialect *a = aws(d);
        const char *topics[] = {
                a->topic_get_accepted,    a->topic_get_rejected, a->topic_update_accepted,
                a->topic_update_rejected, a->topic_documents,
        };
        int r;

        a->connected = true;
        a->subacks_missing = 0;
        a->get_wanted = true;
        a->retries = 0;
        request_stop(a);
        json_decref(TAKE_PTR(a->sent));
        json_decref(TAKE_PTR(a->acked));
        for (size_t i = 0; i < ARRAY_SIZE(topics); i++) {
                r = dialect_subscribe(d, topics[i], 1, NULL);
                if (r < 0) {
                        log_warning_errno(r, "Failed to subscribe to %s, ignoring", topics[i]);
                        continue;
                }
                a->subacks_missing++;
        }
}

static void aws_disconnected(TwinDialect *d)
{
        AwsDialect *a = aws(d);

        a->connected = false;
        request_stop(a);
        json_decref(TAKE_PTR(a->sent));
}

static void aws_subscribed(TwinDialect *d, int mid, bool granted)
{
        AwsDialect *a = aws(d);

        if (a->subacks_missing > 0 && --a->subacks_missing == 0)
                aws_pump(a);
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
        return ms / 2 + rnd % (ms / 2 + 1);
}

static void on_request_timer(uv_timer_t *t)
{
        AwsDialect *a = t->data;

        if (a->retry_pending) {
                a->retry_pending = false;
                aws_pump(a);
                return;
        }
        if (a->in_flight == AWS_REQUEST_NONE)
                return;
        log_warning("AWS IoT did not answer the shadow %s (%s) in %d s, asking again",
                    a->in_flight == AWS_REQUEST_GET ? "get" : "update", a->in_flight_token,
                    REQUEST_TIMEOUT_MS / 1000);
        if (a->in_flight == AWS_REQUEST_GET)
                a->get_wanted = true;
        a->in_flight = AWS_REQUEST_NONE;
        a->in_flight_token[0] = '\0';
        json_decref(TAKE_PTR(a->sent));
        aws_pump(a);
}

static void retry_later(AwsDialect *a, const char *what)
{
        uint64_t ms = retry_delay_ms(a->retries);

        if (a->retries < 1000)
                a->retries++;
        log_warning("AWS IoT %s; trying again in %.1f s", what, (double)ms / 1000.0);
        a->retry_pending = true;
        uv_timer_start(a->request_timer, on_request_timer, ms, 0);
}

static int send_request(AwsDialect *a, enum AwsRequest kind, json_t *body)
{
        _cleanup_free_ char *topic = NULL, *text = NULL;
        char token[CLIENT_TOKEN_MAX + 1];
        int r;

        snprintf(token, sizeof(token), "%s%" PRIu64, a->token_prefix, ++a->counter);
        if (json_object_set_new(body, "clientToken", json_string(token)) < 0)
                return -ENOMEM;
        text = json_dumps_compact(body);
        if (!text ||
            asprintf(&topic, "%s/%s", a->prefix, kind == AWS_REQUEST_GET ? "get" : "update") < 0) {
                topic = NULL;
                return -ENOMEM;
        }
        r = mqtt_client_publish(a->base.client, topic, text, strlen(text), 1, false, NULL);
        if (r < 0)
                return r;
        a->in_flight = kind;
        snprintf(a->in_flight_token, sizeof(a->in_flight_token), "%s", token);
        uv_timer_start(a->request_timer, on_request_timer, REQUEST_TIMEOUT_MS, 0);
        return 0;
}

static void aws_pump(AwsDialect *a)
{
        _cleanup_json_ json_t *patch = NULL, *body = NULL;
        int r;

        if (!a->connected || a->subacks_missing > 0 || a->in_flight != AWS_REQUEST_NONE ||
            a->retry_pending || a->base.shutting_down)
                return;
        if (a->get_wanted || !a->acked) {
                a->get_wanted = false;
                body = json_object();
                r = body ? send_request(a, AWS_REQUEST_GET, body) : -ENOMEM;
                if (r < 0)
                        log_warning_errno(r, "Failed to ask AWS IoT for the shadow, will ask on "
                                             "the next connect");
                return;
        }
        if (!a->wanted)
                return;
        patch = twin_merge_patch_diff(a->acked, a->wanted);
        if (!patch) {
                log_error_errno(-ENOMEM, "Failed to build the shadow update");
                return;
        }
        if (json_object_size(patch) == 0)
                return;
        body = json_pack("{s:{s:O}}", "state", "reported", patch);
        r = body ? send_request(a, AWS_REQUEST_REPORT, body) : -ENOMEM;
        if (r < 0) {
                log_warning_errno(r, "Failed to send the shadow update, will send it on the next "
                                     "connect");
                return;
        }
        a->sent = json_incref(a->wanted);
}

/* The shadow's 8 KB hold desired and reported together: never send what it refuses. */
static int check_mapped(AwsDialect *a, const json_t *wanted, char *err, size_t errlen)
{
        _cleanup_json_ json_t *state =
            json_pack("{s:O?, s:O}", "desired", a->desired, "reported", wanted);
        _cleanup_free_ char *text = state ? json_dumps_compact(state) : NULL;

        if (!text)
                return -ENOMEM;
        if (strlen(text) > TWIN_AWS_STATE_MAX_BYTES) {
                snprintf(err, errlen, "the shadow would hold %zu bytes of state, AWS IoT allows %d",
                         strlen(text), TWIN_AWS_STATE_MAX_BYTES);
                return -E2BIG;
        }
        return twin_properties_validate(wanted, &twin_limits_aws, err, errlen);
}

static int aws_check_reported(TwinDialect *d, const json_t *reported, char *err, size_t errlen)
{
        _cleanup_json_ json_t *wanted = dialect_map_reported(reported, aws(d)->status_property);

        if (!wanted)
                return -ENOMEM;
        return check_mapped(aws(d), wanted, err, errlen);
}

/* Checked by twin_dialect_check_reported() first. */
static int aws_publish_reported(TwinDialect *d, const json_t *reported)
{
        AwsDialect *a = aws(d);
        json_t *wanted = dialect_map_reported(reported, a->status_property);

        if (!wanted)
                return -ENOMEM;
        json_decref(a->wanted);
        a->wanted = wanted;
        if (!a->connected)
                return -ENOTCONN;
        aws_pump(a);
        return 0;
}

/* ---- answers -------------------------------------------------------------------------------- */

static void error_text(const json_t *body, char *buf, size_t size)
{
        const char *msg = json_string_value(json_object_get(body, "message"));

        snprintf(buf, size, "%.300s", msg ? msg : "no message");
        utf8_sanitize_line(buf);
}

/* Whether an answer is to the request in flight (by its clientToken). */
static bool answers_in_flight(AwsDialect *a, const json_t *body, enum AwsRequest kind)
{
        const char *token = json_string_value(json_object_get(body, "clientToken"));

        return a->in_flight == kind && token && strcmp(token, a->in_flight_token) == 0;
}

static void answered(AwsDialect *a)
{
        a->in_flight = AWS_REQUEST_NONE;
        a->in_flight_token[0] = '\0';
        uv_timer_stop(a->request_timer);
}

static void handle_get_accepted(AwsDialect *a, json_t *body)
{
        json_t *state = json_object_get(body, "state");
        json_t *version = json_object_get(body, "version");
        json_t *reported = json_object_get(state, "reported");

        if (!answers_in_flight(a, body, AWS_REQUEST_GET))
                return;
        answered(a);
        a->retries = 0;
        if (!json_is_integer(version)) {
                dialect_emit_problem(&a->base, -EPROTO,
                                     "AWS IoT answered the shadow get without a version");
                return;
        }
        json_decref(a->acked);
        a->acked = json_is_object(reported) ? json_deep_copy(reported) : json_object();
        desired_seen(a, json_object_get(state, "desired"), json_integer_value(version));
        aws_pump(a);
}

static void handle_rejected(AwsDialect *a, json_t *body, enum AwsRequest kind)
{
        json_t *code = json_object_get(body, "code");
        long c = json_is_integer(code) ? (long)json_integer_value(code) : 0;
        char msg[400], what[512];

        if (!answers_in_flight(a, body, kind))
                return;
        answered(a);
        error_text(body, msg, sizeof(msg));

        if (kind == AWS_REQUEST_GET && c == 404) {
                /* No shadow yet: nothing desired, nothing reported. */
                a->retries = 0;
                json_decref(a->acked);
                a->acked = json_object();
                desired_seen(a, NULL, 0);
                aws_pump(a);
                return;
        }
        if (c == 429 || c >= 500 || c == 409) {
                /* A version conflict means the shadow moved under the update: read it again. */
                if (kind == AWS_REQUEST_GET || c == 409)
                        a->get_wanted = true;
                json_decref(TAKE_PTR(a->sent));
                snprintf(what, sizeof(what), "answered the shadow %s with %ld: %s",
                         kind == AWS_REQUEST_GET ? "get" : "update", c, msg);
                retry_later(a, what);
                return;
        }
        a->retries = 0;
        if (kind == AWS_REQUEST_REPORT) {
                dialect_emit_problem(&a->base, -EINVAL,
                                     "AWS IoT refused the reported state: %ld %s", c, msg);
                json_decref(TAKE_PTR(a->sent));
                json_decref(TAKE_PTR(a->wanted));
        } else
                dialect_emit_problem(&a->base, -EPROTO, "AWS IoT refused the shadow get: %ld %s", c,
                                     msg);
}

static void handle_update_accepted(AwsDialect *a, json_t *body)
{
        if (!answers_in_flight(a, body, AWS_REQUEST_REPORT))
                return;
        answered(a);
        a->retries = 0;
        /* update/documents has the whole reported state; until it comes, what was sent is what
         * the shadow holds. */
        json_decref(a->acked);
        a->acked = TAKE_PTR(a->sent);
        aws_pump(a);
}

static void handle_documents(AwsDialect *a, json_t *body)
{
        json_t *current = json_object_get(body, "current");
        json_t *version = json_object_get(current, "version");
        json_t *state = json_object_get(current, "state");
        json_t *reported = json_object_get(state, "reported");

        if (!json_is_object(current) || !json_is_integer(version))
                return;
        /* The shadow as it is now; while a report is in flight, its answer settles acked. */
        if (a->in_flight != AWS_REQUEST_REPORT && a->acked) {
                json_decref(a->acked);
                a->acked = json_is_object(reported) ? json_deep_copy(reported) : json_object();
        }
        if (a->desired_version < 0)
                return; /* the GET of this connection tells the first version */
        desired_seen(a, json_object_get(state, "desired"), json_integer_value(version));
        aws_pump(a);
}

static void aws_message(TwinDialect *d, const char *topic, const void *payload, size_t len,
                        bool retained)
{
        AwsDialect *a = aws(d);
        _cleanup_json_ json_t *body = json_loadb(payload, len, 0, NULL);

        if (!json_is_object(body)) {
                log_warning("AWS IoT sent something that is not a JSON object on %s, ignoring",
                            topic);
                return;
        }
        if (strcmp(topic, a->topic_get_accepted) == 0)
                handle_get_accepted(a, body);
        else if (strcmp(topic, a->topic_get_rejected) == 0)
                handle_rejected(a, body, AWS_REQUEST_GET);
        else if (strcmp(topic, a->topic_update_accepted) == 0)
                handle_update_accepted(a, body);
        else if (strcmp(topic, a->topic_update_rejected) == 0)
                handle_rejected(a, body, AWS_REQUEST_REPORT);
        else if (strcmp(topic, a->topic_documents) == 0)
                handle_documents(a, body);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
        free(h);
}

static void aws_free(TwinDialect *d)
{
        AwsDialect *a = aws(d);

        free(a->thing);
        free(a->shadow);
        free(a->prefix);
        free(a->topic_get_accepted);
        free(a->topic_get_rejected);
        free(a->topic_update_accepted);
        free(a->topic_update_rejected);
        free(a->topic_documents);
        free(a->status_property);
        json_decref(a->sent);
        json_decref(a->desired);
        json_decref(a->acked);
        json_decref(a->wanted);
        if (a->request_timer)
                uv_close((uv_handle_t *)a->request_timer, on_timer_closed);
        free(a);
}

static int make_topic(char **ret, const char *prefix, const char *leaf)
{
        if (asprintf(ret, "%s/%s", prefix, leaf) < 0) {
                *ret = NULL;
                return -ENOMEM;
        }
        return 0;
}

/* What the memory says about this shadow: the version that named its desired state. */
static void recall(AwsDialect *a, const json_t *memory)
{
        const char *thing = json_string_value(json_object_get(memory, "thing"));
        const char *shadow = json_string_value(json_object_get(memory, "shadow"));
        const char *digest = json_string_value(json_object_get(memory, "desiredDigest"));
        json_t *version = json_object_get(memory, "desiredVersion");
        bool same_shadow =
            shadow && a->shadow ? strcmp(shadow, a->shadow) == 0 : !shadow && !a->shadow;

        if (!thing || strcmp(thing, a->thing) != 0 || !same_shadow || !json_is_integer(version) ||
            json_integer_value(version) < 0 || !twin_digest_is_valid(digest))
                return;
        a->remembered_version = json_integer_value(version);
        snprintf(a->remembered_digest, sizeof(a->remembered_digest), "%s", digest);
}

static int aws_new(TwinDialect **ret, const TwinDialectSetup *setup, char *err, size_t errlen)
{
        const TwindConfig *c = setup->config;
        char keepalive[16], hex[9];
        uint32_t rnd;
        AwsDialect *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        dialect_init(&a->base, &twind_dialect_aws, setup);
        a->limits = twin_limits_aws;
        a->desired_version = -1;
        a->remembered_version = -1;
        a->thing = strdup(c->aws_thing && c->aws_thing[0] ? c->aws_thing : c->device_id);
        a->shadow = c->aws_shadow && c->aws_shadow[0] ? strdup(c->aws_shadow) : NULL;
        a->status_property = strdup(c->aws_status_property);
        a->request_timer = malloc(sizeof(*a->request_timer));
        if (!a->thing || (c->aws_shadow && c->aws_shadow[0] && !a->shadow) || !a->status_property ||
            !a->request_timer) {
                free(a->request_timer);
                a->request_timer = NULL;
                r = -ENOMEM;
                goto fail;
        }
        uv_timer_init(setup->loop, a->request_timer);
        a->request_timer->data = a;
        a->limits.reserved_key = a->status_property;
        a->base.limits = &a->limits;
        if (uv_random(NULL, NULL, &rnd, sizeof(rnd), 0, NULL) < 0)
                rnd = (uint32_t)uv_hrtime();
        snprintf(hex, sizeof(hex), "%08" PRIx32, rnd);
        snprintf(a->token_prefix, sizeof(a->token_prefix), "twind-%s-", hex);

        if ((a->shadow ? asprintf(&a->prefix, "$aws/things/%s/shadow/name/%s", a->thing, a->shadow)
                       : asprintf(&a->prefix, "$aws/things/%s/shadow", a->thing)) < 0) {
                a->prefix = NULL;
                r = -ENOMEM;
                goto fail;
        }
        if (make_topic(&a->topic_get_accepted, a->prefix, "get/accepted") < 0 ||
            make_topic(&a->topic_get_rejected, a->prefix, "get/rejected") < 0 ||
            make_topic(&a->topic_update_accepted, a->prefix, "update/accepted") < 0 ||
            make_topic(&a->topic_update_rejected, a->prefix, "update/rejected") < 0 ||
            make_topic(&a->topic_documents, a->prefix, "update/documents") < 0) {
                r = -ENOMEM;
                goto fail;
        }
        recall(a, setup->memory);

        /* No will: AWS IoT allows none on its reserved topics, and reports connections itself
         * (lifecycle events). The client id is the device id, as AWS policies expect. */
        MqttClientOptions mo = {
                .url = c->broker_url,
                .client_id = c->device_id,
                .cafile = c->cafile,
                .certfile = c->certfile,
                .keyfile = c->keyfile,
                .keepalive = (int)c->keepalive,
                .reconnect = true,
        };
        r = dialect_client_new(&a->base, &mo, err, errlen);
        if (r < 0)
                goto fail;
        snprintf(keepalive, sizeof(keepalive), "%u", c->keepalive);
        r = dialect_set_fingerprint(
            &a->base, 9,
            (const char *const[]){ c->broker_url, c->cafile, c->certfile, c->keyfile, keepalive,
                                   c->device_id, a->thing, a->shadow, a->status_property });
        if (r < 0)
                goto fail;
        *ret = &a->base;
        return 0;
fail:
        twin_dialect_free(&a->base);
        return r;
}

const TwinDialectImpl twind_dialect_aws = {
        .name = "aws",
        .limits = &twin_limits_aws,
        .new = aws_new,
        .connected = aws_connected,
        .disconnected = aws_disconnected,
        .message = aws_message,
        .subscribed = aws_subscribed,
        .check_reported = aws_check_reported,
        .publish_reported = aws_publish_reported,
        .free = aws_free,
};
