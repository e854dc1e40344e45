/*
 * main.c - the command line: arguments, the configuration load and its checks,
 * --check-config, --status, --version; then one struct qb_bridge (bridge.h) is
 * made and run.
 *
 * Exit codes: 0 clean shutdown or valid config, 1 configuration error (or a
 * second SIGINT/SIGTERM during shutdown), 2 usage error, 3 start-up failure (a
 * transport or discovery could not start); --status has its own (status_client.h).
 */
#include "bridge.h"
#include "config.h"
#include "config_warnings.h"
#include "error.h"
#include "log.h"
#include "status_client.h"
#include "transport.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QB_DEFAULT_CONFIG "/etc/qmp-bridge/qmp-bridge.yaml"

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

/* Validates what the loader cannot: each transport's own settings. Returns QB_OK or QB_ECONFIG. */
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
    struct qb_config *cfg = NULL;
    struct qb_bridge *bridge;
    char err[1024];
    int opt, rc, status;

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

    rc = qb_config_load_file(config_path, &cfg, err, sizeof(err));
    if (rc < 0) {
        main_config_error("%s", err);
        return 1;
    }
    if (main_check_transports(cfg) < 0) {
        qb_config_free(cfg);
        return 1;
    }
    if (status_only) {
        if (!cfg->metrics_listen) {
            fprintf(stderr, "qmp-bridge: --status needs metrics.listen in %s\n", config_path);
            qb_config_free(cfg);
            return 3;
        }
        status = qb_status_client_print(cfg->metrics_listen, stdout);
        qb_config_free(cfg);
        return status;
    }
    if (check_only) {
        qb_config_warnings(cfg, main_warn_check, NULL);
        printf("%s: configuration OK (bridge %s, %zu VMs, %zu transports%s)\n", config_path,
               cfg->bridge_id, cfg->n_vms, cfg->n_transports,
               cfg->discovery_directory ? ", discovery on" : "");
        /* the result is the merge: say which files made it, in merge order */
        for (size_t i = 1; i < cfg->n_files; i++)
            printf("  drop-in %s\n", cfg->files[i]);
        qb_config_free(cfg);
        return 0;
    }

    if (qb_bridge_new(NULL, cfg, &bridge) < 0) {
        fprintf(stderr, "qmp-bridge: out of memory\n");
        return 3;
    }
    rc = qb_bridge_run(bridge);
    qb_bridge_free(bridge);
    return rc < 0 ? 3 : 0;
}
