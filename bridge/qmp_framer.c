/*
 * qmp_framer.c - zero-copy line framing for the QMP byte stream.
 *
 * Complete lines are handed to the callback where they lie in the read area.
 * Reads go into one area per thread (see qmp_framer.h): a private 64 KiB
 * buffer per read cost a malloc and free per read and, in a reconnect storm,
 * left 64 KiB holes between long-lived small allocations wherever a session
 * held a partial line. A partial tail is copied into a buffer of exactly its
 * size and back in front of the next read: it is shorter than a line, and
 * rare, because QEMU writes whole messages. So thousands of idle sessions
 * hold no memory.
 *
 * The area has one owner at a time (a framer between space and commit); any
 * other framer asking meanwhile, which libuv never does, gets a private buffer,
 * so sharing can never mix two streams.
 *
 * A "\r\n" line of exactly max_line bytes needs max_line + 2 bytes of buffer,
 * so that is the cap; a held partial line is rejected as soon as it can no
 * longer end within max_line, instead of waiting for its newline.
 */
#include "qmp_framer.h"
#include "error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A buffer this big or bigger is shrunk once it holds little, so one huge reply is not kept. */
#define QB_FRAMER_SHRINK_ABOVE ((size_t)256 * 1024)
#define QB_FRAMER_DEFAULT_SUGGESTED ((size_t)64 * 1024)
/* The shared read area's size: libuv suggests 64 KiB per read. */
#define QB_FRAMER_AREA ((size_t)64 * 1024)

/* This thread's read area (allocated on first use, kept for the thread's life) and its user. */
static _Thread_local char *qb_framer_area;
static _Thread_local const struct qb_framer *qb_framer_area_owner;

static size_t qb_framer_limit(const struct qb_framer *f)
{
    return f->max_line + 2;
}

void qb_framer_init(struct qb_framer *f, size_t max_line)
{
    f->buf = NULL;
    f->len = 0;
    f->cap = 0;
    f->shared = false;
    /* Keeps max_line + 2 from wrapping. */
    f->max_line = max_line > SIZE_MAX / 2 ? SIZE_MAX / 2 : max_line;
}

void qb_framer_reset(struct qb_framer *f)
{
    if (f->shared)
        qb_framer_area_owner = NULL;
    else
        free(f->buf);
    f->buf = NULL;
    f->len = 0;
    f->cap = 0;
    f->shared = false;
}

/*
 * Moves the framer into the shared area (its partial line, if any, copied to
 * the front) when the area is free and the line is short. Returns true when
 * f->buf is now the area.
 */
static bool qb_framer_take_area(struct qb_framer *f, size_t limit)
{
    size_t cap = limit < QB_FRAMER_AREA ? limit : QB_FRAMER_AREA;

    if (f->shared)
        return true;
    if (qb_framer_area_owner || f->len > QB_FRAMER_AREA / 2 || f->len >= cap)
        return false;
    if (!qb_framer_area && !(qb_framer_area = malloc(QB_FRAMER_AREA)))
        return false;
    if (f->len)
        memcpy(qb_framer_area, f->buf, f->len);
    free(f->buf);
    f->buf = qb_framer_area;
    f->cap = cap;
    f->shared = true;
    qb_framer_area_owner = f;
    return true;
}

/*
 * After a commit: moves a partial line out of the shared area into a buffer
 * of its own, so the area is free for the next stream. If that allocation
 * fails the line stays in the area, still owned, and other framers fall back
 * to private buffers until this one commits again: slower, never wrong.
 */
static void qb_framer_leave_area(struct qb_framer *f)
{
    char *nb;

    if (!f->shared)
        return;
    nb = malloc(f->len);
    if (!nb)
        return;
    memcpy(nb, f->buf, f->len);
    f->buf = nb;
    f->cap = f->len;
    f->shared = false;
    qb_framer_area_owner = NULL;
}

int qb_framer_space(struct qb_framer *f, size_t suggested, char **ptr, size_t *len)
{
    size_t limit = qb_framer_limit(f);
    size_t room;
    size_t want;

    if (f->len >= limit)
        return QB_ETOOBIG;
    room = limit - f->len;
    if (suggested == 0)
        suggested = QB_FRAMER_DEFAULT_SUGGESTED;
    want = suggested < room ? suggested : room;

    if (qb_framer_take_area(f, limit)) {
        *ptr = f->buf + f->len;
        *len = f->cap - f->len;
        return QB_OK;
    }
    if (f->cap - f->len < want) {
        /* Doubling keeps a long line from costing one realloc per read. */
        size_t new_cap = f->len + want;
        char *nb;

        if (new_cap < f->cap * 2)
            new_cap = f->cap * 2;
        if (new_cap > limit)
            new_cap = limit;
        nb = realloc(f->buf, new_cap);
        if (nb == NULL)
            return QB_ENOMEM;
        f->buf = nb;
        f->cap = new_cap;
    }
    *ptr = f->buf + f->len;
    *len = f->cap - f->len;
    return QB_OK;
}

/* Whether a held partial line can still end as a line of at most max_line bytes. */
static int qb_framer_partial_fits(const struct qb_framer *f)
{
    if (f->len <= f->max_line)
        return 1;
    return f->len == f->max_line + 1 && f->buf[f->len - 1] == '\r';
}

int qb_framer_commit(struct qb_framer *f, size_t nread, qb_framer_line_cb cb, void *arg)
{
    size_t end;
    size_t start = 0;
    size_t scan;
    int rc = QB_OK;

    if (nread > f->cap - f->len)
        nread = f->cap - f->len;
    /* The held partial line has no "\n" (or it would have been reported), so scan only new bytes.
     */
    scan = f->len;
    end = f->len + nread;

    while (scan < end) {
        const char *nl = memchr(f->buf + scan, '\n', end - scan);
        size_t stop;
        size_t line_len;

        if (nl == NULL)
            break;
        stop = (size_t)(nl - f->buf);
        line_len = stop - start;
        if (line_len > 0 && f->buf[stop - 1] == '\r')
            line_len--;
        if (line_len > f->max_line) {
            rc = QB_ETOOBIG;
            goto drop;
        }
        if (line_len > 0) {
            rc = cb(arg, f->buf + start, line_len);
            if (rc < 0)
                goto drop;
        }
        start = stop + 1;
        scan = start;
    }

    f->len = end - start;
    if (f->len == 0) {
        qb_framer_reset(f);
        return QB_OK;
    }
    if (start > 0)
        memmove(f->buf, f->buf + start, f->len);
    if (!qb_framer_partial_fits(f)) {
        rc = QB_ETOOBIG;
        goto drop;
    }
    if (f->shared) {
        qb_framer_leave_area(f);
        return QB_OK;
    }
    if (f->cap >= QB_FRAMER_SHRINK_ABOVE && f->len <= f->cap / 4) {
        char *nb = realloc(f->buf, f->len);

        /* A failed shrink leaves the bigger buffer in place, which is still correct. */
        if (nb != NULL) {
            f->buf = nb;
            f->cap = f->len;
        }
    }
    return QB_OK;

drop:
    /* The stream is unusable after an error: resynchronising inside it would be guesswork. */
    qb_framer_reset(f);
    return rc;
}

int qb_framer_feed(struct qb_framer *f, const char *data, size_t len, qb_framer_line_cb cb,
                   void *arg)
{
    while (len > 0) {
        char *ptr;
        size_t room;
        size_t n;
        int rc = qb_framer_space(f, len, &ptr, &room);

        if (rc < 0)
            return rc;
        n = len < room ? len : room;
        memcpy(ptr, data, n);
        rc = qb_framer_commit(f, n, cb, arg);
        if (rc < 0)
            return rc;
        data += n;
        len -= n;
    }
    return QB_OK;
}
