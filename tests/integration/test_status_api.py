#!/usr/bin/python3
"""The HTTP status API (metrics.listen) and `qmp-bridge --status`, against a running bridge
with two scripted QMP peers and a real mosquitto.

/metrics is parsed line by line (the Prometheus text format: HELP/TYPE, samples, histogram
buckets cumulative with a +Inf bucket equal to _count) and its numbers are checked against
what the test did: VMs ready, events by type, envelopes confirmed per transport, delivery
latency observations. /healthz answers; /readyz is ready while the broker is up and says
why not (503, the transport's name) while it is down; /vms lists both VMs with their
session and run state; --status prints the same and exits 0 when ready, 1 when not, and 3
when the daemon cannot be reached."""
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, util  # noqa: E402

PER_VM = 104


def get(port, path):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')


def parse_metrics(text):
    """Returns {(name, frozenset(labels)): value} and checks the format's rules."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name not in types, "TYPE twice for " + name
            types[name] = typ
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        assert m.group(1) in types or base in types, "sample before its TYPE: " + line
        samples[(m.group(1), labels)] = float(m.group(4))
    # histograms: cumulative buckets, +Inf == _count
    for (name, labels), v in samples.items():
        if name.endswith("_count") and types.get(name[:-6]) == "histogram":
            base = name[:-6]
            buckets = sorted((float(dict(l)["le"]), val) for (n, l), val in samples.items()
                             if n == base + "_bucket" and l - {("le", dict(l)["le"])} == labels)
            assert buckets and buckets[-1][0] == float("inf") and buckets[-1][1] == v, \
                "%s: +Inf bucket != _count" % base
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), base + " not cumulative"
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


with check.Test("status_api") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    vms = peers.start_event_peers(d, ["vm1", "vm2"], PER_VM)
    port = util.free_port()
    br = bridge.Bridge(d, vms, broker=broker, bridge_id="stat", log_level="info",
                       extra_yaml="metrics: { listen: \"127.0.0.1:%d\" }\n" % port)
    t.add_log("bridge", br.log)
    br.start()
    procs.wait_until(lambda: len(util.read_jsonl(br.events_path)) >= 2 * (PER_VM + 2), 60,
                     "both peers' events on stdout")

    t.section("/metrics")
    status, ctype, text = get(port, "/metrics")
    t.expect(status == 200 and ctype.startswith("text/plain; version=0.0.4"), "200, Prometheus text",
             (status, ctype))
    samples, types = parse_metrics(text)
    t.ok("%d samples in %d families, format rules hold" % (len(samples), len(types)))
    t.expect(value(samples, "qmp_bridge_vms", state="ready") == 2, "2 VMs ready",
             value(samples, "qmp_bridge_vms", state="ready"))
    rtc = value(samples, "qmp_bridge_qmp_events_total", type="qmp.event")
    t.expect(rtc and rtc >= 2 * 100, "QMP events counted by type (RTC_CHANGE -> qmp.event)", rtc)
    t.expect(value(samples, "qmp_bridge_qmp_events_total", type="bridge.vm.connected") == 2,
             "bridge.vm.connected counted once per VM")

    # per VM: PER_VM QMP events + connected + the state snapshot are events; the
    # state-topic copies (the snapshot's, and after STOP/RESUME) are not
    def confirmed():
        s, _ = parse_metrics(get(port, "/metrics")[2])
        env = value(s, "qmp_bridge_envelopes_confirmed_total", transport="mqtt") or 0
        ev = value(s, "qmp_bridge_events_confirmed_total", transport="mqtt") or 0
        return s if env >= 2 * (PER_VM + 3) and ev >= 2 * (PER_VM + 2) else None
    samples = procs.wait_until(confirmed, 30, "MQTT confirmations to be counted")
    env = value(samples, "qmp_bridge_envelopes_confirmed_total", transport="mqtt")
    ev = value(samples, "qmp_bridge_events_confirmed_total", transport="mqtt")
    t.ok("envelopes confirmed per transport", env)
    t.expect(ev == 2 * (PER_VM + 2) and env >= ev + 2,
             "events confirmed: every event, and none of the state-topic copies", (env, ev))
    lat = value(samples, "qmp_bridge_delivery_latency_seconds_count", transport="mqtt")
    t.expect(lat and lat >= 2 * PER_VM, "delivery latency observed for every confirmed event", lat)
    t.expect(value(samples, "qmp_bridge_transport_up", transport="mqtt") == 1, "mqtt link up")
    t.expect(any(n == "qmp_bridge_info" and ("bridge", "stat") in l and v == 1
                 for (n, l), v in samples.items()), "qmp_bridge_info{version, bridge=\"stat\"} 1")

    t.section("/healthz, /readyz, /vms")
    status, ctype, body = get(port, "/healthz")
    t.expect(status == 200 and json.loads(body) == {"status": "ok"}, "/healthz ok", body)
    status, _, body = get(port, "/readyz")
    t.expect(status == 200 and json.loads(body)["ready"] is True, "/readyz ready", body)
    status, _, body = get(port, "/vms")
    vmlist = json.loads(body)
    t.expect([v["name"] for v in vmlist] == ["vm1", "vm2"], "/vms lists both VMs, sorted", vmlist)
    t.expect(all(v["session"] == "ready" and v["run_state"] == "running" and
                 v["qemu_version"].startswith("7.2") and v["sequence"] >= PER_VM + 2 and
                 v["last_event"] for v in vmlist), "session, run state, version, sequence, last event",
             vmlist)
    out = subprocess.run([bridge.binary(), "--status", "-c", br.conf], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    t.expect(out.returncode == 0 and b"ready: yes" in out.stdout and b"vm1" in out.stdout and
             b"vm2" in out.stdout, "--status prints the table, exit 0", out.stdout.decode())
    print(out.stdout.decode())

    t.section("not ready while the broker is down")
    broker.stop()

    def not_ready():
        st, _, b = get(port, "/readyz")
        return (st, b) if st == 503 else None
    st, body = procs.wait_until(not_ready, 30, "/readyz to say 503")
    reasons = json.loads(body)["reasons"]
    t.expect(any("mqtt" in r for r in reasons), "503 names the transport", reasons)
    out = subprocess.run([bridge.binary(), "--status", "-c", br.conf], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    t.expect(out.returncode == 1 and b"ready: no" in out.stdout, "--status exits 1 when not ready",
             (out.returncode, out.stdout.decode()))
    broker.start()
    procs.wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "ready again")
    t.ok("ready again once the broker is back")

    t.section("--status without a daemon")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
    out = subprocess.run([bridge.binary(), "--status", "-c", br.conf], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=30)
    t.expect(out.returncode == 3 and b"cannot reach" in out.stderr, "exit 3, says why",
             (out.returncode, out.stderr.decode()))
    print("METRICS SAMPLE:\n" + "\n".join(l for l in text.splitlines()
                                          if l.startswith("qmp_bridge_") and "_bucket" not in l)[:4000])
