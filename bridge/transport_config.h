/*
 * transport_config.h - one entry of the configuration's transports: list, as the
 * loader (config.c) fills it: the keys every transport has, and a pointer to the
 * backend's own config struct. Kept apart from config.h so that the transport layer
 * and the backends need only this, not the whole configuration.
 */
#ifndef QB_TRANSPORT_CONFIG_H
#define QB_TRANSPORT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * What a transport does when its queue fills (on_full:). backpressure: at 90%
 * of either bound the bridge stops reading from every QMP socket (QEMU keeps
 * the events) until the queue is back under 50%: nothing is lost, but one
 * stuck transport stalls the others. drop: this transport never stalls the
 * bridge; what does not fit is refused, counted and logged.
 */
enum qb_queue_full_policy { QB_ON_FULL_BACKPRESSURE = 0, QB_ON_FULL_DROP = 1 };

/*
 * One entry of transports:: the keys every transport has (qb_config_transport_keys).
 * The backend's own keys are in its own struct at backend, filled through its config
 * map (transport_ops.h; e.g. struct qb_mqtt_config in transports/mqtt_config.h).
 */
struct qb_transport_config {
    char *type;       /* the backend: a name in the transport registry */
    char *name;       /* label in logs and metrics; default: the type, or type#N if repeated */
    const char *file; /* where it was defined (one of the config's files, borrowed) */
    int line, column;

    /* The bounded in-memory queue in front of the backend. */
    size_t queue_max_messages;         /* queue_max_messages, default 10000 */
    size_t queue_max_bytes;            /* queue_max_bytes, default 16MiB */
    enum qb_queue_full_policy on_full; /* on_full: backpressure (default) or drop */
    /* include / exclude: fnmatch patterns on the CloudEvents type of each message (events,
       qmp.vm.state, bridge.*); default none: everything passes (see transport_filter.h) */
    char **include;
    size_t n_include;
    char **exclude;
    size_t n_exclude;

    uint32_t shutdown_timeout_ms; /* bounded flush wait at shutdown; default 5s */

    /* commands (backends that can receive them): receive commands on this transport;
       default true when commands.enabled, ignored otherwise; false for the others */
    bool commands;

    /* The backend's config struct (its ops' config_size bytes), owned by the config
       (qb_config_free frees it); NULL when the backend has no keys of its own. */
    void *backend;
};

#endif
