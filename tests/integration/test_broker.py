# SPDX-License-Identifier: MIT
"""The broker comes and goes: the agent reconnects and republishes from local state, survives
a broker that is down at start, and its MQTT will reports it offline when it vanishes."""

import json

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


def publish_connection(service, doc):
    """Publishes on the device's connection topic, retained, as a broker publishing a will."""
    info = service.client.publish(service.t_connection, json.dumps(doc).encode(), qos=1,
                                  retain=True)
    info.wait_for_publish(10)
    assert info.is_published()


def test_a_stale_offline_while_connected_is_answered_with_online(agent, service):
    """A cluster node that took the device's old node for dead publishes the device's will
    while it is connected elsewhere (tests/brokers/test_aedes_cluster.py): the agent sends its
    online document again, a bounded number of times per connection. The retained offline
    that a new connection finds (the last run's goodbye) costs no second online document."""
    agent.start()
    service.wait_connection("online")
    mark = service.connection_mark()
    agent.stop()
    service.wait_connection("offline", mark)
    cmark = service.connection_mark()
    agent.start()
    service.wait_connection("online", cmark)
    settle(0.5)
    onlines = [d for d in service.connection_since(cmark) if d.get("state") == "online"]
    assert len(onlines) == 1, service.connection_since(cmark)

    for i in range(REANNOUNCE_MAX):
        mark = service.connection_mark()
        publish_connection(service, {"state": "offline"})
        service.wait_connection("online", mark + 1)
        # The same document as at the connection's start: the device did not reconnect.
        assert service.connection_since(mark)[-1] == onlines[0], service.connection_since(mark)
    assert agent.log_text().count("announcing online again") == REANNOUNCE_MAX
    # Past the bound it stops answering and says so once.
    mark = service.connection_mark()
    publish_connection(service, {"state": "offline"})
    publish_connection(service, {"state": "offline"})
    settle(1)
    assert [d["state"] for d in service.connection_since(mark)] == ["offline", "offline"]
    assert agent.log_text().count("no longer answering it") == 1, agent.log_tail()
    agent.assert_alive()


REANNOUNCE_MAX = 5


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
