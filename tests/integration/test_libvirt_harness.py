#!/usr/bin/python3
"""The private libvirtd of the tests (qbtest/libvirt.py) does what the libvirt
tests rely on: it answers on its own URI from the host, lives in its own mount
namespace, runs the writer domain into a real ENOSPC pause (`virsh domstate
--reason` says paused (I/O error), the disk error is no space), names the data
disk's node libvirt-<N>-format with N the disk's <source index>, resumes after
the tmpfs is grown and the disk resized, survives a libvirtd kill -9 with the
domain still running, and leaves no process and no trace on the host after
stop(). Needs root (mounts) and libvirtd: otherwise SKIP."""
import hashlib
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, libvirt, procs  # noqa: E402

if os.geteuid() != 0 or not shutil.which("libvirtd") or not shutil.which("virtlogd"):
    print("SKIP needs root and libvirtd/virtlogd (libvirt-daemon, libvirt-daemon-driver-qemu)")
    sys.exit(77)

HOST_PATHS = ("/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt", "/var/cache/libvirt",
              "/etc/libvirt")


def host_trace():
    """What the host shows at the paths the daemon uses, and its user database."""
    out = {}
    for p in HOST_PATHS:
        out[p] = sorted(os.listdir(p)) if os.path.isdir(p) else None
    for p in ("/etc/passwd", "/etc/group"):
        with open(p, "rb") as f:
            out[p] = hashlib.sha256(f.read()).hexdigest()
    return out


with check.Test("libvirt_harness") as t:
    d = t.workdir
    before = host_trace()

    t.section("start the private libvirtd")
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    t.add_log("virtlogd", lv.virtlogd_log)
    t.add_log("namespace holder", lv.holder_log)
    t.ok("libvirtd answers on " + lv.uri, "%.1f s" % lv.startup_seconds)
    t.expect(os.path.exists(lv.socket), "its socket is visible from the host", lv.socket)
    inside = lv.nsenter(["virsh", "-c", "qemu:///system", "version"]).stdout
    t.expect("Running hypervisor: QEMU" in inside, "virsh qemu:///system inside the namespace answers",
             inside)
    pid = lv.daemon_pid()
    t.expect(os.readlink("/proc/%d/ns/mnt" % pid) != os.readlink("/proc/self/ns/mnt"),
             "libvirtd runs in another mount namespace", pid)
    t.expect(host_trace() == before, "the host's libvirt paths and users are unchanged")

    t.section("writer domain runs into ENOSPC")
    events = os.path.join(d, "qemu-events.txt")
    mon = libvirt.monitor_events(lv, events)
    t.add_log("qemu-monitor-event", events)
    time.sleep(0.5)  # the subscription is made before the domain starts
    dom = libvirt.define_writer_domain(lv, d, "writer")
    t.add_log("domain log", dom.log)
    t.ok("domain defined and started", dom.uuid)
    st = dom.wait_state(r"^paused \(I/O error\)$", 60)
    t.ok("virsh domstate --reason", st)
    err = lv.virsh("domblkerror", dom.name)
    t.expect("hda: no space" in err, "virsh domblkerror says hda: no space", err)
    ev = procs.wait_until(lambda: [e for e in libvirt.read_events(events)
                                   if e[1] == dom.name and e[2] in ("BLOCK_IO_ERROR", "STOP")], 10,
                          "BLOCK_IO_ERROR or STOP on qemu-monitor-event")
    errs = [e[3] for e in libvirt.read_events(events) if e[2] == "BLOCK_IO_ERROR"]
    if errs:  # QEMU may rate-limit it away; the pause is what matters
        data = errs[0]
        t.expect(data.get("nospace") is True and data.get("device") == ""
                 and data.get("action") == "stop", "BLOCK_IO_ERROR: nospace, device \"\", action stop",
                 data)
        idx = dom.disk_indexes()["hda"]
        t.expect(data.get("node-name") == "libvirt-%d-format" % idx,
                 "its node-name is libvirt-<N>-format with N = <source index> of hda", (data, idx))
    else:
        t.ok("no BLOCK_IO_ERROR relayed (rate-limited), STOP seen", ev)
    procs.stop(mon)

    t.section("grow, resize, resume")
    dom.grow_tmpfs("64M")
    lv.virsh("blockresize", dom.name, "hda", "128M")
    lv.virsh("resume", dom.name)
    st = dom.wait_state(r"^running", 20)
    t.ok("running again after grow + blockresize + resume", st)
    info = lv.virsh("domblkinfo", dom.name, "hda")
    t.expect("134217728" in info, "hda is 128 MiB", info)

    t.section("libvirtd killed and restarted while the domain runs")
    qemu_pid = dom.qemu_pid()
    lv.kill_daemon()
    t.expect(qemu_pid in [p for p, _ in lv.ns_processes()], "QEMU survives libvirtd's SIGKILL", qemu_pid)
    lv.start_daemon()
    t.expect(dom.qemu_pid() == qemu_pid and dom.state().startswith("running"),
             "the restarted libvirtd finds the same QEMU, running", dom.state())

    t.section("stop leaves nothing behind")
    ns = lv.ns_processes()
    t.expect(sorted(c for _, c in ns) == ["libvirtd", "qemu-system-x86", "virtlogd"],
             "before stop: libvirtd, virtlogd and one QEMU in the namespace", ns)
    lv.stop()
    gone = [p for p, _ in ns if os.path.exists("/proc/%d" % p)]
    t.expect(not gone and not lv.ns_processes(), "no process of the namespace survives stop()", gone)
    t.expect(host_trace() == before, "the host's libvirt paths and users are still unchanged",
             (before, host_trace()))
