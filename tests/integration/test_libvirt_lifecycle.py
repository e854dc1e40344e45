#!/usr/bin/python3
"""Domains that start, stop, pause, come back and go while the bridge runs.

The bridge starts on a private libvirtd with no domain running (one is
defined). Then:
- the persistent domain p1 starts: bridge.vm.connected with its UUID (lower
  case) and address libvirt:<uri>#p1, then qmp.vm.state connected true;
- `virsh suspend` / `resume`: qmp.vm.stopped (reason paused), qmp.vm.resumed;
- `virsh destroy`: bridge.vm.disconnected, and the retained state says
  connected: false and stays (the domain is still defined);
- started again: connected again under the same VM name, its sequence going on
  from where it was (no restart at 1, no gap);
- `virsh undefine` while stopped: the VM stays (disconnected, its retained
  state says so) for libvirt.forget_after (3 s here), then it is removed (log
  line) and its retained state topic cleared; defined and started again it is
  a new entry (a new epoch, sequence 1: gone for good, like a forgotten listen
  VM);
- a transient domain t1 (`virsh create`) destroyed: disconnected, and removed
  and cleared after forget_after;
- a transient domain t2 destroyed and created again within forget_after (as
  oVirt restarts its VMs) is the same VM: its sequence goes on, no new epoch;
- a running domain u1 undefined stays a connected VM (libvirt keeps it as a
  transient domain until it stops); destroyed, it is removed and cleared.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, libvirt, lvbridge  # noqa: E402


def connected(rig, vm, start, what):
    """Waits for bridge.vm.connected then a live qmp.vm.state of vm from index
    start of its events; returns (connected envelope, index of the state)."""
    i = rig.wait_event(vm, lambda m: m.type == "bridge.vm.connected", what, start=start)
    j = rig.wait_event(vm, check.is_snapshot, "qmp.vm.state of " + vm, start=i + 1)
    return rig.events(vm)[i], j


def disconnected(rig, vm, start):
    """Waits for bridge.vm.disconnected of vm, then its state connected: false;
    returns the index of that state among vm's events."""
    i = rig.wait_event(vm, lambda m: m.type == "bridge.vm.disconnected",
                       "bridge.vm.disconnected of " + vm, start=start)
    return rig.wait_event(vm, lambda m: m.type == "qmp.vm.state" and m.data["connected"] is False,
                          "qmp.vm.state connected: false of " + vm, start=i + 1)


with check.Test("libvirt_lifecycle") as t:
    d = t.workdir
    lvbridge.skip_without_libvirt()
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    p1 = libvirt.define_idle_domain(lv, d, "p1", start=False)
    rig = lvbridge.LibvirtBridge(
        t, lv, extra_yaml="libvirt: { uri: %s, forget_after: 3s }\n" % json.dumps(lv.uri))
    rig.wait_metric("qmp_bridge_libvirt_connected", lambda v: v == 1, "libvirt connected")
    t.ok("bridge connected to libvirtd, no domain running")
    t.expect(rig.envelopes("p1") == [], "a defined domain that does not run is no VM")

    t.section("a persistent domain starts after the bridge")
    p1.start()
    uuid = p1.uuid
    conn, j = connected(rig, "p1", 0, "bridge.vm.connected of p1")
    data = conn.data
    t.expect(data.get("uuid") == uuid.lower(), "bridge.vm.connected carries the domain's UUID, "
             "lower case", (data, uuid))
    t.expect(data.get("address") == "libvirt:%s#p1" % lv.uri, "address libvirt:<uri>#p1", data)
    st = rig.events("p1")[j].data
    t.expect(st["connected"] is True and st.get("uuid") == uuid.lower(),
             "qmp.vm.state connected true, with the UUID", st)

    t.section("suspend and resume")
    lv.virsh("suspend", "p1")
    i = rig.wait_event("p1", lambda m: m.type == "qmp.vm.stopped", "qmp.vm.stopped of p1", start=j)
    t.expect(rig.events("p1")[i].data.get("reason") == "paused", "qmp.vm.stopped reason paused",
             rig.events("p1")[i].data)
    lv.virsh("resume", "p1")
    i = rig.wait_event("p1", lambda m: m.type == "qmp.vm.resumed", "qmp.vm.resumed of p1", start=i)
    t.ok("qmp.vm.resumed")

    t.section("destroyed: disconnected, state stays (persistent)")
    p1.destroy()
    j = disconnected(rig, "p1", i)
    t.ok("bridge.vm.disconnected, then qmp.vm.state connected: false")
    m = rig.wait_retained("p1", lambda s: s["connected"] is False, "retained state connected false")
    t.ok("retained state of p1 says connected: false", m.json["sequence"])
    status, body = rig.get("/vms")
    t.expect(status == 200 and '"p1"' in body, "p1 is still a VM of the bridge (/vms)", body[:300])
    m = rig.retained_state("p1")
    t.expect(m is not None and m.json["data"]["connected"] is False,
             "its retained state stays (connected: false)", m)

    t.section("started again: same VM, sequence goes on")
    last = check.seq_int(rig.events("p1")[-1])
    p1.start()
    conn, j = connected(rig, "p1", j + 1, "bridge.vm.connected of p1 again")
    t.expect(check.seq_int(conn) == last + 1, "its sequence goes on: %d after %d" % (
        check.seq_int(conn), last), check.summarize(rig.events("p1")))
    t.expect(conn.data.get("uuid") == uuid.lower(), "same UUID", conn.data)
    lvbridge.assert_consecutive(t, [check.seq_int(m) for m in rig.events("p1")], "p1")

    t.section("stopped and undefined: removed, retained state cleared")
    p1.destroy()
    j = disconnected(rig, "p1", j + 1)
    p1.undefine()
    rig.br.wait_log("[p1] libvirt: the domain was undefined")
    m = rig.wait_retained("p1", lambda s: s["connected"] is False,
                          "retained state of p1 connected: false")
    t.expect(not rig.br.log_lines("[p1] removed:"),
             "undefined: p1 stays a VM for forget_after, its retained state says disconnected",
             m.json["sequence"])
    rig.br.wait_log("[p1] removed:")
    t.ok("bridge log", rig.br.log_lines("[p1] removed:")[-1].split("] ", 1)[-1])
    rig.wait_retained_cleared("p1")
    t.ok("no retained message on qmp/%s/p1/state any more" % lvbridge.BRIDGE_ID)

    t.section("defined and started again: a new entry")
    old_epoch = rig.events("p1")[-1].json["id"].split("-")[0]
    lv.virsh("define", p1.xml_path)
    p1.start()
    conn, j = connected(rig, "p1", j + 1, "bridge.vm.connected of the new p1")
    # an undefined domain is gone for good, like a forgotten listen VM: a new
    # epoch without a spool (docs/configuration.md, qmp.listen_forget_after)
    t.expect(check.seq_int(conn) == 1 and conn.json["id"].split("-")[0] != old_epoch,
             "the new p1 is a new entry: a new epoch, sequence 1", conn.json["id"])
    t.expect(conn.data.get("uuid") == p1.uuid.lower(), "with the new domain's UUID", conn.data)
    p1.destroy()
    disconnected(rig, "p1", j + 1)

    t.section("a transient domain destroyed: disconnected, removed, cleared")
    t1 = libvirt.define_idle_domain(lv, d, "t1", transient=True)
    conn, _ = connected(rig, "t1", 0, "bridge.vm.connected of t1")
    t.expect(conn.data.get("uuid") == t1.uuid.lower(), "t1 connected with its UUID", conn.data)
    rig.wait_retained("t1", lambda s: s["connected"] is True, "retained state of t1 connected")
    t1.destroy()
    disconnected(rig, "t1", 0)
    t.ok("t1: bridge.vm.disconnected, then qmp.vm.state connected: false")
    rig.br.wait_log("[t1] removed:")
    rig.wait_retained_cleared("t1")
    t.ok("t1 removed, no retained state any more")

    t.section("a transient domain back within forget_after: the same VM")
    t2 = libvirt.define_idle_domain(lv, d, "t2", transient=True)
    conn, j = connected(rig, "t2", 0, "bridge.vm.connected of t2")
    epoch = conn.json["id"].split("-")[0]
    t2.destroy()
    j = disconnected(rig, "t2", j + 1)
    t2.start()  # virsh create again, as oVirt starts a VM
    conn, j = connected(rig, "t2", j + 1, "bridge.vm.connected of t2 again")
    t.expect(conn.json["id"].split("-")[0] == epoch and not rig.br.log_lines("[t2] removed:"),
             "t2 back within forget_after: same entry, same epoch", conn.json["id"])
    lvbridge.assert_consecutive(t, [check.seq_int(m) for m in rig.events("t2")], "t2")

    t.section("undefined while running: stays until it stops")
    u1 = libvirt.define_idle_domain(lv, d, "u1")
    connected(rig, "u1", 0, "bridge.vm.connected of u1")
    u1.undefine()
    lv.virsh("suspend", "u1")  # a relayed event after the undefine: u1 is still a VM
    rig.wait_event("u1", lambda m: m.type == "qmp.vm.stopped", "qmp.vm.stopped of u1")
    t.expect("bridge.vm.disconnected" not in [m.type for m in rig.events("u1")]
             and not rig.br.log_lines("[u1] removed:"),
             "u1 undefined while running: still connected, not removed")
    u1.destroy()
    disconnected(rig, "u1", 0)
    rig.br.wait_log("[u1] removed:")
    rig.wait_retained_cleared("u1")
    t.ok("u1 destroyed: disconnected, removed, no retained state any more")

    t.section("afterwards")
    for vm in ("t1", "u1"):
        check.assert_increasing(rig.envelopes(vm), vm, consecutive=True)
    first_p1 = [m for m in rig.envelopes("p1") if m.json["id"].split("-")[0] == old_epoch]
    check.assert_increasing(first_p1, "p1 (first entry)", consecutive=True)
    check.assert_increasing([m for m in rig.envelopes("p1") if m not in first_p1],
                            "p1 (second entry)", consecutive=True)
    t.ok("p1, t1 and u1: sequences without gap on MQTT")
    t.expect(rig.br.alive(), "the bridge runs on")
    rc = rig.br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
