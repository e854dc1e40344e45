/*
 * transport.h - what the core sees of a transport: a bounded, ordered queue in
 * front of one backend (stdout, mqtt, kafka). The message it carries is in message.h.
 *
 * qb_transport_send copies the message into the transport's queue and returns
 * at once. The queue hands messages to the backend in order while the backend
 * accepts them (it may refuse with QB_EAGAIN while its link is down or its
 * in-flight window is full), and releases each one only when the backend
 * confirms delivery (MQTT PUBACK, Kafka delivery report, a completed write).
 * A failed delivery goes back to the queue and is sent again, in order.
 *
 * The window: the queue is the transport's only window, bounded by
 * queue_max_messages and queue_max_bytes (payload bytes), and it has ONE rule:
 *   - it turns FULL when it reaches 90% of either bound, and OPEN again only
 *     once it is under 50% of both (the gap keeps a queue hovering at the mark
 *     from flapping); each change goes to the listener (window callback);
 *   - at 100% of a bound a new message is refused (QB_EAGAIN).
 * What FULL means is the owner's business (the outbox): without a spool a
 * transport with on_full: backpressure pauses QMP reads while full; with a
 * spool the transport stops taking new records from memory and is fed from
 * the spool on disk once it is open again. A refused message without a
 * spool_id is counted and logged with its VM and sequence as dropped (nothing
 * is dropped silently); one with a spool_id is not lost (the spool holds it)
 * and is neither counted nor logged.
 *
 * The transport never calls its owner except through the listener it was
 * given (qb_transport_listen): window changes and how far spooled records are
 * done. Its owner feeds it by calling down.
 */
#ifndef QB_TRANSPORT_H
#define QB_TRANSPORT_H

#include "transport_config.h"
#include "message.h"
#include "transport_ops.h" /* what backends and the core share: qb_inbound, qb_bridge_info */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Counters of one transport, all since start. */
struct qb_transport_stats {
    uint64_t queued;           /* accepted into the queue */
    uint64_t published;        /* handed to the backend (retries count again) */
    uint64_t confirmed;        /* delivery confirmed: released from the queue */
    uint64_t confirmed_events; /* of those, kind EVENT (no state copies, no replies) */
    uint64_t retried;          /* failed delivery reports: each message is sent again, in order */
    uint64_t failed;           /* messages the backend can never send (refused outright): dropped */
    uint64_t dropped;          /* refused because the queue was full */
    uint64_t filtered;         /* left out by the transport's include / exclude lists */
    uint64_t depth;            /* messages in the queue now (including in flight) */
    uint64_t depth_bytes;
    uint64_t oldest_age_ms; /* how long the oldest queued message has waited, 0 when empty */
    uint64_t max_messages;  /* the queue's bounds in force (defaults applied) */
    uint64_t max_bytes;
    bool link_up;
};

struct qb_transport;

/*
 * What a transport tells its owner (the outbox), and nothing else. Both are
 * called from the loop, possibly from inside qb_transport_send or
 * qb_transport_take_queue of this transport; a handler may call
 * qb_transport_send again (the queue is consistent by then).
 */
struct qb_transport_listener {
    /*
     * The window turned full (true) or open again (false), by the rule in the
     * header comment; depth and bytes are the queue's at that moment (for the
     * log). Only while the transport is open (not once closing).
     */
    void (*window)(void *arg, bool full, uint64_t depth, uint64_t bytes);
    /*
     * Every spooled record below done_below that this transport took is done
     * with: confirmed by the backend, or taken without queueing (filtered, a
     * state copy on a stream). Grows only; its first value comes with the first
     * spooled record done after qb_transport_listen.
     */
    void (*progress)(void *arg, uint64_t done_below);
};

/*
 * Validates cfg with its backend's validate op without creating anything
 * (for --check-config). Returns QB_OK or QB_ECONFIG with errbuf filled.
 */
int qb_transport_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen);

/*
 * Creates a transport for cfg (borrowed; must outlive the transport). Never
 * blocks: links come up later. Returns QB_OK and *out (owned by the caller,
 * release with qb_transport_close), QB_ECONFIG for an unknown type or a
 * backend error (errbuf says which), or QB_ENOMEM.
 */
int qb_transport_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                        const struct qb_bridge_info *bridge, struct qb_transport **out,
                        char *errbuf, size_t errlen);

/*
 * Queues a copy of msg (msg borrowed for the call; the copy is the
 * transport's). Returns QB_OK, also for a message the transport takes
 * without queueing (its include / exclude lists leave it out, counted as
 * filtered; a state copy on a transport without a retained channel; a reply
 * on one without a reply channel), or QB_EAGAIN when the queue is full (a
 * message without a spool_id is counted as dropped and logged), or
 * QB_ECLOSED while closing.
 */
int qb_transport_send(struct qb_transport *t, const struct qb_message *msg);

/*
 * Like qb_transport_send (same copy, same window, same codes), but when the
 * backend announces QB_TRANSPORT_CAP_BATCHES a queued message reaches it only
 * at the next qb_transport_hand_over (or a delivery report, a retry, close),
 * not from inside this call. For an owner that gathers a loop turn's messages:
 * Kafka's client then wakes its broker threads once per turn for the lot
 * instead of for every few messages. Other backends get it at once, as from
 * qb_transport_send (MQTT's in-flight window of about a hundred gains nothing
 * from waiting, and its medians rose). The caller must call
 * qb_transport_hand_over before the loop next blocks in poll.
 */
int qb_transport_queue(struct qb_transport *t, const struct qb_message *msg);

/* Hands every queued message the backend has not had yet to it, as far as it takes them. */
void qb_transport_hand_over(struct qb_transport *t);

/*
 * Receives commands. ack_token identifies the message for qb_transport_ack,
 * which the core calls once the command's result has been queued for
 * publishing (or the command was ignored): Kafka commits the offset only then.
 */
typedef void (*qb_inbound_cb)(void *arg, struct qb_transport *t, const struct qb_inbound *in,
                              uint64_t ack_token);

/*
 * Starts receiving commands on this transport (MQTT: subscribes
 * <prefix>/<bridge>/+/command with a persistent session; Kafka: joins group
 * qmp-bridge.<bridge> on the commands topic). Returns QB_OK, or QB_EINVAL
 * when the backend cannot receive (stdout).
 */
int qb_transport_subscribe(struct qb_transport *t, qb_inbound_cb cb, void *arg);

/*
 * True when the transport can answer a command on a reply channel of its own
 * (MQTT response topic); false for stream-only transports (Kafka, stdout),
 * where results are only events.
 */
bool qb_transport_has_reply_channel(const struct qb_transport *t);

/*
 * True when a reply may be published to topic (borrowed), the Response Topic
 * an authenticated command named: false for a transport without a reply
 * channel, and for a topic inside the bridges' own namespace (MQTT: the
 * topic_prefix, where every bridge's events, state and status live).
 */
bool qb_transport_reply_topic_allowed(const struct qb_transport *t, const char *topic);

/* Done with an inbound message (see qb_inbound_cb). Unknown tokens are ignored. */
void qb_transport_ack(struct qb_transport *t, uint64_t ack_token);

/*
 * Makes listener (borrowed, must outlive t or be replaced first; NULL: none)
 * and arg the ones t reports to, replacing any before. When the window is
 * full already, listener->window(arg, true, ...) is called at once.
 */
void qb_transport_listen(struct qb_transport *t, const struct qb_transport_listener *listener,
                         void *arg);

/* True while the window is full (see the header comment). */
bool qb_transport_window_full(const struct qb_transport *t);

/* The transport's name (config name or type), borrowed. */
const char *qb_transport_name(const struct qb_transport *t);

void qb_transport_get_stats(const struct qb_transport *t, struct qb_transport_stats *out);

struct qb_histogram;

/*
 * Latency from each confirmed message's origin_usec to its delivery
 * confirmation (messages without an origin are not counted). Borrowed; valid
 * as long as t.
 */
const struct qb_histogram *qb_transport_latency(const struct qb_transport *t);

/*
 * Stops taking messages, waits up to cfg->shutdown_timeout_ms for the queue
 * to drain, logs how many messages were still undelivered, closes the backend
 * and frees t; done(arg) is called once all of that is finished (from the
 * loop, never from inside this call).
 */
void qb_transport_close(struct qb_transport *t, void (*done)(void *arg), void *arg);

/*
 * For a transport restarted by a configuration reload: copies every message
 * still queued in from (sent or not, in queue order) into to's queue through
 * qb_transport_send, then frees from's messages that are not in flight (those
 * in flight stay until the backend reports them, so from's close finishes
 * quickly; they may then arrive twice, with the same ids). to may be NULL:
 * the messages are only discarded (with a spool, which sends them again).
 * Call it before qb_transport_close(from). Returns how many messages were
 * copied (to NULL: discarded); a copy to refuses is counted and logged there.
 */
size_t qb_transport_take_queue(struct qb_transport *from, struct qb_transport *to);

/*
 * Like qb_transport_close but without waiting for the queue to drain: for a
 * transport whose messages were handed to its replacement (reload), so the
 * replacement does not have to share the broker with it for long (MQTT:
 * one client id). What is still in flight is given up.
 */
void qb_transport_close_now(struct qb_transport *t, void (*done)(void *arg), void *arg);

/*
 * Calls cb(arg, broker, avg_s, p99_s) for each broker the backend's client
 * library measured a round trip to (see qb_transport_ops.broker_rtt); nothing
 * for backends that measure none, or once the backend is closing.
 */
void qb_transport_foreach_broker_rtt(const struct qb_transport *t, qb_broker_rtt_cb cb, void *arg);

/* The configuration t runs with (borrowed, as given to qb_transport_create). */
const struct qb_transport_config *qb_transport_config(const struct qb_transport *t);

#endif
