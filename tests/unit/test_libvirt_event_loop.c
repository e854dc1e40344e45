/*
 * test_libvirt_event_loop.c - libvirt's event API on the libuv loop
 * (bridge/libvirt_event_loop.c), driven through libvirt's public
 * virEventAddHandle & co., which dispatch to the registered implementation.
 *
 * libvirt keeps one implementation per process, so all tests share one loop;
 * the group teardown shuts the implementation down and checks the loop closes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "libvirt_event_loop.h"
#include "libvirt_worker.h"
#include "log.h"

#include <libvirt/libvirt.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static uv_loop_t loop;
static uv_timer_t guard;      /* bounds every wait */
static uv_check_t iterations; /* counts loop iterations */
static int n_iterations;
static bool guard_expired;
static pthread_t main_thread;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_expired = true;
    uv_stop(&loop);
}

static void on_check(uv_check_t *c)
{
    (void)c;
    n_iterations++;
}

/* Runs the loop until *counter >= want or ms pass. Returns true when reached. */
static bool run_until(const int *counter, int want, uint64_t ms)
{
    guard_expired = false;
    uv_timer_start(&guard, on_guard, ms, 0);
    while (*counter < want && !guard_expired)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
    return *counter >= want;
}

/* Runs the loop for ms, whatever happens. */
static void run_for(uint64_t ms)
{
    static const int never = 0;

    run_until(&never, 1, ms);
}

/* ---- a recording callback for watches ---- */

struct rec {
    int calls;
    int last_watch, last_fd, last_events;
    bool wrong_thread;
    int frees;
    bool freed_wrong_thread;
    bool in_remove; /* set around remove calls: a free inside one is a failure */
    bool freed_in_remove;
    bool remove_self; /* the callback removes its own watch */
};

static void rec_handle(int watch, int fd, int events, void *opaque)
{
    struct rec *r = opaque;

    r->calls++;
    r->last_watch = watch;
    r->last_fd = fd;
    r->last_events = events;
    if (!pthread_equal(pthread_self(), main_thread))
        r->wrong_thread = true;
    if (r->remove_self) {
        r->in_remove = true;
        assert_int_equal(virEventRemoveHandle(watch), 0);
        r->in_remove = false;
    }
}

static void rec_timeout(int timer, void *opaque)
{
    struct rec *r = opaque;

    r->calls++;
    r->last_watch = timer;
    if (!pthread_equal(pthread_self(), main_thread))
        r->wrong_thread = true;
}

static void rec_free(void *opaque)
{
    struct rec *r = opaque;

    r->frees++;
    if (r->in_remove)
        r->freed_in_remove = true;
    if (!pthread_equal(pthread_self(), main_thread))
        r->freed_wrong_thread = true;
}

static int remove_watch(struct rec *r, int watch)
{
    int rc;

    r->in_remove = true;
    rc = virEventRemoveHandle(watch);
    r->in_remove = false;
    return rc;
}

static int group_setup(void **state)
{
    (void)state;
    main_thread = pthread_self();
    if (getenv("QB_TEST_DEBUG"))
        qb_log_set_level(QB_LOG_DEBUG);
    assert_int_equal(uv_loop_init(&loop), 0);
    uv_timer_init(&loop, &guard);
    uv_check_init(&loop, &iterations);
    uv_check_start(&iterations, on_check);
    uv_unref((uv_handle_t *)&iterations);
    assert_int_equal(qb_libvirt_event_loop_install(&loop), QB_OK);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    qb_libvirt_event_loop_shutdown();
    assert_int_equal(virEventAddTimeout(10, rec_timeout, NULL, NULL), -1);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_close((uv_handle_t *)&iterations, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* every handle of the implementation is closed */
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static void test_install_once(void **state)
{
    uv_loop_t other;

    (void)state;
    assert_int_equal(qb_libvirt_event_loop_install(&loop), QB_OK);
    assert_int_equal(uv_loop_init(&other), 0);
    assert_int_equal(qb_libvirt_event_loop_install(&other), QB_EBUSY);
    assert_int_equal(uv_loop_close(&other), 0);
}

static void test_handle_readable_update_remove(void **state)
{
    struct rec r = {0};
    int p[2], watch, before;

    (void)state;
    assert_int_equal(pipe(p), 0);
    watch = virEventAddHandle(p[0], VIR_EVENT_HANDLE_READABLE, rec_handle, &r, rec_free);
    assert_true(watch > 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_true(run_until(&r.calls, 1, 2000));
    assert_int_equal(r.last_watch, watch);
    assert_int_equal(r.last_fd, p[0]);
    assert_int_equal(r.last_events, VIR_EVENT_HANDLE_READABLE);
    assert_false(r.wrong_thread);

    /* level-triggered: the unread byte keeps it firing, until events 0 stops it */
    assert_true(run_until(&r.calls, 3, 2000));
    virEventUpdateHandle(watch, 0);
    before = r.calls;
    run_for(50);
    assert_int_equal(r.calls, before);
    virEventUpdateHandle(watch, VIR_EVENT_HANDLE_READABLE);
    assert_true(run_until(&r.calls, before + 1, 2000));

    /* remove: no free inside the call, none firing after it, one free later */
    assert_int_equal(remove_watch(&r, watch), 0);
    assert_int_equal(r.frees, 0);
    before = r.calls;
    assert_true(run_until(&r.frees, 1, 2000));
    run_for(30);
    assert_int_equal(r.calls, before);
    assert_int_equal(r.frees, 1);
    assert_false(r.freed_wrong_thread);
    assert_false(r.freed_in_remove);
    assert_int_equal(remove_watch(&r, watch), -1);
    close(p[0]);
    close(p[1]);
}

static void test_handle_remove_in_callback(void **state)
{
    struct rec r = {.remove_self = true};
    int p[2];

    (void)state;
    assert_int_equal(pipe(p), 0);
    assert_true(virEventAddHandle(p[0], VIR_EVENT_HANDLE_READABLE, rec_handle, &r, rec_free) > 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_true(run_until(&r.frees, 1, 2000));
    run_for(30);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.frees, 1);
    assert_false(r.freed_in_remove);
    close(p[0]);
    close(p[1]);
}

static void test_handle_hangup(void **state)
{
    struct rec r = {0};
    int p[2], watch;

    (void)state;
    assert_int_equal(pipe(p), 0);
    watch = virEventAddHandle(p[0], VIR_EVENT_HANDLE_READABLE, rec_handle, &r, rec_free);
    close(p[1]);
    assert_true(run_until(&r.calls, 1, 2000));
    /* a closed pipe reads as EOF: readable, as poll(2) reports it */
    assert_true(r.last_events & VIR_EVENT_HANDLE_READABLE);
    assert_int_equal(virEventRemoveHandle(watch), 0);
    assert_true(run_until(&r.frees, 1, 2000));
    close(p[0]);
}

/* Two watches on one fd (libvirt allows disjoint event sets): one uv_poll serves both. */
static void test_handle_shared_fd(void **state)
{
    struct rec rd = {0}, wr = {0};
    int sp[2], wrd, wwr, before;

    (void)state;
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    wrd = virEventAddHandle(sp[0], VIR_EVENT_HANDLE_READABLE, rec_handle, &rd, rec_free);
    wwr = virEventAddHandle(sp[0], VIR_EVENT_HANDLE_WRITABLE, rec_handle, &wr, rec_free);
    assert_true(wrd > 0 && wwr > 0 && wrd != wwr);
    assert_true(run_until(&wr.calls, 1, 2000));
    assert_int_equal(wr.last_events, VIR_EVENT_HANDLE_WRITABLE);
    assert_int_equal(rd.calls, 0);
    assert_int_equal(write(sp[1], "x", 1), 1);
    assert_true(run_until(&rd.calls, 1, 2000));
    assert_int_equal(rd.last_events, VIR_EVENT_HANDLE_READABLE);
    assert_int_equal(rd.last_watch, wrd);

    /* removing the writer leaves the reader polled, and frees only the writer's data */
    assert_int_equal(remove_watch(&wr, wwr), 0);
    assert_true(run_until(&wr.frees, 1, 2000));
    before = wr.calls;
    /* the unread "x" keeps the socket readable: the reader must keep firing */
    assert_true(run_until(&rd.calls, rd.calls + 2, 2000));
    assert_int_equal(wr.calls, before);
    assert_int_equal(rd.frees, 0);
    assert_int_equal(remove_watch(&rd, wrd), 0);
    assert_true(run_until(&rd.frees, 1, 2000));
    assert_false(wr.freed_in_remove || rd.freed_in_remove);
    close(sp[0]);
    close(sp[1]);
}

static void test_timeout_period(void **state)
{
    struct rec r = {0};
    int timer;

    (void)state;
    timer = virEventAddTimeout(10, rec_timeout, &r, rec_free);
    assert_true(timer > 0);
    run_for(105);
    /* about ten; loose bounds for a busy machine */
    assert_in_range(r.calls, 3, 12);
    assert_int_equal(r.last_watch, timer);
    assert_false(r.wrong_thread);
    r.in_remove = true;
    assert_int_equal(virEventRemoveTimeout(timer), 0);
    r.in_remove = false;
    assert_int_equal(r.frees, 0);
    assert_true(run_until(&r.frees, 1, 2000));
    assert_false(r.freed_in_remove);
    assert_int_equal(virEventRemoveTimeout(timer), -1);
}

static void test_timeout_zero_and_disable(void **state)
{
    struct rec r = {0};
    int timer, base, calls;

    (void)state;
    timer = virEventAddTimeout(-1, rec_timeout, &r, rec_free);
    run_for(30);
    assert_int_equal(r.calls, 0);

    /* 0: once per iteration */
    virEventUpdateTimeout(timer, 0);
    run_for(5); /* the wake-up applies it (alone it does not keep the loop alive) */
    base = r.calls;
    for (int i = 0; i < 10; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(r.calls - base, 10);

    /* -1: stops at once, and the loop blocks again instead of spinning */
    virEventUpdateTimeout(timer, -1);
    calls = r.calls;
    base = n_iterations;
    run_for(100);
    assert_int_equal(r.calls, calls);
    assert_in_range(n_iterations - base, 0, 5);

    /* a period again */
    virEventUpdateTimeout(timer, 5);
    assert_true(run_until(&r.calls, calls + 2, 2000));
    assert_int_equal(virEventRemoveTimeout(timer), 0);
    assert_true(run_until(&r.frees, 1, 2000));
}

/* ---- calls from another thread: they must wake a loop blocked in epoll ---- */

struct thread_job {
    int fd;
    struct rec *r;
    int watch;
    int timer;
    int op; /* 0 add watch, 1 update watch to 0, 2 remove watch, 3 add timeout 0, 4 remove it */
    int rc; /* of a remove (no cmocka asserts off the main thread) */
};

static void *thread_main(void *opaque)
{
    struct thread_job *j = opaque;

    usleep(20 * 1000); /* let the loop block first */
    switch (j->op) {
    case 0:
        j->watch = virEventAddHandle(j->fd, VIR_EVENT_HANDLE_READABLE, rec_handle, j->r, rec_free);
        break;
    case 1:
        virEventUpdateHandle(j->watch, 0);
        break;
    case 2:
        j->rc = virEventRemoveHandle(j->watch);
        break;
    case 3:
        j->timer = virEventAddTimeout(0, rec_timeout, j->r, rec_free);
        break;
    case 4:
        j->rc = virEventRemoveTimeout(j->timer);
        break;
    }
    return NULL;
}

static void run_thread_op(struct thread_job *j, int op)
{
    pthread_t t;

    j->op = op;
    assert_int_equal(pthread_create(&t, NULL, thread_main, j), 0);
    run_for(80); /* the loop is blocked in poll when the thread calls */
    assert_int_equal(pthread_join(t, NULL), 0);
}

static void test_calls_from_another_thread(void **state)
{
    struct rec r = {0}, tr = {0};
    struct thread_job j = {.r = &r}, tj = {.r = &tr};
    int p[2], calls;

    (void)state;
    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    j.fd = p[0];
    run_thread_op(&j, 0);
    assert_true(j.watch > 0);
    assert_true(r.calls >= 1);
    assert_int_equal(r.last_fd, p[0]);
    assert_false(r.wrong_thread);

    run_thread_op(&j, 1);
    calls = r.calls;
    run_for(30);
    assert_int_equal(r.calls, calls);

    run_thread_op(&j, 2);
    assert_int_equal(j.rc, 0);
    assert_int_equal(r.frees, 1);
    assert_false(r.freed_wrong_thread);

    run_thread_op(&tj, 3);
    assert_true(tj.timer > 0);
    assert_true(tr.calls > 1);
    run_thread_op(&tj, 4);
    assert_int_equal(tj.rc, 0);
    calls = tr.calls;
    run_for(30);
    assert_int_equal(tr.calls, calls);
    assert_int_equal(tr.frees, 1);
    assert_false(tr.wrong_thread || tr.freed_wrong_thread);
    close(p[0]);
    close(p[1]);
}

/* More removals than one pass frees: every free callback still comes, once. */
static void test_many_removals(void **state)
{
    struct rec r = {0};
    int ids[150];

    (void)state;
    for (int i = 0; i < 150; i++)
        ids[i] = virEventAddTimeout(-1, rec_timeout, &r, rec_free);
    run_for(5);
    for (int i = 0; i < 150; i++)
        assert_int_equal(virEventRemoveTimeout(ids[i]), 0);
    for (int i = 0; i < 150; i++)
        ids[i] = virEventAddTimeout(-1, rec_timeout, &r, rec_free); /* never applied */
    for (int i = 0; i < 150; i++)
        assert_int_equal(virEventRemoveTimeout(ids[i]), 0);
    assert_true(run_until(&r.frees, 300, 2000));
    run_for(10);
    assert_int_equal(r.frees, 300);
}

/* ---- both modules with libvirt itself: its in-process test driver, no daemon ---- */

struct driver_run {
    virConnectPtr conn;
    int lifecycle_events;
    int last_event;
    bool event_off_main;
    int jobs_done;
    int suspend_rc;
    int worker_closed;
};

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    struct driver_run *d = opaque;

    (void)conn;
    (void)dom;
    (void)detail;
    d->lifecycle_events++;
    d->last_event = event;
    if (!pthread_equal(pthread_self(), main_thread))
        d->event_off_main = true;
    return 0;
}

/* worker thread: a blocking API call, which queues a domain event inside libvirt */
static void work_suspend(void *arg)
{
    struct driver_run *d = arg;
    virDomainPtr dom = virDomainLookupByName(d->conn, "test");

    d->suspend_rc = dom ? virDomainSuspend(dom) : -1;
    if (dom)
        virDomainFree(dom);
}

static void done_count(void *arg, bool cancelled)
{
    struct driver_run *d = arg;

    assert_false(cancelled);
    d->jobs_done++;
}

static void on_worker_closed(void *arg)
{
    ((struct driver_run *)arg)->worker_closed++;
}

static void test_libvirt_test_driver(void **state)
{
    struct driver_run d = {0};
    struct qb_libvirt_worker *w;
    int cb;

    (void)state;
    d.conn = virConnectOpen("test:///default");
    if (!d.conn)
        skip();
    cb = virConnectDomainEventRegisterAny(d.conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                          VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), &d, NULL);
    assert_true(cb >= 0);
    assert_int_equal(qb_libvirt_worker_create(&loop, 4, &w), QB_OK);
    assert_int_equal(qb_libvirt_worker_submit(w, work_suspend, done_count, &d), QB_OK);
    assert_true(run_until(&d.lifecycle_events, 1, 5000));
    assert_true(run_until(&d.jobs_done, 1, 5000));
    assert_int_equal(d.suspend_rc, 0);
    assert_int_equal(d.last_event, VIR_DOMAIN_EVENT_SUSPENDED);
    assert_false(d.event_off_main);
    assert_int_equal(qb_libvirt_worker_close(w, on_worker_closed, &d), QB_OK);
    assert_true(run_until(&d.worker_closed, 1, 5000));
    assert_int_equal(virConnectDomainEventDeregisterAny(d.conn, cb), 0);
    assert_int_equal(virConnectClose(d.conn), 0);
    run_for(20); /* the free callbacks of the connection's timeout */
}

static void test_unknown_ids(void **state)
{
    (void)state;
    assert_int_equal(virEventRemoveHandle(123456), -1);
    assert_int_equal(virEventRemoveHandle(-1), -1);
    assert_int_equal(virEventRemoveTimeout(123456), -1);
    assert_int_equal(virEventRemoveTimeout(0), -1);
    virEventUpdateHandle(123456, VIR_EVENT_HANDLE_READABLE);
    virEventUpdateTimeout(123456, 5);
    assert_int_equal(virEventAddHandle(-1, VIR_EVENT_HANDLE_READABLE, rec_handle, NULL, NULL), -1);
    run_for(10);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_install_once),
        cmocka_unit_test(test_handle_readable_update_remove),
        cmocka_unit_test(test_handle_remove_in_callback),
        cmocka_unit_test(test_handle_hangup),
        cmocka_unit_test(test_handle_shared_fd),
        cmocka_unit_test(test_timeout_period),
        cmocka_unit_test(test_timeout_zero_and_disable),
        cmocka_unit_test(test_calls_from_another_thread),
        cmocka_unit_test(test_many_removals),
        cmocka_unit_test(test_libvirt_test_driver),
        cmocka_unit_test(test_unknown_ids),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
