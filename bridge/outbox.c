/*
 * outbox.c - every outgoing event/state envelope to every transport, through
 * the spool when there is one. See outbox.h for the guarantees.
 *
 * Delivery is one pipeline that only calls down:
 *
 *   qb_outbox_send -> [held list] -> ob_store (spool stage) -> [turn list]
 *       -> ob_flush (one spool write per loop turn) -> lanes -> qb_transport_send
 *
 * and hears back only through the listener each transport was given when its
 * lane was made (window full/open, progress of spooled records). The outbox
 * never asks a transport about its queue: the transport's window, with its
 * one rule (transport.h), is the only window, and the outbox mirrors it.
 *
 * Batching keeps two rules. No transport sees a record before it is written:
 * a record handed on but never written would let a restarted bridge give its
 * sequence, and so its id, to another event; so the turn list holds each
 * message (a copy) until ob_flush has written the batch, and live delivery
 * happens there. And a failed write hands the turn's messages back to the
 * memory list, in order and ahead of anything held after them, where they
 * wait like any message the spool could not take.
 *
 * ob_flush runs from a check handle (right after the poll phase, where QMP
 * reads produce records) and a prepare handle (right before the next poll, for
 * records made by timers or close callbacks), both active only while the turn
 * list is not empty: a record never waits through a blocking poll.
 *
 * Without a spool there is no write to wait for, but the turn is kept all the
 * same: each message is queued in every transport at once (its window counts
 * it, so a full window pauses reading as promptly), and a transport that
 * batches (QB_TRANSPORT_CAP_BATCHES: Kafka) gets the turn's messages together
 * from ob_flush. Handed over one by one as QMP lines were read, Kafka's broker
 * threads woke for every few messages and, flat out on two cores, took the CPU
 * the loop needed (docs/benchmarks.md); with a spool the turn list already
 * gave them a turn's records at once.
 *
 * Each transport has a lane: `next` is the first spool record not yet handed
 * to its queue, `confirmed_below` the first record it has not confirmed. A
 * lane that keeps up gets new records straight from memory; one whose window
 * is full (or that refused a record) falls behind (lagging) and is fed from
 * disk through a spool reader once its window is open again. Records reach a
 * transport in spool order either way, because a lagging lane takes nothing
 * from memory until its reader has caught up.
 *
 * One timer (1 s, running only while there is something to do) writes the
 * checkpoint and releases confirmed segments, retries messages held in memory
 * while the spool could not be written, feeds lagging lanes that no
 * confirmation woke, and reports drops.
 */
#include "outbox.h"

#include "error.h"
#include "log.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define OB_TICK_MS 1000
/*
 * Records fed from disk per callback, plus the lane's credit: as many records
 * as the turns since its last feed wrote (at most OB_FEED_CREDIT_MAX), so
 * feeding costs the loop about what reading cost it. A callback that used its
 * budget restarts the 0 ms `soon` timer; libuv 1.44 runs a timer restarted in
 * its own callback again in the same timer phase, so a refill really ends
 * when the transport's window is full (10,000 messages by default) or the
 * lane has caught up: that window is what bounds one refill's hold on the
 * loop. With the fixed batch alone, a window that opened while delivery
 * reports were served (the poll phase) got 256 records, and the rest waited
 * for the next turn's timers: flat out with a thousand VMs a turn reads for
 * tens of milliseconds, the broker had almost nothing to send meanwhile, and
 * the spool run delivered a quarter of what the run without a spool did
 * (docs/benchmarks.md).
 */
#define OB_FEED_BATCH 256
#define OB_FEED_CREDIT_MAX 65536

struct ob_lane {
    struct qb_outbox *o;
    struct qb_transport *t;
    char *name;    /* the transport's name: the checkpoint's key, needed after t is gone */
    uint64_t next; /* first record not handed to t */
    uint64_t confirmed_below; /* first record t has not confirmed */
    struct qb_spool_reader *reader;
    bool full;         /* t's window is full (its listener said so) */
    bool backpressure; /* memory mode: t's on_full is backpressure, so full pauses QMP reads */
    bool pressure;     /* memory mode: this lane counts in n_tr_pressure */
    bool feeding;
    uint64_t credit; /* records written since this lagging lane was last fed (OB_FEED_BATCH) */
};

/* A message waiting in memory for the spool: a qb_message_copy. */
struct ob_held {
    struct ob_held *next;
    struct qb_message msg;
};

/* A run of messages of one VM dropped since the last report. */
struct ob_drop {
    char *vm;
    uint64_t first, last, count;
    UT_hash_handle hh;
};

struct qb_outbox {
    uv_loop_t *loop;
    const struct qb_config *cfg;
    struct qb_spool *spool;
    struct ob_lane *
        *lanes; /* each lane its own allocation: transports hold it as their callback arg */
    size_t n_lanes;

    struct ob_held *held_head, *held_tail;
    size_t held_n;
    struct ob_held *turn_head, *turn_tail; /* staged in the spool's batch, not yet written */
    size_t turn_n;
    uv_prepare_t *prepare; /* separate allocations: freed by their close callbacks */
    uv_check_t *check;
    bool spool_failing; /* the last append failed: log recovery once it works */
    bool hand_over;     /* memory mode: this turn's messages are queued, not yet handed over */

    uv_timer_t *timer; /* separate allocation: freed by its close callback */
    uv_timer_t *soon;  /* 0 ms: feeding continues after a batch (see OB_FEED_BATCH) */
    bool dirty;        /* cursors moved since the last checkpoint */

    size_t n_tr_pressure; /* memory mode: transports asking for back-pressure */
    bool spool_high;      /* spool mode: over the high-water mark */
    bool pressure;        /* what was last reported */
    qb_outbox_pressure_cb pressure_cb;
    void *pressure_arg;

    struct ob_drop *drops;
    struct qb_outbox_stats stats;
};

static void ob_feed(struct ob_lane *l);
static void ob_feed_soon(uv_timer_t *timer);
static void ob_arm_timer(struct qb_outbox *o);
static int ob_flush(struct qb_outbox *o);

/* ---- pressure ------------------------------------------------------------ */

static void ob_update_pressure(struct qb_outbox *o)
{
    bool want;

    if (o->spool) {
        struct qb_spool_stats st;
        uint64_t max = o->cfg->spool_max_bytes;

        qb_spool_get_stats(o->spool, &st);
        if (o->cfg->spool_on_full == QB_SPOOL_FULL_BACKPRESSURE) {
            /* 90% on, 80% off: a spool hovering at the mark must not flap every socket */
            if (!o->spool_high && st.bytes * 10 >= max * 9) {
                o->spool_high = true;
                QB_LOG_WARN(NULL, "spool at %" PRIu64 " of %" PRIu64 " bytes: pausing QMP reads",
                            st.bytes, max);
            } else if (o->spool_high && st.bytes * 10 < max * 8) {
                o->spool_high = false;
                QB_LOG_INFO(NULL, "spool down to %" PRIu64 " bytes: resuming QMP reads", st.bytes);
            }
        }
        want = o->spool_high || o->held_n > 0;
    } else {
        want = o->n_tr_pressure > 0;
    }
    if (want == o->pressure)
        return;
    o->pressure = want;
    if (o->pressure_cb)
        o->pressure_cb(o->pressure_arg, want);
}

/* Memory mode: l counts towards the pause of QMP reads (or no longer does). */
static void ob_lane_set_pressure(struct ob_lane *l, bool pressure)
{
    struct qb_outbox *o = l->o;

    if (pressure == l->pressure)
        return;
    l->pressure = pressure;
    if (pressure)
        o->n_tr_pressure++;
    else
        o->n_tr_pressure--;
    ob_update_pressure(o);
}

void qb_outbox_set_pressure_cb(struct qb_outbox *o, qb_outbox_pressure_cb cb, void *arg)
{
    o->pressure_cb = cb;
    o->pressure_arg = arg;
}

bool qb_outbox_under_pressure(const struct qb_outbox *o)
{
    return o->pressure;
}

/* ---- drop accounting ----------------------------------------------------- */

static void ob_note_drop(struct qb_outbox *o, const struct qb_message *msg)
{
    struct ob_drop *d = NULL;
    const char *vm = msg->vm ? msg->vm : "";

    o->stats.dropped++;
    HASH_FIND_STR(o->drops, vm, d);
    if (!d) {
        d = calloc(1, sizeof(*d));
        if (!d || !(d->vm = strdup(vm))) {
            free(d);
            QB_LOG_ERR(msg->vm, "dropped %s seq %" PRIu64 " (out of memory for the report)",
                       msg->type ? msg->type : "?", msg->sequence);
            return;
        }
        d->first = msg->sequence;
        HASH_ADD_KEYPTR(hh, o->drops, d->vm, strlen(d->vm), d);
    }
    if (msg->sequence < d->first)
        d->first = msg->sequence;
    if (msg->sequence > d->last)
        d->last = msg->sequence;
    d->count++;
    ob_arm_timer(o);
}

/* Logs and forgets every run of drops: one line per VM with the range of sequences lost. */
static void ob_report_drops(struct qb_outbox *o)
{
    struct ob_drop *d, *tmp;

    HASH_ITER(hh, o->drops, d, tmp)
    {
        QB_LOG_ERR(d->vm,
                   "spool unavailable and %zu messages already held in memory: dropped %" PRIu64
                   " messages (sequence %" PRIu64 "..%" PRIu64 ")",
                   o->cfg->spool_memory_max_messages, d->count, d->first, d->last);
        HASH_DEL(o->drops, d);
        free(d->vm);
        free(d);
    }
}

static void ob_spool_dropped(void *arg, const char *vm, uint64_t first_seq, uint64_t last_seq,
                             uint64_t count)
{
    struct qb_outbox *o = arg;

    (void)vm, (void)first_seq, (void)last_seq; /* the spool logged the range */
    o->stats.dropped += count;
}

/* ---- the memory list ----------------------------------------------------- */

/*
 * Keeps h (owned: taken over, or freed when dropped) at the end of the list
 * until the spool takes it, or drops it when the list is full.
 */
static int ob_hold(struct qb_outbox *o, struct ob_held *h)
{
    if (o->held_n >= o->cfg->spool_memory_max_messages) {
        ob_note_drop(o, &h->msg);
        free(h);
        return QB_EAGAIN;
    }
    h->next = NULL;
    h->msg.spool_id = 0;
    if (o->held_tail)
        o->held_tail->next = h;
    else
        o->held_head = h;
    o->held_tail = h;
    o->held_n++;
    o->stats.held = o->held_n;
    ob_arm_timer(o);
    return QB_OK;
}

/* ---- spooled delivery ---------------------------------------------------- */

/* Logs the first failure of a streak to take msg (the first message refused). */
static void ob_note_spool_failure(struct qb_outbox *o, const struct qb_message *msg, int rc)
{
    if (!o->spool_failing) {
        o->spool_failing = true;
        QB_LOG_ERR(msg->vm,
                   "spool cannot take %s seq %" PRIu64 " (%s): holding up to %zu messages in "
                   "memory, pausing QMP reads, retrying every %d ms",
                   msg->type ? msg->type : "?", msg->sequence, qb_strerror(rc),
                   o->cfg->spool_memory_max_messages, OB_TICK_MS);
    }
}

/*
 * Stages msg in the spool's batch: when the batch must be written first (a
 * new segment, the size cap) that is done now, and with on_full: drop_oldest
 * a full spool (or file system) gives up its oldest segments, after writing
 * this turn's batch, until the record fits. Returns the stage's code (or the
 * flush's, when writing the batch first failed).
 */
static int ob_append(struct qb_outbox *o, const struct qb_message *msg, uint64_t *id)
{
    int rc = qb_spool_stage(o->spool, msg, id);

    if (rc == QB_EAGAIN) {
        if ((rc = ob_flush(o)) != QB_OK)
            return rc;
        rc = qb_spool_stage(o->spool, msg, id);
    }
    if (rc == QB_ENOSPC && o->cfg->spool_on_full == QB_SPOOL_FULL_DROP_OLDEST && o->turn_head) {
        /* the batch is not on disk yet, so not droppable: write it, then make room */
        if ((rc = ob_flush(o)) != QB_OK)
            return rc;
        rc = qb_spool_stage(o->spool, msg, id);
    }
    while (rc == QB_ENOSPC && o->cfg->spool_on_full == QB_SPOOL_FULL_DROP_OLDEST) {
        if (qb_spool_drop_oldest(o->spool, ob_spool_dropped, o) < 0)
            break;
        rc = qb_spool_stage(o->spool, msg, id);
    }
    if (rc < 0)
        ob_note_spool_failure(o, msg, rc);
    return rc;
}

/* Hands the just-appended record id to every lane that is caught up and whose window is open. */
static void ob_deliver_live(struct qb_outbox *o, uint64_t id, const struct qb_message *msg)
{
    struct qb_message m = *msg;

    m.spool_id = id;
    for (size_t i = 0; i < o->n_lanes; i++) {
        struct ob_lane *l = o->lanes[i];

        if (l->next != id)
            continue; /* lagging: ob_feed reads it from disk in order */
        if (l->full || qb_transport_send(l->t, &m) != QB_OK) {
            /* window full, refused (closing, over a bound): fed again from disk */
            QB_LOG_INFO(NULL,
                        "transport %s: falling behind (window full), reading from the "
                        "spool from record %" PRIu64,
                        l->name, id);
            continue;
        }
        l->next = id + 1;
    }
}

static void ob_on_prepare(uv_prepare_t *h)
{
    ob_flush(h->data);
}

static void ob_on_check(uv_check_t *h)
{
    ob_flush(h->data);
}

/*
 * Stages h's message in the spool's batch and keeps h (owned: taken over on
 * QB_OK, still the caller's otherwise) in the turn list until ob_flush has
 * written the batch and hands it to the lanes. This is where every record
 * enters the spool (from qb_outbox_send and from the held list). Returns
 * ob_append's code; on failure nothing was staged.
 */
static int ob_store(struct qb_outbox *o, struct ob_held *h)
{
    uint64_t id;
    int rc = ob_append(o, &h->msg, &id);

    if (rc != QB_OK)
        return rc;
    h->msg.spool_id = id;
    h->next = NULL;
    if (o->turn_tail)
        o->turn_tail->next = h;
    else
        o->turn_head = h;
    o->turn_tail = h;
    if (o->turn_n++ == 0) {
        uv_prepare_start(o->prepare, ob_on_prepare);
        uv_check_start(o->check, ob_on_check);
    }
    return QB_OK;
}

/*
 * Writes this turn's batch with one spool write, then hands its messages to
 * the lanes that keep up, in order. When the write fails, nothing was stored
 * or delivered: the turn's messages go back to the front of the memory list
 * (ahead of anything held after them; the list may then exceed
 * memory_max_messages by one turn's messages, which the senders were already
 * told were taken) and are retried with it. Returns QB_OK or the flush's code.
 */
static int ob_flush(struct qb_outbox *o)
{
    struct ob_held *h;
    int rc;

    uv_prepare_stop(o->prepare);
    uv_check_stop(o->check);
    if (o->hand_over) {
        o->hand_over = false;
        for (size_t i = 0; i < o->n_lanes; i++)
            qb_transport_hand_over(o->lanes[i]->t);
    }
    if (!o->turn_head)
        return QB_OK;
    if ((rc = qb_spool_flush(o->spool)) != QB_OK) {
        ob_note_spool_failure(o, &o->turn_head->msg, rc);
        o->turn_tail->next = o->held_head;
        if (!o->held_head)
            o->held_tail = o->turn_tail;
        o->held_head = o->turn_head;
        o->held_n += o->turn_n;
        o->stats.held = o->held_n;
        o->turn_head = o->turn_tail = NULL;
        o->turn_n = 0;
        ob_arm_timer(o);
        ob_update_pressure(o);
        return rc;
    }
    if (o->spool_failing) {
        o->spool_failing = false;
        QB_LOG_INFO(NULL, "spool: appending again");
    }
    o->stats.spooled += o->turn_n;
    uint64_t written = o->turn_n;
    /* detached first: a transport's callback may send again, which starts the next batch */
    h = o->turn_head;
    o->turn_head = o->turn_tail = NULL;
    o->turn_n = 0;
    while (h) {
        struct ob_held *next = h->next;

        ob_deliver_live(o, h->msg.spool_id, &h->msg);
        free(h);
        h = next;
    }
    for (size_t i = 0; i < o->n_lanes; i++) {
        struct ob_lane *l = o->lanes[i];

        if (l->next >= qb_spool_next_id(o->spool))
            continue;
        ob_arm_timer(o); /* a lane fell behind: make sure something feeds it */
        l->credit = l->credit + written < OB_FEED_CREDIT_MAX ? l->credit + written
                                                             : OB_FEED_CREDIT_MAX;
        /* its window has room: fed on the next turn, not when a report happens to come */
        if (!l->full && !uv_is_active((uv_handle_t *)o->soon))
            uv_timer_start(o->soon, ob_feed_soon, 0, 0);
    }
    ob_update_pressure(o);
    return QB_OK;
}

/* Feeds a lagging lane from the spool while its queue has room, a batch at a time. */
static void ob_feed(struct ob_lane *l)
{
    struct qb_outbox *o = l->o;
    struct qb_spool_record rec;
    uint64_t fed = 0, budget = OB_FEED_BATCH + l->credit;

    if (l->feeding)
        return;
    l->feeding = true;
    while (!l->full && l->next < qb_spool_next_id(o->spool)) {
        int rc;

        if (fed == budget) {
            if (!uv_is_active((uv_handle_t *)o->soon))
                uv_timer_start(o->soon, ob_feed_soon, 0, 0);
            break;
        }

        if (l->reader && qb_spool_reader_position(l->reader) != l->next) {
            qb_spool_reader_close(l->reader);
            l->reader = NULL;
        }
        if (!l->reader && qb_spool_reader_open(o->spool, l->next, &l->reader) != QB_OK) {
            QB_LOG_ERR(NULL, "transport %s: cannot open a spool reader: out of memory",
                       qb_transport_name(l->t));
            break;
        }
        rc = qb_spool_reader_next(l->reader, &rec);
        if (rc <= 0) {
            if (rc < 0)
                QB_LOG_ERR(NULL, "transport %s: cannot read the spool at record %" PRIu64 ": %s",
                           qb_transport_name(l->t), l->next, qb_strerror(rc));
            break;
        }
        rec.msg.spool_id = rec.id;
        if (!rec.msg.origin_usec)
            rec.msg.origin_usec = rec.append_usec; /* the spool keeps when, not the QMP stamp */
        if (qb_transport_send(l->t, &rec.msg) != QB_OK) {
            /* not taken: read it again next time */
            qb_spool_reader_close(l->reader);
            l->reader = NULL;
            l->next = rec.id;
            break;
        }
        l->next = rec.id + 1;
        o->stats.from_spool++;
        fed++;
    }
    l->credit = fed < l->credit ? l->credit - fed : 0;
    if (l->next >= qb_spool_next_id(o->spool) && l->reader) {
        qb_spool_reader_close(l->reader); /* caught up: memory feeds it from here */
        l->reader = NULL;
        l->credit = 0;
        QB_LOG_INFO(NULL, "transport %s: caught up with the spool at record %" PRIu64, l->name,
                    l->next);
    }
    l->feeding = false;
}

/* ---- what a transport reports (its listener) ---------------------------- */

static void ob_on_window(void *arg, bool full, uint64_t depth, uint64_t bytes)
{
    struct ob_lane *l = arg;
    struct qb_outbox *o = l->o;

    l->full = full;
    if (o->spool) {
        if (!full && l->next < qb_spool_next_id(o->spool))
            ob_feed(l);
        return;
    }
    if (!l->backpressure)
        return; /* on_full: drop: the transport refuses at its bound, reads go on */
    if (full)
        QB_LOG_WARN(NULL,
                    "transport %s: queue at %" PRIu64 " messages / %" PRIu64
                    " bytes: pausing QMP reads until it drains",
                    l->name, depth, bytes);
    else
        QB_LOG_INFO(NULL, "transport %s: queue drained to %" PRIu64 " messages: resuming QMP reads",
                    l->name, depth);
    ob_lane_set_pressure(l, full);
}

static void ob_on_progress(void *arg, uint64_t done_below)
{
    struct ob_lane *l = arg;

    if (l->o->spool && done_below > l->confirmed_below) {
        l->confirmed_below = done_below;
        l->o->dirty = true;
        ob_arm_timer(l->o);
    }
}

static const struct qb_transport_listener ob_listener = {
    .window = ob_on_window,
    .progress = ob_on_progress,
};

/*
 * Moves held messages into the spool, in order, for as long as it takes them,
 * and writes them at once (a failed write puts them back).
 */
static void ob_retry_held(struct qb_outbox *o)
{
    while (o->held_head) {
        struct ob_held *h = o->held_head;
        struct ob_held *next = h->next;

        if (ob_store(o, h) != QB_OK)
            break;
        o->held_head = next;
        if (!o->held_head)
            o->held_tail = NULL;
        o->held_n--;
        o->stats.held = o->held_n;
    }
    ob_flush(o);
}

/* Persists the cursors and releases what every transport has confirmed. */
static void ob_checkpoint(struct qb_outbox *o)
{
    uint64_t below = UINT64_MAX;

    for (size_t i = 0; i < o->n_lanes; i++) {
        struct ob_lane *l = o->lanes[i];

        qb_spool_set_cursor(o->spool, l->name, l->confirmed_below);
        if (l->confirmed_below < below)
            below = l->confirmed_below;
    }
    if (below == UINT64_MAX)
        below = qb_spool_next_id(o->spool);
    if (qb_spool_release(o->spool, below) == QB_OK)
        o->dirty = false;
}

static bool ob_busy(const struct qb_outbox *o)
{
    if (o->held_n || o->turn_n || o->dirty || o->drops)
        return true;
    for (size_t i = 0; o->spool && i < o->n_lanes; i++)
        if (o->lanes[i]->next < qb_spool_next_id(o->spool))
            return true;
    return false;
}

static void ob_feed_soon(uv_timer_t *timer)
{
    struct qb_outbox *o = timer->data;

    for (size_t i = 0; o->spool && i < o->n_lanes; i++)
        ob_feed(o->lanes[i]);
}

static void ob_tick(uv_timer_t *timer)
{
    struct qb_outbox *o = timer->data;
    uint64_t lagging = 0;

    ob_retry_held(o);
    for (size_t i = 0; o->spool && i < o->n_lanes; i++) {
        ob_feed(o->lanes[i]);
        if (o->lanes[i]->next < qb_spool_next_id(o->spool))
            lagging++;
    }
    o->stats.lagging = lagging;
    if (o->dirty)
        ob_checkpoint(o);
    if (!o->held_n)
        ob_report_drops(o);
    ob_update_pressure(o);
    if (!ob_busy(o))
        uv_timer_stop(timer); /* idle: no timer fires until there is work again */
}

static void ob_arm_timer(struct qb_outbox *o)
{
    if (o->timer && !uv_is_active((uv_handle_t *)o->timer))
        uv_timer_start(o->timer, ob_tick, OB_TICK_MS, OB_TICK_MS);
}

/* ---- API ----------------------------------------------------------------- */

int qb_outbox_send(struct qb_outbox *o, const struct qb_message *msg)
{
    struct ob_held *h;
    int rc;

    if (msg->kind == QB_MSG_REPLY)
        return QB_EINVAL;
    o->stats.sent++;
    if (!o->spool) {
        /* Queued at once (the window counts it now, so back-pressure is as prompt as
           before), handed over with the rest of the turn by ob_flush: see the top. */
        for (size_t i = 0; i < o->n_lanes; i++)
            qb_transport_queue(o->lanes[i]->t, msg); /* a refusal is counted and logged there */
        if (!o->hand_over) {
            o->hand_over = true;
            uv_prepare_start(o->prepare, ob_on_prepare);
            uv_check_start(o->check, ob_on_check);
        }
        return QB_OK;
    }
    if (!(h = QB_MESSAGE_COPY(struct ob_held, msg, msg))) {
        ob_note_drop(o, msg);
        return QB_EAGAIN;
    }
    if (o->held_head)
        rc = ob_hold(o, h); /* behind what is already waiting, to keep the order */
    else if ((rc = ob_store(o, h)) != QB_OK)
        rc = ob_hold(o, h);
    ob_update_pressure(o);
    return rc;
}

int qb_outbox_send_reply(struct qb_outbox *o, struct qb_transport *t, const struct qb_message *msg)
{
    (void)o;
    if (msg->kind != QB_MSG_REPLY)
        return QB_EINVAL;
    return qb_transport_send(t, msg);
}

bool qb_outbox_recall_sequence(const struct qb_outbox *o, const char *vm, uint64_t *epoch,
                               uint64_t *seq)
{
    return o->spool && qb_spool_vm_sequence(o->spool, vm, epoch, seq);
}

void qb_outbox_get_stats(const struct qb_outbox *o, struct qb_outbox_stats *out)
{
    *out = o->stats;
}

/* Frees any of the outbox's handles (timers, prepare, check) once closed. */
static void ob_timer_closed(uv_handle_t *h)
{
    free(h);
}

/* Returns a new lane for t (owned by the caller, free with ob_lane_free), or NULL. */
static struct ob_lane *ob_lane_new(struct qb_outbox *o, struct qb_transport *t)
{
    struct ob_lane *l = calloc(1, sizeof(*l));

    if (!l)
        return NULL;
    l->o = o;
    l->t = t;
    if (!(l->name = strdup(qb_transport_name(t)))) {
        free(l);
        return NULL;
    }
    return l;
}

static void ob_lane_free(struct ob_lane *l)
{
    if (!l)
        return;
    qb_spool_reader_close(l->reader);
    free(l->name);
    free(l);
}

/*
 * Connects l's transport to the outbox: gives it the lane as its listener
 * (which reports a window already full at once). With a spool, the cursor
 * starts at `from` (the checkpointed cursor at start-up, where an earlier run
 * left off; a reload's own choice otherwise) and what the spool holds beyond
 * it is replayed.
 */
static void ob_lane_attach(struct ob_lane *l, uint64_t from)
{
    struct qb_outbox *o = l->o;

    l->full = false;
    l->backpressure = qb_transport_config(l->t)->on_full == QB_ON_FULL_BACKPRESSURE;
    if (!o->spool) {
        qb_transport_listen(l->t, &ob_listener, l);
        return;
    }
    l->next = from;
    if (l->next < qb_spool_first_id(o->spool))
        l->next = qb_spool_first_id(o->spool);
    l->confirmed_below = l->next;
    qb_transport_listen(l->t, &ob_listener, l);
    if (l->next < qb_spool_next_id(o->spool)) {
        QB_LOG_INFO(NULL,
                    "transport %s: replaying %" PRIu64 " spooled records from record %" PRIu64,
                    l->name, qb_spool_next_id(o->spool) - l->next, l->next);
        ob_feed(l);
        ob_arm_timer(o);
    }
}

/* Disconnects l's transport from the outbox (its callbacks, its share of the pressure). */
static void ob_lane_detach(struct ob_lane *l)
{
    struct qb_outbox *o = l->o;

    qb_transport_listen(l->t, NULL, NULL);
    if (!o->spool) {
        ob_lane_set_pressure(l, false);
        return;
    }
    qb_spool_reader_close(l->reader);
    l->reader = NULL;
}

static struct ob_lane *ob_find_lane(const struct qb_outbox *o, const struct qb_transport *t,
                                    size_t *index)
{
    for (size_t i = 0; i < o->n_lanes; i++) {
        if (o->lanes[i]->t == t) {
            if (index)
                *index = i;
            return o->lanes[i];
        }
    }
    return NULL;
}

int qb_outbox_new(uv_loop_t *loop, const struct qb_config *cfg,
                  struct qb_transport *const *transports, size_t n_transports,
                  struct qb_spool *spool, struct qb_outbox **out)
{
    struct qb_outbox *o = calloc(1, sizeof(*o));

    *out = NULL;
    if (!o)
        return QB_ENOMEM;
    o->lanes = calloc(n_transports ? n_transports : 1, sizeof(*o->lanes));
    o->timer = malloc(sizeof(*o->timer));
    o->soon = malloc(sizeof(*o->soon));
    o->prepare = malloc(sizeof(*o->prepare));
    o->check = malloc(sizeof(*o->check));
    if (!o->lanes || !o->timer || !o->soon || !o->prepare || !o->check) {
        free(o->lanes);
        free(o->timer);
        free(o->soon);
        free(o->prepare);
        free(o->check);
        free(o);
        return QB_ENOMEM;
    }
    o->loop = loop;
    o->cfg = cfg;
    o->spool = spool;
    uv_timer_init(loop, o->timer);
    o->timer->data = o;
    uv_timer_init(loop, o->soon);
    o->soon->data = o;
    uv_prepare_init(loop, o->prepare);
    o->prepare->data = o;
    uv_check_init(loop, o->check);
    o->check->data = o;
    for (size_t i = 0; i < n_transports; i++) {
        if (!(o->lanes[i] = ob_lane_new(o, transports[i]))) {
            while (i-- > 0)
                ob_lane_free(o->lanes[i]);
            uv_close((uv_handle_t *)o->timer, ob_timer_closed);
            uv_close((uv_handle_t *)o->soon, ob_timer_closed);
            uv_close((uv_handle_t *)o->prepare, ob_timer_closed);
            uv_close((uv_handle_t *)o->check, ob_timer_closed);
            free(o->lanes);
            free(o);
            return QB_ENOMEM;
        }
    }
    o->n_lanes = n_transports;
    for (size_t i = 0; i < n_transports; i++)
        ob_lane_attach(o->lanes[i], spool ? qb_spool_get_cursor(spool, o->lanes[i]->name) : 0);
    *out = o;
    return QB_OK;
}

/* ---- reload -------------------------------------------------------------- */

void qb_outbox_set_config(struct qb_outbox *o, const struct qb_config *cfg)
{
    o->cfg = cfg;
    ob_update_pressure(o);
}

int qb_outbox_add_transport(struct qb_outbox *o, struct qb_transport *t)
{
    struct ob_lane **lanes = realloc(o->lanes, (o->n_lanes + 1) * sizeof(*lanes));
    struct ob_lane *l;

    if (!lanes)
        return QB_ENOMEM;
    o->lanes = lanes;
    if (!(l = ob_lane_new(o, t)))
        return QB_ENOMEM;
    o->lanes[o->n_lanes++] = l;
    ob_lane_attach(l, o->spool ? qb_spool_next_id(o->spool) : 0);
    o->dirty = o->spool != NULL; /* its cursor belongs in the next checkpoint */
    if (o->dirty)
        ob_arm_timer(o);
    return QB_OK;
}

int qb_outbox_remove_transport(struct qb_outbox *o, struct qb_transport *t)
{
    size_t i;
    struct ob_lane *l = ob_find_lane(o, t, &i);

    if (!l)
        return QB_ENOTFOUND;
    ob_lane_detach(l);
    memmove(&o->lanes[i], &o->lanes[i + 1], (o->n_lanes - i - 1) * sizeof(*o->lanes));
    o->n_lanes--;
    ob_lane_free(l);
    if (o->spool) {
        o->dirty = true; /* what only it held back can be released now */
        ob_arm_timer(o);
    }
    return QB_OK;
}

int qb_outbox_replace_transport(struct qb_outbox *o, struct qb_transport *old_t,
                                struct qb_transport *new_t, uint64_t *moved)
{
    struct ob_lane *l = ob_find_lane(o, old_t, NULL);
    uint64_t from;

    *moved = 0;
    if (!l)
        return QB_ENOTFOUND;
    ob_lane_detach(l);
    l->t = new_t;
    if (!o->spool) {
        /* listen first: the copies may push the new queue over its mark */
        ob_lane_attach(l, 0);
        *moved = qb_transport_take_queue(old_t, new_t);
        ob_update_pressure(o);
        return QB_OK;
    }
    /* everything old_t did not confirm is in the spool: the new one starts there */
    from = l->confirmed_below;
    *moved = qb_transport_take_queue(old_t, NULL);
    QB_LOG_INFO(NULL, "transport %s: restarted; resending from spool record %" PRIu64, l->name,
                from);
    ob_lane_attach(l, from);
    return QB_OK;
}

void qb_outbox_close(struct qb_outbox *o)
{
    if (!o)
        return;
    /* this turn's messages: stored for the next start (the transports are gone), or held */
    if (o->spool)
        ob_flush(o);
    if (o->held_n) {
        for (struct ob_held *h = o->held_head; h; h = h->next)
            ob_note_drop(o, &h->msg);
        QB_LOG_ERR(NULL, "shutting down with %zu messages the spool never took: lost", o->held_n);
    }
    while (o->held_head) {
        struct ob_held *h = o->held_head;
        o->held_head = h->next;
        free(h);
    }
    ob_report_drops(o);
    for (size_t i = 0; i < o->n_lanes; i++) {
        qb_spool_reader_close(o->lanes[i]->reader);
        o->lanes[i]->reader = NULL;
    }
    /* the transports are gone: their last confirmed positions are what the next start needs */
    if (o->spool)
        ob_checkpoint(o);
    for (size_t i = 0; i < o->n_lanes; i++)
        ob_lane_free(o->lanes[i]);
    uv_close((uv_handle_t *)o->timer, ob_timer_closed);
    uv_close((uv_handle_t *)o->soon, ob_timer_closed);
    uv_close((uv_handle_t *)o->prepare, ob_timer_closed);
    uv_close((uv_handle_t *)o->check, ob_timer_closed);
    free(o->lanes);
    free(o);
}
