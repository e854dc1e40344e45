#!/usr/bin/python3
"""Hostile use of the command channel, over a real mosquitto, against scripted QEMUs
(qmp_peer.py --mode idle --command-log) that log every QMP command they receive.

Bridge A: signed commands (commands.hmac_key_file), bridge.state_directory, metrics.
1. The key is (source, VM, id): `stop` j-1 on vm1 and `stop` j-1 on vm2 both reach their
   QEMU, each result is its own VM's; j-1 again on vm1 as another command (cont) is
   refused "id-reused" and reaches no QEMU.
2. Results for two unknown VMs carry different envelope ids (not "0-0").
3. Unauthenticated messages choose nothing: an unsigned command whose Response Topic is
   vm2's qmp.vm.resumed event topic puts nothing there; `{"garbage` with Response Topic
   the status topic puts nothing there; an authenticated command whose Response Topic lies
   under the prefix, or is not the one its signed "replytopic" names, is answered on the
   default result topic; 2,000 junk messages leave
   vm1's sequence alone (the next real result of vm1 takes the next number) and show in
   qmp_bridge_commands_unauthenticated_total; a 65,000-byte id gives small envelopes
   whose command_id has at most 128 bytes; 60 copies of a signed command that ran are
   answered again at most 20 at once (then 10 a second), the rest dropped and counted in
   qmp_bridge_commands_duplicates_total.
4. Restart: a signed `stop` rp-1 runs; SIGTERM; a new bridge on the same state directory
   answers the same message with the first result, and QEMU got that stop once; the same
   message with a Response Topic of another's choosing is answered on the default topic.

Bridge B: no state directory, commands.cache_size 2, vm1's QEMU holds `cont` replies 6 s
(times the suite's timeout scale).
5. A command timed before the bridge started is refused "expired" (ids do not survive a
   restart without a state directory).
6. A running command is never evicted: cont c-1 (held), stop on vm2 (done, still in its
   replay window), a third command -> busy naming commands.cache_size; cont c-1 three times
   more: two copies wait and are answered with the first result, the third is refused busy
   (waiting duplicates are bounded by cache_size too); QEMU got one cont."""
import json
import os
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, commands, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
KEY = b"hostile-commands-test-key-0123456789"
BRIDGE = "test-host"


def start_peer(d, name, extra=()):
    sock = os.path.join(d, name + ".qmp")
    qlog = os.path.join(d, name + ".commands.jsonl")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "idle",
                 "--command-log", qlog] + list(extra), "qmp_peer-" + name,
                stderr=os.path.join(d, name + ".peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket " + name)
    return sock, qlog


def qmp_seen(qlog, name=None):
    try:
        with open(qlog) as f:
            got = [json.loads(l)["execute"] for l in f if l.strip()]
    except FileNotFoundError:
        got = []
    return got if name is None else sum(1 for g in got if g == name)


def signed(name, vm, data=None, **kw):
    kw.setdefault("bridge", "test-host")  # a signature names its bridge
    return commands.make(name, vm, data, key=KEY, **kw)


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("qmp_bridge_commands_unauthenticated_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def dup_metrics(port):
    """qmp_bridge_commands_duplicates_total by outcome."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {"answered": 0.0, "dropped": 0.0}
    for line in text.splitlines():
        if line.startswith("qmp_bridge_commands_duplicates_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = float(line.rsplit(" ", 1)[1])
    return out


def publish_many(port, vm, lines):
    """Publishes each line as one message on vm's command topic (mosquitto_pub -l)."""
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
                    "-t", "qmp/%s/%s/command" % (BRIDGE, vm), "-l"],
                   input=b"".join(l + b"\n" for l in lines), check=True, timeout=120)


def vm_sequences(events_path, vm):
    return [int(e["sequence"]) for e in util.read_jsonl(events_path)
            if e.get("subject") == vm and not e["id"].endswith(".state")]


with check.Test("hostile_commands") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker, "#", name="all").start()  # every topic, validated by poll()

    def on_topic(topic):
        sub.poll()
        return [m for m in sub.messages if m.topic == topic]

    def reply(topic, n=1, timeout=20):
        got = sub.wait_count(lambda m: m.topic == topic, n, timeout=timeout,
                             what="replies on " + topic)
        env = json.loads(got[n - 1].raw)
        mqtt.validate_envelope(env)
        return env

    def result_for(topic, cmd_id, timeout=20):
        def find():
            for m in on_topic(topic):
                env = json.loads(m.raw)
                if env["data"].get("command_id") == cmd_id:
                    mqtt.validate_envelope(env)
                    return env
            return None
        return procs.wait_until(find, timeout, "a result for %r on %s" % (cmd_id, topic))

    sock1, qlog1 = start_peer(d, "vm1")
    sock2, qlog2 = start_peer(d, "vm2")
    keyfile = os.path.join(d, "hmac.key")
    with open(keyfile, "wb") as f:
        f.write(KEY + b"\n")
    os.chmod(keyfile, 0o600)
    state_dir = os.path.join(d, "state")
    mport = util.free_port()
    br = bridge.Bridge(d, [("vm1", sock1), ("vm2", sock2)], broker=broker, extra_yaml=(
        "commands: { enabled: true, allow: [stop, cont, query-state], hmac_key_file: %s,\n"
        "  max_message_bytes: 256KiB }\n"
        "metrics: { listen: \"127.0.0.1:%d\" }\n") % (json.dumps(keyfile), mport))
    br.yaml = br.yaml.replace("log_level: debug }", "log_level: info, state_directory: %s }"
                              % json.dumps(state_dir))
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge A", br.log)
    br.wait_log("[vm1] state resynced")
    br.wait_log("[vm2] state resynced")
    br.wait_log("receiving commands")
    time.sleep(0.5)

    # ---- 1. the key is (source, VM, id) --------------------------------------------------
    t.section("one id on two VMs: two commands; reused for another command: refused")
    commands.mqtt_publish(broker.port, BRIDGE, "vm1",
                          signed("stop", "vm1", cmd_id="j-1", reply_topic="orch/r/j1-vm1"),
                          response_topic="orch/r/j1-vm1")
    r1 = reply("orch/r/j1-vm1")["data"]
    commands.mqtt_publish(broker.port, BRIDGE, "vm2",
                          signed("stop", "vm2", cmd_id="j-1", reply_topic="orch/r/j1-vm2"),
                          response_topic="orch/r/j1-vm2")
    env2 = reply("orch/r/j1-vm2")
    r2 = env2["data"]
    t.expect(r1["status"] == "ok" and r2["status"] == "ok", "j-1 ok on vm1 and on vm2", (r1, r2))
    t.expect(env2["subject"] == "vm2" and [s["execute"] for s in r2["steps"]][0] == "stop",
             "vm2's result is vm2's own run", env2)
    t.expect(qmp_seen(qlog1, "stop") == 1 and qmp_seen(qlog2, "stop") == 1,
             "each QEMU received its stop", (qmp_seen(qlog1), qmp_seen(qlog2)))
    # Only what the reused id asked for counts: the resync that follows each stop may still be
    # reaching QEMU with its queries (under valgrind it does).
    before = (qmp_seen(qlog1, "cont"), qmp_seen(qlog2, "cont"))
    commands.mqtt_publish(broker.port, BRIDGE, "vm1",
                          signed("cont", "vm1", cmd_id="j-1", reply_topic="orch/r/j1-reused"),
                          response_topic="orch/r/j1-reused")
    r3 = reply("orch/r/j1-reused")["data"]
    t.expect(r3["status"] == "rejected" and r3["error"]["class"] == "id-reused" and
             r3["command"] == "cont" and r3["steps"] == [],
             "j-1 as cont on vm1 -> rejected id-reused: " + r3.get("error", {}).get("message", ""),
             r3)
    time.sleep(0.5)
    t.expect((qmp_seen(qlog1, "cont"), qmp_seen(qlog2, "cont")) == before == (0, 0),
             "no QEMU received a cont for it", (qmp_seen(qlog1), qmp_seen(qlog2)))

    # ---- 2. unique ids for results that belong to no VM ----------------------------------
    t.section("results for unknown VMs have unique ids")
    commands.mqtt_publish(broker.port, BRIDGE, "vm8",
                          signed("cont", "vm8", reply_topic="orch/r/u8"),
                          response_topic="orch/r/u8")
    commands.mqtt_publish(broker.port, BRIDGE, "vm9",
                          signed("cont", "vm9", reply_topic="orch/r/u9"),
                          response_topic="orch/r/u9")
    e8, e9 = reply("orch/r/u8"), reply("orch/r/u9")
    t.expect(e8["data"]["error"]["class"] == "unknown-vm" == e9["data"]["error"]["class"],
             "both rejected unknown-vm", (e8["data"], e9["data"]))
    t.expect(e8["id"] != e9["id"] and "0-0" not in (e8["id"], e9["id"]),
             "different ids: %s, %s" % (e8["id"], e9["id"]))

    # ---- 3. unauthenticated messages choose nothing --------------------------------------
    t.section("unauthenticated messages: no chosen topic, no VM stream, no sequence")
    event_topic = "qmp/%s/vm2/event/qmp.vm.resumed" % BRIDGE
    status_topic = "qmp/%s/status" % BRIDGE
    result1 = "qmp/%s/vm1/result" % BRIDGE
    n_event, n_status = len(on_topic(event_topic)), len(on_topic(status_topic))
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", commands.make("cont", "vm1", cmd_id="unsigned-1"),
                          response_topic=event_topic, correlation="c-unsigned")
    env = result_for(result1, "unsigned-1")
    t.expect(env["data"]["error"]["class"] == "unauthenticated",
             "unsigned cont -> rejected unauthenticated, answered on %s" % result1, env["data"])
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", b'{"garbage', response_topic=status_topic)
    sub.wait_for(lambda m: m.topic == result1 and json.loads(m.raw)["data"]["command_id"] is None,
                 what="the garbage's rejection on " + result1)
    t.ok('{"garbage -> rejected invalid, answered on ' + result1)
    # an authenticated command asking for a reply inside the prefix gets the default topic
    commands.mqtt_publish(broker.port, BRIDGE, "vm1",
                          signed("query-state", "vm1", cmd_id="prefix-1", reply_topic=event_topic),
                          response_topic=event_topic)
    env = result_for(result1, "prefix-1")
    t.expect(env["data"]["status"] == "ok", "signed query-state with a Response Topic under the "
             "prefix -> answered on " + result1, env["data"])
    # a signed command that names no replytopic chooses nothing either
    n_free = len(on_topic("orch/r/not-signed"))
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", signed("query-state", "vm1", cmd_id="nort-1"),
                          response_topic="orch/r/not-signed")
    env = result_for(result1, "nort-1")
    t.expect(env["data"]["status"] == "ok", "signed query-state without replytopic, Response Topic "
             "orch/r/not-signed -> answered on " + result1, env["data"])
    time.sleep(1.0)
    t.expect(len(on_topic("orch/r/not-signed")) == n_free, "nothing on orch/r/not-signed")
    t.expect(len(on_topic(event_topic)) == n_event, "nothing was published on " + event_topic,
             [m.raw[:200] for m in on_topic(event_topic)[n_event:]])
    t.expect(len(on_topic(status_topic)) == n_status, "nothing new on " + status_topic,
             [m.raw[:200] for m in on_topic(status_topic)[n_status:]])

    t.section("a 65,000-byte id: small envelopes, command_id cut to 128 bytes")
    sub.poll()
    mark = len(sub.messages)
    long_cmd = signed("stop", "vm1", cmd_id="L" * 65000)
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", long_cmd, response_topic="orch/r/long")
    env = sub.wait_for(lambda m: m.index >= mark and m.topic == result1, what="the long id's result")
    res = json.loads(env.raw)["data"]
    t.expect(res["error"]["class"] == "invalid" and len(res["command_id"].encode()) <= 128,
             "rejected invalid; command_id %d bytes" % len(res["command_id"].encode()), res["error"])
    time.sleep(0.5)
    sub.poll()
    sizes = [len(m.raw) for m in sub.messages[mark:] if not m.topic.endswith("/command")]
    t.expect(max(sizes) < 2048, "every envelope published since is small (largest %d bytes)"
             % max(sizes), sizes)
    stdout_sizes = [len(json.dumps(e)) for e in util.read_jsonl(br.events_path)]
    t.expect(max(stdout_sizes) < 8192, "nothing large on the event stream either (largest %d)"
             % max(stdout_sizes))

    t.section("2,000 junk messages: vm1's sequence untouched, counted in /metrics")
    time.sleep(1.0)  # the query-state's snapshot has been published
    last = max(vm_sequences(br.events_path, "vm1"))
    m0 = metrics(mport)
    junk = [b'{"garbage %d' % i for i in range(1000)] + \
           [json.dumps(commands.make("stop", "vm1", cmd_id="junk-%d" % i)).encode()
            for i in range(1000)]
    publish_many(broker.port, "vm1", junk)
    procs.wait_until(lambda: sum(metrics(mport).values()) - sum(m0.values()) >= 2000, 60,
                     "2,000 more unauthenticated messages counted")
    m1 = metrics(mport)
    t.ok("qmp_bridge_commands_unauthenticated_total: answered %d, dropped %d (before: %s)"
         % (m1["answered"], m1["dropped"], m0))
    t.expect(sum(m1.values()) - sum(m0.values()) == 2000,
             "each of the 2,000 counted once, answered or dropped", (m0, m1))
    t.expect(vm_sequences(br.events_path, "vm1") and max(vm_sequences(br.events_path, "vm1")) == last,
             "no junk reached vm1's event stream (last sequence still %d)" % last,
             max(vm_sequences(br.events_path, "vm1")))
    commands.mqtt_publish(broker.port, BRIDGE, "vm1",
                          signed("stop", "vm1", cmd_id="seq-probe", reply_topic="orch/r/seq-probe"),
                          response_topic="orch/r/seq-probe")
    probe = reply("orch/r/seq-probe")
    t.expect(int(probe["sequence"]) == last + 1,
             "the next real result of vm1 has sequence %d (last before the junk: %d)"
             % (int(probe["sequence"]), last), probe["sequence"])
    t.expect(len(br.log_lines("rejected (")) < 200,
             "log lines about the junk are limited (%d)" % len(br.log_lines("rejected (")))

    t.section("60 copies of a command that ran: a burst answered again, the rest dropped")
    dup = signed("stop", "vm1", cmd_id="dup-1", reply_topic="orch/r/dup-1")
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", dup, response_topic="orch/r/dup-1")
    t.expect(reply("orch/r/dup-1")["data"]["status"] == "ok", "dup-1 ran")
    stops = qmp_seen(qlog1, "stop")
    d0 = dup_metrics(mport)
    t0 = time.monotonic()
    publish_many(broker.port, "vm1", [json.dumps(dup).encode()] * 60)
    procs.wait_until(lambda: sum(dup_metrics(mport).values()) - sum(d0.values()) >= 60, 30,
                     "the 60 copies counted")
    took = time.monotonic() - t0
    d1 = dup_metrics(mport)
    answered, dropped = d1["answered"] - d0["answered"], d1["dropped"] - d0["dropped"]
    # the bucket: 20 at once, 10 more each second the copies took to arrive (slow under valgrind)
    most = 20 + int(10 * took) + 1
    t.expect(answered + dropped == 60 and 1 <= answered <= most and (most >= 60 or dropped >= 1),
             "qmp_bridge_commands_duplicates_total: %d answered again, %d dropped in %.1f s (at "
             "most 20 at once, then 10 a second)" % (answered, dropped, took), (d0, d1))
    t.expect(qmp_seen(qlog1, "stop") == stops, "QEMU got no stop for any copy", qmp_seen(qlog1))

    # ---- 4. the journal: a replay after a restart ----------------------------------------
    t.section("restart: a signed command runs once across restarts")
    rp = signed("stop", "vm2", cmd_id="rp-1", reply_topic="orch/r/rp-first")
    commands.mqtt_publish(broker.port, BRIDGE, "vm2", rp, response_topic="orch/r/rp-first")
    first = reply("orch/r/rp-first")["data"]
    t.expect(first["status"] == "ok", "rp-1 ran: ok", first)
    stops = qmp_seen(qlog2, "stop")
    t.expect(br.stop() == 0, "SIGTERM: exit 0")
    br.start()
    br.wait_log("command ids loaded", timeout=20)
    br.wait_log("[vm2] state resynced")
    procs.wait_until(lambda: len(br.log_lines("receiving commands")) >= 2, 20, "commands again")
    time.sleep(0.5)
    commands.mqtt_publish(broker.port, BRIDGE, "vm2", rp, response_topic="orch/r/rp-first")
    again = reply("orch/r/rp-first", n=2)["data"]
    t.expect(again == first, "the replay is answered with the first result", again)
    # Whoever saw the signed rp-1 may publish it again with a Response Topic of their own:
    # the signature names orch/r/rp-first, so that copy is answered on the default topic.
    result2 = "qmp/%s/vm2/result" % BRIDGE
    n_other = len(on_topic("orch/r/rp-other"))
    commands.mqtt_publish(broker.port, BRIDGE, "vm2", rp, response_topic="orch/r/rp-other",
                          correlation="c-other")
    env = result_for(result2, "rp-1")
    t.expect(env["data"] == first, "a copy asking for orch/r/rp-other is answered on %s" % result2,
             env["data"])
    time.sleep(0.5)
    t.expect(qmp_seen(qlog2, "stop") == stops, "QEMU received rp-1's stop once",
             qmp_seen(qlog2))
    t.expect(len(on_topic("orch/r/rp-other")) == n_other, "nothing was published on orch/r/rp-other",
             [m.raw[:200] for m in on_topic("orch/r/rp-other")[n_other:]])
    t.expect(br.stop() == 0, "SIGTERM: exit 0")

    # ---- bridge B ------------------------------------------------------------------------
    db = os.path.join(d, "b")
    os.makedirs(db)
    hold = 6 * util.TIMEOUT_SCALE  # long enough for everything below to happen while c-1 runs
    sock1b, qlog1b = start_peer(db, "vm1", ["--delay", "cont:%g" % hold])
    sock2b, qlog2b = start_peer(db, "vm2")
    brb = bridge.Bridge(db, [("vm1", sock1b), ("vm2", sock2b)], broker=broker,
                        qmp_extra={"command_timeout": "%ds" % int(hold + 20)}, extra_yaml=(
        "commands: { enabled: true, allow: [stop, cont, query-state], hmac_key_file: %s,\n"
        "  cache_size: 2, timeout: %ds }\n") % (json.dumps(keyfile), int(hold + 60)))
    before_start = commands.now_rfc3339()
    time.sleep(0.2)
    brb.start()
    t.add_log("bridge B", brb.log)
    brb.wait_log("[vm1] state resynced")
    brb.wait_log("[vm2] state resynced")
    brb.wait_log("receiving commands")
    time.sleep(0.5)

    t.section("no state directory: commands timed before the start are refused")
    commands.mqtt_publish(broker.port, BRIDGE, "vm2",
                          signed("stop", "vm2", time=before_start, reply_topic="orch/r/b-old"),
                          response_topic="orch/r/b-old")
    old = reply("orch/r/b-old")["data"]
    t.expect(old["status"] == "rejected" and old["error"]["class"] == "expired" and
             "state_directory" in old["error"]["message"],
             "stop timed before the start -> expired: " + old.get("error", {}).get("message", ""),
             old)
    t.expect(qmp_seen(qlog2b, "stop") == 0, "QEMU never got it", qmp_seen(qlog2b))

    t.section("cache_size 2: a running command is never evicted; full of them -> busy")
    def c1(topic):
        """A copy of c-1 (same id, type, subject, data) signed for its own Response Topic."""
        return signed("cont", "vm1", cmd_id="c-1", reply_topic=topic)
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", c1("orch/r/c1-first"),
                          response_topic="orch/r/c1-first")
    brb.wait_log("command cont c-1 queued")
    commands.mqtt_publish(broker.port, BRIDGE, "vm2",
                          signed("stop", "vm2", cmd_id="a-1", reply_topic="orch/r/a1"),
                          response_topic="orch/r/a1")
    t.expect(reply("orch/r/a1")["data"]["status"] == "ok", "stop a-1 on vm2 ran")
    commands.mqtt_publish(broker.port, BRIDGE, "vm2",
                          signed("query-state", "vm2", cmd_id="b-1", reply_topic="orch/r/b1"),
                          response_topic="orch/r/b1")
    b1 = reply("orch/r/b1")["data"]
    t.expect(b1["status"] == "rejected" and b1["error"]["class"] == "busy" and
             "commands.cache_size" in b1["error"]["message"],
             "a third command -> busy: " + b1.get("error", {}).get("message", ""), b1)
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", c1("orch/r/c1-again"),
                          response_topic="orch/r/c1-again")
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", c1("orch/r/c1-third"),
                          response_topic="orch/r/c1-third")
    commands.mqtt_publish(broker.port, BRIDGE, "vm1", c1("orch/r/c1-fourth"),
                          response_topic="orch/r/c1-fourth")
    fourth = reply("orch/r/c1-fourth")["data"]
    t.expect(fourth["status"] == "rejected" and fourth["error"]["class"] == "busy" and
             "duplicates wait" in fourth["error"]["message"],
             "duplicates waiting for c-1 are bounded by cache_size: the third copy -> busy: "
             + fourth.get("error", {}).get("message", ""), fourth)
    first = reply("orch/r/c1-first", timeout=30)["data"]
    again = reply("orch/r/c1-again", timeout=30)["data"]
    third = reply("orch/r/c1-third", timeout=30)["data"]
    t.expect(first["status"] == "ok" and again == first and third == first,
             "the two waiting copies of c-1 are answered with the first result", (first, again))
    time.sleep(hold + 1)  # a second cont would have its reply held as long
    t.expect(qmp_seen(qlog1b, "cont") == 1, "QEMU received one cont", qmp_seen(qlog1b))
    t.expect(brb.stop() == 0, "SIGTERM: exit 0")
    sub.stop()
