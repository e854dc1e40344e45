"""cmdrig.py - a bridge taking commands over MQTT, and a way to see what they did.

    rig = cmdrig.CommandRig(t, 'commands: { enabled: true, allow: [stop, cont] }\\n').start()
    rig.publish(cmd, reply="r1")          # MQTT 5, with a Response Topic orch/r/r1
    rig.result(cmd["id"])["data"]         # its bridge.command.result, on whichever topic it came
    rig.qmp_seen()                        # every QMP command the fake QEMU received

One private mosquitto, one VM "vm1" served by tests/tools/qmp_peer.py in idle mode
(answers, never sends events; --command-log records each command), one bridge with
the given extra YAML (its MQTT transport speaks mqtt_protocol, "5" or "3.1.1"), and a
mosquitto_sub recording every reply on orch/r/# and qmp/test-host/+/result.
"""
import json
import os
import subprocess
import time

from . import bridge, commands, mqtt, procs, util

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


def write_key(workdir, key):
    """Writes key (bytes) and a newline to <workdir>/commands.key, mode 0600; returns its path."""
    path = os.path.join(workdir, "commands.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key + b"\n")
    os.close(fd)
    return path


class CommandRig:
    def __init__(self, t, extra_yaml, workdir=None, mqtt_protocol="5"):
        self.t = t
        self.dir = workdir or t.workdir
        self.extra_yaml = extra_yaml
        self.protocol = mqtt_protocol
        self.replies = os.path.join(self.dir, "replies.out")
        self.qlog = os.path.join(self.dir, "qmp-commands.jsonl")
        self.broker = None
        self.br = None

    def start_broker(self):
        self.broker = mqtt.Broker(self.dir).start()
        self.t.add_log("mosquitto", self.broker.log)
        procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.broker.port), "-V", "mqttv5",
                     "-q", "1", "-t", "orch/r/#", "-t", "qmp/test-host/+/result", "-F", "%t\t%x"],
                    "reply_sub", stdout=self.replies)
        sock = os.path.join(self.dir, "vm1.qmp")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                     "--command-log", self.qlog], "qmp_peer", stderr=os.path.join(self.dir, "peer.log"))
        procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
        self.sock = sock
        return self

    def start_bridge(self):
        """Starts the bridge (again, after br.stop(): same config, log appended) and waits
        until it has vm1's snapshot and its command subscription."""
        self.br = bridge.Bridge(self.dir, [("vm1", self.sock)], broker=self.broker,
                                extra_yaml=self.extra_yaml)
        if self.protocol != "5":
            self.br.yaml = self.br.yaml.replace("qos: 1 }", "qos: 1, protocol: %s }"
                                                % json.dumps(self.protocol), 1)
            with open(self.br.conf, "w") as f:
                f.write(self.br.yaml)
        waits = ("[vm1] state resynced", "receiving commands")
        seen = {n: len(self.br.log_lines(n)) for n in waits}
        self.br.start()
        self.t.add_log("bridge", self.br.log)
        for n in waits:
            procs.wait_until(lambda n=n: len(self.br.log_lines(n)) > seen[n], 20,
                             "a new bridge log line with %r" % n)
        time.sleep(0.5)  # the subscription reaches the broker
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

    def _recorded(self):
        """[(topic, envelope)] recorded so far."""
        try:
            with open(self.replies) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            tp, hx = line.split("\t", 1)
            out.append((tp, json.loads(bytes.fromhex(hx))))
        return out

    def _find_result(self, cmd_id):
        return next((env for _tp, env in self._recorded()
                     if (env.get("data") or {}).get("command_id") == cmd_id), None)

    def result(self, cmd_id, timeout=15):
        """The result envelope of command cmd_id, on whichever topic it came; waits for it."""
        return procs.wait_until(lambda: self._find_result(cmd_id), timeout,
                                "the result of command %s" % cmd_id)

    def has_result(self, cmd_id):
        return self._find_result(cmd_id) is not None

    def qmp_seen(self):
        """The "execute" of every command the fake QEMU received, in order."""
        try:
            with open(self.qlog) as f:
                return [json.loads(l)["execute"] for l in f if l.strip()]
        except FileNotFoundError:
            return []
