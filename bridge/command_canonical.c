/*
 * command_canonical.c - the canonical text of a command (rules in the header).
 *
 * A recursive writer into one growing buffer. Commands are a few hundred
 * bytes and, by the time they get here, at most a few levels deep (the parser
 * pre-scans nesting); the depth bound guards other callers. The path of the
 * value being written is kept so that a refused value can be named.
 */
#include "command_canonical.h"

#include "buffer.h"
#include "error.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CANON_MAX_DEPTH 32
#define CANON_PATH_MAX 96

struct canon {
    struct qb_buffer out;
    char path[CANON_PATH_MAX]; /* "data.size", "data.list[2]"; cut when long */
    char *errbuf;
    size_t errlen;
};

static int canon_error(struct canon *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int canon_error(struct canon *c, const char *fmt, ...)
{
    va_list ap;

    if (c->errbuf && c->errlen) {
        va_start(ap, fmt);
        vsnprintf(c->errbuf, c->errlen, fmt, ap);
        va_end(ap);
    }
    return QB_EINVAL;
}

static inline int put(struct canon *c, const char *bytes, size_t n)
{
    return qb_buffer_append(&c->out, bytes, n);
}

/* The two-character escapes; every other byte below 0x20 is \u00xx. */
static const char short_escapes[0x60] = {
    ['"'] = '"',  ['\\'] = '\\', ['\b'] = 'b', ['\f'] = 'f',
    ['\n'] = 'n', ['\r'] = 'r',  ['\t'] = 't',
};

static int put_string(struct canon *c, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; /* bytes copied as they are, written in one go */
    int rc;

    if ((rc = put(c, "\"", 1)) != QB_OK)
        return rc;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[6] = {'\\', 'u', '0', '0'};
        size_t esc_len = 2;

        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            run++;
            continue;
        }
        if (short_escapes[ch]) {
            esc[1] = short_escapes[ch];
        } else {
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 0xf];
            esc_len = 6;
        }
        if ((rc = put(c, s + i - run, run)) != QB_OK || (rc = put(c, esc, esc_len)) != QB_OK)
            return rc;
        run = 0;
    }
    if ((rc = put(c, s + n - run, run)) != QB_OK)
        return rc;
    return put(c, "\"", 1);
}

/* Appends ".key" or "[index]" to the path; returns the old length to restore. */
static size_t path_push(struct canon *c, const char *key, size_t index)
{
    size_t mark = strlen(c->path);
    size_t room = sizeof(c->path) - mark;
    int n;

    if (key)
        n = snprintf(c->path + mark, room, "%s%s", mark ? "." : "", key);
    else
        n = snprintf(c->path + mark, room, "[%zu]", index);
    if (n < 0 || (size_t)n >= room)
        memcpy(c->path + sizeof(c->path) - 4, "...", 4);
    return mark;
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b); /* as unsigned char */
}

static int put_value(struct canon *c, const json_t *v, unsigned depth, bool top);

static int put_object(struct canon *c, const json_t *obj, unsigned depth, bool top)
{
    size_t n = json_object_size(obj), count = 0;
    const char **keys;
    const char *key;
    json_t *member;
    int rc = QB_OK;

    if (n == 0)
        return put(c, "{}", 2);
    if (!(keys = malloc(n * sizeof(*keys))))
        return QB_ENOMEM;
    json_object_foreach((json_t *)obj, key, member)
    {
        if (!(top && strcmp(key, "signature") == 0))
            keys[count++] = key;
    }
    qsort(keys, count, sizeof(*keys), compare_keys);
    rc = put(c, "{", 1);
    for (size_t i = 0; i < count && rc == QB_OK; i++) {
        size_t mark;

        if (i > 0 && (rc = put(c, ",", 1)) != QB_OK)
            break;
        if ((rc = put_string(c, keys[i], strlen(keys[i]))) != QB_OK ||
            (rc = put(c, ":", 1)) != QB_OK)
            break;
        mark = path_push(c, keys[i], 0);
        rc = put_value(c, json_object_get(obj, keys[i]), depth + 1, false);
        c->path[mark] = '\0';
    }
    free(keys);
    return rc == QB_OK ? put(c, "}", 1) : rc;
}

static int put_value(struct canon *c, const json_t *v, unsigned depth, bool top)
{
    char num[32];
    int rc = QB_OK;

    if (depth > CANON_MAX_DEPTH)
        return canon_error(c, "%s: nested deeper than %d levels", c->path, CANON_MAX_DEPTH);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return put_object(c, v, depth, top);
    case JSON_ARRAY:
        rc = put(c, "[", 1);
        for (size_t i = 0; i < json_array_size(v) && rc == QB_OK; i++) {
            size_t mark = path_push(c, NULL, i);

            if (i > 0)
                rc = put(c, ",", 1);
            if (rc == QB_OK)
                rc = put_value(c, json_array_get(v, i), depth + 1, false);
            c->path[mark] = '\0';
        }
        return rc == QB_OK ? put(c, "]", 1) : rc;
    case JSON_STRING:
        return put_string(c, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return put(c, num, strlen(num));
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        if (strspn(num, "-0123456789") == strlen(num))
            strcat(num, ".0"); /* "%.17g" writes 1.0 as "1": say it was a real */
        return canon_error(c,
                           "%s: a real number cannot be signed (%s); signed commands carry "
                           "integers only",
                           c->path, num);
    case JSON_TRUE:
        return put(c, "true", 4);
    case JSON_FALSE:
        return put(c, "false", 5);
    case JSON_NULL:
        return put(c, "null", 4);
    }
    return canon_error(c, "%s: not a JSON value", c->path);
}

int qb_command_canonical(const json_t *command, char **text, size_t *len, char *errbuf,
                         size_t errlen)
{
    struct canon c = {.errbuf = errbuf, .errlen = errlen};
    int rc;

    *text = NULL;
    *len = 0;
    if (!json_is_object(command))
        return canon_error(&c, "command: expected a JSON object");
    qb_buffer_init(&c.out, 0);
    if ((rc = put_value(&c, command, 0, true)) != QB_OK) {
        qb_buffer_free(&c.out);
        return rc;
    }
    *text = qb_buffer_take(&c.out, len);
    return *text ? QB_OK : QB_ENOMEM;
}
