#!/usr/bin/python3
"""What other local users and slow clients can reach: the spool directory, the
secrets, the status API.

- a spool directory others may write (mode 0777, sticky or not) or that another
  user owns (chown 65534) stops the bridge at start-up with exit 3 and a line
  naming the directory, its owner and its mode;
- a directory the bridge creates for its spool is private (no group write, nothing
  for others);
- commands.hmac_key_file and an MQTT password_file that other users can read:
  --check-config exits 1 with a line naming the key, the file and its mode; the
  bridge does not start either (exit 1); readable by the group: a warning, exit 0;
  mode 0600: no word about it;
- the status API with 32 slow clients (from 32 addresses, one header line every
  2 s, never idle long enough for the idle timeout): /healthz from another client
  still answers 200 (5 s client timeout, a functional bound), and every slow client
  is closed at the request head deadline, before it could finish; a ninth
  connection from one address is closed unanswered while another address is
  served."""
import errno
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, util  # noqa: E402

BIN = bridge.binary()


def run(conf, *args, timeout=20):
    """Exit code (None: still running after timeout, then killed) and stdout + stderr."""
    p = subprocess.Popen([BIN, "-c", conf] + list(args), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = None
    return rc, out.decode(errors="replace")


def write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def config(d, name, extra):
    """A bridge with no VM, events on a stdout file, plus extra YAML."""
    return write(os.path.join(d, name + ".yaml"),
                 "bridge: { id: files }\nvms: []\n"
                 "transports:\n  - { type: stdout, path: %s }\n%s"
                 % (json.dumps(os.path.join(d, name + ".events")), extra))


def spool_yaml(path):
    return "spool: { directory: %s }\n" % json.dumps(path)


with check.Test("hostile_files") as t:
    d = t.workdir

    t.section("spool directory: others may write, another user owns it")
    for mode in (0o777, 0o1777):
        sp = os.path.join(d, "spool-%o" % mode)
        os.mkdir(sp)
        os.chmod(sp, mode)
        conf = config(d, "open-%o" % mode, spool_yaml(sp))
        rc, out = run(conf, timeout=10)
        line = [ln for ln in out.splitlines() if sp in ln and "mode %04o" % mode in ln]
        t.expect(rc == 3 and line, "spool mode %04o: exit 3 with a line naming it" % mode,
                 (rc, out[-600:]))
        t.expect("chmod o-w" in line[0], "the line says what to change", line[0])
        t.ok("mode %04o refused" % mode, line[0].strip())
        t.expect(os.listdir(sp) == [], "nothing was created in it", os.listdir(sp))
    if os.geteuid() == 0:
        sp = os.path.join(d, "spool-nobody")
        os.mkdir(sp, 0o700)
        os.chown(sp, 65534, 65534)
        conf = config(d, "nobody", spool_yaml(sp))
        rc, out = run(conf, timeout=10)
        line = [ln for ln in out.splitlines() if sp in ln and "owned by uid 65534" in ln]
        t.expect(rc == 3 and line, "spool owned by uid 65534: exit 3 with a line naming it",
                 (rc, out[-600:]))
        t.ok("another user's directory refused", line[0].strip())
    else:
        t.ok("another user's directory", "skipped: needs root to chown")

    t.section("a spool directory the bridge creates is private")
    sp = os.path.join(d, "spool-new")
    conf = config(d, "new", spool_yaml(sp))
    proc = subprocess.Popen([BIN, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(d, "new.log"), "w"))
    try:
        procs.wait_until(lambda: os.path.exists(os.path.join(sp, "lock")), 20, "the spool")
        mode = stat.S_IMODE(os.stat(sp).st_mode)
        t.expect(mode & 0o027 == 0, "created without group write or any access for others",
                 "%04o" % mode)
        t.ok("created spool directory", "mode %04o" % mode)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    t.expect(proc.returncode == 0, "SIGTERM exits 0", proc.returncode)

    t.section("secrets: world-readable refused, group-readable warned, 0600 silent")
    key = "k" * 32 + "\n"
    cases = (
        ("commands.hmac_key_file",
         lambda p: "commands: { enabled: true, hmac_key_file: %s }\n" % json.dumps(p)),
        ("transports[1].password_file",
         lambda p: "  - { type: mqtt, host: 127.0.0.1, port: 1, username: u, password_file: %s }\n"
                   % json.dumps(p)),
    )
    for what, yaml in cases:
        secret = os.path.join(d, what.replace("[", "").replace("]", "").replace(".", "-"))
        write(secret, key, 0o644)
        conf = config(d, "secret", yaml(secret))
        rc, out = run(conf, "--check-config")
        line = [ln for ln in out.splitlines()
                if what in ln and secret in ln and "mode 0644 lets other users read it" in ln]
        t.expect(rc == 1 and line, "%s mode 0644: --check-config exits 1 naming it" % what,
                 (rc, out[-600:]))
        t.ok("%s 0644 refused" % what, line[0].strip())
        rc, out = run(conf, timeout=20)
        t.expect(rc == 1 and any(secret in ln and "0644" in ln for ln in out.splitlines()),
                 "%s mode 0644: the bridge does not start" % what, (rc, out[-600:]))

        os.chmod(secret, 0o640)
        rc, out = run(conf, "--check-config")
        warn = [ln for ln in out.splitlines()
                if "warn" in ln and secret in ln and "mode 0640 lets its group" in ln]
        t.expect(rc == 0 and warn, "%s mode 0640: a warning, exit 0" % what, (rc, out[-600:]))
        t.ok("%s 0640 warned" % what, warn[0].strip())

        os.chmod(secret, 0o600)
        rc, out = run(conf, "--check-config")
        t.expect(rc == 0 and secret not in out, "%s mode 0600: accepted without a word" % what,
                 (rc, out[-600:]))

    t.section("status API: slow clients")
    port = util.free_port()
    conf = config(d, "status", "metrics: { listen: \"127.0.0.1:%d\" }\n" % port)
    blog = os.path.join(d, "status.log")
    t.add_log("bridge (status)", blog)
    proc = subprocess.Popen([BIN, "-c", conf], stdout=subprocess.DEVNULL, stderr=open(blog, "w"))

    def healthz(source="127.0.0.1"):
        """Status of GET /healthz from source, or the exception's text."""
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
        try:
            c.request("GET", "/healthz")
            return c.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return "%s: %s" % (type(e).__name__, e)
        finally:
            c.close()

    def slow_client(source):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        return s

    def closed_by_server(s):
        """True once the server has closed s (EOF or reset), False while it is open."""
        try:
            return s.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError as e:
            return e.errno in (errno.ECONNRESET, errno.EPIPE)

    try:
        procs.wait_until(lambda: healthz() == 200, 20, "/healthz answering")
        SLOW, LINES = 32, 15  # one line every 2 s: 30 s, far past the deadline
        slow = [slow_client("127.0.0.%d" % (10 + i)) for i in range(SLOW)]
        cut_after = {}
        stop = threading.Event()

        def trickle():
            for n in range(LINES):
                for i, s in enumerate(slow):
                    if i in cut_after:
                        continue
                    if closed_by_server(s):
                        cut_after[i] = n
                        continue
                    try:
                        s.send(b"X-Slow: %d\r\n" % n)
                    except OSError:
                        cut_after[i] = n
                if len(cut_after) == SLOW or stop.wait(2):
                    return

        th = threading.Thread(target=trickle, daemon=True)
        th.start()
        time.sleep(0.5)  # let the server accept them all
        st = healthz()
        t.expect(st == 200, "/healthz from another client answers 200 while %d slow clients "
                 "hold connections" % SLOW, st)
        t.ok("/healthz with %d slow clients connected" % SLOW, st)
        th.join(60)
        stop.set()
        t.expect(len(cut_after) == SLOW and max(cut_after.values()) < LINES,
                 "every slow client was closed before it could finish its request head",
                 (len(cut_after), sorted(set(cut_after.values()))))
        t.ok("slow clients closed at the head deadline",
             "after %s header lines" % sorted(set(cut_after.values())))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/metrics")
        metrics = c.getresponse().read().decode()
        c.close()
        cut = [float(ln.split()[1]) for ln in metrics.splitlines()
               if ln.startswith("qmp_bridge_http_head_timeouts_total ")]
        t.expect(cut and cut[0] >= SLOW, "/metrics counts them", cut)
        t.ok("qmp_bridge_http_head_timeouts_total", cut[0])
        for s in slow:
            s.close()

        t.section("status API: per-client connection limit")
        held = [slow_client("127.0.0.100") for _ in range(8)]
        time.sleep(0.5)
        extra = socket.create_connection(("127.0.0.1", port), timeout=5,
                                         source_address=("127.0.0.100", 0))
        try:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            got = extra.recv(4096)
        except OSError as e:
            got = b"" if e.errno in (errno.ECONNRESET, errno.EPIPE) else repr(e).encode()
        finally:
            extra.close()
        t.expect(got == b"", "a 9th connection from one address is closed unanswered", got[:80])
        st = healthz("127.0.0.101")
        t.expect(st == 200, "another address is served meanwhile", st)
        t.ok("9th connection from 127.0.0.100 refused, 127.0.0.101 served")
        for s in held:
            s.close()
        t.expect(proc.poll() is None, "the bridge is still running")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    t.expect(proc.returncode == 0, "SIGTERM exits 0", proc.returncode)
