/* SPDX-License-Identifier: MIT */
#include "twin-model.h"
