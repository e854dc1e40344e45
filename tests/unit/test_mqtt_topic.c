/*
 * test_mqtt_topic.c - placing command topics (transports/mqtt_topic.c): as a
 * broker that keeps topics delivers them, and as RabbitMQ's MQTT plugin does,
 * with every '.' of the topic sent turned into a level.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "mqtt_topic.h"

/* The VM placed from topic, or "" when it is not a command topic of head. */
static void check_vm(const char *head, const char *topic, bool dots, const char *want)
{
    bool oom = true;
    char *vm = qb_mqtt_topic_command_vm(head, topic, dots, &oom);

    assert_false(oom);
    assert_string_equal(vm ? vm : "", want);
    free(vm);
}

static void test_generic_broker(void **state)
{
    (void)state;
    check_vm("qmp/host-a/", "qmp/host-a/vm1/command", false, "vm1");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1.example.org/web.1/command", false, "web.1");
    /* what RabbitMQ delivers is no topic of ours on a broker that keeps topics */
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/vm1/command", false, "");
    check_vm("qmp/host-a/", "qmp/host-a/a/b/command", false, "");
    check_vm("qmp/host-a/", "qmp/host-a//command", false, "");
    check_vm("qmp/host-a/", "qmp/host-a/command", false, "");
    check_vm("qmp/host-a/", "qmp/host-a/vm1/state", false, "");
    check_vm("qmp/host-a/", "qmp/host-b/vm1/command", false, "");
    check_vm("qmp/host-a/", "qmp/host-a/vm1/commandx", false, "");
    check_vm("qmp/host-a/", "qmp/host-a/vm1/xcommand", false, "");
    check_vm("qmp/host-a/", "qmp/host-a", false, "");
    check_vm("qmp/host-a/", "", false, "");
}

static void test_rabbitmq(void **state)
{
    (void)state;
    /* the bridge id's dots arrive as levels, and so do the VM name's */
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/vm1/command", true, "vm1");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/web/1/command", true, "web.1");
    check_vm("site.qmp/h/", "site/qmp/h/a/b/c/command", true, "a.b.c");
    check_vm("qmp/host-a/", "qmp/host-a/a//b/command", true, "a..b");
    check_vm("qmp/host-a/", "qmp/host-a/vm.command/command", true, "vm.command");
    /* a topic as sent (another broker behind the same name) still places */
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1.example.org/vm1/command", true, "vm1");
    /* no VM, another bridge, another kind of message */
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/command", true, "");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/net/vm1/command", true, "");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/vm1/command", true, "");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/vm1/state", true, "");
    check_vm("qmp/cmp1.example.org/", "qmp/cmp1/example/org/vm1/event/qmp/vm/stopped", true, "");
}

static void test_levels_and_filters(void **state)
{
    char *f;

    (void)state;
    assert_int_equal(qb_mqtt_topic_levels("vm1"), 1);
    assert_int_equal(qb_mqtt_topic_levels("web.1"), 2);
    assert_int_equal(qb_mqtt_topic_levels("a..b."), 4);
    f = qb_mqtt_topic_command_filter("qmp/h/", 1);
    assert_string_equal(f, "qmp/h/+/command");
    free(f);
    f = qb_mqtt_topic_command_filter("qmp/cmp1.example.org/", 3);
    assert_string_equal(f, "qmp/cmp1.example.org/+/+/+/command");
    free(f);
    f = qb_mqtt_topic_command_filter("q/", QB_MQTT_TOPIC_LEVELS_MAX);
    assert_non_null(f);
    free(f);
    assert_null(qb_mqtt_topic_command_filter("q/", 0));
    assert_null(qb_mqtt_topic_command_filter("q/", QB_MQTT_TOPIC_LEVELS_MAX + 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generic_broker),
        cmocka_unit_test(test_rabbitmq),
        cmocka_unit_test(test_levels_and_filters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
