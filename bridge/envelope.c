/*
 * envelope.c - CloudEvents 1.0 structured-mode envelopes.
 *
 * The attributes are few and their order is fixed (consumers and tests compare
 * bytes), so they are written straight into one growing buffer; only the
 * event data, whose shape varies, goes through jansson's dumper. Strings are
 * escaped here: quotes, backslashes and control characters (as \u00XX);
 * UTF-8 passes through unchanged, which JSON allows.
 */
#include "envelope.h"
#include "error.h"
#include "log.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct qb_buf {
    char *p;
    size_t len;
    size_t cap;
    bool failed; /* sticky: set on the first allocation failure */
};

static void qb_buf_put(struct qb_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 512;
        char *p;

        while (b->len + n + 1 > cap)
            cap *= 2;
        p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void qb_buf_puts(struct qb_buf *b, const char *s)
{
    qb_buf_put(b, s, strlen(s));
}

/* Appends s as the body of a JSON string (no quotes). */
static void qb_buf_escaped(struct qb_buf *b, const char *s)
{
    const char *run = s;

    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        qb_buf_put(b, run, (size_t)(s - run));
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof(esc), "\\%c", c);
        else
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        qb_buf_puts(b, esc);
        run = s + 1;
    }
    qb_buf_put(b, run, (size_t)(s - run));
}

/* Appends ,"key":"<parts...>" with every part escaped; parts end with NULL. */
static void qb_buf_attr(struct qb_buf *b, const char *key, const char *const *parts)
{
    qb_buf_puts(b, b->len > 1 ? ",\"" : "\"");
    qb_buf_puts(b, key);
    qb_buf_puts(b, "\":\"");
    for (; *parts; parts++)
        qb_buf_escaped(b, *parts);
    qb_buf_puts(b, "\"");
}

#define QB_ATTR(b, key, ...) qb_buf_attr((b), (key), (const char *const[]){__VA_ARGS__, NULL})

char *qb_envelope_format_time(int64_t ts_sec, int32_t ts_usec, char *buf, size_t buflen)
{
    struct tm tm;
    time_t t;
    int64_t usec = ts_usec;

    if (ts_sec < 0) {
        struct timespec now;

        clock_gettime(CLOCK_REALTIME, &now);
        ts_sec = now.tv_sec;
        usec = now.tv_nsec / 1000;
    }
    /* QEMU never sends an out-of-range value, but a hand-made message might. */
    if (usec < 0 || usec > 999999) {
        ts_sec += usec / 1000000;
        usec %= 1000000;
        if (usec < 0) {
            usec += 1000000;
            ts_sec = ts_sec > 0 ? ts_sec - 1 : 0;
        }
    }
    t = (time_t)ts_sec;
    if (!gmtime_r(&t, &tm))
        memset(&tm, 0, sizeof(tm));
    snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)usec);
    return buf;
}

char *qb_envelope_format_id(uint64_t epoch, uint64_t sequence, const char *id_suffix, char *buf,
                            size_t buflen)
{
    snprintf(buf, buflen, "%" PRIx64 "-%" PRIu64 "%s", epoch, sequence, id_suffix ? id_suffix : "");
    return buf;
}

int qb_envelope_build(const struct qb_envelope_ctx *ctx, const struct qb_envelope_in *in,
                      char **out, size_t *out_len)
{
    struct qb_buf b = {0};
    char id[96], seq[32], when[40];
    char *data = NULL;
    int rc = QB_OK;

    *out = NULL;
    *out_len = 0;
    if (!ctx || !ctx->bridge_id || !ctx->schema_base_uri || !in || !in->vm || !in->type) {
        QB_LOG_ERR(in ? in->vm : NULL, "envelope: missing bridge id, schema base, vm or type");
        return QB_EINVAL;
    }

    qb_envelope_format_id(in->epoch, in->sequence, in->id_suffix, id, sizeof(id));
    snprintf(seq, sizeof(seq), "%020" PRIu64, in->sequence);
    qb_envelope_format_time(in->ts_sec, in->ts_usec, when, sizeof(when));

    if (in->data) {
        data = json_dumps(in->data, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!data) {
            QB_LOG_ERR(in->vm, "envelope: %s data cannot be serialised", in->type);
            rc = QB_EINVAL;
            goto out;
        }
    }

    qb_buf_puts(&b, "{");
    QB_ATTR(&b, "specversion", "1.0");
    QB_ATTR(&b, "id", id);
    QB_ATTR(&b, "source", "qmp-bridge://", ctx->bridge_id, "/", in->vm);
    QB_ATTR(&b, "type", in->type);
    QB_ATTR(&b, "subject", in->vm);
    QB_ATTR(&b, "time", when);
    QB_ATTR(&b, "datacontenttype", "application/json");
    QB_ATTR(&b, "dataschema", ctx->schema_base_uri, in->type, ".json");
    QB_ATTR(&b, "sequence", seq);
    QB_ATTR(&b, "partitionkey", ctx->bridge_id, "/", in->vm);
    QB_ATTR(&b, "bridge", ctx->bridge_id);
    qb_buf_puts(&b, ",\"data\":");
    qb_buf_puts(&b, data ? data : "{}");
    qb_buf_puts(&b, "}");

    if (b.failed) {
        QB_LOG_ERR(in->vm, "envelope: out of memory building %s", in->type);
        rc = QB_ENOMEM;
        goto out;
    }
    *out = b.p;
    *out_len = b.len;
    b.p = NULL;
out:
    free(b.p);
    free(data);
    return rc;
}
