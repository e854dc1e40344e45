/*
 * test_transport.c - the generic transport layer (bridge/transport.c) against
 * a scripted backend defined here, plus the stdout backend writing to a file.
 *
 * The scripted backend records every publish in order, can refuse with
 * QB_EAGAIN, and leaves confirmation to the test, which answers in any order
 * and with any status. That is enough to show ordering across failures and
 * retries, the queue bounds, and the close sequence. A second set of ops adds
 * subscribe, ack and a reply channel for the command path.
 */
#include "error.h"
#include "stdout_config.h"
#include "transport.h"
#include "transport_ops.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- scripted backend ---- */

#define TB_MAX 64

struct tb_entry {
    void *token;
    uint64_t seq;
};

struct test_backend {
    const struct qb_transport_backend_cb *cb;
    void *owner;
    bool eagain;   /* refuse everything */
    size_t window; /* refuse while this many are in flight (0: no limit) */
    struct tb_entry inflight[TB_MAX];
    size_t n_inflight;
    uint64_t published[TB_MAX * 4]; /* sequences in publish order */
    size_t n_published;
    bool close_called;
    uint64_t depth_at_close;
    /* command path */
    int subscribe_rc; /* what subscribe answers */
    int subscribe_calls;
    uint64_t acked[8];
    size_t n_acked;
    enum qb_msg_kind last_kind; /* the last published message, copied out */
    char last_reply_topic[64];
    unsigned char last_correlation[16];
    size_t last_correlation_len;
    bool last_has_correlation;
    uint64_t eclosed;
    uv_timer_t closed_timer;
    void (*closed)(void *arg);
    void *closed_arg;
};

static struct test_backend *tb;
static struct qb_transport *tr; /* the transport under test, for stats at close */

static int tb_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    (void)cfg;
    (void)errbuf;
    (void)errlen;
    return QB_OK;
}

static int tb_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                     const struct qb_bridge_info *bridge, const struct qb_transport_backend_cb *cb,
                     void *owner, void **backend, char *errbuf, size_t errlen)
{
    (void)cfg;
    (void)bridge;
    (void)errbuf;
    (void)errlen;
    tb = calloc(1, sizeof(*tb));
    assert_non_null(tb);
    tb->cb = cb;
    tb->owner = owner;
    uv_timer_init(loop, &tb->closed_timer);
    *backend = tb;
    return QB_OK;
}

static int tb_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct test_backend *b = backend;
    if (b->eagain || (b->window && b->n_inflight >= b->window))
        return QB_EAGAIN;
    assert_true(b->n_inflight < TB_MAX);
    assert_true(b->n_published < TB_MAX * 4);
    b->inflight[b->n_inflight++] = (struct tb_entry){token, msg->sequence};
    b->published[b->n_published++] = msg->sequence;
    b->last_kind = msg->kind;
    snprintf(b->last_reply_topic, sizeof(b->last_reply_topic), "%s",
             msg->reply_topic ? msg->reply_topic : "(null)");
    b->last_has_correlation = msg->correlation != NULL;
    assert_true(msg->correlation_len <= sizeof(b->last_correlation));
    if (msg->correlation)
        memcpy(b->last_correlation, msg->correlation, msg->correlation_len);
    b->last_correlation_len = msg->correlation_len;
    return QB_OK;
}

static int tb_subscribe(void *backend)
{
    struct test_backend *b = backend;
    b->subscribe_calls++;
    return b->subscribe_rc;
}

static void tb_ack(void *backend, uint64_t ack_token)
{
    struct test_backend *b = backend;
    assert_true(b->n_acked < 8);
    b->acked[b->n_acked++] = ack_token;
}

/* Reports the in-flight message with sequence seq (not from inside publish: from the test). */
static void tb_deliver(uint64_t seq, int status)
{
    for (size_t i = 0; i < tb->n_inflight; i++) {
        if (tb->inflight[i].seq == seq) {
            void *token = tb->inflight[i].token;
            memmove(&tb->inflight[i], &tb->inflight[i + 1],
                    (tb->n_inflight - i - 1) * sizeof(tb->inflight[0]));
            tb->n_inflight--;
            tb->cb->delivered(tb->owner, token, status);
            return;
        }
    }
    fail_msg("sequence %llu is not in flight", (unsigned long long)seq);
}

static void tb_on_closed_timer(uv_timer_t *t)
{
    (void)t;
    uv_close((uv_handle_t *)&tb->closed_timer, NULL);
    tb->closed(tb->closed_arg);
}

static void tb_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct test_backend *b = backend;
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    b->close_called = true;
    b->depth_at_close = st.depth;
    while (b->n_inflight) {
        b->eclosed++;
        tb_deliver(b->inflight[0].seq, QB_ECLOSED);
    }
    b->closed = closed;
    b->closed_arg = arg;
    uv_timer_start(&b->closed_timer, tb_on_closed_timer, 0, 0);
}

static const struct qb_transport_ops tb_ops = {
    .name = "test",
    .validate = tb_validate,
    .create = tb_create,
    .publish = tb_publish,
    .close = tb_close,
};

/* The same backend, able to receive commands and to reply. */
static const struct qb_transport_ops tb_cmd_ops = {
    .name = "test-cmd",
    .caps = QB_TRANSPORT_CAP_SUBSCRIBE | QB_TRANSPORT_CAP_REPLY,
    .validate = tb_validate,
    .create = tb_create,
    .publish = tb_publish,
    .subscribe = tb_subscribe,
    .ack = tb_ack,
    .close = tb_close,
};

/* The same backend, taking a turn's messages together (QB_TRANSPORT_CAP_BATCHES). */
static const struct qb_transport_ops tb_batch_ops = {
    .name = "test-batch",
    .caps = QB_TRANSPORT_CAP_BATCHES,
    .validate = tb_validate,
    .create = tb_create,
    .publish = tb_publish,
    .close = tb_close,
};

/* The same backend as a Kafka would announce it: retained state, commands, no reply channel. */
static const struct qb_transport_ops tb_stream_ops = {
    .name = "test-stream",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_SUBSCRIBE,
    .validate = tb_validate,
    .create = tb_create,
    .publish = tb_publish,
    .subscribe = tb_subscribe,
    .ack = tb_ack,
    .close = tb_close,
};

/* ---- fixture ---- */

static uv_loop_t loop;
static struct qb_transport_config cfg;
static int done_calls;
static bool guard_fired;
static uv_timer_t guard;

static void on_done(void *arg)
{
    (void)arg;
    done_calls++;
    /* the backend's timer handle closes last; let its close callback run before we free */
}

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_fired = true;
    uv_stop(&loop);
}

static int setup_ops(const struct qb_transport_ops *ops)
{
    assert_int_equal(uv_loop_init(&loop), 0);
    memset(&cfg, 0, sizeof(cfg));
    cfg.type = "test";
    cfg.name = "t1";
    cfg.queue_max_messages = 100;
    cfg.queue_max_bytes = 1 << 20;
    cfg.shutdown_timeout_ms = 30000;
    done_calls = 0;
    guard_fired = false;
    tb = NULL;
    tr = NULL;
    char err[256] = "";
    struct qb_bridge_info bridge = {.id = "br1"};
    assert_int_equal(qb_transport_create_with_ops(ops, &loop, &cfg, &bridge, &tr, err, sizeof(err)),
                     QB_OK);
    uv_timer_init(&loop, &guard);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    return setup_ops(&tb_ops);
}

static int setup_cmd(void **state)
{
    (void)state;
    return setup_ops(&tb_cmd_ops);
}

static int setup_batch(void **state)
{
    (void)state;
    return setup_ops(&tb_batch_ops);
}

static int setup_stream(void **state)
{
    (void)state;
    return setup_ops(&tb_stream_ops);
}

/* Closes the transport (if the test did not), runs the loop dry and checks nothing leaked. */
static int teardown(void **state)
{
    (void)state;
    if (done_calls == 0 && tr) {
        cfg.shutdown_timeout_ms = 0; /* whatever is left is abandoned */
        qb_transport_close(tr, on_done, NULL);
        uv_timer_start(&guard, on_guard, 60000, 0);
        while (done_calls == 0 && !guard_fired)
            uv_run(&loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    free(tb);
    tb = NULL;
    return 0;
}

/* An event of vm1 with sequence seq (payload borrowed). */
static struct qb_message event_seq(uint64_t seq, const char *payload)
{
    struct qb_message m = {
        .kind = QB_MSG_EVENT,
        .vm = "vm1",
        .type = "t.test",
        .id = "id",
        .key = "br1/vm1",
        .sequence = seq,
        .payload = payload,
        .len = strlen(payload),
    };
    return m;
}

static int send_seq(uint64_t seq, const char *payload)
{
    struct qb_message m = event_seq(seq, payload);

    return qb_transport_send(tr, &m);
}

static int queue_seq(uint64_t seq)
{
    struct qb_message m = event_seq(seq, "{}");

    return qb_transport_queue(tr, &m);
}

/* Runs the loop until pred() holds; fails (instead of hanging) after a guard interval. */
static void run_until(bool (*pred)(void))
{
    guard_fired = false;
    uv_timer_start(&guard, on_guard, 10000, 0);
    while (!pred() && !guard_fired)
        uv_run(&loop, UV_RUN_ONCE);
    uv_timer_stop(&guard);
    assert_false(guard_fired);
}

static void assert_published(const uint64_t *want, size_t n)
{
    assert_int_equal(tb->n_published, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(tb->published[i], want[i]);
}

/* ---- tests ---- */

static void test_confirm_out_of_order(void **state)
{
    (void)state;
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    const uint64_t want[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_published(want, 10);
    for (uint64_t i = 9; i >= 5; i--)
        tb_deliver(i, QB_OK);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.depth, 5);
    assert_int_equal(st.confirmed, 5);
    for (uint64_t i = 0; i < 5; i++)
        tb_deliver(i, QB_OK);
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.queued, 10);
    assert_int_equal(st.published, 10);
    assert_int_equal(st.confirmed, 10);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.depth_bytes, 0);
    assert_int_equal(tb->n_published, 10); /* nothing published twice */
}

static bool retried_twice(void)
{
    return tb->n_published >= 8;
}

static void test_failures_retry_in_order(void **state)
{
    (void)state;
    for (uint64_t i = 0; i < 6; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    tb_deliver(0, QB_OK);
    tb_deliver(3, QB_EIO); /* the later failure is reported first */
    tb_deliver(2, QB_OK);
    tb_deliver(1, QB_EIO);
    run_until(retried_twice);
    const uint64_t want[] = {0, 1, 2, 3, 4, 5, 1, 3};
    assert_published(want, 8);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.retried, 2);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.published, 8);
    assert_int_equal(st.depth, 4);
    tb_deliver(3, QB_OK);
    tb_deliver(1, QB_OK);
    tb_deliver(4, QB_OK);
    tb_deliver(5, QB_OK);
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.confirmed, 6);
    assert_int_equal(st.depth, 0);
}

static bool resent_first(void)
{
    return tb->n_published >= 3;
}

/* A retry goes out before anything newer that was never sent, even with a full window. */
static void test_retry_before_unsent(void **state)
{
    (void)state;
    tb->window = 2;
    for (uint64_t i = 0; i < 5; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    const uint64_t first[] = {0, 1};
    assert_published(first, 2);
    tb_deliver(0, QB_EIO);
    tb->cb->writable(tb->owner); /* as a real backend does when its window frees up */
    run_until(resent_first);     /* window has room for one: the retried 0, not 2 */
    const uint64_t second[] = {0, 1, 0};
    assert_published(second, 3);
    tb_deliver(1, QB_OK);
    tb_deliver(0, QB_OK);
    tb->cb->writable(tb->owner);
    const uint64_t third[] = {0, 1, 0, 2, 3};
    assert_published(third, 5);
    tb_deliver(2, QB_OK);
    tb_deliver(3, QB_OK);
    tb->cb->writable(tb->owner);
    tb_deliver(4, QB_OK);
    const uint64_t all[] = {0, 1, 0, 2, 3, 4};
    assert_published(all, 6);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.depth, 0);
    assert_int_equal(st.confirmed, 5);
}

static void test_eagain_waits_for_writable(void **state)
{
    (void)state;
    tb->eagain = true;
    for (uint64_t i = 0; i < 3; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    assert_int_equal(tb->n_published, 0);
    tb->eagain = false;
    assert_int_equal(send_seq(3, "{}"), QB_OK); /* still blocked: no writable() yet */
    assert_int_equal(tb->n_published, 0);
    tb->cb->writable(tb->owner);
    const uint64_t want[] = {0, 1, 2, 3};
    assert_published(want, 4);
}

static void test_bound_by_messages(void **state)
{
    (void)state;
    cfg.queue_max_messages = 3;
    tb->eagain = true;
    for (uint64_t i = 0; i < 3; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    assert_int_equal(send_seq(3, "{}"), QB_EAGAIN);
    assert_int_equal(send_seq(4, "{}"), QB_EAGAIN);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.dropped, 2);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.depth, 3);
    /* room again once a message is confirmed */
    tb->eagain = false;
    tb->cb->writable(tb->owner);
    tb_deliver(0, QB_OK);
    assert_int_equal(send_seq(5, "{}"), QB_OK);
}

static int pressure_calls;
static bool pressure_now;

static void on_window(void *arg, bool full, uint64_t depth, uint64_t bytes)
{
    (void)bytes;
    assert_ptr_equal(arg, tr);
    pressure_calls++;
    pressure_now = full;
    (void)depth;
}

static const struct qb_transport_listener window_listener = {.window = on_window};

/* The window (what back-pressure follows) turns full at 90% of queue_max_messages and open only
 * under 50%. */
static void test_pressure_watermarks(void **state)
{
    (void)state;
    pressure_calls = 0;
    pressure_now = false;
    cfg.queue_max_messages = 10;
    cfg.on_full = QB_ON_FULL_BACKPRESSURE;
    qb_transport_listen(tr, &window_listener, tr);
    tb->eagain = true;
    for (uint64_t i = 0; i < 8; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    assert_int_equal(pressure_calls, 0);
    assert_int_equal(send_seq(8, "{}"), QB_OK); /* 9 of 10 queued */
    assert_int_equal(pressure_calls, 1);
    assert_true(pressure_now);
    assert_true(qb_transport_window_full(tr));
    tb->eagain = false;
    tb->cb->writable(tb->owner);
    for (uint64_t i = 0; i < 4; i++)
        tb_deliver(i, QB_OK); /* 5 left: not under 50% yet */
    assert_int_equal(pressure_calls, 1);
    tb_deliver(4, QB_OK); /* 4 left */
    assert_int_equal(pressure_calls, 2);
    assert_false(pressure_now);
    assert_false(qb_transport_window_full(tr));
}

/*
 * A transport with on_full: drop refuses at its bound. That it never asks the
 * bridge to stop reading is the outbox's decision now (the window is the
 * same for every transport): test_outbox.c's test_memory_drop_policy_no_pressure.
 */
static void test_drop_policy_no_pressure(void **state)
{
    (void)state;
    cfg.queue_max_messages = 10;
    cfg.on_full = QB_ON_FULL_DROP;
    tb->eagain = true;
    for (uint64_t i = 0; i < 10; i++)
        assert_int_equal(send_seq(i, "{}"), QB_OK);
    assert_int_equal(send_seq(10, "{}"), QB_EAGAIN);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.dropped, 1);
}

static void test_bound_by_bytes(void **state)
{
    (void)state;
    cfg.queue_max_bytes = 10;
    tb->eagain = true;
    assert_int_equal(send_seq(0, "abcd"), QB_OK);
    assert_int_equal(send_seq(1, "efgh"), QB_OK);
    assert_int_equal(send_seq(2, "ijkl"), QB_EAGAIN);
    assert_int_equal(send_seq(3, "mn"), QB_OK); /* exactly at the bound */
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.dropped, 1);
    assert_int_equal(st.depth, 3);
    assert_int_equal(st.depth_bytes, 10);
}

static bool is_done(void)
{
    return done_calls > 0;
}

static void test_close_waits_for_drain(void **state)
{
    (void)state;
    assert_int_equal(send_seq(0, "{}"), QB_OK);
    assert_int_equal(send_seq(1, "{}"), QB_OK);
    qb_transport_close(tr, on_done, NULL);
    assert_int_equal(send_seq(2, "{}"), QB_ECLOSED);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(done_calls, 0);
    assert_false(tb->close_called); /* still draining */
    tb_deliver(1, QB_OK);
    tb_deliver(0, QB_OK);
    run_until(is_done); /* well before the 30 s shutdown timeout */
    assert_true(tb->close_called);
    assert_int_equal(tb->depth_at_close, 0);
    assert_int_equal(done_calls, 1);
}

/*
 * qb_transport_queue to a backend that batches: queued and counted at once,
 * handed to it only by qb_transport_hand_over, in order; what close finds
 * only queued drains too.
 */
static void test_queue_then_hand_over(void **state)
{
    struct qb_transport_stats st;

    (void)state;
    for (uint64_t i = 0; i < 3; i++)
        assert_int_equal(queue_seq(i), QB_OK);
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.depth, 3);
    assert_int_equal(tb->n_published, 0);
    qb_transport_hand_over(tr);
    const uint64_t want[] = {0, 1, 2, 3};
    assert_published(want, 3);
    assert_int_equal(queue_seq(3), QB_OK);
    assert_published(want, 3);
    qb_transport_close(tr, on_done, NULL);
    assert_published(want, 4);
    for (uint64_t i = 0; i < 4; i++)
        tb_deliver(i, QB_OK);
    run_until(is_done);
    assert_int_equal(tb->depth_at_close, 0);
}

/* A backend that does not batch (MQTT, stdout) gets a queued message at once. */
static void test_queue_without_batches(void **state)
{
    const uint64_t want[] = {0, 1};

    (void)state;
    for (uint64_t i = 0; i < 2; i++)
        assert_int_equal(queue_seq(i), QB_OK);
    assert_published(want, 2);
    qb_transport_hand_over(tr); /* nothing left to hand over */
    assert_published(want, 2);
}

static void test_close_times_out(void **state)
{
    (void)state;
    cfg.shutdown_timeout_ms = 20;
    tb->window = 1;
    assert_int_equal(send_seq(0, "{}"), QB_OK);
    assert_int_equal(send_seq(1, "{}"), QB_OK); /* never published: window full */
    qb_transport_close(tr, on_done, NULL);
    run_until(is_done);
    assert_true(tb->close_called);
    assert_int_equal(tb->depth_at_close, 2); /* logged as "2 messages undelivered" */
    assert_int_equal(tb->eclosed, 1);
    assert_int_equal(tb->n_published, 1); /* ECLOSED is not retried */
}

static void test_done_never_synchronous(void **state)
{
    (void)state;
    qb_transport_close(tr, on_done, NULL);
    assert_int_equal(done_calls, 0);
    run_until(is_done);
    assert_int_equal(done_calls, 1);
}

/* The test backend has no RETAINED capability: state-channel copies must not reach it. */
static void test_state_skipped_without_retained(void **state)
{
    (void)state;
    struct qb_message m = {
        .kind = QB_MSG_STATE,
        .vm = "vm1",
        .type = "qmp.vm.state",
        .id = "id.state",
        .key = "br1/vm1",
        .sequence = 1,
        .payload = "{}",
        .len = 2,
    };
    assert_int_equal(qb_transport_send(tr, &m), QB_OK);
    assert_int_equal(send_seq(2, "{}"), QB_OK);
    const uint64_t want[] = {2};
    assert_published(want, 1);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.dropped, 0);
    tb_deliver(2, QB_OK);
}

static void test_link_in_stats(void **state)
{
    (void)state;
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_false(st.link_up);
    tb->cb->link(tb->owner, true, "test");
    qb_transport_get_stats(tr, &st);
    assert_true(st.link_up);
    tb->cb->link(tb->owner, false, "gone");
    qb_transport_get_stats(tr, &st);
    assert_false(st.link_up);
    assert_string_equal(qb_transport_name(tr), "t1");
}

/* ---- command path ---- */

static const unsigned char corr_bytes[] = {'c', 0, 0xff, '7'}; /* binary: a NUL inside */

static struct qb_message reply_msg(uint64_t seq, const char *reply_topic, const void *corr,
                                   size_t corr_len)
{
    return (struct qb_message){
        .kind = QB_MSG_REPLY,
        .vm = "vm1",
        .type = "qmp.command.result",
        .id = "r1",
        .key = "br1/vm1",
        .sequence = seq,
        .payload = "{\"ok\":true}",
        .len = 11,
        .reply_topic = reply_topic,
        .correlation = corr,
        .correlation_len = corr_len,
    };
}

/* stdout and kafka have no subscribe: the caller learns it cannot receive there. */
static void test_subscribe_unsupported(void **state)
{
    (void)state;
    assert_int_equal(qb_transport_subscribe(tr, NULL, NULL), QB_EINVAL);
    qb_transport_ack(tr, 5); /* no ack op: ignored, must not crash */
}

static int inbound_calls;
static struct qb_transport *inbound_t;
static void *inbound_arg;
static char inbound_text[64];
static uint64_t inbound_token;

static void on_inbound(void *arg, struct qb_transport *t, const struct qb_inbound *in,
                       uint64_t ack_token)
{
    inbound_calls++;
    inbound_t = t;
    inbound_arg = arg;
    inbound_token = ack_token;
    snprintf(inbound_text, sizeof(inbound_text), "%.*s|%s|%s|%zu", (int)in->len, in->payload,
             in->vm_hint ? in->vm_hint : "-", in->reply_topic ? in->reply_topic : "-",
             in->correlation_len);
}

static void test_inbound_forwarded_and_acked(void **state)
{
    (void)state;
    int marker = 0;
    inbound_calls = 0;
    assert_int_equal(qb_transport_subscribe(tr, on_inbound, &marker), QB_OK);
    assert_int_equal(tb->subscribe_calls, 1);
    struct qb_inbound in = {.payload = "{\"c\":1}",
                            .len = 7,
                            .vm_hint = "vm7",
                            .reply_topic = "r/x",
                            .correlation = corr_bytes,
                            .correlation_len = sizeof(corr_bytes)};
    tb->cb->inbound(tb->owner, &in, 42);
    assert_int_equal(inbound_calls, 1);
    assert_ptr_equal(inbound_t, tr);
    assert_ptr_equal(inbound_arg, &marker);
    assert_int_equal(inbound_token, 42);
    assert_string_equal(inbound_text, "{\"c\":1}|vm7|r/x|4");
    qb_transport_ack(tr, 42);
    qb_transport_ack(tr, 43);
    assert_int_equal(tb->n_acked, 2);
    assert_int_equal(tb->acked[0], 42);
    assert_int_equal(tb->acked[1], 43);

    /* once closing, commands are no longer handed out (the subscriber is going away) */
    qb_transport_close(tr, on_done, NULL);
    tb->cb->inbound(tb->owner, &in, 44);
    assert_int_equal(inbound_calls, 1);
    run_until(is_done);
}

/* A backend that cannot subscribe leaves the transport unsubscribed. */
static void test_subscribe_failure(void **state)
{
    (void)state;
    inbound_calls = 0;
    tb->subscribe_rc = QB_EIO;
    assert_int_equal(qb_transport_subscribe(tr, on_inbound, NULL), QB_EIO);
    struct qb_inbound in = {.payload = "{}", .len = 2};
    tb->cb->inbound(tb->owner, &in, 1);
    assert_int_equal(inbound_calls, 0);
}

/* A queued reply keeps its reply topic and correlation bytes after the caller's are gone. */
static void test_reply_copied(void **state)
{
    (void)state;
    char topic[16];
    unsigned char corr[sizeof(corr_bytes)];
    strcpy(topic, "reply/here");
    memcpy(corr, corr_bytes, sizeof(corr));
    tb->eagain = true;
    struct qb_message m = reply_msg(1, topic, corr, sizeof(corr));
    assert_int_equal(qb_transport_send(tr, &m), QB_OK);
    memset(topic, 'X', sizeof(topic) - 1);
    memset(corr, 0, sizeof(corr));
    m = reply_msg(2, NULL, NULL, 0);
    assert_int_equal(qb_transport_send(tr, &m), QB_OK);
    assert_int_equal(tb->n_published, 0);

    tb->eagain = false;
    tb->window = 1;
    tb->cb->writable(tb->owner);
    const uint64_t first[] = {1};
    assert_published(first, 1);
    assert_int_equal(tb->last_kind, QB_MSG_REPLY);
    assert_string_equal(tb->last_reply_topic, "reply/here");
    assert_true(tb->last_has_correlation);
    assert_int_equal(tb->last_correlation_len, sizeof(corr_bytes));
    assert_memory_equal(tb->last_correlation, corr_bytes, sizeof(corr_bytes));

    tb_deliver(1, QB_OK);
    tb->cb->writable(tb->owner);
    const uint64_t both[] = {1, 2};
    assert_published(both, 2);
    assert_string_equal(tb->last_reply_topic, "(null)");
    assert_false(tb->last_has_correlation);
    assert_int_equal(tb->last_correlation_len, 0);
    tb_deliver(2, QB_OK);
}

/* Without a reply channel a reply is accepted and discarded: results are events too. */
static void test_reply_skipped_without_reply_cap(void **state)
{
    (void)state;
    struct qb_message m = reply_msg(1, "reply/here", corr_bytes, sizeof(corr_bytes));
    assert_int_equal(qb_transport_send(tr, &m), QB_OK);
    assert_int_equal(send_seq(2, "{}"), QB_OK);
    const uint64_t want[] = {2};
    assert_published(want, 1);
    struct qb_transport_stats st;
    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.dropped, 0);
    tb_deliver(2, QB_OK);
}

/* ---- include / exclude ---- */

static int send_typed(enum qb_msg_kind kind, const char *type, uint64_t seq, const char *payload)
{
    struct qb_message m = {
        .kind = kind,
        .vm = "vm1",
        .type = type,
        .id = "id",
        .key = "br1/vm1",
        .sequence = seq,
        .payload = payload,
        .len = strlen(payload),
    };
    return qb_transport_send(tr, &m);
}

static void assert_filtered(uint64_t n)
{
    struct qb_transport_stats st;

    qb_transport_get_stats(tr, &st);
    assert_int_equal(st.filtered, n);
}

static void deliver_all(void)
{
    while (tb->n_inflight)
        tb_deliver(tb->inflight[0].seq, QB_OK);
}

/*
 * include: only the listed types (globs) pass; the state and its clearing pass
 * together; on a stream that takes commands without a reply channel the result
 * event always passes. Filtered messages are taken (QB_OK) but never queued.
 */
static void test_filter_include(void **state)
{
    static char *include[] = {"qmp.block.*", "qmp.vm.st?pped", "qmp.vm.state"};

    (void)state;
    cfg.include = include;
    cfg.n_include = 3;
    cfg.commands = true;
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.block.io_error", 1, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.resumed", 2, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_STATE, "qmp.vm.state", 3, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_STATE, "qmp.vm.state", 4, ""), QB_OK); /* clears */
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.vm.connected", 5, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.command.result", 6, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.stopped", 7, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.stopped.not", 8, "{}"), QB_OK);
    const uint64_t want[] = {1, 3, 4, 6, 7};
    assert_published(want, 5);
    assert_filtered(3);
    deliver_all();

    /* without commands on this transport the result is an event like any other */
    cfg.commands = false;
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.command.result", 9, "{}"), QB_OK);
    assert_int_equal(tb->n_published, 5);
    assert_filtered(4);
    cfg.include = NULL;
    cfg.n_include = 0;
}

/* exclude wins over include; excluding the state excludes its clearing too. */
static void test_filter_exclude(void **state)
{
    static char *include[] = {"qmp.*"};
    static char *exclude[] = {"qmp.vm.state", "qmp.vm.resumed"};

    (void)state;
    cfg.exclude = exclude;
    cfg.n_exclude = 2;
    assert_int_equal(send_typed(QB_MSG_STATE, "qmp.vm.state", 1, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_STATE, "qmp.vm.state", 2, ""), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.resumed", 3, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.vm.connected", 4, "{}"), QB_OK);
    cfg.include = include;
    cfg.n_include = 1;
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.vm.connected", 5, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.stopped", 6, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.resumed", 7, "{}"), QB_OK);
    const uint64_t want[] = {4, 6};
    assert_published(want, 2);
    assert_filtered(5);
    deliver_all();
    cfg.include = cfg.exclude = NULL;
    cfg.n_include = cfg.n_exclude = 0;
}

/* With a reply channel, the reply always passes; the result event is filtered like others. */
static void test_filter_reply_passes(void **state)
{
    static char *exclude[] = {"*"};

    (void)state;
    cfg.exclude = exclude;
    cfg.n_exclude = 1;
    cfg.commands = true;
    assert_int_equal(send_typed(QB_MSG_EVENT, "bridge.command.result", 1, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_REPLY, "bridge.command.result", 2, "{}"), QB_OK);
    assert_int_equal(send_typed(QB_MSG_EVENT, "qmp.vm.stopped", 3, "{}"), QB_OK);
    const uint64_t want[] = {2};
    assert_published(want, 1);
    assert_int_equal(tb->last_kind, QB_MSG_REPLY);
    assert_filtered(2);
    deliver_all();
    cfg.exclude = NULL;
    cfg.n_exclude = 0;
}

/* ---- registry and the stdout backend ---- */

static void test_validate_unknown_type(void **state)
{
    (void)state;
    struct qb_transport_config c = {.type = "carrier-pigeon", .name = "p"};
    char err[256] = "";
    assert_int_equal(qb_transport_validate(&c, err, sizeof(err)), QB_ECONFIG);
    assert_non_null(strstr(err, "unknown type 'carrier-pigeon'"));
    struct qb_transport *t = NULL;
    struct qb_bridge_info bridge = {.id = "br1"};
    assert_int_equal(qb_transport_create(&loop, &c, &bridge, &t, err, sizeof(err)), QB_ECONFIG);
    assert_null(t);
    c.type = "stdout";
    assert_int_equal(qb_transport_validate(&c, err, sizeof(err)), QB_OK);
}

static void test_stdout_bad_path(void **state)
{
    (void)state;
    struct qb_stdout_config sc = {.path = "/nonexistent-dir/x/out.jsonl"};
    struct qb_transport_config c = {.type = "stdout", .backend = &sc};
    char err[256] = "";
    struct qb_transport *t = NULL;
    struct qb_bridge_info bridge = {.id = "br1"};
    assert_int_equal(qb_transport_create(&loop, &c, &bridge, &t, err, sizeof(err)), QB_ECONFIG);
    assert_non_null(strstr(err, "transport stdout: cannot open /nonexistent-dir/x/out.jsonl: "));
}

static struct qb_transport *st_tr;
static bool stdout_all_confirmed(void)
{
    struct qb_transport_stats st;
    qb_transport_get_stats(st_tr, &st);
    return st.confirmed == 3;
}

static int st_done;
static void on_st_done(void *arg)
{
    (void)arg;
    st_done++;
}
static bool stdout_closed(void)
{
    return st_done > 0;
}

static void test_stdout_writes_lines(void **state)
{
    (void)state;
    char path[] = "/tmp/qb_test_stdout_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct qb_stdout_config sc = {.path = path};
    struct qb_transport_config c = {.type = "stdout", .backend = &sc, .shutdown_timeout_ms = 1000};
    char err[256] = "";
    struct qb_bridge_info bridge = {.id = "br1"};
    assert_int_equal(qb_transport_create(&loop, &c, &bridge, &st_tr, err, sizeof(err)), QB_OK);
    const char *lines[] = {"{\"a\":1}", "{\"b\":2}", "{\"c\":3}"};
    for (int i = 0; i < 3; i++) {
        struct qb_message m = {.vm = "vm1",
                               .type = "t",
                               .sequence = (uint64_t)i,
                               .payload = lines[i],
                               .len = strlen(lines[i])};
        assert_int_equal(qb_transport_send(st_tr, &m), QB_OK);
    }
    run_until(stdout_all_confirmed);
    st_done = 0;
    qb_transport_close(st_tr, on_st_done, NULL);
    run_until(stdout_closed);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char buf[256];
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    unlink(path);
    assert_string_equal(buf, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_confirm_out_of_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures_retry_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_before_unsent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eagain_waits_for_writable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound_by_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bound_by_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pressure_watermarks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_policy_no_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_waits_for_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_then_hand_over, setup_batch, teardown),
        cmocka_unit_test_setup_teardown(test_queue_without_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_never_synchronous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_skipped_without_retained, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_in_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscribe_unsupported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inbound_forwarded_and_acked, setup_cmd, teardown),
        cmocka_unit_test_setup_teardown(test_subscribe_failure, setup_cmd, teardown),
        cmocka_unit_test_setup_teardown(test_reply_copied, setup_cmd, teardown),
        cmocka_unit_test_setup_teardown(test_reply_skipped_without_reply_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_filter_include, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_filter_exclude, setup_stream, teardown),
        cmocka_unit_test_setup_teardown(test_filter_reply_passes, setup_cmd, teardown),
        cmocka_unit_test_setup_teardown(test_validate_unknown_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stdout_bad_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stdout_writes_lines, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
