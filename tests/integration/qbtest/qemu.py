"""qemu.py - real QEMU 7.2 VMs for the integration tests.

Every VM gets two QMP monitors: <name>.qmp for the bridge and <name>.test.qmp
for the test's own client (a -qmp unix server takes one client at a time).

Data disk modes (disk=):
  "tmpfs"           real ENOSPC: a 64M sparse raw file on a 4M tmpfs mounted in
                    a private mount namespace (unshare -m) that only QEMU lives
                    in; falls back to "blkdebug-enospc" when mount is refused
                    (or QB_NO_TMPFS=1).
  "blkdebug-enospc" every write fails with errno 28 (blkdebug driver).
  "blkdebug-eio"    every write fails with errno 5.
  "plain"           a 64M sparse file that never fails.
  "job-tmpfs"       no guest disk; -blockdev nodes "src" (8M of data) and "tgt"
                    (on the full tmpfs, or blkdebug errno 28) for block jobs.
  None              no data disk.
The guest (guest=True) is the boot sector of tests/tools/guest/writer.S on a
second IDE disk; it writes the data disk forever.
"""
import os
import signal
import subprocess
import time

from . import guest as guest_mod
from . import procs
from . import qmp as qmp_mod
from . import util

QEMU = os.environ.get("QB_QEMU", "qemu-system-x86_64")
DISK_SIZE = "64M"

_mount_ok = None


def can_mount_tmpfs():
    """True when this process may mount a tmpfs in a private mount namespace
    (QB_NO_TMPFS=1 forces the blkdebug fallback, to test it as root)."""
    global _mount_ok
    if os.environ.get("QB_NO_TMPFS"):
        return False
    if _mount_ok is None:
        d = util.make_tmpdir("qbtest-probe-")
        r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1M tmpfs '%s'" % d],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _mount_ok = r.returncode == 0
    return _mount_ok


def _blkdebug_conf(path, errno_value):
    with open(path, "w") as f:
        f.write('[inject-error]\nevent = "write_aio"\nerrno = "%d"\n' % errno_value)
    return path


class Qemu:
    def __init__(self, workdir, name="vm1", machine="pc", guest=True, disk="tmpfs",
                 werror="stop", rerror="stop", tmpfs_size="4M", incoming=None, extra=()):
        self.workdir = workdir
        self.name = name
        self.machine = machine
        self.guest = guest
        self.werror = werror
        self.rerror = rerror
        self.tmpfs_size = tmpfs_size
        self.incoming = incoming
        self.extra = list(extra)
        self.qmp_path = os.path.join(workdir, name + ".qmp")
        self.test_qmp_path = os.path.join(workdir, name + ".test.qmp")
        self.log = os.path.join(workdir, name + ".qemu.log")
        self.fs_dir = os.path.join(workdir, name + ".fs")
        if disk in ("tmpfs", "job-tmpfs") and not can_mount_tmpfs():
            disk = "blkdebug-enospc" if disk == "tmpfs" else "job-blkdebug"
        self.disk = disk
        self.proc = None
        self._qmp = None
        self.starts = 0

    # -- command line -------------------------------------------------------
    def _argv(self):
        a = [QEMU, "-nodefaults", "-display", "none", "-m", "16",
             "-machine", self.machine if self.machine == "none" else self.machine + ",accel=tcg",
             "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
             "-qmp", "unix:%s,server=on,wait=off" % self.test_qmp_path]
        if self.machine == "none":
            a += ["-accel", "tcg"]
        err = "werror=%s,rerror=%s" % (self.werror, self.rerror)
        if self.disk == "tmpfs":
            a += ["-drive", "file=%s/disk.raw,format=raw,if=none,id=data,%s" % (self.fs_dir, err)]
        elif self.disk in ("blkdebug-enospc", "blkdebug-eio", "plain"):
            img = os.path.join(self.workdir, self.name + ".disk.raw")
            with open(img, "ab") as f:
                f.truncate(64 << 20)
            if self.disk == "plain":
                a += ["-drive", "file=%s,format=raw,if=none,id=data,%s" % (img, err)]
            else:
                conf = _blkdebug_conf(os.path.join(self.workdir, self.name + ".blkdebug.conf"),
                                      28 if self.disk == "blkdebug-enospc" else 5)
                a += ["-drive", "file=blkdebug:%s:%s,format=raw,if=none,id=data,%s" % (conf, img, err)]
        elif self.disk in ("job-tmpfs", "job-blkdebug"):
            src = os.path.join(self.workdir, self.name + ".src.raw")
            with open(src, "wb") as f:
                f.write(bytes(range(256)) * (8 << 12))  # 8 MiB of non-zero data
            a += ["-blockdev", "driver=file,filename=%s,node-name=src-file" % src,
                  "-blockdev", "driver=raw,file=src-file,node-name=src"]
            if self.disk == "job-tmpfs":
                a += ["-blockdev", "driver=file,filename=%s/tgt.raw,node-name=tgt-file" % self.fs_dir]
            else:
                tgt = os.path.join(self.workdir, self.name + ".tgt.raw")
                with open(tgt, "wb") as f:
                    f.truncate(8 << 20)
                conf = _blkdebug_conf(os.path.join(self.workdir, self.name + ".blkdebug.conf"), 28)
                a += ["-blockdev", "driver=blkdebug,config=%s,image.driver=file,image.filename=%s,"
                      "node-name=tgt-file" % (conf, tgt)]
            a += ["-blockdev", "driver=raw,file=tgt-file,node-name=tgt"]
        if self.disk in ("tmpfs", "blkdebug-enospc", "blkdebug-eio", "plain"):
            a += ["-device", "ide-hd,drive=data,bus=ide.0,id=data-dev"]
        if self.guest:
            boot = guest_mod.boot_image(os.path.join(self.workdir, self.name + ".boot.img"))
            a += ["-drive", "file=%s,format=raw,if=none,id=boot" % boot,
                  "-device", "ide-hd,drive=boot,bus=ide.1,bootindex=1"]
        if self.incoming:
            a += ["-incoming", self.incoming]
        return a + self.extra

    def start(self):
        """Starts QEMU (again, after a kill: same sockets, fresh tmpfs)."""
        argv = self._argv()
        if self.disk in ("tmpfs", "job-tmpfs"):
            os.makedirs(self.fs_dir, exist_ok=True)
            fname = "disk.raw" if self.disk == "tmpfs" else "tgt.raw"
            size = DISK_SIZE if self.disk == "tmpfs" else "8M"
            script = ('mount -t tmpfs -o size=%s tmpfs "$QB_FS" && truncate -s %s "$QB_FS/%s" '
                      '&& exec "$@"' % (self.tmpfs_size, size, fname))
            argv = ["unshare", "-m", "sh", "-c", script, "sh"] + argv
        env = dict(os.environ, QB_FS=self.fs_dir)
        with open(self.log, "a") as f:
            f.write("### start %d: %s\n" % (self.starts + 1, " ".join(argv)))
        self.proc = procs.spawn(argv, "qemu-" + self.name, stdout=self.log, stderr=self.log, env=env)
        self.starts += 1
        self._qmp = None
        return self

    @property
    def qmp(self):
        """The test's own QMP client (connected on first use)."""
        if self._qmp is None:
            try:
                self._qmp = qmp_mod.QMP(self.test_qmp_path, timeout=15.0)
            except Exception:
                raise RuntimeError("cannot reach QEMU %s test monitor; QEMU log:\n%s" % (
                    self.name, util.tail(self.log)))
        return self._qmp

    def wait_ready(self):
        """Returns once both monitors exist and the test monitor answers."""
        self.qmp  # noqa: B018 - connecting is the check
        procs.wait_until(lambda: os.path.exists(self.qmp_path), 10, "bridge QMP socket of " + self.name)
        return self

    def kill(self):
        """SIGKILL, like a crash. The socket file stays behind, as after a crash."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self.proc is not None:
            procs.kill(self.proc)
            self.proc = None

    def stop(self, timeout=20.0):
        """SIGTERM, SIGKILL after timeout. Returns QEMU's exit status (0: a clean
        exit, which removes its socket files; -9: it had to be killed, and they
        stay behind), or None if it was not running."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        rc = None
        if self.proc is not None:
            started = time.monotonic()
            rc = procs.stop(self.proc, timeout=timeout)
            if rc != 0:
                print("      note: QEMU %s exited with status %s after %.1f s" % (
                    self.name, rc, time.monotonic() - started))
            self.proc = None
        return rc

    def grow_tmpfs(self, size="64M"):
        """Remounts the VM's private tmpfs bigger (from inside its namespace)."""
        subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "mount", "-o",
                        "remount,size=" + size, self.fs_dir], check=True)

    def wait_enospc_pause(self, timeout=30.0):
        """Waits until the VM is paused with run state io-error; returns the
        BLOCK_IO_ERROR event seen on the test monitor (or None if QEMU
        rate-limited it away)."""
        q = self.qmp
        procs.wait_until(lambda: q.status()["status"] == "io-error", timeout,
                         "%s to pause with io-error" % self.name,
                         on_fail=lambda: print(util.tail(self.log)))
        q.pump(0.2)
        errs = [e for e in q.events if e["event"] == "BLOCK_IO_ERROR"]
        return errs[0] if errs else None

    def fate(self, wait=2.0):
        """Whether QEMU still runs, and if not how it ended, with the end of its
        log: for a failure message when its monitor closed (QEMU exited)."""
        if self.proc is None:
            return "not running (stopped by the test)"
        try:
            rc = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            return "still running"
        how = ("killed by signal %s" % signal.Signals(-rc).name if rc < 0
               else "exited with status %d" % rc)
        return "%s; its log ends:\n%s" % (how, util.tail(self.log, 12))

    def describe(self):
        return "%s (disk=%s, log %s):\n%s" % (self.name, self.disk, self.log, util.tail(self.log, 20))


# -- COLO ---------------------------------------------------------------------
def colo_pair(workdir, machine="pc"):
    """A primary and a secondary QEMU (no disks, no NICs; -machine pc), the
    secondary waiting for the migration on a free port. Both started.
    machine="none" (no vCPU) is the one on which COLO checkpoints complete
    under TCG: with -machine pc one of the first few deadlocks the primary."""
    port = util.free_port()
    primary = Qemu(workdir, "primary", machine=machine, guest=False, disk=None).start()
    secondary = Qemu(workdir, "secondary", machine=machine, guest=False, disk=None,
                     incoming="tcp:127.0.0.1:%d" % port).start()
    primary.colo_port = port
    primary.wait_ready()
    secondary.wait_ready()
    return primary, secondary


def colo_start(primary, secondary, timeout=60.0):
    """Migrates primary -> secondary with x-colo and waits until both are in COLO
    and running: query-colo-status names the mode as soon as the migration state
    is colo, before QEMU's COLO threads have set up, and a failover inside that
    window aborts the secondary (QEMU 7.2: "COLO mode must be COLO_MODE_SECONDARY",
    then an assertion in memory_global_dirty_log_do_stop; seen in CI under load).
    Each side's COLO thread starts the VM once set up (the secondary before it
    tells the primary it is ready, the primary on hearing so), so "running" on
    both marks the end of the window."""
    caps = [{"capability": "x-colo", "state": True}, {"capability": "events", "state": True}]
    for vm in (secondary, primary):
        vm.qmp.cmd("migrate-set-capabilities", capabilities=caps)
    # Under TCG the first periodic checkpoint deadlocks the primary: never take one.
    primary.qmp.cmd("migrate-set-parameters", x_checkpoint_delay=2000000000)
    primary.qmp.cmd("migrate", uri="tcp:127.0.0.1:%d" % primary.colo_port)
    for vm, mode in ((primary, "primary"), (secondary, "secondary")):
        procs.wait_until(lambda: vm.qmp.cmd("query-colo-status")["mode"] == mode, timeout,
                         "%s to enter COLO mode %s" % (vm.name, mode),
                         on_fail=lambda: print(vm.describe()))
    for vm in (secondary, primary):
        procs.wait_until(lambda: vm.qmp.cmd("query-status")["status"] == "running", timeout,
                         "%s to run in COLO (its COLO thread set up)" % vm.name,
                         on_fail=lambda: print(vm.describe()))


def colo_failover(primary, secondary):
    """Declares the heartbeat lost on both sides (secondary first: it takes over)."""
    secondary.qmp.cmd("x-colo-lost-heartbeat")
    primary.qmp.cmd("x-colo-lost-heartbeat")
