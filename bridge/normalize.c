/*
 * normalize.c - QMP events to qmp-bridge's normalised event types.
 *
 * One table maps a QMP event name to a normaliser. Each normaliser reads the
 * QEMU data (never trusting field types: a field of the wrong type is left
 * out, never a crash) and fills a new data object. Per VM we remember only
 * what a later event needs and QEMU does not repeat:
 *   - why the next STOP happens (BLOCK_IO_ERROR action stop, SHUTDOWN,
 *     WATCHDOG or GUEST_PANICKED with action pause), because STOP carries no
 *     data in QEMU 7.2;
 *   - per block job its type, status and how many BLOCK_JOB_ERRORs it raised
 *     since its last status change, because a mirror raises one error per
 *     in-flight request and BLOCK_JOB_ERROR carries no type.
 * What cannot be known from events comes from a query (see normalize.h).
 */
#include "normalize.h"
#include "errno_names.h"
#include "error.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

struct qb_norm_vm {
    json_t *stop_cause;      /* {device,node_name?,errno,io_status} from BLOCK_IO_ERROR, or NULL */
    const char *stop_reason; /* static "shutdown"/"watchdog"/"guest-panicked", or NULL */
    json_t *jobs;            /* job id -> {"type"?, "status"?, "errors": n, "asked"?: true} */
};

/* A data object under construction; the first failed allocation sticks. */
struct qb_ob {
    json_t *o;
    bool failed;
};

static void qb_ob_set(struct qb_ob *ob, const char *key, json_t *value)
{
    if (!value || json_object_set_new(ob->o, key, value) < 0)
        ob->failed = true;
}

static const char *qb_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Copies src[skey] to ob[key] when it is a string. */
static void qb_ob_str(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    const char *s = qb_str(src, skey);

    if (s)
        qb_ob_set(ob, key, json_string(s));
}

/* Copies src[skey] to ob[key] when it is an integer. */
static void qb_ob_int(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    const json_t *v = json_object_get(src, skey);

    if (json_is_integer(v))
        qb_ob_set(ob, key, json_integer(json_integer_value(v)));
}

static void qb_ob_bool(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    const json_t *v = json_object_get(src, skey);

    if (json_is_boolean(v))
        qb_ob_set(ob, key, json_boolean(json_is_true(v)));
}

/* ---- job table ---- */

/* Returns the job's entry (borrowed), creating it when create is set; NULL if absent or no memory.
 */
static json_t *qb_job_get(struct qb_norm_vm *vm, const char *id, bool create)
{
    json_t *job;

    if (!id)
        return NULL;
    job = json_object_get(vm->jobs, id);
    if (job || !create)
        return job;
    job = json_object();
    if (!job || json_object_set_new(vm->jobs, id, job) < 0)
        return NULL;
    return job;
}

static void qb_job_set_str(json_t *job, const char *key, const char *value)
{
    if (job && value)
        json_object_set_new(job, key, json_string(value));
}

/* ---- normalisers ---- */

/*
 * A normaliser reads data (borrowed; an object, or NULL when QEMU sent none)
 * and fills ob. It may set ev->need. Returns nothing: allocation failures
 * are caught through ob.
 */
typedef void (*qb_norm_fn)(struct qb_norm_vm *vm, const char *name, const json_t *data,
                           struct qb_ob *ob, struct qb_norm_event *ev);

static void qb_norm_io_error(struct qb_norm_vm *vm, const char *name, const json_t *data,
                             struct qb_ob *ob, struct qb_norm_event *ev)
{
    bool nospace = json_is_true(json_object_get(data, "nospace"));
    const char *device = qb_str(data, "device");
    const char *node = qb_str(data, "node-name");
    const char *action = qb_str(data, "action");
    const char *err = nospace ? "enospc" : qb_errno_name_from_text(qb_str(data, "reason"));

    (void)name;
    (void)ev;
    /* QEMU always sends device, "" for a device without a drive id. */
    qb_ob_set(ob, "device", json_string(device ? device : ""));
    if (node)
        qb_ob_set(ob, "node_name", json_string(node));
    qb_ob_str(ob, "operation", data, "operation");
    qb_ob_str(ob, "action", data, "action");
    qb_ob_set(ob, "nospace", json_boolean(nospace));
    qb_ob_set(ob, "errno", json_string(err));
    qb_ob_str(ob, "message", data, "reason");

    if (action && strcmp(action, "stop") == 0) {
        struct qb_ob cause = {json_object(), false};

        if (!cause.o) {
            ob->failed = true;
            return;
        }
        qb_ob_set(&cause, "device", json_string(device ? device : ""));
        if (node)
            qb_ob_set(&cause, "node_name", json_string(node));
        qb_ob_set(&cause, "errno", json_string(err));
        qb_ob_set(&cause, "io_status", json_string(nospace ? "nospace" : "failed"));
        json_decref(vm->stop_cause);
        vm->stop_cause = cause.o;
        ob->failed |= cause.failed;
    }
}

static void qb_norm_stop(struct qb_norm_vm *vm, const char *name, const json_t *data,
                         struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)name;
    (void)data;
    if (vm->stop_cause) {
        qb_ob_set(ob, "reason", json_string("io-error"));
        qb_ob_set(ob, "cause", vm->stop_cause); /* steals */
        vm->stop_cause = NULL;
    } else if (vm->stop_reason) {
        qb_ob_set(ob, "reason", json_string(vm->stop_reason));
    } else {
        ev->need = QB_NORM_QUERY_STATUS;
    }
    vm->stop_reason = NULL;
}

static void qb_norm_resume(struct qb_norm_vm *vm, const char *name, const json_t *data,
                           struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)name;
    (void)data;
    (void)ob;
    (void)ev;
    json_decref(vm->stop_cause);
    vm->stop_cause = NULL;
    vm->stop_reason = NULL;
}

static void qb_norm_shutdown(struct qb_norm_vm *vm, const char *name, const json_t *data,
                             struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)ev;
    qb_ob_bool(ob, "guest", data, "guest");
    qb_ob_str(ob, "reason", data, "reason");
    /* With -no-shutdown QEMU stops instead of exiting: the STOP that follows is this. */
    if (strcmp(name, "SHUTDOWN") == 0)
        vm->stop_reason = "shutdown";
}

static void qb_norm_job_error(struct qb_norm_vm *vm, const char *name, const json_t *data,
                              struct qb_ob *ob, struct qb_norm_event *ev)
{
    const char *id = qb_str(data, "device");
    json_t *job = qb_job_get(vm, id, true);
    json_int_t repeat = json_integer_value(json_object_get(job, "errors")) + 1;

    (void)name;
    if (id)
        qb_ob_set(ob, "job", json_string(id));
    qb_ob_str(ob, "operation", data, "operation");
    qb_ob_str(ob, "action", data, "action");
    qb_ob_set(ob, "repeat", json_integer(repeat));
    if (job)
        json_object_set_new(job, "errors", json_integer(repeat));
    qb_ob_str(ob, "type", job, "type");
    qb_ob_str(ob, "status", job, "status");
    /* Ask once per job: a mirror's burst of errors must not become a burst of queries. */
    if (id && !qb_str(job, "type") && !json_object_get(job, "asked"))
        ev->need = QB_NORM_QUERY_BLOCK_JOBS;
}

static void qb_norm_job_status(struct qb_norm_vm *vm, const char *name, const json_t *data,
                               struct qb_ob *ob, struct qb_norm_event *ev)
{
    const char *id = qb_str(data, "id");
    const char *status = qb_str(data, "status");
    json_t *job = qb_job_get(vm, id, status && strcmp(status, "null") != 0);

    (void)name;
    (void)ev;
    qb_ob_str(ob, "job", data, "id");
    qb_ob_str(ob, "status", data, "status");
    qb_ob_str(ob, "type", job, "type");
    if (!job)
        return;
    if (status && strcmp(status, "null") == 0) {
        json_object_del(vm->jobs, id);
        return;
    }
    qb_job_set_str(job, "status", status);
    json_object_set_new(job, "errors", json_integer(0));
}

/* BLOCK_JOB_READY, BLOCK_JOB_COMPLETED and BLOCK_JOB_CANCELLED share one shape. */
static void qb_norm_block_job(struct qb_norm_vm *vm, const char *name, const json_t *data,
                              struct qb_ob *ob, struct qb_norm_event *ev)
{
    const char *id = qb_str(data, "device");

    (void)name;
    (void)ev;
    qb_ob_str(ob, "job", data, "device");
    qb_ob_str(ob, "type", data, "type");
    qb_ob_int(ob, "len", data, "len");
    qb_ob_int(ob, "offset", data, "offset");
    qb_ob_int(ob, "speed", data, "speed");
    qb_ob_str(ob, "error", data, "error");
    /* These carry the type that BLOCK_JOB_ERROR lacks; keep it for later errors. */
    if (id && qb_str(data, "type"))
        qb_job_set_str(qb_job_get(vm, id, true), "type", qb_str(data, "type"));
}

static void qb_norm_write_threshold(struct qb_norm_vm *vm, const char *name, const json_t *data,
                                    struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)vm;
    (void)name;
    (void)ev;
    qb_ob_str(ob, "node_name", data, "node-name");
    qb_ob_int(ob, "amount_exceeded", data, "amount-exceeded");
    qb_ob_int(ob, "write_threshold", data, "write-threshold");
}

static void qb_norm_colo_exit(struct qb_norm_vm *vm, const char *name, const json_t *data,
                              struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)vm;
    (void)name;
    (void)ev;
    qb_ob_str(ob, "mode", data, "mode");
    qb_ob_str(ob, "reason", data, "reason");
    qb_ob_str(ob, "error", data, "error");
}

/* Any event without its own type: name and data as QEMU sent them. */
static void qb_norm_generic(struct qb_norm_vm *vm, const char *name, const json_t *data,
                            struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)vm;
    (void)ev;
    qb_ob_set(ob, "name", json_string(name));
    qb_ob_set(ob, "data", data ? json_deep_copy(data) : json_object());
}

/* WATCHDOG / GUEST_PANICKED stay generic events but explain a STOP that follows. */
static void qb_norm_pause_cause(struct qb_norm_vm *vm, const char *name, const json_t *data,
                                struct qb_ob *ob, struct qb_norm_event *ev)
{
    const char *action = qb_str(data, "action");

    qb_norm_generic(vm, name, data, ob, ev);
    if (action && strcmp(action, "pause") == 0)
        vm->stop_reason = strcmp(name, "WATCHDOG") == 0 ? "watchdog" : "guest-panicked";
}

struct qb_norm_entry {
    const char *event; /* QMP event name */
    const char *type;  /* normalised type */
    qb_norm_fn fn;
};

static const struct qb_norm_entry qb_norm_table[] = {
    {"BLOCK_IO_ERROR", "qmp.block.io_error", qb_norm_io_error},
    {"STOP", "qmp.vm.stopped", qb_norm_stop},
    {"RESUME", "qmp.vm.resumed", qb_norm_resume},
    {"SHUTDOWN", "qmp.vm.shutdown", qb_norm_shutdown},
    {"RESET", "qmp.vm.reset", qb_norm_shutdown},
    {"BLOCK_JOB_ERROR", "qmp.block.job_error", qb_norm_job_error},
    {"JOB_STATUS_CHANGE", "qmp.job.status", qb_norm_job_status},
    {"BLOCK_JOB_READY", "qmp.block.job_ready", qb_norm_block_job},
    {"BLOCK_JOB_COMPLETED", "qmp.block.job_completed", qb_norm_block_job},
    {"BLOCK_JOB_CANCELLED", "qmp.block.job_cancelled", qb_norm_block_job},
    {"BLOCK_WRITE_THRESHOLD", "qmp.block.write_threshold", qb_norm_write_threshold},
    {"COLO_EXIT", "qmp.colo.exit", qb_norm_colo_exit},
    {"WATCHDOG", "qmp.event", qb_norm_pause_cause},
    {"GUEST_PANICKED", "qmp.event", qb_norm_pause_cause},
};

static const struct qb_norm_entry qb_norm_fallback = {NULL, "qmp.event", qb_norm_generic};

static const char *const qb_norm_query_names[] = {
    [QB_NORM_QUERY_NONE] = NULL,
    [QB_NORM_QUERY_STATUS] = "query-status",
    [QB_NORM_QUERY_BLOCK] = "query-block",
    [QB_NORM_QUERY_BLOCK_JOBS] = "query-block-jobs",
};

const char *qb_norm_query_command(enum qb_norm_query q)
{
    if ((unsigned)q >= sizeof(qb_norm_query_names) / sizeof(qb_norm_query_names[0]))
        return NULL;
    return qb_norm_query_names[q];
}

struct qb_norm_vm *qb_norm_vm_new(void)
{
    struct qb_norm_vm *vm = calloc(1, sizeof(*vm));

    if (!vm)
        return NULL;
    vm->jobs = json_object();
    if (!vm->jobs) {
        free(vm);
        return NULL;
    }
    return vm;
}

void qb_norm_vm_free(struct qb_norm_vm *vm)
{
    if (!vm)
        return;
    json_decref(vm->stop_cause);
    json_decref(vm->jobs);
    free(vm);
}

void qb_norm_vm_reset(struct qb_norm_vm *vm, const json_t *snapshot)
{
    const json_t *jobs = json_object_get(snapshot, "jobs");
    const json_t *j;
    size_t i;

    json_decref(vm->stop_cause);
    vm->stop_cause = NULL;
    vm->stop_reason = NULL;
    json_object_clear(vm->jobs);
    json_array_foreach(jobs, i, j)
    {
        json_t *job = qb_job_get(vm, qb_str(j, "id"), true);

        qb_job_set_str(job, "type", qb_str(j, "type"));
        qb_job_set_str(job, "status", qb_str(j, "status"));
    }
}

static bool qb_norm_excluded(const char *name, const char *const *exclude, size_t n_exclude)
{
    for (size_t i = 0; exclude && i < n_exclude; i++)
        if (exclude[i] && strcmp(exclude[i], name) == 0)
            return true;
    return false;
}

int qb_normalize_event(struct qb_norm_vm *vm, const json_t *msg, const char *const *exclude,
                       size_t n_exclude, struct qb_norm_event *out)
{
    const char *name = qb_str(msg, "event");
    const json_t *data = json_object_get(msg, "data");
    const json_t *ts = json_object_get(msg, "timestamp");
    const struct qb_norm_entry *entry = &qb_norm_fallback;
    struct qb_ob ob = {NULL, false};

    memset(out, 0, sizeof(*out));
    if (!name) {
        QB_LOG_WARN(NULL, "normalize: message without an event name");
        return QB_EPARSE;
    }
    for (size_t i = 0; i < sizeof(qb_norm_table) / sizeof(qb_norm_table[0]); i++) {
        if (strcmp(qb_norm_table[i].event, name) == 0) {
            entry = &qb_norm_table[i];
            break;
        }
    }
    if (data && !json_is_object(data) && entry != &qb_norm_fallback) {
        QB_LOG_WARN(NULL, "normalize: %s with data that is not an object", name);
        return QB_EPARSE;
    }

    ob.o = json_object();
    if (!ob.o)
        return QB_ENOMEM;
    out->type = entry->type;
    out->ts_sec = -1;
    if (json_is_integer(json_object_get(ts, "seconds"))) {
        out->ts_sec = json_integer_value(json_object_get(ts, "seconds"));
        out->ts_usec = (int32_t)json_integer_value(json_object_get(ts, "microseconds"));
    }
    /* Run the normaliser even for an excluded event: its memory (stop cause, jobs) still counts. */
    entry->fn(vm, name, data, &ob, out);
    out->data = ob.o;
    if (ob.failed) {
        QB_LOG_ERR(NULL, "normalize: out of memory normalising %s", name);
        qb_norm_event_clear(out);
        return QB_ENOMEM;
    }
    if (qb_norm_excluded(name, exclude, n_exclude)) {
        qb_norm_event_clear(out);
        return 0;
    }
    return 1;
}

/* Cause of an io-error pause from query-block: the first device whose io-status is not ok. */
static void qb_norm_cause_from_block(const json_t *block, struct qb_ob *ob)
{
    const json_t *dev;
    size_t i;

    json_array_foreach(block, i, dev)
    {
        const char *io = qb_str(dev, "io-status");
        const char *node = qb_str(json_object_get(dev, "inserted"), "node-name");
        const char *device = qb_str(dev, "device");
        struct qb_ob cause = {NULL, false};

        if (!io || strcmp(io, "ok") == 0)
            continue;
        cause.o = json_object();
        if (!cause.o) {
            ob->failed = true;
            return;
        }
        qb_ob_set(&cause, "device", json_string(device ? device : ""));
        if (node)
            qb_ob_set(&cause, "node_name", json_string(node));
        qb_ob_set(&cause, "errno", json_string(strcmp(io, "nospace") == 0 ? "enospc" : "unknown"));
        qb_ob_set(&cause, "io_status", json_string(io));
        ob->failed |= cause.failed;
        qb_ob_set(ob, "cause", cause.o);
        return;
    }
}

static void qb_norm_job_from_query(struct qb_norm_vm *vm, const json_t *jobs, struct qb_ob *ob)
{
    const char *id = qb_str(ob->o, "job");
    json_t *job = qb_job_get(vm, id, true);
    const json_t *j;
    size_t i;

    if (job)
        json_object_set_new(job, "asked", json_true());
    json_array_foreach(jobs, i, j)
    {
        const char *dev = qb_str(j, "device");

        if (!id || !dev || strcmp(dev, id) != 0)
            continue;
        qb_ob_str(ob, "type", j, "type");
        qb_ob_str(ob, "status", j, "status");
        qb_job_set_str(job, "type", qb_str(j, "type"));
        qb_job_set_str(job, "status", qb_str(j, "status"));
        return;
    }
}

/* A resolver folds one query's reply (NULL when the query failed) into ob and may ask for the next.
 */
typedef void (*qb_resolve_fn)(struct qb_norm_vm *vm, struct qb_norm_event *ev, const json_t *reply,
                              struct qb_ob *ob);

static void qb_resolve_status(struct qb_norm_vm *vm, struct qb_norm_event *ev, const json_t *reply,
                              struct qb_ob *ob)
{
    const char *run = qb_str(reply, "status");

    (void)vm;
    /*
     * "running" means the VM was resumed before we asked: why it stopped is
     * lost, and saying "running" in a stopped event would be a lie.
     */
    if (!run || strcmp(run, "running") == 0)
        run = "unknown";
    qb_ob_set(ob, "reason", json_string(run));
    if (strcmp(run, "io-error") == 0)
        ev->need = QB_NORM_QUERY_BLOCK;
}

static void qb_resolve_block(struct qb_norm_vm *vm, struct qb_norm_event *ev, const json_t *reply,
                             struct qb_ob *ob)
{
    (void)vm;
    (void)ev;
    qb_norm_cause_from_block(reply, ob);
}

static void qb_resolve_block_jobs(struct qb_norm_vm *vm, struct qb_norm_event *ev,
                                  const json_t *reply, struct qb_ob *ob)
{
    (void)ev;
    qb_norm_job_from_query(vm, reply, ob);
}

static const qb_resolve_fn qb_norm_resolvers[] = {
    [QB_NORM_QUERY_NONE] = NULL,
    [QB_NORM_QUERY_STATUS] = qb_resolve_status,
    [QB_NORM_QUERY_BLOCK] = qb_resolve_block,
    [QB_NORM_QUERY_BLOCK_JOBS] = qb_resolve_block_jobs,
};

void qb_normalize_resolve(struct qb_norm_vm *vm, struct qb_norm_event *ev, int status,
                          const json_t *reply)
{
    struct qb_ob ob = {ev->data, false};
    enum qb_norm_query need = ev->need;

    ev->need = QB_NORM_QUERY_NONE;
    if (!ob.o || (unsigned)need >= sizeof(qb_norm_resolvers) / sizeof(qb_norm_resolvers[0]) ||
        !qb_norm_resolvers[need])
        return;
    /* A failed query completes the event with what is known: a pause is never lost. */
    qb_norm_resolvers[need](vm, ev, status == QB_OK ? reply : NULL, &ob);
    if (ob.failed)
        QB_LOG_ERR(NULL, "normalize: out of memory completing %s", ev->type);
}

void qb_norm_event_clear(struct qb_norm_event *ev)
{
    if (!ev)
        return;
    json_decref(ev->data);
    memset(ev, 0, sizeof(*ev));
}
