/*
 * command_cache.c - bounded map of (source, VM, id) -> first result (see command_cache.h).
 *
 * The hash key is the three strings joined by NUL bytes (none of them holds a
 * NUL, so the join is unambiguous) with an explicit length. uthash keeps its
 * items on a list in insertion order besides the hash, so walking from the
 * head visits entries oldest first: eviction takes the first evictable one
 * on that walk, with no second list to keep in step. uthash is built with
 * HASH_NONFATAL_OOM so a failed bucket allocation becomes QB_ENOMEM instead of
 * exit().
 */
#include "command_cache.h"
#include "error.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define HASH_NONFATAL_OOM 1
#define uthash_nonfatal_oom(elt) (cache_oom = true)

static bool cache_oom; /* set by uthash on a failed add; the bridge has one loop thread */

#include <uthash.h>

struct cache_entry {
    char *key; /* source NUL vm NUL id (key_len bytes, plus a final NUL) */
    size_t key_len;
    char *fp;      /* fingerprint, or NULL */
    char *command; /* the command's name, or NULL */
    uint64_t time_usec, expires_usec;
    json_t *result;       /* NULL while running; else a reference the cache owns */
    UT_hash_handle hh;
};

struct qb_command_cache {
    struct cache_entry *entries; /* uthash head: the oldest entry */
    size_t capacity;
    size_t running;
};

/* The joined key of k into a new buffer (*len without the final NUL), or NULL. */
static char *key_join(const struct qb_command_key *k, size_t *len)
{
    size_t ls = strlen(k->source), lv = strlen(k->vm), li = strlen(k->id);
    char *buf = malloc(ls + lv + li + 3);

    if (!buf)
        return NULL;
    memcpy(buf, k->source, ls + 1);
    memcpy(buf + ls + 1, k->vm, lv + 1);
    memcpy(buf + ls + lv + 2, k->id, li + 1);
    *len = ls + lv + li + 2;
    return buf;
}

/* The parts of e's joined key (borrowed from e). */
static struct qb_command_key key_split(const struct cache_entry *e)
{
    struct qb_command_key k = {.source = e->key};

    k.vm = k.source + strlen(k.source) + 1;
    k.id = k.vm + strlen(k.vm) + 1;
    return k;
}

static void entry_free(struct cache_entry *e)
{
    json_decref(e->result);
    free(e->fp);
    free(e->command);
    free(e->key);
    free(e);
}

static struct cache_entry *cache_find(const struct qb_command_cache *cache,
                                      const struct qb_command_key *k)
{
    struct cache_entry *e = NULL;
    size_t len;
    char *joined = key_join(k, &len);

    if (!joined)
        return NULL; /* out of memory: looks like a miss, and begin then fails the same way */
    HASH_FIND(hh, cache->entries, joined, len, e);
    free(joined);
    return e;
}

static void cache_remove(struct qb_command_cache *cache, struct cache_entry *e)
{
    if (!e->result)
        cache->running--;
    HASH_DEL(cache->entries, e);
    entry_free(e);
}

/* Evicts the oldest entry that is finished and past its window. Returns false when none is. */
static bool cache_evict_one(struct qb_command_cache *cache, uint64_t now_usec)
{
    struct cache_entry *e, *tmp;

    HASH_ITER(hh, cache->entries, e, tmp)
    {
        if (e->result && e->expires_usec < now_usec) {
            cache_remove(cache, e);
            return true;
        }
    }
    return false;
}

struct qb_command_cache *qb_command_cache_new(size_t capacity)
{
    struct qb_command_cache *cache;

    if (capacity == 0 || !(cache = calloc(1, sizeof(*cache))))
        return NULL;
    cache->capacity = capacity;
    return cache;
}

void qb_command_cache_free(struct qb_command_cache *cache)
{
    struct cache_entry *e, *tmp;

    if (!cache)
        return;
    HASH_ITER(hh, cache->entries, e, tmp)
    {
        HASH_DEL(cache->entries, e);
        entry_free(e);
    }
    free(cache);
}

int qb_command_cache_lookup(const struct qb_command_cache *cache, const struct qb_command_key *key,
                            const char *fp, json_t **result)
{
    struct cache_entry *e = cache_find(cache, key);

    if (result)
        *result = NULL;
    if (!e)
        return QB_ENOTFOUND;
    if (fp && e->fp && strcmp(fp, e->fp) != 0)
        return QB_EEXIST;
    if (!e->result)
        return QB_EAGAIN;
    if (result)
        *result = e->result;
    return QB_OK;
}

int qb_command_cache_begin(struct qb_command_cache *cache, const struct qb_command_key *key,
                           const struct qb_command_meta *meta, uint64_t now_usec)
{
    struct cache_entry *e;

    if (cache_find(cache, key))
        return QB_EEXIST;
    if (HASH_COUNT(cache->entries) >= cache->capacity && !cache_evict_one(cache, now_usec))
        return QB_EBUSY;
    if (!(e = calloc(1, sizeof(*e))) || !(e->key = key_join(key, &e->key_len)) ||
        (meta->fp && !(e->fp = strdup(meta->fp))) ||
        (meta->command && !(e->command = strdup(meta->command)))) {
        if (e)
            entry_free(e);
        return QB_ENOMEM;
    }
    e->time_usec = meta->time_usec;
    e->expires_usec = meta->expires_usec;
    cache_oom = false;
    HASH_ADD_KEYPTR(hh, cache->entries, e->key, e->key_len, e);
    if (cache_oom) {
        entry_free(e); /* uthash left the table as it was */
        return QB_ENOMEM;
    }
    cache->running++;
    return QB_OK;
}

int qb_command_cache_finish(struct qb_command_cache *cache, const struct qb_command_key *key,
                            json_t *result)
{
    struct cache_entry *e;

    if (!result)
        return QB_EINVAL;
    if (!(e = cache_find(cache, key)))
        return QB_ENOTFOUND;
    if (e->result)
        return QB_EEXIST;
    e->result = json_incref(result);
    cache->running--;
    return QB_OK;
}

int qb_command_cache_forget(struct qb_command_cache *cache, const struct qb_command_key *key)
{
    struct cache_entry *e = cache_find(cache, key);

    if (!e)
        return QB_ENOTFOUND;
    cache_remove(cache, e);
    return QB_OK;
}

size_t qb_command_cache_count(const struct qb_command_cache *cache)
{
    return HASH_COUNT(cache->entries);
}

size_t qb_command_cache_capacity(const struct qb_command_cache *cache)
{
    return cache->capacity;
}

size_t qb_command_cache_running(const struct qb_command_cache *cache)
{
    return cache->running;
}

void qb_command_cache_foreach(const struct qb_command_cache *cache,
                              void (*cb)(void *arg, const struct qb_command_key *key,
                                         const struct qb_command_meta *meta,
                                         const json_t *result),
                              void *arg)
{
    for (const struct cache_entry *e = cache->entries; e; e = e->hh.next) {
        struct qb_command_key k = key_split(e);
        struct qb_command_meta meta = {
            .fp = e->fp,
            .command = e->command,
            .time_usec = e->time_usec,
            .expires_usec = e->expires_usec,
        };

        cb(arg, &k, &meta, e->result);
    }
}
