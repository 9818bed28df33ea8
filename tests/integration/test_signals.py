# SPDX-License-Identifier: MIT
"""Signals (clean shutdown, reload) and configuration errors."""

import os
import re
import subprocess
import signal

import pytest

import twinlib
from twinlib import poll, props, settle, start_agent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_publishes_offline_and_exits_0(agent, service, sig):
    agent.start()
    service.wait_connection("online")
    cmark = service.connection_mark()
    agent.signal(sig)
    assert agent.wait_exit(10) == 0, agent.log_tail()
    service.wait_connection("offline", cmark, timeout=10)
    goodbye = service.connection_since(cmark)[-1]
    online = service.connection_since(0)[-2]
    # A clean goodbye says when: not before the connection began.
    assert set(goodbye) == {"state", "since"} and goodbye["state"] == "offline", goodbye
    assert goodbye["since"] >= online["since"], (goodbye, online)


EX_CONFIG = 78


def process_gone(pid):
    """No such process, or only a zombie left to whoever inherited it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sigterm_during_apply_stops_the_command(agent, service, make_apply):
    apply = make_apply(sleep=60)
    start_agent(agent, service, apply)
    service.publish({"$version": 1, "configId": 1})
    assert poll(lambda: len(apply.calls()) == 1, 15), agent.log_tail()
    cmark = service.connection_mark()
    assert agent.stop(10) == 0, agent.log_tail()
    service.wait_connection("offline", cmark, timeout=10)
    pid = apply.calls()[0]["pid"]
    assert poll(lambda: process_gone(pid), 5), "the apply command outlived twind"
    # Not applied: the state file does not claim it.
    if os.path.exists(agent.state_file):
        assert agent.read_state()["applied"] == {}, agent.read_state()


def test_sighup_reloads_apply_command(agent, service, make_apply):
    one = make_apply(name="one")
    two = make_apply(name="two")
    agent.configure("apply", "command", one.command)
    agent.start()
    service.wait_connection("online")
    service.publish({"$version": 1, "configId": 1})
    service.wait_status("success", 1)
    assert len(one.calls()) == 1

    agent.configure("apply", "command", two.command)
    agent.signal(signal.SIGHUP)
    settle(1.5)
    agent.assert_alive()

    mark = service.mark()
    service.publish({"$version": 2, "configId": 2})
    doc = service.wait_status("success", 2, mark)
    assert props(doc) == {"configId": 2}
    assert len(one.calls()) == 1, one.calls()
    assert two.inputs() == [{"configId": 2}]


def test_sighup_with_an_unusable_broker_setting_keeps_running(agent, service, make_apply, tmp_path):
    """A reload whose broker settings cannot be used (a CA file that does not exist) is refused
    with a log line; the agent keeps its running configuration and connection."""
    apply = make_apply()
    start_agent(agent, service, apply, {"$version": 1, "configId": 1})

    agent.configure("broker", "url", agent.broker.url.replace("mqtt://", "mqtts://"))
    agent.configure("broker", "cafile", str(tmp_path / "no-such-ca.pem"))
    agent.signal(signal.SIGHUP)
    assert poll(lambda: "no-such-ca.pem" in agent.log_text(), 10), agent.log_tail()
    agent.assert_alive()

    st = agent.status()
    assert st["connected"] is True and st["broker"].startswith("127.0.0.1:"), st
    mark = service.mark()
    service.publish({"$version": 2, "configId": 2})
    service.wait_status("success", 2, mark)
    assert agent.stop() == 0


def test_check_config_accepts_good_file(agent):
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "section,key,value",
    [("broker", "keepalive", "1"), ("broker", "bogus", "1"), ("broker", "url", "http://x")],
    ids=["keepalive-out-of-range", "unknown-key", "bad-url"],
)
def test_check_config_bad_file(agent, section, key, value):
    agent.configure(section, key, value)
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode != 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert agent.conf in lines[0] and key in lines[0], lines[0]


def names_device_id(text, bad_id):
    return "device" in text.lower() or bad_id in text


@pytest.mark.parametrize("bad_id", ["has space", "a/b", "a+b", "x" * 129])
def test_invalid_device_id_refused(agent, bad_id):
    agent.configure("device", "id", bad_id)
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode != 0, r.stderr
    assert names_device_id(r.stderr, bad_id), r.stderr

    # Refused at start too, with a non-zero exit rather than running.
    agent.start()
    assert agent.wait_exit(10) != 0
    assert names_device_id(agent.log_text(), bad_id), agent.log_text()


def test_invalid_device_id_on_command_line_refused(agent):
    r = agent.run("-c", agent.conf, "--device-id", "bad#id", timeout=10)
    assert r.returncode != 0, r.stderr
    assert names_device_id(r.stderr, "bad#id"), r.stderr


def test_bad_command_line_value_names_the_option_not_the_file(agent):
    r = agent.run("-c", agent.conf, "--device-id", "a b", "--check-config", timeout=10)
    assert r.returncode == EX_CONFIG, r.stderr
    assert r.stderr.strip().endswith("--device-id: 'a b' is not a valid device id (1 to 128 "
                                     "characters of A-Z a-z 0-9 - . _ :)"), r.stderr
    assert agent.conf not in r.stderr, r.stderr


def line_of(path, key):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.split("=")[0].strip() == key:
                return n
    raise AssertionError(f"{key} not in {path}")


@pytest.mark.parametrize(
    "section,key,value",
    [("broker", "url", "mqtt://"), ("device", "id", "a/b"), ("state", "directory", "rel/dir"),
     ("broker", "topic_root", "a/#")],
    ids=["url", "id", "directory", "topic_root"],
)
def test_invalid_value_names_file_and_line(agent, section, key, value):
    agent.configure(section, key, value)
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode == EX_CONFIG, r.stderr
    where = f"{agent.conf}:{line_of(agent.conf, key)}: [{section}] {key}: "
    assert r.stderr.startswith(where) or f"error: {where}" in r.stderr, r.stderr
    assert r.stderr.count("No such file or directory") <= 1, r.stderr


@pytest.mark.parametrize("case", ["missing", "not-executable", "relative", "missing-password",
                                  "missing-ca"])
def test_check_config_catches_what_would_fail_later(agent, tmp_path, case):
    """--check-config fails for what the start or the first apply would trip over, naming the
    key and the file; each of these passed before."""
    script = tmp_path / "apply.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    if case == "missing":
        agent.configure("apply", "command", str(tmp_path / "no-such-apply") + " --now")
        want = ["[apply] command", "no-such-apply", "No such file or directory"]
    elif case == "not-executable":
        script.chmod(0o644)
        agent.configure("apply", "command", str(script))
        want = ["[apply] command", str(script), "not executable"]
    elif case == "relative":
        agent.configure("apply", "command", "apply.sh")
        want = ["[apply] command", "'apply.sh' is not an absolute path"]
    elif case == "missing-password":
        agent.configure("broker", "username", "dev-1")
        agent.configure("broker", "password_file", str(tmp_path / "no-pw"))
        want = ["[broker] password_file", "no-pw", "No such file or directory"]
    else:
        agent.configure("broker", "url", "mqtts://127.0.0.1:8883")
        agent.configure("broker", "cafile", str(tmp_path / "no-ca.pem"))
        want = ["[broker] cafile", "no-ca.pem", "No such file or directory"]
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode == EX_CONFIG, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in want), r.stderr
    assert agent.conf in lines[0], lines[0]


def test_command_line_overrides_the_file(agent, service, tmp_path):
    # The file names a dead broker, another device and another state directory; the command
    # line wins for all three.
    other_state = tmp_path / "other-state"
    other_state.mkdir()
    agent.configure("broker", "url", "mqtt://127.0.0.1:1")
    agent.configure("device", "id", "somebody-else")
    agent.start(
        "--broker", agent.broker.url, "--device-id", agent.device_id, "--state-dir", str(other_state)
    )
    service.wait_connection("online")
    service.publish({"$version": 1, "configId": 1})
    service.wait_status("success", 1)
    assert (other_state / "state.json").exists()
    assert not (tmp_path / "agent" / "state" / "state.json").exists()


def test_log_time_puts_a_timestamp_on_each_line(agent):
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")
    r = agent.run("--log-time", "-c", agent.conf, "--device-id", "a b")
    lines = [l for l in r.stderr.splitlines() if l]
    assert lines and all(stamp.match(l) for l in lines), r.stderr
    r = agent.run("-c", agent.conf, "--device-id", "a b")
    assert not any(stamp.match(l) for l in r.stderr.splitlines()), r.stderr
    env_run = subprocess.run(
        [twinlib.twind_binary(), "-c", agent.conf, "--device-id", "a b"], capture_output=True,
        text=True, timeout=10, env=dict(agent.environment(), TWIND_LOG_TIME="1"))
    assert stamp.match(env_run.stderr), env_run.stderr
