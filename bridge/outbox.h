/*
 * outbox.h - where every outgoing event and state envelope goes: to all
 * transports, through the durable spool when one is configured.
 *
 * Delivery is one way: the outbox calls down (spool, transports) and hears
 * back only through the listener it gives each transport when it takes it in
 * (struct qb_transport_listener: the window turned full or open, spooled
 * records done). Each transport has ONE window, its bounded queue, with ONE
 * rule (transport.h: full at 90% of a bound, open again under 50% of both);
 * the outbox only decides what a full window means:
 *
 * Without a spool the outbox hands each message to every transport's bounded
 * memory queue; while the window of a transport with on_full: backpressure is
 * full, QMP reading is paused (the pressure callback); with on_full: drop the
 * transport refuses at its bound and reading goes on. A crash loses what was
 * queued.
 *
 * With a spool the promise is: once a message is in the spool, every
 * transport gets it at least once, in spool order, across broker outages
 * (up to the spool's size) and restarts. Each transport has a cursor in the
 * spool: while it keeps up, new messages go straight from memory into its
 * queue; when its window is full (a broker is slow or down) it falls behind
 * and is fed from the spool on disk once its window is open again. The
 * transport's window never pauses QMP reading in this mode: the spool takes
 * the backlog. The messages sent during one loop turn are written to the
 * spool together, with one write at the end of the turn, and reach the
 * transports only after that write.
 * A record is released (its segment deleted) only when every transport has
 * confirmed it; cursors and per-VM sequences are checkpointed every second
 * while anything changes, and at close.
 *
 * When the spool cannot take a message (full with on_full: backpressure, or
 * its file system full), the message waits in a bounded memory list, QMP
 * reading is paused through the pressure callback, and appending is retried
 * every second; when that list overflows, messages are dropped, counted and
 * logged per VM with the range of sequences lost.
 */
#ifndef QB_OUTBOX_H
#define QB_OUTBOX_H

#include "config.h"
#include "spool.h"
#include "transport.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct qb_outbox;

/* pressure true: stop reading from QEMU; false: resume. Called from the loop. */
typedef void (*qb_outbox_pressure_cb)(void *arg, bool pressure);

struct qb_outbox_stats {
    uint64_t sent;           /* messages taken by qb_outbox_send */
    uint64_t spooled;        /* of those, written to the spool */
    uint64_t from_spool;     /* messages fed to lagging transports from disk */
    uint64_t held;           /* in the memory list now, waiting for the spool */
    uint64_t dropped;        /* lost: memory list full, or spool dropped its oldest */
    uint64_t lagging;        /* transports currently fed from disk */
};

/*
 * Creates the outbox for transports (array and elements borrowed, must
 * outlive it; the outbox becomes each one's listener, qb_transport_listen).
 * spool may be NULL (memory queues only); otherwise it is borrowed and must
 * outlive the outbox, and records it holds from an earlier run are replayed
 * to each transport from its checkpointed cursor before anything new.
 * Returns QB_OK with *out (free with qb_outbox_close) or QB_ENOMEM.
 */
int qb_outbox_new(uv_loop_t *loop, const struct qb_config *cfg,
                  struct qb_transport *const *transports, size_t n_transports,
                  struct qb_spool *spool, struct qb_outbox **out);

/*
 * Sends msg (borrowed; kind QB_MSG_EVENT or QB_MSG_STATE) to every
 * transport. Returns QB_OK when it was queued, or taken for the spool (written
 * at the end of this loop turn, or held in memory while the spool cannot take
 * it), QB_EAGAIN when it was dropped (already counted and logged),
 * QB_EINVAL for a REPLY (send those with qb_outbox_send_reply).
 */
int qb_outbox_send(struct qb_outbox *o, const struct qb_message *msg);

/*
 * Sends a command's reply (msg borrowed, kind QB_MSG_REPLY) to transport t
 * only, the one the command came on: replies are never spooled (the result
 * event is). Returns what qb_transport_send returns.
 */
int qb_outbox_send_reply(struct qb_outbox *o, struct qb_transport *t, const struct qb_message *msg);

/* Sets the pressure callback (cb NULL clears it). arg is borrowed. */
void qb_outbox_set_pressure_cb(struct qb_outbox *o, qb_outbox_pressure_cb cb, void *arg);

/* True while the outbox wants QMP reading paused. */
bool qb_outbox_under_pressure(const struct qb_outbox *o);

/*
 * The last (epoch, sequence) the spool holds for vm, so numbering continues
 * across restarts. Returns false without a spool or for an unknown VM.
 */
bool qb_outbox_recall_sequence(const struct qb_outbox *o, const char *vm, uint64_t *epoch,
                               uint64_t *seq);

void qb_outbox_get_stats(const struct qb_outbox *o, struct qb_outbox_stats *out);

/*
 * Logs what the memory list still held (lost), writes a last checkpoint and
 * frees o. Call it only after every transport given to qb_outbox_new has
 * finished closing (qb_transport_close's done): their last confirmations
 * still advance the cursors while they drain, and the outbox never touches
 * them here. A transport closed with messages undelivered leaves its cursor
 * at the first of them, so they are replayed at the next start.
 */
void qb_outbox_close(struct qb_outbox *o);

/* ---- configuration reload (reload.c) ---- */

/*
 * Switches to cfg (borrowed, must outlive o; the old one too while anything
 * else still reads it). Only spool.on_full and spool.memory_max_messages can
 * differ in effect: the spool's own sizes are fixed when it is opened.
 */
void qb_outbox_set_config(struct qb_outbox *o, const struct qb_config *cfg);

/*
 * Adds a lane for t (borrowed, must outlive o or be removed first). With a
 * spool its cursor starts at the spool's next record: t gets new messages
 * only, not what the spool still holds for the others. Returns QB_OK or
 * QB_ENOMEM.
 */
int qb_outbox_add_transport(struct qb_outbox *o, struct qb_transport *t);

/*
 * Forgets t's lane (the caller then closes t, which drains on its own; with a
 * spool, t's cursor no longer holds records back). Returns QB_OK or
 * QB_ENOTFOUND.
 */
int qb_outbox_remove_transport(struct qb_outbox *o, struct qb_transport *t);

/*
 * Puts new_t into old_t's lane without losing what old_t had not delivered.
 * With a spool, the lane restarts at old_t's first unconfirmed record and
 * old_t's unsent messages are discarded (they come again from the spool, so
 * some may arrive twice, with the same ids). Without a spool, old_t's queued
 * messages are copied into new_t's queue in order (qb_transport_take_queue).
 * *moved says how many messages were discarded or copied. The caller then
 * closes old_t. Returns QB_OK or QB_ENOTFOUND (old_t has no lane).
 */
int qb_outbox_replace_transport(struct qb_outbox *o, struct qb_transport *old_t,
                                struct qb_transport *new_t, uint64_t *moved);

#endif
