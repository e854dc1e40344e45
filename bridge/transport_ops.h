/*
 * transport_ops.h - the interface every backend in transports/ implements.
 *
 * One const struct per backend with designated initialisers, registered in
 * transport.c's table by type name. The generic layer (transport.c) owns the
 * queue, ordering, retries and accounting; a backend only moves bytes and
 * reports what happened. Optional members may be NULL.
 */
#ifndef QB_TRANSPORT_OPS_H
#define QB_TRANSPORT_OPS_H

#include "config_map.h"
#include "message.h"
#include "transport_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/*
 * Not transport.h: a backend sees only this contract, so transports/ sit
 * below the generic layer that registers them. The types both sides share
 * live here.
 */
struct qb_transport;

/* One inbound command message as a transport received it; everything borrowed for the call. */
struct qb_inbound {
    const char *payload;
    size_t len;
    const char *vm_hint;     /* mqtt: the <vm> level of the topic; kafka: the vm part of the key,
                                or NULL */
    const char *reply_topic; /* mqtt 5 Response Topic, or NULL */
    const void *correlation; /* mqtt 5 Correlation Data, or NULL */
    size_t correlation_len;
};

/* Identity of the bridge that transports need (will topic, client id, group). */
struct qb_bridge_info {
    const char *id; /* borrowed for the transport's lifetime */
};

/* A broker's round trip as the client library measured it, in seconds (broker borrowed). */
typedef void (*qb_broker_rtt_cb)(void *arg, const char *broker, double avg_s, double p99_s);

/* Capabilities a backend announces. */
enum {
    QB_TRANSPORT_CAP_RETAINED = 1 << 0,  /* keeps the latest state per VM (retained / compacted) */
    QB_TRANSPORT_CAP_KEYED = 1 << 1,     /* honours the ordering key */
    QB_TRANSPORT_CAP_SUBSCRIBE = 1 << 2, /* can receive commands */
    QB_TRANSPORT_CAP_REPLY = 1 << 3,     /* has a reply channel: QB_MSG_REPLY is published; without
                                            it the generic layer accepts and discards replies */
    QB_TRANSPORT_CAP_BATCHES = 1 << 4,   /* gains from a loop turn's messages handed over together:
                                            what qb_transport_queue queued waits for the hand-over */
};

/* What the generic layer gives a backend to report back through. owner is opaque. */
struct qb_transport_backend_cb {
    /*
     * Exactly once per publish that returned QB_OK: status QB_OK when the
     * delivery is confirmed, or a negative code (the message will be retried).
     * May be called from the loop only, never from inside publish itself.
     */
    void (*delivered)(void *owner, void *token, int status);

    /* The backend can take messages again (link up, window freed). */
    void (*writable)(void *owner);

    /* The link went up or down; why is a borrowed text for the log. */
    void (*link)(void *owner, bool up, const char *why);

    /*
     * An inbound command message (after subscribe). in is borrowed for the
     * call; ack_token is the backend's own, handed back to ops->ack later.
     */
    void (*inbound)(void *owner, const struct qb_inbound *in, uint64_t ack_token);
};

struct qb_transport_ops {
    const char *name; /* the `type:` in YAML */
    unsigned caps;

    /*
     * The config map: the keys this backend accepts besides the common transport keys
     * (config.c), terminated by a NULL key; NULL when it has none. Offsets are into the
     * backend's own config struct (config_size bytes), which the loader allocates, fills
     * with the defaults and then the file's values, and frees; the backend finds it at
     * cfg->backend.
     */
    const struct qb_config_key *config_keys;
    size_t config_size;

    /*
     * Optional. Checks across keys and defaults that depend on other keys, after the
     * walk; bcfg is the backend's config struct. Returns QB_OK, or QB_ECONFIG with *p
     * filled (the loader adds file, line, column and the key's path).
     */
    int (*config_finish)(void *bcfg, struct qb_config_problem *p);

    /*
     * Optional. Called for a transport that receives commands (commands enabled, and
     * its commands: key true): calls emit(arg, line) once per risky setting of cfg
     * (borrowed), each line saying the risk and the fix. Returns how many.
     */
    size_t (*config_warn_commands)(const struct qb_transport_config *cfg,
                                   void (*emit)(void *arg, const char *line), void *arg);

    /* Pure check of cfg; fills errbuf and returns QB_ECONFIG when invalid. Required. */
    int (*validate)(const struct qb_transport_config *cfg, char *errbuf, size_t errlen);

    /*
     * Creates the backend and starts connecting in the background; never
     * blocks. cfg and bridge are borrowed for the backend's lifetime.
     * Returns QB_OK with *backend set, or a negative code with errbuf filled.
     * Required.
     */
    int (*create)(uv_loop_t *loop, const struct qb_transport_config *cfg,
                  const struct qb_bridge_info *bridge, const struct qb_transport_backend_cb *cb,
                  void *owner, void **backend, char *errbuf, size_t errlen);

    /*
     * Publishes msg. msg and everything it points to stay valid until the
     * delivered() of this publish, or until the backend's close has completed
     * when that comes first, so a backend may hand them to its library without
     * copying; after a non-QB_OK return they are borrowed for the call only. Returns QB_OK
     * (then exactly one delivered(token) later), QB_EAGAIN when it cannot
     * take it now (no callback; wait for writable), or another negative code
     * for a message it can never send (no callback; counted as failed and
     * dropped by the caller). Required.
     */
    int (*publish)(void *backend, const struct qb_message *msg, void *token);

    /*
     * Optional. Starts receiving commands, reported through cb->inbound.
     * Returns QB_OK or a negative code with a logged reason.
     */
    int (*subscribe)(void *backend);

    /*
     * Optional, for backends with QB_TRANSPORT_CAP_REPLY. False when a reply
     * must not go to topic (borrowed), a requester's Response Topic: the
     * backend's own namespace, where consumers read the bridges' events,
     * state and status. NULL: every topic is allowed.
     */
    bool (*reply_topic_allowed)(void *backend, const char *topic);

    /* Optional. The core is done with the inbound message ack_token (Kafka: commit). */
    void (*ack)(void *backend, uint64_t ack_token);

    /*
     * Optional, for client libraries that measure it (librdkafka does; libmosquitto
     * does not). Calls cb once per broker with the round trip the library saw in
     * its last reporting window: the broker's name (checked printable, borrowed
     * for the call), average and 99th percentile in seconds. Never blocks.
     */
    void (*broker_rtt)(void *backend, qb_broker_rtt_cb cb, void *arg);

    /*
     * Closes the backend: gives up on what is still in flight (each gets
     * delivered(QB_ECLOSED)), says goodbye where the protocol has one
     * (MQTT's retained "offline"), and calls closed(arg) from the loop once
     * every handle is released. Required.
     */
    void (*close)(void *backend, void (*closed)(void *arg), void *arg);
};

/*
 * Like qb_transport_create but with an explicit backend instead of the
 * registry lookup by cfg->type; for tests with a scripted backend. ops is
 * borrowed and must outlive the transport.
 */
int qb_transport_create_with_ops(const struct qb_transport_ops *ops, uv_loop_t *loop,
                                 const struct qb_transport_config *cfg,
                                 const struct qb_bridge_info *bridge, struct qb_transport **out,
                                 char *errbuf, size_t errlen);

/*
 * The registry (transport.c): the backend whose name is type, or NULL; the i-th backend
 * in registry order, or NULL past the last. Both return static data.
 */
const struct qb_transport_ops *qb_transport_ops_find(const char *type);
const struct qb_transport_ops *qb_transport_ops_at(size_t i);

/* Backends, defined in transports/<name>.c. */
extern const struct qb_transport_ops qb_transport_stdout_ops;
extern const struct qb_transport_ops qb_transport_mqtt_ops;
extern const struct qb_transport_ops qb_transport_kafka_ops;

#endif
