/*
 * vm_snapshot.c - the connect-time snapshot: what state a VM is in when a session starts.
 *
 * On every session (and after a command that may have changed the VM) the
 * snapshot queries run (the source answers them, QMP-shaped); their replies become one
 * qmp.vm.state, published before any event of the session, so a late consumer or a VM that was
 * already paused is never left guessing. query-name and query-uuid also tell
 * whether the socket is now served by another QEMU, and bridge.vm.connected
 * is published when query-uuid answers, with the UUID. Kept in its own file:
 * it is the one place that turns query replies into a full state.
 */
#include "vm_snapshot.h"

#include "vm_pipeline.h"
#include "vm_publish.h"

#include "error.h"
#include "log.h"
#include "normalize.h"
#include "source.h"
#include "vm_state.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One snapshot query in flight: which VM, which slot of the reply table. */
struct qb_vm_query_ctx {
    struct qb_vm *vm;
    enum qb_source_query which;
};

/*
 * The socket a VM entry points at may now be served by another QEMU (a
 * restarted VM, or a path reused for a different guest). Its name (-name) and
 * UUID tell: when they differ from the previous session's, the change is
 * published before the fresh snapshot, so a consumer never takes the new
 * QEMU's state for a continuation of the old one.
 */
static void vm_check_identity(struct qb_vm *vm, const json_t *name_reply, const json_t *uuid_reply)
{
    const char *name = json_string_value(json_object_get(name_reply, "name"));
    const char *uuid = json_string_value(json_object_get(uuid_reply, "UUID"));
    char *identity = NULL;

    if (!name_reply && !uuid_reply)
        return; /* QEMU did not say: nothing to compare */
    if (asprintf(&identity, "%s/%s", name ? name : "", uuid ? uuid : "") < 0)
        return;
    if (vm->snap.identity && strcmp(vm->snap.identity, identity) != 0) {
        const char *slash = strrchr(vm->snap.identity, '/');
        char *old_name = strndup(vm->snap.identity, (size_t)(slash - vm->snap.identity));
        const char *address = vm->link ? vm->link->ops->address(vm->link) : "";
        json_t *data = json_pack("{s:{s:s, s:s}, s:{s:s, s:s}, s:s}", "previous", "name",
                                 old_name ? old_name : "", "uuid", slash + 1, "current", "name",
                                 name ? name : "", "uuid", uuid ? uuid : "", "address", address);

        QB_LOG_WARN(vm->name,
                    "%s is now served by another QEMU (name '%s', uuid %s; was '%s', uuid %s): "
                    "publishing bridge.vm.identity_changed and a fresh state",
                    address, name ? name : "", uuid ? uuid : "", old_name ? old_name : "",
                    slash + 1);
        if (data) {
            qb_vm_publish_bridge_event(vm, "bridge.vm.identity_changed", data);
            json_decref(data);
        }
        free(old_name);
    }
    free(vm->snap.identity);
    vm->snap.identity = identity;
}

/*
 * bridge.vm.connected waits for the answer to query-uuid (sent with the other
 * snapshot queries, in one round trip) so it can carry the UUID. The VM is
 * blocked (resyncing) meanwhile, so the order stays connected, snapshot, then
 * the session's events; a session that closes first still gets its connected
 * (uuid null) before its disconnected.
 */
void qb_vm_publish_connected(struct qb_vm *vm, const json_t *uuid_reply)
{
    json_t *data = vm->snap.connected_data;
    char uuid[QB_VM_UUID_SIZE];
    const char *raw = json_string_value(json_object_get(uuid_reply, "UUID"));

    if (!data)
        return;
    vm->snap.connected_data = NULL;
    if (qb_vm_uuid_from_reply(uuid_reply, uuid))
        json_object_set_new(data, "uuid", json_string(uuid));
    else if (raw && strspn(raw, "0-") != strlen(raw))
        QB_LOG_WARN(vm->name, "query-uuid answered '%.64s', not a UUID: published as null", raw);
    qb_vm_publish_bridge_event(vm, "bridge.vm.connected", data);
    json_decref(data);
}

static void vm_finish_resync(struct qb_vm *vm)
{
    json_t **r = vm->snap.replies;

    qb_vm_publish_connected(vm,
                            r[QB_SOURCE_QUERY_UUID]); /* due only when query-uuid was not sent */
    if (qb_vm_is_ready(vm)) {
        json_t *snap = qb_vm_state_from_queries(
            vm->link->ops->greeting(vm->link), r[QB_SOURCE_QUERY_STATUS], r[QB_SOURCE_QUERY_BLOCK],
            r[QB_SOURCE_QUERY_BLOCK_JOBS], r[QB_SOURCE_QUERY_COLO_STATUS], r[QB_SOURCE_QUERY_UUID]);

        vm_check_identity(vm, r[QB_SOURCE_QUERY_NAME], r[QB_SOURCE_QUERY_UUID]);
        if (snap) {
            struct qb_vm_state *held = qb_vm_state_new(snap);

            qb_vm_pipe_reset(vm, snap);
            json_decref(snap);
            if (held) {
                qb_vm_publish_snapshot(vm, held);
                QB_LOG_INFO(vm->name, "state resynced: %s", qb_vm_state_run_state(held));
            } else {
                QB_LOG_ERR(vm->name, "out of memory holding the state snapshot");
            }
        } else {
            QB_LOG_ERR(vm->name, "out of memory building the state snapshot");
        }
    }
    for (int i = 0; i < QB_SOURCE_QUERY_COUNT; i++) {
        json_decref(r[i]);
        r[i] = NULL;
    }
    vm->snap.resyncing = false;
    qb_vm_pipe_hold(vm, false);
    if (vm->link)
        vm->link->ops->settled(vm->link); /* a source bounding its connects lets the next go */
    vm->mgr->hooks->resynced(vm, qb_vm_is_ready(vm));
    qb_vm_drain(vm);
    vm->mgr->hooks->settle(vm);
}

static void vm_resync_reply(void *arg, int status, const json_t *reply)
{
    struct qb_vm_query_ctx *q = arg;
    struct qb_vm *vm = q->vm;

    vm->snap.inflight--;
    if (status == QB_OK) {
        vm->snap.replies[q->which] = json_incref((json_t *)reply);
    } else if (status != QB_ECLOSED &&
               !((q->which == QB_SOURCE_QUERY_COLO_STATUS || q->which == QB_SOURCE_QUERY_NAME ||
                  q->which == QB_SOURCE_QUERY_UUID) &&
                 status == QB_EQMP)) {
        /* query-colo-status fails on builds without COLO: that just means "no COLO". */
        QB_LOG_WARN(vm->name, "%s failed during resync: %s",
                    qb_source_query_name((enum qb_source_query)q->which), qb_strerror(status));
    }
    if (q->which == QB_SOURCE_QUERY_UUID)
        qb_vm_publish_connected(vm, vm->snap.replies[QB_SOURCE_QUERY_UUID]);
    free(q);
    if (--vm->snap.left == 0)
        vm_finish_resync(vm);
    vm->mgr->hooks->maybe_free(vm);
}

void qb_vm_start_resync(struct qb_vm *vm)
{
    vm->snap.resyncing = true;
    qb_vm_pipe_hold(vm, true);
    vm->snap.left = QB_SOURCE_QUERY_COUNT;
    for (int i = 0; i < QB_SOURCE_QUERY_COUNT; i++) {
        struct qb_vm_query_ctx *q = malloc(sizeof(*q));
        int rc = QB_ENOMEM;

        if (q) {
            q->vm = vm;
            q->which = (enum qb_source_query)i;
            vm->snap.inflight++;
            rc = vm->link
                     ? vm->link->ops->query(vm->link, (enum qb_source_query)i, vm_resync_reply, q)
                     : QB_ECLOSED;
            if (rc < 0) {
                vm->snap.inflight--;
                free(q);
            }
        }
        if (rc < 0) {
            QB_LOG_WARN(vm->name, "%s not sent: %s", qb_source_query_name((enum qb_source_query)i),
                        qb_strerror(rc));
            if (--vm->snap.left == 0)
                vm_finish_resync(vm);
        }
    }
}

void qb_vm_snapshot_begin(struct qb_vm *vm)
{
    const struct qb_source_ops *ops = vm->link->ops;
    const json_t *greeting = ops->greeting(vm->link);
    json_t *caps = json_object_get(greeting, "capabilities");
    const char *package =
        json_string_value(json_object_get(json_object_get(greeting, "version"), "package"));

    /* published when query-uuid answers (qb_vm_publish_connected), with the UUID */
    json_decref(vm->snap.connected_data);
    vm->snap.connected_data =
        json_pack("{s:{s:s, s:s}, s:o, s:s, s:n}", "qemu", "version", ops->version(vm->link),
                  "package", package ? package : "", "capabilities",
                  json_is_array(caps) ? json_incref(caps) : json_array(), "address",
                  ops->address(vm->link), "uuid");
    qb_vm_start_resync(vm);
}

void qb_vm_snap_free(struct qb_vm *vm)
{
    for (int i = 0; i < QB_SOURCE_QUERY_COUNT; i++) {
        json_decref(vm->snap.replies[i]);
        vm->snap.replies[i] = NULL;
    }
    json_decref(vm->snap.connected_data);
    vm->snap.connected_data = NULL;
    free(vm->snap.identity);
    vm->snap.identity = NULL;
}
