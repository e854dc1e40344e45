#!/usr/bin/python3
"""The demo of README.md keeps working: tests/tools/demo.py (MQTT, and with --kafka
the mock cluster) runs to its end, exit 0, and shows the ENOSPC pause, the
orchestrator's resize-and-cont and the VM running again."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, util  # noqa: E402

DEMO = os.path.join(util.SOURCE_DIR, "tests", "tools", "demo.py")

with check.Test("demo") as t:
    for mode in ([], ["--kafka"]):
        name = "kafka" if mode else "mqtt"
        try:
            r = subprocess.run(["/usr/bin/python3", DEMO] + mode, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=240)
            out, rc = r.stdout.decode(errors="replace"), r.returncode
        except subprocess.TimeoutExpired as e:
            # keep what it printed: once (ASan, a loaded CI run) the demo hung with nothing shown
            out, rc = (e.stdout or b"").decode(errors="replace") + "\n[timed out after 240 s]", None
        log = os.path.join(t.workdir, "demo-%s.out" % name)
        with open(log, "w") as f:
            f.write(out)
        t.add_log("demo " + name, log)
        t.expect(rc == 0 and "demo finished" in out, "%s demo ran to its end" % name,
                 out[-1500:])
        for needle in ("qmp.block.io_error", "reason=io-error cause: device=data errno=enospc",
                       "resize-and-cont -> ok", "QEMU now says: running"):
            t.expect(needle in out, "%s demo shows %r" % (name, needle))
