#!/usr/bin/python3
"""The systemd service: packaging/systemd/qmp-bridge.service passes `systemd-analyze
verify` (with its Documentation= man pages resolvable), the checker really catches a
broken unit (unknown key, missing binary, missing man page), `systemd-analyze security
--offline=true` rates its exposure at or below EXPOSURE_MAX, and the unit, its sysusers.d
and tmpfiles.d files agree on the user, the state directory and the hardening the issue
asks for.

Then sd_notify end to end: the bridge runs with NOTIFY_SOCKET pointing at a datagram
socket this test owns; READY=1 must arrive after start, WATCHDOG=1 while it runs (with
WATCHDOG_USEC set) and STOPPING=1 at SIGTERM. That part is skipped, with the reason
printed, while the binary has not been wired to bridge/service_notify.c (no READY=1
within 10 s and no "READY=1" string in the binary). Starting the real unit under
`systemd-run` needs systemd as PID 1 and is skipped otherwise."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, util  # noqa: E402

BIN = os.path.abspath(bridge.binary())
PKG = os.path.join(util.SOURCE_DIR, "packaging")
UNIT = os.path.join(PKG, "systemd", "qmp-bridge.service")
TEMPLATE = os.path.join(PKG, "systemd", "qmp-bridge@.service")
SYSUSERS = os.path.join(PKG, "systemd", "qmp-bridge.sysusers")
TMPFILES = os.path.join(PKG, "systemd", "qmp-bridge.tmpfiles")
MAN = os.path.join(PKG, "man")
# The score the unit achieves on systemd 252 is 1.2 ("OK"); docs/operations.md quotes it. A change
# that weakens the sandbox pushes it over this line.
EXPOSURE_MAX = 1.2


def run(argv, env=None, timeout=60):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                       timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def unit_copy(t, name, text):
    """The unit with its commands pointing at the built binary (verify checks that every
    Exec*= command exists), written as <workdir>/<name>."""
    path = os.path.join(t.workdir, name)
    with open(path, "w") as f:
        f.write(text.replace("/usr/bin/qmp-bridge", BIN))
    return path


def manpath(t):
    """A man hierarchy with our pages, so verify can resolve Documentation=man:..."""
    root = os.path.join(t.workdir, "man")
    for page, sec in (("qmp-bridge.8", "8"), ("qmp-bridge.yaml.5", "5")):
        os.makedirs(os.path.join(root, "man" + sec), exist_ok=True)
        shutil.copy(os.path.join(MAN, page), os.path.join(root, "man" + sec, page))
    return root


def verify(path, man_root):
    env = dict(os.environ, MANPATH=man_root, SYSTEMD_LOG_COLOR="0")
    return run(["systemd-analyze", "verify", path], env=env)


def directives(text):
    """{key: [values]} of the unit, comments dropped, in order."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def recv_all(sock, until, timeout, seen):
    """Reads datagrams into seen (list of {key: value}) until until(seen) or timeout.
    Returns True when until() held."""
    deadline = time.monotonic() + timeout
    while not until(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return until(seen)
        seen.append(dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l))
    return True


def has(seen, key, value="1"):
    return any(m.get(key) == value for m in seen)


with check.Test("systemd_unit") as t:
    with open(UNIT) as f:
        unit_text = f.read()
    man_root = manpath(t)

    t.section("systemd-analyze verify")
    good = unit_copy(t, "qmp-bridge.service", unit_text)
    rc, out, err = verify(good, man_root)
    t.expect(rc == 0 and not err.strip() and not out.strip(),
             "the unit verifies without a single diagnostic", (rc, out, err))

    # The checker must be able to fail: three broken copies, three different failures.
    bad = unit_copy(t, "broken-key.service", unit_text.replace("\nType=notify\n", "\nTypo=notify\n"))
    rc, out, err = verify(bad, man_root)
    t.expect("Unknown key" in err and "Typo" in err, "verify reports an unknown key", (rc, err))
    bad = unit_copy(t, "broken-exec.service",
                    re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/nonexistent/qmp-bridge", unit_text))
    rc, out, err = verify(bad, man_root)
    t.expect(rc != 0 and "/nonexistent/qmp-bridge" in err, "verify fails on a missing ExecStart binary",
             (rc, err))
    bad = unit_copy(t, "broken-man.service", unit_text.replace("man:qmp-bridge.yaml(5)", "man:qmp-bridge.yml(5)"))
    rc, out, err = verify(bad, man_root)
    t.expect(rc != 0 and "qmp-bridge.yml" in err, "verify fails on a Documentation= page that does not exist",
             (rc, err))

    t.section("systemd-analyze security --offline=true")
    rc, out, err = run(["systemd-analyze", "security", "--offline=true", "--no-pager", good],
                       env=dict(os.environ, SYSTEMD_COLORS="0"))
    m = re.search(r"Overall exposure level for qmp-bridge\.service: ([0-9.]+) (\w+)", out)
    t.expect(rc == 0 and m is not None, "security prints an overall exposure level", (rc, out[-500:], err))
    score = float(m.group(1))
    print("  exposure score: %.1f %s (threshold %.1f)" % (score, m.group(2), EXPOSURE_MAX))
    exposures = [re.sub(r"\s{2,}", " | ", l.strip()) for l in out.splitlines() if l.startswith("\u2717")]
    for l in exposures:
        print("    remaining: %s" % l)
    t.expect(score <= EXPOSURE_MAX, "exposure %.1f <= %.1f" % (score, EXPOSURE_MAX), score)
    # What is left must be what we chose to leave (network access, the host's users, rtc):
    # a new entry here means a setting was lost.
    allowed = ("RootDirectory=", "RestrictAddressFamilies=~AF_UNIX", "RestrictAddressFamilies=~AF_(INET",
               "PrivateNetwork=", "PrivateUsers=", "DeviceAllow=", "IPAddressDeny=")
    unexpected = [l for l in exposures if not any(l[1:].strip().startswith(a) for a in allowed)]
    t.expect(not unexpected, "no exposure beyond the documented ones", unexpected)

    t.section("the unit asks for what the issue asks")
    d = directives(unit_text)

    def one(key):
        return d.get(key, [None])[-1]

    t.expect(one("Type") == "notify" and one("NotifyAccess") == "main", "Type=notify, NotifyAccess=main", d.get("Type"))
    t.expect("notify-reload" in unit_text and "ReloadSignal=SIGHUP" in unit_text,
             "the notify-reload variant for systemd >= 253 is documented in the unit")
    t.expect(d.get("ExecReload") == ["%s --check-config -c /etc/qmp-bridge/qmp-bridge.yaml" % "/usr/bin/qmp-bridge",
                                     "/bin/kill -HUP $MAINPID"],
             "reload validates the file, then sends SIGHUP", d.get("ExecReload"))
    t.expect(one("ExecStart") == "/usr/bin/qmp-bridge -c /etc/qmp-bridge/qmp-bridge.yaml", "ExecStart", one("ExecStart"))
    t.expect(one("WatchdogSec") and one("Restart") == "on-failure", "watchdog with Restart=on-failure")
    for key, want in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                      ("PrivateTmp", "yes"), ("PrivateDevices", "yes"),
                      ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
                      ("CapabilityBoundingSet", ""), ("AmbientCapabilities", ""),
                      ("SystemCallArchitectures", "native"), ("MemoryDenyWriteExecute", "yes")):
        t.expect(one(key) == want, "%s=%s" % (key, want), one(key))
    t.expect(d.get("SystemCallFilter") == ["@system-service", "~@privileged @resources"],
             "SystemCallFilter=@system-service minus @privileged @resources", d.get("SystemCallFilter"))
    t.expect("SupplementaryGroups=kvm" in unit_text, "SupplementaryGroups= for foreign QMP sockets is documented")

    t.section("the template unit qmp-bridge@.service")
    with open(TEMPLATE) as f:
        template_text = f.read()
    inst = unit_copy(t, "qmp-bridge@fleet-a.service", template_text)
    rc, out, err = verify(inst, man_root)
    t.expect(rc == 0 and not err.strip() and not out.strip(),
             "an instance (qmp-bridge@fleet-a) verifies without a single diagnostic", (rc, out, err))
    rc, out, err = run(["systemd-analyze", "security", "--offline=true", "--no-pager", inst],
                       env=dict(os.environ, SYSTEMD_COLORS="0"))
    m = re.search(r"Overall exposure level for qmp-bridge@fleet-a\.service: ([0-9.]+)", out)
    t.expect(m is not None and float(m.group(1)) <= EXPOSURE_MAX,
             "the instance's exposure is at most %.1f" % EXPOSURE_MAX, (m and m.group(1), err))
    td = directives(template_text)
    per_instance = {"Description": [d["Description"][0].replace("event bridge", "event bridge %i")],
                    "ExecStart": ["/usr/bin/qmp-bridge -c /etc/qmp-bridge/%i.yaml"],
                    "ExecReload": ["/usr/bin/qmp-bridge --check-config -c /etc/qmp-bridge/%i.yaml",
                                   "/bin/kill -HUP $MAINPID"],
                    "StateDirectory": ["qmp-bridge@%i qmp-bridge@%i/spool"],
                    "RuntimeDirectory": ["qmp-bridge@%i"]}
    for key in sorted(set(d) | set(td)):
        want = per_instance.get(key, d.get(key))
        t.expect(td.get(key) == want, "template %s= is %s" % (key, want), td.get(key))

    t.section("user, state directory and socket directory agree")
    with open(SYSUSERS) as f:
        users = [l.split() for l in f if l.strip() and not l.startswith("#")]
    t.expect(users and users[0][0] == "u" and users[0][1] == one("User") == one("Group") == "qmp-bridge",
             "sysusers.d creates the unit's User=/Group=", users)
    t.expect(one("StateDirectory").split()[0] == "qmp-bridge" and "qmp-bridge/spool" in one("StateDirectory"),
             "StateDirectory=qmp-bridge (spool below it)", one("StateDirectory"))
    t.expect(one("RuntimeDirectory") == "qmp-bridge", "RuntimeDirectory=qmp-bridge", one("RuntimeDirectory"))
    with open(TMPFILES) as f:
        tmp = [l.split() for l in f if l.strip() and not l.startswith("#")]
    t.expect(tmp == [["d", "/run/qmp-bridge-vms", "2770", "root", "qmp-bridge", "-"]],
             "tmpfiles.d: setgid discovery directory of group qmp-bridge, outside RuntimeDirectory", tmp)
    rc, out, err = run([BIN, "--check-config", "-c", os.path.join(PKG, "qmp-bridge.yaml")])
    t.expect(rc == 0 and "discovery on" in out, "the packaged config passes --check-config", (rc, out, err))
    with open(os.path.join(PKG, "qmp-bridge.yaml")) as f:
        t.expect("directory: /run/qmp-bridge-vms" in f.read(), "and discovers in the tmpfiles.d directory")

    t.section("sd_notify end to end")
    with open(BIN, "rb") as f:
        wired = b"READY=1" in f.read()
    nsock_path = os.path.join(t.workdir, "notify")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(nsock_path)
    conf = os.path.join(t.workdir, "bridge.yaml")
    events = os.path.join(t.workdir, "events.jsonl")
    with open(conf, "w") as f:
        f.write("bridge: { id: notify-test, log_level: debug }\n"
                "transports:\n  - { type: stdout, path: %s }\n" % events)
    log = os.path.join(t.workdir, "bridge.log")
    t.add_log("bridge", log)
    env = dict(os.environ, NOTIFY_SOCKET=nsock_path, WATCHDOG_USEC="2000000", WATCHDOG_PID="")
    # WATCHDOG_PID must be the bridge's own PID, unknown before the start: an exec wrapper
    # sets it from $$, which is the PID the bridge keeps after exec.
    p = procs.spawn(["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" "$@"', BIN, "-c", conf], "qmp-bridge",
                    stderr=log, env=env)
    seen = []
    ready = recv_all(nsock, lambda s: has(s, "READY"), 10, seen)
    if not ready and not wired:
        procs.stop(p)
        print("  SKIP sd_notify end to end: %s sent no READY=1 within 10 s and does not contain "
              "the string READY=1 (main.c does not call bridge/service_notify.c yet)" % BIN)
    else:
        t.expect(ready, "READY=1 arrives after start", seen)
        t.expect(p.poll() is None, "the bridge is running when it says READY=1")
        got_wd = recv_all(nsock, lambda s: has(s, "WATCHDOG"), 10, seen)
        t.expect(got_wd, "WATCHDOG=1 pings while healthy (WATCHDOG_USEC=2s)", seen)
        os.kill(p.pid, signal.SIGTERM)
        t.expect(recv_all(nsock, lambda s: has(s, "STOPPING"), 10, seen), "STOPPING=1 at SIGTERM", seen)
        try:
            rc = p.wait(15)  # one SIGTERM only: a second one means "exit now" (status 1)
        except subprocess.TimeoutExpired:
            rc = "still running 15 s after SIGTERM"
        procs.stop(p)
        t.expect(rc == 0, "clean exit after SIGTERM", rc)
        order = [k for m in seen for k in ("READY", "STOPPING") if m.get(k) == "1"]
        t.expect(order.index("READY") < order.index("STOPPING"), "READY=1 before STOPPING=1", order)
    nsock.close()

    t.section("the unit under systemd")
    pid1 = run(["ps", "-p", "1", "-o", "comm="])[1].strip()
    if pid1 != "systemd" or not os.path.isdir("/run/systemd/system"):
        print("  SKIP systemd-run: PID 1 is %r, not systemd, so no transient unit can be started here" % pid1)
    elif not wired:
        print("  SKIP systemd-run: the binary does not send READY=1 yet, a Type=notify unit would time out")
    else:
        name = "qb-test-%d" % os.getpid()
        props = ["Type=notify", "NotifyAccess=main", "WatchdogSec=30s", "TimeoutStartSec=15s"]
        argv = ["systemd-run", "--unit", name, "--collect", "--quiet"]
        for prop in props:
            argv += ["-p", prop]
        rc, out, err = run(argv + [BIN, "-c", conf], timeout=30)
        try:
            t.expect(rc == 0, "systemd-run returns once the bridge is READY (Type=notify)", (rc, out, err))
            rc, out, _ = run(["systemctl", "show", "-p", "ActiveState", "--value", name + ".service"])
            t.expect(out.strip() == "active", "the transient unit is active", out)
        finally:
            run(["systemctl", "stop", name + ".service"], timeout=40)
