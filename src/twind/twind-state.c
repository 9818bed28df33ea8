/* SPDX-License-Identifier: MIT */
#include "twind-state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json-util.h"
#include "log.h"
#include "twin-model.h"
#include "twin-signature.h"

#define STATE_TEMP_PREFIX ".state.json."
#define KEEP_ASIDE_TRIES  100

int twin_state_new(TwinState **ret)
{
        TwinState *s;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->applied = json_object();
        if (!s->applied) {
                free(s);
                return -ENOMEM;
        }
        s->desired_version = -1;
        s->reported_version = 0;
        *ret = s;
        return 0;
}

TwinState *twin_state_free(TwinState *s)
{
        if (!s)
                return NULL;
        json_decref(s->applied);
        json_decref(s->status);
        json_decref(s->dialects);
        json_decref(s->device);
        json_decref(s->signers);
        free(s->answered_digest);
        free(s);
        return NULL;
}

int twin_state_copy(const TwinState *s, TwinState **ret)
{
        _cleanup_(twin_state_freep) TwinState *c = NULL;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->applied = json_deep_copy(s->applied);
        if (!c->applied)
                return -ENOMEM;
        if (s->status) {
                c->status = json_deep_copy(s->status);
                if (!c->status)
                        return -ENOMEM;
        }
        if (s->answered_digest) {
                c->answered_digest = strdup(s->answered_digest);
                if (!c->answered_digest)
                        return -ENOMEM;
        }
        if (s->dialects) {
                c->dialects = json_deep_copy(s->dialects);
                if (!c->dialects)
                        return -ENOMEM;
        }
        if (s->device) {
                c->device = json_deep_copy(s->device);
                if (!c->device)
                        return -ENOMEM;
        }
        if (s->signers) {
                c->signers = json_deep_copy(s->signers);
                if (!c->signers)
                        return -ENOMEM;
        }
        c->desired_version = s->desired_version;
        c->reported_version = s->reported_version;
        *ret = TAKE_PTR(c);
        return 0;
}

int64_t twin_state_signer_sequence(const TwinState *s, const char *fingerprint)
{
        json_t *v = json_object_get(s->signers, fingerprint);

        return json_is_integer(v) ? json_integer_value(v) : 0;
}

int twin_state_set_signer_sequence(TwinState *s, const char *fingerprint, int64_t seq)
{
        if (seq <= twin_state_signer_sequence(s, fingerprint))
                return 0;
        if (!s->signers) {
                s->signers = json_object();
                if (!s->signers)
                        return -ENOMEM;
        }
        if (!json_object_get(s->signers, fingerprint) &&
            json_object_size(s->signers) >= TWIN_STATE_SIGNERS_MAX) {
                const char *key, *lowest = NULL;
                json_t *v;

                json_object_foreach (s->signers, key, v)
                        if (!lowest || json_integer_value(v) <
                                           json_integer_value(json_object_get(s->signers, lowest)))
                                lowest = key;
                json_object_del(s->signers, lowest);
        }
        return json_object_set_new(s->signers, fingerprint, json_integer(seq)) < 0 ? -ENOMEM : 0;
}

int twin_state_encode(const TwinState *s, char **ret)
{
        _cleanup_json_ json_t *root = NULL;
        char *text;

        root = json_object();
        if (!root)
                return -ENOMEM;
        if (json_object_set_new(root, "format", json_integer(TWIN_STATE_FORMAT)) < 0 ||
            json_object_set(root, "applied", s->applied) < 0 ||
            json_object_set_new(root, "desiredVersion", json_integer(s->desired_version)) < 0 ||
            json_object_set_new(root, "reportedVersion", json_integer(s->reported_version)) < 0)
                return -ENOMEM;
        if (s->status && json_object_set(root, "status", s->status) < 0)
                return -ENOMEM;
        if (s->answered_digest &&
            json_object_set_new(root, "answered", json_string(s->answered_digest)) < 0)
                return -ENOMEM;
        if (s->dialects && json_object_size(s->dialects) > 0 &&
            json_object_set(root, "dialects", s->dialects) < 0)
                return -ENOMEM;
        if (s->device && json_object_size(s->device) > 0 &&
            json_object_set(root, "device", s->device) < 0)
                return -ENOMEM;
        if (s->signers && json_object_size(s->signers) > 0 &&
            json_object_set(root, "signers", s->signers) < 0)
                return -ENOMEM;

        /* Indented: an operator may read it when something went wrong. */
        text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (!text)
                return -ENOMEM;
        *ret = text;
        return 0;
}

static int decode_error(char *err, size_t errlen, int r, const char *fmt, ...) _printf_(4, 5);
static int decode_error(char *err, size_t errlen, int r, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return r;
}

int twin_state_decode(const char *text, size_t len, TwinState **ret, char *err, size_t errlen)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL;
        _cleanup_json_ json_t *root = NULL;
        json_t *format, *applied, *desired, *reported, *status, *answered, *dialects, *device;
        json_t *signers, *v;
        char reason[256] = "";
        json_error_t jerr;

        if (err && errlen > 0)
                err[0] = '\0';

        if (len > TWIN_STATE_MAX_BYTES)
                return decode_error(err, errlen, -E2BIG, "larger than %d bytes",
                                    TWIN_STATE_MAX_BYTES);

        root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root)
                return decode_error(err, errlen, -EINVAL, "not JSON: %s (line %d, column %d)",
                                    jerr.text, jerr.line, jerr.column);
        if (!json_is_object(root))
                return decode_error(err, errlen, -EINVAL, "not a JSON object");

        /* Unknown keys are ignored: a newer agent may add some without changing the format. */
        format = json_object_get(root, "format");
        if (!format)
                return decode_error(err, errlen, -EINVAL, "format: missing");
        if (!json_is_integer(format) || json_integer_value(format) != TWIN_STATE_FORMAT)
                return decode_error(err, errlen, -EINVAL, "format: unsupported (expected %d)",
                                    TWIN_STATE_FORMAT);

        applied = json_object_get(root, "applied");
        if (!json_is_object(applied))
                return decode_error(err, errlen, -EINVAL, "applied: %s",
                                    applied ? "not an object" : "missing");
        if (twin_properties_validate(applied, NULL, reason, sizeof reason) < 0)
                return decode_error(err, errlen, -EINVAL, "applied: %s", reason);

        desired = json_object_get(root, "desiredVersion");
        if (!json_is_integer(desired) || json_integer_value(desired) < -1)
                return decode_error(err, errlen, -EINVAL, "desiredVersion: %s",
                                    desired ? "not an integer of at least -1" : "missing");

        reported = json_object_get(root, "reportedVersion");
        if (!json_is_integer(reported) || json_integer_value(reported) < 0)
                return decode_error(err, errlen, -EINVAL, "reportedVersion: %s",
                                    reported ? "not a non-negative integer" : "missing");
        if (json_integer_value(reported) > TWIN_STATE_REPORTED_VERSION_MAX)
                return decode_error(err, errlen, -EINVAL,
                                    "reportedVersion: larger than %" PRId64
                                    ", the reported $version would overflow",
                                    (int64_t)TWIN_STATE_REPORTED_VERSION_MAX);
        /* desiredVersion needs no upper bound: any $version the protocol allows (up to
         * INT64_MAX, all of int64) may have been answered, and it is only compared. */

        status = json_object_get(root, "status");
        if (json_is_null(status))
                status = NULL;
        if (status) {
                const char *state;

                if (!json_is_object(status))
                        return decode_error(err, errlen, -EINVAL, "status: not an object");
                state = json_string_value(json_object_get(status, "state"));
                if (!state)
                        return decode_error(err, errlen, -EINVAL,
                                            "status: state missing or not a string");
                if (strcmp(state, "pending") != 0 && strcmp(state, "success") != 0 &&
                    strcmp(state, "failed") != 0)
                        return decode_error(err, errlen, -EINVAL,
                                            "status: state is not pending, success or failed");
        }

        answered = json_object_get(root, "answered");
        if (answered && !twin_digest_is_valid(json_string_value(answered)))
                return decode_error(err, errlen, -EINVAL,
                                    "answered: not a digest (\"sha256:\" and 64 hex digits)");

        dialects = json_object_get(root, "dialects");
        if (dialects && !json_is_object(dialects))
                return decode_error(err, errlen, -EINVAL, "dialects: not an object");

        device = json_object_get(root, "device");
        if (device && !json_is_object(device))
                return decode_error(err, errlen, -EINVAL, "device: not an object");
        if (device && twin_properties_validate(device, NULL, reason, sizeof reason) < 0)
                return decode_error(err, errlen, -EINVAL, "device: %s", reason);
        /* Absent in files of agents before signed documents: no key seen yet. */
        signers = json_object_get(root, "signers");
        if (signers) {
                const char *key;

                if (!json_is_object(signers))
                        return decode_error(err, errlen, -EINVAL, "signers: not an object");
                if (json_object_size(signers) > TWIN_STATE_SIGNERS_MAX)
                        return decode_error(err, errlen, -EINVAL, "signers: more than %d keys",
                                            TWIN_STATE_SIGNERS_MAX);
                json_object_foreach (signers, key, v) {
                        if (!twin_digest_is_valid(key))
                                return decode_error(err, errlen, -EINVAL,
                                                    "signers: a key that is not a fingerprint "
                                                    "(\"sha256:\" and 64 hex digits)");
                        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                            json_integer_value(v) > TWIN_SIGNATURE_SEQ_MAX)
                                return decode_error(err, errlen, -EINVAL,
                                                    "signers: the sequence of %s is not an "
                                                    "integer from 1 to %" PRId64,
                                                    key, TWIN_SIGNATURE_SEQ_MAX);
                }
        }

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->dialects = json_incref(dialects);
        s->device = json_incref(device);
        s->signers = json_incref(signers);
        if (answered) {
                s->answered_digest = strdup(json_string_value(answered));
                if (!s->answered_digest)
                        return -ENOMEM;
        }
        s->applied = json_incref(applied);
        s->status = json_incref(status);
        s->desired_version = json_integer_value(desired);
        s->reported_version = json_integer_value(reported);
        *ret = TAKE_PTR(s);
        return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
        while (len > 0) {
                ssize_t n = write(fd, buf, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        return -EIO;
                buf += n;
                len -= (size_t)n;
        }
        return 0;
}

int twin_state_save(const char *dir, const TwinState *s)
{
        _cleanup_free_ char *text = NULL, *temp = NULL, *final = NULL;
        _cleanup_close_ int dfd = -1, fd = -1;
        int r;

        r = twin_state_encode(s, &text);
        if (r < 0)
                return r;
        /* Never write what load would refuse. */
        if (strlen(text) + 1 > TWIN_STATE_MAX_BYTES)
                return -E2BIG;
        if (asprintf(&temp, "%s/" STATE_TEMP_PREFIX "XXXXXX", dir) < 0 ||
            asprintf(&final, "%s/" TWIN_STATE_FILE_NAME, dir) < 0)
                return -ENOMEM;

        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return negative_errno();

        /* mkostemp creates the file with mode 0600. */
        fd = mkostemp(temp, O_CLOEXEC);
        if (fd < 0)
                return negative_errno();

        r = write_all(fd, text, strlen(text));
        if (r >= 0)
                r = write_all(fd, "\n", 1);
        /* A full disk may show only here on file systems that allocate late. */
        if (r >= 0 && fsync(fd) < 0)
                r = negative_errno();
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = negative_errno();
        if (r >= 0 && rename(temp, final) < 0)
                r = negative_errno();
        if (r < 0) {
                (void)unlink(temp);
                return r;
        }
        /* After the rename the new file is what the disk holds and what load will read. Were
         * this an error, the caller would restore the old state in memory and report a failure
         * while the disk held the new one; so warn (the rename may not survive a crash) and
         * succeed. Not unit-tested: fsync on a directory cannot be made to fail without a
         * faulty file system. */
        if (fsync(dfd) < 0)
                log_warning_errno(negative_errno(),
                                  "Failed to fsync state directory %s, the new state is in place "
                                  "but may not survive a crash, ignoring",
                                  dir);
        return 0;
}

/* Removes temporary files left by a save that was interrupted (crash, power loss). */
static void remove_stale_temp_files(int dfd)
{
        DIR *d;
        struct dirent *de;
        int fd;

        fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return;
        }
        while ((de = readdir(d))) {
                if (strncmp(de->d_name, STATE_TEMP_PREFIX, strlen(STATE_TEMP_PREFIX)) != 0)
                        continue;
                if (unlinkat(dfd, de->d_name, 0) < 0)
                        log_debug("Failed to remove stale %s: %s", de->d_name, strerror(errno));
                else
                        log_debug("Removed stale temporary state file %s", de->d_name);
        }
        closedir(d);
}

/* Renames state.json aside under a name that does not exist yet; returns the new name. */
static int keep_aside(int dfd, const char *dir, char **ret)
{
        char stamp[32], name[128];
        struct tm tm;
        time_t now = time(NULL);

        if (!gmtime_r(&now, &tm) || strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm) == 0)
                return -EINVAL;

        for (int i = 0; i < KEEP_ASIDE_TRIES; i++) {
                if (i == 0)
                        snprintf(name, sizeof name, TWIN_STATE_FILE_NAME ".corrupt-%s", stamp);
                else
                        snprintf(name, sizeof name, TWIN_STATE_FILE_NAME ".corrupt-%s-%d", stamp,
                                 i);

                if (renameat2(dfd, TWIN_STATE_FILE_NAME, dfd, name, RENAME_NOREPLACE) < 0) {
                        if (errno == EEXIST)
                                continue;
                        if (errno != EINVAL && errno != ENOSYS)
                                return negative_errno();
                        /* The file system cannot refuse to replace: check first. Only this
                         * agent writes here, so the race does not matter. */
                        if (faccessat(dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
                                continue;
                        if (renameat(dfd, TWIN_STATE_FILE_NAME, dfd, name) < 0)
                                return negative_errno();
                }
                if (asprintf(ret, "%s/%s", dir, name) < 0)
                        *ret = NULL; /* renamed; only the name is lost */
                return 0;
        }
        return -EEXIST;
}

/* Reads state.json (at most TWIN_STATE_MAX_BYTES + 1 bytes). Returns a negative errno or 0. */
static int read_state_file(int dfd, char **ret, size_t *ret_len, char *reason, size_t reasonlen)
{
        _cleanup_close_ int fd = -1;
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        struct stat st;

        fd = openat(dfd, TWIN_STATE_FILE_NAME, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return negative_errno();
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode)) {
                snprintf(reason, reasonlen, "not a regular file");
                return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
        }

        buf = malloc(TWIN_STATE_MAX_BYTES + 1);
        if (!buf)
                return -ENOMEM;
        while (len < TWIN_STATE_MAX_BYTES + 1) {
                ssize_t n = read(fd, buf + len, TWIN_STATE_MAX_BYTES + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        *ret = TAKE_PTR(buf);
        *ret_len = len;
        return 0;
}

int twin_state_load(const char *dir, TwinState **ret, char **ret_kept_aside, char *err,
                    size_t errlen)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL;
        _cleanup_free_ char *text = NULL, *kept = NULL;
        _cleanup_close_ int dfd = -1;
        char reason[300] = "";
        size_t len = 0;
        int r;

        if (err && errlen > 0)
                err[0] = '\0';

        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 && errno == ENOENT) {
                /* Under systemd StateDirectory= creates it; by hand this saves a step. */
                if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                        r = negative_errno();
                        return decode_error(err, errlen, r, "cannot create state directory %s: %s",
                                            dir, strerror(-r));
                }
                dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        }
        if (dfd < 0) {
                r = negative_errno();
                return decode_error(err, errlen, r, "cannot open state directory %s: %s", dir,
                                    strerror(-r));
        }

        remove_stale_temp_files(dfd);

        r = read_state_file(dfd, &text, &len, reason, sizeof reason);
        if (r == -ENOENT)
                return twin_state_new(ret);
        /* A file that could not be read says nothing about what it holds (a permission, a
         * disk error, a directory in its place): moving it aside would forget the applied
         * configuration for good. Only a file that was read and does not decode is unusable. */
        if (r < 0)
                return decode_error(err, errlen, r, "cannot read %s/%s: %s", dir,
                                    TWIN_STATE_FILE_NAME, reason[0] ? reason : strerror(-r));
        r = twin_state_decode(text, len, &s, reason, sizeof reason);
        if (r == -ENOMEM)
                return r;
        if (r >= 0) {
                if (ret_kept_aside)
                        *ret_kept_aside = NULL;
                *ret = TAKE_PTR(s);
                return 0;
        }

        /* Unusable: keep it for a human to look at and start from empty state. */
        r = keep_aside(dfd, dir, &kept);
        if (r < 0)
                log_debug("Failed to rename %s/%s aside: %s", dir, TWIN_STATE_FILE_NAME,
                          strerror(-r));
        else
                (void)fsync(dfd);
        decode_error(err, errlen, 0, "%s/%s: %s", dir, TWIN_STATE_FILE_NAME, reason);

        r = twin_state_new(&s);
        if (r < 0)
                return r;
        if (ret_kept_aside)
                *ret_kept_aside = TAKE_PTR(kept);
        *ret = TAKE_PTR(s);
        return -EBADMSG;
}
