#!/usr/bin/python3
"""Kafka configuration mistakes and a cluster that is not there.

--check-config must refuse (exit 1) a librdkafka property librdkafka rejects,
a bad value (linger.ms: banana) and an unknown name, with a message naming
file:line:column, the property and librdkafka's own text, while the same file
with a good property passes (exit 0). Then a run against brokers on a closed
port: the bridge starts, logs a warning or error naming the broker address
and why, says the link is down, keeps running, and its stdout transport still
gets every event of the VM (schema-checked); SIGTERM exits 0 and the log says
how many Kafka messages stayed undelivered."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, procs, util  # noqa: E402

BIN = bridge.binary()
PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
COUNT = 40

CONF = """bridge: { id: cfg-host }
transports:
  - type: stdout
  - type: kafka
    brokers: "127.0.0.1:9092"
    properties:
      compression.type: lz4
      %s
"""

# property line, what librdkafka says about it (its rd_kafka_conf_set text)
BAD = [
    # librdkafka names linger.ms by its canonical alias
    ("linger.ms: banana", "linger.ms",
     'Invalid value for configuration property "queue.buffering.max.ms"'),
    ("no.such.property: 1", "no.such.property",
     'No such configuration property: "no.such.property"'),
    ("acks: sometimes", "acks", 'Invalid value for configuration property "request.required.acks"'),
]


def check_config(t, name, text):
    path = os.path.join(t.workdir, name)
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([BIN, "-c", path, "--check-config"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    return r.returncode, r.stderr.decode() + r.stdout.decode()


with check.Test("kafka_config_errors") as t:
    t.section("--check-config")
    rc, out = check_config(t, "good.yaml", CONF % "linger.ms: 20")
    t.expect(rc == 0, "a kafka transport with valid properties passes --check-config", (rc, out))
    for i, (line, key, rdtext) in enumerate(BAD):
        name = "bad%d.yaml" % i
        rc, out = check_config(t, name, CONF % line)
        t.expect(rc == 1, "%r: --check-config exits 1" % line, (rc, out))
        t.expect(re.search(r"%s:\d+:\d+: " % re.escape(name), out),
                 "%r: the message gives file:line:column" % line, out)
        t.expect("'%s'" % key in out and rdtext in out,
                 "%r: the message names the property and librdkafka's text" % line, out.strip())

    t.section("brokers on a closed port")
    d = t.workdir
    sock = os.path.join(d, "vm1.qmp")
    peer_log = os.path.join(d, "peer.log")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events",
                 "--count", str(COUNT), "--interval", "0.02"], "qmp_peer", stderr=peer_log)
    t.add_log("peer", peer_log)
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    port = util.free_port()  # nobody listens there: connections are refused
    addr = "127.0.0.1:%d" % port
    br = bridge.Bridge(d, [("vm1", sock)], bridge_id="cfg-host", log_level="info",
                       extra_yaml="  - { type: kafka, brokers: \"%s\", shutdown_timeout: 2s }\n" % addr)
    t.add_log("bridge", br.log)
    br.start()
    lines = br.wait_log(addr, timeout=15)
    named = [l for l in lines if re.search(r"Z (warn|error) ", l) and "refused" in l]
    t.expect(named, "a warn/error line names the broker %s and says the connection was refused"
             % addr, lines[:3])
    t.ok("log", named[0][24:])
    br.wait_log("kafka kafka: link down", timeout=15)
    t.ok("the bridge says the Kafka link is down", br.log_lines("link down")[0][24:])

    def stdout_envelopes():
        return util.read_jsonl(br.events_path)
    procs.wait_until(lambda: len(stdout_envelopes()) >= COUNT + 2, 30,
                     "%d envelopes on the stdout transport" % (COUNT + 2))
    envs = stdout_envelopes()
    for e in envs:
        kafka.validate_envelope(e)
    t.expect([int(e["sequence"]) for e in envs] == list(range(1, COUNT + 3)),
             "stdout transport got all %d envelopes of vm1 (sequence 1..%d), all valid"
             % (COUNT + 2, COUNT + 2), [e["sequence"] for e in envs][-3:])
    time.sleep(2.0)  # a bridge that gives up on the cluster would have done so by now
    t.expect(br.alive(), "the bridge keeps running without its Kafka cluster")

    t.section("shutdown")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    und = [l for l in br.log_lines("transport kafka: closed,") if "undelivered" in l]
    m = re.search(r"closed, (\d+) messages undelivered", und[0]) if und else None
    # every event, the shutdown's bridge.vm.disconnected, the state it leaves (connected:
    # false, on both topics) and the snapshot on qmp.state
    t.expect(m and int(m.group(1)) == COUNT + 6,
             "the log says %d Kafka messages stayed undelivered" % (COUNT + 6), und)
    t.expect(br.log_lines("transport stdout: closed, 0 messages undelivered"),
             "the stdout transport delivered everything")
