#!/usr/bin/python3
"""A reload that widens the replay window does not reopen it for forgotten commands.

commands.max_age 1s, max_skew 1s (a window of 3 s) and cache_size 1. stop s-1 runs; 4 s
later stop s-2 runs, and the full cache forgets s-1 (finished, its window over). Then the
configuration is reloaded (SIGHUP) with max_age 60s, and 4 s later (s-2's window is over
too, so the cache has room) s-1 is sent again with its old time: 9 s old, well inside 60 s,
it would pass the age check with nothing left to tell it from a new command, and run
again. It must be refused "expired" naming the grown window, and QEMU must have received
two stops, not three."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, cmdrig, commands, procs  # noqa: E402

with check.Test("command_window_reload") as t:
    rig = cmdrig.CommandRig(t, "commands: { enabled: true, allow: [stop, cont], max_age: 1s, "
                               "max_skew: 1s, cache_size: 1 }\n").start()

    t.section("s-1 runs; s-2 runs after s-1's window, and the cache forgets s-1")
    s1 = commands.make("stop", "vm1", cmd_id="s-1")
    rig.publish(s1)
    t.expect(rig.result("s-1")["data"]["status"] == "ok", "s-1 ok")
    time.sleep(4)
    s2 = commands.make("stop", "vm1", cmd_id="s-2")
    rig.publish(s2)
    t.expect(rig.result("s-2")["data"]["status"] == "ok", "s-2 ok (the cache of one let s-1 go)")
    stops = rig.qmp_seen().count("stop")
    t.expect(stops == 2, "QEMU received two stops", rig.qmp_seen())

    t.section("reload with max_age 60s: the old s-1 is refused, not run again")
    yaml = rig.br.yaml.replace("max_age: 1s", "max_age: 60s")
    assert yaml != rig.br.yaml
    with open(rig.br.conf, "w") as f:
        f.write(yaml)
    n = len(rig.br.log_lines(" in force: VMs "))
    os.kill(rig.br.proc.pid, signal.SIGHUP)
    procs.wait_until(lambda: len(rig.br.log_lines(" in force: VMs ")) > n, 20, "the reload")
    time.sleep(4)  # s-2's window is over too: the cache has room for s-1 again
    rig.publish(s1)
    line = rig.br.wait_log("command s-1 rejected (expired)")[0]
    t.expect("replay window grew" in line, "s-1 again -> rejected expired: the window grew", line)
    time.sleep(0.5)
    t.expect(rig.qmp_seen().count("stop") == stops, "QEMU received no third stop",
             rig.qmp_seen())
    t.expect(rig.br.stop() == 0, "SIGTERM: exit 0")
