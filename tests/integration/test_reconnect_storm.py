#!/usr/bin/python3
"""Fault 7: 1,000 simulated VMs all disconnect at once and come back: the bridge reconnects
with jittered back-off, never has more than qmp.max_connecting handshakes in flight (no
thundering herd), and resyncs every VM.

One qmp_sim process serves 1,000 QEMU 7.2 monitors; the bridge finds them by directory
discovery. The simulator measures how many sessions were connected but had not yet sent
qmp_capabilities at the same time: that is the bridge's connect concurrency, and it must
stay within max_connecting (32 here) at start-up and during the storm. After SIGUSR1 drops
every session, every VM must publish bridge.vm.disconnected, then connected and a fresh
qmp.vm.state, and every VM's sequence stays contiguous."""
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, sim, streamcheck, util  # noqa: E402

VMS = 1000
MAX_CONNECTING = 32


def count_types(br):
    """Envelopes per (VM, type); a state with connected: false (a session ended) is no snapshot."""
    c = collections.Counter()
    for e in util.read_jsonl(br.events_path):
        c[(e["subject"], e["type"] if e["type"] != "qmp.vm.state" or check.is_snapshot(e)
           else "qmp.vm.state disconnected")] += 1
    return c


def all_have(br, typ, n):
    c = count_types(br)
    return sum(1 for i in range(1, VMS + 1) if c[("vm-%04d" % i, typ)] >= n)


with check.Test("reconnect_storm") as t:
    d = t.workdir
    s = sim.QmpSim(d, VMS).start()
    t.add_log("qmp_sim", s.log)
    br = bridge.Bridge(d, [], bridge_id="storm", log_level="info",
                       qmp_extra={"max_connecting": MAX_CONNECTING, "reconnect_initial": "200ms",
                                  "reconnect_max": "2s"},
                       extra_yaml="discovery: { directory: \"%s\", suffix: \".qmp\" }\n" % s.dir)
    t.add_log("bridge", br.log)
    started = time.monotonic()
    br.start()

    t.section("1,000 VMs connect")
    procs.wait_until(lambda: all_have(br, "qmp.vm.state", 1) == VMS, 120,
                     "a snapshot from every VM", interval=1.0)
    first = time.monotonic() - started
    st = s.stats()
    t.expect(st["pre_caps_max"] <= MAX_CONNECTING,
             "at most %d handshakes at once at start-up" % MAX_CONNECTING, st["pre_caps_max"])
    t.ok("all %d VMs connected and resynced" % VMS, "%.1f s, at most %d handshakes at once"
         % (first, st["pre_caps_max"]))

    t.section("every session dropped at once")
    s.drop_all()
    storm = time.monotonic()
    procs.wait_until(lambda: all_have(br, "qmp.vm.state", 2) == VMS, 180,
                     "a second snapshot from every VM", interval=1.0)
    back = time.monotonic() - storm
    st = s.stats()
    t.expect(st["pre_caps_max_since_drop"] <= MAX_CONNECTING,
             "at most %d handshakes at once during the storm" % MAX_CONNECTING,
             st["pre_caps_max_since_drop"])
    c = count_types(br)
    missing = [n for n in ("vm-%04d" % i for i in range(1, VMS + 1))
               if c[(n, "bridge.vm.disconnected")] < 1 or c[(n, "bridge.vm.connected")] < 2]
    t.expect(not missing, "every VM: disconnected, then connected again", missing[:5])
    rep = streamcheck.check(util.read_jsonl(br.events_path),
                            expect_first={"vm-%04d" % i: 1 for i in range(1, VMS + 1)})
    t.expect(rep.ok(), "every VM's sequence contiguous across the storm", str(rep))
    t.ok("all back and resynced", "%.1f s after the drop, at most %d handshakes at once"
         % (back, st["pre_caps_max_since_drop"]))
    t.expect(br.alive() and s.alive(), "bridge and simulator still running")
    rc = br.stop(timeout=30)
    t.expect(rc == 0, "bridge exits 0", rc)
    print("FIGURES reconnect_storm: vms=%d max_connecting=%d first_connect_s=%.1f storm_recovery_s=%.1f "
          "max_handshakes_start=%d max_handshakes_storm=%d"
          % (VMS, MAX_CONNECTING, first, back, st["pre_caps_max"], st["pre_caps_max_since_drop"]))
