#!/usr/bin/python3
"""Golden envelopes: the bytes the bridge publishes stay the bytes it published.

The real qmp-bridge runs against a scripted fake QEMU (qbtest/scripted_peer.py) and
its stdout transport writes every envelope to a file, one a line. The bytes of each
line are compared with tests/integration/golden/<case>.jsonl, recorded from the
binary of main before the house redesign (issue 14). A failure prints the first line
that differs and where in it.

Corpus:
- every case under tests/unit/data/normalize: its input's event lines replayed in
  order, each {"reply-to": Q, ...} line the answer to the bridge's next Q (the peer
  holds Q until the script reaches that line), its snapshot (if any) as the answers
  to the connect-time queries, its exclude list as events.exclude. After the events
  the peer closes the connection, so each golden file holds bridge.vm.connected,
  qmp.vm.state, the case's events, bridge.vm.disconnected and the last qmp.vm.state.
  As a check that the replay is faithful, the case's qmp.* events must equal the
  fixture's output in everything but id and sequence (the bridge's own events come
  first here).
- bridge_events: the types the fixtures do not make, over a real mosquitto too:
  a VM whose QEMU answers query-name/query-uuid (bridge.vm.connected with a UUID),
  a STOP answered paused, three commands over MQTT 5 (one outside the allow list:
  rejected; cont, with a Response Topic; query-state), the peer closing
  (bridge.vm.disconnected), the VM coming back as another guest
  (bridge.vm.identity_changed) and closing again. Golden files: bridge_events.jsonl
  (the file sink) and bridge_events.mqtt (topic, tab, payload bytes; grouped by topic,
  in arrival order within a topic, since only per-topic order is promised).

Masked, and only this (both in the recorded and in the fresh bytes):
- MASK_EPOCH: the epoch part of each envelope id, "id":"<hex>-<n>" ->
  "id":"EPOCH-<n>" (the bridge's start time in microseconds, in hex);
  (state copies: "id":"<hex>-<n>.state" -> "id":"EPOCH-<n>.state");
- MASK_TIME: a "time" the bridge took from its own clock, i.e. one within the run of
  this test (start - 5 s to now + 5 s) -> "BRIDGE-CLOCK": bridge.* events, the
  snapshots, command results. Times from QEMU's timestamps (the fixtures': 2024 and
  earlier today, never within a run) are compared, so an envelope that swapped the
  one clock for the other fails either way;
- the test's temporary directory in socket addresses -> WORKDIR.
Everything else (key order, spacing, escapes, numbers, sequence strings) is compared
byte for byte.

    test_golden_envelopes.py               compare
    test_golden_envelopes.py --regenerate  rewrite the golden files from this binary
    test_golden_envelopes.py CASE...       only these cases (prefix match)
"""
import datetime
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, scripted_peer, util  # noqa: E402

NORMALIZE = os.path.join(util.SOURCE_DIR, "tests", "unit", "data", "normalize")
GOLDEN = os.path.join(util.SOURCE_DIR, "tests", "integration", "golden")
BRIDGE_ID = "host-a"  # the fixtures' bridge and VM
VM = "vm1"
STEP_TIMEOUT = 15 * util.TIMEOUT_SCALE  # seconds the peer waits for one step

# "id":"661fbee2520a4-12" at the head of an envelope: keep the per-VM number after the dash
MASK_EPOCH = re.compile(rb'^(\{"specversion":"1\.0","id":")[0-9a-f]{1,16}(-[0-9]+(?:\.state)?")')
# the envelope's "time", the first key "time" after "subject"
MASK_TIME = re.compile(rb'^(\{"specversion":"1\.0","id":"[^"]*","source":"[^"]*","type":"[^"]*",'
                       rb'"subject":"[^"]*","time":")([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z)(")')
RUN_STARTED = time.time()


def bridge_clock(stamp):
    """True if the RFC 3339 UTC stamp falls within this run of the test."""
    t = datetime.datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ")
    t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
    return RUN_STARTED - 5 <= t <= time.time() + 5


def mask(line, workdir):
    line = MASK_EPOCH.sub(rb"\1EPOCH\2", line, count=1)
    m = MASK_TIME.match(line)
    if m and bridge_clock(m.group(2)):
        line = line[:m.start(2)] + b"BRIDGE-CLOCK" + line[m.end(2):]
    return line.replace(workdir.encode(), b"WORKDIR")


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return data.split(b"\n")[:-1]  # only whole lines


def env_type(line):
    m = re.search(rb'"type":"([^"]+)"', line)
    return m.group(1).decode() if m else None


def compare(t, name, got, regenerate):
    """got: the masked lines (bytes). Writes or compares golden/<name>."""
    path = os.path.join(GOLDEN, name)
    data = b"".join(l + b"\n" for l in got)
    if regenerate:
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        t.ok("%s written (%d lines)" % (name, len(got)))
        return
    try:
        with open(path, "rb") as f:
            want = f.read().split(b"\n")[:-1]
    except FileNotFoundError:
        raise check.CheckFailed("%s is missing: run with --regenerate on the reference binary" % path)
    for i, (w, g) in enumerate(zip(want, got)):
        if w != g:
            at = next(k for k in range(min(len(w), len(g)) + 1)
                      if k >= min(len(w), len(g)) or w[k] != g[k])
            raise check.CheckFailed(
                "%s line %d differs at byte %d\n  want: %s\n  got:  %s\n  want ...%s\n  got  ...%s"
                % (name, i + 1, at, w.decode("utf-8", "replace"), g.decode("utf-8", "replace"),
                   w[max(0, at - 40):at + 40].decode("utf-8", "replace"),
                   g[max(0, at - 40):at + 40].decode("utf-8", "replace")))
    t.expect(len(want) == len(got), "%s: %d envelopes, byte for byte" % (name, len(want)),
             "golden has %d lines, the bridge wrote %d:\n%s"
             % (len(want), len(got), b"\n".join(got[len(want):] or want[len(got):]).decode()))


# ---- the normaliser fixtures ----

def snapshot_replies(snap):
    """A fixture's snapshot (a qmp.vm.state data object) as the QMP answers that make it."""
    out = {"query-status": {"return": {"status": snap.get("run_state", "running"),
                                       "singlestep": False,
                                       "running": bool(snap.get("running", True))}}}
    out["query-block-jobs"] = {"return": [
        {"device": j["id"], "type": j["type"], "status": j["status"], "offset": j["offset"],
         "len": j["len"], "io-status": j["io_status"], "busy": False, "paused": False,
         "ready": False, "speed": 0, "auto-finalize": True, "auto-dismiss": True}
        for j in snap.get("jobs", [])]}
    if snap.get("disks"):
        raise check.CheckFailed("fixture snapshots with disks are not supported yet")
    if snap.get("colo") is None:
        out["query-colo-status"] = {"error": {"class": "CommandNotFound",
                                              "desc": "The command query-colo-status has not been found"}}
    return out


def run_fixture(t, case, regenerate):
    src = os.path.join(NORMALIZE, case)
    d = os.path.join(t.workdir, case)
    os.mkdir(d)
    sock = os.path.join(d, "vm1.qmp")
    events = os.path.join(d, "events.jsonl")

    script = []
    for line in read_lines(os.path.join(src, "input")):
        if not line.strip():
            continue
        obj = json.loads(line)
        if "reply-to" in obj:
            script.append(("reply", obj["reply-to"],
                           {k: v for k, v in obj.items() if k != "reply-to"}))
        else:
            script.append(("event", line))
    snapshot = {}
    if os.path.exists(os.path.join(src, "snapshot")):
        with open(os.path.join(src, "snapshot")) as f:
            snapshot = snapshot_replies(json.loads(f.read()))
    extra = ""
    if os.path.exists(os.path.join(src, "exclude")):
        with open(os.path.join(src, "exclude")) as f:
            names = [n.strip() for n in f if n.strip()]
        extra = "events: { exclude: [%s] }\n" % ", ".join(names)
    with open(os.path.join(src, "output"), "rb") as f:
        want_events = [json.loads(l) for l in f.read().splitlines() if l.strip()]

    def case_events():
        return [l for l in read_lines(events) if not re.match(r"bridge\.|qmp\.vm\.state$",
                                                              env_type(l) or "")]

    settle = {"at": None}

    def all_out():
        # every event the fixture expects is out, and nothing more came for a moment
        n = len(case_events())
        if n < len(want_events):
            return False
        if settle["at"] is None:
            settle["at"] = time.monotonic()
        return time.monotonic() - settle["at"] > 0.2

    session = scripted_peer.Session(
        script, snapshot=snapshot,
        ready=lambda: any(env_type(l) == "qmp.vm.state" for l in read_lines(events)),
        ready_to_close=all_out)
    peer = scripted_peer.ScriptedPeer(sock, [session], step_timeout=STEP_TIMEOUT).start()
    br = bridge.Bridge(d, [(VM, sock)], bridge_id=BRIDGE_ID, extra_yaml=extra)
    br.start()
    t.add_log("bridge " + case, br.log)
    peer.wait_done(4 * STEP_TIMEOUT)

    def closed():
        types = [env_type(l) for l in read_lines(events)]
        return "bridge.vm.disconnected" in types and types[-1] == "qmp.vm.state"
    procs.wait_until(closed, 10, "bridge.vm.disconnected and the last qmp.vm.state")
    br.stop()
    peer.stop()

    got = read_lines(events)
    # the replay is faithful: the case's events are the fixture's (but for numbering)
    mine = [json.loads(l) for l in case_events()]
    strip = lambda e: {k: v for k, v in e.items() if k not in ("id", "sequence")}  # noqa: E731
    if [strip(e) for e in mine] != [strip(e) for e in want_events]:
        raise check.CheckFailed("%s: the bridge's events are not the fixture's output:\n%s\n--- want\n%s"
                                % (case, "\n".join(json.dumps(strip(e)) for e in mine),
                                   "\n".join(json.dumps(strip(e)) for e in want_events)))
    compare(t, case + ".jsonl", [mask(l, t.workdir) for l in got], regenerate)


# ---- the bridge's own events and command results ----

UUID_A = "6c1d0a2e-0000-4000-8000-00000000000a"
UUID_C = "6c1d0a2e-0000-4000-8000-00000000000c"
PACKAGE = "Debian 1:7.2+dfsg-7+deb12u18 (golden)"


def run_bridge_events(t, regenerate):
    d = os.path.join(t.workdir, "bridge_events")
    os.mkdir(d)
    sock = os.path.join(d, "vm1.qmp")
    events = os.path.join(d, "events.jsonl")
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker, topic=["qmp/#", "orch/r/#"]).start()

    def types():
        return [env_type(l) for l in read_lines(events)]

    def count(tp):
        return types().count(tp)

    def result_for(cmd_id):
        sub.poll()
        return any(m.raw and cmd_id.encode() in m.raw and b"bridge.command.result" in m.raw
                   for m in sub.messages)

    def send(name, cmd_id, reply=None):
        # made when sent: a command older than the bridge is refused as expired
        return lambda: commands.mqtt_publish(broker.port, BRIDGE_ID, VM,
                                             commands.make(name, VM, cmd_id=cmd_id),
                                             response_topic=reply and "orch/r/" + reply,
                                             correlation=reply)

    version = dict(scripted_peer.VERSION, package=PACKAGE)
    first = scripted_peer.Session(
        version=version,
        snapshot={"query-name": {"return": {"name": "guest-a"}},
                  "query-uuid": {"return": {"UUID": UUID_A}}},
        ready=lambda: count("qmp.vm.state") >= 1,
        script=[
            ("event", b'{"timestamp": {"seconds": 1796573065, "microseconds": 334465}, '
                      b'"event": "STOP"}'),
            ("reply", "query-status",
             {"return": {"status": "paused", "singlestep": False, "running": False}}),
            ("wait", lambda: count("qmp.vm.stopped") == 1),
            # The MQTT connect runs beside the QMP session: the first events can reach the
            # file sink before the command subscription is in place, and a command sent
            # then is lost (CI of 129f072 under valgrind: sent before the SUBACK).
            ("wait", lambda: bool(br.log_lines("receiving commands on"))),
            ("do", send("stop", "golden-rejected-stop")),
            ("wait", lambda: result_for("golden-rejected-stop")),
            ("do", send("cont", "golden-cont", reply="golden-r1")),
            ("wait", lambda: result_for("golden-cont")),
            ("event", b'{"timestamp": {"seconds": 1796573066, "microseconds": 1}, '
                      b'"event": "RESUME"}'),
            ("wait", lambda: count("qmp.vm.resumed") == 1),
            ("do", send("query-state", "golden-query-state")),
            ("wait", lambda: result_for("golden-query-state")),
        ])
    second = scripted_peer.Session(
        version=version,
        snapshot={"query-name": {"return": {"name": "guest-c"}},
                  "query-uuid": {"return": {"UUID": UUID_C}}},
        ready=lambda: count("bridge.vm.identity_changed") == 1 and types()[-1] == "qmp.vm.state")
    peer = scripted_peer.ScriptedPeer(sock, [first, second], step_timeout=STEP_TIMEOUT).start()
    br = bridge.Bridge(d, [(VM, sock)], broker=broker, bridge_id=BRIDGE_ID,
                       extra_yaml="commands: { enabled: true, allow: [cont, query-state] }\n")
    br.start()
    t.add_log("bridge bridge_events", br.log)
    peer.wait_done(8 * STEP_TIMEOUT)
    procs.wait_until(lambda: count("bridge.vm.disconnected") == 2 and types()[-1] == "qmp.vm.state",
                     10, "the second bridge.vm.disconnected and its qmp.vm.state")
    # every envelope of the file sink also went over MQTT (the event topics)
    n_file = len(read_lines(events))
    sub.wait_count(lambda m: "/event/" in m.topic, n_file, timeout=10, what="events over MQTT")
    br.stop()
    peer.stop()
    time.sleep(0.3)  # the offline status
    sub.poll()
    sub.stop()
    broker.stop()

    t.expect([c.get("execute") for c in first.received].count("cont") == 1,
             "the cont command reached QEMU once")
    got = read_lines(events)
    on_mqtt = [m.raw for m in sub.messages if "/event/" in m.topic]
    t.expect(on_mqtt == got, "the MQTT event payloads are the file sink's lines, byte for byte",
             "%d on MQTT, %d in the file" % (len(on_mqtt), len(got)))
    for tp in ("bridge.vm.connected", "qmp.vm.state", "bridge.vm.disconnected",
               "bridge.vm.identity_changed", "qmp.vm.stopped", "qmp.vm.resumed"):
        t.expect(tp in types(), "the file sink has " + tp)
    compare(t, "bridge_events.jsonl", [mask(l, t.workdir) for l in got], regenerate)

    topics = []
    for m in sub.messages:
        # the probes and our own commands are not the bridge's
        if m.topic.startswith("qmp/_probe") or m.topic.endswith("/command") or m.topic in topics:
            continue
        topics.append(m.topic)
    mq = []
    for tp in sorted(topics):
        mq += [tp.encode() + (b"\tretained" if m.retained else b"") + b"\t" + mask(m.raw, t.workdir)
               for m in sub.messages if m.topic == tp]
    results = [l for l in mq if b"bridge.command.result" in l]
    # the rejected one only on its result topic; the others on their event topic too
    t.expect(len(results) == 5, "five bridge.command.result payloads over MQTT", len(results))
    compare(t, "bridge_events.mqtt", mq, regenerate)


def main():
    args = sys.argv[1:]
    regenerate = "--regenerate" in args
    only = [a for a in args if not a.startswith("--")]
    cases = sorted(c for c in os.listdir(NORMALIZE) if os.path.isdir(os.path.join(NORMALIZE, c)))
    cases.append("bridge_events")
    cases = [c for c in cases if not only or any(c.startswith(o) for o in only)]
    with check.Test("golden_envelopes") as t:
        for case in cases:
            t.section(case)
            if case == "bridge_events":
                run_bridge_events(t, regenerate)
            else:
                run_fixture(t, case, regenerate)


main()
