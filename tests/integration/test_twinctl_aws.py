# SPDX-License-Identifier: MIT
"""twinctl's AWS IoT back end (twinctl(1), --dialect aws) against the shadow emulator, with a
real twind on the AWS dialect where a device must answer: get, set, set --if-version (match,
and 409 when the shadow moved), set --wait until converged, watch until converged, named
shadows, list --devices, and plain list refused with a clear message."""

import json
import subprocess

import pytest

import twinlib
from awsiot import AwsIotEmulator, available
from test_aws import aws_agent
from test_twinctl import (
    EXIT_CONFLICT,
    EXIT_DEVICE_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    environment,
    twinctl_binary,
)

THING = "dev-1"


@pytest.fixture
def emu(tmp_path):
    why = available()
    if why:
        pytest.skip(why)
    e = AwsIotEmulator(str(tmp_path / "aws"))
    e.start()
    yield e
    e.stop()


@pytest.fixture
def aws(emu):
    def run(*args, timeout=60):
        return subprocess.run(
            [twinctl_binary(), "--dialect", "aws", "--broker", emu.url, "--cafile", emu.ca,
             "--certfile", emu.service_cert, "--keyfile", emu.service_key, *args],
            capture_output=True, text=True, timeout=timeout, env=environment(),
            stdin=subprocess.DEVNULL)

    return run


def start_device(tmp_path, emu, make_apply, shadow=None):
    apply = make_apply()
    agent = aws_agent(tmp_path, emu, shadow=shadow)
    agent.configure("apply", "command", apply.command)
    agent.start()
    emu.wait_connected(THING)
    emu.wait_requests("get", 1)
    return agent, apply


def test_set_wait_converges_and_get_shows_it(tmp_path, emu, aws, make_apply):
    agent, apply = start_device(tmp_path, emu, make_apply)
    try:
        r = aws("set", THING, "sendFrequency=5m", "--wait", "--timeout", "30", "--json")
        assert r.returncode == EXIT_OK, r.stderr
        out = json.loads(r.stdout)
        assert out["status"]["state"] == "success", out
        assert out["status"]["desiredVersion"] == out["version"], out
        assert apply.inputs() == [{"configId": 1, "sendFrequency": "5m"}]
        r = aws("get", THING, "--json")
        assert r.returncode == EXIT_OK, r.stderr
        got = json.loads(r.stdout)
        assert got["desired"]["$version"] == out["version"], got
        assert got["reported"]["sendFrequency"] == "5m", got
        assert got["reported"]["$status"]["state"] == "success", got
        r = aws("get", THING)
        assert r.returncode == EXIT_OK and "success" in r.stdout, r.stdout
        # A second set counts the configId on, and the device applies it.
        r = aws("set", THING, "sendFrequency=1h", "--wait", "--timeout", "30")
        assert r.returncode == EXIT_OK, r.stderr
        assert apply.inputs()[-1] == {"configId": 2, "sendFrequency": "1h"}
    finally:
        agent.cleanup()


def test_set_wait_reports_a_failure(tmp_path, emu, aws, make_apply):
    agent, apply = start_device(tmp_path, emu, make_apply)
    try:
        apply.behave(exit=2, stderr="bad value")
        r = aws("set", THING, "mode=x", "--wait", "--timeout", "30")
        assert r.returncode == EXIT_DEVICE_FAILED, (r.returncode, r.stderr)
        assert "bad value" in r.stderr, r.stderr
    finally:
        agent.cleanup()


def test_if_version_is_a_real_compare_and_set(emu, aws):
    r = aws("set", THING, "x=1", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    v = json.loads(r.stdout)["version"]
    r = aws("set", THING, "x=2", "--if-version", str(v), "--json")
    assert r.returncode == EXIT_OK, r.stderr
    # The shadow is at v + 1 now: v is stale, AWS refuses the update (409).
    r = aws("set", THING, "x=3", "--if-version", str(v))
    assert r.returncode == EXIT_CONFLICT, (r.returncode, r.stderr)
    assert "409" in r.stderr, r.stderr
    assert emu.shadow()["state"]["desired"]["x"] == 2


def test_watch_follows_until_converged(tmp_path, emu, aws, make_apply):
    agent, apply = start_device(tmp_path, emu, make_apply)
    try:
        watch = subprocess.Popen(
            [twinctl_binary(), "--dialect", "aws", "--broker", emu.url, "--cafile", emu.ca,
             "--certfile", emu.service_cert, "--keyfile", emu.service_key, "watch", THING,
             "--until-converged", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
        r = aws("set", THING, "mode=eco")
        assert r.returncode == EXIT_OK, r.stderr
        out, err = watch.communicate(timeout=60)
        assert watch.returncode == EXIT_OK, err
        assert "status" in out and "success" in out, out
    finally:
        agent.cleanup()


def test_named_shadow(tmp_path, emu, aws, make_apply):
    agent, apply = start_device(tmp_path, emu, make_apply, shadow="config")
    try:
        r = aws("--shadow", "config", "set", THING, "a=1", "--wait", "--timeout", "30")
        assert r.returncode == EXIT_OK, r.stderr
        assert apply.inputs() == [{"configId": 1, "a": 1}]
        assert not emu.shadow().get("exists")
    finally:
        agent.cleanup()


def test_list_needs_named_devices(emu, aws):
    assert aws("set", THING, "a=1").returncode == EXIT_OK
    r = aws("list")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "fleet index" in r.stderr and "--devices" in r.stderr, r.stderr
    r = aws("list", "--devices", THING, "ghost-1", "--json")
    assert r.returncode == EXIT_OK, r.stderr
    rows = json.loads(r.stdout)
    assert [d["deviceId"] for d in rows] == [THING], rows
    assert rows[0]["desiredConfigId"] == 1, rows


def test_device_reported_properties_reach_the_shadow(tmp_path, emu, aws, make_apply):
    agent, apply = start_device(tmp_path, emu, make_apply)
    try:
        r = aws("set", THING, "mode=eco", "--wait", "--timeout", "30")
        assert r.returncode == EXIT_OK, r.stderr
        r = subprocess.run([twinctl_binary(), "--socket", agent.socket, "report",
                            "firmware=1.4.2"], capture_output=True, text=True, timeout=30,
                           env=environment())
        assert r.returncode == EXIT_OK, r.stderr
        twinlib.poll(lambda: emu.shadow()["state"].get("reported", {}).get("firmware") ==
                     "1.4.2", 15)
        rep = emu.shadow()["state"]["reported"]
        assert rep.get("firmware") == "1.4.2" and rep["mode"] == "eco", rep
        assert rep["twinStatus"]["deviceProperties"] == ["firmware"], rep
        r = aws("get", THING)
        assert r.returncode == EXIT_OK and "success" in r.stdout, r.stdout
        assert "drifted" not in r.stdout and "DEVICE PROPERTY" in r.stdout, r.stdout
        # The watch of a device that reports by itself still converges.
        r = aws("watch", THING, "--until-converged", "--timeout", "20")
        assert r.returncode == EXIT_OK, r.stderr
    finally:
        agent.cleanup()


def test_delete_removes_the_shadow(emu, aws):
    assert aws("set", THING, "mode=eco").returncode == EXIT_OK
    assert emu.shadow()["exists"], emu.shadow()
    r = aws("delete", THING)
    assert r.returncode == EXIT_OK, r.stderr
    assert "does not say whether it is connected" in r.stdout, r.stdout
    assert not emu.shadow()["exists"], emu.shadow()
    r = aws("delete", THING)
    assert r.returncode == 6 and "not found" in r.stderr, (r.returncode, r.stderr)
