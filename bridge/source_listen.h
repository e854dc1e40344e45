/*
 * source_listen.h - listen mode's newcomers: QEMUs that connected to
 * qmp.listen, from accept until they have a VM name.
 *
 * Part of the QMP source (source_qmp.c), below it: the session runs greeting
 * and qmp_capabilities; on READY query-name names it (or
 * qmp.listen_name_template), and only then is it handed up through named(),
 * so nothing is published under a name that might be wrong. Events read
 * before the name wait here, within the held-event bounds.
 */
#ifndef QB_SOURCE_LISTEN_H
#define QB_SOURCE_LISTEN_H

#include "config.h"
#include "held_events.h"
#include "qmp_client.h"
#include "source.h"

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

struct qb_source_listen;

struct qb_source_listen_cbs {
    /*
     * A READY session was named name. The callee either takes it (returns
     * true: the session is its own, set to its callbacks; *address, a
     * malloc'ed "listen:<path> pid <pid>", may be stolen by setting it NULL;
     * events holds what was read before the name, for the callee to move) or
     * refuses it (returns false after qb_qmp_client_disconnect on qmp).
     */
    bool (*named)(void *arg, struct qb_qmp_client *qmp, char **address, const char *name, pid_t pid,
                  struct qb_held_events *events);
    /* false once qmp.max_connecting newcomers wait for their name, true when one is done. */
    void (*room)(void *arg, bool room);
};

/*
 * Makes the newcomer list. cfg, opts (the sessions' options) and stats
 * (held-over counters are added there) are borrowed and outlive it. Returns
 * QB_OK with *out, or QB_ENOMEM.
 */
int qb_source_listen_new(uv_loop_t *loop, const struct qb_config *cfg,
                         const struct qb_qmp_options *opts, struct qb_source_stats *stats,
                         const struct qb_source_listen_cbs *cb, void *arg,
                         struct qb_source_listen **out);

/* cfg (borrowed) from now on. */
void qb_source_listen_set_config(struct qb_source_listen *l, const struct qb_config *cfg);

/*
 * Runs a QMP session over fd, QEMU's connection to qmp.listen from pid (user
 * uid). Takes fd in every case. Returns QB_OK, QB_EBUSY (qmp.max_connecting
 * newcomers already wait for their name) or QB_ENOMEM.
 */
int qb_source_listen_adopt(struct qb_source_listen *l, int fd, pid_t pid, uid_t uid);

/* Drops every newcomer with its session (no callback follows) and frees l. NULL is fine. */
void qb_source_listen_free(struct qb_source_listen *l);

#endif
