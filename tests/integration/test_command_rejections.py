#!/usr/bin/python3
"""Every way a command is refused, over MQTT, against a scripted QEMU that logs
every QMP command it receives. Each case asserts the exact rejection class and
the field its message names, and that QEMU saw no command because of it (the
precondition case alone may ask query-status: checking is its job).
The bridge requires HMAC signatures, allows only some commands, and caps
command messages at 4 KiB. Also: a command naming another bridge is ignored.
A message that is not an authenticated command (it failed a check before, or at, the
signature) is answered on the default result topic, never on the Response Topic it
named; authenticated commands rejected later (unknown VM, not connected, topic
mismatch) are answered on their Response Topic."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
KEY = b"0123456789abcdef-test-key"
MiB = 1 << 20

with check.Test("command_rejections") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    replies = os.path.join(d, "replies.out")
    procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                 "-q", "1", "-t", "orch/r/#", "-t", "qmp/test-host/+/result", "-F", "%t\t%x"],
                "reply_sub", stdout=replies)
    sock = os.path.join(d, "vm1.qmp")
    qlog = os.path.join(d, "qmp-commands.jsonl")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                 "--command-log", qlog], "qmp_peer", stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    keyfile = os.path.join(d, "hmac.key")
    with open(os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(KEY + b"\n")
    br = bridge.Bridge(d, [("vm1", sock), ("vm2", os.path.join(d, "absent.qmp"))], broker=broker,
                       extra_yaml="commands: { enabled: true, allow: [resize-and-cont, cont, stop],\n"
                                  "  max_size: 1GiB, max_message_bytes: 4KiB, hmac_key_file: %s }\n"
                                  % json.dumps(keyfile))
    br.start()
    t.add_log("bridge", br.log)
    br.wait_log("[vm1] state resynced")
    br.wait_log("receiving commands")
    time.sleep(0.5)

    def qmp_seen():
        try:
            with open(qlog) as f:
                return [json.loads(l)["execute"] for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def reply_for(topic, timeout=10):
        def find():
            try:
                with open(replies) as f:
                    for line in f:
                        tp, hx = line.rstrip("\n").split("\t", 1)
                        if tp == topic:
                            return json.loads(bytes.fromhex(hx))
            except FileNotFoundError:
                pass
            return None
        return procs.wait_until(find, timeout, "a reply on " + topic)

    def signed(name, vm="vm1", data=None, **kw):
        kw.setdefault("bridge", "test-host")  # a signature names its bridge
        return commands.make(name, vm, data, key=KEY, **kw)

    def replies_on(topic):
        return mqtt.hex_messages_on(replies, topic)

    def next_reply_on(topic, seen, timeout=10):
        def find():
            got = replies_on(topic)
            return got[seen] if len(got) > seen else None
        return procs.wait_until(find, timeout, "reply %d on %s" % (seen + 1, topic))

    result_topic = "qmp/test-host/vm1/result"
    baseline = len(qmp_seen())
    # (case, topic VM, payload, class, field named, authenticated)
    cases = [
        ("malformed", "vm1", b"{not json", "invalid", "JSON", False),
        ("oversized", "vm1", json.dumps(signed("cont", data=None) | {"pad": "x" * 5000}), "too-large", "",
         False),
        ("no-size", "vm1", signed("resize-and-cont", data={"device": "data"}), "invalid", "data", False),
        ("bad-type", "vm1", signed("resize-and-cont", data={"device": "data", "size": "big"}),
         "invalid", "data.size", False),
        ("extra-arg", "vm1", signed("cont", data={"force": True}), "invalid", "data.force", False),
        ("unknown", "vm1", signed("reboot"), "unknown-command", "type", False),
        ("forbidden", "vm1", signed("block-job-cancel", data={"job": "j1"}), "forbidden", "block-job-cancel",
         False),
        ("expired", "vm1", signed("cont", time=commands.now_rfc3339(-600)), "expired", "time", False),
        ("future", "vm1", signed("cont", time=commands.now_rfc3339(+600)), "expired", "time", False),
        ("bad-signature", "vm1", dict(signed("cont"), signature="00" * 32), "unauthenticated", "signature",
         False),
        ("unsigned", "vm1", commands.make("cont", "vm1"), "unauthenticated", "signature", False),
        ("unknown-vm", "vm9", signed("cont", vm="vm9", reply_topic="orch/r/unknown-vm"),
         "unknown-vm", "vm9", True),
        ("not-connected", "vm2", signed("cont", vm="vm2", reply_topic="orch/r/not-connected"),
         "not-connected", "vm2", True),
        ("topic-mismatch", "vm1", signed("cont", vm="vm2", reply_topic="orch/r/topic-mismatch"),
         "invalid", "subject", True),
    ]
    t.section("rejections, each answered, none reaching QEMU")
    for case, topic_vm, payload, cls, field, authenticated in cases:
        seen = len(replies_on(result_topic))
        commands.mqtt_publish(broker.port, "test-host", topic_vm, payload,
                              response_topic="orch/r/" + case, correlation=case)
        env = reply_for("orch/r/" + case) if authenticated else next_reply_on(result_topic, seen)
        mqtt.validate_envelope(env)
        res = env["data"]
        t.expect(res["status"] == "rejected" and res["error"]["class"] == cls and
                 field in res["error"]["message"] and res["steps"] == [],
                 "%-15s -> rejected %s: %s" % (case, cls, res["error"]["message"]), res)
    t.expect(len(qmp_seen()) == baseline, "QEMU received no command for any of them",
             qmp_seen()[baseline:])

    t.section("precondition: only query-status reaches QEMU")
    commands.mqtt_publish(broker.port, "test-host", "vm1",
                          signed("resize-and-cont", data={"device": "virtio0", "grow_by": MiB},
                                 reply_topic="orch/r/precondition"),
                          response_topic="orch/r/precondition")
    res = reply_for("orch/r/precondition")["data"]
    t.expect(res["status"] == "rejected" and res["error"]["class"] == "precondition",
             "running VM -> rejected precondition: " + res["error"]["message"], res)
    t.expect(qmp_seen()[baseline:] == ["query-status"], "QEMU saw only query-status", qmp_seen()[baseline:])

    t.section("a command naming another bridge is ignored")
    commands.mqtt_publish(broker.port, "test-host", "vm1", signed("stop", bridge="other-host"),
                          response_topic="orch/r/other-bridge")
    time.sleep(2)
    t.expect(not any(replies_on("orch/r/" + case) for case, *_, auth in cases if not auth),
             "no Response Topic of an unauthenticated message was used")
    try:
        reply_for("orch/r/other-bridge", timeout=0.5)
        t.expect(False, "no reply for another bridge's command")
    except TimeoutError:
        t.ok("no reply for another bridge's command")
    t.expect("stop" not in qmp_seen(), "QEMU never got stop")
