/*
 * status_api.h - what the bridge says about itself over HTTP (metrics.listen):
 *
 *   /metrics  Prometheus text format: VMs by session state and by QEMU run
 *             state, QMP events by type,
 *             envelopes published/confirmed/retried/failed/dropped per transport,
 *             queue and spool depth (messages, bytes, age of the oldest), commands
 *             by name and status, rejections of unauthenticated messages answered
 *             and dropped, reconnects, and two latency histograms (QMP
 *             event to transport confirmation; command received to result), the
 *             last reload's outcome, the standard process_* metrics, and the
 *             broker round trip where the transport's library reports one.
 *   /healthz  200 {"status":"ok"} whenever the loop answers at all.
 *   /readyz   200 {"ready":true}, or 503 {"ready":false,"reasons":[...]} while
 *             shutting down, while a transport's link is down, or while the
 *             spool is over its high-water mark (QMP reads paused).
 *   /vms      every VM as JSON: name, address, session state, QEMU version,
 *             run state, last event (type, time), sequence, reconnects.
 *
 * Everything is read at request time from the live objects (pull model: the
 * hot path only bumps counters it already keeps). `qmp-bridge --status`
 * prints /readyz and /vms for a person (status_client.h).
 */
#ifndef QB_STATUS_API_H
#define QB_STATUS_API_H

#include "command_router.h"
#include "config.h"
#include "outbox.h"
#include "prom.h"
#include "reload.h"
#include "spool.h"
#include "transport.h"
#include "vm_manager.h"

#include <stdbool.h>
#include <uv.h>

/*
 * What the status API reads, as it is at the moment of one request. Every
 * pointer is borrowed for that request; an object is NULL while it is not
 * running (before start-up reached it, or after shutdown closed it).
 */
struct qb_status_view {
    const struct qb_config *cfg;
    struct qb_vm_manager *mgr;
    struct qb_transport *const *transports; /* n_transports of them */
    size_t n_transports;
    struct qb_outbox *outbox;
    struct qb_spool *spool;
    const struct qb_command_router *router; /* NULL: commands off */
    bool shutting_down;
    const struct qb_reload_outcome *reload; /* NULL: no reload metrics */
};

/*
 * Fills *v from the running bridge; called by the status API on the loop
 * thread at every request, so a reload's new transport set is seen at once.
 */
typedef void (*qb_status_view_fn)(void *arg, struct qb_status_view *v);

struct qb_status_api;

/*
 * Starts serving on listen (see http_server.h for the syntax); view(arg) is
 * asked at every request what runs now (arg borrowed for the server's life).
 * Returns QB_OK with *out, or the server's error with errbuf naming the address.
 */
int qb_status_api_start(uv_loop_t *loop, const char *listen, qb_status_view_fn view, void *arg,
                        struct qb_status_api **out, char *errbuf, size_t errlen);

/*
 * Adds every /metrics family but the HTTP server's own to w, read from v
 * (both borrowed). Errors stay in w (see prom.h).
 */
void qb_status_metrics_collect(struct qb_prom_writer *w, const struct qb_status_view *v);

/*
 * The run_state label qmp_bridge_vms_by_run_state counts a VM under: its run
 * state when its QMP session is ready and the state is one of QEMU's
 * RunState values, "unknown" otherwise (no session: whatever was last seen
 * may no longer be true). Both arguments borrowed, NULL allowed. Returns a
 * static string.
 */
const char *qb_status_run_state_label(const char *session, const char *run_state);

/* Closes the server; done(arg) runs from the loop once it is gone. NULL api is fine. */
void qb_status_api_close(struct qb_status_api *api, void (*done)(void *arg), void *arg);

#endif
