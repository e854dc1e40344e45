/*
 * command_limits.h - the size rules of resize-and-cont, shared by every source
 * that runs it (QMP's block_resize, libvirt's virDomainBlockResize), so the
 * policy a consumer signed against reads the same whatever runs the VM.
 */
#ifndef QB_COMMAND_LIMITS_H
#define QB_COMMAND_LIMITS_H

#include "command.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Works out the size resize-and-cont asks for on a disk of cur bytes (size, or
 * cur + grow_by) and holds it against shrinking, int64 range and the policy's
 * max_size and max_growth (policy may be NULL: no limits).
 * Returns QB_OK with *new_size, or QB_EINVAL with *cls (static QB_CMD_ERR_*) and
 * msg (msglen bytes, NUL-terminated) saying why.
 */
int qb_command_resize_size(const struct qb_command *cmd, const struct qb_command_policy *policy,
                           uint64_t cur, uint64_t *new_size, const char **cls, char *msg,
                           size_t msglen);

#endif
