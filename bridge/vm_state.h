/*
 * vm_state.h - the current state of one VM, as published in qmp.vm.state.
 *
 * Built on every (re)connect from query-status, query-block, query-block-jobs,
 * query-colo-status and query-uuid, then kept current by the normalised events
 * (stopped/resumed/io_error/job events/colo exit) so the retained state topic
 * always says what a fresh query would say; the end of a session folds in as
 * connected: false (the rest is the last known state). The JSON shape is
 * schema/v1/qmp.vm.state.json:
 *   { "run_state": "io-error", "running": false, "reason": "io-error",
 *     "connected": true, "uuid": "0f8fad5b-d9cb-469f-a165-70867728950e" | null,
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

/* Size of a UUID in its canonical text form, with the NUL. */
#define QB_VM_UUID_SIZE 37

/*
 * Reads query-uuid's reply (borrowed, the "return" value; may be NULL) into
 * out: the UUID in canonical form (8-4-4-4-12 hex digits), lower case.
 * Returns true for such a UUID; false (out "") when there is none: no reply,
 * not in canonical form, or all zeros (QEMU's answer when started without
 * -uuid: it names no VM, and consumers keying by UUID must not merge such VMs).
 */
bool qb_vm_uuid_from_reply(const json_t *uuid_reply, char out[QB_VM_UUID_SIZE]);

/*
 * Returns a new snapshot object (caller owns the reference) of a connected
 * VM from the query replies (each borrowed, the "return" value; any may be
 * NULL when the query failed or does not exist, e.g. query-colo-status
 * without COLO) and the greeting's "QMP" object (borrowed, may be NULL).
 * Returns NULL only on allocation failure.
 */
json_t *qb_vm_state_from_queries(const json_t *greeting, const json_t *status, const json_t *block,
                                 const json_t *block_jobs, const json_t *colo, const json_t *uuid);

/*
 * Folds one complete normalised event into state (modified in place); the
 * bridge's own bridge.vm.disconnected (data ignored) sets connected to false.
 * Returns true when the state changed and should be re-published.
 */
bool qb_vm_state_apply(json_t *state, const struct qb_norm_event *ev);

/*
 * The state of one VM as a bridge keeps it between events: its compact JSON
 * text (about 300 bytes for a VM with one disk) instead of the jansson tree
 * (about 2.7 KB: every object has its own hash table, every member its own
 * allocations), so 10,000 idle VMs cost little. The tree is rebuilt from the
 * text when an event that can change the state arrives, and kept while the VM
 * stays among the cache's most recently folded: flat-out VMs whose events
 * interleave read by read then parse their state once, not once per read.
 * While a VM holds its tree, a changed fold does not re-serialise: the state
 * envelope is written straight from the tree (qb_vm_state_tree), and the text
 * is made again only when asked for or when the tree is given up.
 */
struct qb_vm_state;

/*
 * The trees of one manager's VMs: at most cap holders keep theirs; folding
 * one more gives up the tree of the least recently folded (serialised back to
 * text first when it changed). Owned by the manager; free it after every
 * holder that used it (qb_vm_state_cache_free detaches any left).
 */
struct qb_vm_state_cache;

/* Returns a new cache for at most cap trees (cap 0: none kept), or NULL on allocation failure. */
struct qb_vm_state_cache *qb_vm_state_cache_new(size_t cap);
void qb_vm_state_cache_free(struct qb_vm_state_cache *c);

/* Returns how many holders keep their tree in c now (for tests and metrics). */
size_t qb_vm_state_cache_count(const struct qb_vm_state_cache *c);

/*
 * Returns a new holder of snapshot (borrowed; as from qb_vm_state_from_queries),
 * or NULL on allocation failure. It starts as text, outside any cache.
 * Free with qb_vm_state_free (which also leaves its cache).
 */
struct qb_vm_state *qb_vm_state_new(const json_t *snapshot);
void qb_vm_state_free(struct qb_vm_state *s);

/*
 * Folds one complete normalised event (borrowed) into s, like
 * qb_vm_state_apply, keeping s's tree in cache (may be NULL: the tree is
 * dropped again at once). Returns true when the state changed. On an
 * allocation failure the old state is kept and false returned.
 */
bool qb_vm_state_fold(struct qb_vm_state *s, struct qb_vm_state_cache *cache,
                      const struct qb_norm_event *ev);

/* Gives up s's tree (serialised to text first when needed) and leaves its cache. */
void qb_vm_state_idle(struct qb_vm_state *s);

/*
 * Returns the state's tree (borrowed, valid until the next fold or idle) when s
 * holds one, else NULL: then qb_vm_state_text is the state.
 */
const json_t *qb_vm_state_tree(const struct qb_vm_state *s);

/*
 * Returns the state's compact JSON text (borrowed, NUL-terminated, valid until
 * the next fold), serialising the tree first when the text is out of date;
 * NULL (len 0) only when that serialisation ran out of memory.
 */
const char *qb_vm_state_text(struct qb_vm_state *s, size_t *len);

/* Returns run_state ("running", "io-error", ...; borrowed, valid until the next fold). */
const char *qb_vm_state_run_state(const struct qb_vm_state *s);

/*
 * Returns the state as a new jansson tree (caller owns the reference), e.g.
 * to seed the normaliser (qb_norm_vm_reset); NULL on allocation failure.
 */
json_t *qb_vm_state_json(const struct qb_vm_state *s);

#endif
