/* SPDX-License-Identifier: MIT */
#include "twind-dialect.h"
