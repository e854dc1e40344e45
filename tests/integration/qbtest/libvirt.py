"""libvirt.py - a private libvirtd (and its QEMUs) for the integration tests.

Libvirtd(workdir) runs virtlogd and libvirtd as root in their own mount and
PID namespaces, so a libvirt of the host is never seen or touched:

  holder    `unshare --mount --propagation private --pid --fork --mount-proc`
            running a small python as PID 1 of the new PID namespace. It makes
            the mounts below, then only reaps children (QEMU is daemonised by
            libvirtd, so it ends up as the holder's child, and libvirtd waits
            for a destroyed QEMU's PID to go away, which a zombie never does). When the
            holder dies the kernel kills every process of the PID namespace,
            so nothing survives a test, even one killed with SIGKILL
            (unshare --kill-child, plus PR_SET_PDEATHSIG from procs.spawn).
  mounts    (inside only)
            /run               a tmpfs: hides the host's D-Bus and systemd
                               sockets, so libvirtd talks to no host service
            /run/libvirt       bind of <workdir>/lv/run: the daemons' sockets
                               and QEMU pidfiles, visible from the host too
            /var/lib/libvirt   a tmpfs (QEMU monitors, domain state)
            /var/cache/libvirt a tmpfs
            /var/log/libvirt   bind of <workdir>/lv/log (qemu/<dom>.log readable
                               from the host)
            /etc/libvirt       bind of <workdir>/lv/etc: our libvirtd.conf (unix
                               socket only, auth none, mode 0700), virtlogd.conf,
                               qemu.conf (QEMU as root, no labels, no cgroups, no
                               per-QEMU namespace)
            /etc/passwd, /etc/group   copies with a user and group libvirt-qemu
                               added, when the host has none: libvirtd refuses to
                               start without that user even when QEMU runs as root.
                               So the host's user database is not changed either.
            A directory that does not exist on the host (e.g. /var/lib/libvirt
            without libvirt-daemon-system) gets its mount point inside an
            overlay of its parent whose upper layer is a private tmpfs: no
            mkdir ever reaches the host's file systems.
  daemons   `nsenter -t <holder> -m -p virtlogd|libvirtd` (foreground, logs to
            <workdir>/lv/*.log).

From outside use Libvirtd.uri, qemu:///system?socket=<workdir>/lv/run/libvirt-sock:
`virsh -c "$uri" list` and the bridge's libvirt source both work with it.

Domains (define_writer_domain / define_idle_domain / define_domain): TCG
(`type='qemu'`), machine pc, 32 MiB, no graphics (`<graphics type='none'/>` is
refused by libvirt 9.0), no NIC, no USB, no balloon. The writer domain boots the
boot-sector guest (guest.py) from IDE disk hdc (bus 1, the `bus=ide.1` of
qemu.py) and writes its data disk hda (bus 0 master) forever. The data disk is
a 64M sparse raw file on a tmpfs of tmpfs_size mounted inside the namespace
(`<workdir>/<dom>.fs`; from the host it looks empty).

Facts seen with libvirt 9.0 and QEMU 7.2 (Debian 12), writer domain, 4M tmpfs:
- Start-up (namespace, virtlogd, libvirtd answering on the URI): about 1.8-2 s.
  `virsh start` of the writer domain returns after about 0.9 s; the domain is
  `paused (I/O error)` about 0.8 s later. `virsh domblkerror`: "hda: no space".
- QEMU gets `-blockdev` nodes libvirt-<N>-storage (file) and libvirt-<N>-format
  (raw) per disk, `-device ide-hd,drive=libvirt-<N>-format,id=ide0-0-0,
  werror=stop,rerror=stop`. The live XML (`virsh dumpxml`) shows the same N as
  `<source file=... index='N'/>` of that disk, and `virsh domstats --block` as
  `block.<i>.backingIndex=N`. N is NOT the disk's position: with hda listed
  before hdc, hda got index 2 and hdc index 1 (a domain with hda alone: 1). So a
  node name maps to a target only through the index in the XML (or stats).
- `virsh qemu-monitor-event --loop --timestamp`, relayed QMP events:
    <QEMU's time>: event RESUME for domain 'w1': <null>
    event BLOCK_IO_ERROR for domain 'w1': {"device":"","nospace":true,
      "node-name":"libvirt-2-format","reason":"No space left on device",
      "operation":"write","action":"stop"}
    event STOP for domain 'w1': <null>        (1 ms after BLOCK_IO_ERROR)
  i.e. `device` is empty and `node-name` is the format node (not the storage node).
- error_policy='report': the domain keeps running and QEMU relays about 2,000
  BLOCK_IO_ERROR a second (`"action":"report"`, no `nospace` key; 6,010 in 3 s
  on this machine), while `virsh domblkerror` says "No errors found": a ready
  event flood for a test.
- Grow the tmpfs, `virsh blockresize w1 hda 128M`, `virsh resume w1`: running
  again, `domblkinfo` capacity 134217728.
- libvirtd SIGKILLed: its QEMUs keep running (children of the holder); a new
  libvirtd answers within about 0.3 s and lists the domain with its state
  (paused (I/O error) stays paused) and the same QEMU PID.
- Harmless libvirtd log errors here: no dnsmasq, no system bus, no DMI
  (udev, dmidecode), no /dev/kvm, "At least one cgroup controller is required"
  (cgroup_controllers = [ ]). The domain log says only "tainted: high-privileges".
- stop() takes about 0.5 s; after it no process of the namespace exists, also
  when the test process is killed with SIGTERM or SIGKILL instead.
"""
import json
import os
import re
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

from . import guest as guest_mod
from . import procs
from . import util

QEMU = os.environ.get("QB_QEMU", "/usr/bin/qemu-system-x86_64")
DISK_SIZE = "64M"

# PID 1 of the private PID namespace: mounts, then reaps children forever.
_HOLDER = r'''
import os, subprocess, sys, time
subprocess.run(["sh", "-ec", sys.argv[1]], check=True)
open(sys.argv[2], "w").close()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
'''

_LIBVIRTD_CONF = '''# private libvirtd of a qmp-bridge test: unix socket only, root only
listen_tls = 0
listen_tcp = 0
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
host_uuid = "%(host_uuid)s"
log_outputs = "3:stderr"
'''

_VIRTLOGD_CONF = 'log_outputs = "3:stderr"\n'

_QEMU_CONF = '''# QEMU as root with nothing of the host's security or cgroup set-up
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "logd"
'''


class LibvirtError(RuntimeError):
    pass


def _children_of(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _ns_id(pid, kind):
    try:
        return os.readlink("/proc/%d/ns/%s" % (pid, kind))
    except OSError:
        return None


def _free_id(path):
    """The smallest id >= 900 (system range, not in use) in a passwd/group file."""
    used = set()
    with open(path) as f:
        for line in f:
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                used.add(int(parts[2]))
    i = 900
    while i in used:
        i += 1
    return i


class Libvirtd:
    """A private virtlogd + libvirtd. start() returns self; stop() cleans up
    everything (also run by procs.cleanup_all, i.e. at exit or SIGTERM)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.dir = os.path.join(workdir, "lv")
        self.run_dir = os.path.join(self.dir, "run")
        self.log_dir = os.path.join(self.dir, "log")
        self.etc_dir = os.path.join(self.dir, "etc")
        self.scratch = os.path.join(self.dir, "scratch")
        self.socket = os.path.join(self.run_dir, "libvirt-sock")
        self.uri = "qemu:///system?socket=" + self.socket
        self.holder_log = os.path.join(self.dir, "holder.log")
        self.libvirtd_log = os.path.join(self.dir, "libvirtd.log")
        self.virtlogd_log = os.path.join(self.dir, "virtlogd.log")
        self.holder = None  # Popen of unshare
        self.ns_pid = None  # host PID of the holder (PID 1 inside)
        self.libvirtd = None  # Popen of nsenter running libvirtd
        self.virtlogd = None
        self.startup_seconds = None
        self._registered = False

    # -- set-up ---------------------------------------------------------------
    def _write_config(self):
        for d in (self.run_dir, self.log_dir, self.etc_dir, self.scratch):
            os.makedirs(d, exist_ok=True)
        files = {"libvirtd.conf": _LIBVIRTD_CONF % {"host_uuid": uuid.uuid4()},
                 "virtlogd.conf": _VIRTLOGD_CONF, "qemu.conf": _QEMU_CONF}
        for name, text in files.items():
            with open(os.path.join(self.etc_dir, name), "w") as f:
                f.write(text)

    def _mount_script(self):
        lines = ["mount -t tmpfs -o mode=0755,size=16M tmpfs '%s'" % self.scratch]
        overlaid = []

        def ensure_dir(path):
            # A mount point that the host lacks: mkdir it in an overlay of the
            # parent (upper layer on the private scratch tmpfs), never on the host.
            if os.path.isdir(path) or path in made:
                return
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                ensure_dir(parent)  # parent is now inside an overlay
            elif parent not in overlaid:
                n = len(overlaid)
                up, wk = "%s/ovl%d/u" % (self.scratch, n), "%s/ovl%d/w" % (self.scratch, n)
                lines.append("mkdir -p '%s' '%s'" % (up, wk))
                lines.append("mount -t overlay overlay -o 'lowerdir=%s,upperdir=%s,workdir=%s' '%s'"
                             % (parent, up, wk, parent))
                overlaid.append(parent)
            lines.append("mkdir -p '%s'" % path)
            made.add(path)

        made = set()
        # /run exists everywhere: a plain tmpfs over it hides the host's sockets.
        lines += ["mount -t tmpfs -o mode=0755 tmpfs /run",
                  "mkdir -p /run/libvirt /run/lock",
                  "mount --bind '%s' /run/libvirt" % self.run_dir]
        for d in ("/var/lib/libvirt", "/var/cache/libvirt"):
            ensure_dir(d)
            lines.append("mount -t tmpfs -o mode=0755 tmpfs %s" % d)
        ensure_dir("/var/log/libvirt")
        lines.append("mount --bind '%s' /var/log/libvirt" % self.log_dir)
        ensure_dir("/etc/libvirt")
        lines.append("mount --bind '%s' /etc/libvirt" % self.etc_dir)
        if subprocess.run(["getent", "passwd", "libvirt-qemu"], stdout=subprocess.DEVNULL).returncode:
            uid = _free_id("/etc/passwd")
            gid = _free_id("/etc/group")
            lines += ["cp /etc/passwd /etc/group '%s'/" % self.scratch,
                      "echo 'libvirt-qemu:x:%d:%d:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin'"
                      " >> '%s/passwd'" % (uid, gid, self.scratch),
                      "echo 'libvirt-qemu:x:%d:' >> '%s/group'" % (gid, self.scratch),
                      "mount --bind '%s/passwd' /etc/passwd" % self.scratch,
                      "mount --bind '%s/group' /etc/group" % self.scratch]
        return "\n".join(lines) + "\n"

    def start(self, timeout=60.0):
        """Makes the namespace, starts virtlogd and libvirtd, waits until the
        daemon answers on self.uri. Returns self."""
        t0 = time.monotonic()
        self._write_config()
        if not self._registered:
            procs.at_cleanup(self.stop)
            self._registered = True
        ready = os.path.join(self.dir, "ns-ready")
        self.holder = procs.spawn(
            ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
             "--kill-child", "python3", "-c", _HOLDER, self._mount_script(), ready],
            "libvirt-ns", stdout=self.holder_log, stderr=self.holder_log)
        procs.wait_until(lambda: os.path.exists(ready) or self.holder.poll() is not None, 20,
                         "the libvirt namespace holder")
        if self.holder.poll() is not None:
            raise LibvirtError("namespace set-up failed:\n" + util.tail(self.holder_log))
        self.ns_pid = _children_of(self.holder.pid)[0]
        self.virtlogd = self._spawn_daemon(["virtlogd"], "virtlogd", self.virtlogd_log)
        procs.wait_until(lambda: os.path.exists(os.path.join(self.run_dir, "virtlogd-sock"))
                         or self.virtlogd.poll() is not None, timeout, "virtlogd's socket")
        if self.virtlogd.poll() is not None:
            raise LibvirtError("virtlogd exited:\n" + util.tail(self.virtlogd_log))
        self.start_daemon(timeout)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _spawn_daemon(self, argv, name, log):
        # -p: the daemon lives in the holder's PID namespace (nsenter forks for
        # that), so it dies with the holder whatever happens to the test.
        return procs.spawn(["nsenter", "-t", str(self.ns_pid), "-m", "-p", "--"] + argv,
                           name, stdout=log, stderr=log)

    def start_daemon(self, timeout=60.0):
        """Starts libvirtd (again) in the namespace and waits until it answers."""
        with open(self.libvirtd_log, "a") as f:
            f.write("### libvirtd start at %s\n" % time.strftime("%H:%M:%S"))
        self.libvirtd = self._spawn_daemon(["libvirtd"], "libvirtd", self.libvirtd_log)

        def answers():
            if self.libvirtd.poll() is not None:
                raise LibvirtError("libvirtd exited with %s:\n%s" % (
                    self.libvirtd.returncode, util.tail(self.libvirtd_log)))
            r = subprocess.run(["virsh", "-c", self.uri, "version"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
            return r.returncode == 0
        procs.wait_until(answers, timeout, "libvirtd to answer on " + self.uri, interval=0.2,
                         on_fail=lambda: print(util.tail(self.libvirtd_log)))
        return self

    def daemon_pid(self):
        """Host PID of the running libvirtd (the child of its nsenter), or None."""
        if self.libvirtd is None or self.libvirtd.poll() is not None:
            return None
        kids = _children_of(self.libvirtd.pid)
        return kids[0] if kids else None

    def kill_daemon(self):
        """SIGKILL to libvirtd only: its domains keep running (their QEMUs are
        children of the holder). start_daemon() brings it back."""
        pid = procs.wait_until(self.daemon_pid, 10, "libvirtd's PID")
        os.kill(pid, signal.SIGKILL)
        self.libvirtd.wait(10)
        procs.stop(self.libvirtd)  # reaped: only forgets it
        self.libvirtd = None

    # -- use ------------------------------------------------------------------
    def virsh(self, *args, check=True, timeout=60):
        """Runs `virsh -c <uri> args...` from the host; returns stdout (str).
        Raises LibvirtError with stderr when virsh fails (unless check=False)."""
        r = subprocess.run(["virsh", "-c", self.uri] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check and r.returncode != 0:
            raise LibvirtError("virsh %s failed (%d): %s" % (
                " ".join(map(str, args)), r.returncode, r.stderr.decode(errors="replace").strip()))
        return r.stdout.decode(errors="replace")

    def nsenter(self, argv, check=True):
        """Runs argv inside the mount namespace (e.g. mount -o remount ...);
        returns the CompletedProcess (stdout/stderr as text)."""
        r = subprocess.run(["nsenter", "-t", str(self.ns_pid), "-m", "--"] + [str(a) for a in argv],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and r.returncode != 0:
            raise LibvirtError("in namespace: %s failed (%d): %s" % (
                " ".join(map(str, argv)), r.returncode, r.stderr.strip()))
        return r

    def ns_processes(self):
        """[(host pid, comm)] of every process in the holder's PID namespace
        (the holder itself excluded); [] once the holder is gone."""
        if self.ns_pid is None:
            return []
        ns = _ns_id(self.ns_pid, "pid_for_children")
        if ns is None:
            return []
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == self.ns_pid:
                continue
            if _ns_id(int(entry), "pid") == ns:
                try:
                    with open("/proc/%s/comm" % entry) as f:
                        out.append((int(entry), f.read().strip()))
                except OSError:
                    pass
        return out

    def host_pid(self, ns_pid):
        """The host PID of the namespace's process ns_pid (e.g. from a QEMU
        pidfile under run_dir/qemu), or None."""
        for pid, _comm in self.ns_processes():
            try:
                with open("/proc/%d/status" % pid) as f:
                    for line in f:
                        if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                            return pid
            except OSError:
                pass
        return None

    def running_domains(self):
        return [n for n in self.virsh("list", "--name").split() if n]

    # -- tear-down ------------------------------------------------------------
    def stop(self):
        """Destroys every running domain (libvirtd leaves QEMU running when it
        exits), stops libvirtd and virtlogd, then kills the holder, which ends
        whatever is left in the PID namespace. Idempotent."""
        if self._registered:
            procs.forget_cleanup(self.stop)
            self._registered = False
        if self.libvirtd is not None and self.libvirtd.poll() is None:
            try:
                for name in self.running_domains():
                    self.virsh("destroy", name, check=False, timeout=30)
            except Exception as e:  # a hung daemon: the holder's death ends the QEMUs
                print("      note: could not destroy the domains of the private libvirtd: %s" % e)
        for attr in ("libvirtd", "virtlogd"):
            p = getattr(self, attr)
            if p is not None:
                kids = _children_of(p.pid) if p.poll() is None else []
                for k in kids:
                    try:
                        os.kill(k, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    for k in kids:
                        try:
                            os.kill(k, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                procs.stop(p, timeout=5)
                setattr(self, attr, None)
        if self.holder is not None:
            if self.ns_pid is not None:
                try:
                    os.kill(self.ns_pid, signal.SIGKILL)  # PID 1: takes the namespace with it
                except ProcessLookupError:
                    pass
            procs.stop(self.holder, timeout=5)
            self.holder = None
        for _ in range(100):  # the kernel reaps the namespace asynchronously
            if not self.ns_processes():
                break
            time.sleep(0.05)

    def __enter__(self):
        return self.start() if self.holder is None else self

    def __exit__(self, *exc):
        self.stop()
        return False


# -- domains -------------------------------------------------------------------
class Domain:
    """A domain of a private libvirtd. data_path is the data disk (hda) file,
    fs_dir the tmpfs holding it (disk="tmpfs"), log the domain's QEMU log."""

    def __init__(self, lv, workdir, name, xml_path, disk, tmpfs_size, transient):
        self.lv = lv
        self.workdir = workdir
        self.name = name
        self.xml_path = xml_path
        self.disk = disk
        self.tmpfs_size = tmpfs_size
        self.transient = transient
        self.fs_dir = os.path.join(workdir, name + ".fs")
        self.data_path = (os.path.join(self.fs_dir, "disk.raw") if disk == "tmpfs"
                          else os.path.join(workdir, name + ".disk.raw") if disk == "plain" else None)
        self.boot_path = os.path.join(workdir, name + ".boot.img")
        self.log = os.path.join(lv.log_dir, "qemu", name + ".log")
        self._uuid = None

    @property
    def uuid(self):
        if self._uuid is None:
            self._uuid = self.lv.virsh("domuuid", self.name).strip()
        return self._uuid

    def _prepare_disk(self):
        if self.disk == "tmpfs":
            # A fresh tmpfs each start, as after a host reboot: mounted in the
            # namespace, so QEMU (spawned by libvirtd) sees it and the host does not.
            os.makedirs(self.fs_dir, exist_ok=True)
            r = self.lv.nsenter(["mountpoint", "-q", self.fs_dir], check=False)
            if r.returncode == 0:
                self.lv.nsenter(["umount", self.fs_dir])
            self.lv.nsenter(["mount", "-t", "tmpfs", "-o", "size=" + self.tmpfs_size, "tmpfs",
                             self.fs_dir])
            self.lv.nsenter(["truncate", "-s", DISK_SIZE, self.data_path])
        elif self.disk == "plain":
            with open(self.data_path, "ab") as f:
                f.truncate(64 << 20)

    def start(self, paused=False):
        """Starts the domain (creates it when transient); paused: its CPUs wait for
        `virsh resume` (QEMU's -S). Returns self."""
        self._prepare_disk()
        flags = ["--paused"] if paused else []
        if self.transient:
            self.lv.virsh("create", self.xml_path, *flags)
        else:
            self.lv.virsh("start", self.name, *flags)
        self._uuid = None
        return self

    def destroy(self):
        """virsh destroy (a transient domain is gone afterwards)."""
        self.lv.virsh("destroy", self.name)

    def undefine(self):
        self.lv.virsh("undefine", self.name)

    def grow_tmpfs(self, size="64M"):
        """Remounts the data disk's tmpfs bigger, inside the namespace."""
        self.lv.nsenter(["mount", "-o", "remount,size=" + size, self.fs_dir])

    def state(self):
        """`virsh domstate --reason`, e.g. "paused (I/O error)"."""
        return self.lv.virsh("domstate", "--reason", self.name).strip()

    def dumpxml(self):
        return self.lv.virsh("dumpxml", self.name)

    def disk_indexes(self):
        """{target dev: <source index=...>} from the live XML (an int, or None)."""
        out = {}
        root = ET.fromstring(self.dumpxml())
        for d in root.findall("./devices/disk"):
            src = d.find("source")
            idx = src.get("index") if src is not None else None
            out[d.find("target").get("dev")] = int(idx) if idx is not None else None
        return out

    def qemu_pid(self):
        """Host PID of the domain's QEMU (from libvirt's pidfile), or None."""
        try:
            with open(os.path.join(self.lv.run_dir, "qemu", self.name + ".pid")) as f:
                return self.lv.host_pid(int(f.read().strip()))
        except (OSError, ValueError):
            return None

    def wait_state(self, pattern, timeout=30.0):
        """Waits until `virsh domstate --reason` matches the regex; returns it."""
        return procs.wait_until(lambda: re.search(pattern, self.state()) and self.state(), timeout,
                                "%s state /%s/" % (self.name, pattern),
                                on_fail=lambda: print(util.tail(self.log)))


def _domain_xml(name, disk, data_path, boot_path, error_policy, write_iops=None):
    devices = ["<emulator>%s</emulator>" % QEMU]
    if data_path is not None:
        pol = ""
        if error_policy:
            pol = " error_policy='%s' rerror_policy='%s'" % (error_policy, error_policy)
        devices.append(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'%s/>"
            "<source file='%s'/><target dev='hda' bus='ide'/>%s"
            "<address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>"
            % (pol, data_path, "<iotune><write_iops_sec>%d</write_iops_sec></iotune>" % write_iops
               if write_iops else ""))
    if boot_path is not None:
        devices.append(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            "<source file='%s'/><target dev='hdc' bus='ide'/>"
            "<address type='drive' controller='0' bus='1' target='0' unit='0'/>"
            "<boot order='1'/></disk>" % boot_path)
    devices += ["<controller type='ide' index='0'/>", "<controller type='usb' model='none'/>",
                "<memballoon model='none'/>"]
    return ("<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
            "<on_crash>destroy</on_crash><devices>%s</devices></domain>\n"
            % (name, "".join(devices)))


def define_domain(lv, workdir, name, guest=True, disk="tmpfs", tmpfs_size="4M",
                  error_policy="stop", start=True, transient=False, write_iops=None):
    """A domain of lv. guest: boot the writer boot sector from hdc; disk:
    "tmpfs" (hda on a tmpfs of tmpfs_size: real ENOSPC), "plain" (hda on a
    64M sparse file that never fails) or None; error_policy: libvirt's
    error_policy and rerror_policy of hda (stop, report, ignore, enospace; None
    for libvirt's default). transient: `virsh create` at start, nothing defined.
    write_iops: QEMU's I/O throttle on hda (<iotune>), which bounds how many
    failing writes, and so BLOCK_IO_ERROR events, a second the guest makes.
    Returns a Domain (started when start=True; a transient one always is)."""
    d = Domain(lv, workdir, name, os.path.join(workdir, name + ".xml"), disk, tmpfs_size, transient)
    if guest:
        guest_mod.boot_image(d.boot_path)
    with open(d.xml_path, "w") as f:
        f.write(_domain_xml(name, disk, d.data_path, d.boot_path if guest else None, error_policy,
                            write_iops))
    if not transient:
        lv.virsh("define", d.xml_path)
    if start or transient:
        d.start()
    return d


def define_writer_domain(lv, workdir, name, tmpfs_size="4M", error_policy="stop", start=True,
                         transient=False, write_iops=None):
    """The ENOSPC domain: the guest writes hda, which lives on a small tmpfs."""
    return define_domain(lv, workdir, name, guest=True, disk="tmpfs", tmpfs_size=tmpfs_size,
                         error_policy=error_policy, start=start, transient=transient,
                         write_iops=write_iops)


def define_idle_domain(lv, workdir, name, disk=None, start=True, transient=False):
    """A domain whose guest does nothing (no boot disk: the firmware just
    waits), optionally with a never-failing data disk (disk="plain")."""
    return define_domain(lv, workdir, name, guest=False, disk=disk, start=start, transient=transient)


def monitor_events(lv, out_path, domain=None):
    """Starts `virsh qemu-monitor-event --loop --timestamp` (all domains, or
    one) writing to out_path; returns the Popen (stop it with procs.stop)."""
    argv = ["virsh", "-c", lv.uri, "qemu-monitor-event", "--loop", "--timestamp"]
    if domain:
        argv += ["--domain", domain]
    return procs.spawn(argv, "virsh-events", stdout=out_path, stderr=out_path)


def read_events(out_path):
    """Parses monitor_events output: [(timestamp str, domain, event, data or None)]."""
    out = []
    try:
        with open(out_path) as f:
            text = f.read()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        m = re.match(r"^(\S+ \S+): event (\S+) for domain '([^']*)': (.*)$", line)
        if m:
            data = m.group(4).strip()
            out.append((m.group(1), m.group(3), m.group(2),
                        None if data == "<null>" else json.loads(data)))
    return out
