/*
 * test_log.c - the logger writes one line per call, whatever the strings hold.
 *
 * Each case logs through qb_log_write with stderr redirected into a pipe and
 * reads back exactly what a journal would have received: a command id or a
 * QMP text carrying a newline, a carriage return or a terminal escape must not
 * produce a second line nor reach the terminal raw.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* What qb_log_write(level, vm, "%s", text) put on stderr (caller frees). */
static char *capture(enum qb_log_level level, const char *vm, const char *text)
{
    static char buf[64 * 1024];
    int fds[2], saved;
    size_t used = 0;
    ssize_t n;

    fflush(stderr);
    assert_int_equal(pipe(fds), 0);
    saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fds[1], 2) >= 0);
    qb_log_write(level, vm, "%s", text);
    fflush(stderr);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    close(fds[1]);
    while ((n = read(fds[0], buf + used, sizeof(buf) - 1 - used)) > 0)
        used += (size_t)n;
    close(fds[0]);
    buf[used] = '\0';
    return strdup(buf);
}

/* Exactly one line: text, then one '\n' at the very end, in the documented format. */
static void assert_one_line(const char *out)
{
    regex_t re;
    size_t len = strlen(out);

    assert_true(len > 0);
    assert_int_equal(out[len - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1);
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\x1b'));
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{12}Z (error|warn |info |debug) ",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    assert_int_equal(regexec(&re, out, 0, NULL, 0), 0);
    regfree(&re);
}

static void test_plain_line_unchanged(void **state)
{
    (void)state;
    char *out = capture(QB_LOG_INFO, "vm1", "command c-1 (stop) ok: run_state paused, 10% \\ done");

    assert_one_line(out);
    assert_non_null(
        strstr(out, " info  [vm1] command c-1 (stop) ok: run_state paused, 10% \\ done\n"));
    free(out);
}

static void test_forged_line_is_escaped(void **state)
{
    (void)state;
    char *out = capture(QB_LOG_WARN, "vm1",
                        "command x\n2026-12-06T15:00:00.000Z info  [vm2] command y ok rejected");

    assert_one_line(out);
    assert_non_null(strstr(
        out, "[vm1] command x\\x0A2026-12-06T15:00:00.000Z info  [vm2] command y ok rejected\n"));
    free(out);
}

static void test_control_characters(void **state)
{
    (void)state;
    /* CR, tab, ANSI colour, DEL, BEL, the C1 CSI (U+009B); é and 日本 stay as they are */
    char *out = capture(QB_LOG_ERROR, NULL,
                        "a\rb\tc\x1b[31mred\x1b[0m\x7f\a\xc2\x9b"
                        "2J é 日本");

    assert_one_line(out);
    assert_non_null(
        strstr(out, " error a\\x0Db\\x09c\\x1B[31mred\\x1B[0m\\x7F\\x07\\xC2\\x9B2J é 日本\n"));
    free(out);
}

static void test_vm_prefix_is_escaped(void **state)
{
    (void)state;
    char *out = capture(QB_LOG_INFO, "peer\n2026-12-06T15:00:00.000Z error [x", "connected");

    assert_one_line(out);
    assert_non_null(strstr(out, " info  [peer\\x0A2026-12-06T15:00:00.000Z error [x] connected\n"));
    free(out);
}

static void test_all_controls_fit(void **state)
{
    (void)state;
    char text[2048];
    char *out;

    /* the longest message, every byte a newline: all of it shows, escaped, on one line */
    memset(text, '\n', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    out = capture(QB_LOG_INFO, NULL, text);
    assert_one_line(out);
    assert_int_equal(strlen(strstr(out, " info  ") + 7), 4 * (sizeof(text) - 1) + 1);
    free(out);
}

static void test_escape_cuts_at_a_boundary(void **state)
{
    (void)state;
    char out[8];

    assert_int_equal(qb_log_escape(out, sizeof(out), "ab\ncd"), 7);
    assert_string_equal(out, "ab\\x0Ac");
    assert_int_equal(qb_log_escape(out, sizeof(out), "abcd\n"), 4);
    assert_string_equal(out, "abcd"); /* no half escape */
    assert_int_equal(qb_log_escape(out, 6, "a\xc2\x85"), 1);
    assert_string_equal(out, "a"); /* U+0085 is both bytes or nothing */
    assert_int_equal(qb_log_escape(out, 1, "abc"), 0);
    assert_string_equal(out, "");
    /* a lone 0xc2 and other UTF-8 continuation bytes are not controls */
    assert_int_equal(qb_log_escape(out, sizeof(out), "\xc2\xa9\xe6\x97\xa5"), 5);
    assert_string_equal(out, "\xc2\xa9\xe6\x97\xa5");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_line_unchanged),
        cmocka_unit_test(test_forged_line_is_escaped),
        cmocka_unit_test(test_control_characters),
        cmocka_unit_test(test_vm_prefix_is_escaped),
        cmocka_unit_test(test_all_controls_fit),
        cmocka_unit_test(test_escape_cuts_at_a_boundary),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
