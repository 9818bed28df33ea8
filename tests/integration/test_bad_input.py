# SPDX-License-Identifier: MIT
"""Bad desired input is refused (protocol.md, "The desired document"): failed with an error
naming the problem, the agent keeps running, the applied state is untouched."""

import json

import pytest

from twinlib import poll, props, settle, start_agent

GOOD = {"$version": 1, "configId": 1, "keep": "me"}


def nested(levels):
    """A chain of `levels` nested objects: nested(1) == {}."""
    x = {}
    for _ in range(levels - 1):
        x = {"a": x}
    return x


def dumps(doc):
    return json.dumps(doc).encode()


# (id, payload, substrings of which the error must contain one, the $version it carries or None)
CASES = [
    ("not-json", b'{"$version": 2, "configId": ', ["JSON"], None),
    ("array", b'[{"$version": 2}]', ["object"], None),
    ("string", b'"hello"', ["object"], None),
    (
        "too-large",
        dumps({"$version": 2, "configId": 2, "blob": "x" * 40960}),
        ["32768", "32 KiB", "too large"],
        None,
    ),
    # The document itself is level 1: 1 + 10 nested levels is one too many.
    ("depth-11", dumps({"$version": 2, "configId": 2, "a": nested(10)}), ["deep", "depth", "level"], None),
    (
        "depth-11-array",
        dumps({"$version": 2, "configId": 2, "a": [[[[[[[[[[1]]]]]]]]]]}),
        ["deep", "depth", "level"],
        None,
    ),
    ("version-missing", dumps({"configId": 2}), ["$version"], None),
    ("version-negative", dumps({"$version": -1, "configId": 2}), ["$version"], None),
    ("version-string", dumps({"$version": "2", "configId": 2}), ["$version"], None),
    ("version-float", dumps({"$version": 1.5, "configId": 2}), ["$version"], None),
    ("version-null", dumps({"$version": None, "configId": 2}), ["$version"], None),
    ("dollar-key", dumps({"$version": 2, "configId": 2, "$foo": 1}), ["$foo"], 2),
    ("dollar-key-nested", dumps({"$version": 2, "configId": 2, "a": {"b": {"$bar": 1}}}), ["$bar"], 2),
    ("dollar-key-in-array", dumps({"$version": 2, "configId": 2, "a": [{"$baz": 1}]}), ["$baz"], 2),
    ("invalid-utf8", b'{"$version": 2, "configId": "\xff\xfe"}', ["UTF-8"], None),
    ("nul-byte", b'{"$version": 2, "configId": "a\x00b"}', ["NUL"], None),
]


@pytest.mark.parametrize("payload,needles,version", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_desired_refused(agent, service, make_apply, payload, needles, version):
    apply = make_apply()
    start_agent(agent, service, apply, GOOD)
    state_before = agent.read_state()

    mark = service.mark()
    service.publish_raw(payload)
    doc = service.wait_failed(mark)
    st = doc["$status"]
    err = st.get("error", "")
    assert any(n in err for n in needles), f"error {err!r} names none of {needles}"
    assert "\n" not in err, err
    if version is not None:
        assert st.get("desiredVersion") == version, st
    else:
        assert st.get("desiredVersion") in (None, 2), st
    assert "pendingConfig" not in st, st

    # Nothing was applied or touched.
    assert props(doc) == props(GOOD), doc
    assert len(apply.calls()) == 1, apply.calls()
    assert agent.read_state()["applied"] == state_before["applied"]
    agent.assert_alive()
    # The log says it too.
    assert any(n in agent.log_text() for n in needles), agent.log_tail()

    # A good document still applies.
    mark = service.mark()
    service.publish({"$version": 3, "configId": 3, "keep": "new"})
    doc = service.wait_status("success", 3, mark)
    assert props(doc) == {"configId": 3, "keep": "new"}, doc
    assert len(apply.calls()) == 2, apply.calls()


def test_documents_at_the_limits_apply(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply)

    # Exactly 10 levels (the document is level 1) is allowed.
    deep = {"$version": 1, "configId": 1, "a": nested(9)}
    mark = service.mark()
    service.publish(deep)
    doc = service.wait_reported(
        lambda d: (d.get("$status") or {}).get("state") in ("success", "failed"),
        "an answer to the 10-level document",
        mark,
    )
    assert doc["$status"]["state"] == "success", doc
    assert props(doc) == props(deep)

    # Exactly 32768 bytes is allowed.
    big = {"$version": 2, "configId": 2, "blob": ""}
    big["blob"] = "y" * (32768 - len(dumps(big)))
    payload = dumps(big)
    assert len(payload) == 32768
    mark = service.mark()
    service.publish_raw(payload)
    doc = service.wait_reported(
        lambda d: (d.get("$status") or {}).get("desiredVersion") == 2
        and d["$status"]["state"] in ("success", "failed"),
        "an answer to the 32768-byte document",
        mark,
    )
    assert doc["$status"]["state"] == "success", doc
    assert props(doc) == props(big)
    assert apply.inputs()[-1] == props(big)


def test_deleted_desired_keeps_applied(agent, service, make_apply):
    """An empty retained payload deletes the desired document on the broker: the device keeps
    what it runs and reports no failure (protocol.md, "Agent behaviour")."""
    from twinlib import poll

    apply = make_apply()
    start_agent(agent, service, apply, GOOD)

    mark = service.mark()
    service.publish_raw(b"")
    assert poll(lambda: "removed" in agent.log_text(), 10), agent.log_tail()
    agent.assert_alive()
    failed = [d for d in service.reported_since(mark) if (d.get("$status") or {}).get("state") == "failed"]
    assert not failed, failed

    # A restart sees no desired document at all and keeps the applied configuration.
    agent.stop()
    mark = service.mark()
    agent.start()
    doc = service.wait_reported(lambda d: True, "the reported document after restart", mark)
    assert props(doc) == props(GOOD), doc
    assert doc["$status"]["state"] == "success", doc
    assert len(apply.calls()) == 1, apply.calls()


def test_refusal_without_version_is_not_repeated(agent, service, make_apply):
    """A refused document without a readable $version, redelivered on restart, is not refused and
    reported again: the failure stands as it was."""
    apply = make_apply()
    start_agent(agent, service, apply, GOOD)
    mark = service.mark()
    service.publish_raw(b'{"configId": 8}')
    doc = service.wait_failed(mark)
    assert "desiredVersion" not in doc["$status"], doc

    agent.stop()
    mark = service.mark()
    agent.start()
    service.wait_connection("online")
    service.wait_reported(lambda d: True, "the reported document after restart", mark)
    assert poll(lambda: agent.status()["connected"], 10)
    settle(1.0)
    assert agent.status()["counters"]["failures"] == 0, agent.log_tail()
    assert len(service.reported_since(mark)) == 1, service.reported_since(mark)
    assert len(apply.calls()) == 1
