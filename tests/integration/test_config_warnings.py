#!/usr/bin/python3
"""Start-up warnings for risky settings: commands enabled without
commands.hmac_key_file, and commands received over an MQTT transport without TLS
and without a username. --check-config prints each as "qmp-bridge: warning: ..."
on stderr and still exits 0; the bridge logs the same lines at warn level when it
starts. Each appears exactly when its setting is risky: not with commands off, not
with a key file, not with a username or TLS, not for a transport with commands:
false. The shipped configurations say nothing."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, util  # noqa: E402

UNSIGNED = "commands are enabled without commands.hmac_key_file"
OPEN_MQTT = "commands are received from 127.0.0.1:1883 without TLS and without a username"


def check_config(t, name, text):
    path = os.path.join(t.workdir, name)
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([bridge.binary(), "-c", path, "--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


with check.Test("config_warnings") as t:
    d = t.workdir
    key = os.path.join(d, "hmac.key")
    with open(key, "w") as f:
        f.write("0123456789abcdef0123456789abcdef\n")
    os.chmod(key, 0o600)

    t.section("--check-config")
    cases = [
        ("off.yaml", "bridge: { id: h }\ntransports:\n  - { type: mqtt }\n", []),
        ("unsigned.yaml", "bridge: { id: h }\ncommands: { enabled: true }\n", [UNSIGNED]),
        ("open.yaml", "bridge: { id: h }\ncommands: { enabled: true, hmac_key_file: \"%s\" }\n"
         "transports:\n  - { type: mqtt }\n" % key, [OPEN_MQTT]),
        ("both.yaml", "bridge: { id: h }\ncommands: { enabled: true }\n"
         "transports:\n  - { type: mqtt }\n", [UNSIGNED, OPEN_MQTT]),
        ("user.yaml", "bridge: { id: h }\ncommands: { enabled: true, hmac_key_file: \"%s\" }\n"
         "transports:\n  - { type: mqtt, username: bridge }\n" % key, []),
        ("tls.yaml", "bridge: { id: h }\ncommands: { enabled: true, hmac_key_file: \"%s\" }\n"
         "transports:\n  - { type: mqtt, tls: { ca_file: /etc/ssl/certs/ca-certificates.crt } }\n"
         % key, []),
        ("nocmd.yaml", "bridge: { id: h }\ncommands: { enabled: true, hmac_key_file: \"%s\" }\n"
         "transports:\n  - { type: mqtt, commands: false }\n" % key, []),
    ]
    for name, text, want in cases:
        rc, out, err = check_config(t, name, text)
        lines = [l for l in err.splitlines() if l.startswith("qmp-bridge: warning: ")]
        t.expect(rc == 0 and "configuration OK" in out, "%s: exit 0, configuration OK" % name,
                 (rc, out, err))
        t.expect(len(lines) == len(want) and all(any(w in l for l in lines) for w in want),
                 "%s: warnings %s" % (name, [w.split(":")[0][:40] for w in want] or "none"), lines)
        for l in lines:
            t.expect(" set " in l or "commands: false" in l, "%s: the line says how to fix it" % name, l)
    # Every shipped configuration that is not a demo template checks clean, with the command
    # key they name (/etc/qmp-bridge/commands.key) pointed at one of this test's; libvirt.yaml
    # has commands on, so the command rules are exercised too.
    shipped_key = os.path.join(d, "shipped-commands.key")
    with open(shipped_key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(shipped_key, 0o600)
    for conf in ("conf/qmp-bridge.example.yaml", "conf/minimal.yaml", "conf/libvirt.yaml",
                 "packaging/qmp-bridge.yaml"):
        with open(os.path.join(util.SOURCE_DIR, conf)) as f:
            text = f.read().replace("/etc/qmp-bridge/commands.key", shipped_key)
        path = os.path.join(d, "shipped-" + os.path.basename(conf))
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([bridge.binary(), "-c", path, "--check-config"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        err = r.stderr.decode()
        t.expect(r.returncode == 0 and "configuration OK" in r.stdout.decode(),
                 "%s: exit 0, configuration OK" % conf, err)
        t.expect("warning" not in err, "%s: no warning" % conf, err)

    t.section("at start-up")
    br = bridge.Bridge(d, [], bridge_id="h", extra_yaml="commands: { enabled: true }\n")
    br.start()
    t.add_log("bridge", br.log)
    line = br.wait_log("warn", UNSIGNED)[0]
    t.ok("logged at warn level", line)
    br.stop()
    quiet = os.path.join(d, "quiet")
    os.mkdir(quiet)
    br = bridge.Bridge(quiet, [], bridge_id="h").start()
    br.wait_log("transport stdout", "started")  # the warnings come before the transports
    t.expect(not br.log_lines("warn", "commands"), "no warning with commands off",
             br.log_lines("warn"))
    br.stop()
