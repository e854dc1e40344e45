/*
 * qmp_sim_lines.h - the QMP lines qmp_sim sends, copied from a real QEMU 7.2.
 *
 * Captured from Debian's qemu-system-x86_64 7.2.22 (package "Debian
 * 1:7.2+dfsg-7+deb12u18+b3") over its -qmp unix socket, with a raw data disk
 * on IDE (werror=stop,rerror=stop). The key order is QEMU's own (it is not
 * alphabetical and differs between objects); every line QEMU writes ends in
 * "\r\n" because the monitor turns "\n" into "\r\n". Values that vary per VM
 * or per moment are printf conversions; the macros are string literals so the
 * compiler checks each use against its format.
 *
 * Only qmp_sim.c includes this; it is a header so the long canned replies do not
 * hide the simulator's logic.
 */
#ifndef QMP_SIM_LINES_H
#define QMP_SIM_LINES_H

#define QSL_EOL "\r\n"

/* Sent by QEMU the moment a client connects. */
#define QSL_GREETING                                                                               \
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": " \
    "\"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}" QSL_EOL

/* query-version's return value (the greeting's "version" member). */
#define QSL_VERSION                                                                                \
    "{\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"Debian "             \
    "1:7.2+dfsg-7+deb12u18+b3\"}"

/* Replies. %s: the return value; then the echoed "id" (serialised JSON). QEMU puts
 * "return" before "id" but "id" before "error". Without an id the member is absent. */
#define QSL_RETURN_ID "{\"return\": %s, \"id\": %s}" QSL_EOL
#define QSL_RETURN "{\"return\": %s}" QSL_EOL
/* %s id, %s class, %s desc (already a JSON string, quotes included). */
#define QSL_ERROR_ID "{\"id\": %s, \"error\": {\"class\": \"%s\", \"desc\": %s}}" QSL_EOL
#define QSL_ERROR "{\"error\": {\"class\": \"%s\", \"desc\": %s}}" QSL_EOL

/* Error descriptions, verbatim. */
#define QSL_DESC_NEED_CAPS "Expecting capabilities negotiation with 'qmp_capabilities'"
#define QSL_DESC_CAPS_DONE "Capabilities negotiation is already complete, command ignored"
#define QSL_DESC_NOT_FOUND "The command %s has not been found"
#define QSL_DESC_NOT_OBJECT "QMP input must be a JSON object"
#define QSL_DESC_UNEXPECTED_MEMBER "QMP input member '%s' is unexpected"
#define QSL_DESC_NO_EXECUTE "Expected 'execute' or 'exec-oob'"
#define QSL_DESC_PARSE "JSON parse error, %s"
#define QSL_DESC_UNEXPECTED_PARAM "Parameter '%s' is unexpected"
#define QSL_DESC_MISSING_PARAM "Parameter '%s' is missing"
#define QSL_DESC_NO_DEVICE "Cannot find device='%s' nor node-name='%s'"
#define QSL_DESC_CONT_SHUTDOWN "Resetting the Virtual Machine is required"

/* query-status. %s status ("running", "paused", "io-error"), %s running (true/false). */
#define QSL_STATUS "{\"status\": \"%s\", \"singlestep\": false, \"running\": %s}"

/* query-block with the one data disk. %s io-status, %s device, %llu virtual-size,
 * %s filename, %s node-name, %s file. */
#define QSL_BLOCK                                                                                  \
    "[{\"io-status\": \"%s\", \"device\": \"%s\", \"locked\": false, \"removable\": false, "       \
    "\"inserted\": {\"iops_rd\": 0, \"detect_zeroes\": \"off\", \"image\": {\"virtual-size\": "    \
    "%llu, \"filename\": \"%s\", \"format\": \"raw\", \"actual-size\": 4190208, \"dirty-flag\": "  \
    "false}, \"iops_wr\": 0, \"ro\": false, \"node-name\": \"%s\", \"backing_file_depth\": 0, "    \
    "\"drv\": \"raw\", \"iops\": 0, \"bps_wr\": 0, \"write_threshold\": 0, \"encrypted\": false, " \
    "\"bps\": 0, \"bps_rd\": 0, \"cache\": {\"no-flush\": false, \"direct\": false, "             \
    "\"writeback\": true}, \"file\": \"%s\"}, \"qdev\": \"/machine/peripheral-anon/device[0]\", "  \
    "\"type\": \"unknown\"}]"

/* query-block-jobs while a backup job onto a full target is running (on-target-error=report). */
#define QSL_BLOCK_JOBS_BACKUP                                                                      \
    "[{\"auto-finalize\": true, \"io-status\": \"nospace\", \"device\": \"backup0\", "             \
    "\"auto-dismiss\": true, \"busy\": false, \"len\": 67108864, \"offset\": 4194304, "           \
    "\"status\": \"running\", \"paused\": false, \"speed\": 0, \"ready\": false, \"type\": "       \
    "\"backup\"}]"

/* query-colo-status: never in COLO, and after a failover (COLO_EXIT reason request). */
#define QSL_COLO_NONE "{\"last-mode\": \"none\", \"mode\": \"none\", \"reason\": \"none\"}"
#define QSL_COLO_AFTER_EXIT "{\"last-mode\": \"primary\", \"mode\": \"none\", \"reason\": \"request\"}"

#define QSL_UUID "{\"UUID\": \"00000000-0000-0000-0000-000000000000\"}"

/* Events. %lld seconds, %ld microseconds of the wall-clock send time. STOP and RESUME carry
 * no data in 7.2. */
#define QSL_EV_HEAD "{\"timestamp\": {\"seconds\": %lld, \"microseconds\": %ld}, \"event\": \"%s\""
#define QSL_EV_TAIL "}" QSL_EOL
#define QSL_EV_DATA_TAIL ", \"data\": %s}" QSL_EOL

/* BLOCK_IO_ERROR data for ENOSPC with werror=stop. %s device, %s node-name. */
#define QSL_IO_ERROR_NOSPACE                                                                       \
    "{\"device\": \"%s\", \"nospace\": true, \"node-name\": \"%s\", \"reason\": \"No space left " \
    "on device\", \"operation\": \"write\", \"action\": \"stop\"}"
/* The same for EIO (blkdebug errno 5): no "nospace" key at all. */
#define QSL_IO_ERROR_EIO                                                                           \
    "{\"device\": \"%s\", \"node-name\": \"%s\", \"reason\": \"Input/output error\", "            \
    "\"operation\": \"write\", \"action\": \"stop\"}"
#define QSL_JOB_ERROR "{\"device\": \"backup0\", \"operation\": \"write\", \"action\": \"report\"}"
#define QSL_COLO_EXIT "{\"mode\": \"primary\", \"reason\": \"request\"}"
#define QSL_RESET "{\"guest\": true, \"reason\": \"guest-reset\"}"

/* Not QMP at all: what the garbage fault sends (the bridge must drop it and carry on). */
#define QSL_GARBAGE "}{ qmp_sim garbage: not a JSON line ]]" QSL_EOL

#endif
