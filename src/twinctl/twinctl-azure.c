/* SPDX-License-Identifier: MIT */
/*
 * The IoT Hub back end: twins through IoT Hub's REST API (api-version 2021-04-12) over HTTPS
 * with libcurl, one handle reused for every request, authorised by SAS tokens signed with the
 * service connection string's shared access policy. IoT Hub pushes nothing to a back end, so
 * waiting polls the twin: every 100 ms at first, backing off to 2 s.
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "azure-connection-string.h"
#include "json-util.h"
#include "log.h"
#include "sas-token.h"
#include "secret-file.h"
#include "twin-model.h"
#include "twinctl-backend.h"
#include "twinctl-output.h"
#include "utf8.h"

#define API_VERSION     "2021-04-12"
#define TOKEN_LIFETIME  3600
#define PAGE_SIZE       "1000"
#define POLL_FIRST_MS   100
#define POLL_MAX_MS     2000
#define RETRY_FIRST_MS  500
#define RETRY_MAX_MS    8000
#define RESPONSE_MAX    (16 * 1024 * 1024)
#define REQUEST_MAX_MS  30000
#define STATUS_PROPERTY "twinStatus"

typedef struct AzureBackend {
        TwinBackend base;
        const TwinctlArgs *args;
        AzureConnectionString cs;
        char *base_url;
        char *token;
        int64_t token_expiry;
        CURL *curl;

        json_t *map;
        char *id; /* the one device, or NULL for every device */
        TwinBackendFilter filter;
        TwinBackendChangeFunc on_change;
        void *userdata;
        bool acknowledged;
} AzureBackend;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
        interrupted = 1;
}

static AzureBackend *azure(TwinBackend *b)
{
        return (AzureBackend *)b;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

typedef struct Buffer {
        char *data;
        size_t len;
        bool too_large;
} Buffer;

static size_t on_body(char *p, size_t size, size_t n, void *userdata)
{
        Buffer *b = userdata;
        size_t add = size * n;
        char *d;

        if (b->len + add > RESPONSE_MAX) {
                b->too_large = true;
                return 0;
        }
        d = realloc(b->data, b->len + add + 1);
        if (!d)
                return 0;
        memcpy(d + b->len, p, add);
        b->data = d;
        b->len += add;
        b->data[b->len] = '\0';
        return add;
}

typedef struct Response {
        long status;
        json_t *body;       /* parsed, NULL when empty or not JSON */
        char *continuation; /* x-ms-continuation */
        char *etag;
        long retry_after; /* seconds, -1 none */
} Response;

static void response_done(Response *r)
{
        json_decref(r->body);
        free(r->continuation);
        free(r->etag);
        *r = (Response){ 0 };
}

static size_t on_header(char *p, size_t size, size_t n, void *userdata)
{
        Response *r = userdata;
        size_t len = size * n;
        char *line = strndup(p, len), *v;

        if (!line)
                return 0;
        line[strcspn(line, "\r\n")] = '\0';
        v = strchr(line, ':');
        if (v) {
                *v++ = '\0';
                v += strspn(v, " \t");
                if (strcasecmp(line, "x-ms-continuation") == 0 && *v) {
                        free(r->continuation);
                        r->continuation = strdup(v);
                } else if (strcasecmp(line, "etag") == 0 && *v) {
                        free(r->etag);
                        r->etag = strdup(v);
                } else if (strcasecmp(line, "retry-after") == 0)
                        r->retry_after = strtol(v, NULL, 10);
        }
        free(line);
        return len;
}

/* The service's SAS token, made anew when less than 5 minutes of it are left. */
static int azure_token(AzureBackend *a, const char **ret)
{
        int64_t now = (int64_t)time(NULL);
        int r;

        if (!a->token || a->token_expiry - now < 300) {
                a->token = secret_free(a->token);
                a->token_expiry = now + TOKEN_LIFETIME;
                r = sas_token_make(a->cs.host_name, a->cs.shared_access_key,
                                   a->cs.shared_access_key_name, a->token_expiry, &a->token);
                if (r < 0)
                        return log_error_errno(r, "Failed to make a SAS token");
        }
        *ret = a->token;
        return 0;
}

/* IoT Hub's error message from an error body ({"Message": "ErrorCode:...;..."}), cut short. */
static void error_text(const json_t *body, char *buf, size_t size)
{
        const char *m = json_string_value(json_object_get(body, "Message"));

        if (!m)
                m = json_string_value(json_object_get(body, "message"));
        snprintf(buf, size, "%.300s", m ? m : "no message");
        utf8_sanitize_line(buf);
}

static uint64_t monotonic_ms(void)
{
        return now_ms();
}

/* Sleeps ms, or until an interrupt. Returns -EINTR when interrupted. */
static int nap(uint64_t ms)
{
        struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

        if (interrupted)
                return -EINTR;
        nanosleep(&ts, NULL);
        return interrupted ? -EINTR : 0;
}

/*
 * One request, retried after 429 and 5xx (Retry-After when IoT Hub sends one, else a backoff)
 * until deadline_ms. Returns 0 with the answer in *resp (any status but those), or a logged
 * negative errno: -ENOTCONN for a hub that cannot be reached, -ETIMEDOUT, -EINTR.
 */
static int azure_request(AzureBackend *a, const char *method, const char *path, const char *query,
                         const json_t *body, const char *const *headers, uint64_t deadline_ms,
                         Response *resp)
{
        _cleanup_free_ char *url = NULL, *payload = NULL;
        uint64_t backoff = RETRY_FIRST_MS;
        int r;

        if (asprintf(&url, "%s%s?api-version=" API_VERSION "%s%s", a->base_url, path,
                     query ? "&" : "", query ? query : "") < 0) {
                url = NULL;
                return log_error_errno(-ENOMEM, "Out of memory");
        }
        if (body && !(payload = json_dumps_compact(body)))
                return log_error_errno(-ENOMEM, "Out of memory");

        for (;;) {
                _cleanup_free_ char *auth = NULL;
                struct curl_slist *h = NULL;
                Buffer buf = { 0 };
                const char *token = NULL;
                char msg[400];
                uint64_t now = monotonic_ms(), limit = REQUEST_MAX_MS;
                CURLcode cc;

                if (deadline_ms > 0 && now >= deadline_ms) {
                        log_error("IoT Hub %s did not answer %s %s in time", a->cs.host_name,
                                  method, path);
                        return -ETIMEDOUT;
                }
                if (deadline_ms > 0 && deadline_ms - now < limit)
                        limit = deadline_ms - now;
                r = azure_token(a, &token);
                if (r < 0)
                        return r;
                if (asprintf(&auth, "Authorization: %s", token) < 0) {
                        auth = NULL;
                        return log_error_errno(-ENOMEM, "Out of memory");
                }
                h = curl_slist_append(h, auth);
                h = curl_slist_append(h, "Content-Type: application/json; charset=utf-8");
                h = curl_slist_append(h, "Accept: application/json");
                for (size_t i = 0; headers && headers[i]; i++)
                        h = curl_slist_append(h, headers[i]);
                explicit_bzero(auth, strlen(auth));

                response_done(resp);
                resp->retry_after = -1;
                curl_easy_setopt(a->curl, CURLOPT_URL, url);
                curl_easy_setopt(a->curl, CURLOPT_CUSTOMREQUEST, method);
                curl_easy_setopt(a->curl, CURLOPT_HTTPHEADER, h);
                curl_easy_setopt(a->curl, CURLOPT_POSTFIELDS, payload);
                if (!payload)
                        curl_easy_setopt(a->curl, CURLOPT_HTTPGET, 1L);
                curl_easy_setopt(a->curl, CURLOPT_CUSTOMREQUEST, method);
                curl_easy_setopt(a->curl, CURLOPT_WRITEFUNCTION, on_body);
                curl_easy_setopt(a->curl, CURLOPT_WRITEDATA, &buf);
                curl_easy_setopt(a->curl, CURLOPT_HEADERFUNCTION, on_header);
                curl_easy_setopt(a->curl, CURLOPT_HEADERDATA, resp);
                curl_easy_setopt(a->curl, CURLOPT_TIMEOUT_MS, (long)limit);
                cc = curl_easy_perform(a->curl);
                curl_slist_free_all(h);
                if (cc != CURLE_OK) {
                        free(buf.data);
                        if (interrupted)
                                return -EINTR;
                        if (cc == CURLE_OPERATION_TIMEDOUT) {
                                log_error("IoT Hub %s did not answer %s %s in time",
                                          a->cs.host_name, method, path);
                                return -ETIMEDOUT;
                        }
                        log_error("cannot reach IoT Hub at %s: %s", a->base_url,
                                  buf.too_large ? "answer too large" : curl_easy_strerror(cc));
                        return cc == CURLE_PEER_FAILED_VERIFICATION ? -EPROTO : -ENOTCONN;
                }
                curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &resp->status);
                resp->body = buf.len ? json_loadb(buf.data, buf.len, 0, NULL) : NULL;
                free(buf.data);

                if (resp->status != 429 && resp->status < 500)
                        return 0;
                error_text(resp->body, msg, sizeof(msg));
                {
                        uint64_t wait_ms =
                            resp->retry_after > 0 ? (uint64_t)resp->retry_after * 1000 : backoff;

                        log_warning("IoT Hub answered %s %s with %ld (%s); trying again in %.1f s",
                                    method, path, resp->status, msg, (double)wait_ms / 1000.0);
                        if (deadline_ms > 0 && monotonic_ms() + wait_ms >= deadline_ms) {
                                log_error("IoT Hub kept answering %ld until the deadline",
                                          resp->status);
                                return -ETIMEDOUT;
                        }
                        if (nap(wait_ms) < 0)
                                return -EINTR;
                        backoff = backoff * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : backoff * 2;
                }
        }
}

/* Maps an answer's status to an errno and says what went wrong; 0 for 2xx. */
static int azure_status_error(AzureBackend *a, const Response *resp, const char *what,
                              const char *id)
{
        char msg[400];

        if (resp->status >= 200 && resp->status < 300)
                return 0;
        error_text(resp->body, msg, sizeof(msg));
        switch (resp->status) {
        case 401:
        case 403:
                log_error("IoT Hub %s refused %s: %ld %s (is the shared access key right, and "
                          "does the policy grant ServiceConnect and RegistryRead?)",
                          a->cs.host_name, what, resp->status, msg);
                return -EACCES;
        case 404:
                log_error("device %s not found on IoT Hub %s: %s", id ? id : "?", a->cs.host_name,
                          msg);
                return -ENOENT;
        case 412:
                return -ESTALE;
        default:
                log_error("IoT Hub %s refused %s: %ld %s", a->cs.host_name, what, resp->status,
                          msg);
                return resp->status == 400 ? -EINVAL : -EPROTO;
        }
}

/* ---- twins --------------------------------------------------------------------------------- */

static void drop_metadata(json_t *o)
{
        json_object_del(o, "$metadata");
}

/* The normalised entry of a twin (see twinctl-backend.h). */
static json_t *twin_entry(const json_t *twin)
{
        json_t *props = json_object_get(twin, "properties");
        json_t *desired = json_deep_copy(json_object_get(props, "desired"));
        json_t *reported = json_deep_copy(json_object_get(props, "reported"));
        const char *state = json_string_value(json_object_get(twin, "connectionState"));
        json_t *status, *conn, *entry;
        int r;

        if (!json_is_object(desired)) {
                json_decref(desired);
                desired = json_null();
        } else
                drop_metadata(desired);
        if (!json_is_object(reported)) {
                json_decref(reported);
                reported = json_null();
        } else {
                drop_metadata(reported);
                status = json_object_get(reported, STATUS_PROPERTY);
                if (status) {
                        json_object_set(reported, "$status", status);
                        json_object_del(reported, STATUS_PROPERTY);
                }
        }
        conn = state ? json_pack("{s:s, s:O?, s:O?}", "state",
                                 strcasecmp(state, "Connected") == 0 ? "online" : "offline",
                                 "since", json_object_get(twin, "connectionStateUpdatedTime"),
                                 "lastActivity", json_object_get(twin, "lastActivityTime"))
                     : json_null();
        /* device_entry_set() takes the documents also when it fails (or entry is NULL). */
        entry = device_entry_new();
        r = device_entry_set(entry, DEVICE_KIND_DESIRED, desired);
        r = device_entry_set(entry, DEVICE_KIND_REPORTED, reported) < 0 ? -ENOMEM : r;
        r = device_entry_set(entry, DEVICE_KIND_CONNECTION, conn) < 0 ? -ENOMEM : r;
        if (!entry || r < 0)
                return json_decref(entry), NULL;
        return entry;
}

/* Puts a twin into the map and tells of what changed. */
static int azure_learn(AzureBackend *a, const json_t *twin)
{
        const char *id = json_string_value(json_object_get(twin, "deviceId"));
        json_t *entry, *old;

        if (!id)
                return 0;
        entry = twin_entry(twin);
        if (!entry)
                return log_error_errno(-ENOMEM, "Out of memory");
        old = json_incref(json_object_get(a->map, id));
        if (json_object_set_new(a->map, id, entry) < 0) {
                json_decref(old);
                return log_error_errno(-ENOMEM, "Out of memory");
        }
        entry = json_object_get(a->map, id);
        for (enum DeviceKind k = 0; k < _DEVICE_KIND_MAX; k++) {
                json_t *was = device_entry_get(old, k), *now = device_entry_get(entry, k);

                if (a->on_change && (!old || (was ? !json_equal(was, now) : !!now)))
                        a->on_change(&a->base, id, k, entry, a->userdata);
        }
        json_decref(old);
        return 0;
}

static int azure_get_twin(AzureBackend *a, const char *id, uint64_t deadline_ms, Response *resp)
{
        _cleanup_free_ char *enc = sas_url_encode(id), *path = NULL;
        int r;

        if (!enc || asprintf(&path, "/twins/%s", enc) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        r = azure_request(a, "GET", path, NULL, NULL, NULL, deadline_ms, resp);
        if (r < 0)
                return r;
        return azure_status_error(a, resp, "the twin request", id);
}

/* All pages of a query; rows are appended to *rows. */
static int azure_query_all(AzureBackend *a, const char *query, uint64_t deadline_ms, json_t *rows)
{
        _cleanup_json_ json_t *body = json_pack("{s:s}", "query", query);
        _cleanup_free_ char *continuation = NULL;

        if (!body)
                return log_error_errno(-ENOMEM, "Out of memory");
        for (;;) {
                _cleanup_(response_done) Response resp = { 0 };
                _cleanup_free_ char *hcont = NULL;
                const char *headers[3] = { "x-ms-max-item-count: " PAGE_SIZE, NULL, NULL };
                size_t i;
                json_t *row;
                int r;

                if (continuation) {
                        if (asprintf(&hcont, "x-ms-continuation: %s", continuation) < 0) {
                                hcont = NULL;
                                return log_error_errno(-ENOMEM, "Out of memory");
                        }
                        headers[1] = hcont;
                }
                r = azure_request(a, "POST", "/devices/query", NULL, body, headers, deadline_ms,
                                  &resp);
                if (r < 0)
                        return r;
                r = azure_status_error(a, &resp, "the query", NULL);
                if (r < 0)
                        return r;
                if (!json_is_array(resp.body)) {
                        log_error("IoT Hub answered the query with something that is not a list");
                        return -EPROTO;
                }
                json_array_foreach (resp.body, i, row)
                        if (json_array_append(rows, row) < 0)
                                return log_error_errno(-ENOMEM, "Out of memory");
                free(continuation);
                continuation = TAKE_PTR(resp.continuation);
                if (!continuation)
                        return 0;
        }
}

/* The query list starts from: what of the filters IoT Hub can evaluate goes to its WHERE, as a
 * superset of what list shows (list applies the filters itself again). "pending" is any state
 * but the two, so with it the state cannot narrow the query. */
static char *list_query(const TwinBackendFilter *f)
{
        const char *state = NULL, *conn = NULL;
        char *q = NULL;

        if (!f->pending && f->failed && f->success)
                state = "(properties.reported." STATUS_PROPERTY ".state = 'failed' OR "
                        "properties.reported." STATUS_PROPERTY ".state = 'success')";
        else if (!f->pending && f->failed)
                state = "properties.reported." STATUS_PROPERTY ".state = 'failed'";
        else if (!f->pending && f->success)
                state = "properties.reported." STATUS_PROPERTY ".state = 'success'";
        if (f->offline)
                conn = "connectionState = 'Disconnected'";
        else if (f->online)
                conn = "connectionState = 'Connected'";
        if (asprintf(&q, "SELECT * FROM devices%s%s%s%s", state || conn ? " WHERE " : "",
                     state ? state : "", state && conn ? " AND " : "", conn ? conn : "") < 0)
                return NULL;
        return q;
}

/* Reads the twins this back end looks at now. */
static int azure_refresh(AzureBackend *a, uint64_t deadline_ms)
{
        int r;

        if (a->id) {
                _cleanup_(response_done) Response resp = { 0 };

                r = azure_get_twin(a, a->id, deadline_ms, &resp);
                if (r < 0)
                        return r;
                return azure_learn(a, resp.body);
        }
        if (a->filter.ids) {
                for (size_t i = 0; a->filter.ids[i]; i++) {
                        _cleanup_(response_done) Response resp = { 0 };

                        r = azure_get_twin(a, a->filter.ids[i], deadline_ms, &resp);
                        if (r == -ENOENT)
                                continue;
                        if (r < 0)
                                return r;
                        r = azure_learn(a, resp.body);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        {
                _cleanup_free_ char *q = list_query(&a->filter);
                _cleanup_json_ json_t *rows = json_array();
                size_t i;
                json_t *row;

                if (!q || !rows)
                        return log_error_errno(-ENOMEM, "Out of memory");
                r = azure_query_all(a, q, deadline_ms, rows);
                if (r < 0)
                        return r;
                json_array_foreach (rows, i, row) {
                        r = azure_learn(a, row);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

/* ---- the back end ---------------------------------------------------------------------------- */

static void azure_free(TwinBackend *b)
{
        AzureBackend *a = azure(b);

        if (a->curl)
                curl_easy_cleanup(a->curl);
        azure_connection_string_done(&a->cs);
        secret_free(a->token);
        free(a->base_url);
        free(a->id);
        json_decref(a->map);
        free(a);
}

static int azure_open(TwinBackend **ret, const TwinctlArgs *args, const char *id,
                      const TwinBackendFilter *filter, bool catch_interrupt,
                      TwinBackendChangeFunc on_change, void *userdata)
{
        _cleanup_(twin_backend_freep) TwinBackend *b = NULL;
        char *text = NULL, err[512];
        AzureBackend *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return log_error_errno(-ENOMEM, "Out of memory");
        a->base.impl = &twinctl_backend_azure;
        b = &a->base;
        a->args = args;
        a->on_change = on_change;
        a->userdata = userdata;
        a->filter = filter ? *filter : (TwinBackendFilter){ 0 };
        a->map = json_object();
        a->id = id ? strdup(id) : NULL;
        if (!a->map || (id && !a->id))
                return log_error_errno(-ENOMEM, "Out of memory");

        r = secret_file_read(args->azure_file, "connection string file", &text, NULL, err,
                             sizeof(err));
        if (r < 0) {
                log_error("%s", err);
                return r == -ENOMEM ? r : -EINVAL;
        }
        r = azure_connection_string_parse(text, AZURE_CONNECTION_STRING_SERVICE, &a->cs, err,
                                          sizeof(err));
        secret_free(text);
        if (r < 0) {
                log_error("the connection string in %s: %s", args->azure_file, err);
                return r == -ENOMEM ? r : -EINVAL;
        }
        if (a->cs.gateway_port
                ? asprintf(&a->base_url, "https://%s:%d",
                           azure_connection_string_connect_host(&a->cs), a->cs.gateway_port) < 0
                : asprintf(&a->base_url, "https://%s",
                           azure_connection_string_connect_host(&a->cs)) < 0) {
                a->base_url = NULL;
                return log_error_errno(-ENOMEM, "Out of memory");
        }

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return log_error_errno(-EIO, "Failed to set up libcurl");
        a->curl = curl_easy_init();
        if (!a->curl)
                return log_error_errno(-ENOMEM, "Failed to set up libcurl");
        curl_easy_setopt(a->curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(a->curl, CURLOPT_PROTOCOLS_STR, "https");
        curl_easy_setopt(a->curl, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(a->curl, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        /* --cafile adds a CA to the system's: OpenSSL reads the file and the directory. */
        if (args->cafile) {
                curl_easy_setopt(a->curl, CURLOPT_CAINFO, args->cafile);
                curl_easy_setopt(a->curl, CURLOPT_CAPATH, "/etc/ssl/certs");
        }

        if (catch_interrupt) {
                struct sigaction sa = { .sa_handler = on_interrupt };

                sigemptyset(&sa.sa_mask);
                sigaction(SIGINT, &sa, NULL);
                sigaction(SIGTERM, &sa, NULL);
        }

        r = azure_refresh(a, twinctl_deadline(args, TWINCTL_CONNECT_TIMEOUT_MS));
        if (r < 0)
                return r;
        *ret = TAKE_PTR(b);
        return 0;
}

static int azure_set(TwinBackend *b, const char *id, const json_t *doc, const json_t *patch,
                     int64_t next_version, int64_t if_version, int64_t *ret_version)
{
        AzureBackend *a = azure(b);
        _cleanup_(response_done) Response resp = { 0 };
        _cleanup_free_ char *enc = sas_url_encode(id), *path = NULL, *if_match = NULL;
        _cleanup_json_ json_t *body = json_pack("{s:{s:O}}", "properties", "desired", patch);
        uint64_t deadline = twinctl_deadline(a->args, TWINCTL_CONNECT_TIMEOUT_MS);
        const char *headers[2] = { NULL, NULL };
        json_t *version;
        int r;

        a->acknowledged = false;
        if (!enc || !body || asprintf(&path, "/twins/%s", enc) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        if (if_version >= 0) {
                /* IoT Hub's compare-and-set is the etag: the one of the twin that still has the
                 * desired $version the caller saw. */
                _cleanup_(response_done) Response cur = { 0 };
                json_t *dv;

                r = azure_get_twin(a, id, deadline, &cur);
                if (r < 0)
                        return r;
                dv = json_object_get(
                    json_object_get(json_object_get(cur.body, "properties"), "desired"),
                    "$version");
                if (!json_is_integer(dv) || json_integer_value(dv) != if_version) {
                        log_error(
                            "version conflict: desired $version of %s is %" JSON_INTEGER_FORMAT
                            ", not %" PRId64 "; nothing changed",
                            id, json_is_integer(dv) ? json_integer_value(dv) : -1, if_version);
                        return -ESTALE;
                }
                if (!json_is_string(json_object_get(cur.body, "etag")))
                        return log_error_errno(-EPROTO, "IoT Hub sent a twin without an etag");
                if (asprintf(&if_match, "If-Match: \"%s\"",
                             json_string_value(json_object_get(cur.body, "etag"))) < 0) {
                        if_match = NULL;
                        return log_error_errno(-ENOMEM, "Out of memory");
                }
                headers[0] = if_match;
        }
        r = azure_request(a, "PATCH", path, NULL, body, headers, deadline, &resp);
        if (r < 0)
                return r;
        r = azure_status_error(a, &resp, "the twin update", id);
        if (r == -ESTALE) {
                log_error("version conflict: the twin of %s changed since its desired $version "
                          "was %" PRId64 " (IoT Hub answered 412); nothing changed",
                          id, if_version);
                return r;
        }
        if (r < 0)
                return r;
        version = json_object_get(
            json_object_get(json_object_get(resp.body, "properties"), "desired"), "$version");
        if (!json_is_integer(version))
                return log_error_errno(-EPROTO, "IoT Hub answered the update without a desired "
                                                "$version");
        *ret_version = json_integer_value(version);
        a->acknowledged = true;
        return azure_learn(a, resp.body);
}

/* A twin lives as long as its device identity: Devices - Delete Identity, unconditionally
 * (If-Match: *), which takes the device's modules along. Needs RegistryWrite. */
static int azure_remove(TwinBackend *b, const char *id)
{
        AzureBackend *a = azure(b);
        _cleanup_(response_done) Response resp = { 0 };
        _cleanup_free_ char *enc = sas_url_encode(id), *path = NULL;
        const char *headers[] = { "If-Match: \"*\"", NULL };
        char msg[400];
        int r;

        if (!enc || asprintf(&path, "/devices/%s", enc) < 0)
                return log_error_errno(-ENOMEM, "Out of memory");
        r = azure_request(a, "DELETE", path, NULL, NULL, headers,
                          twinctl_deadline(a->args, TWINCTL_CONNECT_TIMEOUT_MS), &resp);
        if (r < 0)
                return r;
        if (resp.status == 401 || resp.status == 403) {
                error_text(resp.body, msg, sizeof(msg));
                log_error("IoT Hub %s refused to delete the device identity %s: %ld %s (deleting "
                          "needs a policy with RegistryWrite)",
                          a->cs.host_name, id, resp.status, msg);
                return -EACCES;
        }
        r = azure_status_error(a, &resp, "the identity delete", id);
        if (r < 0)
                return r;
        json_object_del(a->map, id);
        return 0;
}

static bool azure_acknowledged(const TwinBackend *b)
{
        return ((const AzureBackend *)b)->acknowledged;
}

static int azure_wait(TwinBackend *b, bool (*done)(void *userdata), void *userdata,
                      uint64_t deadline_ms)
{
        AzureBackend *a = azure(b);
        uint64_t interval = POLL_FIRST_MS;
        int r;

        for (;;) {
                uint64_t now;

                if (done(userdata))
                        return 0;
                now = monotonic_ms();
                if (deadline_ms > 0 && now >= deadline_ms)
                        return -ETIMEDOUT;
                r = nap(deadline_ms > 0 && deadline_ms - now < interval ? deadline_ms - now
                                                                        : interval);
                if (r < 0)
                        return r;
                if (deadline_ms > 0 && monotonic_ms() >= deadline_ms && !done(userdata))
                        return -ETIMEDOUT;
                r = azure_refresh(a, deadline_ms);
                if (r == -ETIMEDOUT && done(userdata))
                        return 0;
                if (r < 0)
                        return r;
                interval = interval * 2 > POLL_MAX_MS ? POLL_MAX_MS : interval * 2;
        }
}

static int azure_query(TwinBackend *b, const char *query, json_t **ret_rows)
{
        AzureBackend *a = azure(b);
        _cleanup_json_ json_t *rows = json_array();
        int r;

        if (!rows)
                return log_error_errno(-ENOMEM, "Out of memory");
        r = azure_query_all(a, query, twinctl_deadline(a->args, TWINCTL_CONNECT_TIMEOUT_MS), rows);
        if (r < 0)
                return r;
        *ret_rows = TAKE_PTR(rows);
        return 0;
}

static json_t *azure_devices(TwinBackend *b)
{
        return azure(b)->map;
}

static const char *azure_address(const TwinBackend *b)
{
        return ((const AzureBackend *)b)->base_url;
}

/* IoT Hub's rules, and the property twind reports its status in. */
static const TwinLimits azure_limits = {
        .service = "IoT Hub",
        .max_bytes = TWIN_DESIRED_MAX_BYTES,
        .max_depth = TWIN_MAX_DEPTH,
        .max_key_bytes = 1024,
        .key_refused = ". $",
        .key_no_control = true,
        .max_string_bytes = 4096,
        .integer_range = true,
        .integer_min = -4503599627370496LL,
        .integer_max = 4503599627370495LL,
        .reserved_key = STATUS_PROPERTY,
};

const TwinBackendImpl twinctl_backend_azure = {
        .name = "IoT Hub",
        .flags = TWIN_BACKEND_LIST | TWIN_BACKEND_QUERY | TWIN_BACKEND_SERVICE_VERSION,
        .limits = &azure_limits,
        .open = azure_open,
        .set = azure_set,
        .acknowledged = azure_acknowledged,
        .remove = azure_remove,
        .wait = azure_wait,
        .query = azure_query,
        .devices = azure_devices,
        .address = azure_address,
        .free = azure_free,
};
