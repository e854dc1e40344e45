/*
 * fair_reads.h - one loop turn, at most one buffer per busy QMP session.
 *
 * libuv keeps reading a stream for as long as each read fills its buffer (up
 * to 32 reads per wake-up), so a QEMU streaming events flat out can hold the
 * loop for 32 x 64 KiB worth of events while broker acknowledgements, other
 * VMs' handshakes and the status API wait their turn (flat out, /metrics can
 * go unanswered for tens of seconds and handshakes stall). A
 * session whose read filled its buffer parks here and stops reading; a check
 * handle, which runs right after the loop's poll phase, resumes every parked
 * session, so the next poll sees every other ready descriptor first and each
 * session gets one buffer per turn.
 *
 * The buffer shrinks as more sessions are busy: a turn with N parked sessions
 * sets the next turn's buffer to QB_FAIR_TURN_BYTES / N (between 4 KiB and
 * 64 KiB), so a turn stays near 1 MiB of QMP input however many VMs stream.
 * A session waiting for a reply (its handshake, its snapshot, a command) is
 * neither bounded nor parked: the reply is behind whatever QEMU sent before
 * it, and every turn it waits also keeps a connect slot or a command waiting.
 *
 * One per loop, owned by the QMP source (source_qmp.c); sessions point to it through
 * struct qb_qmp_options. Nothing runs while nothing is parked.
 */
#ifndef QB_FAIR_READS_H
#define QB_FAIR_READS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* Aim for about this much QMP input per loop turn, over all busy sessions. */
#define QB_FAIR_TURN_BYTES ((size_t)1024 * 1024)
#define QB_FAIR_CHUNK_MIN ((size_t)4096)
#define QB_FAIR_CHUNK_MAX ((size_t)65536)

struct qb_fair_reads;

/* Embedded in the parked object; resume runs from the check handle, once per park. */
struct qb_fair_entry {
    struct qb_fair_entry *prev, *next;
    void (*resume)(struct qb_fair_entry *e);
    bool parked;
};

/* Creates the scheduler on loop. Returns QB_OK with *out (owned: qb_fair_reads_close), or
 * QB_ENOMEM. */
int qb_fair_reads_new(uv_loop_t *loop, struct qb_fair_reads **out);

/* Parks e (borrowed until resumed or unparked) until after this turn's poll phase; no-op if parked.
 */
void qb_fair_reads_park(struct qb_fair_reads *f, struct qb_fair_entry *e);

/* Takes e off the list without resuming it (its owner is closing); no-op if not parked. */
void qb_fair_reads_unpark(struct qb_fair_reads *f, struct qb_fair_entry *e);

/* How much a streaming session may read at once this turn (bytes). */
size_t qb_fair_reads_chunk(const struct qb_fair_reads *f);

/* Parked entries so far this turn (tests). */
size_t qb_fair_reads_parked(const struct qb_fair_reads *f);

/*
 * Releases the scheduler: its handle is closed and f freed from the close
 * callback. Every entry must have been resumed or unparked. NULL is a no-op.
 */
void qb_fair_reads_close(struct qb_fair_reads *f);

#endif
