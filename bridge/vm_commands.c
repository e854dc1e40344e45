/*
 * vm_commands.c - inbound commands on their VM: a FIFO per VM, one running at a time.
 *
 * command_router.c checks and plans a command; here it waits its turn on the
 * VM (bounded by commands.queue_per_vm and commands.timeout), runs through
 * the VM's source (for QMP: command_exec.c), and its bridge.command.result is published on the VM's
 * stream and as a reply to the transport it came from. Kept apart from the
 * event path: commands flow the other way (transport -> source) and own their
 * own memory (struct qb_vm_cmd).
 */
#include "vm_commands.h"

#include "vm_publish.h"
#include "vm_snapshot.h"

#include "command.h"
#include "error.h"
#include "log.h"
#include "prom.h"
#include "publish.h"
#include "source.h"
#include "transport.h"
#include "vm_state.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The string member key of obj, or fallback when absent or not a string. */
static const char *json_str_or(const json_t *obj, const char *key, const char *fallback)
{
    const char *v = json_string_value(json_object_get(obj, key));

    return v ? v : fallback;
}

static void vm_cmd_free(struct qb_vm_cmd *c)
{
    qb_command_free(c->cmd);
    free(c->reply_topic);
    free(c->correlation);
    free(c);
}

/* Where a result goes besides the reply (see mgr_publish_result). */
enum result_route {
    ROUTE_STREAM,     /* the VM's event stream too, numbered by the VM, when vm is not NULL */
    ROUTE_REPLY_ONLY, /* the reply alone, numbered by the bridge, neither counted nor logged */
};

/*
 * Publishes a bridge.command.result (borrowed): on vm's stream when vm is not
 * NULL and route is ROUTE_STREAM, as a reply on transport t when t is not
 * NULL, then acks the inbound message. The door numbers an envelope that is
 * on no VM's stream by the bridge, so its id is unique too.
 */
static void mgr_publish_result(struct qb_vm_manager *m, struct qb_vm *vm, const char *vm_name,
                               const json_t *result, struct qb_transport *t, uint64_t ack,
                               const char *reply_topic, const void *corr, size_t corr_len,
                               enum result_route route)
{
    struct qb_publish_reply reply = {t, reply_topic, corr, corr_len};
    struct qb_stream *s = vm && route == ROUTE_STREAM ? vm->out.stream : NULL;

    if (qb_publish_result(m->pub, s, vm ? vm->name : vm_name, result, &reply) == QB_OK &&
        route == ROUTE_STREAM) {
        const char *name = qb_publish_subject(vm ? vm->name : vm_name);

        qb_vm_count(m, QB_VM_COUNT_COMMANDS, json_str_or(result, "command", "?"),
                    json_str_or(result, "status", "?"));
        QB_LOG_INFO(name, "command %s %s: %s", json_str_or(result, "command", "?"),
                    json_str_or(result, "command_id", "?"), json_str_or(result, "status", "?"));
    }
    if (t)
        qb_transport_ack(t, ack);
}

/* The running (or just dequeued) command c is over: publish, report, free. result is stolen. */
static void vm_cmd_complete(struct qb_vm *vm, struct qb_vm_cmd *c, json_t *result)
{
    uint64_t now = qb_publish_now_usec();
    struct qb_log_command_scope scope;

    qb_log_command_begin(&scope, c->cmd->id);

    qb_histogram_observe_usec(&vm->mgr->cmd_latency,
                              now > c->received_usec ? now - c->received_usec : 0);
    mgr_publish_result(vm->mgr, vm, vm->name, result, c->transport, c->ack_token, c->reply_topic,
                       c->correlation, c->correlation_len, ROUTE_STREAM);
    if (c->done)
        c->done(c->done_arg, c->cmd, result);
    qb_log_command_end(&scope);
    json_decref(result);
    vm_cmd_free(c);
}

static void vm_cmd_reject(struct qb_vm *vm, struct qb_vm_cmd *c, const char *cls,
                          const char *message)
{
    struct qb_command_error err = {.cls = cls};

    snprintf(err.message, sizeof(err.message), "%s", message);
    vm_cmd_complete(vm, c, qb_command_result_rejected(c->cmd, &err));
}

/* Rejects every command still waiting (not the running one). */
void qb_vm_cmd_flush(struct qb_vm *vm, const char *cls, const char *message)
{
    while (vm->cmds.head) {
        struct qb_vm_cmd *c = vm->cmds.head;
        vm->cmds.head = c->next;
        if (!vm->cmds.head)
            vm->cmds.tail = NULL;
        vm->cmds.queued--;
        vm_cmd_reject(vm, c, cls, message);
    }
}

static void vm_cmd_run_next(struct qb_vm *vm);

static void vm_cmd_exec_done(void *arg, json_t *result)
{
    struct qb_vm *vm = arg;
    struct qb_vm_cmd *c = vm->cmds.running;

    const char *status = json_string_value(json_object_get(result, "status"));
    bool changed = status && strcmp(status, "rejected") != 0;

    vm->cmds.inflight--;
    vm->cmds.running = NULL;
    vm_cmd_complete(vm, c, result);
    /*
     * QEMU raises no event for some changes a command makes (block_resize), so
     * after anything that may have changed the VM, the state is read again
     * and published: the retained/compacted state never goes stale.
     */
    if (changed && !vm->snap.resyncing && !vm->removing && qb_vm_is_ready(vm))
        qb_vm_start_resync(vm);
    vm_cmd_run_next(vm);
    vm->mgr->hooks->settle(vm);
    vm->mgr->hooks->maybe_free(vm);
}

/* query-state: the snapshot it asked for was published (ok) or the session went away. */
void qb_vm_cmd_finish_state(struct qb_vm *vm, bool ok)
{
    struct qb_vm_cmd *c = vm->cmds.running;
    json_t *result;

    vm->cmds.state_waiting = false;
    vm->cmds.running = NULL;
    if (ok) {
        result = json_pack("{s:s?, s:s, s:s, s:[]}", "command_id", c->cmd->id, "command",
                           "query-state", "status", "ok", "steps");
        if (result && vm->out.state && qb_vm_state_run_state(vm->out.state)[0])
            json_object_set_new(result, "run_state",
                                json_string(qb_vm_state_run_state(vm->out.state)));
    } else {
        result =
            json_pack("{s:s?, s:s, s:s, s:{s:s, s:s}, s:[]}", "command_id", c->cmd->id, "command",
                      "query-state", "status", "failed", "error", "class", QB_CMD_ERR_DISCONNECTED,
                      "message", "the QMP session closed before the state was read", "steps");
    }
    vm_cmd_complete(vm, c, result);
    vm_cmd_run_next(vm);
}

/* Starts the next waiting command when none runs. */
static void vm_cmd_run_next(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    while (!vm->cmds.running && vm->cmds.head) {
        struct qb_vm_cmd *c = vm->cmds.head;
        int rc;

        vm->cmds.head = c->next;
        if (!vm->cmds.head)
            vm->cmds.tail = NULL;
        vm->cmds.queued--;
        c->next = NULL;
        if (uv_now(m->loop) > c->deadline) {
            vm_cmd_reject(vm, c, QB_CMD_ERR_TIMEOUT, "waited longer than commands.timeout");
            continue;
        }
        if (!qb_vm_is_ready(vm)) {
            vm_cmd_reject(vm, c, QB_CMD_ERR_NOT_CONNECTED, "the VM has no QMP session");
            continue;
        }
        vm->cmds.running = c;
        if (c->cmd->name == QB_CMD_QUERY_STATE) {
            vm->cmds.state_waiting = true;
            if (!vm->snap.resyncing)
                qb_vm_start_resync(vm);
            return;
        }
        vm->cmds.inflight++;
        rc = vm->link->ops->command(vm->link, c->cmd, vm_cmd_exec_done, vm);
        if (rc < 0) {
            vm->cmds.inflight--;
            vm->cmds.running = NULL;
            vm_cmd_reject(vm, c, QB_CMD_ERR_QMP, qb_strerror(rc));
        }
    }
}

int qb_vm_cmds_submit(struct qb_vm *vm, struct qb_command *cmd,
                      const struct qb_command_origin *origin, qb_vm_command_done_cb done, void *arg,
                      struct qb_command_error *err)
{
    struct qb_vm_manager *m = vm->mgr;
    struct qb_vm_cmd *c;

    if (!qb_vm_is_ready(vm)) {
        err->cls = QB_CMD_ERR_NOT_CONNECTED;
        snprintf(err->message, sizeof(err->message), "VM '%s' has no QMP session (%s)", vm->name,
                 vm->link ? vm->link->ops->session_name(vm->link) : "idle");
        return QB_ECLOSED;
    }
    if (vm->cmds.queued >= m->cfg->commands_queue_per_vm) {
        err->cls = QB_CMD_ERR_BUSY;
        snprintf(err->message, sizeof(err->message),
                 "VM '%s' already has %zu commands waiting (commands.queue_per_vm)", vm->name,
                 vm->cmds.queued);
        return QB_EAGAIN;
    }
    c = calloc(1, sizeof(*c));
    if (!c || (origin->reply_topic && !(c->reply_topic = strdup(origin->reply_topic))) ||
        (origin->correlation_len && !(c->correlation = malloc(origin->correlation_len)))) {
        if (c)
            free(c->reply_topic);
        free(c);
        err->cls = QB_CMD_ERR_BUSY;
        snprintf(err->message, sizeof(err->message), "out of memory");
        return QB_ENOMEM;
    }
    if (origin->correlation_len)
        memcpy(c->correlation, origin->correlation, origin->correlation_len);
    c->correlation_len = origin->correlation_len;
    c->cmd = cmd;
    c->transport = origin->transport;
    c->ack_token = origin->ack_token;
    c->deadline = uv_now(m->loop) + m->cfg->commands_timeout_ms;
    c->received_usec = qb_publish_now_usec();
    c->done = done;
    c->done_arg = arg;
    if (vm->cmds.tail)
        vm->cmds.tail->next = c;
    else
        vm->cmds.head = c;
    vm->cmds.tail = c;
    vm->cmds.queued++;
    QB_LOG_INFO(vm->name, "command %s %s queued (from %s)", qb_cmd_name_str(cmd->name),
                cmd->id ? cmd->id : "?", cmd->source ? cmd->source : "?");
    vm_cmd_run_next(vm);
    m->hooks->settle(vm);
    return QB_OK;
}

void qb_vm_cmds_publish_result(struct qb_vm_manager *m, struct qb_vm *vm, const char *vm_name,
                               const json_t *result, const struct qb_command_origin *origin,
                               bool reply_only)
{
    mgr_publish_result(m, vm, vm_name, result, origin ? origin->transport : NULL,
                       origin ? origin->ack_token : 0, origin ? origin->reply_topic : NULL,
                       origin ? origin->correlation : NULL, origin ? origin->correlation_len : 0,
                       reply_only ? ROUTE_REPLY_ONLY : ROUTE_STREAM);
}

void qb_vm_cmds_forget_transport(struct qb_vm *vm, const struct qb_transport *t)
{
    if (vm->cmds.running && vm->cmds.running->transport == t)
        vm->cmds.running->transport = NULL;
    for (struct qb_vm_cmd *c = vm->cmds.head; c; c = c->next)
        if (c->transport == t)
            c->transport = NULL;
}

void qb_vm_cmds_free(struct qb_vm *vm)
{
    while (vm->cmds.head) {
        struct qb_vm_cmd *c = vm->cmds.head;

        vm->cmds.head = c->next;
        vm_cmd_free(c);
    }
    vm->cmds.tail = NULL;
    vm->cmds.queued = 0;
}
