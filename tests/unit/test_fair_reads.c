/*
 * test_fair_reads.c - the per-turn parking list on a real loop.
 *
 * Entries parked during a turn are resumed once, in park order, by the check
 * that follows the poll phase; an entry taken off before that (its session
 * closed) is never resumed; the check handle runs only while something is
 * parked, so an idle loop has nothing of ours to run; close frees everything
 * (ASan reports a leak, uv_loop_close a forgotten handle).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "fair_reads.h"

struct rec {
    struct qb_fair_entry e; /* first: resume casts back */
    int id;
    int resumed;
};

static int order[8];
static int n_order;

static void on_resume(struct qb_fair_entry *e)
{
    struct rec *r = (struct rec *)e;

    r->resumed++;
    order[n_order++] = r->id;
}

static void test_park_resume_unpark(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct qb_fair_reads *f;
    struct rec r[3] = {{.id = 1}, {.id = 2}, {.id = 3}};

    n_order = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_fair_reads_new(&loop, &f), QB_OK);
    for (int i = 0; i < 3; i++) {
        r[i].e.resume = on_resume;
        qb_fair_reads_park(f, &r[i].e);
    }
    qb_fair_reads_park(f, &r[0].e); /* twice: still once */
    assert_int_equal(qb_fair_reads_parked(f), 3);
    qb_fair_reads_unpark(f, &r[1].e); /* its session closed */
    qb_fair_reads_unpark(f, &r[1].e); /* no-op */
    assert_int_equal(qb_fair_reads_parked(f), 2);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(qb_fair_reads_parked(f), 0);
    assert_int_equal(n_order, 2);
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 3);
    assert_int_equal(r[0].resumed, 1);
    assert_int_equal(r[1].resumed, 0);
    assert_false(r[0].e.parked);
    /* nothing parked: the check is stopped, so the loop has nothing alive of ours */
    assert_int_equal(uv_loop_alive(&loop), 0);
    qb_fair_reads_close(f);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_resume_quiet(struct qb_fair_entry *e)
{
    (void)e;
}

/* The next turn's read size: about 1 MiB over the sessions that were busy in this one. */
static void test_chunk_follows_busy_sessions(void **state)
{
    (void)state;
    uv_loop_t loop;
    struct qb_fair_reads *f;
    static struct rec r[300];
    const struct {
        size_t parked, chunk;
    } cases[] = {{1, 65536}, {32, 32768}, {100, 10485}, {300, 4096}, {0, 4096}, {2, 65536}};

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_fair_reads_new(&loop, &f), QB_OK);
    assert_int_equal(qb_fair_reads_chunk(f), QB_FAIR_CHUNK_MAX);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (size_t i = 0; i < cases[c].parked; i++) {
            r[i].e.resume = on_resume_quiet;
            qb_fair_reads_park(f, &r[i].e);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        /* a turn without parked sessions runs no check: the size stays until one parks */
        assert_int_equal(qb_fair_reads_chunk(f), cases[c].chunk);
    }
    qb_fair_reads_close(f);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_close_null(void **state)
{
    (void)state;
    qb_fair_reads_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_park_resume_unpark),
        cmocka_unit_test(test_chunk_follows_busy_sessions),
        cmocka_unit_test(test_close_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
