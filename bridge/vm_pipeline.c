/*
 * vm_pipeline.c - the ordered event pipeline of one VM: QMP event in, published event out.
 *
 * Per VM the bus must see events in the order QEMU raised them. A VM is
 * blocked while its connect-time snapshot is being queried or while an event
 * waits for a query (STOP without a known reason); events read meanwhile wait
 * in a per-VM backlog and are processed in order once it unblocks. This file
 * is that queue and its drain; the snapshot is in vm_snapshot.c, publishing in
 * vm_publish.c.
 */
#include "vm_manager_internal.h"

#include "error.h"
#include "log.h"
#include "normalize.h"
#include "qmp_client.h"

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
    return vm->resyncing || vm->pending.type != NULL || vm->mgr->pressure;
}

/* What a blocked VM waits for, for the log line when it held too much (static text). */
static const char *vm_waiting_for(const struct qb_vm *vm)
{
    if (vm->resyncing)
        return "its snapshot";
    if (vm->pending.type != NULL)
        return qb_norm_query_command(vm->pending.need);
    return "back-pressure to end";
}

/*
 * Holds msg back as its raw line. Past qmp.max_held_events or max_held_bytes
 * the session is closed and what it held is dropped: the snapshot of the next
 * session tells consumers the state, and a peer that never answers cannot
 * make the bridge hold more than the bounds.
 */
static void vm_hold(struct qb_vm *vm, struct qb_qmp_client *c, json_t *msg)
{
    struct qb_held_limits lim = qb_vm_held_limits(vm->mgr);
    size_t len = 0;
    const char *line = qb_qmp_client_event_line(c, &len);
    char *own = NULL;
    int rc;

    if (!line) {
        /* not from a read (nothing does that today): hold its serialised form */
        own = json_dumps(msg, JSON_COMPACT);
        line = own;
        len = own ? strlen(own) : 0;
    }
    rc = line ? qb_held_events_push(&vm->backlog, line, len, &lim) : QB_ENOMEM;
    free(own);
    if (rc == QB_ETOOBIG) {
        const char *why = qb_vm_held_overflow(vm->mgr, vm->name, vm_waiting_for(vm),
                                              qb_held_events_count(&vm->backlog) + 1,
                                              qb_held_events_bytes(&vm->backlog) + len);

        qb_held_events_clear(&vm->backlog);
        vm->held_over = true;
        qb_qmp_client_disconnect(c, why);
    } else if (rc < 0) {
        QB_LOG_ERR(vm->name, "out of memory: event %s lost",
                   json_string_value(json_object_get(msg, "event")));
    }
}

static void vm_query_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg);

/* Runs the query the pending event needs; a query that cannot be sent resolves it at once. */
static void vm_run_pending_query(struct qb_vm *vm)
{
    const char *cmd = qb_norm_query_command(vm->pending.need);
    int rc;

    vm->inflight++;
    rc = qb_qmp_client_execute(vm->qmp, cmd, NULL, vm->mgr->cfg->qmp_command_timeout_ms,
                               vm_query_reply, vm);
    if (rc < 0) {
        vm->inflight--;
        QB_LOG_DEBUG(vm->name, "%s not sent (%s): completing %s with what is known", cmd,
                     qb_strerror(rc), vm->pending.type);
        qb_normalize_resolve(vm->norm, &vm->pending, rc, NULL);
        if (vm->pending.need != QB_NORM_QUERY_NONE) {
            vm_run_pending_query(vm);
            return;
        }
        qb_vm_publish_event(vm, &vm->pending);
        qb_norm_event_clear(&vm->pending);
    }
}

static void vm_query_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct qb_vm *vm = arg;

    (void)c;
    vm->inflight--;
    if (status < 0 && status != QB_ECLOSED)
        QB_LOG_WARN(vm->name, "%s for %s failed: %s", qb_norm_query_command(vm->pending.need),
                    vm->pending.type, qb_strerror(status));
    qb_normalize_resolve(vm->norm, &vm->pending, status, reply);
    if (vm->pending.need != QB_NORM_QUERY_NONE) {
        vm_run_pending_query(vm);
    } else {
        qb_vm_publish_event(vm, &vm->pending);
        qb_norm_event_clear(&vm->pending);
    }
    qb_vm_drain(vm);
    qb_vm_apply_pause(vm);
    qb_vm_maybe_free(vm);
}

/* Normalises one QMP event message (borrowed) and publishes it, or parks it on a query. */
static void vm_process(struct qb_vm *vm, json_t *msg)
{
    const struct qb_config *cfg = vm->mgr->cfg;
    struct qb_norm_event ev;
    int rc;

    rc = qb_normalize_event(vm->norm, msg, (const char *const *)cfg->events_exclude,
                            cfg->n_events_exclude, &ev);
    if (rc < 0) {
        QB_LOG_WARN(vm->name, "skipping malformed QMP event: %s", qb_strerror(rc));
        return;
    }
    if (rc == 0)
        return;
    if (ev.need != QB_NORM_QUERY_NONE) {
        vm->pending = ev;
        vm_run_pending_query(vm);
        return;
    }
    qb_vm_publish_event(vm, &ev);
    qb_norm_event_clear(&ev);
}

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
void qb_vm_drain(struct qb_vm *vm)
{
    if (vm->draining)
        return;
    vm->draining = true;
    while (!vm_blocked(vm) && qb_held_events_count(&vm->backlog) > 0) {
        int lost = 0;
        json_t *msg = qb_held_events_pop(&vm->backlog, &lost);

        if (!msg) {
            QB_LOG_ERR(vm->name, "out of memory: a held-back event was lost");
            continue;
        }
        vm_process(vm, msg);
        json_decref(msg);
    }
    vm->draining = false;
}

void qb_vm_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm *vm = arg;

    if (vm_blocked(vm) || qb_held_events_count(&vm->backlog) > 0) {
        vm_hold(vm, c, msg);
        return;
    }
    vm_process(vm, msg);
}
