/*
 * vm_publish.h - what a VM publishes through the one door (publish.h): events,
 * its state as event and state copy, bridge events about it; and the
 * counters of what was published. Private to the vm_* files.
 */
#ifndef QB_VM_PUBLISH_H
#define QB_VM_PUBLISH_H

#include "vm.h"

/* Opens vm's stream (its numbering: remembered, spooled or new). Returns QB_OK or QB_ENOMEM. */
int qb_vm_out_open(struct qb_vm *vm);

/* Frees what vm published from (its state, its stream); publishes nothing. */
void qb_vm_out_free(struct qb_vm *vm);

/*
 * Counts one (which, key, key2) in m's counters; returns the interned key
 * (borrowed, lives as long as m) or NULL when out of memory (the count is
 * lost, nothing else).
 */
const char *qb_vm_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                        const char *key2);

/* Calls cb for every counter of kind which; keys are borrowed for the call. */
void qb_vm_counts_foreach(const struct qb_vm_manager *m, enum qb_vm_count which,
                          void (*cb)(void *arg, const char *key, const char *key2, uint64_t n),
                          void *arg);

/* Frees m's counters. */
void qb_vm_counts_free(struct qb_vm_manager *m);

/*
 * The state copy of vm (vm_state_copies.h's callback): its held state on the
 * state channel under its current sequence, id suffix ".state", time ts.
 */
void qb_vm_publish_state_copy(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec);

/*
 * Clears vm's retained state in every transport: a QB_MSG_STATE message with
 * no payload (MQTT: an empty retained message; Kafka: a tombstone). A state
 * copy still pending goes first; vm holds no state afterwards.
 */
void qb_vm_publish_state_clear(struct qb_vm *vm);

/*
 * Publishes the VM's held state as a qmp.vm.state event under a new sequence,
 * and the same envelope (same id, same time) to the state channel. A state
 * copy still pending goes first, under the old sequence.
 */
void qb_vm_publish_state_event(struct qb_vm *vm);

/*
 * Replaces vm's state by held (taken; a pending copy of the old state goes
 * first) and publishes it as qb_vm_publish_state_event does.
 */
void qb_vm_publish_snapshot(struct qb_vm *vm, struct qb_vm_state *held);

/*
 * The session ended: publishes bridge.vm.disconnected (data borrowed, may be
 * NULL: not published) and the last known state marked connected: false.
 */
void qb_vm_publish_disconnected(struct qb_vm *vm, const json_t *data);

/* Publishes a bridge-made event (data borrowed) at the bridge's clock; returns its sequence. */
uint64_t qb_vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data);

/*
 * Publishes a complete normalised event (borrowed); if it changed the state,
 * marks the state for a copy to the state topic at the end of the turn.
 */
void qb_vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev);

#endif
