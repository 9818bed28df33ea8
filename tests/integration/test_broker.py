# SPDX-License-Identifier: MIT
"""The broker comes and goes: the agent reconnects and republishes from local state, survives
a broker that is down at start, and its MQTT will reports it offline when it vanishes."""

import twinlib
from twinlib import props, settle, start_agent

DOC = {"$version": 1, "configId": 1, "sendFrequency": "5m"}


def test_broker_restart_agent_reconnects_and_republishes(agent, service, broker, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply, DOC)

    cmark = service.connection_mark()
    mark = service.mark()
    broker.stop()
    settle(1)
    agent.assert_alive()
    broker.start()
    service.wait_connected()

    # The restarted broker starts empty (persistence false): whatever arrives now was
    # published again by the agent.
    service.wait_connection("online", cmark, timeout=20)
    doc = service.wait_status("success", 1, mark, timeout=20)
    assert props(doc) == props(DOC), doc
    assert len(apply.calls()) == 1

    # The agent subscribed again: a new desired document applies.
    mark = service.mark()
    service.publish({"$version": 2, "configId": 2, "sendFrequency": "1m"})
    doc = service.wait_status("success", 2, mark)
    assert props(doc) == {"configId": 2, "sendFrequency": "1m"}, doc
    assert len(apply.calls()) == 2


def test_broker_down_at_start(agent, service, broker, make_apply):
    apply = make_apply()
    agent.configure("apply", "command", apply.command)
    broker.stop()
    agent.start()
    settle(2.5)
    # Not fatal: the agent keeps retrying.
    agent.assert_alive()

    broker.start()
    service.wait_connected()
    service.publish(DOC)
    service.wait_connection("online", timeout=20)
    doc = service.wait_status("success", 1, timeout=20)
    assert props(doc) == props(DOC), doc
    assert apply.inputs() == [props(DOC)]


def test_will_reports_offline_when_agent_vanishes(agent, service):
    # keepalive 5 s (the fixture's): the broker notices within 1.5 keepalives.
    agent.start()
    service.wait_connection("online")
    cmark = service.connection_mark()
    agent.kill()
    service.wait_connection("offline", cmark, timeout=15)
    will = service.connection_since(cmark)[-1]
    online = service.connection_since(0)[-2]
    # The will names when the lost connection began: the device was seen after that.
    assert set(will) == {"state", "connectedSince"} and will["state"] == "offline", will
    assert online["state"] == "online" and will["connectedSince"] <= online["since"], (will, online)


def test_two_agents_with_the_same_device_id_are_told_apart(agent, service, broker, tmp_path):
    """A cloned image: two agents with one device id knock each other off the broker. Beyond
    "connection closed by the broker", the log and lastError say what is probably going on."""
    twin = twinlib.Agent(str(tmp_path / "clone"), broker, device_id=agent.device_id)
    hint = "another client probably uses the same client id (dev-1)"
    try:
        agent.start()
        service.wait_connection("online")
        twin.start()
        assert twinlib.poll(lambda: hint in agent.log_text() or hint in twin.log_text(), 40), (
            agent.log_tail() + "\n---- the clone ----\n" + twin.log_tail()
        )
        seen = [a for a in (agent, twin) if hint in a.log_text()]
        assert any(hint in (a.status()["lastError"] or "") for a in seen if a.running()), [
            a.status() for a in seen if a.running()
        ]
    finally:
        twin.cleanup()
