"""sim.py - tests/tools/qmp_sim (N simulated QEMU 7.2 monitors in one process) from a test.

    sim = QmpSim(workdir, 50, rate=20, events=4, mix="io_error,resume", trace=True).start()
    bridge = Bridge(workdir, sim.socket_paths())
    ...
    sim.drop_all()            # SIGUSR1: every session closed at once, sockets keep listening
    st = sim.stats()          # SIGHUP, then the fresh stats JSON (a dict)
    sim.trace()               # {vm name: [event dicts as sent]} (only with trace=True)
    sim.stop()                # SIGTERM; the final stats stay readable through stats()

The binary is <QB_BUILD_DIR>/tests/qmp_sim (ctest sets QB_BUILD_DIR), else next to QB_BIN,
else <repo>/build/tests/qmp_sim. Its stderr goes to <workdir>/qmp_sim.log.
"""
import json
import os
import signal
import time

from . import procs
from . import util


def binary():
    build = os.environ.get("QB_BUILD_DIR")
    if not build and os.environ.get("QB_BIN"):
        build = os.path.dirname(os.environ["QB_BIN"])
    if not build:
        build = os.path.join(util.SOURCE_DIR, "build")
    return os.path.join(build, "tests", "qmp_sim")


class QmpSim:
    def __init__(self, workdir, vms, prefix="vm-", rate=None, flat_out=False, events=None,
                 mix=None, fault=None, fault_every=None, stall_ms=None, slow_ms=None,
                 tcp_port_base=None, trace=False, log_level="info", sock_dir=None, extra=()):
        """vms: how many VMs. sock_dir: where the sockets go (default <workdir>/sim, a
        directory of its own so it can serve as the bridge's discovery directory).
        The other keywords are qmp_sim's options (see its --help)."""
        self.workdir = workdir
        self.vms = int(vms)
        self.prefix = prefix
        self.dir = sock_dir or os.path.join(workdir, "sim")
        os.makedirs(self.dir, exist_ok=True)
        self.stats_path = os.path.join(workdir, "qmp_sim.stats.json")
        self.ready_path = os.path.join(workdir, "qmp_sim.ready")
        self.trace_path = os.path.join(workdir, "qmp_sim.trace") if trace else None
        self.log = os.path.join(workdir, "qmp_sim.log")
        self.tcp_port_base = tcp_port_base
        self.proc = None
        argv = [binary(), "--dir", self.dir, "--vms", self.vms, "--prefix", prefix,
                "--stats", self.stats_path, "--ready-file", self.ready_path,
                "--log-level", log_level]
        for opt, val in (("--rate", rate), ("--events", events), ("--mix", mix),
                         ("--fault", fault), ("--fault-every", fault_every),
                         ("--stall-ms", stall_ms), ("--slow-ms", slow_ms),
                         ("--tcp-port-base", tcp_port_base), ("--trace", self.trace_path)):
            if val is not None:
                argv += [opt, val]
        if flat_out:
            argv.append("--flat-out")
        self.argv = [str(a) for a in argv] + [str(a) for a in extra]

    def start(self, timeout=60.0):
        """Starts qmp_sim and waits until every socket listens (its ready file)."""
        exe = self.argv[0]
        if not os.access(exe, os.X_OK):
            raise RuntimeError("qmp_sim binary %s is missing (build the tests, set QB_BUILD_DIR)"
                               % exe)
        for p in (self.ready_path, self.stats_path):
            if os.path.exists(p):
                os.unlink(p)
        with open(self.log, "a") as f:
            f.write("### qbtest: %s\n" % " ".join(self.argv))
        self.proc = procs.spawn(self.argv, "qmp_sim", stderr=self.log)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("qmp_sim exited with %s:\n%s"
                                   % (self.proc.returncode, util.tail(self.log)))
            return os.path.exists(self.ready_path)
        procs.wait_until(ready, timeout, "qmp_sim ready file")
        return self

    def names(self):
        return ["%s%04d" % (self.prefix, i + 1) for i in range(self.vms)]

    def socket_paths(self):
        """[(vm name, unix socket path)], the shape bridge.Bridge takes."""
        return [(n, os.path.join(self.dir, n + ".qmp")) for n in self.names()]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _read_stats(self):
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def stats(self, timeout=10.0):
        """The stats as a dict. While running: asks for a fresh write (SIGHUP) and waits for
        its generation to go up. After stop(): the file written at exit."""
        if not self.alive():
            return self._read_stats()
        old = self._read_stats()
        gen = old["generation"] if old else 0
        os.kill(self.proc.pid, signal.SIGHUP)

        def fresh():
            st = self._read_stats()
            return st if st and st["generation"] > gen else None
        return procs.wait_until(fresh, timeout, "a fresh qmp_sim stats file")

    def drop_all(self):
        """SIGUSR1: closes every session at once; sockets keep listening."""
        os.kill(self.proc.pid, signal.SIGUSR1)

    def toggle_stall(self):
        """SIGUSR2: stops (or resumes) all reading, writing and accepting."""
        os.kill(self.proc.pid, signal.SIGUSR2)

    def trace(self):
        """{vm name: [event dict, ...]} in send order, from the --trace file (complete lines)."""
        out = {}
        if not self.trace_path or not os.path.exists(self.trace_path):
            return out
        with open(self.trace_path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        lines.pop()  # "" or the line still being written
        for line in lines:
            name, _, ev = line.decode().partition(" ")
            out.setdefault(name, []).append(json.loads(ev))
        return out

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit status (0 when it shut down cleanly)."""
        if self.proc is None:
            return None
        rc = procs.stop(self.proc, timeout=timeout)
        self.proc = None
        return rc
