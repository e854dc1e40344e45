/*
 * vm_state_copies.h - one state-topic copy per VM per loop turn (the bottom vm_* layer).
 * Private to the vm_* files.
 */
#ifndef QB_VM_STATE_COPIES_H
#define QB_VM_STATE_COPIES_H

#include "vm.h"

#include <stdint.h>
#include <uv.h>

/* Publishes vm's state copy now, with the time of the last event that changed it. */
typedef void (*qb_vm_copy_publish_cb)(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec);

/*
 * Creates the per-turn state copy list on loop; each due copy is sent
 * through publish. Returns QB_OK with *out, or QB_ENOMEM.
 */
int qb_vm_state_copies_new(uv_loop_t *loop, qb_vm_copy_publish_cb publish,
                           struct qb_vm_state_copies **out);

/* Closes c (freed from its handle's close callback); pending copies are dropped. NULL is fine. */
void qb_vm_state_copies_close(struct qb_vm_state_copies *c);

/*
 * Marks vm's state as changed by an event of time ts: one copy goes to the
 * state topic at the end of this loop turn, with the time of the last event
 * marked and vm's sequence as it is then.
 */
void qb_vm_state_copy_mark(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec);

/*
 * Publishes vm's pending state copy now, if it has one, under vm's current
 * sequence: call it before the state is replaced and before a new sequence is
 * taken for the replacement.
 */
void qb_vm_state_copy_flush(struct qb_vm *vm);

#endif
