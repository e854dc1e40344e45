/*
 * test_config.c - the YAML config loader (bridge/config.c).
 *
 * Read the bad_configs table as the loader's error catalogue: each row is a
 * small YAML text and the exact message it must produce, line:column and key
 * path included. The good cases check every value of the shipped example and
 * every default of the minimal config, so a table default that drifts from
 * config.h's comments fails here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "config_warnings.h"
#include "error.h"
#include "kafka_config.h"
#include "mqtt_config.h"
#include "stdout_config.h"
#include "transport_ops.h"

#include <unistd.h>

/* A transport's own keys: the loader hangs its backend's struct on t->backend. */
static const struct qb_stdout_config *stdout_of(const struct qb_transport_config *t)
{
    assert_string_equal(t->type, "stdout");
    return t->backend;
}

static const struct qb_mqtt_config *mqtt_of(const struct qb_transport_config *t)
{
    assert_string_equal(t->type, "mqtt");
    return t->backend;
}

/* A key of another backend is no key of t's, so neither its value nor its default reach t. */
static void assert_no_key(const struct qb_transport_config *t, const char *key)
{
    const struct qb_transport_ops *ops = qb_transport_ops_find(t->type);

    assert_non_null(ops);
    for (const struct qb_config_key *k = ops->config_keys; k && k->key; k++)
        assert_string_not_equal(k->key, key);
}

static const struct qb_kafka_config *kafka_of(const struct qb_transport_config *t)
{
    assert_string_equal(t->type, "kafka");
    return t->backend;
}

static struct qb_config *load_ok(const char *yaml)
{
    char err[512] = "";
    struct qb_config *cfg = NULL;
    int rc = qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err));

    if (rc != QB_OK)
        fail_msg("unexpected error %d: %s", rc, err);
    assert_non_null(cfg);
    return cfg;
}

static const struct qb_transport_config *find_transport(const struct qb_config *cfg,
                                                        const char *name)
{
    for (size_t i = 0; i < cfg->n_transports; i++)
        if (strcmp(cfg->transports[i].name, name) == 0)
            return &cfg->transports[i];
    fail_msg("no transport named %s", name);
    return NULL;
}

/* Defaults every transport type shares, as documented in config.h. */
static void assert_common_defaults(const struct qb_transport_config *t)
{
    assert_int_equal(t->queue_max_messages, 10000);
    assert_int_equal(t->queue_max_bytes, 16u * 1024 * 1024);
    assert_int_equal(t->shutdown_timeout_ms, 5000);
    assert_int_equal(t->on_full, QB_ON_FULL_BACKPRESSURE);
}

/* ---- good configs ---- */

/* The layout from the design brief, in flow style, with no default left in force. */
static void test_full_inline(void **state)
{
    static const char yaml[] =
        "bridge: { id: host-a, log_level: debug, log_format: json, schema_base_uri: \"file:///s/\" "
        "}\n"
        "qmp: { max_line_bytes: 1MiB, command_timeout: 2s, connect_timeout: 3s,\n"
        "       reconnect_initial: 100ms, reconnect_max: 1m, listen: \"unix:/run/q.sock\", "
        "listen_name: pid, listen_name_template: \"q-{comm}.{uid}-{pid}\" }\n"
        "vms:\n"
        "  - { name: vm1, qmp: \"unix:/run/qemu/vm1.qmp\" }\n"
        "  - { name: vm2, qmp: \"tcp:127.0.0.1:4444\" }\n"
        "discovery: { directory: /run/qmp-bridge/vms, suffix: \".qmp\" }\n"
        "events: { exclude: [RTC_CHANGE, VNC_CONNECTED] }\n"
        "transports:\n"
        "  - { type: stdout, path: /tmp/x.jsonl }\n"
        "  - { type: mqtt, host: 10.0.0.1, port: 1884, topic_prefix: q, qos: 2, protocol: "
        "\"3.1.1\",\n"
        "      client_id: x, keepalive: 1m, username: u, password_file: /etc/p,\n"
        "      tls: { ca_file: a, cert_file: b, key_file: c, insecure: yes },\n"
        "      max_inflight: 7, reconnect_initial: 1s, reconnect_max: 2s, queue_max_messages: 10,\n"
        "      queue_max_bytes: 64k, shutdown_timeout: 1h, name: mybus, on_full: drop }\n"
        "  - { type: kafka, brokers: \"h1:9092,h2:9092\", events_topic: e, state_topic: s,\n"
        "      commands_topic: c, content_mode: binary,\n"
        "      properties: { compression.type: lz4, linger.ms: 5 } }\n";
    struct qb_config *cfg = load_ok(yaml);
    const struct qb_transport_config *t;

    (void)state;
    assert_string_equal(cfg->path, "t.yaml");
    assert_string_equal(cfg->bridge_id, "host-a");
    assert_int_equal(cfg->log_level, QB_LOG_DEBUG);
    assert_int_equal(cfg->log_format, QB_LOG_FORMAT_JSON);
    assert_string_equal(cfg->schema_base_uri, "file:///s/");
    assert_int_equal(cfg->qmp_max_line_bytes, 1024 * 1024);
    assert_int_equal(cfg->qmp_command_timeout_ms, 2000);
    assert_int_equal(cfg->qmp_connect_timeout_ms, 3000);
    assert_int_equal(cfg->qmp_reconnect_initial_ms, 100);
    assert_int_equal(cfg->qmp_reconnect_max_ms, 60000);
    assert_string_equal(cfg->qmp_listen, "unix:/run/q.sock");
    assert_int_equal(cfg->qmp_listen_name, QB_LISTEN_NAME_PID);
    assert_string_equal(cfg->qmp_listen_name_template, "q-{comm}.{uid}-{pid}");

    assert_int_equal(cfg->n_vms, 2);
    assert_string_equal(cfg->vms[0].name, "vm1");
    assert_string_equal(cfg->vms[0].qmp, "unix:/run/qemu/vm1.qmp");
    assert_int_equal(cfg->vms[0].line, 5);
    assert_string_equal(cfg->vms[1].name, "vm2");
    assert_string_equal(cfg->vms[1].qmp, "tcp:127.0.0.1:4444");
    assert_int_equal(cfg->vms[1].line, 6);

    assert_string_equal(cfg->discovery_directory, "/run/qmp-bridge/vms");
    assert_string_equal(cfg->discovery_suffix, ".qmp");
    assert_int_equal(cfg->n_events_exclude, 2);
    assert_string_equal(cfg->events_exclude[0], "RTC_CHANGE");
    assert_string_equal(cfg->events_exclude[1], "VNC_CONNECTED");

    assert_int_equal(cfg->n_transports, 3);
    t = &cfg->transports[0];
    assert_string_equal(t->type, "stdout");
    assert_string_equal(t->name, "stdout");
    assert_string_equal(stdout_of(t)->path, "/tmp/x.jsonl");
    assert_int_equal(t->line, 10);
    assert_int_equal(t->column, 5);
    assert_no_key(t, "host"); /* mqtt defaults stay off other types */
    assert_no_key(t, "events_topic");
    assert_common_defaults(t);

    t = &cfg->transports[1];
    assert_string_equal(t->type, "mqtt");
    assert_string_equal(t->name, "mybus");
    assert_string_equal(mqtt_of(t)->host, "10.0.0.1");
    assert_int_equal(mqtt_of(t)->port, 1884);
    assert_string_equal(mqtt_of(t)->topic_prefix, "q");
    assert_int_equal(mqtt_of(t)->qos, 2);
    assert_int_equal(mqtt_of(t)->protocol, QB_MQTT_V311);
    assert_string_equal(mqtt_of(t)->client_id, "x");
    assert_int_equal(mqtt_of(t)->keepalive_ms, 60000);
    assert_string_equal(mqtt_of(t)->username, "u");
    assert_string_equal(mqtt_of(t)->password_file, "/etc/p");
    assert_string_equal(mqtt_of(t)->tls_ca_file, "a");
    assert_string_equal(mqtt_of(t)->tls_cert_file, "b");
    assert_string_equal(mqtt_of(t)->tls_key_file, "c");
    assert_true(mqtt_of(t)->tls_insecure);
    assert_int_equal(mqtt_of(t)->max_inflight, 7);
    assert_int_equal(mqtt_of(t)->reconnect_initial_ms, 1000);
    assert_int_equal(mqtt_of(t)->reconnect_max_ms, 2000);
    assert_int_equal(t->queue_max_messages, 10);
    assert_int_equal(t->queue_max_bytes, 65536);
    assert_int_equal(t->shutdown_timeout_ms, 3600000);
    assert_int_equal(t->on_full, QB_ON_FULL_DROP);
    assert_no_key(t, "path");

    t = &cfg->transports[2];
    assert_string_equal(t->type, "kafka");
    assert_string_equal(t->name, "kafka");
    assert_string_equal(kafka_of(t)->brokers, "h1:9092,h2:9092");
    assert_string_equal(kafka_of(t)->events_topic, "e");
    assert_string_equal(kafka_of(t)->state_topic, "s");
    assert_string_equal(kafka_of(t)->commands_topic, "c");
    assert_int_equal(kafka_of(t)->content_mode, QB_KAFKA_BINARY);
    assert_int_equal(kafka_of(t)->n_properties, 2);
    assert_string_equal(kafka_of(t)->properties[0].key, "compression.type");
    assert_string_equal(kafka_of(t)->properties[0].value, "lz4");
    assert_int_equal(kafka_of(t)->properties[0].line, 18);
    assert_int_equal(kafka_of(t)->properties[0].column, 21);
    assert_string_equal(kafka_of(t)->properties[1].key, "linger.ms");
    assert_string_equal(kafka_of(t)->properties[1].value, "5");
    assert_int_equal(kafka_of(t)->properties[1].column, 44);
    assert_no_key(t, "client_id");
    qb_config_free(cfg);
}

static void test_example_file(void **state)
{
    char err[512] = "";
    struct qb_config *cfg = NULL;
    const struct qb_transport_config *t;
    int rc =
        qb_config_load_file(QB_SOURCE_DIR "/conf/qmp-bridge.example.yaml", &cfg, err, sizeof(err));

    (void)state;
    if (rc != QB_OK)
        fail_msg("%s", err);
    assert_string_equal(cfg->path, QB_SOURCE_DIR "/conf/qmp-bridge.example.yaml");
    assert_non_null(cfg->bridge_id); /* documented, commented out: the host name */
    assert_int_equal(cfg->log_level, QB_LOG_INFO);
    assert_int_equal(cfg->log_format, QB_LOG_FORMAT_AUTO);
    assert_string_equal(cfg->schema_base_uri, "file:///usr/share/qmp-bridge/schema/v1/");
    assert_null(cfg->state_directory); /* documented, commented out */
    assert_int_equal(cfg->qmp_max_line_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->qmp_command_timeout_ms, 10000);
    assert_int_equal(cfg->qmp_connect_timeout_ms, 5000);
    assert_int_equal(cfg->qmp_reconnect_initial_ms, 250);
    assert_int_equal(cfg->qmp_reconnect_max_ms, 30000);
    assert_int_equal(cfg->qmp_max_connecting, 64);
    assert_int_equal(cfg->qmp_max_held_events, 8192);
    assert_int_equal(cfg->qmp_max_held_bytes, 2 * 1024 * 1024);
    assert_null(cfg->qmp_listen);
    assert_int_equal(cfg->qmp_listen_name, QB_LISTEN_NAME_QUERY);
    assert_string_equal(cfg->qmp_listen_name_template, "vm-{pid}");
    assert_int_equal(cfg->qmp_listen_max_vms, 1024);
    assert_int_equal(cfg->qmp_listen_forget_after_ms, 3600000);
    /* the example documents the spool with its defaults and the directory commented out */
    assert_null(cfg->spool_directory);
    assert_int_equal(cfg->spool_max_bytes, (size_t)1 << 30);
    assert_int_equal(cfg->spool_segment_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->spool_fsync, QB_SPOOL_FSYNC_BATCH);
    assert_int_equal(cfg->spool_fsync_interval_ms, 50);
    assert_int_equal(cfg->spool_on_full, QB_SPOOL_FULL_BACKPRESSURE);
    assert_int_equal(cfg->spool_memory_max_messages, 10000);
    assert_null(cfg->metrics_listen);
    assert_int_equal(cfg->n_vms, 2);
    assert_string_equal(cfg->vms[1].qmp, "tcp:127.0.0.1:4444");
    assert_string_equal(cfg->discovery_directory, "/run/qmp-bridge/vms");
    assert_string_equal(cfg->discovery_suffix, ".qmp");
    assert_int_equal(cfg->n_events_exclude, 1);
    assert_string_equal(cfg->events_exclude[0], "RTC_CHANGE");
    assert_int_equal(cfg->n_transports, 3);

    t = find_transport(cfg, "stdout");
    assert_string_equal(stdout_of(t)->path, "/tmp/qmp-bridge.jsonl");
    assert_common_defaults(t);
    assert_int_equal(t->n_include + t->n_exclude, 0);

    t = find_transport(cfg, "mybus");
    assert_string_equal(t->type, "mqtt");
    assert_int_equal(t->n_include, 3);
    assert_string_equal(t->include[0], "qmp.block.io_error");
    assert_int_equal(t->n_exclude, 0);
    assert_string_equal(mqtt_of(t)->host, "127.0.0.1");
    assert_int_equal(mqtt_of(t)->port, 8883);
    assert_string_equal(mqtt_of(t)->topic_prefix, "qmp");
    assert_int_equal(mqtt_of(t)->qos, 1);
    assert_int_equal(mqtt_of(t)->protocol, QB_MQTT_V5);
    assert_string_equal(mqtt_of(t)->client_id, "qmp-bridge-host-a");
    assert_int_equal(mqtt_of(t)->keepalive_ms, 30000);
    assert_string_equal(mqtt_of(t)->username, "bridge");
    assert_string_equal(mqtt_of(t)->password_file, "/etc/qmp-bridge/mqtt.password");
    assert_string_equal(mqtt_of(t)->tls_ca_file, "/etc/ssl/certs/ca-certificates.crt");
    assert_string_equal(mqtt_of(t)->tls_cert_file, "/etc/qmp-bridge/client.crt");
    assert_string_equal(mqtt_of(t)->tls_key_file, "/etc/qmp-bridge/client.key");
    assert_false(mqtt_of(t)->tls_insecure);
    assert_int_equal(mqtt_of(t)->max_inflight, 100);
    assert_int_equal(mqtt_of(t)->reconnect_initial_ms, 500);
    assert_int_equal(mqtt_of(t)->reconnect_max_ms, 30000);
    assert_common_defaults(t);

    t = find_transport(cfg, "kafka");
    assert_string_equal(kafka_of(t)->brokers, "h1:9092,h2:9092");
    assert_string_equal(kafka_of(t)->events_topic, "qmp.events");
    assert_string_equal(kafka_of(t)->state_topic, "qmp.state");
    assert_string_equal(kafka_of(t)->commands_topic, "qmp.commands");
    assert_int_equal(kafka_of(t)->content_mode, QB_KAFKA_STRUCTURED);
    assert_int_equal(kafka_of(t)->n_properties, 2);
    assert_string_equal(kafka_of(t)->properties[0].key, "compression.type");
    assert_string_equal(kafka_of(t)->properties[0].value, "lz4");
    assert_string_equal(kafka_of(t)->properties[1].key, "linger.ms");
    assert_string_equal(kafka_of(t)->properties[1].value, "1");
    assert_common_defaults(t);
    qb_config_free(cfg);
}

static void test_minimal_file(void **state)
{
    char err[512] = "";
    struct qb_config *cfg = NULL;
    const struct qb_transport_config *t;
    int rc = qb_config_load_file(QB_SOURCE_DIR "/conf/minimal.yaml", &cfg, err, sizeof(err));

    (void)state;
    if (rc != QB_OK)
        fail_msg("%s", err);
    assert_string_equal(cfg->bridge_id, "host-a");
    assert_int_equal(cfg->log_level, QB_LOG_INFO);
    assert_int_equal(cfg->log_format, QB_LOG_FORMAT_AUTO);
    assert_string_equal(cfg->schema_base_uri, "file:///usr/share/qmp-bridge/schema/v1/");
    assert_int_equal(cfg->qmp_max_line_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->qmp_command_timeout_ms, 10000);
    assert_int_equal(cfg->qmp_connect_timeout_ms, 5000);
    assert_int_equal(cfg->qmp_reconnect_initial_ms, 250);
    assert_int_equal(cfg->qmp_reconnect_max_ms, 30000);
    assert_int_equal(cfg->n_vms, 1);
    assert_string_equal(cfg->vms[0].name, "vm1");
    assert_string_equal(cfg->vms[0].qmp, "unix:/run/qemu/vm1.qmp");
    assert_null(cfg->discovery_directory);
    assert_string_equal(cfg->discovery_suffix, "");
    assert_int_equal(cfg->n_events_exclude, 0);
    assert_int_equal(cfg->n_transports, 1);
    t = &cfg->transports[0];
    assert_string_equal(t->type, "stdout");
    assert_string_equal(t->name, "stdout");
    assert_null(stdout_of(t)->path);
    assert_common_defaults(t);
    qb_config_free(cfg);
}

/* mqtt and kafka defaults, including the ones that depend on other keys. */
/*
 * Every registered backend's config map: a struct to fill exactly when there are keys,
 * one line saying what each key is for, no key that shadows a common transport key (the
 * common one would win), and room in the loader's seen-bits (64 keys a table).
 */
static void test_backend_config_maps(void **state)
{
    const struct qb_transport_ops *ops;

    (void)state;
    for (size_t i = 0; (ops = qb_transport_ops_at(i)); i++) {
        size_t n = 0;

        assert_ptr_equal(qb_transport_ops_find(ops->name), ops);
        assert_int_equal(ops->config_keys != NULL, ops->config_size != 0);
        for (const struct qb_config_key *k = ops->config_keys; k && k->key; k++, n++) {
            if (!k->desc || !k->desc[0])
                fail_msg("%s key %s has no description", ops->name, k->key);
            for (const struct qb_config_key *c = qb_config_transport_keys; c->key; c++)
                if (strcmp(c->key, k->key) == 0)
                    fail_msg("%s key %s shadows a common transport key", ops->name, k->key);
        }
        assert_true(n < 64);
    }
    assert_null(qb_transport_ops_find("carrier-pigeon"));
}

static void test_transport_defaults(void **state)
{
    struct qb_config *cfg = load_ok("bridge: {id: b1}\n"
                                    "transports:\n"
                                    "  - type: mqtt\n"
                                    "  - {type: mqtt, tls: {ca_file: /ca}, protocol: 5}\n"
                                    "  - {type: kafka, brokers: k:9092}\n"
                                    "  - {type: mqtt, broker: rabbitmq}\n");
    const struct qb_transport_config *t;

    (void)state;
    t = find_transport(cfg, "mqtt");
    assert_string_equal(mqtt_of(t)->host, "127.0.0.1");
    assert_int_equal(mqtt_of(t)->port, 1883);
    assert_string_equal(mqtt_of(t)->topic_prefix, "qmp");
    assert_int_equal(mqtt_of(t)->qos, 1);
    assert_int_equal(mqtt_of(t)->protocol, QB_MQTT_V5);
    assert_string_equal(mqtt_of(t)->client_id, "qmp-bridge-b1");
    assert_int_equal(mqtt_of(t)->keepalive_ms, 30000);
    assert_null(mqtt_of(t)->username);
    assert_null(mqtt_of(t)->password_file);
    assert_null(mqtt_of(t)->tls_ca_file);
    assert_false(mqtt_of(t)->tls_insecure);
    assert_int_equal(mqtt_of(t)->max_inflight, 100);
    assert_int_equal(mqtt_of(t)->reconnect_initial_ms, 500);
    assert_int_equal(mqtt_of(t)->reconnect_max_ms, 30000);
    assert_common_defaults(t);

    t = find_transport(cfg, "mqtt#2");
    assert_int_equal(mqtt_of(t)->port, 8883);
    assert_int_equal(mqtt_of(t)->protocol, QB_MQTT_V5);
    assert_int_equal(mqtt_of(t)->broker, QB_MQTT_BROKER_GENERIC);

    /* RabbitMQ's MQTT plugin speaks 3.1.1 only */
    t = find_transport(cfg, "mqtt#3");
    assert_int_equal(mqtt_of(t)->broker, QB_MQTT_BROKER_RABBITMQ);
    assert_int_equal(mqtt_of(t)->protocol, QB_MQTT_V311);
    assert_int_equal(mqtt_of(t)->qos, 1);

    t = find_transport(cfg, "kafka");
    assert_string_equal(kafka_of(t)->events_topic, "qmp.events");
    assert_string_equal(kafka_of(t)->state_topic, "qmp.state");
    assert_string_equal(kafka_of(t)->commands_topic, "qmp.commands");
    assert_int_equal(kafka_of(t)->content_mode, QB_KAFKA_STRUCTURED);
    assert_int_equal(kafka_of(t)->n_properties, 0);
    assert_no_key(t, "host");
    qb_config_free(cfg);
}

/* Default names skip names already taken, explicit or generated. */
static void test_transport_names(void **state)
{
    struct qb_config *cfg = load_ok("bridge: {id: b1}\n"
                                    "transports:\n"
                                    "  - {type: stdout}\n"
                                    "  - {type: stdout, name: 'stdout#2'}\n"
                                    "  - {type: stdout}\n"
                                    "  - {type: stdout, path: /x}\n");

    (void)state;
    assert_int_equal(cfg->n_transports, 4);
    assert_string_equal(cfg->transports[0].name, "stdout");
    assert_string_equal(cfg->transports[1].name, "stdout#2");
    assert_string_equal(cfg->transports[2].name, "stdout#3");
    assert_string_equal(cfg->transports[3].name, "stdout#4");
    qb_config_free(cfg);
}

/* The name rule's edges: 64 characters and every allowed punctuation mark. */
static void test_name_limits(void **state)
{
    struct qb_config *cfg =
        load_ok("bridge: {id: A.b_c-9}\nvms:\n  - {name: "
                "x123456789012345678901234567890123456789012345678901234567890123,"
                " qmp: 'tcp:[::1]:65535'}\n");

    (void)state;
    assert_string_equal(cfg->bridge_id, "A.b_c-9");
    assert_int_equal(strlen(cfg->vms[0].name), 64);
    assert_string_equal(cfg->vms[0].qmp, "tcp:[::1]:65535");
    qb_config_free(cfg);
}

/* Empty sections and null values keep defaults; quoted "null" is a string. */
/* Without bridge.id (no bridge section, or id: ~) the id is the host name, in client ids too. */
static void test_bridge_id_default(void **state)
{
    const char *yamls[] = {"transports:\n  - {type: mqtt}\n",
                           "bridge: {id: ~, log_level: info}\ntransports:\n  - {type: mqtt}\n"};
    char host[256] = "", client[300];

    (void)state;
    assert_int_equal(gethostname(host, sizeof(host)), 0);
    if (strlen(host) < 1 || strlen(host) > 64 ||
        strspn(host, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") !=
            strlen(host))
        skip(); /* the refusal is covered by integration_identity, in a UTS namespace */
    snprintf(client, sizeof(client), "qmp-bridge-%s", host);
    for (size_t i = 0; i < sizeof(yamls) / sizeof(yamls[0]); i++) {
        struct qb_config *cfg = load_ok(yamls[i]);

        assert_string_equal(cfg->bridge_id, host);
        assert_string_equal(mqtt_of(&cfg->transports[0])->client_id, client);
        qb_config_free(cfg);
    }
}

/* include / exclude: lists of patterns per transport, absent by default. */
static void test_transport_filters(void **state)
{
    struct qb_config *cfg = load_ok("bridge: {id: b1}\n"
                                    "transports:\n"
                                    "  - {type: kafka, brokers: k}\n"
                                    "  - type: mqtt\n"
                                    "    include: [qmp.block.io_error, qmp.vm.stopped, "
                                    "qmp.vm.state]\n"
                                    "  - type: stdout\n"
                                    "    exclude: [\"qmp.vm.*\", \"bridge.*\"]\n");

    (void)state;
    assert_int_equal(cfg->transports[0].n_include, 0);
    assert_int_equal(cfg->transports[0].n_exclude, 0);
    assert_int_equal(cfg->transports[1].n_include, 3);
    assert_string_equal(cfg->transports[1].include[2], "qmp.vm.state");
    assert_int_equal(cfg->transports[1].n_exclude, 0);
    assert_int_equal(cfg->transports[2].n_exclude, 2);
    assert_string_equal(cfg->transports[2].exclude[0], "qmp.vm.*");
    qb_config_free(cfg);
}

static void collect_warning(void *arg, const char *line)
{
    char *buf = arg;

    strncat(buf, line, 4095 - strlen(buf));
    strncat(buf, "\n", 4095 - strlen(buf));
}

/* Each start-up warning appears when its setting is risky, and not otherwise. */
static void test_config_warnings(void **state)
{
    static const struct {
        const char *yaml;
        size_t n;
        const char *needle;
    } cases[] = {
        /* commands off: nothing to say, whatever the transports */
        {"bridge: {id: b}\ntransports:\n  - {type: mqtt}\n", 0, NULL},
        /* unsigned commands on stdout only */
        {"bridge: {id: b}\ncommands: {enabled: true}\n", 1, "without commands.hmac_key_file"},
        /* unsigned, over an MQTT link without TLS and username */
        {"bridge: {id: b}\ncommands: {enabled: true}\ntransports:\n  - {type: mqtt, host: m}\n", 2,
         "transport mqtt: commands are received from m:1883 without TLS and without a username"},
        /* a username is enough to silence the transport warning */
        {"bridge: {id: b}\ncommands: {enabled: true}\ntransports:\n"
         "  - {type: mqtt, username: u}\n",
         1, "without commands.hmac_key_file"},
        /* TLS too */
        {"bridge: {id: b}\ncommands: {enabled: true}\ntransports:\n"
         "  - {type: mqtt, tls: {ca_file: /ca}}\n",
         1, "without commands.hmac_key_file"},
        /* a transport that does not take commands */
        {"bridge: {id: b}\ncommands: {enabled: true}\ntransports:\n"
         "  - {type: mqtt, commands: false}\n",
         1, "without commands.hmac_key_file"},
        /* Kafka is not MQTT */
        {"bridge: {id: b}\ncommands: {enabled: true}\ntransports:\n"
         "  - {type: kafka, brokers: k}\n",
         1, "without commands.hmac_key_file"},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct qb_config *cfg = load_ok(cases[i].yaml);
        char lines[4096] = "";
        size_t n = qb_config_warnings(cfg, collect_warning, lines);

        if (n != cases[i].n || (cases[i].needle && !strstr(lines, cases[i].needle)))
            fail_msg("case %zu: %zu warnings, want %zu with '%s':\n%s", i, n, cases[i].n,
                     cases[i].needle ? cases[i].needle : "", lines);
        qb_config_free(cfg);
    }
}

static void test_nulls_keep_defaults(void **state)
{
    struct qb_config *cfg = load_ok("bridge:\n  id: b1\n  log_level: ~\n"
                                    "qmp:\n"
                                    "vms:\n"
                                    "events: {exclude: []}\n"
                                    "discovery: {directory: 'null'}\n"
                                    "transports:\n"
                                    "  - {type: mqtt, username: null, tls: }\n");

    (void)state;
    assert_int_equal(cfg->log_level, QB_LOG_INFO);
    assert_int_equal(cfg->qmp_max_line_bytes, 16 * 1024 * 1024);
    assert_int_equal(cfg->n_vms, 0);
    assert_int_equal(cfg->n_events_exclude, 0);
    assert_string_equal(cfg->discovery_directory, "null");
    assert_null(mqtt_of(&cfg->transports[0])->username);
    assert_int_equal(mqtt_of(&cfg->transports[0])->port, 1883);
    qb_config_free(cfg);
}

/* ---- bad configs: the error catalogue ---- */

static const struct bad_config {
    const char *yaml;
    const char *message;
} bad_configs[] = {
    /* document shape */
    {"", "t.yaml:1:1: (root): the file is empty"},
    {"# only a comment\n", "t.yaml:1:1: (root): the file is empty"},
    {"- a\n- b\n", "t.yaml:1:1: (root): expected a mapping, got a list"},
    {"hello\n", "t.yaml:1:1: (root): expected a mapping, got 'hello'"},
    {"bridge: {id: a}\n---\nbridge: {id: b}\n",
     "t.yaml:2:1: (root): only one YAML document is allowed"},
    /* YAML syntax: libyaml's own words at its mark */
    {"bridge: {id: a\n", "t.yaml:2:1: bridge: YAML syntax error: did not find expected ',' or '}' "
                         "(while parsing a flow mapping at 1:9)"},
    {"bridge:\n  id: a\n   log_level: info\n",
     "t.yaml:3:13: bridge: YAML syntax error: mapping values are not allowed in this context"},
    {"bridge: {id: a}\n\xff\n",
     "t.yaml:2:1: (root): YAML syntax error: invalid leading UTF-8 octet (#FF)"},
    {"bridge: {id: \"a\\0b\"}\n", "t.yaml:1:14: bridge.id: NUL characters are not allowed"},
    /* anchors and aliases */
    {"bridge: &b {id: a}\n", "t.yaml:1:9: bridge: anchors and aliases are not supported"},
    {"bridge: {id: *x}\n", "t.yaml:1:14: bridge.id: anchors and aliases are not supported"},
    {"[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]\n",
     "t.yaml:1:17: [0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nesting is too deep"},
    /* unknown and duplicate keys */
    {"bridge: {id: a}\nbogus: 1\n", "t.yaml:2:1: bogus: unknown key"},
    {"bridge: {id: a}\nspooler: {}\n", "t.yaml:2:1: spooler: unknown key"},
    {"bridge: {id: a}\nspool: {directory: /x, max_size: 1MiB, segment_size: 512KiB}\n",
     "t.yaml:2:54: spool.segment_size: segment_size (524288 bytes) must be at most a quarter of "
     "max_size (1048576 bytes)"},
    {"bridge: {id: a}\nspool: {fsync: sometimes}\n",
     "t.yaml:2:16: spool.fsync: expected batch, always or off, got 'sometimes'"},
    {"bridge: {id: a}\nspool: {on_full: drop}\n",
     "t.yaml:2:18: spool.on_full: expected backpressure or drop_oldest, got 'drop'"},
    {"bridge: {id: a}\nspool: {max_size: 1000}\n",
     "t.yaml:2:19: spool.max_size: expected a size of at least 1048576 bytes, got '1000'"},
    {"bridge: {id: a}\nqmp: {max_connecting: 0}\n",
     "t.yaml:2:23: qmp.max_connecting: expected an integer from 1 to 100000, got '0'"},
    {"bridge: {id: a}\nqmp: {max_held_events: 8}\n",
     "t.yaml:2:24: qmp.max_held_events: expected an integer from 16 to 1000000, got '8'"},
    {"bridge: {id: a}\nqmp: {max_held_bytes: 1k}\n",
     "t.yaml:2:23: qmp.max_held_bytes: expected a size of at least 4096 bytes, got '1k'"},
    {"bridge: {id: a}\nqmp: {listen_max_vms: 0}\n",
     "t.yaml:2:23: qmp.listen_max_vms: expected an integer from 1 to 1000000, got '0'"},
    {"bridge: {id: a}\nqmp: {listen: /run/q.sock}\n",
     "t.yaml:2:15: qmp.listen: expected 'unix:/absolute/path' (at most 107 bytes of path), got "
     "'/run/q.sock'"},
    {"bridge: {id: a}\nqmp: {listen: \"unix:q.sock\"}\n",
     "t.yaml:2:15: qmp.listen: expected 'unix:/absolute/path' (at most 107 bytes of path), got "
     "'unix:q.sock'"},
    {"bridge: {id: a}\nqmp: {listen_name: uuid}\n",
     "t.yaml:2:20: qmp.listen_name: expected query-name or pid, got 'uuid'"},
    {"bridge: {id: a}\nqmp: {listen_name_template: \"vm-{name}\"}\n",
     "t.yaml:2:29: qmp.listen_name_template: expected characters from [A-Za-z0-9._-] and the "
     "placeholders {pid}, {uid} and {comm}, at most 64 characters once expanded, got 'vm-{name}'"},
    {"bridge: {id: a}\nqmp: {listen_name_template: \"vm {pid}\"}\n",
     "t.yaml:2:29: qmp.listen_name_template: expected characters from [A-Za-z0-9._-] and the "
     "placeholders {pid}, {uid} and {comm}, at most 64 characters once expanded, got 'vm {pid}'"},
    {"bridge: {id: a}\nqmp: {listen_name_template: "
     "\"a-very-long-prefix-for-every-vm-of-this-host-{comm}-{pid}\"}\n",
     "t.yaml:2:29: qmp.listen_name_template: expected characters from [A-Za-z0-9._-] and the "
     "placeholders {pid}, {uid} and {comm}, at most 64 characters once expanded, got "
     "'a-very-long-prefix-for-every-vm-of-this-host-{comm}-{pid}'"},
    {"bridge: {id: a, colour: red}\n", "t.yaml:1:17: bridge.colour: unknown key"},
    {"bridge: {id: a}\n[a]: b\n", "t.yaml:2:1: (root): mapping keys must be scalars"},
    {"bridge: {id: a, id: b}\n", "t.yaml:1:17: bridge.id: duplicate key (first at 1:10)"},
    {"bridge:\n  id: a\n  id: b\n", "t.yaml:3:3: bridge.id: duplicate key (first at 2:3)"},
    {"bridge: {id: a}\nqmp: {}\nqmp: {}\n", "t.yaml:3:1: qmp: duplicate key (first at 2:1)"},
    /* required values */
    {"bridge: {id: a}\nvms:\n  - {qmp: 'unix:/a'}\n",
     "t.yaml:3:5: vms[0].name: missing required key"},
    {"bridge: {id: a}\nvms:\n  - {name: v}\n", "t.yaml:3:5: vms[0].qmp: missing required key"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka}\n",
     "t.yaml:3:5: transports[0].brokers: missing required key"},
    {"bridge: {id: a}\ntransports:\n  - {name: x}\n",
     "t.yaml:3:5: transports[0].type: missing required key"},
    {"bridge: {id: a}\ntransports:\n  - {type: }\n",
     "t.yaml:3:12: transports[0].type: missing required value"},
    {"bridge: {id: a}\ntransports: []\n",
     "t.yaml:2:13: transports: at least one transport is required"},
    /* wrong types */
    {"bridge: {id: a}\nqmp: 5\n", "t.yaml:2:6: qmp: expected a mapping, got '5'"},
    {"bridge: {id: a}\nvms: {name: vm1}\n", "t.yaml:2:6: vms: expected a list, got a mapping"},
    {"bridge: {id: [a]}\n", "t.yaml:1:14: bridge.id: expected a string, got a list"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, host: {a: b}}\n",
     "t.yaml:3:24: transports[0].host: expected a string, got a mapping"},
    {"bridge: {id: a}\ntransports:\n  - mqtt\n",
     "t.yaml:3:5: transports[0]: expected a mapping, got 'mqtt'"},
    {"bridge: {id: a}\ntransports:\n  - {type: [mqtt]}\n",
     "t.yaml:3:12: transports[0].type: expected stdout, mqtt or kafka, got a list"},
    {"bridge: {id: a}\nevents: {exclude: RTC_CHANGE}\n",
     "t.yaml:2:19: events.exclude: expected a list, got 'RTC_CHANGE'"},
    {"bridge: {id: a}\nevents: {exclude: [[a]]}\n",
     "t.yaml:2:20: events.exclude[0]: expected an event name, got a list"},
    /* per-transport filters */
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, include: []}\n",
     "t.yaml:3:29: transports[0].include: an empty list: leave the key out instead"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, exclude: []}\n",
     "t.yaml:3:29: transports[0].exclude: an empty list: leave the key out instead"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, include: qmp.*}\n",
     "t.yaml:3:29: transports[0].include: expected a list, got 'qmp.*'"},
    {"bridge: {id: a}\ntransports:\n  - type: mqtt\n    exclude:\n      - qmp.vm.*\n"
     "      - [qmp.block.io_error]\n",
     "t.yaml:6:9: transports[0].exclude[1]: expected an event type pattern, got a list"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: k, include: [\"qmp vm\"]}\n",
     "t.yaml:3:41: transports[0].include[0]: expected an event type pattern (1 to 128 "
     "characters from [A-Za-z0-9._-] and the wildcards * ? [...]), got 'qmp vm'"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: x, properties: {a: [1]}}\n",
     "t.yaml:3:47: transports[0].properties.a: expected a scalar value, got a list"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: x, properties: {a: 1, a: 2}}\n",
     "t.yaml:3:50: transports[0].properties.a: duplicate key (first at 3:44)"},
    /* numbers */
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, port: abc}\n",
     "t.yaml:3:24: transports[0].port: expected an integer, got 'abc'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, port: -1}\n",
     "t.yaml:3:24: transports[0].port: expected a non-negative value, got '-1'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, port: 0}\n",
     "t.yaml:3:24: transports[0].port: expected an integer from 1 to 65535, got '0'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, port: 65536}\n",
     "t.yaml:3:24: transports[0].port: expected an integer from 1 to 65535, got '65536'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, max_inflight: 0}\n",
     "t.yaml:3:32: transports[0].max_inflight: expected an integer from 1 to 65535, got '0'"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, queue_max_messages: "
     "99999999999999999999999}\n",
     "t.yaml:3:40: transports[0].queue_max_messages: expected an integer of at most "
     "18446744073709551615, got '99999999999999999999999'"},
    {"bridge: {id: a}\nqmp: {max_line_bytes: 512}\n",
     "t.yaml:2:23: qmp.max_line_bytes: expected a size of at least 1024 bytes, got '512'"},
    {"bridge: {id: a}\nqmp: {max_line_bytes: 1.5MiB}\n",
     "t.yaml:2:23: qmp.max_line_bytes: expected a size such as 4096, 64KiB or 16MiB, got '1.5MiB'"},
    {"bridge: {id: a}\nqmp: {command_timeout: -1s}\n",
     "t.yaml:2:24: qmp.command_timeout: expected a non-negative value, got '-1s'"},
    {"bridge: {id: a}\nqmp: {command_timeout: abc}\n",
     "t.yaml:2:24: qmp.command_timeout: expected a duration such as 250ms, 30s, 5m or 2h, got "
     "'abc'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, keepalive: 100000s}\n",
     "t.yaml:3:29: transports[0].keepalive: expected a duration from 0ms to 65535000ms, got "
     "'100000s'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, tls: {ca_file: a, insecure: maybe}}\n",
     "t.yaml:3:46: transports[0].tls.insecure: expected true or false, got 'maybe'"},
    /* enums */
    {"bridge: {id: a, log_level: loud}\n",
     "t.yaml:1:28: bridge.log_level: expected error, warn, warning, info or debug, got 'loud'"},
    {"bridge: {id: a, log_format: syslog}\n",
     "t.yaml:1:29: bridge.log_format: expected auto, text, json or journal, got 'syslog'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, qos: three}\n",
     "t.yaml:3:23: transports[0].qos: expected 0, 1 or 2, got 'three'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, qos: 3}\n",
     "t.yaml:3:23: transports[0].qos: expected 0, 1 or 2, got '3'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, protocol: 4}\n",
     "t.yaml:3:28: transports[0].protocol: expected 5 or 3.1.1, got '4'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, broker: activemq}\n",
     "t.yaml:3:26: transports[0].broker: expected generic or rabbitmq, got 'activemq'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, broker: rabbitmq, qos: 2}\n",
     "t.yaml:3:41: transports[0].qos: RabbitMQ's MQTT plugin does not honour QoS 2 (it answers "
     "PUBACK and never confirms): use 1"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, broker: rabbitmq, protocol: '5'}\n",
     "t.yaml:3:46: transports[0].protocol: RabbitMQ's MQTT plugin speaks MQTT 3.1.1 only: use "
     "\"3.1.1\" (the default with broker: rabbitmq)"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, on_full: block}\n",
     "t.yaml:3:29: transports[0].on_full: expected backpressure or drop, got 'block'"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: x, content_mode: avro}\n",
     "t.yaml:3:45: transports[0].content_mode: expected structured or binary, got 'avro'"},
    {"bridge: {id: a}\ntransports:\n  - {type: carrier-pigeon}\n",
     "t.yaml:3:12: transports[0].type: unknown transport type 'carrier-pigeon' (expected stdout, "
     "mqtt "
     "or kafka)"},
    /* keys of another transport type */
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, host: x}\n",
     "t.yaml:3:20: transports[0].host: unknown key (not valid for type stdout)"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, path: /x}\n",
     "t.yaml:3:18: transports[0].path: unknown key (not valid for type mqtt)"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: x, qos: 1}\n",
     "t.yaml:3:31: transports[0].qos: unknown key (not valid for type kafka)"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, tls: {ca_file: a, verify: no}}\n",
     "t.yaml:3:36: transports[0].tls.verify: unknown key"},
    /* names and addresses */
    {"bridge: {id: 'bad id'}\n",
     "t.yaml:1:14: bridge.id: expected 1 to 64 characters from [A-Za-z0-9._-], got 'bad id'"},
    {"bridge: {id: ''}\n",
     "t.yaml:1:14: bridge.id: expected 1 to 64 characters from [A-Za-z0-9._-], got ''"},
    {"bridge: {id: a}\nvms:\n  - {name: "
     "x12345678901234567890123456789012345678901234567890123456789012345, qmp: 'unix:/a'}\n",
     "t.yaml:3:12: vms[0].name: expected 1 to 64 characters from [A-Za-z0-9._-], got "
     "'x123456789012345678901234567890123456789012345678901234567890123...'"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: 'unix:/a'}\n  - {name: vm1, qmp: 'unix:/b'}\n",
     "t.yaml:4:12: vms[1].name: duplicate VM name 'vm1' (also vms[0] at t.yaml:3:12)"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: 'unix:'}\n",
     "t.yaml:3:22: vms[0].qmp: expected 'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535), got "
     "'unix:'"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: 'tcp:h:0'}\n",
     "t.yaml:3:22: vms[0].qmp: expected 'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535), got "
     "'tcp:h:0'"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: 'tcp:h:70000'}\n",
     "t.yaml:3:22: vms[0].qmp: expected 'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535), got "
     "'tcp:h:70000'"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: 'tcp::4444'}\n",
     "t.yaml:3:22: vms[0].qmp: expected 'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535), got "
     "'tcp::4444'"},
    {"bridge: {id: a}\nvms:\n  - {name: vm1, qmp: /run/x}\n",
     "t.yaml:3:22: vms[0].qmp: expected 'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535), got "
     "'/run/x'"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, name: x}\n  - {type: mqtt, name: x}\n",
     "t.yaml:4:24: transports[1].name: duplicate transport name 'x' (also transports[0] at "
     "t.yaml:3:26)"},
    /* commands: */
    {"bridge: {id: a}\ncommands: {enabled: maybe}\n",
     "t.yaml:2:21: commands.enabled: expected true or false, got 'maybe'"},
    {"bridge: {id: a}\ncommands: {allow: [cont, reboot]}\n",
     "t.yaml:2:26: commands.allow[1]: expected a command name such as resize-and-cont, got "
     "'reboot'"},
    {"bridge: {id: a}\ncommands: {allow: [[cont]]}\n",
     "t.yaml:2:20: commands.allow[0]: expected a command name such as resize-and-cont, got a "
     "list"},
    {"bridge: {id: a}\ncommands: {allow: cont}\n",
     "t.yaml:2:19: commands.allow: expected a list, got 'cont'"},
    {"bridge: {id: a}\ncommands: {max_size: 10TB}\n",
     "t.yaml:2:22: commands.max_size: expected a size such as 4096, 64KiB or 16MiB, got '10TB'"},
    {"bridge: {id: a}\ncommands: {max_growth: -1G}\n",
     "t.yaml:2:24: commands.max_growth: expected a non-negative value, got '-1G'"},
    {"bridge: {id: a}\ncommands: {max_age: 999ms}\n",
     "t.yaml:2:21: commands.max_age: expected a duration of at least 1000ms, got '999ms'"},
    {"bridge: {id: a}\ncommands: {max_skew: soon}\n",
     "t.yaml:2:22: commands.max_skew: expected a duration such as 250ms, 30s, 5m or 2h, got "
     "'soon'"},
    {"bridge: {id: a}\ncommands: {max_message_bytes: 100}\n",
     "t.yaml:2:31: commands.max_message_bytes: expected a size from 256 bytes to 16777216 bytes, "
     "got '100'"},
    {"bridge: {id: a}\ncommands: {cache_size: 0}\n",
     "t.yaml:2:24: commands.cache_size: expected an integer of at least 1, got '0'"},
    {"bridge: {id: a}\ncommands: {queue_per_vm: 1k}\n",
     "t.yaml:2:26: commands.queue_per_vm: expected an integer, got '1k'"},
    {"bridge: {id: a}\ncommands: {timeout: 0}\n",
     "t.yaml:2:21: commands.timeout: expected a duration of at least 1ms, got '0'"},
    {"bridge: {id: a}\ncommands: {hmac_key_file: ''}\n",
     "t.yaml:2:27: commands.hmac_key_file: expected a non-empty string, got ''"},
    {"bridge: {id: a}\ncommands: {hmac_key_file: /nonexistent/key}\n",
     "t.yaml:2:27: commands.hmac_key_file: cannot read '/nonexistent/key': No such file or "
     "directory"},
    {"bridge: {id: a}\ncommands: {hmac_key: x}\n", "t.yaml:2:12: commands.hmac_key: unknown key"},
    {"bridge: {id: a}\ncommands: [enabled]\n",
     "t.yaml:2:11: commands: expected a mapping, got a list"},
    /* transport keys for commands */
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, commands: sometimes}\n",
     "t.yaml:3:28: transports[0].commands: expected true or false, got 'sometimes'"},
    {"bridge: {id: a}\ntransports:\n  - {type: stdout, commands: true}\n",
     "t.yaml:3:20: transports[0].commands: unknown key (not valid for type stdout)"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, session_expiry: 1500ms}\n",
     "t.yaml:3:34: transports[0].session_expiry: expected a whole number of seconds, got '1500ms'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, session_expiry: forever}\n",
     "t.yaml:3:34: transports[0].session_expiry: expected a duration such as 250ms, 30s, 5m or 2h, "
     "got 'forever'"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, session_expiry: [1s]}\n",
     "t.yaml:3:34: transports[0].session_expiry: expected a duration, got a list"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: k, session_expiry: 1h}\n",
     "t.yaml:3:31: transports[0].session_expiry: unknown key (not valid for type kafka)"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, group_id: g}\n",
     "t.yaml:3:18: transports[0].group_id: unknown key (not valid for type mqtt)"},
    {"bridge: {id: a}\ntransports:\n  - {type: kafka, brokers: k, group_id: ''}\n",
     "t.yaml:3:41: transports[0].group_id: expected a non-empty string, got ''"},
    /* cross-key checks */
    {"bridge: {id: a}\nqmp: {reconnect_initial: 1m, reconnect_max: 30s}\n",
     "t.yaml:2:26: qmp.reconnect_initial: must not be greater than reconnect_max (60000ms > "
     "30000ms)"},
    {"bridge: {id: a}\nqmp: {reconnect_max: 100ms}\n",
     "t.yaml:2:6: qmp.reconnect_initial: must not be greater than reconnect_max (250ms > 100ms)"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, reconnect_initial: 1m}\n",
     "t.yaml:3:37: transports[0].reconnect_initial: must not be greater than reconnect_max "
     "(60000ms > "
     "30000ms)"},
    /* libvirt: */
    {"bridge: {id: a}\nlibvirt: {uri: 'xen:///system'}\n",
     "t.yaml:2:16: libvirt.uri: expected a libvirt URI of the QEMU driver such as "
     "\"qemu:///system\" (at most 1024 characters), got 'xen:///system'"},
    {"bridge: {id: a}\nlibvirt: {uri: \"qemu:///system\\n\"}\n",
     "t.yaml:2:16: libvirt.uri: expected a libvirt URI without spaces or control characters, "
     "got 'qemu:///system?'"},
    {"bridge: {id: a}\nlibvirt: {include: []}\n",
     "t.yaml:2:20: libvirt.include: an empty list: leave the key out instead"},
    {"bridge: {id: a}\nlibvirt: {exclude: ['a b']}\n",
     "t.yaml:2:21: libvirt.exclude[0]: expected a domain-name glob (1 to 128 characters from "
     "[A-Za-z0-9._-] and the wildcards * ? [...]), got 'a b'"},
    {"bridge: {id: a}\nlibvirt: {keepalive_interval: 100ms}\n",
     "t.yaml:2:31: libvirt.keepalive_interval: expected a duration from 1000ms to 3600000ms, got "
     "'100ms'"},
    {"bridge: {id: a}\nlibvirt: {socket: /run/x}\n", "t.yaml:2:11: libvirt.socket: unknown key"},
    {"bridge: {id: a}\ntransports:\n  - {type: mqtt, tls: {cert_file: a}}\n",
     "t.yaml:3:23: transports[0].tls.key_file: missing required key (cert_file and key_file go "
     "together)"},
};

static void test_bad_configs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_configs) / sizeof(bad_configs[0]); i++) {
        const struct bad_config *bc = &bad_configs[i];
        struct qb_config *cfg = (struct qb_config *)1;
        char err[512] = "";
        int rc =
            qb_config_load_string("t.yaml", bc->yaml, strlen(bc->yaml), &cfg, err, sizeof(err));

        if (rc != QB_ECONFIG || strcmp(err, bc->message) != 0)
            fail_msg("case %zu (%s):\n  rc %d\n  got      \"%s\"\n  expected \"%s\"", i, bc->yaml,
                     rc, err, bc->message);
        assert_null(cfg);
    }
}

/* The classic exponential-alias input must be refused at the first anchor, not expanded. */
static void test_billion_laughs(void **state)
{
    static const char yaml[] =
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "bridge: {id: *d}\n";
    struct qb_config *cfg = NULL;
    char err[256];

    (void)state;
    assert_int_equal(qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
                     QB_ECONFIG);
    assert_string_equal(err, "t.yaml:1:4: a: anchors and aliases are not supported");
    assert_null(cfg);
}

/* A tiny errbuf gets a truncated, terminated message; a NULL one is allowed. */
static void test_errbuf_truncation(void **state)
{
    static const char yaml[] = "bridge: {id: a}\nbogus: 1\n";
    struct qb_config *cfg = NULL;
    char err[12];

    (void)state;
    memset(err, 'x', sizeof(err));
    assert_int_equal(qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
                     QB_ECONFIG);
    assert_string_equal(err, "t.yaml:2:1:");
    assert_int_equal(qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, NULL, 0),
                     QB_ECONFIG);
    assert_null(cfg);
}

/* Control characters in a quoted value must not break the one-line message. */
static void test_message_sanitised(void **state)
{
    static const char yaml[] = "bridge: {id: \"a\\nb\"}\n";
    struct qb_config *cfg = NULL;
    char err[256];

    (void)state;
    assert_int_equal(qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
                     QB_ECONFIG);
    assert_string_equal(
        err, "t.yaml:1:14: bridge.id: expected 1 to 64 characters from [A-Za-z0-9._-], got 'a?b'");
}

static void test_too_large(void **state)
{
    size_t len = 1024 * 1024 + 1;
    char *big = malloc(len + 1);
    char path[] = "/tmp/qb-test-config-XXXXXX";
    struct qb_config *cfg = NULL;
    char err[256];
    int fd;

    (void)state;
    assert_non_null(big);
    /* valid YAML, only too long: a comment padded out after a good config */
    memset(big, ' ', len);
    memcpy(big, "bridge: {id: a}\n#", 17);
    big[len] = '\0';
    assert_int_equal(qb_config_load_string("t.yaml", big, len, &cfg, err, sizeof(err)), QB_ECONFIG);
    assert_string_equal(err, "t.yaml:1:1: (root): the file is larger than 1048576 bytes");
    /* one byte less is fine */
    assert_int_equal(qb_config_load_string("t.yaml", big, len - 1, &cfg, err, sizeof(err)), QB_OK);
    qb_config_free(cfg);

    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, big, len), (ssize_t)len);
    close(fd);
    assert_int_equal(qb_config_load_file(path, &cfg, err, sizeof(err)), QB_ECONFIG);
    assert_true(strstr(err, ": (root): the file is larger than 1048576 bytes") != NULL);
    assert_null(cfg);
    unlink(path);
    free(big);
}

static void test_load_file_errors(void **state)
{
    struct qb_config *cfg = (struct qb_config *)1;
    char err[256];

    (void)state;
    assert_int_equal(qb_config_load_file("/nonexistent/qb.yaml", &cfg, err, sizeof(err)), QB_EIO);
    assert_string_equal(err, "/nonexistent/qb.yaml: cannot read: No such file or directory");
    assert_null(cfg);
    assert_int_equal(qb_config_load_file("/", &cfg, err, sizeof(err)), QB_EIO);
    assert_string_equal(err, "/: cannot read: Is a directory");
    assert_null(cfg);
}

/* ---- value syntax ---- */

/* ---- commands: ---- */

static void test_commands_defaults(void **state)
{
    struct qb_config *cfg = load_ok("bridge: {id: b1}\n"
                                    "transports:\n"
                                    "  - {type: stdout}\n"
                                    "  - {type: mqtt}\n"
                                    "  - {type: mqtt, session_expiry: ~}\n"
                                    "  - {type: kafka, brokers: 'k:9092'}\n");

    (void)state;
    assert_false(cfg->commands.enabled);
    assert_int_equal(cfg->commands.allow_mask, (1u << QB_CMD__COUNT) - 1);
    assert_int_equal(cfg->commands.max_size, 0);
    assert_int_equal(cfg->commands.max_growth, 0);
    assert_int_equal(cfg->commands.max_age_ms, 5 * 60 * 1000);
    assert_int_equal(cfg->commands.max_skew_ms, 60 * 1000);
    assert_int_equal(cfg->commands.max_message_bytes, 64 * 1024);
    assert_null(cfg->commands.hmac_key);
    assert_int_equal(cfg->commands.hmac_key_len, 0);
    assert_null(cfg->commands_hmac_key_file);
    assert_null(cfg->commands_hmac_key);
    assert_int_equal(cfg->commands_cache_size, 10000);
    assert_int_equal(cfg->commands_queue_per_vm, 16);
    assert_int_equal(cfg->commands_timeout_ms, 60000);

    assert_false(cfg->transports[0].commands); /* not a key of stdout */
    assert_true(cfg->transports[1].commands);
    assert_int_equal(mqtt_of(&cfg->transports[1])->session_expiry_s, 3600);
    assert_no_key(&cfg->transports[1], "group_id");
    assert_int_equal(mqtt_of(&cfg->transports[2])->session_expiry_s, 3600);
    assert_true(cfg->transports[3].commands);
    assert_string_equal(kafka_of(&cfg->transports[3])->group_id, "qmp-bridge.b1");
    assert_no_key(&cfg->transports[3], "session_expiry");
    qb_config_free(cfg);

    /* an empty section and an empty allow list: nothing allowed is not the default */
    cfg = load_ok("bridge: {id: b1}\ncommands:\n");
    assert_int_equal(cfg->commands.allow_mask, (1u << QB_CMD__COUNT) - 1);
    qb_config_free(cfg);
    cfg = load_ok("bridge: {id: b1}\ncommands: {allow: ~}\n");
    assert_int_equal(cfg->commands.allow_mask, (1u << QB_CMD__COUNT) - 1);
    qb_config_free(cfg);
    cfg = load_ok("bridge: {id: b1}\ncommands: {allow: []}\n");
    assert_int_equal(cfg->commands.allow_mask, 0);
    qb_config_free(cfg);
}

/* Writes content to a new temporary file; path must be a mkstemp template. */
static void write_temp(char *path, const char *content, size_t len)
{
    int fd = mkstemp(path);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
}

static void test_commands_every_key(void **state)
{
    char key_path[] = "/tmp/qb-test-key-XXXXXX", yaml[1024];
    struct qb_config *cfg;

    (void)state;
    write_temp(key_path, "0123456789abcdef\n", 17);
    snprintf(yaml, sizeof(yaml),
             "bridge: {id: b1}\n"
             "commands:\n"
             "  enabled: yes\n"
             "  allow: [cont, resize-and-cont, query-state]\n"
             "  max_size: 100GiB\n"
             "  max_growth: 10G\n"
             "  max_age: 2m\n"
             "  max_skew: 5s\n"
             "  max_message_bytes: 4KiB\n"
             "  hmac_key_file: %s\n"
             "  cache_size: 50\n"
             "  queue_per_vm: 2\n"
             "  timeout: 90s\n"
             "transports:\n"
             "  - {type: mqtt, commands: false, session_expiry: 2m}\n"
             "  - {type: kafka, brokers: k, commands: off, group_id: grp}\n",
             key_path);
    cfg = load_ok(yaml);
    assert_true(cfg->commands.enabled);
    assert_int_equal(cfg->commands.allow_mask, (1u << QB_CMD_CONT) |
                                                   (1u << QB_CMD_RESIZE_AND_CONT) |
                                                   (1u << QB_CMD_QUERY_STATE));
    assert_int_equal(cfg->commands.max_size, 100ULL << 30);
    assert_int_equal(cfg->commands.max_growth, 10ULL << 30);
    assert_int_equal(cfg->commands.max_age_ms, 120000);
    assert_int_equal(cfg->commands.max_skew_ms, 5000);
    assert_int_equal(cfg->commands.max_message_bytes, 4096);
    assert_string_equal(cfg->commands_hmac_key_file, key_path);
    /* one trailing newline is stripped; the policy points at the config's copy */
    assert_int_equal(cfg->commands.hmac_key_len, 16);
    assert_memory_equal(cfg->commands.hmac_key, "0123456789abcdef", 16);
    assert_ptr_equal(cfg->commands.hmac_key, cfg->commands_hmac_key);
    assert_int_equal(cfg->commands_cache_size, 50);
    assert_int_equal(cfg->commands_queue_per_vm, 2);
    assert_int_equal(cfg->commands_timeout_ms, 90000);
    assert_false(cfg->transports[0].commands);
    assert_int_equal(mqtt_of(&cfg->transports[0])->session_expiry_s, 120);
    assert_false(cfg->transports[1].commands);
    assert_string_equal(kafka_of(&cfg->transports[1])->group_id, "grp");
    qb_config_free(cfg);
    unlink(key_path);
}

/* The key file's failure modes, each named at the key's position. */
static void test_commands_key_file(void **state)
{
    static const struct {
        const char *content;
        size_t len;
        const char *what; /* expected message after "<path>" */
    } cases[] = {
        {"", 0, "' is empty"},
        {"\n", 1, "' is empty"},
        {"0123456789abcde\n", 16, "' is 15 bytes; at least 16 are required"},
        {"0123456789abcde", 15, "' is 15 bytes; at least 16 are required"},
    };
    char yaml[256], err[512], expected[512];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char key_path[] = "/tmp/qb-test-key-XXXXXX";
        struct qb_config *cfg = (struct qb_config *)1;

        write_temp(key_path, cases[i].content, cases[i].len);
        snprintf(yaml, sizeof(yaml), "bridge: {id: b1}\ncommands:\n  hmac_key_file: %s\n",
                 key_path);
        assert_int_equal(
            qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
            QB_ECONFIG);
        assert_null(cfg);
        snprintf(expected, sizeof(expected), "t.yaml:3:18: commands.hmac_key_file: %s%s%s",
                 strstr(cases[i].what, "bytes") ? "the key in '" : "'", key_path, cases[i].what);
        assert_string_equal(err, expected);
        unlink(key_path);
    }
    {
        /* a directory cannot be read; a key with two trailing newlines keeps one */
        char key_path[] = "/tmp/qb-test-key-XXXXXX";
        struct qb_config *cfg = NULL;

        snprintf(yaml, sizeof(yaml), "bridge: {id: b1}\ncommands: {hmac_key_file: /}\n");
        assert_int_equal(
            qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
            QB_ECONFIG);
        assert_string_equal(err, "t.yaml:2:27: commands.hmac_key_file: cannot read '/': Is a "
                                 "directory");
        write_temp(key_path, "0123456789abcdef\n\n", 18);
        snprintf(yaml, sizeof(yaml), "bridge: {id: b1}\ncommands: {hmac_key_file: %s}\n", key_path);
        cfg = load_ok(yaml);
        assert_int_equal(cfg->commands.hmac_key_len, 17);
        qb_config_free(cfg);
        unlink(key_path);
    }
}

/* The shipped example documents every commands: key with its default value. */
static void test_example_commands(void **state)
{
    char err[512] = "";
    struct qb_config *cfg = NULL;
    const struct qb_transport_config *t;

    (void)state;
    if (qb_config_load_file(QB_SOURCE_DIR "/conf/qmp-bridge.example.yaml", &cfg, err,
                            sizeof(err)) != QB_OK)
        fail_msg("%s", err);
    assert_false(cfg->commands.enabled);
    assert_int_equal(cfg->commands.allow_mask, (1u << QB_CMD__COUNT) - 1);
    assert_int_equal(cfg->commands.max_size, 0);
    assert_int_equal(cfg->commands.max_growth, 0);
    assert_int_equal(cfg->commands.max_age_ms, 300000);
    assert_int_equal(cfg->commands.max_skew_ms, 60000);
    assert_int_equal(cfg->commands.max_message_bytes, 65536);
    assert_null(cfg->commands.hmac_key);
    assert_int_equal(cfg->commands_cache_size, 10000);
    assert_int_equal(cfg->commands_queue_per_vm, 16);
    assert_int_equal(cfg->commands_timeout_ms, 60000);
    t = find_transport(cfg, "mybus");
    assert_true(t->commands);
    assert_int_equal(mqtt_of(t)->session_expiry_s, 3600);
    t = find_transport(cfg, "kafka");
    assert_true(t->commands);
    assert_string_equal(kafka_of(t)->group_id, "qmp-bridge.host-a");
    qb_config_free(cfg);
}

/* The listen-mode name template: each placeholder, and what makes a result unusable. */
/* libvirt: off by default; every key read; include's default (all) is no list. */
static void test_libvirt_section(void **state)
{
    static const char yaml[] = "bridge: {id: a}\n"
                               "libvirt:\n"
                               "  uri: \"qemu:///system?socket=/run/x/libvirt-sock\"\n"
                               "  include: [\"nova-*\", \"instance-0000[0-9]*\"]\n"
                               "  exclude: [\"*-test\"]\n"
                               "  keepalive_interval: 10s\n"
                               "  keepalive_count: 6\n"
        "  forget_after: 0\n";
    struct qb_config *cfg = NULL;
    char err[512] = "";

    (void)state;
    assert_int_equal(
        qb_config_load_string("t.yaml", "bridge: {id: a}\n", 16, &cfg, err, sizeof(err)), QB_OK);
    assert_null(cfg->libvirt_uri);
    assert_int_equal(cfg->n_libvirt_include, 0);
    assert_int_equal(cfg->n_libvirt_exclude, 0);
    assert_int_equal(cfg->libvirt_keepalive_interval_ms, 5000);
    assert_int_equal(cfg->libvirt_keepalive_count, 3);
    assert_int_equal(cfg->libvirt_forget_after_ms, 3600 * 1000);
    qb_config_free(cfg);
    if (qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)) != QB_OK)
        fail_msg("%s", err);
    assert_string_equal(cfg->libvirt_uri, "qemu:///system?socket=/run/x/libvirt-sock");
    assert_int_equal(cfg->n_libvirt_include, 2);
    assert_string_equal(cfg->libvirt_include[1], "instance-0000[0-9]*");
    assert_int_equal(cfg->n_libvirt_exclude, 1);
    assert_string_equal(cfg->libvirt_exclude[0], "*-test");
    assert_int_equal(cfg->libvirt_keepalive_interval_ms, 10000);
    assert_int_equal(cfg->libvirt_keepalive_count, 6);
    assert_int_equal(cfg->libvirt_forget_after_ms, 0);
    qb_config_free(cfg);
}

static void test_listen_name(void **state)
{
    char name[80];

    (void)state;
    assert_int_equal(qb_config_listen_name("vm-{pid}", 4242, 0, "x", name, sizeof(name)), QB_OK);
    assert_string_equal(name, "vm-4242");
    assert_int_equal(
        qb_config_listen_name("{comm}.{uid}_{pid}", 7, 1000, "qemu-system-x86", name, sizeof(name)),
        QB_OK);
    assert_string_equal(name, "qemu-system-x86.1000_7");
    assert_int_equal(qb_config_listen_name("vm-{pid", 1, 0, "", name, sizeof(name)), QB_EINVAL);
    assert_int_equal(qb_config_listen_name("vm/{pid}", 1, 0, "", name, sizeof(name)), QB_EINVAL);
    assert_int_equal(qb_config_listen_name("{comm}", 1, 0, "", name, sizeof(name)), QB_EINVAL);
    assert_int_equal(qb_config_listen_name("vm-{pid}", 123456, 0, "", name, 8), QB_EINVAL);
    assert_int_equal(qb_config_listen_name("vm-{pid}", 12345, 0, "", name, 9), QB_OK);
}

static void test_parse_size(void **state)
{
    static const struct {
        const char *text;
        int rc;
        size_t value;
    } cases[] = {
        {"0", QB_OK, 0},
        {"1024", QB_OK, 1024},
        {"007", QB_OK, 7},
        {"10B", QB_OK, 10},
        {"64k", QB_OK, 65536},
        {"64K", QB_OK, 65536},
        {"64KiB", QB_OK, 65536},
        {"16M", QB_OK, 16777216},
        {"16MiB", QB_OK, 16777216},
        {"16 MiB", QB_OK, 16777216},
        {"2G", QB_OK, 2147483648u},
        {"2GiB", QB_OK, 2147483648u},
        {"18446744073709551615", QB_OK, SIZE_MAX},
        {"18446744073709551616", QB_EINVAL, 0},
        {"17179869184GiB", QB_EINVAL, 0}, /* 2^34 GiB = 2^64: overflows in the multiply */
        {"", QB_EINVAL, 0},
        {"-1", QB_EINVAL, 0},
        {"+1", QB_EINVAL, 0},
        {" 1", QB_EINVAL, 0},
        {"1 ", QB_EINVAL, 0},
        {"1.5M", QB_EINVAL, 0},
        {"MiB", QB_EINVAL, 0},
        {"16mib", QB_EINVAL, 0},
        {"16KB", QB_EINVAL, 0},
        {"16MiBs", QB_EINVAL, 0},
        {"0x10", QB_EINVAL, 0},
    };

    (void)state;
    assert_int_equal(qb_config_parse_size(NULL, &(size_t){0}), QB_EINVAL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t v = 12345;
        int rc = qb_config_parse_size(cases[i].text, &v);

        if (rc != cases[i].rc)
            fail_msg("'%s': rc %d, expected %d", cases[i].text, rc, cases[i].rc);
        if (rc == QB_OK && v != cases[i].value)
            fail_msg("'%s': %zu, expected %zu", cases[i].text, v, cases[i].value);
        if (rc != QB_OK && v != 12345)
            fail_msg("'%s': output written on failure", cases[i].text);
    }
}

static void test_parse_duration(void **state)
{
    static const struct {
        const char *text;
        int rc;
        uint32_t value;
    } cases[] = {
        {"0", QB_OK, 0},
        {"250", QB_OK, 250},
        {"250ms", QB_OK, 250},
        {"30s", QB_OK, 30000},
        {"5m", QB_OK, 300000},
        {"2h", QB_OK, 7200000},
        {"4294967295", QB_OK, UINT32_MAX},
        {"4294967295ms", QB_OK, UINT32_MAX},
        {"4294967296", QB_EINVAL, 0},
        {"4294968s", QB_EINVAL, 0},
        {"1194h", QB_EINVAL, 0},
        {"99999999999999999999999h", QB_EINVAL, 0},
        {"", QB_EINVAL, 0},
        {"-1", QB_EINVAL, 0},
        {"-5s", QB_EINVAL, 0},
        {"1.5s", QB_EINVAL, 0},
        {"s", QB_EINVAL, 0},
        {"10S", QB_EINVAL, 0},
        {"10 sec", QB_EINVAL, 0},
        {"1d", QB_EINVAL, 0},
        {"10us", QB_EINVAL, 0},
    };

    (void)state;
    assert_int_equal(qb_config_parse_duration_ms(NULL, &(uint32_t){0}), QB_EINVAL);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t v = 12345;
        int rc = qb_config_parse_duration_ms(cases[i].text, &v);

        if (rc != cases[i].rc)
            fail_msg("'%s': rc %d, expected %d", cases[i].text, rc, cases[i].rc);
        if (rc == QB_OK && v != cases[i].value)
            fail_msg("'%s': %u, expected %u", cases[i].text, v, cases[i].value);
        if (rc != QB_OK && v != 12345)
            fail_msg("'%s': output written on failure", cases[i].text);
    }
}

/*
 * Secret files others can read or change are refused at their key, naming the file and its
 * mode; a group-readable one loads (with a warning); a missing MQTT password file is left to
 * the transport's start, which names it.
 */
static void test_secret_file_modes(void **state)
{
    static const struct {
        const char *before, *after; /* the YAML around the file's path */
        const char *where;          /* expected "t.yaml:L:C: key" */
    } keys[] = {
        {"bridge: {id: b1}\ncommands:\n  hmac_key_file: ", "\n",
         "t.yaml:3:18: commands.hmac_key_file"},
        {"bridge: {id: b1}\ntransports:\n  - {type: mqtt, password_file: ", "}\n",
         "t.yaml:3:33: transports[0].password_file"},
        {"bridge: {id: b1}\ntransports:\n  - {type: mqtt, tls: {cert_file: c, key_file: ", "}}\n",
         "t.yaml:3:48: transports[0].tls.key_file"},
        {"bridge: {id: b1}\ntransports:\n  - {type: kafka, brokers: k, properties: "
         "{ssl.key.location: ",
         "}}\n", "t.yaml:3:62: transports[0].properties.ssl.key.location"},
    };
    char yaml[512], err[512], expected[512];

    (void)state;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char path[] = "/tmp/qb-test-key-XXXXXX";
        struct qb_config *cfg = NULL;

        write_temp(path, "0123456789abcdef\n", 17);
        snprintf(yaml, sizeof(yaml), "%s%s%s", keys[i].before, path, keys[i].after);
        assert_int_equal(chmod(path, 0644), 0);
        assert_int_equal(
            qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
            QB_ECONFIG);
        assert_null(cfg);
        snprintf(expected, sizeof(expected),
                 "%s: '%s': mode 0644 lets other users read it; chmod o-rwx", keys[i].where, path);
        assert_string_equal(err, expected);
        assert_int_equal(chmod(path, 0602), 0);
        assert_int_equal(
            qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)),
            QB_ECONFIG);
        assert_non_null(strstr(err, "mode 0602 lets other users change it"));
        assert_int_equal(chmod(path, 0640), 0);
        cfg = load_ok(yaml);
        qb_config_free(cfg);
        assert_int_equal(chmod(path, 0600), 0);
        cfg = load_ok(yaml);
        qb_config_free(cfg);
        unlink(path);
    }
    snprintf(yaml, sizeof(yaml), "%s/nonexistent/password%s", keys[1].before, keys[1].after);
    qb_config_free(load_ok(yaml));
}

/* bridge.state_directory: off by default, a path when set. */
static void test_state_directory(void **state)
{
    struct qb_config *cfg = load_ok("bridge: { id: h }\n");

    (void)state;
    assert_null(cfg->state_directory);
    qb_config_free(cfg);
    cfg = load_ok("bridge: { id: h, state_directory: /var/lib/qmp-bridge }\n");
    assert_string_equal(cfg->state_directory, "/var/lib/qmp-bridge");
    qb_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_directory),     cmocka_unit_test(test_full_inline),
        cmocka_unit_test(test_example_file),        cmocka_unit_test(test_minimal_file),
        cmocka_unit_test(test_transport_defaults),  cmocka_unit_test(test_transport_names),
        cmocka_unit_test(test_name_limits),         cmocka_unit_test(test_nulls_keep_defaults),
        cmocka_unit_test(test_bad_configs),         cmocka_unit_test(test_billion_laughs),
        cmocka_unit_test(test_errbuf_truncation),   cmocka_unit_test(test_message_sanitised),
        cmocka_unit_test(test_too_large),           cmocka_unit_test(test_load_file_errors),
        cmocka_unit_test(test_parse_size),          cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_commands_defaults),   cmocka_unit_test(test_commands_every_key),
        cmocka_unit_test(test_commands_key_file),   cmocka_unit_test(test_secret_file_modes),
        cmocka_unit_test(test_example_commands),    cmocka_unit_test(test_listen_name),
        cmocka_unit_test(test_libvirt_section),     cmocka_unit_test(test_bridge_id_default),
        cmocka_unit_test(test_transport_filters),   cmocka_unit_test(test_config_warnings),
        cmocka_unit_test(test_backend_config_maps),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
