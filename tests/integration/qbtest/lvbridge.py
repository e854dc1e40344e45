"""lvbridge.py - a bridge on a private libvirtd, for the test_libvirt_* tests.

    lvbridge.skip_without_libvirt()     # SKIP (exit 77) without root or libvirtd
    lv = libvirt.Libvirtd(t.workdir).start()
    rig = lvbridge.LibvirtBridge(t, lv)  # mosquitto, subscriber, bridge (started)
    rig.metric("qmp_bridge_libvirt_connected")  # a /metrics sample, or None
    rig.get("/readyz")                  # (status, body)

The bridge has an MQTT transport (QoS 1), the stdout transport (br.events_path)
and metrics.listen on a unix socket (qbtest.status reads it). Its libvirt section is
`libvirt: { uri: <lv.uri> }` unless extra_yaml brings its own libvirt: line.
"""
import json
import os
import re
import shutil
import sys

from . import bridge, check, mqtt, procs, status, util

BRIDGE_ID = "test-host"


def skip_without_libvirt():
    """Exits 77 (ctest: Skipped) when this machine cannot run a private libvirtd."""
    if os.geteuid() != 0 or not shutil.which("libvirtd") or not shutil.which("virtlogd"):
        print("SKIP needs root and libvirtd/virtlogd (libvirt-daemon, libvirt-daemon-driver-qemu)")
        sys.exit(77)


class LibvirtBridge:
    """mosquitto + a subscriber on qmp/# + a bridge on the Libvirtd lv (started).
    (tests/CMakeLists.txt labels a test "daemon" and "libvirt" when its file says
    "Bridge(" and "Libvirtd(": the tests name both.)"""

    def __init__(self, t, lv, extra_yaml="", vms=(), topic="qmp/#"):
        """vms: static VMs [(name, qmp socket path)]; topic: the subscriber's
        filter or filters (one must match qmp/_probe)."""
        d = t.workdir
        self.t = t
        self.lv = lv
        self.broker = mqtt.Broker(d).start()
        t.add_log("mosquitto", self.broker.log)
        self.sub = mqtt.Subscriber(self.broker, topic=topic).start()
        t.add_log("subscriber", self.sub.out)
        self.status_sock = os.path.join(d, "status.sock")
        yaml = "metrics: { listen: %s }\n" % json.dumps("unix:" + self.status_sock)
        if not re.search(r"^libvirt:", extra_yaml, re.M):
            yaml += "libvirt: { uri: %s }\n" % json.dumps(lv.uri)
        self.br = bridge.Bridge(d, list(vms), broker=self.broker, bridge_id=BRIDGE_ID,
                                extra_yaml=yaml + extra_yaml)
        t.add_log("bridge", self.br.log)
        self.br.start()

    # -- HTTP status API --------------------------------------------------------
    def get(self, path):
        """(status, body) of GET path on the bridge's status API."""
        return status.http_unix(self.status_sock, path)

    def metric(self, name, **labels):
        """One sample of /metrics, or None when it is not there."""
        return status.metric(self.status_sock, name, **labels)

    def wait_metric(self, name, pred, what, timeout=20.0, **labels):
        """Waits until pred(value) holds for the sample; returns the value."""
        last = {}

        def ok():
            try:
                last["v"] = self.metric(name, **labels)
            except (OSError, ValueError, IndexError) as e:  # the listener may be busy a moment
                last["v"] = e
                return None
            v = last["v"]
            return (v,) if v is not None and pred(v) else None
        try:
            return procs.wait_until(ok, timeout, what, interval=0.2)[0]
        except TimeoutError:
            raise check.CheckFailed("%s: %s stayed %r" % (what, name, last.get("v")))

    # -- what the VMs published ------------------------------------------------
    def envelopes(self, vm):
        return check.vm_envelopes(self.sub, BRIDGE_ID, vm)

    def events(self, vm):
        """vm's envelopes on its event topics (no state-topic copies), arrival order."""
        return [m for m in self.envelopes(vm) if not check.on_state_topic(m)]

    def wait_event(self, vm, pred, what, timeout=30.0, start=0):
        """The first event-topic envelope of vm from index start of events(vm)
        for which pred(m) holds; returns its index in events(vm)."""
        def find():
            i = check.first_index(self.events(vm), pred, start)
            return i + 1 if i >= 0 else None
        try:
            return procs.wait_until(find, timeout, what, interval=0.1) - 1
        except TimeoutError:
            raise check.CheckFailed("%s never came; %s's events:\n%s" % (
                what, vm, check.summarize(self.events(vm))))

    def stdout_envelopes(self, vm):
        """vm's envelopes in the stdout transport's file, in file order."""
        return [e for e in util.read_jsonl(self.br.events_path) if e.get("subject") == vm]

    def retained_state(self, vm, timeout=3.0):
        """The retained message on vm's state topic, or None when there is none."""
        try:
            return self.sub.fetch_retained("qmp/%s/%s/state" % (BRIDGE_ID, vm), timeout=timeout)
        except TimeoutError:
            return None

    def wait_retained_cleared(self, vm, timeout=20.0):
        """Waits until vm's state topic has no retained message (the bridge
        published an empty retained one)."""
        procs.wait_until(lambda: check.no_retained_state(self.broker, BRIDGE_ID, vm),
                         timeout, "the retained state of %s to be cleared" % vm, interval=0.3)

    def wait_retained(self, vm, pred, what, timeout=20.0):
        return check.wait_retained_state(self.sub, BRIDGE_ID, vm, pred, what, timeout)


def assert_consecutive(t, seqs, what):
    """seqs strictly increase by exactly 1 from one to the next."""
    bad = [(a, b) for a, b in zip(seqs, seqs[1:]) if b != a + 1]
    t.expect(seqs and not bad, "%s: %d sequence numbers %s..%s, each n+1 after n" % (
        what, len(seqs), seqs[0] if seqs else "-", seqs[-1] if seqs else "-"),
        (bad[:10], seqs[:40]))
