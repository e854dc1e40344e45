/*
 * command_cache.c - bounded map of command id -> first result (see command_cache.h).
 *
 * uthash keeps its items on a list in insertion order besides the hash, so
 * the head of the table is always the oldest entry: FIFO eviction is "delete
 * the head", with no second list to keep in step. uthash is built with
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
    char *id;
    json_t *result; /* NULL while in progress; else a reference the cache owns */
    UT_hash_handle hh;
};

struct qb_command_cache {
    struct cache_entry *entries; /* uthash head: the oldest entry */
    size_t capacity;
};

static void entry_free(struct cache_entry *e)
{
    json_decref(e->result);
    free(e->id);
    free(e);
}

static struct cache_entry *cache_find(const struct qb_command_cache *cache, const char *id)
{
    struct cache_entry *e = NULL;

    HASH_FIND_STR(cache->entries, id, e);
    return e;
}

/* Adds a new entry for id, evicting the oldest at capacity. Returns it, or NULL on ENOMEM. */
static struct cache_entry *cache_add(struct qb_command_cache *cache, const char *id)
{
    struct cache_entry *e = calloc(1, sizeof(*e));

    if (!e || !(e->id = strdup(id))) {
        free(e);
        return NULL;
    }
    if (HASH_COUNT(cache->entries) >= cache->capacity) {
        struct cache_entry *oldest = cache->entries;

        HASH_DEL(cache->entries, oldest);
        entry_free(oldest);
    }
    cache_oom = false;
    HASH_ADD_KEYPTR(hh, cache->entries, e->id, strlen(e->id), e);
    if (cache_oom) {
        entry_free(e); /* uthash left the table as it was */
        return NULL;
    }
    return e;
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

int qb_command_cache_lookup(const struct qb_command_cache *cache, const char *id, json_t **result)
{
    struct cache_entry *e = cache_find(cache, id);

    if (result)
        *result = e ? e->result : NULL;
    if (!e)
        return QB_ENOTFOUND;
    return e->result ? QB_OK : QB_EAGAIN;
}

int qb_command_cache_begin(struct qb_command_cache *cache, const char *id)
{
    if (cache_find(cache, id))
        return QB_EEXIST;
    return cache_add(cache, id) ? QB_OK : QB_ENOMEM;
}

int qb_command_cache_finish(struct qb_command_cache *cache, const char *id, json_t *result)
{
    struct cache_entry *e = cache_find(cache, id);

    if (!result)
        return QB_EINVAL;
    if (e && e->result)
        return QB_EEXIST;
    if (!e && !(e = cache_add(cache, id)))
        return QB_ENOMEM;
    e->result = json_incref(result);
    return QB_OK;
}

int qb_command_cache_forget(struct qb_command_cache *cache, const char *id)
{
    struct cache_entry *e = cache_find(cache, id);

    if (!e)
        return QB_ENOTFOUND;
    HASH_DEL(cache->entries, e);
    entry_free(e);
    return QB_OK;
}

size_t qb_command_cache_count(const struct qb_command_cache *cache)
{
    return HASH_COUNT(cache->entries);
}
