#!/usr/bin/python3
"""No ghost VMs, and the VM's UUID: what a consumer that comes late is told about VMs that
went away, were removed, or lost their QEMU.

One bridge (id test-host) with MQTT (real mosquitto), the Kafka mock (qmp.events, qmp.state)
and the stdout transport; two static VMs and directory discovery:
  a     real QEMU 7.2 started with -uuid UUID_A
  b     real QEMU 7.2 without -uuid (query-uuid answers the all-zero UUID)
  disc  a scripted QMP peer (tests/tools/qmp_peer.py) whose socket is in the watched
        directory; it does not know query-uuid
Checked:
  - UUID: a's bridge.vm.connected and its qmp.vm.state snapshot both carry uuid UUID_A
    (stdout and MQTT envelopes, schema-validated); b's and disc's carry uuid null; every
    snapshot says connected: true; connected comes before the snapshot;
  - disc's socket is removed: bridge.vm.disconnected, then its state with connected: false
    on the event stream; then its retained MQTT state is gone (a fresh subscriber gets
    nothing) and the last record of key test-host/disc on Kafka's qmp.state (kcat -Z) is a
    tombstone: NULL value, no ce_ headers;
  - b is removed from the configuration and the bridge reloaded (SIGHUP): the same;
  - a's QEMU is killed (SIGKILL): a late subscriber's retained state of a says
    connected: false (still uuid UUID_A, the last known run state), and so does the last
    Kafka record of its key; QEMU back: connected: true again;
  - the bridge stops (SIGTERM): a shutdown is not a removal: a's retained state stays,
    saying connected: false."""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, mqtt, procs, qemu, streamcheck, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
UUID_A = "5f0c1d2e-3a4b-4c5d-8e6f-708192a3b4c5"
BRIDGE_ID = "test-host"


def stream(br, vm):
    evs = util.read_jsonl(br.events_path)
    for e in evs:
        mqtt.validate_envelope(e)
    return [e for e in evs if e["subject"] == vm]


def types(envs):
    return [e["type"] for e in envs]


def wait_snapshot(br, vm, start=0, what=None):
    """The envelopes of vm from index start once a snapshot (a state with connected: true) is in."""
    return procs.wait_until(
        lambda: (lambda envs: envs if any(e["type"] == "qmp.vm.state" and e["data"]["connected"]
                                          for e in envs) else None)(stream(br, vm)[start:]),
        30 * util.TIMEOUT_SCALE, what or "snapshot of %s" % vm)


def last_state_record(mock, d, vm, pred, what):
    """Reads qmp.state from the beginning (kcat -Z) until the last record of vm's key
    satisfies pred; returns that record."""
    key = "%s/%s" % (BRIDGE_ID, vm)
    kc = kafka.KcatConsumer(mock.bootstrap, "qmp.state", d, name="kcat-state-" + vm, extra=["-Z"]).start()
    try:
        def last():
            kc.read()
            mine = [r for r in kc.records if r.key == key]
            return mine[-1] if mine and pred(mine[-1]) else None
        try:
            return procs.wait_until(last, 30 * util.TIMEOUT_SCALE, what, interval=0.2)
        except TimeoutError:
            raise check.CheckFailed("%s: records of %s on qmp.state: %r"
                                    % (what, key, [r for r in kc.records if r.key == key][-3:]))
    finally:
        kc.stop()


def is_tombstone(r):
    return r.payload == "NULL" and not [h for h in r.headers if h.startswith("ce_")]


def gone(t, br, broker, mock, d, vm, why):
    """vm was removed: disconnected, state connected: false, then its retained state cleared."""
    br.wait_log("[%s] removed: %s" % (vm, why))
    procs.wait_until(lambda: "bridge.vm.disconnected" in types(stream(br, vm)), 20,
                     "%s disconnected" % vm)
    envs = stream(br, vm)
    i = types(envs).index("bridge.vm.disconnected")
    t.expect(types(envs)[i:] == ["bridge.vm.disconnected", "qmp.vm.state"] and
             envs[-1]["data"]["connected"] is False,
             "%s: bridge.vm.disconnected, then its state with connected: false, last on the "
             "event stream" % vm, types(envs)[i:])
    procs.wait_until(lambda: check.no_retained_state(broker, BRIDGE_ID, vm), 20 * util.TIMEOUT_SCALE,
                     "the retained state of %s to be cleared" % vm)
    t.ok("%s: no retained message on qmp/%s/%s/state any more" % (vm, BRIDGE_ID, vm))
    r = last_state_record(mock, d, vm, is_tombstone, "a tombstone for %s on qmp.state" % vm)
    t.ok("%s: the last record of key %s/%s on qmp.state is a tombstone (NULL value, no ce_ "
         "headers)" % (vm, BRIDGE_ID, vm), r)


with check.Test("ghost_vms") as t:
    d = t.workdir
    watch = os.path.join(d, "vms")
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    mock = kafka.KafkaMock(d, topics=[("qmp.events", 3, 3), ("qmp.state", 3, 3)]).start()
    t.add_log("kafka_mock", mock.log)
    a = qemu.Qemu(d, "a", guest=False, disk=None, extra=["-uuid", UUID_A]).start()
    b = qemu.Qemu(d, "b", guest=False, disk=None).start()
    t.add_log("qemu a", a.log)
    t.add_log("qemu b", b.log)
    a.wait_ready()
    b.wait_ready()
    sub = mqtt.Subscriber(broker).start()
    br = bridge.Bridge(d, [("a", a.qmp_path), ("b", b.qmp_path)], broker=broker, bridge_id=BRIDGE_ID,
                       extra_yaml="  - { type: kafka, brokers: %s }\ndiscovery: { directory: %s, "
                       "suffix: .qmp }\n" % (json.dumps(mock.bootstrap), json.dumps(watch)))
    t.add_log("bridge", br.log)
    br.start()
    procs.wait_until(lambda: os.path.isdir(watch), 10, "discovery directory created by the bridge")
    peer_log = os.path.join(d, "peer.log")
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", os.path.join(watch, "disc.qmp"),
                        "--mode", "events", "--interval", "0.2"], "qmp_peer", stderr=peer_log)
    t.add_log("peer disc", peer_log)

    t.section("the UUID in bridge.vm.connected and qmp.vm.state")
    for vm, want in (("a", UUID_A), ("b", None), ("disc", None)):
        envs = wait_snapshot(br, vm)
        conn, snap = envs[0], [e for e in envs if e["type"] == "qmp.vm.state"][0]
        t.expect(types(envs)[:2] == ["bridge.vm.connected", "qmp.vm.state"],
                 "%s: connected, then the snapshot" % vm, types(envs)[:4])
        t.expect(conn["data"]["uuid"] == want and snap["data"]["uuid"] == want,
                 "%s: uuid %s in both (stdout)" % (vm, json.dumps(want)),
                 (conn["data"].get("uuid"), snap["data"].get("uuid")))
        t.expect(snap["data"]["connected"] is True, "%s: the snapshot says connected: true" % vm,
                 snap["data"])
    mq = procs.wait_until(lambda: (lambda e: e if len(e) >= 2 else None)(
        check.vm_envelopes(sub, BRIDGE_ID, "a")), 20, "a's envelopes on MQTT")
    t.expect(mq[0].type == "bridge.vm.connected" and mq[0].data["uuid"] == UUID_A and
             mq[1].type == "qmp.vm.state" and mq[1].data["uuid"] == UUID_A,
             "a: uuid %s in both on MQTT too" % UUID_A, check.summarize(mq[:2]))

    t.section("a discovered VM whose socket is removed: its retained state is cleared")
    procs.kill(peer)
    os.unlink(os.path.join(watch, "disc.qmp"))
    gone(t, br, broker, mock, d, "disc", "socket removed")

    t.section("a VM removed from the configuration by reload: its retained state is cleared")
    with open(br.conf, "w") as f:
        f.write("".join(l for l in br.yaml.splitlines(True) if "name: b," not in l))
    os.kill(br.proc.pid, signal.SIGHUP)
    gone(t, br, broker, mock, d, "b", "removed by reload")

    t.section("a's QEMU dies: a late subscriber sees connected: false")
    n = len(stream(br, "a"))
    a.kill()
    procs.wait_until(lambda: "bridge.vm.disconnected" in types(stream(br, "a")[n:]), 20, "a disconnected")
    m = check.wait_retained_state(sub, BRIDGE_ID, "a", lambda s: s["connected"] is False,
                                  "connected: false")
    t.expect(m.data["uuid"] == UUID_A and m.data["run_state"] == "running",
             "a's retained state: connected: false, the last known run state and uuid", m.data)
    late = sub.fetch_retained("qmp/%s/a/state" % BRIDGE_ID)
    t.expect(late.json["id"] == m.json["id"] and late.data["connected"] is False,
             "a late subscriber gets exactly that state", late.json)
    ev = [e for e in stream(br, "a")[n:] if e["type"] == "qmp.vm.state"]
    t.expect(ev and ev[0]["id"] == m.json["id"],
             "the same state (same id) was on the event stream", [e["id"] for e in ev])
    r = last_state_record(mock, d, "a", lambda r: r.payload != "NULL" and
                          r.json()["data"]["connected"] is False, "a: connected: false on qmp.state")
    t.ok("a: the last record of its key on qmp.state says connected: false", r.json()["id"])
    t.expect(not check.no_retained_state(broker, BRIDGE_ID, "a"), "a's retained state is kept (a dead QEMU is no removal)")

    t.section("a's QEMU is back: connected: true again")
    n = len(stream(br, "a"))
    a.start().wait_ready()
    wait_snapshot(br, "a", n, "a's new snapshot")
    check.wait_retained_state(sub, BRIDGE_ID, "a", lambda s: s["connected"] is True and
                              s["uuid"] == UUID_A, "connected: true")
    t.ok("a's retained state says connected: true again")

    t.section("bridge shutdown: the retained state stays, connected: false")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    envs = stream(br, "a")
    t.expect(types(envs)[-2:] == ["bridge.vm.disconnected", "qmp.vm.state"] and
             envs[-1]["data"]["connected"] is False,
             "a: disconnected, then its state with connected: false at shutdown", types(envs)[-3:])
    late = sub.fetch_retained("qmp/%s/a/state" % BRIDGE_ID)
    t.expect(late.data["connected"] is False and late.json["id"] == envs[-1]["id"],
             "a's retained state after shutdown: that state", late.json)
    rep = streamcheck.check(util.read_jsonl(br.events_path), expect_first={"a": 1, "b": 1, "disc": 1})
    t.expect(rep.ok(), "every stream contiguous and ordered", str(rep))
    sub.stop()
    a.stop()
    b.stop()
    mock.stop()
    broker.stop()
