/*
 * command_cache.h - the idempotency cache: command id -> first result.
 *
 * Brokers redeliver (MQTT QoS 1, Kafka after a rebalance) and senders retry,
 * so the same command id can arrive more than once. The bridge runs a command
 * once and answers every copy with the first result. An id is "in progress"
 * from qb_command_cache_begin until qb_command_cache_finish, so a duplicate
 * that arrives while the first copy runs is recognised and not run again.
 *
 * Bounded: at capacity the oldest entry (in order of begin) is evicted,
 * whatever its state. Not thread-safe: it lives on the bridge's one loop.
 */
#ifndef QB_COMMAND_CACHE_H
#define QB_COMMAND_CACHE_H

#include <jansson.h>
#include <stddef.h>

struct qb_command_cache;

/* Returns a new empty cache holding at most capacity ids (>= 1), or NULL (ENOMEM or capacity 0).
   The caller owns it (qb_command_cache_free). */
struct qb_command_cache *qb_command_cache_new(size_t capacity);

/* Frees the cache and drops its references to the results. NULL is fine. */
void qb_command_cache_free(struct qb_command_cache *cache);

/*
 * Looks id (borrowed) up.
 * Returns QB_ENOTFOUND (never seen, or evicted), QB_EAGAIN (in progress:
 * *result set to NULL), or QB_OK with *result the first result, borrowed:
 * valid until the entry is evicted or removed (json_incref to keep it longer).
 * result may be NULL when the caller only wants the state.
 */
int qb_command_cache_lookup(const struct qb_command_cache *cache, const char *id, json_t **result);

/*
 * Marks id (borrowed; copied) as in progress, evicting the oldest entry at
 * capacity. Returns QB_OK, QB_EEXIST (already in progress or done: nothing
 * changes) or QB_ENOMEM.
 */
int qb_command_cache_begin(struct qb_command_cache *cache, const char *id);

/*
 * Records result (borrowed: the cache takes its own reference) as id's first
 * result. If id was in progress it becomes done in place; if it was evicted
 * meanwhile it is added again as the newest entry; if it is already done the
 * first result stays and QB_EEXIST is returned. Returns QB_OK, QB_EEXIST,
 * QB_EINVAL (result NULL) or QB_ENOMEM.
 */
int qb_command_cache_finish(struct qb_command_cache *cache, const char *id, json_t *result);

/* Forgets id (a command dropped without a result, so a retry may run it). Returns QB_OK or
   QB_ENOTFOUND. */
int qb_command_cache_forget(struct qb_command_cache *cache, const char *id);

/* Number of ids held (in progress + done). */
size_t qb_command_cache_count(const struct qb_command_cache *cache);

#endif
