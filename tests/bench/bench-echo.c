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
        enum echo_save save;
        const char *dir;
        int inplace_fd;
        char desired_topic[256], reported_topic[256];
        int64_t reported_version;
} Echo;

static void echo_on_connect(struct mosquitto *m, void *userdata, int rc)
{
        Echo *e = userdata;

        if (rc == 0)
                mosquitto_subscribe(m, NULL, e->desired_topic, 1);
}

static void echo_save_fsync(const Echo *e, const void *data, size_t len)
{
        char path[4096];
        int fd;

        snprintf(path, sizeof(path), "%s/echo.dat", e->dir);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return;
        if (write(fd, data, len) < 0 || fsync(fd) < 0)
                perror("echo device: write");
        close(fd);
}

static void echo_save_atomic(const Echo *e, const void *data, size_t len)
{
        char tmp[4096], path[4096];
        int fd, dfd;

        snprintf(tmp, sizeof(tmp), "%s/.echo.json.XXXXXX", e->dir);
        snprintf(path, sizeof(path), "%s/echo.json", e->dir);
        dfd = open(e->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0 || dfd < 0) {
                perror("echo device: open");
                goto out;
        }
        if (write(fd, data, len) < 0 || fsync(fd) < 0 || rename(tmp, path) < 0 || fsync(dfd) < 0)
                perror("echo device: save");
out:
        if (fd >= 0)
                close(fd);
        if (dfd >= 0)
                close(dfd);
}

static void echo_save_inplace(Echo *e, const void *data, size_t len)
{
        char block[4096] = { 0 };

        if (e->inplace_fd < 0) {
                char path[4096];

                snprintf(path, sizeof(path), "%s/echo.slot", e->dir);
                e->inplace_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
                if (e->inplace_fd < 0 || posix_fallocate(e->inplace_fd, 0, sizeof(block)) != 0) {
                        perror("echo device: open");
                        return;
                }
                if (fsync(e->inplace_fd) < 0)
                        perror("echo device: fsync");
        }
        /* A fixed-size block, so that the file's size never changes and fdatasync has no
         * metadata to write. */
        memcpy(block, data, len < sizeof(block) ? len : sizeof(block));
        if (pwrite(e->inplace_fd, block, sizeof(block), 0) < 0 || fdatasync(e->inplace_fd) < 0)
                perror("echo device: save");
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

        switch (e->save) {
        case ECHO_SAVE_NONE:
                break;
        case ECHO_SAVE_FSYNC:
                echo_save_fsync(e, msg->payload, (size_t)msg->payloadlen);
                break;
        case ECHO_SAVE_ATOMIC:
                echo_save_atomic(e, msg->payload, (size_t)msg->payloadlen);
                break;
        case ECHO_SAVE_INPLACE:
                echo_save_inplace(e, msg->payload, (size_t)msg->payloadlen);
                break;
        }
        n = snprintf(payload, sizeof(payload),
                     "{\"$version\": %" PRId64 ", \"configId\": %" PRId64
                     ", \"sendFrequency\": \"5m\", \"$status\": {\"state\": \"success\", "
                     "\"desiredVersion\": %" PRId64 ", \"configId\": %" PRId64 "}}",
                     ++e->reported_version, v, v, v);
        mosquitto_publish(m, NULL, e->reported_topic, n, payload, 1, true);
}

static _Noreturn void echo_main(int port, const char *id, enum echo_save save, const char *dir)
{
        Echo e = { .id = id, .save = save, .dir = dir, .inplace_fd = -1 };
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

pid_t echo_device_spawn(int port, const char *id, enum echo_save save, const char *dir)
{
        pid_t pid;

        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                signal(SIGTERM, SIG_DFL);
                echo_main(port, id, save, dir);
        }
        return pid;
}
