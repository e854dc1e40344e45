/*
 * reload.h - SIGHUP: compute and apply the difference between the running
 * configuration and the file as it is now.
 *
 * The new file goes through the same checks as at start-up (the loader and
 * every transport's validate op); an invalid file changes nothing. Otherwise:
 *   - keys that cannot change while running (qb_reload_keep_fixed: bridge.id,
 *     the spool's directory and sizes, metrics.listen, qmp.listen and its
 *     naming, commands.enabled and cache_size) keep their running value, with
 *     one warning per key that says a restart is needed;
 *   - static VMs: added ones connect, removed ones disconnect, a changed
 *     address is a remove and an add; the others keep their QMP session;
 *   - transports, matched by name: unchanged ones keep running; a changed one
 *     is replaced by a new one without losing what it had queued (see
 *     qb_outbox_replace_transport); added ones start with new messages only;
 *     removed ones close with their bounded drain;
 *   - everything else is in effect at once: log level and format, events.exclude, the
 *     command policy, qmp timeouts/back-off/max_connecting, spool.on_full and
 *     memory_max_messages, discovery (restarted when directory or suffix
 *     changed; VMs found under the old directory are removed).
 *
 * The replaced configuration is never freed while running: transports that
 * were kept still borrow their part of it, and so do the bridge's identity,
 * running commands and the status API. The owner (bridge.c) keeps every
 * retired config (a few KiB each) until its loop is done.
 *
 * reload.c never touches its owner: it works on the running objects it is
 * lent (struct qb_reload_target) and hands back what is in force afterwards
 * (struct qb_reload_result), which the owner installs.
 */
#ifndef QB_RELOAD_H
#define QB_RELOAD_H

#include "command_router.h"
#include "config.h"
#include "discovery.h"
#include "outbox.h"
#include "transport.h"
#include "vm_manager.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum qb_reload_change {
    QB_RELOAD_SAME = 0,
    QB_RELOAD_ADDED,
    QB_RELOAD_REMOVED,
    QB_RELOAD_CHANGED,
};

/* Returns "same", "added", "removed" or "changed". */
const char *qb_reload_change_name(enum qb_reload_change c);

/* One static VM or transport, by name; an index is SIZE_MAX where it is absent. */
struct qb_reload_item {
    const char *name; /* borrowed from the config that has it (the new one when both do) */
    size_t old_index; /* into old->vms / old->transports */
    size_t new_index; /* into new->vms / new->transports */
    enum qb_reload_change change;
};

/* What differs between two configs; every pointer borrows from them. */
struct qb_reload_diff {
    struct qb_reload_item *vms; /* every VM of either config: same, added, removed, changed */
    size_t n_vms;
    struct qb_reload_item *transports; /* same for transports */
    size_t n_transports;
    bool discovery_changed; /* directory or suffix (on/off included) */
};

/*
 * Compares old and new (both borrowed, must outlive *out). VMs are matched by
 * name and compared by address; transports are matched by name and compared
 * key by key (qb_reload_transport_equal). Returns QB_OK with *out filled
 * (free with qb_reload_diff_free) or QB_ENOMEM.
 */
int qb_reload_diff(const struct qb_config *old, const struct qb_config *new_cfg,
                   struct qb_reload_diff *out);

void qb_reload_diff_free(struct qb_reload_diff *d);

/* True when a and b set every key alike (where each was defined does not count). */
bool qb_reload_transport_equal(const struct qb_transport_config *a,
                               const struct qb_transport_config *b);

/*
 * Copies old's value of every key that cannot change at runtime into new_cfg
 * where they differ, logging "reload: <key> changed; needs a restart" for
 * each. names (may be NULL) receives the keys, comma-separated. Returns how
 * many keys differed, or QB_ENOMEM (new_cfg is then unusable: free it).
 */
int qb_reload_keep_fixed(const struct qb_config *old, struct qb_config *new_cfg, char *names,
                         size_t nameslen);

/*
 * How the last load of the configuration went, for
 * qmp_bridge_config_last_reload_successful and
 * qmp_bridge_config_last_reload_success_timestamp_seconds (named as
 * Prometheus names its own). The load at start-up counts as a successful one.
 */
struct qb_reload_outcome {
    bool successful;       /* the last reload put its file in force */
    uint64_t success_usec; /* when the last successful one did, µs since the epoch */
};

/* Records the start-up load: successful, now. */
void qb_reload_outcome_init(struct qb_reload_outcome *o);

/* The running objects a reload works on, lent by their owner for one qb_reload_run. */
struct qb_reload_target {
    uv_loop_t *loop;
    struct qb_config *cfg;                  /* the config in force */
    const struct qb_bridge_info *info;      /* identity of the transports a reload creates */
    struct qb_transport *const *transports; /* the running set, n_transports of them */
    size_t n_transports;
    struct qb_outbox *outbox;
    struct qb_vm_manager *mgr;
    struct qb_command_router *router;  /* NULL when commands are disabled */
    struct qb_discovery *discovery;    /* NULL when discovery is off */
    struct qb_reload_outcome *outcome; /* updated by every qb_reload_run; may be NULL */
};

/* What a reload put in force, for the owner to install in place of the target's. */
struct qb_reload_result {
    struct qb_config *cfg; /* the new config, the caller's from now on; the target's old one
                              stays the caller's too and must outlive the loop (see above) */
    struct qb_transport **transports; /* the new set, malloc'd, the caller's (the old array
                                         is the caller's to free; closed ones close on
                                         their own) */
    size_t n_transports;
    struct qb_discovery *discovery; /* running now, NULL when off (the target's was stopped
                                       when it differs) */
};

/*
 * Re-reads the file of the running config and applies it (see the top of
 * this file); everything is logged with a "reload:" prefix. status receives a
 * one-line summary for systemd's STATUS=. Returns QB_OK with *out filled when
 * the new config is in force (possibly with keys kept or a transport that
 * could not be replaced: logged and in status); or QB_ECONFIG (the file was
 * invalid) or QB_ENOMEM, with nothing changed and *out zeroed.
 */
int qb_reload_run(const struct qb_reload_target *t, struct qb_reload_result *out, char *status,
                  size_t statuslen);

#endif
