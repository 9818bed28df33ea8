#!/bin/bash
# SPDX-License-Identifier: MIT
#
# The 'system' suite: twind under a real systemd. Boots a minimal Debian 12 root with
# systemd-nspawn (see ../shared/notes/systemd-container.md in the project's notes), with the
# build installed into it by `meson install --destdir`, mosquitto running inside and a one-shot
# unit that runs checks.sh, then reports what checks.sh found.
#
# usage: systemd-container.sh SOURCE_DIR [BUILD_DIR]
#   BUILD_DIR must be configured with --prefix=/usr; without one, SOURCE_DIR/build-system is
#   configured (once) and built.
# The root is made once with debootstrap and cached in $TWIND_TEST_ROOT_CACHE
# (/var/cache/twind-test-root); every run works on a fresh copy of it.
# Exit status: 0 all checks passed, 1 a check failed, 77 (skip) not root or tools missing.
# TWIND_TEST_KEEP=1 keeps the run's directory (root copy, console log, journal) for a look.

set -euo pipefail

SRC=$(realpath "${1:?usage: systemd-container.sh SOURCE_DIR [BUILD_DIR]}")
BUILD=${2:-}
ROOT_CACHE=${TWIND_TEST_ROOT_CACHE:-/var/cache/twind-test-root}
HERE=$(dirname "$(realpath "$0")")
SUITE=bookworm
# What the agent, twinctl (libcurl4 for its IoT Hub back end) and the checks need inside;
# /bin/kill (procps) for ExecReload=,
# jq for reading twinctl's JSON in checks.sh.
PACKAGES=systemd,systemd-sysv,dbus,procps,jq,mosquitto,libuv1,libmosquitto1,libjansson4,libinih1,libsystemd0,libssl3,libcurl4

skip() {
        echo "SKIP: $*"
        exit 77
}
die() {
        echo "ERROR: $*" >&2
        exit 1
}

[[ $(id -u) == 0 ]] || skip "needs root (debootstrap and systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn is missing (apt-get install systemd-container)"
command -v debootstrap >/dev/null || skip "debootstrap is missing (apt-get install debootstrap)"

# The Debian mirror apt uses on this machine: deb822 .sources files first, then one-line lists.
debian_mirror() {
        local f
        for f in /etc/apt/sources.list.d/*.sources; do
                [[ -f $f ]] || continue
                awk -v suite="$SUITE" '
                        BEGIN { RS = ""; FS = "\n" }
                        {
                                uri = ""; ok = 0; deb = 0
                                for (i = 1; i <= NF; i++) {
                                        if ($i ~ /^[ \t]*#/) continue
                                        if ($i ~ /^URIs:/) { split(substr($i, 6), u, " "); for (k in u) if (u[k] != "") { uri = u[k]; break } }
                                        if ($i ~ /^Suites:/) { n = split(substr($i, 8), s, " "); for (k = 1; k <= n; k++) if (s[k] == suite) ok = 1 }
                                        if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) deb = 1
                                }
                                if (uri != "" && ok && deb) { print uri; exit }
                        }' "$f"
        done
        { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
                sed -e 's/\[[^]]*\]//' | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
}

# A minimal root, made once; the marker records what it was made with, so a changed package
# list makes a new one. A root that is missing its marker (interrupted run) is made again.
prepare_root_cache() {
        local want="$SUITE $PACKAGES"
        if [[ -f $ROOT_CACHE/.twind-test-root && $(cat "$ROOT_CACHE/.twind-test-root") == "$want" ]]; then
                return 0
        fi
        local mirror
        mirror=$(debian_mirror)
        mirror=${mirror%%$'\n'*}
        [[ -n $mirror ]] || die "cannot find the Debian $SUITE mirror in /etc/apt/sources.list*"
        echo "# building the test root in $ROOT_CACHE from $mirror (once)"
        local tmp=$ROOT_CACHE.new
        rm -rf "$tmp"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1 ||
                { tail -n 20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
        rm -f "$tmp.log"
        # Smaller and quicker to copy; the tests never use apt inside.
        rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
        echo "$want" >"$tmp/.twind-test-root"
        rm -rf "$ROOT_CACHE"
        mv "$tmp" "$ROOT_CACHE"
}

exec 9>"$ROOT_CACHE.lock"
flock 9
prepare_root_cache
flock -u 9
[[ ${TWIND_TEST_PREPARE_ONLY:-0} == 1 ]] && exit 0

# Everything of this run (root copy, logs, the checks' output) lives here.
WORK=$(mktemp -d /var/tmp/twind-system.XXXXXX)
OUT=$WORK/out
ROOT=$WORK/root
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$OUT"

# ---- the build, configured for a distribution (/usr, /etc, /var, /lib/systemd/system)
build_prefix() {
        /usr/bin/python3 -c 'import json, sys
for o in json.load(open(sys.argv[1])):
    if o["name"] == "prefix": print(o["value"])' "$1/meson-info/intro-buildoptions.json" 2>/dev/null || true
}
if [[ -n $BUILD && $(build_prefix "$BUILD") != /usr ]]; then
        echo "# $BUILD is not configured with --prefix=/usr; using a build of its own"
        BUILD=
fi
if [[ -z $BUILD ]]; then
        BUILD=$SRC/build-system
        if [[ ! -f $BUILD/build.ninja ]]; then
                meson setup "$BUILD" "$SRC" --prefix=/usr --wrap-mode=nofallback \
                        -Dtests=false -Dbench=false -Dfuzz=false >"$OUT/setup.log" 2>&1 ||
                        { cat "$OUT/setup.log" >&2; die "meson setup failed"; }
        fi
fi
ninja -C "$BUILD" >"$OUT/build.log" 2>&1 || { tail -n 30 "$OUT/build.log" >&2; die "build failed"; }

# ---- a fresh copy of the root with the build installed, as a package would install it
cp -a "$ROOT_CACHE" "$ROOT"

DESTDIR=$ROOT meson install -C "$BUILD" --no-rebuild --quiet >"$OUT/install.log" 2>&1 ||
        { cat "$OUT/install.log" >&2; die "meson install failed"; }
# Where a distribution expects each file (man pages only when scdoc could build them).
installed=(usr/sbin/twind usr/bin/twinctl lib/systemd/system/twind.service
        lib/systemd/system/twind.socket usr/lib/sysusers.d/twind.conf
        usr/share/doc/twind/twind.conf usr/share/doc/twind/examples/twind-apply-myapp
        usr/share/doc/twind/examples/twind-apply-myapp-restart usr/share/doc/twind/examples/myapp
        usr/share/doc/twind/examples/twind-apply-myapp.path
        usr/share/doc/twind/examples/twind-apply-myapp.service
        usr/share/doc/twind/examples/myapp.service usr/share/doc/twind/examples/twind.conf.myapp)
command -v scdoc >/dev/null &&
        installed+=(usr/share/man/man8/twind.8 usr/share/man/man5/twind.conf.5
                usr/share/man/man1/twinctl.1)
for f in "${installed[@]}"; do
        [[ -e $ROOT/$f ]] || die "meson install did not install /$f"
done
# What the package's maintainer scripts would do: create the user, enable the socket.
systemd-sysusers --root="$ROOT" twind.conf >/dev/null
systemctl --root="$ROOT" enable --quiet mosquitto.service twind.socket

install -d "$ROOT/etc/twind" "$ROOT/usr/local/libexec"
cat >"$ROOT/etc/twind/twind.conf" <<'CONF'
[broker]
url = mqtt://127.0.0.1:1883

[device]
id = myDeviceId

[apply]
command = /usr/local/libexec/twind-test-apply
timeout = 30
CONF
# The apply command: records every run in the state directory, the one place the sandbox lets
# the agent's user write.
cat >"$ROOT/usr/local/libexec/twind-test-apply" <<'APPLY'
#!/bin/sh
set -e
input=$(cat)
echo "configId=$TWIN_CONFIG_ID desiredVersion=$TWIN_DESIRED_VERSION $input" >>/var/lib/twind/applied.log
echo "applied configId $TWIN_CONFIG_ID"
APPLY
chmod 0755 "$ROOT/usr/local/libexec/twind-test-apply"

cat >"$ROOT/etc/mosquitto/conf.d/twind-test.conf" <<'CONF'
listener 1883 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
CONF

# A short watchdog, so that the SIGSTOP check takes seconds.
install -d "$ROOT/etc/systemd/system/twind.service.d"
cat >"$ROOT/etc/systemd/system/twind.service.d/test-watchdog.conf" <<'CONF'
[Service]
WatchdogSec=3
CONF

install -m 0755 "$HERE/checks.sh" "$ROOT/usr/local/libexec/twind-checks"
cat >"$ROOT/etc/systemd/system/twind-checks.service" <<'UNIT'
[Unit]
Description=twind system checks
Wants=multi-user.target
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
StandardOutput=file:/out/log
StandardError=inherit
ExecStart=/usr/local/libexec/twind-checks
ExecStopPost=/bin/sh -c 'journalctl -b --no-pager >/out/journal.txt 2>&1'
UNIT

# ---- boot; the checks unit powers the container off when it is done
echo "# booting $ROOT"
rc=0
timeout 600 systemd-nspawn -q -D "$ROOT" --register=no --keep-unit -M "twind-test-$$" \
        --private-network --bind="$OUT:/out" -b systemd.unit=twind-checks.service \
        >"$OUT/console.log" 2>&1 </dev/null || rc=$?

[[ -f $OUT/log ]] && cat "$OUT/log"
if [[ -f $OUT/result ]]; then
        echo "# $(cat "$OUT/result")"
else
        echo "# the checks did not finish (systemd-nspawn exited with $rc); console:"
        tail -n 40 "$OUT/console.log"
fi
if [[ ! -f $OUT/result || $(cat "$OUT/result") != pass:* ]]; then
        echo "# ---- journal (tail) ----"
        tail -n 150 "$OUT/journal.txt" 2>/dev/null
        verdict=1
else
        verdict=0
fi
if [[ -n ${TWIND_TEST_KEEP:-} ]]; then
        trap - EXIT
        echo "# kept $WORK (TWIND_TEST_KEEP)"
fi
exit $verdict
