# SPDX-License-Identifier: MIT
"""twind and systemd without a container: socket activation through systemd-socket-activate,
the sd_notify protocol captured on a datagram socket of our own (NOTIFY_SOCKET), and the
hardening score of the built twind.service."""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

import pytest

import twinlib
from twinlib import WAIT, poll, twind_binary

WATCHDOG_USEC = 400000


def agent_env(**extra):
    """The test's environment without anything systemd may have set for the test runner."""
    drop = ("JOURNAL_STREAM", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("WATCHDOG_")}
    env.update(extra)
    return env


@pytest.fixture
def short_dir():
    """A directory with a short path: Unix socket paths are limited to 107 bytes."""
    d = tempfile.mkdtemp(prefix="twsd-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; records every assignment of
    every message with the monotonic time it arrived."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.lock = threading.Lock()
        self.items = []  # (time, "KEY=value")
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self.items.append((now, line))

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()

    def all(self):
        with self.lock:
            return list(self.items)

    def mark(self):
        with self.lock:
            return len(self.items)

    def since(self, mark=0):
        with self.lock:
            return [line for _, line in self.items[mark:]]

    def statuses(self, mark=0):
        return [line[len("STATUS="):] for line in self.since(mark) if line.startswith("STATUS=")]

    def wait(self, predicate, what, mark=0, log=None, timeout=WAIT):
        if not poll(lambda: predicate(self.since(mark)), timeout):
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; got: {self.since(mark)}\n"
                f"---- twind log ----\n{log() if log else ''}"
            )

    def wait_line(self, line, mark=0, log=None, timeout=WAIT):
        self.wait(lambda lines: line in lines, line, mark, log, timeout)


@pytest.fixture
def notify(short_dir):
    n = NotifyListener(os.path.join(short_dir, "notify"))
    yield n
    n.close()


def start_under_notify(agent, notify, watchdog_pid_self=True, watchdog_pid=None):
    """Starts twind as systemd would for Type=notify with WatchdogSec=: NOTIFY_SOCKET,
    WATCHDOG_USEC, and WATCHDOG_PID set to the agent's own pid (a shell exports its $$, then
    execs twind, so the pid stays the same)."""
    env = agent_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    if watchdog_pid_self:
        script = 'export WATCHDOG_PID=$$; exec "$0" -c "$1"'
    else:
        env["WATCHDOG_PID"] = str(watchdog_pid)
        script = 'exec "$0" -c "$1"'
    logf = open(agent.log, "ab")
    agent.proc = subprocess.Popen(
        ["/bin/sh", "-c", script, twind_binary(), agent.conf],
        stdout=logf,
        stderr=logf,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    logf.close()
    return agent.proc


def control_request(path, request, timeout=WAIT):
    """Connects to the control socket, sends one request line, returns the parsed reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf.endswith(b"\n"), f"no complete reply line, got {buf!r}"
    return json.loads(buf)


# ---- socket activation ---------------------------------------------------------------------


def test_socket_activation_serves_status_on_the_passed_socket(agent, broker, short_dir):
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("systemd-socket-activate is missing")
    # A path other than the configured [control] socket: only the passed descriptor leads here.
    path = os.path.join(short_dir, "activated.sock")
    logf = open(agent.log, "ab")
    agent.proc = subprocess.Popen(
        [activate, "-l", path, twind_binary(), "-c", agent.conf],
        stdout=logf,
        stderr=logf,
        stdin=subprocess.DEVNULL,
        env=agent_env(),
    )
    logf.close()
    assert poll(lambda: os.path.exists(path) or agent.proc.poll() is not None, WAIT), (
        "systemd-socket-activate did not create the socket"
    )
    agent.assert_alive()

    # The first connection makes systemd-socket-activate exec twind with LISTEN_FDS=1.
    reply = control_request(path, {"method": "status", "id": 1})
    assert reply.get("id") == 1, reply
    assert "result" in reply, reply
    assert reply["result"]["deviceId"] == agent.device_id
    agent.assert_alive()

    # Still served, to a second client, and twind did not bind its own socket.
    reply = control_request(path, {"method": "status"})
    assert reply["result"]["deviceId"] == agent.device_id
    assert not os.path.exists(agent.socket), "twind bound its configured socket instead of using systemd's"

    assert agent.stop() == 0, agent.log_tail()


# ---- sd_notify -----------------------------------------------------------------------------


def test_notify_ready_then_status_follows_the_broker(agent, broker, notify):
    broker.stop()  # so that the status has something to change from
    start_under_notify(agent, notify)
    notify.wait_line("READY=1", log=agent.log_text)
    notify.wait(
        lambda lines: any(l.startswith("STATUS=") and "unreachable" in l for l in lines),
        "a STATUS= saying the broker is unreachable",
        log=agent.log_text,
    )
    mark = notify.mark()
    broker.start()
    notify.wait(
        lambda lines: any(l.startswith("STATUS=") and "connected to" in l for l in lines),
        "a STATUS= saying the agent is connected",
        mark,
        log=agent.log_text,
        timeout=90,  # the reconnect backoff may have grown while the broker was down
    )
    assert notify.since().count("READY=1") == 1, notify.since()
    agent.assert_alive()
    assert agent.stop() == 0, agent.log_tail()


def test_notify_status_while_applying(agent, broker, notify, service, short_dir):
    # In a short directory: twind.conf lines are limited to 199 characters.
    apply = twinlib.ApplyScript(short_dir, sleep=1.0)
    agent.configure("apply", "command", apply.command)
    start_under_notify(agent, notify)
    service.wait_connection("online")
    notify.wait(lambda lines: any("connected to" in l for l in lines), "connected", log=agent.log_text)
    mark = notify.mark()
    service.publish({"$version": 1, "configId": 7})
    service.wait_status("success", 1)
    statuses = notify.statuses(mark)
    assert any("applying configId 7" in s for s in statuses), statuses
    assert "configId 7 applied" in statuses[-1], statuses


def test_notify_watchdog_pings_at_half_the_interval(agent, broker, notify):
    start_under_notify(agent, notify)
    notify.wait_line("READY=1", log=agent.log_text)

    def pings():
        return [t for t, line in notify.all() if line == "WATCHDOG=1"]

    # About 2.4 s of pings (12 at the expected rate); bounded either way.
    poll(lambda: len(pings()) >= 13 or agent.proc.poll() is not None, 10)
    agent.assert_alive()
    times = pings()
    assert len(times) >= 13, f"only {len(times)} WATCHDOG=1 in 10 s with WATCHDOG_USEC={WATCHDOG_USEC}"
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Half of 400 ms is 200 ms; the median is robust against a single late tick on a busy host.
    median = statistics.median(gaps)
    assert 0.1 <= median <= 0.3, f"median gap {median:.3f} s between pings, gaps {gaps}"
    assert agent.stop() == 0, agent.log_tail()


def test_notify_no_watchdog_pings_for_another_pid(agent, broker, notify):
    # WATCHDOG_PID names another process: the watchdog is not ours (sd_watchdog_enabled says no).
    start_under_notify(agent, notify, watchdog_pid_self=False, watchdog_pid=1)
    notify.wait_line("READY=1", log=agent.log_text)
    time.sleep(1.0)  # five ping intervals, if there were pings
    agent.assert_alive()
    assert "WATCHDOG=1" not in notify.since(), notify.since()
    assert agent.stop() == 0, agent.log_tail()


def test_notify_reloading_then_ready_on_sighup(agent, broker, notify):
    start_under_notify(agent, notify)
    notify.wait_line("READY=1", log=agent.log_text)
    mark = notify.mark()
    agent.signal(signal.SIGHUP)
    notify.wait(
        lambda lines: "RELOADING=1" in lines and "READY=1" in lines[lines.index("RELOADING=1"):],
        "RELOADING=1 followed by READY=1",
        mark,
        log=agent.log_text,
    )
    agent.assert_alive()
    assert agent.stop() == 0, agent.log_tail()


def test_notify_stopping_on_sigterm(agent, broker, notify):
    start_under_notify(agent, notify)
    notify.wait_line("READY=1", log=agent.log_text)
    mark = notify.mark()
    assert agent.stop() == 0, agent.log_tail()
    lines = notify.since(mark)
    assert "STOPPING=1" in lines, lines
    assert "READY=1" not in lines[lines.index("STOPPING=1"):], lines


# ---- hardening ----------------------------------------------------------------------------


def built_unit():
    """The twind.service that meson made (configure_file), next to the binary's build tree."""
    path = os.environ.get("TWIND_SERVICE_UNIT")
    if path:
        return path
    build_root = os.path.dirname(os.path.dirname(os.path.dirname(twind_binary())))
    return os.path.join(build_root, "systemd", "twind.service")


def test_unit_security_exposure_below_1():
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is missing")
    unit = built_unit()
    assert os.path.exists(unit), f"{unit} was not built"
    r = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = r.stdout + r.stderr
    m = re.search(r"Overall exposure level for twind\.service: (\d+\.\d+)", out)
    assert m, f"no exposure level in systemd-analyze's output:\n{out}"
    exposure = float(m.group(1))
    assert exposure < 1.0, f"exposure {exposure}, not below 1.0:\n{out}"
