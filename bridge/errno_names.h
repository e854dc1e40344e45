/*
 * errno_names.h - QEMU's error text back to a lower-case errno name.
 *
 * BLOCK_IO_ERROR's "reason" is strerror(errno) of the host QEMU runs on. The
 * table is built once from this host's strerror() for every errno with a
 * symbolic name, so "No space left on device" -> "enospc",
 * "Input/output error" -> "eio", "Disk quota exceeded" -> "edquot".
 */
#ifndef QB_ERRNO_NAMES_H
#define QB_ERRNO_NAMES_H

#include <stddef.h>

/*
 * Returns the static lower-case errno name whose strerror() text equals
 * reason (exact match first, then a case-insensitive match of the text
 * anywhere in reason, since some QEMU messages prefix it), or "unknown".
 * reason may be NULL (-> "unknown"). Thread-safe after the first call.
 */
const char *qb_errno_name_from_text(const char *reason);

/* Returns the static lower-case name of an errno value ("enospc"), or "unknown". */
const char *qb_errno_name(int errnum);

#endif
