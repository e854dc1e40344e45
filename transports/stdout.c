/*
 * stdout.c - the stdout transport: one CloudEvents JSON document per line,
 * to stdout or appended to a file (path:).
 *
 * Writes go through stdio; delivery is reported only after the batch has been
 * flushed, once per loop iteration, so a burst costs one fflush. The reports
 * are deferred to an idle handle rather than a check handle: with only a check
 * handle pending the loop could block in poll and never run it.
 */
#include "error.h"
#include "log.h"
#include "stdout_config.h"
#include "transport_ops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pending {
    void *token;
    int status;
};

struct stdout_backend {
    const struct qb_transport_config *cfg;
    const struct qb_transport_backend_cb *cb;
    void *owner;
    FILE *fp;
    bool own_fp;        /* fp came from fopen and is ours to close */
    bool failing;       /* the last write or flush failed: log recovery once */
    bool want_writable; /* we refused a message for want of memory */
    uv_idle_t idle;
    struct pending *pending;
    size_t n_pending, cap_pending;
    void (*closed)(void *arg);
    void *closed_arg;
};

/* ---- configuration: the keys of a stdout transport ---- */

static const struct qb_config_key stdout_config_keys[] = {
    QB_CONFIG_KEY(struct qb_stdout_config, "path", QB_CFG_STRING, path,
                  .check = qb_config_check_nonempty,
                  .desc = "write JSON lines to this file instead of stdout"),
    {0},
};

/* The file to write to, or NULL for stdout (also when cfg has no backend struct). */
static const char *stdout_path(const struct qb_transport_config *cfg)
{
    const struct qb_stdout_config *sc = cfg->backend;

    return sc ? sc->path : NULL;
}

static const char *out_name(const struct stdout_backend *b)
{
    const char *path = stdout_path(b->cfg);

    return path ? path : "stdout";
}

static int stdout_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    const char *path = stdout_path(cfg);

    if (path && !path[0]) {
        snprintf(errbuf, errlen, "transport %s: path must not be empty",
                 cfg->name ? cfg->name : "stdout");
        return QB_ECONFIG;
    }
    return QB_OK;
}

/* Flushes once and reports every pending token; reports may publish again, so work on a copy. */
static void report_pending(struct stdout_backend *b)
{
    if (b->n_pending == 0)
        return;
    int flush_rc = QB_OK;
    if (fflush(b->fp) != 0) {
        flush_rc = QB_EIO;
        if (!b->failing)
            QB_LOG_WARN(NULL, "transport stdout: flush to %s failed: %s", out_name(b),
                        strerror(errno));
        b->failing = true;
        clearerr(b->fp);
    }
    struct pending *list = b->pending;
    size_t n = b->n_pending;
    b->pending = NULL;
    b->n_pending = b->cap_pending = 0;
    bool all_ok = flush_rc == QB_OK;
    for (size_t i = 0; i < n; i++) {
        int st = list[i].status != QB_OK ? list[i].status : flush_rc;
        all_ok = all_ok && st == QB_OK;
        b->cb->delivered(b->owner, list[i].token, st);
    }
    free(list);
    if (all_ok && b->failing) {
        QB_LOG_INFO(NULL, "transport stdout: writing to %s works again", out_name(b));
        b->failing = false;
    }
}

static void on_idle(uv_idle_t *idle)
{
    struct stdout_backend *b = idle->data;
    report_pending(b);
    if (b->want_writable) {
        b->want_writable = false;
        b->cb->writable(b->owner);
    }
    if (b->n_pending == 0)
        uv_idle_stop(&b->idle);
}

static int stdout_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                         const struct qb_bridge_info *bridge,
                         const struct qb_transport_backend_cb *cb, void *owner, void **backend,
                         char *errbuf, size_t errlen)
{
    (void)bridge;
    struct stdout_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(errbuf, errlen, "transport stdout: out of memory");
        return QB_ENOMEM;
    }
    b->cfg = cfg;
    b->cb = cb;
    b->owner = owner;
    const char *path = stdout_path(cfg);
    if (path) {
        b->fp = fopen(path, "a");
        if (!b->fp) {
            snprintf(errbuf, errlen, "transport stdout: cannot open %s: %s", path, strerror(errno));
            free(b);
            return QB_ECONFIG;
        }
        b->own_fp = true;
    } else {
        b->fp = stdout;
    }
    uv_idle_init(loop, &b->idle);
    b->idle.data = b;
    *backend = b;
    /* an open file is as "connected" as this backend gets; /readyz counts on the flag */
    cb->link(owner, true, NULL);
    return QB_OK;
}

static int stdout_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct stdout_backend *b = backend;
    if (b->n_pending == b->cap_pending) {
        size_t cap = b->cap_pending ? b->cap_pending * 2 : 64;
        struct pending *p = realloc(b->pending, cap * sizeof(*p));
        if (!p) {
            if (b->n_pending == 0)
                return QB_ENOMEM; /* no report is coming that could wake the queue up */
            b->want_writable = true;
            return QB_EAGAIN;
        }
        b->pending = p;
        b->cap_pending = cap;
    }
    int status = QB_OK;
    if (fwrite(msg->payload, 1, msg->len, b->fp) != msg->len || fputc('\n', b->fp) == EOF) {
        if (!b->failing)
            QB_LOG_WARN(msg->vm, "transport stdout: write to %s failed: %s", out_name(b),
                        strerror(errno));
        b->failing = true;
        clearerr(b->fp);
        status = QB_EIO;
    }
    b->pending[b->n_pending++] = (struct pending){.token = token, .status = status};
    uv_idle_start(&b->idle, on_idle);
    return QB_OK;
}

static void on_idle_closed(uv_handle_t *h)
{
    struct stdout_backend *b = h->data;
    void (*closed)(void *) = b->closed;
    void *arg = b->closed_arg;
    if (b->own_fp)
        fclose(b->fp);
    else
        fflush(b->fp);
    free(b->pending);
    free(b);
    closed(arg);
}

static void stdout_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct stdout_backend *b = backend;
    b->closed = closed;
    b->closed_arg = arg;
    /* what was written is out of our hands once flushed: report it rather than give up on it */
    report_pending(b);
    uv_close((uv_handle_t *)&b->idle, on_idle_closed);
}

const struct qb_transport_ops qb_transport_stdout_ops = {
    .name = "stdout",
    .caps = 0,
    .config_keys = stdout_config_keys,
    .config_size = sizeof(struct qb_stdout_config),
    .validate = stdout_validate,
    .create = stdout_create,
    .publish = stdout_publish,
    .close = stdout_close,
};
