/*
 * normalize.h - QMP events to qmp-bridge's normalised event types.
 *
 * A table maps each QMP event name to a normaliser; anything not in the table
 * becomes "qmp.event" with the original name and data (unless excluded by
 * config). Some events cannot be completed from the event alone: STOP carries
 * no reason in QEMU 7.2, so the reason comes from the BLOCK_IO_ERROR (action
 * stop), SHUTDOWN, WATCHDOG or GUEST_PANICKED just before it, or else from
 * query-status and, for io-error, from query-block's io-status; when
 * query-status finds the VM running again, from the MIGRATION status before
 * the STOP (a COLO checkpoint or failover, a migration's switchover). Such an
 * event comes back with `need` set; the caller runs that query and hands the reply
 * to qb_normalize_resolve, holding back every later event of that VM so order
 * is kept.
 *
 * Types produced (data described in schema/v1/<type>.json):
 *   qmp.block.io_error, qmp.vm.stopped, qmp.vm.resumed, qmp.vm.shutdown,
 *   qmp.vm.reset, qmp.block.job_error, qmp.job.status, qmp.block.job_ready,
 *   qmp.block.job_completed, qmp.block.job_cancelled,
 *   qmp.block.write_threshold, qmp.colo.exit, qmp.event
 */
#ifndef QB_NORMALIZE_H
#define QB_NORMALIZE_H

#include "envelope.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* A QMP query the normaliser needs answered before an event is complete. */
enum qb_norm_query {
    QB_NORM_QUERY_NONE = 0,
    QB_NORM_QUERY_STATUS,     /* "query-status" */
    QB_NORM_QUERY_BLOCK,      /* "query-block" */
    QB_NORM_QUERY_BLOCK_JOBS, /* "query-block-jobs" */
};

/* QEMU's RunState values ("running", "io-error", ...), NULL-terminated. */
#define QB_N_RUN_STATES 16
extern const char *const qb_run_states[QB_N_RUN_STATES + 1];

/* Returns the QMP command name of a query ("query-status"), or NULL for NONE. */
const char *qb_norm_query_command(enum qb_norm_query q);

struct qb_norm_event {
    const char *type;  /* static string, e.g. "qmp.block.io_error" */
    json_t *data;      /* owned by the event (released by qb_norm_event_clear) */
    int64_t ts_sec;    /* QEMU's timestamp, or QB_ENVELOPE_TIME_NOW (see qb_normalize_event) */
    int32_t ts_usec;
    enum qb_norm_query need; /* != NONE: incomplete, see qb_normalize_resolve */
};

/* Per-VM memory of the normaliser (the last stop-causing event, job errors, job types). */
struct qb_norm_vm;

/* Returns a new per-VM context, or NULL on allocation failure. Free with qb_norm_vm_free. */
struct qb_norm_vm *qb_norm_vm_new(void);
void qb_norm_vm_free(struct qb_norm_vm *vm);

/*
 * Names the VM in the normaliser's log lines ("[vm1] normalize: ...").
 * name is borrowed and must outlive vm; NULL (the default) leaves the
 * prefix out.
 */
void qb_norm_vm_set_name(struct qb_norm_vm *vm, const char *name);

/*
 * Forgets per-session memory (call on every new QMP session), then seeds it
 * from the connect-time snapshot data (as built by qb_vm_state_from_queries;
 * borrowed, may be NULL): known jobs and their types.
 */
void qb_norm_vm_reset(struct qb_norm_vm *vm, const json_t *snapshot);

/*
 * Normalises one QMP event message (borrowed).
 * Returns 1 and fills *out (caller owns out->data; release with
 * qb_norm_event_clear), 0 when the event produces nothing (excluded by name in
 * `exclude`, an array of n_exclude names, borrowed), QB_ENOMEM, or QB_EPARSE
 * when the message is not a well-formed event: no or an empty "event" string,
 * data that is not an object for an event of the table, or a data member
 * QEMU's schema requires for that event missing, of the wrong JSON type or
 * outside its QAPI enum. Each QB_EPARSE is logged at warn level naming the
 * event and, for a member, which one and what was expected. An optional
 * member of the wrong type is left out (logged too) and the event published.
 * Whatever is published validates against schema/v1/<type>.json.
 * A timestamp that is missing, not {"seconds": integer, "microseconds":
 * integer}, outside years 0001-9999 or with microseconds outside 0-999999
 * gives ts_sec QB_ENVELOPE_TIME_NOW (the bridge's clock) and the event is
 * still published; the first such timestamp of a VM is logged at warn level,
 * later ones of that VM are not (for the life of vm, across sessions).
 */
int qb_normalize_event(struct qb_norm_vm *vm, const json_t *msg, const char *const *exclude,
                       size_t n_exclude, struct qb_norm_event *out);

/*
 * Completes an event whose need was set. status is the QMP reply status
 * (QB_OK with reply = the "return" value, or an error code with reply NULL or
 * the error object); reply is borrowed. Fills in data and sets ev->need to the
 * next query needed or NONE. Never fails: when a query failed the event is
 * completed with what is known (e.g. reason "unknown") so a pause is never lost.
 */
void qb_normalize_resolve(struct qb_norm_vm *vm, struct qb_norm_event *ev, int status,
                          const json_t *reply);

/* Releases ev->data and zeroes the event. */
void qb_norm_event_clear(struct qb_norm_event *ev);

#endif
