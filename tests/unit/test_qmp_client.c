/*
 * test_qmp_client.c - the QMP session against a fake QEMU on the same loop.
 *
 * The fake peer (fake_qmp_peer.c) listens on a unix socket in a fresh
 * temporary directory (one test uses TCP on 127.0.0.1 with a kernel-chosen
 * port), greets with the real QEMU 7.2 greeting, answers qmp_capabilities,
 * records every command it gets and sends whatever line a test asks for. The
 * loop runs until a condition holds, with a guard timer so a broken client
 * fails the test instead of hanging it. Teardown insists on uv_loop_close()
 * == 0: a handle the client forgot to close fails the test, and ASan reports
 * leaked memory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "error.h"
#include "fake_qmp_peer.h"
#include "log.h"
#include "qmp_client.h"
#include "qmp_framer.h"

static const char stop_line[] =
    "{\"timestamp\": {\"seconds\": 1732242124, \"microseconds\": 123456}, \"event\": \"STOP\"}";
static const char resume_line[] =
    "{\"timestamp\": {\"seconds\": 1732242125, \"microseconds\": 5}, \"event\": \"RESUME\"}";

/* ---- client side recorder ---------------------------------------------- */

enum action { ACT_NONE, ACT_FREE, ACT_RECONNECT, ACT_DISCONNECT };

struct fx {
    uv_loop_t loop;
    uv_timer_t guard;
    int guard_fired;
    char dir[64];
    char path[128];
    char addr[160];
    struct fake_qmp_peer peer;
    struct qb_qmp_client *c;
    struct qb_fair_reads *fair; /* NULL unless a test makes one */

    int ready;
    int closed;
    int closed_err;
    int closed_seq;
    char reason[256];
    json_t *events;
    int seq; /* orders callbacks against each other */

    enum action on_closed_action;
    enum action on_event_action;
};

struct reply {
    struct fx *fx;
    int called;
    int status;
    int seq;
    json_t *value;
    enum action action;
};

static void on_ready(struct qb_qmp_client *c, void *arg)
{
    struct fx *fx = arg;

    assert_ptr_equal(c, fx->c);
    assert_int_equal(qb_qmp_client_state(c), QB_QMP_READY);
    fx->ready++;
}

static void on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct fx *fx = arg;

    assert_ptr_equal(c, fx->c);
    json_array_append(fx->events, msg);
    if (fx->on_event_action == ACT_DISCONNECT)
        qb_qmp_client_disconnect(c, "enough events");
    else if (fx->on_event_action == ACT_FREE) {
        qb_qmp_client_free(c);
        fx->c = NULL;
    }
}

static void on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct fx *fx = arg;

    assert_ptr_equal(c, fx->c);
    assert_int_equal(qb_qmp_client_state(c), QB_QMP_IDLE);
    assert_non_null(reason);
    fx->closed++;
    fx->closed_err = err;
    fx->closed_seq = ++fx->seq;
    snprintf(fx->reason, sizeof(fx->reason), "%s", reason);
    if (fx->on_closed_action == ACT_FREE) {
        qb_qmp_client_free(c);
        fx->c = NULL;
    } else if (fx->on_closed_action == ACT_RECONNECT) {
        fx->on_closed_action = ACT_NONE;
        assert_int_equal(qb_qmp_client_connect(c, fx->addr), QB_OK);
    }
}

static void on_reply(struct qb_qmp_client *c, int status, json_t *value, void *arg)
{
    struct reply *r = arg;

    assert_non_null(c);
    assert_int_equal(r->called, 0); /* exactly once */
    r->called++;
    r->status = status;
    r->seq = ++r->fx->seq;
    r->value = json_incref(value);
    if (r->action == ACT_FREE) {
        qb_qmp_client_free(c);
        r->fx->c = NULL;
    }
}

static void reply_clear(struct reply *r)
{
    json_decref(r->value);
    r->value = NULL;
}

static const struct qb_qmp_callbacks callbacks = {on_ready, on_event, on_closed};

static void guard_cb(uv_timer_t *t)
{
    struct fx *fx = t->data;

    fx->guard_fired = 1;
}

/* Runs the loop until cond holds; fails after 10 s instead of hanging. */
#define RUN_UNTIL(fx, cond)                                                                        \
    do {                                                                                           \
        (fx)->guard_fired = 0;                                                                     \
        uv_timer_start(&(fx)->guard, guard_cb, 10000, 0);                                          \
        while (!(cond) && !(fx)->guard_fired)                                                      \
            uv_run(&(fx)->loop, UV_RUN_ONCE);                                                      \
        uv_timer_stop(&(fx)->guard);                                                               \
        assert_true(cond);                                                                         \
    } while (0)

static void make_client(struct fx *fx, size_t max_line, uint32_t connect_timeout_ms)
{
    struct qb_qmp_options opts = {max_line, connect_timeout_ms, fx->fair};

    if (fx->c != NULL)
        qb_qmp_client_free(fx->c);
    fx->c = NULL;
    assert_int_equal(qb_qmp_client_new(&fx->loop, "vm1", &opts, &callbacks, fx, &fx->c), QB_OK);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_IDLE);
}

static int setup_common(void **state, int tcp)
{
    struct fx *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(uv_timer_init(&fx->loop, &fx->guard), 0);
    fx->guard.data = fx;
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/qb-qmp-test-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof(fx->path), "%s/qmp.sock", fx->dir);
    fx->events = json_array();
    fake_qmp_peer_init(&fx->peer, &fx->loop);
    if (tcp) {
        snprintf(fx->addr, sizeof(fx->addr), "tcp:127.0.0.1:%d",
                 fake_qmp_peer_listen_tcp(&fx->peer));
    } else {
        fake_qmp_peer_listen_unix(&fx->peer, fx->path);
        snprintf(fx->addr, sizeof(fx->addr), "unix:%s", fx->path);
    }
    make_client(fx, 0, 0);
    *state = fx;
    return 0;
}

static int setup_unix(void **state)
{
    return setup_common(state, 0);
}

static int setup_tcp(void **state)
{
    return setup_common(state, 1);
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    if (fx->c != NULL)
        qb_qmp_client_free(fx->c);
    qb_fair_reads_close(fx->fair);
    fake_qmp_peer_close(&fx->peer);
    uv_close((uv_handle_t *)&fx->guard, NULL);
    /* Closing handles finish within a few iterations; a handle left active fails uv_loop_close. */
    for (int i = 0; i < 100; i++)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    fake_qmp_peer_free(&fx->peer);
    json_decref(fx->events);
    unlink(fx->path);
    assert_int_equal(rmdir(fx->dir), 0);
    free(fx);
    return 0;
}

static void handshake(struct fx *fx)
{
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_CONNECTING);
    RUN_UNTIL(fx, fx->ready == 1 || fx->closed > 0);
    assert_int_equal(fx->closed, 0);
}

/* The command the peer received last, borrowed. */
static json_t *last_command(struct fx *fx)
{
    size_t n = json_array_size(fx->peer.received);

    assert_true(n > 0);
    return json_array_get(fx->peer.received, n - 1);
}

static json_int_t command_id(json_t *cmd)
{
    json_t *id = json_object_get(cmd, "id");

    assert_true(json_is_integer(id));
    return json_integer_value(id);
}

/* ---- tests -------------------------------------------------------------- */

static void test_handshake(void **state)
{
    struct fx *fx = *state;
    const json_t *greeting;
    json_t *caps;

    assert_null(qb_qmp_client_greeting(fx->c));
    assert_string_equal(qb_qmp_client_version(fx->c), "");
    handshake(fx);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_READY);
    assert_string_equal(qb_qmp_client_version(fx->c), "7.2.22");
    greeting = qb_qmp_client_greeting(fx->c);
    assert_non_null(greeting);
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(greeting, "capabilities"), 0)), "oob");
    assert_int_equal(json_array_size(fx->peer.received), 1);
    caps = json_array_get(fx->peer.received, 0);
    assert_string_equal(json_string_value(json_object_get(caps, "execute")), "qmp_capabilities");
    command_id(caps);
    assert_string_equal(qb_qmp_state_name(QB_QMP_NEGOTIATING), "negotiating");
}

/*
 * A QEMU that is still starting can put an event (RESUME) on a freshly accepted
 * monitor before its greeting (seen with QEMU 7.2 under load). The session must
 * not treat that as a protocol error: the event is dropped (the snapshot taken
 * after the handshake covers it) and the handshake goes on.
 */
static void test_event_before_greeting(void **state)
{
    struct fx *fx = *state;

    fx->peer.event_first = 1;
    handshake(fx);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_READY);
    assert_int_equal(json_array_size(fx->events), 0);
}

static void test_tcp_handshake(void **state)
{
    struct fx *fx = *state;

    assert_non_null(strstr(fx->addr, "tcp:127.0.0.1:"));
    handshake(fx);
    assert_string_equal(qb_qmp_client_version(fx->c), "7.2.22");
}

static void test_events_in_order(void **state)
{
    struct fx *fx = *state;
    char both[512];

    handshake(fx);
    /* Two events in one write: both must come out of one read, in order. */
    snprintf(both, sizeof(both), "%s\r\n%s", stop_line, resume_line);
    fake_qmp_peer_send(&fx->peer, both);
    RUN_UNTIL(fx, json_array_size(fx->events) == 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(fx->events, 0), "event")),
                        "STOP");
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_array_get(fx->events, 0), "timestamp"), "seconds")),
                     1732242124);
    assert_string_equal(json_string_value(json_object_get(json_array_get(fx->events, 1), "event")),
                        "RESUME");
    assert_int_equal(fx->closed, 0);
}

static void test_execute_reply(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};
    json_t *args = json_pack("{s:s}", "command-line", "info version");
    json_t *cmd;

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "human-monitor-command", args, 0, on_reply, &r),
                     QB_OK);
    json_decref(args);
    assert_int_equal(r.called, 0); /* never from inside execute */
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 2);
    cmd = last_command(fx);
    assert_string_equal(json_string_value(json_object_get(cmd, "execute")),
                        "human-monitor-command");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(cmd, "arguments"), "command-line")),
        "info version");
    fake_qmp_peer_sendf(&fx->peer,
                        "{\"return\": \"7.2.22\\r\\n\", \"id\": %" JSON_INTEGER_FORMAT "}",
                        command_id(cmd));
    RUN_UNTIL(fx, r.called == 1);
    assert_int_equal(r.status, QB_OK);
    assert_string_equal(json_string_value(r.value), "7.2.22\r\n");
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_READY);
    reply_clear(&r);
}

static void test_out_of_order_replies(void **state)
{
    struct fx *fx = *state;
    struct reply r1 = {fx};
    struct reply r2 = {fx};
    json_int_t id1;
    json_int_t id2;

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r1), QB_OK);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-name", NULL, 0, on_reply, &r2), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 3);
    id1 = command_id(json_array_get(fx->peer.received, 1));
    id2 = command_id(json_array_get(fx->peer.received, 2));
    assert_true(id1 != id2);
    assert_null(json_object_get(json_array_get(fx->peer.received, 1), "arguments"));
    fake_qmp_peer_sendf(&fx->peer,
                        "{\"return\": {\"name\": \"vm1\"}, \"id\": %" JSON_INTEGER_FORMAT "}", id2);
    fake_qmp_peer_sendf(
        &fx->peer,
        "{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}, "
        "\"id\": %" JSON_INTEGER_FORMAT "}",
        id1);
    RUN_UNTIL(fx, r1.called && r2.called);
    assert_true(r2.seq < r1.seq);
    assert_int_equal(r1.status, QB_OK);
    assert_string_equal(json_string_value(json_object_get(r1.value, "status")), "running");
    assert_int_equal(r2.status, QB_OK);
    assert_string_equal(json_string_value(json_object_get(r2.value, "name")), "vm1");
    reply_clear(&r1);
    reply_clear(&r2);
}

static void test_error_reply(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "no-such-command", NULL, 0, on_reply, &r), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 2);
    fake_qmp_peer_sendf(&fx->peer,
                        "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command "
                        "no-such-command has not been found\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
                        command_id(last_command(fx)));
    RUN_UNTIL(fx, r.called == 1);
    assert_int_equal(r.status, QB_EQMP);
    assert_string_equal(json_string_value(json_object_get(r.value, "class")), "CommandNotFound");
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_READY);
    reply_clear(&r);
}

static void test_timeout_then_late_reply(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};
    struct reply r2 = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 20, on_reply, &r), QB_OK);
    /* A command without a deadline must not be touched by the other's timeout. */
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-name", NULL, 0, on_reply, &r2), QB_OK);
    RUN_UNTIL(fx, r.called == 1);
    assert_int_equal(r.status, QB_ETIMEDOUT);
    assert_null(r.value);
    assert_int_equal(r2.called, 0);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 3);

    /* The late reply is dropped quietly; the session goes on. */
    fake_qmp_peer_sendf(&fx->peer, "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}",
                        command_id(json_array_get(fx->peer.received, 1)));
    fake_qmp_peer_send(&fx->peer, stop_line);
    RUN_UNTIL(fx, json_array_size(fx->events) == 1 || fx->closed);
    assert_int_equal(fx->closed, 0);
    assert_int_equal(r.called, 1);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_READY);

    fake_qmp_peer_sendf(&fx->peer,
                        "{\"return\": {\"name\": \"vm1\"}, \"id\": %" JSON_INTEGER_FORMAT "}",
                        command_id(json_array_get(fx->peer.received, 2)));
    RUN_UNTIL(fx, r2.called == 1);
    assert_int_equal(r2.status, QB_OK);
    reply_clear(&r2);
}

static void test_garbage_closes(void **state)
{
    struct fx *fx = *state;

    handshake(fx);
    fake_qmp_peer_send(&fx->peer, "{\"event\": \"STOP\", oops}");
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_EPARSE);
    assert_non_null(strstr(fx->reason, "invalid JSON"));
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_IDLE);
    RUN_UNTIL(fx, fx->peer.conn_gone == 1);
}

static void test_protocol_violations_close(void **state)
{
    struct fx *fx = *state;
    static const char *const lines[] = {
        "[1, 2]",
        "{\"hello\": 1}",
        "{\"return\": {}, \"id\": 9999}",
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}}}",
    };

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        fx->closed = 0;
        handshake(fx);
        fx->ready = 0;
        fake_qmp_peer_send(&fx->peer, lines[i]);
        RUN_UNTIL(fx, fx->closed == 1);
        assert_int_equal(fx->closed_err, QB_EPROTO);
        RUN_UNTIL(fx, !fx->peer.conn_open);
    }
}

static void test_oversized_line_closes(void **state)
{
    struct fx *fx = *state;
    char line[3000];

    make_client(fx, 1024, 0);
    handshake(fx);
    memset(line, ' ', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    memcpy(line, "{\"event\": \"STOP\"", 16);
    line[sizeof(line) - 2] = '}';
    fake_qmp_peer_send(&fx->peer, line);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_ETOOBIG);
    assert_int_equal(json_array_size(fx->events), 0);
}

static void test_peer_close_fails_pending(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 2);
    fake_qmp_peer_close_conn(&fx->peer);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_EIO);
    assert_int_equal(r.called, 1);
    assert_int_equal(r.status, QB_ECLOSED);
    assert_true(r.seq < fx->closed_seq); /* pending callbacks come before on_closed */
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_IDLE);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r),
                     QB_ECLOSED);
}

static void test_missing_socket(void **state)
{
    struct fx *fx = *state;
    char addr[200];

    snprintf(addr, sizeof(addr), "unix:%s/absent.sock", fx->dir);
    assert_int_equal(qb_qmp_client_connect(fx->c, addr), QB_OK);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_EIO);
    assert_int_equal(fx->ready, 0);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_IDLE);
}

static void test_bad_calls(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    assert_int_equal(qb_qmp_client_connect(fx->c, "tcp:example.org:4444"), QB_EINVAL);
    assert_int_equal(qb_qmp_client_connect(fx->c, "tcp:127.0.0.1:0"), QB_EINVAL);
    assert_int_equal(qb_qmp_client_connect(fx->c, "tcp:127.0.0.1"), QB_EINVAL);
    assert_int_equal(qb_qmp_client_connect(fx->c, "udp:127.0.0.1:1"), QB_EINVAL);
    assert_int_equal(qb_qmp_client_connect(fx->c, "unix:"), QB_EINVAL);
    assert_int_equal(qb_qmp_client_state(fx->c), QB_QMP_IDLE);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r),
                     QB_ECLOSED);
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_EAGAIN);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r),
                     QB_ECLOSED);
    RUN_UNTIL(fx, fx->ready == 1);
    assert_int_equal(r.called, 0);
}

static void test_reconnect(void **state)
{
    struct fx *fx = *state;

    handshake(fx);
    /* First from inside on_closed, then from outside after a disconnect. */
    fx->on_closed_action = ACT_RECONNECT;
    fake_qmp_peer_close_conn(&fx->peer);
    RUN_UNTIL(fx, fx->ready == 2);
    assert_int_equal(fx->closed, 1);
    assert_int_equal(fx->peer.accepted, 2);

    qb_qmp_client_disconnect(fx->c, "test");
    RUN_UNTIL(fx, fx->closed == 2 && !fx->peer.conn_open);
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    RUN_UNTIL(fx, fx->ready == 3);
    assert_int_equal(fx->peer.accepted, 3);
    assert_string_equal(qb_qmp_client_version(fx->c), "7.2.22");
}

static void test_free_inside_on_closed(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 1000000, on_reply, &r),
                     QB_OK);
    fx->on_closed_action = ACT_FREE;
    fake_qmp_peer_close_conn(&fx->peer);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_null(fx->c);
    assert_int_equal(r.status, QB_ECLOSED);
}

static void test_free_inside_event_and_reply(void **state)
{
    struct fx *fx = *state;
    struct reply r1 = {fx, .action = ACT_FREE};
    struct reply r2 = {fx};
    char both[512];

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r1), QB_OK);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-name", NULL, 5000, on_reply, &r2), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 3);
    /* The reply's callback frees the client; the event after it in the same read is not delivered.
     */
    snprintf(both, sizeof(both), "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\n%s",
             command_id(json_array_get(fx->peer.received, 1)), stop_line);
    fake_qmp_peer_send(&fx->peer, both);
    RUN_UNTIL(fx, r1.called == 1);
    assert_null(fx->c);
    assert_int_equal(r1.status, QB_OK);
    assert_int_equal(r2.called, 1);
    assert_int_equal(r2.status, QB_ECLOSED);
    RUN_UNTIL(fx, !fx->peer.conn_open);
    assert_int_equal(json_array_size(fx->events), 0);
    assert_int_equal(fx->closed, 0); /* free never calls on_closed */
    reply_clear(&r1);
}

static void test_disconnect(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r), QB_OK);
    qb_qmp_client_disconnect(fx->c, "operator asked");
    assert_int_equal(r.called, 0);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_ECLOSED);
    assert_string_equal(fx->reason, "operator asked");
    assert_int_equal(r.called, 1);
    assert_int_equal(r.status, QB_ECLOSED);
    qb_qmp_client_disconnect(fx->c, "again"); /* IDLE: nothing happens */
    for (int i = 0; i < 5; i++)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(fx->closed, 1);
}

static void test_disconnect_inside_event(void **state)
{
    struct fx *fx = *state;
    char both[512];

    handshake(fx);
    fx->on_event_action = ACT_DISCONNECT;
    snprintf(both, sizeof(both), "%s\n%s", stop_line, resume_line);
    fake_qmp_peer_send(&fx->peer, both);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_ECLOSED);
    assert_int_equal(json_array_size(fx->events), 1);
}

static void test_free_with_pending(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 100000, on_reply, &r),
                     QB_OK);
    qb_qmp_client_free(fx->c);
    fx->c = NULL;
    RUN_UNTIL(fx, r.called == 1 && !fx->peer.conn_open);
    assert_int_equal(r.status, QB_ECLOSED);
    assert_int_equal(fx->closed, 0);
}

static void test_no_greeting_times_out(void **state)
{
    struct fx *fx = *state;

    fx->peer.greet = 0;
    make_client(fx, 0, 50);
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_ETIMEDOUT);
    assert_int_equal(fx->ready, 0);
    assert_int_equal(fx->peer.accepted, 1);
}

static void test_capabilities_error_closes(void **state)
{
    struct fx *fx = *state;

    fx->peer.caps_error = 1;
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(fx->closed_err, QB_EPROTO);
    assert_int_equal(fx->ready, 0);
    assert_non_null(strstr(fx->reason, "qmp_capabilities"));
}

static void test_pause_and_resume(void **state)
{
    struct fx *fx = *state;
    struct reply r = {fx};

    handshake(fx);
    qb_qmp_client_pause_reading(fx->c);
    fake_qmp_peer_send(&fx->peer, stop_line);
    /* Writing goes on while paused; once the peer has the command, the event is surely sent. */
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 2);
    fake_qmp_peer_sendf(&fx->peer, "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}",
                        command_id(last_command(fx)));
    for (int i = 0; i < 20; i++)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(json_array_size(fx->events), 0);
    assert_int_equal(r.called, 0);
    qb_qmp_client_resume_reading(fx->c);
    RUN_UNTIL(fx, r.called == 1);
    assert_int_equal(json_array_size(fx->events), 1);
    assert_int_equal(r.status, QB_OK);
    reply_clear(&r);
}

/*
 * Sends n STOP events in one write, then tail (a line, or NULL): a flood that
 * sits in the socket before the client reads any of it.
 */
static void peer_send_stop_flood(struct fake_qmp_peer *p, size_t n, const char *tail)
{
    size_t line = strlen(stop_line) + 1;
    size_t tail_len = tail ? strlen(tail) + 1 : 0;
    char *blob = malloc(n * line + tail_len + 1);

    assert_non_null(blob);
    for (size_t i = 0; i < n; i++) {
        memcpy(blob + i * line, stop_line, line - 1);
        blob[i * line + line - 1] = '\n';
    }
    if (tail)
        memcpy(blob + n * line, tail, tail_len); /* with its NUL */
    else
        blob[n * line - 1] = '\0'; /* peer_send adds the last newline */
    fake_qmp_peer_send(p, blob);
    free(blob);
}

/*
 * A QEMU streaming events flat out fills the socket faster than the bridge
 * drains it. libuv would go on reading it (32 buffers per wake-up) while the
 * rest of the loop waits; with fair reads the session takes one buffer per
 * loop turn and parks until the turn's check, and nothing is lost or reordered.
 */
static void test_fair_reads_one_buffer_per_turn(void **state)
{
    struct fx *fx = *state;
    enum { N = 2500 };
    size_t line = strlen(stop_line) + 1;
    size_t per_buffer = 65536 / line + 1; /* the read area is 64 KiB */
    size_t turns = 0, most = 0;

    assert_int_equal(qb_fair_reads_new(&fx->loop, &fx->fair), QB_OK);
    make_client(fx, 0, 0);
    handshake(fx);
    peer_send_stop_flood(&fx->peer, N, NULL);
    fx->guard_fired = 0;
    uv_timer_start(&fx->guard, guard_cb, 10000, 0);
    while (json_array_size(fx->events) < N && !fx->guard_fired) {
        size_t before = json_array_size(fx->events);
        uv_run(&fx->loop, UV_RUN_ONCE);
        size_t got = json_array_size(fx->events) - before;
        if (got > most)
            most = got;
        if (got)
            turns++;
    }
    uv_timer_stop(&fx->guard);
    assert_int_equal(json_array_size(fx->events), N);
    assert_true(most <= per_buffer);                     /* never more than one buffer in a turn */
    assert_true(turns >= (N * line) / 65536);            /* so the stream took several turns */
    assert_int_equal(qb_fair_reads_parked(fx->fair), 0); /* parked ones resume in the same turn */
    for (size_t i = 0; i < N; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(fx->events, i), "event")), "STOP");
}

/* A session closed inside an event of a full buffer is not parked afterwards. */
static void test_fair_reads_close_inside_event(void **state)
{
    struct fx *fx = *state;

    assert_int_equal(qb_fair_reads_new(&fx->loop, &fx->fair), QB_OK);
    make_client(fx, 0, 0);
    handshake(fx);
    peer_send_stop_flood(&fx->peer, 2500, NULL);
    fx->on_event_action = ACT_DISCONNECT; /* closes inside the first event of the first buffer */
    RUN_UNTIL(fx, fx->closed == 1);
    assert_int_equal(qb_fair_reads_parked(fx->fair), 0);
    assert_int_equal(json_array_size(fx->events), 1);
}

/*
 * A reply sits behind everything QEMU sent before it. A session waiting for
 * one (its snapshot, a command) reads on past the one-buffer-per-turn bound,
 * or a flood ahead of the reply would hold its connect slot (or its command)
 * for one loop turn per buffer.
 */
static void test_fair_reads_reply_reads_through(void **state)
{
    struct fx *fx = *state;
    enum { N = 1800 }; /* about 165 KB: three 64 KiB buffers, and it fits the socket */
    struct reply r = {fx};
    size_t turns = 0;
    char reply_line[64];

    assert_int_equal(qb_fair_reads_new(&fx->loop, &fx->fair), QB_OK);
    make_client(fx, 0, 0);
    handshake(fx);
    assert_int_equal(qb_qmp_client_execute(fx->c, "query-status", NULL, 0, on_reply, &r), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.received) == 2);
    snprintf(reply_line, sizeof(reply_line), "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}",
             command_id(last_command(fx)));
    peer_send_stop_flood(&fx->peer, N, reply_line);
    fx->guard_fired = 0;
    uv_timer_start(&fx->guard, guard_cb, 10000, 0);
    while (r.called == 0 && !fx->guard_fired) {
        size_t before = json_array_size(fx->events);
        uv_run(&fx->loop, UV_RUN_ONCE);
        if (json_array_size(fx->events) != before || r.called)
            turns++;
    }
    uv_timer_stop(&fx->guard);
    assert_int_equal(r.called, 1);
    assert_int_equal(json_array_size(fx->events), N); /* every event before the reply, in order */
    assert_true(turns <= 2); /* bounded to a buffer per turn it would take at least three */
    reply_clear(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_handshake, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_event_before_greeting, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_tcp_handshake, setup_tcp, teardown),
        cmocka_unit_test_setup_teardown(test_events_in_order, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_execute_reply, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_order_replies, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_error_reply, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_late_reply, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_closes, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_violations_close, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_line_closes, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_peer_close_fails_pending, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_missing_socket, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_bad_calls, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_free_inside_on_closed, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_free_inside_event_and_reply, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_inside_event, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_no_greeting_times_out, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_capabilities_error_closes, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_pause_and_resume, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_fair_reads_one_buffer_per_turn, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_fair_reads_close_inside_event, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_fair_reads_reply_reads_through, setup_unix, teardown),
    };

    /* Debug level so every log statement's formatting runs under the sanitizers too. */
    qb_log_set_level(QB_LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
