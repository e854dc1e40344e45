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
 * already read may hold hundreds of events, so those wait here (bounded by one
 * read per VM) instead of overflowing the transports' queues.
 */
static bool vm_blocked(const struct qb_vm *vm)
{
    return vm->resyncing || vm->pending.type != NULL || vm->mgr->pressure;
}

/* Takes a new reference to msg into the backlog. Returns QB_OK or QB_ENOMEM. */
int qb_vm_backlog_push(struct qb_vm *vm, json_t *msg)
{
    if (vm->backlog_head > 0 && vm->backlog_head == vm->backlog_len) {
        vm->backlog_head = 0;
        vm->backlog_len = 0;
    }
    if (vm->backlog_len == vm->backlog_cap) {
        size_t live = vm->backlog_len - vm->backlog_head;
        if (vm->backlog_head > 0) {
            memmove(vm->backlog, vm->backlog + vm->backlog_head, live * sizeof(*vm->backlog));
            vm->backlog_head = 0;
            vm->backlog_len = live;
        }
        if (vm->backlog_len == vm->backlog_cap) {
            size_t cap = vm->backlog_cap ? vm->backlog_cap * 2 : 8;
            json_t **grown = realloc(vm->backlog, cap * sizeof(*grown));
            if (!grown)
                return QB_ENOMEM;
            vm->backlog = grown;
            vm->backlog_cap = cap;
        }
    }
    vm->backlog[vm->backlog_len++] = json_incref(msg);
    return QB_OK;
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
    while (!vm_blocked(vm) && vm->backlog_head < vm->backlog_len) {
        json_t *msg = vm->backlog[vm->backlog_head++];
        vm_process(vm, msg);
        json_decref(msg);
    }
    if (vm->backlog_head == vm->backlog_len) {
        vm->backlog_head = 0;
        vm->backlog_len = 0;
    }
    vm->draining = false;
}

void qb_vm_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm *vm = arg;

    (void)c;
    if (vm_blocked(vm) || vm->backlog_head < vm->backlog_len) {
        if (qb_vm_backlog_push(vm, msg) < 0)
            QB_LOG_ERR(vm->name, "out of memory: event %s lost",
                       json_string_value(json_object_get(msg, "event")));
        return;
    }
    vm_process(vm, msg);
}
