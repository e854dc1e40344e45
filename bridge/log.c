/*
 * log.c - the levelled logger behind log.h.
 *
 * One fprintf per line so lines from one process never interleave; stderr is
 * unbuffered, which is what we want for a daemon whose last words matter.
 *
 * Escaping happens here rather than at the call sites because the strings
 * that reach a log line (command ids, QMP error texts, peer names, topics)
 * come from many places and one forgotten call site is enough to forge a
 * line. The common case pays one scan of the formatted line and no copy.
 */
#include "log.h"
#include "error.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

enum qb_log_level qb_log_threshold = QB_LOG_INFO;

static const char *const qb_log_names[] = {"error", "warn", "info", "debug"};

void qb_log_set_level(enum qb_log_level level)
{
    qb_log_threshold = level;
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

/* Bytes in the control sequence that starts at p (1 or 2), or 0 when it starts none. */
static size_t control_len(const unsigned char *p)
{
    if (*p < 0x20 || *p == 0x7f)
        return 1;
    if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
        return 2;
    return 0;
}

static bool has_control(const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        if (control_len(p))
            return true;
    return false;
}

size_t qb_log_escape(char *out, size_t outlen, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)text;
    size_t used = 0;

    while (*p) {
        size_t n = control_len(p);

        if (n == 0) {
            if (used + 1 >= outlen)
                break;
            out[used++] = (char)*p++;
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

void qb_log_write(enum qb_log_level level, const char *vm, const char *fmt, ...)
{
    char msg[2048];
    char msg_escaped[4 * sizeof(msg)]; /* every byte may become \xNN */
    char vm_escaped[256];
    const char *text = msg;
    char stamp[40];
    struct timeval tv;
    struct tm tm;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (has_control(msg)) {
        qb_log_escape(msg_escaped, sizeof(msg_escaped), msg);
        text = msg_escaped;
    }
    if (vm && has_control(vm)) {
        qb_log_escape(vm_escaped, sizeof(vm_escaped), vm);
        vm = vm_escaped;
    }

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);

    if (vm)
        fprintf(stderr, "%s.%03ldZ %-5s [%s] %s\n", stamp, (long)(tv.tv_usec / 1000),
                qb_log_level_name(level), vm, text);
    else
        fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, (long)(tv.tv_usec / 1000),
                qb_log_level_name(level), text);
}
