/* SPDX-License-Identifier: MIT */
/* Feeds arbitrary bytes to the desired document parser, then runs every twin model operation on
 * what it accepts and checks the invariants the agent relies on. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-util.h"
#include "json-util.h"
#include "twin-model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        _cleanup_json_ json_t *doc = NULL, *props = NULL, *target = NULL, *again = NULL,
                              *diff = NULL, *same = NULL, *msg = NULL;
        _cleanup_free_ char *id = NULL;
        char err[256];
        int64_t version;
        int r;

        r = twin_desired_parse(data, size, NULL, &doc, &version, err, sizeof(err));
        if (r < 0) {
                /* The reason goes into $status.error: one line, valid UTF-8. */
                REQUIRE(strlen(err) > 0 && !strchr(err, '\n'));
                msg = json_string(err);
                REQUIRE(msg);
                REQUIRE(version >= -1);
                return 0;
        }
        REQUIRE(version >= 0 && version == twin_document_version(doc));

        props = twin_properties(doc);
        REQUIRE(props);
        /* What the parser accepted is a valid property object once '$version' is gone. */
        REQUIRE(twin_properties_validate(props, NULL, err, sizeof(err)) == 0);
        REQUIRE(!twin_needs_apply(props, props));

        target = json_pack("{s:i, s:{s:s}}", "x", 1, "configId", "a", "b");
        REQUIRE(target);
        REQUIRE(twin_merge_patch(target, props) == 0);
        /* A merge patch is idempotent. */
        again = json_deep_copy(target);
        REQUIRE(again && twin_merge_patch(again, props) == 0);
        REQUIRE(json_equal(again, target));
        REQUIRE(twin_merge_patch(target, doc) == 0);

        diff = twin_diff_keys(props, target);
        REQUIRE(diff && json_is_array(diff));
        same = twin_diff_keys(props, props);
        REQUIRE(same && json_array_size(same) == 0);
        REQUIRE(twin_needs_apply(props, target) || json_array_size(diff) == 0 ||
                twin_config_id(props));

        id = twin_config_id_to_string(twin_config_id(props));
        REQUIRE(id);
        return 0;
}
