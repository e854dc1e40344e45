/*
 * command_router.h - from an inbound message to a command queued on its VM.
 *
 * For every message a transport receives on its command channel: parse and
 * check it (command.c), drop it when it names another bridge, answer a
 * duplicate (same source, VM and id) with its first result instead of running
 * it again (bounded cache, kept across QMP reconnects and, with
 * bridge.state_directory, across restarts: command_journal.h), refuse an id
 * reused for a different command, and queue the rest on their VM
 * (vm_manager). Every command that is not ignored gets exactly one
 * bridge.command.result; rejected ones never touch a QMP session. A duplicate
 * that arrives while its original runs waits for the original's result, and
 * is acknowledged only then (at most commands.cache_size duplicates wait;
 * further ones are rejected busy).
 *
 * A message is an authenticated command when qb_command_parse accepted it
 * (size, JSON, attributes, policy, age and, with a key, signature). Only such
 * a command may choose where its answer goes (the MQTT 5 Response Topic, and
 * then only outside the bridges' own topics) or appear on a VM's event stream.
 * Anything else is answered on the default result topic alone, at most
 * ROUTER_UNAUTH_RATE a second (bursts of ROUTER_UNAUTH_BURST), with no
 * correlation data, or dropped; both are counted (qb_command_router_get_stats)
 * and their log lines limited.
 *
 * Without bridge.state_directory the cache starts empty at every start, so
 * commands timed before the start are refused (expired).
 *
 * Ignored rather than rejected (logged at debug, acknowledged): a command
 * whose "bridge" attribute names another bridge, and, on a transport without
 * a reply channel (Kafka), a command for a VM this bridge does not have, since
 * all bridges of a cluster read the same commands topic.
 */
#ifndef QB_COMMAND_ROUTER_H
#define QB_COMMAND_ROUTER_H

#include "config.h"
#include "transport.h"
#include "vm_manager.h"

struct qb_command_router;

/*
 * Creates a router for cfg's policy over mgr (both borrowed, must outlive it),
 * loading the command journal from cfg->state_directory when set. Returns
 * QB_OK with *out (free with qb_command_router_free), QB_ENOMEM, or the
 * journal's error (logged with the file).
 */
int qb_command_router_new(const struct qb_config *cfg, struct qb_vm_manager *mgr,
                          struct qb_command_router **out);

/* The qb_inbound_cb to give qb_transport_subscribe, with the router as arg. */
void qb_command_router_inbound(void *router, struct qb_transport *t, const struct qb_inbound *in,
                               uint64_t ack_token);

/*
 * From now on inbound messages are left alone, not even acknowledged (Kafka
 * redelivers them to the next consumer): call when shutdown starts, before
 * the manager goes away.
 */
void qb_command_router_stop(struct qb_command_router *r);

void qb_command_router_free(struct qb_command_router *r);

/* Counters since start, for /metrics. */
struct qb_command_router_stats {
    uint64_t unauthenticated_answered; /* rejections of non-commands published as a reply */
    uint64_t unauthenticated_dropped;  /* ...dropped: over the rate limit, or no reply channel */
    uint64_t duplicates_answered;      /* copies of a finished command answered again */
    uint64_t duplicates_dropped;       /* ...acknowledged unanswered: over the rate limit */
};

/* Fills out; r may be NULL (commands off): all zero. */
void qb_command_router_get_stats(const struct qb_command_router *r,
                                 struct qb_command_router_stats *out);

/*
 * Configuration reload: the policy (allow list, limits, HMAC key, bridge id)
 * is read from cfg from now on (borrowed, must outlive the router; commands
 * already checked keep the old one). The cache keeps its size and contents.
 */
void qb_command_router_set_config(struct qb_command_router *r, const struct qb_config *cfg);

/*
 * Transport t is being closed (reload): duplicates parked for a running
 * command that came on t get their result on the VM's event stream only, no
 * reply and no acknowledgement (Kafka redelivers them; the cache answers).
 */
void qb_command_router_forget_transport(struct qb_command_router *r, const struct qb_transport *t);

#endif
