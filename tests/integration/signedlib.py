# SPDX-License-Identifier: MIT
"""Signed desired documents end to end (docs/protocol.md, "Signed desired documents"), the same
checks in every dialect: a Twin harness per dialect (the standard broker, the IoT Hub emulator,
the AWS IoT shadow emulator) drives the real twind and the real twinctl, and the checks below
are collected by each test_signed*.py that imports them with its own `twin` fixture.

Documents are signed by twinctl set --sign-key (keys from twinctl keygen), and, where twinctl
would refuse to make one (expired, for another device, tampered, a replay), by the second
implementation, twinsign.py; the device must tell them apart all the same."""

import json
import os
import shutil
import signal
import subprocess
import time

import twinsign
from test_twinctl import EXIT_DEVICE_FAILED, EXIT_FAILURE, EXIT_OK, twinctl_binary  # noqa: F401
from twinlib import poll

DEVICE = "dev-1"
STATUS = "twinStatus"


def environment():
    env = dict(os.environ)
    for k in ("TWINCTL_BROKER", "TWINCTL_AZURE", "TWINCTL_SIGN_KEY", "JOURNAL_STREAM", "NO_COLOR"):
        env.pop(k, None)
    return env


class Twin:
    """One device of one dialect: its agent (not started), its apply command, its trusted key
    directory, and the service side's ways to read and write its desired document."""

    dialect = None

    def __init__(self, tmp_path, make_apply):
        self.tmp = tmp_path
        self.apply = make_apply()
        self.keys_dir = tmp_path / "trusted-keys.d"
        self.keys_dir.mkdir()
        self.signing = tmp_path / "signing"
        self.signing.mkdir()
        self.agent = self.make_agent()
        self.agent.configure("apply", "command", self.apply.command)
        self.agent.configure("trust", "keys", str(self.keys_dir))

    # -- the trusted keys ----------------------------------------------------------------

    def require(self, on=True):
        self.agent.configure("trust", "require_signature", "yes" if on else "no")

    def keygen(self, name):
        """twinctl keygen: (private key path, public key path)."""
        r = subprocess.run([twinctl_binary(), "keygen", str(self.signing / name)],
                           capture_output=True, text=True, timeout=30, env=environment())
        assert r.returncode == EXIT_OK, r.stderr
        return str(self.signing / f"{name}.key"), str(self.signing / f"{name}.pem")

    def trust_key(self, name):
        """Makes a key pair and installs its public key on the device; returns the private
        key's path."""
        key, pub = self.keygen(name)
        shutil.copy(pub, self.keys_dir / f"{name}.pem")
        return key

    def private_key(self, path):
        """A key file as twinsign.py reads it."""
        with open(path) as f:
            return twinsign.load_private_pem(f.read())

    def reload(self):
        """SIGHUP, and wait until the agent says the configuration was reloaded."""
        before = self.agent.log_text().count("Configuration reloaded")
        self.agent.signal(signal.SIGHUP)
        assert poll(lambda: self.agent.log_text().count("Configuration reloaded") > before, 15), (
            "no reload:\n" + self.agent.log_tail())

    # -- twinctl -----------------------------------------------------------------------------

    def service_args(self):
        raise NotImplementedError

    def twinctl(self, *args, timeout=60, env=None):
        return subprocess.run([twinctl_binary(), *self.service_args(), *args],
                              capture_output=True, text=True, timeout=timeout,
                              env=env or environment(), stdin=subprocess.DEVNULL)

    def set(self, *pairs, key=None, key_id=None, extra=(), expect=EXIT_OK):
        """twinctl set DEVICE pairs... --wait --json (signed with key); returns its output,
        with the new $version in ["version"]."""
        args = ["set", DEVICE, *pairs, "--wait", "--timeout", "30", "--json", *extra]
        if key:
            args += ["--sign-key", key]
        if key_id:
            args += ["--key-id", key_id]
        r = self.twinctl(*args)
        assert r.returncode == expect, (r.returncode, r.stdout, r.stderr, self.agent.log_tail())
        return json.loads(r.stdout) if r.stdout.strip() else None

    def desired(self):
        """The current desired document as twinctl get sees it: properties, twinSignature and
        "$version"."""
        r = self.twinctl("get", DEVICE, "--json")
        assert r.returncode == EXIT_OK, r.stderr
        return json.loads(r.stdout)["desired"]

    # -- the dialect's own ---------------------------------------------------------------------

    def make_agent(self):
        raise NotImplementedError

    def start(self):
        """Starts the agent and waits until it has read the twin."""
        raise NotImplementedError

    def put(self, doc):
        """Makes doc (properties and twinSignature, no "$version") the whole desired document,
        as a writer other than twinctl; returns the $version that names it."""
        raise NotImplementedError

    def status(self):
        """The reported $status (None before any)."""
        raise NotImplementedError

    def reported_props(self):
        raise NotImplementedError

    def wait_status(self, state, version, timeout=15):
        seen = []

        def check():
            if self.agent.died():
                raise AssertionError(f"twind exited:\n{self.agent.log_tail()}")
            st = self.status() or {}
            seen.append(st)
            return st.get("state") == state and st.get("desiredVersion") == version

        assert poll(check, timeout), (f"no $status {state} for $version {version}; last "
                                      f"{seen[-1:]}\n{self.agent.log_tail()}")
        return seen[-1]

    def restart(self):
        self.agent.stop()
        self.start()

    def cleanup(self):
        self.agent.cleanup()


# ---- the checks, for every dialect ----------------------------------------------------------


def refused(twin, version, check):
    """$status failed for version, its error beginning with the check's name; nothing new was
    applied."""
    calls = len(twin.apply.calls())
    props = twin.reported_props()
    st = twin.wait_status("failed", version)
    assert st["error"].startswith(check + ": "), st
    assert len(twin.apply.calls()) == calls, twin.apply.calls()
    assert twin.reported_props() == props
    assert (check + ": ") in twin.agent.log_text()
    return st


def test_signed_set_is_applied(twin):
    key = twin.trust_key("ops-2026")
    twin.require()
    twin.start()
    out = twin.set("sendFrequency=5m", key=key, key_id="ops-2026")
    assert out["status"]["state"] == "success", out
    # The apply command and the report see properties only.
    assert twin.apply.inputs() == [{"configId": 1, "sendFrequency": "5m"}]
    assert twin.reported_props() == {"configId": 1, "sendFrequency": "5m"}
    # What the service holds verifies with the second implementation.
    desired = twin.desired()
    sig = desired["twinSignature"]
    assert sig["keyId"] == "ops-2026" and sig["deviceId"] == DEVICE, sig
    twinsign.verify(desired, twin.private_key(key).public_key())
    # The key's fingerprint, twinctl's default key id, names it as well.
    out = twin.set("sendFrequency=1h", key=key)
    assert twin.desired()["twinSignature"]["keyId"].startswith("sha256:")
    assert out["status"]["state"] == "success", out
    assert twin.apply.inputs()[-1] == {"configId": 2, "sendFrequency": "1h"}
    # The sequence accepted is kept by key.
    state = twin.agent.read_state()
    assert list(state["signers"].values()) == [twin.desired()["twinSignature"]["seq"]], state


def test_unsigned_is_refused(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    twin.set("mode=eco", key=key)
    out = twin.set("mode=turbo", expect=EXIT_DEVICE_FAILED)
    st = refused(twin, out["version"], "unsigned")
    assert "require_signature" in st["error"], st
    assert twin.reported_props() == {"configId": 1, "mode": "eco"}
    # The unsigned set removed the old signature rather than leaving it over new properties.
    assert "twinSignature" not in twin.desired()


def test_tampered_is_refused(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    twin.set("mode=eco", "limit=5", key=key)
    doc = twin.desired()
    doc.pop("$version")
    doc["limit"] = 6
    v = twin.put(doc)
    st = refused(twin, v, "bad signature")
    assert "does not verify with key 'ops'" in st["error"], st


def test_wrong_device_is_refused(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    doc = twinsign.sign({"configId": 1, "mode": "eco"}, twin.private_key(key), "dev-2",
                        int(time.time() * 1000), key_id="ops")
    v = twin.put(doc)
    st = refused(twin, v, "wrong device")
    assert f"signed for device 'dev-2', this is '{DEVICE}'" in st["error"], st


def test_expired_is_refused(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    doc = twinsign.sign({"configId": 1, "mode": "eco"}, twin.private_key(key), DEVICE,
                        int(time.time() * 1000), key_id="ops", not_after="2020-01-01T00:00:00Z")
    v = twin.put(doc)
    st = refused(twin, v, "expired")
    assert "until 2020-01-01T00:00:00Z" in st["error"], st
    # One valid for a while yet is applied.
    doc = twinsign.sign({"configId": 2, "mode": "eco"}, twin.private_key(key), DEVICE,
                        int(time.time() * 1000), key_id="ops", not_after="2099-01-01T00:00:00Z")
    twin.wait_status("success", twin.put(doc))
    assert twin.apply.inputs() == [{"configId": 2, "mode": "eco"}]


def test_replayed_is_refused_also_after_a_restart(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    twin.set("mode=eco", key=key)
    old = twin.desired()
    old.pop("$version")
    twin.set("mode=turbo", key=key)
    seq = twin.desired()["twinSignature"]["seq"]
    st = refused(twin, twin.put(old), "replayed")
    assert f"is not above {seq}" in st["error"], st
    assert twin.reported_props() == {"configId": 2, "mode": "turbo"}

    # A new document, then the old one again while the agent is down: the state file
    # remembers.
    twin.set("mode=quiet", key=key)
    twin.agent.stop()
    v = twin.put(old)
    twin.start()
    refused(twin, v, "replayed")
    assert twin.reported_props() == {"configId": 3, "mode": "quiet"}
    assert len(twin.apply.calls()) == 3


def test_unknown_key_is_refused(twin):
    twin.trust_key("ops")
    twin.require()
    twin.start()
    stranger, _ = twin.keygen("stranger")
    out = twin.set("mode=eco", key=stranger, key_id="stranger", expect=EXIT_DEVICE_FAILED)
    st = refused(twin, out["version"], "unknown key")
    assert "signed with key 'stranger'" in st["error"], st
    # Someone else's key under a trusted name does not verify.
    out = twin.set("mode=eco", key=stranger, key_id="ops", expect=EXIT_DEVICE_FAILED)
    refused(twin, out["version"], "bad signature")


def test_revoked_after_sighup(twin):
    ops = twin.trust_key("ops")
    backup = twin.trust_key("backup")
    twin.require()
    twin.start()
    twin.set("mode=eco", key=backup, key_id="backup")
    # Removing the file revokes the key at the reload: by its name and by its fingerprint.
    os.unlink(twin.keys_dir / "backup.pem")
    twin.reload()
    out = twin.set("mode=turbo", key=backup, key_id="backup", expect=EXIT_DEVICE_FAILED)
    refused(twin, out["version"], "unknown key")
    out = twin.set("mode=turbo", key=backup, expect=EXIT_DEVICE_FAILED)
    refused(twin, out["version"], "unknown key")
    # The other key still works, and what the revoked one signed stays applied until then.
    assert twin.reported_props() == {"configId": 1, "mode": "eco"}
    out = twin.set("mode=turbo", key=ops)
    assert out["status"]["state"] == "success", out
    assert twin.apply.inputs()[-1] == {"configId": 4, "mode": "turbo"}


def test_malformed_signature_is_refused(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    doc = twinsign.sign({"configId": 1, "mode": "eco"}, twin.private_key(key), DEVICE, 5,
                        key_id="ops")
    doc["twinSignature"]["seq"] = "5"
    st = refused(twin, twin.put(doc), "malformed signature")
    assert "twinSignature.seq" in st["error"], st


def test_not_required_keeps_todays_behaviour(twin):
    key = twin.trust_key("ops")
    twin.require(False)
    twin.start()
    out = twin.set("mode=eco")
    assert out["status"]["state"] == "success", out
    out = twin.set("mode=turbo", key=key)
    assert out["status"]["state"] == "success", out
    assert twin.apply.inputs() == [{"configId": 1, "mode": "eco"},
                                   {"configId": 2, "mode": "turbo"}]
    # A signature that does not verify is only a warning then.
    doc = twin.desired()
    doc.pop("$version")
    doc["configId"] = 3
    twin.wait_status("success", twin.put(doc))
    assert twin.apply.inputs()[-1] == {"configId": 3, "mode": "turbo"}
    assert "bad signature: " in twin.agent.log_text()
    assert "applying it all the same" in twin.agent.log_text()
    assert "twinSignature" not in twin.reported_props()
