/*
 * log.h - levelled logger.
 *
 * The level is checked before any formatting happens (the macros test
 * qb_log_threshold first), so debug lines cost one compare when off.
 * Lines go to stderr as "<time> <level> [<vm>] <message>"; the [vm] part is
 * left out when vm is NULL. Under systemd, stderr lands in the journal.
 *
 * One call is one line: the message and the vm are escaped as they are
 * written (qb_log_escape), so a string from a peer, a command or a file
 * cannot start a line of its own or drive a terminal, whichever caller
 * logged it.
 */
#ifndef QB_LOG_H
#define QB_LOG_H

#include <stddef.h>

enum qb_log_level {
    QB_LOG_ERROR = 0,
    QB_LOG_WARN = 1,
    QB_LOG_INFO = 2,
    QB_LOG_DEBUG = 3,
};

extern enum qb_log_level qb_log_threshold;

void qb_log_set_level(enum qb_log_level level);

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
