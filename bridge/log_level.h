/*
 * log_level.h - what the logger's front (log.h) and its writers (log_line.h)
 * share: the severities of lines and the limits of their fields, so that the
 * writers need nothing else of the logger.
 */
#ifndef QB_LOG_LEVEL_H
#define QB_LOG_LEVEL_H

enum qb_log_level {
    QB_LOG_ERROR = 0,
    QB_LOG_WARN = 1,
    QB_LOG_INFO = 2,
    QB_LOG_DEBUG = 3,
};

/* Longest command id a line carries; longer ones are cut (ids are at most 128 bytes). */
#define QB_LOG_COMMAND_ID_MAX 128

#endif /* QB_LOG_LEVEL_H */
