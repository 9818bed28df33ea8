/* SPDX-License-Identifier: MIT */
#pragma once

/* Broker settings from TWINCTL_BROKER and /etc/twind/twinctl.conf. */

#include "twinctl.h"

#define TWINCTL_BROKER_DEFAULT "mqtt://127.0.0.1:1883"

/* Fills the broker settings that the command line left unset: the URL from TWINCTL_BROKER, then
 * everything from the INI file at path (a missing file is fine unless required), then the defaults.
 * Validates the URL (naming where it came from) and the topic root. Returns 0, or a negative errno
 * after logging the problem. */
int twinctl_conf_load(TwinctlArgs *args, const char *path, bool required);

/* Reads a password file with secret_file_read() (the same rules as twind: one trailing line end
 * dropped, wiped with secret_free()). Returns 0, or a negative errno after logging the
 * problem. */
int twinctl_read_password_file(const char *path, char **ret);
