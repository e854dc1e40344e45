#!/usr/bin/python3
"""validate_events.py [FILE...] - check qmp-bridge envelopes (JSON lines) against schema/v1.

Reads the files given, or stdin. Prints "ok: N events valid" and exits 0, or
prints every failure as "<file>:<line>: <message>" and exits 1.
Run with Debian's /usr/bin/python3, which has python3-jsonschema.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qbschema  # noqa: E402


def main(argv):
    total, failures = 0, []
    if len(argv) > 1:
        for path in argv[1:]:
            with open(path, encoding="utf-8") as f:
                ok, bad = qbschema.validate_lines(f, path)
            total += ok
            failures += bad
    else:
        total, failures = qbschema.validate_lines(sys.stdin)
    for failure in failures:
        print(failure)
    if failures:
        return 1
    print("ok: %d events valid" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
