#!/usr/bin/python3
"""VM sources other than a static unix socket:
- discovery: every socket ending in ".qmp" in a watched directory is a VM named
  after the file. A scripted peer's socket appearing adds a VM; removing it
  removes the VM (bridge.vm.disconnected); the same name coming back continues
  its sequence. A real QEMU creating its socket there is discovered and
  snapshotted; a regular file and a socket with an invalid VM name are ignored.
- tcp: a static VM at tcp:127.0.0.1:<port> (real QEMU, -qmp tcp server).
Everything checked on the stdout transport's JSON lines, schema-validated."""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, qemu, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


def events(br, vm=None):
    evs = util.read_jsonl(br.events_path)
    for e in evs:
        mqtt.validate_envelope(e)
    return [e for e in evs if vm is None or e["subject"] == vm]


def wait_type(br, vm, type_, n=1, timeout=20):
    return procs.wait_until(
        lambda: (lambda e: e if len([x for x in e if x["type"] == type_]) >= n else None)(events(br, vm)),
        timeout, "%d x %s of %s" % (n, type_, vm))


with check.Test("discovery_tcp") as t:
    d = t.workdir
    watch = os.path.join(d, "vms")  # created by the bridge
    port = util.free_port()
    tcpvm = qemu.Qemu(d, "tcpvm", guest=False, disk=None,
                      extra=["-qmp", "tcp:127.0.0.1:%d,server=on,wait=off" % port]).start().wait_ready()
    t.add_log("qemu tcpvm", tcpvm.log)
    br = bridge.Bridge(d, [], extra_yaml="discovery: { directory: %s, suffix: .qmp }\n" % json.dumps(watch))
    # The harness writes a static unix VM list; add the tcp VM in place of it.
    br.yaml = br.yaml.replace("vms:\n", 'vms:\n  - { name: tcpvm, qmp: "tcp:127.0.0.1:%d" }\n' % port)
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)

    t.section("static VM over TCP")
    evs = wait_type(br, "tcpvm", "qmp.vm.state")
    t.expect(evs[0]["type"] == "bridge.vm.connected" and evs[0]["data"]["address"] == "tcp:127.0.0.1:%d" % port,
             "tcpvm connected over tcp", evs[0]["data"])
    t.expect(evs[1]["data"]["run_state"] == "running", "tcpvm snapshot says running", evs[1]["data"])

    t.section("a socket appears in the watched directory")
    procs.wait_until(lambda: os.path.isdir(watch), 10, "discovery directory created by the bridge")
    with open(os.path.join(watch, "notes.qmp"), "w") as f:
        f.write("not a socket\n")
    bad = socket.socket(socket.AF_UNIX)
    bad.bind(os.path.join(watch, "bad name!.qmp"))
    peer_log = os.path.join(d, "peer.log")
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", os.path.join(watch, "peer1.qmp"),
                        "--mode", "events", "--interval", "0.05"], "qmp_peer", stderr=peer_log)
    t.add_log("peer", peer_log)
    evs = wait_type(br, "peer1", "qmp.event", n=5)
    t.expect([e["type"] for e in evs[:2]] == ["bridge.vm.connected", "qmp.vm.state"],
             "discovered peer1: connected, snapshot, then events", [e["type"] for e in evs[:4]])
    br.wait_log("bad name!.qmp", "not a valid VM name")
    t.ok("socket with an invalid VM name skipped with a warning")
    t.expect(not events(br, "notes"), "regular file notes.qmp is not a VM")

    t.section("the socket disappears: the VM is removed")
    procs.kill(peer)
    os.unlink(os.path.join(watch, "peer1.qmp"))
    evs = wait_type(br, "peer1", "bridge.vm.disconnected")
    last_seq = int(evs[-1]["sequence"])
    br.wait_log("[peer1] removed: socket removed")
    t.ok("peer1 removed when its socket went away", last_seq)

    t.section("the same name comes back: numbering continues")
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", os.path.join(watch, "peer1.qmp"),
                        "--mode", "events", "--interval", "0.05"], "qmp_peer", stderr=peer_log)
    evs = wait_type(br, "peer1", "bridge.vm.connected", n=2)
    again = [e for e in evs if e["type"] == "bridge.vm.connected"][1]
    t.expect(int(again["sequence"]) > last_seq and again["id"].split("-")[0] == evs[0]["id"].split("-")[0],
             "second bridge.vm.connected continues the sequence with the same epoch",
             (last_seq, again["sequence"], again["id"]))
    seqs = [int(e["sequence"]) for e in events(br, "peer1")]
    t.expect(all(a < b for a, b in zip(seqs, seqs[1:])), "peer1 sequence strictly increasing", seqs[-5:])

    t.section("the socket is removed while its session is still open, then comes back")
    # The VM is removed first and its session closed after: the bridge.vm.disconnected
    # published on that close must count, or the returning VM reuses its sequence.
    before = events(br, "peer1")
    os.unlink(os.path.join(watch, "peer1.qmp"))
    br.wait_log("[peer1] removed: socket removed", timeout=20)
    evs = wait_type(br, "peer1", "bridge.vm.disconnected", n=2)
    gone_seq = max(int(e["sequence"]) for e in evs)
    procs.kill(peer)
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", os.path.join(watch, "peer1.qmp"),
                        "--mode", "events", "--interval", "0.05"], "qmp_peer", stderr=peer_log)
    evs = wait_type(br, "peer1", "bridge.vm.connected", n=3)
    third = [e for e in evs if e["type"] == "bridge.vm.connected"][2]
    t.expect(int(third["sequence"]) == gone_seq + 1,
             "the returning VM continues right after the disconnect of the removed session",
             (len(before), gone_seq, third["sequence"]))
    seqs = [int(e["sequence"]) for e in events(br, "peer1")]
    t.expect(len(seqs) == len(set(seqs)), "no sequence used twice", seqs[-8:])
    procs.kill(peer)

    t.section("a real QEMU creating its socket in the directory")
    real = qemu.Qemu(watch, "realvm", guest=False, disk=None).start()
    t.add_log("qemu realvm", real.log)
    evs = wait_type(br, "realvm", "qmp.vm.state")
    t.expect(evs[1]["data"]["qemu"]["version"].startswith("7."), "realvm discovered and snapshotted",
             evs[1]["data"]["qemu"])
    rc = real.stop()  # QEMU removes its socket files on a clean exit
    left = [f for f in ("realvm.qmp", "realvm.test.qmp") if os.path.exists(os.path.join(watch, f))]
    if left:
        # Seen once in a loaded CI run: both files stayed, the exit status was not
        # recorded. Without a clean exit there is nothing to test here but what
        # the earlier section did (a socket removed by someone else), so say so
        # and remove them as an operator would after a crash; a clean exit that
        # leaves them is a QEMU change this test must report.
        t.expect(rc != 0, "QEMU's clean exit removed its socket files", (rc, left))
        print("      note: QEMU did not exit cleanly (status %s): removing %s ourselves" % (rc, left))
        for f in left:
            os.unlink(os.path.join(watch, f))
    wait_type(br, "realvm", "bridge.vm.disconnected")
    br.wait_log("[realvm] removed: socket removed")
    t.ok("realvm removed after %s" % ("its socket files were removed by the test" if left
                                      else "QEMU exited and unlinked its socket"))
    bad.close()
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
