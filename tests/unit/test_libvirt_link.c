/*
 * test_libvirt_link.c - one libvirt domain's link (bridge/libvirt_link.c)
 * against libvirt's own test driver (test:///default, in-process: a running
 * domain "test" that takes suspend and resume), with the real worker thread.
 *
 * What it pins down: a command answered early because its session ended
 * never changes the domain afterwards. The worker runs jobs one at a time, so
 * a command can wait behind another job (a slow query of another domain)
 * while the manager ends its session; the answer then says "rejected"
 * (nothing changed), and the worker, when it gets to the command, must not
 * send it. And a session the manager closes (it held too much) opens again
 * only after the back-off of qmp.reconnect_initial / reconnect_max, growing
 * while the manager keeps closing it, as a socket's reconnect does: a VM that
 * floods must not make the bridge resync it in a tight loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "command.h"
#include "config.h"
#include "error.h"
#include "libvirt_link.h"
#include "libvirt_worker.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <semaphore.h>
#include <string.h>

static uv_loop_t loop;
static uv_timer_t guard;
static bool guard_expired;
static struct qb_config cfg; /* zero: no command limits, no held events */

static struct {
    int up, closed, results, blocker_done;
    json_t *result; /* the last command result (owned here) */
    sem_t started, release;
} rec;

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

static void link_on_up(void *arg, struct qb_held_events *early)
{
    (void)arg;
    (void)early;
    rec.up++;
}

static void link_on_event(void *arg, const struct qb_source_event *ev)
{
    (void)arg;
    (void)ev;
}

static void link_on_closed(void *arg, int err, const char *reason)
{
    (void)arg;
    (void)err;
    (void)reason;
    rec.closed++;
}

static void link_on_gone(void *arg, const char *why)
{
    (void)arg;
    (void)why;
}

static void link_on_released(void *arg)
{
    (void)arg;
}

static const struct qb_source_link_cbs cbs = {
    .on_up = link_on_up,
    .on_event = link_on_event,
    .on_closed = link_on_closed,
    .on_gone = link_on_gone,
    .on_released = link_on_released,
};

static void sh_wake(void *arg)
{
    (void)arg;
}

static void sh_forget(void *arg, struct qb_lv_link *l)
{
    (void)arg;
    (void)l;
}

/* Takes res (the link's: a new reference). */
static void on_result(void *arg, json_t *res)
{
    (void)arg;
    json_decref(rec.result);
    rec.result = res;
    rec.results++;
}

/* Another job on the shared worker, blocked until the test lets it go. */
static void work_block(void *arg)
{
    (void)arg;
    sem_post(&rec.started);
    sem_wait(&rec.release);
}

static void done_block(void *arg, bool cancelled)
{
    (void)arg;
    (void)cancelled;
    rec.blocker_done++;
}

struct fixture {
    virConnectPtr conn;
    virDomainPtr dom;
    struct qb_libvirt_worker *worker;
    struct qb_lv_shared sh;
    struct qb_lv_link *link;
};

static void quiet_libvirt(void *arg, virErrorPtr err)
{
    (void)arg;
    (void)err;
}

static int setup(void **state)
{
    static struct fixture f;

    memset(&f, 0, sizeof(f));
    memset(&rec, 0, sizeof(rec));
    memset(&cfg, 0, sizeof(cfg));
    sem_init(&rec.started, 0, 0);
    sem_init(&rec.release, 0, 0);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &guard);
    virSetErrorFunc(NULL, quiet_libvirt);
    f.conn = virConnectOpen("test:///default");
    assert_non_null(f.conn);
    f.dom = virDomainLookupByName(f.conn, "test");
    assert_non_null(f.dom);
    assert_int_equal(qb_libvirt_worker_create(&loop, 8, &f.worker), QB_OK);
    f.sh.loop = &loop;
    f.sh.cfg = &cfg;
    f.sh.worker = f.worker;
    f.sh.wake = sh_wake;
    f.sh.forget = sh_forget;
    assert_int_equal(qb_lv_link_new(&f.sh, "test", "6695eb01-f6a4-8304-79aa-97f2502e193f",
                                    "libvirt:test", &f.link),
                     QB_OK);
    qb_source_link_bind(qb_lv_link_head(f.link), &cbs, NULL);
    qb_lv_link_begin(f.link, f.dom);
    assert_true(run_until(&rec.up, 1, 5000));
    *state = &f;
    return 0;
}

static int state_of(virDomainPtr dom)
{
    int st = -1, reason;

    assert_int_equal(virDomainGetState(dom, &st, &reason, 0), 0);
    return st;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    qb_lv_link_end(f->link, QB_ECLOSED, "test over");
    qb_lv_link_free(f->link);
    if (state_of(f->dom) != VIR_DOMAIN_RUNNING)
        virDomainResume(f->dom); /* the test driver's state is the process's */
    virDomainFree(f->dom);
    virConnectClose(f->conn);
    assert_int_equal(qb_libvirt_worker_close(f->worker, NULL, NULL), QB_OK);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    json_decref(rec.result);
    rec.result = NULL;
    sem_destroy(&rec.started);
    sem_destroy(&rec.release);
    return 0;
}

/* Runs the loop until the worker has nothing queued or running, or ms passed. */
static bool run_until_worker_idle(struct qb_libvirt_worker *w, uint64_t ms)
{
    struct qb_libvirt_worker_stats st;

    guard_expired = false;
    uv_timer_start(&guard, on_guard, ms, 0);
    for (;;) {
        qb_libvirt_worker_stats(w, &st);
        if ((!st.queued && !st.running) || guard_expired)
            break;
        uv_run(&loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&guard);
    uv_run(&loop, UV_RUN_NOWAIT); /* the done of the last job */
    return !st.queued && !st.running;
}

static const char *result_str(const char *key)
{
    return json_string_value(json_object_get(rec.result, key));
}

static const char *result_error_class(void)
{
    return json_string_value(json_object_get(json_object_get(rec.result, "error"), "class"));
}

/* The fixture works: a stop that runs pauses the test domain and says ok. */
static void test_command_runs(void **state)
{
    struct fixture *f = *state;
    struct qb_command cmd = {.id = "c-ok", .name = QB_CMD_STOP, .name_known = true};

    assert_int_equal(state_of(f->dom), VIR_DOMAIN_RUNNING);
    assert_int_equal(qb_lv_link_command(qb_lv_link_head(f->link), &cmd, on_result, NULL), QB_OK);
    assert_true(run_until(&rec.results, 1, 5000));
    assert_string_equal(result_str("status"), "ok");
    assert_string_equal(result_str("command_id"), "c-ok");
    assert_int_equal(state_of(f->dom), VIR_DOMAIN_PAUSED);
}

/*
 * The session ends while the command waits behind another job: the answer
 * is "rejected" (disconnected), and the domain is still running after the
 * worker got to the command.
 */
static void test_command_answered_early_changes_nothing(void **state)
{
    struct fixture *f = *state;
    struct qb_command cmd = {.id = "c-late", .name = QB_CMD_STOP, .name_known = true};

    assert_int_equal(qb_libvirt_worker_submit(f->worker, work_block, done_block, NULL), QB_OK);
    sem_wait(&rec.started);
    assert_int_equal(qb_lv_link_command(qb_lv_link_head(f->link), &cmd, on_result, NULL), QB_OK);

    qb_lv_link_end(f->link, QB_ECLOSED, "the manager closed the session");
    assert_int_equal(rec.closed, 1);
    assert_int_equal(rec.results, 1); /* answered at once, not when the worker gets there */
    assert_string_equal(result_str("status"), "rejected");
    assert_string_equal(result_error_class(), QB_CMD_ERR_DISCONNECTED);

    sem_post(&rec.release);
    assert_true(run_until(&rec.blocker_done, 1, 5000));
    assert_true(run_until_worker_idle(f->worker, 5000)); /* the command's turn came */
    assert_int_equal(rec.results, 1);                    /* and its late result was dropped */
    assert_int_equal(state_of(f->dom), VIR_DOMAIN_RUNNING);
}

/* Loop time since t0 until the session is up again (counter up reaches want), or -1. */
static int64_t ms_until_up(int want, uint64_t t0)
{
    if (!run_until(&rec.up, want, 10000))
        return -1;
    uv_update_time(&loop);
    return (int64_t)(uv_now(&loop) - t0);
}

/* The manager closes the session twice in a row: each new one waits for a longer back-off. */
static void test_manager_close_backs_off(void **state)
{
    struct fixture *f = *state;
    struct qb_source_link *head = qb_lv_link_head(f->link);
    uint64_t t0;
    int64_t took;

    cfg.qmp_reconnect_initial_ms = 400; /* the first waits 200-400 ms (equal jitter) */
    cfg.qmp_reconnect_max_ms = 1600;    /* the second 400-800 ms */

    uv_update_time(&loop);
    t0 = uv_now(&loop);
    qb_lv_link_disconnect(head, "held too much");
    qb_lv_shared_run_due(&f->sh); /* what the source runs from the loop on wake */
    assert_int_equal(rec.closed, 1);
    assert_false(qb_lv_link_in_session(f->link)); /* not at once */
    took = ms_until_up(2, t0);
    assert_true(took >= 200);

    uv_update_time(&loop);
    t0 = uv_now(&loop);
    qb_lv_link_disconnect(head, "held too much again");
    qb_lv_shared_run_due(&f->sh);
    assert_int_equal(rec.closed, 2);
    assert_false(qb_lv_link_in_session(f->link));
    took = ms_until_up(3, t0);
    assert_true(took >= 400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_command_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_answered_early_changes_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_manager_close_backs_off, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
