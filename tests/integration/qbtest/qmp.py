"""qmp.py - a small synchronous QMP client for tests that must act on QEMU.

QEMU's -qmp unix server takes one client at a time, so tests talk to their own
second monitor socket and leave the first one to the bridge.
"""
import json
import os
import select
import socket
import time


class QMPError(Exception):
    """A QMP command answered with {"error": ...}."""


class QMP:
    def __init__(self, path, timeout=10.0):
        """Connects to the unix socket at path (retrying until it exists),
        reads the greeting and negotiates capabilities."""
        self.path = path
        self.events = []  # events received and not yet taken, oldest first
        self._buf = b""
        self._next_id = 0
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        self.sock = s
        self.greeting = self._read(timeout)
        # QEMU still starting can send an event (RESUME) before the greeting: keep it
        while "event" in self.greeting and "QMP" not in self.greeting:
            self.events.append(self.greeting)
            self.greeting = self._read(timeout)
        if "QMP" not in self.greeting:
            raise QMPError("no QMP greeting on %s: %r" % (path, self.greeting))
        self.cmd("qmp_capabilities")

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _read(self, timeout):
        """Next message (dict); raises TimeoutError or EOFError."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no QMP message from %s within %.1fs" % (self.path, timeout))
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    raise EOFError("QMP peer %s closed the connection" % self.path)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, timeout=30.0, **args):
        """Runs a command and returns its "return" value; raises QMPError.
        Keyword names use '_' for '-' (on_target_error -> on-target-error)."""
        self._next_id += 1
        cid = "qbtest-%d" % self._next_id
        msg = {"execute": name, "id": cid}
        if args:
            msg["arguments"] = {k.replace("_", "-"): v for k, v in args.items()}
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(max(0.0, deadline - time.monotonic()))
            if "event" in m:
                self.events.append(m)
            elif m.get("id") == cid:
                if "error" in m:
                    raise QMPError("%s: %s" % (name, m["error"].get("desc", m["error"])))
                return m.get("return")

    def cmd_raw(self, name, arguments):
        """Like cmd, with the arguments dict passed through unchanged."""
        return self.cmd(name, **{k.replace("-", "_"): v for k, v in arguments.items()})

    def pump(self, timeout=0.0):
        """Reads whatever events arrive within timeout into self.events."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self._read(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return
            if "event" in m:
                self.events.append(m)

    def wait_event(self, name, timeout=20.0, pred=None):
        """Returns (and removes) the first buffered or incoming event called
        name for which pred(event) holds; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and (pred is None or pred(ev)):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %s event from %s within %.1fs (seen: %s)" % (
                    name, self.path, timeout, [e["event"] for e in self.events]))
            try:
                m = self._read(left)
            except TimeoutError:
                continue
            if "event" in m:
                self.events.append(m)

    def status(self):
        return self.cmd("query-status")

    def io_status(self, device):
        """The io-status of a block device ("ok", "failed", "nospace") or None
        when QEMU does not report one (werror=report)."""
        for b in self.cmd("query-block"):
            if b.get("device") == device:
                return b.get("io-status")
        raise QMPError("no block device %r" % device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(path, timeout=10.0):
    return QMP(path, timeout)


def socket_exists(path):
    return os.path.exists(path)
