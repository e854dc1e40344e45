/*
 * vm_manager.c - the VMs of one bridge: sessions, back-off, resync, ordered publishing.
 *
 * Data flows one way: qmp_client -> normalize -> envelope -> transports. The
 * manager is the only place that decides when to reconnect and the only place
 * that numbers events, so ordering and sequence rules live here and nowhere
 * else. See vm_manager.h for the guarantees.
 *
 * A VM is blocked while its connect-time snapshot is being queried or while an
 * event waits for a query; events read meanwhile wait in a per-VM backlog and
 * are processed in order once it unblocks. Reply callbacks hold the VM alive
 * (inflight counter), so a VM removed mid-query is freed only after its last
 * callback has run.
 *
 * Back-pressure: while any transport says its queue is near full, every VM
 * stops reading from its socket (QEMU keeps the events) once it is READY,
 * resynced and not waiting on a query, since those need their replies read.
 *
 * Listen mode: a session QEMU opened to qmp.listen starts as a "newcomer"
 * with no VM; once READY and named (query-name or the template) its client
 * is handed to the VM entry of that name, whose usual on_ready path then
 * runs, so a listen VM differs from others only in never reconnecting.
 */
#include "vm_manager.h"

#include "command_exec.h"
#include "envelope.h"
#include "error.h"
#include "log.h"
#include "normalize.h"
#include "outbox.h"
#include "prom.h"
#include "qmp_client.h"
#include "vm_state.h"

#include <stdbool.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>
#include <uthash.h>

/* Sessions that stayed READY this long reset the back-off to its initial delay. */
#define QB_VM_STABLE_MS 10000

/* The snapshot queries run on every READY, in this order. */
enum qb_vm_query {
    QB_VMQ_STATUS,
    QB_VMQ_BLOCK,
    QB_VMQ_JOBS,
    QB_VMQ_COLO,
    QB_VMQ_NAME,
    QB_VMQ_UUID,
    QB_VMQ_COUNT
};
static const char *const qb_vm_query_names[QB_VMQ_COUNT] = {
    "query-status", "query-block", "query-block-jobs", "query-colo-status",
    "query-name",   "query-uuid"};

struct qb_vm;

/* One command waiting for or running on its VM; owns everything it points to. */
struct qb_vm_cmd {
    struct qb_vm_cmd *next;
    struct qb_command *cmd;
    struct qb_transport *transport;
    uint64_t ack_token;
    char *reply_topic;
    void *correlation;
    size_t correlation_len;
    uint64_t deadline; /* uv_now() by which it must have started */
    uint64_t received_usec; /* wall clock when it was submitted, for the latency histogram */
    qb_vm_command_done_cb done;
    void *done_arg;
};

/* One snapshot query in flight: which VM, which slot of the reply table. */
struct qb_vm_query_ctx {
    struct qb_vm *vm;
    enum qb_vm_query which;
};

struct qb_vm {
    struct qb_vm_manager *mgr;
    char *name;
    char *address;
    char *key; /* "<bridge>/<vm>" */
    struct qb_qmp_client *qmp;
    struct qb_norm_vm *norm;
    struct qb_vm_state *state; /* latest qmp.vm.state (compact text); NULL before the first snapshot */

    uint64_t epoch;
    uint64_t seq;

    uv_timer_t reconnect_timer;
    uint32_t attempts;  /* failed connects since the last stable session */
    uint64_t ready_at;  /* uv_now when READY was reached, 0 when not ready */
    bool was_ready;     /* bridge.vm.connected was published for this session */
    bool read_paused;   /* reading stopped for back-pressure */
    bool removing;
    bool timer_closed;
    bool has_slot;      /* counts against qmp.max_connecting until resynced or closed */
    bool listen;        /* sessions come from qmp.listen: never connects, waits for QEMU */
    bool slot_waiting;  /* queued for a connect slot */
    struct qb_vm *slot_next;
    char *identity;     /* "<query-name name>/<query-uuid UUID>" of the last session, or NULL */
    char qemu_version[32];
    const char *last_event; /* a published type: static strings or interned in mgr->counts */
    uint64_t last_event_usec;
    uint64_t reconnects;
    unsigned inflight;  /* reply callbacks still to come */

    /* The ordered pipeline. */
    bool resyncing;
    json_t *resync_replies[QB_VMQ_COUNT];
    unsigned resync_left;
    struct qb_norm_event pending; /* pending.type != NULL: waiting for a query */
    json_t **backlog;
    size_t backlog_head, backlog_len, backlog_cap;
    bool draining;

    /* Commands: a FIFO, one running at a time. */
    struct qb_vm_cmd *cmd_head, *cmd_tail;
    size_t cmd_queued;
    struct qb_vm_cmd *cmd_running;
    bool state_cmd_waiting; /* the running command is query-state, waiting for the snapshot */

    UT_hash_handle hh;
};

/* One counter of qb_vm_manager_foreach_count: key (and key2) own their text. */
struct qb_count {
    char *key; /* "<key>\0<key2>" for two-part keys: one allocation, one hash key */
    size_t keylen;
    enum qb_vm_count which;
    uint64_t n;
    UT_hash_handle hh;
};

/* Sequence counters of VMs that were removed, so a returning name keeps counting. */
struct qb_seq_memo {
    char *name;
    uint64_t epoch;
    uint64_t seq;
    UT_hash_handle hh;
};

struct qb_vm_manager {
    uv_loop_t *loop;
    const struct qb_config *cfg;
    struct qb_transport *const *transports;
    size_t n_transports;
    struct qb_outbox *outbox;
    struct qb_envelope_ctx env;
    struct qb_qmp_options qmp_opts;
    struct qb_vm *vms;
    size_t slots_since_trim; /* connect slots given back since the heap was last trimmed */
    struct qb_vm *state_hot; /* the one VM whose state is held parsed (see vm_fold_state) */
    struct qb_seq_memo *memos;
    struct qb_count *counts;
    struct qb_vm_manager_stats stats;
    struct qb_histogram cmd_latency;
    uint64_t rng;
    bool pressure; /* the outbox wants QMP reading paused */
    size_t n_connecting; /* VMs holding a connect slot */
    struct qb_vm *slot_head, *slot_tail; /* VMs waiting for one, in order */
    bool closing;
    size_t n_alive; /* VM structs not yet freed, including ones being removed */
    struct qb_vm_newcomer *newcomers; /* listen mode: accepted, not named yet */
    size_t n_newcomers;
    void (*room_cb)(void *arg, bool room); /* listen mode: may another connection come? */
    void *room_arg;
    void (*done)(void *arg);
    void *done_arg;
};

static void vm_connect(struct qb_vm *vm);
static void vm_drain(struct qb_vm *vm);
static void vm_apply_pause(struct qb_vm *vm);
static void vm_cmd_finish_state(struct qb_vm *vm, bool ok);
static bool vm_name_valid(const char *name);
static void vm_start_resync(struct qb_vm *vm);
static void vm_maybe_free(struct qb_vm *vm);
static void vm_slot_release(struct qb_vm *vm);
static void vm_check_identity(struct qb_vm *vm, const json_t *name_reply, const json_t *uuid_reply);

static uint64_t wall_clock_usec(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/*
 * Adds one to the counter (which, key, key2) and returns its interned key
 * (stable for the manager's lifetime), or NULL when out of memory (the count
 * is lost, nothing else).
 */
static const char *mgr_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                             const char *key2)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "%c%s%c%s", '0' + (int)which, key, '\0', key2 ? key2 : "");
    struct qb_count *c = NULL;

    if (n < 0 || (size_t)n >= sizeof(buf))
        return NULL;
    HASH_FIND(hh, m->counts, buf, (size_t)n, c);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c || !(c->key = malloc((size_t)n + 1))) {
            free(c);
            return NULL;
        }
        memcpy(c->key, buf, (size_t)n + 1);
        c->keylen = (size_t)n;
        c->which = which;
        HASH_ADD_KEYPTR(hh, m->counts, c->key, c->keylen, c);
    }
    c->n++;
    return c->key + 1;
}

/* xorshift64*: jitter only needs to spread reconnects, not be unpredictable. */
static uint64_t mgr_random(struct qb_vm_manager *m)
{
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return m->rng * 2685821657736338717ull;
}

/* ---- publishing ---------------------------------------------------------- */

/* Sends one built envelope to every transport through the outbox (EVENT/STATE) or to one (REPLY). */
static void mgr_send(struct qb_vm_manager *m, struct qb_transport *only, const struct qb_message *msg)
{
    if (only) {
        qb_transport_send(only, msg);
        return;
    }
    qb_outbox_send(m->outbox, msg);
}

/*
 * Builds one envelope and hands it to every transport.
 * A transport that refuses (queue full) has already counted and logged it.
 */
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
        QB_LOG_WARN(vm->name, "%s (seq %llu) of the removed session dropped: the VM is back with "
                    "a new session", type, (unsigned long long)seq);
        return false;
    }
    HASH_FIND_STR(m->memos, vm->name, memo);
    if (memo && memo->epoch == vm->epoch && memo->seq < seq)
        memo->seq = seq;
    return true;
}

static void vm_publish_in(struct qb_vm *vm, enum qb_msg_kind kind, const char *type,
                          uint64_t seq, const char *id_suffix, int64_t ts_sec, int32_t ts_usec,
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
        .origin_usec = ts_sec >= 0 ? (uint64_t)ts_sec * 1000000u + (uint64_t)ts_usec
                                   : wall_clock_usec(),
    };
    mgr_send(m, NULL, &msg);
    if (kind == QB_MSG_EVENT) {
        const char *interned = mgr_count(m, QB_VM_COUNT_EVENTS, type, NULL);

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

/* Publishes the VM's held state text (kind STATE or EVENT) without serialising it again. */
static void vm_publish_state(struct qb_vm *vm, enum qb_msg_kind kind, uint64_t seq,
                             const char *id_suffix, int64_t ts_sec, int32_t ts_usec)
{
    size_t len = 0;
    const char *text = qb_vm_state_text(vm->state, &len);

    vm_publish_in(vm, kind, "qmp.vm.state", seq, id_suffix, ts_sec, ts_usec, NULL, text, len);
}

/*
 * Folds ev into the VM's state. Only one VM per manager keeps its state parsed
 * between events: a burst from one VM (a mirror's io_errors) parses it once,
 * and 10,000 idle VMs hold ~370 bytes of text each instead of ~2.7 KB of tree.
 */
static bool vm_fold_state(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    struct qb_vm_manager *m = vm->mgr;

    if (m->state_hot && m->state_hot != vm)
        qb_vm_state_idle(m->state_hot->state);
    m->state_hot = vm;
    return qb_vm_state_fold(vm->state, ev);
}

/* Publishes one bridge-made event (connected, disconnected, snapshot) at the bridge's clock. */
static uint64_t vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data)
{
    uint64_t seq = ++vm->seq;

    vm_publish(vm, QB_MSG_EVENT, type, seq, NULL, -1, 0, data);
    return seq;
}

/* Publishes a complete normalised event and, when it changed the VM's state, the new state. */
static void vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev)
{
    uint64_t seq = ++vm->seq;

    vm_publish(vm, QB_MSG_EVENT, ev->type, seq, NULL, ev->ts_sec, ev->ts_usec, ev->data);
    if (vm->state && vm_fold_state(vm, ev))
        vm_publish_state(vm, QB_MSG_STATE, seq, ".state", ev->ts_sec, ev->ts_usec);
}

/* ---- the ordered event pipeline ------------------------------------------ */

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
static int vm_backlog_push(struct qb_vm *vm, json_t *msg)
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
        vm_publish_event(vm, &vm->pending);
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
        vm_publish_event(vm, &vm->pending);
        qb_norm_event_clear(&vm->pending);
    }
    vm_drain(vm);
    vm_apply_pause(vm);
    vm_maybe_free(vm);
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
    vm_publish_event(vm, &ev);
    qb_norm_event_clear(&ev);
}

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
static void vm_drain(struct qb_vm *vm)
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

static void vm_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm *vm = arg;

    (void)c;
    if (vm_blocked(vm) || vm->backlog_head < vm->backlog_len) {
        if (vm_backlog_push(vm, msg) < 0)
            QB_LOG_ERR(vm->name, "out of memory: event %s lost",
                       json_string_value(json_object_get(msg, "event")));
        return;
    }
    vm_process(vm, msg);
}

/* ---- connect-time snapshot ----------------------------------------------- */

/*
 * The socket a VM entry points at may now be served by another QEMU (a
 * restarted VM, or a path reused for a different guest). Its name (-name) and
 * UUID tell: when they differ from the previous session's, the change is
 * published before the fresh snapshot, so a consumer never takes the new
 * QEMU's state for a continuation of the old one.
 */
static void vm_check_identity(struct qb_vm *vm, const json_t *name_reply, const json_t *uuid_reply)
{
    const char *name = json_string_value(json_object_get(name_reply, "name"));
    const char *uuid = json_string_value(json_object_get(uuid_reply, "UUID"));
    char *identity = NULL;

    if (!name_reply && !uuid_reply)
        return; /* QEMU did not say: nothing to compare */
    if (asprintf(&identity, "%s/%s", name ? name : "", uuid ? uuid : "") < 0)
        return;
    if (vm->identity && strcmp(vm->identity, identity) != 0) {
        const char *slash = strrchr(vm->identity, '/');
        char *old_name = strndup(vm->identity, (size_t)(slash - vm->identity));
        json_t *data = json_pack("{s:{s:s, s:s}, s:{s:s, s:s}, s:s}", "previous", "name",
                                 old_name ? old_name : "", "uuid", slash + 1, "current", "name",
                                 name ? name : "", "uuid", uuid ? uuid : "", "address",
                                 vm->address);

        QB_LOG_WARN(vm->name,
                    "%s is now served by another QEMU (name '%s', uuid %s; was '%s', uuid %s): "
                    "publishing bridge.vm.identity_changed and a fresh state",
                    vm->address, name ? name : "", uuid ? uuid : "", old_name ? old_name : "",
                    slash + 1);
        if (data) {
            vm_publish_bridge_event(vm, "bridge.vm.identity_changed", data);
            json_decref(data);
        }
        free(old_name);
    }
    free(vm->identity);
    vm->identity = identity;
}

static void vm_finish_resync(struct qb_vm *vm)
{
    json_t **r = vm->resync_replies;

    if (qb_qmp_client_state(vm->qmp) == QB_QMP_READY) {
        json_t *snap = qb_vm_state_from_queries(qb_qmp_client_greeting(vm->qmp), r[QB_VMQ_STATUS],
                                                r[QB_VMQ_BLOCK], r[QB_VMQ_JOBS], r[QB_VMQ_COLO]);
        vm_check_identity(vm, r[QB_VMQ_NAME], r[QB_VMQ_UUID]);
        if (snap) {
            /* One timestamp for both copies: they are the same event. */
            uint64_t now = wall_clock_usec();
            int64_t sec = (int64_t)(now / 1000000u);
            int32_t usec = (int32_t)(now % 1000000u);
            uint64_t seq = ++vm->seq;

            struct qb_vm_state *held = qb_vm_state_new(snap);

            qb_norm_vm_reset(vm->norm, snap);
            json_decref(snap);
            if (held) {
                if (vm->mgr->state_hot == vm)
                    vm->mgr->state_hot = NULL;
                qb_vm_state_free(vm->state);
                vm->state = held;
                vm_publish_state(vm, QB_MSG_EVENT, seq, NULL, sec, usec);
                vm_publish_state(vm, QB_MSG_STATE, seq, NULL, sec, usec);
                QB_LOG_INFO(vm->name, "state resynced: %s", qb_vm_state_run_state(held));
            } else {
                QB_LOG_ERR(vm->name, "out of memory holding the state snapshot");
            }
        } else {
            QB_LOG_ERR(vm->name, "out of memory building the state snapshot");
        }
    }
    for (int i = 0; i < QB_VMQ_COUNT; i++) {
        json_decref(r[i]);
        r[i] = NULL;
    }
    vm->resyncing = false;
    vm_slot_release(vm);
    if (vm->state_cmd_waiting)
        vm_cmd_finish_state(vm, qb_qmp_client_state(vm->qmp) == QB_QMP_READY);
    vm_drain(vm);
    vm_apply_pause(vm);
}

static void vm_resync_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct qb_vm_query_ctx *q = arg;
    struct qb_vm *vm = q->vm;

    (void)c;
    vm->inflight--;
    if (status == QB_OK) {
        vm->resync_replies[q->which] = json_incref(reply);
    } else if (status != QB_ECLOSED &&
               !((q->which == QB_VMQ_COLO || q->which == QB_VMQ_NAME || q->which == QB_VMQ_UUID) &&
                 status == QB_EQMP)) {
        /* query-colo-status fails on builds without COLO: that just means "no COLO". */
        QB_LOG_WARN(vm->name, "%s failed during resync: %s", qb_vm_query_names[q->which],
                    qb_strerror(status));
    }
    free(q);
    if (--vm->resync_left == 0)
        vm_finish_resync(vm);
    vm_maybe_free(vm);
}

static void vm_start_resync(struct qb_vm *vm)
{
    vm->resyncing = true;
    vm->resync_left = QB_VMQ_COUNT;
    for (int i = 0; i < QB_VMQ_COUNT; i++) {
        struct qb_vm_query_ctx *q = malloc(sizeof(*q));
        int rc = QB_ENOMEM;

        if (q) {
            q->vm = vm;
            q->which = (enum qb_vm_query)i;
            vm->inflight++;
            rc = qb_qmp_client_execute(vm->qmp, qb_vm_query_names[i], NULL,
                                       vm->mgr->cfg->qmp_command_timeout_ms, vm_resync_reply, q);
            if (rc < 0) {
                vm->inflight--;
                free(q);
            }
        }
        if (rc < 0) {
            QB_LOG_WARN(vm->name, "%s not sent: %s", qb_vm_query_names[i], qb_strerror(rc));
            if (--vm->resync_left == 0)
                vm_finish_resync(vm);
        }
    }
}

/* ---- commands ------------------------------------------------------------ */

/* The string member key of obj, or fallback when absent or not a string. */
static const char *json_str_or(const json_t *obj, const char *key, const char *fallback)
{
    const char *v = json_string_value(json_object_get(obj, key));

    return v ? v : fallback;
}

static void vm_cmd_free(struct qb_vm_cmd *c)
{
    qb_command_free(c->cmd);
    free(c->reply_topic);
    free(c->correlation);
    free(c);
}

/*
 * Publishes a bridge.command.result (borrowed): on vm's stream when vm is not
 * NULL, as a reply on transport t when t is not NULL (sequence 0 without a
 * VM), then acks the inbound message.
 */
static void mgr_publish_result(struct qb_vm_manager *m, struct qb_vm *vm, const char *vm_name,
                               const json_t *result, struct qb_transport *t, uint64_t ack,
                               const char *reply_topic, const void *corr, size_t corr_len)
{
    const char *name = vm ? vm->name : (vm_name && vm_name_valid(vm_name) ? vm_name : "unknown");
    uint64_t epoch = vm ? vm->epoch : 0, seq = vm ? ++vm->seq : 0;
    struct qb_envelope_in in = {
        .vm = name, .type = "bridge.command.result", .epoch = epoch, .sequence = seq,
        .ts_sec = -1, .data = result,
    };
    char id[96], *key = NULL, *payload = NULL;
    size_t len = 0;

    if (asprintf(&key, "%s/%s", m->cfg->bridge_id, name) < 0)
        key = NULL;
    if (key && qb_envelope_build(&m->env, &in, &payload, &len) == QB_OK) {
        struct qb_message msg = {
            .kind = QB_MSG_EVENT, .vm = name, .type = in.type, .id = id, .key = key,
            .sequence = seq, .epoch = epoch, .payload = payload, .len = len,
        };
        qb_envelope_format_id(epoch, seq, NULL, id, sizeof(id));
        if (vm)
            mgr_send(m, NULL, &msg);
        if (t) {
            msg.kind = QB_MSG_REPLY;
            msg.reply_topic = reply_topic;
            msg.correlation = corr;
            msg.correlation_len = corr_len;
            mgr_send(m, t, &msg);
        }
        mgr_count(m, QB_VM_COUNT_COMMANDS, json_str_or(result, "command", "?"),
                  json_str_or(result, "status", "?"));
        QB_LOG_INFO(name, "command %s %s: %s", json_str_or(result, "command", "?"),
                    json_str_or(result, "command_id", "?"), json_str_or(result, "status", "?"));
    } else {
        QB_LOG_ERR(name, "cannot build the command result envelope: out of memory");
    }
    free(key);
    free(payload);
    if (t)
        qb_transport_ack(t, ack);
}

/* The running (or just dequeued) command c is over: publish, report, free. result is stolen. */
static void vm_cmd_complete(struct qb_vm *vm, struct qb_vm_cmd *c, json_t *result)
{
    uint64_t now = wall_clock_usec();

    qb_histogram_observe_usec(&vm->mgr->cmd_latency,
                              now > c->received_usec ? now - c->received_usec : 0);
    mgr_publish_result(vm->mgr, vm, vm->name, result, c->transport, c->ack_token, c->reply_topic,
                       c->correlation, c->correlation_len);
    if (c->done)
        c->done(c->done_arg, c->cmd, result);
    json_decref(result);
    vm_cmd_free(c);
}

static void vm_cmd_reject(struct qb_vm *vm, struct qb_vm_cmd *c, const char *cls,
                          const char *message)
{
    struct qb_command_error err = {.cls = cls};

    snprintf(err.message, sizeof(err.message), "%s", message);
    vm_cmd_complete(vm, c, qb_command_result_rejected(c->cmd, &err));
}

/* Rejects every command still waiting (not the running one). */
static void vm_cmd_flush(struct qb_vm *vm, const char *cls, const char *message)
{
    while (vm->cmd_head) {
        struct qb_vm_cmd *c = vm->cmd_head;
        vm->cmd_head = c->next;
        if (!vm->cmd_head)
            vm->cmd_tail = NULL;
        vm->cmd_queued--;
        vm_cmd_reject(vm, c, cls, message);
    }
}

static void vm_cmd_run_next(struct qb_vm *vm);

static void vm_cmd_exec_done(void *arg, json_t *result)
{
    struct qb_vm *vm = arg;
    struct qb_vm_cmd *c = vm->cmd_running;

    const char *status = json_string_value(json_object_get(result, "status"));
    bool changed = status && strcmp(status, "rejected") != 0;

    vm->inflight--;
    vm->cmd_running = NULL;
    vm_cmd_complete(vm, c, result);
    /*
     * QEMU raises no event for some changes a command makes (block_resize), so
     * after anything that may have changed the VM, the state is read again
     * and published: the retained/compacted state never goes stale.
     */
    if (changed && !vm->resyncing && !vm->removing &&
        qb_qmp_client_state(vm->qmp) == QB_QMP_READY)
        vm_start_resync(vm);
    vm_cmd_run_next(vm);
    vm_apply_pause(vm);
    vm_maybe_free(vm);
}

/* query-state: the snapshot it asked for was published (ok) or the session went away. */
static void vm_cmd_finish_state(struct qb_vm *vm, bool ok)
{
    struct qb_vm_cmd *c = vm->cmd_running;
    json_t *result;

    vm->state_cmd_waiting = false;
    vm->cmd_running = NULL;
    if (ok) {
        result = json_pack("{s:s?, s:s, s:s, s:[]}", "command_id", c->cmd->id, "command",
                           "query-state", "status", "ok", "steps");
        if (result && vm->state && qb_vm_state_run_state(vm->state)[0])
            json_object_set_new(result, "run_state",
                                json_string(qb_vm_state_run_state(vm->state)));
    } else {
        result = json_pack("{s:s?, s:s, s:s, s:{s:s, s:s}, s:[]}", "command_id", c->cmd->id,
                           "command", "query-state", "status", "failed", "error", "class",
                           QB_CMD_ERR_DISCONNECTED, "message",
                           "the QMP session closed before the state was read", "steps");
    }
    vm_cmd_complete(vm, c, result);
    vm_cmd_run_next(vm);
}

/* Starts the next waiting command when none runs. */
static void vm_cmd_run_next(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    while (!vm->cmd_running && vm->cmd_head) {
        struct qb_vm_cmd *c = vm->cmd_head;
        int rc;

        vm->cmd_head = c->next;
        if (!vm->cmd_head)
            vm->cmd_tail = NULL;
        vm->cmd_queued--;
        c->next = NULL;
        if (uv_now(m->loop) > c->deadline) {
            vm_cmd_reject(vm, c, QB_CMD_ERR_TIMEOUT, "waited longer than commands.timeout");
            continue;
        }
        if (qb_qmp_client_state(vm->qmp) != QB_QMP_READY) {
            vm_cmd_reject(vm, c, QB_CMD_ERR_NOT_CONNECTED, "the VM has no QMP session");
            continue;
        }
        vm->cmd_running = c;
        if (c->cmd->name == QB_CMD_QUERY_STATE) {
            vm->state_cmd_waiting = true;
            if (!vm->resyncing)
                vm_start_resync(vm);
            return;
        }
        vm->inflight++;
        rc = qb_command_exec_start(m->loop, vm->qmp, c->cmd, &m->cfg->commands,
                                   m->cfg->qmp_command_timeout_ms, vm_cmd_exec_done, vm);
        if (rc < 0) {
            vm->inflight--;
            vm->cmd_running = NULL;
            vm_cmd_reject(vm, c, QB_CMD_ERR_QMP, qb_strerror(rc));
        }
    }
}

int qb_vm_manager_submit_command(struct qb_vm_manager *m, struct qb_command *cmd,
                                 const struct qb_command_origin *origin, qb_vm_command_done_cb done,
                                 void *arg, struct qb_command_error *err)
{
    struct qb_vm *vm = NULL;
    struct qb_vm_cmd *c;

    if (cmd->subject)
        HASH_FIND_STR(m->vms, cmd->subject, vm);
    if (!vm) {
        err->cls = QB_CMD_ERR_UNKNOWN_VM;
        snprintf(err->message, sizeof(err->message), "subject: no VM '%s' on bridge '%s'",
                 cmd->subject ? cmd->subject : "", m->cfg->bridge_id);
        return QB_ENOTFOUND;
    }
    if (qb_qmp_client_state(vm->qmp) != QB_QMP_READY) {
        err->cls = QB_CMD_ERR_NOT_CONNECTED;
        snprintf(err->message, sizeof(err->message), "VM '%s' has no QMP session (%s)", vm->name,
                 qb_qmp_state_name(qb_qmp_client_state(vm->qmp)));
        return QB_ECLOSED;
    }
    if (vm->cmd_queued >= m->cfg->commands_queue_per_vm) {
        err->cls = QB_CMD_ERR_BUSY;
        snprintf(err->message, sizeof(err->message),
                 "VM '%s' already has %zu commands waiting (commands.queue_per_vm)", vm->name,
                 vm->cmd_queued);
        return QB_EAGAIN;
    }
    c = calloc(1, sizeof(*c));
    if (!c || (origin->reply_topic && !(c->reply_topic = strdup(origin->reply_topic))) ||
        (origin->correlation_len && !(c->correlation = malloc(origin->correlation_len)))) {
        if (c)
            free(c->reply_topic);
        free(c);
        err->cls = QB_CMD_ERR_BUSY;
        snprintf(err->message, sizeof(err->message), "out of memory");
        return QB_ENOMEM;
    }
    if (origin->correlation_len)
        memcpy(c->correlation, origin->correlation, origin->correlation_len);
    c->correlation_len = origin->correlation_len;
    c->cmd = cmd;
    c->transport = origin->transport;
    c->ack_token = origin->ack_token;
    c->deadline = uv_now(m->loop) + m->cfg->commands_timeout_ms;
    c->received_usec = wall_clock_usec();
    c->done = done;
    c->done_arg = arg;
    if (vm->cmd_tail)
        vm->cmd_tail->next = c;
    else
        vm->cmd_head = c;
    vm->cmd_tail = c;
    vm->cmd_queued++;
    QB_LOG_INFO(vm->name, "command %s %s queued (from %s)", qb_cmd_name_str(cmd->name),
                cmd->id ? cmd->id : "?", cmd->source ? cmd->source : "?");
    vm_cmd_run_next(vm);
    vm_apply_pause(vm);
    return QB_OK;
}

void qb_vm_manager_publish_result(struct qb_vm_manager *m, const char *vm_name, const json_t *result,
                                  const struct qb_command_origin *origin)
{
    struct qb_vm *vm = NULL;

    if (vm_name)
        HASH_FIND_STR(m->vms, vm_name, vm);
    mgr_publish_result(m, vm, vm_name, result, origin ? origin->transport : NULL,
                       origin ? origin->ack_token : 0, origin ? origin->reply_topic : NULL,
                       origin ? origin->correlation : NULL, origin ? origin->correlation_len : 0);
}

void qb_vm_manager_discovered(void *mgr, const char *name, const char *path)
{
    char *address = NULL;
    int rc;

    if (asprintf(&address, "unix:%s", path) < 0)
        return;
    rc = qb_vm_manager_add(mgr, name, address);
    if (rc == QB_EEXIST)
        QB_LOG_WARN(name, "discovered socket %s ignored: a VM of that name is configured", path);
    else if (rc < 0)
        QB_LOG_ERR(name, "cannot add discovered VM: %s", qb_strerror(rc));
    free(address);
}

void qb_vm_manager_undiscovered(void *mgr, const char *name)
{
    qb_vm_manager_remove(mgr, name, "socket removed");
}

bool qb_vm_manager_has_vm(const struct qb_vm_manager *m, const char *name)
{
    struct qb_vm *vm = NULL;

    HASH_FIND_STR(m->vms, name, vm);
    return vm != NULL;
}

/* ---- session lifecycle --------------------------------------------------- */

static void vm_on_ready(struct qb_qmp_client *c, void *arg)
{
    struct qb_vm *vm = arg;
    json_t *greeting = qb_qmp_client_greeting(c);
    json_t *caps = json_object_get(greeting, "capabilities");
    json_t *data;

    vm->ready_at = uv_now(vm->mgr->loop);
    vm->was_ready = true;
    snprintf(vm->qemu_version, sizeof(vm->qemu_version), "%s", qb_qmp_client_version(c));
    qb_norm_vm_reset(vm->norm, NULL);
    QB_LOG_INFO(vm->name, "connected to QEMU %s at %s", qb_qmp_client_version(c), vm->address);

    const char *package =
        json_string_value(json_object_get(json_object_get(greeting, "version"), "package"));

    data = json_pack("{s:{s:s, s:s}, s:o, s:s}", "qemu", "version", qb_qmp_client_version(c),
                     "package", package ? package : "", "capabilities",
                     json_is_array(caps) ? json_incref(caps) : json_array(), "address",
                     vm->address);
    if (data) {
        vm_publish_bridge_event(vm, "bridge.vm.connected", data);
        json_decref(data);
    }
    vm_start_resync(vm);
}

static uint32_t vm_backoff_ms(struct qb_vm *vm)
{
    const struct qb_config *cfg = vm->mgr->cfg;
    uint64_t delay = cfg->qmp_reconnect_initial_ms;

    for (uint32_t i = 0; i < vm->attempts && delay < cfg->qmp_reconnect_max_ms; i++)
        delay *= 2;
    if (delay > cfg->qmp_reconnect_max_ms)
        delay = cfg->qmp_reconnect_max_ms;
    /* Equal jitter: half fixed, half random, so a storm of VMs spreads out but never hammers. */
    return (uint32_t)(delay / 2 + (delay > 1 ? mgr_random(vm->mgr) % (delay / 2 + 1) : 0));
}

static void vm_reconnect_timer_cb(uv_timer_t *t)
{
    vm_connect(t->data);
}

static void vm_on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct qb_vm *vm = arg;
    uint64_t now = uv_now(vm->mgr->loop);

    (void)c;
    /* Events read before the close are all published by now: replies failed first, drain ran. */
    vm_drain(vm);
    if (vm->was_ready) {
        json_t *data = json_pack("{s:s, s:s}", "reason", reason ? reason : "", "error",
                                 qb_strerror(err));
        if (data) {
            vm_publish_bridge_event(vm, "bridge.vm.disconnected", data);
            json_decref(data);
        }
        QB_LOG_INFO(vm->name, "disconnected: %s", reason ? reason : qb_strerror(err));
        if (!vm->removing && !vm->mgr->closing) {
            vm->reconnects++;
            vm->mgr->stats.reconnects++;
        }
        if (now - vm->ready_at >= QB_VM_STABLE_MS)
            vm->attempts = 0;
    } else if (vm->attempts == 0) {
        vm->mgr->stats.connect_failed++;
        QB_LOG_WARN(vm->name, "cannot connect to %s: %s (retrying with back-off)", vm->address,
                    reason ? reason : qb_strerror(err));
    } else {
        vm->mgr->stats.connect_failed++;
        QB_LOG_DEBUG(vm->name, "connect attempt %u to %s failed: %s", vm->attempts + 1,
                     vm->address, reason ? reason : qb_strerror(err));
    }
    vm->was_ready = false;
    vm->ready_at = 0;
    vm_slot_release(vm);
    vm_cmd_flush(vm, QB_CMD_ERR_NOT_CONNECTED,
                 vm->removing ? "the VM was removed before the command ran"
                              : "the QMP session closed before the command ran");

    if (vm->removing || vm->mgr->closing) {
        vm_maybe_free(vm);
        return;
    }
    if (vm->listen) {
        /* Nothing to connect to: QEMU's chardev reconnects to qmp.listen by itself. */
        QB_LOG_INFO(vm->name, "waiting for QEMU to connect again");
        return;
    }
    uint32_t delay = vm_backoff_ms(vm);
    if (vm->attempts < 32)
        vm->attempts++;
    QB_LOG_DEBUG(vm->name, "reconnecting in %u ms", delay);
    uv_timer_start(&vm->reconnect_timer, vm_reconnect_timer_cb, delay, 0);
}

/*
 * Pauses or resumes reading so it matches the manager's back-pressure, but
 * only where it is safe: a handshake, a snapshot or a pending query needs its
 * replies read, and events read meanwhile wait in the backlog (bounded by what
 * QEMU sends during one query).
 */
static void vm_apply_pause(struct qb_vm *vm)
{
    bool want = vm->mgr->pressure && !vm->removing && !vm->resyncing &&
                vm->pending.type == NULL && vm->cmd_running == NULL &&
                qb_qmp_client_state(vm->qmp) == QB_QMP_READY;

    if (want != vm->read_paused) {
        vm->read_paused = want;
        if (want)
            qb_qmp_client_pause_reading(vm->qmp);
        else
            qb_qmp_client_resume_reading(vm->qmp);
    }
    /* Events held back under pressure go first, also for a VM that was never paused. */
    if (!want)
        vm_drain(vm);
}

static void mgr_on_pressure(void *arg, bool pressure)
{
    struct qb_vm_manager *m = arg;

    if (pressure == m->pressure)
        return;
    m->pressure = pressure;
    QB_LOG_INFO(NULL, "%s reading from %u VMs (back-pressure %s)", pressure ? "pausing" : "resuming",
                HASH_COUNT(m->vms), pressure ? "on" : "off");
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next)
        vm_apply_pause(vm);
}

/* ---- connect slots: no thundering herd after a storm of disconnects ------ */

/* Leaves the wait list if vm is on it. */
static void vm_slot_unqueue(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;
    struct qb_vm **pp = &m->slot_head, *prev = NULL;

    if (!vm->slot_waiting)
        return;
    while (*pp && *pp != vm) {
        prev = *pp;
        pp = &(*pp)->slot_next;
    }
    if (*pp) {
        *pp = vm->slot_next;
        if (m->slot_tail == vm)
            m->slot_tail = prev;
    }
    vm->slot_next = NULL;
    vm->slot_waiting = false;
}

/*
 * Gives vm's slot back (its snapshot is done, or the attempt ended) and
 * starts the VM that waited longest. Waiting VMs connect from a timer of
 * 0 ms, never from inside the callback that freed the slot.
 */
static void vm_slot_release(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    if (!vm->has_slot)
        return;
    vm->has_slot = false;
    m->n_connecting--;
    /*
     * After a burst of (re)connects (start-up, a reconnect storm) the heap is
     * full of freed handshake and query-reply memory between live per-VM
     * allocations; glibc only returns the top of the heap by itself. Measured:
     * RSS after a 10,000-VM storm +46 MB without this, +0.2 MB with it.
     */
    if (++m->slots_since_trim >= 256 && m->n_connecting == 0 && !m->slot_head) {
        m->slots_since_trim = 0;
        malloc_trim(0);
    }
    while (m->slot_head && m->n_connecting < m->cfg->qmp_max_connecting) {
        struct qb_vm *next = m->slot_head;

        m->slot_head = next->slot_next;
        if (!m->slot_head)
            m->slot_tail = NULL;
        next->slot_next = NULL;
        next->slot_waiting = false;
        next->has_slot = true;
        m->n_connecting++;
        uv_timer_start(&next->reconnect_timer, vm_reconnect_timer_cb, 0, 0);
    }
}

static void vm_connect(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;
    int rc;

    if (!vm->has_slot) {
        if (m->n_connecting >= m->cfg->qmp_max_connecting) {
            if (!vm->slot_waiting) {
                vm->slot_waiting = true;
                if (m->slot_tail)
                    m->slot_tail->slot_next = vm;
                else
                    m->slot_head = vm;
                m->slot_tail = vm;
            }
            return;
        }
        vm->has_slot = true;
        m->n_connecting++;
    }
    /* A new session must read its greeting and snapshot replies whatever the pressure. */
    vm->read_paused = false;
    qb_qmp_client_resume_reading(vm->qmp);
    rc = qb_qmp_client_connect(vm->qmp, vm->address);

    if (rc < 0) {
        QB_LOG_ERR(vm->name, "cannot connect to '%s': %s", vm->address, qb_strerror(rc));
        vm_slot_release(vm);
        uv_timer_start(&vm->reconnect_timer, vm_reconnect_timer_cb, vm_backoff_ms(vm), 0);
    }
}

static const struct qb_qmp_callbacks qb_vm_qmp_callbacks = {
    .on_ready = vm_on_ready,
    .on_event = vm_on_event,
    .on_closed = vm_on_closed,
};

/* ---- creation and teardown ----------------------------------------------- */

/* Frees the manager and reports done; only once no VM struct is left. */
static void mgr_finish(struct qb_vm_manager *m)
{
    void (*done)(void *) = m->done;
    void *arg = m->done_arg;
    struct qb_count *c, *tmp;

    HASH_ITER(hh, m->counts, c, tmp)
    {
        HASH_DEL(m->counts, c);
        free(c->key);
        free(c);
    }
    free(m);
    if (done)
        done(arg);
}

static void vm_free_now(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    while (vm->cmd_head) {
        struct qb_vm_cmd *c = vm->cmd_head;
        vm->cmd_head = c->next;
        vm_cmd_free(c);
    }

    for (size_t i = vm->backlog_head; i < vm->backlog_len; i++)
        json_decref(vm->backlog[i]);
    free(vm->backlog);
    qb_norm_event_clear(&vm->pending);
    qb_norm_vm_free(vm->norm);
    if (vm->mgr->state_hot == vm)
        vm->mgr->state_hot = NULL;
    qb_vm_state_free(vm->state);
    for (int i = 0; i < QB_VMQ_COUNT; i++)
        json_decref(vm->resync_replies[i]);
    free(vm->identity);
    free(vm->name);
    free(vm->address);
    free(vm->key);
    free(vm);
    if (--m->n_alive == 0 && m->closing)
        mgr_finish(m);
}

static void vm_timer_closed(uv_handle_t *h)
{
    struct qb_vm *vm = h->data;

    vm->timer_closed = true;
    vm_maybe_free(vm);
}

/*
 * The last step of removing a VM: once the session is IDLE, release the client
 * and the timer; the struct goes when no callback can reach it any more.
 */
static void vm_maybe_free(struct qb_vm *vm)
{
    if (!vm->removing)
        return;
    if (vm->qmp && qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)
        return; /* on_closed will come back here */
    if (vm->qmp) {
        struct qb_qmp_client *c = vm->qmp;
        vm->qmp = NULL;
        qb_qmp_client_free(c);
    }
    if (!uv_is_closing((uv_handle_t *)&vm->reconnect_timer))
        uv_close((uv_handle_t *)&vm->reconnect_timer, vm_timer_closed);
    if (vm->timer_closed && vm->inflight == 0)
        vm_free_now(vm);
}

static bool vm_name_valid(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > 64)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

int qb_vm_manager_new(uv_loop_t *loop, const struct qb_config *cfg,
                      struct qb_transport *const *transports, size_t n_transports,
                      struct qb_outbox *outbox, struct qb_vm_manager **out)
{
    struct qb_vm_manager *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (!m)
        return QB_ENOMEM;
    m->loop = loop;
    m->cfg = cfg;
    m->transports = transports;
    m->n_transports = n_transports;
    m->outbox = outbox;
    qb_histogram_init_latency(&m->cmd_latency);
    m->env.bridge_id = cfg->bridge_id;
    m->env.schema_base_uri = cfg->schema_base_uri;
    m->qmp_opts.max_line_bytes = cfg->qmp_max_line_bytes;
    m->qmp_opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    m->rng = wall_clock_usec() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    qb_outbox_set_pressure_cb(outbox, mgr_on_pressure, m);
    m->pressure = qb_outbox_under_pressure(outbox);
    *out = m;
    return QB_OK;
}

/*
 * Creates the entry of VM name (valid, not taken) with an IDLE session and
 * its numbering (remembered, spooled or new), and adds it to the table.
 * address is copied. Returns QB_OK with *out (borrowed), or QB_ENOMEM.
 */
static int vm_create(struct qb_vm_manager *m, const char *name, const char *address,
                     struct qb_vm **out)
{
    struct qb_vm *vm;
    struct qb_seq_memo *memo;
    int rc;

    vm = calloc(1, sizeof(*vm));
    if (!vm)
        return QB_ENOMEM;
    vm->mgr = m;
    vm->name = strdup(name);
    vm->address = strdup(address);
    vm->norm = qb_norm_vm_new();
    if (vm->norm && vm->name)
        qb_norm_vm_set_name(vm->norm, vm->name); /* "[vm1] normalize: ..." in its log lines */
    if (vm->name && asprintf(&vm->key, "%s/%s", m->cfg->bridge_id, name) < 0)
        vm->key = NULL;
    rc = QB_ENOMEM;
    if (!vm->name || !vm->address || !vm->norm || !vm->key)
        goto fail;
    rc = qb_qmp_client_new(m->loop, name, &m->qmp_opts, &qb_vm_qmp_callbacks, vm, &vm->qmp);
    if (rc < 0)
        goto fail;
    uv_timer_init(m->loop, &vm->reconnect_timer);
    vm->reconnect_timer.data = vm;

    HASH_FIND_STR(m->memos, name, memo);
    if (memo) {
        vm->epoch = memo->epoch;
        vm->seq = memo->seq;
        HASH_DEL(m->memos, memo);
        free(memo->name);
        free(memo);
    } else if (qb_outbox_recall_sequence(m->outbox, name, &vm->epoch, &vm->seq)) {
        QB_LOG_INFO(vm->name, "continuing the spooled numbering at sequence %llu",
                    (unsigned long long)vm->seq + 1);
    } else {
        vm->epoch = wall_clock_usec();
    }
    HASH_ADD_KEYPTR(hh, m->vms, vm->name, strlen(vm->name), vm);
    m->n_alive++;
    QB_LOG_INFO(vm->name, "added, QMP at %s", address);
    *out = vm;
    return QB_OK;

fail:
    qb_norm_vm_free(vm->norm);
    free(vm->name);
    free(vm->address);
    free(vm->key);
    free(vm);
    return rc;
}

int qb_vm_manager_add(struct qb_vm_manager *m, const char *name, const char *address)
{
    struct qb_vm *vm;
    int rc;

    if (m->closing)
        return QB_ECLOSED;
    if (!vm_name_valid(name))
        return QB_EINVAL;
    if (strncmp(address, "unix:", 5) != 0 && strncmp(address, "tcp:", 4) != 0)
        return QB_EINVAL;
    HASH_FIND_STR(m->vms, name, vm);
    if (vm)
        return QB_EEXIST;
    rc = vm_create(m, name, address, &vm);
    if (rc == QB_OK)
        vm_connect(vm);
    return rc;
}

/* Remembers a VM's numbering so a VM of the same name continues it. */
static void mgr_remember_seq(struct qb_vm_manager *m, const struct qb_vm *vm)
{
    struct qb_seq_memo *memo = calloc(1, sizeof(*memo));

    if (!memo || !(memo->name = strdup(vm->name))) {
        free(memo);
        return; /* the next epoch still keeps ids unique; only the count restarts */
    }
    memo->epoch = vm->epoch;
    memo->seq = vm->seq;
    HASH_ADD_KEYPTR(hh, m->memos, memo->name, strlen(memo->name), memo);
}

static void vm_begin_removal(struct qb_vm *vm, const char *why)
{
    struct qb_vm_manager *m = vm->mgr;

    HASH_DEL(m->vms, vm);
    if (!m->closing)
        mgr_remember_seq(m, vm);
    vm->removing = true;
    vm_slot_unqueue(vm);
    uv_timer_stop(&vm->reconnect_timer);
    if (qb_qmp_client_state(vm->qmp) == QB_QMP_IDLE)
        vm_slot_release(vm); /* granted a slot, but its connect timer will not fire now */
    if (qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)
        qb_qmp_client_disconnect(vm->qmp, why);
    else
        vm_maybe_free(vm);
}

int qb_vm_manager_remove(struct qb_vm_manager *m, const char *name, const char *why)
{
    struct qb_vm *vm;

    HASH_FIND_STR(m->vms, name, vm);
    if (!vm)
        return QB_ENOTFOUND;
    QB_LOG_INFO(vm->name, "removed: %s", why);
    vm_begin_removal(vm, why);
    return QB_OK;
}

/* ---- listen mode: QEMUs that connected to qmp.listen ---------------------- */

/*
 * A connection accepted on qmp.listen, from accept until its VM name is
 * known. The session runs greeting and qmp_capabilities as usual; on READY
 * query-name names it (or the template), and only then is it attached to
 * that VM's entry, which publishes connected and the snapshot: nothing is
 * published under a name that might be wrong.
 */
struct qb_vm_newcomer {
    struct qb_vm_manager *mgr;
    struct qb_vm_newcomer *next;
    struct qb_qmp_client *qmp;
    pid_t pid;
    uid_t uid;
    char *address; /* "listen:<path> pid <pid>" */
    json_t *events; /* read between READY and the name, in order */
};

/* Unlinks and frees nc (and its session, if it still has one); says when there is room again. */
static void nc_free(struct qb_vm_newcomer *nc)
{
    struct qb_vm_manager *m = nc->mgr;
    struct qb_vm_newcomer **pp = &m->newcomers;

    bool was_full = m->n_newcomers >= m->cfg->qmp_max_connecting;

    while (*pp && *pp != nc)
        pp = &(*pp)->next;
    if (*pp)
        *pp = nc->next;
    m->n_newcomers--;
    if (was_full && m->n_newcomers < m->cfg->qmp_max_connecting && m->room_cb)
        m->room_cb(m->room_arg, true);
    if (nc->qmp)
        qb_qmp_client_free(nc->qmp);
    json_decref(nc->events);
    free(nc->address);
    free(nc);
}

/*
 * The VM name for nc into name (65 bytes): QEMU's -name when listen_name is
 * query-name and it is a usable VM name, else the template with the peer's
 * pid, uid and /proc/<pid>/comm. Returns QB_OK or QB_EINVAL.
 */
static int nc_pick_name(struct qb_vm_newcomer *nc, int status, const json_t *reply, char *name)
{
    const struct qb_config *cfg = nc->mgr->cfg;
    const char *qname = status == QB_OK ? json_string_value(json_object_get(reply, "name")) : NULL;
    char path[64], comm[32] = "";
    FILE *f;

    if (cfg->qmp_listen_name == QB_LISTEN_NAME_QUERY && qname && *qname) {
        if (vm_name_valid(qname)) {
            snprintf(name, 65, "%s", qname);
            return QB_OK;
        }
        QB_LOG_WARN(nc->address, "QEMU's name '%.80s' is not a VM name ([A-Za-z0-9._-], 1 to 64): "
                    "using qmp.listen_name_template", qname);
    }
    snprintf(path, sizeof(path), "/proc/%d/comm", (int)nc->pid);
    if ((f = fopen(path, "re")) != NULL) {
        if (!fgets(comm, sizeof(comm), f))
            comm[0] = '\0';
        fclose(f);
    }
    comm[strcspn(comm, "\n")] = '\0';
    for (char *p = comm; *p; p++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", *p))
            *p = '_';
    return qb_config_listen_name(cfg->qmp_listen_name_template, (uint32_t)nc->pid,
                                 (uint32_t)nc->uid, comm[0] ? comm : "unknown", name, 65);
}

/* Moves nc's READY session into the entry of VM name (made if new), or refuses it. */
static void nc_attach(struct qb_vm_newcomer *nc, const char *name)
{
    struct qb_vm_manager *m = nc->mgr;
    struct qb_vm *vm = NULL;
    struct qb_qmp_client *old;
    size_t i;

    HASH_FIND_STR(m->vms, name, vm);
    if (vm && (!vm->listen || qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)) {
        QB_LOG_WARN(name, "refusing the QMP connection from pid %d: VM '%s' %s %s", (int)nc->pid,
                    name, vm->listen ? "already has a live session from" : "is configured at",
                    vm->address);
        qb_qmp_client_disconnect(nc->qmp, "refused: a VM of that name is already served");
        return;
    }
    if (!vm && vm_create(m, name, nc->address, &vm) < 0) {
        QB_LOG_ERR(name, "out of memory adding the VM of pid %d", (int)nc->pid);
        qb_qmp_client_disconnect(nc->qmp, "out of memory");
        return;
    }
    if (qb_qmp_client_set_owner(nc->qmp, name, &qb_vm_qmp_callbacks, vm) < 0) {
        qb_qmp_client_disconnect(nc->qmp, "out of memory");
        return;
    }
    vm->listen = true;
    vm->read_paused = false; /* the new session reads; vm_apply_pause decides from here */
    old = vm->qmp;
    vm->qmp = nc->qmp;
    nc->qmp = NULL;
    qb_qmp_client_free(old);
    free(vm->address);
    vm->address = nc->address;
    nc->address = NULL;
    /* Events that came before the name go first, after the snapshot like any others. */
    for (i = 0; i < json_array_size(nc->events); i++)
        if (vm_backlog_push(vm, json_array_get(nc->events, i)) < 0)
            QB_LOG_ERR(vm->name, "out of memory: event lost");
    nc_free(nc);
    vm_on_ready(vm->qmp, vm);
}

static void nc_name_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    char name[65];

    (void)c;
    if (status == QB_ECLOSED)
        return; /* on_closed (or the manager's close) frees nc */
    if (nc_pick_name(nc, status, reply, name) < 0) {
        QB_LOG_WARN(nc->address, "no usable VM name from qmp.listen_name_template");
        qb_qmp_client_disconnect(nc->qmp, "no usable VM name");
        return;
    }
    nc_attach(nc, name);
}

static void nc_on_ready(struct qb_qmp_client *c, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    int rc = qb_qmp_client_execute(c, "query-name", NULL, nc->mgr->cfg->qmp_command_timeout_ms,
                                   nc_name_reply, nc);

    if (rc < 0)
        qb_qmp_client_disconnect(c, "cannot send query-name");
}

static void nc_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm_newcomer *nc = arg;

    (void)c;
    if (json_array_append(nc->events, msg) < 0)
        QB_LOG_ERR(nc->address, "out of memory: event lost");
}

static void nc_on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct qb_vm_newcomer *nc = arg;

    (void)c;
    QB_LOG_INFO(nc->address, "connection closed before it was named: %s",
                reason && *reason ? reason : qb_strerror(err));
    nc_free(nc);
}

static const struct qb_qmp_callbacks qb_vm_newcomer_callbacks = {
    .on_ready = nc_on_ready,
    .on_event = nc_on_event,
    .on_closed = nc_on_closed,
};

void qb_vm_manager_set_room_cb(struct qb_vm_manager *m, void (*cb)(void *arg, bool room),
                               void *arg)
{
    m->room_cb = cb;
    m->room_arg = arg;
}

int qb_vm_manager_adopt(struct qb_vm_manager *m, int fd, pid_t pid, uid_t uid)
{
    struct qb_vm_newcomer *nc;
    const char *path = m->cfg->qmp_listen ? m->cfg->qmp_listen + 5 : "?";
    int rc = QB_ENOMEM;

    if (m->closing || m->n_newcomers >= m->cfg->qmp_max_connecting) {
        close(fd);
        return m->closing ? QB_ECLOSED : QB_EBUSY;
    }
    nc = calloc(1, sizeof(*nc));
    if (!nc || asprintf(&nc->address, "listen:%s pid %d", path, (int)pid) < 0 ||
        !(nc->events = json_array())) {
        if (nc)
            nc->address = NULL; /* asprintf leaves it undefined on failure */
        goto fail;
    }
    nc->mgr = m;
    nc->pid = pid;
    nc->uid = uid;
    rc = qb_qmp_client_new(m->loop, nc->address, &m->qmp_opts, &qb_vm_newcomer_callbacks, nc,
                           &nc->qmp);
    if (rc < 0)
        goto fail;
    nc->next = m->newcomers;
    m->newcomers = nc;
    if (++m->n_newcomers >= m->cfg->qmp_max_connecting && m->room_cb)
        m->room_cb(m->room_arg, false);
    QB_LOG_INFO(nc->address, "QEMU connected (uid %u), asking its name", (unsigned)uid);
    rc = qb_qmp_client_adopt(nc->qmp, fd, nc->address);
    if (rc < 0) {
        QB_LOG_ERR(nc->address, "cannot start the QMP session: %s", qb_strerror(rc));
        nc_free(nc);
    }
    return rc;

fail:
    QB_LOG_ERR(NULL, "out of memory accepting the QMP connection of pid %d", (int)pid);
    close(fd);
    if (nc) {
        json_decref(nc->events);
        free(nc->address);
    }
    free(nc);
    return rc;
}

void qb_vm_manager_foreach(const struct qb_vm_manager *m,
                           void (*cb)(void *arg, const struct qb_vm_info *info), void *arg)
{
    for (const struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        struct qb_vm_info info = {
            .name = vm->name,
            .address = vm->address,
            .session = qb_qmp_state_name(qb_qmp_client_state(vm->qmp)),
            .qemu_version = vm->qemu_version,
            .run_state = vm->state && qb_vm_state_run_state(vm->state)[0]
                             ? qb_vm_state_run_state(vm->state)
                             : NULL,
            .last_event = vm->last_event,
            .last_event_usec = vm->last_event_usec,
            .sequence = vm->seq,
            .reconnects = vm->reconnects,
        };
        cb(arg, &info);
    }
}

void qb_vm_manager_foreach_count(const struct qb_vm_manager *m, enum qb_vm_count which,
                                 void (*cb)(void *arg, const char *key, const char *key2,
                                            uint64_t n),
                                 void *arg)
{
    for (const struct qb_count *c = m->counts; c; c = c->hh.next) {
        const char *key = c->key + 1;

        if (c->which == which)
            cb(arg, key, which == QB_VM_COUNT_COMMANDS ? key + strlen(key) + 1 : NULL, c->n);
    }
}

void qb_vm_manager_get_stats(const struct qb_vm_manager *m, struct qb_vm_manager_stats *out)
{
    *out = m->stats;
    out->connecting = m->n_connecting;
    out->slot_waiting = 0;
    for (const struct qb_vm *vm = m->slot_head; vm; vm = vm->slot_next)
        out->slot_waiting++;
}

const struct qb_histogram *qb_vm_manager_command_latency(const struct qb_vm_manager *m)
{
    return &m->cmd_latency;
}

size_t qb_vm_manager_count(const struct qb_vm_manager *m, size_t *ready)
{
    size_t n = 0, r = 0;

    for (const struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        n++;
        if (qb_qmp_client_state(vm->qmp) == QB_QMP_READY)
            r++;
    }
    if (ready)
        *ready = r;
    return n;
}

static void mgr_finish_async(uv_handle_t *h)
{
    struct qb_vm_manager *m = h->data;

    free(h);
    mgr_finish(m);
}

void qb_vm_manager_close(struct qb_vm_manager *m, void (*done)(void *arg), void *arg)
{
    struct qb_vm *vm, *tmp;
    struct qb_seq_memo *memo, *mtmp;

    m->closing = true;
    m->done = done;
    m->done_arg = arg;
    qb_outbox_set_pressure_cb(m->outbox, NULL, NULL);
    m->room_cb = NULL;
    while (m->newcomers)
        nc_free(m->newcomers); /* not named yet: nothing was published for them */
    HASH_ITER(hh, m->memos, memo, mtmp)
    {
        HASH_DEL(m->memos, memo);
        free(memo->name);
        free(memo);
    }
    if (m->n_alive == 0) {
        /* Nothing to wait for, but done must still come from the loop, not from here. */
        uv_idle_t *idle = malloc(sizeof(*idle));
        if (!idle) {
            mgr_finish(m);
            return;
        }
        uv_idle_init(m->loop, idle);
        idle->data = m;
        uv_close((uv_handle_t *)idle, mgr_finish_async);
        return;
    }
    HASH_ITER(hh, m->vms, vm, tmp) vm_begin_removal(vm, "bridge shutting down");
}

/* ---- configuration reload (reload.c) -------------------------------------- */

void qb_vm_manager_set_config(struct qb_vm_manager *m, const struct qb_config *cfg)
{
    m->cfg = cfg;
    m->env.bridge_id = cfg->bridge_id;
    m->env.schema_base_uri = cfg->schema_base_uri;
    /* sessions copy these when they are created: they apply to VMs added from now on */
    m->qmp_opts.max_line_bytes = cfg->qmp_max_line_bytes;
    m->qmp_opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    /* a raised max_connecting lets VMs that wait for a slot go now, from a 0 ms timer */
    while (m->slot_head && m->n_connecting < cfg->qmp_max_connecting) {
        struct qb_vm *next = m->slot_head;

        m->slot_head = next->slot_next;
        if (!m->slot_head)
            m->slot_tail = NULL;
        next->slot_next = NULL;
        next->slot_waiting = false;
        next->has_slot = true;
        m->n_connecting++;
        uv_timer_start(&next->reconnect_timer, vm_reconnect_timer_cb, 0, 0);
    }
}

void qb_vm_manager_set_transports(struct qb_vm_manager *m, struct qb_transport *const *transports,
                                  size_t n_transports)
{
    m->transports = transports;
    m->n_transports = n_transports;
}

void qb_vm_manager_forget_transport(struct qb_vm_manager *m, const struct qb_transport *t)
{
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        if (vm->cmd_running && vm->cmd_running->transport == t)
            vm->cmd_running->transport = NULL;
        for (struct qb_vm_cmd *c = vm->cmd_head; c; c = c->next)
            if (c->transport == t)
                c->transport = NULL;
    }
}
