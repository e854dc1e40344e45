#!/usr/bin/python3
"""Which libvirt domains become VMs: name rules, collisions and filters.

One bridge on a private libvirtd with
  vms: [{ name: dup, qmp: unix:<a socket nobody listens on> }]
  libvirt: { include: ["keep-*", "dup", "bad*"], exclude: ["keep-not*"] }
and the domains dup, keep-a, keep-not, other (running before the bridge
starts: found by the first listing) and bad+name, other+x (started after it:
found by libvirt's lifecycle events).
- dup collides with the static VM: refused with a log line naming it, the
  static VM keeps its entry (its unix: address, in /vms);
- only keep-a passes the filters: keep-not (excluded) and other (not
  included) are no VMs and publish nothing;
- bad+name passes the filters but is no valid VM name: refused with a log
  line; other+x is no valid name either, but the filters do not take it, so
  it is not refused (no log line, not counted);
- qmp_bridge_libvirt_domains_refused_total is 2 (dup, bad+name);
- keep-a is unaffected: connected, and its pause and resume are published.
Then a reload (SIGHUP) drops the static dup and changes the filters to
include ["keep-*", "other", "dup"], exclude ["keep-a"]: keep-a leaves (removed,
retained state cleared), keep-not, other and the domain dup become VMs.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, libvirt, lvbridge  # noqa: E402

with check.Test("libvirt_names") as t:
    d = t.workdir
    lvbridge.skip_without_libvirt()
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    for name in ("dup", "keep-a", "keep-not", "other"):
        libvirt.define_idle_domain(lv, d, name)
    t.ok("running before the bridge", lv.running_domains())
    nobody = os.path.join(d, "nobody.qmp")
    rig = lvbridge.LibvirtBridge(t, lv, vms=[("dup", nobody)], extra_yaml=(
        "libvirt: { uri: %s, include: [\"keep-*\", \"dup\", \"bad*\"], exclude: [\"keep-not*\"] }\n"
        % json.dumps(lv.uri)))
    rig.wait_event("keep-a", check.is_snapshot, "qmp.vm.state of keep-a")
    t.ok("keep-a connected")

    t.section("a domain named like a static VM")
    line = rig.br.wait_log("[dup]", "refused")[-1]
    t.expect("unix:" + nobody in line, "dup refused, the log line names the static VM's address",
             line)
    status, body = rig.get("/vms")
    vms = {v["name"]: v for v in json.loads(body)}
    t.expect(vms.get("dup", {}).get("address") == "unix:" + nobody,
             "the static VM dup keeps its entry (its unix: address)", vms.get("dup"))

    t.section("include and exclude")
    t.expect(sorted(vms) == ["dup", "keep-a"], "/vms: dup (static) and keep-a only", sorted(vms))
    t.expect(vms["keep-a"]["address"] == "libvirt:%s#keep-a" % lv.uri, "keep-a's address",
             vms["keep-a"])

    t.section("names that are no VM names")
    bad = libvirt.define_idle_domain(lv, d, "bad+name")
    libvirt.define_idle_domain(lv, d, "other+x")
    t.ok("bad+name and other+x started after the bridge", bad.state())
    line = rig.br.wait_log("'bad+name'", "refused")[-1]
    t.ok("bad+name refused", line.split("  ", 1)[-1])
    # other+x started last: once its STARTED event was handled, it would have been logged
    lv.virsh("suspend", "keep-a")
    rig.wait_event("keep-a", lambda m: m.type == "qmp.vm.stopped", "qmp.vm.stopped of keep-a")
    t.expect(not rig.br.log_lines("other+x"), "other+x (not included) is not refused, not logged",
             rig.br.log_lines("other+x"))
    refused = rig.metric("qmp_bridge_libvirt_domains_refused_total")
    t.expect(refused == 2, "qmp_bridge_libvirt_domains_refused_total 2 (dup, bad+name)", refused)

    t.section("the others are unaffected")
    lv.virsh("resume", "keep-a")
    rig.wait_event("keep-a", lambda m: m.type == "qmp.vm.resumed", "qmp.vm.resumed of keep-a")
    t.ok("keep-a: qmp.vm.stopped and qmp.vm.resumed published")
    check.assert_increasing(rig.envelopes("keep-a"), "keep-a", consecutive=True)
    rig.sub.poll()
    topics = sorted({m.topic.split("/")[2] for m in rig.sub.messages
                     if m.topic.startswith("qmp/%s/" % lvbridge.BRIDGE_ID)
                     and len(m.topic.split("/")) > 3})
    t.expect(topics == ["dup", "keep-a"] or topics == ["keep-a"],
             "only keep-a (and the static dup) published anything", topics)
    status, body = rig.get("/vms")
    vms = {v["name"]: v for v in json.loads(body)}
    t.expect(sorted(vms) == ["dup", "keep-a"] and vms["dup"]["address"] == "unix:" + nobody,
             "/vms still: the static dup and keep-a", body[:400])

    t.section("reload: other filters, no static dup")
    conf = open(rig.br.conf).read()
    lines = [l for l in conf.splitlines() if "name: dup" not in l and not l.startswith("libvirt:")]
    lines.append("libvirt: { uri: %s, include: [\"keep-*\", \"other\", \"dup\"], "
                 "exclude: [\"keep-a\"] }" % json.dumps(lv.uri))
    with open(rig.br.conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.kill(rig.br.proc.pid, signal.SIGHUP)
    rig.br.wait_log("[keep-a] removed:")
    rig.wait_retained_cleared("keep-a")
    t.ok("keep-a (now excluded) removed, its retained state cleared",
         rig.br.log_lines("[keep-a] removed:")[-1].split("] ", 1)[-1])
    for vm in ("keep-not", "other", "dup"):
        conn = rig.events(vm)[rig.wait_event(vm, lambda m: m.type == "bridge.vm.connected",
                                             "bridge.vm.connected of " + vm)]
        t.expect(conn.data["address"] == "libvirt:%s#%s" % (lv.uri, vm),
                 "%s is a VM now, at its libvirt address" % vm, conn.data)
    status, body = rig.get("/vms")
    vms = sorted(v["name"] for v in json.loads(body))
    t.expect(vms == ["dup", "keep-not", "other"], "/vms: dup, keep-not, other", vms)
    t.expect(rig.br.alive(), "the bridge runs on")
    rc = rig.br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
