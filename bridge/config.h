/*
 * config.h - the bridge's configuration, loaded from one YAML file and its drop-ins.
 *
 * The loader (config.c) walks the YAML with libyaml and fills these structs
 * through key tables (config_map.h: key, type, default, offset); a transport's
 * own keys come from its backend's table (transport_ops.h). Every error names
 * file:line:column and the key, e.g.
 *   "qmp-bridge.yaml:7:5: transports[1].qos: expected 0, 1 or 2, got 'three'".
 * Every key and its default is documented in conf/qmp-bridge.example.yaml.
 *
 * Drop-ins (config_dropins.h says where they live) are merged over the main file in name
 * order: mappings merge key by key, the lists vms and transports append, anything else (a
 * scalar, any other list such as events.exclude or commands.allow) takes the last file's
 * value. String values may hold references (config_ref.h): ${env:NAME}, ${file:/path},
 * ${cred:NAME}, and $${ for a literal ${.
 *
 * Value syntax: sizes accept a plain byte count or a suffix (B, KiB, MiB, GiB,
 * also k/K, M, G meaning the binary units); durations accept milliseconds as a
 * plain integer or a suffix (ms, s, m, h). Booleans: true/false/yes/no/on/off.
 */
#ifndef QB_CONFIG_H
#define QB_CONFIG_H

#include "command.h"
#include "config_map.h"
#include "log.h"
#include "spool.h" /* enum qb_spool_fsync */
#include "transport_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One statically configured VM (vms: list). */
struct qb_vm_config {
    char *name; /* unique; [A-Za-z0-9._-]{1,64}, used in topics and sources */
    char *qmp;  /* "unix:/path" or "tcp:host:port" */
    const char *file; /* where it was defined (one of the config's files, borrowed) */
    int line;
};

/*
 * What the bridge does when the spool is full (spool.on_full:). backpressure:
 * at 90% of max_size it stops reading from QMP sockets until the spool is
 * back under 80%. drop_oldest: the oldest segment is deleted, whether or not
 * it was delivered, and every VM's lost sequence range is logged and counted.
 */
enum qb_spool_full_policy { QB_SPOOL_FULL_BACKPRESSURE = 0, QB_SPOOL_FULL_DROP_OLDEST = 1 };

/*
 * How a QEMU that connected to qmp.listen is named (qmp.listen_name:).
 * query_name: its -name (query-name); the template when it has none.
 * pid: always the template (qmp.listen_name_template), e.g. "vm-{pid}".
 */
enum qb_listen_name { QB_LISTEN_NAME_QUERY = 0, QB_LISTEN_NAME_PID = 1 };

struct qb_config {
    char *path;   /* the main file this came from */
    char **files; /* files[0] is path, then the drop-ins merged over it, in order */
    size_t n_files;

    /* bridge: */
    char *bridge_id;              /* id: [A-Za-z0-9._-]{1,64}; default the host name (a host
                                     name the rule refuses is a configuration error) */
    bool bridge_id_from_host;     /* bridge_id is that default */
    enum qb_log_level log_level;  /* log_level, default info */
    enum qb_log_format log_format; /* log_format: auto|text|json|journal, default auto */
    char *schema_base_uri;        /* schema_base_uri, default
                                     "file:///usr/share/qmp-bridge/schema/v1/" */
    char *state_directory;        /* state_directory: the command journal; default NULL (ids
                                     of executed commands live in memory only) */

    /* qmp: */
    size_t qmp_max_line_bytes;       /* max_line_bytes, default 16MiB */
    uint32_t qmp_command_timeout_ms; /* command_timeout, default 10s */
    uint32_t qmp_connect_timeout_ms; /* connect_timeout, default 5s */
    uint32_t qmp_reconnect_initial_ms; /* reconnect_initial, default 250ms */
    uint32_t qmp_reconnect_max_ms;   /* reconnect_max, default 30s */
    size_t qmp_max_connecting;       /* max_connecting: sessions connecting, negotiating or
                                        taking their snapshot at once; default 64 */
    size_t qmp_max_held_events;      /* max_held_events: events one VM may hold back while it
                                        waits for a reply; default 8192 */
    size_t qmp_max_held_bytes;       /* max_held_bytes: their raw QMP line bytes; default 2MiB */
    char *qmp_listen;                /* listen: "unix:/path" QEMUs connect to (listen mode);
                                        default NULL (off) */
    enum qb_listen_name qmp_listen_name; /* listen_name: query-name (default) or pid */
    char *qmp_listen_name_template;  /* listen_name_template: placeholders {pid}, {uid},
                                        {comm}; default "vm-{pid}" */
    size_t qmp_listen_max_vms;       /* listen_max_vms: listen-mode VM entries at most;
                                        default 1024 */
    uint32_t qmp_listen_forget_after_ms; /* listen_forget_after: a listen VM not back within
                                            this is forgotten; default 1h, 0 never */

    /* vms: */
    struct qb_vm_config *vms;
    size_t n_vms;

    /* discovery: */
    char *discovery_directory; /* directory, default NULL (off) */
    char *discovery_suffix;    /* suffix: only files ending in it are VMs; the VM name is the
                                  file name without it. Default "" (every socket file) */

    /* libvirt: the libvirt source (source_libvirt.c), off unless uri is set */
    char *libvirt_uri;          /* uri, e.g. "qemu:///system"; default NULL (off) */
    char **libvirt_include;     /* include: domain-name globs; NULL: the default ["*"] */
    size_t n_libvirt_include;
    char **libvirt_exclude;     /* exclude: domain-name globs never taken; default none */
    size_t n_libvirt_exclude;
    uint32_t libvirt_keepalive_interval_ms; /* keepalive_interval: default 5s */
    uint32_t libvirt_keepalive_count;       /* keepalive_count: unanswered probes before the
                                               connection counts as lost; default 3 */
    uint32_t libvirt_forget_after_ms; /* forget_after: a VM whose domain libvirt no longer has
                                         (transient and stopped, undefined) is removed after
                                         this; default 1h, 0 never */

    /* events: */
    char **events_exclude;     /* exclude: QMP event names never published; default none */
    size_t n_events_exclude;

    /* commands: the reverse channel (off unless enabled: true) */
    struct qb_command_policy commands; /* enabled, allow, max_size, max_growth, max_age,
                                          max_skew, max_message_bytes; hmac_key read from
                                          hmac_key_file at load time */
    char *commands_hmac_key_file;      /* hmac_key_file, default none */
    unsigned char *commands_hmac_key;  /* the file's bytes, trailing newline removed */
    size_t commands_cache_size;        /* cache_size: command ids remembered; default 10000 */
    size_t commands_queue_per_vm;      /* queue_per_vm: waiting commands per VM; default 16 */
    uint32_t commands_timeout_ms;      /* timeout: whole command, queue wait included; default 60s */

    /* spool: the durable outbox (off unless directory is set) */
    char *spool_directory;           /* directory, default NULL (memory queues only) */
    size_t spool_max_bytes;          /* max_size, default 1GiB */
    size_t spool_segment_bytes;      /* segment_size, default 16MiB; at most max_size / 4 */
    enum qb_spool_fsync spool_fsync; /* fsync: batch (default), always, off */
    uint32_t spool_fsync_interval_ms; /* fsync_interval, default 50ms */
    enum qb_spool_full_policy spool_on_full; /* on_full: backpressure (default), drop_oldest */
    size_t spool_memory_max_messages; /* memory_max_messages: events held in memory while the
                                         spool cannot be written (disk full); default 10000 */

    /* metrics: the HTTP endpoint (off unless listen is set) */
    char *metrics_listen; /* listen: "127.0.0.1:9464" or "unix:/path"; default NULL */

    /* transports: (default: one stdout transport when the list is absent) */
    struct qb_transport_config *transports;
    size_t n_transports;
};

/*
 * The keys every transport accepts (type, name, queue bounds, on_full, include,
 * exclude, shutdown_timeout, commands), describing struct qb_transport_config; each
 * backend's own keys are in its ops' config map (transport_ops.h).
 */
extern const struct qb_config_key qb_config_transport_keys[];

/*
 * Loads and validates the YAML file at path, with its drop-ins merged over it.
 * On success returns QB_OK and *out is a new config owned by the caller
 * (free with qb_config_free). On failure returns QB_ECONFIG (or QB_ENOMEM,
 * QB_EIO), leaves *out NULL, and writes a one-line message with
 * file:line:column and the key into errbuf.
 */
int qb_config_load_file(const char *path, struct qb_config **out, char *errbuf, size_t errlen);

/*
 * Same as qb_config_load_file but from a string in memory; name is used as
 * the file name in messages. No drop-ins are read; references are expanded.
 * Used by tests, fuzzing and the embedded demo.
 */
int qb_config_load_string(const char *name, const char *yaml, size_t len, struct qb_config **out,
                          char *errbuf, size_t errlen);

/* Frees a config and everything it owns. NULL is fine. */
void qb_config_free(struct qb_config *cfg);

/* Whether two string lists of a config (na and nb items, borrowed) hold the same, in order. */
bool qb_config_strings_equal(char *const *a, size_t na, char *const *b, size_t nb);

/*
 * Expands a qmp.listen_name_template into out (outlen bytes): {pid}, {uid}
 * become the numbers, {comm} the text of comm (borrowed; the caller has
 * already made it [A-Za-z0-9._-]), every other character must be one of
 * [A-Za-z0-9._-]. Returns QB_OK, or QB_EINVAL for an unknown placeholder, a
 * bad character, an empty result or one longer than 64 characters (or outlen).
 */
int qb_config_listen_name(const char *tmpl, uint32_t pid, uint32_t uid, const char *comm,
                          char *out, size_t outlen);

/* Parses "16MiB", "64k", "1024". Returns QB_OK or QB_EINVAL. */
int qb_config_parse_size(const char *text, size_t *out);

/* Parses "30s", "500ms", "5m", "2h", "250" (ms). Returns QB_OK or QB_EINVAL. */
int qb_config_parse_duration_ms(const char *text, uint32_t *out);

#endif
