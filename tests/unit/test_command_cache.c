/*
 * test_command_cache.c - the idempotency cache (bridge/command_cache.c).
 *
 * The states a key goes through (unknown -> running -> finished -> evicted),
 * what the key is made of (source, VM, id) and the fingerprint check, the
 * eviction rule (only finished entries whose replay window is over, oldest
 * first; a cache full of others refuses with QB_EBUSY), and reference
 * counting of the stored results (ASan's leak check catches a missing decref;
 * the refcount asserts catch a missing incref).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "command_cache.h"
#include "error.h"

#define SEC 1000000ull
#define T0 (1800000000ull * SEC) /* "now" in these tests */

static struct qb_command_key K(const char *id)
{
    return (struct qb_command_key){.source = "orch", .vm = "vm1", .id = id};
}

/* An entry whose window ends at expires (µs), fingerprint "fp". */
static struct qb_command_meta meta_until(uint64_t expires)
{
    return (struct qb_command_meta){.fp = "fp", .command = "stop", .time_usec = expires - 60 * SEC,
                                    .expires_usec = expires};
}

static int begin(struct qb_command_cache *c, const char *id, uint64_t expires, uint64_t now)
{
    struct qb_command_key k = K(id);
    struct qb_command_meta m = meta_until(expires);

    return qb_command_cache_begin(c, &k, &m, now);
}

static int state_of(const struct qb_command_cache *cache, const char *id)
{
    struct qb_command_key k = K(id);
    json_t *result = (json_t *)1;
    int rc = qb_command_cache_lookup(cache, &k, "fp", &result);

    if (rc != QB_OK)
        assert_null(result);
    else
        assert_non_null(result);
    return rc;
}

static int finish(struct qb_command_cache *c, const char *id, json_t *r)
{
    struct qb_command_key k = K(id);

    return qb_command_cache_finish(c, &k, r);
}

static void test_lifecycle(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(4);
    json_t *result = json_pack("{s:s}", "status", "ok"), *first, *got = NULL;
    struct qb_command_key a = K("a");

    (void)state;
    assert_non_null(cache);
    assert_int_equal(qb_command_cache_capacity(cache), 4);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(begin(cache, "a", T0, T0), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_EAGAIN);
    assert_int_equal(qb_command_cache_running(cache), 1);
    /* a duplicate while the first runs */
    assert_int_equal(begin(cache, "a", T0, T0), QB_EEXIST);
    assert_int_equal(qb_command_cache_count(cache), 1);

    assert_int_equal(finish(cache, "a", result), QB_OK);
    assert_int_equal(qb_command_cache_running(cache), 0);
    assert_int_equal(result->refcount, 2); /* ours and the cache's */
    assert_int_equal(qb_command_cache_lookup(cache, &a, "fp", &got), QB_OK);
    assert_ptr_equal(got, result);
    assert_int_equal(qb_command_cache_lookup(cache, &a, NULL, NULL), QB_OK);
    assert_int_equal(begin(cache, "a", T0, T0), QB_EEXIST);

    /* the first result stays */
    first = result;
    result = json_pack("{s:s}", "status", "failed");
    assert_int_equal(finish(cache, "a", result), QB_EEXIST);
    assert_int_equal(result->refcount, 1);
    assert_int_equal(qb_command_cache_lookup(cache, &a, "fp", &got), QB_OK);
    assert_ptr_equal(got, first);
    assert_int_equal(finish(cache, "b", NULL), QB_EINVAL);
    assert_int_equal(finish(cache, "b", result), QB_ENOTFOUND); /* never begun */
    assert_int_equal(state_of(cache, "b"), QB_ENOTFOUND);

    /* the caller's reference is independent of the cache's */
    json_decref(first);
    assert_int_equal(qb_command_cache_lookup(cache, &a, "fp", &got), QB_OK);
    assert_string_equal(json_string_value(json_object_get(got, "status")), "ok");

    /* forget */
    assert_int_equal(qb_command_cache_forget(cache, &a), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_forget(cache, &a), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_count(cache), 0);
    assert_int_equal(begin(cache, "a", T0, T0), QB_OK);

    json_decref(result);
    qb_command_cache_free(cache); /* frees a running entry */
}

/* One id names one command per (source, VM): the same id elsewhere is another key. */
static void test_key_parts(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(8);
    struct qb_command_meta m = meta_until(T0);
    struct qb_command_key vm1 = {"orch", "vm1", "j-1"}, vm2 = {"orch", "vm2", "j-1"},
                          other = {"orch-2", "vm1", "j-1"},
                          /* the parts are kept apart: no join makes these equal */
                          shifted = {"orchv", "m1", "j-1"};
    json_t *r = json_string("vm1's result"), *got;

    (void)state;
    assert_int_equal(qb_command_cache_begin(cache, &vm1, &m, T0), QB_OK);
    assert_int_equal(qb_command_cache_finish(cache, &vm1, r), QB_OK);
    assert_int_equal(qb_command_cache_lookup(cache, &vm2, "fp", &got), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_lookup(cache, &other, "fp", &got), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_lookup(cache, &shifted, "fp", &got), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_begin(cache, &vm2, &m, T0), QB_OK);
    assert_int_equal(qb_command_cache_lookup(cache, &vm2, "fp", &got), QB_EAGAIN);
    assert_null(got);
    assert_int_equal(qb_command_cache_lookup(cache, &vm1, "fp", &got), QB_OK);
    assert_ptr_equal(got, r);
    qb_command_cache_free(cache);
    json_decref(r);
}

/* The same key with another fingerprint is a different command: never its result. */
static void test_fingerprint(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(4);
    struct qb_command_key k = K("j-1");
    struct qb_command_meta m = meta_until(T0);
    json_t *r = json_true(), *got = (json_t *)1;

    (void)state;
    assert_int_equal(qb_command_cache_begin(cache, &k, &m, T0), QB_OK);
    assert_int_equal(qb_command_cache_lookup(cache, &k, "other", &got), QB_EEXIST);
    assert_null(got);
    assert_int_equal(qb_command_cache_finish(cache, &k, r), QB_OK);
    got = (json_t *)1;
    assert_int_equal(qb_command_cache_lookup(cache, &k, "other", &got), QB_EEXIST);
    assert_null(got);
    assert_int_equal(qb_command_cache_lookup(cache, &k, "fp", &got), QB_OK);
    assert_ptr_equal(got, r);
    qb_command_cache_free(cache);
}

/* A running entry is never evicted; a cache full of running entries refuses. */
static void test_running_never_evicted(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(2);
    json_t *r = json_string("r");

    (void)state;
    /* windows long over, but still running */
    assert_int_equal(begin(cache, "cont", T0 - 3600 * SEC, T0), QB_OK);
    assert_int_equal(begin(cache, "a", T0 - 3600 * SEC, T0), QB_OK);
    assert_int_equal(begin(cache, "b", T0 + 60 * SEC, T0 + 7200 * SEC), QB_EBUSY);
    assert_int_equal(state_of(cache, "cont"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "a"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "b"), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_count(cache), 2);

    /* a finishes: now it can go (its window is over), cont stays */
    assert_int_equal(finish(cache, "a", r), QB_OK);
    assert_int_equal(begin(cache, "b", T0 + 60 * SEC, T0 + 7200 * SEC), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(state_of(cache, "cont"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "b"), QB_EAGAIN);
    qb_command_cache_free(cache);
    assert_int_equal(r->refcount, 1);
    json_decref(r);
}

/* Finished entries stay while a copy could still pass the age check. */
static void test_young_finished_kept(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(2);
    json_t *r = json_string("r");

    (void)state;
    assert_int_equal(begin(cache, "a", T0 + 300 * SEC, T0), QB_OK);
    assert_int_equal(begin(cache, "b", T0 + 300 * SEC, T0), QB_OK);
    assert_int_equal(finish(cache, "a", r), QB_OK);
    assert_int_equal(finish(cache, "b", r), QB_OK);
    /* inside their window: nothing can go */
    assert_int_equal(begin(cache, "c", T0 + 400 * SEC, T0 + 10 * SEC), QB_EBUSY);
    assert_int_equal(begin(cache, "c", T0 + 400 * SEC, T0 + 300 * SEC), QB_EBUSY);
    assert_int_equal(state_of(cache, "a"), QB_OK);
    assert_int_equal(state_of(cache, "b"), QB_OK);
    /* one microsecond after the window: the oldest goes */
    assert_int_equal(begin(cache, "c", T0 + 400 * SEC, T0 + 300 * SEC + 1), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(state_of(cache, "b"), QB_OK);
    qb_command_cache_free(cache);
    json_decref(r);
}

/* Capacity 3: of the evictable entries the oldest begin goes first, whatever finished last. */
static void test_eviction_order(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(3);
    json_t *r = json_string("r");
    uint64_t later = T0 + 1000 * SEC;

    (void)state;
    assert_int_equal(begin(cache, "a", T0, T0), QB_OK);
    assert_int_equal(begin(cache, "b", T0, T0), QB_OK);
    assert_int_equal(begin(cache, "c", T0, T0), QB_OK);
    assert_int_equal(finish(cache, "c", r), QB_OK);
    assert_int_equal(finish(cache, "a", r), QB_OK);
    assert_int_equal(r->refcount, 3);

    /* b runs: a, older than c, goes */
    assert_int_equal(begin(cache, "d", later + 1000 * SEC, later), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(r->refcount, 2); /* eviction dropped the cache's reference */
    assert_int_equal(state_of(cache, "b"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "c"), QB_OK);
    /* then c; then nothing (b and d run) */
    assert_int_equal(begin(cache, "e", later + 1000 * SEC, later), QB_OK);
    assert_int_equal(state_of(cache, "c"), QB_ENOTFOUND);
    assert_int_equal(begin(cache, "f", later + 1000 * SEC, later), QB_EBUSY);

    /* forgetting makes room without evicting */
    {
        struct qb_command_key e = K("e");
        assert_int_equal(qb_command_cache_forget(cache, &e), QB_OK);
    }
    assert_int_equal(begin(cache, "f", later + 1000 * SEC, later), QB_OK);
    assert_int_equal(state_of(cache, "b"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "d"), QB_EAGAIN);
    assert_int_equal(qb_command_cache_running(cache), 3);

    qb_command_cache_free(cache);
    assert_int_equal(r->refcount, 1);
    json_decref(r);
}

/* Many finished, expired ids through a small cache: exactly the last capacity ones remain. */
static void test_many(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(100);
    json_t *r = json_true();
    char id[32];

    (void)state;
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "cmd-%d", i);
        assert_int_equal(begin(cache, id, T0 + (uint64_t)i, T0 + (uint64_t)i + 1000), QB_OK);
        assert_int_equal(finish(cache, id, r), QB_OK);
    }
    assert_int_equal(qb_command_cache_count(cache), 100);
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "cmd-%d", i);
        assert_int_equal(state_of(cache, id), i < 9900 ? QB_ENOTFOUND : QB_OK);
    }
    qb_command_cache_free(cache);
    qb_command_cache_free(NULL);
}

struct walk {
    int n;
    char ids[4][8];
    bool running[4];
};

static void walk_cb(void *arg, const struct qb_command_key *key,
                    const struct qb_command_meta *meta, const json_t *result)
{
    struct walk *w = arg;

    assert_string_equal(key->source, "orch");
    assert_string_equal(key->vm, "vm1");
    assert_string_equal(meta->fp, "fp");
    assert_string_equal(meta->command, "stop");
    snprintf(w->ids[w->n], sizeof(w->ids[0]), "%s", key->id);
    w->running[w->n++] = result == NULL;
}

static void test_foreach(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(4);
    struct walk w = {0};
    json_t *r = json_true();

    (void)state;
    assert_int_equal(begin(cache, "x", T0, T0), QB_OK);
    assert_int_equal(begin(cache, "y", T0, T0), QB_OK);
    assert_int_equal(finish(cache, "x", r), QB_OK);
    qb_command_cache_foreach(cache, walk_cb, &w);
    assert_int_equal(w.n, 2);
    assert_string_equal(w.ids[0], "x");
    assert_false(w.running[0]);
    assert_string_equal(w.ids[1], "y");
    assert_true(w.running[1]);
    qb_command_cache_free(cache);
}

static void test_small_capacity(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(1);

    (void)state;
    assert_null(qb_command_cache_new(0));
    assert_int_equal(begin(cache, "a", T0, T0), QB_OK);
    assert_int_equal(begin(cache, "b", T0, T0 + SEC), QB_EBUSY);
    assert_int_equal(state_of(cache, "a"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "b"), QB_ENOTFOUND);
    qb_command_cache_free(cache);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_key_parts),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_running_never_evicted),
        cmocka_unit_test(test_young_finished_kept),
        cmocka_unit_test(test_eviction_order),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_small_capacity),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
