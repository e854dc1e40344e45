/*
 * test_command_exec.c - command plans against a scripted fake QEMU on the same loop.
 *
 * The fake QEMU (fake_qmp_peer.c, scripted) listens on a unix socket in a
 * fresh temporary directory, greets like QEMU 7.2, accepts qmp_capabilities,
 * and answers every other command from the test's script: a table of
 * (execute, what to do) rows used in order, so a plan that queries the status
 * twice gets two rows. A row can return a value, answer a QEMU error, stay
 * silent (for timeouts) or hang up. Each test then compares two things with
 * whole JSON documents, so the test reads as the specification: what QEMU
 * received (execute + arguments, ids left out) and the result the executor
 * handed to done. done must never run inside qb_command_exec_start; every
 * test checks it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

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

/* Real QEMU 7.2 replies. */
#define ST_IO_ERROR "{\"status\": \"io-error\", \"singlestep\": false, \"running\": false}"
#define ST_RUNNING "{\"status\": \"running\", \"singlestep\": false, \"running\": true}"
#define ST_PAUSED "{\"status\": \"paused\", \"singlestep\": false, \"running\": false}"
#define ST_SHUTDOWN "{\"status\": \"shutdown\", \"singlestep\": false, \"running\": false}"

/* An IDE disk from -drive (device "disk0", 64 MiB, stopped on ENOSPC), a -blockdev disk (device "",
 * node-name "data0", 1 GiB) and an empty CD-ROM. */
#define QUERY_BLOCK                                                                                \
    "[{\"io-status\": \"nospace\", \"device\": \"disk0\", \"locked\": false, \"removable\": "      \
    "false, \"inserted\": {\"iops_rd\": 0, \"detect_zeroes\": \"off\", \"image\": "                \
    "{\"virtual-size\": 67108864, \"filename\": \"/tmp/qb/disk.raw\", \"format\": \"raw\", "       \
    "\"actual-size\": 4194304, \"dirty-flag\": false}, \"iops_wr\": 0, \"ro\": false, "            \
    "\"node-name\": \"#block143\", \"backing_file_depth\": 0, \"drv\": \"raw\", \"iops\": 0, "     \
    "\"bps_wr\": 0, \"write_threshold\": 0, \"encrypted\": false, \"bps\": 0, \"bps_rd\": 0, "     \
    "\"cache\": {\"no-flush\": false, \"direct\": false, \"writeback\": true}, \"file\": "         \
    "\"/tmp/qb/disk.raw\"}, \"qdev\": \"/machine/unattached/device[5]\", \"type\": \"unknown\"}, " \
    "{\"io-status\": \"ok\", \"device\": \"\", \"locked\": false, \"removable\": false, "          \
    "\"inserted\": {\"image\": {\"virtual-size\": 1073741824, \"filename\": "                      \
    "\"/tmp/qb/data.qcow2\", \"cluster-size\": 65536, \"format\": \"qcow2\", \"actual-size\": "    \
    "200704, \"dirty-flag\": false}, \"ro\": false, \"node-name\": \"data0\", \"drv\": "           \
    "\"qcow2\", \"write_threshold\": 0, \"file\": \"/tmp/qb/data.qcow2\"}, \"qdev\": "             \
    "\"/machine/peripheral/vd0/virtio-backend\", \"type\": \"unknown\"}, "                         \
    "{\"device\": \"cd0\", \"locked\": false, \"removable\": true, \"tray_open\": false, "         \
    "\"qdev\": \"/machine/unattached/device[6]\", \"type\": \"unknown\"}]"

#define MIB (1024ull * 1024ull)

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

/* Fails with both documents printed when actual differs from the JSON text expected. */
static void assert_json(json_t *actual, const char *expected_text)
{
    json_error_t jerr;
    json_t *expected = json_loads(expected_text, JSON_DECODE_ANY, &jerr);
    int same;

    if (expected == NULL)
        fail_msg("bad expected JSON: %s at %d: %s", jerr.text, jerr.position, expected_text);
    same = json_equal(actual, expected);
    if (!same) {
        char *a = json_dumps(actual, JSON_SORT_KEYS | JSON_COMPACT);
        char *b = json_dumps(expected, JSON_SORT_KEYS | JSON_COMPACT);

        print_error("actual:   %s\nexpected: %s\n", a, b);
        free(a);
        free(b);
    }
    json_decref(expected);
    assert_true(same);
}

static void check(struct fx *fx, const char *received, const char *result)
{
    assert_json(fx->peer.commands, received);
    assert_json(fx->result, result);
    assert_int_equal(fx->peer.unscripted, 0);
}

static struct qb_command *resize_cmd(struct fx *fx, const char *device, const char *node_name)
{
    fx->cmd = cmd_new(QB_CMD_RESIZE_AND_CONT);
    if (device != NULL)
        fx->cmd->device = strdup(device);
    if (node_name != NULL)
        fx->cmd->node_name = strdup(node_name);
    return fx->cmd;
}

/* One row per line reads like the conversation. */
/* clang-format off */
static const struct fake_qmp_row resize_ok[] = {
    {"query-status", FAKE_QMP_RETURN, ST_IO_ERROR},
    {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
    {"block_resize", FAKE_QMP_RETURN, "{}"},
    {"cont", FAKE_QMP_RETURN, "{}"},
    {"query-status", FAKE_QMP_RETURN, ST_RUNNING},
    {NULL, 0, NULL},
};
/* clang-format on */

/* ---- resize-and-cont ---------------------------------------------------- */

static void test_resize_device_size(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->size = 128 * MIB;
    fx->cmd->has_size = true;
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    check(fx,
          "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":134217728}},"
          "{\"execute\":\"cont\"},{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":134217728},"
          "\"status\":\"ok\"},"
          "{\"execute\":\"cont\",\"status\":\"ok\"},{\"execute\":\"query-status\",\"status\":"
          "\"ok\"}],"
          "\"run_state\":\"running\"}");
}

static void test_resize_node_name_grow_by(void **state)
{
    struct fx *fx = *state;

    /* The blockdev disk is 1 GiB; grow_by adds to what QEMU reports. */
    resize_cmd(fx, NULL, "data0")->grow_by = 512 * MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    check(fx,
          "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"node-name\":\"data0\","
          "\"size\":1610612736}},"
          "{\"execute\":\"cont\"},{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"node-name\":\"data0\","
          "\"size\":1610612736},\"status\":\"ok\"},"
          "{\"execute\":\"cont\",\"status\":\"ok\"},{\"execute\":\"query-status\",\"status\":"
          "\"ok\"}],"
          "\"run_state\":\"running\"}");
}

static void test_resize_same_size_is_allowed(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->size = 64 * MIB;
    fx->cmd->has_size = true;
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    assert_string_equal(json_string_value(json_object_get(fx->result, "status")), "ok");
    assert_json(json_object_get(json_array_get(fx->peer.commands, 2), "arguments"),
                "{\"device\":\"disk0\",\"size\":67108864}");
}

static const struct fake_qmp_row running_vm[] = {
    {"query-status", FAKE_QMP_RETURN, ST_RUNNING},
    {NULL, 0, NULL},
};

static void test_resize_not_paused_on_io_error(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, running_vm);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"precondition\",\"message\":\"VM is running (status running), not "
          "paused on io-error; set force to resize anyway\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"}],"
          "\"run_state\":\"running\"}");
}

static void test_resize_force_skips_io_error_check(void **state)
{
    struct fx *fx = *state;
    /* clang-format off */
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_RETURN, ST_PAUSED},
        {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
        {"block_resize", FAKE_QMP_RETURN, "{}"},
        {"cont", FAKE_QMP_RETURN, "{}"},
        {"query-status", FAKE_QMP_RETURN, ST_RUNNING},
        {NULL, 0, NULL},
    };
    /* clang-format on */

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    fx->cmd->force = true;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    assert_string_equal(json_string_value(json_object_get(fx->result, "status")), "ok");
    assert_int_equal(json_array_size(fx->peer.commands), 5);
    assert_json(json_object_get(json_array_get(fx->peer.commands, 2), "arguments"),
                "{\"device\":\"disk0\",\"size\":68157440}");
}

/* Runs a resize that the limits must stop after query-block; returns nothing, checks all. */
static void run_limited(struct fx *fx, const char *message)
{
    char result[1024];

    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    snprintf(result, sizeof(result),
             "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
             "\"error\":{\"class\":\"limit\",\"message\":\"%s\"},"
             "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
             "{\"execute\":\"query-block\",\"status\":\"ok\"}],\"run_state\":\"io-error\"}",
             message);
    check(fx, "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"}]", result);
}

static void test_resize_shrink_refused(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->size = 32 * MIB;
    fx->cmd->has_size = true;
    run_limited(fx, "shrink from 67108864 to 33554432 refused");
}

static void test_resize_over_max_size(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->size = 256 * MIB;
    fx->cmd->has_size = true;
    fx->policy.max_size = 128 * MIB;
    run_limited(fx, "new size 268435456 exceeds max_size 134217728");
}

static void test_resize_over_max_growth(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, NULL, "data0")->grow_by = 2 * MIB;
    fx->cmd->has_grow_by = true;
    fx->policy.max_size = 4096 * MIB; /* not the limit that bites */
    fx->policy.max_growth = MIB;
    run_limited(fx, "growth of 2097152 bytes (from 1073741824 to 1075838976) exceeds max_growth "
                    "1048576");
}

static void test_resize_grow_by_overflow(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL)->grow_by = UINT64_MAX - 1000;
    fx->cmd->has_grow_by = true;
    run_limited(fx, "growing 67108864 by 18446744073709550615 overflows");
}

static void test_resize_over_qemu_maximum(void **state)
{
    struct fx *fx = *state;

    /* QMP sizes are signed 64-bit: a bigger one must never reach QEMU as a negative number. */
    resize_cmd(fx, "disk0", NULL)->size = (uint64_t)INT64_MAX + 1;
    fx->cmd->has_size = true;
    run_limited(fx, "new size 9223372036854775808 is over QEMU's maximum");
}

static void test_resize_unknown_device(void **state)
{
    struct fx *fx = *state;

    /* "#block143" is disk0's node-name, but a device lookup must not match node names. */
    resize_cmd(fx, "#block143", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"precondition\",\"message\":\"no disk with device '#block143'\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"}],\"run_state\":\"io-error\"}");
}

static void test_resize_empty_drive(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "cd0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    assert_string_equal(json_string_value(json_object_get(fx->result, "status")), "rejected");
    assert_json(json_object_get(fx->result, "error"),
                "{\"class\":\"precondition\",\"message\":\"disk with device 'cd0' has no medium "
                "or no known size\"}");
    assert_int_equal(json_array_size(fx->peer.commands), 2);
}

static void test_resize_block_resize_error(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_RETURN, ST_IO_ERROR},
        {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
        {"block_resize", FAKE_QMP_ERROR,
         "{\"class\": \"GenericError\", \"desc\": \"Could not resize: Permission denied\"}"},
        {"cont", FAKE_QMP_RETURN, "{}"},
        {NULL, 0, NULL},
    };

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx,
          "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":68157440}}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"failed\","
          "\"error\":{\"class\":\"qmp\",\"message\":\"block_resize failed: Could not resize: "
          "Permission denied\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":68157440},"
          "\"status\":\"failed\",\"error\":{\"class\":\"GenericError\",\"desc\":\"Could not "
          "resize: Permission denied\"}}],\"run_state\":\"io-error\"}");
}

static void test_resize_ok_cont_refused(void **state)
{
    struct fx *fx = *state;
    /* With force, a VM that powered off can be resized, but QEMU refuses cont from shutdown. */
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_RETURN, ST_SHUTDOWN},
        {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
        {"block_resize", FAKE_QMP_RETURN, "{}"},
        {"cont", FAKE_QMP_ERROR,
         "{\"class\": \"GenericError\", \"desc\": \"Resetting the Virtual Machine is required\"}"},
        {NULL, 0, NULL},
    };

    resize_cmd(fx, "disk0", NULL)->size = 128 * MIB;
    fx->cmd->has_size = true;
    fx->cmd->force = true;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx,
          "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":134217728}},"
          "{\"execute\":\"cont\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"failed\","
          "\"error\":{\"class\":\"qmp\",\"message\":\"cont failed: Resetting the Virtual Machine "
          "is required\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":134217728},"
          "\"status\":\"ok\"},"
          "{\"execute\":\"cont\",\"status\":\"failed\",\"error\":{\"class\":\"GenericError\","
          "\"desc\":\"Resetting the Virtual Machine is required\"}}],\"run_state\":\"shutdown\"}");
}

static void test_resize_invalid_arguments(void **state)
{
    struct fx *fx = *state;

    resize_cmd(fx, "disk0", NULL); /* neither size nor grow_by */
    connect_peer(fx, resize_ok);
    run_cmd(fx, 5000);
    check(fx, "[]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"invalid\",\"message\":\"data: exactly one of size and grow_by "
          "is required\"},\"steps\":[]}");
}

/* ---- the other commands ------------------------------------------------- */

static void test_cont(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"cont", FAKE_QMP_RETURN, "{}"},
        {"query-status", FAKE_QMP_RETURN, ST_RUNNING},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_CONT);
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"cont\"},{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"cont\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"cont\",\"status\":\"ok\"},"
          "{\"execute\":\"query-status\",\"status\":\"ok\"}],\"run_state\":\"running\"}");
}

static void test_stop(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"stop", FAKE_QMP_RETURN, "{}"},
        {"query-status", FAKE_QMP_RETURN, ST_PAUSED},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_STOP);
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"stop\"},{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"stop\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"stop\",\"status\":\"ok\"},"
          "{\"execute\":\"query-status\",\"status\":\"ok\"}],\"run_state\":\"paused\"}");
}

static void test_cont_final_query_fails_still_ok(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"cont", FAKE_QMP_RETURN, "{}"},
        {"query-status", FAKE_QMP_ERROR, "{\"class\": \"GenericError\", \"desc\": \"oops\"}"},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_CONT);
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"cont\"},{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"cont\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"cont\",\"status\":\"ok\"},"
          "{\"execute\":\"query-status\",\"status\":\"failed\",\"error\":{\"class\":"
          "\"GenericError\",\"desc\":\"oops\"}}]}");
}

static void test_block_job_cancel(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"block-job-cancel", FAKE_QMP_RETURN, "{}"},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_BLOCK_JOB_CANCEL);
    fx->cmd->job = strdup("mirror0");
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"block-job-cancel\",\"arguments\":{\"device\":\"mirror0\"}}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"block-job-cancel\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"block-job-cancel\",\"arguments\":{\"device\":\"mirror0\"},"
          "\"status\":\"ok\"}]}");
}

static void test_block_jobs_unknown_job(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"block-job-resume", FAKE_QMP_ERROR,
         "{\"class\": \"DeviceNotActive\", \"desc\": \"Block job 'nojob' not found\"}"},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_BLOCK_JOB_RESUME);
    fx->cmd->job = strdup("nojob");
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"block-job-resume\",\"arguments\":{\"device\":\"nojob\"}}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"block-job-resume\",\"status\":\"failed\","
          "\"error\":{\"class\":\"qmp\",\"message\":\"block-job-resume failed: Block job 'nojob' "
          "not found\"},"
          "\"steps\":[{\"execute\":\"block-job-resume\",\"arguments\":{\"device\":\"nojob\"},"
          "\"status\":\"failed\",\"error\":{\"class\":\"DeviceNotActive\",\"desc\":\"Block job "
          "'nojob' not found\"}}]}");
}

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

static void test_set_write_threshold(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"block-set-write-threshold", FAKE_QMP_RETURN, "{}"},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_SET_WRITE_THRESHOLD);
    fx->cmd->node_name = strdup("data0");
    fx->cmd->threshold = 805306368;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx,
          "[{\"execute\":\"block-set-write-threshold\",\"arguments\":{\"node-name\":\"data0\","
          "\"write-threshold\":805306368}}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"set-write-threshold\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"block-set-write-threshold\",\"arguments\":{\"node-name\":"
          "\"data0\",\"write-threshold\":805306368},\"status\":\"ok\"}]}");
}

static void test_colo_lost_heartbeat(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"x-colo-lost-heartbeat", FAKE_QMP_RETURN, "{}"},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_COLO_LOST_HEARTBEAT);
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"x-colo-lost-heartbeat\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"colo-lost-heartbeat\",\"status\":\"ok\","
          "\"steps\":[{\"execute\":\"x-colo-lost-heartbeat\",\"status\":\"ok\"}]}");
}

static void test_query_state_has_no_steps(void **state)
{
    struct fx *fx = *state;

    fx->cmd = cmd_new(QB_CMD_QUERY_STATE);
    connect_peer(fx, NULL);
    run_cmd(fx, 5000);
    check(fx, "[]",
          "{\"command_id\":\"cmd-1\",\"command\":\"query-state\",\"status\":\"ok\",\"steps\":[]}");
}

/* ---- timeouts and lost sessions ---------------------------------------- */

static void test_timeout_before_change_rejects(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_SILENT, NULL},
        {NULL, 0, NULL},
    };

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, script);
    run_cmd(fx, 50);
    check(fx, "[{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"timeout\",\"message\":\"query-status: no reply within 50 ms\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"failed\"}]}");
}

static void test_timeout_after_change_fails(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_RETURN, ST_IO_ERROR},
        {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
        {"block_resize", FAKE_QMP_RETURN, "{}"},
        {"cont", FAKE_QMP_SILENT, NULL},
        {NULL, 0, NULL},
    };

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, script);
    run_cmd(fx, 50);
    assert_int_equal(json_array_size(fx->peer.commands), 4);
    assert_json(json_object_get(fx->result, "status"), "\"failed\"");
    assert_json(json_object_get(fx->result, "error"),
                "{\"class\":\"timeout\",\"message\":\"cont: no reply within 50 ms\"}");
    assert_json(json_array_get(json_object_get(fx->result, "steps"), 3),
                "{\"execute\":\"cont\",\"status\":\"failed\"}");
    assert_json(json_array_get(json_object_get(fx->result, "steps"), 2),
                "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":"
                "68157440},\"status\":\"ok\"}");
}

static void test_peer_closes_mid_command(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_RETURN, ST_IO_ERROR},
        {"query-block", FAKE_QMP_RETURN, QUERY_BLOCK},
        {"block_resize", FAKE_QMP_CLOSE, NULL},
        {NULL, 0, NULL},
    };

    resize_cmd(fx, "disk0", NULL)->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    assert_int_equal(fx->closed, 1);
    check(fx,
          "[{\"execute\":\"query-status\"},{\"execute\":\"query-block\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":68157440}}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"failed\","
          "\"error\":{\"class\":\"disconnected\",\"message\":\"QMP session closed while waiting "
          "for block_resize\"},"
          "\"steps\":[{\"execute\":\"query-status\",\"status\":\"ok\"},"
          "{\"execute\":\"query-block\",\"status\":\"ok\"},"
          "{\"execute\":\"block_resize\",\"arguments\":{\"device\":\"disk0\",\"size\":68157440},"
          "\"status\":\"failed\"}],\"run_state\":\"io-error\"}");
}

static void test_peer_closes_before_change_rejects(void **state)
{
    struct fx *fx = *state;
    static const struct fake_qmp_row script[] = {
        {"query-status", FAKE_QMP_CLOSE, NULL},
        {NULL, 0, NULL},
    };

    fx->cmd = cmd_new(QB_CMD_RESIZE_AND_CONT);
    fx->cmd->device = strdup("disk0");
    fx->cmd->grow_by = MIB;
    fx->cmd->has_grow_by = true;
    connect_peer(fx, script);
    run_cmd(fx, 5000);
    check(fx, "[{\"execute\":\"query-status\"}]",
          "{\"command_id\":\"cmd-1\",\"command\":\"resize-and-cont\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"disconnected\",\"message\":\"QMP session closed while waiting "
          "for query-status\"},\"steps\":[{\"execute\":\"query-status\",\"status\":\"failed\"}]}");
}

static void test_no_session_is_never_synchronous(void **state)
{
    struct fx *fx = *state;

    /* The client never connected: execute fails at once, yet done must wait for the loop. */
    fx->cmd = cmd_new(QB_CMD_STOP);
    run_cmd(fx, 5000);
    check(fx, "[]",
          "{\"command_id\":\"cmd-1\",\"command\":\"stop\",\"status\":\"rejected\","
          "\"error\":{\"class\":\"disconnected\",\"message\":\"no QMP session to send stop\"},"
          "\"steps\":[]}");
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_resize_device_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_node_name_grow_by, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_same_size_is_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_not_paused_on_io_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_force_skips_io_error_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_shrink_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_over_max_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_over_max_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_grow_by_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_over_qemu_maximum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_unknown_device, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_empty_drive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_block_resize_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_ok_cont_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resize_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cont, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cont_final_query_fails_still_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_job_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_jobs_unknown_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_block_job_pause_complete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_write_threshold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_colo_lost_heartbeat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_state_has_no_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_before_change_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_after_change_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closes_mid_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closes_before_change_rejects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_session_is_never_synchronous, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_client_mid_command, setup, teardown),
    };

    /* Debug level so every log statement's formatting runs under the sanitizers too. */
    qb_log_set_level(QB_LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
