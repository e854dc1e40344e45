/*
 * libvirt_queries.c - QMP-shaped snapshot answers from libvirt's stable APIs
 * (see libvirt_queries.h). Runs on the libvirt worker thread.
 */
#include "libvirt_queries.h"

#include "error.h"
#include "utf8.h"

#include <libvirt/virterror.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *qb_lv_run_state(int state, int reason, bool *running)
{
    *running = false;
    switch (state) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED:
        *running = true;
        return reason == VIR_DOMAIN_RUNNING_POSTCOPY ? "postmigrate" : "running";
    case VIR_DOMAIN_PAUSED:
        switch (reason) {
        case VIR_DOMAIN_PAUSED_IOERROR:
            return "io-error";
        case VIR_DOMAIN_PAUSED_WATCHDOG:
            return "watchdog";
        case VIR_DOMAIN_PAUSED_CRASHED:
            return "guest-panicked";
        case VIR_DOMAIN_PAUSED_SHUTTING_DOWN:
            return "shutdown";
        case VIR_DOMAIN_PAUSED_STARTING_UP:
            return "prelaunch";
        case VIR_DOMAIN_PAUSED_MIGRATION:
            return "finish-migrate";
        case VIR_DOMAIN_PAUSED_POSTCOPY:
        case VIR_DOMAIN_PAUSED_POSTCOPY_FAILED:
            return "postmigrate";
        case VIR_DOMAIN_PAUSED_SAVE:
        case VIR_DOMAIN_PAUSED_SNAPSHOT:
            return "save-vm";
        case VIR_DOMAIN_PAUSED_FROM_SNAPSHOT:
            return "restore-vm";
        default: /* user, dump, unknown */
            return "paused";
        }
    case VIR_DOMAIN_SHUTDOWN:
    case VIR_DOMAIN_SHUTOFF:
        return "shutdown";
    case VIR_DOMAIN_CRASHED:
        return "guest-panicked";
    case VIR_DOMAIN_PMSUSPENDED:
        return "suspended";
    default:
        return "unknown";
    }
}

/* libvirt's error codes a consumer may meet, by a stable name; others are "libvirt-<number>". */
static const struct {
    int code;
    const char *name;
} lv_error_names[] = {
    {VIR_ERR_INTERNAL_ERROR, "libvirt-internal-error"},
    {VIR_ERR_NO_SUPPORT, "libvirt-no-support"},
    {VIR_ERR_NO_CONNECT, "libvirt-no-connect"},
    {VIR_ERR_INVALID_CONN, "libvirt-invalid-conn"},
    {VIR_ERR_INVALID_ARG, "libvirt-invalid-arg"},
    {VIR_ERR_OPERATION_FAILED, "libvirt-operation-failed"},
    {VIR_ERR_SYSTEM_ERROR, "libvirt-system-error"},
    {VIR_ERR_RPC, "libvirt-rpc"},
    {VIR_ERR_NO_DOMAIN, "libvirt-no-domain"},
    {VIR_ERR_OPERATION_INVALID, "libvirt-operation-invalid"},
    {VIR_ERR_OPERATION_TIMEOUT, "libvirt-operation-timeout"},
    {VIR_ERR_OPERATION_UNSUPPORTED, "libvirt-operation-unsupported"},
};

json_t *qb_lv_last_error(bool *lost)
{
    virErrorPtr err = virGetLastError();
    int code = err ? err->code : VIR_ERR_INTERNAL_ERROR;
    const char *msg = err && err->message ? err->message : "libvirt gave no error message";
    char name[40];
    char desc[512];

    *lost = code == VIR_ERR_NO_CONNECT || code == VIR_ERR_INVALID_CONN || code == VIR_ERR_RPC ||
            (code == VIR_ERR_SYSTEM_ERROR && err && err->domain == VIR_FROM_RPC);
    snprintf(name, sizeof(name), "libvirt-%d", code);
    for (size_t i = 0; i < sizeof(lv_error_names) / sizeof(lv_error_names[0]); i++)
        if (lv_error_names[i].code == code)
            snprintf(name, sizeof(name), "%s", lv_error_names[i].name);
    /* libvirtd's message may quote any bytes (file and domain names): UTF-8 for JSON */
    qb_utf8_copy(desc, sizeof(desc), msg);
    return json_pack("{s:s, s:s}", "class", name, "desc", desc);
}

/* The QB_EQMP / QB_ECLOSED outcome of a failed call, with the error object in *answer. */
static int lv_failed(json_t **answer)
{
    bool lost;

    *answer = qb_lv_last_error(&lost);
    if (lost) {
        json_decref(*answer);
        *answer = NULL;
        return QB_ECLOSED;
    }
    return *answer ? QB_EQMP : QB_ENOMEM;
}

int qb_lv_query_status(virDomainPtr dom, json_t **answer)
{
    int state, reason;
    bool running;
    const char *run;

    *answer = NULL;
    if (virDomainGetState(dom, &state, &reason, 0) < 0)
        return lv_failed(answer);
    run = qb_lv_run_state(state, reason, &running);
    *answer = json_pack("{s:b, s:b, s:s}", "running", running, "singlestep", 0, "status", run);
    return *answer ? QB_OK : QB_ENOMEM;
}

/* io-status of each disk, from virDomainGetDiskErrors, into errs (indexed like d->disks). */
static int disk_errors(virDomainPtr dom, const struct qb_lv_disks *d, const char **errs)
{
    virDomainDiskError buf[64];
    int n = virDomainGetDiskErrors(dom, buf, sizeof(buf) / sizeof(buf[0]), 0);

    if (n < 0)
        return n;
    for (int i = 0; i < n; i++) {
        const struct qb_lv_disk *k = qb_lv_disks_by_target(d, buf[i].disk);

        if (k)
            errs[k - d->disks] = buf[i].error == VIR_DOMAIN_DISK_ERROR_NO_SPACE ? "nospace"
                                 : buf[i].error == VIR_DOMAIN_DISK_ERROR_NONE   ? "ok"
                                                                                : "failed";
        free(buf[i].disk);
    }
    return 0;
}

/* One query-block entry for disk k: {device, io-status, inserted: {node-name, file, drv, ro,
 * image}}. */
static json_t *block_entry(virDomainPtr dom, const struct qb_lv_disk *k, const char *io)
{
    json_t *e =
        json_pack("{s:s, s:s, s:b}", "device", k->target, "io-status", io, "removable", k->cdrom);
    virDomainBlockInfo info;
    json_t *ins;
    char node[48];

    if (!e || (k->cdrom && !k->file))
        return e; /* a drive without medium: no "inserted", as QEMU says it */
    ins = json_pack("{s:b}", "ro", k->read_only);
    if (!ins) {
        json_decref(e);
        return NULL;
    }
    if (qb_lv_disk_node_name(k, node, sizeof(node)))
        json_object_set_new(ins, "node-name", json_string(node));
    if (k->file)
        json_object_set_new(ins, "file", json_string(k->file));
    if (k->driver)
        json_object_set_new(ins, "drv", json_string(k->driver));
    /* a disk whose size libvirt cannot tell just has no image size, as QEMU without a medium */
    if (virDomainGetBlockInfo(dom, k->target, &info, 0) == 0 && info.capacity <= INT64_MAX)
        json_object_set_new(
            ins, "image",
            json_pack("{s:I, s:I}", "virtual-size", (json_int_t)info.capacity, "actual-size",
                      (json_int_t)(info.allocation > INT64_MAX ? INT64_MAX : info.allocation)));
    json_object_set_new(e, "inserted", ins);
    return e;
}

int qb_lv_query_block(virDomainPtr dom, const struct qb_lv_disks *d, json_t **answer)
{
    const char **errs;
    json_t *list;

    *answer = NULL;
    errs = calloc(d->n_disks ? d->n_disks : 1, sizeof(*errs));
    list = json_array();
    if (!errs || !list) {
        free(errs);
        json_decref(list);
        return QB_ENOMEM;
    }
    if (disk_errors(dom, d, errs) < 0) {
        free(errs);
        json_decref(list);
        return lv_failed(answer);
    }
    for (size_t i = 0; i < d->n_disks; i++) {
        json_t *e = block_entry(dom, &d->disks[i], errs[i] ? errs[i] : "ok");

        if (!e || json_array_append_new(list, e) < 0) {
            free(errs);
            json_decref(list);
            return QB_ENOMEM;
        }
    }
    free(errs);
    *answer = list;
    return QB_OK;
}

static const char *job_type(int type)
{
    switch (type) {
    case VIR_DOMAIN_BLOCK_JOB_TYPE_PULL:
        return "stream";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COPY:
        return "mirror";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT:
    case VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT:
        return "commit";
    case VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP:
        return "backup";
    default:
        return "unknown";
    }
}

int qb_lv_query_block_jobs(virDomainPtr dom, const struct qb_lv_disks *d, json_t **answer)
{
    json_t *list = json_array();

    *answer = NULL;
    if (!list)
        return QB_ENOMEM;
    for (size_t i = 0; i < d->n_disks; i++) {
        virDomainBlockJobInfo info;
        /* in bytes/s, as QEMU's "speed" (without the flag libvirt says MiB/s) */
        int rc = virDomainGetBlockJobInfo(dom, d->disks[i].target, &info,
                                          VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES);
        json_t *j;
        bool ready;

        if (rc < 0) {
            json_decref(list);
            return lv_failed(answer);
        }
        if (rc == 0)
            continue; /* no job on this disk */
        /* a copy or active commit that caught up waits for its pivot: QEMU calls that "ready" */
        ready = (info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_COPY ||
                 info.type == VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT) &&
                info.end > 0 && info.cur == info.end;
        j = json_pack(
            "{s:s, s:s, s:I, s:I, s:I, s:b, s:b, s:s, s:s}", "device", d->disks[i].target, "type",
            job_type(info.type), "len", (json_int_t)(info.end > INT64_MAX ? INT64_MAX : info.end),
            "offset", (json_int_t)(info.cur > INT64_MAX ? INT64_MAX : info.cur), "speed",
            (json_int_t)(info.bandwidth > INT64_MAX ? INT64_MAX : info.bandwidth), "busy", !ready,
            "ready", ready, "status", ready ? "ready" : "running", "io-status", "ok");
        if (!j || json_array_append_new(list, j) < 0) {
            json_decref(list);
            return QB_ENOMEM;
        }
    }
    *answer = list;
    return QB_OK;
}

char *qb_lv_domain_xml(virDomainPtr dom, bool *lost)
{
    char *xml = virDomainGetXMLDesc(dom, 0);

    *lost = false;
    if (!xml) {
        json_t *err = qb_lv_last_error(lost);

        json_decref(err);
    }
    return xml;
}
