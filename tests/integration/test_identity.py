#!/usr/bin/python3
"""Identity: two bridges with the same bridge.id on one mosquitto (MQTT 5) take
the session from each other; each one that loses it logs, at warn level, that the
broker took the session over for another client with the same client id, naming
that client id and the bridge id. A bridge without bridge.id takes the host name
(run in a UTS namespace with a host name of the test's choosing): its status
topic, its VMs' topics and its MQTT client id carry it. A host name that is not a
valid bridge id is refused by --check-config, naming the host name and the rule;
"localhost", which many hosts share, is a warning.
Against a scripted broker that sends MQTT 5 DISCONNECT 0x8E (mosquitto 2.0.11
only closes the connection), the warning quotes that reason."""
import os
import socket
import subprocess
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, util  # noqa: E402

FAKE_BROKER = os.path.join(util.SOURCE_DIR, "tests", "tools", "mqtt_takeover_broker.py")
SETHOST = ("import os, socket, sys; socket.sethostname(sys.argv[1]); "
           "os.execvp(sys.argv[2], sys.argv[2:])")


def with_hostname(name):
    """argv prefix running a command in a new UTS namespace whose host name is name."""
    return ["unshare", "--uts", sys.executable, "-c", SETHOST, name]


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def can_set_hostname():
    try:
        r = subprocess.run(with_hostname("qb-probe") + ["/bin/hostname"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and r.stdout.strip() == b"qb-probe"


with check.Test("identity") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()

    t.section("two bridges with one bridge.id")
    dirs = []
    for i in (1, 2):
        wd = os.path.join(d, "b%d" % i)
        os.mkdir(wd)
        dirs.append(wd)
    a = bridge.Bridge(dirs[0], [], broker=broker, bridge_id="twin", stdout_path=False).start()
    t.add_log("bridge a", a.log)
    sub.wait_for(lambda m: m.topic == "qmp/twin/status" and m.raw == b"online", 20, "a online")
    b = bridge.Bridge(dirs[1], [], broker=broker, bridge_id="twin", stdout_path=False).start()
    t.add_log("bridge b", b.log)

    def taken_over_lines():
        return [l for br in (a, b) for l in br.log_lines("session taken over", "warn")]
    lines = procs.wait_until(taken_over_lines, 30, "a 'session taken over' warning")
    line = lines[0]
    t.expect("'qmp-bridge-twin'" in line and "bridge.id 'twin'" in line
             and "two bridges share" in line,
             "the warning names the client id and the bridge id and says two bridges share it",
             line)
    t.expect(a.alive() and b.alive(), "both bridges keep running (reconnecting with back-off)")
    a.stop()
    b.stop()
    t.ok("both stopped")

    t.section("a broker that says 'session taken over' (MQTT 5 DISCONNECT 0x8E)")
    fake = types.SimpleNamespace(port=util.free_port())
    fake_log = os.path.join(d, "fake_broker.log")
    procs.spawn([sys.executable, FAKE_BROKER, "--port", str(fake.port)], "mqtt_takeover_broker",
                stdout=fake_log, stderr=fake_log)
    procs.wait_until(lambda: port_open(fake.port), 10, "the scripted broker to listen")
    t.add_log("scripted broker", fake_log)
    pair = []
    for i in (3, 4):
        wd = os.path.join(d, "b%d" % i)
        os.mkdir(wd)
        pair.append(bridge.Bridge(wd, [], broker=fake, bridge_id="twin", stdout_path=False).start())
        t.add_log("bridge %d" % i, pair[-1].log)

    def said_lines():
        return [l for br in pair for l in br.log_lines("MQTT 5 'session taken over'", "warn")]
    line = procs.wait_until(said_lines, 30, "a warning quoting the broker's reason")[0]
    t.expect("'qmp-bridge-twin'" in line and "bridge.id 'twin'" in line
             and "two bridges share" in line,
             "the broker's reason is quoted with the client id and the bridge id", line)
    for br in pair:
        br.stop()

    t.section("bridge.id defaults to the host name")
    if not can_set_hostname():
        print("SKIP cannot run the bridge in a UTS namespace of its own (unshare --uts)")
        sys.exit(77)
    host = "qb-node7.example.org"
    vm_dir = os.path.join(d, "hostvm")
    os.mkdir(vm_dir)
    vms = peers.start_event_peers(vm_dir, ["vm1"], 5)
    c = bridge.Bridge(vm_dir, vms, broker=broker, bridge_id="unused", stdout_path=False)
    c.yaml = c.yaml.replace("bridge: { id: unused, ", "bridge: { ")
    t.expect("id:" not in c.yaml.splitlines()[0], "the config has no bridge.id", c.yaml.splitlines()[0])
    with open(c.conf, "w") as f:
        f.write(c.yaml)
    c.start(prefix=with_hostname(host))
    t.add_log("bridge c", c.log)
    sub.wait_for(lambda m: m.topic == "qmp/%s/status" % host and m.raw == b"online", 20,
                 "qmp/%s/status online" % host)
    t.ok("status topic under the host name", "qmp/%s/status" % host)
    m = sub.wait_for(lambda m: m.topic.startswith("qmp/%s/vm1/event/" % host), 20,
                     "an event of vm1 under the host name")
    t.expect(host in m.json["source"],
             "the envelope's source names the host", m.json["source"])
    procs.wait_until(lambda: "as qmp-bridge-%s " % host in util.tail(broker.log, 400), 10,
                     "mosquitto to log client id qmp-bridge-%s" % host)
    t.ok("MQTT client id qmp-bridge-<host name>")
    c.stop()

    t.section("a host name that is not a valid bridge id")
    conf = os.path.join(d, "noid.yaml")
    with open(conf, "w") as f:
        f.write("transports:\n  - { type: stdout }\n")
    r = subprocess.run(with_hostname("bad_host!") + [bridge.binary(), "-c", conf, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    err = r.stderr.decode()
    t.expect(r.returncode == 1 and "bridge.id" in err and "'bad_host!'" in err
             and "[A-Za-z0-9._-]" in err and "set bridge.id" in err,
             "--check-config exits 1 naming the host name and the rule", (r.returncode, err))
    r = subprocess.run(with_hostname("good-host") + [bridge.binary(), "-c", conf, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    out = r.stdout.decode()
    t.expect(r.returncode == 0 and "bridge good-host" in out and "warning" not in r.stderr.decode(),
             "a valid host name is the id, without a warning", (r.returncode, out, r.stderr.decode()))
    r = subprocess.run(with_hostname("localhost") + [bridge.binary(), "-c", conf, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    err = r.stderr.decode()
    t.expect(r.returncode == 0 and "qmp-bridge: warning: bridge.id is the host name 'localhost'" in err
             and "set bridge.id" in err, "host name localhost: a warning, exit 0", (r.returncode, err))
