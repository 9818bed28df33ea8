/* SPDX-License-Identifier: MIT */
#include "control-protocol.h"
