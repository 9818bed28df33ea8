/* SPDX-License-Identifier: MIT */
#include "twind-manager.h"
