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
 *
 * Commands (after subscribe) come from a second client, a consumer in group
 * group_id on commands_topic, driven the same way: its consumer queue (where
 * poll_set_consumer also sends its callbacks and logs) signals a second pipe
 * watched by a second uv_poll_t. A message keyed "<bridge>/<vm>" of another
 * bridge is skipped; anything else goes to the core with the <vm> part of the
 * key as vm_hint (the core decides by subject when there is no key). Offsets
 * are committed by hand and only when the core acknowledged the command (its
 * result is queued, or it was ignored): per partition, up to the first offset
 * still unacknowledged, since commands of different VMs finish out of order.
 * With the idempotency cache this makes execution effectively once: a crash
 * before the commit means the command comes again, and its id is known.
 */
#include "error.h"
#include "kafka_config.h"
#include "kafka_warmup.h"
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
/* Consumer messages per wake-up before yielding to the rest of the loop. */
#define KAFKA_MSGS_PER_WAKEUP 64
/* Longer than any VM name ([A-Za-z0-9._-]{1,64}): a longer key part names no VM of ours. */
#define KAFKA_VM_MAX 128

enum kafka_link { LINK_UNKNOWN, LINK_UP, LINK_DOWN };

/* One command handed to the core and not yet committed. */
struct kafka_pending {
    uint64_t token;
    int64_t offset;
    bool done; /* acknowledged */
};

/*
 * One assigned partition of the commands topic: what was handed out, in
 * offset order (and so in token order: tokens only grow), items[head..len).
 */
struct kafka_part {
    int32_t partition;
    bool stuck;      /* an offset could not be tracked: commit nothing more until reassigned */
    bool recommit;   /* a commit failed: repeat it on the next keep-alive tick */
    int64_t next;    /* offset to commit: one past the last acknowledged prefix, or -1 */
    struct kafka_pending *items;
    size_t head, len, cap;
};

/* The commands consumer, once subscribed. */
struct kafka_consumer {
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue; /* the consumer queue; the main queue is forwarded to it */
    int fds[2];              /* [0] watched by poll, [1] written by librdkafka */
    uv_poll_t poll;
    uv_timer_t keepalive; /* see on_keepalive */
    struct kafka_part *parts;
    size_t n_parts, cap_parts;
    uint64_t last_token;
    char group[160]; /* group.id, for the log */
};

/* Brokers whose round trip is kept: a cluster has a handful; the rest are not reported. */
#define KAFKA_MAX_RTT_BROKERS 64

struct kafka_rtt {
    char broker[128]; /* "host:port/nodeid", as librdkafka names it */
    double avg_s, p99_s;
};

struct kafka_backend {
    const struct qb_transport_config *cfg;
    const struct qb_kafka_config *kc; /* cfg->backend: the kafka keys */
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
    uv_loop_t *loop;
    struct kafka_consumer *cons; /* NULL until subscribe */
    struct kafka_rtt rtt[KAFKA_MAX_RTT_BROKERS]; /* from the last statistics report */
    size_t n_rtt;
    rd_kafka_topic_t *known[2]; /* the fixed events and state topics, named at start (or NULL) */
    rd_kafka_topic_t *fixed[2]; /* borrowed from known: the handle for events and state, or NULL */
    struct qb_kafka_warmup *warmup; /* with a <vm> or <type> template: new topics asked ahead */
};

/* Defaults before the user's properties, so each can be overridden. */
static const struct {
    const char *key, *value;
} kafka_defaults[] = {
    {"enable.idempotence", "true"}, /* no duplicates or reordering on internal retries */
    {"acks", "all"},
    /* Events are small and latency matters more than batching: 1 ms still batches a storm
       (the benchmark's p99 target is 5 ms end to end; 5 ms of linger alone would eat it). */
    {"linger.ms", "1"},
    {"socket.nagle.disable", "true"}, /* a produce request must not wait for the previous ACK */
    /* The broker round trip for /metrics. One report costs librdkafka a JSON document of a few
       KiB per broker and topic, and us one parse, every 30 s: nothing next to the events. */
    {"statistics.interval.ms", "30000"},
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

/* ---- configuration: the keys of a kafka transport ---- */

static const struct qb_config_enum content_modes[] = {
    {"structured", QB_KAFKA_STRUCTURED}, {"binary", QB_KAFKA_BINARY}, {NULL, 0}};

_Static_assert(sizeof(enum qb_kafka_content_mode) == sizeof(int), "QB_CFG_ENUM stores an int");

#define K struct qb_kafka_config
static const struct qb_config_key kafka_config_keys[] = {
    QB_CONFIG_KEY(K, "brokers", QB_CFG_STRING, brokers, .required = true,
                  .check = qb_config_check_nonempty, .desc = "bootstrap brokers, host:port,..."),
    QB_CONFIG_KEY(K, "events_topic", QB_CFG_STRING, events_topic, .def = "qmp.events",
                  .check = qb_config_check_nonempty,
                  .desc = "topic of events; <bridge>/<vm>/<type> placeholders"),
    QB_CONFIG_KEY(K, "state_topic", QB_CFG_STRING, state_topic, .def = "qmp.state",
                  .check = qb_config_check_nonempty, .desc = "topic of state copies"),
    QB_CONFIG_KEY(K, "commands_topic", QB_CFG_STRING, commands_topic, .def = "qmp.commands",
                  .check = qb_config_check_nonempty, .desc = "topic commands are read from"),
    QB_CONFIG_KEY(K, "content_mode", QB_CFG_ENUM, content_mode, .def = "structured",
                  .enums = content_modes, .desc = "CloudEvents structured or binary mode"),
    QB_CONFIG_PAIRS(K, "properties", properties, n_properties, .secret = "kafka ssl.key.location",
                    .secret_item = "ssl.key.location",
                    .desc = "librdkafka properties, passed verbatim"),
    QB_CONFIG_KEY(K, "group_id", QB_CFG_STRING, group_id, .check = qb_config_check_nonempty,
                  .id_prefix = "qmp-bridge.",
                  .desc = "consumer group of the commands; default qmp-bridge.<id>"),
    {0},
};
#undef K

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
    const struct qb_kafka_config *kc = cfg->backend; /* kafka_validate checked it is there */
    char rderr[512];
    const char *key = "bootstrap.servers";
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        snprintf(errbuf, errlen, "kafka %s: out of memory", cfg_name(cfg));
        return QB_ENOMEM;
    }
    if (rd_kafka_conf_set(conf, key, kc->brokers, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
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
    for (size_t i = 0; i < kc->n_properties; i++) {
        key = kc->properties[i].key;
        if (rd_kafka_conf_set(conf, key, kc->properties[i].value, rderr, sizeof(rderr)) !=
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
        {offsetof(struct qb_kafka_config, brokers), "brokers"},
        {offsetof(struct qb_kafka_config, events_topic), "events_topic"},
        {offsetof(struct qb_kafka_config, state_topic), "state_topic"},
    };
    const struct qb_kafka_config *kc = cfg->backend;
    if (!kc) {
        snprintf(errbuf, errlen, "kafka %s: no kafka configuration", cfg_name(cfg));
        return QB_ECONFIG;
    }
    for (size_t i = 0; i < N_ELEMS(required); i++) {
        const char *value = *(char *const *)((const char *)kc + required[i].offset);
        if (!value || !value[0]) {
            snprintf(errbuf, errlen, "kafka %s: %s must not be empty", cfg_name(cfg),
                     required[i].key);
            return QB_ECONFIG;
        }
    }
    if (kc->content_mode != QB_KAFKA_STRUCTURED && kc->content_mode != QB_KAFKA_BINARY) {
        snprintf(errbuf, errlen, "kafka %s: unknown content mode %d", cfg_name(cfg),
                 (int)kc->content_mode);
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

    /*
     * A fixed topic goes by the handle named at start: producing by name costs
     * a lookup under librdkafka's lock and a reference per message, and the
     * expansion a scan of the template (together 2.6% of the bridge's samples
     * flat out, docs/benchmarks.md).
     */
    rd_kafka_topic_t *rkt = b->fixed[msg->kind == QB_MSG_STATE], *own_rkt = NULL;
    const char *tmpl = msg->kind == QB_MSG_STATE ? b->kc->state_topic : b->kc->events_topic;
    int rc = rkt ? QB_OK : expand_topic(tmpl, b->bridge->id, msg->vm, msg->type, topic, sizeof(topic));
    if (rc != QB_OK) {
        QB_LOG_ERR(msg->vm, "kafka %s: topic for %s from '%s' is longer than %d characters",
                   cfg_name(b->cfg), msg->type ? msg->type : "?", tmpl, KAFKA_TOPIC_MAX - 1);
        goto out;
    }
    if (!rkt && !(rkt = own_rkt = rd_kafka_topic_new(b->rk, topic, NULL))) {
        rc = produce_error_code(rd_kafka_last_error());
        QB_LOG_ERR(msg->vm, "kafka %s: cannot send %s seq %llu to %s: %s", cfg_name(b->cfg),
                   msg->type ? msg->type : "?", (unsigned long long)msg->sequence, topic,
                   rd_kafka_err2str(rd_kafka_last_error()));
        goto out;
    }
    if (own_rkt && b->warmup)
        qb_kafka_warmup_note(b->warmup, topic);
    hdrs = rd_kafka_headers_new(N_ELEMS(kafka_ce_attrs) + 1);
    bool tombstone = qb_message_clears_state(msg);
    if (tombstone)
        rc = QB_OK; /* the key and a NULL value: compaction deletes the VM's state; no event */
    else if (b->kc->content_mode == QB_KAFKA_BINARY)
        rc = binary_encode(b, msg, hdrs, &value);
    else
        rc = structured_headers(msg, hdrs);
    if (rc != QB_OK)
        goto out;

    /*
     * No copy: the generic layer keeps msg until this publish's delivery report
     * (transport_ops.h), and librdkafka lets go of a message's value by then
     * (rd_kafka_destroy comes before our close completes). A binary-mode value
     * is ours alone, so librdkafka frees it (F_FREE) after the report.
     */
    const char *val = tombstone ? NULL : value ? value : msg->payload;
    size_t val_len = tombstone ? 0 : value ? strlen(value) : msg->len;
    int msgflags = value ? RD_KAFKA_MSG_F_FREE : 0; /* the macro casts its argument as is */
    rd_kafka_resp_err_t err = rd_kafka_producev(
        b->rk, RD_KAFKA_V_RKT(rkt),
        RD_KAFKA_V_KEY((void *)msg->key, msg->key ? strlen(msg->key) : 0),
        RD_KAFKA_V_VALUE((void *)val, val_len), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_MSGFLAGS(msgflags), RD_KAFKA_V_OPAQUE(token), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        hdrs = NULL;  /* librdkafka owns them now */
        value = NULL; /* and this, if set */
        goto out;
    }
    rc = produce_error_code(err);
    if (rc == QB_EAGAIN) {
        /* reports free room; there is at least one coming since the queue is full */
        b->want_writable = true;
        goto out;
    }
    QB_LOG_ERR(msg->vm, "kafka %s: cannot send %s seq %llu to %s: %s", cfg_name(b->cfg),
               msg->type ? msg->type : "?", (unsigned long long)msg->sequence,
               rd_kafka_topic_name(rkt), rd_kafka_err2str(err));
out:
    if (own_rkt)
        rd_kafka_topic_destroy(own_rkt); /* librdkafka keeps the topic while messages need it */
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

/* True when s is a name fit for a label and a log line: printable ASCII, no blank. */
static bool broker_name_ok(const char *s)
{
    size_t i;

    for (i = 0; s && s[i]; i++)
        if (s[i] <= ' ' || s[i] > '~' || i + 1 >= sizeof(((struct kafka_rtt *)0)->broker))
            return false;
    return s && i > 0;
}

/* The round trip b last kept for broker, or NULL. */
static const struct kafka_rtt *rtt_kept(const struct kafka_backend *b, const char *broker)
{
    for (size_t i = 0; i < b->n_rtt; i++)
        if (strcmp(b->rtt[i].broker, broker) == 0)
            return &b->rtt[i];
    return NULL;
}

/*
 * Served from rd_kafka_poll on the loop (statistics.interval.ms): keeps each
 * known broker's round trip (microseconds in the JSON). A broker without a
 * request in the report's window (an idle producer) keeps its last measured
 * value; bootstrap and internal brokers (nodeid -1), and brokers the report no
 * longer lists, are left out. Returns 0: librdkafka frees json.
 */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    struct kafka_backend *b = opaque;
    json_t *doc = json_loadb(json, len, 0, NULL), *br;
    struct kafka_rtt next[KAFKA_MAX_RTT_BROKERS];
    size_t n = 0;
    const char *key;

    (void)rk;
    if (!doc) {
        QB_LOG_DEBUG(NULL, "kafka %s: statistics that are not JSON ignored", cfg_name(b->cfg));
        return 0;
    }
    json_object_foreach(json_object_get(doc, "brokers"), key, br)
    {
        const json_t *rtt = json_object_get(br, "rtt");
        const char *name = json_string_value(json_object_get(br, "name"));
        const struct kafka_rtt *old;

        (void)key;
        if (n == KAFKA_MAX_RTT_BROKERS)
            break;
        if (json_integer_value(json_object_get(br, "nodeid")) < 0 || !broker_name_ok(name))
            continue;
        if (json_integer_value(json_object_get(rtt, "cnt")) > 0) {
            snprintf(next[n].broker, sizeof(next[n].broker), "%s", name);
            next[n].avg_s = (double)json_integer_value(json_object_get(rtt, "avg")) / 1e6;
            next[n].p99_s = (double)json_integer_value(json_object_get(rtt, "p99")) / 1e6;
            n++;
        } else if ((old = rtt_kept(b, name)) != NULL) {
            next[n++] = *old;
        }
    }
    json_decref(doc);
    memcpy(b->rtt, next, n * sizeof(next[0]));
    b->n_rtt = n;
    return 0;
}

static void kafka_broker_rtt(void *backend, qb_broker_rtt_cb cb, void *arg)
{
    struct kafka_backend *b = backend;

    for (size_t i = 0; i < b->n_rtt; i++)
        cb(arg, b->rtt[i].broker, b->rtt[i].avg_s, b->rtt[i].p99_s);
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
    /* librdkafka's callbacks run in here */
    const char *scope = qb_log_transport_begin(cfg_name(b->cfg));
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
    qb_log_transport_end(scope);
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

/* ---- commands: the consumer ---- */

static void wake_fd(struct kafka_backend *b, int fd)
{
    if (write(fd, "1", 1) < 0 && errno != EAGAIN)
        QB_LOG_ERR(NULL, "kafka %s: cannot wake up the loop: %s", cfg_name(b->cfg),
                   strerror(errno));
}

/* The tracking of partition, or NULL when it has none. */
static struct kafka_part *part_find(struct kafka_consumer *c, int32_t partition)
{
    for (size_t i = 0; i < c->n_parts; i++) {
        if (c->parts[i].partition == partition)
            return &c->parts[i];
    }
    return NULL;
}

/* Forgets partition: tokens handed out for it become stale (acks for them are ignored). */
static void part_drop(struct kafka_consumer *c, int32_t partition)
{
    struct kafka_part *p = part_find(c, partition);
    if (!p)
        return;
    free(p->items);
    *p = c->parts[--c->n_parts];
}

/* The tracking of partition, created empty if missing. Returns NULL when out of memory. */
static struct kafka_part *part_get(struct kafka_consumer *c, int32_t partition)
{
    struct kafka_part *p = part_find(c, partition);
    if (p)
        return p;
    if (c->n_parts == c->cap_parts) {
        size_t cap = c->cap_parts ? c->cap_parts * 2 : 4;
        struct kafka_part *parts = realloc(c->parts, cap * sizeof(*parts));
        if (!parts)
            return NULL;
        c->parts = parts;
        c->cap_parts = cap;
    }
    p = &c->parts[c->n_parts++];
    *p = (struct kafka_part){.partition = partition, .next = -1};
    return p;
}

/*
 * Remembers that offset of p was handed out. Returns its new token, or 0 when
 * out of memory: then p is stuck (nothing after it is committed either, so
 * the command comes again after a restart rather than never).
 */
static uint64_t part_track(struct kafka_backend *b, struct kafka_part *p, int64_t offset)
{
    struct kafka_consumer *c = b->cons;
    if (p->head > 0 && p->head * 2 >= p->len) { /* reuse the acknowledged prefix's room */
        memmove(p->items, p->items + p->head, (p->len - p->head) * sizeof(p->items[0]));
        p->len -= p->head;
        p->head = 0;
    }
    if (p->len == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct kafka_pending *items = realloc(p->items, cap * sizeof(*items));
        if (!items) {
            QB_LOG_ERR(NULL,
                       "kafka %s: out of memory tracking %s [%d] offset %lld: no more "
                       "commits for this partition until it is reassigned",
                       cfg_name(b->cfg), b->kc->commands_topic, (int)p->partition,
                       (long long)offset);
            p->stuck = true;
            return 0;
        }
        p->items = items;
        p->cap = cap;
    }
    p->items[p->len++] = (struct kafka_pending){.token = ++c->last_token, .offset = offset};
    return c->last_token;
}

/* Commits offset of p's partition (the next one to read), asynchronously. */
static void part_commit(struct kafka_backend *b, struct kafka_part *p, int64_t offset)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, b->kc->commands_topic, p->partition)->offset = offset;
    p->recommit = false;
    rd_kafka_resp_err_t err = rd_kafka_commit(b->cons->rk, list, 1);
    if (err) {
        QB_LOG_WARN(NULL, "kafka %s: cannot commit %s [%d] at offset %lld: %s; will retry",
                    cfg_name(b->cfg), b->kc->commands_topic, (int)p->partition, (long long)offset,
                    rd_kafka_err2str(err));
        p->recommit = true;
    }
    rd_kafka_topic_partition_list_destroy(list);
}

/* Commits past the longest acknowledged prefix of p, if it grew. */
static void part_advance(struct kafka_backend *b, struct kafka_part *p)
{
    int64_t last = -1;
    while (p->head < p->len && p->items[p->head].done)
        last = p->items[p->head++].offset;
    if (p->head == p->len)
        p->head = p->len = 0;
    if (last < 0 || p->stuck)
        return;
    p->next = last + 1;
    part_commit(b, p, p->next);
}

/* Finds token among the partitions' pending commands (each sorted by token). */
static struct kafka_pending *token_find(struct kafka_consumer *c, uint64_t token,
                                        struct kafka_part **part)
{
    for (size_t i = 0; i < c->n_parts; i++) {
        struct kafka_part *p = &c->parts[i];
        size_t lo = p->head, hi = p->len;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (p->items[mid].token < token)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < p->len && p->items[lo].token == token) {
            *part = p;
            return &p->items[lo];
        }
    }
    return NULL;
}

static void kafka_ack(void *backend, uint64_t ack_token)
{
    struct kafka_backend *b = backend;
    struct kafka_part *p = NULL;
    struct kafka_pending *item;
    if (!b->cons || !b->cons->rk || ack_token == 0)
        return;
    item = token_find(b->cons, ack_token, &p);
    if (!item || item->done) {
        /* its partition was revoked meanwhile: whoever has it now reads the command again */
        QB_LOG_DEBUG(NULL, "kafka %s: ack for unknown or stale token %llu ignored",
                     cfg_name(b->cfg), (unsigned long long)ack_token);
        return;
    }
    item->done = true;
    part_advance(b, p);
}

/*
 * Parses a key "<bridge>/<vm>". Returns false when it names another bridge
 * (or a VM name no bridge can have); else true with vm filled, or empty when
 * the key says nothing about the VM (no key, no '/', nothing after it).
 */
static bool key_is_ours(const struct kafka_backend *b, const rd_kafka_message_t *rm, char *vm,
                        size_t vmlen)
{
    const char *key = rm->key;
    const char *slash = key ? memchr(key, '/', rm->key_len) : NULL;
    vm[0] = '\0';
    if (!slash)
        return true;
    size_t bridge_len = (size_t)(slash - key), vm_len = rm->key_len - bridge_len - 1;
    if (bridge_len != strlen(b->bridge->id) || memcmp(key, b->bridge->id, bridge_len) != 0)
        return false;
    if (vm_len >= vmlen)
        return false;
    memcpy(vm, slash + 1, vm_len);
    vm[vm_len] = '\0';
    return true;
}

/* One message from consumer_poll (borrowed): to the core, or skipped and marked done. */
static void consume_one(struct kafka_backend *b, const rd_kafka_message_t *rm)
{
    char vm[KAFKA_VM_MAX];
    if (rm->err) {
        if (rm->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            QB_LOG_DEBUG(NULL, "kafka %s: commands: end of %s [%d] at offset %lld",
                         cfg_name(b->cfg), b->kc->commands_topic, (int)rm->partition,
                         (long long)rm->offset);
        else
            QB_LOG_WARN(NULL, "kafka %s: commands: consumer error on %s [%d]: %s",
                        cfg_name(b->cfg), rm->rkt ? rd_kafka_topic_name(rm->rkt) : "-",
                        (int)rm->partition, rd_kafka_message_errstr(rm));
        return;
    }
    struct kafka_part *p = part_get(b->cons, rm->partition);
    uint64_t token = p ? part_track(b, p, rm->offset) : 0;
    if (!p)
        QB_LOG_ERR(NULL, "kafka %s: out of memory tracking %s [%d]", cfg_name(b->cfg),
                   b->kc->commands_topic, (int)rm->partition);
    if (!key_is_ours(b, rm, vm, sizeof(vm))) {
        QB_LOG_DEBUG(NULL,
                     "kafka %s: commands: %s [%d] offset %lld keyed '%.*s' is not for "
                     "this bridge: skipped",
                     cfg_name(b->cfg), b->kc->commands_topic, (int)rm->partition,
                     (long long)rm->offset, (int)rm->key_len, (const char *)rm->key);
        kafka_ack(b, token);
        return;
    }
    struct qb_inbound in = {
        .payload = rm->payload ? rm->payload : "",
        .len = rm->payload ? rm->len : 0,
        .vm_hint = vm[0] ? vm : NULL,
    };
    QB_LOG_DEBUG(in.vm_hint, "kafka %s: commands: %s [%d] offset %lld (%zu bytes), token %llu",
                 cfg_name(b->cfg), b->kc->commands_topic, (int)rm->partition, (long long)rm->offset,
                 in.len, (unsigned long long)token);
    b->cb->inbound(b->owner, &in, token);
}

/*
 * Serves the consumer queue until it is empty (callbacks run inside
 * consumer_poll; messages come back one by one). Same edge-triggered pipe as
 * the main queue, see serve_queue().
 */
static void serve_consumer(struct kafka_backend *b)
{
    struct kafka_consumer *c = b->cons;
    const char *scope = qb_log_transport_begin(cfg_name(b->cfg));
    for (int n = 0; n < KAFKA_MSGS_PER_WAKEUP && !b->closing; n++) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(c->rk, 0);
        if (!rm)
            break;
        consume_one(b, rm);
        rd_kafka_message_destroy(rm);
    }
    if (!b->closing && rd_kafka_queue_length(c->queue) > 0)
        wake_fd(b, c->fds[1]);
    qb_log_transport_end(scope);
}

static void on_consumer_readable(uv_poll_t *handle, int status, int events)
{
    (void)events;
    struct kafka_backend *b = handle->data;
    char buf[64];
    if (status < 0)
        QB_LOG_ERR(NULL, "kafka %s: polling the consumer's wake-up pipe failed: %s",
                   cfg_name(b->cfg), uv_strerror(status));
    while (read(b->cons->fds[0], buf, sizeof(buf)) > 0)
        ;
    serve_consumer(b);
}

/*
 * librdkafka leaves the group when the application has not polled for
 * max.poll.interval.ms, and a quiet commands topic never wakes us; so poll
 * on a timer too (a third of that interval), and repeat failed commits.
 */
static void on_keepalive(uv_timer_t *timer)
{
    struct kafka_backend *b = timer->data;
    struct kafka_consumer *c = b->cons;
    serve_consumer(b);
    for (size_t i = 0; i < c->n_parts && !b->closing; i++) {
        struct kafka_part *p = &c->parts[i];
        if (p->recommit && p->next >= 0 && !p->stuck)
            part_commit(b, p, p->next);
    }
}

/* Served from consumer_poll: an asynchronous commit finished. */
static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    struct kafka_backend *b = opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET || !offsets)
        return;
    for (int i = 0; i < offsets->cnt; i++) {
        const rd_kafka_topic_partition_t *tp = &offsets->elems[i];
        rd_kafka_resp_err_t e = tp->err ? tp->err : err;
        struct kafka_part *p = b->cons ? part_find(b->cons, tp->partition) : NULL;
        if (!e) {
            QB_LOG_DEBUG(NULL, "kafka %s: commands: committed %s [%d] at offset %lld",
                         cfg_name(b->cfg), tp->topic, (int)tp->partition, (long long)tp->offset);
            continue;
        }
        QB_LOG_WARN(NULL, "kafka %s: commands: commit of %s [%d] at offset %lld failed: %s%s",
                    cfg_name(b->cfg), tp->topic, (int)tp->partition, (long long)tp->offset,
                    rd_kafka_err2str(e), p ? "; will retry" : "");
        /* only if nothing later was committed meanwhile (commits go out in order) */
        if (p && p->next == tp->offset)
            p->recommit = true;
    }
}

/* Served from consumer_poll (or inside consumer_close): the group gave or took partitions. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct kafka_backend *b = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    bool assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    char list[256];
    size_t n = 0;
    list[0] = '\0';
    for (int i = 0; i < parts->cnt; i++) {
        /* offsets handed out before are stale either way: the partition restarts from its
           committed offset */
        part_drop(b->cons, parts->elems[i].partition);
        if (assign && !part_get(b->cons, parts->elems[i].partition))
            QB_LOG_ERR(NULL, "kafka %s: out of memory tracking %s [%d]", cfg_name(b->cfg),
                       parts->elems[i].topic, (int)parts->elems[i].partition);
        if (n < sizeof(list))
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%d", i ? "," : "",
                                  (int)parts->elems[i].partition);
    }
    if (assign) {
        QB_LOG_INFO(NULL, "kafka %s: commands: assigned %s [%s] in group %s", cfg_name(b->cfg),
                    b->kc->commands_topic, list, b->cons->group);
        if (cooperative)
            error = rd_kafka_incremental_assign(rk, parts);
        else
            aerr = rd_kafka_assign(rk, parts);
    } else {
        if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            QB_LOG_INFO(NULL, "kafka %s: commands: revoked %s [%s]", cfg_name(b->cfg),
                        b->kc->commands_topic, list);
        else
            QB_LOG_ERR(NULL, "kafka %s: commands: rebalance failed: %s", cfg_name(b->cfg),
                       rd_kafka_err2str(err));
        if (cooperative)
            error = rd_kafka_incremental_unassign(rk, parts);
        else
            aerr = rd_kafka_assign(rk, NULL);
    }
    if (error) {
        QB_LOG_ERR(NULL, "kafka %s: commands: %s failed: %s", cfg_name(b->cfg),
                   assign ? "incremental assign" : "incremental unassign",
                   rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (aerr) {
        QB_LOG_ERR(NULL, "kafka %s: commands: %s failed: %s", cfg_name(b->cfg),
                   assign ? "assign" : "unassign", rd_kafka_err2str(aerr));
    }
}

/* Served from consumer_poll. */
static void on_consumer_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kafka_backend *b = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char fatal[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
        QB_LOG_ERR(NULL, "kafka %s: fatal consumer error %s: %s; no more commands",
                   cfg_name(b->cfg), rd_kafka_err2name(orig), fatal);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        QB_LOG_WARN(NULL, "kafka %s: commands: %s", cfg_name(b->cfg), reason);
        return;
    }
    QB_LOG_DEBUG(NULL, "kafka %s: commands: %s: %s", cfg_name(b->cfg),
                 rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* Consumer settings set before the user's properties: each can be overridden. */
static const struct {
    const char *key, *value;
} kafka_consumer_defaults[] = {
    /* A bridge that joins for the first time must not replay the commands topic's history:
       those commands were meant for whoever ran then (and max_age would reject them). */
    {"auto.offset.reset", "latest"},
    /* A command should not wait half a second in the broker for a fetch to fill up:
       librdkafka's default 500 ms made a resize-and-cont round trip take ~480 ms. */
    {"fetch.wait.max.ms", "10"},
    {"socket.nagle.disable", "true"},
};

/* Set after the user's properties: the commit-after-result contract depends on them. */
static const struct {
    const char *key, *value;
} kafka_consumer_fixed[] = {
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    {"log.queue", "true"}, /* logs reach us through the consumer queue, on the loop */
};

/*
 * Builds the consumer's configuration. A property the consumer rejects
 * (they were checked for the producer) is logged and skipped; producer-only
 * ones are accepted by librdkafka and ignored with a warning of its own.
 * Returns QB_OK with *out (owned by the caller), or QB_ECONFIG/QB_ENOMEM
 * (logged).
 */
static int build_consumer_conf(struct kafka_backend *b, rd_kafka_conf_t **out)
{
    char rderr[512], client_id[128];
    char *group = b->cons->group;
    size_t group_len = sizeof(b->cons->group);
    const struct qb_transport_config *cfg = b->cfg;
    const struct qb_kafka_config *kc = b->kc;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *key = "bootstrap.servers";
    if (!conf) {
        QB_LOG_ERR(NULL, "kafka %s: out of memory", cfg_name(cfg));
        return QB_ENOMEM;
    }
    snprintf(client_id, sizeof(client_id), "qmp-bridge-%s", b->bridge->id);
    if (kc->group_id)
        snprintf(group, group_len, "%s", kc->group_id);
    else /* the loader fills it in; a backend built by hand may not */
        snprintf(group, group_len, "qmp-bridge.%s", b->bridge->id);
    if (rd_kafka_conf_set(conf, key, kc->brokers, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    key = "client.id";
    if (rd_kafka_conf_set(conf, key, client_id, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    for (size_t i = 0; i < N_ELEMS(kafka_consumer_defaults); i++) {
        key = kafka_consumer_defaults[i].key;
        if (rd_kafka_conf_set(conf, key, kafka_consumer_defaults[i].value, rderr,
                              sizeof(rderr)) != RD_KAFKA_CONF_OK)
            goto rejected;
    }
    for (size_t i = 0; i < kc->n_properties; i++) {
        if (rd_kafka_conf_set(conf, kc->properties[i].key, kc->properties[i].value, rderr,
                              sizeof(rderr)) != RD_KAFKA_CONF_OK)
            QB_LOG_WARN(NULL, "kafka %s: property '%s' skipped for the commands consumer: %s",
                        cfg_name(cfg), kc->properties[i].key, rderr);
    }
    key = "group.id";
    if (rd_kafka_conf_set(conf, key, group, rderr, sizeof(rderr)) != RD_KAFKA_CONF_OK)
        goto rejected;
    for (size_t i = 0; i < N_ELEMS(kafka_consumer_fixed); i++) {
        key = kafka_consumer_fixed[i].key;
        if (rd_kafka_conf_set(conf, key, kafka_consumer_fixed[i].value, rderr, sizeof(rderr)) !=
            RD_KAFKA_CONF_OK)
            goto rejected;
    }
    *out = conf;
    return QB_OK;

rejected:
    QB_LOG_ERR(NULL, "kafka %s: commands consumer: property '%s': %s", cfg_name(cfg), key, rderr);
    rd_kafka_conf_destroy(conf);
    return QB_ECONFIG;
}

/* The keep-alive period: a third of the consumer's max.poll.interval.ms, at least 100 ms. */
static uint64_t keepalive_ms(const rd_kafka_conf_t *conf)
{
    char value[32];
    size_t size = sizeof(value);
    long long ms = 300000; /* librdkafka's default */
    if (rd_kafka_conf_get(conf, "max.poll.interval.ms", value, &size) == RD_KAFKA_CONF_OK)
        ms = strtoll(value, NULL, 10);
    return ms / 3 > 100 ? (uint64_t)(ms / 3) : 100;
}

/* Frees the consumer's memory and fds; its librdkafka handle and uv handles are gone. */
static void free_consumer(struct kafka_consumer *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_parts; i++)
        free(c->parts[i].items);
    free(c->parts);
    for (int i = 0; i < 2; i++) {
        if (c->fds[i] >= 0)
            close(c->fds[i]);
    }
    free(c);
}

static void on_handle_closed(uv_handle_t *h);

static int kafka_subscribe(void *backend)
{
    struct kafka_backend *b = backend;
    char rderr[512];
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_topic_partition_list_t *topics = NULL;
    const char *topic = b->kc->commands_topic;
    int rc;
    if (!b->cfg->commands)
        return QB_EINVAL;
    if (b->closing)
        return QB_ECLOSED;
    if (b->cons) {
        QB_LOG_ERR(NULL, "kafka %s: already receiving commands", cfg_name(b->cfg));
        return QB_EINVAL;
    }
    /* a leading '^' would make it a regex over many topics; offsets are tracked for one */
    if (!topic || !topic[0] || topic[0] == '^') {
        QB_LOG_ERR(NULL, "kafka %s: commands_topic '%s' is not a topic name", cfg_name(b->cfg),
                   topic ? topic : "");
        return QB_ECONFIG;
    }
    struct kafka_consumer *c = calloc(1, sizeof(*c));
    if (!c) {
        QB_LOG_ERR(NULL, "kafka %s: out of memory", cfg_name(b->cfg));
        return QB_ENOMEM;
    }
    c->fds[0] = c->fds[1] = -1;
    b->cons = c;
    if ((rc = build_consumer_conf(b, &conf)) != QB_OK)
        goto fail;
    uint64_t period = keepalive_ms(conf);
    rd_kafka_conf_set_opaque(conf, b);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_offset_commit_cb(conf, on_commit);
    rd_kafka_conf_set_error_cb(conf, on_consumer_error);
    rd_kafka_conf_set_log_cb(conf, on_log);
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, rderr, sizeof(rderr));
    if (!c->rk) {
        QB_LOG_ERR(NULL, "kafka %s: commands consumer: %s", cfg_name(b->cfg), rderr);
        rd_kafka_conf_destroy(conf);
        rc = QB_ECONFIG;
        goto fail;
    }
    rd_kafka_set_log_queue(c->rk, NULL);
    rd_kafka_poll_set_consumer(c->rk);
    c->queue = rd_kafka_queue_get_consumer(c->rk);
    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(c->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        QB_LOG_ERR(NULL, "kafka %s: cannot subscribe to %s: %s", cfg_name(b->cfg), topic,
                   rd_kafka_err2str(err));
        rc = QB_EIO;
        goto fail;
    }
    int uv_rc = -1;
    if (pipe2(c->fds, O_NONBLOCK | O_CLOEXEC) < 0 ||
        (uv_rc = uv_poll_init(b->loop, &c->poll, c->fds[0])) < 0) {
        QB_LOG_ERR(NULL, "kafka %s: cannot watch the consumer's wake-up pipe: %s",
                   cfg_name(b->cfg), uv_rc == -1 ? strerror(errno) : uv_strerror(uv_rc));
        rc = QB_EIO;
        goto fail;
    }
    uv_timer_init(b->loop, &c->keepalive);
    c->poll.data = c->keepalive.data = b;
    b->open_handles += 2;
    rd_kafka_queue_io_event_enable(c->queue, c->fds[1], "1", 1);
    uv_poll_start(&c->poll, UV_READABLE, on_consumer_readable);
    uv_timer_start(&c->keepalive, on_keepalive, period, period);
    /* anything queued before the io event was enabled did not write to the pipe */
    wake_fd(b, c->fds[1]);
    QB_LOG_INFO(NULL, "kafka %s: commands: joining group %s on %s", cfg_name(b->cfg), c->group,
                topic);
    return QB_OK;

fail:
    if (c->queue)
        rd_kafka_queue_destroy(c->queue);
    if (c->rk)
        rd_kafka_destroy_flags(c->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    b->cons = NULL;
    free_consumer(c);
    return rc;
}

/*
 * Leaves the group and releases the consumer (its uv handles close later).
 * consumer_close blocks while it says goodbye and waits for outstanding
 * commits: acceptable at shutdown, and what makes the last commits count.
 * Nothing more reaches the core: inbound messages still queued are dropped
 * uncommitted, so the group hands them out again.
 */
static void close_consumer(struct kafka_backend *b)
{
    struct kafka_consumer *c = b->cons;
    if (!c->rk)
        return;
    uv_poll_stop(&c->poll);
    uv_timer_stop(&c->keepalive);
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(c->rk);
    if (err)
        QB_LOG_WARN(NULL, "kafka %s: commands: closing the consumer: %s", cfg_name(b->cfg),
                    rd_kafka_err2str(err));
    rd_kafka_queue_io_event_enable(c->queue, -1, NULL, 0);
    rd_kafka_queue_destroy(c->queue);
    c->queue = NULL;
    rd_kafka_destroy(c->rk);
    c->rk = NULL;
    uv_close((uv_handle_t *)&c->poll, on_handle_closed);
    uv_close((uv_handle_t *)&c->keepalive, on_handle_closed);
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
    free_consumer(b->cons);
    free(b);
    if (closed)
        closed(arg);
}

/* A template naming one topic per VM or per event type. */
static bool has_placeholder(const char *tmpl)
{
    return strstr(tmpl, "<vm>") || strstr(tmpl, "<type>");
}

/*
 * Names the events and state topics to librdkafka before anything is
 * produced, when their templates have no <vm> or <type> (the bridge id is
 * known now). librdkafka fetches metadata on its first broker connection only
 * for topics it already knows; a topic first seen in a produce call waits for
 * its once-a-second topic scan to ask, and every message for it waits in the
 * unassigned queue until the answer: up to a second for the first events of a
 * start. Named here, right after rd_kafka_new (the first connection takes a
 * round trip or more), a topic is asked for with the connection's first
 * metadata request. The handles stay ours until teardown. Failing to name one
 * only loses the head start.
 */
static void warm_topics(struct kafka_backend *b)
{
    const char *tmpls[2] = {b->kc->events_topic, b->kc->state_topic};
    char topic[KAFKA_TOPIC_MAX];
    for (size_t i = 0; i < N_ELEMS(tmpls); i++) {
        if (has_placeholder(tmpls[i]))
            continue; /* one topic per VM or type: asked for on its first use (kafka_warmup.h) */
        if (expand_topic(tmpls[i], b->bridge->id, NULL, NULL, topic, sizeof(topic)) != QB_OK)
            continue; /* the first publish reports the length */
        if (i == 1 && b->known[0] && strcmp(rd_kafka_topic_name(b->known[0]), topic) == 0) {
            b->fixed[1] = b->known[0];
            continue;
        }
        b->known[i] = b->fixed[i] = rd_kafka_topic_new(b->rk, topic, NULL);
        if (!b->known[i])
            QB_LOG_WARN(NULL, "kafka %s: cannot name topic %s ahead: %s", cfg_name(b->cfg), topic,
                        rd_kafka_err2str(rd_kafka_last_error()));
    }
}

static void forget_topics(struct kafka_backend *b)
{
    for (size_t i = 0; i < N_ELEMS(b->known); i++) {
        if (b->known[i])
            rd_kafka_topic_destroy(b->known[i]);
        b->known[i] = b->fixed[i] = NULL;
    }
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
        forget_topics(b);
        rd_kafka_destroy(b->rk);
        b->rk = NULL;
    }
    uv_close((uv_handle_t *)&b->poll, on_handle_closed);
    uv_close((uv_handle_t *)&b->close_timer, on_handle_closed);
}

static void close_after_warmup(void *arg)
{
    struct kafka_backend *b = arg;
    /* first, so the group can hand its partitions to another member while we flush */
    if (b->cons)
        close_consumer(b);
    uint32_t ms = b->cfg->shutdown_timeout_ms < KAFKA_CLOSE_FLUSH_MS ? b->cfg->shutdown_timeout_ms
                                                                     : KAFKA_CLOSE_FLUSH_MS;
    /* with a delivery report callback, flush polls: reports arrive here, on the loop */
    rd_kafka_resp_err_t err = rd_kafka_flush(b->rk, (int)ms);
    if (err)
        QB_LOG_INFO(NULL, "kafka %s: %d messages still in flight after %u ms; giving up on them",
                    cfg_name(b->cfg), rd_kafka_outq_len(b->rk), ms);
    teardown(b);
}

static void on_close_timer(uv_timer_t *timer)
{
    struct kafka_backend *b = timer->data;
    struct qb_kafka_warmup *w = b->warmup;
    b->warmup = NULL;
    if (w)
        qb_kafka_warmup_close(w, close_after_warmup, b); /* a running request holds rk */
    else
        close_after_warmup(b);
}

static void kafka_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct kafka_backend *b = backend;
    b->closing = true;
    b->closed = closed;
    b->closed_arg = arg;
    uv_poll_stop(&b->poll);
    if (b->cons) {
        uv_poll_stop(&b->cons->poll);
        uv_timer_stop(&b->cons->keepalive);
    }
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
    b->kc = cfg->backend; /* kafka_validate has run: not NULL */
    b->bridge = bridge;
    b->loop = loop;
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
    rd_kafka_conf_set_stats_cb(conf, on_stats);
    b->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, rderr, sizeof(rderr));
    if (!b->rk) {
        snprintf(errbuf, errlen, "kafka %s: %s", cfg_name(cfg), rderr);
        rd_kafka_conf_destroy(conf);
        rc = QB_ECONFIG;
        goto fail;
    }
    warm_topics(b);
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
    if (has_placeholder(b->kc->events_topic) || has_placeholder(b->kc->state_topic)) {
        b->warmup = qb_kafka_warmup_new(loop, b->rk, cfg_name(cfg), QB_KAFKA_WARMUP_TIMEOUT_MS);
        if (!b->warmup) /* only the head start is lost */
            QB_LOG_WARN(NULL, "kafka %s: out of memory: new topics wait for librdkafka's scan",
                        cfg_name(cfg));
    }
    *backend = b;
    return QB_OK;

fail:
    forget_topics(b);
    if (b->rk)
        rd_kafka_destroy(b->rk);
    close_fds(b);
    free(b);
    return rc;
}

const struct qb_transport_ops qb_transport_kafka_ops = {
    .name = "kafka",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_KEYED | QB_TRANSPORT_CAP_SUBSCRIBE |
            QB_TRANSPORT_CAP_BATCHES,
    .config_keys = kafka_config_keys,
    .config_size = sizeof(struct qb_kafka_config),
    .validate = kafka_validate,
    .create = kafka_create,
    .publish = kafka_publish,
    .subscribe = kafka_subscribe,
    .ack = kafka_ack,
    .broker_rtt = kafka_broker_rtt,
    .close = kafka_close,
};
