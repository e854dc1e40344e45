/*
 * vm_state_copies.c - one state-topic copy per VM per loop turn.
 *
 * The state topic is a last-value store (retained in MQTT, compacted in
 * Kafka): a consumer wants the latest state of each VM, and every step in
 * between is already on the event stream. A VM streaming events flat out
 * changes its state with nearly every event, and one copy per change doubled
 * what the bridge sent (the benchmark: two envelopes per QMP event). So a
 * changed state is only marked here, and a check handle, which runs once per
 * loop turn right after the poll phase, publishes one copy per marked VM:
 * the state after the turn's last event, with the time of the last event
 * that changed it and the VM's latest sequence when the copy is sent. Not
 * the changing event's own sequence: events of the VM published after it in
 * the same turn (an RTC_CHANGE, a command result, bridge.vm.disconnected) are
 * already on the wire, and a copy numbered below them would go back in a
 * consumer's per-VM order.
 * The state is true as of the latest sequence: the later events did not
 * change it. An event whose turn brought no other event of its VM (the usual
 * case) gets its copy in the same turn, microseconds later.
 *
 * The handle runs only while a copy is pending, so idle VMs cost nothing.
 * What a copy contains is vm_publish.c's: it is sent through the callback
 * given at creation, so this file knows nothing above it.
 */
#include "vm_state_copies.h"

#include "error.h"
#include "log.h"

#include <stdlib.h>

struct qb_vm_state_copy {
    struct qb_vm *vm; /* NULL once dropped */
    int64_t ts_sec;
    int32_t ts_usec;
};

struct qb_vm_state_copies {
    uv_check_t check;
    qb_vm_copy_publish_cb publish;
    struct qb_vm_state_copy *pending; /* in the order the VMs first changed this turn */
    size_t n, cap;
};

static void copies_on_check(uv_check_t *h);

int qb_vm_state_copies_new(uv_loop_t *loop, qb_vm_copy_publish_cb publish,
                           struct qb_vm_state_copies **out)
{
    struct qb_vm_state_copies *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (!c)
        return QB_ENOMEM;
    uv_check_init(loop, &c->check); /* cannot fail */
    c->check.data = c;
    c->publish = publish;
    *out = c;
    return QB_OK;
}

static void copies_on_close(uv_handle_t *h)
{
    struct qb_vm_state_copies *c = h->data;

    free(c->pending);
    free(c);
}

void qb_vm_state_copies_close(struct qb_vm_state_copies *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        if (c->pending[i].vm)
            c->pending[i].vm->copy.slot = 0;
    }
    c->n = 0;
    uv_close((uv_handle_t *)&c->check, copies_on_close);
}

/* Publishes vm's pending copy (entry e, taken off the list by the caller). */
static void copies_publish(const struct qb_vm_state_copies *c, const struct qb_vm_state_copy *e)
{
    c->publish(e->vm, e->ts_sec, e->ts_usec);
}

static void copies_on_check(uv_check_t *h)
{
    struct qb_vm_state_copies *c = h->data;
    size_t n = c->n;

    /*
     * Publishing cannot mark a VM again, but stay safe if it ever does: a VM
     * marked while this runs is appended past n and waits for the next turn.
     */
    for (size_t i = 0; i < n; i++) {
        struct qb_vm_state_copy e = c->pending[i];

        if (!e.vm)
            continue;
        e.vm->copy.slot = 0;
        c->pending[i].vm = NULL;
        copies_publish(c, &e);
    }
    if (c->n > n) {
        for (size_t i = n; i < c->n; i++) {
            c->pending[i - n] = c->pending[i];
            if (c->pending[i - n].vm)
                c->pending[i - n].vm->copy.slot = (uint32_t)(i - n + 1);
        }
    }
    c->n -= n;
    if (c->n == 0)
        uv_check_stop(&c->check);
}

void qb_vm_state_copy_mark(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec)
{
    struct qb_vm_state_copies *c = vm->mgr->state_copies;
    struct qb_vm_state_copy *e;

    if (vm->copy.slot) {
        e = &c->pending[vm->copy.slot - 1];
    } else {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 64;
            struct qb_vm_state_copy *grown = realloc(c->pending, cap * sizeof(*grown));

            if (!grown) {
                /* no room to wait: publish this one now rather than lose it */
                struct qb_vm_state_copy now = {vm, ts_sec, ts_usec};

                QB_LOG_WARN(vm->name, "out of memory deferring the state copy: sent at once");
                copies_publish(c, &now);
                return;
            }
            c->pending = grown;
            c->cap = cap;
        }
        e = &c->pending[c->n++];
        e->vm = vm;
        vm->copy.slot = (uint32_t)c->n;
        uv_check_start(&c->check, copies_on_check); /* no-op when already started */
    }
    e->ts_sec = ts_sec;
    e->ts_usec = ts_usec;
}

void qb_vm_state_copy_flush(struct qb_vm *vm)
{
    struct qb_vm_state_copies *c = vm->mgr->state_copies;
    struct qb_vm_state_copy e;

    if (!vm->copy.slot)
        return;
    /* the list keeps a hole: the check handle skips it */
    e = c->pending[vm->copy.slot - 1];
    c->pending[vm->copy.slot - 1].vm = NULL;
    vm->copy.slot = 0;
    copies_publish(c, &e);
}
