/* SPDX-License-Identifier: MIT */
/*
 * The AWS IoT back end: things' Device Shadows over their MQTT topics (the classic shadow, or
 * --shadow NAME), with mutual TLS, as docs/protocol.md, "AWS IoT Device Shadow", describes
 * them. get GETs each shadow; set updates state.desired, with --if-version as the shadow's own
 * compare-and-set (the request's "version": 409 when it moved); set --wait and watch follow
 * update/documents as it comes, no polling. Listing every thing needs AWS's fleet index (HTTPS
 * with SigV4): only the things named with list --devices are listed.
 *
 * The desired $version a device answers is the shadow version at which state.desired last
 * changed; twinctl follows that version the same way (update/documents), starting from the
 * device's own answer (twinStatus.desiredVersion) when the desired state is the one it answered.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "json-util.h"
#include "log.h"
#include "twin-model.h"
#include "twinctl-backend.h"
#include "twinctl-broker.h"
#include "utf8.h"

#define STATUS_PROPERTY "twinStatus"
#define MAX_THINGS      128

typedef struct Thing {
        char *name;
        char *prefix;            /* $aws/things/{thing}/shadow[/name/{shadow}] */
        json_t *desired;         /* state.desired as last seen, NULL none */
        int64_t desired_version; /* the shadow version at which it last changed; -1 unknown */
        bool answered;           /* its GET was answered */
} Thing;

typedef struct AwsBackend {
        TwinBackend base;
        const TwinctlArgs *args;
        BrokerSession *session;
        json_t *map;
        Thing things[MAX_THINGS];
        size_t n_things;
        char token_prefix[32];
        uint64_t counter;

        /* The one update (set) or delete in flight. */
        char set_token[64];
        bool set_done;
        long set_code; /* 0 accepted, else the error code */
        char set_message[256];
        int64_t set_version;
        bool acknowledged;

        TwinBackendChangeFunc on_change;
        void *userdata;
} AwsBackend;

static AwsBackend *aws(TwinBackend *b)
{
        return (AwsBackend *)b;
}

static Thing *thing_of_topic(AwsBackend *a, const char *topic, const char **ret_rest)
{
        for (size_t i = 0; i < a->n_things; i++) {
                size_t n = strlen(a->things[i].prefix);

                if (strncmp(topic, a->things[i].prefix, n) == 0 && topic[n] == '/') {
                        *ret_rest = topic + n + 1;
                        return &a->things[i];
                }
        }
        return NULL;
}

/* The normalised reported document: the status property as $status. */
static json_t *normal_reported(const json_t *reported, int64_t version)
{
        _cleanup_json_ json_t *r = json_is_object(reported) ? json_deep_copy(reported) : NULL;
        json_t *status;

        if (!r)
                return NULL;
        status = json_object_get(r, STATUS_PROPERTY);
        if (status) {
                json_object_set(r, "$status", status);
                json_object_del(r, STATUS_PROPERTY);
        }
        json_object_set_new(r, "$version", json_integer(version));
        return TAKE_PTR(r);
}

/* Stores one kind of document of thing t in the map and tells of the change. */
static void learn(AwsBackend *a, Thing *t, enum DeviceKind kind, json_t *doc)
{
        json_t *entry = json_object_get(a->map, t->name), *old;

        if (!entry) {
                entry = device_entry_new();
                if (!entry || json_object_set_new(a->map, t->name, entry) < 0) {
                        json_decref(doc);
                        return;
                }
        }
        old = device_entry_get(entry, kind);
        if (doc ? json_equal(old, doc) : !old) {
                json_decref(doc);
                return;
        }
        if (device_entry_set(entry, kind, doc) < 0)
                return;
        if (a->on_change)
                a->on_change(&a->base, t->name, kind, entry, a->userdata);
}

/* A view of the shadow at version: state.desired names its version as the device does. */
static void shadow_seen(AwsBackend *a, Thing *t, const json_t *state, int64_t version,
                        bool from_get)
{
        json_t *desired = json_object_get(state, "desired");
        json_t *reported = json_object_get(state, "reported");

        if (!json_is_object(desired) || json_object_size(desired) == 0)
                desired = NULL;
        if (t->desired_version < 0 ||
            !(desired ? t->desired && json_equal(desired, t->desired) : !t->desired)) {
                int64_t v = version;
                json_t *st = json_object_get(reported, STATUS_PROPERTY);
                json_t *dv = json_object_get(st, "desiredVersion");

                /* From a GET the change may lie behind reports (a pending status, properties
                 * the device reports itself): when the device's status answers this very
                 * desired state (the same configId, or without one the properties it runs),
                 * that answer names the version. */
                if (from_get && desired && json_is_integer(dv)) {
                        _cleanup_json_ json_t *all = normal_reported(reported, 0);
                        _cleanup_json_ json_t *runs =
                            all ? device_reported_properties(all, false) : NULL;
                        json_t *id = twin_config_id(desired);

                        if (id ? json_equal(id, json_object_get(st, "configId"))
                               : runs && twin_properties_equal(desired, runs))
                                v = json_integer_value(dv);
                }
                json_decref(t->desired);
                t->desired = desired ? json_deep_copy(desired) : NULL;
                t->desired_version = v;
        }
        if (t->desired) {
                json_t *doc = json_deep_copy(t->desired);

                if (doc)
                        json_object_set_new(doc, "$version", json_integer(t->desired_version));
                learn(a, t, DEVICE_KIND_DESIRED, doc);
        } else
                learn(a, t, DEVICE_KIND_DESIRED, NULL);
        learn(a, t, DEVICE_KIND_REPORTED,
              json_is_object(reported) ? normal_reported(reported, version) : NULL);
}

static const char *message_of(const json_t *body)
{
        const char *m = json_string_value(json_object_get(body, "message"));

        return m ? m : "?";
}

static bool our_token(const AwsBackend *a, const json_t *body, const char *token)
{
        const char *t = json_string_value(json_object_get(body, "clientToken"));

        return t && strcmp(t, token) == 0;
}

static void on_message(BrokerSession *s, const char *topic, const void *payload, size_t len,
                       void *userdata)
{
        AwsBackend *a = userdata;
        _cleanup_json_ json_t *body = json_loadb(payload, len, 0, NULL);
        const char *rest = NULL;
        Thing *t = thing_of_topic(a, topic, &rest);
        json_t *version;

        if (!t || !json_is_object(body))
                return;
        version = json_object_get(body, "version");
        if (strcmp(rest, "get/accepted") == 0 && json_is_integer(version)) {
                t->answered = true;
                shadow_seen(a, t, json_object_get(body, "state"), json_integer_value(version),
                            true);
        } else if (strcmp(rest, "get/rejected") == 0) {
                t->answered = true;
                if (json_integer_value(json_object_get(body, "code")) != 404) {
                        char msg[256];

                        snprintf(msg, sizeof(msg), "%.200s", message_of(body));
                        utf8_sanitize_line(msg);
                        log_warning(
                            "AWS IoT refused the shadow get of %s: %" JSON_INTEGER_FORMAT " %s",
                            t->name, json_integer_value(json_object_get(body, "code")), msg);
                }
        } else if (strcmp(rest, "update/documents") == 0) {
                json_t *current = json_object_get(body, "current");
                json_t *cv = json_object_get(current, "version");

                if (json_is_integer(cv))
                        shadow_seen(a, t, json_object_get(current, "state"), json_integer_value(cv),
                                    false);
        } else if (strcmp(rest, "update/accepted") == 0 && a->set_token[0] &&
                   our_token(a, body, a->set_token) && json_is_integer(version)) {
                a->set_done = true;
                a->set_code = 0;
                a->set_version = json_integer_value(version);
        } else if (strcmp(rest, "delete/accepted") == 0 && a->set_token[0] &&
                   our_token(a, body, a->set_token)) {
                a->set_done = true;
                a->set_code = 0;
        } else if ((strcmp(rest, "update/rejected") == 0 || strcmp(rest, "delete/rejected") == 0) &&
                   a->set_token[0] && our_token(a, body, a->set_token)) {
                a->set_done = true;
                a->set_code = (long)json_integer_value(json_object_get(body, "code"));
                snprintf(a->set_message, sizeof(a->set_message), "%.200s", message_of(body));
                utf8_sanitize_line(a->set_message);
        }
}

static int publish_request(AwsBackend *a, Thing *t, const char *op, json_t *body, char *token,
                           size_t token_size)
{
        _cleanup_free_ char *topic = NULL, *text = NULL;

        snprintf(token, token_size, "%s%" PRIu64, a->token_prefix, ++a->counter);
        if (json_object_set_new(body, "clientToken", json_string(token)) < 0 ||
            !(text = json_dumps_compact(body)) || asprintf(&topic, "%s/%s", t->prefix, op) < 0) {
                topic = NULL;
                return log_error_errno(-ENOMEM, "Out of memory");
        }
        return broker_session_publish(a->session, topic, text, strlen(text), false,
                                      twinctl_deadline(a->args, TWINCTL_CONNECT_TIMEOUT_MS));
}

static bool all_answered(void *userdata)
{
        AwsBackend *a = userdata;

        for (size_t i = 0; i < a->n_things; i++)
                if (!a->things[i].answered)
                        return false;
        return true;
}

static void aws_free(TwinBackend *b)
{
        AwsBackend *a = aws(b);

        broker_session_free(a->session);
        for (size_t i = 0; i < a->n_things; i++) {
                free(a->things[i].name);
                free(a->things[i].prefix);
                json_decref(a->things[i].desired);
        }
        json_decref(a->map);
        free(a);
}

static int add_thing(AwsBackend *a, const char *name)
{
        Thing *t;

        if (a->n_things >= MAX_THINGS) {
                log_error("at most %d things at a time", MAX_THINGS);
                return -E2BIG;
        }
        t = &a->things[a->n_things];
        *t = (Thing){ .desired_version = -1 };
        t->name = strdup(name);
        if (!t->name ||
            (a->args->shadow
                 ? asprintf(&t->prefix, "$aws/things/%s/shadow/name/%s", name, a->args->shadow)
                 : asprintf(&t->prefix, "$aws/things/%s/shadow", name)) < 0) {
                t->prefix = NULL;
                free(t->name);
                return log_error_errno(-ENOMEM, "Out of memory");
        }
        a->n_things++;
        return 0;
}

static int aws_open(TwinBackend **ret, const TwinctlArgs *args, const char *id,
                    const TwinBackendFilter *filter, bool catch_interrupt,
                    TwinBackendChangeFunc on_change, void *userdata)
{
        static const char *const leaves[] = {
                "get/accepted",     "get/rejected",    "update/accepted", "update/rejected",
                "update/documents", "delete/accepted", "delete/rejected",
        };
        _cleanup_(twin_backend_freep) TwinBackend *b = NULL;
        uint64_t deadline = twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS);
        uint8_t rnd[4];
        AwsBackend *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return log_error_errno(-ENOMEM, "Out of memory");
        a->base.impl = &twinctl_backend_aws;
        b = &a->base;
        a->args = args;
        a->on_change = on_change;
        a->userdata = userdata;
        a->map = json_object();
        if (!a->map)
                return log_error_errno(-ENOMEM, "Out of memory");
        if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
                return log_error_errno(-EIO, "Failed to get random bytes");
        snprintf(a->token_prefix, sizeof(a->token_prefix), "twinctl-%02x%02x%02x%02x-", rnd[0],
                 rnd[1], rnd[2], rnd[3]);

        if (id) {
                r = add_thing(a, id);
                if (r < 0)
                        return r;
        } else if (filter && filter->ids)
                for (char *const *p = filter->ids; *p; p++) {
                        r = add_thing(a, *p);
                        if (r < 0)
                                return r;
                }

        r = broker_session_connect(&a->session, args, deadline, catch_interrupt, on_message, a);
        if (r < 0)
                return r == -ETIMEDOUT ? -ENOTCONN : r;
        for (size_t i = 0; i < a->n_things; i++)
                for (size_t k = 0; k < sizeof(leaves) / sizeof(leaves[0]); k++) {
                        _cleanup_free_ char *topic = NULL;

                        if (asprintf(&topic, "%s/%s", a->things[i].prefix, leaves[k]) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory");
                        r = broker_session_subscribe(a->session, topic);
                        if (r < 0)
                                return r;
                }
        /* AWS answers a GET to whoever subscribes at that moment: subscriptions first. */
        r = broker_session_wait_subscribed(a->session, deadline);
        if (r < 0)
                return r;
        for (size_t i = 0; i < a->n_things; i++) {
                _cleanup_json_ json_t *body = json_object();
                char token[64];

                r = body ? publish_request(a, &a->things[i], "get", body, token, sizeof(token))
                         : -ENOMEM;
                if (r < 0)
                        return r;
        }
        r = broker_session_wait(a->session, all_answered, a, deadline);
        if (r == -ETIMEDOUT)
                log_error("AWS IoT at %s did not answer the shadow get in time",
                          broker_session_url(a->session));
        if (r < 0)
                return r;
        *ret = TAKE_PTR(b);
        return 0;
}

static bool set_answered(void *userdata)
{
        return ((AwsBackend *)userdata)->set_done;
}

static Thing *thing_named(AwsBackend *a, const char *id)
{
        for (size_t i = 0; i < a->n_things; i++)
                if (strcmp(a->things[i].name, id) == 0)
                        return &a->things[i];
        return NULL;
}

/* Sends an update or delete of t's shadow and waits for AWS's answer: 0 with a->set_code
 * (0 accepted, else AWS's error code), or a logged negative errno. */
static int shadow_request(AwsBackend *a, Thing *t, const char *op, json_t *body)
{
        int r;

        a->set_done = false;
        r = publish_request(a, t, op, body, a->set_token, sizeof(a->set_token));
        if (r < 0)
                return r;
        r = broker_session_wait(a->session, set_answered, a,
                                twinctl_deadline(a->args, TWINCTL_CONNECT_TIMEOUT_MS));
        if (r == -ETIMEDOUT)
                log_error("AWS IoT did not answer the shadow %s of %s in time", op, t->name);
        return r;
}

/* An error answer to a shadow request, logged; -EACCES for 401 and 403. */
static int shadow_refused(const AwsBackend *a, const char *op, const char *id)
{
        log_error("AWS IoT refused the shadow %s of %s: %ld %s", op, id, a->set_code,
                  a->set_message);
        return a->set_code == 401 || a->set_code == 403 ? -EACCES : -EPROTO;
}

static int aws_set(TwinBackend *b, const char *id, const json_t *doc, const json_t *patch,
                   int64_t next_version, int64_t if_version, int64_t *ret_version)
{
        AwsBackend *a = aws(b);
        _cleanup_json_ json_t *body = json_pack("{s:{s:O}}", "state", "desired", patch);
        Thing *t = thing_named(a, id);
        int r;

        if (!t || !body)
                return log_error_errno(-ENOMEM, "Out of memory");
        /* --if-version is AWS's own compare-and-set: the update carries the shadow version
         * the caller saw, and AWS refuses it (409) when the shadow moved since. */
        if (if_version >= 0 && json_object_set_new(body, "version", json_integer(if_version)) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        a->acknowledged = false;
        r = shadow_request(a, t, "update", body);
        if (r < 0)
                return r;
        if (a->set_code == 409) {
                log_error("version conflict: the shadow of %s is no longer at version %" PRId64
                          " (AWS IoT answered 409); nothing changed",
                          id, if_version);
                return -ESTALE;
        }
        if (a->set_code != 0)
                return shadow_refused(a, "update", id);
        *ret_version = a->set_version;
        a->acknowledged = true;
        return 0;
}

/* Deletes the shadow (its desired and reported state; AWS keeps counting its version). */
static int aws_remove(TwinBackend *b, const char *id)
{
        AwsBackend *a = aws(b);
        _cleanup_json_ json_t *body = json_object();
        Thing *t = thing_named(a, id);
        int r;

        if (!t || !body)
                return log_error_errno(-ENOMEM, "Out of memory");
        r = shadow_request(a, t, "delete", body);
        if (r < 0)
                return r;
        if (a->set_code == 404) {
                log_error("thing %s has no shadow on AWS IoT (404)", id);
                return -ENOENT;
        }
        if (a->set_code != 0)
                return shadow_refused(a, "delete", id);
        json_decref(t->desired);
        t->desired = NULL;
        json_object_del(a->map, id);
        return 0;
}

static bool aws_acknowledged(const TwinBackend *b)
{
        return ((const AwsBackend *)b)->acknowledged;
}

static int aws_wait(TwinBackend *b, bool (*done)(void *userdata), void *userdata,
                    uint64_t deadline_ms)
{
        return broker_session_wait(aws(b)->session, done, userdata, deadline_ms);
}

static json_t *aws_devices(TwinBackend *b)
{
        return aws(b)->map;
}

static const char *aws_address(const TwinBackend *b)
{
        return broker_session_url(((const AwsBackend *)b)->session);
}

const TwinBackendImpl twinctl_backend_aws = {
        .name = "AWS IoT",
        .flags = TWIN_BACKEND_PUSH | TWIN_BACKEND_SERVICE_VERSION,
        .limits = &twin_limits_aws,
        .open = aws_open,
        .set = aws_set,
        .acknowledged = aws_acknowledged,
        .remove = aws_remove,
        .wait = aws_wait,
        .devices = aws_devices,
        .address = aws_address,
        .free = aws_free,
};
