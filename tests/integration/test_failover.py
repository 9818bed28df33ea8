# SPDX-License-Identifier: MIT
"""Failover across the nodes of a [broker] url list, on two independent mosquittos standing in
for two nodes of a cluster (the test writes the same desired document to both, as a shared
retained store would hold it): the agent moves to the next node when its node goes away, says
which node it is on, republishes and re-reads without re-applying; twinctl --broker tries the
nodes in order. The brokers suite does the same on a real cluster (aedes + redis)."""

import subprocess
import types

import twinlib
from test_twinctl import EXIT_OK, EXIT_UNREACHABLE, environment, twinctl, twinctl_binary
from twinlib import Broker, Service, poll, props, start_agent

DOC = {"$version": 1, "configId": 1, "sendFrequency": "5m"}


def node(broker):
    return f"127.0.0.1:{broker.port}"


def test_agent_fails_over_to_the_next_node(tmp_path, agent, broker, service, make_apply):
    other = Broker(str(tmp_path / "broker-b"))
    other.start()
    service_b = Service(other, agent.device_id, agent)
    try:
        agent.configure("broker", "url", f"{broker.url} {other.url}")
        service_b.publish(DOC)
        apply = make_apply()
        start_agent(agent, service, apply, DOC)
        st = agent.status()
        assert st["broker"] == node(broker), st
        assert node(broker) in st["statusText"], st

        broker.stop()
        # Within the failover delay (at most 0.5 s), not the backoff: online on the other node,
        # the reported document published there again, the same desired read and not re-applied.
        service_b.wait_connection("online", timeout=5)
        doc = service_b.wait_status("success", 1, timeout=5)
        assert props(doc) == props(DOC), doc
        assert poll(lambda: agent.status()["broker"] == node(other), 5), agent.status()
        st = agent.status()
        assert st["connected"] and node(other) in st["statusText"], st
        assert st["counters"]["reconnects"] == 1, st
        assert len(apply.calls()) == 1
        r = subprocess.run([twinctl_binary(), "--socket", agent.socket, "status"],
                           capture_output=True, text=True, timeout=10, env=environment())
        assert r.returncode == EXIT_OK, r.stderr
        assert "Broker:" in r.stdout and f"{node(other)}, connected since" in r.stdout, r.stdout
        log = agent.log_text()
        assert f"Lost the broker connection: connection lost to {node(broker)}" in log, log
        assert f"Connected to {node(other)}" in log, log

        # The agent is subscribed on the new node.
        mark = service_b.mark()
        service_b.publish({"$version": 2, "configId": 2, "sendFrequency": "1m"})
        service_b.wait_status("success", 2, mark)
        assert apply.inputs()[-1] == {"configId": 2, "sendFrequency": "1m"}
    finally:
        service_b.close()
        other.stop()


def test_agent_starts_on_the_first_node_that_answers(tmp_path, agent, broker, service):
    dead = twinlib.free_port()
    agent.configure("broker", "url", f"mqtt://127.0.0.1:{dead},{broker.url}")
    agent.start()
    service.wait_connection("online", timeout=5)
    assert agent.status()["broker"] == node(broker)
    assert f"Cannot connect to the broker: cannot connect to 127.0.0.1:{dead}" in agent.log_text()


def test_check_config_takes_a_node_list(agent, broker):
    agent.configure("broker", "url", f"{broker.url}, mqtt://[::1]:1884")
    r = agent.run("-c", agent.conf, "--check-config")
    assert r.returncode == 0, r.stderr + r.stdout
    agent.configure("broker", "url", f"{broker.url} mqtts://127.0.0.1:8883")
    r = agent.run("-c", agent.conf, "--check-config")
    assert r.returncode != 0
    assert "all broker URLs must be mqtt:// or all mqtts://" in r.stderr + r.stdout


def test_twinctl_tries_the_nodes_in_order(broker, service):
    service.publish(DOC)
    dead = twinlib.free_port()
    nodes = types.SimpleNamespace(url=f"mqtt://127.0.0.1:{dead} {broker.url}")
    r = twinctl(nodes, "--json", "get", service.device_id)
    assert r.returncode == EXIT_OK, r.stderr
    assert '"sendFrequency": "5m"' in r.stdout or '"sendFrequency":"5m"' in r.stdout, r.stdout

    none = types.SimpleNamespace(url=f"mqtt://127.0.0.1:{dead},mqtt://127.0.0.1:{dead}")
    r = twinctl(none, "get", service.device_id)
    assert r.returncode == EXIT_UNREACHABLE, r.stderr
    assert "cannot reach broker" in r.stderr, r.stderr


def test_twinctl_private_topics_have_no_dot_and_list_leaves_nothing(broker, service):
    """twinctl's own topics survive brokers that rewrite '.' (RabbitMQ), and the retained probe
    of list (proving the broker delivers retained messages to wildcards) is deleted again."""
    import paho.mqtt.client as mqtt

    seen = []
    spy = mqtt.Client(client_id="spy", protocol=mqtt.MQTTv311)
    spy.on_message = lambda c, u, m: seen.append((m.topic, m.retain, len(m.payload)))
    spy.connect("127.0.0.1", broker.port)
    spy.subscribe("twins/#", 0)
    spy.loop_start()
    try:
        service.publish(DOC)
        r = twinctl(broker, "list")
        assert r.returncode == EXIT_OK, r.stderr
        assert service.device_id in r.stdout, r.stdout
        # The spy's client thread may still be handing over what twinctl's last packets caused.
        assert poll(lambda: any(t.endswith("/sync") for t, _, _ in seen) and
                    any(t.endswith("/probe") and n == 0 for t, _, n in seen), 5), seen
        private = [t for t, _, _ in seen if "/_twinctl/" in t]
        assert not any("." in t for t in private), private
        # A fresh subscriber gets no retained message of twinctl's.
        after = []
        late = mqtt.Client(client_id="late", protocol=mqtt.MQTTv311)
        late.on_message = lambda c, u, m: after.append(m.topic)
        late.connect("127.0.0.1", broker.port)
        late.subscribe("twins/_twinctl/#", 0)
        late.loop_start()
        r = twinctl(broker, "get", service.device_id)  # a round trip: late's SUBACK is long done
        late.loop_stop()
        assert [t for t in after if t.endswith("/probe")] == [], after
    finally:
        spy.loop_stop()
