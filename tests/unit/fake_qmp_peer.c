/*
 * fake_qmp_peer.c - one fake QEMU for the unit tests that talk QMP on a loop
 * (see fake_qmp_peer.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_qmp_peer.h"

const char fake_qmp_greeting[] =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}";

static void peer_write_cb(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

void fake_qmp_peer_send(struct fake_qmp_peer *p, const char *text)
{
    size_t len = strlen(text);
    uv_write_t *req = malloc(sizeof(*req) + len + 1);
    char *data = (char *)(req + 1);
    uv_buf_t buf;

    assert_non_null(req);
    assert_true(p->conn_open);
    memcpy(data, text, len);
    data[len] = '\n';
    buf = uv_buf_init(data, (unsigned)len + 1);
    assert_int_equal(uv_write(req, &p->conn.s, &buf, 1, peer_write_cb), 0);
}

void fake_qmp_peer_sendf(struct fake_qmp_peer *p, const char *fmt, ...)
{
    char text[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    fake_qmp_peer_send(p, text);
}

/* Sends {key: value-text, "id": id} (value_text parsed, so any JSON value). */
static void peer_answer(struct fake_qmp_peer *p, const char *key, const char *value_text,
                        json_t *id)
{
    json_t *reply = json_object();
    json_t *value = json_loads(value_text, JSON_DECODE_ANY, NULL);
    char *text;

    assert_non_null(value);
    json_object_set_new(reply, key, value);
    json_object_set(reply, "id", id);
    text = json_dumps(reply, JSON_COMPACT);
    fake_qmp_peer_send(p, text);
    free(text);
    json_decref(reply);
}

static void peer_conn_close_cb(uv_handle_t *h)
{
    struct fake_qmp_peer *p = h->data;

    p->conn_gone++;
    qb_framer_reset(&p->fr);
}

void fake_qmp_peer_close_conn(struct fake_qmp_peer *p)
{
    if (!p->conn_open)
        return;
    p->conn_open = 0;
    uv_close(&p->conn.h, peer_conn_close_cb);
}

/* The first unused script row for execute, or NULL. */
static const struct fake_qmp_row *peer_row(struct fake_qmp_peer *p, const char *execute)
{
    for (size_t i = 0; p->script != NULL && p->script[i].execute != NULL; i++) {
        assert_true(i < sizeof(p->used));
        if (!p->used[i] && strcmp(p->script[i].execute, execute) == 0) {
            p->used[i] = 1;
            return &p->script[i];
        }
    }
    return NULL;
}

/* Answers one command from the script; returns -1 after a scripted hang-up. */
static int peer_answer_scripted(struct fake_qmp_peer *p, const char *exec, json_t *id)
{
    const struct fake_qmp_row *row = peer_row(p, exec);

    if (row == NULL) {
        p->unscripted++;
        peer_answer(p, "error", "{\"class\": \"CommandNotFound\", \"desc\": \"not scripted\"}", id);
    } else if (row->act == FAKE_QMP_RETURN) {
        peer_answer(p, "return", row->text, id);
    } else if (row->act == FAKE_QMP_ERROR) {
        peer_answer(p, "error", row->text, id);
    } else if (row->act == FAKE_QMP_CLOSE) {
        fake_qmp_peer_close_conn(p);
        return -1; /* stop reading this connection's buffer */
    }
    return 0;
}

static int peer_on_line(void *arg, const char *line, size_t len)
{
    struct fake_qmp_peer *p = arg;
    json_t *msg = json_loadb(line, len, 0, NULL);
    const char *exec;
    json_t *seen;
    int rc = 0;

    assert_non_null(msg);
    json_array_append(p->received, msg);
    exec = json_string_value(json_object_get(msg, "execute"));
    if (exec != NULL && strcmp(exec, "qmp_capabilities") == 0) {
        json_int_t id = json_integer_value(json_object_get(msg, "id"));

        if (p->caps_error)
            fake_qmp_peer_sendf(
                p,
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities "
                "negotiation is already complete, command ignored\"}, \"id\": %" JSON_INTEGER_FORMAT
                "}",
                id);
        else if (p->auto_caps)
            fake_qmp_peer_sendf(p, "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}", id);
        json_decref(msg);
        return 0;
    }
    if (p->scripted)
        assert_non_null(exec);
    if (exec != NULL) {
        seen = json_deep_copy(msg);
        json_object_del(seen, "id");
        json_array_append_new(p->commands, seen);
        if (p->scripted)
            rc = peer_answer_scripted(p, exec, json_object_get(msg, "id"));
    }
    json_decref(msg);
    return rc;
}

static void peer_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct fake_qmp_peer *p = h->data;
    char *ptr = NULL;
    size_t len = 0;

    if (qb_framer_space(&p->fr, suggested, &ptr, &len) < 0)
        len = 0;
    *buf = uv_buf_init(ptr, (unsigned)len);
}

static void peer_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct fake_qmp_peer *p = s->data;

    (void)buf;
    if (nread >= 0) {
        if (qb_framer_commit(&p->fr, (size_t)nread, peer_on_line, p) < 0) {
            assert_false(p->conn_open); /* only a scripted hang-up stops the reading */
            qb_framer_reset(&p->fr);
        }
        return;
    }
    fake_qmp_peer_close_conn(p);
}

static void peer_on_connection(uv_stream_t *server, int status)
{
    struct fake_qmp_peer *p = server->data;

    assert_int_equal(status, 0);
    assert_false(p->conn_open);
    if (p->is_tcp)
        assert_int_equal(uv_tcp_init(p->loop, &p->conn.tcp), 0);
    else
        assert_int_equal(uv_pipe_init(p->loop, &p->conn.pipe, 0), 0);
    p->conn.h.data = p;
    assert_int_equal(uv_accept(server, &p->conn.s), 0);
    p->conn_open = 1;
    p->accepted++;
    assert_int_equal(uv_read_start(&p->conn.s, peer_alloc_cb, peer_read_cb), 0);
    if (p->event_first)
        fake_qmp_peer_send(p, "{\"timestamp\": {\"seconds\": 1732242125, \"microseconds\": "
                              "477854}, \"event\": \"RESUME\"}");
    if (p->greet)
        fake_qmp_peer_send(p, fake_qmp_greeting);
}

void fake_qmp_peer_init(struct fake_qmp_peer *p, uv_loop_t *loop)
{
    memset(p, 0, sizeof(*p));
    p->loop = loop;
    p->greet = 1;
    p->auto_caps = 1;
    p->received = json_array();
    p->commands = json_array();
    qb_framer_init(&p->fr, 1 << 20);
}

void fake_qmp_peer_listen_unix(struct fake_qmp_peer *p, const char *path)
{
    assert_int_equal(uv_pipe_init(p->loop, &p->server.pipe, 0), 0);
    p->server.h.data = p;
    assert_int_equal(uv_pipe_bind(&p->server.pipe, path), 0);
    assert_int_equal(uv_listen(&p->server.s, 4, peer_on_connection), 0);
}

int fake_qmp_peer_listen_tcp(struct fake_qmp_peer *p)
{
    struct sockaddr_in sa;
    struct sockaddr_storage bound;
    int len = sizeof(bound);

    p->is_tcp = 1;
    assert_int_equal(uv_tcp_init(p->loop, &p->server.tcp), 0);
    p->server.h.data = p;
    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    assert_int_equal(uv_tcp_bind(&p->server.tcp, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen(&p->server.s, 4, peer_on_connection), 0);
    assert_int_equal(uv_tcp_getsockname(&p->server.tcp, (struct sockaddr *)&bound, &len), 0);
    return ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

void fake_qmp_peer_close(struct fake_qmp_peer *p)
{
    fake_qmp_peer_close_conn(p);
    uv_close(&p->server.h, NULL);
}

void fake_qmp_peer_free(struct fake_qmp_peer *p)
{
    qb_framer_reset(&p->fr);
    json_decref(p->received);
    json_decref(p->commands);
    p->received = p->commands = NULL;
}
