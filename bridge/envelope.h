/*
 * envelope.h - the CloudEvents 1.0 structured-mode envelope of every message.
 *
 *   {"specversion":"1.0","id":"<epoch>-<sequence>","source":"qmp-bridge://<bridge>/<vm>",
 *    "type":"qmp.block.io_error","subject":"<vm>","time":"2026-11-22T02:22:04.123456Z",
 *    "datacontenttype":"application/json","dataschema":"<schema_base_uri><type>.json",
 *    "sequence":"00000000000000000042","partitionkey":"<bridge>/<vm>","bridge":"<bridge>",
 *    "data":{...}}
 *
 * The attributes and the data are written straight into one buffer (strings
 * escaped as JSON strings; data byte for byte as json_dumps with JSON_COMPACT
 * would write it, see envelope.c). id is unique per source
 * and stable: a retried publish carries the same bytes. sequence is the per-VM
 * counter as a 20-digit zero-padded decimal string, so it sorts as text.
 * epoch is the moment (microseconds, hex) the bridge started numbering that
 * VM, which keeps ids unique across bridge restarts.
 */
#ifndef QB_ENVELOPE_H
#define QB_ENVELOPE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The times an envelope can carry: RFC 3339 has four-digit years, so
 * 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z, as seconds since the
 * epoch and microseconds 0-999999. ts_sec QB_ENVELOPE_TIME_NOW (outside that
 * range like any other value there) asks for the bridge's clock.
 */
#define QB_ENVELOPE_TIME_MIN_SEC INT64_C(-62135596800)
#define QB_ENVELOPE_TIME_MAX_SEC INT64_C(253402300799)
#define QB_ENVELOPE_TIME_NOW INT64_MIN

struct qb_envelope_ctx {
    const char *bridge_id;       /* borrowed */
    const char *schema_base_uri; /* borrowed; ends with "/" */
};

struct qb_envelope_in {
    const char *vm;     /* borrowed */
    const char *type;   /* borrowed */
    uint64_t epoch;     /* see above */
    uint64_t sequence;
    const char *id_suffix; /* NULL, or appended to id (".state" for state-topic copies) */
    int64_t ts_sec;        /* event time; QB_ENVELOPE_TIME_NOW (or any time out of range): "now" */
    int32_t ts_usec;
    const json_t *data; /* borrowed; NULL is written as {} */
    /*
     * Borrowed; when not NULL, written verbatim as data instead of `data`: one
     * compact JSON value of data_json_len bytes that the caller already holds
     * as text (the VM state, qb_vm_state_text), so it is not serialised again.
     */
    const char *data_json;
    size_t data_json_len;
};

/*
 * Serialises one envelope. On QB_OK *out is a new NUL-terminated buffer owned
 * by the caller (free()) and *out_len its length without the NUL. Returns
 * QB_ENOMEM or QB_EINVAL (data not serialisable).
 */
int qb_envelope_build(const struct qb_envelope_ctx *ctx, const struct qb_envelope_in *in,
                      char **out, size_t *out_len);

/*
 * Writes the id an envelope with these values carries into buf
 * ("<epoch hex>-<sequence>" + suffix, suffix may be NULL) and returns buf.
 * Transports put it in headers (Kafka ce_id) without parsing the payload.
 */
char *qb_envelope_format_id(uint64_t epoch, uint64_t sequence, const char *id_suffix, char *buf,
                            size_t buflen);

/* Returns true when (sec, usec) is a time an envelope can carry (see QB_ENVELOPE_TIME_MIN_SEC). */
bool qb_envelope_time_valid(int64_t sec, int64_t usec);

/*
 * Formats ts (seconds, microseconds) as RFC 3339 UTC with microseconds into
 * buf (at least 32 bytes): "2026-11-22T02:22:04.123456Z". A time that
 * qb_envelope_time_valid refuses (QB_ENVELOPE_TIME_NOW among them) is
 * replaced by the bridge's clock, so the result always has a four-digit year;
 * the normaliser logs the QMP timestamps this happens to. Returns buf.
 */
char *qb_envelope_format_time(int64_t ts_sec, int32_t ts_usec, char *buf, size_t buflen);

#endif
