# SPDX-License-Identifier: MIT
"""First apply: pending then success, the apply command's input, the state file."""

import re

from twinlib import props, start_agent

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_connect_publishes_online_and_reported_without_status(agent, service):
    agent.start()
    service.wait_connection("online")
    online = [d for d in service.connection_since() if d.get("state") == "online"][0]
    assert ISO_UTC.match(online.get("since", "")), online
    assert online.get("agent", "").startswith("twind"), online
    doc = service.wait_reported(lambda d: True, "a reported document on connect")
    # Nothing was ever answered: no $status, no properties, but a $version.
    assert "$status" not in doc, doc
    assert props(doc) == {}, doc
    assert isinstance(doc.get("$version"), int), doc


def test_first_apply(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)
    mark = service.mark()
    desired = {"$version": 1, "configId": 1, "sendFrequency": "5m", "nested": {"a": [1, 2]}}
    service.publish(desired)

    done = service.wait_status("success", 1, mark)
    assert props(done) == props(desired)
    st = done["$status"]
    assert st["configId"] == 1
    assert "error" not in st and "pendingConfig" not in st, st
    assert ISO_UTC.match(st["updatedAt"]), st

    # pending with the pending config came first.
    seen = service.reported_since(mark)
    states = [(d.get("$status") or {}).get("state") for d in seen]
    assert "pending" in states, seen
    pending = seen[states.index("pending")]
    assert states.index("pending") < states.index("success"), states
    assert pending["$status"]["pendingConfig"] == props(desired), pending
    assert pending["$status"]["desiredVersion"] == 1, pending
    # While pending, reported still shows what runs: nothing yet.
    assert props(pending) == {}, pending

    calls = apply.calls()
    assert len(calls) == 1, calls
    assert apply.inputs() == [props(desired)]
    env = calls[0]["env"]
    assert env.get("TWIN_DEVICE_ID") == agent.device_id, env
    assert env.get("TWIN_CONFIG_ID") == "1", env
    assert env.get("TWIN_DESIRED_VERSION") == "1", env


def test_string_config_id_and_whole_replacement(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)
    service.publish({"$version": 1, "configId": "blue", "a": 1, "b": 2})
    service.wait_status("success", 1)
    mark = service.mark()
    service.publish({"$version": 2, "configId": "green", "a": 3})
    done = service.wait_status("success", 2, mark)
    # Documents replace whole: "b" is gone from what the device runs.
    assert props(done) == {"configId": "green", "a": 3}, done
    assert done["$status"]["configId"] == "green"
    calls = apply.calls()
    assert len(calls) == 2, calls
    # A string configId goes into the environment bare.
    assert calls[1]["env"].get("TWIN_CONFIG_ID") == "green", calls[1]
    assert calls[1]["env"].get("TWIN_DESIRED_VERSION") == "2", calls[1]


def test_state_file_written(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)
    service.publish({"$version": 7, "configId": 3, "sendFrequency": "5m"})
    done = service.wait_status("success", 7)
    st = agent.read_state()
    assert st["format"] == 1, st
    assert st["applied"] == {"configId": 3, "sendFrequency": "5m"}, st
    assert st["desiredVersion"] == 7, st
    # The reserved ceiling covers every $version published.
    assert st["reportedVersion"] >= done["$version"], (st, done)
    assert st["status"]["state"] == "success" and st["status"]["desiredVersion"] == 7, st
    assert st["status"]["configId"] == 3, st


def test_no_apply_command_accepts_as_is(agent, service):
    agent.configure("apply", "command", None)
    agent.start()
    service.wait_connection("online")
    mark = service.mark()
    service.publish({"$version": 4, "configId": 9, "x": True})
    done = service.wait_status("success", 4, mark)
    assert props(done) == {"configId": 9, "x": True}, done
    assert agent.read_state()["applied"] == {"configId": 9, "x": True}
    agent.assert_alive()
