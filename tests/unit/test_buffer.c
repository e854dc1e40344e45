/*
 * test_buffer.c - the growable buffer (bridge/buffer.c): appending across growth,
 * printf, handing over, the empty buffer, sticky failure and the wiping mode.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buffer.h"
#include "error.h"

/* Appends across several doublings keep every byte in order and room for the NUL. */
static void test_append_grows(void **state)
{
    struct qb_buffer b;
    char expect[5000];
    size_t len;
    char *text;

    (void)state;
    qb_buffer_init(&b, 0);
    assert_null(b.data);
    for (size_t i = 0; i < sizeof(expect) - 1; i++) {
        char c = (char)('a' + i % 26);

        expect[i] = c;
        assert_int_equal(qb_buffer_append(&b, &c, 1), QB_OK);
        assert_true(b.len < b.cap);
    }
    expect[sizeof(expect) - 1] = '\0';
    assert_int_equal(b.len, sizeof(expect) - 1);
    assert_string_equal(qb_buffer_cstr(&b), expect);
    text = qb_buffer_take(&b, &len);
    assert_int_equal(len, sizeof(expect) - 1);
    assert_string_equal(text, expect);
    /* taken: the buffer is empty again and usable */
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(qb_buffer_append_str(&b, "again"), QB_OK);
    assert_string_equal(qb_buffer_cstr(&b), "again");
    qb_buffer_free(&b);
    free(text);
}

static void test_appendf(void **state)
{
    struct qb_buffer b;
    char big[300];
    char *text;

    (void)state;
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    qb_buffer_init(&b, 0);
    assert_int_equal(qb_buffer_appendf(&b, "%s=%d;", "n", 42), QB_OK);
    /* longer than what is left: the second vsnprintf after growing */
    assert_int_equal(qb_buffer_appendf(&b, "[%s]", big), QB_OK);
    text = qb_buffer_take(&b, NULL);
    assert_int_equal(strlen(text), 5 + 2 + sizeof(big) - 1);
    assert_memory_equal(text, "n=42;[", 6);
    assert_int_equal(text[strlen(text) - 1], ']');
    free(text);
}

/* An empty buffer hands over "" (config values may expand to nothing). */
static void test_take_empty(void **state)
{
    struct qb_buffer b;
    size_t len = 99;
    char *text;

    (void)state;
    qb_buffer_init(&b, QB_BUFFER_WIPE);
    assert_int_equal(qb_buffer_append(&b, "", 0), QB_OK);
    text = qb_buffer_take(&b, &len);
    assert_non_null(text);
    assert_string_equal(text, "");
    assert_int_equal(len, 0);
    assert_true(b.wipe); /* the mode survives the hand-over */
    free(text);
    qb_buffer_init(&b, 0);
    text = qb_buffer_take(&b, &len);
    assert_string_equal(text, "");
    free(text);
}

/* A failed allocation sticks: later appends do not hide it and take returns NULL. */
static void test_failure_sticky(void **state)
{
    struct qb_buffer b;
    size_t len = 7;

    (void)state;
    qb_buffer_init(&b, 0);
    assert_int_equal(qb_buffer_append_str(&b, "start"), QB_OK);
    assert_int_equal(qb_buffer_reserve(&b, SIZE_MAX - 2), QB_ENOMEM);
    assert_true(b.failed);
    assert_int_equal(qb_buffer_reserve(&b, 1), QB_ENOMEM);
    assert_int_equal(qb_buffer_appendf(&b, "%d", 1), QB_ENOMEM);
    assert_null(qb_buffer_cstr(&b));
    assert_null(qb_buffer_take(&b, &len));
    assert_int_equal(len, 0);
    assert_null(b.data);
    assert_false(b.failed); /* take freed it: a fresh buffer again */
}

/* Reserve and commit: the caller writes straight into the buffer (a recv). */
static void test_reserve_commit(void **state)
{
    struct qb_buffer b;

    (void)state;
    qb_buffer_init(&b, 0);
    assert_int_equal(qb_buffer_reserve(&b, 1023), QB_OK);
    assert_int_equal(b.cap, 1024); /* 64 doubled: an envelope fits its first block */
    memcpy(b.data, "hello", 5);
    qb_buffer_commit(&b, 5);
    assert_string_equal(qb_buffer_cstr(&b), "hello");
    qb_buffer_free(&b);
    assert_null(b.data);
}

/* WIPE grows by copying (no realloc) and keeps the content intact across growth. */
static void test_wipe_grows(void **state)
{
    struct qb_buffer b;
    char *text;

    (void)state;
    qb_buffer_init(&b, QB_BUFFER_WIPE);
    for (int i = 0; i < 100; i++)
        assert_int_equal(qb_buffer_appendf(&b, "secret%02d", i), QB_OK);
    text = qb_buffer_take(&b, NULL);
    assert_int_equal(strlen(text), 800);
    assert_memory_equal(text, "secret00secret01", 16);
    assert_memory_equal(text + 792, "secret99", 8);
    free(text);
    qb_buffer_init(&b, QB_BUFFER_WIPE);
    assert_int_equal(qb_buffer_append_str(&b, "pw"), QB_OK);
    qb_buffer_free(&b);
    assert_null(b.data);
    assert_true(b.wipe);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows),   cmocka_unit_test(test_appendf),
        cmocka_unit_test(test_take_empty),     cmocka_unit_test(test_failure_sticky),
        cmocka_unit_test(test_reserve_commit), cmocka_unit_test(test_wipe_grows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
