#!/usr/bin/python3
"""MQTT over TLS with a client certificate and a password, against a
mosquitto that requires both (require_certificate, allow_anonymous false).

The test makes its own CA, a server certificate for 127.0.0.1 and a client
certificate with the openssl CLI, and a mosquitto password file. Then:
- the good bridge delivers all 50 events of its VM (plus the connect pair)
  over TLS with sequences 1..52, valid envelopes, and a retained "online";
- a bridge with a wrong password and one without a client certificate keep
  running, log a line naming the broker and the refusal, deliver nothing to
  the broker (their stdout transport shows the events did exist), and exit 0
  on SIGTERM;
- kill -9 of the good bridge: the broker publishes its Last Will, so the
  retained status turns "offline"; restarted, it is "online" again;
- a password_file that does not exist is reported naming the file, at
  --check-config or at the latest when the bridge starts."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
USER = "bridge-user"
PASSWORD = "S3cret-pass"
EVENTS = 50
GOOD_ID = "tls-host"

# A private openssl config: the system one must not add or change extensions.
OPENSSL_CNF = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused
[ ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


def sh(*argv):
    """Runs a set-up tool; fails the test with its stderr if it fails."""
    r = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    if r.returncode != 0:
        raise check.CheckFailed("%s failed (%d): %s" % (" ".join(map(str, argv)), r.returncode,
                                                        r.stderr.decode(errors="replace")[-800:]))
    return r.stdout.decode(errors="replace")


def make_pki(d):
    """CA, server (CN localhost, SAN IP:127.0.0.1) and client certificates.
    Returns {name: path}."""
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(OPENSSL_CNF)
    p = {k: os.path.join(d, k) for k in ("ca.key", "ca.crt", "server.key", "server.crt",
                                          "client.key", "client.crt")}
    sh("openssl", "req", "-config", cnf, "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", "/CN=qbtest CA", "-extensions", "ca", "-keyout", p["ca.key"], "-out", p["ca.crt"])
    for who, cn in (("server", "localhost"), ("client", "qmp-bridge-client")):
        csr = os.path.join(d, who + ".csr")
        sh("openssl", "req", "-config", cnf, "-new", "-newkey", "rsa:2048", "-nodes",
           "-subj", "/CN=" + cn, "-keyout", p[who + ".key"], "-out", csr)
        sh("openssl", "x509", "-req", "-in", csr, "-CA", p["ca.crt"], "-CAkey", p["ca.key"],
           "-CAcreateserial", "-days", "2", "-extfile", cnf, "-extensions", who,
           "-out", p[who + ".crt"])
    sh("openssl", "verify", "-CAfile", p["ca.crt"], p["server.crt"], p["client.crt"])
    return p


class TlsBroker(mqtt.Broker):
    """qbtest.mqtt.Broker with a TLS listener that wants a client certificate
    and a password. start() returns once a TLS client with both is let in."""

    def __init__(self, workdir, pki, passwd_file):
        super().__init__(workdir)
        self.pki = pki
        with open(self.conf, "w") as f:
            # Started as root, mosquitto becomes user "mosquitto" before it
            # reads the password file, which sits in our 0700 temp dir.
            if os.geteuid() == 0:
                f.write("user root\n")
            f.write("per_listener_settings false\n"
                    "allow_anonymous false\n"
                    "password_file %s\n"
                    "persistence false\n"
                    "log_type all\n"
                    "listener %d 127.0.0.1\n"
                    "cafile %s\ncertfile %s\nkeyfile %s\n"
                    "require_certificate true\n"
                    % (passwd_file, self.port, pki["ca.crt"], pki["server.crt"], pki["server.key"]))

    def client_args(self):
        """mosquitto_sub/pub options that get a client in."""
        return ["-h", "127.0.0.1", "-p", str(self.port), "--cafile", self.pki["ca.crt"],
                "--cert", self.pki["client.crt"], "--key", self.pki["client.key"],
                "-u", USER, "-P", PASSWORD]

    def probe(self, topic, payload):
        """A QoS 1 publish; True once the broker acknowledged it."""
        r = subprocess.run(["mosquitto_pub"] + self.client_args() + ["-q", "1", "-t", topic,
                                                                      "-m", payload],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
        return r.returncode == 0

    def start(self):
        super().start()  # returns once the port accepts TCP
        procs.wait_until(lambda: self.proc.poll() is not None or self.probe("qmp/_probe", "up"), 15,
                         "mosquitto to accept a TLS client with certificate and password")
        if self.proc.poll() is not None:
            raise RuntimeError("mosquitto exited: %s" % util.tail(self.log))
        return self


class TlsSubscriber(mqtt.Subscriber):
    """qbtest.mqtt.Subscriber speaking TLS with the client certificate."""

    def start(self):
        self.proc = procs.spawn(
            ["mosquitto_sub"] + self.broker.client_args() +
            ["-V", "mqttv5", "-q", "1", "-t", self.topic, "-F", "%t\t%r\t%x"],
            "mosquitto_sub", stdout=self.out, stderr=self.log)
        self.wait_subscribed()
        return self

    def wait_subscribed(self):
        def seen():
            self._probe += 1
            self.broker.probe("qmp/_probe", "probe-%d" % self._probe)
            return any(m.topic == "qmp/_probe" for m in self.poll())
        procs.wait_until(seen, 15, "the TLS mosquitto_sub to subscribe", interval=0.2,
                         on_fail=lambda: print(util.tail(self.log)))

    def fetch_retained(self, topic, timeout=5.0):
        r = subprocess.run(["mosquitto_sub"] + self.broker.client_args() +
                           ["-V", "mqttv5", "-q", "1", "-t", topic, "-F", "%t\t%r\t%x",
                            "-C", "1", "-W", str(int(timeout)), "--retained-only"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 10)
        line = r.stdout.decode().strip()
        if not line:
            raise TimeoutError("no retained message on %s (%s)" % (topic, r.stderr.decode().strip()))
        t, retained, hexpayload = line.split("\t", 2)
        return mqtt.Message(-1, t, retained == "1", bytes.fromhex(hexpayload))


def retained_status(sub, bridge_id, want, what):
    """Waits until the retained qmp/<bridge>/status says want."""
    last = {}

    def ok():
        try:
            m = sub.fetch_retained("qmp/%s/status" % bridge_id, timeout=3)
        except TimeoutError:
            return None
        last["m"] = m
        return m if m.retained and m.raw == want else None
    try:
        return procs.wait_until(ok, 20, what, interval=0.3)
    except TimeoutError:
        raise check.CheckFailed("retained status of %s never became %r; last: %r" % (
            bridge_id, want, last.get("m")))


def start_peer(d, name, count):
    sock = os.path.join(d, name + ".qmp")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events", "--count", str(count),
                 "--name", name, "--interval", "0.02"], "qmp_peer-" + name,
                stderr=os.path.join(d, name + ".peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket " + sock)
    return sock


def write_file(path, text):
    """A secret: 0600, since the bridge refuses one that other users can read."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    return path


def make_bridge(t, name, bridge_id, vm_sock, mqtt_yaml, stdout_path=True):
    """A bridge in its own subdirectory whose transports are the given MQTT one
    (a YAML flow mapping body) and, unless stdout_path is False, stdout."""
    d = os.path.join(t.workdir, name)
    os.mkdir(d)
    br = bridge.Bridge(d, [("vm1", vm_sock)], bridge_id=bridge_id, stdout_path=stdout_path)
    br.yaml = br.yaml.replace("transports:\n", "transports:\n  - { type: mqtt, %s }\n" % mqtt_yaml)
    write_file(br.conf, br.yaml)
    t.add_log("bridge " + name, br.log)
    return br


def stdout_events(br):
    return util.read_jsonl(br.events_path)


def refused_bridge(t, sub, name, bridge_id, mqtt_yaml, needles, reasons):
    """Runs a bridge the broker turns away; checks it keeps running, logs a
    line with every needle and one of reasons (case-insensitive), publishes
    nothing and exits 0 on SIGTERM. Returns the first such line and the Bridge."""
    sock = start_peer(t.workdir, name, 20)
    br = make_bridge(t, name, bridge_id, sock, mqtt_yaml + ", shutdown_timeout: 1s")
    br.start()

    def refusals():
        return [l for l in br.log_lines(*needles) if any(r in l.lower() for r in reasons)]
    procs.wait_until(refusals, 20, "%s: a log line with %r and one of %r" % (name, needles, reasons))
    line = refusals()[0]
    t.ok("%s: log says why" % name, line.strip())
    procs.wait_until(lambda: len(stdout_events(br)) >= 22, 20, "%s: 22 events on stdout" % name)
    # a second attempt is refused the same way: no lucky retry gets through
    procs.wait_until(lambda: len(refusals()) >= 2, 20, "%s: a second refusal" % name)
    t.expect(br.alive(), "%s: still running after the refusals" % name)
    sub.poll()
    leaked = [m for m in sub.messages if m.topic.startswith("qmp/%s/" % bridge_id)]
    t.expect(not leaked, "%s: nothing reached the broker" % name, leaked[:5])
    rc = br.stop()
    t.expect(rc == 0, "%s: SIGTERM exits 0" % name, (rc, br.tail(10)))
    lost = br.log_lines("transport mqtt: closed,", "undelivered")
    t.expect(lost and " 0 messages" not in lost[0], "%s: shutdown counts the undelivered" % name, lost)
    return line, br


with check.Test("mqtt_tls_auth") as t:
    d = t.workdir
    t.section("PKI, password file, TLS broker")
    pki = make_pki(d)
    passwd = os.path.join(d, "mosquitto.passwd")
    sh("mosquitto_passwd", "-b", "-c", passwd, USER, PASSWORD)
    broker = TlsBroker(d, pki, passwd)
    t.add_log("mosquitto", broker.log)
    broker.start()
    t.ok("mosquitto lets in a TLS client with certificate and password", "port %d" % broker.port)
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "qmp/x",
                        "-m", "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
    t.expect(r.returncode != 0, "broker turns away a plain-TCP client", r.stderr.decode().strip())
    sub = TlsSubscriber(broker, name="sub")
    t.add_log("subscriber", sub.log)
    sub.start()

    t.section("good bridge: TLS, client certificate, password")
    good_pw = write_file(os.path.join(d, "good.password"), PASSWORD + "\n")
    tls = "tls: { ca_file: %s, cert_file: %s, key_file: %s }" % (
        json.dumps(pki["ca.crt"]), json.dumps(pki["client.crt"]), json.dumps(pki["client.key"]))
    common = "host: 127.0.0.1, port: %d, username: %s, %s, keepalive: 5s, " \
             "reconnect_initial: 100ms, reconnect_max: 500ms" % (broker.port, USER, tls)
    good_sock = start_peer(d, "good", EVENTS)
    good = make_bridge(t, "good", GOOD_ID, good_sock,
                       "%s, password_file: %s" % (common, json.dumps(good_pw)), stdout_path=False)
    good.start()
    on_event_topic = ("qmp/%s/vm1/event/" % GOOD_ID)
    sub.wait_count(lambda m: m.topic.startswith(on_event_topic), EVENTS + 2, timeout=60,
                   what="event envelopes of vm1")
    connected = good.log_lines("mqtt", "connected to 127.0.0.1:%d" % broker.port)
    t.expect(connected, "bridge logs the TLS connection", good.tail(10))
    envs = [m for m in check.vm_envelopes(sub, GOOD_ID, "vm1") if not check.on_state_topic(m)]
    seqs = [check.seq_int(m) for m in envs]
    t.expect(seqs == list(range(1, EVENTS + 3)), "event sequences 1..%d, no gap, no duplicate"
             % (EVENTS + 2), check.summarize(envs))
    t.expect([m.type for m in envs[:2]] == ["bridge.vm.connected", "qmp.vm.state"],
             "the connect pair comes first", [m.type for m in envs[:2]])
    qmp_events = [m for m in envs[2:] if m.type.startswith("qmp.")]
    t.expect(len(qmp_events) == EVENTS, "all %d QMP events arrived" % EVENTS, len(qmp_events))
    t.ok("every envelope passed the schema (checked as received)", "%d messages" % len(sub.messages))
    m = retained_status(sub, GOOD_ID, b"online", "online")
    t.ok("retained qmp/%s/status is online" % GOOD_ID, m)

    t.section("wrong password: refused, keeps running, delivers nothing")
    bad_pw = write_file(os.path.join(d, "bad.password"), "not-the-password\n")
    line_pw, _ = refused_bridge(t, sub, "badpass", "badpass-host",
                                "%s, password_file: %s" % (common, json.dumps(bad_pw)),
                                ("warn", "mqtt", "127.0.0.1:%d refused the connection" % broker.port),
                                ("not authori", "bad user name or password"))

    t.section("no client certificate: refused, keeps running, delivers nothing")
    # libmosquitto says why (the TLS alert) only through its log callback; the
    # bridge's own warning just says the connection was lost. So: a warning
    # naming the broker, and the reason in a warn line of libmosquitto's.
    no_cert_yaml = "host: 127.0.0.1, port: %d, username: %s, password_file: %s, " \
                   "tls: { ca_file: %s }, keepalive: 5s, reconnect_initial: 100ms, " \
                   "reconnect_max: 500ms" % (broker.port, USER, json.dumps(good_pw),
                                             json.dumps(pki["ca.crt"]))
    line_cert, nocert = refused_bridge(t, sub, "nocert", "nocert-host", no_cert_yaml,
                                       ("warn", "mqtt", "cannot connect to 127.0.0.1:%d" % broker.port),
                                       ("lost", "tls", "certificate"))
    # libmosquitto's own error text is the only place the TLS reason appears: it must be
    # logged at warn, so an operator at the default log level sees why.
    why = nocert.log_lines("warn", "mqtt", "certificate required")
    t.expect(why, "nocert: a warn line carries the TLS alert", line_cert)
    t.ok("nocert: TLS reason", why[0].strip())

    t.section("Last Will: kill -9 of the good bridge")
    procs.kill(good.proc)
    good.proc = None
    retained_status(sub, GOOD_ID, b"offline", "offline after kill -9")
    t.ok("broker published the will: retained status offline")
    offline = sub.wait_for(lambda m: m.topic == "qmp/%s/status" % GOOD_ID and m.raw == b"offline",
                           timeout=10, what="live offline on the subscriber")
    t.ok("subscriber saw the offline status live", offline)
    good.start()
    sub.wait_for(lambda m: m.topic == "qmp/%s/status" % GOOD_ID and m.raw == b"online"
                 and m.index > offline.index, timeout=20, what="online after the offline")
    retained_status(sub, GOOD_ID, b"online", "online after the restart")
    t.ok("restarted bridge: retained status online again")
    t.expect(good.stop() == 0, "good bridge: SIGTERM exits 0")

    t.section("password_file that does not exist")
    missing = os.path.join(d, "no-such.password")
    gone = make_bridge(t, "gone", "gone-host", good_sock,
                       "%s, password_file: %s" % (common, json.dumps(missing)), stdout_path=False)
    r = subprocess.run([bridge.binary(), "-c", gone.conf, "--check-config"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    cc_out = (r.stdout + r.stderr).decode().strip()
    t.ok("--check-config with a missing password_file", "exit %d: %s" % (r.returncode, cc_out))
    if r.returncode != 0:
        t.expect(missing in cc_out, "--check-config names the missing file", cc_out)
    else:
        gone.start()
        procs.wait_until(lambda: not gone.alive(), 20, "the bridge to give up on the missing file")
        rc = gone.proc.returncode
        procs.stop(gone.proc)
        gone.proc = None
        named = gone.log_lines(missing)
        t.expect(rc != 0 and named, "start: exits non-zero naming the file", (rc, gone.tail(10)))
        t.ok("start with a missing password_file", "exit %d: %s" % (rc, named[0].strip()))

    print("refusal lines:\n  %s\n  %s\n  %s" % (line_pw.strip(), line_cert.strip(), why[0].strip()))
