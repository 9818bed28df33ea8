/* SPDX-License-Identifier: MIT */
/* The service-side verbs: get, set, watch, list and query, through a back end
 * (twinctl-backend.h): the broker, IoT Hub or AWS IoT. */
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json-util.h"
#include "log.h"
#include "macro.h"
#include "twin-model.h"
#include "twin-signature.h"
#include "twinctl-backend.h"
#include "twinctl-device.h"
#include "twinctl-output.h"
#include "twinctl-patch.h"
#include "twinctl-sign.h"
#include "strv.h"
#include "twinctl.h"
#include "utf8.h"

/* Longest error shown in list's ERROR column; get shows the whole. */
#define LIST_ERROR_MAX 48

typedef struct Service {
        const TwinctlArgs *args;
        TwinBackend *backend;
        json_t *map;           /* the back end's devices, borrowed */
        const char *device_id; /* the one device of get/set/watch, NULL for list */

        /* watch: what was printed last of each device, to print only changes: id ->
         * {"desired", "props", "status", "connection"}. quiet: the fleet's current state is
         * only remembered, not printed. */
        bool watching, quiet;
        json_t *seen;

        /* set --wait. MQTT has no compare-and-set: another writer is noticed only by its
         * document arriving. published: the document we publish (NULL before); seen_own: its echo
         * came back; superseded: a different desired document arrived after our read, raced when
         * before our echo (so ours overwrote it), deleted when it was an empty payload; answer:
         * the device's $status for ours, taken only after our PUBACK so that one already on the
         * broker (or a late one for an older document) does not count. wait_version is -1 until
         * a cloud's back end named the version of our request; until then published is
         * compared without its $version. */
        json_t *published;
        int64_t wait_version;
        bool seen_own;
        bool superseded, raced, deleted;
        int64_t superseded_by;
        json_t *answer;
} Service;

static void service_done(Service *s)
{
        twin_backend_free(s->backend);
        json_decref(s->seen);
        json_decref(s->published);
        json_decref(s->answer);
}

static json_t *service_entry(const Service *s, const char *id)
{
        return json_object_get(s->map, id);
}

static char *strdup_or_null(const char *s)
{
        return s ? strdup(s) : NULL;
}

static int compare_strings(const void *a, const void *b);

static bool same(const json_t *a, const json_t *b)
{
        if (!a || !b)
                return a == b;
        return json_equal(a, b);
}

/* Replaces what seen holds under key with a copy of v (NULL: removes it) when they differ;
 * returns whether they did. *ret_old gets what it held (a new reference, NULL: nothing). */
static bool remember(json_t *seen, const char *key, const json_t *v, json_t **ret_old)
{
        json_t *old = json_object_get(seen, key);

        if (ret_old)
                *ret_old = json_incref(old);
        if (same(old, v))
                return false;
        if (v)
                json_object_set_new(seen, key, json_deep_copy(v));
        else
                json_object_del(seen, key);
        return true;
}

/* "failed for desired $version 5 (configId 4): error", for people. Returns malloc'd or NULL. */
static char *describe_status(const json_t *status)
{
        const char *state = json_string_value(json_object_get(status, "state"));
        const char *error = json_string_value(json_object_get(status, "error"));
        json_t *dv = json_object_get(status, "desiredVersion"), *cfg;
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return NULL;
        fputs(state ? state : "(no state)", f);
        if (json_is_integer(dv))
                fprintf(f, " for desired $version %" JSON_INTEGER_FORMAT, json_integer_value(dv));
        cfg = json_object_get(status, "configId");
        if (cfg) {
                _cleanup_free_ char *v = output_value(cfg, false);
                fprintf(f, " (configId %s)", v ? v : "?");
        }
        if (error)
                fprintf(f, ": %s", error);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return output_sanitize(buf);
}

/* "online since 2026-11-26T09:41:58Z (twind 0.1.0)", "offline", for people. */
static char *describe_connection(const json_t *conn)
{
        const char *state = json_string_value(json_object_get(conn, "state"));
        const char *since = json_string_value(json_object_get(conn, "since"));
        const char *agent = json_string_value(json_object_get(conn, "agent"));
        char *s;

        if (!conn)
                return strdup("unknown (no connection message)");
        if (asprintf(&s, "%s%s%s%s%s%s", state ? state : "(no state)", since ? " since " : "",
                     since ? since : "", agent ? " (" : "", agent ? agent : "",
                     agent ? ")" : "") < 0)
                return NULL;
        return output_sanitize(s);
}

static void watch_print(const Service *s, const char *id, const char *kind, const json_t *value,
                        const json_t *changes, const char *text, enum OutputColor color)
{
        _cleanup_free_ char *safe = text ? output_sanitize(strdup(text)) : NULL;
        char now[32];

        twin_format_time(-1, now);
        if (s->args->json) {
                _cleanup_json_ json_t *j =
                    json_pack("{s:s,s:s,s:s,s:O,s:O*}", "time", now, "deviceId", id, "kind", kind,
                              "value", value ? value : json_null(), "changes", changes);
                if (j)
                        (void)output_json_line(j);
                return;
        }
        /* A fleet's lines say whose they are. */
        if (!s->device_id)
                printf("%s %s %-10s %s%s%s\n", now, id, kind, output_color_on(color),
                       safe ? safe : "?", color == OUTPUT_COLOR_NONE ? "" : output_color_off());
        else
                printf("%s %-10s %s%s%s\n", now, kind, output_color_on(color), safe ? safe : "?",
                       color == OUTPUT_COLOR_NONE ? "" : output_color_off());
        fflush(stdout);
}

/* Writes a merge patch as "a.b=1 c=x -d" (sorted by name; "-" for a removed member), values
 * as set reads them. */
static void write_changes(FILE *f, const json_t *patch, const char *prefix, bool *first)
{
        size_t n = json_object_size(patch), i = 0;
        _cleanup_free_ const char **keys = calloc(n ? n : 1, sizeof(char *));
        const char *key;
        json_t *v;

        if (!keys)
                return;
        json_object_foreach ((json_t *)patch, key, v)
                keys[i++] = key;
        qsort(keys, n, sizeof(char *), compare_strings);
        for (i = 0; i < n; i++) {
                _cleanup_free_ char *path = NULL, *value = NULL;

                v = json_object_get(patch, keys[i]);
                path = malloc(strlen(prefix) + 2 * strlen(keys[i]) + 1);
                if (!path)
                        return;
                /* A dot or backslash of a name is written as set reads it: "\." and "\\". */
                strcpy(path, prefix);
                for (char *o = path + strlen(prefix), *k = (char *)keys[i];; k++) {
                        if (*k == '.' || *k == '\\')
                                *o++ = '\\';
                        *o++ = *k;
                        if (!*k)
                                break;
                }
                if (json_is_object(v) && json_object_size(v) > 0) {
                        _cleanup_free_ char *nested = NULL;

                        if (asprintf(&nested, "%s.", path) < 0)
                                return;
                        write_changes(f, v, nested, first);
                        continue;
                }
                fputs(*first ? "" : " ", f);
                *first = false;
                if (json_is_null(v)) {
                        fprintf(f, "-%s", path);
                        continue;
                }
                value = output_value(v, true);
                fprintf(f, "%s=%s", path, value ? value : "?");
        }
}

/* Prints the properties of doc that differ from old's: "$version 4: mode=eco -old". */
static void watch_document(Service *s, const char *id, const char *kind, const json_t *old_props,
                           const json_t *doc)
{
        _cleanup_json_ json_t *props = doc ? twin_properties(doc) : NULL;
        _cleanup_json_ json_t *empty = json_object(), *changes = NULL;
        _cleanup_free_ char *text = NULL;
        int64_t v = doc ? twin_document_version(doc) : -1;
        bool first = true;
        size_t size = 0;
        FILE *f;

        if (!doc) {
                watch_print(s, id, kind, NULL, NULL, "(none)", OUTPUT_COLOR_GREY);
                return;
        }
        changes =
            props && empty ? twin_merge_patch_diff(old_props ? old_props : empty, props) : NULL;
        f = open_memstream(&text, &size);
        if (!f || !changes) {
                if (f)
                        fclose(f);
                return;
        }
        if (v >= 0)
                fprintf(f, "$version %" PRId64 "%s", v, json_object_size(changes) ? ": " : "");
        write_changes(f, changes, "", &first);
        if (v < 0 && first)
                fputs("(no properties)", f);
        if (fclose(f) != 0)
                return;
        watch_print(s, id, kind, doc, changes, text, OUTPUT_COLOR_NONE);
}

/* Prints what changed in the device's twin with this message. */
static void watch_changes(Service *s, const char *id, enum DeviceKind kind, const json_t *entry)
{
        json_t *doc = device_entry_get(entry, kind), *seen = json_object_get(s->seen, id);
        _cleanup_json_ json_t *old = NULL;

        if (!seen) {
                seen = json_object();
                if (!seen || json_object_set_new(s->seen, id, seen) < 0)
                        return;
        }
        switch (kind) {
        case DEVICE_KIND_DESIRED: {
                _cleanup_json_ json_t *props = doc ? twin_properties(doc) : NULL;

                /* The $version alone changes too (a set of the same properties): news. */
                remember(seen, "desiredProps", props, &old);
                if (remember(seen, "desired", doc, NULL) && !s->quiet)
                        watch_document(s, id, "desired", old, doc);
                break;
        }
        case DEVICE_KIND_REPORTED: {
                _cleanup_json_ json_t *props = doc ? twin_properties(doc) : NULL;
                json_t *status = device_reported_status(doc);

                /* Every publish bumps the reported $version: only new properties are news. */
                if (remember(seen, "props", props, &old) && !s->quiet)
                        watch_document(s, id, "reported", old, doc);
                if (remember(seen, "status", status, NULL) && !s->quiet) {
                        _cleanup_free_ char *text = status ? describe_status(status) : NULL;
                        watch_print(s, id, "status", status, NULL, status ? text : "(none)",
                                    output_state_color(
                                        json_string_value(json_object_get(status, "state"))));
                }
                break;
        }
        case DEVICE_KIND_CONNECTION:
                if (remember(seen, "connection", doc, NULL) && !s->quiet) {
                        _cleanup_free_ char *text = describe_connection(doc);
                        watch_print(s, id, "connection", doc, NULL, text,
                                    device_is_online(doc) ? OUTPUT_COLOR_GREEN : OUTPUT_COLOR_RED);
                }
                break;
        case _DEVICE_KIND_MAX:
        case _DEVICE_KIND_INVALID:
                break;
        }
}

/* Whether status is the device's final answer to the document we published: its desired
 * $version and, when ours has one, its configId. */
static bool set_status_answers(const Service *s, const json_t *status)
{
        json_t *dv = json_object_get(status, "desiredVersion");
        json_t *cfg = json_object_get(s->published, "configId");
        const char *state = json_string_value(json_object_get(status, "state"));

        if (!json_is_integer(dv) || json_integer_value(dv) != s->wait_version)
                return false;
        if (cfg && !same(json_object_get(status, "configId"), cfg))
                return false;
        return state && (strcmp(state, "success") == 0 || strcmp(state, "failed") == 0);
}

/* Whether doc is ours: the document we sent, its $version the one of our request (or, while
 * that is not known yet, any). */
static bool is_own_document(const Service *s, const json_t *doc)
{
        if (!doc)
                return false;
        if (s->wait_version >= 0)
                return twin_document_version(doc) == s->wait_version &&
                       twin_properties_equal(doc, s->published);
        return twin_properties_equal(doc, s->published);
}

/* set: follows the desired and reported documents after ours was sent (see Service). */
static void set_track(Service *s, enum DeviceKind kind, const json_t *entry)
{
        json_t *doc = device_entry_get(entry, kind);

        if (kind == DEVICE_KIND_DESIRED) {
                if (is_own_document(s, doc))
                        s->seen_own = true;
                else if (!s->superseded) {
                        s->superseded = true;
                        s->raced = !s->seen_own;
                        s->deleted = !doc;
                        s->superseded_by = doc ? twin_document_version(doc) : -1;
                }
        } else if (kind == DEVICE_KIND_REPORTED && !s->answer && s->wait_version >= 0 &&
                   s->backend->impl->acknowledged(s->backend)) {
                json_t *status = device_reported_status(doc);

                if (set_status_answers(s, status))
                        s->answer = json_deep_copy(status);
        }
}

static void on_change(TwinBackend *b, const char *id, enum DeviceKind kind, const json_t *entry,
                      void *userdata)
{
        Service *s = userdata;

        if (s->device_id && strcmp(id, s->device_id) != 0)
                return;
        if (s->published)
                set_track(s, kind, entry);
        if (s->watching)
                watch_changes(s, id, kind, entry);
}

/* Opens the back end on id (NULL: every device that filter admits) with the current twins
 * read. Returns 0, or an exit code (TWINCTL_EXIT_SUCCESS after an interrupt). */
static int service_open(Service *s, const char *id, const TwinBackendFilter *filter,
                        bool catch_interrupt)
{
        const TwinBackendImpl *impl = twin_backend_for(s->args);
        int r;

        r = impl->open(&s->backend, s->args, id, filter, catch_interrupt, on_change, s);
        if (r == -EINTR)
                return TWINCTL_EXIT_SUCCESS;
        if (r < 0)
                return twin_backend_error_to_exit(r);
        s->map = s->backend->impl->devices(s->backend);
        return 0;
}

static int check_device_id(const char *id)
{
        if (!twin_device_id_is_valid(id)) {
                log_error("invalid device id '%s': use 1 to %d characters of A-Z a-z 0-9 - . _ :",
                          id, TWIN_DEVICE_ID_MAX);
                return -EINVAL;
        }
        return 0;
}

static int compare_strings(const void *a, const void *b)
{
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static bool array_has_string(const json_t *array, const char *s)
{
        size_t i;
        json_t *v;

        json_array_foreach (array, i, v)
                if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
                        return true;
        return false;
}

/* ---- get ---------------------------------------------------------------------------------- */

/* "$version 4"; "(none)" for no document; for a document without a usable $version, what is
 * wrong with it (the device refuses such a desired document). */
static void print_version_line(const char *label, const json_t *doc)
{
        int64_t v = doc ? twin_document_version(doc) : -1;

        if (v >= 0)
                printf("%s$version %" PRId64 "\n", label, v);
        else if (!doc)
                printf("%s(none)\n", label);
        else if (!json_object_get(doc, "$version"))
                printf("%s(no $version)\n", label);
        else
                printf("%s($version is not a non-negative integer)\n", label);
}

/* What the device reports itself (twinctl report on the device), apart from the
 * configuration: sorted "KEY  VALUE" rows. */
static void get_print_own(const json_t *own)
{
        size_t n = json_object_size(own), i = 0;
        _cleanup_free_ const char **names = NULL;
        const char *key;
        Table *t;
        json_t *v;

        if (n == 0)
                return;
        names = calloc(n, sizeof(char *));
        t = table_new(2, (const char *const[]){ "DEVICE PROPERTY", "VALUE" });
        if (!names || !t) {
                table_free(t);
                return;
        }
        json_object_foreach ((json_t *)own, key, v)
                names[i++] = key;
        qsort(names, n, sizeof(char *), compare_strings);
        for (i = 0; i < n; i++) {
                _cleanup_free_ char *value = output_value(json_object_get(own, names[i]), false);

                (void)table_add_row(
                    t, (const char *const[]){ names[i], value },
                    (const enum OutputColor[]){ OUTPUT_COLOR_NONE, OUTPUT_COLOR_NONE });
        }
        putchar('\n');
        table_print(t);
        table_free(t);
}

/* Who signed the desired document, as the document says (twinctl does not verify it: the
 * device does, against its own trusted keys). */
static void print_signature_line(const json_t *desired)
{
        TwinSignature sig;
        char err[256], until[32];

        if (!json_object_get(desired, TWIN_SIGNATURE_PROPERTY))
                return;
        if (twin_signature_parse(desired, &sig, err, sizeof err) < 0) {
                _cleanup_free_ char *e = output_sanitize(strdup(err));
                printf("Signature:  (malformed: %s)\n", e ? e : "?");
                return;
        }
        if (sig.not_after >= 0)
                twin_format_time(sig.not_after, until);
        printf("Signature:  key %s, sequence %" PRId64 ", for %s%s%s\n", sig.key_id, sig.seq,
               sig.device_id, sig.not_after >= 0 ? ", until " : "",
               sig.not_after >= 0 ? until : "");
}

static void get_print_human(const char *id, const json_t *desired, const json_t *reported,
                            const json_t *connection)
{
        _cleanup_free_ char *conn = describe_connection(connection);
        _cleanup_json_ json_t *dprops = desired ? twin_properties(desired) : json_object();
        _cleanup_json_ json_t *rprops =
            reported ? device_reported_properties(reported, false) : json_object();
        _cleanup_json_ json_t *own = reported ? device_reported_properties(reported, true) : NULL;
        _cleanup_json_ json_t *diff = twin_diff_keys(dprops, rprops);
        _cleanup_json_ json_t *keys = json_object();
        json_t *status = device_reported_status(reported);
        enum DeviceState state = device_state(desired, reported);
        const char *state_name = device_state_to_string(state);
        Table *t = NULL;
        const char *key;
        json_t *v;

        printf("%sDevice:%s     %s\n", output_color_on(OUTPUT_COLOR_BOLD), output_color_off(), id);
        printf(
            "Connection: %s%s%s\n",
            output_color_on(device_is_online(connection) ? OUTPUT_COLOR_GREEN : OUTPUT_COLOR_RED),
            conn ? conn : "?", output_color_off());
        printf("State:      %s%s%s", output_color_on(output_state_color(state_name)), state_name,
               output_color_off());
        if (state == DEVICE_STATE_PENDING && desired &&
            (!status || !json_equal(json_object_get(status, "desiredVersion"),
                                    json_object_get(desired, "$version"))))
                printf(" (the device has not answered desired $version %" PRId64 " yet)",
                       twin_document_version(desired));
        if (state == DEVICE_STATE_DRIFTED)
                printf(" (the device answered success but reports other properties than desired%s)",
                       json_is_true(json_object_get(status, "noChange"))
                           ? ": it applied nothing, the configId was unchanged"
                           : "");
        putchar('\n');
        if (status) {
                _cleanup_free_ char *st = describe_status(status);
                _cleanup_free_ char *at = output_sanitize(
                    strdup_or_null(json_string_value(json_object_get(status, "updatedAt"))));
                printf("$status:    %s%s%s\n", st ? st : "?", at ? ", at " : "", at ? at : "");
        } else
                printf("$status:    (none)\n");
        print_version_line("Desired:    ", desired);
        print_signature_line(desired);
        print_version_line("Reported:   ", reported);

        if (!dprops || !rprops || !diff || !keys)
                return;
        json_object_foreach (dprops, key, v)
                json_object_set(keys, key, json_true());
        json_object_foreach (rprops, key, v)
                json_object_set(keys, key, json_true());
        if (json_object_size(keys) == 0) {
                get_print_own(own);
                fflush(stdout);
                return;
        }

        t = table_new(4, (const char *const[]){ "", "PROPERTY", "DESIRED", "REPORTED" });
        if (!t)
                return;
        /* Sorted, so the table reads the same every time. */
        {
                size_t n = json_object_size(keys), i = 0;
                _cleanup_free_ const char **names = calloc(n, sizeof(char *));

                if (!names) {
                        table_free(t);
                        return;
                }
                json_object_foreach (keys, key, v)
                        names[i++] = key;
                qsort(names, n, sizeof(char *), compare_strings);
                for (i = 0; i < n; i++) {
                        _cleanup_free_ char *dv = NULL, *rv = NULL;
                        bool differs = array_has_string(diff, names[i]);

                        dv = json_object_get(dprops, names[i])
                                 ? output_value(json_object_get(dprops, names[i]), false)
                                 : NULL;
                        rv = json_object_get(rprops, names[i])
                                 ? output_value(json_object_get(rprops, names[i]), false)
                                 : NULL;
                        (void)table_add_row(
                            t, (const char *const[]){ differs ? "*" : " ", names[i], dv, rv },
                            (const enum OutputColor[]){
                                differs ? OUTPUT_COLOR_YELLOW : OUTPUT_COLOR_NONE,
                                differs ? OUTPUT_COLOR_YELLOW : OUTPUT_COLOR_NONE,
                                OUTPUT_COLOR_NONE, OUTPUT_COLOR_NONE });
                }
        }
        putchar('\n');
        table_print(t);
        table_free(t);
        get_print_own(own);
}

int verb_get(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(service_done) Service s = { .args = args, .wait_version = -1 };
        json_t *entry, *desired, *reported, *connection;
        int r;

        if (argc != 2) {
                log_error("get needs exactly one DEVICE");
                return TWINCTL_EXIT_USAGE;
        }
        if (check_device_id(argv[1]) < 0)
                return TWINCTL_EXIT_USAGE;
        s.device_id = argv[1];

        r = service_open(&s, s.device_id, NULL, false);
        if (r != 0)
                return r;

        entry = service_entry(&s, s.device_id);
        desired = device_entry_get(entry, DEVICE_KIND_DESIRED);
        reported = device_entry_get(entry, DEVICE_KIND_REPORTED);
        connection = device_entry_get(entry, DEVICE_KIND_CONNECTION);
        if (!desired && !reported && !connection) {
                log_error("device %s not found: no twin under %s/%s/ on %s", s.device_id,
                          args->topic_root, s.device_id, s.backend->impl->address(s.backend));
                return TWINCTL_EXIT_NOT_FOUND;
        }

        if (args->json) {
                _cleanup_json_ json_t *own =
                    reported ? device_reported_properties(reported, true) : json_object();
                _cleanup_json_ json_t *j =
                    own ? json_pack("{s:s,s:O,s:O,s:O,s:O}", "deviceId", s.device_id, "desired",
                                    desired ? desired : json_null(), "reported",
                                    reported ? reported : json_null(), "connection",
                                    connection ? connection : json_null(), "deviceProperties", own)
                        : NULL;
                if (!j || output_json(j) < 0)
                        return log_error_errno(-ENOMEM, "Failed to print"), TWINCTL_EXIT_FAILURE;
        } else
                get_print_human(s.device_id, desired, reported, connection);
        return TWINCTL_EXIT_SUCCESS;
}

/* ---- set ---------------------------------------------------------------------------------- */

/* Drops every key that starts with '$' (at any depth) from a copy of the current desired
 * document, but the top-level $version: the device refuses a whole document for one such key, so
 * one stray key would otherwise block every later set. Says which keys went. */
static void drop_protocol_keys(json_t *v, const char *device_id, bool top)
{
        const char *key;
        json_t *child;
        void *tmp;
        size_t i;

        if (json_is_array(v)) {
                json_array_foreach (v, i, child)
                        drop_protocol_keys(child, device_id, false);
                return;
        }
        json_object_foreach_safe (v, tmp, key, child) {
                if (key[0] == '$' && !(top && strcmp(key, "$version") == 0)) {
                        _cleanup_free_ char *k = output_sanitize(strdup(key));

                        log_warning("the current desired document of %s has the key '%s', which "
                                    "belongs to the protocol: leaving it out of the new one",
                                    device_id, k ? k : "?");
                        json_object_del(v, key);
                        continue;
                }
                drop_protocol_keys(child, device_id, false);
        }
}

/* The configId of a set that gives none: one above every integer configId the twin has seen,
 * desired or answered, so that the device never takes the new request for an old one. */
static int next_config_id(const char *id, const json_t *desired, const json_t *reported,
                          json_t **ret)
{
        json_t *cur = json_object_get(desired, "configId");
        int64_t last;

        if (cur && !json_is_integer(cur)) {
                _cleanup_free_ char *v = output_value(cur, false);
                log_error("the current configId of %s is %s, not an integer: give the new one "
                          "with configId=VALUE",
                          id, v ? v : "?");
                return -EINVAL;
        }
        if (!device_last_config_id(desired, reported, &last, NULL)) {
                *ret = json_integer(1);
                return *ret ? 0 : -ENOMEM;
        }
        if (last == INT64_MAX) {
                log_error("the largest configId of %s is the largest integer: give the new one "
                          "with configId=VALUE",
                          id);
                return -ERANGE;
        }
        *ret = json_integer(last + 1);
        return *ret ? 0 : -ENOMEM;
}

static bool set_answered(void *userdata)
{
        Service *s = userdata;

        return s->superseded || s->answer;
}

static int set_wait(Service *s, json_t *result)
{
        uint64_t start = now_ms(), deadline = twinctl_deadline(s->args, TWINCTL_WAIT_TIMEOUT_MS);
        json_t *entry;
        const char *state;
        int r;

        r = s->backend->impl->wait(s->backend, set_answered, s, deadline);
        entry = service_entry(s, s->device_id);
        if (r == -ETIMEDOUT) {
                json_t *conn = device_entry_get(entry, DEVICE_KIND_CONNECTION);
                log_error("timed out after %.1f s waiting for %s to answer desired $version "
                          "%" PRId64 "%s",
                          (double)(now_ms() - start) / 1000.0, s->device_id, s->wait_version,
                          !device_is_online(conn) ? " (the device is not online)" : "");
                return TWINCTL_EXIT_TIMEOUT;
        }
        if (r == -EINTR)
                return TWINCTL_EXIT_FAILURE;
        if (r < 0)
                return twin_backend_error_to_exit(r);
        /* Checked before the answer: when both came in one go, ours may not be what runs. */
        if (s->superseded && s->raced) {
                char what[64];

                if (s->deleted)
                        snprintf(what, sizeof what, "a deletion");
                else if (s->superseded_by >= 0)
                        snprintf(what, sizeof what, "$version %" PRId64, s->superseded_by);
                else
                        snprintf(what, sizeof what, "a document without $version");
                log_error("another writer published desired %s of %s while this set was in "
                          "flight: our $version %" PRId64 " overwrote it and the device may not "
                          "apply ours; see twinctl get %s",
                          what, s->device_id, s->wait_version, s->device_id);
                return TWINCTL_EXIT_CONFLICT;
        }
        if (s->superseded) {
                if (s->deleted)
                        log_error("desired $version %" PRId64 " of %s was deleted before the "
                                  "device answered it",
                                  s->wait_version, s->device_id);
                else if (s->superseded_by >= 0)
                        log_error("desired $version %" PRId64 " of %s was replaced by $version "
                                  "%" PRId64 " before the device answered it",
                                  s->wait_version, s->device_id, s->superseded_by);
                else
                        log_error("desired $version %" PRId64 " of %s was replaced by a document "
                                  "without $version before the device answered it",
                                  s->wait_version, s->device_id);
                return TWINCTL_EXIT_CONFLICT;
        }

        state = json_string_value(json_object_get(s->answer, "state"));
        if (result)
                json_object_set(result, "status", s->answer);
        if (state && strcmp(state, "failed") == 0) {
                _cleanup_free_ char *error = output_sanitize(
                    strdup_or_null(json_string_value(json_object_get(s->answer, "error"))));
                log_error("%s reported failed for desired $version %" PRId64 ": %s", s->device_id,
                          s->wait_version, error ? error : "(no error given)");
                return TWINCTL_EXIT_DEVICE_FAILED;
        }
        if (s->args->json)
                return TWINCTL_EXIT_SUCCESS;
        if (json_is_true(json_object_get(s->answer, "noChange"))) {
                _cleanup_free_ char *cfg =
                    output_value(json_object_get(s->published, "configId"), false);

                if (json_object_get(s->published, "configId"))
                        printf("%s answered desired $version %" PRId64 " without applying "
                               "(configId %s unchanged).\n",
                               s->device_id, s->wait_version, cfg ? cfg : "?");
                else
                        printf("%s answered desired $version %" PRId64 " without applying (it "
                               "already runs these properties).\n",
                               s->device_id, s->wait_version);
        } else
                printf("%s applied desired $version %" PRId64 ".\n", s->device_id, s->wait_version);
        return TWINCTL_EXIT_SUCCESS;
}

int verb_set(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(service_done) Service s = { .args = args, .wait_version = -1 };
        _cleanup_(signer_freep) Signer *signer = NULL;
        _cleanup_json_ json_t *patches = NULL, *doc = NULL, *config_id = NULL, *parsed = NULL,
                              *result = NULL, *reported_props = NULL, *current_props = NULL,
                              *diff = NULL, *full = NULL;
        _cleanup_free_ char *payload = NULL, *cfg = NULL;
        const TwinBackendImpl *impl;
        bool has_config_id;
        int64_t last_version, new_version, parsed_version;
        json_t *current, *reported, *patch;
        char err[256];
        size_t i;
        int r;

        if (argc < 2 || (argc < 3 && !args->set_file)) {
                log_error("set needs a DEVICE and at least one KEY=VALUE (or --file FILE)");
                return TWINCTL_EXIT_USAGE;
        }
        if (check_device_id(argv[1]) < 0)
                return TWINCTL_EXIT_USAGE;
        s.device_id = argv[1];
        r = twinctl_parse_pairs(args->set_file, argc - 2, argv + 2, &patches, &has_config_id);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory"), TWINCTL_EXIT_FAILURE;
        if (r < 0)
                return TWINCTL_EXIT_USAGE;
        /* Before the service: a key that cannot be used is a mistake to hear of at once. */
        r = signer_new(args, &signer);
        if (r < 0)
                return r == -ENOMEM ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_USAGE;

        r = service_open(&s, s.device_id, NULL, false);
        if (r != 0)
                return r;
        impl = s.backend->impl;

        current = device_entry_get(service_entry(&s, s.device_id), DEVICE_KIND_DESIRED);
        reported = device_entry_get(service_entry(&s, s.device_id), DEVICE_KIND_REPORTED);
        if (device_never_connected(
                device_entry_get(service_entry(&s, s.device_id), DEVICE_KIND_CONNECTION), reported))
                log_warning("%s has never connected (nothing on %s says it did): check the device "
                            "id; the desired document waits there until a device of that id "
                            "connects",
                            s.device_id, impl->address(s.backend));
        current_props = current ? json_deep_copy(current) : json_object();
        if (!current_props)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        drop_protocol_keys(current_props, s.device_id, true);
        json_object_del(current_props, "$version");
        doc = json_deep_copy(current_props);
        if (!doc)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        if (!current && reported &&
            json_object_size(reported_props = device_reported_properties(reported, false)))
                log_warning("%s has no desired document (lost or never set) but reports "
                            "properties: the new desired document holds only what this set "
                            "gives",
                            s.device_id);
        json_array_foreach (patches, i, patch)
                if (twin_merge_patch(doc, patch) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        if (!has_config_id) {
                r = next_config_id(s.device_id, current, reported, &config_id);
                if (r == -ENOMEM)
                        return log_error_errno(r, "Out of memory"), TWINCTL_EXIT_FAILURE;
                if (r < 0)
                        return TWINCTL_EXIT_FAILURE;
                if (json_object_set(doc, "configId", config_id) < 0)
                        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        } else if (reported && json_equal(twin_config_id(doc), twin_config_id(reported)) &&
                   (reported_props ||
                    (reported_props = device_reported_properties(reported, false))) &&
                   !twin_properties_equal(doc, reported_props)) {
                _cleanup_free_ char *v = output_value(twin_config_id(doc), false);
                log_warning("configId %s is the one %s already runs: the device answers without "
                            "applying the other properties (leave configId out to get a new one)",
                            v ? v : "?", s.device_id);
        }
        /* Above what the desired document says and what the device answered: after a lost
         * desired document the count must not start again at a $version already answered. (A
         * cloud counts its own versions: there this only checks the document.) */
        last_version = device_last_version(current, reported);
        if (last_version == INT64_MAX) {
                log_error("desired $version of %s is already the largest integer", s.device_id);
                return TWINCTL_EXIT_FAILURE;
        }
        new_version = last_version < 0 ? 1 : last_version + 1;

        /* A signature covers the whole new document: the old one never carries over (an
         * unsigned set removes it), and a new one is made over the merged properties. */
        json_object_del(doc, TWIN_SIGNATURE_PROPERTY);
        if (signer && signer_sign(signer, doc, current, s.device_id) < 0)
                return TWINCTL_EXIT_FAILURE;

        /* Never send what the device would refuse (the service's size, depth and key rules),
         * the signature included. */
        full = json_deep_copy(doc);
        if (!full || json_object_set_new(full, "$version", json_integer(new_version)) < 0 ||
            !(payload = json_dumps_compact(full)))
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        r = twin_desired_parse(payload, strlen(payload), impl->limits, &parsed, &parsed_version,
                               err, sizeof err);
        if (r < 0) {
                log_error("refusing to send the new desired document of %s%s: %s", s.device_id,
                          signer ? " once signed" : "", err);
                return TWINCTL_EXIT_FAILURE;
        }
        diff = twin_merge_patch_diff(current_props, doc);
        if (!diff)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;

        /* Armed before sending: our echo and other writers may arrive before the
         * acknowledgement. A cloud names the version of our request only in its answer. */
        if (!(impl->flags & TWIN_BACKEND_SERVICE_VERSION))
                s.wait_version = new_version;
        s.published = json_incref(parsed);
        r = impl->set(s.backend, s.device_id, doc, diff, new_version,
                      args->has_if_version ? args->if_version : -1, &new_version);
        if (r < 0)
                return twin_backend_error_to_exit(r);
        s.wait_version = new_version;
        json_object_set_new(s.published, "$version", json_integer(new_version));

        cfg = output_value(json_object_get(doc, "configId"), false);
        if (args->json) {
                result =
                    json_pack("{s:s,s:I,s:O,s:O}", "deviceId", s.device_id, "version",
                              (json_int_t)new_version, "configId",
                              json_object_get(doc, "configId") ? json_object_get(doc, "configId")
                                                               : json_null(),
                              "desired", s.published);
                if (!result)
                        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        } else {
                printf("Published desired $version %" PRId64 " of %s (configId %s).\n", new_version,
                       s.device_id, cfg ? cfg : "?");
                fflush(stdout);
        }

        r = TWINCTL_EXIT_SUCCESS;
        if (args->wait)
                r = set_wait(&s, result);
        if (result && output_json(result) < 0)
                return TWINCTL_EXIT_FAILURE;
        return r;
}

/* ---- watch -------------------------------------------------------------------------------- */

/* Whether the device answered its current desired $version for good. */
static bool entry_converged(const json_t *entry, enum DeviceState *ret)
{
        json_t *desired = device_entry_get(entry, DEVICE_KIND_DESIRED);

        *ret = device_state(desired, device_entry_get(entry, DEVICE_KIND_REPORTED));
        return desired && (*ret == DEVICE_STATE_SUCCESS || *ret == DEVICE_STATE_FAILED ||
                           *ret == DEVICE_STATE_DRIFTED);
}

/* One device: it answered. The fleet: every device with a desired document answered. */
static bool watch_converged(void *userdata)
{
        Service *s = userdata;
        enum DeviceState state;
        const char *id;
        json_t *entry;

        if (s->device_id)
                return entry_converged(service_entry(s, s->device_id), &state);
        json_object_foreach (s->map, id, entry)
                if (device_entry_get(entry, DEVICE_KIND_DESIRED) && !entry_converged(entry, &state))
                        return false;
        return true;
}

static bool never(void *userdata)
{
        return false;
}

/* The exit status of watch --until-converged for one device that answered. */
static int watch_outcome(Service *s, const char *id)
{
        json_t *entry = service_entry(s, id);
        json_t *status = device_reported_status(device_entry_get(entry, DEVICE_KIND_REPORTED));
        enum DeviceState state;

        if (!entry_converged(entry, &state))
                return TWINCTL_EXIT_SUCCESS; /* nothing to converge (fleet: no desired) */
        switch (state) {
        case DEVICE_STATE_FAILED: {
                _cleanup_free_ char *error = output_sanitize(
                    strdup_or_null(json_string_value(json_object_get(status, "error"))));
                log_error("%s reported failed: %s", id, error ? error : "(no error given)");
                return TWINCTL_EXIT_DEVICE_FAILED;
        }
        case DEVICE_STATE_DRIFTED:
                log_error("%s answered the desired $version but reports other properties: it "
                          "did not take them%s; see twinctl get %s",
                          id,
                          json_is_true(json_object_get(status, "noChange"))
                              ? " (the configId was unchanged)"
                              : "",
                          id);
                return TWINCTL_EXIT_DEVICE_FAILED;
        case DEVICE_STATE_NONE:
        case DEVICE_STATE_PENDING:
        case DEVICE_STATE_SUCCESS:
                break;
        }
        return TWINCTL_EXIT_SUCCESS;
}

int verb_watch(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(service_done) Service s = { .args = args, .watching = true, .wait_version = -1 };
        const TwinBackendImpl *impl = twin_backend_for(args);
        TwinBackendFilter filter = { 0 };
        int r, worst = TWINCTL_EXIT_SUCCESS;
        const char *id;
        json_t *entry;

        if (args->list_devices) {
                if (argc < 2) {
                        log_error("watch --devices needs at least one DEVICE");
                        return TWINCTL_EXIT_USAGE;
                }
                for (int k = 1; k < argc; k++)
                        if (check_device_id(argv[k]) < 0)
                                return TWINCTL_EXIT_USAGE;
                filter.ids = argv + 1;
        } else if (argc == 2) {
                if (check_device_id(argv[1]) < 0)
                        return TWINCTL_EXIT_USAGE;
                s.device_id = argv[1];
        } else if (argc > 2) {
                log_error("watch takes one DEVICE, none (the whole fleet), or --devices ID...");
                return TWINCTL_EXIT_USAGE;
        } else if (!(impl->flags & TWIN_BACKEND_LIST)) {
                log_error("watching every device is not available on %s (no fleet index); name "
                          "the devices with watch --devices ID...",
                          impl->name);
                return TWINCTL_EXIT_USAGE;
        }
        s.seen = json_object();
        if (!s.seen)
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        /* One device's current state is printed first; a fleet's is only remembered (it would
         * be thousands of lines), and what changes from then on is printed. */
        s.quiet = !s.device_id;
        r = service_open(&s, s.device_id, s.device_id ? NULL : &filter, true);
        if (r != 0 || !s.backend)
                return r;
        s.quiet = false;
        /* On stderr, so that stdout holds only the changes (JSON with --json): says the watch
         * is on. */
        if (!s.device_id)
                fprintf(stderr, "Watching %zu device%s on %s; changes from now on:\n",
                        json_object_size(s.map), json_object_size(s.map) == 1 ? "" : "s",
                        impl->address(s.backend));
        else
                fprintf(stderr, "Watching %s on %s:\n", s.device_id, impl->address(s.backend));

        /* Without --timeout a watch runs until Ctrl-C. */
        r = s.backend->impl->wait(s.backend, args->until_converged ? watch_converged : never, &s,
                                  args->timeout_ms > 0 ? twinctl_deadline(args, 0) : 0);
        if (r == -EINTR)
                return TWINCTL_EXIT_SUCCESS;
        if (r == -ETIMEDOUT) {
                if (!args->until_converged)
                        return TWINCTL_EXIT_SUCCESS;
                log_error("timed out waiting for %s to converge",
                          s.device_id ? s.device_id : "the devices");
                return TWINCTL_EXIT_TIMEOUT;
        }
        if (r < 0)
                return twin_backend_error_to_exit(r);
        if (s.device_id)
                return watch_outcome(&s, s.device_id);
        json_object_foreach (s.map, id, entry) {
                r = watch_outcome(&s, id);
                if (worst == TWINCTL_EXIT_SUCCESS)
                        worst = r;
        }
        return worst;
}

/* ---- delete ------------------------------------------------------------------------------- */

/* Removes one device's twin; returns an exit code. */
static int delete_one(const TwinctlArgs *args, const char *id)
{
        _cleanup_(service_done) Service s = { .args = args, .wait_version = -1, .device_id = id };
        json_t *entry, *connection;
        int r;

        r = service_open(&s, id, NULL, false);
        if (r != 0)
                return r;
        entry = service_entry(&s, id);
        connection = device_entry_get(entry, DEVICE_KIND_CONNECTION);
        if (!device_entry_get(entry, DEVICE_KIND_DESIRED) &&
            !device_entry_get(entry, DEVICE_KIND_REPORTED) && !connection) {
                log_error("device %s not found: no twin of it on %s", id,
                          s.backend->impl->address(s.backend));
                return TWINCTL_EXIT_NOT_FOUND;
        }
        /* Its agent publishes its documents again on its next connect: the twin would come
         * back, half of it. */
        if (device_is_online(connection) && !args->force) {
                log_error("%s is online: its agent would publish its twin again; stop it first, "
                          "or delete anyway with --force",
                          id);
                return TWINCTL_EXIT_FAILURE;
        }
        r = s.backend->impl->remove(s.backend, id);
        if (r < 0)
                return twin_backend_error_to_exit(r);
        if (args->json) {
                _cleanup_json_ json_t *j = json_pack("{s:s,s:b}", "deviceId", id, "deleted", 1);

                if (!j || output_json_line(j) < 0)
                        return TWINCTL_EXIT_FAILURE;
        } else
                printf("Deleted the twin of %s on %s%s\n", id, s.backend->impl->address(s.backend),
                       connection ? "" : " (the service does not say whether it is connected)");
        return TWINCTL_EXIT_SUCCESS;
}

int verb_delete(int argc, char **argv, const TwinctlArgs *args)
{
        const TwinBackendImpl *impl = twin_backend_for(args);
        int worst = TWINCTL_EXIT_SUCCESS;

        if (argc < 2) {
                log_error("delete needs at least one DEVICE");
                return TWINCTL_EXIT_USAGE;
        }
        if (!impl->remove) {
                log_error("delete is not available on %s", impl->name);
                return TWINCTL_EXIT_USAGE;
        }
        for (int i = 1; i < argc; i++)
                if (check_device_id(argv[i]) < 0)
                        return TWINCTL_EXIT_USAGE;
        /* Every device is tried; the exit status is that of the first that failed. */
        for (int i = 1; i < argc; i++) {
                int r = delete_one(args, argv[i]);

                if (r == TWINCTL_EXIT_UNREACHABLE || r == TWINCTL_EXIT_ACCESS_DENIED)
                        return r; /* the next one would fail the same way */
                if (worst == TWINCTL_EXIT_SUCCESS)
                        worst = r;
        }
        return worst;
}

/* ---- list --------------------------------------------------------------------------------- */

static bool list_matches(const TwinctlArgs *args, enum DeviceState state, bool online)
{
        /* The state filters widen each other (OR); the connection filters narrow them (AND).
         * Drifted has not converged: it is listed as pending. */
        if ((args->filter_pending || args->filter_failed || args->filter_success) &&
            !((args->filter_pending &&
               (state == DEVICE_STATE_PENDING || state == DEVICE_STATE_DRIFTED)) ||
              (args->filter_failed && state == DEVICE_STATE_FAILED) ||
              (args->filter_success && state == DEVICE_STATE_SUCCESS)))
                return false;
        if (args->filter_offline && online)
                return false;
        if (args->filter_online && !online)
                return false;
        return true;
}

/* Whether id matches one of the shell patterns (NULL: no patterns, every id). */
static bool list_pattern_matches(char *const *patterns, const char *id)
{
        if (!patterns)
                return true;
        for (; *patterns; patterns++)
                if (fnmatch(*patterns, id, 0) == 0)
                        return true;
        return false;
}

/* The counts of the summary line under the table. */
typedef struct ListCounts {
        size_t devices, states[DEVICE_STATE_DRIFTED + 1], online, offline;
} ListCounts;

static void list_print_summary(const ListCounts *c)
{
        printf("\n%zu device%s: %zu converged, %zu pending, %zu failed, %zu drifted", c->devices,
               c->devices == 1 ? "" : "s", c->states[DEVICE_STATE_SUCCESS],
               c->states[DEVICE_STATE_PENDING], c->states[DEVICE_STATE_FAILED],
               c->states[DEVICE_STATE_DRIFTED]);
        if (c->states[DEVICE_STATE_NONE] > 0)
                printf(", %zu without a desired document", c->states[DEVICE_STATE_NONE]);
        printf("; %zu online, %zu offline\n", c->online, c->offline);
}

/* The ERROR cell: the first line of a failed device's error, shortened. */
static char *list_error_cell(const char *error)
{
        size_t n = error ? strcspn(error, "\n") : 0;

        if (!error)
                return NULL;
        if (n > LIST_ERROR_MAX)
                n = LIST_ERROR_MAX;
        return strndup(error, n);
}

int verb_list(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(service_done) Service s = { .args = args, .wait_version = -1 };
        _cleanup_json_ json_t *out = NULL;
        const TwinBackendImpl *impl = twin_backend_for(args);
        TwinBackendFilter filter = {
                .pending = args->filter_pending,
                .failed = args->filter_failed,
                .success = args->filter_success,
                .offline = args->filter_offline,
                .online = args->filter_online,
                .summary = true,
        };
        _cleanup_free_ const char **ids = NULL;
        char *const *patterns = NULL;
        ListCounts counts = { 0 };
        time_t now = time(NULL);
        char now_iso[32];
        Table *t = NULL;
        size_t n, i = 0;
        const char *id;
        json_t *entry;
        int r;

        twin_format_time(now, now_iso);
        if (args->filter_online && args->filter_offline) {
                log_error("--online and --offline exclude each other");
                return TWINCTL_EXIT_USAGE;
        }
        if (args->list_devices) {
                if (argc < 2) {
                        log_error("list --devices needs at least one DEVICE");
                        return TWINCTL_EXIT_USAGE;
                }
                for (int k = 1; k < argc; k++)
                        if (check_device_id(argv[k]) < 0)
                                return TWINCTL_EXIT_USAGE;
                filter.ids = argv + 1;
        } else if (!(impl->flags & TWIN_BACKEND_LIST)) {
                log_error("listing every device is not available on %s: it needs the service's "
                          "fleet index (HTTPS with SigV4 on AWS IoT), which twinctl does not "
                          "speak; name the devices with list --devices ID...",
                          impl->name);
                return TWINCTL_EXIT_USAGE;
        } else if (argc > 1)
                patterns = argv + 1; /* list 'sensor-*' */

        r = service_open(&s, NULL, &filter, false);
        if (r != 0)
                return r;

        n = json_object_size(s.map);
        ids = calloc(n ? n : 1, sizeof(char *));
        out = json_array();
        t = table_new(8, (const char *const[]){ "DEVICE", "DESIRED", "REPORTED", "STATE",
                                                "CONNECTION", "LAST SEEN", "VERSION", "ERROR" });
        if (!ids || !out || !t) {
                table_free(t);
                return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
        }
        json_object_foreach (s.map, id, entry)
                ids[i++] = id;
        qsort(ids, n, sizeof(char *), compare_strings);

        for (i = 0; i < n; i++) {
                json_t *e = json_object_get(s.map, ids[i]);

                if (filter.ids && !strv_contains(filter.ids, ids[i]))
                        continue;
                if (!list_pattern_matches(patterns, ids[i]))
                        continue;
                json_t *desired = device_entry_get(e, DEVICE_KIND_DESIRED);
                json_t *reported = device_entry_get(e, DEVICE_KIND_REPORTED);
                json_t *connection = device_entry_get(e, DEVICE_KIND_CONNECTION);
                json_t *dcfg = desired ? twin_config_id(desired) : NULL;
                json_t *rcfg = reported ? twin_config_id(reported) : NULL;
                json_t *rversion = json_object_get(reported, "$version");
                enum DeviceState state = device_state(desired, reported);
                bool online = device_is_online(connection), exact = true;
                const char *conn = connection ? (online ? "online" : "offline") : "unknown";
                const char *state_name = device_state_to_string(state);
                const char *error = state == DEVICE_STATE_FAILED
                                        ? json_string_value(json_object_get(
                                              device_reported_status(reported), "error"))
                                        : NULL;
                const char *seen = NULL;
                bool seen_known = device_last_seen(connection, &seen, &exact);
                _cleanup_free_ char *dv = NULL, *rv = NULL, *ver = NULL, *err = NULL;
                char ago[32], seen_cell[40];

                if (!desired && !reported && !connection)
                        continue; /* only deleted retained messages left */
                if (!list_matches(args, state, online))
                        continue;
                counts.devices++;
                counts.states[state]++;
                if (online)
                        counts.online++;
                else
                        counts.offline++;
                if (seen_known && !seen)
                        seen = now_iso; /* online: seen now */
                if (args->json) {
                        json_t *row = json_pack(
                            "{s:s,s:O,s:O,s:O,s:o,s:s,s:s?,s:b,s:O,s:s?}", "deviceId", ids[i],
                            "desiredVersion",
                            desired && twin_document_version(desired) >= 0
                                ? json_object_get(desired, "$version")
                                : json_null(),
                            "desiredConfigId", dcfg ? dcfg : json_null(), "reportedConfigId",
                            rcfg ? rcfg : json_null(), "state",
                            state == DEVICE_STATE_NONE ? json_null() : json_string(state_name),
                            "connection", conn, "lastSeen", seen, "lastSeenExact", exact,
                            "reportedVersion", json_is_integer(rversion) ? rversion : json_null(),
                            "error", error);
                        if (!row || json_array_append_new(out, row) < 0)
                                goto oom;
                        continue;
                }
                dv = dcfg ? output_value(dcfg, true) : NULL;
                rv = rcfg ? output_value(rcfg, true) : NULL;
                ver = json_is_integer(rversion) ? output_value(rversion, true) : NULL;
                err = list_error_cell(error);
                if (online)
                        snprintf(seen_cell, sizeof seen_cell, "now");
                else if (seen && output_ago(seen, now, ago, sizeof ago))
                        /* A will only says the lost connection began then: seen since. */
                        snprintf(seen_cell, sizeof seen_cell, "%s%s", exact ? "" : "<", ago);
                else
                        snprintf(seen_cell, sizeof seen_cell, "-");
                if (table_add_row(t,
                                  (const char *const[]){ ids[i], dv, rv, state_name, conn,
                                                         seen_cell, ver, err },
                                  (const enum OutputColor[]){
                                      OUTPUT_COLOR_NONE,
                                      OUTPUT_COLOR_NONE,
                                      OUTPUT_COLOR_NONE,
                                      output_state_color(state_name),
                                      online ? OUTPUT_COLOR_GREEN : OUTPUT_COLOR_RED,
                                      OUTPUT_COLOR_NONE,
                                      OUTPUT_COLOR_NONE,
                                      err ? OUTPUT_COLOR_RED : OUTPUT_COLOR_NONE,
                                  }) < 0)
                        goto oom;
        }
        if (args->json)
                r = output_json(out) < 0 ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_SUCCESS;
        else {
                if (counts.devices > 0) {
                        table_print(t);
                        list_print_summary(&counts);
                } else
                        printf("No devices%s under %s/ on %s.\n",
                               args->filter_pending || args->filter_failed ||
                                       args->filter_success || args->filter_offline ||
                                       args->filter_online || patterns
                                   ? " match"
                                   : "",
                               args->topic_root, s.backend->impl->address(s.backend));
                r = TWINCTL_EXIT_SUCCESS;
        }
        table_free(t);
        return r;
oom:
        table_free(t);
        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
}

int verb_query(int argc, char **argv, const TwinctlArgs *args)
{
        _cleanup_(service_done) Service s = { .args = args, .wait_version = -1 };
        _cleanup_json_ json_t *rows = NULL;
        const TwinBackendImpl *impl = twin_backend_for(args);
        TwinBackendFilter none = { .ids = (char *const[]){ NULL } };
        size_t i;
        json_t *row;
        int r;

        if (argc != 2) {
                log_error("query needs exactly one QUERY, such as 'SELECT * FROM devices WHERE "
                          "properties.reported.twinStatus.state = \\'failed\\''");
                return TWINCTL_EXIT_USAGE;
        }
        if (!impl->query) {
                log_error("query is for IoT Hub (--azure FILE): %s has no query language",
                          impl->name);
                return TWINCTL_EXIT_USAGE;
        }
        /* Opened on no device: the query reads what it asks for. */
        r = service_open(&s, NULL, &none, false);
        if (r != 0)
                return r;
        r = impl->query(s.backend, argv[1], &rows);
        if (r < 0)
                return twin_backend_error_to_exit(r);
        if (args->json)
                return output_json(rows) < 0 ? TWINCTL_EXIT_FAILURE : TWINCTL_EXIT_SUCCESS;
        /* One row a line, compact: rows of a projection are small, whole twins are not. */
        json_array_foreach (rows, i, row) {
                _cleanup_free_ char *text = json_dumps_compact(row);

                if (!text)
                        return log_error_errno(-ENOMEM, "Out of memory"), TWINCTL_EXIT_FAILURE;
                printf("%s\n", output_sanitize(text));
        }
        if (json_array_size(rows) == 0)
                fprintf(stderr, "no rows\n");
        return TWINCTL_EXIT_SUCCESS;
}
