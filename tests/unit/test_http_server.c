/*
 * test_http_server.c - the libmicrohttpd server on a real libuv loop, and the --status
 * client (qb_status_client_get).
 *
 * The server runs where it runs in the bridge: on the test's uv loop, in the
 * main thread. Clients (qb_status_client_get, or raw sockets for HEAD, POST and
 * malformed requests) run in a uv_thread and tell the loop through a
 * uv_async_t when they are done, or when the loop should close the server
 * under a connected client. Ports are picked by the kernel (port 0) and read
 * back with qb_http_server_port; Unix sockets live in a fresh temp directory.
 * ASan (QB_SANITIZE=ON) checks that closing with live connections leaks nothing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "error.h"
#include "http_server.h"
#include "log.h"
#include "status_client.h"

#define BIG_BODY (1024 * 1024 + 7)

enum request { REQ_NONE, REQ_CLOSE_SERVER, REQ_DONE };

struct fixture {
    uv_loop_t loop;
    uv_async_t async;
    uv_thread_t thread;
    uv_mutex_t lock;
    uv_sem_t closed_sem; /* posted when the server's close callback ran */
    enum request req;
    struct qb_http_server *srv;
    bool srv_closed;
    int done_calls;
    char addr[256];
    void (*client)(struct fixture *f);
    unsigned conns_seen; /* qb_http_server_connections at the last /conns */
    uint64_t cut_seen;   /* qb_http_server_head_timeouts at the last /conns */
};

/* ---- handlers --------------------------------------------------------------------------- */

static int h_hello(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    (void)arg;
    (void)req;
    resp->body = strdup("hello world\n");
    resp->body_len = strlen(resp->body);
    return QB_OK;
}

static int h_static(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    (void)arg;
    (void)req;
    resp->status = 503;
    resp->content_type = "application/json";
    resp->static_body = "{\"ready\":false,\"reason\":\"transport mqtt not connected\"}";
    return QB_OK;
}

static int h_fail(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    (void)arg;
    (void)req;
    resp->body = strdup("half-built body the server must free");
    return QB_ENOMEM;
}

static int h_conns(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    struct fixture *f = arg;
    char buf[32];

    (void)req;
    f->conns_seen = qb_http_server_connections(f->srv);
    f->cut_seen = qb_http_server_head_timeouts(f->srv);
    snprintf(buf, sizeof buf, "%u", f->conns_seen);
    resp->body = strdup(buf);
    resp->body_len = strlen(buf);
    return QB_OK;
}

static int h_big(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    (void)arg;
    (void)req;
    resp->body = malloc(BIG_BODY);
    if (!resp->body)
        return QB_ENOMEM;
    memset(resp->body, 'x', BIG_BODY);
    resp->body_len = BIG_BODY;
    return QB_OK;
}

/* A shared route whose answer takes 100 ms to build (a bridge with many VMs). */
static int slow_calls;

static int h_slow(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    char buf[32];

    (void)arg;
    (void)req;
    usleep(100 * 1000);
    snprintf(buf, sizeof buf, "slow %d", ++slow_calls);
    resp->body = strdup(buf);
    resp->body_len = strlen(buf);
    return resp->body ? QB_OK : QB_ENOMEM;
}

static const struct qb_http_route routes[] = {
    {"/hello", h_hello}, {"/static", h_static}, {"/fail", h_fail},
    {"/conns", h_conns}, {"/big", h_big},       {"/slow", h_slow, .shared = true},
};
#define NROUTES (sizeof routes / sizeof routes[0])

/* ---- loop side -------------------------------------------------------------------------- */

static void on_server_closed(void *arg)
{
    struct fixture *f = arg;

    f->done_calls++;
    f->srv_closed = true;
    uv_sem_post(&f->closed_sem);
}

static void on_async(uv_async_t *a)
{
    struct fixture *f = a->data;
    enum request r;

    uv_mutex_lock(&f->lock);
    r = f->req;
    f->req = REQ_NONE;
    uv_mutex_unlock(&f->lock);
    if (r == REQ_CLOSE_SERVER || r == REQ_DONE) {
        if (f->srv) {
            qb_http_server_close(f->srv, on_server_closed, f);
            f->srv = NULL;
        }
    }
    if (r == REQ_DONE)
        uv_close((uv_handle_t *)&f->async, NULL);
}

/* Client thread -> loop. The client waits for each request's effect before the next, so
 * uv_async_send's coalescing never merges two. */
static void ask_loop(struct fixture *f, enum request r)
{
    uv_mutex_lock(&f->lock);
    f->req = r;
    uv_mutex_unlock(&f->lock);
    uv_async_send(&f->async);
}

static void client_main(void *arg)
{
    struct fixture *f = arg;

    f->client(f);
    ask_loop(f, REQ_DONE);
}

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof *f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(uv_mutex_init(&f->lock), 0);
    assert_int_equal(uv_sem_init(&f->closed_sem, 0), 0);
}

static void fixture_start(struct fixture *f, const char *listen)
{
    char err[256] = "";
    int rc = qb_http_server_start(&f->loop, listen, routes, NROUTES, f, &f->srv, err, sizeof err);

    if (rc != QB_OK)
        fail_msg("start %s: %s: %s", listen, qb_strerror(rc), err);
    if (!strncmp(listen, "unix:", 5))
        snprintf(f->addr, sizeof f->addr, "%s", listen);
    else
        snprintf(f->addr, sizeof f->addr, "127.0.0.1:%u", qb_http_server_port(f->srv));
}

/* Runs the loop until the client is done and the server closed; then checks and frees. */
static void fixture_run(struct fixture *f, void (*client)(struct fixture *f))
{
    f->client = client;
    assert_int_equal(uv_async_init(&f->loop, &f->async, on_async), 0);
    f->async.data = f;
    assert_int_equal(uv_thread_create(&f->thread, client_main, f), 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    uv_thread_join(&f->thread);
    assert_int_equal(f->done_calls, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    uv_mutex_destroy(&f->lock);
    uv_sem_destroy(&f->closed_sem);
}

/* ---- raw client helpers (run in the client thread) -------------------------------------- */

/* Connects to the 127.0.0.1 port of addr from source address src (NULL: any). All of
 * 127.0.0.0/8 is loopback, so 127.0.0.2, 127.0.0.3, ... are distinct clients. */
static int tcp_connect_from(const char *addr, const char *src)
{
    struct sockaddr_in sa = {.sin_family = AF_INET}, from = {.sin_family = AF_INET};
    const char *colon = strrchr(addr, ':');
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd >= 0 && src &&
        (inet_pton(AF_INET, src, &from.sin_addr) != 1 ||
         bind(fd, (struct sockaddr *)&from, sizeof from) < 0)) {
        close(fd);
        return -1;
    }
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int tcp_connect(const char *addr)
{
    return tcp_connect_from(addr, NULL);
}

/* Reads until EOF (or 5 s of silence); returns the byte count, -1 on error. */
static ssize_t read_all(int fd, char *out, size_t outlen)
{
    size_t len = 0;

    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        ssize_t r;

        if (poll(&p, 1, 5000) <= 0)
            return -1;
        r = recv(fd, out + len, outlen - len - 1, 0);
        if (r < 0 && errno == ECONNRESET)
            break;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        len += (size_t)r;
        if (len + 1 >= outlen)
            break;
    }
    out[len] = '\0';
    return (ssize_t)len;
}

/* Sends request as is, returns the whole answer in out (NUL-terminated). */
static ssize_t raw_exchange(const char *addr, const char *request, char *out, size_t outlen)
{
    int fd = tcp_connect(addr);
    ssize_t n;

    if (fd < 0)
        return -1;
    if (send(fd, request, strlen(request), MSG_NOSIGNAL) != (ssize_t)strlen(request)) {
        close(fd);
        return -1;
    }
    n = read_all(fd, out, outlen);
    close(fd);
    return n;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* cmocka's assert macros are not thread-safe: the client thread records, the test asserts. */
struct results {
    int rc[8], status[8];
    char *body[8];
    char raw[6][4096];
    ssize_t rawlen[6];
    size_t biglen;
};
static struct results res;

static void client_routes(struct fixture *f)
{
    static const char *const paths[] = {"/hello", "/nope",      "/static",
                                        "/fail",  "/hello?x=1", "/big"};
    size_t i;

    for (i = 0; i < sizeof paths / sizeof paths[0]; i++)
        res.rc[i] = qb_status_client_get(f->addr, paths[i], &res.body[i], &res.status[i], 5000);
}

/*
 * Three clients ask for /slow at once, then one more 400 ms later: the three
 * share one answer (built once; the loop is not held three times as long,
 * nor three bodies), the late one gets a fresh answer.
 */
static void client_shared(struct fixture *f)
{
    static const char req[] = "GET /slow HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    int fds[3];
    size_t i;

    for (i = 0; i < 3; i++) {
        fds[i] = tcp_connect(f->addr);
        if (fds[i] >= 0 && send(fds[i], req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
    for (i = 0; i < 3; i++) {
        res.rawlen[i] = fds[i] < 0 ? -1 : read_all(fds[i], res.raw[i], sizeof res.raw[i]);
        if (fds[i] >= 0)
            close(fds[i]);
    }
    usleep(400 * 1000);
    res.rawlen[3] = raw_exchange(f->addr, req, res.raw[3], sizeof res.raw[3]);
}

static void test_shared_answer(void **state)
{
    struct fixture f;

    (void)state;
    memset(&res, 0, sizeof res);
    slow_calls = 0;
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_shared);
    for (int i = 0; i < 3; i++) {
        assert_true(res.rawlen[i] > 0);
        assert_non_null(strstr(res.raw[i], "200 OK"));
        assert_non_null(strstr(res.raw[i], "\r\n\r\nslow 1"));
    }
    assert_true(res.rawlen[3] > 0);
    assert_non_null(strstr(res.raw[3], "\r\n\r\nslow 2"));
    assert_int_equal(slow_calls, 2);
}

static void test_get_routes(void **state)
{
    struct fixture f;
    size_t i;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    assert_true(qb_http_server_port(f.srv) > 0);
    fixture_run(&f, client_routes);

    for (i = 0; i < 6; i++)
        assert_int_equal(res.rc[i], QB_OK);
    assert_int_equal(res.status[0], 200);
    assert_string_equal(res.body[0], "hello world\n");
    assert_int_equal(res.status[1], 404);
    assert_string_equal(res.body[1], "not found\n");
    assert_int_equal(res.status[2], 503);
    assert_string_equal(res.body[2],
                        "{\"ready\":false,\"reason\":\"transport mqtt not connected\"}");
    assert_int_equal(res.status[3], 500); /* and ASan sees the handler's body freed */
    assert_int_equal(res.status[4], 200); /* the query string is not part of the path */
    assert_int_equal(res.status[5], 200);
    assert_int_equal(strlen(res.body[5]), BIG_BODY);
    for (i = 0; i < 6; i++)
        free(res.body[i]);
}

static void client_raw(struct fixture *f)
{
    static const char *const reqs[] = {
        "HEAD /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "POST /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        "DELETE /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /hello HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "GET /static HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "BREW /pot HTCPCP/1.0\r\n\r\n",
    };
    size_t i;

    for (i = 0; i < 6; i++)
        res.rawlen[i] = raw_exchange(f->addr, reqs[i], res.raw[i], sizeof res.raw[i]);
}

static void test_methods_and_head(void **state)
{
    struct fixture f;
    const char *end;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_raw);

    /* HEAD: the GET's headers, Content-Length included, and no body. */
    assert_true(res.rawlen[0] > 0);
    assert_non_null(strstr(res.raw[0], "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strcasestr(res.raw[0], "Content-Length: 12\r\n"));
    end = strstr(res.raw[0], "\r\n\r\n");
    assert_non_null(end);
    assert_string_equal(end + 4, "");
    /* Other methods: 405 with Allow. */
    assert_non_null(strstr(res.raw[1], "HTTP/1.1 405"));
    assert_non_null(strcasestr(res.raw[1], "\r\nAllow: GET, HEAD\r\n"));
    assert_non_null(strstr(res.raw[2], "HTTP/1.1 405"));
    /* A GET with a body: refused, not read. */
    assert_non_null(strstr(res.raw[3], "HTTP/1.1 413"));
    /* Content type as the handler set it. */
    assert_non_null(strstr(res.raw[4], "HTTP/1.1 503"));
    assert_non_null(strcasestr(res.raw[4], "Content-Type: application/json\r\n"));
    /* Garbage: MHD answers 4xx/5xx or hangs up; either way the server lives on (the loop
     * still closed cleanly). */
    assert_true(res.rawlen[5] == 0 || strstr(res.raw[5], "HTTP/1.1 4") ||
                strstr(res.raw[5], "HTTP/1.1 5"));
}

static void client_unix(struct fixture *f)
{
    res.rc[0] = qb_status_client_get(f->addr, "/hello", &res.body[0], &res.status[0], 5000);
}

static void test_unix_socket(void **state)
{
    struct fixture f;
    char listen[128], path[96], dir[64], err[256];
    struct qb_http_server *second = NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    snprintf(dir, sizeof dir, "/tmp/qb-http-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/status.sock", dir);
    snprintf(listen, sizeof listen, "unix:%s", path);

    /* A stale socket file (its owner died without unlinking it) is replaced. */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    close(fd);
    fixture_start(&f, listen);
    assert_int_equal(qb_http_server_port(f.srv), 0);
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0660);

    /* A live one is not. */
    assert_int_equal(
        qb_http_server_start(&f.loop, listen, routes, NROUTES, &f, &second, err, sizeof err),
        QB_EIO);
    assert_null(second);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "in use"));

    fixture_run(&f, client_unix);
    assert_int_equal(res.rc[0], QB_OK);
    assert_int_equal(res.status[0], 200);
    assert_string_equal(res.body[0], "hello world\n");
    free(res.body[0]);
    /* Closing removed the socket file. */
    assert_int_equal(stat(path, &st), -1);

    /* A regular file is never removed. */
    fixture_init(&f);
    fd = open(path, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(
        qb_http_server_start(&f.loop, listen, routes, NROUTES, &f, &second, err, sizeof err),
        QB_EIO);
    assert_non_null(strstr(err, "not a socket"));
    assert_int_equal(stat(path, &st), 0);
    unlink(path);
    assert_int_equal(rmdir(dir), 0);
    assert_int_equal(uv_loop_close(&f.loop), 0);
    uv_mutex_destroy(&f.lock);
    uv_sem_destroy(&f.closed_sem);
}

static void client_ipv6(struct fixture *f)
{
    res.rc[0] = qb_status_client_get(f->addr, "/hello", &res.body[0], &res.status[0], 5000);
}

static void test_ipv6_loopback(void **state)
{
    struct fixture f;
    char err[256];
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&sa, sizeof sa) == 0;

    (void)state;
    if (probe >= 0)
        close(probe);
    if (!have_v6) {
        print_message("no IPv6 loopback here: skipped\n");
        skip();
    }
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    assert_int_equal(
        qb_http_server_start(&f.loop, "[::1]:0", routes, NROUTES, &f, &f.srv, err, sizeof err),
        QB_OK);
    snprintf(f.addr, sizeof f.addr, "[::1]:%u", qb_http_server_port(f.srv));
    fixture_run(&f, client_ipv6);
    assert_int_equal(res.rc[0], QB_OK);
    assert_int_equal(res.status[0], 200);
    free(res.body[0]);
}

#define IDLE (QB_HTTP_MAX_CONNECTIONS - 1)

static void client_limit(struct fixture *f)
{
    int idle[IDLE + 8], i, n = 0;
    char *body = NULL, src[32];

    /* Fill every slot but one with a half-sent request, from as many sources as the
     * per-client limit needs. */
    for (i = 0; i < IDLE; i++) {
        snprintf(src, sizeof src, "127.0.0.%d", 2 + i / QB_HTTP_MAX_PER_CLIENT);
        idle[n] = tcp_connect_from(f->addr, src);
        if (idle[n] >= 0) {
            send(idle[n], "GET /hello HTTP/1.1\r\n", 21, MSG_NOSIGNAL);
            n++;
        }
    }
    res.rc[5] = n;
    /* The last slot: connections are accepted in order, so all the idle ones are in. */
    res.rc[0] = qb_status_client_get(f->addr, "/conns", &res.body[0], &res.status[0], 5000);
    /* Now the server is full while those idle ones stay open: one more can't be served.
     * Keep the last slot busy with another idle connection first. */
    idle[n] = tcp_connect_from(f->addr, "127.0.0.250");
    if (idle[n] >= 0)
        send(idle[n++], "GET /hello HTTP/1.1\r\n", 21, MSG_NOSIGNAL);
    for (i = 0; i < 4; i++) { /* a few more over the limit: refused or left waiting */
        idle[n] = tcp_connect_from(f->addr, "127.0.0.251");
        if (idle[n] >= 0)
            n++;
    }
    res.rc[1] = qb_status_client_get(f->addr, "/hello", &body, &res.status[1], 500);
    free(body);
    body = NULL;
    /* Free the slots; the server serves again. */
    for (i = 0; i < n; i++)
        close(idle[i]);
    res.rc[2] = qb_status_client_get(f->addr, "/conns", &res.body[2], &res.status[2], 5000);
}

static void test_connection_limit(void **state)
{
    struct fixture f;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_limit);
    assert_int_equal(res.rc[5], IDLE);
    assert_int_equal(res.rc[0], QB_OK);
    assert_int_equal(atoi(res.body[0]), QB_HTTP_MAX_CONNECTIONS);
    print_message("over the limit, qb_status_client_get said: %s\n", qb_strerror(res.rc[1]));
    assert_true(res.rc[1] < 0); /* over the limit: refused or timed out, not served */
    assert_int_equal(res.rc[2], QB_OK);
    assert_int_equal(res.status[2], 200);
    assert_true(atoi(res.body[2]) >= 1 && atoi(res.body[2]) <= QB_HTTP_MAX_CONNECTIONS);
    free(res.body[0]);
    free(res.body[2]);
}

static void client_close_under(struct fixture *f)
{
    char buf[256];
    int fd = tcp_connect(f->addr);

    send(fd, "GET /hello HTTP/1.1\r\nHost: t\r\n", 30, MSG_NOSIGNAL); /* headers unfinished */
    /* Accepted in order: once /conns answers, the half-sent request's connection is in. */
    res.rc[0] = qb_status_client_get(f->addr, "/conns", &res.body[0], &res.status[0], 5000);
    ask_loop(f, REQ_CLOSE_SERVER);
    uv_sem_wait(&f->closed_sem);
    res.rawlen[0] = read_all(fd, buf, sizeof buf); /* 0: the server hung up */
    close(fd);
    /* And the port is free again right after close. */
    res.rc[1] = tcp_connect(f->addr);
    if (res.rc[1] >= 0)
        close(res.rc[1]);
}

static void test_close_with_client_connected(void **state)
{
    struct fixture f;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_close_under);
    assert_int_equal(res.rc[0], QB_OK);
    assert_string_equal(res.body[0], "2");
    assert_int_equal(res.rawlen[0], 0);
    assert_int_equal(res.rc[1], -1); /* connection refused */
    assert_true(f.srv_closed);
    free(res.body[0]);
}

static void on_plain_closed(void *arg)
{
    (*(int *)arg)++;
}

static void test_start_errors(void **state)
{
    static const char *const bad[] = {
        "",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:80x",
        "::1:80",
        "[::1]80",
        "[::1",
        "[nonsense]:80",
        "example.com:80",
        "1.2.3.4.5:80",
        "unix:",
        ("unix:/tmp/an/absurdly/long/path/that/does/not/fit/into/sun_path/because/it/is/longer/"
         "than/one/hundred/and/eight/bytes.sock"),
    };
    struct qb_http_server *a = NULL, *b = NULL;
    uv_loop_t loop;
    char err[256], listen[64], port[16];
    int closed = 0;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(qb_http_listen_validate(bad[i], err, sizeof err), QB_EINVAL);
        assert_true(err[0] != '\0');
    }
    assert_int_equal(qb_http_listen_validate("localhost:9464", err, sizeof err), QB_OK);
    assert_int_equal(qb_http_listen_validate("[::]:9464", err, sizeof err), QB_OK);
    assert_int_equal(qb_http_listen_validate("unix:/run/qmp-bridge/status.sock", err, sizeof err),
                     QB_OK);

    assert_int_equal(uv_loop_init(&loop), 0);
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(
            qb_http_server_start(&loop, bad[i], routes, NROUTES, NULL, &b, err, sizeof err),
            QB_EINVAL);
    assert_int_equal(
        qb_http_server_start(&loop, "127.0.0.1:0", routes, 0, NULL, &b, err, sizeof err),
        QB_EINVAL);

    /* The same port twice: QB_EIO naming the address and the errno text. */
    assert_int_equal(
        qb_http_server_start(&loop, "localhost:0", routes, NROUTES, NULL, &a, err, sizeof err),
        QB_OK);
    snprintf(port, sizeof port, "%u", qb_http_server_port(a));
    snprintf(listen, sizeof listen, "127.0.0.1:%s", port);
    assert_int_equal(
        qb_http_server_start(&loop, listen, routes, NROUTES, NULL, &b, err, sizeof err), QB_EIO);
    assert_null(b);
    assert_non_null(strstr(err, listen));
    assert_non_null(strstr(err, strerror(EADDRINUSE)));

    /* A directory that does not exist for a Unix socket: QB_EIO too. */
    assert_int_equal(qb_http_server_start(&loop, "unix:/nonexistent-qb-dir/s.sock", routes, NROUTES,
                                          NULL, &b, err, sizeof err),
                     QB_EIO);
    assert_non_null(strstr(err, strerror(ENOENT)));

    qb_http_server_close(a, on_plain_closed, &closed);
    qb_http_server_close(NULL, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(closed, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- qb_status_client_get against scripted peers
 * ------------------------------------------------- */

struct peer {
    int lfd;
    const char *answer;
    bool accept;
};

static void peer_main(void *arg)
{
    struct peer *p = arg;
    char buf[2048];
    int fd;

    if (!p->accept)
        return;
    fd = accept(p->lfd, NULL, NULL);
    if (fd < 0)
        return;
    (void)recv(fd, buf, sizeof buf, 0); /* the request: one small segment */
    (void)send(fd, p->answer, strlen(p->answer), MSG_NOSIGNAL);
    close(fd);
}

/* One qb_status_client_get against a peer that sends answer and closes (accept false: never
 * accepts). */
static int get_from_peer(const char *answer, bool accept, int *status, char **body,
                         uint32_t timeout_ms)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    struct peer p = {.answer = answer, .accept = accept};
    uv_thread_t t;
    char addr[64];
    int rc;

    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    p.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(p.lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(p.lfd, 4), 0);
    getsockname(p.lfd, (struct sockaddr *)&sa, &len);
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
    assert_int_equal(uv_thread_create(&t, peer_main, &p), 0);
    rc = qb_status_client_get(addr, "/vms", body, status, timeout_ms);
    uv_thread_join(&t);
    close(p.lfd);
    return rc;
}

static void test_client_parsing(void **state)
{
    char *body = NULL;
    int status = 0, port_fd;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    char addr[64];

    (void)state;
    assert_int_equal(get_from_peer("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n"
                                   "[{\"name\":\"vm1\"}]",
                                   true, &status, &body, 5000),
                     QB_OK);
    assert_int_equal(status, 200);
    assert_string_equal(body, "[{\"name\":\"vm1\"}]"); /* no Content-Length: read to close */
    free(body);

    assert_int_equal(get_from_peer("HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nabcEXTRA",
                                   true, &status, &body, 5000),
                     QB_OK);
    assert_int_equal(status, 404);
    assert_string_equal(body, "abc");
    free(body);

    assert_int_equal(get_from_peer("HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\nabc", true,
                                   &status, &body, 5000),
                     QB_EPROTO); /* short body */
    assert_null(body);
    assert_int_equal(get_from_peer("SSH-2.0-OpenSSH\r\n\r\n", true, &status, &body, 5000),
                     QB_EPROTO);
    assert_int_equal(get_from_peer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                   true, &status, &body, 5000),
                     QB_EPROTO);
    assert_int_equal(get_from_peer("HTTP/1.0 200 OK\r\nContent-Length: 99999999999\r\n\r\n", true,
                                   &status, &body, 5000),
                     QB_ETOOBIG);
    assert_int_equal(get_from_peer("", true, &status, &body, 5000), QB_EIO); /* hung up */
    /* A listener that never answers: the deadline holds. */
    assert_int_equal(get_from_peer("", false, &status, &body, 300), QB_ETIMEDOUT);
    assert_null(body);

    /* Nobody listening. */
    port_fd = socket(AF_INET, SOCK_STREAM, 0);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    bind(port_fd, (struct sockaddr *)&sa, sizeof sa);
    getsockname(port_fd, (struct sockaddr *)&sa, &len);
    snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
    close(port_fd);
    assert_int_equal(qb_status_client_get(addr, "/vms", &body, &status, 2000), QB_EIO);
    assert_int_equal(
        qb_status_client_get("unix:/nonexistent-qb/s.sock", "/vms", &body, &status, 2000), QB_EIO);
    assert_int_equal(qb_status_client_get(addr, "no-slash", &body, &status, 2000), QB_EINVAL);
    assert_int_equal(qb_status_client_get(addr, "/a b", &body, &status, 2000), QB_EINVAL);
    assert_int_equal(qb_status_client_get("nonsense", "/vms", &body, &status, 2000), QB_EINVAL);
}

/* QB_HTTP_MAX_PER_CLIENT idle connections from one address: one more from there is closed at
 * once, another address is served. */
static void client_per_client(struct fixture *f)
{
    int idle[QB_HTTP_MAX_PER_CLIENT], extra, i, n = 0;
    char buf[64];

    for (i = 0; i < QB_HTTP_MAX_PER_CLIENT; i++) {
        idle[n] = tcp_connect_from(f->addr, "127.0.0.2");
        if (idle[n] >= 0)
            send(idle[n++], "GET /hello HTTP/1.1\r\n", 21, MSG_NOSIGNAL);
    }
    res.rc[5] = n;
    /* served from another address, so all the idle ones are in by now */
    res.rc[0] = qb_status_client_get(f->addr, "/conns", &res.body[0], &res.status[0], 5000);
    extra = tcp_connect_from(f->addr, "127.0.0.2");
    if (extra >= 0) {
        send(extra, "GET /hello HTTP/1.1\r\n\r\n", 23, MSG_NOSIGNAL);
        res.rawlen[0] = read_all(extra, buf, sizeof buf); /* 0: closed unanswered */
        close(extra);
    } else {
        res.rawlen[0] = 0; /* refused outright is as good */
    }
    res.rc[1] = qb_status_client_get(f->addr, "/hello", &res.body[1], &res.status[1], 5000);
    for (i = 0; i < n; i++)
        close(idle[i]);
}

static void test_per_client_limit(void **state)
{
    struct fixture f;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_per_client);
    assert_int_equal(res.rc[5], QB_HTTP_MAX_PER_CLIENT);
    assert_int_equal(res.rc[0], QB_OK);
    assert_int_equal(atoi(res.body[0]), QB_HTTP_MAX_PER_CLIENT + 1);
    assert_int_equal(res.rawlen[0], 0);
    assert_int_equal(res.rc[1], QB_OK);
    assert_int_equal(res.status[1], 200);
    free(res.body[0]);
    free(res.body[1]);
}

/* Lines a trickling client would send, one a second: far past the head deadline. */
#define TRICKLE_LINES (3 * QB_HTTP_HEAD_DEADLINE_S)

/*
 * A client that sends its request head one line a second, never idle long enough for the
 * idle timeout, is closed at the head deadline, before it could finish. After a first
 * answered request, the connection does not stay open for a trickled second one either
 * (libmicrohttpd closes it after the answer here; were it kept alive, the deadline would
 * start again at the answer).
 */
static void client_trickle(struct fixture *f)
{
    for (int round = 0; round < 2; round++) {
        char buf[4096];
        int fd = tcp_connect_from(f->addr, "127.0.0.3"), sent = 0;

        if (fd < 0)
            break;
        if (round == 1) {
            /* a whole request first; read its answer, leave the connection open */
            ssize_t r;
            struct pollfd p = {.fd = fd, .events = POLLIN};

            send(fd, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 32, MSG_NOSIGNAL);
            r = poll(&p, 1, 5000) == 1 ? recv(fd, buf, sizeof buf - 1, 0) : -1;
            res.rawlen[1] = r;
            if (r > 0) {
                buf[r] = '\0';
                res.status[2] = strstr(buf, "hello world") ? 200 : 0;
            }
        }
        send(fd, "GET /hello HTTP/1.1\r\n", 21, MSG_NOSIGNAL);
        for (sent = 0; sent < TRICKLE_LINES; sent++) {
            struct pollfd p = {.fd = fd, .events = POLLIN};

            if (poll(&p, 1, 1000) == 1)
                break; /* the server closed (EOF) or answered */
            if (send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL) != 11)
                break;
        }
        res.rc[2 + round] = sent;
        if (sent == TRICKLE_LINES)
            send(fd, "\r\n", 2, MSG_NOSIGNAL);
        res.rawlen[2 + round] = read_all(fd, buf, sizeof buf); /* 0: closed unanswered */
        close(fd);
    }
    res.rc[0] = qb_status_client_get(f->addr, "/conns", &res.body[0], &res.status[0], 5000);
}

static void test_head_deadline(void **state)
{
    struct fixture f;

    (void)state;
    memset(&res, 0, sizeof res);
    fixture_init(&f);
    fixture_start(&f, "127.0.0.1:0");
    fixture_run(&f, client_trickle);
    print_message("closed after %d and %d header lines\n", res.rc[2], res.rc[3]);
    assert_true(res.rc[2] < TRICKLE_LINES);
    assert_int_equal(res.rawlen[2], 0);
    assert_true(res.rawlen[1] > 0);
    assert_int_equal(res.status[2], 200);
    assert_true(res.rc[3] < TRICKLE_LINES);
    assert_int_equal(res.rawlen[3], 0);
    assert_int_equal(res.rc[0], QB_OK);
    assert_int_equal(res.status[0], 200);
    assert_true(f.cut_seen >= 1);
    free(res.body[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_routes),
        cmocka_unit_test(test_shared_answer),
        cmocka_unit_test(test_methods_and_head),
        cmocka_unit_test(test_unix_socket),
        cmocka_unit_test(test_ipv6_loopback),
        cmocka_unit_test(test_connection_limit),
        cmocka_unit_test(test_close_with_client_connected),
        cmocka_unit_test(test_per_client_limit),
        cmocka_unit_test(test_head_deadline),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_client_parsing),
    };

    if (getenv("QB_TEST_DEBUG")) /* libmicrohttpd's own messages are logged at debug */
        qb_log_set_level(QB_LOG_DEBUG);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
