/* SPDX-License-Identifier: MIT */
#pragma once

/* The service settings: the command line, the environment, the configuration files and their
 * profiles (twinctl(1), "CONFIGURATION"). */

#include "twinctl.h"

#define TWINCTL_BROKER_DEFAULT "mqtt://127.0.0.1:1883"

/* Fills the service settings that the command line left unset: $TWINCTL_BROKER and
 * $TWINCTL_AZURE, then the profile (--profile, $TWINCTL_PROFILE) and [broker] of the user's
 * file ($XDG_CONFIG_HOME or ~/.config, twinctl/twinctl.conf) over those of system_path (both
 * optional), or of args->config_path alone (required), then the defaults. Checks what they say
 * together, naming where each value came from (FILE:LINE, option, variable). Returns 0,
 * -EINVAL after saying what is wrong, or another negative errno after logging it. */
int twinctl_conf_load(TwinctlArgs *args, const char *system_path);

/* Reads a password file with secret_file_read() (the same rules as twind: one trailing line end
 * dropped, wiped with secret_free()). Returns 0, or a negative errno after logging the
 * problem. */
int twinctl_read_password_file(const char *path, char **ret);
