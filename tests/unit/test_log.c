/*
 * test_log.c - the logger writes one line per call, whatever the strings hold.
 *
 * Each case logs through qb_log_write with stderr redirected into a pipe and
 * reads back exactly what a journal would have received: a command id or a
 * QMP text carrying a newline, a carriage return or a terminal escape must not
 * produce a second line nor reach the terminal raw. The JSON format writes one
 * valid JSON object per line with the line's context (VM, transport, command
 * id); the journal format is checked end to end by integration_journal_log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* ---- JSON lines ---- */

/* The one JSON object of a captured line (caller decrefs); fails unless out is one valid line. */
static json_t *json_line(const char *out)
{
    size_t len = strlen(out);
    json_error_t error;
    json_t *obj;

    assert_true(len > 0);
    assert_int_equal(out[len - 1], '\n');
    assert_ptr_equal(strchr(out, '\n'), out + len - 1);
    obj = json_loadb(out, len - 1, JSON_REJECT_DUPLICATES, &error);
    if (!obj)
        fail_msg("not JSON (%s): %s", error.text, out);
    assert_true(json_is_object(obj));
    return obj;
}

static const char *jstr(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static void test_json_fields(void **state)
{
    (void)state;
    struct qb_log_command_scope scope;
    const char *previous;
    json_t *obj;
    char *out;
    regex_t re;

    qb_log_set_format(QB_LOG_FORMAT_JSON);
    previous = qb_log_transport_begin("mqtt");
    qb_log_command_begin(&scope, "c-1");
    out = capture(QB_LOG_WARN, "vm1", "command c-1 (stop) rejected");
    qb_log_command_end(&scope);
    qb_log_transport_end(previous);
    obj = json_line(out);
    assert_int_equal(json_object_size(obj), 6);
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    assert_int_equal(regexec(&re, jstr(obj, "time"), 0, NULL, 0), 0);
    regfree(&re);
    assert_string_equal(jstr(obj, "level"), "warn");
    assert_string_equal(jstr(obj, "vm"), "vm1");
    assert_string_equal(jstr(obj, "transport"), "mqtt");
    assert_string_equal(jstr(obj, "command_id"), "c-1");
    assert_string_equal(jstr(obj, "message"), "command c-1 (stop) rejected");
    /* the keys come in the documented order, time first and message last */
    assert_true(strncmp(out, "{\"time\":", 8) == 0);
    assert_non_null(strstr(out, ",\"message\":\"command c-1 (stop) rejected\"}\n"));
    json_decref(obj);
    free(out);

    /* outside the scopes: no vm, transport or command_id key at all */
    out = capture(QB_LOG_DEBUG, NULL, "loop idle");
    obj = json_line(out);
    assert_int_equal(json_object_size(obj), 3);
    assert_string_equal(jstr(obj, "level"), "debug");
    assert_string_equal(jstr(obj, "message"), "loop idle");
    json_decref(obj);
    free(out);
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
}

static void test_json_escaping(void **state)
{
    (void)state;
    struct qb_log_command_scope scope;
    json_t *obj;
    char *out;

    qb_log_set_format(QB_LOG_FORMAT_JSON);
    /* a command id that tries to close the string and add a key, with a newline */
    qb_log_command_begin(&scope, "x\",\"level\":\"error\n");
    out = capture(QB_LOG_INFO, "vm\"1\\",
                  "say \"hi\" \\ back\n{\"forged\":1}\r\x1b[31m\x7f\xc2\x9b é 日本 \xff\xc3(");
    qb_log_command_end(&scope);
    assert_null(strchr(out, '\r'));
    assert_null(strchr(out, '\x1b'));
    assert_null(strstr(out, "\xc2\x9b"));
    obj = json_line(out);
    assert_int_equal(json_object_size(obj), 5);
    assert_string_equal(jstr(obj, "level"), "info");
    assert_string_equal(jstr(obj, "vm"), "vm\"1\\");
    assert_string_equal(jstr(obj, "command_id"), "x\",\"level\":\"error\\x0A");
    /* decoded, the message reads as the text format shows it; bytes that are not
       UTF-8 are escaped too, so the line is valid JSON */
    assert_string_equal(jstr(obj, "message"),
                        "say \"hi\" \\ back\\x0A{\"forged\":1}\\x0D\\x1B[31m\\x7F\\xC2\\x9B é 日本 "
                        "\\xFF\\xC3(");
    json_decref(obj);
    free(out);
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
}

static void test_json_longest_line(void **state)
{
    (void)state;
    char text[2048];
    json_t *obj;
    char *out;

    /* every byte escaped, then every backslash doubled: still all of it, one valid line */
    qb_log_set_format(QB_LOG_FORMAT_JSON);
    memset(text, '\n', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    out = capture(QB_LOG_ERROR, "vm1", text);
    obj = json_line(out);
    assert_int_equal(strlen(jstr(obj, "message")), 4 * (sizeof(text) - 1));
    json_decref(obj);
    free(out);

    /* a message cut by the formatting buffer inside a UTF-8 character stays valid JSON */
    memset(text, 'a', sizeof(text) - 1);
    memcpy(text + sizeof(text) - 3, "\xe6\x97", 2); /* the first two bytes of 日 */
    out = capture(QB_LOG_ERROR, NULL, text);
    obj = json_line(out);
    assert_non_null(strstr(jstr(obj, "message"), "aa\\xE6\\x97"));
    json_decref(obj);
    free(out);
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
}

static void test_text_has_no_fields(void **state)
{
    (void)state;
    struct qb_log_command_scope scope;
    const char *previous = qb_log_transport_begin("kafka");
    char *out;

    /* the text format stays as it was: the fields are for JSON and the journal */
    qb_log_command_begin(&scope, "c-7");
    out = capture(QB_LOG_INFO, "vm1", "command stop c-7: ok");
    qb_log_command_end(&scope);
    qb_log_transport_end(previous);
    assert_one_line(out);
    assert_non_null(strstr(out, " info  [vm1] command stop c-7: ok\n"));
    assert_null(strstr(out, "kafka"));
    free(out);
}

/* ---- the context ---- */

/* Logs text in the JSON format and checks the line's transport and command_id (NULL: absent). */
static void assert_context(const char *text, const char *transport, const char *command_id)
{
    char *out;
    json_t *obj;

    qb_log_set_format(QB_LOG_FORMAT_JSON);
    out = capture(QB_LOG_INFO, NULL, text);
    obj = json_line(out);
    if (transport)
        assert_string_equal(jstr(obj, "transport"), transport);
    else
        assert_null(json_object_get(obj, "transport"));
    if (command_id)
        assert_string_equal(jstr(obj, "command_id"), command_id);
    else
        assert_null(json_object_get(obj, "command_id"));
    json_decref(obj);
    free(out);
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
}

static void test_scopes_nest(void **state)
{
    (void)state;
    struct qb_log_command_scope outer, inner;
    const char *t1, *t2;
    char *id = strdup("c-outer");
    char long_id[300];

    t1 = qb_log_transport_begin("mqtt");
    t2 = qb_log_transport_begin("kafka");
    assert_null(t1);
    assert_string_equal(t2, "mqtt");
    qb_log_command_begin(&outer, id);
    free(id); /* the scope keeps its own copy */
    qb_log_command_begin(&inner, "c-inner");
    assert_context("inner", "kafka", "c-inner");
    qb_log_command_end(&inner);
    qb_log_transport_end(t2);
    assert_context("outer", "mqtt", "c-outer");

    /* set names the command of the scope begun without one (cut to the maximum); the end
       restores */
    qb_log_command_begin(&inner, NULL);
    memset(long_id, 'i', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    qb_log_command_set(long_id);
    long_id[QB_LOG_COMMAND_ID_MAX] = '\0';
    assert_context("long", "mqtt", long_id);
    qb_log_command_end(&inner);
    assert_context("outer again", "mqtt", "c-outer");
    qb_log_command_end(&outer);
    qb_log_transport_end(t1);
    assert_context("none", NULL, NULL);
}

static int evaluated;

static int side_effect(void)
{
    return ++evaluated;
}

static void test_level_checked_first(void **state)
{
    (void)state;
    /* a line under the threshold is not formatted: its arguments are not even evaluated */
    qb_log_set_level(QB_LOG_INFO);
    evaluated = 0;
    QB_LOG_DEBUG(NULL, "%d", side_effect());
    assert_int_equal(evaluated, 0);
    qb_log_set_format(QB_LOG_FORMAT_JSON);
    QB_LOG_DEBUG("vm1", "%d", side_effect());
    assert_int_equal(evaluated, 0);
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
}

/* ---- is stderr the journal? ---- */

/*
 * Runs qb_log_stderr_is_journal() with fd 2 on a scratch file and JOURNAL_STREAM
 * "<before><dev><colon><ino + add_to_ino><after>".
 */
static bool journal_check(const char *before, const char *colon, const char *after, long add_to_ino)
{
    char path[] = "/tmp/qb-test-log-XXXXXX", value[64];
    int fd = mkstemp(path), saved = dup(2);
    struct stat st;
    bool is;

    assert_true(fd >= 0 && saved >= 0);
    unlink(path);
    assert_int_equal(fstat(fd, &st), 0);
    snprintf(value, sizeof(value), "%s%llu%s%llu%s", before, (unsigned long long)st.st_dev, colon,
             (unsigned long long)st.st_ino + (unsigned long long)add_to_ino, after);
    assert_int_equal(setenv("JOURNAL_STREAM", value, 1), 0);
    fflush(stderr);
    assert_true(dup2(fd, 2) >= 0);
    is = qb_log_stderr_is_journal();
    qb_log_set_format(QB_LOG_FORMAT_AUTO);
    assert_int_equal(qb_log_get_format(), is ? QB_LOG_FORMAT_JOURNAL : QB_LOG_FORMAT_TEXT);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    close(fd);
    unsetenv("JOURNAL_STREAM");
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
    return is;
}

static void test_stderr_is_journal(void **state)
{
    (void)state;
    assert_true(journal_check("", ":", "", 0));
    assert_false(journal_check("", ":", "", 1));  /* another file */
    assert_false(journal_check("", ":", "x", 0)); /* trailing junk */
    assert_false(journal_check("", "", "", 0));   /* no colon */
    assert_false(journal_check(" ", ":", "", 0)); /* not a number first */
    assert_false(journal_check("", ":-", "", 0)); /* a sign */
    unsetenv("JOURNAL_STREAM");
    assert_false(qb_log_stderr_is_journal());
    assert_string_equal(qb_log_format_name(QB_LOG_FORMAT_JOURNAL), "journal");
    assert_string_equal(qb_log_format_name(QB_LOG_FORMAT_AUTO), "auto");
}

/* A failed case leaves no JSON format or scope behind for the next one. */
static int back_to_text(void **state)
{
    (void)state;
    qb_log_set_format(QB_LOG_FORMAT_TEXT);
    qb_log_set_level(QB_LOG_INFO);
    qb_log_transport_end(NULL);
    qb_log_command_set(NULL);
    unsetenv("JOURNAL_STREAM");
    return 0;
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
        cmocka_unit_test_teardown(test_json_fields, back_to_text),
        cmocka_unit_test_teardown(test_json_escaping, back_to_text),
        cmocka_unit_test_teardown(test_json_longest_line, back_to_text),
        cmocka_unit_test_teardown(test_text_has_no_fields, back_to_text),
        cmocka_unit_test_teardown(test_scopes_nest, back_to_text),
        cmocka_unit_test_teardown(test_level_checked_first, back_to_text),
        cmocka_unit_test_teardown(test_stderr_is_journal, back_to_text),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
