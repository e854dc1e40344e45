/*
 * test_command_cache.c - the idempotency cache (bridge/command_cache.c).
 *
 * The states an id goes through (unknown -> in progress -> done -> evicted),
 * FIFO eviction order at capacity, and reference counting of the stored
 * results (ASan's leak check catches a missing decref; the refcount asserts
 * catch a missing incref).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "command_cache.h"
#include "error.h"

static int state_of(const struct qb_command_cache *cache, const char *id)
{
    json_t *result = (json_t *)1;
    int rc = qb_command_cache_lookup(cache, id, &result);

    if (rc != QB_OK)
        assert_null(result);
    else
        assert_non_null(result);
    return rc;
}

static void test_lifecycle(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(4);
    json_t *result = json_pack("{s:s}", "status", "ok"), *first, *got = NULL;

    (void)state;
    assert_non_null(cache);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_EAGAIN);
    /* a duplicate while the first runs */
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_EEXIST);
    assert_int_equal(qb_command_cache_count(cache), 1);

    assert_int_equal(qb_command_cache_finish(cache, "a", result), QB_OK);
    assert_int_equal(result->refcount, 2); /* ours and the cache's */
    assert_int_equal(qb_command_cache_lookup(cache, "a", &got), QB_OK);
    assert_ptr_equal(got, result);
    assert_int_equal(qb_command_cache_lookup(cache, "a", NULL), QB_OK);
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_EEXIST);

    /* the first result stays */
    first = result;
    result = json_pack("{s:s}", "status", "failed");
    assert_int_equal(qb_command_cache_finish(cache, "a", result), QB_EEXIST);
    assert_int_equal(result->refcount, 1);
    assert_int_equal(qb_command_cache_lookup(cache, "a", &got), QB_OK);
    assert_ptr_equal(got, first);
    assert_int_equal(qb_command_cache_finish(cache, "b", NULL), QB_EINVAL);
    assert_int_equal(state_of(cache, "b"), QB_ENOTFOUND);

    /* the caller's reference is independent of the cache's */
    json_decref(first);
    assert_int_equal(qb_command_cache_lookup(cache, "a", &got), QB_OK);
    assert_string_equal(json_string_value(json_object_get(got, "status")), "ok");

    /* forget */
    assert_int_equal(qb_command_cache_forget(cache, "a"), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_forget(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(qb_command_cache_count(cache), 0);
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_OK);

    json_decref(result);
    qb_command_cache_free(cache); /* frees an in-progress entry */
}

/* Capacity 3: the oldest begin goes first, whatever its state. */
static void test_eviction_order(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(3);
    json_t *r = json_string("r");

    (void)state;
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_OK);
    assert_int_equal(qb_command_cache_begin(cache, "b"), QB_OK);
    assert_int_equal(qb_command_cache_begin(cache, "c"), QB_OK);
    assert_int_equal(qb_command_cache_finish(cache, "a", r), QB_OK);
    assert_int_equal(qb_command_cache_finish(cache, "c", r), QB_OK);
    assert_int_equal(r->refcount, 3);

    /* finishing does not make an entry newer: a is still the oldest */
    assert_int_equal(qb_command_cache_begin(cache, "d"), QB_OK);
    assert_int_equal(qb_command_cache_count(cache), 3);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(r->refcount, 2); /* eviction dropped the cache's reference */
    assert_int_equal(state_of(cache, "b"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "c"), QB_OK);
    assert_int_equal(state_of(cache, "d"), QB_EAGAIN);

    /* b, in progress, is next */
    assert_int_equal(qb_command_cache_begin(cache, "e"), QB_OK);
    assert_int_equal(state_of(cache, "b"), QB_ENOTFOUND);

    /* b's result arrives after its eviction: it comes back as the newest, evicting c */
    assert_int_equal(qb_command_cache_finish(cache, "b", r), QB_OK);
    assert_int_equal(state_of(cache, "b"), QB_OK);
    assert_int_equal(state_of(cache, "c"), QB_ENOTFOUND);
    assert_int_equal(state_of(cache, "d"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "e"), QB_EAGAIN);
    assert_int_equal(qb_command_cache_count(cache), 3);

    /* forgetting makes room without evicting */
    assert_int_equal(qb_command_cache_forget(cache, "e"), QB_OK);
    assert_int_equal(qb_command_cache_begin(cache, "f"), QB_OK);
    assert_int_equal(state_of(cache, "d"), QB_EAGAIN);
    assert_int_equal(state_of(cache, "b"), QB_OK);

    qb_command_cache_free(cache);
    assert_int_equal(r->refcount, 1);
    json_decref(r);
}

/* Many ids through a small cache: exactly the last capacity ones remain. */
static void test_many(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(100);
    json_t *r = json_true();
    char id[32];

    (void)state;
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "cmd-%d", i);
        assert_int_equal(qb_command_cache_begin(cache, id), QB_OK);
        if (i % 2 == 0)
            assert_int_equal(qb_command_cache_finish(cache, id, r), QB_OK);
    }
    assert_int_equal(qb_command_cache_count(cache), 100);
    for (int i = 0; i < 10000; i++) {
        snprintf(id, sizeof(id), "cmd-%d", i);
        assert_int_equal(state_of(cache, id),
                         i < 9900 ? QB_ENOTFOUND : (i % 2 == 0 ? QB_OK : QB_EAGAIN));
    }
    qb_command_cache_free(cache);
    qb_command_cache_free(NULL);
}

static void test_small_capacity(void **state)
{
    struct qb_command_cache *cache = qb_command_cache_new(1);

    (void)state;
    assert_null(qb_command_cache_new(0));
    assert_int_equal(qb_command_cache_begin(cache, "a"), QB_OK);
    assert_int_equal(qb_command_cache_begin(cache, "b"), QB_OK);
    assert_int_equal(state_of(cache, "a"), QB_ENOTFOUND);
    assert_int_equal(state_of(cache, "b"), QB_EAGAIN);
    qb_command_cache_free(cache);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lifecycle),
        cmocka_unit_test(test_eviction_order),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_small_capacity),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
