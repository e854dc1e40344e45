/*
 * fake_qmp_peer.h - one fake QEMU for the unit tests that talk QMP on a loop.
 *
 * The peer listens on a unix socket (or TCP on 127.0.0.1, a kernel-chosen
 * port) on the test's own uv loop, greets like QEMU 7.2 on each accepted
 * connection (one at a time), answers qmp_capabilities, and records what the
 * client sends. Everything else is the test's choice:
 * - by hand: the test answers with fake_qmp_peer_send/_sendf (test_qmp_client);
 * - by script: a table of (execute, act, text) rows, each used once in order
 *   for its execute, answers every other command (test_command_exec); a
 *   command no row is left for is answered CommandNotFound and counted.
 * Failures are cmocka assertions, so a broken client fails the test where it
 * happens. Lifetime: fake_qmp_peer_init, one listen, ..., fake_qmp_peer_close
 * before the loop's last runs (closes the handles), fake_qmp_peer_free after
 * uv_loop_close (frees what the peer holds).
 */
#ifndef QB_TEST_FAKE_QMP_PEER_H
#define QB_TEST_FAKE_QMP_PEER_H

#include <jansson.h>
#include <uv.h>

#include "qmp_framer.h"

/* The real QEMU 7.2 greeting the peer sends (Debian's package string). */
extern const char fake_qmp_greeting[];

enum fake_qmp_act {
    FAKE_QMP_RETURN, /* {"return": text} */
    FAKE_QMP_ERROR,  /* {"error": text} */
    FAKE_QMP_SILENT, /* no answer at all */
    FAKE_QMP_CLOSE,  /* hang up on receipt */
};

struct fake_qmp_row {
    const char *execute; /* NULL ends a script */
    enum fake_qmp_act act;
    const char *text; /* JSON text of the return value or error object */
};

union fake_qmp_sock {
    uv_handle_t h;
    uv_stream_t s;
    uv_pipe_t pipe;
    uv_tcp_t tcp;
};

struct fake_qmp_peer {
    uv_loop_t *loop;
    union fake_qmp_sock server;
    union fake_qmp_sock conn;
    int is_tcp;
    int accepted;    /* connections accepted so far */
    int conn_open;   /* a connection exists and is not closing */
    int conn_gone;   /* connections fully closed */
    int greet;       /* send the greeting on accept (default 1) */
    int event_first; /* send an event before the greeting (QEMU does while it starts up) */
    int auto_caps;   /* answer qmp_capabilities (default 1) */
    int caps_error;  /* answer qmp_capabilities with an error instead */
    int scripted;    /* answer other commands from script (else the test answers) */
    const struct fake_qmp_row *script; /* scripted: rows, ended by execute NULL; may be NULL */
    unsigned char used[32];            /* script rows used */
    int unscripted;                    /* scripted: commands no row was left for */
    struct qb_framer fr;
    json_t *received; /* every line the client sent, parsed, ids kept */
    json_t *commands; /* every command but qmp_capabilities, without its id */
};

/* Zeroes p and sets defaults: greet, answer qmp_capabilities, empty records. */
void fake_qmp_peer_init(struct fake_qmp_peer *p, uv_loop_t *loop);

/* Listens on the unix socket path (the caller removes the file afterwards). */
void fake_qmp_peer_listen_unix(struct fake_qmp_peer *p, const char *path);

/* Listens on 127.0.0.1 on a free port; returns the port. */
int fake_qmp_peer_listen_tcp(struct fake_qmp_peer *p);

/* Sends text plus "\n" to the client (copied; the connection must be open). */
void fake_qmp_peer_send(struct fake_qmp_peer *p, const char *text);

/* fake_qmp_peer_send of a printf-formatted line (at most 4095 bytes). */
void fake_qmp_peer_sendf(struct fake_qmp_peer *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Closes the current connection, if any; conn_gone counts it once closed. */
void fake_qmp_peer_close_conn(struct fake_qmp_peer *p);

/* Closes the connection and the listening handle; the loop must then run to finish. */
void fake_qmp_peer_close(struct fake_qmp_peer *p);

/* Frees the records and the framer; after uv_loop_close. */
void fake_qmp_peer_free(struct fake_qmp_peer *p);

#endif
