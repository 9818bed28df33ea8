# SPDX-License-Identifier: MIT
"""A failing or hanging apply command: failed with the reason, the old configuration stays
applied and reported, the failure is not retried, and a later good document applies."""

import os

import pytest

from twinlib import poll, props, settle

GOOD = {"$version": 1, "configId": 1, "mode": "a"}
BAD = {"$version": 2, "configId": 2, "mode": "b"}


@pytest.fixture
def apply(agent, service, make_apply):
    """An agent that applied GOOD with a succeeding command; returns the ApplyScript."""
    script = make_apply()
    agent.configure("apply", "command", script.command)
    agent.configure("apply", "timeout", 2)
    agent.start()
    service.wait_connection("online")
    service.publish(GOOD)
    service.wait_status("success", 1)
    return script


def assert_still_good(agent, doc):
    assert props(doc) == props(GOOD), doc
    assert agent.read_state()["applied"] == props(GOOD)
    agent.assert_alive()


def test_nonzero_exit_fails_with_stderr_tail(agent, service, apply):
    # More stderr than the 1 KiB tail: the start is cut, the end is kept.
    apply.behave(exit=3, stderr="THE-START " + "x" * 4000 + " disk-on-fire")
    mark = service.mark()
    service.publish(BAD)
    doc = service.wait_status("failed", 2, mark)
    err = doc["$status"].get("error", "")
    assert "disk-on-fire" in err, err
    assert "3" in err, err
    assert "THE-START" not in err, err
    assert len(err) < 2048, len(err)
    assert doc["$status"].get("configId") == 2, doc
    assert "pendingConfig" not in doc["$status"], doc
    assert_still_good(agent, doc)
    assert "disk-on-fire" in agent.log_text()


def test_timeout_kills_and_fails(agent, service, apply):
    apply.behave(sleep=60)
    mark = service.mark()
    service.publish(BAD)
    doc = service.wait_status("failed", 2, mark, timeout=15)
    err = doc["$status"].get("error", "")
    assert "timed out" in err, err
    assert_still_good(agent, doc)
    pid = apply.calls()[-1]["pid"]
    # Killed, and reaped by the agent: no process (not even a zombie) is left.
    assert poll(lambda: not os.path.exists(f"/proc/{pid}"), 5), f"apply command {pid} still exists"


@pytest.mark.parametrize("how", ["restart", "reconnect"])
def test_failure_not_retried(agent, service, apply, broker, how):
    apply.behave(exit=1, stderr="nope")
    mark = service.mark()
    service.publish(BAD)
    service.wait_status("failed", 2, mark)
    assert len(apply.calls()) == 2
    # From now on the command would succeed: a retry would show as a third call.
    apply.behave()

    cmark = service.connection_mark()
    mark = service.mark()
    if how == "restart":
        assert agent.stop() == 0
        agent.start()
    else:
        broker.stop()
        broker.start()
        service.wait_connected()
        service.publish(BAD)  # the restarted broker lost it
    service.wait_connection("online", cmark, timeout=20)
    # The failure stands and is reported again from local state.
    doc = service.wait_status("failed", 2, mark, timeout=20)
    assert_still_good(agent, doc)
    settle(1.5)
    assert len(apply.calls()) == 2, apply.calls()
    last = service.last_reported()
    assert last["$status"]["state"] == "failed", last


def test_later_good_document_applies(agent, service, apply):
    apply.behave(exit=1, stderr="nope")
    mark = service.mark()
    service.publish(BAD)
    service.wait_status("failed", 2, mark)
    apply.behave()
    mark = service.mark()
    service.publish({"$version": 3, "configId": 3, "mode": "c"})
    doc = service.wait_status("success", 3, mark)
    assert props(doc) == {"configId": 3, "mode": "c"}, doc
    assert "error" not in doc["$status"], doc
    assert agent.read_state()["applied"] == {"configId": 3, "mode": "c"}
    assert len(apply.calls()) == 3
