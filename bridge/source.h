/*
 * source.h - the seam between the VM manager and where VMs come from.
 *
 * A source knows how VMs are reached and how to talk to them: the QMP source
 * (source_qmp.c) connects to unix:/tcp: sockets of configured and discovered
 * VMs and accepts QEMUs on qmp.listen; a libvirt source would relay the QMP
 * events libvirtd sees and run commands as API calls. The VM manager above
 * the seam orders, normalises and publishes what a source hands it, and knows
 * no socket, no QMP session and no reconnect policy. Like curl's vtls
 * backends, a source is one const struct qb_source_ops (listed once in
 * qb_source_registry, source_registry.c) and one file.
 *
 * Objects:
 *   struct qb_source       one instance of a source, made by ops->create with
 *                          the manager's upcalls (struct qb_source_host).
 *   struct qb_source_link  the source's side of one VM: it lives as long as the
 *                          manager's VM entry and carries that VM's sessions,
 *                          one after another. Its callbacks (struct
 *                          qb_source_link_cbs) are set when the manager takes
 *                          it (qb_source_link_bind), before any can run.
 *
 * How a link comes to be:
 *   - the manager asks for it: ops->open(src, name, address) for a configured
 *     or discovered VM; QB_ENOTFOUND when the address is not this source's
 *     (the manager asks the next source). ops->start then begins its sessions.
 *   - the source finds a VM by itself (a QEMU connected to qmp.listen, a
 *     libvirt domain started): it asks host->vm_lookup whether the name is
 *     free and hands the link up with host->vm_appeared, which binds it.
 *
 * The contract of a link, per session (a session: from on_up to on_closed):
 *   - on_up(early): the VM can be talked to. early, when not NULL, holds
 *     events the source read before the link had its VM (the manager takes
 *     them, they come first). The manager then asks for the snapshot: the
 *     six QB_SOURCE_QUERY_* answers, QMP-shaped, as QEMU gives them today.
 *   - on_event: one event, in the order the VM raised it: ev->msg is a
 *     QMP-shaped event object {"event": name, "data": {...}, "timestamp":
 *     {"seconds", "microseconds"}} (a source that gets name, time and JSON
 *     data builds it), ev->raw/raw_len its text as read (raw may be NULL: the
 *     manager then serialises msg) for the held-event bounds.
 *   - query(q): answers with cb(arg, status, answer): QB_OK and the QMP
 *     "return" value, QB_EQMP and a QMP error object {"class","desc"}, or
 *     another negative code (QB_ETIMEDOUT, QB_ECLOSED) and NULL. A source
 *     that has no such query synthesises the answer or fails it with
 *     QB_EQMP. The snapshot's queries and the normaliser's STOP-reason
 *     queries (status, block, block-jobs) all go through it.
 *   - command(cmd): runs one whole validated command and calls done with its
 *     result object (command_exec.h's shape: status, error, the steps the
 *     source ran, run_state). For QMP the steps are QMP commands; another
 *     source names its own steps.
 *   - query and command return QB_OK (their callback follows exactly once,
 *     never from inside the call, and before the session's on_closed) or a
 *     negative code (no callback).
 *   - pause(true/false): stop/restart reading events (back-pressure); events
 *     already read may still arrive. A new session starts reading.
 *   - disconnect(why): the manager closes this session (it held too much);
 *     the source may open another later, and counts this one as failed.
 *   - on_closed(err, reason): the session ended; only after an on_up.
 *     Connect attempts that never came up are the source's own business
 *     (retried, logged and counted by it).
 *   - on_gone(why): the source says the VM is gone for good (a listen VM
 *     that did not come back, a domain undefined); the manager removes it.
 *   - settled(): the manager has published the session's snapshot; a source
 *     that bounds how many VMs connect at once lets the next one go.
 *   - release(why): the manager is done with the link: a live session is
 *     closed (on_closed follows), then on_released comes from the loop,
 *     never from inside release; after it no callback of the link runs and
 *     the source frees the link.
 *
 * Everything runs on the bridge's one libuv loop.
 */
#ifndef QB_SOURCE_H
#define QB_SOURCE_H

#include "command.h"
#include "config.h"
#include "held_events.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

/* What a source answers for the snapshot and the normaliser, QMP-shaped (see above). */
enum qb_source_query {
    QB_SOURCE_QUERY_STATUS,      /* query-status */
    QB_SOURCE_QUERY_BLOCK,       /* query-block */
    QB_SOURCE_QUERY_BLOCK_JOBS,  /* query-block-jobs */
    QB_SOURCE_QUERY_COLO_STATUS, /* query-colo-status */
    QB_SOURCE_QUERY_NAME,        /* query-name */
    QB_SOURCE_QUERY_UUID,        /* query-uuid */
    QB_SOURCE_QUERY_COUNT
};

/* The QMP command a query stands for ("query-status"), static text. */
const char *qb_source_query_name(enum qb_source_query q);

/* Where a link's session is; the source's own finer name is ops->session_name. */
enum qb_source_session {
    QB_SOURCE_IDLE = 0, /* no session */
    QB_SOURCE_OPENING,  /* connecting, handshake */
    QB_SOURCE_READY,    /* between on_up and the start of its closing */
    QB_SOURCE_CLOSING,
};

struct qb_source;
struct qb_source_link;

/* One event of a session, every pointer borrowed for the call (see the contract above). */
struct qb_source_event {
    const json_t *msg;
    const char *raw;
    size_t raw_len;
};

/* Answer to a query: answer is borrowed for the call, NULL unless status is QB_OK or QB_EQMP. */
typedef void (*qb_source_answer_cb)(void *arg, int status, const json_t *answer);

/* Result of a command: result is a new reference the callee owns. */
typedef void (*qb_source_result_cb)(void *arg, json_t *result);

/* The link's upcalls to the manager, set by qb_source_link_bind. */
struct qb_source_link_cbs {
    void (*on_up)(void *arg, struct qb_held_events *early);
    void (*on_event)(void *arg, const struct qb_source_event *ev);
    void (*on_closed)(void *arg, int err, const char *reason);
    void (*on_gone)(void *arg, const char *why);
    void (*on_released)(void *arg);
};

/* The manager's upcalls to a source, given to ops->create. */
struct qb_source_host {
    /* The address of the VM of that name on the bridge (borrowed), or NULL when there is none. */
    const char *(*vm_lookup)(void *arg, const char *name);
    /*
     * A VM the source found: the manager makes its entry and binds link.
     * Returns QB_OK, QB_EEXIST (the name is taken) or QB_ENOMEM; on failure
     * the link stays the source's.
     */
    int (*vm_appeared)(void *arg, const char *name, struct qb_source_link *link);
    /* Whether the source can take more VMs it is offered (listen mode's accept back-pressure). */
    void (*room)(void *arg, bool room);
};

/* Counters a source keeps since start; ops->stats adds them into *out. */
struct qb_source_stats {
    uint64_t connect_failed;   /* connect attempts that never came up */
    uint64_t connecting;       /* VMs holding a connect slot now */
    uint64_t slot_waiting;     /* VMs waiting for one */
    uint64_t held_over_events; /* not yet named sessions closed: too many events held */
    uint64_t held_over_bytes;  /* not yet named sessions closed: too many event bytes held */
    uint64_t listen_refused;   /* offered VMs refused: the source's VM limit is reached */
    uint64_t listen_forgotten; /* VMs the source gave up on (on_gone) */
    /* the libvirt source's one connection to libvirtd (source_libvirt.c) */
    uint64_t libvirt_configured;     /* 1 when libvirt.uri is set */
    uint64_t libvirt_connected;      /* 1 while connected */
    uint64_t libvirt_lost;           /* connections lost after they were up */
    uint64_t libvirt_connect_failed; /* connect attempts that failed */
    uint64_t libvirt_refused;        /* domains refused: a name that is not valid or is taken */
    uint64_t libvirt_events_dropped; /* relayed events no session took (domain not taken, or
                                        its session not up; bad names or data) */
};

struct qb_source_ops {
    const char *name;

    /* ---- the source -------------------------------------------------- */
    /*
     * Makes the source on loop with cfg (borrowed, see set_config); host and
     * host_arg are the manager's upcalls. Never blocks. Returns QB_OK with *out
     * or QB_ENOMEM.
     */
    int (*create)(uv_loop_t *loop, const struct qb_config *cfg, const struct qb_source_host *host,
                  void *host_arg, struct qb_source **out);
    /* cfg (borrowed, outlives the source) from now on. */
    void (*set_config)(struct qb_source *src, const struct qb_config *cfg);
    /* Adds the source's counters to *out. */
    void (*stats)(const struct qb_source *src, struct qb_source_stats *out);
    /* Shutting down: no VM is offered any more, pending ones are dropped; no upcall after. */
    void (*close)(struct qb_source *src);
    /* Frees the source once every link was released (memory may go later, from the loop). */
    void (*free)(struct qb_source *src);

    /* Optional: a link for a configured or discovered VM (name, address copied). QB_ENOTFOUND: not
     * this source's address; QB_EINVAL: a bad one. */
    int (*open)(struct qb_source *src, const char *name, const char *address,
                struct qb_source_link **out);
    /* Optional: a connection QEMU made to qmp.listen (fd taken in every case). */
    int (*adopt)(struct qb_source *src, int fd, pid_t pid, uid_t uid);

    /* ---- one link (see the contract above) ---------------------------- */
    void (*start)(struct qb_source_link *l);
    void (*release)(struct qb_source_link *l, const char *why);
    void (*disconnect)(struct qb_source_link *l, const char *why);
    void (*settled)(struct qb_source_link *l);
    void (*pause)(struct qb_source_link *l, bool paused);
    int (*query)(struct qb_source_link *l, enum qb_source_query q, qb_source_answer_cb cb,
                 void *arg);
    int (*command)(struct qb_source_link *l, const struct qb_command *cmd, qb_source_result_cb done,
                   void *arg);
    enum qb_source_session (*session)(const struct qb_source_link *l);
    /* The source's name of the session state ("ready", "connecting"), static text. */
    const char *(*session_name)(const struct qb_source_link *l);
    /* Where the VM is reached ("unix:/run/vm1.qmp"), borrowed until the next on_up. */
    const char *(*address)(const struct qb_source_link *l);
    /*
     * The session's greeting, QMP-shaped ({"version": {"qemu": {...}, "package"},
     * "capabilities": [...]}), borrowed; NULL before a session came up.
     */
    const json_t *(*greeting)(const struct qb_source_link *l);
    /* "7.2.22", borrowed; "" before a session came up. */
    const char *(*version)(const struct qb_source_link *l);
};

/* The head of every source; the source's own struct starts with it. */
struct qb_source {
    const struct qb_source_ops *ops;
};

/* The head of every link; the source's own struct starts with it. */
struct qb_source_link {
    const struct qb_source_ops *ops;
    const struct qb_source_link_cbs *cb; /* set by qb_source_link_bind */
    void *cb_arg;
};

/* The sources a bridge has, NULL-terminated (source_registry.c: one line per source). */
extern const struct qb_source_ops *const qb_source_registry[];

/* Sets the upcalls of l (the taker's); done once, before l can call any. */
static inline void qb_source_link_bind(struct qb_source_link *l,
                                       const struct qb_source_link_cbs *cb, void *arg)
{
    l->cb = cb;
    l->cb_arg = arg;
}

/*
 * Logs and counts (in *events or *bytes) that who (a VM name or address)
 * held too much while waiting for what: count events of bytes line bytes,
 * the one that did not fit included. Returns the reason for the disconnect
 * (static text).
 */
const char *qb_source_held_overflow(const struct qb_config *cfg, const char *who, const char *what,
                                    size_t count, size_t bytes, uint64_t *events,
                                    uint64_t *bytes_n);

/* The held-event bounds cfg sets (qmp.max_held_events, max_held_bytes). */
struct qb_held_limits qb_source_held_limits(const struct qb_config *cfg);

#endif
