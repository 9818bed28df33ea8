# SPDX-License-Identifier: MIT
"""twinctl against the real twind and a real mosquitto: every verb, end to end, as the back end
and the person on the device use them (test_twinctl.py checks twinctl alone, with fakes)."""

import json
import signal
import subprocess

import pytest

import twinlib
from test_twinctl import (
    EXIT_CONFLICT,
    EXIT_DEVICE_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    environment,
    twinctl,
    twinctl_binary,
)
from twinlib import start_agent


def get_json(broker, device):
    r = twinctl(broker, "get", device, "--json")
    assert r.returncode == EXIT_OK, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def running(agent, service, make_apply):
    """The agent with a recording apply command, connected."""
    apply = make_apply()
    start_agent(agent, service, apply)
    return apply


def test_set_wait_converges(broker, agent, running):
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=5m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    twin = get_json(broker, agent.device_id)
    assert twin["desired"]["sendFrequency"] == "5m"
    assert twin["reported"]["sendFrequency"] == "5m"
    assert twin["reported"]["configId"] == twin["desired"]["configId"] == 1
    assert twin["reported"]["$status"]["state"] == "success"
    assert twin["reported"]["$status"]["desiredVersion"] == twin["desired"]["$version"]
    assert twin["connection"]["state"] == "online"
    assert running.inputs() == [{"configId": 1, "sendFrequency": "5m"}]

    # Human output marks nothing as differing once converged, and shows both sides.
    r = twinctl(broker, "get", agent.device_id)
    assert r.returncode == EXIT_OK, r.stderr
    assert "sendFrequency" in r.stdout and "success" in r.stdout, r.stdout


def test_set_wait_reports_a_failed_apply(broker, agent, running):
    running.behave(exit=3, stderr="cannot open /dev/modem")
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=1m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_DEVICE_FAILED, (r.returncode, r.stderr)
    assert "cannot open /dev/modem" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    twin = get_json(broker, agent.device_id)
    assert "sendFrequency" not in twin["reported"], twin
    assert twin["reported"]["$status"]["state"] == "failed"


def test_set_wait_times_out_when_the_agent_is_stopped(broker, agent, running):
    assert agent.stop() == 0
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=2m", "--wait", "--timeout", "2")
    assert r.returncode == EXIT_TIMEOUT, (r.returncode, r.stderr)
    # The desired document is there for when the device comes back: it then converges.
    agent.start()
    r = twinctl(broker, "watch", agent.device_id, "--until-converged", "--timeout", "20")
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout, r.stderr)
    assert get_json(broker, agent.device_id)["reported"]["sendFrequency"] == "2m"


def test_if_version_conflict_changes_nothing(broker, agent, running):
    r = twinctl(broker, "set", agent.device_id, "a=1", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    before = get_json(broker, agent.device_id)
    assert before["desired"]["$version"] == 1

    r = twinctl(broker, "set", agent.device_id, "a=2", "--if-version", "7")
    assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
    after = get_json(broker, agent.device_id)
    assert after["desired"] == before["desired"]
    assert len(running.calls()) == 1

    r = twinctl(broker, "set", agent.device_id, "a=2", "--if-version", "1", "--wait",
                "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    assert get_json(broker, agent.device_id)["reported"]["a"] == 2


def test_get_unknown_device(broker, running):
    r = twinctl(broker, "get", "no-such-device")
    assert r.returncode == EXIT_NOT_FOUND, (r.returncode, r.stderr)
    assert "no-such-device" in r.stderr


def test_list_with_filters(tmp_path, broker, agent, running, make_apply):
    # A second device whose apply fails.
    bad_apply = make_apply(name="bad", exit=1, stderr="nope")
    other = twinlib.Agent(str(tmp_path / "other"), broker, device_id="dev-2")
    other.configure("apply", "command", bad_apply.command)
    try:
        other.start()
        r = twinctl(broker, "set", agent.device_id, "x=1", "--wait", "--timeout", "20")
        assert r.returncode == EXIT_OK, r.stderr
        r = twinctl(broker, "set", "dev-2", "x=1", "--wait", "--timeout", "20")
        assert r.returncode == EXIT_DEVICE_FAILED, r.stderr

        def listed(*flags):
            r = twinctl(broker, "list", "--json", *flags)
            assert r.returncode == EXIT_OK, r.stderr
            return {d["deviceId"]: d for d in json.loads(r.stdout)}

        everyone = listed()
        assert set(everyone) == {agent.device_id, "dev-2"}, everyone
        assert set(listed("--failed")) == {"dev-2"}
        assert set(listed("--pending")) == set()
        assert set(listed("--offline")) == set()

        assert other.stop() == 0
        assert set(listed("--offline")) == {"dev-2"}
        assert set(listed("--failed", "--offline")) == {"dev-2"}

        r = twinctl(broker, "list")
        assert r.returncode == EXIT_OK
        assert agent.device_id in r.stdout and "dev-2" in r.stdout, r.stdout
    finally:
        other.cleanup()


def test_status_and_reapply_through_the_socket(broker, agent, running):
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=5m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr

    r = twinctl(None, "--socket", agent.socket, "status", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    st = json.loads(r.stdout)
    assert st["deviceId"] == agent.device_id and st["connected"] is True
    assert st["configId"] == 1 and st["state"] == "success"

    r = twinctl(None, "--socket", agent.socket, "status")
    assert r.returncode == EXIT_OK, r.stderr
    assert agent.device_id in r.stdout and "success" in r.stdout, r.stdout

    r = twinctl(None, "--socket", agent.socket, "reapply")
    assert r.returncode == EXIT_OK, r.stderr
    assert twinlib.poll(lambda: len(running.calls()) == 2, 10), running.calls()
    assert running.inputs()[1] == running.inputs()[0]


def read_events(proc, until, timeout):
    """Event names from `twinctl events --json` until `until` is seen or timeout passes."""
    import select
    import time

    seen, end = [], time.monotonic() + timeout
    while until not in seen and time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line)["event"])
    return seen


def test_events_follow_an_apply(broker, agent, running):
    proc = subprocess.Popen(
        [twinctl_binary(), "--socket", agent.socket, "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    try:
        # The follower registers asynchronously: configure until its stream shows an apply
        # (bounded; normally the first round does).
        for i in range(5):
            r = twinctl(broker, "set", agent.device_id, f"mode=eco{i}", "--wait", "--timeout", "20")
            assert r.returncode == EXIT_OK, r.stderr
            seen = read_events(proc, "apply-finished", 3)
            if {"desired-received", "apply-started", "apply-finished"} <= set(seen):
                break
        assert "desired-received" in seen and "apply-finished" in seen, (
            f"no whole apply seen on the events stream: {seen}"
        )
        assert seen.index("desired-received") < seen.index("apply-started") < seen.index(
            "apply-finished"
        ), seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == EXIT_OK, proc.stderr.read()
