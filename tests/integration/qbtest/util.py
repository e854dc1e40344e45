"""util.py - free ports, per-test temporary directories, log tails, paths."""
import atexit
import os
import shutil
import socket
import tempfile

from . import procs

SOURCE_DIR = os.environ.get("QB_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", ".."))

# QB_VALGRIND=1 runs the bridge under valgrind's memcheck (see bridge.py).
VALGRIND = os.environ.get("QB_VALGRIND", "") not in ("", "0")


def _timeout_scale():
    # How much slower the bridge is than in a plain build: under valgrind it runs
    # 10-30x slower, but most waits are for a single event, so 4 is the default there.
    v = os.environ.get("QB_TIMEOUT_SCALE")
    if v:
        return max(1.0, float(v))
    return 4.0 if VALGRIND else 1.0


# One factor for every wait on the bridge: procs.wait_until (and so every
# wait_log / wait_for / wait_count built on it) and Bridge.stop multiply by it.
TIMEOUT_SCALE = _timeout_scale()


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tmpdir(prefix="qbtest-"):
    """A fresh directory under /tmp (short: unix socket paths must fit in 108
    bytes), removed at exit unless QB_KEEP_TMP is set."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    if not os.environ.get("QB_KEEP_TMP"):
        # atexit runs newest first, so stop the children before removing
        # the files they hold.
        atexit.register(_remove, d)
    return d


def _remove(d):
    procs.cleanup_all()
    shutil.rmtree(d, True)


def tail(path, lines=40):
    """The last lines of a text file, or a note that it is missing."""
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace").splitlines()
    except OSError as e:
        return "<%s: %s>" % (path, e)
    return "\n".join(data[-lines:])


def read_jsonl(path):
    """The JSON objects of a JSON-lines file another process may be writing right now:
    only complete lines count (a last line without its newline is still being written).
    A missing file reads as empty."""
    import json
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    lines.pop()  # "" after a final newline, or the partial line being written
    return [json.loads(l) for l in lines if l.strip()]
