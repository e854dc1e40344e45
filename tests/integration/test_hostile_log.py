#!/usr/bin/python3
"""Log forging: strings from a command reach the bridge's log escaped, one line per line.

A command's id, source and subject are chosen by whoever can publish on the command
topic. Each case below puts a newline followed by a complete, plausible log line into
one of them, plus a carriage return, a terminal escape (ESC [), DEL and the C1 control
U+009B: a valid `stop` whose id and source carry them (it runs: its id is logged when
it is queued and when it finishes) and one whose subject carries them (rejected, and
logged under the topic's VM: an invalid subject is never used as a VM name).

Checked: every line of the bridge's log has the documented format
"<time> <level> [...]" (no forged line), no raw CR, ESC, DEL or C1 byte is in the log,
and the forged text shows up escaped as \\xNN inside the line that logged it."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, cmdrig, commands  # noqa: E402

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn |info |debug) ")
FORGED = "2026-12-06T15:00:00.000Z info  [vm2] command c-9 (resize-and-cont): ok"
NASTY = "\n" + FORGED + "\r\x1b[2K\x1b[31m\x7f\u009b"
ESCAPED = "\\x0A" + FORGED + "\\x0D\\x1B[2K\\x1B[31m\\x7F\\xC2\\x9B"


def main(t):
    rig = cmdrig.CommandRig(t, "commands: { enabled: true, allow: [stop, cont] }\n").start()
    br = rig.br

    t.section("a command whose id and source forge log lines runs, logged on its own lines")
    cmd = commands.make("stop", "vm1", cmd_id="c-1" + NASTY, source="orch" + NASTY)
    rig.publish(cmd, reply="id")
    res = rig.result(cmd["id"])["data"]
    t.expect(res["status"] == "ok" and res["command_id"] == cmd["id"],
             "stop with the forged id ran: %s" % res["status"], res)
    br.wait_log("[vm1] command c-1" + ESCAPED + " (stop): ok")
    t.ok("its result is logged with the id escaped")
    t.expect(br.log_lines("queued (from orch" + ESCAPED + ")"), "its source is logged escaped",
             br.tail(10))

    t.section("a command whose subject forges a log line is rejected, logged on one line")
    bad = commands.make("stop", "vm1" + NASTY, cmd_id="c-2")
    rig.publish(bad)
    # the log line is the point here (where its result goes is another test's business); the
    # [vm] part is the topic's VM, since a subject that is not a VM name is never used as one
    line = br.wait_log("[vm1] command c-2 rejected (invalid): subject:")[0]
    t.ok("rejected, logged under the topic's VM: ..." + line[-60:])
    t.section("the log holds no forged line and no raw control character")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    with open(br.log, "rb") as f:
        raw = f.read()
    for name, byte in (("CR", b"\r"), ("ESC", b"\x1b"), ("DEL", b"\x7f"), ("C1 CSI", b"\xc2\x9b")):
        t.expect(byte not in raw, "no raw %s in the log" % name)
    lines = [l for l in raw.decode("utf-8").split("\n") if l and not l.startswith("### qbtest")]
    odd = [l for l in lines if not LINE.match(l)]
    t.expect(not odd, "all %d log lines are in the documented format" % len(lines), odd[:5])
    t.expect(not [l for l in lines if l.startswith(FORGED[:30])], "no line starts with the forged text")


with check.Test("hostile_log") as t:
    main(t)
