#!/usr/bin/python3
"""demo.py - qmp-bridge end to end, for a person watching (run by ./run-demo.sh).

Starts a private mosquitto on a free port, a real QEMU VM (paused at first) whose
64 MiB thin disk sits on a 4 MiB private tmpfs, and the bridge with conf/demo.yaml.
Then lets the guest run: it writes until the filesystem is full, QEMU pauses the VM
with an ENOSPC error, and the subscriber below prints what an orchestrator sees on
the bus. It ends by printing the retained state topic, and cleans up every process.
"""
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))

from qbtest import bridge, mqtt, procs, qemu, util  # noqa: E402

BRIDGE_ID = "demo-host"
VM = "demo-vm"


def human(m):
    """One readable line for an envelope."""
    d = m.json.get("data", {})
    t = m.json["type"]
    if t == "bridge.vm.connected":
        detail = "QEMU %s (%s)" % (d["qemu"]["version"], d["address"])
    elif t == "qmp.vm.state":
        disks = ", ".join("%s io_status=%s size=%s" % (x.get("device"), x.get("io_status", "-"),
                                                       x.get("size", "-")) for x in d.get("disks", []))
        detail = "run_state=%s running=%s%s disks: %s" % (
            d["run_state"], d["running"],
            (" cause=%s/%s" % (d["cause"].get("device"), d["cause"].get("errno"))) if d.get("cause") else "",
            disks or "none")
    elif t == "qmp.block.io_error":
        detail = "device=%s operation=%s action=%s errno=%s nospace=%s message=%r" % (
            d.get("device"), d.get("operation"), d.get("action"), d.get("errno"), d.get("nospace"),
            d.get("message"))
    elif t == "qmp.vm.stopped":
        c = d.get("cause") or {}
        detail = "reason=%s%s" % (d["reason"], (" cause: device=%s errno=%s" % (
            c.get("device"), c.get("errno"))) if c else "")
    else:
        detail = json.dumps(d)[:120]
    kind = "state " if m.topic.endswith("/state") else "event "
    return "%s seq %s  %-22s %s" % (kind, m.json["sequence"].lstrip("0") or "0", t, detail)


def show_new(sub):
    for m in sub.poll():
        if m.topic == "qmp/_probe":
            continue
        if m.json is None:
            print("  %-44s %s%s" % (m.topic, m.raw.decode(errors="replace"),
                                    "  (retained)" if m.retained else ""))
        else:
            print("  %-44s %s" % (m.topic, human(m)))
    sys.stdout.flush()


def watch(sub, seconds, until=None):
    end = time.time() + seconds
    while time.time() < end:
        show_new(sub)
        if until and until():
            show_new(sub)
            return True
        time.sleep(0.1)
    return False


def main():
    d = util.make_tmpdir("qb-demo-")
    print("qmp-bridge demo (work dir %s)\n" % d)

    broker = mqtt.Broker(d).start()
    print("* mosquitto listening on 127.0.0.1:%d" % broker.port)
    sub = mqtt.Subscriber(broker).start()
    print("* subscriber on qmp/# (MQTT 5, QoS 1); every envelope is checked against schema/v1")

    vm = qemu.Qemu(d, VM, disk="tmpfs", extra=["-S"]).start().wait_ready()
    print("* QEMU %s started paused; thin 64 MiB disk on a %s (%s)" % (
        VM, "4 MiB private tmpfs" if vm.disk == "tmpfs" else "blkdebug ENOSPC injector", vm.disk))

    with open(os.path.join(SOURCE_DIR, "conf", "demo.yaml")) as f:
        conf = f.read().replace("@VM_SOCKET@", vm.qmp_path).replace("@MQTT_PORT@", str(broker.port))
    br = bridge.Bridge(d, [], broker=broker, bridge_id=BRIDGE_ID)
    with open(br.conf, "w") as f:
        f.write(conf)
    br.start()
    print("* qmp-bridge started with conf/demo.yaml (log: %s)\n" % br.log)

    print("--- what an orchestrator sees on the bus ---")
    ok = watch(sub, 20, lambda: any(m.type == "qmp.vm.state" for m in sub.messages))
    if not ok:
        print("!! the bridge did not publish a state snapshot; its log:\n" + util.tail(br.log))
        return 1

    print("\n* letting the guest run: it writes sectors until the tmpfs is full ...\n")
    vm.qmp.cmd("cont")
    ok = watch(sub, 30, lambda: any(m.type == "qmp.vm.stopped" for m in sub.messages))
    watch(sub, 1)
    if not ok:
        print("!! no qmp.vm.stopped arrived; bridge log:\n" + util.tail(br.log))
        return 1

    print("\n--- a consumer that connects now reads the retained state ---")
    m = sub.fetch_retained("qmp/%s/%s/state" % (BRIDGE_ID, VM))
    print("  %-44s %s" % (m.topic, human(m)))
    print("\n* stopping the bridge (status goes offline, retained)")
    br.stop()
    watch(sub, 2, lambda: any(m.raw == b"offline" for m in sub.messages))
    s = sub.fetch_retained("qmp/%s/status" % BRIDGE_ID)
    print("  %-44s %s (retained)" % (s.topic, s.raw.decode()))
    print("\ndemo finished: ENOSPC reached the bus as io_error + stopped, with its reason.")
    return 0


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        procs.cleanup_all()
    sys.exit(rc)
