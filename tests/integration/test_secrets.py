# SPDX-License-Identifier: MIT
"""Secrets: the broker password is read, used, and never written anywhere a user could see it:
not in twind's log (even with TWIND_DEBUG=1), not in `twinctl status --json` or the control
socket's replies and events, not in the reported or connection documents, not in the apply
command's environment. A password file readable by others gets a warning."""

import json
import os
import signal
import subprocess

import pytest

import twinlib
from test_acl import PASSWORDS, Client
from test_acl import broker  # noqa: F401  (the ACL broker fixture, shared)
from test_control import Control, wait_socket
from test_twinctl import environment as twinctl_environment
from test_twinctl import twinctl_binary

DEVICE = "dev-1"
PASSWORD = PASSWORDS[DEVICE]

ENV_DUMP = r'''
import json, os, sys
# Writes what the apply command can see (environment, arguments, stdin) next to itself.
with open(os.path.splitext(os.path.abspath(sys.argv[0]))[0] + ".seen", "a") as f:
    f.write(json.dumps({"env": dict(os.environ), "argv": sys.argv, "stdin": sys.stdin.read()}))
'''


@pytest.fixture
def secret_agent(tmp_path, broker, monkeypatch):
    """An agent logged in as dev-1 with a 0600 password file, debug logging on."""
    monkeypatch.setenv("TWIND_DEBUG", "1")
    a = twinlib.Agent(str(tmp_path / "agent"), broker, DEVICE)
    a.password_file = os.path.join(a.dir, "pw")
    with open(a.password_file, "w") as f:
        f.write(PASSWORD + "\n")
    os.chmod(a.password_file, 0o600)
    a.configure("broker", "username", DEVICE)
    a.configure("broker", "password_file", a.password_file)
    script = os.path.join(a.dir, "apply.py")
    with open(script, "w") as f:
        f.write(ENV_DUMP)
    a.seen = os.path.join(a.dir, "apply.seen")
    a.configure("apply", "command", f"{twinlib.PYTHON} {script}")
    yield a
    a.cleanup()


@pytest.fixture
def svc(broker):
    c = Client(broker, "twin-service")
    assert c.subscribe(f"twins/{DEVICE}/#") == 1
    yield c
    c.close()


def twinctl_status(agent):
    return subprocess.run([twinctl_binary(), "--socket", agent.socket, "--json", "status"],
                          capture_output=True, text=True, timeout=30, env=twinctl_environment(),
                          stdin=subprocess.DEVNULL)


def test_password_is_never_shown(secret_agent, svc):
    agent = secret_agent
    agent.start()
    svc.wait_message(f"twins/{DEVICE}/connection", lambda d: d.get("state") == "online")
    wait_socket(agent)
    events = Control(agent.socket)
    assert "result" in events.call("events")

    svc.publish(f"twins/{DEVICE}/desired", json.dumps({"$version": 1, "configId": 1}).encode())
    svc.wait_message(f"twins/{DEVICE}/reported",
                     lambda d: (d.get("$status") or {}).get("state") == "success")
    # A reload reads the password file again.
    agent.signal(signal.SIGHUP)
    assert twinlib.poll(lambda: "reloaded" in agent.log_text(), 10), agent.log_tail()

    r = twinctl_status(agent)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["connected"] is True and st["configId"] == 1, st
    c = Control(agent.socket)
    twin = json.dumps(c.result("twin"))
    c.close()
    # Events so far: connected, desired-received, apply-*; read what is there.
    events.sock.settimeout(2.0)
    streamed = b""
    try:
        while b"apply-finished" not in streamed:
            chunk = events.sock.recv(65536)
            if not chunk:
                break
            streamed += chunk
    except OSError:
        pass
    events.close()
    assert b"apply-finished" in streamed

    log = agent.log_text()
    # A debug-level line: TWIND_DEBUG=1 took effect, so debug output was checked too.
    assert "Published reported $version" in log, "TWIND_DEBUG gave no debug lines:\n" + log
    with open(agent.seen) as f:
        seen = f.read()
    shown = {
        "twind log": log,
        "twinctl status --json": r.stdout + r.stderr,
        "control twin": twin,
        "control events": streamed.decode(),
        "broker messages": repr(svc.messages),
        "apply command's environment, arguments and stdin": seen,
    }
    for where, text in shown.items():
        assert PASSWORD not in text, f"the password appears in the {where}"
    # The agent itself holds it only in memory, not in its environment or command line.
    for name in ("environ", "cmdline"):
        with open(f"/proc/{agent.proc.pid}/{name}", "rb") as f:
            assert PASSWORD.encode() not in f.read(), name


def test_wrong_password_refused_without_echoing_it(secret_agent, svc):
    agent = secret_agent
    with open(agent.password_file, "w") as f:
        f.write("not-the-password-4711\n")
    agent.start()
    assert twinlib.poll(lambda: agent.log_text().lower().count("not authori") >= 2, 15), (
        agent.log_tail()
    )
    agent.assert_alive()
    wait_socket(agent)
    r = twinctl_status(agent)
    assert r.returncode == 0, r.stderr
    for text in (agent.log_text(), r.stdout):
        assert "not-the-password-4711" not in text


def test_password_file_readable_by_others_is_warned_about(secret_agent, svc):
    agent = secret_agent
    os.chmod(agent.password_file, 0o644)
    agent.start()
    svc.wait_message(f"twins/{DEVICE}/connection", lambda d: d.get("state") == "online")
    log = agent.log_text()
    assert f"password file {agent.password_file} is readable by others" in log, log
    assert PASSWORD not in log
