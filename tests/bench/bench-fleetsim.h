/* SPDX-License-Identifier: MIT */
#pragma once

/* Simulated twins for the scale section: the retained desired, reported and connection
 * documents of devices that have no agent, published straight to the broker. */

#include <stddef.h>

/* Publishes the three documents of devices "<prefix>-<first>" .. "<prefix>-<first + n - 1>"
 * (retained, QoS 0, as fast as the broker takes them), then a QoS 1 publish whose PUBACK proves
 * the broker stored every one before it. Every 100th device is pending (desired $version 2, the
 * report answers 1), every 50th offline. 0 or negative errno. */
int fleet_simulate(int port, const char *prefix, size_t first, size_t n);
