#!/usr/bin/python3
"""Fault 6: QEMU killed mid-event, restarted, and a VM's socket taken over by another QEMU:
no mix-ups, state resynced.

Two real QEMUs, a (-name guest-a, its own UUID) and b (-name guest-b). Guest a writes until
its thin disk is full; right after the bridge has published a's BLOCK_IO_ERROR, a is killed
with SIGKILL (mid-event: the pause that follows may or may not have been published). a is
restarted (same name and UUID, a fresh disk): the bridge publishes disconnected, connected
and a fresh qmp.vm.state that says running with no disk error: the io-error state of the
dead process is not carried over. Then a's socket is taken over by a different QEMU
(-name guest-c, another UUID): before that session's snapshot the bridge publishes
bridge.vm.identity_changed naming the previous and current identity. Throughout, VM b's
stream never sees any of it, and every stream keeps its sequence contiguous."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, qemu, streamcheck, util  # noqa: E402

UUID_A = "6c1d0a2e-0000-4000-8000-00000000000a"
UUID_B = "6c1d0a2e-0000-4000-8000-00000000000b"
UUID_C = "6c1d0a2e-0000-4000-8000-00000000000c"


def stream(br, vm=None):
    envs = util.read_jsonl(br.events_path)
    return [e for e in envs if vm is None or e["subject"] == vm]


def types(envs):
    return [e["type"] for e in envs]


with check.Test("vm_identity") as t:
    d = t.workdir
    a = qemu.Qemu(d, "a", disk="tmpfs", guest=True, extra=["-name", "guest-a", "-uuid", UUID_A])
    a.start().wait_ready()
    t.add_log("qemu a", a.log)
    b = qemu.Qemu(d, "b", disk="plain", extra=["-name", "guest-b", "-uuid", UUID_B])
    b.start().wait_ready()
    t.add_log("qemu b", b.log)
    br = bridge.Bridge(d, [("a", a.qmp_path), ("b", b.qmp_path)], log_level="info").start()
    t.add_log("bridge", br.log)

    t.section("kill a mid-event")
    def in_error(envs):
        # the event itself, or (when the guest filled the disk before the bridge was connected,
        # as under valgrind) the snapshot that reports the pause
        return any(e["type"] == "qmp.block.io_error" or
                   (e["type"] == "qmp.vm.state" and e["data"]["run_state"] == "io-error")
                   for e in envs)
    procs.wait_until(lambda: in_error(stream(br, "a")), 60, "a's disk error on the stream")
    a.kill()
    t.ok("a killed right after its disk error was published", types(stream(br, "a"))[-3:])
    procs.wait_until(lambda: "bridge.vm.disconnected" in types(stream(br, "a")), 20,
                     "a disconnected")

    t.section("restart a with a fresh disk")
    n = len(stream(br, "a"))
    a2 = qemu.Qemu(d, "a", disk="plain", extra=["-name", "guest-a", "-uuid", UUID_A])
    a2.start().wait_ready()
    t.add_log("qemu a (restarted)", a2.log)
    procs.wait_until(lambda: any(check.is_snapshot(e) for e in stream(br, "a")[n:]), 30,
                     "a's fresh snapshot")
    after = stream(br, "a")[n:]
    snap = [e for e in after if check.is_snapshot(e)][0]
    t.expect(snap["data"]["run_state"] == "running", "fresh state: running, not io-error",
             snap["data"]["run_state"])
    t.expect(all(dk.get("io_status", "ok") == "ok" for dk in snap["data"].get("disks", [])),
             "fresh state: no disk error carried over", snap["data"].get("disks"))
    t.expect("bridge.vm.identity_changed" not in types(after), "same QEMU identity: no change reported",
             types(after))

    t.section("a's socket taken over by another QEMU")
    n = len(stream(br, "a"))
    a2.kill()
    procs.wait_until(lambda: "bridge.vm.disconnected" in types(stream(br, "a")[n:]), 20,
                     "a disconnected again")
    c = qemu.Qemu(d, "a", disk="plain", extra=["-name", "guest-c", "-uuid", UUID_C])
    c.start().wait_ready()
    t.add_log("qemu c on a's socket", c.log)
    procs.wait_until(lambda: any(check.is_snapshot(e) for e in stream(br, "a")[n:]), 30,
                     "the new snapshot")
    after = stream(br, "a")[n:]
    ty = types(after)
    t.expect("bridge.vm.identity_changed" in ty and
             ty.index("bridge.vm.identity_changed") < [check.is_snapshot(e) for e in after].index(True),
             "identity_changed comes before the new QEMU's snapshot", ty)
    ch = [e for e in after if e["type"] == "bridge.vm.identity_changed"][0]["data"]
    t.expect(ch["previous"] == {"name": "guest-a", "uuid": UUID_A} and
             ch["current"] == {"name": "guest-c", "uuid": UUID_C},
             "it names the previous and the current QEMU", ch)
    t.expect(br.log_lines("[a]", "served by another QEMU"), "and the log says so")

    t.section("b never saw any of it")
    bs = stream(br, "b")
    t.expect(types(bs)[:2] == ["bridge.vm.connected", "qmp.vm.state"] and
             not [x for x in types(bs) if x in ("bridge.vm.disconnected", "bridge.vm.identity_changed",
                                              "qmp.block.io_error", "qmp.vm.stopped")],
             "b: connected and its snapshot, nothing of a", types(bs))
    rep = streamcheck.check(stream(br), expect_first={"a": 1, "b": 1})
    t.expect(rep.ok(), "every stream contiguous and ordered", str(rep))
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
