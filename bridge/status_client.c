/*
 * status_client.c - `qmp-bridge --status`: a one-shot blocking HTTP/1.0 client
 * and the table it prints from /readyz and /vms.
 *
 * HTTP/1.0 keeps the client small: the daemon closes after one answer, which is
 * read to its Content-Length or to the close; a chunked answer is refused. Every
 * wait is a poll() against one deadline for the whole exchange, so a daemon that
 * accepts and then hangs cannot hang the command.
 */
#include "status_client.h"

#include "address.h"
#include "buffer.h"
#include "error.h"
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Header block accepted before the body. */
#define STATUS_CLIENT_MAX_HEADER (64u * 1024)
/* What one read asks for at least; the buffer grows by doubling. */
#define STATUS_CLIENT_READ_MIN 4096u

/* ---- HTTP ------------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline. Returns QB_OK, QB_ETIMEDOUT or QB_EIO. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};

    for (;;) {
        int64_t left = deadline - now_ms();
        int n;

        if (left <= 0)
            return QB_ETIMEDOUT;
        n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return QB_OK;
        if (n == 0)
            return QB_ETIMEDOUT;
        if (errno != EINTR)
            return QB_EIO;
    }
}

static int client_connect(const struct sockaddr_storage *ss, socklen_t sslen, int64_t deadline,
                          int *out)
{
    int fd, err = 0, rc;
    socklen_t elen = sizeof err;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return QB_EIO;
    if (connect(fd, (const struct sockaddr *)ss, sslen) < 0) {
        /* TCP completes in the background; a Unix socket either connects at once or fails
         * (EAGAIN: its backlog is full, which for a one-shot client is a failure too). */
        rc = errno == EINPROGRESS ? wait_fd(fd, POLLOUT, deadline) : QB_EIO;
        if (rc == QB_OK && (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0 || err != 0))
            rc = QB_EIO;
        if (rc < 0) {
            close(fd);
            return rc;
        }
    }
    *out = fd;
    return QB_OK;
}

/* Parses the header block [p, p+hlen) (ending before the blank line). */
static int parse_head(const char *p, size_t hlen, int *status, long long *content_length)
{
    const char *line = p, *end = p + hlen;

    *content_length = -1;
    if (hlen < 12 || strncmp(p, "HTTP/1.", 7) || p[8] != ' ' || p[9] < '1' || p[9] > '5' ||
        p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (hlen > 12 && p[12] != ' ' && p[12] != '\r'))
        return QB_EPROTO;
    *status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        size_t n = eol ? (size_t)(eol - line) : (size_t)(end - line);

        if (n >= 15 && !strncasecmp(line, "Content-Length:", 15)) {
            const char *v = line + 15;
            long long cl = 0;
            while (v < line + n && (*v == ' ' || *v == '\t'))
                v++;
            if (v == line + n || *v < '0' || *v > '9')
                return QB_EPROTO;
            while (v < line + n && *v >= '0' && *v <= '9') {
                if (cl > (long long)QB_STATUS_CLIENT_MAX_BODY)
                    return QB_ETOOBIG;
                cl = cl * 10 + (*v++ - '0');
            }
            *content_length = cl;
        } else if (n >= 18 && !strncasecmp(line, "Transfer-Encoding:", 18)) {
            return QB_EPROTO; /* an HTTP/1.0 request must not get a chunked answer */
        }
        line = eol ? eol + 1 : end;
    }
    if (*content_length > (long long)QB_STATUS_CLIENT_MAX_BODY)
        return QB_ETOOBIG;
    return QB_OK;
}

/* Parses address (listen syntax) into a socket address. Returns QB_OK or QB_EINVAL. */
static int client_address(const char *address, struct sockaddr_storage *ss, socklen_t *len,
                          bool *is_unix)
{
    struct qb_address a;

    if (!address || !*address || qb_address_parse(address, QB_ADDRESS_HTTP, &a) != QB_OK ||
        qb_address_sockaddr(&a, ss, len) != QB_OK)
        return QB_EINVAL;
    *is_unix = a.is_unix;
    return QB_OK;
}

int qb_status_client_get(const char *address, const char *path, char **body, int *status,
                         uint32_t timeout_ms)
{
    const size_t limit = STATUS_CLIENT_MAX_HEADER + QB_STATUS_CLIENT_MAX_BODY + 8192;
    struct sockaddr_storage ss;
    socklen_t sslen;
    struct qb_buffer buf;
    char req[1024], *sep;
    size_t sent = 0, reqlen, hlen = 0;
    long long clen = -1;
    int64_t deadline = now_ms() + timeout_ms;
    int fd = -1, rc, n;
    bool head_done = false, is_unix = false;

    *body = NULL;
    *status = 0;
    if (client_address(address, &ss, &sslen, &is_unix) < 0 || !path || path[0] != '/' ||
        strpbrk(path, " \r\n\t"))
        return QB_EINVAL;
    n = snprintf(req, sizeof req,
                 "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: qmp-bridge/" QB_VERSION
                 "\r\nAccept: */*\r\n\r\n",
                 path, is_unix ? "localhost" : address);
    if (n < 0 || (size_t)n >= sizeof req)
        return QB_EINVAL;
    reqlen = (size_t)n;

    qb_buffer_init(&buf, 0);
    rc = client_connect(&ss, sslen, deadline, &fd);
    while (rc == QB_OK && sent < reqlen) {
        ssize_t w = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
        if (w > 0)
            sent += (size_t)w;
        else if (w < 0 && (errno == EAGAIN || errno == EINTR))
            rc = wait_fd(fd, POLLOUT, deadline);
        else
            rc = QB_EIO;
    }
    /* Read until the peer closes, or until Content-Length bytes of body are in. */
    while (rc == QB_OK) {
        size_t room;
        ssize_t r;

        if (head_done && clen >= 0 && buf.len - hlen >= (size_t)clen)
            break;
        if (buf.len + 1 >= limit) {
            rc = QB_ETOOBIG;
            break;
        }
        if (qb_buffer_reserve(&buf, STATUS_CLIENT_READ_MIN) < 0) {
            rc = QB_ENOMEM;
            break;
        }
        room = buf.cap - buf.len - 1; /* the NUL after each read */
        if (room > limit - 1 - buf.len)
            room = limit - 1 - buf.len;
        r = recv(fd, buf.data + buf.len, room, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            rc = wait_fd(fd, POLLIN, deadline);
            continue;
        }
        if (r < 0) {
            rc = QB_EIO;
            break;
        }
        if (r == 0) {
            if (!head_done)
                rc = buf.len == 0 ? QB_EIO : QB_EPROTO;
            else if (clen >= 0 && buf.len - hlen < (size_t)clen)
                rc = QB_EPROTO;
            break;
        }
        qb_buffer_commit(&buf, (size_t)r);
        if (!head_done) {
            sep = strstr(qb_buffer_cstr(&buf), "\r\n\r\n");
            if (!sep) {
                if (buf.len > STATUS_CLIENT_MAX_HEADER)
                    rc = QB_EPROTO;
                continue;
            }
            rc = parse_head(buf.data, (size_t)(sep - buf.data), status, &clen);
            hlen = (size_t)(sep - buf.data) + 4;
            head_done = true;
        }
        if (head_done && buf.len - hlen > QB_STATUS_CLIENT_MAX_BODY)
            rc = QB_ETOOBIG;
    }
    if (fd >= 0)
        close(fd);
    if (rc == QB_OK) {
        size_t blen = buf.len - hlen;
        if (clen >= 0 && blen > (size_t)clen)
            blen = (size_t)clen;
        memmove(buf.data, buf.data + hlen, blen);
        buf.len = blen;
        *body = qb_buffer_take(&buf, NULL);
        if (*body)
            return QB_OK;
        rc = QB_ENOMEM;
    }
    qb_buffer_free(&buf);
    *status = 0;
    return rc;
}

/* ---- the table ------------------------------------------------------------------------- */

/*
 * One string of the daemon's answer for the terminal, in buf: a run state or a
 * reason is a QEMU's (or a broker's) text, and an escape sequence or a newline
 * in it would rewrite the screen or forge a row, so control characters are
 * shown as \xNN (qb_log_escape, as in the log). Returns buf.
 */
static const char *term_text(char *buf, size_t len, const char *text)
{
    qb_log_escape(buf, len, text ? text : "");
    return buf;
}

#define TERM_FIELD 512

static const char *str_or(char *buf, const json_t *o, const char *key, const char *fallback)
{
    const char *v = json_string_value(json_object_get(o, key));

    return term_text(buf, TERM_FIELD, v && v[0] ? v : fallback);
}

int qb_status_client_print(const char *listen, FILE *out)
{
    char *body = NULL;
    int status = 0, rc, ready;
    json_t *doc, *vms;
    json_error_t jerr;
    size_t i;

    rc = qb_status_client_get(listen, "/readyz", &body, &status, 3000);
    if (rc < 0) {
        fprintf(stderr, "qmp-bridge: cannot reach the daemon at %s: %s\n", listen, qb_strerror(rc));
        return 3;
    }
    doc = json_loads(body, 0, &jerr);
    free(body);
    if (!json_is_object(doc)) {
        fprintf(stderr, "qmp-bridge: %s/readyz answered %d with no JSON object\n", listen, status);
        json_decref(doc);
        return 3;
    }
    ready = json_is_true(json_object_get(doc, "ready"));
    fprintf(out, "ready: %s\n", ready ? "yes" : "no");
    json_array_foreach(json_object_get(doc, "reasons"), i, vms)
    {
        char reason[TERM_FIELD];

        fprintf(out, "  - %s\n", term_text(reason, sizeof(reason), json_string_value(vms)));
    }
    json_decref(doc);

    rc = qb_status_client_get(listen, "/vms", &body, &status, 3000);
    if (rc < 0 || status != 200) {
        fprintf(stderr, "qmp-bridge: %s/vms: %s (HTTP %d)\n", listen,
                rc < 0 ? qb_strerror(rc) : "unexpected status", status);
        free(body);
        return 3;
    }
    vms = json_loads(body, 0, &jerr);
    free(body);
    if (!json_is_array(vms)) {
        fprintf(stderr, "qmp-bridge: %s/vms is not a JSON array\n", listen);
        json_decref(vms);
        return 3;
    }
    fprintf(out, "%-20s %-12s %-12s %-8s %-24s %8s %5s  %s\n", "VM", "SESSION", "RUN-STATE", "QEMU",
            "LAST-EVENT", "SEQ", "RECON", "ADDRESS");
    json_array_foreach(vms, i, doc)
    {
        char f[6][TERM_FIELD];

        fprintf(out, "%-20s %-12s %-12s %-8s %-24s %8lld %5lld  %s\n",
                str_or(f[0], doc, "name", "?"), str_or(f[1], doc, "session", "-"),
                str_or(f[2], doc, "run_state", "-"), str_or(f[3], doc, "qemu_version", "-"),
                str_or(f[4], doc, "last_event", "-"),
                (long long)json_integer_value(json_object_get(doc, "sequence")),
                (long long)json_integer_value(json_object_get(doc, "reconnects")),
                str_or(f[5], doc, "address", "-"));
    }
    fprintf(out, "%zu VMs\n", json_array_size(vms));
    json_decref(vms);
    return ready ? 0 : 1;
}
