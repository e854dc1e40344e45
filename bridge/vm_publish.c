/*
 * vm_publish.c - numbering and publishing what a VM says: events, state, bridge events.
 *
 * Every envelope of a VM gets its epoch and next sequence here and goes to the
 * outbox (events, state) or straight to one transport (replies). Kept apart
 * from the pipeline and the lifecycle so that the rules for numbering (one
 * sequence per published event, the state copy sharing its event's sequence,
 * a removed VM's leftovers vs. a returning VM) sit in one small file.
 */
#include "vm_manager_internal.h"

#include "envelope.h"
#include "error.h"
#include "log.h"
#include "outbox.h"
#include "transport.h"
#include "vm_state.h"

#include <stdbool.h>
#include <stdlib.h>
#include <uthash.h>

/* Sends one built envelope to every transport through the outbox (EVENT/STATE) or to one (REPLY).
 */
void qb_vm_mgr_send(struct qb_vm_manager *m, struct qb_transport *only,
                    const struct qb_message *msg)
{
    if (only) {
        qb_outbox_send_reply(m->outbox, only, msg);
        return;
    }
    qb_outbox_send(m->outbox, msg);
}

/*
 * A removed VM still publishes what its closing session brings (its
 * bridge.vm.disconnected, events read before the close): the numbering memo a
 * returning VM of that name continues from must include those. If that VM has
 * already come back, the old session's leftovers are dropped instead: two
 * incarnations numbering at once would hand out one sequence twice.
 * Returns false when vm must not publish.
 */
static bool vm_removed_may_publish(struct qb_vm *vm, const char *type, uint64_t seq)
{
    struct qb_vm_manager *m = vm->mgr;
    struct qb_vm *live = NULL;
    struct qb_seq_memo *memo = NULL;

    HASH_FIND_STR(m->vms, vm->name, live);
    if (live) {
        QB_LOG_WARN(vm->name,
                    "%s (seq %llu) of the removed session dropped: the VM is back with "
                    "a new session",
                    type, (unsigned long long)seq);
        return false;
    }
    HASH_FIND_STR(m->memos, vm->name, memo);
    if (memo && memo->epoch == vm->epoch && memo->seq < seq)
        memo->seq = seq;
    return true;
}

/*
 * Builds one envelope and hands it to every transport.
 * A transport that refuses (queue full) has already counted and logged it.
 */
static void vm_publish_in(struct qb_vm *vm, enum qb_msg_kind kind, const char *type, uint64_t seq,
                          const char *id_suffix, int64_t ts_sec, int32_t ts_usec,
                          const json_t *data, const char *data_json, size_t data_json_len)
{
    struct qb_vm_manager *m = vm->mgr;
    struct qb_envelope_in in = {
        .data_json = data_json,
        .data_json_len = data_json_len,
        .vm = vm->name,
        .type = type,
        .epoch = vm->epoch,
        .sequence = seq,
        .id_suffix = id_suffix,
        .ts_sec = ts_sec,
        .ts_usec = ts_usec,
        .data = data,
    };
    char id[96];
    char *payload = NULL;
    size_t len = 0;
    int rc;

    if (vm->removing && !m->closing && !vm_removed_may_publish(vm, type, seq))
        return;
    rc = qb_envelope_build(&m->env, &in, &payload, &len);
    if (rc < 0) {
        QB_LOG_ERR(vm->name, "cannot build envelope for %s seq %llu: %s", type,
                   (unsigned long long)seq, qb_strerror(rc));
        return;
    }
    qb_envelope_format_id(vm->epoch, seq, id_suffix, id, sizeof(id));

    struct qb_message msg = {
        .kind = kind,
        .vm = vm->name,
        .type = type,
        .id = id,
        .key = vm->key,
        .sequence = seq,
        .epoch = vm->epoch,
        .payload = payload,
        .len = len,
        .origin_usec =
            ts_sec >= 0 ? (uint64_t)ts_sec * 1000000u + (uint64_t)ts_usec : qb_vm_wall_clock_usec(),
    };
    qb_vm_mgr_send(m, NULL, &msg);
    if (kind == QB_MSG_EVENT) {
        const char *interned = qb_vm_mgr_count(m, QB_VM_COUNT_EVENTS, type, NULL);

        if (interned) {
            vm->last_event = interned;
            vm->last_event_usec = msg.origin_usec;
        }
    }
    QB_LOG_DEBUG(vm->name, "published %s %s seq %llu", kind == QB_MSG_STATE ? "state" : "event",
                 type, (unsigned long long)seq);
    free(payload);
}

static void vm_publish(struct qb_vm *vm, enum qb_msg_kind kind, const char *type, uint64_t seq,
                       const char *id_suffix, int64_t ts_sec, int32_t ts_usec, const json_t *data)
{
    vm_publish_in(vm, kind, type, seq, id_suffix, ts_sec, ts_usec, data, NULL, 0);
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
    vm_publish_in(vm, kind, "qmp.vm.state", seq, id_suffix, ts_sec, ts_usec, tree, text, len);
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
    char id[96];

    qb_vm_state_copy_flush(vm);
    qb_envelope_format_id(vm->epoch, vm->seq, ".clear", id, sizeof(id));
    struct qb_message msg = {
        .kind = QB_MSG_STATE,
        .vm = vm->name,
        .type = "qmp.vm.state",
        .id = id,
        .key = vm->key,
        .sequence = vm->seq,
        .epoch = vm->epoch,
        .payload = "",
        .len = 0,
        .origin_usec = qb_vm_wall_clock_usec(),
    };
    qb_vm_mgr_send(vm->mgr, NULL, &msg);
    QB_LOG_DEBUG(vm->name, "published the clearing of its retained state (after seq %llu)",
                 (unsigned long long)vm->seq);
    qb_vm_state_free(vm->state);
    vm->state = NULL;
}

void qb_vm_publish_state_event(struct qb_vm *vm)
{
    /* One timestamp for both copies: they are the same event. */
    uint64_t now = qb_vm_wall_clock_usec();
    int64_t sec = (int64_t)(now / 1000000u);
    int32_t usec = (int32_t)(now % 1000000u);
    uint64_t seq;

    qb_vm_state_copy_flush(vm);
    seq = ++vm->seq;
    qb_vm_publish_state(vm, QB_MSG_EVENT, seq, NULL, sec, usec);
    qb_vm_publish_state(vm, QB_MSG_STATE, seq, NULL, sec, usec);
}

/* Publishes one bridge-made event (connected, disconnected, snapshot) at the bridge's clock. */
uint64_t qb_vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data)
{
    uint64_t seq = ++vm->seq;

    vm_publish(vm, QB_MSG_EVENT, type, seq, NULL, QB_ENVELOPE_TIME_NOW, 0, data);
    return seq;
}

/*
 * Publishes a complete normalised event and, when it changed the VM's state,
 * marks the state for its copy on the state topic (vm_state_copies.c).
 */
void qb_vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    uint64_t seq = ++vm->seq;

    vm_publish(vm, QB_MSG_EVENT, ev->type, seq, NULL, ev->ts_sec, ev->ts_usec, ev->data);
    if (vm->state && vm_fold_state(vm, ev))
        qb_vm_state_copy_mark(vm, ev->ts_sec, ev->ts_usec);
}
