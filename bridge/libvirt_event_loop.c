/*
 * libvirt_event_loop.c - libvirt's event implementation on libuv (see
 * libvirt_event_loop.h for the rules it keeps).
 *
 * The table (three lists under one mutex) is the truth; the uv handles follow
 * it in reconcile_locked(), which only the loop thread runs. Lists stay short
 * (a few entries per libvirt connection), so plain linked lists and scans do.
 * Ids only grow, and lists are kept in id order, so a dispatch can resume
 * after the last id it called even when a callback changed the list.
 */
#include "libvirt_event_loop.h"

#include "error.h"
#include "log.h"

#include <libvirt/libvirt.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

/* One uv_poll for all watches of one fd (uv_poll allows one handle per fd). */
struct lv_fd {
    uv_poll_t poll;
    int fd;
    int nlive;    /* watches on it not removed; 0 = dead, never reused */
    int applied;  /* UV_* mask the poll runs with (0 = stopped) */
    bool inited;  /* uv_poll_init done */
    bool closing; /* uv_close called; on_fd_closed frees it */
    bool failed;  /* the poll reported an error: not restarted until an update */
    struct lv_fd *next;
};

struct lv_watch {
    int id;
    int fd;
    int events; /* VIR_EVENT_HANDLE_* */
    bool removed;
    struct lv_fd *pfd; /* NULL after shutdown */
    virEventHandleCallback cb;
    void *opaque;
    virFreeCallback ff;
    struct lv_watch *next;
};

struct lv_timeout {
    uv_timer_t timer; /* frequency > 0 */
    uv_idle_t idle;   /* frequency 0 */
    int id;
    int frequency;
    int open_handles; /* uv handles initialised and not yet closed */
    bool removed;
    bool dirty;   /* frequency changed since the handles were set */
    bool closing; /* uv_close called on both handles */
    virEventTimeoutCallback cb;
    void *opaque;
    virFreeCallback ff;
    struct lv_timeout *next;
};

enum lv_state { LV_NONE, LV_RUNNING, LV_SHUT };

static struct {
    pthread_mutex_t mu;
    enum lv_state state;
    uv_loop_t *loop;
    uv_async_t wake;
    int next_id;
    struct lv_fd *fds;
    struct lv_watch *watches;
    struct lv_timeout *timeouts;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .next_id = 1};

/* Free callbacks collected under the lock, run once it is released. */
#define LV_REAP_MAX 64
struct lv_reaps {
    struct {
        virFreeCallback ff;
        void *opaque;
    } item[LV_REAP_MAX];
    size_t n;
};

static int to_uv(int vir)
{
    return ((vir & VIR_EVENT_HANDLE_READABLE) ? UV_READABLE : 0) |
           ((vir & VIR_EVENT_HANDLE_WRITABLE) ? UV_WRITABLE : 0);
}

static int from_uv(int uv)
{
    return ((uv & UV_READABLE) ? VIR_EVENT_HANDLE_READABLE : 0) |
           ((uv & UV_WRITABLE) ? VIR_EVENT_HANDLE_WRITABLE : 0) |
           ((uv & UV_DISCONNECT) ? VIR_EVENT_HANDLE_HANGUP : 0);
}

static int alloc_id_locked(void)
{
    if (g.next_id == INT_MAX)
        return -1;
    return g.next_id++;
}

/* Wakes the loop to reconcile; a no-op once shut down (the uv_async is closed). */
static void wake_locked(void)
{
    if (g.state == LV_RUNNING)
        uv_async_send(&g.wake);
}

/* ---- dispatch (loop thread, table unlocked around every libvirt callback) ---- */

static void on_poll(uv_poll_t *h, int status, int uv_events)
{
    struct lv_fd *pfd = h->data;
    int got = status < 0 ? VIR_EVENT_HANDLE_ERROR : from_uv(uv_events);
    int last = 0;

    if (status < 0) {
        /* libuv stopped the handle; restarting it now would report the error in a loop */
        QB_LOG_WARN(NULL, "libvirt event loop: poll of fd %d failed: %s", pfd->fd,
                    uv_strerror(status));
        pthread_mutex_lock(&g.mu);
        pfd->failed = true;
        pfd->applied = 0;
        pthread_mutex_unlock(&g.mu);
    }
    for (;;) {
        virEventHandleCallback cb = NULL;
        void *opaque = NULL;
        int id = 0, events = 0;

        pthread_mutex_lock(&g.mu);
        for (struct lv_watch *w = g.watches; w; w = w->next) {
            if (w->id <= last || w->pfd != pfd || w->removed || w->events == 0)
                continue;
            events = got & (w->events | VIR_EVENT_HANDLE_ERROR | VIR_EVENT_HANDLE_HANGUP);
            if (events == 0)
                continue;
            cb = w->cb;
            opaque = w->opaque;
            id = w->id;
            break;
        }
        pthread_mutex_unlock(&g.mu);
        if (!cb)
            return;
        last = id;
        cb(id, pfd->fd, events, opaque);
    }
}

static void fire_timeout(struct lv_timeout *t, bool idle)
{
    virEventTimeoutCallback cb = NULL;
    void *opaque = NULL;

    pthread_mutex_lock(&g.mu);
    /* the handle may lag behind the table by one iteration: the table decides */
    if (!t->removed && !t->dirty && (idle ? t->frequency == 0 : t->frequency > 0)) {
        cb = t->cb;
        opaque = t->opaque;
    }
    pthread_mutex_unlock(&g.mu);
    if (cb)
        cb(t->id, opaque);
}

static void on_timer(uv_timer_t *h)
{
    fire_timeout(h->data, false);
}

static void on_idle(uv_idle_t *h)
{
    fire_timeout(h->data, true);
}

/* ---- closing (loop thread) ---- */

static void on_fd_closed(uv_handle_t *h)
{
    struct lv_fd *pfd = h->data;
    struct lv_watch *dead = NULL;

    pthread_mutex_lock(&g.mu);
    for (struct lv_fd **pp = &g.fds; *pp; pp = &(*pp)->next) {
        if (*pp == pfd) {
            *pp = pfd->next;
            break;
        }
    }
    /* every watch still pointing here is removed (nlive was 0) */
    for (struct lv_watch **pp = &g.watches; *pp;) {
        struct lv_watch *w = *pp;
        if (w->pfd == pfd) {
            *pp = w->next;
            w->next = dead;
            dead = w;
        } else {
            pp = &w->next;
        }
    }
    pthread_mutex_unlock(&g.mu);
    free(pfd);
    while (dead) {
        struct lv_watch *w = dead;
        dead = w->next;
        if (w->ff)
            w->ff(w->opaque);
        free(w);
    }
}

static void unlink_timeout_locked(struct lv_timeout *t)
{
    for (struct lv_timeout **pp = &g.timeouts; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            return;
        }
    }
}

static void on_timeout_closed(uv_handle_t *h)
{
    struct lv_timeout *t = h->data;
    bool reap;

    pthread_mutex_lock(&g.mu);
    reap = --t->open_handles == 0 && t->removed;
    if (reap)
        unlink_timeout_locked(t);
    pthread_mutex_unlock(&g.mu);
    /* a timeout still registered at shutdown stays in the table (see the header) */
    if (reap) {
        if (t->ff)
            t->ff(t->opaque);
        free(t);
    }
}

static void close_timeout_locked(struct lv_timeout *t)
{
    if (t->closing || t->open_handles == 0)
        return;
    t->closing = true;
    uv_close((uv_handle_t *)&t->timer, on_timeout_closed);
    uv_close((uv_handle_t *)&t->idle, on_timeout_closed);
}

/* ---- reconcile: make the uv handles follow the table (loop thread) ---- */

/* Takes a free callback for later; false when full (the entry waits for the next pass). */
static bool reap_push(struct lv_reaps *r, virFreeCallback ff, void *opaque)
{
    if (!ff)
        return true;
    if (r->n == LV_REAP_MAX)
        return false;
    r->item[r->n].ff = ff;
    r->item[r->n].opaque = opaque;
    r->n++;
    return true;
}

/* Frees removed watches of pfd whose uv side is settled. Returns false if some had to wait. */
static bool reap_watches_locked(struct lv_fd *pfd, struct lv_reaps *r)
{
    bool all = true;

    for (struct lv_watch **pp = &g.watches; *pp;) {
        struct lv_watch *w = *pp;
        if (w->pfd == pfd && w->removed && reap_push(r, w->ff, w->opaque)) {
            *pp = w->next;
            free(w);
        } else {
            all = all && !(w->pfd == pfd && w->removed);
            pp = &w->next;
        }
    }
    return all;
}

static void reconcile_fds_locked(struct lv_reaps *r)
{
    /* Dead fds first: a new watch may use the same fd number, and uv_poll_init
     * refuses an fd while another handle still polls it. */
    for (struct lv_fd **pp = &g.fds; *pp;) {
        struct lv_fd *pfd = *pp;
        if (pfd->nlive > 0 || pfd->closing) {
            pp = &pfd->next;
        } else if (pfd->inited) {
            pfd->closing = true; /* ff after the close: it may close the fd */
            uv_close((uv_handle_t *)&pfd->poll, on_fd_closed);
            pp = &pfd->next;
        } else if (reap_watches_locked(pfd, r)) {
            *pp = pfd->next;
            free(pfd);
        } else {
            pp = &pfd->next;
        }
    }
    for (struct lv_fd *pfd = g.fds; pfd; pfd = pfd->next) {
        int want = 0, err;

        if (pfd->closing)
            continue;
        if (!pfd->inited) {
            if (pfd->failed)
                continue;
            err = uv_poll_init(g.loop, &pfd->poll, pfd->fd);
            if (err) {
                /* a watch that never fires; libvirt's keepalive notices the dead link */
                QB_LOG_ERR(NULL, "libvirt event loop: cannot poll fd %d: %s", pfd->fd,
                           uv_strerror(err));
                pfd->failed = true;
                continue;
            }
            pfd->poll.data = pfd;
            pfd->inited = true;
        }
        for (struct lv_watch *w = g.watches; w; w = w->next)
            if (w->pfd == pfd && !w->removed)
                want |= to_uv(w->events);
        if (pfd->failed)
            want = 0;
        /* a half-close only matters to a reader; poll(2) would not report it to a writer */
        if (want & UV_READABLE)
            want |= UV_DISCONNECT;
        if (want != pfd->applied) {
            err = want ? uv_poll_start(&pfd->poll, want, on_poll) : uv_poll_stop(&pfd->poll);
            if (err)
                QB_LOG_ERR(NULL, "libvirt event loop: poll of fd %d: %s", pfd->fd,
                           uv_strerror(err));
            pfd->applied = err ? 0 : want;
        }
        reap_watches_locked(pfd, r);
    }
}

static void reconcile_timeouts_locked(struct lv_reaps *r)
{
    for (struct lv_timeout **pp = &g.timeouts; *pp;) {
        struct lv_timeout *t = *pp;

        if (t->removed && t->open_handles == 0) {
            if (reap_push(r, t->ff, t->opaque)) {
                *pp = t->next;
                free(t);
            } else {
                pp = &t->next;
            }
            continue;
        }
        pp = &t->next;
        if (t->removed) {
            close_timeout_locked(t);
            continue;
        }
        if (!t->dirty)
            continue;
        if (t->open_handles == 0) {
            uv_timer_init(g.loop, &t->timer);
            uv_idle_init(g.loop, &t->idle);
            t->timer.data = t;
            t->idle.data = t;
            t->open_handles = 2;
        }
        t->dirty = false;
        uv_timer_stop(&t->timer);
        uv_idle_stop(&t->idle);
        if (t->frequency > 0)
            uv_timer_start(&t->timer, on_timer, (uint64_t)t->frequency, (uint64_t)t->frequency);
        else if (t->frequency == 0)
            uv_idle_start(&t->idle, on_idle);
    }
}

/* Runs a reconcile and then the free callbacks it collected, unlocked. Returns their number. */
static size_t reconcile_and_reap(void)
{
    struct lv_reaps r;

    r.n = 0;
    pthread_mutex_lock(&g.mu);
    reconcile_fds_locked(&r);
    reconcile_timeouts_locked(&r);
    if (r.n == LV_REAP_MAX)
        wake_locked(); /* more may wait: another pass */
    pthread_mutex_unlock(&g.mu);
    for (size_t i = 0; i < r.n; i++)
        r.item[i].ff(r.item[i].opaque);
    return r.n;
}

static void on_wake(uv_async_t *h)
{
    (void)h;
    reconcile_and_reap();
}

/* ---- the implementation libvirt calls (any thread) ---- */

static int lv_add_handle(int fd, int events, virEventHandleCallback cb, void *opaque,
                         virFreeCallback ff)
{
    struct lv_watch *w = calloc(1, sizeof(*w));
    struct lv_fd *pfd = NULL;
    struct lv_watch **tail;

    if (!w)
        return -1;
    pthread_mutex_lock(&g.mu);
    if (g.state != LV_RUNNING || fd < 0 || (w->id = alloc_id_locked()) < 0)
        goto fail;
    for (pfd = g.fds; pfd; pfd = pfd->next)
        if (pfd->fd == fd && pfd->nlive > 0)
            break;
    if (!pfd) {
        pfd = calloc(1, sizeof(*pfd));
        if (!pfd)
            goto fail;
        pfd->fd = fd;
        pfd->next = g.fds;
        g.fds = pfd;
    }
    pfd->nlive++;
    w->fd = fd;
    w->events = events;
    w->pfd = pfd;
    w->cb = cb;
    w->opaque = opaque;
    w->ff = ff;
    for (tail = &g.watches; *tail; tail = &(*tail)->next)
        ;
    *tail = w;
    wake_locked();
    pthread_mutex_unlock(&g.mu);
    return w->id;
fail:
    pthread_mutex_unlock(&g.mu);
    QB_LOG_WARN(NULL, "libvirt event loop: cannot add a watch on fd %d", fd);
    free(w);
    return -1;
}

static struct lv_watch *find_watch_locked(int id)
{
    for (struct lv_watch *w = g.watches; w; w = w->next)
        if (w->id == id && !w->removed)
            return w;
    return NULL;
}

static void lv_update_handle(int watch, int events)
{
    struct lv_watch *w;

    pthread_mutex_lock(&g.mu);
    w = find_watch_locked(watch);
    if (w) {
        w->events = events;
        if (w->pfd)
            w->pfd->failed = false;
        wake_locked();
    }
    pthread_mutex_unlock(&g.mu);
    if (!w)
        QB_LOG_WARN(NULL, "libvirt event loop: update of unknown watch %d", watch);
}

static int lv_remove_handle(int watch)
{
    struct lv_watch *w;

    pthread_mutex_lock(&g.mu);
    w = find_watch_locked(watch);
    if (w) {
        w->removed = true;
        if (w->pfd)
            w->pfd->nlive--;
        wake_locked();
    }
    pthread_mutex_unlock(&g.mu);
    if (!w) {
        QB_LOG_WARN(NULL, "libvirt event loop: remove of unknown watch %d", watch);
        return -1;
    }
    return 0;
}

static int lv_add_timeout(int frequency, virEventTimeoutCallback cb, void *opaque,
                          virFreeCallback ff)
{
    struct lv_timeout *t = calloc(1, sizeof(*t));
    struct lv_timeout **tail;
    int id;

    if (!t)
        return -1;
    pthread_mutex_lock(&g.mu);
    if (g.state != LV_RUNNING || (id = alloc_id_locked()) < 0) {
        pthread_mutex_unlock(&g.mu);
        QB_LOG_WARN(NULL, "libvirt event loop: cannot add a timeout");
        free(t);
        return -1;
    }
    t->id = id;
    t->frequency = frequency;
    t->dirty = true;
    t->cb = cb;
    t->opaque = opaque;
    t->ff = ff;
    for (tail = &g.timeouts; *tail; tail = &(*tail)->next)
        ;
    *tail = t;
    wake_locked();
    pthread_mutex_unlock(&g.mu);
    return id;
}

static struct lv_timeout *find_timeout_locked(int id)
{
    for (struct lv_timeout *t = g.timeouts; t; t = t->next)
        if (t->id == id && !t->removed)
            return t;
    return NULL;
}

static void lv_update_timeout(int timer, int frequency)
{
    struct lv_timeout *t;

    pthread_mutex_lock(&g.mu);
    t = find_timeout_locked(timer);
    if (t) {
        t->frequency = frequency;
        t->dirty = true;
        wake_locked();
    }
    pthread_mutex_unlock(&g.mu);
    if (!t)
        QB_LOG_WARN(NULL, "libvirt event loop: update of unknown timeout %d", timer);
}

static int lv_remove_timeout(int timer)
{
    struct lv_timeout *t;

    pthread_mutex_lock(&g.mu);
    t = find_timeout_locked(timer);
    if (t) {
        t->removed = true;
        wake_locked();
    }
    pthread_mutex_unlock(&g.mu);
    if (!t) {
        QB_LOG_WARN(NULL, "libvirt event loop: remove of unknown timeout %d", timer);
        return -1;
    }
    return 0;
}

/* ---- public ---- */

static void probe_timeout(int timer, void *opaque)
{
    (void)timer;
    (void)opaque;
}

/*
 * libvirt silently keeps an implementation registered earlier (it only logs a
 * warning): a disabled timeout added through the public API shows whose it is.
 */
static bool registered_is_ours(void)
{
    int id = virEventAddTimeout(-1, probe_timeout, NULL, NULL);
    bool ours;

    pthread_mutex_lock(&g.mu);
    ours = id > 0 && find_timeout_locked(id) != NULL;
    pthread_mutex_unlock(&g.mu);
    if (id > 0)
        virEventRemoveTimeout(id);
    return ours;
}

int qb_libvirt_event_loop_install(uv_loop_t *loop)
{
    int rc = QB_OK, err;
    bool fresh = false;

    if (!loop)
        return QB_EINVAL;
    pthread_mutex_lock(&g.mu);
    if (g.state == LV_SHUT) {
        rc = QB_ECLOSED;
    } else if (g.state == LV_RUNNING) {
        rc = g.loop == loop ? QB_OK : QB_EBUSY;
    } else if ((err = uv_async_init(loop, &g.wake, on_wake)) != 0) {
        QB_LOG_ERR(NULL, "libvirt event loop: uv_async_init: %s", uv_strerror(err));
        rc = QB_EIO;
    } else {
        /* only libvirt's own watches and timeouts keep the loop alive */
        uv_unref((uv_handle_t *)&g.wake);
        g.loop = loop;
        g.state = LV_RUNNING;
        fresh = true;
    }
    pthread_mutex_unlock(&g.mu);
    if (rc == QB_EBUSY)
        QB_LOG_ERR(NULL, "libvirt event loop: already installed on another loop");
    if (!fresh)
        return rc;
    virEventRegisterImpl(lv_add_handle, lv_update_handle, lv_remove_handle, lv_add_timeout,
                         lv_update_timeout, lv_remove_timeout);
    if (registered_is_ours())
        return QB_OK;
    QB_LOG_ERR(NULL, "libvirt event loop: another event implementation is already registered");
    qb_libvirt_event_loop_shutdown();
    return QB_EEXIST;
}

void qb_libvirt_event_loop_shutdown(void)
{
    int orphans = 0;

    pthread_mutex_lock(&g.mu);
    if (g.state != LV_RUNNING) {
        pthread_mutex_unlock(&g.mu);
        return;
    }
    pthread_mutex_unlock(&g.mu);
    /* removed entries get their ff now or from their close callbacks */
    while (reconcile_and_reap() == LV_REAP_MAX)
        ;

    pthread_mutex_lock(&g.mu);
    g.state = LV_SHUT;
    uv_close((uv_handle_t *)&g.wake, NULL);
    for (struct lv_watch *w = g.watches; w; w = w->next) {
        if (!w->removed) {
            w->pfd = NULL; /* its fd's poll is closed below */
            orphans++;
            QB_LOG_DEBUG(NULL, "libvirt event loop: watch %d (fd %d) still registered", w->id,
                         w->fd);
        }
    }
    for (struct lv_fd *pfd = g.fds; pfd; pfd = pfd->next) {
        pfd->nlive = 0;
        if (pfd->inited && !pfd->closing) {
            pfd->closing = true;
            uv_close((uv_handle_t *)&pfd->poll, on_fd_closed);
        }
    }
    for (struct lv_timeout *t = g.timeouts; t; t = t->next) {
        if (!t->removed) {
            orphans++;
            QB_LOG_DEBUG(NULL, "libvirt event loop: timeout %d still registered", t->id);
        }
        close_timeout_locked(t);
    }
    pthread_mutex_unlock(&g.mu);
    if (orphans)
        QB_LOG_WARN(NULL, "libvirt event loop: shut down with %d watches/timeouts registered",
                    orphans);
}
