#!/usr/bin/python3
"""Hostile input on every input the bridge reads: QMP sockets, MQTT commands, the
config file. Each must cost only the one session, command or file it arrived in.

QMP: VM "bad" is served by qmp_peer.py --mode hostile, which sends one hostile
line per connection (oversized, 100000-deep nesting, non-UTF-8 inside a JSON
string, raw non-UTF-8 garbage, truncated JSON, then events whose fields have
the wrong types, after which that session streams valid events). VM "good"
streams a counted run of events the whole time. Checked: the bridge runs on; a
non-debug log line names "bad" and what was wrong for every case; the bad VM
reconnected after each and finally gets its snapshot (qmp.vm.state) and valid
events published; every one of good's events arrives on the stdout transport,
in order, with no gap, over a single connection.

Commands (MQTT): oversized, deeply nested, non-UTF-8 and truncated JSON
commands each get a rejection result naming the problem, on the default result
topic (they are not authenticated commands, so their Response Topic is not
used), and a valid command afterwards still runs.

Config: non-UTF-8, truncated mid-mapping, 100000-deep nesting, a 10 MB scalar,
a scalar just under the file cap and an alias bomb: `--check-config -c f`
exits 1 (the exit code for a bad configuration; 2 is for usage errors) with one
line naming file:line:column, quickly, under RLIMIT_AS 1 GiB (skipped in ASan
builds, whose shadow memory needs far more address space)."""
import json
import os
import re
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, schema, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
GOOD_COUNT = 300  # QMP events the good VM sends in all
MAX_LINE = 256 * 1024  # qmp.max_line_bytes: room for the nested line, not for the oversized one
# Per hostile case: what the bridge's log line about "bad" must say (case-insensitive).
# Broken framing or JSON must end the session with a reason (the first six);
# valid JSON with wrongly typed fields may instead be tolerated (the session
# goes on), but then whatever the bridge publishes must still be schema-valid.
QMP_CASES = [
    ("oversized", True, r"max_line_bytes|too long|too large|exceed|limit"),
    ("nested", True, r"nest|depth|deep"),
    ("bad-utf8-string", True, r"utf-?8|unicode|decode"),
    ("raw-garbage", True, r"invalid json|utf-?8|pars"),
    ("truncated", True, r"invalid json|premature|unexpected|end of"),
    ("event-not-string", True, r"event name.*not a string"),
    ("timestamp-string", False, r"timestamp|malformed"),
    ("data-array", False, r"data.*not an object|malformed"),
    ("field-types", False, r"device|operation|action|malformed|not a string"),
]


def is_asan_build(exe):
    """True when the bridge binary was built with AddressSanitizer."""
    if "asan" in exe:
        return True
    try:
        out = subprocess.run(["nm", "-D", exe], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             timeout=30).stdout
        out += subprocess.run(["ldd", exe], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"__asan_init" in out or b"libasan" in out


def qmp_section(t):
    d = os.path.join(t.workdir, "qmp")
    os.makedirs(d)
    bad_sock, bad_log = os.path.join(d, "bad.qmp"), os.path.join(d, "bad.peer.log")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", bad_sock, "--mode", "hostile", "--name", "bad",
                 "--oversize", str(MAX_LINE + 50000), "--nest-depth", "100000", "--interval", "0.05"],
                "qmp_peer-bad", stderr=bad_log)
    t.add_log("qmp_peer bad", bad_log)
    good_sock, good_log = os.path.join(d, "good.qmp"), os.path.join(d, "good.peer.log")
    # Slow enough that good is still streaming while every hostile case plays out.
    procs.spawn(["/usr/bin/python3", PEER, "--socket", good_sock, "--mode", "events", "--name", "good",
                 "--count", str(GOOD_COUNT), "--interval", "0.05"], "qmp_peer-good", stderr=good_log)
    t.add_log("qmp_peer good", good_log)
    procs.wait_until(lambda: os.path.exists(bad_sock) and os.path.exists(good_sock), 10, "peer sockets")
    br = bridge.Bridge(d, [("good", good_sock), ("bad", bad_sock)],
                       qmp_extra={"max_line_bytes": MAX_LINE}).start()
    t.add_log("bridge (qmp)", br.log)

    def peer_text(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    t.section("QMP: every hostile case is refused, logged and survived")
    last = QMP_CASES[-1][0]
    procs.wait_until(lambda: "hostile: " + last in peer_text(bad_log), 90, "bad's last hostile case")
    time.sleep(0.5)
    text = peer_text(bad_log)
    # The peer's log, one block per connection: which case it sent, whether it closed it itself.
    conns = re.split(r"qmp_peer\[\d+\]: client connected", text)[1:]
    # The bridge's non-debug lines about bad, cut into one segment per connection
    # (each starts at "connected to QEMU"): segment i must explain case i.
    segments = [[]]
    for line in br.log_lines("[bad]"):
        if "connected to QEMU" in line and "disconnected" not in line:
            segments.append([])
        elif not re.search(r"\bdebug\b", line):
            segments[-1].append(line.strip())
    for i, (case, must_close, reason) in enumerate(QMP_CASES):
        t.expect(i < len(conns) and "hostile: " + case in conns[i], "bad peer sent %s on connection %d"
                 % (case, i + 1))
        seg = segments[i + 1] if i + 1 < len(segments) else []
        hits = [l.split("[bad] ", 1)[1] for l in seg if re.search(reason, l.split("[bad]", 1)[1], re.I)
                and not re.search(r"state resynced|connected to|-> ready", l)]
        tolerated = "kept the connection" in conns[i] or (case == last and len(conns) == i + 1)
        if hits:
            t.ok("%-16s -> [bad] %s" % (case, hits[0]))
        else:
            t.expect(not must_close and tolerated,
                     "%-16s -> tolerated: the session stayed up, nothing logged above debug" % case,
                     "\n".join(seg))

    t.section("QMP: bad recovers, good never noticed")
    procs.wait_until(lambda: "sent all" in peer_text(good_log), 120, "good to send all its events")

    def bad_recovered():
        evs = [e for e in util.read_jsonl(br.events_path) if e["subject"] == "bad"]
        conn = [i for i, e in enumerate(evs) if e["type"] == "bridge.vm.connected"]
        if not conn:
            return None
        after = evs[conn[-1]:]
        state = [e for e in after if e["type"] == "qmp.vm.state"]
        rtc = [e for e in after if e["type"] == "qmp.event" and e["data"]["name"] == "RTC_CHANGE"]
        return (state, rtc, len(conn)) if state and len(rtc) >= 5 else None
    state, rtc, nconn = procs.wait_until(bad_recovered, 60, "bad's snapshot and 5 valid events")
    t.ok("bad: %d bridge.vm.connected; after the last one a snapshot (run_state %s) and %d RTC_CHANGE"
         % (nconn, state[-1]["data"]["run_state"], len(rtc)))
    t.expect(nconn >= 6, "bad: reconnected after each case that ended its session", nconn)

    def good_events():
        return [e for e in util.read_jsonl(br.events_path) if e["subject"] == "good"]

    def qmp_events(evs):  # one envelope per QMP event: RTC_CHANGE, STOP, RESUME
        return [e for e in evs if e["type"] in ("qmp.event", "qmp.vm.stopped", "qmp.vm.resumed")]
    procs.wait_until(lambda: len(qmp_events(good_events())) >= GOOD_COUNT, 60,
                     "all %d of good's events on stdout" % GOOD_COUNT)
    good = good_events()
    t.expect(len(qmp_events(good)) == GOOD_COUNT, "good: all %d QMP events published, none twice"
             % GOOD_COUNT, len(qmp_events(good)))
    qevents = [e for e in good if e["type"] == "qmp.event"]
    offsets = [e["data"]["data"]["offset"] for e in qevents if e["data"]["name"] == "RTC_CHANGE"]
    t.expect(offsets == list(range(1, len(offsets) + 1)) and len(offsets) > GOOD_COUNT * 9 // 10,
             "good: RTC_CHANGE offsets 1..%d in order" % len(offsets), offsets[:5] + offsets[-5:])
    seqs = list(dict.fromkeys(int(e["sequence"]) for e in good))
    t.expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "good: sequence without gaps or reorder",
             seqs[:5] + seqs[-5:])
    t.expect([e["type"] for e in good if e["type"].startswith("bridge.")] == ["bridge.vm.connected"],
             "good: connected once, never dropped")
    t.expect(peer_text(good_log).count("client connected") == 1, "good: one connection only")
    t.expect(br.alive(), "bridge still running")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)

    t.section("QMP: every envelope published is schema-valid")
    bad_envs = schema.invalid_envelopes(util.read_jsonl(br.events_path))
    t.expect(not bad_envs, "all envelopes valid against schema/v1", "\n".join(bad_envs[:10]))


def command_section(t):
    d = os.path.join(t.workdir, "cmd")
    os.makedirs(d)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    replies = os.path.join(d, "replies.out")
    procs.spawn(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5",
                 "-q", "1", "-t", "orch/r/#", "-t", "qmp/test-host/+/result", "-F", "%t\t%x"],
                "reply_sub", stdout=replies)
    sock = os.path.join(d, "vm1.qmp")
    qlog = os.path.join(d, "qmp-commands.jsonl")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle", "--command-log", qlog],
                "qmp_peer-cmd", stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    br = bridge.Bridge(d, [("vm1", sock)], broker=broker,
                       extra_yaml="commands: { enabled: true, allow: [stop, cont],\n"
                                  "  max_message_bytes: 256KiB }\n")
    br.start()
    t.add_log("bridge (commands)", br.log)
    br.wait_log("[vm1] state resynced")
    br.wait_log("receiving commands")
    time.sleep(0.5)  # the bridge's subscription reaches the broker

    def reply_for(topic, timeout=15):
        def find():
            try:
                with open(replies) as f:
                    for line in f:
                        tp, hx = line.rstrip("\n").split("\t", 1)
                        if tp == topic:
                            return json.loads(bytes.fromhex(hx))
            except FileNotFoundError:
                pass
            return None
        return procs.wait_until(find, timeout, "a reply on " + topic)

    def qmp_seen():
        try:
            with open(qlog) as f:
                return [json.loads(l)["execute"] for l in f if l.strip()]
        except FileNotFoundError:
            return []

    good = json.dumps(commands.make("stop", "vm1")).encode()  # sent last, and halved for "truncated"
    cases = [
        ("oversized", json.dumps(commands.make("stop", "vm1") | {"pad": "x" * 300000}).encode(),
         "too-large", r"max_message_bytes"),
        ("nested", b"[" * 100000 + b"]" * 100000, "invalid", r"nested|deep"),
        ("nested-object", b'{"a":' * 40000 + b"1" + b"}" * 40000, "invalid", r"nested|deep"),
        # A valid command but for invalid UTF-8 inside two of its strings.
        ("bad-utf8", json.dumps(commands.make("stop", "vm1")).encode().replace(
            b"qmp.command.stop", b"qmp.command.\xc3\x28st\xff\xfeop"), "invalid", r"utf-?8|unicode|invalid JSON"),
        ("raw-garbage", b"\x00\xff\xfe\x80garbage\xc0\xaf", "invalid", r"invalid JSON|utf-?8"),
        ("truncated", good[:len(good) // 2], "invalid", r"invalid JSON|premature|end of"),
    ]
    baseline = len(qmp_seen())
    def results_on(topic):
        return mqtt.hex_messages_on(replies, topic)

    result_topic = "qmp/test-host/vm1/result"
    t.section("commands: hostile payloads are rejected with a result")
    for case, payload, cls, reason in cases:
        seen = len(results_on(result_topic))
        commands.mqtt_publish(broker.port, "test-host", "vm1", payload,
                              response_topic="orch/r/" + case, correlation=case)
        env = procs.wait_until(lambda: results_on(result_topic)[seen:seen + 1], 15,
                               "a reply on " + result_topic)[0]
        mqtt.validate_envelope(env)
        res = env["data"]
        t.expect(res["status"] == "rejected" and res["error"]["class"] == cls and
                 re.search(reason, res["error"]["message"], re.I) and res["steps"] == [],
                 "%-13s (%d bytes) -> rejected %s: %s" % (case, len(payload), cls, res["error"]["message"]),
                 res)
        t.expect(br.log_lines("[vm1]", "rejected", res["error"]["message"][:40]),
                 "%s: the bridge logs the rejection" % case, br.tail(5))
    t.expect(len(qmp_seen()) == baseline, "QEMU received no command for any of them", qmp_seen()[baseline:])

    t.section("commands: a valid command still runs")
    commands.mqtt_publish(broker.port, "test-host", "vm1", good, response_topic="orch/r/valid",
                          correlation="valid")
    res = reply_for("orch/r/valid")["data"]
    t.expect(res["status"] not in ("rejected", "failed"), "valid stop -> %s" % res["status"], res)
    t.expect("stop" in qmp_seen()[baseline:], "QEMU got the stop", qmp_seen()[baseline:])
    t.expect(br.alive(), "bridge still running")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0", rc)


def config_section(t):
    d = os.path.join(t.workdir, "conf")
    os.makedirs(d)
    exe = bridge.binary()
    asan = is_asan_build(exe)
    names = "abcdefghi"
    bomb = b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, cur in zip(names, names[1:]):
        bomb += ("%s: &%s [%s]\n" % (cur, cur, ",".join(["*" + prev] * 9))).encode()
    bomb += b"bridge: { id: *i }\n"
    cases = [
        ("nonutf8.yaml", b"bridge: { id: h\xff\xfe }\n", "1:16"),
        ("nonutf8-comment.yaml", b"bridge: { id: h }\n# \xc3\x28\nvms: []\n", "2:"),
        ("truncated.yaml", b"bridge:\n  id: h\n  log_level: info\nvms:\n  - name: vm1\n    qmp: \"unix:/x\n",
         "7:1"),
        ("truncated-mapping.yaml", b"bridge: { id: h, log_level: ", "2:1"),
        ("nested.yaml", b"bridge: { id: h }\nvms: " + b"[" * 100000 + b"]" * 100000 + b"\n", "2:"),
        ("nested-mapping.yaml", b"bridge: { id: h }\nvms: " + b"{a: " * 100000 + b"}" * 100000 + b"\n", "2:"),
        ("scalar-10mb.yaml", b"bridge: { id: \"" + b"x" * (10 << 20) + b"\" }\n", "1:1"),
        ("scalar-1mb.yaml", b"bridge:\n  id: h\n  log_level: " + b"x" * (1000 * 1000) + b"\n", "3:"),
        ("alias-bomb.yaml", bomb, "1:"),
    ]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    t.section("config: hostile files%s" % (" (ASan build: no RLIMIT_AS)" if asan else ", RLIMIT_AS 1 GiB"))
    for name, data, where in cases:
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(data)
        t0 = time.monotonic()
        r = subprocess.run([exe, "--check-config", "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60 * util.TIMEOUT_SCALE,
                           preexec_fn=None if asan else limit)
        took = time.monotonic() - t0
        err = r.stderr.decode("utf-8", "replace").strip()
        t.expect(r.returncode == 1 and len(err.splitlines()) == 1 and
                 re.match(r"qmp-bridge: %s:\d+:\d+: " % re.escape(path), err) and
                 (path + ":" + where) in err,
                 "%-22s (%d bytes) -> exit 1 in %.2fs: %s" % (name, len(data), took, err[len(d) + 13:][:160]),
                 (r.returncode, err[:400], r.stdout[:200]))


with check.Test("hostile_input") as t:
    config_section(t)
    command_section(t)
    qmp_section(t)
