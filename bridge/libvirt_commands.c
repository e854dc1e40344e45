/*
 * libvirt_commands.c - commands as libvirt API calls (see libvirt_commands.h).
 */
#include "libvirt_commands.h"

#include "command_limits.h"
#include "error.h"
#include "libvirt_queries.h"
#include "utf8.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One run: the result as it grows. */
struct lv_run {
    virDomainPtr dom;
    const struct qb_lv_disks *disks;
    const struct qb_lv_command_args *a;
    atomic_uint *progress; /* QB_LV_CMD_* bits, shared with the loop */
    json_t *steps;
    const char *err_cls; /* static, NULL while all is well */
    char err_msg[256];
    const char *run_state; /* static, from the latest virDomainGetState */
    bool lost;             /* the connection went during a step */
};

int qb_lv_command_args_init(struct qb_lv_command_args *out, const struct qb_command *cmd,
                            const struct qb_command_policy *policy)
{
    memset(out, 0, sizeof(*out));
    out->name = cmd->name;
    out->size = cmd->size;
    out->grow_by = cmd->grow_by;
    out->threshold = cmd->threshold;
    out->has_size = cmd->has_size;
    out->has_grow_by = cmd->has_grow_by;
    out->force = cmd->force;
    if (policy) {
        out->limits.max_size = policy->max_size;
        out->limits.max_growth = policy->max_growth;
    }
    if ((cmd->id && !(out->id = strdup(cmd->id))) ||
        (cmd->device && !(out->device = strdup(cmd->device))) ||
        (cmd->node_name && !(out->node_name = strdup(cmd->node_name))) ||
        (cmd->job && !(out->job = strdup(cmd->job)))) {
        qb_lv_command_args_clear(out);
        return QB_ENOMEM;
    }
    return QB_OK;
}

void qb_lv_command_args_clear(struct qb_lv_command_args *a)
{
    free(a->id);
    free(a->device);
    free(a->node_name);
    free(a->job);
    memset(a, 0, sizeof(*a));
}

__attribute__((format(printf, 3, 4))) static int run_error(struct lv_run *r, const char *cls,
                                                           const char *fmt, ...)
{
    va_list ap;
    char text[sizeof(r->err_msg)];

    if (r->err_cls)
        return QB_EINVAL;
    r->err_cls = cls;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    qb_utf8_copy(r->err_msg, sizeof(r->err_msg), text); /* a cut may split a UTF-8 sequence */
    return QB_EINVAL;
}

/*
 * Records one step: execute (static), args (taken, may be NULL); ok says
 * whether the call succeeded; a failure records libvirt's error in the step
 * and, unless optional, in the command. Returns QB_OK or QB_EINVAL.
 */
static int run_step(struct lv_run *r, const char *execute, json_t *args, bool ok, bool optional)
{
    json_t *rec = json_pack("{s:s}", "execute", execute);
    bool lost = false;

    if (rec && args)
        json_object_set_new(rec, "arguments", args);
    else
        json_decref(args);
    if (rec)
        json_object_set_new(rec, "status", json_string(ok ? "ok" : "failed"));
    if (!ok) {
        json_t *err = qb_lv_last_error(&lost);
        const char *desc = json_string_value(json_object_get(err, "desc"));

        if (rec && err)
            json_object_set(rec, "error", err);
        r->lost |= lost;
        if (!optional)
            run_error(r, lost ? QB_CMD_ERR_DISCONNECTED : QB_CMD_ERR_LIBVIRT, "%s failed: %s",
                      execute, desc ? desc : "(no message)");
        json_decref(err);
    }
    if (rec)
        json_array_append_new(r->steps, rec);
    return ok || optional ? QB_OK : QB_EINVAL;
}

/*
 * Claims the next call, one that changes the domain: marks the run changed
 * (the status rule) and returns true, unless the loop has already answered
 * the command (its session ended). Then the call is not sent, so a command
 * reported rejected never changes the domain after the report, and one
 * reported failed stops where it was.
 */
static bool run_may_change(struct lv_run *r, const char *call)
{
    unsigned p = atomic_load(r->progress);

    while (!(p & QB_LV_CMD_ABANDONED)) {
        if (atomic_compare_exchange_weak(r->progress, &p, p | QB_LV_CMD_CHANGED))
            return true;
    }
    run_error(r, QB_CMD_ERR_DISCONNECTED, "the command was answered before %s: not sent", call);
    return false;
}

bool qb_lv_command_abandon(atomic_uint *progress)
{
    return atomic_fetch_or(progress, QB_LV_CMD_ABANDONED) & QB_LV_CMD_CHANGED;
}

/* virDomainGetState as a step; io_error: hold the resize precondition. */
static int step_state(struct lv_run *r, bool io_error, bool optional)
{
    int state, reason;
    bool running;
    bool ok = virDomainGetState(r->dom, &state, &reason, 0) == 0;

    if (run_step(r, "virDomainGetState", NULL, ok, optional) < 0 || !ok)
        return ok || optional ? QB_OK : QB_EINVAL;
    r->run_state = qb_lv_run_state(state, reason, &running);
    if (io_error && !r->a->force && strcmp(r->run_state, "io-error") != 0)
        return run_error(r, QB_CMD_ERR_PRECONDITION,
                         "VM is %s (status %s), not paused on io-error; set force to resize anyway",
                         running ? "running" : "stopped", r->run_state);
    return QB_OK;
}

/* The disk a command names by device or node_name (a target is accepted for either). */
static const struct qb_lv_disk *run_disk(struct lv_run *r, unsigned *depth)
{
    const char *name = r->a->device ? r->a->device : r->a->node_name;
    const struct qb_lv_disk *k;

    *depth = 0;
    k = qb_lv_disks_by_target(r->disks, name);
    if (!k)
        k = qb_lv_disks_by_node(r->disks, name, depth);
    if (!k)
        run_error(r, QB_CMD_ERR_PRECONDITION, "no disk with %s '%s'",
                  r->a->device ? "device" : "node_name", name ? name : "");
    return k;
}

static void plan_resize(struct lv_run *r)
{
    const struct qb_lv_disk *k;
    virDomainBlockInfo info;
    unsigned depth;
    uint64_t new_size;
    const char *cls;
    char msg[200];
    bool ok;

    if (!r->a->device && !r->a->node_name) {
        run_error(r, QB_CMD_ERR_INVALID, "data: device or node_name is required");
        return;
    }
    if (r->a->has_size == r->a->has_grow_by) {
        run_error(r, QB_CMD_ERR_INVALID, "data: exactly one of size and grow_by is required");
        return;
    }
    if (step_state(r, true, false) < 0 || !(k = run_disk(r, &depth)))
        return;
    if (depth != 0) {
        run_error(r, QB_CMD_ERR_PRECONDITION, "'%s' is a backing image of %s, not its top image",
                  r->a->node_name, k->target);
        return;
    }
    ok = virDomainGetBlockInfo(r->dom, k->target, &info, 0) == 0;
    if (run_step(r, "virDomainGetBlockInfo", json_pack("{s:s}", "disk", k->target), ok, false) < 0)
        return;
    if (qb_command_resize_size(&(struct qb_command){.size = r->a->size,
                                                    .grow_by = r->a->grow_by,
                                                    .has_size = r->a->has_size,
                                                    .has_grow_by = r->a->has_grow_by},
                               &r->a->limits, info.capacity, &new_size, &cls, msg,
                               sizeof(msg)) < 0) {
        run_error(r, cls, "%s", msg);
        return;
    }
    if (!run_may_change(r, "virDomainBlockResize"))
        return;
    ok = virDomainBlockResize(r->dom, k->target, new_size, VIR_DOMAIN_BLOCK_RESIZE_BYTES) == 0;
    if (run_step(r, "virDomainBlockResize",
                 json_pack("{s:s, s:I, s:s}", "disk", k->target, "size", (json_int_t)new_size,
                           "flags", "bytes"),
                 ok, false) < 0)
        return;
    if (!run_may_change(r, "virDomainResume"))
        return;
    ok = virDomainResume(r->dom) == 0;
    if (run_step(r, "virDomainResume", NULL, ok, false) < 0)
        return;
    step_state(r, false, true);
}

static void plan_run_state(struct lv_run *r, bool resume)
{
    bool ok;

    if (!run_may_change(r, resume ? "virDomainResume" : "virDomainSuspend"))
        return;
    ok = (resume ? virDomainResume(r->dom) : virDomainSuspend(r->dom)) == 0;
    if (run_step(r, resume ? "virDomainResume" : "virDomainSuspend", NULL, ok, false) < 0)
        return;
    step_state(r, false, true);
}

static void plan_threshold(struct lv_run *r)
{
    const struct qb_lv_disk *k;
    unsigned depth = 0;
    char dev[QB_LV_TARGET_MAX + 16];
    bool ok;

    if (!r->a->node_name) {
        run_error(r, QB_CMD_ERR_INVALID, "data.node_name: required");
        return;
    }
    if (!(k = run_disk(r, &depth)))
        return;
    if (depth == 0) {
        snprintf(dev, sizeof(dev), "%s", k->target);
    } else {
        /* libvirt names an image below the top by its index: "vda[3]" */
        unsigned idx = 0;

        sscanf(r->a->node_name, "libvirt-%u-", &idx);
        snprintf(dev, sizeof(dev), "%s[%u]", k->target, idx);
    }
    if (!run_may_change(r, "virDomainSetBlockThreshold"))
        return;
    ok = virDomainSetBlockThreshold(r->dom, dev, r->a->threshold, 0) == 0;
    run_step(r, "virDomainSetBlockThreshold",
             json_pack("{s:s, s:I}", "disk", dev, "threshold", (json_int_t)r->a->threshold), ok,
             false);
}

static void plan_job_abort(struct lv_run *r, bool pivot)
{
    const struct qb_lv_disk *k;
    bool ok;

    if (!r->a->job) {
        run_error(r, QB_CMD_ERR_INVALID, "data.job: required");
        return;
    }
    if (!(k = qb_lv_disks_by_job(r->disks, r->a->job))) {
        run_error(r, QB_CMD_ERR_PRECONDITION, "no disk with a block job named '%s'", r->a->job);
        return;
    }
    if (!run_may_change(r, "virDomainBlockJobAbort"))
        return;
    ok = virDomainBlockJobAbort(r->dom, k->target, pivot ? VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT : 0) ==
         0;
    run_step(r, "virDomainBlockJobAbort",
             pivot ? json_pack("{s:s, s:s}", "disk", k->target, "flags", "pivot")
                   : json_pack("{s:s}", "disk", k->target),
             ok, false);
}

/* The result object of r, command_exec.h's shape. */
static json_t *run_result(struct lv_run *r)
{
    const char *name = qb_cmd_name_str(r->a->name);
    const char *status = !r->err_cls                                      ? "ok"
                         : (atomic_load(r->progress) & QB_LV_CMD_CHANGED) ? "failed"
                                                                          : "rejected";
    json_t *res = json_pack(
        "{s:o, s:o, s:s, s:O}", "command_id", r->a->id ? json_string(r->a->id) : json_null(),
        "command", name ? json_string(name) : json_null(), "status", status, "steps", r->steps);

    if (!res)
        return NULL;
    if (r->err_cls)
        json_object_set_new(res, "error",
                            json_pack("{s:s, s:s}", "class", r->err_cls, "message", r->err_msg));
    if (r->run_state)
        json_object_set_new(res, "run_state", json_string(r->run_state));
    return res;
}

json_t *qb_lv_command_run(virDomainPtr dom, const struct qb_lv_disks *disks,
                          const struct qb_lv_command_args *a, atomic_uint *progress)
{
    struct lv_run r = {.dom = dom, .disks = disks, .a = a, .progress = progress};
    json_t *res;

    if (!(r.steps = json_array()))
        return NULL;
    switch (a->name) {
    case QB_CMD_RESIZE_AND_CONT:
        plan_resize(&r);
        break;
    case QB_CMD_CONT:
        plan_run_state(&r, true);
        break;
    case QB_CMD_STOP:
        plan_run_state(&r, false);
        break;
    case QB_CMD_SET_WRITE_THRESHOLD:
        plan_threshold(&r);
        break;
    case QB_CMD_BLOCK_JOB_CANCEL:
        plan_job_abort(&r, false);
        break;
    case QB_CMD_BLOCK_JOB_COMPLETE:
        plan_job_abort(&r, true);
        break;
    case QB_CMD_BLOCK_JOB_PAUSE:
    case QB_CMD_BLOCK_JOB_RESUME:
    case QB_CMD_COLO_LOST_HEARTBEAT:
        run_error(&r, QB_CMD_ERR_UNSUPPORTED,
                  "%s is not available for a VM run by libvirt: libvirt has no API for it",
                  qb_cmd_name_str(a->name));
        break;
    default:
        run_error(&r, QB_CMD_ERR_UNKNOWN, "not a command the libvirt source runs");
        break;
    }
    res = run_result(&r);
    json_decref(r.steps);
    return res;
}

json_t *qb_lv_command_result_early(const struct qb_lv_command_args *a, bool changed,
                                   const char *cls, const char *msg)
{
    atomic_uint progress = changed ? QB_LV_CMD_CHANGED : 0;
    struct lv_run r = {.a = a, .progress = &progress};
    json_t *res;

    if (!(r.steps = json_array()))
        return NULL;
    run_error(&r, cls, "%s", msg);
    res = run_result(&r);
    json_decref(r.steps);
    return res;
}
