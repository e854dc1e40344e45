#!/usr/bin/python3
"""State-topic updates are coalesced per loop turn, and none that matters is lost.

Two QMP peers (tests/tools/qmp_peer.py) behind one bridge publishing to mosquitto
at QoS 1; mosquitto_sub records every message. Each peer sends cycles of
BLOCK_IO_ERROR (virtio0, nospace, stop), STOP, RESUME: every event changes the
VM's state.

- burst (vm-burst): 450 events in one write, so they reach the bridge in a few
  large reads. The event topics carry all 450, in sequence; the state topic a
  handful of updates (one per loop turn that brought its events, where it used
  to be one per event), in increasing sequence, each with the sequence of a
  state-changing event, the last one the state after the last event (running,
  io_status ok) with that event's sequence.
- trickle (vm-trickle): 9 events, one every 0.2 s: each arrives alone, so each
  gets its own update, and again the last is the state after the last event.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
BURST = 450
TRICKLE = 9
QMP_TYPES = ("qmp.block.io_error", "qmp.vm.stopped", "qmp.vm.resumed")


def envelopes(sub, vm, state):
    """vm's envelopes on its state topic (state True) or its event topics."""
    sub.poll()
    out = []
    for m in sub.messages:
        parts = m.topic.split("/")
        if m.json is not None and len(parts) >= 4 and parts[2] == vm \
                and (parts[3] == "state") == state:
            out.append(m.json)
    return out


def check_vm(t, sub, vm, n, max_updates, min_updates):
    t.section("%s: %d events" % (vm, n))
    evs = procs.wait_until(
        lambda: (lambda e: e if len([x for x in e if x["type"] in QMP_TYPES]) >= n else None)(
            envelopes(sub, vm, False)), 60, "%s: %d QMP events" % (vm, n))
    qmp_evs = [e for e in evs if e["type"] in QMP_TYPES]
    t.expect(len(qmp_evs) == n, "all %d QMP events on the event topics" % n, len(qmp_evs))
    t.expect([e["type"] for e in qmp_evs[:3]] == list(QMP_TYPES),
             "each cycle: io_error, stopped, resumed", [e["type"] for e in qmp_evs[:3]])
    seqs = [int(e["sequence"]) for e in evs]
    t.expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "event sequences consecutive",
             seqs[:8])
    last = qmp_evs[-1]
    # the update for the last event is due in the loop turn that published it
    states = procs.wait_until(
        lambda: (lambda s: s if s and s[-1]["id"] == last["id"] + ".state" else None)(
            envelopes(sub, vm, True)), 30, "%s: the state update of its last event" % vm)
    updates = [s for s in states if s["id"].endswith(".state")]
    t.expect(min_updates <= len(updates) <= max_updates,
             "%d state updates for %d events (want %d..%d)"
             % (len(updates), n, min_updates, max_updates), len(updates))
    useqs = [int(s["sequence"]) for s in updates]
    t.expect(useqs == sorted(set(useqs)), "updates in increasing sequence", useqs[:20])
    by_seq = {int(e["sequence"]): e for e in evs}
    t.expect(all(s in by_seq and by_seq[s]["type"] in QMP_TYPES for s in useqs),
             "each update carries the sequence of a state-changing event", useqs[:20])
    final = updates[-1]["data"]
    t.expect(last["type"] == "qmp.vm.resumed" and final["run_state"] == "running"
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
    check_vm(t, sub, "vm-trickle", TRICKLE, max_updates=TRICKLE, min_updates=TRICKLE)
    br.stop()
