/*
 * qmp_client.c - one QMP session on the bridge's libuv loop.
 *
 * Lifetime rules that shape this file:
 * - Memory is released only from a libuv close callback, never synchronously,
 *   so every callback we make can be followed by a look at c->state without
 *   fear: a free() or disconnect() from inside a callback only flags the
 *   client and starts closing handles.
 * - One timer per client. Before READY it bounds the whole handshake (a QEMU
 *   whose monitor is busy with another client accepts into the backlog and
 *   never greets, so bounding only connect() is not enough). In READY it is
 *   armed for the earliest command deadline and stopped when none is pending,
 *   so an idle session has no timer running.
 * - Pending commands are a FIFO list (ids only grow, QEMU answers mostly in
 *   order); a command is unlinked before its callback runs so the callback can
 *   do anything, including failing every other command through free().
 */
#include "qmp_client.h"

#include "address.h"
#include "error.h"
#include "log.h"
#include "qmp_framer.h"
#include "qmp_greetings.h"

#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define QB_QMP_DEFAULT_MAX_LINE ((size_t)16 * 1024 * 1024)

struct qb_qmp_pending {
    struct qb_qmp_pending *next;
    uint64_t id;
    uint64_t deadline; /* uv_now() milliseconds; 0 = none */
    qb_qmp_reply_cb cb;
    void *cb_arg;
};

/* One queued write: the request and the serialised line in a single allocation. */
struct qb_qmp_write {
    uv_write_t req;
    struct qb_qmp_client *c;
    size_t len;
    char data[];
};

struct qb_qmp_client {
    uv_loop_t *loop;
    char *vm_name;
    char *address; /* of the current/last connect; owned */
    char *reason;  /* why the session is closing; owned until on_closed */
    int close_err;
    int alloc_err; /* why alloc_cb refused a buffer, reported with UV_ENOBUFS */

    struct qb_qmp_callbacks cb;
    void *cb_arg;
    uint32_t connect_timeout_ms;

    enum qb_qmp_state state;
    unsigned freeing : 1;
    unsigned paused : 1;
    unsigned reading : 1;
    unsigned handles_open; /* handles whose close callback has not run yet */

    struct qb_fair_reads *fair;      /* borrowed; NULL: no per-turn bound */
    struct qb_fair_entry fair_entry; /* parked: a read filled the buffer, resume next turn */

    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } sock;
    uv_connect_t connect_req;
    uv_timer_t timer;
    uint64_t handshake_deadline;

    struct qb_framer framer;
    const char *line; /* the line being dispatched (borrowed from the framer), or NULL */
    size_t line_len;
    struct qb_qmp_pending *pending_head;
    struct qb_qmp_pending *pending_tail;
    uint64_t next_id;
    uint64_t session_first_id; /* replies with ids in [first, next) are late, not foreign */

    struct qb_qmp_greeting *greeting; /* shared with sessions greeted alike */
    char version[32];
};

static const char *const qb_qmp_state_names[] = {
    [QB_QMP_IDLE] = "idle",         [QB_QMP_CONNECTING] = "connecting",
    [QB_QMP_GREETING] = "greeting", [QB_QMP_NEGOTIATING] = "negotiating",
    [QB_QMP_READY] = "ready",       [QB_QMP_CLOSING] = "closing",
};

const char *qb_qmp_state_name(enum qb_qmp_state state)
{
    if ((unsigned)state >= sizeof(qb_qmp_state_names) / sizeof(qb_qmp_state_names[0]))
        return "?";
    return qb_qmp_state_names[state];
}

static void qb_qmp_set_state(struct qb_qmp_client *c, enum qb_qmp_state state)
{
    QB_LOG_DEBUG(c->vm_name, "qmp session: %s -> %s", qb_qmp_state_name(c->state),
                 qb_qmp_state_name(state));
    c->state = state;
}

static int qb_qmp_session_active(const struct qb_qmp_client *c)
{
    return c->state != QB_QMP_IDLE && c->state != QB_QMP_CLOSING;
}

/* ---- handle bookkeeping ------------------------------------------------ */

static void qb_qmp_release(struct qb_qmp_client *c)
{
    struct qb_qmp_pending *p;

    /* Pending commands were failed in qb_qmp_client_free; this is only a safety net. */
    while ((p = c->pending_head) != NULL) {
        c->pending_head = p->next;
        free(p);
    }
    qb_framer_reset(&c->framer);
    qb_qmp_greeting_put(c->greeting);
    free(c->reason);
    free(c->address);
    free(c->vm_name);
    free(c);
}

static void qb_qmp_maybe_release(struct qb_qmp_client *c)
{
    if (c->freeing && c->handles_open == 0)
        qb_qmp_release(c);
}

static void qb_qmp_timer_close_cb(uv_handle_t *h)
{
    struct qb_qmp_client *c = h->data;

    c->handles_open--;
    qb_qmp_maybe_release(c);
}

/* ---- pending commands -------------------------------------------------- */

static struct qb_qmp_pending *qb_qmp_pending_take(struct qb_qmp_client *c, uint64_t id)
{
    struct qb_qmp_pending **link = &c->pending_head;
    struct qb_qmp_pending *prev = NULL;

    while (*link != NULL) {
        struct qb_qmp_pending *p = *link;

        if (p->id == id) {
            *link = p->next;
            if (c->pending_tail == p)
                c->pending_tail = prev;
            return p;
        }
        prev = p;
        link = &p->next;
    }
    return NULL;
}

static struct qb_qmp_pending *qb_qmp_pending_pop(struct qb_qmp_client *c)
{
    struct qb_qmp_pending *p = c->pending_head;

    if (p != NULL) {
        c->pending_head = p->next;
        if (c->pending_head == NULL)
            c->pending_tail = NULL;
    }
    return p;
}

/* Calls and frees one unlinked command. cb may re-enter the client in any way. */
static void qb_qmp_pending_finish(struct qb_qmp_client *c, struct qb_qmp_pending *p, int status,
                                  json_t *reply)
{
    qb_qmp_reply_cb cb = p->cb;
    void *arg = p->cb_arg;

    free(p);
    cb(c, status, reply, arg);
}

/* Fails every pending command with QB_ECLOSED; safe if a callback frees or reconnects. */
static void qb_qmp_pending_fail_all(struct qb_qmp_client *c)
{
    struct qb_qmp_pending *p;

    while ((p = qb_qmp_pending_pop(c)) != NULL)
        qb_qmp_pending_finish(c, p, QB_ECLOSED, NULL);
}

/* Arms the one timer for the nearest deadline of the current state, or stops it. */
static void qb_qmp_timer_arm(struct qb_qmp_client *c);

/* ---- closing ----------------------------------------------------------- */

static void qb_qmp_sock_close_cb(uv_handle_t *h)
{
    struct qb_qmp_client *c = h->data;
    char *reason = c->reason;
    int err = c->close_err;

    c->handles_open--;
    c->reason = NULL;
    qb_qmp_pending_fail_all(c);
    qb_framer_reset(&c->framer);
    QB_LOG_INFO(c->vm_name, "qmp session: %s -> %s (%s: %s)", qb_qmp_state_name(c->state),
                qb_qmp_state_name(QB_QMP_IDLE), qb_strerror(err), reason ? reason : "");
    c->state = QB_QMP_IDLE;
    if (!c->freeing && c->cb.on_closed != NULL)
        c->cb.on_closed(c, err, reason ? reason : "", c->cb_arg);
    free(reason);
    qb_qmp_maybe_release(c);
}

/*
 * Starts closing the session with err and a formatted reason; the first
 * reason wins. on_closed follows from the socket's close callback.
 */
static void qb_qmp_close(struct qb_qmp_client *c, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void qb_qmp_close(struct qb_qmp_client *c, int err, const char *fmt, ...)
{
    va_list ap;
    char *reason = NULL;

    if (!qb_qmp_session_active(c))
        return;
    va_start(ap, fmt);
    if (vasprintf(&reason, fmt, ap) < 0)
        reason = NULL; /* on_closed then gets "" rather than nothing */
    va_end(ap);
    free(c->reason);
    c->reason = reason;
    c->close_err = err;
    QB_LOG_DEBUG(c->vm_name, "qmp session: %s -> %s (%s)", qb_qmp_state_name(c->state),
                 qb_qmp_state_name(QB_QMP_CLOSING), reason ? reason : qb_strerror(err));
    c->state = QB_QMP_CLOSING;
    if (c->reading) {
        uv_read_stop(&c->sock.stream);
        c->reading = 0;
    }
    if (c->fair)
        qb_fair_reads_unpark(c->fair, &c->fair_entry);
    uv_timer_stop(&c->timer);
    uv_close(&c->sock.handle, qb_qmp_sock_close_cb);
}

/* ---- timer ------------------------------------------------------------- */

static void qb_qmp_timer_cb(uv_timer_t *t)
{
    struct qb_qmp_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    struct qb_qmp_pending *p;

    if (c->state == QB_QMP_CONNECTING || c->state == QB_QMP_GREETING ||
        c->state == QB_QMP_NEGOTIATING) {
        qb_qmp_close(c, QB_ETIMEDOUT, "no QMP session with %s within %u ms (stuck %s)", c->address,
                     c->connect_timeout_ms, qb_qmp_state_name(c->state));
        return;
    }
    if (c->state != QB_QMP_READY)
        return;

    /* Expire one at a time and rescan: a callback may have taken any other command. */
    for (;;) {
        struct qb_qmp_pending **link = &c->pending_head;

        p = NULL;
        for (; *link != NULL; link = &(*link)->next) {
            if ((*link)->deadline != 0 && (*link)->deadline <= now) {
                p = qb_qmp_pending_take(c, (*link)->id);
                break;
            }
        }
        if (p == NULL)
            break;
        QB_LOG_WARN(c->vm_name, "qmp command id %llu timed out", (unsigned long long)p->id);
        qb_qmp_pending_finish(c, p, QB_ETIMEDOUT, NULL);
        if (c->state != QB_QMP_READY)
            return;
    }
    qb_qmp_timer_arm(c);
}

static void qb_qmp_timer_arm(struct qb_qmp_client *c)
{
    uint64_t deadline = 0;
    uint64_t now = uv_now(c->loop);

    if (c->state == QB_QMP_READY) {
        for (struct qb_qmp_pending *p = c->pending_head; p != NULL; p = p->next) {
            if (p->deadline != 0 && (deadline == 0 || p->deadline < deadline))
                deadline = p->deadline;
        }
    } else if (qb_qmp_session_active(c)) {
        deadline = c->handshake_deadline;
    }
    if (deadline == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, qb_qmp_timer_cb, deadline > now ? deadline - now : 0, 0);
}

/* ---- writing ----------------------------------------------------------- */

static void qb_qmp_write_cb(uv_write_t *req, int status)
{
    struct qb_qmp_write *w = (struct qb_qmp_write *)req;
    struct qb_qmp_client *c = w->c;

    free(w);
    /* UV_ECANCELED means we closed the handle ourselves; the close path reports that. */
    if (status < 0 && status != UV_ECANCELED)
        qb_qmp_close(c, QB_EIO, "write to %s failed: %s", c->address, uv_strerror(status));
}

/*
 * Serialises msg (borrowed) as one line and queues it. Returns QB_OK,
 * QB_ENOMEM, or QB_EIO after starting to close the session.
 */
static int qb_qmp_send(struct qb_qmp_client *c, json_t *msg)
{
    size_t flags = JSON_COMPACT;
    size_t len = json_dumpb(msg, NULL, 0, flags);
    struct qb_qmp_write *w;
    uv_buf_t buf;
    int rc;

    if (len == 0)
        return QB_ENOMEM;
    w = malloc(sizeof(*w) + len + 1);
    if (w == NULL)
        return QB_ENOMEM;
    if (json_dumpb(msg, w->data, len, flags) != len) {
        free(w);
        return QB_ENOMEM;
    }
    w->data[len] = '\n';
    w->len = len + 1;
    w->c = c;
    buf = uv_buf_init(w->data, (unsigned)w->len);
    rc = uv_write(&w->req, &c->sock.stream, &buf, 1, qb_qmp_write_cb);
    if (rc < 0) {
        free(w);
        qb_qmp_close(c, QB_EIO, "write to %s failed: %s", c->address, uv_strerror(rc));
        return QB_EIO;
    }
    return QB_OK;
}

/*
 * Sends one command and queues its reply callback. In every case but a
 * QB_ENOMEM return, cb is called exactly once later (QB_ECLOSED if the write
 * fails, because that closes the session).
 */
static int qb_qmp_send_command(struct qb_qmp_client *c, const char *command, json_t *arguments,
                               uint32_t timeout_ms, qb_qmp_reply_cb cb, void *cb_arg)
{
    struct qb_qmp_pending *p;
    json_t *msg = json_object();
    int rc = QB_ENOMEM;

    p = calloc(1, sizeof(*p));
    if (msg == NULL || p == NULL)
        goto out;
    p->id = c->next_id++;
    if (json_object_set_new(msg, "execute", json_string(command)) < 0 ||
        (arguments != NULL && json_object_set(msg, "arguments", arguments) < 0) ||
        json_object_set_new(msg, "id", json_integer((json_int_t)p->id)) < 0)
        goto out;
    rc = qb_qmp_send(c, msg);
    if (rc == QB_ENOMEM)
        goto out;

    p->deadline = timeout_ms ? uv_now(c->loop) + timeout_ms : 0;
    p->cb = cb;
    p->cb_arg = cb_arg;
    if (c->pending_tail != NULL)
        c->pending_tail->next = p;
    else
        c->pending_head = p;
    c->pending_tail = p;
    p = NULL;
    if (rc == QB_OK && timeout_ms != 0)
        qb_qmp_timer_arm(c);
    else if (rc == QB_EIO)
        rc = QB_OK; /* the close path delivers QB_ECLOSED to cb */

out:
    free(p);
    json_decref(msg);
    return rc;
}

/* ---- reading ----------------------------------------------------------- */

static void qb_qmp_caps_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    (void)arg;
    if (status == QB_ECLOSED)
        return;
    if (status != QB_OK) {
        json_t *desc = status == QB_EQMP ? json_object_get(reply, "desc") : NULL;

        qb_qmp_close(c, QB_EPROTO, "qmp_capabilities failed: %s",
                     json_is_string(desc) ? json_string_value(desc) : qb_strerror(status));
        return;
    }
    QB_LOG_INFO(c->vm_name, "qmp session: %s -> %s (QEMU %s at %s)", qb_qmp_state_name(c->state),
                qb_qmp_state_name(QB_QMP_READY), c->version, c->address);
    c->state = QB_QMP_READY;
    c->handshake_deadline = 0;
    qb_qmp_timer_arm(c);
    if (c->cb.on_ready != NULL)
        c->cb.on_ready(c, c->cb_arg);
}

static int qb_qmp_on_greeting(struct qb_qmp_client *c, json_t *msg, json_t *value)
{
    json_t *qemu = json_object_get(json_object_get(value, "version"), "qemu");
    json_t *major = json_object_get(qemu, "major");
    json_t *minor = json_object_get(qemu, "minor");
    json_t *micro = json_object_get(qemu, "micro");
    int rc;

    (void)msg;
    if (!json_is_object(value) || !json_is_integer(major) || !json_is_integer(minor) ||
        !json_is_integer(micro)) {
        qb_qmp_close(c, QB_EPROTO, "QMP greeting without version.qemu.major/minor/micro");
        return QB_EPROTO;
    }
    struct qb_qmp_greeting *g = qb_qmp_greeting_get(value);
    if (!g) {
        qb_qmp_close(c, QB_ENOMEM, "out of memory keeping the QMP greeting");
        return QB_ENOMEM;
    }
    qb_qmp_greeting_put(c->greeting);
    c->greeting = g;
    snprintf(c->version, sizeof(c->version),
             "%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT,
             json_integer_value(major), json_integer_value(minor), json_integer_value(micro));
    qb_qmp_set_state(c, QB_QMP_NEGOTIATING);
    rc = qb_qmp_send_command(c, "qmp_capabilities", NULL, 0, qb_qmp_caps_reply, NULL);
    if (rc == QB_ENOMEM) {
        qb_qmp_close(c, QB_ENOMEM, "out of memory sending qmp_capabilities");
        return rc;
    }
    return QB_OK;
}

static int qb_qmp_on_event(struct qb_qmp_client *c, json_t *msg, json_t *value)
{
    if (!json_is_string(value)) {
        qb_qmp_close(c, QB_EPROTO, "event name is not a string");
        return QB_EPROTO;
    }
    if (c->state != QB_QMP_READY) {
        /* Before qmp_capabilities there is nothing to deliver to; the snapshot taken once the
           session is ready covers whatever this said. */
        QB_LOG_DEBUG(c->vm_name, "qmp event %s before ready dropped", json_string_value(value));
        return QB_OK;
    }
    if (c->cb.on_event != NULL)
        c->cb.on_event(c, msg, c->cb_arg);
    return QB_OK;
}

static int qb_qmp_on_reply(struct qb_qmp_client *c, json_t *msg, json_t *value)
{
    json_t *id = json_object_get(msg, "id");
    int is_error = json_object_get(msg, "return") == NULL;
    struct qb_qmp_pending *p;
    uint64_t n;

    if (!json_is_integer(id) || json_integer_value(id) < 0) {
        json_t *desc = is_error ? json_object_get(value, "desc") : NULL;

        qb_qmp_close(c, QB_EPROTO, "reply without a numeric id%s%s", desc ? ": " : "",
                     json_is_string(desc) ? json_string_value(desc) : "");
        return QB_EPROTO;
    }
    n = (uint64_t)json_integer_value(id);
    p = qb_qmp_pending_take(c, n);
    if (p == NULL) {
        if (n >= c->session_first_id && n < c->next_id) {
            QB_LOG_DEBUG(c->vm_name, "qmp reply id %llu after its timeout ignored",
                         (unsigned long long)n);
            return QB_OK;
        }
        qb_qmp_close(c, QB_EPROTO, "reply with unknown id %llu", (unsigned long long)n);
        return QB_EPROTO;
    }
    if (p->deadline != 0)
        qb_qmp_timer_arm(c);
    qb_qmp_pending_finish(c, p, is_error ? QB_EQMP : QB_OK, value);
    return QB_OK;
}

typedef int (*qb_qmp_msg_handler)(struct qb_qmp_client *c, json_t *msg, json_t *value);

/* Which key makes a message what, and in which states it may arrive. */
static const struct {
    const char *key;
    qb_qmp_msg_handler handler;
    unsigned states; /* bit per enum qb_qmp_state */
} qb_qmp_messages[] = {
    /* QEMU still starting up can send an event before its greeting: dropped, not fatal */
    {"event", qb_qmp_on_event, 1u << QB_QMP_GREETING | 1u << QB_QMP_NEGOTIATING | 1u << QB_QMP_READY},
    {"return", qb_qmp_on_reply, 1u << QB_QMP_NEGOTIATING | 1u << QB_QMP_READY},
    {"error", qb_qmp_on_reply, 1u << QB_QMP_NEGOTIATING | 1u << QB_QMP_READY},
    {"QMP", qb_qmp_on_greeting, 1u << QB_QMP_GREETING},
};

/* Framer callback: one line, parsed once. A negative return stops the current read. */
static int qb_qmp_on_line(void *arg, const char *line, size_t len)
{
    struct qb_qmp_client *c = arg;
    json_error_t jerr;
    json_t *msg;
    int rc = QB_EPROTO;

    /* A callback for an earlier line of this read may have closed the session. */
    if (!qb_qmp_session_active(c))
        return QB_ECLOSED;
    msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (msg == NULL) {
        qb_qmp_close(c, QB_EPARSE, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                     jerr.text);
        return QB_EPARSE;
    }
    if (!json_is_object(msg)) {
        qb_qmp_close(c, QB_EPROTO, "unexpected message: not a JSON object");
        goto out;
    }
    for (size_t i = 0; i < sizeof(qb_qmp_messages) / sizeof(qb_qmp_messages[0]); i++) {
        json_t *value = json_object_get(msg, qb_qmp_messages[i].key);

        if (value == NULL)
            continue;
        if (!(qb_qmp_messages[i].states & (1u << c->state))) {
            qb_qmp_close(c, QB_EPROTO, "unexpected \"%s\" message in state %s",
                         qb_qmp_messages[i].key, qb_qmp_state_name(c->state));
            goto out;
        }
        c->line = line;
        c->line_len = len;
        rc = qb_qmp_messages[i].handler(c, msg, value);
        c->line = NULL;
        c->line_len = 0;
        if (rc == QB_OK && !qb_qmp_session_active(c))
            rc = QB_ECLOSED;
        goto out;
    }
    qb_qmp_close(c, QB_EPROTO, "unexpected message without event/return/error/QMP");

out:
    json_decref(msg);
    return rc;
}

/*
 * Whether fair reads bound this session now: only a READY session with no
 * reply outstanding. One that waits for a reply reads on, since the reply sits
 * behind everything QEMU sent before it (see fair_reads.h).
 */
static bool qb_qmp_fair_bounded(const struct qb_qmp_client *c)
{
    return c->fair && c->state == QB_QMP_READY && c->pending_head == NULL;
}

static void qb_qmp_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct qb_qmp_client *c = h->data;
    char *ptr = NULL;
    size_t len = 0;

    c->alloc_err = qb_framer_space(&c->framer, suggested, &ptr, &len);
    if (c->alloc_err < 0) {
        ptr = NULL;
        len = 0; /* libuv then reports UV_ENOBUFS to read_cb */
    }
    if (qb_qmp_fair_bounded(c) && len > qb_fair_reads_chunk(c->fair))
        len = qb_fair_reads_chunk(c->fair); /* a longer line is read over several turns */
    if (len > UINT32_MAX)
        len = UINT32_MAX;
    *buf = uv_buf_init(ptr, (unsigned)len);
}

static void qb_qmp_start_reading(struct qb_qmp_client *c);

/* From the fair-reads check after this turn's poll phase. */
static void qb_qmp_fair_resume(struct qb_fair_entry *e)
{
    struct qb_qmp_client *c =
        (struct qb_qmp_client *)((char *)e - offsetof(struct qb_qmp_client, fair_entry));

    qb_qmp_start_reading(c);
}

/* Stops reading until the fair-reads check of this turn starts it again. */
static void qb_qmp_yield(struct qb_qmp_client *c)
{
    uv_read_stop(&c->sock.stream);
    c->reading = 0;
    qb_fair_reads_park(c->fair, &c->fair_entry);
}

static void qb_qmp_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct qb_qmp_client *c = s->data;
    int rc;

    if (nread >= 0) {
        rc = qb_framer_commit(&c->framer, (size_t)nread, qb_qmp_on_line, c);
        if (rc == QB_ETOOBIG)
            qb_qmp_close(c, QB_ETOOBIG, "line longer than max_line_bytes %zu", c->framer.max_line);
        else if (qb_qmp_fair_bounded(c) && c->reading && nread > 0 && (size_t)nread == buf->len)
            qb_qmp_yield(c); /* more is waiting: let every other descriptor go first */
        return;
    }
    if (nread == UV_EOF)
        qb_qmp_close(c, QB_EIO, "QEMU closed the connection");
    else if (nread == UV_ENOBUFS && c->alloc_err == QB_ETOOBIG)
        qb_qmp_close(c, QB_ETOOBIG, "line longer than max_line_bytes %zu", c->framer.max_line);
    else if (nread == UV_ENOBUFS)
        qb_qmp_close(c, QB_ENOMEM, "no memory for a read buffer");
    else
        qb_qmp_close(c, QB_EIO, "read from %s failed: %s", c->address, uv_strerror((int)nread));
}

static void qb_qmp_start_reading(struct qb_qmp_client *c)
{
    int rc;

    if (c->reading || c->paused || !qb_qmp_session_active(c) || c->state == QB_QMP_CONNECTING ||
        c->fair_entry.parked)
        return;
    rc = uv_read_start(&c->sock.stream, qb_qmp_alloc_cb, qb_qmp_read_cb);
    if (rc < 0) {
        qb_qmp_close(c, QB_EIO, "cannot read from %s: %s", c->address, uv_strerror(rc));
        return;
    }
    c->reading = 1;
}

static void qb_qmp_connect_cb(uv_connect_t *req, int status)
{
    struct qb_qmp_client *c = req->data;

    /* After a close during connect libuv reports UV_ECANCELED; the close path owns that. */
    if (c->state != QB_QMP_CONNECTING)
        return;
    if (status < 0) {
        qb_qmp_close(c, QB_EIO, "connect to %s failed: %s", c->address, uv_strerror(status));
        return;
    }
    qb_qmp_set_state(c, QB_QMP_GREETING);
    qb_qmp_start_reading(c);
}

/* ---- addresses --------------------------------------------------------- */

/* ---- public API -------------------------------------------------------- */

int qb_qmp_client_new(uv_loop_t *loop, const char *vm_name, const struct qb_qmp_options *opts,
                      const struct qb_qmp_callbacks *cb, void *cb_arg, struct qb_qmp_client **out)
{
    struct qb_qmp_client *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return QB_ENOMEM;
    c->vm_name = strdup(vm_name ? vm_name : "");
    if (c->vm_name == NULL) {
        free(c);
        return QB_ENOMEM;
    }
    c->loop = loop;
    if (cb != NULL)
        c->cb = *cb;
    c->cb_arg = cb_arg;
    c->connect_timeout_ms = opts ? opts->connect_timeout_ms : 0;
    c->fair = opts ? opts->fair : NULL;
    c->fair_entry.resume = qb_qmp_fair_resume;
    qb_framer_init(&c->framer,
                   opts && opts->max_line_bytes ? opts->max_line_bytes : QB_QMP_DEFAULT_MAX_LINE);
    c->next_id = 1;
    c->session_first_id = 1;
    uv_timer_init(loop, &c->timer); /* cannot fail for timers */
    c->timer.data = c;
    c->handles_open = 1;
    c->state = QB_QMP_IDLE;
    *out = c;
    return QB_OK;
}

int qb_qmp_client_connect(struct qb_qmp_client *c, const char *address)
{
    struct sockaddr_storage sa;
    struct qb_address addr;
    socklen_t salen;
    char *copy;
    bool is_unix;
    int rc;

    if (c->state != QB_QMP_IDLE || c->freeing)
        return QB_EAGAIN;
    if (qb_address_parse(address, QB_ADDRESS_QMP, &addr) != QB_OK ||
        qb_address_sockaddr(&addr, &sa, &salen) != QB_OK) {
        /* libuv would silently truncate a long path and connect somewhere else. */
        if (addr.is_unix)
            QB_LOG_ERR(c->vm_name, "bad QMP address %s: path empty or too long", address);
        else
            QB_LOG_ERR(c->vm_name,
                       "bad QMP address %s: want unix:/path or tcp:host:port with a numeric host",
                       address);
        return QB_EINVAL;
    }
    is_unix = addr.is_unix;
    copy = strdup(address);
    if (copy == NULL)
        return QB_ENOMEM;
    free(c->address);
    c->address = copy;

    if (is_unix)
        rc = uv_pipe_init(c->loop, &c->sock.pipe, 0);
    else
        rc = uv_tcp_init(c->loop, &c->sock.tcp);
    if (rc < 0) {
        QB_LOG_ERR(c->vm_name, "cannot create socket for %s: %s", address, uv_strerror(rc));
        return QB_EIO;
    }
    c->sock.handle.data = c;
    c->handles_open++;
    c->connect_req.data = c;
    c->close_err = QB_OK;
    c->session_first_id = c->next_id;
    qb_qmp_set_state(c, QB_QMP_CONNECTING);
    c->handshake_deadline = c->connect_timeout_ms ? uv_now(c->loop) + c->connect_timeout_ms : 0;
    qb_qmp_timer_arm(c);

    if (is_unix) {
        uv_pipe_connect(&c->connect_req, &c->sock.pipe, addr.path, qb_qmp_connect_cb);
        return QB_OK;
    }
    rc = uv_tcp_connect(&c->connect_req, &c->sock.tcp, (const struct sockaddr *)&sa,
                        qb_qmp_connect_cb);
    if (rc < 0)
        qb_qmp_close(c, QB_EIO, "connect to %s failed: %s", address, uv_strerror(rc));
    return QB_OK;
}

int qb_qmp_client_adopt(struct qb_qmp_client *c, int fd, const char *address)
{
    char *copy;
    int rc;

    if (c->state != QB_QMP_IDLE || c->freeing) {
        close(fd);
        return QB_EAGAIN;
    }
    copy = strdup(address);
    if (copy == NULL) {
        close(fd);
        return QB_ENOMEM;
    }
    free(c->address);
    c->address = copy;
    rc = uv_pipe_init(c->loop, &c->sock.pipe, 0);
    if (rc < 0) {
        QB_LOG_ERR(c->vm_name, "cannot create a handle for %s: %s", address, uv_strerror(rc));
        close(fd);
        return QB_EIO;
    }
    c->sock.handle.data = c;
    c->handles_open++;
    c->close_err = QB_OK;
    c->session_first_id = c->next_id;
    qb_qmp_set_state(c, QB_QMP_GREETING);
    c->handshake_deadline = c->connect_timeout_ms ? uv_now(c->loop) + c->connect_timeout_ms : 0;
    qb_qmp_timer_arm(c);
    rc = uv_pipe_open(&c->sock.pipe, fd);
    if (rc < 0) {
        close(fd); /* not attached to the handle: closing the handle would not close it */
        qb_qmp_close(c, QB_EIO, "cannot use the connection %s: %s", address, uv_strerror(rc));
        return QB_OK;
    }
    qb_qmp_start_reading(c);
    return QB_OK;
}

int qb_qmp_client_set_owner(struct qb_qmp_client *c, const char *vm_name,
                            const struct qb_qmp_callbacks *cb, void *cb_arg)
{
    char *copy = strdup(vm_name ? vm_name : "");

    if (copy == NULL)
        return QB_ENOMEM;
    free(c->vm_name);
    c->vm_name = copy;
    c->cb = cb ? *cb : (struct qb_qmp_callbacks){0};
    c->cb_arg = cb_arg;
    return QB_OK;
}

int qb_qmp_client_execute(struct qb_qmp_client *c, const char *command, json_t *arguments,
                          uint32_t timeout_ms, qb_qmp_reply_cb cb, void *cb_arg)
{
    int rc;

    if (c->state != QB_QMP_READY || c->freeing)
        return QB_ECLOSED;
    if (command == NULL || cb == NULL || (arguments != NULL && !json_is_object(arguments)))
        return QB_EINVAL;
    rc = qb_qmp_send_command(c, command, arguments, timeout_ms, cb, cb_arg);
    if (rc < 0)
        QB_LOG_ERR(c->vm_name, "cannot send qmp command %s: %s", command, qb_strerror(rc));
    return rc;
}

void qb_qmp_client_disconnect(struct qb_qmp_client *c, const char *reason)
{
    qb_qmp_close(c, QB_ECLOSED, "%s", reason ? reason : "disconnect requested");
}

void qb_qmp_client_pause_reading(struct qb_qmp_client *c)
{
    /* The flag outlives the session so a reconnect does not undo the owner's back-pressure. */
    c->paused = 1;
    if (c->reading) {
        uv_read_stop(&c->sock.stream);
        c->reading = 0;
    }
}

void qb_qmp_client_resume_reading(struct qb_qmp_client *c)
{
    c->paused = 0;
    qb_qmp_start_reading(c);
}

enum qb_qmp_state qb_qmp_client_state(const struct qb_qmp_client *c)
{
    return c->state;
}

const json_t *qb_qmp_client_greeting(const struct qb_qmp_client *c)
{
    return c->greeting ? qb_qmp_greeting_tree(c->greeting) : NULL;
}

const char *qb_qmp_client_version(const struct qb_qmp_client *c)
{
    return c->version;
}

const char *qb_qmp_client_event_line(const struct qb_qmp_client *c, size_t *len)
{
    *len = c->line ? c->line_len : 0;
    return c->line;
}

void qb_qmp_client_free(struct qb_qmp_client *c)
{
    if (c == NULL || c->freeing)
        return;
    c->freeing = 1;
    qb_qmp_close(c, QB_ECLOSED, "client freed");
    /* Now, while the owner's context is surely alive, not from a later close callback. */
    qb_qmp_pending_fail_all(c);
    uv_close((uv_handle_t *)&c->timer, qb_qmp_timer_close_cb);
}
