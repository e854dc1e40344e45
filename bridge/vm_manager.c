/*
 * vm_manager.c - the VMs of one bridge: the set, their sessions, teardown; the top vm_* layer.
 *
 * Data flows one way: source -> normalize -> publish -> transports. Where
 * VMs come from and how they are reached (sockets, reconnects, listen mode)
 * is the sources' business (source.h); ordering and what is published for a
 * VM live in the vm_* files below this one (vm.h lists them). See
 * vm_manager.h for the guarantees.
 *
 * This file holds the VM set (add, remove, discovery, lookups, statistics),
 * the session lifecycle (up, closed, back-pressure), creation and teardown of
 * VM entries and of the manager, its sources, configuration reload, and the
 * public command entry points (which find the VM and hand over to
 * vm_commands.c). The lower files call back only through the hooks set here
 * (struct qb_vm_hooks).
 *
 * Reply callbacks hold the VM alive (the inflight counters of the pipeline,
 * the snapshot and the commands), so a VM removed mid-query is freed only
 * after its last callback has run.
 *
 * Back-pressure: while any transport says its queue is near full, every VM
 * stops reading (QEMU keeps the events) once its session is up, resynced and
 * not waiting on a query, since those need their replies read.
 */
#include "vm_manager.h"

#include "error.h"
#include "log.h"
#include "outbox.h"
#include "prom.h"
#include "publish.h"
#include "source.h"
#include "vm.h"
#include "vm_commands.h"
#include "vm_pipeline.h"
#include "vm_publish.h"
#include "vm_snapshot.h"
#include "vm_state.h"
#include "vm_state_copies.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uthash.h>

static void vm_begin_removal(struct qb_vm *vm, const char *why, bool remember, bool clear);

/* ---- session lifecycle --------------------------------------------------- */

/*
 * A session came up: bridge.vm.connected goes out when query-uuid answers,
 * before the snapshot. early: events the source read before it had this VM,
 * which go first, after the snapshot.
 */
static void vm_on_up(void *arg, struct qb_held_events *early)
{
    struct qb_vm *vm = arg;
    const char *version = vm->link->ops->version(vm->link);

    if (early)
        qb_vm_pipe_take_early(vm, early);
    vm->read_paused = false; /* a new session reads; vm_settle decides from here */
    vm->was_ready = true;
    snprintf(vm->qemu_version, sizeof(vm->qemu_version), "%s", version);
    qb_vm_pipe_reset(vm, NULL);
    QB_LOG_INFO(vm->name, "connected to QEMU %s at %s", version, vm->link->ops->address(vm->link));
    qb_vm_snapshot_begin(vm);
}

/* Frees a removed VM once its link is released and no callback is due. */
static void vm_maybe_free(struct qb_vm *vm);

static void vm_on_closed(void *arg, int err, const char *reason)
{
    struct qb_vm *vm = arg;

    /* Events read before the close are all published by now: replies failed first, drain ran. */
    qb_vm_drain(vm);
    if (vm->was_ready) {
        json_t *data =
            json_pack("{s:s, s:s}", "reason", reason ? reason : "", "error", qb_strerror(err));

        qb_vm_publish_connected(vm, NULL); /* still due only if query-uuid never ran */
        qb_vm_publish_disconnected(vm, data);
        json_decref(data);
        QB_LOG_INFO(vm->name, "disconnected: %s", reason ? reason : qb_strerror(err));
        if (!vm->removing && !vm->mgr->closing) {
            vm->reconnects++;
            vm->mgr->reconnects++;
        }
    }
    vm->was_ready = false;
    vm->read_paused = false; /* the source's next session starts reading */
    qb_vm_cmd_flush(vm, QB_CMD_ERR_NOT_CONNECTED,
                    vm->removing ? "the VM was removed before the command ran"
                                 : "the QMP session closed before the command ran");
    if (vm->removing || vm->mgr->closing)
        vm_maybe_free(vm);
}

/* The source gave the VM up (a listen VM that did not come back): remove it for good. */
static void vm_on_gone(void *arg, const char *why)
{
    struct qb_vm *vm = arg;

    QB_LOG_INFO(vm->name, "removed: %s", why);
    vm_begin_removal(vm, why, false, true);
}

/* The source is done with the link: nothing of it can call back any more. */
static void vm_on_released(void *arg)
{
    struct qb_vm *vm = arg;

    vm->link = NULL;
    vm_maybe_free(vm);
}

static const struct qb_source_link_cbs vm_link_cbs = {
    .on_up = vm_on_up,
    .on_event = qb_vm_on_event,
    .on_closed = vm_on_closed,
    .on_gone = vm_on_gone,
    .on_released = vm_on_released,
};

/*
 * Pauses or resumes reading so it matches the manager's back-pressure, but
 * only where it is safe: a handshake, a snapshot or a pending query needs its
 * replies read, and events read meanwhile wait in the backlog (bounded by what
 * QEMU sends during one query).
 */
static void vm_settle(struct qb_vm *vm)
{
    bool want = vm->mgr->pressure && !vm->removing && !vm->snap.resyncing &&
                vm->pipe.pending.type == NULL && vm->cmds.running == NULL && qb_vm_is_ready(vm);

    if (want != vm->read_paused) {
        vm->read_paused = want;
        if (vm->link)
            vm->link->ops->pause(vm->link, want);
    }
    /* Events held back under pressure go first, also for a VM that was never paused. */
    if (!want)
        qb_vm_drain(vm);
}

/* The snapshot is published (ok) or the session went: a query-state command waiting on it ends. */
static void vm_resynced(struct qb_vm *vm, bool ok)
{
    if (vm->cmds.state_waiting)
        qb_vm_cmd_finish_state(vm, ok);
}

static const struct qb_vm_hooks vm_hooks = {
    .settle = vm_settle,
    .maybe_free = vm_maybe_free,
    .resynced = vm_resynced,
};

static void mgr_on_pressure(void *arg, bool pressure)
{
    struct qb_vm_manager *m = arg;

    if (pressure == m->pressure)
        return;
    m->pressure = pressure;
    QB_LOG_INFO(NULL, "%s reading from %u VMs (back-pressure %s)",
                pressure ? "pausing" : "resuming", HASH_COUNT(m->vms), pressure ? "on" : "off");
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next)
        vm_settle(vm);
}

/* ---- creation and teardown ----------------------------------------------- */

/* Frees the manager and reports done; only once no VM struct is left. */
static void mgr_finish(struct qb_vm_manager *m)
{
    void (*done)(void *) = m->done;
    void *arg = m->done_arg;

    qb_vm_counts_free(m);
    for (size_t i = 0; i < m->n_sources; i++)
        m->sources[i]->ops->free(m->sources[i]); /* every link is released */
    qb_vm_state_cache_free(m->state_cache);      /* every holder is gone with its VM */
    qb_vm_state_copies_close(m->state_copies);
    qb_publisher_free(m->pub); /* every stream went with its VM */
    free(m);
    if (done)
        done(arg);
}

/*
 * A VM removed for good (socket gone, removed by reload, listen VM forgotten)
 * clears its retained state as its last message, unless a VM of that name is
 * on the bridge again by now (a changed address, a socket back at once): that
 * entry's snapshot replaces the state, and a clearing after it would erase it.
 */
static void vm_clear_retained(struct qb_vm *vm)
{
    if (qb_stream_superseded(vm->out.stream)) {
        QB_LOG_DEBUG(vm->name, "retained state not cleared: the VM is back with a new entry");
        qb_vm_state_copy_flush(vm);
        return;
    }
    QB_LOG_INFO(vm->name, "clearing its retained state: the VM is gone");
    qb_vm_publish_state_clear(vm);
}

/* Frees vm's parts, each by its own file; the name goes last (the others log with it). */
static void vm_free_parts(struct qb_vm *vm)
{
    qb_vm_cmds_free(vm);
    qb_vm_snap_free(vm);
    qb_vm_pipe_free(vm);
    qb_vm_out_free(vm);
    free(vm); /* the name with it */
}

static void vm_free_now(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    if (vm->clear_on_free)
        vm_clear_retained(vm); /* after its last state copy, which goes first */
    else
        qb_vm_state_copy_flush(vm); /* its last change still reaches the state topic */
    vm_free_parts(vm);
    if (--m->n_alive == 0 && m->closing)
        mgr_finish(m);
}

/*
 * The last step of removing a VM: the struct goes once its source released
 * the link (after the session closed) and no reply callback is due.
 */
static void vm_maybe_free(struct qb_vm *vm)
{
    if (vm->removing && !vm->link && vm->pipe.inflight + vm->snap.inflight + vm->cmds.inflight == 0)
        vm_free_now(vm);
}

/*
 * Creates the entry of VM name (valid, not taken) with its numbering
 * (remembered, spooled or new) on link (bound to it), and adds it to the
 * table. Returns QB_OK with *out (borrowed), or QB_ENOMEM (link stays the
 * caller's).
 */
static int vm_create(struct qb_vm_manager *m, const char *name, struct qb_source_link *link,
                     struct qb_vm **out)
{
    size_t nlen = strlen(name);
    struct qb_vm *vm = calloc(1, sizeof(*vm) + nlen + 1);
    int rc = QB_ENOMEM;

    if (!vm)
        return QB_ENOMEM;
    vm->mgr = m;
    memcpy(vm->name_text, name, nlen + 1);
    vm->name = vm->name_text;
    if (qb_vm_pipe_init(vm) < 0)
        goto fail;
    rc = qb_vm_out_open(vm);
    if (rc < 0)
        goto fail;
    vm->link = link;
    qb_source_link_bind(link, &vm_link_cbs, vm);
    HASH_ADD_KEYPTR(hh, m->vms, vm->name, strlen(vm->name), vm);
    m->n_alive++;
    QB_LOG_INFO(vm->name, "added, QMP at %s", link->ops->address(link));
    *out = vm;
    return QB_OK;

fail:
    vm_free_parts(vm);
    return rc;
}

/* ---- the manager's upcalls from its sources ------------------------------ */

static const char *mgr_vm_lookup(void *arg, const char *name)
{
    struct qb_vm_manager *m = arg;
    struct qb_vm *vm = NULL;

    HASH_FIND_STR(m->vms, name, vm);
    if (!vm)
        return NULL;
    return vm->link ? vm->link->ops->address(vm->link) : "?";
}

static int mgr_vm_appeared(void *arg, const char *name, struct qb_source_link *link)
{
    struct qb_vm_manager *m = arg;
    struct qb_vm *vm = NULL;

    if (m->closing)
        return QB_ECLOSED;
    HASH_FIND_STR(m->vms, name, vm);
    if (vm)
        return QB_EEXIST;
    return vm_create(m, name, link, &vm);
}

static void mgr_room(void *arg, bool room)
{
    struct qb_vm_manager *m = arg;

    if (m->room_cb)
        m->room_cb(m->room_arg, room);
}

static const struct qb_source_host mgr_host = {
    .vm_lookup = mgr_vm_lookup,
    .vm_appeared = mgr_vm_appeared,
    .room = mgr_room,
};

int qb_vm_manager_new(uv_loop_t *loop, const struct qb_config *cfg, struct qb_outbox *outbox,
                      struct qb_vm_manager **out)
{
    return qb_vm_manager_new_with_sources(loop, cfg, outbox, qb_source_registry, out);
}

/* The publisher's question: is a VM of that name on the bridge now (removed ones are not)? */
static bool mgr_name_live(void *arg, const char *name)
{
    struct qb_vm_manager *m = arg;
    struct qb_vm *vm = NULL;

    HASH_FIND_STR(m->vms, name, vm);
    return vm != NULL;
}

int qb_vm_manager_new_with_sources(uv_loop_t *loop, const struct qb_config *cfg,
                                   struct qb_outbox *outbox,
                                   const struct qb_source_ops *const *sources,
                                   struct qb_vm_manager **out)
{
    struct qb_vm_manager *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (!m)
        return QB_ENOMEM;
    m->loop = loop;
    m->cfg = cfg;
    m->outbox = outbox;
    m->hooks = &vm_hooks;
    m->state_cache = qb_vm_state_cache_new(QB_VM_STATE_TREES_MAX);
    if (!m->state_cache || qb_publisher_new(cfg, outbox, mgr_name_live, m, &m->pub) < 0 ||
        qb_vm_state_copies_new(loop, qb_vm_publish_state_copy, &m->state_copies) < 0)
        goto fail;
    for (size_t i = 0; sources[i] && i < QB_VM_SOURCES_MAX; i++) {
        if (sources[i]->create(loop, cfg, &mgr_host, m, &m->sources[i]) < 0)
            goto fail;
        m->n_sources++;
    }
    qb_histogram_init_latency(&m->cmd_latency);
    qb_outbox_set_pressure_cb(outbox, mgr_on_pressure, m);
    m->pressure = qb_outbox_under_pressure(outbox);
    *out = m;
    return QB_OK;

fail:
    for (size_t i = 0; i < m->n_sources; i++)
        m->sources[i]->ops->free(m->sources[i]);
    qb_publisher_free(m->pub);
    qb_vm_state_cache_free(m->state_cache);
    qb_vm_state_copies_close(m->state_copies);
    free(m);
    return QB_ENOMEM;
}

int qb_vm_manager_add(struct qb_vm_manager *m, const char *name, const char *address)
{
    struct qb_source_link *link = NULL;
    struct qb_vm *vm;
    int rc = QB_EINVAL;

    if (m->closing)
        return QB_ECLOSED;
    if (!qb_stream_name_valid(name))
        return QB_EINVAL;
    /* the first source that knows the address form takes the VM */
    for (size_t i = 0; i < m->n_sources; i++) {
        if (!m->sources[i]->ops->open)
            continue;
        rc = m->sources[i]->ops->open(m->sources[i], name, address, &link);
        if (rc != QB_ENOTFOUND)
            break;
    }
    if (rc < 0)
        return rc == QB_ENOTFOUND ? QB_EINVAL : rc;
    HASH_FIND_STR(m->vms, name, vm);
    if (vm) {
        link->ops->release(link, "a VM of that name exists");
        return QB_EEXIST;
    }
    rc = vm_create(m, name, link, &vm);
    if (rc < 0) {
        link->ops->release(link, "out of memory");
        return rc;
    }
    link->ops->start(link);
    return QB_OK;
}

/*
 * Starts removing vm: remember keeps its numbering for a VM of that name
 * later; clear (a removal for good, not a shutdown) clears its retained state.
 */
static void vm_begin_removal(struct qb_vm *vm, const char *why, bool remember, bool clear)
{
    struct qb_vm_manager *m = vm->mgr;

    HASH_DEL(m->vms, vm);
    vm->clear_on_free = clear;
    qb_stream_retire(vm->out.stream, remember && !m->closing);
    vm->removing = true;
    if (vm->link)
        vm->link->ops->release(vm->link, why); /* on_closed, then on_released, follow */
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
    vm_begin_removal(vm, why, true, true);
    return QB_OK;
}

/* ---- the VM set: discovery, lookups, statistics, close ------------------- */

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

void qb_vm_manager_foreach(const struct qb_vm_manager *m,
                           void (*cb)(void *arg, const struct qb_vm_info *info), void *arg)
{
    for (const struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        struct qb_vm_info info = {
            .name = vm->name,
            .address = vm->link ? vm->link->ops->address(vm->link) : "",
            .session = vm->link ? vm->link->ops->session_name(vm->link) : "idle",
            .qemu_version = vm->qemu_version,
            .run_state = vm->out.state && qb_vm_state_run_state(vm->out.state)[0]
                             ? qb_vm_state_run_state(vm->out.state)
                             : NULL,
            .last_event = vm->out.last_event,
            .last_event_usec = vm->out.last_event_usec,
            .sequence = qb_stream_sequence(vm->out.stream),
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
    qb_vm_counts_foreach(m, which, cb, arg);
}

void qb_vm_manager_get_stats(const struct qb_vm_manager *m, struct qb_vm_manager_stats *out)
{
    struct qb_source_stats st = {0};

    for (size_t i = 0; i < m->n_sources; i++)
        m->sources[i]->ops->stats(m->sources[i], &st);
    memset(out, 0, sizeof(*out));
    out->reconnects = m->reconnects;
    out->held_over_events = m->held_over_events;
    out->held_over_bytes = m->held_over_bytes;
    out->connect_failed += st.connect_failed;
    out->connecting = st.connecting;
    out->slot_waiting = st.slot_waiting;
    out->held_over_events += st.held_over_events;
    out->held_over_bytes += st.held_over_bytes;
    out->listen_refused += st.listen_refused;
    out->listen_forgotten += st.listen_forgotten;
    out->libvirt_configured = st.libvirt_configured;
    out->libvirt_connected = st.libvirt_connected;
    out->libvirt_lost = st.libvirt_lost;
    out->libvirt_connect_failed = st.libvirt_connect_failed;
    out->libvirt_refused = st.libvirt_refused;
    out->libvirt_events_dropped = st.libvirt_events_dropped;
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
        if (qb_vm_is_ready(vm))
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

    m->closing = true;
    m->done = done;
    m->done_arg = arg;
    qb_outbox_set_pressure_cb(m->outbox, NULL, NULL);
    m->room_cb = NULL;
    for (size_t i = 0; i < m->n_sources; i++)
        m->sources[i]->ops->close(m->sources[i]); /* nothing is offered from now on */
    qb_publisher_closing(m->pub);
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
    /* not a removal: the retained state stays, connected: false, until the next start */
    HASH_ITER(hh, m->vms, vm, tmp) vm_begin_removal(vm, "bridge shutting down", true, false);
}

/* ---- configuration reload (reload.c) -------------------------------------- */

void qb_vm_manager_set_config(struct qb_vm_manager *m, const struct qb_config *cfg)
{
    m->cfg = cfg;
    qb_publisher_set_config(m->pub, cfg);
    for (size_t i = 0; i < m->n_sources; i++)
        m->sources[i]->ops->set_config(m->sources[i], cfg);
}

void qb_vm_manager_forget_transport(struct qb_vm_manager *m, const struct qb_transport *t)
{
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next)
        qb_vm_cmds_forget_transport(vm, t);
}

/* ---- commands: find the VM, hand over to vm_commands.c -------------------- */

int qb_vm_manager_submit_command(struct qb_vm_manager *m, struct qb_command *cmd,
                                 const struct qb_command_origin *origin, qb_vm_command_done_cb done,
                                 void *arg, struct qb_command_error *err)
{
    struct qb_vm *vm = NULL;

    if (cmd->subject)
        HASH_FIND_STR(m->vms, cmd->subject, vm);
    if (!vm) {
        err->cls = QB_CMD_ERR_UNKNOWN_VM;
        snprintf(err->message, sizeof(err->message), "subject: no VM '%s' on bridge '%s'",
                 cmd->subject ? cmd->subject : "", m->cfg->bridge_id);
        return QB_ENOTFOUND;
    }
    return qb_vm_cmds_submit(vm, cmd, origin, done, arg, err);
}

void qb_vm_manager_publish_result(struct qb_vm_manager *m, const char *vm_name,
                                  const json_t *result, const struct qb_command_origin *origin)
{
    struct qb_vm *vm = NULL;

    if (vm_name)
        HASH_FIND_STR(m->vms, vm_name, vm);
    qb_vm_cmds_publish_result(m, vm, vm_name, result, origin, false);
}

void qb_vm_manager_publish_reply(struct qb_vm_manager *m, const char *vm_name, const json_t *result,
                                 const struct qb_command_origin *origin)
{
    qb_vm_cmds_publish_result(m, NULL, vm_name, result, origin, true);
}

/* ---- listen mode: the sources that take connections QEMU made ------------- */

void qb_vm_manager_set_room_cb(struct qb_vm_manager *m, void (*cb)(void *arg, bool room), void *arg)
{
    m->room_cb = cb;
    m->room_arg = arg;
}

int qb_vm_manager_adopt(struct qb_vm_manager *m, int fd, pid_t pid, uid_t uid)
{
    if (!m->closing) {
        for (size_t i = 0; i < m->n_sources; i++)
            if (m->sources[i]->ops->adopt)
                return m->sources[i]->ops->adopt(m->sources[i], fd, pid, uid);
    }
    close(fd);
    return QB_ECLOSED;
}
