# SPDX-License-Identifier: MIT
"""Harness for the integration tests: a real mosquitto, the real twind, a service-side client.

Every wait is bounded and fails with a message that says what was awaited, what was seen last
and the tail of the agent's log.
"""

import glob
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")
PYTHON = "/usr/bin/python3"
TOPIC_ROOT = "twins"
WAIT = 15.0  # default bound of one wait, seconds
# Run twind under a tool: TWIND_WRAPPER="valgrind --error-exitcode=99 ... --log-file={dir}/
# valgrind.%p.log" ({dir}: the agent's directory). The tool makes everything slower:
# TWIN_TIMEOUT_SCALE multiplies every bound (poll, wait_exit), never a claim that nothing happens.
WRAPPER = os.environ.get("TWIND_WRAPPER", "")
WRAPPER_ERROR_EXIT = 99
SCALE = float(os.environ.get("TWIN_TIMEOUT_SCALE", "1"))


def twind_binary():
    path = os.environ.get("TWIND")
    if not path:
        raise RuntimeError("TWIND is not set: run the integration tests through meson test")
    return path


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def terminate(proc, timeout=10.0):
    """Ends proc: SIGTERM, and SIGKILL when it has not exited after timeout seconds; reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def poll(predicate, timeout, interval=0.05):
    """True as soon as predicate() is true, False after timeout seconds (times SCALE)."""
    deadline = time.monotonic() + timeout * SCALE
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Broker:
    """A private mosquitto on a free loopback port that can be stopped and started again on the
    same port. persistence false: a restarted broker has lost every retained message."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log = os.path.join(self.dir, "mosquitto.log")
        with open(self.conf, "w") as f:
            f.write(
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "set_tcp_nodelay true\n"
                "persistence false\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                "connection_messages true\n"
            )
        self.proc = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout=10.0):
        assert self.proc is None, "broker already running"
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", self.conf], stdout=logf, stderr=logf, stdin=subprocess.DEVNULL
        )
        logf.close()
        if not poll(lambda: self.proc.poll() is not None or port_accepts(self.port), timeout):
            raise AssertionError(f"mosquitto did not accept on port {self.port}:\n{tail(self.log)}")
        if self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited with {self.proc.returncode}:\n{tail(self.log)}")

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self.proc = None
        # The port must be free again before a restart on it.
        poll(lambda: not port_accepts(self.port), 5.0)

    def running(self):
        return self.proc is not None and self.proc.poll() is None


APPLY_SCRIPT = r'''
import json, os, sys, time
# Records one invocation (argv, stdin, the TWIN_* environment, pid) in NAME.log, then behaves
# as NAME.behaviour.json says (rewritten by the test between applies). Paths derive from the
# script's own, to keep the command line short.
base = os.path.splitext(os.path.abspath(sys.argv[0]))[0]
log, behaviour = base + ".log", base + ".behaviour.json"
data = sys.stdin.read()
rec = {
    "argv": sys.argv,
    "stdin": data,
    "env": {k: v for k, v in os.environ.items() if k.startswith("TWIN_")},
    "pid": os.getpid(),
    "start": time.time(),
}
with open(log, "a") as f:
    f.write(json.dumps(rec) + "\n")
try:
    with open(behaviour) as f:
        b = json.load(f)
except FileNotFoundError:
    b = {}
time.sleep(b.get("sleep", 0))
if b.get("stderr"):
    sys.stderr.write(b["stderr"])
    sys.stderr.flush()
sys.exit(b.get("exit", 0))
'''


class ApplyScript:
    """An apply command that records each invocation (one JSON line) in a log file and whose
    behaviour (sleep seconds, exit status, stderr text) the test sets with behave()."""

    def __init__(self, directory, name="apply", **behaviour):
        self.script = os.path.join(directory, name + ".py")
        self.log = os.path.join(directory, name + ".log")
        self.behaviour = os.path.join(directory, name + ".behaviour.json")
        with open(self.script, "w") as f:
            f.write(APPLY_SCRIPT)
        self.behave(**behaviour)
        self.command = f"{PYTHON} {self.script}"

    def behave(self, sleep=0.0, exit=0, stderr=""):
        tmp = self.behaviour + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"sleep": sleep, "exit": exit, "stderr": stderr}, f)
        os.rename(tmp, self.behaviour)

    def calls(self):
        try:
            with open(self.log) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def inputs(self):
        """The JSON documents the command received on stdin, in order."""
        return [json.loads(c["stdin"]) for c in self.calls()]


class Agent:
    """The real twind with its own temp dir, config file, state dir and control socket path."""

    def __init__(self, directory, broker, device_id="dev-1"):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        self.broker = broker
        self.device_id = device_id
        self.conf = os.path.join(self.dir, "twind.conf")
        self.state_dir = os.path.join(self.dir, "state")
        os.makedirs(self.state_dir, exist_ok=True)
        self.socket = os.path.join(self.dir, "control.sock")
        self.log = os.path.join(self.dir, "twind.log")
        self.proc = None
        self.stopping = False  # an exit is expected: we signalled or killed it
        self.settings = {
            "broker": {"url": broker.url, "keepalive": "5", "topic_root": TOPIC_ROOT},
            "device": {"id": device_id},
            "apply": {"timeout": "10"},
            "state": {"directory": self.state_dir},
            "control": {"socket": self.socket},
        }
        self.write_config()

    def configure(self, section, key, value):
        """Sets (value None: removes) one key and rewrites the config file."""
        if value is None:
            self.settings.get(section, {}).pop(key, None)
        else:
            self.settings.setdefault(section, {})[key] = str(value)
        self.write_config()

    def write_config(self):
        with open(self.conf, "w") as f:
            for section, keys in self.settings.items():
                f.write(f"[{section}]\n")
                for k, v in keys.items():
                    f.write(f"{k} = {v}\n")
                f.write("\n")

    @property
    def state_file(self):
        return os.path.join(self.state_dir, "state.json")

    def read_state(self):
        with open(self.state_file) as f:
            return json.load(f)

    def environment(self):
        env = dict(os.environ)
        # Readable stderr lines, no sd_notify: this is "run by hand".
        for k in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
            env.pop(k, None)
        return env

    def start(self, *extra):
        assert not self.running(), "agent already running"
        self.stopping = False
        with open(self.log, "ab") as logf:
            logf.write(f"---- start twind {' '.join(extra)}\n".encode())
            logf.flush()
            wrapper = shlex.split(WRAPPER.replace("{dir}", self.dir))
            self.proc = subprocess.Popen(
                [*wrapper, twind_binary(), "-c", self.conf, *extra],
                stdout=logf,
                stderr=logf,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
            )
        return self.proc

    def run(self, *args, timeout=10.0):
        """Runs twind to completion (e.g. --check-config); returns CompletedProcess."""
        return subprocess.run(
            [twind_binary(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
        )

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def control(self, method):
        """One request on the control socket; returns the reply object."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10 * SCALE)
            s.connect(self.socket)
            s.sendall(json.dumps({"method": method}).encode() + b"\n")
            line = s.makefile("rb").readline()
        assert line, f"no reply to {method} on {self.socket}"
        return json.loads(line)

    def status(self):
        """The control socket's status result."""
        reply = self.control("status")
        assert "result" in reply, reply
        return reply["result"]

    def signal(self, sig):
        assert self.running(), "agent is not running:\n" + self.log_tail()
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self.stopping = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=10.0):
        """Returns the exit code; fails if the agent is still running after timeout."""
        try:
            return self.proc.wait(timeout * SCALE)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"twind still running {timeout * SCALE} s later:\n{self.log_tail()}"
            ) from None

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self):
        """SIGKILL: the agent vanishes without a word."""
        self.stopping = True
        self.proc.kill()
        self.proc.wait(5)

    def cleanup(self):
        """Stops the agent (SIGTERM, so that leak checkers get to report; SIGKILL if it hangs),
        then fails if a sanitizer or the TWIND_WRAPPER tool found errors in any of its runs."""
        if self.running():
            self.stopping = True
            self.proc.terminate()
            try:
                self.proc.wait(10 * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        problems = self.memory_errors()
        if problems:
            raise AssertionError("twind memory errors:\n" + "\n".join(problems))

    def memory_errors(self):
        """Reports of AddressSanitizer, UBSan, LeakSanitizer (in the log) and valgrind (its
        log files, and the exit status WRAPPER_ERROR_EXIT)."""
        found = []
        log = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in log:
                i = log.index(marker)
                found.append(log[max(0, i - 200) : i + 3000])
        if WRAPPER and self.proc is not None and self.proc.returncode == WRAPPER_ERROR_EXIT:
            found.append(f"twind under {WRAPPER.split()[0]} exited with {WRAPPER_ERROR_EXIT}")
        for path in sorted(glob.glob(os.path.join(self.dir, "valgrind*.log"))):
            with open(path, errors="replace") as f:
                text = f.read()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
            if (m and int(m.group(1)) > 0) or re.search(r"definitely lost: [1-9]", text):
                found.append(f"{path}:\n{text[-6000:]}")
        return found

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=40):
        return tail(self.log, lines)

    def died(self):
        """True when the agent exited without being asked to."""
        return self.proc is not None and not self.stopping and self.proc.poll() is not None

    def assert_alive(self):
        assert self.running(), (
            f"twind exited with {self.proc.returncode if self.proc else None}:\n{self.log_tail()}"
        )


class Service:
    """The back end: writes desired (retained, QoS 1), watches reported and connection."""

    def __init__(self, broker, device_id, agent=None):
        self.broker = broker
        self.device_id = device_id
        self.agent = agent
        base = f"{TOPIC_ROOT}/{device_id}"
        self.t_desired = base + "/desired"
        self.t_reported = base + "/reported"
        self.t_connection = base + "/connection"
        self.lock = threading.Lock()
        self.reported = []  # parsed documents, in arrival order (None: not JSON)
        self.connection = []
        self.connected = threading.Event()
        self.client = mqtt.Client(
            client_id=f"svc-{os.getpid()}-{id(self)}", clean_session=True, protocol=mqtt.MQTTv311
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        # Brokers that need a login (tests/brokers) carry their user on the broker object.
        if getattr(broker, "username", None):
            self.client.username_pw_set(broker.username, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", broker.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise AssertionError("service client could not connect to the broker")

    def _on_connect(self, client, userdata, flags, rc):
        if rc == 0:
            client.subscribe([(self.t_reported, 1), (self.t_connection, 1)])
            self.connected.set()

    def _on_disconnect(self, client, userdata, rc):
        self.connected.clear()

    def _on_message(self, client, userdata, msg):
        try:
            doc = json.loads(msg.payload.decode("utf-8"))
        except ValueError:
            doc = None
        with self.lock:
            if msg.topic == self.t_reported:
                self.reported.append(doc)
            elif msg.topic == self.t_connection:
                self.connection.append(doc)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()

    # -- writing desired -------------------------------------------------------------------

    def wait_connected(self, timeout=WAIT):
        if not self.connected.wait(timeout):
            raise AssertionError("service client did not reconnect to the broker")

    def publish_raw(self, payload, retain=True):
        self.wait_connected()
        info = self.client.publish(self.t_desired, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), "desired was not acknowledged by the broker"

    def publish(self, doc):
        """Publishes a desired document (a dict) retained, QoS 1."""
        self.publish_raw(json.dumps(doc).encode())

    # -- reading reported -----------------------------------------------------------------

    def mark(self):
        """An index into the reported messages: later waits may look only at newer ones."""
        with self.lock:
            return len(self.reported)

    def last_reported(self):
        with self.lock:
            return self.reported[-1] if self.reported else None

    def reported_since(self, mark=0):
        with self.lock:
            return list(self.reported[mark:])

    def connection_since(self, mark=0):
        with self.lock:
            return list(self.connection[mark:])

    def connection_mark(self):
        with self.lock:
            return len(self.connection)

    def fail(self, what, timeout):
        last = self.last_reported()
        log = self.agent.log_tail() if self.agent else "(no agent)"
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}\n"
            f"last reported: {json.dumps(last)}\n"
            f"connection messages: {json.dumps(self.connection_since())}\n"
            f"---- twind log tail ----\n{log}"
        )

    def wait_for(self, predicate, what, timeout=WAIT):
        died = []

        def check():
            if predicate():
                return True
            if self.agent and self.agent.died():
                died.append(self.agent.proc.returncode)
                return True
            return False

        if not poll(check, timeout):
            self.fail(what, timeout)
        if died and not predicate():
            self.fail(what + f" (twind exited with {died[0]})", timeout)

    def wait_reported(self, predicate, what, mark=0, timeout=WAIT):
        """Waits for a reported document (received after mark) for which predicate is true;
        returns it."""
        found = []

        def check():
            for doc in self.reported_since(mark):
                if isinstance(doc, dict) and predicate(doc):
                    found.append(doc)
                    return True
            return False

        self.wait_for(check, what, timeout)
        return found[0]

    def wait_status(self, state, desired_version, mark=0, timeout=WAIT):
        """Waits for a reported $status with this state answering this desired $version."""

        def pred(doc):
            st = doc.get("$status") or {}
            return st.get("state") == state and st.get("desiredVersion") == desired_version

        return self.wait_reported(
            pred, f"$status {state} for desiredVersion {desired_version}", mark, timeout
        )

    def wait_failed(self, mark=0, timeout=WAIT):
        """Waits for any reported $status failed after mark."""
        return self.wait_reported(
            lambda d: (d.get("$status") or {}).get("state") == "failed", "$status failed", mark, timeout
        )

    def wait_connection(self, state, mark=0, timeout=WAIT):
        def check():
            return any(
                isinstance(d, dict) and d.get("state") == state
                for d in self.connection_since(mark)
            )

        self.wait_for(check, f"connection {state}", timeout)


def props(doc):
    """A reported or desired document without its protocol ($) keys."""
    return {k: v for k, v in doc.items() if not k.startswith("$")}


def settle(seconds=1.0):
    """Lets a negative claim ("nothing else happens") have a chance to be false."""
    time.sleep(seconds)


def start_agent(agent, service, apply=None, doc=None):
    """Starts the agent (with apply as its apply command, when given), waits until it is online,
    then, when doc is given, publishes it and waits until the agent reports it applied."""
    if apply is not None:
        agent.configure("apply", "command", apply.command)
    agent.start()
    service.wait_connection("online")
    if doc is not None:
        service.publish(doc)
        return service.wait_status("success", doc["$version"])
    return None
