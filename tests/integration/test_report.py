# SPDX-License-Identifier: MIT
"""Device-reported properties: `twinctl report` on the device, through the real twind, to the
reported document on a real mosquitto, and back through `twinctl get/list/status`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import twinlib
from test_twinctl import EXIT_OK, environment, twinctl, twinctl_binary
from twinlib import props, start_agent

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ACCESS_DENIED = 8
NOBODY = 65534
REPORT_GROUP = 4242  # numeric: the agent takes a gid without a name

DOC = {"$version": 1, "configId": 1, "sendFrequency": "5m"}


def report(agent, *args, user=None):
    """twinctl report on the agent's socket (as another user with user=(uid, gid, groups))."""
    cmd = [twinctl_binary(), "--socket", agent.socket, "report", *args]
    if user is not None:
        uid, gid, groups = user
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
               f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
               *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=environment(),
                          stdin=subprocess.DEVNULL)


def own(doc):
    return doc.get("$status", {}).get("deviceProperties", [])


@pytest.fixture
def running(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply, DOC)
    return apply


def test_report_reaches_the_twin_apart_from_the_configuration(broker, agent, service, running):
    mark = service.mark()
    r = report(agent, "firmware=1.4.2", "battery.percent=81", "ip=10.0.0.7")
    assert r.returncode == EXIT_OK, r.stderr
    doc = service.wait_reported(lambda d: d.get("firmware") == "1.4.2", "the reported firmware",
                                mark)
    assert doc["battery"] == {"percent": 81} and doc["ip"] == "10.0.0.7", doc
    # The configuration is still there, answered, and the device's keys are listed.
    assert doc["sendFrequency"] == "5m" and doc["configId"] == 1, doc
    assert doc["$status"]["state"] == "success" and doc["$status"]["desiredVersion"] == 1, doc
    assert sorted(own(doc)) == ["battery", "firmware", "ip"], doc
    # The apply command saw none of it.
    assert running.inputs() == [props(DOC)]

    # The back end: converged (not drifted), the device's properties in their own table.
    r = twinctl(broker, "get", agent.device_id)
    assert r.returncode == EXIT_OK, r.stderr
    assert "success" in r.stdout and "drifted" not in r.stdout, r.stdout
    table = r.stdout[r.stdout.index("DEVICE PROPERTY"):]
    assert "firmware" in table and "1.4.2" in table and "sendFrequency" not in table, r.stdout
    r = twinctl(broker, "get", agent.device_id, "--json")
    twin = json.loads(r.stdout)
    assert twin["deviceProperties"] == {"battery": {"percent": 81}, "firmware": "1.4.2",
                                        "ip": "10.0.0.7"}, twin
    r = twinctl(broker, "list", "--json")
    assert json.loads(r.stdout)[0]["state"] == "success", r.stdout

    # The device: status shows them next to the applied configuration.
    st = agent.status()
    assert st["deviceProperties"]["firmware"] == "1.4.2", st
    assert "firmware" not in st["applied"], st
    r = subprocess.run([twinctl_binary(), "--socket", agent.socket, "status"],
                       capture_output=True, text=True, timeout=30, env=environment())
    assert "Device reports" in r.stdout and "1.4.2" in r.stdout, r.stdout


def test_null_removes_and_a_file_reports(agent, service, running, tmp_path):
    mark = service.mark()
    assert report(agent, "a=1", "b=2").returncode == EXIT_OK
    service.wait_reported(lambda d: d.get("a") == 1 and d.get("b") == 2, "a and b", mark)
    mark = service.mark()
    f = tmp_path / "r.json"
    f.write_text('{"b": null, "c": {"d": [1, 2]}}')
    r = report(agent, "--file", str(f))
    assert r.returncode == EXIT_OK, r.stderr
    doc = service.wait_reported(lambda d: "b" not in d and "c" in d, "b removed, c added", mark)
    assert doc["a"] == 1 and doc["c"] == {"d": [1, 2]}, doc
    assert sorted(own(doc)) == ["a", "c"], doc
    assert agent.read_state()["device"] == {"a": 1, "c": {"d": [1, 2]}}


def test_configuration_keys_and_limits_are_refused(agent, service, running):
    mark = service.mark()
    r = report(agent, "sendFrequency=1h")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert ("'sendFrequency' is a property of the applied configuration: the agent reports it"
            in r.stderr), r.stderr
    # A key of a desired document not applied yet belongs to the configuration as well.
    running.behave(sleep=3)
    service.publish({"$version": 2, "configId": 2, "sendFrequency": "5m", "mode": "eco"})
    twinlib.poll(lambda: agent.status()["state"] == "applying", 10)
    r = report(agent, "mode=x")
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert "'mode' is a property of the desired configuration" in r.stderr, r.stderr
    service.wait_status("success", 2, mark)
    # More than the protocol's 32 KiB for the whole reported document.
    r = report(agent, "blob=" + "x" * 40000)
    assert r.returncode == EXIT_FAILURE, r.stderr
    assert "the properties the device reports would be" in r.stderr and "32768" in r.stderr, \
        r.stderr
    # '$' keys are the protocol's: twinctl says so itself, the agent too.
    assert report(agent, "$x=1").returncode == EXIT_USAGE
    reply = raw_request(agent, {"method": "report", "params": {"properties": {"$x": 1}}})
    assert reply["error"]["name"] == "Refused", reply
    # twinSignature holds the signature of desired documents (docs/protocol.md).
    r = report(agent, "twinSignature=1")
    assert r.returncode == EXIT_USAGE and "holds the signature" in r.stderr, r.stderr
    reply = raw_request(agent, {"method": "report",
                                "params": {"properties": {"twinSignature": 1}}})
    assert reply["error"]["name"] == "Refused", reply
    assert "reserved for the signature" in reply["error"]["message"], reply
    twinlib.settle(0.3)
    assert all("blob" not in d and "mode" not in own(d) for d in service.reported_since(mark))
    assert "device" not in agent.read_state()
    agent.assert_alive()


def raw_request(agent, req):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(agent.socket)
        s.sendall(json.dumps(req).encode() + b"\n")
        return json.loads(s.makefile("rb").readline())


def test_reported_properties_survive_a_restart(agent, service, running):
    mark = service.mark()
    assert report(agent, "firmware=2.0.1").returncode == EXIT_OK
    service.wait_reported(lambda d: d.get("firmware") == "2.0.1", "firmware 2.0.1", mark)
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit() == 0
    # The broker forgets the reported document; the restarted agent reports it again from its
    # state file.
    service.client.publish(service.t_reported, b"", qos=1, retain=True).wait_for_publish(10)
    mark = service.mark()
    agent.start()
    doc = service.wait_reported(lambda d: d.get("firmware") == "2.0.1", "firmware after restart",
                                mark)
    assert doc["sendFrequency"] == "5m" and own(doc) == ["firmware"], doc
    assert len(running.calls()) == 1  # nothing applied again


def test_only_root_the_agents_user_and_the_report_group_may_report(agent, service,
                                                                   make_apply):
    # A socket and a twinctl that another user can reach (pytest's directories are private).
    public = tempfile.mkdtemp(prefix="twind-report-")
    try:
        os.chmod(public, 0o755)
        sock = os.path.join(public, "control.sock")
        binary = os.path.join(public, "twinctl")
        shutil.copy(twinctl_binary(), binary)
        agent.configure("control", "socket", sock)
        agent.socket = sock
        start_agent(agent, service, make_apply(), DOC)
        os.chmod(sock, 0o666)

        def run(user, *args):
            uid, gid, groups = user
            return subprocess.run(
                ["setpriv", f"--reuid={uid}", f"--regid={gid}",
                 f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
                 binary, "--socket", sock, *args],
                capture_output=True, text=True, timeout=30, env=environment())

        nobody = (NOBODY, NOBODY, [])
        member = (NOBODY, NOBODY, [REPORT_GROUP])
        r = run(nobody, "report", "x=1")
        assert r.returncode == EXIT_ACCESS_DENIED, (r.returncode, r.stderr)
        assert "[control] report_group" in r.stderr, r.stderr
        assert run(member, "report", "x=1").returncode == EXIT_ACCESS_DENIED
        # Anyone may read.
        assert run(nobody, "status").returncode == EXIT_OK

        agent.configure("control", "report_group", str(REPORT_GROUP))
        agent.signal(signal.SIGHUP)
        twinlib.poll(lambda: "Configuration reloaded" in agent.log_text(), 10)
        mark = service.mark()
        r = run(member, "report", "x=1")
        assert r.returncode == EXIT_OK, r.stderr
        service.wait_reported(lambda d: d.get("x") == 1, "x from the report group", mark)
        # As the primary group too; others still not.
        assert run((NOBODY, REPORT_GROUP, []), "report", "y=2").returncode == EXIT_OK
        assert run(nobody, "report", "z=3").returncode == EXIT_ACCESS_DENIED
        service.wait_reported(lambda d: d.get("y") == 2, "y from the primary group", mark)
        assert "z" not in agent.read_state()["device"]
    finally:
        shutil.rmtree(public, ignore_errors=True)


def test_a_burst_of_reports_costs_a_few_publishes(agent, service, running):
    """1,000 reports from 4 clients at once, as fast as the agent answers them."""
    mark = service.mark()
    errors = []

    def client(n):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(30)
                s.connect(agent.socket)
                f = s.makefile("rb")
                for i in range(250):
                    req = {"method": "report", "id": i, "version": 2,
                           "params": {"properties": {f"c{n}": i}}}
                    s.sendall(json.dumps(req).encode() + b"\n")
                    reply = json.loads(f.readline())
                    if "result" not in reply:
                        errors.append(reply)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    assert not errors, errors[:3]
    last = {f"c{n}": 249 for n in range(4)}
    service.wait_reported(lambda d: all(d.get(k) == v for k, v in last.items()),
                          "the last value of every client", mark)
    twinlib.settle(1.5)  # a publish still due would show here
    n = len(service.reported_since(mark))
    print(f"1000 reports in {elapsed:.2f} s: {n} publishes")
    # At most one publish a second after the first (plus the one the timer may still owe).
    assert n <= elapsed + 3, (n, elapsed)
    assert n <= 30, (n, elapsed)
    assert agent.read_state()["device"] == last
