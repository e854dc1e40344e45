"""cmdrig.py - a bridge taking commands over MQTT, and a way to see what they did.

    rig = cmdrig.CommandRig(t, 'commands: { enabled: true, allow: [stop, cont] }\\n').start()
    rig.publish(cmd, reply="r1")          # MQTT 5, with a Response Topic orch/r/r1
    rig.reply("r1")["data"]               # the bridge.command.result envelope
    rig.qmp_seen()                        # every QMP command the fake QEMU received

One private mosquitto, one VM "vm1" served by tests/tools/qmp_peer.py in idle mode
(answers, never sends events; --command-log records each command), one bridge with
the given extra YAML, and a mosquitto_sub recording every reply on orch/r/#.
"""
import json
import os
import subprocess
import time

from . import bridge, commands, mqtt, procs, util

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


class CommandRig:
    def __init__(self, t, extra_yaml, workdir=None):
        self.t = t
        self.dir = workdir or t.workdir
        self.extra_yaml = extra_yaml
        self.replies = os.path.join(self.dir, "replies.out")
        self.qlog = os.path.join(self.dir, "qmp-commands.jsonl")
        self.broker = None
        self.br = None

    def start_broker(self):
        self.broker = mqtt.Broker(self.dir).start()
        self.t.add_log("mosquitto", self.broker.log)
        procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-V", "mqttv5",
                     "-q", "1", "-t", "orch/r/#", "-F", "%t\t%x"], "reply_sub", stdout=self.replies)
        sock = os.path.join(self.dir, "vm1.qmp")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                     "--command-log", self.qlog], "qmp_peer", stderr=os.path.join(self.dir, "peer.log"))
        procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
        self.sock = sock
        return self

    def start_bridge(self, wait_subscribed=True):
        self.br = bridge.Bridge(self.dir, [("vm1", self.sock)], broker=self.broker,
                                extra_yaml=self.extra_yaml).start()
        self.t.add_log("bridge", self.br.log)
        self.br.wait_log("[vm1] state resynced")
        if wait_subscribed:
            self.br.wait_log("receiving commands")
            time.sleep(0.5)  # the bridge's subscription reaches the broker
        return self

    def start(self):
        return self.start_broker().start_bridge()

    def publish(self, cmd, reply=None, retain=False, vm="vm1"):
        """Publishes cmd (dict, str or bytes) on qmp/test-host/<vm>/command, QoS 1, MQTT 5."""
        if not retain:
            commands.mqtt_publish(self.broker.port, "test-host", vm, cmd,
                                  response_topic=reply and "orch/r/" + reply, correlation=reply)
            return
        payload = json.dumps(cmd) if isinstance(cmd, dict) else cmd
        payload = payload.encode() if isinstance(payload, str) else payload
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-V", "mqttv5",
                "-q", "1", "-r", "-t", "qmp/test-host/%s/command" % vm, "-s"]
        if reply:
            argv += ["-D", "publish", "response-topic", "orch/r/" + reply]
        subprocess.run(argv, input=payload, check=True, timeout=15)

    def _find_reply(self, name):
        try:
            with open(self.replies) as f:
                for line in f:
                    tp, hx = line.rstrip("\n").split("\t", 1)
                    if tp == "orch/r/" + name:
                        return json.loads(bytes.fromhex(hx))
        except FileNotFoundError:
            pass
        return None

    def reply(self, name, timeout=15):
        """The result envelope published on orch/r/<name>; waits for it."""
        return procs.wait_until(lambda: self._find_reply(name), timeout, "a reply on orch/r/" + name)

    def has_reply(self, name):
        return self._find_reply(name) is not None

    def qmp_seen(self):
        """The "execute" of every command the fake QEMU received, in order."""
        try:
            with open(self.qlog) as f:
                return [json.loads(l)["execute"] for l in f if l.strip()]
        except FileNotFoundError:
            return []
