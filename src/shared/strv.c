/* SPDX-License-Identifier: MIT */
#include "strv.h"
