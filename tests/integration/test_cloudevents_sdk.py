#!/usr/bin/python3
"""Envelopes of a real run read by the official CloudEvents JavaScript SDK, and checked
against docs/asyncapi.yaml.

One bridge with three transports: MQTT 5 (mosquitto), Kafka in structured mode and Kafka in
binary mode (content_mode: binary), each Kafka transport on its own mock cluster with the
default topic names. A scripted QEMU (qmp_peer, trickle mode) sends BLOCK_IO_ERROR, STOP,
RESUME and RTC_CHANGE; two query-state commands come over MQTT, one with an MQTT 5 Response
Topic and Correlation Data and one without; then the peer goes away and the bridge stops.
mosquitto_sub records every message with its retain flag and MQTT 5 content type, kcat -J
every record of both clusters with its key and headers.

tests/contract/cloudevents_check.js feeds each message to the SDK's MQTT or Kafka binding
(which detects structured or binary mode itself) and builds the event again with
new CloudEvent(event, true): it must validate and hold exactly the message's attributes and
data. The status messages must not pass for CloudEvents. Every event type of the run must
have come through each of the three encodings. tests/contract/asyncapi_check.js then checks
every message against the channel of docs/asyncapi.yaml that its topic matches (payload and
headers against the message schemas, the content type, the retain flag: a fresh subscriber
after the run collects what the broker kept retained). The published examples of
docs/events.md (one per type) go through new CloudEvent(env, true) too.

Last, altered copies of real messages (no content type, a binary record without ce_id, an
empty id, a time that is no time, an extension name the spec forbids, data of another
type, a retained event) must be refused, so
neither check can pass everything.

Without node or npm the test says SKIP and exits 77 (ctest: skipped, never passed)."""
import copy
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, contract, kafka, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
DOC = os.path.join(util.SOURCE_DIR, "docs", "asyncapi.yaml")
EXAMPLES = os.path.join(util.SOURCE_DIR, "docs", "events.md")
# the types this run makes, each to arrive in every encoding
TYPES = ["bridge.vm.connected", "qmp.vm.state", "qmp.block.io_error", "qmp.vm.stopped",
         "qmp.vm.resumed", "qmp.event", "bridge.command.result", "bridge.vm.disconnected"]
ENCODINGS = ["mqtt", "kafka structured", "kafka binary"]

contract.node_or_skip("the bridge's envelopes against the CloudEvents SDK")


class MqttCapture:
    """mosquitto_sub on '#' (MQTT 5, QoS 1): topic, retain flag, content type, payload."""

    FORMAT = "%t\t%r\t%C\t%x"

    def __init__(self, broker):
        self.broker = broker
        self.out = os.path.join(broker.workdir, "capture.out")
        procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                     "-q", "1", "-t", "#", "-F", self.FORMAT], "capture_sub", stdout=self.out,
                    stderr=os.path.join(broker.workdir, "capture.log"))
        n = [0]

        def subscribed():
            n[0] += 1
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
                            "-t", "probe/capture", "-m", str(n[0])], check=True, timeout=10)
            return any(c["topic"] == "probe/capture" for c in self.read(probes=True))
        procs.wait_until(subscribed, 10, "the capturing mosquitto_sub to subscribe", interval=0.2)

    def read(self, probes=False):
        """Every message so far as a capture (see qbtest.contract), probes left out unless
        probes."""
        with open(self.out, encoding="utf-8") as f:
            lines = f.read().split("\n")[:-1]
        return [c for c in map(mqtt_capture, lines) if probes or not c["topic"].startswith("probe/")]


def mqtt_capture(line):
    """A capture of one line of mosquitto_sub -F MqttCapture.FORMAT."""
    topic, retained, ctype, hexpayload = line.split("\t", 3)
    payload = bytes.fromhex(hexpayload).decode("utf-8")
    parts = topic.split("/")
    kind = "event" if parts[-2:-1] == ["event"] else parts[-1]  # status, state, ...
    c = {"transport": "mqtt", "topic": topic, "retained": retained == "1",
         "content_type": ctype or None, "payload": payload,
         "json": kind != "status" and payload != "", "kind": kind,
         "event": kind in ("event", "state", "result") and payload != ""}
    if topic.startswith("orch/r/"):
        c.update(kind="reply", event=True, json=True, reply_of="receiveCommands")
    return c


def mqtt_retained(broker):
    """The retained messages on qmp/# as captures: a new subscription gets them flagged (a
    live one does not: the broker clears the flag on what it forwards)."""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                        "-q", "1", "-t", "qmp/#", "-F", MqttCapture.FORMAT, "--retained-only",
                        "-W", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return [mqtt_capture(line) for line in r.stdout.decode("utf-8").splitlines()]


def kafka_records(mock, topic, mode):
    """Every record of topic on mock as captures, read by a one-shot kcat -J."""
    r = subprocess.run([kafka.KCAT, "-b", mock.bootstrap, "-C", "-t", topic, "-o", "beginning",
                        "-e", "-J", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if r.returncode != 0:
        raise RuntimeError("kcat -J on %s: %s" % (topic, r.stderr.decode(errors="replace")))
    out = []
    for line in r.stdout.decode("utf-8").splitlines():
        rec = json.loads(line)
        h = rec.get("headers") or []
        headers = dict(zip(h[0::2], h[1::2]))
        out.append({"transport": "kafka", "topic": topic, "key": rec["key"], "headers": headers,
                    "payload": rec["payload"], "json": rec["payload"] is not None, "mode": mode,
                    "event": rec["payload"] is not None,
                    "kind": "tombstone" if rec["payload"] is None else topic})
    return out


def event_type(c):
    if c.get("mode") == "binary":
        return c["headers"].get("ce_type")
    try:
        return json.loads(c["payload"]).get("type")
    except (TypeError, ValueError, AttributeError):
        return None


def examples():
    """The envelopes of docs/events.md, one per type."""
    with open(EXAMPLES, encoding="utf-8") as f:
        return [json.loads(b) for b in re.findall(r"```json\n(.*?)```", f.read(), re.S)]


def altered(captures):
    """Copies of real messages that a consumer must refuse, with the word the refusal names
    and the check (script) that must refuse it."""
    def first(pred):
        return copy.deepcopy(next(c for c in captures if pred(c)))
    out = []
    c = first(lambda c: c["transport"] == "mqtt" and c["kind"] == "event")
    c["content_type"] = None
    out.append(("an MQTT event without its content type", c, "cloudevents_check.js",
                "does not see a CloudEvent"))
    c = first(lambda c: c.get("mode") == "binary" and c["event"])
    del c["headers"]["ce_source"]
    out.append(("a binary record without ce_source", c, "cloudevents_check.js",
                "no source attribute"))
    c = first(lambda c: c["transport"] == "mqtt" and c["kind"] == "event")
    env = json.loads(c["payload"])
    env["time"] = "yesterday"
    c["payload"] = json.dumps(env)
    out.append(("an MQTT event whose time is no RFC 3339 time", c, "cloudevents_check.js",
                "invalid payload"))
    c = first(lambda c: c.get("mode") == "structured" and c["event"])
    env = json.loads(c["payload"])
    env["id"] = ""
    c["payload"] = json.dumps(env)
    out.append(("a structured record with an empty id", c, "cloudevents_check.js", "no id"))
    c = first(lambda c: c.get("mode") == "binary" and c["event"])
    c["headers"]["ce_partition_key"] = c["headers"].pop("ce_partitionkey")
    out.append(("an extension named partition_key", c, "cloudevents_check.js",
                "invalid extension name"))
    io = first(lambda c: c.get("mode") == "binary" and event_type(c) == "qmp.block.io_error")
    c = first(lambda c: c.get("mode") == "binary" and event_type(c) == "qmp.vm.stopped")
    c["payload"] = io["payload"]
    out.append(("a qmp.vm.stopped record carrying io_error data", c, "asyncapi_check.js",
                "fits no message"))
    c = first(lambda c: c["transport"] == "mqtt" and c["kind"] == "event")
    c["retained"] = True
    out.append(("a retained MQTT event", c, "asyncapi_check.js", "is retained"))
    return out


with check.Test("cloudevents_sdk") as t:
    d = t.workdir
    t.section("npm ci of tests/contract into the build")
    modules = contract.install()
    t.ok("packages installed", modules)

    t.section("a real run: MQTT, Kafka structured, Kafka binary")
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    cap = MqttCapture(broker)
    topics = [("qmp.events", 1, 1), ("qmp.state", 1, 1)]
    structured = kafka.KafkaMock(d, brokers=1, topics=topics, name="kafka_structured").start()
    binary = kafka.KafkaMock(d, brokers=1, topics=topics, name="kafka_binary").start()
    t.add_log("kafka_structured", structured.log)
    t.add_log("kafka_binary", binary.log)
    sock = os.path.join(d, "vm1.qmp")
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "trickle",
                        "--count", "4", "--interval", "0.3"], "qmp_peer",
                       stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "the peer's socket")
    br = bridge.Bridge(d, [("vm1", sock)], broker=broker, stdout_path=False,
                       extra_yaml="commands: { enabled: true, allow: [query-state] }\n")
    br.yaml = br.yaml.replace("transports:\n", "transports:\n"
                              '  - { type: kafka, name: structured, brokers: "%s", commands: false }\n'
                              '  - { type: kafka, name: binary, brokers: "%s", commands: false,'
                              " content_mode: binary }\n" % (structured.bootstrap, binary.bootstrap))
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)
    br.wait_log("receiving commands")

    def mqtt_types():
        return [event_type(c) for c in cap.read() if c["kind"] == "event"]
    procs.wait_until(lambda: {"qmp.vm.resumed", "qmp.event"} <= set(mqtt_types()), 30,
                     "the peer's events on MQTT")
    t.ok("MQTT events so far", mqtt_types())

    replied = commands.make("query-state", "vm1", cmd_id="sdk-reply")
    commands.mqtt_publish(broker.port, "test-host", "vm1", replied, response_topic="orch/r/sdk",
                          correlation="sdk-1")
    plain = commands.make("query-state", "vm1", cmd_id="sdk-plain")
    commands.mqtt_publish(broker.port, "test-host", "vm1", plain)

    def replies():
        return [c for c in cap.read() if c["kind"] in ("reply", "result")]
    procs.wait_until(lambda: len(replies()) >= 2, 30, "both command results")
    t.expect(sorted(c["kind"] for c in replies()) == ["reply", "result"],
             "one result on the Response Topic, one on qmp/test-host/vm1/result",
             [c["topic"] for c in replies()])

    procs.stop(peer)
    procs.wait_until(lambda: "bridge.vm.disconnected" in mqtt_types(), 30,
                     "bridge.vm.disconnected on MQTT")

    def kafka_captures():
        out = []
        for mock, mode in ((structured, "structured"), (binary, "binary")):
            for topic in ("qmp.events", "qmp.state"):
                out += kafka_records(mock, topic, mode)
        return out

    def kafka_complete():
        got = kafka_captures()
        return all(any(c["mode"] == m and event_type(c) == "bridge.vm.disconnected" for c in got)
                   for m in ("structured", "binary"))
    procs.wait_until(kafka_complete, 30, "bridge.vm.disconnected on both Kafka clusters")
    rc = br.stop()
    t.expect(rc == 0, "the bridge exits 0", rc)
    retained = mqtt_retained(broker)
    t.expect(sorted(c["topic"] for c in retained if c["retained"])
             == ["qmp/test-host/status", "qmp/test-host/vm1/state"],
             "retained on the broker: the status and the VM's state", [c["topic"] for c in retained])
    captures = cap.read() + retained + kafka_captures()
    path = contract.write_captures(os.path.join(d, "captures.jsonl"), captures)
    t.ok("%d messages captured" % len(captures), path)
    # the commands are the test's own, sent without a content type: the SDK would not see them
    published = contract.write_captures(os.path.join(d, "published.jsonl"),
                                        [c for c in captures if c["kind"] != "command"])
    statuses = [c["payload"] for c in captures if c["kind"] == "status"]
    t.expect(statuses[:1] == ["online"] and statuses[-1:] == ["offline"],
             "the status topic said online, then offline", statuses)

    t.section("every message through the CloudEvents SDK (MQTT and Kafka bindings)")
    rc, out = contract.run(modules, "cloudevents_check.js", "captures", published)
    summary = contract.report(t, "cloudevents_check captures", rc, out)
    seen = summary["counts"]
    for enc in ENCODINGS:
        missing = [ty for ty in TYPES if not seen.get("%s %s" % (enc, ty))]
        t.expect(not missing, "%s: every type of the run through the SDK" % enc, missing)
    t.expect(seen.get("mqtt not an event: status", 0) >= 2,
             "the status messages are not taken for CloudEvents", seen)

    t.section("every message against docs/asyncapi.yaml")
    rc, out = contract.run(modules, "asyncapi_check.js", "messages", DOC, path)
    contract.report(t, "asyncapi_check messages", rc, out)

    t.section("docs/events.md: one published example per type")
    ex = examples()
    ex_path = os.path.join(d, "examples.json")
    with open(ex_path, "w", encoding="utf-8") as f:
        json.dump(ex, f)
    rc, out = contract.run(modules, "cloudevents_check.js", "envelopes", ex_path)
    summary = contract.report(t, "cloudevents_check envelopes", rc, out)
    t.expect(len(summary["counts"]) == len(ex) >= 18, "%d examples, each a valid CloudEvent"
             % len(ex), summary["counts"])

    for what, c, script, word in altered(captures):
        t.section("refused: %s" % what)
        bad = contract.write_captures(os.path.join(d, "altered.jsonl"), [c])
        args = ["captures", bad] if script == "cloudevents_check.js" else ["messages", DOC, bad]
        rc, out = contract.run(modules, script, *args)
        fails = [l for l in out.splitlines() if l.startswith("FAIL ")]
        t.expect(rc == 1 and any(word in l for l in fails),
                 "%s exits 1 naming %r" % (script, word), out[-1500:])
