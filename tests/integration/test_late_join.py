#!/usr/bin/python3
"""Late join: the VM is already paused on a real ENOSPC before the bridge
starts, so QEMU will never send the BLOCK_IO_ERROR/STOP again. The bridge's
connect-time snapshot must carry it: the first envelopes of vm1 are
bridge.vm.connected then qmp.vm.state with run_state io-error and the data
disk's io_status nospace, and the retained state topic says the same. Then the
tmpfs grows, the test resumes the VM and qmp.vm.resumed follows."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu  # noqa: E402

with check.Test("late_join") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    vm = qemu.Qemu(d, "vm1", disk="tmpfs").start()
    t.add_log("qemu vm1", vm.log)
    vm.wait_enospc_pause()
    t.ok("VM paused on ENOSPC before the bridge starts (disk mode %s)" % vm.disk)

    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], broker=broker).start()
    t.add_log("bridge", br.log)
    t.section("snapshot")
    procs.wait_until(lambda: any(m.type == "qmp.vm.state" for m in check.vm_envelopes(sub, "test-host", "vm1")),
                     20, "snapshot of vm1")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    t.expect(env[0].type == "bridge.vm.connected", "first envelope is bridge.vm.connected", check.summarize(env))
    first_qmp = env[check.first_index(env, lambda m: m.type.startswith("qmp."))]
    t.expect(first_qmp.type == "qmp.vm.state", "first qmp.* envelope is qmp.vm.state", check.summarize(env))
    data = first_qmp.data
    t.expect(data["run_state"] == "io-error" and data["running"] is False,
             "snapshot: run_state io-error, not running", data)
    t.expect(check.disk(data, "data").get("io_status") == "nospace", "snapshot: disk data io_status nospace",
             data.get("disks"))
    cause = data.get("cause") or {}
    t.expect(cause.get("device") == "data" and cause.get("errno") == "enospc",
             "snapshot cause: device data, errno enospc", data.get("cause"))
    m = check.wait_retained_state(sub, "test-host", "vm1",
                                  lambda dd: dd["run_state"] == "io-error"
                                  and check.disk(dd, "data").get("io_status") == "nospace",
                                  "io-error / nospace")
    t.ok("retained state: io-error, disk nospace", m.json["sequence"])

    t.section("resume after more space")
    if vm.disk != "tmpfs":
        # blkdebug's injected ENOSPC would fail the resumed write again: nothing to grow
        procs.cleanup_all()
        print("SKIP late_join's resume: no private tmpfs here (needs root and unshare -m); "
              "the snapshot checks above passed")
        sys.exit(77)
    vm.grow_tmpfs("64M")
    t.ok("tmpfs grown to 64M")
    vm.qmp.cmd("cont")
    sub.wait_for(lambda m: m.type == "qmp.vm.resumed" and m.json["subject"] == "vm1", 20, "qmp.vm.resumed")
    t.ok("qmp.vm.resumed published after cont")
    m = check.wait_retained_state(sub, "test-host", "vm1", lambda dd: dd["run_state"] == "running",
                                  "running")
    t.ok("retained state: running again", m.json["sequence"])
    check.assert_increasing(check.vm_envelopes(sub, "test-host", "vm1"), "vm1 sequence")
    t.ok("vm1 sequence increasing")
