# SPDX-License-Identifier: MIT
"""twind's Azure IoT Hub dialect (protocol.md, "Azure IoT Hub") against the IoT Hub emulator
that Microsoft's own SDKs pass against (tests/emulators/azure-iothub): the tutorial's device
flow, reconnects and restarts, offline changes, stale patches and version gaps, removed
properties, throttling, token renewal, bad keys, module identities, shutdown."""

import datetime
import os
import signal

import pytest

import twinlib
from azurehub import AzureHub, deadline_poll, random_key
from twinlib import settle

DEVICE = "dev-1"
STATUS = "twinStatus"


@pytest.fixture
def hub(tmp_path):
    h = AzureHub(str(tmp_path / "hub"))
    h.start()
    h.add_device(DEVICE)
    yield h
    h.stop()


def azure_agent(tmp_path, hub, name="agent", module_id=None, key=None, lifetime=None):
    """A twind on the Azure dialect for DEVICE (or its module), not started."""
    agent = twinlib.Agent(str(tmp_path / name), broker=NoBroker(), device_id=DEVICE)
    conn = os.path.join(agent.dir, "azure.conn")
    with open(conn, "w") as f:
        f.write(hub.device_connection_string(DEVICE, module_id=module_id, key=key) + "\n")
    os.chmod(conn, 0o600)
    agent.settings["broker"] = {"dialect": "azure", "cafile": hub.ca, "keepalive": "5"}
    agent.settings["azure"] = {"connection_string_file": conn}
    if lifetime:
        agent.settings["azure"]["token_lifetime"] = lifetime
    agent.write_config()
    return agent


class NoBroker:
    """The Agent harness wants a broker for its default settings; the Azure dialect has none."""

    url = "mqtt://127.0.0.1:1"
    port = 1


@pytest.fixture
def agent(tmp_path, hub):
    a = azure_agent(tmp_path, hub)
    yield a
    a.cleanup()


def reported(hub, module_id=None):
    return hub.twin(DEVICE, module_id)["properties"]["reported"]


def props(section):
    return {k: v for k, v in section.items() if not k.startswith("$") and k != STATUS}


def wait_reported(hub, agent, pred, what, module_id=None, timeout=15):
    def check():
        if agent.died():
            raise AssertionError(f"twind exited with {agent.proc.returncode}:\n{agent.log_tail()}")
        r = reported(hub, module_id)
        return r if pred(r) else None

    try:
        return deadline_poll(check, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}\n---- twind log ----\n{agent.log_tail()}") from None


def wait_status(hub, agent, state, version, module_id=None, timeout=15):
    def pred(r):
        st = r.get(STATUS) or {}
        return st.get("state") == state and st.get("desiredVersion") == version

    return wait_reported(hub, agent, pred, f"{STATUS} {state} for desired $version {version}",
                         module_id, timeout)


def set_desired(hub, patch, **kw):
    return hub.set_desired(DEVICE, patch, **kw)["version"]


def start(agent, hub, apply=None):
    """Starts the agent and waits until it answered the twin's current desired $version, so
    that what a test does next (a fault, a change) meets the agent at rest."""
    if apply is not None:
        agent.configure("apply", "command", apply.command)
    since = hub.mark()
    agent.start()
    hub.wait_event("connect", DEVICE, since=since)
    hub.wait_requests("get", since=since)
    version = hub.twin(DEVICE)["properties"]["desired"]["$version"]
    wait_reported(hub, agent,
                  lambda r: (r.get(STATUS) or {}).get("desiredVersion") == version and
                  r[STATUS].get("state") in ("success", "failed"),
                  f"the answer to desired $version {version}")


def test_tutorial_flow_first_apply(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v = set_desired(hub, {"configId": 1, "sendFrequency": "5m"})
    r = wait_status(hub, agent, "success", v)
    assert props(r) == {"configId": 1, "sendFrequency": "5m"}, r
    assert r[STATUS]["configId"] == 1 and "updatedAt" in r[STATUS], r
    assert apply.inputs() == [{"configId": 1, "sendFrequency": "5m"}]
    # The apply command was told the hub's desired $version.
    assert apply.calls()[0]["env"]["TWIN_DESIRED_VERSION"] == str(v)
    st = agent.status()
    assert st["dialect"] == "azure" and st["connected"] and st["configId"] == 1, st
    assert "localhost" in st["broker"], st
    # Connection state is IoT Hub's own: no connection document, no retained will.
    assert hub.twin(DEVICE)["connectionState"] == "Connected"


def test_desired_set_before_the_agent_starts_is_applied(hub, agent, make_apply):
    apply = make_apply()
    v = set_desired(hub, {"configId": 3, "mode": "eco"})
    start(agent, hub, apply)
    wait_status(hub, agent, "success", v)
    assert apply.inputs() == [{"configId": 3, "mode": "eco"}]


def test_no_reapply_on_reconnect_or_restart(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v = set_desired(hub, {"configId": 1, "sendFrequency": "5m"})
    wait_status(hub, agent, "success", v)

    since = hub.mark()
    assert hub.drop(DEVICE)
    hub.wait_event("connect", DEVICE, since=since)
    hub.wait_requests("get", since=since)
    agent.stop()
    since = hub.mark()
    agent.start()
    hub.wait_requests("get", since=since)
    settle(1.0)
    assert len(apply.calls()) == 1, apply.calls()
    # Nothing changed, so nothing was reported again either.
    assert hub.requests(since, "reported") == [], hub.requests(since, "reported")


def test_change_while_offline_is_applied_after_reconnect(hub, agent, make_apply):
    """IoT Hub keeps no desired notifications for an offline device: the GET of the next
    connection brings the change (Azure/azure-iot-sdk-node#885)."""
    apply = make_apply()
    start(agent, hub, apply)
    v1 = set_desired(hub, {"configId": 1, "sendFrequency": "5m"})
    wait_status(hub, agent, "success", v1)

    hub.refuse()
    hub.drop(DEVICE)
    hub.wait_disconnected(DEVICE)
    v2 = set_desired(hub, {"configId": 2, "sendFrequency": "1h"})
    since = hub.mark()
    hub.lift_refusal()
    hub.wait_event("connect", DEVICE, since=since, timeout=30)
    r = wait_status(hub, agent, "success", v2)
    assert props(r) == {"configId": 2, "sendFrequency": "1h"}, r
    assert [c["stdin"] for c in apply.calls()][-1] == '{"configId":2,"sendFrequency":"1h"}'


def test_stale_patch_is_ignored(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v = set_desired(hub, {"configId": 1, "mode": "a"})
    wait_status(hub, agent, "success", v)
    v2 = set_desired(hub, {"configId": 2, "mode": "b"})
    wait_status(hub, agent, "success", v2)

    # The notification of v again, held back by the network: not newer, so ignored.
    assert hub.send_notification(DEVICE, {"configId": 1, "mode": "a"}, v)
    since = hub.mark()
    settle(1.0)
    assert len(apply.calls()) == 2, apply.calls()
    assert hub.requests(since, "get") == [] and hub.requests(since, "reported") == []
    assert props(reported(hub)) == {"configId": 2, "mode": "b"}


def test_version_gap_heals_by_get(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v1 = set_desired(hub, {"configId": 1, "a": 1})
    wait_status(hub, agent, "success", v1)
    # One change the device never hears of, then one it does: $version v1 + 2 after v1.
    set_desired(hub, {"b": 2}, notify=False)
    since = hub.mark()
    v3 = set_desired(hub, {"configId": 3})
    hub.wait_requests("get", since=since)
    r = wait_status(hub, agent, "success", v3)
    assert props(r) == {"configId": 3, "a": 1, "b": 2}, r
    assert apply.inputs()[-1] == {"configId": 3, "a": 1, "b": 2}
    assert "missed a change" in agent.log_text()


def test_property_removed_from_desired_leaves_reported(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v1 = set_desired(hub, {"configId": 1, "keep": "k", "drop": "d"})
    wait_status(hub, agent, "success", v1)
    v2 = set_desired(hub, {"configId": 2, "drop": None})
    r = wait_status(hub, agent, "success", v2)
    assert props(r) == {"configId": 2, "keep": "k"}, r
    assert apply.inputs()[-1] == {"configId": 2, "keep": "k"}


def test_throttled_report_is_retried(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    hub.fail_next(kinds="reported", count=2, status=429)
    since = hub.mark()
    v = set_desired(hub, {"configId": 1, "x": 1})
    wait_status(hub, agent, "success", v, timeout=30)
    got = hub.requests(since, "reported")
    assert len(got) >= 3, got
    assert "429" in agent.log_text() and "trying again" in agent.log_text(), agent.log_tail()
    agent.assert_alive()


def test_refused_report_is_a_problem_not_a_loop(hub, agent):
    # No apply command, so one change makes one report (no pending one before it).
    start(agent, hub)
    hub.fail_next(kinds="reported", count=1, status=400, message="bad report")
    since = hub.mark()
    set_desired(hub, {"configId": 1, "x": 1})
    deadline_poll(lambda: "refused the reported properties" in agent.log_text(), 15,
                  "the refusal in the log")
    settle(1.5)
    assert len(hub.requests(since, "reported")) == 1, hub.requests(since, "reported")
    st = agent.status()
    assert "400" in (st["lastError"] or "") and "bad report" in st["lastError"], st
    assert "refused the reported properties" in st["statusText"], st
    # The next change is reported as usual.
    v = set_desired(hub, {"configId": 2})
    wait_status(hub, agent, "success", v)


def test_one_reported_patch_in_flight(hub, agent, make_apply):
    """Reports made while one is in flight wait and are replaced by newer ones
    (azure-iot-sdk-c#1432: pipelined reported patches)."""
    start(agent, hub, make_apply())
    hub.delay("reported", 300)
    last = None
    for i in range(1, 8):
        last = set_desired(hub, {"configId": i, "n": i})
    wait_status(hub, agent, "success", last, timeout=30)
    assert max(f["reported"]["max"] for f in hub.in_flight(DEVICE)) == 1, hub.in_flight(DEVICE)
    assert props(reported(hub)) == {"configId": 7, "n": 7}


def test_token_is_renewed_before_it_runs_out(tmp_path, hub, make_apply):
    agent = azure_agent(tmp_path, hub, lifetime="5s")
    try:
        apply = make_apply()
        since = hub.mark()
        start(agent, hub, apply)
        # Three token lifetimes: every token is replaced before the hub closes for it.
        deadline_poll(lambda: len(hub.log(since, "connect")) >= 4, 30, "four connections")
        assert hub.log(since, "token-expired") == [], hub.log(since, "token-expired")
        assert "Renewing the SAS token" in agent.log_text()
        assert "Lost connection" not in agent.log_text(), agent.log_tail()
        v = set_desired(hub, {"configId": 1})
        wait_status(hub, agent, "success", v)
        assert agent.status()["connected"] is True
    finally:
        agent.cleanup()


def test_wrong_key_is_refused_with_a_clear_error_and_backoff(tmp_path, hub):
    wrong = random_key()
    agent = azure_agent(tmp_path, hub, key=wrong)
    try:
        since = hub.mark()
        agent.start()
        refusals = deadline_poll(lambda: (lambda r: r if len(r) >= 3 else None)(
            hub.log(since, "refuse")), 30, "three refusals")
        assert all(r.get("code") == 5 for r in refusals), refusals
        # Backed off ([1,2] s, then [2,4] s): the attempts spread out instead of hammering.
        t = [datetime.datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in refusals]
        assert (t[2] - t[0]).total_seconds() >= 2.5, [r["time"] for r in refusals]
        log = agent.log_text()
        assert "not authorised" in log, log
        assert wrong not in log and "SharedAccessSignature" not in log, log
        st = agent.status()
        assert not st["connected"] and "not authorised" in st["statusText"], st
        agent.assert_alive()
    finally:
        agent.cleanup()


def test_module_identity(tmp_path, hub, make_apply):
    hub.add_device(DEVICE, module_id="config")
    agent = azure_agent(tmp_path, hub, module_id="config")
    try:
        apply = make_apply()
        agent.configure("apply", "command", apply.command)
        since = hub.mark()
        agent.start()
        hub.wait_event("connect", "dev-1/config", since=since)
        v = hub.set_desired(DEVICE, {"configId": 9}, module_id="config")["version"]
        wait_status(hub, agent, "success", v, module_id="config")
        assert apply.inputs() == [{"configId": 9}]
        # The device's own twin is untouched.
        assert STATUS not in reported(hub)
    finally:
        agent.cleanup()


def test_desired_that_breaks_iot_hub_rules_is_refused(hub, agent, make_apply):
    apply = make_apply()
    start(agent, hub, apply)
    v = set_desired(hub, {"configId": 1, STATUS: "mine"})
    r = wait_status(hub, agent, "failed", v)
    assert "reserved for the agent's status" in r[STATUS]["error"], r
    assert apply.calls() == []


def test_sigterm_disconnects_cleanly(hub, agent):
    start(agent, hub)
    since = hub.mark()
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(5) == 0
    hub.wait_event("disconnect", DEVICE, since=since)
    assert hub.twin(DEVICE)["connectionState"] == "Disconnected"


def test_check_config_names_the_connection_string_problem(tmp_path, hub):
    agent = azure_agent(tmp_path, hub)
    key = hub.identity(DEVICE)["primaryKey"]
    with open(agent.settings["azure"]["connection_string_file"], "w") as f:
        f.write(f"HostName={hub.host_name};SharedAccessKey={key}\n")
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode == 78, r.stderr
    assert "DeviceId: missing" in r.stderr and "azure.conn" in r.stderr, r.stderr
    assert key not in r.stderr
    agent.configure("device", "id", "someone-else")
    with open(agent.settings["azure"]["connection_string_file"], "w") as f:
        f.write(hub.device_connection_string(DEVICE) + "\n")
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode == 78 and "is not the DeviceId 'dev-1'" in r.stderr, r.stderr
