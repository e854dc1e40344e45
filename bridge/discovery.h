/*
 * discovery.h - VMs found as socket files in a watched directory.
 *
 * Every unix socket file in the directory whose name ends with the configured
 * suffix is a VM named after the file (suffix removed). The directory is
 * scanned once at start and then watched with inotify through libuv's
 * uv_fs_event_t, so a VM appears when QEMU creates its socket and disappears
 * when the file is removed. Names that are not valid VM names are skipped with
 * a warning.
 */
#ifndef QB_DISCOVERY_H
#define QB_DISCOVERY_H

#include <uv.h>

struct qb_discovery_callbacks {
    /* A socket appeared. name and path are borrowed for the call. */
    void (*on_add)(void *arg, const char *name, const char *path);
    /* A socket that was reported by on_add is gone. name is borrowed. */
    void (*on_remove)(void *arg, const char *name);
};

struct qb_discovery;

/*
 * Creates the directory if it is missing, scans it (on_add for each socket,
 * from inside this call) and starts watching. dir and suffix are copied.
 * Returns QB_OK with *out (release with qb_discovery_stop), or QB_EIO with
 * errbuf naming the directory and the system error.
 */
int qb_discovery_start(uv_loop_t *loop, const char *dir, const char *suffix,
                       const struct qb_discovery_callbacks *cb, void *cb_arg,
                       struct qb_discovery **out, char *errbuf, size_t errlen);

/* Stops watching; no callback follows. Memory is freed once libuv closed the handle. */
void qb_discovery_stop(struct qb_discovery *d);

#endif
