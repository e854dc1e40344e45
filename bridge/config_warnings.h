/*
 * config_warnings.h - settings that are valid but risky, said once at start-up
 * and by --check-config (which still exits 0: a warning is not an error).
 */
#ifndef QB_CONFIG_WARNINGS_H
#define QB_CONFIG_WARNINGS_H

#include "config.h"

#include <stddef.h>

/* Receives one warning: one line (borrowed for the call) saying the risk and the fix. */
typedef void (*qb_config_warning_fn)(void *arg, const char *line);

/*
 * Calls emit(arg, line) for each risky setting of cfg (borrowed):
 * - bridge.id left to a host name such as localhost, which other hosts share;
 * - commands enabled without commands.hmac_key_file;
 * - commands received on an MQTT transport without TLS and without a username.
 * Returns how many there were.
 */
size_t qb_config_warnings(const struct qb_config *cfg, qb_config_warning_fn emit, void *arg);

#endif
