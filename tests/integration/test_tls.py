# SPDX-License-Identifier: MIT
"""TLS to the broker: mqtts:// with CA verification and host name check, client certificates,
the key as a systemd credential, and twinctl over TLS. Certificates are made with openssl at
test time; mosquitto gets a TLS listener next to the plain one the service client uses."""

import os
import shutil
import subprocess
import tempfile

import pytest

import twinlib
from certs import make_ca, make_cert
from test_control import Control, wait_socket
from test_twinctl import environment as twinctl_environment
from test_twinctl import twinctl_binary
from twinlib import poll, props

TIMEOUT = 15.0


@pytest.fixture(scope="module")
def certs():
    """ca: the trusted CA; server: 127.0.0.1 and localhost by ca; other: another host name by
    ca; rogue: localhost by an unknown CA (rogue-ca); client: a client certificate by ca.
    A short directory: twind.conf lines are limited to 199 characters."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tempfile.mkdtemp(prefix="tls")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    make_cert(d, "server", "ca", "127.0.0.1", server_ext)
    make_cert(d, "rogue", "rogue-ca", "localhost", server_ext)
    make_cert(d, "other", "ca", "other.example",
              "subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth")
    make_cert(d, "client", "ca", "dev-1", "extendedKeyUsage=clientAuth")
    # mosquitto may drop root privileges before it reads them.
    os.chmod(d, 0o755)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class TlsBroker(twinlib.Broker):
    """The harness's broker plus a TLS listener on tls_port, serving cert (a name in certs)."""

    def __init__(self, directory, certs, cert="server", require_certificate=False):
        super().__init__(directory)
        self.tls_port = twinlib.free_port()
        with open(self.conf, "a") as f:
            f.write(
                f"listener {self.tls_port} 127.0.0.1\n"
                f"cafile {certs}/ca.crt\n"
                f"certfile {certs}/{cert}.crt\n"
                f"keyfile {certs}/{cert}.key\n"
                f"require_certificate {'true' if require_certificate else 'false'}\n"
            )

    def tls_url(self, host="localhost"):
        return f"mqtts://{host}:{self.tls_port}"

    def start(self, timeout=10.0):
        super().start(timeout)
        assert poll(lambda: twinlib.port_accepts(self.tls_port), timeout), (
            "mosquitto's TLS listener did not accept:\n" + twinlib.tail(self.log)
        )


@pytest.fixture
def tls_broker(tmp_path, certs, request):
    """request.param: (server certificate name, require_certificate)."""
    cert, require = getattr(request, "param", ("server", False))
    b = TlsBroker(str(tmp_path / "tls-broker"), certs, cert, require)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def tls_agent(tmp_path, tls_broker, certs):
    """An agent configured for the TLS listener (mqtts://localhost, cafile), not started."""
    d = tempfile.mkdtemp(prefix="ta")
    a = twinlib.Agent(d, tls_broker)
    a.configure("broker", "url", tls_broker.tls_url())
    a.configure("broker", "cafile", f"{certs}/ca.crt")
    yield a
    a.cleanup()
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tls_service(tls_broker, tls_agent):
    s = twinlib.Service(tls_broker, tls_agent.device_id, tls_agent)
    yield s
    s.close()


def status(agent):
    c = Control(agent.socket)
    try:
        return c.result("status")
    finally:
        c.close()


def assert_refused_and_retrying(agent, service, needle):
    """The agent never connects, logs needle on at least two attempts, keeps running, and its
    status names the problem."""
    agent.start()
    wait_socket(agent)

    def two_attempts():
        agent.assert_alive()
        return agent.log_text().count(needle) >= 2

    assert poll(two_attempts, TIMEOUT), f"no two attempts failing with {needle!r}:\n" + agent.log_tail()
    agent.assert_alive()
    st = status(agent)
    assert st["connected"] is False
    assert st["lastError"] and needle in st["lastError"], st
    assert not [c for c in service.connection_since() if c and c.get("state") == "online"]


def test_mqtts_with_cafile_connects_and_applies(tls_agent, tls_service):
    tls_agent.start()
    tls_service.wait_connection("online")
    tls_service.publish({"$version": 1, "configId": 1, "mode": "tls"})
    doc = tls_service.wait_status("success", 1)
    assert props(doc) == {"configId": 1, "mode": "tls"}
    wait_socket(tls_agent)
    st = status(tls_agent)
    assert st["connected"] is True, st
    assert str(tls_agent.broker.tls_port) in st["broker"] and "TLS" in st["broker"], st


@pytest.mark.parametrize("tls_broker", [("rogue", False)], indirect=True)
def test_unknown_ca_is_refused_and_retried(tls_agent, tls_service):
    assert_refused_and_retrying(tls_agent, tls_service, "certificate verify failed")
    assert "unable to get local issuer certificate" in tls_agent.log_text()


@pytest.mark.parametrize("tls_broker", [("other", False)], indirect=True)
def test_certificate_for_another_host_is_refused_and_retried(tls_agent, tls_service):
    assert_refused_and_retrying(tls_agent, tls_service, "certificate verify failed")
    assert "host name" in tls_agent.log_text().lower()


@pytest.mark.parametrize("tls_broker", [("server", True)], indirect=True)
def test_required_client_certificate_missing_is_refused(tls_agent, tls_service):
    assert_refused_and_retrying(tls_agent, tls_service, "alert certificate required")


@pytest.mark.parametrize("tls_broker", [("server", True)], indirect=True)
def test_required_client_certificate_given_connects(tls_agent, tls_service, certs):
    tls_agent.configure("broker", "certfile", f"{certs}/client.crt")
    tls_agent.configure("broker", "keyfile", f"{certs}/client.key")
    tls_agent.start()
    tls_service.wait_connection("online")
    tls_service.publish({"$version": 3, "configId": 7})
    tls_service.wait_status("success", 3)


@pytest.mark.parametrize("tls_broker", [("server", True)], indirect=True)
def test_client_key_from_a_systemd_credential(tls_agent, tls_service, certs, monkeypatch):
    creds = tempfile.mkdtemp(prefix="cred")
    try:
        shutil.copy(f"{certs}/client.key", f"{creds}/broker-key")
        os.chmod(f"{creds}/broker-key", 0o400)
        tls_agent.configure("broker", "certfile", f"{certs}/client.crt")
        tls_agent.configure("broker", "keyfile", "broker-key")
        # Without the credentials directory the relative name is refused at start.
        monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
        r = tls_agent.run("-c", tls_agent.conf, "--check-config")
        assert r.returncode != 0
        assert "keyfile: 'broker-key' is a relative name" in r.stderr, r.stderr
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", creds)
        tls_agent.start()
        tls_service.wait_connection("online")
        assert "-----BEGIN" not in tls_agent.log_text()
    finally:
        shutil.rmtree(creds, ignore_errors=True)


def twinctl_tls(broker, certs, *args):
    return subprocess.run(
        [twinctl_binary(), "--broker", broker.tls_url(), "--cafile", f"{certs}/ca.crt", *args],
        capture_output=True, text=True, timeout=30, env=twinctl_environment(),
        stdin=subprocess.DEVNULL,
    )


def test_twinctl_get_and_set_over_tls(tls_agent, tls_service, tls_broker, certs):
    tls_agent.start()
    tls_service.wait_connection("online")
    r = twinctl_tls(tls_broker, certs, "--timeout", "20", "--wait", "set", "dev-1", "mode=secure")
    assert r.returncode == 0, r.stderr
    r = twinctl_tls(tls_broker, certs, "--json", "get", "dev-1")
    assert r.returncode == 0, r.stderr
    assert '"mode": "secure"' in r.stdout or '"mode":"secure"' in r.stdout, r.stdout


@pytest.mark.parametrize("tls_broker", [("rogue", False)], indirect=True)
def test_twinctl_refuses_an_unknown_ca(tls_broker, certs):
    r = twinctl_tls(tls_broker, certs, "get", "dev-1")
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert "certificate verify failed" in r.stderr, r.stderr
