/*
 * vm_publish.c - what a VM publishes, through the one door (publish.h):
 * events, its state as event and state copy, bridge events about it.
 *
 * The numbering and the envelopes are the door's; here sit what only the VM
 * knows: folding an event into the VM's state (and marking the state copy
 * it then owes), and counting what it published for the status API.
 */
#include "vm_publish.h"

#include "vm_state_copies.h"

#include "envelope.h"
#include "error.h"
#include "log.h"
#include "publish.h"
#include "vm_state.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

/* One counter of qb_vm_manager_foreach_count: key (and key2) own their text. */
struct qb_count {
    char *key; /* "<key>\0<key2>" for two-part keys: one allocation, one hash key */
    size_t keylen;
    enum qb_vm_count which;
    uint64_t n;
    UT_hash_handle hh;
};

/*
 * Adds one to the counter (which, key, key2) and returns its interned key
 * (stable for the manager's lifetime), or NULL when out of memory (the count
 * is lost, nothing else).
 */
const char *qb_vm_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                        const char *key2)
{
    /* "<which><key>\0<key2>", built by hand: this runs once per event (snprintf was 2%) */
    char buf[256];
    size_t klen = strlen(key), k2len = key2 ? strlen(key2) : 0;
    size_t n = 1 + klen + 1 + k2len;
    struct qb_count *c = NULL;

    if (n >= sizeof(buf))
        return NULL;
    buf[0] = (char)('0' + (int)which);
    memcpy(buf + 1, key, klen);
    buf[1 + klen] = '\0';
    if (k2len)
        memcpy(buf + 2 + klen, key2, k2len);
    buf[n] = '\0';
    HASH_FIND(hh, m->counts, buf, n, c);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c || !(c->key = malloc(n + 1))) {
            free(c);
            return NULL;
        }
        memcpy(c->key, buf, n + 1);
        c->keylen = n;
        c->which = which;
        HASH_ADD_KEYPTR(hh, m->counts, c->key, c->keylen, c);
    }
    c->n++;
    return c->key + 1;
}

void qb_vm_counts_foreach(const struct qb_vm_manager *m, enum qb_vm_count which,
                          void (*cb)(void *arg, const char *key, const char *key2, uint64_t n),
                          void *arg)
{
    for (const struct qb_count *c = m->counts; c; c = c->hh.next) {
        const char *key = c->key + 1;

        if (c->which == which)
            cb(arg, key, which == QB_VM_COUNT_COMMANDS ? key + strlen(key) + 1 : NULL, c->n);
    }
}

void qb_vm_counts_free(struct qb_vm_manager *m)
{
    struct qb_count *c, *tmp;

    HASH_ITER(hh, m->counts, c, tmp)
    {
        HASH_DEL(m->counts, c);
        free(c->key);
        free(c);
    }
}

int qb_vm_out_open(struct qb_vm *vm)
{
    return qb_stream_open(vm->mgr->pub, vm->name, &vm->out.stream);
}

void qb_vm_out_free(struct qb_vm *vm)
{
    qb_vm_state_free(vm->out.state);
    vm->out.state = NULL;
    qb_stream_free(vm->out.stream);
    vm->out.stream = NULL;
}

/* Counts a published event and remembers it as the VM's last (status API, metrics). */
static void vm_note_event(struct qb_vm *vm, const char *type, uint64_t origin_usec)
{
    const char *interned = qb_vm_count(vm->mgr, QB_VM_COUNT_EVENTS, type, NULL);

    if (interned) {
        vm->out.last_event = interned;
        vm->out.last_event_usec = origin_usec;
    }
}

/*
 * Publishes the VM's held state (kind STATE or EVENT) without serialising it
 * twice: straight from its tree while it holds one, else its text.
 */
static void vm_publish_state(struct qb_vm *vm, enum qb_msg_kind kind, uint64_t seq,
                             const char *id_suffix, int64_t ts_sec, int32_t ts_usec)
{
    const json_t *tree = qb_vm_state_tree(vm->out.state);
    size_t len = 0;
    const char *text = tree ? NULL : qb_vm_state_text(vm->out.state, &len);

    if (!tree && !text) {
        QB_LOG_ERR(vm->name, "state seq %llu not published: out of memory",
                   (unsigned long long)seq);
        return;
    }
    if (qb_publish_state(vm->out.stream, kind, seq, id_suffix, ts_sec, ts_usec, tree, text, len) ==
            QB_OK &&
        kind == QB_MSG_EVENT)
        vm_note_event(vm, "qmp.vm.state", qb_publish_origin_usec(ts_sec, ts_usec));
}

/*
 * Folds ev into the VM's state. The manager's cache keeps the parsed state of
 * the VMs that folded most recently (QB_VM_STATE_TREES_MAX): flat-out VMs
 * whose reads interleave parse their state once, not once per read, while
 * 10,000 idle VMs hold ~370 bytes of text each instead of ~2.7 KB of tree.
 */
static bool vm_fold_state(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    return qb_vm_state_fold(vm->out.state, vm->mgr->state_cache, ev);
}

void qb_vm_publish_state_copy(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec)
{
    if (vm->out.state)
        vm_publish_state(vm, QB_MSG_STATE, qb_stream_sequence(vm->out.stream), ".state", ts_sec,
                         ts_usec);
}

/*
 * The generic "forget this VM's state" message: kind STATE with an empty
 * payload. The outbox and the spool carry it like any state copy; each
 * backend with a retained channel turns it into its own way of deleting.
 */
void qb_vm_publish_state_clear(struct qb_vm *vm)
{
    qb_vm_state_copy_flush(vm);
    qb_publish_state_clear(vm->out.stream);
    qb_vm_state_free(vm->out.state);
    vm->out.state = NULL;
}

void qb_vm_publish_state_event(struct qb_vm *vm)
{
    /* One timestamp for both copies: they are the same event. */
    uint64_t now = qb_publish_now_usec();
    int64_t sec = (int64_t)(now / 1000000u);
    int32_t usec = (int32_t)(now % 1000000u);
    uint64_t seq;

    qb_vm_state_copy_flush(vm);
    seq = qb_stream_next_sequence(vm->out.stream);
    vm_publish_state(vm, QB_MSG_EVENT, seq, NULL, sec, usec);
    vm_publish_state(vm, QB_MSG_STATE, seq, NULL, sec, usec);
}

void qb_vm_publish_snapshot(struct qb_vm *vm, struct qb_vm_state *held)
{
    /* the old state's pending copy goes first, under the old sequence */
    qb_vm_state_copy_flush(vm);
    qb_vm_state_free(vm->out.state);
    vm->out.state = held;
    qb_vm_publish_state_event(vm);
}

void qb_vm_publish_disconnected(struct qb_vm *vm, const json_t *data)
{
    struct qb_norm_event ev = {.type = "bridge.vm.disconnected", .data = (json_t *)data};

    if (data)
        qb_vm_publish_bridge_event(vm, "bridge.vm.disconnected", data);
    /* The last known state, marked connected: false: consumers hold off until it is back. */
    if (vm->out.state && qb_vm_state_fold(vm->out.state, vm->mgr->state_cache, &ev))
        qb_vm_publish_state_event(vm);
}

/* Publishes one bridge-made event (connected, disconnected, snapshot) at the bridge's clock. */
uint64_t qb_vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data)
{
    uint64_t origin = 0;
    uint64_t seq = qb_publish_event(vm->out.stream, type, QB_ENVELOPE_TIME_NOW, 0, data, &origin);

    if (seq)
        vm_note_event(vm, type, origin);
    return seq ? seq : qb_stream_sequence(vm->out.stream);
}

/*
 * Publishes a complete normalised event and, when it changed the VM's state,
 * marks the state for its copy on the state topic (vm_state_copies.c).
 */
void qb_vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    uint64_t origin = 0;

    if (qb_publish_event(vm->out.stream, ev->type, ev->ts_sec, ev->ts_usec, ev->data, &origin))
        vm_note_event(vm, ev->type, origin);
    if (vm->out.state && vm_fold_state(vm, ev))
        qb_vm_state_copy_mark(vm, ev->ts_sec, ev->ts_usec);
}
