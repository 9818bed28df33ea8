# SPDX-License-Identifier: MIT
"""Signed desired documents on the Azure IoT Hub dialect, against the IoT Hub emulator: the
checks every dialect shares (signedlib.py), with twinctl's IoT Hub back end signing (its
desired patch carries the signature) and other writers patching the twin through the
emulator."""

import pytest

import twinsign
from signedlib import DEVICE, STATUS, Twin
from signedlib import *  # noqa: F401,F403 (the shared checks, collected here)
from test_azure import azure_agent, hub  # noqa: F401 (hub: the emulator's fixture)
from test_twinctl_azure import service_file


class AzureTwin(Twin):
    dialect = "azure"

    def __init__(self, tmp_path, make_apply, hub):
        self.hub = hub
        super().__init__(tmp_path, make_apply)
        self.conn = service_file(tmp_path, hub)

    def make_agent(self):
        return azure_agent(self.tmp, self.hub)

    def service_args(self):
        return ["--azure", self.conn, "--cafile", self.hub.ca]

    def start(self):
        since = self.hub.mark()
        self.agent.start()
        self.hub.wait_event("connect", DEVICE, since=since)
        self.hub.wait_requests("get", since=since)

    def put(self, doc):
        desired = self.hub.twin(DEVICE)["properties"]["desired"]
        current = {k: v for k, v in desired.items() if not k.startswith("$")}
        return self.hub.set_desired(DEVICE, twinsign.merge_patch_diff(current, doc))["version"]

    def reported(self):
        return self.hub.twin(DEVICE)["properties"]["reported"]

    def status(self):
        return self.reported().get(STATUS)

    def reported_props(self):
        return {k: v for k, v in self.reported().items() if not k.startswith("$") and k != STATUS}


@pytest.fixture
def twin(tmp_path, make_apply, hub):
    t = AzureTwin(tmp_path, make_apply, hub)
    yield t
    t.cleanup()
