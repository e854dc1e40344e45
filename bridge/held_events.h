/*
 * held_events.h - QMP events held back while a session waits for a reply, bounded.
 *
 * A VM's events must reach the bus in order, so while its snapshot, a STOP's
 * query-status or listen mode's query-name is outstanding, every event read
 * meanwhile waits. The reply is behind whatever QEMU sent before it, so
 * reading cannot stop; what waits must be bounded instead, or a peer that
 * never answers and floods events takes all the bridge's memory. This FIFO
 * keeps each event as its raw QMP line (the memory it holds is the sum of
 * the line lengths plus a small header per event, the same figure the bound
 * counts), parsed again when it is taken out, and refuses an event that
 * would take it past either bound: the caller then closes the session.
 *
 * Not thread-safe; one per VM (and one per listen-mode connection not named
 * yet). An all-zero struct is an empty queue.
 */
#ifndef QB_HELD_EVENTS_H
#define QB_HELD_EVENTS_H

#include <jansson.h>
#include <stddef.h>

struct qb_held_line;

struct qb_held_events {
    struct qb_held_line **ring; /* cap slots, a power of two; NULL while cap is 0 */
    size_t head, len, cap;
    size_t bytes; /* sum of the held lines' lengths */
};

/* The bounds of one queue: events and line bytes. */
struct qb_held_limits {
    size_t max_events;
    size_t max_bytes;
};

/*
 * Appends a copy of line (len bytes, borrowed) unless that would take q over
 * lim. Returns QB_OK, QB_ETOOBIG (over a bound: nothing added, q unchanged)
 * or QB_ENOMEM.
 */
int qb_held_events_push(struct qb_held_events *q, const char *line, size_t len,
                        const struct qb_held_limits *lim);

/*
 * Takes the oldest event out and parses it again. Returns a new reference
 * (the caller owns it) or NULL when q is empty or the line could not be
 * parsed (out of memory; it is dropped and *lost, if not NULL, set to 1).
 */
json_t *qb_held_events_pop(struct qb_held_events *q, int *lost);

/* Moves every event of from to the end of to, in order, ignoring bounds. Returns QB_OK or
 * QB_ENOMEM (nothing moved). */
int qb_held_events_move(struct qb_held_events *to, struct qb_held_events *from);

/* Events held now. */
size_t qb_held_events_count(const struct qb_held_events *q);

/* Line bytes held now. */
size_t qb_held_events_bytes(const struct qb_held_events *q);

/* Frees every held event and the ring; q is empty afterwards and may be used again. */
void qb_held_events_clear(struct qb_held_events *q);

#endif
