#!/usr/bin/python3
"""Closing the loop over MQTT on a real QEMU: the test is the orchestrator.

It waits for qmp.block.io_error (enospc) and qmp.vm.stopped (io-error) on the
bus, grows the VM's private tmpfs, and publishes resize-and-cont (grow_by 64 MiB)
with mosquitto_pub, with an MQTT 5 response topic and correlation data. Checked:
the answer arrives on the response topic with the same correlation data, status
ok, steps query-status, query-block, block_resize, cont, query-status all ok, run
state running; the same result is an event of vm1 after qmp.vm.resumed; QEMU's
query-block shows the new size; the guest writes on (write counter grows)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, qemu  # noqa: E402

MiB = 1 << 20

with check.Test("command_resize_mqtt") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    reply_out = os.path.join(d, "reply.out")
    procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                 "-t", "orch/replies/#", "-F", "%t\t%D\t%x"], "reply_sub", stdout=reply_out)
    vm = qemu.Qemu(d, "vm1", disk="tmpfs", extra=["-S"]).start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], broker=broker,
                       extra_yaml="commands: { enabled: true, max_size: 1GiB, max_growth: 256MiB }\n")
    br.start()
    t.add_log("bridge", br.log)
    sub.wait_for(lambda m: m.type == "qmp.vm.state", 20, "the snapshot")

    t.section("the VM runs into ENOSPC")
    vm.qmp.cmd("cont")
    sub.wait_for(lambda m: m.type == "qmp.vm.stopped" and m.data["reason"] == "io-error", 30,
                 "qmp.vm.stopped io-error")
    err = sub.wait_for(lambda m: m.type == "qmp.block.io_error", 5, "qmp.block.io_error")
    t.ok("orchestrator saw io_error (%s) and stopped (io-error)" % err.data["errno"])
    before = [b for b in vm.qmp.cmd("query-block") if b["device"] == "data"][0]
    size0 = before["inserted"]["image"]["virtual-size"]

    t.section("grow the storage, send resize-and-cont")
    vm.grow_tmpfs("256M")
    cmd = commands.make("resize-and-cont", "vm1", {"device": err.data["device"], "grow_by": 64 * MiB})
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/replies/o1",
                          correlation="corr-4711")

    def reply():
        try:
            with open(reply_out) as f:
                lines = [l.rstrip("\n").split("\t", 2) for l in f if l.strip()]
        except FileNotFoundError:
            return None
        return lines[0] if lines else None
    topic, corr, hexpayload = procs.wait_until(reply, 30, "the reply on orch/replies/o1")
    env = json.loads(bytes.fromhex(hexpayload))
    mqtt.validate_envelope(env)
    res = env["data"]
    t.expect(corr == "corr-4711", "reply carries the correlation data", corr)
    t.expect(env["type"] == "bridge.command.result" and res["command_id"] == cmd["id"]
             and res["command"] == "resize-and-cont", "reply is the result of our command", res)
    t.expect(res["status"] == "ok", "status ok", res)
    steps = [(s["execute"], s["status"]) for s in res["steps"]]
    t.expect(steps == [("query-status", "ok"), ("query-block", "ok"), ("block_resize", "ok"),
                       ("cont", "ok"), ("query-status", "ok")], "steps, each ok", steps)
    resize = res["steps"][2]["arguments"]
    t.expect(resize.get("size") == size0 + 64 * MiB, "block_resize to old size + 64 MiB", resize)
    t.expect(res.get("run_state") == "running", "final run state running", res)

    t.section("the bus and QEMU agree")
    env_result = sub.wait_for(lambda m: m.type == "bridge.command.result", 10, "result event")
    evs = check.vm_envelopes(sub, "test-host", "vm1")
    i_res = check.first_index(evs, lambda m: m.type == "qmp.vm.resumed" and
                              check.seq_int(m) > check.seq_int(err))
    i_out = check.first_index(evs, lambda m: m.type == "bridge.command.result")
    t.expect(0 <= i_res < i_out, "qmp.vm.resumed comes before the result on vm1's stream",
             check.summarize(evs))
    after = [b for b in vm.qmp.cmd("query-block") if b["device"] == "data"][0]
    t.expect(after["inserted"]["image"]["virtual-size"] == size0 + 64 * MiB,
             "query-block shows the new size", after["inserted"]["image"]["virtual-size"])
    t.expect(vm.qmp.status()["status"] == "running", "QEMU says running")
    m = check.wait_retained_state(sub, "test-host", "vm1",
                                  lambda d: check.disk(d, "data").get("size") == size0 + 64 * MiB
                                  and d["run_state"] == "running",
                                  "retained state: running, disk data at the new size")
    t.ok("retained state follows the resize (block_resize raises no event)", m.json["sequence"])

    def writes():
        return [s for s in vm.qmp.cmd("query-blockstats") if s["device"] == "data"][0]["stats"]["wr_operations"]
    w0 = writes()
    procs.wait_until(lambda: writes() > w0 + 10, 20, "the guest to write on")
    t.ok("the guest writes on", writes() - w0)
