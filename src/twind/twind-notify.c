/* SPDX-License-Identifier: MIT */
#include "twind-notify.h"
