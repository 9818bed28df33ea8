# Shared by the stages of scripts/test (sourced, not run). A stage writes its results as
# meson testlog lines to $TOP/build-stage-<stage>.json, which scripts/test counts.

# stage_result NAME OK|FAIL: one result line, for what is not a meson test (a build, a target).
stage_result() {
        printf '{"name": "%s", "result": "%s"}\n' "$1" "$2" >>"$stage_out"
}

# stage_testlog FILE PREFIX: appends a meson testlog with PREFIX before every test name, so
# that a failure names the stage it happened in.
stage_testlog() {
        [ -f "$1" ] || { stage_result "$2no test log" FAIL; return 1; }
        /usr/bin/python3 - "$1" "$2" >>"$stage_out" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip():
        t = json.loads(line)
        print(json.dumps({"name": sys.argv[2] + str(t.get("name")), "result": t.get("result")}))
PY
}

stage_begin() { # stage_begin NAME
        cd "${TOP:?TOP is the source tree, set by scripts/test}" || exit 1
        stage_out=$TOP/build-stage-$1.json
        : >"$stage_out"
}
