/*
 * publish.c - the one door for everything published (see publish.h for the
 * numbering rules).
 *
 * The publisher keeps the memos of removed streams, whose numbering a VM of
 * that name continues; which names have an open stream it asks the VM set
 * (the live callback). A retired stream only publishes its leftovers, and
 * moves its memo forward when it does, so the returning VM never reuses a
 * sequence.
 */
#include "publish.h"

#include "envelope.h"
#include "error.h"
#include "log.h"
#include "outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <uthash.h>

/* A removed VM's numbering, for a VM of the same name later. */
struct pub_memo {
    char *name;
    uint64_t epoch;
    uint64_t seq;
    UT_hash_handle hh;
};

/* One allocation: name and key live in text[] (10,000 idle VMs each hold one). */
struct qb_stream {
    struct qb_publisher *p;
    const char *name; /* into text[] */
    const char *key;  /* "<bridge>/<vm>", into text[] */
    uint64_t epoch;
    uint64_t seq;
    bool retired;
    char text[];
};

struct qb_publisher {
    struct qb_outbox *outbox;
    struct qb_envelope_ctx env;
    qb_publish_name_live_cb live;
    void *live_arg;
    struct pub_memo *memos;
    uint64_t bridge_epoch, bridge_seq;
    bool closing;
};

uint64_t qb_publish_now_usec(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

bool qb_stream_name_valid(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > 64)
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

const char *qb_publish_subject(const char *name)
{
    return name && qb_stream_name_valid(name) ? name : "unknown";
}

uint64_t qb_publish_origin_usec(int64_t ts_sec, int32_t ts_usec)
{
    return ts_sec >= 0 ? (uint64_t)ts_sec * 1000000u + (uint64_t)ts_usec : qb_publish_now_usec();
}

int qb_publisher_new(const struct qb_config *cfg, struct qb_outbox *outbox,
                     qb_publish_name_live_cb live, void *live_arg, struct qb_publisher **out)
{
    struct qb_publisher *p = calloc(1, sizeof(*p));

    *out = NULL;
    if (!p)
        return QB_ENOMEM;
    p->outbox = outbox;
    p->live = live;
    p->live_arg = live_arg;
    p->env.bridge_id = cfg->bridge_id;
    p->env.schema_base_uri = cfg->schema_base_uri;
    p->bridge_epoch = qb_publish_now_usec();
    *out = p;
    return QB_OK;
}

void qb_publisher_set_config(struct qb_publisher *p, const struct qb_config *cfg)
{
    p->env.bridge_id = cfg->bridge_id;
    p->env.schema_base_uri = cfg->schema_base_uri;
}

static void pub_memos_free(struct qb_publisher *p)
{
    struct pub_memo *memo, *tmp;

    HASH_ITER(hh, p->memos, memo, tmp)
    {
        HASH_DEL(p->memos, memo);
        free(memo->name);
        free(memo);
    }
}

void qb_publisher_closing(struct qb_publisher *p)
{
    p->closing = true;
    pub_memos_free(p);
}

void qb_publisher_free(struct qb_publisher *p)
{
    if (!p)
        return;
    pub_memos_free(p);
    free(p);
}

int qb_stream_open(struct qb_publisher *p, const char *name, struct qb_stream **out)
{
    size_t nlen = strlen(name), blen = strlen(p->env.bridge_id);
    struct qb_stream *s = calloc(1, sizeof(*s) + (nlen + 1) + (blen + 1 + nlen + 1));
    struct pub_memo *memo = NULL;
    char *key;

    *out = NULL;
    if (!s)
        return QB_ENOMEM;
    s->p = p;
    memcpy(s->text, name, nlen + 1);
    s->name = s->text;
    key = s->text + nlen + 1;
    memcpy(key, p->env.bridge_id, blen);
    key[blen] = '/';
    memcpy(key + blen + 1, name, nlen + 1);
    s->key = key;
    HASH_FIND_STR(p->memos, name, memo);
    if (memo) {
        s->epoch = memo->epoch;
        s->seq = memo->seq;
        HASH_DEL(p->memos, memo);
        free(memo->name);
        free(memo);
    } else if (qb_outbox_recall_sequence(p->outbox, name, &s->epoch, &s->seq)) {
        QB_LOG_INFO(name, "continuing the spooled numbering at sequence %llu",
                    (unsigned long long)s->seq + 1);
    } else {
        s->epoch = qb_publish_now_usec();
        /* never the bridge's own epoch: its envelopes for no VM must not share an id */
        if (s->epoch <= p->bridge_epoch)
            s->epoch = p->bridge_epoch + 1;
    }
    *out = s;
    return QB_OK;
}

void qb_stream_retire(struct qb_stream *s, bool remember)
{
    struct qb_publisher *p = s->p;
    struct pub_memo *memo;

    if (s->retired)
        return;
    s->retired = true;
    if (p->closing || !remember)
        return;
    memo = calloc(1, sizeof(*memo));
    if (!memo || !(memo->name = strdup(s->name))) {
        free(memo);
        return; /* the next epoch still keeps ids unique; only the count restarts */
    }
    memo->epoch = s->epoch;
    memo->seq = s->seq;
    HASH_ADD_KEYPTR(hh, p->memos, memo->name, strlen(memo->name), memo);
}

bool qb_stream_superseded(const struct qb_stream *s)
{
    return s->retired && s->p->live(s->p->live_arg, s->name);
}

void qb_stream_free(struct qb_stream *s)
{
    free(s);
}

uint64_t qb_stream_sequence(const struct qb_stream *s)
{
    return s->seq;
}

const char *qb_stream_key(const struct qb_stream *s)
{
    return s->key;
}

uint64_t qb_stream_next_sequence(struct qb_stream *s)
{
    return ++s->seq;
}

/*
 * A retired stream publishes its closing session's leftovers (its
 * bridge.vm.disconnected, events read before the close), moving its memo
 * forward so the returning VM continues after them; once a new stream of its
 * name is open they are dropped instead. Returns false when s must not
 * publish.
 */
static bool pub_retired_may_publish(struct qb_stream *s, const char *type, uint64_t seq)
{
    struct qb_publisher *p = s->p;
    struct pub_memo *memo = NULL;

    if (qb_stream_superseded(s)) {
        QB_LOG_WARN(s->name,
                    "%s (seq %llu) of the removed session dropped: the VM is back with "
                    "a new session",
                    type, (unsigned long long)seq);
        return false;
    }
    HASH_FIND_STR(p->memos, s->name, memo);
    if (memo && memo->epoch == s->epoch && memo->seq < seq)
        memo->seq = seq;
    return true;
}

/* Builds one envelope of s and hands it to the outbox. Returns QB_OK or a negative code. */
static int pub_send(struct qb_stream *s, enum qb_msg_kind kind, const char *type, uint64_t seq,
                    const char *id_suffix, int64_t ts_sec, int32_t ts_usec, const json_t *data,
                    const char *data_json, size_t data_json_len, uint64_t *origin_usec)
{
    struct qb_publisher *p = s->p;
    struct qb_envelope_in in = {
        .data_json = data_json,
        .data_json_len = data_json_len,
        .vm = s->name,
        .type = type,
        .epoch = s->epoch,
        .sequence = seq,
        .id_suffix = id_suffix,
        .ts_sec = ts_sec,
        .ts_usec = ts_usec,
        .data = data,
    };
    char id[96];
    char *payload = NULL;
    size_t len = 0;
    int rc;

    if (s->retired && !p->closing && !pub_retired_may_publish(s, type, seq))
        return QB_ECLOSED;
    rc = qb_envelope_build(&p->env, &in, &payload, &len);
    if (rc < 0) {
        QB_LOG_ERR(s->name, "cannot build envelope for %s seq %llu: %s", type,
                   (unsigned long long)seq, qb_strerror(rc));
        return rc;
    }
    qb_envelope_format_id(s->epoch, seq, id_suffix, id, sizeof(id));

    struct qb_message msg = {
        .kind = kind,
        .vm = s->name,
        .type = type,
        .id = id,
        .key = s->key,
        .sequence = seq,
        .epoch = s->epoch,
        .payload = payload,
        .len = len,
        .origin_usec = qb_publish_origin_usec(ts_sec, ts_usec),
    };
    qb_outbox_send(p->outbox, &msg);
    if (origin_usec)
        *origin_usec = msg.origin_usec;
    QB_LOG_DEBUG(s->name, "published %s %s seq %llu", kind == QB_MSG_STATE ? "state" : "event",
                 type, (unsigned long long)seq);
    free(payload);
    return QB_OK;
}

uint64_t qb_publish_event(struct qb_stream *s, const char *type, int64_t ts_sec, int32_t ts_usec,
                          const json_t *data, uint64_t *origin_usec)
{
    uint64_t seq = ++s->seq;

    if (pub_send(s, QB_MSG_EVENT, type, seq, NULL, ts_sec, ts_usec, data, NULL, 0, origin_usec) < 0)
        return 0;
    return seq;
}

int qb_publish_state(struct qb_stream *s, enum qb_msg_kind kind, uint64_t seq,
                     const char *id_suffix, int64_t ts_sec, int32_t ts_usec, const json_t *tree,
                     const char *text, size_t text_len)
{
    return pub_send(s, kind, "qmp.vm.state", seq, id_suffix, ts_sec, ts_usec, tree,
                    tree ? NULL : text, tree ? 0 : text_len, NULL);
}

void qb_publish_state_clear(struct qb_stream *s)
{
    char id[96];

    qb_envelope_format_id(s->epoch, s->seq, ".clear", id, sizeof(id));
    struct qb_message msg = {
        .kind = QB_MSG_STATE,
        .vm = s->name,
        .type = "qmp.vm.state",
        .id = id,
        .key = s->key,
        .sequence = s->seq,
        .epoch = s->epoch,
        .payload = "",
        .len = 0,
        .origin_usec = qb_publish_now_usec(),
    };
    qb_outbox_send(s->p->outbox, &msg);
    QB_LOG_DEBUG(s->name, "published the clearing of its retained state (after seq %llu)",
                 (unsigned long long)s->seq);
}

int qb_publish_result(struct qb_publisher *p, struct qb_stream *s, const char *vm_name,
                      const json_t *result, const struct qb_publish_reply *reply)
{
    /*
     * On a removed session's stream (a queued command rejected after the VM
     * went) a result is a leftover like any other: it moves the remembered
     * numbering forward. Once the VM is back with a new session, the old
     * stream must not number at all: the result then goes as a reply only,
     * numbered by the bridge, like a result for no VM.
     */
    if (s && s->retired && !p->closing) {
        if (qb_stream_superseded(s)) {
            if (reply && reply->transport)
                QB_LOG_INFO(s->name, "a command result of the removed session goes as a reply "
                                     "only: the VM is back with a new session");
            else
                QB_LOG_WARN(s->name, "a command result of the removed session is not published: "
                                     "the VM is back with a new session, and the command's "
                                     "transport has no replies");
            s = NULL;
        } else {
            pub_retired_may_publish(s, "bridge.command.result", s->seq + 1);
        }
    }
    const char *name = s ? s->name : qb_publish_subject(vm_name);
    uint64_t epoch = s ? s->epoch : p->bridge_epoch;
    uint64_t seq = s ? ++s->seq : ++p->bridge_seq;
    struct qb_envelope_in in = {
        .vm = name,
        .type = "bridge.command.result",
        .epoch = epoch,
        .sequence = seq,
        .ts_sec = QB_ENVELOPE_TIME_NOW,
        .data = result,
    };
    char id[96], *key = NULL, *payload = NULL;
    size_t len = 0;
    int rc = QB_ENOMEM;

    if (asprintf(&key, "%s/%s", p->env.bridge_id, name) < 0)
        key = NULL;
    if (key && qb_envelope_build(&p->env, &in, &payload, &len) == QB_OK) {
        struct qb_message msg = {
            .kind = QB_MSG_EVENT,
            .vm = name,
            .type = in.type,
            .id = id,
            .key = key,
            .sequence = seq,
            .epoch = epoch,
            .payload = payload,
            .len = len,
        };
        qb_envelope_format_id(epoch, seq, NULL, id, sizeof(id));
        if (s)
            qb_outbox_send(p->outbox, &msg);
        if (reply && reply->transport) {
            msg.kind = QB_MSG_REPLY;
            msg.reply_topic = reply->reply_topic;
            msg.correlation = reply->correlation;
            msg.correlation_len = reply->correlation_len;
            qb_outbox_send_reply(p->outbox, reply->transport, &msg);
        }
        rc = QB_OK;
    } else {
        QB_LOG_ERR(name, "cannot build the command result envelope: out of memory");
    }
    free(key);
    free(payload);
    return rc;
}
