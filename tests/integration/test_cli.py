#!/usr/bin/python3
"""The command line: --version, --help, usage errors (exit 2), --check-config on
the shipped configs (exit 0) and on broken ones (exit 1 with file:line:column and
the key), a missing file; and a run against an MQTT broker that is down: the
bridge keeps running, stdout still gets every event, SIGTERM exits 0 and the log
says how many messages stayed undelivered."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, util  # noqa: E402

BIN = bridge.binary()
PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


def run(*args):
    r = subprocess.run([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def check_config(t, name, text):
    path = os.path.join(t.workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return run("-c", path, "--check-config")


with check.Test("cli") as t:
    t.section("version, help, usage errors")
    rc, out, _ = run("--version")
    t.expect(rc == 0 and out.startswith("qmp-bridge "), "--version", out)
    rc, out, _ = run("--help")
    t.expect(rc == 0 and "--check-config" in out, "--help lists the options", out[:200])
    rc, _, err = run("--no-such-option")
    t.expect(rc == 2 and "Usage" in err, "unknown option: exit 2 with usage", (rc, err[:200]))
    rc, _, err = run("stray")
    t.expect(rc == 2 and "stray" in err, "stray argument: exit 2", (rc, err[:200]))

    t.section("--check-config")
    for conf in ("qmp-bridge.example.yaml", "minimal.yaml"):
        rc, out, err = run("-c", os.path.join(util.SOURCE_DIR, "conf", conf), "--check-config")
        t.expect(rc == 0 and "configuration OK" in out, "conf/%s is valid" % conf, (rc, out, err))
    rc, _, err = check_config(t, "qos.yaml", "bridge: { id: h }\ntransports:\n"
                              "  - { type: mqtt, qos: three }\n")
    t.expect(rc == 1 and "qos.yaml:3:" in err and "transports[0].qos" in err,
             "bad qos: exit 1 naming file:line:column and the key", err.strip())
    rc, _, err = check_config(t, "syntax.yaml", "bridge: { id: h\nvms: [\n")
    t.expect(rc == 1 and "syntax.yaml:" in err and "YAML" in err, "YAML syntax error: exit 1", err.strip())
    rc, _, err = check_config(t, "unknown.yaml", "bridge: { id: h }\nvm: []\n")
    t.expect(rc == 1 and "unknown.yaml:2:1" in err and "vm" in err, "unknown key: exit 1", err.strip())
    rc, _, err = check_config(t, "prefix.yaml", "bridge: { id: h }\ntransports:\n"
                              "  - { type: mqtt, topic_prefix: \"a/#\" }\n")
    t.expect(rc == 1 and "prefix.yaml:3:" in err and "topic_prefix" in err,
             "transport-level check (wildcard in topic_prefix): exit 1", err.strip())
    rc, _, err = run("-c", os.path.join(t.workdir, "missing.yaml"), "--check-config")
    t.expect(rc == 1 and "missing.yaml" in err and "cannot read" in err, "missing file: exit 1", err.strip())

    t.section("MQTT broker down: the bridge runs on, stdout gets everything")
    d = t.workdir
    sock = os.path.join(d, "vm1.qmp")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events", "--interval", "0.05"],
                "qmp_peer", stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    dead_port = util.free_port()  # nothing listens here
    br = bridge.Bridge(d, [("vm1", sock)])
    br.yaml = br.yaml.replace("transports:\n", "transports:\n  - { type: mqtt, host: 127.0.0.1, port: %d, "
                              "reconnect_initial: 100ms, reconnect_max: 500ms, shutdown_timeout: 1s }\n"
                              % dead_port)
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)
    procs.wait_until(lambda: os.path.exists(br.events_path) and
                     sum(1 for _ in open(br.events_path)) >= 20, 20, "20 events on stdout")
    t.expect(br.alive(), "bridge still running with the broker down")
    warn = br.log_lines("mqtt", "127.0.0.1:%d" % dead_port)
    t.expect(warn, "log names the unreachable broker", br.tail(10))
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    undelivered = br.log_lines("closed,", "undelivered")
    t.expect(any("mqtt" in l and " 0 messages" not in l for l in undelivered),
             "shutdown says how many MQTT messages stayed undelivered", undelivered)
    with open(br.events_path) as f:
        seqs = [int(json.loads(l)["sequence"]) for l in f if l.strip()]
    t.expect(seqs == list(range(1, len(seqs) + 1)), "stdout stream complete: sequence 1..%d" % len(seqs))
