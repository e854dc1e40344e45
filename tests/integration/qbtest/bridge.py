"""bridge.py - the qmp-bridge under test: config file, process, log.

QB_BIN names the binary (ctest sets it); default <repo>/build/qmp-bridge.
stderr (the log) goes to <workdir>/bridge.log so tests can assert on lines.

QB_VALGRIND=1 runs the bridge under valgrind's memcheck (log <workdir>/valgrind.<pid>.log,
suppressions tests/valgrind.supp). Every run that ends with a summary is checked when the
bridge stops (Bridge.stop, or check.Test's teardown through finish_all): an error or a
definite/indirect leak fails the test and prints the log. A run killed with SIGKILL
(the test's own "crash") leaves no summary and is not checked.
"""
import os
import re

from . import procs
from . import util


def binary():
    return os.environ.get("QB_BIN") or os.path.join(util.SOURCE_DIR, "build", "qmp-bridge")


def instrumented():
    """True when the bridge runs under valgrind or is an ASan build: its memory use is then
    no measure of the real one (a bound on resident memory is reported, not asserted)."""
    exe = binary()
    with open(exe, "rb") as f:
        return util.VALGRIND or "asan" in exe or b"__asan_init" in f.read()


def valgrind_argv(workdir):
    """The memcheck prefix for a bridge command line (QB_VALGRIND=1), else []."""
    if not util.VALGRIND:
        return []
    return ["valgrind", "--tool=memcheck", "--error-exitcode=97", "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect", "--show-leak-kinds=definite,indirect",
            "--track-origins=no", "--num-callers=30",
            # the daemon links jemalloc (QB_ALLOCATOR): memcheck must replace its malloc too
            "--soname-synonyms=somalloc=*jemalloc*",
            "--suppressions=" + os.path.join(util.SOURCE_DIR, "tests", "valgrind.supp"),
            "--log-file=" + os.path.join(workdir, "valgrind.%p.log")]


class ValgrindError(AssertionError):
    pass


_valgrind_runs = []  # [(Bridge, Popen)] started under valgrind, not yet checked


def _valgrind_log(workdir, pid):
    return os.path.join(workdir, "valgrind.%d.log" % pid)


def check_valgrind_log(path):
    """None if the memcheck log at path is clean or has no summary (the run was
    killed with SIGKILL), else a one-line reason."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    m = re.search(r"ERROR SUMMARY: ([\d,]+) errors", text)
    if not m:
        return None
    bad = []
    if int(m.group(1).replace(",", "")) > 0:
        bad.append("ERROR SUMMARY: %s errors" % m.group(1))
    for kind in ("definitely", "indirectly"):
        k = re.search(r"%s lost: ([\d,]+) bytes" % kind, text)
        if k and int(k.group(1).replace(",", "")) > 0:
            bad.append("%s lost: %s bytes" % (kind, k.group(1)))
    return "; ".join(bad) or None


def _check_run(br, proc):
    """Raises ValgrindError, with the whole log, if proc's memcheck run found anything."""
    path = _valgrind_log(br.workdir, proc.pid)
    why = check_valgrind_log(path)
    if why is None:
        return
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    raise ValgrindError("valgrind memcheck on the bridge (pid %d): %s\n----- %s -----\n%s"
                        % (proc.pid, why, path, text))


def finish_all():
    """Test teardown: stops every bridge still running and checks every memcheck
    log not checked yet. Raises ValgrindError naming the first bad run (after
    stopping all). No-op without QB_VALGRIND."""
    first = None
    while _valgrind_runs:
        br, proc = _valgrind_runs[-1]
        try:
            if br.proc is proc:
                br.stop()  # checks and forgets the run
            else:
                _valgrind_runs.pop()
                if proc.poll() is None:
                    procs.stop(proc, timeout=10.0 * util.TIMEOUT_SCALE)
                _check_run(br, proc)
        except ValgrindError as e:
            first = first or e
    if first is not None:
        raise first


def _yaml_str(s):
    # JSON strings are valid YAML double-quoted scalars.
    import json
    return json.dumps(str(s))


class Bridge:
    def __init__(self, workdir, vms, broker=None, bridge_id="test-host", log_level="debug",
                 stdout_path=True, qmp_extra=None, extra_yaml=""):
        """vms: [(name, qmp_socket_path)]. broker: a qbtest.mqtt.Broker or None.
        qmp_extra: more keys for the qmp: section, e.g. {"max_line_bytes": 4096}."""
        self.workdir = workdir
        self.id = bridge_id
        self.conf = os.path.join(workdir, "bridge.yaml")
        self.log = os.path.join(workdir, "bridge.log")
        self.events_path = os.path.join(workdir, "events.jsonl") if stdout_path else None
        self.proc = None
        qmp = {"reconnect_initial": "100ms", "reconnect_max": "1s"}
        qmp.update(qmp_extra or {})
        lines = ["bridge: { id: %s, log_level: %s }" % (bridge_id, log_level),
                 "qmp: { %s }" % ", ".join("%s: %s" % kv for kv in qmp.items()),
                 "vms:"]
        for name, path in vms:
            lines.append("  - { name: %s, qmp: %s }" % (name, _yaml_str("unix:" + path)))
        lines.append("transports:")
        if broker is not None:
            lines.append("  - { type: mqtt, host: 127.0.0.1, port: %d, topic_prefix: qmp, qos: 1 }"
                         % broker.port)
        if self.events_path:
            lines.append("  - { type: stdout, path: %s }" % _yaml_str(self.events_path))
        self.yaml = "\n".join(lines) + "\n" + extra_yaml
        with open(self.conf, "w") as f:
            f.write(self.yaml)

    def start(self, prefix=()):
        """prefix: argv put before the bridge's own (e.g. a namespace wrapper)."""
        exe = binary()
        if not os.access(exe, os.X_OK):
            raise RuntimeError("qmp-bridge binary %s is missing (set QB_BIN)" % exe)
        with open(self.log, "a") as f:
            f.write("### qbtest: %s -c %s\n" % (exe, self.conf))
        self.proc = procs.spawn(list(prefix) + valgrind_argv(self.workdir) + [exe, "-c", self.conf],
                                "qmp-bridge",
                                stdout=os.path.join(self.workdir, "bridge.stdout"), stderr=self.log)
        if util.VALGRIND:
            _valgrind_runs.append((self, self.proc))
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM and wait (timeout times util.TIMEOUT_SCALE); returns the exit status.
        Under valgrind raises ValgrindError if memcheck found errors or leaks, or if
        the bridge had to be killed because it did not exit in time."""
        if self.proc is None:
            return None
        proc = self.proc
        dead_before = proc.poll() is not None  # e.g. the test's own kill -9
        rc = procs.stop(proc, timeout=timeout * util.TIMEOUT_SCALE)
        self.proc = None
        for i, (_br, p) in enumerate(_valgrind_runs):
            if p is proc:
                del _valgrind_runs[i]
                if rc == -9 and not dead_before:
                    raise ValgrindError("the bridge (pid %d) under valgrind did not exit within "
                                        "%.0fs of SIGTERM and was killed"
                                        % (proc.pid, timeout * util.TIMEOUT_SCALE))
                _check_run(self, proc)
                break
        return rc

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, *needles):
        """Log lines that contain every one of needles."""
        return [l for l in self.log_text().splitlines() if all(n in l for n in needles)]

    def wait_log(self, *needles, timeout=20.0):
        return procs.wait_until(lambda: self.log_lines(*needles), timeout,
                                "a bridge log line with %r" % (needles,))

    def tail(self, n=60):
        return util.tail(self.log, n)
