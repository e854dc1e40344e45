/*
 * status_client.h - `qmp-bridge --status`: asks a running daemon's status API
 * (metrics.listen, see status_api.h) for /readyz and /vms and prints them for a
 * person. A short-lived process, so the HTTP client blocks (poll with a deadline)
 * instead of running on a loop.
 */
#ifndef QB_STATUS_CLIENT_H
#define QB_STATUS_CLIENT_H

#include <stdint.h>
#include <stdio.h>

/* Largest body qb_status_client_get accepts. */
#define QB_STATUS_CLIENT_MAX_BODY (16u * 1024 * 1024)

/*
 * One blocking HTTP/1.0 GET of path from address (the listen syntax of
 * http_server.h; "0.0.0.0"/"[::]" are not rewritten). The whole exchange is
 * bounded by timeout_ms.
 * Returns QB_OK with *status the HTTP status and *body a malloc'd,
 * NUL-terminated body the caller frees (also for non-2xx statuses); or
 *   QB_EINVAL bad address, QB_EIO connect/read failed (*body NULL),
 *   QB_ETIMEDOUT, QB_EPROTO malformed answer, QB_ETOOBIG body over
 *   QB_STATUS_CLIENT_MAX_BODY, QB_ENOMEM.
 */
int qb_status_client_get(const char *address, const char *path, char **body, int *status,
                         uint32_t timeout_ms);

/*
 * Asks the daemon at listen for /readyz and /vms and prints a table to out.
 * Returns 0 when the daemon answered and is ready, 1 when it answered not
 * ready, 3 when it could not be reached or answered nonsense (message on
 * stderr). These are the exit codes of `qmp-bridge --status`.
 */
int qb_status_client_print(const char *listen, FILE *out);

#endif
