#!/usr/bin/python3
"""A broker that stops answering costs nothing: back-pressure instead of drops.

A scripted peer streams events as fast as it can; the bridge's MQTT transport
has a small queue (200 messages, 20 in flight). mosquitto is frozen with
SIGSTOP: PUBACKs stop, the queue fills to its high-water mark, and the bridge
must pause reading QMP (log line) rather than drop anything. After SIGCONT it
resumes, and the subscriber receives vm1's events with a contiguous sequence
from 1, far more of them than fit in the queue, and the log reports no drop."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
QUEUE = 200

with check.Test("backpressure") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    sock = os.path.join(d, "vm1.qmp")
    peer_log = os.path.join(d, "peer.log")
    peer = procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events",
                        "--interval", "0.001"], "qmp_peer", stderr=peer_log)
    t.add_log("peer", peer_log)
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    br = bridge.Bridge(d, [("vm1", sock)], broker=broker, stdout_path=False)
    br.yaml = br.yaml.replace("qos: 1 }", "qos: 1, max_inflight: 20, queue_max_messages: %d }" % QUEUE)
    with open(br.conf, "w") as f:
        f.write(br.yaml)
    br.start()
    t.add_log("bridge", br.log)

    def vm1_seqs():
        sub.poll()
        return sorted({int(m.json["sequence"]) for m in sub.messages
                       if m.json is not None and m.json["subject"] == "vm1" and "/event/" in m.topic})

    t.section("stream flows, then the broker freezes")
    procs.wait_until(lambda: len(vm1_seqs()) >= 50, 20, "50 events of vm1")
    os.kill(broker.proc.pid, signal.SIGSTOP)
    before = len(vm1_seqs())
    br.wait_log("pausing reading from", timeout=30)
    t.ok("bridge paused QMP reads under back-pressure", br.log_lines("pausing reading from")[0][-60:])
    time.sleep(1.0)
    t.expect(not br.log_lines("dropped"), "nothing dropped while the broker is frozen",
             br.log_lines("dropped")[:3])

    t.section("the broker thaws: everything arrives, in order, without gaps")
    os.kill(broker.proc.pid, signal.SIGCONT)
    br.wait_log("resuming reading from", timeout=30)
    t.ok("bridge resumed QMP reads")
    procs.wait_until(lambda: len(vm1_seqs()) >= before + 3 * QUEUE, 60,
                     "%d more events after the thaw" % (3 * QUEUE))
    procs.kill(peer)
    last = -1
    def settled():
        global last
        n = len(vm1_seqs())
        ok = n == last
        last = n
        return ok
    procs.wait_until(settled, 30, "the stream to settle", interval=1.0)
    seqs = vm1_seqs()
    t.expect(seqs == list(range(1, len(seqs) + 1)),
             "vm1 sequence contiguous 1..%d (no gap, nothing dropped)" % len(seqs),
             [s for a, s in zip(seqs, seqs[1:]) if s != a + 1][:5])
    t.expect(not br.log_lines("dropped"), "bridge log reports no drop")
    t.ok("events delivered in total", len(seqs))
