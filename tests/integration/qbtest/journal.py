"""journal.py - journald's native socket, stood in for by the test, without systemd.

    journal.reexec_in_mount_namespace()   # first thing in the test: unshare -m, or SKIP
    journal.private_run()                 # tmpfs over /run/systemd, in this namespace only
    j = journal.Receiver(workdir)         # binds /run/systemd/journal/socket
    env JOURNAL_STREAM = journal.stream_of(path_of_the_bridge_stderr)
    j.entries()                           # [Entry], each datagram parsed
    j.close(); journal.start_journald(workdir)   # or the real journald, where there is one
    journal.journalctl("-p", "warning")   # what the user would see

libsystemd's sd_journal_sendv() always sends to /run/systemd/journal/socket, so the
test takes that path over in a private mount namespace (it must run as root); the host's
/run is never touched. Datagrams are parsed as journald does (systemd's
docs/JOURNAL_NATIVE_PROTOCOL.md): "KEY=value\\n", or for a value that may hold a newline
"KEY\\n", its length as 64-bit little-endian, the value and "\\n". An entry too big for a
datagram comes as a memfd passed with SCM_RIGHTS; that is read too.
"""
import array
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading

from . import procs

SOCKET = "/run/systemd/journal/socket"
_NS_FLAG = "QB_TEST_PRIVATE_MOUNT_NS"
MAX_ENTRIES = 100000  # what one test keeps; more is a runaway logger


def skip(why):
    print("SKIP %s" % why)
    sys.stdout.flush()
    sys.exit(77)


def reexec_in_mount_namespace():
    """Runs the calling test again under `unshare -m --propagation private`, unless this
    process is that run already; returns only inside the namespace. Exits 77 (SKIP)
    where no mount namespace can be had (not root, no unshare, a container without
    CAP_SYS_ADMIN)."""
    if os.environ.get(_NS_FLAG) == "1":
        return
    if os.geteuid() != 0:
        skip("a private mount namespace needs root")
    if not shutil.which("unshare"):
        skip("no unshare(1)")
    argv = ["unshare", "-m", "--propagation", "private"]
    probe = subprocess.run(argv + ["true"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=30)
    if probe.returncode != 0:
        skip("unshare -m failed: %s" % probe.stderr.decode("utf-8", "replace").strip())
    sys.stdout.flush()
    env = dict(os.environ)
    env[_NS_FLAG] = "1"
    os.execvpe(argv[0], argv + [sys.executable] + sys.argv, env)


def private_run_check():
    if os.environ.get(_NS_FLAG) != "1":
        raise RuntimeError("mounting outside the private mount namespace")


def private_run():
    """Mounts a tmpfs on /run/systemd (or /run/systemd/journal, or /run: the deepest that
    exists) in this private namespace and creates /run/systemd/journal in it."""
    private_run_check()
    for target in ("/run/systemd/journal", "/run/systemd", "/run"):
        if os.path.isdir(target):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "qbtest-journal", target],
                           check=True, timeout=30)
            break
    os.makedirs(os.path.dirname(SOCKET), exist_ok=True)


def stream_of(path):
    """JOURNAL_STREAM's value for a process whose stderr is the file at path."""
    st = os.stat(path)
    return "%d:%d" % (st.st_dev, st.st_ino)


class Entry(dict):
    """One journal entry: field name -> value (str when UTF-8, else bytes). binary lists
    the fields sent in the length-prefixed form; raw is the datagram."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw
        self.binary = []
        self.duplicates = []
        self.bad = None  # why the datagram is not well-formed, or None
        try:
            self._parse(raw)
        except (ValueError, struct.error) as e:
            self.bad = str(e)

    def _parse(self, data):
        i = 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                key, value = line.split(b"=", 1)
                i = nl + 1
            else:
                key = line
                (size,) = struct.unpack_from("<Q", data, nl + 1)
                start = nl + 9
                value = data[start:start + size]
                if len(value) != size or data[start + size:start + size + 1] != b"\n":
                    raise ValueError("binary field %r: bad length or no newline" % key)
                self.binary.append(key.decode("ascii", "replace"))
                i = start + size + 1
            if not re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", key):
                raise ValueError("field name %r is not valid" % key)
            name = key.decode("ascii")
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass
            if name in self:
                self.duplicates.append(name)
            self[name] = value

    def text(self):
        """The entry as a text-format line without time and level: "[vm] message"."""
        msg = self.get("MESSAGE", "")
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        vm = self.get("VM")
        return "[%s] %s" % (vm, msg) if vm else msg


class Receiver:
    """Binds the journal's socket and collects what arrives on a thread of its own.
    Each entry is also written, one line each, to <workdir>/journal.txt (for the logs
    a failing test prints): PRIORITY, [VM] MESSAGE, then TRANSPORT= and COMMAND_ID=."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "journal.txt")
        self._entries = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if os.path.exists(SOCKET):
            os.unlink(SOCKET)
        self._sock.bind(SOCKET)
        os.chmod(SOCKET, 0o666)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _receive(self):
        fds = array.array("i")
        data, anc, _flags, _addr = self._sock.recvmsg(1 << 20, socket.CMSG_SPACE(16))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        for fd in fds:
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(fd)
            data = b"".join(chunks)
        return data

    def _run(self):
        with open(self.path, "a") as out:
            while True:
                try:
                    data = self._receive()
                except OSError:
                    return
                entry = Entry(data)
                with self._lock:
                    if len(self._entries) < MAX_ENTRIES:
                        self._entries.append(entry)
                extra = "".join(" %s=%s" % (k, entry[k]) for k in ("TRANSPORT", "COMMAND_ID")
                                if k in entry)
                out.write("%s %s%s\n" % (entry.get("PRIORITY", "?"), entry.text(), extra))
                out.flush()

    def close(self):
        """Stops receiving and frees the socket's path (for a real journald)."""
        self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._sock.close()
        if os.path.exists(SOCKET):
            os.unlink(SOCKET)

    def entries(self):
        with self._lock:
            return list(self._entries)

    def text(self):
        """Every entry as a text line (Entry.text), for Bridge.log_text."""
        return "\n".join(e.text() for e in self.entries())

    def wait(self, predicate, what, timeout=20.0):
        """The entries that satisfy predicate, once there is at least one."""
        return procs.wait_until(lambda: [e for e in self.entries() if predicate(e)], timeout, what)


JOURNALD = "/lib/systemd/systemd-journald"


def start_journald(workdir):
    """Starts the real systemd-journald in this private namespace, keeping its journal in
    a tmpfs on /run/log (and one on /var/log/journal where that exists), so nothing of the
    host's is read or written; returns its Popen once its socket is there, or None when
    there is no journald or journalctl to use."""
    if not os.access(JOURNALD, os.X_OK) or not shutil.which("journalctl"):
        return None
    private_run_check()
    for target in ("/run/log", "/var/log/journal"):
        if os.path.isdir(target):
            subprocess.run(["mount", "-t", "tmpfs", "qbtest-journal", target], check=True,
                           timeout=30)
    os.makedirs("/run/log/journal", exist_ok=True)
    p = procs.spawn([JOURNALD], "systemd-journald", stdout=os.path.join(workdir, "journald.log"),
                    stderr=os.path.join(workdir, "journald.log"))
    procs.wait_until(lambda: os.path.exists(SOCKET), 20, "journald's socket")
    return p


def journalctl(*args):
    """Entries of the private journal that journalctl selects with args, as dicts (-o json)."""
    out = subprocess.run(["journalctl", "-q", "--no-pager", "-D", "/run/log/journal", "-o", "json"]
                         + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return [json.loads(line) for line in out.stdout.decode("utf-8").splitlines() if line]
