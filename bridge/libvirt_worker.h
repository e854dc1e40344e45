/*
 * libvirt_worker.h - one thread for blocking libvirt API calls.
 *
 * libvirt's API calls block until libvirtd answers. None may run on the loop
 * thread, and they do not go to libuv's shared threadpool either, where a hung
 * libvirtd would hold threads that DNS lookups and file work need: a worker
 * has its own thread, so it stalls only the libvirt jobs queued behind it.
 *
 * A job is work(arg) on the worker thread, then done(arg, cancelled) on the
 * loop thread. Jobs run one at a time in submission order; done is called
 * exactly once for every accepted job, in the same order.
 *
 * A call blocked on a dead libvirtd ends when libvirt's keepalive gives up on
 * the connection (the keepalive runs in the calling thread or on the loop, see
 * libvirt_event_loop.h), so keep the keepalive on and close the worker before
 * shutting the event loop down.
 */
#ifndef QB_LIBVIRT_WORKER_H
#define QB_LIBVIRT_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct qb_libvirt_worker;

/* Runs on the worker thread; may block. */
typedef void (*qb_libvirt_work_fn)(void *arg);
/* Runs on the loop thread; cancelled is true when work never ran (closed first). */
typedef void (*qb_libvirt_done_fn)(void *arg, bool cancelled);

/* A snapshot of the counters (for /metrics). */
struct qb_libvirt_worker_stats {
    size_t queued;      /* accepted, not started */
    size_t running;     /* 0 or 1 */
    uint64_t completed; /* work returned (done called or about to be) */
    uint64_t cancelled; /* done(arg, true) calls */
    uint64_t rejected;  /* submits refused with QB_EAGAIN */
};

/*
 * Starts a worker whose results come back on loop (borrowed; must outlive the
 * worker). Call it on the loop's thread. At most max_jobs (>= 1) accepted jobs
 * wait for the thread at a time. *out is owned by the caller until
 * qb_libvirt_worker_close, which frees it.
 * Returns QB_OK, QB_EINVAL (max_jobs 0), QB_ENOMEM, or QB_EIO (no thread or
 * uv_async).
 */
int qb_libvirt_worker_create(uv_loop_t *loop, size_t max_jobs, struct qb_libvirt_worker **out);

/*
 * Queues a job; any thread. arg is the caller's, passed to work and done and
 * never freed here; done (not NULL) is where the caller gets it back.
 * Returns QB_OK (done will be called), QB_EAGAIN when max_jobs jobs are
 * already waiting, QB_ECLOSED after qb_libvirt_worker_close, QB_EINVAL, or
 * QB_ENOMEM; on an error neither work nor done is ever called.
 */
int qb_libvirt_worker_submit(struct qb_libvirt_worker *w, qb_libvirt_work_fn work,
                             qb_libvirt_done_fn done, void *arg);

/* Fills *out with the counters; any thread. */
void qb_libvirt_worker_stats(struct qb_libvirt_worker *w, struct qb_libvirt_worker_stats *out);

/*
 * Stops accepting jobs; on the loop thread. The job running finishes and gets
 * done(arg, false); then the jobs not started get done(arg, true), from the
 * loop (never inside this call) and in order. Once the thread has exited (joined from
 * the loop when it says it is leaving, so the loop never waits on a call
 * still blocked in libvirt), closed(closed_arg) is called from the loop and
 * the worker is freed. closed may be NULL.
 * Returns QB_OK, or QB_ECLOSED when already closing (closed is then not
 * called again).
 */
int qb_libvirt_worker_close(struct qb_libvirt_worker *w, void (*closed)(void *arg),
                            void *closed_arg);

#endif
