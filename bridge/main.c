/*
 * main.c - arguments, config load, signals, the loop, orderly shutdown.
 *
 * Shutdown order matters for "nothing lost": first stop finding VMs, then
 * close every VM session (each connected VM publishes bridge.vm.disconnected),
 * then close the transports, which flush their queues with a bounded wait and
 * say how much stayed undelivered. A second SIGINT/SIGTERM exits at once.
 *
 * Exit codes: 0 clean shutdown or valid config, 1 configuration error,
 * 2 usage error, 3 start-up failure (a transport or discovery could not start).
 */
#include "command_router.h"
#include "config.h"
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
#include "status_client.h"
#include "transport.h"
#include "vm_manager.h"

#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define QB_DEFAULT_CONFIG "/etc/qmp-bridge/qmp-bridge.yaml"

struct qb_main {
    uv_loop_t *loop;
    struct qb_config *cfg;
    struct qb_transport **transports;
    size_t n_transports;
    size_t transports_open;
    struct qb_spool *spool;
    struct qb_outbox *outbox;
    struct qb_vm_manager *mgr;
    struct qb_discovery *discovery;
    struct qb_qmp_listener *listener; /* qmp.listen: QEMUs connect to us; NULL when off */
    struct qb_command_router *router;
    struct qb_status_api *status;
    struct qb_service_watchdog *watchdog; /* NULL when systemd runs no watchdog */
    uv_signal_t sig_int, sig_term, sig_hup;
    bool shutting_down;
    size_t transports_cap; /* room in transports (set at the first SIGHUP; reload.c may grow it) */
    struct qb_reload_outcome reload_outcome; /* for the status API's reload metrics */
};

static void usage(FILE *f)
{
    fprintf(f, "Usage: qmp-bridge [-c FILE] [--check-config | --status]\n"
               "       qmp-bridge --version | --help\n"
               "\n"
               "Keeps a QMP session to each QEMU VM of this host and publishes their events\n"
               "as CloudEvents to MQTT, Kafka or stdout.\n"
               "\n"
               "  -c, --config FILE   configuration file (default " QB_DEFAULT_CONFIG ");\n"
               "                      its drop-ins (conf.d/*.yaml beside qmp-bridge.yaml,\n"
               "                      NAME.d/*.yaml beside NAME.yaml) are merged over it\n"
               "      --check-config  load and validate the configuration and its drop-ins,\n"
               "                      list the drop-ins, then exit (0 valid, 1 invalid)\n"
               "      --status        ask the running daemon (at metrics.listen of FILE) for\n"
               "                      its readiness and VMs and print them (0 ready,\n"
               "                      1 not ready, 3 unreachable or metrics.listen not set)\n"
               "  -V, --version       print the version and exit\n"
               "  -h, --help          print this help and exit\n");
}

static void main_close_signals(struct qb_main *q)
{
    uv_close((uv_handle_t *)&q->sig_int, NULL);
    uv_close((uv_handle_t *)&q->sig_term, NULL);
    uv_close((uv_handle_t *)&q->sig_hup, NULL);
}

/* Last step: the transports are done, so the outbox's cursors are final; checkpoint them. */
static void main_close_outbox(struct qb_main *q)
{
    qb_outbox_close(q->outbox);
    q->outbox = NULL;
    if (q->spool) {
        struct qb_spool_stats st;

        qb_spool_get_stats(q->spool, &st);
        if (st.records)
            QB_LOG_INFO(NULL, "spool keeps %llu undelivered records for the next start",
                        (unsigned long long)st.records);
        qb_spool_close(q->spool);
        q->spool = NULL;
    }
    QB_LOG_INFO(NULL, "shutdown complete");
    main_close_signals(q);
}

static void main_transport_closed(void *arg)
{
    struct qb_main *q = arg;

    if (--q->transports_open == 0)
        main_close_outbox(q);
}

static void main_manager_closed(void *arg)
{
    struct qb_main *q = arg;

    q->mgr = NULL;
    q->transports_open = q->n_transports;
    if (q->n_transports == 0) {
        main_close_outbox(q);
        return;
    }
    for (size_t i = 0; i < q->n_transports; i++)
        qb_transport_close(q->transports[i], main_transport_closed, q);
}

static void main_shutdown(struct qb_main *q, const char *why)
{
    if (q->shutting_down) {
        QB_LOG_WARN(NULL, "%s again: exiting without waiting for queues to drain", why);
        exit(1);
    }
    q->shutting_down = true;
    QB_LOG_INFO(NULL, "%s: shutting down", why);
    /* No new QEMU sessions while the others close; QEMUs reconnect to the next bridge. */
    qb_qmp_listener_close(q->listener);
    q->listener = NULL;
    /* From here systemd's TimeoutStopSec= bounds us, not the watchdog. */
    qb_service_notify_stopping();
    qb_service_watchdog_close(q->watchdog);
    q->watchdog = NULL;
    /* the objects it reads are about to go away one by one */
    qb_status_api_close(q->status, NULL, NULL);
    q->status = NULL;
    qb_command_router_stop(q->router);
    qb_discovery_stop(q->discovery);
    q->discovery = NULL;
    if (q->mgr)
        qb_vm_manager_close(q->mgr, main_manager_closed, q);
    else
        main_manager_closed(q);
}


/*
 * SIGHUP: re-reads the configuration file and applies what changed
 * (reload.c). systemd hears RELOADING=1 first, then READY=1 with a status
 * saying what happened, also when the file was invalid and nothing changed.
 */
static void main_reload(struct qb_main *q)
{
    struct qb_reload_target t;
    char status[512];

    if (q->shutting_down || !q->mgr || !q->outbox) {
        QB_LOG_WARN(NULL, "SIGHUP ignored: the bridge is %s",
                    q->shutting_down ? "shutting down" : "still starting");
        return;
    }
    if (!q->transports_cap) /* before the first reload: what main_start_transports allocated */
        q->transports_cap = q->n_transports ? q->n_transports : 1;
    t = (struct qb_reload_target){
        .loop = q->loop,
        .cfg = &q->cfg,
        .transports = &q->transports,
        .n_transports = &q->n_transports,
        .transports_cap = &q->transports_cap,
        .transports_pinned = false, /* the status API reads q->transports through a pointer */
        .outbox = q->outbox,
        .mgr = q->mgr,
        .router = q->router,
        .discovery = &q->discovery,
        .outcome = &q->reload_outcome,
    };
    qb_service_notify_reloading();
    QB_LOG_INFO(NULL, "SIGHUP: reloading %s", q->cfg->path);
    qb_reload_run(&t, status, sizeof(status));
    qb_service_notify_ready(status);
}

static void main_on_signal(uv_signal_t *h, int signum)
{
    struct qb_main *q = h->data;

    if (signum == SIGHUP) {
        main_reload(q);
        return;
    }
    main_shutdown(q, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* Watchdog health: pings stop (and systemd restarts us) when this says false. */
static bool main_healthy(void *arg)
{
    struct qb_main *q = arg;

    return !q->shutting_down;
}

/* Starts the HTTP status API when metrics.listen is set. Returns QB_OK or the failure (logged). */
static int main_start_status(struct qb_main *q)
{
    static struct qb_status_sources src;
    char err[512];
    int rc;

    if (!q->cfg->metrics_listen)
        return QB_OK;
    src = (struct qb_status_sources){
        .cfg = q->cfg,
        .mgr = &q->mgr,
        .transports = &q->transports,
        .n_transports = &q->n_transports,
        .outbox = &q->outbox,
        .spool = &q->spool,
        .router = &q->router,
        .shutting_down = &q->shutting_down,
        .reload = &q->reload_outcome,
    };
    rc = qb_status_api_start(q->loop, q->cfg->metrics_listen, &src, &q->status, err, sizeof(err));
    if (rc < 0)
        QB_LOG_ERR(NULL, "cannot start the status API: %s", err);
    else
        QB_LOG_INFO(NULL, "status API on %s (/metrics, /healthz, /readyz, /vms)",
                    q->cfg->metrics_listen);
    return rc;
}

/* Listen mode: a QEMU connected to qmp.listen; the manager names it and takes fd. */
static void main_listen_accepted(void *arg, int fd, pid_t pid, uid_t uid)
{
    struct qb_main *q = arg;

    qb_vm_manager_adopt(q->mgr, fd, pid, uid);
}

/* The manager's bound on unnamed connections (qmp.max_connecting) drives accepting. */
static void main_listen_room(void *arg, bool room)
{
    struct qb_main *q = arg;

    if (q->listener && room)
        qb_qmp_listener_resume(q->listener);
    else if (q->listener)
        qb_qmp_listener_pause(q->listener);
}

/* Starts listening on qmp.listen when it is set. Returns QB_OK or the failure (logged). */
static int main_start_listen(struct qb_main *q)
{
    char err[512];
    int rc;

    if (!q->cfg->qmp_listen)
        return QB_OK;
    rc = qb_qmp_listener_start(q->loop, q->cfg->qmp_listen, main_listen_accepted, q, &q->listener,
                               err, sizeof(err));
    if (rc < 0) {
        QB_LOG_ERR(NULL, "cannot start listen mode: %s", err);
        return rc;
    }
    qb_vm_manager_set_room_cb(q->mgr, main_listen_room, q);
    QB_LOG_INFO(NULL, "listen mode: QEMUs connect to %s", q->cfg->qmp_listen);
    return QB_OK;
}

static int main_start_signals(struct qb_main *q)
{
    uv_signal_t *handles[] = {&q->sig_int, &q->sig_term, &q->sig_hup};
    int signums[] = {SIGINT, SIGTERM, SIGHUP};

    for (int i = 0; i < 3; i++) {
        uv_signal_init(q->loop, handles[i]);
        handles[i]->data = q;
        uv_signal_start(handles[i], main_on_signal, signums[i]);
    }
    return QB_OK;
}

/* Creates every configured transport. Returns QB_OK or the first failure (logged). */
static int main_start_transports(struct qb_main *q)
{
    static struct qb_bridge_info info;
    char err[512];

    info.id = q->cfg->bridge_id;
    q->transports = calloc(q->cfg->n_transports ? q->cfg->n_transports : 1,
                           sizeof(*q->transports));
    if (!q->transports)
        return QB_ENOMEM;
    for (size_t i = 0; i < q->cfg->n_transports; i++) {
        int rc = qb_transport_create(q->loop, &q->cfg->transports[i], &info, &q->transports[i],
                                     err, sizeof(err));
        if (rc < 0) {
            QB_LOG_ERR(NULL, "%s", err);
            return rc;
        }
        q->n_transports++;
        QB_LOG_INFO(NULL, "transport %s (%s) started", qb_transport_name(q->transports[i]),
                    q->cfg->transports[i].type);
    }
    return QB_OK;
}

/*
 * Opens the spool when one is configured, then the outbox over the
 * transports. Returns QB_OK or the failure (logged with the path).
 */
static int main_start_outbox(struct qb_main *q)
{
    const struct qb_config *cfg = q->cfg;
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

        rc = qb_spool_open(q->loop, &opt, &q->spool, err, sizeof(err));
        if (rc < 0) {
            QB_LOG_ERR(NULL, "cannot open the spool: %s", err);
            return rc;
        }
        qb_spool_get_stats(q->spool, &st);
        QB_LOG_INFO(NULL, "spool %s: %llu records (%llu bytes) from earlier runs, %llu corrupt "
                    "records skipped", cfg->spool_directory, (unsigned long long)st.records,
                    (unsigned long long)st.bytes, (unsigned long long)st.corrupt);
    }
    rc = qb_outbox_new(q->loop, cfg, q->transports, q->n_transports, q->spool, &q->outbox);
    if (rc < 0)
        QB_LOG_ERR(NULL, "cannot create the outbox: %s", qb_strerror(rc));
    return rc;
}

/*
 * Starts the command channel on every transport that should receive commands
 * and can. Returns QB_OK or the first failure (logged).
 */
static int main_start_commands(struct qb_main *q)
{
    size_t listening = 0;
    int rc;

    if (!q->cfg->commands.enabled)
        return QB_OK;
    rc = qb_command_router_new(q->cfg, q->mgr, &q->router);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < q->n_transports; i++) {
        if (!q->cfg->transports[i].commands)
            continue;
        rc = qb_transport_subscribe(q->transports[i], qb_command_router_inbound, q->router);
        if (rc == QB_EINVAL)
            continue; /* a stream-only transport such as stdout cannot receive */
        if (rc < 0) {
            QB_LOG_ERR(NULL, "transport %s: cannot receive commands: %s",
                       qb_transport_name(q->transports[i]), qb_strerror(rc));
            return rc;
        }
        listening++;
        QB_LOG_INFO(NULL, "transport %s: receiving commands", qb_transport_name(q->transports[i]));
    }
    if (listening == 0)
        QB_LOG_WARN(NULL, "commands are enabled but no transport can receive them");
    return QB_OK;
}

/* Validates what the loader cannot: each transport's own settings. Returns QB_OK or QB_ECONFIG. */
/*
 * Reports a configuration error: "qmp-bridge: <error>" on a terminal; where stderr is
 * the journal (the service, and its ExecReload check) an entry of error priority, so
 * that `journalctl -p warning` says why the service did not start or reload.
 */
static void main_config_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void main_config_error(const char *fmt, ...)
{
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!qb_log_stderr_is_journal()) {
        fprintf(stderr, "qmp-bridge: %s\n", msg);
        return;
    }
    qb_log_set_format(QB_LOG_FORMAT_JOURNAL);
    QB_LOG_ERR(NULL, "%s", msg);
}

static int main_check_transports(const struct qb_config *cfg)
{
    char err[512];

    for (size_t i = 0; i < cfg->n_transports; i++) {
        if (qb_transport_validate(&cfg->transports[i], err, sizeof(err)) < 0) {
            main_config_error("%s:%d:%d: transports[%zu]: %s", cfg->transports[i].file,
                              cfg->transports[i].line, cfg->transports[i].column, i, err);
            return QB_ECONFIG;
        }
    }
    return QB_OK;
}

static void main_warn_check(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "qmp-bridge: warning: %s\n", line);
}

static void main_warn_log(void *arg, const char *line)
{
    (void)arg;
    QB_LOG_WARN(NULL, "%s", line);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'C'},
        {"status", no_argument, NULL, 'S'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = QB_DEFAULT_CONFIG;
    bool check_only = false, status_only = false;
    struct qb_main q = {0};
    char err[1024];
    int opt, rc, status = 0;

    while ((opt = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'C':
            check_only = true;
            break;
        case 'S':
            status_only = true;
            break;
        case 'V':
            printf("qmp-bridge %s\n", QB_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "qmp-bridge: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    rc = qb_config_load_file(config_path, &q.cfg, err, sizeof(err));
    if (rc < 0) {
        main_config_error("%s", err);
        return 1;
    }
    if (main_check_transports(q.cfg) < 0) {
        qb_config_free(q.cfg);
        return 1;
    }
    qb_reload_outcome_init(&q.reload_outcome);
    if (status_only) {
        if (!q.cfg->metrics_listen) {
            fprintf(stderr, "qmp-bridge: --status needs metrics.listen in %s\n", config_path);
            qb_config_free(q.cfg);
            return 3;
        }
        status = qb_status_client_print(q.cfg->metrics_listen, stdout);
        qb_config_free(q.cfg);
        return status;
    }
    if (check_only) {
        qb_config_warnings(q.cfg, main_warn_check, NULL);
        printf("%s: configuration OK (bridge %s, %zu VMs, %zu transports%s)\n", config_path,
               q.cfg->bridge_id, q.cfg->n_vms, q.cfg->n_transports,
               q.cfg->discovery_directory ? ", discovery on" : "");
        /* the result is the merge: say which files made it, in merge order */
        for (size_t i = 1; i < q.cfg->n_files; i++)
            printf("  drop-in %s\n", q.cfg->files[i]);
        qb_config_free(q.cfg);
        return 0;
    }

    qb_log_set_level(q.cfg->log_level);
    qb_log_set_format(q.cfg->log_format);
    signal(SIGPIPE, SIG_IGN);
    q.loop = uv_default_loop();
    QB_LOG_INFO(NULL, "qmp-bridge %s starting: bridge %s, config %s with %zu drop-ins", QB_VERSION,
                q.cfg->bridge_id, config_path, q.cfg->n_files - 1);
    for (size_t i = 1; i < q.cfg->n_files; i++)
        QB_LOG_INFO(NULL, "drop-in %s", q.cfg->files[i]);
    qb_config_warnings(q.cfg, main_warn_log, NULL);

    main_start_signals(&q);
    rc = main_start_transports(&q);
    if (rc == QB_OK)
        rc = main_start_outbox(&q);
    if (rc == QB_OK)
        rc = qb_vm_manager_new(q.loop, q.cfg, q.outbox, &q.mgr);
    for (size_t i = 0; rc == QB_OK && i < q.cfg->n_vms; i++) {
        rc = qb_vm_manager_add(q.mgr, q.cfg->vms[i].name, q.cfg->vms[i].qmp);
        if (rc < 0)
            QB_LOG_ERR(q.cfg->vms[i].name, "cannot add VM: %s", qb_strerror(rc));
    }
    if (rc == QB_OK)
        rc = main_start_commands(&q);
    if (rc == QB_OK && q.cfg->discovery_directory) {
        static const struct qb_discovery_callbacks dcb = {
            .on_add = qb_vm_manager_discovered,
            .on_remove = qb_vm_manager_undiscovered,
        };
        rc = qb_discovery_start(q.loop, q.cfg->discovery_directory, q.cfg->discovery_suffix, &dcb,
                                q.mgr, &q.discovery, err, sizeof(err));
        if (rc < 0)
            QB_LOG_ERR(NULL, "%s", err);
    }
    if (rc == QB_OK)
        rc = main_start_listen(&q);
    if (rc == QB_OK)
        rc = main_start_status(&q);
    if (rc == QB_OK) {
        char ready[160];

        snprintf(ready, sizeof(ready), "bridge %s: %zu VMs configured, %zu transports%s%s",
                 q.cfg->bridge_id, q.cfg->n_vms, q.n_transports,
                 q.discovery ? ", discovery on" : "", q.spool ? ", spool on" : "");
        qb_service_notify_ready(ready);
        rc = qb_service_watchdog_start(q.loop, main_healthy, &q, &q.watchdog);
    }
    if (rc < 0) {
        status = 3;
        main_shutdown(&q, "start-up failed");
    }

    uv_run(q.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(q.loop);
    if (rc < 0)
        QB_LOG_WARN(NULL, "loop closed with handles still open: %s", uv_strerror(rc));
    qb_command_router_free(q.router);
    free(q.transports);
    qb_config_free(q.cfg);
    qb_reload_free_retired();
    return status;
}
