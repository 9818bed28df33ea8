# SPDX-License-Identifier: MIT
"""Signed desired documents on the standard dialect (docs/protocol.md, "Signed desired
documents"): the checks every dialect shares (signedlib.py: applied, unsigned, tampered, wrong
device, expired, replayed also after a restart, unknown key, revoked at a reload, malformed,
require_signature = no), and what is the same in every dialect so is tested once here:
twinctl's refusals before sending, keygen, --check-config, get, $TWINCTL_SIGN_KEY."""

import json
import os
import signal
import stat
import subprocess

import pytest

import twinlib
import twinsign
from signedlib import DEVICE, EXIT_FAILURE, EXIT_OK, Twin, environment, refused
from signedlib import *  # noqa: F401,F403 (the shared checks, collected here)
from test_twinctl import EXIT_USAGE, twinctl_binary


class StandardTwin(Twin):
    dialect = "standard"

    def __init__(self, tmp_path, make_apply, broker):
        self.broker = broker
        super().__init__(tmp_path, make_apply)
        self.service = twinlib.Service(broker, DEVICE, self.agent)

    def make_agent(self):
        return twinlib.Agent(str(self.tmp / "agent"), self.broker, device_id=DEVICE)

    def service_args(self):
        return ["--broker", self.broker.url]

    def start(self):
        mark = self.service.connection_mark()
        self.agent.start()
        self.service.wait_connection("online", mark)

    def put(self, doc):
        current = self.desired()
        answered = (self.status() or {}).get("desiredVersion", 0)
        version = max(current["$version"] if current else 0, answered) + 1
        self.service.publish({**doc, "$version": version})
        return version

    def status(self):
        last = self.service.last_reported()
        return (last or {}).get("$status")

    def reported_props(self):
        return twinlib.props(self.service.last_reported() or {})

    def cleanup(self):
        self.service.close()
        super().cleanup()


@pytest.fixture
def twin(tmp_path, make_apply, broker):
    t = StandardTwin(tmp_path, make_apply, broker)
    yield t
    t.cleanup()


def published_versions(twin):
    d = twin.desired()
    return d["$version"] if d else None


def test_twinctl_refuses_what_it_cannot_sign(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    twin.set("mode=eco", key=key)
    before = published_versions(twin)
    # A real number has no canonical form.
    r = twin.twinctl("set", DEVICE, "ratio=1.5", "--sign-key", key)
    assert r.returncode == EXIT_FAILURE, r
    assert "real number 1.5" in r.stderr and "only integers" in r.stderr, r.stderr
    # A document that fits only without its signature (the standard limit is 32 KiB; the
    # signature takes some 250 bytes).
    bare = {"$version": 2, "configId": 2, "mode": "eco", "blob": ""}
    big = "x" * (32768 - 100 - len(json.dumps(bare, separators=(",", ":"))))
    r = twin.twinctl("set", DEVICE, f"blob={big}", "--sign-key", key)
    assert r.returncode == EXIT_FAILURE, r
    assert "once signed" in r.stderr and "limit 32768" in r.stderr, r.stderr
    # An expired --not-after, a key that is no private key, reserved names, options without
    # a key.
    r = twin.twinctl("set", DEVICE, "a=1", "--sign-key", key, "--not-after",
                     "2020-01-01T00:00:00Z")
    assert r.returncode == EXIT_FAILURE and "has passed already" in r.stderr, r
    r = twin.twinctl("set", DEVICE, "a=1", "--sign-key", str(twin.keys_dir / "ops.pem"))
    assert r.returncode == EXIT_USAGE and "not an unencrypted Ed25519 private key" in r.stderr, r
    r = twin.twinctl("set", DEVICE, "twinSignature.seq=1")
    assert r.returncode == EXIT_USAGE and "set --sign-key makes" in r.stderr, r
    r = twin.twinctl("set", DEVICE, "a=1", "--key-id", "ops")
    assert r.returncode == EXIT_USAGE and "need a key to sign with" in r.stderr, r
    r = twin.twinctl("get", DEVICE, "--key-id", "ops")
    assert r.returncode == EXIT_USAGE, r
    assert published_versions(twin) == before
    assert len(twin.apply.calls()) == 1
    # Unsigned, the big document did fit: it is sent (and refused by the device).
    out = twin.set(f"blob={big}", expect=3)
    refused(twin, out["version"], "unsigned")


def test_keygen_files_and_key_ids(twin):
    key, pub = twin.keygen("ops-2026")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644
    with open(key) as f:
        text = f.read()
    assert text.startswith("-----BEGIN PRIVATE KEY-----\n"), text[:40]
    # Python reads what twinctl wrote; the fingerprint is the same on both sides.
    r = subprocess.run([twinctl_binary(), "--json", "keygen", str(twin.signing / "second")],
                       capture_output=True, text=True, env=environment())
    out = json.loads(r.stdout)
    with open(out["publicKey"]) as f:
        assert twinsign.fingerprint(twinsign.load_public_pem(f.read())) == out["fingerprint"]
    assert out["keyId"] == "second"
    # Never over an existing key.
    r = subprocess.run([twinctl_binary(), "keygen", str(twin.signing / "ops-2026")],
                       capture_output=True, text=True, env=environment())
    assert r.returncode == EXIT_FAILURE and "never overwritten" in r.stderr, r
    with open(key) as f:
        assert f.read() == text
    # The private key never reaches a log, nor the output of set.
    k = twin.trust_key("ops")
    twin.require()
    twin.start()
    out = twin.set("mode=eco", key=k)
    with open(k) as f:
        body = "".join(f.read().splitlines()[1:-1])
    assert body not in json.dumps(out) and body not in twin.agent.log_text()


def test_sign_key_from_the_environment_and_get(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    env = environment()
    env["TWINCTL_SIGN_KEY"] = key
    r = twin.twinctl("set", DEVICE, "mode=eco", "--key-id", "ops", "--not-after", "7d",
                     "--wait", env=env)
    assert r.returncode == EXIT_OK, r.stderr
    assert twin.apply.inputs() == [{"configId": 1, "mode": "eco"}]
    r = twin.twinctl("get", DEVICE)
    assert r.returncode == EXIT_OK, r.stderr
    sig = twin.desired()["twinSignature"]
    assert (f"Signature:  key ops, sequence {sig['seq']}, for {DEVICE}, until "
            f"{sig['notAfter']}") in r.stdout, r.stdout
    # --sign-key= with nothing signs nothing, whatever the environment says.
    r = twin.twinctl("set", DEVICE, "mode=turbo", "--sign-key=", "--wait", env=env)
    assert r.returncode == 3 and "unsigned: " in r.stderr, r


def test_check_config_validates_the_trust_directory(twin):
    twin.require()
    r = twin.agent.run("-c", twin.agent.conf, "--check-config")
    assert r.returncode != 0, r
    assert "holds no trusted key" in r.stderr, r.stderr
    twin.trust_key("ops")
    r = twin.agent.run("-c", twin.agent.conf, "--check-config")
    assert r.returncode == 0, r.stderr
    (twin.keys_dir / "broken.pem").write_text("not a key\n")
    r = twin.agent.run("-c", twin.agent.conf, "--check-config")
    assert r.returncode != 0, r
    assert "broken.pem: not an Ed25519 public key" in r.stderr, r.stderr
    # The agent does not start on it either, and names it.
    twin.agent.start()
    assert twin.agent.wait_exit() == 78
    assert "broken.pem: not an Ed25519 public key" in twin.agent.log_text()


def test_a_broken_key_file_keeps_the_running_keys(twin):
    key = twin.trust_key("ops")
    twin.require()
    twin.start()
    (twin.keys_dir / "broken.pem").write_text("not a key\n")
    before = twin.agent.log_text().count("Keeping the running configuration")
    twin.agent.signal(signal.SIGHUP)
    assert twinlib.poll(
        lambda: twin.agent.log_text().count("Keeping the running configuration") > before, 15)
    out = twin.set("mode=eco", key=key)
    assert out["status"]["state"] == "success", out


def test_no_trusted_keys_with_signatures_required_refuses_everything(twin):
    twin.require()
    twin.start()
    assert "holds no trusted key" in twin.agent.log_text()
    stranger, _ = twin.keygen("stranger")
    out = twin.set("mode=eco", key=stranger, expect=3)
    refused(twin, out["version"], "unknown key")


def test_known_answer_vectors_are_the_second_implementations():
    """The vectors test-twin-signature holds the C code to are what twinsign.py (written from
    docs/protocol.md) makes today: a change to either side that the other does not share fails
    here or in the unit test. Ed25519 signatures are deterministic, so the text is too."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["/usr/bin/python3", os.path.join(here, "twinsign.py"), "--vectors"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(here, "..", "twin-signature-vectors.json")) as f:
        committed = json.load(f)
    assert json.loads(r.stdout) == committed
