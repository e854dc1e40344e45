/*
 * message.h - the one thing delivery carries: a built envelope with where it
 * goes (event stream, retained state, a command's reply) and what the spool
 * and the logs need to know about it.
 *
 * It sits below delivery on purpose: the spool, the outbox and the transports
 * include it, and it includes nothing of theirs, so storing or sending a
 * message never pulls in the configuration or the command types.
 */
#ifndef QB_MESSAGE_H
#define QB_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Where a message goes within a transport. */
enum qb_msg_kind {
    QB_MSG_EVENT = 0, /* the event stream (mqtt: <prefix>/<bridge>/<vm>/event/<type>; kafka: events topic) */
    QB_MSG_STATE = 1, /* the latest state, retained/compacted (mqtt: .../<vm>/state; kafka: state
                         topic); with len 0 it clears the VM's state (qb_message_clears_state) */
    QB_MSG_REPLY = 2, /* a command result sent back on the transport the command came on, only
                         (mqtt: reply_topic with correlation data, else <prefix>/<bridge>/<vm>/result;
                         backends without a reply channel ignore it: results are events too) */
};

/* One message; every pointer is borrowed for the duration of the call that takes it. */
struct qb_message {
    enum qb_msg_kind kind;
    const char *vm;      /* subject */
    const char *type;    /* CloudEvents type */
    const char *id;      /* CloudEvents id */
    const char *key;     /* "<bridge>/<vm>": ordering key */
    uint64_t sequence;   /* for drop accounting in logs */
    uint64_t epoch;      /* the VM's numbering epoch (the first part of id); kept by the spool */
    uint64_t spool_id;   /* the spool record this came from, 0 when not spooled */
    uint64_t origin_usec; /* when the event happened (QMP timestamp, else when the bridge made
                             it), µs since the epoch; 0 = unknown. Measures delivery latency */
    const char *payload; /* structured-mode CloudEvents JSON */
    size_t len;
    /* QB_MSG_REPLY only: where the command asked for its answer (both may be NULL). */
    const char *reply_topic;
    const void *correlation;
    size_t correlation_len;
};

/*
 * True for the message that deletes a VM's retained state (the VM is gone):
 * kind STATE with no payload. MQTT publishes an empty retained message,
 * Kafka a tombstone (the VM's key, a NULL value); transports without a
 * retained channel never see state messages.
 */
static inline bool qb_message_clears_state(const struct qb_message *msg)
{
    return msg->kind == QB_MSG_STATE && msg->len == 0;
}

/*
 * Copies src and everything it points to (vm, type, id, key, reply topic,
 * correlation bytes, payload) into ONE new allocation, so a message can wait
 * in a queue after the caller's buffers are gone. The allocation starts with
 * size bytes, zeroed, for the caller's own struct, which holds a struct
 * qb_message at offset (a bare copy: size sizeof(struct qb_message), offset
 * 0); that member is filled with src's fields, its pointers into the copy.
 * The payload is NUL-terminated (backends may treat it as a string); a NULL
 * pointer stays NULL. Returns the allocation (owned by the caller, release
 * with one free()), or NULL when out of memory. Use QB_MESSAGE_COPY.
 */
void *qb_message_copy(const struct qb_message *src, size_t size, size_t offset);

/* A new `type` (owned by the caller, free()) whose member `member` is a copy of src, or NULL. */
#define QB_MESSAGE_COPY(type, member, src)                                                         \
    ((type *)qb_message_copy((src), sizeof(type), offsetof(type, member)))

#endif /* QB_MESSAGE_H */
