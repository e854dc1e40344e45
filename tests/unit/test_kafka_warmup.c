/*
 * test_kafka_warmup.c - the metadata request on a topic's first use
 * (transports/kafka_warmup.c) against librdkafka's in-process mock cluster:
 * each topic is asked for once and one at a time, a close while a request
 * runs waits for it, and a failed request leaves the queued topics to the
 * scan. Whether the answer spares the first messages their wait is measured
 * by the coldstart benchmark (--cold-topic), not asserted here.
 */
#include "kafka_warmup.h"
#include "log.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#define GUARD_MS 120000 /* a scenario that hangs fails instead of blocking ctest */
/*
 * The requests to the mock cluster may take this long: on a loaded machine the
 * first one (connection, versions, metadata) can take far longer than the
 * transport's 1 s, and a timeout would be the machine, not the warm-up. The
 * unreachable cluster fails at once (connection refused) or at this bound.
 */
#define REQUEST_MS 60000

struct harness {
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mc;
    rd_kafka_t *rk; /* the producer under test */
    uv_loop_t loop;
    uv_timer_t guard;
    int done_calls;
};

static void on_guard(uv_timer_t *t)
{
    (void)t;
    fail_msg("scenario did not finish within %d ms", GUARD_MS);
}

static rd_kafka_t *producer(const char *brokers)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(rk);
    return rk;
}

static int setup(void **state)
{
    char errstr[256];
    struct harness *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    qb_log_set_level(getenv("QB_TEST_DEBUG") ? QB_LOG_DEBUG : QB_LOG_WARN);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    h->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(h->mock_rk);
    h->mc = rd_kafka_mock_cluster_new(h->mock_rk, 3);
    assert_non_null(h->mc);
    assert_int_equal(rd_kafka_mock_topic_create(h->mc, "qmp.vm-1", 4, 3), 0);
    assert_int_equal(rd_kafka_mock_topic_create(h->mc, "qmp.vm-2", 2, 3), 0);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    uv_timer_init(&h->loop, &h->guard);
    uv_timer_start(&h->guard, on_guard, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&h->guard);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct harness *h = *state;
    if (h->rk)
        rd_kafka_destroy(h->rk);
    uv_close((uv_handle_t *)&h->guard, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    rd_kafka_mock_cluster_destroy(h->mc);
    rd_kafka_destroy(h->mock_rk);
    free(h);
    return 0;
}

static void on_done(void *arg)
{
    struct harness *h = arg;
    h->done_calls++;
}

/* Runs the loop until the warm-up has no request running (it asked for n in all). */
static struct qb_kafka_warmup_stats stats(const struct qb_kafka_warmup *w)
{
    struct qb_kafka_warmup_stats st;
    qb_kafka_warmup_get_stats(w, &st);
    return st;
}

static void run_until_asked(struct harness *h, struct qb_kafka_warmup *w, size_t n)
{
    while (stats(w).asked < n || stats(w).busy)
        uv_run(&h->loop, UV_RUN_ONCE);
}

/* A producer on brokers and a warm-up for it whose requests may take timeout_ms. */
static struct qb_kafka_warmup *start(struct harness *h, const char *brokers, int timeout_ms)
{
    h->rk = producer(brokers);
    struct qb_kafka_warmup *w = qb_kafka_warmup_new(&h->loop, h->rk, "t", timeout_ms);
    assert_non_null(w);
    return w;
}

/* Closes w and runs the loop until its done callback came, which must be once. */
static void close_and_wait(struct harness *h, struct qb_kafka_warmup *w)
{
    qb_kafka_warmup_close(w, on_done, h);
    while (h->done_calls == 0)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_int_equal(h->done_calls, 1);
}

static void each_topic_once(void **state)
{
    struct harness *h = *state;
    struct qb_kafka_warmup *w = start(h, rd_kafka_mock_cluster_bootstraps(h->mc), REQUEST_MS);

    qb_kafka_warmup_note(w, "qmp.vm-1");
    qb_kafka_warmup_note(w, "qmp.vm-1"); /* queued or running: not again */
    qb_kafka_warmup_note(w, "qmp.vm-2");
    run_until_asked(h, w, 2);
    assert_int_equal(stats(w).asked, 2);
    assert_int_equal(stats(w).fetched, 2); /* the cluster answered both */

    qb_kafka_warmup_note(w, "qmp.vm-2"); /* seen: nothing more to ask */
    assert_false(stats(w).busy);
    assert_int_equal(stats(w).asked, 2);

    qb_kafka_warmup_close(w, on_done, h);
    assert_int_equal(h->done_calls, 1); /* nothing running: at once */
}

static void close_waits_for_running_request(void **state)
{
    struct harness *h = *state;
    struct qb_kafka_warmup *w = start(h, rd_kafka_mock_cluster_bootstraps(h->mc), REQUEST_MS);

    qb_kafka_warmup_note(w, "qmp.vm-1");
    qb_kafka_warmup_note(w, "qmp.vm-2");
    assert_true(stats(w).busy);
    assert_int_equal(stats(w).asked, 1); /* one at a time: the second waits its turn */
    qb_kafka_warmup_close(w, on_done, h);
    /* the producer must stay alive until done: the running request uses it */
    assert_int_equal(h->done_calls, 0);
    while (h->done_calls == 0)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_int_equal(h->done_calls, 1);
}

static void failed_request_leaves_the_rest_to_the_scan(void **state)
{
    struct harness *h = *state;
    /* nothing listens there: the request fails whatever the machine's speed */
    struct qb_kafka_warmup *w = start(h, "127.0.0.1:1", 500);

    qb_kafka_warmup_note(w, "qmp.vm-1");
    qb_kafka_warmup_note(w, "qmp.vm-2");
    qb_kafka_warmup_note(w, "qmp.vm-3");
    run_until_asked(h, w, 1);
    assert_int_equal(stats(w).asked, 1); /* vm-2 and vm-3 were dropped with the failure */
    assert_int_equal(stats(w).fetched, 0);
    assert_false(stats(w).busy);
    /* and they stay left: noted again, a seen topic is not queued again */
    qb_kafka_warmup_note(w, "qmp.vm-2");
    assert_false(stats(w).busy);
    /* a topic not seen before is asked for */
    qb_kafka_warmup_note(w, "qmp.vm-4");
    assert_true(stats(w).busy);
    assert_int_equal(stats(w).asked, 2);
    close_and_wait(h, w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(each_topic_once, setup, teardown),
        cmocka_unit_test_setup_teardown(close_waits_for_running_request, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_request_leaves_the_rest_to_the_scan, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
