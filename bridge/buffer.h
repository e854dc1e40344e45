/*
 * buffer.h - one growable byte buffer for everything the bridge builds as text:
 * envelopes, /metrics, canonical command text, expanded config values, HTTP answers.
 *
 * Appending is a static inline fast path (one compare, one memcpy); growing is the
 * out-of-line slow path. The buffer always keeps one spare byte past len, so a NUL
 * can be written without growing (qb_buffer_cstr, qb_buffer_take).
 *
 * Failure is sticky: once an allocation fails, failed stays true, the content is
 * incomplete, and qb_buffer_take returns NULL. A caller may append a whole sequence
 * without checking each call and look once at the end.
 *
 * QB_BUFFER_WIPE is for secrets (a password expanded from a file): the buffer never
 * realloc()s, which could leave a copy in freed memory; it copies to a new block and
 * wipes the old one with explicit_bzero, and qb_buffer_free wipes before freeing.
 *
 * The fields are public for the inline fast path and for readers (data[0..len));
 * write them only through these functions, or after qb_buffer_reserve as
 * qb_buffer_commit says.
 */
#ifndef QB_BUFFER_H
#define QB_BUFFER_H

#include "error.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

/* qb_buffer_init flags */
#define QB_BUFFER_WIPE 0x1u /* wipe every block this buffer lets go of (secrets) */

struct qb_buffer {
    char *data;  /* NULL until the first append or reserve */
    size_t len;  /* bytes appended */
    size_t cap;  /* bytes allocated; len < cap once data is set (room for a NUL) */
    bool failed; /* sticky: an allocation failed, the content is incomplete */
    bool wipe;   /* QB_BUFFER_WIPE */
};

/* An empty buffer; flags is 0 or QB_BUFFER_WIPE. Allocates nothing. */
void qb_buffer_init(struct qb_buffer *b, unsigned flags);

/*
 * Slow path of qb_buffer_reserve: makes room for n more bytes plus a NUL by
 * doubling (from 64 bytes). Returns QB_OK, or QB_ENOMEM and sets failed.
 */
int qb_buffer_grow(struct qb_buffer *b, size_t n);

/* Makes room for n more bytes plus a NUL. Returns QB_OK, or QB_ENOMEM (failed set). */
static inline int qb_buffer_reserve(struct qb_buffer *b, size_t n)
{
    if (b->failed)
        return QB_ENOMEM;
    if (n < b->cap - b->len)
        return QB_OK;
    return qb_buffer_grow(b, n);
}

/*
 * Appends n bytes of p (borrowed). Returns QB_OK, or QB_ENOMEM (failed set).
 * No NUL is written here: that is qb_buffer_cstr's and qb_buffer_take's job.
 */
static inline int qb_buffer_append(struct qb_buffer *b, const void *p, size_t n)
{
    if (__builtin_expect(n >= b->cap - b->len, 0) && qb_buffer_grow(b, n) < 0)
        return QB_ENOMEM;
    memcpy(b->data + b->len, p, n); /* data is set: growing happened when cap was 0 */
    b->len += n;
    return QB_OK;
}

/* Appends the NUL-terminated string s (borrowed), without its NUL. */
static inline int qb_buffer_append_str(struct qb_buffer *b, const char *s)
{
    return qb_buffer_append(b, s, strlen(s));
}

/* Appends printf-style text. Returns QB_OK, QB_ENOMEM (failed set) or QB_EINVAL (bad format). */
int qb_buffer_appendf(struct qb_buffer *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int qb_buffer_vappendf(struct qb_buffer *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/*
 * Counts n bytes the caller wrote itself at data + len, after a successful
 * qb_buffer_reserve of at least n (e.g. a recv() straight into the buffer).
 */
static inline void qb_buffer_commit(struct qb_buffer *b, size_t n)
{
    b->len += n;
}

/*
 * NUL-terminates the content and returns it, borrowed until the next append or
 * qb_buffer_free. Returns NULL when the buffer failed or nothing could be allocated.
 */
char *qb_buffer_cstr(struct qb_buffer *b);

/*
 * Hands the content over: returns a malloc'd, NUL-terminated string of *len bytes
 * (len may be NULL) that the caller frees (and wipes first, for a WIPE buffer);
 * an empty buffer gives "". The buffer is empty again afterwards. Returns NULL
 * when the buffer failed (its memory is freed, wiped for WIPE).
 */
char *qb_buffer_take(struct qb_buffer *b, size_t *len);

/* Frees the content (wiping it first for a WIPE buffer); the buffer is empty again. */
void qb_buffer_free(struct qb_buffer *b);

#endif
