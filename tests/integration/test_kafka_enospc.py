#!/usr/bin/python3
"""Real ENOSPC end to end over Kafka, in both CloudEvents content modes.

A guest fills a data disk on a 4M tmpfs until QEMU pauses the VM (as in
test_enospc_mqtt.py: QEMU starts with -S and gets "cont" once the bridge has
published its snapshot). The bridge has two Kafka transports into one mock
cluster: "kafka" in structured mode on the default topics qmp.events and
qmp.state, and "kbin" in binary mode on bin.events and bin.state. kcat reads
all four topics; every record is checked (schema; key "<bridge>/vm1";
structured: content-type application/cloudevents+json and ce_type, ce_id,
ce_subject; binary: value = data, every attribute a ce_ header).
On qmp.events vm1 shows bridge.vm.connected, qmp.vm.state (prelaunch), ...,
qmp.block.io_error (enospc, write, stop) before qmp.vm.stopped (io-error,
cause data/enospc), sequence strictly increasing; the last qmp.state message
of vm1 says run_state io-error with the disk's io_status nospace. The binary
topics carry the same events, with the same ids, in the same order."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, procs, qemu  # noqa: E402

BRIDGE_ID = "test-host"
KEY = BRIDGE_ID + "/vm1"


def decoded(consumer, decode):
    """(record, envelope) of every record so far, each checked by decode."""
    consumer.read()
    out = []
    for r in consumer.records:
        env = decode(r)
        if r.key != KEY:
            raise check.CheckFailed("record keyed %r, expected %r: %r" % (r.key, KEY, r))
        out.append((r, env))
    return out


def summary(pairs):
    return "\n".join("  [%d]@%d seq=%s %s %s" % (r.partition, r.offset, e["sequence"], e["type"],
                                                str(e.get("data"))[:160]) for r, e in pairs)


def has_type(consumer, decode, etype):
    return any(e["type"] == etype for _, e in decoded(consumer, decode))


with check.Test("kafka_enospc") as t:
    d = t.workdir
    topics = ["qmp.events", "qmp.state", "bin.events", "bin.state"]
    mock = kafka.KafkaMock(d, brokers=3, topics=[(n, 3, 3) for n in topics])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    kc = {n: kafka.KcatConsumer(mock.bootstrap, n, d, name=n.replace(".", "-")).start()
          for n in topics}
    for n, c in kc.items():
        t.add_log("kcat " + n, c.log)
    vm = qemu.Qemu(d, "vm1", disk="tmpfs", extra=["-S"]).start().wait_ready()
    t.add_log("qemu vm1", vm.log)
    t.ok("QEMU started paused (-S), data disk mode", vm.disk)
    extra = ("  - { type: kafka, brokers: \"%s\" }\n"
             "  - { type: kafka, name: kbin, brokers: \"%s\", content_mode: binary,"
             " events_topic: bin.events, state_topic: bin.state }\n" % (mock.bootstrap, mock.bootstrap))
    br = bridge.Bridge(d, [("vm1", vm.qmp_path)], bridge_id=BRIDGE_ID, stdout_path=False,
                       extra_yaml=extra).start()
    t.add_log("bridge", br.log)
    S, B = kafka.structured_envelope, kafka.binary_envelope

    t.section("connect and snapshot")
    ev = procs.wait_until(lambda: (lambda p: p if len(p) >= 2 else None)(
        decoded(kc["qmp.events"], S)), 30, "two records of vm1 on qmp.events")
    t.expect(ev[0][1]["type"] == "bridge.vm.connected", "first record on qmp.events is "
             "bridge.vm.connected", summary(ev))
    t.expect(ev[1][1]["type"] == "qmp.vm.state" and ev[1][1]["data"]["run_state"] == "prelaunch"
             and ev[1][1]["data"]["running"] is False,
             "second record is the qmp.vm.state snapshot: prelaunch, not running", summary(ev))
    st = procs.wait_until(lambda: decoded(kc["qmp.state"], S), 30, "the snapshot on qmp.state")
    t.expect(st[0][1]["id"] == ev[1][1]["id"],
             "the snapshot is on qmp.state too, with the same id", (st[0][1]["id"], ev[1][1]["id"]))

    t.section("guest runs into ENOSPC")
    vm.qmp.cmd("cont")
    vm.wait_enospc_pause()
    t.ok("QEMU paused with io-error (checked on the test monitor)")
    procs.wait_until(lambda: has_type(kc["qmp.events"], S, "qmp.vm.stopped"), 30,
                     "qmp.vm.stopped on qmp.events")
    ev = decoded(kc["qmp.events"], S)
    envs = [e for _, e in ev]
    t.ok("every record on qmp.events is a valid envelope keyed %s with content-type %s and "
         "ce_type/ce_id/ce_subject" % (KEY, kafka.STRUCTURED_CONTENT_TYPE), len(ev))
    t.expect(len({r.partition for r, _ in ev}) == 1, "all of vm1 in one partition",
             {r.partition for r, _ in ev})
    seqs = [int(e["sequence"]) for _, e in sorted(ev, key=lambda p: p[0].offset)]
    t.expect(all(b > a for a, b in zip(seqs, seqs[1:])),
             "sequence strictly increasing in offset order", summary(ev))
    types = [e["type"] for e in envs]
    i_err = types.index("qmp.block.io_error") if "qmp.block.io_error" in types else -1
    i_stop = types.index("qmp.vm.stopped")
    t.expect(i_err >= 0, "qmp.block.io_error published", summary(ev))
    err = envs[i_err]["data"]
    t.expect(err["errno"] == "enospc" and err["operation"] == "write" and err["action"] == "stop"
             and err["device"] == "data" and err.get("nospace") is True,
             "io_error: device data, errno enospc, operation write, action stop, nospace", err)
    t.expect(i_err < i_stop, "io_error came before vm.stopped", (i_err, i_stop))
    stopped = envs[i_stop]["data"]
    cause = stopped.get("cause") or {}
    t.expect(stopped["reason"] == "io-error" and cause.get("device") == "data"
             and cause.get("errno") == "enospc",
             "vm.stopped: reason io-error, cause device data errno enospc", stopped)
    t.expect([i for i, x in enumerate(types) if x.startswith("qmp.")][0] == 1,
             "connected and the snapshot came before any other qmp.* event", types[:4])

    t.section("state topic")

    def last_state():
        pairs = decoded(kc["qmp.state"], S)
        return pairs[-1][1] if pairs else None
    try:
        procs.wait_until(lambda: (last_state() or {}).get("data", {}).get("run_state") == "io-error",
                         20, "qmp.state to end at io-error")
    except TimeoutError:
        pass
    st = decoded(kc["qmp.state"], S)
    last = st[-1][1]
    t.expect(last["type"] == "qmp.vm.state" and last["data"]["run_state"] == "io-error"
             and last["data"]["running"] is False
             and check.disk(last["data"], "data").get("io_status") == "nospace",
             "last qmp.state message of %s: run_state io-error, disk data io_status nospace" % KEY,
             summary(st))
    event_seqs = {e["sequence"] for e in envs}
    t.expect(all(e["type"] == "qmp.vm.state" and e["sequence"] in event_seqs for _, e in st),
             "every qmp.state message is a qmp.vm.state repeating an event's sequence", summary(st))
    t.expect(last["id"].endswith(".state") and last["sequence"] in
             {e["sequence"] for e in envs if e["type"] in ("qmp.block.io_error", "qmp.vm.stopped")},
             "the io-error state carries the sequence of the io_error/stopped event, id "
             "suffix .state", last["id"])

    t.section("binary content mode (transport kbin)")
    procs.wait_until(lambda: has_type(kc["bin.events"], B, "qmp.vm.stopped"), 30,
                     "qmp.vm.stopped on bin.events")
    bev = decoded(kc["bin.events"], B)
    t.ok("every record on bin.events is data as value with ce_ headers that rebuild a valid "
         "envelope", len(bev))
    for r, e in bev:
        for h in ("ce_specversion", "ce_type", "ce_id", "ce_source", "ce_subject", "ce_time",
                  "ce_sequence", "ce_dataschema", "ce_partitionkey", "ce_bridge"):
            if h not in r.headers:
                raise check.CheckFailed("binary record lacks header %s: %r" % (h, r))
        if r.headers["content-type"] != "application/json" or r.json() != e["data"]:
            raise check.CheckFailed("binary record value is not the data as JSON: %r" % r)
        if r.payload.lstrip().startswith('{"specversion"'):
            raise check.CheckFailed("binary record carries a structured envelope: %r" % r)
    t.ok("binary records: content-type application/json, value = data, ce_ headers for every "
         "attribute")
    n = len(bev)
    t.expect([e["id"] for _, e in bev] == [e["id"] for e in envs[:n]] and n >= i_stop + 1,
             "bin.events carries the same events as qmp.events: same ids, same order",
             summary(bev))
    t.expect([e["data"] for _, e in bev] == [e["data"] for e in envs[:n]],
             "and the same data")
    procs.wait_until(lambda: (lambda p: p and p[-1][1]["data"]["run_state"] == "io-error")(
        decoded(kc["bin.state"], B)), 20, "bin.state to end at io-error")
    bst = decoded(kc["bin.state"], B)
    t.expect(bst[-1][0].headers["ce_type"] == "qmp.vm.state" and bst[-1][1]["id"] == last["id"],
             "bin.state ends with the same io-error state message (ce_type qmp.vm.state, same id)",
             summary(bst))

    t.section("clean shutdown")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not re.search(r"Sanitizer|runtime error", br.log_text()),
             "no sanitizer report in the bridge log")
    for name in ("kafka", "kbin"):
        t.expect(br.log_lines("transport %s: closed, 0 messages undelivered" % name),
                 "transport %s: 0 messages undelivered" % name, br.tail(8))
