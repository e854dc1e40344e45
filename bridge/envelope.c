/*
 * envelope.c - CloudEvents 1.0 structured-mode envelopes.
 *
 * This is on every event's path, so it is written for speed:
 *   - The attributes are few and their order is fixed (consumers and tests
 *     compare bytes), so they are written straight into one buffer. Strings are
 *     escaped here: quotes, backslashes and control characters (as \u00xx);
 *     UTF-8 passes through unchanged, which JSON allows.
 *   - The event data is walked here too and written into the same buffer,
 *     byte for byte as json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) would
 *     write it (same escapes, insertion order, integers as %lld; reals go to
 *     jansson, they are rare). json_dumps costs a loop-detection hash table
 *     with a snprintf'd key per container, a UTF-8 decode per character, a
 *     growing strbuffer and a final strdup that we then copied again: about
 *     as much as parsing the line in the first place.
 *   - Numbers and the time are formatted by hand; the date and clock part of
 *     the time ("2026-11-22T02:22:04") is cached per thread for the second it
 *     names, since events come in bursts within one second.
 */
#include "envelope.h"

#include "buffer.h"
#include "error.h"
#include "log.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Nesting deeper than jansson's parser allows can only be a reference cycle built in memory. */
#define QB_ENVELOPE_MAX_DEPTH 2048
/* First allocation: a typical envelope (~500 bytes) fits without growing. */
#define QB_ENVELOPE_INITIAL_CAP 1024

/* The envelope being written; bad is sticky like the buffer's own failure. */
struct env_buf {
    struct qb_buffer out;
    bool bad; /* data that cannot be serialised (a cycle, a real jansson refuses) */
};

/* Appends n bytes; qb_buffer keeps room for the final NUL qb_envelope_build writes. */
static inline void env_put(struct env_buf *b, const char *s, size_t n)
{
    qb_buffer_append(&b->out, s, n);
}

#define ENV_PUT_LIT(b, lit) env_put((b), (lit), sizeof(lit) - 1)

static void env_puts(struct env_buf *b, const char *s)
{
    env_put(b, s, strlen(s));
}

/* Bytes that must be escaped inside a JSON string: control characters, '"' and '\\'. */
static inline bool qb_json_special(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

/* Bytes 0x01 repeated / 0x80 repeated, for the word-at-a-time scan below. */
#define QB_ONES ((uint64_t)0x0101010101010101u)
#define QB_HIGHS ((uint64_t)0x8080808080808080u)

/*
 * Returns the length of the longest prefix of s[0..n) without a byte that
 * needs escaping. Eight bytes are tested at once: (x - 0x20..) & ~x & 0x80..
 * is non-zero exactly when some byte of x is below 0x20, and x ^ '"'.. turns
 * every quote into a zero byte (likewise backslash). Escapes are rare, so the
 * word that holds one is rescanned bytewise.
 */
static size_t qb_json_plain_prefix(const char *s, size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        uint64_t q;
        uint64_t bs;

        memcpy(&x, s + i, sizeof(x));
        q = x ^ (QB_ONES * '"');
        bs = x ^ (QB_ONES * '\\');
        if ((((x - QB_ONES * 0x20) & ~x) | ((q - QB_ONES) & ~q) | ((bs - QB_ONES) & ~bs)) &
            QB_HIGHS)
            break;
    }
    for (; i < n; i++)
        if (qb_json_special((unsigned char)s[i]))
            break;
    return i;
}

static const char qb_hex_lower[] = "0123456789abcdef";
static const char qb_hex_upper[] = "0123456789ABCDEF";

/*
 * Appends s[0..n) as the body of a JSON string (no quotes). jansson_style
 * selects the data escapes json_dumps uses (\b \f \n \r \t, else \u00XX upper
 * case); otherwise every control character is \u00xx in lower case, as the
 * attributes have always been written.
 */
static void env_escaped_n(struct env_buf *b, const char *s, size_t n, bool jansson_style)
{
    const char *end = s + n;

    for (;;) {
        size_t plain = qb_json_plain_prefix(s, (size_t)(end - s));
        unsigned char c;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t esc_len = 2;

        env_put(b, s, plain);
        s += plain;
        if (s == end)
            return;
        c = (unsigned char)*s++;
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
        } else if (jansson_style && c == '\b') {
            esc[1] = 'b';
        } else if (jansson_style && c == '\f') {
            esc[1] = 'f';
        } else if (jansson_style && c == '\n') {
            esc[1] = 'n';
        } else if (jansson_style && c == '\r') {
            esc[1] = 'r';
        } else if (jansson_style && c == '\t') {
            esc[1] = 't';
        } else {
            const char *hex = jansson_style ? qb_hex_upper : qb_hex_lower;

            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 0xf];
            esc_len = 6;
        }
        env_put(b, esc, esc_len);
    }
}

static void env_escaped(struct env_buf *b, const char *s)
{
    env_escaped_n(b, s, strlen(s), false);
}

/* Writes v in decimal at the end of buf (which has 20 bytes free before end); returns the start. */
static char *qb_fmt_u64(uint64_t v, char *end)
{
    char *p = end;

    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return p;
}

static void env_int(struct env_buf *b, json_int_t v)
{
    char digits[24];
    char *end = digits + sizeof(digits);
    /* Negating in unsigned arithmetic keeps INT64_MIN defined. */
    uint64_t mag = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    char *p = qb_fmt_u64(mag, end);

    if (v < 0)
        *--p = '-';
    env_put(b, p, (size_t)(end - p));
}

static void env_json_string(struct env_buf *b, const char *s, size_t n)
{
    ENV_PUT_LIT(b, "\"");
    env_escaped_n(b, s, n, true);
    ENV_PUT_LIT(b, "\"");
}

/* Appends v as json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) writes it. */
static void env_json(struct env_buf *b, const json_t *v, int depth)
{
    if (b->out.failed || b->bad)
        return;
    if (!v || depth > QB_ENVELOPE_MAX_DEPTH) {
        b->bad = true;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        void *iter = json_object_iter((json_t *)v);
        bool first = true;

        ENV_PUT_LIT(b, "{");
        for (; iter; iter = json_object_iter_next((json_t *)v, iter)) {
            if (!first)
                ENV_PUT_LIT(b, ",");
            first = false;
            env_json_string(b, json_object_iter_key(iter), json_object_iter_key_len(iter));
            ENV_PUT_LIT(b, ":");
            env_json(b, json_object_iter_value(iter), depth + 1);
        }
        ENV_PUT_LIT(b, "}");
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);

        ENV_PUT_LIT(b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                ENV_PUT_LIT(b, ",");
            env_json(b, json_array_get(v, i), depth + 1);
        }
        ENV_PUT_LIT(b, "]");
        return;
    }
    case JSON_STRING:
        env_json_string(b, json_string_value(v), json_string_length(v));
        return;
    case JSON_INTEGER:
        env_int(b, json_integer_value(v));
        return;
    case JSON_REAL: {
        /* jansson's shortest round-trip form ("1.0", "1e+300"); rare enough to ask it. */
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);

        if (!text) {
            b->bad = true;
            return;
        }
        env_puts(b, text);
        free(text);
        return;
    }
    case JSON_TRUE:
        ENV_PUT_LIT(b, "true");
        return;
    case JSON_FALSE:
        ENV_PUT_LIT(b, "false");
        return;
    case JSON_NULL:
        ENV_PUT_LIT(b, "null");
        return;
    }
    b->bad = true;
}

/* The "YYYY-MM-DDTHH:MM:SS" of the last second formatted on this thread. */
static _Thread_local struct {
    int64_t sec; /* QB_ENVELOPE_TIME_NOW: nothing cached (never a formatted second) */
    size_t len;
    char text[48];
} qb_time_cache = {QB_ENVELOPE_TIME_NOW, 0, {0}};

bool qb_envelope_time_valid(int64_t sec, int64_t usec)
{
    return sec >= QB_ENVELOPE_TIME_MIN_SEC && sec <= QB_ENVELOPE_TIME_MAX_SEC && usec >= 0 &&
           usec <= 999999;
}

char *qb_envelope_format_time(int64_t ts_sec, int32_t ts_usec, char *buf, size_t buflen)
{
    char out[80];
    size_t len;
    int64_t usec = ts_usec;

    /*
     * Out of range is never carried or wrapped: a year past 9999 (or before
     * 0001) breaks the schema's date-time, and adding to seconds near
     * INT64_MAX overflows.
     */
    if (!qb_envelope_time_valid(ts_sec, usec)) {
        struct timespec now;

        clock_gettime(CLOCK_REALTIME, &now);
        ts_sec = now.tv_sec;
        usec = now.tv_nsec / 1000;
    }
    if (qb_time_cache.sec != ts_sec) {
        struct tm tm;
        time_t t = (time_t)ts_sec;
        int n;

        if (!gmtime_r(&t, &tm))
            memset(&tm, 0, sizeof(tm));
        n = snprintf(qb_time_cache.text, sizeof(qb_time_cache.text),
                     "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec);
        qb_time_cache.len = n < 0 ? 0
                            : (size_t)n < sizeof(qb_time_cache.text)
                                ? (size_t)n
                                : sizeof(qb_time_cache.text) - 1;
        qb_time_cache.sec = ts_sec;
    }
    len = qb_time_cache.len;
    memcpy(out, qb_time_cache.text, len);
    out[len++] = '.';
    for (int i = 5; i >= 0; i--) {
        out[len + (size_t)i] = (char)('0' + usec % 10);
        usec /= 10;
    }
    len += 6;
    out[len++] = 'Z';
    out[len] = '\0';
    /* snprintf's contract: truncate, always terminate. */
    if (buflen) {
        if (len >= buflen)
            len = buflen - 1;
        memcpy(buf, out, len);
        buf[len] = '\0';
    }
    return buf;
}

/* Writes "<epoch hex>-<sequence><suffix>" into out (at least 64 bytes); returns its length. */
static size_t qb_format_id_raw(uint64_t epoch, uint64_t sequence, char *out)
{
    char digits[24];
    char *end = digits + sizeof(digits);
    char *p = end;
    size_t len;

    do {
        *--p = qb_hex_lower[epoch & 0xf];
        epoch >>= 4;
    } while (epoch);
    len = (size_t)(end - p);
    memcpy(out, p, len);
    out[len++] = '-';
    p = qb_fmt_u64(sequence, end);
    memcpy(out + len, p, (size_t)(end - p));
    return len + (size_t)(end - p);
}

char *qb_envelope_format_id(uint64_t epoch, uint64_t sequence, const char *id_suffix, char *buf,
                            size_t buflen)
{
    /* by hand rather than snprintf: once per envelope; truncated and terminated like it */
    char raw[64];
    size_t len = qb_format_id_raw(epoch, sequence, raw);
    size_t slen = id_suffix ? strlen(id_suffix) : 0;

    if (buflen == 0)
        return buf;
    if (len > buflen - 1)
        len = buflen - 1;
    memcpy(buf, raw, len);
    if (slen > buflen - 1 - len)
        slen = buflen - 1 - len;
    if (slen)
        memcpy(buf + len, id_suffix, slen);
    buf[len + slen] = '\0';
    return buf;
}

int qb_envelope_build(const struct qb_envelope_ctx *ctx, const struct qb_envelope_in *in,
                      char **out, size_t *out_len)
{
    struct env_buf b = {.bad = false};
    char id[64], seq[24], when[40];
    size_t id_len;

    *out = NULL;
    *out_len = 0;
    if (!ctx || !ctx->bridge_id || !ctx->schema_base_uri || !in || !in->vm || !in->type) {
        QB_LOG_ERR(in ? in->vm : NULL, "envelope: missing bridge id, schema base, vm or type");
        return QB_EINVAL;
    }

    id_len = qb_format_id_raw(in->epoch, in->sequence, id);
    id[id_len] = '\0';
    /* Zero-padded to 20 digits (UINT64_MAX has 20), so sequences sort as text. */
    memset(seq, '0', 20);
    qb_fmt_u64(in->sequence, seq + 20);
    qb_envelope_format_time(in->ts_sec, in->ts_usec, when, sizeof(when));

    /*
     * Keys and fixed values are literals that need no escaping, and so are the
     * id, sequence and time we just formatted (hex, digits, '-', ':', '.');
     * only the caller's strings go through the escaper.
     */
    qb_buffer_init(&b.out, 0);
    qb_buffer_reserve(&b.out, QB_ENVELOPE_INITIAL_CAP - 1);
    ENV_PUT_LIT(&b, "{\"specversion\":\"1.0\",\"id\":\"");
    env_put(&b, id, id_len);
    if (in->id_suffix)
        env_escaped(&b, in->id_suffix);
    ENV_PUT_LIT(&b, "\",\"source\":\"qmp-bridge://");
    env_escaped(&b, ctx->bridge_id);
    ENV_PUT_LIT(&b, "/");
    env_escaped(&b, in->vm);
    ENV_PUT_LIT(&b, "\",\"type\":\"");
    env_escaped(&b, in->type);
    ENV_PUT_LIT(&b, "\",\"subject\":\"");
    env_escaped(&b, in->vm);
    ENV_PUT_LIT(&b, "\",\"time\":\"");
    env_puts(&b, when);
    ENV_PUT_LIT(&b, "\",\"datacontenttype\":\"application/json\",\"dataschema\":\"");
    env_escaped(&b, ctx->schema_base_uri);
    env_escaped(&b, in->type);
    ENV_PUT_LIT(&b, ".json\",\"sequence\":\"");
    env_put(&b, seq, 20);
    ENV_PUT_LIT(&b, "\",\"partitionkey\":\"");
    env_escaped(&b, ctx->bridge_id);
    ENV_PUT_LIT(&b, "/");
    env_escaped(&b, in->vm);
    ENV_PUT_LIT(&b, "\",\"bridge\":\"");
    env_escaped(&b, ctx->bridge_id);
    ENV_PUT_LIT(&b, "\",\"data\":");
    if (in->data_json)
        env_put(&b, in->data_json, in->data_json_len);
    else if (in->data)
        env_json(&b, in->data, 0);
    else
        ENV_PUT_LIT(&b, "{}");
    ENV_PUT_LIT(&b, "}");

    if (b.bad) {
        QB_LOG_ERR(in->vm, "envelope: %s data cannot be serialised", in->type);
        qb_buffer_free(&b.out);
        return QB_EINVAL;
    }
    *out = qb_buffer_take(&b.out, out_len);
    if (!*out) {
        QB_LOG_ERR(in->vm, "envelope: out of memory building %s", in->type);
        return QB_ENOMEM;
    }
    return QB_OK;
}
