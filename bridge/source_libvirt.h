/*
 * source_libvirt.h - the libvirt source: VMs run by libvirt, through libvirtd.
 *
 * With libvirt.uri set, the bridge keeps one connection to libvirtd and takes
 * every running domain whose name matches libvirt.include and not
 * libvirt.exclude as a VM of the same name (the VM name rules apply; a name
 * another source already has is refused with a log line). libvirt relays each
 * domain's QMP events (virConnectDomainQemuMonitorEventRegister, which does
 * not taint the domain); lifecycle events say when a domain starts, stops or
 * is undefined. Snapshots and commands use libvirt's stable APIs only
 * (libvirt_queries.h, libvirt_commands.h), with disks named by their target.
 *
 * The connection: libvirt's event loop runs on the bridge's loop
 * (libvirt_event_loop.h), every blocking call on one worker thread
 * (libvirt_worker.h), so a hung libvirtd stalls no other VM or transport.
 * Keepalive (libvirt.keepalive_interval, keepalive_count) and libvirt's close
 * callback notice a lost libvirtd: every session ends (bridge.vm.disconnected),
 * the connection is made again with the back-off of qmp.reconnect_initial and
 * reconnect_max, and every domain is resynced with a new snapshot. A domain
 * that was undefined meanwhile is removed; a transient domain that stopped is
 * removed too (libvirt forgets it); a persistent one stays, disconnected,
 * until it runs again.
 */
#ifndef QB_SOURCE_LIBVIRT_H
#define QB_SOURCE_LIBVIRT_H

#include "source.h"

extern const struct qb_source_ops qb_source_libvirt_ops;

#endif
