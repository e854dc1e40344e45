/*
 * test_command.c - inbound command parsing, policy and signatures (bridge/command.c).
 *
 * The rejections table is the catalogue of what a sender can get wrong: each
 * row is a message and the exact class and reason it must produce, in the
 * order the parser checks. The clock is fixed at NOW (2025-11-22T03:00:00Z)
 * so age checks are exact. Known-answer signatures were computed with
 * `openssl dgst -sha256 -hmac`, independently of the code under test.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "command.h"
#include "error.h"

#define NOW INT64_C(1763780400) /* 2025-11-22T03:00:00Z */
#define T_NOW "2025-11-22T03:00:00Z"
#define KEY "0123456789abcdef-test-key"

/* A valid command's attributes; type and data vary per case. */
#define HEAD(type)                                                                                 \
    "{\"specversion\":\"1.0\",\"id\":\"c-1\",\"source\":\"ops\",\"type\":\"" type "\","
#define CMD(type, data) HEAD(type) "\"subject\":\"vm1\",\"time\":\"" T_NOW "\",\"data\":" data "}"

/* 64 bytes, to build over-long strings */
#define S64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static struct qb_command_policy open_policy(void)
{
    return (struct qb_command_policy){
        .enabled = true,
        .allow_mask = (1u << QB_CMD__COUNT) - 1,
        .max_age_ms = 300000,
        .max_skew_ms = 60000,
        .max_message_bytes = 65536,
    };
}

static struct qb_command_policy keyed_policy(void)
{
    struct qb_command_policy p = open_policy();

    p.hmac_key = (const unsigned char *)KEY;
    p.hmac_key_len = strlen(KEY);
    return p;
}

/* Parses text, expects success; caller frees. */
static struct qb_command *parse_ok_with(const struct qb_command_policy *p, const char *text)
{
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;
    int rc = qb_command_parse(text, strlen(text), p, NOW, &cmd, &err);

    if (rc != QB_OK)
        fail_msg("rejected %s: %s: %s", text, err.cls, err.message);
    assert_non_null(cmd);
    return cmd;
}

static struct qb_command *parse_ok(const char *text)
{
    struct qb_command_policy p = open_policy();

    return parse_ok_with(&p, text);
}

/* Parses buf (len bytes), expects a rejection with exactly cls and message. */
static void expect_reject_len(const struct qb_command_policy *p, const char *buf, size_t len,
                              const char *cls, const char *message)
{
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;
    int rc = qb_command_parse(buf, len, p, NOW, &cmd, &err);

    if (rc != QB_EINVAL || !err.cls || strcmp(err.cls, cls) != 0 ||
        strcmp(err.message, message) != 0)
        fail_msg("input %.200s\n  rc %d\n  got      %s \"%s\"\n  expected %s \"%s\"", buf, rc,
                 err.cls ? err.cls : "(null)", err.message, cls, message);
    assert_non_null(cmd); /* a rejection still hands back what it could read */
    qb_command_free(cmd);
}

static void expect_reject(const struct qb_command_policy *p, const char *text, const char *cls,
                          const char *message)
{
    expect_reject_len(p, text, strlen(text), cls, message);
}

/* ---- the catalogue ---- */

struct rejection {
    const char *text;
    const char *cls;
    const char *message;
};

static const struct rejection rejections[] = {
    /* JSON */
    {"", "invalid",
     "message: invalid JSON at line 1 column 0: '[' or '{' expected near end of file"},
    {"{\"specversion\":\"1.0\",\"id\":", "invalid",
     "message: invalid JSON at line 1 column 26: unexpected token near end of file"},
    {"[1]", "invalid", "message: expected a JSON object"},
    {"{\"id\":\"a\",\"id\":\"b\"}", "invalid",
     "message: invalid JSON at line 1 column 14: duplicate object key near '\"id\"'"},
    {"{\"id\":\"\\u0000\"}", "invalid",
     "message: invalid JSON at line 1 column 14: \\u0000 is not allowed without JSON_ALLOW_NUL "
     "near '\"\\u0000\"'"},
    {"{\"id\":\"\xff\"}", "invalid",
     "message: invalid JSON at line 1 column 7: unable to decode byte 0xff near '\"'"},
    /* jansson quotes the raw token; the message must stay printable ASCII */
    {"{\"id\":\xc3\xa9}", "invalid",
     "message: invalid JSON at line 1 column 7: invalid token near '?"
     "?'"},
    {"{\"a\":[[[[[[[[1]]]]]]]]}", "invalid", "message: JSON nested deeper than 8 levels"},
    /* attributes, in the parser's order */
    {"{}", "invalid", "specversion: expected \"1.0\""},
    {"{\"specversion\":\"0.3\"}", "invalid", "specversion: expected \"1.0\""},
    {"{\"specversion\":\"1.0\",\"extra\":1}", "invalid", "extra: unknown attribute"},
    {"{\"specversion\":\"1.0\"}", "invalid", "id: required attribute is missing"},
    {"{\"specversion\":\"1.0\",\"id\":7}", "invalid", "id: expected a non-empty string"},
    {"{\"specversion\":\"1.0\",\"id\":\"\"}", "invalid", "id: expected a non-empty string"},
    {"{\"specversion\":\"1.0\",\"id\":\"x1234567890123456789012345678901234567890123456789012345"
     "678901234567890123456789012345678901234567890123456789012345678901234567890\"}",
     "invalid", "id: longer than 128 bytes"},
    {"{\"specversion\":\"1.0\",\"id\":\"c\"}", "invalid", "source: required attribute is missing"},
    {"{\"specversion\":\"1.0\",\"id\":\"c\",\"source\":\"" S64 S64 S64 S64 "x\"}", "invalid",
     "source: longer than 256 bytes"},
    {"{\"specversion\":\"1.0\",\"id\":\"c\",\"source\":\"s\"}", "invalid",
     "type: required attribute is missing"},
    {"{\"specversion\":\"1.0\",\"id\":\"c\",\"source\":\"s\",\"type\":\"qmp.block.io_error\"}",
     "invalid", "type: expected qmp.command.<name>, got 'qmp.block.io_error'"},
    {HEAD("qmp.command.cont") "\"time\":\"" T_NOW "\"}", "invalid",
     "subject: required attribute is missing"},
    {HEAD("qmp.command.cont") "\"subject\":\"../vm1\",\"time\":\"" T_NOW "\"}", "invalid",
     "subject: expected a VM name (1 to 64 characters from [A-Za-z0-9._-])"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\"}", "invalid",
     "time: required attribute is missing"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"yesterday\"}", "invalid",
     "time: expected an RFC 3339 date-time, got 'yesterday'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:00:00\"}", "invalid",
     "time: expected an RFC 3339 date-time, got '2025-11-22T03:00:00'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-02-29T03:00:00Z\"}", "invalid",
     "time: expected an RFC 3339 date-time, got '2025-02-29T03:00:00Z'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T24:00:00Z\"}", "invalid",
     "time: expected an RFC 3339 date-time, got '2025-11-22T24:00:00Z'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:00:00.Z\"}", "invalid",
     "time: expected an RFC 3339 date-time, got '2025-11-22T03:00:00.Z'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:00:00+0100\"}",
     "invalid", "time: expected an RFC 3339 date-time, got '2025-11-22T03:00:00+0100'"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW "\",\"bridge\":1}", "invalid",
     "bridge: expected a string"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW "\",\"signature\":[]}",
     "invalid", "signature: expected a string"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                              "\",\"datacontenttype\":\"text/plain\"}",
     "invalid", "datacontenttype: expected \"application/json\""},
    /* the command set */
    {CMD("qmp.command.reboot", "{}"), "unknown-command",
     "type: unknown command 'qmp.command.reboot'"},
    {CMD("qmp.command.", "{}"), "unknown-command", "type: unknown command 'qmp.command.'"},
    {CMD("qmp.command.query-status", "{}"), "unknown-command",
     "type: unknown command 'qmp.command.query-status'"},
    /* age: 301 s old, 61 s ahead */
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T02:54:59Z\"}", "expired",
     "time: older than max_age 300s"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:01:01Z\"}", "expired",
     "time: more than max_skew 60s in the future"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"0001-01-01T00:00:00Z\"}", "expired",
     "time: older than max_age 300s"},
    {HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"9999-12-31T23:59:59Z\"}", "expired",
     "time: more than max_skew 60s in the future"},
    /* arguments */
    {CMD("qmp.command.cont", "[]"), "invalid", "data: expected an object"},
    {CMD("qmp.command.cont", "null"), "invalid", "data: expected an object"},
    {CMD("qmp.command.cont", "{\"foo\":1}"), "invalid", "data.foo: unknown argument"},
    {CMD("qmp.command.resize-and-cont", "{\"size\":1048576}"), "invalid",
     "data: exactly one of device, node_name is required"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"node_name\":\"n\",\"size\":1}"),
     "invalid", "data: exactly one of device, node_name is required"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\"}"), "invalid",
     "data: exactly one of size, grow_by is required"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":1,\"grow_by\":1}"), "invalid",
     "data: exactly one of size, grow_by is required"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":0}"), "invalid",
     "data.size: expected an integer >= 1"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":-5}"), "invalid",
     "data.size: expected an integer >= 1"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":\"1G\"}"), "invalid",
     "data.size: expected an integer >= 1"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":1.5}"), "invalid",
     "data.size: expected an integer >= 1"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"grow_by\":null}"), "invalid",
     "data.grow_by: expected an integer >= 1"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"\",\"size\":1}"), "invalid",
     "data.device: expected a non-empty string of at most 128 bytes"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":1,\"force\":\"yes\"}"),
     "invalid", "data.force: expected true or false"},
    {CMD("qmp.command.resize-and-cont", "{\"device\":\"d\",\"size\":1,\"sizes\":1}"), "invalid",
     "data.sizes: unknown argument"},
    {CMD("qmp.command.block-job-cancel", "{}"), "invalid",
     "data.job: required argument is missing"},
    {HEAD("qmp.command.block-job-cancel") "\"subject\":\"vm1\",\"time\":\"" T_NOW "\"}", "invalid",
     "data.job: required argument is missing"},
    {CMD("qmp.command.block-job-pause", "{\"job\":5}"), "invalid",
     "data.job: expected a non-empty string of at most 128 bytes"},
    {CMD("qmp.command.set-write-threshold", "{\"threshold\":1}"), "invalid",
     "data.node_name: required argument is missing"},
    {CMD("qmp.command.set-write-threshold", "{\"node_name\":\"n\",\"threshold\":-1}"), "invalid",
     "data.threshold: expected an integer >= 0"},
    {CMD("qmp.command.set-write-threshold", "{\"node_name\":\"n\"}"), "invalid",
     "data.threshold: required argument is missing"},
};

static void test_rejections(void **state)
{
    struct qb_command_policy p = open_policy();

    (void)state;
    for (size_t i = 0; i < sizeof(rejections) / sizeof(rejections[0]); i++)
        expect_reject(&p, rejections[i].text, rejections[i].cls, rejections[i].message);
}

/* A rejected command still names itself, so the result can carry its id. */
static void test_rejection_keeps_id(void **state)
{
    struct qb_command_policy p = open_policy();
    static const char text[] = CMD("qmp.command.cont", "{\"foo\":1}");
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;

    (void)state;
    assert_int_equal(qb_command_parse(text, strlen(text), &p, NOW, &cmd, &err), QB_EINVAL);
    assert_string_equal(cmd->id, "c-1");
    assert_string_equal(cmd->subject, "vm1");
    assert_string_equal(cmd->source, "ops");
    assert_string_equal(cmd->type, "qmp.command.cont");
    assert_true(cmd->name_known);
    assert_int_equal(cmd->name, QB_CMD_CONT);
    qb_command_free(cmd);

    /* unreadable: nothing to name */
    assert_int_equal(qb_command_parse("{", 1, &p, NOW, &cmd, &err), QB_EINVAL);
    assert_null(cmd->id);
    assert_false(cmd->name_known);
    qb_command_free(cmd);
}

static void test_policy(void **state)
{
    struct qb_command_policy p = open_policy();
    static const char stop[] = CMD("qmp.command.stop", "{}");

    (void)state;
    p.enabled = false;
    expect_reject(&p, stop, "disabled", "commands are disabled on this bridge");
    /* an unknown command is named as such even when disabled: the name check comes first */
    expect_reject(&p, CMD("qmp.command.reboot", "{}"), "unknown-command",
                  "type: unknown command 'qmp.command.reboot'");
    p = open_policy();
    p.allow_mask = 1u << QB_CMD_CONT;
    expect_reject(&p, stop, "forbidden", "type: command 'stop' is not in commands.allow");
    qb_command_free(parse_ok_with(&p, CMD("qmp.command.cont", "{}")));
    /* edges of the age window are inside it */
    p = open_policy();
    qb_command_free(parse_ok_with(
        &p, HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T02:55:00Z\"}"));
    qb_command_free(parse_ok_with(
        &p, HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:01:00Z\"}"));
    p.max_age_ms = 10000;
    expect_reject(&p,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"2025-11-22T02:59:49Z\"}",
                  "expired", "time: older than max_age 10s");
}

static void test_too_large(void **state)
{
    struct qb_command_policy p = open_policy();
    static const char text[] = CMD("qmp.command.cont", "{}");
    size_t len = strlen(text);

    (void)state;
    p.max_message_bytes = len;
    qb_command_free(parse_ok_with(&p, text));
    p.max_message_bytes = len - 1;
    {
        char expected[128];

        snprintf(expected, sizeof(expected), "message: %zu bytes is over max_message_bytes %zu",
                 len, len - 1);
        expect_reject(&p, text, "too-large", expected);
    }
}

/* 10000-deep nesting must be refused by the pre-scan, in and out of a data member. */
static void test_deep_nesting(void **state)
{
    struct qb_command_policy p = open_policy();
    size_t depth = 10000, len = 2 * depth;
    char *buf = malloc(len + 64);

    (void)state;
    assert_non_null(buf);
    memset(buf, '[', depth);
    memset(buf + depth, ']', depth);
    expect_reject_len(&p, buf, len, "invalid", "message: JSON nested deeper than 8 levels");
    /* unbalanced and truncated: still one clean error */
    expect_reject_len(&p, buf, depth, "invalid", "message: JSON nested deeper than 8 levels");
    /* brackets inside a string are not nesting */
    strcpy(buf, CMD("qmp.command.block-job-cancel", "{\"job\":\"[[[[[[[[[[[[{{{{{\\\"\"}"));
    {
        struct qb_command *cmd = parse_ok_with(&p, buf);

        assert_string_equal(cmd->job, "[[[[[[[[[[[[{{{{{\"");
        qb_command_free(cmd);
    }
    free(buf);
}

/* Every prefix of a valid command is refused cleanly (ASan checks the reads). */
static void test_truncated(void **state)
{
    struct qb_command_policy p = open_policy();
    static const char text[] =
        CMD("qmp.command.resize-and-cont", "{\"device\":\"virtio0\",\"grow_by\":1024}");
    size_t len = strlen(text);

    (void)state;
    for (size_t n = 0; n < len; n++) {
        char *copy = malloc(n ? n : 1); /* exact size: a read past n is an ASan error */
        struct qb_command_error err = {0};
        struct qb_command *cmd = NULL;

        assert_non_null(copy);
        memcpy(copy, text, n);
        assert_int_equal(qb_command_parse(copy, n, &p, NOW, &cmd, &err), QB_EINVAL);
        assert_string_equal(err.cls, "invalid");
        assert_non_null(strstr(err.message, "message: invalid JSON"));
        qb_command_free(cmd);
        free(copy);
    }
}

/* ---- valid commands ---- */

static void test_valid_each_command(void **state)
{
    struct qb_command *cmd;

    (void)state;
    cmd = parse_ok(CMD("qmp.command.resize-and-cont",
                       "{\"device\":\"virtio0\",\"size\":21474836480,\"force\":true}"));
    assert_int_equal(cmd->name, QB_CMD_RESIZE_AND_CONT);
    assert_true(cmd->name_known);
    assert_string_equal(cmd->id, "c-1");
    assert_string_equal(cmd->source, "ops");
    assert_string_equal(cmd->subject, "vm1");
    assert_string_equal(cmd->type, "qmp.command.resize-and-cont");
    assert_null(cmd->bridge);
    assert_int_equal(cmd->time_sec, NOW);
    assert_true(json_is_object(cmd->data));
    assert_string_equal(cmd->device, "virtio0");
    assert_null(cmd->node_name);
    assert_true(cmd->has_size);
    assert_false(cmd->has_grow_by);
    assert_int_equal(cmd->size, UINT64_C(21474836480));
    assert_true(cmd->force);
    qb_command_free(cmd);

    cmd = parse_ok(CMD("qmp.command.resize-and-cont", "{\"node_name\":\"drive0\",\"grow_by\":4096,"
                                                      "\"force\":false}"));
    assert_null(cmd->device);
    assert_string_equal(cmd->node_name, "drive0");
    assert_false(cmd->has_size);
    assert_true(cmd->has_grow_by);
    assert_int_equal(cmd->grow_by, 4096);
    assert_false(cmd->force);
    qb_command_free(cmd);

    {
        static const struct {
            const char *text;
            enum qb_cmd_name name;
        } simple[] = {
            {CMD("qmp.command.cont", "{}"), QB_CMD_CONT},
            {HEAD("qmp.command.stop") "\"subject\":\"vm1\",\"time\":\"" T_NOW "\"}", QB_CMD_STOP},
            {CMD("qmp.command.colo-lost-heartbeat", "{}"), QB_CMD_COLO_LOST_HEARTBEAT},
            {CMD("qmp.command.query-state", "{}"), QB_CMD_QUERY_STATE},
        };

        for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++) {
            cmd = parse_ok(simple[i].text);
            assert_int_equal(cmd->name, simple[i].name);
            qb_command_free(cmd);
        }
    }
    {
        static const struct {
            const char *text;
            enum qb_cmd_name name;
        } jobs[] = {
            {CMD("qmp.command.block-job-resume", "{\"job\":\"j1\"}"), QB_CMD_BLOCK_JOB_RESUME},
            {CMD("qmp.command.block-job-pause", "{\"job\":\"j1\"}"), QB_CMD_BLOCK_JOB_PAUSE},
            {CMD("qmp.command.block-job-cancel", "{\"job\":\"j1\"}"), QB_CMD_BLOCK_JOB_CANCEL},
            {CMD("qmp.command.block-job-complete", "{\"job\":\"j1\"}"), QB_CMD_BLOCK_JOB_COMPLETE},
        };

        for (size_t i = 0; i < sizeof(jobs) / sizeof(jobs[0]); i++) {
            cmd = parse_ok(jobs[i].text);
            assert_int_equal(cmd->name, jobs[i].name);
            assert_string_equal(cmd->job, "j1");
            qb_command_free(cmd);
        }
    }

    cmd =
        parse_ok(CMD("qmp.command.set-write-threshold", "{\"node_name\":\"n0\",\"threshold\":0}"));
    assert_int_equal(cmd->name, QB_CMD_SET_WRITE_THRESHOLD);
    assert_string_equal(cmd->node_name, "n0");
    assert_int_equal(cmd->threshold, 0);
    qb_command_free(cmd);

    /* optional attributes */
    cmd = parse_ok(HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                            "\",\"bridge\":\"host-a\",\"datacontenttype\":"
                                            "\"application/json\",\"dataschema\":\"x.json\"}");
    assert_string_equal(cmd->bridge, "host-a");
    assert_null(cmd->data);
    qb_command_free(cmd);
}

/* RFC 3339 forms that name the same instant, and the leap second. */
static void test_time_forms(void **state)
{
    static const struct {
        const char *time;
        int64_t sec;
    } forms[] = {
        {"2025-11-22T03:00:00Z", NOW},           {"2025-11-22t03:00:00z", NOW},
        {"2025-11-22T03:00:00.123456789Z", NOW}, {"2025-11-22T04:00:00+01:00", NOW},
        {"2025-11-22T02:30:00-00:30", NOW},      {"2025-11-21T22:00:30.5-05:00", NOW + 30},
        {"2025-11-22T02:59:60Z", NOW},
    };
    char text[512];

    (void)state;
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        struct qb_command *cmd;

        snprintf(text, sizeof(text),
                 HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"%s\"}", forms[i].time);
        cmd = parse_ok(text);
        if (cmd->time_sec != forms[i].sec)
            fail_msg("%s: got %lld, expected %lld", forms[i].time, (long long)cmd->time_sec,
                     (long long)forms[i].sec);
        qb_command_free(cmd);
    }
}

/* ---- signatures ---- */

/* The canonical form and key from the file comment, checked against openssl dgst. */
static void test_sign_known_answer(void **state)
{
    static const char text[] = "{\"type\":\"qmp.command.block-job-resume\",\"time\":\"" T_NOW
                               "\",\"subject\":\"vm1\",\"specversion\":\"1.0\",\"source\":\"ops\","
                               "\"id\":\"c-1\",\"data\":{\"job\":\"j1\"},\"signature\":\"zz\"}";
    json_t *obj = json_loads(text, 0, NULL);
    char hex[65];

    (void)state;
    assert_non_null(obj);
    assert_int_equal(
        qb_command_sign(obj, (const unsigned char *)KEY, strlen(KEY), hex, sizeof(hex)), QB_OK);
    assert_string_equal(hex, "8ae7d2ee17d09627ee7243705e7ef82b38f176c324df2e757f00081461f03317");
    /* the caller's object is untouched */
    assert_string_equal(json_string_value(json_object_get(obj, "signature")), "zz");
    assert_int_equal(qb_command_sign(obj, (const unsigned char *)KEY, strlen(KEY), hex, 64),
                     QB_EINVAL);
    json_decref(obj);
}

/*
 * Builds a signed command for bridge host-a (bridge NULL: one that names no
 * bridge); flags pretty-prints it, to show signatures survive reformatting.
 */
static char *signed_command_for(const char *bridge, const char *data, size_t flags,
                                const char *tamper_key)
{
    json_t *obj = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "specversion", "1.0", "id",
                            "sig-1", "source", "ops", "type", "qmp.command.resize-and-cont",
                            "subject", "vm1", "time", T_NOW, "data", json_loads(data, 0, NULL));
    char hex[65], *text;

    assert_non_null(obj);
    if (bridge)
        json_object_set_new(obj, "bridge", json_string(bridge));
    assert_int_equal(
        qb_command_sign(obj, (const unsigned char *)KEY, strlen(KEY), hex, sizeof(hex)), QB_OK);
    json_object_set_new(obj, "signature", json_string(hex));
    if (tamper_key)
        json_object_set_new(json_object_get(obj, "data"), tamper_key, json_integer(1 << 30));
    text = json_dumps(obj, flags);
    json_decref(obj);
    assert_non_null(text);
    return text;
}

static char *signed_command(const char *data, size_t flags, const char *tamper_key)
{
    return signed_command_for("host-a", data, flags, tamper_key);
}

static void test_signature(void **state)
{
    struct qb_command_policy keyed = keyed_policy(), open = open_policy();
    static const char data[] = "{\"device\":\"virtio0\",\"grow_by\":1048576}";
    struct qb_command *cmd;
    char *text;

    (void)state;
    /* round trip, compact and indented */
    text = signed_command(data, JSON_COMPACT, NULL);
    cmd = parse_ok_with(&keyed, text);
    assert_int_equal(cmd->grow_by, 1048576);
    qb_command_free(cmd);
    /* with no key configured the signature is ignored */
    qb_command_free(parse_ok_with(&open, text));
    free(text);
    text = signed_command(data, JSON_INDENT(4), NULL);
    qb_command_free(parse_ok_with(&keyed, text));
    free(text);

    /* a changed argument breaks it */
    text = signed_command(data, 0, "grow_by");
    expect_reject(&keyed, text, "unauthenticated", "signature: does not match");
    free(text);

    /* a different key breaks it */
    text = signed_command(data, 0, NULL);
    keyed.hmac_key = (const unsigned char *)"another-key-of-16+";
    keyed.hmac_key_len = strlen("another-key-of-16+");
    expect_reject(&keyed, text, "unauthenticated", "signature: does not match");
    free(text);
    keyed = keyed_policy();

    /* missing, malformed */
    expect_reject(&keyed, CMD("qmp.command.cont", "{}"), "unauthenticated",
                  "signature: required attribute is missing (commands are signed here)");
    expect_reject(&keyed,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"signature\":\"8AE7D2EE17D09627EE7243705E7EF82B38"
                                           "F176C324DF2E757F00081461F03317\"}",
                  "unauthenticated", "signature: expected 64 lower-case hex digits");
    expect_reject(&keyed,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"signature\":\"abc\"}",
                  "unauthenticated", "signature: expected 64 lower-case hex digits");
    /* an unsigned bridge accepts any signature string */
    qb_command_free(parse_ok_with(&open,
                                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                                           "\",\"signature\":\"abc\"}"));
    /*
     * A signature that names no bridge is refused: the topic or key that chose
     * this bridge is not signed, so it could be replayed to another bridge.
     */
    text = signed_command_for(NULL, data, 0, NULL);
    expect_reject(&keyed, text, "unauthenticated",
                  "bridge: required attribute is missing (commands are signed here: the "
                  "signature must name the bridge it is for)");
    qb_command_free(parse_ok_with(&open, text)); /* an unsigned bridge does not need it */
    free(text);
    /* the signature is checked before the arguments: a forger learns nothing from them */
    expect_reject(&keyed, CMD("qmp.command.cont", "{\"foo\":1}"), "unauthenticated",
                  "signature: required attribute is missing (commands are signed here)");
}

/*
 * The fuzz seeds were signed by Python's hmac over json.dumps(sort_keys=True,
 * separators=(",", ":")): a second implementation of the canonical form must
 * agree with ours, or orchestrators could not sign.
 */
static void test_seeds_signed_elsewhere(void **state)
{
    static const char *const seeds[] = {
        "00-resize-and-cont.json",
        "01-resize-and-cont.json",
        "02-cont.json",
        "03-stop.json",
        "04-block-job-cancel.json",
        "05-block-job-complete.json",
        "06-block-job-pause.json",
        "07-block-job-resume.json",
        "08-set-write-threshold.json",
        "09-colo-lost-heartbeat.json",
        "10-query-state.json",
        "91-offset-time.json",
    };
    struct qb_command_policy p = keyed_policy();
    char path[512], buf[2048];

    (void)state;
    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]) + 1; i++) {
        const char *name = i < sizeof(seeds) / sizeof(seeds[0]) ? seeds[i] : "90-unsigned.json";
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/command/%s", QB_SOURCE_DIR, name);
        f = fopen(path, "rb");
        if (!f)
            fail_msg("cannot open %s", path);
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        if (i < sizeof(seeds) / sizeof(seeds[0]))
            qb_command_free(parse_ok_with(&p, buf));
        else
            expect_reject(&p, buf, "unauthenticated",
                          "signature: required attribute is missing (commands are signed here)");
    }
}

/* ---- names and results ---- */

/* "replytopic": the Response Topic a signature covers; an MQTT topic name or refused. */
static void test_reply_topic(void **state)
{
    struct qb_command_policy open = open_policy();
    static const char refused[] =
        "replytopic: expected an MQTT topic name (1 to 1024 bytes, no '+' or '#')";
    char *big = malloc(1100 + 256);
    struct qb_command *cmd;

    (void)state;
    cmd = parse_ok(HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                            "\",\"replytopic\":\"orch/r/\u00e9-1\"}");
    assert_string_equal(cmd->reply_topic, "orch/r/\xc3\xa9-1");
    qb_command_free(cmd);
    cmd = parse_ok(CMD("qmp.command.cont", "{}"));
    assert_null(cmd->reply_topic);
    qb_command_free(cmd);
    expect_reject(&open,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"replytopic\":\"orch/+/x\"}",
                  "invalid", refused);
    expect_reject(&open,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"replytopic\":\"orch/#\"}",
                  "invalid", refused);
    expect_reject(&open,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"replytopic\":\"\"}",
                  "invalid", refused);
    expect_reject(&open,
                  HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                           "\",\"replytopic\":7}",
                  "invalid", refused);
    assert_non_null(big);
    snprintf(big, 1100 + 256,
             HEAD("qmp.command.cont") "\"subject\":\"vm1\",\"time\":\"" T_NOW
                                      "\",\"replytopic\":\"%01025d\"}",
             0);
    expect_reject(&open, big, "invalid", refused);
    free(big);
}

static void test_names(void **state)
{
    enum qb_cmd_name name;

    (void)state;
    for (unsigned i = 0; i < QB_CMD__COUNT; i++) {
        const char *s = qb_cmd_name_str((enum qb_cmd_name)i);

        assert_non_null(s);
        assert_int_equal(qb_cmd_name_parse(s, &name), QB_OK);
        assert_int_equal(name, i);
    }
    assert_null(qb_cmd_name_str(QB_CMD__COUNT));
    assert_string_equal(qb_cmd_name_str(QB_CMD_SET_WRITE_THRESHOLD), "set-write-threshold");
    assert_int_equal(qb_cmd_name_parse("qmp.command.cont", &name), QB_ENOTFOUND);
    assert_int_equal(qb_cmd_name_parse("", &name), QB_ENOTFOUND);
}

static void test_result_rejected(void **state)
{
    struct qb_command_policy p = open_policy();
    static const char text[] = CMD("qmp.command.stop", "{\"x\":1}");
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;
    json_t *result;
    char *dump;

    (void)state;
    assert_int_equal(qb_command_parse(text, strlen(text), &p, NOW, &cmd, &err), QB_EINVAL);
    result = qb_command_result_rejected(cmd, &err);
    dump = json_dumps(result, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(dump, "{\"command\":\"stop\",\"command_id\":\"c-1\",\"error\":{\"class\":"
                              "\"invalid\",\"message\":\"data.x: unknown argument\"},\"status\":"
                              "\"rejected\",\"steps\":[]}");
    free(dump);
    json_decref(result);
    qb_command_free(cmd);

    err.cls = QB_CMD_ERR_INVALID;
    snprintf(err.message, sizeof(err.message), "message: expected a JSON object");
    result = qb_command_result_rejected(NULL, &err);
    dump = json_dumps(result, JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(dump, "{\"command\":null,\"command_id\":null,\"error\":{\"class\":"
                              "\"invalid\",\"message\":\"message: expected a JSON object\"},"
                              "\"status\":\"rejected\",\"steps\":[]}");
    free(dump);
    json_decref(result);

    /*
     * A message cut to its buffer in the middle of a UTF-8 sequence (the
     * router quotes a topic's VM level and a source): still answered, the cut
     * sequence shown as '?'.
     */
    memset(err.message, 'a', sizeof(err.message));
    memcpy(err.message + sizeof(err.message) - 2, "\xc3", 1);
    err.message[sizeof(err.message) - 1] = '\0';
    result = qb_command_result_rejected(NULL, &err);
    assert_non_null(result);
    assert_int_equal(
        json_string_value(json_object_get(json_object_get(result, "error"), "message"))[254], '?');
    json_decref(result);
}

/* A 65,000-byte id is refused, and what the rejection echoes of it is cut to 128 bytes. */
static void test_long_strings_cut(void **state)
{
    struct qb_command_policy p = open_policy();
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;
    size_t n = 65000;
    char *buf = malloc(n + 512), *dumped;
    json_t *res;
    size_t used;

    (void)state;
    /* the id: "é" (2 bytes) then 'x's, so byte 128 falls inside no sequence only if cut right */
    used = (size_t)sprintf(buf, "{\"specversion\":\"1.0\",\"id\":\"x\xc3\xa9");
    memset(buf + used, 'x', n);
    used += n;
    used += (size_t)sprintf(buf + used,
                            "\",\"source\":\"%s\",\"type\":\"qmp.command.stop\","
                            "\"subject\":\"vm1\",\"time\":\"" T_NOW "\"}",
                            "ops");
    p.max_message_bytes = 1 << 20;
    assert_int_equal(qb_command_parse(buf, used, &p, NOW, &cmd, &err), QB_EINVAL);
    assert_string_equal(err.message, "id: longer than 128 bytes");
    assert_non_null(cmd->id);
    assert_true(strlen(cmd->id) <= QB_CMD_ID_MAX);
    res = qb_command_result_rejected(cmd, &err);
    assert_true(json_string_length(json_object_get(res, "command_id")) <= QB_CMD_ID_MAX);
    dumped = json_dumps(res, JSON_COMPACT);
    assert_true(strlen(dumped) < 600);
    free(dumped);
    json_decref(res);
    qb_command_free(cmd);
    free(buf);

    /* cut on a UTF-8 boundary: never half of "é" */
    assert_int_equal(qb_command_utf8_cut("ab\xc3\xa9", 3), 2);
    assert_int_equal(qb_command_utf8_cut("ab\xc3\xa9", 4), 4);
    assert_int_equal(qb_command_utf8_cut("ab\xe2\x82\xac", 4), 2);
    assert_int_equal(qb_command_utf8_cut("short", 128), 5);
}

/* The fingerprint changes with type, subject or data, and not with anything else. */
static void test_fingerprint(void **state)
{
    struct qb_command *a =
        parse_ok(CMD("qmp.command.set-write-threshold", "{\"node_name\":\"n\",\"threshold\":5}"));
    struct qb_command *b =
        parse_ok(CMD("qmp.command.set-write-threshold", "{\"threshold\":5,\"node_name\":\"n\"}"));
    struct qb_command *c =
        parse_ok(CMD("qmp.command.set-write-threshold", "{\"node_name\":\"n\",\"threshold\":6}"));
    struct qb_command *d = parse_ok(CMD("qmp.command.stop", "{}"));
    struct qb_command *e =
        parse_ok(HEAD("qmp.command.stop") "\"subject\":\"vm1\",\"time\":\"" T_NOW "\"}");
    char fa[65], fb[65], fc[65], fd[65], fe[65];

    (void)state;
    assert_int_equal(qb_command_fingerprint(a, fa, sizeof(fa)), QB_OK);
    assert_int_equal(qb_command_fingerprint(b, fb, sizeof(fb)), QB_OK);
    assert_int_equal(qb_command_fingerprint(c, fc, sizeof(fc)), QB_OK);
    assert_int_equal(qb_command_fingerprint(d, fd, sizeof(fd)), QB_OK);
    assert_int_equal(qb_command_fingerprint(e, fe, sizeof(fe)), QB_OK);
    assert_int_equal(strlen(fa), 64);
    assert_string_equal(fa, fb); /* member order does not matter */
    assert_string_not_equal(fa, fc);
    assert_string_not_equal(fa, fd);
    assert_string_equal(fd, fe); /* no data is {} */
    assert_int_equal(qb_command_fingerprint(a, fa, 64), QB_EINVAL);
    qb_command_free(a);
    qb_command_free(b);
    qb_command_free(c);
    qb_command_free(d);
    qb_command_free(e);
}

/* The time keeps its fraction (the start-time check compares microseconds). */
static void test_time_fraction(void **state)
{
    struct qb_command *a = parse_ok(
        HEAD("qmp.command.stop") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:00:00.25Z\"}");
    struct qb_command *b = parse_ok(
        HEAD("qmp.command.stop") "\"subject\":\"vm1\",\"time\":\"2025-11-22T03:00:00.1234567Z\"}");

    (void)state;
    assert_int_equal(a->time_sec, NOW);
    assert_int_equal(a->time_usec, 250000);
    assert_int_equal(b->time_usec, 123456);
    qb_command_free(a);
    qb_command_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_rejection_keeps_id),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_valid_each_command),
        cmocka_unit_test(test_time_forms),
        cmocka_unit_test(test_sign_known_answer),
        cmocka_unit_test(test_signature),
        cmocka_unit_test(test_seeds_signed_elsewhere),
        cmocka_unit_test(test_reply_topic),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_result_rejected),
        cmocka_unit_test(test_long_strings_cut),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_time_fraction),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
