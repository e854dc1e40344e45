#!/usr/bin/python3
"""orchestrator.py - an example of the orchestrator side of qmp-bridge.

Watches the bus for VMs paused on a full disk and fixes them:
  1. a qmp.vm.stopped event with reason io-error and cause errno enospc, or a
     qmp.vm.state (retained on MQTT / compacted on Kafka) that says the same:
     the state is what lets this orchestrator act on VMs that paused before it
     started;
  2. runs the --grow hook (a shell command; $VM, $DEVICE and $BRIDGE are set)
     that makes room on the storage;
  3. sends resize-and-cont (grow_by --grow-by bytes) to the bridge that owns the
     VM, signed when --hmac-key-file is given;
  4. prints the bridge.command.result.
One command per VM at a time. A state with connected: false (the VM's QMP session ended;
the rest is the last state known) is never acted on: the VM may be gone or back in another
state, so it waits for the next session's snapshot (connected: true). A cleared state (an
empty retained MQTT message, a Kafka tombstone: the VM was removed) forgets the VM. Talks MQTT through mosquitto_sub/mosquitto_pub and
Kafka through kcat, so it needs nothing beyond Debian's packages.

  orchestrator.py --mqtt 127.0.0.1:1883 --grow 'lvextend -L+1G /dev/vg/$VM'
  orchestrator.py --kafka broker1:9092 --grow '...' [--events-topic qmp.events]
"""
import argparse
import datetime
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import uuid


def log(msg):
    print("orchestrator: " + msg, flush=True)


def canonical(cmd):
    """The bytes a command's signature covers (docs/commands-and-security.md, Signing): the
    command without "signature", keys sorted, no whitespace, UTF-8, integers only (no
    floats)."""
    body = {k: v for k, v in cmd.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign(cmd, key):
    """cmd with "signature" set: hex HMAC-SHA256 of canonical(cmd) with key (the key file's bytes)."""
    return dict(cmd, signature=hmac.new(key, canonical(cmd), hashlib.sha256).hexdigest())


def command(vm, bridge, device, grow_by, key):
    cmd = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "example-orchestrator",
           "type": "qmp.command.resize-and-cont", "subject": vm, "bridge": bridge,
           "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
           "data": {"device": device, "grow_by": grow_by}}
    return sign(cmd, key) if key else cmd


class Bus:
    """Reads envelopes from the bus and sends commands; MQTT or Kafka."""

    def __init__(self, args):
        self.args = args
        if args.mqtt:
            host, port = args.mqtt.rsplit(":", 1)
            self.host, self.port = host, port
            self.reader = subprocess.Popen(
                ["mosquitto_sub", "-h", host, "-p", port, "-V", "mqttv5", "-q", "1",
                 "-t", args.prefix + "/+/+/event/qmp.vm.stopped",
                 "-t", args.prefix + "/+/+/event/bridge.command.result",
                 "-t", args.prefix + "/+/+/state", "-F", "%t %x"],
                stdout=subprocess.PIPE, text=True)
        else:
            # Live events from now on; the compacted state topic tells what happened before.
            self.reader = subprocess.Popen(
                ["kcat", "-b", args.kafka, "-C", "-u", "-q", "-E", "-o", "end", "-f", "%s\n",
                 "-t", args.events_topic], stdout=subprocess.PIPE, text=True)

    def initial_states(self):
        """Kafka: the latest qmp.vm.state of every VM, read once from the compacted topic
        (keyed <bridge>/<vm>; a tombstone, printed as NULL with -Z, means the VM is gone)."""
        if self.args.mqtt:
            return []  # MQTT delivers the retained state topics on subscribe
        r = subprocess.run(["kcat", "-b", self.args.kafka, "-C", "-q", "-E", "-e", "-Z", "-o",
                            "beginning", "-f", "%k\t%s\n", "-t", self.args.state_topic],
                           stdout=subprocess.PIPE, text=True, timeout=60)
        latest = {}
        for line in r.stdout.splitlines():
            key, _, value = line.partition("\t")
            if value == "NULL":
                latest.pop(key, None)
                continue
            try:
                latest[key] = json.loads(value)
            except ValueError:
                continue
        return list(latest.values())

    def envelopes(self):
        """Envelopes as dicts; a cleared retained state as {"cleared": True, bridge, subject}."""
        yield from self.initial_states()
        for line in self.reader.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                if not self.args.mqtt:
                    yield json.loads(line)
                    continue
                topic, _, payload = line.partition(" ")
                if not payload:  # an empty retained message on <prefix>/<bridge>/<vm>/state
                    parts = topic.split("/")
                    yield {"cleared": True, "bridge": parts[-3], "subject": parts[-2]}
                    continue
                yield json.loads(bytes.fromhex(payload))
            except (ValueError, IndexError):
                continue

    def send(self, cmd):
        payload = json.dumps(cmd).encode()
        if self.args.mqtt:
            topic = "%s/%s/%s/command" % (self.args.prefix, cmd["bridge"], cmd["subject"])
            subprocess.run(["mosquitto_pub", "-h", self.host, "-p", self.port, "-V", "mqttv5",
                            "-q", "1", "-t", topic, "-s"], input=payload, check=True)
        else:
            subprocess.run(["kcat", "-b", self.args.kafka, "-P", "-t", self.args.commands_topic,
                            "-k", "%s/%s" % (cmd["bridge"], cmd["subject"])],
                           input=payload, check=True)

    def close(self):
        self.reader.terminate()
        self.reader.wait()


def enospc_cause(env):
    """(device) when the envelope says this VM is paused on ENOSPC, else None."""
    d = env.get("data") or {}
    if env.get("type") == "qmp.vm.stopped" and d.get("reason") == "io-error":
        cause = d.get("cause") or {}
    elif env.get("type") == "qmp.vm.state" and d.get("run_state") == "io-error" \
            and d.get("connected") is not False:
        cause = d.get("cause") or {}
    else:
        return None
    if cause.get("errno") != "enospc" and cause.get("io_status") != "nospace":
        return None
    return cause.get("device") or cause.get("node_name")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bus = ap.add_mutually_exclusive_group(required=True)
    bus.add_argument("--mqtt", metavar="HOST:PORT")
    bus.add_argument("--kafka", metavar="BOOTSTRAP")
    ap.add_argument("--prefix", default="qmp", help="MQTT topic prefix (default qmp)")
    ap.add_argument("--events-topic", default="qmp.events")
    ap.add_argument("--state-topic", default="qmp.state")
    ap.add_argument("--commands-topic", default="qmp.commands")
    ap.add_argument("--grow", required=True, help="shell command that makes room ($VM, $DEVICE, $BRIDGE)")
    ap.add_argument("--grow-by", type=int, default=64 << 20, help="bytes to add to the disk (default 64 MiB)")
    ap.add_argument("--hmac-key-file", help="sign commands with this key")
    ap.add_argument("--fixes", type=int, default=0, help="exit after this many results (0: run forever)")
    args = ap.parse_args()
    key = None
    if args.hmac_key_file:
        with open(args.hmac_key_file, "rb") as f:
            key = f.read().rstrip(b"\n")

    # SIGTERM (systemd, a supervisor) ends it like Ctrl-C, through the finally below, so the
    # bus reader it started goes with it instead of running on, orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    b = Bus(args)
    busy = {}  # (bridge, vm) -> command id in flight
    seen_seq = {}  # (bridge, vm) -> newest sequence acted on, so old states are not replayed
    results = 0
    log("watching %s for VMs paused on ENOSPC" % (args.mqtt or args.kafka))
    try:
        for env in b.envelopes():
            who = (env.get("bridge"), env.get("subject"))
            if env.get("cleared"):
                # removed from its bridge: a VM of that name later starts afresh
                if who in seen_seq or who in busy:
                    log("%s/%s is gone: forgetting it" % who)
                seen_seq.pop(who, None)
                busy.pop(who, None)
                continue
            if env.get("type") == "bridge.command.result":
                d = env["data"]
                if busy.get(who) == d.get("command_id"):
                    del busy[who]
                    log("%s/%s: %s -> %s %s" % (who[0], who[1], d.get("command"), d.get("status"),
                        " ".join("%s:%s" % (s["execute"], s["status"]) for s in d.get("steps", []))))
                    results += 1
                    if args.fixes and results >= args.fixes:
                        return 0
                continue
            device = enospc_cause(env)
            seq = int(env.get("sequence", "0"))
            if device is None or who in busy or seq <= seen_seq.get(who, 0):
                continue
            seen_seq[who] = seq
            log("%s/%s is paused: disk %s is out of space (seen in %s)" % (who[0], who[1], device, env["type"]))
            hook = subprocess.run(args.grow, shell=True, env=dict(os.environ, VM=who[1], DEVICE=device,
                                                                BRIDGE=who[0]))
            if hook.returncode != 0:
                log("grow hook failed (%d): not resuming %s" % (hook.returncode, who[1]))
                continue
            cmd = command(who[1], who[0], device, args.grow_by, key)
            busy[who] = cmd["id"]
            b.send(cmd)
            log("sent resize-and-cont %s (+%d bytes) for %s/%s" % (cmd["id"], args.grow_by, who[0], who[1]))
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
