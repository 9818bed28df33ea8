#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Runs inside the test container as root, from twind-checks.service, once the system is up
# (mosquitto running, twind.socket listening, twind.service not started yet). Prints one
# "ok N - ..." or "not ok N - ..." line per check, then writes the verdict to /out/result and
# exits non-zero when a check failed. Every wait is bounded.

set -u

export TWINCTL_BROKER=mqtt://127.0.0.1:1883
DEVICE=myDeviceId
APPLY_LOG=/var/lib/twind/applied.log # appended to by the test's apply command
SOCKET=/run/twind/control.sock

n=0
failed=0

ok() {
        n=$((n + 1))
        echo "ok $n - $*"
}
not_ok() {
        n=$((n + 1))
        failed=$((failed + 1))
        echo "not ok $n - $*"
}
# check DESCRIPTION COMMAND...: one report line for the command's success.
check() {
        local desc=$1
        shift
        if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
# wait_for SECONDS COMMAND...: succeeds as soon as COMMAND does; fails after SECONDS.
wait_for() {
        local deadline=$((SECONDS + $1))
        shift
        until "$@"; do
                ((SECONDS < deadline)) || return 1
                sleep 0.2
        done
}
not() { ! "$@"; }
equals() { [[ $1 == "$2" ]] || { echo "#   expected '$2', got '$1'"; return 1; }; }

prop() { systemctl show -P "$1" twind.service; }
status_json() { twinctl status --json 2>/dev/null; }
status_field() { status_json | jq -r "$1"; }
connected() { [[ $(status_field .connected) == true ]]; }
applies() { if [[ -f $APPLY_LOG ]]; then wc -l <"$APPLY_LOG"; else echo 0; fi; }
active() { systemctl is-active --quiet twind.service; }
# restarted RESTARTS PID: systemd counted a restart and runs a new, active main process.
restarted() {
        local pid
        pid=$(prop MainPID)
        [[ $(prop NRestarts) -gt $1 && $pid != "$2" && $pid != 0 ]] && active
}
journal_has_apply() {
        journalctl -u twind.service "TWIN_CONFIG_ID=$1" -o verbose --no-pager -q 2>/dev/null |
                grep -q "TWIN_DEVICE_ID=$DEVICE"
}
# A desired document that asks for no change (the same configId): once it is answered, the
# retained desired document delivered on (re)connect has been handled too, in order.
barrier() {
        twinctl set "$DEVICE" "configId=$1" --wait --timeout 60 >/dev/null
}

echo "# twind under systemd $(systemctl --version | head -n1 | cut -d' ' -f2)"

# ---- the socket unit, before the agent runs
check "twind.socket is listening" systemctl is-active --quiet twind.socket
check "the control socket is root:twind, mode 0660" \
        equals "$(stat -c '%U:%G %a' "$SOCKET" 2>&1)" "root:twind 660"
check "twind.service is not running yet" not active

# ---- the installed unit's sandbox, as the running systemd sees it
exposure=$(systemd-analyze security --no-pager twind.service 2>&1 |
        sed -n 's/^.*Overall exposure level for twind.service: \([0-9.]*\).*$/\1/p')
echo "#   systemd-analyze security twind.service: exposure ${exposure:-?}"
check "the installed twind.service scores an exposure below 1.0" \
        eval '[[ $exposure =~ ^0\.[0-9]+$ ]]'

verify=$(systemd-analyze verify --man=no twind.service twind.socket 2>&1)
[[ -z $verify ]] || printf '#   %s\n' "${verify//$'\n'/$'\n'#   }"
check "systemd-analyze verify finds nothing wrong with the units" equals "$verify" ""

# ---- start
check "systemctl start twind succeeds" systemctl start twind.service
check "twind.service is active" active
check "it runs as user twind" equals "$(ps -o user= -p "$(prop MainPID)" | tr -d ' ')" twind
check "it connects to the broker" wait_for 30 connected
check "its StatusText says it is connected" wait_for 10 eval '[[ $(prop StatusText) == *"connected to"* ]]'

# ---- the control socket, through the socket unit
out=$(twinctl status 2>&1)
rc=$?
printf '#   %s\n' "${out//$'\n'/$'\n'#   }"
check "twinctl status answers" equals "$rc" 0
check "twinctl status names the device" equals "$(status_field .deviceId)" "$DEVICE"

# ---- a configuration from the service side
applies_before=$(applies)
out=$(twinctl set "$DEVICE" sendFrequency=5m --wait --timeout 60 2>&1)
rc=$?
printf '#   %s\n' "${out//$'\n'/$'\n'#   }"
check "twinctl set $DEVICE sendFrequency=5m --wait converges" equals "$rc" 0
config_id=$(status_field .configId)
check "the agent runs the new configuration" equals "$(status_field .applied.sendFrequency)" 5m
check "the apply command ran once" equals "$(applies)" "$((applies_before + 1))"
check "journalctl -u twind TWIN_CONFIG_ID=$config_id shows the apply" \
        wait_for 10 journal_has_apply "$config_id"

# ---- reload
pid=$(prop MainPID)
check "systemctl reload twind succeeds" systemctl reload twind.service
check "it is still active after the reload" active
check "the same process runs after the reload" equals "$(prop MainPID)" "$pid"
check "it still answers after the reload" equals "$(status_field .deviceId)" "$DEVICE"

# ---- SIGKILL: systemd restarts it; no re-apply, the state is kept
restarts=$(prop NRestarts)
pid=$(prop MainPID)
applies_before=$(applies)
systemctl kill -s SIGKILL --kill-who=main twind.service
check "after SIGKILL systemd restarts it" wait_for 30 restarted "$restarts" "$pid"
check "it reconnects after the restart" wait_for 30 connected
check "the desired configuration is answered after the restart" barrier "$config_id"
check "no re-apply after the restart" equals "$(applies)" "$applies_before"
check "the applied configId is kept" equals "$(status_field .configId)" "$config_id"
check "the applied properties are kept" equals "$(status_field .applied.sendFrequency)" 5m
check "the state file belongs to twind" equals "$(stat -c %U /var/lib/twind/state.json 2>&1)" twind

# ---- SIGSTOP: the watchdog (WatchdogSec=3 in this root) catches the stalled loop
restarts=$(prop NRestarts)
pid=$(prop MainPID)
applies_before=$(applies)
systemctl kill -s SIGSTOP --kill-who=main twind.service
check "a stopped agent is restarted" wait_for 60 restarted "$restarts" "$pid"
check "by the watchdog" eval 'journalctl -u twind.service --no-pager -q | grep -qi "watchdog timeout"'
check "it reconnects after the watchdog restart" wait_for 30 connected
check "the desired configuration is answered after the watchdog restart" barrier "$config_id"
check "no re-apply after the watchdog restart" equals "$(applies)" "$applies_before"

# ---- socket activation: the socket outlives the service and starts it on demand
check "systemctl stop twind succeeds" systemctl stop twind.service 2>/dev/null # "can still be activated"
check "the control socket stays while the service is stopped" test -S "$SOCKET"
check "twind.socket keeps listening" systemctl is-active --quiet twind.socket
check "twinctl status starts the agent through the socket" \
        equals "$(status_field .deviceId)" "$DEVICE"
check "twind.service is active again" active

# ---- the recipe of data/examples (twind(8), "A REAL APPLY"): twind, still in the shipped
# sandbox, writes myapp's configuration into its state directory; a path unit has it installed
# and myapp restarted by root, and the apply waits for the outcome.
EXAMPLES=/usr/share/doc/twind/examples
myapp_prop() { systemctl show -P "$1" myapp.service; }
# myapp_restarted PID: myapp runs, in another process than PID.
myapp_restarted() {
        local pid
        pid=$(myapp_prop MainPID)
        [[ $pid != 0 && $pid != "$1" ]]
}
myapp_runs() { [[ $(cat /run/myapp/running 2>/dev/null) == "send_frequency=$1" ]]; }
myapp_journal_has() { journalctl -u myapp.service --no-pager -q | grep -qF "$1"; }
twin_json() { twinctl get "$DEVICE" --json 2>/dev/null; }
reported_frequency() { twin_json | jq -r '.reported.sendFrequency'; }
contains() { [[ $1 == *"$2"* ]] || { echo "#   '$1' does not contain '$2'"; return 1; }; }
# set_frequency VALUE: twinctl set ... --wait; its output as comments, its exit status in rc.
set_frequency() {
        out=$(twinctl set "$DEVICE" "sendFrequency=$1" --wait --timeout 60 2>&1)
        rc=$?
        printf '#   %s\n' "${out//$'\n'/$'\n'#   }"
}

# What twind(8) and the README tell the operator to do.
install -m 0755 "$EXAMPLES"/{twind-apply-myapp,twind-apply-myapp-restart,myapp} /usr/local/libexec/
install -m 0644 "$EXAMPLES"/{twind-apply-myapp.path,twind-apply-myapp.service,myapp.service} \
        /etc/systemd/system/
cat "$EXAMPLES/twind.conf.myapp" >>/etc/twind/twind.conf
systemctl daemon-reload
verify=$(systemd-analyze verify --man=no myapp.service twind-apply-myapp.path \
        twind-apply-myapp.service 2>&1)
[[ -z $verify ]] || printf '#   %s\n' "${verify//$'\n'/$'\n'#   }"
check "systemd-analyze verify finds nothing wrong with the recipe's units" equals "$verify" ""
check "systemctl enable --now myapp.service twind-apply-myapp.path succeeds" \
        systemctl enable --quiet --now myapp.service twind-apply-myapp.path
check "myapp runs with its default, send_frequency=1m" wait_for 10 myapp_runs 1m
check "systemctl reload twind (the recipe's apply command) succeeds" systemctl reload twind.service
check "twind runs in the shipped sandbox: no drop-in but this root's watchdog" \
        equals "$(prop DropInPaths)" /etc/systemd/system/twind.service.d/test-watchdog.conf

pid=$(myapp_prop MainPID)
set_frequency 10m
check "twinctl set $DEVICE sendFrequency=10m --wait converges through the recipe" equals "$rc" 0
check "myapp was restarted" myapp_restarted "$pid"
check "myapp runs with send_frequency=10m" wait_for 10 myapp_runs 10m
check "myapp's journal says it runs with 10m" \
        wait_for 10 myapp_journal_has "running with send_frequency=10m"
check "/etc/myapp/myapp.conf is root's, mode 0644" \
        equals "$(stat -c '%U %a' /etc/myapp/myapp.conf 2>&1)" "root 644"
check "and has the new value" grep -qx "send_frequency = 10m" /etc/myapp/myapp.conf
check "the twin reports sendFrequency 10m" equals "$(reported_frequency)" 10m

# myapp's own check refuses the value: nothing changes, and the twin says why.
pid=$(myapp_prop MainPID)
set_frequency 5s
check "sendFrequency=5s: twinctl set --wait says the device failed (exit status 3)" equals "$rc" 3
check "the twin's error is myapp's reason" \
        contains "$(twin_json | jq -r '.reported["$status"].error')" "below the minimum of 10s"
check "myapp was not restarted" equals "$(myapp_prop MainPID)" "$pid"
check "myapp still runs with 10m" myapp_runs 10m
check "the twin still reports 10m" equals "$(reported_frequency)" 10m

# The apply command refuses what is not a span before anything reaches root.
set_frequency 5
check "sendFrequency=5 (a number): the device failed" equals "$rc" 3
check "the twin's error names the property" \
        contains "$(twin_json | jq -r '.reported["$status"].error')" "sendFrequency must be a span"

# myapp does not start with 13m (a stand-in for a port in use, a missing device...): the
# previous configuration is put back and the failure shows in the twin and in myapp's journal.
install -d /etc/systemd/system/myapp.service.d
cat >/etc/systemd/system/myapp.service.d/test-cannot-start.conf <<'CONF'
[Service]
ExecStartPre=/bin/sh -c '! grep -q "^send_frequency = 13m" /etc/myapp/myapp.conf'
CONF
systemctl daemon-reload
pid=$(myapp_prop MainPID)
set_frequency 13m
check "sendFrequency=13m, which myapp cannot start with: the device failed" equals "$rc" 3
check "the twin's error says myapp did not start and runs the previous configuration" \
        contains "$(twin_json | jq -r '.reported["$status"].error')" \
        "myapp.service did not start with the new configuration and runs the previous one again"
check "myapp is active again" systemctl is-active --quiet myapp.service
check "myapp was restarted again" myapp_restarted "$pid"
check "with the previous configuration: send_frequency=10m" wait_for 10 myapp_runs 10m
check "myapp's journal shows the failed start" \
        myapp_journal_has "Failed to start myapp.service"
check "the twin still reports 10m" equals "$(reported_frequency)" 10m
rm /etc/systemd/system/myapp.service.d/test-cannot-start.conf
systemctl daemon-reload

set_frequency 15m
check "after the failures, sendFrequency=15m converges" equals "$rc" 0
check "myapp runs with send_frequency=15m" wait_for 10 myapp_runs 15m
check "twind-apply-myapp.path still waits for the next one" \
        systemctl is-active --quiet twind-apply-myapp.path
check "no request is left behind in /var/lib/twind/myapp" \
        equals "$(find /var/lib/twind/myapp -type f)" ""

echo "1..$n"
if ((failed == 0)); then
        echo "pass: $n checks" >/out/result
        exit 0
fi
echo "fail: $failed of $n checks" >/out/result
exit 1
