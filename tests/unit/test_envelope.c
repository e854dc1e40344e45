/*
 * test_envelope.c - the envelope's exact bytes, escaping, time and numbering.
 *
 * Consumers and retried publishes depend on byte-identical output, so the
 * first test compares bytes, not parsed JSON.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <regex.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envelope.h"
#include "error.h"

static const struct qb_envelope_ctx ctx = {"host-a", "file:///usr/share/qmp-bridge/schema/v1/"};

static char *build(const struct qb_envelope_in *in)
{
    char *out = NULL;
    size_t len = 0;

    assert_int_equal(qb_envelope_build(&ctx, in, &out, &len), QB_OK);
    assert_non_null(out);
    assert_int_equal(strlen(out), len);
    return out;
}

static void test_exact_bytes(void **state)
{
    json_t *data = json_pack("{s:s, s:b, s:{s:s, s:s, s:s, s:s}}", "reason", "io-error", "x", 1,
                             "cause", "device", "", "node_name", "#block146", "errno", "enospc",
                             "io_status", "nospace");
    struct qb_envelope_in in = {.vm = "vm1",
                                .type = "qmp.vm.stopped",
                                .epoch = 0x18f2a3b4c5d6eULL,
                                .sequence = 42,
                                .ts_sec = 1732242124,
                                .ts_usec = 461230,
                                .data = data};
    char *out;

    (void)state;
    json_object_del(data, "x");
    out = build(&in);
    assert_string_equal(
        out,
        "{\"specversion\":\"1.0\",\"id\":\"18f2a3b4c5d6e-42\",\"source\":\"qmp-bridge://host-a/"
        "vm1\","
        "\"type\":\"qmp.vm.stopped\",\"subject\":\"vm1\",\"time\":\"2024-11-22T02:22:04.461230Z\","
        "\"datacontenttype\":\"application/json\","
        "\"dataschema\":\"file:///usr/share/qmp-bridge/schema/v1/qmp.vm.stopped.json\","
        "\"sequence\":\"00000000000000000042\",\"partitionkey\":\"host-a/"
        "vm1\",\"bridge\":\"host-a\","
        "\"data\":{\"reason\":\"io-error\",\"cause\":{\"device\":\"\",\"node_name\":\"#block146\","
        "\"errno\":\"enospc\",\"io_status\":\"nospace\"}}}");
    free(out);
    json_decref(data);
}

static void test_escaping(void **state)
{
    /* quote, backslash, control characters, DEL and UTF-8 (e-acute, snowman). */
    const char *vm = "a\"b\\c\x01\n\t\x1f\x7f \xc3\xa9\xe2\x98\x83";
    struct qb_envelope_in in = {
        .vm = vm, .type = "qmp.\"x", .epoch = 1, .sequence = 1, .ts_sec = 0, .ts_usec = 0};
    json_error_t err;
    json_t *j;
    char *out;

    (void)state;
    out = build(&in);
    assert_non_null(strstr(out, "\"subject\":\"a\\\"b\\\\c\\u0001\\u000a\\u0009\\u001f\x7f "
                                "\xc3\xa9\xe2\x98\x83\""));
    assert_non_null(strstr(out, "\"type\":\"qmp.\\\"x\""));
    assert_null(strchr(out, '\n'));
    /* And it parses back to the same strings. */
    j = json_loads(out, 0, &err);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "subject")), vm);
    assert_string_equal(json_string_value(json_object_get(j, "type")), "qmp.\"x");
    assert_string_equal(json_string_value(json_object_get(j, "partitionkey")),
                        "host-a/a\"b\\c\x01\n\t\x1f\x7f \xc3\xa9\xe2\x98\x83");
    assert_true(json_is_object(json_object_get(j, "data")));
    assert_int_equal(json_object_size(json_object_get(j, "data")), 0);
    json_decref(j);
    free(out);
}

static void test_time_format(void **state)
{
    char buf[40];
    regex_t re;
    time_t before = time(NULL);
    int year;

    (void)state;
    assert_string_equal(qb_envelope_format_time(0, 0, buf, sizeof(buf)),
                        "1970-01-01T00:00:00.000000Z");
    assert_string_equal(qb_envelope_format_time(1732242124, 5, buf, sizeof(buf)),
                        "2024-11-22T02:22:04.000005Z");
    assert_string_equal(qb_envelope_format_time(1732242124, 999999, buf, sizeof(buf)),
                        "2024-11-22T02:22:04.999999Z");
    /* 2000-02-29 (leap day) 23:59:59 */
    assert_string_equal(qb_envelope_format_time(951868799, 120, buf, sizeof(buf)),
                        "2000-02-29T23:59:59.000120Z");
    /* An out-of-range microsecond value carries into the seconds. */
    assert_string_equal(qb_envelope_format_time(0, 1500000, buf, sizeof(buf)),
                        "1970-01-01T00:00:01.500000Z");

    /* Negative seconds mean "now". */
    qb_envelope_format_time(-1, 0, buf, sizeof(buf));
    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    assert_int_equal(regexec(&re, buf, 0, NULL, 0), 0);
    regfree(&re);
    year = atoi(buf);
    {
        struct tm tm;

        gmtime_r(&before, &tm);
        assert_true(year >= tm.tm_year + 1900);
    }
}

static void test_sequence_and_suffix(void **state)
{
    struct qb_envelope_in in = {.vm = "vm1",
                                .type = "qmp.vm.state",
                                .epoch = 0xabcdef,
                                .sequence = UINT64_MAX,
                                .id_suffix = ".state",
                                .ts_sec = 1,
                                .ts_usec = 0};
    char *out;

    (void)state;
    out = build(&in);
    assert_non_null(strstr(out, "\"id\":\"abcdef-18446744073709551615.state\""));
    assert_non_null(strstr(out, "\"sequence\":\"18446744073709551615\""));
    free(out);

    in.sequence = 0;
    in.id_suffix = NULL;
    in.epoch = 0;
    out = build(&in);
    assert_non_null(strstr(out, "\"id\":\"0-0\""));
    assert_non_null(strstr(out, "\"sequence\":\"00000000000000000000\""));
    free(out);

    in.sequence = 7;
    out = build(&in);
    assert_non_null(strstr(out, "\"sequence\":\"00000000000000000007\""));
    free(out);
}

static void test_invalid(void **state)
{
    struct qb_envelope_in in = {.vm = NULL, .type = "qmp.vm.state", .epoch = 1, .sequence = 1};
    char *out = (char *)"sentinel";
    size_t len = 99;

    (void)state;
    assert_int_equal(qb_envelope_build(&ctx, &in, &out, &len), QB_EINVAL);
    assert_null(out);
    assert_int_equal(len, 0);
    in.vm = "vm1";
    in.type = NULL;
    assert_int_equal(qb_envelope_build(&ctx, &in, &out, &len), QB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_bytes), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_time_format), cmocka_unit_test(test_sequence_and_suffix),
        cmocka_unit_test(test_invalid),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
