/*
 * source_listen.c - listen mode: QEMUs that connected to qmp.listen, until they have a name.
 *
 * A session QEMU opened to qmp.listen starts as a "newcomer" with no VM; once
 * READY and named (query-name or the template) it is handed to the QMP source
 * (source_listen.h), which attaches it to the VM of that name. Kept in its
 * own file so nothing above ever sees a session without a VM.
 */
#include "source_listen.h"

#include "config.h"
#include "error.h"
#include "log.h"
#include "publish.h"
#include "qmp_client.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* A connection accepted on qmp.listen, from accept until its VM name is known. */
struct qb_vm_newcomer {
    struct qb_source_listen *owner;
    struct qb_vm_newcomer *next;
    struct qb_qmp_client *qmp;
    pid_t pid;
    uid_t uid;
    char *address;                /* "listen:<path> pid <pid>" */
    struct qb_held_events events; /* read between READY and the name, in order; bounded */
};

struct qb_source_listen {
    uv_loop_t *loop;
    const struct qb_config *cfg;
    const struct qb_qmp_options *opts;
    struct qb_source_stats *stats;
    const struct qb_source_listen_cbs *cb;
    void *cb_arg;
    struct qb_vm_newcomer *newcomers;
    size_t n_newcomers;
};

/* Unlinks and frees nc (and its session, if it still has one); says when there is room again. */
static void nc_free(struct qb_vm_newcomer *nc)
{
    struct qb_source_listen *l = nc->owner;
    struct qb_vm_newcomer **pp = &l->newcomers;
    bool was_full = l->n_newcomers >= l->cfg->qmp_max_connecting;

    while (*pp && *pp != nc)
        pp = &(*pp)->next;
    if (*pp)
        *pp = nc->next;
    l->n_newcomers--;
    if (was_full && l->n_newcomers < l->cfg->qmp_max_connecting && l->cb->room)
        l->cb->room(l->cb_arg, true);
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
    const struct qb_config *cfg = nc->owner->cfg;
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

static void nc_name_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    char name[65];

    (void)c;
    if (status == QB_ECLOSED)
        return; /* on_closed (or the source's close) frees nc */
    if (nc_pick_name(nc, status, reply, name) < 0) {
        QB_LOG_WARN(nc->address, "no usable VM name from qmp.listen_name_template");
        qb_qmp_client_disconnect(nc->qmp, "no usable VM name");
        return;
    }
    /* a refused session was disconnected: its on_closed frees nc, maybe already */
    if (nc->owner->cb->named(nc->owner->cb_arg, nc->qmp, &nc->address, name, nc->pid,
                             &nc->events)) {
        nc->qmp = NULL;
        nc_free(nc);
    }
}

static void nc_on_ready(struct qb_qmp_client *c, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    int rc = qb_qmp_client_execute(c, "query-name", NULL, nc->owner->cfg->qmp_command_timeout_ms,
                                   nc_name_reply, nc);

    if (rc < 0)
        qb_qmp_client_disconnect(c, "cannot send query-name");
}

/* Holds an event read before the name, within the same bounds as a VM's backlog. */
static void nc_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qb_vm_newcomer *nc = arg;
    struct qb_source_listen *l = nc->owner;
    struct qb_held_limits lim = qb_source_held_limits(l->cfg);
    size_t len = 0;
    const char *line = qb_qmp_client_event_line(c, &len);
    int rc = line ? qb_held_events_push(&nc->events, line, len, &lim) : QB_ENOMEM;

    if (rc == QB_ETOOBIG) {
        const char *why = qb_source_held_overflow(
            l->cfg, nc->address, "query-name", qb_held_events_count(&nc->events) + 1,
            qb_held_events_bytes(&nc->events) + len, &l->stats->held_over_events,
            &l->stats->held_over_bytes);

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

static const struct qb_qmp_callbacks nc_callbacks = {
    .on_ready = nc_on_ready,
    .on_event = nc_on_event,
    .on_closed = nc_on_closed,
};

int qb_source_listen_new(uv_loop_t *loop, const struct qb_config *cfg,
                         const struct qb_qmp_options *opts, struct qb_source_stats *stats,
                         const struct qb_source_listen_cbs *cb, void *arg,
                         struct qb_source_listen **out)
{
    struct qb_source_listen *l = calloc(1, sizeof(*l));

    *out = l;
    if (!l)
        return QB_ENOMEM;
    l->loop = loop;
    l->cfg = cfg;
    l->opts = opts;
    l->stats = stats;
    l->cb = cb;
    l->cb_arg = arg;
    return QB_OK;
}

void qb_source_listen_set_config(struct qb_source_listen *l, const struct qb_config *cfg)
{
    l->cfg = cfg;
}

int qb_source_listen_adopt(struct qb_source_listen *l, int fd, pid_t pid, uid_t uid)
{
    struct qb_vm_newcomer *nc;
    const char *path = l->cfg->qmp_listen ? l->cfg->qmp_listen + 5 : "?";
    int rc = QB_ENOMEM;

    if (l->n_newcomers >= l->cfg->qmp_max_connecting) {
        close(fd);
        return QB_EBUSY;
    }
    nc = calloc(1, sizeof(*nc));
    if (!nc || asprintf(&nc->address, "listen:%s pid %d", path, (int)pid) < 0) {
        if (nc)
            nc->address = NULL; /* asprintf leaves it undefined on failure */
        goto fail;
    }
    nc->owner = l;
    nc->pid = pid;
    nc->uid = uid;
    rc = qb_qmp_client_new(l->loop, nc->address, l->opts, &nc_callbacks, nc, &nc->qmp);
    if (rc < 0)
        goto fail;
    nc->next = l->newcomers;
    l->newcomers = nc;
    if (++l->n_newcomers >= l->cfg->qmp_max_connecting && l->cb->room)
        l->cb->room(l->cb_arg, false);
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

void qb_source_listen_free(struct qb_source_listen *l)
{
    if (!l)
        return;
    l->cb = &(const struct qb_source_listen_cbs){0}; /* no room upcall while dropping */
    while (l->newcomers)
        nc_free(l->newcomers);
    free(l);
}
