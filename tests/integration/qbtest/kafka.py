"""kafka.py - a mock Kafka cluster (tests/tools/kafka_mock.c) and kcat.

KafkaMock runs the kafka_mock tool ($QB_BUILD_DIR/tests/kafka_mock; the
tools are built into the build tree's tests/ directory) and talks to it over
its stdin/stdout line protocol: one BOOTSTRAP line first, then one OK/ERR
answer per command. "down <id>" closes the broker's connections and refuses
new ones without moving partition leadership (see the tool's header comment).

KcatConsumer is `kcat -C` writing one record per line to a file:
key, partition, offset, headers, payload separated by tabs. The bridge's
payloads are single-line JSON and its keys and header values hold no tabs,
newlines or commas, so that framing is unambiguous for our data. produce()
and metadata() run kcat -P and kcat -L. Every process goes through
qbtest.procs: own session, killed by PID at exit.
"""
import json
import os
import select
import subprocess
import time

from . import procs
from . import schema
from . import util

KCAT = os.environ.get("QB_KCAT", "kcat")


def binary():
    """The kafka_mock tool; QB_KAFKA_MOCK overrides, else $QB_BUILD_DIR/tests/kafka_mock."""
    if os.environ.get("QB_KAFKA_MOCK"):
        return os.environ["QB_KAFKA_MOCK"]
    build = os.environ.get("QB_BUILD_DIR") or os.path.join(util.SOURCE_DIR, "build")
    return os.path.join(build, "tests", "kafka_mock")


class KafkaMockError(RuntimeError):
    pass


class KafkaMock:
    def __init__(self, workdir, brokers=3, topics=(), name="kafka_mock"):
        """topics: [(name, partitions, replication)] created before BOOTSTRAP."""
        self.workdir = workdir
        self.brokers = brokers
        self.topics = list(topics)
        self.log = os.path.join(workdir, name + ".log")
        self.name = name
        self.proc = None
        self.bootstrap = None
        self._buf = b""

    def start(self, timeout=15.0):
        exe = binary()
        if not os.access(exe, os.X_OK):
            raise KafkaMockError("kafka_mock binary %s is missing (set QB_BUILD_DIR)" % exe)
        argv = [exe, "--brokers", str(self.brokers)]
        for t in self.topics:
            argv += ["--topic", "%s:%d:%d" % tuple(t)]
        self.proc = procs.spawn(argv, self.name, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=self.log)
        line = self._read_line(timeout)
        if not line.startswith("BOOTSTRAP "):
            raise KafkaMockError("kafka_mock said %r, not BOOTSTRAP: %s" % (line, util.tail(self.log)))
        self.bootstrap = line.split(" ", 1)[1]
        return self

    def broker_address(self, broker_id):
        """(host, port) of broker broker_id (1..N): the mock lists its
        brokers in id order in the bootstrap string."""
        host, port = self.bootstrap.split(",")[broker_id - 1].rsplit(":", 1)
        return host, int(port)

    def _read_line(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaMockError("kafka_mock did not answer in %.1fs: %s"
                                     % (timeout, util.tail(self.log)))
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise KafkaMockError("kafka_mock exited (status %s): %s"
                                     % (self.proc.poll(), util.tail(self.log)))
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def command(self, cmd, check=True, timeout=10.0):
        """Sends one command line and returns the answer ("OK" or "ERR ...").
        With check, an ERR answer raises KafkaMockError."""
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()
        answer = self._read_line(timeout)
        if check and answer != "OK":
            raise KafkaMockError("kafka_mock %r -> %r" % (cmd, answer))
        return answer

    def stop(self, timeout=10.0):
        """Closes stdin (the tool exits on EOF) and waits; SIGTERM/SIGKILL
        through procs.stop if it lingers. Returns the exit status."""
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        rc = procs.stop(p)
        p.stdout.close()
        return rc


class Record:
    __slots__ = ("key", "partition", "offset", "headers", "payload")

    def __init__(self, key, partition, offset, headers, payload):
        self.key = key
        self.partition = partition
        self.offset = offset
        self.headers = headers
        self.payload = payload

    def json(self):
        return json.loads(self.payload)

    def __repr__(self):
        return "<%s[%d]@%d key=%r %r %s>" % ("rec", self.partition, self.offset, self.key,
                                            self.headers, self.payload[:200])


def _parse_headers(text):
    # kcat's %h is "name=value,name=value" (empty when there are none).
    out = {}
    for item in text.split(","):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return out


class KcatConsumer:
    """kcat -C on one topic from the beginning, recording to <workdir>/<name>.out."""

    FORMAT = r"%k\t%p\t%o\t%h\t%s\n"

    def __init__(self, bootstrap, topic, workdir, name="kcat", exit_at_end=False, extra=()):
        self.bootstrap = bootstrap
        self.topic = topic
        self.out = os.path.join(workdir, name + ".out")
        self.log = os.path.join(workdir, name + ".log")
        self.name = name
        self.exit_at_end = exit_at_end
        self.extra = list(extra)
        self.proc = None
        self.records = []
        self._offset = 0
        self._partial = b""

    def start(self):
        # -E: a partition whose leader is down is a non-fatal error; keep going.
        argv = [KCAT, "-b", self.bootstrap, "-C", "-t", self.topic, "-o", "beginning", "-u",
                "-E", "-f", self.FORMAT] + self.extra
        if self.exit_at_end:
            argv.append("-e")
        self.proc = procs.spawn(argv, self.name, stdout=self.out, stderr=self.log)
        return self

    def stop(self):
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def read(self):
        """Parses lines written since the last call; returns the new Records
        (also appended to self.records)."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if not line:
                continue
            fields = line.decode("utf-8", "replace").split("\t", 4)
            if len(fields) != 5:
                raise AssertionError("kcat line is not key\\tpartition\\toffset\\theaders\\tpayload:"
                                     " %r" % line[:300])
            key, part, off, hdrs, payload = fields
            r = Record(key, int(part), int(off), _parse_headers(hdrs), payload)
            self.records.append(r)
            new.append(r)
        return new

    def wait_count(self, n, timeout=30.0, predicate=None):
        """Waits until at least n records (matching predicate) were read; returns them."""
        def enough():
            self.read()
            got = [r for r in self.records if predicate is None or predicate(r)]
            return got if len(got) >= n else None
        return procs.wait_until(enough, timeout, "%d records from kcat on %s" % (n, self.topic),
                                interval=0.1)


def produce_argv(bootstrap, topic, key=None, keyed=False, partition=None, headers=None,
                 extra=()):
    """argv of kcat -P: one message per stdin line; keyed lines are key<TAB>payload."""
    argv = [KCAT, "-P", "-b", bootstrap, "-t", topic]
    if key is not None:
        argv += ["-k", key]
    if keyed:
        argv += ["-K", "\t"]
    if partition is not None:
        argv += ["-p", str(partition)]
    for k, v in (headers or {}).items():
        argv += ["-H", "%s=%s" % (k, v)]
    return argv + list(extra)


def produce(bootstrap, topic, payloads, workdir, key=None, partition=None, headers=None,
            extra=(), timeout=60.0, name="kcat-produce"):
    """Produces payloads (str, one message each; (key, payload) tuples for
    per-message keys) with kcat -P and waits until kcat has delivered them and
    exited. Raises RuntimeError when kcat fails or times out."""
    keyed = any(isinstance(p, tuple) for p in payloads)
    lines = ["%s\t%s" % p if isinstance(p, tuple) else p for p in payloads]
    log = os.path.join(workdir, name + ".log")
    p = procs.spawn(produce_argv(bootstrap, topic, key, keyed, partition, headers, extra), name,
                    stdin=subprocess.PIPE, stdout=log, stderr=log)
    try:
        p.communicate(("\n".join(lines) + "\n").encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        raise RuntimeError("kcat -P to %s timed out: %s" % (topic, util.tail(log)))
    rc = procs.stop(p)
    if rc != 0:
        raise RuntimeError("kcat -P to %s exited %s: %s" % (topic, rc, util.tail(log)))


def metadata(bootstrap, topic=None, timeout=20.0):
    """kcat -L -J: the cluster metadata as parsed JSON (brokers, topics with
    partitions and their leaders)."""
    argv = [KCAT, "-L", "-J", "-b", bootstrap, "-m", str(int(timeout))]
    if topic is not None:
        argv += ["-t", topic]
    p = procs.spawn(argv, "kcat-metadata", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        raise RuntimeError("kcat -L timed out")
    rc = procs.stop(p)
    if rc != 0:
        raise RuntimeError("kcat -L exited %s: %s" % (rc, err.decode(errors="replace")))
    return json.loads(out)


def partition_leader(bootstrap, topic, partition):
    """The broker id leading topic/partition, from kcat -L."""
    md = metadata(bootstrap, topic)
    for t in md.get("topics", []):
        if t.get("topic") == topic:
            for p in t.get("partitions", []):
                if p.get("partition") == partition:
                    return p["leader"]
    raise KeyError("no partition %s/%d in metadata %r" % (topic, partition, md))


# -- checking what the bridge published ---------------------------------------
# Added for the test_kafka_* bridge tests; everything above stays as it was.

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"

validate_envelope = schema.validate_envelope  # re-exported for the tests


class BadRecord(AssertionError):
    pass


def structured_envelope(rec, bridge_id=None):
    """The envelope of a structured-mode record, after checking it: the value
    is a schema-valid envelope, the key is its partitionkey "<bridge>/<vm>",
    and the headers are content-type application/cloudevents+json, ce_type,
    ce_id and ce_subject matching the envelope. Raises BadRecord."""
    try:
        env = rec.json()
        validate_envelope(env)
    except Exception as e:  # ValueError, jsonschema.ValidationError, KeyError
        raise BadRecord("record %r is not a valid envelope: %s" % (rec, e))
    want = {"content-type": STRUCTURED_CONTENT_TYPE, "ce_type": env["type"], "ce_id": env["id"],
            "ce_subject": env["subject"]}
    if rec.headers != want:
        raise BadRecord("record headers %r, expected %r (%r)" % (rec.headers, want, rec))
    if rec.key != env["partitionkey"]:
        raise BadRecord("record key %r is not the partitionkey %r" % (rec.key, env["partitionkey"]))
    if bridge_id is not None and env["bridge"] != bridge_id:
        raise BadRecord("record of bridge %r, expected %r" % (env["bridge"], bridge_id))
    return env


def binary_envelope(rec):
    """Rebuilds the envelope of a binary-mode record (CloudEvents Kafka binding:
    value = data, every attribute a ce_<name> header, content-type = the
    datacontenttype), checks it like structured_envelope and returns it."""
    h = dict(rec.headers)
    env = {}
    try:
        env["datacontenttype"] = h.pop("content-type")
        for name in list(h):
            if not name.startswith("ce_"):
                raise BadRecord("binary record has a header %r that is no ce_ attribute: %r"
                                % (name, rec))
            env[name[3:]] = h.pop(name)
        env["data"] = rec.json()
        validate_envelope(env)
    except BadRecord:
        raise
    except Exception as e:
        raise BadRecord("binary record %r is not a valid event: %s" % (rec, e))
    if rec.key != env["partitionkey"]:
        raise BadRecord("record key %r is not the partitionkey %r" % (rec.key, env["partitionkey"]))
    return env


class KeyStats:
    """What one key's records on one topic looked like (see analyse_keys)."""

    def __init__(self, key):
        self.key = key
        self.partitions = set()
        self.envelopes = []   # first occurrences, in offset order
        self.duplicates = 0   # records whose id was seen before with the same payload
        self._seen = {}       # sequence -> (id, payload) of its first occurrence

    @property
    def sequences(self):
        return [int(e["sequence"]) for e in self.envelopes]


def analyse_keys(records, decode=structured_envelope):
    """Per key, in offset order: validates every record (decode), and checks
    that each key lives in one partition, that a repeated sequence is a true
    duplicate (same id, same payload) and that the first occurrences have a
    strictly increasing sequence. Returns {key: KeyStats}; raises BadRecord."""
    by_key = {}
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        env = decode(rec)
        ks = by_key.setdefault(rec.key, KeyStats(rec.key))
        ks.partitions.add(rec.partition)
        seq = int(env["sequence"])
        first = ks._seen.get(seq)
        if first is not None:
            if first[0] != env["id"] or first[1] != rec.payload:
                raise BadRecord("key %s: sequence %d published twice with different content:\n"
                                "  %s\n  %s" % (rec.key, seq, first[1][:300], rec.payload[:300]))
            ks.duplicates += 1
            continue
        if ks.envelopes and seq <= int(ks.envelopes[-1]["sequence"]):
            raise BadRecord("key %s: sequence %d at partition %d offset %d after %s"
                            % (rec.key, seq, rec.partition, rec.offset,
                               ks.envelopes[-1]["sequence"]))
        ks._seen[seq] = (env["id"], rec.payload)
        ks.envelopes.append(env)
    for ks in by_key.values():
        if len(ks.partitions) != 1:
            raise BadRecord("key %s is spread over partitions %s" % (ks.key, sorted(ks.partitions)))
    return by_key
