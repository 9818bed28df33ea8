# SPDX-License-Identifier: MIT
"""Brokers other than mosquitto, each started by the suite itself on free loopback ports, in
the test's own directory, and stopped by the PID it started: ejabberd (mod_mqtt, one
non-distributed node, so no epmd at all), RabbitMQ (rabbitmq_mqtt, with a private epmd on
127.0.0.1 that the suite starts and stops itself), redis-server, and aedes nodes sharing one
redis (tests/brokers/aedes). They look like twinlib.Broker to the rest of the harness: port,
url, start(), stop(), running(), log; plus username/password where the broker needs them."""

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import twinlib  # noqa: E402
from twinlib import free_port, poll, port_accepts, tail, terminate  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
AEDES_DIR = os.path.join(HERE, "aedes")
ERL = "/usr/bin/erl"
EPMD = "/usr/bin/epmd"
EJABBERD_LIBS = "/usr/lib/x86_64-linux-gnu"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
REDIS_SERVER = "/usr/bin/redis-server"
NODE = "/usr/bin/node"


class Process:
    """A server process of ours: started in its own session so that whatever it forks can be
    found, stopped with SIGTERM (then SIGKILL) by the PID we started, logs in DIR/NAME.log."""

    def __init__(self, directory, name):
        self.dir = directory
        os.makedirs(self.dir, exist_ok=True)
        self.name = name
        self.log = os.path.join(self.dir, name + ".log")
        self.proc = None
        self.started_in = None  # seconds from exec to accepting connections

    def spawn(self, argv, env=None, port=None, timeout=60.0, cwd=None):
        assert self.proc is None, f"{self.name} already running"
        t0 = time.monotonic()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                argv, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env=env,
                cwd=cwd or self.dir, start_new_session=True,
            )
        if port is not None:
            if not poll(lambda: self.proc.poll() is not None or port_accepts(port), timeout):
                self.stop()
                raise AssertionError(f"{self.name} did not accept on {port} in {timeout} s:\n"
                                     + tail(self.log))
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise AssertionError(f"{self.name} exited with {code}:\n{tail(self.log)}")
        self.started_in = time.monotonic() - t0

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30.0):
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        self._reap_session()
        self.proc = None

    def kill(self):
        """SIGKILL: the node vanishes without a word (its session's other processes too)."""
        self.proc.kill()
        self.proc.wait(10)
        self._reap_session()
        self.proc = None

    def _reap_session(self):
        # Helpers the server forked (Erlang's port programs, a wrapper's child) are in the
        # session we created, whose id is the PID we started: end them by that id.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Ejabberd(Process):
    """ejabberd 23.01 with mod_mqtt on one loopback port: one node, not distributed (no epmd),
    its Mnesia spool in the test's directory; one user registered at boot (mod_mqtt accepts no
    anonymous clients); match_retained_limit infinity (default 1000: a wildcard subscription
    would get at most 1000 retained messages)."""

    def __init__(self, directory, username="twin", password="s3cret-pw"):
        super().__init__(directory, "ejabberd")
        self.port = free_port()
        self.username, self.password = username, password
        self.spool = os.path.join(self.dir, "spool")
        self.conf = os.path.join(self.dir, "ejabberd.yml")
        with open(self.conf, "w") as f:
            f.write(
                "hosts:\n  - localhost\nloglevel: warning\nlog_rotate_count: 0\n"
                f"listen:\n  -\n    port: {self.port}\n    ip: \"127.0.0.1\"\n"
                "    module: mod_mqtt\n"
                "auth_method: internal\n"
                "modules:\n  mod_mqtt:\n    match_retained_limit: infinity\n"
            )

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout=60.0):
        os.makedirs(self.spool, exist_ok=True)
        env = dict(os.environ)
        env.update(
            ERL_LIBS=EJABBERD_LIBS,
            EJABBERD_CONFIG_PATH=self.conf,
            EJABBERD_LOG_PATH=os.path.join(self.dir, "ejabberd-erl.log"),
            ERL_INETRC="/etc/ejabberd/inetrc",
            HOME=self.dir,
            # Not distributed, so nothing starts epmd; should anything try, it stays private.
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(free_port()),
        )
        # A restart on the same spool finds the user already there.
        register = (
            'case ejabberd_auth:try_register(<<"%s">>, <<"localhost">>, <<"%s">>) of '
            "ok -> ok; {error, exists} -> ok end" % (self.username, self.password)
        )
        argv = [ERL, "-noshell", "-noinput", "+K", "true", "-mnesia", "dir", f'"{self.spool}"',
                "-s", "ejabberd", "-eval", register]
        self.spawn(argv, env=env, port=self.port, timeout=timeout)


class Redis(Process):
    def __init__(self, directory):
        super().__init__(directory, "redis")
        self.port = free_port()

    def start(self, timeout=20.0):
        self.spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", self.dir],
                   port=self.port, timeout=timeout)


class AedesNode(Process):
    """One aedes node (tests/brokers/aedes/aedes-node.js) of a cluster sharing redis."""

    def __init__(self, directory, redis, name, heartbeat_ms=500):
        super().__init__(directory, name)
        self.redis = redis
        self.port = free_port()
        self.heartbeat_ms = heartbeat_ms
        self.username = self.password = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout=30.0):
        if not os.path.isdir(os.path.join(AEDES_DIR, "node_modules")):
            raise AssertionError("tests/brokers/aedes has no node_modules: run scripts/install-deps")
        self.spawn([NODE, os.path.join(AEDES_DIR, "aedes-node.js"), str(self.port),
                    str(self.redis.port), str(self.heartbeat_ms)],
                   port=self.port, timeout=timeout)


class Epmd(Process):
    """A private epmd on 127.0.0.1 (in the foreground, so that we hold its PID): the Erlang
    nodes we start find it by ERL_EPMD_PORT and never start one of their own."""

    def __init__(self, directory):
        super().__init__(directory, "epmd")
        self.port = free_port()

    def start(self, timeout=20.0):
        self.spawn([EPMD, "-address", "127.0.0.1", "-port", str(self.port)],
                   port=self.port, timeout=timeout)


class RabbitMQ(Process):
    """RabbitMQ 3.10 with rabbitmq_mqtt on one loopback port, AMQP off, anonymous MQTT clients
    as guest; the node's distribution port and its epmd on 127.0.0.1."""

    def __init__(self, directory):
        super().__init__(directory, "rabbitmq")
        self.port = free_port()
        self.epmd = Epmd(self.dir)
        self.username = self.password = None
        self.conf = os.path.join(self.dir, "rabbitmq.conf")
        with open(self.conf, "w") as f:
            f.write(
                "listeners.tcp = none\n"
                f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                "mqtt.allow_anonymous = true\n"
                "mqtt.tcp_listen_options.nodelay = true\n"
                "loopback_users = none\n"
                "log.console = true\nlog.console.level = warning\nlog.file = false\n"
            )
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout=90.0):
        self.epmd.start()
        d = self.dir
        env = dict(os.environ)
        env.update(
            HOME=d,
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd.port),
            RABBITMQ_NODENAME=f"twtest{self.port}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CONFIG_FILE=self.conf,
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"),
            RABBITMQ_LOG_BASE=os.path.join(d, "log"),
            RABBITMQ_LOGS="-",
            RABBITMQ_PID_FILE=os.path.join(d, "rabbitmq.pid"),
            RABBITMQ_PLUGINS_EXPAND_DIR=os.path.join(d, "plugins-expand"),
            RABBITMQ_FEATURE_FLAGS_FILE=os.path.join(d, "feature_flags"),
            RABBITMQ_QUORUM_DIR=os.path.join(d, "quorum"),
            RABBITMQ_GENERATED_CONFIG_DIR=os.path.join(d, "generated"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(d, "advanced.config"),
        )
        env.pop("NOTIFY_SOCKET", None)
        try:
            self.spawn([RABBITMQ_SERVER], env=env, port=self.port, timeout=timeout)
        except BaseException:
            self.epmd.stop()
            raise

    def stop(self, timeout=60.0):
        super().stop(timeout)
        self.epmd.stop()


def credentials(broker):
    """twinctl options for the broker's user, if it has one (the password in a 0600 file)."""
    if not getattr(broker, "username", None):
        return []
    pw = os.path.join(broker.dir, "twinctl-password")
    if not os.path.exists(pw):
        with open(pw, "w") as f:
            f.write(broker.password + "\n")
        os.chmod(pw, 0o600)
    return ["--username", broker.username, "--password-file", pw]


def twinctl(broker, *args, timeout=60):
    """Runs twinctl against broker (a url string or a broker) to completion."""
    from test_twinctl import environment, twinctl_binary

    url = broker if isinstance(broker, str) else broker.url
    extra = [] if isinstance(broker, str) else credentials(broker)
    return subprocess.run(
        [twinctl_binary(), "--broker", url, *extra, *args],
        capture_output=True, text=True, timeout=timeout, env=environment(),
        stdin=subprocess.DEVNULL,
    )


def configure_agent(agent, broker):
    """Points the agent at broker (one node, or a list given as url), with its credentials."""
    agent.configure("broker", "url", broker.url)
    if getattr(broker, "username", None):
        pw = os.path.join(agent.dir, "broker-password")
        with open(pw, "w") as f:
            f.write(broker.password + "\n")
        os.chmod(pw, 0o600)
        agent.configure("broker", "username", broker.username)
        agent.configure("broker", "password_file", pw)
