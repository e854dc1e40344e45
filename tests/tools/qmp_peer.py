#!/usr/bin/python3
"""qmp_peer.py - a scripted fake QMP peer on a unix socket, for tests of how
the bridge survives a QEMU that misbehaves.

It accepts one client at a time, forever (so reconnects land here again):
sends a real-looking greeting, answers qmp_capabilities and the query-*
commands the bridge uses with canned replies, unknown commands with
CommandNotFound, and then, once capabilities are negotiated and the client has
had a moment to take its snapshot, acts out the mode:

  garbage    one non-JSON line, then keeps answering (the bridge must drop it)
  half       half a JSON line, silence for 1s, then close
  oversized  one event line of --oversize bytes (default 64 KiB)
  events     a steady stream of RTC_CHANGE events, offset counting up, plus
             one STOP/RESUME pair every 50 events; never misbehaves
  idle       never sends an event; only answers (for command tests)
  hostile    one hostile line per connection, in this order: a line of
             --oversize bytes, --nest-depth '[' then as many ']' (well
             under --oversize), an event whose string holds non-UTF-8
             bytes, raw non-UTF-8 garbage, truncated JSON then a newline,
             then four events whose fields have the wrong types (event
             name, timestamp, data, the fields of data); the last
             connection stays open and turns into "events" mode (with
             --count/--name as usual), so the session can show it recovered.
             If the bridge keeps a connection open 3s after a hostile line,
             the peer closes it itself (logged) and goes on with the next.
  stop-query a STOP with no BLOCK_IO_ERROR before it (as when QEMU rate-limits
             the error), immediately followed by RESUME and one RTC_CHANGE;
             from then on query-status answers io-error only after
             --reply-delay seconds and query-block reports io-status nospace,
             so the bridge must hold RESUME back until the STOP is complete

  burst      --count events in cycles of BLOCK_IO_ERROR (virtio0, nospace,
             action stop), STOP, RESUME, RTC_CHANGE, all in one write; then
             silent. The first three change the VM's state (query-block shows
             virtio0), RTC_CHANGE does not.
  trickle    the same events, one per --interval; then silent
  bad-timestamps  once per connection, one RTC_CHANGE per entry of BAD_TIMESTAMPS
             (offset = its index + 1; hostile, absent and boundary timestamps),
             then STOP and RESUME with hostile timestamps; then silent

  withhold-flood
             never answers --withhold (default query-status, the snapshot's
             first query; query-name for a listen-mode newcomer) nor anything
             after it; once it has arrived, waits --flood-after seconds and
             sends --flood-bytes of RTC_CHANGE lines (each padded to
             --flood-line-bytes) as fast as the socket takes them, then stays
             silent until the bridge closes
  stop-flood answers the snapshot, then sends a STOP with no error event before
             it and never answers query-status again; floods like
             withhold-flood once the query-status is there
  name-churn (with --connect only) --count connections one after another, the
             i-th answering query-name with --name-prefix<i>; each ends when the
             bridge closes it or has asked query-uuid (the snapshot's last query)

Each connection is logged on stderr with its number; --once makes it act out
the mode only on the first connection and behave like "events" afterwards.

--connect PATH plays QEMU's `-chardev socket,path=PATH,reconnect=N` instead of
a server: it connects to the bridge's qmp.listen socket, and again --reconnect
seconds after each connection ends (every mode but name-churn).

For load tests, events mode takes two more options: --count N sends N QMP
events in all (STOP and RESUME included) and then falls silent but keeps
answering, so a test knows exactly what the bridge was given; across
reconnects the count carries on where it stopped, so a reconnect never sends
an event twice. --name NAME puts NAME into every RTC_CHANGE's qom-path, so a
consumer can tell which peer an event came from by its payload. Every
RTC_CHANGE offset is the peer's running count of RTC_CHANGE events (1, 2, ...).

Usage: qmp_peer.py (--socket PATH | --connect PATH) --mode MODE [--interval 0.02] [--oversize N]
                   [--count N] [--name NAME] [--nest-depth N]
"""
import argparse
import json
import os
import select
import socket
import sys
import time

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22},
                                "package": "Debian 1:7.2+dfsg-7+deb12u18 (qmp_peer)"},
                    "capabilities": ["oob"]}}

REPLIES = {
    "qmp_capabilities": {},
    "query-status": {"status": "running", "singlestep": False, "running": True},
    "query-block": [],
    "query-block-jobs": [],
    "query-jobs": [],
    "query-colo-status": {"mode": "none", "last-mode": "none", "reason": "none"},
    "query-version": GREETING["QMP"]["version"],
    "query-name": {},
    "query-migrate": {},
    "stop": {},
    "cont": {},
}

CYCLE_MODES = ("burst", "trickle")
# burst / trickle: what QEMU sends when a write hits ENOSPC on virtio0, then a cont,
# then an event that leaves the state alone
CYCLE = [("BLOCK_IO_ERROR", {"device": "virtio0", "node-name": "#block123", "operation": "write",
                             "action": "stop", "nospace": True,
                             "reason": "No space left on device"}),
         ("STOP", None),
         ("RESUME", None),
         ("RTC_CHANGE", {"offset": 1, "qom-path": "/machine/unattached/device[6]"})]
SNAPSHOT_GRACE = 0.5  # seconds between negotiation and the act, for the snapshot
HOSTILE_WAIT = 3.0  # hostile mode: how long a hostile line's connection may stay open

def _line(obj):
    return json.dumps(obj).encode() + b"\r\n"


# hostile mode, one per connection: (name, what to send). args -> bytes.
HOSTILE = [
    ("oversized", lambda a: b'{"event": "RTC_CHANGE", "data": {"qom-path": "' + b"x" * a.oversize +
     b'"}, "timestamp": {"seconds": 1, "microseconds": 0}}\r\n'),
    ("nested", lambda a: b"[" * a.nest_depth + b"]" * a.nest_depth + b"\r\n"),
    ("bad-utf8-string", lambda a: b'{"event": "RTC_CHANGE", "data": {"offset": 1, "qom-path": "/m/\xff\xfe\xc3\x28"}, '
     b'"timestamp": {"seconds": 1, "microseconds": 0}}\r\n'),
    ("raw-garbage", lambda a: b"\x00\xff\xfe\x80\x81garbage\xc0\xaf\xed\xa0\x80\r\n"),
    ("truncated", lambda a: b'{"event": "RTC_CHANGE", "data": {"offset": 1, "qom-pa\r\n'),
    # Valid JSON, wrong types: one kind per connection.
    ("event-not-string", lambda a: _line({"event": 42, "timestamp": {"seconds": 1, "microseconds": 0}})),
    ("timestamp-string", lambda a: _line({"event": "RTC_CHANGE", "timestamp": "yesterday",
                                          "data": {"offset": 1, "qom-path": "/m"}})),
    ("data-array", lambda a: _line({"event": "RTC_CHANGE", "timestamp": {"seconds": 1, "microseconds": 0},
                                    "data": [1, 2, 3]})),
    ("field-types", lambda a: _line({"event": "BLOCK_IO_ERROR",
                                     "timestamp": {"seconds": 1, "microseconds": 0},
                                     "data": {"device": 5, "operation": ["write"], "action": {},
                                              "nospace": "yes", "reason": None}})),
]

# bad-timestamps mode: (label, the "timestamp" member as JSON text, None for none). The first
# two are the last instants a timestamp may name; every other one must give the bridge's clock.
BAD_TIMESTAMPS = [
    ("first-instant", '{"seconds": -62135596800, "microseconds": 0}'),
    ("last-instant", '{"seconds": 253402300799, "microseconds": 999999}'),
    ("int64-max", '{"seconds": 9223372036854775807, "microseconds": 2147483647}'),
    ("int64-min", '{"seconds": -9223372036854775808, "microseconds": -2147483648}'),
    ("year-33658", '{"seconds": 1000000000000, "microseconds": 0}'),
    ("real-1e12", '{"seconds": 1e12, "microseconds": 0}'),
    ("before-year-1", '{"seconds": -62135596801, "microseconds": 999999}'),
    ("after-year-9999", '{"seconds": 253402300800, "microseconds": 0}'),
    ("usec-1000000", '{"seconds": 1732242124, "microseconds": 1000000}'),
    ("usec-negative", '{"seconds": 1732242124, "microseconds": -1}'),
    ("usec-missing", '{"seconds": 1732242124}'),
    ("seconds-missing", '{"microseconds": 5}'),
    ("seconds-string", '{"seconds": "1732242124", "microseconds": 0}'),
    ("not-an-object", '[1732242124, 0]'),
    ("absent", None),
]


def _ts_line(name, ts, data=None):
    """An event line whose timestamp member is ts (JSON text, or None to leave it out)."""
    body = '{"event": %s' % json.dumps(name)
    if data is not None:
        body += ', "data": %s' % json.dumps(data)
    if ts is not None:
        body += ', "timestamp": %s' % ts
    return (body + "}\r\n").encode()


FLOOD_MODES = ("withhold-flood", "stop-flood")


def flood_chunk(line_bytes):
    """About 1 MiB of RTC_CHANGE lines, each padded (in its qom-path) to line_bytes if longer."""
    head = b'{"event": "RTC_CHANGE", "data": {"offset": 1, "qom-path": "/machine/unattached/device[6]'
    tail = b'"}, "timestamp": {"seconds": 1700000000, "microseconds": 1}}\r\n'
    line = head + b"x" * max(0, line_bytes - len(head) - len(tail)) + tail
    return line * max(1, 1024 * 1024 // len(line))


def log(conn_no, msg):
    sys.stderr.write("qmp_peer[%d]: %s\n" % (conn_no, msg))
    sys.stderr.flush()


def now_ts():
    t = time.time()
    return {"seconds": int(t), "microseconds": int((t - int(t)) * 1e6)}


class Conn:
    def __init__(self, sock, no, mode, args):
        self.sock = sock
        self.no = no
        self.mode = mode
        self.args = args
        self.buf = b""
        self.ready_at = None  # when qmp_capabilities succeeded
        self.snapshot_answered = False  # query-uuid, the snapshot's last query, was answered
        self.acted = False
        self.counter = 0
        self.delayed = []  # (due, reply) answers held back in stop-query mode
        self.progress = None  # events mode with --count: shared {"sent", "rtc"} across connections
        self.acted_at = None  # hostile mode: when the hostile line went out
        self.withheld_at = None  # flood modes: when the withheld command arrived
        self.flooded = 0  # flood modes: bytes sent so far
        self.finished = False  # name-churn: this connection did its part

    def send(self, obj_or_bytes):
        data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode() + b"\r\n"
        self.sock.sendall(data)

    def event(self, name, data=None):
        ev = {"event": name, "timestamp": now_ts()}
        if data is not None:
            ev["data"] = data
        self.send(ev)

    def handle_line(self, line):
        try:
            msg = json.loads(line)
        except ValueError:
            self.send({"error": {"class": "GenericError", "desc": "JSON parse error"}})
            return
        cmd = msg.get("execute") or msg.get("exec-oob")
        if self.args.command_log:
            with open(self.args.command_log, "a") as f:
                f.write(json.dumps({"execute": cmd, "arguments": msg.get("arguments")}) + "\n")
        reply = {}
        if "id" in msg:
            reply["id"] = msg["id"]
        if cmd == "qmp_capabilities" and self.ready_at is None:
            self.ready_at = time.monotonic()
        if self.withholding(cmd):
            if self.withheld_at is None:
                self.withheld_at = time.monotonic()
                log(self.no, "withholding the reply to %s (and every later one)" % cmd)
            return
        if self.mode == "name-churn" and cmd == "query-name":
            reply["return"] = {"name": "%s%d" % (self.args.name_prefix, self.no)}
            self.send(reply)
            return
        if self.mode == "name-churn" and cmd == "query-uuid":
            self.finished = True
        if cmd == "query-uuid":
            self.snapshot_answered = True
        delay = dict(d.split(":", 1) for d in self.args.delay).get(cmd)
        if delay is not None and cmd in REPLIES:
            reply["return"] = REPLIES[cmd]
            self.delayed.append((time.monotonic() + float(delay), reply))
            log(self.no, "holding the %s reply for %ss" % (cmd, delay))
            return
        if self.mode == "stop-query" and self.acted and cmd == "query-status":
            reply["return"] = {"status": "io-error", "singlestep": False, "running": False}
            self.delayed.append((time.monotonic() + self.args.reply_delay, reply))
            log(self.no, "holding the query-status reply for %.1fs" % self.args.reply_delay)
            return
        if (self.mode == "stop-query" and self.acted or self.mode in CYCLE_MODES) \
                and cmd == "query-block":
            io_status = "nospace" if self.mode == "stop-query" else "ok"
            reply["return"] = [{"device": "virtio0", "qdev": "/machine/peripheral/disk0",
                                "locked": False, "removable": False, "io-status": io_status,
                                "type": "unknown",
                                "inserted": {"node-name": "#block123", "file": "/images/vm.raw",
                                             "drv": "raw", "ro": False, "encrypted": False,
                                             "image": {"virtual-size": 67108864,
                                                       "filename": "/images/vm.raw",
                                                       "format": "raw"}}}]
        elif cmd in REPLIES:
            reply["return"] = REPLIES[cmd]
        else:
            reply["error"] = {"class": "CommandNotFound", "desc": "The command %s has not been found" % cmd}
        self.send(reply)

    def withholding(self, cmd):
        """Flood modes: whether cmd's reply is held back for ever."""
        if self.withheld_at is not None:
            return True
        if self.mode == "withhold-flood":
            return cmd == self.args.withhold
        return self.mode == "stop-flood" and self.acted and cmd == "query-status"

    def flood(self):
        """Sends the next MiB of the flood, if the withheld command is there and the wait is over."""
        if self.withheld_at is None or self.flooded >= self.args.flood_bytes or \
                time.monotonic() - self.withheld_at < self.args.flood_after:
            return
        if self.flooded == 0:
            log(self.no, "flooding %d bytes of RTC_CHANGE" % self.args.flood_bytes)
        if self.args.chunk is None:
            self.args.chunk = flood_chunk(self.args.flood_line_bytes)
        self.send(self.args.chunk)
        self.flooded += len(self.args.chunk)
        if self.flooded >= self.args.flood_bytes:
            log(self.no, "flood done (%d bytes); silent from now on" % self.flooded)

    def read(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                self.handle_line(line)
        return True

    def tick(self):
        """Acts out the mode. Returns False when the connection should close."""
        if self.mode == "name-churn":
            return not self.finished
        if self.mode in FLOOD_MODES:
            self.flood()  # the withheld command may come before the grace is over
        if self.ready_at is None or time.monotonic() - self.ready_at < SNAPSHOT_GRACE:
            return True
        mode = self.mode
        for item in [d for d in self.delayed if d[0] <= time.monotonic()]:
            self.delayed.remove(item)
            self.send(item[1])
        if mode == "stop-flood" and not self.acted:
            log(self.no, "sending STOP (no error event before it); query-status is never answered")
            self.acted = True
            self.event("STOP")
        elif mode == "stop-query" and not self.acted:
            log(self.no, "sending STOP (no error event before it), RESUME, RTC_CHANGE")
            self.acted = True
            self.event("STOP")
            self.event("RESUME")
            self.event("RTC_CHANGE", {"offset": 1, "qom-path": "/machine/unattached/device[6]"})
        elif mode == "bad-timestamps" and not self.acted:
            log(self.no, "bad-timestamps: %d RTC_CHANGE, then STOP and RESUME" % len(BAD_TIMESTAMPS))
            self.acted = True
            lines = [_ts_line("RTC_CHANGE", ts, {"offset": i + 1, "qom-path": "/ts/" + label})
                     for i, (label, ts) in enumerate(BAD_TIMESTAMPS)]
            lines += [_ts_line("STOP", BAD_TIMESTAMPS[2][1]), _ts_line("RESUME", BAD_TIMESTAMPS[5][1])]
            self.send(b"".join(lines))
        elif mode == "garbage" and not self.acted:
            log(self.no, "sending a non-JSON line")
            self.send(b"this is {not json at all\r\n")
            self.acted = True
        elif mode == "half" and not self.acted:
            log(self.no, "sending half a line, then silence for 1s, then close")
            self.send(b'{"event": "RTC_CHANGE", "data": {"offs')
            self.acted = True
            time.sleep(1.0)
            return False
        elif mode == "oversized" and not self.acted:
            n = self.args.oversize
            log(self.no, "sending a %d byte line" % n)
            pad = "x" * n
            self.send(json.dumps({"event": "RTC_CHANGE", "timestamp": now_ts(),
                                  "data": {"offset": 0, "qom-path": pad}}).encode() + b"\r\n")
            self.acted = True
        elif mode == "hostile" and not self.acted:
            case, make = HOSTILE[min(self.no, len(HOSTILE)) - 1]
            data = make(self.args)
            log(self.no, "hostile: %s (%d bytes)" % (case, len(data)))
            self.acted, self.acted_at = True, time.monotonic()
            self.send(data)
            if case == HOSTILE[-1][0]:
                self.mode = "events"  # the last case: the session must carry on
        elif mode == "hostile" and time.monotonic() - self.acted_at > HOSTILE_WAIT:
            log(self.no, "hostile: the bridge kept the connection %.0fs; closing it" % HOSTILE_WAIT)
            return False
        elif mode == "trickle" and not self.snapshot_answered:
            pass  # one event per loop turn of the bridge: none may wait behind its snapshot
        elif mode in CYCLE_MODES and self.counter < (self.args.count or 0):
            n = self.args.count if mode == "burst" else self.counter + 1
            lines = []
            while self.counter < n:
                name, data = CYCLE[self.counter % len(CYCLE)]
                ev = {"event": name, "timestamp": now_ts()}
                if data is not None:
                    ev["data"] = data
                lines.append(_line(ev))
                self.counter += 1
            self.send(b"".join(lines))
            if self.counter == self.args.count:
                log(self.no, "%s: sent all %d events; silent from now on" % (mode, self.counter))
            elif mode == "trickle":
                time.sleep(self.args.interval)
        elif mode == "events" and self.progress is not None:
            self.counted_events()
        elif mode == "events":
            self.counter += 1
            self.event("RTC_CHANGE", {"offset": self.counter, "qom-path": "/machine/unattached/device[6]"})
            if self.counter % 50 == 0:
                self.event("STOP")
                self.event("RESUME")
        return True

    def counted_events(self):
        """events mode with --count or --name: the same pattern, but every event
        is counted before it is sent, so the total never passes --count."""
        p = self.progress
        limit = self.args.count
        qom = "/machine/unattached/%s/device[6]" % self.args.name if self.args.name else \
            "/machine/unattached/device[6]"
        batch = [("RTC_CHANGE", None)]
        if (p["rtc"] + 1) % 50 == 0:
            batch += [("STOP", None), ("RESUME", None)]
        for name, _ in batch:
            if limit is not None and p["sent"] >= limit:
                if not p.get("done_logged"):
                    log(self.no, "sent all %d events; silent from now on" % limit)
                    p["done_logged"] = True
                return
            if name == "RTC_CHANGE":
                self.event(name, {"offset": p["rtc"] + 1, "qom-path": qom})
                p["rtc"] += 1
            else:
                self.event(name)
            p["sent"] += 1


def run_conn(sock, no, mode, args, progress):
    """Plays one connection until it ends."""
    log(no, "client connected, mode %s" % mode)
    c = Conn(sock, no, mode, args)
    c.progress = progress
    try:
        c.send(GREETING)
        alive = True
        while alive:
            wait = 0 if mode in FLOOD_MODES and c.withheld_at is not None and \
                c.flooded < args.flood_bytes else args.interval
            r, _, _ = select.select([sock], [], [], wait)
            if r and not c.read():
                log(no, "client closed the connection")
                break
            alive = c.tick()
    except OSError as e:
        log(no, "connection error: %s" % e)
    sock.close()
    log(no, "connection closed")


def connect_loop(args):
    """--connect: plays QEMU connecting to the bridge, reconnecting like reconnect=N."""
    no = 0
    progress = {"sent": 0, "rtc": 0} if args.count is not None and args.mode == "events" else None
    while args.mode != "name-churn" or no < (args.count or 0):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(args.connect)
        except OSError as e:
            sock.close()
            if args.mode != "name-churn":
                time.sleep(args.reconnect)
            else:
                log(no + 1, "cannot connect: %s; retrying" % e)
                time.sleep(0.05)
            continue
        no += 1
        run_conn(sock, no, args.mode, args, progress)
        if args.mode != "name-churn":
            time.sleep(args.reconnect)
    log(no, "name-churn: all %d connections done" % no)


def serve(args):
    path = args.socket
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    no = 0
    progress = {"sent": 0, "rtc": 0} if (args.count is not None or args.name or
                                         args.mode == "hostile") else None
    while True:
        sock, _ = srv.accept()
        no += 1
        mode = args.mode if (no == 1 or not args.once) else "events"
        if mode == "hostile" and no > len(HOSTILE):
            mode = "events"  # every case was acted out; behave from now on
        run_conn(sock, no, mode, args, progress)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="listen on this unix socket (the bridge connects)")
    where.add_argument("--connect", help="connect to the bridge's qmp.listen socket")
    ap.add_argument("--mode", required=True, choices=["garbage", "half", "oversized", "events",
                                                           "stop-query", "idle", "hostile",
                                                           "burst", "trickle", "bad-timestamps",
                                                           "withhold-flood",
                                                           "stop-flood", "name-churn"])
    ap.add_argument("--reconnect", type=float, default=0.2,
                    help="--connect: seconds between the end of a connection and the next")
    ap.add_argument("--withhold", default="query-status",
                    help="withhold-flood: the command never answered")
    ap.add_argument("--flood-bytes", type=int, default=32 * 1024 * 1024,
                    help="flood modes: RTC_CHANGE bytes sent per connection")
    ap.add_argument("--flood-after", type=float, default=0.0,
                    help="flood modes: seconds between the withheld command and the flood")
    ap.add_argument("--flood-line-bytes", type=int, default=0,
                    help="flood modes: pad each RTC_CHANGE line to about this many bytes")
    ap.add_argument("--name-prefix", default="churn-",
                    help="name-churn: query-name answers are PREFIX<connection number>")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between events")
    ap.add_argument("--oversize", type=int, default=65536)
    ap.add_argument("--nest-depth", type=int, default=100000,
                    help="hostile: how many '[' the nested line opens")
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--command-log", help="append every command received to this file (JSON lines)")
    ap.add_argument("--delay", action="append", default=[], metavar="COMMAND:SECONDS",
                    help="answer COMMAND only after SECONDS (repeatable)")
    ap.add_argument("--reply-delay", type=float, default=1.0,
                    help="stop-query: seconds before query-status is answered")
    ap.add_argument("--count", type=int, default=None,
                    help="events, burst, trickle: send this many QMP events in all, then fall silent")
    ap.add_argument("--name", default=None,
                    help="events: put NAME into every RTC_CHANGE's qom-path")
    ap.add_argument("--status-text", default=None,
                    help="answer query-status with this \"status\" (a hostile QEMU's run state)")
    args = ap.parse_args()
    if args.status_text is not None:
        REPLIES["query-status"] = dict(REPLIES["query-status"], status=args.status_text)
    args.chunk = None  # flood modes: made on first use
    if args.mode == "name-churn" and not args.connect:
        ap.error("--mode name-churn needs --connect")
    if args.connect:
        connect_loop(args)
    else:
        serve(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
