# SPDX-License-Identifier: MIT
"""The control socket of the real twind (docs/protocol.md, "Control socket"): methods, errors,
access, limits, slow and many clients.

The daemon's main() calls control_server_new(loop, manager, config->control_socket, fd), with fd
from sd_listen_fds() or -1; run by hand as here, twind binds [control] socket itself.
"""

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading

import pytest

from twinlib import ApplyScript, poll, props, settle, start_agent, twind_binary

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TIMEOUT = 10.0  # bound of every socket wait: only there so that a broken agent cannot hang us
NOBODY = 65534  # nobody / nogroup on Debian
RSS_LIMIT_KIB = 64 * 1024


@pytest.fixture
def make_apply():
    """Like conftest's make_apply, in a short directory: twind.conf lines are limited to 199
    characters (libinih), and three paths under a long pytest tmp_path exceed that."""
    d = tempfile.TemporaryDirectory(prefix="tc")
    yield lambda **kw: ApplyScript(d.name, **kw)
    d.cleanup()


class Control:
    """One connection to the agent's control socket, line by line."""

    def __init__(self, path, timeout=TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    @classmethod
    def from_socket(cls, sock):
        c = cls.__new__(cls)
        c.sock = sock
        c.buf = b""
        return c

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def read_line(self):
        """The next line as a dict; None at end of file. Raises socket.timeout on a stall."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, method, **fields):
        self.send({"method": method, **fields})
        reply = self.read_line()
        assert reply is not None, f"connection closed instead of answering {method}"
        return reply

    def result(self, method, **fields):
        reply = self.call(method, **fields)
        assert "result" in reply, reply
        return reply["result"]

    def read_until_closed(self):
        """Reads until the agent closes the connection; returns the lines read. A reset counts
        as closed (the agent may close while we still have unread data for it)."""
        lines = []
        try:
            while True:
                line = self.read_line()
                if line is None:
                    return lines
                lines.append(line)
        except ConnectionResetError:
            return lines

    def close(self):
        self.sock.close()


def wait_socket(agent):
    """Waits until the agent accepts on its control socket."""

    def accepts():
        agent.assert_alive()
        try:
            Control(agent.socket, timeout=1.0).close()
            return True
        except OSError:
            return False

    assert poll(accepts, TIMEOUT), "control socket never accepted:\n" + agent.log_tail()


def wait_status(agent, predicate, what):
    """Polls the status method until predicate(result) holds; returns that result."""
    seen = []

    def check():
        c = Control(agent.socket)
        try:
            seen.append(c.result("status"))
        finally:
            c.close()
        return predicate(seen[-1])

    assert poll(check, TIMEOUT, 0.1), f"status never showed {what}; last: {seen[-1:]}"
    return seen[-1]


def start_connected(agent, service, apply=None):
    start_agent(agent, service, apply)
    wait_socket(agent)
    return wait_status(agent, lambda s: s.get("connected") is True, "connected")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/PID/status")


def assert_rss_bounded(agent):
    """The agent's resident memory stays small. Not under AddressSanitizer: its quarantine keeps
    freed memory resident on purpose, so RSS there measures the sanitizer, not the agent."""
    with open(f"/proc/{agent.proc.pid}/maps") as f:
        if "libasan" in f.read():
            return
    rss = rss_kib(agent.proc.pid)
    assert rss < RSS_LIMIT_KIB, f"twind RSS {rss} KiB"


def test_status_after_connect(agent, service, make_apply):
    apply = make_apply()
    st = start_connected(agent, service, apply)
    assert st["deviceId"] == agent.device_id, st
    assert str(agent.broker.port) in st["broker"], st
    assert ISO_UTC.match(st["connectedSince"]), st
    assert st["status"] is None and st["configId"] is None, st
    assert st["counters"] == {"reconnects": 0, "applies": 0, "failures": 0}, st
    assert isinstance(st["uptimeSeconds"], int) and st["uptimeSeconds"] >= 0, st

    service.publish({"$version": 3, "configId": 7, "sendFrequency": "5m"})
    st = wait_status(agent, lambda s: s.get("configId") == 7, "configId 7")
    assert st["applied"] == {"configId": 7, "sendFrequency": "5m"}, st
    assert st["status"]["state"] == "success" and st["status"]["desiredVersion"] == 3, st
    assert st["desiredVersion"] == 3, st
    assert st["counters"]["applies"] == 1, st
    assert st["lastError"] is None, st


def test_twin(agent, service):
    start_connected(agent, service)
    c = Control(agent.socket)
    before = c.result("twin")
    assert before["desired"] is None, before
    assert "$status" not in before["reported"], before

    desired = {"$version": 5, "configId": 2, "limits": {"cpu": 2}}
    service.publish(desired)
    service.wait_status("success", 5)
    twin = c.result("twin", id=42)
    assert twin["desired"] == desired, twin
    reported = twin["reported"]
    assert props(reported) == props(desired), twin
    assert reported["$status"]["state"] == "success", twin
    assert reported["$version"] == service.last_reported()["$version"], twin


def test_socket_mode_stale_socket_and_removal(agent, service):
    # A socket left behind by an agent that died is replaced.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(agent.socket)
    stale.close()
    start_connected(agent, service)
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    # A clean shutdown removes the socket it bound.
    assert agent.stop() == 0
    assert not os.path.exists(agent.socket)


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="no systemd-socket-activate")
def test_socket_passed_by_systemd(agent, service):
    passed = os.path.join(agent.dir, "passed.sock")
    env = agent.environment()
    with open(agent.log, "ab") as logf:
        # systemd-socket-activate binds and listens, then execs twind with LISTEN_FDS=1 on the
        # first connection, as twind.socket would.
        agent.proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", passed, twind_binary(), "-c", agent.conf],
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
        )
    assert poll(lambda: os.path.exists(passed), TIMEOUT), agent.log_tail()
    c = Control(passed)
    assert c.result("status")["deviceId"] == agent.device_id
    service.wait_connection("online")
    # The configured path was never bound: the passed socket is used instead.
    assert not os.path.exists(agent.socket)
    assert agent.stop() == 0
    # The socket belongs to systemd: the agent leaves it for the next start.
    assert stat.S_ISSOCK(os.stat(passed).st_mode)


def test_path_that_is_not_a_socket_is_refused(agent):
    with open(agent.socket, "w") as f:
        f.write("not a socket\n")
    agent.start()
    assert agent.wait_exit() != 0
    assert "not a socket" in agent.log_text(), agent.log_tail()
    with open(agent.socket) as f:
        assert f.read() == "not a socket\n", "the agent clobbered a file that is not its socket"


def test_missing_socket_directory_is_created(agent, service):
    agent.socket = os.path.join(agent.dir, "run", "twind", "control.sock")
    agent.configure("control", "socket", agent.socket)
    start_connected(agent, service)
    assert stat.S_IMODE(os.stat(os.path.dirname(agent.socket)).st_mode) == 0o755


def test_malformed_json_then_same_connection_works(agent, service):
    start_connected(agent, service)
    c = Control(agent.socket)
    c.send_raw(b'{"method": "status", "id": \n')
    err = c.read_line()
    assert err["error"]["name"] == "ParseError", err
    assert err["error"]["message"], err
    c.send_raw(b"[1, 2]\n")
    assert c.read_line()["error"]["name"] == "ParseError"
    # Empty lines are ignored: the next reply answers the status request.
    c.send_raw(b"\n\n")
    reply = c.call("status", id=9)
    assert reply["id"] == 9 and reply["result"]["deviceId"] == agent.device_id, reply


def test_unknown_method_and_invalid_request(agent, service):
    start_connected(agent, service)
    c = Control(agent.socket)
    reply = c.call("reboot", id=3)
    assert reply == {"id": 3, "error": reply["error"]}, reply
    assert reply["error"]["name"] == "UnknownMethod", reply
    reply = c.call("status", id="three")
    assert reply["error"]["name"] == "InvalidRequest", reply
    assert c.result("status")["deviceId"] == agent.device_id


def test_line_too_long_closes_the_connection(agent, service):
    start_connected(agent, service)
    c = Control(agent.socket)
    line = json.dumps({"method": "status", "pad": "x" * (70 * 1024)}).encode() + b"\n"
    try:
        c.send_raw(line)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent may close before it has read everything
    lines = c.read_until_closed()
    assert len(lines) == 1, lines
    assert lines[0]["error"]["name"] == "LineTooLong", lines
    # A line of exactly the limit is fine.
    other = Control(agent.socket)
    req = json.dumps({"method": "status", "id": 1}).encode()
    req = req[:-1] + b', "pad": "' + b"y" * (64 * 1024 - len(req) - 11) + b'"}'
    assert len(req) == 64 * 1024
    other.send_raw(req + b"\n")
    assert other.read_line()["result"]["deviceId"] == agent.device_id
    # Also when it ends in "\r\n": the '\r' is not part of the line.
    other.send_raw(req + b"\r\n")
    assert other.read_line()["result"]["deviceId"] == agent.device_id
    # One byte more is too long, with or without the '\r'.
    for end in (b"\n", b"\r\n"):
        third = Control(agent.socket)
        third.send_raw(req[:-2] + b'y"}' + end)
        lines = third.read_until_closed()
        assert [l["error"]["name"] for l in lines] == ["LineTooLong"], lines


def test_reapply_as_root_runs_the_apply_again(agent, service, make_apply):
    apply = make_apply()
    start_connected(agent, service, apply)
    c = Control(agent.socket)
    assert c.call("reapply", id=1)["error"]["name"] == "NoDesired"
    assert apply.calls() == []

    service.publish({"$version": 1, "configId": 1, "a": 1})
    service.wait_status("success", 1)
    assert len(apply.calls()) == 1

    mark = service.mark()
    assert c.call("reapply", id=2) == {
        "id": 2, "result": {"started": True, "queued": False, "desiredVersion": 1}}
    service.wait_status("success", 1, mark)
    assert poll(lambda: len(apply.calls()) == 2, TIMEOUT), apply.calls()
    assert apply.inputs()[1] == {"configId": 1, "a": 1}
    st = wait_status(agent, lambda s: s["counters"]["applies"] == 2, "two applies")
    assert st["state"] == "success", st


def test_refused_document_is_not_current_and_not_reapplied(agent, service, make_apply):
    apply = make_apply()
    start_connected(agent, service, apply)
    service.publish({"$version": 1, "configId": 1, "a": 1})
    service.wait_status("success", 1)
    c = Control(agent.socket)
    service.publish({"$version": 2, "configId": 2, "$bad": 1})
    service.wait_failed()
    assert c.result("twin")["desired"] is None
    assert c.call("reapply", id=3)["error"]["name"] == "NoDesired"
    settle(0.5)
    assert len(apply.calls()) == 1, apply.calls()


def test_queued_reapply_is_served_by_a_newer_apply(agent, service, make_apply):
    """A reapply queued behind a running apply, then a newer desired document: the newer one is
    applied once, and the queued reapply does not apply it a second time."""
    apply = make_apply(sleep=2)
    start_connected(agent, service, apply)
    service.publish({"$version": 1, "configId": 1, "a": 1})
    assert poll(lambda: len(apply.calls()) == 1, TIMEOUT), "the first apply never started"
    apply.behave(sleep=0)
    c = Control(agent.socket)
    assert c.call("reapply", id=1) == {
        "id": 1, "result": {"started": True, "queued": True, "desiredVersion": 1}}
    service.publish({"$version": 2, "configId": 2, "a": 2})
    service.wait_status("success", 2)
    settle(1.0)
    assert apply.inputs() == [{"configId": 1, "a": 1}, {"configId": 2, "a": 2}], apply.inputs()
    assert wait_status(agent, lambda s: s["state"] == "success", "success")["counters"][
        "applies"
    ] == 2


def run_as_nobody(directory, name, requests):
    """Connects to directory/name as uid/gid 65534 and sends requests; returns the replies.

    SO_PEERCRED records the credentials of the process that calls connect(), so the child drops
    privileges *before* connecting. pytest's temp dirs are 0700 root: the child changes into the
    socket's directory while still root, then connects by relative name."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.chdir(directory)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            c = Control(name)
            replies = [c.call(m) for m in requests]
            os.write(w, json.dumps(replies).encode())
        except BaseException as e:  # report anything to the parent, never return into pytest
            os.write(w, json.dumps({"exception": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_reapply_from_another_user_is_denied(agent, service, make_apply):
    apply = make_apply()
    start_connected(agent, service, apply)
    service.publish({"$version": 1, "configId": 1})
    service.wait_status("success", 1)
    directory, name = os.path.split(agent.socket)

    # Mode 0660 root:root: another user cannot even connect.
    denied = run_as_nobody(directory, name, ["status"])
    assert "PermissionError" in denied.get("exception", ""), denied

    # A member of the socket's group may read but not reapply.
    os.chown(agent.socket, 0, NOBODY)
    replies = run_as_nobody(directory, name, ["status", "reapply", "twin"])
    assert not isinstance(replies, dict), replies
    assert replies[0]["result"]["deviceId"] == agent.device_id, replies
    assert replies[1]["error"]["name"] == "AccessDenied", replies
    assert replies[2]["result"]["desired"]["configId"] == 1, replies
    settle(0.5)
    assert len(apply.calls()) == 1, apply.calls()


def test_events_follow_an_apply(agent, service, make_apply):
    apply = make_apply()
    start_connected(agent, service, apply)
    follower = Control(agent.socket)
    assert follower.call("events", id=1) == {"id": 1, "result": {"following": True}}

    service.publish({"$version": 8, "configId": "blue", "x": 1})
    events = []
    while not events or events[-1]["event"] != "apply-finished":
        ev = follower.read_line()
        assert ev is not None, events
        events.append(ev)
    names = [e["event"] for e in events]
    assert names == ["desired-received", "apply-started", "apply-finished"], events
    for e in events:
        assert ISO_UTC.match(e["time"]), e
        assert e["desiredVersion"] == 8, e
    assert events[1]["configId"] == "blue" and events[2]["configId"] == "blue", events
    assert events[2]["result"] == "success", events

    # Requests on a following connection are still answered.
    assert follower.result("status")["configId"] == "blue"


def test_slow_event_follower_is_dropped_without_stalling(agent, service):
    start_connected(agent, service)
    slow = Control(agent.socket)
    assert slow.result("events") == {"following": True}
    good = Control(agent.socket)
    assert good.result("events") == {"following": True}
    probe = Control(agent.socket)

    # Large configIds make large apply events: 20 applies put far more than the output limit
    # (256 KiB) plus the kernel's socket buffer in front of a follower that never reads.
    big = "c" * 30000
    n = 20
    received = []
    for v in range(1, n + 1):
        mark = service.mark()
        service.publish({"$version": v, "configId": f"{v}-{big}"})
        service.wait_status("success", v, mark)
        # The agent keeps answering others (a stall would time out here).
        assert probe.result("status")["desiredVersion"] == v
        while True:
            ev = good.read_line()
            assert ev is not None, "the reading follower was dropped"
            if ev["event"] == "apply-finished":
                received.append(ev["desiredVersion"])
                break
    assert received == list(range(1, n + 1))
    assert_rss_bounded(agent)

    # The slow follower was disconnected: after what fitted, its stream ends.
    lines = slow.read_until_closed()
    finished = [e for e in lines if e.get("event") == "apply-finished"]
    assert len(finished) < n, "the slow follower was never dropped"
    assert "Dropping slow control client" in agent.log_text()


def test_pipelining_client_that_does_not_read(agent, service):
    start_connected(agent, service)
    n = 10000
    pipeliner = Control(agent.socket, timeout=60.0)
    requests = b"".join(json.dumps({"method": "status", "id": i}).encode() + b"\n" for i in range(n))
    # The agent stops reading from a client whose replies pile up, so sendall blocks: send from
    # a thread while we check the agent from here.
    sender = threading.Thread(target=pipeliner.send_raw, args=(requests,), daemon=True)
    sender.start()
    settle(1.0)

    probe = Control(agent.socket)
    for i in range(5):
        assert probe.call("status", id=i)["id"] == i
    assert_rss_bounded(agent)

    # Nothing was dropped: once the client reads, every request is answered, in order.
    ids = []
    while len(ids) < n:
        reply = pipeliner.read_line()
        assert reply is not None, f"closed after {len(ids)} replies"
        assert reply["result"]["deviceId"] == agent.device_id
        ids.append(reply["id"])
    assert ids == list(range(n))
    sender.join(TIMEOUT)
    assert not sender.is_alive()
    assert_rss_bounded(agent)


def test_200_simultaneous_clients(agent, service):
    start_connected(agent, service)
    clients = [Control(agent.socket) for _ in range(200)]
    for i, c in enumerate(clients):
        c.send({"method": "status", "id": i})
    for i, c in enumerate(clients):
        reply = c.read_line()
        assert reply["id"] == i and reply["result"]["deviceId"] == agent.device_id, reply
    for c in clients:
        c.close()
    # All of them are gone again: a new client is served as before.
    assert Control(agent.socket).result("status")["connected"] is True
