"""rabbitmq.py - a private RabbitMQ node with the MQTT plugin, for one test file.

Debian's rabbitmq-server (3.10) is started as a process of the test's own, never
the system service: the server script under /usr/lib/rabbitmq (not the wrapper in
/usr/sbin, which switches to the rabbitmq user and its /var/lib/rabbitmq), with
RABBITMQ_* variables that put the node name, mnesia, logs, config and the
enabled_plugins file into the test's directory, HOME there too (the Erlang cookie),
and every port on 127.0.0.1 picked free: MQTT, AMQP, Erlang distribution and epmd.
epmd is started first, in the foreground on its own port (ERL_EPMD_PORT), so the
node registers with it instead of starting a daemon of its own that outlives the
test; both are stopped by PID, the node first.

Boot takes a few seconds: start one Broker per test file.
"""
import glob
import os
import socket
import subprocess

from . import procs
from . import util

SBIN = os.environ.get("QB_RABBITMQ_SBIN") or next(
    iter(sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"))), "")
EPMD = os.environ.get("QB_EPMD", "/usr/bin/epmd")


def available():
    """None when a node can be started here, else why not (for a skip message)."""
    if not SBIN or not os.access(os.path.join(SBIN, "rabbitmq-server"), os.X_OK):
        return "rabbitmq-server is not installed (packaging/bootstrap-deps.sh installs it)"
    if not os.access(EPMD, os.X_OK):
        return "epmd is not installed"
    return None


class Broker:
    def __init__(self, workdir):
        self.workdir = os.path.join(workdir, "rabbitmq")
        os.makedirs(self.workdir, exist_ok=True)
        self.port = util.free_port()  # MQTT
        self.amqp_port = util.free_port()
        self.dist_port = util.free_port()
        self.epmd_port = util.free_port()
        self.node = "qbtest%d@localhost" % self.port
        self.log = os.path.join(self.workdir, "node.log")  # the node's own log
        self.out = os.path.join(self.workdir, "stdout.log")
        self.epmd_log = os.path.join(self.workdir, "epmd.log")
        self.proc = None
        self.epmd = None
        with open(os.path.join(self.workdir, "rabbitmq.conf"), "w") as f:
            f.write("listeners.tcp.1 = 127.0.0.1:%d\n" % self.amqp_port)
            f.write("mqtt.listeners.tcp.1 = 127.0.0.1:%d\n" % self.port)
            f.write("mqtt.allow_anonymous = true\n")
            f.write("log.file.level = debug\n")
            f.write("log.console = false\n")
        with open(os.path.join(self.workdir, "enabled_plugins"), "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        with open(os.path.join(self.workdir, ".erlang.cookie"), "w") as f:
            f.write("qbtest%s\n" % os.urandom(8).hex())
        os.chmod(os.path.join(self.workdir, ".erlang.cookie"), 0o400)

    def env(self):
        d = self.workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": d,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            # the distribution listener on loopback too (it binds every address by default)
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),  # none: /etc's not read
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": d,
            "RABBITMQ_LOGS": self.log,
            "RABBITMQ_PID_FILE": os.path.join(d, "node.pid"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(d, "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(d, "plugins-expand"),
        })
        return env

    def _mqtt_answers(self):
        """True once the MQTT listener answers a CONNECT with CONNACK accepted."""
        connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 2]) + b"qb"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(connect)
                return s.recv(4) == bytes([0x20, 2, 0, 0])
        except OSError:
            return False

    def start(self, timeout=90.0):
        env = self.env()
        self.epmd = procs.spawn([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                "epmd", stdout=self.epmd_log, stderr=self.epmd_log, env=env)
        self.proc = procs.spawn([os.path.join(SBIN, "rabbitmq-server")], "rabbitmq",
                                stdout=self.out, stderr=self.out, env=env, cwd=self.workdir)
        procs.wait_until(lambda: self.proc.poll() is not None or self._mqtt_answers(), timeout,
                         "RabbitMQ's MQTT listener on port %d" % self.port,
                         on_fail=lambda: print(util.tail(self.out), util.tail(self.log)),
                         interval=0.25)
        if self.proc.poll() is not None:
            raise RuntimeError("RabbitMQ exited: %s\n%s" % (util.tail(self.out), util.tail(self.log)))
        return self

    def stop(self):
        """The node (SIGTERM: Erlang shuts down in order), then its epmd, by PID."""
        if self.proc is not None:
            procs.stop(self.proc, timeout=20.0)
            self.proc = None
        if self.epmd is not None:
            procs.stop(self.epmd)
            self.epmd = None

    def ctl(self, *args):
        """rabbitmqctl against this node (its name, cookie and epmd); returns its stdout."""
        r = subprocess.run([os.path.join(SBIN, "rabbitmqctl"), "-n", self.node] + list(args),
                           env=self.env(), cwd=self.workdir, capture_output=True, text=True,
                           timeout=120)
        if r.returncode != 0:
            raise RuntimeError("rabbitmqctl %s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        return r.stdout

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def pub(self, topic, payload, qos=1, retain=False):
        """Publishes with mosquitto_pub over MQTT 3.1.1 (all the plugin speaks)."""
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-V", "mqttv311",
                "-q", str(qos), "-t", topic]
        argv += ["-n"] if payload == b"" else ["-m", payload]
        if retain:
            argv.append("-r")
        subprocess.run(argv, check=True, timeout=20, stdout=subprocess.DEVNULL)
