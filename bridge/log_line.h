/*
 * log_line.h - one log line on its way out, and the writers for each format.
 *
 * Internal to the logger (log.c, log_json.c, log_journal.c): the rest of the
 * bridge uses log.h. qb_log_write fills a qb_log_line with strings that are
 * already escaped: no control character and, for the JSON and journal
 * writers, valid UTF-8 only (a journal field that is not valid UTF-8 shows as
 * "blob data" in journalctl; JSON must be UTF-8).
 */
#ifndef QB_LOG_LINE_H
#define QB_LOG_LINE_H

#include "log_level.h"

#include <stdbool.h>
#include <stddef.h>

struct qb_log_line {
    enum qb_log_level level;
    const char *level_name; /* static: qb_log_level_name(level) */
    const char *time;       /* "2026-12-06T16:00:00.123Z" (UTC, ms), or NULL for the journal,
                               which keeps its own */
    const char *vm;         /* borrowed, NULL when the line concerns no VM */
    const char *transport;  /* borrowed, NULL when none */
    const char *command_id; /* borrowed, NULL when none */
    const char *message;    /* borrowed, never NULL */
};

/* One JSON object and a newline on stderr, in one write. */
void qb_log_json_write(const struct qb_log_line *line);

/* qb_log_stderr_is_journal (log.h), answered by the journal writer, which knows how. */
bool qb_log_journal_is_stderr(void);

/* Sends the line to the journal; QB_OK, or QB_EIO when the journal did not take it. */
int qb_log_journal_write(const struct qb_log_line *line);

#endif
