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
#include "source.h"
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

/* The snapshot queries run on every session, in this order (source.h). */
enum qb_vm_query {
    QB_VMQ_STATUS = QB_SOURCE_QUERY_STATUS,
    QB_VMQ_BLOCK = QB_SOURCE_QUERY_BLOCK,
    QB_VMQ_JOBS = QB_SOURCE_QUERY_BLOCK_JOBS,
    QB_VMQ_COLO = QB_SOURCE_QUERY_COLO_STATUS,
    QB_VMQ_NAME = QB_SOURCE_QUERY_NAME,
    QB_VMQ_UUID = QB_SOURCE_QUERY_UUID,
    QB_VMQ_COUNT = QB_SOURCE_QUERY_COUNT
};

struct qb_vm;
struct qb_count;

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
    struct qb_source_link *link; /* its source's side; NULL once the source released it */
    struct qb_norm_vm *norm;
    struct qb_vm_state
        *state; /* latest qmp.vm.state (compact text); NULL before the first snapshot */

    struct qb_stream *stream; /* its numbering and where it publishes (publish.h) */

    bool was_ready;         /* this session came up: its bridge.vm.connected is due or out */
    json_t *connected_data; /* that bridge.vm.connected, held until query-uuid answers */
    bool read_paused;       /* reading stopped for back-pressure */
    bool removing;
    bool clear_on_free; /* removed for good: its retained state is cleared when it is freed */
    char *identity;     /* "<query-name name>/<query-uuid UUID>" of the last session, or NULL */
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

    /* Commands: a FIFO, one running at a time. */
    struct qb_vm_cmd *cmd_head, *cmd_tail;
    size_t cmd_queued;
    struct qb_vm_cmd *cmd_running;
    bool state_cmd_waiting; /* the running command is query-state, waiting for the snapshot */

    UT_hash_handle hh;
};

/* How many sources a manager can have (qb_source_registry plus attached ones). */
#define QB_VM_SOURCES_MAX 8

struct qb_vm_manager {
    uv_loop_t *loop;
    const struct qb_config *cfg;
    struct qb_outbox *outbox;
    struct qb_publisher *pub;                     /* owned: numbering, envelopes, messages */
    struct qb_source *sources[QB_VM_SOURCES_MAX]; /* owned */
    size_t n_sources;
    struct qb_vm *vms;
    struct qb_vm_state_cache *state_cache;   /* owned: the VMs' parsed states (vm_state.h) */
    struct qb_vm_state_copies *state_copies; /* owned: state copies due this turn */
    struct qb_count *counts;
    struct qb_vm_manager_stats stats;
    struct qb_histogram cmd_latency;
    bool pressure; /* the outbox wants reading paused */
    bool closing;
    size_t n_alive; /* VM structs not yet freed, including ones being removed */
    void (*room_cb)(void *arg, bool room); /* listen mode: may another connection come? */
    void *room_arg;
    void (*done)(void *arg);
    void *done_arg;
};

/* The VM's session as its source sees it; IDLE once the link is gone. */
static inline enum qb_source_session qb_vm_session(const struct qb_vm *vm)
{
    return vm->link ? vm->link->ops->session(vm->link) : QB_SOURCE_IDLE;
}

static inline bool qb_vm_is_ready(const struct qb_vm *vm)
{
    return qb_vm_session(vm) == QB_SOURCE_READY;
}

/* ---- vm_manager.c -------------------------------------------------------- */

/* The callbacks of a VM's source link (qb_source_link_bind). */
extern const struct qb_source_link_cbs qb_vm_link_cbs;

/* Counts one (which, key, key2); returns the interned key (borrowed, lives as long as m) or NULL.
 */
const char *qb_vm_mgr_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                            const char *key2);

/*
 * Creates the entry of VM name (valid, not taken) on link (taken: bound to
 * the entry, released with it). *out is borrowed. Returns QB_OK or QB_ENOMEM
 * (link stays the caller's).
 */
int qb_vm_create(struct qb_vm_manager *m, const char *name, struct qb_source_link *link,
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

/* Processes held-back events in order until the backlog is empty or the VM blocks again. */
void qb_vm_drain(struct qb_vm *vm);

/* The on_event of a VM's link: processes ev (borrowed) now or queues it in the backlog. */
void qb_vm_on_event(void *arg, const struct qb_source_event *ev);

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

#endif /* QB_VM_MANAGER_INTERNAL_H */
