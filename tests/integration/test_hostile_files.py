#!/usr/bin/python3
"""Files another local user can reach: the spool directory and the secrets.

- a spool directory others may write (mode 0777, sticky or not) or that another
  user owns (chown 65534) stops the bridge at start-up with exit 3 and a line
  naming the directory, its owner and its mode;
- a directory the bridge creates for its spool is private (no group write, nothing
  for others);
- commands.hmac_key_file and an MQTT password_file that other users can read:
  --check-config exits 1 with a line naming the key, the file and its mode; the
  bridge does not start either (exit 1); readable by the group: a warning, exit 0;
  mode 0600: no word about it."""
import json
import os
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs  # noqa: E402

BIN = bridge.binary()


def run(conf, *args, timeout=20):
    """Exit code (None: still running after timeout, then killed) and stdout + stderr."""
    p = subprocess.Popen([BIN, "-c", conf] + list(args), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = None
    return rc, out.decode(errors="replace")


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def config(d, name, extra):
    """A bridge with no VM, events on a stdout file, plus extra YAML."""
    return write(os.path.join(d, name + ".yaml"),
                 "bridge: { id: files }\nvms: []\n"
                 "transports:\n  - { type: stdout, path: %s }\n%s"
                 % (json.dumps(os.path.join(d, name + ".events")), extra))


def spool_yaml(path):
    return "spool: { directory: %s }\n" % json.dumps(path)


with check.Test("hostile_files") as t:
    d = t.workdir

    t.section("spool directory: others may write, another user owns it")
    for mode in (0o777, 0o1777):
        sp = os.path.join(d, "spool-%o" % mode)
        os.mkdir(sp)
        os.chmod(sp, mode)
        conf = config(d, "open-%o" % mode, spool_yaml(sp))
        rc, out = run(conf, timeout=10)
        line = [ln for ln in out.splitlines() if sp in ln and "mode %04o" % mode in ln]
        t.expect(rc == 3 and line, "spool mode %04o: exit 3 with a line naming it" % mode,
                 (rc, out[-600:]))
        t.expect("chmod o-w" in line[0], "the line says what to change", line[0])
        t.ok("mode %04o refused" % mode, line[0].strip())
        t.expect(os.listdir(sp) == [], "nothing was created in it", os.listdir(sp))
    if os.geteuid() == 0:
        sp = os.path.join(d, "spool-nobody")
        os.mkdir(sp, 0o700)
        os.chown(sp, 65534, 65534)
        conf = config(d, "nobody", spool_yaml(sp))
        rc, out = run(conf, timeout=10)
        line = [ln for ln in out.splitlines() if sp in ln and "owned by uid 65534" in ln]
        t.expect(rc == 3 and line, "spool owned by uid 65534: exit 3 with a line naming it",
                 (rc, out[-600:]))
        t.ok("another user's directory refused", line[0].strip())
    else:
        t.ok("another user's directory", "skipped: needs root to chown")

    t.section("a spool directory the bridge creates is private")
    sp = os.path.join(d, "spool-new")
    conf = config(d, "new", spool_yaml(sp))
    proc = subprocess.Popen([BIN, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "new.log"), "w"))
    try:
        procs.wait_until(lambda: os.path.exists(os.path.join(sp, "lock")), 20, "the spool")
        mode = stat.S_IMODE(os.stat(sp).st_mode)
        t.expect(mode & 0o027 == 0, "created without group write or any access for others",
                 "%04o" % mode)
        t.ok("created spool directory", "mode %04o" % mode)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    t.expect(proc.returncode == 0, "SIGTERM exits 0", proc.returncode)

    t.section("secrets: world-readable refused, group-readable warned, 0600 silent")
    key = "k" * 32 + "\n"
    cases = (
        ("commands.hmac_key_file",
         lambda p: "commands: { enabled: true, hmac_key_file: %s }\n" % json.dumps(p)),
        ("transports[1].password_file",
         lambda p: "  - { type: mqtt, host: 127.0.0.1, port: 1, username: u, password_file: %s }\n"
                   % json.dumps(p)),
    )
    for what, yaml in cases:
        secret = os.path.join(d, what.replace("[", "").replace("]", "").replace(".", "-"))
        write(secret, key, 0o644)
        conf = config(d, "secret", yaml(secret))
        rc, out = run(conf, "--check-config")
        line = [ln for ln in out.splitlines()
                if what in ln and secret in ln and "mode 0644 lets other users read it" in ln]
        t.expect(rc == 1 and line, "%s mode 0644: --check-config exits 1 naming it" % what,
                 (rc, out[-600:]))
        t.ok("%s 0644 refused" % what, line[0].strip())
        rc, out = run(conf, timeout=20)
        t.expect(rc == 1 and any(secret in ln and "0644" in ln for ln in out.splitlines()),
                 "%s mode 0644: the bridge does not start" % what, (rc, out[-600:]))

        os.chmod(secret, 0o640)
        rc, out = run(conf, "--check-config")
        warn = [ln for ln in out.splitlines()
                if "warn" in ln and secret in ln and "mode 0640 lets its group" in ln]
        t.expect(rc == 0 and warn, "%s mode 0640: a warning, exit 0" % what, (rc, out[-600:]))
        t.ok("%s 0640 warned" % what, warn[0].strip())

        os.chmod(secret, 0o600)
        rc, out = run(conf, "--check-config")
        t.expect(rc == 0 and secret not in out, "%s mode 0600: accepted without a word" % what,
                 (rc, out[-600:]))
