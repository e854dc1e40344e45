#!/usr/bin/python3
"""The fault tests' stream checker must itself catch every kind of loss it claims to:
a gap, a lost start, a duplicate with another id, a duplicate with other content, an
order break; and it must accept redeliveries with identical ids."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import streamcheck  # noqa: E402


def env(vm, seq, cid=None, data=None):
    return {"subject": vm, "sequence": seq, "id": cid or "e-%s-%d" % (vm, seq),
            "data": data if data is not None else {"n": seq}}


def main():
    good = [env("a", s) for s in range(1, 11)] + [env("b", s) for s in range(5, 9)]
    # a replay after a restart: 6..10 again, same ids and content, then new ones
    good += [env("a", s) for s in range(6, 11)] + [env("a", 11)]
    good += [{"subject": "a", "sequence": 3, "id": "e-a-3.state", "data": {}}]  # state copy: ignored
    rep = streamcheck.check(good, expect_first={"a": 1, "b": 5}, expect_counts={"a": 11})
    assert rep.ok(), str(rep)
    assert rep.duplicates == 5 and rep.unique == 15 and rep.delivered == 20, rep.summary()

    cases = {
        "gap": ([env("a", 1), env("a", 2), env("a", 4)], "missing"),
        "lost start": ([env("a", 3), env("a", 4)], "starts at 3"),
        "other id": ([env("a", 1), env("a", 2), env("a", 2, cid="x")], "two ids"),
        "other content": ([env("a", 1), env("a", 1, data={"n": 9})], "different content"),
        "order": ([env("a", 1), env("a", 3), env("a", 2)], "order broken"),
        "short": ([env("a", 1)], "expected at least 2"),
        "silent vm": ([env("a", 1)], "no events"),
    }
    for name, (stream, needle) in cases.items():
        rep = streamcheck.check(stream, expect_first={"a": 1, **({"z": 1} if name == "silent vm" else {})},
                                expect_counts={"a": 2} if name == "short" else None)
        assert not rep.ok(), "%s: not detected" % name
        assert any(needle in p for p in rep.problems), "%s: %s" % (name, rep.problems)
        print("ok: %s detected: %s" % (name, rep.problems[0]))
    print("PASS: stream checker")


if __name__ == "__main__":
    main()
