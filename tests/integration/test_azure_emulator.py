# SPDX-License-Identifier: MIT
"""The Azure IoT Hub emulator's harness (azurehub.py) and its controls, which twind's and
twinctl's Azure tests build on: a device over paho speaks IoT Hub's MQTT; the tests check that
drop, refuse, silent desired changes, injected 429s, token expiry, in-flight counting and
per-connection answers do what they claim, and that the twin rules bite."""

import json
import time

import pytest

from azurehub import NODE, AzureHub, MqttDevice

RES = "$iothub/twin/res/#"
DESIRED = "$iothub/twin/PATCH/properties/desired/#"


@pytest.fixture
def hub(tmp_path):
    if not NODE:
        pytest.skip("node not installed")
    h = AzureHub(str(tmp_path / "hub"))
    h.start()
    yield h
    h.stop()


@pytest.fixture
def devices():
    """devices(hub, device_id, ...) -> an MqttDevice, closed at the end of the test."""
    made = []

    def make(hub, device_id, **kw):
        d = MqttDevice(hub, device_id, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def connected(devices, hub, device_id, **kw):
    d = devices(hub, device_id, **kw)
    assert d.connect() == 0
    assert d.subscribe(RES, DESIRED) == [0, 0]
    return d


def test_get_report_and_the_twin(hub, devices):
    assert hub.start_seconds < 10
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    status, doc = d.get_twin()
    assert status == 200
    assert doc == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    assert d.report({"mode": "eco", "nested": {"a": 1}}) == (204, 2, None)
    assert d.report({"nested": {"a": None, "b": 2}}) == (204, 3, None)
    twin = hub.twin("dev-1")
    assert twin["connectionState"] == "Connected"
    reported = twin["properties"]["reported"]
    assert reported["mode"] == "eco" and reported["nested"] == {"b": 2}
    assert reported["$version"] == 3
    assert "$lastUpdated" in reported["$metadata"]["nested"]["b"]
    assert hub.counters()["counters"]["reported"] == 2


def test_answers_go_only_to_the_connection_that_asked(hub, devices):
    hub.add_device("dev-a")
    hub.add_device("dev-b")
    a = connected(devices, hub, "dev-a")
    b = connected(devices, hub, "dev-b")
    rid_a = a.request("GET", "/", b"")
    a.answer(rid_a)
    rid_b = b.request("GET", "/", b"")
    b.answer(rid_b)
    # Had the answer to a been routed like a broker would, b would have it before its own.
    assert not [t for t, _ in b.messages if rid_a in t]
    assert not [t for t, _ in a.messages if rid_b in t]
    hub.set_desired("dev-a", {"x": 1})
    assert a.wait_desired(2) == {"x": 1, "$version": 2}
    b.get_twin()
    assert b.desired_patches() == []


def test_drop_closes_the_connection_and_is_logged(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    conn = hub.wait_connected("dev-1")["conn"]
    assert hub.drop("dev-1", reason="test drop")
    d.wait_disconnected()
    e = hub.wait_event("drop", "dev-1")
    assert e["conn"] == conn and e["reason"] == "test drop"
    hub.wait_disconnected("dev-1")
    assert hub.twin("dev-1")["connectionState"] == "Disconnected"
    assert not hub.drop("dev-1")


def test_refuse_until_lifted_and_for_a_while(hub, devices):
    hub.add_device("dev-1")
    hub.refuse()
    assert devices(hub, "dev-1").connect() == 3
    e = hub.wait_event("refuse", "dev-1")
    assert e["code"] == 3 and "refuse" in e["reason"]
    hub.lift_refusal()
    assert devices(hub, "dev-1").connect() == 0
    hub.refuse(seconds=1, code=3)
    assert devices(hub, "dev-1").connect() == 3
    end = time.monotonic() + 10
    while devices(hub, "dev-1").connect() != 0:
        assert time.monotonic() < end, "still refused 10 s after a 1 s refusal"
        time.sleep(0.05)  # polling interval


def test_silent_desired_change_leaves_a_version_gap(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    assert hub.set_desired("dev-1", {"a": 1})["delivered"]
    silent = hub.set_desired("dev-1", {"b": 2}, notify=False)
    assert silent == {"version": 3, "notified": False, "delivered": False}
    hub.set_desired("dev-1", {"c": 3})
    d.wait_desired(4)
    assert [p["$version"] for p in d.desired_patches()] == [2, 4]
    assert d.get_twin()[1]["desired"] == {"a": 1, "b": 2, "c": 3, "$version": 4}
    assert hub.requests(kind="desired-silent")[0]["version"] == 3


def test_injected_errors_then_success(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    hub.fail_next("get", count=2, status=429)
    for _ in range(2):
        status, body = d.get_twin()
        assert status == 429 and body["errorCode"] == 429001
    assert d.get_twin()[0] == 200
    hub.fail_next("reported", status=500)
    status, version, body = d.report({"a": 1})
    assert (status, version, body["errorCode"]) == (500, None, 500001)
    assert d.report({"a": 1})[0] == 204
    hub.fail_next("rest", status=429, retry_after=2)
    status, headers, body = hub.rest("GET", "/twins/dev-1")
    assert status == 429 and headers["retry-after"] == "2"
    assert body["Message"].startswith("ErrorCode:ThrottlingException;")
    assert hub.rest("GET", "/twins/dev-1")[0] == 200


def test_token_expiry_closes_the_connection(hub, devices):
    hub.add_device("dev-1")
    expired = hub.device_token("dev-1", expiry=time.time() - 1)
    assert devices(hub, "dev-1", token=expired).connect() == 5
    assert hub.wait_event("refuse", "dev-1")["reason"] == "token expired"
    mark = hub.mark()
    d = devices(hub, "dev-1", token=hub.device_token("dev-1", ttl=2))
    assert d.connect() == 0
    e = hub.wait_event("token-expired", "dev-1", since=mark, timeout=15)
    assert e["reason"] == "SAS token expired"
    d.wait_disconnected()


def test_in_flight_requests_are_counted_per_connection(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    hub.delay("reported", 300)
    rids = [d.request("PATCH", "/properties/reported/", json.dumps({"n": i})) for i in range(3)]
    for rid in rids:
        assert d.answer(rid)[0] == 204
    flight = hub.in_flight("dev-1")[-1]
    assert flight["reported"] == {"current": 0, "max": 3}
    hub.reset_counters()
    for i in range(2):
        assert d.report({"n": i})[0] == 204
    assert hub.in_flight("dev-1")[-1]["reported"]["max"] == 1


def test_credentials_status_and_one_connection_per_device(hub, devices):
    hub.add_device("dev-1")
    wrong_key = hub.device_token("dev-1", key=hub.device_policy_key)
    assert devices(hub, "dev-1", token=wrong_key).connect() == 5
    assert devices(hub, "ghost", token=hub.device_token("dev-1")).connect() == 5
    first = connected(devices, hub, "dev-1")
    conn = hub.wait_connected("dev-1")["conn"]
    second = connected(devices, hub, "dev-1")
    first.wait_disconnected()
    assert "replaced" in hub.wait_event("drop", "dev-1")["reason"]
    assert second.get_twin()[0] == 200
    hub.wait_connected("dev-1", since_conn=conn)
    hub.set_status("dev-1", "disabled")
    second.wait_disconnected()
    assert devices(hub, "dev-1").connect() == 3
    refusals = [e["reason"] for e in hub.log(event="refuse")]
    assert refusals == ["token signature does not match the key", "unknown device 'ghost'",
                        "device disabled"]


def test_user_name_rules(hub, devices):
    hub.add_device("dev-1")
    upper = f"{hub.host_name.upper()}/dev-1/?api-version=2021-04-12&DeviceClientType=x"
    assert devices(hub, "dev-1", username=upper).connect() == 0
    for bad in (f"{hub.host_name}/dev-1/", f"{hub.host_name}/DEV-1/?api-version=2021-04-12",
                "other-hub.azure-devices.net/dev-1/?api-version=2021-04-12"):
        assert devices(hub, "dev-1", username=bad).connect() == 5, bad
    reasons = [e["reason"] for e in hub.log(event="refuse")]
    assert len(reasons) == 3 and all(r.startswith("user name") for r in reasons), reasons


def test_protocol_rules(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    assert d.subscribe("devices/dev-1/messages/devicebound/#",
                       "devices/dev-2/messages/devicebound/#", "some/topic") == [0, 128, 128]
    assert d.subscribe(RES, qos=2) == [1]
    d.publish("devices/dev-1/messages/events/", b"{}", qos=1)
    d.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1", b"{}", qos=2)
    d.wait_disconnected()
    assert hub.wait_event("drop", "dev-1")["reason"] == "QoS 2 publish"
    assert hub.counters()["counters"]["telemetry"] == 1


@pytest.mark.parametrize("patch, fragment", [
    ({"a.b": 1}, "contains '.'"),
    ({"$x": 1}, "contains '.'"),
    ({"a b": 1}, "contains '.'"),
    ({"k" * 1025: 1}, "key longer than 1024"),
    ({"s": "x" * 4097}, "longer than 4096"),
    ('{"i": 4503599627370496}', "outside"),
    ('{"i": -4503599627370497}', "outside"),
    ({"d": json.loads('{"a":' * 11 + '1' + '}' * 11)}, "deeper than 10"),
    ("[1]", "not a JSON object"),
    ("{", "malformed JSON"),
])
def test_twin_rules_refuse_with_400(hub, devices, patch, fragment):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    status, version, body = d.report(patch)
    assert status == 400 and version is None
    assert body["errorCode"] == 400004 and fragment in body["message"], body


def test_twin_limits_that_pass(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    ten = json.loads('{"a":' * 10 + '1' + '}' * 10)
    assert d.report({"d": ten, "i": 4503599627370495, "s": "x" * 4096, "k" * 1024: 1})[0] == 204
    big = {f"k{i}": "v" * 1000 for i in range(33)}
    status, _, body = d.report(big)
    assert status == 400 and "more than 32768" in body["message"]


def test_rest_update_notifies_and_checks_the_etag(hub, devices):
    hub.add_device("dev-1")
    d = connected(devices, hub, "dev-1")
    status, _, twin = hub.rest("GET", "/twins/dev-1")
    assert status == 200 and twin["etag"] and twin["properties"]["desired"]["$version"] == 1
    if_match = {"If-Match": f'"{twin["etag"]}"'}
    status, _, after = hub.rest("PATCH", "/twins/dev-1",
                                {"properties": {"desired": {"mode": "eco"}}}, headers=if_match)
    assert status == 200 and after["properties"]["desired"]["$version"] == 2
    assert d.wait_desired(2) == {"mode": "eco", "$version": 2}
    status, headers, body = hub.rest("PATCH", "/twins/dev-1",
                                     {"properties": {"desired": {"mode": "x"}}}, headers=if_match)
    assert status == 412 and headers["iothub-errorcode"] == "PreconditionFailed"
    status, _, body = hub.rest("GET", "/twins/nobody")
    assert status == 404 and body["Message"].startswith("ErrorCode:DeviceNotFound;")
    bad = hub.service_token(key=hub.device_policy_key)
    assert hub.rest("GET", "/twins/dev-1", token=bad)[0] == 401


def test_rest_query_pages(hub):
    for i in range(5):
        hub.add_device(f"dev-{i}")
    hub.set_reported("dev-3", {"fw": "2.0"})
    seen, token, pages = [], None, 0
    while True:
        headers = {"x-ms-max-item-count": "2"}
        if token:
            headers["x-ms-continuation"] = token
        status, h, items = hub.rest("POST", "/devices/query", {"query": "SELECT * FROM devices"},
                                    headers=headers)
        assert status == 200 and h["x-ms-item-type"] == "Twin"
        seen += [t["deviceId"] for t in items]
        pages += 1
        token = h.get("x-ms-continuation")
        if not token:
            break
    assert seen == [f"dev-{i}" for i in range(5)] and pages == 3
    q = ("SELECT deviceId, properties.reported.fw FROM devices"
         " WHERE properties.reported.fw = '2.0' OR NOT IS_DEFINED(status)")
    assert hub.rest("POST", "/devices/query", {"query": q})[2] == [
        {"deviceId": "dev-3", "fw": "2.0"}]
    status, _, body = hub.rest("POST", "/devices/query", {"query": "SELECT COUNT() FROM devices"})
    assert status == 400 and "does not support" in body["Message"]


def test_x509_and_modules(hub, devices):
    crt, key, thumb = hub.make_device_certificate("self", "dev-self", self_signed=True)
    hub.add_device("dev-self", auth="selfSigned", thumbprint=thumb)
    assert devices(hub, "dev-self", certfile=crt, keyfile=key, password=False).connect() == 0
    ca_crt, ca_key, _ = hub.make_device_certificate("ca-dev", "dev-ca")
    hub.add_device("dev-ca", auth="certificateAuthority")
    assert devices(hub, "dev-ca", certfile=ca_crt, keyfile=ca_key, password=False).connect() == 0
    assert devices(hub, "dev-self", certfile=ca_crt, keyfile=ca_key, password=False).connect() == 5
    hub.add_device("dev-1")
    hub.add_device("dev-1", module_id="mod-1")
    m = connected(devices, hub, "dev-1", module_id="mod-1")
    assert m.report({"from": "module"})[0] == 204
    assert hub.twin("dev-1", module_id="mod-1")["properties"]["reported"]["from"] == "module"
    assert "from" not in hub.twin("dev-1")["properties"]["reported"]
