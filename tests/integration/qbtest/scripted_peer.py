"""scripted_peer.py - a fake QEMU on a unix socket that plays a fixed script, in a thread.

    peer = ScriptedPeer(sock, [Session(script=[...]), Session(...)]).start()
    ...                                  # start the bridge on sock
    peer.wait_done(timeout)              # every session played and closed
    peer.stop()

Each accepted connection plays the next Session (after the last one the listening
socket is closed and removed, so the bridge finds nobody when it reconnects):

1. greeting, then the connect-time snapshot: qmp_capabilities and every query the
   bridge sends before the session's first step are answered from Session.snapshot
   (default replies for what it does not name), immediately;
2. once ready() is true (the caller's way to say "the bridge has published its
   snapshot", e.g. a qmp.vm.state line in the sink) the steps run in order:
     ("event", bytes)          one QMP event line, sent as is (CRLF appended)
     ("reply", cmd, obj)       waits until the bridge has sent cmd, then answers
                               it with obj ({"return": ..} or {"error": ..}) and
                               the command's id
     ("wait", callable)        waits until callable() is true (answering as usual)
     ("do", callable)          calls callable() once (e.g. publishes a command)
     ("sleep", seconds)
   A command the bridge sends while a ("reply", cmd) step for it is still ahead
   is held until that step; any other command gets its default reply at once;
3. after the last step, ready_to_close() (default: immediately) then the peer
   closes the connection.

The peer records every command it received (Session.received, in order) so a test
can say what the bridge asked. Replies are JSON with Python's default separators,
as QEMU's are not: only the bridge's parsing sees them, never the envelopes.
"""
import json
import os
import select
import socket
import threading
import time

VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ""}

DEFAULTS = {
    "qmp_capabilities": {"return": {}},
    "query-status": {"return": {"status": "running", "singlestep": False, "running": True}},
    "query-block": {"return": []},
    "query-block-jobs": {"return": []},
    "query-jobs": {"return": []},
    "query-colo-status": {"return": {"mode": "none", "last-mode": "none", "reason": "none"}},
    "query-name": {"return": {}},
    "query-uuid": {"return": {"UUID": "00000000-0000-0000-0000-000000000000"}},
    "stop": {"return": {}},
    "cont": {"return": {}},
}


class Session:
    def __init__(self, script=(), snapshot=None, version=None, ready=None, ready_to_close=None):
        self.script = list(script)
        self.snapshot = dict(snapshot or {})
        self.version = version or VERSION
        self.ready = ready or (lambda: True)
        self.ready_to_close = ready_to_close or (lambda: True)
        self.received = []  # every command object, in order


class ScriptError(Exception):
    pass


class ScriptedPeer:
    def __init__(self, path, sessions, step_timeout=15.0):
        self.path = path
        self.sessions = list(sessions)
        self.step_timeout = step_timeout
        self.error = None
        self.done = threading.Event()
        self._stop = False
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(4)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop = True
        self._thread.join(5)
        self._close_server()

    def wait_done(self, timeout):
        if not self.done.wait(timeout):
            raise ScriptError("the scripted peer did not finish within %.0fs" % timeout)
        if self.error:
            raise self.error

    def _close_server(self):
        try:
            self._srv.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _run(self):
        try:
            for s in self.sessions:
                self._srv.settimeout(self.step_timeout)
                conn, _ = self._srv.accept()
                try:
                    _Conn(self, conn, s).play()
                finally:
                    conn.close()
        except Exception as e:  # reported by wait_done
            self.error = e if isinstance(e, ScriptError) else ScriptError(repr(e))
        finally:
            self._close_server()
            self.done.set()


class _Conn:
    def __init__(self, peer, sock, session):
        self.peer = peer
        self.sock = sock
        self.s = session
        self.buf = b""
        self.held = []  # commands waiting for their ("reply", cmd) step

    def send(self, data):
        self.sock.sendall(data + b"\r\n")

    def answer(self, cmd, reply):
        obj = dict(reply)
        if "id" in cmd:
            obj["id"] = cmd["id"]
        self.send(json.dumps(obj).encode())

    def pump(self, timeout, hold_for):
        """Reads what is there (waiting up to timeout) and answers it: snapshot replies,
        defaults, or holds commands named in hold_for. Raises on EOF."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return
        data = self.sock.recv(65536)
        if not data:
            raise ScriptError("the bridge closed the QMP connection in the middle of the script")
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            self.s.received.append(cmd)
            name = cmd.get("execute")
            if name in hold_for:
                self.held.append(cmd)
            elif name in self.s.snapshot:
                self.answer(cmd, self.s.snapshot[name])
            else:
                self.answer(cmd, DEFAULTS.get(name, {"error": {"class": "CommandNotFound",
                                                               "desc": "not scripted"}}))

    def wait(self, pred, what, hold_for=()):
        end = time.monotonic() + self.peer.step_timeout
        while not pred():
            if self.peer._stop:
                raise ScriptError("stopped while waiting for " + what)
            if time.monotonic() > end:
                raise ScriptError("timed out waiting for %s (received %s)"
                                  % (what, [c.get("execute") for c in self.s.received]))
            self.pump(0.02, hold_for)

    def play(self):
        self.send(json.dumps({"QMP": {"version": self.s.version,
                                      "capabilities": ["oob"]}}).encode())
        self.wait(self.s.ready, "the bridge to take its snapshot")
        steps = self.s.script
        for i, step in enumerate(steps):
            ahead = {st[1] for st in steps[i:] if st[0] == "reply"}
            kind = step[0]
            if kind == "event":
                self.send(step[1])
            elif kind == "reply":
                name = step[1]
                self.wait(lambda: any(c.get("execute") == name for c in self.held),
                          "the bridge to send " + name, ahead)
                cmd = next(c for c in self.held if c.get("execute") == name)
                self.held.remove(cmd)
                self.answer(cmd, step[2])
            elif kind == "wait":
                self.wait(step[1], "a scripted condition", ahead)
            elif kind == "do":
                step[1]()
            elif kind == "sleep":
                end = time.monotonic() + step[1]
                self.wait(lambda: time.monotonic() >= end, "a pause", ahead)
            else:
                raise ScriptError("unknown step %r" % (kind,))
        self.wait(self.s.ready_to_close, "the moment to close")
        for cmd in self.held:  # nothing scripted is left for them
            self.answer(cmd, DEFAULTS.get(cmd.get("execute"), {"return": {}}))
