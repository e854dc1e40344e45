#!/usr/bin/python3
"""QEMU dies (SIGKILL) and comes back on the same socket path: the bridge
publishes bridge.vm.disconnected (with a reason), keeps retrying, and on the
new QEMU publishes bridge.vm.connected and a fresh qmp.vm.state, with the
VM's sequence still increasing across the restart."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu  # noqa: E402


def types(env):
    return [m.type for m in env]


with check.Test("qemu_restart") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    vm = qemu.Qemu(d, "vm1", disk="plain").start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], broker=broker).start()
    t.add_log("bridge", br.log)

    t.section("first session")
    procs.wait_until(lambda: "qmp.vm.state" in types(check.vm_envelopes(sub, "test-host", "vm1")), 20,
                     "first snapshot")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    t.expect(types(env)[:2] == ["bridge.vm.connected", "qmp.vm.state"], "connected, then state", types(env))
    t.expect(env[1].data["run_state"] == "running", "first snapshot: running", env[1].data["run_state"])
    n_before = len(env)

    t.section("kill QEMU")
    vm.kill()
    t.ok("QEMU killed with SIGKILL")
    m = sub.wait_for(lambda m: m.type == "bridge.vm.disconnected" and m.json["subject"] == "vm1", 20,
                     "bridge.vm.disconnected")
    t.expect(isinstance(m.data.get("reason"), str) and m.data["reason"],
             "bridge.vm.disconnected carries a reason", m.data)
    t.expect(br.alive(), "bridge still running")

    t.section("restart QEMU on the same socket")
    vm.start().wait_ready()
    procs.wait_until(lambda: any(check.is_snapshot(m) for m in check.vm_envelopes(sub, "test-host", "vm1")[n_before:]),
                     30, "second snapshot",
                     on_fail=lambda: print(br.tail()))
    env = check.vm_envelopes(sub, "test-host", "vm1")
    after = env[n_before:]
    i_disc = check.first_index(after, lambda m: m.type == "bridge.vm.disconnected")
    i_conn = check.first_index(after, lambda m: m.type == "bridge.vm.connected")
    i_state = check.first_index(after, check.is_snapshot, max(i_conn, 0))
    t.expect(0 <= i_disc < i_conn < i_state, "disconnected, connected, state in that order", types(after))
    t.expect(not any(m.type.startswith("qmp.") for m in after[i_conn + 1:i_state]),
             "no qmp.* envelope between connected and the fresh state", types(after))
    t.expect(after[i_state].data["run_state"] == "running", "fresh snapshot after restart says running",
             after[i_state].data["run_state"])
    check.assert_increasing(env, "vm1 sequence")
    t.ok("sequence strictly increasing across the restart",
         "%s -> %s" % (env[0].json["sequence"], env[-1].json["sequence"]))
    t.expect(len(br.log_lines("[vm1]")) > 0, "bridge log has [vm1] lines", br.tail(5))
