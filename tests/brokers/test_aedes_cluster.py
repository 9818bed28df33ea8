# SPDX-License-Identifier: MIT
"""A real cluster: two aedes nodes sharing one redis-server (retained messages, subscriptions,
wills and routing in redis). A device on node A and twinctl on node B converge; node A dies
with SIGKILL and the device fails over to B within its failover delay, loses and re-applies
nothing, applies a change made through B during the outage; B publishes the will of a device
that stayed on A."""

import json
import time

import pytest

import brokerlib
from twinlib import poll, props, settle, start_agent

HEARTBEAT_MS = 500  # aedes publishes a dead node's wills after 3 missed heartbeats (4 s here)


@pytest.fixture
def cluster(tmp_path):
    redis = brokerlib.Redis(str(tmp_path / "redis"))
    redis.start()
    a = brokerlib.AedesNode(str(tmp_path / "aedes"), redis, "aedes-a", HEARTBEAT_MS)
    b = brokerlib.AedesNode(str(tmp_path / "aedes"), redis, "aedes-b", HEARTBEAT_MS)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        for p in (a, b, redis):
            p.stop()


def node(n):
    return f"127.0.0.1:{n.port}"


def test_device_on_a_and_twinctl_on_b_converge(cluster, agents, services, make_apply):
    a, b = cluster
    agent = agents(a, "dev-conv")
    service_b = services(b, agent.device_id, agent)
    apply = make_apply()
    agent.start()
    service_b.wait_connection("online")  # published through A, seen through B

    r = brokerlib.twinctl(b, "--timeout", "20", "set", agent.device_id, "mode=eco", "--wait")
    assert r.returncode == 0, r.stderr + agent.log_tail()
    assert agent.status()["broker"] == node(a)
    # aedes with redis persistence sends retained messages after the SUBACK, fetched from redis
    # one by one, while it already routes the client's next publish: twinctl's round trip can
    # come back before them (docs/brokers.md). So get and list converge, not at once.
    found = {}

    def got(verb, complete, *args):
        r = brokerlib.twinctl(b, "--json", verb, *args)
        found[verb] = json.loads(r.stdout) if r.returncode == 0 else r.stderr
        return r.returncode == 0 and complete(found[verb])

    def whole_twin(t):
        return (t["reported"] or {}).get("mode") == "eco" and \
            (t["connection"] or {}).get("state") == "online"

    assert poll(lambda: got("get", whole_twin, agent.device_id), 10), found
    assert poll(lambda: got("list", lambda rows: [x["deviceId"] for x in rows] ==
                            [agent.device_id] and rows[0]["state"] == "success"), 10), found


def test_node_killed_device_fails_over(cluster, agents, services, make_apply):
    a, b = cluster
    agent = agents(a, "dev-fo")
    agent.configure("broker", "url", f"{a.url} {b.url}")
    stay = agents(a, "dev-stay")  # knows only node A: its will must come out through B
    service_b = services(b, agent.device_id, agent)
    stay_b = services(b, stay.device_id, stay)
    apply = make_apply()
    doc = {"$version": 1, "configId": 1, "mode": "eco"}
    start_agent(agent, service_b, apply, doc)
    stay.start()
    stay_b.wait_connection("online")
    assert agent.status()["broker"] == node(a)

    cmark, mark = service_b.connection_mark(), service_b.mark()
    stay_mark = stay_b.connection_mark()
    t0 = time.monotonic()
    a.kill()
    # A change made through B while A is gone, before or while the device moves over.
    service_b.publish({"$version": 2, "configId": 2, "mode": "boost"})

    service_b.wait_connection("online", cmark, timeout=10)
    moved = time.monotonic() - t0
    assert moved < 2.0, f"failover took {moved:.2f} s"
    doc2 = service_b.wait_status("success", 2, mark, timeout=10)
    assert props(doc2) == {"configId": 2, "mode": "boost"}, doc2
    st = agent.status()
    assert st["connected"] and st["broker"] == node(b), st
    assert node(b) in st["statusText"], st
    # Applied once each: v1 before, v2 after; v1 not applied again on B.
    assert apply.inputs() == [props(doc), {"configId": 2, "mode": "boost"}], apply.inputs()
    print(f"failover to B after SIGKILL of A: {moved:.2f} s")

    # The device that knew only A: B publishes its will once A missed 3 heartbeats.
    stay_b.wait_connection("offline", stay_mark, timeout=15)


def test_failed_over_device_stays_online(cluster, agents, services):
    """aedes keeps the will of a session per node: once A is declared dead, B publishes the
    failed-over device's old will (offline) over its new online document. The agent sees its
    own offline while connected and announces itself again (docs/brokers.md)."""
    a, b = cluster
    agent = agents(a, "dev-will")
    agent.configure("broker", "url", f"{a.url} {b.url}")
    service_b = services(b, agent.device_id, agent)
    agent.start()
    service_b.wait_connection("online")
    cmark = service_b.connection_mark()
    a.kill()
    service_b.wait_connection("online", cmark, timeout=10)
    # Wait until B has declared A dead and published A's wills (3 heartbeats, checked every 4).
    assert poll(lambda: any(d.get("state") == "offline"
                            for d in service_b.connection_since(cmark)),
                HEARTBEAT_MS * 12 / 1000), service_b.connection_since(cmark)
    conn = service_b.connection_since(cmark)
    stale = cmark + [d.get("state") for d in conn].index("offline")
    # The agent answers the stale will with its online document.
    service_b.wait_connection("online", stale + 1, timeout=10)
    conn = service_b.connection_since(cmark)
    assert conn[-1].get("state") == "online", conn
    assert "announcing online again" in agent.log_text(), agent.log_tail()
