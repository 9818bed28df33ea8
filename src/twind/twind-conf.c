/* SPDX-License-Identifier: MIT */
#include "twind-conf.h"
