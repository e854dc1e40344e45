/*
 * kafka_config.h - the configuration of one kafka transport: what its config map
 * (kafka.c, qb_transport_kafka_ops.config_keys) fills. The loader allocates it and
 * hangs it on struct qb_transport_config's backend; tests build one by hand.
 */
#ifndef QB_KAFKA_CONFIG_H
#define QB_KAFKA_CONFIG_H

#include "config_map.h" /* struct qb_config_kv */

#include <stddef.h>

enum qb_kafka_content_mode { QB_KAFKA_STRUCTURED = 0, QB_KAFKA_BINARY = 1 };

struct qb_kafka_config {
    char *brokers;        /* "host:port,..." required */
    char *events_topic;   /* default "qmp.events"; <bridge>/<vm>/<type> placeholders */
    char *state_topic;    /* default "qmp.state" */
    char *commands_topic; /* default "qmp.commands" */
    enum qb_kafka_content_mode content_mode; /* "structured" (default) or "binary" */
    struct qb_config_kv *properties;         /* passed to librdkafka verbatim */
    size_t n_properties;
    char *group_id; /* group_id: default "qmp-bridge.<bridge id>" */
};

#endif
