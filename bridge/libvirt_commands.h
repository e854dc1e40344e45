/*
 * libvirt_commands.h - run one validated command on a libvirt domain through
 * libvirt's stable APIs, one step per call.
 *
 * The plans mirror command_exec.c's, with libvirt's calls as the steps:
 *   resize-and-cont: virDomainGetState (paused on an I/O error unless force),
 *                    virDomainGetBlockInfo (the disk's current capacity; size
 *                    rules of command_limits.h), virDomainBlockResize (bytes),
 *                    virDomainResume, virDomainGetState (final run state)
 *   cont / stop:     virDomainResume / virDomainSuspend, then virDomainGetState
 *   set-write-threshold: virDomainSetBlockThreshold ("vda", or "vda[N]" for
 *                    an image below the top of the chain)
 *   block-job-cancel / -complete: virDomainBlockJobAbort (PIVOT for complete)
 *   block-job-pause / -resume, colo-lost-heartbeat: rejected, class
 *                    "unsupported" (libvirt has no API for them; the only way
 *                    would be virDomainQemuMonitorCommand, which taints).
 * Disks are named by target ("vda"); a QEMU node name of libvirt
 * ("libvirt-1-format") or a libvirt job id is mapped to its disk. The result
 * has command_exec.h's shape and status rule (rejected before the first step
 * that changes the domain, failed after); a failed call's error is
 * {"class": "libvirt-...", "desc"} in its step, the command's class "libvirt",
 * or "disconnected" when the connection to libvirtd went.
 *
 * Runs on the libvirt worker thread: blocking, no logging, no bridge state.
 */
#ifndef QB_LIBVIRT_COMMANDS_H
#define QB_LIBVIRT_COMMANDS_H

#include "command.h"
#include "libvirt_disks.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* What a command run needs, copied from the command and policy so the loop may drop them. */
struct qb_lv_command_args {
    char *id; /* NULL: the command had none */
    enum qb_cmd_name name;
    char *device, *node_name, *job;
    uint64_t size, grow_by, threshold;
    bool has_size, has_grow_by, force;
    struct qb_command_policy limits; /* max_size and max_growth only; no pointer is kept */
};

/* Copies what a run needs from cmd and policy (borrowed) into *out. QB_OK or QB_ENOMEM. */
int qb_lv_command_args_init(struct qb_lv_command_args *out, const struct qb_command *cmd,
                            const struct qb_command_policy *policy);

void qb_lv_command_args_clear(struct qb_lv_command_args *a);

/*
 * A command's progress (the bits of an atomic_uint), shared by the worker
 * thread that runs it and the loop, which may answer it before it ends.
 */
enum {
    QB_LV_CMD_CHANGED = 1u,   /* a step that may change the domain has been sent */
    QB_LV_CMD_ABANDONED = 2u, /* answered early: no step that changes the domain starts */
};

/*
 * Runs the command's plan on dom with its disk map (both borrowed).
 * QB_LV_CMD_CHANGED is set in *progress before each call that changes the
 * domain, unless QB_LV_CMD_ABANDONED is there first: then the plan stops
 * without sending it. Returns the result object (new reference), NULL only
 * when out of memory.
 */
json_t *qb_lv_command_run(virDomainPtr dom, const struct qb_lv_disks *disks,
                          const struct qb_lv_command_args *a, atomic_uint *progress);

/*
 * The loop answers the command now (its session ended): from here on the
 * worker starts no step that changes the domain. Returns whether one had
 * already been sent, which decides the early result's status (failed or
 * rejected).
 */
bool qb_lv_command_abandon(atomic_uint *progress);

/*
 * A result for a command that did not run to its end on the loop's side (the
 * session closed, the worker could not take it): status by *changed, class
 * cls, message msg. New reference, NULL only when out of memory.
 */
json_t *qb_lv_command_result_early(const struct qb_lv_command_args *a, bool changed,
                                   const char *cls, const char *msg);

#endif
