# SPDX-License-Identifier: MIT
"""Control clients cannot exhaust the agent's file descriptors: under a low RLIMIT_NOFILE the
agent answers Busy once the limit less its reserve (CONTROL_FD_RESERVE, 128 descriptors) is
reached, and keeps enough descriptors to apply a configuration and save its state."""

import resource

import pytest

from test_control import Control, start_connected
from twinlib import props

LIMIT = 320  # soft and hard: the agent cannot raise it
RESERVE = 128  # CONTROL_FD_RESERVE in src/twind/twind-control.c
N_CLIENTS = 260  # more than LIMIT - RESERVE, fewer than this process can open under LIMIT


@pytest.fixture
def low_nofile():
    """The agent inherits this process's limit; restored afterwards (we run as root)."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    if saved[1] != resource.RLIM_INFINITY and saved[1] < LIMIT:
        pytest.skip(f"RLIMIT_NOFILE hard limit {saved[1]} is below {LIMIT}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    try:
        yield
    finally:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, saved)
        except (ValueError, OSError):
            pass  # not root: this process keeps the low limit, nothing else does


def test_clients_capped_below_rlimit_nofile(low_nofile, agent, service, make_apply):
    start_connected(agent, service, make_apply())
    clients = []
    try:
        for _ in range(N_CLIENTS):
            clients.append(Control(agent.socket, timeout=30.0))
        for i, c in enumerate(clients):
            try:
                c.send({"method": "status", "id": i})
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed already; its Busy line is still there to read
        answered = busy = 0
        for i, c in enumerate(clients):
            reply = c.read_line()
            # Out of descriptors, the agent would drop connections without a word.
            assert reply is not None, f"client {i} closed without an answer"
            if "error" in reply:
                assert reply["error"]["name"] == "Busy", reply
                busy += 1
            else:
                assert reply["id"] == i
                answered += 1
        print(f"{answered} answered, {busy} busy")
        assert answered + busy == N_CLIENTS
        assert answered <= LIMIT - RESERVE
        assert busy > 0

        # With every answered client still open, the agent applies (spawn, pipes) and saves.
        mark = service.mark()
        service.publish({"$version": 7, "configId": 7})
        service.wait_status("success", 7, mark)
        assert props(agent.read_state()["applied"]) == {"configId": 7}
    finally:
        for c in clients:
            c.close()
    c = Control(agent.socket)
    assert c.result("status")["connected"] is True
    c.close()
    assert "Too many open files" not in agent.log_text()
    agent.assert_alive()
