#!/usr/bin/python3
"""EIO and werror=report through the bridge, two VMs on one bridge:
  eio: blkdebug injects errno 5, werror=stop -> qmp.block.io_error errno eio,
       nospace false, action stop, then qmp.vm.stopped (io-error, cause eio).
  rep: blkdebug injects errno 5, werror=report -> qmp.block.io_error errno eio,
       action report, repeatedly, and the VM never stops (no qmp.vm.stopped;
       QEMU still says running after three reported errors)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu, util  # noqa: E402

if util.VALGRIND:
    # QEMU does not throttle BLOCK_IO_ERROR: the werror=report guest retries its write
    # at once, ~700 events/s. Under memcheck the bridge's MQTT publishing falls ~90000
    # messages behind (back-pressure then pauses QMP reads), so eio's qmp.vm.stopped
    # reaches the subscriber only minutes later. Nothing to learn there; exit 77 = skipped.
    print("SKIP eio_report under valgrind: werror=report floods ~700 BLOCK_IO_ERROR/s, "
          "more than a memcheck-slowed bridge can publish over MQTT")
    sys.exit(77)

with check.Test("eio_report") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    eio = qemu.Qemu(d, "eio", disk="blkdebug-eio", extra=["-S"]).start().wait_ready()
    rep = qemu.Qemu(d, "rep", disk="blkdebug-eio", werror="report", extra=["-S"]).start().wait_ready()
    t.add_log("qemu eio", eio.log)
    t.add_log("qemu rep", rep.log)
    br = bridge.Bridge(d, [("eio", eio.qmp_path), ("rep", rep.qmp_path)], broker=broker).start()
    t.add_log("bridge", br.log)

    t.section("both VMs connected")
    for name in ("eio", "rep"):
        procs.wait_until(lambda: any(m.type == "qmp.vm.state" for m in check.vm_envelopes(sub, "test-host", name)),
                         20, "snapshot of " + name)
        t.ok("bridge.vm.connected + qmp.vm.state seen for", name)
    eio.qmp.cmd("cont")
    rep.qmp.cmd("cont")

    t.section("EIO with werror=stop")
    sub.wait_for(lambda m: m.type == "qmp.vm.stopped" and m.json["subject"] == "eio", 30, "eio stopped")
    env = check.vm_envelopes(sub, "test-host", "eio")
    i_err = check.first_index(env, lambda m: m.type == "qmp.block.io_error")
    i_stop = check.first_index(env, lambda m: m.type == "qmp.vm.stopped")
    t.expect(0 <= i_err < i_stop, "eio: io_error before vm.stopped", check.summarize(env))
    err = env[i_err].data
    t.expect(err["errno"] == "eio" and err.get("nospace") is False and err["action"] == "stop"
             and err["operation"] == "write" and err["device"] == "data",
             "eio: errno eio, nospace false, action stop, operation write, device data", err)
    stopped = env[i_stop].data
    t.expect(stopped["reason"] == "io-error" and (stopped.get("cause") or {}).get("errno") == "eio",
             "eio: vm.stopped reason io-error, cause errno eio", stopped)
    check.assert_increasing(env, "eio sequence")

    t.section("EIO with werror=report")
    # QEMU rate-limits BLOCK_IO_ERROR to about one a second: three of them mean
    # the guest went on writing after each reported error.
    errs = sub.wait_count(lambda m: m.type == "qmp.block.io_error" and m.json["subject"] == "rep", 3, 30,
                          "io_errors of rep")
    bad = [m.data for m in errs if not (m.data["action"] == "report" and m.data["errno"] == "eio"
                                        and m.data["operation"] == "write")]
    t.expect(not bad, "rep: all %d io_errors say action report, errno eio, operation write" % len(errs), bad[:3])
    st = rep.qmp.status()["status"]
    t.expect(st == "running", "rep: QEMU still running after the reported errors", st)
    env = check.vm_envelopes(sub, "test-host", "rep")
    t.expect(not any(m.type == "qmp.vm.stopped" for m in env), "rep: no qmp.vm.stopped published",
             check.summarize(env))
    check.assert_increasing(env, "rep sequence")
    t.ok("sequences strictly increasing on both VMs")
