/*
 * config_warnings.c - the risky-but-valid settings of a configuration, each
 * as one line with the risk and how to remove it. The loader stays silent
 * (it never logs); the caller decides where the lines go.
 */
#include "config_warnings.h"

#include "transport_ops.h"

#include <stdio.h>
#include <string.h>

size_t qb_config_warnings(const struct qb_config *cfg, qb_config_warning_fn emit, void *arg)
{
    char line[512];
    size_t n = 0;

    /* what a host that was never given a name calls itself: many others do too */
    if (cfg->bridge_id_from_host && (strcmp(cfg->bridge_id, "localhost") == 0 ||
                                     strncmp(cfg->bridge_id, "localhost.", 10) == 0)) {
        snprintf(line, sizeof(line),
                 "bridge.id is the host name '%s', which other hosts are likely to share: their "
                 "bridges would take each other's topics and broker sessions; set bridge.id or "
                 "the host name",
                 cfg->bridge_id);
        emit(arg, line);
        n++;
    }
    if (!cfg->commands.enabled)
        return n;
    if (!cfg->commands_hmac_key_file) {
        emit(arg, "commands are enabled without commands.hmac_key_file: whoever can publish to "
                  "the command topics can stop, resume and resize VMs; set "
                  "commands.hmac_key_file to a key shared only with the command senders");
        n++;
    }
    for (size_t i = 0; i < cfg->n_transports; i++) {
        const struct qb_transport_config *t = &cfg->transports[i];
        const struct qb_transport_ops *ops = qb_transport_ops_find(t->type);

        if (t->commands && ops && ops->config_warn_commands)
            n += ops->config_warn_commands(t, emit, arg);
    }
    return n;
}
