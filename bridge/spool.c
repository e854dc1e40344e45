/*
 * spool.c - the durable outbox on disk (see spool.h for the layout and the
 * recovery rules).
 *
 * Segments are kept in a list, oldest first; the last one is the active
 * segment that appends go to. Each knows the ids it holds, its record count
 * and where its last valid record ends ("end"): readers never read past it, so
 * they never see a record that is still being written or was truncated away
 * after a failed write. Every integer is encoded byte by byte (little-endian)
 * so the files are the same on every host.
 *
 * Readers hold their own descriptor and buffer and find their segment again
 * by its first id whenever segments were deleted (the spool's generation
 * counter changes), so release and drop_oldest never leave them with a
 * dangling pointer: records deleted under a reader are simply skipped.
 */
#include "spool.h"

#include "error.h"
#include "log.h"
#include "private_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>
#include <zlib.h>

#define SEG_HEADER "QBSPOOL1"
#define SEG_HEADER_LEN 8
#define REC_MAGIC "QBR1"
#define REC_HEADER_LEN 12
/* id, append time, kind, epoch, sequence, four u16 lengths, one u32 length */
#define REC_BODY_MIN (8 + 8 + 1 + 8 + 8 + 4 * 2 + 4)
#define REC_MAX (64u * 1024 * 1024)
#define READ_CHUNK (256 * 1024)
/* A batch larger than this is written before the next record is staged: bounds the buffer. */
#define BATCH_MAX (4u * 1024 * 1024)
/* ids live in state.json as JSON integers, which are signed 64-bit */
#define ID_MAX ((uint64_t)INT64_MAX)
#define STATE_FILE "state.json"
#define STATE_TMP "state.json.tmp"

/* A damaged region of a segment: [off, next) holds no valid record. */
struct skip {
    uint64_t off, next;
};

struct seg {
    struct seg *next;
    uint64_t first_id; /* from the file name: the next id when it was created */
    uint64_t min_id;   /* first and last record id; valid when records > 0 */
    uint64_t last_id;
    uint64_t records;
    uint64_t oldest_usec; /* append time of its first record */
    uint64_t end;         /* end of the last valid record */
    uint64_t size;        /* bytes on disk (> end only for an older segment with a damaged tail) */
    struct skip *skips;   /* damaged regions already logged and counted */
    size_t nskips;
    char name[24]; /* "<16 hex>.seg" */
};

struct cursor {
    char *name;
    uint64_t id;
    UT_hash_handle hh;
};

struct vmseq {
    char *name;
    uint64_t epoch, seq;
    UT_hash_handle hh;
};

/* A buffered, bounded view of one segment file, read with pread. */
struct segbuf {
    int fd;
    uint64_t limit; /* never read at or past this offset */
    uint8_t *buf;
    size_t cap, len;
    uint64_t base; /* file offset of buf[0] */
};

/* One decoded record; the strings point into a segbuf and are not NUL-terminated. */
struct rec_view {
    uint64_t id, usec, epoch, seq;
    uint8_t kind;
    const uint8_t *str[4]; /* vm, type, CloudEvents id, key */
    uint16_t str_len[4];
    const uint8_t *payload;
    uint32_t payload_len;
    uint32_t rec_len; /* header + body */
};

struct qb_spool {
    uv_loop_t *loop;
    char *dir;
    uint64_t max_bytes, segment_bytes;
    enum qb_spool_fsync fsync;
    uint32_t fsync_interval_ms;
    int dirfd, lockfd, fd; /* fd: the active segment */
    struct seg *head, *tail;
    uint64_t nsegs;
    uint64_t gen; /* bumped whenever a segment is deleted: readers look theirs up again */
    uint64_t next_id;
    uint64_t bytes, records;
    struct cursor *cursors;
    struct vmseq *vms;
    uint8_t *wbuf; /* the batch: records staged and not yet written, encoded */
    size_t wcap;
    size_t pend_len;    /* bytes of the batch */
    uint64_t pend_n;    /* its records: ids next_id .. next_id + pend_n - 1 */
    uint64_t pend_usec; /* append time of its first record */
    uv_timer_t *timer; /* BATCH only; freed by its close callback */
    struct spool_sync *syncing; /* BATCH: the fdatasync in libuv's thread pool, or NULL */
    bool timer_armed, unsynced, dirty;
    bool failing;     /* in a streak of failed writes */
    uint64_t refused; /* records refused by write errors in this streak */
    struct qb_spool_stats st;
};

struct spool_sync;
static struct spool_sync *sync_in_background(struct qb_spool *s, struct qb_spool *owner, int fd,
                                             const char *name);

struct qb_spool_reader {
    struct qb_spool *s;
    uint64_t pos;       /* id to return next */
    uint64_t seg_first; /* first_id of the segment being read; valid when sb.fd >= 0 */
    struct seg *seg;    /* cached; looked up again when s->gen changes */
    uint64_t gen;
    uint64_t off;
    struct segbuf sb;
    char *out;
    size_t out_cap;
};

/* ---- little-endian helpers ------------------------------------------------ */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* ---- small utilities ------------------------------------------------------ */

static uint64_t now_usec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Disk full and quota map to QB_ENOSPC (the caller may drop or wait), the rest to QB_EIO. */
static int map_write_errno(int err)
{
    return (err == ENOSPC || err == EDQUOT) ? QB_ENOSPC : QB_EIO;
}

/* Writes all of len bytes at off. Returns 0 or an errno value (EIO for a write of 0 bytes). */
static int pwrite_all(int fd, const void *data, size_t len, uint64_t off)
{
    const uint8_t *p = data;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            return EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static bool vmseq_newer(uint64_t epoch, uint64_t seq, const struct vmseq *v)
{
    /* epochs are start times: a new epoch is later even though its count restarts */
    return epoch > v->epoch || (epoch == v->epoch && seq > v->seq);
}

/* Records (epoch, seq) of vm (len bytes, not NUL-terminated) if it is the latest seen. */
static int vm_note(struct qb_spool *s, const char *vm, size_t len, uint64_t epoch, uint64_t seq)
{
    struct vmseq *v;

    len = strnlen(vm, len); /* a name read from disk may hold a NUL: the key is what C sees */
    HASH_FIND(hh, s->vms, vm, len, v);
    if (!v) {
        if (!(v = calloc(1, sizeof(*v))) || !(v->name = strndup(vm, len))) {
            free(v);
            return QB_ENOMEM;
        }
        v->epoch = epoch;
        v->seq = seq;
        HASH_ADD_KEYPTR(hh, s->vms, v->name, len, v);
        return QB_OK;
    }
    if (vmseq_newer(epoch, seq, v)) {
        v->epoch = epoch;
        v->seq = seq;
    }
    return QB_OK;
}

static int cursor_put(struct qb_spool *s, const char *name, uint64_t id)
{
    struct cursor *c;

    HASH_FIND_STR(s->cursors, name, c);
    if (!c) {
        if (!(c = calloc(1, sizeof(*c))) || !(c->name = strdup(name))) {
            free(c);
            return QB_ENOMEM;
        }
        HASH_ADD_KEYPTR(hh, s->cursors, c->name, strlen(c->name), c);
    }
    c->id = id;
    return QB_OK;
}

/* ---- buffered segment reading ---------------------------------------------- */

static void sb_init(struct segbuf *b, int fd, uint64_t limit)
{
    b->fd = fd;
    b->limit = limit;
    b->len = 0;
    b->base = 0;
}

/*
 * Makes bytes [off, off + n) available at *p. Returns 1, 0 when they lie
 * (partly) beyond the limit or the end of the file, or QB_EIO / QB_ENOMEM.
 * Reads at least READ_CHUNK bytes at a time but never past the limit, so
 * nothing still being written (or truncated away later) is ever cached.
 */
static int sb_get(struct segbuf *b, uint64_t off, size_t n, const uint8_t **p)
{
    size_t want, got = 0;

    if (off > b->limit || n > b->limit - off)
        return 0;
    if (off >= b->base && off + n <= b->base + b->len) {
        *p = b->buf + (off - b->base);
        return 1;
    }
    want = n > READ_CHUNK ? n : READ_CHUNK;
    if (want > b->limit - off)
        want = (size_t)(b->limit - off);
    if (want > b->cap) {
        uint8_t *nb = realloc(b->buf, want);

        if (!nb)
            return QB_ENOMEM;
        b->buf = nb;
        b->cap = want;
    }
    b->len = 0;
    while (got < want) {
        ssize_t r = pread(b->fd, b->buf + got, want - got, (off_t)(off + got));

        if (r < 0) {
            if (errno == EINTR)
                continue;
            return QB_EIO;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    b->base = off;
    b->len = got;
    if (got < n)
        return 0;
    *p = b->buf;
    return 1;
}

/* ---- record decoding ------------------------------------------------------- */

enum rec_status { REC_OK, REC_END, REC_CORRUPT };

/* Decodes a body whose CRC already checked out; *why says what is wrong with it. */
static bool rec_decode(const uint8_t *b, uint32_t len, struct rec_view *v, const char **why)
{
    uint32_t o = 33;

    v->id = get_u64(b);
    v->usec = get_u64(b + 8);
    v->kind = b[16];
    v->epoch = get_u64(b + 17);
    v->seq = get_u64(b + 25);
    if (v->kind != QB_MSG_EVENT && v->kind != QB_MSG_STATE) {
        *why = "bad kind";
        return false;
    }
    for (int i = 0; i < 4; i++) {
        if (len - o < 2) {
            *why = "bad field length";
            return false;
        }
        v->str_len[i] = get_u16(b + o);
        o += 2;
        if (len - o < v->str_len[i]) {
            *why = "bad field length";
            return false;
        }
        v->str[i] = b + o;
        o += v->str_len[i];
    }
    if (len - o < 4) {
        *why = "bad field length";
        return false;
    }
    v->payload_len = get_u32(b + o);
    o += 4;
    if (len - o != v->payload_len) {
        *why = "bad field length";
        return false;
    }
    v->payload = b + o;
    return true;
}

/*
 * Checks the record at off. REC_OK fills *v (pointing into b), REC_END means
 * off is exactly the limit, REC_CORRUPT sets *why; negative on I/O errors.
 */
static int rec_at(struct segbuf *b, uint64_t off, struct rec_view *v, const char **why)
{
    const uint8_t *p;
    uint32_t len;
    int rc;

    if (off == b->limit)
        return REC_END;
    if ((rc = sb_get(b, off, REC_HEADER_LEN, &p)) <= 0) {
        *why = "truncated record header";
        return rc < 0 ? rc : REC_CORRUPT;
    }
    if (memcmp(p, REC_MAGIC, 4) != 0) {
        *why = "bad magic";
        return REC_CORRUPT;
    }
    len = get_u32(p + 4);
    if (len < REC_BODY_MIN || len > REC_MAX - REC_HEADER_LEN) {
        *why = "bad length";
        return REC_CORRUPT;
    }
    uint32_t crc = get_u32(p + 8);
    if ((rc = sb_get(b, off, REC_HEADER_LEN + (size_t)len, &p)) <= 0) {
        *why = "record runs past the end of the file";
        return rc < 0 ? rc : REC_CORRUPT;
    }
    if ((uint32_t)crc32(0L, p + REC_HEADER_LEN, len) != crc) {
        *why = "CRC mismatch";
        return REC_CORRUPT;
    }
    if (!rec_decode(p + REC_HEADER_LEN, len, v, why))
        return REC_CORRUPT;
    v->rec_len = REC_HEADER_LEN + len;
    return REC_OK;
}

/*
 * Finds the first offset at or after from where a record checks out.
 * Returns 1 with *found, 0 when there is none before the limit, or negative.
 */
static int resync(struct segbuf *b, uint64_t from, uint64_t *found)
{
    uint64_t pos = from;

    while (pos + 4 <= b->limit) {
        const uint8_t *p, *q;
        size_t avail = b->limit - pos > READ_CHUNK ? READ_CHUNK : (size_t)(b->limit - pos);
        struct rec_view v;
        const char *why;
        int rc = sb_get(b, pos, avail, &p);

        if (rc < 0)
            return rc;
        if (rc == 0)
            return 0; /* the file is shorter than it was */
        if (!(q = memmem(p, avail, REC_MAGIC, 4))) {
            pos += avail - 3;
            continue;
        }
        uint64_t cand = pos + (uint64_t)(q - p);
        rc = rec_at(b, cand, &v, &why);
        if (rc < 0)
            return rc;
        if (rc == REC_OK) {
            *found = cand;
            return 1;
        }
        pos = cand + 1;
    }
    return 0;
}

/*
 * Finds where the next good record after the damaged one at off starts (*next;
 * the limit when there is none). The first time a region is met (at open or by
 * a reader, if the file changed since) it is logged and counted; the segment
 * remembers it so other readers skip it silently. Returns 1 when a good record
 * follows, 0 when the damage runs to the limit, negative on error.
 */
static int skip_corrupt(struct qb_spool *s, struct seg *g, struct segbuf *b, uint64_t off,
                        const char *why, uint64_t *next)
{
    struct skip *ns;
    int rc;

    for (size_t i = 0; i < g->nskips; i++) {
        if (g->skips[i].off == off && g->skips[i].next <= b->limit) {
            *next = g->skips[i].next;
            return *next < b->limit;
        }
    }
    if ((rc = resync(b, off + 1, next)) < 0)
        return rc;
    if (rc == 0)
        *next = b->limit;
    s->st.corrupt++;
    QB_LOG_WARN(
        NULL, "spool: %s/%s: corrupt record at offset %" PRIu64 " (%s), skipped %" PRIu64 " bytes",
        s->dir, g->name, off, why, *next - off);
    if (rc == 1 && (ns = realloc(g->skips, (g->nskips + 1) * sizeof(*ns)))) {
        g->skips = ns;
        g->skips[g->nskips].off = off;
        g->skips[g->nskips++].next = *next;
    }
    return rc;
}

/* ---- segments -------------------------------------------------------------- */

static void seg_name(char *buf, size_t len, uint64_t first_id)
{
    snprintf(buf, len, "%016" PRIx64 ".seg", first_id);
}

static bool seg_parse_name(const char *name, uint64_t *first_id)
{
    uint64_t v = 0;

    if (strlen(name) != 20 || strcmp(name + 16, ".seg") != 0)
        return false;
    for (int i = 0; i < 16; i++) {
        char c = name[i];
        int d;

        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return false;
        v = (v << 4) | (uint64_t)d;
    }
    *first_id = v;
    return v < ID_MAX;
}

static struct seg *seg_find(const struct qb_spool *s, uint64_t first_id)
{
    for (struct seg *g = s->head; g; g = g->next)
        if (g->first_id == first_id)
            return g;
    return NULL;
}

/* Accounts one good record of segment g found by a scan or written by an append. */
static void seg_add_record(struct seg *g, uint64_t id, uint64_t usec)
{
    if (g->records == 0) {
        g->min_id = id;
        g->oldest_usec = usec;
    }
    g->last_id = id;
    g->records++;
}

/*
 * Creates the segment for the next id, makes it the active one (after syncing
 * the old one, whose unsynced records would otherwise never be synced) and
 * returns QB_OK, or QB_ENOSPC / QB_EIO with nothing left behind.
 */
static int seg_start(struct qb_spool *s)
{
    struct seg *g = calloc(1, sizeof(*g));
    int fd = -1, err;

    if (!g)
        return QB_ENOMEM;
    g->first_id = s->next_id;
    seg_name(g->name, sizeof(g->name), g->first_id);
    fd = openat(s->dirfd, g->name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0) {
        err = errno;
        goto fail;
    }
    if ((err = pwrite_all(fd, SEG_HEADER, SEG_HEADER_LEN, 0)) != 0)
        goto fail;
    if (s->fsync != QB_SPOOL_FSYNC_OFF && (fdatasync(fd) < 0 || fsync(s->dirfd) < 0)) {
        err = errno;
        goto fail;
    }
    if (s->fd >= 0) {
        /*
         * fsync: batch leaves the closed segment's last records to the thread
         * pool like any interval's (2-16 ms here, several times a second
         * when the spool takes 80 MB/s: the loop's time, not the disk's).
         */
        bool later = s->unsynced && s->fsync == QB_SPOOL_FSYNC_BATCH &&
                     sync_in_background(s, NULL, s->fd, s->tail->name) != NULL;
        if (s->unsynced && !later && s->fsync != QB_SPOOL_FSYNC_OFF && fdatasync(s->fd) < 0)
            QB_LOG_WARN(NULL, "spool: cannot sync %s/%s: %s", s->dir, s->tail->name,
                        strerror(errno));
        close(s->fd);
    }
    s->unsynced = false;
    s->fd = fd;
    g->end = g->size = SEG_HEADER_LEN;
    if (s->tail)
        s->tail->next = g;
    else
        s->head = g;
    s->tail = g;
    s->nsegs++;
    s->bytes += SEG_HEADER_LEN;
    return QB_OK;

fail:
    if (fd >= 0) {
        close(fd);
        unlinkat(s->dirfd, g->name, 0);
    }
    QB_LOG_ERR(NULL, "spool: cannot create %s/%s: %s", s->dir, g->name, strerror(err));
    free(g);
    return map_write_errno(err);
}

/* Deletes the oldest segment (never the active one) from disk and the list. */
static void seg_delete_head(struct qb_spool *s)
{
    struct seg *g = s->head;

    if (unlinkat(s->dirfd, g->name, 0) < 0 && errno != ENOENT)
        QB_LOG_WARN(NULL, "spool: cannot delete %s/%s: %s", s->dir, g->name, strerror(errno));
    s->head = g->next;
    s->nsegs--;
    s->bytes -= g->size;
    s->records -= g->records;
    s->gen++;
    free(g->skips);
    free(g);
}

/* ---- state.json ------------------------------------------------------------ */

static json_t *state_to_json(const struct qb_spool *s)
{
    json_t *root = json_object(), *cursors = json_object(), *vms = json_object();
    bool ok = root && cursors && vms;

    for (struct cursor *c = s->cursors; ok && c; c = c->hh.next)
        ok = json_object_set_new(cursors, c->name, json_integer((json_int_t)c->id)) == 0;
    for (struct vmseq *v = s->vms; ok && v; v = v->hh.next)
        ok = json_object_set_new(vms, v->name,
                                 json_pack("{s:I,s:I}", "epoch", (json_int_t)v->epoch, "seq",
                                           (json_int_t)v->seq)) == 0;
    ok = ok && json_object_set_new(root, "version", json_integer(1)) == 0 &&
         json_object_set_new(root, "next_id", json_integer((json_int_t)s->next_id)) == 0;
    ok = ok && json_object_set(root, "cursors", cursors) == 0 &&
         json_object_set(root, "vms", vms) == 0;
    json_decref(cursors);
    json_decref(vms);
    if (!ok) {
        json_decref(root);
        return NULL;
    }
    return root;
}

int qb_spool_checkpoint(struct qb_spool *s)
{
    json_t *root = state_to_json(s);
    char *text = root ? json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    int fd = -1, err = 0;
    const char *what = "write";

    json_decref(root);
    if (!text) {
        QB_LOG_ERR(NULL, "spool: cannot write %s/" STATE_FILE ": out of memory", s->dir);
        return QB_EIO;
    }
    /* Created exclusively: whatever sits under the temporary name (a file left by a crash, a
     * planted symlink) is removed, never written through. */
    fd = openat(s->dirfd, STATE_TMP, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0 && errno == EEXIST && unlinkat(s->dirfd, STATE_TMP, 0) == 0)
        fd =
            openat(s->dirfd, STATE_TMP, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
    if (fd < 0)
        err = errno, what = "create the temporary file of";
    else if ((err = pwrite_all(fd, text, strlen(text), 0)) != 0)
        what = "write";
    else if (fsync(fd) < 0)
        err = errno, what = "sync";
    if (fd >= 0)
        close(fd);
    if (!err && renameat(s->dirfd, STATE_TMP, s->dirfd, STATE_FILE) < 0)
        err = errno, what = "rename";
    if (!err && fsync(s->dirfd) < 0)
        err = errno, what = "sync the directory of";
    free(text);
    if (err) {
        unlinkat(s->dirfd, STATE_TMP, 0);
        QB_LOG_ERR(NULL, "spool: cannot %s %s/" STATE_FILE ": %s", what, s->dir, strerror(err));
        return QB_EIO;
    }
    s->dirty = false;
    return QB_OK;
}

/* Loads state.json if it is there and sane; anything else is logged and ignored. */
static int state_load(struct qb_spool *s, bool have_segments)
{
    int fd = openat(s->dirfd, STATE_FILE, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    json_error_t jerr;
    json_t *root, *cursors, *vms, *val;
    const char *key;

    if (fd < 0) {
        if (errno == ENOENT && !have_segments)
            QB_LOG_INFO(NULL, "spool: %s: new spool", s->dir);
        else
            QB_LOG_WARN(NULL, "spool: %s/" STATE_FILE ": %s; recovering from the segments", s->dir,
                        strerror(errno));
        return QB_OK;
    }
    root = json_loadfd(fd, 0, &jerr);
    close(fd);
    if (!root) {
        QB_LOG_WARN(NULL, "spool: %s/" STATE_FILE ": %s (line %d); recovering from the segments",
                    s->dir, jerr.text, jerr.line);
        return QB_OK;
    }
    cursors = json_object_get(root, "cursors");
    vms = json_object_get(root, "vms");
    if (json_integer_value(json_object_get(root, "version")) != 1 ||
        !json_is_integer(json_object_get(root, "next_id")) ||
        (cursors && !json_is_object(cursors)) || (vms && !json_is_object(vms))) {
        QB_LOG_WARN(NULL,
                    "spool: %s/" STATE_FILE ": not a version 1 checkpoint; recovering from "
                    "the segments",
                    s->dir);
        json_decref(root);
        return QB_OK;
    }
    if (json_integer_value(json_object_get(root, "next_id")) > 0)
        s->next_id = (uint64_t)json_integer_value(json_object_get(root, "next_id"));
    json_object_foreach(cursors, key, val)
    {
        if (json_is_integer(val) && cursor_put(s, key, (uint64_t)json_integer_value(val)) < 0)
            goto nomem;
    }
    json_object_foreach(vms, key, val)
    {
        json_t *e = json_object_get(val, "epoch"), *q = json_object_get(val, "seq");

        if (json_is_integer(e) && json_is_integer(q) &&
            vm_note(s, key, strlen(key), (uint64_t)json_integer_value(e),
                    (uint64_t)json_integer_value(q)) < 0)
            goto nomem;
    }
    json_decref(root);
    return QB_OK;

nomem:
    json_decref(root);
    return QB_ENOMEM;
}

/* ---- opening and recovery --------------------------------------------------- */

/* Moves a segment whose header is wrong aside as <name>.corrupt (or .corrupt.N). */
static void seg_move_aside(struct qb_spool *s, const char *name, const char *why)
{
    char target[64];

    for (int i = 0; i < 1000; i++) {
        if (i == 0)
            snprintf(target, sizeof(target), "%s.corrupt", name);
        else
            snprintf(target, sizeof(target), "%s.corrupt.%d", name, i);
        struct stat st;

        if (fstatat(s->dirfd, target, &st, AT_SYMLINK_NOFOLLOW) == 0)
            continue;
        if (renameat(s->dirfd, name, s->dirfd, target) == 0) {
            QB_LOG_WARN(NULL, "spool: %s/%s: %s; moved aside as %s", s->dir, name, why, target);
            return;
        }
        break;
    }
    QB_LOG_ERR(NULL, "spool: %s/%s: %s and cannot be moved aside (%s); ignoring it", s->dir, name,
               why, strerror(errno));
}

/*
 * Scans the segment in g->name: header, then every record (see spool.h).
 * newest: a torn header may be repaired (no record can be in it yet).
 * Returns QB_OK with g filled, QB_ENOTFOUND when the file was set aside,
 * QB_EIO or QB_ENOMEM.
 */
static int seg_scan(struct qb_spool *s, struct seg *g, bool newest, struct segbuf *b, char *errbuf,
                    size_t errlen)
{
    int fd = openat(s->dirfd, g->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat stb;
    const uint8_t *p;
    uint64_t off = SEG_HEADER_LEN, prev_id = 0;
    int rc;

    /* Only a regular file is a segment: a symlink or a FIFO under a segment's name is set aside
     * (renamed, which never follows it), never read or repaired through. */
    if ((fd < 0 && errno == ELOOP) || (fd >= 0 && fstat(fd, &stb) == 0 && !S_ISREG(stb.st_mode))) {
        if (fd >= 0)
            close(fd);
        seg_move_aside(s, g->name, "not a regular file");
        return QB_ENOTFOUND;
    }
    if (fd < 0 || fstat(fd, &stb) < 0) {
        snprintf(errbuf, errlen, "%s/%s: %s", s->dir, g->name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return QB_EIO;
    }
    sb_init(b, fd, (uint64_t)stb.st_size);
    g->size = (uint64_t)stb.st_size;
    rc = sb_get(b, 0, SEG_HEADER_LEN, &p);
    if (rc < 0)
        goto ioerr;
    if (rc == 0 || memcmp(p, SEG_HEADER, SEG_HEADER_LEN) != 0) {
        /* a newest segment shorter than its header, holding a prefix of it, was torn while
         * being created: no record can be in it, so the header is simply written again */
        size_t have = (size_t)(g->size < SEG_HEADER_LEN ? g->size : SEG_HEADER_LEN);
        bool torn = newest && rc == 0 && b->len == have &&
                    (have == 0 || memcmp(b->buf, SEG_HEADER, have) == 0);

        close(fd);
        if (torn) {
            int wfd = openat(s->dirfd, g->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);

            if (wfd >= 0 && pwrite_all(wfd, SEG_HEADER, SEG_HEADER_LEN, 0) == 0) {
                close(wfd);
                QB_LOG_WARN(NULL, "spool: %s/%s: torn segment header rewritten", s->dir, g->name);
                g->end = g->size = SEG_HEADER_LEN;
                return QB_OK;
            }
            if (wfd >= 0)
                close(wfd);
        }
        seg_move_aside(s, g->name,
                       rc == 0 ? "too short for a segment header"
                               : "not a spool segment (bad header)");
        return QB_ENOTFOUND;
    }
    for (;;) {
        struct rec_view v;
        const char *why = NULL;
        uint64_t next;

        rc = rec_at(b, off, &v, &why);
        if (rc < 0)
            goto ioerr;
        if (rc == REC_END)
            break;
        if (rc == REC_OK && (v.id < g->first_id || v.id <= prev_id || v.id >= ID_MAX - 1)) {
            rc = REC_CORRUPT;
            why = "record id out of order";
        }
        if (rc == REC_OK) {
            seg_add_record(g, v.id, v.usec);
            prev_id = v.id;
            if (vm_note(s, (const char *)v.str[0], v.str_len[0], v.epoch, v.seq) < 0) {
                close(fd);
                return QB_ENOMEM;
            }
            off += v.rec_len;
            g->end = off;
            continue;
        }
        if ((rc = skip_corrupt(s, g, b, off, why, &next)) < 0)
            goto ioerr;
        if (rc == 0)
            break; /* damaged to the end: a torn tail if this is the newest segment */
        off = next;
    }
    if (g->end < SEG_HEADER_LEN)
        g->end = SEG_HEADER_LEN;
    close(fd);
    return QB_OK;

ioerr:
    snprintf(errbuf, errlen, "%s/%s: %s", s->dir, g->name,
             rc == QB_ENOMEM ? "out of memory" : strerror(errno));
    close(fd);
    return rc == QB_ENOMEM ? QB_ENOMEM : QB_EIO;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Lists the segment files by first id, ascending. Returns the count or negative. */
static int list_segments(struct qb_spool *s, uint64_t **ids, size_t *n)
{
    int fd = dup(s->dirfd);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    struct dirent *de;
    size_t cap = 0;

    *ids = NULL;
    *n = 0;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return QB_EIO;
    }
    rewinddir(d);
    while ((de = readdir(d))) {
        uint64_t id;

        if (!seg_parse_name(de->d_name, &id))
            continue;
        if (*n == cap) {
            uint64_t *ni = realloc(*ids, (cap ? cap * 2 : 16) * sizeof(**ids));

            if (!ni) {
                closedir(d);
                return QB_ENOMEM;
            }
            *ids = ni;
            cap = cap ? cap * 2 : 16;
        }
        (*ids)[(*n)++] = id;
    }
    closedir(d);
    if (*n)
        qsort(*ids, *n, sizeof(**ids), cmp_u64);
    return QB_OK;
}

/* Recovers the segments: scan, set aside, truncate the torn tail, open the active one. */
static int recover(struct qb_spool *s, char *errbuf, size_t errlen)
{
    uint64_t *ids = NULL, max_seen = 0;
    size_t n = 0;
    struct segbuf b = {.fd = -1};
    bool newest_survived = false;
    int rc = list_segments(s, &ids, &n);

    if (rc < 0) {
        snprintf(errbuf, errlen, "%s: cannot list: %s", s->dir,
                 rc == QB_ENOMEM ? "out of memory" : strerror(errno));
        return rc;
    }
    if ((rc = state_load(s, n > 0)) < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        struct seg *g = calloc(1, sizeof(*g));

        if (!g) {
            rc = QB_ENOMEM;
            goto out;
        }
        g->first_id = ids[i];
        if (ids[i] > max_seen)
            max_seen = ids[i];
        seg_name(g->name, sizeof(g->name), g->first_id);
        rc = seg_scan(s, g, i == n - 1, &b, errbuf, errlen);
        if (rc == QB_ENOTFOUND) {
            free(g);
            continue;
        }
        if (rc < 0) {
            free(g->skips);
            free(g);
            goto out;
        }
        if (g->records && g->last_id + 1 > max_seen)
            max_seen = g->last_id + 1;
        if (s->tail)
            s->tail->next = g;
        else
            s->head = g;
        s->tail = g;
        s->nsegs++;
        s->bytes += g->size;
        s->records += g->records;
        newest_survived = i == n - 1;
    }
    if (max_seen > s->next_id)
        s->next_id = max_seen;
    if (s->next_id == 0)
        s->next_id = 1; /* 0 means "not spooled" in a qb_message */

    if (s->tail && !newest_survived && s->tail->end < s->tail->size) {
        /* the newest file was set aside; keep this damaged one whole and start afresh */
        rc = seg_start(s);
    } else if (s->tail) {
        struct seg *g = s->tail;

        s->fd = openat(s->dirfd, g->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (s->fd < 0) {
            snprintf(errbuf, errlen, "%s/%s: %s", s->dir, g->name, strerror(errno));
            rc = QB_EIO;
            goto out;
        }
        if (g->end < g->size) {
            if (ftruncate(s->fd, (off_t)g->end) < 0 || fdatasync(s->fd) < 0) {
                snprintf(errbuf, errlen, "%s/%s: cannot truncate the torn tail: %s", s->dir,
                         g->name, strerror(errno));
                rc = QB_EIO;
                goto out;
            }
            QB_LOG_WARN(
                NULL, "spool: %s/%s: torn tail truncated at offset %" PRIu64 " (%" PRIu64 " bytes)",
                s->dir, g->name, g->end, g->size - g->end);
            s->bytes -= g->size - g->end;
            g->size = g->end;
        }
        rc = QB_OK;
    } else {
        rc = seg_start(s);
    }
    if (rc < 0 && errlen && !*errbuf)
        snprintf(errbuf, errlen, "%s: cannot create a segment: %s", s->dir, qb_strerror(rc));
out:
    free(b.buf);
    free(ids);
    return rc;
}

static void spool_free(struct qb_spool *s)
{
    struct cursor *c, *ctmp;
    struct vmseq *v, *vtmp;

    while (s->head) {
        struct seg *g = s->head;

        s->head = g->next;
        free(g->skips);
        free(g);
    }
    HASH_ITER(hh, s->cursors, c, ctmp)
    {
        HASH_DEL(s->cursors, c);
        free(c->name);
        free(c);
    }
    HASH_ITER(hh, s->vms, v, vtmp)
    {
        HASH_DEL(s->vms, v);
        free(v->name);
        free(v);
    }
    if (s->fd >= 0)
        close(s->fd);
    if (s->lockfd >= 0)
        close(s->lockfd); /* releases the flock */
    if (s->dirfd >= 0)
        close(s->dirfd);
    free(s->wbuf);
    free(s->dir);
    free(s);
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

/*
 * A batch fdatasync running in libuv's thread pool. It syncs a duplicate of
 * the segment's descriptor, so a rotation that closes the segment meanwhile
 * cannot pull the file out from under it (or hand its number to another
 * file). Owned by itself: the callback frees it; a spool closed meanwhile
 * only clears spool.
 */
struct spool_sync {
    uv_fs_t req;
    struct qb_spool *spool; /* NULL once the spool is closed, or for a closed segment's sync */
    int fd;                 /* the duplicate, closed by the callback */
    char path[];            /* the segment's path, for the log */
};

static void arm_batch_timer(struct qb_spool *s);

static void batch_sync_done(uv_fs_t *req)
{
    struct spool_sync *y = req->data;
    struct qb_spool *s = y->spool;
    ssize_t res = req->result;

    uv_fs_req_cleanup(req);
    close(y->fd);
    if (res < 0)
        QB_LOG_ERR(NULL, "spool: cannot sync %s: %s", y->path, uv_strerror((int)res));
    free(y);
    if (!s)
        return; /* closed meanwhile (its close synced synchronously), or a closed segment */
    s->syncing = NULL;
    if (res < 0) {
        s->unsynced = true; /* try again after the interval */
        arm_batch_timer(s);
        return;
    }
    s->st.syncs++;
}

/*
 * Starts fdatasync of a duplicate of fd (segment name) in libuv's thread pool.
 * owner: the spool that waits for it (its syncing), or NULL when nothing does.
 * Returns the request, or NULL when it could not start (the caller syncs).
 */
static struct spool_sync *sync_in_background(struct qb_spool *s, struct qb_spool *owner, int fd,
                                             const char *name)
{
    size_t len = strlen(s->dir) + 1 + strlen(name) + 1;
    struct spool_sync *y = malloc(sizeof(*y) + len);
    int dup_fd = y ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dup_fd < 0) {
        free(y);
        return NULL;
    }
    snprintf(y->path, len, "%s/%s", s->dir, name);
    y->spool = owner;
    y->fd = dup_fd;
    y->req.data = y;
    if (uv_fs_fdatasync(s->timer->loop, &y->req, dup_fd, batch_sync_done) != 0) {
        close(dup_fd);
        free(y);
        return NULL;
    }
    return y;
}

/* Synchronous fallback, when the thread pool cannot take the sync. */
static void batch_sync_now(struct qb_spool *s)
{
    if (fdatasync(s->fd) < 0)
        QB_LOG_ERR(NULL, "spool: cannot sync %s/%s: %s", s->dir, s->tail->name, strerror(errno));
    else
        s->st.syncs++;
}

/*
 * The batch interval elapsed: fdatasync what was written since the last one,
 * off the loop thread (1.5 ms median, tens of ms under other I/O, and the
 * loop carries every VM). Records are handed on after their write, not their
 * sync (fsync: batch bounds the loss on power failure to one interval), so
 * nothing waits for it. One sync at a time: while one runs, the next waits
 * for the interval again.
 */
static void batch_timer_cb(uv_timer_t *t)
{
    struct qb_spool *s = t->data;

    s->timer_armed = false;
    if (!s->unsynced)
        return;
    if (s->syncing) {
        arm_batch_timer(s);
        return;
    }
    s->unsynced = false;
    if (!(s->syncing = sync_in_background(s, s, s->fd, s->tail->name)))
        batch_sync_now(s);
}

static void arm_batch_timer(struct qb_spool *s)
{
    if (!s->timer_armed) {
        s->timer_armed = true;
        uv_timer_start(s->timer, batch_timer_cb, s->fsync_interval_ms, 0);
    }
}

int qb_spool_open(uv_loop_t *loop, const struct qb_spool_options *opt, struct qb_spool **out,
                  char *errbuf, size_t errlen)
{
    struct qb_spool *s;
    int rc;

    *out = NULL;
    if (errlen)
        errbuf[0] = '\0';
    if (!opt || !opt->dir || !*opt->dir || opt->max_bytes == 0 || opt->segment_bytes == 0 ||
        (unsigned)opt->fsync > QB_SPOOL_FSYNC_OFF ||
        (opt->fsync == QB_SPOOL_FSYNC_BATCH && (!loop || opt->fsync_interval_ms == 0))) {
        snprintf(errbuf, errlen, "spool: invalid options");
        return QB_EINVAL;
    }
    if (!(s = calloc(1, sizeof(*s))) || !(s->dir = strdup(opt->dir))) {
        free(s);
        snprintf(errbuf, errlen, "spool: out of memory");
        return QB_ENOMEM;
    }
    s->loop = loop;
    s->max_bytes = opt->max_bytes;
    s->segment_bytes = opt->segment_bytes;
    s->fsync = opt->fsync;
    s->fsync_interval_ms = opt->fsync_interval_ms;
    s->dirfd = s->lockfd = s->fd = -1;

    if (mkdir(s->dir, 0750) < 0 && errno != EEXIST) {
        snprintf(errbuf, errlen, "%s: cannot create: %s", s->dir, strerror(errno));
        rc = QB_EIO;
        goto fail;
    }
    if ((s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        snprintf(errbuf, errlen, "%s: %s", s->dir, strerror(errno));
        rc = QB_EIO;
        goto fail;
    }
    if ((rc = qb_private_dir_check_fd(s->dirfd, s->dir, errbuf, errlen)) < 0)
        goto fail;
    if ((s->lockfd = openat(s->dirfd, "lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640)) <
        0) {
        snprintf(errbuf, errlen, "%s/lock: %s", s->dir, strerror(errno));
        rc = QB_EIO;
        goto fail;
    }
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(errbuf, errlen, "%s: %s", s->dir,
                 errno == EWOULDBLOCK ? "in use by another process (locked)" : strerror(errno));
        rc = errno == EWOULDBLOCK ? QB_EBUSY : QB_EIO;
        goto fail;
    }
    if ((rc = recover(s, errbuf, errlen)) < 0)
        goto fail;
    if (s->fsync == QB_SPOOL_FSYNC_BATCH) {
        if (!(s->timer = malloc(sizeof(*s->timer)))) {
            rc = QB_ENOMEM;
            goto fail;
        }
        uv_timer_init(loop, s->timer);
        s->timer->data = s;
    }
    s->dirty = true; /* the first checkpoint records what recovery found */
    QB_LOG_INFO(NULL,
                "spool: %s: %" PRIu64 " records in %" PRIu64 " segments (%" PRIu64
                " bytes), next id %" PRIu64 "%s",
                s->dir, s->records, s->nsegs, s->bytes, s->next_id,
                s->st.corrupt ? ", corrupt records skipped" : "");
    *out = s;
    return QB_OK;

fail:
    if (rc == QB_ENOMEM && errlen && !errbuf[0])
        snprintf(errbuf, errlen, "spool: out of memory");
    spool_free(s);
    return rc;
}

/* ---- appending ------------------------------------------------------------- */

static size_t str_len(const char *p)
{
    return p ? strlen(p) : 0;
}

/* Logs the first failure of a streak; counts the rest. */
static void note_write_failure(struct qb_spool *s, int err, uint64_t records)
{
    s->st.write_errors += records;
    s->refused += records;
    if (!s->failing) {
        s->failing = true;
        QB_LOG_ERR(NULL, "spool: cannot write %s/%s: %s (%" PRIu64 " records refused since)",
                   s->dir, s->tail->name, strerror(err), s->refused);
    }
}

int qb_spool_stage(struct qb_spool *s, const struct qb_message *msg, uint64_t *id)
{
    const char *strs[4] = {msg->vm, msg->type, msg->id, msg->key};
    size_t lens[4], body = REC_BODY_MIN, rec;
    uint64_t extra = 0, usec = now_usec(), rid = s->next_id + s->pend_n;
    uint8_t *p;
    int err;

    if ((msg->kind != QB_MSG_EVENT && msg->kind != QB_MSG_STATE) || rid >= ID_MAX)
        return QB_EINVAL;
    if (msg->len && !msg->payload)
        return QB_EINVAL;
    for (int i = 0; i < 4; i++) {
        lens[i] = str_len(strs[i]);
        if (lens[i] > UINT16_MAX)
            return QB_ETOOBIG;
        body += lens[i];
    }
    if (msg->len > REC_MAX || body + msg->len > REC_MAX - REC_HEADER_LEN)
        return QB_ETOOBIG;
    body += msg->len;
    rec = REC_HEADER_LEN + body;

    /* a batch is written at one offset of one segment: a record that starts a new one waits */
    bool rotate = (s->tail->records > 0 || s->pend_n > 0) &&
                  s->tail->end + s->pend_len + rec > s->segment_bytes;
    if (s->pend_n > 0 && (rotate || s->pend_len + rec > BATCH_MAX))
        return QB_EAGAIN;
    if (rotate)
        extra = SEG_HEADER_LEN;
    if (s->bytes + s->pend_len + extra + rec > s->max_bytes)
        return QB_ENOSPC;
    if (s->pend_len + rec > s->wcap) {
        size_t cap = s->wcap ? s->wcap : 4096;
        uint8_t *nb;

        while (cap < s->pend_len + rec)
            cap *= 2;
        if (!(nb = realloc(s->wbuf, cap)))
            return QB_ENOMEM;
        s->wbuf = nb;
        s->wcap = cap;
    }
    if (rotate && (err = seg_start(s)) < 0) {
        if (err != QB_ENOMEM)
            note_write_failure(s, err == QB_ENOSPC ? ENOSPC : EIO, 1);
        return err;
    }

    uint8_t *start = s->wbuf + s->pend_len;
    p = start;
    memcpy(p, REC_MAGIC, 4);
    put_u32(p + 4, (uint32_t)body);
    p += REC_HEADER_LEN;
    put_u64(p, rid);
    put_u64(p + 8, usec);
    p[16] = (uint8_t)msg->kind;
    put_u64(p + 17, msg->epoch);
    put_u64(p + 25, msg->sequence);
    p += 33;
    for (int i = 0; i < 4; i++) {
        put_u16(p, (uint16_t)lens[i]);
        if (lens[i])
            memcpy(p + 2, strs[i], lens[i]);
        p += 2 + lens[i];
    }
    put_u32(p, (uint32_t)msg->len);
    if (msg->len)
        memcpy(p + 4, msg->payload, msg->len);
    put_u32(start + 8, (uint32_t)crc32(0L, start + REC_HEADER_LEN, (uInt)body));

    if (s->pend_n == 0)
        s->pend_usec = usec;
    s->pend_len += rec;
    s->pend_n++;
    /*
     * Noted before the write: should the batch fail, the sequence is taken
     * again by the same record later, and a checkpoint that saw it only
     * makes a restarted bridge number past it, never reuse it.
     */
    if (vm_note(s, msg->vm ? msg->vm : "", lens[0], msg->epoch, msg->sequence) < 0)
        QB_LOG_WARN(msg->vm, "spool: out of memory tracking the sequence");
    if (id)
        *id = rid;
    return QB_OK;
}

size_t qb_spool_staged(const struct qb_spool *s)
{
    return s->pend_n;
}

int qb_spool_flush(struct qb_spool *s)
{
    struct seg *g = s->tail;
    uint64_t n = s->pend_n;
    int err;

    if (n == 0)
        return QB_OK;
    err = pwrite_all(s->fd, s->wbuf, s->pend_len, g->end);
    s->st.writes++;
    if (!err && s->fsync == QB_SPOOL_FSYNC_ALWAYS && fdatasync(s->fd) < 0)
        err = errno;
    if (err) {
        /* leave no partial record behind: the batch's ids are given again by the next stage */
        if (ftruncate(s->fd, (off_t)g->end) < 0)
            QB_LOG_ERR(NULL, "spool: cannot truncate %s/%s after a failed write: %s", s->dir,
                       g->name, strerror(errno));
        s->pend_len = 0;
        s->pend_n = 0;
        note_write_failure(s, err, n);
        return map_write_errno(err);
    }
    if (s->failing) {
        QB_LOG_INFO(NULL, "spool: %s/%s is writable again (%" PRIu64 " records refused)", s->dir,
                    g->name, s->refused);
        s->failing = false;
        s->refused = 0;
    }
    if (g->records == 0) {
        g->min_id = s->next_id;
        g->oldest_usec = s->pend_usec;
    }
    g->last_id = s->next_id + n - 1;
    g->records += n;
    g->end += s->pend_len;
    g->size = g->end;
    s->bytes += s->pend_len;
    s->records += n;
    s->st.appended += n;
    s->dirty = true;
    s->next_id += n;
    s->pend_len = 0;
    s->pend_n = 0;
    if (s->fsync == QB_SPOOL_FSYNC_BATCH) {
        s->unsynced = true;
        arm_batch_timer(s);
    }
    return QB_OK;
}

int qb_spool_append(struct qb_spool *s, const struct qb_message *msg, uint64_t *id)
{
    int rc = qb_spool_stage(s, msg, id);

    if (rc == QB_EAGAIN && (rc = qb_spool_flush(s)) == QB_OK)
        rc = qb_spool_stage(s, msg, id);
    if (rc != QB_OK)
        return rc;
    return qb_spool_flush(s);
}

uint64_t qb_spool_next_id(const struct qb_spool *s)
{
    return s->next_id;
}

uint64_t qb_spool_first_id(const struct qb_spool *s)
{
    for (const struct seg *g = s->head; g; g = g->next)
        if (g->records)
            return g->min_id;
    return s->next_id;
}

/* ---- readers --------------------------------------------------------------- */

int qb_spool_reader_open(struct qb_spool *s, uint64_t from_id, struct qb_spool_reader **out)
{
    struct qb_spool_reader *r = calloc(1, sizeof(*r));
    uint64_t first = qb_spool_first_id(s);

    *out = NULL;
    if (!r)
        return QB_ENOMEM;
    r->s = s;
    r->pos = from_id < first ? first : from_id;
    r->sb.fd = -1;
    *out = r;
    return QB_OK;
}

uint64_t qb_spool_reader_position(const struct qb_spool_reader *r)
{
    return r->pos;
}

void qb_spool_reader_close(struct qb_spool_reader *r)
{
    if (!r)
        return;
    if (r->sb.fd >= 0)
        close(r->sb.fd);
    free(r->sb.buf);
    free(r->out);
    free(r);
}

/* Opens segment g for the reader, at its first record. */
static int reader_enter(struct qb_spool_reader *r, struct seg *g)
{
    struct qb_spool *s = r->s;
    int fd = openat(s->dirfd, g->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0) {
        if (errno == ENOENT)
            return QB_ENOTFOUND;
        QB_LOG_ERR(NULL, "spool: cannot read %s/%s: %s", s->dir, g->name, strerror(errno));
        return QB_EIO;
    }
    if (r->sb.fd >= 0)
        close(r->sb.fd);
    sb_init(&r->sb, fd, g->end);
    r->seg = g;
    r->seg_first = g->first_id;
    r->gen = s->gen;
    r->off = SEG_HEADER_LEN;
    return QB_OK;
}

static void reader_leave(struct qb_spool_reader *r)
{
    if (r->sb.fd >= 0)
        close(r->sb.fd);
    r->sb.fd = -1;
    r->seg = NULL;
}

/* The segment that would hold id pos: the last one starting at or below it, else the first. */
static struct seg *seg_for(const struct qb_spool *s, uint64_t pos)
{
    struct seg *best = s->head;

    for (struct seg *g = s->head; g && g->first_id <= pos; g = g->next)
        best = g;
    return best;
}

static int reader_fill(struct qb_spool_reader *r, const struct rec_view *v,
                       struct qb_spool_record *rec)
{
    size_t need = (size_t)v->payload_len + 5;
    const char **fields[4] = {&rec->msg.vm, &rec->msg.type, &rec->msg.id, &rec->msg.key};
    char *p;

    for (int i = 0; i < 4; i++)
        need += v->str_len[i];
    if (need > r->out_cap) {
        char *nb = realloc(r->out, need);

        if (!nb)
            return QB_ENOMEM;
        r->out = nb;
        r->out_cap = need;
    }
    memset(rec, 0, sizeof(*rec));
    p = r->out;
    for (int i = 0; i < 4; i++) {
        memcpy(p, v->str[i], v->str_len[i]);
        p[v->str_len[i]] = '\0';
        *fields[i] = p;
        p += v->str_len[i] + 1;
    }
    memcpy(p, v->payload, v->payload_len);
    p[v->payload_len] = '\0';
    rec->id = v->id;
    rec->append_usec = v->usec;
    rec->msg.kind = (enum qb_msg_kind)v->kind;
    rec->msg.epoch = v->epoch;
    rec->msg.sequence = v->seq;
    rec->msg.spool_id = v->id;
    rec->msg.payload = p;
    rec->msg.len = v->payload_len;
    return QB_OK;
}

int qb_spool_reader_next(struct qb_spool_reader *r, struct qb_spool_record *rec)
{
    struct qb_spool *s = r->s;
    int rc;

    for (;;) {
        struct rec_view v;
        const char *why = NULL;
        struct seg *g;

        if (r->sb.fd >= 0 && r->gen != s->gen) {
            /* segments were deleted: is ours still there? */
            r->seg = seg_find(s, r->seg_first);
            r->gen = s->gen;
            if (!r->seg) {
                struct seg *n = s->head;

                while (n && n->first_id < r->seg_first)
                    n = n->next;
                reader_leave(r);
                if (!n)
                    return 0;
                if (n->first_id > r->pos)
                    r->pos = n->first_id; /* what it held is gone */
                if ((rc = reader_enter(r, n)) < 0)
                    return rc == QB_ENOTFOUND ? QB_EIO : rc;
            }
        }
        if (r->sb.fd < 0) {
            if (!(g = seg_for(s, r->pos)))
                return 0;
            rc = reader_enter(r, g);
            if (rc == QB_ENOTFOUND)
                return QB_EIO; /* the spool's own list is wrong: the file vanished */
            if (rc < 0)
                return rc;
        }
        g = r->seg;
        r->sb.limit = g->end; /* appends since the last call */
        rc = rec_at(&r->sb, r->off, &v, &why);
        if (rc < 0) {
            QB_LOG_ERR(NULL, "spool: cannot read %s/%s: %s", s->dir, g->name,
                       rc == QB_ENOMEM ? "out of memory" : strerror(errno));
            return rc;
        }
        if (rc == REC_END) {
            if (!g->next)
                return 0; /* caught up */
            if (g->next->first_id > r->pos)
                r->pos = g->next->first_id;
            if ((rc = reader_enter(r, g->next)) < 0)
                return rc == QB_ENOTFOUND ? QB_EIO : rc;
            continue;
        }
        if (rc == REC_CORRUPT) {
            uint64_t next;

            if ((rc = skip_corrupt(s, g, &r->sb, r->off, why, &next)) < 0)
                return rc;
            r->off = next;
            continue;
        }
        r->off += v.rec_len;
        if (v.id < r->pos)
            continue;
        if ((rc = reader_fill(r, &v, rec)) < 0)
            return rc;
        r->pos = v.id + 1;
        return 1;
    }
}

/* ---- release, drop --------------------------------------------------------- */

/* True when every record segment g can hold is below below_id. */
static bool seg_released(const struct seg *g, uint64_t below_id)
{
    if (g->records)
        return g->last_id < below_id;
    return g->next && g->next->first_id <= below_id;
}

int qb_spool_release(struct qb_spool *s, uint64_t below_id)
{
    /* the active segment goes too when all of it is confirmed: appends move to a fresh one */
    bool rotate = s->tail->records > 0 && s->tail->last_id < below_id;
    bool any = rotate || (s->head != s->tail && seg_released(s->head, below_id));
    int rc;

    if (!any && !s->dirty)
        return QB_OK;
    if (qb_spool_checkpoint(s) < 0)
        return QB_EIO;
    if (rotate && (rc = seg_start(s)) < 0) {
        QB_LOG_ERR(NULL, "spool: cannot release %s/%s: %s", s->dir, s->tail->name, qb_strerror(rc));
        return QB_EIO;
    }
    while (s->head != s->tail && seg_released(s->head, below_id)) {
        s->st.released += s->head->records;
        QB_LOG_DEBUG(NULL, "spool: released %s/%s (%" PRIu64 " records)", s->dir, s->head->name,
                     s->head->records);
        seg_delete_head(s);
    }
    return QB_OK;
}

struct drop_range {
    char *vm;
    uint64_t first, last, count;
    UT_hash_handle hh;
};

/* Collects the per-VM ranges of segment g; unreadable parts are simply not reported. */
static void drop_collect(struct qb_spool *s, const struct seg *g, struct drop_range **ranges)
{
    int fd = openat(s->dirfd, g->name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct segbuf b = {.fd = -1};
    uint64_t off = SEG_HEADER_LEN;

    if (fd < 0)
        return;
    sb_init(&b, fd, g->end);
    for (;;) {
        struct rec_view v;
        const char *why;
        struct drop_range *d;
        int rc = rec_at(&b, off, &v, &why);

        if (rc == REC_CORRUPT) {
            if (resync(&b, off + 1, &off) == 1)
                continue;
            break;
        }
        if (rc != REC_OK)
            break;
        off += v.rec_len;
        size_t vm_len = strnlen((const char *)v.str[0], v.str_len[0]);

        HASH_FIND(hh, *ranges, v.str[0], vm_len, d);
        if (!d) {
            if (!(d = calloc(1, sizeof(*d))) ||
                !(d->vm = strndup((const char *)v.str[0], vm_len))) {
                free(d);
                continue;
            }
            d->first = d->last = v.seq;
            HASH_ADD_KEYPTR(hh, *ranges, d->vm, vm_len, d);
        }
        if (v.seq < d->first)
            d->first = v.seq;
        if (v.seq > d->last)
            d->last = v.seq;
        d->count++;
    }
    free(b.buf);
    close(fd);
}

int64_t qb_spool_drop_oldest(struct qb_spool *s, qb_spool_drop_cb cb, void *arg)
{
    struct drop_range *ranges = NULL, *d, *tmp;
    struct seg *g;
    uint64_t freed;
    int rc;

    if (!s->head || (s->head == s->tail && s->head->records == 0))
        return QB_ENOTFOUND;
    if (s->head == s->tail && (rc = seg_start(s)) < 0)
        return rc;
    g = s->head;
    drop_collect(s, g, &ranges);
    HASH_ITER(hh, ranges, d, tmp)
    {
        QB_LOG_WARN(d->vm[0] ? d->vm : NULL,
                    "spool full: dropped %" PRIu64 " records of %s (sequence %" PRIu64 "..%" PRIu64
                    ")",
                    d->count, d->vm, d->first, d->last);
        if (cb)
            cb(arg, d->vm, d->first, d->last, d->count);
        HASH_DEL(ranges, d);
        free(d->vm);
        free(d);
    }
    freed = g->size;
    s->st.dropped += g->records;
    seg_delete_head(s);
    return (int64_t)freed;
}

/* ---- cursors, sequences, sync, stats, close --------------------------------- */

int qb_spool_set_cursor(struct qb_spool *s, const char *name, uint64_t id)
{
    struct cursor *c;

    HASH_FIND_STR(s->cursors, name, c);
    if (c && c->id == id)
        return QB_OK;
    s->dirty = true;
    return cursor_put(s, name, id);
}

uint64_t qb_spool_get_cursor(const struct qb_spool *s, const char *name)
{
    struct cursor *c;

    HASH_FIND_STR(s->cursors, name, c);
    return c ? c->id : qb_spool_first_id(s);
}

bool qb_spool_vm_sequence(const struct qb_spool *s, const char *vm, uint64_t *epoch, uint64_t *seq)
{
    struct vmseq *v;

    HASH_FIND_STR(s->vms, vm, v);
    if (!v)
        return false;
    if (epoch)
        *epoch = v->epoch;
    if (seq)
        *seq = v->seq;
    return true;
}

int qb_spool_sync(struct qb_spool *s)
{
    if (s->timer_armed) {
        uv_timer_stop(s->timer);
        s->timer_armed = false;
    }
    if (fdatasync(s->fd) < 0) {
        QB_LOG_ERR(NULL, "spool: cannot sync %s/%s: %s", s->dir, s->tail->name, strerror(errno));
        return QB_EIO;
    }
    s->unsynced = false;
    return QB_OK;
}

void qb_spool_get_stats(const struct qb_spool *s, struct qb_spool_stats *out)
{
    *out = s->st;
    out->bytes = s->bytes;
    out->records = s->records;
    out->segments = s->nsegs;
    out->oldest_usec = 0;
    for (const struct seg *g = s->head; g; g = g->next) {
        if (g->records) {
            out->oldest_usec = g->oldest_usec;
            break;
        }
    }
}

void qb_spool_close(struct qb_spool *s)
{
    if (!s)
        return;
    qb_spool_flush(s); /* what was staged is kept for the next start (a failure is logged) */
    qb_spool_sync(s);
    qb_spool_checkpoint(s);
    if (s->syncing)
        s->syncing->spool = NULL; /* it finishes on its own; the sync above covered it */
    if (s->timer) {
        /* the handle outlives s until the loop runs its close callback */
        uv_timer_stop(s->timer);
        s->timer->data = NULL;
        uv_close((uv_handle_t *)s->timer, timer_closed);
    }
    spool_free(s);
}
