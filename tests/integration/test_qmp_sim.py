#!/usr/bin/python3
"""test_qmp_sim.py - the QMP simulator (tests/tools/qmp_sim) is a QEMU the bridge believes.

Load and storm tests run one qmp_sim instead of thousands of QEMUs, so this test proves the
simulator against the real bridge before anyone trusts figures made with it:

1. 50 simulated VMs, each scripted to send BLOCK_IO_ERROR (nospace) + STOP, RESUME,
   BLOCK_JOB_ERROR and COLO_EXIT. The bridge (static VM list, stdout transport) publishes for
   every VM bridge.vm.connected, a qmp.vm.state snapshot, and exactly those five events, in
   order and normalised as for a real QEMU (enospc / nospace true, stopped with reason
   io-error). Each event's envelope time is the send stamp qmp_sim recorded in its trace: the
   latency a benchmark computes from it is real.
2. drop_all() (SIGUSR1) closes every session at once: every VM reconnects and is resynced (a
   second bridge.vm.connected and snapshot each), nothing is replayed, and the stats file
   counts two sessions per VM and the commands the bridge sent. The --handshake-log has
   one +1 and one -1 per session, and replaying it gives the stats' peak; the benchmark's
   merge of several such logs (handshake_peaks) finds the true peak of overlapping
   simulators, not the sum of their peaks.
3. Without the bridge, straight on one socket: the greeting, capabilities negotiation,
   commands in one write and split across writes, replies echoing any id, stop/cont with
   their events, block_resize visible in query-block, unknown commands, all in QEMU 7.2's
   exact shapes; SIGTERM exits 0 and removes the sockets.
4. Rate mode spreads VMs over the period (--phase spread, the default): 10 VMs at one step
   per second take their first step at different points of that second instead of all in the
   same 10 ms tick (which made a benchmark's steady load one burst per period); --phase
   aligned keeps the bursts on request, and an unknown --phase is refused.
5. --start-ready N holds every script until N sessions are negotiated at once (the
   benchmark's flat-out windows then start with the whole fleet in): two of three VMs
   negotiated get nothing, and the third's negotiation starts all three. --start-ready above
   --vms is refused.
"""
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, procs, util  # noqa: E402
from qbtest.bridge import Bridge  # noqa: E402
from qbtest.check import Test  # noqa: E402
from qbtest.sim import QmpSim  # noqa: E402

NVMS = 50
MIX = "io_error,resume,job_error,colo_exit"
EXPECTED = ["qmp.block.io_error", "qmp.vm.stopped", "qmp.vm.resumed", "qmp.block.job_error",
            "qmp.colo.exit"]


def by_vm(events):
    out = {}
    for e in events:
        out.setdefault(e.get("subject"), []).append(e)
    return out


def qmp_time(ts):
    """The envelope time the bridge must derive from a QMP timestamp."""
    t = datetime.fromtimestamp(ts["seconds"], tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + ".%06dZ" % ts["microseconds"]


def snapshots(evs):
    # The snapshot may be written once per message kind; its sequence tells copies apart.
    return sorted({e["sequence"] for e in evs if check.is_snapshot(e)})


class Raw:
    """A bare socket speaking QMP lines, for checks the helper client would hide."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.settimeout(10)
        self.buf = b""

    def lines(self, n):
        while self.buf.count(b"\n") < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("qmp_sim closed the connection")
            self.buf += chunk
        out = []
        for _ in range(n):
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(line)
        return out

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


with Test("qmp_sim") as t:
    t.section("50 simulated VMs with a script each, and the bridge")
    hs_log = os.path.join(t.workdir, "handshakes")
    sim = QmpSim(t.workdir, NVMS, rate=20, events=4, mix=MIX, trace=True,
                 extra=["--handshake-log", hs_log])
    t.add_log("qmp_sim", sim.log)
    sim.start()
    t.ok("qmp_sim listens on %d sockets" % NVMS)
    bridge = Bridge(t.workdir, sim.socket_paths(), log_level="info")
    t.add_log("bridge", bridge.log)
    bridge.start()
    names = sim.names()

    def complete():
        got = by_vm(util.read_jsonl(bridge.events_path))
        return all(snapshots(got.get(n, [])) and
                   sum(1 for e in got[n] if e["type"] in EXPECTED) >= len(EXPECTED)
                   for n in names)
    procs.wait_until(complete, 60, "connected + snapshot + 5 events for every VM")
    time.sleep(0.5)  # anything extra (a duplicate, a replay) would show up now
    per_vm = by_vm(util.read_jsonl(bridge.events_path))
    trace = sim.trace()

    t.section("every VM: connected, snapshot, the script in order with the sim's stamps")
    for n in names:
        evs = per_vm[n]
        types = [e["type"] for e in evs]
        t.expect(types[0] == "bridge.vm.connected", "%s: bridge.vm.connected first" % n, types)
        qmp = [e for e in evs if e["type"] in EXPECTED or e["type"].startswith("qmp.") and
               e["type"] != "qmp.vm.state"]
        t.expect([e["type"] for e in qmp] == EXPECTED, "%s: the five scripted events in order" % n,
                 [e["type"] for e in qmp])
        io, stopped = qmp[0]["data"], qmp[1]["data"]
        t.expect(io.get("errno") == "enospc" and io.get("nospace") is True,
                 "%s: io_error is enospc with nospace true" % n, io)
        t.expect(stopped.get("reason") == "io-error", "%s: stopped with reason io-error" % n,
                 stopped)
        t.expect(qmp[4]["data"].get("reason") == "request", "%s: colo exit reason request" % n,
                 qmp[4]["data"])
        sent = trace.get(n, [])
        t.expect([e["event"] for e in sent] ==
                 ["BLOCK_IO_ERROR", "STOP", "RESUME", "BLOCK_JOB_ERROR", "COLO_EXIT"],
                 "%s: the sim's trace shows the five QMP events" % n, sent)
        t.expect([e["time"] for e in qmp] == [qmp_time(e["timestamp"]) for e in sent],
                 "%s: envelope times are the sim's send stamps" % n,
                 ([e["time"] for e in qmp], [e["timestamp"] for e in sent]))
        t.expect(len(snapshots(evs)) == 1, "%s: one snapshot" % n, snapshots(evs))

    st = sim.stats()
    t.expect(st["events_sent"] == NVMS * 5 and st["steps_sent"] == NVMS * 4,
             "the sim sent 5 events (4 steps) per VM", (st["events_sent"], st["steps_sent"]))
    t.expect(st["ready_current"] == NVMS and st["sessions_accepted"] == NVMS,
             "one negotiated session per VM", st)

    t.section("drop_all: every VM reconnects and is resynced")
    sim.drop_all()

    def resynced():
        got = by_vm(util.read_jsonl(bridge.events_path))
        return all(sum(1 for e in got.get(n, []) if e["type"] == "bridge.vm.connected") >= 2 and
                   len(snapshots(got[n])) >= 2 for n in names)
    procs.wait_until(resynced, 60, "a second connected + snapshot for every VM")
    time.sleep(0.5)
    per_vm = by_vm(util.read_jsonl(bridge.events_path))
    for n in names:
        evs = per_vm[n]
        types = [e["type"] for e in evs]
        t.expect(types.count("bridge.vm.connected") == 2 and len(snapshots(evs)) == 2,
                 "%s: exactly two sessions, two snapshots" % n, types)
        t.expect(sum(1 for x in types if x in EXPECTED) == len(EXPECTED),
                 "%s: no event replayed after the reconnect" % n, types)
        last = [e for e in evs if e["type"] == "qmp.vm.state"][-1]["data"]
        t.expect(last.get("run_state") == "running",
                 "%s: the fresh snapshot follows the script (running)" % n, last)

    st = sim.stats()
    t.expect(st["drops"] == 1 and st["sessions_accepted"] == 2 * NVMS,
             "stats: one drop, %d sessions accepted" % (2 * NVMS), st["sessions_accepted"])
    t.expect(st["vm_sessions"] == [2] * NVMS, "stats: two sessions per VM", st["vm_sessions"])
    t.expect(st["ready_current"] == NVMS and st["pre_caps_current"] == 0,
             "stats: all sessions negotiated again", (st["ready_current"], st["pre_caps_current"]))
    t.expect(1 <= st["pre_caps_max"] <= NVMS and st["pre_caps_max_since_drop"] >= 1,
             "stats: pre-capabilities concurrency recorded", (st["pre_caps_max"],
                                                              st["pre_caps_max_since_drop"]))
    with open(hs_log) as f:
        changes = [tuple(int(x) for x in line.split()) for line in f]
    t.expect(sorted(d for _, d in changes) == [-1] * 2 * NVMS + [1] * 2 * NVMS,
             "handshake log: +1 and -1 once per session", len(changes))
    level, peak, low = 0, 0, 0
    for _, delta in changes:
        level += delta
        peak, low = max(peak, level), min(low, level)
    t.expect(low == 0, "handshake log: never below zero", low)
    t.expect([c[0] for c in changes] == sorted(c[0] for c in changes) and level == 0
             and peak == st["pre_caps_max"],
             "handshake log: in time order, back to 0, its peak is the stats' pre_caps_max",
             (level, peak, st["pre_caps_max"]))
    from importlib.machinery import SourceFileLoader
    bench = SourceFileLoader("bench_run", os.path.join(util.SOURCE_DIR, "tests", "bench",
                                                       "run")).load_module()
    a, b = os.path.join(t.workdir, "hs-a"), os.path.join(t.workdir, "hs-b")
    with open(a, "w") as f:  # 3 at once during 10..20, then 1 during 50..60
        f.write("10 +1\n11 +1\n12 +1\n20 -1\n20 -1\n21 -1\n50 +1\n60 -1\n")
    with open(b, "w") as f:  # 3 at once during 30..40, 1 during 55..70
        f.write("30 +1\n31 +1\n32 +1\n40 -1\n41 -1\n42 -1\n55 +1\n70 -1\n")
    t.expect(bench.Bench.handshake_peaks([a, b], 45) == (3, 2),
             "handshake_peaks: merged peaks 3 before the split and 2 after (sums: 6, 2)",
             bench.Bench.handshake_peaks([a, b], 45))
    cmds = st["commands"]
    t.expect(cmds["qmp_capabilities"] == 2 * NVMS and cmds["query-status"] >= 2 * NVMS and
             cmds["query-block"] >= 2 * NVMS and cmds["query-colo-status"] >= 2 * NVMS,
             "stats: the bridge's handshake and snapshot queries counted by name", cmds)
    t.expect(st["vm_events"] == [5] * NVMS, "stats: 5 events per VM", st["vm_events"])
    t.expect(bridge.stop() == 0, "bridge stops cleanly")

    t.section("the protocol up close on one socket")
    path = sim.socket_paths()[0][1]
    r = Raw(path)
    greeting = json.loads(r.lines(1)[0])
    t.expect(greeting["QMP"]["version"]["qemu"] == {"micro": 22, "minor": 2, "major": 7} and
             greeting["QMP"]["capabilities"] == ["oob"], "QEMU 7.2 greeting", greeting)
    r.send(b'{"execute": "query-status", "id": "early"}\n')
    t.expect(r.lines(1)[0] == b'{"id": "early", "error": {"class": "CommandNotFound", "desc": '
             b'"Expecting capabilities negotiation with \'qmp_capabilities\'"}}\r',
             "commands before qmp_capabilities are refused as QEMU does")
    # Three commands in one write, the third split across two writes.
    r.send(b'{"execute": "qmp_capabilities", "id": 1}\n{"execute": "stop", "id": {"n": [1]}}\n'
           b'{"execute": "query-st')
    time.sleep(0.2)
    r.send(b'atus", "id": "s"}\n')
    got = [json.loads(x) for x in r.lines(4)]
    t.expect(got[0] == {"return": {}, "id": 1}, "capabilities negotiated, numeric id echoed", got[0])
    t.expect(got[1].get("event") == "STOP" and "data" not in got[1] and
             abs(got[1]["timestamp"]["seconds"] - time.time()) < 30,
             "stop: STOP event (no data, stamped now) before the reply", got[1])
    t.expect(got[2] == {"return": {}, "id": {"n": [1]}}, "object id echoed", got[2])
    t.expect(got[3]["return"]["status"] == "paused" and got[3]["id"] == "s",
             "a command split across writes answered: paused", got[3])
    r.send(b'{"execute": "block_resize", "arguments": {"device": "data", "size": 134217728}, '
           b'"id": "r"}\n{"execute": "query-block", "id": "b"}\n{"execute": "cont", "id": "c"}\n'
           b'{"execute": "query-status", "id": "q"}\n{"execute": "frobnicate", "id": "f"}\n'
           b'{"execute": "query-uuid"}\n')
    got = [json.loads(x) for x in r.lines(7)]
    t.expect(got[0] == {"return": {}, "id": "r"}, "block_resize accepted", got[0])
    t.expect(got[1]["return"][0]["inserted"]["image"]["virtual-size"] == 134217728,
             "query-block shows the new size", got[1])
    t.expect(got[2].get("event") == "RESUME" and got[3] == {"return": {}, "id": "c"},
             "cont: RESUME then the reply", got[2:4])
    t.expect(got[4]["return"] == {"status": "running", "singlestep": False, "running": True},
             "running again", got[4])
    t.expect(got[5] == {"id": "f", "error": {"class": "CommandNotFound",
                                             "desc": "The command frobnicate has not been found"}},
             "unknown command: QEMU's CommandNotFound", got[5])
    t.expect(got[6] == {"return": {"UUID": "00000000-0000-0000-0000-000000000000"}},
             "no id in, no id out", got[6])
    r.close()

    t.expect(sim.stop() == 0, "qmp_sim exits 0 on SIGTERM")
    t.expect(not any(os.path.exists(p) for _, p in sim.socket_paths()), "sockets removed at exit")
    final = sim.stats()
    t.expect(final["sessions_accepted"] == 2 * NVMS + 1, "final stats written at exit",
             final["sessions_accepted"])

    t.section("rate mode: phases spread over the period; --phase checked")
    n_phase = 10
    psim = QmpSim(os.path.join(t.workdir, "phase"), n_phase, prefix="ph-", rate=1, events=1,
                  mix="io_error", trace=True)
    t.add_log("qmp_sim phase", psim.log)
    psim.start()
    pbridge = Bridge(os.path.join(t.workdir, "phase"), psim.socket_paths(), log_level="info")
    t.add_log("bridge phase", pbridge.log)
    pbridge.start()
    procs.wait_until(lambda: len(psim.trace()) == n_phase, 30, "one step from each of 10 VMs")
    firsts = sorted(evs[0]["timestamp"]["seconds"] + evs[0]["timestamp"]["microseconds"] / 1e6
                    for evs in psim.trace().values())
    span = firsts[-1] - firsts[0]
    # golden-ratio phases of 10 VMs cover 0.94 of the period; aligned ones step together
    t.expect(span >= 0.5, "first steps spread over the 1 s period (span %.3f s)" % span, firsts)
    t.expect(pbridge.stop() == 0, "bridge stops cleanly")
    t.expect(psim.stop() == 0, "qmp_sim exits 0")
    bad = subprocess.run(psim.argv[:1] + ["--dir", t.workdir, "--vms", "1", "--phase", "bogus"],
                         stderr=subprocess.PIPE, timeout=10)
    t.expect(bad.returncode == 2 and b"--phase is aligned or spread" in bad.stderr,
             "an unknown --phase is refused", (bad.returncode, bad.stderr))

    t.section("--start-ready: scripts wait for the whole fleet")
    ssim = QmpSim(os.path.join(t.workdir, "start"), 3, prefix="st-", flat_out=True, events=3,
                  mix="stop,resume", extra=["--start-ready", "3"])
    t.add_log("qmp_sim start-ready", ssim.log)
    ssim.start()
    raws = []
    for _, path in ssim.socket_paths():
        r = Raw(path)
        r.lines(1)  # greeting
        raws.append(r)
    for r in raws[:2]:
        r.send(b'{"execute": "qmp_capabilities"}\n')
        t.expect(json.loads(r.lines(1)[0]) == {"return": {}}, "capabilities negotiated")
    raws[0].s.settimeout(0.7)
    try:
        early = raws[0].lines(1)
    except socket.timeout:
        early = []
    t.expect(early == [], "2 of 3 sessions ready: no event yet", early)
    raws[0].s.settimeout(10)
    raws[2].send(b'{"execute": "qmp_capabilities"}\n')
    t.expect(json.loads(raws[2].lines(1)[0]) == {"return": {}}, "third session negotiated")
    for i, r in enumerate(raws):
        got = [json.loads(x).get("event") for x in r.lines(3)]
        t.expect(got == ["STOP", "RESUME", "STOP"], "VM %d: its 3 steps once all are in" % i, got)
    for r in raws:
        r.close()
    t.expect(ssim.stop() == 0, "qmp_sim exits 0")
    bad = subprocess.run(ssim.argv[:1] + ["--dir", t.workdir, "--vms", "2", "--start-ready", "3"],
                         stderr=subprocess.PIPE, timeout=10)
    t.expect(bad.returncode == 2 and b"usage" in bad.stderr,
             "--start-ready above --vms is refused", (bad.returncode, bad.stderr[-200:]))
