/*
 * spool.h - the durable outbox: an append-only log of outgoing envelopes on disk.
 *
 * The spool is storage only; it knows nothing of transports. The outbox
 * (outbox.c) appends every event and state envelope here before any transport
 * sees it, reads it back for transports that are behind, and releases records
 * once every transport has confirmed them.
 *
 * Layout of the directory:
 * The directory belongs to the bridge's user and no other user may write in
 * it (checked at open); one the spool creates is mode 0750.
 *
 *   lock                  flock()ed while a bridge uses the directory
 *   <first id, 16 hex>.seg  segment files, append-only, one active at a time
 *   state.json            checkpoint: next record id, per-consumer cursors,
 *                         per-VM (epoch, sequence); written to a temporary
 *                         file, fsynced and renamed, so it is never torn
 *
 * A segment starts with an 8-byte header ("QBSPOOL1"); then records:
 *   u32 magic "QBR1" | u32 body length | u32 CRC-32 (zlib) of the body | body
 * body (little-endian): u64 record id, u64 append time (us since epoch),
 *   u8 kind, u64 epoch, u64 sequence, u16+bytes vm, u16+bytes type,
 *   u16+bytes CloudEvents id, u16+bytes key, u32+bytes payload.
 * Record ids are strictly increasing and never reused, across restarts too.
 *
 * Recovery (qb_spool_open): every segment is scanned; a record whose header
 * or CRC does not check out (torn write, flipped bytes) is logged with the
 * file and offset, and the scan resynchronises on the next magic whose record
 * checks out, so the rest of the segment is kept. A torn tail of the newest
 * segment is truncated away before appending resumes.
 *
 * Appends are batched: records staged during one loop turn reach the file
 * with one write (qb_spool_stage, qb_spool_flush).
 *
 * Everything runs on the loop thread; nothing here blocks except local file
 * I/O (write, pread, and fdatasync at close, of a new segment's header and
 * with fsync: always), which is the point of a spool. fsync: batch's
 * interval sync and a rotated segment's last sync run in libuv's thread pool
 * on a duplicate of the segment's descriptor.
 */
#ifndef QB_SPOOL_H
#define QB_SPOOL_H

#include "message.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* When appended records reach the disk (spool.fsync). */
enum qb_spool_fsync {
    QB_SPOOL_FSYNC_BATCH = 0,  /* fdatasync at most every fsync_interval (default) */
    QB_SPOOL_FSYNC_ALWAYS = 1, /* fdatasync after every record */
    QB_SPOOL_FSYNC_OFF = 2,    /* leave it to the kernel: survives kill -9, not power loss */
};

struct qb_spool_options {
    const char *dir;            /* created (mode 0750) if missing; borrowed during open */
    uint64_t max_bytes;         /* bound on the bytes of all segments together */
    uint64_t segment_bytes;     /* a segment is closed and a new one started beyond this */
    enum qb_spool_fsync fsync;
    uint32_t fsync_interval_ms; /* QB_SPOOL_FSYNC_BATCH only */
};

/* One record as read back. Every pointer is owned by the reader and valid until its next call. */
struct qb_spool_record {
    uint64_t id;
    uint64_t append_usec;
    struct qb_message msg; /* kind, vm, type, id, key, epoch, sequence, payload, len; spool_id = id */
};

/* Counters and gauges, for logs and metrics. */
struct qb_spool_stats {
    uint64_t bytes;           /* on disk, all segments */
    uint64_t records;         /* stored and not yet released */
    uint64_t segments;
    uint64_t oldest_usec;     /* append time of the oldest stored record, 0 when empty */
    uint64_t appended;        /* since start */
    uint64_t released;        /* since start */
    uint64_t dropped;         /* records deleted unreleased by qb_spool_drop_oldest */
    uint64_t corrupt;         /* records skipped as corrupt at open or while reading */
    uint64_t write_errors;    /* records refused by an I/O error (disk full, ...) */
    uint64_t writes;          /* batches written (one write call each, failed ones too) */
    uint64_t syncs;           /* fsync: batch: interval syncs done (in libuv's thread pool) */
};

struct qb_spool;
struct qb_spool_reader;

/*
 * Opens (creating if needed) and recovers the spool in opt->dir. loop is
 * borrowed (batch fsync timer). Logs every corrupt record it skipped.
 * Returns QB_OK with *out (owned by the caller, release with qb_spool_close),
 * QB_EBUSY when another process holds the directory's lock, QB_EIO when the
 * directory or a file cannot be created, read or written (errbuf names the
 * path and the errno text), QB_EINVAL for bad options or a directory that
 * another user owns or others may write (qb_private_dir_check_fd: errbuf
 * names the directory, its owner and mode), QB_ENOMEM.
 *
 * No file in the directory is opened through a symlink (O_NOFOLLOW); new
 * files are created exclusively (O_EXCL), the checkpoint's temporary file
 * after removing whatever had its name. A symlink or other non-regular file
 * under a segment's name is moved aside as <name>.corrupt like a bad segment.
 */
int qb_spool_open(uv_loop_t *loop, const struct qb_spool_options *opt, struct qb_spool **out,
                  char *errbuf, size_t errlen);

/*
 * Appending is two steps, so that all records of one loop turn take one
 * write: qb_spool_stage encodes a record into the spool's batch (memory
 * only), qb_spool_flush writes the whole batch with one write (and one
 * fdatasync with fsync: always). A staged record is invisible until its
 * batch is written: readers, qb_spool_next_id and the stats see written
 * records only, so nobody may hand a staged record on before the flush that
 * wrote it returned QB_OK.
 *
 * qb_spool_stage: stages msg (borrowed; kind must be QB_MSG_EVENT or
 * QB_MSG_STATE; epoch and sequence are taken from msg). On QB_OK *id is the
 * id the record gets once its batch is written. Returns QB_EAGAIN, staging
 * nothing, when the batch must be flushed first (the record starts a new
 * segment, or the batch is at its size cap); QB_ENOSPC without staging
 * anything when the record would take the spool (written and staged bytes)
 * over max_bytes, or when the new segment it needs cannot be created
 * (QB_EIO likewise); QB_ETOOBIG for a record over 64 MiB; QB_EINVAL for a
 * REPLY; QB_ENOMEM.
 */
int qb_spool_stage(struct qb_spool *s, const struct qb_message *msg, uint64_t *id);

/*
 * Writes the batch (nothing to do when it is empty: QB_OK). On QB_OK every
 * staged record is stored, with the ids qb_spool_stage gave. On QB_ENOSPC or
 * QB_EIO (file system full, I/O error; logged once per failure streak with
 * the errno text) nothing of the batch is stored: any partial write is
 * truncated away so the log stays clean, the batch is discarded and its ids
 * are given again by the next stage; the caller still holds the messages.
 */
int qb_spool_flush(struct qb_spool *s);

/* Records staged and not yet written. */
size_t qb_spool_staged(const struct qb_spool *s);

/*
 * Stages msg and flushes at once (flushing an earlier batch first when the
 * stage asks for it): one record, one write. Returns what qb_spool_stage or
 * qb_spool_flush returned.
 */
int qb_spool_append(struct qb_spool *s, const struct qb_message *msg, uint64_t *id);

/* The id the next append will get. */
uint64_t qb_spool_next_id(const struct qb_spool *s);

/* The id of the oldest stored record (== qb_spool_next_id when empty). */
uint64_t qb_spool_first_id(const struct qb_spool *s);

/*
 * Opens a reader positioned at from_id (or at the oldest stored record if
 * from_id is older than that). Returns QB_OK with *out (owned by the caller,
 * release with qb_spool_reader_close; close every reader before the spool)
 * or QB_ENOMEM.
 */
int qb_spool_reader_open(struct qb_spool *s, uint64_t from_id, struct qb_spool_reader **out);

/*
 * Reads the next record into *rec (pointers owned by the reader, valid until
 * its next call). Returns 1 with a record, 0 when it has caught up with the
 * appends (a later call returns records appended since), or a negative code
 * on an I/O error. Corrupt records are logged, counted and skipped; records
 * deleted by qb_spool_drop_oldest or qb_spool_release under the reader are
 * skipped (the next record returned has a larger id than asked for).
 */
int qb_spool_reader_next(struct qb_spool_reader *r, struct qb_spool_record *rec);

/* The id the reader will return next (or a larger one if that was deleted). */
uint64_t qb_spool_reader_position(const struct qb_spool_reader *r);

/* Frees r. NULL is fine. */
void qb_spool_reader_close(struct qb_spool_reader *r);

/*
 * Every record with id < below_id has been confirmed by every consumer.
 * Deletes every segment whose records are all below it (the active segment
 * too, by starting a new one), after writing the checkpoint first, so a crash
 * in between only repeats records (duplicates, same ids), never loses them.
 * Returns QB_OK or QB_EIO (logged; nothing deleted).
 */
int qb_spool_release(struct qb_spool *s, uint64_t below_id);

/*
 * Called once per VM for the records dropped by qb_spool_drop_oldest:
 * sequences first_seq..last_seq (count records, events and state copies
 * together) of vm are lost. vm is borrowed for the call.
 */
typedef void (*qb_spool_drop_cb)(void *arg, const char *vm, uint64_t first_seq, uint64_t last_seq,
                                 uint64_t count);

/*
 * Deletes the oldest segment whether or not it was released (the spool is
 * full and on_full is drop_oldest). Reports what was lost through cb (may be
 * NULL) and logs one line per VM with the range of sequences. If only the
 * active segment is left it is closed and a new one started first. Returns
 * the number of bytes freed (> 0), or QB_ENOTFOUND when the spool is empty.
 */
int64_t qb_spool_drop_oldest(struct qb_spool *s, qb_spool_drop_cb cb, void *arg);

/*
 * Remembers consumer name's cursor (the id of the first record it has not had
 * confirmed) for the next checkpoint. name is copied. Returns QB_OK or QB_ENOMEM.
 */
int qb_spool_set_cursor(struct qb_spool *s, const char *name, uint64_t id);

/*
 * The cursor of consumer name recovered from the last checkpoint (or set
 * since), or qb_spool_first_id when the spool has never seen that name.
 */
uint64_t qb_spool_get_cursor(const struct qb_spool *s, const char *name);

/*
 * The last (epoch, sequence) of vm: the larger of what the checkpoint says
 * and what the stored records say, updated by every append. Returns false
 * when the spool has never seen that VM.
 */
bool qb_spool_vm_sequence(const struct qb_spool *s, const char *vm, uint64_t *epoch,
                          uint64_t *seq);

/*
 * Writes state.json now (temporary file, fsync, rename, fsync of the
 * directory). Returns QB_OK or QB_EIO (logged).
 */
int qb_spool_checkpoint(struct qb_spool *s);

/* fdatasyncs the active segment now (any fsync policy). Returns QB_OK or QB_EIO (logged). */
int qb_spool_sync(struct qb_spool *s);

void qb_spool_get_stats(const struct qb_spool *s, struct qb_spool_stats *out);

/* Syncs, writes the checkpoint, closes the files and frees s. NULL is fine. */
void qb_spool_close(struct qb_spool *s);

#endif
