/*
 * vm_snapshot.h - the snapshot of each session: what state a VM is in when
 * its session starts (and after a command changed it). Private to the vm_*
 * files.
 */
#ifndef QB_VM_SNAPSHOT_H
#define QB_VM_SNAPSHOT_H

#include "vm.h"

/*
 * A session came up: prepares its bridge.vm.connected (published when the
 * UUID answers, before the snapshot) and starts the snapshot.
 */
void qb_vm_snapshot_begin(struct qb_vm *vm);

/* Asks the source the snapshot queries; the VM's events wait until all have answered. */
void qb_vm_start_resync(struct qb_vm *vm);

/*
 * Publishes the session's bridge.vm.connected if it is still due, with the
 * UUID of uuid_reply (borrowed query-uuid "return", NULL when the query
 * failed or did not run: uuid null).
 */
void qb_vm_publish_connected(struct qb_vm *vm, const json_t *uuid_reply);

/* Frees what the snapshot part of vm holds; publishes nothing. */
void qb_vm_snap_free(struct qb_vm *vm);

#endif
