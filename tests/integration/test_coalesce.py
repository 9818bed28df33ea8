# SPDX-License-Identifier: MIT
"""Coalescing (protocol.md, "Agent behaviour" 7): documents that arrive before the agent acts
on them are skipped for the newest; a burst runs far fewer applies than it has documents."""

import json

from twinlib import poll, props, start_agent


def test_burst_runs_first_and_newest_only(agent, service, make_apply):
    apply = make_apply(sleep=1.5)
    start_agent(agent, service, apply)
    mark = service.mark()
    service.publish({"$version": 1, "configId": 1, "n": 1})
    assert poll(lambda: len(apply.calls()) == 1, 15), "the first apply did not start"

    for v in range(2, 22):
        service.publish({"$version": v, "configId": v, "n": v})

    done = service.wait_status("success", 21, mark, timeout=20)
    assert props(done) == {"configId": 21, "n": 21}, done
    assert apply.inputs() == [{"configId": 1, "n": 1}, {"configId": 21, "n": 21}]

    answered = [
        (d.get("$status") or {}).get("desiredVersion") for d in service.reported_since(mark)
    ]
    # The intermediate documents were skipped, never reported individually.
    assert not set(answered) & set(range(2, 21)), answered
    assert 1 in answered, answered
    assert agent.read_state()["desiredVersion"] == 21
    agent.assert_alive()


def test_burst_without_apply_command_coalesces(agent, service):
    """No apply command: each accepted document costs a state save, so a burst that arrives
    faster than the disk must not be saved once per document."""
    agent.start()
    service.wait_connection("online")
    mark = service.mark()
    n = 300
    # Back to back, not waiting for each acknowledgement: a burst.
    infos = [
        service.client.publish(service.t_desired, json.dumps({"$version": v, "configId": v}),
                               qos=1, retain=True)
        for v in range(1, n + 1)
    ]
    for info in infos:
        info.wait_for_publish(10)

    done = service.wait_status("success", n, mark, timeout=30)
    assert props(done) == {"configId": n}, done
    applies = agent.status()["counters"]["applies"]
    # mosquitto releases QoS 1 messages 20 at a time, and everything that has arrived is
    # coalesced: about n / 20 applies (one per document, or one per packet read, is far more).
    assert 1 <= applies <= n // 10, f"{applies} applies for a burst of {n}"
    assert agent.read_state()["desiredVersion"] == n
    agent.assert_alive()


def test_deleting_desired_skips_the_held_document(agent, service, make_apply):
    """The service removes the desired document while an apply runs: the document that arrived
    before the removal is not applied when the apply ends (the newest word was "nothing")."""
    apply = make_apply(sleep=1.5)
    start_agent(agent, service, apply)
    mark = service.mark()
    service.publish({"$version": 1, "configId": 1})
    assert poll(lambda: len(apply.calls()) == 1, 15), "the first apply did not start"
    service.publish({"$version": 2, "configId": 2})
    service.publish_raw(b"")

    service.wait_status("success", 1, mark)
    assert poll(lambda: "removed" in agent.log_text(), 10), agent.log_tail()
    assert agent.status()["state"] == "success"
    assert len(apply.calls()) == 1, apply.calls()
    assert agent.control("twin")["result"]["desired"] is None
    assert agent.control("reapply")["error"]["name"] == "NoDesired"


def test_reapply_during_an_apply_is_not_lost(agent, service, make_apply):
    """A reapply asked for while an apply runs still runs, also when a document that asks for no
    change arrived meanwhile."""
    apply = make_apply()
    start_agent(agent, service, apply, {"$version": 1, "configId": 1})
    apply.behave(sleep=1.5)
    mark = service.mark()
    service.publish({"$version": 2, "configId": 2})
    assert poll(lambda: len(apply.calls()) == 2, 15), "the second apply did not start"
    assert agent.control("reapply")["result"]
    service.publish({"$version": 3, "configId": 2})  # asks for no change
    service.wait_status("success", 3, mark, timeout=20)
    assert poll(lambda: len(apply.calls()) == 3, 15), apply.calls()
    assert apply.inputs()[2] == {"configId": 2}
