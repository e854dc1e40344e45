#!/usr/bin/python3
"""demo.py - qmp-bridge end to end, for a person watching (run by ./run-demo.sh).

Starts a broker (a private mosquitto, or with --kafka librdkafka's mock cluster as
its own process), a real QEMU VM (paused at first) whose 64 MiB thin disk sits on a
4 MiB private tmpfs, and the bridge with conf/demo.yaml (or conf/demo-kafka.yaml).
Then lets the guest run: it writes until the filesystem is full, QEMU pauses the VM
with an ENOSPC error, and the viewer below prints what an orchestrator sees on the
bus. Finally the example orchestrator (examples/orchestrator.py) notices the paused
VM from its state, grows the tmpfs, sends resize-and-cont, and the VM runs again.
It ends by itself and cleans up every process.

With --libvirt the VM is a domain of a private libvirtd (qbtest/libvirt.py: its own
mount and PID namespaces and /etc/libvirt, so a libvirt of the host is never
touched; needs root), the bridge reaches it through libvirt (conf/demo-libvirt.yaml),
the disk is called hda as libvirt names it, and the command's steps are libvirt calls.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))

from qbtest import bridge, kafka, libvirt, mqtt, procs, qemu, util  # noqa: E402

BRIDGE_ID = "demo-host"
VM = "demo-vm"


def human(env):
    """One readable line for an envelope."""
    d = env.get("data", {})
    t = env["type"]
    if t == "bridge.vm.connected":
        detail = "QEMU %s (%s)" % ((d.get("qemu") or {}).get("version", "?"), d["address"])
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
    elif t == "bridge.command.result":
        detail = "%s %s: %s [%s] run_state=%s" % (d.get("command"), d.get("command_id", "")[:8],
                                                  d.get("status"), " ".join(
                                                      "%s:%s" % (s["execute"], s["status"]) for s in d.get("steps", [])),
                                                  d.get("run_state"))
    else:
        detail = json.dumps(d)[:120]
    return "seq %s  %-22s %s" % (env["sequence"].lstrip("0") or "0", t, detail)


class MqttView:
    """The stream as an MQTT subscriber sees it."""

    def __init__(self, d):
        self.broker = mqtt.Broker(d).start()
        self.sub = mqtt.Subscriber(self.broker).start()
        print("* mosquitto listening on 127.0.0.1:%d; subscriber on qmp/# (MQTT 5, QoS 1);"
              " every envelope is checked against schema/v1" % self.broker.port)
        self.seen = []

    def config(self, text):
        return text.replace("@MQTT_PORT@", str(self.broker.port))

    def show_new(self):
        for m in self.sub.poll():
            if m.topic == "qmp/_probe":
                continue
            if m.topic.endswith("/command"):
                c = json.loads(m.raw)
                print("  %-48s %s %s from %s" % (m.topic, c["type"], c["id"][:8], c["source"]))
            elif m.topic.endswith("/result"):
                print("  %-48s %s" % (m.topic, human(json.loads(m.raw))))
            elif m.json is None:
                print("  %-48s %s" % (m.topic, m.raw.decode(errors="replace")))
            else:
                self.seen.append(m.json)
                print("  %-48s %s" % (m.topic, human(m.json)))
        sys.stdout.flush()

    def retained_state(self):
        m = self.sub.fetch_retained("qmp/%s/%s/state" % (BRIDGE_ID, VM))
        print("  %-48s %s" % (m.topic, human(m.json)))

    def orchestrator_args(self):
        return ["--mqtt", "127.0.0.1:%d" % self.broker.port]

    def finish(self):
        s = self.sub.fetch_retained("qmp/%s/status" % BRIDGE_ID)
        print("  %-48s %s (retained)" % (s.topic, s.raw.decode()))


class KafkaView:
    """The stream as a Kafka consumer (kcat) sees it."""

    def __init__(self, d):
        self.d = d
        self.mock = kafka.KafkaMock(d, topics=[("qmp.events", 3, 3), ("qmp.state", 3, 3),
                                               ("qmp.commands", 3, 3)]).start()
        self.kcat = kafka.KcatConsumer(self.mock.bootstrap, "qmp.events", d).start()
        print("* librdkafka mock cluster (3 brokers) at %s; kcat consuming qmp.events; every"
              " envelope is checked against schema/v1" % self.mock.bootstrap)
        self.shown = 0
        self.seen = []

    def config(self, text):
        return text.replace("@BROKERS@", self.mock.bootstrap)

    def show_new(self):
        recs = self.kcat.read()
        for r in recs[self.shown:]:
            env = kafka.structured_envelope(r)
            self.seen.append(env)
            print("  %-24s %s" % ("key " + r.key.decode() if isinstance(r.key, bytes) else "key %s" % r.key,
                                  human(env)))
        self.shown = len(recs)
        sys.stdout.flush()

    def retained_state(self):
        out = subprocess.run(["kcat", "-b", self.mock.bootstrap, "-C", "-q", "-e", "-o", "beginning",
                              "-f", "%k\t%s\n", "-t", "qmp.state"], stdout=subprocess.PIPE, text=True,
                             timeout=60).stdout
        latest = {}
        for line in out.splitlines():
            if "\t" in line:
                k, v = line.split("\t", 1)
                latest[k] = json.loads(v)
        for k, env in latest.items():
            print("  %-24s %s" % ("qmp.state " + k, human(env)))

    def orchestrator_args(self):
        return ["--kafka", self.mock.bootstrap]

    def finish(self):
        pass


class QemuVm:
    """The demo VM as a QEMU of its own, reached on its QMP socket."""

    conf = {False: "demo.yaml", True: "demo-kafka.yaml"}

    def __init__(self, d):
        self.vm = qemu.Qemu(d, VM, disk="tmpfs", extra=["-S"]).start().wait_ready()
        print("* QEMU %s started paused; thin 64 MiB disk on a %s (%s)" % (
            VM, "4 MiB private tmpfs" if self.vm.disk == "tmpfs" else "blkdebug ENOSPC injector",
            self.vm.disk))

    def config(self, text):
        return text.replace("@VM_SOCKET@", self.vm.qmp_path)

    def cont(self):
        self.vm.qmp.cmd("cont")

    def grow_command(self):
        return "nsenter -t %d -m mount -o remount,size=256M %s" % (self.vm.proc.pid, self.vm.fs_dir)

    def now_says(self):
        blk = [b for b in self.vm.qmp.cmd("query-block") if b["device"] == "data"][0]
        return "QEMU now says: %s, disk data is %d MiB" % (
            self.vm.qmp.status()["status"], blk["inserted"]["image"]["virtual-size"] >> 20)


class LibvirtVm:
    """The demo VM as a domain of a private libvirtd; the bridge reaches it through libvirt."""

    conf = {False: "demo-libvirt.yaml"}

    def __init__(self, d):
        self.lv = libvirt.Libvirtd(d).start()
        print("* private libvirtd %s (its own mount and PID namespaces, its own /etc/libvirt;"
              " log %s)" % (self.lv.uri, self.lv.libvirtd_log))
        self.dom = libvirt.define_writer_domain(self.lv, d, VM, start=False)
        self.dom.start(paused=True)
        print("* domain %s (%s) started paused; thin 64 MiB disk hda on a 4 MiB private tmpfs"
              " (%s)" % (VM, self.dom.uuid, self.dom.data_path))

    def config(self, text):
        return text.replace("@LIBVIRT_URI@", self.lv.uri)

    def cont(self):
        self.lv.virsh("resume", VM)

    def grow_command(self):
        return "nsenter -t %d -m mount -o remount,size=256M %s" % (self.lv.ns_pid, self.dom.fs_dir)

    def now_says(self):
        cap = [line.split()[1] for line in self.lv.virsh("domblkinfo", VM, "hda").splitlines()
               if line.startswith("Capacity:")][0]
        return "libvirt now says: %s, disk hda is %d MiB" % (self.dom.state(), int(cap) >> 20)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kafka", action="store_true", help="use the Kafka mock cluster instead of mosquitto")
    ap.add_argument("--libvirt", action="store_true",
                    help="run the VM under a private libvirtd (needs root) and bridge it through libvirt")
    args = ap.parse_args()
    if args.libvirt and args.kafka:
        ap.error("--libvirt runs with mosquitto only")
    if args.libvirt and os.geteuid() != 0:
        ap.error("--libvirt needs root: the private libvirtd lives in its own mount namespace")
    d = util.make_tmpdir("qb-demo-")
    print("qmp-bridge demo (%s%s; work dir %s)\n" % ("Kafka" if args.kafka else "MQTT",
                                                   ", libvirt" if args.libvirt else "", d))

    view = KafkaView(d) if args.kafka else MqttView(d)
    vm = LibvirtVm(d) if args.libvirt else QemuVm(d)

    conf_name = vm.conf[args.kafka]
    with open(os.path.join(SOURCE_DIR, "conf", conf_name)) as f:
        conf = view.config(vm.config(f.read()))
    br = bridge.Bridge(d, [], bridge_id=BRIDGE_ID)
    with open(br.conf, "w") as f:
        f.write(conf)
    br.start()
    print("* qmp-bridge started with conf/%s (log: %s)\n" % (conf_name, br.log))

    def watch(seconds, until):
        end = time.time() + seconds
        while time.time() < end:
            view.show_new()
            if until():
                view.show_new()
                return True
            time.sleep(0.1)
        return False

    def seen(type_, pred=lambda e: True):
        return any(e["type"] == type_ and pred(e) for e in view.seen)

    print("--- what an orchestrator sees on the bus ---")
    if not watch(30, lambda: seen("qmp.vm.state")):
        print("!! the bridge did not publish a state snapshot; its log:\n" + util.tail(br.log))
        return 1

    print("\n* letting the guest run: it writes sectors until the tmpfs is full ...\n")
    vm.cont()
    if not watch(30, lambda: seen("qmp.vm.stopped")):
        print("!! no qmp.vm.stopped arrived; bridge log:\n" + util.tail(br.log))
        return 1
    watch(1, lambda: False)

    print("\n--- a consumer that connects now reads the latest state ---")
    view.retained_state()

    print("\n* the example orchestrator (examples/orchestrator.py) takes over:")
    grow = vm.grow_command()
    orch = subprocess.Popen(["/usr/bin/python3", os.path.join(SOURCE_DIR, "examples", "orchestrator.py"),
                             "--grow", grow, "--grow-by", str(64 << 20), "--fixes", "1"]
                            + view.orchestrator_args())
    ok = watch(60, lambda: seen("bridge.command.result") and seen("qmp.vm.resumed", lambda e: int(
        e["sequence"]) > min(int(x["sequence"]) for x in view.seen if x["type"] == "qmp.vm.stopped")))
    try:
        orch.wait(timeout=15)
    except subprocess.TimeoutExpired:
        orch.kill()
    if not ok:
        print("!! the VM was not resumed; bridge log:\n" + util.tail(br.log))
        return 1
    print("\n* " + vm.now_says())

    print("\n* stopping the bridge")
    br.stop()
    watch(2, lambda: seen("bridge.vm.disconnected"))
    view.finish()
    print("\ndemo finished: ENOSPC reached the bus as io_error + stopped with its reason, and a"
          " resize-and-cont command brought the VM back.")
    return 0


if __name__ == "__main__":
    rc = 1
    try:
        rc = main()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the demo started", flush=True)
        rc = 130
    finally:
        procs.cleanup_all()
    sys.exit(rc)
