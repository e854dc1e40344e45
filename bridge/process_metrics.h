/*
 * process_metrics.h - the standard process_* metrics, read from /proc.
 *
 * The names, types and units are those of the Prometheus client libraries
 * (client_golang's process collector), so the dashboards and alerts written
 * for any exporter work here too:
 *   process_cpu_seconds_total       user + system CPU time, seconds (counter)
 *   process_resident_memory_bytes   resident set size
 *   process_virtual_memory_bytes    virtual memory size
 *   process_open_fds                open file descriptors
 *   process_max_fds                 the soft RLIMIT_NOFILE
 *   process_start_time_seconds      start of the process, seconds since the epoch
 * A value that cannot be read (no /proc) is left out rather than reported as 0.
 */
#ifndef QB_PROCESS_METRICS_H
#define QB_PROCESS_METRICS_H

#include "prom.h"

#include <stdbool.h>
#include <stdint.h>

struct qb_process_stat {
    double cpu_seconds;   /* utime + stime */
    double start_seconds; /* since boot (starttime); add the boot time for the epoch */
    uint64_t vsize_bytes;
    uint64_t rss_bytes;
};

/*
 * Parses the text of /proc/<pid>/stat (borrowed). The command name in
 * parentheses may hold anything, spaces and ')' included, so fields are
 * counted from the last ')'. ticks_per_sec is sysconf(_SC_CLK_TCK),
 * page_size sysconf(_SC_PAGESIZE).
 * Returns QB_OK with *out filled, or QB_EPARSE when the text is not a stat line.
 */
int qb_process_stat_parse(const char *text, long ticks_per_sec, long page_size,
                          struct qb_process_stat *out);

/*
 * Parses the "btime <seconds>" line of /proc/stat (text borrowed).
 * Returns QB_OK with *out, or QB_EPARSE when there is none.
 */
int qb_process_boot_time_parse(const char *text, uint64_t *out);

/* Registers the process_* families in w and adds what can be read of this process now. */
void qb_process_metrics_collect(struct qb_prom_writer *w);

#endif
