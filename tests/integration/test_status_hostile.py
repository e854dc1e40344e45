#!/usr/bin/python3
"""What a hostile QEMU says as its run state reaches /vms and `qmp-bridge --status` safely.

Two scripted QEMUs (qmp_peer.py --mode idle --status-text): vm1 answers query-status with
thirty 'a' and an 'é' (32 bytes: the bridge keeps 31), vm2 with terminal escapes, a bell
and a newline followed by a forged table row. /vms lists both VMs (vm1's run state cut
before the 'é', never in the middle of it: half a character once made /vms leave the VM
out), and --status prints two rows with no ESC, BEL or forged line: control characters
are shown escaped as \\xNN."""
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
CUT = "a" * 30 + "\u00e9"
FORGED = "x\x1b[2J\x1b]0;OWNED\x07\nFAKE-VM  ready running"


def start_peer(d, name, status):
    sock = os.path.join(d, name + ".qmp")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                 "--status-text", status], "qmp_peer-" + name,
                stderr=os.path.join(d, name + ".peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket " + name)
    return sock


with check.Test("status_hostile") as t:
    d = t.workdir
    sock1 = start_peer(d, "vm1", CUT)
    sock2 = start_peer(d, "vm2", FORGED)
    port = util.free_port()
    br = bridge.Bridge(d, [("vm1", sock1), ("vm2", sock2)],
                       extra_yaml='metrics: { listen: "127.0.0.1:%d" }\n' % port).start()
    t.add_log("bridge", br.log)
    br.wait_log("[vm1] state resynced")
    br.wait_log("[vm2] state resynced")

    t.section("/vms lists every VM")
    with urllib.request.urlopen("http://127.0.0.1:%d/vms" % port, timeout=5) as r:
        vms = {v["name"]: v for v in json.loads(r.read().decode())}
    t.expect(sorted(vms) == ["vm1", "vm2"], "both VMs listed", sorted(vms))
    t.expect(vms.get("vm1", {}).get("run_state") == "a" * 30,
             "vm1's run state cut before the character that does not fit whole",
             vms.get("vm1", {}).get("run_state"))

    t.section("--status: no control characters reach the terminal")
    out = subprocess.run([bridge.binary(), "--status", "-c", br.conf], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    text = out.stdout.decode("utf-8", "replace")
    print(text)
    t.expect(b"\x1b" not in out.stdout and b"\x07" not in out.stdout,
             "no ESC or BEL in the output", out.stdout)
    t.expect(not any(line.startswith("FAKE-VM") for line in text.splitlines()),
             "no forged row", text)
    t.expect(text.rstrip().endswith("2 VMs") and "\\x1B" in text,
             "two VMs, vm2's escapes shown as \\x1B", text)
    t.expect(br.stop() == 0, "SIGTERM: exit 0")
