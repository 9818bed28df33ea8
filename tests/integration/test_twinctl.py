# SPDX-License-Identifier: MIT
"""twinctl on its own: a real mosquitto, a fake device written in Python (answers desired with
reported and $status as docs/protocol.md says) and a fake agent socket. The suites against the
real twind cover the two together."""

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

import twinlib

ROOT = twinlib.TOPIC_ROOT
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DEVICE_FAILED = 0, 1, 2, 3
EXIT_TIMEOUT, EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_ACCESS_DENIED = 4, 5, 6, 7, 8


def twinctl_binary():
    path = os.environ.get("TWINCTL")
    if not path:
        raise RuntimeError("TWINCTL is not set: run the integration tests through meson test")
    return path


def environment():
    env = dict(os.environ)
    for k in ("TWINCTL_BROKER", "TWINCTL_AZURE", "TWINCTL_PROFILE", "JOURNAL_STREAM", "NO_COLOR"):
        env.pop(k, None)
    # Not the user's own ~/.config/twinctl/twinctl.conf: tests say what they read.
    env["XDG_CONFIG_HOME"] = "/nonexistent/twinctl-tests"
    return env


def twinctl(broker, *args, timeout=30):
    """Runs twinctl against broker (None: no --broker) to completion."""
    cmd = [twinctl_binary()]
    if broker is not None:
        cmd += ["--broker", broker.url]
    return subprocess.run(
        cmd + list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        stdin=subprocess.DEVNULL,
    )


def topic(device, kind):
    return f"{ROOT}/{device}/{kind}"


class Client:
    """A paho client for the test itself: publish retained documents, read retained ones."""

    def __init__(self, broker):
        self.messages = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.c = mqtt.Client(client_id=f"test-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        self.c.on_connect = lambda c, u, f, rc: self.connected.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "test client could not connect"

    def _on_message(self, c, u, msg):
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def publish(self, t, doc, retain=True):
        payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
        info = self.c.publish(t, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def retained(self, t, timeout=10):
        """The retained document on t (parsed), or None when there is none. A marker message on a
        private topic proves that a retained message would have arrived before it."""
        marker = f"test/{uuid.uuid4().hex}"
        with self.cond:
            self.messages.clear()
        self.c.subscribe([(t, 1), (marker, 1)])
        time.sleep(0.05)  # not a correctness wait: the marker below decides
        self.c.publish(marker, b"m", qos=1)
        with self.cond:
            assert self.cond.wait_for(
                lambda: any(m[0] == marker for m in self.messages), timeout
            ), "marker did not come back"
            msgs = [m for m in self.messages if m[0] == t]
        self.c.unsubscribe([t, marker])
        if not msgs or not msgs[0][1]:
            return None
        return json.loads(msgs[0][1])

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


class FakeDevice:
    """Answers desired documents as twind would: pending, then success or failed ("fail"), or
    never ("silent"). Publishes connection online (retained) on connect."""

    def __init__(self, broker, device_id, behaviour="success", online=True, error="boom"):
        self.device_id = device_id
        self.behaviour = behaviour
        self.error = error
        self.reported_version = 0
        self.applied = {}
        self.connected = threading.Event()
        self.c = mqtt.Client(client_id=f"fake-{device_id}-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv311)
        self.c.will_set(topic(device_id, "connection"), json.dumps({"state": "offline"}), 1, True)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.online = online
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10), "fake device could not connect"

    def _on_connect(self, c, u, f, rc):
        c.subscribe(topic(self.device_id, "desired"), 1)
        state = {"state": "online", "since": "2026-11-26T09:41:58Z", "agent": "fake 0"}
        if not self.online:
            state = {"state": "offline"}
        c.publish(topic(self.device_id, "connection"), json.dumps(state), 1, True)
        self.connected.set()

    def report(self, status):
        self.reported_version += 1
        doc = dict(self.applied)
        doc["$version"] = self.reported_version
        doc["$status"] = status
        self.c.publish(topic(self.device_id, "reported"), json.dumps(doc), 1, True)

    def _on_message(self, c, u, msg):
        if not msg.payload or self.behaviour == "silent":
            return
        desired = json.loads(msg.payload)
        props = {k: v for k, v in desired.items() if not k.startswith("$")}
        base = {"desiredVersion": desired["$version"], "configId": props.get("configId"),
                "updatedAt": "2026-11-26T09:41:58Z"}
        self.report(dict(base, state="pending", pendingConfig=props))
        if self.behaviour == "fail":
            self.report(dict(base, state="failed", error=self.error))
        else:
            self.applied = props
            self.report(dict(base, state="success"))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def client(broker):
    c = Client(broker)
    yield c
    c.close()


@pytest.fixture
def devices(broker):
    made = []

    def make(device_id, **kw):
        d = FakeDevice(broker, device_id, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def wait_answered(client, device_id, version, timeout=10):
    """Waits until the retained reported $status answers desired $version (success or failed)."""

    def answered():
        rep = client.retained(topic(device_id, "reported")) or {}
        st = rep.get("$status") or {}
        return st.get("desiredVersion") == version and st.get("state") in ("success", "failed")

    assert twinlib.poll(answered, timeout, 0.1), f"{device_id} did not answer $version {version}"


# ---- get ------------------------------------------------------------------------------------


def test_get_missing_device_is_not_found(broker):
    r = twinctl(broker, "get", "nosuchdevice")
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert "nosuchdevice" in r.stderr and "not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


def test_get_json_shape(broker, client, devices):
    devices("dev-1")
    client.publish(topic("dev-1", "desired"), {"$version": 3, "configId": 7, "sendFrequency": "5m"})
    wait_answered(client, "dev-1", 3)

    r = twinctl(broker, "get", "dev-1", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"deviceId", "desired", "reported", "connection", "deviceProperties"}
    assert doc["deviceProperties"] == {}
    assert doc["deviceId"] == "dev-1"
    assert doc["desired"] == {"$version": 3, "configId": 7, "sendFrequency": "5m"}
    assert doc["reported"]["sendFrequency"] == "5m"
    assert doc["reported"]["$status"]["state"] == "success"
    assert doc["reported"]["$status"]["desiredVersion"] == 3
    assert doc["connection"]["state"] == "online"


def test_get_marks_differing_properties(broker, client):
    client.publish(topic("dev-2", "desired"), {"$version": 2, "configId": 4, "sendFrequency": "5m"})
    client.publish(topic("dev-2", "reported"), {
        "$version": 9, "configId": 4, "sendFrequency": "10m",
        "$status": {"state": "failed", "desiredVersion": 2, "configId": 4, "error": "nope",
                    "updatedAt": "2026-11-26T09:41:58Z"}})

    r = twinctl(broker, "get", "dev-2")
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    freq = [l for l in lines if "sendFrequency" in l]
    cfg = [l for l in lines if "configId" in l and "$status" not in l and "State" not in l]
    assert len(freq) == 1 and freq[0].lstrip().startswith("*"), r.stdout
    assert '"5m"' in freq[0] and '"10m"' in freq[0]
    assert cfg and not cfg[0].lstrip().startswith("*"), r.stdout
    assert "failed" in r.stdout and "nope" in r.stdout
    assert "\x1b[" not in r.stdout  # not a terminal: no colour


def test_get_connection_only_device_is_found(broker, client):
    client.publish(topic("dev-3", "connection"), {"state": "offline"})
    r = twinctl(broker, "get", "dev-3", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    doc = json.loads(r.stdout)
    assert doc["desired"] is None and doc["reported"] is None
    assert doc["connection"] == {"state": "offline"}


# ---- set ------------------------------------------------------------------------------------


def test_set_publishes_merged_document_with_bumped_versions(broker, client):
    client.publish(topic("d", "desired"),
                   {"$version": 4, "configId": 3, "a": 1, "keep": "x", "lim": {"cpu": 1}})

    r = twinctl(broker, "set", "d", "a=2", "b=hello", 'lim={"mem":2}')
    assert r.returncode == EXIT_OK, r.stderr
    doc = client.retained(topic("d", "desired"))
    assert doc == {"$version": 5, "configId": 4, "a": 2, "b": "hello", "keep": "x",
                   "lim": {"cpu": 1, "mem": 2}}
    assert "5" in r.stdout and "configId 4" in r.stdout


def test_set_on_empty_twin_starts_at_one(broker, client):
    r = twinctl(broker, "set", "fresh", "sendFrequency=5m", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("fresh", "desired")) == {
        "$version": 1, "configId": 1, "sendFrequency": "5m"}
    out = json.loads(r.stdout)
    assert out["version"] == 1 and out["configId"] == 1 and out["deviceId"] == "fresh"


def test_set_null_deletes_and_values_parse_as_json(broker, client):
    client.publish(topic("d", "desired"), {"$version": 1, "configId": 1, "old": 1, "x": "y"})

    r = twinctl(broker, "set", "d", "old=null", "n=5", "t=true", 's="5"', "f=1.5",
                "arr=[1,2]", "word=5m", "empty=")
    assert r.returncode == EXIT_OK, r.stderr
    doc = client.retained(topic("d", "desired"))
    assert "old" not in doc and doc["x"] == "y"
    assert doc["n"] == 5 and doc["t"] is True and doc["s"] == "5" and doc["f"] == 1.5
    assert doc["arr"] == [1, 2] and doc["word"] == "5m" and doc["empty"] == ""


def test_set_explicit_config_id_is_kept(broker, client):
    client.publish(topic("d", "desired"), {"$version": 7, "configId": 3})
    r = twinctl(broker, "set", "d", "configId=10", "a=1")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired")) == {"$version": 8, "configId": 10, "a": 1}


def test_set_refuses_non_integer_config_id(broker, client):
    before = {"$version": 2, "configId": "v3", "a": 1}
    client.publish(topic("d", "desired"), before)
    r = twinctl(broker, "set", "d", "a=2")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert "configId" in r.stderr
    assert client.retained(topic("d", "desired")) == before
    # Naming the new configId makes it work.
    r = twinctl(broker, "set", "d", "a=2", 'configId="v4"')
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired"))["configId"] == "v4"


def test_if_version_conflict_publishes_nothing(broker, client):
    before = {"$version": 4, "configId": 3, "a": 1}
    client.publish(topic("d", "desired"), before)

    r = twinctl(broker, "set", "d", "a=2", "--if-version", "3")
    assert r.returncode == EXIT_CONFLICT, r.stderr
    assert "4" in r.stderr
    assert client.retained(topic("d", "desired")) == before

    r = twinctl(broker, "set", "--if-version=4", "d", "a=2")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired"))["$version"] == 5


def test_if_version_zero_means_no_desired_yet(broker, client):
    r = twinctl(broker, "set", "new", "a=1", "--if-version", "1")
    assert r.returncode == EXIT_CONFLICT
    assert client.retained(topic("new", "desired")) is None
    r = twinctl(broker, "set", "new", "a=1", "--if-version", "0")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("new", "desired"))["$version"] == 1


def test_set_wait_success(broker, client, devices):
    devices("dev-1")
    r = twinctl(broker, "set", "dev-1", "sendFrequency=5m", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_OK, r.stderr
    rep = client.retained(topic("dev-1", "reported"))
    assert rep["sendFrequency"] == "5m" and rep["$status"]["state"] == "success"
    assert "applied" in r.stdout


def test_set_wait_json_carries_status(broker, devices):
    devices("dev-1")
    r = twinctl(broker, "--json", "set", "dev-1", "a=1", "-w", "-t", "20")
    assert r.returncode == EXIT_OK, r.stderr
    out = json.loads(r.stdout)
    assert out["status"]["state"] == "success" and out["status"]["desiredVersion"] == 1


def test_set_wait_failed(broker, devices):
    devices("dev-1", behaviour="fail", error="apply command exited with status 3: disk on fire")
    r = twinctl(broker, "set", "dev-1", "a=1", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_DEVICE_FAILED, r.stderr
    assert "disk on fire" in r.stderr


def test_set_wait_times_out_without_device(broker, client):
    r = twinctl(broker, "set", "ghost", "a=1", "--wait", "--timeout", "2")
    assert r.returncode == EXIT_TIMEOUT, r.stderr
    assert "ghost" in r.stderr
    # It was published all the same.
    assert client.retained(topic("ghost", "desired"))["a"] == 1


def test_set_rejects_bad_keys_and_documents(broker, client):
    assert twinctl(broker, "set", "d", "$version=3").returncode == EXIT_USAGE
    assert twinctl(broker, "set", "d", "=3").returncode == EXIT_USAGE
    assert twinctl(broker, "set", "d", "novalue").returncode == EXIT_USAGE
    assert twinctl(broker, "set", "d", 'x={"$bad":1}').returncode == EXIT_USAGE
    deep = "1"
    for _ in range(12):
        deep = "[" + deep + "]"
    assert twinctl(broker, "set", "d", f"x={deep}").returncode == EXIT_USAGE
    big = "y" * 40000
    r = twinctl(broker, "set", "d", f"x={big}")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert "32768" in r.stderr, r.stderr
    assert client.retained(topic("d", "desired")) is None


# ---- watch ----------------------------------------------------------------------------------


def run_watch(broker, *args):
    return subprocess.Popen(
        [twinctl_binary(), "--broker", broker.url, "watch", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
        stdin=subprocess.DEVNULL,
    )


def test_watch_until_converged(broker, client, devices):
    devices("dev-1", behaviour="silent")
    client.publish(topic("dev-1", "desired"), {"$version": 1, "configId": 1, "a": 1})
    w = run_watch(broker, "dev-1", "--until-converged", "--timeout", "30")
    try:
        # Not converged yet: the device stays silent. Let another device answer for it.
        time.sleep(0.5)
        assert w.poll() is None, w.stderr.read()
        answer = FakeDevice(broker, "dev-1")
        try:
            out, err = w.communicate(timeout=25)
        finally:
            answer.close()
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    assert w.returncode == EXIT_OK, err
    kinds = [line.split()[1] for line in out.splitlines()]
    assert "desired" in kinds and "status" in kinds and "connection" in kinds, out
    statuses = [l for l in out.splitlines() if l.split()[1] == "status"]
    assert "success" in statuses[-1] and "$version 1" in statuses[-1], out


def test_watch_until_converged_exits_at_once_when_converged(broker, client, devices):
    devices("dev-1")
    client.publish(topic("dev-1", "desired"), {"$version": 2, "configId": 1})
    wait_answered(client, "dev-1", 2)
    r = subprocess.run([twinctl_binary(), "--broker", broker.url, "watch", "dev-1",
                        "--until-converged", "--json", "--timeout", "20"],
                       capture_output=True, text=True, timeout=30, env=environment())
    assert r.returncode == EXIT_OK, r.stderr
    events = [json.loads(l) for l in r.stdout.splitlines()]
    assert {e["kind"] for e in events} >= {"desired", "reported", "status", "connection"}
    assert all(e["deviceId"] == "dev-1" and "time" in e for e in events)


def test_watch_until_converged_reports_failure(broker, client, devices):
    devices("dev-1", behaviour="fail", error="bad config")
    client.publish(topic("dev-1", "desired"), {"$version": 1, "configId": 1})
    r = subprocess.run([twinctl_binary(), "--broker", broker.url, "watch", "dev-1",
                        "--until-converged", "--timeout", "20"],
                       capture_output=True, text=True, timeout=30, env=environment())
    assert r.returncode == EXIT_DEVICE_FAILED, r.stderr
    assert "bad config" in r.stderr


class Lines:
    """A process's stdout and stderr, line by line as they come, for bounded waits."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = {"out": queue.Queue(), "err": queue.Queue()}
        self.seen = {"out": [], "err": []}
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name, stream):
        for line in stream:
            self.lines[name].put(line.rstrip("\n"))
        self.lines[name].put(None)

    def wait(self, name, predicate, what, timeout=15):
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen[name]:
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            try:
                line = self.lines[name].get(timeout=max(left, 0.01))
            except queue.Empty:
                line = None
                left = 0
            if line is None and left <= 0:
                raise AssertionError(f"timed out waiting for {what}; std{name} so far: "
                                     f"{self.seen[name]}")
            if line is not None:
                self.seen[name].append(line)
                if predicate(line):
                    return line
            elif self.proc.poll() is not None and self.lines[name].empty():
                raise AssertionError(f"twinctl exited before {what}: {self.seen}")


def stop_watch(w):
    w.send_signal(signal.SIGINT)
    try:
        w.wait(timeout=10)
    finally:
        if w.poll() is None:
            w.kill()
            w.wait()
    return w.returncode


def test_watch_prints_the_members_that_changed_and_stops_on_ctrl_c(broker, client):
    w = run_watch(broker, "dev-9")
    lines = Lines(w)
    lines.wait("err", lambda l: l.startswith("Watching dev-9 on "), "the watch to start")
    client.publish(topic("dev-9", "desired"),
                   {"$version": 1, "configId": 1, "k": "v1", "t": {"i": 5}, "a.b": 1})
    first = lines.wait("out", lambda l: " desired " in l, "the first desired")
    assert first.split(" desired ")[1].strip() == "$version 1: a\\.b=1 configId=1 k=v1 t.i=5", \
        first
    client.publish(topic("dev-9", "desired"), {"$version": 2, "configId": 2, "t": {"i": 15},
                                               "a.b": 1})
    second = lines.wait("out", lambda l: "$version 2" in l, "the second desired")
    # Only what changed: k went, t.i and configId changed; a.b did not.
    assert second.split(" desired ")[1].strip() == "$version 2: configId=2 -k t.i=15", second
    client.publish(topic("dev-9", "connection"), {"state": "offline"})
    lines.wait("out", lambda l: " connection " in l and "offline" in l, "offline")
    assert stop_watch(w) == EXIT_OK


def test_watch_follows_the_fleet(broker, client, devices):
    devices("a-1")
    devices("a-2")
    client.publish(topic("a-1", "desired"), {"$version": 1, "configId": 1, "mode": "x"})
    wait_answered(client, "a-1", 1)
    w = subprocess.Popen([twinctl_binary(), "--broker", broker.url, "watch", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=environment(), stdin=subprocess.DEVNULL)
    lines = Lines(w)
    w2 = run_watch(broker)
    text = Lines(w2)
    # Neither prints the current state of a fleet; both say when they are on.
    for ls in (lines, text):
        ls.wait("err", lambda l: l.startswith("Watching 2 devices on "), "the fleet watch")
    client.publish(topic("a-2", "desired"), {"$version": 1, "configId": 1, "mode": "y"})
    line = lines.wait("out", lambda l: json.loads(l)["kind"] == "status" and
                      json.loads(l)["value"]["state"] == "success", "a success event")
    event = json.loads(line)
    assert event["deviceId"] == "a-2" and event["value"]["desiredVersion"] == 1, event
    desired = json.loads(lines.wait("out", lambda l: json.loads(l)["kind"] == "desired",
                                    "a desired event"))
    assert desired["changes"] == {"configId": 1, "mode": "y"}, desired
    # The text lines name the device; nothing of a-1, which did not change, was printed.
    text.wait("out", lambda l: " a-2 status " in l and "success" in l, "a-2's status line")
    assert not any(" a-1 " in l for l in text.seen["out"]), text.seen["out"]
    assert stop_watch(w) == EXIT_OK and stop_watch(w2) == EXIT_OK


def test_watch_until_the_fleet_converged(broker, client, devices):
    devices("b-1")
    devices("b-2")
    client.publish(topic("b-1", "desired"), {"$version": 1, "configId": 1})
    client.publish(topic("b-2", "desired"), {"$version": 1, "configId": 1})
    r = subprocess.run([twinctl_binary(), "--broker", broker.url, "watch", "--until-converged",
                        "--timeout", "20"],
                       capture_output=True, text=True, timeout=30, env=environment())
    assert r.returncode == EXIT_OK, r.stderr


# ---- list -----------------------------------------------------------------------------------


@pytest.fixture
def fleet(client):
    def status(state, version):
        s = {"state": state, "desiredVersion": version, "updatedAt": "2026-11-26T09:41:58Z"}
        if state == "failed":
            s["error"] = "boom"
        return s

    # ok: converged, online. pend: desired v2 answered only up to v1, online.
    # bad: failed for its desired, offline. idle: converged, offline.
    client.publish(topic("ok", "desired"), {"$version": 1, "configId": 1})
    client.publish(topic("ok", "reported"), {"$version": 1, "configId": 1,
                                             "$status": status("success", 1)})
    client.publish(topic("ok", "connection"), {"state": "online"})
    client.publish(topic("pend", "desired"), {"$version": 2, "configId": 2})
    client.publish(topic("pend", "reported"), {"$version": 1, "configId": 1,
                                               "$status": status("success", 1)})
    client.publish(topic("pend", "connection"), {"state": "online"})
    client.publish(topic("bad", "desired"), {"$version": 5, "configId": 5})
    client.publish(topic("bad", "reported"), {"$version": 1, "configId": 4,
                                              "$status": status("failed", 5)})
    client.publish(topic("bad", "connection"), {"state": "offline", "since": ago(3 * 3600 + 5)})
    client.publish(topic("idle", "desired"), {"$version": 1, "configId": 9})
    client.publish(topic("idle", "reported"), {"$version": 1, "configId": 9,
                                               "$status": status("success", 1)})
    # A will: the lost connection began 10 minutes ago.
    client.publish(topic("idle", "connection"), {"state": "offline",
                                                 "connectedSince": ago(10 * 60 + 5)})


def ago(seconds):
    t = time.gmtime(time.time() - seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", t)


def list_ids(broker, *filters):
    r = twinctl(broker, "list", "--json", *filters)
    assert r.returncode == EXIT_OK, r.stderr
    return sorted(d["deviceId"] for d in json.loads(r.stdout))


def test_list_shows_every_device(broker, fleet):
    r = twinctl(broker, "list")
    assert r.returncode == EXIT_OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["DEVICE", "DESIRED", "REPORTED", "STATE", "CONNECTION", "LAST",
                                "SEEN", "VERSION", "ERROR"]
    rows = {l.split()[0]: l.split() for l in lines[1:] if l and not l[0].isdigit()}
    assert set(rows) == {"ok", "pend", "bad", "idle"}, r.stdout
    assert rows["pend"] == ["pend", "2", "1", "pending", "online", "now", "1", "-"]
    # The failed one says why, and when it went away; a will only bounds it.
    assert rows["bad"] == ["bad", "5", "4", "failed", "offline", "3h", "ago", "1", "boom"]
    assert rows["idle"] == ["idle", "9", "9", "success", "offline", "<10m", "ago", "1", "-"]
    assert rows["ok"][3] == "success"
    assert lines[-1] == ("4 devices: 2 converged, 1 pending, 1 failed, 0 drifted; "
                         "2 online, 2 offline"), r.stdout


def test_list_json_fields(broker, fleet):
    r = twinctl(broker, "list", "--json")
    rows = {d["deviceId"]: d for d in json.loads(r.stdout)}
    pend = rows["pend"]
    assert pend.pop("lastSeen") >= ago(60), pend  # online: seen now
    assert pend == {"deviceId": "pend", "desiredVersion": 2, "desiredConfigId": 2,
                    "reportedConfigId": 1, "state": "pending", "connection": "online",
                    "lastSeenExact": True, "reportedVersion": 1, "error": None}
    assert rows["bad"]["error"] == "boom" and rows["bad"]["lastSeenExact"] is True
    assert rows["idle"]["lastSeenExact"] is False and rows["idle"]["error"] is None


def test_list_patterns_and_the_other_filters(broker, fleet):
    r = twinctl(broker, "list", "p*", "--json")
    assert [d["deviceId"] for d in json.loads(r.stdout)] == ["pend"]
    assert list_ids(broker, "b*", "i?le") == ["bad", "idle"]
    assert list_ids(broker, "--success") == ["idle", "ok"]
    assert list_ids(broker, "--online") == ["ok", "pend"]
    assert list_ids(broker, "--success", "--failed", "--online") == ["ok"]
    r = twinctl(broker, "list", "nothing-*")
    assert r.returncode == EXIT_OK and "No devices match" in r.stdout, r.stdout
    r = twinctl(broker, "list", "--online", "--offline")
    assert r.returncode == EXIT_USAGE and "exclude each other" in r.stderr, r.stderr


def test_list_filters(broker, fleet):
    assert list_ids(broker) == ["bad", "idle", "ok", "pend"]
    assert list_ids(broker, "--pending") == ["pend"]
    assert list_ids(broker, "--failed") == ["bad"]
    assert list_ids(broker, "--offline") == ["bad", "idle"]
    # State filters widen each other; --offline narrows.
    assert list_ids(broker, "--pending", "--failed") == ["bad", "pend"]
    assert list_ids(broker, "--failed", "--offline") == ["bad"]
    assert list_ids(broker, "--pending", "--offline") == []


def test_list_empty(broker):
    r = twinctl(broker, "list")
    assert r.returncode == EXIT_OK, r.stderr
    assert "No devices" in r.stdout
    assert json.loads(twinctl(broker, "list", "--json").stdout) == []


# ---- broker settings and errors -------------------------------------------------------------


def test_broker_unreachable(broker):
    port = twinlib.free_port()
    for verb in (["get", "d"], ["set", "d", "a=1"], ["list"], ["watch", "d"]):
        r = subprocess.run([twinctl_binary(), "--broker", f"mqtt://127.0.0.1:{port}", *verb],
                           capture_output=True, text=True, timeout=30, env=environment())
        assert r.returncode == EXIT_UNREACHABLE, (verb, r.stderr)
        assert "cannot reach broker" in r.stderr and str(port) in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_broker_from_environment(broker, client):
    client.publish(topic("envdev", "connection"), {"state": "online"})
    env = environment()
    env["TWINCTL_BROKER"] = broker.url
    r = subprocess.run([twinctl_binary(), "get", "envdev", "--json"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == EXIT_OK, r.stderr
    # The command line wins over the environment.
    env["TWINCTL_BROKER"] = f"mqtt://127.0.0.1:{twinlib.free_port()}"
    r = subprocess.run([twinctl_binary(), "--broker", broker.url, "get", "envdev"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == EXIT_OK, r.stderr


def test_topic_root(broker, client):
    client.publish("fleet/a/b/d1/connection", json.dumps({"state": "online"}))
    r = twinctl(broker, "--topic-root", "fleet/a/b", "get", "d1")
    assert r.returncode == EXIT_OK, r.stderr
    assert twinctl(broker, "--topic-root", "bad/#", "get", "d1").returncode == EXIT_USAGE


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["--no-such-option", "list"],
    ["get"],
    ["get", "a", "b"],
    ["get", "bad/id"],
    ["get", "x" * 129],
    ["set", "dev"],
    ["get", "dev", "--wait"],
    ["list", "--if-version", "3"],
    ["set", "dev", "a=1", "--if-version", "x"],
    ["set", "dev", "a=1", "--timeout", "0"],
    ["set", "dev", "a=1", "--timeout", "soon"],
    ["watch", "dev", "--pending"],
    ["status", "extra"],
    ["--broker", "http://127.0.0.1:1", "list"],
])
def test_usage_errors(broker, args):
    r = twinctl(None, "--broker", broker.url, *args) if "--broker" not in args else twinctl(None, *args)
    assert r.returncode == EXIT_USAGE, (args, r.stdout, r.stderr)
    assert r.stderr.strip(), "a usage error says what is wrong"
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help_lists_exit_codes():
    r = twinctl(None, "--help")
    assert r.returncode == EXIT_OK
    for verb in ("get", "set", "watch", "list", "status", "events", "reapply"):
        assert verb in r.stdout
    assert "version conflict" in r.stdout and "8 access denied" in r.stdout


# ---- device side: a fake agent on a Unix socket --------------------------------------------


class FakeAgent:
    """Speaks the control protocol for one scripted set of answers; records requests."""

    def __init__(self, path, replies):
        self.path = path
        self.replies = replies  # method -> (result or None, error or None)
        self.requests = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        f = conn.makefile("rwb")
        try:
            for line in f:
                req = json.loads(line)
                self.requests.append(req)
                result, error = self.replies[req["method"]]
                reply = {"id": req.get("id")}
                if error:
                    reply["error"] = error
                else:
                    reply["result"] = result
                f.write((json.dumps(reply) + "\n").encode())
                f.flush()
                if req["method"] == "events":
                    for ev in self.replies.get("_events", []):
                        f.write((json.dumps(ev) + "\n").encode())
                        f.flush()
        except (OSError, ValueError):
            pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


STATUS = {"deviceId": "dev-1", "broker": "127.0.0.1:1883", "connected": True, "configId": 3,
          "applied": {"configId": 3, "sendFrequency": "5m"}, "state": "success",
          "counters": {"reconnects": 0, "applies": 2, "failures": 1}, "lastError": None}


@pytest.fixture
def agent_socket(tmp_path):
    agents = []

    def make(replies):
        a = FakeAgent(str(tmp_path / f"control{len(agents)}.sock"), replies)
        agents.append(a)
        return a.path

    yield make
    for a in agents:
        a.close()


def test_status_human_and_json(agent_socket):
    path = agent_socket({"status": (STATUS, None)})
    r = twinctl(None, "--socket", path, "status")
    assert r.returncode == EXIT_OK, r.stderr
    fields = {l.split(":", 1)[0].strip(): l.split(":", 1)[1].strip() for l in r.stdout.splitlines()}
    assert fields["Device"] == "dev-1" and "connected since" in fields["Broker"]
    assert fields["Config id"] == "3" and fields["State"] == "success"
    assert "1 failures" in fields["Counters"]
    assert json.loads(fields["Applied"])["sendFrequency"] == "5m"
    # Aligned: every colon in the same column.
    assert len({l.index(":") for l in r.stdout.splitlines()}) == 1

    r = twinctl(None, "--socket", path, "status", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    assert json.loads(r.stdout) == STATUS


def test_reapply_access_denied(agent_socket):
    path = agent_socket({"reapply": (None, {"name": "AccessDenied",
                                            "message": "reapply needs root or the twind user"})})
    r = twinctl(None, "--socket", path, "reapply")
    assert r.returncode == EXIT_ACCESS_DENIED, r.stderr
    assert "access denied" in r.stderr.lower()
    assert len(r.stderr.strip().splitlines()) == 1


def test_reapply_started_and_no_desired(agent_socket, tmp_path):
    path = agent_socket({"reapply": ({"started": True}, None)})
    r = twinctl(None, "--socket", path, "reapply")
    assert r.returncode == EXIT_OK, r.stderr
    assert "started" in r.stdout

    path = agent_socket({"reapply": (None, {"name": "NoDesired",
                                            "message": "no desired configuration yet"})})
    r = twinctl(None, "--socket", path, "reapply")
    assert r.returncode == EXIT_NOT_FOUND, r.stderr
    assert "no desired configuration yet" in r.stderr


def test_events_follow_until_ctrl_c(agent_socket):
    events = [{"event": "connected", "time": "2026-11-26T09:41:58Z", "broker": "b:1"},
              {"event": "apply-finished", "time": "2026-11-26T09:41:59Z", "desiredVersion": 4,
               "configId": 3, "result": "success", "error": None},
              {"event": "apply-finished", "time": "2026-11-26T09:42:00Z", "desiredVersion": 5,
               "configId": "blue sky", "result": "failed",
               "error": "apply command exited with status 3: no modem"}]
    path = agent_socket({"events": ({"following": True}, None), "_events": events})
    p = subprocess.Popen([twinctl_binary(), "--socket", path, "events"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=environment())
    try:
        lines = [p.stdout.readline() for _ in events]
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_OK, err
    assert "connected" in lines[0] and "broker=b:1" in lines[0]
    assert "apply-finished" in lines[1] and "result=success" in lines[1]
    # Values with spaces are quoted, so that every key=value is one word.
    assert 'configId="blue sky"' in lines[2], lines[2]
    assert 'error="apply command exited with status 3: no modem"' in lines[2], lines[2]

    p = subprocess.Popen([twinctl_binary(), "--socket", path, "events", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=environment())
    try:
        got = [json.loads(p.stdout.readline()) for _ in events]
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert got == events and p.returncode == EXIT_OK


def test_agent_unreachable(tmp_path):
    for verb in ("status", "events", "reapply"):
        r = twinctl(None, "--socket", str(tmp_path / "nothing.sock"), verb)
        assert r.returncode == EXIT_UNREACHABLE, r.stderr
        assert "nothing.sock" in r.stderr


def test_broker_refusing_credentials_is_access_denied(tmp_path):
    port = twinlib.free_port()
    conf = tmp_path / "closed.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    pw = tmp_path / "password"
    pw.write_text("secret\n")
    proc = subprocess.Popen([twinlib.MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert twinlib.poll(lambda: twinlib.port_accepts(port), 10), "mosquitto did not start"
        r = subprocess.run([twinctl_binary(), "--broker", f"mqtt://127.0.0.1:{port}",
                            "--username", "someone", "--password-file", str(pw), "list"],
                           capture_output=True, text=True, timeout=30, env=environment())
        assert r.returncode == EXIT_ACCESS_DENIED, r.stderr
        assert "refused" in r.stderr and "secret" not in r.stderr
    finally:
        proc.terminate()
        proc.wait(10)


# ---- set --wait against other writers and stale answers ------------------------------------


class Rival:
    """Another writer: once it sees the desired document that matches(doc) on device's topic,
    it publishes its own document (retained) there, or on the device's `to` topic, once."""

    def __init__(self, broker, device_id, matches, doc, to="desired"):
        self.fired = threading.Event()
        self.matches, self.doc, self.t = matches, doc, topic(device_id, "desired")
        self.to = topic(device_id, to)
        self.c = mqtt.Client(client_id=f"rival-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
        connected = threading.Event()
        self.c.on_connect = lambda c, u, f, rc: (c.subscribe(self.t, 1), connected.set())
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", broker.port, keepalive=30)
        self.c.loop_start()
        assert connected.wait(10), "rival could not connect"

    def _on_message(self, c, u, msg):
        if self.fired.is_set() or not msg.payload:
            return
        if self.matches(json.loads(msg.payload)):
            self.fired.set()
            payload = self.doc if isinstance(self.doc, bytes) else json.dumps(self.doc)
            c.publish(self.to, payload, 1, True)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_set_wait_replaced_by_document_without_version(broker, client):
    client.publish(topic("d", "desired"), {"$version": 4, "configId": 4, "a": 1})
    rival = Rival(broker, "d", lambda d: d.get("a") == 2, {"configId": 9, "a": 3})
    try:
        r = twinctl(broker, "set", "d", "a=2", "--wait", "--timeout", "20")
    finally:
        rival.close()
    assert rival.fired.is_set()
    assert r.returncode == EXIT_CONFLICT, r.stderr
    assert "replaced by a document without $version before" in r.stderr, r.stderr


def test_long_option_given_an_argument_is_named():
    r = twinctl(None, "--json=x", "list")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "--json" in r.stderr and "'-j'" not in r.stderr, r.stderr


def test_get_document_without_version_says_so(broker, client):
    """Documents without $version are there (the table shows their values): not "(none)"."""
    client.publish(topic("nov", "desired"), {"configId": 1, "a": 1})
    client.publish(topic("nov", "reported"), {"configId": 1, "a": 1})
    r = twinctl(broker, "get", "nov")
    assert r.returncode == EXIT_OK, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith(("Desired:", "Reported:"))]
    assert len(lines) == 2, r.stdout
    assert all(l.split(":", 1)[1].strip() == "(no $version)" for l in lines), r.stdout


def test_status_without_broker_field(agent_socket):
    status = {k: v for k, v in STATUS.items() if k != "broker"}
    path = agent_socket({"status": (status, None)})
    r = twinctl(None, "--socket", path, "status")
    assert r.returncode == EXIT_OK, r.stderr
    broker_line = [l for l in r.stdout.splitlines() if l.strip().startswith("Broker:")]
    assert broker_line and "(null)" not in broker_line[0], r.stdout
    assert "connected since" in broker_line[0]


def test_set_invalid_utf8_is_a_usage_error(broker, client):
    # "\udcff" is the byte 0xff on the command line (surrogateescape).
    for pair, what in (("k\udcff=1", "property name"), ("k=\udcffx", "value")):
        r = twinctl(broker, "set", "d", "a=1", pair)
        assert r.returncode == EXIT_USAGE, (pair, r.stderr)
        assert "UTF-8" in r.stderr and what in r.stderr and "memory" not in r.stderr, r.stderr
    assert client.retained(topic("d", "desired")) is None


# ---- hostile strings from the broker and the agent never reach the terminal raw -------------

EVIL = "\x1b]0;owned\x07\x1b[2J\u009b31m\r"


def assert_no_controls(text):
    bad = [c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)]
    assert not bad, repr(text)


def test_hostile_broker_strings_are_sanitised(broker, client):
    client.publish(topic("evil", "connection"),
                   {"state": "online" + EVIL, "since": EVIL, "agent": EVIL})
    client.publish(topic("evil", "desired"),
                   {"$version": 2, "configId": "c" + EVIL, "k" + EVIL: "v" + EVIL})
    client.publish(topic("evil", "reported"), {
        "$version": 3, "configId": "c" + EVIL, "k" + EVIL: 1,
        "$status": {"state": "failed" + EVIL, "desiredVersion": 2, "configId": "c" + EVIL,
                    "error": "boom" + EVIL, "updatedAt": EVIL}})
    for args in (["get", "evil"], ["list"], ["watch", "evil", "--timeout", "1"]):
        r = twinctl(broker, *args)
        assert r.returncode == EXIT_OK, (args, r.stderr)
        assert "owned" in r.stdout, (args, r.stdout)  # the strings are shown, made harmless
        assert_no_controls(r.stdout)
        assert_no_controls(r.stderr)
    # The failure line on stderr.
    client.publish(topic("evil", "reported"), {
        "$version": 4, "$status": {"state": "failed", "desiredVersion": 2, "error": "boom" + EVIL}})
    r = twinctl(broker, "watch", "evil", "--until-converged", "--timeout", "10")
    assert r.returncode == EXIT_DEVICE_FAILED, r.stderr
    assert "boom" in r.stderr
    assert_no_controls(r.stdout)
    assert_no_controls(r.stderr)


def test_set_wait_failure_line_is_sanitised(broker, devices):
    devices("dev-1", behaviour="fail", error="disk on fire" + EVIL)
    r = twinctl(broker, "set", "dev-1", "a=1", "--wait", "--timeout", "20")
    assert r.returncode == EXIT_DEVICE_FAILED, r.stderr
    assert "disk on fire" in r.stderr
    assert_no_controls(r.stderr)


def test_hostile_agent_strings_are_sanitised(agent_socket):
    status = dict(STATUS, broker="b" + EVIL, state="success" + EVIL, lastError=EVIL,
                  connectedSince=EVIL, applied={"k" + EVIL: "v" + EVIL},
                  status={"state": "failed", "desiredVersion": 1, "error": EVIL,
                          "updatedAt": EVIL})
    events = [{"event": "connected" + EVIL, "time": EVIL, "broker" + EVIL: EVIL}]
    path = agent_socket({"status": (status, None),
                         "reapply": (None, {"name": "X" + EVIL, "message": "no" + EVIL}),
                         "events": ({"following": True}, None), "_events": events})
    r = twinctl(None, "--socket", path, "status")
    assert r.returncode == EXIT_OK, r.stderr
    assert "Broker" in r.stdout
    assert_no_controls(r.stdout)
    r = twinctl(None, "--socket", path, "reapply")
    assert r.returncode == EXIT_FAILURE and "refused" in r.stderr, r.stderr
    assert_no_controls(r.stderr)
    r = twinctl(None, "--socket", path, "events", "--timeout", "1")
    assert r.returncode == EXIT_OK, r.stderr
    assert "connected" in r.stdout
    assert_no_controls(r.stdout)


def test_set_drops_stray_protocol_keys_of_current_desired(broker, client):
    client.publish(topic("d", "desired"), {"$version": 3, "configId": 1, "$stray": 1, "a": 1,
                                           "n": {"$x": 2, "y": 1}})
    r = twinctl(broker, "set", "d", "a=2")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired")) == {"$version": 4, "configId": 2, "a": 2,
                                                      "n": {"y": 1}}
    # (d is a fake that never connected: that warning comes too.)
    warnings = [w for w in r.stderr.strip().splitlines() if "belongs to the protocol" in w]
    assert len(warnings) == 2 and "$stray" in warnings[0] + warnings[1], r.stderr
    assert "$x" in warnings[0] + warnings[1], r.stderr


def test_set_wait_replaced_by_same_version_is_a_conflict(broker, client):
    # Another writer that read the same $version 4 publishes its own $version 5 (with the same
    # next configId) right after ours; then the device answers $version 5, configId 5: the
    # rival's document, not ours, which was overwritten.
    client.publish(topic("d", "desired"), {"$version": 4, "configId": 4, "a": 1})
    rival_doc = {"$version": 5, "configId": 5, "a": 3}
    rival = Rival(broker, "d", lambda d: d.get("a") == 2, rival_doc)
    p = subprocess.Popen([twinctl_binary(), "--broker", broker.url, "set", "d", "a=2", "--wait",
                          "--timeout", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=environment(), stdin=subprocess.DEVNULL)
    try:
        assert rival.fired.wait(15), "set did not publish"
        assert twinlib.poll(lambda: client.retained(topic("d", "desired")) == rival_doc, 10)
        client.publish(topic("d", "reported"), {
            "$version": 1, "configId": 5, "a": 3,
            "$status": {"state": "success", "desiredVersion": 5, "configId": 5,
                        "updatedAt": "2026-11-26T09:41:58Z"}})
        out, err = p.communicate(timeout=25)
    finally:
        rival.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == EXIT_CONFLICT, (out, err)
    assert "replaced by $version 5" in err, err
    assert "applied" not in out


def test_set_wait_ignores_status_already_on_the_broker(broker, client):
    # desired was reset to $version 4 while reported still answers $version 5: that old answer
    # says nothing about the $version 5 set is about to publish.
    client.publish(topic("d", "desired"), {"$version": 4, "configId": 4, "a": 1})
    client.publish(topic("d", "reported"), {
        "$version": 9, "configId": 5, "a": 1,
        "$status": {"state": "success", "desiredVersion": 5, "configId": 5,
                    "updatedAt": "2026-11-26T09:41:58Z"}})
    r = twinctl(broker, "set", "d", "a=2", "--wait", "--timeout", "2")
    assert r.returncode == EXIT_TIMEOUT, (r.stdout, r.stderr)
    assert "applied" not in r.stdout


def test_set_wait_ignores_status_for_another_config_id(broker, client):
    # After our publish the device (re)publishes an answer for $version 5 of a document with
    # another configId: not an answer to ours.
    client.publish(topic("d", "desired"), {"$version": 4, "configId": 4, "a": 1})
    stale = {"$version": 9, "configId": 99, "a": 1,
             "$status": {"state": "success", "desiredVersion": 5, "configId": 99,
                         "updatedAt": "2026-11-26T09:41:58Z"}}
    rival = Rival(broker, "d", lambda d: d.get("a") == 2, stale, to="reported")
    try:
        r = twinctl(broker, "set", "d", "a=2", "--wait", "--timeout", "3")
    finally:
        rival.close()
    assert rival.fired.is_set()
    assert r.returncode == EXIT_TIMEOUT, (r.stdout, r.stderr)
    assert "applied" not in r.stdout


def test_bad_broker_url_names_where_it_came_from(tmp_path):
    conf = tmp_path / "twinctl.conf"
    conf.write_text("[broker]\nurl = http://nowhere\n")
    r = twinctl(None, "--config", str(conf), "list")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert f"{conf}:2: [broker] url: " in r.stderr and "http://nowhere" in r.stderr, r.stderr
    env = dict(environment(), TWINCTL_BROKER="mqtt://")
    r = subprocess.run([twinctl_binary(), "--config", str(conf), "list"], capture_output=True,
                       text=True, timeout=30, env=env)
    assert r.returncode == EXIT_USAGE and "$TWINCTL_BROKER: " in r.stderr, r.stderr
    r = twinctl(None, "--broker", "mqtt://a:99999", "list")
    assert r.returncode == EXIT_USAGE and "--broker: " in r.stderr, r.stderr
    r = twinctl(None, "--config", str(tmp_path / "missing.conf"), "list")
    assert r.returncode != EXIT_OK and "missing.conf" in r.stderr, r.stderr


def test_profiles_and_the_users_own_file(tmp_path, broker):
    xdg = tmp_path / "xdg"
    (xdg / "twinctl").mkdir(parents=True)
    conf = xdg / "twinctl" / "twinctl.conf"
    dead = f"mqtt://127.0.0.1:{twinlib.free_port()}"
    conf.write_text(f"[broker]\nurl = {dead}\n\n[profile lab]\nurl = {broker.url}\n"
                    f"topic_root = twins\n\n[profile aws]\ndialect = aws\n")
    env = dict(environment(), XDG_CONFIG_HOME=str(xdg))

    def run(*args, **extra):
        return subprocess.run([twinctl_binary(), *args], capture_output=True, text=True,
                              timeout=30, env=dict(env, **extra), stdin=subprocess.DEVNULL)

    # [broker] of the user's file: its dead URL, named in the error.
    r = run("list")
    assert r.returncode == EXIT_UNREACHABLE, (r.returncode, r.stderr)
    # A profile over it, by option or by variable.
    assert run("--profile", "lab", "list").returncode == EXIT_OK
    assert run("list", TWINCTL_PROFILE="lab").returncode == EXIT_OK
    # The command line over everything.
    assert run("--profile", "aws", "--broker", broker.url, "--dialect", "standard",
               "list").returncode == EXIT_OK
    r = run("--profile", "nope", "list")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert (f"profile 'nope' is not defined in " in r.stderr and str(conf) in r.stderr and
            "profiles there: lab, aws" in r.stderr), r.stderr
    # Errors name the file and the line.
    conf.write_text("[broker]\nurl = mqtt://a\n[profile lab]\nuser = x\n")
    r = run("--profile", "lab", "list")
    assert r.returncode == EXIT_USAGE and f"{conf}:4: unknown key 'user' in [profile lab]" in \
        r.stderr, r.stderr
    conf.write_text("[profile lab]\nurl = mqtt://a:70000\n")
    r = run("--profile", "lab", "list")
    assert r.returncode == EXIT_USAGE and f"{conf}:2: [profile lab] url: " in r.stderr, r.stderr
    conf.write_text("[profile lab]\nshadow = s\n")
    r = run("--profile", "lab", "list")
    assert r.returncode == EXIT_USAGE and f"{conf}:2: [profile lab] shadow: a shadow is for" in \
        r.stderr, r.stderr
    # --config FILE is read instead of both files.
    other = tmp_path / "other.conf"
    other.write_text(f"[profile lab]\nurl = {broker.url}\n")
    assert run("--config", str(other), "--profile", "lab", "list").returncode == EXIT_OK


def test_set_nested_paths_change_one_member(broker, client):
    client.publish(topic("d", "desired"),
                   {"$version": 1, "configId": 1, "telemetry": {"interval": 5, "unit": "s"},
                    "a.b": 0})
    r = twinctl(broker, "set", "d", "telemetry.interval=15", "telemetry.unit=null",
                "new.deep.leaf=x", r"a\.b=1", r"back\\slash=2")
    assert r.returncode == EXIT_OK, r.stderr
    doc = client.retained(topic("d", "desired"))
    assert doc["telemetry"] == {"interval": 15}, doc
    assert doc["new"] == {"deep": {"leaf": "x"}}, doc
    assert doc["a.b"] == 1 and doc["back\\slash"] == 2, doc
    for bad in ("a..b=1", ".a=1", "a.=1"):
        r = twinctl(broker, "set", "d", bad)
        assert r.returncode == EXIT_USAGE and "empty member name" in r.stderr, (bad, r.stderr)


def test_set_value_that_looks_like_json_must_be_json(broker, client):
    client.publish(topic("d", "desired"), {"$version": 1, "configId": 1})
    for bad in ('{"cpu": 2', "[1,2", '"unterminated'):
        r = twinctl(broker, "set", "d", f"x={bad}")
        assert r.returncode == EXIT_USAGE, (bad, r.returncode, r.stderr)
        assert "starts like JSON but is not" in r.stderr, r.stderr
    assert client.retained(topic("d", "desired")) == {"$version": 1, "configId": 1}


def test_set_from_a_file_and_from_stdin(tmp_path, broker, client):
    client.publish(topic("d", "desired"), {"$version": 1, "configId": 1, "keep": 1, "gone": 2})
    f = tmp_path / "patch.json"
    f.write_text(json.dumps({"limits": {"cpu": 2}, "gone": None}))
    r = twinctl(broker, "set", "d", "--file", str(f), "mode=eco")
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired")) == {
        "$version": 2, "configId": 2, "keep": 1, "limits": {"cpu": 2}, "mode": "eco"}
    r = subprocess.run([twinctl_binary(), "--broker", broker.url, "set", "d", "--file", "-"],
                       input=json.dumps({"configId": 9, "x": True}), capture_output=True,
                       text=True, timeout=30, env=environment())
    assert r.returncode == EXIT_OK, r.stderr
    assert client.retained(topic("d", "desired"))["configId"] == 9
    f.write_text("[1, 2]")
    r = twinctl(broker, "set", "d", "--file", str(f))
    assert r.returncode != EXIT_OK and "not a JSON object" in r.stderr, r.stderr
    f.write_text('{"a": 1, "a": 2}')
    r = twinctl(broker, "set", "d", "--file", str(f))
    assert r.returncode != EXIT_OK and "not JSON" in r.stderr, r.stderr
