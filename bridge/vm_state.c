/*
 * vm_state.c - the current state of one VM (qmp.vm.state).
 *
 * Built from the connect-time queries, then folded forward with each
 * normalised event so the retained state message says what a fresh query
 * would say, without asking QEMU again. Each event type has one small
 * function in a table; a function edits the state in place and says whether
 * it changed anything (the caller re-publishes the state only then).
 */
#include "vm_state.h"
#include "error.h"
#include "log.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *qb_str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* Copies src[skey] to dst[key] when it has the given jansson type. */
static void qb_copy(json_t *dst, const char *key, const json_t *src, const char *skey,
                    json_type type)
{
    json_t *v = json_object_get(src, skey);

    if (v && json_typeof(v) == type)
        json_object_set(dst, key, v);
}

/* Returns a new {device,node_name?,errno,io_status} cause for a query-block entry, or NULL. */
static json_t *qb_cause_from_disk(const json_t *dev)
{
    const char *io = qb_str(dev, "io-status");
    const char *device = qb_str(dev, "device");
    const char *node = qb_str(json_object_get(dev, "inserted"), "node-name");
    json_t *cause;

    if (!io || strcmp(io, "ok") == 0)
        return NULL;
    cause = json_object();
    if (!cause)
        return NULL;
    json_object_set_new(cause, "device", json_string(device ? device : ""));
    if (node)
        json_object_set_new(cause, "node_name", json_string(node));
    json_object_set_new(cause, "errno",
                        json_string(strcmp(io, "nospace") == 0 ? "enospc" : "unknown"));
    json_object_set_new(cause, "io_status", json_string(io));
    return cause;
}

static json_t *qb_disk_from_query(const json_t *dev)
{
    const json_t *ins = json_object_get(dev, "inserted");
    json_t *disk = json_object();

    if (!disk)
        return NULL;
    json_object_set_new(disk, "device",
                        json_string(qb_str(dev, "device") ? qb_str(dev, "device") : ""));
    qb_copy(disk, "node_name", ins, "node-name", JSON_STRING);
    qb_copy(disk, "io_status", dev, "io-status", JSON_STRING);
    qb_copy(disk, "size", json_object_get(ins, "image"), "virtual-size", JSON_INTEGER);
    qb_copy(disk, "filename", ins, "file", JSON_STRING);
    qb_copy(disk, "driver", ins, "drv", JSON_STRING);
    if (json_is_boolean(json_object_get(ins, "ro")))
        json_object_set(disk, "read_only", json_object_get(ins, "ro"));
    return disk;
}

static json_t *qb_job_from_query(const json_t *j)
{
    json_t *job = json_object();

    if (!job)
        return NULL;
    qb_copy(job, "id", j, "device", JSON_STRING);
    qb_copy(job, "type", j, "type", JSON_STRING);
    qb_copy(job, "status", j, "status", JSON_STRING);
    qb_copy(job, "device", j, "device", JSON_STRING);
    qb_copy(job, "offset", j, "offset", JSON_INTEGER);
    qb_copy(job, "len", j, "len", JSON_INTEGER);
    qb_copy(job, "io_status", j, "io-status", JSON_STRING);
    return job;
}

static json_t *qb_qemu_from_greeting(const json_t *greeting)
{
    const json_t *version = json_object_get(greeting, "version");
    const json_t *q = json_object_get(version, "qemu");
    char text[64];
    json_t *qemu = json_object();

    if (!qemu)
        return NULL;
    if (q) {
        snprintf(text, sizeof(text),
                 "%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(q, "major")),
                 json_integer_value(json_object_get(q, "minor")),
                 json_integer_value(json_object_get(q, "micro")));
        json_object_set_new(qemu, "version", json_string(text));
    }
    qb_copy(qemu, "package", version, "package", JSON_STRING);
    return qemu;
}

bool qb_vm_uuid_from_reply(const json_t *uuid_reply, char out[QB_VM_UUID_SIZE])
{
    const char *u = qb_str(uuid_reply, "UUID");
    bool nonzero = false;

    out[0] = '\0';
    if (!u || strlen(u) != QB_VM_UUID_SIZE - 1)
        return false;
    for (size_t i = 0; i < QB_VM_UUID_SIZE - 1; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = u[i];

        if (dash ? c != '-' : !isxdigit((unsigned char)c))
            return false;
        nonzero |= !dash && c != '0';
    }
    if (!nonzero)
        return false;
    for (size_t i = 0; i < QB_VM_UUID_SIZE; i++)
        out[i] = (char)tolower((unsigned char)u[i]);
    return true;
}

json_t *qb_vm_state_from_queries(const json_t *greeting, const json_t *status, const json_t *block,
                                 const json_t *block_jobs, const json_t *colo, const json_t *uuid)
{
    char uuid_text[QB_VM_UUID_SIZE];
    json_t *state = json_object();
    json_t *disks = json_array();
    json_t *jobs = json_array();
    const char *run = qb_str(status, "status");
    bool running = json_is_true(json_object_get(status, "running"));
    const json_t *v;
    size_t i;

    if (!state || !disks || !jobs)
        goto fail;
    json_object_set_new(state, "run_state", json_string(run ? run : "unknown"));
    json_object_set_new(state, "running", json_boolean(running));
    if (!running)
        json_object_set_new(state, "reason", json_string(run ? run : "unknown"));
    json_object_set_new(state, "connected", json_true());
    json_object_set_new(state, "uuid",
                        qb_vm_uuid_from_reply(uuid, uuid_text) ? json_string(uuid_text)
                                                               : json_null());
    if (run && strcmp(run, "io-error") == 0) {
        json_array_foreach(block, i, v)
        {
            json_t *cause = qb_cause_from_disk(v);

            if (cause) {
                json_object_set_new(state, "cause", cause);
                break;
            }
        }
    }
    json_object_set_new(state, "qemu", qb_qemu_from_greeting(greeting));
    json_array_foreach(block, i, v) json_array_append_new(disks, qb_disk_from_query(v));
    json_array_foreach(block_jobs, i, v) json_array_append_new(jobs, qb_job_from_query(v));
    if (json_object_set_new(state, "disks", disks) < 0 ||
        json_object_set_new(state, "jobs", jobs) < 0) {
        json_decref(state);
        return NULL;
    }
    if (json_is_object(colo)) {
        json_t *c = json_object();

        qb_copy(c, "mode", colo, "mode", JSON_STRING);
        qb_copy(c, "last_mode", colo, "last-mode", JSON_STRING);
        qb_copy(c, "reason", colo, "reason", JSON_STRING);
        json_object_set_new(state, "colo", c);
    } else {
        json_object_set_new(state, "colo", json_null());
    }
    return state;

fail:
    json_decref(state);
    json_decref(disks);
    json_decref(jobs);
    return NULL;
}

/* ---- folding events ---- */

/*
 * Each fold function edits the state in place and returns whether it changed
 * anything. The setters below compare before they write: the state is folded
 * on every event, and a mirror on a full disk raises hundreds of io_errors per
 * pause, most of which change nothing (copying the whole state to compare
 * afterwards costs more than building the event's envelope).
 */
typedef bool (*qb_apply_fn)(json_t *state, const json_t *data);

/* Sets obj[key] to the string s unless it already is that string. */
static bool qb_set_str(json_t *obj, const char *key, const char *s)
{
    const char *cur = qb_str(obj, key);

    if (cur && strcmp(cur, s) == 0)
        return false;
    json_object_set_new(obj, key, json_string(s));
    return true;
}

/* Sets obj[key] to the boolean b unless it already is that boolean. */
static bool qb_set_bool(json_t *obj, const char *key, bool b)
{
    json_t *cur = json_object_get(obj, key);

    if (json_is_boolean(cur) && json_is_true(cur) == b)
        return false;
    json_object_set_new(obj, key, json_boolean(b));
    return true;
}

/*
 * Sets obj[key] to v (borrowed; a reference is taken) unless it is already
 * equal to v. Shared, not copied: a deep copy was a third of a STOP's fold,
 * and neither side edits the value in place (the state replaces or deletes a
 * cause whole; an event's data is not edited once it is folded).
 */
static bool qb_set_shared(json_t *obj, const char *key, const json_t *v)
{
    if (json_equal(json_object_get(obj, key), (json_t *)v))
        return false;
    json_object_set(obj, key, (json_t *)v);
    return true;
}

static bool qb_del(json_t *obj, const char *key)
{
    return json_object_del(obj, key) == 0;
}

static bool qb_apply_stopped(json_t *state, const json_t *data)
{
    const char *reason = qb_str(data, "reason");
    json_t *cause = json_object_get(data, "cause");
    bool changed = false;

    if (!reason)
        reason = "unknown";
    changed |= qb_set_bool(state, "running", false);
    changed |= qb_set_str(state, "run_state", reason);
    changed |= qb_set_str(state, "reason", reason);
    if (json_is_object(cause))
        changed |= qb_set_shared(state, "cause", cause);
    else
        changed |= qb_del(state, "cause");
    return changed;
}

static bool qb_apply_resumed(json_t *state, const json_t *data)
{
    json_t *disk;
    size_t i;
    bool changed = false;

    (void)data;
    changed |= qb_set_bool(state, "running", true);
    changed |= qb_set_str(state, "run_state", "running");
    changed |= qb_del(state, "reason");
    changed |= qb_del(state, "cause");
    /* cont resets every device's io-status (QEMU's blk_iostatus_reset). */
    json_array_foreach(json_object_get(state, "disks"), i, disk)
    {
        if (qb_str(disk, "io_status"))
            changed |= qb_set_str(disk, "io_status", "ok");
    }
    return changed;
}

static bool qb_apply_io_error(json_t *state, const json_t *data)
{
    const char *action = qb_str(data, "action");
    const char *device = qb_str(data, "device");
    const char *node = qb_str(data, "node_name");
    bool nospace = json_is_true(json_object_get(data, "nospace"));
    json_t *disk;
    size_t i;

    /* QEMU records io-status only when the error stops the VM. */
    if (!action || strcmp(action, "stop") != 0)
        return false;
    json_array_foreach(json_object_get(state, "disks"), i, disk)
    {
        const char *d = qb_str(disk, "device");
        const char *n = qb_str(disk, "node_name");

        if ((device && *device && d && strcmp(d, device) == 0) ||
            ((!device || !*device) && node && n && strcmp(n, node) == 0))
            return qb_set_str(disk, "io_status", nospace ? "nospace" : "failed");
    }
    return false;
}

/* Returns the index of job id in jobs, or -1. */
static long qb_job_index(const json_t *jobs, const char *id)
{
    const json_t *job;
    size_t i;

    json_array_foreach(jobs, i, job)
    {
        const char *j = qb_str(job, "id");

        if (id && j && strcmp(j, id) == 0)
            return (long)i;
    }
    return -1;
}

static bool qb_apply_job_status(json_t *state, const json_t *data)
{
    json_t *jobs = json_object_get(state, "jobs");
    const char *id = qb_str(data, "job");
    const char *status = qb_str(data, "status");
    long idx = qb_job_index(jobs, id);
    json_t *job;

    if (!id || !status || !json_is_array(jobs))
        return false;
    if (strcmp(status, "null") == 0)
        return idx >= 0 && json_array_remove(jobs, (size_t)idx) == 0;
    if (idx >= 0)
        return qb_set_str(json_array_get(jobs, (size_t)idx), "status", status);
    job = json_object();
    json_object_set_new(job, "id", json_string(id));
    qb_copy(job, "type", data, "type", JSON_STRING);
    json_object_set_new(job, "device", json_string(id));
    json_object_set_new(job, "status", json_string(status));
    return json_array_append_new(jobs, job) == 0;
}

static bool qb_apply_job_gone(json_t *state, const json_t *data)
{
    json_t *jobs = json_object_get(state, "jobs");
    long idx = qb_job_index(jobs, qb_str(data, "job"));

    return idx >= 0 && json_array_remove(jobs, (size_t)idx) == 0;
}

static bool qb_apply_colo_exit(json_t *state, const json_t *data)
{
    json_t *colo = json_object();

    if (!colo)
        return false;
    json_object_set_new(colo, "mode", json_string("none"));
    qb_copy(colo, "last_mode", data, "mode", JSON_STRING);
    qb_copy(colo, "reason", data, "reason", JSON_STRING);
    if (json_equal(json_object_get(state, "colo"), colo)) {
        json_decref(colo);
        return false;
    }
    json_object_set_new(state, "colo", colo);
    return true;
}

static bool qb_apply_disconnected(json_t *state, const json_t *data)
{
    (void)data;
    return qb_set_bool(state, "connected", false);
}

struct qb_apply_entry {
    const char *type;
    qb_apply_fn fn;
};

/*
 * Event types not listed (shutdown, reset, job errors, ...) leave the state as
 * it is. bridge.vm.disconnected is the bridge's own: the session ended.
 */
static const struct qb_apply_entry qb_apply_table[] = {
    {"qmp.vm.stopped", qb_apply_stopped},
    {"qmp.vm.resumed", qb_apply_resumed},
    {"qmp.block.io_error", qb_apply_io_error},
    {"qmp.job.status", qb_apply_job_status},
    {"qmp.block.job_completed", qb_apply_job_gone},
    {"qmp.block.job_cancelled", qb_apply_job_gone},
    {"qmp.colo.exit", qb_apply_colo_exit},
    {"bridge.vm.disconnected", qb_apply_disconnected},
};

bool qb_vm_state_apply(json_t *state, const struct qb_norm_event *ev)
{
    if (!state || !ev || !ev->type)
        return false;
    for (size_t i = 0; i < sizeof(qb_apply_table) / sizeof(qb_apply_table[0]); i++) {
        if (strcmp(qb_apply_table[i].type, ev->type) == 0)
            return qb_apply_table[i].fn(state, ev->data);
    }
    return false;
}

/* ---- the state as kept between events ---- */

struct qb_vm_state {
    char *text; /* owned: compact JSON, NUL-terminated; NULL while the tree is newer */
    size_t len;
    json_t *tree;       /* owned: text parsed, only while in a cache; NULL otherwise */
    char run_state[32]; /* copy of run_state, so readers need no parse ("" when absent) */
    struct qb_vm_state_cache *cache;   /* the cache holding the tree, or NULL */
    struct qb_vm_state *newer, *older; /* links in cache's recency list */
};

struct qb_vm_state_cache {
    struct qb_vm_state *newest, *oldest;
    size_t count, cap;
};

struct qb_vm_state_cache *qb_vm_state_cache_new(size_t cap)
{
    struct qb_vm_state_cache *c = calloc(1, sizeof(*c));

    if (c)
        c->cap = cap;
    return c;
}

size_t qb_vm_state_cache_count(const struct qb_vm_state_cache *c)
{
    return c ? c->count : 0;
}

static void qb_cache_unlink(struct qb_vm_state *s)
{
    struct qb_vm_state_cache *c = s->cache;

    if (!c)
        return;
    if (s->newer)
        s->newer->older = s->older;
    else
        c->newest = s->older;
    if (s->older)
        s->older->newer = s->newer;
    else
        c->oldest = s->newer;
    s->newer = s->older = NULL;
    s->cache = NULL;
    c->count--;
}

static void qb_cache_push_newest(struct qb_vm_state_cache *c, struct qb_vm_state *s)
{
    s->cache = c;
    s->older = c->newest;
    s->newer = NULL;
    if (c->newest)
        c->newest->newer = s;
    else
        c->oldest = s;
    c->newest = s;
    c->count++;
}

/*
 * Re-reads run_state from tree (or t) into s->run_state, cut to fit on a
 * character boundary (it is QEMU's text, valid UTF-8 as jansson parsed it;
 * half a character would make /vms drop the VM). By hand, not snprintf: this
 * runs on every event that changes the state (snprintf was 1% of the loop's
 * instructions flat out).
 */
static void qb_vm_state_note_run_state(struct qb_vm_state *s, const json_t *t)
{
    const char *run = qb_str(t, "run_state");
    size_t n = run ? strnlen(run, sizeof(s->run_state) - 1) : 0;

    if (run && run[n] != '\0')
        while (n > 0 && ((unsigned char)run[n] & 0xc0) == 0x80)
            n--; /* run[n] continues a character: leave that character out */

    memcpy(s->run_state, run ? run : "", n);
    s->run_state[n] = '\0';
}

/* Replaces s->text with t serialised; returns false (text unchanged) on allocation failure. */
static bool qb_vm_state_set_text(struct qb_vm_state *s, const json_t *t)
{
    /* JSON_COMPACT: the same bytes the envelope writes for a tree (test_envelope checks). */
    char *text = json_dumps(t, JSON_COMPACT);

    if (!text)
        return false;
    free(s->text);
    s->text = text;
    s->len = strlen(text);
    return true;
}

void qb_vm_state_idle(struct qb_vm_state *s)
{
    if (!s || !s->tree)
        return;
    /* Without memory for the text the tree stays: it is the only copy of the state. */
    if (!s->text && !qb_vm_state_set_text(s, s->tree)) {
        QB_LOG_ERR(NULL, "vm state: out of memory serialising the state; keeping its tree");
        return;
    }
    qb_cache_unlink(s);
    json_decref(s->tree);
    s->tree = NULL;
}

void qb_vm_state_cache_free(struct qb_vm_state_cache *c)
{
    if (!c)
        return;
    while (c->oldest) {
        struct qb_vm_state *s = c->oldest;

        qb_vm_state_idle(s);
        if (s->cache == c) /* idle could not serialise: detach, the tree stays with s */
            qb_cache_unlink(s);
    }
    free(c);
}

struct qb_vm_state *qb_vm_state_new(const json_t *snapshot)
{
    struct qb_vm_state *s = calloc(1, sizeof(*s));

    if (!s)
        return NULL;
    if (!json_is_object(snapshot) || !qb_vm_state_set_text(s, snapshot)) {
        free(s);
        return NULL;
    }
    qb_vm_state_note_run_state(s, snapshot);
    return s;
}

void qb_vm_state_free(struct qb_vm_state *s)
{
    if (!s)
        return;
    qb_cache_unlink(s);
    json_decref(s->tree);
    free(s->text);
    free(s);
}

/* Makes s the newest of cache, giving up the oldest trees beyond its cap. */
static void qb_vm_state_touch(struct qb_vm_state *s, struct qb_vm_state_cache *cache)
{
    if (s->cache == cache && cache->newest == s)
        return;
    qb_cache_unlink(s);
    qb_cache_push_newest(cache, s);
    while (cache->count > cache->cap && cache->oldest && cache->oldest != s) {
        struct qb_vm_state *old = cache->oldest;

        qb_vm_state_idle(old);
        if (old->cache == cache) /* could not serialise: it keeps its tree, off the list */
            qb_cache_unlink(old);
    }
}

bool qb_vm_state_fold(struct qb_vm_state *s, struct qb_vm_state_cache *cache,
                      const struct qb_norm_event *ev)
{
    bool listed = false;
    bool changed;

    if (!s || !ev || !ev->type)
        return false;
    /* Most event types never touch the state: no parse for them. */
    for (size_t i = 0; i < sizeof(qb_apply_table) / sizeof(qb_apply_table[0]) && !listed; i++)
        listed = strcmp(qb_apply_table[i].type, ev->type) == 0;
    if (!listed)
        return false;
    if (!s->tree) {
        json_error_t jerr;

        s->tree = json_loadb(s->text, s->len, 0, &jerr);
        if (!s->tree) {
            QB_LOG_ERR(NULL, "vm state: cannot re-read the state: %s", jerr.text);
            return false;
        }
    }
    changed = qb_vm_state_apply(s->tree, ev);
    if (changed) {
        /* the tree is the state now; the text is made again when needed */
        free(s->text);
        s->text = NULL;
        s->len = 0;
        qb_vm_state_note_run_state(s, s->tree);
    }
    if (cache && cache->cap > 0)
        qb_vm_state_touch(s, cache);
    else
        qb_vm_state_idle(s);
    return changed;
}

const json_t *qb_vm_state_tree(const struct qb_vm_state *s)
{
    return s->tree;
}

const char *qb_vm_state_text(struct qb_vm_state *s, size_t *len)
{
    if (!s->text && s->tree && !qb_vm_state_set_text(s, s->tree))
        QB_LOG_ERR(NULL, "vm state: out of memory serialising the state");
    *len = s->len;
    return s->text;
}

const char *qb_vm_state_run_state(const struct qb_vm_state *s)
{
    return s->run_state;
}

json_t *qb_vm_state_json(const struct qb_vm_state *s)
{
    json_error_t jerr;

    if (s->tree)
        return json_deep_copy(s->tree);
    return json_loadb(s->text, s->len, 0, &jerr);
}
