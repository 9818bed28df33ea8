/* SPDX-License-Identifier: MIT */
#include "bench-echo.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

typedef struct Echo {
        const char *id;
        const char *fsync_path;
        char desired_topic[256], reported_topic[256];
        int64_t reported_version;
} Echo;

static void echo_on_connect(struct mosquitto *m, void *userdata, int rc)
{
        Echo *e = userdata;

        if (rc == 0)
                mosquitto_subscribe(m, NULL, e->desired_topic, 1);
}

static void echo_save(const Echo *e, const void *data, size_t len)
{
        int fd;

        fd = open(e->fsync_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return;
        if (write(fd, data, len) < 0 || fsync(fd) < 0)
                perror("echo device: write");
        close(fd);
}

static void echo_on_message(struct mosquitto *m, void *userdata,
                            const struct mosquitto_message *msg)
{
        Echo *e = userdata;
        char payload[512];
        json_t *doc;
        int64_t v;
        int n;

        doc = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
        if (!doc)
                return;
        v = json_integer_value(json_object_get(doc, "$version"));
        json_decref(doc);

        if (e->fsync_path)
                echo_save(e, msg->payload, (size_t)msg->payloadlen);
        n = snprintf(payload, sizeof(payload),
                     "{\"$version\": %" PRId64 ", \"configId\": %" PRId64
                     ", \"sendFrequency\": \"5m\", \"$status\": {\"state\": \"success\", "
                     "\"desiredVersion\": %" PRId64 ", \"configId\": %" PRId64 "}}",
                     ++e->reported_version, v, v, v);
        mosquitto_publish(m, NULL, e->reported_topic, n, payload, 1, true);
}

static _Noreturn void echo_main(int port, const char *id, const char *fsync_path)
{
        Echo e = { .id = id, .fsync_path = fsync_path };
        struct mosquitto *m;

        snprintf(e.desired_topic, sizeof(e.desired_topic), "twins/%s/desired", id);
        snprintf(e.reported_topic, sizeof(e.reported_topic), "twins/%s/reported", id);
        m = mosquitto_new(id, true, &e);
        if (!m)
                _exit(1);
        mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
        mosquitto_int_option(m, MOSQ_OPT_TCP_NODELAY, 1);
        mosquitto_connect_callback_set(m, echo_on_connect);
        mosquitto_message_callback_set(m, echo_on_message);
        if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS)
                _exit(1);
        mosquitto_loop_forever(m, 60000, 1);
        _exit(0);
}

pid_t echo_device_spawn(int port, const char *id, const char *fsync_path)
{
        pid_t pid;

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                signal(SIGTERM, SIG_DFL);
                echo_main(port, id, fsync_path);
        }
        return pid;
}
