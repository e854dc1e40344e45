/*
 * kafka_warmup.c - one metadata request per new topic, off the loop (see
 * kafka_warmup.h for why).
 *
 * The loop thread owns the set, the queue and the counters; the worker thread
 * only runs rd_kafka_metadata on the topic handle it was given (librdkafka is
 * thread-safe) and stores the answer's error code, which the loop reads in the
 * after-work callback.
 */
#include "kafka_warmup.h"

#include "log.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool warmup_oom; /* set by uthash when an insert cannot allocate; read right after */
#define uthash_nonfatal_oom(elt) (warmup_oom = true)
#include <uthash.h>

struct warm_topic {
    UT_hash_handle hh;
    struct warm_topic *next; /* in the queue, while queued */
    char name[];
};

struct qb_kafka_warmup {
    uv_loop_t *loop;
    rd_kafka_t *rk;
    const char *name;
    int timeout_ms;
    struct warm_topic *seen; /* every topic noted, each once */
    size_t n_seen;
    struct warm_topic *head, *tail; /* queued, not asked yet */
    uv_work_t work;
    bool running;              /* work queued or running */
    rd_kafka_topic_t *rkt;     /* the running request's topic (our reference) */
    rd_kafka_resp_err_t err;   /* its answer, written by the worker */
    size_t asked, fetched;
    bool full_said;            /* the bound was logged */
    void (*done)(void *arg);   /* set by close: free when the running request returns */
    void *done_arg;
};

struct qb_kafka_warmup *qb_kafka_warmup_new(uv_loop_t *loop, rd_kafka_t *rk, const char *name,
                                            int timeout_ms)
{
    struct qb_kafka_warmup *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->loop = loop;
    w->rk = rk;
    w->name = name;
    w->timeout_ms = timeout_ms;
    w->work.data = w;
    return w;
}

static void warmup_free(struct qb_kafka_warmup *w)
{
    struct warm_topic *t, *tmp;
    HASH_ITER(hh, w->seen, t, tmp)
    {
        HASH_DEL(w->seen, t);
        free(t);
    }
    free(w);
}

/* Worker thread: blocks for at most the timeout; touches nothing but the request. */
static void ask_in_worker(uv_work_t *work)
{
    struct qb_kafka_warmup *w = work->data;
    const struct rd_kafka_metadata *md = NULL;
    w->err = rd_kafka_metadata(w->rk, 0, w->rkt, &md, w->timeout_ms);
    if (md)
        rd_kafka_metadata_destroy(md);
}

static void ask_next(struct qb_kafka_warmup *w);

static void asked(uv_work_t *work, int status)
{
    struct qb_kafka_warmup *w = work->data;
    const char *topic = rd_kafka_topic_name(w->rkt);
    w->running = false;
    if (status == 0 && w->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        w->fetched++;
        QB_LOG_DEBUG(NULL, "kafka %s: metadata of topic %s fetched on its first use", w->name,
                     topic);
    } else {
        /* the brokers are away or slow: librdkafka's own scan covers the rest */
        QB_LOG_DEBUG(NULL, "kafka %s: metadata of topic %s not fetched ahead (%s); %s", w->name,
                     topic, status ? uv_strerror(status) : rd_kafka_err2str(w->err),
                     w->head ? "leaving the queued topics to librdkafka's scan" : "no more queued");
        w->head = w->tail = NULL;
    }
    rd_kafka_topic_destroy(w->rkt);
    w->rkt = NULL;
    if (w->done) {
        void (*done)(void *) = w->done;
        void *arg = w->done_arg;
        warmup_free(w);
        done(arg);
        return;
    }
    ask_next(w);
}

static void ask_next(struct qb_kafka_warmup *w)
{
    while (!w->running && w->head) {
        struct warm_topic *t = w->head;
        w->head = t->next;
        if (!w->head)
            w->tail = NULL;
        t->next = NULL;
        w->rkt = rd_kafka_topic_new(w->rk, t->name, NULL);
        if (!w->rkt)
            continue; /* the produce call reports a name librdkafka refuses */
        int rc = uv_queue_work(w->loop, &w->work, ask_in_worker, asked);
        if (rc < 0) {
            QB_LOG_DEBUG(NULL, "kafka %s: cannot ask for topic %s ahead: %s", w->name, t->name,
                         uv_strerror(rc));
            rd_kafka_topic_destroy(w->rkt);
            w->rkt = NULL;
            continue;
        }
        w->running = true;
        w->asked++;
    }
}

void qb_kafka_warmup_note(struct qb_kafka_warmup *w, const char *topic)
{
    struct warm_topic *t;
    size_t len = strlen(topic);
    HASH_FIND(hh, w->seen, topic, len, t);
    if (t)
        return;
    if (w->n_seen >= QB_KAFKA_WARMUP_TOPICS_MAX) {
        if (!w->full_said)
            QB_LOG_INFO(NULL, "kafka %s: %d topics asked for ahead; further new topics wait for "
                        "librdkafka's topic scan (up to a second for their first messages)",
                        w->name, QB_KAFKA_WARMUP_TOPICS_MAX);
        w->full_said = true;
        return;
    }
    if (!(t = calloc(1, sizeof(*t) + len + 1)))
        return; /* only the head start is lost */
    memcpy(t->name, topic, len + 1);
    warmup_oom = false;
    HASH_ADD_KEYPTR(hh, w->seen, t->name, len, t);
    if (warmup_oom) {
        free(t);
        return;
    }
    w->n_seen++;
    if (w->tail)
        w->tail->next = t;
    else
        w->head = t;
    w->tail = t;
    ask_next(w);
}

void qb_kafka_warmup_get_stats(const struct qb_kafka_warmup *w, struct qb_kafka_warmup_stats *st)
{
    st->asked = w->asked;
    st->fetched = w->fetched;
    st->busy = w->running;
}

void qb_kafka_warmup_close(struct qb_kafka_warmup *w, void (*done)(void *arg), void *arg)
{
    w->head = w->tail = NULL;
    if (w->running) {
        /* a running rd_kafka_metadata cannot be cancelled; asked() finishes the close */
        w->done = done;
        w->done_arg = arg;
        uv_cancel((uv_req_t *)&w->work); /* still queued: asked() runs with UV_ECANCELED */
        return;
    }
    warmup_free(w);
    done(arg);
}
