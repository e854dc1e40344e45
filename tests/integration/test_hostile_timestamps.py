#!/usr/bin/python3
"""Hostile QMP timestamps: two fake QEMUs (qmp_peer.py --mode bad-timestamps,
VMs ts1 and ts2) each send one RTC_CHANGE per entry of qmp_peer.BAD_TIMESTAMPS
(seconds INT64_MAX with microseconds INT32_MAX, INT64_MIN, 1e12 as an integer
and as a real, one second before year 0001 and after year 9999, microseconds
1000000 and -1, missing members, a string, an array, no timestamp at all, and
the first and last instants of years 0001-9999), then a STOP and a RESUME with
hostile timestamps. Checked: the bridge (run it from an ASan/UBSan build with
halt_on_error to catch undefined behaviour) survives and exits 0 on SIGTERM;
every envelope validates against schema/v1 (time is an RFC 3339 date-time);
the two boundary instants are kept exactly; every other event carries the
bridge's clock; the log says "timestamp unusable" exactly once per VM."""
import datetime
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, schema, util  # noqa: E402

TOOLS = os.path.join(util.SOURCE_DIR, "tests", "tools")
sys.path.insert(0, TOOLS)
import qmp_peer  # noqa: E402

PEER = os.path.join(TOOLS, "qmp_peer.py")
VMS = ("ts1", "ts2")
KEPT = {"first-instant": "0001-01-01T00:00:00.000000Z", "last-instant": "9999-12-31T23:59:59.999999Z"}


def parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


with check.Test("hostile_timestamps") as t:
    d = t.workdir
    socks = {}
    for name in VMS:
        socks[name] = os.path.join(d, name + ".qmp")
        plog = os.path.join(d, name + ".peer.log")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", socks[name], "--mode", "bad-timestamps"],
                    "qmp_peer-" + name, stderr=plog)
        t.add_log("qmp_peer " + name, plog)
    procs.wait_until(lambda: all(os.path.exists(s) for s in socks.values()), 10, "peer sockets")
    started = time.time()
    br = bridge.Bridge(d, [(name, socks[name]) for name in VMS]).start()
    t.add_log("bridge", br.log)

    def envelopes(name):
        return [e for e in util.read_jsonl(br.events_path) if e.get("subject") == name]

    def done(name):
        evs = envelopes(name)
        rtc = [e for e in evs if e["type"] == "qmp.event" and e["data"]["name"] == "RTC_CHANGE"]
        resumed = [e for e in evs if e["type"] == "qmp.vm.resumed"]
        return (rtc, evs) if len(rtc) >= len(qmp_peer.BAD_TIMESTAMPS) and resumed else None

    t.section("every hostile timestamp gives the bridge's clock, the boundaries are kept")
    for name in VMS:
        rtc, evs = procs.wait_until(lambda: done(name), 30, "all of %s's events" % name,
                                    on_fail=lambda: print(br.tail()))
        finished = time.time()
        t.expect(len(rtc) == len(qmp_peer.BAD_TIMESTAMPS), "%s: one RTC_CHANGE per timestamp" % name,
                 len(rtc))
        for e in rtc:
            label, ts = qmp_peer.BAD_TIMESTAMPS[e["data"]["data"]["offset"] - 1]
            if label in KEPT:
                t.expect(e["time"] == KEPT[label], "%s %-16s kept: %s" % (name, label, e["time"]), e)
            else:
                when = parse_time(e["time"])
                t.expect(started - 5 <= when <= finished + 5,
                         "%s %-16s -> the bridge's clock (%s)" % (name, label, e["time"]), ts)
        for typ in ("qmp.vm.stopped", "qmp.vm.resumed"):
            e = [x for x in evs if x["type"] == typ][-1]
            t.expect(started - 5 <= parse_time(e["time"]) <= finished + 5,
                     "%s %s with a hostile timestamp -> the bridge's clock" % (name, typ), e)

    t.section("logged once per VM")
    for name in VMS:
        lines = br.log_lines("[%s]" % name, "timestamp unusable")
        t.expect(len(lines) == 1, "%s: one 'timestamp unusable' line for %d unusable timestamps"
                 % (name, len(qmp_peer.BAD_TIMESTAMPS) - len(KEPT) + 2), "\n".join(lines))
        t.ok(lines[0].split("] ", 1)[-1] if lines else "")

    t.section("the bridge survived, every envelope is schema-valid")
    t.expect(br.alive(), "bridge still running")
    rc = br.stop()
    t.expect(rc == 0, "SIGTERM: exit 0 (no sanitizer report)", rc)
    envs = list(util.read_jsonl(br.events_path))
    bad, n = schema.invalid_envelopes(envs), len(envs)
    t.expect(not bad, "all %d envelopes valid against schema/v1" % n, "\n".join(bad[:10]))
