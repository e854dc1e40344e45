/*
 * test_normalize.c - data-driven tests of the normaliser.
 *
 * Each folder tests/unit/data/normalize/<case>/ holds:
 *   input     QMP event lines as real QEMU 7.2 sends them (or, to show what is
 *             refused, with members of the wrong type); after an event that
 *             needs a query, a line {"reply-to":"<query>","return":...} (or
 *             "error":{...}) gives QEMU's answer;
 *   output    the expected envelopes, one a line (bridge "host-a", vm "vm1",
 *             epoch 0x1, sequence from 1), compared with json_equal; an event
 *             that is excluded or refused as malformed (QB_EPARSE) gives none;
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

#include "case_dirs.h"

#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "envelope.h"
#include "error.h"
#include "log.h"
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
        assert_true(rc == 0 || rc == 1 || rc == QB_EPARSE);
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
        if (rc != 1)
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

static void test_cases(void **state)
{
    (void)state;
    assert_true(qb_test_run_case_dirs(CASES_DIR, run_case) >= 15);
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
    expect_parse_error("{\"event\": \"\", \"data\": {}}"); /* qmp.event needs a name */
    expect_parse_error("[\"STOP\"]");
    expect_parse_error("\"STOP\"");
    expect_parse_error("{\"event\": \"BLOCK_IO_ERROR\", \"data\": [1, 2]}");
    expect_parse_error("{\"event\": \"STOP\", \"data\": \"x\"}");
}

/*
 * Fields QEMU's schema requires, missing or of the wrong type: the event is
 * refused (QB_EPARSE), not published without them. Optional fields of the
 * wrong type are left out and the event is still published.
 */
static void test_wrong_field_types(void **state)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    struct qb_norm_event ev;
    json_t *msg =
        parse("{\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": 7, \"nospace\": \"yes\","
              " \"reason\": 5, \"operation\": [], \"action\": \"stop\"}}");

    (void)state;
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), QB_EPARSE);
    assert_null(ev.data);
    json_decref(msg);

    /* A refused event leaves no memory behind: the STOP asks QEMU why. */
    msg = parse("{\"event\": \"STOP\"}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_int_equal(ev.need, QB_NORM_QUERY_STATUS);
    qb_norm_event_clear(&ev);
    json_decref(msg);

    /* Optional node-name and nospace of the wrong type: dropped, the rest published. */
    msg = parse("{\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": \"\", \"node-name\": 5,"
                " \"nospace\": \"yes\", \"reason\": \"Input/output error\","
                " \"operation\": \"read\", \"action\": \"stop\"}}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_true(ev.ts_sec == QB_ENVELOPE_TIME_NOW);
    assert_null(json_object_get(ev.data, "node_name"));
    assert_true(json_is_false(json_object_get(ev.data, "nospace")));
    assert_string_equal(json_string_value(json_object_get(ev.data, "errno")), "eio");
    assert_string_equal(json_string_value(json_object_get(ev.data, "operation")), "read");
    qb_norm_event_clear(&ev);
    json_decref(msg);

    /* The stop cause was remembered. */
    msg = parse("{\"event\": \"STOP\"}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
    assert_int_equal(ev.need, QB_NORM_QUERY_NONE);
    assert_string_equal(json_string_value(json_object_get(ev.data, "reason")), "io-error");
    qb_norm_event_clear(&ev);
    json_decref(msg);

    msg = parse("{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": 3, \"status\": true}}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), QB_EPARSE);
    json_decref(msg);
    /* A string outside QEMU's enum is as wrong as a number. */
    msg = parse(
        "{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": \"gone\"}}");
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), QB_EPARSE);
    json_decref(msg);
    qb_norm_vm_free(vm);
}

/*
 * ---- A subset JSON Schema validator for schema/v1 ----
 *
 * There is no JSON Schema library for C here. schema/v1's event data schemas
 * use only: type, required, enum, properties, additionalProperties (false or
 * a schema), minimum, minLength, pattern, and the annotations $schema, $id,
 * title, description. Any other keyword makes the check fail loudly, so a
 * schema that grows a $ref cannot be silently half-checked.
 */
static bool schema_fail(char *why, size_t n, const char *path, const char *what)
{
    snprintf(why, n, "%s: %s", path[0] ? path : "data", what);
    return false;
}

/* JSON Schema type names and the jansson types each admits ("number" admits integers too). */
static bool schema_type_ok(const char *type, const json_t *v)
{
    static const struct {
        const char *name;
        json_type t1, t2;
    } types[] = {
        {"object", JSON_OBJECT, JSON_OBJECT}, {"array", JSON_ARRAY, JSON_ARRAY},
        {"string", JSON_STRING, JSON_STRING}, {"integer", JSON_INTEGER, JSON_INTEGER},
        {"number", JSON_INTEGER, JSON_REAL},  {"boolean", JSON_TRUE, JSON_FALSE},
        {"null", JSON_NULL, JSON_NULL},
    };

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(type, types[i].name) == 0)
            return json_typeof(v) == types[i].t1 || json_typeof(v) == types[i].t2;
    return false;
}

/* Returns true when v is valid against schema s; otherwise false with the reason in why. */
static bool schema_check(const json_t *s, const json_t *v, const char *path, char *why, size_t n)
{
    static const char *const known[] = {"$schema",     "$id",        "title",
                                        "description", "type",       "required",
                                        "enum",        "properties", "additionalProperties",
                                        "minimum",     "minLength",  "pattern"};
    const char *key;
    json_t *kw;

    if (json_is_true(s))
        return true;
    if (!json_is_object(s))
        return schema_fail(why, n, path, "schema is not an object");
    json_object_foreach((json_t *)s, key, kw)
    {
        bool ok = false;

        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok)
            return schema_fail(why, n, path, "schema keyword not supported by the test validator");
    }
    kw = json_object_get(s, "type");
    if (json_is_string(kw) && !schema_type_ok(json_string_value(kw), v))
        return schema_fail(why, n, path, "wrong type");
    if ((kw = json_object_get(s, "enum"))) {
        size_t i;
        json_t *e;
        bool found = false;

        json_array_foreach(kw, i, e) found |= json_equal(e, (json_t *)v);
        if (!found)
            return schema_fail(why, n, path, "not in enum");
    }
    if ((kw = json_object_get(s, "minimum")) && json_is_number(v) &&
        json_number_value(v) < json_number_value(kw))
        return schema_fail(why, n, path, "below minimum");
    if ((kw = json_object_get(s, "minLength")) && json_is_string(v) &&
        (json_int_t)json_string_length(v) < json_integer_value(kw))
        return schema_fail(why, n, path, "shorter than minLength");
    if ((kw = json_object_get(s, "pattern")) && json_is_string(v)) {
        regex_t re;
        int rc;

        assert_int_equal(regcomp(&re, json_string_value(kw), REG_EXTENDED | REG_NOSUB), 0);
        rc = regexec(&re, json_string_value(v), 0, NULL, 0);
        regfree(&re);
        if (rc != 0)
            return schema_fail(why, n, path, "does not match pattern");
    }
    if (json_is_object(v)) {
        const json_t *props = json_object_get(s, "properties");
        const json_t *extra = json_object_get(s, "additionalProperties");
        size_t i;
        json_t *r, *member;

        json_array_foreach(json_object_get(s, "required"), i, r)
        {
            if (!json_object_get(v, json_string_value(r))) {
                char what[128];

                snprintf(what, sizeof(what), "required \"%s\" missing", json_string_value(r));
                return schema_fail(why, n, path, what);
            }
        }
        json_object_foreach((json_t *)v, key, member)
        {
            const json_t *sub = json_object_get(props, key);
            char sub_path[256];

            snprintf(sub_path, sizeof(sub_path), "%s%s%s", path, path[0] ? "." : "", key);
            if (!sub && json_is_false(extra))
                return schema_fail(why, n, sub_path, "additional property");
            if (!sub)
                sub = extra;
            if (sub && !schema_check(sub, member, sub_path, why, n))
                return false;
        }
    }
    return true;
}

/* Loaded schema/v1/<type>.json documents, kept for the whole run. */
static json_t *schema_cache;

static const json_t *schema_for(const char *type)
{
    char path[1024];
    json_error_t err;
    json_t *s;

    if (!schema_cache)
        schema_cache = json_object();
    s = json_object_get(schema_cache, type);
    if (s)
        return s;
    snprintf(path, sizeof(path), "%s/schema/v1/%s.json", QB_SOURCE_DIR, type);
    s = json_load_file(path, 0, &err);
    if (!s)
        fail_msg("cannot load %s: %s", path, err.text);
    json_object_set_new(schema_cache, type, s);
    return s;
}

/* Returns true when data is valid for the normalised type; else false with the reason. */
static bool data_valid(const char *type, const json_t *data, char *why, size_t n)
{
    if (!data)
        return schema_fail(why, n, "", "no data");
    return schema_check(schema_for(type), data, "", why, n);
}

/* The validator itself must reject what is wrong, or the checks below prove nothing. */
static void test_subset_validator(void **state)
{
    static const struct {
        const char *type, *data;
        bool valid;
    } cases[] = {
        {"qmp.block.io_error",
         "{\"device\": \"\", \"operation\": \"write\", \"action\": \"stop\", \"nospace\": true,"
         " \"errno\": \"enospc\", \"message\": \"x\"}",
         true},
        {"qmp.block.io_error",
         "{\"device\": \"\", \"action\": \"stop\", \"nospace\": true, \"errno\": \"enospc\","
         " \"message\": \"x\"}",
         false},
        {"qmp.block.io_error",
         "{\"device\": \"\", \"operation\": \"wrote\", \"action\": \"stop\", \"nospace\": true,"
         " \"errno\": \"enospc\", \"message\": \"x\"}",
         false},
        {"qmp.block.io_error",
         "{\"device\": 1, \"operation\": \"write\", \"action\": \"stop\", \"nospace\": true,"
         " \"errno\": \"enospc\", \"message\": \"x\"}",
         false},
        {"qmp.block.io_error",
         "{\"device\": \"\", \"operation\": \"write\", \"action\": \"stop\", \"nospace\": true,"
         " \"errno\": \"ENOSPC\", \"message\": \"x\"}",
         false},
        {"qmp.block.io_error",
         "{\"device\": \"\", \"operation\": \"write\", \"action\": \"stop\", \"nospace\": true,"
         " \"errno\": \"enospc\", \"message\": \"x\", \"extra\": 1}",
         false},
        {"qmp.vm.stopped",
         "{\"reason\": \"io-error\", \"cause\": {\"device\": \"\","
         " \"errno\": \"eio\", \"io_status\": \"failed\"}}",
         true},
        {"qmp.vm.stopped",
         "{\"reason\": \"io-error\", \"cause\": {\"device\": \"\","
         " \"errno\": \"eio\", \"io_status\": \"ok\"}}",
         false},
        {"qmp.block.job_ready",
         "{\"job\": \"j\", \"type\": \"mirror\", \"len\": 1, \"offset\": 0,"
         " \"speed\": 0}",
         true},
        {"qmp.block.job_ready",
         "{\"job\": \"j\", \"type\": \"mirror\", \"len\": -1,"
         " \"offset\": 0, \"speed\": 0}",
         false},
        {"qmp.block.job_ready",
         "{\"job\": \"j\", \"type\": \"mirror\", \"len\": 1.5,"
         " \"offset\": 0, \"speed\": 0}",
         false},
        {"qmp.event", "{\"name\": \"X\", \"data\": [1]}", true},
        {"qmp.event", "{\"name\": \"\", \"data\": {}}", false},
    };
    char why[512];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *d = parse(cases[i].data);

        if (data_valid(cases[i].type, d, why, sizeof(why)) != cases[i].valid)
            fail_msg("validator case %zu (%s %s): expected %s (%s)", i, cases[i].type,
                     cases[i].data, cases[i].valid ? "valid" : "invalid", why);
        json_decref(d);
    }
}

/*
 * ---- No input makes a normaliser publish schema-invalid data ----
 *
 * For every event of the normaliser's table, the real QEMU line from the case
 * folders (the one with the most data members) is fed (a) as it is, (b) with
 * each data member removed, (c) with each member replaced by a value of every
 * other JSON type (and by a negative number, an empty string and a string no
 * QEMU enum holds), and (d) with data empty, absent, or carrying an unknown
 * member, and (e) with each member another event's line carries. Each case
 * must give QB_EPARSE or data valid against schema/v1/<type>.json; (a), the
 * unknown member of (d) and (e) must be published (QEMU may add members), so
 * refusing everything cannot pass. Then a STOP and (when the line names a job) a
 * BLOCK_JOB_ERROR of the same job follow, so memory a bad event left behind
 * (stop cause, job table) is checked too. Queries the events need are
 * answered with a failure (so the pause is completed from memory alone).
 */
static const char *const table_events[] = {
    "BLOCK_IO_ERROR",
    "STOP",
    "RESUME",
    "SHUTDOWN",
    "RESET",
    "BLOCK_JOB_ERROR",
    "JOB_STATUS_CHANGE",
    "BLOCK_JOB_READY",
    "BLOCK_JOB_COMPLETED",
    "BLOCK_JOB_CANCELLED",
    "BLOCK_WRITE_THRESHOLD",
    "COLO_EXIT",
    "WATCHDOG",
    "GUEST_PANICKED",
};

static const char *const mutation_values[] = {
    "null", "true", "false", "1", "1.5", "\"s\"", "[]", "{}", "-1", "\"\"",
};

/* The real QEMU line with the most data members for one event, while walking the cases. */
struct real_line_search {
    const char *event;
    json_t *best;
    int best_n;
};

static void real_line_in_case(const char *dir, void *arg)
{
    struct real_line_search *q = arg;
    struct lines in;

    if (!lines_read(dir, "input", &in))
        return;
    for (size_t k = 0; k < in.n; k++) {
        json_t *m = parse(in.v[k]);
        const json_t *d = json_object_get(m, "data");
        int members = json_is_object(d) ? (int)json_object_size(d) : -1;

        if (json_is_string(json_object_get(m, "event")) &&
            strcmp(json_string_value(json_object_get(m, "event")), q->event) == 0 &&
            members > q->best_n) {
            json_decref(q->best);
            q->best = json_incref(m);
            q->best_n = members;
        }
        json_decref(m);
    }
    lines_free(&in);
}

/* Returns (new reference) the real QEMU line for event with the most data members. */
static json_t *real_line(const char *event)
{
    struct real_line_search q = {event, NULL, -2};

    qb_test_foreach_case_dir(CASES_DIR, real_line_in_case, &q);
    if (!q.best)
        fail_msg("no real QEMU line for %s in %s", event, CASES_DIR);
    return q.best;
}

/* Answers every query ev needs with a failure, as when QEMU refuses it. */
static void complete_with_failures(struct qb_norm_vm *vm, struct qb_norm_event *ev)
{
    for (int guard = 0; ev->need != QB_NORM_QUERY_NONE && guard < 8; guard++)
        qb_normalize_resolve(vm, ev, QB_EQMP, NULL);
    assert_int_equal(ev->need, QB_NORM_QUERY_NONE);
}

/*
 * Feeds msg (borrowed) to vm; returns true when the outcome is acceptable:
 * QB_EPARSE with no data, 0 (excluded; not used here), or 1 with valid data.
 * parse_ok false: QB_EPARSE is not acceptable (a follow-up event that is valid).
 */
static bool feed_and_check(struct qb_norm_vm *vm, const json_t *msg, bool parse_ok, char *why,
                           size_t n)
{
    struct qb_norm_event ev;
    int rc = qb_normalize_event(vm, msg, NULL, 0, &ev);
    bool ok;

    if (rc == QB_EPARSE && parse_ok) {
        if (ev.data)
            return schema_fail(why, n, "", "QB_EPARSE but data set");
        return true;
    }
    if (rc != 1) {
        snprintf(why, n, "qb_normalize_event returned %d", rc);
        return false;
    }
    complete_with_failures(vm, &ev);
    ok = data_valid(ev.type, ev.data, why, n);
    if (!ok) {
        char *d = json_dumps(ev.data, JSON_COMPACT | JSON_SORT_KEYS);
        size_t used = strlen(why);

        snprintf(why + used, n - used, " in %s %s", ev.type, d ? d : "?");
        free(d);
    }
    qb_norm_event_clear(&ev);
    return ok;
}

/*
 * Runs one mutated line in a fresh VM context, then the follow-ups. Returns
 * true when all pass. must_publish: the line is one QEMU may send (as sent, or
 * with members it does not define), so refusing it is a failure too.
 */
static bool run_mutation(const json_t *msg, const char *job, bool must_publish, const char *label)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    char why[1024] = "";
    char *text = json_dumps(msg, JSON_COMPACT);
    bool ok;

    assert_non_null(vm);
    qb_norm_vm_reset(vm, NULL);
    ok = feed_and_check(vm, msg, !must_publish, why, sizeof(why));
    if (ok) {
        json_t *stop = parse("{\"event\": \"STOP\"}");

        ok = feed_and_check(vm, stop, false, why, sizeof(why));
        if (!ok)
            strncat(why, " (the STOP after it)", sizeof(why) - strlen(why) - 1);
        json_decref(stop);
    }
    if (ok && job) {
        json_t *err = json_pack("{s:s, s:{s:s, s:s, s:s}}", "event", "BLOCK_JOB_ERROR", "data",
                                "device", job, "operation", "write", "action", "report");

        ok = feed_and_check(vm, err, false, why, sizeof(why));
        if (!ok)
            strncat(why, " (a BLOCK_JOB_ERROR of the job after it)", sizeof(why) - strlen(why) - 1);
        json_decref(err);
    }
    if (!ok)
        print_message("FAIL %s: %s\n      input %s\n", label, why, text ? text : "?");
    free(text);
    qb_norm_vm_free(vm);
    return ok;
}

static void test_no_invalid_output(void **state)
{
    size_t cases = 0, failed = 0;
    json_t *other_members = json_object();

    (void)state;
    /* Hundreds of refusals, each logged at warn: keep the test's output readable. */
    qb_log_set_level(QB_LOG_ERROR);
    /* Every data member any of the real lines carries, with its real value. */
    for (size_t e = 0; e < sizeof(table_events) / sizeof(table_events[0]); e++) {
        json_t *line = real_line(table_events[e]);

        json_object_update_missing(other_members, json_object_get(line, "data"));
        json_decref(line);
    }
    for (size_t e = 0; e < sizeof(table_events) / sizeof(table_events[0]); e++) {
        json_t *line = real_line(table_events[e]);
        const json_t *data = json_object_get(line, "data");
        const char *job = json_string_value(json_object_get(data, "device"));
        const char *key;
        json_t *value;
        char label[256];

        if (!job)
            job = json_string_value(json_object_get(data, "id"));
        if (strcmp(table_events[e], "BLOCK_IO_ERROR") == 0)
            job = NULL; /* device names a drive, not a job */

        /* (a) the real line */
        snprintf(label, sizeof(label), "%s as QEMU sent it", table_events[e]);
        cases++;
        failed += !run_mutation(line, job, true, label);

        /* (d) data empty, absent, with an unknown member */
        for (int d = 0; d < 3; d++) {
            json_t *m = json_deep_copy(line);

            if (d == 0)
                json_object_set_new(m, "data", json_object());
            else if (d == 1)
                json_object_del(m, "data");
            else {
                if (!json_object_get(m, "data"))
                    json_object_set_new(m, "data", json_object());
                json_object_set_new(json_object_get(m, "data"), "x-unknown", json_integer(1));
            }
            snprintf(label, sizeof(label), "%s with data %s", table_events[e],
                     d == 0   ? "{}"
                     : d == 1 ? "absent"
                              : "plus an unknown member");
            cases++;
            failed += !run_mutation(m, job, d == 2, label);
            json_decref(m);
        }

        /* (e) plus each member another event of the table carries, as that event has it */
        json_object_foreach(other_members, key, value)
        {
            json_t *m = json_deep_copy(line);

            if (json_object_get(data, key)) {
                json_decref(m);
                continue;
            }
            if (!json_object_get(m, "data"))
                json_object_set_new(m, "data", json_object());
            json_object_set(json_object_get(m, "data"), key, value);
            snprintf(label, sizeof(label), "%s plus \"%s\" of another event", table_events[e], key);
            cases++;
            failed += !run_mutation(m, job, true, label);
            json_decref(m);
        }

        json_object_foreach((json_t *)data, key, value)
        {
            json_t *m = json_deep_copy(line);

            /* (b) without the member */
            json_object_del(json_object_get(m, "data"), key);
            snprintf(label, sizeof(label), "%s without \"%s\"", table_events[e], key);
            cases++;
            failed += !run_mutation(m, job, false, label);
            json_decref(m);

            /* (c) the member replaced by other values */
            for (size_t v = 0; v < sizeof(mutation_values) / sizeof(mutation_values[0]); v++) {
                json_t *bad = parse(mutation_values[v]);

                if (json_equal(bad, value)) {
                    json_decref(bad);
                    continue;
                }
                m = json_deep_copy(line);
                json_object_set_new(json_object_get(m, "data"), key, bad);
                snprintf(label, sizeof(label), "%s with \"%s\": %s", table_events[e], key,
                         mutation_values[v]);
                cases++;
                failed += !run_mutation(m, job, false, label);
                json_decref(m);
            }
        }
        json_decref(line);
    }
    json_decref(other_members);
    qb_log_set_level(QB_LOG_INFO);
    print_message("%zu of %zu cases failed (schema-invalid data, or a real line refused)\n", failed,
                  cases);
    assert_true(cases > 200);
    assert_int_equal(failed, 0);
}

/*
 * ---- Query replies and snapshots cannot smuggle invalid data in either ----
 *
 * query-status, query-block and query-block-jobs replies, and the snapshot's
 * job list, are QEMU's output too: every member of them replaced by hostile
 * values must still complete the event with schema-valid data.
 */
static bool run_resolve(const char *event_line, const json_t *snapshot, json_t *const *replies,
                        size_t n_replies, const char *label)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    json_t *msg = parse(event_line);
    struct qb_norm_event ev;
    char why[1024] = "";
    size_t r = 0;
    bool ok;
    int rc;

    qb_norm_vm_reset(vm, snapshot);
    rc = qb_normalize_event(vm, msg, NULL, 0, &ev);
    assert_int_equal(rc, 1);
    while (ev.need != QB_NORM_QUERY_NONE && r < n_replies)
        qb_normalize_resolve(vm, &ev, QB_OK, replies[r++]);
    complete_with_failures(vm, &ev);
    ok = data_valid(ev.type, ev.data, why, sizeof(why));
    if (!ok) {
        char *d = json_dumps(ev.data, JSON_COMPACT);

        print_message("FAIL %s: %s in %s\n", label, why, d ? d : "?");
        free(d);
    }
    qb_norm_event_clear(&ev);
    json_decref(msg);
    qb_norm_vm_free(vm);
    return ok;
}

static void test_hostile_replies(void **state)
{
    static const char *const extra[] = {"\"bogus\"",  "\"running\"", "\"io-error\"", "\"ok\"",
                                        "\"failed\"", "\"nospace\"", "\"paused\"",   "\"ready\""};
    size_t cases = 0, failed = 0;
    char label[256];

    (void)state;
    qb_log_set_level(QB_LOG_ERROR);
    for (size_t v = 0; v < sizeof(mutation_values) / sizeof(mutation_values[0]) +
                               sizeof(extra) / sizeof(extra[0]);
         v++) {
        const char *text = v < sizeof(mutation_values) / sizeof(mutation_values[0])
                               ? mutation_values[v]
                               : extra[v - sizeof(mutation_values) / sizeof(mutation_values[0])];
        json_t *x = parse(text);
        json_t *replies[2];

        /* query-status answers a STOP with no cause in memory */
        replies[0] = json_pack("{s:O, s:b}", "status", x, "running", 0);
        snprintf(label, sizeof(label), "query-status status %s", text);
        cases++;
        failed += !run_resolve("{\"event\": \"STOP\"}", NULL, replies, 1, label);
        json_decref(replies[0]);

        /* query-block answers an io-error pause: each member of the device hostile */
        for (int member = 0; member < 3; member++) {
            json_t *dev = json_pack("{s:s, s:s, s:{s:s}}", "device", "drive0", "io-status",
                                    "failed", "inserted", "node-name", "#block1");

            if (member == 0)
                json_object_set(dev, "device", x);
            else if (member == 1)
                json_object_set(dev, "io-status", x);
            else
                json_object_set(json_object_get(dev, "inserted"), "node-name", x);
            replies[0] = json_pack("{s:s}", "status", "io-error");
            replies[1] = json_pack("[o]", dev);
            snprintf(label, sizeof(label), "query-block %s %s",
                     member == 0   ? "device"
                     : member == 1 ? "io-status"
                                   : "node-name",
                     text);
            cases++;
            failed += !run_resolve("{\"event\": \"STOP\"}", NULL, replies, 2, label);
            json_decref(replies[0]);
            json_decref(replies[1]);
        }

        /* query-block-jobs and the snapshot's job list feed BLOCK_JOB_ERROR's type and status */
        for (int member = 0; member < 2; member++) {
            const char *k = member == 0 ? "type" : "status";
            json_t *job = json_pack("{s:s, s:s, s:s}", "device", "mirror0", "type", "mirror",
                                    "status", "running");
            json_t *snap;

            json_object_set(job, k, x);
            replies[0] = json_pack("[O]", job);
            snprintf(label, sizeof(label), "query-block-jobs %s %s", k, text);
            cases++;
            failed += !run_resolve("{\"event\": \"BLOCK_JOB_ERROR\", \"data\": {\"device\": "
                                   "\"mirror0\", \"operation\": \"write\", \"action\": \"stop\"}}",
                                   NULL, replies, 1, label);
            json_decref(replies[0]);

            json_object_set_new(job, "id", json_string("mirror0"));
            snap = json_pack("{s:[o]}", "jobs", job);
            snprintf(label, sizeof(label), "snapshot job %s %s", k, text);
            cases++;
            failed += !run_resolve("{\"event\": \"BLOCK_JOB_ERROR\", \"data\": {\"device\": "
                                   "\"mirror0\", \"operation\": \"write\", \"action\": \"stop\"}}",
                                   snap, NULL, 0, label);
            json_decref(snap);
        }
        json_decref(x);
    }
    qb_log_set_level(QB_LOG_INFO);
    print_message("%zu of %zu reply cases completed with schema-invalid data\n", failed, cases);
    assert_int_equal(failed, 0);
}

/*
 * A refused event is logged at warn level with the VM, the event, the field
 * and what was expected (stderr is captured for the call).
 */
static void test_refusal_logged(void **state)
{
    struct qb_norm_vm *vm = qb_norm_vm_new();
    struct qb_norm_event ev;
    json_t *msg = parse("{\"event\": \"BLOCK_IO_ERROR\", \"data\": {\"device\": \"d\","
                        " \"operation\": 1, \"action\": \"stop\", \"reason\": \"x\"}}");
    FILE *cap = tmpfile();
    int saved = dup(2);
    char buf[4096] = "";
    size_t got;

    (void)state;
    qb_norm_vm_set_name(vm, "vm1");
    assert_non_null(cap);
    assert_true(saved >= 0);
    fflush(stderr);
    assert_true(dup2(fileno(cap), 2) >= 0);
    assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), QB_EPARSE);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(cap);
    got = fread(buf, 1, sizeof(buf) - 1, cap);
    buf[got] = '\0';
    fclose(cap);
    print_message("logged: %s", buf);
    assert_non_null(strstr(buf, "warn"));
    assert_non_null(strstr(buf, "[vm1] normalize: "));
    assert_non_null(strstr(buf, "BLOCK_IO_ERROR"));
    assert_non_null(strstr(buf, "\"operation\""));
    assert_non_null(strstr(buf, "string"));
    json_decref(msg);
    qb_norm_vm_free(vm);
}

/*
 * QMP timestamps: the first and last instants of years 0001-9999 are kept;
 * one second or microsecond outside, reals, wrong types and missing members
 * give QB_ENVELOPE_TIME_NOW, so every envelope's time has a four-digit year.
 */
static void test_timestamps(void **state)
{
    static const struct {
        const char *ts;   /* the "timestamp" member's JSON, NULL for none */
        const char *time; /* the envelope's time, NULL for the bridge's clock */
    } cases[] = {
        {"{\"seconds\": -62135596800, \"microseconds\": 0}", "0001-01-01T00:00:00.000000Z"},
        {"{\"seconds\": 253402300799, \"microseconds\": 999999}", "9999-12-31T23:59:59.999999Z"},
        {"{\"seconds\": -1, \"microseconds\": 5}", "1969-12-31T23:59:59.000005Z"},
        {"{\"seconds\": 1732242124, \"microseconds\": 461517}", "2024-11-22T02:22:04.461517Z"},
        {"{\"seconds\": -62135596801, \"microseconds\": 999999}", NULL},
        {"{\"seconds\": 253402300800, \"microseconds\": 0}", NULL},
        {"{\"seconds\": 1732242124, \"microseconds\": -1}", NULL},
        {"{\"seconds\": 1732242124, \"microseconds\": 1000000}", NULL},
        {"{\"seconds\": 9223372036854775807, \"microseconds\": 2147483647}", NULL},
        {"{\"seconds\": -9223372036854775808, \"microseconds\": -2147483648}", NULL},
        {"{\"seconds\": 1000000000000, \"microseconds\": 0}", NULL},
        {"{\"seconds\": 1e12, \"microseconds\": 0}", NULL},
        {"{\"seconds\": 1732242124.5, \"microseconds\": 0}", NULL},
        {"{\"seconds\": 1732242124, \"microseconds\": 1.5}", NULL},
        {"{\"seconds\": \"1732242124\", \"microseconds\": 0}", NULL},
        {"{\"seconds\": 1732242124}", NULL},
        {"{\"microseconds\": 0}", NULL},
        {"{}", NULL},
        {"[1732242124, 0]", NULL},
        {"null", NULL},
        {NULL, NULL},
    };
    const struct qb_envelope_ctx ctx = {"host-a", "file:///usr/share/qmp-bridge/schema/v1/"};
    regex_t re;
    time_t now = time(NULL);
    struct tm tm;

    (void)state;
    gmtime_r(&now, &tm);
    assert_int_equal(regcomp(&re,
                             "\"time\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
                             "\\.[0-9]{6}Z\"",
                             REG_EXTENDED | REG_NOSUB),
                     0);
    qb_log_set_level(QB_LOG_ERROR);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct qb_norm_vm *vm = qb_norm_vm_new();
        char text[256], *bytes = NULL, *when;
        struct qb_norm_event ev;
        struct qb_envelope_in ein;
        size_t len;
        json_t *msg;

        if (cases[i].ts)
            snprintf(text, sizeof(text), "{\"event\": \"RESUME\", \"timestamp\": %s}", cases[i].ts);
        else
            snprintf(text, sizeof(text), "{\"event\": \"RESUME\"}");
        msg = parse(text);
        assert_int_equal(qb_normalize_event(vm, msg, NULL, 0, &ev), 1);
        ein = (struct qb_envelope_in){.vm = "vm1",
                                      .type = ev.type,
                                      .epoch = 1,
                                      .sequence = 1,
                                      .ts_sec = ev.ts_sec,
                                      .ts_usec = ev.ts_usec,
                                      .data = ev.data};
        assert_int_equal(qb_envelope_build(&ctx, &ein, &bytes, &len), QB_OK);
        if (regexec(&re, bytes, 0, NULL, 0) != 0)
            fail_msg("timestamp %s: envelope time is not an RFC 3339 date-time: %s", text, bytes);
        when = strstr(bytes, "\"time\":\"") + 8;
        if (cases[i].time) {
            if (strncmp(when, cases[i].time, strlen(cases[i].time)) != 0)
                fail_msg("timestamp %s: want %s, got %s", text, cases[i].time, bytes);
        } else {
            if (ev.ts_sec != QB_ENVELOPE_TIME_NOW)
                fail_msg("timestamp %s accepted as %lld.%06d", text, (long long)ev.ts_sec,
                         (int)ev.ts_usec);
            /* the bridge's clock: this year (give or take the new year's night) */
            if (atoi(when) < tm.tm_year + 1900 - 1 || atoi(when) > tm.tm_year + 1900 + 1)
                fail_msg("timestamp %s: envelope time not the bridge's clock: %s", text, bytes);
        }
        free(bytes);
        qb_norm_event_clear(&ev);
        json_decref(msg);
        qb_norm_vm_free(vm);
    }
    qb_log_set_level(QB_LOG_INFO);
    regfree(&re);
}

/* Runs fn(arg) with stderr captured into buf (NUL-terminated). */
static void capture_stderr(void (*fn)(void *), void *arg, char *buf, size_t buflen)
{
    FILE *cap = tmpfile();
    int saved = dup(2);
    size_t got;

    assert_non_null(cap);
    assert_true(saved >= 0);
    fflush(stderr);
    assert_true(dup2(fileno(cap), 2) >= 0);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(cap);
    got = fread(buf, 1, buflen - 1, cap);
    buf[got] = '\0';
    fclose(cap);
}

static size_t count_substr(const char *s, const char *sub)
{
    size_t n = 0;

    for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub))
        n++;
    return n;
}

struct two_vms {
    struct qb_norm_vm *vm1, *vm2;
};

/* Bad timestamps on two VMs: three on vm1 (one of them after a new session), two on vm2. */
static void send_bad_timestamps(void *arg)
{
    struct two_vms *t = arg;
    static const char *const lines[] = {
        "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 9223372036854775807,"
        " \"microseconds\": 2147483647}}",
        "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1e12, \"microseconds\": 0}}",
        "{\"event\": \"RESUME\"}",
    };
    struct qb_norm_event ev;

    for (size_t i = 0; i < 3; i++) {
        json_t *msg = parse(lines[i]);

        if (i == 2)
            qb_norm_vm_reset(t->vm1, NULL);
        assert_int_equal(qb_normalize_event(t->vm1, msg, NULL, 0, &ev), 1);
        assert_true(ev.ts_sec == QB_ENVELOPE_TIME_NOW);
        qb_norm_event_clear(&ev);
        if (i < 2) {
            assert_int_equal(qb_normalize_event(t->vm2, msg, NULL, 0, &ev), 1);
            qb_norm_event_clear(&ev);
        }
        json_decref(msg);
    }
}

/* An unusable timestamp is logged once per VM, naming the VM and what was wrong. */
static void test_timestamp_logged_once(void **state)
{
    struct two_vms t = {qb_norm_vm_new(), qb_norm_vm_new()};
    char buf[8192];

    (void)state;
    qb_norm_vm_set_name(t.vm1, "vm1");
    qb_norm_vm_set_name(t.vm2, "vm2");
    capture_stderr(send_bad_timestamps, &t, buf, sizeof(buf));
    print_message("logged: %s", buf);
    assert_int_equal(count_substr(buf, "timestamp unusable"), 2);
    assert_int_equal(count_substr(buf, "[vm1] normalize: RESUME timestamp unusable (seconds "
                                       "outside years 0001-9999): using the bridge's clock"),
                     1);
    assert_int_equal(count_substr(buf, "[vm2] normalize: RESUME timestamp unusable"), 1);
    assert_int_equal(count_substr(buf, " warn "), 2);
    qb_norm_vm_free(t.vm1);
    qb_norm_vm_free(t.vm2);
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
        cmocka_unit_test(test_subset_validator),
        cmocka_unit_test(test_no_invalid_output),
        cmocka_unit_test(test_hostile_replies),
        cmocka_unit_test(test_refusal_logged),
        cmocka_unit_test(test_reset_forgets),
        cmocka_unit_test(test_query_names),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_timestamp_logged_once),
    };

    int failed = cmocka_run_group_tests(tests, NULL, NULL);

    json_decref(schema_cache);
    return failed;
}
