/*
 * libvirt_queries.h - the snapshot's answers for a libvirt domain, QMP-shaped,
 * from libvirt's stable APIs only.
 *
 * The VM manager reads a snapshot as QEMU's query-status, query-block and
 * query-block-jobs answers (source.h). For a domain run by libvirt the same
 * answers are built from virDomainGetState (its reason gives QEMU's run state),
 * virDomainGetDiskErrors (no-space -> io-status "nospace"),
 * virDomainGetBlockInfo (capacity -> virtual-size) and virDomainGetBlockJobInfo,
 * with disks named by their targets. virDomainQemuMonitorCommand is never
 * used: it would taint the domain.
 *
 * Every function here makes blocking libvirt calls: they run on the libvirt
 * worker thread, never on the loop, and neither log nor touch bridge state.
 */
#ifndef QB_LIBVIRT_QUERIES_H
#define QB_LIBVIRT_QUERIES_H

#include "libvirt_disks.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>

/*
 * QEMU's run state for libvirt's state and reason (VIR_DOMAIN_PAUSED with
 * VIR_DOMAIN_PAUSED_IOERROR -> "io-error"), static text; *running as QEMU's
 * query-status says it.
 */
const char *qb_lv_run_state(int state, int reason, bool *running);

/*
 * What a failed libvirt call left (virGetLastError) as a QMP-shaped error
 * object {"class": "libvirt-<code name>", "desc": message}; a new reference,
 * NULL only when out of memory. *lost is set when the error says the
 * connection to libvirtd is gone (the session then ends, not the query).
 */
json_t *qb_lv_last_error(bool *lost);

/*
 * The answers. Each returns QB_OK with *answer (a new reference, QMP's "return"
 * value), QB_EQMP with *answer a QMP-shaped error object, or QB_ECLOSED (the
 * connection is gone; *answer NULL) or QB_ENOMEM. disks: the domain's map
 * (borrowed), read for the targets.
 */
int qb_lv_query_status(virDomainPtr dom, json_t **answer);
int qb_lv_query_block(virDomainPtr dom, const struct qb_lv_disks *disks, json_t **answer);
int qb_lv_query_block_jobs(virDomainPtr dom, const struct qb_lv_disks *disks, json_t **answer);

/* The domain's live XML, for libvirt_disks (the caller frees it), or NULL with *lost set as above.
 */
char *qb_lv_domain_xml(virDomainPtr dom, bool *lost);

#endif
