/*
 * test_utf8.c - well-formed UTF-8 for text that goes into JSON (bridge/utf8.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "utf8.h"

#include <jansson.h>
#include <string.h>

static size_t seq(const char *s)
{
    return qb_utf8_seq_len((const unsigned char *)s, strlen(s));
}

static void test_seq_len(void **state)
{
    (void)state;
    assert_int_equal(seq("a"), 1);
    assert_int_equal(seq("\xc3\xa9"), 2);         /* U+00E9 */
    assert_int_equal(seq("\xe6\x97\xa5"), 3);     /* U+65E5 */
    assert_int_equal(seq("\xf0\x9f\x98\x80"), 4); /* U+1F600 */
    assert_int_equal(seq("\x80"), 0);             /* a lone continuation byte */
    assert_int_equal(seq("\xc0\xaf"), 0);         /* an overlong '/' */
    assert_int_equal(seq("\xe0\x80\xaf"), 0);     /* another */
    assert_int_equal(seq("\xed\xa0\x80"), 0);     /* a surrogate */
    assert_int_equal(seq("\xf4\x90\x80\x80"), 0); /* past U+10FFFF */
    assert_int_equal(seq("\xe2\x82"), 0);         /* cut by the end */
    assert_int_equal(qb_utf8_seq_len((const unsigned char *)"\xc3\xa9", 1), 0);
}

/* libvirt's messages and senders' strings quote any bytes; what goes into JSON must be UTF-8. */
static void test_copy(void **state)
{
    char buf[16];

    (void)state;
    qb_utf8_copy(buf, sizeof(buf), "plain");
    assert_string_equal(buf, "plain");
    qb_utf8_copy(buf, sizeof(buf),
                 "d\xc3\xa9"
                 "j\xc3\xa0");
    assert_string_equal(buf, "d\xc3\xa9"
                             "j\xc3\xa0");
    /* a lone continuation byte, an overlong '/', a surrogate, a truncated sequence */
    qb_utf8_copy(buf, sizeof(buf),
                 "a\x80"
                 "b\xc0\xaf"
                 "c\xed\xa0\x80"
                 "d\xe2\x82");
    assert_string_equal(buf, "a?b??c???d??");
    /* cut by the end of buf: never half a sequence */
    qb_utf8_copy(buf, 6, "abcd\xc3\xa9");
    assert_string_equal(buf, "abcd?");
    qb_utf8_copy(buf, 1, "abc");
    assert_string_equal(buf, "");
    /* and whatever came in, jansson takes what came out */
    qb_utf8_copy(buf, sizeof(buf), "\xff\xfe\xc3");
    json_t *s = json_string(buf);
    assert_non_null(s);
    json_decref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seq_len),
        cmocka_unit_test(test_copy),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
