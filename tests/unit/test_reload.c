/*
 * test_reload.c - the pure part of a configuration reload (bridge/reload.c):
 * which VMs and transports two configs differ in, and which keys keep their
 * running value because they need a restart.
 *
 * Each case loads two small YAML texts with the real loader, so a key the
 * loader fills by default (a transport's name, say) is compared the way the
 * running bridge compares it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "error.h"
#include "reload.h"

static struct qb_config *load(const char *yaml)
{
    char err[512] = "";
    struct qb_config *cfg = NULL;

    if (qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)) != QB_OK)
        fail_msg("unexpected config error: %s", err);
    return cfg;
}

/* The change recorded for name in items, or -1 when name is not listed. */
static int change_of(const struct qb_reload_item *items, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(items[i].name, name) == 0)
            return (int)items[i].change;
    return -1;
}

#define OLD_YAML                                                                                   \
    "bridge: { id: h1 }\n"                                                                         \
    "vms:\n"                                                                                       \
    "  - { name: keep, qmp: unix:/run/keep.qmp }\n"                                                \
    "  - { name: gone, qmp: unix:/run/gone.qmp }\n"                                                \
    "  - { name: moved, qmp: unix:/run/moved.qmp }\n"                                              \
    "transports:\n"                                                                                \
    "  - { type: mqtt, name: bus, host: 127.0.0.1, qos: 1 }\n"                                     \
    "  - { type: stdout, name: file, path: /tmp/a.jsonl }\n"                                       \
    "  - { type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" } }\n"        \
    "  - { type: stdout, name: old, path: /tmp/old.jsonl }\n"

static void test_diff_vms_and_transports(void **state)
{
    (void)state;
    struct qb_config *old = load(OLD_YAML);
    struct qb_config *nc = load(
        "bridge: { id: h1, log_level: debug }\n"
        "vms:\n"
        "  - { name: moved, qmp: \"tcp:10.0.0.1:4444\" }\n"
        "  - { name: keep, qmp: unix:/run/keep.qmp }\n"
        "  - { name: new, qmp: unix:/run/new.qmp }\n"
        "transports:\n"
        "  - { type: stdout, name: file, path: /tmp/a.jsonl }\n"
        "  - { type: mqtt, name: bus, host: 127.0.0.1, qos: 2 }\n"
        "  - { type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" } }\n"
        "  - { type: stdout, name: added, path: /tmp/b.jsonl }\n");
    struct qb_reload_diff d;

    assert_int_equal(qb_reload_diff(old, nc, &d), QB_OK);
    assert_int_equal(d.n_vms, 4);
    assert_int_equal(change_of(d.vms, d.n_vms, "keep"), QB_RELOAD_SAME);
    assert_int_equal(change_of(d.vms, d.n_vms, "gone"), QB_RELOAD_REMOVED);
    assert_int_equal(change_of(d.vms, d.n_vms, "moved"), QB_RELOAD_CHANGED);
    assert_int_equal(change_of(d.vms, d.n_vms, "new"), QB_RELOAD_ADDED);
    for (size_t i = 0; i < d.n_vms; i++) {
        /* the indexes point at the entry of that name in each config */
        if (d.vms[i].old_index != SIZE_MAX)
            assert_string_equal(old->vms[d.vms[i].old_index].name, d.vms[i].name);
        if (d.vms[i].new_index != SIZE_MAX)
            assert_string_equal(nc->vms[d.vms[i].new_index].name, d.vms[i].name);
    }
    assert_int_equal(d.n_transports, 5);
    assert_int_equal(change_of(d.transports, d.n_transports, "file"), QB_RELOAD_SAME);
    assert_int_equal(change_of(d.transports, d.n_transports, "bus"), QB_RELOAD_CHANGED);
    assert_int_equal(change_of(d.transports, d.n_transports, "k"), QB_RELOAD_SAME);
    assert_int_equal(change_of(d.transports, d.n_transports, "added"), QB_RELOAD_ADDED);
    assert_int_equal(change_of(d.transports, d.n_transports, "old"), QB_RELOAD_REMOVED);
    assert_false(d.discovery_changed);
    qb_reload_diff_free(&d);
    qb_config_free(old);
    qb_config_free(nc);
}

/* The same file twice: nothing to do. */
static void test_diff_identical(void **state)
{
    (void)state;
    struct qb_config *a = load(OLD_YAML), *b = load(OLD_YAML);
    struct qb_reload_diff d;

    assert_int_equal(qb_reload_diff(a, b, &d), QB_OK);
    assert_int_equal(d.n_vms, 3); /* every entry compared, each the same */
    assert_int_equal(d.n_transports, 4);
    for (size_t i = 0; i < d.n_vms; i++)
        assert_int_equal(d.vms[i].change, QB_RELOAD_SAME);
    for (size_t i = 0; i < d.n_transports; i++)
        assert_int_equal(d.transports[i].change, QB_RELOAD_SAME);
    assert_int_equal(qb_reload_keep_fixed(a, b, NULL, 0), 0);
    qb_reload_diff_free(&d);
    qb_config_free(a);
    qb_config_free(b);
}

/* Every kind of transport key counts: strings, numbers, enums, booleans, the property map. */
static void test_transport_equal_keys(void **state)
{
    (void)state;
    static const char *const variants[] = {
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"6\" } }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\", acks: all } }",
        "{ type: kafka, name: k, brokers: \"c:9092\", properties: { linger.ms: \"5\" } }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" }, "
        "content_mode: binary }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" }, "
        "commands: false }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" }, "
        "queue_max_messages: 10 }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" }, "
        "shutdown_timeout: 1s }",
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" }, "
        "on_full: drop }",
    };
    static const char base[] =
        "{ type: kafka, name: k, brokers: \"b:9092\", properties: { linger.ms: \"5\" } }";
    char yaml[512];
    struct qb_config *a, *b;

    snprintf(yaml, sizeof(yaml), "bridge: { id: h }\ntransports:\n  - %s\n", base);
    a = load(yaml);
    b = load(yaml);
    assert_true(qb_reload_transport_equal(&a->transports[0], &b->transports[0]));
    qb_config_free(b);
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        snprintf(yaml, sizeof(yaml), "bridge: { id: h }\ntransports:\n  - %s\n", variants[i]);
        b = load(yaml);
        if (qb_reload_transport_equal(&a->transports[0], &b->transports[0]))
            fail_msg("variant %zu compares equal: %s", i, variants[i]);
        qb_config_free(b);
    }
    qb_config_free(a);
}

/* broker: rabbitmq changes how commands are placed: a transport to rebuild, not the same. */
static void test_transport_equal_broker(void **state)
{
    (void)state;
    struct qb_config *a = load("bridge: { id: h }\ntransports:\n"
                               "  - { type: mqtt, protocol: \"3.1.1\" }\n");
    struct qb_config *b = load("bridge: { id: h }\ntransports:\n"
                               "  - { type: mqtt, protocol: \"3.1.1\", broker: rabbitmq }\n");

    assert_false(qb_reload_transport_equal(&a->transports[0], &b->transports[0]));
    qb_config_free(a);
    qb_config_free(b);
}

/* Where a transport is defined in the file does not make it a different transport. */
static void test_transport_equal_ignores_position(void **state)
{
    (void)state;
    struct qb_config *a = load("bridge: { id: h }\ntransports:\n"
                               "  - { type: stdout, name: f, path: /tmp/x }\n");
    struct qb_config *b = load("bridge: { id: h }\n\n\n# moved down\ntransports:\n"
                               "  - { type: stdout,    name: f, path: /tmp/x }\n");

    assert_int_not_equal(a->transports[0].line, b->transports[0].line);
    assert_true(qb_reload_transport_equal(&a->transports[0], &b->transports[0]));
    qb_config_free(a);
    qb_config_free(b);
}

/* Keys that need a restart keep the running value; the others stay as the new file says. */
static void test_keep_fixed(void **state)
{
    (void)state;
    struct qb_config *old = load("bridge: { id: h1, log_level: info }\n"
                                 "spool: { directory: /var/spool/a, max_size: 64MiB }\n"
                                 "metrics: { listen: \"127.0.0.1:9464\" }\n"
                                 "events: { exclude: [RTC_CHANGE] }\n");
    struct qb_config *nc = load("bridge: { id: h2, log_level: debug }\n"
                                "spool: { directory: /var/spool/b, max_size: 128MiB, "
                                "memory_max_messages: 5 }\n"
                                "events: { exclude: [RESUME] }\n");
    char names[256];

    assert_int_equal(qb_reload_keep_fixed(old, nc, names, sizeof(names)), 4);
    assert_string_equal(names, "bridge.id, spool.directory, spool.max_size, metrics.listen");
    assert_string_equal(nc->bridge_id, "h1");
    assert_string_equal(nc->spool_directory, "/var/spool/a");
    assert_int_equal(nc->spool_max_bytes, 64u * 1024 * 1024);
    assert_string_equal(nc->metrics_listen, "127.0.0.1:9464");
    /* in place: untouched */
    assert_int_equal(nc->log_level, QB_LOG_DEBUG);
    assert_int_equal(nc->spool_memory_max_messages, 5);
    assert_string_equal(nc->events_exclude[0], "RESUME");
    /* applying it again finds nothing left to keep */
    assert_int_equal(qb_reload_keep_fixed(old, nc, names, sizeof(names)), 0);
    assert_string_equal(names, "");
    qb_config_free(old);
    qb_config_free(nc);
}

/* Switching discovery on, off or to another suffix is a discovery change. */
static void test_discovery_changed(void **state)
{
    (void)state;
    struct qb_config *off = load("bridge: { id: h }\n");
    struct qb_config *on = load("bridge: { id: h }\ndiscovery: { directory: /run/vms }\n");
    struct qb_config *suffix =
        load("bridge: { id: h }\ndiscovery: { directory: /run/vms, suffix: .qmp }\n");
    struct qb_reload_diff d;

    assert_int_equal(qb_reload_diff(off, on, &d), QB_OK);
    assert_true(d.discovery_changed);
    qb_reload_diff_free(&d);
    assert_int_equal(qb_reload_diff(on, suffix, &d), QB_OK);
    assert_true(d.discovery_changed);
    qb_reload_diff_free(&d);
    assert_int_equal(qb_reload_diff(on, on, &d), QB_OK);
    assert_false(d.discovery_changed);
    qb_reload_diff_free(&d);
    qb_config_free(off);
    qb_config_free(on);
    qb_config_free(suffix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diff_vms_and_transports),
        cmocka_unit_test(test_diff_identical),
        cmocka_unit_test(test_transport_equal_keys),
        cmocka_unit_test(test_transport_equal_broker),
        cmocka_unit_test(test_transport_equal_ignores_position),
        cmocka_unit_test(test_keep_fixed),
        cmocka_unit_test(test_discovery_changed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
