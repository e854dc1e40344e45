/*
 * command_journal.h - executed command keys, kept on disk across restarts.
 *
 * With bridge.state_directory set, the idempotency cache (command_cache.h) is
 * mirrored in <state_directory>/commands.journal, so that a command replayed
 * after a restart, within its replay window, is answered with its first
 * result instead of running again. A command's key is appended and made
 * durable (write + fdatasync) BEFORE its first QMP step runs: a command is
 * run at most once across restarts. Its result is appended when it finishes;
 * a key that was running when the bridge stopped comes back as finished with
 * an "interrupted" result (outcome unknown, never run again).
 *
 * Format: one JSON object per line,
 *   {"op":"begin","source":s,"vm":s,"id":s,"fp":hex,"command":s,"time":µs}
 *   {"op":"end","source":s,"vm":s,"id":s,"result":{...}}
 *   {"op":"forget","source":s,"vm":s,"id":s}       (dropped without running)
 *   {"op":"window","usec":µs,"horizon":µs}          (first line after each compaction,
 *                                                    and when a reload changes them)
 * Loading replays the lines into the cache, drops keys whose window is over
 * (time + max_age + max_skew in the past) and skips a corrupt or truncated
 * line with a logged file:line. The file is then compacted: the live entries
 * are written to a new file created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW,
 * mode 0600), fsynced and renamed over the old one; the same happens while
 * running once more than twice the cache's capacity in lines were appended,
 * so the file stays bounded by the cache. No file is ever opened through a
 * symbolic link.
 *
 * The window record says which window forgot the keys that are gone. When
 * max_age or max_skew grew since (a reload, or a restart with a new
 * configuration), a command older than the old window may be one whose key
 * was forgotten: the horizon, kept in the same record, is the time before
 * which commands are refused (qb_command_journal_horizon).
 */
#ifndef QB_COMMAND_JOURNAL_H
#define QB_COMMAND_JOURNAL_H

#include "command_cache.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define QB_COMMAND_JOURNAL_FILE "commands.journal"

struct qb_command_journal;

/*
 * Opens <dir>/commands.journal (dir is created, mode 0700, when missing),
 * loads it into cache (borrowed: must outlive the journal; capacity as
 * configured) and compacts it. window_usec is max_age + max_skew; now_usec
 * the wall clock. Returns QB_OK with *out (the caller owns it,
 * qb_command_journal_close), or QB_EIO / QB_ENOMEM with errbuf naming the file
 * (a symbolic link in place of the file or directory is refused).
 */
int qb_command_journal_open(const char *dir, struct qb_command_cache *cache, uint64_t window_usec,
                            uint64_t now_usec, struct qb_command_journal **out, char *errbuf,
                            size_t errlen);

/* Closes the file and frees j. NULL is fine. */
void qb_command_journal_close(struct qb_command_journal *j);

/*
 * Commands timed before this (µs since the epoch; 0: none) must be refused:
 * their keys may have been forgotten under a smaller window than the one in
 * force now (the file's last window record against window_usec at open).
 */
uint64_t qb_command_journal_horizon(const struct qb_command_journal *j);

/*
 * Records a new window and horizon (a reload changed max_age or max_skew),
 * made durable before returning, so a restart knows which window forgot
 * what. Returns QB_OK or QB_EIO / QB_ENOMEM (logged).
 */
int qb_command_journal_set_window(struct qb_command_journal *j, uint64_t window_usec,
                                  uint64_t horizon_usec);

/*
 * Appends key (borrowed) with meta and makes it durable before returning.
 * Returns QB_OK or QB_EIO / QB_ENOMEM (logged with the file): the caller must
 * not run the command then.
 */
int qb_command_journal_begin(struct qb_command_journal *j, const struct qb_command_key *key,
                             const struct qb_command_meta *meta);

/* Appends key's result (borrowed). Not synced: a lost end makes a replay "interrupted",
   never a second run. Returns QB_OK, QB_EIO or QB_ENOMEM (logged). */
int qb_command_journal_finish(struct qb_command_journal *j, const struct qb_command_key *key,
                              const json_t *result);

/* Appends that key was dropped without running. Returns QB_OK, QB_EIO or QB_ENOMEM (logged). */
int qb_command_journal_forget(struct qb_command_journal *j, const struct qb_command_key *key);

/*
 * The result a replay of an interrupted command gets: a new object (caller
 * owns it) with status "failed", class "interrupted", command_id id and
 * command name (NULL: null).
 */
json_t *qb_command_journal_interrupted_result(const char *id, const char *command);

#endif
