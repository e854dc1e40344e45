#!/usr/bin/python3
"""A pause is never published without its reason, and nothing overtakes it.

tests/tools/qmp_peer.py in stop-query mode sends STOP with no BLOCK_IO_ERROR
before it (as when QEMU rate-limits the error event), then RESUME and an
RTC_CHANGE straight away, and answers query-status (io-error) only after 1.5 s;
query-block reports io-status nospace on virtio0. Checked on the stdout
transport's JSON lines: qmp.vm.stopped (reason io-error, cause virtio0/enospc
from query-block) comes before qmp.vm.resumed and the qmp.event, sequences are
consecutive, and the resumed event was held back until the reply came."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
DELAY = 1.5


def read_events(path):
    return util.read_jsonl(path)


with check.Test("event_order") as t:
    d = t.workdir
    sock = os.path.join(d, "vm1.qmp")
    peer_log = os.path.join(d, "peer.log")
    procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "stop-query",
                 "--reply-delay", str(DELAY)], "qmp_peer", stderr=peer_log)
    t.add_log("qmp_peer", peer_log)
    procs.wait_until(lambda: os.path.exists(sock), 10, "peer socket")
    br = bridge.Bridge(d, [("vm1", sock)]).start()
    t.add_log("bridge", br.log)

    t.section("while query-status is held, nothing after STOP is published")
    procs.wait_until(lambda: "holding the query-status reply" in open(peer_log).read(), 20,
                     "the peer to hold back query-status")
    time.sleep(DELAY / 2)
    mid = [e["type"] for e in read_events(br.events_path)]
    t.expect("qmp.vm.state" in mid, "snapshot was published before the act", mid)
    t.expect("qmp.vm.resumed" not in mid and "qmp.event" not in mid and "qmp.vm.stopped" not in mid,
             "mid-delay: no stopped, resumed or later event yet", mid)

    t.section("after the reply: stopped with its reason, then the held events in order")
    evs = procs.wait_until(lambda: (lambda e: e if any(x["type"] == "qmp.event" for x in e) else None)(
        read_events(br.events_path)), 20, "the RTC_CHANGE after STOP/RESUME")
    types = [e["type"] for e in evs]
    t.expect(types[:2] == ["bridge.vm.connected", "qmp.vm.state"],
             "connected and snapshot come first", types)
    i_stop, i_res, i_ev = types.index("qmp.vm.stopped"), types.index("qmp.vm.resumed"), types.index("qmp.event")
    t.expect(i_stop < i_res < i_ev, "order kept: stopped, resumed, qmp.event", types)
    stopped = evs[i_stop]["data"]
    t.expect(stopped["reason"] == "io-error", "reason io-error taken from query-status", stopped)
    cause = stopped.get("cause", {})
    t.expect(cause.get("device") == "virtio0" and cause.get("errno") == "enospc"
             and cause.get("io_status") == "nospace",
             "cause derived from query-block io-status: virtio0, enospc, nospace", stopped)
    seqs = [int(e["sequence"]) for e in evs]
    t.expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequences consecutive", seqs)
    for e in evs:
        mqtt.validate_envelope(e)
    t.ok("all %d envelopes valid against schema/v1" % len(evs))
