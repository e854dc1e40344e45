/*
 * discovery.c - VMs as socket files in a watched directory (see discovery.h).
 *
 * uv_fs_event_t only says "something happened to this name", so every event
 * is answered by looking at the file itself: a socket with the suffix that we
 * have not reported is added, a name we reported that is no longer a socket is
 * removed. The set of reported names is kept to make that decision and to
 * report each add/remove once.
 */
#include "discovery.h"

#include "error.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uthash.h>

struct qb_discovered {
    char *name;
    UT_hash_handle hh;
};

struct qb_discovery {
    uv_fs_event_t watch;
    char *dir;
    char *suffix;
    struct qb_discovery_callbacks cb;
    void *cb_arg;
    struct qb_discovered *known;
    bool stopped;
};

/* Returns the VM name for a file name (new string, caller frees), or NULL if it is not one. */
static char *discovery_vm_name(const struct qb_discovery *d, const char *file)
{
    size_t n = strlen(file), s = strlen(d->suffix);
    char *name;

    if (n <= s || strcmp(file + n - s, d->suffix) != 0)
        return NULL;
    name = strndup(file, n - s);
    if (!name)
        return NULL;
    if (n - s > 64 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                   "0123456789._-") != n - s) {
        QB_LOG_WARN(NULL, "discovery: skipping '%s/%s': not a valid VM name", d->dir, file);
        free(name);
        return NULL;
    }
    return name;
}

/* Looks at one directory entry and reports an add or a remove if its state changed. */
static void discovery_check(struct qb_discovery *d, const char *file)
{
    struct qb_discovered *entry;
    struct stat st;
    char *path = NULL;
    char *name = discovery_vm_name(d, file);
    bool is_socket;

    if (!name)
        return;
    if (asprintf(&path, "%s/%s", d->dir, file) < 0) {
        free(name);
        return;
    }
    is_socket = stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
    HASH_FIND_STR(d->known, name, entry);
    if (is_socket && !entry) {
        entry = calloc(1, sizeof(*entry));
        if (entry) {
            entry->name = name;
            name = NULL;
            HASH_ADD_KEYPTR(hh, d->known, entry->name, strlen(entry->name), entry);
            QB_LOG_INFO(entry->name, "discovered socket %s", path);
            d->cb.on_add(d->cb_arg, entry->name, path);
        }
    } else if (!is_socket && entry) {
        HASH_DEL(d->known, entry);
        QB_LOG_INFO(entry->name, "socket %s is gone", path);
        d->cb.on_remove(d->cb_arg, entry->name);
        free(entry->name);
        free(entry);
    }
    free(name);
    free(path);
}

static void discovery_on_change(uv_fs_event_t *h, const char *file, int events, int status)
{
    struct qb_discovery *d = h->data;

    (void)events;
    if (d->stopped)
        return;
    if (status < 0) {
        QB_LOG_ERR(NULL, "discovery: watching %s failed: %s", d->dir, uv_strerror(status));
        return;
    }
    if (file)
        discovery_check(d, file);
}

/* Reports every socket already in the directory. Returns QB_OK or QB_EIO. */
static int discovery_scan(struct qb_discovery *d, char *errbuf, size_t errlen)
{
    DIR *dir = opendir(d->dir);
    struct dirent *de;

    if (!dir) {
        snprintf(errbuf, errlen, "discovery: cannot open directory %s: %s", d->dir,
                 strerror(errno));
        return QB_EIO;
    }
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] != '.')
            discovery_check(d, de->d_name);
    }
    closedir(dir);
    return QB_OK;
}

int qb_discovery_start(uv_loop_t *loop, const char *dir, const char *suffix,
                       const struct qb_discovery_callbacks *cb, void *cb_arg,
                       struct qb_discovery **out, char *errbuf, size_t errlen)
{
    struct qb_discovery *d;
    int rc;

    *out = NULL;
    if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
        snprintf(errbuf, errlen, "discovery: cannot create directory %s: %s", dir,
                 strerror(errno));
        return QB_EIO;
    }
    d = calloc(1, sizeof(*d));
    if (!d)
        return QB_ENOMEM;
    d->dir = strdup(dir);
    d->suffix = strdup(suffix ? suffix : "");
    d->cb = *cb;
    d->cb_arg = cb_arg;
    if (!d->dir || !d->suffix) {
        rc = QB_ENOMEM;
        goto fail;
    }
    uv_fs_event_init(loop, &d->watch);
    d->watch.data = d;
    /* Watch before scanning, so a socket created in between is reported by one or the other. */
    rc = uv_fs_event_start(&d->watch, discovery_on_change, d->dir, 0);
    if (rc < 0) {
        snprintf(errbuf, errlen, "discovery: cannot watch %s: %s", dir, uv_strerror(rc));
        qb_discovery_stop(d); /* frees d once libuv has closed the handle */
        return QB_EIO;
    }
    rc = discovery_scan(d, errbuf, errlen);
    if (rc < 0) {
        qb_discovery_stop(d);
        return rc;
    }
    QB_LOG_INFO(NULL, "discovery: watching %s for sockets%s%s", d->dir, *d->suffix ? " ending in " : "",
                d->suffix);
    *out = d;
    return QB_OK;

fail:
    free(d->dir);
    free(d->suffix);
    free(d);
    return rc;
}

static void discovery_closed(uv_handle_t *h)
{
    struct qb_discovery *d = h->data;
    struct qb_discovered *entry, *tmp;

    HASH_ITER(hh, d->known, entry, tmp)
    {
        HASH_DEL(d->known, entry);
        free(entry->name);
        free(entry);
    }
    free(d->dir);
    free(d->suffix);
    free(d);
}

void qb_discovery_stop(struct qb_discovery *d)
{
    if (!d)
        return;
    d->stopped = true;
    uv_close((uv_handle_t *)&d->watch, discovery_closed);
}
