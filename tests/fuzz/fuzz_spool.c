/*
 * fuzz_spool.c - libFuzzer harness for the spool's recovery and reading
 * (bridge/spool.c).
 *
 * The input becomes the only segment file of a fresh spool directory. The
 * first byte chooses how: bit 0 set puts a valid segment header in front of
 * the rest (so mutations spend their time on records, not on the 8-byte
 * header), clear writes the rest raw (header checks, moving aside); bit 1
 * picks fsync "always" instead of "off". Then the spool is opened, every
 * record read with a reader (ids must rise), one record appended and read
 * back, and the spool reopened: the appended record must still be there,
 * intact. Any broken invariant aborts.
 *
 * Build (not wired into CMake):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ibridge -Itransports \
 *     tests/fuzz/fuzz_spool.c bridge/spool.c bridge/log.c bridge/error.c \
 *     $(pkg-config --cflags --libs libuv jansson zlib) -o fuzz_spool
 *   ./fuzz_spool tests/fuzz/corpus/spool
 * Seeds: real segments written by the spool, with a leading mode byte.
 */
#include "error.h"
#include "log.h"
#include "spool.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char payload[] = "{\"specversion\":\"1.0\",\"id\":\"fuzz-1\"}";

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void write_file(const char *path, const void *a, size_t alen, const void *b, size_t blen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    if (fd < 0 || (alen && write(fd, a, alen) != (ssize_t)alen) ||
        (blen && write(fd, b, blen) != (ssize_t)blen))
        abort();
    close(fd);
}

/* Reads everything from from_id on; ids must rise. Returns the last record's id (0: none). */
static uint64_t read_all(struct qb_spool *s, uint64_t from_id, struct qb_spool_record *last)
{
    struct qb_spool_reader *r;
    struct qb_spool_record rec;
    uint64_t prev = 0;
    int rc;

    if (qb_spool_reader_open(s, from_id, &r) != QB_OK)
        abort();
    while ((rc = qb_spool_reader_next(r, &rec)) == 1) {
        if (rec.id <= prev || rec.id < from_id || rec.id >= qb_spool_next_id(s) ||
            strlen(rec.msg.vm) > 65535 || rec.msg.payload[rec.msg.len] != '\0')
            abort();
        prev = rec.id;
        if (last && rec.msg.len == sizeof(payload) - 1 &&
            memcmp(rec.msg.payload, payload, rec.msg.len) == 0)
            *last = rec; /* strings stay valid until the next call; only ids are used later */
    }
    if (rc != 0)
        abort();
    qb_spool_reader_close(r);
    return prev;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* tmpfs when there is one: fsync there costs nothing, on a disk it is most of the run */
    char dir[64], path[128], err[256];
    struct qb_spool_options o = {
        .dir = dir, .max_bytes = 1 << 24, .segment_bytes = 4096, .fsync = QB_SPOOL_FSYNC_OFF};
    struct qb_message m = {.kind = QB_MSG_EVENT,
                           .vm = "fuzz-vm",
                           .type = "qemu.fuzz",
                           .id = "1-1",
                           .key = "br/fuzz-vm",
                           .epoch = 1,
                           .sequence = 1,
                           .payload = payload,
                           .len = sizeof(payload) - 1};
    struct qb_spool_record found = {0};
    struct qb_spool *s = NULL;
    uint64_t id = 0;
    uint8_t mode;
    int rc;

    qb_log_threshold = QB_LOG_ERROR; /* corrupt-record warnings are the normal case here */
    if (size == 0)
        return 0;
    mode = data[0];
    data++;
    size--;
    if (mode & 2)
        o.fsync = QB_SPOOL_FSYNC_ALWAYS;
    snprintf(dir, sizeof(dir), "%s/qb-fuzz-spool-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(path, sizeof(path), "%s/0000000000000001.seg", dir);
    write_file(path, "QBSPOOL1", (mode & 1) ? 8 : 0, data, size);

    rc = qb_spool_open(NULL, &o, &s, err, sizeof(err));
    if (rc == QB_ENOMEM)
        goto out;
    if (rc != QB_OK) {
        fprintf(stderr, "open: %s: %s\n", qb_strerror(rc), err);
        abort();
    }
    read_all(s, 0, NULL);
    rc = qb_spool_append(s, &m, &id);
    if (rc != QB_OK || id + 1 != qb_spool_next_id(s))
        abort();
    if (read_all(s, id, &found) != id || found.id != id)
        abort();
    qb_spool_close(s);

    /* reopened, the appended record is still there and still the newest */
    s = NULL;
    if (qb_spool_open(NULL, &o, &s, err, sizeof(err)) != QB_OK)
        abort();
    found.id = 0;
    if (qb_spool_next_id(s) != id + 1 || read_all(s, id, &found) != id || found.id != id)
        abort();
    qb_spool_close(s);

out:
    nftw(dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
    return 0;
}
