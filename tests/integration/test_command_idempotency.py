#!/usr/bin/python3
"""Commands run once, and survive the bridge's MQTT link going down.

1. A duplicate id runs once: `stop` sent twice with one id reaches QEMU once,
   and the second copy is answered with the first result again; a copy that
   arrives while the original is still running (QEMU holds the `cont` reply
   for 2 s) waits and is answered with the original's result when it ends.
2. A command published while the bridge's link is down waits in its persistent
   MQTT session: the bridge is frozen (SIGSTOP) until mosquitto drops it for a
   missed keepalive, `cont` is published, the bridge is thawed, reconnects and
   runs it."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")

with check.Test("command_idempotency") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    replies = os.path.join(d, "replies.out")
    procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                 "-q", "1", "-t", "orch/r/#", "-F", "%t\t%x"], "reply_sub", stdout=replies)
    sock = os.path.join(d, "vm1.qmp")
    qlog = os.path.join(d, "qmp-commands.jsonl")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                 "--command-log", qlog, "--delay", "cont:2"], "qmp_peer",
                stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    br = bridge.Bridge(d, [("vm1", sock)], broker=broker,
                       extra_yaml="commands: { enabled: true }\n")
    br.yaml = br.yaml.replace("qos: 1 }", "qos: 1, keepalive: 5s, reconnect_initial: 100ms, "
                              "reconnect_max: 500ms }")
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)
    br.wait_log("[vm1] state resynced")
    br.wait_log("receiving commands")
    time.sleep(0.5)

    def seen(name):
        try:
            with open(qlog) as f:
                return sum(1 for l in f if json.loads(l)["execute"] == name)
        except FileNotFoundError:
            return 0

    def replies_on(topic, n, timeout=15):
        def find():
            got = mqtt.hex_messages_on(replies, topic)
            return got if len(got) >= n else None
        return procs.wait_until(find, timeout, "%d replies on %s" % (n, topic))

    t.section("a duplicate id runs once")
    cmd = commands.make("stop", "vm1", cmd_id="stop-once-1")
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/r/dup")
    first = replies_on("orch/r/dup", 1)[0]
    t.expect(first["data"]["status"] == "ok", "first copy ran: ok", first["data"])
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/r/dup")
    both = replies_on("orch/r/dup", 2)
    t.expect(both[1]["data"] == first["data"], "the second copy is answered with the first result",
             both[1]["data"])
    t.expect(seen("stop") == 1, "QEMU received stop exactly once", seen("stop"))
    br.wait_log("ran before: its first result is published again")
    t.ok("the log says the duplicate was answered from the cache")

    t.section("a duplicate that arrives while the original runs")
    cmd = commands.make("cont", "vm1", cmd_id="cont-slow-1")
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/r/slow-a")
    br.wait_log("command cont cont-slow-1 queued")
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/r/slow-b")
    br.wait_log("cont-slow-1 is running already")
    t.expect(not os.path.exists(replies) or "orch/r/slow-b" not in open(replies).read(),
             "while the original runs, the duplicate has no answer yet")
    a = replies_on("orch/r/slow-a", 1)[0]["data"]
    b = replies_on("orch/r/slow-b", 1)[0]["data"]
    t.expect(a["status"] == "ok" and b == a, "the duplicate is answered with the original's result", b)
    t.expect(seen("cont") == 1, "QEMU received cont once", seen("cont"))

    t.section("a command sent while the bridge's link is down")
    os.kill(br.proc.pid, signal.SIGSTOP)
    try:
        procs.wait_until(lambda: "exceeded timeout" in open(broker.log).read(), 20,
                         "mosquitto to drop the frozen bridge (keepalive 5s)")
        t.ok("mosquitto dropped the bridge's connection")
        commands.mqtt_publish(broker.port, "test-host", "vm1",
                              commands.make("cont", "vm1", cmd_id="cont-while-down"),
                              response_topic="orch/r/down")
        t.ok("cont published while the bridge was disconnected")
    finally:
        os.kill(br.proc.pid, signal.SIGCONT)
    res = replies_on("orch/r/down", 1, timeout=30)[0]["data"]
    t.expect(res["command_id"] == "cont-while-down" and res["status"] == "ok",
             "after reconnecting the bridge ran it: ok", res)
    t.expect(seen("cont") == 2, "QEMU received that cont once (two in all)", seen("cont"))
