#!/usr/bin/python3
"""A block job error through the bridge: QEMU with -machine none, a backup job
from an 8M source onto a target on a full 4M tmpfs (on-target-error=stop).
The subscriber must see qmp.block.job_error (job job0, operation write, action
stop) and afterwards qmp.job.status {job0, paused}; the job statuses of job0
arrive in QEMU's order (created first, paused after the error)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu  # noqa: E402

with check.Test("block_job_error") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    vm = qemu.Qemu(d, "vm1", machine="none", guest=False, disk="job-tmpfs").start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], broker=broker).start()
    t.add_log("bridge", br.log)
    procs.wait_until(lambda: any(m.type == "qmp.vm.state" for m in check.vm_envelopes(sub, "test-host", "vm1")),
                     20, "snapshot of vm1")
    t.ok("bridge connected to vm1 (target disk mode %s)" % vm.disk)

    t.section("backup onto a full target")
    vm.qmp.cmd("blockdev-backup", job_id="job0", device="src", target="tgt", sync="full",
               on_target_error="stop")
    vm.qmp.wait_event("BLOCK_JOB_ERROR", 30)
    t.ok("QEMU raised BLOCK_JOB_ERROR (test monitor)")
    sub.wait_for(lambda m: m.type == "qmp.block.job_error", 20, "qmp.block.job_error")

    def paused_after_error():
        env = check.vm_envelopes(sub, "test-host", "vm1")
        i = check.first_index(env, lambda m: m.type == "qmp.block.job_error")
        j = check.first_index(env, lambda m: m.type == "qmp.job.status" and m.data["status"] == "paused", i)
        return env if j > i >= 0 else None
    env = procs.wait_until(paused_after_error, 20, "qmp.job.status paused after the job error")
    err = env[check.first_index(env, lambda m: m.type == "qmp.block.job_error")].data
    t.expect(err["job"] == "job0" and err["operation"] == "write" and err["action"] == "stop",
             "job_error: job job0, operation write, action stop", err)
    statuses = [m.data["status"] for m in env if m.type == "qmp.job.status" and m.data["job"] == "job0"]
    t.expect(statuses[0] == "created" and "paused" in statuses, "job0 statuses in QEMU order", statuses)
    check.assert_increasing(env, "vm1 sequence")
    t.ok("vm1 sequence strictly increasing")

    t.section("retained state shows the job")
    m = check.wait_retained_state(sub, "test-host", "vm1",
                                  lambda dd: any(j.get("id") == "job0" for j in dd.get("jobs") or []),
                                  "job0 in jobs[]")
    t.ok("retained state lists job0", m.json["data"]["jobs"])
