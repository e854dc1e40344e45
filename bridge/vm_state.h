/*
 * vm_state.h - the current state of one VM, as published in qmp.vm.state.
 *
 * Built on every (re)connect from query-status, query-block, query-block-jobs
 * and query-colo-status, then kept current by the normalised events
 * (stopped/resumed/io_error/job events/colo exit) so the retained state topic
 * always says what a fresh query would say. The JSON shape is
 * schema/v1/qmp.vm.state.json:
 *   { "run_state": "io-error", "running": false, "reason": "io-error",
 *     "cause": {"device","node_name","errno","io_status"} | null,
 *     "qemu": {"version": "7.2.22", "package": "..."},
 *     "disks": [ {"device","node_name","io_status","size","filename","driver","read_only"} ],
 *     "jobs":  [ {"id","type","status","device","offset","len","io_status"} ],
 *     "colo":  {"mode","last_mode","reason"} | null }
 */
#ifndef QB_VM_STATE_H
#define QB_VM_STATE_H

#include "normalize.h"

#include <jansson.h>
#include <stdbool.h>

/*
 * Returns a new snapshot object (caller owns the reference) from the query
 * replies (each borrowed, the "return" value; any may be NULL when the query
 * failed or does not exist, e.g. query-colo-status without COLO) and the
 * greeting's "QMP" object (borrowed, may be NULL). Returns NULL only on
 * allocation failure.
 */
json_t *qb_vm_state_from_queries(const json_t *greeting, const json_t *status, const json_t *block,
                                 const json_t *block_jobs, const json_t *colo);

/*
 * Folds one complete normalised event into state (modified in place).
 * Returns true when the state changed and should be re-published.
 */
bool qb_vm_state_apply(json_t *state, const struct qb_norm_event *ev);

#endif
