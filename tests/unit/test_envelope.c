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
    /* Before 1970 is a time like any other. */
    assert_string_equal(qb_envelope_format_time(-1, 0, buf, sizeof(buf)),
                        "1969-12-31T23:59:59.000000Z");

    /* QB_ENVELOPE_TIME_NOW means "now". */
    qb_envelope_format_time(QB_ENVELOPE_TIME_NOW, 0, buf, sizeof(buf));
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

/* True when text is "YYYY-..." of the bridge's clock: a year between now - 1 and now + 1. */
static bool is_now(const char *text)
{
    regex_t re;
    struct tm tm;
    time_t now = time(NULL);
    int year = atoi(text);
    bool shaped;

    assert_int_equal(regcomp(&re,
                             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    shaped = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    gmtime_r(&now, &tm);
    return shaped && year >= tm.tm_year + 1900 - 1 && year <= tm.tm_year + 1900 + 1;
}

/*
 * The first and last instants of years 0001-9999 are formatted; one second
 * (or microsecond) outside, and values that would overflow, give the bridge's
 * clock instead of a year the schema's date-time refuses.
 */
static void test_time_bounds(void **state)
{
    static const struct {
        int64_t sec;
        int32_t usec;
    } outside[] = {
        {QB_ENVELOPE_TIME_MIN_SEC - 1, 999999},
        {QB_ENVELOPE_TIME_MAX_SEC + 1, 0},
        {QB_ENVELOPE_TIME_MIN_SEC, -1},
        {QB_ENVELOPE_TIME_MAX_SEC, 1000000},
        {INT64_MAX, INT32_MAX}, /* overflowed when carried into the seconds */
        {INT64_MAX, INT32_MIN},
        {INT64_MIN, 0},              /* QB_ENVELOPE_TIME_NOW */
        {INT64_C(1000000000000), 0}, /* year 33658 */
        {0, 1500000},
    };
    char buf[40];

    (void)state;
    assert_string_equal(qb_envelope_format_time(QB_ENVELOPE_TIME_MIN_SEC, 0, buf, sizeof(buf)),
                        "0001-01-01T00:00:00.000000Z");
    assert_string_equal(qb_envelope_format_time(QB_ENVELOPE_TIME_MAX_SEC, 999999, buf, sizeof(buf)),
                        "9999-12-31T23:59:59.999999Z");
    assert_true(qb_envelope_time_valid(QB_ENVELOPE_TIME_MIN_SEC, 0));
    assert_true(qb_envelope_time_valid(QB_ENVELOPE_TIME_MAX_SEC, 999999));
    for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++) {
        assert_false(qb_envelope_time_valid(outside[i].sec, outside[i].usec));
        qb_envelope_format_time(outside[i].sec, outside[i].usec, buf, sizeof(buf));
        if (!is_now(buf))
            fail_msg("(%lld, %d) gave %s, not the bridge's clock", (long long)outside[i].sec,
                     (int)outside[i].usec, buf);
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

/* Returns the envelope's "data" text: everything after ,"data": up to the closing brace. */
static char *data_text(const json_t *data)
{
    struct qb_envelope_in in = {
        .vm = "vm1", .type = "qmp.event", .epoch = 1, .sequence = 1, .ts_sec = 0, .data = data};
    static const char key[] = ",\"data\":";
    char *out = NULL;
    size_t out_len = 0;
    size_t at;

    assert_int_equal(qb_envelope_build(&ctx, &in, &out, &out_len), QB_OK);
    at = (size_t)(strstr(out, key) - out);
    size_t len = out_len - at - (sizeof(key) - 1) - 1; /* less the envelope's closing brace */
    char *text = malloc(len + 1);

    assert_non_null(text);
    memcpy(text, out + at + sizeof(key) - 1, len);
    text[len] = '\0';
    free(out);
    return text;
}

/*
 * The envelope writes data itself instead of calling json_dumps, so
 * its bytes must stay exactly what json_dumps(JSON_COMPACT | JSON_ENCODE_ANY)
 * wrote: every escape, number form, nesting and key order.
 */
static void test_data_matches_json_dumps(void **state)
{
    static const char *const cases[] = {
        "{}",
        "[]",
        "{\"a\":[],\"b\":{},\"c\":[[],[{}]]}",
        "{\"s\":\"plain ascii text that is longer than eight bytes\"}",
        "{\"q\":\"\\\"quoted\\\" and \\\\back\\\\slash/\"}",
        "{\"c\":\"\\b\\f\\n\\r\\t\\u0000\\u0001\\u001f\\u007f x\"}",
        "{\"u\":\"caf\\u00e9 \\u2028 \\ud83d\\ude00 \\u00ff\"}",
        "{\"k\\\"ey\\n\":1,\"\\u0001ctl\":2}",
        "{\"i\":[0,-1,1,9223372036854775807,-9223372036854775808,42]}",
        "{\"r\":[0.5,1.0,-2.25,1e+300,3.141592653589793,1e-07]}",
        "{\"t\":true,\"f\":false,\"n\":null}",
        "{\"z\":{\"y\":{\"x\":[1,\"two\",{\"three\":3}]}},\"a\":\"last\"}",
        "[\"0123456\\\"\",\"01234567\\\\\",\"012345678\\n\",\"\\u001f0123456789abcdef\"]",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_error_t err;
        json_t *v = json_loads(cases[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        char *want;
        char *got;

        assert_non_null(v);
        want = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        assert_non_null(want);
        got = data_text(v);
        assert_string_equal(got, want);
        free(got);
        free(want);
        json_decref(v);
    }
}

/* A reference cycle cannot be written: QB_EINVAL, as json_dumps refused it before. */
static void test_data_cycle(void **state)
{
    json_t *a = json_array();
    json_t *o = json_object();
    struct qb_envelope_in in = {
        .vm = "vm1", .type = "qmp.event", .epoch = 1, .sequence = 1, .data = o};
    char *out = NULL;
    size_t len = 0;

    (void)state;
    json_object_set(o, "loop", a);
    json_array_append(a, o);
    assert_int_equal(qb_envelope_build(&ctx, &in, &out, &len), QB_EINVAL);
    assert_null(out);
    json_array_clear(a); /* breaks the cycle so both are freed */
    json_decref(a);
    json_decref(o);
}

/* The per-second date cache must not leak one second's text into another's. */
static void test_time_cache(void **state)
{
    char buf[40];

    (void)state;
    for (int64_t t = 1732242120; t < 1732242130; t++) {
        struct tm tm;
        time_t tt = (time_t)t;
        char want[40];

        gmtime_r(&tt, &tm);
        strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%S.000007Z", &tm);
        assert_string_equal(qb_envelope_format_time(t, 7, buf, sizeof(buf)), want);
        assert_string_equal(qb_envelope_format_time(t, 7, buf, sizeof(buf)), want);
    }
    /* Truncation keeps snprintf's contract: at most buflen - 1 bytes and a NUL. */
    assert_string_equal(qb_envelope_format_time(0, 0, buf, 11), "1970-01-01");
}

/* Ids are composed by hand (once per envelope); compare with snprintf at every buffer size. */
static void test_format_id(void **state)
{
    static const struct {
        uint64_t epoch, seq;
        const char *suffix;
    } cases[] = {
        {0x660d7f0856811ull, 2, NULL},
        {0xabcdefull, UINT64_MAX, ".state"},
        {UINT64_MAX, UINT64_MAX, ".state"},
        {0, 0, ""},
        {1, 10, ".a-much-longer-suffix-than-any-we-use"},
    };
    char got[96], want[96];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char hex[32];

        snprintf(hex, sizeof(hex), "%llx", (unsigned long long)cases[i].epoch);
        for (size_t n = 1; n <= sizeof(got); n++) {
            snprintf(want, n, "%s-%llu%s", hex, (unsigned long long)cases[i].seq,
                     cases[i].suffix ? cases[i].suffix : "");
            memset(got, 'x', sizeof(got));
            assert_ptr_equal(
                qb_envelope_format_id(cases[i].epoch, cases[i].seq, cases[i].suffix, got, n), got);
            assert_string_equal(got, want);
        }
    }
    got[0] = 'x';
    qb_envelope_format_id(1, 1, NULL, got, 0); /* no room: nothing written */
    assert_int_equal(got[0], 'x');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_bytes), cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_time_format), cmocka_unit_test(test_sequence_and_suffix),
        cmocka_unit_test(test_invalid),     cmocka_unit_test(test_data_matches_json_dumps),
        cmocka_unit_test(test_data_cycle),  cmocka_unit_test(test_time_cache),
        cmocka_unit_test(test_format_id),   cmocka_unit_test(test_time_bounds),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
