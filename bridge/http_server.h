/*
 * http_server.h - the metrics/health/status HTTP endpoint, libmicrohttpd on the libuv loop.
 *
 * libmicrohttpd runs in "external epoll" mode: no thread of its own. Its epoll
 * fd is watched by a uv_poll_t and its connection timeouts by a uv_timer_t, so
 * every request handler runs on the loop thread and may read the bridge's
 * state without locks. Handlers must not block and must not close the server.
 *
 * The server is deliberately small: GET and HEAD only (405 with "Allow: GET,
 * HEAD" otherwise), exact path routes (404 otherwise), no request bodies
 * (413), request headers bounded by a per-connection memory pool, and slow or
 * greedy clients bounded so they cannot starve the others:
 *   - a request head (request line and headers) must be complete within
 *     QB_HTTP_HEAD_DEADLINE_S of the accept, or of the end of the previous
 *     response on a kept-alive connection, however steadily it trickles in;
 *     the connection is closed otherwise;
 *   - at most QB_HTTP_MAX_PER_CLIENT connections per client IP address (TCP);
 *     more are closed at once. On a Unix socket clients have no address, so
 *     only the total applies there (the socket is mode 0660: its users are
 *     the bridge's owner and group);
 *   - at most QB_HTTP_MAX_CONNECTIONS connections in all; more wait in the
 *     listen backlog;
 *   - a connection idle for QB_HTTP_CONNECTION_TIMEOUT_S is closed.
 *
 * Listen addresses:
 *   "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464", "[::]:9464"  IP literals
 *   "localhost:9464"                                            127.0.0.1, no DNS lookup
 *   "unix:/run/qmp-bridge/status.sock"                          a Unix stream socket
 * Port 0 binds a free port (see qb_http_server_port). A Unix socket file left
 * over by a dead bridge is replaced; one a live process answers on is "in use".
 * The socket file is made mode 0660 and removed again on close.
 *
 * The matching client, for `qmp-bridge --status`, is status_client.h.
 */
#ifndef QB_HTTP_SERVER_H
#define QB_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Room for QB_HTTP_MAX_CONNECTIONS / QB_HTTP_MAX_PER_CLIENT clients at their limit. */
#define QB_HTTP_MAX_CONNECTIONS 128
#define QB_HTTP_MAX_PER_CLIENT 8
#define QB_HTTP_HEAD_DEADLINE_S 5
#define QB_HTTP_CONNECTION_TIMEOUT_S 10

/* What a handler sees of a request. Everything is borrowed for the handler call. */
struct qb_http_request {
    const char *method; /* "GET" or "HEAD" */
    const char *path;   /* without the query string */
    bool head;          /* HEAD: the server sends the headers of the answer only */
};

/*
 * What a handler fills. The server pre-sets status 200, content_type
 * "text/plain; charset=utf-8" and no body.
 *   body:        malloc'd by the handler, taken by the server (freed with free()).
 *   static_body: a string that outlives the server (used when body is NULL).
 * body_len is the length of body or static_body; for static_body, 0 means strlen.
 * content_type must outlive the response (use string literals).
 */
struct qb_http_response {
    int status;
    const char *content_type;
    char *body;
    const char *static_body;
    size_t body_len;
};

/*
 * Fills resp for req. arg is the one given to qb_http_server_start.
 * Returns QB_OK, or a negative code: the server then frees any body and
 * answers 500.
 */
typedef int (*qb_http_handler_fn)(void *arg, const struct qb_http_request *req,
                                  struct qb_http_response *resp);

struct qb_http_route {
    const char *path; /* exact match, e.g. "/metrics"; must outlive the server */
    qb_http_handler_fn handler;
    /*
     * The answer costs in proportion to the VMs (/metrics, /vms): a request
     * that comes while the last answer is younger than twice what building
     * it took gets that same answer (one body, shared), so clients asking in
     * a loop get at most a third of the loop's time and one body's memory,
     * while a small bridge, whose answer takes microseconds, answers afresh.
     */
    bool shared;
};

struct qb_http_server;

/*
 * Checks a listen address's syntax without binding anything (for config
 * validation). Returns QB_OK or QB_EINVAL with errbuf saying why.
 */
int qb_http_listen_validate(const char *listen, char *errbuf, size_t errlen);

/*
 * Binds listen and starts serving routes on loop. The routes array is copied;
 * the path strings are borrowed for the server's lifetime. arg is passed to
 * every handler.
 * Returns QB_OK with *out set (close it with qb_http_server_close), or:
 *   QB_EINVAL  bad address syntax, empty routes
 *   QB_EIO     socket/bind/listen failed (address in use, no permission, ...)
 *   QB_ENOMEM
 * with errbuf naming the address and the errno text.
 */
int qb_http_server_start(uv_loop_t *loop, const char *listen, const struct qb_http_route *routes,
                         size_t nroutes, void *arg, struct qb_http_server **out, char *errbuf,
                         size_t errlen);

/* The bound TCP port (useful after port 0), 0 for a Unix socket. */
uint16_t qb_http_server_port(const struct qb_http_server *s);

/* Connections open right now (a gauge for /metrics). Loop thread only. */
unsigned qb_http_server_connections(const struct qb_http_server *s);

/* Connections closed so far for missing the request head deadline. Loop thread only. */
uint64_t qb_http_server_head_timeouts(const struct qb_http_server *s);

/* Requests answered with a shared route's last answer (qb_http_route.shared). */
uint64_t qb_http_server_shared_answers(const struct qb_http_server *s);

/*
 * Stops accepting, drops every connection and closes the listening socket at
 * once (the port is free when this returns; a Unix socket file is removed),
 * then frees s once its libuv handles have closed and calls done(done_arg)
 * (done may be NULL). Never call it from inside a handler. NULL s is a no-op.
 */
void qb_http_server_close(struct qb_http_server *s, void (*done)(void *arg), void *done_arg);

#endif
