#!/usr/bin/python3
"""Closing the loop over Kafka on a real QEMU: the test is the orchestrator.

The bridge has one Kafka transport into a mock cluster and commands enabled,
so it joins consumer group qmp-bridge.test-host on qmp.commands. The test
waits on qmp.events (kcat) for qmp.block.io_error and qmp.vm.stopped
(io-error), grows the VM's private tmpfs, and produces two commands with
kcat -P to partition 0 of qmp.commands: first a resize-and-cont keyed
"other-bridge/vm1" (another bridge's VM of the same name: must be skipped,
even though this bridge has a vm1), then the real one keyed "test-host/vm1".
Checked: the result (bridge.command.result) is a record on qmp.events keyed
test-host/vm1, after qmp.vm.resumed, status ok with the five steps; QEMU's
query-block shows the new size; the other bridge's command got no result;
and the group's committed offset on qmp.commands is past both commands
(kcat reading from the stored offset of the group finds nothing, while it
finds both from the beginning).

Kafka has no reply channel: the result is only an event, keyed by the VM, so
it sits in order with the VM's own events."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, kafka, procs, qemu  # noqa: E402

MiB = 1 << 20
BRIDGE_ID = "test-host"
KEY = BRIDGE_ID + "/vm1"
GROUP = "qmp-bridge." + BRIDGE_ID


def events(consumer):
    """Every record on qmp.events so far as (record, envelope), each checked."""
    consumer.read()
    return [(r, kafka.structured_envelope(r, BRIDGE_ID)) for r in consumer.records]


def find(consumer, pred):
    got = [(r, e) for r, e in events(consumer) if pred(e)]
    return got[0] if got else None


def summary(pairs):
    return "\n".join("  [%d]@%d seq=%s %s %s" % (r.partition, r.offset, e["sequence"], e["type"],
                                                str(e.get("data"))[:160]) for r, e in pairs)


def commands_from(bootstrap, workdir, start):
    """Offsets kcat reads on qmp.commands [0] from start ("beginning", or "stored": the group's
    committed offset, read with the group's id but without joining it) up to the end."""
    log = os.path.join(workdir, "kcat-stored.log")
    argv = [kafka.KCAT, "-b", bootstrap, "-C", "-t", "qmp.commands", "-p", "0", "-o", start, "-e",
            "-q", "-f", "%o\n", "-X", "group.id=" + GROUP,
            # never store or commit anything in the bridge's group ourselves
            "-X", "enable.auto.commit=false", "-X", "topic.auto.commit.enable=false",
            "-X", "topic.auto.offset.reset=earliest"]
    p = procs.spawn(argv, "kcat-stored", stdout=subprocess.PIPE, stderr=log)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        raise check.CheckFailed("kcat -o %s timed out" % start)
    rc = procs.stop(p)
    if rc != 0:
        raise check.CheckFailed("kcat -o %s exited %s: %s" % (start, rc, open(log).read()[-2000:]))
    return [int(x) for x in out.decode().split()]


with check.Test("command_resize_kafka") as t:
    d = t.workdir
    mock = kafka.KafkaMock(d, brokers=3, topics=[(n, 3, 3) for n in
                                                 ("qmp.events", "qmp.state", "qmp.commands")])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    kc = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="qmp-events").start()
    t.add_log("kcat qmp.events", kc.log)
    vm = qemu.Qemu(d, "vm1", disk="tmpfs", extra=["-S"]).start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    # session.timeout.ms: the mock makes a member joining after another left wait that long
    extra = ("  - { type: kafka, brokers: \"%s\", properties: { session.timeout.ms: \"6000\" } }\n"
             "commands: { enabled: true, max_size: 1GiB, max_growth: 256MiB }\n" % mock.bootstrap)
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], bridge_id=BRIDGE_ID, stdout_path=False,
                       extra_yaml=extra).start()
    t.add_log("bridge", br.log)

    t.section("the bridge joins the commands group")
    br.wait_log("commands: assigned qmp.commands", "in group " + GROUP, timeout=30)
    t.ok("the bridge's consumer was assigned qmp.commands in group " + GROUP)
    procs.wait_until(lambda: find(kc, lambda e: e["type"] == "qmp.vm.state"), 30, "the snapshot")

    t.section("the VM runs into ENOSPC")
    vm.qmp.cmd("cont")
    procs.wait_until(lambda: find(kc, lambda e: e["type"] == "qmp.vm.stopped"
                                  and e["data"]["reason"] == "io-error"), 30,
                     "qmp.vm.stopped io-error on qmp.events")
    _, err = procs.wait_until(lambda: find(kc, lambda e: e["type"] == "qmp.block.io_error"), 5,
                              "qmp.block.io_error on qmp.events")
    t.ok("orchestrator saw io_error (%s) and stopped (io-error)" % err["data"]["errno"])
    before = [b for b in vm.qmp.cmd("query-block") if b["device"] == "data"][0]
    size0 = before["inserted"]["image"]["virtual-size"]

    t.section("grow the storage, send resize-and-cont")
    vm.grow_tmpfs("256M")
    data = {"device": err["data"]["device"], "grow_by": 64 * MiB}
    other = commands.make("resize-and-cont", "vm1", data)
    cmd = commands.make("resize-and-cont", "vm1", data)
    # one partition: the other bridge's command is read (and skipped) before ours
    kafka.produce(mock.bootstrap, "qmp.commands",
                  [("other-bridge/vm1", json.dumps(other)), (KEY, json.dumps(cmd))], d, partition=0)
    t.ok("produced the other bridge's command %s, then ours %s" % (other["id"], cmd["id"]))

    rec, env = procs.wait_until(
        lambda: find(kc, lambda e: e["type"] == "bridge.command.result"
                     and e["data"]["command_id"] == cmd["id"]), 30, "the result on qmp.events")
    res = env["data"]
    t.expect(rec.key == KEY, "the result is keyed " + KEY, rec.key)
    t.expect(res["command"] == "resize-and-cont", "it is the result of our command", res)
    t.expect(res["status"] == "ok", "status ok", res)
    steps = [(s["execute"], s["status"]) for s in res["steps"]]
    t.expect(steps == [("query-status", "ok"), ("query-block", "ok"), ("block_resize", "ok"),
                       ("cont", "ok"), ("query-status", "ok")], "steps, each ok", steps)
    resize = res["steps"][2]["arguments"]
    t.expect(resize.get("size") == size0 + 64 * MiB, "block_resize to old size + 64 MiB", resize)
    t.expect(res.get("run_state") == "running", "final run state running", res)

    t.section("the stream and QEMU agree")
    evs = sorted(events(kc), key=lambda p: (p[0].partition, p[0].offset))
    t.expect(len({r.partition for r, _ in evs}) == 1, "all of vm1 in one partition",
             {r.partition for r, _ in evs})
    types = [e["type"] for _, e in evs]
    i_err = types.index("qmp.block.io_error")
    i_res = check.first_index([e for _, e in evs], lambda e: e["type"] == "qmp.vm.resumed",
                              start=i_err)
    i_out = [i for i, (_, e) in enumerate(evs) if e["type"] == "bridge.command.result"
             and e["data"]["command_id"] == cmd["id"]][0]
    t.expect(0 <= i_res < i_out, "qmp.vm.resumed comes before the result on vm1's stream",
             summary(evs))
    seqs = [int(e["sequence"]) for _, e in evs]
    t.expect(all(b > a for a, b in zip(seqs, seqs[1:])), "sequence strictly increasing",
             summary(evs))
    after = [b for b in vm.qmp.cmd("query-block") if b["device"] == "data"][0]
    t.expect(after["inserted"]["image"]["virtual-size"] == size0 + 64 * MiB,
             "query-block shows the new size", after["inserted"]["image"]["virtual-size"])
    t.expect(vm.qmp.status()["status"] == "running", "QEMU says running")

    t.section("the other bridge's command and the committed offset")
    t.expect(br.log_lines("keyed 'other-bridge/vm1' is not for this bridge: skipped"),
             "the bridge skipped the command keyed other-bridge/vm1", br.tail(20))
    time.sleep(3)  # a result for it, had it run, would be on its way by now
    stray = [e for _, e in events(kc) if e["type"] == "bridge.command.result"
             and e["data"]["command_id"] == other["id"]]
    t.expect(not stray, "no result for the other bridge's command", stray)
    t.expect(commands_from(mock.bootstrap, d, "beginning") == [0, 1],
             "qmp.commands [0] holds the two commands at offsets 0 and 1")
    procs.wait_until(lambda: commands_from(mock.bootstrap, d, "stored") == [], 20,
                     "the group's committed offset to pass both commands")
    t.ok("group %s committed qmp.commands [0] past both commands" % GROUP)

    t.section("clean shutdown")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    t.expect(br.log_lines("transport kafka: closed, 0 messages undelivered"),
             "transport kafka: 0 messages undelivered", br.tail(8))
