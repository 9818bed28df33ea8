/* SPDX-License-Identifier: MIT */
/* Feeds arbitrary bytes to the control request parser, as a client on the socket could. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-util.h"
#include "control-protocol.h"
#include "json-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        _cleanup_json_ json_t *msg = NULL;
        ControlRequest req;
        const char *name = NULL;
        char err[256];
        int r;

        r = control_request_parse((const char *)data, size, &req, &name, err, sizeof(err));
        if (r < 0) {
                /* The reply carries both as JSON strings: they must be usable as such. */
                REQUIRE(name);
                REQUIRE(strlen(err) > 0 && !strchr(err, '\n'));
                msg = json_string(err);
                REQUIRE(msg);
                REQUIRE(req.has_id || req.id == -1);
                return 0;
        }
        REQUIRE(req.method >= 0 && req.method < _CONTROL_METHOD_MAX);
        REQUIRE(control_method_from_string(control_method_to_string(req.method)) == req.method);
        REQUIRE((req.method == CONTROL_METHOD_REPORT) == (req.properties != NULL));
        control_request_done(&req);
        return 0;
}
