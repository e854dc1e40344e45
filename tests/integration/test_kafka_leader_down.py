#!/usr/bin/python3
"""The leader of a busy partition goes away for 10 s: nothing lost, order kept.

Eight scripted QMP peers stream events steadily into the bridge's Kafka
transport (mock cluster: 3 brokers, qmp.events with 6 partitions). Once the
stream flows, the broker leading the partition that carries the most VMs is
taken down ("down <id>": connections closed and refused, leadership does not
move) for 10 s and brought back. Afterwards kcat must have every event of
every VM: sequences 1..n without a gap, strictly increasing within the VM's
one partition; a record seen twice must be identical (same id and payload).
The idempotent producer should make that zero; the count is printed."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers, procs  # noqa: E402

VMS = 8
PER_VM = 1000         # at 0.02 s apart: a stream of about 20-25 s
PARTITIONS = 6
TOPIC = "qmp.events"
BRIDGE_ID = "ld-host"
OUTAGE = 10.0

with check.Test("kafka_leader_down") as t:
    d = t.workdir
    mock = kafka.KafkaMock(d, brokers=3, topics=[(TOPIC, PARTITIONS, 3), ("qmp.state", PARTITIONS, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    events = kafka.KcatConsumer(mock.bootstrap, TOPIC, d, name="events").start()
    t.add_log("kcat events", events.log)
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM)
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: kafka, brokers: \"%s\" }\n" % mock.bootstrap)
    t.add_log("bridge", br.log)
    started = time.monotonic()
    br.start()

    t.section("stream flows")
    keys = {"%s/%s" % (BRIDGE_ID, n) for n, _ in vms}
    events.wait_count(VMS * 50, timeout=30)
    procs.wait_until(lambda: events.read() is not None and {r.key for r in events.records} >= keys,
                     30, "records of all %d VMs" % VMS)
    part_of = {}
    for r in events.records:
        part_of.setdefault(r.key, r.partition)
    by_part = {}
    for key, p in part_of.items():
        by_part.setdefault(p, []).append(key)
    victim_part = max(by_part, key=lambda p: len(by_part[p]))
    leader = kafka.partition_leader(mock.bootstrap, TOPIC, victim_part)
    led = [p for p in range(PARTITIONS) if kafka.partition_leader(mock.bootstrap, TOPIC, p) == leader]
    hit = sorted(k for k in part_of if part_of[k] in led)
    spared = sorted(k for k in part_of if part_of[k] not in led)
    t.ok("partition %d carries %d VMs; its leader is broker %d, which leads partitions %s "
         "(VMs %s)" % (victim_part, len(by_part[victim_part]), leader, led, hit))

    t.section("broker %d down for %.0fs" % (leader, OUTAGE))
    events.read()
    before = len(events.records)
    mock.command("down %d" % leader)
    time.sleep(OUTAGE / 2)  # what was fetched before the outage has surely arrived by now
    events.read()
    mid = len(events.records)
    time.sleep(OUTAGE / 2)
    events.read()
    during = events.records[before:]
    stalled = [r for r in events.records[mid:] if r.key in hit]
    mock.command("up %d" % leader)
    t.ok("broker %d up again" % leader)
    t.expect(not stalled, "nothing of the VMs on broker %d's partitions arrived in the second "
             "half of the outage (the outage is real)" % leader, stalled[:3])
    if spared:
        t.expect(any(r.key in spared for r in during),
                 "VMs on other brokers' partitions kept flowing during the outage",
                 len([r for r in during if r.key in spared]))

    t.section("everything arrives")
    expected = VMS * (PER_VM + 2)
    events.wait_count(expected, timeout=60)
    seconds = time.monotonic() - started
    time.sleep(2.0)  # late duplicates, if any
    events.read()
    stats = kafka.analyse_keys(events.records)
    t.ok("all %d records valid, keyed, with ce_ headers; each VM in one partition, first "
         "occurrences strictly increasing; repeats identical" % len(events.records))
    t.expect(set(stats) == keys, "records for exactly the %d VMs" % VMS, sorted(stats))
    for key, ks in sorted(stats.items()):
        if ks.sequences != list(range(1, PER_VM + 3)):
            raise check.CheckFailed("%s: sequences are not 1..%d: %d of them, gaps %s" % (
                key, PER_VM + 2, len(ks.sequences),
                [(a, b) for a, b in zip(ks.sequences, ks.sequences[1:]) if b != a + 1][:5]))
    t.ok("every VM: sequence 1..%d, no gap (nothing lost), in order" % (PER_VM + 2))
    duplicates = sum(ks.duplicates for ks in stats.values())
    dup_hit = sum(stats[k].duplicates for k in hit)
    t.expect(not br.log_lines("dropped"), "bridge log reports no drop", br.log_lines("dropped")[:3])
    retries = len(br.log_lines("will retry"))
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    t.expect(br.log_lines("transport kafka: closed, 0 messages undelivered"),
             "bridge logged 0 messages undelivered", br.tail(5))
    print("FIGURES kafka_leader_down: vms=%d (on the down broker: %d) events_sent=%d (QMP) "
          "envelopes_expected=%d delivered=%d duplicates=%d (on the down broker's VMs: %d) "
          "failed_delivery_reports=%d outage=%.0fs records_during_outage=%d seconds=%.1f" % (
              VMS, len(hit), VMS * PER_VM, expected, sum(len(k.envelopes) for k in stats.values()),
              duplicates, dup_hit, retries, OUTAGE, len(during), seconds))
