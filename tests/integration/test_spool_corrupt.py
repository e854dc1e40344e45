#!/usr/bin/python3
"""Fault 5: a corrupt spool (torn tail, flipped bytes in a middle record): start-up logs
each bad record with its file and offset, skips it, keeps the rest, and carries on.

Run 1 spools the events of two scripted QMP peers while its only transport (MQTT) has no
broker, and stops: everything stays in the spool. The test then damages the spool as a
crash or a bad disk would: the last record of the newest segment loses its end (a torn
write) and one record in the middle of a segment gets flipped bytes. Run 2 starts on that
spool with a stdout transport (a new consumer, so it replays the whole spool): its log names
both damaged records, and the stream it writes has every event of run 1 except exactly the
damaged event records (a damaged state copy leaves no gap: its event, with the same sequence,
is intact, and stdout prints no state copies), followed by
run 2's own events numbered after the highest sequence run 1 ever assigned."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, peers, procs, streamcheck, util  # noqa: E402

PER_VM = 300
BRIDGE_ID = "spool-c"


KIND_EVENT = 0  # enum qb_msg_kind; state copies (1) share their event's sequence


def records(path, live=False, kinds=False):
    """Parses a segment file (format in bridge/spool.h): [(offset, length, vm, seq)], with
    the record kind appended when kinds is true.
    live: the bridge may be writing it right now (a segment just created may not have its
    header yet)."""
    with open(path, "rb") as f:
        data = f.read()
    if live and len(data) < 8:
        return []
    assert data[:8] == b"QBSPOOL1", "segment header of %s: %r" % (path, data[:8])
    out, off = [], 8
    while off + 12 <= len(data):
        magic, blen, _crc = data[off:off + 4], *struct.unpack_from("<II", data, off + 4)
        assert magic == b"QBR1", "no record magic at %d in %s" % (off, path)
        if off + 12 + blen > len(data):
            break  # being written right now
        body = data[off + 12:off + 12 + blen]
        p = 8 + 8 + 1 + 8
        seq = struct.unpack_from("<Q", body, p)[0]
        vlen = struct.unpack_from("<H", body, p + 8)[0]
        vm = body[p + 10:p + 10 + vlen].decode()
        out.append((off, 12 + blen, vm, seq) + ((body[16],) if kinds else ()))
        off += 12 + blen
    return out


with check.Test("spool_corrupt") as t:
    d = t.workdir
    spool = os.path.join(d, "spool")
    vms = peers.start_event_peers(d, ["vm0", "vm1"], PER_VM, interval=0.002)
    dead = util.free_port()
    run1 = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                         extra_yaml="  - { type: mqtt, host: 127.0.0.1, port: %d, "
                                    "shutdown_timeout: 500ms }\n"
                                    "spool: { directory: \"%s\", segment_size: 64KiB }\n"
                                    % (dead, spool))
    run1.log = os.path.join(d, "bridge1.log")
    t.add_log("bridge run 1", run1.log)
    run1.start()

    t.section("run 1 spools everything (no broker)")

    def spooled():
        # every VM's whole script: connected (1), snapshot (2), then PER_VM events. Counting
        # records is not enough: state copies are records too, and a slow run (valgrind)
        # stopped with vm0 short of its last events, so run 2 never got past PER_VM + 2.
        if not os.path.isdir(spool):
            return None
        last = {}
        for seg in sorted(f for f in os.listdir(spool) if f.endswith(".seg")):
            for _, _, vm, seq in records(os.path.join(spool, seg), live=True):
                last[vm] = max(last.get(vm, 0), seq)
        return last if all(last.get(n, 0) >= PER_VM + 2 for n, _ in vms) else None
    procs.wait_until(spooled, 60, "every VM's %d events in the spool" % PER_VM)
    rc = run1.stop()
    t.expect(rc == 0, "run 1 exits 0 with its records kept", run1.log_lines("spool keeps"))
    segs = sorted(f for f in os.listdir(spool) if f.endswith(".seg"))
    t.expect(len(segs) >= 3, "several segments", segs)

    t.section("damage: torn tail and flipped bytes")
    newest = os.path.join(spool, segs[-1])
    recs = records(newest, kinds=True)
    off, length, torn_vm, torn_seq, torn_kind = recs[-1]
    with open(newest, "r+b") as f:
        f.truncate(off + length - 7)
    middle_seg = os.path.join(spool, segs[len(segs) // 2])
    # an event record: a damaged state copy leaves no gap (stdout prints no state copies, and
    # its event, with the same sequence, is intact)
    mrecs = [r for r in records(middle_seg, kinds=True) if r[4] == KIND_EVENT]
    moff, mlen, flip_vm, flip_seq, _ = mrecs[len(mrecs) // 2]
    with open(middle_seg, "r+b") as f:
        f.seek(moff + mlen - 20)
        b = f.read(4)
        f.seek(moff + mlen - 20)
        f.write(bytes(x ^ 0x5A for x in b))
    t.ok("torn: %s seq %d (%s) in %s; flipped: %s seq %d (event) in %s"
         % (torn_vm, torn_seq, "event" if torn_kind == KIND_EVENT else "state copy", segs[-1],
            flip_vm, flip_seq, os.path.basename(middle_seg)))

    t.section("run 2 recovers and replays the rest")
    run2 = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=True,
                         extra_yaml="spool: { directory: \"%s\", segment_size: 64KiB }\n" % spool)
    run2.log = os.path.join(d, "bridge2.log")
    t.add_log("bridge run 2", run2.log)
    run2.start()
    run2.wait_log("from earlier runs", timeout=20)
    t.expect(run2.log_lines("corrupt record", os.path.basename(middle_seg)),
             "the flipped record is logged with its file and offset",
             run2.log_lines("corrupt")[:3])
    t.expect(run2.log_lines("torn tail", segs[-1]) or run2.log_lines("corrupt record", segs[-1]),
             "the torn tail is logged", run2.log_lines("spool")[:6])

    def replayed():
        envs = util.read_jsonl(run2.events_path)
        last = {}
        for e in envs:
            last[e["subject"]] = max(last.get(e["subject"], 0), int(e["sequence"]))
        return envs if all(last.get(n, 0) > PER_VM + 2 for n, _ in vms) else None
    envs = procs.wait_until(replayed, 30, "run 2 to replay the spool and publish its own events")
    rep = streamcheck.check(envs, expect_first={"vm0": 1, "vm1": 1})
    lost = {(flip_vm, flip_seq)} | ({(torn_vm, torn_seq)} if torn_kind == KIND_EVENT else set())
    got = {(e["subject"], int(e["sequence"])) for e in envs}
    missing = set()
    for vm, info in rep.vms.items():
        missing |= {(vm, s) for s in range(1, info["last"] + 1) if (vm, s) not in got}
    t.expect(missing == lost, "exactly the damaged event records are missing",
             "missing %s, damaged %s" % (sorted(missing), sorted(lost)))
    t.expect(run2.alive(), "run 2 keeps running")
    rc = run2.stop()
    t.expect(rc == 0, "run 2 exits 0", rc)
    print("FIGURES spool_corrupt: records_replayed=%d corrupt_logged=%d"
          % (len(envs), len(run2.log_lines("corrupt record")) + len(run2.log_lines("torn tail"))))
