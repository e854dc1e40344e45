/*
 * vm_listen.c - listen mode: QEMUs that connected to qmp.listen, until they have a name.
 *
 * A session QEMU opened to qmp.listen starts as a "newcomer" with no VM; once
 * READY and named (query-name or the template) its client is handed to the
 * VM entry of that name, whose usual on_ready path then runs, so a listen VM
 * differs from others only in never reconnecting. Kept in its own file so the
 * rest of the manager never sees a session without a VM.
 */
#include "vm_manager_internal.h"

#include "config.h"
#include "error.h"
#include "log.h"
#include "qmp_client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <uthash.h>

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
    char *address;                /* "listen:<path> pid <pid>" */
    struct qb_held_events events; /* read between READY and the name, in order; bounded */
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
    qb_held_events_clear(&nc->events);
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
        if (qb_stream_name_valid(qname)) {
            snprintf(name, 65, "%s", qname);
            return QB_OK;
        }
        QB_LOG_WARN(nc->address,
                    "QEMU's name '%.80s' is not a VM name ([A-Za-z0-9._-], 1 to 64): "
                    "using qmp.listen_name_template",
                    qname);
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
    size_t n_held;

    HASH_FIND_STR(m->vms, name, vm);
    if (vm && (!vm->listen || qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)) {
        QB_LOG_WARN(name, "refusing the QMP connection from pid %d: VM '%s' %s %s", (int)nc->pid,
                    name, vm->listen ? "already has a live session from" : "is configured at",
                    vm->address);
        qb_qmp_client_disconnect(nc->qmp, "refused: a VM of that name is already served");
        return;
    }
    if (!vm && m->n_listen >= m->cfg->qmp_listen_max_vms) {
        /* every name QEMU reports would otherwise cost an entry and a retained topic */
        m->stats.listen_refused++;
        QB_LOG_WARN(name,
                    "refusing the QMP connection from pid %d: %zu listen VMs exist "
                    "(qmp.listen_max_vms %zu); nothing is published for it",
                    (int)nc->pid, m->n_listen, m->cfg->qmp_listen_max_vms);
        qb_qmp_client_disconnect(nc->qmp, "refused: qmp.listen_max_vms listen VMs exist");
        return;
    }
    if (!vm) {
        if (qb_vm_create(m, name, nc->address, &vm) < 0) {
            QB_LOG_ERR(name, "out of memory adding the VM of pid %d", (int)nc->pid);
            qb_qmp_client_disconnect(nc->qmp, "out of memory");
            return;
        }
        vm->listen = true;
        m->n_listen++;
    }
    if (qb_qmp_client_set_owner(nc->qmp, name, &qb_vm_qmp_callbacks, vm) < 0) {
        qb_qmp_client_disconnect(nc->qmp, "out of memory");
        return;
    }
    uv_timer_stop(&vm->reconnect_timer); /* its forget timer: QEMU is back */
    vm->read_paused = false; /* the new session reads; qb_vm_apply_pause decides from here */
    old = vm->qmp;
    vm->qmp = nc->qmp;
    nc->qmp = NULL;
    qb_qmp_client_free(old);
    free(vm->address);
    vm->address = nc->address;
    nc->address = NULL;
    /* Events that came before the name go first, after the snapshot like any others. */
    n_held = qb_held_events_count(&nc->events);
    if (qb_held_events_move(&vm->backlog, &nc->events) < 0)
        QB_LOG_ERR(vm->name, "out of memory: %zu events read before the name lost", n_held);
    nc_free(nc);
    qb_vm_on_ready(vm->qmp, vm);
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

/* Holds an event read before the name, within the same bounds as a VM's backlog. */
static void nc_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    struct qb_held_limits lim = qb_vm_held_limits(nc->mgr);
    size_t len = 0;
    const char *line = qb_qmp_client_event_line(c, &len);
    int rc = line ? qb_held_events_push(&nc->events, line, len, &lim) : QB_ENOMEM;

    if (rc == QB_ETOOBIG) {
        const char *why = qb_vm_held_overflow(nc->mgr, nc->address, "query-name",
                                              qb_held_events_count(&nc->events) + 1,
                                              qb_held_events_bytes(&nc->events) + len);

        qb_held_events_clear(&nc->events);
        qb_qmp_client_disconnect(c, why);
    } else if (rc < 0) {
        QB_LOG_ERR(nc->address, "out of memory: event %s lost",
                   json_string_value(json_object_get(msg, "event")));
    }
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

void qb_vm_manager_set_room_cb(struct qb_vm_manager *m, void (*cb)(void *arg, bool room), void *arg)
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
    if (!nc || asprintf(&nc->address, "listen:%s pid %d", path, (int)pid) < 0) {
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
    if (nc)
        free(nc->address);
    free(nc);
    return rc;
}

void qb_vm_listen_drop_all(struct qb_vm_manager *m)
{
    while (m->newcomers)
        nc_free(m->newcomers);
}

/*
 * The forget timer of a listen VM (its reconnect timer, which a listen VM
 * has no other use for): QEMU has not come back, so the entry and its
 * retained state go, instead of staying until the bridge restarts.
 */
static void listen_forget_cb(uv_timer_t *t)
{
    struct qb_vm *vm = t->data;
    struct qb_vm_manager *m = vm->mgr;

    if (qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)
        return; /* a session attached meanwhile (it stops this timer; this is a safety net) */
    QB_LOG_INFO(vm->name,
                "forgotten: QEMU has not connected again within qmp.listen_forget_after "
                "(%u ms); its retained state is cleared",
                m->cfg->qmp_listen_forget_after_ms);
    m->stats.listen_forgotten++;
    qb_vm_forget(vm, "not connected again within qmp.listen_forget_after");
}

void qb_vm_listen_closed(struct qb_vm *vm)
{
    uint32_t after = vm->mgr->cfg->qmp_listen_forget_after_ms;

    if (after > 0)
        uv_timer_start(&vm->reconnect_timer, listen_forget_cb, after, 0);
}
