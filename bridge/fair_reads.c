/*
 * fair_reads.c - parks sessions that filled a read buffer until the loop's
 * next turn. See fair_reads.h for why.
 *
 * The check resumes only the entries parked when it began: resuming starts a
 * read watcher and reads nothing, so nothing parks again from inside it, but
 * if something ever did it would wait for the next turn instead of looping.
 */
#include "fair_reads.h"

#include "error.h"

#include <stdlib.h>

struct qb_fair_reads {
    uv_check_t check;
    struct qb_fair_entry *head, *tail;
    size_t n;
    size_t chunk; /* this turn's read size for a streaming session */
};

static void fair_unlink(struct qb_fair_reads *f, struct qb_fair_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        f->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        f->tail = e->prev;
    e->prev = e->next = NULL;
    e->parked = false;
    f->n--;
}

static void fair_on_check(uv_check_t *h)
{
    struct qb_fair_reads *f = h->data;
    struct qb_fair_entry *e;
    size_t n = f->n;
    size_t chunk = n ? QB_FAIR_TURN_BYTES / n : QB_FAIR_CHUNK_MAX;

    f->chunk = chunk < QB_FAIR_CHUNK_MIN   ? QB_FAIR_CHUNK_MIN
               : chunk > QB_FAIR_CHUNK_MAX ? QB_FAIR_CHUNK_MAX
                                           : chunk;
    /* in park order, which is the order the poll phase served them */
    while (n-- > 0 && (e = f->head) != NULL) {
        fair_unlink(f, e);
        e->resume(e);
    }
    if (!f->head)
        uv_check_stop(&f->check);
}

int qb_fair_reads_new(uv_loop_t *loop, struct qb_fair_reads **out)
{
    struct qb_fair_reads *f = calloc(1, sizeof(*f));

    *out = NULL;
    if (!f)
        return QB_ENOMEM;
    uv_check_init(loop, &f->check); /* cannot fail */
    f->chunk = QB_FAIR_CHUNK_MAX;
    f->check.data = f;
    *out = f;
    return QB_OK;
}

void qb_fair_reads_park(struct qb_fair_reads *f, struct qb_fair_entry *e)
{
    if (e->parked)
        return;
    e->parked = true;
    e->next = NULL;
    e->prev = f->tail;
    if (f->tail)
        f->tail->next = e;
    else
        f->head = e;
    f->tail = e;
    f->n++;
    uv_check_start(&f->check, fair_on_check); /* no-op when already started */
}

void qb_fair_reads_unpark(struct qb_fair_reads *f, struct qb_fair_entry *e)
{
    if (e->parked)
        fair_unlink(f, e);
}

size_t qb_fair_reads_chunk(const struct qb_fair_reads *f)
{
    return f->chunk;
}

size_t qb_fair_reads_parked(const struct qb_fair_reads *f)
{
    return f->n;
}

static void fair_closed(uv_handle_t *h)
{
    free(h->data);
}

void qb_fair_reads_close(struct qb_fair_reads *f)
{
    if (!f)
        return;
    uv_close((uv_handle_t *)&f->check, fair_closed);
}
