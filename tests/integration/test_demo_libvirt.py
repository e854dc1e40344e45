#!/usr/bin/python3
"""`./run-demo.sh --libvirt` keeps working: tests/tools/demo.py --libvirt runs to its end,
exit 0, and shows the ENOSPC story through a private libvirtd (the disk named hda, the
pause with its cause, resize-and-cont as libvirt calls, the domain running again with the
bigger disk). Whether it ends or is interrupted (Ctrl-C), no process it started is left.
Needs root (the private libvirtd's mounts) and libvirtd: otherwise SKIP."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, util  # noqa: E402

if os.geteuid() != 0 or not shutil.which("libvirtd") or not shutil.which("virtlogd"):
    print("SKIP needs root and libvirtd/virtlogd (libvirt-daemon, libvirt-daemon-driver-qemu)")
    sys.exit(77)

DEMO = os.path.join(util.SOURCE_DIR, "tests", "tools", "demo.py")


# Every process the demo starts inherits this variable (QEMU, whose environment libvirtd
# clears, names the work dir on its command line instead).
MARK = "QB_DEMO_TEST_MARK=%d-%d" % (os.getpid(), time.time_ns())


def leftovers(workdir):
    """[(pid, command line)] of processes left by the demo: with MARK in their environment
    or the demo's work dir on their command line."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if workdir in cmd or MARK.encode() in env:
            out.append((int(entry), cmd[:120]))
    return out


def demo_env():
    k, v = MARK.split("=", 1)
    return dict(os.environ, **{k: v})


def work_dir(out):
    m = re.search(r"work dir (\S+)\)", out)
    return m.group(1) if m else None


with check.Test("demo_libvirt") as t:
    t.section("the demo runs to its end")
    try:
        r = subprocess.run(["/usr/bin/python3", DEMO, "--libvirt"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=240, env=demo_env())
        out, rc = r.stdout.decode(errors="replace"), r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") + "\n[timed out after 240 s]", None
    log = os.path.join(t.workdir, "demo-libvirt.out")
    with open(log, "w") as f:
        f.write(out)
    t.add_log("demo libvirt", log)
    t.expect(rc == 0 and "demo finished" in out, "libvirt demo ran to its end", out[-1500:])
    for needle in ("bridge.vm.connected    QEMU ", "(libvirt:qemu:///system?socket=",
                   "qmp.block.io_error     device=hda operation=write action=stop errno=enospc",
                   "reason=io-error cause: device=hda errno=enospc",
                   "run_state=io-error running=False cause=hda/enospc",
                   "resize-and-cont -> ok virDomainGetState:ok virDomainGetBlockInfo:ok "
                   "virDomainBlockResize:ok virDomainResume:ok virDomainGetState:ok",
                   "libvirt now says: running", "disk hda is 128 MiB"):
        t.expect(needle in out, "libvirt demo shows %r" % needle)
    d = work_dir(out)
    t.expect(d is not None and not leftovers(d), "no process of the demo is left", d and leftovers(d))

    t.section("Ctrl-C in the middle")
    p = subprocess.Popen(["/usr/bin/python3", DEMO, "--libvirt"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=demo_env())
    seen = []
    end = time.time() + 120
    while time.time() < end:
        line = p.stdout.readline().decode(errors="replace")
        if not line:
            break
        seen.append(line)
        if "qmp.vm.stopped" in line:  # libvirtd, its QEMU, mosquitto and the bridge all run
            break
    p.send_signal(signal.SIGINT)
    try:
        rest, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        rest, _ = p.communicate()
    out = "".join(seen) + rest.decode(errors="replace")
    log = os.path.join(t.workdir, "demo-libvirt-interrupted.out")
    with open(log, "w") as f:
        f.write(out)
    t.add_log("demo libvirt interrupted", log)
    t.expect(any("qmp.vm.stopped" in line for line in seen), "the demo got as far as the pause",
             out[-1500:])
    t.expect(p.returncode == 130 and "interrupted: stopping every process" in out,
             "SIGINT: it says so and exits 130", (p.returncode, out[-600:]))
    d = work_dir(out)
    t.expect(d is not None and not leftovers(d), "no process of the interrupted demo is left",
             d and leftovers(d))
