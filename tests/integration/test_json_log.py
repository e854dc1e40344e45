#!/usr/bin/python3
"""bridge.log_format: json, and auto where stderr is not the journal.

The bridge takes commands over MQTT (a private mosquitto, one VM served by qmp_peer.py).

(a) log_format: json: every line of stderr is one JSON object with time, level and message,
    plus vm, transport and command_id where the line concerns one: vm on the VM's lines,
    transport "mqtt" on the MQTT transport's, command_id on a command's; a command id
    carrying a newline and quotes stays inside its string (decoded: escaped as \\x0A).
(b) auto, with JOURNAL_STREAM naming another file than stderr (a child of a service
    whose own stderr was the journal): the text format, "<time> <level> [vm] message".
"""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, cmdrig, commands, journal  # noqa: E402

KEYS = {"time", "level", "vm", "transport", "command_id", "message"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
TEXT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn |info |debug) ")
FORGED = "\n{\"level\":\"error\",\"message\":\"forged\"}"


def stderr_lines(br):
    with open(br.log, "rb") as f:
        return f.read().decode("utf-8").splitlines()


def records(br):
    """Every stderr line of the bridge as (line, object or None if it is not JSON)."""
    out = []
    for line in stderr_lines(br):
        if line.startswith("### qbtest"):
            continue
        try:
            out.append((line, json.loads(line)))
        except ValueError:
            out.append((line, None))
    return out


def as_text(br):
    """The JSON lines as "[vm] message", so Bridge.wait_log finds them."""
    return "\n".join(("[%s] %s" % (o["vm"], o["message"]) if o.get("vm") else o.get("message", ""))
                     for _l, o in records(br) if isinstance(o, dict))


def start(rig, log_format, env=None):
    br = bridge.Bridge(rig.dir, [("vm1", rig.sock)], broker=rig.broker, extra_yaml=rig.extra_yaml)
    br.yaml = br.yaml.replace("log_level: debug }", "log_level: debug, log_format: %s }"
                              % log_format, 1)
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    rig.br = br
    for k, v in (env or {}).items():
        os.environ[k] = v
    br.start()
    for k in env or {}:
        del os.environ[k]
    return br


def find(recs, pred, what):
    hits = [o for _l, o in recs if isinstance(o, dict) and pred(o)]
    if not hits:
        raise check.CheckFailed("no JSON line with %s" % what)
    return hits[0]


def main(t):
    rig = cmdrig.CommandRig(t, "commands: { enabled: true, allow: [stop, cont] }\n").start_broker()

    t.section("(a) log_format: json")
    br = start(rig, "json")
    t.add_log("bridge", br.log)
    br.log_text = lambda: as_text(br)
    br.wait_log("[vm1] state resynced")
    br.wait_log("receiving commands on")
    time.sleep(0.5)  # the subscription reaches the broker
    rig.publish(commands.make("stop", "vm1", cmd_id="c-1"), reply="r1")
    t.expect(rig.result("c-1")["data"]["status"] == "ok", "stop c-1 ran")
    rig.publish(commands.make("cont", "vm1", cmd_id="c-2" + FORGED), reply="r2")
    rig.result("c-2" + FORGED)
    br.wait_log("[vm1] command cont c-2")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)

    recs = records(br)
    bad = [l for l, o in recs if not isinstance(o, dict)]
    t.expect(not bad, "all %d stderr lines are JSON objects" % len(recs), bad[:3])
    bad = [o for _l, o in recs if set(o) - KEYS or not {"time", "level", "message"} <= set(o)
           or not TIME.match(o["time"]) or o["level"] not in ("error", "warn", "info", "debug")
           or any(not isinstance(v, str) for v in o.values())]
    t.expect(not bad, "each has time, level, message (strings) and no other keys than "
             "vm, transport, command_id", bad[:3])
    o = find(recs, lambda o: o["message"].startswith("state resynced"), "the VM's snapshot")
    t.expect(o.get("vm") == "vm1", "vm on the VM's line", o)
    o = find(recs, lambda o: re.match(r"mqtt \S+: connected to", o["message"]), "the MQTT link")
    t.expect(o.get("transport") == "mqtt", "transport on the MQTT transport's line", o)
    o = find(recs, lambda o: "c-1 queued" in o["message"], "c-1 queued")
    t.expect(o.get("command_id") == "c-1" and o.get("vm") == "vm1" and o.get("transport") == "mqtt",
             "command_id, vm and transport on a queued command's line", o)
    o = find(recs, lambda o: o["message"].startswith("command cont c-2"), "c-2's result")
    want = "c-2" + FORGED.replace("\n", "\\x0A")
    t.expect(o.get("command_id") == want, "a forged id is one string, escaped: %s"
             % o.get("command_id"), o)
    t.expect(not [l for l, _o in recs if l.startswith("{\"level\"")], "and forged no line")

    t.section("(b) auto, JOURNAL_STREAM naming another file: text")
    other = os.path.join(t.workdir, "not-stderr")
    open(other, "w").close()
    before = len(stderr_lines(br))
    br = start(rig, "auto", env={"JOURNAL_STREAM": journal.stream_of(other)})
    br.wait_log("[vm1] state resynced")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    lines = [l for l in stderr_lines(br)[before:] if not l.startswith("### qbtest")]
    bad = [l for l in lines if not TEXT.match(l)]
    t.expect(lines and not bad, "all %d lines are text lines" % len(lines), bad[:3])


with check.Test("json_log") as t:
    main(t)
