#!/usr/bin/python3
"""libvirtd killed (SIGKILL) and restarted while a domain runs: the bridge
notices, says so, reconnects and resyncs, and the VM's sequence has no gap.

A private libvirtd runs an idle domain r1; the bridge (libvirt source, MQTT,
stdout, metrics.listen) publishes bridge.vm.connected and qmp.vm.state for it.
Then libvirtd gets SIGKILL (the domain's QEMU keeps running): /metrics shows
qmp_bridge_libvirt_connected 0, /readyz answers 503 naming libvirt, and r1
publishes bridge.vm.disconnected. libvirtd is started again: the bridge
reconnects (connected 1, connections_lost_total 1), r1 publishes
bridge.vm.connected and a fresh qmp.vm.state (connected, running), and after
`virsh suspend` qmp.vm.stopped (paused) arrives: relayed events flow again.
Over the whole run r1's envelopes on MQTT's event topics and in the stdout
transport's file carry the sequence numbers n, n+1, n+2, ... without a gap.
A second, transient domain gone2 loses its QEMU (SIGKILL) while libvirtd is
down, so the restarted libvirtd no longer has it: the resync removes that VM
and clears its retained state. A third domain w3, the writer guest on a 24M
tmpfs, fills its disk and pauses on ENOSPC while libvirtd is down (QEMU's
events then reach nobody): after the reconnect its fresh state says so
(run_state io-error, disk hda io_status nospace)."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, libvirt, lvbridge, procs  # noqa: E402

VM = "r1"

with check.Test("libvirt_reconnect") as t:
    d = t.workdir
    lvbridge.skip_without_libvirt()
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    dom = libvirt.define_idle_domain(lv, d, VM)
    t.add_log("domain log", dom.log)
    gone = libvirt.define_idle_domain(lv, d, "gone2", transient=True)
    # 24M: full about 2 s after the start (the guest wraps at 32M, so it does fill)
    w3 = libvirt.define_writer_domain(lv, d, "w3", tmpfs_size="24M", start=False)
    t.add_log("w3 log", w3.log)
    rig = lvbridge.LibvirtBridge(
        t, lv, extra_yaml="libvirt: { uri: %s, forget_after: 2s }\n" % json.dumps(lv.uri))
    uuid = dom.uuid.lower()

    t.section("connected")
    i = rig.wait_event(VM, lambda m: m.type == "bridge.vm.connected", "bridge.vm.connected of r1")
    t.expect(rig.events(VM)[i].data.get("uuid") == uuid, "bridge.vm.connected carries the UUID",
             rig.events(VM)[i].data)
    rig.wait_event(VM, lambda m: check.is_snapshot(m) and m.data["running"] is True,
                   "qmp.vm.state of r1, running", start=i + 1)
    t.ok("bridge.vm.connected, then qmp.vm.state running")
    t.expect(rig.wait_metric("qmp_bridge_libvirt_connected", lambda v: v == 1, "connected 1") == 1,
             "qmp_bridge_libvirt_connected 1")
    status, body = rig.get("/readyz")
    t.expect(status == 200, "/readyz 200 while connected", (status, body))
    qemu_pid = dom.qemu_pid()
    rig.wait_event("gone2", check.is_snapshot, "qmp.vm.state of gone2")
    gone_pid = gone.qemu_pid()
    w3.start()
    rig.wait_event("w3", check.is_snapshot, "qmp.vm.state of w3")

    t.section("libvirtd killed")
    before = len(rig.events(VM))
    lv.kill_daemon()
    t.ok("libvirtd got SIGKILL")
    w3_before = [m.type for m in rig.events("w3")]
    rig.wait_metric("qmp_bridge_libvirt_connected", lambda v: v == 0, "connected 0")
    t.ok("qmp_bridge_libvirt_connected 0")
    status, body = rig.get("/readyz")
    t.expect(status == 503 and "libvirt" in body, "/readyz 503 with a reason naming libvirt",
             (status, body))
    i_disc = rig.wait_event(VM, lambda m: m.type == "bridge.vm.disconnected",
                            "bridge.vm.disconnected of r1", start=before)
    t.ok("bridge.vm.disconnected published", rig.events(VM)[i_disc].data)
    rig.wait_retained(VM, lambda s: s["connected"] is False, "state connected: false")
    t.ok("retained state says connected: false")
    t.expect(dom.qemu_pid() == qemu_pid and qemu_pid is not None, "the domain's QEMU still runs",
             qemu_pid)
    t.expect(rig.br.alive(), "the bridge runs on")
    os.kill(gone_pid, signal.SIGKILL)
    t.ok("the QEMU of the transient domain gone2 killed meanwhile", gone_pid)

    def w3_full():
        df = lv.nsenter(["df", "--output=avail", w3.fs_dir]).stdout.split()
        return df[-1] == "0"
    procs.wait_until(w3_full, 30, "w3's tmpfs to fill up")
    time.sleep(1)  # the guest's next write fails: QEMU pauses w3 on ENOSPC
    t.ok("w3's disk filled up while libvirtd was down")

    t.section("libvirtd back")
    lv.start_daemon()
    t.ok("libvirtd started again")
    rig.wait_metric("qmp_bridge_libvirt_connected", lambda v: v == 1, "connected 1 again")
    t.ok("qmp_bridge_libvirt_connected 1")
    t.expect(rig.metric("qmp_bridge_libvirt_connections_lost_total") == 1,
             "qmp_bridge_libvirt_connections_lost_total 1",
             rig.metric("qmp_bridge_libvirt_connections_lost_total"))
    i_conn = rig.wait_event(VM, lambda m: m.type == "bridge.vm.connected",
                            "bridge.vm.connected of r1 again", start=i_disc + 1)
    t.expect(rig.events(VM)[i_conn].data.get("uuid") == uuid, "with the same UUID")
    i_state = rig.wait_event(VM, lambda m: check.is_snapshot(m) and m.data["running"] is True,
                             "a fresh qmp.vm.state of r1", start=i_conn + 1)
    t.ok("bridge.vm.connected, then a fresh qmp.vm.state (connected, running)",
         rig.events(VM)[i_state].json["sequence"])
    status, body = rig.get("/readyz")
    t.expect(status == 200, "/readyz 200 again", (status, body))
    rig.br.wait_log("[gone2] libvirt: libvirt no longer has the domain")
    rig.br.wait_log("[gone2] removed:")
    rig.wait_retained_cleared("gone2")
    t.ok("gone2, which libvirt no longer has, removed; its retained state cleared")
    t.expect("qmp.vm.stopped" not in w3_before, "w3 ran until libvirtd was killed", w3_before)
    t.expect(w3.state() == "paused (I/O error)", "libvirt says w3 is paused (I/O error)",
             (w3.state(), lv.virsh("domblkerror", "w3")))
    m = rig.wait_retained("w3", lambda s: s["connected"] is True and s["run_state"] == "io-error"
                          and check.disk(s, "hda").get("io_status") == "nospace",
                          "w3: connected, run_state io-error, hda io_status nospace")
    t.ok("w3's fresh state after the reconnect: run_state io-error, disk hda io_status nospace",
         w3.state())

    t.section("events flow again")
    lv.virsh("suspend", VM)
    i_stop = rig.wait_event(VM, lambda m: m.type == "qmp.vm.stopped", "qmp.vm.stopped of r1",
                            start=i_state + 1)
    t.expect(rig.events(VM)[i_stop].data.get("reason") == "paused",
             "qmp.vm.stopped after the reconnect, reason paused", rig.events(VM)[i_stop].data)
    lv.virsh("resume", VM)
    rig.wait_event(VM, lambda m: m.type == "qmp.vm.resumed", "qmp.vm.resumed of r1",
                   start=i_stop + 1)
    t.ok("qmp.vm.resumed")

    t.section("one sequence without a gap")
    env = rig.envelopes(VM)
    check.assert_increasing(env, "r1 on MQTT", consecutive=True)
    seqs = [check.seq_int(m) for m in rig.events(VM)]
    lvbridge.assert_consecutive(t, seqs, "r1 on MQTT's event topics")
    t.expect(seqs[0] == 1 if seqs else False, "starting at 1", seqs[:3])
    types = [m.type for m in rig.events(VM)]
    t.ok("r1's events", " ".join(types))
    # the stdout transport writes its file on its own schedule (slower under valgrind): wait
    # until it has as many of r1's envelopes as MQTT delivered before comparing
    procs.wait_until(lambda: len(rig.stdout_envelopes(VM)) >= len(seqs), 20,
                     "the stdout transport's file to have r1's %d events" % len(seqs))
    out_seqs = [int(e["sequence"]) for e in rig.stdout_envelopes(VM)]
    lvbridge.assert_consecutive(t, out_seqs, "r1 in the stdout transport's file")
    check.assert_increasing(rig.envelopes("w3"), "w3 on MQTT", consecutive=True)
    t.ok("w3 on MQTT: no gap either", [m.type for m in rig.events("w3")][-2:])
    t.expect(out_seqs[:len(seqs)] == seqs, "the file has the envelopes MQTT has, in the same order",
             (out_seqs, seqs))
    rc = rig.br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
