/*
 * message.c - the one deep copy of a message (see message.h). Every queue
 * that keeps a message beyond the call that handed it over (the transport's
 * window, the outbox's list of messages waiting for the spool) copies it
 * here, into one allocation, so freeing it is one free().
 */
#include "message.h"

#include <stdlib.h>
#include <string.h>

static size_t str_size(const char *s)
{
    return s ? strlen(s) + 1 : 0;
}

static const char *str_put(char **p, const char *s)
{
    size_t n;
    char *dst = *p;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    memcpy(dst, s, n);
    *p += n;
    return dst;
}

void *qb_message_copy(const struct qb_message *src, size_t size, size_t offset)
{
    size_t corr_len = src->correlation ? src->correlation_len : 0;
    size_t n = size + str_size(src->vm) + str_size(src->type) + str_size(src->id) +
               str_size(src->key) + str_size(src->reply_topic) + corr_len + src->len + 1;
    char *block = malloc(n);
    struct qb_message *m;
    char *p;

    if (!block)
        return NULL;
    memset(block, 0, size);
    m = (struct qb_message *)(block + offset);
    p = block + size;
    *m = *src;
    m->vm = str_put(&p, src->vm);
    m->type = str_put(&p, src->type);
    m->id = str_put(&p, src->id);
    m->key = str_put(&p, src->key);
    m->reply_topic = str_put(&p, src->reply_topic);
    if (src->correlation) {
        /* bytes, not a string: no alignment or terminator needed */
        memcpy(p, src->correlation, corr_len);
        m->correlation = p;
        m->correlation_len = corr_len;
        p += corr_len;
    } else {
        m->correlation_len = 0;
    }
    if (src->len)
        memcpy(p, src->payload, src->len);
    p[src->len] = '\0';
    m->payload = p;
    return block;
}
