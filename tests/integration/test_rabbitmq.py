#!/usr/bin/python3
"""The bridge on RabbitMQ's MQTT plugin (Debian's rabbitmq-server 3.10, MQTT 3.1.1 only).

One private RabbitMQ node for the whole file (qbtest.rabbitmq: its own node name,
data, logs and ports, stopped by PID with its epmd). The plugin turns every '.' of a
topic into a level, so a dotted bridge id and dotted VM names are the hard case:

  bridge cmp1.example.org with broker: rabbitmq, VMs web.1 and vm1 (scripted peers),
  logged in as a user with only the permissions docs/operations.md (RabbitMQ) grants:
    events reach an exact-topic subscriber (delivered under the topic with dots as
    levels) and a qmp/# one, while qmp/+/+/event/+ gets nothing of them; the retained
    state reaches a later exact-topic subscriber; commands for web.1 and vm1 run and
    their results come back on <prefix>/<bridge>/<vm>/result; kill -9 fires the Last
    Will (retained "offline").
  broker: rabbitmq with qos 2 is a configuration error.
  without broker: rabbitmq, a command on the split topic cannot be placed: warned
    with the topic; protocol 5 gets the hint to use 3.1.1; qos 2 is an error after the
    broker's PUBACK, and the transport stops reconnecting instead of looping.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, peers, procs, rabbitmq  # noqa: E402

why_not = rabbitmq.available()
if why_not:
    print("SKIP %s" % why_not)
    sys.exit(77)

BRIDGE = "cmp1.example.org"
SPLIT = BRIDGE.replace(".", "/")


def make_bridge(t, rabbit, name, bridge_id, vms, mqtt_keys, commands_on=False):
    """A bridge in <workdir>/<name> with one mqtt transport to rabbit (fast reconnects)."""
    d = os.path.join(t.workdir, name)
    os.makedirs(d)
    extra = ("  - { type: mqtt, host: 127.0.0.1, port: %d, reconnect_initial: 100ms, "
             "reconnect_max: 200ms%s }\n" % (rabbit.port, ", " + mqtt_keys if mqtt_keys else ""))
    if commands_on:
        extra += "commands: { enabled: true }\n"
    br = bridge.Bridge(d, vms, bridge_id=bridge_id, stdout_path=False, extra_yaml=extra)
    t.add_log("bridge " + name, br.log)
    return br


def result_of(sub, cmd_id):
    """The reply to command cmd_id on a .../result topic, as (topic, envelope), or None."""
    sub.poll()
    for m in sub.messages:
        if m.topic.endswith("/result"):
            env = json.loads(m.raw)
            if env.get("data", {}).get("command_id") == cmd_id:
                mqtt.validate_envelope(env)
                return m.topic, env
    return None


with check.Test("rabbitmq") as t:
    rabbit = rabbitmq.Broker(t.workdir)
    t.add_log("rabbitmq", rabbit.log)
    t.add_log("rabbitmq stdout", rabbit.out)
    started = time.monotonic()
    rabbit.start()
    t.ok("RabbitMQ %s up, MQTT on port %d (boot %.0fs)" % (rabbit.node, rabbit.port,
                                                            time.monotonic() - started))

    t.section("broker: rabbitmq with qos 2 is refused at --check-config")
    d = os.path.join(t.workdir, "check")
    os.makedirs(d)
    conf = os.path.join(d, "q2.yaml")
    with open(conf, "w") as f:
        f.write("bridge: {id: a}\ntransports:\n  - {type: mqtt, broker: rabbitmq, qos: 2}\n")
    r = subprocess.run([bridge.binary(), "-c", conf, "--check-config"], capture_output=True,
                       text=True, timeout=30)
    t.expect(r.returncode == 1 and "transports[0].qos: RabbitMQ's MQTT plugin does not honour "
             "QoS 2" in r.stderr, "exit 1 naming transports[0].qos", (r.returncode, r.stderr))

    t.section("subscribers: exact topics, qmp/#, qmp/+/+/event/+ (all MQTT 3.1.1)")
    exact_topics = ["qmp/%s/web.1/event/bridge.vm.connected" % BRIDGE,
                    "qmp/%s/web.1/result" % BRIDGE, "qmp/%s/vm1/result" % BRIDGE,
                    "qmp/%s/status" % BRIDGE]
    exact = mqtt.Subscriber(rabbit, ["qmp/_probe"] + exact_topics, name="exact",
                            version="mqttv311").start()
    wild = mqtt.Subscriber(rabbit, "qmp/#", name="wild", version="mqttv311").start()
    plus = mqtt.Subscriber(rabbit, ["qmp/_probe", "qmp/+/+/event/+"], name="plus",
                           version="mqttv311").start()
    for s in (exact, wild, plus):
        t.add_log("subscriber " + s.out, s.out)

    t.section("a user with the documented permissions (docs/operations.md, RabbitMQ)")
    rabbit.ctl("add_user", "qmp-bridge-cmp1", "qbtest-password")
    rabbit.ctl("set_permissions", "-p", "/", "qmp-bridge-cmp1",
               r"^mqtt-subscription-qmp-bridge-cmp1\.example\.org",
               r"^(amq\.topic|mqtt-subscription-qmp-bridge-cmp1\.example\.org.*)$",
               r"^(amq\.topic|mqtt-subscription-qmp-bridge-cmp1\.example\.org.*)$")
    rabbit.ctl("set_topic_permissions", "-p", "/", "qmp-bridge-cmp1", "amq.topic",
               r"^qmp\.cmp1\.example\.org\.", r"^qmp\.cmp1\.example\.org\.[^#]*\.command$")
    password = os.path.join(t.workdir, "mqtt.password")
    with open(password, "w") as f:
        f.write("qbtest-password\n")
    os.chmod(password, 0o600)
    t.ok("user qmp-bridge-cmp1: queue and topic permissions set")

    t.section("bridge %s (broker: rabbitmq), VMs web.1 and vm1" % BRIDGE)
    vms = peers.start_event_peers(t.workdir, ["web.1", "vm1"], 3, interval=0.2)
    br = make_bridge(t, rabbit, "main", BRIDGE, vms,
                     "broker: rabbitmq, username: qmp-bridge-cmp1, password_file: %s"
                     % json.dumps(password), commands_on=True)
    br.start()
    br.wait_log("receiving commands on qmp/%s/+/command" % BRIDGE)
    # learnt from web.1's first publish: its name takes two levels on RabbitMQ
    br.wait_log("receiving commands on qmp/%s/+/+/command" % BRIDGE)
    t.ok("command filters for one and two levels subscribed")

    m = exact.wait_for(lambda m: m.type == "bridge.vm.connected", 30, "bridge.vm.connected")
    t.expect(m.topic == "qmp/%s/web/1/event/bridge/vm/connected" % SPLIT and
             m.json["subject"] == "web.1",
             "the exact-topic subscriber gets web.1's event, its topic's dots delivered as levels",
             m.topic)
    for vm in ("web.1", "vm1"):
        wild.wait_for(lambda m, vm=vm: m.type == "qmp.vm.state" and m.json["subject"] == vm, 30,
                      "%s's state on qmp/#" % vm)
    t.ok("qmp/# gets the state of both VMs")
    m = exact.wait_for(lambda m: m.topic == "qmp/%s/status" % SPLIT and m.raw == b"online", 30,
                       "status online")
    t.ok("status online on the exact status topic")

    t.section("retained state on an exact topic")
    late = mqtt.Subscriber(rabbit, ["qmp/_probe", "qmp/%s/web.1/state" % BRIDGE], name="late",
                           version="mqttv311").start()
    m = late.wait_for(lambda m: m.type == "qmp.vm.state", 20, "web.1's retained state")
    t.expect(m.retained and m.json["subject"] == "web.1",
             "a later exact-topic subscriber gets web.1's state, retained", m)

    t.section("commands with a dotted bridge id and a dotted VM name")
    for vm in ("web.1", "vm1"):
        cmd = commands.make("query-state", vm, bridge=BRIDGE)
        rabbit.pub("qmp/%s/%s/command" % (BRIDGE, vm), json.dumps(cmd))
        topic, env = procs.wait_until(lambda i=cmd["id"]: result_of(exact, i), 30,
                                      "the result of query-state for %s" % vm)
        t.expect(topic == "qmp/%s/%s/result" % (SPLIT, vm.replace(".", "/")) and
                 env["data"]["status"] == "ok" and env["subject"] == vm,
                 "query-state for %s ran: status ok on its result topic" % vm, (topic, env))

    t.section("what a wildcard with + gets")
    plus.poll()
    got = [m for m in plus.messages if m.topic != "qmp/_probe"]
    t.expect(got == [], "qmp/+/+/event/+ got nothing of the dotted bridge's events", got[:5])

    t.section("the Last Will")
    procs.kill(br.proc)
    br.proc = None
    exact.wait_for(lambda m: m.topic == "qmp/%s/status" % SPLIT and m.raw == b"offline", 60,
                   "status offline from the Last Will")
    t.ok("kill -9: RabbitMQ published the Last Will (offline)")

    t.section("without broker: rabbitmq, a split command topic is logged at warn")
    other = make_bridge(t, rabbit, "generic", "cmp2.example.org", [], 'protocol: "3.1.1"',
                        commands_on=True)
    other.start()
    other.wait_log("receiving commands on qmp/cmp2.example.org/+/command")
    rabbit.pub("qmp/cmp2.example.org/vm1/command", json.dumps(commands.make("query-state", "vm1")))
    line = other.wait_log(" warn ", "ignoring a message on 'qmp/cmp2/example/org/vm1/command'")
    t.ok("warned with the topic as delivered", line[0])
    other.stop()

    t.section("protocol 5 against RabbitMQ gets the hint")
    v5 = make_bridge(t, rabbit, "v5", "host-c", [], None)
    v5.start()
    line = v5.wait_log(" warn ", "cannot connect to 127.0.0.1:%d" % rabbit.port,
                       "closed after CONNECT without an answer", 'try protocol: "3.1.1"')
    t.ok("hint logged", line[0])
    t.expect(not v5.log_lines("connected to"), "never connected", v5.log_lines("connected to"))
    v5.stop()

    t.section("qos 2 without broker: rabbitmq is an error once the broker answers")
    vm_d = peers.start_event_peers(os.path.join(t.workdir), ["vm-d"], 3, interval=0.2)
    q2 = make_bridge(t, rabbit, "qos2", "host-d", vm_d, 'protocol: "3.1.1", qos: 2')
    q2.start()
    line = q2.wait_log(" error ", "does not honour QoS 2", "set qos: 1", "Not reconnecting")
    t.ok("error logged", line[0])
    # with reconnect_initial 100ms a loop would have connected several times by now
    time.sleep(3)
    connects = q2.log_lines("mqtt: connected to")
    t.expect(len(connects) == 1, "connected once, no reconnect loop", connects)
    q2.stop()

    t.section("stop RabbitMQ and its epmd by PID")
    for s in (exact, wild, plus, late):
        s.stop()
    rabbit.stop()
    t.ok("stopped")
