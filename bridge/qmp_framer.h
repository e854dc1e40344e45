/*
 * qmp_framer.h - split a QMP byte stream into lines without copying them.
 *
 * QMP sends one JSON object per line ("\r\n" or "\n"). The reader hands libuv
 * the framer's free tail (qb_framer_space), then commits what arrived; every
 * complete line is passed to the callback straight from the buffer, and only
 * a trailing partial line is moved to the front. The buffer grows on demand up
 * to max_line + 2 bytes (a "\r\n" line of max_line) and is released when no
 * partial line is held, so an idle session costs no buffer at all.
 */
#ifndef QB_QMP_FRAMER_H
#define QB_QMP_FRAMER_H

#include <stddef.h>

struct qb_framer {
    char *buf;       /* owned; NULL while empty */
    size_t len;      /* bytes of a partial line held at buf[0..len) */
    size_t cap;      /* allocated size of buf */
    size_t max_line; /* longest accepted line, without its terminator */
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

/* Drops any partial line and frees the buffer; the framer stays usable. */
void qb_framer_reset(struct qb_framer *f);

#endif
