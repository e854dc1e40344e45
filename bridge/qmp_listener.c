/*
 * qmp_listener.c - listen mode: accept QEMUs on a Unix socket (see qmp_listener.h).
 *
 * The listening socket is watched with a uv_poll_t and accepted with
 * accept4() rather than through uv_listen/uv_accept: the owner then gets a
 * plain fd it can read SO_PEERCRED from and hand to a QMP session, and "stop
 * accepting" is simply "stop polling", which leaves waiting QEMUs in the
 * kernel's backlog instead of in our memory.
 */
#include "qmp_listener.h"

#include "address.h"

#include "error.h"
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define QB_LISTENER_BACKLOG 64
/* After EMFILE/ENFILE: wait this long before accepting again instead of spinning. */
#define QB_LISTENER_RETRY_MS 1000

struct qb_qmp_listener {
    uv_loop_t *loop;
    uv_poll_t poll;
    uv_timer_t retry;
    int fd;
    char *path;
    dev_t dev; /* of the socket file we bound, so close never unlinks a successor's */
    ino_t ino;
    qb_qmp_listener_cb cb;
    void *cb_arg;
    bool paused;  /* the owner has no room */
    bool starved; /* out of file descriptors, retry timer running */
    bool polling;
    bool closing;
    unsigned handles_open;
};

/* Polls exactly when nothing holds accepting back. */
static void listener_update(struct qb_qmp_listener *l);

static void listener_retry(uv_timer_t *t)
{
    struct qb_qmp_listener *l = t->data;

    l->starved = false;
    listener_update(l);
}

static void listener_on_readable(uv_poll_t *h, int status, int events)
{
    struct qb_qmp_listener *l = h->data;

    (void)events;
    if (status < 0) {
        QB_LOG_ERR(NULL, "listen unix:%s: poll failed: %s", l->path, uv_strerror(status));
        return;
    }
    /* The owner may pause from inside cb: check before every accept. */
    while (!l->paused && !l->closing) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            QB_LOG_ERR(NULL, "listen unix:%s: accept: %s (retrying in %d ms)", l->path,
                       strerror(errno), QB_LISTENER_RETRY_MS);
            l->starved = true;
            uv_timer_start(&l->retry, listener_retry, QB_LISTENER_RETRY_MS, 0);
            break;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid <= 0) {
            QB_LOG_WARN(NULL, "listen unix:%s: connection without a peer pid refused: %s", l->path,
                        strerror(errno));
            close(fd);
            continue;
        }
        QB_LOG_DEBUG(NULL, "listen unix:%s: connection from pid %d uid %u", l->path,
                     (int)cred.pid, (unsigned)cred.uid);
        l->cb(l->cb_arg, fd, cred.pid, cred.uid);
    }
    listener_update(l);
}

static void listener_update(struct qb_qmp_listener *l)
{
    bool want = !l->paused && !l->starved && !l->closing;
    if (want == l->polling)
        return;
    l->polling = want;
    if (want)
        uv_poll_start(&l->poll, UV_READABLE, listener_on_readable);
    else
        uv_poll_stop(&l->poll);
}

/*
 * A socket file already at the path: leave it alone if a process accepts on
 * it, remove it if nobody does (a bridge that died without cleaning up),
 * refuse anything that is not a socket.
 */
static int listener_clear_stale(const struct sockaddr_un *sa, char *errbuf, size_t errlen)
{
    struct stat st;
    int fd, rc, err;

    if (lstat(sa->sun_path, &st) < 0)
        return QB_OK; /* nothing there (or bind will say why) */
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(errbuf, errlen, "listen unix:%s: the path exists and is not a socket",
                 sa->sun_path);
        return QB_EIO;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(errbuf, errlen, "listen unix:%s: socket: %s", sa->sun_path, strerror(errno));
        return QB_EIO;
    }
    rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN) {
        snprintf(errbuf, errlen, "listen unix:%s: %s (another process is serving it)",
                 sa->sun_path, strerror(EADDRINUSE));
        return QB_EIO;
    }
    if (err == ECONNREFUSED && unlink(sa->sun_path) < 0 && errno != ENOENT) {
        snprintf(errbuf, errlen, "listen unix:%s: removing the stale socket: %s", sa->sun_path,
                 strerror(errno));
        return QB_EIO;
    }
    if (err == ECONNREFUSED)
        QB_LOG_INFO(NULL, "listen unix:%s: removed a stale socket file", sa->sun_path);
    return QB_OK;
}

/* Creates, binds (mode 0660) and listens. Returns the fd, or a negative code with errbuf filled. */
static int listener_open(const struct sockaddr_un *sa, char *errbuf, size_t errlen)
{
    const char *step = "socket";
    int fd, rc;

    rc = listener_clear_stale(sa, errbuf, errlen);
    if (rc < 0)
        return rc;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    step = "bind";
    if (bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0)
        goto fail;
    /* A QMP monitor controls the VM: only the bridge's user and group may connect. */
    step = "chmod";
    if (chmod(sa->sun_path, 0660) < 0)
        goto fail;
    step = "listen";
    if (listen(fd, QB_LISTENER_BACKLOG) < 0)
        goto fail;
    return fd;

fail:
    snprintf(errbuf, errlen, "listen unix:%s: %s: %s", sa->sun_path, step, strerror(errno));
    if (fd >= 0) {
        if (strcmp(step, "bind") != 0)
            unlink(sa->sun_path);
        close(fd);
    }
    return QB_EIO;
}

int qb_qmp_listener_start(uv_loop_t *loop, const char *address, qb_qmp_listener_cb cb, void *arg,
                          struct qb_qmp_listener **out, char *errbuf, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct qb_qmp_listener *l;
    struct qb_address addr;
    struct stat st;
    int rc;

    *out = NULL;
    if (qb_address_parse(address, QB_ADDRESS_UNIX_ABSOLUTE, &addr) != QB_OK ||
        strlen(addr.path) >= sizeof(sa.sun_path)) {
        snprintf(errbuf, errlen, "listen %s: want unix:/absolute/path (at most %zu bytes)", address,
                 sizeof(sa.sun_path) - 1);
        return QB_EINVAL;
    }
    strcpy(sa.sun_path, addr.path);
    l = calloc(1, sizeof(*l));
    if (!l || !(l->path = strdup(sa.sun_path))) {
        free(l);
        snprintf(errbuf, errlen, "listen %s: out of memory", address);
        return QB_ENOMEM;
    }
    l->fd = listener_open(&sa, errbuf, errlen);
    if (l->fd < 0) {
        rc = l->fd;
        free(l->path);
        free(l);
        return rc;
    }
    if (stat(l->path, &st) == 0) {
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    rc = uv_poll_init(loop, &l->poll, l->fd);
    if (rc < 0) {
        snprintf(errbuf, errlen, "listen %s: cannot watch the socket: %s", address,
                 uv_strerror(rc));
        unlink(l->path);
        close(l->fd);
        free(l->path);
        free(l);
        return QB_EIO;
    }
    uv_timer_init(loop, &l->retry);
    l->poll.data = l;
    l->retry.data = l;
    l->handles_open = 2;
    l->loop = loop;
    l->cb = cb;
    l->cb_arg = arg;
    listener_update(l);
    *out = l;
    return QB_OK;
}

void qb_qmp_listener_pause(struct qb_qmp_listener *l)
{
    if (!l->paused)
        QB_LOG_DEBUG(NULL, "listen unix:%s: not accepting until a connection is named", l->path);
    l->paused = true;
    listener_update(l);
}

void qb_qmp_listener_resume(struct qb_qmp_listener *l)
{
    l->paused = false;
    listener_update(l);
}

const char *qb_qmp_listener_path(const struct qb_qmp_listener *l)
{
    return l->path;
}

static void listener_handle_closed(uv_handle_t *h)
{
    struct qb_qmp_listener *l = h->data;

    if (--l->handles_open > 0)
        return;
    /* uv_poll_t never closes the fd it watched. */
    close(l->fd);
    free(l->path);
    free(l);
}

void qb_qmp_listener_close(struct qb_qmp_listener *l)
{
    struct stat st;

    if (!l || l->closing)
        return;
    l->closing = true;
    /* Remove the file only if it is still ours, not one a newer bridge bound. */
    if (stat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(l->path);
    uv_close((uv_handle_t *)&l->poll, listener_handle_closed);
    uv_close((uv_handle_t *)&l->retry, listener_handle_closed);
}
