/*
 * command.h - inbound remediation commands: parse, validate, authorise.
 *
 * A command is a CloudEvents 1.0 JSON object:
 *   {"specversion":"1.0","id":"<idempotency key>","source":"<who sent it>",
 *    "type":"qmp.command.<name>","subject":"<vm>","time":"<RFC 3339>",
 *    "bridge":"<bridge id, optional>","signature":"<hex HMAC-SHA256, when required>",
 *    "data":{...arguments...}}
 * The command set is closed (the table in command.c); there is no raw QMP
 * passthrough. Everything here is pure (no I/O, no loop) so it can be unit
 * tested and fuzzed: the clock is passed in.
 *
 * Signature: HMAC-SHA256 with the configured key over the command's
 * canonical text (command_canonical.h: the object without its "signature"
 * member, sorted keys, no whitespace, fixed string escapes, no reals), as
 * lower-case hex in the "signature" attribute.
 */
#ifndef QB_COMMAND_H
#define QB_COMMAND_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum qb_cmd_name {
    QB_CMD_RESIZE_AND_CONT = 0,
    QB_CMD_CONT,
    QB_CMD_STOP,
    QB_CMD_BLOCK_JOB_RESUME,
    QB_CMD_BLOCK_JOB_PAUSE,
    QB_CMD_BLOCK_JOB_CANCEL,
    QB_CMD_BLOCK_JOB_COMPLETE,
    QB_CMD_SET_WRITE_THRESHOLD,
    QB_CMD_COLO_LOST_HEARTBEAT,
    QB_CMD_QUERY_STATE,
    QB_CMD__COUNT
};

/* Returns the static wire name ("resize-and-cont"), or NULL for an invalid value. */
const char *qb_cmd_name_str(enum qb_cmd_name name);

/* Looks a wire name up. Returns QB_OK and *out, or QB_ENOTFOUND. */
int qb_cmd_name_parse(const char *text, enum qb_cmd_name *out);

/* The commands: policy (config.c fills it; every pointer owned by the config). */
struct qb_command_policy {
    bool enabled;                  /* default false: every command is rejected */
    uint32_t allow_mask;           /* bit (1u << qb_cmd_name); default all */
    uint64_t max_size;             /* bytes a disk may be grown to; 0 = no limit */
    uint64_t max_growth;           /* bytes one command may add; 0 = no limit */
    uint32_t max_age_ms;           /* older commands are rejected; default 5 min */
    uint32_t max_skew_ms;          /* commands this far in the future are rejected; default 60 s */
    size_t max_message_bytes;      /* default 64 KiB */
    const unsigned char *hmac_key; /* NULL: no signature required */
    size_t hmac_key_len;
};

/* Why a command was rejected; class is one of the QB_CMD_ERR_* strings. */
#define QB_CMD_ERR_INVALID "invalid"         /* malformed, missing or wrongly typed field */
#define QB_CMD_ERR_UNKNOWN "unknown-command" /* type names no command in the set */
#define QB_CMD_ERR_DISABLED "disabled"       /* commands.enabled is false */
#define QB_CMD_ERR_FORBIDDEN "forbidden"     /* not in commands.allow */
#define QB_CMD_ERR_EXPIRED "expired"         /* time older than max_age (or too far ahead) */
#define QB_CMD_ERR_UNAUTHENTICATED "unauthenticated" /* signature missing or wrong */
#define QB_CMD_ERR_TOO_LARGE "too-large"             /* over max_message_bytes */
#define QB_CMD_ERR_UNKNOWN_VM "unknown-vm"           /* (vm_manager) no such VM on this bridge */
#define QB_CMD_ERR_NOT_CONNECTED "not-connected"     /* (vm_manager) VM has no QMP session */
#define QB_CMD_ERR_BUSY "busy"                       /* (vm_manager) per-VM queue full */
#define QB_CMD_ERR_PRECONDITION "precondition"       /* (exec) e.g. not paused on io-error */
#define QB_CMD_ERR_LIMIT "limit"                     /* (exec) shrink, over max_size/max_growth */
#define QB_CMD_ERR_QMP "qmp"                         /* (exec) QEMU answered an error */
#define QB_CMD_ERR_TIMEOUT "timeout"                 /* (exec) a step or the command timed out */
#define QB_CMD_ERR_DISCONNECTED "disconnected"       /* (exec) the session closed mid-command */
#define QB_CMD_ERR_UNSUPPORTED "unsupported"         /* (source) the VM's source cannot run it */
#define QB_CMD_ERR_LIBVIRT "libvirt"                 /* (libvirt source) a libvirt call failed */
#define QB_CMD_ERR_ID_REUSED                                                                       \
    "id-reused" /* (router) the id ran before with other type,                                     \
                   subject or data */
#define QB_CMD_ERR_INTERRUPTED                                                                     \
    "interrupted" /* (router) the id was running when the bridge                                   \
                     stopped: outcome unknown, never run again */

/* Bytes of an echoed command id (results, logs); longer ids are cut on a UTF-8 boundary. */
#define QB_CMD_ID_MAX 128
/* Bytes of any other string read from a command before it is judged (source, subject...). */
#define QB_CMD_ECHO_MAX 256
/* Longest "replytopic" taken (bytes); MQTT would take 65,535, no reply topic needs that. */
#define QB_CMD_REPLY_TOPIC_MAX 1024

struct qb_command_error {
    const char *cls;   /* static, one of QB_CMD_ERR_* */
    char message[256]; /* names the field: "data.size: expected a positive integer" */
};

/* A parsed command. Strings are owned by the struct (freed by qb_command_free). */
struct qb_command {
    char *id; /* NULL when the message had none (then no result can name it) */
    char *source;
    char *subject;         /* the VM */
    char *bridge;          /* optional "bridge" attribute: the bridge the sender meant */
    char *reply_topic;     /* optional "replytopic": the MQTT 5 Response Topic the sender signed */
    char *type;            /* as sent */
    enum qb_cmd_name name; /* valid only when name_known */
    bool name_known;
    int64_t time_sec;  /* parsed "time" */
    int32_t time_usec; /* its fraction, in microseconds (digits past the sixth dropped) */
    json_t *data;      /* the "data" object as sent (new reference), or NULL */

    /* Validated arguments (which are set depends on the command, see command.c's table). */
    char *device;       /* resize-and-cont */
    char *node_name;    /* resize-and-cont, set-write-threshold */
    char *job;          /* block-job-* */
    uint64_t size;      /* resize-and-cont: absolute bytes (has_size) */
    uint64_t grow_by;   /* resize-and-cont: bytes to add (has_grow_by) */
    uint64_t threshold; /* set-write-threshold */
    bool has_size, has_grow_by;
    bool force; /* resize-and-cont: skip the io-error precondition */
};

/*
 * Parses and checks one command message (buf, len: borrowed) against policy
 * at time now_sec (seconds since the epoch).
 * Returns QB_OK with *out a valid, authorised command; or QB_EINVAL with *out
 * still set to what could be read (id, subject, type... possibly NULL, so the
 * rejection can name the command; each cut to QB_CMD_ID_MAX, source to
 * QB_CMD_ECHO_MAX bytes) and err filled; or QB_ENOMEM (*out NULL).
 * The caller owns *out (qb_command_free).
 * Checks, in this order: size, JSON, CloudEvents attributes (specversion "1.0",
 * id non-empty string of at most 128 bytes, source of at most QB_CMD_ECHO_MAX
 * bytes, type "qmp.command.<name>", subject a valid VM name, time RFC 3339), known command,
 * enabled, allowed, age, signature, then the command's arguments.
 */
int qb_command_parse(const char *buf, size_t len, const struct qb_command_policy *policy,
                     int64_t now_sec, struct qb_command **out, struct qb_command_error *err);

void qb_command_free(struct qb_command *cmd);

/*
 * The fingerprint of what a command asks for: SHA-256 over the compact,
 * key-sorted JSON of {"type", "subject", "data"} (absent data counts as {}),
 * as 64 lower-case hex digits plus NUL in hex (at least 65 bytes). Two
 * messages with one id but different fingerprints are different commands.
 * Returns QB_OK, QB_EINVAL (cmd without type or subject) or QB_ENOMEM.
 */
int qb_command_fingerprint(const struct qb_command *cmd, char *hex, size_t hexlen);

/*
 * Returns how many bytes of text (NUL-terminated) fit in max bytes without
 * splitting a UTF-8 sequence: strlen(text) when it is short enough.
 */
size_t qb_command_utf8_cut(const char *text, size_t max);

/*
 * Computes the signature of a command object (borrowed; its "signature"
 * member, if any, is ignored) into hex (at least 65 bytes). Returns QB_OK,
 * QB_EINVAL (not an object, hexlen too small, or a value the canonical text
 * refuses: a real number) or QB_ENOMEM. Used by the parser and by tests that sign.
 */
int qb_command_sign(const json_t *command, const unsigned char *key, size_t key_len, char *hex,
                    size_t hexlen);

/*
 * Returns a new bridge.command.result data object (caller owns it):
 *   {"command_id", "command", "status": "rejected", "error": {"class","message"},
 *    "steps": []}
 * for a command rejected before any QMP step. cmd may be NULL (unreadable
 * message): command_id and command are then null. command_id is cut to
 * QB_CMD_ID_MAX bytes.
 */
json_t *qb_command_result_rejected(const struct qb_command *cmd,
                                   const struct qb_command_error *err);

#endif
