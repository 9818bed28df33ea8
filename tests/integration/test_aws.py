# SPDX-License-Identifier: MIT
"""twind's AWS IoT Device Shadow dialect (protocol.md, "AWS IoT Device Shadow") against the
shadow emulator that AWS's own SDKs pass against (tests/emulators/aws-iot): the desired
$version names the desired change, never the device's own reports (no report loop), no
re-apply on reconnect or restart, offline changes, removed properties, conflicts and
throttling, certificates, named and classic shadows."""

import os
import time

import pytest

import twinlib
from awsiot import AwsIotEmulator, available
from twinlib import poll, settle

THING = "dev-1"
STATUS = "twinStatus"


@pytest.fixture
def emu(tmp_path):
    why = available()
    if why:
        pytest.skip(why)
    e = AwsIotEmulator(str(tmp_path / "aws"))
    e.start()
    yield e
    e.stop()


class NoBroker:
    url = "mqtt://127.0.0.1:1"
    port = 1


def aws_agent(tmp_path, emu, name="agent", shadow=None, cert=None):
    agent = twinlib.Agent(str(tmp_path / name), NoBroker(), device_id=THING)
    crt, key = cert or (emu.device_cert, emu.device_key)
    agent.settings["broker"] = {"dialect": "aws", "url": emu.url, "cafile": emu.ca,
                                "certfile": crt, "keyfile": key, "keepalive": "5"}
    if shadow:
        agent.settings["aws"] = {"shadow": shadow}
    agent.write_config()
    return agent


@pytest.fixture
def agent(tmp_path, emu):
    a = aws_agent(tmp_path, emu)
    yield a
    a.cleanup()


def state(emu, shadow=None):
    s = emu.shadow(name=shadow)
    return (s or {}).get("state") or {}


def props(section):
    return {k: v for k, v in (section or {}).items() if k != STATUS}


def wait_status(emu, agent, want, version, shadow=None, timeout=15):
    """The shadow's reported twinStatus with state want answering desired $version version."""
    seen = []

    def check():
        if agent.died():
            raise AssertionError(f"twind exited:\n{agent.log_tail()}")
        st = (state(emu, shadow).get("reported") or {}).get(STATUS) or {}
        seen.append(st)
        return st.get("state") == want and st.get("desiredVersion") == version

    assert poll(check, timeout), (f"no {STATUS} {want} for $version {version}; last "
                                  f"{seen[-1:]}\n{agent.log_tail()}")
    return state(emu, shadow)


def set_desired(emu, desired, shadow=None):
    """A service's update of state.desired; returns the shadow version it made."""
    status, doc = emu.update_shadow({"state": {"desired": desired}}, name=shadow)
    return doc["version"]


def start(agent, emu, apply=None):
    if apply is not None:
        agent.configure("apply", "command", apply.command)
    agent.start()
    emu.wait_connected(THING)
    emu.wait_requests("get", 1)


def updates(emu):
    return emu.counters()["byClient"].get(THING, {}).get("update", 0)


def test_first_apply_names_the_desired_change(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    v = set_desired(emu, {"configId": 1, "sendFrequency": "5m"})
    s = wait_status(emu, agent, "success", v)
    assert props(s["reported"]) == {"configId": 1, "sendFrequency": "5m"}, s
    assert apply.inputs() == [{"configId": 1, "sendFrequency": "5m"}]
    assert apply.calls()[0]["env"]["TWIN_DESIRED_VERSION"] == str(v)
    st = agent.status()
    assert st["dialect"] == "aws" and st["connected"] and st["configId"] == 1, st


def test_reports_do_not_answer_themselves(emu, agent, make_apply):
    """Every report bumps the shadow version; had the agent taken the current version as the
    desired $version, each report would be a new request and it would answer itself forever."""
    start(agent, emu, make_apply())
    v = set_desired(emu, {"configId": 1, "x": 1})
    wait_status(emu, agent, "success", v)
    before = updates(emu)
    settle(10.0)
    assert updates(emu) == before, (before, updates(emu))
    assert emu.shadow()["version"] == v + 2, emu.shadow()  # pending and success, no more


def test_no_reapply_on_reconnect_or_restart(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    v = set_desired(emu, {"configId": 1, "x": 1})
    wait_status(emu, agent, "success", v)
    version = emu.shadow()["version"]

    mark = emu.log_mark()
    emu.drop(THING)
    emu.wait_connected(THING, since=mark)
    agent.stop()
    agent.start()
    emu.wait_connected(THING, since=mark + 1)
    settle(1.5)
    assert len(apply.calls()) == 1, apply.calls()
    # Nothing new to say: no update at all, so the shadow version stands.
    assert emu.shadow()["version"] == version, emu.shadow()
    assert agent.read_state()["dialects"]["aws"]["desiredVersion"] == v


def test_change_while_offline_is_applied_after_reconnect(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    v1 = set_desired(emu, {"configId": 1, "x": 1})
    wait_status(emu, agent, "success", v1)
    emu.refuse_connects()
    emu.drop(THING)
    emu.wait_disconnected(THING)
    v2 = set_desired(emu, {"configId": 2, "x": 2})
    emu.lift_refusal()
    s = wait_status(emu, agent, "success", v2, timeout=30)
    assert props(s["reported"]) == {"configId": 2, "x": 2}, s


def test_change_while_stopped_is_applied_after_restart(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    v1 = set_desired(emu, {"configId": 1, "x": 1})
    wait_status(emu, agent, "success", v1)
    agent.stop()
    v2 = set_desired(emu, {"configId": 2, "x": 2})
    agent.start()
    wait_status(emu, agent, "success", v2)
    assert [i["configId"] for i in apply.inputs()] == [1, 2]


def test_removed_property_leaves_reported(emu, agent, make_apply):
    start(agent, emu, make_apply())
    v1 = set_desired(emu, {"configId": 1, "keep": "k", "drop": "d"})
    wait_status(emu, agent, "success", v1)
    v2 = set_desired(emu, {"configId": 2, "drop": None})
    s = wait_status(emu, agent, "success", v2)
    assert props(s["reported"]) == {"configId": 2, "keep": "k"}, s


@pytest.mark.parametrize("code", [409, 429, 500])
def test_rejected_update_is_retried(emu, agent, code):
    start(agent, emu)
    emu.inject_errors(count=1, code=code, kind="update")
    v = set_desired(emu, {"configId": 1, "x": 1})
    wait_status(emu, agent, "success", v, timeout=30)
    assert f"with {code}" in agent.log_text() and "trying again" in agent.log_text()
    agent.assert_alive()


def test_refused_update_is_a_problem_not_a_loop(emu, agent):
    start(agent, emu)
    emu.inject_errors(count=1, code=400, kind="update", message="State contains an invalid node")
    before = updates(emu)
    set_desired(emu, {"configId": 1, "x": 1})
    assert poll(lambda: "refused the reported state" in agent.log_text(), 15), agent.log_tail()
    settle(1.5)
    assert updates(emu) == before + 1
    assert "400" in (agent.status()["lastError"] or ""), agent.status()


def test_unknown_certificate_is_refused_with_backoff(tmp_path, emu):
    crt, key = emu.pki.client("stranger", cn="stranger")
    agent = aws_agent(tmp_path, emu, cert=(crt, key))
    try:
        mark = emu.log_mark()
        agent.start()
        assert poll(lambda: len([e for e in emu.log(mark) if e.get("event") == "refused"]) >= 3,
                    30), emu.log(mark)
        refused = [e for e in emu.log(mark) if e.get("event") == "refused"]
        # Backed off ([1,2] s, then [2,4] s): the attempts spread out.
        assert refused[2]["time"] - refused[0]["time"] >= 2500, refused
        text = agent.log_text()
        assert "Cannot connect" in text and "refused" in text, text
        assert not agent.status()["connected"]
        agent.assert_alive()
    finally:
        agent.cleanup()


def test_named_shadow_leaves_the_classic_one_alone(tmp_path, emu, make_apply):
    agent = aws_agent(tmp_path, emu, shadow="config")
    try:
        apply = make_apply()
        start(agent, emu, apply)
        v = set_desired(emu, {"configId": 5}, shadow="config")
        wait_status(emu, agent, "success", v, shadow="config")
        assert apply.inputs() == [{"configId": 5}]
        assert not emu.shadow().get("exists"), emu.shadow()
    finally:
        agent.cleanup()


def test_no_shadow_yet_is_nothing_desired(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    settle(0.5)
    assert apply.calls() == []
    assert "has no desired document" in agent.log_text(), agent.log_tail()
    v = set_desired(emu, {"configId": 1})
    wait_status(emu, agent, "success", v)


def test_desired_over_the_depth_limit_is_refused(emu, agent, make_apply):
    apply = make_apply()
    start(agent, emu, apply)
    # Six levels inside desired is AWS's maximum; the emulator takes it, twind too.
    v = set_desired(emu, {"configId": 1, "a": {"b": {"c": {"d": {"e": 1}}}}})
    wait_status(emu, agent, "success", v)
    assert len(apply.calls()) == 1
