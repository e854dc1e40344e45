/*
 * test_qmp_framer.c - line framing of the QMP byte stream.
 *
 * Every test feeds bytes the way libuv would (space, write, commit) and
 * compares the reported lines with the expected ones, so a framer that loses,
 * merges or copies lines across reads shows up as a wrong line list.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "qmp_framer.h"

#define MAX_LINES 16

struct collected {
    char *lines[MAX_LINES];
    size_t count;
    int fail_at; /* 1-based line whose callback returns QB_EPROTO; 0 = never */
};

static int collect_line(void *arg, const char *line, size_t len)
{
    struct collected *c = arg;

    assert_true(len > 0);
    assert_true(c->count < MAX_LINES);
    c->lines[c->count] = strndup(line, len);
    assert_non_null(c->lines[c->count]);
    c->count++;
    if (c->fail_at > 0 && (size_t)c->fail_at == c->count)
        return QB_EPROTO;
    return QB_OK;
}

static void collected_clear(struct collected *c)
{
    for (size_t i = 0; i < c->count; i++)
        free(c->lines[i]);
    memset(c, 0, sizeof(*c));
}

/* Feeds data in reads of at most chunk bytes, like small socket reads. */
static int feed_chunked(struct qb_framer *f, const char *data, size_t len, size_t chunk,
                        struct collected *c)
{
    while (len > 0) {
        size_t n = len < chunk ? len : chunk;
        int rc = qb_framer_feed(f, data, n, collect_line, c);

        if (rc < 0)
            return rc;
        data += n;
        len -= n;
    }
    return QB_OK;
}

static const char greeting[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": "
    "\"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}";
static const char event[] =
    "{\"timestamp\": {\"seconds\": 1732242124, \"microseconds\": 123456}, \"event\": \"STOP\"}";
static const char reply[] = "{\"return\": {}, \"id\": 1}";

static void test_split_at_every_position(void **state)
{
    char stream[1024];
    int n = snprintf(stream, sizeof(stream), "%s\r\n%s\n%s\r\n", greeting, event, reply);

    (void)state;
    assert_true(n > 0 && (size_t)n < sizeof(stream));
    for (size_t cut = 0; cut <= (size_t)n; cut++) {
        struct qb_framer f;
        struct collected c = {0};

        qb_framer_init(&f, 1024);
        assert_int_equal(qb_framer_feed(&f, stream, cut, collect_line, &c), QB_OK);
        assert_int_equal(qb_framer_feed(&f, stream + cut, (size_t)n - cut, collect_line, &c),
                         QB_OK);
        assert_int_equal(c.count, 3);
        assert_string_equal(c.lines[0], greeting);
        assert_string_equal(c.lines[1], event);
        assert_string_equal(c.lines[2], reply);
        assert_null(f.buf);
        assert_int_equal(f.len, 0);
        collected_clear(&c);
        qb_framer_reset(&f);
    }
}

static void test_byte_by_byte(void **state)
{
    char stream[1024];
    int n = snprintf(stream, sizeof(stream), "%s\n%s\n", event, reply);
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    qb_framer_init(&f, 1024);
    assert_int_equal(feed_chunked(&f, stream, (size_t)n, 1, &c), QB_OK);
    assert_int_equal(c.count, 2);
    assert_string_equal(c.lines[0], event);
    assert_string_equal(c.lines[1], reply);
    assert_null(f.buf);
    collected_clear(&c);
}

static void test_many_lines_one_chunk_and_crlf(void **state)
{
    static const char stream[] = "a\r\nbb\n\n\r\nccc\r\n\r\nd\n";
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    qb_framer_init(&f, 64);
    assert_int_equal(qb_framer_feed(&f, stream, sizeof(stream) - 1, collect_line, &c), QB_OK);
    assert_int_equal(c.count, 4);
    assert_string_equal(c.lines[0], "a");
    assert_string_equal(c.lines[1], "bb");
    assert_string_equal(c.lines[2], "ccc");
    assert_string_equal(c.lines[3], "d");
    assert_null(f.buf);
    collected_clear(&c);
}

static void test_partial_line_is_held(void **state)
{
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    qb_framer_init(&f, 64);
    assert_int_equal(qb_framer_feed(&f, "one\ntw", 6, collect_line, &c), QB_OK);
    assert_int_equal(c.count, 1);
    assert_non_null(f.buf);
    assert_int_equal(f.len, 2);
    assert_memory_equal(f.buf, "tw", 2);
    assert_int_equal(qb_framer_feed(&f, "o\n", 2, collect_line, &c), QB_OK);
    assert_int_equal(c.count, 2);
    assert_string_equal(c.lines[1], "two");
    assert_null(f.buf);
    collected_clear(&c);
}

/* The callback's pointer must lie inside the framer's own buffer: lines are not copied. */
struct inplace {
    const struct qb_framer *f;
    int seen;
};

static int check_inplace(void *arg, const char *line, size_t len)
{
    struct inplace *ip = arg;

    assert_true(line >= ip->f->buf && line + len <= ip->f->buf + ip->f->cap);
    ip->seen++;
    return QB_OK;
}

static void test_lines_not_copied(void **state)
{
    struct qb_framer f;
    struct inplace ip = {&f, 0};

    (void)state;
    qb_framer_init(&f, 64);
    assert_int_equal(qb_framer_feed(&f, "abc\nde", 6, check_inplace, &ip), QB_OK);
    assert_int_equal(qb_framer_feed(&f, "f\n", 2, check_inplace, &ip), QB_OK);
    assert_int_equal(ip.seen, 2);
}

static void test_max_line(void **state)
{
    enum { MAX = 100 };
    char line[MAX + 3];
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    memset(line, 'x', sizeof(line));

    /* Exactly max_line, with either terminator, split into small reads. */
    qb_framer_init(&f, MAX);
    line[MAX] = '\n';
    assert_int_equal(feed_chunked(&f, line, MAX + 1, 7, &c), QB_OK);
    line[MAX] = '\r';
    line[MAX + 1] = '\n';
    assert_int_equal(feed_chunked(&f, line, MAX + 2, 7, &c), QB_OK);
    assert_int_equal(c.count, 2);
    assert_int_equal(strlen(c.lines[0]), MAX);
    assert_int_equal(strlen(c.lines[1]), MAX);
    assert_null(f.buf);
    collected_clear(&c);

    /* max_line + 1 in one read. */
    memset(line, 'x', sizeof(line));
    line[MAX + 1] = '\n';
    assert_int_equal(qb_framer_feed(&f, line, MAX + 2, collect_line, &c), QB_ETOOBIG);
    assert_int_equal(c.count, 0);
    assert_null(f.buf);

    /* max_line + 1 with "\r\n", byte by byte. */
    line[MAX + 1] = '\r';
    line[MAX + 2] = '\n';
    assert_int_equal(feed_chunked(&f, line, MAX + 3, 1, &c), QB_ETOOBIG);
    assert_int_equal(c.count, 0);
    assert_null(f.buf);

    /* A partial line that can no longer fit is refused before its newline arrives. */
    memset(line, 'x', sizeof(line));
    assert_int_equal(feed_chunked(&f, line, MAX + 1, 10, &c), QB_ETOOBIG);
    assert_null(f.buf);

    /* The framer is usable again after the error. */
    assert_int_equal(qb_framer_feed(&f, "ok\n", 3, collect_line, &c), QB_OK);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.lines[0], "ok");
    collected_clear(&c);
}

static void test_space_bounded_by_max_line(void **state)
{
    struct qb_framer f;
    char *ptr;
    size_t len;

    (void)state;
    qb_framer_init(&f, 10);
    assert_int_equal(qb_framer_space(&f, 65536, &ptr, &len), QB_OK);
    assert_non_null(ptr);
    assert_true(len >= 1 && len <= 12);
    assert_true(f.cap <= 12);
    qb_framer_reset(&f);
    assert_null(f.buf);
    assert_int_equal(f.cap, 0);
}

static void test_callback_error_propagates(void **state)
{
    static const char stream[] = "one\ntwo\nthree\n";
    struct qb_framer f;
    struct collected c = {.fail_at = 2};

    (void)state;
    qb_framer_init(&f, 64);
    assert_int_equal(qb_framer_feed(&f, stream, sizeof(stream) - 1, collect_line, &c), QB_EPROTO);
    /* Stops at the failing line: "three" is never reported. */
    assert_int_equal(c.count, 2);
    assert_null(f.buf);
    collected_clear(&c);
}

static void test_reset_drops_partial(void **state)
{
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    qb_framer_init(&f, 64);
    assert_int_equal(qb_framer_feed(&f, "{\"half", 6, collect_line, &c), QB_OK);
    assert_non_null(f.buf);
    qb_framer_reset(&f);
    assert_null(f.buf);
    assert_int_equal(f.len, 0);
    assert_int_equal(qb_framer_feed(&f, "tail\n", 5, collect_line, &c), QB_OK);
    assert_int_equal(c.count, 1);
    assert_string_equal(c.lines[0], "tail");
    collected_clear(&c);
}

static void test_empty_commit_releases_buffer(void **state)
{
    struct qb_framer f;
    struct collected c = {0};
    char *ptr;
    size_t len;

    (void)state;
    qb_framer_init(&f, 64);
    /* libuv reports nread == 0 after asking for a buffer: nothing may stay allocated. */
    assert_int_equal(qb_framer_space(&f, 64, &ptr, &len), QB_OK);
    assert_non_null(f.buf);
    assert_int_equal(qb_framer_commit(&f, 0, collect_line, &c), QB_OK);
    assert_null(f.buf);
    assert_int_equal(c.count, 0);
}

static void test_big_buffer_shrinks(void **state)
{
    enum { BIG = 1024 * 1024 };
    char *data = malloc(BIG + 8);
    struct qb_framer f;
    struct collected c = {0};

    (void)state;
    assert_non_null(data);
    memset(data, 'y', BIG);
    memcpy(data + BIG, "\nab", 3);
    qb_framer_init(&f, 2 * BIG);
    assert_int_equal(feed_chunked(&f, data, BIG + 3, 65536, &c), QB_OK);
    assert_int_equal(c.count, 1);
    assert_int_equal(strlen(c.lines[0]), BIG);
    assert_int_equal(f.len, 2);
    assert_true(f.cap < 65536);
    qb_framer_reset(&f);
    collected_clear(&c);
    free(data);
}

/*
 * Reads share one area per thread: a partial line leaves it for a buffer of
 * exactly its size; a framer asking while another holds the area (which
 * libuv never does) gets a buffer of its own, so streams never mix.
 */
static void test_shared_area(void **state)
{
    struct qb_framer a;
    struct qb_framer b;
    struct collected ca = {0};
    struct collected cb = {0};
    char *pa;
    char *pb;
    size_t la;
    size_t lb;

    (void)state;
    qb_framer_init(&a, 1024);
    qb_framer_init(&b, 1024);

    /* A partial line is copied out of the area into an exact-size buffer. */
    assert_int_equal(qb_framer_feed(&a, "one\ntwo-half", 12, collect_line, &ca), QB_OK);
    assert_false(a.shared);
    assert_int_equal(a.len, 8);
    assert_int_equal(a.cap, 8);

    /* a holds the area between space and commit: b must get its own buffer. */
    assert_int_equal(qb_framer_space(&a, 65536, &pa, &la), QB_OK);
    assert_true(a.shared);
    assert_memory_equal(a.buf, "two-half", 8); /* the partial line leads the area */
    assert_int_equal(qb_framer_space(&b, 65536, &pb, &lb), QB_OK);
    assert_false(b.shared);
    assert_true(pb + lb <= a.buf || pb >= a.buf + a.cap);
    memcpy(pb, "bee\n", 4);
    memcpy(pa, "-done\n", 6);
    assert_int_equal(qb_framer_commit(&b, 4, collect_line, &cb), QB_OK);
    assert_int_equal(qb_framer_commit(&a, 6, collect_line, &ca), QB_OK);
    assert_int_equal(ca.count, 2);
    assert_string_equal(ca.lines[0], "one");
    assert_string_equal(ca.lines[1], "two-half-done");
    assert_int_equal(cb.count, 1);
    assert_string_equal(cb.lines[0], "bee");
    assert_null(a.buf);
    assert_null(b.buf);

    /* Resetting a framer that holds the area gives it back. */
    assert_int_equal(qb_framer_space(&a, 64, &pa, &la), QB_OK);
    assert_true(a.shared);
    qb_framer_reset(&a);
    assert_false(a.shared);
    assert_int_equal(qb_framer_space(&b, 64, &pb, &lb), QB_OK);
    assert_true(b.shared);
    assert_int_equal(qb_framer_commit(&b, 0, collect_line, &cb), QB_OK);
    assert_false(b.shared);
    assert_null(b.buf);
    collected_clear(&ca);
    collected_clear(&cb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_at_every_position),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_many_lines_one_chunk_and_crlf),
        cmocka_unit_test(test_partial_line_is_held),
        cmocka_unit_test(test_lines_not_copied),
        cmocka_unit_test(test_max_line),
        cmocka_unit_test(test_space_bounded_by_max_line),
        cmocka_unit_test(test_callback_error_propagates),
        cmocka_unit_test(test_reset_drops_partial),
        cmocka_unit_test(test_empty_commit_releases_buffer),
        cmocka_unit_test(test_big_buffer_shrinks),
        cmocka_unit_test(test_shared_area),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
