/*
 * bridge.c - the owner of the running bridge (see bridge.h for the start-up
 * and shutdown orders).
 *
 * Every running object is a field of struct qb_bridge and only this file
 * writes those fields. The parts that need to see them get what they need
 * without holding on to the bridge: the status API asks a view callback at
 * each request (status_api.h), a reload is lent the running objects and hands
 * back what is in force afterwards (reload.h), which is installed here.
 */
#include "bridge.h"

#include "command_router.h"
#include "config_warnings.h"
#include "discovery.h"
#include "error.h"
#include "log.h"
#include "outbox.h"
#include "qmp_listener.h"
#include "reload.h"
#include "service_notify.h"
#include "spool.h"
#include "status_api.h"
#include "transport.h"
#include "vm_manager.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A configuration replaced by a reload: what kept running still borrows from it. */
struct retired_config {
    struct retired_config *next;
    struct qb_config *cfg;
};

struct qb_bridge {
    uv_loop_t *loop;
    bool own_loop; /* libuv's default loop, closed by qb_bridge_run */
    struct qb_config *cfg;
    struct retired_config *retired; /* newest first, freed with the bridge */
    struct qb_bridge_info info;     /* borrowed by every transport */
    struct qb_transport **transports;
    size_t n_transports;
    size_t transports_open; /* while closing: those whose close has not completed */
    struct qb_spool *spool;
    struct qb_outbox *outbox;
    struct qb_vm_manager *mgr;
    struct qb_discovery *discovery;
    struct qb_qmp_listener *listener; /* qmp.listen: QEMUs connect to us; NULL when off */
    struct qb_command_router *router; /* NULL when commands are disabled */
    struct qb_status_api *status;
    struct qb_service_watchdog *watchdog; /* NULL when systemd runs no watchdog */
    uv_signal_t sig_int, sig_term, sig_hup;
    bool shutting_down;
    struct qb_reload_outcome reload_outcome; /* for the status API's reload metrics */
};

/* ---- shutdown ----------------------------------------------------------- */

static void bridge_close_signals(struct qb_bridge *b)
{
    uv_close((uv_handle_t *)&b->sig_int, NULL);
    uv_close((uv_handle_t *)&b->sig_term, NULL);
    uv_close((uv_handle_t *)&b->sig_hup, NULL);
}

/* Last step: the transports are done, so the outbox's cursors are final; checkpoint them. */
static void bridge_close_outbox(struct qb_bridge *b)
{
    qb_outbox_close(b->outbox);
    b->outbox = NULL;
    if (b->spool) {
        struct qb_spool_stats st;

        qb_spool_get_stats(b->spool, &st);
        if (st.records)
            QB_LOG_INFO(NULL, "spool keeps %llu undelivered records for the next start",
                        (unsigned long long)st.records);
        qb_spool_close(b->spool);
        b->spool = NULL;
    }
    QB_LOG_INFO(NULL, "shutdown complete");
    bridge_close_signals(b);
}

static void bridge_transport_closed(void *arg)
{
    struct qb_bridge *b = arg;

    if (--b->transports_open == 0)
        bridge_close_outbox(b);
}

static void bridge_manager_closed(void *arg)
{
    struct qb_bridge *b = arg;

    b->mgr = NULL;
    b->transports_open = b->n_transports;
    if (b->n_transports == 0) {
        bridge_close_outbox(b);
        return;
    }
    for (size_t i = 0; i < b->n_transports; i++)
        qb_transport_close(b->transports[i], bridge_transport_closed, b);
}

void qb_bridge_close(struct qb_bridge *b, const char *why)
{
    if (b->shutting_down)
        return;
    b->shutting_down = true;
    QB_LOG_INFO(NULL, "%s: shutting down", why);
    /* No new QEMU sessions while the others close; QEMUs reconnect to the next bridge. */
    qb_qmp_listener_close(b->listener);
    b->listener = NULL;
    /* From here systemd's TimeoutStopSec= bounds us, not the watchdog. */
    qb_service_notify_stopping();
    qb_service_watchdog_close(b->watchdog);
    b->watchdog = NULL;
    /* the objects it reads are about to go away one by one */
    qb_status_api_close(b->status, NULL, NULL);
    b->status = NULL;
    qb_command_router_stop(b->router);
    qb_discovery_stop(b->discovery);
    b->discovery = NULL;
    if (b->mgr)
        qb_vm_manager_close(b->mgr, bridge_manager_closed, b);
    else
        bridge_manager_closed(b);
}

/* ---- reload --------------------------------------------------------------- */

/* Keeps a replaced config until the bridge is freed. */
static void bridge_retire(struct qb_bridge *b, struct qb_config *cfg)
{
    struct retired_config *r = malloc(sizeof(*r));

    if (!r) {
        /* better a leak than a use after free: the config stays reachable nowhere */
        QB_LOG_ERR(NULL, "reload: out of memory keeping the old configuration: leaked");
        return;
    }
    r->cfg = cfg;
    r->next = b->retired;
    b->retired = r;
}

int qb_bridge_reload(struct qb_bridge *b)
{
    struct qb_reload_target t;
    struct qb_reload_result res;
    char status[512];
    int rc;

    if (b->shutting_down || !b->mgr || !b->outbox) {
        QB_LOG_WARN(NULL, "SIGHUP ignored: the bridge is %s",
                    b->shutting_down ? "shutting down" : "still starting");
        return QB_EAGAIN;
    }
    t = (struct qb_reload_target){
        .loop = b->loop,
        .cfg = b->cfg,
        .info = &b->info,
        .transports = b->transports,
        .n_transports = b->n_transports,
        .outbox = b->outbox,
        .mgr = b->mgr,
        .router = b->router,
        .discovery = b->discovery,
        .outcome = &b->reload_outcome,
    };
    qb_service_notify_reloading();
    QB_LOG_INFO(NULL, "SIGHUP: reloading %s", b->cfg->path);
    rc = qb_reload_run(&t, &res, status, sizeof(status));
    if (rc == QB_OK) {
        bridge_retire(b, b->cfg);
        b->cfg = res.cfg;
        free(b->transports);
        b->transports = res.transports;
        b->n_transports = res.n_transports;
        b->discovery = res.discovery;
    }
    qb_service_notify_ready(status);
    return rc;
}

static void bridge_on_signal(uv_signal_t *h, int signum)
{
    struct qb_bridge *b = h->data;
    const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";

    if (signum == SIGHUP) {
        qb_bridge_reload(b);
        return;
    }
    if (b->shutting_down) {
        QB_LOG_WARN(NULL, "%s again: exiting without waiting for queues to drain", name);
        exit(1);
    }
    qb_bridge_close(b, name);
}

/* ---- start-up ------------------------------------------------------------- */

/* Watchdog health: pings stop (and systemd restarts us) when this says false. */
static bool bridge_healthy(void *arg)
{
    struct qb_bridge *b = arg;

    return !b->shutting_down;
}

/* What the status API reads at each request: the objects running right now. */
static void bridge_status_view(void *arg, struct qb_status_view *v)
{
    const struct qb_bridge *b = arg;

    *v = (struct qb_status_view){
        .cfg = b->cfg,
        .mgr = b->mgr,
        .transports = b->transports,
        .n_transports = b->n_transports,
        .outbox = b->outbox,
        .spool = b->spool,
        .router = b->router,
        .shutting_down = b->shutting_down,
        .reload = &b->reload_outcome,
    };
}

/* Starts the HTTP status API when metrics.listen is set. Returns QB_OK or the failure (logged). */
static int bridge_start_status(struct qb_bridge *b)
{
    char err[512];
    int rc;

    if (!b->cfg->metrics_listen)
        return QB_OK;
    rc = qb_status_api_start(b->loop, b->cfg->metrics_listen, bridge_status_view, b, &b->status,
                             err, sizeof(err));
    if (rc < 0)
        QB_LOG_ERR(NULL, "cannot start the status API: %s", err);
    else
        QB_LOG_INFO(NULL, "status API on %s (/metrics, /healthz, /readyz, /vms)",
                    b->cfg->metrics_listen);
    return rc;
}

/* Listen mode: a QEMU connected to qmp.listen; the manager names it and takes fd. */
static void bridge_listen_accepted(void *arg, int fd, pid_t pid, uid_t uid)
{
    struct qb_bridge *b = arg;

    qb_vm_manager_adopt(b->mgr, fd, pid, uid);
}

/* The manager's bound on unnamed connections (qmp.max_connecting) drives accepting. */
static void bridge_listen_room(void *arg, bool room)
{
    struct qb_bridge *b = arg;

    if (b->listener && room)
        qb_qmp_listener_resume(b->listener);
    else if (b->listener)
        qb_qmp_listener_pause(b->listener);
}

/* Starts listening on qmp.listen when it is set. Returns QB_OK or the failure (logged). */
static int bridge_start_listen(struct qb_bridge *b)
{
    char err[512];
    int rc;

    if (!b->cfg->qmp_listen)
        return QB_OK;
    rc = qb_qmp_listener_start(b->loop, b->cfg->qmp_listen, bridge_listen_accepted, b, &b->listener,
                               err, sizeof(err));
    if (rc < 0) {
        QB_LOG_ERR(NULL, "cannot start listen mode: %s", err);
        return rc;
    }
    qb_vm_manager_set_room_cb(b->mgr, bridge_listen_room, b);
    QB_LOG_INFO(NULL, "listen mode: QEMUs connect to %s", b->cfg->qmp_listen);
    return QB_OK;
}

static void bridge_start_signals(struct qb_bridge *b)
{
    uv_signal_t *handles[] = {&b->sig_int, &b->sig_term, &b->sig_hup};
    int signums[] = {SIGINT, SIGTERM, SIGHUP};

    for (int i = 0; i < 3; i++) {
        uv_signal_init(b->loop, handles[i]);
        handles[i]->data = b;
        uv_signal_start(handles[i], bridge_on_signal, signums[i]);
    }
}

/* Creates every configured transport. Returns QB_OK or the first failure (logged). */
static int bridge_start_transports(struct qb_bridge *b)
{
    char err[512];

    b->info.id = b->cfg->bridge_id;
    b->transports = calloc(b->cfg->n_transports ? b->cfg->n_transports : 1, sizeof(*b->transports));
    if (!b->transports)
        return QB_ENOMEM;
    for (size_t i = 0; i < b->cfg->n_transports; i++) {
        int rc = qb_transport_create(b->loop, &b->cfg->transports[i], &b->info, &b->transports[i],
                                     err, sizeof(err));
        if (rc < 0) {
            QB_LOG_ERR(NULL, "%s", err);
            return rc;
        }
        b->n_transports++;
        QB_LOG_INFO(NULL, "transport %s (%s) started", qb_transport_name(b->transports[i]),
                    b->cfg->transports[i].type);
    }
    return QB_OK;
}

/*
 * Opens the spool when one is configured, then the outbox over the
 * transports. Returns QB_OK or the failure (logged with the path).
 */
static int bridge_start_outbox(struct qb_bridge *b)
{
    const struct qb_config *cfg = b->cfg;
    char err[512];
    int rc;

    if (cfg->spool_directory) {
        struct qb_spool_options opt = {
            .dir = cfg->spool_directory,
            .max_bytes = cfg->spool_max_bytes,
            .segment_bytes = cfg->spool_segment_bytes,
            .fsync = cfg->spool_fsync,
            .fsync_interval_ms = cfg->spool_fsync_interval_ms,
        };
        struct qb_spool_stats st;

        rc = qb_spool_open(b->loop, &opt, &b->spool, err, sizeof(err));
        if (rc < 0) {
            QB_LOG_ERR(NULL, "cannot open the spool: %s", err);
            return rc;
        }
        qb_spool_get_stats(b->spool, &st);
        QB_LOG_INFO(NULL,
                    "spool %s: %llu records (%llu bytes) from earlier runs, %llu corrupt "
                    "records skipped",
                    cfg->spool_directory, (unsigned long long)st.records,
                    (unsigned long long)st.bytes, (unsigned long long)st.corrupt);
    }
    rc = qb_outbox_new(b->loop, cfg, b->transports, b->n_transports, b->spool, &b->outbox);
    if (rc < 0)
        QB_LOG_ERR(NULL, "cannot create the outbox: %s", qb_strerror(rc));
    return rc;
}

/* The VM manager and the static VMs. Returns QB_OK or the first failure (logged). */
static int bridge_start_vms(struct qb_bridge *b)
{
    int rc = qb_vm_manager_new(b->loop, b->cfg, b->outbox, &b->mgr);

    for (size_t i = 0; rc == QB_OK && i < b->cfg->n_vms; i++) {
        rc = qb_vm_manager_add(b->mgr, b->cfg->vms[i].name, b->cfg->vms[i].qmp);
        if (rc < 0)
            QB_LOG_ERR(b->cfg->vms[i].name, "cannot add VM: %s", qb_strerror(rc));
    }
    return rc;
}

/*
 * Starts the command channel on every transport that should receive commands
 * and can. Returns QB_OK or the first failure (logged).
 */
static int bridge_start_commands(struct qb_bridge *b)
{
    size_t listening = 0;
    int rc;

    if (!b->cfg->commands.enabled)
        return QB_OK;
    rc = qb_command_router_new(b->cfg, b->mgr, &b->router);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < b->n_transports; i++) {
        if (!b->cfg->transports[i].commands)
            continue;
        rc = qb_transport_subscribe(b->transports[i], qb_command_router_inbound, b->router);
        if (rc == QB_EINVAL)
            continue; /* a stream-only transport such as stdout cannot receive */
        if (rc < 0) {
            QB_LOG_ERR(NULL, "transport %s: cannot receive commands: %s",
                       qb_transport_name(b->transports[i]), qb_strerror(rc));
            return rc;
        }
        listening++;
        QB_LOG_INFO(NULL, "transport %s: receiving commands", qb_transport_name(b->transports[i]));
    }
    if (listening == 0)
        QB_LOG_WARN(NULL, "commands are enabled but no transport can receive them");
    return QB_OK;
}

/* Watches discovery.directory when it is set. Returns QB_OK or the failure (logged). */
static int bridge_start_discovery(struct qb_bridge *b)
{
    static const struct qb_discovery_callbacks dcb = {
        .on_add = qb_vm_manager_discovered,
        .on_remove = qb_vm_manager_undiscovered,
    };
    char err[1024];
    int rc;

    if (!b->cfg->discovery_directory)
        return QB_OK;
    rc = qb_discovery_start(b->loop, b->cfg->discovery_directory, b->cfg->discovery_suffix, &dcb,
                            b->mgr, &b->discovery, err, sizeof(err));
    if (rc < 0)
        QB_LOG_ERR(NULL, "%s", err);
    return rc;
}

/* Tells systemd we are ready and starts its watchdog. Returns QB_OK or the failure. */
static int bridge_start_service(struct qb_bridge *b)
{
    char ready[160];

    snprintf(ready, sizeof(ready), "bridge %s: %zu VMs configured, %zu transports%s%s",
             b->cfg->bridge_id, b->cfg->n_vms, b->n_transports,
             b->discovery ? ", discovery on" : "", b->spool ? ", spool on" : "");
    qb_service_notify_ready(ready);
    return qb_service_watchdog_start(b->loop, bridge_healthy, b, &b->watchdog);
}

static void bridge_warn_log(void *arg, const char *line)
{
    (void)arg;
    QB_LOG_WARN(NULL, "%s", line);
}

/* ---- the object ------------------------------------------------------------ */

int qb_bridge_new(uv_loop_t *loop, struct qb_config *cfg, struct qb_bridge **out)
{
    struct qb_bridge *b = calloc(1, sizeof(*b));

    *out = NULL;
    if (!b) {
        qb_config_free(cfg);
        return QB_ENOMEM;
    }
    b->own_loop = loop == NULL;
    b->loop = loop ? loop : uv_default_loop();
    b->cfg = cfg;
    qb_reload_outcome_init(&b->reload_outcome);
    *out = b;
    return QB_OK;
}

int qb_bridge_run(struct qb_bridge *b)
{
    static int (*const steps[])(struct qb_bridge *) = {
        bridge_start_transports, bridge_start_outbox, bridge_start_vms,    bridge_start_commands,
        bridge_start_discovery,  bridge_start_listen, bridge_start_status, bridge_start_service,
    };
    const struct qb_config *cfg = b->cfg;
    int rc = QB_OK, lrc;

    qb_log_set_level(cfg->log_level);
    qb_log_set_format(cfg->log_format);
    /* a peer that goes away must be an error on its socket, not the end of the process */
    signal(SIGPIPE, SIG_IGN);
    QB_LOG_INFO(NULL, "qmp-bridge %s starting: bridge %s, config %s with %zu drop-ins", QB_VERSION,
                cfg->bridge_id, cfg->path, cfg->n_files - 1);
    for (size_t i = 1; i < cfg->n_files; i++)
        QB_LOG_INFO(NULL, "drop-in %s", cfg->files[i]);
    qb_config_warnings(cfg, bridge_warn_log, NULL);

    bridge_start_signals(b);
    for (size_t i = 0; rc == QB_OK && i < sizeof(steps) / sizeof(steps[0]); i++)
        rc = steps[i](b);
    if (rc < 0)
        qb_bridge_close(b, "start-up failed");

    uv_run(b->loop, UV_RUN_DEFAULT);
    if (b->own_loop) {
        lrc = uv_loop_close(b->loop);
        if (lrc < 0)
            QB_LOG_WARN(NULL, "loop closed with handles still open: %s", uv_strerror(lrc));
    }
    return rc;
}

void qb_bridge_free(struct qb_bridge *b)
{
    if (!b)
        return;
    qb_command_router_free(b->router);
    free(b->transports);
    qb_config_free(b->cfg);
    while (b->retired) {
        struct retired_config *r = b->retired;

        b->retired = r->next;
        qb_config_free(r->cfg);
        free(r);
    }
    free(b);
}
