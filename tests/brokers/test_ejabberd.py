# SPDX-License-Identifier: MIT
"""The standard dialect's core scenarios on a second implementation: ejabberd 23.01 (mod_mqtt),
one node, with a user name and password (it takes no anonymous clients). One broker for the
module; every test uses its own device ids."""

import json
import os
import signal

import paho.mqtt.client as mqtt
import pytest

import brokerlib
from twinlib import poll, props, settle, start_agent

ROOT = "twins"


@pytest.fixture(scope="module")
def ejabberd(tmp_path_factory):
    b = brokerlib.Ejabberd(str(tmp_path_factory.mktemp("ejabberd")))
    b.start()
    print(f"ejabberd accepted after {b.started_in:.1f} s")
    yield b
    b.stop()


def publisher(broker, client_id):
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(broker.username, broker.password)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c


def publish_retained(c, topic, doc):
    info = c.publish(topic, json.dumps(doc).encode(), qos=1, retain=True)
    info.wait_for_publish(10)
    assert info.is_published()


def test_refuses_wrong_password(ejabberd, tmp_path):
    r = brokerlib.twinctl(ejabberd.url, "--username", ejabberd.username, "get", "x")
    assert r.returncode == 8, r.stderr  # access denied: no password
    assert "refused the connection" in r.stderr, r.stderr


def test_apply_report_and_no_reapply_on_reconnect(ejabberd, agents, services, make_apply):
    agent = agents(ejabberd, "ej-apply")
    service = services(ejabberd, agent.device_id, agent)
    apply = make_apply()
    doc = {"$version": 1, "configId": 1, "sendFrequency": "5m"}
    start_agent(agent, service, apply, doc)
    assert apply.inputs() == [props(doc)]
    assert agent.status()["broker"] == f"127.0.0.1:{ejabberd.port}"

    # A second session with the device's client id takes the session over (ejabberd drops the
    # agent's): the agent reconnects, is handed the same desired document, and does not apply
    # it again.
    cmark = service.connection_mark()
    thief = publisher(ejabberd, agent.device_id)
    assert poll(lambda: not agent.status()["connected"] or
                agent.status()["counters"]["reconnects"] >= 1, 10), agent.log_tail()
    thief.loop_stop()
    thief.disconnect()
    assert poll(lambda: agent.status()["counters"]["reconnects"] >= 1, 15), agent.log_tail()
    service.wait_connection("online", cmark, timeout=15)
    assert poll(lambda: agent.status()["connected"], 15)
    settle(1)
    assert len(apply.calls()) == 1, apply.calls()

    # And a restart does not re-apply either.
    agent.stop()
    mark = service.mark()
    agent.start()
    service.wait_status("success", 1, mark)
    settle(1)
    assert len(apply.calls()) == 1


def test_coalescing(ejabberd, agents, services, make_apply):
    agent = agents(ejabberd, "ej-burst")
    service = services(ejabberd, agent.device_id, agent)
    apply = make_apply(sleep=1.0)
    start_agent(agent, service, apply)
    for v in range(1, 21):
        service.publish({"$version": v, "configId": v, "step": v})
    service.wait_status("success", 20, timeout=30)
    calls = apply.inputs()
    assert calls[-1] == {"configId": 20, "step": 20}, calls
    assert len(calls) <= 4, calls  # the first, then the newest held after each apply


def test_twinctl_set_wait_and_get(ejabberd, agents, services, make_apply):
    agent = agents(ejabberd, "ej-set")
    service = services(ejabberd, agent.device_id, agent)
    start_agent(agent, service, make_apply())
    r = brokerlib.twinctl(ejabberd, "--timeout", "20", "set", agent.device_id,
                          "sendFrequency=1m", "--wait")
    assert r.returncode == 0, r.stderr
    assert "applied desired $version 1" in r.stdout, r.stdout
    r = brokerlib.twinctl(ejabberd, "--json", "get", agent.device_id)
    assert r.returncode == 0, r.stderr
    twin = json.loads(r.stdout)
    assert twin["reported"]["sendFrequency"] == "1m", twin
    assert twin["connection"]["state"] == "online", twin


def test_twinctl_list_with_filters(ejabberd):
    # A small fleet written directly: ok (applied, online), pend (not answered yet), bad
    # (failed, offline).
    c = publisher(ejabberd, "fleet-writer")
    try:
        for dev, dv, status, conn in (
            ("ej-l-ok", 2, {"state": "success", "desiredVersion": 2, "configId": 2}, "online"),
            ("ej-l-pend", 3, {"state": "success", "desiredVersion": 2, "configId": 2}, "online"),
            ("ej-l-bad", 2, {"state": "failed", "desiredVersion": 2, "configId": 2,
                             "error": "boom"}, "offline"),
        ):
            publish_retained(c, f"{ROOT}/{dev}/desired", {"$version": dv, "configId": dv})
            publish_retained(c, f"{ROOT}/{dev}/reported",
                             {"$version": 5, "configId": 2, "$status": status})
            publish_retained(c, f"{ROOT}/{dev}/connection", {"state": conn})
    finally:
        c.loop_stop()
        c.disconnect()

    def listed(*flags):
        r = brokerlib.twinctl(ejabberd, "--json", "list", *flags)
        assert r.returncode == 0, r.stderr
        return {row["deviceId"]: row for row in json.loads(r.stdout)
                if row["deviceId"].startswith("ej-l-")}

    rows = listed()
    assert set(rows) == {"ej-l-ok", "ej-l-pend", "ej-l-bad"}, rows
    assert rows["ej-l-ok"]["state"] == "success" and rows["ej-l-ok"]["connection"] == "online"
    assert set(listed("--pending")) == {"ej-l-pend"}
    assert set(listed("--failed")) == {"ej-l-bad"}
    assert set(listed("--offline")) == {"ej-l-bad"}
    assert set(listed("--pending", "--failed")) == {"ej-l-pend", "ej-l-bad"}


def test_connection_will(ejabberd, agents, services):
    agent = agents(ejabberd, "ej-will")
    service = services(ejabberd, agent.device_id, agent)
    agent.start()
    service.wait_connection("online")
    cmark = service.connection_mark()
    agent.kill()
    # keepalive 5 s: the broker notices within 1.5 keepalives and publishes the will.
    service.wait_connection("offline", cmark, timeout=20)


def test_payload_of_32_kib(ejabberd, agents, services, make_apply):
    agent = agents(ejabberd, "ej-big")
    service = services(ejabberd, agent.device_id, agent)
    apply = make_apply()
    start_agent(agent, service, apply)
    doc = {"$version": 1, "configId": 1, "blob": ""}
    doc["blob"] = "x" * (32768 - len(json.dumps(doc, separators=(",", ":"))))
    service.publish_raw(json.dumps(doc, separators=(",", ":")).encode())
    service.wait_status("success", 1)
    assert apply.inputs()[-1]["blob"] == doc["blob"]
