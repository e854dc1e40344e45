/*
 * vm.h - the VM entry and the manager struct that the vm_* files share;
 * private to them, not for other modules (they use vm_manager.h).
 *
 * The VM manager is one module in layers, each file with one job; a file
 * calls only files below it, and the few calls back up go through the hooks
 * the manager sets at creation (struct qb_vm_hooks):
 *   vm_manager.c        the VM set, sessions up/closed, back-pressure, teardown,
 *                       its sources (source.h), reload; the public API
 *   vm_commands.c       inbound commands: per-VM FIFO, execution, results
 *   vm_snapshot.c       the snapshot of each session (resync) and identity check
 *   vm_pipeline.c       the ordered event pipeline: backlog, queries events wait on
 *   vm_publish.c        what a VM publishes through the door (publish.h); counters
 *   vm_state_copies.c   one state-topic copy per VM per loop turn
 * Each file owns the fields it writes: struct qb_vm has one part per file
 * (copy, out, pipe, snap, cmds; the rest is vm_manager.c's), and so does
 * struct qb_vm_manager. Other files read what they need.
 */
#ifndef QB_VM_H
#define QB_VM_H

#include "held_events.h"
#include "normalize.h"
#include "prom.h"
#include "publish.h"
#include "source.h"
#include "vm_types.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uthash.h>
#include <uv.h>

struct qb_vm;
struct qb_vm_state;
struct qb_vm_state_cache;
struct qb_vm_state_copies;
struct qb_count;

/*
 * How many VMs keep their state parsed between events (vm_state.h): enough
 * for every VM of a storm-sized burst to parse its state once, at about 2.7 KB
 * a tree (2.8 MB at most), while idle VMs keep only the text.
 */
#define QB_VM_STATE_TREES_MAX 1024

/* How many sources a manager can have (qb_source_registry). */
#define QB_VM_SOURCES_MAX 8

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

/* vm_state_copies.c's part of a VM. */
struct qb_vm_copy {
    uint32_t slot; /* 1 + index of its pending state copy, or 0 */
};

/* vm_publish.c's part of a VM: what it published. */
struct qb_vm_out {
    struct qb_stream *stream;  /* its numbering and where it publishes (publish.h) */
    struct qb_vm_state *state; /* latest qmp.vm.state; NULL before the first snapshot */
    const char *last_event;    /* a published type: static strings or interned in the counters */
    uint64_t last_event_usec;
};

/* vm_pipeline.c's part of a VM: events in order. */
struct qb_vm_pipe {
    struct qb_norm_vm *norm;
    struct qb_norm_event pending;  /* pending.type != NULL: waiting for a query */
    struct qb_held_events backlog; /* bounded by qmp.max_held_events and max_held_bytes */
    bool snapshot_hold;            /* the snapshot is being taken: events wait */
    bool draining;
    unsigned inflight; /* query answers still to come */
};

/* vm_snapshot.c's part of a VM. */
struct qb_vm_snap {
    bool resyncing;
    json_t *replies[QB_SOURCE_QUERY_COUNT];
    unsigned left;
    unsigned inflight;      /* answers still to come */
    json_t *connected_data; /* bridge.vm.connected of this session, held until the UUID answers */
    char *identity;         /* "<query-name name>/<query-uuid UUID>" of the last session, or NULL */
};

/* vm_commands.c's part of a VM: a FIFO, one running at a time. */
struct qb_vm_cmds {
    struct qb_vm_cmd *head, *tail;
    size_t queued;
    struct qb_vm_cmd *running;
    bool state_waiting; /* the running command is query-state, waiting for the snapshot */
    unsigned inflight;  /* a result still to come */
};

struct qb_vm {
    /* vm_manager.c's */
    struct qb_vm_manager *mgr;
    const char *name;            /* name_text: one allocation less for each of 10,000 idle VMs */
    struct qb_source_link *link; /* its source's side; NULL once the source released it */
    bool was_ready;              /* this session came up: bridge.vm.connected is due or out */
    bool read_paused;            /* reading stopped for back-pressure */
    bool removing;
    bool clear_on_free; /* removed for good: its retained state is cleared when it is freed */
    char qemu_version[32];
    uint64_t reconnects;
    UT_hash_handle hh;

    struct qb_vm_copy copy;
    struct qb_vm_out out;
    struct qb_vm_pipe pipe;
    struct qb_vm_snap snap;
    struct qb_vm_cmds cmds;
    char name_text[];
};

/* The upcalls of the lower vm_* files, set by vm_manager.c when it creates the manager. */
struct qb_vm_hooks {
    /* After an answer or a result: pause or resume reading to match back-pressure, drain. */
    void (*settle)(struct qb_vm *vm);
    /* After a callback: a VM being removed goes once nothing is due. */
    void (*maybe_free)(struct qb_vm *vm);
    /* The snapshot of vm was published (ok) or its session went away. */
    void (*resynced)(struct qb_vm *vm, bool ok);
};

struct qb_vm_manager {
    /* vm_manager.c's */
    uv_loop_t *loop;
    const struct qb_config *cfg;
    struct qb_outbox *outbox;
    const struct qb_vm_hooks *hooks;
    struct qb_publisher *pub;                     /* owned: numbering, envelopes, messages */
    struct qb_source *sources[QB_VM_SOURCES_MAX]; /* owned */
    size_t n_sources;
    struct qb_vm *vms;
    struct qb_vm_state_cache *state_cache;   /* owned: the VMs' parsed states (vm_state.h) */
    struct qb_vm_state_copies *state_copies; /* owned: state copies due this turn */
    uint64_t reconnects;                     /* sessions lost after they came up, all VMs */
    bool pressure;                           /* the outbox wants reading paused */
    bool closing;
    size_t n_alive; /* VM structs not yet freed, including ones being removed */
    void (*room_cb)(void *arg, bool room); /* listen mode: may another connection come? */
    void *room_arg;
    void (*done)(void *arg);
    void *done_arg;

    /* vm_publish.c's */
    struct qb_count *counts;

    /* vm_pipeline.c's */
    uint64_t held_over_events; /* sessions closed: more than qmp.max_held_events held back */
    uint64_t held_over_bytes;  /* sessions closed: more than qmp.max_held_bytes held back */

    /* vm_commands.c's */
    struct qb_histogram cmd_latency; /* command received to result published */
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

#endif /* QB_VM_H */
