/*
 * reload.c - compute and apply the difference between two configurations
 * (SIGHUP; see reload.h for what can change and what needs a restart).
 *
 * The pure part (qb_reload_diff, qb_reload_transport_equal,
 * qb_reload_keep_fixed) only reads configs, so the unit test can drive it
 * without a loop. The applying part works on the running objects in an order
 * that never leaves a message without a transport: new transports are
 * created before the old ones are let go, the manager, outbox and router get
 * the new config before VMs are added (they must see the new settings), and
 * discovery comes last because its first scan adds VMs from inside the call.
 * What is in force afterwards goes back to the owner in a struct
 * qb_reload_result; this file never writes the owner's fields.
 *
 * Transports are compared with the configuration they actually run with
 * (qb_transport_config), not with the previous file: a transport whose
 * replacement failed at one reload is retried at the next.
 */
#include "reload.h"

#include "error.h"
#include "log.h"
#include "transport_ops.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the pure part ------------------------------------------------------- */

const char *qb_reload_change_name(enum qb_reload_change c)
{
    static const char *const names[] = {"same", "added", "removed", "changed"};

    return (unsigned)c < sizeof(names) / sizeof(names[0]) ? names[c] : "?";
}

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static const char *tc_name(const struct qb_transport_config *c)
{
    return c->name ? c->name : c->type;
}

bool qb_reload_transport_equal(const struct qb_transport_config *a,
                               const struct qb_transport_config *b)
{
    const struct qb_transport_ops *ops = qb_transport_ops_find(a->type);

    /* every key of the common table and of the backend's config map; not file/line/column */
    if (!str_eq(a->type, b->type) || !qb_config_map_equal(qb_config_transport_keys, a, b) ||
        !qb_config_strings_equal(a->include, a->n_include, b->include, b->n_include) ||
        !qb_config_strings_equal(a->exclude, a->n_exclude, b->exclude, b->n_exclude))
        return false;
    if (!a->backend || !b->backend)
        return a->backend == b->backend;
    return ops && qb_config_map_equal(ops->config_keys, a->backend, b->backend);
}

static const struct qb_vm_config *find_vm(const struct qb_config *c, const char *name, size_t *i)
{
    for (*i = 0; *i < c->n_vms; (*i)++)
        if (strcmp(c->vms[*i].name, name) == 0)
            return &c->vms[*i];
    return NULL;
}

static const struct qb_transport_config *find_tc(const struct qb_config *c, const char *name,
                                                 size_t *i)
{
    for (*i = 0; *i < c->n_transports; (*i)++)
        if (strcmp(tc_name(&c->transports[*i]), name) == 0)
            return &c->transports[*i];
    return NULL;
}

int qb_reload_diff(const struct qb_config *old, const struct qb_config *nc,
                   struct qb_reload_diff *out)
{
    size_t j;

    memset(out, 0, sizeof(*out));
    out->vms = calloc(old->n_vms + nc->n_vms + 1, sizeof(*out->vms));
    out->transports = calloc(old->n_transports + nc->n_transports + 1, sizeof(*out->transports));
    if (!out->vms || !out->transports) {
        qb_reload_diff_free(out);
        return QB_ENOMEM;
    }
    for (size_t i = 0; i < nc->n_vms; i++) {
        const struct qb_vm_config *o = find_vm(old, nc->vms[i].name, &j);

        out->vms[out->n_vms++] = (struct qb_reload_item){
            .name = nc->vms[i].name,
            .old_index = o ? j : SIZE_MAX,
            .new_index = i,
            .change = !o                              ? QB_RELOAD_ADDED
                      : str_eq(o->qmp, nc->vms[i].qmp) ? QB_RELOAD_SAME
                                                       : QB_RELOAD_CHANGED,
        };
    }
    for (size_t i = 0; i < old->n_vms; i++)
        if (!find_vm(nc, old->vms[i].name, &j))
            out->vms[out->n_vms++] = (struct qb_reload_item){
                .name = old->vms[i].name, .old_index = i, .new_index = SIZE_MAX,
                .change = QB_RELOAD_REMOVED};
    for (size_t i = 0; i < nc->n_transports; i++) {
        const struct qb_transport_config *o = find_tc(old, tc_name(&nc->transports[i]), &j);

        out->transports[out->n_transports++] = (struct qb_reload_item){
            .name = tc_name(&nc->transports[i]),
            .old_index = o ? j : SIZE_MAX,
            .new_index = i,
            .change = !o ? QB_RELOAD_ADDED
                         : qb_reload_transport_equal(o, &nc->transports[i]) ? QB_RELOAD_SAME
                                                                            : QB_RELOAD_CHANGED,
        };
    }
    for (size_t i = 0; i < old->n_transports; i++)
        if (!find_tc(nc, tc_name(&old->transports[i]), &j))
            out->transports[out->n_transports++] = (struct qb_reload_item){
                .name = tc_name(&old->transports[i]), .old_index = i, .new_index = SIZE_MAX,
                .change = QB_RELOAD_REMOVED};
    out->discovery_changed = !str_eq(old->discovery_directory, nc->discovery_directory) ||
                             !str_eq(old->discovery_suffix, nc->discovery_suffix);
    return QB_OK;
}

void qb_reload_diff_free(struct qb_reload_diff *d)
{
    free(d->vms);
    free(d->transports);
    memset(d, 0, sizeof(*d));
}

/* ---- keys that need a restart -------------------------------------------- */

enum fixed_type { FX_STR, FX_SIZE, FX_U32, FX_BOOL, FX_ENUM };

/*
 * What a running bridge cannot take over: the identity everything is named
 * after, the spool (opened once, its files sized by these), the listening
 * sockets, and the command channel's existence and cache (the router and the
 * subscriptions are made at start-up).
 */
static const struct fixed_key {
    const char *key;
    enum fixed_type type;
    size_t offset;
} fixed_keys[] = {
    {"bridge.id", FX_STR, offsetof(struct qb_config, bridge_id)},
    {"spool.directory", FX_STR, offsetof(struct qb_config, spool_directory)},
    {"spool.max_size", FX_SIZE, offsetof(struct qb_config, spool_max_bytes)},
    {"spool.segment_size", FX_SIZE, offsetof(struct qb_config, spool_segment_bytes)},
    {"spool.fsync", FX_ENUM, offsetof(struct qb_config, spool_fsync)},
    {"spool.fsync_interval", FX_U32, offsetof(struct qb_config, spool_fsync_interval_ms)},
    {"metrics.listen", FX_STR, offsetof(struct qb_config, metrics_listen)},
    {"qmp.listen", FX_STR, offsetof(struct qb_config, qmp_listen)},
    {"qmp.listen_name", FX_ENUM, offsetof(struct qb_config, qmp_listen_name)},
    {"qmp.listen_name_template", FX_STR, offsetof(struct qb_config, qmp_listen_name_template)},
    {"commands.enabled", FX_BOOL, offsetof(struct qb_config, commands.enabled)},
    {"commands.cache_size", FX_SIZE, offsetof(struct qb_config, commands_cache_size)},
    {"bridge.state_directory", FX_STR, offsetof(struct qb_config, state_directory)},
    {"libvirt.uri", FX_STR, offsetof(struct qb_config, libvirt_uri)},
    {"libvirt.keepalive_interval", FX_U32,
     offsetof(struct qb_config, libvirt_keepalive_interval_ms)},
    {"libvirt.keepalive_count", FX_U32, offsetof(struct qb_config, libvirt_keepalive_count)},
};

/* Copies old's value of k into nc when they differ. Returns 1 (copied), 0 (equal), QB_ENOMEM. */
static int keep_one(const struct fixed_key *k, const struct qb_config *old, struct qb_config *nc)
{
    const char *o = (const char *)old + k->offset;
    char *n = (char *)nc + k->offset;

    switch (k->type) {
    case FX_STR: {
        const char *ov = *(char *const *)o;
        char **nv = (char **)n;
        char *copy;

        if (str_eq(ov, *nv))
            return 0;
        if (ov && !(copy = strdup(ov)))
            return QB_ENOMEM;
        free(*nv);
        *nv = ov ? copy : NULL;
        return 1;
    }
    case FX_SIZE:
        if (*(const size_t *)o == *(size_t *)n)
            return 0;
        *(size_t *)n = *(const size_t *)o;
        return 1;
    case FX_U32:
        if (*(const uint32_t *)o == *(uint32_t *)n)
            return 0;
        *(uint32_t *)n = *(const uint32_t *)o;
        return 1;
    case FX_BOOL:
        if (*(const bool *)o == *(bool *)n)
            return 0;
        *(bool *)n = *(const bool *)o;
        return 1;
    case FX_ENUM: /* every enum of struct qb_config has the size of an int */
        if (*(const int *)o == *(int *)n)
            return 0;
        *(int *)n = *(const int *)o;
        return 1;
    }
    return 0;
}

int qb_reload_keep_fixed(const struct qb_config *old, struct qb_config *nc, char *names,
                         size_t nameslen)
{
    int n = 0;
    size_t used = 0;

    if (names && nameslen)
        names[0] = '\0';
    for (size_t i = 0; i < sizeof(fixed_keys) / sizeof(fixed_keys[0]); i++) {
        int rc = keep_one(&fixed_keys[i], old, nc);

        if (rc < 0)
            return rc;
        if (rc == 0)
            continue;
        QB_LOG_WARN(NULL, "reload: %s changed; needs a restart (keeping the running value)",
                    fixed_keys[i].key);
        if (names && used < nameslen) {
            int w = snprintf(names + used, nameslen - used, "%s%s", n ? ", " : "",
                             fixed_keys[i].key);
            if (w > 0)
                used += (size_t)w;
        }
        n++;
    }
    return n;
}

/* ---- applying ------------------------------------------------------------ */

/* One reload in progress: what it works on and what it counts for the status line. */
struct rl {
    const struct qb_reload_target *t;
    struct qb_config *old, *nc;
    struct qb_transport **next; /* the transport set being built */
    size_t n_next;
    unsigned tr_kept, tr_restarted, tr_added, tr_removed, tr_failed;
    unsigned vm_added, vm_removed, vm_changed, vm_failed;
};

/*
 * Loads path and runs the start-up checks. Returns QB_OK with *out, or
 * QB_ECONFIG with err saying file:line:column and why.
 */
static int rl_load(const char *path, struct qb_config **out, char *err, size_t errlen)
{
    char terr[512];
    int rc = qb_config_load_file(path, out, err, errlen);

    if (rc < 0)
        return QB_ECONFIG;
    for (size_t i = 0; i < (*out)->n_transports; i++) {
        const struct qb_transport_config *tc = &(*out)->transports[i];

        if (qb_transport_validate(tc, terr, sizeof(terr)) < 0) {
            snprintf(err, errlen, "%s:%d:%d: transports[%zu]: %s", tc->file, tc->line, tc->column,
                     i, terr);
            qb_config_free(*out);
            *out = NULL;
            return QB_ECONFIG;
        }
    }
    return QB_OK;
}

static struct qb_transport *rl_find_running(const struct rl *x, const char *name, size_t *index)
{
    for (size_t i = 0; i < x->t->n_transports; i++) {
        if (strcmp(qb_transport_name(x->t->transports[i]), name) == 0) {
            if (index)
                *index = i;
            return x->t->transports[i];
        }
    }
    return NULL;
}

/* Subscribes t to the command channel when its config asks for it (as main does at start). */
static void rl_subscribe(struct rl *x, struct qb_transport *t, const struct qb_transport_config *tc)
{
    int rc;

    if (!x->t->router || !x->nc->commands.enabled || !tc->commands)
        return;
    rc = qb_transport_subscribe(t, qb_command_router_inbound, x->t->router);
    if (rc == QB_OK)
        QB_LOG_INFO(NULL, "reload: transport %s: receiving commands", qb_transport_name(t));
    else if (rc != QB_EINVAL)
        QB_LOG_ERR(NULL, "reload: transport %s: cannot receive commands: %s",
                   qb_transport_name(t), qb_strerror(rc));
}

/* Nothing may refer to t once it is closed: the router's and the manager's commands let go. */
static void rl_let_go(struct rl *x, struct qb_transport *t)
{
    qb_command_router_forget_transport(x->t->router, t);
    qb_vm_manager_forget_transport(x->t->mgr, t);
}

static struct qb_transport *rl_create(struct rl *x, const struct qb_transport_config *tc)
{
    struct qb_transport *t = NULL;
    char err[512];

    if (qb_transport_create(x->t->loop, tc, x->t->info, &t, err, sizeof(err)) < 0) {
        QB_LOG_ERR(NULL, "reload: %s", err);
        return NULL;
    }
    return t;
}

static void rl_replace(struct rl *x, struct qb_transport *old_t,
                       const struct qb_transport_config *tc)
{
    struct qb_transport *nt = rl_create(x, tc);
    uint64_t moved = 0;

    if (!nt) {
        QB_LOG_ERR(NULL, "reload: transport %s keeps running with its old settings",
                   tc_name(tc));
        x->next[x->n_next++] = old_t;
        x->tr_failed++;
        return;
    }
    rl_subscribe(x, nt, tc);
    qb_outbox_replace_transport(x->t->outbox, old_t, nt, &moved);
    rl_let_go(x, old_t);
    qb_transport_close_now(old_t, NULL, NULL);
    QB_LOG_INFO(NULL, "reload: transport %s (%s) restarted with its new settings; %llu queued "
                "messages %s", tc_name(tc), tc->type, (unsigned long long)moved,
                x->nc->spool_directory ? "left to the spool to resend" : "moved to it");
    x->next[x->n_next++] = nt;
    x->tr_restarted++;
}

static void rl_add(struct rl *x, const struct qb_transport_config *tc)
{
    struct qb_transport *nt;

    if (!(nt = rl_create(x, tc))) {
        x->tr_failed++;
        return;
    }
    if (qb_outbox_add_transport(x->t->outbox, nt) < 0) {
        QB_LOG_ERR(NULL, "reload: transport %s: out of memory", tc_name(tc));
        qb_transport_close_now(nt, NULL, NULL);
        x->tr_failed++;
        return;
    }
    rl_subscribe(x, nt, tc);
    QB_LOG_INFO(NULL, "reload: transport %s (%s) added%s", tc_name(tc), tc->type,
                x->nc->spool_directory ? "; it gets messages from now on" : "");
    x->next[x->n_next++] = nt;
    x->tr_added++;
}

/*
 * Builds the new transport set (x->next, in the new file's order): removed
 * ones close (with their bounded drain), changed ones are replaced, added ones
 * start. Returns QB_OK or QB_ENOMEM (nothing changed then).
 */
static int rl_transports(struct rl *x)
{
    const struct qb_reload_target *t = x->t;

    x->next = calloc(x->nc->n_transports + t->n_transports + 1, sizeof(*x->next));
    if (!x->next)
        return QB_ENOMEM;
    for (size_t i = 0; i < t->n_transports; i++) {
        struct qb_transport *rt = t->transports[i];
        size_t j;

        if (find_tc(x->nc, qb_transport_name(rt), &j))
            continue;
        qb_outbox_remove_transport(t->outbox, rt);
        rl_let_go(x, rt);
        QB_LOG_INFO(NULL, "reload: transport %s removed: closing it", qb_transport_name(rt));
        qb_transport_close(rt, NULL, NULL);
        x->tr_removed++;
    }
    for (size_t j = 0; j < x->nc->n_transports; j++) {
        const struct qb_transport_config *tc = &x->nc->transports[j];
        struct qb_transport *rt = rl_find_running(x, tc_name(tc), NULL);

        if (!rt) {
            rl_add(x, tc);
        } else if (qb_reload_transport_equal(qb_transport_config(rt), tc)) {
            x->next[x->n_next++] = rt; /* keeps borrowing its config from an older file */
            x->tr_kept++;
        } else {
            rl_replace(x, rt, tc);
        }
    }
    return QB_OK;
}

/* Static VMs: removed and changed ones go first, so a changed one can come back at once. */
static void rl_vms(struct rl *x, const struct qb_reload_diff *d)
{
    for (size_t i = 0; i < d->n_vms; i++) {
        const struct qb_reload_item *it = &d->vms[i];

        if (it->change == QB_RELOAD_REMOVED) {
            if (qb_vm_manager_remove(x->t->mgr, it->name, "removed by reload") == QB_OK)
                x->vm_removed++;
        } else if (it->change == QB_RELOAD_CHANGED) {
            QB_LOG_INFO(it->name, "reload: QMP address changed from %s to %s: reconnecting",
                        x->old->vms[it->old_index].qmp, x->nc->vms[it->new_index].qmp);
            qb_vm_manager_remove(x->t->mgr, it->name, "QMP address changed by reload");
        }
    }
    for (size_t i = 0; i < d->n_vms; i++) {
        const struct qb_reload_item *it = &d->vms[i];
        int rc;

        if (it->change != QB_RELOAD_ADDED && it->change != QB_RELOAD_CHANGED)
            continue;
        rc = qb_vm_manager_add(x->t->mgr, it->name, x->nc->vms[it->new_index].qmp);
        if (rc == QB_OK) {
            if (it->change == QB_RELOAD_ADDED)
                x->vm_added++;
            else
                x->vm_changed++;
            continue;
        }
        x->vm_failed++;
        QB_LOG_ERR(it->name, "reload: cannot add VM: %s%s", qb_strerror(rc),
                   rc == QB_EEXIST ? " (a discovered VM has that name)" : "");
    }
}

/* ---- discovery ---- */

/* Names of the VMs whose address is a socket under a directory (prefix "unix:<dir>/"). */
struct rl_under {
    const char *prefix;
    const struct qb_config *nc;
    char **names;
    size_t n, cap;
};

static void rl_collect_under(void *arg, const struct qb_vm_info *info)
{
    struct rl_under *u = arg;
    size_t j;
    char **grown;

    if (strncmp(info->address, u->prefix, strlen(u->prefix)) != 0 || find_vm(u->nc, info->name, &j))
        return;
    if (u->n == u->cap) {
        u->cap = u->cap ? u->cap * 2 : 8;
        if (!(grown = realloc(u->names, u->cap * sizeof(*grown))))
            return;
        u->names = grown;
    }
    if ((u->names[u->n] = strdup(info->name)))
        u->n++;
}

/*
 * Stops the old watch, removes the VMs it had found (sockets under the old
 * directory that no static entry names), and starts watching the new one.
 */
static void rl_discovery(struct rl *x, struct qb_discovery **discovery)
{
    const struct qb_reload_target *t = x->t;
    static const struct qb_discovery_callbacks dcb = {
        .on_add = qb_vm_manager_discovered,
        .on_remove = qb_vm_manager_undiscovered,
    };
    char err[512];

    if (*discovery) {
        qb_discovery_stop(*discovery);
        *discovery = NULL;
    }
    if (x->old->discovery_directory) {
        struct rl_under u = {.nc = x->nc};
        char *prefix = NULL;

        if (asprintf(&prefix, "unix:%s/", x->old->discovery_directory) >= 0) {
            u.prefix = prefix;
            qb_vm_manager_foreach(t->mgr, rl_collect_under, &u);
            for (size_t i = 0; i < u.n; i++) {
                qb_vm_manager_remove(t->mgr, u.names[i], "discovery changed by reload");
                free(u.names[i]);
            }
            free(u.names);
            free(prefix);
        }
        QB_LOG_INFO(NULL, "reload: stopped watching %s", x->old->discovery_directory);
    }
    if (!x->nc->discovery_directory)
        return;
    if (qb_discovery_start(t->loop, x->nc->discovery_directory, x->nc->discovery_suffix, &dcb,
                           t->mgr, discovery, err, sizeof(err)) < 0)
        QB_LOG_ERR(NULL, "reload: discovery not restarted: %s", err);
    else
        QB_LOG_INFO(NULL, "reload: watching %s for VM sockets", x->nc->discovery_directory);
}

/* qb_reload_run without the bookkeeping of its outcome. */
static int reload_apply(const struct qb_reload_target *t, struct qb_reload_result *out,
                        char *status, size_t statuslen)
{
    struct rl x = {.t = t, .old = t->cfg};
    struct qb_discovery *discovery = t->discovery;
    struct qb_reload_diff d;
    char err[1024], kept[256];
    const char *path = x.old->path;
    int nkept;

    if (rl_load(path, &x.nc, err, sizeof(err)) < 0) {
        QB_LOG_ERR(NULL, "reload: %s; keeping the running configuration", err);
        snprintf(status, statuslen, "reload failed, running configuration kept: %s", err);
        return QB_ECONFIG;
    }
    nkept = qb_reload_keep_fixed(x.old, x.nc, kept, sizeof(kept));
    if (nkept < 0 || qb_reload_diff(x.old, x.nc, &d) < 0) {
        qb_config_free(x.nc);
        QB_LOG_ERR(NULL, "reload: out of memory; keeping the running configuration");
        snprintf(status, statuslen, "reload failed (out of memory), running configuration kept");
        return QB_ENOMEM;
    }
    if (rl_transports(&x) < 0) {
        qb_reload_diff_free(&d);
        qb_config_free(x.nc);
        QB_LOG_ERR(NULL, "reload: out of memory; keeping the running configuration");
        snprintf(status, statuslen, "reload failed (out of memory), running configuration kept");
        return QB_ENOMEM;
    }

    /* from here on everything reads the new file */
    if (x.nc->log_level != x.old->log_level)
        QB_LOG_WARN(NULL, "reload: log level %s -> %s", qb_log_level_name(x.old->log_level),
                    qb_log_level_name(x.nc->log_level));
    qb_log_set_level(x.nc->log_level);
    if (x.nc->log_format != x.old->log_format) {
        qb_log_set_format(x.nc->log_format);
        QB_LOG_WARN(NULL, "reload: log format %s -> %s (%s)", qb_log_format_name(x.old->log_format),
                    qb_log_format_name(x.nc->log_format), qb_log_format_name(qb_log_get_format()));
    }
    qb_vm_manager_set_config(t->mgr, x.nc);
    qb_outbox_set_config(t->outbox, x.nc);
    qb_command_router_set_config(t->router, x.nc);

    rl_vms(&x, &d);
    if (d.discovery_changed)
        rl_discovery(&x, &discovery);

    QB_LOG_INFO(NULL, "reload: %s in force: VMs +%u -%u ~%u%s; transports %u kept, %u "
                "restarted, %u added, %u removed%s%s%s", path, x.vm_added, x.vm_removed,
                x.vm_changed, x.vm_failed ? " (some failed)" : "", x.tr_kept, x.tr_restarted,
                x.tr_added, x.tr_removed, x.tr_failed ? " (some failed, see above)" : "",
                nkept ? "; needs a restart for: " : "", nkept ? kept : "");
    snprintf(status, statuslen, "reloaded %s: VMs +%u -%u ~%u, transports %u restarted +%u -%u%s%s%s",
             path, x.vm_added, x.vm_removed, x.vm_changed, x.tr_restarted, x.tr_added,
             x.tr_removed, x.tr_failed || x.vm_failed ? ", some changes failed (see log)" : "",
             nkept ? "; restart needed for " : "", nkept ? kept : "");
    *out = (struct qb_reload_result){
        .cfg = x.nc,
        .transports = x.next,
        .n_transports = x.n_next,
        .discovery = discovery,
    };
    qb_reload_diff_free(&d);
    return QB_OK;
}

static uint64_t wall_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void qb_reload_outcome_init(struct qb_reload_outcome *o)
{
    o->successful = true;
    o->success_usec = wall_usec();
}

int qb_reload_run(const struct qb_reload_target *t, struct qb_reload_result *out, char *status,
                  size_t statuslen)
{
    int rc;

    memset(out, 0, sizeof(*out));
    rc = reload_apply(t, out, status, statuslen);

    if (t->outcome) {
        t->outcome->successful = rc == QB_OK;
        if (rc == QB_OK)
            t->outcome->success_usec = wall_usec();
    }
    return rc;
}
