# SPDX-License-Identifier: MIT
"""Redelivery and the change rule: an applied configuration is never applied again, a new
request is told from a redelivery by its content (protocol.md, "Agent behaviour" 2 to 5), and
the reported $version only grows."""

import pytest

from twinlib import props, settle, start_agent

DOC = {"$version": 1, "configId": 1, "sendFrequency": "5m"}


@pytest.fixture
def applied(agent, service, make_apply):
    """An agent that has applied DOC once; returns its ApplyScript."""
    apply = make_apply()
    start_agent(agent, service, apply, DOC)
    assert len(apply.calls()) == 1
    return apply


def test_no_reapply_on_redelivery(agent, service, applied):
    service.publish(DOC)
    service.publish(DOC)
    settle(1.5)
    assert len(applied.calls()) == 1, applied.calls()
    last = service.last_reported()
    assert props(last) == props(DOC) and last["$status"]["state"] == "success", last
    agent.assert_alive()


def test_no_reapply_on_reconnect(agent, service, applied, broker):
    cmark = service.connection_mark()
    mark = service.mark()
    broker.stop()
    broker.start()
    service.wait_connected()
    # The restarted broker lost everything; the service writes desired again, as a back end
    # with its own store would, and the agent sees it again after its reconnect.
    service.publish(DOC)
    service.wait_connection("online", cmark, timeout=20)
    # The agent republishes its reported document from local state...
    doc = service.wait_reported(
        lambda d: props(d) == props(DOC) and (d.get("$status") or {}).get("state") == "success",
        "reported republished after reconnect",
        mark,
        timeout=20,
    )
    assert doc["$status"]["desiredVersion"] == 1, doc
    settle(1.5)
    # ...and does not apply again.
    assert len(applied.calls()) == 1, applied.calls()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_no_reapply_on_restart(agent, service, applied, how):
    if how == "sigterm":
        assert agent.stop() == 0
    else:
        agent.kill()
    cmark = service.connection_mark()
    mark = service.mark()
    agent.start()
    service.wait_connection("online", cmark)
    # The retained desired is delivered again on subscribe; reported comes back from the
    # state file with the same answer.
    doc = service.wait_status("success", 1, mark)
    assert props(doc) == props(DOC), doc
    settle(1.5)
    assert len(applied.calls()) == 1, applied.calls()
    for d in service.reported_since(mark):
        assert (d.get("$status") or {}).get("state") != "pending", d


def test_changed_props_same_config_id_not_applied(agent, service, applied):
    mark = service.mark()
    service.publish({"$version": 2, "configId": 1, "sendFrequency": "1m"})
    # Answered for its $version, but nothing changes on the device.
    doc = service.wait_status("success", 2, mark)
    assert props(doc) == props(DOC), doc
    assert doc["$status"].get("configId") == 1, doc
    settle(1)
    assert len(applied.calls()) == 1, applied.calls()
    assert agent.read_state()["applied"] == props(DOC)


def test_new_version_same_config_answered_without_apply(agent, service, applied):
    mark = service.mark()
    service.publish({**DOC, "$version": 5})
    doc = service.wait_status("success", 5, mark)
    assert props(doc) == props(DOC), doc
    settle(1)
    assert len(applied.calls()) == 1, applied.calls()
    assert agent.read_state()["desiredVersion"] == 5


def test_without_config_id_props_decide(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)
    service.publish({"$version": 1, "a": 1})
    service.wait_status("success", 1)
    assert apply.inputs() == [{"a": 1}]

    # Equal properties: answered, not applied.
    mark = service.mark()
    service.publish({"$version": 2, "a": 1})
    doc = service.wait_status("success", 2, mark)
    assert props(doc) == {"a": 1}, doc
    settle(1)
    assert apply.inputs() == [{"a": 1}]

    # Different properties: applied.
    mark = service.mark()
    service.publish({"$version": 3, "a": 2})
    doc = service.wait_status("success", 3, mark)
    assert props(doc) == {"a": 2}, doc
    assert apply.inputs() == [{"a": 1}, {"a": 2}]


def test_reported_version_strictly_grows(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)
    for v in (1, 2, 3):
        mark = service.mark()
        service.publish({"$version": v, "configId": v})
        service.wait_status("success", v, mark)
    assert agent.stop() == 0
    mark = service.mark()
    agent.start()
    service.wait_reported(lambda d: True, "reported after restart", mark)
    mark = service.mark()
    service.publish({"$version": 4, "configId": 4})
    service.wait_status("success", 4, mark)

    versions = [d["$version"] for d in service.reported_since()]
    # Each apply published at least pending + success, plus one on each connect.
    assert len(versions) >= 9, versions
    assert all(isinstance(v, int) for v in versions), versions
    assert all(a < b for a, b in zip(versions, versions[1:])), versions


def test_version_going_backwards_is_accepted(agent, service, applied):
    # The service side lost its store and starts counting again: the change rule decides.
    mark = service.mark()
    service.publish({"$version": 0, "configId": 2, "sendFrequency": "1m"})
    doc = service.wait_status("success", 0, mark)
    assert props(doc) == {"configId": 2, "sendFrequency": "1m"}, doc
    assert len(applied.calls()) == 2
    assert "backwards" in agent.log_text().lower(), agent.log_tail()


def test_new_request_reusing_version_and_config_id_is_answered(agent, service, applied):
    """A service side that lost its documents counts from 1 again: a document with the last
    answered $version and configId but other properties is a new request, not a redelivery. It
    asks for no change (same configId), so it is answered without applying, and says so."""
    mark = service.mark()
    service.publish({"$version": 1, "configId": 1, "sendFrequency": "1h"})
    doc = service.wait_reported(
        lambda d: (d.get("$status") or {}).get("noChange") is True,
        "an answer without applying ($status.noChange)",
        mark,
    )
    assert doc["$status"]["state"] == "success" and doc["$status"]["desiredVersion"] == 1, doc
    assert props(doc) == props(DOC), doc
    assert len(applied.calls()) == 1, applied.calls()
    # Its redelivery is not answered again.
    mark = service.mark()
    service.publish({"$version": 1, "configId": 1, "sendFrequency": "1h"})
    settle(1.0)
    assert service.reported_since(mark) == [], service.reported_since(mark)


def test_failed_request_then_new_content_with_same_version_is_applied(agent, service, make_apply):
    apply = make_apply(exit=3, stderr="no modem")
    start_agent(agent, service, apply)
    service.publish({"$version": 1, "configId": 1, "sendFrequency": "5m"})
    service.wait_failed()
    apply.behave(exit=0)
    mark = service.mark()
    service.publish({"$version": 1, "configId": 1, "sendFrequency": "1h"})
    doc = service.wait_status("success", 1, mark)
    assert props(doc) == {"configId": 1, "sendFrequency": "1h"}, doc
    assert apply.inputs() == [
        {"configId": 1, "sendFrequency": "5m"},
        {"configId": 1, "sendFrequency": "1h"},
    ]


def test_redelivery_of_a_failure_after_restart_is_not_retried(agent, service, make_apply):
    apply = make_apply(exit=3)
    start_agent(agent, service, apply)
    service.publish({"$version": 1, "configId": 1, "sendFrequency": "5m"})
    service.wait_failed()
    assert agent.read_state()["answered"].startswith("sha256:"), agent.read_state()
    apply.behave(exit=0)
    agent.stop()
    mark = service.connection_mark()
    agent.start()
    service.wait_connection("online", mark)
    settle(1.0)
    assert len(apply.calls()) == 1, apply.calls()
