/*
 * libvirt_worker.c - a job thread with results on the loop (see libvirt_worker.h).
 *
 * Two FIFOs under one mutex: waiting (submitted, not started) and finished
 * (work returned, done not yet called). The thread moves jobs from one to the
 * other and pokes a uv_async; the loop drains finished in order. On close the
 * thread finishes its current job, moves the waiting jobs to cancelled and
 * leaves, saying so (thread_left), so the join on the loop returns at once.
 * Cancelling on the thread's way out keeps done calls in submission order
 * (the running job's done comes first), at the price that a job blocked in
 * libvirt also delays the cancellations behind it.
 */
#include "libvirt_worker.h"

#include "error.h"
#include "log.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

struct lw_job {
    qb_libvirt_work_fn work;
    qb_libvirt_done_fn done;
    void *arg;
    struct lw_job *next;
};

struct lw_fifo {
    struct lw_job *head, *tail;
};

struct qb_libvirt_worker {
    uv_async_t async; /* thread -> loop: finished jobs, thread left */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t max_jobs;
    struct lw_fifo waiting;
    struct lw_fifo finished;
    struct lw_fifo cancelled; /* filled by the thread as it leaves */
    struct qb_libvirt_worker_stats stats;
    bool closing;     /* no new jobs; the thread leaves after its current one */
    bool thread_left; /* the thread returned from its job loop */
    bool released;    /* joined and uv_close called */
    void (*closed)(void *arg);
    void *closed_arg;
};

static void fifo_push(struct lw_fifo *f, struct lw_job *j)
{
    j->next = NULL;
    if (f->tail)
        f->tail->next = j;
    else
        f->head = j;
    f->tail = j;
}

static struct lw_job *fifo_pop(struct lw_fifo *f)
{
    struct lw_job *j = f->head;

    if (j) {
        f->head = j->next;
        if (!f->head)
            f->tail = NULL;
    }
    return j;
}

static void *worker_main(void *opaque)
{
    struct qb_libvirt_worker *w = opaque;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        struct lw_job *j;

        while (!w->closing && !w->waiting.head)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->closing)
            break;
        j = fifo_pop(&w->waiting);
        w->stats.queued--;
        w->stats.running = 1;
        pthread_mutex_unlock(&w->mu);
        j->work(j->arg);
        pthread_mutex_lock(&w->mu);
        w->stats.running = 0;
        w->stats.completed++;
        fifo_push(&w->finished, j);
        uv_async_send(&w->async);
    }
    /* behind the finished ones, so done calls stay in submission order */
    w->cancelled = w->waiting;
    w->waiting = (struct lw_fifo){0};
    w->stats.queued = 0;
    w->thread_left = true;
    uv_async_send(&w->async);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void on_async_closed(uv_handle_t *h)
{
    struct qb_libvirt_worker *w = h->data;
    void (*closed)(void *) = w->closed;
    void *arg = w->closed_arg;

    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    if (closed)
        closed(arg);
}

/* Loop thread: calls done for finished jobs, cancels waiting ones once closing. */
static void on_async(uv_async_t *h)
{
    struct qb_libvirt_worker *w = h->data;
    struct lw_fifo finished, cancelled;
    struct lw_job *j;
    bool release;

    pthread_mutex_lock(&w->mu);
    finished = w->finished;
    w->finished = (struct lw_fifo){0};
    cancelled = w->cancelled;
    w->cancelled = (struct lw_fifo){0};
    release = w->thread_left && !w->released;
    if (release)
        w->released = true;
    pthread_mutex_unlock(&w->mu);

    while ((j = fifo_pop(&finished))) {
        j->done(j->arg, false);
        free(j);
    }
    while ((j = fifo_pop(&cancelled))) {
        pthread_mutex_lock(&w->mu);
        w->stats.cancelled++;
        pthread_mutex_unlock(&w->mu);
        j->done(j->arg, true);
        free(j);
    }
    if (release) {
        /* thread_left was set on its way out: this join does not wait on libvirt */
        pthread_join(w->thread, NULL);
        uv_close((uv_handle_t *)&w->async, on_async_closed);
    }
}

int qb_libvirt_worker_create(uv_loop_t *loop, size_t max_jobs, struct qb_libvirt_worker **out)
{
    struct qb_libvirt_worker *w;
    sigset_t all, old;
    int err;

    *out = NULL;
    if (!loop || max_jobs == 0)
        return QB_EINVAL;
    w = calloc(1, sizeof(*w));
    if (!w)
        return QB_ENOMEM;
    w->max_jobs = max_jobs;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    err = uv_async_init(loop, &w->async, on_async);
    if (err) {
        QB_LOG_ERR(NULL, "libvirt worker: uv_async_init: %s", uv_strerror(err));
        goto fail;
    }
    w->async.data = w;
    /* signals belong to the loop thread (uv_signal): the worker starts with all blocked */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    err = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        QB_LOG_ERR(NULL, "libvirt worker: cannot start a thread: error %d", err);
        /* the handle is on the loop: free in its close callback */
        uv_close((uv_handle_t *)&w->async, on_async_closed);
        return QB_EIO;
    }
    *out = w;
    return QB_OK;
fail:
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
    return QB_EIO;
}

int qb_libvirt_worker_submit(struct qb_libvirt_worker *w, qb_libvirt_work_fn work,
                             qb_libvirt_done_fn done, void *arg)
{
    struct lw_job *j;
    int rc = QB_OK;

    if (!w || !work || !done)
        return QB_EINVAL;
    j = malloc(sizeof(*j));
    if (!j)
        return QB_ENOMEM;
    *j = (struct lw_job){work, done, arg, NULL};
    pthread_mutex_lock(&w->mu);
    if (w->closing) {
        rc = QB_ECLOSED;
    } else if (w->stats.queued >= w->max_jobs) {
        w->stats.rejected++;
        rc = QB_EAGAIN;
    } else {
        fifo_push(&w->waiting, j);
        w->stats.queued++;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    if (rc != QB_OK)
        free(j);
    return rc;
}

void qb_libvirt_worker_stats(struct qb_libvirt_worker *w, struct qb_libvirt_worker_stats *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->stats;
    pthread_mutex_unlock(&w->mu);
}

int qb_libvirt_worker_close(struct qb_libvirt_worker *w, void (*closed)(void *arg),
                            void *closed_arg)
{
    pthread_mutex_lock(&w->mu);
    if (w->closing) {
        pthread_mutex_unlock(&w->mu);
        return QB_ECLOSED;
    }
    w->closing = true;
    w->closed = closed;
    w->closed_arg = closed_arg;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return QB_OK;
}
