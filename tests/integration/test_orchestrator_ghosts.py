#!/usr/bin/python3
"""examples/orchestrator.py and VMs that are disconnected or gone (MQTT, real mosquitto).

The test plays the bridge: it publishes retained qmp.vm.state envelopes on
qmp/h1/<vm>/state and watches the commands the orchestrator sends on qmp/h1/<vm>/command;
the orchestrator's grow hook appends $VM to a file. In order, on one broker:
  vm0  io-error (ENOSPC), connected: true             -> one command (the orchestrator is
                                                         subscribed and acting)
  vm1  io-error (ENOSPC), connected: false            -> ignored: the last known state of
                                                         a VM whose session ended
  vm3  io-error (ENOSPC), connected: true, sequence 5 -> one command
  vm3  an empty retained message (the VM was removed)
  vm3  io-error (ENOSPC), connected: true, sequence 2 -> one more command: a VM of that name
                                                         is a new VM (a new epoch numbers
                                                         from the start), not a replay
The broker delivers one subscription's messages in publish order, so when vm3's second
command arrives everything before it has been handled: no clock is involved. Checked: the
hook ran for vm0, vm3, vm3 and never for vm1; commands went to vm0 and twice to vm3."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, mqtt, procs, util  # noqa: E402

ORCH = os.path.join(util.SOURCE_DIR, "examples", "orchestrator.py")


def state(vm, seq, connected):
    """A qmp.vm.state envelope as the bridge h1 publishes it: paused on ENOSPC."""
    return {"specversion": "1.0", "id": "661f9cc70e608-%d" % seq, "source": "qmp-bridge://h1/" + vm,
            "type": "qmp.vm.state", "subject": vm, "time": "2026-12-06T16:50:00.000000Z",
            "datacontenttype": "application/json",
            "dataschema": "file:///usr/share/qmp-bridge/schema/v1/qmp.vm.state.json",
            "sequence": "%020d" % seq, "partitionkey": "h1/" + vm, "bridge": "h1",
            "data": {"run_state": "io-error", "running": False, "reason": "io-error",
                     "connected": connected, "uuid": None,
                     "cause": {"device": "data", "errno": "enospc", "io_status": "nospace"},
                     "qemu": {"version": "7.2.22"}, "jobs": [], "colo": None,
                     "disks": [{"device": "data", "io_status": "nospace", "size": 67108864}]}}


def publish(broker, vm, env):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                    "-q", "1", "-r", "-t", "qmp/h1/%s/state" % vm]
                   + (["-m", json.dumps(env)] if env is not None else ["-n"]), check=True)


with check.Test("orchestrator_ghosts") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    cmds = mqtt.Subscriber(broker, name="commands").start()  # qmp/#: it waits for its probe
    grown = os.path.join(d, "grown")
    log = os.path.join(d, "orchestrator.log")
    publish(broker, "vm0", state("vm0", 3, True))
    orch = procs.spawn(["/usr/bin/python3", ORCH, "--mqtt", "127.0.0.1:%d" % broker.port,
                        "--grow", "echo $VM >> %s" % grown], "orchestrator", stdout=log, stderr=log)
    t.add_log("orchestrator", log)

    def commands(vm):
        cmds.poll()
        return [json.loads(m.raw) for m in cmds.messages if m.topic == "qmp/h1/%s/command" % vm]

    procs.wait_until(lambda: commands("vm0"), 30, "the orchestrator's command for vm0")
    t.ok("vm0 (connected, paused on ENOSPC): resize-and-cont sent", commands("vm0")[0]["type"])

    t.section("a disconnected VM's last state is not acted on; a cleared VM is forgotten")
    publish(broker, "vm1", state("vm1", 7, False))
    publish(broker, "vm3", state("vm3", 5, True))
    procs.wait_until(lambda: commands("vm3"), 30, "the first command for vm3")
    publish(broker, "vm3", None)
    publish(broker, "vm3", state("vm3", 2, True))
    procs.wait_until(lambda: len(commands("vm3")) >= 2, 30, "a second command for vm3",
                     on_fail=lambda: print(util.tail(log)))
    with open(grown) as f:
        hooks = f.read().split()
    t.expect(hooks == ["vm0", "vm3", "vm3"],
             "the grow hook ran for vm0, vm3, vm3 and never for vm1 (connected: false)", hooks)
    t.expect(not commands("vm1"), "no command for vm1", commands("vm1"))
    t.expect([c["subject"] for c in commands("vm3")] == ["vm3", "vm3"],
             "vm3 removed (empty retained state) and back: acted on again", commands("vm3"))
    # Stopped as a supervisor would (SIGTERM): its bus reader goes with it, not orphaned
    # (mosquitto_sub kept running, reconnecting, after every earlier run of this test).
    children = subprocess.run(["pgrep", "-P", str(orch.pid)], stdout=subprocess.PIPE,
                              text=True).stdout.split()
    t.expect(children, "the orchestrator runs its bus reader", children)
    procs.stop(orch)
    procs.wait_until(lambda: not any(os.path.exists("/proc/%s" % c) for c in children), 10,
                     "the orchestrator's bus reader to end with it")
    t.ok("SIGTERM: the orchestrator's bus reader ended with it")
    cmds.stop()
    broker.stop()
