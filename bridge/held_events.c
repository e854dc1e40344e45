/*
 * held_events.c - a bounded FIFO of raw QMP event lines (see held_events.h).
 *
 * The ring grows by doubling up to what the event bound needs and is freed
 * once it runs empty while large, so a VM that held thousands of events
 * during one snapshot does not keep a big ring for the rest of its life.
 */
#include "held_events.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

/* A ring this big or smaller is kept when it runs empty: cheap, and reused often. */
#define QB_HELD_RING_KEEP 64

struct qb_held_line {
    size_t len;
    char text[];
};

static int held_grow(struct qb_held_events *q)
{
    size_t cap = q->cap ? q->cap * 2 : 16;
    struct qb_held_line **ring = malloc(cap * sizeof(*ring));

    if (!ring)
        return QB_ENOMEM;
    /* unwrap: the oldest goes to slot 0 */
    for (size_t i = 0; i < q->len; i++)
        ring[i] = q->ring[(q->head + i) & (q->cap - 1)];
    free(q->ring);
    q->ring = ring;
    q->cap = cap;
    q->head = 0;
    return QB_OK;
}

/* Appends e (owned) with no bound check. Returns QB_OK or QB_ENOMEM (e not taken). */
static int held_append(struct qb_held_events *q, struct qb_held_line *e)
{
    if (q->len == q->cap && held_grow(q) < 0)
        return QB_ENOMEM;
    q->ring[(q->head + q->len) & (q->cap - 1)] = e;
    q->len++;
    q->bytes += e->len;
    return QB_OK;
}

int qb_held_events_push(struct qb_held_events *q, const char *line, size_t len,
                        const struct qb_held_limits *lim)
{
    struct qb_held_line *e;

    if (q->len >= lim->max_events || len > lim->max_bytes || q->bytes > lim->max_bytes - len)
        return QB_ETOOBIG;
    e = malloc(sizeof(*e) + len + 1);
    if (!e)
        return QB_ENOMEM;
    e->len = len;
    memcpy(e->text, line, len);
    e->text[len] = '\0';
    if (held_append(q, e) < 0) {
        free(e);
        return QB_ENOMEM;
    }
    return QB_OK;
}

/* Takes the oldest entry out (owned by the caller), or NULL when empty. */
static struct qb_held_line *held_take(struct qb_held_events *q)
{
    struct qb_held_line *e;

    if (q->len == 0)
        return NULL;
    e = q->ring[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    q->bytes -= e->len;
    if (q->len == 0) {
        q->head = 0;
        if (q->cap > QB_HELD_RING_KEEP) {
            free(q->ring);
            q->ring = NULL;
            q->cap = 0;
        }
    }
    return e;
}

json_t *qb_held_events_pop(struct qb_held_events *q, int *lost)
{
    struct qb_held_line *e = held_take(q);
    json_t *msg;

    if (!e)
        return NULL;
    /* the same flags as the first parse (qmp_client.c): it succeeded then */
    msg = json_loadb(e->text, e->len, JSON_REJECT_DUPLICATES, NULL);
    free(e);
    if (!msg && lost)
        *lost = 1;
    return msg;
}

int qb_held_events_move(struct qb_held_events *to, struct qb_held_events *from)
{
    struct qb_held_line *e;

    while (to->cap - to->len < from->len)
        if (held_grow(to) < 0)
            return QB_ENOMEM;
    while ((e = held_take(from)) != NULL)
        held_append(to, e); /* cannot fail: room was made above */
    return QB_OK;
}

size_t qb_held_events_count(const struct qb_held_events *q)
{
    return q->len;
}

size_t qb_held_events_bytes(const struct qb_held_events *q)
{
    return q->bytes;
}

void qb_held_events_clear(struct qb_held_events *q)
{
    for (size_t i = 0; i < q->len; i++)
        free(q->ring[(q->head + i) & (q->cap - 1)]);
    free(q->ring);
    memset(q, 0, sizeof(*q));
}
