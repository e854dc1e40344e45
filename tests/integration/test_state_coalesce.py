#!/usr/bin/python3
"""State-topic updates are coalesced per loop turn, none that matters is lost,
and none goes back behind an event already sent.

Two QMP peers (tests/tools/qmp_peer.py) behind one bridge publishing to mosquitto
at QoS 1; mosquitto_sub records every message in arrival order. Each peer sends
cycles of BLOCK_IO_ERROR (virtio0, nospace, stop), STOP, RESUME, RTC_CHANGE: the
first three change the VM's state, RTC_CHANGE does not.

- burst (vm-burst): 452 events in one write, so they reach the bridge in a few
  large reads. The event topics carry all 452, in sequence; the state topic a
  handful of updates (one per loop turn that changed the state, where it used
  to be one per state-changing event). Each update carries the sequence of the
  VM's latest event when it was sent, so in arrival order an update never has
  a lower sequence than an event before it (it used to carry the sequence of
  the last state-changing event: a RESUME's, after the RTC_CHANGE that
  followed it in the same read). The last update shows the state after the
  last event (running, io_status ok).
- trickle (vm-trickle): 12 events, one every 0.2 s: each arrives alone, so each
  state-changing one gets its own update (9) and an RTC_CHANGE none.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
BURST = 452  # 113 cycles: ends with RTC_CHANGE
TRICKLE = 12
QMP_TYPES = ("qmp.block.io_error", "qmp.vm.stopped", "qmp.vm.resumed", "qmp.event")
CHANGING = QMP_TYPES[:3]


def arrivals(sub, vm):
    """vm's envelopes on its state and event topics in arrival order, each id
    once (QoS 1 may redeliver), as (on_state_topic, envelope)."""
    sub.poll()
    out, seen = [], set()
    for m in sub.messages:
        parts = m.topic.split("/")
        if m.json is None or len(parts) < 4 or parts[2] != vm or m.json["id"] in seen:
            continue
        seen.add(m.json["id"])
        out.append((parts[3] == "state", m.json))
    return out


def check_vm(t, sub, vm, n, max_updates, min_updates):
    t.section("%s: %d events" % (vm, n))
    got = procs.wait_until(
        lambda: (lambda a: a if len([e for st, e in a if not st and e["type"] in QMP_TYPES]) >= n
                 else None)(arrivals(sub, vm)), 60, "%s: %d QMP events" % (vm, n))
    evs = [e for st, e in got if not st]
    qmp_evs = [e for e in evs if e["type"] in QMP_TYPES]
    t.expect(len(qmp_evs) == n, "all %d QMP events on the event topics" % n, len(qmp_evs))
    t.expect([e["type"] for e in qmp_evs[:4]] == list(QMP_TYPES),
             "each cycle: io_error, stopped, resumed, RTC_CHANGE", [e["type"] for e in qmp_evs[:4]])
    seqs = [int(e["sequence"]) for e in evs]
    t.expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "event sequences consecutive",
             seqs[:8])
    last_change = int([e for e in qmp_evs if e["type"] in CHANGING][-1]["sequence"])
    # the update for the last state change is due in the loop turn that published it
    got = procs.wait_until(
        lambda: (lambda a: a if [e for st, e in a if st and int(e["sequence"]) >= last_change]
                 else None)(arrivals(sub, vm)), 30, "%s: the state update of its last change" % vm)
    updates = [e for st, e in got if st and e["id"].endswith(".state")]
    t.expect(min_updates <= len(updates) <= max_updates,
             "%d state updates for %d events (want %d..%d)"
             % (len(updates), n, min_updates, max_updates), len(updates))
    useqs = [int(s["sequence"]) for s in updates]
    t.expect(useqs == sorted(set(useqs)), "updates in increasing sequence", useqs[:20])
    behind, newest = [], 0
    for st, e in got:
        s = int(e["sequence"])
        if st and s < newest:
            behind.append("update %d after event %d" % (s, newest))
        newest = max(newest, s) if not st else newest
    t.expect(not behind, "no update has a lower sequence than an event that arrived before it",
             behind[:5])
    by_seq = {int(e["sequence"]): e for e in evs}
    t.expect(all(s in by_seq for s in useqs), "each update carries the sequence of a published event",
             [s for s in useqs if s not in by_seq][:5])
    final = updates[-1]["data"]
    t.expect(useqs[-1] >= last_change and final["run_state"] == "running"
             and final["running"] is True
             and [dk.get("io_status") for dk in final["disks"]] == ["ok"],
             "the last update is the state after the last event: running, virtio0 ok", final)


with check.Test("state_coalesce") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker, topic="qmp/#").start()
    vms = []
    for name, mode, extra in (("vm-burst", "burst", []),
                              ("vm-trickle", "trickle", ["--interval", "0.2"])):
        sock = os.path.join(d, name + ".qmp")
        log = os.path.join(d, name + ".log")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", mode, "--count",
                     str(BURST if mode == "burst" else TRICKLE)] + extra, "qmp_peer", stderr=log)
        t.add_log(name, log)
        procs.wait_until(lambda: os.path.exists(sock), 10, "%s socket" % name)
        vms.append((name, sock))
    br = bridge.Bridge(d, vms, broker=broker, stdout_path=False, log_level="info").start()
    t.add_log("bridge", br.log)

    check_vm(t, sub, "vm-burst", BURST, max_updates=BURST // 20, min_updates=1)
    check_vm(t, sub, "vm-trickle", TRICKLE, max_updates=TRICKLE * 3 // 4, min_updates=TRICKLE * 3 // 4)
    br.stop()
