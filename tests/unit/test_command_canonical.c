/*
 * test_command_canonical.c - the canonical text a command's HMAC covers
 * (bridge/command_canonical.c) against the published test vectors.
 *
 * tests/unit/data/signing-vectors.json is the contract a Python or JavaScript
 * signer is held to as well (integration_signing_vectors runs both over the
 * same file): for each vector the bridge must write exactly the canonical
 * bytes, compute exactly the signature, and accept the signed message (or
 * reject it for a reason that is not the signature).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "command_canonical.h"
#include "error.h"

#define VECTORS QB_TEST_DATA_DIR "/signing-vectors.json"
#define VECTOR_TIME INT64_C(1796558400) /* 2026-12-06T12:00:00Z, every vector's time */

/* Every command allowed, signed with key (borrowed). */
static struct qb_command_policy keyed_policy(const char *key)
{
    return (struct qb_command_policy){
        .enabled = true,
        .allow_mask = (1u << QB_CMD__COUNT) - 1,
        .max_age_ms = 300000,
        .max_skew_ms = 60000,
        .max_message_bytes = 65536,
        .hmac_key = (const unsigned char *)key,
        .hmac_key_len = strlen(key),
    };
}

static json_t *load_vectors(void)
{
    json_error_t jerr;
    json_t *root = json_load_file(VECTORS, JSON_REJECT_DUPLICATES, &jerr);

    if (!root)
        fail_msg("%s:%d: %s", VECTORS, jerr.line, jerr.text);
    assert_true(json_array_size(json_object_get(root, "vectors")) >= 8);
    return root;
}

static void test_vectors_canonical_text(void **state)
{
    json_t *root = load_vectors(), *v;
    size_t i;

    (void)state;
    json_array_foreach(json_object_get(root, "vectors"), i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *want = json_object_get(v, "canonical");
        char err[256] = "";
        char *text;
        size_t len;

        assert_int_equal(
            qb_command_canonical(json_object_get(v, "command"), &text, &len, err, sizeof(err)),
            QB_OK);
        if (len != json_string_length(want) || memcmp(text, json_string_value(want), len) != 0)
            fail_msg("vector %s:\n  got  %s\n  want %s", name, text, json_string_value(want));
        assert_int_equal(strlen(text), len);
        free(text);
    }
    json_decref(root);
}

static void test_vectors_signature(void **state)
{
    json_t *root = load_vectors(), *v;
    const char *key = json_string_value(json_object_get(root, "key"));
    size_t i;

    (void)state;
    json_array_foreach(json_object_get(root, "vectors"), i, v)
    {
        char hex[65];

        assert_int_equal(qb_command_sign(json_object_get(v, "command"), (const unsigned char *)key,
                                         strlen(key), hex, sizeof(hex)),
                         QB_OK);
        assert_string_equal(hex, json_string_value(json_object_get(v, "signature")));
    }
    json_decref(root);
}

/* Every vector, signed as published and sent as any JSON text, passes the signature check. */
static void test_vectors_accepted(void **state)
{
    json_t *root = load_vectors(), *v;
    const char *key = json_string_value(json_object_get(root, "key"));
    struct qb_command_policy policy = keyed_policy(key);
    size_t i, accepted = 0;

    (void)state;
    json_array_foreach(json_object_get(root, "vectors"), i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        json_t *cmd = json_deep_copy(json_object_get(v, "command"));
        struct qb_command_error err = {0};
        struct qb_command *parsed = NULL;
        char *text;
        int rc;

        json_object_set(cmd, "signature", json_object_get(v, "signature"));
        /* escaped differently from the canonical text: the bytes on the wire do not matter */
        text = json_dumps(cmd, JSON_INDENT(1) | JSON_ENSURE_ASCII);
        assert_non_null(text);
        rc = qb_command_parse(text, strlen(text), &policy, VECTOR_TIME, &parsed, &err);
        if (rc != QB_OK && strcmp(err.cls, QB_CMD_ERR_UNAUTHENTICATED) == 0)
            fail_msg("vector %s: %s: %s", name, err.cls, err.message);
        if (rc != QB_OK)
            print_message("vector %-22s rejected after the signature check: %s: %s\n", name,
                          err.cls, err.message);
        accepted += rc == QB_OK;
        qb_command_free(parsed);
        free(text);
        json_decref(cmd);
    }
    /* the valid commands among them: plain, resize, control characters, non-ASCII, quotes */
    assert_true(accepted >= 5);
    json_decref(root);
}

/* json (any value) has no canonical text: QB_EINVAL and an error "<start>...<end>". */
static void expect_refused(const char *json, const char *start, const char *end)
{
    json_t *obj = json_loads(json, JSON_DECODE_ANY, NULL);
    char err[256] = "";
    char hex[65];
    char *text = (char *)1;
    size_t len = 1;

    assert_non_null(obj);
    assert_int_equal(qb_command_canonical(obj, &text, &len, err, sizeof(err)), QB_EINVAL);
    assert_null(text);
    assert_int_equal(len, 0);
    if (strncmp(err, start, strlen(start)) != 0 || strlen(err) < strlen(end) ||
        strcmp(err + strlen(err) - strlen(end), end) != 0)
        fail_msg("got \"%s\", want \"%s...%s\"", err, start, end);
    assert_int_equal(qb_command_sign(obj, (const unsigned char *)"k", 1, hex, sizeof(hex)),
                     QB_EINVAL);
    json_decref(obj);
}

static void test_refused_values(void **state)
{
    char deep[200] = "{\"data\":";
    size_t used = strlen(deep);

    (void)state;
    expect_refused("{\"data\":{\"size\":1.5}}", "data.size: a real number cannot be signed (1.5)",
                   "; signed commands carry integers only");
    expect_refused("{\"data\":{\"list\":[1,{\"x\":1.0}]}}",
                   "data.list[1].x: a real number cannot be signed (1.0)", "");
    expect_refused("[1]", "command: expected a JSON object", "");
    for (int i = 0; i < 40; i++)
        deep[used++] = '[';
    for (int i = 0; i < 40; i++)
        deep[used++] = ']';
    strcpy(deep + used, "}");
    /* the path is cut, the reason is not */
    expect_refused(deep, "data[0][0][0]", "...: nested deeper than 32 levels");
}

/* A real number reaches the parser's signature check as a clear "invalid", not a mismatch. */
static void test_real_rejected_by_parser(void **state)
{
    static const char key[] = "0123456789abcdef-test-key";
    static const char text[] =
        "{\"specversion\":\"1.0\",\"id\":\"c-1\",\"source\":\"ops\",\"type\":\"qmp.command."
        "resize-and-cont\",\"subject\":\"vm1\",\"bridge\":\"host-a\",\"time\":\"2026-12-06T12:00:"
        "00Z\",\"data\":{"
        "\"device\":\"d\",\"grow_by\":1e9},\"signature\":"
        "\"0000000000000000000000000000000000000000000000000000000000000000\"}";
    struct qb_command_policy policy = keyed_policy(key);
    struct qb_command_error err = {0};
    struct qb_command *cmd = NULL;

    (void)state;
    assert_int_equal(qb_command_parse(text, strlen(text), &policy, VECTOR_TIME, &cmd, &err),
                     QB_EINVAL);
    assert_string_equal(err.cls, QB_CMD_ERR_INVALID);
    assert_string_equal(err.message, "data.grow_by: a real number cannot be signed "
                                     "(1000000000.0); signed commands carry integers only");
    qb_command_free(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors_canonical_text),  cmocka_unit_test(test_vectors_signature),
        cmocka_unit_test(test_vectors_accepted),        cmocka_unit_test(test_refused_values),
        cmocka_unit_test(test_real_rejected_by_parser),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
