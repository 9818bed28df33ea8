# SPDX-License-Identifier: MIT
"""twinctl against the real twind and a real mosquitto: every verb, end to end, as the back end
and the person on the device use them (test_twinctl.py checks twinctl alone, with fakes)."""

import json
import queue
import signal
import subprocess
import threading
import time

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


def test_set_after_the_broker_lost_desired_is_applied(broker, agent, service, running):
    """The broker restarts without persistence and forgets the desired document: the next set
    must not reuse the $version and configId the device already answered (it would take the new
    request for a redelivery and the set would time out)."""
    r = twinctl(broker, "set", agent.device_id, "configId=1", "sendFrequency=5m", "--wait",
                "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    mark = service.connection_mark()
    broker.stop()
    broker.start()
    service.wait_connection("online", mark, timeout=20)
    service.wait_reported(lambda d: d.get("sendFrequency") == "5m", "reported again after the "
                          "broker restart")
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=1h", "--wait", "--timeout", "20",
                "--json")
    assert r.returncode == EXIT_OK, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] == 2 and out["configId"] == 2, out
    assert "no desired document" in r.stderr, r.stderr
    assert running.inputs()[-1] == {"configId": 2, "sendFrequency": "1h"}, running.inputs()
    twin = get_json(broker, agent.device_id)
    assert twin["reported"]["sendFrequency"] == "1h", twin


def test_unchanged_config_id_is_answered_and_shown_as_drift(broker, agent, running):
    r = twinctl(broker, "set", agent.device_id, "configId=7", "a=1", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    assert f"{agent.device_id} applied desired $version 1." in r.stdout, r.stdout

    # Same configId, another value: warned before, answered without applying after.
    r = twinctl(broker, "set", agent.device_id, "configId=7", "a=2", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    assert "configId 7 is the one" in r.stderr, r.stderr
    assert "answered desired $version 2 without applying (configId 7 unchanged)" in r.stdout, (
        r.stdout
    )
    assert "applied desired" not in r.stdout, r.stdout
    assert running.inputs() == [{"configId": 7, "a": 1}], running.inputs()

    # Not converged, whichever way one asks.
    r = twinctl(broker, "get", agent.device_id)
    assert r.returncode == EXIT_OK, r.stderr
    state = [l for l in r.stdout.splitlines() if l.startswith("State:")]
    assert state and "drifted" in state[0] and "configId was unchanged" in state[0], r.stdout
    r = twinctl(broker, "list", "--pending", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    assert [(d["deviceId"], d["state"]) for d in json.loads(r.stdout)] == [
        (agent.device_id, "drifted")
    ], r.stdout
    r = twinctl(broker, "watch", agent.device_id, "--until-converged", "--timeout", "10")
    assert r.returncode == EXIT_DEVICE_FAILED, (r.returncode, r.stderr)
    assert "did not take them" in r.stderr, r.stderr


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


class LineReader:
    """The lines of a child's stdout, read by a thread. Waiting with select() on the pipe and
    then reading a line through Python's buffered file misses lines that arrived together: they
    sit in the file's buffer while select() waits for the pipe. That made this test flaky."""

    def __init__(self, stream):
        self.lines = queue.Queue()
        threading.Thread(target=self._run, args=(stream,), daemon=True).start()

    def _run(self, stream):
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, predicate, timeout):
        """Parsed lines until one for which predicate is true (included), or timeout passes."""
        seen, end = [], time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return seen
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return seen
            if line is None:
                return seen
            seen.append(json.loads(line))
            if predicate(seen[-1]):
                return seen


def test_events_follow_an_apply(broker, agent, running):
    proc = subprocess.Popen(
        [twinctl_binary(), "--socket", agent.socket, "events", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    events = LineReader(proc.stdout)

    def configure(i, timeout):
        """set --wait mode=eco{i}; the events of that apply seen within timeout."""
        r = twinctl(broker, "set", agent.device_id, f"mode=eco{i}", "--wait", "--timeout", "20",
                    "--json")
        assert r.returncode == EXIT_OK, r.stderr
        version = json.loads(r.stdout)["version"]
        seen = events.until(
            lambda e: e["event"] == "apply-finished" and e.get("desiredVersion") == version,
            timeout,
        )
        return [e for e in seen if e.get("desiredVersion") == version]

    try:
        # The follower registers asynchronously, so the first applies may come before it:
        # configure until its stream shows anything (bounded; normally the first round does).
        for i in range(5):
            if configure(i, 3):
                break
        else:
            raise AssertionError("the events stream showed nothing in five applies")
        # From now on it follows: every event of the next apply is there, in order.
        seen = configure(5, 10)
        assert [e["event"] for e in seen] == [
            "desired-received",
            "apply-started",
            "apply-finished",
        ], seen
        assert seen[-1]["result"] == "success" and seen[-1]["configId"] == i + 2, seen
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == EXIT_OK, proc.stderr.read()


def test_delete_removes_the_twin_of_a_device_that_is_gone(broker, agent, service, running):
    r = twinctl(broker, "set", agent.device_id, "mode=eco", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    # Online: its agent would publish the twin again, so delete says no.
    r = twinctl(broker, "delete", agent.device_id)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "is online" in r.stderr and "--force" in r.stderr, r.stderr
    assert get_json(broker, agent.device_id)["desired"]["mode"] == "eco"

    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    service.wait_connection("offline")
    r = twinctl(broker, "delete", agent.device_id, "ghost-never-was")
    assert r.returncode == EXIT_NOT_FOUND, (r.returncode, r.stderr)
    assert f"Deleted the twin of {agent.device_id}" in r.stdout, r.stdout
    assert "device ghost-never-was not found" in r.stderr, r.stderr
    r = twinctl(broker, "get", agent.device_id)
    assert r.returncode == EXIT_NOT_FOUND, (r.returncode, r.stdout)
    r = twinctl(broker, "list", "--json")
    assert json.loads(r.stdout) == [], r.stdout


def test_delete_force_and_a_set_to_a_device_that_never_connected(broker, agent, running):
    r = twinctl(broker, "delete", agent.device_id, "--force")
    assert r.returncode == EXIT_OK, r.stderr
    r = twinctl(broker, "get", agent.device_id)
    assert r.returncode == EXIT_NOT_FOUND, r.stdout
    # A set to an id nothing ever came from is published, with a warning (a typo?).
    r = twinctl(broker, "set", "dev-l", "mode=eco")
    assert r.returncode == EXIT_OK, r.stderr
    assert "dev-l has never connected" in r.stderr, r.stderr
    # The agent forced out of its twin still runs and takes a new desired document.
    r = twinctl(broker, "set", agent.device_id, "mode=eco", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr


def test_reapply_wait_says_what_happened(broker, agent, service, running):
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=5m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    r = twinctl(None, "--socket", agent.socket, "reapply", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.strip() == "Re-applied configId 1 (desired $version 1): success", r.stdout
    assert len(running.calls()) == 2

    running.behave(exit=2, stderr="disk on fire")
    r = twinctl(None, "--socket", agent.socket, "reapply", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_DEVICE_FAILED, (r.returncode, r.stderr)
    assert "re-applying configId 1 (desired $version 1) failed" in r.stderr, r.stderr
    assert "disk on fire" in r.stderr, r.stderr
    r = twinctl(None, "--socket", agent.socket, "reapply", "--wait", "--json", "--timeout", "20")
    assert r.returncode == EXIT_DEVICE_FAILED, r.stderr
    assert json.loads(r.stdout)["result"] == "failed", r.stdout


def test_reapply_wait_behind_a_running_apply(broker, agent, service, running):
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=5m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    running.behave(sleep=2)
    r = twinctl(broker, "set", agent.device_id, "sendFrequency=1h")
    assert r.returncode == EXIT_OK, r.stderr
    assert twinlib.poll(lambda: agent.status()["state"] == "applying", 10)
    # Queued behind the apply of $version 2, then run for $version 2 again.
    r = twinctl(None, "--socket", agent.socket, "reapply", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_OK, r.stderr
    assert "Re-applied configId 2 (desired $version 2): success" in r.stdout, r.stdout
    assert len(running.calls()) == 3
