# SPDX-License-Identifier: MIT
"""Harness for tests against the AWS IoT Device Shadow emulator (tests/emulators/aws-iot).

AwsIotEmulator starts the emulator on free loopback ports with a throwaway PKI made with
openssl (CA, server certificate for localhost and 127.0.0.1, a device and a service
certificate, both registered), and wraps its control API. Every wait is bounded (times
TWIN_TIMEOUT_SCALE) and fails naming what was awaited, what was seen and the emulator's log.

Pki is a small certificate helper of this file's own; it may give way to a shared
tests/integration/certs.py.
"""

import json
import os
import selectors
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt

from twinlib import SCALE, WAIT, poll, tail, terminate

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMULATOR_DIR = os.path.join(TOP, "tests", "emulators", "aws-iot")
EMULATOR = os.path.join(EMULATOR_DIR, "emulator.js")


def node_binary():
    return os.environ.get("NODE") or shutil.which("node") or shutil.which("nodejs")


def available():
    """None when the emulator can run here, else the reason it cannot (for pytest.skip)."""
    if not node_binary():
        return "node is not installed (scripts/install-deps installs it)"
    if not os.path.isdir(os.path.join(EMULATOR_DIR, "node_modules", "aedes")):
        return f"the emulator's npm packages are not installed (npm ci in {EMULATOR_DIR})"
    if not shutil.which("openssl"):
        return "openssl is not installed"
    return None


class Pki:
    """Throwaway certificates in one directory: a CA per name, and leaf certificates signed by
    one of them. EC P-256 keys, valid for two days."""

    EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)

    def _openssl(self, *args):
        r = subprocess.run(["openssl", *args], cwd=self.dir, capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)}: {r.stderr}")

    def path(self, name, ext):
        return os.path.join(self.dir, f"{name}.{ext}")

    def have(self, name):
        return os.path.exists(self.path(name, "crt")) and os.path.exists(self.path(name, "key"))

    def ca(self, name):
        """A self-signed CA; returns the path of its certificate."""
        self._openssl("req", "-x509", *self.EC, "-days", "2", "-subj", f"/CN={name}",
                      "-keyout", f"{name}.key", "-out", f"{name}.crt")
        return self.path(name, "crt")

    def leaf(self, name, issuer, cn, extensions):
        """A key and a certificate for cn signed by the CA issuer; returns (crt, key)."""
        with open(self.path(name, "ext"), "w") as f:
            f.write("\n".join(extensions) + "\n")
        self._openssl("req", "-new", *self.EC, "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
                      "-out", f"{name}.csr")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{issuer}.crt", "-CAkey",
                      f"{issuer}.key", "-CAcreateserial", "-days", "2", "-extfile",
                      f"{name}.ext", "-out", f"{name}.crt")
        return self.path(name, "crt"), self.path(name, "key")

    def server(self, name, issuer):
        return self.leaf(name, issuer, "localhost",
                         ["subjectAltName=DNS:localhost,IP:127.0.0.1",
                          "extendedKeyUsage=serverAuth"])

    def client(self, name, issuer="ca", cn=None):
        return self.leaf(name, issuer, cn or name, ["extendedKeyUsage=clientAuth"])


class ControlError(AssertionError):
    pass


class AwsIotEmulator:
    """The emulator with its own directory, PKI and log. The device certificate may connect
    as `thing` and use its shadows; the service certificate may connect with any client id,
    use every thing's shadows and read lifecycle events.

    pki_dir: certificates to reuse (made there when missing), for emulators of one thing that
    may share them; the default is a new PKI in directory."""

    def __init__(self, directory, thing="dev-1", pki_dir=None):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.thing = thing
        self.log_path = os.path.join(directory, "emulator.log")
        self.pki = Pki(pki_dir or os.path.join(directory, "pki"))
        p = self.pki
        self.ca = p.path("ca", "crt") if p.have("ca") else p.ca("ca")
        self.server_cert, self.server_key = (
            (p.path("server", "crt"), p.path("server", "key")) if p.have("server")
            else p.server("server", "ca"))
        self.device_cert, self.device_key = (
            (p.path(f"device-{thing}", "crt"), p.path(f"device-{thing}", "key"))
            if p.have(f"device-{thing}") else p.client(f"device-{thing}", cn=thing))
        self.service_cert, self.service_key = (
            (p.path("service", "crt"), p.path("service", "key")) if p.have("service")
            else p.client("service", cn="twinctl"))
        self.proc = None
        self.mqtt_port = 0
        self.control_port = 0
        self.startup_seconds = None

    # --- life -----------------------------------------------------------------------------

    @property
    def url(self):
        return f"mqtts://localhost:{self.mqtt_port}"

    def start(self, timeout=15.0):
        """Starts the emulator (on the ports of the previous run, if any) and registers the
        device and service certificates. Returns once both ports listen."""
        assert self.proc is None, "emulator already running"
        node = node_binary()
        if not node:
            raise RuntimeError("node is not installed")
        logf = open(self.log_path, "ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [node, EMULATOR, "--ca", self.ca, "--cert", self.server_cert, "--key",
             self.server_key, "--mqtt-port", str(self.mqtt_port), "--control-port",
             str(self.control_port), "--exit-with-stdin"],
            # stdin is a pipe from this process: should the test die, the emulator stops too.
            stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.PIPE)
        logf.close()
        line = self._read_startup_line(timeout * SCALE)
        info = json.loads(line)
        self.startup_seconds = time.monotonic() - t0
        self.mqtt_port = info["mqttPort"]
        self.control_port = info["controlPort"]
        self.register_certificate(self.device_cert, client_ids=[self.thing], things=[self.thing])
        self.register_certificate(self.service_cert, client_ids=["*"], things=["*"], events=True)

    def _read_startup_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    raise AssertionError(
                        f"emulator did not start in {timeout:.1f} s:\n{self.log_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    rc = self.proc.wait(5)
                    self._release()
                    raise AssertionError(
                        f"emulator exited with {rc} before listening:\n{self.log_tail()}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self._release()

    def kill(self):
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(5)
        self._release()

    def _release(self):
        self.proc.stdout.close()
        self.proc.stdin.close()
        self.proc = None

    def restart(self):
        """Stops and starts again on the same ports; the new run starts with no shadows."""
        self.stop()
        self.start()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=40):
        return tail(self.log_path, lines)

    # --- control API ----------------------------------------------------------------------

    def call(self, method, path, body=None, ok=(200, 201)):
        """One control request; returns (status, body). A status outside ok raises."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}{path}", data=data,
                                     method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10 * SCALE) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        result = json.loads(text) if text else None
        if ok is not None and status not in ok:
            raise ControlError(f"control {method} {path} -> {status} {result}")
        return status, result

    @staticmethod
    def _shadow_path(thing, name):
        return f"/things/{thing}/shadow" + (f"?name={name}" if name else "")

    def register_certificate(self, cert_path, client_ids=None, things=(), events=False):
        """Registers a certificate (by its PEM file) with its policy; returns the entry, whose
        certificateId names it for revoke_certificate."""
        with open(cert_path) as f:
            spec = {"certificatePem": f.read(), "things": list(things), "events": events}
        if client_ids is not None:
            spec["clientIds"] = list(client_ids)
        return self.call("POST", "/certificates", spec)[1]

    def revoke_certificate(self, certificate_id, keep_connections=False):
        """Removes a registration; its live connections are dropped (AUTH_ERROR) unless
        keep_connections. Returns {revoked, dropped}."""
        q = "?keepConnections=1" if keep_connections else ""
        return self.call("DELETE", f"/certificates/{certificate_id}{q}")[1]

    def shadow(self, thing=None, name=None):
        """{exists, version, state, metadata} of a classic (name None) or named shadow."""
        return self.call("GET", self._shadow_path(thing or self.thing, name))[1]

    def update_shadow(self, doc, thing=None, name=None, ok=(200,)):
        """An update by a foreign writer (AWS's REST API): subscribers get delta and documents,
        nobody gets update/accepted. Returns (status, accepted or error document)."""
        return self.call("POST", self._shadow_path(thing or self.thing, name), doc, ok=ok)

    def delete_shadow(self, thing=None, name=None, ok=(200,)):
        """Deletes a shadow (its version counter stays); no MQTT message. Returns (status, body)."""
        return self.call("DELETE", self._shadow_path(thing or self.thing, name), ok=ok)

    def clients(self):
        return self.call("GET", "/clients")[1]

    def drop(self, client_id=None):
        """Closes the connection of client_id (every connection when None) as AWS's
        DeleteConnection does (API_INITIATED_DISCONNECT). Returns how many were dropped."""
        path = "/clients/drop"
        if client_id is not None:
            path = f"/clients/{urllib.parse.quote(client_id, safe='')}/drop"
        return self.call("POST", path)[1]["dropped"]

    def refuse_connects(self, seconds=None, return_code=3, mode="connack"):
        """Refuses every CONNECT for seconds (None: until lift_refusal) with CONNACK
        return_code, or by closing the connection (mode "close")."""
        body = {"returnCode": return_code, "mode": mode}
        if seconds is not None:
            body["seconds"] = seconds
        return self.call("PUT", "/refusal", body)[1]

    def lift_refusal(self):
        self.call("DELETE", "/refusal")

    def inject_errors(self, count=1, code=None, kind=None, drop=False, message=None):
        """Answers the next count shadow requests (of kind get/update/delete, or any) on
        .../rejected with code, or not at all when drop."""
        body = {"count": count, "drop": drop}
        if code is not None:
            body["code"] = code
        if kind is not None:
            body["kind"] = kind
        if message is not None:
            body["message"] = message
        return self.call("POST", "/faults", body)[1]

    def clear_errors(self):
        self.call("DELETE", "/faults")

    def counters(self):
        """{requests, accepted, rejected: {get, update, delete}, injected, unanswered, foreign,
        byClient: {clientId: counts}, byConnection: {connId: counts + clientId}}."""
        return self.call("GET", "/counters")[1]

    def reset_counters(self):
        self.call("DELETE", "/counters")

    def log(self, since=0):
        """Connection log entries after sequence number since: events connected,
        disconnected (reason), refused (reason, returnCode), tls-refused, forbidden."""
        return self.call("GET", f"/log?since={since}")[1]

    def log_mark(self):
        entries = self.log()
        return entries[-1]["seq"] if entries else 0

    def publish(self, topic, payload=None, json_value=None, qos=0, retain=False):
        """Publishes as the broker itself (to any topic, $aws ones included)."""
        body = {"topic": topic, "qos": qos, "retain": retain}
        if json_value is not None:
            body["json"] = json_value
        elif payload is not None:
            body["payload"] = payload
        self.call("POST", "/publish", body)

    # --- bounded waits ----------------------------------------------------------------------

    def _fail(self, what, seen, timeout):
        raise AssertionError(f"timed out after {timeout * SCALE:.1f} s waiting for {what}; "
                             f"last seen: {seen}\nemulator log:\n{self.log_tail()}")

    def wait_log(self, predicate, what, since=0, timeout=WAIT):
        """The first log entry after since that satisfies predicate."""
        found = []

        def check():
            found[:] = [e for e in self.log(since) if predicate(e)]
            return bool(found)

        if not poll(check, timeout):
            self._fail(what, self.log(since)[-5:], timeout)
        return found[0]

    def wait_connected(self, client_id, since=0, timeout=WAIT):
        return self.wait_log(lambda e: e["event"] == "connected" and e["clientId"] == client_id,
                             f"{client_id} connected", since, timeout)

    def wait_disconnected(self, client_id, since=0, timeout=WAIT):
        return self.wait_log(lambda e: e["event"] == "disconnected" and e["clientId"] == client_id,
                             f"{client_id} disconnected", since, timeout)

    def wait_refused(self, since=0, timeout=WAIT):
        return self.wait_log(lambda e: e["event"] in ("refused", "tls-refused"), "a refusal",
                             since, timeout)

    def wait_shadow(self, predicate, what, thing=None, name=None, timeout=WAIT):
        """The shadow (as shadow() gives it) once predicate holds."""
        seen = [None]

        def check():
            seen[0] = self.shadow(thing, name)
            return predicate(seen[0])

        if not poll(check, timeout):
            self._fail(what, seen[0], timeout)
        return seen[0]

    def wait_requests(self, kind, count, timeout=WAIT):
        """Counters once count requests of kind were received."""
        seen = [None]

        def check():
            seen[0] = self.counters()
            return seen[0]["requests"][kind] >= count

        if not poll(check, timeout):
            self._fail(f"{count} {kind} requests", seen[0], timeout)
        return seen[0]


class MqttClient:
    """A paho MQTT 3.1.1 client of the emulator over mutual TLS, recording what happens:
    connects (rc), disconnects and every message (topic, JSON or bytes payload, retain).

    cert is "device" or "service" (the emulator's registered ones) or a (crt, key) pair, or
    None for no client certificate."""

    def __init__(self, emulator, client_id, cert="device", clean_session=True, will=None,
                 reconnect=False):
        self.emu = emulator
        self.client_id = client_id
        self.connacks = []  # CONNACK return codes, in order
        self.disconnects = []  # paho's rc of each disconnect
        self.messages = []  # (topic, payload, retain)
        self.c = mqtt.Client(client_id=client_id, clean_session=clean_session)
        if cert == "device":
            cert = (emulator.device_cert, emulator.device_key)
        elif cert == "service":
            cert = (emulator.service_cert, emulator.service_key)
        ctx = ssl.create_default_context(cafile=emulator.ca)  # checks the host name too
        if cert is not None:
            ctx.load_cert_chain(cert[0], cert[1])
        self.c.tls_set_context(ctx)
        if will is not None:
            self.c.will_set(**will)
        self.c.on_connect = lambda c, u, f, rc: self.connacks.append(rc)
        self.reconnect = reconnect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.error = None
        self.thread = None

    def _loop(self):
        try:
            self.c.loop_forever()
        except OSError as e:  # a TLS 1.3 alert comes after the handshake, on the first read
            self.error = e
            self.disconnects.append(None)

    def _on_disconnect(self, client, userdata, rc):
        self.disconnects.append(rc)
        if not self.reconnect:
            client.disconnect()  # ends paho's network loop instead of reconnecting

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = msg.payload
        self.messages.append((msg.topic, payload, bool(msg.retain)))

    def connect(self, wait=True, timeout=WAIT):
        """Connects (host name localhost, for SNI and the certificate check). With wait, returns
        once the CONNACK was accepted and fails otherwise. A TLS failure is kept in .error."""
        try:
            self.c.connect("localhost", self.emu.mqtt_port, keepalive=30)
        except OSError as e:  # ssl.SSLError included
            self.error = e
            if wait:
                raise
            return self
        self.thread = threading.Thread(target=self._loop, name=f"mqtt-{self.client_id}",
                                       daemon=True)
        self.thread.start()
        if wait and not poll(lambda: self.connacks or self.disconnects, timeout):
            raise AssertionError(f"{self.client_id}: no CONNACK\n{self.emu.log_tail()}")
        if wait and self.connacks[-1:] != [0]:
            raise AssertionError(f"{self.client_id}: CONNACK {self.connacks}, "
                                 f"disconnects {self.disconnects}")
        return self

    def subscribe(self, *topics, qos=1, timeout=WAIT):
        """Subscribes and waits for the SUBACK."""
        done = []
        self.c.on_subscribe = lambda c, u, mid, granted: done.append((mid, granted))
        rc, mid = self.c.subscribe([(t, qos) for t in topics])
        if rc != 0 or not poll(lambda: any(m == mid for m, _ in done), timeout):
            raise AssertionError(f"{self.client_id}: no SUBACK for {topics} (rc {rc})")
        return [g for m, g in done if m == mid][0]

    def publish(self, topic, payload, qos=1, retain=False):
        if not isinstance(payload, (bytes, str)):
            payload = json.dumps(payload)
        return self.c.publish(topic, payload, qos=qos, retain=retain)

    def mark(self):
        return len(self.messages)

    def wait_message(self, topic, predicate=lambda p: True, mark=0, timeout=WAIT):
        """The payload of the first message on topic after mark that satisfies predicate."""
        found = []

        def check():
            found[:] = [p for t, p, _ in self.messages[mark:] if t == topic and predicate(p)]
            return bool(found)

        if not poll(check, timeout):
            raise AssertionError(f"{self.client_id}: no message on {topic} in "
                                 f"{timeout * SCALE:.1f} s; got {self.messages[mark:][-5:]}\n"
                                 f"{self.emu.log_tail()}")
        return found[0]

    def on(self, topic, mark=0):
        """Payloads received on topic after mark."""
        return [p for t, p, _ in self.messages[mark:] if t == topic]

    def wait_disconnect(self, timeout=WAIT):
        if not poll(lambda: self.disconnects, timeout):
            raise AssertionError(f"{self.client_id}: still connected\n{self.emu.log_tail()}")
        return self.disconnects[-1]

    def close(self):
        try:
            self.c.disconnect()
        except OSError:  # the connection was already gone
            pass
        if self.thread is not None:
            self.thread.join(WAIT * SCALE)
