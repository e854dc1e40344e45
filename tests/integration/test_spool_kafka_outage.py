#!/usr/bin/python3
"""Fault 1: the whole Kafka cluster is down for 30 s under a steady event load; with the
spool on, the bridge keeps reading from QEMU (no back-pressure needed), spools everything,
and once the brokers are back every event reaches Kafka: per VM the sequence is contiguous
from 1, in order, and any duplicate carries the same id.

Six scripted QMP peers stream events (about 300 events/s in all). The Kafka transport's
memory window is small (queue_max_messages 200), so the outage's events can only come
from the spool on disk: the log must show the transport reading from the spool, and the
spool's size must shrink back once everything is confirmed."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers, streamcheck  # noqa: E402

VMS = 6
PER_VM = 52 * 40      # ~42 s of events per VM at 50 events/s: spans the outage
OUTAGE = 30.0
BRIDGE_ID = "spool-k"


def spool_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".seg"))


with check.Test("spool_kafka_outage") as t:
    d = t.workdir
    spool = os.path.join(d, "spool")
    mock = kafka.KafkaMock(d, brokers=3, topics=[("qmp.events", 4, 3), ("qmp.state", 4, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    events = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="events").start()
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM)
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: kafka, brokers: \"%s\", queue_max_messages: 200 }\n"
                                  "spool: { directory: \"%s\", max_size: 256MiB, "
                                  "segment_size: 1MiB, fsync: batch }\n" % (mock.bootstrap, spool))
    t.add_log("bridge", br.log)
    started = time.monotonic()
    br.start()

    t.section("stream flows")
    events.wait_count(VMS * 20, timeout=30)
    t.ok("kcat sees the stream", len(events.records))

    t.section("every broker down for %.0f s under load" % OUTAGE)
    mock.command("alldown")
    time.sleep(OUTAGE)
    t.expect(br.alive(), "bridge still running")
    t.expect(not br.log_lines("pausing reading from"), "QMP reads never paused: the spool absorbs it",
             br.log_lines("pausing reading from")[:2])
    peak = spool_bytes(spool)
    t.expect(peak > 100 * 1024, "the outage's events are on disk", "%d bytes in segments" % peak)
    mock.command("allup")
    t.ok("brokers up again", "spool held %d bytes" % peak)

    t.section("recovery")
    expected_min = VMS * (PER_VM + 2)   # connected + snapshot + every QMP event
    events.wait_count(expected_min, timeout=120)
    time.sleep(2.0)
    events.read()
    envs = [kafka.structured_envelope(r, BRIDGE_ID) for r in events.records]
    rep = streamcheck.check(envs, expect_first={n: 1 for n, _ in vms},
                            expect_counts={n: PER_VM + 2 for n, _ in vms})
    t.expect(rep.ok(), "stream check: every VM 1..n contiguous, ordered, duplicates identical",
             str(rep))
    t.expect(br.log_lines("reading from the spool") or br.log_lines("lagging"),
             "the Kafka transport fell behind and was fed from the spool")

    def drained():
        return spool_bytes(spool) < peak / 4
    try:
        bridge.procs.wait_until(drained, 30, "confirmed segments to be deleted")
        t.ok("confirmed segments deleted", "%d -> %d bytes" % (peak, spool_bytes(spool)))
    except TimeoutError:
        t.expect(False, "confirmed segments deleted", "%d -> %d bytes" % (peak, spool_bytes(spool)))
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
    print("FIGURES spool_kafka_outage: vms=%d qmp_events_sent=%d envelopes_expected>=%d "
          "delivered=%d unique=%d duplicates=%d outage=%.0fs spool_peak_bytes=%d seconds=%.1f"
          % (VMS, VMS * PER_VM, expected_min, rep.delivered, rep.unique, rep.duplicates, OUTAGE,
             peak, time.monotonic() - started))
