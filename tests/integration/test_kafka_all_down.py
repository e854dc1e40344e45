#!/usr/bin/python3
"""The whole Kafka cluster goes away for 10 s: bounded hold, then everything.

Six scripted QMP peers stream events steadily into the bridge, whose Kafka
transport has a small queue (queue_max_messages 200, on_full backpressure).
Once the stream flows, every broker of the mock cluster goes down ("alldown")
for 10 s. The bridge must hold what it has without growing past its bound:
its log shows back-pressure (QMP reads paused, queue depth at most 200) and
no drop. After "allup" it must resume reading, and kcat must get every event
of every VM (sequence 1..n, no gap, strictly increasing per VM in one
partition; repeats identical) and, on qmp.state, each VM's last message must
be its latest state: the one its final RESUME produced, running."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, peers, procs  # noqa: E402

VMS = 6
PER_VM = 52 * 16      # 16 rounds of 50 RTC_CHANGE + STOP + RESUME: each stream ends on RESUME
PARTITIONS = 4
QUEUE = 200
BRIDGE_ID = "ad-host"
OUTAGE = 10.0

with check.Test("kafka_all_down") as t:
    d = t.workdir
    mock = kafka.KafkaMock(d, brokers=3, topics=[("qmp.events", PARTITIONS, 3),
                                                 ("qmp.state", PARTITIONS, 3)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    events = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="events").start()
    states = kafka.KcatConsumer(mock.bootstrap, "qmp.state", d, name="state").start()
    t.add_log("kcat events", events.log)
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM)
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: kafka, brokers: \"%s\", queue_max_messages: %d, "
                                  "on_full: backpressure }\n" % (mock.bootstrap, QUEUE))
    t.add_log("bridge", br.log)
    started = time.monotonic()
    br.start()

    t.section("stream flows")
    events.wait_count(VMS * 50, timeout=30)
    t.ok("kcat sees the stream", len(events.records))

    t.section("all brokers down for %.0fs" % OUTAGE)
    mock.command("alldown")
    br.wait_log("pausing QMP reads", timeout=OUTAGE)
    br.wait_log("pausing reading from", timeout=OUTAGE)
    t.ok("bridge paused QMP reads under back-pressure", br.log_lines("pausing QMP reads")[0][24:])
    time.sleep(OUTAGE / 2)
    events.read()
    held_from = len(events.records)
    time.sleep(OUTAGE / 2)
    events.read()
    t.expect(len(events.records) == held_from, "nothing consumed in the second half of the outage",
             len(events.records) - held_from)
    depths = [int(m.group(1)) for l in br.log_lines("pausing QMP reads")
              for m in [re.search(r"queue at (\d+) messages", l)] if m]
    t.expect(depths and max(depths) <= QUEUE, "queue depth when pausing stayed within %d" % QUEUE,
             depths)
    t.expect(not br.log_lines("dropped"), "nothing dropped while the cluster is down",
             br.log_lines("dropped")[:3])
    t.expect(br.alive(), "bridge still running")
    mock.command("allup")
    t.ok("all brokers up again")

    t.section("recovery")
    br.wait_log("resuming reading from", timeout=60)
    t.ok("bridge resumed QMP reads", br.log_lines("resuming QMP reads")[-1][24:])
    expected = VMS * (PER_VM + 2)
    events.wait_count(expected, timeout=60)
    seconds = time.monotonic() - started
    keys = {"%s/%s" % (BRIDGE_ID, n) for n, _ in vms}
    last_resume = {}

    def states_settled():
        states.read()
        for r in states.records:
            kafka.structured_envelope(r, BRIDGE_ID)
        last = {}
        for r in sorted(states.records, key=lambda r: (r.partition, r.offset)):
            last[r.key] = r.json()
        return all(k in last and last[k]["id"] == last_resume.get(k, "?") + ".state" for k in keys)

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
        last = ks.envelopes[-1]
        if last["type"] != "qmp.vm.resumed":
            raise check.CheckFailed("%s: last event is %s, not the final RESUME" % (key, last))
        last_resume[key] = last["id"]
    t.ok("every VM: sequence 1..%d, no gap (nothing lost), in order, ending on qmp.vm.resumed"
         % (PER_VM + 2))

    t.section("state topic")
    try:
        procs.wait_until(states_settled, 30, "each VM's last state message to be its final one")
    except TimeoutError:
        pass  # the checks below say what is wrong
    sstats = kafka.analyse_keys(states.records)
    t.expect(set(sstats) == keys, "every VM has state messages", sorted(sstats))
    for key, ks in sorted(sstats.items()):
        last = ks.envelopes[-1]
        if last["id"] != last_resume[key] + ".state" or last["data"]["run_state"] != "running" \
                or last["data"]["running"] is not True:
            raise check.CheckFailed("%s: last state message is %s %s, expected %s.state running"
                                    % (key, last["id"], last["data"], last_resume[key]))
    t.ok("qmp.state ends, for every VM, with the state of its final RESUME: running")

    duplicates = sum(ks.duplicates for ks in stats.values())
    pauses = len(br.log_lines("pausing QMP reads"))
    links = (len(br.log_lines("link down")), len(br.log_lines("link up again")))
    t.expect(not br.log_lines("dropped"), "bridge log reports no drop")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    t.expect(br.log_lines("transport kafka: closed, 0 messages undelivered"),
             "bridge logged 0 messages undelivered", br.tail(5))
    print("FIGURES kafka_all_down: vms=%d events_sent=%d (QMP) envelopes_expected=%d delivered=%d "
          "duplicates=%d state_messages=%d queue_max_messages=%d max_depth_logged=%d "
          "backpressure_pauses=%d link_down/up_lines=%d/%d outage=%.0fs seconds=%.1f" % (
              VMS, VMS * PER_VM, expected, sum(len(k.envelopes) for k in stats.values()),
              duplicates, sum(len(k.envelopes) for k in sstats.values()), QUEUE, max(depths),
              pauses, links[0], links[1], OUTAGE, seconds))
