/*
 * log.c - the levelled logger behind log.h: levels, the line's context,
 * escaping, and the text format; log_json.c and log_journal.c write the
 * other formats.
 *
 * One write per line so lines from one process never interleave; stderr is
 * unbuffered, which is what we want for a daemon whose last words matter.
 *
 * Escaping happens here rather than at the call sites because the strings
 * that reach a log line (command ids, QMP error texts, peer names, topics)
 * come from many places and one forgotten call site is enough to forge a
 * line. The common case pays one scan of each string and no copy.
 */
#include "log.h"
#include "error.h"
#include "log_line.h"
#include "utf8.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

enum qb_log_level qb_log_threshold = QB_LOG_INFO;
static enum qb_log_format log_format = QB_LOG_FORMAT_TEXT;

/* What the code logging on this thread is busy with (log.h, the scopes). */
static _Thread_local const char *ctx_transport;
static _Thread_local char ctx_command[QB_LOG_COMMAND_ID_MAX + 1];

static const char *const qb_log_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"auto", "text", "json", "journal"};

void qb_log_set_level(enum qb_log_level level)
{
    qb_log_threshold = level;
}

void qb_log_set_format(enum qb_log_format format)
{
    if (format == QB_LOG_FORMAT_AUTO)
        format = qb_log_journal_is_stderr() ? QB_LOG_FORMAT_JOURNAL : QB_LOG_FORMAT_TEXT;
    log_format = format;
}

bool qb_log_stderr_is_journal(void)
{
    return qb_log_journal_is_stderr();
}

enum qb_log_format qb_log_get_format(void)
{
    return log_format;
}

const char *qb_log_format_name(enum qb_log_format format)
{
    if ((unsigned)format >= sizeof(format_names) / sizeof(format_names[0]))
        return "?";
    return format_names[format];
}

int qb_log_level_parse(const char *text, enum qb_log_level *out)
{
    for (unsigned i = 0; i < sizeof(qb_log_names) / sizeof(qb_log_names[0]); i++) {
        if (strcasecmp(text, qb_log_names[i]) == 0) {
            *out = (enum qb_log_level)i;
            return QB_OK;
        }
    }
    if (strcasecmp(text, "warning") == 0) {
        *out = QB_LOG_WARN;
        return QB_OK;
    }
    return QB_EINVAL;
}

const char *qb_log_level_name(enum qb_log_level level)
{
    if ((unsigned)level >= sizeof(qb_log_names) / sizeof(qb_log_names[0]))
        return "?";
    return qb_log_names[level];
}

/* ---- context ---- */

const char *qb_log_transport_begin(const char *name)
{
    const char *previous = ctx_transport;

    ctx_transport = name;
    return previous;
}

void qb_log_transport_end(const char *previous)
{
    ctx_transport = previous;
}

static void command_set(char *dst, const char *id)
{
    size_t n = id ? strnlen(id, QB_LOG_COMMAND_ID_MAX) : 0;

    memcpy(dst, id ? id : "", n);
    dst[n] = '\0';
}

void qb_log_command_begin(struct qb_log_command_scope *scope, const char *id)
{
    command_set(scope->previous, ctx_command);
    command_set(ctx_command, id);
}

void qb_log_command_end(const struct qb_log_command_scope *scope)
{
    command_set(ctx_command, scope->previous);
}

void qb_log_command_set(const char *id)
{
    command_set(ctx_command, id);
}

/* ---- escaping ---- */

/* Bytes in the control sequence that starts at p (1 or 2), or 0 when it starts none. */
static size_t control_len(const unsigned char *p)
{
    if (*p < 0x20 || *p == 0x7f)
        return 1;
    if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
        return 2;
    return 0;
}

/*
 * Bytes to escape at p (0: none, copy on), and in *copy the bytes copied as
 * one piece otherwise. utf8 also escapes bytes that are not well-formed UTF-8.
 */
static size_t escape_len(const unsigned char *p, bool utf8, size_t *copy)
{
    size_t n = control_len(p);

    *copy = 1;
    if (n == 0 && utf8 && (*copy = qb_utf8_seq_len(p, strnlen((const char *)p, 4))) == 0)
        n = 1;
    return n;
}

static bool needs_escape(const char *text, bool utf8)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t copy;

    for (; *p; p += copy)
        if (escape_len(p, utf8, &copy))
            return true;
    return false;
}

static size_t escape(char *out, size_t outlen, const char *text, bool utf8)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)text;
    size_t used = 0;

    while (*p) {
        size_t copy, n = escape_len(p, utf8, &copy);

        if (n == 0) {
            if (used + copy >= outlen)
                break;
            memcpy(out + used, p, copy);
            used += copy;
            p += copy;
            continue;
        }
        if (used + 4 * n >= outlen)
            break;
        for (size_t i = 0; i < n; i++, p++) {
            out[used++] = '\\';
            out[used++] = 'x';
            out[used++] = hex[*p >> 4];
            out[used++] = hex[*p & 0xf];
        }
    }
    out[used] = '\0';
    return used;
}

size_t qb_log_escape(char *out, size_t outlen, const char *text)
{
    return escape(out, outlen, text, false);
}

/* text itself when it needs no escaping, else its escaped copy in buf. */
static const char *escaped(const char *text, char *buf, size_t buflen, bool utf8)
{
    if (!needs_escape(text, utf8))
        return text;
    escape(buf, buflen, text, utf8);
    return buf;
}

/* ---- writing ---- */

/* Writes "2026-12-06T16:00:00.123Z" (UTC, milliseconds) into out (at least 32 bytes). */
static void log_time(char *out, size_t outlen)
{
    char stamp[32];
    struct timeval tv;
    struct tm tm;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    /* % 1000 bounds the field to three digits for the compiler too */
    snprintf(out, outlen, "%s.%03uZ", stamp, (unsigned)(tv.tv_usec / 1000) % 1000u);
}

static void text_write(const struct qb_log_line *line)
{
    if (line->vm)
        fprintf(stderr, "%s %-5s [%s] %s\n", line->time, line->level_name, line->vm, line->message);
    else
        fprintf(stderr, "%s %-5s %s\n", line->time, line->level_name, line->message);
}

void qb_log_write(enum qb_log_level level, const char *vm, const char *fmt, ...)
{
    char msg[2048];
    char msg_escaped[4 * sizeof(msg)]; /* every byte may become \xNN */
    char vm_escaped[256], transport_escaped[256];
    char command_escaped[4 * QB_LOG_COMMAND_ID_MAX + 1];
    char stamp[40];
    /* the text format keeps other UTF-8 as it is; JSON and the journal need it well-formed */
    bool utf8 = log_format != QB_LOG_FORMAT_TEXT;
    struct qb_log_line line = {.level = level, .level_name = qb_log_level_name(level)};
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    line.message = escaped(msg, msg_escaped, sizeof(msg_escaped), utf8);
    if (vm)
        line.vm = escaped(vm, vm_escaped, sizeof(vm_escaped), utf8);
    if (log_format != QB_LOG_FORMAT_JOURNAL) {
        log_time(stamp, sizeof(stamp));
        line.time = stamp;
    }
    if (log_format == QB_LOG_FORMAT_TEXT) {
        text_write(&line);
        return;
    }
    if (ctx_transport)
        line.transport = escaped(ctx_transport, transport_escaped, sizeof(transport_escaped), true);
    if (ctx_command[0])
        line.command_id = escaped(ctx_command, command_escaped, sizeof(command_escaped), true);
    if (log_format == QB_LOG_FORMAT_JSON)
        qb_log_json_write(&line);
    else if (qb_log_journal_write(&line) != QB_OK) {
        log_time(stamp, sizeof(stamp)); /* the journal refused it: stderr still reaches someone */
        line.time = stamp;
        text_write(&line);
    }
}
