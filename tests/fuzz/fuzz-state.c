/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the state file decoder: whatever is on disk, decode must refuse it
 * cleanly or accept it, and an accepted state must survive encode + decode unchanged (the
 * agent rewrites what it loaded).
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "twind-state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        _cleanup_(twin_state_freep) TwinState *s = NULL, *again = NULL;
        _cleanup_free_ char *text = NULL;
        char err[256];

        if (twin_state_decode((const char *)data, size, &s, err, sizeof err) < 0) {
                /* Every refusal carries a reason. */
                if (err[0] == '\0')
                        abort();
                return 0;
        }
        if (twin_state_encode(s, &text) < 0)
                return 0; /* ENOMEM */
        if (twin_state_decode(text, strlen(text), &again, err, sizeof err) < 0)
                abort();
        if (!json_equal(s->applied, again->applied) ||
            s->desired_version != again->desired_version ||
            s->reported_version != again->reported_version ||
            (s->status ? !again->status || !json_equal(s->status, again->status)
                       : again->status != NULL) ||
            (s->signers && json_object_size(s->signers) > 0
                 ? !again->signers || !json_equal(s->signers, again->signers)
                 : again->signers != NULL))
                abort();
        return 0;
}
