# SPDX-License-Identifier: MIT
"""twinctl's IoT Hub back end (twinctl(1), --azure) against the IoT Hub emulator, with a real
twind on the Azure dialect where a device must answer: get, set, --if-version (match and 412),
set --wait until converged and for a failure, list with filters over several pages, query,
a bad key (401), an unknown device (404), throttling (429) retried."""

import json
import subprocess
import threading

import pytest

from azurehub import AzureHub, deadline_poll
from test_azure import azure_agent
from test_twinctl import (
    EXIT_ACCESS_DENIED,
    EXIT_CONFLICT,
    EXIT_DEVICE_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    environment,
    twinctl_binary,
)

DEVICE = "dev-1"


@pytest.fixture
def hub(tmp_path):
    h = AzureHub(str(tmp_path / "hub"))
    h.start()
    h.add_device(DEVICE)
    yield h
    h.stop()


def service_file(tmp_path, hub, key=None):
    """The service connection string, pointed at the emulator's REST port."""
    path = tmp_path / "service.conn"
    path.write_text(hub.service_connection_string(key=key) +
                    f";GatewayHostName=localhost:{hub.https_port}\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def az(tmp_path, hub):
    conn = service_file(tmp_path, hub)

    def run(*args, timeout=60, conn_file=None):
        return subprocess.run(
            [twinctl_binary(), "--azure", conn_file or conn, "--cafile", hub.ca, *args],
            capture_output=True, text=True, timeout=timeout, env=environment(),
            stdin=subprocess.DEVNULL)

    return run


@pytest.fixture
def device(tmp_path, hub, make_apply):
    apply = make_apply()
    agent = azure_agent(tmp_path, hub)
    agent.configure("apply", "command", apply.command)
    since = hub.mark()
    agent.start()
    hub.wait_requests("get", since=since)
    yield agent, apply
    agent.cleanup()


def test_set_wait_converges_then_get_shows_both_sides(hub, az, device):
    agent, apply = device
    r = az("set", DEVICE, "sendFrequency=5m", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_OK, r.stderr
    assert f"{DEVICE} applied desired $version" in r.stdout, r.stdout
    assert apply.inputs()[-1] == {"configId": 1, "sendFrequency": "5m"}
    twin = hub.twin(DEVICE)
    assert twin["properties"]["desired"]["sendFrequency"] == "5m"

    r = az("get", DEVICE, "--json")
    assert r.returncode == EXIT_OK, r.stderr
    got = json.loads(r.stdout)
    assert got["desired"]["$version"] == twin["properties"]["desired"]["$version"], got
    assert got["reported"]["sendFrequency"] == "5m", got
    assert got["reported"]["$status"]["state"] == "success", got
    assert got["connection"]["state"] == "online", got
    r = az("get", DEVICE)
    assert r.returncode == EXIT_OK and "success" in r.stdout and "online" in r.stdout, r.stdout

    # The same configId again: answered without applying, and said so.
    r = az("set", DEVICE, "sendFrequency=5m", "configId=1", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_OK, r.stderr
    assert "without applying (configId 1 unchanged)" in r.stdout, r.stdout
    assert len(apply.calls()) == 1


def test_set_wait_reports_a_failure(hub, az, device):
    agent, apply = device
    apply.behave(exit=3, stderr="cannot open /dev/modem")
    r = az("set", DEVICE, "sendFrequency=1m", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_DEVICE_FAILED, (r.returncode, r.stderr)
    assert "cannot open /dev/modem" in r.stderr, r.stderr


def test_null_deletes_a_desired_property(hub, az):
    assert az("set", DEVICE, "a=1", "b=2").returncode == EXIT_OK
    r = az("set", DEVICE, "b=null")
    assert r.returncode == EXIT_OK, r.stderr
    desired = hub.twin(DEVICE)["properties"]["desired"]
    assert desired.get("a") == 1 and "b" not in desired, desired


def test_if_version_matches_and_conflicts(hub, az):
    v = hub.twin(DEVICE)["properties"]["desired"]["$version"]
    r = az("set", DEVICE, "x=1", "--if-version", str(v), "--json")
    assert r.returncode == EXIT_OK, r.stderr
    v2 = json.loads(r.stdout)["version"]
    assert v2 == v + 1
    # Stale: the desired $version moved on.
    r = az("set", DEVICE, "x=2", "--if-version", str(v))
    assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
    assert "version conflict" in r.stderr
    assert hub.twin(DEVICE)["properties"]["desired"]["x"] == 1


def test_if_version_loses_a_race_with_412(hub, az):
    """Another writer changes the twin while twinctl's requests are on their way: whether its
    GET already sees the change or its PATCH carries the stale etag (412), nothing of ours is
    written and the exit status says conflict."""
    v = hub.twin(DEVICE)["properties"]["desired"]["$version"]
    hub.delay("rest", 400)
    rival = threading.Timer(0.2, lambda: hub.set_desired(DEVICE, {"rival": True}))
    rival.start()
    try:
        r = az("set", DEVICE, "x=1", "--if-version", str(v))
    finally:
        rival.join()
        hub.delay("rest", 0)
    assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
    assert "version conflict" in r.stderr, r.stderr
    desired = hub.twin(DEVICE)["properties"]["desired"]
    assert "x" not in desired and desired["rival"] is True, desired


def test_list_filters_over_several_pages(tmp_path, hub, az):
    for i in range(1, 2501):
        hub.add_device(f"fleet-{i:04d}")
    hub.set_reported("fleet-0007", {"twinStatus": {"state": "failed", "desiredVersion": 1,
                                                   "error": "boom"}})
    r = az("list", "--json", timeout=120)
    assert r.returncode == EXIT_OK, r.stderr
    ids = {d["deviceId"] for d in json.loads(r.stdout)}
    assert len(ids) == 2501 and "fleet-2500" in ids and DEVICE in ids, len(ids)
    queries = hub.requests(kind="rest.query")
    assert len(queries) >= 3, queries  # 1,000 a page
    r = az("list", "--failed", "--json", timeout=120)
    assert r.returncode == EXIT_OK, r.stderr
    assert [d["deviceId"] for d in json.loads(r.stdout)] == ["fleet-0007"], r.stdout
    r = az("list", "--offline", "--json", timeout=120)
    assert r.returncode == EXIT_OK, r.stderr
    assert len(json.loads(r.stdout)) == 2501


def test_query_passes_through(hub, az):
    hub.set_tags(DEVICE, {"site": "north"})
    r = az("query", "SELECT deviceId FROM devices WHERE tags.site = 'north'")
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.strip().splitlines() == ['{"deviceId":"dev-1"}'], r.stdout
    r = az("query", "SELECT deviceId FROM devices", "--json")
    assert r.returncode == EXIT_OK and json.loads(r.stdout) == [{"deviceId": DEVICE}], r.stdout
    r = az("query", "SELECT * FROM devices GROUP BY status")
    assert r.returncode != EXIT_OK and "400" in r.stderr, r.stderr


def test_bad_key_is_access_denied_without_echoing_it(tmp_path, hub, az):
    from azurehub import random_key

    wrong = random_key()
    conn = service_file(tmp_path, hub, key=wrong)
    r = az("get", DEVICE, conn_file=conn)
    assert r.returncode == EXIT_ACCESS_DENIED, (r.returncode, r.stderr)
    assert "401" in r.stderr and wrong not in r.stderr, r.stderr


def test_unknown_device_is_not_found(az):
    r = az("get", "no-such-device")
    assert r.returncode == EXIT_NOT_FOUND, (r.returncode, r.stderr)
    assert "no-such-device" in r.stderr


def test_throttling_is_retried(hub, az):
    hub.fail_next(kinds="rest", count=2, status=429)
    r = az("get", DEVICE, "--json")
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stderr.count("429") >= 2, r.stderr


def test_malformed_connection_string_names_file_and_field(tmp_path, az):
    bad = tmp_path / "bad.conn"
    bad.write_text("HostName=h;SharedAccessKey=c2VjcmV0\n")
    r = az("get", DEVICE, conn_file=str(bad))
    assert r.returncode != EXIT_OK, r.stderr
    assert str(bad) in r.stderr and "SharedAccessKeyName: missing" in r.stderr, r.stderr
    assert "c2VjcmV0" not in r.stderr


def test_device_reported_properties_reach_the_hub_apart_from_the_configuration(hub, az, device):
    agent, apply = device
    r = az("set", DEVICE, "sendFrequency=5m", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_OK, r.stderr
    r = subprocess.run([twinctl_binary(), "--socket", agent.socket, "report", "firmware=1.4.2",
                        "battery.percent=81"], capture_output=True, text=True, timeout=30,
                       env=environment())
    assert r.returncode == EXIT_OK, r.stderr

    def arrived():
        rep = hub.twin(DEVICE)["properties"]["reported"]
        return rep if rep.get("firmware") == "1.4.2" else None

    rep = deadline_poll(arrived, 15, "the reported firmware on the hub")
    # Flat, as IoT Hub users query them; the status property lists the device's own keys.
    assert rep["battery"] == {"percent": 81} and rep["sendFrequency"] == "5m", rep
    assert sorted(rep["twinStatus"]["deviceProperties"]) == ["battery", "firmware"], rep
    # Twin rules hold for reports too: no '.' in an IoT Hub property name.
    r = subprocess.run([twinctl_binary(), "--socket", agent.socket, "report", "a\\.b=1"],
                       capture_output=True, text=True, timeout=30, env=environment())
    assert r.returncode == 1 and "'a.b' is not a valid property name for IoT Hub" in r.stderr, \
        r.stderr
    r = az("get", DEVICE)
    assert r.returncode == EXIT_OK and "success" in r.stdout, r.stdout
    assert "drifted" not in r.stdout and "DEVICE PROPERTY" in r.stdout, r.stdout
    r = az("get", DEVICE, "--json")
    assert json.loads(r.stdout)["deviceProperties"]["firmware"] == "1.4.2", r.stdout


def test_delete_removes_the_device_identity(tmp_path, hub, az, device):
    agent, apply = device
    r = az("delete", DEVICE)
    assert r.returncode == 1 and "is online" in r.stderr, (r.returncode, r.stderr)
    # Deleting needs RegistryWrite, which the "service" policy does not grant.
    path = tmp_path / "service-only.conn"
    path.write_text(hub.service_connection_string(policy="service", key=hub.service_policy_key)
                    + f";GatewayHostName=localhost:{hub.https_port}\n")
    path.chmod(0o600)
    r = az("delete", DEVICE, "--force", conn_file=str(path))
    assert r.returncode == 8 and "RegistryWrite" in r.stderr, (r.returncode, r.stderr)
    r = az("delete", DEVICE, "--force")
    assert r.returncode == EXIT_OK, r.stderr
    with pytest.raises(KeyError):
        hub.identity(DEVICE)
    r = az("get", DEVICE)
    assert r.returncode == 6, (r.returncode, r.stderr)


def test_list_online_success_and_last_seen(hub, az, device):
    agent, apply = device
    hub.add_device("quiet-1")
    r = az("set", DEVICE, "mode=eco", "--wait", "--timeout", "30")
    assert r.returncode == EXIT_OK, r.stderr
    since = hub.mark()
    r = az("list", "--online", "--success", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    rows = json.loads(r.stdout)
    assert [d["deviceId"] for d in rows] == [DEVICE], rows
    assert rows[0]["lastSeen"] and rows[0]["reportedVersion"] >= 1, rows
    # IoT Hub narrows the query itself.
    q = hub.requests(since=since, kind="rest.query")[0]["query"]
    assert "connectionState = 'Connected'" in q and "'success'" in q, q
    r = az("list", "q*")
    assert r.returncode == EXIT_OK, r.stderr
    row = [l for l in r.stdout.splitlines() if l.startswith("quiet-1")][0].split()
    # Never connected: IoT Hub has no last activity for it.
    assert row[4:6] == ["offline", "-"], r.stdout
    assert r.stdout.splitlines()[-1].startswith("1 device: 0 converged"), r.stdout
