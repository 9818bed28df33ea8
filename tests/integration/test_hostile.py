# SPDX-License-Identifier: MIT
"""Hostile input not covered elsewhere (docs/hostile-input.md lists every case and its test):
absurd $version values, escapes and huge strings, a flood of 10,000 desired updates, 1,000
simultaneous control clients, binary garbage on the control socket, bad config files, and
truncated, oversized or unreadable state files. Outcome expected everywhere: a clear error
where someone will see it, the agent running, the applied state untouched."""

import json
import os
import resource
import threading
import time

import paho.mqtt.client as mqtt
import pytest

import twinlib
from test_control import Control, start_connected, wait_socket
from twinlib import props, start_agent

HWM_LIMIT_KIB = 32 * 1024
GOOD = {"$version": 1, "configId": 1, "keep": "me"}


@pytest.fixture
def broker(tmp_path):
    """conftest's broker, with room for a whole flood in its per-client queue: mosquitto's
    default (1000 messages) would drop part of it before the agent sees it, and the agent, not
    the broker, is under test."""
    b = twinlib.Broker(str(tmp_path / "broker"))
    with open(b.conf, "a") as f:
        f.write("max_queued_messages 100000\n")
    b.start()
    yield b
    b.stop()


def wrapped(agent):
    """True when the agent runs under AddressSanitizer or a TWIND_WRAPPER (valgrind): their
    own bookkeeping dominates the memory figures, which then say nothing about the agent."""
    if os.environ.get("TWIND_WRAPPER"):
        return True
    with open(f"/proc/{agent.proc.pid}/maps") as f:
        return "libasan" in f.read()


def peak_rss_kib(agent):
    with open(f"/proc/{agent.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def assert_peak_rss_bounded(agent):
    hwm = peak_rss_kib(agent)
    print(f"twind VmHWM {hwm} KiB")
    if not wrapped(agent):
        assert hwm < HWM_LIMIT_KIB, f"twind peak RSS {hwm} KiB"


def applied_good(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply, GOOD)
    return apply


# -- desired payloads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"$version": 1e30, "configId": 2}',
        b'{"$version": 9223372036854775808, "configId": 2}',
        b'{"$version": 18446744073709551616, "configId": 2}',
        b'{"$version": 1' + b"0" * 400 + b', "configId": 2}',
        b'{"$version": -9223372036854775808, "configId": 2}',
    ],
    ids=["1e30", "2^63", "2^64", "400-digits", "-2^63"],
)
def test_absurd_version_refused(agent, service, make_apply, raw):
    apply = applied_good(agent, service, make_apply)
    state = agent.read_state()
    mark = service.mark()
    service.publish_raw(raw)
    doc = service.wait_failed(mark)
    err = doc["$status"]["error"]
    assert "$version" in err or "JSON" in err, err
    assert props(doc) == props(GOOD)
    assert agent.read_state()["applied"] == state["applied"]
    assert len(apply.calls()) == 1
    agent.assert_alive()


def test_largest_version_then_backwards(agent, service, make_apply):
    """2^63-1 is a valid $version; the next document, necessarily lower, is still accepted."""
    apply = applied_good(agent, service, make_apply)
    top = 2**63 - 1
    service.publish({"$version": top, "configId": 2})
    doc = service.wait_status("success", top)
    assert props(doc) == {"configId": 2}
    mark = service.mark()
    service.publish({"$version": 3, "configId": 3})
    doc = service.wait_status("success", 3, mark)
    assert props(doc) == {"configId": 3}
    assert [i.get("configId") for i in apply.inputs()] == [1, 2, 3]
    assert "backwards" in agent.log_text().lower() or "lower" in agent.log_text().lower()


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b'{"$version": 2, "configId": 2, "s": "a\\u0000b"}', "NUL"),
        (b'{"$version": 2, "configId": 2, "s": "\\ud800"}', "JSON"),
        (b'{"$version": 2, "configId": 2, "a\\u0000": 1}', "NUL"),
        (b'{"$version": 2, "configId": 2, "s": "\xc0\xaf"}', "UTF-8"),
        (b'{"$version": 2, "configId": 2, "s": "\xed\xa0\x80"}', "UTF-8"),
        (b'{"$version": 2, "configId": 2}' + b" " * 40000, "32"),
        (b'{"$version": 2, "configId": 2} {"$version": 3}', "JSON"),
        (b"", None),
    ],
    ids=["escaped-nul", "lone-surrogate", "nul-in-key", "overlong-utf8", "utf8-surrogate",
         "whitespace-over-size", "two-documents", "empty"],
)
def test_encoding_tricks_refused(agent, service, make_apply, raw, needle):
    apply = applied_good(agent, service, make_apply)
    mark = service.mark()
    service.publish_raw(raw)
    if needle is None:
        # An empty retained payload deletes the desired document: nothing to answer.
        twinlib.settle(1.0)
        assert service.reported_since(mark) == []
    else:
        doc = service.wait_failed(mark)
        assert needle in doc["$status"]["error"], doc
        assert props(doc) == props(GOOD)
    assert len(apply.calls()) == 1
    agent.assert_alive()
    # Still takes a good document afterwards.
    mark = service.mark()
    service.publish({"$version": 4, "configId": 4})
    service.wait_status("success", 4, mark)


def test_huge_strings_within_the_limit_apply(agent, service, make_apply):
    apply = applied_good(agent, service, make_apply)
    # Escapes take 12 bytes on the wire for one 4-byte character, many keys, a long key.
    doc = {"$version": 2, "configId": 2, "emoji": "\U0001F600" * 1500,
           "k" * 4000: 1, "many": {f"k{i}": i for i in range(600)}}
    payload = json.dumps(doc).encode()  # ensure_ascii: \ud83d\ude00 escapes
    assert 28000 < len(payload) <= 32768, len(payload)
    mark = service.mark()
    service.publish_raw(payload)
    got = service.wait_status("success", 2, mark)
    assert props(got) == props(doc)
    assert apply.inputs()[-1] == props(doc)


def test_flood_of_10000_desired_updates(agent, service, make_apply):
    """10,000 desired documents as fast as one client can publish them (about a second): the
    agent coalesces them into a few applies, answers status all along, converges to the last
    version, and its peak memory stays small."""
    n = 10000
    apply = make_apply(sleep=0.2)
    start_agent(agent, service, apply)
    wait_socket(agent)

    latencies, errors, done = [], [], threading.Event()

    def poll_status():
        while not done.is_set():
            t0 = time.monotonic()
            try:
                c = Control(agent.socket, timeout=10.0)
                try:
                    c.result("status")
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001 - any failure to answer is the finding
                errors.append(repr(e))
                return
            latencies.append(time.monotonic() - t0)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_status)
    poller.start()
    flood = mqtt.Client(client_id="flood", protocol=mqtt.MQTTv311)
    flood.max_inflight_messages_set(0)  # unlimited: publish as fast as the socket takes it
    flood.connect("127.0.0.1", agent.broker.port, keepalive=60)
    flood.loop_start()
    t0 = time.monotonic()
    try:
        for v in range(1, n + 1):
            info = flood.publish(service.t_desired,
                                 json.dumps({"$version": v, "configId": v, "pad": "p" * 64}),
                                 qos=1, retain=True)
        info.wait_for_publish(60)
        assert info.is_published()
        flood_s = time.monotonic() - t0
        doc = service.wait_status("success", n, timeout=60)
    finally:
        flood.loop_stop()
        flood.disconnect()
        done.set()
        poller.join(30)
    assert props(doc) == {"configId": n, "pad": "p" * 64}
    assert agent.read_state()["applied"]["configId"] == n
    assert not errors, f"status not answered during the flood: {errors}"
    assert latencies, "no status answered during the flood"
    calls = apply.inputs()
    assert calls[-1]["configId"] == n
    # Coalescing: a handful of applies, not thousands (each takes at least 0.2 s).
    assert len(calls) <= 2 + int(flood_s / 0.2) + 5, len(calls)
    print(f"flood {n} in {flood_s:.2f} s, {len(calls)} applies, "
          f"status max {max(latencies) * 1000:.0f} ms over {len(latencies)} calls")
    agent.assert_alive()
    assert_peak_rss_bounded(agent)


def test_1000_simultaneous_control_clients(agent, service):
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4 * n) if hard != resource.RLIM_INFINITY else 4 * n
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # the agent inherits it
    if want < n + 100:
        pytest.skip(f"cannot open {n} sockets (RLIMIT_NOFILE hard limit {hard})")
    start_connected(agent, service)
    clients = []
    try:
        for _ in range(n):
            clients.append(Control(agent.socket, timeout=30.0))
        for i, c in enumerate(clients):
            c.send({"method": "status", "id": i})
        answered = busy = 0
        for i, c in enumerate(clients):
            reply = c.read_line()
            assert reply is not None, f"client {i} closed without an answer"
            if "error" in reply:
                assert reply["error"]["name"] == "Busy", reply
                busy += 1
            else:
                assert reply["id"] == i and reply["result"]["deviceId"] == agent.device_id
                answered += 1
        print(f"{answered} answered, {busy} busy")
        assert answered + busy == n
        # While all of them are still open, the agent answers a new one and does its job.
        extra = Control(agent.socket)
        reply = extra.read_line() if busy else extra.call("status")
        extra.close()
        mark = service.mark()
        service.publish({"$version": 7, "configId": 7})
        service.wait_status("success", 7, mark)
    finally:
        for c in clients:
            c.close()
    c = Control(agent.socket)
    assert c.result("status")["connected"] is True
    c.close()
    agent.assert_alive()
    assert_peak_rss_bounded(agent)


# -- control socket -----------------------------------------------------------------------


def test_binary_garbage_on_the_control_socket(agent, service):
    start_connected(agent, service)
    c = Control(agent.socket)
    for junk in (b"\x00\x01\x02\xff\xfe\n", b'{"method": "status\xff"}\n', b"\x00" * 1000 + b"\n",
                 b'{"method": "status", "method": "twin"}\n', b"null\n", b"1e999\n"):
        c.send_raw(junk)
        reply = c.read_line()
        assert reply is not None and reply["error"]["name"] in ("ParseError", "InvalidRequest"), (
            junk, reply)
    assert c.result("status")["deviceId"] == agent.device_id
    c.close()
    agent.assert_alive()


# -- config files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01\xff\xfe garbage\n",
        b"[broker\nurl = mqtt://127.0.0.1\n",
        b"url = mqtt://127.0.0.1\n",
        b"[broker]\nurl = mqtt://" + b"h" * 400 + b"\n",
        b"[device]\nid = dev-1\nid = dev-2\n[nope]\nx = 1\n",
        b"[broker]\nkeepalive = 99999999999999999999\n",
        b"[apply]\ntimeout = -5\n",
    ],
    ids=["binary", "unterminated-section", "key-outside-section", "over-long-line",
         "unknown-section", "keepalive-overflow", "negative-timeout"],
)
def test_bad_config_file_refused_with_one_line(agent, content):
    with open(agent.conf, "wb") as f:
        f.write(content)
    r = agent.run("--check-config", "-c", agent.conf)
    assert r.returncode != 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and agent.conf in lines[0], r.stderr
    agent.start()
    assert agent.wait_exit(10) != 0


def test_config_file_that_is_a_directory_or_unreadable(agent, tmp_path):
    d = tmp_path / "conf.d"
    d.mkdir()
    r = agent.run("--check-config", "-c", str(d))
    assert r.returncode != 0 and str(d) in r.stderr, r.stderr
    r = agent.run("--check-config", "-c", str(tmp_path / "missing.conf"))
    assert r.returncode != 0 and "missing.conf" in r.stderr, r.stderr


# -- state file ---------------------------------------------------------------------------


def corrupt_files(agent):
    return sorted(f for f in os.listdir(agent.state_dir) if f.startswith("state.json.corrupt-"))


@pytest.mark.parametrize("kind", ["truncated", "empty", "oversized", "nul-bytes"])
def test_bad_state_file_kept_aside(agent, service, make_apply, kind):
    apply = applied_good(agent, service, make_apply)
    assert agent.stop() == 0
    with open(agent.state_file, "rb") as f:
        good = f.read()
    os.unlink(agent.state_file)
    # (A state file that cannot be read at all is not kept aside: test_state_file.py.)
    data = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "oversized": good[:-1] + b', "pad": "' + b"x" * (300 * 1024) + b'"}',
        "nul-bytes": good.replace(b'"applied"', b'"appl\x00ed"'),
    }[kind]
    with open(agent.state_file, "wb") as f:
        f.write(data)
    mark, cmark = service.mark(), service.connection_mark()
    agent.start()
    service.wait_connection("online", cmark)
    # Started from empty state: the retained desired document is applied again, and the bad
    # file is kept aside for a person to look at.
    service.wait_status("success", 1, mark)
    assert len(apply.calls()) == 2
    assert corrupt_files(agent), os.listdir(agent.state_dir)
    assert agent.read_state()["applied"] == props(GOOD)
    agent.assert_alive()
