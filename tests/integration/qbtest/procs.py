"""procs.py - every child process of a test, and how it dies.

Each child is started in its own session (so a signal meant for the test
runner never reaches it half-way) with PR_SET_PDEATHSIG=SIGKILL as a safety net
if the test process itself is killed. Every child is recorded; at exit (normal,
exception, SIGTERM/SIGINT) each is sent SIGTERM, then SIGKILL, and waited for,
by PID, so tests never need pkill.
"""
import atexit
import ctypes
import os
import signal
import subprocess
import sys
import time

_children = []  # [(Popen, name)] in start order
_cleanups = []  # functions cleanup_all runs first, newest first

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - glibc is always there on Debian
    _libc = None


def _child_setup():
    # Runs in the child between fork and exec: die with the test process.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(argv, name, stdout=None, stderr=None, stdin=subprocess.DEVNULL, env=None, cwd=None):
    """Starts argv in a new session and records it. stdout/stderr may be a path
    (opened for append), a file object or None (inherit). Returns the Popen."""
    files = []

    def _open(target):
        if isinstance(target, (str, os.PathLike)):
            f = open(target, "ab", buffering=0)
            files.append(f)
            return f
        return target

    try:
        p = subprocess.Popen([str(a) for a in argv], stdin=stdin, stdout=_open(stdout),
                             stderr=_open(stderr), env=env, cwd=cwd,
                             start_new_session=True, preexec_fn=_child_setup)
    finally:
        for f in files:  # the child holds its own copy
            f.close()
    p.qb_name = name
    _children.append((p, name))
    return p


def stop(p, timeout=5.0, sig=signal.SIGTERM):
    """Stops one child: sig, then SIGKILL after timeout; always waits for it.
    Returns its exit status (negative signal number when killed)."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    _forget(p)
    return p.returncode


def kill(p):
    """SIGKILL now and wait: the 'crash' of a process, e.g. of QEMU."""
    return stop(p, timeout=0.0, sig=signal.SIGKILL) if p.poll() is None else _reap(p)


def _reap(p):
    p.wait()
    _forget(p)
    return p.returncode


def _forget(p):
    for i, (q, _name) in enumerate(_children):
        if q is p:
            del _children[i]
            break


def at_cleanup(fn):
    """Registers fn() to run once at the start of cleanup_all (so also on
    SIGTERM and at exit), before any child is stopped: for an owner of
    processes that are not our children, e.g. the QEMUs of a libvirtd."""
    _cleanups.append(fn)


def forget_cleanup(fn):
    """Unregisters fn (after the owner cleaned up by itself)."""
    if fn in _cleanups:
        _cleanups.remove(fn)


def cleanup_all():
    """Runs the at_cleanup functions, then stops every recorded child, newest
    first (bridge before brokers and QEMUs)."""
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # one failing owner must not keep the rest alive
            sys.stderr.write("qbtest: cleanup %r failed: %s\n" % (fn, e))
    while _children:
        p, _name = _children[-1]
        stop(p, timeout=3.0)


def _on_signal(signum, _frame):
    # Turn SIGTERM (ctest timeout, CI cancel) into a normal exit so atexit runs.
    cleanup_all()
    sys.stderr.write("qbtest: killed by signal %d, children cleaned up\n" % signum)
    os._exit(128 + signum)


atexit.register(cleanup_all)
signal.signal(signal.SIGTERM, _on_signal)


def wait_until(predicate, timeout, what, interval=0.05, on_fail=None):
    """Polls predicate() until it returns a true value, which is returned.
    On timeout raises TimeoutError naming `what` (after calling on_fail()).
    timeout is multiplied by util.TIMEOUT_SCALE (a slow bridge, e.g. under valgrind)."""
    from . import util  # util imports this module: import at call time
    timeout *= util.TIMEOUT_SCALE
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            if on_fail is not None:
                on_fail()
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def rss(pid):
    """Resident memory of process pid in bytes (VmRSS of /proc/<pid>/status), 0 if unknown."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
