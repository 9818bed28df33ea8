# SPDX-License-Identifier: MIT
"""Harness for tests against the Azure IoT Hub emulator (tests/emulators/azure-iothub): starts
it on free loopback ports with a throwaway CA, wraps its control API, makes connection strings
and SAS tokens, and offers MqttDevice, a paho device that speaks IoT Hub's twin topics.

Every wait is bounded (times TWIN_TIMEOUT_SCALE) and fails saying what it awaited and what it
saw last; nothing sleeps a fixed time.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import selectors
import shutil
import ssl
import subprocess
import threading
import time
import urllib.parse
import uuid

import paho.mqtt.client as mqtt

from certs import make_ca, make_cert
from twinlib import terminate

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR_DIR = os.path.normpath(os.path.join(HERE, "..", "emulators", "azure-iothub"))
EMULATOR = os.path.join(EMULATOR_DIR, "emulator.js")
NODE = os.environ.get("NODE") or shutil.which("node")
HOST_NAME = "test-hub.azure-devices.net"
API_VERSION = "2021-04-12"
WAIT = 15.0
SCALE = float(os.environ.get("TWIN_TIMEOUT_SCALE", "1"))
ALL_RIGHTS = ["RegistryRead", "RegistryWrite", "ServiceConnect", "DeviceConnect"]


def random_key():
    return base64.b64encode(os.urandom(32)).decode()


def sas_token(resource, key, expiry, policy=None):
    """IoT Hub's SharedAccessSignature for resource (not yet URL-encoded), signed with the
    base64 key, expiring at expiry (seconds since the epoch), as Microsoft's SDKs make it."""
    sr = urllib.parse.quote(resource, safe="")
    mac = hmac.new(base64.b64decode(key), f"{sr}\n{int(expiry)}".encode(), hashlib.sha256)
    sig = urllib.parse.quote(base64.b64encode(mac.digest()).decode(), safe="")
    token = f"SharedAccessSignature sr={sr}&sig={sig}&se={int(expiry)}"
    if policy:
        token += f"&skn={urllib.parse.quote(policy, safe='')}"
    return token


def deadline_poll(fn, timeout, what, interval=0.05):
    """fn()'s first truthy result, polled until timeout (times SCALE); AssertionError after,
    naming what and fn's last result."""
    end = time.monotonic() + timeout * SCALE
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(
                f"timed out after {timeout * SCALE:.1f} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class ControlError(Exception):
    def __init__(self, status, body):
        super().__init__(f"control API answered {status}: {body}")
        self.status = status
        self.body = body


class AzureHub:
    """One emulator process in directory: hub host_name, an MQTT/TLS and an HTTPS port, a
    control port, all on 127.0.0.1 (https_port=0: a free one; the service SDK needs 443).
    The CA and the server certificate (SAN DNS:localhost, IP:127.0.0.1) are made at start."""

    def __init__(self, directory, host_name=HOST_NAME, https_port=0):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        self.host_name = host_name
        self.requested_https_port = https_port
        self.owner_key = random_key()
        self.device_policy_key = random_key()
        self.service_policy_key = random_key()  # "service": ServiceConnect only
        self.log_file = os.path.join(self.dir, "emulator.log")
        self.proc = None
        self.ready = None
        self.start_seconds = None
        self.certs = os.path.join(self.dir, "certs")

    # -- life cycle --------------------------------------------------------------------------

    @property
    def ca(self):
        return os.path.join(self.certs, "ca.crt")

    def make_certificates(self):
        if os.path.exists(self.ca):
            return
        os.makedirs(self.certs, exist_ok=True)
        make_ca(self.certs, "ca")
        make_cert(self.certs, "server", "ca", "localhost",
                  "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")

    def start(self, timeout=WAIT):
        """Starts the emulator; returns once it printed that every listener is up."""
        assert self.proc is None, "emulator already running"
        if not NODE:
            raise RuntimeError("node not found: run scripts/install-deps")
        if not os.path.isdir(os.path.join(EMULATOR_DIR, "node_modules", "aedes")):
            raise RuntimeError(f"npm packages missing in {EMULATOR_DIR}: run scripts/install-deps")
        self.make_certificates()
        config = {
            "hostName": self.host_name,
            "cert": os.path.join(self.certs, "server.crt"),
            "key": os.path.join(self.certs, "server.key"),
            "clientCa": self.ca,
            "httpsPort": self.requested_https_port,
            "policies": [
                {"name": "iothubowner", "primaryKey": self.owner_key, "rights": ALL_RIGHTS},
                {"name": "service", "primaryKey": self.service_policy_key,
                 "rights": ["ServiceConnect"]},
                {"name": "device", "primaryKey": self.device_policy_key,
                 "rights": ["DeviceConnect"]},
                {"name": "registryRead", "primaryKey": random_key(), "rights": ["RegistryRead"]},
            ],
        }
        conf = os.path.join(self.dir, "emulator.json")
        with open(conf, "w") as f:
            json.dump(config, f)
        began = time.monotonic()
        with open(self.log_file, "ab") as logf:
            # stdin is the lifeline: when this process dies, the emulator's stdin ends and it
            # exits too.
            self.proc = subprocess.Popen(
                [NODE, EMULATOR, "--config", conf, "--lifeline"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, cwd=EMULATOR_DIR,
            )
        line = self._first_line(timeout)
        self.ready = json.loads(line)
        self.start_seconds = time.monotonic() - began
        return self

    def _first_line(self, timeout):
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        end = time.monotonic() + timeout * SCALE
        buf = b""
        try:
            while b"\n" not in buf:
                left = end - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.stop()
                    raise AssertionError(
                        f"the emulator did not start in {timeout * SCALE} s:\n{self.log_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    rc = self.proc.wait(5)
                    self.proc = None
                    raise AssertionError(f"the emulator exited with {rc}:\n{self.log_tail()}")
                buf += chunk
        finally:
            sel.close()
        return buf.split(b"\n", 1)[0].decode()

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        self.proc = None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=60):
        try:
            with open(self.log_file, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def mqtt_port(self):
        return self.ready["mqttPort"]

    @property
    def https_port(self):
        return self.ready["httpsPort"]

    @property
    def control_port(self):
        return self.ready["controlPort"]

    # -- the control API ---------------------------------------------------------------------

    def control(self, method, path, body=None):
        """One control request; the decoded JSON answer, ControlError for a non-200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=10 * SCALE)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if data is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            text = r.read().decode()
        finally:
            conn.close()
        value = json.loads(text) if text.strip() else None
        if r.status != 200:
            raise ControlError(r.status, value)
        return value

    @staticmethod
    def _path(prefix, device_id, module_id=None, *rest):
        p = f"/{prefix}/{urllib.parse.quote(device_id, safe='')}"
        if module_id:
            p += f"/modules/{urllib.parse.quote(module_id, safe='')}"
        for r in rest:
            p += f"/{r}"
        return p

    def add_device(self, device_id, module_id=None, key=None, status="enabled", auth="sas",
                   thumbprint=None):
        """Registers a device (or a module of one); auth: sas, selfSigned (thumbprint: SHA-1
        or SHA-256 hex of the certificate) or certificateAuthority (CN = device id, signed by
        this hub's CA). Returns the identity, keys included."""
        spec = {"deviceId": device_id, "status": status, "authenticationType": auth}
        if module_id:
            spec["moduleId"] = module_id
        if auth == "sas":
            spec["primaryKey"] = key or random_key()
        if thumbprint:
            spec["primaryThumbprint"] = thumbprint
        return self.control("POST", "/devices", spec)

    def remove_device(self, device_id, module_id=None):
        self.control("DELETE", self._path("devices", device_id, module_id))

    def set_status(self, device_id, status, module_id=None):
        """enabled or disabled; disabling closes the identity's connection."""
        path = self._path("devices", device_id, module_id)
        return self.control("PATCH", path, {"status": status})

    def identity(self, device_id, module_id=None):
        for i in self.control("GET", "/devices"):
            if i["deviceId"] == device_id and i["moduleId"] == module_id:
                return i
        raise KeyError(device_id if not module_id else f"{device_id}/{module_id}")

    def twin(self, device_id, module_id=None):
        """The twin as REST's Get Twin returns it."""
        return self.control("GET", self._path("twins", device_id, module_id))

    def set_desired(self, device_id, patch, notify=True, module_id=None):
        """Merges patch into desired ($version + 1). notify=False changes it silently: the
        device gets no notification (a version gap for it). Returns the control's answer:
        {version, notified, delivered}."""
        return self.control("POST", self._path("twins", device_id, module_id, "desired"),
                            {"patch": patch, "notify": notify})

    def send_notification(self, device_id, patch, version, module_id=None):
        """Sends a desired notification with this patch and $version to the device as it is,
        without changing the twin (a stale or repeated one). Returns whether it was delivered."""
        return self.control("POST", self._path("twins", device_id, module_id, "notification"),
                            {"patch": patch, "version": version})["delivered"]

    def replace_desired(self, device_id, doc, notify=True, module_id=None):
        return self.control("POST", self._path("twins", device_id, module_id, "desired"),
                            {"replace": doc, "notify": notify})

    def set_reported(self, device_id, patch, module_id=None):
        """Merges patch into reported as if the device had sent it (no device needed)."""
        path = self._path("twins", device_id, module_id, "reported")
        return self.control("POST", path, {"patch": patch})

    def set_tags(self, device_id, patch, module_id=None):
        path = self._path("twins", device_id, module_id, "tags")
        return self.control("POST", path, {"patch": patch})

    def drop(self, device_id, module_id=None, reason=None):
        """Closes the identity's MQTT connection; False when it had none."""
        body = {"reason": reason} if reason else {}
        path = self._path("connections", device_id, module_id, "drop")
        return self.control("POST", path, body)["dropped"]

    def connections(self):
        return self.control("GET", "/connections")

    def refuse(self, seconds=None, code=3):
        """Refuses every CONNECT with CONNACK code (3: server unavailable) for seconds, or
        until lift_refusal()."""
        return self.control("POST", "/refuse", {"seconds": seconds, "code": code})

    def lift_refusal(self):
        self.control("DELETE", "/refuse")

    def fail_next(self, kinds="twin", count=1, status=429, retry_after=None, message=None):
        """Answers the next count requests of kinds (get, reported, rest; twin = get and
        reported; any) with status. retry_after: a Retry-After header on REST answers."""
        body = {"kinds": kinds, "count": count, "status": status}
        if retry_after is not None:
            body["retryAfter"] = retry_after
        if message:
            body["message"] = message
        return self.control("POST", "/faults", body)

    def clear_faults(self):
        self.control("DELETE", "/faults")

    def delay(self, kinds, ms):
        """Holds every answer to requests of kinds back for ms (0: answer at once)."""
        return self.control("POST", "/delays", {"kinds": kinds, "ms": ms})

    def counters(self):
        """{seq, counters: {kind: n}, inFlight: [{conn, client, get: {current, max},
        reported: {current, max}}]}"""
        return self.control("GET", "/counters")

    def in_flight(self, device_id, module_id=None):
        """The in-flight records of every connection this identity had, oldest first."""
        client = device_id if not module_id else f"{device_id}/{module_id}"
        return [f for f in self.counters()["inFlight"] if f["client"] == client]

    def reset_counters(self):
        return self.control("DELETE", "/counters")

    def mark(self):
        """The current sequence number: pass it as since= to see only what comes after."""
        return self.counters()["seq"]

    def log(self, since=0, event=None):
        """Connection log entries after since: connect, refuse, drop, token-expired,
        disconnect; each with conn, clientId, deviceId, reason, code (refuse)."""
        q = f"/log?since={since}" + (f"&kind={event}" if event else "")
        return self.control("GET", q)["entries"]

    def requests(self, since=0, kind=None):
        """Request log entries after since: get, reported, subscribe, desired-notification,
        desired-silent, rest.getTwin, rest.updateTwin, rest.replaceTwin, rest.query."""
        q = f"/requests?since={since}" + (f"&kind={kind}" if kind else "")
        return self.control("GET", q)["entries"]

    def wait_event(self, event, device_id=None, since=0, timeout=WAIT, where=None):
        """The first connection log entry of event (for device_id) after since."""
        def find():
            for e in self.log(since, event):
                if device_id is not None and device_id not in (e.get("deviceId"),
                                                                e.get("clientId")):
                    continue
                if where and not where(e):
                    continue
                return e
            return None
        return deadline_poll(find, timeout,
                             f"a {event} of {device_id or 'any client'} after #{since}")

    def wait_requests(self, kind, count=1, since=0, timeout=WAIT, where=None):
        """At least count request log entries of kind after since (filtered by where)."""
        def find():
            got = [e for e in self.requests(since, kind) if not where or where(e)]
            return got if len(got) >= count else None
        return deadline_poll(find, timeout, f"{count} {kind} request(s) after #{since}")

    def wait_connected(self, device_id, module_id=None, subscribed=(), timeout=WAIT, since_conn=0):
        """The identity's connection once it exists (newer than connection number since_conn)
        and holds every filter in subscribed."""
        client = device_id if not module_id else f"{device_id}/{module_id}"

        def find():
            for c in self.connections():
                if (c["clientId"] == client and c["conn"] > since_conn
                        and all(s in c["subscriptions"] for s in subscribed)):
                    return c
            return None
        return deadline_poll(find, timeout, f"{client} connected, subscribed to {list(subscribed)}")

    def wait_disconnected(self, device_id, module_id=None, timeout=WAIT):
        client = device_id if not module_id else f"{device_id}/{module_id}"
        return deadline_poll(lambda: not any(c["clientId"] == client for c in self.connections()),
                             timeout, f"{client} disconnected")

    # -- credentials -------------------------------------------------------------------------

    def device_connection_string(self, device_id, module_id=None, key=None, gateway=True):
        """HostName=...;DeviceId=...[;ModuleId=...];SharedAccessKey=...[;GatewayHostName=
        localhost:PORT]: the gateway names where to connect, HostName stays the hub's name."""
        key = key or self.identity(device_id, module_id)["primaryKey"]
        cs = f"HostName={self.host_name};DeviceId={device_id}"
        if module_id:
            cs += f";ModuleId={module_id}"
        cs += f";SharedAccessKey={key}"
        if gateway:
            cs += f";GatewayHostName=localhost:{self.mqtt_port}"
        return cs

    def service_connection_string(self, policy="iothubowner", key=None):
        return (f"HostName={self.host_name};SharedAccessKeyName={policy};"
                f"SharedAccessKey={key or self.owner_key}")

    def device_resource(self, device_id, module_id=None):
        r = f"{self.host_name}/devices/{device_id}"
        return r + (f"/modules/{module_id}" if module_id else "")

    def device_token(self, device_id, module_id=None, ttl=3600, expiry=None, key=None):
        """A device (or module) SAS token, from its registered key unless key is given."""
        key = key or self.identity(device_id, module_id)["primaryKey"]
        expiry = expiry if expiry is not None else time.time() + ttl
        return sas_token(self.device_resource(device_id, module_id), key, expiry)

    def service_token(self, ttl=3600, policy="iothubowner", key=None):
        return sas_token(self.host_name, key or self.owner_key, time.time() + ttl, policy)

    def mqtt_username(self, device_id, module_id=None, api_version=API_VERSION):
        client = device_id if not module_id else f"{device_id}/{module_id}"
        return f"{self.host_name}/{client}/?api-version={api_version}"

    def make_device_certificate(self, name, cn, self_signed=False):
        """A client certificate: signed by this hub's CA (CN = device id for
        certificateAuthority), or self-signed. Returns (crt, key, sha1 thumbprint hex)."""
        self.make_certificates()
        if self_signed:
            make_ca(self.certs, name)
        else:
            make_cert(self.certs, name, "ca", cn, "extendedKeyUsage=clientAuth")
        crt = os.path.join(self.certs, f"{name}.crt")
        with open(crt) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        return crt, os.path.join(self.certs, f"{name}.key"), hashlib.sha1(der).hexdigest().upper()

    # -- the REST side, for checks from Python -----------------------------------------------

    def rest(self, method, path, body=None, headers=None, token=None):
        """One HTTPS request to the REST side (api-version added); (status, headers, JSON)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.https_port, context=ctx,
                                           timeout=10 * SCALE)
        sep = "&" if "?" in path else "?"
        h = {"Authorization": token or self.service_token(),
             "Content-Type": "application/json; charset=utf-8"}
        h.update(headers or {})
        try:
            conn.request(method, f"{path}{sep}api-version={API_VERSION}",
                         body=None if body is None else json.dumps(body), headers=h)
            r = conn.getresponse()
            text = r.read().decode()
        finally:
            conn.close()
        headers = {k.lower(): v for k, v in r.getheaders()}
        return r.status, headers, (json.loads(text) if text else None)


class MqttDevice:
    """A device (or module) over paho-mqtt speaking IoT Hub's MQTT: TLS to the emulator,
    CONNECT with IoT Hub's client id, user name and SAS token, the twin topics with $rid.
    Received messages are kept; waits are bounded."""

    def __init__(self, hub, device_id, module_id=None, token=None, clean_session=True,
                 certfile=None, keyfile=None, password=True, username=None):
        self.hub = hub
        self.client_id = device_id if not module_id else f"{device_id}/{module_id}"
        self.lock = threading.Condition()
        self.messages = []  # (topic, payload bytes)
        self.connack = None
        self.disconnected = threading.Event()
        self.client = mqtt.Client(client_id=self.client_id, clean_session=clean_session,
                                  protocol=mqtt.MQTTv311)
        pw = None
        if password:
            pw = token or hub.device_token(device_id, module_id)
        self.client.username_pw_set(username or hub.mqtt_username(device_id, module_id), pw)
        self.client.tls_set(ca_certs=hub.ca, certfile=certfile, keyfile=keyfile,
                            tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # No reconnects of its own: a test that wants one makes a new MqttDevice.
        self.client.reconnect_delay_set(min_delay=120, max_delay=120)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.granted = {}

    def _on_connect(self, client, userdata, flags, rc):
        with self.lock:
            self.connack = rc
            self.lock.notify_all()

    def _on_disconnect(self, client, userdata, rc):
        self.disconnected.set()
        with self.lock:
            self.lock.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.lock.notify_all()

    def _on_subscribe(self, client, userdata, mid, granted):
        with self.lock:
            self.granted[mid] = list(granted)
            self.lock.notify_all()

    def _wait(self, pred, timeout, what):
        end = time.monotonic() + timeout * SCALE
        with self.lock:
            while True:
                r = pred()
                if r is not None and r is not False:
                    return r
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: timed out after "
                                         f"{timeout * SCALE:.1f} s waiting for {what}")
                self.lock.wait(left)

    def connect(self, timeout=WAIT):
        """CONNECT and wait for the CONNACK; returns its return code (0: accepted)."""
        self.client.connect("127.0.0.1", self.hub.mqtt_port, keepalive=60)
        self.client.loop_start()
        return self._wait(lambda: self.connack, timeout, "a CONNACK")

    def subscribe(self, *filters, qos=0, timeout=WAIT):
        """Subscribes; returns the granted QoS list (128: refused)."""
        rc, mid = self.client.subscribe([(f, qos) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe: {mqtt.error_string(rc)}"
        return self._wait(lambda: self.granted.get(mid), timeout, f"a SUBACK for {filters}")

    def subscribe_twin(self):
        return self.subscribe("$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/#")

    def publish(self, topic, payload, qos=0):
        self.client.publish(topic, payload, qos=qos)

    def request(self, method, resource, body, rid=None):
        """Publishes $iothub/twin/{method}{resource}?$rid=...; returns the rid."""
        rid = rid or uuid.uuid4().hex
        self.client.publish(f"$iothub/twin/{method}{resource}?$rid={rid}", body, qos=0)
        return rid

    def answer(self, rid, timeout=WAIT):
        """(status, {topic properties}, body text) of the answer to rid."""
        def find():
            for topic, payload in self.messages:
                if topic.startswith("$iothub/twin/res/"):
                    status, _, query = topic[len("$iothub/twin/res/"):].partition("/?")
                    props = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                    if props.get("$rid") == rid:
                        return int(status), props, payload.decode()
            return None
        return self._wait(find, timeout, f"the answer to $rid={rid}")

    def get_twin(self, timeout=WAIT):
        """GET; returns (status, parsed body)."""
        status, _, body = self.answer(self.request("GET", "/", b""), timeout)
        return status, json.loads(body) if body else None

    def report(self, patch, timeout=WAIT):
        """A reported PATCH; returns (status, $version or None, parsed body or None)."""
        text = patch if isinstance(patch, (str, bytes)) else json.dumps(patch)
        rid = self.request("PATCH", "/properties/reported/", text)
        status, props, body = self.answer(rid, timeout)
        v = props.get("$version")
        return status, int(v) if v is not None else None, json.loads(body) if body else None

    def desired_patches(self):
        with self.lock:
            return [json.loads(p) for t, p in self.messages
                    if t.startswith("$iothub/twin/PATCH/properties/desired/")]

    def wait_desired(self, version, timeout=WAIT):
        """The desired notification with this $version."""
        def find():
            for t, p in self.messages:
                if t == f"$iothub/twin/PATCH/properties/desired/?$version={version}":
                    return json.loads(p)
            return None
        return self._wait(find, timeout, f"the desired notification $version={version}")

    def wait_disconnected(self, timeout=WAIT):
        assert self.disconnected.wait(timeout * SCALE), f"{self.client_id}: still connected"

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
