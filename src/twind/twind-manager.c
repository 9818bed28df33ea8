/* SPDX-License-Identifier: MIT */
/*
 * The agent's core: the change rule, applying, persisting, reporting. The rules implemented here
 * are written down in docs/protocol.md, "Agent behaviour"; keep the two in step.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "control-protocol.h"
#include "json-util.h"
#include "log.h"
#include "strv.h"
#include "twin-model.h"
#include "twind-apply.h"
#include "twind-dialect.h"
#include "twind-manager.h"
#include "twind-state.h"
#include "twind-trust.h"

/* A desired document not acted on yet; only the newest is kept. An oversized one keeps only its
 * length (payload NULL, len over the limit). */
typedef struct HeldDesired {
        char *payload;
        size_t len;
} HeldDesired;

struct Manager {
        uv_loop_t *loop;
        TwindConfig *config;
        char **apply_argv; /* NULL: accept configurations as they are */

        TwinState *state;
        /* The last reported $version published; state->reported_version is the reserved
         * ceiling on disk, always >= this. */
        int64_t reported_version;

        TwinDialect *dialect;
        TrustStore *trust; /* [trust] keys */
        bool connected;
        bool ever_connected;
        time_t connected_since;
        uint64_t retry_in_ms;

        json_t *desired; /* the last valid desired document received */

        ApplyJob *job;
        json_t *applying; /* the desired document being applied */
        /* The signature of the document being applied, recorded with its answer (not before:
         * a state saved meanwhile would make the document a replay of itself after a crash). */
        bool applying_signed;
        TrustVerdict applying_signer;
        /* Documents are acted on once the loop has read what the broker already sent (from a
         * check handle, after the I/O phase), or when the running apply ends: a burst then
         * costs one apply, not one per document. */
        HeldDesired held;
        uv_check_t *held_check;
        bool reapply_queued;

        /* Device-reported properties go out at most once per REPORT_INTERVAL_MS, a burst of
         * reports in one publish; any other publish carries them too. */
        uv_timer_t *report_timer;
        uint64_t last_publish_ms;

        char *last_error;
        char *problem; /* what the dialect says keeps the twin from working, until reconnected */
        uint64_t n_reconnects, n_applies, n_failures;
        uint64_t started_usec;

        bool shutting_down;
        void (*shutdown_done)(void *userdata);
        void *shutdown_userdata;

        manager_event_fn event_fn;
        manager_event_wanted_fn event_wanted_fn;
        void *event_userdata;
        manager_status_fn status_fn;
        void *status_userdata;
        char *status_text;
};

/* A report waits this long for others to join it, and reports go out at most this often. */
#define REPORT_DELAY_MS    100
#define REPORT_INTERVAL_MS 1000

static void manager_process_desired(Manager *m, const void *payload, size_t len);
static void manager_process_held(Manager *m);

/* ---- small helpers ----------------------------------------------------------------------- */

static const char *device_id(const Manager *m)
{
        return m->config->device_id;
}

static void set_last_error(Manager *m, const char *error)
{
        free(m->last_error);
        m->last_error = error ? strdup(error) : NULL;
}

static void set_status_text(Manager *m, const char *fmt, ...) _printf_(2, 3);
static void set_status_text(Manager *m, const char *fmt, ...)
{
        _cleanup_free_ char *text = NULL;
        va_list ap;

        va_start(ap, fmt);
        if (vasprintf(&text, fmt, ap) < 0)
                text = NULL;
        va_end(ap);
        if (!text || (m->status_text && strcmp(text, m->status_text) == 0))
                return;
        free(m->status_text);
        m->status_text = TAKE_PTR(text);
        if (m->status_fn)
                m->status_fn(m->status_text, m->status_userdata);
}

static char *applied_config_id_string(const Manager *m)
{
        return twin_config_id_to_string(twin_config_id(m->state->applied));
}

/* STATUS= for systemd: what the agent is doing right now. */
static void update_status_text(Manager *m)
{
        _cleanup_free_ char *cid = NULL;

        if (m->shutting_down) {
                set_status_text(m, "shutting down");
                return;
        }
        if (m->applying) {
                cid = twin_config_id_to_string(twin_config_id(m->applying));
                set_status_text(m, "applying configId %s (desired $version %" PRId64 ")",
                                cid && *cid ? cid : "(none)", twin_document_version(m->applying));
                return;
        }
        if (!m->connected) {
                /* The reason (refused credentials, a TLS failure, ...) is what a person needs
                 * to act on; it never holds a secret. After a failure the address is the node
                 * of the next attempt (another node of a cluster, or the same one). */
                if (m->retry_in_ms > 0 && m->last_error)
                        set_status_text(m, "broker unreachable (%s), trying %s in %" PRIu64 " s",
                                        m->last_error, twin_dialect_address(m->dialect),
                                        (m->retry_in_ms + 999) / 1000);
                else if (m->retry_in_ms > 0)
                        set_status_text(m, "broker unreachable, trying %s in %" PRIu64 " s",
                                        twin_dialect_address(m->dialect),
                                        (m->retry_in_ms + 999) / 1000);
                else
                        set_status_text(m, "connecting to %s", twin_dialect_address(m->dialect));
                return;
        }
        if (m->problem) {
                set_status_text(m, "connected to %s, but %s", twin_dialect_address(m->dialect),
                                m->problem);
                return;
        }
        cid = applied_config_id_string(m);
        if (cid && *cid)
                set_status_text(m, "connected to %s, configId %s applied",
                                twin_dialect_address(m->dialect), cid);
        else
                set_status_text(m, "connected to %s, no configuration applied yet",
                                twin_dialect_address(m->dialect));
}

static bool events_wanted(const Manager *m)
{
        return m->event_fn && (!m->event_wanted_fn || m->event_wanted_fn(m->event_userdata));
}

/* Sends an event to the listener: {"event": name, "time": ..., extra fields...}. Steals extra.
 * Callers on hot paths check events_wanted() first, to build nothing nobody reads. */
static void emit_event(Manager *m, const char *name, json_t *extra)
{
        _cleanup_json_ json_t *ev = extra ? extra : json_object();
        char now[32];

        if (!ev || !events_wanted(m))
                return;
        twin_format_time(-1, now);
        json_object_set_new(ev, "event", json_string(name));
        json_object_set_new(ev, "time", json_string(now));
        m->event_fn(ev, m->event_userdata);
}

static LogFields apply_fields(const Manager *m, const char *config_id, int64_t version)
{
        return (LogFields){
                .device_id = device_id(m),
                .config_id = config_id,
                .desired_version = version,
        };
}

/* A $status object for the answered desired document. */
static json_t *make_status(const char *state, int64_t desired_version, const json_t *config_id,
                           const json_t *pending, const char *error, bool no_change)
{
        _cleanup_json_ json_t *s = json_object();
        char now[32];

        if (!s)
                return NULL;
        twin_format_time(-1, now);
        json_object_set_new(s, "state", json_string(state));
        if (desired_version >= 0)
                json_object_set_new(s, "desiredVersion", json_integer(desired_version));
        if (config_id)
                json_object_set(s, "configId", (json_t *)config_id);
        if (pending)
                json_object_set(s, "pendingConfig", (json_t *)pending);
        if (error)
                json_object_set_new(s, "error", json_string(error));
        if (no_change)
                json_object_set_new(s, "noChange", json_true());
        json_object_set_new(s, "updatedAt", json_string(now));
        return TAKE_PTR(s);
}

static void set_status(Manager *m, json_t *status)
{
        json_decref(m->state->status);
        m->state->status = status;
}

/* Saves the state, reserving the next block of reported $version numbers with it. */
static int save_state(Manager *m)
{
        int64_t saved_ceiling = m->state->reported_version;
        int r;

        if (m->state->reported_version < m->reported_version + TWIN_STATE_VERSION_RESERVE)
                m->state->reported_version = m->reported_version + TWIN_STATE_VERSION_RESERVE;
        r = twin_state_save(m->config->state_dir, m->state);
        if (r < 0)
                m->state->reported_version = saved_ceiling;
        return r;
}

static void publish_reported(Manager *m);

static int set_answered_digest(Manager *m, const char *digest)
{
        char *copy = NULL;

        if (digest) {
                copy = strdup(digest);
                if (!copy)
                        return -ENOMEM;
        }
        free(m->state->answered_digest);
        m->state->answered_digest = copy;
        return 0;
}

/* Keeps the sequence of an accepted signature in the state, so that no document signed before
 * it is accepted again, also after a restart. Saved with the answer. */
static void record_signer(Manager *m, const TrustVerdict *v)
{
        if (twin_state_set_signer_sequence(m->state, v->fingerprint, v->seq) < 0)
                log_warning_errno(-ENOMEM, "Failed to record the signature's sequence, ignoring");
}

/* Records status (stolen) as the answer to the desired request with this $version (when known)
 * and digest, saves it and publishes it. A failed save only warns: an answer that applies
 * nothing loses nothing when it is lost. */
static void answer_desired(Manager *m, int64_t version, const char *digest, json_t *status)
{
        int r;

        if (version >= 0)
                m->state->desired_version = version;
        if (set_answered_digest(m, digest) < 0)
                log_warning_errno(-ENOMEM, "Failed to record the answered document, ignoring");
        set_status(m, status);
        r = save_state(m);
        if (r < 0)
                log_warning_errno(
                    r, "Failed to save the answer to desired $version %" PRId64 ", ignoring",
                    version);
        publish_reported(m);
}

/* The reported document: the applied properties, the device's own next to them (an applied
 * key wins; see manager_report()), $version and $status, which lists the device's keys in
 * "deviceProperties" so that a reader can tell them from the configuration. New reference. */
static json_t *build_reported(const Manager *m, int64_t version)
{
        _cleanup_json_ json_t *doc = json_deep_copy(m->state->applied);
        _cleanup_json_ json_t *status = NULL, *keys = json_array();
        const char *key;
        json_t *v;

        if (!doc || !keys)
                return NULL;
        json_object_foreach (m->state->device, key, v) {
                if (json_object_get(doc, key))
                        continue;
                if (json_object_set(doc, key, v) < 0 ||
                    json_array_append_new(keys, json_string(key)) < 0)
                        return NULL;
        }
        if (json_object_set_new(doc, "$version", json_integer(version)) < 0)
                return NULL;
        if (m->state->status)
                status = json_copy(m->state->status);
        else if (json_array_size(keys) > 0)
                status = json_object(); /* nothing answered yet: only the list */
        if (status && json_array_size(keys) > 0 &&
            json_object_set(status, "deviceProperties", keys) < 0)
                return NULL;
        if (status && json_object_set(doc, "$status", status) < 0)
                return NULL;
        return TAKE_PTR(doc);
}

/* Publishes the reported document. Offline is fine: the document is published again from state
 * on the next connect. */
static void publish_reported(Manager *m)
{
        _cleanup_json_ json_t *doc = NULL;
        int64_t version = m->reported_version + 1;
        int r;

        if (!m->connected || m->shutting_down)
                return;

        if (version > m->state->reported_version) {
                /* Out of reserved numbers: reserve the next block before using one, so a restart
                 * never reuses a $version that was published. */
                r = save_state(m);
                if (r < 0) {
                        log_error_errno(r,
                                        "Cannot reserve reported $version numbers in %s, not "
                                        "publishing the reported document",
                                        m->config->state_dir);
                        return;
                }
        }

        doc = build_reported(m, version);
        if (!doc)
                goto oom;
        /* This one carries every device property: a report waiting for its turn is in it. */
        uv_timer_stop(m->report_timer);
        m->last_publish_ms = uv_now(m->loop);

        r = twin_dialect_publish_reported(m->dialect, doc);
        if (r == -ENOMEM)
                goto oom;
        if (r < 0) {
                log_warning_errno(r, "Failed to publish the reported document, will publish it "
                                     "again on the next connect");
                return;
        }
        m->reported_version = version;
        log_debug("Published reported $version %" PRId64, version);
        return;
oom:
        log_error_errno(-ENOMEM, "Failed to build the reported document");
}

static void on_report_timer(uv_timer_t *t)
{
        publish_reported(t->data);
}

/* ---- device-reported properties ------------------------------------------------------------ */

static int report_refuse(char *err, size_t errlen, const char *fmt, ...) _printf_(3, 4);
static int report_refuse(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return -EINVAL;
}

/* Whether key is a top-level property of the desired document doc (NULL: none). */
static bool desired_has(const json_t *doc, const char *key)
{
        return doc && twin_key_is_property(key) && json_object_get(doc, key);
}

int manager_report(Manager *m, const json_t *patch, char *err, size_t errlen)
{
        const TwinLimits *limits = twin_dialect_limits(m->dialect);
        _cleanup_json_ json_t *device = NULL, *doc = NULL;
        json_t *old = m->state->device, *v;
        char reason[512];
        const char *key;
        int r;

        if (!json_is_object(patch) || json_object_size(patch) == 0)
                return report_refuse(err, errlen, "no properties to report");
        json_object_foreach ((json_t *)patch, key, v) {
                if (!twin_limits_key_is_valid(limits, key))
                        return report_refuse(err, errlen,
                                             "'%s' is not a valid property name for %s", key,
                                             limits->service);
                if (limits->reserved_key && strcmp(key, limits->reserved_key) == 0)
                        return report_refuse(err, errlen, "'%s' is the agent's status property",
                                             key);
                if (!twin_key_is_property(key))
                        return report_refuse(err, errlen,
                                             "'%s' is reserved for the signature of desired "
                                             "documents",
                                             key);
                /* The agent owns what the configuration names: a device value would hide the
                 * applied one or be taken for it. */
                if (json_object_get(m->state->applied, key))
                        return report_refuse(err, errlen,
                                             "'%s' is a property of the applied configuration: "
                                             "the agent reports it",
                                             key);
                if (desired_has(m->desired, key) || desired_has(m->applying, key))
                        return report_refuse(err, errlen,
                                             "'%s' is a property of the desired configuration: "
                                             "the agent reports it",
                                             key);
        }

        device = old ? json_deep_copy(old) : json_object();
        if (!device || twin_merge_patch(device, patch) < 0)
                return -ENOMEM;
        if (twin_properties_validate(device, limits, reason, sizeof reason) < 0)
                return report_refuse(err, errlen, "%s", reason);

        /* What the service would refuse is refused now, not when it is published. */
        m->state->device = device;
        doc = build_reported(m, m->reported_version + 1);
        m->state->device = old;
        if (!doc)
                return -ENOMEM;
        r = twin_dialect_check_reported(m->dialect, doc, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return report_refuse(err, errlen, "%s", reason);

        m->state->device = TAKE_PTR(device);
        r = save_state(m);
        if (r < 0) {
                json_decref(m->state->device);
                m->state->device = old;
                snprintf(err, errlen, "cannot save state in %s: %s", m->config->state_dir,
                         strerror(-r));
                return -EIO;
        }
        json_decref(old);

        if (!uv_is_active((uv_handle_t *)m->report_timer)) {
                uint64_t now = uv_now(m->loop), due = now + REPORT_DELAY_MS;

                if (m->last_publish_ms + REPORT_INTERVAL_MS > due)
                        due = m->last_publish_ms + REPORT_INTERVAL_MS;
                uv_timer_start(m->report_timer, on_report_timer, due - now, 0);
        }
        if (events_wanted(m))
                emit_event(m, CONTROL_EVENT_DEVICE_REPORTED,
                           json_pack("{s:O}", "properties", patch));
        return 0;
}

/* A configuration that takes over a key the device reported: the configuration owns it now. */
static void drop_device_keys(Manager *m, const json_t *props)
{
        const char *key;
        json_t *v;
        void *tmp;

        json_object_foreach_safe (m->state->device, tmp, key, v) {
                if (!json_object_get(props, key))
                        continue;
                log_warning("Device-reported property '%s' is now part of the configuration; the "
                            "configuration's value is reported",
                            key);
                json_object_del(m->state->device, key);
        }
}

/* ---- applying ---------------------------------------------------------------------------- */

static void finish_apply(Manager *m, int error, const char *message);

static void on_apply_done(ApplyJob *job, int error, const char *message, void *userdata)
{
        Manager *m = userdata;

        /* message belongs to the job: finish first, free after. finish_apply() may start the next
         * apply, which sets m->job again. */
        m->job = NULL;
        finish_apply(m, error, message);
        apply_job_free(job);
}

/* Applies doc; signer: its accepted signature, NULL when none or already recorded (reapply). */
static void start_apply(Manager *m, json_t *doc, const TrustVerdict *signer)
{
        _cleanup_json_ json_t *props = twin_properties(doc);
        _cleanup_free_ char *input = NULL, *cid = NULL;
        int64_t version = twin_document_version(doc);
        json_t *config_id;
        LogFields f;
        int r;

        if (!props) {
                log_error_errno(-ENOMEM, "Failed to start the apply");
                return;
        }
        config_id = twin_config_id(props);
        cid = twin_config_id_to_string(config_id);
        f = apply_fields(m, cid, version);

        m->applying = json_incref(doc);
        m->applying_signed = signer != NULL;
        if (signer)
                m->applying_signer = *signer;
        /* A reapply asked for while another apply ran is served by this one: it applies the
         * newest desired document, which is what the reapply would have applied. */
        m->reapply_queued = false;
        m->n_applies++;
        log_full(LOG_INFO, 0, &f, "Applying configId %s (desired $version %" PRId64 ")",
                 cid && *cid ? cid : "(none)", version);

        if (events_wanted(m))
                emit_event(m, CONTROL_EVENT_APPLY_STARTED,
                           json_pack("{s:I, s:O?}", "desiredVersion", (json_int_t)version,
                                     "configId", config_id));

        if (!m->apply_argv) {
                /* Accepted as it is: nothing runs, so there is no pending phase to report. */
                finish_apply(m, 0, NULL);
                return;
        }

        set_status(m, make_status("pending", version, config_id, props, NULL, false));
        publish_reported(m);
        update_status_text(m);

        input = json_dumps_compact(props);
        if (!input) {
                finish_apply(m, -ENOMEM, "out of memory");
                return;
        }
        ApplyRequest req = {
                .argv = m->apply_argv,
                .input = input,
                .input_len = strlen(input),
                .device_id = device_id(m),
                .config_id = cid ? cid : "",
                .desired_version = version,
                .timeout_usec = m->config->apply_timeout_usec,
        };
        r = apply_job_start(&m->job, m->loop, &req, on_apply_done, m);
        if (r < 0) {
                char msg[512];

                snprintf(msg, sizeof(msg), "cannot run apply command '%s': %s", m->apply_argv[0],
                         strerror(-r));
                finish_apply(m, r, msg);
        }
}

/* The apply of m->applying ended: persist and report success, or report the failure and keep
 * the previous configuration. Then look at what arrived meanwhile. */
static void finish_apply(Manager *m, int error, const char *message)
{
        _cleanup_json_ json_t *doc = TAKE_PTR(m->applying);
        _cleanup_json_ json_t *props = twin_properties(doc);
        _cleanup_free_ char *cid = NULL;
        _cleanup_free_ char *save_error = NULL;
        int64_t version = twin_document_version(doc);
        json_t *config_id = props ? twin_config_id(props) : NULL;
        char digest[TWIN_DIGEST_STRING_SIZE];
        LogFields f;
        int r;

        cid = twin_config_id_to_string(config_id);
        f = apply_fields(m, cid, version);
        if (twin_document_digest(doc, digest) < 0 && error == 0) {
                error = -ENOMEM;
                message = "out of memory";
        }

        if (error == 0 && props) {
                _cleanup_(twin_state_freep) TwinState *old = NULL;

                r = twin_state_copy(m->state, &old);
                if (r < 0) {
                        error = r;
                        message = "out of memory";
                } else {
                        json_decref(m->state->applied);
                        m->state->applied = json_incref(props);
                        drop_device_keys(m, props);
                        m->state->desired_version = version;
                        set_status(m,
                                   make_status("success", version, config_id, NULL, NULL, false));
                        if (m->applying_signed)
                                record_signer(m, &m->applying_signer);
                        r = set_answered_digest(m, digest);
                        if (r >= 0)
                                r = save_state(m);
                        if (r < 0) {
                                /* Nothing is applied that is not on disk: go back to the old state
                                 * and fail the apply with the reason. */
                                twin_state_free(m->state);
                                m->state = TAKE_PTR(old);
                                if (asprintf(&save_error, "cannot save state in %s: %s",
                                             m->config->state_dir, strerror(-r)) < 0)
                                        save_error = NULL;
                                error = r;
                                message = save_error ? save_error : "cannot save state";
                        }
                }
        } else if (error == 0) {
                error = -ENOMEM;
                message = "out of memory";
        }

        if (error == 0) {
                log_full(LOG_INFO, 0, &f, "Applied configId %s (desired $version %" PRId64 ")",
                         cid && *cid ? cid : "(none)", version);
                set_last_error(m, NULL);
        } else {
                m->n_failures++;
                log_full(LOG_ERR, 0, &f,
                         "Failed to apply configId %s (desired $version %" PRId64 "): %s",
                         cid && *cid ? cid : "(none)", version,
                         message ? message : "unknown error");
                set_last_error(m, message);
        }
        if (error == 0)
                publish_reported(m);
        else {
                /* Accepted, then failed: a replay of it is refused all the same. */
                if (m->applying_signed)
                        record_signer(m, &m->applying_signer);
                answer_desired(m, version, digest,
                               make_status("failed", version, config_id, NULL,
                                           message ? message : "unknown error", false));
        }
        m->applying_signed = false;
        if (events_wanted(m))
                emit_event(m, CONTROL_EVENT_APPLY_FINISHED,
                           json_pack("{s:I, s:O?, s:s, s:s?}", "desiredVersion",
                                     (json_int_t)version, "configId", config_id, "result",
                                     error == 0 ? "success" : "failed", "error",
                                     error == 0 ? NULL : message));
        update_status_text(m);

        if (m->shutting_down)
                return;

        /* What arrived while this apply ran: only the newest document counts. A reapply asked for
         * meanwhile still runs when that document started nothing. */
        if (m->held.payload || m->held.len)
                manager_process_held(m);
        if (!m->applying && m->reapply_queued && m->desired) {
                m->reapply_queued = false;
                start_apply(m, m->desired, NULL);
        }
}

/* ---- desired documents ------------------------------------------------------------------- */

/* Whether the desired request with this digest (and $version, configId) is the one last
 * answered, delivered again (on connect, after a restart, as a duplicate). Told by content: a
 * new request may reuse a $version and configId, for instance after the service side lost its
 * documents and started counting again. */
static bool is_redelivery(const Manager *m, const char *digest, int64_t version,
                          const json_t *config_id)
{
        const json_t *st = m->state->status;

        if (m->state->answered_digest)
                return digest && strcmp(digest, m->state->answered_digest) == 0;
        /* A state file from an agent that kept no digest: its rule, ($version, configId). */
        if (!st || version < 0 || version != m->state->desired_version)
                return false;
        return json_equal(json_object_get(st, "configId"), (json_t *)config_id) ||
               (!config_id && !json_object_get(st, "configId"));
}

static bool status_is(const Manager *m, const char *state)
{
        const char *s = json_string_value(json_object_get(m->state->status, "state"));

        return s && strcmp(s, state) == 0;
}

/* A refused document: report failed naming the problem, unless this very document was refused
 * last (a redelivery). config_id: the document's, when it could be read. */
static void refuse_desired(Manager *m, int64_t version, const json_t *config_id, const char *digest,
                           const char *reason)
{
        const json_t *st = m->state->status;
        LogFields f = apply_fields(m, NULL, version);

        /* The document cannot be applied or reapplied: the last valid one is not current any
         * more either (twinctl reapply would re-apply a superseded configuration). */
        json_decref(TAKE_PTR(m->desired));

        if (status_is(m, "failed") &&
            (m->state->answered_digest
                 ? digest && strcmp(digest, m->state->answered_digest) == 0
                 /* From an agent that kept no digest: the same $version, the same error. */
                 : (version >= 0
                        ? json_is_integer(json_object_get(st, "desiredVersion")) &&
                              json_integer_value(json_object_get(st, "desiredVersion")) == version
                        : !json_object_get(st, "desiredVersion")) &&
                       json_is_string(json_object_get(st, "error")) &&
                       strcmp(json_string_value(json_object_get(st, "error")), reason) == 0)) {
                log_debug("Refused desired document delivered again, already reported");
                return;
        }

        m->n_failures++;
        log_full(LOG_ERR, 0, &f, "Refusing desired document: %s", reason);
        set_last_error(m, reason);
        answer_desired(m, version, digest,
                       make_status("failed", version, config_id, NULL, reason, false));
        update_status_text(m);
}

/* Whether doc may be acted on, as far as its signature goes (docs/protocol.md, "Signed desired
 * documents"). With signatures required, 0 only when trust_check() accepts it, else -EPERM with
 * the reason in err. Otherwise 0: a signed document is checked when there are trusted keys, and
 * a failed check is a warning. *ret_signed says whether *verdict holds an accepted signature. */
static int check_signature(Manager *m, const json_t *doc, int64_t version, TrustVerdict *verdict,
                           bool *ret_signed, char *err, size_t errlen)
{
        bool has = json_object_get(doc, TWIN_SIGNATURE_PROPERTY) != NULL;
        enum TwinSignatureCheck check;
        int r;

        *ret_signed = false;
        if (!m->config->require_signature && !has)
                return 0;
        if (!m->config->require_signature && trust_store_size(m->trust) == 0) {
                log_debug("Desired $version %" PRId64 " is signed; no trusted key to check it "
                          "with, and signatures are not required",
                          version);
                return 0;
        }
        r = trust_check(m->trust, doc, device_id(m), (int64_t)time(NULL), m->state, verdict, &check,
                        err, errlen);
        if (r == -ENOMEM)
                return r;
        if (r < 0 && m->config->require_signature)
                return r;
        if (r < 0) {
                log_warning("Desired $version %" PRId64 ": %s; applying it all the same, as "
                            "[trust] require_signature is off",
                            version, err);
                return 0;
        }
        log_info("Desired $version %" PRId64 " is signed by key '%s' (sequence %" PRId64 ")",
                 version, verdict->key_name, verdict->seq);
        *ret_signed = true;
        return 0;
}

static void manager_process_desired(Manager *m, const void *payload, size_t len)
{
        _cleanup_json_ json_t *doc = NULL, *props = NULL;
        char err[512], digest[TWIN_DIGEST_STRING_SIZE];
        TrustVerdict signer;
        bool is_signed;
        int64_t version;
        json_t *config_id;
        int r;

        r = twin_desired_parse(payload, len, twin_dialect_limits(m->dialect), &doc, &version, err,
                               sizeof(err));
        if (r < 0) {
                char what[64];

                if (r == -ENOMEM)
                        snprintf(err, sizeof(err), "out of memory");
                /* A refused document is known by its bytes; an oversized one kept only its
                 * length (see on_desired()). */
                if (len > twin_dialect_limits(m->dialect)->max_bytes) {
                        snprintf(what, sizeof(what), "oversized:%zu", len);
                        r = twin_digest(what, strlen(what), digest);
                } else
                        r = twin_digest(payload, len, digest);
                refuse_desired(m, version, NULL, r < 0 ? NULL : digest, err);
                return;
        }
        r = twin_document_digest(doc, digest);
        props = twin_properties(doc);
        if (r < 0 || !props) {
                log_error_errno(-ENOMEM, "Failed to process the desired document");
                return;
        }

        json_decref(m->desired);
        m->desired = json_incref(doc);
        config_id = twin_config_id(props);

        if (is_redelivery(m, digest, version, config_id)) {
                if (status_is(m, "failed"))
                        log_info("Desired $version %" PRId64 " already failed; not retrying it "
                                 "(twinctl reapply retries)",
                                 version);
                else
                        log_debug("Desired $version %" PRId64 " already answered", version);
                return;
        }

        /* After the redelivery rule: what was accepted stays accepted when it is delivered
         * again, even once its key is gone or it has expired. */
        r = check_signature(m, doc, version, &signer, &is_signed, err, sizeof err);
        if (r == -ENOMEM) {
                log_error_errno(r, "Failed to check the desired document's signature");
                return;
        }
        if (r < 0) {
                /* A document that was read: its configId names it in the answer too, as for a
                 * failed apply (twinctl set --wait waits for that). */
                refuse_desired(m, version, config_id, digest, err);
                return;
        }

        if (version < m->state->desired_version)
                log_warning("Desired $version went backwards (%" PRId64 " after %" PRId64
                            "); the change rule decides",
                            version, m->state->desired_version);

        if (twin_needs_apply(props, m->state->applied)) {
                start_apply(m, doc, is_signed ? &signer : NULL);
                return;
        }

        {
                /* Asks for nothing new: answer it, so a waiting service sees it converge, and say
                 * that nothing ran. */
                _cleanup_free_ char *cid = twin_config_id_to_string(config_id);
                LogFields f = apply_fields(m, cid, version);

                log_full(LOG_INFO, 0, &f,
                         "Desired $version %" PRId64 " asks for no change (configId %s applied)%s",
                         version, cid && *cid ? cid : "(none)",
                         twin_properties_equal(props, m->state->applied)
                             ? ""
                             : "; its other properties differ, but only a new configId is "
                               "applied");
                if (is_signed)
                        record_signer(m, &signer);
                answer_desired(m, version, digest,
                               make_status("success", version, config_id, NULL, NULL, true));
        }
}

/* ---- dialect callbacks ------------------------------------------------------------------- */

static void on_connected(TwinDialect *d, void *userdata)
{
        Manager *m = userdata;

        if (m->ever_connected)
                m->n_reconnects++;
        m->ever_connected = true;
        m->connected = true;
        m->retry_in_ms = 0;
        m->connected_since = time(NULL);
        free(TAKE_PTR(m->problem));
        log_info("Connected to %s as device %s", twin_dialect_address(d), device_id(m));
        /* The broker may have lost its store: it holds our reported document again. */
        publish_reported(m);
        update_status_text(m);
        emit_event(m, CONTROL_EVENT_CONNECTED,
                   json_pack("{s:s}", "broker", twin_dialect_address(d)));
}

static void on_disconnected(TwinDialect *d, int error, const char *reason, uint64_t retry_in_ms,
                            void *userdata)
{
        Manager *m = userdata;
        bool was_connected = m->connected;

        m->connected = false;
        m->retry_in_ms = retry_in_ms;
        if (reason && error != 0)
                set_last_error(m, reason);

        if (error == 0)
                /* Asked for (new credentials): the next connection follows at once. */
                log_info("Reconnecting to %s: %s", twin_dialect_address(d),
                         reason ? reason : "renewing the connection");
        /* The reason names the node that failed; the address is the one tried next. */
        else if (was_connected || !m->ever_connected)
                log_warning("%s: %s; next attempt on %s in %" PRIu64 ".%" PRIu64 " s",
                            was_connected ? "Lost the broker connection"
                                          : "Cannot connect to the broker",
                            reason ? reason : "unknown reason", twin_dialect_address(d),
                            retry_in_ms / 1000, retry_in_ms % 1000 / 100);
        else
                log_debug("Still cannot connect to the broker: %s; next attempt on %s in %" PRIu64
                          " ms",
                          reason ? reason : "unknown reason", twin_dialect_address(d), retry_in_ms);
        update_status_text(m);
        if (was_connected)
                emit_event(m, CONTROL_EVENT_DISCONNECTED, json_pack("{s:s?}", "reason", reason));
}

static void on_remember(TwinDialect *d, const json_t *memory, void *userdata)
{
        Manager *m = userdata;
        json_t *copy = json_deep_copy(memory);
        int r;

        if (!m->state->dialects)
                m->state->dialects = json_object();
        if (!copy || !m->state->dialects ||
            json_object_set_new(m->state->dialects, twin_dialect_name(d), copy) < 0) {
                log_warning_errno(-ENOMEM, "Failed to remember the dialect's state, ignoring");
                return;
        }
        r = save_state(m);
        if (r < 0)
                log_warning_errno(r, "Failed to save the dialect's state, ignoring");
}

static void on_problem(TwinDialect *d, int error, const char *message, void *userdata)
{
        Manager *m = userdata;

        log_error("%s", message);
        set_last_error(m, message);
        free(m->problem);
        m->problem = strdup(message);
        update_status_text(m);
}

/* Acts on the newest held document, unless an apply runs (it is then acted on when that ends). */
static void manager_process_held(Manager *m)
{
        HeldDesired held = m->held;
        static const char nothing = 0;

        if (m->applying || (!held.payload && held.len == 0) || m->shutting_down)
                return;
        m->held = (HeldDesired){ 0 };
        /* An oversized document has no bytes kept: the parser refuses it by length alone. */
        manager_process_desired(m, held.payload ? held.payload : &nothing, held.len);
        free(held.payload);
}

static void on_held_check(uv_check_t *h)
{
        Manager *m = h->data;

        uv_check_stop(h);
        manager_process_held(m);
}

/* For the manager's own handles, allocated one by one. */
static void on_held_check_closed(uv_handle_t *h)
{
        free(h);
}

static void on_desired(TwinDialect *d, const void *payload, size_t len, void *userdata)
{
        Manager *m = userdata;
        char *copy = NULL;

        /* An oversized document is refused by its size alone: keep its length, not its bytes
         * (twin_desired_parse() reads nothing past the limit). */
        bool oversized = len > twin_dialect_limits(m->dialect)->max_bytes;

        if (events_wanted(m)) {
                _cleanup_json_ json_t *peek = oversized ? NULL : json_loadb(payload, len, 0, NULL);

                emit_event(m, CONTROL_EVENT_DESIRED,
                           json_pack("{s:I}", "desiredVersion",
                                     (json_int_t)(peek ? twin_document_version(peek) : -1)));
        }

        if (!oversized) {
                copy = malloc(len);
                if (!copy) {
                        log_error_errno(-ENOMEM, "Failed to hold a desired document");
                        return;
                }
                memcpy(copy, payload, len);
        }
        if (m->held.payload || m->held.len)
                log_debug("A newer desired document arrived before the previous one was acted on; "
                          "skipping the previous one");
        free(m->held.payload);
        m->held = (HeldDesired){ .payload = copy, .len = len };

        if (!m->applying)
                uv_check_start(m->held_check, on_held_check);
}

static void on_desired_removed(TwinDialect *d, void *userdata)
{
        Manager *m = userdata;

        /* The newest word from the service side is "nothing": whatever was held is skipped,
         * and there is nothing left to reapply. What runs stays applied. */
        log_info("The twin has no desired document (removed, or never set); keeping the applied "
                 "configuration");
        free(m->held.payload);
        m->held = (HeldDesired){ 0 };
        json_decref(m->desired);
        m->desired = NULL;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static int manager_setup_config(Manager *m, TwindConfig *config, char ***ret_argv)
{
        _cleanup_strv_free_ char **argv = NULL;
        int r;

        if (config->apply_command) {
                r = strv_split_command(config->apply_command, &argv);
                if (r < 0)
                        return log_error_errno(r, "[apply] command: cannot split '%s'",
                                               config->apply_command);
        }
        *ret_argv = TAKE_PTR(argv);
        return 0;
}

/* The trusted keys of configuration c. */
static int manager_load_trust(Manager *m, const TwindConfig *c, TrustStore **ret)
{
        _cleanup_(trust_store_freep) TrustStore *t = NULL;
        _cleanup_free_ char *names = NULL;
        char err[1024] = "";
        int r;

        r = trust_store_load(c->trust_keys, &t, err, sizeof err);
        if (r == -ENOMEM)
                return log_error_errno(r, "Failed to load the trusted keys");
        if (r < 0)
                return log_error("[trust] keys: %s", err), r;
        names = trust_store_describe(t);
        if (trust_store_size(t) > 0)
                log_info("Trusting %zu signing key%s in %s: %s", trust_store_size(t),
                         trust_store_size(t) == 1 ? "" : "s", c->trust_keys, names ? names : "?");
        if (c->require_signature && trust_store_size(t) == 0)
                log_warning("[trust] require_signature is on but %s holds no trusted key "
                            "(*.pem): every desired document will be refused",
                            c->trust_keys);
        else if (c->require_signature)
                log_info("Signatures are required: only desired documents that a trusted key "
                         "signed for %s are applied",
                         c->device_id);
        *ret = TAKE_PTR(t);
        return 0;
}

/* The connection to the twin service for configuration c (not started). */
static int manager_make_dialect(Manager *m, const TwindConfig *c, TwinDialect **ret)
{
        static const TwinDialectCallbacks callbacks = {
                .connected = on_connected,
                .disconnected = on_disconnected,
                .desired = on_desired,
                .desired_removed = on_desired_removed,
                .problem = on_problem,
                .remember = on_remember,
        };
        char err[512] = "";
        int r;

        r = twin_dialect_new(ret, m->loop, c, json_object_get(m->state->dialects, c->dialect),
                             &callbacks, m, err, sizeof(err));
        if (r < 0) {
                log_error("Cannot set up the connection to the twin service: %s",
                          err[0] ? err : strerror(-r));
                return r;
        }
        return 0;
}

int manager_new(Manager **ret, uv_loop_t *loop, TwindConfig *config, TwinState *state)
{
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m) {
                twind_config_free(config);
                twin_state_free(state);
                return log_error_errno(-ENOMEM, "Failed to allocate the agent");
        }
        m->loop = loop;
        m->config = config;
        m->state = state;
        m->reported_version = m->state->reported_version;
        m->started_usec = uv_hrtime() / 1000;

        r = manager_setup_config(m, config, &m->apply_argv);
        if (r < 0)
                return r;
        r = manager_load_trust(m, config, &m->trust);
        if (r < 0)
                return r;

        m->held_check = malloc(sizeof(*m->held_check));
        if (!m->held_check)
                return log_error_errno(-ENOMEM, "Failed to allocate the agent");
        uv_check_init(loop, m->held_check);
        m->held_check->data = m;
        m->report_timer = malloc(sizeof(*m->report_timer));
        if (!m->report_timer)
                return log_error_errno(-ENOMEM, "Failed to allocate the agent");
        uv_timer_init(loop, m->report_timer);
        m->report_timer->data = m;

        r = manager_make_dialect(m, m->config, &m->dialect);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

int manager_start(Manager *m)
{
        _cleanup_free_ char *cid = applied_config_id_string(m);
        int r;

        log_info("twind for device %s, broker %s, state in %s, configId %s applied", device_id(m),
                 twin_dialect_address(m->dialect), m->config->state_dir,
                 cid && *cid ? cid : "(none)");
        r = twin_dialect_start(m->dialect);
        if (r < 0)
                return log_error_errno(r, "Cannot start connecting to %s",
                                       twin_dialect_address(m->dialect));
        update_status_text(m);
        return 0;
}

static bool streq_null(const char *a, const char *b)
{
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

int manager_reload(Manager *m, TwindConfig *config)
{
        _cleanup_(twind_config_freep) TwindConfig *c = config;
        _cleanup_strv_free_ char **argv = NULL;
        _cleanup_(twin_dialect_freep) TwinDialect *dialect = NULL;
        _cleanup_(trust_store_freep) TrustStore *trust = NULL;
        int r;

        /* The device id and the state directory name what the state file means, and the control
         * socket is already bound: changing them needs a restart. Keep the running values. */
        if (!streq_null(c->device_id, m->config->device_id)) {
                log_warning("[device] id changed; the new id takes effect on restart, ignoring");
                r = twind_config_set_string(&c->device_id, m->config->device_id);
                if (r < 0)
                        return log_error_errno(r, "Failed to reload the configuration");
        }
        if (!streq_null(c->state_dir, m->config->state_dir)) {
                log_warning("[state] directory changed; it takes effect on restart, ignoring");
                r = twind_config_set_string(&c->state_dir, m->config->state_dir);
                if (r < 0)
                        return log_error_errno(r, "Failed to reload the configuration");
        }
        if (!streq_null(c->control_socket, m->config->control_socket)) {
                log_warning("[control] socket changed; it takes effect on restart, ignoring");
                r = twind_config_set_string(&c->control_socket, m->config->control_socket);
                if (r < 0)
                        return log_error_errno(r, "Failed to reload the configuration");
        }

        r = manager_setup_config(m, c, &argv);
        if (r < 0)
                return r;
        /* Read again whether or not the directory changed: removing a file revokes its key. */
        r = manager_load_trust(m, c, &trust);
        if (r < 0)
                return r;

        /* Everything that can fail comes first: on error the running configuration stays whole.
         * The new connection is kept only when some setting of it changed (the dialect, the
         * address, a credential file's content, ...): otherwise the running one goes on. */
        r = manager_make_dialect(m, c, &dialect);
        if (r < 0)
                return r;
        if (strcmp(twin_dialect_fingerprint(dialect), twin_dialect_fingerprint(m->dialect)) == 0)
                dialect = twin_dialect_free(dialect);

        strv_free(m->apply_argv);
        m->apply_argv = TAKE_PTR(argv);
        trust_store_free(m->trust);
        m->trust = TAKE_PTR(trust);
        twind_config_free(m->config);
        m->config = TAKE_PTR(c);

        if (dialect) {
                log_info("Connection settings changed, reconnecting (dialect %s)",
                         twin_dialect_name(dialect));
                twin_dialect_free(m->dialect);
                m->dialect = TAKE_PTR(dialect);
                m->connected = false;
                free(TAKE_PTR(m->problem));
                r = twin_dialect_start(m->dialect);
                if (r < 0)
                        log_error_errno(r, "Cannot start connecting to %s",
                                        twin_dialect_address(m->dialect));
        }
        log_info("Configuration reloaded");
        update_status_text(m);
        return 0;
}

static void on_dialect_shut_down(void *userdata)
{
        Manager *m = userdata;
        void (*done)(void *) = m->shutdown_done;

        m->shutdown_done = NULL;
        if (done)
                done(m->shutdown_userdata);
}

void manager_shutdown(Manager *m, uint64_t deadline_ms, void (*done)(void *userdata),
                      void *userdata)
{
        int r;

        m->shutting_down = true;
        m->shutdown_done = done;
        m->shutdown_userdata = userdata;
        update_status_text(m);

        if (m->job) {
                /* The interrupted configuration was not applied: the state file still holds the
                 * previous one, and the desired document is applied again after the restart. */
                log_warning("Stopping the running apply");
                m->job = apply_job_free(m->job);
                json_decref(TAKE_PTR(m->applying));
                m->applying_signed = false;
        }

        r = twin_dialect_shutdown(m->dialect, deadline_ms, on_dialect_shut_down, m);
        if (r < 0)
                on_dialect_shut_down(m);
}

void manager_set_event_listener(Manager *m, manager_event_fn fn, manager_event_wanted_fn wanted,
                                void *userdata)
{
        m->event_fn = fn;
        m->event_wanted_fn = wanted;
        m->event_userdata = userdata;
}

void manager_set_status_listener(Manager *m, manager_status_fn fn, void *userdata)
{
        m->status_fn = fn;
        m->status_userdata = userdata;
        if (fn && m->status_text)
                fn(m->status_text, userdata);
}

json_t *manager_status_json(Manager *m)
{
        const json_t *st = m->state->status;
        char since[32];
        json_t *state = st ? json_object_get(st, "state") : NULL;

        if (m->connected)
                twin_format_time(m->connected_since, since);

        return json_pack(
            "{s:s, s:s, s:s, s:b, s:s?, s:O?, s:O, s:o, s:O?, s:s, s:I, s:I, s:s?, s:I, s:s?,"
            " s:{s:I, s:I, s:I}}",
            "deviceId", device_id(m), "dialect", twin_dialect_name(m->dialect), "broker",
            twin_dialect_address(m->dialect), "connected", m->connected, "connectedSince",
            m->connected ? since : NULL, "configId", twin_config_id(m->state->applied), "applied",
            m->state->applied, "deviceProperties",
            m->state->device ? json_incref(m->state->device) : json_object(), "status", st, "state",
            m->applying ? "applying" : (json_is_string(state) ? json_string_value(state) : "idle"),
            "desiredVersion", (json_int_t)m->state->desired_version, "reportedVersion",
            (json_int_t)m->reported_version, "lastError", m->last_error, "uptimeSeconds",
            (json_int_t)((uv_hrtime() / 1000 - m->started_usec) / 1000000), "statusText",
            m->status_text, "counters", "reconnects", (json_int_t)m->n_reconnects, "applies",
            (json_int_t)m->n_applies, "failures", (json_int_t)m->n_failures);
}

json_t *manager_twin_json(Manager *m)
{
        _cleanup_json_ json_t *reported = build_reported(m, m->reported_version);

        if (!reported)
                return NULL;
        return json_pack("{s:O?, s:O}", "desired", m->desired, "reported", reported);
}

int manager_reapply(Manager *m, bool *ret_queued, int64_t *ret_version)
{
        if (!m->desired)
                return -ENOENT;
        log_info("Re-applying desired $version %" PRId64 " on request",
                 twin_document_version(m->desired));
        *ret_version = twin_document_version(m->desired);
        *ret_queued = m->applying != NULL;
        if (m->applying) {
                m->reapply_queued = true;
                return 0;
        }
        /* Checked when it arrived: the device runs it, or tried to. */
        start_apply(m, m->desired, NULL);
        return 0;
}

const TwindConfig *manager_config(const Manager *m)
{
        return m->config;
}

Manager *manager_free(Manager *m)
{
        if (!m)
                return NULL;
        apply_job_free(m->job);
        twin_dialect_free(m->dialect);
        trust_store_free(m->trust);
        if (m->held_check)
                uv_close((uv_handle_t *)m->held_check, on_held_check_closed);
        if (m->report_timer)
                uv_close((uv_handle_t *)m->report_timer, on_held_check_closed);
        json_decref(m->applying);
        json_decref(m->desired);
        free(m->held.payload);
        twin_state_free(m->state);
        strv_free(m->apply_argv);
        twind_config_free(m->config);
        free(m->last_error);
        free(m->problem);
        free(m->status_text);
        free(m);
        return NULL;
}
