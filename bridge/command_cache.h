/*
 * command_cache.h - the idempotency cache: (source, VM, id) -> first result.
 *
 * Brokers redeliver (MQTT QoS 1, Kafka after a rebalance) and senders retry,
 * so the same command can arrive more than once. The bridge runs a command
 * once and answers every copy with the first result. A key is "running"
 * from qb_command_cache_begin until qb_command_cache_finish, so a duplicate
 * that arrives while the first copy runs is recognised and not run again.
 *
 * The key is the command's source, VM and id: one id from one sender names
 * one command per VM. Each entry keeps the fingerprint of what the command
 * asked for (qb_command_fingerprint); a copy with the same key but another
 * fingerprint is a different command reusing the id, which the caller refuses.
 *
 * Bounded, and never at the cost of running a command twice: an entry may be
 * evicted only when it is finished AND its replay window is over (the
 * expires_usec given at begin, the command's time + max_age + max_skew, is in
 * the past: a copy can no longer pass the age check). Of those, the oldest
 * (in order of begin) goes first. Running entries and finished ones still
 * inside their window stay; when the cache is full of them, begin refuses
 * with QB_EBUSY. Not thread-safe: it lives on the bridge's one loop.
 */
#ifndef QB_COMMAND_CACHE_H
#define QB_COMMAND_CACHE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct qb_command_cache;

/* What a cache entry is looked up by; every string borrowed, none NULL, none with a NUL. */
struct qb_command_key {
    const char *source;
    const char *vm;
    const char *id;
};

/* What an entry keeps besides its key and result; strings copied by begin, borrowed elsewhere. */
struct qb_command_meta {
    const char *fp;        /* fingerprint (qb_command_fingerprint), or NULL */
    const char *command;   /* the command's name, or NULL */
    uint64_t time_usec;    /* the command's time, µs since the epoch */
    uint64_t expires_usec; /* end of its replay window: time + max_age + max_skew */
};

/* Returns a new empty cache holding at most capacity keys (>= 1), or NULL (ENOMEM or capacity 0).
   The caller owns it (qb_command_cache_free). */
struct qb_command_cache *qb_command_cache_new(size_t capacity);

/* Frees the cache and drops its references to the results. NULL is fine. */
void qb_command_cache_free(struct qb_command_cache *cache);

/*
 * Looks key up for a command whose fingerprint is fp (borrowed; NULL skips
 * the comparison).
 * Returns QB_ENOTFOUND (never seen, or evicted), QB_EEXIST (the key is held
 * with another fingerprint: *result NULL), QB_EAGAIN (running: *result
 * NULL), or QB_OK with *result the first result, borrowed: valid until the
 * entry is evicted or removed (json_incref to keep it longer).
 * result may be NULL when the caller only wants the state.
 */
int qb_command_cache_lookup(const struct qb_command_cache *cache, const struct qb_command_key *key,
                            const char *fp, json_t **result);

/*
 * Marks key (copied) as running, with meta (copied). At capacity the oldest
 * evictable entry (finished, expires_usec before now_usec) goes. Returns
 * QB_OK, QB_EEXIST (key already held: nothing changes), QB_EBUSY (full,
 * nothing evictable: nothing changes) or QB_ENOMEM.
 */
int qb_command_cache_begin(struct qb_command_cache *cache, const struct qb_command_key *key,
                           const struct qb_command_meta *meta, uint64_t now_usec);

/*
 * Records result (borrowed: the cache takes its own reference) as key's first
 * result; the entry keeps its place in the eviction order. Returns QB_OK,
 * QB_EEXIST (already finished: the first result stays), QB_ENOTFOUND (key not
 * held) or QB_EINVAL (result NULL).
 */
int qb_command_cache_finish(struct qb_command_cache *cache, const struct qb_command_key *key,
                            json_t *result);

/* Forgets key (a command dropped without running, so a retry may run it). Returns QB_OK or
   QB_ENOTFOUND. */
int qb_command_cache_forget(struct qb_command_cache *cache, const struct qb_command_key *key);

/* Number of keys held (running + finished). */
size_t qb_command_cache_count(const struct qb_command_cache *cache);

/* The capacity given to qb_command_cache_new. */
size_t qb_command_cache_capacity(const struct qb_command_cache *cache);

/* Number of keys held that are running. */
size_t qb_command_cache_running(const struct qb_command_cache *cache);

/*
 * Calls cb for every entry, oldest first: key and meta borrowed for the call,
 * result NULL while running (borrowed otherwise). For the command journal's
 * compaction.
 */
void qb_command_cache_foreach(const struct qb_command_cache *cache,
                              void (*cb)(void *arg, const struct qb_command_key *key,
                                         const struct qb_command_meta *meta,
                                         const json_t *result),
                              void *arg);

#endif
