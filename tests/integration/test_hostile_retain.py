#!/usr/bin/python3
"""Retained commands never run (MQTT 5), and what MQTT 3.1.1 does instead.

A command published with the retain flag stays on the broker and would be handed to the
bridge again on every (re)subscription. MQTT 5: the bridge subscribes with Retain As
Published, so the broker keeps the flag on what it forwards and the bridge can ignore
every retained command:
  1. one retained before the bridge first subscribes,
  2. one published retained while the bridge is subscribed,
  3. one published retained while the bridge is stopped (its persistent session queues
     it), delivered when it comes back;
none of them reaches QEMU or gets a result, each is logged; a normal command still runs.
"Not run" is observed without waiting on a clock: after each retained command a `cont`
is sent on the same topic, and the broker delivers a subscription's messages in order,
so by the time the cont's result arrives the retained one has been handled.

MQTT 3.1.1 (protocol: "3.1.1") has no such option, and the broker clears the flag on
whatever it forwards to an existing subscription, as docs/commands-and-security.md says: a command
published retained while the bridge is subscribed runs once like any other; the same
retained message handed over again when the bridge resubscribes after a restart is
ignored (it carries the flag then), so it does not run twice."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, cmdrig, commands  # noqa: E402

YAML = "commands: { enabled: true, allow: [stop, cont] }\n"


def sync(t, rig, what):
    """Sends a cont and waits for its result: everything published before it was handled."""
    cmd = commands.make("cont", "vm1", cmd_id="sync-%s" % what)
    rig.publish(cmd, reply=cmd["id"])
    res = rig.result(cmd["id"])["data"]
    t.expect(res["status"] == "ok", "then a cont -> ok: what came before it was handled", res)


def retained(rig, cmd_id):
    """Publishes a retained stop with id cmd_id (and a Response Topic)."""
    rig.publish(commands.make("stop", "vm1", cmd_id=cmd_id), reply=cmd_id, retain=True)


def mqtt5_section(t):
    d = os.path.join(t.workdir, "v5")
    os.makedirs(d)
    rig = cmdrig.CommandRig(t, YAML, workdir=d).start_broker()

    t.section("MQTT 5: a command retained before the bridge subscribes is not run")
    retained(rig, "ret-before")
    rig.start_bridge()
    sync(t, rig, "before")
    t.expect(rig.qmp_seen().count("stop") == 0, "QEMU got no stop", rig.qmp_seen())
    t.expect(not rig.has_result("ret-before"), "no result for it")
    t.expect(rig.br.log_lines("warn", "[vm1]", "ignoring a retained command"), "the bridge logs it")

    t.section("MQTT 5: a command published retained while the bridge is subscribed is not run")
    ignored = len(rig.br.log_lines("ignoring a retained command"))
    retained(rig, "ret-live")
    sync(t, rig, "live")
    t.expect(rig.qmp_seen().count("stop") == 0, "QEMU got no stop", rig.qmp_seen())
    t.expect(not rig.has_result("ret-live"), "no result for it")
    t.expect(len(rig.br.log_lines("ignoring a retained command")) > ignored, "the bridge logs it")

    t.section("MQTT 5: a normal command still runs")
    rig.publish(commands.make("stop", "vm1", cmd_id="normal"), reply="normal")
    res = rig.result("normal")["data"]
    t.expect(res["status"] == "ok", "stop -> ok", res)
    t.expect(rig.qmp_seen().count("stop") == 1, "QEMU got the stop")

    t.section("MQTT 5: a command retained while the bridge is down is not run when it is back")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    retained(rig, "ret-offline")
    rig.start_bridge()
    sync(t, rig, "offline")
    t.expect(rig.qmp_seen().count("stop") == 1, "QEMU got no second stop", rig.qmp_seen())
    t.expect(not rig.has_result("ret-offline"), "no result for it")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    rig.broker.stop()


def mqtt311_section(t):
    d = os.path.join(t.workdir, "v311")
    os.makedirs(d)
    rig = cmdrig.CommandRig(t, YAML, workdir=d, mqtt_protocol="3.1.1").start()

    t.section("MQTT 3.1.1: a command published retained while subscribed runs, once")
    retained(rig, "ret-311")
    res = rig.result("ret-311")["data"]
    t.expect(res["status"] == "ok", "retained stop -> ok (the broker cleared the flag)", res)
    t.expect(rig.qmp_seen().count("stop") == 1, "QEMU got the stop")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    rig.start_bridge()
    sync(t, rig, "311")
    t.expect(rig.qmp_seen().count("stop") == 1, "after a restart it is handed over again, "
             "flagged, and ignored: QEMU got no second stop", rig.qmp_seen())
    t.expect(rig.br.log_lines("ignoring a retained command"), "the bridge logs it")
    rc = rig.br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)


with check.Test("hostile_retain") as t:
    mqtt5_section(t)
    mqtt311_section(t)
