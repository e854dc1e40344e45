/*
 * mqtt_config.h - the configuration of one mqtt transport: what its config map
 * (mqtt.c, qb_transport_mqtt_ops.config_keys) fills. The loader allocates it and
 * hangs it on struct qb_transport_config's backend; tests build one by hand.
 */
#ifndef QB_MQTT_CONFIG_H
#define QB_MQTT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

enum qb_mqtt_protocol { QB_MQTT_V5 = 5, QB_MQTT_V311 = 4 };
/* What the MQTT broker is (broker:); rabbitmq: see docs/operations.md, RabbitMQ. */
enum qb_mqtt_broker { QB_MQTT_BROKER_GENERIC = 0, QB_MQTT_BROKER_RABBITMQ = 1 };

struct qb_mqtt_config {
    char *host;                     /* default "127.0.0.1" */
    int port;                       /* default 1883 (8883 when tls.ca_file is set) */
    char *topic_prefix;             /* default "qmp" */
    int qos;                        /* 0, 1, 2; default 1 */
    enum qb_mqtt_protocol protocol; /* "5" or "3.1.1"; default 5 (3.1.1 for rabbitmq) */
    enum qb_mqtt_broker broker;     /* "generic" (default) or "rabbitmq" */
    char *client_id;                /* default "qmp-bridge-<bridge id>" */
    uint32_t keepalive_ms;          /* keepalive, default 30s */
    char *username;                 /* default NULL */
    char *password_file;            /* first line is the password; default NULL */
    char *tls_ca_file;              /* tls: { ca_file, cert_file, key_file, insecure } */
    char *tls_cert_file;
    char *tls_key_file;
    bool tls_insecure;             /* skip hostname verification; default false */
    uint32_t max_inflight;         /* unacknowledged publishes at once; default 100 */
    uint32_t reconnect_initial_ms; /* default 500ms */
    uint32_t reconnect_max_ms;     /* default 30s */
    uint32_t session_expiry_s;     /* session_expiry: MQTT 5 session kept this long across a
                                      disconnect so QoS 1 commands wait for us; default 1h */
};

#endif
