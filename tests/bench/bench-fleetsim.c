/* SPDX-License-Identifier: MIT */
#include "bench-fleetsim.h"

#include <errno.h>
#include <mosquitto.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define MARKER_TOPIC "twins/_bench/fleet/marker"

static bool marker_acked;
static int marker_mid = -1;

static void on_publish(struct mosquitto *m, void *obj, int mid)
{
        if (mid == marker_mid)
                marker_acked = true;
}

/* Lets the library write what it queued, so that its queue stays short. */
static int flush(struct mosquitto *m)
{
        int rc = MOSQ_ERR_SUCCESS;

        while (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(m))
                rc = mosquitto_loop(m, 100, 1);
        return rc == MOSQ_ERR_SUCCESS ? 0 : -EIO;
}

int fleet_simulate(int port, const char *prefix, size_t first, size_t n)
{
        struct mosquitto *m = mosquitto_new(NULL, true, NULL);
        char topic[128], doc[512];
        int r = 0, rc;

        if (!m)
                return -ENOMEM;
        (void)mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
        mosquitto_publish_callback_set(m, on_publish);
        if (mosquitto_connect(m, "127.0.0.1", port, 600) != MOSQ_ERR_SUCCESS) {
                mosquitto_destroy(m);
                return -ECONNREFUSED;
        }
        for (size_t i = first; i < first + n && r == 0; i++) {
                bool pending = i % 100 == 99, offline = i % 50 == 49;
                const char *kinds[] = { "desired", "reported", "connection" };

                for (int k = 0; k < 3 && r == 0; k++) {
                        int len;

                        snprintf(topic, sizeof(topic), "twins/%s-%zu/%s", prefix, i, kinds[k]);
                        if (k == 0)
                                len = snprintf(doc, sizeof(doc),
                                               "{\"$version\":%d,\"configId\":%d,"
                                               "\"sendFrequency\":\"5m\",\"unit\":\"%zu\"}",
                                               pending ? 2 : 1, pending ? 2 : 1, i);
                        else if (k == 1)
                                len = snprintf(
                                    doc, sizeof(doc),
                                    "{\"$version\":17,\"configId\":1,\"sendFrequency\":\"5m\","
                                    "\"unit\":\"%zu\",\"$status\":{\"state\":\"success\","
                                    "\"desiredVersion\":1,\"configId\":1,"
                                    "\"updatedAt\":\"2026-12-01T09:41:58Z\"}}",
                                    i);
                        else
                                len = snprintf(doc, sizeof(doc), "%s",
                                               offline ? "{\"state\":\"offline\"}"
                                                       : "{\"state\":\"online\",\"since\":"
                                                         "\"2026-12-01T09:41:58Z\",\"agent\":"
                                                         "\"twind 0.1.0\"}");
                        rc = mosquitto_publish(m, NULL, topic, len, doc, 0, true);
                        if (rc != MOSQ_ERR_SUCCESS)
                                r = -EIO;
                }
                if (r == 0 && i % 256 == 0)
                        r = flush(m);
        }
        /* The broker handles one connection's packets in order: the marker's PUBACK comes after
         * every retained message above is stored. */
        marker_acked = false;
        if (r == 0 &&
            mosquitto_publish(m, &marker_mid, MARKER_TOPIC, 1, "1", 1, false) != MOSQ_ERR_SUCCESS)
                r = -EIO;
        while (r == 0 && !marker_acked)
                if (mosquitto_loop(m, 1000, 1) != MOSQ_ERR_SUCCESS)
                        r = -EIO;
        mosquitto_disconnect(m);
        (void)flush(m);
        mosquitto_destroy(m);
        return r;
}
