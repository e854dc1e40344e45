/*
 * test_command_exec.c - command plans against a scripted fake QEMU on the same loop.
 *
 * The cases are data: one folder per case under tests/unit/data/command_exec
 * (format above run_case), like tests/unit/data/normalize. The fake QEMU
 * (fake_qmp_peer.c, scripted) listens on a unix socket in a fresh temporary
 * directory, greets like QEMU 7.2, accepts qmp_capabilities, and answers every
 * other command from the case's conversation, each line used once in order,
 * so a plan that queries the status twice gets two lines. A line can return a
 * value, answer a QEMU error, stay silent (for timeouts) or hang up. Each case
 * compares two things with whole JSON documents, so the case reads as the
 * specification: what QEMU received (execute + arguments, ids left out) and
 * the result the executor handed to done. done must never run inside
 * qb_command_exec_start, and only once; every case checks it. What a table
 * cannot say (two commands in one session, a client freed mid-command) stays
 * in C below.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "case_dirs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "command.h"
#include "command_exec.h"
#include "error.h"
#include "fake_qmp_peer.h"
#include "log.h"
#include "qmp_client.h"
#include "qmp_framer.h"

/* ---- the bridge side ---------------------------------------------------- */

struct fx {
    uv_loop_t loop;
    uv_timer_t guard;
    int guard_fired;
    char dir[64];
    char path[128];
    char addr[160];
    struct fake_qmp_peer peer;
    struct qb_qmp_client *c;
    int ready;
    int closed;

    struct qb_command *cmd;
    struct qb_command_policy policy;
    int in_start;
    int done_calls;
    json_t *result;
};

static void on_ready(struct qb_qmp_client *c, void *arg)
{
    struct fx *fx = arg;

    (void)c;
    fx->ready++;
}

static void on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    (void)c;
    (void)msg;
    (void)arg;
}

static void on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct fx *fx = arg;

    (void)c;
    (void)err;
    (void)reason;
    fx->closed++;
}

static const struct qb_qmp_callbacks callbacks = {on_ready, on_event, on_closed};

static void on_done(void *arg, json_t *result)
{
    struct fx *fx = arg;

    assert_int_equal(fx->in_start, 0); /* never from inside qb_command_exec_start */
    fx->done_calls++;
    json_decref(fx->result);
    fx->result = result;
}

static void guard_cb(uv_timer_t *t)
{
    struct fx *fx = t->data;

    fx->guard_fired = 1;
}

/* Runs the loop until cond holds; fails after 10 s instead of hanging. */
#define RUN_UNTIL(fx, cond)                                                                        \
    do {                                                                                           \
        (fx)->guard_fired = 0;                                                                     \
        uv_timer_start(&(fx)->guard, guard_cb, 10000, 0);                                          \
        while (!(cond) && !(fx)->guard_fired)                                                      \
            uv_run(&(fx)->loop, UV_RUN_ONCE);                                                      \
        uv_timer_stop(&(fx)->guard);                                                               \
        assert_true(cond);                                                                         \
    } while (0)

/* A command as command.c would hand it over; strings owned, freed by cmd_free. */
static struct qb_command *cmd_new(enum qb_cmd_name name)
{
    struct qb_command *cmd = calloc(1, sizeof(*cmd));
    char type[64];

    assert_non_null(cmd);
    snprintf(type, sizeof(type), "qmp.command.%s", qb_cmd_name_str(name));
    cmd->id = strdup("cmd-1");
    cmd->source = strdup("test");
    cmd->subject = strdup("vm1");
    cmd->type = strdup(type);
    cmd->name = name;
    cmd->name_known = true;
    return cmd;
}

static void cmd_free(struct qb_command *cmd)
{
    if (cmd == NULL)
        return;
    free(cmd->id);
    free(cmd->source);
    free(cmd->subject);
    free(cmd->bridge);
    free(cmd->type);
    json_decref(cmd->data);
    free(cmd->device);
    free(cmd->node_name);
    free(cmd->job);
    free(cmd);
}

static int setup(void **state)
{
    struct fx *fx = calloc(1, sizeof(*fx));
    struct qb_qmp_options opts = {0, 0};

    assert_non_null(fx);
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(uv_timer_init(&fx->loop, &fx->guard), 0);
    fx->guard.data = fx;
    snprintf(fx->dir, sizeof(fx->dir), "/tmp/qb-exec-test-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof(fx->path), "%s/qmp.sock", fx->dir);
    snprintf(fx->addr, sizeof(fx->addr), "unix:%s", fx->path);
    fake_qmp_peer_init(&fx->peer, &fx->loop);
    fx->peer.scripted = 1;
    fake_qmp_peer_listen_unix(&fx->peer, fx->path);
    assert_int_equal(qb_qmp_client_new(&fx->loop, "vm1", &opts, &callbacks, fx, &fx->c), QB_OK);
    fx->policy.enabled = true;
    fx->policy.allow_mask = ~0u;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;

    qb_qmp_client_free(fx->c);
    fake_qmp_peer_close(&fx->peer);
    uv_close((uv_handle_t *)&fx->guard, NULL);
    /* Closing handles (the executor's deferral timer too) finish within a few iterations. */
    for (int i = 0; i < 100; i++)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    fake_qmp_peer_free(&fx->peer);
    json_decref(fx->result);
    cmd_free(fx->cmd);
    unlink(fx->path);
    assert_int_equal(rmdir(fx->dir), 0);
    free(fx);
    return 0;
}

static void connect_peer(struct fx *fx, const struct fake_qmp_row *script)
{
    fx->peer.script = script;
    assert_int_equal(qb_qmp_client_connect(fx->c, fx->addr), QB_OK);
    RUN_UNTIL(fx, fx->ready == 1 || fx->closed > 0);
    assert_int_equal(fx->closed, 0);
}

/* Starts fx->cmd and runs the loop until done; done must not have run inside start. */
static void run_cmd(struct fx *fx, uint32_t step_timeout_ms)
{
    int rc;

    fx->in_start = 1;
    rc =
        qb_command_exec_start(&fx->loop, fx->c, fx->cmd, &fx->policy, step_timeout_ms, on_done, fx);
    fx->in_start = 0;
    assert_int_equal(rc, QB_OK);
    assert_int_equal(fx->done_calls, 0);
    RUN_UNTIL(fx, fx->done_calls > 0);
    /* Exactly once: a second call would come from a stray reply or timer. */
    for (int i = 0; i < 10; i++)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_int_equal(fx->done_calls, 1);
    assert_non_null(fx->result);
}

/* Fails with both documents printed when actual differs from expected. */
static void assert_json_value(json_t *actual, json_t *expected)
{
    int same = json_equal(actual, expected);

    if (!same) {
        char *a = json_dumps(actual, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
        char *b = json_dumps(expected, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);

        print_error("actual:   %s\nexpected: %s\n", a, b);
        free(a);
        free(b);
    }
    assert_true(same);
}

/* assert_json_value against the JSON text expected_text. */
static void assert_json(json_t *actual, const char *expected_text)
{
    json_error_t jerr;
    json_t *expected = json_loads(expected_text, JSON_DECODE_ANY, &jerr);

    if (expected == NULL)
        fail_msg("bad expected JSON: %s at %d: %s", jerr.text, jerr.position, expected_text);
    assert_json_value(actual, expected);
    json_decref(expected);
}

/* ---- what a table cannot say: two commands in one session, a client freed mid-command ---- */

static void test_block_job_pause_complete(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"block-job-pause", FAKE_QMP_RETURN, "{}"},
        {"block-job-complete", FAKE_QMP_RETURN, "{}"},
        {NULL, 0, NULL},
    };

    connect_peer(fx, script);
    fx->cmd = cmd_new(QB_CMD_BLOCK_JOB_PAUSE);
    fx->cmd->job = strdup("job-a");
    run_cmd(fx, 5000);
    assert_string_equal(json_string_value(json_object_get(fx->result, "status")), "ok");
    cmd_free(fx->cmd);
    fx->cmd = cmd_new(QB_CMD_BLOCK_JOB_COMPLETE);
    fx->cmd->job = strdup("job-b");
    fx->done_calls = 0;
    run_cmd(fx, 5000);
    assert_string_equal(json_string_value(json_object_get(fx->result, "status")), "ok");
    assert_json(fx->peer.commands,
                "[{\"execute\":\"block-job-pause\",\"arguments\":{\"device\":\"job-a\"}},"
                "{\"execute\":\"block-job-complete\",\"arguments\":{\"device\":\"job-b\"}}]");
}

static void test_free_client_mid_command(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"stop", FAKE_QMP_SILENT, NULL},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_STOP);
    connect_peer(fx, script);
    assert_int_equal(
        qb_command_exec_start(&fx->loop, fx->c, fx->cmd, &fx->policy, 5000, on_done, fx), QB_OK);
    RUN_UNTIL(fx, json_array_size(fx->peer.commands) == 1);
    assert_int_equal(fx->done_calls, 0);
    /* The VM manager drops the session: the pending step ends, so does the command. */
    qb_qmp_client_free(fx->c);
    fx->c = NULL;
    RUN_UNTIL(fx, fx->done_calls == 1);
    assert_json(json_object_get(fx->result, "status"), "\"failed\"");
    assert_json(json_object_get(json_object_get(fx->result, "error"), "class"), "\"disconnected\"");
}

/* ---- the data-driven cases ---------------------------------------------- */

/*
 * Each folder tests/unit/data/command_exec/<case>/ holds:
 *   command   the command as command.c hands it over: {"command": name, and
 *             the validated arguments it has: "device", "node_name", "job",
 *             "size", "grow_by", "threshold" (integers, or decimal strings for
 *             values past INT64_MAX), "force"}; its id is always "cmd-1";
 *   qmp       the conversation, one line per command the executor must send,
 *             in order: {"execute": ..., "arguments": {...} if any, and QEMU's
 *             answer: "return": value | "error": {...} | "silent": true (no
 *             answer) | "close": true (hang up on receipt)};
 *   result    the result the executor must hand to done, compared whole;
 *   options   optional: {"policy": {"max_size": n, "max_growth": n},
 *             "step_timeout_ms": n (default 5000), "connect": false (the
 *             client never connects), "closed": n (the session must have
 *             closed n times)}.
 * The answers are real QEMU 7.2's; the query-block of the resize cases shows an
 * IDE disk from -drive (device "disk0", 64 MiB, stopped on ENOSPC), a
 * -blockdev disk (device "", node-name "data0", 1 GiB) and an empty CD-ROM
 * ("cd0").
 */
#define CASES_DIR QB_TEST_DATA_DIR "/command_exec"

/* The JSON document in dir/name (new reference), or NULL when there is no such file. */
static json_t *case_file(const char *dir, const char *name)
{
    char path[2048];
    json_error_t jerr;
    json_t *j;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (access(path, F_OK) != 0)
        return NULL;
    j = json_load_file(path, JSON_DECODE_ANY, &jerr);
    if (j == NULL)
        fail_msg("%s:%d: %s", path, jerr.line, jerr.text);
    return j;
}

/* The JSON lines of dir/name as an array (new reference; empty when no file). */
static json_t *case_lines(const char *dir, const char *name)
{
    char path[2048], *line = NULL;
    size_t cap = 0;
    ssize_t len;
    json_t *out = json_array();
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "r");
    if (f == NULL)
        return out;
    while ((len = getline(&line, &cap, f)) >= 0) {
        json_error_t jerr;
        json_t *j;

        if (len <= 1)
            continue;
        j = json_loads(line, 0, &jerr);
        if (j == NULL)
            fail_msg("%s: %s: %s", path, jerr.text, line);
        json_array_append_new(out, j);
    }
    free(line);
    fclose(f);
    return out;
}

/* An unsigned 64-bit number from an integer or a decimal string. */
static uint64_t case_u64(const json_t *v)
{
    if (json_is_string(v))
        return strtoull(json_string_value(v), NULL, 10);
    assert_true(json_is_integer(v));
    return (uint64_t)json_integer_value(v);
}

static char *case_strdup(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));

    return s ? strdup(s) : NULL;
}

/* Builds fx->cmd from the case's command file. */
static void case_command(struct fx *fx, const json_t *c)
{
    enum qb_cmd_name name;
    json_t *v;

    assert_int_equal(qb_cmd_name_parse(json_string_value(json_object_get(c, "command")), &name),
                     QB_OK);
    fx->cmd = cmd_new(name);
    fx->cmd->device = case_strdup(c, "device");
    fx->cmd->node_name = case_strdup(c, "node_name");
    fx->cmd->job = case_strdup(c, "job");
    if ((v = json_object_get(c, "size")) != NULL) {
        fx->cmd->size = case_u64(v);
        fx->cmd->has_size = true;
    }
    if ((v = json_object_get(c, "grow_by")) != NULL) {
        fx->cmd->grow_by = case_u64(v);
        fx->cmd->has_grow_by = true;
    }
    if ((v = json_object_get(c, "threshold")) != NULL)
        fx->cmd->threshold = case_u64(v);
    fx->cmd->force = json_is_true(json_object_get(c, "force"));
}

/*
 * The peer's script from the qmp lines: rows (texts owned by the caller, freed
 * with case_rows_free) and, in *sent, what the executor must send.
 */
static struct fake_qmp_row *case_rows(const json_t *qmp, json_t **sent)
{
    size_t n = json_array_size(qmp);
    struct fake_qmp_row *rows = calloc(n + 1, sizeof(*rows));

    assert_non_null(rows);
    *sent = json_array();
    for (size_t i = 0; i < n; i++) {
        const json_t *l = json_array_get(qmp, i);
        json_t *cmd = json_object();
        json_t *args = json_object_get(l, "arguments");

        rows[i].execute = json_string_value(json_object_get(l, "execute"));
        assert_non_null(rows[i].execute);
        json_object_set(cmd, "execute", json_object_get(l, "execute"));
        if (args != NULL)
            json_object_set(cmd, "arguments", args);
        json_array_append_new(*sent, cmd);
        if (json_object_get(l, "return") != NULL) {
            rows[i].act = FAKE_QMP_RETURN;
            rows[i].text = json_dumps(json_object_get(l, "return"), JSON_ENCODE_ANY);
        } else if (json_object_get(l, "error") != NULL) {
            rows[i].act = FAKE_QMP_ERROR;
            rows[i].text = json_dumps(json_object_get(l, "error"), JSON_ENCODE_ANY);
        } else if (json_is_true(json_object_get(l, "silent"))) {
            rows[i].act = FAKE_QMP_SILENT;
        } else {
            assert_true(json_is_true(json_object_get(l, "close")));
            rows[i].act = FAKE_QMP_CLOSE;
        }
    }
    return rows;
}

static void case_rows_free(struct fake_qmp_row *rows)
{
    for (size_t i = 0; rows[i].execute != NULL; i++)
        free((char *)rows[i].text);
    free(rows);
}

static void run_case(const char *dir)
{
    void *state = NULL;
    struct fx *fx;
    json_t *command = case_file(dir, "command");
    json_t *options = case_file(dir, "options");
    json_t *result = case_file(dir, "result");
    json_t *qmp = case_lines(dir, "qmp");
    json_t *policy = json_object_get(options, "policy");
    json_t *timeout = json_object_get(options, "step_timeout_ms");
    json_t *closed = json_object_get(options, "closed");
    json_t *sent;
    struct fake_qmp_row *rows = case_rows(qmp, &sent);

    assert_non_null(command);
    setup(&state);
    fx = state;
    case_command(fx, command);
    if (json_object_get(policy, "max_size") != NULL)
        fx->policy.max_size = case_u64(json_object_get(policy, "max_size"));
    if (json_object_get(policy, "max_growth") != NULL)
        fx->policy.max_growth = case_u64(json_object_get(policy, "max_growth"));
    if (!json_is_false(json_object_get(options, "connect")))
        connect_peer(fx, rows);
    run_cmd(fx, timeout ? (uint32_t)json_integer_value(timeout) : 5000);
    if (result == NULL) {
        char *text = json_dumps(fx->result, JSON_COMPACT);

        fail_msg("%s/result is missing; the executor gave: %s", dir, text);
    }
    assert_json_value(fx->peer.commands, sent);
    assert_json_value(fx->result, result);
    assert_int_equal(fx->peer.unscripted, 0);
    if (closed != NULL)
        assert_int_equal(fx->closed, json_integer_value(closed));
    teardown(&state);
    case_rows_free(rows);
    json_decref(sent);
    json_decref(qmp);
    json_decref(result);
    json_decref(options);
    json_decref(command);
}

static void test_cases(void **state)
{
    (void)state;
    assert_true(qb_test_run_case_dirs(CASES_DIR, run_case) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test_setup_teardown(test_block_job_pause_complete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_client_mid_command, setup, teardown),
    };

    /* Debug level so every log statement's formatting runs under the sanitizers too. */
    qb_log_set_level(QB_LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
