#!/usr/bin/python3
"""What ships for Prometheus and Grafana, against a running bridge.

One bridge with MQTT (mosquitto), Kafka (the mock cluster, statistics every 500 ms), a spool
and two scripted VMs: one paused on io-error (a BLOCK_IO_ERROR with action stop, then STOP),
one running. Checked:
- /metrics counts the VMs by run state (io-error 1, running 1, every other RunState 0, no VM
  label), has the process_* metrics, the Kafka brokers' round trip, the queue and spool
  bounds, and passes `promtool check metrics`;
- a reload of an invalid file sets qmp_bridge_config_last_reload_successful to 0 and keeps
  the last success's time; a good one sets 1 and a later time;
- packaging/prometheus/qmp-bridge-rules.yml passes `promtool check rules` and its cases
  (tests/prometheus/qmp-bridge-rules.test.yml) pass `promtool test rules`;
- every metric named by a query of packaging/grafana/qmp-bridge-dashboard.json and by an
  expression of the rules is in that scrape.
promtool comes from Debian's prometheus package (packaging/fetch-promtool.sh, into the build
directory; QB_PROMTOOL names another). Without it the name checks still run and the test
reports SKIP."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, mqtt, procs, util  # noqa: E402

SRC = util.SOURCE_DIR
RULES = os.path.join(SRC, "packaging", "prometheus", "qmp-bridge-rules.yml")
RULES_TEST = os.path.join(SRC, "tests", "prometheus", "qmp-bridge-rules.test.yml")
DASHBOARD = os.path.join(SRC, "packaging", "grafana", "qmp-bridge-dashboard.json")
PEER = os.path.join(SRC, "tests", "tools", "qmp_peer.py")
RUN_STATES = ["running", "debug", "inmigrate", "internal-error", "io-error", "paused",
              "postmigrate", "prelaunch", "finish-migrate", "restore-vm", "save-vm", "shutdown",
              "suspended", "watchdog", "guest-panicked", "colo", "unknown"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# PromQL words that are not metric names.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}


def promtool():
    """Path of a working promtool, or None."""
    path = os.environ.get("QB_PROMTOOL")
    if not path:
        build = os.environ.get("QB_BUILD_DIR") or os.path.join(SRC, "build")
        dest = os.path.join(build, "promtool")
        subprocess.run([os.path.join(SRC, "packaging", "fetch-promtool.sh"), dest],
                       stdout=subprocess.DEVNULL, check=False)
        path = os.path.join(dest, "promtool")
    return path if os.access(path, os.X_OK) else None


def metric_names(expr):
    """The metric names a PromQL expression reads: strings, label matchers, ranges and
    grouping label lists removed, then every identifier that is not a function (followed
    by '(') or a keyword. label_values(metric, label) keeps only its metric."""
    e = re.sub(r'label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,[^)]*\)', r'\1', expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', ' ', e)
    e = re.sub(r'\{[^}]*\}', ' ', e)
    e = re.sub(r'\[[^\]]*\]', ' ', e)
    e = re.sub(r'\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', ' ', e)
    e = re.sub(r'\$\w+', ' ', e)
    names = set()
    for m in re.finditer(r'(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?', e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in KEYWORDS or re.fullmatch(r'\d+[smhdwy]', word):
            continue
        names.add(word)
    return names


def dashboard_exprs(doc):
    """Every Prometheus query of a Grafana dashboard: panel targets (rows' panels too)
    and query variables."""
    out = []

    def panels(ps):
        for p in ps:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            panels(p.get("panels", []))
    panels(doc.get("panels", []))
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        if v.get("type") == "query":
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def rule_exprs(path):
    """The expr: of every rule (the file is YAML; rules' expressions are plain or folded
    scalars, read here without a YAML library)."""
    exprs, cur = [], None
    for line in open(path):
        m = re.match(r'^(\s*)expr:\s*(>-|>|\|)?\s*(.*)$', line)
        if m:
            if cur is not None:
                exprs.append(" ".join(cur))
            cur, indent = ([m.group(3)] if m.group(3) else []), len(m.group(1))
            continue
        if cur is not None:
            if line.strip() and len(line) - len(line.lstrip()) > indent:
                cur.append(line.strip())
            else:
                exprs.append(" ".join(cur))
                cur = None
    if cur is not None:
        exprs.append(" ".join(cur))
    return [e for e in exprs if e]


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def samples(text):
    """{name: [(labels dict, value)]} of the exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        out.setdefault(m.group(1), []).append((dict(LABEL.findall(m.group(2) or "")),
                                               float(m.group(3))))
    return out


def families(text):
    """Every metric name the exposition declares (# TYPE), histograms with their sample
    names: a family is exported even while it has no sample yet (no command run)."""
    out = set()
    for m in re.finditer(r'^# TYPE (\S+) (\S+)$', text, re.M):
        out.add(m.group(1))
        if m.group(2) == "histogram":
            out.update(m.group(1) + sfx for sfx in ("_bucket", "_sum", "_count"))
    return out


def one(s, name, **labels):
    vals = [v for l, v in s.get(name, []) if all(l.get(k) == x for k, x in labels.items())]
    return vals[0] if len(vals) == 1 else None


with check.Test("prometheus") as t:
    d = t.workdir
    tool = promtool()

    t.section("the name checker finds names, and only names")
    got = metric_names('histogram_quantile(0.99, sum by (transport, le) (rate('
                       'qmp_bridge_delivery_latency_seconds_bucket{instance=~"$instance",'
                       'job="x"}[$__rate_interval]))) / on(instance) group_left(version) '
                       'qmp_bridge_info or vector(0) > bool 1')
    t.expect(got == {"qmp_bridge_delivery_latency_seconds_bucket", "qmp_bridge_info"},
             "metric names of a composite query", got)
    got = metric_names("label_values(qmp_bridge_info, instance)")
    t.expect(got == {"qmp_bridge_info"}, "label_values() names only its metric", got)
    rexprs, dexprs = rule_exprs(RULES), dashboard_exprs(json.load(open(DASHBOARD)))
    t.expect(len(rexprs) == 6, "6 rule expressions read", rexprs)
    t.expect(len(dexprs) >= 20, "%d dashboard queries read" % len(dexprs))

    t.section("a bridge with a VM paused on io-error and a running one")
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    mock = kafka.KafkaMock(d, topics=[("qmp.events", 3, 3), ("qmp.state", 3, 3)]).start()
    t.add_log("kafka_mock", mock.log)
    vms = []
    for name, mode in (("vm-eio", ["--mode", "burst", "--count", "2"]),
                       ("vm-ok", ["--mode", "idle"])):
        sock = os.path.join(d, name + ".qmp")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock] + mode, "qmp_peer-" + name,
                    stderr=os.path.join(d, name + ".peer.log"))
        t.add_log(name, os.path.join(d, name + ".peer.log"))
        vms.append((name, sock))
    procs.wait_until(lambda: all(os.path.exists(s) for _, s in vms), 15, "peer sockets")
    port = util.free_port()
    br = bridge.Bridge(d, vms, broker=broker, stdout_path=False, log_level="info",
                       extra_yaml="metrics: { listen: \"127.0.0.1:%d\" }\n"
                                  "spool: { directory: %s }\n" % (port, os.path.join(d, "spool")))
    br.yaml = br.yaml.replace(
        "transports:\n", 'transports:\n  - { type: kafka, name: kafka, brokers: "%s", properties: '
        '{ statistics.interval.ms: "500" } }\n' % mock.bootstrap)
    good_yaml = br.yaml
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)

    def ready():
        try:
            s = samples(scrape(port))
        except OSError:
            return None
        return s if (one(s, "qmp_bridge_vms_by_run_state", run_state="io-error") == 1
                     and one(s, "qmp_bridge_vms_by_run_state", run_state="running") == 1
                     and s.get("qmp_bridge_broker_rtt_seconds")) else None
    s = procs.wait_until(ready, 60, "io-error 1, running 1 and a broker round trip in /metrics")
    text = scrape(port)
    s = samples(text)

    t.section("/metrics")
    runs = {l["run_state"]: v for l, v in s["qmp_bridge_vms_by_run_state"]}
    t.expect(sorted(runs) == sorted(RUN_STATES), "one run_state sample per RunState and unknown",
             sorted(runs))
    t.expect(all(v == 0 for k, v in runs.items() if k not in ("io-error", "running")),
             "the other run states are 0", runs)
    t.expect(all(set(l) == {"run_state"} for l, _ in s["qmp_bridge_vms_by_run_state"]),
             "no label but run_state (no VM names)")
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                 "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds"):
        t.expect(one(s, name) is not None and one(s, name) >= 0, "%s = %s" % (name, one(s, name)))
    t.expect(one(s, "process_resident_memory_bytes") > 1 << 20, "resident memory over 1 MiB")
    t.expect(one(s, "process_open_fds") <= one(s, "process_max_fds"), "open fds under the limit")
    t.expect(one(s, "process_start_time_seconds") <= time.time() + 1,
             "start time in the past")
    rtts = s["qmp_bridge_broker_rtt_seconds"]
    t.expect(all(l.get("transport") == "kafka" and re.fullmatch(r"[\w.-]+:\d+/\d+", l["broker"])
                 and v > 0 for l, v in rtts), "Kafka brokers' round trip by host:port/id", rtts)
    t.expect(not [l for l, _ in rtts if l.get("transport") == "mqtt"],
             "no round trip for MQTT (libmosquitto measures none)")
    t.expect(one(s, "qmp_bridge_queue_max_messages", transport="mqtt") == 10000,
             "queue bound of mqtt (default 10000)")
    t.expect(one(s, "qmp_bridge_spool_max_bytes") == 1 << 30, "spool bound (default 1 GiB)")
    t.expect(one(s, "qmp_bridge_config_last_reload_successful") == 1, "start-up counts as success")
    first_ok = one(s, "qmp_bridge_config_last_reload_success_timestamp_seconds")
    if tool:
        p = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
        t.expect(p.returncode == 0 and not (p.stdout + p.stderr).strip(),
                 "promtool check metrics: clean", p.stdout + p.stderr)

    t.section("reload outcome")
    with open(br.conf, "w") as f:
        f.write(good_yaml + "bogus_key: [\n")
    br.proc.send_signal(signal.SIGHUP)
    br.wait_log("reload:", "keeping the running configuration")
    s = samples(scrape(port))
    t.expect(one(s, "qmp_bridge_config_last_reload_successful") == 0, "a failed reload: 0")
    t.expect(one(s, "qmp_bridge_config_last_reload_success_timestamp_seconds") == first_ok,
             "the last success's time is kept")
    with open(br.conf, "w") as f:
        f.write(good_yaml)
    br.proc.send_signal(signal.SIGHUP)
    br.wait_log("reload:", "in force")
    text = scrape(port)
    s = samples(text)
    t.expect(one(s, "qmp_bridge_config_last_reload_successful") == 1, "a good reload: 1")
    t.expect(one(s, "qmp_bridge_config_last_reload_success_timestamp_seconds") >= first_ok,
             "its time is the newer one")

    t.section("every metric the dashboard and the rules name is exported")
    exported = families(text)
    t.expect(set(s) <= exported, "every sample under a declared family")
    for what, exprs in (("dashboard", dexprs), ("rules", rexprs)):
        for e in exprs:
            names = metric_names(e)
            t.expect(names and names <= exported, "%s: %s" % (what, e[:90]),
                     sorted(names - exported) or "no metric name found")

    if tool:
        t.section("promtool on the rules")
        p = subprocess.run([tool, "check", "rules", RULES], capture_output=True, text=True)
        t.expect(p.returncode == 0 and "SUCCESS: 6 rules found" in p.stdout,
                 "promtool check rules", p.stdout + p.stderr)
        p = subprocess.run([tool, "test", "rules", RULES_TEST], capture_output=True, text=True)
        t.expect(p.returncode == 0 and "SUCCESS" in p.stdout, "promtool test rules",
                 p.stdout + p.stderr)
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
    if not tool:
        procs.cleanup_all()
        print("SKIP promtool unavailable (offline?): the name checks passed, promtool's did not run")
        sys.exit(77)
