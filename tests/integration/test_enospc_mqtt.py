#!/usr/bin/python3
"""Real ENOSPC end to end: a guest fills a data disk on a 4M tmpfs, QEMU pauses
the VM, and an MQTT subscriber sees, for vm1, in this order:
bridge.vm.connected, qmp.vm.state, ..., qmp.block.io_error (enospc, write,
stop), qmp.vm.stopped (io-error, cause data/enospc); the retained state topic
ends at run_state io-error with the disk's io_status nospace; status topic is
"online" while running and "offline" after a clean shutdown. Every envelope is
schema-checked by the subscriber."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu  # noqa: E402

with check.Test("enospc_mqtt") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    vm = qemu.Qemu(d, "vm1", disk="tmpfs", extra=["-S"]).start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    t.ok("QEMU started paused (-S), data disk mode", vm.disk)
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], broker=broker).start()
    t.add_log("bridge", br.log)
    t.add_log("subscriber", sub.out)

    t.section("connect and snapshot")
    sub.wait_for(lambda m: m.topic == "qmp/test-host/status" and m.raw == b"online", 20,
                 "status online")
    t.ok("qmp/test-host/status says online")
    procs.wait_until(lambda: len(check.vm_envelopes(sub, "test-host", "vm1")) >= 2, 20,
                     "two envelopes of vm1")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    t.expect(env[0].type == "bridge.vm.connected", "first envelope of vm1 is bridge.vm.connected",
             check.summarize(env))
    t.expect(env[1].type == "qmp.vm.state", "second envelope of vm1 is qmp.vm.state", check.summarize(env))
    t.expect(env[1].data["run_state"] == "prelaunch" and env[1].data["running"] is False,
             "snapshot says prelaunch, not running", env[1].data)

    t.section("guest runs into ENOSPC")
    vm.qmp.cmd("cont")
    vm.wait_enospc_pause()
    t.ok("QEMU paused with io-error (checked on the test monitor)")
    sub.wait_for(lambda m: m.type == "qmp.vm.stopped" and m.json["subject"] == "vm1", 20,
                 "qmp.vm.stopped of vm1")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    i_err = check.first_index(env, lambda m: m.type == "qmp.block.io_error")
    i_stop = check.first_index(env, lambda m: m.type == "qmp.vm.stopped")
    t.expect(i_err >= 0, "qmp.block.io_error published", check.summarize(env))
    err = env[i_err].data
    t.expect(err["errno"] == "enospc" and err["operation"] == "write" and err["action"] == "stop"
             and err["device"] == "data" and err.get("nospace") is True,
             "io_error: device data, errno enospc, operation write, action stop, nospace", err)
    t.expect(i_err < i_stop, "io_error came before vm.stopped", (i_err, i_stop))
    stopped = env[i_stop].data
    t.expect(stopped["reason"] == "io-error", "vm.stopped reason io-error", stopped)
    cause = stopped.get("cause") or {}
    t.expect(cause.get("device") == "data" and cause.get("errno") == "enospc",
             "vm.stopped cause names device data and errno enospc", stopped)
    t.expect(check.first_index(env, lambda m: m.type.startswith("qmp.")) == 1,
             "bridge.vm.connected and qmp.vm.state came before any other qmp.* envelope")
    check.assert_increasing(env, "vm1 sequence")
    t.ok("vm1 sequence strictly increasing", [m.json["sequence"] for m in env][-1])

    t.section("retained state")

    m = check.wait_retained_state(sub, "test-host", "vm1", lambda d: d["run_state"] == "io-error"
                                  and check.disk(d, "data").get("io_status") == "nospace",
                                  "run_state io-error with disk data io_status nospace")
    t.ok("retained qmp/test-host/vm1/state: run_state io-error, disk data io_status nospace",
         m.json["sequence"])

    t.section("stdout transport")
    with open(br.events_path) as f:
        lines = [l for l in f if l.strip()]
    types = [json.loads(l)["type"] for l in lines]
    for l in lines:
        mqtt.validate_envelope(json.loads(l))
    t.expect("qmp.block.io_error" in types and "qmp.vm.stopped" in types,
             "events.jsonl (stdout transport) has io_error and vm.stopped, all valid", len(lines))

    t.section("clean shutdown")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    m = sub.fetch_retained("qmp/test-host/status")
    t.expect(m.raw == b"offline", "retained status is offline after shutdown", m.raw)
