/*
 * command_router.c - inbound command messages to their VM (see command_router.h).
 *
 * The order of the checks is the order of trust: what can be decided from the
 * message alone (parse, policy, signature) first, then whether this bridge is
 * the one meant, then whether it already ran, and only then the VM. A message
 * rejected here costs no QMP traffic at all.
 */
#include "command_router.h"

#include "command.h"
#include "command_cache.h"
#include "command_journal.h"
#include "error.h"
#include "log.h"
#include "rate_limit.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

/* Answers to messages that are not authenticated commands: 10 a second, bursts of 20. */
#define ROUTER_UNAUTH_RATE 10.0
#define ROUTER_UNAUTH_BURST 20.0
/*
 * Copies of a command that already ran are answered again with its first
 * result (on the VM's stream and as a reply) at most this often: a copy is
 * cheap to send for whoever saw the signed original, and each answer is an
 * envelope with a sequence number of the VM's. A sender's retries come far
 * below it.
 */
#define ROUTER_DUP_RATE 10.0
#define ROUTER_DUP_BURST 20.0
/* Their log lines (and those of refused Response Topics): 10 a minute, then a count. */
#define ROUTER_LOG_FIRST 10
#define ROUTER_LOG_INTERVAL_MS 60000

/*
 * A duplicate that arrived while its original was still running: it is
 * answered with the original's result, and only then acknowledged, so Kafka
 * never commits past a command that has no result yet.
 */
struct router_waiter {
    struct router_waiter *next;
    char *source;
    char *id;
    char *vm;
    struct qb_transport *transport;
    uint64_t ack_token;
    char *reply_topic;
    void *correlation;
    size_t correlation_len;
};

struct qb_command_router {
    const struct qb_config *cfg;
    struct qb_vm_manager *mgr;
    struct qb_command_cache *cache;
    struct qb_command_journal *journal; /* NULL without bridge.state_directory */
    uint64_t start_usec;                /* wall clock when the router was made */
    uint64_t horizon_usec; /* commands timed before it are refused: their keys may be forgotten */
    struct router_waiter *waiters;
    size_t n_waiters; /* bounded by commands.cache_size */
    struct qb_token_bucket unauth_bucket, dup_bucket;
    struct qb_log_limit unauth_log, reply_topic_log, dup_log;
    struct qb_command_router_stats stats;
    bool stopped;
};

static uint64_t wall_usec(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* The key of an authenticated command (every member set by the parser). */
static struct qb_command_key router_key(const struct qb_command *cmd)
{
    return (struct qb_command_key){.source = cmd->source, .vm = cmd->subject, .id = cmd->id};
}

/*
 * How long after its time a command's key must be kept: while a copy could
 * still pass the age check. One second more because the check compares whole
 * seconds.
 */
static uint64_t router_window_usec(const struct qb_config *cfg)
{
    return ((uint64_t)cfg->commands.max_age_ms + cfg->commands.max_skew_ms) * 1000u + 1000000u;
}

static uint64_t command_time_usec(const struct qb_command *cmd)
{
    return cmd->time_sec < 0 ? 0 : (uint64_t)cmd->time_sec * 1000000u + (uint64_t)cmd->time_usec;
}

static void router_waiter_free(struct router_waiter *w)
{
    free(w->source);
    free(w->id);
    free(w->vm);
    free(w->reply_topic);
    free(w->correlation);
    free(w);
}

/*
 * Parks a duplicate of the running command key (everything copied). Returns
 * QB_OK, QB_EAGAIN when commands.cache_size duplicates wait already (the
 * bound of this list), or QB_ENOMEM (the caller then acknowledges it at once).
 */
static int router_wait(struct qb_command_router *r, const struct qb_command_key *key,
                       const struct qb_command_origin *origin)
{
    struct router_waiter *w;

    if (r->n_waiters >= r->cfg->commands_cache_size)
        return QB_EAGAIN;
    if (!(w = calloc(1, sizeof(*w))))
        return QB_ENOMEM;
    w->source = strdup(key->source);
    w->id = strdup(key->id);
    w->vm = strdup(key->vm);
    w->reply_topic = origin->reply_topic ? strdup(origin->reply_topic) : NULL;
    w->correlation = origin->correlation_len ? malloc(origin->correlation_len) : NULL;
    if (!w->source || !w->id || !w->vm || (origin->reply_topic && !w->reply_topic) ||
        (origin->correlation_len && !w->correlation)) {
        router_waiter_free(w);
        return QB_ENOMEM;
    }
    if (origin->correlation_len)
        memcpy(w->correlation, origin->correlation, origin->correlation_len);
    w->correlation_len = origin->correlation_len;
    w->transport = origin->transport;
    w->ack_token = origin->ack_token;
    w->next = r->waiters;
    r->waiters = w;
    r->n_waiters++;
    return QB_OK;
}

/* Answers (and acknowledges) every duplicate parked for key with result. */
static void router_release_waiters(struct qb_command_router *r, const struct qb_command_key *key,
                                   const json_t *result)
{
    struct router_waiter **pp = &r->waiters;

    while (*pp) {
        struct router_waiter *w = *pp;
        if (strcmp(w->id, key->id) != 0 || strcmp(w->vm, key->vm) != 0 ||
            strcmp(w->source, key->source) != 0) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        r->n_waiters--;
        struct qb_command_origin origin = {
            .transport = w->transport,
            .ack_token = w->ack_token,
            .reply_topic = w->reply_topic,
            .correlation = w->correlation,
            .correlation_len = w->correlation_len,
        };
        QB_LOG_INFO(w->vm, "command %s finished: answering its duplicate with the same result",
                    key->id);
        qb_vm_manager_publish_result(r->mgr, w->vm, result, &origin);
        router_waiter_free(w);
    }
}

void qb_command_router_stop(struct qb_command_router *r)
{
    if (r)
        r->stopped = true;
}

int qb_command_router_new(const struct qb_config *cfg, struct qb_vm_manager *mgr,
                          struct qb_command_router **out)
{
    struct qb_command_router *r = calloc(1, sizeof(*r));
    char err[512];
    int rc;

    *out = NULL;
    if (!r)
        return QB_ENOMEM;
    r->cfg = cfg;
    r->mgr = mgr;
    r->start_usec = wall_usec();
    qb_token_bucket_init(&r->unauth_bucket, ROUTER_UNAUTH_RATE, ROUTER_UNAUTH_BURST,
                         qb_monotonic_ms());
    qb_log_limit_init(&r->unauth_log, ROUTER_LOG_FIRST, ROUTER_LOG_INTERVAL_MS);
    qb_log_limit_init(&r->reply_topic_log, ROUTER_LOG_FIRST, ROUTER_LOG_INTERVAL_MS);
    qb_token_bucket_init(&r->dup_bucket, ROUTER_DUP_RATE, ROUTER_DUP_BURST, qb_monotonic_ms());
    qb_log_limit_init(&r->dup_log, ROUTER_LOG_FIRST, ROUTER_LOG_INTERVAL_MS);
    r->cache = qb_command_cache_new(cfg->commands_cache_size);
    if (!r->cache) {
        free(r);
        return QB_ENOMEM;
    }
    if (cfg->state_directory) {
        rc = qb_command_journal_open(cfg->state_directory, r->cache, router_window_usec(cfg),
                                     r->start_usec, &r->journal, err, sizeof(err));
        if (rc < 0) {
            QB_LOG_ERR(NULL, "cannot open the command journal: %s", err);
            qb_command_cache_free(r->cache);
            free(r);
            return rc;
        }
        r->horizon_usec = qb_command_journal_horizon(r->journal);
    }
    *out = r;
    return QB_OK;
}

void qb_command_router_free(struct qb_command_router *r)
{
    if (!r)
        return;
    /* Shutting down: parked duplicates stay unacknowledged, so Kafka hands them out again. */
    while (r->waiters) {
        struct router_waiter *w = r->waiters;
        r->waiters = w->next;
        router_waiter_free(w);
    }
    qb_command_journal_close(r->journal);
    qb_command_cache_free(r->cache);
    free(r);
}

void qb_command_router_get_stats(const struct qb_command_router *r,
                                 struct qb_command_router_stats *out)
{
    *out = r ? r->stats : (struct qb_command_router_stats){0};
}

/*
 * A queued command is over: remember its first result for duplicates. A
 * rejection changed nothing (the VM was gone, the precondition failed), so a
 * retry with the same id deserves a fresh look instead of the old answer.
 */
static void router_done(void *arg, const struct qb_command *cmd, const json_t *result)
{
    struct qb_command_router *r = arg;
    const char *status = json_string_value(json_object_get(result, "status"));
    struct qb_command_key key = router_key(cmd);

    if (status && strcmp(status, "rejected") == 0) {
        qb_command_cache_forget(r->cache, &key);
        if (r->journal)
            qb_command_journal_forget(r->journal, &key);
    } else {
        qb_command_cache_finish(r->cache, &key, (json_t *)result);
        if (r->journal)
            qb_command_journal_finish(r->journal, &key, result);
    }
    if (!r->stopped)
        router_release_waiters(r, &key, result);
}

/* Answers an authenticated cmd with a rejection, on vm's stream and as a reply. */
static void router_reject(struct qb_command_router *r, const char *vm, const struct qb_command *cmd,
                          const struct qb_command_error *err,
                          const struct qb_command_origin *origin)
{
    json_t *result = qb_command_result_rejected(cmd, err);

    QB_LOG_WARN(vm, "command %s rejected (%s): %s", cmd && cmd->id ? cmd->id : "(no id)", err->cls,
                err->message);
    if (result)
        qb_vm_manager_publish_result(r->mgr, vm, result, origin);
    else if (origin->transport)
        qb_transport_ack(origin->transport, origin->ack_token);
    json_decref(result);
}

/* vm when it is a valid VM name (it came from a topic or key anyone may choose), else NULL. */
static const char *router_vm_name(const char *vm)
{
    static const char ok[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";
    size_t len = vm ? strlen(vm) : 0;

    return len >= 1 && len <= 64 && strspn(vm, ok) == len ? vm : NULL;
}

/*
 * Answers a message that is not an authenticated command (cmd may be NULL).
 * Anyone who can publish on the command topic can send these, so they cost
 * the bridge as little as possible: never a VM's event stream or sequence,
 * never the spool, never a Response Topic; a reply on the default result
 * topic while the token bucket allows, else dropped; counted, and logged
 * within the log limit.
 */
static void router_reject_unauthenticated(struct qb_command_router *r, const char *vm,
                                          const struct qb_command *cmd,
                                          const struct qb_command_error *err,
                                          struct qb_transport *t, uint64_t ack_token)
{
    struct qb_command_origin origin = {.transport = t, .ack_token = ack_token};
    uint64_t now = qb_monotonic_ms(), suppressed;
    bool answer = qb_transport_has_reply_channel(t) && qb_token_bucket_take(&r->unauth_bucket, now);
    json_t *result = answer ? qb_command_result_rejected(cmd, err) : NULL;
    const char *name = router_vm_name(vm);

    if (qb_log_limit_allow(&r->unauth_log, now, &suppressed))
        QB_LOG_WARN(name, "command %s rejected (%s): %s%s", cmd && cmd->id ? cmd->id : "(no id)",
                    err->cls, err->message,
                    result ? "" : " (not answered: over the rate limit or no reply channel)");
    if (suppressed)
        QB_LOG_WARN(NULL, "%llu more rejections of unauthenticated messages were not logged",
                    (unsigned long long)suppressed);
    if (result) {
        r->stats.unauthenticated_answered++;
        qb_vm_manager_publish_reply(r->mgr, name, result, &origin);
        json_decref(result);
        return;
    }
    r->stats.unauthenticated_dropped++;
    qb_transport_ack(t, ack_token);
}

/*
 * Where an authenticated command's answer may go. The MQTT 5 Response Topic
 * travels beside the command, outside what a signature covers: anyone who
 * saw a signed command could publish it again with a Response Topic of their
 * choosing, and the bridge would publish its result there, once per copy. So
 * a Response Topic is honoured only when the command names the same one in
 * its "replytopic" attribute, which the signature covers, or, without
 * commands.hmac_key_file (nothing is authenticated then but by the broker),
 * when it names none; and never inside the bridges' own namespace. Otherwise
 * the reply goes to the default result topic, without Correlation Data
 * (logged within the limit).
 */
static void router_check_reply_topic(struct qb_command_router *r, const char *vm,
                                     const struct qb_command *cmd, struct qb_transport *t,
                                     struct qb_command_origin *origin)
{
    uint64_t now, suppressed;
    const char *why;

    if (!origin->reply_topic)
        return;
    if (cmd->reply_topic ? strcmp(cmd->reply_topic, origin->reply_topic) != 0
                         : r->cfg->commands.hmac_key != NULL)
        why = cmd->reply_topic ? "is not the one the command names (replytopic)"
                               : "is not named by the signed command (replytopic)";
    else if (!qb_transport_reply_topic_allowed(t, origin->reply_topic))
        why = "lies under the bridges' own topics";
    else
        return;
    now = qb_monotonic_ms();
    if (qb_log_limit_allow(&r->reply_topic_log, now, &suppressed))
        QB_LOG_WARN(vm,
                    "command %s: its Response Topic %s: answering on the default result "
                    "topic instead",
                    cmd->id, why);
    if (suppressed)
        QB_LOG_WARN(NULL, "%llu more refused Response Topics were not logged",
                    (unsigned long long)suppressed);
    origin->reply_topic = NULL;
    origin->correlation = NULL;
    origin->correlation_len = 0;
}

/*
 * Without a journal, nothing tells a command that ran before a restart from a
 * new one: only commands timed after the start are accepted. Returns true
 * (err filled) when cmd must be refused for that.
 */
static bool router_before_start(const struct qb_command_router *r, const struct qb_command *cmd,
                                struct qb_command_error *err)
{
    if (r->journal || command_time_usec(cmd) >= r->start_usec)
        return false;
    err->cls = QB_CMD_ERR_EXPIRED;
    snprintf(err->message, sizeof(err->message),
             "time: before the bridge started; without bridge.state_directory the ids of "
             "commands run before a restart are not kept, so older commands are refused");
    return true;
}

/*
 * Runs an authenticated command that is not in the cache: remembers its key
 * (on disk first, with a journal), then queues it on its VM.
 */
static void router_run(struct qb_command_router *r, const char *vm, struct qb_command *cmd,
                       const char *fp, const struct qb_command_origin *origin)
{
    struct qb_command_key key = router_key(cmd);
    struct qb_command_error err = {.cls = QB_CMD_ERR_BUSY};
    struct qb_command_meta meta = {
        .fp = fp,
        .command = qb_cmd_name_str(cmd->name),
        .time_usec = command_time_usec(cmd),
    };
    uint64_t now = wall_usec();
    int rc;

    meta.expires_usec = meta.time_usec + router_window_usec(r->cfg);
    /* Remembered before queueing: its result may be reported at once. */
    rc = qb_command_cache_begin(r->cache, &key, &meta, now);
    if (rc == QB_EBUSY || rc == QB_ENOMEM) {
        snprintf(err.message, sizeof(err.message),
                 rc == QB_EBUSY ? "%zu commands are running or inside their replay window "
                                  "(commands.cache_size): try again later"
                                : "out of memory (%zu commands held)",
                 qb_command_cache_count(r->cache));
        router_reject(r, vm, cmd, &err, origin);
        qb_command_free(cmd);
        return;
    }
    if (r->journal && qb_command_journal_begin(r->journal, &key, &meta) != QB_OK) {
        qb_command_cache_forget(r->cache, &key);
        snprintf(err.message, sizeof(err.message),
                 "cannot record the command in bridge.state_directory: try again later");
        router_reject(r, vm, cmd, &err, origin);
        qb_command_free(cmd);
        return;
    }
    rc = qb_vm_manager_submit_command(r->mgr, cmd, origin, router_done, r, &err);
    if (rc < 0) {
        /* Not run: nothing to protect from a retry with the same key. */
        qb_command_cache_forget(r->cache, &key);
        if (r->journal)
            qb_command_journal_forget(r->journal, &key);
        router_reject(r, vm, cmd, &err, origin);
        qb_command_free(cmd);
    }
}

static void router_inbound(void *arg, struct qb_transport *t, const struct qb_inbound *in,
                           uint64_t ack_token)
{
    struct qb_command_router *r = arg;
    struct qb_command_origin origin = {
        .transport = t,
        .ack_token = ack_token,
        .reply_topic = in->reply_topic,
        .correlation = in->correlation,
        .correlation_len = in->correlation_len,
    };
    struct qb_command_error err = {.cls = QB_CMD_ERR_INVALID};
    struct qb_command *cmd = NULL;
    struct qb_command_key key;
    char fp[65];
    const char *vm;
    json_t *first = NULL;
    int rc;

    if (r->stopped)
        return; /* shutting down: not acknowledged, so Kafka hands it out again */
    rc = qb_command_parse(in->payload, in->len, &r->cfg->commands, (int64_t)time(NULL), &cmd, &err);
    if (rc == QB_ENOMEM || (rc < 0 && !cmd && rc != QB_EINVAL)) {
        QB_LOG_ERR(NULL, "command from %s dropped: %s", qb_transport_name(t), qb_strerror(rc));
        qb_transport_ack(t, ack_token);
        return;
    }
    vm = cmd && cmd->subject ? cmd->subject : in->vm_hint;
    qb_log_command_set(cmd ? cmd->id : NULL);

    if (cmd && cmd->bridge && strcmp(cmd->bridge, r->cfg->bridge_id) != 0) {
        QB_LOG_DEBUG(rc == QB_OK ? vm : NULL, "command %s is for bridge %s: ignored",
                     cmd->id ? cmd->id : "?", cmd->bridge);
        goto ignore;
    }
    if (!qb_transport_has_reply_channel(t) && vm && !qb_vm_manager_has_vm(r->mgr, vm)) {
        /* A shared commands topic: another bridge owns this VM. */
        QB_LOG_DEBUG(rc == QB_OK ? vm : NULL, "command %s for a VM of another bridge: ignored",
                     cmd && cmd->id ? cmd->id : "?");
        goto ignore;
    }
    if (rc < 0) {
        /* Not an authenticated command: it chooses nothing, not even its VM's stream. */
        router_reject_unauthenticated(r, in->vm_hint, cmd, &err, t, ack_token);
        qb_command_free(cmd);
        return;
    }
    router_check_reply_topic(r, vm, cmd, t, &origin);
    if (in->vm_hint && strcmp(in->vm_hint, cmd->subject) != 0) {
        err.cls = QB_CMD_ERR_INVALID;
        snprintf(err.message, sizeof(err.message), "subject: '%s' is not the topic's VM '%s'",
                 cmd->subject, in->vm_hint);
        goto reject;
    }
    if (router_before_start(r, cmd, &err))
        goto reject;
    if (command_time_usec(cmd) < r->horizon_usec) {
        err.cls = QB_CMD_ERR_EXPIRED;
        snprintf(err.message, sizeof(err.message),
                 "time: before the replay window grew (commands.max_age or max_skew): the ids of "
                 "commands that old may have been forgotten, so they are refused");
        goto reject;
    }

    key = router_key(cmd);
    if ((rc = qb_command_fingerprint(cmd, fp, sizeof(fp))) != QB_OK) {
        QB_LOG_ERR(vm, "command %s dropped: %s", cmd->id, qb_strerror(rc));
        goto ignore;
    }
    rc = qb_command_cache_lookup(r->cache, &key, fp, &first);
    if (rc == QB_OK) {
        uint64_t now = qb_monotonic_ms(), suppressed;

        if (!qb_token_bucket_take(&r->dup_bucket, now)) {
            r->stats.duplicates_dropped++;
            if (qb_log_limit_allow(&r->dup_log, now, &suppressed))
                QB_LOG_WARN(vm,
                            "command %s ran before: copy not answered (more than %.0f copies "
                            "a second are answered again)",
                            cmd->id, ROUTER_DUP_RATE);
            if (suppressed)
                QB_LOG_WARN(NULL, "%llu more unanswered copies were not logged",
                            (unsigned long long)suppressed);
            qb_transport_ack(t, ack_token);
            qb_command_free(cmd);
            return;
        }
        r->stats.duplicates_answered++;
        QB_LOG_INFO(vm, "command %s ran before: its first result is published again", cmd->id);
        qb_vm_manager_publish_result(r->mgr, vm, first, &origin);
        qb_command_free(cmd);
        return;
    }
    if (rc == QB_EEXIST) {
        err.cls = QB_CMD_ERR_ID_REUSED;
        snprintf(err.message, sizeof(err.message),
                 "id: already used by source '%.64s' for another command on VM '%s' (type, "
                 "subject or data differ): not run",
                 cmd->source, cmd->subject);
        goto reject;
    }
    if (rc == QB_EAGAIN) {
        rc = router_wait(r, &key, &origin);
        if (rc == QB_OK) {
            QB_LOG_INFO(vm, "command %s is running already: the duplicate gets its result",
                        cmd->id);
            qb_command_free(cmd);
            return;
        }
        if (rc == QB_EAGAIN) {
            err.cls = QB_CMD_ERR_BUSY;
            snprintf(err.message, sizeof(err.message),
                     "id: the command is running, and %zu duplicates wait for results already "
                     "(commands.cache_size)",
                     r->n_waiters);
            goto reject;
        }
        QB_LOG_WARN(vm, "command %s is running already: duplicate dropped (out of memory)",
                    cmd->id);
        goto ignore;
    }
    router_run(r, vm, cmd, fp, &origin);
    return;

reject:
    router_reject(r, vm, cmd, &err, &origin);
    qb_command_free(cmd);
    return;

ignore:
    qb_transport_ack(t, ack_token);
    qb_command_free(cmd);
}

/* Every line logged while an inbound command is handled carries its id (log.h). */
void qb_command_router_inbound(void *arg, struct qb_transport *t, const struct qb_inbound *in,
                               uint64_t ack_token)
{
    struct qb_log_command_scope scope;

    qb_log_command_begin(&scope, NULL);
    router_inbound(arg, t, in, ack_token);
    qb_log_command_end(&scope);
}

/* ---- reload ---- */

void qb_command_router_set_config(struct qb_command_router *r, const struct qb_config *cfg)
{
    uint64_t was, now_window, now = wall_usec();

    if (!r)
        return;
    was = router_window_usec(r->cfg);
    now_window = router_window_usec(cfg);
    r->cfg = cfg;
    if (now_window == was)
        return;
    /*
     * A wider window would let a command pass the age check whose key a
     * narrower one already forgot (evicted from a full cache, or compacted
     * out of the journal): commands older than the old window stay refused.
     */
    if (now_window > was && now > was && now - was > r->horizon_usec) {
        r->horizon_usec = now - was;
        QB_LOG_INFO(NULL,
                    "commands: the replay window grew (%llu s -> %llu s): commands timed before "
                    "the old window are refused",
                    (unsigned long long)(was / 1000000u),
                    (unsigned long long)(now_window / 1000000u));
    }
    if (r->journal)
        qb_command_journal_set_window(r->journal, now_window, r->horizon_usec);
}

void qb_command_router_forget_transport(struct qb_command_router *r, const struct qb_transport *t)
{
    for (struct router_waiter *w = r ? r->waiters : NULL; w; w = w->next)
        if (w->transport == t)
            w->transport = NULL;
}
