/*
 * log.h - levelled logger.
 *
 * The level is checked before any formatting happens (the macros test
 * qb_log_threshold first), so debug lines cost one compare when off.
 *
 * Where lines go is the format (bridge.log_format):
 *   text     stderr, "<time> <level> [<vm>] <message>"; the [vm] part is left
 *            out when vm is NULL
 *   json     stderr, one JSON object per line: time, level, then vm,
 *            transport and command_id when the line has them, then message
 *   journal  the systemd journal's native protocol (sd_journal_sendv):
 *            PRIORITY, SYSLOG_IDENTIFIER, MESSAGE and VM, TRANSPORT,
 *            COMMAND_ID; the journal keeps the time itself
 *   auto     journal when stderr is the journal (JOURNAL_STREAM names the
 *            device and inode of fd 2), else text
 *
 * One call is one line: the message and every field are escaped as they are
 * written (qb_log_escape), so a string from a peer, a command or a file
 * cannot start a line of its own or drive a terminal, whichever caller
 * logged it.
 *
 * The transport and command id of a line are not arguments: the code that
 * handles a transport or a command sets them around its work (the scopes
 * below), so every line logged meanwhile carries them, whichever file logs it.
 * The context is per thread; lines from other threads have none.
 */
#ifndef QB_LOG_H
#define QB_LOG_H

#include "log_level.h"

#include <stdbool.h>
#include <stddef.h>

enum qb_log_format {
    QB_LOG_FORMAT_AUTO = 0,
    QB_LOG_FORMAT_TEXT = 1,
    QB_LOG_FORMAT_JSON = 2,
    QB_LOG_FORMAT_JOURNAL = 3,
};

extern enum qb_log_level qb_log_threshold;

void qb_log_set_level(enum qb_log_level level);

/*
 * Chooses where lines go. AUTO is resolved here, once: JOURNAL when stderr is
 * the journal (qb_log_stderr_is_journal), else TEXT. The default until this is
 * called is TEXT.
 */
void qb_log_set_format(enum qb_log_format format);

/* The format lines go out in now (never AUTO). */
enum qb_log_format qb_log_get_format(void);

/* Returns the static name of a format ("json"). */
const char *qb_log_format_name(enum qb_log_format format);

/*
 * True when JOURNAL_STREAM is set and names the device and inode of fd 2
 * ("<dev>:<ino>", decimal), which is how systemd tells a service that its
 * stderr is a journal stream.
 */
bool qb_log_stderr_is_journal(void);

/* Parses "error", "warn"/"warning", "info", "debug". Returns QB_OK or QB_EINVAL. */
int qb_log_level_parse(const char *text, enum qb_log_level *out);

/* Returns the static name of a level ("info"). */
const char *qb_log_level_name(enum qb_log_level level);

/*
 * Copies text into out (outlen >= 1, always terminated) with every control
 * character written as \xNN (upper-case hex): the bytes 0x00-0x1f and 0x7f,
 * and the C1 controls U+0080-U+009F (UTF-8 c2 80 - c2 9f, both bytes
 * escaped). Everything else, a backslash and other UTF-8 included, is copied
 * as is. Output that does not fit is cut at an escape boundary. Returns the
 * number of bytes written, not counting the terminator.
 */
size_t qb_log_escape(char *out, size_t outlen, const char *text);

/*
 * Transport scope: lines logged until qb_log_transport_end() concern the
 * transport called name (borrowed: it must outlive the scope; NULL for none).
 * Returns the transport this scope replaces, to hand to the end.
 */
const char *qb_log_transport_begin(const char *name);
void qb_log_transport_end(const char *previous);

/* What a command scope replaced, kept by its caller until the scope ends. */
struct qb_log_command_scope {
    char previous[QB_LOG_COMMAND_ID_MAX + 1];
};

/*
 * Command scope: lines logged until qb_log_command_end(scope) concern the
 * command id (copied, so the command may be freed inside the scope; NULL for
 * none). Scopes nest: the end restores what the begin replaced.
 */
void qb_log_command_begin(struct qb_log_command_scope *scope, const char *id);
void qb_log_command_end(const struct qb_log_command_scope *scope);

/* Inside a command scope begun before the id was known: names the command (copied). */
void qb_log_command_set(const char *id);

/* Writes one line unconditionally; use the macros below instead. vm may be NULL. */
void qb_log_write(enum qb_log_level level, const char *vm, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define qb_log(level, vm, ...)                                                                     \
    do {                                                                                           \
        if ((level) <= qb_log_threshold)                                                           \
            qb_log_write((level), (vm), __VA_ARGS__);                                              \
    } while (0)

#define QB_LOG_ERR(vm, ...) qb_log(QB_LOG_ERROR, (vm), __VA_ARGS__)
#define QB_LOG_WARN(vm, ...) qb_log(QB_LOG_WARN, (vm), __VA_ARGS__)
#define QB_LOG_INFO(vm, ...) qb_log(QB_LOG_INFO, (vm), __VA_ARGS__)
#define QB_LOG_DEBUG(vm, ...) qb_log(QB_LOG_DEBUG, (vm), __VA_ARGS__)

#endif
