/* SPDX-License-Identifier: MIT */
#include "twind-state.h"
