/* SPDX-License-Identifier: MIT */
#include "mqtt-client.h"
