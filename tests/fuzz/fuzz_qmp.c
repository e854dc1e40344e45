/*
 * fuzz_qmp.c - libFuzzer harness for everything a QMP peer's bytes reach.
 *
 * The input is what a hostile or broken QEMU (or whatever sits on the other
 * end of the socket) could send. It goes through the same pipeline as in
 * qmp_client.c: the line framer (space/commit, as the libuv read callbacks use
 * it), json_loadb with the client's flags, then per message kind:
 *   greeting ("QMP")       a new session: normaliser memory forgotten
 *   reply ("return"/"error") completes a held event (qb_normalize_resolve), or
 *                          is kept as a connect-time query answer; every
 *                          fourth kind rebuilds the state snapshot
 *                          (qb_vm_state_from_queries) and reseeds the normaliser
 *   event                  qb_normalize_event, then envelope + vm_state apply
 * Every finished event and every changed state is serialised by
 * qb_envelope_build. An event's bytes must parse back as one JSON object (that
 * is what consumers receive, and the timestamp in it came from the peer); a
 * state's attributes are all the harness's own, so re-parsing it, which would
 * double the cost of a run, is skipped.
 *
 * Input layout: byte 0 picks how the stream is cut into reads and the framer's
 * line cap (see struct fz_reads); bytes 1.. are the stream. A seed made from a
 * captured transcript is therefore one control byte followed by QEMU's bytes.
 *
 * Framing or parse errors end the "session" as in the client (the framer drops
 * what it holds); the harness then carries on with the rest of the input as a
 * reconnect would, so one input can cover several sessions.
 */
#include "envelope.h"
#include "error.h"
#include "log.h"
#include "normalize.h"
#include "qmp_framer.h"
#include "vm_state.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Connect-time queries, in the order the client sends them; a reply's id picks its slot. */
enum { FZ_Q_STATUS, FZ_Q_BLOCK, FZ_Q_JOBS, FZ_Q_COLO, FZ_Q_UUID, FZ_Q__COUNT };

/* A query never needs more answers than this; more means resolve would loop forever. */
#define FZ_MAX_RESOLVE_STEPS 16

struct fz_session {
    struct qb_norm_vm *vm;
    json_t *greeting;              /* the "QMP" object of the last greeting, owned */
    json_t *replies[FZ_Q__COUNT];  /* last "return" per query slot, owned */
    json_t *state;                 /* qmp.vm.state data, owned */
    struct qb_norm_event pending;  /* an event waiting for a query answer */
    bool has_pending;
    uint64_t sequence;
};

/* How the stream is cut into reads: from byte 0 of the input. */
struct fz_reads {
    uint32_t rng;     /* xorshift32 state */
    unsigned kind;    /* 0 whole, 1 single bytes, 2 up to 16, 3 up to 4096 */
    size_t max_line;  /* framer cap: small so oversize lines are reachable */
};

/* QMP event names the harness excludes, as an events.exclude config would. */
static const char *const fz_exclude[] = {"RTC_CHANGE", "NIC_RX_FILTER_CHANGED"};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* Warnings about odd input are expected by the thousand; printing them is just slow. */
    qb_log_set_level(QB_LOG_ERROR);
    return 0;
}

static uint32_t fz_next(struct fz_reads *r)
{
    uint32_t x = r->rng;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return r->rng = x;
}

static size_t fz_chunk(struct fz_reads *r)
{
    switch (r->kind) {
    case 0:
        return SIZE_MAX;
    case 1:
        return 1;
    case 2:
        return 1 + fz_next(r) % 16;
    default:
        return 1 + fz_next(r) % 4096;
    }
}

/*
 * Serialises one envelope and, when reparse is set, checks that it is one JSON
 * object again. data is borrowed. Aborts on an invariant failure so libFuzzer
 * reports it.
 */
static void fz_emit(struct fz_session *s, const char *type, int64_t ts_sec, int32_t ts_usec,
                    const json_t *data, bool reparse)
{
    static const struct qb_envelope_ctx ctx = {
        .bridge_id = "fuzz-bridge",
        .schema_base_uri = "file:///usr/share/qmp-bridge/schema/v1/",
    };
    struct qb_envelope_in in = {
        .vm = "vm1",
        .type = type,
        .epoch = UINT64_C(0x62a1b2c3d4e5f),
        .sequence = ++s->sequence,
        .id_suffix = (s->sequence & 1) ? NULL : ".state",
        .ts_sec = ts_sec,
        .ts_usec = ts_usec,
        .data = data,
    };
    json_t *back;
    char *out = NULL;
    size_t len = 0;
    int rc = qb_envelope_build(&ctx, &in, &out, &len);

    if (rc == QB_ENOMEM)
        return;
    /* Everything here came out of jansson's parser, so it must be serialisable. */
    if (rc != QB_OK || out == NULL || len < 2 || strlen(out) != len || out[0] != '{' ||
        out[len - 1] != '}')
        abort();
    if (reparse) {
        back = json_loadb(out, len, JSON_REJECT_DUPLICATES, NULL);
        if (back == NULL || !json_is_object(back))
            abort();
        json_decref(back);
    }
    free(out);
}

/* Publishes a complete event, folds it into the state, and releases it. */
static void fz_complete(struct fz_session *s, struct qb_norm_event *ev)
{
    if (ev->type == NULL)
        abort();
    fz_emit(s, ev->type, ev->ts_sec, ev->ts_usec, ev->data, true);
    if (s->state && qb_vm_state_apply(s->state, ev))
        fz_emit(s, "qmp.vm.state", -1, 0, s->state, false);
    qb_norm_event_clear(ev);
}

/* Feeds one answer (status, borrowed reply) to the held event; publishes it once complete. */
static void fz_resolve(struct fz_session *s, int status, const json_t *reply)
{
    qb_normalize_resolve(s->vm, &s->pending, status, reply);
    if (s->pending.need == QB_NORM_QUERY_NONE) {
        s->has_pending = false;
        fz_complete(s, &s->pending);
    } else if (qb_norm_query_command(s->pending.need) == NULL) {
        abort();
    }
}

/* The queries of a held event all fail (timeout, closed session): it must still complete. */
static void fz_fail_pending(struct fz_session *s, int status)
{
    for (int i = 0; s->has_pending; i++) {
        if (i == FZ_MAX_RESOLVE_STEPS)
            abort();
        fz_resolve(s, status, NULL);
    }
}

/* Rebuilds the snapshot from the answers so far, publishes it and reseeds the normaliser. */
static void fz_snapshot(struct fz_session *s)
{
    json_t *state = qb_vm_state_from_queries(
        s->greeting ? json_object_get(s->greeting, "QMP") : NULL, s->replies[FZ_Q_STATUS],
        s->replies[FZ_Q_BLOCK], s->replies[FZ_Q_JOBS], s->replies[FZ_Q_COLO],
        s->replies[FZ_Q_UUID]);

    if (state == NULL)
        return;
    json_decref(s->state);
    s->state = state;
    fz_emit(s, "qmp.vm.state", -1, 0, s->state, false);
    qb_norm_vm_reset(s->vm, s->state);
}

static void fz_on_reply(struct fz_session *s, json_t *msg)
{
    json_t *ret = json_object_get(msg, "return");
    json_t *id = json_object_get(msg, "id");
    size_t slot;

    if (s->has_pending) {
        if (ret)
            fz_resolve(s, QB_OK, ret);
        else
            fz_resolve(s, QB_EQMP, json_object_get(msg, "error"));
        return;
    }
    if (ret == NULL)
        return;
    slot = json_is_integer(id) ? (size_t)json_integer_value(id) % FZ_Q__COUNT : FZ_Q_STATUS;
    json_decref(s->replies[slot]);
    s->replies[slot] = json_incref(ret);
    if (slot == FZ_Q_COLO)
        fz_snapshot(s);
}

static void fz_on_event(struct fz_session *s, json_t *msg)
{
    struct qb_norm_event ev;
    int rc;

    /* The client holds later events back while a query runs; here the query just fails. */
    fz_fail_pending(s, QB_ETIMEDOUT);
    memset(&ev, 0, sizeof(ev));
    rc = qb_normalize_event(s->vm, msg, fz_exclude, sizeof(fz_exclude) / sizeof(fz_exclude[0]),
                            &ev);
    if (rc == 0 || rc == QB_EPARSE || rc == QB_ENOMEM)
        return;
    if (rc != 1)
        abort();
    if (ev.need == QB_NORM_QUERY_NONE) {
        fz_complete(s, &ev);
        return;
    }
    if (qb_norm_query_command(ev.need) == NULL)
        abort();
    s->pending = ev;
    s->has_pending = true;
}

/* Ends a QMP session (close, reconnect): held events complete, memory is forgotten. */
static void fz_session_end(struct fz_session *s)
{
    fz_fail_pending(s, QB_ECLOSED);
    qb_norm_vm_reset(s->vm, NULL);
}

/* Framer callback, shaped like qb_qmp_on_line: one line, one parse. */
static int fz_on_line(void *arg, const char *line, size_t len)
{
    struct fz_session *s = arg;
    json_error_t jerr;
    json_t *msg = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = QB_OK;

    if (msg == NULL)
        return QB_EPARSE;
    if (!json_is_object(msg)) {
        rc = QB_EPROTO;
    } else if (json_object_get(msg, "event")) {
        fz_on_event(s, msg);
    } else if (json_object_get(msg, "return") || json_object_get(msg, "error")) {
        fz_on_reply(s, msg);
    } else if (json_object_get(msg, "QMP")) {
        fz_session_end(s);
        json_decref(s->greeting);
        s->greeting = json_incref(msg);
    } else {
        rc = QB_EPROTO;
    }
    json_decref(msg);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_session s;
    struct fz_reads reads;
    struct qb_framer framer;
    const char *p;
    size_t left;

    if (size == 0)
        return 0;
    memset(&s, 0, sizeof(s));
    reads.kind = data[0] & 3;
    reads.rng = ((uint32_t)data[0] + 1) * UINT32_C(2654435761);
    reads.max_line = (data[0] & 0x80) ? 1024 : 64 * 1024;
    p = (const char *)data + 1;
    left = size - 1;

    if (!(s.vm = qb_norm_vm_new()))
        return 0;
    s.state = qb_vm_state_from_queries(NULL, NULL, NULL, NULL, NULL, NULL);
    qb_norm_vm_reset(s.vm, NULL);
    qb_framer_init(&framer, reads.max_line);

    while (left > 0) {
        size_t want = fz_chunk(&reads), room, n;
        char *area;
        int rc;

        /* libuv asks for 64 KiB per read; the framer may offer less near its cap. */
        rc = qb_framer_space(&framer, 64 * 1024, &area, &room);
        if (rc == QB_ENOMEM)
            break;
        if (rc == QB_OK) {
            if (room == 0)
                abort();
            n = want < room ? want : room;
            n = n < left ? n : left;
            memcpy(area, p, n);
            p += n;
            left -= n;
            rc = qb_framer_commit(&framer, n, fz_on_line, &s);
        }
        if (rc < 0) {
            /* The client closes the session here; the rest of the input is the next one. */
            qb_framer_reset(&framer);
            fz_session_end(&s);
        }
        /* Whatever stays held must fit the cap, or commit should have refused it. */
        if (framer.len > framer.max_line + 1 || framer.len > framer.cap)
            abort();
    }

    fz_session_end(&s);
    qb_framer_reset(&framer);
    json_decref(s.greeting);
    for (size_t i = 0; i < FZ_Q__COUNT; i++)
        json_decref(s.replies[i]);
    json_decref(s.state);
    qb_norm_vm_free(s.vm);
    return 0;
}
