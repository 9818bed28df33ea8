# SPDX-License-Identifier: MIT
"""Fixtures: a fresh broker, agent and service client per test, each in the test's temp dir."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import twinlib  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    b = twinlib.Broker(str(tmp_path / "broker"))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def agent(tmp_path, broker):
    """Configured against the broker, not started; keepalive 5 s, apply timeout 10 s."""
    a = twinlib.Agent(str(tmp_path / "agent"), broker)
    yield a
    a.cleanup()


@pytest.fixture
def service(broker, agent):
    s = twinlib.Service(broker, agent.device_id, agent)
    yield s
    s.close()


@pytest.fixture
def make_apply(tmp_path):
    """make_apply(name="apply", sleep=0, exit=0, stderr="") -> ApplyScript in the test's dir."""

    def make(**kw):
        return twinlib.ApplyScript(str(tmp_path), **kw)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    # A failing test shows the whole agent log and the broker's, not just a tail.
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, twinlib.Agent):
            rep.sections.append(("twind log", value.log_text()))
        elif isinstance(value, twinlib.Broker):
            rep.sections.append(("mosquitto log", twinlib.tail(value.log, 60)))
