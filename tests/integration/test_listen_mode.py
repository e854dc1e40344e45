#!/usr/bin/python3
"""Listen mode (issue 7): QEMU connects to the bridge, like Proxmox's qmeventd.

The bridge listens on <workdir>/qb.sock (qmp.listen, no vms: at all). Two real QEMUs connect
to it by themselves with -chardev socket,...,reconnect=1 -mon chardev=qb,mode=control:
guest-l (-name guest-l) and one without -name, which must be named by the template
"vm-{pid}" with QEMU's own pid (SO_PEERCRED). For both: bridge.vm.connected (address
"listen:<path> pid <pid>") then the qmp.vm.state snapshot, under the right name. stop/cont
through QEMU's other monitor give qmp.vm.stopped/resumed. Before the QEMUs start, a silent
peer takes the only naming slot (qmp.max_connecting: 1): no QEMU is taken until its handshake
times out (connect_timeout) and it is closed. A third QEMU claiming the live
name guest-l is refused with a log line and guest-l is not disturbed. Then the bridge is
restarted (SIGTERM, start again): both QEMUs ride it out (same processes, their chardevs
reconnect) and the new bridge publishes connected + snapshot for both again, and events
flow again. Finally guest-l's QEMU is restarted: the same VM entry gets the new session
(disconnected, connected, snapshot) with its numbering continuing, and the bridge exits 0."""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, procs, qemu, schema, streamcheck, util  # noqa: E402


def stream(br, vm=None, start=0):
    envs = util.read_jsonl(br.events_path)[start:]
    return [e for e in envs if vm is None or e["subject"] == vm]


def types(envs):
    return [e["type"] for e in envs]


def listen_qemu(d, name, sock, guest_name=None):
    extra = ["-chardev", "socket,id=qb,path=%s,reconnect=1" % sock, "-mon", "chardev=qb,mode=control"]
    if guest_name:
        extra += ["-name", guest_name]
    return qemu.Qemu(d, name, guest=False, disk=None, extra=extra)


def wait_connected(br, vm, start, what):
    """Waits for connected then the snapshot of vm in the stream from index start; returns both."""
    procs.wait_until(lambda: any(check.is_snapshot(e) for e in stream(br, vm, start)), 30, what,
                     on_fail=lambda: print(br.tail()))
    envs = stream(br, vm, start)
    first = lambda ty: [e for e in envs if e["type"] == ty][0]  # noqa: E731
    return first("bridge.vm.connected"), [e for e in envs if check.is_snapshot(e)][0], envs


def stop_cont(t, br, vm, q):
    """stop/cont on QEMU's test monitor: the bridge publishes stopped then resumed for vm."""
    n = len(stream(br))
    q.qmp.cmd("stop")
    procs.wait_until(lambda: "qmp.vm.stopped" in types(stream(br, vm, n)), 20, vm + " stopped")
    q.qmp.cmd("cont")
    procs.wait_until(lambda: "qmp.vm.resumed" in types(stream(br, vm, n)), 20, vm + " resumed")
    t.expect(types(stream(br, vm, n)) == ["qmp.vm.stopped", "qmp.vm.resumed"],
             "%s: stop/cont give qmp.vm.stopped then qmp.vm.resumed" % vm, types(stream(br, vm, n)))


with check.Test("listen_mode") as t:
    d = t.workdir
    sock = os.path.join(d, "qb.sock")
    br = bridge.Bridge(d, [], log_level="debug",
                       qmp_extra={"listen": json.dumps("unix:" + sock),
                                  "listen_name_template": json.dumps("vm-{pid}"),
                                  "max_connecting": 1, "connect_timeout": "2s"})
    br.start()
    t.add_log("bridge", br.log)
    br.wait_log("listen mode: QEMUs connect to unix:" + sock)
    t.expect(oct(os.stat(sock).st_mode & 0o777) == "0o660", "listening socket has mode 0660",
             oct(os.stat(sock).st_mode & 0o777))

    t.section("a silent peer holds the only naming slot (qmp.max_connecting: 1)")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(sock)
    me = "[listen:%s pid %d]" % (sock, os.getpid())
    br.wait_log(me, "QEMU connected")
    br.wait_log("not accepting until a connection is named")
    t.ok("accepted, then the listener stops accepting")

    t.section("two QEMUs connect by themselves")
    ql = listen_qemu(d, "l", sock, "guest-l").start()
    t.add_log("qemu guest-l", ql.log)
    qp = listen_qemu(d, "p", sock).start()
    t.add_log("qemu without -name", qp.log)
    ql.wait_ready()
    qp.wait_ready()
    pid_l, pid_p = ql.proc.pid, qp.proc.pid
    name_p = "vm-%d" % pid_p
    for vm, pid in (("guest-l", pid_l), (name_p, pid_p)):
        conn, snap, envs = wait_connected(br, vm, 0, "connected + snapshot of " + vm)
        t.expect(types(envs)[:2] == ["bridge.vm.connected", "qmp.vm.state"],
                 "%s: connected then qmp.vm.state, nothing before" % vm, types(envs))
        t.expect(conn["data"]["address"] == "listen:%s pid %d" % (sock, pid),
                 "%s: address names the socket and QEMU's pid %d" % (vm, pid), conn["data"]["address"])
        t.expect(snap["data"]["run_state"] == "running", "%s: snapshot says running" % vm,
                 snap["data"]["run_state"])
    log = br.log_text().splitlines()
    closed = check.first_index(log, lambda l: me in l and "closed before it was named" in l)
    added = check.first_index(log, lambda l: "] added, QMP at listen:" in l)
    t.expect(0 <= closed < added, "no QEMU was taken before the silent peer timed out of its slot",
             log[closed] if closed >= 0 else None)
    silent.settimeout(5)
    t.expect(silent.recv(100) == b"", "the silent peer's connection was closed")
    silent.close()
    t.expect(sorted({e["subject"] for e in stream(br)}) == sorted(["guest-l", name_p]),
             "only guest-l and the pid-named VM %s exist" % name_p, {e["subject"] for e in stream(br)})

    t.section("events flow")
    stop_cont(t, br, "guest-l", ql)
    stop_cont(t, br, name_p, qp)

    t.section("a second QEMU claiming the live name guest-l is refused")
    n = len(stream(br))
    qdup = listen_qemu(d, "dup", sock, "guest-l").start()
    t.add_log("qemu duplicate guest-l", qdup.log)
    qdup.wait_ready()
    line = br.wait_log("refusing the QMP connection from pid %d" % qdup.proc.pid,
                       "already has a live session")
    t.ok("refused with a log line", line[0])
    qdup.stop()
    t.expect(stream(br, start=n) == [], "nothing published for the refused connection; guest-l undisturbed",
             types(stream(br, start=n)))
    stop_cont(t, br, "guest-l", ql)

    t.section("bridge restart: QEMU rides it out")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(not os.path.exists(sock), "the socket file is removed at shutdown")
    for vm in ("guest-l", name_p):
        t.expect(types(stream(br, vm))[-2:] == ["bridge.vm.disconnected", "qmp.vm.state"] and
                 stream(br, vm)[-1]["data"]["connected"] is False,
                 "%s: bridge.vm.disconnected (and the state, connected: false) at shutdown" % vm,
                 types(stream(br, vm))[-3:])
    rep = streamcheck.check(stream(br), expect_first={"guest-l": 1, name_p: 1})
    t.expect(rep.ok(), "first run: every stream contiguous from 1", str(rep))
    run1 = len(stream(br))
    br.start()
    for vm in ("guest-l", name_p):
        conn, snap, envs = wait_connected(br, vm, run1, "connected + snapshot of %s after the restart" % vm)
        t.expect(types(envs)[:2] == ["bridge.vm.connected", "qmp.vm.state"],
                 "%s: connected + snapshot again from the new bridge" % vm, types(envs))
    t.expect(ql.proc.poll() is None and qp.proc.poll() is None and
             (ql.proc.pid, qp.proc.pid) == (pid_l, pid_p),
             "both QEMU processes lived through the restart (same pids)")
    stop_cont(t, br, "guest-l", ql)
    stop_cont(t, br, name_p, qp)

    t.section("guest-l's QEMU restarts: same entry, numbering continues")
    n = len(stream(br))
    last = int(stream(br, "guest-l")[-1]["sequence"])
    ql.stop()
    procs.wait_until(lambda: "bridge.vm.disconnected" in types(stream(br, "guest-l", n)), 20,
                     "guest-l disconnected")
    br.wait_log("[guest-l] waiting for QEMU to connect again")
    ql2 = listen_qemu(d, "l", sock, "guest-l").start()
    t.add_log("qemu guest-l (restarted)", ql2.log)
    ql2.wait_ready()
    conn, snap, envs = wait_connected(br, "guest-l", n, "guest-l back")
    i = types(envs).index("bridge.vm.disconnected")  # after qmp.vm.shutdown (SIGTERM) if any
    t.expect(types(envs)[i:i + 4] == ["bridge.vm.disconnected", "qmp.vm.state", "bridge.vm.connected",
                                      "qmp.vm.state"] and check.is_snapshot(envs[i + 3]),
             "guest-l: disconnected (state connected: false), connected, snapshot", types(envs))
    t.expect([int(e["sequence"]) for e in envs] == list(range(last + 1, last + 1 + len(envs))),
             "guest-l: the same entry, its sequence continues from %d" % last,
             [e["sequence"] for e in envs])
    t.expect(conn["data"]["address"] == "listen:%s pid %d" % (sock, ql2.proc.pid),
             "guest-l: address names the new QEMU's pid", conn["data"]["address"])
    t.expect(len(br.log_lines("[guest-l] added")) == 2, "no second guest-l entry (one per bridge run)",
             br.log_lines("[guest-l] added"))

    rep = streamcheck.check(stream(br)[run1:], expect_first={"guest-l": 1, name_p: 1})
    t.expect(rep.ok(), "second run: every stream contiguous from 1", str(rep))

    t.section("shutdown with a connection still unnamed")
    k = len(br.log_lines(me, "QEMU connected"))
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(sock)
    procs.wait_until(lambda: len(br.log_lines(me, "QEMU connected")) > k, 10, "the silent peer accepted")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 (sanitizer builds: no leak of the unnamed session)", rc)
    silent.close()
    for e in stream(br):
        schema.validate_envelope(e)
    t.ok("every envelope of both runs matches its schema", len(stream(br)))
    t.expect(qp.proc.poll() is None, "QEMU without -name still running after the bridge stopped")
