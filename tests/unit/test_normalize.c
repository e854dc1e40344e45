/*
 * test_normalize.c - data-driven tests of the normaliser.
 *
 * Each folder tests/unit/data/normalize/<case>/ holds:
 *   input     QMP event lines as real QEMU 7.2 sends them; after an event that
 *             needs a query, a line {"reply-to":"<query>","return":...} (or
 *             "error":{...}) gives QEMU's answer;
 *   output    the expected envelopes, one a line (bridge "host-a", vm "vm1",
 *             epoch 0x1, sequence from 1), compared with json_equal;
 *   exclude   optional: event names to exclude, one a line;
 *   snapshot  optional: a qmp.vm.state object to seed qb_norm_vm_reset.
 * Every output file is also checked against schema/v1 by validate_events.py,
 * so the expectations and the schemas cannot drift apart.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "error.h"
#include "normalize.h"

#define CASES_DIR QB_TEST_DATA_DIR "/normalize"
#define MAX_LINES 64

struct lines {
    char *v[MAX_LINES];
    size_t n;
};

static void lines_free(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

/* Reads the non-empty lines of dir/name; returns false when the file does not exist. */
static bool lines_read(const char *dir, const char *name, struct lines *l)
{
    char path[1024], *line = NULL;
    size_t cap = 0;
    ssize_t len;
    FILE *f;

    l->n = 0;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "r");
    if (!f)
        return false;
    while ((len = getline(&line, &cap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0)
            continue;
        assert_true(l->n < MAX_LINES);
        l->v[l->n++] = strdup(line);
    }
    free(line);
    fclose(f);
    return true;
}

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &err);

    if (!j)
        fail_msg("bad JSON in test data: %s: %s", err.text, text);
    return j;
}

/* Runs one case folder and compares every produced envelope with the expected one. */
static void run_case(const char *dir)
{
    const struct qb_envelope_ctx ctx = {"host-a", "file:///usr/share/qmp-bridge/schema/v1/"};
    struct lines in, out, excl;
    struct qb_norm_vm *vm = qb_norm_vm_new();
    uint64_t seq = 1;
    size_t produced = 0;

    assert_non_null(vm);
    assert_true(lines_read(dir, "input", &in));
    assert_true(lines_read(dir, "output", &out));
    if (!lines_read(dir, "exclude", &excl))
        excl.n = 0;
    {
        struct lines snap;

        if (lines_read(dir, "snapshot", &snap) && snap.n > 0) {
            json_t *s = parse(snap.v[0]);

            qb_norm_vm_reset(vm, s);
            json_decref(s);
        } else {
            qb_norm_vm_reset(vm, NULL);
        }
        lines_free(&snap);
    }

    for (size_t i = 0; i < in.n; i++) {
        json_t *msg = parse(in.v[i]);
        struct qb_norm_event ev;
        struct qb_envelope_in ein;
        char *bytes = NULL;
        size_t len = 0;
        int rc;

        if (json_object_get(msg, "reply-to"))
            fail_msg("%s: input line %zu: reply with no query pending", dir, i + 1);
        rc = qb_normalize_event(vm, msg, (const char *const *)excl.v, excl.n, &ev);
        json_decref(msg);
        assert_true(rc == 0 || rc == 1);
        while (rc == 1 && ev.need != QB_NORM_QUERY_NONE) {
            const char *cmd = qb_norm_query_command(ev.need);
            json_t *reply, *ret;

            if (++i >= in.n)
                fail_msg("%s: event needs %s but input ends", dir, cmd);
            reply = parse(in.v[i]);
            if (!json_is_string(json_object_get(reply, "reply-to")) ||
                strcmp(json_string_value(json_object_get(reply, "reply-to")), cmd) != 0)
                fail_msg("%s: input line %zu: expected the reply to %s", dir, i + 1, cmd);
            ret = json_object_get(reply, "return");
            if (ret)
                qb_normalize_resolve(vm, &ev, QB_OK, ret);
            else
                qb_normalize_resolve(vm, &ev, QB_EQMP, json_object_get(reply, "error"));
            json_decref(reply);
        }
        if (rc == 0)
            continue;

        ein = (struct qb_envelope_in){.vm = "vm1",
                                      .type = ev.type,
                                      .epoch = 1,
                                      .sequence = seq++,
                                      .ts_sec = ev.ts_sec,
                                      .ts_usec = ev.ts_usec,
                                      .data = ev.data};
        assert_int_equal(qb_envelope_build(&ctx, &ein, &bytes, &len), QB_OK);
        assert_int_equal(strlen(bytes), len);
        if (produced >= out.n)
            fail_msg("%s: unexpected extra output %s", dir, bytes);
        {
            json_t *got = parse(bytes), *want = parse(out.v[produced]);

            if (!json_equal(got, want))
                fail_msg("%s: output %zu differs\n  got:  %s\n  want: %s", dir, produced + 1, bytes,
                         out.v[produced]);
            json_decref(got);
            json_decref(want);
        }
        produced++;
        free(bytes);
        qb_norm_event_clear(&ev);
    }
    if (produced != out.n)
        fail_msg("%s: produced %zu envelopes, expected %zu", dir, produced, out.n);

    lines_free(&in);
    lines_free(&out);
    lines_free(&excl);
    qb_norm_vm_free(vm);
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static void test_cases(void **state)
{
    struct dirent **names;
    int n = scandir(CASES_DIR, &names, NULL, by_name);
    int ran = 0;

    (void)state;
    assert_true(n > 0);
    for (int i = 0; i < n; i++) {
        char dir[1024];

        if (names[i]->d_name[0] != '.') {
            snprintf(dir, sizeof(dir), "%s/%s", CASES_DIR, names[i]->d_name);
            print_message("case %s\n", names[i]->d_name);
            run_case(dir);
            ran++;
        }
        free(names[i]);
    }
    free(names);
    assert_true(ran >= 15);
}

/* The expected outputs must themselves be valid against schema/v1. */
static void test_outputs_match_schema(void **state)
{
    char cmd[2048];

    (void)state;
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 '%s/tests/tools/validate_events.py' '%s'/*/output >&2",
             QB_SOURCE_DIR, CASES_DIR);
    assert_int_equal(system(cmd), 0);
}

/* And the validator must reject what is wrong, or the check above proves nothing. */
static void test_schema_rejects_bad(void **state)
{
    char cmd[2048];

    (void)state;
    snprintf(cmd, sizeof(cmd),
             "sed 's/\"enospc\"/\"ENOSPC!\"/' '%s/01_enospc_stop/output' | "
             "/usr/bin/python3 '%s/tests/tools/validate_events.py' >/dev/null",
             CASES_DIR, QB_SOURCE_DIR);
    assert_int_not_equal(system(cmd), 0);
}

static void expect_parse_error(const char *text)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    struct qb_norm_event ev;
    json_t *msg = parse(text);

    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), QB_EPARSE);
    assert_null(ev.data);
    json_decref(msg);
    qb_norm_vm_free(vm);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_parse_error("{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}");
    expect_parse_error("{\"event\": 42}");
    expect_parse_error("{\"event\": null, \"data\": {}}");
    expect_parse_error("[\"STOP\"]");
    expect_parse_error("\"STOP\"");
    expect_parse_error("{\"event\": \"BLOCK_IO_ERROR\", \"data\": [1, 2]}");
    expect_parse_error("{\"event\": \"STOP\", \"data\": \"x\"}");
}

/* Known events with fields of the wrong type: those fields are left out, nothing crashes. */
static void test_wrong_field_types(void **state)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    struct qb_norm_event ev;
    json_t *msg =
        parse("{\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": 7, \"nospace\": \"yes\","
              " \"reason\": 5, \"operation\": [], \"action\": \"stop\"}}");

    (void)state;
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_int_equal(ev.ts_sec, -1);
    assert_string_equal(json_string_value(json_object_get(ev.data, "device")), "");
    assert_true(json_is_false(json_object_get(ev.data, "nospace")));
    assert_string_equal(json_string_value(json_object_get(ev.data, "errno")), "unknown");
    assert_null(json_object_get(ev.data, "operation"));
    assert_null(json_object_get(ev.data, "message"));
    qb_norm_event_clear(&ev);
    json_decref(msg);

    /* The stop cause was still remembered. */
    msg = parse("{\"event\": \"STOP\"}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_int_equal(ev.need, QB_NORM_QUERY_NONE);
    assert_string_equal(json_string_value(json_object_get(ev.data, "reason")), "io-error");
    qb_norm_event_clear(&ev);
    json_decref(msg);

    msg = parse("{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": 3, \"status\": true}}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_int_equal(json_object_size(ev.data), 0);
    qb_norm_event_clear(&ev);
    json_decref(msg);
    qb_norm_vm_free(vm);
}

/* A new session forgets the previous one's stop cause. */
static void test_reset_forgets(void **state)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    struct qb_norm_event ev;
    json_t *err = parse(
        "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}");
    json_t *stop = parse("{\"event\": \"STOP\"}");

    (void)state;
    assert_int_equal(qb_normalize_event(vm, err, NULL, 0, &ev), 1);
    qb_norm_event_clear(&ev);
    qb_norm_vm_reset(vm, NULL);
    assert_int_equal(qb_normalize_event(vm, stop, NULL, 0, &ev), 1);
    assert_int_equal(ev.need, QB_NORM_QUERY_STATUS);
    qb_norm_event_clear(&ev);
    json_decref(err);
    json_decref(stop);
    qb_norm_vm_free(vm);
}

static void test_query_names(void **state)
{
    (void)state;
    assert_null(qb_norm_query_command(QB_NORM_QUERY_NONE));
    assert_string_equal(qb_norm_query_command(QB_NORM_QUERY_STATUS), "query-status");
    assert_string_equal(qb_norm_query_command(QB_NORM_QUERY_BLOCK), "query-block");
    assert_string_equal(qb_norm_query_command(QB_NORM_QUERY_BLOCK_JOBS), "query-block-jobs");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_outputs_match_schema),
        cmocka_unit_test(test_schema_rejects_bad),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_wrong_field_types),
        cmocka_unit_test(test_reset_forgets),
        cmocka_unit_test(test_query_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
