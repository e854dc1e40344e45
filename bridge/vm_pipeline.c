/*
 * vm_pipeline.c - the ordered event pipeline of one VM: source event in, published event out.
 *
 * Per VM the bus must see events in the order QEMU raised them. A VM is
 * blocked while its connect-time snapshot is being queried or while an event
 * waits for a query (STOP without a known reason); events read meanwhile wait
 * in a per-VM backlog and are processed in order once it unblocks. This file
 * is that queue and its drain; the snapshot is in vm_snapshot.c, publishing in
 * vm_publish.c.
 */
#include "vm_pipeline.h"

#include "vm_publish.h"

#include "error.h"
#include "log.h"
#include "normalize.h"
#include "source.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/*
 * Events wait in the backlog while the snapshot or a query is outstanding, and
 * under back-pressure: pausing the socket stops the next read, but the chunk
 * already read may hold hundreds of events, so those wait here (one read per
 * VM) instead of overflowing the transports' queues. The backlog is bounded
 * (held_events.h): a reply that never comes must not let it grow for ever.
 */
static bool vm_blocked(const struct qb_vm *vm)
{
    return vm->pipe.snapshot_hold || vm->pipe.pending.type != NULL || vm->mgr->pressure;
}

/* What a blocked VM waits for, for the log line when it held too much (static text). */
static const char *vm_waiting_for(const struct qb_vm *vm)
{
    if (vm->pipe.snapshot_hold)
        return "its snapshot";
    if (vm->pipe.pending.type != NULL)
        return qb_norm_query_command(vm->pipe.pending.need);
    return "back-pressure to end";
}

/*
 * Holds ev back as its raw text. Past qmp.max_held_events or max_held_bytes
 * the session is closed and what it held is dropped: the snapshot of the next
 * session tells consumers the state, and a peer that never answers cannot
 * make the bridge hold more than the bounds.
 */
static void vm_hold(struct qb_vm *vm, const struct qb_source_event *ev)
{
    const struct qb_config *cfg = vm->mgr->cfg;
    struct qb_held_limits lim = qb_source_held_limits(cfg);
    size_t len = ev->raw_len;
    const char *line = ev->raw;
    char *own = NULL;
    int rc;

    if (!line) {
        /* a source without raw text: hold its serialised form */
        own = json_dumps(ev->msg, JSON_COMPACT);
        line = own;
        len = own ? strlen(own) : 0;
    }
    rc = line ? qb_held_events_push(&vm->pipe.backlog, line, len, &lim) : QB_ENOMEM;
    free(own);
    if (rc == QB_ETOOBIG) {
        const char *why = qb_source_held_overflow(
            cfg, vm->name, vm_waiting_for(vm), qb_held_events_count(&vm->pipe.backlog) + 1,
            qb_held_events_bytes(&vm->pipe.backlog) + len, &vm->mgr->held_over_events,
            &vm->mgr->held_over_bytes);

        qb_held_events_clear(&vm->pipe.backlog);
        if (vm->link)
            vm->link->ops->disconnect(vm->link, why);
    } else if (rc < 0) {
        QB_LOG_ERR(vm->name, "out of memory: event %s lost",
                   json_string_value(json_object_get(ev->msg, "event")));
    }
}

/* The source's query for what the normaliser needs. */
static enum qb_source_query vm_norm_query(enum qb_norm_query q)
{
    switch (q) {
    case QB_NORM_QUERY_BLOCK:
        return QB_SOURCE_QUERY_BLOCK;
    case QB_NORM_QUERY_BLOCK_JOBS:
        return QB_SOURCE_QUERY_BLOCK_JOBS;
    default:
        return QB_SOURCE_QUERY_STATUS;
    }
}

static void vm_query_reply(void *arg, int status, const json_t *reply);

/* Runs the query the pending event needs; a query that cannot be sent resolves it at once. */
static void vm_run_pending_query(struct qb_vm *vm)
{
    const char *cmd = qb_norm_query_command(vm->pipe.pending.need);
    int rc = QB_ECLOSED;

    vm->pipe.inflight++;
    if (vm->link)
        rc = vm->link->ops->query(vm->link, vm_norm_query(vm->pipe.pending.need), vm_query_reply,
                                  vm);
    if (rc < 0) {
        vm->pipe.inflight--;
        QB_LOG_DEBUG(vm->name, "%s not sent (%s): completing %s with what is known", cmd,
                     qb_strerror(rc), vm->pipe.pending.type);
        qb_normalize_resolve(vm->pipe.norm, &vm->pipe.pending, rc, NULL);
        if (vm->pipe.pending.need != QB_NORM_QUERY_NONE) {
            vm_run_pending_query(vm);
            return;
        }
        qb_vm_publish_event(vm, &vm->pipe.pending);
        qb_norm_event_clear(&vm->pipe.pending);
    }
}

static void vm_query_reply(void *arg, int status, const json_t *reply)
{
    struct qb_vm *vm = arg;

    vm->pipe.inflight--;
    if (status < 0 && status != QB_ECLOSED)
        QB_LOG_WARN(vm->name, "%s for %s failed: %s", qb_norm_query_command(vm->pipe.pending.need),
                    vm->pipe.pending.type, qb_strerror(status));
    qb_normalize_resolve(vm->pipe.norm, &vm->pipe.pending, status, reply);
    if (vm->pipe.pending.need != QB_NORM_QUERY_NONE) {
        vm_run_pending_query(vm);
    } else {
        qb_vm_publish_event(vm, &vm->pipe.pending);
        qb_norm_event_clear(&vm->pipe.pending);
    }
    qb_vm_drain(vm);
    vm->mgr->hooks->settle(vm);
    vm->mgr->hooks->maybe_free(vm);
}

/* Normalises one QMP event message (borrowed) and publishes it, or parks it on a query. */
static void vm_process(struct qb_vm *vm, const json_t *msg)
{
    const struct qb_config *cfg = vm->mgr->cfg;
    struct qb_norm_event ev;
    int rc;

    rc = qb_normalize_event(vm->pipe.norm, msg, (const char *const *)cfg->events_exclude,
                            cfg->n_events_exclude, &ev);
    if (rc < 0) {
        QB_LOG_WARN(vm->name, "skipping malformed QMP event: %s", qb_strerror(rc));
        return;
    }
    if (rc == 0)
        return;
    if (ev.need != QB_NORM_QUERY_NONE) {
        vm->pipe.pending = ev;
        vm_run_pending_query(vm);
        return;
    }
    qb_vm_publish_event(vm, &ev);
    qb_norm_event_clear(&ev);
}

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
void qb_vm_drain(struct qb_vm *vm)
{
    if (vm->pipe.draining)
        return;
    vm->pipe.draining = true;
    while (!vm_blocked(vm) && qb_held_events_count(&vm->pipe.backlog) > 0) {
        int lost = 0;
        json_t *msg = qb_held_events_pop(&vm->pipe.backlog, &lost);

        if (!msg) {
            QB_LOG_ERR(vm->name, "out of memory: a held-back event was lost");
            continue;
        }
        vm_process(vm, msg);
        json_decref(msg);
    }
    vm->pipe.draining = false;
}

void qb_vm_on_event(void *arg, const struct qb_source_event *ev)
{
    struct qb_vm *vm = arg;

    if (vm_blocked(vm) || qb_held_events_count(&vm->pipe.backlog) > 0) {
        vm_hold(vm, ev);
        return;
    }
    vm_process(vm, ev->msg);
}

int qb_vm_pipe_init(struct qb_vm *vm)
{
    vm->pipe.norm = qb_norm_vm_new();
    if (!vm->pipe.norm)
        return QB_ENOMEM;
    qb_norm_vm_set_name(vm->pipe.norm, vm->name); /* "[vm1] normalize: ..." in its log lines */
    return QB_OK;
}

void qb_vm_pipe_free(struct qb_vm *vm)
{
    qb_held_events_clear(&vm->pipe.backlog);
    qb_norm_event_clear(&vm->pipe.pending);
    qb_norm_vm_free(vm->pipe.norm);
    vm->pipe.norm = NULL;
}

void qb_vm_pipe_reset(struct qb_vm *vm, const json_t *snapshot)
{
    qb_norm_vm_reset(vm->pipe.norm, snapshot);
}

void qb_vm_pipe_take_early(struct qb_vm *vm, struct qb_held_events *early)
{
    size_t n_held = qb_held_events_count(early);

    if (qb_held_events_move(&vm->pipe.backlog, early) < 0)
        QB_LOG_ERR(vm->name, "out of memory: %zu events read before the name lost", n_held);
}

void qb_vm_pipe_hold(struct qb_vm *vm, bool hold)
{
    vm->pipe.snapshot_hold = hold;
}
