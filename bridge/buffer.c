/*
 * buffer.c - the slow paths of the growable buffer (buffer.h): growing, printf,
 * handing over and freeing. The fast append path is inline in the header.
 */
#include "buffer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* First allocation; doubling from here reaches the sizes callers reserve (1 KiB envelopes). */
#define QB_BUFFER_MIN_CAP 64

void qb_buffer_init(struct qb_buffer *b, unsigned flags)
{
    *b = (struct qb_buffer){.wipe = (flags & QB_BUFFER_WIPE) != 0};
}

int qb_buffer_grow(struct qb_buffer *b, size_t n)
{
    size_t cap;
    char *p;

    if (b->failed)
        return QB_ENOMEM;
    if (n < b->cap - b->len)
        return QB_OK;
    if (n > SIZE_MAX - b->len - 1)
        goto fail;
    cap = b->cap ? b->cap : QB_BUFFER_MIN_CAP;
    while (cap < b->len + n + 1)
        cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
    if (!b->wipe) {
        p = realloc(b->data, cap);
        if (!p)
            goto fail;
    } else {
        /* realloc could move the bytes and leave the old block readable in the heap */
        p = malloc(cap);
        if (!p)
            goto fail;
        if (b->data) {
            memcpy(p, b->data, b->len);
            explicit_bzero(b->data, b->cap);
            free(b->data);
        }
    }
    b->data = p;
    b->cap = cap;
    return QB_OK;
fail:
    b->failed = true;
    return QB_ENOMEM;
}

int qb_buffer_vappendf(struct qb_buffer *b, const char *fmt, va_list ap)
{
    va_list again;
    int n;

    if (qb_buffer_reserve(b, 0) < 0)
        return QB_ENOMEM;
    va_copy(again, ap);
    n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len) {
        if (qb_buffer_grow(b, (size_t)n) < 0) {
            va_end(again);
            return QB_ENOMEM;
        }
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, again);
    }
    va_end(again);
    if (n < 0)
        return QB_EINVAL;
    b->len += (size_t)n;
    return QB_OK;
}

int qb_buffer_appendf(struct qb_buffer *b, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = qb_buffer_vappendf(b, fmt, ap);
    va_end(ap);
    return rc;
}

char *qb_buffer_cstr(struct qb_buffer *b)
{
    if (qb_buffer_reserve(b, 0) < 0)
        return NULL;
    b->data[b->len] = '\0';
    return b->data;
}

char *qb_buffer_take(struct qb_buffer *b, size_t *len)
{
    bool wipe = b->wipe;
    char *p = qb_buffer_cstr(b);

    if (len)
        *len = p ? b->len : 0;
    if (!p) {
        qb_buffer_free(b);
        return NULL;
    }
    qb_buffer_init(b, wipe ? QB_BUFFER_WIPE : 0);
    return p;
}

void qb_buffer_free(struct qb_buffer *b)
{
    bool wipe = b->wipe;

    if (b->data && wipe)
        explicit_bzero(b->data, b->cap);
    free(b->data);
    qb_buffer_init(b, wipe ? QB_BUFFER_WIPE : 0);
}
