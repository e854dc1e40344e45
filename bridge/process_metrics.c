/*
 * process_metrics.c - process_* metrics from /proc/self/stat, /proc/self/fd,
 * /proc/stat and getrlimit, read at scrape time on the loop thread.
 *
 * Scrapes are rare (seconds apart) and each costs two small reads and one
 * directory listing; nothing is kept between them except the start time,
 * which cannot change.
 */
#include "process_metrics.h"

#include "error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Fields of /proc/<pid>/stat counted from the state (field 3) after the command name. */
enum {
    STAT_UTIME = 14 - 3,
    STAT_STIME = 15 - 3,
    STAT_STARTTIME = 22 - 3,
    STAT_VSIZE = 23 - 3,
    STAT_RSS = 24 - 3,
    STAT_NEEDED = STAT_RSS + 1,
};

int qb_process_stat_parse(const char *text, long ticks_per_sec, long page_size,
                          struct qb_process_stat *out)
{
    unsigned long long f[STAT_NEEDED] = {0};
    const char *p = text ? strrchr(text, ')') : NULL;
    char *end;

    if (!p || ticks_per_sec <= 0 || page_size <= 0)
        return QB_EPARSE;
    p++;
    for (int i = 0; i < STAT_NEEDED; i++) {
        if (*p != ' ')
            return QB_EPARSE;
        p++;
        if (i == 0) { /* the state: one letter */
            if (!*p || *p == ' ')
                return QB_EPARSE;
            p++;
            continue;
        }
        /* rss and a few others are signed in the kernel's format; none is negative here */
        if (*p == '-')
            p++;
        errno = 0;
        f[i] = strtoull(p, &end, 10);
        if (end == p || errno)
            return QB_EPARSE;
        p = end;
    }
    out->cpu_seconds = (double)(f[STAT_UTIME] + f[STAT_STIME]) / (double)ticks_per_sec;
    out->start_seconds = (double)f[STAT_STARTTIME] / (double)ticks_per_sec;
    out->vsize_bytes = f[STAT_VSIZE];
    out->rss_bytes = f[STAT_RSS] * (unsigned long long)page_size;
    return QB_OK;
}

int qb_process_boot_time_parse(const char *text, uint64_t *out)
{
    const char *p = text;

    while (p && *p) {
        if (strncmp(p, "btime ", 6) == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(p + 6, &end, 10);
            if (end == p + 6 || errno || (*end && *end != '\n'))
                return QB_EPARSE;
            *out = v;
            return QB_OK;
        }
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    return QB_EPARSE;
}

/*
 * Reads a /proc file into buf (NUL-terminated, truncated to len - 1 bytes).
 * Returns QB_OK or QB_EIO.
 */
static int read_small(const char *path, char *buf, size_t len)
{
    size_t got = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return QB_EIO;
    while (got + 1 < len && (n = read(fd, buf + got, len - 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            close(fd);
            return QB_EIO;
        }
        got += (size_t)n;
    }
    close(fd);
    buf[got] = '\0';
    return QB_OK;
}

/* Seconds since boot at which the system booted, from /proc/stat; 0 when unknown. */
static uint64_t boot_time(void)
{
    uint64_t btime = 0;
    FILE *f = fopen("/proc/stat", "re");
    char line[256];

    /* /proc/stat has a line per CPU before btime: read line by line, not into one buffer */
    while (f && fgets(line, sizeof(line), f))
        if (qb_process_boot_time_parse(line, &btime) == QB_OK)
            break;
    if (f)
        fclose(f);
    return btime;
}

/* Open descriptors, not counting the one the listing itself uses. Returns -1 when unknown. */
static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    long n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n > 0 ? n - 1 : 0;
}

void qb_process_metrics_collect(struct qb_prom_writer *w)
{
    static double start_time; /* seconds since the epoch; constant, so read once */
    struct qb_process_stat st;
    struct rlimit rl;
    char buf[1024];
    long fds;

    qb_prom_family(w, "process_cpu_seconds_total", "counter",
                   "Total user and system CPU time spent in seconds.");
    qb_prom_family(w, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    qb_prom_family(w, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    qb_prom_family(w, "process_open_fds", "gauge", "Number of open file descriptors.");
    qb_prom_family(w, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
    qb_prom_family(w, "process_start_time_seconds", "gauge",
                   "Start time of the process since unix epoch in seconds.");

    if (read_small("/proc/self/stat", buf, sizeof(buf)) == QB_OK &&
        qb_process_stat_parse(buf, sysconf(_SC_CLK_TCK), sysconf(_SC_PAGESIZE), &st) == QB_OK) {
        qb_prom_sample_double(w, "process_cpu_seconds_total", NULL, st.cpu_seconds);
        qb_prom_sample_u64(w, "process_resident_memory_bytes", NULL, st.rss_bytes);
        qb_prom_sample_u64(w, "process_virtual_memory_bytes", NULL, st.vsize_bytes);
        if (start_time == 0) {
            uint64_t btime = boot_time();
            if (btime)
                start_time = (double)btime + st.start_seconds;
        }
        if (start_time > 0)
            qb_prom_sample_double(w, "process_start_time_seconds", NULL, start_time);
    }
    fds = count_fds();
    if (fds >= 0)
        qb_prom_sample_u64(w, "process_open_fds", NULL, (uint64_t)fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        qb_prom_sample_double(w, "process_max_fds", NULL,
                              rl.rlim_cur == RLIM_INFINITY ? (double)INFINITY
                                                           : (double)rl.rlim_cur);
}
