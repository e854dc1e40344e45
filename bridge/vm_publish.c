/*
 * vm_publish.c - what a VM publishes, through the one door (publish.h):
 * events, its state as event and state copy, bridge events about it.
 *
 * The numbering and the envelopes are the door's; here sit what only the VM
 * knows: folding an event into the VM's state (and marking the state copy
 * it then owes), and counting what it published for the status API.
 */
#include "vm_manager_internal.h"

#include "envelope.h"
#include "error.h"
#include "log.h"
#include "publish.h"
#include "vm_state.h"

#include <stdbool.h>

/* Counts a published event and remembers it as the VM's last (status API, metrics). */
static void vm_note_event(struct qb_vm *vm, const char *type, uint64_t origin_usec)
{
    const char *interned = qb_vm_mgr_count(vm->mgr, QB_VM_COUNT_EVENTS, type, NULL);

    if (interned) {
        vm->last_event = interned;
        vm->last_event_usec = origin_usec;
    }
}

/*
 * Publishes the VM's held state (kind STATE or EVENT) without serialising it
 * twice: straight from its tree while it holds one, else its text.
 */
void qb_vm_publish_state(struct qb_vm *vm, enum qb_msg_kind kind, uint64_t seq,
                         const char *id_suffix, int64_t ts_sec, int32_t ts_usec)
{
    const json_t *tree = qb_vm_state_tree(vm->state);
    size_t len = 0;
    const char *text = tree ? NULL : qb_vm_state_text(vm->state, &len);

    if (!tree && !text) {
        QB_LOG_ERR(vm->name, "state seq %llu not published: out of memory",
                   (unsigned long long)seq);
        return;
    }
    if (qb_publish_state(vm->stream, kind, seq, id_suffix, ts_sec, ts_usec, tree, text, len) ==
            QB_OK &&
        kind == QB_MSG_EVENT)
        vm_note_event(vm, "qmp.vm.state",
                      ts_sec >= 0 ? (uint64_t)ts_sec * 1000000u + (uint64_t)ts_usec
                                  : qb_publish_now_usec());
}

/*
 * Folds ev into the VM's state. The manager's cache keeps the parsed state of
 * the VMs that folded most recently (QB_VM_STATE_TREES_MAX): flat-out VMs
 * whose reads interleave parse their state once, not once per read, while
 * 10,000 idle VMs hold ~370 bytes of text each instead of ~2.7 KB of tree.
 */
static bool vm_fold_state(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    return qb_vm_state_fold(vm->state, vm->mgr->state_cache, ev);
}

/*
 * The generic "forget this VM's state" message: kind STATE with an empty
 * payload. The outbox and the spool carry it like any state copy; each
 * backend with a retained channel turns it into its own way of deleting.
 */
void qb_vm_publish_state_clear(struct qb_vm *vm)
{
    qb_vm_state_copy_flush(vm);
    qb_publish_state_clear(vm->stream);
    qb_vm_state_free(vm->state);
    vm->state = NULL;
}

void qb_vm_publish_state_event(struct qb_vm *vm)
{
    /* One timestamp for both copies: they are the same event. */
    uint64_t now = qb_publish_now_usec();
    int64_t sec = (int64_t)(now / 1000000u);
    int32_t usec = (int32_t)(now % 1000000u);
    uint64_t seq;

    qb_vm_state_copy_flush(vm);
    seq = qb_stream_next_sequence(vm->stream);
    qb_vm_publish_state(vm, QB_MSG_EVENT, seq, NULL, sec, usec);
    qb_vm_publish_state(vm, QB_MSG_STATE, seq, NULL, sec, usec);
}

/* Publishes one bridge-made event (connected, disconnected, snapshot) at the bridge's clock. */
uint64_t qb_vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data)
{
    uint64_t origin = 0;
    uint64_t seq = qb_publish_event(vm->stream, type, QB_ENVELOPE_TIME_NOW, 0, data, &origin);

    if (seq)
        vm_note_event(vm, type, origin);
    return seq ? seq : qb_stream_sequence(vm->stream);
}

/*
 * Publishes a complete normalised event and, when it changed the VM's state,
 * marks the state for its copy on the state topic (vm_state_copies.c).
 */
void qb_vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    uint64_t origin = 0;

    if (qb_publish_event(vm->stream, ev->type, ev->ts_sec, ev->ts_usec, ev->data, &origin))
        vm_note_event(vm, ev->type, origin);
    if (vm->state && vm_fold_state(vm, ev))
        qb_vm_state_copy_mark(vm, ev->ts_sec, ev->ts_usec);
}
