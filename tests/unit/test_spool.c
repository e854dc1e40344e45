/*
 * test_spool.c - the durable spool (bridge/spool.c) on real files.
 *
 * Every test runs in its own mkdtemp directory (removed afterwards) and
 * damages the files the way crashes and disks do: a record cut short, bytes
 * flipped in the middle, garbage after the end, a foreign file, a file size
 * limit that makes write() fail half-way. Each checks what survives, what the
 * log says and that appending works afterwards. The batch fsync test runs a
 * real libuv loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "log.h"
#include "spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* On-disk size of a record written by append(): header, fixed fields, vm, type, id, key, payload.
 */
#define REC_SIZE(vm_len, payload_len) (12 + 45 + (vm_len) + 9 + 5 + 4 + (payload_len))

struct fixture {
    char dir[64];
    uv_loop_t loop;
};

/* ---- helpers --------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    strcpy(f->dir, "/tmp/qb-spool-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    strcat(f->dir, "/spool"); /* open creates it */
    assert_int_equal(uv_loop_init(&f->loop), 0);
    *state = f;
    return 0;
}

static void close_leftover(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char *slash = strrchr(f->dir, '/');

    /* after a failed test a spool may still be open: stop its timer so the loop ends */
    uv_walk(&f->loop, close_leftover, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT); /* close callbacks: frees the batch timer */
    assert_int_equal(uv_loop_close(&f->loop), 0);
    *slash = '\0';
    nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static struct qb_spool_options opts(const struct fixture *f, uint64_t max, uint64_t seg)
{
    struct qb_spool_options o = {
        .dir = f->dir, .max_bytes = max, .segment_bytes = seg, .fsync = QB_SPOOL_FSYNC_OFF};
    return o;
}

static struct qb_spool *open_ok(struct fixture *f, const struct qb_spool_options *o)
{
    struct qb_spool *s = NULL;
    char err[256];
    int rc = qb_spool_open(&f->loop, o, &s, err, sizeof(err));

    if (rc != QB_OK)
        fail_msg("qb_spool_open: %s: %s", qb_strerror(rc), err);
    return s;
}

static struct qb_spool *open_default(struct fixture *f)
{
    struct qb_spool_options o = opts(f, 1 << 20, 1 << 16);

    return open_ok(f, &o);
}

static uint64_t append(struct qb_spool *s, const char *vm, uint64_t epoch, uint64_t seq,
                       const char *payload)
{
    char id[64];
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = vm,
                           .type = "qemu.test",
                           .id = id,
                           .key = "br/x",
                           .epoch = epoch,
                           .sequence = seq,
                           .payload = payload,
                           .len = strlen(payload)};
    uint64_t rid = 0;

    /* fixed width (epoch < 16, seq < 1000) so record sizes are known: see REC_SIZE */
    snprintf(id, sizeof(id), "%" PRIx64 "-%03" PRIu64, epoch, seq);
    assert_int_equal(qb_spool_append(s, &m, &rid), QB_OK);
    return rid;
}

/* Reads every record from from_id on; returns how many, ids in ids[] (up to max). */
static size_t read_all(struct qb_spool *s, uint64_t from_id, uint64_t *ids, size_t max)
{
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    size_t n = 0;
    int rc;

    assert_int_equal(qb_spool_reader_open(s, from_id, &r), QB_OK);
    while ((rc = qb_spool_reader_next(r, &rec)) == 1) {
        if (n < max)
            ids[n] = rec.id;
        n++;
    }
    assert_int_equal(rc, 0);
    qb_spool_reader_close(r);
    return n;
}

static void path_of(const struct fixture *f, const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", f->dir, name);
}

static void seg_path(const struct fixture *f, uint64_t first_id, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%016" PRIx64 ".seg", f->dir, first_id);
}

static off_t file_size(const char *path)
{
    struct stat st;

    if (stat(path, &st) < 0)
        return -1;
    return st.st_size;
}

static int count_files(const struct fixture *f, const char *suffix)
{
    DIR *d = opendir(f->dir);
    struct dirent *de;
    int n = 0;

    assert_non_null(d);
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name), sl = strlen(suffix);

        if (l > sl && strcmp(de->d_name + l - sl, suffix) == 0)
            n++;
    }
    closedir(d);
    return n;
}

static uint64_t stat_of(struct qb_spool *s, size_t field_offset)
{
    struct qb_spool_stats st;

    qb_spool_get_stats(s, &st);
    return *(uint64_t *)((char *)&st + field_offset);
}
#define STAT(s, field) stat_of((s), offsetof(struct qb_spool_stats, field))

/* stderr capture, to check what the spool logs */
static int saved_stderr = -1;
static char capture_path[128];

static void capture_start(const struct fixture *f)
{
    int fd;

    snprintf(capture_path, sizeof(capture_path), "%s.log", f->dir);
    fd = open(capture_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    saved_stderr = dup(2);
    dup2(fd, 2);
    close(fd);
}

/* Returns the captured text (caller frees). */
static char *capture_stop(void)
{
    FILE *fp;
    char *text;
    long len;

    dup2(saved_stderr, 2);
    close(saved_stderr);
    fp = fopen(capture_path, "r");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    text = calloc(1, (size_t)len + 1);
    assert_int_equal(fread(text, 1, (size_t)len, fp), (size_t)len);
    fclose(fp);
    unlink(capture_path);
    fputs(text, stderr); /* still visible in the test output */
    return text;
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    static const char payload[] = "{\"a\":1}\0tail"; /* a NUL inside: len counts, not strlen */
    struct qb_message m = {.kind = QB_MSG_STATE,
                           .vm = "vm-ü1",
                           .type = "qemu.vm.state",
                           .id = "18f2a-42",
                           .key = "bridge1/vm-ü1",
                           .epoch = UINT64_C(0x18f2a0000001),
                           .sequence = UINT64_C(0xfffffffffff0),
                           .payload = payload,
                           .len = sizeof(payload) - 1,
                           .spool_id = 999};
    struct qb_message empty = {.kind = QB_MSG_EVENT, .vm = "v", .type = "t", .id = "i"};
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    uint64_t id1, id2, t0 = (uint64_t)time(NULL) * 1000000u;

    assert_int_equal(qb_spool_next_id(s), 1);
    assert_int_equal(qb_spool_first_id(s), 1);
    assert_int_equal(qb_spool_append(s, &m, &id1), QB_OK);
    assert_int_equal(qb_spool_append(s, &empty, &id2), QB_OK); /* NULL key, no payload */
    assert_int_equal(id1, 1);
    assert_int_equal(id2, 2);

    assert_int_equal(qb_spool_reader_open(s, 0, &r), QB_OK);
    assert_int_equal(qb_spool_reader_position(r), 1);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 1);
    assert_int_equal(rec.msg.spool_id, 1);
    assert_true(rec.append_usec >= t0 && rec.append_usec < t0 + 60000000u);
    assert_int_equal(rec.msg.kind, QB_MSG_STATE);
    assert_string_equal(rec.msg.vm, m.vm);
    assert_string_equal(rec.msg.type, m.type);
    assert_string_equal(rec.msg.id, m.id);
    assert_string_equal(rec.msg.key, m.key);
    assert_true(rec.msg.epoch == m.epoch);
    assert_true(rec.msg.sequence == m.sequence);
    assert_int_equal(rec.msg.len, m.len);
    assert_memory_equal(rec.msg.payload, payload, m.len);
    assert_int_equal(rec.msg.payload[rec.msg.len], '\0');
    assert_int_equal(qb_spool_reader_position(r), 2);

    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 2);
    assert_int_equal(rec.msg.kind, QB_MSG_EVENT);
    assert_string_equal(rec.msg.key, "");
    assert_int_equal(rec.msg.len, 0);
    assert_non_null(rec.msg.payload);
    assert_int_equal(qb_spool_reader_next(r, &rec), 0);
    qb_spool_reader_close(r);

    /* a reader opened in the middle starts there */
    assert_int_equal(qb_spool_reader_open(s, 2, &r), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 2);
    qb_spool_reader_close(r);

    /* refusals write nothing */
    m.kind = QB_MSG_REPLY;
    assert_int_equal(qb_spool_append(s, &m, NULL), QB_EINVAL);
    {
        char *big = malloc(70000);

        memset(big, 'x', 69999);
        big[69999] = '\0';
        empty.type = big; /* over the u16 field length */
        assert_int_equal(qb_spool_append(s, &empty, NULL), QB_ETOOBIG);
        free(big);
    }
    assert_int_equal(qb_spool_next_id(s), 3);
    assert_int_equal(STAT(s, records), 2);
    assert_int_equal(STAT(s, appended), 2);
    qb_spool_close(s);
}

static void test_reopen_recovery(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    uint64_t ids[16], epoch, seq;
    char path[256];

    append(s, "a", 100, 1, "x");
    append(s, "b", 200, 7, "y");
    append(s, "a", 100, 2, "z");
    append(s, "b", 300, 1, "w"); /* new epoch of b: later although the count restarted */
    assert_int_equal(qb_spool_set_cursor(s, "kafka", 3), QB_OK);
    assert_int_equal(qb_spool_set_cursor(s, "mqtt", 2), QB_OK);
    qb_spool_close(s);

    s = open_default(f);
    assert_int_equal(qb_spool_next_id(s), 5);
    assert_int_equal(qb_spool_first_id(s), 1);
    assert_int_equal(read_all(s, 0, ids, 16), 4);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[3], 4);
    assert_int_equal(qb_spool_get_cursor(s, "kafka"), 3);
    assert_int_equal(qb_spool_get_cursor(s, "mqtt"), 2);
    assert_int_equal(qb_spool_get_cursor(s, "never"), 1);
    assert_true(qb_spool_vm_sequence(s, "a", &epoch, &seq));
    assert_int_equal(epoch, 100);
    assert_int_equal(seq, 2);
    assert_true(qb_spool_vm_sequence(s, "b", &epoch, &seq));
    assert_int_equal(epoch, 300);
    assert_int_equal(seq, 1);
    assert_false(qb_spool_vm_sequence(s, "c", &epoch, &seq));
    assert_int_equal(STAT(s, records), 4);
    assert_int_equal(STAT(s, corrupt), 0);
    append(s, "a", 100, 3, "v");
    qb_spool_close(s);

    /* state.json lost: everything but the cursors comes back from the segments */
    path_of(f, "state.json", path, sizeof(path));
    assert_int_equal(unlink(path), 0);
    s = open_default(f);
    assert_int_equal(qb_spool_next_id(s), 6);
    assert_true(qb_spool_vm_sequence(s, "a", &epoch, &seq));
    assert_int_equal(seq, 3);
    assert_true(qb_spool_vm_sequence(s, "b", &epoch, &seq));
    assert_int_equal(epoch, 300);
    assert_int_equal(qb_spool_get_cursor(s, "kafka"), 1);
    qb_spool_close(s);

    /* state.json garbage: same */
    {
        FILE *fp = fopen(path, "w");

        fputs("{\"version\":1,\"next_", fp);
        fclose(fp);
    }
    s = open_default(f);
    assert_int_equal(qb_spool_next_id(s), 6);
    assert_int_equal(read_all(s, 0, ids, 16), 5);
    qb_spool_close(s);

    /* a checkpoint's next_id ahead of the segments wins: ids are never reused */
    {
        json_t *st = json_load_file(path, 0, NULL);

        assert_non_null(st);
        assert_int_equal(json_integer_value(json_object_get(st, "version")), 1);
        assert_int_equal(json_integer_value(json_object_get(st, "next_id")), 6);
        json_object_set_new(st, "next_id", json_integer(50));
        assert_int_equal(json_dump_file(st, path, 0), 0);
        json_decref(st);
    }
    s = open_default(f);
    assert_int_equal(qb_spool_next_id(s), 50);
    assert_int_equal(append(s, "a", 100, 4, "u"), 50);
    qb_spool_close(s);
}

static void test_torn_tail(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    uint64_t ids[8];
    char path[256];
    off_t full, two;

    append(s, "a", 1, 1, "first");
    append(s, "a", 1, 2, "second");
    seg_path(f, 1, path, sizeof(path));
    two = file_size(path);
    append(s, "a", 1, 3, "third record, cut short by a crash");
    full = file_size(path);
    qb_spool_close(s);

    assert_int_equal(truncate(path, two + (full - two) / 2), 0);
    capture_start(f);
    s = open_default(f);
    char *log = capture_stop();
    assert_int_equal(count_substr(log, "corrupt record at offset"), 1);
    assert_int_equal(count_substr(log, "torn tail truncated"), 1);
    free(log);
    assert_int_equal(file_size(path), two); /* truncated before appends resume */
    assert_int_equal(read_all(s, 0, ids, 8), 2);
    assert_int_equal(ids[1], 2);
    assert_int_equal(qb_spool_next_id(s), 4); /* the checkpoint said 4: not reused */
    assert_int_equal(append(s, "a", 1, 4, "after"), 4);

    assert_int_equal(qb_spool_reader_open(s, 3, &r), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 4);
    assert_memory_equal(rec.msg.payload, "after", 5);
    qb_spool_reader_close(r);
    assert_int_equal(STAT(s, corrupt), 1);
    qb_spool_close(s);

    /* and it stays clean */
    s = open_default(f);
    assert_int_equal(STAT(s, corrupt), 0);
    assert_int_equal(read_all(s, 0, ids, 8), 3);
    qb_spool_close(s);
}

static void test_flipped_middle(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    uint64_t ids[8];
    char path[256];
    off_t one, size;
    int fd;

    append(s, "a", 1, 1, "one");
    seg_path(f, 1, path, sizeof(path));
    one = file_size(path);
    append(s, "a", 1, 2, "two-two-two");
    append(s, "a", 1, 3, "three");
    append(s, "a", 1, 4, "four");
    size = file_size(path);
    qb_spool_close(s);

    /* flip bits of two bytes inside record 2's body */
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    {
        unsigned char b[2];

        assert_int_equal(pread(fd, b, 2, one + 30), 2);
        b[0] ^= 0x5a;
        b[1] ^= 0x01;
        assert_int_equal(pwrite(fd, b, 2, one + 30), 2);
    }
    close(fd);

    capture_start(f);
    s = open_default(f);
    char *log = capture_stop();
    assert_non_null(strstr(log, "0000000000000001.seg: corrupt record at offset"));
    assert_non_null(strstr(log, "(CRC mismatch), skipped"));
    free(log);
    assert_int_equal(STAT(s, corrupt), 1);
    assert_int_equal(STAT(s, records), 3);
    assert_int_equal(file_size(path), size); /* nothing truncated: the rest is good */
    assert_int_equal(read_all(s, 0, ids, 8), 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 4);
    /* a second reader skips the known damage without counting it again */
    assert_int_equal(read_all(s, 2, ids, 8), 2);
    assert_int_equal(ids[0], 3);
    assert_int_equal(STAT(s, corrupt), 1);
    assert_int_equal(append(s, "a", 1, 5, "five"), 5);
    assert_int_equal(read_all(s, 0, ids, 8), 4);
    qb_spool_close(s);
}

static void test_garbage_after_end(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    uint64_t ids[8];
    char path[256];
    off_t size;
    FILE *fp;

    append(s, "a", 1, 1, "one");
    append(s, "a", 1, 2, "two");
    qb_spool_close(s);
    seg_path(f, 1, path, sizeof(path));
    size = file_size(path);

    /* includes a magic with a plausible length, which must not fool the resync */
    static const char junk[] =
        "garbage QBR1\x30\x00\x00\x00 more garbage after it..................";
    fp = fopen(path, "a");
    assert_int_equal(fwrite(junk, 1, sizeof(junk) - 1, fp), sizeof(junk) - 1);
    fclose(fp);

    s = open_default(f);
    assert_int_equal(file_size(path), size);
    assert_int_equal(STAT(s, corrupt), 1);
    assert_int_equal(read_all(s, 0, ids, 8), 2);
    assert_int_equal(append(s, "a", 1, 3, "three"), 3);
    assert_int_equal(read_all(s, 0, ids, 8), 3);
    assert_int_equal(ids[2], 3);
    qb_spool_close(s);
}

static void test_bad_header_moved_aside(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 100);
    struct qb_spool *s = open_ok(f, &o);
    uint64_t ids[8];
    char path[256], aside[300];
    int fd;

    for (int i = 1; i <= 3; i++)
        append(s, "a", 1, (uint64_t)i, "a payload long enough for one record per segment");
    qb_spool_close(s);
    assert_int_equal(count_files(f, ".seg"), 3);

    seg_path(f, 2, path, sizeof(path));
    fd = open(path, O_RDWR);
    assert_int_equal(pwrite(fd, "NOTSPOOL", 8, 0), 8);
    close(fd);

    s = open_ok(f, &o);
    snprintf(aside, sizeof(aside), "%s.corrupt", path);
    assert_true(file_size(aside) > 8); /* kept, not deleted */
    assert_int_equal(file_size(path), -1);
    assert_int_equal(read_all(s, 0, ids, 8), 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(qb_spool_next_id(s), 4);
    qb_spool_close(s);
}

static void test_rollover(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 400);
    struct qb_spool *s = open_ok(f, &o);
    char payload[101], path[256];
    uint64_t ids[32];

    memset(payload, 'p', 100);
    payload[100] = '\0';
    for (int i = 1; i <= 10; i++)
        append(s, "a", 1, (uint64_t)i, payload);
    /* two 176-byte records fit a 400-byte segment, a third does not */
    assert_int_equal(STAT(s, segments), 5);
    assert_int_equal(count_files(f, ".seg"), 5);
    for (uint64_t first = 1; first <= 9; first += 2) {
        seg_path(f, first, path, sizeof(path));
        assert_int_equal(file_size(path), 8 + 2 * REC_SIZE(1, 100));
    }
    assert_int_equal(STAT(s, bytes), 5 * (8 + 2 * REC_SIZE(1, 100)));
    assert_int_equal(read_all(s, 0, ids, 32), 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ids[i], i + 1);
    assert_int_equal(read_all(s, 6, ids, 32), 5);
    assert_int_equal(ids[0], 6);
    qb_spool_close(s);

    s = open_ok(f, &o);
    assert_int_equal(read_all(s, 0, ids, 32), 10);
    assert_int_equal(append(s, "a", 1, 11, payload), 11);
    assert_int_equal(count_files(f, ".seg"), 6);
    qb_spool_close(s);
}

static int count_open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/*
 * fsync: batch, rotating: each closed segment's last records are synced in the
 * thread pool (nothing waits for it); the records all stay, no descriptor is
 * left open once the loop ran the syncs' callbacks, whether they finish before
 * or after the spool is closed.
 */
static void test_batch_rollover_syncs_later(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 400);
    char payload[101];
    uint64_t ids[32];

    o.fsync = QB_SPOOL_FSYNC_BATCH;
    o.fsync_interval_ms = 1000;
    memset(payload, 'p', 100);
    payload[100] = '\0';
    int fds0 = count_open_fds();
    struct qb_spool *s = open_ok(f, &o);
    for (int i = 1; i <= 10; i++)
        append(s, "a", 1, (uint64_t)i, payload);
    assert_int_equal(STAT(s, segments), 5);
    qb_spool_close(s); /* four closed segments' syncs may still run */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(count_open_fds(), fds0);

    s = open_ok(f, &o);
    assert_int_equal(read_all(s, 0, ids, 32), 10);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ids[i], i + 1);
    for (int i = 11; i <= 14; i++)
        append(s, "a", 1, (uint64_t)i, payload);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* some syncs may finish before the close, some after */
    qb_spool_close(s);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(count_open_fds(), fds0);
}

static void test_release(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 400);
    struct qb_spool *s = open_ok(f, &o);
    char payload[101], path[256];
    uint64_t ids[32];

    memset(payload, 'p', 100);
    payload[100] = '\0';
    for (int i = 1; i <= 10; i++)
        append(s, "a", 1, (uint64_t)i, payload); /* segments 1, 3, 5, 7, 9 */

    /* 1..5 confirmed: segments 1 and 3 go, 5 (holding 5 and 6) stays */
    assert_int_equal(qb_spool_release(s, 6), QB_OK);
    seg_path(f, 1, path, sizeof(path));
    assert_int_equal(file_size(path), -1);
    seg_path(f, 3, path, sizeof(path));
    assert_int_equal(file_size(path), -1);
    seg_path(f, 5, path, sizeof(path));
    assert_true(file_size(path) > 0);
    assert_int_equal(count_files(f, ".seg"), 3);
    assert_int_equal(qb_spool_first_id(s), 5);
    assert_int_equal(STAT(s, released), 4);
    assert_int_equal(STAT(s, records), 6);
    assert_int_equal(read_all(s, 0, ids, 32), 6);
    assert_int_equal(ids[0], 5);

    /* everything: the active segment goes too, appends move to a fresh one */
    assert_int_equal(qb_spool_release(s, 11), QB_OK);
    assert_int_equal(count_files(f, ".seg"), 1);
    seg_path(f, 11, path, sizeof(path));
    assert_int_equal(file_size(path), 8);
    assert_int_equal(STAT(s, records), 0);
    assert_int_equal(qb_spool_first_id(s), 11);
    assert_int_equal(qb_spool_next_id(s), 11);
    qb_spool_close(s);

    s = open_ok(f, &o);
    assert_int_equal(qb_spool_next_id(s), 11);
    assert_int_equal(read_all(s, 0, ids, 32), 0);
    qb_spool_close(s);

    /* even without the checkpoint, the empty segment's name keeps the count */
    path_of(f, "state.json", path, sizeof(path));
    assert_int_equal(unlink(path), 0);
    s = open_ok(f, &o);
    assert_int_equal(qb_spool_next_id(s), 11);
    assert_int_equal(append(s, "a", 1, 11, payload), 11);
    qb_spool_close(s);
}

struct drops {
    char vm[4][16];
    uint64_t first[4], last[4], count[4];
    int n;
};

static void on_drop(void *arg, const char *vm, uint64_t first_seq, uint64_t last_seq,
                    uint64_t count)
{
    struct drops *d = arg;
    int i = strcmp(vm, "vmA") == 0 ? 0 : 1;

    assert_true(d->n < 4);
    strcpy(d->vm[i], vm);
    d->first[i] = first_seq;
    d->last[i] = last_seq;
    d->count[i] = count;
    d->n++;
}

static void test_drop_oldest(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 8 + 5 * REC_SIZE(3, 50) + 10);
    struct qb_spool *s = open_ok(f, &o);
    struct drops d = {.n = 0};
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    char path[256];
    off_t size;
    int64_t freed;

    /* segment 1 (five records): vmA 10..12, vmB 5..6 */
    char p[51];
    memset(p, 'q', 50);
    p[50] = '\0';
    append(s, "vmA", 9, 10, p);
    append(s, "vmB", 9, 5, p);
    append(s, "vmA", 9, 11, p);
    /* a reader in the middle of the segment that will go */
    assert_int_equal(qb_spool_reader_open(s, 1, &r), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 1);
    append(s, "vmB", 9, 6, p);
    append(s, "vmA", 9, 12, p);
    append(s, "vmA", 9, 13, p); /* segment 6 */
    assert_int_equal(STAT(s, segments), 2);
    seg_path(f, 1, path, sizeof(path));
    size = file_size(path);

    capture_start(f);
    freed = qb_spool_drop_oldest(s, on_drop, &d);
    char *log = capture_stop();
    assert_int_equal(freed, size);
    assert_int_equal(file_size(path), -1);
    assert_int_equal(d.n, 2);
    assert_string_equal(d.vm[0], "vmA");
    assert_int_equal(d.first[0], 10);
    assert_int_equal(d.last[0], 12);
    assert_int_equal(d.count[0], 3);
    assert_string_equal(d.vm[1], "vmB");
    assert_int_equal(d.first[1], 5);
    assert_int_equal(d.last[1], 6);
    assert_int_equal(d.count[1], 2);
    assert_non_null(strstr(log, "spool full: dropped 3 records of vmA (sequence 10..12)"));
    assert_non_null(strstr(log, "spool full: dropped 2 records of vmB (sequence 5..6)"));
    free(log);
    assert_int_equal(STAT(s, dropped), 5);
    assert_int_equal(qb_spool_first_id(s), 6);

    /* the reader skips what was dropped under it */
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 6);
    assert_int_equal(rec.msg.sequence, 13);
    assert_int_equal(qb_spool_reader_next(r, &rec), 0);

    /* only the active segment left: it is closed, a new one started, the old one dropped */
    d.n = 0;
    assert_true(qb_spool_drop_oldest(s, NULL, NULL) > 0);
    assert_int_equal(qb_spool_first_id(s), 7);
    assert_int_equal(STAT(s, dropped), 6);
    assert_int_equal(qb_spool_drop_oldest(s, NULL, NULL), QB_ENOTFOUND);
    assert_int_equal(append(s, "vmA", 9, 14, p), 7);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 7);
    qb_spool_reader_close(r);
    qb_spool_close(s);
}

static void test_max_bytes(void **state)
{
    struct fixture *f = *state;
    /* room for the header, two records and 100 bytes */
    struct qb_spool_options o = opts(f, 8 + 2 * REC_SIZE(1, 100) + 100, 1 << 20);
    struct qb_spool *s = open_ok(f, &o);
    char payload[101], path[256];
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = "a",
                           .type = "qemu.test",
                           .id = "1-3",
                           .key = "br/x",
                           .payload = payload,
                           .len = 100};
    uint64_t ids[4];

    memset(payload, 'p', 100);
    payload[100] = '\0';
    append(s, "a", 1, 1, payload);
    append(s, "a", 1, 2, payload);
    seg_path(f, 1, path, sizeof(path));
    assert_int_equal(file_size(path), 8 + 2 * REC_SIZE(1, 100));
    assert_int_equal(qb_spool_append(s, &m, NULL), QB_ENOSPC);
    assert_int_equal(file_size(path), 8 + 2 * REC_SIZE(1, 100));
    assert_int_equal(qb_spool_next_id(s), 3);
    assert_int_equal(STAT(s, write_errors), 0);
    /* a smaller record still fits */
    m.len = 10;
    assert_int_equal(qb_spool_append(s, &m, NULL), QB_OK);
    assert_int_equal(read_all(s, 0, ids, 4), 3);
    qb_spool_close(s);
}

static void test_write_failure(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    struct rlimit saved, lim;
    char payload[301], path[256];
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = "a",
                           .type = "qemu.test",
                           .id = "x",
                           .key = "br/x",
                           .payload = payload,
                           .len = 300};
    uint64_t ids[8];
    off_t size;
    int rc;

    memset(payload, 'p', 300);
    payload[300] = '\0';
    append(s, "a", 1, 1, payload);
    seg_path(f, 1, path, sizeof(path));
    size = file_size(path);

    /* a real short write: the file may grow only 100 more bytes, the record needs ~370 */
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = (rlim_t)size + 100;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    capture_start(f);
    rc = qb_spool_append(s, &m, NULL);
    assert_true(rc == QB_EIO || rc == QB_ENOSPC);
    assert_int_equal(file_size(path), size); /* the partial record is gone */
    rc = qb_spool_append(s, &m, NULL);
    assert_true(rc == QB_EIO || rc == QB_ENOSPC);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    assert_int_equal(append(s, "a", 1, 2, payload), 2);
    char *log = capture_stop();
    assert_int_equal(count_substr(log, "spool: cannot write"), 1); /* once per streak */
    assert_non_null(strstr(log, "File too large"));
    assert_int_equal(count_substr(log, "writable again (2 records refused)"), 1);
    free(log);
    assert_int_equal(STAT(s, write_errors), 2);
    assert_int_equal(qb_spool_next_id(s), 3);
    qb_spool_close(s);

    s = open_default(f);
    assert_int_equal(STAT(s, corrupt), 0);
    assert_int_equal(read_all(s, 0, ids, 8), 2);
    assert_int_equal(ids[1], 2);
    qb_spool_close(s);
}

/* A record like append()'s, for the stage tests: vm "a", epoch 1, sequence seq. */
static struct qb_message staged_msg(uint64_t seq, char *id, size_t idlen, const char *payload)
{
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = "a",
                           .type = "qemu.test",
                           .id = id,
                           .key = "br/x",
                           .epoch = 1,
                           .sequence = seq,
                           .payload = payload,
                           .len = strlen(payload)};

    snprintf(id, idlen, "1-%03" PRIu64, seq);
    return m;
}

/*
 * N records staged (one loop turn's worth) reach the file with ONE write at
 * the flush; until then they are invisible: not in the file, not to readers,
 * not in next_id or the stats. Their ids are the ones the stage gave.
 */
static void test_stage_one_write_per_batch(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    char path[256], id[16];
    uint64_t ids[64], rid;
    off_t empty;

    append(s, "a", 1, 1, "p");
    assert_int_equal(STAT(s, writes), 1);
    seg_path(f, 1, path, sizeof(path));
    empty = file_size(path);
    for (uint64_t seq = 2; seq <= 51; seq++) {
        struct qb_message m = staged_msg(seq, id, sizeof(id), "p");

        assert_int_equal(qb_spool_stage(s, &m, &rid), QB_OK);
        assert_int_equal(rid, seq);
    }
    assert_int_equal(qb_spool_staged(s), 50);
    assert_int_equal(file_size(path), empty);
    assert_int_equal(qb_spool_next_id(s), 2);
    assert_int_equal(STAT(s, records), 1);
    assert_int_equal(read_all(s, 0, ids, 64), 1);

    assert_int_equal(qb_spool_flush(s), QB_OK);
    assert_int_equal(STAT(s, writes), 2); /* 50 records, one write */
    assert_int_equal(qb_spool_staged(s), 0);
    assert_int_equal(file_size(path), empty + 50 * REC_SIZE(1, 1));
    assert_int_equal(qb_spool_next_id(s), 52);
    assert_int_equal(STAT(s, records), 51);
    assert_int_equal(STAT(s, appended), 51);
    assert_int_equal(read_all(s, 0, ids, 64), 51);
    for (int i = 0; i < 51; i++)
        assert_int_equal(ids[i], i + 1);
    assert_int_equal(qb_spool_flush(s), QB_OK); /* nothing staged: no write */
    assert_int_equal(STAT(s, writes), 2);
    qb_spool_close(s);

    s = open_default(f); /* and it all survives a restart, sequences included */
    assert_int_equal(read_all(s, 0, ids, 64), 51);
    {
        uint64_t epoch, seq;

        assert_true(qb_spool_vm_sequence(s, "a", &epoch, &seq));
        assert_int_equal(seq, 51);
    }
    qb_spool_close(s);
}

/* A batch never spans segments: the record that needs a new one asks for a flush first. */
static void test_stage_segment_boundary(void **state)
{
    struct fixture *f = *state;
    /* a segment holds the header and three records */
    struct qb_spool_options o = opts(f, 1 << 20, 8 + 3 * REC_SIZE(1, 1));
    struct qb_spool *s = open_ok(f, &o);
    struct qb_message m;
    char id[16];
    uint64_t ids[8], rid;

    for (uint64_t seq = 1; seq <= 3; seq++) {
        m = staged_msg(seq, id, sizeof(id), "p");
        assert_int_equal(qb_spool_stage(s, &m, &rid), QB_OK);
    }
    m = staged_msg(4, id, sizeof(id), "p");
    assert_int_equal(qb_spool_stage(s, &m, &rid), QB_EAGAIN);
    assert_int_equal(qb_spool_staged(s), 3);
    assert_int_equal(qb_spool_flush(s), QB_OK);
    assert_int_equal(qb_spool_stage(s, &m, &rid), QB_OK);
    assert_int_equal(rid, 4);
    assert_int_equal(qb_spool_flush(s), QB_OK);
    assert_int_equal(STAT(s, segments), 2);
    assert_int_equal(STAT(s, writes), 2);
    assert_int_equal(read_all(s, 0, ids, 8), 4);
    assert_int_equal(ids[3], 4);
    qb_spool_close(s);
}

/*
 * A batch whose write fails leaves nothing behind: the file is cut back, no
 * record is stored, and the same ids are given again when the caller stages
 * the same messages once the disk takes them.
 */
static void test_stage_failed_flush(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    struct rlimit saved, lim;
    char path[256], id[16], payload[301];
    uint64_t ids[8], rid;
    off_t size;

    memset(payload, 'p', 300);
    payload[300] = '\0';
    append(s, "a", 1, 1, payload);
    seg_path(f, 1, path, sizeof(path));
    size = file_size(path);
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    lim = saved;
    lim.rlim_cur = (rlim_t)size + 500; /* the first record fits, the batch of three does not */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    for (uint64_t seq = 2; seq <= 4; seq++) {
        struct qb_message m = staged_msg(seq, id, sizeof(id), payload);

        assert_int_equal(qb_spool_stage(s, &m, &rid), QB_OK);
    }
    capture_start(f);
    int rc = qb_spool_flush(s);
    char *log = capture_stop();
    assert_true(rc == QB_EIO || rc == QB_ENOSPC);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    assert_int_equal(count_substr(log, "spool: cannot write"), 1);
    free(log);
    assert_int_equal(file_size(path), size);
    assert_int_equal(qb_spool_staged(s), 0);
    assert_int_equal(qb_spool_next_id(s), 2);
    assert_int_equal(STAT(s, write_errors), 3);
    for (uint64_t seq = 2; seq <= 4; seq++) {
        struct qb_message m = staged_msg(seq, id, sizeof(id), payload);

        assert_int_equal(qb_spool_stage(s, &m, &rid), QB_OK);
        assert_int_equal(rid, seq);
    }
    assert_int_equal(qb_spool_flush(s), QB_OK);
    assert_int_equal(read_all(s, 0, ids, 8), 4);
    assert_int_equal(ids[3], 4);
    qb_spool_close(s);
}

static void test_second_open_busy(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f), *s2 = NULL;
    struct qb_spool_options o = opts(f, 1 << 20, 1 << 16);
    char err[256];

    assert_int_equal(qb_spool_open(&f->loop, &o, &s2, err, sizeof(err)), QB_EBUSY);
    assert_null(s2);
    assert_non_null(strstr(err, f->dir));
    qb_spool_close(s);
    s = open_default(f); /* the lock went with the close */
    qb_spool_close(s);

    o.max_bytes = 0;
    assert_int_equal(qb_spool_open(&f->loop, &o, &s2, err, sizeof(err)), QB_EINVAL);
    o.max_bytes = 1 << 20;
    o.dir = "/nonexistent-qb-parent/spool";
    assert_int_equal(qb_spool_open(&f->loop, &o, &s2, err, sizeof(err)), QB_EIO);
    assert_non_null(strstr(err, "/nonexistent-qb-parent/spool"));
}

static void test_reader_follows(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 300);
    struct qb_spool *s = open_ok(f, &o);
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    char payload[101];

    memset(payload, 'p', 100);
    payload[100] = '\0';
    assert_int_equal(qb_spool_reader_open(s, 0, &r), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 0); /* empty */
    append(s, "a", 1, 1, payload);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 1);
    assert_int_equal(qb_spool_reader_next(r, &rec), 0);
    assert_int_equal(qb_spool_reader_position(r), 2);
    /* one record per 300-byte segment: the reader crosses into new segments */
    append(s, "a", 1, 2, payload);
    append(s, "a", 1, 3, payload);
    assert_int_equal(STAT(s, segments), 3);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 2);
    assert_int_equal(rec.msg.sequence, 2);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 3);
    assert_int_equal(qb_spool_reader_next(r, &rec), 0);
    append(s, "a", 1, 4, payload);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 4);

    /* segments released under a reader positioned before them are skipped */
    qb_spool_reader_close(r);
    assert_int_equal(qb_spool_reader_open(s, 2, &r), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 2);
    assert_int_equal(qb_spool_release(s, 4), QB_OK);
    assert_int_equal(qb_spool_reader_next(r, &rec), 1);
    assert_int_equal(rec.id, 4);
    qb_spool_reader_close(r);
    qb_spool_close(s);
}

static void test_batch_fsync_timer(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 1 << 16);
    struct qb_spool *s;
    uint64_t t0;

    o.fsync = QB_SPOOL_FSYNC_BATCH;
    o.fsync_interval_ms = 10;
    s = open_ok(f, &o);
    assert_false(uv_loop_alive(&f->loop)); /* idle: no timer running */
    uv_update_time(&f->loop);
    t0 = uv_now(&f->loop);
    append(s, "a", 1, 1, "x");
    append(s, "a", 1, 2, "y");
    assert_true(uv_loop_alive(&f->loop)); /* one sync pending */
    /* the timer runs once and stops: it does not keep firing while idle */
    for (int i = 0; i < 50 && uv_loop_alive(&f->loop); i++)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_false(uv_loop_alive(&f->loop));
    assert_true(uv_now(&f->loop) - t0 >= 10);
    struct qb_spool_stats st;
    qb_spool_get_stats(s, &st);
    assert_int_equal(st.syncs, 1); /* done in the thread pool; its callback counted it */
    append(s, "a", 1, 3, "z");
    assert_true(uv_loop_alive(&f->loop)); /* armed again by new data */
    assert_int_equal(qb_spool_sync(s), QB_OK);
    assert_false(uv_loop_alive(&f->loop)); /* an explicit sync disarms it */
    append(s, "a", 1, 4, "w");
    qb_spool_close(s); /* with the timer armed: the handle is freed by the loop */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);

    /* closed while the interval's sync runs in the thread pool: it finishes on its own */
    s = open_ok(f, &o);
    append(s, "a", 1, 6, "u");
    usleep(20 * 1000);
    uv_run(&f->loop, UV_RUN_NOWAIT); /* the timer is due: the sync starts */
    qb_spool_close(s);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0); /* its callback, the timer's close */
    s = open_ok(f, &o);
    assert_int_equal(qb_spool_next_id(s), 6); /* everything kept */
    qb_spool_close(s);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);

    /* fsync: always */
    o.fsync = QB_SPOOL_FSYNC_ALWAYS;
    s = open_ok(f, &o);
    append(s, "a", 1, 5, "v");
    assert_false(uv_loop_alive(&f->loop));
    assert_int_equal(qb_spool_next_id(s), 7);
    qb_spool_close(s);
    o.fsync_interval_ms = 0;
    o.fsync = QB_SPOOL_FSYNC_BATCH;
    assert_int_equal(qb_spool_open(&f->loop, &o, &s, NULL, 0), QB_EINVAL);
}

/* ---- planted symlinks and the directory's owner and mode ------------------------------------- */

/* A file outside the spool that a planted symlink points at; returns its path in buf. */
static void make_victim(const struct fixture *f, const char *content, char *buf, size_t len)
{
    int fd;

    snprintf(buf, len, "%.*s/victim", (int)(strrchr(f->dir, '/') - f->dir), f->dir);
    fd = open(buf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
}

static void assert_victim(const char *path, const char *content)
{
    char buf[256];
    int fd = open(path, O_RDONLY);
    ssize_t n;

    assert_true(fd >= 0);
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, content);
}

static void plant(const struct fixture *f, const char *name, const char *target)
{
    char path[256];

    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    unlink(path);
    assert_int_equal(symlink(target, path), 0);
}

static bool is_symlink(const struct fixture *f, const char *name)
{
    char path[256];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    return lstat(path, &st) == 0 && S_ISLNK(st.st_mode);
}

/* The checkpoint's temporary file: a symlink there is replaced, the file it names untouched. */
static void test_symlink_state_tmp(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    char victim[256];

    make_victim(f, "root-owned file\n", victim, sizeof(victim));
    append(s, "a", 1, 1, "x");
    plant(f, "state.json.tmp", victim);
    assert_int_equal(qb_spool_checkpoint(s), QB_OK);
    assert_victim(victim, "root-owned file\n");
    assert_false(is_symlink(f, "state.json"));
    assert_false(is_symlink(f, "state.json.tmp"));
    qb_spool_close(s);
}

/* state.json itself: a symlink is not read (its next_id is not taken), and is replaced. */
static void test_symlink_state_file(void **state)
{
    struct fixture *f = *state;
    struct qb_spool *s = open_default(f);
    const char *fake = "{\"version\": 1, \"next_id\": 5000, \"cursors\": {}, \"vms\": {}}";
    char victim[256];

    append(s, "a", 1, 1, "x");
    qb_spool_close(s);
    make_victim(f, fake, victim, sizeof(victim));
    plant(f, "state.json", victim);
    s = open_default(f);
    assert_int_equal(qb_spool_next_id(s), 2);
    assert_int_equal(qb_spool_checkpoint(s), QB_OK);
    assert_victim(victim, fake);
    assert_false(is_symlink(f, "state.json"));
    qb_spool_close(s);
}

/* A segment name: not read, not repaired through (a header prefix would be completed), set
 * aside; and a symlink under the next segment's name is not written through. */
static void test_symlink_segments(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 100);
    struct qb_spool *s;
    char victim[256], name[64], aside[96];
    uint64_t id = 0;
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = "a",
                           .type = "t",
                           .id = "i",
                           .key = "k",
                           .epoch = 1,
                           .sequence = 1,
                           .payload = "x",
                           .len = 1};

    assert_int_equal(mkdir(f->dir, 0700), 0);
    make_victim(f, "", victim, sizeof(victim));
    snprintf(name, sizeof(name), "%016" PRIx64 ".seg", (uint64_t)1);
    plant(f, name, victim);
    s = open_ok(f, &o);
    assert_victim(victim, "");
    snprintf(aside, sizeof(aside), "%s.corrupt", name);
    assert_true(is_symlink(f, aside));
    {
        struct qb_spool_stats st;

        qb_spool_get_stats(s, &st);
        assert_int_equal(st.records, 0);
    }

    /* the segment the next rollover creates */
    append(s, "a", 1, 1, "a payload long enough for one record per segment");
    snprintf(name, sizeof(name), "%016" PRIx64 ".seg", qb_spool_next_id(s));
    plant(f, name, victim);
    m.sequence = 2;
    assert_true(qb_spool_append(s, &m, &id) < 0);
    assert_victim(victim, "");
    qb_spool_close(s);
}

/* The lock file is not opened through a symlink either. */
static void test_symlink_lock(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 1 << 16);
    struct qb_spool *s = NULL;
    char victim[256], err[256];

    assert_int_equal(mkdir(f->dir, 0700), 0);
    make_victim(f, "v", victim, sizeof(victim));
    plant(f, "lock", victim);
    assert_int_equal(qb_spool_open(&f->loop, &o, &s, err, sizeof(err)), QB_EIO);
    assert_null(s);
    assert_non_null(strstr(err, "/lock"));
    assert_victim(victim, "v");
}

/* A directory others may write, or another user's, is refused naming owner and mode; one the
 * spool creates is private. */
static void test_private_directory(void **state)
{
    struct fixture *f = *state;
    struct qb_spool_options o = opts(f, 1 << 20, 1 << 16);
    struct qb_spool *s = NULL;
    struct stat st;
    char err[512];

    s = open_default(f);
    qb_spool_close(s);
    assert_int_equal(stat(f->dir, &st), 0);
    assert_int_equal(st.st_mode & 0027, 0);

    assert_int_equal(chmod(f->dir, 01777), 0);
    assert_int_equal(qb_spool_open(&f->loop, &o, &s, err, sizeof(err)), QB_EINVAL);
    assert_null(s);
    if (!strstr(err, f->dir) || !strstr(err, "mode 1777"))
        fail_msg("unexpected error: %s", err);
    assert_int_equal(chmod(f->dir, 0750), 0);

    if (geteuid() == 0) {
        assert_int_equal(chown(f->dir, 65534, 65534), 0);
        assert_int_equal(qb_spool_open(&f->loop, &o, &s, err, sizeof(err)), QB_EINVAL);
        assert_null(s);
        if (!strstr(err, f->dir) || !strstr(err, "owned by uid 65534"))
            fail_msg("unexpected error: %s", err);
        assert_int_equal(chown(f->dir, 0, 0), 0);
    }
    s = open_default(f);
    qb_spool_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_after_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_header_moved_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drop_oldest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_one_write_per_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_segment_boundary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_failed_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_open_busy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_follows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_fsync_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_rollover_syncs_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_state_tmp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_state_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_segments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlink_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_private_directory, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
