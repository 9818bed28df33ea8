# SPDX-License-Identifier: MIT
"""The state file (protocol.md, "State file"): loaded as documented, a corrupt one kept aside,
a stale temporary file removed, a failed save (disk full) fails the apply and keeps the old."""

import errno
import glob
import json
import os
import subprocess

import pytest

from twinlib import poll, props, start_agent

DOC = {"$version": 1, "configId": 1, "sendFrequency": "5m"}


def start_and_wait_online(agent, service):
    agent.start()
    service.wait_connection("online")


def test_documented_state_file_is_loaded(agent, service, make_apply):
    apply = make_apply()
    agent.configure("apply", "command", apply.command)
    status = {"state": "success", "desiredVersion": 4, "configId": 3, "updatedAt": "2026-11-26T09:41:58Z"}
    with open(agent.state_file, "w") as f:
        json.dump(
            {
                "format": 1,
                "applied": {"configId": 3, "sendFrequency": "5m"},
                "desiredVersion": 4,
                "reportedVersion": 81,
                "status": status,
            },
            f,
        )
    start_and_wait_online(agent, service)
    doc = service.wait_status("success", 4)
    assert props(doc) == {"configId": 3, "sendFrequency": "5m"}, doc
    # Reported versions continue above the reserved ceiling.
    assert doc["$version"] > 81, doc
    # The same configId again is not applied.
    mark = service.mark()
    service.publish({"$version": 5, "configId": 3, "sendFrequency": "5m"})
    service.wait_status("success", 5, mark)
    assert apply.calls() == []


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": 99, "applied": {}}', b'{"format": 1, "applied": [1]}', b"\xff\xfe"],
    ids=["garbage", "unknown-format", "applied-not-object", "binary"],
)
def test_corrupt_state_file_kept_aside(agent, service, make_apply, content):
    apply = make_apply()
    agent.configure("apply", "command", apply.command)
    with open(agent.state_file, "wb") as f:
        f.write(content)
    start_and_wait_online(agent, service)

    # Empty state: reported without properties or $status.
    doc = service.wait_reported(lambda d: True, "reported on connect")
    assert props(doc) == {} and "$status" not in doc, doc
    kept = glob.glob(os.path.join(agent.state_dir, "state.json.corrupt-*"))
    assert len(kept) == 1, os.listdir(agent.state_dir)
    with open(kept[0], "rb") as f:
        assert f.read() == content
    assert "state.json" in agent.log_text(), agent.log_tail()

    # It works from there, and never overwrote the kept file.
    service.publish(DOC)
    service.wait_status("success", 1)
    assert agent.read_state()["applied"] == props(DOC)
    with open(kept[0], "rb") as f:
        assert f.read() == content
    agent.assert_alive()


EX_IOERR = 74


@pytest.mark.parametrize("kind", ["directory", "symlink-loop"])
def test_unreadable_state_file_stops_the_start(agent, service, kind):
    """A state file that cannot be read is not corruption: the agent does not start (with an
    exit status that twind.service does not restart), says why, and leaves the file alone, so
    the applied configuration is not forgotten."""
    if kind == "directory":
        os.mkdir(agent.state_file)
    else:
        os.symlink("state.json", agent.state_file)
    agent.start()
    assert agent.wait_exit() == EX_IOERR, agent.log_tail()
    log = agent.log_text()
    assert "state.json" in log and "not starting" in log, log
    assert sorted(os.listdir(agent.state_dir)) == ["state.json"], os.listdir(agent.state_dir)
    assert not service.connection_since(), "the agent connected although it could not start"


def test_stale_temp_file_removed(agent, service, make_apply):
    apply = make_apply()
    start_agent(agent, service, apply, DOC)
    assert agent.stop() == 0
    good = agent.read_state()

    stale = os.path.join(agent.state_dir, ".state.json.AbC123")
    with open(stale, "w") as f:
        f.write('{"format": 1, "applied": {"half')
    cmark = service.connection_mark()
    mark = service.mark()
    agent.start()
    service.wait_connection("online", cmark)
    doc = service.wait_status("success", 1, mark)
    assert props(doc) == props(DOC)
    assert poll(lambda: not os.path.exists(stale), 5), os.listdir(agent.state_dir)
    assert agent.read_state()["applied"] == good["applied"]
    assert len(apply.calls()) == 1


@pytest.fixture
def small_state_dir(agent):
    """The agent's state directory on a 64 KiB tmpfs (needs root)."""
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", agent.state_dir],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {r.stderr.strip()}")
    try:
        yield agent.state_dir
    finally:
        agent.cleanup()
        subprocess.run(["umount", agent.state_dir], check=False)


def fill(directory):
    """Writes a file until the file system is full; returns its path."""
    path = os.path.join(directory, "filler")
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:
        for _ in range(1024):  # 4 MiB at most: far beyond the 64 KiB tmpfs
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        else:
            raise AssertionError("the state directory never filled up")
    return path


def test_disk_full_fails_apply_and_keeps_old_state(agent, service, make_apply, small_state_dir):
    apply = make_apply()
    start_agent(agent, service, apply, DOC)
    with open(agent.state_file, "rb") as f:
        before = f.read()

    filler = fill(small_state_dir)
    mark = service.mark()
    service.publish({"$version": 2, "configId": 2, "sendFrequency": "1m", "pad": "z" * 2000})
    doc = service.wait_status("failed", 2, mark)
    assert "No space left on device" in doc["$status"].get("error", ""), doc
    assert props(doc) == props(DOC), doc
    with open(agent.state_file, "rb") as f:
        assert f.read() == before
    assert [n for n in os.listdir(small_state_dir) if n.startswith(".state.json.")] == []
    agent.assert_alive()

    # With space again a new configuration applies.
    os.unlink(filler)
    mark = service.mark()
    service.publish({"$version": 3, "configId": 3})
    doc = service.wait_status("success", 3, mark)
    assert props(doc) == {"configId": 3}, doc
    assert agent.read_state()["applied"] == {"configId": 3}
