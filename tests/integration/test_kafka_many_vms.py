#!/usr/bin/python3
"""Twenty VMs into a three-broker Kafka cluster: nothing lost, order per VM.

Twenty scripted QMP peers (tests/tools/qmp_peer.py, events mode) send 500
QMP events each (RTC_CHANGE, with a STOP/RESUME pair every 50) to one bridge
whose Kafka transport publishes into a mock cluster (3 brokers, qmp.events and
qmp.state with 6 partitions each). kcat, independent of our code, consumes
both topics; every record is checked (schema, key, ce_ headers). Per VM: all
500 events plus the connect pair arrive, with sequences 1..502 strictly
increasing within the VM's single partition, and each RTC_CHANGE offset the
peer sent shows up exactly once. Prints sent/delivered/duplicates/seconds."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers  # noqa: E402

VMS = 20
PER_VM = 500          # QMP events each peer sends
PARTITIONS = 6
BRIDGE_ID = "load-host"

with check.Test("kafka_many_vms") as t:
    d = t.workdir
    mock = kafka.KafkaMock(d, brokers=3, topics=[("qmp.events", PARTITIONS, 3),
                                                 ("qmp.state", PARTITIONS, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    events = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="events").start()
    states = kafka.KcatConsumer(mock.bootstrap, "qmp.state", d, name="state").start()
    t.add_log("kcat events", events.log)

    vms = peers.start_event_peers(d, ["vm%02d" % i for i in range(VMS)], PER_VM)
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: kafka, brokers: \"%s\" }\n" % mock.bootstrap)
    t.add_log("bridge", br.log)

    t.section("stream %d VMs x %d events" % (VMS, PER_VM))
    started = time.monotonic()
    br.start()
    expected = VMS * (PER_VM + 2)  # + bridge.vm.connected and the qmp.vm.state snapshot
    events.wait_count(expected, timeout=90)
    seconds = time.monotonic() - started
    t.ok("kcat consumed %d records from qmp.events" % expected, "%.1fs" % seconds)
    time.sleep(2.0)  # late duplicates, if any, get the chance to show up
    events.read()
    states.read()

    t.section("every record, every VM")
    stats = kafka.analyse_keys(events.records)
    t.ok("all %d records valid envelopes, keyed by partitionkey, with the ce_ headers; "
         "each key in one partition, sequence strictly increasing there" % len(events.records))
    keys = {"%s/%s" % (BRIDGE_ID, n) for n, _ in vms}
    t.expect(set(stats) == keys, "records for exactly the 20 VMs", sorted(stats))
    for name, _ in vms:
        ks = stats["%s/%s" % (BRIDGE_ID, name)]
        envs = ks.envelopes
        if ks.sequences != list(range(1, PER_VM + 3)):
            raise check.CheckFailed("%s: sequences are not 1..%d: %d of them, first gaps %s" % (
                name, PER_VM + 2, len(envs),
                [(a, b) for a, b in zip(ks.sequences, ks.sequences[1:]) if b != a + 1][:5]))
        if [e["type"] for e in envs[:2]] != ["bridge.vm.connected", "qmp.vm.state"]:
            raise check.CheckFailed("%s starts with %s" % (name, [e["type"] for e in envs[:2]]))
        qmp = [e for e in envs[2:] if e["type"].startswith("qmp.")]
        if len(qmp) != PER_VM:
            raise check.CheckFailed("%s: %d qmp.* events, expected %d" % (name, len(qmp), PER_VM))
        rtc = [e["data"]["data"] for e in qmp if e["type"] == "qmp.event"]
        if ([r["offset"] for r in rtc] != list(range(1, len(rtc) + 1))
                or any(name not in r["qom-path"] for r in rtc)):
            raise check.CheckFailed("%s: RTC_CHANGE payloads out of order or from another peer"
                                    % name)
    t.ok("each VM: connected, snapshot, then its own %d events with sequence 1..%d and "
         "RTC_CHANGE offsets 1..n in order" % (PER_VM, PER_VM + 2))
    parts = {}
    for ks in stats.values():
        parts.setdefault(next(iter(ks.partitions)), []).append(ks.key)
    t.expect(len(parts) > 1, "the VMs are spread over several partitions",
             {p: len(k) for p, k in sorted(parts.items())})
    duplicates = sum(ks.duplicates for ks in stats.values())
    delivered = sum(len(ks.envelopes) for ks in stats.values())

    t.section("state topic")
    sstats = kafka.analyse_keys(states.records)
    t.expect(set(sstats) == keys, "every VM has state messages on qmp.state", len(sstats))
    for key, ks in sstats.items():
        ev = {e["sequence"]: e for e in stats[key].envelopes}
        for s in ks.envelopes:
            if s["type"] != "qmp.vm.state" or s["sequence"] not in ev:
                raise check.CheckFailed("%s: state message %s repeats no event sequence" % (key, s["id"]))
        last = ks.envelopes[-1]
        if last["data"]["run_state"] != "running":
            raise check.CheckFailed("%s: last state says %s" % (key, last["data"]))
    t.ok("state messages valid, each repeating an event's sequence, last says running",
         sum(len(k.envelopes) for k in sstats.values()))

    t.section("shutdown")
    t.expect(not br.log_lines("dropped"), "bridge log reports no drop", br.log_lines("dropped")[:3])
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    t.expect(br.log_lines("transport kafka: closed, 0 messages undelivered"),
             "bridge logged 0 messages undelivered", br.tail(5))
    print("FIGURES kafka_many_vms: vms=%d partitions=%d events_sent=%d (QMP) envelopes_expected=%d "
          "delivered=%d duplicates=%d state_messages=%d seconds=%.1f" % (
              VMS, PARTITIONS, VMS * PER_VM, expected, delivered, duplicates,
              sum(len(k.envelopes) for k in sstats.values()), seconds))
