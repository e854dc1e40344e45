/*
 * publish.h - the one door for everything the bridge publishes.
 *
 * Every sequence number, envelope and message is made here: a VM's events,
 * its state copies and the clearing of its retained state, the bridge's own
 * events about a VM, and command results (on a VM's stream, or numbered by the
 * bridge when they belong to no VM). What comes out goes to the outbox
 * (events, state) or, for a command's reply, to the one transport the
 * command came on, through the outbox too.
 *
 * Numbering rules, kept in this file only:
 *   - each VM has a stream: an epoch (the first part of every id) and a
 *     sequence, taken once per published event; a state copy carries the
 *     sequence of the event that changed the state (id suffix ".state");
 *   - a VM that is removed and comes back under the same name continues its
 *     numbering (a memo), or the spool's numbering after a restart, else it
 *     starts a new epoch, always above the bridge's own;
 *   - a removed VM's stream still publishes what its closing session brings,
 *     unless a new stream of that name is open: two incarnations numbering at
 *     once would hand out one sequence twice;
 *   - envelopes that belong to no VM's stream (results for an unknown VM,
 *     replies to unauthenticated messages) take the bridge's numbering, ids
 *     "<bridge epoch>-<n>", so every id is unique.
 */
#ifndef QB_PUBLISH_H
#define QB_PUBLISH_H

#include "config.h"
#include "message.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct qb_outbox;
struct qb_transport;
struct qb_publisher;
struct qb_stream;

/* The bridge's clock in microseconds since the epoch: the time of bridge-made envelopes. */
uint64_t qb_publish_now_usec(void);

/* True when name can be a VM's name and a message's subject: 1 to 64 of [A-Za-z0-9._-]. */
bool qb_stream_name_valid(const char *name);

/* The subject a message about VM name carries: name when valid, else "unknown" (static). */
const char *qb_publish_subject(const char *name);

/* When an event of QMP time (ts_sec, ts_usec) happened, in µs; a negative ts_sec: now. */
uint64_t qb_publish_origin_usec(int64_t ts_sec, int32_t ts_usec);

/* True when a VM of that name is on the bridge now (its stream open, not retired). */
typedef bool (*qb_publish_name_live_cb)(void *arg, const char *name);

/*
 * Creates the publisher of a bridge. cfg (bridge id, schema base URI) and
 * outbox are borrowed and must outlive it. live answers whether a name has
 * an open stream (the VM set keeps that index already; a second one here
 * would cost every VM a hash entry). Returns QB_OK with *out, or QB_ENOMEM.
 */
int qb_publisher_new(const struct qb_config *cfg, struct qb_outbox *outbox,
                     qb_publish_name_live_cb live, void *live_arg, struct qb_publisher **out);

/* The configuration changed (reload: the schema base URI may have); cfg is borrowed. */
void qb_publisher_set_config(struct qb_publisher *p, const struct qb_config *cfg);

/*
 * The bridge is shutting down: numbering memos are dropped and removed
 * streams publish what they still have without the superseding check.
 */
void qb_publisher_closing(struct qb_publisher *p);

/* Frees p; every stream must have been freed before. */
void qb_publisher_free(struct qb_publisher *p);

/*
 * Opens the stream of VM name (valid, and not open already; the live
 * callback answers true for it from now until it is retired): continues a
 * remembered or spooled numbering, or starts a new epoch. name is copied.
 * Returns QB_OK with *out (free with qb_stream_free), or QB_ENOMEM.
 */
int qb_stream_open(struct qb_publisher *p, const char *name, struct qb_stream **out);

/*
 * The VM of stream s is removed: a new stream of its name may open from now
 * on. remember keeps its numbering for that stream (not when the VM is gone
 * for good, nor at shutdown). s still publishes until it is freed.
 */
void qb_stream_retire(struct qb_stream *s, bool remember);

/* True when s was retired and a new stream of its name is open. */
bool qb_stream_superseded(const struct qb_stream *s);

/* Frees s (NULL is fine). */
void qb_stream_free(struct qb_stream *s);

/* The last sequence taken on s. */
uint64_t qb_stream_sequence(const struct qb_stream *s);

/* The ordering key of s: "<bridge>/<vm>" (borrowed, lives as long as s). */
const char *qb_stream_key(const struct qb_stream *s);

/*
 * Publishes an event of type on s under a new sequence, with the time of
 * the event (ts_sec QB_ENVELOPE_TIME_NOW: the bridge's clock) and data
 * (borrowed). Returns the sequence taken, and in *origin_usec (may be NULL)
 * when it happened; 0 when it was not published (logged).
 */
uint64_t qb_publish_event(struct qb_stream *s, const char *type, int64_t ts_sec, int32_t ts_usec,
                          const json_t *data, uint64_t *origin_usec);

/*
 * Takes a new sequence on s for a state published as both an event and a
 * state copy (qb_publish_state twice with it). Returns it.
 */
uint64_t qb_stream_next_sequence(struct qb_stream *s);

/*
 * Publishes a qmp.vm.state of s as kind (QB_MSG_EVENT or QB_MSG_STATE) with
 * sequence seq and id suffix (NULL or ".state"), from its parsed tree when
 * tree is not NULL, else from its serialised text (text_len bytes). All
 * borrowed. Returns QB_OK, or a negative code when it was not published
 * (logged).
 */
int qb_publish_state(struct qb_stream *s, enum qb_msg_kind kind, uint64_t seq,
                     const char *id_suffix, int64_t ts_sec, int32_t ts_usec, const json_t *tree,
                     const char *text, size_t text_len);

/*
 * Publishes the clearing of s's retained state: a QB_MSG_STATE message with
 * no payload under the current sequence (id suffix ".clear"). MQTT turns it
 * into an empty retained message, Kafka into a tombstone.
 */
void qb_publish_state_clear(struct qb_stream *s);

/* Where a command's reply goes; everything borrowed. */
struct qb_publish_reply {
    struct qb_transport *transport; /* the transport the command came on, or NULL: no reply */
    const char *reply_topic;        /* where the command asked for its answer, or NULL */
    const void *correlation;
    size_t correlation_len;
};

/*
 * Publishes a bridge.command.result (borrowed) about VM vm_name: on stream s
 * under its next sequence when s is not NULL, else numbered by the bridge
 * and only as the reply; and as a reply on reply->transport when there is
 * one. A vm_name that is not a valid name is published as "unknown".
 * Returns QB_OK, or QB_ENOMEM (logged).
 */
int qb_publish_result(struct qb_publisher *p, struct qb_stream *s, const char *vm_name,
                      const json_t *result, const struct qb_publish_reply *reply);

#endif /* QB_PUBLISH_H */
