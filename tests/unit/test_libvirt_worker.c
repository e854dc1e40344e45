/*
 * test_libvirt_worker.c - the job thread for blocking libvirt calls
 * (bridge/libvirt_worker.c): order, threads, the bounded queue, close.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "libvirt_worker.h"

#include <pthread.h>
#include <semaphore.h>
#include <string.h>

#define N_JOBS 8

static uv_loop_t loop;
static uv_timer_t guard;
static bool guard_expired;
static pthread_t main_thread;

/* What the jobs of one test record. work_* is written on the worker thread only. */
static struct {
    int work_order[N_JOBS];
    int n_work;
    bool work_on_main;
    int done_order[N_JOBS];
    bool done_cancelled[N_JOBS];
    int n_done;
    int done_calls[N_JOBS];
    bool done_off_main;
    int closed;
    int dones_at_closed;
    sem_t started; /* posted by a blocking job when it starts */
    sem_t release; /* the blocking job waits for it */
} rec;

static int ids[N_JOBS];

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_expired = true;
    uv_stop(&loop);
}

static bool run_until(const int *counter, int want, uint64_t ms)
{
    guard_expired = false;
    uv_timer_start(&guard, on_guard, ms, 0);
    while (*counter < want && !guard_expired)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
    return *counter >= want;
}

static void work_record(void *arg)
{
    int id = *(int *)arg;

    if (pthread_equal(pthread_self(), main_thread))
        rec.work_on_main = true;
    rec.work_order[rec.n_work++] = id;
}

static void work_block(void *arg)
{
    sem_post(&rec.started);
    sem_wait(&rec.release);
    work_record(arg);
}

static void done_record(void *arg, bool cancelled)
{
    int id = *(int *)arg;

    if (!pthread_equal(pthread_self(), main_thread))
        rec.done_off_main = true;
    rec.done_calls[id]++;
    rec.done_cancelled[rec.n_done] = cancelled;
    rec.done_order[rec.n_done++] = id;
}

static void on_closed(void *arg)
{
    (void)arg;
    rec.closed++;
    rec.dones_at_closed = rec.n_done;
}

static int setup(void **state)
{
    (void)state;
    memset(&rec, 0, sizeof(rec));
    sem_init(&rec.started, 0, 0);
    sem_init(&rec.release, 0, 0);
    for (int i = 0; i < N_JOBS; i++)
        ids[i] = i;
    main_thread = pthread_self();
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    sem_destroy(&rec.started);
    sem_destroy(&rec.release);
    return 0;
}

static void test_order_and_threads(void **state)
{
    struct qb_libvirt_worker *w;
    struct qb_libvirt_worker_stats st;

    (void)state;
    assert_int_equal(qb_libvirt_worker_create(&loop, N_JOBS, &w), QB_OK);
    for (int i = 0; i < N_JOBS; i++)
        assert_int_equal(qb_libvirt_worker_submit(w, work_record, done_record, &ids[i]), QB_OK);
    assert_true(run_until(&rec.n_done, N_JOBS, 5000));
    for (int i = 0; i < N_JOBS; i++) {
        assert_int_equal(rec.work_order[i], i);
        assert_int_equal(rec.done_order[i], i);
        assert_false(rec.done_cancelled[i]);
    }
    assert_false(rec.work_on_main);
    assert_false(rec.done_off_main);
    qb_libvirt_worker_stats(w, &st);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.completed, N_JOBS);
    assert_int_equal(qb_libvirt_worker_close(w, on_closed, NULL), QB_OK);
    assert_true(run_until(&rec.closed, 1, 5000));
}

static void on_tick(uv_timer_t *t)
{
    (*(int *)t->data)++;
}

/* A job blocked in "libvirt": the loop runs on, the queue fills, close cancels the rest. */
static void test_blocked_job_full_queue_close(void **state)
{
    struct qb_libvirt_worker *w;
    struct qb_libvirt_worker_stats st;
    static uv_timer_t tick; /* closed by the teardown's loop run, after this returns */
    int ticks = 0;

    (void)state;
    assert_int_equal(qb_libvirt_worker_create(&loop, 2, &w), QB_OK);
    assert_int_equal(qb_libvirt_worker_submit(w, work_block, done_record, &ids[0]), QB_OK);
    sem_wait(&rec.started);
    assert_int_equal(qb_libvirt_worker_submit(w, work_record, done_record, &ids[1]), QB_OK);
    assert_int_equal(qb_libvirt_worker_submit(w, work_record, done_record, &ids[2]), QB_OK);
    assert_int_equal(qb_libvirt_worker_submit(w, work_record, done_record, &ids[3]), QB_EAGAIN);
    qb_libvirt_worker_stats(w, &st);
    assert_int_equal(st.queued, 2);
    assert_int_equal(st.running, 1);
    assert_int_equal(st.rejected, 1);

    /* the loop keeps running its timers meanwhile */
    uv_timer_init(&loop, &tick);
    tick.data = &ticks;
    uv_timer_start(&tick, on_tick, 5, 5);
    assert_true(run_until(&ticks, 5, 2000));
    assert_int_equal(rec.n_done, 0);

    assert_int_equal(qb_libvirt_worker_close(w, on_closed, NULL), QB_OK);
    assert_int_equal(qb_libvirt_worker_close(w, on_closed, NULL), QB_ECLOSED);
    assert_int_equal(qb_libvirt_worker_submit(w, work_record, done_record, &ids[4]), QB_ECLOSED);
    assert_int_equal(rec.n_done, 0); /* nothing inside close */
    ticks = 0;
    assert_true(run_until(&ticks, 3, 2000));
    assert_int_equal(rec.closed, 0); /* the blocked job holds the thread */

    sem_post(&rec.release);
    assert_true(run_until(&rec.closed, 1, 5000));
    assert_int_equal(rec.n_done, 3);
    assert_int_equal(rec.dones_at_closed, 3);
    assert_int_equal(rec.n_work, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rec.done_order[i], i);
        assert_int_equal(rec.done_calls[i], 1);
        assert_int_equal(rec.done_cancelled[i], i > 0);
    }
    assert_int_equal(rec.done_calls[3], 0);
    assert_int_equal(rec.done_calls[4], 0);
    uv_close((uv_handle_t *)&tick, NULL);
}

static void test_close_idle(void **state)
{
    struct qb_libvirt_worker *w;

    (void)state;
    assert_int_equal(qb_libvirt_worker_create(&loop, 1, &w), QB_OK);
    assert_int_equal(qb_libvirt_worker_close(w, NULL, NULL), QB_OK);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the worker's handle is closed */
    assert_int_equal(qb_libvirt_worker_create(&loop, 0, &w), QB_EINVAL);
    assert_null(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_blocked_job_full_queue_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_idle, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
