/*
 * outbox.c - every outgoing event/state envelope to every transport, through
 * the spool when there is one. See outbox.h for the guarantees.
 *
 * Each transport has a lane: `next` is the first spool record not yet handed
 * to its queue, `confirmed_below` the first record it has not confirmed. A
 * lane that keeps up gets new records straight from memory; one whose queue
 * is half full falls behind (lagging) and is fed from disk through a spool
 * reader whenever a confirmation frees room. Records reach a transport in
 * spool order either way, because a lagging lane takes nothing from memory
 * until its reader has caught up.
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
 * Records fed from disk per callback: a transport's window can be tens of
 * thousands of messages, and filling it in one go would hold the loop (QMP
 * reads, the status API) for that long. The rest follows on the next turn.
 */
#define OB_FEED_BATCH 256

struct ob_lane {
    struct qb_outbox *o;
    struct qb_transport *t;
    char *name; /* the transport's name: the checkpoint's key, needed after t is gone */
    uint64_t next;            /* first record not handed to t */
    uint64_t confirmed_below; /* first record t has not confirmed */
    struct qb_spool_reader *reader;
    bool pressure; /* memory mode: t asked for back-pressure */
    bool feeding;
};

/* A message waiting in memory for the spool; every pointer points into data[]. */
struct ob_held {
    struct ob_held *next;
    struct qb_message msg;
    char data[];
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
    struct ob_lane **lanes; /* each lane its own allocation: transports hold it as their callback arg */
    size_t n_lanes;

    struct ob_held *held_head, *held_tail;
    size_t held_n;
    bool spool_failing; /* the last append failed: log recovery once it works */

    uv_timer_t *timer; /* separate allocation: freed by its close callback */
    uv_timer_t *soon;  /* 0 ms: feeding continues after a batch, on the next loop turn */
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
static void ob_arm_timer(struct qb_outbox *o);

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
                QB_LOG_INFO(NULL, "spool down to %" PRIu64 " bytes: resuming QMP reads",
                            st.bytes);
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

static void ob_on_transport_pressure(void *arg, struct qb_transport *t, bool pressure)
{
    struct ob_lane *l = arg;
    struct qb_outbox *o = l->o;

    (void)t;
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

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *str_put(char **p, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *dst = *p;
    memcpy(dst, s, n);
    *p += n;
    return dst;
}

/* Returns a deep copy of msg in one allocation (owned by the caller, free()), or NULL. */
static struct ob_held *ob_held_new(const struct qb_message *msg)
{
    size_t n = sizeof(struct ob_held) + str_size(msg->vm) + str_size(msg->type) +
               str_size(msg->id) + str_size(msg->key) + msg->len + 1;
    struct ob_held *h = malloc(n);
    char *p;

    if (!h)
        return NULL;
    memset(h, 0, sizeof(*h));
    p = h->data;
    h->msg.kind = msg->kind;
    h->msg.sequence = msg->sequence;
    h->msg.epoch = msg->epoch;
    h->msg.origin_usec = msg->origin_usec;
    h->msg.vm = str_put(&p, msg->vm);
    h->msg.type = str_put(&p, msg->type);
    h->msg.id = str_put(&p, msg->id);
    h->msg.key = str_put(&p, msg->key);
    if (msg->len)
        memcpy(p, msg->payload, msg->len);
    p[msg->len] = '\0';
    h->msg.payload = p;
    h->msg.len = msg->len;
    return h;
}

/* Keeps a copy of msg until the spool takes it, or drops it when the list is full. */
static int ob_hold(struct qb_outbox *o, const struct qb_message *msg)
{
    struct ob_held *h;

    if (o->held_n >= o->cfg->spool_memory_max_messages || !(h = ob_held_new(msg))) {
        ob_note_drop(o, msg);
        return QB_EAGAIN;
    }
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

/*
 * Appends msg; with on_full: drop_oldest a full spool (or file system) gives
 * up its oldest segments until the record fits. Returns the append's code.
 */
static int ob_append(struct qb_outbox *o, const struct qb_message *msg, uint64_t *id)
{
    int rc = qb_spool_append(o->spool, msg, id);

    while (rc == QB_ENOSPC && o->cfg->spool_on_full == QB_SPOOL_FULL_DROP_OLDEST) {
        if (qb_spool_drop_oldest(o->spool, ob_spool_dropped, o) < 0)
            break;
        rc = qb_spool_append(o->spool, msg, id);
    }
    if (rc == QB_OK && o->spool_failing) {
        o->spool_failing = false;
        QB_LOG_INFO(NULL, "spool: appending again");
    } else if (rc < 0 && !o->spool_failing) {
        o->spool_failing = true;
        QB_LOG_ERR(msg->vm,
                   "spool cannot take %s seq %" PRIu64 " (%s): holding up to %zu messages in "
                   "memory, pausing QMP reads, retrying every %d ms",
                   msg->type ? msg->type : "?", msg->sequence, qb_strerror(rc),
                   o->cfg->spool_memory_max_messages, OB_TICK_MS);
    }
    return rc;
}

/*
 * A transport may take a message without queueing it (a state copy on a plain
 * stream): with nothing spooled left in its queue, everything handed to it is
 * done, and no confirmation will come to say so.
 */
static void ob_settle(struct ob_lane *l)
{
    if (l->confirmed_below < l->next && qb_transport_oldest_spool_id(l->t) == 0) {
        l->confirmed_below = l->next;
        l->o->dirty = true;
        ob_arm_timer(l->o);
    }
}

/* Hands the just-appended record id to every lane that is caught up and has room. */
static void ob_deliver_live(struct qb_outbox *o, uint64_t id, const struct qb_message *msg)
{
    struct qb_message m = *msg;

    m.spool_id = id;
    for (size_t i = 0; i < o->n_lanes; i++) {
        struct ob_lane *l = o->lanes[i];

        if (l->next != id || !qb_transport_has_room(l->t, msg->len)) {
            if (l->next == id)
                QB_LOG_INFO(NULL, "transport %s: falling behind (window full), reading from the "
                            "spool from record %" PRIu64, l->name, id);
            continue; /* lagging: ob_feed reads it from disk in order */
        }
        if (qb_transport_send(l->t, &m) != QB_OK)
            continue; /* refused (closing, or over its hard bound): fed again from disk */
        l->next = id + 1;
        ob_settle(l);
    }
}

static void ob_feed_soon(uv_timer_t *timer);

/* Feeds a lagging lane from the spool while its queue has room, a batch at a time. */
static void ob_feed(struct ob_lane *l)
{
    struct qb_outbox *o = l->o;
    struct qb_spool_record rec;
    unsigned fed = 0;

    if (l->feeding)
        return;
    l->feeding = true;
    while (l->next < qb_spool_next_id(o->spool) && qb_transport_has_room(l->t, 0)) {
        int rc;

        if (fed++ == OB_FEED_BATCH) {
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
        ob_settle(l);
    }
    if (l->next >= qb_spool_next_id(o->spool) && l->reader) {
        qb_spool_reader_close(l->reader); /* caught up: memory feeds it from here */
        l->reader = NULL;
        QB_LOG_INFO(NULL, "transport %s: caught up with the spool at record %" PRIu64, l->name,
                    l->next);
    }
    l->feeding = false;
}

static void ob_on_release(void *arg, struct qb_transport *t)
{
    struct ob_lane *l = arg;
    uint64_t oldest = qb_transport_oldest_spool_id(t);
    uint64_t below = oldest ? oldest : l->next;

    if (below > l->confirmed_below) {
        l->confirmed_below = below;
        l->o->dirty = true;
        ob_arm_timer(l->o);
    }
    if (l->next < qb_spool_next_id(l->o->spool))
        ob_feed(l);
}

/* Moves held messages into the spool, in order, for as long as it takes them. */
static void ob_retry_held(struct qb_outbox *o)
{
    while (o->held_head) {
        struct ob_held *h = o->held_head;
        uint64_t id;

        if (ob_append(o, &h->msg, &id) != QB_OK)
            return;
        o->stats.spooled++;
        o->held_head = h->next;
        if (!o->held_head)
            o->held_tail = NULL;
        o->held_n--;
        o->stats.held = o->held_n;
        ob_deliver_live(o, id, &h->msg);
        free(h);
    }
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
    if (o->held_n || o->dirty || o->drops)
        return true;
    for (size_t i = 0; i < o->n_lanes; i++)
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
    for (size_t i = 0; i < o->n_lanes; i++) {
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
    uint64_t id;
    int rc;

    if (msg->kind == QB_MSG_REPLY)
        return QB_EINVAL;
    o->stats.sent++;
    if (!o->spool) {
        for (size_t i = 0; i < o->n_lanes; i++)
            qb_transport_send(o->lanes[i]->t, msg); /* a refusal is counted and logged there */
        return QB_OK;
    }
    if (o->held_head) {
        rc = ob_hold(o, msg); /* behind what is already waiting, to keep the order */
    } else if ((rc = ob_append(o, msg, &id)) == QB_OK) {
        o->stats.spooled++;
        ob_deliver_live(o, id, msg);
        for (size_t i = 0; i < o->n_lanes; i++)
            if (o->lanes[i]->next <= id)
                ob_arm_timer(o); /* a lane fell behind: make sure something feeds it */
    } else {
        rc = ob_hold(o, msg);
    }
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
 * Connects l's transport to the outbox: the pressure callback without a
 * spool; with one, the release callback and the cursor, which starts at
 * `from` (the checkpointed cursor at start-up, where an earlier run left
 * off; a reload's own choice otherwise) and replays what the spool holds
 * beyond it.
 */
static void ob_lane_attach(struct ob_lane *l, uint64_t from)
{
    struct qb_outbox *o = l->o;

    if (!o->spool) {
        qb_transport_set_pressure_cb(l->t, ob_on_transport_pressure, l);
        if (qb_transport_under_pressure(l->t))
            ob_on_transport_pressure(l, l->t, true);
        return;
    }
    l->next = from;
    if (l->next < qb_spool_first_id(o->spool))
        l->next = qb_spool_first_id(o->spool);
    l->confirmed_below = l->next;
    qb_transport_set_release_cb(l->t, ob_on_release, l);
    if (l->next < qb_spool_next_id(o->spool)) {
        QB_LOG_INFO(NULL, "transport %s: replaying %" PRIu64 " spooled records from record %" PRIu64,
                    l->name, qb_spool_next_id(o->spool) - l->next, l->next);
        ob_feed(l);
        ob_arm_timer(o);
    }
}

/* Disconnects l's transport from the outbox (its callbacks, its share of the pressure). */
static void ob_lane_detach(struct ob_lane *l)
{
    struct qb_outbox *o = l->o;

    if (!o->spool) {
        qb_transport_set_pressure_cb(l->t, NULL, NULL);
        if (l->pressure)
            ob_on_transport_pressure(l, l->t, false);
        return;
    }
    qb_transport_set_release_cb(l->t, NULL, NULL);
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
    if (!o->lanes || !o->timer || !o->soon) {
        free(o->lanes);
        free(o->timer);
        free(o->soon);
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
    for (size_t i = 0; i < n_transports; i++) {
        if (!(o->lanes[i] = ob_lane_new(o, transports[i]))) {
            while (i-- > 0)
                ob_lane_free(o->lanes[i]);
            uv_close((uv_handle_t *)o->timer, ob_timer_closed);
            uv_close((uv_handle_t *)o->soon, ob_timer_closed);
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
    if (o->held_n) {
        for (struct ob_held *h = o->held_head; h; h = h->next)
            ob_note_drop(o, &h->msg);
        QB_LOG_ERR(NULL, "shutting down with %zu messages the spool never took: lost",
                   o->held_n);
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
    free(o->lanes);
    free(o);
}
