/*
 * command_exec.c - run one validated command as a fixed plan of QMP steps.
 *
 * Every command has one row in qb_plans: a check of its arguments and a short
 * list of steps. A step names the QMP command, optionally builds its arguments
 * from the command and from what earlier steps learned, and optionally checks
 * the reply (and remembers what later steps need, e.g. the disk's size). Steps
 * run strictly one after the other on the session, each with its own timeout.
 *
 * Status rule: once a state-changing step (block_resize, cont, stop, block
 * jobs, thresholds, COLO) has been sent, QEMU may have acted, so any error
 * from then on makes the command "failed"; an error before that (precondition,
 * limit, a query that failed, no session) makes it "rejected". The final
 * query-status of a plan is informational: if it fails, the command keeps its
 * status and only run_state is missing (the step still shows as failed).
 *
 * done is never called from inside qb_command_exec_start: when there is
 * nothing to send (query-state, invalid arguments, session not READY) the
 * finish is deferred to a zero-delay timer on the caller's loop, so callers
 * may hold locks or half-built state around the start call.
 */
#include "command_exec.h"
#include "command_limits.h"
#include "error.h"
#include "log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qb_command_exec;

/* Builds a step's arguments into *args (new reference, NULL for none). QB_OK, or an error already
 * recorded with qb_exec_error. */
typedef int (*qb_step_build_fn)(struct qb_command_exec *e, json_t **args);

/* Checks a successful reply (ret is the borrowed "return" value). QB_OK to go on, or an error
 * already recorded with qb_exec_error. */
typedef int (*qb_step_check_fn)(struct qb_command_exec *e, json_t *ret);

/* Checks the command's arguments before anything is sent. QB_OK or a recorded error. */
typedef int (*qb_plan_valid_fn)(struct qb_command_exec *e);

enum {
    QB_STEP_CHANGES = 1u << 0,  /* QEMU may change the VM: errors from now on mean "failed" */
    QB_STEP_OPTIONAL = 1u << 1, /* a failure is recorded in the step but ends nothing */
};

struct qb_step_def {
    const char *execute;
    qb_step_build_fn build; /* NULL: no arguments */
    qb_step_check_fn check; /* NULL: any "return" is fine */
    unsigned flags;
};

struct qb_plan {
    qb_plan_valid_fn valid; /* NULL: nothing to check */
    const struct qb_step_def *steps;
    size_t n;
};

struct qb_command_exec {
    uv_loop_t *loop;
    struct qb_qmp_client *c;
    const struct qb_command *cmd;           /* borrowed */
    const struct qb_command_policy *policy; /* borrowed, may be NULL (no limits) */
    uint32_t step_timeout_ms;
    qb_command_done_cb done;
    void *arg;

    const struct qb_plan *plan;
    size_t next;         /* index of the step in flight, or of the next one */
    json_t *steps;       /* owned: one record per step sent */
    json_t *cur;         /* borrowed from steps: record of the step in flight */
    bool changed;        /* a QB_STEP_CHANGES step was sent */
    bool starting;       /* inside qb_command_exec_start: finishing must be deferred */
    const char *err_cls; /* static QB_CMD_ERR_*, NULL while all is well */
    char err_msg[256];
    char *run_state; /* owned, from the latest query-status */

    /* Learned by query-block for block_resize. */
    uint64_t new_size;

    uv_timer_t defer; /* only initialised when the finish is deferred */
};

static const char *qb_exec_vm(const struct qb_command_exec *e)
{
    return e->cmd->subject;
}

/* Records the command's error; the first one wins because it is the cause. Returns QB_EINVAL so
 * build/check functions can return it directly. */
static int qb_exec_error(struct qb_command_exec *e, const char *cls, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int qb_exec_error(struct qb_command_exec *e, const char *cls, const char *fmt, ...)
{
    va_list ap;

    if (e->err_cls != NULL)
        return QB_EINVAL;
    e->err_cls = cls;
    va_start(ap, fmt);
    vsnprintf(e->err_msg, sizeof(e->err_msg), fmt, ap);
    va_end(ap);
    return QB_EINVAL;
}

/* ---- argument checks ---- */

static int qb_valid_resize(struct qb_command_exec *e)
{
    const struct qb_command *cmd = e->cmd;

    if (cmd->device == NULL && cmd->node_name == NULL)
        return qb_exec_error(e, QB_CMD_ERR_INVALID, "data: device or node_name is required");
    if (cmd->has_size == cmd->has_grow_by)
        return qb_exec_error(e, QB_CMD_ERR_INVALID,
                             "data: exactly one of size and grow_by is required");
    return QB_OK;
}

static int qb_valid_job(struct qb_command_exec *e)
{
    if (e->cmd->job == NULL)
        return qb_exec_error(e, QB_CMD_ERR_INVALID, "data.job: required");
    return QB_OK;
}

static int qb_valid_threshold(struct qb_command_exec *e)
{
    if (e->cmd->node_name == NULL)
        return qb_exec_error(e, QB_CMD_ERR_INVALID, "data.node_name: required");
    /* QMP integers are signed 64-bit. */
    if (e->cmd->threshold > (uint64_t)INT64_MAX)
        return qb_exec_error(e, QB_CMD_ERR_INVALID, "data.threshold: over %" PRId64, INT64_MAX);
    return QB_OK;
}

/* ---- argument builders ---- */

/* The disk as named by the command: the QMP key and its value. device wins if both are set. */
static void qb_disk_key(const struct qb_command *cmd, const char **key, const char **name)
{
    if (cmd->device != NULL) {
        *key = "device";
        *name = cmd->device;
    } else {
        *key = "node-name";
        *name = cmd->node_name;
    }
}

static int qb_nomem(struct qb_command_exec *e, const char *what)
{
    QB_LOG_ERR(qb_exec_vm(e), "command %s: out of memory building %s",
               e->cmd->id ? e->cmd->id : "-", what);
    qb_exec_error(e, QB_CMD_ERR_QMP, "out of memory building %s", what);
    return QB_ENOMEM;
}

static int qb_build_resize(struct qb_command_exec *e, json_t **args)
{
    const char *key, *name;

    qb_disk_key(e->cmd, &key, &name);
    *args = json_pack("{s:s, s:I}", key, name, "size", (json_int_t)e->new_size);
    return *args ? QB_OK : qb_nomem(e, "block_resize");
}

static int qb_build_job(struct qb_command_exec *e, json_t **args)
{
    *args = json_pack("{s:s}", "device", e->cmd->job);
    return *args ? QB_OK : qb_nomem(e, "block-job arguments");
}

static int qb_build_threshold(struct qb_command_exec *e, json_t **args)
{
    *args = json_pack("{s:s, s:I}", "node-name", e->cmd->node_name, "write-threshold",
                      (json_int_t)e->cmd->threshold);
    return *args ? QB_OK : qb_nomem(e, "block-set-write-threshold");
}

/* ---- reply checks ---- */

/* Remembers query-status's run state; a reply without one just leaves it unknown. */
static void qb_note_run_state(struct qb_command_exec *e, json_t *ret)
{
    const char *status = json_string_value(json_object_get(ret, "status"));
    char *copy;

    if (status == NULL)
        return;
    copy = strdup(status);
    if (copy == NULL)
        return;
    free(e->run_state);
    e->run_state = copy;
}

static int qb_check_run_state(struct qb_command_exec *e, json_t *ret)
{
    qb_note_run_state(e, ret);
    return QB_OK;
}

/* Resizing is meant to fix a VM that stopped on ENOSPC; anything else needs an explicit force. */
static int qb_check_io_error(struct qb_command_exec *e, json_t *ret)
{
    const char *status = json_string_value(json_object_get(ret, "status"));

    qb_note_run_state(e, ret);
    if (e->cmd->force || (status != NULL && strcmp(status, "io-error") == 0))
        return QB_OK;
    return qb_exec_error(e, QB_CMD_ERR_PRECONDITION,
                         "VM is %s (status %s), not paused on io-error; set force to resize anyway",
                         json_is_true(json_object_get(ret, "running")) ? "running" : "stopped",
                         status ? status : "unknown");
}

/* Finds the query-block entry the command names (borrowed), or NULL. */
static json_t *qb_find_disk(const struct qb_command *cmd, json_t *ret)
{
    size_t i;
    json_t *entry;

    json_array_foreach(ret, i, entry)
    {
        const char *v;

        if (cmd->device != NULL)
            v = json_string_value(json_object_get(entry, "device"));
        else
            v = json_string_value(json_object_get(json_object_get(entry, "inserted"), "node-name"));
        if (v != NULL && strcmp(v, cmd->device != NULL ? cmd->device : cmd->node_name) == 0)
            return entry;
    }
    return NULL;
}

/* Finds the disk, works out the new size and holds it against shrinking and the policy. */
static int qb_check_disk(struct qb_command_exec *e, json_t *ret)
{
    const struct qb_command *cmd = e->cmd;
    const char *key, *name, *cls;
    json_t *entry, *vsize;
    uint64_t cur, new_size;
    char msg[200];

    qb_disk_key(cmd, &key, &name);
    entry = qb_find_disk(cmd, ret);
    if (entry == NULL)
        return qb_exec_error(e, QB_CMD_ERR_PRECONDITION, "no disk with %s '%s'", key, name);
    vsize = json_object_get(json_object_get(json_object_get(entry, "inserted"), "image"),
                            "virtual-size");
    if (!json_is_integer(vsize) || json_integer_value(vsize) < 0)
        return qb_exec_error(e, QB_CMD_ERR_PRECONDITION,
                             "disk with %s '%s' has no medium or no known size", key, name);
    cur = (uint64_t)json_integer_value(vsize);
    if (qb_command_resize_size(cmd, e->policy, cur, &new_size, &cls, msg, sizeof(msg)) < 0)
        return qb_exec_error(e, cls, "%s", msg);
    e->new_size = new_size;
    return QB_OK;
}

/* ---- the plans ---- */

static const struct qb_step_def qb_steps_resize[] = {
    {"query-status", NULL, qb_check_io_error, 0},
    {"query-block", NULL, qb_check_disk, 0},
    {"block_resize", qb_build_resize, NULL, QB_STEP_CHANGES},
    {"cont", NULL, NULL, QB_STEP_CHANGES},
    {"query-status", NULL, qb_check_run_state, QB_STEP_OPTIONAL},
};
static const struct qb_step_def qb_steps_cont[] = {
    {"cont", NULL, NULL, QB_STEP_CHANGES},
    {"query-status", NULL, qb_check_run_state, QB_STEP_OPTIONAL},
};
static const struct qb_step_def qb_steps_stop[] = {
    {"stop", NULL, NULL, QB_STEP_CHANGES},
    {"query-status", NULL, qb_check_run_state, QB_STEP_OPTIONAL},
};
static const struct qb_step_def qb_steps_job_resume[] = {
    {"block-job-resume", qb_build_job, NULL, QB_STEP_CHANGES}};
static const struct qb_step_def qb_steps_job_pause[] = {
    {"block-job-pause", qb_build_job, NULL, QB_STEP_CHANGES}};
static const struct qb_step_def qb_steps_job_cancel[] = {
    {"block-job-cancel", qb_build_job, NULL, QB_STEP_CHANGES}};
static const struct qb_step_def qb_steps_job_complete[] = {
    {"block-job-complete", qb_build_job, NULL, QB_STEP_CHANGES}};
static const struct qb_step_def qb_steps_threshold[] = {
    {"block-set-write-threshold", qb_build_threshold, NULL, QB_STEP_CHANGES}};
static const struct qb_step_def qb_steps_colo[] = {
    {"x-colo-lost-heartbeat", NULL, NULL, QB_STEP_CHANGES}};

#define QB_PLAN(valid, steps)                                                                      \
    {                                                                                              \
        (valid), (steps), sizeof(steps) / sizeof((steps)[0])                                       \
    }

/* Indexed by enum qb_cmd_name. query-state has no steps: the VM manager re-runs its snapshot. */
static const struct qb_plan qb_plans[QB_CMD__COUNT] = {
    [QB_CMD_RESIZE_AND_CONT] = QB_PLAN(qb_valid_resize, qb_steps_resize),
    [QB_CMD_CONT] = QB_PLAN(NULL, qb_steps_cont),
    [QB_CMD_STOP] = QB_PLAN(NULL, qb_steps_stop),
    [QB_CMD_BLOCK_JOB_RESUME] = QB_PLAN(qb_valid_job, qb_steps_job_resume),
    [QB_CMD_BLOCK_JOB_PAUSE] = QB_PLAN(qb_valid_job, qb_steps_job_pause),
    [QB_CMD_BLOCK_JOB_CANCEL] = QB_PLAN(qb_valid_job, qb_steps_job_cancel),
    [QB_CMD_BLOCK_JOB_COMPLETE] = QB_PLAN(qb_valid_job, qb_steps_job_complete),
    [QB_CMD_SET_WRITE_THRESHOLD] = QB_PLAN(qb_valid_threshold, qb_steps_threshold),
    [QB_CMD_COLO_LOST_HEARTBEAT] = QB_PLAN(NULL, qb_steps_colo),
    [QB_CMD_QUERY_STATE] = {NULL, NULL, 0},
};

/* ---- running ---- */

/* "ok", or by the status rule at the top of this file "failed" or "rejected". */
static const char *qb_exec_status(const struct qb_command_exec *e)
{
    return e->err_cls == NULL ? "ok" : e->changed ? "failed" : "rejected";
}

/*
 * Returns the result object (new reference; NULL only when out of memory):
 * {"command_id","command","status","error"?,"steps","run_state"?}.
 */
static json_t *qb_exec_result(struct qb_command_exec *e)
{
    const struct qb_command *cmd = e->cmd;
    const char *name = cmd->name_known ? qb_cmd_name_str(cmd->name) : NULL;
    json_t *r = json_object();
    int bad = 0;

    if (r == NULL)
        return NULL;
    bad |= json_object_set_new(r, "command_id", cmd->id ? json_string(cmd->id) : json_null());
    bad |= json_object_set_new(r, "command", name ? json_string(name) : json_null());
    bad |= json_object_set_new(r, "status", json_string(qb_exec_status(e)));
    if (e->err_cls != NULL)
        bad |= json_object_set_new(
            r, "error", json_pack("{s:s, s:s}", "class", e->err_cls, "message", e->err_msg));
    bad |= json_object_set(r, "steps", e->steps);
    if (e->run_state != NULL)
        bad |= json_object_set_new(r, "run_state", json_string(e->run_state));
    if (bad) {
        json_decref(r);
        return NULL;
    }
    return r;
}

/* Logs the outcome and hands the result to done (which owns it); the caller then releases e. */
static void qb_exec_complete(struct qb_command_exec *e)
{
    json_t *result = qb_exec_result(e);
    const char *id = e->cmd->id ? e->cmd->id : "-";
    const char *name = e->plan != NULL ? qb_cmd_name_str(e->cmd->name) : e->cmd->type;
    struct qb_log_command_scope scope;

    if (name == NULL)
        name = "?";
    /* only the outcome: done may go on to the VM's next command */
    qb_log_command_begin(&scope, e->cmd->id);
    if (result == NULL)
        QB_LOG_ERR(qb_exec_vm(e), "command %s: out of memory building its result", id);
    else if (e->err_cls == NULL)
        QB_LOG_INFO(qb_exec_vm(e), "command %s (%s): ok", id, name);
    else
        QB_LOG_WARN(qb_exec_vm(e), "command %s (%s): %s: %s: %s", id, name, qb_exec_status(e),
                    e->err_cls, e->err_msg);
    qb_log_command_end(&scope);
    e->done(e->arg, result);
}

static void qb_exec_release(struct qb_command_exec *e)
{
    json_decref(e->steps);
    free(e->run_state);
    free(e);
}

static void qb_exec_defer_closed(uv_handle_t *h)
{
    qb_exec_release(h->data);
}

static void qb_exec_defer_cb(uv_timer_t *t)
{
    struct qb_command_exec *e = t->data;

    qb_exec_complete(e);
    uv_close((uv_handle_t *)&e->defer, qb_exec_defer_closed);
}

/* Ends the execution: now, or on the next loop iteration when still inside start. */
static void qb_exec_finish(struct qb_command_exec *e)
{
    if (!e->starting) {
        qb_exec_complete(e);
        qb_exec_release(e);
        return;
    }
    /* uv_timer_init/start cannot fail on an initialised loop with a valid callback. */
    uv_timer_init(e->loop, &e->defer);
    e->defer.data = e;
    uv_timer_start(&e->defer, qb_exec_defer_cb, 0, 0);
}

static void qb_exec_next(struct qb_command_exec *e);

/* Copies QEMU's {"class","desc"} into the step record; other members are not ours to pass on. */
static void qb_step_set_qemu_error(json_t *rec, json_t *err)
{
    const char *cls = json_string_value(json_object_get(err, "class"));
    const char *desc = json_string_value(json_object_get(err, "desc"));

    json_object_set_new(
        rec, "error",
        json_pack("{s:s, s:s}", "class", cls ? cls : "GenericError", "desc", desc ? desc : ""));
}

static void qb_exec_on_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct qb_command_exec *e = arg;
    const struct qb_step_def *def = &e->plan->steps[e->next];
    json_t *rec = e->cur;
    const char *desc;

    (void)c;
    e->cur = NULL;
    e->next++;
    json_object_set_new(rec, "status", json_string(status == QB_OK ? "ok" : "failed"));
    if (status == QB_OK) {
        if (def->check != NULL && def->check(e, reply) < 0)
            goto finish;
        qb_exec_next(e);
        return;
    }
    if (status == QB_EQMP)
        qb_step_set_qemu_error(rec, reply);
    if (def->flags & QB_STEP_OPTIONAL) {
        QB_LOG_DEBUG(qb_exec_vm(e), "command %s: optional %s failed: %s",
                     e->cmd->id ? e->cmd->id : "-", def->execute, qb_strerror(status));
        qb_exec_next(e);
        return;
    }
    switch (status) {
    case QB_EQMP:
        desc = json_string_value(json_object_get(reply, "desc"));
        qb_exec_error(e, QB_CMD_ERR_QMP, "%s failed: %s", def->execute, desc ? desc : "(no desc)");
        break;
    case QB_ETIMEDOUT:
        qb_exec_error(e, QB_CMD_ERR_TIMEOUT, "%s: no reply within %" PRIu32 " ms", def->execute,
                      e->step_timeout_ms);
        break;
    case QB_ECLOSED:
        qb_exec_error(e, QB_CMD_ERR_DISCONNECTED, "QMP session closed while waiting for %s",
                      def->execute);
        break;
    default:
        qb_exec_error(e, QB_CMD_ERR_QMP, "%s: %s", def->execute, qb_strerror(status));
        break;
    }
finish:
    qb_exec_finish(e);
}

/* Sends step e->next, or finishes when the plan is done or the step cannot be sent. */
static void qb_exec_next(struct qb_command_exec *e)
{
    const struct qb_step_def *def;
    json_t *args = NULL, *rec = NULL;
    int rc;

    if (e->next >= e->plan->n)
        goto finish;
    def = &e->plan->steps[e->next];
    if (def->build != NULL && def->build(e, &args) < 0)
        goto finish;
    /* The record is made before sending so that no allocation can fail after QEMU has it. */
    rec = json_pack("{s:s}", "execute", def->execute);
    if (rec == NULL || (args != NULL && json_object_set(rec, "arguments", args) < 0) ||
        json_array_append(e->steps, rec) < 0) {
        qb_nomem(e, def->execute);
        goto finish;
    }
    rc = qb_qmp_client_execute(e->c, def->execute, args, e->step_timeout_ms, qb_exec_on_reply, e);
    if (rc < 0) {
        /* Not sent, so not a step of the result. */
        json_array_remove(e->steps, json_array_size(e->steps) - 1);
        if (rc == QB_ECLOSED)
            qb_exec_error(e, QB_CMD_ERR_DISCONNECTED, "no QMP session to send %s", def->execute);
        else
            qb_exec_error(e, QB_CMD_ERR_QMP, "cannot send %s: %s", def->execute, qb_strerror(rc));
        goto finish;
    }
    if (def->flags & QB_STEP_CHANGES)
        e->changed = true;
    e->cur = rec; /* borrowed: e->steps holds it */
    json_decref(rec);
    json_decref(args);
    return;
finish:
    json_decref(rec);
    json_decref(args);
    qb_exec_finish(e);
}

int qb_command_exec_start(uv_loop_t *loop, struct qb_qmp_client *c, const struct qb_command *cmd,
                          const struct qb_command_policy *policy, uint32_t step_timeout_ms,
                          qb_command_done_cb done, void *arg)
{
    struct qb_command_exec *e = calloc(1, sizeof(*e));
    struct qb_log_command_scope scope;

    qb_log_command_begin(&scope, cmd->id);
    if (e == NULL || (e->steps = json_array()) == NULL) {
        free(e);
        QB_LOG_ERR(cmd->subject, "command %s: out of memory starting it", cmd->id ? cmd->id : "-");
        qb_log_command_end(&scope);
        return QB_ENOMEM;
    }
    e->loop = loop;
    e->c = c;
    e->cmd = cmd;
    e->policy = policy;
    e->step_timeout_ms = step_timeout_ms;
    e->done = done;
    e->arg = arg;
    e->starting = true;
    if (!cmd->name_known || (unsigned)cmd->name >= QB_CMD__COUNT) {
        /* The parser should never let this through; answer it rather than trust it. */
        qb_exec_error(e, QB_CMD_ERR_UNKNOWN, "not a known command: %s",
                      cmd->type ? cmd->type : "?");
        qb_exec_finish(e);
    } else {
        e->plan = &qb_plans[cmd->name];
        QB_LOG_DEBUG(cmd->subject, "command %s (%s): %zu steps", cmd->id ? cmd->id : "-",
                     qb_cmd_name_str(cmd->name), e->plan->n);
        if (e->plan->valid != NULL && e->plan->valid(e) < 0)
            qb_exec_finish(e);
        else
            qb_exec_next(e);
    }
    /* e may already be waiting on its deferral timer: only the flag is touched, never freed. */
    e->starting = false;
    qb_log_command_end(&scope);
    return QB_OK;
}
