# SPDX-License-Identifier: MIT
"""Coalescing (protocol.md, "Agent behaviour" 6): a burst of desired documents during an apply
runs at most two applies, the running one and the newest."""

from twinlib import poll, props


def test_burst_runs_first_and_newest_only(agent, service, make_apply):
    apply = make_apply(sleep=1.5)
    agent.configure("apply", "command", apply.command)
    agent.start()
    service.wait_connection("online")
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
