/*
 * libvirt_link.c - one libvirt domain behind the seam (see libvirt_link.h).
 *
 * Work for the worker thread is an "op": opening a session (the disk map),
 * a query, a command. An op holds its own references (domain, disk map), so
 * the link may end its session, or be released, while the worker still runs
 * it; the link's memory stays until its last op came back.
 */
#include "libvirt_link.h"

#include "error.h"
#include "held_events.h"
#include "libvirt_commands.h"
#include "libvirt_disks.h"
#include "libvirt_queries.h"
#include "log.h"
#include "rate_limit.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A disk map shared by the session and the ops that read it on the worker. */
struct lv_disk_map {
    atomic_int refs;
    struct qb_lv_disks *d;
};

enum lv_op_kind { LV_OP_OPEN, LV_OP_QUERY, LV_OP_COMMAND };

/*
 * A session up this long resets the back-off when it ends, unless the
 * manager closed it (source_qmp.c's rule: that counts as failed, however long
 * it ran).
 */
#define LV_STABLE_MS 10000

struct lv_op {
    enum lv_op_kind kind;
    struct qb_lv_link *l;
    unsigned session_id;
    virDomainPtr dom;          /* a reference of the op's own */
    struct lv_disk_map *map;   /* a reference, NULL for LV_OP_OPEN */
    struct lv_op *prev, *next; /* on l->pending while its callback is due */
    bool answered;             /* answered early (the session ended): the result is dropped */

    /* LV_OP_OPEN */
    struct qb_lv_disks *disks;
    size_t skipped;
    int persistent;
    bool active;
    char err[200];

    /* LV_OP_QUERY */
    enum qb_source_query q;
    qb_source_answer_cb cb;
    void *cb_arg;
    int status;
    json_t *answer;

    /* LV_OP_COMMAND */
    struct qb_lv_command_args args;
    atomic_uint progress; /* QB_LV_CMD_* bits, shared with the worker */
    qb_source_result_cb done;
    void *done_arg;
    json_t *result;
};

struct qb_lv_link {
    struct qb_source_link head;
    struct qb_lv_shared *sh;
    virDomainPtr dom;        /* the domain of the current or last session, a reference */
    struct lv_disk_map *map; /* the disk map of the session that is up */
    json_t *greeting;        /* of the last session that came up */
    char version[32];
    char *address;
    char uuid[VIR_UUID_STRING_BUFLEN];
    enum qb_source_session session;
    unsigned session_id; /* changes at each begin and end: late answers of old sessions drop */
    unsigned jobs;       /* ops on the worker that point here */
    struct lv_op *pending;
    struct qb_held_events held; /* events relayed while the manager paused reading */
    bool paused;
    bool persistent;
    bool released;
    bool release_notified;
    bool close_due, release_due, on_due;
    bool asked_close;       /* the session ending now is the manager's close */
    unsigned closed_streak; /* the manager's closes since a stable session: the back-off */
    uint64_t up_at;         /* loop time the session came up */
    uint64_t rng;           /* the back-off's jitter */
    uv_timer_t *reopen;     /* the back-off's timer, made at the first close (freed apart) */
    struct qb_lv_link *due_next;
    char why[128];
    char name[];
};

#define LINK(h) ((struct qb_lv_link *)(h))
#define CLINK(h) ((const struct qb_lv_link *)(h))

/* ---- small parts ---------------------------------------------------------- */

static struct lv_disk_map *map_ref(struct lv_disk_map *m)
{
    if (m)
        atomic_fetch_add(&m->refs, 1);
    return m;
}

static void map_unref(struct lv_disk_map *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) {
        qb_lv_disks_free(m->d);
        free(m);
    }
}

static void link_due(struct qb_lv_link *l)
{
    struct qb_lv_shared *sh = l->sh;

    if (l->on_due)
        return;
    l->on_due = true;
    l->due_next = sh->due;
    sh->due = l;
    sh->wake(sh->arg);
}

static void link_maybe_free(struct qb_lv_link *l)
{
    if (l->release_notified && l->jobs == 0 && !l->on_due)
        qb_lv_link_free(l);
}

static void op_free(struct lv_op *op)
{
    if (op->dom)
        virDomainFree(op->dom);
    map_unref(op->map);
    qb_lv_disks_free(op->disks);
    json_decref(op->answer);
    json_decref(op->result);
    qb_lv_command_args_clear(&op->args);
    free(op);
}

static void pending_add(struct qb_lv_link *l, struct lv_op *op)
{
    op->next = l->pending;
    if (l->pending)
        l->pending->prev = op;
    l->pending = op;
}

static void pending_del(struct qb_lv_link *l, struct lv_op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else if (l->pending == op)
        l->pending = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = op->next = NULL;
}

/* Hands op to the worker; the link counts it until its done ran. */
static int op_submit(struct qb_lv_link *l, struct lv_op *op, void (*work)(void *),
                     void (*done)(void *, bool))
{
    int rc = qb_libvirt_worker_submit(l->sh->worker, work, done, op);

    if (rc < 0)
        return rc;
    l->jobs++;
    if (op->kind != LV_OP_OPEN)
        pending_add(l, op);
    return QB_OK;
}

/* The text of libvirt's last error (for a log line) into buf; sets *lost as qb_lv_last_error. */
static void last_error_text(char *buf, size_t len, bool *lost)
{
    json_t *err = qb_lv_last_error(lost);
    const char *desc = json_string_value(json_object_get(err, "desc"));

    snprintf(buf, len, "%s", desc ? desc : "out of memory");
    json_decref(err);
}

/* ---- the link's life ------------------------------------------------------ */

int qb_lv_link_new(struct qb_lv_shared *sh, const char *name, const char *uuid, const char *address,
                   struct qb_lv_link **out)
{
    size_t nlen = strlen(name);
    struct qb_lv_link *l = calloc(1, sizeof(*l) + nlen + 1);

    *out = NULL;
    if (!l || !(l->address = strdup(address))) {
        free(l);
        return QB_ENOMEM;
    }
    l->head.ops = sh->ops;
    l->sh = sh;
    memcpy(l->name, name, nlen + 1);
    snprintf(l->uuid, sizeof(l->uuid), "%s", uuid);
    l->persistent = true;
    l->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)l;
    if (!l->rng)
        l->rng = 1;
    *out = l;
    return QB_OK;
}

static void reopen_closed(uv_handle_t *h)
{
    free(h);
}

void qb_lv_link_free(struct qb_lv_link *l)
{
    if (!l)
        return;
    if (l->dom)
        virDomainFree(l->dom);
    if (l->reopen)
        uv_close((uv_handle_t *)l->reopen, reopen_closed); /* stops it; frees it later */
    map_unref(l->map);
    json_decref(l->greeting);
    qb_held_events_clear(&l->held);
    free(l->address);
    free(l);
}

struct qb_source_link *qb_lv_link_head(struct qb_lv_link *l)
{
    return &l->head;
}

const char *qb_lv_link_name(const struct qb_lv_link *l)
{
    return l->name;
}

bool qb_lv_link_in_session(const struct qb_lv_link *l)
{
    return l->session == QB_SOURCE_OPENING || l->session == QB_SOURCE_READY;
}

bool qb_lv_link_persistent(const struct qb_lv_link *l)
{
    return l->persistent;
}

void qb_lv_link_set_persistent(struct qb_lv_link *l, bool persistent)
{
    l->persistent = persistent;
}

/* ---- opening a session ---------------------------------------------------- */

static void op_open_work(void *arg)
{
    struct lv_op *op = arg;
    bool lost;
    char *xml = qb_lv_domain_xml(op->dom, &lost);

    if (!xml) {
        last_error_text(op->err, sizeof(op->err), &lost);
        return;
    }
    if (qb_lv_disks_parse(xml, strlen(xml), &op->disks, &op->skipped) < 0)
        snprintf(op->err, sizeof(op->err), "its XML could not be read");
    free(xml);
    op->persistent = virDomainIsPersistent(op->dom);
    op->active = virDomainIsActive(op->dom) == 1;
}

static void op_open_done(void *arg, bool cancelled)
{
    struct lv_op *op = arg;
    struct qb_lv_link *l = op->l;
    struct lv_disk_map *map;

    l->jobs--;
    if (cancelled || l->released || op->session_id != l->session_id ||
        l->session != QB_SOURCE_OPENING)
        goto out;
    if (!op->disks || !op->active) {
        if (op->disks)
            QB_LOG_INFO(l->name, "libvirt: the domain stopped before its session began");
        else
            QB_LOG_WARN(l->name, "libvirt: cannot read the domain's disks: %s", op->err);
        l->session = QB_SOURCE_IDLE;
        l->session_id++;
        goto out;
    }
    if (!(map = calloc(1, sizeof(*map)))) {
        QB_LOG_ERR(l->name, "libvirt: out of memory beginning a session");
        l->session = QB_SOURCE_IDLE;
        l->session_id++;
        goto out;
    }
    if (op->skipped)
        QB_LOG_WARN(l->name, "libvirt: %zu disks without a usable target are left out",
                    op->skipped);
    atomic_init(&map->refs, 1);
    map->d = op->disks;
    op->disks = NULL;
    map_unref(l->map);
    l->map = map;
    if (op->persistent >= 0)
        l->persistent = op->persistent == 1;
    json_decref(l->greeting);
    l->greeting = json_incref(l->sh->greeting);
    snprintf(l->version, sizeof(l->version), "%s", l->sh->version);
    l->session = QB_SOURCE_READY;
    l->paused = false;
    l->up_at = uv_now(l->sh->loop);
    if (l->head.cb)
        l->head.cb->on_up(l->head.cb_arg, NULL);
out:
    op_free(op);
    link_maybe_free(l);
}

void qb_lv_link_begin(struct qb_lv_link *l, virDomainPtr dom)
{
    struct lv_op *op;
    int rc = QB_ENOMEM;

    if (l->released || qb_lv_link_in_session(l))
        return;
    if (l->reopen)
        uv_timer_stop(l->reopen); /* found running again before the back-off ended */
    virDomainRef(dom);
    if (l->dom)
        virDomainFree(l->dom);
    l->dom = dom;
    l->session = QB_SOURCE_OPENING;
    l->session_id++;
    if ((op = calloc(1, sizeof(*op)))) {
        op->kind = LV_OP_OPEN;
        op->l = l;
        op->session_id = l->session_id;
        op->dom = dom;
        virDomainRef(dom);
        rc = op_submit(l, op, op_open_work, op_open_done);
        if (rc < 0)
            op_free(op);
    }
    if (rc < 0) {
        QB_LOG_WARN(l->name, "libvirt: session not begun: %s", qb_strerror(rc));
        l->session = QB_SOURCE_IDLE;
        l->session_id++;
    }
}

/* ---- ending a session ----------------------------------------------------- */

/* Answers op now because its session ended; its late result will be dropped. */
static void op_answer_closed(struct lv_op *op, const char *why)
{
    op->answered = true;
    if (op->kind == LV_OP_QUERY) {
        op->cb(op->cb_arg, QB_ECLOSED, NULL);
    } else {
        char msg[200];

        snprintf(msg, sizeof(msg), "the libvirt session closed before the command ended: %s", why);
        /* and the worker, if it has yet to run it or is running it, sends no more changes */
        bool changed = qb_lv_command_abandon(&op->progress);

        op->done(op->done_arg,
                 qb_lv_command_result_early(&op->args, changed, QB_CMD_ERR_DISCONNECTED, msg));
    }
}

void qb_lv_link_end(struct qb_lv_link *l, int err, const char *reason)
{
    bool was_up = l->session == QB_SOURCE_READY;
    char why[128];

    if (l->session == QB_SOURCE_IDLE || l->session == QB_SOURCE_CLOSING)
        return;
    snprintf(why, sizeof(why), "%s", reason ? reason : qb_strerror(err));
    l->session = QB_SOURCE_CLOSING;
    l->session_id++;
    while (l->pending) {
        struct lv_op *op = l->pending;

        pending_del(l, op);
        op_answer_closed(op, why);
    }
    qb_held_events_clear(&l->held);
    l->paused = false;
    map_unref(l->map);
    l->map = NULL;
    l->session = QB_SOURCE_IDLE;
    if (was_up && !l->asked_close && uv_now(l->sh->loop) - l->up_at >= LV_STABLE_MS)
        l->closed_streak = 0;
    l->asked_close = false;
    if (was_up && l->head.cb)
        l->head.cb->on_closed(l->head.cb_arg, err, why);
}

void qb_lv_link_drop_domain(struct qb_lv_link *l)
{
    if (l->dom && !qb_lv_link_in_session(l)) {
        virDomainFree(l->dom);
        l->dom = NULL;
    }
}

void qb_lv_link_gone(struct qb_lv_link *l, const char *why)
{
    if (!l->released && l->head.cb)
        l->head.cb->on_gone(l->head.cb_arg, why);
}

/* ---- events --------------------------------------------------------------- */

/* QMP event names: upper case, digits and '_' (QEMU's own), at most 64. */
static bool event_name_ok(const char *name)
{
    size_t len = strlen(name);

    return len > 0 && len <= 64 && strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == len;
}

/*
 * libvirt's disks are -blockdev nodes, so QEMU's "device" is "": the disk's
 * target goes there, the node name stays in "node-name".
 */
static void event_name_disk(json_t *data, const struct lv_disk_map *map)
{
    const char *node = json_string_value(json_object_get(data, "node-name"));
    const char *dev = json_string_value(json_object_get(data, "device"));
    const struct qb_lv_disk *k;

    if (!map || !node || !dev || dev[0] != '\0')
        return;
    if ((k = qb_lv_disks_by_node(map->d, node, NULL)))
        json_object_set_new(data, "device", json_string(k->target));
}

/* Hands the held events to the manager, in order, while it reads. */
static void link_drain(struct qb_lv_link *l)
{
    unsigned session = l->session_id;

    while (!l->paused && l->session == QB_SOURCE_READY && l->session_id == session &&
           !l->released && qb_held_events_count(&l->held) > 0) {
        int lost = 0;
        json_t *msg = qb_held_events_pop(&l->held, &lost);
        struct qb_source_event ev = {.msg = msg};

        if (lost)
            QB_LOG_ERR(l->name, "libvirt: out of memory: one held event was dropped");
        if (!msg)
            continue;
        l->head.cb->on_event(l->head.cb_arg, &ev);
        json_decref(msg);
    }
}

/* The held events are over a bound: this session ends and a new one resyncs the state. */
static void link_held_overflow(struct qb_lv_link *l, size_t bytes)
{
    struct qb_lv_shared *sh = l->sh;
    const char *why = qb_source_held_overflow(
        sh->cfg, l->name, "the bus to take events again", qb_held_events_count(&l->held) + 1,
        qb_held_events_bytes(&l->held) + bytes, &sh->held_over_events, &sh->held_over_bytes);

    snprintf(l->why, sizeof(l->why), "%s", why);
    l->close_due = true;
    link_due(l);
}

void qb_lv_link_relay(struct qb_lv_link *l, const char *event, long long seconds, unsigned micros,
                      const char *details)
{
    struct qb_lv_shared *sh = l->sh;
    size_t dlen = details ? strlen(details) : 0;
    json_t *msg, *data = NULL;
    json_error_t jerr;

    if (l->released || l->session != QB_SOURCE_READY || l->close_due || !l->head.cb) {
        sh->events_dropped++;
        return;
    }
    if (!event_name_ok(event) || dlen > sh->cfg->qmp_max_line_bytes) {
        sh->events_dropped++;
        QB_LOG_WARN(l->name,
                    "libvirt: event dropped: %s (%zu bytes of data, qmp.max_line_bytes %zu)",
                    event_name_ok(event) ? "data too large" : "not a QMP event name", dlen,
                    sh->cfg->qmp_max_line_bytes);
        return;
    }
    if (details && !(data = json_loadb(details, dlen, JSON_REJECT_DUPLICATES, &jerr))) {
        sh->events_dropped++;
        QB_LOG_WARN(l->name, "libvirt: event %s dropped: its data is not JSON: %s", event,
                    jerr.text);
        return;
    }
    if (data && !json_is_object(data)) {
        sh->events_dropped++;
        QB_LOG_WARN(l->name, "libvirt: event %s dropped: its data is not an object", event);
        json_decref(data);
        return;
    }
    if (data)
        event_name_disk(data, l->map);
    msg = json_pack("{s:s, s:{s:I, s:I}}", "event", event, "timestamp", "seconds",
                    (json_int_t)seconds, "microseconds", (json_int_t)micros);
    if (!msg || (data && json_object_set_new(msg, "data", data) < 0)) {
        sh->events_dropped++;
        QB_LOG_ERR(l->name, "libvirt: out of memory: event %s dropped", event);
        json_decref(msg);
        return;
    }
    if (l->paused || qb_held_events_count(&l->held) > 0) {
        char *line = json_dumps(msg, JSON_COMPACT);
        struct qb_held_limits lim = qb_source_held_limits(sh->cfg);
        int rc = line ? qb_held_events_push(&l->held, line, strlen(line), &lim) : QB_ENOMEM;

        if (rc == QB_ETOOBIG)
            link_held_overflow(l, strlen(line));
        else if (rc < 0)
            QB_LOG_ERR(l->name, "libvirt: out of memory: event %s dropped", event);
        free(line);
        json_decref(msg);
        link_drain(l);
        return;
    }
    l->head.cb->on_event(l->head.cb_arg, &(struct qb_source_event){.msg = msg});
    json_decref(msg);
}

/* ---- queries -------------------------------------------------------------- */

static void op_query_work(void *arg)
{
    struct lv_op *op = arg;

    switch (op->q) {
    case QB_SOURCE_QUERY_STATUS:
        op->status = qb_lv_query_status(op->dom, &op->answer);
        break;
    case QB_SOURCE_QUERY_BLOCK:
        op->status = qb_lv_query_block(op->dom, op->map->d, &op->answer);
        break;
    case QB_SOURCE_QUERY_BLOCK_JOBS:
        op->status = qb_lv_query_block_jobs(op->dom, op->map->d, &op->answer);
        break;
    case QB_SOURCE_QUERY_NAME:
        op->answer = json_pack("{s:s}", "name", op->l->name);
        op->status = op->answer ? QB_OK : QB_ENOMEM;
        break;
    case QB_SOURCE_QUERY_UUID:
        op->answer = json_pack("{s:s}", "UUID", op->l->uuid);
        op->status = op->answer ? QB_OK : QB_ENOMEM;
        break;
    default: /* COLO: libvirt has no stable API for it; the snapshot reads that as "no COLO" */
        op->answer = json_pack("{s:s, s:s}", "class", "CommandNotFound", "desc",
                               "COLO status is not available through libvirt");
        op->status = op->answer ? QB_EQMP : QB_ENOMEM;
        break;
    }
}

static void op_query_done(void *arg, bool cancelled)
{
    struct lv_op *op = arg;
    struct qb_lv_link *l = op->l;

    l->jobs--;
    if (!op->answered) {
        pending_del(l, op);
        if (cancelled)
            op->cb(op->cb_arg, QB_ECLOSED, NULL);
        else
            op->cb(op->cb_arg, op->status, op->answer);
    }
    op_free(op);
    link_maybe_free(l);
}

/*
 * A query or command op of l's session that is up, holding its own references
 * to the domain and the disk map. Returns QB_OK with *out (the caller's:
 * op_submit or op_free), QB_ECLOSED or QB_ENOMEM.
 */
static int op_for_session(struct qb_lv_link *l, enum lv_op_kind kind, struct lv_op **out)
{
    struct lv_op *op;

    *out = NULL;
    if (l->session != QB_SOURCE_READY || l->close_due)
        return QB_ECLOSED;
    if (!(op = calloc(1, sizeof(*op))))
        return QB_ENOMEM;
    op->kind = kind;
    op->l = l;
    op->session_id = l->session_id;
    op->dom = l->dom;
    virDomainRef(l->dom);
    op->map = map_ref(l->map);
    *out = op;
    return QB_OK;
}

int qb_lv_link_query(struct qb_source_link *link, enum qb_source_query q, qb_source_answer_cb cb,
                     void *arg)
{
    struct qb_lv_link *l = LINK(link);
    struct lv_op *op;
    int rc = op_for_session(l, LV_OP_QUERY, &op);

    if (rc < 0)
        return rc;
    op->q = q;
    op->cb = cb;
    op->cb_arg = arg;
    rc = op_submit(l, op, op_query_work, op_query_done);
    if (rc < 0)
        op_free(op);
    return rc;
}

/* ---- commands ------------------------------------------------------------- */

static void op_command_work(void *arg)
{
    struct lv_op *op = arg;

    op->result = qb_lv_command_run(op->dom, op->map->d, &op->args, &op->progress);
}

/* Logs a command's outcome on the loop, as the QMP source's executor does. */
static void command_log(const struct qb_lv_link *l, const struct lv_op *op, const json_t *res)
{
    const char *id = op->args.id ? op->args.id : "-";
    const char *name = qb_cmd_name_str(op->args.name);
    const char *status = json_string_value(json_object_get(res, "status"));
    const json_t *err = json_object_get(res, "error");

    if (!res)
        QB_LOG_ERR(l->name, "command %s: out of memory building its result", id);
    else if (!err)
        QB_LOG_INFO(l->name, "command %s (%s): ok", id, name ? name : "?");
    else
        QB_LOG_WARN(l->name, "command %s (%s): %s: %s: %s", id, name ? name : "?",
                    status ? status : "?", json_string_value(json_object_get(err, "class")),
                    json_string_value(json_object_get(err, "message")));
}

static void op_command_done(void *arg, bool cancelled)
{
    struct lv_op *op = arg;
    struct qb_lv_link *l = op->l;

    l->jobs--;
    if (!op->answered) {
        json_t *res = op->result;

        pending_del(l, op);
        op->result = NULL;
        if (cancelled)
            res = qb_lv_command_result_early(
                &op->args, atomic_load(&op->progress) & QB_LV_CMD_CHANGED, QB_CMD_ERR_DISCONNECTED,
                "the bridge stopped before the command ran");
        command_log(l, op, res);
        op->done(op->done_arg, res);
    }
    op_free(op);
    link_maybe_free(l);
}

int qb_lv_link_command(struct qb_source_link *link, const struct qb_command *cmd,
                       qb_source_result_cb done, void *arg)
{
    struct qb_lv_link *l = LINK(link);
    struct lv_op *op;
    int rc = op_for_session(l, LV_OP_COMMAND, &op);

    if (rc < 0)
        return rc;
    op->done = done;
    op->done_arg = arg;
    atomic_init(&op->progress, 0);
    if (qb_lv_command_args_init(&op->args, cmd, &l->sh->cfg->commands) < 0) {
        op_free(op);
        return QB_ENOMEM;
    }
    rc = op_submit(l, op, op_command_work, op_command_done);
    if (rc < 0)
        op_free(op);
    return rc;
}

/* ---- the rest of the link's ops ------------------------------------------- */

void qb_lv_link_start(struct qb_source_link *link)
{
    (void)link; /* sessions begin when the source finds the domain running */
}

void qb_lv_link_release(struct qb_source_link *link, const char *why)
{
    struct qb_lv_link *l = LINK(link);

    if (l->released)
        return;
    l->released = true;
    l->release_due = true;
    if (l->reopen)
        uv_timer_stop(l->reopen);
    snprintf(l->why, sizeof(l->why), "%s", why ? why : "released");
    l->sh->forget(l->sh->arg, l); /* a domain of that name may come again as a new link */
    link_due(l);
}

void qb_lv_link_disconnect(struct qb_source_link *link, const char *why)
{
    struct qb_lv_link *l = LINK(link);

    if (l->released || l->session != QB_SOURCE_READY)
        return;
    snprintf(l->why, sizeof(l->why), "%s", why ? why : "closed by the bridge");
    l->close_due = true;
    link_due(l);
}

void qb_lv_link_settled(struct qb_source_link *link)
{
    (void)link; /* no connect slots: libvirt's one connection serves every domain */
}

void qb_lv_link_pause(struct qb_source_link *link, bool paused)
{
    struct qb_lv_link *l = LINK(link);

    l->paused = paused;
    if (!paused)
        link_drain(l);
}

static void link_reopen_cb(uv_timer_t *t)
{
    struct qb_lv_link *l = t->data;

    if (l->dom && !l->released)
        qb_lv_link_begin(l, l->dom);
}

/*
 * A session the manager closed (it held too much) counts as failed: the next
 * one opens after the back-off, not at once, so a domain that floods faster
 * than the bus takes its events is not resynced (the XML, six queries, three
 * envelopes) in a tight loop.
 */
static void link_reopen_later(struct qb_lv_link *l)
{
    uint64_t delay;

    if (!l->reopen) {
        uv_timer_t *t = malloc(sizeof(*t));

        if (!t) {
            QB_LOG_ERR(l->name, "libvirt: out of memory: the new session opens at once");
            qb_lv_link_begin(l, l->dom);
            return;
        }
        uv_timer_init(l->sh->loop, t); /* cannot fail */
        t->data = l;
        l->reopen = t;
    }
    /* source_qmp.c's back-off: many VMs closed at once (a stalled transport) spread out */
    delay = qb_backoff_ms(l->sh->cfg->qmp_reconnect_initial_ms, l->sh->cfg->qmp_reconnect_max_ms,
                          l->closed_streak, &l->rng);
    if (l->closed_streak < 32)
        l->closed_streak++;
    QB_LOG_DEBUG(l->name,
                 "libvirt: a new session in %llu ms (closed by the bridge %u times in a row)",
                 (unsigned long long)delay, l->closed_streak);
    uv_timer_start(l->reopen, link_reopen_cb, delay, 0);
}

void qb_lv_shared_run_due(struct qb_lv_shared *sh)
{
    struct qb_lv_link *list = sh->due;

    sh->due = NULL;
    while (list) {
        struct qb_lv_link *l = list;

        list = l->due_next;
        l->due_next = NULL;
        l->on_due = false;
        if (l->release_due) {
            l->release_due = false;
            l->close_due = false;
            qb_lv_link_end(l, QB_ECLOSED, l->why);
            l->release_notified = true;
            if (l->head.cb)
                l->head.cb->on_released(l->head.cb_arg);
        } else if (l->close_due) {
            /* the manager closed this session: a new one resyncs from a fresh snapshot */
            l->close_due = false;
            l->asked_close = true;
            qb_lv_link_end(l, QB_ECLOSED, l->why);
            l->asked_close = false; /* also when the session had ended by itself meanwhile */
            if (l->dom && !l->released)
                link_reopen_later(l);
        }
        link_maybe_free(l);
    }
}

enum qb_source_session qb_lv_link_session(const struct qb_source_link *link)
{
    return CLINK(link)->session;
}

const char *qb_lv_link_session_name(const struct qb_source_link *link)
{
    /* the QMP source's names for the same stages, so /metrics has one set of labels */
    switch (CLINK(link)->session) {
    case QB_SOURCE_OPENING:
        return "connecting";
    case QB_SOURCE_READY:
        return "ready";
    case QB_SOURCE_CLOSING:
        return "closing";
    default:
        return "idle";
    }
}

const char *qb_lv_link_address(const struct qb_source_link *link)
{
    return CLINK(link)->address;
}

const json_t *qb_lv_link_greeting(const struct qb_source_link *link)
{
    return CLINK(link)->greeting;
}

const char *qb_lv_link_version(const struct qb_source_link *link)
{
    const struct qb_lv_link *l = CLINK(link);

    return l->greeting ? l->version : "";
}
