#!/usr/bin/python3
"""Hostile QMP intake: peers that withhold a reply and flood events, and listen-mode name churn.

Part 1, held-back events (one bridge, default qmp.max_held_events / max_held_bytes, stdout
transport, metrics on a unix socket). Served by tests/tools/qmp_peer.py:
  good      streams RTC_CHANGE events (STOP/RESUME every 50), --count of them
  bad       never answers the snapshot's query-status and floods 32 MiB of RTC_CHANGE per
            connection (about 220,000 events; a bridge that holds them all grows by
            hundreds of MB)
  stopper   answers the snapshot, sends a STOP with no reason before it, never answers
            the STOP's query-status and floods
  slow      like bad, but floods only 11 s after the query-status came (command_timeout
            30 s here), so its session has been ready longer than the 10 s that count as a
            stable session
  listen    a listen-mode peer (QEMU's reconnect=, here 0.2 s) that never answers
            query-name and floods lines of 4 KiB, so the byte bound trips first
  named     a listen-mode peer that answers query-name (no -name: the VM is vm-<pid>) but
            never its snapshot's query-status, and floods
Checked: the bridge's resident memory (VmRSS) grows by less than RSS_BOUND over the whole
run (plain builds; reported only under ASan/valgrind); each hostile session is closed with a
log line naming the VM (or the listen connection) and the bound, counted in
qmp_bridge_qmp_sessions_closed_total{reason}; bad, stopper and slow reconnect again and
again with attempt numbers 1, 2, 3... and non-decreasing delays (read from the debug log,
no clock involved), so a close for holding too much never resets the back-off, not even
after a session older than 10 s (slow); the STOP is published; the listen peer is
closed again on every connection and nothing is published for it; and every one of good's
events arrives, in order, with a contiguous sequence.

Part 2, listen-mode growth (a second bridge with MQTT and the Kafka mock cluster,
qmp.listen_max_vms 50, qmp.listen_forget_after 3s):
  - a VM that connects, takes its snapshot (retained state on <prefix>/<bridge>/<vm>/state)
    and goes away is forgotten after 3 s: gone from /vms, counted, and its retained state
    is cleared (a fresh subscriber gets no retained message; on Kafka's state topic, read
    with kcat -Z, its key's last record is a tombstone: NULL value, no ce_ headers);
  - 1,000 connections answering query-name with 1,000 different names: replaying the
    log's "added" and "forgotten" lines never finds more than 50 entries at once, the rest
    are refused with a log line (counted as reason listen_max_vms) and nothing is
    published under a refused name; once all are forgotten /vms is empty and no retained
    state is left on <prefix>/<bridge>/+/state."""
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest.status import http_unix, metric  # noqa: E402
from qbtest import bridge, check, kafka, mqtt, procs, streamcheck, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
GOOD_COUNT = 3000
# The bounds hold about 2 MiB per hostile session (raw lines); jemalloc's arenas, the
# framer, jansson trees of one read and the stdout transport's queue come on top. A bridge
# that holds the floods grows by several hundred MB.
RSS_BOUND = 48 * 1024 * 1024
CAP = 50
CHURN = 1000


def spawn_peer(d, name, *args):
    logf = os.path.join(d, name + ".peer.log")
    procs.spawn(["/usr/bin/python3", PEER] + list(args), "qmp_peer-" + name, stderr=logf)
    return logf


def connections(logf):
    try:
        with open(logf) as f:
            return f.read().count("client connected")
    except FileNotFoundError:
        return 0


def attempts(br, vm):
    """(attempt, delay ms) of every "[vm] reconnecting in N ms (attempt K)" debug line."""
    out = []
    for line in br.log_lines("[%s] reconnecting in" % vm):
        m = re.search(r"reconnecting in (\d+) ms \(attempt (\d+)\)", line)
        if m:
            out.append((int(m.group(2)), int(m.group(1))))
    return out


def check_backoff(t, br, vm, n):
    a = attempts(br, vm)[:n]
    t.expect(len(a) >= n and [k for k, _ in a] == list(range(1, n + 1)),
             "%s: reconnect attempts numbered 1..%d: the back-off never went back to the start"
             % (vm, n), a)
    t.expect(all(x[1] <= y[1] for x, y in zip(a, a[1:])), "%s: reconnect delays never shrink" % vm,
             [ms for _, ms in a])


def part1(t, d):
    socks = {n: os.path.join(d, n + ".qmp") for n in ("good", "bad", "stopper", "slow")}
    logs = {
        "good": spawn_peer(d, "good", "--socket", socks["good"], "--mode", "events",
                           "--count", str(GOOD_COUNT), "--name", "good", "--interval", "0.002"),
        "bad": spawn_peer(d, "bad", "--socket", socks["bad"], "--mode", "withhold-flood",
                          "--flood-after", "1"),
        "stopper": spawn_peer(d, "stopper", "--socket", socks["stopper"], "--mode", "stop-flood"),
        "slow": spawn_peer(d, "slow", "--socket", socks["slow"], "--mode", "withhold-flood",
                           "--flood-after", "11", "--flood-bytes", str(4 * 1024 * 1024)),
    }
    for name, logf in logs.items():
        t.add_log("qmp_peer " + name, logf)
    procs.wait_until(lambda: all(os.path.exists(s) for s in socks.values()), 15, "peer sockets")
    listen = os.path.join(d, "qb.sock")
    status = os.path.join(d, "status.sock")
    br = bridge.Bridge(d, sorted(socks.items()),
                       qmp_extra={"reconnect_initial": "100ms", "reconnect_max": "20s",
                                  "command_timeout": "30s",
                                  "listen": json.dumps("unix:" + listen)},
                       extra_yaml="metrics: { listen: %s }\n" % json.dumps("unix:" + status))
    t.add_log("bridge", br.log)
    br.start()
    br.wait_log("[good] state resynced")
    base = procs.rss(br.proc.pid)
    logs["listen"] = spawn_peer(d, "listen", "--connect", listen, "--mode", "withhold-flood",
                                "--withhold", "query-name", "--flood-line-bytes", "4096",
                                "--reconnect", "0.2")
    t.add_log("qmp_peer listen", logs["listen"])
    logs["named"] = spawn_peer(d, "named", "--connect", listen, "--mode", "withhold-flood",
                               "--withhold", "query-status", "--reconnect", "0.2")
    t.add_log("qmp_peer named", logs["named"])

    me = "[listen:%s pid " % listen

    def listen_closes():
        return br.log_lines(me, "closing the QMP session", "waiting for query-name",
                            "over qmp.max_held_bytes")

    def named_closes():
        return [l for l in br.log_lines("closing the QMP session", "waiting for its snapshot",
                                        "over qmp.max_held_events") if "] closing" in l and "[vm-" in l]

    t.section("hostile peers are closed again and again; memory stays bounded")
    peak = base
    deadline = time.monotonic() + 90 * util.TIMEOUT_SCALE
    want = {"bad": 5, "stopper": 4, "slow": 3, "listen": 4, "named": 3}
    # A connection may also end before its flood reaches the bound (a handshake timeout
    # under valgrind): wait for the closes at the bound that are checked below, too.
    while time.monotonic() < deadline and br.alive():
        peak = max(peak, procs.rss(br.proc.pid))
        if all(connections(logs[n]) >= k for n, k in want.items()) and \
                len(listen_closes()) >= 3 and len(named_closes()) >= 2 and \
                len(br.log_lines("closing the QMP session", "over qmp.max_held_events")) >= 11:
            break
        time.sleep(0.05)
    peak = max(peak, procs.rss(br.proc.pid))
    growth = peak - base
    if bridge.instrumented():
        t.ok("resident memory %d -> %d bytes (not bounded under ASan/valgrind: reported only)"
             % (base, peak))
    else:
        t.expect(growth < RSS_BOUND, "resident memory grew by %d bytes, under %d" % (growth, RSS_BOUND),
                 "baseline %d, peak %d" % (base, peak))
    got = {n: connections(logs[n]) for n in want}
    t.expect(all(got[n] >= k for n, k in want.items()),
             "every hostile peer was connected again and again (want %s)" % want, got)
    t.expect(br.alive(), "the bridge is alive")

    t.section("logs, metrics, back-off")
    for vm, what in (("bad", "its snapshot"), ("stopper", "query-status")):
        lines = br.log_lines("[%s] closing the QMP session" % vm, "waiting for " + what,
                             "over qmp.max_held_events")
        t.expect(lines, "%s: the log names the VM, what it waited for and the bound" % vm,
                 br.log_lines("[%s]" % vm)[-5:])
    t.expect(br.log_lines("[slow] closing the QMP session", "over qmp.max_held_events"),
             "slow: closed for the bound after its quiet 11 s")
    lines = listen_closes()
    t.expect(len(lines) >= 3, "the listen connection is closed each time, naming itself and "
             "qmp.max_held_bytes", lines[:2])
    named = named_closes()
    t.expect(len(named) >= 2, "a named listen VM (vm-<pid>) that withholds its snapshot is closed "
             "each time its QEMU comes back (QEMU's reconnect= sets the pace)", named[:2])
    check_backoff(t, br, "bad", 4)
    check_backoff(t, br, "stopper", 3)
    check_backoff(t, br, "slow", 2)
    # The peers go on reconnecting: count the log lines before and after the scrape.
    def held_closes():
        return len(br.log_lines("closing the QMP session", "over qmp.max_held_events"))
    before, bytes_before = held_closes(), len(listen_closes())
    n_events = metric(status, "qmp_bridge_qmp_sessions_closed_total", reason="held_events")
    n_bytes = metric(status, "qmp_bridge_qmp_sessions_closed_total", reason="held_bytes")
    after, bytes_after = held_closes(), len(listen_closes())
    t.expect(n_events is not None and before <= n_events <= after and n_events >= 11,
             "qmp_bridge_qmp_sessions_closed_total{reason=\"held_events\"} counts every close",
             (n_events, before, after))
    t.expect(n_bytes is not None and bytes_before <= n_bytes <= bytes_after,
             "qmp_bridge_qmp_sessions_closed_total{reason=\"held_bytes\"} counts the listen closes",
             (n_bytes, bytes_before, bytes_after))

    t.section("what was published")
    procs.wait_until(lambda: sum(1 for e in util.read_jsonl(br.events_path)
                                 if e["subject"] == "good" and e["type"] != "qmp.vm.state"
                                 and e["type"].startswith("qmp.")) >= GOOD_COUNT,
                     60 * util.TIMEOUT_SCALE, "all of good's events")
    envs = util.read_jsonl(br.events_path)
    good = [e for e in envs if e["subject"] == "good"]
    qmp = [e for e in good if e["type"].startswith("qmp.") and e["type"] != "qmp.vm.state"]
    t.expect(len(qmp) == GOOD_COUNT, "good: all %d events published" % GOOD_COUNT, len(qmp))
    rtc = [e["data"]["data"]["offset"] for e in qmp
           if e["type"] == "qmp.event" and e["data"]["name"] == "RTC_CHANGE"]
    t.expect(rtc == list(range(1, len(rtc) + 1)), "good: RTC_CHANGE offsets 1..%d in order" % len(rtc))
    rep = streamcheck.check(good)
    t.expect(rep.ok(), "good: its stream is contiguous and in order", str(rep))
    t.expect(not [e for e in envs if e["subject"] == "bad" and e["type"].startswith("qmp.")],
             "bad: none of its flood was published")
    stops = [e for e in envs if e["subject"] == "stopper" and e["type"] == "qmp.vm.stopped"]
    t.expect(stops, "stopper: its STOP is published (reason from what was known)",
             [e["type"] for e in envs if e["subject"] == "stopper"][:12])
    t.expect(not [e for e in envs if e["subject"] == "stopper" and e["type"] == "qmp.event"],
             "stopper: none of its flood was published")
    t.expect(not [e for e in envs if e["subject"].startswith("vm-") and e["type"].startswith("qmp.")],
             "nothing of the listen floods was published (the named one: connected and "
             "disconnected only)")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)


def retained(port, topic, wait=3):
    """Retained messages on topic (a filter) that a fresh subscriber gets within wait seconds."""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
                        "-t", topic, "-F", "%t\t%r\t%l", "-W", str(wait), "--retained-only"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=wait + 10)
    return [l for l in r.stdout.decode().splitlines() if l.strip()]


def part2(t, top):
    d = os.path.join(top, "p2")
    os.mkdir(d)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    mock = kafka.KafkaMock(d, topics=[("qmp.events", 3, 3), ("qmp.state", 3, 3)]).start()
    t.add_log("kafka_mock", mock.log)
    listen = os.path.join(d, "churn.sock")
    status = os.path.join(d, "churn-status.sock")
    br = bridge.Bridge(d, [], broker=broker, bridge_id="churn",
                       qmp_extra={"listen": json.dumps("unix:" + listen),
                                  "listen_max_vms": CAP, "listen_forget_after": "3s"},
                       extra_yaml="  - { type: kafka, brokers: %s }\nmetrics: { listen: %s }\n"
                       % (json.dumps(mock.bootstrap), json.dumps("unix:" + status)))
    t.add_log("churn bridge", br.log)
    br.start()
    br.wait_log("listen mode: QEMUs connect to unix:" + listen)

    def vms():
        return [v["name"] for v in json.loads(http_unix(status, "/vms")[1])]

    t.section("a listen VM that does not come back is forgotten and its retained state cleared")
    one = spawn_peer(d, "once", "--connect", listen, "--mode", "name-churn", "--count", "1",
                     "--name-prefix", "gone-")
    t.add_log("qmp_peer once", one)
    br.wait_log("[gone-1] state resynced")
    topic = "qmp/churn/gone-1/state"
    t.expect(retained(broker.port, topic, 5), "gone-1: its retained state is on %s" % topic)
    br.wait_log("[gone-1] waiting for QEMU to connect again")
    br.wait_log("[gone-1] forgotten", timeout=20 * util.TIMEOUT_SCALE)
    procs.wait_until(lambda: "gone-1" not in vms(), 10, "gone-1 to leave /vms")
    t.ok("gone-1 left /vms")
    procs.wait_until(lambda: not retained(broker.port, topic, 2), 20 * util.TIMEOUT_SCALE,
                     "the retained state of gone-1 to be cleared")
    t.ok("no retained message on %s any more" % topic)
    t.expect(metric(status, "qmp_bridge_listen_vms_forgotten_total") == 1,
             "qmp_bridge_listen_vms_forgotten_total is 1")
    kc = kafka.KcatConsumer(mock.bootstrap, "qmp.state", d, name="kcat-state", extra=["-Z"]).start()
    t.add_log("kcat qmp.state", kc.out)
    recs = kc.wait_count(1, 30 * util.TIMEOUT_SCALE,
                         lambda r: r.key == "churn/gone-1" and r.payload == "NULL")
    mine = [r for r in kc.records if r.key == "churn/gone-1"]
    t.expect(mine[0].payload != "NULL" and mine[0].json()["type"] == "qmp.vm.state",
             "Kafka: gone-1's state was on qmp.state", mine[0])
    t.expect(mine[-1] is recs[-1] and not [h for h in recs[-1].headers if h.startswith("ce_")],
             "Kafka: then a tombstone (key churn/gone-1, NULL value, no CloudEvents headers), "
             "the last record of that key", mine[-1])
    kc.stop()

    t.section("%d connections with %d names: at most %d entries" % (CHURN, CHURN, CAP))
    churn = spawn_peer(d, "churn", "--connect", listen, "--mode", "name-churn", "--count", str(CHURN),
                       "--name-prefix", "h-")
    t.add_log("qmp_peer churn", churn)
    procs.wait_until(lambda: "all %d connections done" % CHURN in open(churn).read(),
                     240 * util.TIMEOUT_SCALE, "the churn peer to finish", interval=0.5)
    live = vms()
    t.expect(len(live) <= CAP, "/vms lists %d VMs, at most %d" % (len(live), CAP))
    entries, most = 0, 0
    admitted, refused = set(), set()
    for line in br.log_text().splitlines():
        m = re.search(r"\[(h-\d+)\] (added, QMP at listen:|forgotten:|refusing the QMP connection)",
                      line)
        if not m:
            continue
        if m.group(2).startswith("added"):
            entries += 1
            admitted.add(m.group(1))
        elif m.group(2).startswith("forgotten"):
            entries -= 1
        else:
            refused.add(m.group(1))
        most = max(most, entries)
    t.expect(most <= CAP, "replaying the log: never more than %d entries at once" % CAP, most)
    t.expect(len(admitted) + len(refused) == CHURN and refused,
             "every name was either added or refused with a log line",
             (len(admitted), len(refused)))
    n_refused = metric(status, "qmp_bridge_qmp_sessions_closed_total", reason="listen_max_vms")
    t.expect(n_refused == len(refused),
             "qmp_bridge_qmp_sessions_closed_total{reason=\"listen_max_vms\"} counts the refusals",
             (n_refused, len(refused)))

    t.section("all forgotten: nothing left")
    procs.wait_until(lambda: not vms(), 30 * util.TIMEOUT_SCALE, "every churn VM to be forgotten")
    t.ok("/vms is empty")
    forgotten = metric(status, "qmp_bridge_listen_vms_forgotten_total")
    t.expect(forgotten == len(admitted) + 1, "every admitted VM was forgotten (and gone-1)",
             (forgotten, len(admitted)))
    procs.wait_until(lambda: not retained(broker.port, "qmp/churn/+/state", 2),
                     30 * util.TIMEOUT_SCALE, "no retained state left")
    t.ok("no retained message on qmp/churn/+/state")
    published = {e["subject"] for e in util.read_jsonl(br.events_path)}
    t.expect(not (published & refused), "nothing was ever published under a refused name",
             sorted(published & refused)[:5])
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)


with check.Test("hostile_qmp") as t:
    part1(t, t.workdir)
    part2(t, t.workdir)
