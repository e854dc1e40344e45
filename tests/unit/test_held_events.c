/*
 * test_held_events.c - the bounded FIFO of held-back QMP event lines.
 *
 * Lines come out in the order they went in, parsed again; a push that would
 * pass either bound (events or line bytes, each checked at its exact edge) is
 * refused and changes nothing; wrapping around the ring and growing it keep
 * the order; move appends a whole queue to another; clear and a queue that
 * ran empty leave nothing allocated (ASan reports a leak).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "held_events.h"

/* Pushes {"event":"E","data":{"n":n}} and returns what push said; *len gets the line length. */
static int push_n(struct qb_held_events *q, int n, const struct qb_held_limits *lim, size_t *len)
{
    char line[64];
    int l = snprintf(line, sizeof(line), "{\"event\":\"E\",\"data\":{\"n\":%d}}", n);

    if (len)
        *len = (size_t)l;
    return qb_held_events_push(q, line, (size_t)l, lim);
}

/* Pops one event and returns its data.n, or -1 when the queue gave nothing. */
static int pop_n(struct qb_held_events *q)
{
    int lost = 0;
    json_t *msg = qb_held_events_pop(q, &lost);
    int n;

    assert_int_equal(lost, 0);
    if (!msg)
        return -1;
    n = (int)json_integer_value(json_object_get(json_object_get(msg, "data"), "n"));
    json_decref(msg);
    return n;
}

static void test_order_and_count_bound(void **state)
{
    (void)state;
    struct qb_held_events q = {0};
    struct qb_held_limits lim = {.max_events = 5, .max_bytes = 1 << 20};
    size_t len, total = 0;

    for (int i = 0; i < 5; i++) {
        assert_int_equal(push_n(&q, i, &lim, &len), QB_OK);
        total += len;
    }
    assert_int_equal(qb_held_events_count(&q), 5);
    assert_int_equal(qb_held_events_bytes(&q), total);
    /* the sixth would pass max_events: refused, nothing changed */
    assert_int_equal(push_n(&q, 5, &lim, NULL), QB_ETOOBIG);
    assert_int_equal(qb_held_events_count(&q), 5);
    assert_int_equal(qb_held_events_bytes(&q), total);
    for (int i = 0; i < 5; i++)
        assert_int_equal(pop_n(&q), i);
    assert_int_equal(qb_held_events_count(&q), 0);
    assert_int_equal(qb_held_events_bytes(&q), 0);
    assert_int_equal(pop_n(&q), -1);
    qb_held_events_clear(&q);
}

static void test_byte_bound_exact_edge(void **state)
{
    (void)state;
    struct qb_held_events q = {0};
    size_t len;
    struct qb_held_limits probe = {.max_events = 100, .max_bytes = 1 << 20};

    assert_int_equal(push_n(&q, 1, &probe, &len), QB_OK); /* every line here has this length */
    qb_held_events_clear(&q);

    /* exactly three lines fit; the fourth's first byte would not */
    struct qb_held_limits lim = {.max_events = 100, .max_bytes = 3 * len};
    for (int i = 1; i <= 3; i++)
        assert_int_equal(push_n(&q, i, &lim, NULL), QB_OK);
    assert_int_equal(qb_held_events_bytes(&q), 3 * len);
    assert_int_equal(push_n(&q, 4, &lim, NULL), QB_ETOOBIG);
    /* one out, one more fits again */
    assert_int_equal(pop_n(&q), 1);
    assert_int_equal(push_n(&q, 4, &lim, NULL), QB_OK);
    /* a single line longer than the whole bound never fits */
    struct qb_held_limits tiny = {.max_events = 100, .max_bytes = len - 1};
    struct qb_held_events e = {0};
    assert_int_equal(push_n(&e, 9, &tiny, NULL), QB_ETOOBIG);
    assert_int_equal(qb_held_events_count(&e), 0);
    for (int i = 2; i <= 4; i++)
        assert_int_equal(pop_n(&q), i);
    qb_held_events_clear(&q);
}

/* Pushes and pops interleaved so the ring wraps, grows while wrapped, and shrinks when empty. */
static void test_wrap_and_grow(void **state)
{
    (void)state;
    struct qb_held_events q = {0};
    struct qb_held_limits lim = {.max_events = 100000, .max_bytes = 1 << 24};
    int in = 0, out = 0;

    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 37; i++)
            assert_int_equal(push_n(&q, in++, &lim, NULL), QB_OK);
        for (int i = 0; i < 29; i++)
            assert_int_equal(pop_n(&q), out++);
    }
    assert_int_equal(qb_held_events_count(&q), (size_t)(in - out));
    while (out < in)
        assert_int_equal(pop_n(&q), out++);
    assert_int_equal(qb_held_events_count(&q), 0);
    assert_null(q.ring); /* a big ring is given back once empty */
    assert_int_equal(q.cap, 0);
}

static void test_move_and_clear(void **state)
{
    (void)state;
    struct qb_held_events a = {0}, b = {0};
    struct qb_held_limits lim = {.max_events = 1000, .max_bytes = 1 << 20};

    for (int i = 0; i < 3; i++)
        assert_int_equal(push_n(&a, i, &lim, NULL), QB_OK);
    for (int i = 3; i < 40; i++)
        assert_int_equal(push_n(&b, i, &lim, NULL), QB_OK);
    size_t bytes = qb_held_events_bytes(&a) + qb_held_events_bytes(&b);
    assert_int_equal(qb_held_events_move(&a, &b), QB_OK);
    assert_int_equal(qb_held_events_count(&b), 0);
    assert_int_equal(qb_held_events_bytes(&b), 0);
    assert_int_equal(qb_held_events_count(&a), 40);
    assert_int_equal(qb_held_events_bytes(&a), bytes);
    for (int i = 0; i < 20; i++)
        assert_int_equal(pop_n(&a), i);
    /* clear frees what is left; the queue is usable again */
    qb_held_events_clear(&a);
    assert_int_equal(qb_held_events_count(&a), 0);
    assert_int_equal(push_n(&a, 7, &lim, NULL), QB_OK);
    assert_int_equal(pop_n(&a), 7);
    qb_held_events_clear(&a);
    qb_held_events_clear(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_count_bound),
        cmocka_unit_test(test_byte_bound_exact_edge),
        cmocka_unit_test(test_wrap_and_grow),
        cmocka_unit_test(test_move_and_clear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
