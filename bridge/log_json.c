/*
 * log_json.c - the JSON lines format (bridge.log_format: json), for
 * containers and log shippers: one object per line, keys time, level, vm,
 * transport, command_id (each only when the line has it) and message.
 *
 * The strings arrive escaped (log_line.h): no control characters, valid
 * UTF-8. What is left to do for JSON is quotes and backslashes, so a decoded
 * message reads exactly like the text format's. A line too long for the
 * buffer is cut inside the message, at a character, and stays valid JSON.
 */
#include "log_line.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Room always kept for the end: a string's closing quote, '}' and '\n'. */
#define JSON_TAIL 3

struct jbuf {
    char *p;
    size_t used, cap;
    bool full;
};

/* Appends n bytes, all or none; once one does not fit, nothing more is appended. */
static void put(struct jbuf *b, const char *s, size_t n)
{
    if (b->full || b->used + n + JSON_TAIL > b->cap) {
        b->full = true;
        return;
    }
    memcpy(b->p + b->used, s, n);
    b->used += n;
}

/* Bytes of the UTF-8 character whose lead byte is c (the text is well-formed). */
static size_t char_len(unsigned char c)
{
    return c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

/* ,"key":"value" (without the comma for the first key); value is cut to what fits. */
static void field(struct jbuf *b, const char *key, const char *value)
{
    char head[32];
    int n = snprintf(head, sizeof(head), "%s\"%s\":\"", b->used > 1 ? "," : "", key);

    if (!value || b->full)
        return;
    put(b, head, (size_t)n);
    if (b->full)
        return;
    while (*value && !b->full) {
        size_t len = char_len((unsigned char)*value);

        if (*value == '"' || *value == '\\') {
            char pair[2] = {'\\', *value};
            put(b, pair, 2);
        } else {
            put(b, value, len);
        }
        value += len;
    }
    b->p[b->used++] = '"'; /* JSON_TAIL kept room for it */
}

void qb_log_json_write(const struct qb_log_line *line)
{
    char out[16 * 1024];
    struct jbuf b = {.p = out, .cap = sizeof(out)};

    put(&b, "{", 1);
    field(&b, "time", line->time);
    field(&b, "level", line->level_name);
    field(&b, "vm", line->vm);
    field(&b, "transport", line->transport);
    field(&b, "command_id", line->command_id);
    field(&b, "message", line->message);
    out[b.used++] = '}';
    out[b.used++] = '\n';
    fwrite(out, 1, b.used, stderr);
}
