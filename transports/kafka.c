/*
 * kafka.c - the Kafka transport: a librdkafka producer driven by the bridge's
 * own libuv loop.
 *
 * librdkafka runs its broker I/O on internal threads, but every callback we
 * register (delivery reports, errors, logs) is served from its main queue,
 * and only when we poll it. The main queue signals a pipe when it goes from
 * empty to non-empty (rd_kafka_queue_io_event_enable); a uv_poll_t watches
 * the read end, and on readable we drain the pipe and poll until the queue is
 * empty again. Because librdkafka 2.0 only writes to the pipe on that
 * empty -> non-empty edge, leaving anything behind would mean never being
 * woken again: see serve_queue(). So every callback runs on the loop thread,
 * with no thread or timer of ours.
 *
 * Messages go to the events or state topic (templates with <bridge>, <vm>,
 * <type>), keyed by "<bridge>/<vm>" so one VM's messages share a partition
 * and keep their order. Idempotence (on by default) keeps that order across
 * retries inside librdkafka; a failed delivery report goes back to the
 * generic layer, which re-sends in order.
 *
 * Content modes follow the CloudEvents Kafka binding: structured (the
 * envelope as the value) or binary (data as the value, attributes as ce_*
 * headers).
 */
#include "error.h"
#include "log.h"
#include "transport_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How long close() lets librdkafka finish what is in flight; the generic layer already waited. */
#define KAFKA_CLOSE_FLUSH_MS 250
/* Queue polls per wake-up before yielding to the rest of the loop (see serve_queue). */
#define KAFKA_POLLS_PER_WAKEUP 16
/* Kafka's limit on a topic name is 249 characters. */
#define KAFKA_TOPIC_MAX 250

enum kafka_link { LINK_UNKNOWN, LINK_UP, LINK_DOWN };

struct kafka_backend {
    const struct qb_transport_config *cfg;
    const struct qb_bridge_info *bridge;
    const struct qb_transport_backend_cb *cb;
    void *owner;
    rd_kafka_t *rk;
    rd_kafka_queue_t *mainq;
    int wake_fds[2]; /* [0] watched by poll, [1] written by librdkafka */
    uv_poll_t poll;
    uv_timer_t close_timer; /* runs the close sequence from the loop, not from close() */
    enum kafka_link link;
    bool want_writable; /* we answered QB_EAGAIN: call writable() once reports free room */
    bool closing;
    uint64_t reports; /* delivery reports served, to tell when room was freed */
    int open_handles; /* uv handles not yet closed */
    void (*closed)(void *arg);
    void *closed_arg;
};

/* Defaults before the user's properties, so each can be overridden. */
static const struct {
    const char *key, *value;
} kafka_defaults[] = {
    {"enable.idempotence", "true"}, /* no duplicates or reordering on internal retries */
    {"acks", "all"},
    {"linger.ms", "5"}, /* events are small and latency matters more than batching */
};

/* What a refused produce means for the generic layer; anything else is QB_EIO. */
static const struct {
    rd_kafka_resp_err_t err;
    int code;
} kafka_produce_errors[] = {
    {RD_KAFKA_RESP_ERR__QUEUE_FULL, QB_EAGAIN},
    {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, QB_ETOOBIG},
    {RD_KAFKA_RESP_ERR__INVALID_ARG, QB_EINVAL}, /* e.g. a topic name Kafka does not allow */
    {RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION, QB_EINVAL},
};

/* syslog levels (0..7) as librdkafka uses them, to ours. */
static const enum qb_log_level kafka_log_levels[8] = {
    QB_LOG_ERROR, QB_LOG_ERROR, QB_LOG_ERROR, QB_LOG_WARN,
    QB_LOG_WARN,  QB_LOG_INFO,  QB_LOG_INFO,  QB_LOG_DEBUG,
};

/* CloudEvents attributes that become ce_<attr> headers in binary mode. */
static const char *const kafka_ce_attrs[] = {
    "specversion", "id",         "source",   "type",         "subject",
    "time",        "dataschema", "sequence", "partitionkey", "bridge",
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static const char *cfg_name(const struct qb_transport_config *cfg)
{
    return cfg->name ? cfg->name : "kafka";
}

/*
 * Builds a producer configuration from cfg: bootstrap.servers, our defaults,
 * then cfg->properties verbatim. client_id may be NULL (validate has no
 * bridge). Returns QB_OK with *out a new conf owned by the caller
 * (rd_kafka_conf_destroy, or hand it to rd_kafka_new), or QB_ECONFIG/QB_ENOMEM
 * with errbuf naming the rejected key.
 */
static int build_conf(const struct qb_transport_config *cfg, const char *client_id,
                      rd_kafka_conf_t **out, char *errbuf, size_t errlen)
{
    char rderr[512];
    const char *key = "bootstrap.servers";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        snprintf(errbuf, errlen, "kafka %s: out of memory", cfg_name(cfg));
        return QB_ENOMEM;
    }
    if (rd_kafka_conf_set(conf, key, cfg->brokers, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    key = "client.id";
    if (client_id &&
        rd_kafka_conf_set(conf, key, client_id, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    for (size_t i = 0; i < N_ELEMS(kafka_defaults); i++) {
        key = kafka_defaults[i].key;
        if (rd_kafka_conf_set(conf, key, kafka_defaults[i].value, rderr, sizeof(rderr)) !=
            RD_KAFKA_CONF_OK)
            goto rejected;
    }
    for (size_t i = 0; i < cfg->n_properties; i++) {
        key = cfg->properties[i].key;
        if (rd_kafka_conf_set(conf, key, cfg->properties[i].value, rderr, sizeof(rderr)) !=
            RD_KAFKA_CONF_OK)
            goto rejected;
    }
    /* Not a default: logs must come through the main queue to reach us on the loop. */
    key = "log.queue";
    if (rd_kafka_conf_set(conf, key, "true", rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    *out = conf;
    return QB_OK;

rejected:
    snprintf(errbuf, errlen, "kafka %s: property '%s': %s", cfg_name(cfg), key, rderr);
    rd_kafka_conf_destroy(conf);
    return QB_ECONFIG;
}

static int kafka_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    static const struct {
        size_t offset;
        const char *key;
    } required[] = {
        {offsetof(struct qb_transport_config, brokers), "brokers"},
        {offsetof(struct qb_transport_config, events_topic), "events_topic"},
        {offsetof(struct qb_transport_config, state_topic), "state_topic"},
    };
    for (size_t i = 0; i < N_ELEMS(required); i++) {
        const char *value = *(char *const *)((const char *)cfg + required[i].offset);
        if (!value || !value[0]) {
            snprintf(errbuf, errlen, "kafka %s: %s must not be empty", cfg_name(cfg),
                     required[i].key);
            return QB_ECONFIG;
        }
    }
    if (cfg->content_mode != QB_KAFKA_STRUCTURED && cfg->content_mode != QB_KAFKA_BINARY) {
        snprintf(errbuf, errlen, "kafka %s: unknown content mode %d", cfg_name(cfg),
                 (int)cfg->content_mode);
        return QB_ECONFIG;
    }
    /* A scratch conf catches what librdkafka rejects without starting a producer. */
    rd_kafka_conf_t *conf = NULL;
    int rc = build_conf(cfg, NULL, &conf, errbuf, errlen);
    if (rc == QB_OK)
        rd_kafka_conf_destroy(conf);
    return rc;
}

/*
 * Writes tmpl with <bridge>, <vm>, <type> replaced into out. A NULL value
 * becomes "". Returns QB_OK or QB_ETOOBIG.
 */
static int expand_topic(const char *tmpl, const char *bridge, const char *vm, const char *type,
                        char *out, size_t outlen)
{
    const struct {
        const char *name;
        const char *value;
    } vars[] = {{"<bridge>", bridge}, {"<vm>", vm}, {"<type>", type}};
    size_t n = 0;
    const char *p = tmpl;
    while (*p) {
        const char *piece = p;
        size_t piece_len = 1, advance = 1;
        for (size_t i = 0; i < N_ELEMS(vars); i++) {
            size_t name_len = strlen(vars[i].name);
            if (strncmp(p, vars[i].name, name_len) == 0) {
                piece = vars[i].value ? vars[i].value : "";
                piece_len = strlen(piece);
                advance = name_len;
                break;
            }
        }
        if (n + piece_len >= outlen)
            return QB_ETOOBIG;
        memcpy(out + n, piece, piece_len);
        n += piece_len;
        p += advance;
    }
    out[n] = '\0';
    return QB_OK;
}

/* Adds name: value (copied) unless value is NULL. Returns QB_OK or QB_ENOMEM. */
static int add_header(rd_kafka_headers_t *hdrs, const char *name, const char *value, ssize_t len)
{
    if (!value)
        return QB_OK;
    return rd_kafka_header_add(hdrs, name, -1, value, len) == RD_KAFKA_RESP_ERR_NO_ERROR
               ? QB_OK
               : QB_ENOMEM;
}

/*
 * Binary mode: parses the envelope once, fills hdrs with one ce_<attr> per
 * attribute present (as strings) and sets *value to the serialised data
 * (new, owned by the caller, free()). An envelope without data sends "null":
 * an absent value would be a tombstone, deleting the VM's compacted state.
 * Returns QB_OK, QB_EPARSE or QB_ENOMEM.
 */
static int binary_encode(const struct kafka_backend *b, const struct qb_message *msg,
                         rd_kafka_headers_t *hdrs, char **value)
{
    json_error_t jerr;
    int rc = QB_OK;
    json_t *env = json_loadb(msg->payload, msg->len, 0, &jerr);
    if (!env || !json_is_object(env)) {
        QB_LOG_ERR(msg->vm, "kafka %s: cannot send %s seq %llu in binary mode: bad envelope: %s",
                   cfg_name(b->cfg), msg->type ? msg->type : "?", (unsigned long long)msg->sequence,
                   env ? "not a JSON object" : jerr.text);
        rc = QB_EPARSE;
        goto out;
    }
    rc = add_header(hdrs, "content-type", "application/json", -1);
    for (size_t i = 0; rc == QB_OK && i < N_ELEMS(kafka_ce_attrs); i++) {
        json_t *attr = json_object_get(env, kafka_ce_attrs[i]);
        if (!attr)
            continue;
        char name[32];
        snprintf(name, sizeof(name), "ce_%s", kafka_ce_attrs[i]);
        if (json_is_string(attr)) {
            rc = add_header(hdrs, name, json_string_value(attr), (ssize_t)json_string_length(attr));
            continue;
        }
        char *text = json_dumps(attr, JSON_COMPACT | JSON_ENCODE_ANY);
        rc = text ? add_header(hdrs, name, text, -1) : QB_ENOMEM;
        free(text);
    }
    if (rc == QB_OK) {
        json_t *data = json_object_get(env, "data");
        *value = data ? json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("null");
        if (!*value)
            rc = QB_ENOMEM;
    }
out:
    json_decref(env);
    return rc;
}

static int structured_headers(const struct qb_message *msg, rd_kafka_headers_t *hdrs)
{
    int rc = add_header(hdrs, "content-type", "application/cloudevents+json", -1);
    if (rc == QB_OK)
        rc = add_header(hdrs, "ce_type", msg->type, -1);
    if (rc == QB_OK)
        rc = add_header(hdrs, "ce_id", msg->id, -1);
    if (rc == QB_OK)
        rc = add_header(hdrs, "ce_subject", msg->vm, -1);
    return rc;
}

static int produce_error_code(rd_kafka_resp_err_t err)
{
    for (size_t i = 0; i < N_ELEMS(kafka_produce_errors); i++) {
        if (kafka_produce_errors[i].err == err)
            return kafka_produce_errors[i].code;
    }
    return QB_EIO;
}

static int kafka_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct kafka_backend *b = backend;
    char topic[KAFKA_TOPIC_MAX];
    char *value = NULL;
    rd_kafka_headers_t *hdrs = NULL;
    if (b->closing)
        return QB_ECLOSED;

    const char *tmpl = msg->kind == QB_MSG_STATE ? b->cfg->state_topic : b->cfg->events_topic;
    int rc = expand_topic(tmpl, b->bridge->id, msg->vm, msg->type, topic, sizeof(topic));
    if (rc != QB_OK) {
        QB_LOG_ERR(msg->vm, "kafka %s: topic for %s from '%s' is longer than %d characters",
                   cfg_name(b->cfg), msg->type ? msg->type : "?", tmpl, KAFKA_TOPIC_MAX - 1);
        goto out;
    }
    hdrs = rd_kafka_headers_new(N_ELEMS(kafka_ce_attrs) + 1);
    if (b->cfg->content_mode == QB_KAFKA_BINARY)
        rc = binary_encode(b, msg, hdrs, &value);
    else
        rc = structured_headers(msg, hdrs);
    if (rc != QB_OK)
        goto out;

    const char *val = value ? value : msg->payload;
    size_t val_len = value ? strlen(value) : msg->len;
    rd_kafka_resp_err_t err = rd_kafka_producev(
        b->rk, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_KEY((void *)msg->key, msg->key ? strlen(msg->key) : 0),
        RD_KAFKA_V_VALUE((void *)val, val_len), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(token), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        hdrs = NULL; /* librdkafka owns them now */
        goto out;
    }
    rc = produce_error_code(err);
    if (rc == QB_EAGAIN) {
        /* reports free room; there is at least one coming since the queue is full */
        b->want_writable = true;
        goto out;
    }
    QB_LOG_ERR(msg->vm, "kafka %s: cannot send %s seq %llu to %s: %s", cfg_name(b->cfg),
               msg->type ? msg->type : "?", (unsigned long long)msg->sequence, topic,
               rd_kafka_err2str(err));
out:
    if (hdrs)
        rd_kafka_headers_destroy(hdrs);
    free(value);
    return rc;
}

static void set_link(struct kafka_backend *b, enum kafka_link link, const char *why)
{
    if (b->link == link)
        return;
    enum kafka_link was = b->link;
    b->link = link;
    if (link == LINK_DOWN)
        QB_LOG_WARN(NULL, "kafka %s: link down: %s", cfg_name(b->cfg), why);
    else if (was == LINK_DOWN)
        QB_LOG_INFO(NULL, "kafka %s: link up again: %s", cfg_name(b->cfg), why);
    b->cb->link(b->owner, link == LINK_UP, why);
}

/* Served from rd_kafka_poll on the loop. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    struct kafka_backend *b = opaque;
    int status = QB_OK;
    b->reports++;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        QB_LOG_DEBUG(NULL, "kafka %s: delivered to %s [%d] at offset %lld", cfg_name(b->cfg),
                     rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset);
        set_link(b, LINK_UP, "message delivered");
    } else if (b->closing) {
        status = QB_ECLOSED;
    } else {
        QB_LOG_WARN(NULL, "kafka %s: delivery of %s key %.*s failed: %s; will retry",
                    cfg_name(b->cfg), rd_kafka_topic_name(m->rkt), (int)m->key_len,
                    m->key ? (const char *)m->key : "", rd_kafka_err2str(m->err));
        status = QB_EIO;
    }
    b->cb->delivered(b->owner, m->_private, status);
}

/* Served from rd_kafka_poll on the loop. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kafka_backend *b = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        QB_LOG_ERR(NULL, "kafka %s: fatal producer error %s: %s", cfg_name(b->cfg),
                   rd_kafka_err2name(orig), fatal);
        set_link(b, LINK_DOWN, fatal);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        set_link(b, LINK_DOWN, reason);
        return;
    }
    /* connection errors are also logged by librdkafka itself through on_log */
    QB_LOG_DEBUG(NULL, "kafka %s: %s: %s", cfg_name(b->cfg),
                 rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Served from rd_kafka_poll on the loop (log.queue). */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    struct kafka_backend *b = rd_kafka_opaque(rk);
    enum qb_log_level lvl = kafka_log_levels[level < 0 ? 0 : level > 7 ? 7 : level];
    qb_log(lvl, NULL, "kafka %s: %s: %s", b ? cfg_name(b->cfg) : "?", fac, buf);
}

/*
 * Serves the main queue until it is empty. librdkafka writes to the pipe only
 * when the queue goes from empty to non-empty, so stopping with ops left in
 * it would lose the wake-up for good; if it keeps refilling (callbacks that
 * publish can cause reports), we wake ourselves through the pipe instead, so
 * the rest of the loop gets a turn.
 */
static void serve_queue(struct kafka_backend *b)
{
    uint64_t reports = b->reports;
    int polls = 0;
    do {
        rd_kafka_poll(b->rk, 0);
    } while (rd_kafka_queue_length(b->mainq) > 0 && ++polls < KAFKA_POLLS_PER_WAKEUP);
    if (rd_kafka_queue_length(b->mainq) > 0 && write(b->wake_fds[1], "1", 1) < 0 && errno != EAGAIN)
        QB_LOG_ERR(NULL, "kafka %s: cannot wake up the loop: %s", cfg_name(b->cfg),
                   strerror(errno));
    if (b->want_writable && b->reports != reports && !b->closing) {
        b->want_writable = false;
        b->cb->writable(b->owner);
    }
}

static void on_readable(uv_poll_t *handle, int status, int events)
{
    (void)events;
    struct kafka_backend *b = handle->data;
    char buf[64];
    if (status < 0)
        QB_LOG_ERR(NULL, "kafka %s: polling the wake-up pipe failed: %s", cfg_name(b->cfg),
                   uv_strerror(status));
    /* drain first: a write after this point must leave the pipe readable */
    while (read(b->wake_fds[0], buf, sizeof(buf)) > 0)
        ;
    serve_queue(b);
}

static void close_fds(struct kafka_backend *b)
{
    for (int i = 0; i < 2; i++) {
        if (b->wake_fds[i] >= 0)
            close(b->wake_fds[i]);
        b->wake_fds[i] = -1;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct kafka_backend *b = h->data;
    if (--b->open_handles > 0)
        return;
    void (*closed)(void *) = b->closed;
    void *arg = b->closed_arg;
    close_fds(b);
    free(b);
    if (closed)
        closed(arg);
}

/*
 * Releases librdkafka and the uv handles. Reports for whatever is still
 * queued or in flight are served first, each as QB_ECLOSED (b->closing).
 */
static void teardown(struct kafka_backend *b)
{
    if (b->rk) {
        rd_kafka_resp_err_t err =
            rd_kafka_purge(b->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        if (err)
            QB_LOG_WARN(NULL, "kafka %s: purge failed: %s", cfg_name(b->cfg),
                        rd_kafka_err2str(err));
        /* purge is synchronous: every purged message has its report queued now */
        int left;
        for (int tries = 0; (left = rd_kafka_outq_len(b->rk)) > 0 && tries < 20; tries++)
            rd_kafka_poll(b->rk, 10);
        if (left > 0)
            QB_LOG_ERR(NULL, "kafka %s: %d messages or reports still queued at close",
                       cfg_name(b->cfg), left);
        rd_kafka_queue_io_event_enable(b->mainq, -1, NULL, 0);
        rd_kafka_queue_destroy(b->mainq);
        rd_kafka_destroy(b->rk);
        b->rk = NULL;
    }
    uv_close((uv_handle_t *)&b->poll, on_handle_closed);
    uv_close((uv_handle_t *)&b->close_timer, on_handle_closed);
}

static void on_close_timer(uv_timer_t *timer)
{
    struct kafka_backend *b = timer->data;
    uint32_t ms = b->cfg->shutdown_timeout_ms < KAFKA_CLOSE_FLUSH_MS ? b->cfg->shutdown_timeout_ms
                                                                     : KAFKA_CLOSE_FLUSH_MS;
    /* with a delivery report callback, flush polls: reports arrive here, on the loop */
    rd_kafka_resp_err_t err = rd_kafka_flush(b->rk, (int)ms);
    if (err)
        QB_LOG_INFO(NULL, "kafka %s: %d messages still in flight after %u ms; giving up on them",
                    cfg_name(b->cfg), rd_kafka_outq_len(b->rk), ms);
    teardown(b);
}

static void kafka_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct kafka_backend *b = backend;
    b->closing = true;
    b->closed = closed;
    b->closed_arg = arg;
    uv_poll_stop(&b->poll);
    /* reports must not reach the generic layer from inside its own close call */
    uv_timer_start(&b->close_timer, on_close_timer, 0, 0);
}

static int kafka_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                        const struct qb_bridge_info *bridge,
                        const struct qb_transport_backend_cb *cb, void *owner, void **backend,
                        char *errbuf, size_t errlen)
{
    char rderr[512];
    char client_id[128];
    rd_kafka_conf_t *conf = NULL;
    int rc = kafka_validate(cfg, errbuf, errlen);
    if (rc != QB_OK)
        return rc;
    struct kafka_backend *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(errbuf, errlen, "kafka %s: out of memory", cfg_name(cfg));
        return QB_ENOMEM;
    }
    b->cfg = cfg;
    b->bridge = bridge;
    b->cb = cb;
    b->owner = owner;
    b->wake_fds[0] = b->wake_fds[1] = -1;
    if (pipe2(b->wake_fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        snprintf(errbuf, errlen, "kafka %s: pipe: %s", cfg_name(cfg), strerror(errno));
        rc = QB_EIO;
        goto fail;
    }
    snprintf(client_id, sizeof(client_id), "qmp-bridge-%s", bridge->id);
    rc = build_conf(cfg, client_id, &conf, errbuf, errlen);
    if (rc != QB_OK)
        goto fail;
    rd_kafka_conf_set_opaque(conf, b);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, rderr, sizeof(rderr));
    if (!b->rk) {
        snprintf(errbuf, errlen, "kafka %s: %s", cfg_name(cfg), rderr);
        rd_kafka_conf_destroy(conf);
        rc = QB_ECONFIG;
        goto fail;
    }
    int uv_rc = uv_poll_init(loop, &b->poll, b->wake_fds[0]);
    if (uv_rc < 0) {
        snprintf(errbuf, errlen, "kafka %s: cannot watch the wake-up pipe: %s", cfg_name(cfg),
                 uv_strerror(uv_rc));
        rc = QB_EIO;
        goto fail;
    }
    uv_timer_init(loop, &b->close_timer);
    b->mainq = rd_kafka_queue_get_main(b->rk);
    rd_kafka_set_log_queue(b->rk, NULL);
    rd_kafka_queue_io_event_enable(b->mainq, b->wake_fds[1], "1", 1);
    b->poll.data = b->close_timer.data = b;
    b->open_handles = 2;
    uv_poll_start(&b->poll, UV_READABLE, on_readable);
    /* anything queued before the io event was enabled did not write to the pipe */
    if (write(b->wake_fds[1], "1", 1) < 0 && errno != EAGAIN)
        QB_LOG_WARN(NULL, "kafka %s: cannot wake up the loop: %s", cfg_name(cfg), strerror(errno));
    *backend = b;
    return QB_OK;

fail:
    if (b->rk)
        rd_kafka_destroy(b->rk);
    close_fds(b);
    free(b);
    return rc;
}

const struct qb_transport_ops qb_transport_kafka_ops = {
    .name = "kafka",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_KEYED,
    .validate = kafka_validate,
    .create = kafka_create,
    .publish = kafka_publish,
    .close = kafka_close,
};
