#!/usr/bin/python3
"""Misbehaving QMP peers must cost only their own session. One bridge, four
VMs, all served by tests/tools/qmp_peer.py:
  bad-garbage    sends a non-JSON line after the handshake
  bad-half       sends half a line, is silent for 1s, then closes
  bad-oversized  sends a 64 KiB line; the bridge has qmp.max_line_bytes 4096
  good           streams RTC_CHANGE events (plus STOP/RESUME pairs)
Checked: every bad VM gets a log line naming it and saying why, a
bridge.vm.disconnected envelope with a reason, and a reconnect (peer accepted
a second connection and a second bridge.vm.connected was published); the good
VM stays connected the whole time and its envelopes arrive with no gap in the
sequence (and none of its RTC_CHANGE offsets missing)."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, procs, util  # noqa: E402

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")
# What a log line about the failure may say, per mode (case-insensitive).
REASONS = {
    "garbage": r"json|pars|invalid|malformed|syntax",
    "half": r"eof|closed|hang ?up|reset|disconnect|partial|truncat",
    "oversized": r"max_line_bytes|too long|too large|oversize|exceed|limit",
}

with check.Test("bad_peer") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    vms, peer_logs = [], {}
    for mode in ("garbage", "half", "oversized", "events"):
        name = "good" if mode == "events" else "bad-" + mode
        sock = os.path.join(d, name + ".qmp")
        peer_logs[name] = os.path.join(d, name + ".peer.log")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", mode, "--oversize", "65536"],
                    "qmp_peer-" + name, stderr=peer_logs[name])
        procs.wait_until(lambda: os.path.exists(sock), 10, "qmp_peer socket " + sock)
        vms.append((name, sock))
        t.add_log("qmp_peer " + name, peer_logs[name])
    br = bridge.Bridge(d, vms, broker=broker, qmp_extra={"max_line_bytes": 4096}).start()
    t.add_log("bridge", br.log)

    def peer_connections(name):
        with open(peer_logs[name]) as f:
            return f.read().count("client connected")

    t.section("bad peers are dropped and retried")
    for mode in ("garbage", "half", "oversized"):
        name = "bad-" + mode
        procs.wait_until(lambda: peer_connections(name) >= 3, 30, "three connections to " + name)
        t.ok("%s: bridge reconnected (peer saw %d connections)" % (name, peer_connections(name)))
        env = check.vm_envelopes(sub, "test-host", name)
        disc = [m for m in env if m.type == "bridge.vm.disconnected"]
        conn = [m for m in env if m.type == "bridge.vm.connected"]
        t.expect(disc and all(m.data.get("reason") for m in disc),
                 "%s: bridge.vm.disconnected published with a reason" % name,
                 [m.data for m in disc[:2]] or check.summarize(env))
        print("      reason: %s" % disc[0].data["reason"])
        t.expect(len(conn) >= 2, "%s: bridge.vm.connected published again after the drop" % name, len(conn))
        # A line an operator sees at the default level (not debug); the VM name
        # itself ("bad-oversized") must not count as the reason.
        lines = [l for l in br.log_lines("[%s]" % name)
                 if not re.search(r"\bdebug\b", l) and re.search(REASONS[mode], l.replace(name, ""), re.I)]
        t.expect(lines, "%s: a non-debug log line names the VM and the reason (/%s/)" % (name, REASONS[mode]),
                 "\n".join(br.log_lines(name)[-10:]))
        print("      log: %s" % lines[0].strip()[:200])
        check.assert_increasing(env, name + " sequence")

    t.section("the good VM kept flowing")
    n0 = len([m for m in check.vm_envelopes(sub, "test-host", "good") if m.type == "qmp.event"])
    sub.wait_count(lambda m: m.type == "qmp.event" and m.json["subject"] == "good", n0 + 100, 30,
                   "more qmp.event envelopes of good")
    env = check.vm_envelopes(sub, "test-host", "good")
    t.expect(peer_connections("good") == 1, "good: one connection only", peer_connections("good"))
    t.expect([m.type for m in env if m.type.startswith("bridge.")] == ["bridge.vm.connected"],
             "good: never disconnected", check.summarize(env))
    check.assert_increasing(env, "good sequence", consecutive=True)
    t.ok("good: %d envelopes, sequence without gaps (%s..%s)" % (
        len(env), env[0].json["sequence"], env[-1].json["sequence"]))
    rtc = [m.data["data"]["offset"] for m in env if m.type == "qmp.event" and m.data["name"] == "RTC_CHANGE"]
    t.expect(rtc == list(range(rtc[0], rtc[0] + len(rtc))), "good: RTC_CHANGE offsets without gaps",
             rtc[:5] + ["..."] + rtc[-5:])
    t.expect(br.alive(), "bridge still running")

    t.section("stdout transport agrees")
    good = [e for e in util.read_jsonl(br.events_path) if e["subject"] == "good"]
    # A state re-publish shares the sequence of the event that caused it: look
    # at the distinct sequences, in order of first appearance.
    seqs = list(dict.fromkeys(int(e["sequence"]) for e in good))
    t.expect(seqs == list(range(seqs[0], seqs[0] + len(seqs))), "events.jsonl: good sequence without gaps",
             len(seqs))
