/*
 * mqtt.c - the MQTT transport (libmosquitto, driven by the bridge's own libuv
 * loop: no mosquitto thread).
 *
 * Loop integration: a uv_poll_t watches mosquitto_socket() (readable always,
 * writable while mosquitto_want_write() or a connect is pending) and calls
 * mosquitto_loop_read/write; a repeating uv_timer calls mosquitto_loop_misc
 * for keepalive. libmosquitto opens and closes the socket itself, so after
 * every call into it sync_poll() compares the socket with the one we watch and
 * drops the stale poll handle before the descriptor can be reused.
 *
 * Delivery: each publish gets a mid; tokens[mid] remembers the queue's token.
 * on_publish (PUBACK/PUBCOMP, or "written" for QoS 0) confirms it. Reports go
 * through a pending list flushed from an idle handle, because libmosquitto
 * writes (and for QoS 0 confirms) synchronously inside mosquitto_publish and
 * the contract forbids callbacks from inside publish.
 *
 * Messages in flight across a reconnect: libmosquitto keeps QoS 1/2 messages
 * in its msgs_out list; mosquitto__reconnect calls message__reconnect_reset,
 * which keeps them and resets their state to "publish again", and
 * handle__connack calls message__retry_check, which resends them (DUP set)
 * before anything published after the CONNACK. So QoS>0 tokens stay in flight
 * across a reconnect. QoS 0 packets that were not yet written are discarded by
 * packet__cleanup_all on reconnect and never reach on_publish: those tokens
 * fail with QB_EIO at disconnect so the queue sends them again.
 *
 * Commands (after subscribe): <prefix>/<bridge>/+/command at QoS 1, subscribed
 * again on every CONNACK, in a persistent session so that commands sent while
 * the link is down wait at the broker; retained ones are ignored. libmosquitto fixes the clean-session
 * flag in mosquitto_new, so subscribing before the first connection attempt
 * rebuilds the client with it off; a transport that never subscribes keeps a
 * clean session (no stale broker state for a publisher). MQTT 5 also needs the
 * session-expiry property on every CONNECT, which only the blocking
 * mosquitto_connect_bind_v5 can send (reconnect_async sends no properties):
 * those connects run on a libuv worker thread, and the loop leaves the
 * mosquitto object alone until the work is done. QoS 1 acks are sent by
 * libmosquitto itself, so inbound messages need no ack of ours (token 0).
 *
 * broker: rabbitmq. The plugin delivers every '.' of a topic as a level of its
 * own (mqtt_topic.h): commands are placed with dots read as levels, and one
 * more filter is subscribed for each number of levels the VM names take, learnt
 * from the VMs this transport publishes for (so the bridge never subscribes to
 * its own events, as "<prefix>/<bridge>/#" would). A topic that cannot be
 * placed is logged at warn, a few lines a minute.
 *
 * Brokers that do not speak what the bridge asks: one that closes the
 * connection after an MQTT 5 CONNECT without a CONNACK gets a hint to use
 * 3.1.1 on every such attempt; one that answers a QoS 2 publish with PUBACK
 * (libmosquitto then drops the link as a protocol error, and the resend after
 * each reconnect meets the same PUBACK) is an error, and the transport stops
 * reconnecting instead of looping.
 */
#include "error.h"
#include "log.h"
#include "mqtt_config.h"
#include "mqtt_topic.h"
#include "private_files.h"
#include "rate_limit.h"
#include "transport_ops.h"

#include <errno.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MQTT_MID_SLOTS 65536
/* Bound on waiting for the broker to acknowledge the retained "offline" at close. */
#define MQTT_OFFLINE_WAIT_MS 1000
#define MQTT_CONTENT_TYPE "application/cloudevents+json"
/* "session taken over" lines: the first of each interval, then a count of the rest. */
#define MQTT_TAKEOVER_LOG_INTERVAL_MS (60 * 1000)
/* Closes of freshly accepted connections in a row read as a takeover the broker did not name. */
#define MQTT_TAKEOVER_QUICK_CLOSES 3
/* Unplaceable topics: this many log lines a minute; topics are cut in them. */
#define MQTT_UNPLACED_LOG_FIRST 5
#define MQTT_UNPLACED_LOG_INTERVAL_MS 60000
#define MQTT_LOG_TOPIC_MAX 200

enum mqtt_state {
    MQTT_IDLE,       /* no socket; a reconnect timer may be running */
    MQTT_CONNECTING, /* socket open, CONNACK not yet received */
    MQTT_CONNECTED,
    MQTT_CLOSING, /* close requested, waiting for "offline" to be acked */
    MQTT_CLOSED,  /* handles being released */
};

struct done_entry {
    void *token;
    int status;
};

struct mqtt_backend {
    uv_loop_t *loop;
    const struct qb_transport_config *cfg;
    const struct qb_mqtt_config *mc; /* cfg->backend: the mqtt keys */
    const struct qb_transport_backend_cb *cb;
    void *owner;
    const char *name;
    char *bridge_id;
    char *status_topic;
    struct mosquitto *mosq;
    mosquitto_property *props; /* content-type for v5 publishes, ours */
    char *client_id;
    char *password;
    enum mqtt_state state;
    bool ever_connected; /* first attempt uses connect_async, later ones reconnect_async */
    bool attempt_logged; /* the current attempt's failure was logged already */
    bool attempt_lib_error; /* libmosquitto logged an error or warning in the current attempt */

    uv_poll_t *poll; /* heap: its memory must outlive uv_close of a stale handle */
    int poll_fd;
    int poll_events;
    bool connect_pending; /* watch writable until the first writable event */

    uv_timer_t misc_timer;
    uv_timer_t reconnect_timer;
    uv_timer_t close_timer;
    uv_idle_t idle;
    unsigned reconnect_attempt;
    unsigned takeovers;    /* sessions taken over in a row: the back-off keeps growing meanwhile */
    unsigned quick_closes; /* accepted connections the broker closed soon after, in a row */
    uint64_t connected_at; /* uv_now() of the last CONNACK */
    struct qb_log_limit takeover_log;

    void **tokens; /* indexed by mid */
    uint32_t inflight;
    bool starved; /* we answered EAGAIN: owe a writable() */
    bool want_writable;
    bool in_publish;
    int early_mid; /* on_publish seen inside mosquitto_publish, before we stored the token */
    int early_status;

    struct done_entry *done;
    size_t n_done, cap_done;

    int offline_mid;
    bool offline_acked;

    /* commands */
    bool subscribed;      /* subscribe was called: (re)subscribe on every CONNACK */
    bool connect_started; /* a connection was attempted: too late to rebuild the client */
    char *command_topic;  /* <prefix>/<bridge>/+/command */
    char *command_head;   /* "<prefix>/<bridge>/": what every command topic starts with */
    size_t cmd_levels;    /* '+' levels subscribed for commands: 1, more on rabbitmq */
    int level_mid[QB_MQTT_TOPIC_LEVELS_MAX + 1]; /* SUBSCRIBE mid of each level's filter */
    struct qb_log_limit unplaced_log;
    bool qos2_puback; /* the broker answered a QoS 2 publish of ours with PUBACK */
    bool gave_up;     /* a broker that cannot serve this config: no more reconnects */
    mosquitto_property *connect_props; /* v5 CONNECT: session-expiry-interval */
    uv_work_t connect_work;            /* a blocking v5 connect on the thread pool */
    bool connect_in_thread;            /* the loop must not touch mosq until the work is done */
    int connect_rc;
    int connect_errno; /* errno is per thread: the worker's, for the log */

    int handles_open;
    void (*closed)(void *arg);
    void *closed_arg;
};

static bool lib_ready;

static void sync_poll(struct mqtt_backend *b);
static void schedule_reconnect(struct mqtt_backend *b);
static void on_idle(uv_idle_t *idle);
static void on_close_timer(uv_timer_t *timer);
static void finish_close(struct mqtt_backend *b);

static void free_handle(uv_handle_t *h)
{
    free(h);
}

/* Stops watching the socket; the handle is freed once libuv lets go of it. */
static void drop_poll(struct mqtt_backend *b)
{
    if (!b->poll)
        return;
    uv_poll_stop(b->poll);
    uv_close((uv_handle_t *)b->poll, free_handle);
    b->poll = NULL;
    b->poll_events = 0;
}

/* ---- configuration: the keys of an mqtt transport ---- */

static const struct qb_config_enum qos_values[] = {{"0", 0}, {"1", 1}, {"2", 2}, {NULL, 0}};
static const struct qb_config_enum mqtt_protocols[] = {
    {"5", QB_MQTT_V5}, {"3.1.1", QB_MQTT_V311}, {NULL, 0}};
static const struct qb_config_enum mqtt_brokers[] = {
    {"generic", QB_MQTT_BROKER_GENERIC}, {"rabbitmq", QB_MQTT_BROKER_RABBITMQ}, {NULL, 0}};

_Static_assert(sizeof(enum qb_mqtt_protocol) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_mqtt_broker) == sizeof(int), "QB_CFG_ENUM stores an int");

#define M struct qb_mqtt_config
static const struct qb_config_key mqtt_tls_keys[] = {
    QB_CONFIG_KEY(M, "ca_file", QB_CFG_STRING, tls_ca_file, .check = qb_config_check_nonempty,
                  .desc = "CA certificates to verify the broker with; turns TLS on"),
    QB_CONFIG_KEY(M, "cert_file", QB_CFG_STRING, tls_cert_file, .check = qb_config_check_nonempty,
                  .desc = "client certificate (with key_file)"),
    QB_CONFIG_KEY(M, "key_file", QB_CFG_STRING, tls_key_file, .check = qb_config_check_nonempty,
                  .secret = "mqtt tls.key_file", .desc = "client key (with cert_file)"),
    QB_CONFIG_KEY(M, "insecure", QB_CFG_BOOL, tls_insecure, .def = "false",
                  .desc = "skip the broker's host name check"),
    {0},
};

/* port and protocol defaults depend on other keys: see mqtt_config_finish */
static const struct qb_config_key mqtt_config_keys[] = {
    QB_CONFIG_KEY(M, "host", QB_CFG_STRING, host, .def = "127.0.0.1",
                  .check = qb_config_check_nonempty, .desc = "the broker's host"),
    QB_CONFIG_KEY(M, "port", QB_CFG_UINT, port, .min = 1, .max = 65535,
                  .desc = "the broker's port; default 1883, 8883 with tls.ca_file"),
    QB_CONFIG_KEY(M, "topic_prefix", QB_CFG_STRING, topic_prefix, .def = "qmp",
                  .check = qb_config_check_nonempty, .desc = "first level of every topic"),
    QB_CONFIG_KEY(M, "qos", QB_CFG_ENUM, qos, .def = "1", .enums = qos_values,
                  .desc = "QoS of every publish"),
    QB_CONFIG_KEY(M, "protocol", QB_CFG_ENUM, protocol, .enums = mqtt_protocols,
                  .desc = "MQTT version; default 5, 3.1.1 with broker: rabbitmq"),
    QB_CONFIG_KEY(M, "broker", QB_CFG_ENUM, broker, .def = "generic", .enums = mqtt_brokers,
                  .desc = "what the broker is: generic or rabbitmq"),
    QB_CONFIG_KEY(M, "client_id", QB_CFG_STRING, client_id, .check = qb_config_check_nonempty,
                  .id_prefix = "qmp-bridge-", .desc = "MQTT client id; default qmp-bridge-<id>"),
    /* MQTT carries the keepalive as 16-bit seconds */
    QB_CONFIG_KEY(M, "keepalive", QB_CFG_DURATION, keepalive_ms, .def = "30s", .max = 65535 * 1000,
                  .desc = "MQTT keepalive"),
    QB_CONFIG_KEY(M, "username", QB_CFG_STRING, username, .desc = "user name at the broker"),
    QB_CONFIG_KEY(M, "password_file", QB_CFG_STRING, password_file,
                  .check = qb_config_check_nonempty, .secret = "mqtt password_file",
                  .desc = "file whose first line is the password"),
    QB_CONFIG_SECTION("tls", mqtt_tls_keys, .desc = "TLS to the broker"),
    /* MQTT 5 receive-maximum is 16-bit and must not be 0 */
    QB_CONFIG_KEY(M, "max_inflight", QB_CFG_UINT, max_inflight, .def = "100", .min = 1,
                  .max = 65535, .desc = "unacknowledged publishes at once"),
    QB_CONFIG_KEY(M, "reconnect_initial", QB_CFG_DURATION, reconnect_initial_ms, .def = "500ms",
                  .min = 1, .desc = "first wait before reconnecting"),
    QB_CONFIG_KEY(M, "reconnect_max", QB_CFG_DURATION, reconnect_max_ms, .def = "30s", .min = 1,
                  .desc = "longest wait before reconnecting"),
    QB_CONFIG_KEY(M, "session_expiry", QB_CFG_SECONDS, session_expiry_s, .def = "1h",
                  .desc = "how long the broker keeps our session (and QoS 1 commands) across a "
                          "disconnect"),
    {0},
};
#undef M

/*
 * Defaults that depend on other keys, and checks across keys. broker: rabbitmq: its
 * MQTT plugin speaks 3.1.1 only (an MQTT 5 CONNECT is dropped unanswered, for ever) and
 * answers a QoS 2 publish with PUBACK, so nothing sent at QoS 2 is ever confirmed: both
 * are refused.
 */
static int mqtt_config_finish(void *bcfg, struct qb_config_problem *p)
{
    struct qb_mqtt_config *t = bcfg;

    if (t->port == 0)
        t->port = t->tls_ca_file ? 8883 : 1883;
    if (t->protocol == 0) /* not set */
        t->protocol = t->broker == QB_MQTT_BROKER_RABBITMQ ? QB_MQTT_V311 : QB_MQTT_V5;
    if (t->broker == QB_MQTT_BROKER_RABBITMQ && t->protocol != QB_MQTT_V311) {
        p->key = p->at = "protocol";
        snprintf(p->msg, sizeof(p->msg),
                 "RabbitMQ's MQTT plugin speaks MQTT 3.1.1 only: use \"3.1.1\" (the default "
                 "with broker: rabbitmq)");
    } else if (t->broker == QB_MQTT_BROKER_RABBITMQ && t->qos == 2) {
        p->key = p->at = "qos";
        snprintf(p->msg, sizeof(p->msg),
                 "RabbitMQ's MQTT plugin does not honour QoS 2 (it answers PUBACK and never "
                 "confirms): use 1");
    } else if (t->reconnect_initial_ms > t->reconnect_max_ms) {
        p->key = p->at = "reconnect_initial";
        snprintf(p->msg, sizeof(p->msg), "must not be greater than reconnect_max (%ums > %ums)",
                 t->reconnect_initial_ms, t->reconnect_max_ms);
    } else if (!t->tls_cert_file != !t->tls_key_file) {
        p->key = t->tls_cert_file ? "tls.key_file" : "tls.cert_file";
        p->at = "tls";
        snprintf(p->msg, sizeof(p->msg),
                 "missing required key (cert_file and key_file go together)");
    } else {
        return QB_OK;
    }
    return QB_ECONFIG;
}

/* Commands received without TLS and without a user name come from anyone on the network. */
static size_t mqtt_config_warn_commands(const struct qb_transport_config *cfg,
                                        void (*emit)(void *arg, const char *line), void *arg)
{
    const struct qb_mqtt_config *t = cfg->backend;
    char line[512];

    if (!t || t->tls_ca_file || t->tls_cert_file || t->username)
        return 0;
    snprintf(line, sizeof(line),
             "transport %s: commands are received from %s:%d without TLS and without a "
             "username: anyone who can reach the broker can send them; set tls.ca_file and "
             "username (with password_file), or commands: false on this transport",
             cfg->name ? cfg->name : cfg->type, t->host ? t->host : "?", t->port);
    emit(arg, line);
    return 1;
}

/* ---- validation ---- */

static int mqtt_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    const char *name = cfg->name ? cfg->name : "mqtt";
    const struct qb_mqtt_config *mc = cfg->backend;
    const char *p = mc ? mc->topic_prefix : NULL;
    if (!mc) {
        snprintf(errbuf, errlen, "transport %s: no mqtt configuration", name);
    } else if (!mc->host || !mc->host[0]) {
        snprintf(errbuf, errlen, "transport %s: host must not be empty", name);
    } else if (mc->port < 1 || mc->port > 65535) {
        snprintf(errbuf, errlen, "transport %s: port %d is not in 1..65535", name, mc->port);
    } else if (mc->qos < 0 || mc->qos > 2) {
        snprintf(errbuf, errlen, "transport %s: qos %d is not 0, 1 or 2", name, mc->qos);
    } else if (!p || !p[0] || strpbrk(p, "+#") || p[0] == '/' || p[strlen(p) - 1] == '/') {
        snprintf(errbuf, errlen,
                 "transport %s: topic_prefix '%s' must be non-empty, without '+' or '#', and "
                 "not start or end with '/'",
                 name, p ? p : "");
    } else if (mc->max_inflight < 1 || mc->max_inflight > 65535) {
        snprintf(errbuf, errlen, "transport %s: max_inflight %u is not in 1..65535", name,
                 mc->max_inflight);
    } else if (!mc->tls_cert_file != !mc->tls_key_file) {
        snprintf(errbuf, errlen, "transport %s: tls.cert_file and tls.key_file go together", name);
    } else if (mc->protocol != QB_MQTT_V5 && mc->protocol != QB_MQTT_V311) {
        snprintf(errbuf, errlen, "transport %s: protocol must be 5 or 3.1.1", name);
    } else {
        return QB_OK;
    }
    return QB_ECONFIG;
}

/* ---- deferred reports ---- */

static void push_done(struct mqtt_backend *b, void *token, int status)
{
    if (b->n_done == b->cap_done) {
        size_t cap = b->cap_done ? b->cap_done * 2 : 64;
        struct done_entry *d = realloc(b->done, cap * sizeof(*d));
        if (!d) {
            /* cannot defer: better a report now than a token stuck in flight */
            QB_LOG_ERR(NULL, "mqtt %s: out of memory deferring a delivery report", b->name);
            b->cb->delivered(b->owner, token, status);
            return;
        }
        b->done = d;
        b->cap_done = cap;
    }
    b->done[b->n_done++] = (struct done_entry){token, status};
    uv_idle_start(&b->idle, on_idle);
}

static void flush_done(struct mqtt_backend *b)
{
    /* reports may publish, and publishing may add reports: take the list first */
    while (b->n_done) {
        struct done_entry *list = b->done;
        size_t n = b->n_done;
        b->done = NULL;
        b->n_done = b->cap_done = 0;
        for (size_t i = 0; i < n; i++)
            b->cb->delivered(b->owner, list[i].token, list[i].status);
        free(list);
    }
}

static void on_idle(uv_idle_t *idle)
{
    struct mqtt_backend *b = idle->data;
    uv_idle_stop(idle);
    flush_done(b);
    if (b->state == MQTT_CONNECTED && b->inflight < b->mc->max_inflight &&
        (b->want_writable || b->starved)) {
        b->want_writable = b->starved = false;
        b->cb->writable(b->owner);
    }
}

static void wake(struct mqtt_backend *b)
{
    b->want_writable = true;
    uv_idle_start(&b->idle, on_idle);
}

/* ---- libmosquitto callbacks ---- */

static const char *mosq_err_text(int rc)
{
    return rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
}

/*
 * MQTT 5 subscribes with Retain As Published: otherwise the broker clears the
 * retain flag on a retained command it forwards to this live subscription (or
 * queued for this session), and on_message could not tell it from any other.
 * MQTT 3.1.1 has no such option (docs/commands-and-security.md).
 */
static void subscribe_level(struct mqtt_backend *b, size_t levels)
{
    int options = b->mc->protocol == QB_MQTT_V311 ? 0 : MQTT_SUB_OPT_RETAIN_AS_PUBLISHED;
    char *filter = qb_mqtt_topic_command_filter(b->command_head, levels);
    int rc = filter
                 ? mosquitto_subscribe_v5(b->mosq, &b->level_mid[levels], filter, 1, options, NULL)
                 : MOSQ_ERR_NOMEM;
    if (rc != MOSQ_ERR_SUCCESS) /* a lost link: the next CONNACK subscribes again */
        QB_LOG_WARN(NULL, "mqtt %s: cannot subscribe to %s: %s", b->name,
                    filter ? filter : b->command_topic, mosq_err_text(rc));
    free(filter);
}

static void subscribe_commands(struct mqtt_backend *b)
{
    for (size_t levels = 1; levels <= b->cmd_levels; levels++)
        subscribe_level(b, levels);
}

/*
 * rabbitmq: the first publish for a VM whose name takes more levels than any
 * before subscribes the filters down to that depth (they stay for the
 * transport's lifetime and are subscribed again on every CONNACK).
 */
static void learn_levels(struct mqtt_backend *b, const char *vm)
{
    size_t levels = qb_mqtt_topic_levels(vm);

    if (b->mc->broker != QB_MQTT_BROKER_RABBITMQ || levels <= b->cmd_levels ||
        levels > QB_MQTT_TOPIC_LEVELS_MAX)
        return;
    while (b->cmd_levels < levels) {
        b->cmd_levels++;
        if (b->subscribed && b->state == MQTT_CONNECTED)
            subscribe_level(b, b->cmd_levels);
    }
    sync_poll(b); /* the SUBSCRIBE may wait to be written */
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mqtt_backend *b = obj;
    if (rc != 0) {
        QB_LOG_WARN(NULL, "mqtt %s: %s:%d refused the connection: %s", b->name, b->mc->host,
                    b->mc->port,
                    b->mc->protocol == QB_MQTT_V5 ? mosquitto_reason_string(rc)
                                                  : mosquitto_connack_string(rc));
        b->attempt_logged = true; /* the disconnect that follows is the same failure */
        return;
    }
    if (b->state == MQTT_CLOSING)
        return;
    b->state = MQTT_CONNECTED;
    /*
     * Not after a takeover: two clients with one id would otherwise take the
     * session from each other at the initial back-off, for ever.
     */
    if (!b->takeovers)
        b->reconnect_attempt = 0;
    b->connected_at = uv_now(b->loop);
    /*
     * Every time: a clean session, or a persistent one the broker expired, has
     * no subscription. Before "online": the broker handles one connection's
     * packets in order, so whoever sees "online" knows commands are heard.
     */
    if (b->subscribed)
        subscribe_commands(b);
    int mid;
    int prc = mosquitto_publish(b->mosq, &mid, b->status_topic, 6, "online", 1, true);
    if (prc != MOSQ_ERR_SUCCESS)
        QB_LOG_WARN(NULL, "mqtt %s: cannot publish online status: %s", b->name, mosq_err_text(prc));
    QB_LOG_INFO(NULL, "mqtt %s: connected to %s:%d%s", b->name, b->mc->host, b->mc->port,
                (flags & 1) ? " (session resumed)" : "");
    b->cb->link(b->owner, true, "connected");
    /*
     * Deferred: libmosquitto resends the old in-flight messages right after
     * this callback returns; new ones must queue behind them.
     */
    wake(b);
}

/*
 * Another client with the same client id: another bridge with the same
 * bridge.id (or client_id). The broker says so with MQTT 5's DISCONNECT 0x8E;
 * brokers that do not (MQTT 3.1.1, mosquitto before 2.0.15) just close the
 * connection, so a run of closes of freshly accepted connections is read as
 * the same thing. Either way the line is a warning at most once a minute
 * (with the count of the others), and the back-off keeps growing across
 * reconnects instead of starting again at reconnect_initial after each
 * CONNACK: the two clients stop taking the session from each other twice a
 * second.
 */
static void log_takeover(struct mqtt_backend *b, bool said)
{
    uint64_t suppressed = 0;

    if (!qb_log_limit_allow(&b->takeover_log, uv_now(b->loop), &suppressed))
        return;
    if (said)
        QB_LOG_WARN(NULL,
                    "mqtt %s: %s:%d took the session over for another client with the same "
                    "client id '%s' (MQTT 5 'session taken over'): two bridges share bridge.id "
                    "'%s' (or client_id); give each bridge its own. Reconnecting with a growing "
                    "back-off, up to %ums",
                    b->name, b->mc->host, b->mc->port, b->client_id, b->bridge_id,
                    b->mc->reconnect_max_ms);
    else
        QB_LOG_WARN(NULL,
                    "mqtt %s: %s:%d closed the session %u times in a row soon after accepting "
                    "it, without a reason: most likely another client with the same client id "
                    "'%s' took it over (the broker does not report 'session taken over'): two "
                    "bridges share bridge.id '%s' (or client_id); give each bridge its own. "
                    "Reconnecting with a growing back-off, up to %ums",
                    b->name, b->mc->host, b->mc->port, b->quick_closes, b->client_id, b->bridge_id,
                    b->mc->reconnect_max_ms);
    if (suppressed)
        QB_LOG_WARN(NULL, "mqtt %s: session taken over %llu more times since the last report",
                    b->name, (unsigned long long)suppressed);
}

/*
 * How long another client's back-off can keep it away from a session it
 * fights over: a connection closed sooner than this counts as a quick close.
 */
static uint64_t takeover_window_ms(const struct mqtt_backend *b)
{
    return 2 * (uint64_t)b->mc->reconnect_max_ms + 1000;
}

/*
 * Classifies the end of an accepted connection (rc as the disconnect
 * callback got it). Returns true when it looks like, or is, a takeover.
 */
static bool note_takeover(struct mqtt_backend *b, int rc)
{
    bool said = b->mc->protocol == QB_MQTT_V5 && rc == MQTT_RC_SESSION_TAKEN_OVER;
    bool quick =
        rc == MOSQ_ERR_CONN_LOST && uv_now(b->loop) - b->connected_at < takeover_window_ms(b);

    b->quick_closes = said || quick ? b->quick_closes + 1 : 0;
    if (!said && b->quick_closes < MQTT_TAKEOVER_QUICK_CLOSES) {
        b->takeovers = 0;
        return false;
    }
    b->takeovers++;
    log_takeover(b, said);
    return true;
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                          const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mqtt_backend *b = obj;
    /* the socket is still open here in the read/write paths: stop watching it first */
    drop_poll(b);
    if (b->state == MQTT_CLOSING || b->state == MQTT_CLOSED)
        return;
    /* libmosquitto passes the broker's DISCONNECT reason code as rc */
    const char *why = b->mc->protocol == QB_MQTT_V5 && rc == MQTT_RC_SESSION_TAKEN_OVER
                          ? "session taken over"
                          : mosq_err_text(rc);
    if (b->qos2_puback) {
        QB_LOG_ERR(NULL,
                   "mqtt %s: %s:%d does not honour QoS 2: it answered a QoS 2 publish with PUBACK "
                   "(RabbitMQ's MQTT plugin grants at most QoS 1); set qos: 1. Not reconnecting",
                   b->name, b->mc->host, b->mc->port);
        if (b->state == MQTT_CONNECTED)
            b->cb->link(b->owner, false, "the broker does not honour qos 2");
        b->state = MQTT_IDLE;
        b->gave_up = true;
        return;
    }
    /* closed on us, before any CONNACK, and not by TLS (libmosquitto says so when it is) */
    bool v5_dropped = b->state == MQTT_CONNECTING && rc == MOSQ_ERR_CONN_LOST &&
                      b->mc->protocol == QB_MQTT_V5 && !b->attempt_lib_error;
    if (b->state == MQTT_CONNECTED) {
        if (!note_takeover(b, rc)) {
            QB_LOG_WARN(NULL, "mqtt %s: connection to %s:%d lost: %s", b->name, b->mc->host,
                        b->mc->port, why);
            b->reconnect_attempt = 0;
        }
        b->cb->link(b->owner, false, why);
    } else {
        b->quick_closes = 0; /* the broker refused or could not be reached: another story */
        if (!b->attempt_logged)
            QB_LOG_WARN(NULL, "mqtt %s: cannot connect to %s:%d: %s%s", b->name, b->mc->host,
                        b->mc->port, why,
                        v5_dropped ? " (closed after CONNECT without an answer, as a broker that "
                                     "does not speak MQTT 5 does, e.g. RabbitMQ's MQTT plugin: "
                                     "try protocol: \"3.1.1\")"
                                   : "");
    }
    b->state = MQTT_IDLE;
    if (b->mc->qos == 0) {
        /* unwritten QoS 0 packets are discarded on reconnect: have them sent again */
        for (size_t mid = 0; mid < MQTT_MID_SLOTS && b->inflight; mid++) {
            if (b->tokens[mid]) {
                push_done(b, b->tokens[mid], QB_EIO);
                b->tokens[mid] = NULL;
                b->inflight--;
            }
        }
    }
    schedule_reconnect(b);
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mqtt_backend *b = obj;
    int status = QB_OK;
    if (reason >= 0x80) {
        QB_LOG_WARN(NULL, "mqtt %s: broker refused a publish: %s", b->name,
                    mosquitto_reason_string(reason));
        status = QB_EPROTO;
    }
    if (mid == b->offline_mid && b->state == MQTT_CLOSING) {
        b->offline_acked = true;
        /* not from here: mosquitto_destroy must not run inside a libmosquitto callback */
        uv_timer_start(&b->close_timer, on_close_timer, 0, 0);
        return;
    }
    if (mid < 0 || mid >= MQTT_MID_SLOTS)
        return;
    void *token = b->tokens[mid];
    if (!token) {
        if (b->in_publish) {
            b->early_mid = mid;
            b->early_status = status;
        }
        return; /* our status messages, or a resend of something already failed */
    }
    b->tokens[mid] = NULL;
    b->inflight--;
    push_done(b, token, status);
    if (b->starved)
        wake(b);
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int n, const int *granted,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct mqtt_backend *b = obj;
    size_t levels = 1;
    for (size_t l = 2; l <= b->cmd_levels; l++)
        if (b->level_mid[l] == mid)
            levels = l;
    char *filter = qb_mqtt_topic_command_filter(b->command_head, levels);
    const char *topic = filter ? filter : b->command_topic;
    if (n < 1 || granted[0] >= 0x80)
        QB_LOG_ERR(NULL, "mqtt %s: broker refused the subscription to %s: %s", b->name, topic,
                   n < 1 ? "empty SUBACK" : mosquitto_reason_string(granted[0]));
    else
        QB_LOG_INFO(NULL, "mqtt %s: receiving commands on %s", b->name, topic);
    free(filter);
}

/* A topic no command of ours can have: a few lines a minute, the topic cut. */
static void log_unplaced(struct mqtt_backend *b, const char *topic)
{
    uint64_t suppressed;

    if (qb_log_limit_allow(&b->unplaced_log, qb_monotonic_ms(), &suppressed))
        QB_LOG_WARN(NULL, "mqtt %s: ignoring a message on '%.*s%s': not %s<vm>/command%s", b->name,
                    MQTT_LOG_TOPIC_MAX, topic, strlen(topic) > MQTT_LOG_TOPIC_MAX ? "..." : "",
                    b->command_head,
                    b->mc->broker == QB_MQTT_BROKER_RABBITMQ
                        ? ""
                        : " (RabbitMQ splits dotted names into levels: set broker: rabbitmq)");
    if (suppressed)
        QB_LOG_WARN(NULL, "mqtt %s: %llu more messages on unknown topics were not logged", b->name,
                    (unsigned long long)suppressed);
}

/*
 * A message on <prefix>/<bridge>/<vm>/command goes to the generic layer with
 * <vm> as the hint and the MQTT 5 response topic and correlation data, all
 * borrowed for the call. Runs inside mosquitto_loop_read on our loop.
 */
static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)mosq;
    struct mqtt_backend *b = obj;
    bool oom;
    char *vm_hint = qb_mqtt_topic_command_vm(b->command_head, msg->topic,
                                             b->mc->broker == QB_MQTT_BROKER_RABBITMQ, &oom);
    if (!vm_hint) {
        if (oom)
            QB_LOG_ERR(NULL, "mqtt %s: out of memory, command on %.*s lost", b->name,
                       MQTT_LOG_TOPIC_MAX, msg->topic);
        else
            log_unplaced(b, msg->topic);
        return;
    }
    if (msg->retain) {
        /* it stays on the broker and would come again with every subscribe */
        QB_LOG_WARN(vm_hint, "mqtt %s: ignoring a retained command on %s", b->name, msg->topic);
        free(vm_hint);
        return;
    }
    char *reply_topic = NULL;
    void *correlation = NULL;
    uint16_t correlation_len = 0;
    if (props) {
        mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &reply_topic, false);
        mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &correlation,
                                       &correlation_len, false);
    }
    struct qb_inbound in = {
        .payload = msg->payload ? msg->payload : "",
        .len = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0,
        .vm_hint = vm_hint,
        .reply_topic = reply_topic,
        .correlation = correlation,
        .correlation_len = correlation ? correlation_len : 0,
    };
    b->cb->inbound(b->owner, &in, 0);
    free(reply_topic);
    free(correlation);
    free(vm_hint);
}

/*
 * libmosquitto's own errors and warnings carry the reason a connection failed
 * ("OpenSSL Error: ... certificate required") that the return codes lose, so
 * they are logged at warn, and remembered for the attempt (a TLS failure is
 * no MQTT 5 problem); its chatter stays at debug, where a PUBACK for one of our
 * QoS 2 packets shows. This may run on the connect worker thread: the logger
 * writes each line with one fprintf, which stdio locks, and the flag it sets
 * is read on the loop after the work is done.
 */
static void on_log(struct mosquitto *mosq, void *obj, int level, const char *str)
{
    (void)mosq;
    struct mqtt_backend *b = obj;
    const char *puback = b->mc->qos == 2 ? strstr(str, " received PUBACK (Mid: ") : NULL;
    if (puback) {
        /* every publish of ours but the status is QoS 2: a PUBACK for one of them */
        long mid = strtol(puback + strlen(" received PUBACK (Mid: "), NULL, 10);
        if (mid > 0 && mid < MQTT_MID_SLOTS && b->tokens[mid])
            b->qos2_puback = true;
    }
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) {
        b->attempt_lib_error = true;
        QB_LOG_WARN(NULL, "mqtt %s: libmosquitto: %s", b->name, str);
    } else {
        QB_LOG_DEBUG(NULL, "mqtt %s: libmosquitto: %s", b->name, str);
    }
}

/* ---- socket watching ---- */

/*
 * Acknowledges what the broker sent at once instead of after the kernel's
 * delayed-ACK timer. mosquitto leaves Nagle on by default (set_tcp_nodelay
 * false): it holds each PUBACK until the previous one is acknowledged, which
 * without this happened only when our next PUBLISH carried the ACK, so a
 * delivery report waited for the next event (p50 1.2 ms at 2,000 events/s,
 * 0.4 ms with this; docs/benchmarks.md). Linux leaves quick-ACK mode on its
 * own, hence once per read. Best effort: a failure only costs latency.
 */
static void ack_promptly(int fd)
{
#ifdef TCP_QUICKACK
    int one = 1;
    if (fd >= 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
#else
    (void)fd;
#endif
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct mqtt_backend *b = poll->data;
    const char *scope = qb_log_transport_begin(b->name); /* libmosquitto's callbacks run here */
    int rc = MOSQ_ERR_SUCCESS;
    if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT))) {
        rc = mosquitto_loop_read(b->mosq, 1);
        ack_promptly(mosquitto_socket(b->mosq));
    }
    if (rc == MOSQ_ERR_SUCCESS && b->poll == poll && (events & UV_WRITABLE)) {
        b->connect_pending = false;
        mosquitto_loop_write(b->mosq, 1);
    }
    sync_poll(b);
    qb_log_transport_end(scope);
}

/* Brings the uv_poll in line with libmosquitto's socket and write interest. */
static void sync_poll(struct mqtt_backend *b)
{
    if (b->connect_in_thread)
        return; /* the worker owns mosq; the work's completion syncs */
    int fd = mosquitto_socket(b->mosq);
    if (b->poll && b->poll_fd != fd)
        drop_poll(b);
    if (fd < 0 || b->state == MQTT_CLOSED)
        return;
    if (!b->poll) {
        uv_poll_t *p = malloc(sizeof(*p));
        if (!p || uv_poll_init_socket(b->loop, p, fd) != 0) {
            free(p);
            QB_LOG_ERR(NULL, "mqtt %s: cannot watch the broker socket", b->name);
            return;
        }
        p->data = b;
        b->poll = p;
        b->poll_fd = fd;
    }
    int events = UV_READABLE;
    if (b->connect_pending || mosquitto_want_write(b->mosq))
        events |= UV_WRITABLE;
    if (events != b->poll_events) {
        uv_poll_start(b->poll, events, on_poll);
        b->poll_events = events;
    }
}

static void on_misc_timer(uv_timer_t *timer)
{
    struct mqtt_backend *b = timer->data;
    if (b->connect_in_thread)
        return;
    const char *scope = qb_log_transport_begin(b->name);
    if (mosquitto_socket(b->mosq) >= 0)
        mosquitto_loop_misc(b->mosq);
    sync_poll(b);
    qb_log_transport_end(scope);
}

/* ---- connecting ---- */

static int keepalive_s(const struct mqtt_backend *b)
{
    int keepalive = (int)(b->mc->keepalive_ms / 1000);
    return keepalive < 5 ? 5 : keepalive; /* libmosquitto's minimum */
}

/* What an attempt's first step returned (err: errno of the thread that made it). */
static void connect_attempted(struct mqtt_backend *b, int rc, int err)
{
    if (rc == MOSQ_ERR_SUCCESS) {
        b->ever_connected = true;
        sync_poll(b);
        return;
    }
    errno = err;
    const char *scope = qb_log_transport_begin(b->name);
    QB_LOG_WARN(NULL, "mqtt %s: cannot connect to %s:%d: %s", b->name, b->mc->host, b->mc->port,
                mosq_err_text(rc));
    qb_log_transport_end(scope);
    b->state = MQTT_IDLE;
    b->connect_pending = false;
    sync_poll(b);
    schedule_reconnect(b);
}

/* Worker thread: the only libmosquitto call that sends CONNECT properties. */
static void connect_work(uv_work_t *work)
{
    struct mqtt_backend *b = work->data;
    errno = 0;
    b->connect_rc = mosquitto_connect_bind_v5(b->mosq, b->mc->host, b->mc->port, keepalive_s(b),
                                              NULL, b->connect_props);
    b->connect_errno = errno;
}

static void on_connect_work_done(uv_work_t *work, int status)
{
    (void)status; /* never cancelled: uv_cancel is not used */
    struct mqtt_backend *b = work->data;
    b->connect_in_thread = false;
    if (b->state == MQTT_CLOSING) {
        /* close came while the worker held mosq and waited for us */
        finish_close(b);
        return;
    }
    connect_attempted(b, b->connect_rc, b->connect_errno);
}

static void on_reconnect_timer(uv_timer_t *timer)
{
    struct mqtt_backend *b = timer->data;
    if (b->state != MQTT_IDLE || b->gave_up)
        return;
    drop_poll(b); /* the new socket may get the old descriptor number */
    b->attempt_logged = false;
    b->attempt_lib_error = false;
    b->state = MQTT_CONNECTING;
    b->connect_pending = true;
    b->connect_started = true;
    if (b->connect_props) {
        b->connect_in_thread = true;
        int qrc = uv_queue_work(b->loop, &b->connect_work, connect_work, on_connect_work_done);
        if (qrc == 0)
            return;
        b->connect_in_thread = false;
        QB_LOG_ERR(NULL, "mqtt %s: cannot start a connect: %s", b->name, uv_strerror(qrc));
        b->state = MQTT_IDLE;
        b->connect_pending = false;
        schedule_reconnect(b);
        return;
    }
    int rc = b->ever_connected
                 ? mosquitto_reconnect_async(b->mosq)
                 : mosquitto_connect_async(b->mosq, b->mc->host, b->mc->port, keepalive_s(b));
    connect_attempted(b, rc, errno);
}

/* Exponential back-off with jitter: a random delay in [d/2, d], d doubling up to the max. */
static void schedule_reconnect(struct mqtt_backend *b)
{
    uint64_t lo = b->mc->reconnect_initial_ms ? b->mc->reconnect_initial_ms : 500;
    uint64_t hi = b->mc->reconnect_max_ms >= lo ? b->mc->reconnect_max_ms : lo;
    uint64_t d = lo;
    for (unsigned i = 0; i < b->reconnect_attempt && d < hi; i++)
        d *= 2;
    if (d > hi)
        d = hi;
    b->reconnect_attempt++;
    uint64_t delay = d / 2 + (uint64_t)rand() % (d / 2 + 1);
    uv_timer_start(&b->reconnect_timer, on_reconnect_timer, delay, 0);
}

/* ---- create ---- */

static int read_password(const char *path, char **out, char *errbuf, size_t errlen,
                         const char *name)
{
    char what[160], msg[400];
    snprintf(what, sizeof(what), "transport %s: password_file", name);
    /* checked on the fd it reads, so the file read is the file checked */
    int fd = qb_secret_open(what, path, msg, sizeof(msg));
    FILE *fp = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!fp) {
        if (fd >= 0) {
            snprintf(msg, sizeof(msg), "cannot read '%s': %s", path, strerror(errno));
            close(fd);
        }
        snprintf(errbuf, errlen, "transport %s: password_file %s", name, msg);
        return QB_ECONFIG;
    }
    char *line = NULL;
    size_t cap = 0;
    errno = 0; /* getline leaves errno alone at end of file */
    ssize_t n = getline(&line, &cap, fp);
    int err = errno;
    fclose(fp);
    if (n < 0) {
        free(line);
        snprintf(errbuf, errlen, "transport %s: cannot read password_file %s: %s", name, path,
                 err ? strerror(err) : "empty file");
        return QB_ECONFIG;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    *out = line;
    return QB_OK;
}

/*
 * Builds b->mosq for b->cfg with every option and callback set; clean is the
 * MQTT clean-session flag. On failure returns QB_ENOMEM or QB_ECONFIG with
 * *what saying which part failed, and may leave a half-built b->mosq for the
 * caller to destroy.
 */
static int mosq_build(struct mqtt_backend *b, bool clean, const char **what)
{
    const struct qb_mqtt_config *cfg = b->mc;
    bool v5 = cfg->protocol != QB_MQTT_V311;
    *what = "out of memory";
    b->mosq = mosquitto_new(b->client_id, clean, b);
    if (!b->mosq)
        return QB_ENOMEM;
    mosquitto_int_option(b->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    mosquitto_int_option(b->mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_int_option(b->mosq, MOSQ_OPT_SEND_MAXIMUM, (int)cfg->max_inflight);
    if ((cfg->username || b->password) &&
        mosquitto_username_pw_set(b->mosq, cfg->username, b->password) != MOSQ_ERR_SUCCESS) {
        *what = "cannot set username/password";
        return QB_ECONFIG;
    }
    if ((cfg->tls_ca_file || cfg->tls_cert_file) &&
        mosquitto_tls_set(b->mosq, cfg->tls_ca_file, NULL, cfg->tls_cert_file, cfg->tls_key_file,
                          NULL) != MOSQ_ERR_SUCCESS) {
        *what = "cannot use the TLS files (check ca_file, cert_file, key_file)";
        return QB_ECONFIG;
    }
    if (cfg->tls_insecure && mosquitto_tls_insecure_set(b->mosq, true) != MOSQ_ERR_SUCCESS) {
        *what = "cannot set tls.insecure (needs tls.ca_file)";
        return QB_ECONFIG;
    }
    int wrc = v5 ? mosquitto_will_set_v5(b->mosq, b->status_topic, 7, "offline", 1, true, NULL)
                 : mosquitto_will_set(b->mosq, b->status_topic, 7, "offline", 1, true);
    if (wrc != MOSQ_ERR_SUCCESS) {
        *what = "cannot set the last will";
        return QB_ECONFIG;
    }
    mosquitto_connect_v5_callback_set(b->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(b->mosq, on_disconnect);
    mosquitto_publish_v5_callback_set(b->mosq, on_publish);
    mosquitto_message_v5_callback_set(b->mosq, on_message);
    mosquitto_subscribe_v5_callback_set(b->mosq, on_subscribe);
    mosquitto_log_callback_set(b->mosq, on_log);
    return QB_OK;
}

/* Frees what create allocates, for both the failure path and the final close. */
static void backend_free(struct mqtt_backend *b)
{
    if (b->mosq)
        mosquitto_destroy(b->mosq);
    mosquitto_property_free_all(&b->props);
    mosquitto_property_free_all(&b->connect_props);
    free(b->tokens);
    free(b->done);
    free(b->status_topic);
    free(b->command_topic);
    free(b->command_head);
    free(b->client_id);
    free(b->password);
    free(b->bridge_id);
    free(b);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct mqtt_backend *b = h->data;
    if (--b->handles_open > 0)
        return;
    void (*closed)(void *) = b->closed;
    void *arg = b->closed_arg;
    backend_free(b);
    if (closed)
        closed(arg);
}

static int mqtt_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                       const struct qb_bridge_info *bridge,
                       const struct qb_transport_backend_cb *cb, void *owner, void **backend,
                       char *errbuf, size_t errlen)
{
    const char *name = cfg->name ? cfg->name : "mqtt";
    int rc = QB_ENOMEM;
    const char *what = "out of memory";
    struct mqtt_backend *b = calloc(1, sizeof(*b));
    if (!b)
        goto fail;
    if (!lib_ready) {
        mosquitto_lib_init();
        lib_ready = true;
    }
    b->loop = loop;
    qb_log_limit_init(&b->takeover_log, 1, MQTT_TAKEOVER_LOG_INTERVAL_MS);
    b->cfg = cfg;
    b->mc = cfg->backend; /* mqtt_validate has run: not NULL */
    b->cb = cb;
    b->owner = owner;
    b->name = name;
    b->early_mid = -1;
    b->offline_mid = -1;
    b->cmd_levels = 1;
    qb_log_limit_init(&b->unplaced_log, MQTT_UNPLACED_LOG_FIRST, MQTT_UNPLACED_LOG_INTERVAL_MS);
    b->bridge_id = strdup(bridge && bridge->id ? bridge->id : "bridge");
    b->tokens = calloc(MQTT_MID_SLOTS, sizeof(*b->tokens));
    if (!b->bridge_id || !b->tokens)
        goto fail;
    if (asprintf(&b->status_topic, "%s/%s/status", b->mc->topic_prefix, b->bridge_id) < 0) {
        b->status_topic = NULL;
        goto fail;
    }
    if (asprintf(&b->command_topic, "%s/%s/+/command", b->mc->topic_prefix, b->bridge_id) < 0) {
        b->command_topic = NULL;
        goto fail;
    }
    if (asprintf(&b->command_head, "%s/%s/", b->mc->topic_prefix, b->bridge_id) < 0) {
        b->command_head = NULL;
        goto fail;
    }
    if (b->mc->client_id)
        b->client_id = strdup(b->mc->client_id);
    else if (asprintf(&b->client_id, "qmp-bridge-%s", b->bridge_id) < 0)
        b->client_id = NULL;
    if (!b->client_id)
        goto fail;
    if (b->mc->password_file) {
        rc = read_password(b->mc->password_file, &b->password, errbuf, errlen, name);
        if (rc != QB_OK)
            goto fail_errbuf;
    }
    /* clean until someone subscribes: a pure publisher leaves no session behind */
    rc = mosq_build(b, true, &what);
    if (rc != QB_OK)
        goto fail;
    if (b->mc->protocol != QB_MQTT_V311 &&
        mosquitto_property_add_string(&b->props, MQTT_PROP_CONTENT_TYPE, MQTT_CONTENT_TYPE) !=
            MOSQ_ERR_SUCCESS) {
        rc = QB_ENOMEM;
        what = "out of memory";
        goto fail;
    }

    uv_timer_init(loop, &b->misc_timer);
    uv_timer_init(loop, &b->reconnect_timer);
    uv_timer_init(loop, &b->close_timer);
    uv_idle_init(loop, &b->idle);
    b->misc_timer.data = b->reconnect_timer.data = b->close_timer.data = b->idle.data = b;
    b->connect_work.data = b;
    b->handles_open = 4;
    uint64_t ka = b->mc->keepalive_ms >= 5000 ? b->mc->keepalive_ms : 5000;
    uv_timer_start(&b->misc_timer, on_misc_timer, ka / 2, ka / 2);
    /* connect from the loop: create must not block (not even on a resolver) */
    uv_timer_start(&b->reconnect_timer, on_reconnect_timer, 0, 0);
    *backend = b;
    return QB_OK;

fail:
    snprintf(errbuf, errlen, "transport %s: %s", name, what);
fail_errbuf:
    if (b)
        backend_free(b);
    return rc;
}

/* ---- publish ---- */

static int map_publish_error(int rc)
{
    switch (rc) {
    case MOSQ_ERR_NOMEM:
        return QB_ENOMEM;
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
        return QB_ETOOBIG;
    default:
        return QB_EINVAL;
    }
}

static bool is_link_error(int rc)
{
    return rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO;
}

/*
 * The topic for msg, new (caller frees), or NULL when out of memory. A reply
 * goes where the command asked, else next to the VM's other topics.
 */
static char *publish_topic(const struct mqtt_backend *b, const struct qb_message *msg)
{
    const char *prefix = b->mc->topic_prefix;
    char *topic = NULL;
    int n;
    if (msg->kind == QB_MSG_REPLY && msg->reply_topic)
        return strdup(msg->reply_topic);
    if (msg->kind == QB_MSG_REPLY)
        n = asprintf(&topic, "%s/%s/%s/result", prefix, b->bridge_id, msg->vm);
    else if (msg->kind == QB_MSG_STATE)
        n = asprintf(&topic, "%s/%s/%s/state", prefix, b->bridge_id, msg->vm);
    else
        n = asprintf(&topic, "%s/%s/%s/event/%s", prefix, b->bridge_id, msg->vm, msg->type);
    return n < 0 ? NULL : topic;
}

/*
 * The v5 properties of a reply: content type plus the command's correlation
 * data. Returns QB_OK with *out new (free with mosquitto_property_free_all).
 */
static int reply_props(const struct qb_message *msg, mosquitto_property **out)
{
    *out = NULL;
    if (mosquitto_property_add_string(out, MQTT_PROP_CONTENT_TYPE, MQTT_CONTENT_TYPE) !=
            MOSQ_ERR_SUCCESS ||
        mosquitto_property_add_binary(out, MQTT_PROP_CORRELATION_DATA, msg->correlation,
                                      (uint16_t)msg->correlation_len) != MOSQ_ERR_SUCCESS) {
        mosquitto_property_free_all(out);
        return QB_ENOMEM;
    }
    return QB_OK;
}

/*
 * A Response Topic under topic_prefix (the prefix itself, or below it) would
 * let a requester publish into the namespace where consumers read the
 * bridges' events, state and status as the bridge's own; replies go to
 * <prefix>/<bridge>/<vm>/result instead.
 */
static bool mqtt_reply_topic_allowed(void *backend, const char *topic)
{
    const struct mqtt_backend *b = backend;
    const char *prefix = b->mc->topic_prefix;
    size_t n = strlen(prefix);

    return !(strncmp(topic, prefix, n) == 0 && (topic[n] == '\0' || topic[n] == '/'));
}

static int mqtt_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct mqtt_backend *b = backend;
    if (b->state != MQTT_CONNECTED || b->inflight >= b->mc->max_inflight) {
        b->starved = true;
        return QB_EAGAIN;
    }
    bool to_reply_topic = msg->kind == QB_MSG_REPLY && msg->reply_topic;
    if ((!msg->vm && !to_reply_topic) || (msg->kind == QB_MSG_EVENT && !msg->type)) {
        QB_LOG_WARN(msg->vm, "mqtt %s: message without vm or type cannot be routed", b->name);
        return QB_EINVAL;
    }
    if (to_reply_topic && (!msg->reply_topic[0] || strpbrk(msg->reply_topic, "+#"))) {
        /* the requester's mistake: retrying would never help, and the result is an event too */
        QB_LOG_WARN(msg->vm, "mqtt %s: not replying to invalid response topic '%s' (%s seq %llu)",
                    b->name, msg->reply_topic, msg->type ? msg->type : "reply",
                    (unsigned long long)msg->sequence);
        push_done(b, token, QB_OK);
        return QB_OK;
    }
    if (msg->len > (size_t)MQTT_MAX_PAYLOAD)
        return QB_ETOOBIG;
    if (msg->vm)
        learn_levels(b, msg->vm);
    char *topic = publish_topic(b, msg);
    if (!topic)
        return QB_ENOMEM;
    mosquitto_property *own_props = NULL;
    /* an empty retained message deletes the state topic: it is not a CloudEvent */
    const mosquitto_property *props = qb_message_clears_state(msg) ? NULL : b->props;
    if (b->props && msg->kind == QB_MSG_REPLY && msg->correlation) {
        if (msg->correlation_len > UINT16_MAX) {
            QB_LOG_WARN(msg->vm, "mqtt %s: correlation data of %zu bytes dropped from a reply",
                        b->name, msg->correlation_len);
        } else if (reply_props(msg, &own_props) != QB_OK) {
            free(topic);
            return QB_ENOMEM;
        } else {
            props = own_props;
        }
    }
    bool retain = msg->kind == QB_MSG_STATE;
    int mid = -1;
    b->in_publish = true;
    b->early_mid = -1;
    int rc = mosquitto_publish_v5(b->mosq, &mid, topic, (int)msg->len, msg->payload, b->mc->qos,
                                  retain, props);
    b->in_publish = false;
    free(topic);
    mosquitto_property_free_all(&own_props);
    int result = QB_OK;
    if (rc == MOSQ_ERR_SUCCESS || (b->mc->qos > 0 && is_link_error(rc) && mid > 0)) {
        /* on a link error libmosquitto has already queued a QoS>0 copy and will resend it */
        if (b->early_mid == mid) {
            push_done(b, token, b->early_status);
        } else {
            b->tokens[mid] = token;
            b->inflight++;
        }
    } else if (is_link_error(rc)) {
        result = QB_EAGAIN; /* QoS 0 packet dropped; the disconnect will follow */
        b->starved = true;
    } else {
        QB_LOG_WARN(msg->vm, "mqtt %s: cannot publish %s seq %llu: %s", b->name,
                    msg->type ? msg->type : "state", (unsigned long long)msg->sequence,
                    mosquitto_strerror(rc));
        result = map_publish_error(rc);
    }
    b->early_mid = -1;
    sync_poll(b); /* the publish may have left bytes to write, or found the socket dead */
    return result;
}

/* ---- commands ---- */

/*
 * Subscribes to commands from now on. Before the first connection attempt the
 * client is rebuilt with a persistent session (see the top of the file);
 * later it stays clean and says so.
 */
static int mqtt_subscribe(void *backend)
{
    struct mqtt_backend *b = backend;
    if (!b->cfg->commands) {
        QB_LOG_WARN(NULL, "mqtt %s: commands: false, not receiving commands", b->name);
        return QB_EINVAL;
    }
    if (b->subscribed)
        return QB_OK;
    if (!b->connect_started) {
        if (b->mc->protocol != QB_MQTT_V311 &&
            mosquitto_property_add_int32(&b->connect_props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                         b->mc->session_expiry_s) != MOSQ_ERR_SUCCESS) {
            QB_LOG_ERR(NULL, "mqtt %s: out of memory subscribing to commands", b->name);
            return QB_ENOMEM;
        }
        struct mosquitto *clean = b->mosq;
        const char *what;
        int rc = mosq_build(b, false, &what);
        if (rc != QB_OK) {
            QB_LOG_ERR(NULL, "mqtt %s: cannot set up a persistent session: %s", b->name, what);
            if (b->mosq)
                mosquitto_destroy(b->mosq);
            b->mosq = clean;
            mosquitto_property_free_all(&b->connect_props);
            return rc;
        }
        mosquitto_destroy(clean);
    } else {
        QB_LOG_WARN(NULL,
                    "mqtt %s: subscribed after connecting: clean session, commands sent while "
                    "disconnected are lost",
                    b->name);
    }
    b->subscribed = true;
    if (b->state == MQTT_CONNECTED) {
        subscribe_commands(b);
        sync_poll(b);
    }
    return QB_OK;
}

/* ---- close ---- */

static void finish_close(struct mqtt_backend *b)
{
    if (b->state == MQTT_CLOSED || b->connect_in_thread)
        return; /* a connect on the worker: on_connect_work_done finishes */
    if (mosquitto_socket(b->mosq) >= 0) {
        mosquitto_disconnect(b->mosq);
        if (mosquitto_socket(b->mosq) >= 0 && mosquitto_want_write(b->mosq))
            mosquitto_loop_write(b->mosq, 1);
    }
    b->state = MQTT_CLOSED;
    flush_done(b);
    for (size_t mid = 0; mid < MQTT_MID_SLOTS && b->inflight; mid++) {
        if (b->tokens[mid]) {
            void *token = b->tokens[mid];
            b->tokens[mid] = NULL;
            b->inflight--;
            b->cb->delivered(b->owner, token, QB_ECLOSED);
        }
    }
    drop_poll(b);
    uv_close((uv_handle_t *)&b->misc_timer, on_handle_closed);
    uv_close((uv_handle_t *)&b->reconnect_timer, on_handle_closed);
    uv_close((uv_handle_t *)&b->close_timer, on_handle_closed);
    uv_close((uv_handle_t *)&b->idle, on_handle_closed);
}

static void on_close_timer(uv_timer_t *timer)
{
    struct mqtt_backend *b = timer->data;
    if (!b->offline_acked && b->offline_mid >= 0)
        QB_LOG_WARN(NULL, "mqtt %s: broker did not acknowledge the offline status in time",
                    b->name);
    finish_close(b);
}

static void mqtt_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct mqtt_backend *b = backend;
    bool connected = b->state == MQTT_CONNECTED;
    b->closed = closed;
    b->closed_arg = arg;
    b->state = MQTT_CLOSING;
    uv_timer_stop(&b->reconnect_timer);
    uint64_t wait = 0;
    if (connected) {
        int mid;
        if (mosquitto_publish(b->mosq, &mid, b->status_topic, 7, "offline", 1, true) ==
            MOSQ_ERR_SUCCESS) {
            b->offline_mid = mid;
            wait = MQTT_OFFLINE_WAIT_MS;
        }
        sync_poll(b);
    }
    uv_timer_start(&b->close_timer, on_close_timer, wait, 0);
}

const struct qb_transport_ops qb_transport_mqtt_ops = {
    .name = "mqtt",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_SUBSCRIBE | QB_TRANSPORT_CAP_REPLY,
    .config_keys = mqtt_config_keys,
    .config_size = sizeof(struct qb_mqtt_config),
    .config_finish = mqtt_config_finish,
    .config_warn_commands = mqtt_config_warn_commands,
    .validate = mqtt_validate,
    .create = mqtt_create,
    .publish = mqtt_publish,
    .subscribe = mqtt_subscribe,
    .reply_topic_allowed = mqtt_reply_topic_allowed,
    .close = mqtt_close,
};
