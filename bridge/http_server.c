/*
 * http_server.c - libmicrohttpd driven by the libuv loop.
 *
 * MHD is started with MHD_USE_EPOLL and no internal thread. Its epoll fd
 * becomes readable whenever one of its sockets (the listener, a connection)
 * has work, so one uv_poll_t on that fd covers them all; MHD_run then does the
 * non-blocking work. MHD also needs to be run when a connection times out or
 * when it still has buffered work, which MHD_get_timeout reports, so after
 * every MHD_run a uv_timer_t is re-armed from it (or stopped when MHD has no
 * deadline).
 *
 * We create, bind and listen on the socket ourselves and hand it over with
 * MHD_OPTION_LISTEN_SOCKET: that is the only way to listen on a Unix socket,
 * and it gives exact errno texts ("Address already in use") at start, which
 * MHD_start_daemon's bare NULL does not. MHD owns the fd from then on.
 *
 * MHD's connection timeout is an idle timeout: a client that sends one header
 * byte now and then keeps its connection for ever, and enough of them hold every
 * slot. So every connection also has an absolute deadline for its request head:
 * MHD tells us when it accepts a connection (NOTIFY_CONNECTION), the access
 * handler when a head is complete, NOTIFY_COMPLETED when a response is done and
 * a kept-alive connection waits for its next head. Connections waiting for a
 * head are kept in one list in deadline order (every deadline is "now + the same
 * delay" when it is set, so appending keeps the order) and one timer, armed for
 * the head of the list, shuts down those that miss it: shutdown(SHUT_RDWR) makes
 * MHD read EOF and close the connection itself, so MHD's state stays its own.
 */
#include "http_server.h"

#include "address.h"

#include "error.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* Request headers beyond this per connection are answered 431 by MHD itself. */
#define HTTP_CONNECTION_MEMORY (32u * 1024)
#define HTTP_LISTEN_BACKLOG 64

struct listen_addr {
    bool is_unix;
    struct sockaddr_storage ss;
    socklen_t len;
};

/* One accepted connection, known from MHD's NOTIFY_CONNECTION until it closes. */
struct http_conn {
    struct http_conn *prev, *next; /* in the server's waiting list while waiting */
    struct MHD_Connection *c;
    uint64_t deadline; /* loop time (ms) by which the request head must be complete */
    bool waiting;      /* in the waiting list: no complete request head yet */
};

/* A shared route's last answer (see qb_http_route.shared). */
struct route_answer {
    struct MHD_Response *r; /* our reference; NULL when none */
    int status;
    uint64_t built_ns, took_ns; /* uv_hrtime when it was built, and how long that took */
};

struct qb_http_server {
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;
    uv_timer_t timer;
    uv_timer_t head_timer;                    /* armed for wait_first's deadline */
    struct http_conn *wait_first, *wait_last; /* waiting for a request head, deadline order */
    uint64_t cut;                             /* connections shut down at the head deadline */
    uint64_t reused;                          /* requests answered with a shared route's answer */
    struct qb_http_route *routes;
    struct route_answer *answers; /* per route: the last answer of a shared route */
    size_t nroutes;
    void *arg;
    uint16_t port;
    char *listen;    /* as configured, for log lines */
    char *unix_path; /* socket file to remove at close, NULL for TCP */
    dev_t unix_dev;
    ino_t unix_ino;
    int open_handles; /* libuv handles whose close callback is still due */
    bool closing;
    void (*done)(void *arg);
    void *done_arg;
};

/* ---- addresses -------------------------------------------------------------------------- */

/*
 * Parses "unix:/path", "[v6]:port", "v4:port" or "localhost:port" into a
 * socket address. No name resolution: a metrics listener should not depend on
 * DNS at start, and "localhost" is the only name people write there.
 */
static int parse_address(const char *text, struct listen_addr *a, char *errbuf, size_t errlen)
{
    struct qb_address addr;

    memset(a, 0, sizeof *a);
    if (!text || !*text) {
        snprintf(errbuf, errlen, "empty listen address");
        return QB_EINVAL;
    }
    if (qb_address_parse(text, QB_ADDRESS_HTTP, &addr) != QB_OK) {
        if (!strncmp(text, "unix:", 5))
            snprintf(errbuf, errlen, "'%s': the socket path must be 1 to %zu bytes", text,
                     sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        else
            snprintf(errbuf, errlen,
                     "'%s': expected host:port (IPv6 in brackets, port 0-65535) or unix:/path",
                     text);
        return QB_EINVAL;
    }
    if (qb_address_sockaddr(&addr, &a->ss, &a->len) != QB_OK) {
        if (addr.is_unix)
            snprintf(errbuf, errlen, "'%s': the socket path must be 1 to %zu bytes", text,
                     sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
        else
            snprintf(errbuf, errlen, "'%s': bad %s address '%.*s'%s", text,
                     addr.bracketed ? "IPv6" : "IPv4", (int)addr.host_len, addr.host,
                     addr.bracketed ? "" : " (literal or localhost)");
        return QB_EINVAL;
    }
    a->is_unix = addr.is_unix;
    return QB_OK;
}

int qb_http_listen_validate(const char *listen, char *errbuf, size_t errlen)
{
    struct listen_addr a;

    return parse_address(listen, &a, errbuf, errlen);
}

/*
 * A Unix socket file at path: leave it alone if a process accepts on it, remove
 * it if nobody does (a bridge that died without cleaning up), refuse anything
 * that is not a socket.
 */
static int clear_stale_unix(const char *text, const struct listen_addr *a, char *errbuf,
                            size_t errlen)
{
    const struct sockaddr_un *un = (const struct sockaddr_un *)&a->ss;
    struct stat st;
    int fd, rc, err;

    if (lstat(un->sun_path, &st) < 0)
        return QB_OK; /* nothing there (or bind will report why) */
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(errbuf, errlen, "listen %s: the path exists and is not a socket", text);
        return QB_EIO;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(errbuf, errlen, "listen %s: socket: %s", text, strerror(errno));
        return QB_EIO;
    }
    rc = connect(fd, (const struct sockaddr *)&a->ss, a->len);
    err = errno;
    close(fd);
    if (rc == 0 || err == EAGAIN) {
        snprintf(errbuf, errlen, "listen %s: %s (another process is serving it)", text,
                 strerror(EADDRINUSE));
        return QB_EIO;
    }
    if (err == ECONNREFUSED && unlink(un->sun_path) < 0 && errno != ENOENT) {
        snprintf(errbuf, errlen, "listen %s: removing the stale socket: %s", text, strerror(errno));
        return QB_EIO;
    }
    return QB_OK;
}

/* Creates, binds and listens; returns the fd or a negative code with errbuf filled. */
static int open_listener(const char *text, const struct listen_addr *a, char *errbuf, size_t errlen)
{
    int fd, one = 1, rc;
    const char *step;

    if (a->is_unix) {
        rc = clear_stale_unix(text, a, errbuf, errlen);
        if (rc < 0)
            return rc;
    }
    fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(errbuf, errlen, "listen %s: socket: %s", text, strerror(errno));
        return QB_EIO;
    }
    /* SO_REUSEADDR so a restarted bridge can bind while old connections sit in TIME_WAIT;
     * on Linux it never lets two listeners share a port. V6ONLY so "[::]" means IPv6 only,
     * whatever the sysctl says. */
    step = "setsockopt";
    if (!a->is_unix && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        goto fail;
    if (a->ss.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
        goto fail;
    step = "bind";
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0)
        goto fail;
    /* Status data is for the bridge's owner and group, not every local user. */
    step = "chmod";
    if (a->is_unix && chmod(((const struct sockaddr_un *)&a->ss)->sun_path, 0660) < 0)
        goto fail;
    step = "listen";
    if (listen(fd, HTTP_LISTEN_BACKLOG) < 0)
        goto fail;
    return fd;

fail:
    snprintf(errbuf, errlen, "listen %s: %s: %s", text, step, strerror(errno));
    if (a->is_unix && strcmp(step, "bind"))
        unlink(((const struct sockaddr_un *)&a->ss)->sun_path);
    close(fd);
    return QB_EIO;
}

/* ---- request head deadline -------------------------------------------------------------- */

static void wait_unlink(struct qb_http_server *s, struct http_conn *k)
{
    if (!k->waiting)
        return;
    if (k->prev)
        k->prev->next = k->next;
    else
        s->wait_first = k->next;
    if (k->next)
        k->next->prev = k->prev;
    else
        s->wait_last = k->prev;
    k->prev = k->next = NULL;
    k->waiting = false;
}

static void on_head_timer(uv_timer_t *t);

/* Arms the deadline timer for the first waiting connection, or stops it. */
static void head_timer_arm(struct qb_http_server *s)
{
    uint64_t now = uv_now(s->loop);

    if (s->closing)
        return;
    if (!s->wait_first) {
        uv_timer_stop(&s->head_timer);
        return;
    }
    uv_timer_start(&s->head_timer, on_head_timer,
                   s->wait_first->deadline > now ? s->wait_first->deadline - now : 0, 0);
}

/* Starts k's clock: its next request head is due QB_HTTP_HEAD_DEADLINE_S from now. */
static void wait_append(struct qb_http_server *s, struct http_conn *k)
{
    k->deadline = uv_now(s->loop) + QB_HTTP_HEAD_DEADLINE_S * 1000ull;
    k->waiting = true;
    k->next = NULL;
    k->prev = s->wait_last;
    if (s->wait_last)
        s->wait_last->next = k;
    else
        s->wait_first = k;
    s->wait_last = k;
    if (s->wait_first == k)
        head_timer_arm(s);
}

static struct http_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return info ? info->socket_context : NULL;
}

/* The access handler saw a complete head: the clock stops until the response is done. */
static void conn_head_done(struct qb_http_server *s, struct MHD_Connection *c)
{
    struct http_conn *k = conn_of(c);

    if (k)
        wait_unlink(s, k);
}

/*
 * MHD accepted or closed a connection. A connection whose record cannot be
 * allocated is served without a head deadline (the idle timeout still holds).
 */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct qb_http_server *s = cls;
    struct http_conn *k = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        k = calloc(1, sizeof *k);
        if (!k)
            return;
        k->c = c;
        *socket_context = k;
        wait_append(s, k);
        return;
    }
    if (!k)
        return;
    wait_unlink(s, k);
    *socket_context = NULL;
    free(k);
}

/* A response is done; a kept-alive connection now waits for its next head, on a new clock. */
static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct qb_http_server *s = cls;
    struct http_conn *k = conn_of(c);

    (void)req_cls;
    (void)toe;
    if (k && !k->waiting)
        wait_append(s, k);
}

static void drive(struct qb_http_server *s);

/* Shuts down every connection past its head deadline; MHD then sees EOF and closes it. */
static void on_head_timer(uv_timer_t *t)
{
    struct qb_http_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    unsigned n = 0;

    while (s->wait_first && s->wait_first->deadline <= now) {
        struct http_conn *k = s->wait_first;
        const union MHD_ConnectionInfo *info =
            MHD_get_connection_info(k->c, MHD_CONNECTION_INFO_CONNECTION_FD);

        wait_unlink(s, k);
        if (info && info->connect_fd != MHD_INVALID_SOCKET)
            shutdown(info->connect_fd, SHUT_RDWR);
        n++;
    }
    if (n) {
        s->cut += n;
        QB_LOG_DEBUG(NULL, "http %s: closed %u connection(s) without a complete request within %ds",
                     s->listen, n, QB_HTTP_HEAD_DEADLINE_S);
        drive(s);
    }
    head_timer_arm(s);
}

/* ---- request handling ------------------------------------------------------------------- */

/*
 * Queues status with body (taken; or sbody, static) on c. keep (NULL: none)
 * gets a reference of the response for the caller, who destroys it later.
 */
static enum MHD_Result send_response(struct MHD_Connection *c, int status, const char *content_type,
                                     char *body, const char *sbody, size_t len, const char *allow,
                                     struct MHD_Response **keep)
{
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (body)
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    else
        r = MHD_create_response_from_buffer(len, (void *)(sbody ? sbody : ""),
                                            MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO; /* MHD closes the connection */
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) != MHD_YES ||
        (allow && MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow) != MHD_YES)) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    ret = MHD_queue_response(c, (unsigned)status, r);
    if (keep && ret == MHD_YES)
        *keep = r; /* the queue holds its own reference, the caller this one */
    else
        MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_static(struct MHD_Connection *c, int status, const char *text,
                                   const char *allow)
{
    return send_response(c, status, "text/plain; charset=utf-8", NULL, text, strlen(text), allow,
                         NULL);
}

/* A request that announces a body (Content-Length other than 0, or chunked). */
static bool has_body(struct MHD_Connection *c)
{
    const char *cl =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);

    return te || (cl && strspn(cl, "0") != strlen(cl));
}

/*
 * MHD's access handler. It answers on the first call (headers complete) every
 * time: nothing here needs a body, and answering before reading one means MHD
 * never buffers it and closes the connection afterwards.
 */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **req_cls)
{
    struct qb_http_server *s = cls;
    struct qb_http_request req;
    struct qb_http_response resp;
    size_t i, len;
    int rc;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;

    conn_head_done(s, c);
    req.method = method;
    req.path = url;
    req.head = !strcmp(method, MHD_HTTP_METHOD_HEAD);
    if (!req.head && strcmp(method, MHD_HTTP_METHOD_GET))
        return send_static(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", "GET, HEAD");
    if (has_body(c))
        return send_static(c, MHD_HTTP_CONTENT_TOO_LARGE, "request bodies are not accepted\n",
                           NULL);
    for (i = 0; i < s->nroutes; i++)
        if (!strcmp(s->routes[i].path, url))
            break;
    if (i == s->nroutes)
        return send_static(c, MHD_HTTP_NOT_FOUND, "not found\n", NULL);

    struct route_answer *a = s->routes[i].shared ? &s->answers[i] : NULL;
    uint64_t t0 = uv_hrtime();

    if (a && a->r && t0 - a->built_ns < 2 * a->took_ns) {
        s->reused++;
        return MHD_queue_response(c, (unsigned)a->status, a->r); /* MHD takes a reference */
    }
    memset(&resp, 0, sizeof resp);
    resp.status = MHD_HTTP_OK;
    resp.content_type = "text/plain; charset=utf-8";
    rc = s->routes[i].handler(s->arg, &req, &resp);
    if (rc < 0 || resp.status < 100 || resp.status > 599 || !resp.content_type) {
        QB_LOG_WARN(NULL, "http %s: handler for %s failed: %s", s->listen, url,
                    rc < 0 ? qb_strerror(rc) : "bad status or content type");
        free(resp.body);
        return send_static(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal error\n", NULL);
    }
    len = resp.body_len;
    if (!resp.body && resp.static_body && len == 0)
        len = strlen(resp.static_body);
    if (!resp.body && !resp.static_body)
        len = 0;
    if (!a)
        return send_response(c, resp.status, resp.content_type, resp.body, resp.static_body, len,
                             NULL, NULL);
    if (a->r)
        MHD_destroy_response(a->r);
    a->r = NULL;
    enum MHD_Result ret = send_response(c, resp.status, resp.content_type, resp.body,
                                        resp.static_body, len, NULL, &a->r);
    a->status = resp.status;
    a->built_ns = uv_hrtime();
    a->took_ns = a->built_ns - t0;
    return ret;
}

/* MHD's messages are per connection (client went away, limit reached): debug, or a scan of
 * the port would fill the journal. */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct qb_http_server *s = cls;
    char line[256];
    size_t n;

    if (QB_LOG_DEBUG > qb_log_threshold)
        return;
    vsnprintf(line, sizeof line, fmt, ap);
    n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    QB_LOG_DEBUG(NULL, "http %s: libmicrohttpd: %s", s->listen, line);
}

/* ---- loop integration ------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static unsigned current_connections(struct MHD_Daemon *mhd)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info(mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);

    return info ? info->num_connections : 0;
}

/*
 * Runs MHD's pending work, then arms the timer for its next deadline.
 *
 * At the connection limit MHD takes the listening socket out of its epoll set,
 * and it puts it back only at the start of a later MHD_run. When the run that
 * closed connections is the last one (nothing else pending, no timeout), the
 * epoll fd never becomes readable again for waiting clients and the server
 * stops accepting for good. So whenever a run closed connections, run again:
 * that run re-adds the listener (and costs one empty epoll_wait otherwise).
 */
static void drive(struct qb_http_server *s)
{
    MHD_UNSIGNED_LONG_LONG ms;
    unsigned before, after;
    int rounds = 0;

    if (s->closing)
        return;
    after = current_connections(s->mhd);
    do {
        before = after;
        if (MHD_run(s->mhd) != MHD_YES)
            QB_LOG_WARN(NULL, "http %s: MHD_run failed", s->listen);
        after = current_connections(s->mhd);
    } while (after < before && ++rounds < 4);
    if (MHD_get_timeout(s->mhd, &ms) == MHD_YES)
        uv_timer_start(&s->timer, on_timer, ms > UINT32_MAX ? UINT32_MAX : (uint64_t)ms, 0);
    else
        uv_timer_stop(&s->timer);
}

static void on_timer(uv_timer_t *t)
{
    drive(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct qb_http_server *s = p->data;

    (void)events;
    if (status < 0)
        QB_LOG_WARN(NULL, "http %s: poll: %s", s->listen, uv_strerror(status));
    drive(s);
}

static void free_server(struct qb_http_server *s)
{
    for (size_t i = 0; s->answers && i < s->nroutes; i++)
        if (s->answers[i].r)
            MHD_destroy_response(s->answers[i].r);
    free(s->answers);
    free(s->routes);
    free(s->listen);
    free(s->unix_path);
    free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct qb_http_server *s = h->data;

    if (--s->open_handles > 0)
        return;
    if (s->done)
        s->done(s->done_arg);
    free_server(s);
}

int qb_http_server_start(uv_loop_t *loop, const char *listen, const struct qb_http_route *routes,
                         size_t nroutes, void *arg, struct qb_http_server **out, char *errbuf,
                         size_t errlen)
{
    struct qb_http_server *s;
    const union MHD_DaemonInfo *info;
    struct listen_addr a;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    struct stat st;
    int fd, rc, epfd;

    *out = NULL;
    rc = parse_address(listen, &a, errbuf, errlen);
    if (rc < 0)
        return rc;
    if (!loop || !routes || nroutes == 0) {
        snprintf(errbuf, errlen, "listen %s: no routes", listen);
        return QB_EINVAL;
    }
    s = calloc(1, sizeof *s);
    if (!s || !(s->routes = malloc(nroutes * sizeof *routes)) ||
        !(s->answers = calloc(nroutes, sizeof *s->answers)) || !(s->listen = strdup(listen)) ||
        (a.is_unix && !(s->unix_path = strdup(((struct sockaddr_un *)&a.ss)->sun_path)))) {
        snprintf(errbuf, errlen, "listen %s: out of memory", listen);
        if (s)
            free_server(s);
        return QB_ENOMEM;
    }
    memcpy(s->routes, routes, nroutes * sizeof *routes);
    s->nroutes = nroutes;
    s->loop = loop;
    s->arg = arg;

    fd = open_listener(listen, &a, errbuf, errlen);
    if (fd < 0) {
        free_server(s);
        return fd;
    }
    if (a.is_unix && stat(s->unix_path, &st) == 0) {
        s->unix_dev = st.st_dev;
        s->unix_ino = st.st_ino;
    } else if (!a.is_unix && getsockname(fd, (struct sockaddr *)&bound, &blen) == 0) {
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    }

    /* TURBO: skips shutdown() before close and reads optimistically; safe for short
     * request/response exchanges. */
    s->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_TURBO | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, s,
        /* the logger first, or MHD prints option errors to stderr itself */
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)QB_HTTP_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)QB_HTTP_MAX_PER_CLIENT,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        s, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)QB_HTTP_CONNECTION_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_MEMORY, MHD_OPTION_END);
    if (!s->mhd) {
        /* MHD closes a listen socket it was given when it fails after taking it, but not on
         * every early failure; an fd leaked on this path (no memory, no epoll) is the safer
         * mistake than closing a number another thread may already reuse. */
        snprintf(errbuf, errlen, "listen %s: libmicrohttpd failed to start", listen);
        rc = QB_EIO;
        goto fail_socket;
    }
    info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    epfd = info ? info->epoll_fd : -1;
    if (epfd < 0 || (rc = uv_poll_init(loop, &s->poll, epfd)) < 0) {
        snprintf(errbuf, errlen, "listen %s: watching libmicrohttpd's epoll fd: %s", listen,
                 epfd < 0 ? "no epoll fd" : uv_strerror(rc));
        MHD_stop_daemon(s->mhd);
        rc = QB_EIO;
        goto fail_socket;
    }
    uv_timer_init(loop, &s->timer);
    uv_timer_init(loop, &s->head_timer);
    s->poll.data = s;
    s->timer.data = s;
    s->head_timer.data = s;
    s->open_handles = 3;
    rc = uv_poll_start(&s->poll, UV_READABLE, on_poll);
    if (rc < 0) {
        snprintf(errbuf, errlen, "listen %s: uv_poll_start: %s", listen, uv_strerror(rc));
        qb_http_server_close(s, NULL, NULL); /* frees s once the handles have closed */
        return QB_EIO;
    }
    drive(s); /* arms the timer if MHD wants one from the start */
    if (a.is_unix)
        QB_LOG_INFO(NULL, "http: listening on %s", listen);
    else
        QB_LOG_INFO(NULL, "http: listening on %s (port %u)", listen, s->port);
    *out = s;
    return QB_OK;

fail_socket:
    if (s->unix_path)
        unlink(s->unix_path);
    free_server(s);
    return rc;
}

uint16_t qb_http_server_port(const struct qb_http_server *s)
{
    return s ? s->port : 0;
}

unsigned qb_http_server_connections(const struct qb_http_server *s)
{
    return s && s->mhd ? current_connections(s->mhd) : 0;
}

uint64_t qb_http_server_head_timeouts(const struct qb_http_server *s)
{
    return s ? s->cut : 0;
}

uint64_t qb_http_server_shared_answers(const struct qb_http_server *s)
{
    return s ? s->reused : 0;
}

void qb_http_server_close(struct qb_http_server *s, void (*done)(void *arg), void *done_arg)
{
    struct stat st;

    if (!s || s->closing)
        return;
    s->closing = true;
    s->done = done;
    s->done_arg = done_arg;
    /* libuv must stop watching the epoll fd before MHD closes it. */
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    uv_close((uv_handle_t *)&s->head_timer, on_handle_closed);
    if (s->mhd) {
        MHD_stop_daemon(s->mhd); /* closes the connections, the listener and the epoll fd */
        s->mhd = NULL;
    }
    /* Remove the socket file only if it is still ours, not one a newer bridge bound. */
    if (s->unix_path && stat(s->unix_path, &st) == 0 && st.st_dev == s->unix_dev &&
        st.st_ino == s->unix_ino)
        unlink(s->unix_path);
}
