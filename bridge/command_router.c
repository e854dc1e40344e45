/*
 * command_router.c - inbound command messages to their VM (see command_router.h).
 *
 * The order of the checks is the order of trust: what can be decided from the
 * message alone (parse, policy, signature) first, then whether this bridge is
 * the one meant, then whether it already ran, and only then the VM. A message
 * rejected here costs no QMP traffic at all.
 */
#include "command_router.h"

#include "command.h"
#include "command_cache.h"
#include "error.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * A duplicate that arrived while its original was still running: it is
 * answered with the original's result, and only then acknowledged, so Kafka
 * never commits past a command that has no result yet.
 */
struct router_waiter {
    struct router_waiter *next;
    char *id;
    char *vm;
    struct qb_transport *transport;
    uint64_t ack_token;
    char *reply_topic;
    void *correlation;
    size_t correlation_len;
};

struct qb_command_router {
    const struct qb_config *cfg;
    struct qb_vm_manager *mgr;
    struct qb_command_cache *cache;
    struct router_waiter *waiters;
    bool stopped;
};

static void router_waiter_free(struct router_waiter *w)
{
    free(w->id);
    free(w->vm);
    free(w->reply_topic);
    free(w->correlation);
    free(w);
}

/*
 * Parks a duplicate of the running command id (everything copied). Returns
 * QB_OK or QB_ENOMEM (the caller then acknowledges it at once, as before).
 */
static int router_wait(struct qb_command_router *r, const char *id, const char *vm,
                       const struct qb_command_origin *origin)
{
    struct router_waiter *w = calloc(1, sizeof(*w));

    if (!w)
        return QB_ENOMEM;
    w->id = strdup(id);
    w->vm = vm ? strdup(vm) : NULL;
    w->reply_topic = origin->reply_topic ? strdup(origin->reply_topic) : NULL;
    w->correlation = origin->correlation_len ? malloc(origin->correlation_len) : NULL;
    if (!w->id || (vm && !w->vm) || (origin->reply_topic && !w->reply_topic) ||
        (origin->correlation_len && !w->correlation)) {
        router_waiter_free(w);
        return QB_ENOMEM;
    }
    if (origin->correlation_len)
        memcpy(w->correlation, origin->correlation, origin->correlation_len);
    w->correlation_len = origin->correlation_len;
    w->transport = origin->transport;
    w->ack_token = origin->ack_token;
    w->next = r->waiters;
    r->waiters = w;
    return QB_OK;
}

/* Answers (and acknowledges) every duplicate parked for id with result. */
static void router_release_waiters(struct qb_command_router *r, const char *id,
                                   const json_t *result)
{
    struct router_waiter **pp = &r->waiters;

    while (*pp) {
        struct router_waiter *w = *pp;
        if (strcmp(w->id, id) != 0) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        struct qb_command_origin origin = {
            .transport = w->transport,
            .ack_token = w->ack_token,
            .reply_topic = w->reply_topic,
            .correlation = w->correlation,
            .correlation_len = w->correlation_len,
        };
        QB_LOG_INFO(w->vm, "command %s finished: answering its duplicate with the same result",
                    id);
        qb_vm_manager_publish_result(r->mgr, w->vm, result, &origin);
        router_waiter_free(w);
    }
}

void qb_command_router_stop(struct qb_command_router *r)
{
    if (r)
        r->stopped = true;
}

int qb_command_router_new(const struct qb_config *cfg, struct qb_vm_manager *mgr,
                          struct qb_command_router **out)
{
    struct qb_command_router *r = calloc(1, sizeof(*r));

    *out = NULL;
    if (!r)
        return QB_ENOMEM;
    r->cfg = cfg;
    r->mgr = mgr;
    r->cache = qb_command_cache_new(cfg->commands_cache_size);
    if (!r->cache) {
        free(r);
        return QB_ENOMEM;
    }
    *out = r;
    return QB_OK;
}

void qb_command_router_free(struct qb_command_router *r)
{
    if (!r)
        return;
    /* Shutting down: parked duplicates stay unacknowledged, so Kafka hands them out again. */
    while (r->waiters) {
        struct router_waiter *w = r->waiters;
        r->waiters = w->next;
        router_waiter_free(w);
    }
    qb_command_cache_free(r->cache);
    free(r);
}

/*
 * A queued command is over: remember its first result for duplicates. A
 * rejection changed nothing (the VM was gone, the precondition failed), so a
 * retry with the same id deserves a fresh look instead of the old answer.
 */
static void router_done(void *arg, const struct qb_command *cmd, const json_t *result)
{
    struct qb_command_router *r = arg;
    const char *status = json_string_value(json_object_get(result, "status"));

    if (!cmd->id)
        return;
    if (status && strcmp(status, "rejected") == 0)
        qb_command_cache_forget(r->cache, cmd->id);
    else
        qb_command_cache_finish(r->cache, cmd->id, (json_t *)result);
    if (!r->stopped)
        router_release_waiters(r, cmd->id, result);
}

/* Answers cmd (may be NULL) with a rejection, on vm's stream and as a reply. */
static void router_reject(struct qb_command_router *r, const char *vm,
                          const struct qb_command *cmd, const struct qb_command_error *err,
                          const struct qb_command_origin *origin)
{
    json_t *result = qb_command_result_rejected(cmd, err);

    QB_LOG_WARN(vm, "command %s rejected (%s): %s",
                cmd && cmd->id ? cmd->id : "(no id)", err->cls, err->message);
    if (result)
        qb_vm_manager_publish_result(r->mgr, vm, result, origin);
    else if (origin->transport)
        qb_transport_ack(origin->transport, origin->ack_token);
    json_decref(result);
}

void qb_command_router_inbound(void *arg, struct qb_transport *t, const struct qb_inbound *in,
                               uint64_t ack_token)
{
    struct qb_command_router *r = arg;
    struct qb_command_origin origin = {
        .transport = t,
        .ack_token = ack_token,
        .reply_topic = in->reply_topic,
        .correlation = in->correlation,
        .correlation_len = in->correlation_len,
    };
    struct qb_command_error err = {.cls = QB_CMD_ERR_INVALID};
    struct qb_command *cmd = NULL;
    const char *vm;
    json_t *first = NULL;
    int rc;

    if (r->stopped)
        return; /* shutting down: not acknowledged, so Kafka hands it out again */
    rc = qb_command_parse(in->payload, in->len, &r->cfg->commands, (int64_t)time(NULL), &cmd,
                          &err);
    if (rc == QB_ENOMEM || (rc < 0 && !cmd && rc != QB_EINVAL)) {
        QB_LOG_ERR(in->vm_hint, "command from %s dropped: %s", qb_transport_name(t),
                   qb_strerror(rc));
        qb_transport_ack(t, ack_token);
        return;
    }
    vm = cmd && cmd->subject ? cmd->subject : in->vm_hint;

    if (cmd && cmd->bridge && strcmp(cmd->bridge, r->cfg->bridge_id) != 0) {
        QB_LOG_DEBUG(vm, "command %s is for bridge %s: ignored", cmd->id ? cmd->id : "?",
                     cmd->bridge);
        goto ignore;
    }
    if (!qb_transport_has_reply_channel(t) && vm && !qb_vm_manager_has_vm(r->mgr, vm)) {
        /* A shared commands topic: another bridge owns this VM. */
        QB_LOG_DEBUG(vm, "command %s for a VM of another bridge: ignored",
                     cmd && cmd->id ? cmd->id : "?");
        goto ignore;
    }
    if (rc == QB_OK && in->vm_hint && strcmp(in->vm_hint, cmd->subject) != 0) {
        rc = QB_EINVAL;
        err.cls = QB_CMD_ERR_INVALID;
        snprintf(err.message, sizeof(err.message), "subject: '%s' is not the topic's VM '%s'",
                 cmd->subject, in->vm_hint);
    }
    if (rc < 0) {
        router_reject(r, vm, cmd, &err, &origin);
        qb_command_free(cmd);
        return;
    }

    rc = qb_command_cache_lookup(r->cache, cmd->id, &first);
    if (rc == QB_OK) {
        QB_LOG_INFO(vm, "command %s ran before: its first result is published again", cmd->id);
        qb_vm_manager_publish_result(r->mgr, vm, first, &origin);
        qb_command_free(cmd);
        return;
    }
    if (rc == QB_EAGAIN) {
        if (router_wait(r, cmd->id, vm, &origin) == QB_OK) {
            QB_LOG_INFO(vm, "command %s is running already: the duplicate gets its result",
                        cmd->id);
            qb_command_free(cmd);
            return;
        }
        QB_LOG_WARN(vm, "command %s is running already: duplicate dropped (out of memory)",
                    cmd->id);
        goto ignore;
    }

    /* Remember the id before queueing: its result may be reported at once. */
    qb_command_cache_begin(r->cache, cmd->id);
    rc = qb_vm_manager_submit_command(r->mgr, cmd, &origin, router_done, r, &err);
    if (rc < 0) {
        /* Not run: nothing to protect from a retry with the same id. */
        qb_command_cache_forget(r->cache, cmd->id);
        router_reject(r, vm, cmd, &err, &origin);
        qb_command_free(cmd);
    }
    return;

ignore:
    qb_transport_ack(t, ack_token);
    qb_command_free(cmd);
}

/* ---- reload ---- */

void qb_command_router_set_config(struct qb_command_router *r, const struct qb_config *cfg)
{
    if (r)
        r->cfg = cfg;
}

void qb_command_router_forget_transport(struct qb_command_router *r, const struct qb_transport *t)
{
    for (struct router_waiter *w = r ? r->waiters : NULL; w; w = w->next)
        if (w->transport == t)
            w->transport = NULL;
}
