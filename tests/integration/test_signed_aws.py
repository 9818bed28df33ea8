# SPDX-License-Identifier: MIT
"""Signed desired documents on the AWS IoT Device Shadow dialect, against the shadow emulator:
the checks every dialect shares (signedlib.py), with twinctl's AWS back end signing (its
shadow update carries the signature) and other writers updating state.desired through the
emulator's REST side."""

import pytest

import twinsign
from signedlib import DEVICE, STATUS, Twin
from signedlib import *  # noqa: F401,F403 (the shared checks, collected here)
from test_aws import aws_agent, emu  # noqa: F401 (emu: the emulator's fixture)


class AwsTwin(Twin):
    dialect = "aws"

    def __init__(self, tmp_path, make_apply, emu):
        self.emu = emu
        super().__init__(tmp_path, make_apply)

    def make_agent(self):
        return aws_agent(self.tmp, self.emu)

    def service_args(self):
        e = self.emu
        return ["--dialect", "aws", "--broker", e.url, "--cafile", e.ca, "--certfile",
                e.service_cert, "--keyfile", e.service_key]

    def start(self):
        gets = self.emu.counters()["requests"]["get"]
        since = self.emu.log_mark()
        self.agent.start()
        self.emu.wait_connected(DEVICE, since=since)
        self.emu.wait_requests("get", gets + 1)

    def state(self):
        return (self.emu.shadow() or {}).get("state") or {}

    def put(self, doc):
        current = self.state().get("desired") or {}
        status, accepted = self.emu.update_shadow(
            {"state": {"desired": twinsign.merge_patch_diff(current, doc)}})
        return accepted["version"]

    def status(self):
        return (self.state().get("reported") or {}).get(STATUS)

    def reported_props(self):
        return {k: v for k, v in (self.state().get("reported") or {}).items() if k != STATUS}


@pytest.fixture
def twin(tmp_path, make_apply, emu):
    t = AwsTwin(tmp_path, make_apply, emu)
    yield t
    t.cleanup()
