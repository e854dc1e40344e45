/*
 * vm_manager_internal.h - what the vm_* files share; private to them, not for other modules.
 *
 * The VM manager is one module split over several files, each with one job:
 *   vm_manager.c        the VM set, session lifecycle, creation and teardown, reload
 *   vm_publish.c        numbering and publishing envelopes for a VM
 *   vm_state_copies.c   one state-topic copy per VM per loop turn
 *   vm_pipeline.c       the ordered event pipeline: backlog, queries events wait on
 *   vm_snapshot.c       the connect-time snapshot (resync) and identity check
 *   vm_commands.c       inbound commands: per-VM FIFO, execution, results
 *   vm_connect_slots.c  qmp.max_connecting: connect slots and their wait list
 *   vm_listen.c         listen mode: sessions QEMU opened to qmp.listen, until named
 * Other modules use vm_manager.h only; nothing here is a stable interface,
 * and no file outside the vm_* set may include this header.
 */
#ifndef QB_VM_MANAGER_INTERNAL_H
#define QB_VM_MANAGER_INTERNAL_H

#include "envelope.h"
#include "held_events.h"
#include "normalize.h"
#include "prom.h"
#include "publish.h"
#include "qmp_client.h"
#include "vm_manager.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uthash.h>
#include <uv.h>

struct qb_vm_state_cache;
struct qb_vm_state_copies;

/*
 * How many VMs keep their state parsed between events (vm_state.h): enough
 * for every VM of a storm-sized burst to parse its state once, at about 2.7 KB
 * a tree (2.8 MB at most), while idle VMs keep only the text.
 */
#define QB_VM_STATE_TREES_MAX 1024

/* The snapshot queries run on every READY, in this order (names in vm_snapshot.c). */
enum qb_vm_query {
    QB_VMQ_STATUS,
    QB_VMQ_BLOCK,
    QB_VMQ_JOBS,
    QB_VMQ_COLO,
    QB_VMQ_NAME,
    QB_VMQ_UUID,
    QB_VMQ_COUNT
};

struct qb_vm;
struct qb_count;
struct qb_vm_newcomer;

/* One command waiting for or running on its VM; owns everything it points to. */
struct qb_vm_cmd {
    struct qb_vm_cmd *next;
    struct qb_command *cmd;
    struct qb_transport *transport;
    uint64_t ack_token;
    char *reply_topic;
    void *correlation;
    size_t correlation_len;
    uint64_t deadline;      /* uv_now() by which it must have started */
    uint64_t received_usec; /* wall clock when it was submitted, for the latency histogram */
    qb_vm_command_done_cb done;
    void *done_arg;
};

struct qb_vm {
    struct qb_vm_manager *mgr;
    char *name;
    char *address;
    struct qb_qmp_client *qmp;
    struct qb_norm_vm *norm;
    struct qb_vm_state
        *state; /* latest qmp.vm.state (compact text); NULL before the first snapshot */

    struct qb_stream *stream; /* its numbering and where it publishes (publish.h) */

    uv_timer_t reconnect_timer;
    uint32_t attempts;      /* failed connects since the last stable session */
    uint64_t ready_at;      /* uv_now when READY was reached, 0 when not ready */
    bool was_ready;         /* this session reached READY: its bridge.vm.connected is due or out */
    json_t *connected_data; /* that bridge.vm.connected, held until query-uuid answers */
    bool read_paused;       /* reading stopped for back-pressure */
    bool removing;
    bool clear_on_free; /* removed for good: its retained state is cleared when it is freed */
    bool timer_closed;
    bool has_slot;     /* counts against qmp.max_connecting until resynced or closed */
    bool listen;       /* sessions come from qmp.listen: never connects, waits for QEMU */
    bool slot_waiting; /* queued for a connect slot */
    struct qb_vm *slot_next;
    char *identity; /* "<query-name name>/<query-uuid UUID>" of the last session, or NULL */
    char qemu_version[32];
    const char *last_event; /* a published type: static strings or interned in mgr->counts */
    uint64_t last_event_usec;
    uint64_t reconnects;
    unsigned inflight;        /* reply callbacks still to come */
    uint32_t state_copy_slot; /* 1 + index of its pending state copy (vm_state_copies.c), or 0 */

    /* The ordered pipeline. */
    bool resyncing;
    json_t *resync_replies[QB_VMQ_COUNT];
    unsigned resync_left;
    struct qb_norm_event pending;  /* pending.type != NULL: waiting for a query */
    struct qb_held_events backlog; /* bounded by qmp.max_held_events and max_held_bytes */
    bool draining;
    bool held_over; /* this session was closed for holding too much: no stable-session reset */

    /* Commands: a FIFO, one running at a time. */
    struct qb_vm_cmd *cmd_head, *cmd_tail;
    size_t cmd_queued;
    struct qb_vm_cmd *cmd_running;
    bool state_cmd_waiting; /* the running command is query-state, waiting for the snapshot */

    UT_hash_handle hh;
};

struct qb_vm_manager {
    uv_loop_t *loop;
    const struct qb_config *cfg;
    struct qb_outbox *outbox;
    struct qb_publisher *pub; /* owned: numbering, envelopes, messages */
    struct qb_qmp_options qmp_opts;
    struct qb_vm *vms;
    size_t slots_since_trim; /* connect slots given back since the heap was last trimmed */
    struct qb_vm_state_cache *state_cache;   /* owned: the VMs' parsed states (vm_state.h) */
    struct qb_vm_state_copies *state_copies; /* owned: state copies due this turn */
    struct qb_count *counts;
    struct qb_vm_manager_stats stats;
    struct qb_histogram cmd_latency;
    uint64_t rng;
    bool pressure;                       /* the outbox wants QMP reading paused */
    size_t n_connecting;                 /* VMs holding a connect slot */
    struct qb_vm *slot_head, *slot_tail; /* VMs waiting for one, in order */
    bool closing;
    size_t n_alive;                   /* VM structs not yet freed, including ones being removed */
    struct qb_vm_newcomer *newcomers; /* listen mode: accepted, not named yet */
    size_t n_newcomers;
    size_t n_listen; /* listen-mode entries in vms (bounded by qmp.listen_max_vms) */
    void (*room_cb)(void *arg, bool room); /* listen mode: may another connection come? */
    void *room_arg;
    void (*done)(void *arg);
    void *done_arg;
};

/* ---- vm_manager.c -------------------------------------------------------- */

/* The session callbacks of a VM entry (a newcomer's session is handed over with these). */
extern const struct qb_qmp_callbacks qb_vm_qmp_callbacks;

/* Counts one (which, key, key2); returns the interned key (borrowed, lives as long as m) or NULL.
 */
const char *qb_vm_mgr_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                            const char *key2);

/* Creates the IDLE entry of VM name (valid, not taken); address is copied, *out is borrowed. */
int qb_vm_create(struct qb_vm_manager *m, const char *name, const char *address,
                 struct qb_vm **out);

/*
 * Takes vm out of the set for good, without remembering its numbering (a VM of
 * that name later is a new entry; with a spool it continues the spooled
 * numbering), and clears its retained state when it is freed. why is logged.
 * vm is freed later (qb_vm_maybe_free).
 */
void qb_vm_forget(struct qb_vm *vm, const char *why);

/* Frees a removed VM once its session is IDLE, its timer closed and no callback is due. */
void qb_vm_maybe_free(struct qb_vm *vm);

/*
 * The on_ready of a VM session: starts the snapshot; bridge.vm.connected goes
 * out when query-uuid answers (qb_vm_publish_connected), before the snapshot.
 */
void qb_vm_on_ready(struct qb_qmp_client *c, void *arg);

/* The next reconnect delay of vm: exponential back-off with equal jitter. */
uint32_t qb_vm_backoff_ms(struct qb_vm *vm);

/* reconnect_timer callback: connects t->data (a struct qb_vm). */
void qb_vm_reconnect_timer_cb(uv_timer_t *t);

/* Pauses or resumes reading to match back-pressure where safe; drains the backlog if not paused. */
void qb_vm_apply_pause(struct qb_vm *vm);

/* ---- vm_publish.c -------------------------------------------------------- */

/* Publishes the VM's held state text as kind (STATE or EVENT) with sequence seq. */
void qb_vm_publish_state(struct qb_vm *vm, enum qb_msg_kind kind, uint64_t seq,
                         const char *id_suffix, int64_t ts_sec, int32_t ts_usec);

/*
 * Clears vm's retained state in every transport: a QB_MSG_STATE message with
 * no payload (MQTT: an empty retained message; Kafka: a tombstone). A state
 * copy still pending goes first; vm holds no state afterwards.
 */
void qb_vm_publish_state_clear(struct qb_vm *vm);

/*
 * Publishes the VM's held state as a qmp.vm.state event under a new sequence,
 * and the same envelope (same id, same time) to the state channel. A state
 * copy still pending goes first, under the old sequence.
 */
void qb_vm_publish_state_event(struct qb_vm *vm);

/* Publishes a bridge-made event (data borrowed) at the bridge's clock; returns its sequence. */
uint64_t qb_vm_publish_bridge_event(struct qb_vm *vm, const char *type, const json_t *data);

/*
 * Publishes a complete normalised event (borrowed); if it changed the state,
 * marks the state for a copy to the state topic at the end of the turn.
 */
void qb_vm_publish_event(struct qb_vm *vm, const struct qb_norm_event *ev);

/* ---- vm_state_copies.c --------------------------------------------------- */

/* Creates the per-turn state copy list on loop. Returns QB_OK with *out, or QB_ENOMEM. */
int qb_vm_state_copies_new(uv_loop_t *loop, struct qb_vm_state_copies **out);

/* Closes c (freed from its handle's close callback); pending copies are dropped. */
void qb_vm_state_copies_close(struct qb_vm_state_copies *c);

/*
 * Marks vm's state as changed by an event of time ts: one copy goes to the
 * state topic at the end of this loop turn, with the time of the last event
 * marked and vm's sequence as it is then.
 */
void qb_vm_state_copy_mark(struct qb_vm *vm, int64_t ts_sec, int32_t ts_usec);

/*
 * Publishes vm's pending state copy now, if it has one, under vm's current
 * sequence: call it before the state is replaced and before a new sequence is
 * taken for the replacement.
 */
void qb_vm_state_copy_flush(struct qb_vm *vm);

/* ---- vm_pipeline.c ------------------------------------------------------- */

/* The held-event bounds the configuration sets now (qmp.max_held_events, max_held_bytes). */
struct qb_held_limits qb_vm_held_limits(const struct qb_vm_manager *m);

/*
 * Logs and counts that vm's session (or a listen-mode connection not named
 * yet, vm NULL and who its address) held too much while waiting for what:
 * events (count) held events of bytes line bytes, the one that did not fit
 * included. Returns the reason for the disconnect (static text).
 */
const char *qb_vm_held_overflow(struct qb_vm_manager *m, const char *who, const char *what,
                                size_t count, size_t bytes);

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
void qb_vm_drain(struct qb_vm *vm);

/* The on_event of a VM session: processes msg (borrowed) now or queues it in the backlog. */
void qb_vm_on_event(struct qb_qmp_client *c, json_t *msg, void *arg);

/* ---- vm_snapshot.c ------------------------------------------------------- */

/* Sends the snapshot queries; the VM is blocked (resyncing) until all have answered. */
void qb_vm_start_resync(struct qb_vm *vm);

/*
 * Publishes the session's bridge.vm.connected (vm->connected_data, then
 * freed) if it is still due, with the UUID of uuid_reply (borrowed query-uuid
 * "return", NULL when the query failed or did not run: uuid null).
 */
void qb_vm_publish_connected(struct qb_vm *vm, const json_t *uuid_reply);

/* ---- vm_commands.c ------------------------------------------------------- */

/* Frees a command entry and everything it owns (the command included); does not publish. */
void qb_vm_cmd_free(struct qb_vm_cmd *c);

/* Rejects every command still waiting (not the running one) with cls and message. */
void qb_vm_cmd_flush(struct qb_vm *vm, const char *cls, const char *message);

/* Completes the running query-state: the snapshot was published (ok) or the session went away. */
void qb_vm_cmd_finish_state(struct qb_vm *vm, bool ok);

/* ---- vm_connect_slots.c -------------------------------------------------- */

/* Connects vm now if a connect slot is free, else queues it for one. */
void qb_vm_connect(struct qb_vm *vm);

/* Gives vm's connect slot back (if it holds one) and lets waiting VMs go. */
void qb_vm_slot_release(struct qb_vm *vm);

/* Takes vm off the wait list for a connect slot, if it is on it. */
void qb_vm_slot_unqueue(struct qb_vm *vm);

/* Grants free slots to waiting VMs in order; each connects from a 0 ms timer. */
void qb_vm_slots_grant(struct qb_vm_manager *m);

/* ---- vm_listen.c --------------------------------------------------------- */

/* Frees every newcomer (accepted, not named yet) with its session; used on close. */
void qb_vm_listen_drop_all(struct qb_vm_manager *m);

/*
 * A listen VM's session closed: arms its forget timer (qmp.listen_forget_after)
 * unless that is 0. A session that attaches to the entry stops it.
 */
void qb_vm_listen_closed(struct qb_vm *vm);

#endif /* QB_VM_MANAGER_INTERNAL_H */
