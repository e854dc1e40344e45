"""mqtt.py - a private mosquitto broker and a recording subscriber.

The subscriber is mosquitto_sub writing "<topic>\\t<retained>\\t<hex payload>"
lines to a file (hex so payload bytes can never break the framing); the
reader parses the file on demand. Every envelope payload (topics .../event/...
and .../state) is validated with tests/tools/qbschema.validate_envelope as it
is read, and qmp/<bridge>/status must say online or offline: an invalid
message fails the test wherever it shows up.
"""
import json
import os
import socket
import subprocess
import time

from . import procs
from . import schema
from . import util

MOSQUITTO = os.environ.get("QB_MOSQUITTO", "/usr/sbin/mosquitto")

validate_envelope = schema.validate_envelope  # re-exported for the tests


class Broker:
    def __init__(self, workdir, port=None, persistence=False):
        """persistence: keep sessions and queued QoS 1 messages in <workdir>/mosquitto.db
        across a stop (SIGTERM saves it) and start, as a production broker would."""
        self.workdir = workdir
        self.port = port or util.free_port()
        self.conf = os.path.join(workdir, "mosquitto.conf")
        self.log = os.path.join(workdir, "mosquitto.log")
        self.proc = None
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\n" % self.port)
            # mosquitto drops QoS 1 messages for a subscriber beyond 1000 queued by default:
            # a burst after a stall would then lose messages on the broker's side
            f.write("max_queued_messages 0\n")
            if persistence:
                # run as root (tests and CI are), mosquitto would switch to its own user and
                # could not write the database into our private workdir
                f.write("persistence true\npersistence_location %s/\n" % workdir)
                if os.geteuid() == 0:
                    f.write("user root\n")
            else:
                f.write("persistence false\n")

    def _accepts(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self):
        self.proc = procs.spawn([MOSQUITTO, "-c", self.conf], "mosquitto", stdout=self.log,
                                stderr=self.log)
        procs.wait_until(lambda: self.proc.poll() is not None or self._accepts(), 10,
                         "mosquitto on port %d" % self.port)
        if self.proc.poll() is not None:
            raise RuntimeError("mosquitto exited: %s" % util.tail(self.log))
        return self

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def kill(self):
        if self.proc is not None:
            procs.kill(self.proc)
            self.proc = None

    def restart(self):
        self.stop()
        return self.start()


class Message:
    __slots__ = ("index", "topic", "retained", "raw", "json")

    def __init__(self, index, topic, retained, raw):
        self.index = index
        self.topic = topic
        self.retained = retained
        self.raw = raw
        self.json = None

    @property
    def type(self):
        return self.json.get("type") if isinstance(self.json, dict) else None

    @property
    def data(self):
        return self.json.get("data") if isinstance(self.json, dict) else None

    def __repr__(self):
        return "<%s%s %s>" % (self.topic, " (retained)" if self.retained else "",
                              self.raw[:300].decode("utf-8", "replace"))


class Subscriber:
    """mosquitto_sub on qmp/# (MQTT v5, QoS 1) recording to a file."""

    def __init__(self, broker, topic="qmp/#", name="sub", client_id=None, version="mqttv5"):
        """client_id: a persistent session (-c -i client_id): the broker queues QoS 1
        messages while the subscriber is away, and mosquitto_sub reconnects by itself.
        topic: a filter, or a list of them (one of them must match qmp/_probe)."""
        self.broker = broker
        self.client_id = client_id
        self.topic = topic
        self.version = version
        self.out = os.path.join(broker.workdir, name + ".out")
        self.log = os.path.join(broker.workdir, name + ".log")
        self.proc = None
        self.messages = []
        self._offset = 0
        self._partial = b""
        self._probe = 0

    def start(self):
        self.proc = procs.spawn(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-V", self.version,
             "-q", "1", "-F", "%t\t%r\t%x"]
            + [a for t in ([self.topic] if isinstance(self.topic, str) else self.topic)
               for a in ("-t", t)]
            + (["-c", "-i", self.client_id] if self.client_id else []),
            "mosquitto_sub", stdout=self.out, stderr=self.log)
        self.wait_subscribed()
        return self

    def wait_subscribed(self):
        """Publishes probes on qmp/_probe until one comes back: then the
        subscription is in place and nothing the bridge sends can be missed."""
        def seen():
            self._probe += 1
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.broker.port),
                            "-t", "qmp/_probe", "-m", "probe-%d" % self._probe],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.1)
            return any(m.topic == "qmp/_probe" for m in self.poll())
        procs.wait_until(seen, 10, "mosquitto_sub to subscribe",
                         on_fail=lambda: print(util.tail(self.log)))

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def poll(self):
        """Reads new lines; returns the new messages (also appended to
        self.messages). Envelopes are parsed and schema-validated here."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if not line:
                continue
            topic, retained, hexpayload = line.decode().split("\t", 2)
            m = Message(len(self.messages), topic, retained == "1", bytes.fromhex(hexpayload))
            parts = topic.split("/")
            is_envelope = "event" in parts[:-1] or (len(parts) >= 3 and parts[-1] == "state")
            if is_envelope and m.raw:  # an empty payload clears a retained topic
                try:
                    m.json = json.loads(m.raw)
                except ValueError as e:
                    raise AssertionError("message on %s is not JSON (%s): %r" % (topic, e, m.raw[:500]))
                try:
                    validate_envelope(m.json)
                except Exception as e:
                    raise AssertionError("envelope on %s fails the schema: %s\n%s" % (
                        topic, str(e)[:1500], m.raw[:2000].decode("utf-8", "replace")))
            elif len(parts) == 3 and parts[2] == "status" and m.raw not in (b"online", b"offline"):
                raise AssertionError("status topic %s carries %r, want online/offline" % (topic, m.raw[:200]))
            self.messages.append(m)
            new.append(m)
        return new

    def wait_for(self, predicate, timeout=30.0, what="a matching message"):
        """Waits for the first message (old or new) for which predicate(m)
        holds and returns it; raises TimeoutError listing what did arrive."""
        def find():
            self.poll()
            for m in self.messages:
                if predicate(m):
                    return m
            return None
        return procs.wait_until(find, timeout, what, interval=0.1)

    def wait_count(self, predicate, n, timeout=30.0, what="messages"):
        def enough():
            self.poll()
            got = [m for m in self.messages if predicate(m)]
            return got if len(got) >= n else None
        return procs.wait_until(enough, timeout, "%d %s" % (n, what), interval=0.1)

    def fetch_retained(self, topic, timeout=10.0):
        """Runs a fresh one-shot subscriber on topic and returns the retained
        Message (validated like any other), or raises TimeoutError."""
        r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port),
                            "-V", "mqttv5", "-q", "1", "-t", topic, "-F", "%t\t%r\t%x",
                            "-C", "1", "-W", str(int(timeout)), "--retained-only"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5)
        line = r.stdout.decode().strip()
        if not line:
            raise TimeoutError("no retained message on %s (%s)" % (topic, r.stderr.decode().strip()))
        t, retained, hexpayload = line.split("\t", 2)
        m = Message(-1, t, retained == "1", bytes.fromhex(hexpayload))
        if m.raw and t.endswith("/state"):
            m.json = json.loads(m.raw)
            validate_envelope(m.json)
        return m


def hex_messages_on(path, topic):
    """The JSON messages on topic in a file written by mosquitto_sub -F '%t\\t%x' (topic, tab,
    payload in hex, one a line), in arrival order; [] while the file does not exist."""
    try:
        with open(path) as f:
            return [json.loads(bytes.fromhex(l.rstrip("\n").split("\t", 1)[1]))
                    for l in f if l.split("\t", 1)[0] == topic]
    except FileNotFoundError:
        return []
