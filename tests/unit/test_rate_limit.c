/*
 * test_rate_limit.c - token bucket and log limiter (bridge/rate_limit.c), on a fake clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rate_limit.h"

static void test_bucket(void **state)
{
    struct qb_token_bucket b;
    int taken = 0;

    (void)state;
    qb_token_bucket_init(&b, 10.0, 20.0, 1000);
    for (int i = 0; i < 100; i++)
        taken += qb_token_bucket_take(&b, 1000);
    assert_int_equal(taken, 20); /* the burst */
    assert_false(qb_token_bucket_take(&b, 1050)); /* half a token */
    assert_true(qb_token_bucket_take(&b, 1100));
    assert_false(qb_token_bucket_take(&b, 1100));
    /* a long pause refills to the burst, no more */
    taken = 0;
    for (int i = 0; i < 100; i++)
        taken += qb_token_bucket_take(&b, 100000);
    assert_int_equal(taken, 20);
    /* a clock that goes back takes nothing away and gives nothing */
    assert_false(qb_token_bucket_take(&b, 500));
}

static void test_log_limit(void **state)
{
    struct qb_log_limit l;
    uint64_t suppressed = 99;
    int allowed = 0;

    (void)state;
    qb_log_limit_init(&l, 3, 1000);
    for (int i = 0; i < 10; i++) {
        allowed += qb_log_limit_allow(&l, 5000 + (uint64_t)i, &suppressed);
        assert_int_equal(suppressed, 0);
    }
    assert_int_equal(allowed, 3);
    /* the next interval reports the 7 suppressed, once */
    assert_true(qb_log_limit_allow(&l, 6000, &suppressed));
    assert_int_equal(suppressed, 7);
    assert_true(qb_log_limit_allow(&l, 6001, &suppressed));
    assert_int_equal(suppressed, 0);
    assert_true(qb_log_limit_allow(&l, 6002, NULL));
    assert_false(qb_log_limit_allow(&l, 6003, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_log_limit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
