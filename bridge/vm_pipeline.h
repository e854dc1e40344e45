/*
 * vm_pipeline.h - the ordered event pipeline of one VM: source event in,
 * published event out, in the order the VM raised them. Private to the vm_*
 * files.
 */
#ifndef QB_VM_PIPELINE_H
#define QB_VM_PIPELINE_H

#include "vm.h"

/* Makes vm's normaliser memory (named after vm). Returns QB_OK or QB_ENOMEM. */
int qb_vm_pipe_init(struct qb_vm *vm);

/* Frees what vm's pipeline holds (normaliser, pending event, backlog); publishes nothing. */
void qb_vm_pipe_free(struct qb_vm *vm);

/*
 * A new session (snapshot NULL) or its snapshot (borrowed, as built by
 * qb_vm_state_from_queries): resets the normaliser's per-session memory.
 */
void qb_vm_pipe_reset(struct qb_vm *vm, const json_t *snapshot);

/* Events read before the session had this VM (taken): they wait first in the backlog. */
void qb_vm_pipe_take_early(struct qb_vm *vm, struct qb_held_events *early);

/* While hold is true (the snapshot is being taken) events wait in the backlog. */
void qb_vm_pipe_hold(struct qb_vm *vm, bool hold);

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
void qb_vm_drain(struct qb_vm *vm);

/* The on_event of a VM's link: processes ev (borrowed) now or queues it in the backlog. */
void qb_vm_on_event(void *arg, const struct qb_source_event *ev);

#endif
