# SPDX-License-Identifier: MIT
"""Signals (clean shutdown, reload) and configuration errors."""

import signal

import pytest

from twinlib import props, settle


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_publishes_offline_and_exits_0(agent, service, sig):
    agent.start()
    service.wait_connection("online")
    cmark = service.connection_mark()
    agent.signal(sig)
    assert agent.wait_exit(10) == 0, agent.log_tail()
    service.wait_connection("offline", cmark, timeout=10)
    assert service.connection_since(cmark)[-1] == {"state": "offline"}


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
