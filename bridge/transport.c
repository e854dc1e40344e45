/*
 * transport.c - the generic transport layer: registry of backends and the
 * bounded, ordered queue in front of one backend.
 *
 * Every accepted message is copied into one allocation (qb_message_copy:
 * struct, strings and payload together) and appended to a doubly-linked
 * FIFO. A cursor points at the first message not handed to the backend;
 * pumping walks it forward, so
 * publishing costs O(1) per message. A message leaves the queue only when the
 * backend confirms it; confirmations may come in any order (MQTT QoS 1 acks),
 * hence the doubly-linked list. A failed delivery moves the cursor back to the
 * earliest unsent message (by ordinal) so retries go out in queue order.
 *
 * Re-entrancy: a backend may only call back from the loop, but pump() is
 * guarded anyway (a flag plus "pump again") so a synchronous callback cannot
 * recurse into a half-updated cursor.
 *
 * The queue is the transport's one window (transport.h says the rule). The
 * layer never asks its owner anything: it reports the window's state and how
 * far spooled records are done through the listener it was given, and the
 * owner feeds it by calling down (qb_transport_send).
 *
 * Commands flow the other way without a queue: the backend reports each
 * inbound message through cb->inbound and the layer hands it straight to the
 * subscriber; acknowledging it later is the backend's business (ops->ack).
 */
#include "transport.h"

#include "error.h"
#include "log.h"
#include "prom.h"
#include "transport_filter.h"
#include "transport_ops.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* Used when a config leaves a bound at 0 (hand-filled configs in tests and tools). */
#define QB_TRANSPORT_DEFAULT_MAX_MESSAGES 10000u
#define QB_TRANSPORT_DEFAULT_MAX_BYTES ((size_t)16 * 1024 * 1024)
/* Pause after a failed delivery so a persistently failing backend cannot spin the loop. */
#define QB_TRANSPORT_RETRY_DELAY_MS 100
/* At most one "queue full" summary line per this interval. */
#define QB_TRANSPORT_DROP_LOG_INTERVAL_MS 1000

/* The registry: every backend, looked up by its ops' name (the `type:` in YAML). */
static const struct qb_transport_ops *const registry[] = {
    &qb_transport_stdout_ops,
    &qb_transport_mqtt_ops,
    &qb_transport_kafka_ops,
};

enum tr_state {
    TR_OPEN,            /* accepting and pumping */
    TR_DRAINING,        /* close requested: no new messages, still pumping */
    TR_BACKEND_CLOSING, /* ops->close called: no more publishes */
    TR_FREEING,         /* closing our own handles */
};

/* One queued message: a qb_message_copy, every pointer into the same allocation. */
struct tmsg {
    struct tmsg *prev, *next;
    uint64_t ordinal;   /* strictly increasing in queue order */
    uint64_t queued_at; /* uv_now() when it was queued */
    bool in_flight;     /* handed to the backend, delivery not reported yet */
    struct qb_message msg;
};

struct qb_transport {
    uv_loop_t *loop;
    const struct qb_transport_config *cfg;
    const struct qb_transport_ops *ops;
    void *backend;
    char *name;

    struct tmsg *head, *tail;
    struct tmsg *cursor; /* first message not in flight, or NULL */
    uint64_t next_ordinal;

    bool pumping, pump_again;
    bool blocked; /* backend said EAGAIN: wait for writable() */
    bool backoff; /* a delivery failed: wait for retry_timer */

    struct qb_transport_stats stats;
    struct qb_histogram latency;

    const struct qb_transport_listener *listener; /* the owner's callbacks, or NULL */
    void *listener_arg;
    bool full;              /* the window is over its high mark and not yet under its low one */
    uint64_t n_spooled;     /* queued messages with a spool_id */
    uint64_t spool_seen;    /* one past the largest spool_id taken (queued or not) */
    uint64_t done_reported; /* the last done_below given to listener->progress */

    qb_inbound_cb inbound_cb; /* set by qb_transport_subscribe */
    void *inbound_arg;

    /* queue-full log rate limiting: counter and timestamp, no timer */
    uint64_t drops_unlogged;
    uint64_t drop_logged_at;
    bool drop_logged_once;

    enum tr_state state;
    uv_timer_t retry_timer;
    uv_timer_t close_timer;
    int handles_open;
    void (*done)(void *arg);
    void *done_arg;
};

static void pump(struct qb_transport *t);

static size_t queue_max_messages(const struct qb_transport *t)
{
    return t->cfg->queue_max_messages ? t->cfg->queue_max_messages
                                      : QB_TRANSPORT_DEFAULT_MAX_MESSAGES;
}

static size_t queue_max_bytes(const struct qb_transport *t)
{
    return t->cfg->queue_max_bytes ? t->cfg->queue_max_bytes : QB_TRANSPORT_DEFAULT_MAX_BYTES;
}

/*
 * The one window rule (transport.h): full at 90% of either bound, open again
 * under 50% of both; the gap keeps a queue hovering at the mark from pausing
 * and resuming every QMP socket on each message. Reported to the listener on
 * each change while the transport is open (a closing one has no listener that
 * still cares).
 */
static void update_window(struct qb_transport *t)
{
    uint64_t msgs = t->stats.depth, bytes = t->stats.depth_bytes;
    bool high = msgs * 10 >= queue_max_messages(t) * 9 || bytes * 10 >= queue_max_bytes(t) * 9;
    bool low = msgs * 2 < queue_max_messages(t) && bytes * 2 < queue_max_bytes(t);

    if (!t->full && high)
        t->full = true;
    else if (t->full && low)
        t->full = false;
    else
        return;
    if (t->state == TR_OPEN && t->listener && t->listener->window)
        t->listener->window(t->listener_arg, t->full, msgs, bytes);
}

/*
 * Tells the listener how far spooled records are done, when that moved: the
 * oldest spool_id still queued (queue order is spool order; only replies,
 * spool_id 0, sit in between), or, with none queued, one past the last taken.
 */
static void report_progress(struct qb_transport *t)
{
    uint64_t below = t->spool_seen;

    if (t->n_spooled) {
        for (const struct tmsg *m = t->head; m; m = m->next) {
            if (m->msg.spool_id) {
                below = m->msg.spool_id;
                break;
            }
        }
    }
    if (below <= t->done_reported)
        return;
    t->done_reported = below;
    if (t->listener && t->listener->progress)
        t->listener->progress(t->listener_arg, below);
}

void qb_transport_listen(struct qb_transport *t, const struct qb_transport_listener *listener,
                         void *arg)
{
    t->listener = listener;
    t->listener_arg = arg;
    t->done_reported = 0;
    if (t->full && t->state == TR_OPEN && listener && listener->window)
        listener->window(arg, true, t->stats.depth, t->stats.depth_bytes);
}

bool qb_transport_window_full(const struct qb_transport *t)
{
    return t->full;
}

bool qb_transport_has_reply_channel(const struct qb_transport *t)
{
    return (t->ops->caps & QB_TRANSPORT_CAP_REPLY) != 0;
}

bool qb_transport_reply_topic_allowed(const struct qb_transport *t, const char *topic)
{
    if (!topic || !qb_transport_has_reply_channel(t))
        return false;
    return !t->ops->reply_topic_allowed || t->ops->reply_topic_allowed(t->backend, topic);
}

static const struct qb_transport_ops *ops_lookup(const char *type)
{
    if (!type)
        return NULL;
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]); i++)
        if (strcmp(registry[i]->name, type) == 0)
            return registry[i];
    return NULL;
}

const struct qb_transport_ops *qb_transport_ops_find(const char *type)
{
    return ops_lookup(type);
}

const struct qb_transport_ops *qb_transport_ops_at(size_t i)
{
    return i < sizeof(registry) / sizeof(registry[0]) ? registry[i] : NULL;
}

static const char *cfg_name(const struct qb_transport_config *cfg)
{
    if (cfg->name && cfg->name[0])
        return cfg->name;
    return cfg->type ? cfg->type : "?";
}

static void unknown_type(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    char known[128] = "";
    size_t off = 0;
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]) && off < sizeof(known); i++)
        off += (size_t)snprintf(known + off, sizeof(known) - off, "%s%s", i ? ", " : "",
                                registry[i]->name);
    snprintf(errbuf, errlen, "transport %s: unknown type '%s' (known: %s)", cfg_name(cfg),
             cfg->type ? cfg->type : "", known);
}

int qb_transport_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    const struct qb_transport_ops *ops = ops_lookup(cfg->type);
    if (!ops) {
        unknown_type(cfg, errbuf, errlen);
        return QB_ECONFIG;
    }
    return ops->validate(cfg, errbuf, errlen);
}

/* ---- queue ---- */

/* Unlinks and frees m, keeping the cursor and the accounting right. */
static void msg_release(struct qb_transport *t, struct tmsg *m)
{
    if (t->cursor == m) {
        /* the cursor must stay on a message that is not in flight */
        struct tmsg *n = m->next;
        while (n && n->in_flight)
            n = n->next;
        t->cursor = n;
    }
    if (m->prev)
        m->prev->next = m->next;
    else
        t->head = m->next;
    if (m->next)
        m->next->prev = m->prev;
    else
        t->tail = m->prev;
    t->stats.depth--;
    t->stats.depth_bytes -= m->msg.len;
    if (m->msg.spool_id)
        t->n_spooled--;
    free(m);
    update_window(t);
}

/* m is no longer in flight: make sure the cursor is at or before it. */
static void msg_mark_unsent(struct qb_transport *t, struct tmsg *m)
{
    m->in_flight = false;
    if (!t->cursor || m->ordinal < t->cursor->ordinal)
        t->cursor = m;
}

static void log_drop(struct qb_transport *t, const struct qb_message *msg)
{
    uint64_t now = uv_now(t->loop);
    t->drops_unlogged++;
    if (!t->drop_logged_once) {
        QB_LOG_WARN(msg->vm,
                    "transport %s: queue full (%" PRIu64 " messages, %" PRIu64
                    " bytes), dropped %s seq %" PRIu64,
                    t->name, t->stats.depth, t->stats.depth_bytes, msg->type ? msg->type : "?",
                    msg->sequence);
    } else if (now - t->drop_logged_at >= QB_TRANSPORT_DROP_LOG_INTERVAL_MS) {
        QB_LOG_WARN(msg->vm,
                    "transport %s: queue full, dropped %" PRIu64
                    " messages since the last report (latest %s seq %" PRIu64 ", %" PRIu64
                    " dropped in total)",
                    t->name, t->drops_unlogged, msg->type ? msg->type : "?", msg->sequence,
                    t->stats.dropped);
    } else {
        return;
    }
    t->drop_logged_once = true;
    t->drop_logged_at = now;
    t->drops_unlogged = 0;
}

/* The message is done without being queued: with nothing spooled waiting, so is its record. */
static int taken(struct qb_transport *t, const struct qb_message *msg)
{
    if (!msg->spool_id)
        return QB_OK;
    if (msg->spool_id >= t->spool_seen)
        t->spool_seen = msg->spool_id + 1;
    report_progress(t);
    return QB_OK;
}

/* hand_over: pump now (qb_transport_send) or leave it to qb_transport_hand_over (queue). */
static int enqueue(struct qb_transport *t, const struct qb_message *msg, bool hand_over)
{
    if (t->state != TR_OPEN)
        return QB_ECLOSED;
    /*
     * Filtered out: taken and done at once, like a state copy on a plain
     * stream; with a spool the outbox sees nothing of it left in the queue and
     * moves this transport's cursor past it.
     */
    if (!qb_transport_filter_pass(t->cfg, t->ops->caps, msg)) {
        t->stats.filtered++;
        return taken(t, msg);
    }
    /* The state channel is a "latest value" store; a plain stream would only repeat events. */
    if (msg->kind == QB_MSG_STATE && !(t->ops->caps & QB_TRANSPORT_CAP_RETAINED))
        return taken(t, msg);
    /* Without a reply channel the result still reaches everyone as an event. */
    if (msg->kind == QB_MSG_REPLY && !(t->ops->caps & QB_TRANSPORT_CAP_REPLY))
        return QB_OK;
    size_t max_messages = queue_max_messages(t);
    size_t max_bytes = queue_max_bytes(t);
    /* bytes are payload bytes: the bound is about what the peers would receive */
    if (t->stats.depth >= max_messages || t->stats.depth_bytes + msg->len > max_bytes) {
        if (msg->spool_id)
            return QB_EAGAIN; /* not lost: the spool holds it and it is offered again */
        t->stats.dropped++;
        log_drop(t, msg);
        return QB_EAGAIN;
    }
    struct tmsg *m = QB_MESSAGE_COPY(struct tmsg, msg, msg);
    if (!m) {
        t->stats.dropped++;
        QB_LOG_ERR(msg->vm, "transport %s: out of memory, dropped %s seq %" PRIu64, t->name,
                   msg->type ? msg->type : "?", msg->sequence);
        return QB_ENOMEM;
    }
    m->ordinal = t->next_ordinal++;
    m->queued_at = uv_now(t->loop);
    m->prev = t->tail;
    if (t->tail)
        t->tail->next = m;
    else
        t->head = m;
    t->tail = m;
    if (!t->cursor)
        t->cursor = m;
    if (msg->spool_id) {
        t->n_spooled++;
        if (msg->spool_id >= t->spool_seen)
            t->spool_seen = msg->spool_id + 1;
    }
    t->stats.queued++;
    t->stats.depth++;
    t->stats.depth_bytes += msg->len;
    update_window(t);
    if (hand_over)
        pump(t);
    return QB_OK;
}

int qb_transport_send(struct qb_transport *t, const struct qb_message *msg)
{
    /* its lines (queue full, back-pressure) name the transport in their fields too */
    const char *scope = qb_log_transport_begin(t->name);
    int rc = enqueue(t, msg, true);

    qb_log_transport_end(scope);
    return rc;
}

int qb_transport_queue(struct qb_transport *t, const struct qb_message *msg)
{
    const char *scope = qb_log_transport_begin(t->name);
    int rc = enqueue(t, msg, !(t->ops->caps & QB_TRANSPORT_CAP_BATCHES));

    qb_log_transport_end(scope);
    return rc;
}

void qb_transport_hand_over(struct qb_transport *t)
{
    pump(t);
}

/*
 * Hands messages from the cursor on to the backend until it refuses. The
 * cursor moves before publish is called, so a (forbidden but tolerated)
 * synchronous delivered() may free the message without leaving the cursor
 * dangling.
 */
static void pump(struct qb_transport *t)
{
    if (t->pumping) {
        t->pump_again = true;
        return;
    }
    t->pumping = true;
    const char *scope = qb_log_transport_begin(t->name);
    do {
        t->pump_again = false;
        while (t->cursor && !t->blocked && !t->backoff &&
               (t->state == TR_OPEN || t->state == TR_DRAINING)) {
            struct tmsg *m = t->cursor;
            if (m->in_flight) {
                t->cursor = m->next;
                continue;
            }
            m->in_flight = true;
            t->cursor = m->next;
            while (t->cursor && t->cursor->in_flight)
                t->cursor = t->cursor->next;
            int rc = t->ops->publish(t->backend, &m->msg, m);
            if (rc == QB_OK) {
                t->stats.published++; /* m may already be gone: don't touch it */
                continue;
            }
            msg_mark_unsent(t, m);
            if (rc == QB_EAGAIN) {
                t->blocked = true;
                break;
            }
            t->stats.failed++;
            QB_LOG_ERR(m->msg.vm, "transport %s: cannot publish %s seq %" PRIu64 ": %s, dropped",
                       t->name, m->msg.type ? m->msg.type : "?", m->msg.sequence, qb_strerror(rc));
            msg_release(t, m);
        }
    } while (t->pump_again);
    qb_log_transport_end(scope);
    t->pumping = false;
}

/* ---- close ---- */

static void on_handle_closed(uv_handle_t *h)
{
    struct qb_transport *t = h->data;
    if (--t->handles_open > 0)
        return;
    void (*done)(void *) = t->done;
    void *arg = t->done_arg;
    free(t->name);
    free(t);
    if (done)
        done(arg);
}

static void on_backend_closed(void *arg)
{
    struct qb_transport *t = arg;
    t->state = TR_FREEING;
    while (t->head)
        msg_release(t, t->head);
    uv_close((uv_handle_t *)&t->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&t->close_timer, on_handle_closed);
}

static void close_backend(struct qb_transport *t)
{
    if (t->state != TR_DRAINING)
        return;
    t->state = TR_BACKEND_CLOSING;
    uv_timer_stop(&t->close_timer);
    uv_timer_stop(&t->retry_timer);
    const char *scope = qb_log_transport_begin(t->name);
    if (t->drops_unlogged)
        QB_LOG_WARN(NULL, "transport %s: %" PRIu64 " more messages dropped (queue full)", t->name,
                    t->drops_unlogged);
    if (t->stats.depth)
        QB_LOG_WARN(NULL, "transport %s: closed, %" PRIu64 " messages undelivered", t->name,
                    t->stats.depth);
    else
        QB_LOG_INFO(NULL, "transport %s: closed, 0 messages undelivered", t->name);
    t->ops->close(t->backend, on_backend_closed, t);
    qb_log_transport_end(scope);
}

static void on_close_timer(uv_timer_t *timer)
{
    close_backend(timer->data);
}

void qb_transport_close(struct qb_transport *t, void (*done)(void *arg), void *arg)
{
    if (t->state != TR_OPEN)
        return;
    t->state = TR_DRAINING; /* the window is no longer reported; progress still is */
    t->done = done;
    t->done_arg = arg;
    pump(t); /* what was only queued (qb_transport_queue) drains like the rest */
    /* an empty queue still goes through the timer: done must not run from inside this call */
    uint64_t timeout = t->stats.depth ? t->cfg->shutdown_timeout_ms : 0;
    uv_timer_start(&t->close_timer, on_close_timer, timeout, 0);
}

/* ---- what backends call ---- */

static void on_retry_timer(uv_timer_t *timer)
{
    struct qb_transport *t = timer->data;
    t->backoff = false;
    pump(t);
}

static void delivered(struct qb_transport *t, void *token, int status)
{
    struct tmsg *m = token;
    if (!m->in_flight) {
        QB_LOG_ERR(NULL, "transport %s: backend reported a message that is not in flight", t->name);
        return;
    }
    if (status == QB_OK) {
        t->stats.confirmed++;
        if (m->msg.kind == QB_MSG_EVENT)
            t->stats.confirmed_events++;
        if (m->msg.origin_usec) {
            struct timeval tv;
            uint64_t now;

            gettimeofday(&tv, NULL);
            now = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
            qb_histogram_observe_usec(&t->latency,
                                      now > m->msg.origin_usec ? now - m->msg.origin_usec : 0);
        }
        msg_release(t, m);
        report_progress(t);
        if (t->state == TR_DRAINING && t->stats.depth == 0) {
            uv_timer_start(&t->close_timer, on_close_timer, 0, 0);
            return;
        }
    } else {
        t->stats.retried++;
        msg_mark_unsent(t, m);
        if (t->state == TR_OPEN || t->state == TR_DRAINING) {
            QB_LOG_DEBUG(
                m->msg.vm, "transport %s: delivery of %s seq %" PRIu64 " failed (%s), will retry",
                t->name, m->msg.type ? m->msg.type : "?", m->msg.sequence, qb_strerror(status));
            if (!t->backoff) {
                t->backoff = true;
                uv_timer_start(&t->retry_timer, on_retry_timer, QB_TRANSPORT_RETRY_DELAY_MS, 0);
            }
        }
        return;
    }
    pump(t);
}

/*
 * What a backend calls runs in its transport's log scope, so every line it
 * leads to (in this file, the outbox, a command's handling) names the transport.
 */
static void cb_delivered(void *owner, void *token, int status)
{
    struct qb_transport *t = owner;
    const char *scope = qb_log_transport_begin(t->name);

    delivered(t, token, status);
    qb_log_transport_end(scope);
}

static void cb_writable(void *owner)
{
    struct qb_transport *t = owner;
    t->blocked = false;
    if (t->backoff) {
        /* a fresh window or link is a better signal than the fixed pause */
        t->backoff = false;
        uv_timer_stop(&t->retry_timer);
    }
    pump(t);
}

static void cb_link(void *owner, bool up, const char *why)
{
    struct qb_transport *t = owner;
    const char *scope = qb_log_transport_begin(t->name);

    t->stats.link_up = up;
    QB_LOG_DEBUG(NULL, "transport %s: link %s%s%s", t->name, up ? "up" : "down", why ? ": " : "",
                 why ? why : "");
    qb_log_transport_end(scope);
}

static void cb_inbound(void *owner, const struct qb_inbound *in, uint64_t ack_token)
{
    struct qb_transport *t = owner;
    /* while closing the subscriber may be gone; an unacked message is redelivered next time */
    if (t->state != TR_OPEN || !t->inbound_cb) {
        QB_LOG_DEBUG(in->vm_hint, "transport %s: inbound message ignored (%s)", t->name,
                     t->inbound_cb ? "closing" : "not subscribed");
        return;
    }
    const char *scope = qb_log_transport_begin(t->name);
    t->inbound_cb(t->inbound_arg, t, in, ack_token);
    qb_log_transport_end(scope);
}

static const struct qb_transport_backend_cb backend_cb = {
    .delivered = cb_delivered,
    .writable = cb_writable,
    .link = cb_link,
    .inbound = cb_inbound,
};

/* ---- commands ---- */

int qb_transport_subscribe(struct qb_transport *t, qb_inbound_cb cb, void *arg)
{
    if (!t->ops->subscribe) {
        QB_LOG_WARN(NULL, "transport %s: backend %s cannot receive commands", t->name,
                    t->ops->name);
        return QB_EINVAL;
    }
    if (t->state != TR_OPEN)
        return QB_ECLOSED;
    /* set first: a backend may report messages as soon as it is subscribed */
    t->inbound_cb = cb;
    t->inbound_arg = arg;
    const char *scope = qb_log_transport_begin(t->name);
    int rc = t->ops->subscribe(t->backend);
    qb_log_transport_end(scope);
    if (rc != QB_OK) {
        t->inbound_cb = NULL;
        t->inbound_arg = NULL;
    }
    return rc;
}

void qb_transport_ack(struct qb_transport *t, uint64_t ack_token)
{
    /* once ops->close has run the backend is going away: nothing left to acknowledge to */
    if (t->ops->ack && (t->state == TR_OPEN || t->state == TR_DRAINING))
        t->ops->ack(t->backend, ack_token);
}

/* ---- create / accessors ---- */

int qb_transport_create_with_ops(const struct qb_transport_ops *ops, uv_loop_t *loop,
                                 const struct qb_transport_config *cfg,
                                 const struct qb_bridge_info *bridge, struct qb_transport **out,
                                 char *errbuf, size_t errlen)
{
    int rc = QB_ENOMEM;
    *out = NULL;
    struct qb_transport *t = calloc(1, sizeof(*t));
    if (!t)
        goto fail;
    t->name = strdup(cfg_name(cfg));
    if (!t->name)
        goto fail;
    t->loop = loop;
    t->cfg = cfg;
    t->ops = ops;
    qb_histogram_init_latency(&t->latency);
    rc = ops->validate(cfg, errbuf, errlen);
    if (rc != QB_OK)
        goto fail;
    const char *scope = qb_log_transport_begin(t->name);
    rc = ops->create(loop, cfg, bridge, &backend_cb, t, &t->backend, errbuf, errlen);
    qb_log_transport_end(scope);
    if (rc != QB_OK)
        goto fail;
    /* handles only once nothing can fail any more: their release is asynchronous */
    uv_timer_init(loop, &t->retry_timer);
    uv_timer_init(loop, &t->close_timer);
    t->retry_timer.data = t;
    t->close_timer.data = t;
    t->handles_open = 2;
    *out = t;
    return QB_OK;

fail:
    if (rc == QB_ENOMEM)
        snprintf(errbuf, errlen, "transport %s: out of memory", cfg_name(cfg));
    if (t)
        free(t->name);
    free(t);
    return rc;
}

int qb_transport_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                        const struct qb_bridge_info *bridge, struct qb_transport **out,
                        char *errbuf, size_t errlen)
{
    const struct qb_transport_ops *ops = ops_lookup(cfg->type);
    if (!ops) {
        *out = NULL;
        unknown_type(cfg, errbuf, errlen);
        return QB_ECONFIG;
    }
    return qb_transport_create_with_ops(ops, loop, cfg, bridge, out, errbuf, errlen);
}

const char *qb_transport_name(const struct qb_transport *t)
{
    return t->name;
}

void qb_transport_get_stats(const struct qb_transport *t, struct qb_transport_stats *out)
{
    *out = t->stats;
    out->oldest_age_ms = t->head ? uv_now(t->loop) - t->head->queued_at : 0;
    out->max_messages = queue_max_messages(t);
    out->max_bytes = queue_max_bytes(t);
}

void qb_transport_foreach_broker_rtt(const struct qb_transport *t, qb_broker_rtt_cb cb, void *arg)
{
    if (t->ops->broker_rtt && (t->state == TR_OPEN || t->state == TR_DRAINING))
        t->ops->broker_rtt(t->backend, cb, arg);
}

const struct qb_histogram *qb_transport_latency(const struct qb_transport *t)
{
    return &t->latency;
}

/* ---- reload ---- */

size_t qb_transport_take_queue(struct qb_transport *from, struct qb_transport *to)
{
    size_t n = 0;
    struct tmsg *m = from->head;

    while (m) {
        struct tmsg *next = m->next;

        if (!to)
            n += !m->in_flight;
        else if (qb_transport_send(to, &m->msg) == QB_OK)
            n++;
        if (!m->in_flight)
            msg_release(from, m);
        m = next;
    }
    return n;
}

void qb_transport_close_now(struct qb_transport *t, void (*done)(void *arg), void *arg)
{
    if (t->state != TR_OPEN)
        return;
    t->state = TR_DRAINING;
    t->done = done;
    t->done_arg = arg;
    uv_timer_start(&t->close_timer, on_close_timer, 0, 0); /* done never runs from in here */
}

const struct qb_transport_config *qb_transport_config(const struct qb_transport *t)
{
    return t->cfg;
}
