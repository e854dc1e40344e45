#!/usr/bin/python3
"""selfcheck.py - proves the raw QEMU scenarios the integration tests rely on,
with no bridge: only QEMU and qbtest.qmp. Not a ctest test on purpose.

Usage: /usr/bin/python3 tests/integration/qbtest/selfcheck.py [-n RUNS] [scenario ...]
Scenarios: enospc eio report job paused colo restart
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from qbtest import procs, qemu, util  # noqa: E402
from qbtest.qmp import QMP  # noqa: E402


def enospc(d):
    vm = qemu.Qemu(d, "vm1", disk="tmpfs").start()
    ev = vm.wait_enospc_pause()
    q = vm.qmp
    assert ev is not None, "no BLOCK_IO_ERROR before the pause"
    data = ev["data"]
    assert data["nospace"] is True and data["operation"] == "write" and data["action"] == "stop", data
    q.wait_event("STOP", 5)
    assert q.io_status("data") == "nospace"
    # Grow the tmpfs and resume: the guest must keep writing (re-issue fix).
    if vm.disk == "tmpfs":
        vm.grow_tmpfs("64M")
        q.cmd("cont")
        q.wait_event("RESUME", 5)
        time.sleep(1.0)
        st = q.status()["status"]
        assert st == "running", st
        assert q.io_status("data") == "ok"
    return "disk=%s reason=%r" % (vm.disk, data.get("reason"))


def eio(d):
    vm = qemu.Qemu(d, "vm1", disk="blkdebug-eio").start()
    ev = vm.wait_enospc_pause()
    assert ev is not None and ev["data"]["nospace"] is False, ev
    assert vm.qmp.io_status("data") == "failed", vm.qmp.io_status("data")
    return "reason=%r" % ev["data"]["reason"]


def report(d):
    vm = qemu.Qemu(d, "vm1", disk="blkdebug-enospc", werror="report").start()
    q = vm.qmp
    ev = q.wait_event("BLOCK_IO_ERROR", 20)
    assert ev["data"]["action"] == "report", ev
    # QEMU-NOTES says "no nospace key" with werror=report; 7.2.22 with an IDE
    # disk does send it (iostatus is enabled by the IDE device): don't rely on it.
    time.sleep(1.0)
    assert q.status()["status"] == "running"
    assert not any(e["event"] == "STOP" for e in q.events)
    return "data=%s io-status=%s" % (ev["data"], q.io_status("data"))


def job(d):
    vm = qemu.Qemu(d, "vm1", machine="none", guest=False, disk="job-tmpfs").start()
    q = vm.qmp
    q.cmd("blockdev-backup", job_id="job0", device="src", target="tgt", sync="full",
          on_target_error="stop")
    # A backup job also passes through "paused" right after "created": the
    # pause that counts is the one after the error.
    def paused_after_error():
        q.pump(0.1)
        names = [(e["event"], e.get("data", {}).get("status")) for e in q.events]
        if ("BLOCK_JOB_ERROR", None) in names:
            return ("JOB_STATUS_CHANGE", "paused") in names[names.index(("BLOCK_JOB_ERROR", None)):]
        return False
    procs.wait_until(paused_after_error, 30, "BLOCK_JOB_ERROR then JOB_STATUS_CHANGE paused")
    err = q.wait_event("BLOCK_JOB_ERROR", 0)
    paused = {"data": "paused"}
    jobs = q.cmd("query-block-jobs")
    return "err=%s paused=%s jobs=%s" % (err["data"], paused["data"],
                                         [(j["device"], j["status"], j.get("io-status")) for j in jobs])


def paused(d):
    vm = qemu.Qemu(d, "vm1", disk="tmpfs").start()
    vm.wait_enospc_pause()
    # A late client sees no replay, only the state.
    late = QMP(vm.qmp_path)
    late.pump(0.5)
    assert not late.events, late.events
    st = late.cmd("query-status")
    assert st["status"] == "io-error", st
    io = [b.get("io-status") for b in late.cmd("query-block") if b["device"] == "data"]
    late.close()
    return "status=%s io=%s" % (st["status"], io)


def colo(d):
    p, s = qemu.colo_pair(d)
    qemu.colo_start(p, s)
    qemu.colo_failover(p, s)
    pe = p.qmp.wait_event("COLO_EXIT", 30)
    se = s.qmp.wait_event("COLO_EXIT", 30)
    assert pe["data"]["mode"] == "primary" and se["data"]["mode"] == "secondary", (pe, se)
    return "primary=%s secondary=%s" % (pe["data"], se["data"])


def restart(d):
    vm = qemu.Qemu(d, "vm1", disk="plain").start()
    vm.wait_ready()
    c = QMP(vm.qmp_path)
    vm.kill()
    try:
        c._read(5)
        raise AssertionError("client not disconnected")
    except EOFError:
        pass
    c.close()
    vm.start().wait_ready()
    c = QMP(vm.qmp_path)
    st = c.cmd("query-status")["status"]
    c.close()
    return "after restart status=%s" % st


SCENARIOS = {f.__name__: f for f in (enospc, eio, report, job, paused, colo, restart)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    names = args.names or list(SCENARIOS)
    failures = 0
    for name in names:
        for i in range(args.n):
            d = util.make_tmpdir("qbsc-")
            t0 = time.monotonic()
            try:
                info = SCENARIOS[name](d)
                print("PASS %-8s run %d (%.1fs): %s" % (name, i + 1, time.monotonic() - t0, info))
            except Exception as e:  # report and go on with the next run
                failures += 1
                print("FAIL %-8s run %d: %s: %s" % (name, i + 1, type(e).__name__, e))
                for f in sorted(os.listdir(d)):
                    if f.endswith(".qemu.log"):
                        print("--- %s\n%s" % (f, util.tail(os.path.join(d, f))))
            finally:
                procs.cleanup_all()
            sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
