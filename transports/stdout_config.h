/*
 * stdout_config.h - the configuration of one stdout transport: what its config map
 * (stdout.c, qb_transport_stdout_ops.config_keys) fills. The loader allocates it and
 * hangs it on struct qb_transport_config's backend; tests build one by hand. A
 * transport without one (backend NULL) writes to stdout.
 */
#ifndef QB_STDOUT_CONFIG_H
#define QB_STDOUT_CONFIG_H

struct qb_stdout_config {
    char *path; /* path: write JSON lines to this file instead of stdout; default NULL */
};

#endif
