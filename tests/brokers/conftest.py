# SPDX-License-Identifier: MIT
"""Fixtures of the brokers suite: each broker is started by the test (or the module) that uses
it, in its own temp dir, and stopped by the PID it started."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import brokerlib  # noqa: E402
import twinlib  # noqa: E402


@pytest.fixture
def make_apply(tmp_path):
    def make(**kw):
        return twinlib.ApplyScript(str(tmp_path), **kw)

    return make


@pytest.fixture
def agents(tmp_path):
    """agents(broker, device_id) -> a configured Agent (not started); cleaned up after."""
    made = []

    def make(broker, device_id="dev-1"):
        a = twinlib.Agent(str(tmp_path / f"agent-{device_id}"), broker, device_id)
        brokerlib.configure_agent(a, broker)
        made.append(a)
        return a

    yield make
    for a in made:
        a.cleanup()


@pytest.fixture
def services():
    made = []

    def make(broker, device_id, agent=None):
        s = twinlib.Service(broker, device_id, agent)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, brokerlib.Process):
            rep.sections.append((value.name + " log", twinlib.tail(value.log, 60)))
