/*
 * kafka_warmup.h - asks the cluster for a topic's partitions on the topic's
 * first use, so its first messages do not wait for librdkafka's topic scan.
 *
 * librdkafka learns a topic it has not seen before from its once-a-second
 * topic scan: until the scan's metadata request is answered, every message
 * for the topic waits unassigned. With a per-VM or per-type topic template
 * (events_topic: "qmp.<vm>") every VM's first events of a bridge start wait
 * up to a second (the coldstart benchmark: p99 0.8 s against about 10 ms with
 * a fixed topic). The fixed topics are named at start instead (kafka.c).
 *
 * Here the first message for a topic queues the topic; one metadata request
 * at a time (rd_kafka_metadata, which blocks, on libuv's thread pool) asks
 * for it, and librdkafka's answer assigns the waiting messages. Best effort:
 * a failed request drops what is still queued (the scan covers those) and
 * publishing never waits for any of it. Each topic is asked for once; the
 * names remembered are bounded (QB_KAFKA_WARMUP_TOPICS_MAX), beyond which
 * new topics are left to the scan.
 */
#ifndef QB_KAFKA_WARMUP_H
#define QB_KAFKA_WARMUP_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* Topic names remembered: a fleet's VMs times the event types is far below this. */
#define QB_KAFKA_WARMUP_TOPICS_MAX 65536

/* How long one metadata request may take (the transport's); a close waits for at most one. */
#define QB_KAFKA_WARMUP_TIMEOUT_MS 1000

struct qb_kafka_warmup;

/*
 * A warm-up for producer rk on loop; name is the transport's, for the log;
 * each request may take timeout_ms. Borrows rk, loop and name: all must
 * outlive the warm-up's close. Returns the warm-up (new; close it with
 * qb_kafka_warmup_close) or NULL when out of memory.
 */
struct qb_kafka_warmup *qb_kafka_warmup_new(uv_loop_t *loop, rd_kafka_t *rk, const char *name,
                                            int timeout_ms);

/*
 * Notes that a message is about to be produced to topic (borrowed for the
 * call): the first time, the topic is queued for a metadata request. Cheap
 * for a topic seen before (one hash lookup).
 */
void qb_kafka_warmup_note(struct qb_kafka_warmup *w, const char *topic);

struct qb_kafka_warmup_stats {
    size_t asked;   /* requests started, whatever their answer */
    size_t fetched; /* of those, answered without error */
    bool busy;      /* a request is queued on the thread pool or running */
};

/* Fills *st (for tests and the log). */
void qb_kafka_warmup_get_stats(const struct qb_kafka_warmup *w, struct qb_kafka_warmup_stats *st);

/*
 * Drops what is queued and frees the warm-up once no request runs: done(arg)
 * is called then, at once when none is running, else from the loop when the
 * running one returns (within its timeout). rk must stay alive
 * until done is called. w is gone afterwards.
 */
void qb_kafka_warmup_close(struct qb_kafka_warmup *w, void (*done)(void *arg), void *arg);

#endif
