#!/usr/bin/python3
"""COLO failover through the bridge: a primary and a secondary QEMU (no disks,
no NICs) enter COLO, then the heartbeat is declared lost on both sides. The
bridge, connected to both, publishes qmp.colo.exit on each: mode primary on
the primary, mode secondary on the secondary, reason request or error (QEMU
sometimes says error after a requested failover, see QEMU-NOTES). The pauses
of the switchover and the failover, which QEMU undoes within milliseconds,
carry the reason their MIGRATION status implies, never unknown
(qbtest.colo_check). Checkpoints are in test_colo_checkpoints.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, colo_check, mqtt, procs, qemu  # noqa: E402

with check.Test("colo_exit") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    primary, secondary = qemu.colo_pair(d)
    t.add_log("qemu primary", primary.log)
    t.add_log("qemu secondary", secondary.log)
    br = bridge.Bridge(d, [("primary", primary.qmp_path), ("secondary", secondary.qmp_path)],
                       broker=broker).start()
    t.add_log("bridge", br.log)
    for name in ("primary", "secondary"):
        procs.wait_until(lambda: any(m.type == "qmp.vm.state" for m in check.vm_envelopes(sub, "test-host", name)),
                         20, "snapshot of " + name)
        t.ok("bridge connected to", name)

    t.section("enter COLO and fail over")
    qemu.colo_start(primary, secondary)
    t.ok("both QEMUs report COLO mode (query-colo-status)")
    qemu.colo_failover(primary, secondary)
    t.ok("x-colo-lost-heartbeat sent to both")
    # QEMU's own word first, on the test's monitor: a missing qmp.colo.exit then
    # says whether QEMU never raised COLO_EXIT or the bridge lost it.
    for vm in (primary, secondary):
        try:
            ev = vm.qmp.wait_event("COLO_EXIT", 30)
        except TimeoutError as e:
            raise check.CheckFailed("QEMU %s itself raised no COLO_EXIT after x-colo-lost-heartbeat"
                                    " (its failover did not finish; not the bridge): %s;"
                                    " query-colo-status: %s"
                                    % (vm.name, e, vm.qmp.cmd("query-colo-status")))
        except EOFError as e:
            # Seen in CI under load (the secondary): QEMU itself went away, and its
            # exit status and log say why; the bridge only reads its other monitor.
            raise check.CheckFailed("QEMU %s ended after x-colo-lost-heartbeat, before its"
                                    " COLO_EXIT (not the bridge): %s; QEMU %s"
                                    % (vm.name, e, vm.fate()))
        t.ok("QEMU %s raised COLO_EXIT" % vm.name, ev["data"])
    for name in ("primary", "secondary"):
        m = sub.wait_for(lambda m: m.type == "qmp.colo.exit" and m.json["subject"] == name, 30,
                         "qmp.colo.exit of " + name)
        t.expect(m.data["mode"] == name and m.data["reason"] in ("request", "error"),
                 "%s: qmp.colo.exit mode %s, reason request|error" % (name, name), m.data)
        check.assert_increasing(check.vm_envelopes(sub, "test-host", name), name + " sequence")
    t.ok("sequences increasing on both VMs")

    t.section("every STOP has its reason")
    for name in ("primary", "secondary"):
        def failed_over():
            types = [m.type for m in check.vm_envelopes(sub, "test-host", name)
                     if not check.on_state_topic(m)]
            # The failover's RESUME may come before or after COLO_EXIT; a secondary failed
            # over right after entering COLO may not stop at all (seen once in six runs; its
            # STOP would come before the COLO_EXIT awaited above).
            if "qmp.vm.stopped" not in types:
                return True
            return "qmp.vm.resumed" in types and \
                types[::-1].index("qmp.vm.resumed") < types[::-1].index("qmp.vm.stopped")
        procs.wait_until(failed_over, 30, "a RESUME after the last STOP of " + name)
        envs = [m.json for m in check.vm_envelopes(sub, "test-host", name) if not check.on_state_topic(m)]
        colo_check.check_stop_reasons(t, name, sorted(envs, key=lambda e: int(e["sequence"])))
