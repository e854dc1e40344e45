/*
 * vm_commands.h - inbound commands on their VM: a FIFO per VM, one running at
 * a time, run by the VM's source; results published on the VM's stream and
 * as replies. Private to the vm_* files (the public API is vm_manager.h's).
 */
#ifndef QB_VM_COMMANDS_H
#define QB_VM_COMMANDS_H

#include "vm.h"

/*
 * Queues cmd on vm (see qb_vm_manager_submit_command): QB_OK (cmd is taken),
 * or QB_ECLOSED / QB_EAGAIN / QB_ENOMEM with err filled (cmd stays the
 * caller's).
 */
int qb_vm_cmds_submit(struct qb_vm *vm, struct qb_command *cmd,
                      const struct qb_command_origin *origin, qb_vm_command_done_cb done, void *arg,
                      struct qb_command_error *err);

/*
 * Publishes a bridge.command.result (borrowed) for a command that did not run
 * now: on vm's stream unless reply_only or vm is NULL, and as a reply on the
 * origin's transport (may be NULL); then acks the origin. vm_name names the
 * subject when vm is NULL. A reply_only result is neither counted nor logged.
 */
void qb_vm_cmds_publish_result(struct qb_vm_manager *m, struct qb_vm *vm, const char *vm_name,
                               const json_t *result, const struct qb_command_origin *origin,
                               bool reply_only);

/* Rejects every command still waiting (not the running one) with cls and message. */
void qb_vm_cmd_flush(struct qb_vm *vm, const char *cls, const char *message);

/* Completes the running query-state: the snapshot was published (ok) or the session went away. */
void qb_vm_cmd_finish_state(struct qb_vm *vm, bool ok);

/* Transport t is going away: commands of vm that came on it send no reply and no ack. */
void qb_vm_cmds_forget_transport(struct qb_vm *vm, const struct qb_transport *t);

/* Frees every command still waiting on vm, without publishing. */
void qb_vm_cmds_free(struct qb_vm *vm);

#endif
