/*
 * test_kafka.c - the Kafka backend against an in-process librdkafka mock
 * cluster (3 brokers), driven through its ops exactly as transport.c does:
 * our own qb_transport_backend_cb counts every delivered/writable/link call,
 * and a plain librdkafka consumer reads back what arrived. The commands
 * consumer is fed by a plain producer, and its group's committed offset is
 * read back with rd_kafka_committed from a second handle in the same group.
 *
 * A guard timer on the loop turns a hang into a failure.
 */
#include "error.h"
#include "kafka_config.h"
#include "log.h"
#include "transport_ops.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define GUARD_MS 60000
#define N_VMS 5
#define MAX_MSGS 600
#define BRIDGE "b1"
#define PARTITIONS 3
#define COMMANDS_TOPIC "qmp.commands"
#define GROUP "qmp-bridge." BRIDGE
#define MAX_INBOUND 64

static const char *const types[] = {"qmp.vm.stop", "qmp.vm.resume"};

struct test_msg {
    enum qb_msg_kind kind;
    char vm[16], type[32], id[32], key[32], topic[64];
    char payload[512];
    char data[64];
    size_t len;
    int ok, eio, eclosed, other; /* delivered() calls for this token */
    int consumed;
};

struct harness {
    uv_loop_t loop;
    uv_timer_t guard;
    uv_timer_t action;
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mc;
    struct qb_config_kv props[6];
    struct qb_transport_config cfg;
    struct qb_kafka_config kcfg; /* cfg.backend */
    struct qb_bridge_info bridge;
    void *backend;
    struct test_msg msgs[MAX_MSGS];
    size_t n_msgs, next;
    size_t ok, eio, eclosed, other;
    int writable, link_up, link_down, closed, eagain;
    bool blocked;
    /* resend queue for EIO reports, as the generic layer would */
    size_t retry[MAX_MSGS];
    size_t n_retry;
    /* leader-down scenario */
    bool move_leaders;
    bool down_done;
    size_t down_after;
    /* commands: what cb->inbound received, in order */
    struct {
        char payload[64];
        char vm_hint[16];
        bool has_hint;
        uint64_t token;
    } inbound[MAX_INBOUND];
    size_t n_inbound;
    size_t bad_inbound; /* too many, too long, with a reply channel or without a token */
};

static struct harness *H;

/* ---- backend callbacks: count, and keep publishing like the generic layer ---- */

static void pump(struct harness *h);

static void on_delivered(void *owner, void *token, int status)
{
    struct harness *h = owner;
    size_t i = (size_t)(uintptr_t)token - 1;
    assert_true(i < h->n_msgs);
    struct test_msg *m = &h->msgs[i];
    if (status == QB_OK) {
        m->ok++;
        h->ok++;
    } else if (status == QB_EIO) {
        m->eio++;
        h->eio++;
        h->retry[h->n_retry++] = i;
    } else if (status == QB_ECLOSED) {
        m->eclosed++;
        h->eclosed++;
    } else {
        m->other++;
        h->other++;
    }
}

static void on_writable(void *owner)
{
    struct harness *h = owner;
    h->writable++;
    h->blocked = false;
    pump(h);
}

static void on_link(void *owner, bool up, const char *why)
{
    struct harness *h = owner;
    assert_non_null(why);
    if (up)
        h->link_up++;
    else
        h->link_down++;
}

/*
 * Records one inbound message. No assertion in here: a failure would jump out
 * of the backend before it releases the librdkafka message, and then
 * rd_kafka_destroy waits for it forever. The test body checks bad_inbound.
 */
static void on_inbound(void *owner, const struct qb_inbound *in, uint64_t ack_token)
{
    struct harness *h = owner;
    if (h->n_inbound >= MAX_INBOUND || in->len >= sizeof(h->inbound[0].payload) ||
        in->reply_topic || in->correlation || ack_token == 0) {
        h->bad_inbound++;
        return;
    }
    memcpy(h->inbound[h->n_inbound].payload, in->payload, in->len);
    h->inbound[h->n_inbound].payload[in->len] = '\0';
    h->inbound[h->n_inbound].has_hint = in->vm_hint != NULL;
    if (in->vm_hint)
        snprintf(h->inbound[h->n_inbound].vm_hint, sizeof(h->inbound[0].vm_hint), "%s",
                 in->vm_hint);
    h->inbound[h->n_inbound].token = ack_token;
    h->n_inbound++;
}

static const struct qb_transport_backend_cb test_cb = {
    .delivered = on_delivered,
    .writable = on_writable,
    .link = on_link,
    .inbound = on_inbound,
};

static int publish_one(struct harness *h, size_t i)
{
    struct test_msg *m = &h->msgs[i];
    struct qb_message msg = {
        .kind = m->kind,
        .vm = m->vm,
        .type = m->type,
        .id = m->id,
        .key = m->key,
        .sequence = i,
        .payload = m->payload,
        .len = m->len,
    };
    return qb_transport_kafka_ops.publish(h->backend, &msg, (void *)(uintptr_t)(i + 1));
}

/* Publishes retries first, then new messages, until the backend says EAGAIN. */
static void pump(struct harness *h)
{
    while (!h->blocked && (h->n_retry > 0 || h->next < h->n_msgs)) {
        bool is_retry = h->n_retry > 0;
        size_t i = is_retry ? h->retry[0] : h->next;
        int rc = publish_one(h, i);
        if (rc == QB_EAGAIN) {
            h->eagain++;
            h->blocked = true;
            return;
        }
        assert_int_equal(rc, QB_OK);
        if (is_retry)
            memmove(h->retry, h->retry + 1, --h->n_retry * sizeof(h->retry[0]));
        else
            h->next++;
    }
}

/* ---- messages ---- */

static void make_msgs(struct harness *h, size_t n)
{
    assert_true(n <= MAX_MSGS);
    h->n_msgs = n;
    for (size_t i = 0; i < n; i++) {
        struct test_msg *m = &h->msgs[i];
        int vm = (int)(i % N_VMS);
        unsigned long long seq = i / N_VMS;
        m->kind = i % 4 == 3 ? QB_MSG_STATE : QB_MSG_EVENT;
        /* Every string is formatted from locals, never from sibling members: GCC 12's
         * -Wrestrict takes members of one struct for overlapping objects at -O0. */
        char vmname[8], id[32], key[32], topic[64], data[64];
        const char *type = types[(i / 2) % 2];
        snprintf(vmname, sizeof(vmname), "vm%d", vm);
        snprintf(id, sizeof(id), "ab12-%llu%s", seq, m->kind == QB_MSG_STATE ? ".state" : "");
        snprintf(key, sizeof(key), BRIDGE "/%s", vmname);
        if (m->kind == QB_MSG_STATE)
            snprintf(topic, sizeof(topic), "st." BRIDGE ".%s", vmname);
        else
            snprintf(topic, sizeof(topic), "ev." BRIDGE ".%s", type);
        snprintf(data, sizeof(data), "{\"n\":%zu,\"vm\":\"%s\"}", i, vmname);
        snprintf(m->vm, sizeof(m->vm), "%s", vmname);
        snprintf(m->type, sizeof(m->type), "%s", type);
        snprintf(m->id, sizeof(m->id), "%s", id);
        snprintf(m->key, sizeof(m->key), "%s", key);
        snprintf(m->topic, sizeof(m->topic), "%s", topic);
        snprintf(m->data, sizeof(m->data), "%s", data);
        int len = snprintf(
            m->payload, sizeof(m->payload),
            "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"qmp-bridge://" BRIDGE "/%s\","
            "\"type\":\"%s\",\"subject\":\"%s\",\"time\":\"2026-11-22T02:22:04.123456Z\","
            "\"datacontenttype\":\"application/json\","
            "\"dataschema\":\"file:///schema/v1/%s.json\",\"sequence\":\"%020llu\","
            "\"partitionkey\":\"%s\",\"bridge\":\"" BRIDGE "\",\"data\":%s}",
            id, vmname, type, vmname, type, seq, key, data);
        assert_true(len > 0 && (size_t)len < sizeof(m->payload));
        m->len = (size_t)len;
    }
}

/* ---- loop helpers ---- */

static void on_guard(uv_timer_t *t)
{
    (void)t;
    fail_msg("guard timer: scenario did not finish within %d ms (ok=%zu eio=%zu eclosed=%zu "
             "link_up=%d link_down=%d)",
             GUARD_MS, H->ok, H->eio, H->eclosed, H->link_up, H->link_down);
}

typedef bool (*cond_fn)(const struct harness *h);

static void run_until(struct harness *h, cond_fn done)
{
    while (!done(h))
        uv_run(&h->loop, UV_RUN_ONCE);
}

static bool all_ok(const struct harness *h)
{
    return h->ok == h->n_msgs;
}

static bool is_closed(const struct harness *h)
{
    return h->closed > 0;
}

static void on_closed(void *arg)
{
    struct harness *h = arg;
    h->closed++;
}

static void on_action_done(uv_timer_t *t)
{
    (void)t;
}

/* Lets the loop (and librdkafka) run for ms without any assertion on time. */
static void run_for(struct harness *h, uint64_t ms)
{
    uv_timer_start(&h->action, on_action_done, ms, 0);
    while (uv_is_active((uv_handle_t *)&h->action))
        uv_run(&h->loop, UV_RUN_ONCE);
}

/* ---- fixture: mock cluster, loop, default config ---- */

static int setup(void **state)
{
    char errstr[256];
    struct harness *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    H = h;
    /* QB_TEST_DEBUG=1 shows the backend's debug log when a scenario needs explaining */
    qb_log_set_level(getenv("QB_TEST_DEBUG") ? QB_LOG_DEBUG : QB_LOG_WARN);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(rd_kafka_conf_set(conf, "log_level", "0", errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    h->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(h->mock_rk);
    h->mc = rd_kafka_mock_cluster_new(h->mock_rk, 3);
    assert_non_null(h->mc);
    static const char *const topics[] = {"ev." BRIDGE ".qmp.vm.stop", "ev." BRIDGE ".qmp.vm.resume",
                                         "st." BRIDGE ".vm0",         "st." BRIDGE ".vm1",
                                         "st." BRIDGE ".vm2",         "st." BRIDGE ".vm3",
                                         "st." BRIDGE ".vm4"};
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]); i++)
        assert_int_equal(rd_kafka_mock_topic_create(h->mc, topics[i], PARTITIONS, 3), 0);
    /* one partition: the committed offset then says exactly which commands are done */
    assert_int_equal(rd_kafka_mock_topic_create(h->mc, COMMANDS_TOPIC, 1, 3), 0);

    assert_int_equal(uv_loop_init(&h->loop), 0);
    uv_timer_init(&h->loop, &h->guard);
    uv_timer_init(&h->loop, &h->action);
    uv_timer_start(&h->guard, on_guard, GUARD_MS, 0);
    uv_unref((uv_handle_t *)&h->guard);

    h->bridge.id = BRIDGE;
    h->cfg.type = "kafka";
    h->cfg.name = "kafka-test";
    h->cfg.backend = &h->kcfg;
    h->kcfg.brokers = (char *)rd_kafka_mock_cluster_bootstraps(h->mc);
    h->kcfg.events_topic = "ev.<bridge>.<type>";
    h->kcfg.state_topic = "st.<bridge>.<vm>";
    h->kcfg.commands_topic = COMMANDS_TOPIC;
    h->kcfg.group_id = GROUP;
    h->cfg.shutdown_timeout_ms = 5000;
    /* quick reconnects keep the broker-down scenarios short */
    h->props[0] = (struct qb_config_kv){.key = "reconnect.backoff.max.ms", .value = "200"};
    h->props[1] = (struct qb_config_kv){.key = "reconnect.backoff.ms", .value = "20"};
    h->kcfg.properties = h->props;
    h->kcfg.n_properties = 2;
    *state = h;
    return 0;
}

static void close_handle(uv_handle_t *handle)
{
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

static int teardown(void **state)
{
    struct harness *h = *state;
    if (h->backend) /* a failed test left it open */
        qb_transport_kafka_ops.close(h->backend, on_closed, h);
    close_handle((uv_handle_t *)&h->guard);
    close_handle((uv_handle_t *)&h->action);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    rd_kafka_mock_cluster_destroy(h->mc);
    rd_kafka_destroy(h->mock_rk);
    free(h);
    H = NULL;
    return 0;
}

static void create_backend(struct harness *h)
{
    char err[256] = "";
    int rc = qb_transport_kafka_ops.create(&h->loop, &h->cfg, &h->bridge, &test_cb, h, &h->backend,
                                           err, sizeof(err));
    if (rc != QB_OK)
        fail_msg("create: %s", err);
}

static void close_backend(struct harness *h)
{
    qb_transport_kafka_ops.close(h->backend, on_closed, h);
    assert_int_equal(h->closed, 0); /* closed() only from the loop */
    run_until(h, is_closed);
    assert_int_equal(h->closed, 1);
    h->backend = NULL;
}

/* ---- consumer ---- */

static const char *header(const rd_kafka_message_t *rm, const char *name, char *buf, size_t len)
{
    rd_kafka_headers_t *hdrs = NULL;
    const void *val;
    size_t size;
    if (rd_kafka_message_headers(rm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    if (rd_kafka_header_get_last(hdrs, name, &val, &size) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    snprintf(buf, len, "%.*s", (int)size, (const char *)val);
    return buf;
}

static void assert_header(const rd_kafka_message_t *rm, const char *name, const char *want)
{
    char buf[256];
    const char *got = header(rm, name, buf, sizeof(buf));
    if (!got || strcmp(got, want) != 0)
        fail_msg("header %s: want '%s', got '%s'", name, want, got ? got : "(absent)");
}

static size_t find_msg(struct harness *h, const rd_kafka_message_t *rm)
{
    char buf[64];
    const char *id = header(rm, "ce_id", buf, sizeof(buf));
    assert_non_null(id);
    for (size_t i = 0; i < h->n_msgs; i++) {
        if (strcmp(h->msgs[i].id, id) == 0 &&
            strncmp(h->msgs[i].key, (const char *)rm->key, rm->key_len) == 0 &&
            strlen(h->msgs[i].key) == rm->key_len)
            return i;
    }
    fail_msg("consumed a message nobody sent: id %s", id);
    return 0;
}

/*
 * Reads every partition of the expected topics from the beginning until
 * want messages arrived, checking each against what was sent and that each
 * key's messages come in the order they were published.
 */
/* A plain consumer of the mock cluster that commits nothing; the caller assigns partitions. */
static rd_kafka_t *checker_new(struct harness *h)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", h->kcfg.brokers, errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", "checker", errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    assert_non_null(c);
    rd_kafka_poll_set_consumer(c);
    return c;
}

static void consume_and_check(struct harness *h, size_t want, bool binary, bool check_order)
{
    rd_kafka_t *c = checker_new(h);

    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(16);
    for (size_t i = 0; i < h->n_msgs; i++) {
        if (rd_kafka_topic_partition_list_find(parts, h->msgs[i].topic, 0))
            continue;
        for (int p = 0; p < PARTITIONS; p++)
            rd_kafka_topic_partition_list_add(parts, h->msgs[i].topic, p)->offset =
                RD_KAFKA_OFFSET_BEGINNING;
    }
    assert_int_equal(rd_kafka_assign(c, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);

    /* last index seen per (vm, topic): a key's messages must arrive in publish order */
    long last[N_VMS][8];
    char seen_topics[8][64];
    size_t n_topics = 0;
    memset(last, -1, sizeof(last));

    size_t got = 0;
    /* give up after 20 s without a new message */
    for (int idle = 0; got < want && idle < 200;) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(c, 100);
        if (!rm) {
            idle++;
            continue;
        }
        idle = 0;
        if (getenv("QB_TEST_DEBUG"))
            print_message("consumed %s [%d] offset %lld\n", rd_kafka_topic_name(rm->rkt),
                          (int)rm->partition, (long long)rm->offset);
        if (rm->err) {
            print_message("consumer: %s\n", rd_kafka_message_errstr(rm));
            rd_kafka_message_destroy(rm);
            continue;
        }
        size_t i = find_msg(h, rm);
        struct test_msg *m = &h->msgs[i];
        m->consumed++;
        got++;
        const char *topic = rd_kafka_topic_name(rm->rkt);
        if (strcmp(topic, m->topic) != 0)
            fail_msg("message %zu went to %s, want %s", i, topic, m->topic);
        const char *want_value = binary ? m->data : m->payload;
        if (rm->len != strlen(want_value) || memcmp(rm->payload, want_value, rm->len) != 0)
            fail_msg("message %zu value: want %s, got %.*s", i, want_value, (int)rm->len,
                     (const char *)rm->payload);
        assert_header(rm, "ce_type", m->type);
        assert_header(rm, "ce_id", m->id);
        assert_header(rm, "ce_subject", m->vm);
        if (binary) {
            char buf[128];
            assert_header(rm, "content-type", "application/json");
            assert_header(rm, "ce_specversion", "1.0");
            snprintf(buf, sizeof(buf), "qmp-bridge://" BRIDGE "/%s", m->vm);
            assert_header(rm, "ce_source", buf);
            assert_header(rm, "ce_time", "2026-11-22T02:22:04.123456Z");
            snprintf(buf, sizeof(buf), "file:///schema/v1/%s.json", m->type);
            assert_header(rm, "ce_dataschema", buf);
            snprintf(buf, sizeof(buf), "%020zu", i / N_VMS);
            assert_header(rm, "ce_sequence", buf);
            assert_header(rm, "ce_partitionkey", m->key);
            assert_header(rm, "ce_bridge", BRIDGE);
        } else {
            assert_header(rm, "content-type", "application/cloudevents+json");
        }
        if (check_order) {
            size_t t;
            for (t = 0; t < n_topics && strcmp(seen_topics[t], topic) != 0; t++)
                ;
            if (t == n_topics) {
                assert_true(n_topics < 8);
                snprintf(seen_topics[n_topics++], sizeof(seen_topics[0]), "%s", topic);
            }
            int vm = (int)(i % N_VMS);
            if ((long)i <= last[vm][t])
                fail_msg("key %s on %s: message %zu after %ld", m->key, topic, i, last[vm][t]);
            last[vm][t] = (long)i;
        }
        rd_kafka_message_destroy(rm);
    }
    /* anything beyond want would be a duplicate: give it a moment to show up */
    for (int polls = 0; polls < 5; polls++) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(c, 100);
        if (!rm)
            continue;
        if (!rm->err) {
            char buf[64];
            const char *id = header(rm, "ce_id", buf, sizeof(buf));
            fail_msg("unexpected extra message %s [%d] at offset %lld: key %.*s id %s (got %zu)",
                     rd_kafka_topic_name(rm->rkt), (int)rm->partition, (long long)rm->offset,
                     (int)rm->key_len, (const char *)rm->key, id ? id : "?", got);
        }
        rd_kafka_message_destroy(rm);
    }
    for (size_t i = 0; i < want && got != want; i++)
        if (h->msgs[i].consumed != 1)
            print_message("message %zu (%s key %s) consumed %d times\n", i, h->msgs[i].topic,
                          h->msgs[i].key, h->msgs[i].consumed);
    for (int p = 0; p < PARTITIONS && got != want; p++) {
        int64_t lo = -1, hi = -1;
        rd_kafka_query_watermark_offsets(c, "ev." BRIDGE ".qmp.vm.stop", p, &lo, &hi, 5000);
        print_message("ev.b1.qmp.vm.stop [%d]: watermarks %lld..%lld\n", p, (long long)lo,
                      (long long)hi);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    assert_int_equal(got, want);
    for (size_t i = 0; i < want; i++)
        if (h->msgs[i].consumed != 1)
            fail_msg("message %zu consumed %d times", i, h->msgs[i].consumed);
}

/* ---- tests ---- */

static bool first_ok(const struct harness *h);

/* 500 messages for 5 VMs through a small librdkafka queue: all delivered once, in order. */
static void test_produce_and_consume(void **state)
{
    struct harness *h = *state;
    /* a tiny producer queue makes publish answer EAGAIN and exercises writable() */
    h->props[2] = (struct qb_config_kv){.key = "queue.buffering.max.messages", .value = "20"};
    h->kcfg.n_properties = 3;
    make_msgs(h, 500);
    create_backend(h);
    pump(h);
    run_until(h, all_ok);
    assert_int_equal(h->eio + h->eclosed + h->other, 0);
    for (size_t i = 0; i < h->n_msgs; i++)
        assert_int_equal(h->msgs[i].ok, 1);
    assert_true(h->eagain > 0);
    assert_true(h->writable > 0);
    assert_int_equal(h->link_up, 1);
    assert_int_equal(h->link_down, 0);
    close_backend(h);
    assert_int_equal(h->ok, h->n_msgs); /* nothing reported twice at close */
    consume_and_check(h, h->n_msgs, false, true);
}

static void test_binary_mode(void **state)
{
    struct harness *h = *state;
    h->kcfg.content_mode = QB_KAFKA_BINARY;
    make_msgs(h, 40);
    create_backend(h);
    pump(h);
    run_until(h, all_ok);
    assert_int_equal(h->eio + h->eclosed + h->other, 0);
    close_backend(h);
    consume_and_check(h, h->n_msgs, true, true);
}

/* Messages that can never be sent are refused at once, with no delivery report. */
static void test_publish_refused(void **state)
{
    struct harness *h = *state;
    h->kcfg.content_mode = QB_KAFKA_BINARY;
    make_msgs(h, 3);
    create_backend(h);

    snprintf(h->msgs[0].payload, sizeof(h->msgs[0].payload), "{\"specversion\":");
    h->msgs[0].len = strlen(h->msgs[0].payload);
    assert_int_equal(publish_one(h, 0), QB_EPARSE);

    /* over Kafka's 249-character limit once <vm> is substituted */
    char long_vm[250];
    memset(long_vm, 'v', sizeof(long_vm) - 1);
    long_vm[sizeof(long_vm) - 1] = '\0';
    struct qb_message msg = {.kind = QB_MSG_STATE,
                             .vm = long_vm,
                             .type = "t",
                             .key = "k",
                             .payload = h->msgs[1].payload,
                             .len = h->msgs[1].len};
    assert_int_equal(qb_transport_kafka_ops.publish(h->backend, &msg, (void *)(uintptr_t)2),
                     QB_ETOOBIG);

    /* without data the value is JSON null, not an absent value (a tombstone) */
    snprintf(h->msgs[2].payload, sizeof(h->msgs[2].payload),
             "{\"specversion\":\"1.0\",\"id\":\"%s\",\"type\":\"%s\",\"subject\":\"%s\"}",
             h->msgs[2].id, h->msgs[2].type, h->msgs[2].vm);
    h->msgs[2].len = strlen(h->msgs[2].payload);
    snprintf(h->msgs[2].data, sizeof(h->msgs[2].data), "null");
    assert_int_equal(publish_one(h, 2), QB_OK);
    run_until(h, first_ok);
    assert_int_equal(h->msgs[2].ok, 1);
    assert_int_equal(h->ok + h->eio + h->eclosed + h->other, 1);
    close_backend(h);
    assert_int_equal(h->ok + h->eio + h->eclosed + h->other, 1);
}

/*
 * Reads every partition of topic from the beginning until want records came;
 * stores each record's value length (-1 for a NULL value) and whether it has
 * a ce_id header, in arrival order per key (one key here, so one partition).
 */
static size_t consume_topic(struct harness *h, const char *topic, size_t want, long *vlen,
                            bool *has_id)
{
    rd_kafka_t *c = checker_new(h);
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int p = 0; p < PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    assert_int_equal(rd_kafka_assign(c, parts), 0);
    rd_kafka_topic_partition_list_destroy(parts);
    size_t got = 0;
    for (int idle = 0; got < want && idle < 200;) {
        rd_kafka_message_t *rm = rd_kafka_consumer_poll(c, 100);
        if (!rm) {
            idle++;
            continue;
        }
        idle = 0;
        if (!rm->err) {
            char buf[64];
            vlen[got] = rm->payload ? (long)rm->len : -1;
            has_id[got] = header(rm, "ce_id", buf, sizeof(buf)) != NULL;
            got++;
        }
        rd_kafka_message_destroy(rm);
    }
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return got;
}

/*
 * The clear-state message (kind STATE, no payload) becomes a tombstone on the
 * state topic: the VM's key with a NULL value (not an empty one, which
 * compaction would keep), and no CloudEvents headers: it is not an event.
 */
static void tombstone_after_state(struct harness *h)
{
    make_msgs(h, 4); /* msgs[3] is vm3's state */
    struct test_msg *st = &h->msgs[3];
    assert_int_equal(st->kind, QB_MSG_STATE);
    h->msgs[0] = *st; /* the state, then its clearing, both for vm3 */
    h->msgs[1] = *st;
    h->msgs[1].len = 0;
    h->msgs[1].payload[0] = '\0';
    h->n_msgs = 2;
    create_backend(h);
    pump(h);
    run_until(h, all_ok);
    assert_int_equal(h->eio + h->eclosed + h->other, 0);
    close_backend(h);
    long vlen[4];
    bool has_id[4];
    assert_int_equal(consume_topic(h, st->topic, 2, vlen, has_id), 2);
    assert_true(vlen[0] > 0);
    assert_true(has_id[0]);
    assert_int_equal(vlen[1], -1);
    assert_false(has_id[1]);
}

static void test_state_tombstone(void **state)
{
    tombstone_after_state(*state);
}

static void test_state_tombstone_binary(void **state)
{
    struct harness *h = *state;
    h->kcfg.content_mode = QB_KAFKA_BINARY;
    tombstone_after_state(h);
}

struct rtt_seen {
    size_t n;
    char broker[4][128];
    double avg_s[4], p99_s[4];
};

static void note_rtt(void *arg, const char *broker, double avg_s, double p99_s)
{
    struct rtt_seen *r = arg;

    if (r->n < 4) {
        snprintf(r->broker[r->n], sizeof(r->broker[0]), "%s", broker);
        r->avg_s[r->n] = avg_s;
        r->p99_s[r->n] = p99_s;
    }
    r->n++;
}

/*
 * The broker round trip librdkafka measures reaches the core: one entry per
 * broker that answered requests, named "host:port/id", in seconds; the
 * bootstrap broker (nodeid -1) is not one of them.
 */
static void test_broker_rtt(void **state)
{
    struct harness *h = *state;
    struct rtt_seen seen = {0};

    h->props[2] = (struct qb_config_kv){.key = "statistics.interval.ms", .value = "100"};
    h->kcfg.n_properties = 3;
    make_msgs(h, 8);
    create_backend(h);
    qb_transport_kafka_ops.broker_rtt(h->backend, note_rtt, &seen);
    assert_int_equal(seen.n, 0); /* no report yet */
    pump(h);
    run_until(h, all_ok);
    /* statistics come every 100 ms; the guard timer bounds the wait */
    while (seen.n == 0) {
        run_for(h, 100);
        qb_transport_kafka_ops.broker_rtt(h->backend, note_rtt, &seen);
    }
    assert_true(seen.n >= 1 && seen.n <= 3); /* the mock cluster has 3 brokers */
    for (size_t i = 0; i < seen.n && i < 4; i++) {
        const char *slash = strrchr(seen.broker[i], '/');
        if (!slash || slash[1] < '1' || slash[1] > '3' || !strchr(seen.broker[i], ':'))
            fail_msg("broker name '%s' is not host:port/nodeid", seen.broker[i]);
        assert_true(seen.avg_s[i] > 0 && seen.avg_s[i] < 60);
        assert_true(seen.p99_s[i] >= 0 && seen.p99_s[i] < 60);
    }
    close_backend(h);
}

static void expect_invalid(struct harness *h, const char *needle)
{
    char err[512] = "";
    assert_int_equal(qb_transport_kafka_ops.validate(&h->cfg, err, sizeof(err)), QB_ECONFIG);
    if (!strstr(err, needle))
        fail_msg("error '%s' does not name '%s'", err, needle);
    /* create refuses the same config and leaves nothing behind */
    void *backend = NULL;
    err[0] = '\0';
    assert_int_equal(qb_transport_kafka_ops.create(&h->loop, &h->cfg, &h->bridge, &test_cb, h,
                                                   &backend, err, sizeof(err)),
                     QB_ECONFIG);
    assert_null(backend);
    assert_non_null(strstr(err, needle));
}

static void test_validate(void **state)
{
    struct harness *h = *state;
    char err[512] = "";
    assert_int_equal(qb_transport_kafka_ops.validate(&h->cfg, err, sizeof(err)), QB_OK);

    h->props[2] = (struct qb_config_kv){.key = "linger.ms", .value = "banana"};
    h->kcfg.n_properties = 3;
    expect_invalid(h, "kafka kafka-test: property 'linger.ms': ");

    h->props[2] = (struct qb_config_kv){.key = "no.such.property", .value = "1"};
    expect_invalid(h, "property 'no.such.property': ");
    h->kcfg.n_properties = 2;

    char *brokers = h->kcfg.brokers;
    h->kcfg.brokers = "";
    expect_invalid(h, "brokers");
    h->kcfg.brokers = NULL;
    expect_invalid(h, "brokers");
    h->kcfg.brokers = brokers;

    h->kcfg.events_topic = "";
    expect_invalid(h, "events_topic");
    h->kcfg.events_topic = "ev";
    h->kcfg.state_topic = NULL;
    expect_invalid(h, "state_topic");
}

static bool down_scenario_done(const struct harness *h)
{
    return h->ok == h->n_msgs && h->down_done;
}

static void on_broker_up(uv_timer_t *t)
{
    struct harness *h = t->data;
    assert_int_equal(rd_kafka_mock_broker_set_up(h->mc, 1), 0);
    h->down_done = true;
}

static void on_publish_tick(uv_timer_t *t)
{
    struct harness *h = t->data;
    size_t stop = h->next + 20 < h->n_msgs ? h->next + 20 : h->n_msgs;
    /* publish in small steps so production goes on while the leader is away */
    size_t n_msgs = h->n_msgs;
    h->n_msgs = stop;
    pump(h);
    h->n_msgs = n_msgs;
    if (h->next >= 100 && !h->down_done && !uv_is_active((uv_handle_t *)&h->action)) {
        /* broker 1 leads some partitions (the mock picks leaders at random) */
        assert_int_equal(rd_kafka_mock_broker_set_down(h->mc, 1), 0);
        if (h->move_leaders) {
            assert_int_equal(
                rd_kafka_mock_partition_set_leader(h->mc, "ev." BRIDGE ".qmp.vm.stop", 0, 2), 0);
            assert_int_equal(
                rd_kafka_mock_partition_set_leader(h->mc, "ev." BRIDGE ".qmp.vm.resume", 1, 3), 0);
        }
        h->action.data = h;
        uv_timer_start(&h->action, on_broker_up, 1500, 0);
    }
    if (h->next >= h->n_msgs)
        uv_timer_stop(t);
}

/* Produces 400 messages in steps of 20 while broker 1 goes away for a while. */
static void run_broker_down(struct harness *h)
{
    uv_timer_t tick;
    make_msgs(h, 400);
    create_backend(h);
    uv_timer_init(&h->loop, &tick);
    tick.data = h;
    uv_timer_start(&tick, on_publish_tick, 0, 10);
    run_until(h, down_scenario_done);
    uv_close((uv_handle_t *)&tick, NULL);
    /* failed reports were re-sent by the harness; each message ended delivered exactly once */
    for (size_t i = 0; i < h->n_msgs; i++)
        assert_int_equal(h->msgs[i].ok, 1);
    assert_int_equal(h->eclosed + h->other, 0);
    print_message("broker down: %zu failed delivery reports, each re-sent\n", h->eio);
    close_backend(h);
}

static void test_leader_down(void **state)
{
    struct harness *h = *state;
    run_broker_down(h);
    /* idempotence keeps librdkafka's own retries in order; re-sends by us may reorder */
    consume_and_check(h, h->n_msgs, false, h->eio == 0);
}

/*
 * Same, and two partitions get a new leader meanwhile. Only the delivery
 * contract is checked here: in about 1 run of 15, librdkafka 2.0's mock
 * cluster was missing a few messages it had acknowledged, all in the moved
 * partition and produced just before the move (likely its idempotence
 * emulation taking the batch re-sent to the new leader for a duplicate), so
 * reading back would test the mock rather than this backend.
 */
static void test_leader_moves(void **state)
{
    struct harness *h = *state;
    h->move_leaders = true;
    run_broker_down(h);
}

static bool link_went_down(const struct harness *h)
{
    return h->link_down > 0;
}

static bool link_went_down_twice(const struct harness *h)
{
    return h->link_down > 1;
}

static bool first_ok(const struct harness *h)
{
    return h->ok >= 1;
}

static bool second_ok(const struct harness *h)
{
    return h->ok >= 2;
}

/* All brokers down: link goes down, comes back with the first delivery, and close gives up. */
static void test_all_down_and_close(void **state)
{
    struct harness *h = *state;
    make_msgs(h, 22);
    size_t total = h->n_msgs;
    create_backend(h);

    h->n_msgs = 1;
    pump(h);
    run_until(h, first_ok);
    assert_int_equal(h->link_up, 1);

    assert_int_equal(rd_kafka_mock_broker_set_down(h->mc, -1), 0);
    run_until(h, link_went_down);
    assert_int_equal(h->link_down, 1);

    assert_int_equal(rd_kafka_mock_broker_set_up(h->mc, -1), 0);
    h->n_msgs = 2;
    pump(h);
    run_until(h, second_ok);
    assert_int_equal(h->link_up, 2);

    assert_int_equal(rd_kafka_mock_broker_set_down(h->mc, -1), 0);
    run_until(h, link_went_down_twice);
    h->n_msgs = total;
    pump(h);
    assert_int_equal(h->next, total);
    run_for(h, 300);
    assert_int_equal(h->ok, 2);

    close_backend(h);
    assert_int_equal(h->eclosed, total - 2);
    for (size_t i = 2; i < total; i++) {
        assert_int_equal(h->msgs[i].eclosed, 1);
        assert_int_equal(h->msgs[i].ok + h->msgs[i].eio + h->msgs[i].other, 0);
    }
}

/* ---- commands ---- */

static bool inbound_35(const struct harness *h)
{
    return h->n_inbound + h->bad_inbound >= 35;
}

static bool inbound_38(const struct harness *h)
{
    return h->n_inbound + h->bad_inbound >= 38;
}

/* Produces n commands starting at number first: 1 in 8 for another bridge, 1 in 8 without key. */
static void produce_commands(struct harness *h, int first, int n)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", h->kcfg.brokers, errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    assert_non_null(p);
    for (int i = first; i < first + n; i++) {
        char key[32], payload[32];
        snprintf(payload, sizeof(payload), "cmd-%d", i);
        if (i % 8 == 3)
            snprintf(key, sizeof(key), "other-bridge/vm%d", i % N_VMS);
        else
            snprintf(key, sizeof(key), BRIDGE "/vm%d", i % N_VMS);
        bool keyless = i % 8 == 6;
        assert_int_equal(rd_kafka_producev(p, RD_KAFKA_V_TOPIC(COMMANDS_TOPIC),
                                           RD_KAFKA_V_PARTITION(0),
                                           RD_KAFKA_V_KEY(keyless ? NULL : key,
                                                          keyless ? 0 : strlen(key)),
                                           RD_KAFKA_V_VALUE(payload, strlen(payload)),
                                           RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                           RD_KAFKA_V_END),
                         RD_KAFKA_RESP_ERR_NO_ERROR);
    }
    assert_int_equal(rd_kafka_flush(p, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    rd_kafka_destroy(p);
}

/* Checks inbound[from..] against commands first.. (other-bridge ones skipped). */
static void check_inbound(struct harness *h, size_t from, int first, int n)
{
    size_t k = from;
    assert_int_equal(h->bad_inbound, 0);
    for (int i = first; i < first + n; i++) {
        char want[32], vm[16];
        if (i % 8 == 3)
            continue;
        assert_true(k < h->n_inbound);
        snprintf(want, sizeof(want), "cmd-%d", i);
        if (strcmp(h->inbound[k].payload, want) != 0)
            fail_msg("inbound %zu: want %s, got %s", k, want, h->inbound[k].payload);
        if (i % 8 == 6) {
            assert_false(h->inbound[k].has_hint); /* no key: the core decides by subject */
        } else {
            snprintf(vm, sizeof(vm), "vm%d", i % N_VMS);
            assert_true(h->inbound[k].has_hint);
            assert_string_equal(h->inbound[k].vm_hint, vm);
        }
        k++;
    }
    assert_int_equal(k, h->n_inbound);
}

/* The group's committed offset of partition 0, read through its own handle (-1001: none). */
static int64_t committed(rd_kafka_t *checker)
{
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(parts, COMMANDS_TOPIC, 0);
    assert_int_equal(rd_kafka_committed(checker, parts, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
    int64_t offset = parts->elems[0].err ? -2 : parts->elems[0].offset;
    rd_kafka_topic_partition_list_destroy(parts);
    return offset;
}

static rd_kafka_t *new_checker(struct harness *h)
{
    char errstr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    assert_int_equal(
        rd_kafka_conf_set(conf, "bootstrap.servers", h->kcfg.brokers, errstr, sizeof(errstr)),
        RD_KAFKA_CONF_OK);
    assert_int_equal(rd_kafka_conf_set(conf, "group.id", GROUP, errstr, sizeof(errstr)),
                     RD_KAFKA_CONF_OK);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    assert_non_null(c);
    return c;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until the committed offset is want (a tick re-checks while nothing happens). */
static void run_until_committed(struct harness *h, rd_kafka_t *checker, int64_t want)
{
    uv_timer_start(&h->action, on_tick, 50, 50);
    while (committed(checker) != want && h->bad_inbound == 0)
        uv_run(&h->loop, UV_RUN_ONCE);
    assert_int_equal(h->bad_inbound, 0);
    uv_timer_stop(&h->action);
}

/*
 * 40 commands on one partition: 30 keyed for this bridge's VMs, 5 for another
 * bridge, 5 without key. The 35 that may be ours reach the core with the VM
 * of the key as hint; the other bridge's are never seen. Acknowledged out of
 * order, the group's offset stops below the first command still running and
 * reaches the end only once every command is done. A new consumer of the
 * group then starts after them: nothing is read twice.
 */
static void test_commands(void **state)
{
    struct harness *h = *state;
    /* what was produced before the group first joined is what this test reads */
    h->props[2] = (struct qb_config_kv){.key = "auto.offset.reset", .value = "earliest"};
    /* a producer-only property is no reason to refuse the consumer */
    h->props[3] = (struct qb_config_kv){.key = "linger.ms", .value = "5"};
    /* the mock makes a member joining after a leave wait for the group's session timeout */
    h->props[4] = (struct qb_config_kv){.key = "session.timeout.ms", .value = "6000"};
    /* short, so that the idle stretch below outlasts it */
    h->props[5] = (struct qb_config_kv){.key = "max.poll.interval.ms", .value = "6500"};
    h->kcfg.n_properties = 6;
    create_backend(h);
    assert_true(qb_transport_kafka_ops.caps & QB_TRANSPORT_CAP_SUBSCRIBE);
    assert_false(qb_transport_kafka_ops.caps & QB_TRANSPORT_CAP_REPLY);
    assert_int_equal(qb_transport_kafka_ops.subscribe(h->backend), QB_EINVAL); /* commands off */
    h->cfg.commands = true;

    produce_commands(h, 0, 40);
    assert_int_equal(qb_transport_kafka_ops.subscribe(h->backend), QB_OK);
    run_until(h, inbound_35);
    check_inbound(h, 0, 0, 40);

    rd_kafka_t *checker = new_checker(h);
    /* inbound 11 is command 13 at offset 13 (3 and 11 went to the other bridge) */
    const size_t hold = 11;
    assert_string_equal(h->inbound[hold].payload, "cmd-13");
    for (size_t k = h->n_inbound; k-- > 0;)
        if (k != hold)
            qb_transport_kafka_ops.ack(h->backend, h->inbound[k].token);
    /* a repeated ack and unknown tokens change nothing */
    qb_transport_kafka_ops.ack(h->backend, h->inbound[0].token);
    qb_transport_kafka_ops.ack(h->backend, 0);
    qb_transport_kafka_ops.ack(h->backend, UINT64_MAX);
    run_until_committed(h, checker, 13);
    run_for(h, 300);
    assert_int_equal(committed(checker), 13);

    /*
     * Quiet for longer than max.poll.interval.ms: without polls of its own the
     * consumer would leave the group, its partition would be revoked (the held
     * token going stale) and command 13 onwards read again.
     */
    run_for(h, 8000);
    assert_int_equal(h->n_inbound + h->bad_inbound, 35);

    qb_transport_kafka_ops.ack(h->backend, h->inbound[hold].token);
    run_until_committed(h, checker, 40);
    close_backend(h);
    assert_int_equal(committed(checker), 40);

    /* a restarted bridge resumes after the committed offset */
    produce_commands(h, 40, 4);
    h->closed = 0;
    size_t before = h->n_inbound;
    create_backend(h);
    assert_int_equal(qb_transport_kafka_ops.subscribe(h->backend), QB_OK);
    run_until(h, inbound_38);
    check_inbound(h, before, 40, 4);
    run_for(h, 300);
    assert_int_equal(h->n_inbound + h->bad_inbound, 38); /* nothing of the first 40 again */
    for (size_t k = before; k < h->n_inbound; k++)
        qb_transport_kafka_ops.ack(h->backend, h->inbound[k].token);
    run_until_committed(h, checker, 44);
    close_backend(h);
    rd_kafka_destroy(checker);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_produce_and_consume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_tombstone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broker_rtt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_tombstone_binary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leader_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leader_moves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_all_down_and_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commands, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
