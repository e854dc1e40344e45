#!/usr/bin/python3
"""Fault 3: kill -9 of the bridge in the middle of a stream while Kafka is down; restart;
brokers back: every spooled event is delivered, numbering continues, duplicates only with
identical ids.

Four scripted QMP peers stream events. The Kafka cluster goes down, the bridge spools for a
while, and is killed with SIGKILL mid-stream (no shutdown path runs: no checkpoint, no
flush). A second bridge process starts on the same spool directory: it must recover the
records (its log says how many), continue each VM's sequence where the spool left it, replay
the spool before new events, and, once the brokers are up, deliver it all. The stream
checker then sees, per VM, sequence 1..n without a gap across both processes."""
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers, procs, streamcheck  # noqa: E402

VMS = 4
PER_VM = 52 * 20
BRIDGE_ID = "spool-kill"

with check.Test("spool_kill9") as t:
    d = t.workdir
    spool = os.path.join(d, "spool")
    mock = kafka.KafkaMock(d, brokers=3, topics=[("qmp.events", 4, 3), ("qmp.state", 4, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    events = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="events").start()
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM)
    yaml = ("  - { type: kafka, brokers: \"%s\", queue_max_messages: 100 }\n"
            "spool: { directory: \"%s\", max_size: 64MiB, segment_size: 256KiB, fsync: batch }\n"
            % (mock.bootstrap, spool))
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml=yaml)
    t.add_log("bridge", br.log)
    br.start()

    t.section("stream flows, then Kafka goes down")
    events.wait_count(VMS * 10, timeout=30)
    mock.command("alldown")
    time.sleep(6.0)
    events.read()
    before_kill = len(events.records)
    t.ok("kcat had %d records when the cluster went down" % before_kill)

    t.section("kill -9 mid-stream")
    pid = br.proc.pid
    os.kill(pid, signal.SIGKILL)
    br.proc.wait()
    br.stop()  # reaps; a SIGKILLed run is exempt from the valgrind summary check
    t.ok("bridge pid %d killed with SIGKILL" % pid)
    segs = [f for f in os.listdir(spool) if f.endswith(".seg")]
    t.expect(segs, "segments left on disk", segs)

    t.section("restart on the same spool, brokers still down")
    br2 = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                        extra_yaml=yaml)
    br2.log = os.path.join(d, "bridge2.log")
    t.add_log("bridge (second run)", br2.log)
    br2.start()
    line = br2.wait_log("records", "from earlier runs", timeout=20)
    recovered = int(re.search(r"(\d+) records", line[0]).group(1))
    t.expect(recovered > 0, "second run recovered the spooled records", line[0][24:])
    cont = br2.wait_log("continuing the spooled numbering", timeout=20)
    t.ok("numbering continues from the spool", cont[0][24:])
    time.sleep(3.0)
    mock.command("allup")
    t.ok("brokers up")

    t.section("everything delivered")

    def complete():
        events.read()
        envs = [kafka.structured_envelope(r, BRIDGE_ID) for r in events.records]
        rep = streamcheck.check(envs, expect_first={n: 1 for n, _ in vms})
        done = all(rep.vms.get(n, {}).get("last", 0) >= PER_VM for n, _ in vms)
        return rep if done and rep.ok() else None
    try:
        procs.wait_until(complete, 120, "every VM's stream to reach its last events")
    except TimeoutError:
        pass
    time.sleep(2.0)
    events.read()
    envs = [kafka.structured_envelope(r, BRIDGE_ID) for r in events.records]
    rep = streamcheck.check(envs, expect_first={n: 1 for n, _ in vms})
    t.expect(rep.ok(), "stream check across the kill: contiguous, ordered, duplicates identical",
             str(rep))
    for n, _ in vms:
        t.expect(rep.vms.get(n, {}).get("last", 0) >= PER_VM,
                 "%s: stream reaches sequence %d or more" % (n, PER_VM), rep.vms.get(n))
    rc = br2.stop()
    t.expect(rc == 0, "second bridge exits 0", rc)
    print("FIGURES spool_kill9: vms=%d qmp_events_sent=%d records_recovered_after_kill=%d "
          "delivered=%d unique=%d duplicates=%d"
          % (VMS, VMS * PER_VM, recovered, rep.delivered, rep.unique, rep.duplicates))
