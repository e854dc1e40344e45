/*
 * command_limits.c - the size rules of resize-and-cont (see command_limits.h).
 */
#include "command_limits.h"

#include "error.h"

#include <inttypes.h>
#include <stdio.h>

int qb_command_resize_size(const struct qb_command *cmd, const struct qb_command_policy *pol,
                           uint64_t cur, uint64_t *new_size, const char **cls, char *msg,
                           size_t msglen)
{
    uint64_t n;

    *cls = QB_CMD_ERR_LIMIT;
    if (cmd->has_size) {
        n = cmd->size;
    } else {
        if (cmd->grow_by > UINT64_MAX - cur) {
            snprintf(msg, msglen, "growing %" PRIu64 " by %" PRIu64 " overflows", cur,
                     cmd->grow_by);
            return QB_EINVAL;
        }
        n = cur + cmd->grow_by;
    }
    if (n < cur) {
        snprintf(msg, msglen, "shrink from %" PRIu64 " to %" PRIu64 " refused", cur, n);
        return QB_EINVAL;
    }
    if (n > (uint64_t)INT64_MAX) {
        snprintf(msg, msglen, "new size %" PRIu64 " is over QEMU's maximum", n);
        return QB_EINVAL;
    }
    if (pol != NULL && pol->max_size != 0 && n > pol->max_size) {
        snprintf(msg, msglen, "new size %" PRIu64 " exceeds max_size %" PRIu64, n, pol->max_size);
        return QB_EINVAL;
    }
    if (pol != NULL && pol->max_growth != 0 && n - cur > pol->max_growth) {
        snprintf(msg, msglen,
                 "growth of %" PRIu64 " bytes (from %" PRIu64 " to %" PRIu64
                 ") exceeds max_growth %" PRIu64,
                 n - cur, cur, n, pol->max_growth);
        return QB_EINVAL;
    }
    /* Equal sizes pass: a same-size resize is accepted, and the resume still has to happen. */
    *cls = NULL;
    *new_size = n;
    return QB_OK;
}
