/*
 * command_exec.h - run one validated command as a plan of QMP steps.
 *
 * Each command is a short, fixed plan (command_exec.c's table):
 *   resize-and-cont: query-status (must be paused with io-error unless force),
 *                    query-block (find the disk by device or node_name, its
 *                    current size), check no shrink and the policy limits,
 *                    block_resize, cont, query-status (final run state)
 *   cont / stop:     cont / stop, then query-status
 *   block-job-*:     block-job-resume|pause|cancel|complete {device: job}
 *   set-write-threshold: block-set-write-threshold {node-name, write-threshold}
 *   colo-lost-heartbeat: x-colo-lost-heartbeat
 * (query-state needs no QMP step here: the VM manager re-runs its snapshot.)
 * The result says what happened step by step:
 *   {"command_id","command","status":"ok"|"failed"|"rejected",
 *    "error":{"class","message"} (not for ok),
 *    "steps":[{"execute":"block_resize","arguments":{...},"status":"ok"|"failed",
 *              "error":{"class","desc"} (QEMU's, when failed)}, ...],
 *    "run_state":"running" (from the last query-status, when known)}
 * A precondition or limit that fails before anything changed gives "rejected";
 * a QMP step that fails after the first state-changing step gives "failed".
 */
#ifndef QB_COMMAND_EXEC_H
#define QB_COMMAND_EXEC_H

#include "command.h"
#include "qmp_client.h"

#include <jansson.h>
#include <uv.h>

struct qb_command_exec;

/* Called exactly once per started execution; result is a new reference the callee owns. */
typedef void (*qb_command_done_cb)(void *arg, json_t *result);

/*
 * Starts running cmd (borrowed; must outlive the execution) on session c
 * (READY) with policy limits (borrowed). Each QMP step has step_timeout_ms.
 * Returns QB_OK (done follows, never from inside this call) or QB_ENOMEM.
 * The execution frees itself after calling done.
 */
int qb_command_exec_start(uv_loop_t *loop, struct qb_qmp_client *c, const struct qb_command *cmd,
                          const struct qb_command_policy *policy, uint32_t step_timeout_ms,
                          qb_command_done_cb done, void *arg);

#endif
