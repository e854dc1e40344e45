/*
 * source_qmp.h - the QMP source: VMs reached over QMP sockets.
 *
 * Configured and discovered VMs: the bridge connects to their unix:/tcp:
 * socket, reconnects with exponential back-off (equal jitter) between
 * qmp.reconnect_initial and reconnect_max, reset after a session that stayed
 * up 10 s, and at most qmp.max_connecting VMs connect and take their snapshot
 * at once (the others wait in order). Listen mode: QEMUs that connect to
 * qmp.listen are named (source_listen.c) and attached to a listen VM of that
 * name, which never reconnects and is given up (on_gone) after
 * qmp.listen_forget_after without a session. Queries are the QMP commands of
 * the same name; commands run through command_exec.c.
 */
#ifndef QB_SOURCE_QMP_H
#define QB_SOURCE_QMP_H

#include "source.h"

extern const struct qb_source_ops qb_source_qmp_ops;

#endif
