#!/usr/bin/python3
"""Reload on SIGHUP (bridge/reload.c), once without and once with a spool.

Three scripted QMP peers stream events (vm-a, vm-b, vm-c); the bridge starts
with vm-a and vm-b, an MQTT transport (qos 1) and a stdout transport, and
NOTIFY_SOCKET pointing at a datagram socket of this test.

(a) SIGHUP with an invalid file (transports[0].qos: 7): the bridge keeps
    running on the old configuration, logs file:line:column and why, and
    systemd hears RELOADING=1 then READY=1 with that status.
(b) with the broker stopped (SIGSTOP, so the MQTT transport has a backlog),
    SIGHUP with a file that removes vm-b, adds vm-c, sets log_level debug,
    excludes RESUME and changes the MQTT transport's qos to 2: vm-c connects
    (bridge.vm.connected, then its qmp.vm.state snapshot); vm-b publishes
    bridge.vm.disconnected with a reason that names the reload; vm-a's QMP
    session is not touched (its peer saw one connection, no second
    bridge.vm.connected); debug lines appear; no qmp.vm.resumed of vm-a is
    published after the reload; the MQTT transport was restarted and the
    event stream it carried has no gap across the restart (streamcheck:
    contiguous per VM, duplicates only with identical ids, order kept); the
    retained status topic says "online" afterwards; RELOADING=1 then READY=1.
"""
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, streamcheck, util  # noqa: E402

BRIDGE_ID = "reload-host"


def config(workdir, broker, vms, qos, log_level="info", exclude=(), spool=None):
    """The bridge's YAML: the listed [(name, socket)] VMs, MQTT and stdout transports."""
    lines = ["bridge: { id: %s, log_level: %s }" % (BRIDGE_ID, log_level),
             "qmp: { reconnect_initial: 100ms, reconnect_max: 1s }",
             "vms:"]
    for name, path in vms:
        lines.append("  - { name: %s, qmp: %s }" % (name, json.dumps("unix:" + path)))
    if exclude:
        lines.append("events: { exclude: [%s] }" % ", ".join(exclude))
    if spool:
        lines.append("spool: { directory: %s }" % json.dumps(spool))
    lines += ["transports:",
              "  - { type: mqtt, name: bus, host: 127.0.0.1, port: %d, topic_prefix: qmp, qos: %s }"
              % (broker.port, qos),
              "  - { type: stdout, name: file, path: %s }"
              % json.dumps(os.path.join(workdir, "events.jsonl"))]
    return "\n".join(lines) + "\n"


def recv_notify(sock, seen, until, timeout):
    """Reads sd_notify datagrams into seen ([{key: value}]) until until(seen) holds."""
    deadline = time.monotonic() + timeout * util.TIMEOUT_SCALE
    while not until(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            break
        seen.append(dict(l.split("=", 1) for l in data.decode().split("\n") if "=" in l))
    return until(seen)


def reload_notified(seen, start):
    """True when RELOADING=1 and a later READY=1 arrived after index start; returns the status."""
    keys = [(i, m) for i, m in enumerate(seen) if i >= start]
    rel = [i for i, m in keys if m.get("RELOADING") == "1"]
    if not rel:
        return None
    ready = [m for i, m in keys if i > rel[0] and m.get("READY") == "1"]
    return ready[0].get("STATUS", "") if ready else None


def envelopes(sub, vm, type_=None):
    return [m for m in check.vm_envelopes(sub, BRIDGE_ID, vm) if type_ is None or m.type == type_]


def peer_connections(workdir, name):
    with open(os.path.join(workdir, name + ".peer.log")) as f:
        return f.read().count("client connected")


def run(t, spool):
    label = "with a spool" if spool else "memory queues"
    d = util.make_tmpdir("qbt-reload-")
    t.section("%s: start" % label)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker, name="sub").start()
    vms = dict(peers.start_event_peers(d, ["vm-a", "vm-b", "vm-c"], 1000000, interval=0.01))
    spool_dir = os.path.join(d, "spool") if spool else None

    nsock_path = os.path.join(d, "notify")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(nsock_path)
    seen = []

    br = bridge.Bridge(d, [], broker=broker, bridge_id=BRIDGE_ID)
    with open(br.conf, "w") as f:
        f.write(config(d, broker, [("vm-a", vms["vm-a"]), ("vm-b", vms["vm-b"])], 1,
                       spool=spool_dir))
    os.environ["NOTIFY_SOCKET"] = nsock_path
    try:
        br.start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    t.add_log("bridge (%s)" % label, br.log)
    t.expect(recv_notify(nsock, seen, lambda s: any(m.get("READY") == "1" for m in s), 20),
             "READY=1 after start", seen)
    for vm in ("vm-a", "vm-b"):
        procs.wait_until(lambda: envelopes(sub, vm, "qmp.vm.state"), 20, "%s snapshot" % vm)
    procs.wait_until(lambda: len(envelopes(sub, "vm-a", "qmp.vm.resumed")) >= 1, 20,
                     "a qmp.vm.resumed of vm-a before the reload")
    t.ok("vm-a and vm-b connected and streaming over MQTT")

    t.section("%s: (a) invalid file" % label)
    good = open(br.conf).read()
    with open(br.conf, "w") as f:
        f.write(good.replace("qos: 1 }", "qos: 7 }"))
    mark = len(seen)
    os.kill(br.proc.pid, signal.SIGHUP)
    line = br.wait_log("reload:", "keeping the running configuration")[0]
    t.expect("bridge.yaml:" in line and "qos" in line, "the log says where and why", line)
    status = None
    t.expect(recv_notify(nsock, seen, lambda s: reload_notified(s, mark) is not None, 10),
             "RELOADING=1 then READY=1", seen[mark:])
    status = reload_notified(seen, mark)
    t.expect("kept" in status and "qos" in status, "READY's STATUS says the reload failed", status)
    t.expect(br.alive(), "the bridge still runs")
    b_before = len(envelopes(sub, "vm-b"))
    procs.wait_until(lambda: len(envelopes(sub, "vm-b")) > b_before + 20, 20,
                     "vm-b still streaming (old config in force)")
    t.expect(not br.log_lines(" debug "), "log level still info")
    t.ok("old configuration still in force")

    t.section("%s: (b) add vm-c, remove vm-b, debug, exclude RESUME, mqtt qos 2" % label)
    a_connected = len(envelopes(sub, "vm-a", "bridge.vm.connected"))
    with open(br.conf, "w") as f:
        f.write(config(d, broker, [("vm-a", vms["vm-a"]), ("vm-c", vms["vm-c"])], 2,
                       log_level="debug", exclude=["RESUME"], spool=spool_dir))
    # a stalled broker: the MQTT transport has a backlog when it is replaced
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.0)
        mark = len(seen)
        os.kill(br.proc.pid, signal.SIGHUP)
        br.wait_log("reload:", "in force")
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    t.expect(recv_notify(nsock, seen, lambda s: reload_notified(s, mark) is not None, 10),
             "RELOADING=1 then READY=1", seen[mark:])
    status = reload_notified(seen, mark)
    t.expect("reloaded" in status and "+1 -1" in status, "READY's STATUS says what changed", status)
    restarted = br.log_lines("reload: transport bus", "restarted")
    t.expect(restarted, "the MQTT transport was restarted", br.log_lines("reload:"))
    moved = int(restarted[0].split("; ")[1].split()[0])
    t.expect(moved > 0, "it had a backlog when it was replaced (%d messages %s)"
             % (moved, "left to the spool" if spool else "moved"), restarted[0])
    t.expect(not br.log_lines("reload: transport file"), "the unchanged stdout transport was kept")

    procs.wait_until(lambda: envelopes(sub, "vm-c", "qmp.vm.state"), 20, "vm-c snapshot")
    c = envelopes(sub, "vm-c")
    t.expect(c[0].type == "bridge.vm.connected", "vm-c: bridge.vm.connected first, then its snapshot",
             check.summarize(c))
    disc = sub.wait_for(lambda m: m.json and m.json.get("subject") == "vm-b"
                        and m.type == "bridge.vm.disconnected", 20, "vm-b disconnected")
    t.expect("reload" in disc.data.get("reason", ""), "vm-b's disconnect reason names the reload",
             disc.data)

    # events of vm-a numbered from here on were normalised after the reload
    time.sleep(1.0)
    s1 = max(check.seq_int(m) for m in envelopes(sub, "vm-a"))
    procs.wait_until(lambda: len([m for m in envelopes(sub, "vm-a", "qmp.vm.stopped")
                                  if check.seq_int(m) > s1]) >= 3, 30,
                     "three qmp.vm.stopped of vm-a after the reload")
    late = [m for m in envelopes(sub, "vm-a", "qmp.vm.resumed") if check.seq_int(m) > s1]
    t.expect(not late, "no qmp.vm.resumed after the reload (events.exclude)", check.summarize(late))
    t.expect(len(envelopes(sub, "vm-a", "bridge.vm.connected")) == a_connected,
             "vm-a: no second bridge.vm.connected")
    t.expect(peer_connections(d, "vm-a") == 1, "vm-a's peer saw one QMP connection only",
             peer_connections(d, "vm-a"))
    t.expect(br.log_lines(" debug "), "debug lines appear")
    st = sub.fetch_retained("qmp/%s/status" % BRIDGE_ID).raw
    t.expect(st == b"online", "retained status: online after the restart", st)

    sub.poll()
    stream = [m.json for m in sub.messages if m.json is not None and "/event/" in m.topic]
    rep = streamcheck.check(stream, expect_first={"vm-a": 1, "vm-b": 1, "vm-c": 1})
    t.expect(rep.ok(), "MQTT event stream across the transport restart: no gap, no reorder", rep)
    t.ok("streamcheck", rep.summary())

    t.section("%s: shutdown" % label)
    rc = br.stop()
    t.expect(rc == 0, "clean exit after SIGTERM", rc)
    sub.stop()
    broker.stop()
    nsock.close()


with check.Test("reload") as t:
    run(t, spool=False)
    run(t, spool=True)
