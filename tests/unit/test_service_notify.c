/*
 * test_service_notify.c - the sd_notify messages and the health-gated watchdog.
 *
 * The test plays systemd: it binds a unix datagram socket, points
 * NOTIFY_SOCKET at it and reads back exactly what the bridge would tell
 * systemd. The watchdog cases run the real libuv loop with WATCHDOG_USEC set
 * and count pings against health-callback calls, never against the clock:
 * every healthy call must produce one WATCHDOG=1, every unhealthy one none.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "error.h"
#include "service_notify.h"

struct listener {
    int fd;
    char dir[64];
    char path[96];
};

static int listener_setup(void **state)
{
    struct listener *l = calloc(1, sizeof(*l));
    struct sockaddr_un sa = {.sun_family = AF_UNIX};

    assert_non_null(l);
    strcpy(l->dir, "/tmp/qb-notify-XXXXXX");
    assert_non_null(mkdtemp(l->dir));
    snprintf(l->path, sizeof(l->path), "%s/notify", l->dir);
    l->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(l->fd >= 0);
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l->path);
    assert_int_equal(bind(l->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", l->path, 1);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    *state = l;
    return 0;
}

static int listener_teardown(void **state)
{
    struct listener *l = *state;

    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    close(l->fd);
    unlink(l->path);
    rmdir(l->dir);
    free(l);
    return 0;
}

/* Next datagram into buf (NUL-terminated), or returns false if none is waiting. */
static bool listener_next(struct listener *l, char *buf, size_t len)
{
    struct pollfd p = {.fd = l->fd, .events = POLLIN};
    ssize_t n;

    /* sd_notify() sends synchronously: a message is either queued already or never comes. */
    if (poll(&p, 1, 0) != 1)
        return false;
    n = recv(l->fd, buf, len - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    return true;
}

static void test_ready_with_status(void **state)
{
    struct listener *l = *state;
    char buf[512];

    assert_true(qb_service_notify_enabled());
    assert_int_equal(qb_service_notify_ready("2 VMs, 1 transport"), QB_OK);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_string_equal(buf, "READY=1\nSTATUS=2 VMs, 1 transport");
    assert_false(listener_next(l, buf, sizeof(buf)));

    assert_int_equal(qb_service_notify_ready(NULL), QB_OK);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_string_equal(buf, "READY=1");
}

/* A status text cannot smuggle in another assignment. */
static void test_status_newlines_flattened(void **state)
{
    struct listener *l = *state;
    char buf[512];

    assert_int_equal(qb_service_notify_status("bad\nREADY=1\tx"), QB_OK);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_string_equal(buf, "STATUS=bad READY=1 x");
}

static void test_reloading_carries_monotonic_usec(void **state)
{
    struct listener *l = *state;
    char buf[512];
    struct timespec before, after;
    unsigned long long usec = 0;
    const char *m;

    clock_gettime(CLOCK_MONOTONIC, &before);
    assert_int_equal(qb_service_notify_reloading(), QB_OK);
    clock_gettime(CLOCK_MONOTONIC, &after);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_true(strncmp(buf, "RELOADING=1\n", 12) == 0);
    m = strstr(buf, "\nMONOTONIC_USEC=");
    assert_non_null(m);
    assert_int_equal(sscanf(m, "\nMONOTONIC_USEC=%llu", &usec), 1);
    assert_true(usec >= (unsigned long long)before.tv_sec * 1000000ull + before.tv_nsec / 1000);
    assert_true(usec <= (unsigned long long)after.tv_sec * 1000000ull + after.tv_nsec / 1000);
}

static void test_stopping(void **state)
{
    struct listener *l = *state;
    char buf[512];

    assert_int_equal(qb_service_notify_stopping(), QB_OK);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_true(strncmp(buf, "STOPPING=1", 10) == 0);
    assert_true(buf[10] == '\0' || buf[10] == '\n');
}

/* Without NOTIFY_SOCKET every call succeeds and nothing is sent anywhere. */
static void test_no_socket_is_noop(void **state)
{
    struct listener *l = *state;
    char buf[512];
    struct qb_service_watchdog *w = (void *)1;
    uv_loop_t loop;

    unsetenv("NOTIFY_SOCKET");
    assert_false(qb_service_notify_enabled());
    assert_int_equal(qb_service_notify_ready("x"), QB_OK);
    assert_int_equal(qb_service_notify_reloading(), QB_OK);
    assert_int_equal(qb_service_notify_stopping(), QB_OK);
    assert_int_equal(qb_service_notify_status("x"), QB_OK);
    assert_false(listener_next(l, buf, sizeof(buf)));

    /* No WATCHDOG_USEC either: no watchdog, and NULL is accepted everywhere. */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_service_watchdog_start(&loop, NULL, NULL, &w), QB_OK);
    assert_null(w);
    assert_int_equal(qb_service_watchdog_interval_ms(w), 0);
    qb_service_watchdog_stop(w);
    qb_service_watchdog_close(w);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A socket that nobody listens on any more is a send failure, reported as QB_EIO. */
static void test_dead_socket_is_eio(void **state)
{
    (void)state;
    setenv("NOTIFY_SOCKET", "/tmp/qb-notify-nonexistent-dir/none", 1);
    assert_int_equal(qb_service_notify_ready(NULL), QB_EIO);
}

/* WATCHDOG_PID naming another process means the watchdog is not ours. */
static void test_watchdog_other_pid(void **state)
{
    struct qb_service_watchdog *w = (void *)1;
    char pid[32];
    uv_loop_t loop;

    (void)state;
    snprintf(pid, sizeof(pid), "%ld", (long)getpid() + 1);
    setenv("WATCHDOG_USEC", "100000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_service_watchdog_start(&loop, NULL, NULL, &w), QB_OK);
    assert_null(w);
    assert_int_equal(uv_loop_close(&loop), 0);
}

struct health {
    struct listener *l;
    int calls;
    int healthy_calls; /* the first this many calls say healthy, the rest unhealthy */
    int stop_after;    /* total calls after which the loop is stopped */
    int pings_seen;    /* WATCHDOG=1 datagrams found before each call */
    int pings_while_unhealthy;
    struct qb_service_watchdog *w;
};

/* Drains the listener and counts WATCHDOG=1 datagrams; anything else is an error. */
static int drain_pings(struct listener *l)
{
    char buf[512];
    int n = 0;

    while (listener_next(l, buf, sizeof(buf))) {
        assert_string_equal(buf, "WATCHDOG=1");
        n++;
    }
    return n;
}

static bool health_cb(void *arg)
{
    struct health *h = arg;
    int pings = drain_pings(h->l);

    /* Pings that arrived since the previous call were sent for that call. */
    if (h->calls > h->healthy_calls)
        h->pings_while_unhealthy += pings;
    else
        h->pings_seen += pings;
    h->calls++;
    if (h->calls >= h->stop_after)
        qb_service_watchdog_close(h->w); /* the loop then has nothing left and returns */
    return h->calls <= h->healthy_calls;
}

static void test_watchdog_pings_only_while_healthy(void **state)
{
    struct listener *l = *state;
    struct health h = {.l = l, .healthy_calls = 3, .stop_after = 6};
    char pid[32];
    uv_loop_t loop;

    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("WATCHDOG_USEC", "40000", 1); /* 40 ms: a tick every 20 ms keeps the test short */
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_service_watchdog_start(&loop, health_cb, &h, &h.w), QB_OK);
    assert_non_null(h.w);
    assert_int_equal(qb_service_watchdog_interval_ms(h.w), 20);

    /* Runs until health_cb closed the watchdog after its sixth call. */
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    h.pings_while_unhealthy += drain_pings(l); /* the sixth call's answer, if any */

    assert_int_equal(h.calls, 6);
    /* Calls 1-3 healthy: three pings, counted before calls 2, 3 and 4. */
    assert_int_equal(h.pings_seen, 3);
    /* Calls 4-6 unhealthy: not one ping, so systemd's watchdog fires. */
    assert_int_equal(h.pings_while_unhealthy, 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Without a health callback every tick pings: only a hung loop stops them. */
static void test_watchdog_no_health_cb(void **state)
{
    struct listener *l = *state;
    struct qb_service_watchdog *w = NULL;
    char pid[32], buf[512];
    uv_loop_t loop;

    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    setenv("WATCHDOG_USEC", "20000", 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_service_watchdog_start(&loop, NULL, NULL, &w), QB_OK);
    assert_non_null(w);
    /* The first tick is due at once: one pass of the loop sends it. */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(listener_next(l, buf, sizeof(buf)));
    assert_string_equal(buf, "WATCHDOG=1");
    qb_service_watchdog_stop(w);
    qb_service_watchdog_close(w);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ready_with_status, listener_setup, listener_teardown),
        cmocka_unit_test_setup_teardown(test_status_newlines_flattened, listener_setup,
                                        listener_teardown),
        cmocka_unit_test_setup_teardown(test_reloading_carries_monotonic_usec, listener_setup,
                                        listener_teardown),
        cmocka_unit_test_setup_teardown(test_stopping, listener_setup, listener_teardown),
        cmocka_unit_test_setup_teardown(test_no_socket_is_noop, listener_setup, listener_teardown),
        cmocka_unit_test_setup_teardown(test_dead_socket_is_eio, listener_setup, listener_teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_other_pid, listener_setup, listener_teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_pings_only_while_healthy, listener_setup,
                                        listener_teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_no_health_cb, listener_setup,
                                        listener_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
