/*
 * log.c - the levelled logger behind log.h.
 *
 * One fprintf per line so lines from one process never interleave; stderr is
 * unbuffered, which is what we want for a daemon whose last words matter.
 */
#include "log.h"
#include "error.h"

#include <stdarg.h>
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

void qb_log_write(enum qb_log_level level, const char *vm, const char *fmt, ...)
{
    char msg[2048];
    char stamp[40];
    struct timeval tv;
    struct tm tm;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);

    if (vm)
        fprintf(stderr, "%s.%03ldZ %-5s [%s] %s\n", stamp, (long)(tv.tv_usec / 1000),
                qb_log_level_name(level), vm, msg);
    else
        fprintf(stderr, "%s.%03ldZ %-5s %s\n", stamp, (long)(tv.tv_usec / 1000),
                qb_log_level_name(level), msg);
}
