/*
 * qmp_client.h - one QMP session with one QEMU, on the bridge's libuv loop.
 *
 * States (logged on every change, with the VM name):
 *   IDLE -> CONNECTING -> GREETING -> NEGOTIATING -> READY -> CLOSING -> IDLE
 * CONNECTING: socket connect in progress (bounded by connect_timeout_ms).
 * GREETING:   waiting for {"QMP": {...}}; version and capabilities are kept.
 * NEGOTIATING: qmp_capabilities sent, waiting for its return.
 * READY:      events and replies flow.
 * A session never reconnects by itself: the owner (vm_manager) decides when,
 * which keeps back-off policy in one place. A session adopted from an
 * accepted connection (qb_qmp_client_adopt) skips CONNECTING.
 *
 * Every line is parsed once with jansson. A message is an event when it has
 * "event", a reply when it has "return" or "error" (matched by "id"), the
 * greeting when it has "QMP". Anything else, invalid JSON, or a line over
 * max_line_bytes closes the session with a logged reason; other sessions are
 * never affected.
 */
#ifndef QB_QMP_CLIENT_H
#define QB_QMP_CLIENT_H

#include "fair_reads.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum qb_qmp_state {
    QB_QMP_IDLE = 0,
    QB_QMP_CONNECTING,
    QB_QMP_GREETING,
    QB_QMP_NEGOTIATING,
    QB_QMP_READY,
    QB_QMP_CLOSING,
};

/* Returns the static lower-case name of a state ("ready"). */
const char *qb_qmp_state_name(enum qb_qmp_state state);

struct qb_qmp_client;

struct qb_qmp_options {
    size_t max_line_bytes;       /* default 16 MiB when 0 */
    uint32_t connect_timeout_ms; /* 0 = none */
    /* Borrowed, outlives the client; NULL: read as long as libuv offers (see fair_reads.h). */
    struct qb_fair_reads *fair;
};

struct qb_qmp_callbacks {
    /* The session reached READY (greeting read, qmp_capabilities accepted). */
    void (*on_ready)(struct qb_qmp_client *c, void *arg);

    /*
     * One QMP event, in arrival order. msg is the whole parsed message
     * ({"event","data","timestamp"}), borrowed: json_incref it to keep it.
     */
    void (*on_event)(struct qb_qmp_client *c, json_t *msg, void *arg);

    /*
     * The session ended (from any state past IDLE): the socket is closed, every
     * pending command has had its callback with QB_ECLOSED, and the client is
     * back in IDLE; it may be connected again or freed from inside this callback.
     * err says why (QB_EIO, QB_EPROTO, QB_ETOOBIG, QB_EPARSE, QB_ETIMEDOUT,
     * QB_ECLOSED for a requested disconnect); reason is a borrowed human text.
     */
    void (*on_closed)(struct qb_qmp_client *c, int err, const char *reason, void *arg);
};

/*
 * Reply to one command. status is QB_OK (reply is the "return" value),
 * QB_EQMP (reply is the "error" object {"class","desc"}), QB_ETIMEDOUT or
 * QB_ECLOSED (reply NULL). reply is borrowed. Called exactly once per
 * successful qb_qmp_client_execute, never from inside execute itself.
 */
typedef void (*qb_qmp_reply_cb)(struct qb_qmp_client *c, int status, json_t *reply, void *arg);

/*
 * Creates an IDLE client. vm_name is copied and used in every log line.
 * Returns QB_OK and *out (owned by the caller, release with
 * qb_qmp_client_free), or QB_ENOMEM.
 */
int qb_qmp_client_new(uv_loop_t *loop, const char *vm_name, const struct qb_qmp_options *opts,
                      const struct qb_qmp_callbacks *cb, void *cb_arg,
                      struct qb_qmp_client **out);

/*
 * Starts connecting to address ("unix:/path" or "tcp:host:port"; host must be
 * a numeric IPv4/IPv6 address or "localhost"). Only from IDLE. Returns QB_OK
 * (on_ready or on_closed follows), QB_EINVAL for a bad address, QB_EAGAIN
 * when not IDLE.
 */
int qb_qmp_client_connect(struct qb_qmp_client *c, const char *address);

/*
 * Runs a session over fd, a stream socket that is already connected (listen
 * mode: QEMU connected to the bridge). The flow is the one after connect():
 * GREETING, NEGOTIATING, READY, bounded by connect_timeout_ms. address is a
 * label for logs ("listen:/path pid 42"), copied. Only from IDLE. Takes fd in
 * every case (closed on failure). Returns QB_OK (on_ready or on_closed
 * follows), QB_EAGAIN when not IDLE, QB_ENOMEM or QB_EIO.
 */
int qb_qmp_client_adopt(struct qb_qmp_client *c, int fd, const char *address);

/*
 * Hands the client to another owner: vm_name (copied) for log lines,
 * callbacks and their argument. For a session that was named only after it
 * became READY (listen mode). Returns QB_OK or QB_ENOMEM (nothing changed).
 */
int qb_qmp_client_set_owner(struct qb_qmp_client *c, const char *vm_name,
                            const struct qb_qmp_callbacks *cb, void *cb_arg);

/*
 * Sends {"execute": command, "arguments": arguments, "id": <n>} in READY.
 * arguments may be NULL; it is borrowed (serialised before return).
 * timeout_ms 0 means no timeout. Returns QB_OK (cb follows exactly once) or
 * QB_ECLOSED when not READY (cb is not called).
 */
int qb_qmp_client_execute(struct qb_qmp_client *c, const char *command, json_t *arguments,
                          uint32_t timeout_ms, qb_qmp_reply_cb cb, void *cb_arg);

/*
 * Closes the session if it is not IDLE; on_closed follows with QB_ECLOSED and
 * reason. Safe to call from any callback.
 */
void qb_qmp_client_disconnect(struct qb_qmp_client *c, const char *reason);

/* Stops/restarts reading from the socket (back-pressure). Events already read still arrive. */
void qb_qmp_client_pause_reading(struct qb_qmp_client *c);
void qb_qmp_client_resume_reading(struct qb_qmp_client *c);

enum qb_qmp_state qb_qmp_client_state(const struct qb_qmp_client *c);

/*
 * The greeting's "QMP" object of the current/last session, borrowed (shared
 * with sessions greeted alike: never modify it); NULL before one was read.
 */
const json_t *qb_qmp_client_greeting(const struct qb_qmp_client *c);

/* "7.2.22" built from the greeting, borrowed; "" before one was read. */
const char *qb_qmp_client_version(const struct qb_qmp_client *c);

/*
 * Inside on_event: the raw text of the event being delivered, without its
 * line ending, and its length in *len (borrowed, valid until on_event
 * returns). NULL (and *len 0) outside on_event.
 */
const char *qb_qmp_client_event_line(const struct qb_qmp_client *c, size_t *len);

/*
 * Releases the client. If it is not IDLE it is disconnected first; on_closed
 * is NOT called and pending command callbacks get QB_ECLOSED. Memory is
 * returned once libuv has closed the handles (asynchronously): the loop must
 * run on after this call. Safe inside on_closed.
 */
void qb_qmp_client_free(struct qb_qmp_client *c);

#endif
