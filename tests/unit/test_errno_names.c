/*
 * test_errno_names.c - QEMU's reason texts back to errno names.
 *
 * The texts are glibc's, as QEMU prints them in BLOCK_IO_ERROR's reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "errno_names.h"

static void test_exact_texts(void **state)
{
    (void)state;
    assert_string_equal(qb_errno_name_from_text("No space left on device"), "enospc");
    assert_string_equal(qb_errno_name_from_text("Input/output error"), "eio");
    assert_string_equal(qb_errno_name_from_text("Disk quota exceeded"), "edquot");
    assert_string_equal(qb_errno_name_from_text("Read-only file system"), "erofs");
    assert_string_equal(qb_errno_name_from_text("Operation not permitted"), "eperm");
    assert_string_equal(qb_errno_name_from_text("Remote I/O error"), "eremoteio");
}

static void test_embedded_texts(void **state)
{
    (void)state;
    assert_string_equal(
        qb_errno_name_from_text("Could not write to image: No space left on device"), "enospc");
    assert_string_equal(qb_errno_name_from_text("write failed: input/output error (retrying)"),
                        "eio");
    /* "I/O error" is inside "Remote I/O error" too: the longest match wins. */
    assert_string_equal(qb_errno_name_from_text("nbd: Remote I/O error"), "eremoteio");
}

static void test_unknown(void **state)
{
    (void)state;
    assert_string_equal(qb_errno_name_from_text(NULL), "unknown");
    assert_string_equal(qb_errno_name_from_text(""), "unknown");
    assert_string_equal(qb_errno_name_from_text("the disk is sad"), "unknown");
    assert_string_equal(qb_errno_name_from_text("Unknown error 4242"), "unknown");
}

static void test_by_number(void **state)
{
    (void)state;
    assert_string_equal(qb_errno_name(28), "enospc");
    assert_string_equal(qb_errno_name(ENOSPC), "enospc");
    assert_string_equal(qb_errno_name(EIO), "eio");
    assert_string_equal(qb_errno_name(EDQUOT), "edquot");
    assert_string_equal(qb_errno_name(EWOULDBLOCK), "eagain");
    assert_string_equal(qb_errno_name(EHWPOISON), "ehwpoison");
    assert_string_equal(qb_errno_name(0), "unknown");
    assert_string_equal(qb_errno_name(-5), "unknown");
    assert_string_equal(qb_errno_name(100000), "unknown");
}

/* Every named errno's own strerror() text maps back to that name. */
static void test_round_trip(void **state)
{
    (void)state;
    for (int e = 1; e <= 133; e++) {
        const char *name = qb_errno_name(e);

        if (strcmp(name, "unknown") == 0)
            continue;
        assert_string_equal(qb_errno_name_from_text(strerror(e)), name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_texts), cmocka_unit_test(test_embedded_texts),
        cmocka_unit_test(test_unknown),     cmocka_unit_test(test_by_number),
        cmocka_unit_test(test_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
