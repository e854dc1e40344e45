#!/usr/bin/python3
"""The spool's byte bound with on_full: drop_oldest: a Kafka outage longer than the spool
can hold costs the oldest events, and only those; each loss is logged per VM with the range
of sequences, and the bridge keeps reading (no back-pressure).

The spool is 1 MiB (segments of 64 KiB), Kafka is down from the start, three scripted QMP
peers stream events. Once the spool has dropped segments, Kafka comes back: the stream must
hold every event that was not in a logged drop range, in order, and the newest events of
every VM (the ones after the drops) must all be there."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers, procs, streamcheck  # noqa: E402

VMS = 3
PER_VM = 2000
BRIDGE_ID = "spool-drop"

with check.Test("spool_drop_oldest") as t:
    d = t.workdir
    spool = os.path.join(d, "spool")
    mock = kafka.KafkaMock(d, brokers=1, topics=[("qmp.events", 2, 1), ("qmp.state", 2, 1)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    mock.command("alldown")
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM, interval=0.003)
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: kafka, brokers: \"%s\", queue_max_messages: 100 }\n"
                                  "spool: { directory: \"%s\", max_size: 1MiB, segment_size: 64KiB,"
                                  " on_full: drop_oldest }\n" % (mock.bootstrap, spool))
    t.add_log("bridge", br.log)
    br.start()

    t.section("the outage outgrows the spool")
    line = br.wait_log("spool full: dropped", timeout=60)
    t.ok("drops are logged with the VM and the sequence range", line[0][24:])
    procs.wait_until(lambda: len(br.log_lines("spool full: dropped")) >= 2 * VMS, 60,
                     "several segments dropped")
    sizes = sum(os.path.getsize(os.path.join(spool, f)) for f in os.listdir(spool)
                if f.endswith(".seg"))
    t.expect(sizes <= 1024 * 1024 + 64 * 1024, "spool stays within its bound", sizes)
    t.expect(not br.log_lines("pausing reading from"), "QMP reads never paused")

    t.section("Kafka back: the rest is delivered")
    mock.command("allup")
    events = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="events").start()

    def complete():
        events.read()
        envs = [kafka.structured_envelope(r, BRIDGE_ID) for r in events.records]
        rep = streamcheck.check(envs)
        return envs if all(rep.vms.get(n, {}).get("last", 0) >= PER_VM + 2 for n, _ in vms) \
            else None
    envs = procs.wait_until(complete, 120, "every VM's stream to reach its end", interval=0.5)
    dropped = {}
    for l in br.log_lines("spool full: dropped"):
        m = re.search(r"dropped (\d+) records of (\S+) \(sequence (\d+)\.\.(\d+)\)", l)
        dropped.setdefault(m.group(2), []).append((int(m.group(3)), int(m.group(4))))
    got = {(e["subject"], int(e["sequence"])) for e in envs}
    unexplained, lost = [], 0
    for n, _ in vms:
        for s in range(1, PER_VM + 3):
            if (n, s) in got:
                continue
            lost += 1
            if not any(a <= s <= b for a, b in dropped.get(n, [])):
                unexplained.append((n, s))
    t.expect(lost > 0, "the outage really cost events", lost)
    t.expect(not unexplained, "every missing sequence is in a logged drop range", unexplained[:10])
    rep = streamcheck.check(envs)
    t.expect(not [p for p in rep.problems if "missing" not in p], "order kept, duplicates identical",
             rep.problems[:5])
    for n, _ in vms:
        tail = [s for s in range(PER_VM - 200, PER_VM + 3) if (n, s) not in got]
        t.expect(not tail, "%s: its newest 200 events all delivered" % n, tail[:5])
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
    print("FIGURES spool_drop_oldest: vms=%d qmp_events_sent=%d delivered=%d lost_in_logged_drops=%d"
          % (VMS, VMS * PER_VM, len(envs), lost))
