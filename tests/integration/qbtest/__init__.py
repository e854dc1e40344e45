"""qbtest - helpers for the qmp-bridge integration tests.

Modules: procs (children, cleanup by PID), util (ports, tmp dirs, log tails),
guest (the boot-sector guest), qmp (a test QMP client), qemu (QEMU scenarios),
libvirt (a private libvirtd and its domains), mqtt (mosquitto broker and
subscriber), bridge (the qmp-bridge under test), check (assertions that print
what they checked and the logs on failure).
"""
