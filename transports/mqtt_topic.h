/*
 * mqtt_topic.h - where an inbound MQTT command belongs, and the filters that
 * receive commands, for brokers that keep topics as sent and for RabbitMQ.
 *
 * RabbitMQ's MQTT plugin routes through an AMQP topic exchange: it turns every
 * '/' of a topic into '.' (the AMQP level separator) and back into '/' on
 * delivery, so each '.' of a topic becomes a level of its own. A command sent
 * to "qmp/cmp1.example.org/web.1/command" arrives as
 * "qmp/cmp1/example/org/web/1/command", and the filter
 * "qmp/cmp1.example.org/+/command" matches only VM names without a dot. Since
 * neither bridge ids nor VM names contain '/', a delivered topic still places
 * its command: its head is the bridge's head with dots as levels, its last
 * level is "command", and what lies between is the VM name with '/' read as '.'.
 */
#ifndef QB_MQTT_TOPIC_H
#define QB_MQTT_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

/* Levels of a VM name of at most 64 bytes when each '.' starts a level. */
#define QB_MQTT_TOPIC_LEVELS_MAX 65

/*
 * The VM a command on topic is for. head is "<prefix>/<bridge>/" as the bridge
 * subscribed it; dots_are_levels: the broker delivers '.' as '/' (RabbitMQ).
 * Returns the VM name, new (caller frees), or NULL when the topic does not
 * have the form <head><vm>/command, with *oom set when memory ran out.
 */
char *qb_mqtt_topic_command_vm(const char *head, const char *topic, bool dots_are_levels,
                               bool *oom);

/* How many levels name takes when each '.' starts one (1 for a name without dots). */
size_t qb_mqtt_topic_levels(const char *name);

/*
 * The filter "<head>+/.../+/command" with levels '+' levels (1..LEVELS_MAX),
 * new (caller frees), or NULL when out of memory.
 */
char *qb_mqtt_topic_command_filter(const char *head, size_t levels);

#endif
