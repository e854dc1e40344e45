"""peers.py - scripted QMP peers (tests/tools/qmp_peer.py) streaming events, one per VM."""
import os

from . import procs
from . import util

PEER = os.path.join(util.SOURCE_DIR, "tests", "tools", "qmp_peer.py")


def start_event_peers(workdir, names, count, interval=0.02):
    """Starts one qmp_peer per name in events mode (count events each, --name name)
    and waits for their sockets. Returns [(name, socket path)] for bridge.Bridge."""
    vms = []
    for name in names:
        sock = os.path.join(workdir, name + ".qmp")
        procs.spawn(["/usr/bin/python3", PEER, "--socket", sock, "--mode", "events",
                     "--count", str(count), "--name", name, "--interval", str(interval)],
                    "qmp_peer-" + name, stderr=os.path.join(workdir, name + ".peer.log"))
        vms.append((name, sock))
    procs.wait_until(lambda: all(os.path.exists(s) for _, s in vms), 15,
                     "%d peer sockets" % len(vms))
    return vms
