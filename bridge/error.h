/*
 * error.h - the one error enum of qmp-bridge.
 *
 * Every function that can fail returns 0 (QB_OK) or one of these negative codes,
 * and logs a line with context (VM, topic, file:line) where the context is known.
 * Set-up functions also fill a caller's errbuf so the user sees which key or VM failed.
 */
#ifndef QB_ERROR_H
#define QB_ERROR_H

enum qb_err {
    QB_OK = 0,
    QB_ENOMEM = -1,    /* allocation failed */
    QB_EINVAL = -2,    /* invalid argument or value */
    QB_EPARSE = -3,    /* malformed input: JSON, YAML, QMP */
    QB_ETOOBIG = -4,   /* over a configured size cap */
    QB_EIO = -5,       /* socket or file I/O failed */
    QB_EAGAIN = -6,    /* not now: queue full, link down; retry later */
    QB_ECLOSED = -7,   /* the object is closed or closing */
    QB_ETIMEDOUT = -8, /* a deadline passed */
    QB_ENOTFOUND = -9, /* no such VM, key, file, job */
    QB_EPROTO = -10,   /* the peer broke the protocol */
    QB_ECONFIG = -11,  /* configuration error */
    QB_EQMP = -12,     /* QEMU answered a command with an error */
    QB_EEXIST = -13,   /* already exists */
    QB_ENOSPC = -14,   /* no space left: spool at its size limit or its filesystem full */
    QB_EBUSY = -15,    /* in use by another process (spool directory lock) */
};

/* Returns a static, never-NULL description of err (also for unknown codes). */
const char *qb_strerror(int err);

#endif
