/* SPDX-License-Identifier: MIT */
#include "twind-apply.h"
