/*
 * normalize.c - QMP events to qmp-bridge's normalised event types.
 *
 * One table maps a QMP event name to a normaliser and to the data members
 * QEMU's schema (qapi/<module>.json, 7.2) gives that event, with their JSON types.
 * Every event is checked against its members before it is normalised: a
 * required member that is missing or of the wrong type (or a string outside
 * the QAPI enum) makes the event malformed (QB_EPARSE, logged with the event,
 * the member and what was expected), because publishing it without that
 * member would break the event's own schema/v1 contract. An optional member
 * of the wrong type is left out and the event is still published. So each
 * normaliser sees only members of the right type and fills a new data object
 * that validates against schema/v1/<type>.json; what comes from query replies
 * and the connect-time snapshot is checked where it is used, for the same
 * reason. Per VM we remember only what a later event needs and QEMU does not
 * repeat:
 *   - why the next STOP happens (BLOCK_IO_ERROR action stop, SHUTDOWN,
 *     WATCHDOG or GUEST_PANICKED with action pause), because STOP carries no
 *     data in QEMU 7.2;
 *   - what a STOP means that QEMU undoes before query-status answers (a COLO
 *     checkpoint or failover, a migration's switchover), from the last
 *     MIGRATION status, because query-status then only says "running";
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

/*
 * Why the next STOP happens, from the last BLOCK_IO_ERROR with action stop.
 * Kept as references to the event's own string values and built into a
 * {device,node_name?,errno,io_status} object only when the STOP comes: a
 * mirror on a full disk raises hundreds of errors per pause.
 */
struct qb_stop_cause {
    json_t *device; /* a string (owned reference), or NULL when no cause is held */
    json_t *node;   /* a string (owned reference), or NULL */
    json_t *err;    /* the errno name string (owned reference) */
    bool nospace;
};

struct qb_norm_vm {
    const char *name; /* borrowed, for log lines; NULL for none */
    struct qb_stop_cause stop_cause;
    const char *stop_reason; /* static "shutdown"/"watchdog"/"guest-panicked", or NULL */
    const char *migration_stop;  /* static reason a STOP in the current MIGRATION status has */
    const char *stop_if_running; /* migration_stop when the pending STOP came, for its query */
    json_t *jobs; /* job id -> {"type"?, "status"?, "errors": n, "asked"?: true}; NULL until the
                     first job, so an idle VM without jobs holds no hash table */
    bool ts_logged; /* an unusable timestamp was logged: a peer sending only those logs once */
};

static void qb_stop_cause_clear(struct qb_stop_cause *c)
{
    json_decref(c->device);
    json_decref(c->node);
    json_decref(c->err);
    memset(c, 0, sizeof(*c));
}

/* A data object under construction; the first failed allocation sticks. */
struct qb_ob {
    json_t *o;
    bool failed;
};

/* Steals value; key is one of our own ASCII literals, so jansson need not check it. */
static void qb_ob_set(struct qb_ob *ob, const char *key, json_t *value)
{
    if (!value || json_object_set_new_nocheck(ob->o, key, value) < 0)
        ob->failed = true;
}

/*
 * Adds a reference to value (borrowed; NULL is an allocation failure). The
 * parsed message's own values are shared this way instead of copied: jansson
 * values are reference counted, and nothing changes a string in place.
 */
static void qb_ob_ref(struct qb_ob *ob, const char *key, json_t *value)
{
    qb_ob_set(ob, key, json_incref(value));
}

static const char *qb_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Shares src[skey] as ob[key] when it is a string. */
static void qb_ob_str(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    json_t *v = json_object_get(src, skey);

    if (json_is_string(v))
        qb_ob_ref(ob, key, v);
}

/* Shares src[skey] as ob[key] when it is an integer. */
static void qb_ob_int(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    json_t *v = json_object_get(src, skey);

    if (json_is_integer(v))
        qb_ob_ref(ob, key, v);
}

static void qb_ob_bool(struct qb_ob *ob, const char *key, const json_t *src, const char *skey)
{
    const json_t *v = json_object_get(src, skey);

    /* true and false are jansson singletons: no allocation either way. */
    if (json_is_boolean(v))
        qb_ob_set(ob, key, json_boolean(json_is_true(v)));
}

/* ---- QAPI enums (QEMU 7.2), NULL-terminated ---- */

/* IoOperationType */
static const char *const qb_io_operations[] = {"read", "write", NULL};
/* BlockErrorAction */
static const char *const qb_error_actions[] = {"ignore", "report", "stop", NULL};
/* JobStatus */
static const char *const qb_job_statuses[] = {
    "undefined", "created", "running",  "paused",    "ready", "standby",
    "waiting",   "pending", "aborting", "concluded", "null",  NULL,
};
/* COLOMode */
static const char *const qb_colo_modes[] = {"none", "primary", "secondary", NULL};
/* COLOExitReason */
static const char *const qb_colo_reasons[] = {"none", "request", "error", "processing", NULL};
/* RunState (qapi/run-state.json), "running" first. */
const char *const qb_run_states[QB_N_RUN_STATES + 1] = {
    "running",     "debug",     "inmigrate",      "internal-error", "io-error", "paused",
    "postmigrate", "prelaunch", "finish-migrate", "restore-vm",     "save-vm",  "shutdown",
    "suspended",   "watchdog",  "guest-panicked", "colo",           NULL,
};
/* RunState without "running": the states a STOP can leave the VM in. */
static const char *const *const qb_stopped_states = qb_run_states + 1;
/* BlockDeviceIoStatus without "ok": the states that explain an io-error pause. */
static const char *const qb_io_error_statuses[] = {"failed", "nospace", NULL};

static bool qb_enum_has(const char *const *values, const char *s)
{
    for (; s && *values; values++)
        if (strcmp(*values, s) == 0)
            return true;
    return false;
}

/* Copies src[skey] to ob[key] when it is one of values. */
static void qb_ob_enum(struct qb_ob *ob, const char *key, const json_t *src, const char *skey,
                       const char *const *values)
{
    json_t *v = json_object_get(src, skey);

    if (qb_enum_has(values, json_string_value(v)))
        qb_ob_ref(ob, key, v);
}

/* ---- the members each event must carry ---- */

enum qb_field_kind {
    QB_FIELD_STRING,
    QB_FIELD_BOOL,
    QB_FIELD_UINT, /* an integer >= 0 (QAPI int64 sizes and uint64; schema/v1 says minimum 0) */
    QB_FIELD_ENUM, /* a string from values */
};

/* One data member of a QMP event, as qapi/<module>.json declares it. */
struct qb_norm_field {
    const char *key; /* QMP member name; NULL ends a list */
    enum qb_field_kind kind;
    bool optional;             /* '*key' in QAPI: may be absent; left out when of the wrong type */
    const char *const *values; /* QB_FIELD_ENUM: the allowed strings */
};

/* qapi/block-core.json BLOCK_IO_ERROR */
static const struct qb_norm_field qb_fields_io_error[] = {
    {"device", QB_FIELD_STRING, false, NULL},
    {"node-name", QB_FIELD_STRING, true, NULL},
    {"operation", QB_FIELD_ENUM, false, qb_io_operations},
    {"action", QB_FIELD_ENUM, false, qb_error_actions},
    {"nospace", QB_FIELD_BOOL, true, NULL},
    {"reason", QB_FIELD_STRING, false, NULL},
    {NULL, 0, false, NULL},
};

/*
 * qapi/run-state.json SHUTDOWN, RESET. reason is the enum ShutdownCause;
 * schema/v1 takes any string, so a cause newer QEMUs add still passes.
 */
static const struct qb_norm_field qb_fields_shutdown[] = {
    {"guest", QB_FIELD_BOOL, false, NULL},
    {"reason", QB_FIELD_STRING, false, NULL},
    {NULL, 0, false, NULL},
};

/* qapi/block-core.json BLOCK_JOB_ERROR */
static const struct qb_norm_field qb_fields_job_error[] = {
    {"device", QB_FIELD_STRING, false, NULL},
    {"operation", QB_FIELD_ENUM, false, qb_io_operations},
    {"action", QB_FIELD_ENUM, false, qb_error_actions},
    {NULL, 0, false, NULL},
};

/* qapi/job.json JOB_STATUS_CHANGE */
static const struct qb_norm_field qb_fields_job_status[] = {
    {"id", QB_FIELD_STRING, false, NULL},
    {"status", QB_FIELD_ENUM, false, qb_job_statuses},
    {NULL, 0, false, NULL},
};

/* qapi/block-core.json BLOCK_JOB_READY, BLOCK_JOB_CANCELLED */
static const struct qb_norm_field qb_fields_block_job[] = {
    {"type", QB_FIELD_STRING, false, NULL}, /* the enum JobType */
    {"device", QB_FIELD_STRING, false, NULL},
    {"len", QB_FIELD_UINT, false, NULL},
    {"offset", QB_FIELD_UINT, false, NULL},
    {"speed", QB_FIELD_UINT, false, NULL},
    {NULL, 0, false, NULL},
};

/* qapi/block-core.json BLOCK_JOB_COMPLETED */
static const struct qb_norm_field qb_fields_job_completed[] = {
    {"type", QB_FIELD_STRING, false, NULL},
    {"device", QB_FIELD_STRING, false, NULL},
    {"len", QB_FIELD_UINT, false, NULL},
    {"offset", QB_FIELD_UINT, false, NULL},
    {"speed", QB_FIELD_UINT, false, NULL},
    {"error", QB_FIELD_STRING, true, NULL},
    {NULL, 0, false, NULL},
};

/* qapi/block-core.json BLOCK_WRITE_THRESHOLD */
static const struct qb_norm_field qb_fields_write_threshold[] = {
    {"node-name", QB_FIELD_STRING, false, NULL},
    {"amount-exceeded", QB_FIELD_UINT, false, NULL},
    {"write-threshold", QB_FIELD_UINT, false, NULL},
    {NULL, 0, false, NULL},
};

/* qapi/migration.json COLO_EXIT (error is not QEMU's; schema/v1 allows it, so it is passed on). */
static const struct qb_norm_field qb_fields_colo_exit[] = {
    {"mode", QB_FIELD_ENUM, false, qb_colo_modes},
    {"reason", QB_FIELD_ENUM, false, qb_colo_reasons},
    {"error", QB_FIELD_STRING, true, NULL},
    {NULL, 0, false, NULL},
};

/* No members checked: STOP and RESUME carry none; WATCHDOG, GUEST_PANICKED pass through as is. */
static const struct qb_norm_field qb_fields_none[] = {
    {NULL, 0, false, NULL},
};

/* Returns true when v (NULL when absent) has the member's type and, for an enum, value. */
static bool qb_field_ok(const struct qb_norm_field *f, const json_t *v)
{
    switch (f->kind) {
    case QB_FIELD_STRING:
        return json_is_string(v);
    case QB_FIELD_BOOL:
        return json_is_boolean(v);
    case QB_FIELD_UINT:
        return json_is_integer(v) && json_integer_value(v) >= 0;
    case QB_FIELD_ENUM:
        return qb_enum_has(f->values, json_string_value(v));
    }
    return false;
}

/* Describes what v is, for a log line: "missing", "an integer", "a negative integer", ... */
static const char *qb_json_what(const struct qb_norm_field *f, const json_t *v)
{
    switch (v ? json_typeof(v) : JSON_NULL) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return f->kind == QB_FIELD_ENUM ? "a string QEMU does not define" : "a string";
    case JSON_INTEGER:
        return json_integer_value(v) < 0 ? "a negative integer" : "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        break;
    }
    return v ? "null" : "missing";
}

/* Writes what the member must be into buf: "a string (read|write)", "a boolean", ... */
static const char *qb_field_expect(const struct qb_norm_field *f, char *buf, size_t size)
{
    static const char *const kinds[] = {
        [QB_FIELD_STRING] = "a string",
        [QB_FIELD_BOOL] = "a boolean",
        [QB_FIELD_UINT] = "a non-negative integer",
        [QB_FIELD_ENUM] = "a string",
    };
    size_t used = (size_t)snprintf(buf, size, "%s", kinds[f->kind]);

    for (size_t i = 0; f->kind == QB_FIELD_ENUM && f->values[i] && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? "|" : " (", f->values[i]);
    if (f->kind == QB_FIELD_ENUM && used < size)
        snprintf(buf + used, size - used, ")");
    return buf;
}

/*
 * Checks data (borrowed object, or NULL when QEMU sent none) against fields.
 * Returns QB_OK with *clean = data (borrowed) when every member fits, or with
 * *clean = a new shallow copy (caller releases it) without the optional
 * members of the wrong type; QB_EPARSE when a required member is missing or
 * wrong; QB_ENOMEM. Logs each problem at warn level.
 */
static int qb_norm_check(const struct qb_norm_vm *vm, const char *name,
                         const struct qb_norm_field *fields, const json_t *data, json_t **clean)
{
    char expect[128];

    *clean = (json_t *)data;
    for (const struct qb_norm_field *f = fields; f->key; f++) {
        const json_t *v = json_object_get(data, f->key);

        if (qb_field_ok(f, v) || (f->optional && !v))
            continue;
        if (!f->optional) {
            QB_LOG_WARN(vm->name, "normalize: %s: \"%s\" is %s, expected %s; event dropped", name,
                        f->key, qb_json_what(f, v), qb_field_expect(f, expect, sizeof(expect)));
            if (*clean != data)
                json_decref(*clean);
            *clean = NULL;
            return QB_EPARSE;
        }
        QB_LOG_WARN(vm->name, "normalize: %s: optional \"%s\" is %s, expected %s; left out", name,
                    f->key, qb_json_what(f, v), qb_field_expect(f, expect, sizeof(expect)));
        if (*clean == data && !(*clean = json_copy((json_t *)data)))
            return QB_ENOMEM;
        json_object_del(*clean, f->key);
    }
    return QB_OK;
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
    if (!vm->jobs && !(vm->jobs = json_object()))
        return NULL;
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
    /* Checked against qb_fields_io_error: device, operation, action and reason are strings. */
    json_t *device = json_object_get(data, "device");
    json_t *node = json_object_get(data, "node-name");
    json_t *reason = json_object_get(data, "reason");
    const char *action = qb_str(data, "action");
    json_t *err = json_string_nocheck(nospace ? "enospc"
                                              : qb_errno_name_from_text(json_string_value(reason)));

    (void)name;
    (void)ev;
    /* The message's own values are shared, not copied (see qb_ob_ref). */
    qb_ob_ref(ob, "device", device);
    if (node)
        qb_ob_ref(ob, "node_name", node);
    qb_ob_str(ob, "operation", data, "operation");
    qb_ob_str(ob, "action", data, "action");
    qb_ob_set(ob, "nospace", json_boolean(nospace));
    qb_ob_ref(ob, "errno", err);
    qb_ob_ref(ob, "message", reason);

    if (err && action && strcmp(action, "stop") == 0) {
        qb_stop_cause_clear(&vm->stop_cause);
        vm->stop_cause.device = json_incref(device);
        vm->stop_cause.node = json_incref(node);
        vm->stop_cause.err = json_incref(err);
        vm->stop_cause.nospace = nospace;
    }
    json_decref(err);
}

/* Returns a new {device,node_name?,errno,io_status} object from the held cause, or NULL. */
static json_t *qb_stop_cause_object(const struct qb_stop_cause *c)
{
    struct qb_ob cause = {json_object(), false};

    if (!cause.o)
        return NULL;
    qb_ob_ref(&cause, "device", c->device);
    if (c->node)
        qb_ob_ref(&cause, "node_name", c->node);
    qb_ob_ref(&cause, "errno", c->err);
    qb_ob_set(&cause, "io_status", json_string_nocheck(c->nospace ? "nospace" : "failed"));
    if (cause.failed) {
        json_decref(cause.o);
        return NULL;
    }
    return cause.o;
}

static void qb_norm_stop(struct qb_norm_vm *vm, const char *name, const json_t *data,
                         struct qb_ob *ob, struct qb_norm_event *ev)
{
    (void)name;
    (void)data;
    if (vm->stop_cause.device) {
        qb_ob_set(ob, "reason", json_string_nocheck("io-error"));
        qb_ob_set(ob, "cause", qb_stop_cause_object(&vm->stop_cause));
        qb_stop_cause_clear(&vm->stop_cause);
    } else if (vm->stop_reason) {
        qb_ob_set(ob, "reason", json_string(vm->stop_reason));
    } else {
        ev->need = QB_NORM_QUERY_STATUS;
        vm->stop_if_running = vm->migration_stop;
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
    qb_stop_cause_clear(&vm->stop_cause);
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
    qb_ob_str(ob, "job", data, "device");
    qb_ob_str(ob, "operation", data, "operation");
    qb_ob_str(ob, "action", data, "action");
    qb_ob_set(ob, "repeat", json_integer(repeat));
    if (job)
        json_object_set_new(job, "errors", json_integer(repeat));
    qb_ob_str(ob, "type", job, "type");
    /* The job table's status may come from a query reply or the snapshot: only QEMU's values. */
    qb_ob_enum(ob, "status", job, "status", qb_job_statuses);
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

    (void)ev;
    qb_ob_str(ob, "job", data, "device");
    qb_ob_str(ob, "type", data, "type");
    qb_ob_int(ob, "len", data, "len");
    qb_ob_int(ob, "offset", data, "offset");
    qb_ob_int(ob, "speed", data, "speed");
    /* Only BLOCK_JOB_COMPLETED has error: the other two types' schemas forbid the member. */
    if (strcmp(name, "BLOCK_JOB_COMPLETED") == 0)
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
    /* COLO is over: a later STOP is no checkpoint. */
    vm->migration_stop = NULL;
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
    /* Shared, not copied: nothing edits a message's data once it is parsed. */
    qb_ob_set(ob, "data", data ? json_incref((json_t *)data) : json_object());
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

/*
 * The run state QEMU stops into in a MIGRATION status, for a STOP that
 * query-status finds undone (the VM "running" again): migration_completion
 * stops the source into finish-migrate while the status is still active (with
 * x-colo QEMU resumes it in COLO about 100 ms later), and each COLO checkpoint
 * and the failover (colo_do_failover) stop either side into colo. QEMU 7.2
 * sends MIGRATION before the STOP it explains, and after the failover's STOP
 * MIGRATION completed and COLO_EXIT, which leave no such reason. Statuses not
 * listed explain no STOP.
 */
static const struct qb_migration_stop {
    const char *status; /* MigrationStatus (qapi/migration.json) */
    const char *reason; /* the qmp.vm.stopped reason */
} qb_migration_stops[] = {
    {"active", "finish-migrate"},
    {"colo", "colo"},
};

/* MIGRATION stays a generic event; its status says what an undone STOP was. */
static void qb_norm_migration(struct qb_norm_vm *vm, const char *name, const json_t *data,
                              struct qb_ob *ob, struct qb_norm_event *ev)
{
    const char *status = qb_str(data, "status");

    qb_norm_generic(vm, name, data, ob, ev);
    vm->migration_stop = NULL;
    for (size_t i = 0; status && i < sizeof(qb_migration_stops) / sizeof(qb_migration_stops[0]);
         i++)
        if (strcmp(qb_migration_stops[i].status, status) == 0)
            vm->migration_stop = qb_migration_stops[i].reason;
}

struct qb_norm_entry {
    const char *event; /* QMP event name */
    const char *type;  /* normalised type */
    qb_norm_fn fn;
    const struct qb_norm_field *fields; /* members checked before fn runs */
};

static const struct qb_norm_entry qb_norm_table[] = {
    {"BLOCK_IO_ERROR", "qmp.block.io_error", qb_norm_io_error, qb_fields_io_error},
    {"STOP", "qmp.vm.stopped", qb_norm_stop, qb_fields_none},
    {"RESUME", "qmp.vm.resumed", qb_norm_resume, qb_fields_none},
    {"SHUTDOWN", "qmp.vm.shutdown", qb_norm_shutdown, qb_fields_shutdown},
    {"RESET", "qmp.vm.reset", qb_norm_shutdown, qb_fields_shutdown},
    {"BLOCK_JOB_ERROR", "qmp.block.job_error", qb_norm_job_error, qb_fields_job_error},
    {"JOB_STATUS_CHANGE", "qmp.job.status", qb_norm_job_status, qb_fields_job_status},
    {"BLOCK_JOB_READY", "qmp.block.job_ready", qb_norm_block_job, qb_fields_block_job},
    {"BLOCK_JOB_COMPLETED", "qmp.block.job_completed", qb_norm_block_job, qb_fields_job_completed},
    {"BLOCK_JOB_CANCELLED", "qmp.block.job_cancelled", qb_norm_block_job, qb_fields_block_job},
    {"BLOCK_WRITE_THRESHOLD", "qmp.block.write_threshold", qb_norm_write_threshold,
     qb_fields_write_threshold},
    {"COLO_EXIT", "qmp.colo.exit", qb_norm_colo_exit, qb_fields_colo_exit},
    {"MIGRATION", "qmp.event", qb_norm_migration, qb_fields_none},
    {"WATCHDOG", "qmp.event", qb_norm_pause_cause, qb_fields_none},
    {"GUEST_PANICKED", "qmp.event", qb_norm_pause_cause, qb_fields_none},
};

static const struct qb_norm_entry qb_norm_fallback = {NULL, "qmp.event", qb_norm_generic,
                                                      qb_fields_none};

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
    /* jobs is created with the first job (qb_job_get). */
    return calloc(1, sizeof(struct qb_norm_vm));
}

void qb_norm_vm_set_name(struct qb_norm_vm *vm, const char *name)
{
    vm->name = name;
}

void qb_norm_vm_free(struct qb_norm_vm *vm)
{
    if (!vm)
        return;
    qb_stop_cause_clear(&vm->stop_cause);
    json_decref(vm->jobs);
    free(vm);
}

void qb_norm_vm_reset(struct qb_norm_vm *vm, const json_t *snapshot)
{
    const json_t *jobs = json_object_get(snapshot, "jobs");
    const json_t *j;
    size_t i;

    qb_stop_cause_clear(&vm->stop_cause);
    vm->stop_reason = NULL;
    vm->migration_stop = NULL;
    vm->stop_if_running = NULL;
    /* Dropped, not cleared: a VM without jobs keeps no table (see struct qb_norm_vm). */
    json_decref(vm->jobs);
    vm->jobs = NULL;
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

/*
 * Returns why ts cannot be an envelope's time, or NULL when it can; *sec and
 * *usec (borrowed) are its members, looked up once: a lookup is a seeded hash
 * of the key, and this runs on every event.
 */
static const char *qb_norm_ts_problem(const json_t *ts, const json_t **sec_out,
                                      const json_t **usec_out)
{
    const json_t *sec = json_object_get(ts, "seconds");
    const json_t *usec = json_object_get(ts, "microseconds");

    *sec_out = sec;
    *usec_out = usec;
    if (!ts)
        return "missing";
    if (!json_is_object(ts))
        return "not an object";
    /* 1e12 is a JSON real: QEMU writes both members as integers. */
    if (!json_is_integer(sec))
        return sec ? "seconds not an integer" : "seconds missing";
    if (!json_is_integer(usec))
        return usec ? "microseconds not an integer" : "microseconds missing";
    if (!qb_envelope_time_valid(json_integer_value(sec), 0))
        return "seconds outside years 0001-9999";
    if (!qb_envelope_time_valid(0, json_integer_value(usec)))
        return "microseconds outside 0-999999";
    return NULL;
}

/*
 * Takes the event's time from ts (borrowed; NULL when absent). A time the
 * envelope's date-time cannot carry is replaced by the bridge's clock, logged
 * once per VM: a peer that sends only such timestamps must not flood the log.
 */
static void qb_norm_timestamp(struct qb_norm_vm *vm, const char *name, const json_t *ts,
                              struct qb_norm_event *out)
{
    const json_t *sec, *usec;
    const char *problem = qb_norm_ts_problem(ts, &sec, &usec);

    if (!problem) {
        out->ts_sec = json_integer_value(sec);
        out->ts_usec = (int32_t)json_integer_value(usec);
        return;
    }
    out->ts_sec = QB_ENVELOPE_TIME_NOW;
    out->ts_usec = 0;
    if (vm->ts_logged)
        return;
    vm->ts_logged = true;
    QB_LOG_WARN(vm->name,
                "normalize: %s timestamp unusable (%s): using the bridge's clock; later unusable "
                "timestamps of this VM are not logged",
                name, problem);
}

int qb_normalize_event(struct qb_norm_vm *vm, const json_t *msg, const char *const *exclude,
                       size_t n_exclude, struct qb_norm_event *out)
{
    const char *name = qb_str(msg, "event");
    const json_t *data = json_object_get(msg, "data");
    const json_t *ts = json_object_get(msg, "timestamp");
    const struct qb_norm_entry *entry = &qb_norm_fallback;
    struct qb_ob ob = {NULL, false};
    json_t *clean;
    int rc;

    memset(out, 0, sizeof(*out));
    if (!name || !name[0]) {
        /* qmp.event's schema needs a name: "" could not be published either. */
        QB_LOG_WARN(vm->name, "normalize: message without an event name");
        return QB_EPARSE;
    }
    for (size_t i = 0; i < sizeof(qb_norm_table) / sizeof(qb_norm_table[0]); i++) {
        if (strcmp(qb_norm_table[i].event, name) == 0) {
            entry = &qb_norm_table[i];
            break;
        }
    }
    if (data && !json_is_object(data) && entry != &qb_norm_fallback) {
        QB_LOG_WARN(vm->name, "normalize: %s with data that is not an object", name);
        return QB_EPARSE;
    }
    rc = qb_norm_check(vm, name, entry->fields, data, &clean);
    if (rc < 0)
        return rc;

    ob.o = json_object();
    if (!ob.o) {
        if (clean != data)
            json_decref(clean);
        return QB_ENOMEM;
    }
    out->type = entry->type;
    qb_norm_timestamp(vm, name, ts, out);
    /* Run the normaliser even for an excluded event: its memory (stop cause, jobs) still counts. */
    entry->fn(vm, name, clean, &ob, out);
    if (clean != data)
        json_decref(clean);
    out->data = ob.o;
    if (ob.failed) {
        QB_LOG_ERR(vm->name, "normalize: out of memory normalising %s", name);
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

        /* "ok" explains nothing; a value QEMU does not define is not trusted either. */
        if (!qb_enum_has(qb_io_error_statuses, io))
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
        qb_ob_enum(ob, "status", j, "status", qb_job_statuses);
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
    const char *undone = vm->stop_if_running;

    vm->stop_if_running = NULL;
    /*
     * "running" means the VM was resumed before we asked: saying "running" in
     * a stopped event would be a lie, so the MIGRATION status before the STOP
     * tells why (see qb_migration_stops), or else it is lost. A state QEMU
     * does not define is as good as no answer.
     */
    if (run && strcmp(run, "running") == 0 && undone) {
        QB_LOG_DEBUG(vm->name, "normalize: STOP already undone; reason %s from the migration",
                     undone);
        run = undone;
    } else if (!qb_enum_has(qb_stopped_states, run)) {
        run = "unknown";
    }
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
        QB_LOG_ERR(vm->name, "normalize: out of memory completing %s", ev->type);
}

void qb_norm_event_clear(struct qb_norm_event *ev)
{
    if (!ev)
        return;
    json_decref(ev->data);
    memset(ev, 0, sizeof(*ev));
}
