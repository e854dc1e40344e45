#!/usr/bin/python3
"""Commands to a VM run by libvirt, over MQTT, as libvirt API calls.

The writer domain vm1 of a private libvirtd fills its 4M tmpfs and pauses on
ENOSPC; the test, as the orchestrator, waits for qmp.vm.stopped (io-error),
grows the tmpfs and sends resize-and-cont (device hda, grow_by 64 MiB) with an
MQTT 5 response topic. Checked: the result (on the response topic and as an
event of vm1) is ok with the steps virDomainGetState, virDomainGetBlockInfo,
virDomainBlockResize (hda, old size + 64 MiB, bytes), virDomainResume,
virDomainGetState, run state running; libvirt says running and shows the new
capacity; the retained state follows. Then, on the running domain:
resize-and-cont without force is rejected (precondition, no resize step);
stop and cont are virDomainSuspend / virDomainResume; set-write-threshold by
node name is virDomainSetBlockThreshold on hda; block-job-pause is rejected
with class "unsupported" (libvirt has no API for it); a block-job-cancel for a
disk with no job fails with libvirt's error in its step."""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, libvirt, mqtt, procs  # noqa: E402

MiB = 1 << 20

with check.Test("libvirt_commands") as t:
    d = t.workdir
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    reply_out = os.path.join(d, "reply.out")
    procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                 "-q", "1", "-t", "orch/replies/#", "-F", "%t\t%D\t%x"], "reply_sub",
                stdout=reply_out)
    dom = libvirt.define_writer_domain(lv, d, "vm1", start=False)
    dom.start(paused=True)
    extra = ("libvirt: { uri: %s }\ncommands: { enabled: true, max_size: 1GiB, max_growth: 256MiB }\n"
             % json.dumps(lv.uri))
    br = bridge.Bridge(d, [], broker=broker, extra_yaml=extra).start()
    t.add_log("bridge", br.log)
    br.wait_log("receiving commands")
    sub.wait_for(lambda m: m.type == "qmp.vm.state", 30, "the snapshot of vm1")

    def result(cmd_id, timeout=30):
        return sub.wait_for(lambda m: m.type == "bridge.command.result"
                            and m.data["command_id"] == cmd_id, timeout,
                            "the result of %s" % cmd_id).data

    def send(name, data=None):
        cmd = commands.make(name, "vm1", data)
        commands.mqtt_publish(broker.port, "test-host", "vm1", cmd)
        return result(cmd["id"])

    t.section("the domain runs into ENOSPC")
    lv.virsh("resume", "vm1")
    sub.wait_for(lambda m: m.type == "qmp.vm.stopped" and m.data["reason"] == "io-error", 30,
                 "qmp.vm.stopped io-error")
    err = sub.wait_for(lambda m: m.type == "qmp.block.io_error", 5, "qmp.block.io_error")
    t.expect(err.data["device"] == "hda", "the io_error names the disk by its target", err.data)

    def capacity():
        out = lv.virsh("domblkinfo", "vm1", "hda")
        return int(re.search(r"Capacity:\s+(\d+)", out).group(1))
    size0 = capacity()

    t.section("grow the storage, send resize-and-cont")
    dom.grow_tmpfs("256M")
    cmd = commands.make("resize-and-cont", "vm1", {"device": "hda", "grow_by": 64 * MiB})
    commands.mqtt_publish(broker.port, "test-host", "vm1", cmd, response_topic="orch/replies/o1",
                          correlation="corr-lv")

    def reply():
        try:
            with open(reply_out) as f:
                lines = [l.rstrip("\n").split("\t", 2) for l in f if l.strip()]
        except FileNotFoundError:
            return None
        return lines[0] if lines else None
    _topic, corr, hexpayload = procs.wait_until(reply, 30, "the reply on orch/replies/o1")
    env = json.loads(bytes.fromhex(hexpayload))
    mqtt.validate_envelope(env)
    res = env["data"]
    t.expect(corr == "corr-lv" and res["command_id"] == cmd["id"] and res["status"] == "ok",
             "the reply is our command's result, status ok", res)
    steps = [(s["execute"], s["status"]) for s in res["steps"]]
    t.expect(steps == [("virDomainGetState", "ok"), ("virDomainGetBlockInfo", "ok"),
                       ("virDomainBlockResize", "ok"), ("virDomainResume", "ok"),
                       ("virDomainGetState", "ok")], "the steps are libvirt's calls, each ok",
             steps)
    t.expect(res["steps"][2]["arguments"] == {"disk": "hda", "size": size0 + 64 * MiB,
                                              "flags": "bytes"},
             "virDomainBlockResize of hda to the old size + 64 MiB", res["steps"][2])
    t.expect(res.get("run_state") == "running", "final run state running", res)
    t.expect(capacity() == size0 + 64 * MiB, "libvirt shows the new capacity", capacity())
    dom.wait_state(r"^running")
    t.ok("libvirt says running")
    m = check.wait_retained_state(sub, "test-host", "vm1",
                                  lambda s: check.disk(s, "hda").get("size") == size0 + 64 * MiB
                                  and s["run_state"] == "running",
                                  "retained state: running, hda at the new size")
    t.ok("retained state follows", m.json["sequence"])

    t.section("the other commands")
    r = send("resize-and-cont", {"device": "hda", "grow_by": MiB})
    t.expect(r["status"] == "rejected" and r["error"]["class"] == "precondition"
             and [s["execute"] for s in r["steps"]] == ["virDomainGetState"],
             "resize-and-cont on a running domain: rejected (precondition) before any change", r)
    r = send("stop")
    t.expect(r["status"] == "ok" and [s["execute"] for s in r["steps"]]
             == ["virDomainSuspend", "virDomainGetState"] and r.get("run_state") == "paused",
             "stop: virDomainSuspend, run state paused", r)
    dom.wait_state(r"^paused")
    r = send("cont")
    t.expect(r["status"] == "ok" and [s["execute"] for s in r["steps"]]
             == ["virDomainResume", "virDomainGetState"] and r.get("run_state") == "running",
             "cont: virDomainResume, run state running", r)
    node = "libvirt-%d-format" % dom.disk_indexes()["hda"]
    r = send("set-write-threshold", {"node_name": node, "threshold": 200 * MiB})
    t.expect(r["status"] == "ok" and r["steps"][0]["execute"] == "virDomainSetBlockThreshold"
             and r["steps"][0]["arguments"]["disk"] == "hda",
             "set-write-threshold by node name: virDomainSetBlockThreshold on hda", r)
    r = send("block-job-pause", {"job": "hda"})
    t.expect(r["status"] == "rejected" and r["error"]["class"] == "unsupported"
             and r["steps"] == [], "block-job-pause: rejected, class unsupported", r)
    r = send("block-job-cancel", {"job": "hda"})
    t.expect(r["status"] == "failed" and r["error"]["class"] == "libvirt"
             and r["steps"][0]["status"] == "failed"
             and r["steps"][0]["error"]["class"].startswith("libvirt-"),
             "block-job-cancel with no job: failed with libvirt's error in its step", r)
    for m in check.vm_envelopes(sub, "test-host", "vm1"):
        mqtt.validate_envelope(m.json)
    t.ok("every envelope of vm1 is schema-valid")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
