/*
 * vm_types.h - the few types the VM manager's callers and its layers share:
 * where a command came from, its done callback, and the counter kinds.
 * vm_manager.h (the public API) includes it; the vm_* layers below the
 * manager include it instead of vm_manager.h, so none of them depends on
 * the file at the top.
 */
#ifndef QB_VM_TYPES_H
#define QB_VM_TYPES_H

#include "command.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct qb_transport;

/*
 * Where a command came from and where its answer goes. The manager copies
 * what it keeps; the transport must outlive the manager.
 */
struct qb_command_origin {
    struct qb_transport *transport;
    uint64_t ack_token;
    const char *reply_topic; /* may be NULL */
    const void *correlation; /* may be NULL */
    size_t correlation_len;
};

/* A queued command finished: result (borrowed) has been published. cmd is borrowed. */
typedef void (*qb_vm_command_done_cb)(void *arg, const struct qb_command *cmd,
                                      const json_t *result);

/*
 * Counters since start, keyed by text: events published by type
 * (QB_VM_COUNT_EVENTS, key2 NULL) and command results by command name and
 * status (QB_VM_COUNT_COMMANDS).
 */
enum qb_vm_count { QB_VM_COUNT_EVENTS, QB_VM_COUNT_COMMANDS };

#endif
