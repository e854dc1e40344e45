/* error.c - descriptions for enum qb_err, one table so log lines and tests agree. */
#include "error.h"

static const char *const qb_error_texts[] = {
    [0] = "success",
    [-QB_ENOMEM] = "out of memory",
    [-QB_EINVAL] = "invalid argument",
    [-QB_EPARSE] = "malformed input",
    [-QB_ETOOBIG] = "input over size limit",
    [-QB_EIO] = "I/O error",
    [-QB_EAGAIN] = "resource temporarily unavailable",
    [-QB_ECLOSED] = "closed",
    [-QB_ETIMEDOUT] = "timed out",
    [-QB_ENOTFOUND] = "not found",
    [-QB_EPROTO] = "protocol error",
    [-QB_ECONFIG] = "configuration error",
    [-QB_EQMP] = "QMP command failed",
    [-QB_EEXIST] = "already exists",
    [-QB_ENOSPC] = "no space left",
    [-QB_EBUSY] = "in use by another process",
};

const char *qb_strerror(int err)
{
    int idx = -err;

    if (idx < 0 || (unsigned)idx >= sizeof(qb_error_texts) / sizeof(qb_error_texts[0]) ||
        qb_error_texts[idx] == 0)
        return "unknown error";
    return qb_error_texts[idx];
}
