/*
 * test_outbox.c - the outbox (bridge/outbox.c) over real transports
 * (bridge/transport.c) with scripted backends, with and without a spool.
 *
 * Each scripted backend records what it was handed, in order, and leaves
 * every confirmation to the test: it can refuse everything (link down), be
 * confirmed or failed at the test's will. Every transport gets its own
 * backend, so a test can let one stall while the other runs. The spool tests
 * use a real spool in a mkdtemp directory (removed afterwards). Transport
 * "a" keeps retained state, "b" is a plain stream (state copies are taken
 * and dropped there, never queued).
 *
 * What is pinned here: each transport receives the stream in the order it was
 * sent; a stalled or failing transport does not hold another back; back-
 * pressure rises and falls with a transport's window (on_full: backpressure
 * only); with a spool a transport that was down catches up from disk, in
 * order, with nothing missing; a reply goes only to its own transport.
 */
#include "config.h"
#include "error.h"
#include "outbox.h"
#include "spool.h"
#include "transport.h"
#include "transport_ops.h"

#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- scripted backend ------------------------------------------------------ */

#define SB_MAX 8192
#define SB_BACKENDS 4

struct sb_flight {
    void *token;
    uint64_t seq;
};

struct sb {
    const struct qb_transport_backend_cb *cb;
    void *owner;
    bool down; /* refuse every publish with QB_EAGAIN */
    struct sb_flight inflight[SB_MAX];
    size_t n_inflight;
    uint64_t published[SB_MAX]; /* sequences, in publish order (retries again) */
    enum qb_msg_kind kinds[SB_MAX];
    size_t n_published;
    uv_timer_t closed_timer;
    void (*closed)(void *arg);
    void *closed_arg;
};

static struct sb *backends[SB_BACKENDS];
static size_t n_backends;

static int sb_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    (void)cfg, (void)errbuf, (void)errlen;
    return QB_OK;
}

static int sb_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                     const struct qb_bridge_info *bridge, const struct qb_transport_backend_cb *cb,
                     void *owner, void **backend, char *errbuf, size_t errlen)
{
    struct sb *b = calloc(1, sizeof(*b));

    (void)cfg, (void)bridge, (void)errbuf, (void)errlen;
    assert_non_null(b);
    assert_true(n_backends < SB_BACKENDS);
    b->cb = cb;
    b->owner = owner;
    uv_timer_init(loop, &b->closed_timer);
    b->closed_timer.data = b;
    backends[n_backends++] = b;
    *backend = b;
    return QB_OK;
}

static int sb_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct sb *b = backend;

    if (b->down)
        return QB_EAGAIN;
    assert_true(b->n_inflight < SB_MAX);
    assert_true(b->n_published < SB_MAX);
    b->inflight[b->n_inflight++] = (struct sb_flight){token, msg->sequence};
    b->kinds[b->n_published] = msg->kind;
    b->published[b->n_published++] = msg->sequence;
    return QB_OK;
}

/* Reports every message in flight on b with status (from the test, never inside publish). */
static void sb_settle_all(struct sb *b, int status)
{
    while (b->n_inflight) {
        void *token = b->inflight[0].token;

        memmove(&b->inflight[0], &b->inflight[1], (b->n_inflight - 1) * sizeof(b->inflight[0]));
        b->n_inflight--;
        b->cb->delivered(b->owner, token, status);
    }
}

static void sb_on_closed_timer(uv_timer_t *timer)
{
    struct sb *b = timer->data;

    b->closed(b->closed_arg);
}

static void sb_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct sb *b = backend;

    sb_settle_all(b, QB_ECLOSED);
    b->closed = closed;
    b->closed_arg = arg;
    uv_timer_start(&b->closed_timer, sb_on_closed_timer, 0, 0);
}

/* Takes a turn's messages together, as Kafka does (QB_TRANSPORT_CAP_BATCHES). */
static const struct qb_transport_ops sb_ops = {
    .name = "scripted",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_REPLY | QB_TRANSPORT_CAP_BATCHES,
    .validate = sb_validate,
    .create = sb_create,
    .publish = sb_publish,
    .close = sb_close,
};

/* The same without a retained channel (a plain stream): it takes state copies without queueing;
   and like MQTT it gets each message at once, not a turn's together. */
static const struct qb_transport_ops sb_stream_ops = {
    .name = "scripted-stream",
    .caps = QB_TRANSPORT_CAP_REPLY,
    .validate = sb_validate,
    .create = sb_create,
    .publish = sb_publish,
    .close = sb_close,
};

/* ---- fixture --------------------------------------------------------------- */

struct fixture {
    uv_loop_t loop;
    struct qb_config cfg;
    struct qb_transport_config tcfg[2];
    struct qb_transport *t[2];
    struct sb *b[2];
    struct qb_spool *spool;
    struct qb_outbox *o;
    char dir[64];
    bool have_dir;
    int closed;
    int pressure_calls;
    bool pressure_now;
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->cfg.spool_max_bytes = 64u << 20;
    f->cfg.spool_memory_max_messages = 100;
    for (int i = 0; i < 2; i++) {
        f->tcfg[i].type = "scripted";
        f->tcfg[i].name = i ? "b" : "a";
        f->tcfg[i].queue_max_messages = 1000;
        f->tcfg[i].queue_max_bytes = 1 << 20;
        f->tcfg[i].shutdown_timeout_ms = 0;
    }
    n_backends = 0;
    *state = f;
    return 0;
}

static void on_pressure(void *arg, bool pressure)
{
    struct fixture *f = arg;

    f->pressure_calls++;
    f->pressure_now = pressure;
}

/* Creates both transports (with tcfg as the test left it) and the outbox, spooled or not. */
static void start(struct fixture *f, bool spooled)
{
    struct qb_bridge_info bridge = {.id = "br1"};
    char err[256];

    for (int i = 0; i < 2; i++) {
        assert_int_equal(qb_transport_create_with_ops(i ? &sb_stream_ops : &sb_ops, &f->loop,
                                                      &f->tcfg[i], &bridge, &f->t[i], err,
                                                      sizeof(err)),
                         QB_OK);
        f->b[i] = backends[i];
    }
    if (spooled) {
        struct qb_spool_options so = {
            .max_bytes = 64u << 20, .segment_bytes = 1u << 20, .fsync = QB_SPOOL_FSYNC_OFF};

        strcpy(f->dir, "/tmp/qb-outbox-test-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        f->have_dir = true;
        so.dir = f->dir;
        assert_int_equal(qb_spool_open(&f->loop, &so, &f->spool, err, sizeof(err)), QB_OK);
    }
    assert_int_equal(qb_outbox_new(&f->loop, &f->cfg, f->t, 2, f->spool, &f->o), QB_OK);
    qb_outbox_set_pressure_cb(f->o, on_pressure, f);
}

static void on_closed(void *arg)
{
    struct fixture *f = arg;

    f->closed++;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    for (int i = 0; i < 2; i++)
        if (f->t[i])
            qb_transport_close(f->t[i], on_closed, f);
    while (f->closed < 2 && f->t[0])
        uv_run(&f->loop, UV_RUN_ONCE);
    qb_outbox_close(f->o);
    qb_spool_close(f->spool);
    for (size_t i = 0; i < n_backends; i++)
        uv_close((uv_handle_t *)&backends[i]->closed_timer, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    for (size_t i = 0; i < n_backends; i++)
        free(backends[i]);
    n_backends = 0;
    if (f->have_dir)
        nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static struct qb_message event(uint64_t seq, const char *payload)
{
    struct qb_message m = {
        .kind = QB_MSG_EVENT,
        .vm = "vm1",
        .type = "qmp.test",
        .id = "1-x",
        .key = "br1/vm1",
        .sequence = seq,
        .epoch = 1,
        .payload = payload,
        .len = strlen(payload),
    };
    return m;
}

/*
 * Sends first..last within one loop turn, then ends the turn: the transports
 * get a turn's messages at its end (with a spool, after its one write).
 */
static void send_events(struct fixture *f, uint64_t first, uint64_t last)
{
    for (uint64_t s = first; s <= last; s++) {
        struct qb_message m = event(s, "{\"data\":1}");

        assert_int_equal(qb_outbox_send(f->o, &m), QB_OK);
    }
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* b was handed exactly first..last, in this order, once each. */
static void assert_stream(const struct sb *b, uint64_t first, uint64_t last)
{
    assert_int_equal(b->n_published, last - first + 1);
    for (size_t i = 0; i < b->n_published; i++)
        assert_int_equal(b->published[i], first + i);
}

static struct qb_transport_stats stats_of(const struct qb_transport *t)
{
    struct qb_transport_stats st;

    qb_transport_get_stats(t, &st);
    return st;
}

/*
 * Confirms whatever transport i's backend has in flight, turning the loop in
 * between (retry pauses, feeding from the spool), until the transport has
 * confirmed `total` messages since start; fails after about 5 s.
 */
static void drain(struct fixture *f, int i, uint64_t total)
{
    for (int round = 0; round < 5000; round++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        if (stats_of(f->t[i]).confirmed >= total)
            return;
        if (f->b[i]->n_inflight)
            sb_settle_all(f->b[i], QB_OK);
        else
            uv_sleep(1);
    }
    fail_msg("transport %d confirmed %llu of %llu", i,
             (unsigned long long)stats_of(f->t[i]).confirmed, (unsigned long long)total);
}

static void on_wake(uv_timer_t *timer)
{
    (void)timer;
}

/* Turns the loop for ms milliseconds: whatever the outbox's 1 s tick does runs in it. */
static void run_for(struct fixture *f, uint64_t ms)
{
    uv_timer_t wake;

    uv_timer_init(&f->loop, &wake);
    uv_timer_start(&wake, on_wake, ms, 0);
    while (uv_is_active((uv_handle_t *)&wake))
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wake, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* ---- memory queues (no spool) ---------------------------------------------- */

/* Every transport gets the stream in the order it was sent. */
static void test_memory_order_per_transport(void **state)
{
    struct fixture *f = *state;

    struct qb_message st = event(51, "{\"state\":1}");

    start(f, false);
    send_events(f, 1, 50);
    assert_stream(f->b[0], 1, 50);
    assert_stream(f->b[1], 1, 50);
    st.kind = QB_MSG_STATE;
    assert_int_equal(qb_outbox_send(f->o, &st), QB_OK); /* a only: b has no retained channel */
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_stream(f->b[0], 1, 51);
    assert_stream(f->b[1], 1, 50);
    drain(f, 0, 51);
    drain(f, 1, 50);
    assert_int_equal(stats_of(f->t[0]).confirmed, 51);
    assert_int_equal(stats_of(f->t[1]).confirmed, 50);
    run_for(f, 1100); /* past a tick: nothing of the spool's bookkeeping runs without one */
}

/*
 * Without a spool too, a turn's messages reach a backend that batches
 * (QB_TRANSPORT_CAP_BATCHES: Kafka) together at the turn's end; its window
 * counts them as they are sent, so a full window pauses reading within the
 * turn, as promptly as when each was handed over. A backend that does not
 * batch (b, like MQTT) gets each at once.
 */
static void test_memory_one_hand_over_per_turn(void **state)
{
    struct fixture *f = *state;

    f->tcfg[0].queue_max_messages = 10;
    f->tcfg[0].on_full = QB_ON_FULL_BACKPRESSURE;
    start(f, false);
    for (uint64_t seq = 1; seq <= 9; seq++) {
        struct qb_message m = event(seq, "{\"data\":1}");

        assert_int_equal(qb_outbox_send(f->o, &m), QB_OK);
    }
    assert_int_equal(f->b[0]->n_published, 0);
    assert_stream(f->b[1], 1, 9);
    assert_int_equal(stats_of(f->t[0]).depth, 9);
    assert_true(qb_outbox_under_pressure(f->o)); /* 9 of 10: within the turn */

    uv_run(&f->loop, UV_RUN_NOWAIT); /* the turn ends */
    assert_stream(f->b[0], 1, 9);
    assert_stream(f->b[1], 1, 9);
    drain(f, 0, 9);
    drain(f, 1, 9);
    assert_false(qb_outbox_under_pressure(f->o));
}

/* A transport that is down, or whose deliveries fail, holds no other back; it retries in order. */
static void test_memory_stalled_not_blocking(void **state)
{
    struct fixture *f = *state;

    start(f, false);
    f->b[0]->down = true;
    send_events(f, 1, 20);
    assert_int_equal(f->b[0]->n_published, 0);
    assert_stream(f->b[1], 1, 20);
    drain(f, 1, 20);

    /* b: every delivery fails; a keeps going once its link is up */
    send_events(f, 21, 30);
    sb_settle_all(f->b[1], QB_EIO);
    f->b[0]->down = false;
    f->b[0]->cb->writable(f->b[0]->owner);
    send_events(f, 31, 40);
    assert_stream(f->b[0], 1, 40);
    drain(f, 0, 40);
    assert_int_equal(stats_of(f->t[0]).confirmed, 40);

    /* b's failed messages go out again, in order, before what came after them */
    drain(f, 1, 40);
    assert_int_equal(stats_of(f->t[1]).confirmed, 40);
    assert_int_equal(stats_of(f->t[1]).retried, 10);
    for (size_t i = 30; i < f->b[1]->n_published; i++)
        assert_true(i == 30 || f->b[1]->published[i] == f->b[1]->published[i - 1] + 1);
    assert_int_equal(f->b[1]->published[30], 21);
}

/* on_full: backpressure: reads pause at 90% of a transport's window and resume under 50%. */
static void test_memory_pressure_on_off(void **state)
{
    struct fixture *f = *state;

    f->tcfg[0].queue_max_messages = 10;
    f->tcfg[0].on_full = QB_ON_FULL_BACKPRESSURE;
    start(f, false);
    f->b[0]->down = true;
    send_events(f, 1, 8);
    assert_false(qb_outbox_under_pressure(f->o));
    assert_int_equal(f->pressure_calls, 0);
    send_events(f, 9, 9); /* 9 of 10 */
    assert_true(qb_outbox_under_pressure(f->o));
    assert_int_equal(f->pressure_calls, 1);
    assert_true(f->pressure_now);

    f->b[0]->down = false;
    f->b[0]->cb->writable(f->b[0]->owner);
    drain(f, 0, 9);
    assert_false(qb_outbox_under_pressure(f->o));
    assert_int_equal(f->pressure_calls, 2);
    assert_false(f->pressure_now);
    assert_stream(f->b[0], 1, 9);
}

/* on_full: drop never pauses reads: the transport refuses at its bound, counted as dropped. */
static void test_memory_drop_policy_no_pressure(void **state)
{
    struct fixture *f = *state;

    f->tcfg[0].queue_max_messages = 10;
    f->tcfg[0].on_full = QB_ON_FULL_DROP;
    start(f, false);
    f->b[0]->down = true;
    send_events(f, 1, 11);
    assert_false(qb_outbox_under_pressure(f->o));
    assert_int_equal(f->pressure_calls, 0);
    assert_int_equal(stats_of(f->t[0]).dropped, 1);
    assert_int_equal(stats_of(f->t[1]).dropped, 0);
}

/* A reply goes to the transport the command came on, and only there; never through send. */
static void test_reply_only_its_transport(void **state)
{
    struct fixture *f = *state;
    struct qb_message r = event(7, "{\"result\":1}");

    start(f, false);
    assert_int_equal(qb_outbox_send(f->o, &(struct qb_message){.kind = QB_MSG_REPLY}), QB_EINVAL);
    r.kind = QB_MSG_REPLY;
    r.reply_topic = "reply/to/me";
    assert_int_equal(qb_outbox_send_reply(f->o, f->t[1], &r), QB_OK);
    assert_int_equal(f->b[0]->n_published, 0);
    assert_int_equal(f->b[1]->n_published, 1);
    assert_int_equal(f->b[1]->kinds[0], QB_MSG_REPLY);
    r.kind = QB_MSG_EVENT;
    assert_int_equal(qb_outbox_send_reply(f->o, f->t[1], &r), QB_EINVAL);
}

/* ---- with a spool ------------------------------------------------------------ */

/* The spooled stream reaches every transport in order; confirmations move the cursors. */
static void test_spool_order_per_transport(void **state)
{
    struct fixture *f = *state;
    struct qb_outbox_stats os;

    start(f, true);
    send_events(f, 1, 30);
    assert_stream(f->b[0], 1, 30);
    assert_stream(f->b[1], 1, 30);
    drain(f, 0, 30);
    drain(f, 1, 30);
    qb_outbox_get_stats(f->o, &os);
    assert_int_equal(os.sent, 30);
    assert_int_equal(os.spooled, 30);
    assert_int_equal(os.from_spool, 0);
    assert_int_equal(stats_of(f->t[0]).dropped, 0);
}

/*
 * A transport whose backend is down falls behind once its window is full and
 * catches up from disk when it comes back: everything, in order, once. The
 * other transport is not held back meanwhile, and the spool never pauses reads.
 */
static void test_spool_catch_up_from_disk(void **state)
{
    struct fixture *f = *state;
    struct qb_outbox_stats os;

    f->tcfg[0].queue_max_messages = 10;
    start(f, true);
    f->b[0]->down = true;
    send_events(f, 1, 200);
    assert_stream(f->b[1], 1, 200);
    drain(f, 1, 200);
    assert_int_equal(f->b[0]->n_published, 0);
    assert_true(stats_of(f->t[0]).depth <= 10);
    assert_int_equal(stats_of(f->t[0]).dropped, 0); /* behind, not lost */
    assert_false(qb_outbox_under_pressure(f->o));

    f->b[0]->down = false;
    f->b[0]->cb->writable(f->b[0]->owner);
    drain(f, 0, 200);
    assert_stream(f->b[0], 1, 200);
    assert_int_equal(stats_of(f->t[0]).confirmed, 200);
    qb_outbox_get_stats(f->o, &os);
    assert_true(os.from_spool > 0);
    assert_int_equal(os.dropped, 0);

    /* caught up: new messages go straight from memory again */
    send_events(f, 201, 205);
    assert_stream(f->b[0], 1, 205);
    drain(f, 0, 205);
}

/* A transport whose deliveries fail holds the other back neither with a spool; it retries. */
static void test_spool_failing_not_blocking(void **state)
{
    struct fixture *f = *state;

    f->tcfg[0].queue_max_messages = 10;
    start(f, true);
    for (uint64_t s = 1; s <= 100; s += 10) {
        send_events(f, s, s + 9);
        sb_settle_all(f->b[0], QB_EIO); /* a: every delivery fails */
        drain(f, 1, s + 9);
    }
    assert_stream(f->b[1], 1, 100);
    assert_int_equal(stats_of(f->t[0]).confirmed, 0);

    /* a recovers: every record once confirmed, in order after the retries */
    drain(f, 0, 100);
    assert_int_equal(stats_of(f->t[0]).confirmed, 100);
    assert_int_equal(stats_of(f->t[0]).dropped, 0);
}

/*
 * What a transport confirmed is what its checkpointed cursor says at close: a
 * transport that was down keeps its cursor at the first record it never
 * confirmed (replayed at the next start), the other one is past everything.
 */
static void test_spool_cursor_at_close(void **state)
{
    struct fixture *f = *state;

    start(f, true);
    f->b[0]->down = true;
    send_events(f, 1, 20);
    drain(f, 1, 20);
    for (int i = 0; i < 2; i++)
        qb_transport_close(f->t[i], on_closed, f);
    while (f->closed < 2)
        uv_run(&f->loop, UV_RUN_ONCE);
    f->t[0] = f->t[1] = NULL;
    qb_outbox_close(f->o);
    f->o = NULL;
    assert_int_equal(qb_spool_get_cursor(f->spool, "a"), 1);
    assert_int_equal(qb_spool_get_cursor(f->spool, "b"), 21);
}

static uint64_t spool_writes(const struct fixture *f)
{
    struct qb_spool_stats st;

    qb_spool_get_stats(f->spool, &st);
    return st.writes;
}

/*
 * All records of one loop turn take one spool write, at the end of the turn;
 * no transport sees any of them before that write (a record handed on but
 * never written would let a restarted bridge reuse its sequence and id).
 */
static void test_spool_one_write_per_turn(void **state)
{
    struct fixture *f = *state;
    struct qb_outbox_stats os;
    uint64_t writes;

    start(f, true);
    writes = spool_writes(f);
    for (uint64_t seq = 1; seq <= 50; seq++) {
        struct qb_message m = event(seq, "{\"data\":1}");

        assert_int_equal(qb_outbox_send(f->o, &m), QB_OK);
    }
    assert_int_equal(f->b[0]->n_published, 0);
    assert_int_equal(f->b[1]->n_published, 0);
    assert_int_equal(qb_spool_next_id(f->spool), 1);
    assert_int_equal(spool_writes(f), writes);

    uv_run(&f->loop, UV_RUN_NOWAIT); /* the turn ends */
    assert_int_equal(spool_writes(f), writes + 1);
    assert_int_equal(qb_spool_next_id(f->spool), 51);
    assert_stream(f->b[0], 1, 50);
    assert_stream(f->b[1], 1, 50);
    qb_outbox_get_stats(f->o, &os);
    assert_int_equal(os.spooled, 50);
    drain(f, 0, 50);
    drain(f, 1, 50);
}

/*
 * A lane that fell behind is refilled at once when its window opens: with as
 * many records as the turns since its last feed wrote, not 256 with the rest
 * left to the next turn. Flat out with a thousand VMs a turn reads for tens of
 * milliseconds, and while it did the broker had only the 256 to send: the
 * window refilled every other turn and the spool run delivered a quarter of
 * what the same run without a spool did (docs/benchmarks.md).
 */
static void test_spool_lagging_lane_refilled_at_once(void **state)
{
    struct fixture *f = *state;
    uint64_t written = 3000;

    f->tcfg[0].queue_max_messages = 2000; /* full at 1,800 in flight, open again under 1,000 */
    start(f, true);
    send_events(f, 1, written); /* a takes 1,800 live, then its window is full */
    drain(f, 1, written);
    assert_int_equal(f->b[0]->n_published, 1800);
    sb_settle_all(f->b[0], QB_OK); /* the window opens: a is fed from disk right there */
    assert_int_equal(f->b[0]->n_published, written);
    for (int turn = 0; turn < 3; turn++) {
        sb_settle_all(f->b[0], QB_OK);
        send_events(f, written + 1, written + 1000);
        written += 1000;
        assert_int_equal(f->b[0]->n_published, written); /* caught up: live again */
    }
    assert_stream(f->b[0], 1, written);
    drain(f, 0, written);
    drain(f, 1, written);
}

/*
 * A turn whose write fails hands its records back to the memory list: none is
 * delivered, reads pause, what comes later waits behind them, and once the
 * disk takes writes again everything goes out in order, once.
 */
static void test_spool_failed_write_holds_turn(void **state)
{
    struct fixture *f = *state;
    struct qb_outbox_stats os;
    struct rlimit saved, lim;
    struct stat st;
    char path[128];

    start(f, true);
    send_events(f, 1, 5);
    assert_stream(f->b[0], 1, 5);
    snprintf(path, sizeof(path), "%s/%016x.seg", f->dir, 1);
    assert_int_equal(stat(path, &st), 0);
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = (rlim_t)st.st_size + 100; /* one record fits, the turn's five do not */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);

    send_events(f, 6, 10);
    qb_outbox_get_stats(f->o, &os);
    assert_int_equal(os.held, 5);
    assert_int_equal(os.spooled, 5);
    assert_true(qb_outbox_under_pressure(f->o));
    assert_stream(f->b[0], 1, 5);
    assert_stream(f->b[1], 1, 5);
    send_events(f, 11, 11); /* behind the held ones */
    qb_outbox_get_stats(f->o, &os);
    assert_int_equal(os.held, 6);
    assert_int_equal(stat(path, &st), 0);

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    run_for(f, 1100); /* the tick retries the memory list */
    qb_outbox_get_stats(f->o, &os);
    assert_int_equal(os.held, 0);
    assert_int_equal(os.spooled, 11);
    assert_int_equal(os.dropped, 0);
    assert_false(qb_outbox_under_pressure(f->o));
    assert_stream(f->b[0], 1, 11);
    assert_stream(f->b[1], 1, 11);
    drain(f, 0, 11);
    drain(f, 1, 11);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memory_order_per_transport, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_one_hand_over_per_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_stalled_not_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_pressure_on_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_drop_policy_no_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reply_only_its_transport, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_order_per_transport, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_catch_up_from_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_lagging_lane_refilled_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_failing_not_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_cursor_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_one_write_per_turn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_failed_write_holds_turn, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
