"""bridge.py - the qmp-bridge under test: config file, process, log.

QB_BIN names the binary (ctest sets it); default <repo>/build/qmp-bridge.
stderr (the log) goes to <workdir>/bridge.log so tests can assert on lines.
"""
import os

from . import procs
from . import util


def binary():
    return os.environ.get("QB_BIN") or os.path.join(util.SOURCE_DIR, "build", "qmp-bridge")


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

    def start(self):
        exe = binary()
        if not os.access(exe, os.X_OK):
            raise RuntimeError("qmp-bridge binary %s is missing (set QB_BIN)" % exe)
        with open(self.log, "a") as f:
            f.write("### qbtest: %s -c %s\n" % (exe, self.conf))
        self.proc = procs.spawn([exe, "-c", self.conf], "qmp-bridge",
                                stdout=os.path.join(self.workdir, "bridge.stdout"), stderr=self.log)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        rc = procs.stop(self.proc, timeout=timeout)
        self.proc = None
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
