/*
 * vm_manager.h - the set of VMs one bridge serves, and the per-VM pipeline.
 *
 * Each VM comes from a source (source.h: the QMP source connects to its
 * socket with back-off, or takes QEMU's connection on qmp.listen). On every
 * session it asks the source for the status, block devices, block jobs, COLO
 * status, name and UUID, publishes bridge.vm.connected (with the UUID) when
 * the UUID answers, and the result as a qmp.vm.state snapshot before any
 * qmp.* event of that session, so a late consumer or a VM that was already
 * paused is never left guessing. When a session ends, the state is published
 * again with connected: false; when a VM is removed for good its retained
 * state is cleared (qb_vm_manager_remove).
 *
 * Events are normalised in arrival order. When one needs a query to be
 * complete (STOP without a known reason), every later event of that VM waits
 * behind it: per VM, the bus sees events in the order QEMU raised them. Each
 * published event gets the VM's next sequence number; when it changes the VM's
 * state, the updated qmp.vm.state goes to the transports' state channel
 * (retained / compacted) carrying the same sequence with id suffix ".state".
 *
 * While a transport with on_full: backpressure is near full, the manager asks
 * the sources to stop reading, so nothing is dropped; QEMU holds the events.
 */
#ifndef QB_VM_MANAGER_H
#define QB_VM_MANAGER_H

#include "command.h"
#include "config.h"
#include "outbox.h"
#include "transport.h"
#include "vm_types.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <uv.h>

struct qb_vm_manager;

/*
 * Creates a manager. cfg and outbox (events, state and replies go there; the
 * manager takes its pressure callback) are borrowed and must outlive it. It makes one instance
 * of each source of qb_source_registry (source.h). Static VMs are not added here: call
 * qb_vm_manager_add. Returns QB_OK with *out, or QB_ENOMEM.
 */
int qb_vm_manager_new(uv_loop_t *loop, const struct qb_config *cfg, struct qb_outbox *outbox,
                      struct qb_vm_manager **out);

struct qb_source_ops;

/*
 * Like qb_vm_manager_new, with the sources of sources (a NULL-terminated
 * array of ops, borrowed, outliving the manager; at most 8) instead of
 * qb_source_registry: for tests with a scripted source, and an owner that
 * chooses its sources.
 */
int qb_vm_manager_new_with_sources(uv_loop_t *loop, const struct qb_config *cfg,
                                   struct qb_outbox *outbox,
                                   const struct qb_source_ops *const *sources,
                                   struct qb_vm_manager **out);

/*
 * Adds a VM and starts connecting to address ("unix:/path" or
 * "tcp:host:port": the first source whose ops->open knows the address takes
 * it). name and address are copied. Returns QB_OK, QB_EEXIST
 * when a VM of that name exists, QB_EINVAL for a bad address, QB_ENOMEM.
 */
int qb_vm_manager_add(struct qb_vm_manager *m, const char *name, const char *address);

/*
 * Listen mode: runs a QMP session over fd, a connection QEMU made to
 * qmp.listen from process pid (user uid). Once READY the VM name is learnt
 * first (query-name; qmp.listen_name and qmp.listen_name_template decide,
 * falling back to the template when QEMU has no -name) and nothing is
 * published before. The session then joins the VM entry of that name: a
 * new "listen" entry (address "listen:<path> pid <pid>"), or the listen
 * entry a previous session of that name left (its numbering continues). A
 * name that already has a live session, or belongs to a configured or
 * discovered VM, is refused with a log line and the connection closed. A
 * listen entry never reconnects: after its session closes it publishes
 * bridge.vm.disconnected and waits for QEMU to connect again.
 * Takes fd in every case. Returns QB_OK, QB_EBUSY (qmp.max_connecting
 * connections are already waiting for their name), QB_ECLOSED or QB_ENOMEM.
 */
int qb_vm_manager_adopt(struct qb_vm_manager *m, int fd, pid_t pid, uid_t uid);

/*
 * cb(arg, false) once qmp.max_connecting accepted connections wait for
 * their name, cb(arg, true) when one of them is done: the listener should
 * stop and restart accepting. cb may be NULL.
 */
void qb_vm_manager_set_room_cb(struct qb_vm_manager *m, void (*cb)(void *arg, bool room),
                               void *arg);

/*
 * Disconnects and forgets a VM (bridge.vm.disconnected and its state with
 * connected: false are published if it was connected), then clears its
 * retained state (an empty retained message, a tombstone) unless a VM of that
 * name is back by the time it is freed. Its sequence counter is remembered,
 * so a VM of the same name that comes back continues numbering. Returns QB_OK
 * or QB_ENOTFOUND.
 */
int qb_vm_manager_remove(struct qb_vm_manager *m, const char *name, const char *why);

/* struct qb_command_origin and qb_vm_command_done_cb: vm_types.h */

/*
 * Queues cmd for its VM (cmd->subject). Commands of one VM run one at a time,
 * in arrival order; each waits at most commands.timeout in total. On QB_OK
 * the manager owns cmd; once it ran, the result is published as a
 * bridge.command.result event of the VM (and as a reply on the origin's
 * transport), the origin is acked, then done(arg, cmd, result) is called.
 * Otherwise returns QB_ENOTFOUND (no such VM), QB_ECLOSED (not connected) or
 * QB_EAGAIN (queue full) with err filled, and cmd stays the caller's.
 */
int qb_vm_manager_submit_command(struct qb_vm_manager *m, struct qb_command *cmd,
                                 const struct qb_command_origin *origin, qb_vm_command_done_cb done,
                                 void *arg, struct qb_command_error *err);

/*
 * Publishes a bridge.command.result (data borrowed) for a command that did not
 * run now (rejected, or a duplicate whose first result is repeated): on the
 * VM's event stream when vm names a VM of this bridge, and as a reply on the
 * origin's transport (numbered by the bridge, not a VM, when there is no such
 * VM); then acks the origin. vm may be NULL.
 */
void qb_vm_manager_publish_result(struct qb_vm_manager *m, const char *vm, const json_t *result,
                                  const struct qb_command_origin *origin);

/*
 * Publishes a bridge.command.result (data borrowed) as a reply on the origin's
 * transport only, never on a VM's event stream, numbered by the bridge (so it
 * takes no VM's sequence); vm (may be NULL or invalid: "unknown") only names
 * the subject and the default result topic. Then acks the origin. Not counted
 * in qmp_bridge_commands_total nor logged: for answers to messages that are
 * not authenticated commands, which the caller rate-limits, counts and logs.
 */
void qb_vm_manager_publish_reply(struct qb_vm_manager *m, const char *vm, const json_t *result,
                                 const struct qb_command_origin *origin);

/*
 * Directory discovery's callbacks (qb_discovery_callbacks), arg being the
 * manager: a socket that appeared becomes a VM "unix:<path>" (a configured VM
 * of the same name wins, with a warning); one that went away removes its VM.
 */
void qb_vm_manager_discovered(void *mgr, const char *name, const char *path);
void qb_vm_manager_undiscovered(void *mgr, const char *name);

/* True when a VM of that name is on this bridge. */
bool qb_vm_manager_has_vm(const struct qb_vm_manager *m, const char *name);

/* What /vms and the metrics show of one VM; every pointer borrowed for the callback. */
struct qb_vm_info {
    const char *name;
    const char *address;
    const char *session;      /* QMP session state: idle, connecting, ..., ready */
    const char *qemu_version; /* of the current or last session, "" before the first */
    const char *run_state;    /* from the latest qmp.vm.state, NULL before the first snapshot */
    const char *last_event;   /* type of the last published event, NULL when none */
    uint64_t last_event_usec; /* when it was published, µs since the epoch */
    uint64_t sequence;        /* of the last published event */
    uint64_t reconnects;      /* sessions this VM lost after they were ready */
};

/* Calls cb for every VM, in no particular order. */
void qb_vm_manager_foreach(const struct qb_vm_manager *m,
                           void (*cb)(void *arg, const struct qb_vm_info *info), void *arg);

/*
 * Calls cb for every counter of kind which (enum qb_vm_count, vm_types.h).
 * Keys are borrowed for the callback.
 */
void qb_vm_manager_foreach_count(const struct qb_vm_manager *m, enum qb_vm_count which,
                                 void (*cb)(void *arg, const char *key, const char *key2,
                                            uint64_t n),
                                 void *arg);

struct qb_vm_manager_stats {
    uint64_t reconnects;       /* sessions lost after they were ready, all VMs */
    uint64_t connect_failed;   /* connect attempts that never reached ready */
    uint64_t connecting;       /* VMs holding a connect slot now */
    uint64_t slot_waiting;     /* VMs waiting for one */
    uint64_t held_over_events; /* sessions closed: more than qmp.max_held_events held back */
    uint64_t held_over_bytes;  /* sessions closed: more than qmp.max_held_bytes held back */
    uint64_t listen_refused;   /* listen connections refused: qmp.listen_max_vms entries exist */
    uint64_t listen_forgotten; /* listen VMs forgotten (qmp.listen_forget_after) */
    /* the libvirt source (source.h's struct qb_source_stats says what each counts) */
    uint64_t libvirt_configured, libvirt_connected, libvirt_lost, libvirt_connect_failed,
        libvirt_refused, libvirt_events_dropped;
};
void qb_vm_manager_get_stats(const struct qb_vm_manager *m, struct qb_vm_manager_stats *out);

struct qb_histogram;

/* Command received to result published (commands that ran). Borrowed. */
const struct qb_histogram *qb_vm_manager_command_latency(const struct qb_vm_manager *m);

/* Number of VMs and how many are READY, for logs and status. */
size_t qb_vm_manager_count(const struct qb_vm_manager *m, size_t *ready);

/*
 * Disconnects every VM (publishing bridge.vm.disconnected and the state with
 * connected: false for connected ones; a shutdown is not a removal, so no
 * retained state is cleared) and frees the manager once libuv has released
 * every handle; done(arg) is called then, from the loop.
 */
void qb_vm_manager_close(struct qb_vm_manager *m, void (*done)(void *arg), void *arg);

/*
 * Configuration reload: reads cfg from now on (borrowed, must outlive the
 * manager; keep the old one alive too, running commands may still read it).
 * In effect at once: events.exclude, qmp command_timeout, back-off and
 * max_connecting (a raised limit lets waiting VMs connect), schema_base_uri
 * and the commands settings; qmp connect_timeout and max_line_bytes apply to
 * VMs added afterwards. VMs are added and removed by the caller.
 */
void qb_vm_manager_set_config(struct qb_vm_manager *m, const struct qb_config *cfg);

/*
 * Transport t is being closed (reload): commands that came on it still run
 * and publish their result on the VM's event stream, but send no reply and no
 * acknowledgement on t. Only VMs still on the bridge are looked at: a command
 * of a VM being removed at the same moment is not covered.
 */
void qb_vm_manager_forget_transport(struct qb_vm_manager *m, const struct qb_transport *t);

#endif
