#!/usr/bin/python3
"""The libvirt source at reload and with a hung libvirtd.

Reload: domains keep-a and other run; the bridge takes only keep-a
(include ["keep-*"]). A SIGHUP with include ["*"] takes other too, without a
disconnect of keep-a (its stream goes on, no bridge.vm.disconnected); one with
include ["other"] removes keep-a: its retained state is cleared.

Hung libvirtd: a QMP-socket VM (tests/tools/qmp_peer.py, events mode) sends a
steady stream next to the libvirt VMs; libvirtd gets SIGSTOP. The socket VM's
events keep reaching the bus while libvirtd hangs (nothing waits for it on the
loop), keepalive (1 s x 2) declares the connection lost: /metrics says
qmp_bridge_libvirt_connected 0, /readyz is 503 naming libvirt, the libvirt VMs
publish bridge.vm.disconnected. After SIGCONT the bridge connects again and
resyncs them (bridge.vm.connected, qmp_bridge_libvirt_connected 1)."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, libvirt, mqtt, procs, util  # noqa: E402
from qbtest.status import http_unix, metric  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


def libvirt_yaml(lv, include, status):
    return ("libvirt: { uri: %s, include: %s, keepalive_interval: 1s, keepalive_count: 2 }\n"
            "metrics: { listen: %s }\n" % (json.dumps(lv.uri), json.dumps(include),
                                           json.dumps("unix:" + status)))


with check.Test("libvirt_reload_hang") as t:
    d = t.workdir
    status = os.path.join(d, "status.sock")
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    for name in ("keep-a", "other"):
        libvirt.define_idle_domain(lv, d, name)
    sock = os.path.join(d, "sockvm.qmp")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events", "--interval",
                 "0.05"], "qmp_peer", stderr=os.path.join(d, "peer.log"))
    procs.wait_until(lambda: os.path.exists(sock), 10, "the peer's socket")
    br = bridge.Bridge(d, [("sockvm", sock)], broker=broker,
                       extra_yaml=libvirt_yaml(lv, ["keep-*"], status)).start()
    t.add_log("bridge", br.log)

    def vms():
        try:
            return sorted(v["name"] for v in json.loads(http_unix(status, "/vms")[1]))
        except OSError:
            return []  # the status API is not up yet

    t.section("reload: the filters")
    procs.wait_until(lambda: "keep-a" in vms(), 30, "keep-a on the bridge")
    t.expect(vms() == ["keep-a", "sockvm"], "include keep-*: keep-a is a VM, other is not", vms())

    def reload(include):
        with open(br.conf, "w") as f:
            f.write(br.yaml.replace(libvirt_yaml(lv, ["keep-*"], status),
                                    libvirt_yaml(lv, include, status)))
        n = len(br.log_lines("reload: "))
        os.kill(br.proc.pid, signal.SIGHUP)
        procs.wait_until(lambda: len(br.log_lines("reload: ")) > n, 20, "the reload")
    reload(["*"])
    procs.wait_until(lambda: "other" in vms(), 30, "other on the bridge")
    sub.wait_for(lambda m: m.type == "qmp.vm.state" and m.json["subject"] == "other", 20,
                 "other's snapshot")
    t.expect(not [m for m in check.vm_envelopes(sub, "test-host", "keep-a")
                  if m.type == "bridge.vm.disconnected"],
             "include *: other is taken, keep-a was not disconnected by the reload", vms())
    reload(["other"])
    procs.wait_until(lambda: "keep-a" not in vms(), 30, "keep-a removed")
    t.ok("include other: keep-a is removed", vms())
    procs.wait_until(lambda: check.no_retained_state(broker, "test-host", "keep-a"), 20,
                     "keep-a's retained state cleared")
    t.ok("keep-a's retained state is cleared")

    t.section("a hung libvirtd stalls nothing else")
    t.expect(metric(status, "qmp_bridge_libvirt_connected") == 1, "connected to libvirtd")

    def sock_events():
        return len([m for m in check.vm_envelopes(sub, "test-host", "sockvm")
                    if m.type == "qmp.event"])
    def connects(vm):
        return len([m for m in check.vm_envelopes(sub, "test-host", vm)
                    if m.type == "bridge.vm.connected"])
    n_conn = connects("other")
    pid = lv.daemon_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        n0 = sock_events()
        procs.wait_until(lambda: sock_events() > n0 + 20, 20,
                         "the socket VM's events to flow while libvirtd hangs")
        t.ok("the socket VM's events flow while libvirtd is stopped", sock_events() - n0)
        procs.wait_until(lambda: metric(status, "qmp_bridge_libvirt_connected") == 0, 30,
                         "keepalive to declare the connection lost")
        t.ok("keepalive: qmp_bridge_libvirt_connected 0")
        code, body = http_unix(status, "/readyz")
        t.expect(code == 503 and "libvirt: not connected" in body,
                 "/readyz is 503 and names libvirt", (code, body))
        sub.wait_for(lambda m: m.type == "bridge.vm.disconnected" and m.json["subject"] == "other",
                     20, "other disconnected")
        t.ok("the libvirt VM published bridge.vm.disconnected")
        n1 = sock_events()
        time.sleep(1)
        t.expect(sock_events() > n1, "the socket VM still flows", sock_events() - n1)
    finally:
        os.kill(pid, signal.SIGCONT)
    procs.wait_until(lambda: metric(status, "qmp_bridge_libvirt_connected") == 1, 30,
                     "the connection back")
    t.expect(metric(status, "qmp_bridge_libvirt_connections_lost_total") >= 1,
             "the loss is counted", metric(status, "qmp_bridge_libvirt_connections_lost_total"))
    procs.wait_until(lambda: connects("other") > n_conn, 20, "other connected again")
    m = check.wait_retained_state(sub, "test-host", "other", lambda s: s["connected"] is True,
                                  "other's state connected again")
    env = check.vm_envelopes(sub, "test-host", "other")
    check.assert_increasing(env, "other's sequence")
    t.ok("other resynced after libvirtd came back; sequence strictly increasing",
         check.summarize(env[-3:]))
    t.expect(br.stop() == 0, "SIGTERM: exit 0")
