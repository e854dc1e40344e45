/*
 * config_ref.h - references in configuration values: ${env:NAME}, ${file:PATH}, ${cred:NAME}.
 *
 * A value may name where its text comes from instead of holding it, so that passwords and
 * keys (librdkafka's sasl.password, ...) never sit in the configuration file itself:
 *   ${env:NAME}   the environment variable NAME ([A-Za-z_][A-Za-z0-9_]*); unset is an error,
 *                 set but empty is the empty string
 *   ${file:PATH}  the contents of the file at the absolute PATH, one trailing newline dropped
 *   ${cred:NAME}  the same for $CREDENTIALS_DIRECTORY/NAME: a systemd credential
 *                 (LoadCredential=NAME:/path in the unit)
 *   $${           a literal "${"; any other '$' is itself
 * References and plain text mix ("${env:HOST}:9092"). An expanded text is not expanded
 * again. Files read for ${file:} and ${cred:} are secrets: they are opened through
 * qb_secret_open (refused when others may read them, a warning when the group may).
 */
#ifndef QB_CONFIG_REF_H
#define QB_CONFIG_REF_H

#include <stdbool.h>
#include <stddef.h>

/* True when text holds a reference or a "$${" escape, i.e. qb_config_ref_expand changes it. */
bool qb_config_ref_present(const char *text);

/*
 * Expands every reference of text into *out, a new NUL-terminated string owned by the caller
 * (free it; it may hold a secret, so clear it first). *budget is how many bytes references
 * may still add, all values of one configuration together; it is reduced by what this call
 * adds, so a file of a thousand references to a large file cannot make the loader allocate
 * more than one budget.
 * Returns QB_OK, QB_ENOMEM, or QB_ECONFIG with why (wl bytes) saying which reference failed
 * and why: "${env:PW}: environment variable PW is not set", "${file:/x}: cannot read '/x':
 * No such file or directory". why never holds any part of an expanded value.
 */
int qb_config_ref_expand(const char *text, char **out, size_t *budget, char *why, size_t wl);

#endif
