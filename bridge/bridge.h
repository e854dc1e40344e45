/*
 * bridge.h - the running bridge: one object that owns the configuration, the
 * loop, the transports, the spool and the outbox, the VM manager and where VMs
 * come from (static entries, discovery, the qmp.listen socket), the command
 * router, the status API, the signals and what systemd is told.
 *
 * Start-up order (qb_bridge_run): signals, transports, spool and outbox, the VM
 * manager and the static VMs, the command channel, discovery, listen mode, the
 * status API, then READY=1 and the watchdog. A step that fails is logged and
 * the bridge shuts down what had started.
 *
 * Shutdown order matters for "nothing lost": first stop finding VMs, then
 * close every VM session (each connected VM publishes bridge.vm.disconnected),
 * then close the transports, which flush their queues with a bounded wait and
 * say how much stayed undelivered; last the outbox checkpoints its cursors.
 * SIGINT/SIGTERM start it; a second one exits the process at once (status 1).
 * SIGHUP reloads the configuration file (qb_bridge_reload).
 */
#ifndef QB_BRIDGE_H
#define QB_BRIDGE_H

#include "config.h"

#include <uv.h>

struct qb_bridge;

/*
 * Makes a bridge for cfg, which it takes (freed by qb_bridge_free, also on
 * failure). loop NULL: libuv's default loop, which qb_bridge_run closes when
 * it is done; a caller's loop stays the caller's. Starts nothing.
 * Returns QB_OK with *out, or QB_ENOMEM.
 */
int qb_bridge_new(uv_loop_t *loop, struct qb_config *cfg, struct qb_bridge **out);

/*
 * Sets the log level and format from the configuration, starts everything in
 * the order above and runs the loop until the shutdown is complete.
 * Returns QB_OK after a clean shutdown, or the negative code of the start-up
 * step that failed (logged; what had started was shut down in order).
 */
int qb_bridge_run(struct qb_bridge *b);

/*
 * Re-reads the configuration file and applies what changed (reload.h), with
 * RELOADING=1 and then READY=1 and a STATUS= saying what happened to systemd.
 * Returns QB_OK, QB_ECONFIG or QB_ENOMEM (nothing changed), or QB_EAGAIN when
 * the bridge is still starting or shutting down (logged, ignored).
 */
int qb_bridge_reload(struct qb_bridge *b);

/*
 * Starts the orderly shutdown (see above); why ("SIGTERM") goes into the log.
 * qb_bridge_run returns once it is complete. A second call does nothing.
 */
void qb_bridge_close(struct qb_bridge *b, const char *why);

/* Frees the bridge and its configurations, after qb_bridge_run returned. NULL is fine. */
void qb_bridge_free(struct qb_bridge *b);

#endif
