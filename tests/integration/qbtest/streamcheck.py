"""streamcheck.py - the one checker of an event stream that promises "nothing lost".

Every fault test feeds it the envelopes a consumer received (Kafka via kcat,
MQTT via a subscriber, or the stdout transport's JSON lines), in the order
received, and asks, per VM (the envelope's subject):
  - sequences contiguous from the first to the last one seen: no gaps;
  - a sequence seen twice only with the identical CloudEvents id (and
    payload): a redelivery, which consumers drop by id;
  - order kept: once duplicates are removed, sequences arrive increasing.
It also counts what it saw, for the closing note (sent / delivered / duplicated).

State copies (id ending ".state", the retained/compacted channel) are not
part of the event stream and are ignored.
"""
import json


class StreamReport:
    def __init__(self):
        self.vms = {}          # vm -> {"first", "last", "unique", "dups"}
        self.problems = []     # human-readable findings, empty when the stream is good
        self.delivered = 0     # envelopes received (duplicates included)
        self.duplicates = 0    # envelopes received more than once

    @property
    def unique(self):
        return sum(v["unique"] for v in self.vms.values())

    def ok(self):
        return not self.problems

    def summary(self):
        return ("%d VMs, %d envelopes received, %d unique, %d duplicates, %d problems"
                % (len(self.vms), self.delivered, self.unique, self.duplicates, len(self.problems)))

    def __str__(self):
        lines = [self.summary()]
        lines += ["  " + p for p in self.problems[:30]]
        if len(self.problems) > 30:
            lines.append("  ... %d more" % (len(self.problems) - 30))
        return "\n".join(lines)


def check(envelopes, expect_first=None, expect_counts=None):
    """envelopes: iterable of dicts (parsed CloudEvents, structured mode), in
    arrival order. expect_first: {vm: first sequence} when the test knows where
    each stream starts (default: whatever arrived first counts as the start,
    but then a loss of the first events cannot be seen, so fault tests pass it).
    expect_counts: {vm: number of unique events} when the test knows the total.
    Returns a StreamReport."""
    rep = StreamReport()
    seen = {}   # vm -> {seq: (id, payload)}
    high = {}   # vm -> highest first-time sequence so far
    for env in envelopes:
        if isinstance(env, (bytes, str)):
            env = json.loads(env)
        cid = env.get("id", "")
        if cid.endswith(".state"):
            continue
        vm = env.get("subject")
        seq = env.get("sequence")
        if vm is None or seq is None:
            rep.problems.append("envelope without subject/sequence: %r" % (env,))
            continue
        seq = int(seq)
        rep.delivered += 1
        payload = json.dumps(env, sort_keys=True)
        byseq = seen.setdefault(vm, {})
        if seq in byseq:
            rep.duplicates += 1
            first_id, first_payload = byseq[seq]
            if first_id != cid:
                rep.problems.append("%s: sequence %d delivered with two ids: %s and %s"
                                    % (vm, seq, first_id, cid))
            elif first_payload != payload:
                rep.problems.append("%s: sequence %d (%s) delivered twice with different content"
                                    % (vm, seq, cid))
            continue
        byseq[seq] = (cid, payload)
        if vm in high and seq < high[vm]:
            rep.problems.append("%s: sequence %d arrived after %d (order broken)" % (vm, seq, high[vm]))
        high[vm] = max(high.get(vm, seq), seq)
    for vm, byseq in sorted(seen.items()):
        first = min(byseq)
        if expect_first and vm in expect_first:
            if first > expect_first[vm]:
                rep.problems.append("%s: stream starts at %d, expected %d (%d lost at the start)"
                                    % (vm, first, expect_first[vm], first - expect_first[vm]))
            first = min(first, expect_first[vm])
        last = max(byseq)
        missing = [s for s in range(first, last + 1) if s not in byseq]
        if missing:
            rep.problems.append("%s: %d sequences missing between %d and %d: %s"
                                % (vm, len(missing), first, last, _ranges(missing)))
        rep.vms[vm] = {"first": first, "last": last, "unique": len(byseq),
                       "dups": 0}
    for vm, n in (expect_counts or {}).items():
        got = rep.vms.get(vm, {}).get("unique", 0)
        if got < n:
            rep.problems.append("%s: %d unique events, expected at least %d" % (vm, got, n))
    for vm in (expect_first or {}):
        if vm not in seen:
            rep.problems.append("%s: no events at all" % vm)
    return rep


def _ranges(nums):
    out = []
    start = prev = None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append("%d..%d" % (start, prev) if start != prev else str(start))
            start = prev = n
    if start is not None:
        out.append("%d..%d" % (start, prev) if start != prev else str(start))
    return ", ".join(out[:10]) + (" ..." if len(out) > 10 else "")
