/* SPDX-License-Identifier: MIT */
/*
 * The dialect seam: the table of dialects, and what every dialect shares: the MQTT connection's
 * callbacks (handed to the ops), the SUBACK check, the clean shutdown.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "json-util.h"
#include "log.h"
#include "twin-model.h"
#include "twind-dialect-impl.h"

static const TwinDialectImpl *const dialects[] = {
        &twind_dialect_standard,
#if HAVE_DIALECT_AZURE
        &twind_dialect_azure,
#endif
#if HAVE_DIALECT_AWS
        &twind_dialect_aws,
#endif
};

static const TwinDialectImpl *dialect_find(const char *name)
{
        for (size_t i = 0; name && i < ARRAY_SIZE(dialects); i++)
                if (strcmp(dialects[i]->name, name) == 0)
                        return dialects[i];
        return NULL;
}

bool twin_dialect_exists(const char *name)
{
        return dialect_find(name) != NULL;
}

const char *twin_dialect_names(void)
{
        static char names[128];

        if (!names[0])
                for (size_t i = 0; i < ARRAY_SIZE(dialects); i++)
                        snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s",
                                 i ? ", " : "", dialects[i]->name);
        return names;
}

int twin_dialect_prepare_config(TwindConfig *c, char *err, size_t errlen)
{
        const TwinDialectImpl *impl = dialect_find(c->dialect);

        if (!impl) {
                snprintf(err, errlen, "[broker] dialect: '%s' is not a dialect (%s)", c->dialect,
                         twin_dialect_names());
                return -EINVAL;
        }
        return impl->prepare_config ? impl->prepare_config(c, err, errlen) : 0;
}

/* ---- the connection's callbacks -------------------------------------------------------------- */

static void dialect_forget_subscriptions(TwinDialect *d)
{
        for (size_t i = 0; i < d->n_subscriptions; i++)
                free(d->subscriptions[i].topic);
        d->n_subscriptions = 0;
}

static void dialect_finish_shutdown(TwinDialect *d)
{
        void (*done)(void *) = d->shutdown_done;

        if (!done)
                return;
        d->shutdown_done = NULL;
        if (d->shutdown_timer)
                uv_timer_stop(d->shutdown_timer);
        done(d->shutdown_userdata);
}

static void on_connected(MqttClient *c, void *userdata)
{
        TwinDialect *d = userdata;

        dialect_forget_subscriptions(d);
        d->impl->connected(d);
        if (d->cb.connected)
                d->cb.connected(d, d->userdata);
}

static void on_disconnected(MqttClient *c, int error, const char *reason, uint64_t retry_in_ms,
                            void *userdata)
{
        TwinDialect *d = userdata;

        dialect_forget_subscriptions(d);
        if (d->shutting_down) {
                dialect_finish_shutdown(d);
                return;
        }
        if (d->impl->disconnected)
                d->impl->disconnected(d);
        if (d->cb.disconnected)
                d->cb.disconnected(d, error, reason, retry_in_ms, d->userdata);
}

static void on_message(MqttClient *c, const char *topic, const void *payload, size_t len,
                       bool retained, void *userdata)
{
        TwinDialect *d = userdata;

        if (!d->shutting_down)
                d->impl->message(d, topic, payload, len, retained);
}

static void on_published(MqttClient *c, int mid, void *userdata)
{
        TwinDialect *d = userdata;

        if (d->shutting_down) {
                if (mid == d->goodbye_mid && mqtt_client_disconnect(c) < 0)
                        dialect_finish_shutdown(d);
                return;
        }
        if (d->impl->published)
                d->impl->published(d, mid);
}

static void on_subscribed(MqttClient *c, int mid, size_t n_granted, const int *granted,
                          void *userdata)
{
        TwinDialect *d = userdata;
        bool ok = n_granted > 0;
        size_t i;

        for (size_t k = 0; k < n_granted; k++)
                if (granted[k] == MQTT_SUBSCRIBE_REFUSED || granted[k] < 0 || granted[k] > 2)
                        ok = false;
        for (i = 0; i < d->n_subscriptions; i++)
                if (d->subscriptions[i].mid == mid)
                        break;
        if (i == d->n_subscriptions)
                return; /* not ours, or from a connection before this one */
        if (!ok && !d->shutting_down)
                dialect_emit_problem(d, -EACCES,
                                     "%s refused the subscription to %s (not authorised for it?)",
                                     mqtt_client_address(d->client), d->subscriptions[i].topic);
        free(d->subscriptions[i].topic);
        d->subscriptions[i] = d->subscriptions[--d->n_subscriptions];
        if (d->impl->subscribed && !d->shutting_down)
                d->impl->subscribed(d, mid, ok);
}

static int on_credentials(MqttClient *c, char **ret_username, char **ret_password, char *err,
                          size_t errlen, void *userdata)
{
        TwinDialect *d = userdata;

        return d->impl->credentials(d, ret_username, ret_password, err, errlen);
}

static char *on_will(MqttClient *c, void *userdata)
{
        TwinDialect *d = userdata;

        return d->impl->will(d);
}

/* ---- for the dialects ------------------------------------------------------------------------ */

void dialect_init(TwinDialect *d, const TwinDialectImpl *impl, const TwinDialectSetup *setup)
{
        d->impl = impl;
        d->loop = setup->loop;
        d->cb = *setup->cb;
        d->userdata = setup->userdata;
        d->limits = impl->limits;
        d->goodbye_mid = -1;
}

int dialect_client_new(TwinDialect *d, const MqttClientOptions *o, char *err, size_t errlen)
{
        static const MqttClientCallbacks callbacks = {
                .connected = on_connected,
                .disconnected = on_disconnected,
                .message = on_message,
                .published = on_published,
                .subscribed = on_subscribed,
        };
        MqttClientCallbacks cb = callbacks;

        if (d->impl->credentials)
                cb.credentials = on_credentials;
        if (d->impl->will)
                cb.will = on_will;
        return mqtt_client_new(&d->client, d->loop, o, &cb, d, err, errlen);
}

int dialect_set_fingerprint(TwinDialect *d, size_t n, const char *const *settings)
{
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fprintf(f, "%s", d->impl->name);
        for (size_t i = 0; i < n; i++) {
                /* Lengths first, so that no two lists of settings give the same text. */
                if (settings[i])
                        fprintf(f, "\n%zu:%s", strlen(settings[i]), settings[i]);
                else
                        fputs("\n-", f);
        }
        if (fclose(f) != 0)
                return -ENOMEM;
        r = twin_digest(buf, size, d->fingerprint);
        explicit_bzero(buf, size);
        return r;
}

int dialect_subscribe(TwinDialect *d, const char *topic, int qos, int *ret_mid)
{
        char *copy;
        int mid, r;

        if (d->n_subscriptions >= DIALECT_SUBSCRIPTIONS_MAX)
                return -ENOBUFS;
        copy = strdup(topic);
        if (!copy)
                return -ENOMEM;
        r = mqtt_client_subscribe(d->client, topic, qos, &mid);
        if (r < 0) {
                free(copy);
                return r;
        }
        d->subscriptions[d->n_subscriptions].mid = mid;
        d->subscriptions[d->n_subscriptions++].topic = copy;
        if (ret_mid)
                *ret_mid = mid;
        return 0;
}

void dialect_emit_desired(TwinDialect *d, const void *payload, size_t len)
{
        if (d->cb.desired && !d->shutting_down)
                d->cb.desired(d, payload, len, d->userdata);
}

void dialect_emit_desired_removed(TwinDialect *d)
{
        if (d->cb.desired_removed && !d->shutting_down)
                d->cb.desired_removed(d, d->userdata);
}

void dialect_emit_problem(TwinDialect *d, int error, const char *fmt, ...)
{
        char message[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(message, sizeof(message), fmt, ap);
        va_end(ap);
        if (d->cb.problem && !d->shutting_down)
                d->cb.problem(d, error, message, d->userdata);
}

void dialect_remember(TwinDialect *d, const json_t *memory)
{
        if (d->cb.remember && !d->shutting_down)
                d->cb.remember(d, memory, d->userdata);
}

/* ---- the interface ----------------------------------------------------------------------------
 */

int twin_dialect_new(TwinDialect **ret, uv_loop_t *loop, const TwindConfig *c, const json_t *memory,
                     const TwinDialectCallbacks *cb, void *userdata, char *err, size_t errlen)
{
        const TwinDialectImpl *impl = dialect_find(c->dialect);
        TwinDialectSetup setup = {
                .loop = loop,
                .config = c,
                .memory = json_is_object(memory) ? memory : NULL,
                .cb = cb,
                .userdata = userdata,
        };

        if (!impl) {
                snprintf(err, errlen, "'%s' is not a dialect (%s)", c->dialect,
                         twin_dialect_names());
                return -EINVAL;
        }
        return impl->new (ret, &setup, err, errlen);
}

int twin_dialect_start(TwinDialect *d)
{
        return mqtt_client_start(d->client);
}

int twin_dialect_publish_reported(TwinDialect *d, const json_t *reported)
{
        char err[512];
        int r;

        if (d->shutting_down)
                return -ESHUTDOWN;
        /* What the service would refuse is never sent: it would only come back refused. */
        r = d->impl->check_reported(d, reported, err, sizeof(err));
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                dialect_emit_problem(d, r, "not sending the reported document: %s", err);
                return r;
        }
        return d->impl->publish_reported(d, reported);
}

json_t *dialect_map_reported(const json_t *reported, const char *status_property)
{
        _cleanup_json_ json_t *m = twin_properties(reported);
        json_t *status = json_object_get(reported, "$status");

        if (!m)
                return NULL;
        if (status && json_object_set(m, status_property, status) < 0)
                return NULL;
        return TAKE_PTR(m);
}

int twin_dialect_check_reported(TwinDialect *d, const json_t *reported, char *err, size_t errlen)
{
        return d->impl->check_reported(d, reported, err, errlen);
}

const char *twin_dialect_address(const TwinDialect *d)
{
        return mqtt_client_address(d->client);
}

const char *twin_dialect_name(const TwinDialect *d)
{
        return d->impl->name;
}

const TwinLimits *twin_dialect_limits(const TwinDialect *d)
{
        return d->limits;
}

const char *twin_dialect_fingerprint(const TwinDialect *d)
{
        return d->fingerprint;
}

static void on_shutdown_timer(uv_timer_t *t)
{
        TwinDialect *d = t->data;

        log_warning("%s did not acknowledge the goodbye in time, disconnecting anyway",
                    twin_dialect_address(d));
        dialect_finish_shutdown(d);
}

static void on_timer_closed(uv_handle_t *h)
{
        free(h);
}

int twin_dialect_shutdown(TwinDialect *d, uint64_t deadline_ms, void (*done)(void *userdata),
                          void *userdata)
{
        int r = -ENOENT;

        d->shutting_down = true;
        d->shutdown_done = done;
        d->shutdown_userdata = userdata;

        d->shutdown_timer = malloc(sizeof(*d->shutdown_timer));
        if (!d->shutdown_timer)
                return -ENOMEM;
        uv_timer_init(d->loop, d->shutdown_timer);
        d->shutdown_timer->data = d;

        if (!mqtt_client_is_connected(d->client)) {
                /* Nothing to say goodbye to: stop reconnecting and finish now. */
                (void)mqtt_client_disconnect(d->client);
                dialect_finish_shutdown(d);
                return 0;
        }
        if (d->impl->goodbye)
                r = d->impl->goodbye(d, &d->goodbye_mid);
        /* Without a goodbye to wait for, the DISCONNECT goes now and its end is awaited. */
        if (r < 0 && mqtt_client_disconnect(d->client) < 0) {
                dialect_finish_shutdown(d);
                return 0;
        }
        uv_timer_start(d->shutdown_timer, on_shutdown_timer, deadline_ms, 0);
        return 0;
}

TwinDialect *twin_dialect_free(TwinDialect *d)
{
        if (!d)
                return NULL;
        d->shutdown_done = NULL;
        d->client = mqtt_client_free(d->client);
        if (d->shutdown_timer)
                uv_close((uv_handle_t *)d->shutdown_timer, on_timer_closed);
        dialect_forget_subscriptions(d);
        d->impl->free(d);
        return NULL;
}
