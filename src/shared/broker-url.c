/* SPDX-License-Identifier: MIT */
#include "broker-url.h"
