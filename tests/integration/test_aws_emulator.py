# SPDX-License-Identifier: MIT
"""The AWS IoT emulator's harness (awsiot.py) and controls, driven with paho as a device and a
service would: twind's and twinctl's AWS tests rely on every control shown here."""

import json
import shutil
import tempfile

import pytest

import awsiot
from awsiot import AwsIotEmulator, MqttClient

THING = "dev-1"
PREFIX = f"$aws/things/{THING}/shadow"


@pytest.fixture(scope="module")
def pki_dir():
    d = tempfile.mkdtemp(prefix="awspki")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def emu(pki_dir):
    why = awsiot.available()
    if why:
        pytest.skip(why)
    d = tempfile.mkdtemp(prefix="awsemu")
    e = AwsIotEmulator(d, thing=THING, pki_dir=pki_dir)
    e.start()
    yield e
    e.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def clients():
    made = []
    yield made
    for c in made:
        c.close()


def client(clients, emu, client_id, **kw):
    c = MqttClient(emu, client_id, **kw)
    clients.append(c)
    return c


def test_start_registers_certificates_and_logs_connects(emu, clients):
    assert emu.url == f"mqtts://localhost:{emu.mqtt_port}"
    assert emu.startup_seconds is not None and emu.startup_seconds < 10
    svc = client(clients, emu, "svc-1", cert="service").connect()
    svc.subscribe("$aws/events/presence/connected/dev-1", "$aws/events/presence/disconnected/dev-1")
    dev = client(clients, emu, THING).connect()
    entry = emu.wait_connected(THING)
    assert entry["commonName"] == THING and len(entry["certificateId"]) == 64
    ev = svc.wait_message("$aws/events/presence/connected/dev-1")
    assert ev["eventType"] == "connected" and ev["clientId"] == THING
    assert ev["principalIdentifier"] == entry["certificateId"]
    assert ev["ipAddress"] == "127.0.0.1" and ev["versionNumber"] == 0
    assert len(ev["sessionIdentifier"]) == 32 and isinstance(ev["timestamp"], int)
    assert [c["clientId"] for c in emu.clients() if c["clientId"] == THING] == [THING]
    dev.close()
    gone = svc.wait_message("$aws/events/presence/disconnected/dev-1")
    assert gone["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert gone["clientInitiatedDisconnect"] is True
    assert gone["sessionIdentifier"] == ev["sessionIdentifier"]
    assert gone["versionNumber"] == ev["versionNumber"]


def test_wrong_certificates_are_refused(emu, clients):
    # Another CA, or no certificate at all: the TLS handshake is refused.
    emu.pki.ca("rogue-ca")
    rogue = emu.pki.client("rogue", issuer="rogue-ca", cn=THING)
    for cert in (rogue, None):
        mark = emu.log_mark()
        client(clients, emu, THING, cert=cert).connect(wait=False)
        assert emu.wait_refused(mark)["event"] == "tls-refused"
    # Signed by the CA but not registered: CONNACK 7 (AWS's "not authorized").
    stranger = emu.pki.client("stranger", cn="stranger")
    mark = emu.log_mark()
    c = client(clients, emu, "stranger", cert=stranger).connect(wait=False)
    assert emu.wait_refused(mark)["reason"] == "certificate not registered"
    c.wait_disconnect()
    assert c.connacks == [7]
    # The device certificate may act for dev-1 only.
    mark = emu.log_mark()
    c = client(clients, emu, "dev-2").connect(wait=False)
    assert emu.wait_refused(mark)["reason"] == "client id not allowed by policy"
    # A revoked certificate: its connection is dropped and it cannot come back.
    other = emu.pki.client("other", cn="dev-2")
    entry = emu.register_certificate(other[0], client_ids=["dev-2"], things=["dev-2"])
    c = client(clients, emu, "dev-2", cert=other).connect()
    assert emu.revoke_certificate(entry["certificateId"])["dropped"] == 1
    assert emu.wait_disconnected("dev-2")["reason"] == "AUTH_ERROR"
    mark = emu.log_mark()
    client(clients, emu, "dev-2", cert=other).connect(wait=False)
    assert emu.wait_refused(mark)["reason"] == "certificate not registered"


def test_foreign_update_notifies_like_aws_and_requests_are_counted(emu, clients):
    dev = client(clients, emu, THING).connect()
    dev.subscribe(*(f"{PREFIX}/{t}" for t in ("update/delta", "update/documents", "update/accepted",
                                               "update/rejected", "get/accepted", "get/rejected")))
    status, acc = emu.update_shadow({"state": {"desired": {"mode": "cool"}}})
    assert status == 200 and acc["version"] == 1
    delta = dev.wait_message(f"{PREFIX}/update/delta")
    assert delta["state"] == {"mode": "cool"} and delta["version"] == 1
    docs = dev.wait_message(f"{PREFIX}/update/documents")
    assert docs["previous"] is None and docs["current"]["version"] == 1
    assert dev.on(f"{PREFIX}/update/accepted") == [], "a foreign update's answer is the caller's"

    mark = dev.mark()
    dev.publish(f"{PREFIX}/update", {"state": {"reported": {"mode": "cool"}}, "clientToken": "t1"})
    acc = dev.wait_message(f"{PREFIX}/update/accepted", mark=mark)
    assert acc["version"] == 2 and acc["clientToken"] == "t1"
    shadow = emu.wait_shadow(lambda s: s["version"] == 2, "version 2")
    assert shadow["state"] == {"desired": {"mode": "cool"}, "reported": {"mode": "cool"}}

    # A stale version: the update gets 409, a GET carrying it is answered.
    dev.publish(f"{PREFIX}/update",
                {"state": {"reported": {"x": 1}}, "version": 1, "clientToken": "t2"})
    rej = dev.wait_message(f"{PREFIX}/update/rejected", lambda p: p.get("clientToken") == "t2",
                           mark)
    assert rej["code"] == 409 and rej["message"] == "Version conflict"
    dev.publish(f"{PREFIX}/get", {"version": 1, "clientToken": "t3"})
    got = dev.wait_message(f"{PREFIX}/get/accepted", lambda p: p.get("clientToken") == "t3", mark)
    assert got["version"] == 2 and "delta" not in got["state"]

    counters = emu.wait_requests("get", 1)
    assert counters["requests"] == {"get": 1, "update": 2, "delete": 0}
    assert counters["rejected"]["update"] == 1 and counters["foreign"]["update"] == 1
    assert counters["byClient"][THING] == {"get": 1, "update": 2, "delete": 0}
    (conn,) = counters["byConnection"].values()
    assert conn["clientId"] == THING and conn["update"] == 2
    emu.reset_counters()
    assert emu.counters()["requests"]["update"] == 0


def test_named_shadow_and_delete_through_the_control_api(emu, clients):
    dev = client(clients, emu, THING).connect()
    named = f"{PREFIX}/name/cfg"
    dev.subscribe(f"{named}/update/delta", f"{named}/get/rejected")
    emu.update_shadow({"state": {"desired": {"rate": 5}}}, name="cfg")
    assert dev.wait_message(f"{named}/update/delta")["state"] == {"rate": 5}
    assert emu.shadow(name="cfg")["version"] == 1 and not emu.shadow()["exists"]
    status, body = emu.delete_shadow(name="cfg")
    assert status == 200 and body["version"] == 1
    assert emu.shadow(name="cfg") == {"exists": False, "version": 1, "state": {}, "metadata": {}}
    status, err = emu.update_shadow({"state": {"desired": {"rate": 6}}, "version": 1}, name="cfg")
    assert status == 200 and err["version"] == 2, "the version counter survives the delete"
    status, err = emu.update_shadow({"state": {"desired": {"rate": 7}}, "version": 1},
                                    name="cfg", ok=None)
    assert status == 409 and err["code"] == 409
    assert emu.delete_shadow(thing="nothing", ok=None)[0] == 404


def test_injected_errors_and_unanswered_requests(emu, clients):
    dev = client(clients, emu, THING).connect()
    dev.subscribe(*(f"{PREFIX}/{t}" for t in ("update/accepted", "update/rejected",
                                               "get/accepted", "get/rejected")))
    emu.inject_errors(count=2, code=429, kind="update")
    emu.inject_errors(count=1, code=500)
    emu.inject_errors(count=1, drop=True, kind="get")
    for i in range(3):
        dev.publish(f"{PREFIX}/update", {"state": {"reported": {"n": i}}, "clientToken": f"u{i}"})
    codes = [dev.wait_message(f"{PREFIX}/update/rejected",
                              lambda p, i=i: p["clientToken"] == f"u{i}")["code"] for i in range(3)]
    assert codes == [429, 429, 500]
    assert all("timestamp" in p for p in dev.on(f"{PREFIX}/update/rejected"))
    dev.publish(f"{PREFIX}/get", {"clientToken": "g0"})
    dev.publish(f"{PREFIX}/update", {"state": {"reported": {"n": 9}}, "clientToken": "u9"})
    assert dev.wait_message(f"{PREFIX}/update/accepted")["version"] == 1
    counters = emu.counters()
    assert counters["unanswered"] == 1 and counters["injected"] == 3
    assert [p for p in dev.on(f"{PREFIX}/get/accepted") + dev.on(f"{PREFIX}/get/rejected")] == []
    assert emu.call("GET", "/faults")[1] == []


def test_drop_and_refusal_window(emu, clients):
    svc = client(clients, emu, "svc-1", cert="service").connect()
    svc.subscribe("$aws/events/presence/disconnected/dev-1")
    dev = client(clients, emu, THING).connect()
    assert emu.drop(THING) == 1
    dev.wait_disconnect()
    ev = svc.wait_message("$aws/events/presence/disconnected/dev-1")
    assert ev["disconnectReason"] == "API_INITIATED_DISCONNECT"
    assert ev["clientInitiatedDisconnect"] is False
    assert emu.wait_disconnected(THING)["reason"] == "API_INITIATED_DISCONNECT"

    emu.refuse_connects()  # until lifted
    mark = emu.log_mark()
    c = client(clients, emu, THING).connect(wait=False)
    assert emu.wait_refused(mark)["reason"] == "refusal window"
    c.wait_disconnect()
    assert c.connacks == [3]
    emu.refuse_connects(mode="close")
    mark = emu.log_mark()
    c = client(clients, emu, THING).connect(wait=False)
    assert emu.wait_refused(mark)["returnCode"] is None
    c.wait_disconnect()
    assert c.connacks == []
    emu.lift_refusal()
    client(clients, emu, THING).connect()
    # A window that ends by itself: refused while it lasts, accepted after.
    emu.refuse_connects(seconds=1.0 * awsiot.SCALE, return_code=5)
    c = client(clients, emu, THING).connect(wait=False)
    c.wait_disconnect()
    assert c.connacks == [5]

    def accepted():
        c = client(clients, emu, THING).connect(wait=False)
        awsiot.poll(lambda: c.connacks, awsiot.WAIT)
        return c.connacks[-1:] == [0]

    assert awsiot.poll(accepted, 10), emu.log()[-3:]


def test_one_connection_per_client_id(emu, clients):
    svc = client(clients, emu, "svc-1", cert="service").connect()
    svc.subscribe("$aws/events/presence/connected/dev-1", "$aws/events/presence/disconnected/dev-1")
    first = client(clients, emu, THING).connect()
    c1 = svc.wait_message("$aws/events/presence/connected/dev-1")
    second = client(clients, emu, THING).connect()
    first.wait_disconnect()
    gone = svc.wait_message("$aws/events/presence/disconnected/dev-1")
    assert gone["disconnectReason"] == "DUPLICATE_CLIENTID"
    assert gone["sessionIdentifier"] == c1["sessionIdentifier"]
    c2 = svc.wait_message("$aws/events/presence/connected/dev-1",
                          lambda p: p["versionNumber"] > c1["versionNumber"])
    assert c2["sessionIdentifier"] != c1["sessionIdentifier"]
    assert second.disconnects == []
    connects = [e for e in emu.log() if e["event"] == "connected" and e["clientId"] == THING]
    assert len(connects) == 2
    assert [c["connId"] for c in emu.clients() if c["clientId"] == THING] == [connects[1]["connId"]]


@pytest.mark.parametrize("what, do", [
    ("retained publish to a reserved topic",
     lambda c: c.publish(f"{PREFIX}/update", {"state": {}}, retain=True)),
    ("publish to a response topic", lambda c: c.publish(f"{PREFIX}/update/accepted", {})),
    ("publish to another thing's shadow", lambda c: c.publish("$aws/things/dev-2/shadow/get", "")),
    ("subscribe to another thing's shadow",
     lambda c: c.c.subscribe("$aws/things/dev-2/shadow/get/accepted", 1)),
    ("subscribe to lifecycle events without the right",
     lambda c: c.c.subscribe("$aws/events/presence/#", 1)),
    ("publish with QoS 2", lambda c: c.publish("plain/topic", "x", qos=2)),
])
def test_reserved_topic_rules_disconnect(emu, clients, what, do):
    dev = client(clients, emu, THING).connect()
    mark = emu.log_mark()
    do(dev)
    dev.wait_disconnect()
    reason = emu.wait_disconnected(THING, mark)["reason"]
    assert reason in ("AUTH_ERROR", "CLIENT_ERROR"), reason
    assert emu.wait_log(lambda e: e["event"] == "forbidden", what, mark)


def test_wills_on_reserved_topics_and_retained_messages_elsewhere(emu, clients):
    mark = emu.log_mark()
    client(clients, emu, THING,
           will={"topic": f"{PREFIX}/update", "payload": "{}", "retain": True}).connect(wait=False)
    assert emu.wait_refused(mark)["reason"] == "retained will on a reserved topic"
    # A will on the update topic is delivered to subscribers but not handled as an update.
    svc = client(clients, emu, "svc-1", cert="service").connect()
    svc.subscribe(f"{PREFIX}/update", f"{PREFIX}/update/accepted")
    will = {"state": {"reported": {"connected": False}}}
    dev = client(clients, emu, THING,
                 will={"topic": f"{PREFIX}/update", "payload": json.dumps(will)}).connect()
    emu.drop(THING)
    dev.wait_disconnect()
    assert svc.wait_message(f"{PREFIX}/update") == will
    assert emu.counters()["requests"]["update"] == 0 and not emu.shadow()["exists"]
    # Non-reserved topics: retained messages work as on any broker.
    dev = client(clients, emu, THING).connect()
    dev.publish("plain/status", {"up": True}, retain=True).wait_for_publish(awsiot.WAIT)
    late = client(clients, emu, "svc-2", cert="service").connect()
    late.subscribe("plain/status")
    assert late.wait_message("plain/status") == {"up": True}
    assert late.messages[-1][2] is True


def test_broker_publish_and_restart_on_the_same_ports(emu, clients):
    dev = client(clients, emu, THING).connect()
    dev.subscribe(f"{PREFIX}/update/delta")
    emu.publish(f"{PREFIX}/update/delta", payload="not json")
    assert dev.wait_message(f"{PREFIX}/update/delta") == b"not json"
    ports = (emu.mqtt_port, emu.control_port)
    emu.update_shadow({"state": {"reported": {"a": 1}}})
    emu.restart()
    assert (emu.mqtt_port, emu.control_port) == ports
    assert emu.shadow()["exists"] is False, "a restarted emulator starts empty"
    client(clients, emu, THING).connect()
