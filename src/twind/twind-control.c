/* SPDX-License-Identifier: MIT */
#include "twind-control.h"
