/*
 * qmp_framer.h - split a QMP byte stream into lines without copying them.
 *
 * QMP sends one JSON object per line ("\r\n" or "\n"). The reader hands libuv
 * a writable area (qb_framer_space), then commits what arrived; every
 * complete line is passed to the callback straight from that area. Reads go
 * into one 64 KiB area per thread, shared by all framers of that thread
 * (libuv runs a stream's alloc and read callbacks back to back), so a read
 * costs no allocation; only a trailing partial line is copied out into the
 * framer's own buffer of exactly its size, and copied back in front of the
 * next read. A line longer than half the area grows a buffer of the framer's
 * own, up to max_line + 2 bytes (a "\r\n" line of max_line). An idle session
 * costs no buffer at all.
 */
#ifndef QB_QMP_FRAMER_H
#define QB_QMP_FRAMER_H

#include <stdbool.h>
#include <stddef.h>

struct qb_framer {
    char *buf;       /* owned, or the thread's read area while shared; NULL while empty */
    size_t len;      /* bytes of a partial line held at buf[0..len) */
    size_t cap;      /* usable size of buf */
    size_t max_line; /* longest accepted line, without its terminator */
    bool shared;     /* buf is the thread's read area (from qb_framer_space to commit/reset) */
};

/*
 * Called once per complete line. line is borrowed (valid only during the
 * call), not NUL-terminated, without the trailing "\n" or "\r\n"; empty lines
 * are skipped and never reported. Return 0 to go on, or a negative code to
 * stop: qb_framer_commit then returns that code.
 */
typedef int (*qb_framer_line_cb)(void *arg, const char *line, size_t len);

void qb_framer_init(struct qb_framer *f, size_t max_line);

/*
 * Returns in *ptr and *len a writable area at the end of the buffer of at least
 * min(suggested, room left) bytes, growing the buffer as needed. Returns
 * QB_OK, QB_ENOMEM, or QB_ETOOBIG when a partial line already fills max_line.
 */
int qb_framer_space(struct qb_framer *f, size_t suggested, char **ptr, size_t *len);

/*
 * Accounts nread bytes just written into the area from qb_framer_space and
 * reports every complete line. Returns QB_OK, the callback's negative code,
 * or QB_ETOOBIG when a line exceeds max_line (the framer is then reset and
 * the session should be closed: resynchronising inside a stream is guesswork).
 */
int qb_framer_commit(struct qb_framer *f, size_t nread, qb_framer_line_cb cb, void *arg);

/*
 * Convenience for tests and fuzzing: copies data in through space/commit.
 * Same returns as qb_framer_commit.
 */
int qb_framer_feed(struct qb_framer *f, const char *data, size_t len, qb_framer_line_cb cb,
                   void *arg);

/*
 * Drops any partial line and frees the buffer (or gives the shared area
 * back); the framer stays usable. Call it before freeing a framer that may
 * hold the shared area (a qb_framer_space not yet committed).
 */
void qb_framer_reset(struct qb_framer *f);

#endif
