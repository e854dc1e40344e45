/*
 * source_qmp.c - the QMP source: one QMP session per VM, behind the seam of source.h.
 *
 * A link is one VM's QMP client plus what decides when it has a session:
 * for a configured or discovered VM the reconnect timer and its back-off, and
 * a place in qmp.max_connecting's connect slots; for a listen VM the forget
 * timer, and sessions that QEMU opened to qmp.listen (named by
 * source_listen.c) attached to it one after another. The VM manager above
 * sees none of this: it gets on_up / on_event / on_closed and asks for
 * queries and commands.
 *
 * Connect slots: a link holds one from its connect attempt until the manager
 * says the snapshot is published (settled) or the attempt ends. When every
 * slot is taken, links wait in a FIFO and are started, oldest first, as slots
 * come back. This keeps a reconnect storm of thousands of VMs (a host
 * restart, a network blip) from opening every socket and running every
 * snapshot at once.
 */
#include "source_qmp.h"

#include "address.h"
#include "command_exec.h"
#include "error.h"
#include "fair_reads.h"
#include "log.h"
#include "qmp_client.h"
#include "rate_limit.h"
#include "source_listen.h"

#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uthash.h>

/* Sessions that stayed up this long reset the back-off to its initial delay. */
#define QB_QMP_STABLE_MS 10000

struct qb_source_qmp;

struct qmp_link {
    struct qb_source_link head;
    struct qb_source_qmp *src;
    const char *name; /* into text[]: one allocation less for each of 10,000 idle VMs */
    char *address;
    struct qb_qmp_client *qmp; /* NULL for a listen VM before its first session */
    uv_timer_t timer;          /* reconnect, or (listen VM) forget */
    bool listen;
    bool released;
    bool timer_closed;
    bool up;          /* on_up was called for the current session */
    bool asked_close; /* the manager closed this session: no success, however long it ran */
    bool has_slot;    /* counts against qmp.max_connecting until settled or closed */
    bool slot_waiting;
    uint64_t ready_at; /* uv_now when the session came up */
    uint32_t attempts; /* failed connects since the last stable session */
    struct qmp_link *slot_next;
    struct listen_entry *listen_entry; /* listen VMs only: its entry in the index by name */
    char text[];
};

/* A listen VM in the source's index by name (apart, so configured VMs carry no hash entry). */
struct listen_entry {
    struct qmp_link *link;
    UT_hash_handle hh; /* keyed by link->name */
};

struct qb_source_qmp {
    struct qb_source head;
    uv_loop_t *loop;
    const struct qb_config *cfg;
    const struct qb_source_host *host;
    void *host_arg;
    struct qb_qmp_options opts; /* owns opts.fair */
    struct qb_source_listen *listen;
    struct listen_entry *listen_links;
    size_t n_listen; /* listen VMs (bounded by qmp.listen_max_vms) */
    size_t n_connecting;
    struct qmp_link *slot_head, *slot_tail;
    size_t slots_since_trim; /* slots given back since the heap was last trimmed */
    uint64_t rng;
    struct qb_source_stats stats;
    bool closing;
};

#define LINK(l) ((struct qmp_link *)(l))
#define CLINK(l) ((const struct qmp_link *)(l))

static void link_reconnect_cb(uv_timer_t *t);

/* The next reconnect delay of l: exponential back-off with equal jitter. */
static uint32_t link_backoff_ms(struct qmp_link *l)
{
    const struct qb_config *cfg = l->src->cfg;

    return (uint32_t)qb_backoff_ms(cfg->qmp_reconnect_initial_ms, cfg->qmp_reconnect_max_ms,
                                   l->attempts, &l->src->rng);
}

/* ---- connect slots (qmp.max_connecting) ---------------------------------- */

/* Takes l off the wait list for a connect slot, if it is on it. */
static void slot_unqueue(struct qmp_link *l)
{
    struct qb_source_qmp *s = l->src;
    struct qmp_link **pp = &s->slot_head, *prev = NULL;

    if (!l->slot_waiting)
        return;
    while (*pp && *pp != l) {
        prev = *pp;
        pp = &(*pp)->slot_next;
    }
    if (*pp) {
        *pp = l->slot_next;
        if (s->slot_tail == l)
            s->slot_tail = prev;
    }
    l->slot_next = NULL;
    l->slot_waiting = false;
}

/*
 * Hands free slots to the links that waited longest, in order. They connect
 * from a timer of 0 ms, never from inside the caller (a callback that freed a
 * slot, or a reload that raised qmp.max_connecting).
 */
static void slots_grant(struct qb_source_qmp *s)
{
    while (s->slot_head && s->n_connecting < s->cfg->qmp_max_connecting) {
        struct qmp_link *next = s->slot_head;

        s->slot_head = next->slot_next;
        if (!s->slot_head)
            s->slot_tail = NULL;
        next->slot_next = NULL;
        next->slot_waiting = false;
        next->has_slot = true;
        s->n_connecting++;
        uv_timer_start(&next->timer, link_reconnect_cb, 0, 0);
    }
}

/* Gives l's slot back (if it holds one) and lets waiting links go. */
static void slot_release(struct qmp_link *l)
{
    struct qb_source_qmp *s = l->src;

    if (!l->has_slot)
        return;
    l->has_slot = false;
    s->n_connecting--;
    /*
     * After a burst of (re)connects (start-up, a reconnect storm) the heap is
     * full of freed handshake and query-reply memory between live per-VM
     * allocations; glibc only returns the top of the heap by itself: after a
     * 10,000-VM storm that is +46 MB of RSS without the trim, +0.2 MB with it.
     */
    if (++s->slots_since_trim >= 256 && s->n_connecting == 0 && !s->slot_head) {
        s->slots_since_trim = 0;
        malloc_trim(0);
    }
    slots_grant(s);
}

/* Starts a connect attempt, or queues l for a slot when all are taken. */
static void link_connect(struct qmp_link *l)
{
    struct qb_source_qmp *s = l->src;
    int rc;

    if (!l->has_slot) {
        if (s->n_connecting >= s->cfg->qmp_max_connecting) {
            if (!l->slot_waiting) {
                l->slot_waiting = true;
                if (s->slot_tail)
                    s->slot_tail->slot_next = l;
                else
                    s->slot_head = l;
                s->slot_tail = l;
            }
            return;
        }
        l->has_slot = true;
        s->n_connecting++;
    }
    /* A new session must read its greeting and snapshot replies whatever the pressure. */
    qb_qmp_client_resume_reading(l->qmp);
    rc = qb_qmp_client_connect(l->qmp, l->address);
    if (rc < 0) {
        QB_LOG_ERR(l->name, "cannot connect to '%s': %s", l->address, qb_strerror(rc));
        slot_release(l);
        uv_timer_start(&l->timer, link_reconnect_cb, link_backoff_ms(l), 0);
    }
}

static void link_reconnect_cb(uv_timer_t *t)
{
    link_connect(t->data);
}

/* ---- the link's life ----------------------------------------------------- */

static void link_timer_closed(uv_handle_t *h)
{
    struct qmp_link *l = h->data;

    l->timer_closed = true;
    if (l->head.cb && l->head.cb->on_released)
        l->head.cb->on_released(l->head.cb_arg);
    free(l->address);
    free(l);
}

/* Frees a released link once its session is IDLE: client now, the rest after its timer closed. */
static void link_maybe_free(struct qmp_link *l)
{
    if (!l->released)
        return;
    if (l->qmp && qb_qmp_client_state(l->qmp) != QB_QMP_IDLE)
        return; /* on_closed will come back here */
    if (l->qmp) {
        struct qb_qmp_client *c = l->qmp;

        l->qmp = NULL;
        qb_qmp_client_free(c);
    }
    if (!uv_is_closing((uv_handle_t *)&l->timer))
        uv_close((uv_handle_t *)&l->timer, link_timer_closed);
}

/*
 * The forget timer of a listen VM: QEMU has not come back, so the VM goes
 * (on_gone), instead of staying until the bridge restarts.
 */
static void link_forget_cb(uv_timer_t *t)
{
    struct qmp_link *l = t->data;

    if (l->qmp && qb_qmp_client_state(l->qmp) != QB_QMP_IDLE)
        return; /* a session attached meanwhile (it stops this timer; this is a safety net) */
    QB_LOG_INFO(l->name,
                "forgotten: QEMU has not connected again within qmp.listen_forget_after "
                "(%u ms); its retained state is cleared",
                l->src->cfg->qmp_listen_forget_after_ms);
    l->src->stats.listen_forgotten++;
    l->head.cb->on_gone(l->head.cb_arg, "not connected again within qmp.listen_forget_after");
}

static void link_on_ready(struct qb_qmp_client *c, void *arg)
{
    struct qmp_link *l = arg;

    (void)c;
    l->up = true;
    l->asked_close = false;
    l->ready_at = uv_now(l->src->loop);
    l->head.cb->on_up(l->head.cb_arg, NULL);
}

static void link_on_event(struct qb_qmp_client *c, json_t *msg, void *arg)
{
    struct qmp_link *l = arg;
    struct qb_source_event ev = {.msg = msg};

    ev.raw = qb_qmp_client_event_line(c, &ev.raw_len);
    l->head.cb->on_event(l->head.cb_arg, &ev);
}

static void link_on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct qmp_link *l = arg;
    struct qb_source_qmp *s = l->src;
    uint64_t now = uv_now(s->loop);

    (void)c;
    if (l->up) {
        l->up = false;
        l->head.cb->on_closed(l->head.cb_arg, err, reason);
        /* A session the manager closed (it held too much) was no success, however long it ran. */
        if (now - l->ready_at >= QB_QMP_STABLE_MS && !l->asked_close)
            l->attempts = 0;
    } else if (l->attempts == 0) {
        s->stats.connect_failed++;
        QB_LOG_WARN(l->name, "cannot connect to %s: %s (retrying with back-off)", l->address,
                    reason ? reason : qb_strerror(err));
    } else {
        s->stats.connect_failed++;
        QB_LOG_DEBUG(l->name, "connect attempt %u to %s failed: %s", l->attempts + 1, l->address,
                     reason ? reason : qb_strerror(err));
    }
    l->ready_at = 0;
    l->asked_close = false;
    slot_release(l);
    if (l->released || s->closing) {
        link_maybe_free(l);
        return;
    }
    if (l->listen) {
        uint32_t after = s->cfg->qmp_listen_forget_after_ms;

        /* Nothing to connect to: QEMU's chardev reconnects to qmp.listen by itself. */
        QB_LOG_INFO(l->name, "waiting for QEMU to connect again");
        if (after > 0)
            uv_timer_start(&l->timer, link_forget_cb, after, 0);
        return;
    }
    uint32_t delay = link_backoff_ms(l);
    if (l->attempts < 32)
        l->attempts++;
    QB_LOG_DEBUG(l->name, "reconnecting in %u ms (attempt %u)", delay, l->attempts);
    uv_timer_start(&l->timer, link_reconnect_cb, delay, 0);
}

static const struct qb_qmp_callbacks link_qmp_callbacks = {
    .on_ready = link_on_ready,
    .on_event = link_on_event,
    .on_closed = link_on_closed,
};

/* A new link for VM name at address (both copied); with_client: an IDLE session of its own. */
static int link_new(struct qb_source_qmp *s, const char *name, const char *address,
                    bool with_client, struct qmp_link **out)
{
    size_t nlen = strlen(name);
    struct qmp_link *l = calloc(1, sizeof(*l) + nlen + 1);
    int rc = QB_ENOMEM;

    *out = NULL;
    if (!l)
        return QB_ENOMEM;
    l->head.ops = &qb_source_qmp_ops;
    l->src = s;
    memcpy(l->text, name, nlen + 1);
    l->name = l->text;
    l->address = strdup(address);
    if (!l->address)
        goto fail;
    if (with_client) {
        rc = qb_qmp_client_new(s->loop, name, &s->opts, &link_qmp_callbacks, l, &l->qmp);
        if (rc < 0)
            goto fail;
    }
    uv_timer_init(s->loop, &l->timer);
    l->timer.data = l;
    *out = l;
    return QB_OK;

fail:
    free(l->address);
    free(l);
    return rc;
}

/* ---- listen mode: a named newcomer joins its VM --------------------------- */

/* Moves a READY session named name into the listen VM of that name (made if new), or refuses it. */
static bool src_named(void *arg, struct qb_qmp_client *qmp, char **address, const char *name,
                      pid_t pid, struct qb_held_events *events)
{
    struct qb_source_qmp *s = arg;
    struct listen_entry *entry = NULL;
    struct qmp_link *l = NULL;
    struct qb_qmp_client *old;

    HASH_FIND_STR(s->listen_links, name, entry);
    if (entry)
        l = entry->link;
    if (l && l->qmp && qb_qmp_client_state(l->qmp) != QB_QMP_IDLE) {
        QB_LOG_WARN(name, "refusing the QMP connection from pid %d: VM '%s' %s %s", (int)pid, name,
                    "already has a live session from", l->address);
        qb_qmp_client_disconnect(qmp, "refused: a VM of that name is already served");
        return false;
    }
    if (!l) {
        const char *at = s->host->vm_lookup(s->host_arg, name);

        if (at) {
            QB_LOG_WARN(name, "refusing the QMP connection from pid %d: VM '%s' %s %s", (int)pid,
                        name, "is configured at", at);
            qb_qmp_client_disconnect(qmp, "refused: a VM of that name is already served");
            return false;
        }
        if (s->n_listen >= s->cfg->qmp_listen_max_vms) {
            /* every name QEMU reports would otherwise cost an entry and a retained topic */
            s->stats.listen_refused++;
            QB_LOG_WARN(name,
                        "refusing the QMP connection from pid %d: %zu listen VMs exist "
                        "(qmp.listen_max_vms %zu); nothing is published for it",
                        (int)pid, s->n_listen, s->cfg->qmp_listen_max_vms);
            qb_qmp_client_disconnect(qmp, "refused: qmp.listen_max_vms listen VMs exist");
            return false;
        }
        if (link_new(s, name, *address, false, &l) < 0 ||
            s->host->vm_appeared(s->host_arg, name, &l->head) < 0) {
            QB_LOG_ERR(name, "out of memory adding the VM of pid %d", (int)pid);
            if (l) {
                l->released = true;
                link_maybe_free(l);
            }
            qb_qmp_client_disconnect(qmp, "out of memory");
            return false;
        }
        l->listen = true;
        if ((entry = calloc(1, sizeof(*entry)))) {
            entry->link = l;
            l->listen_entry = entry;
            HASH_ADD_KEYPTR(hh, s->listen_links, l->name, strlen(l->name), entry);
        } else {
            QB_LOG_WARN(name,
                        "out of memory indexing the listen VM: a later session of "
                        "pid %d's name is not matched to it",
                        (int)pid);
        }
        s->n_listen++;
    }
    if (qb_qmp_client_set_owner(qmp, name, &link_qmp_callbacks, l) < 0) {
        qb_qmp_client_disconnect(qmp, "out of memory");
        return false;
    }
    uv_timer_stop(&l->timer); /* its forget timer: QEMU is back */
    old = l->qmp;
    l->qmp = qmp;
    if (old)
        qb_qmp_client_free(old);
    free(l->address);
    l->address = *address;
    *address = NULL;
    l->up = true;
    l->asked_close = false;
    l->ready_at = uv_now(s->loop);
    /* Events that came before the name go first, after the snapshot like any others. */
    l->head.cb->on_up(l->head.cb_arg, events);
    return true;
}

static void src_room(void *arg, bool room)
{
    struct qb_source_qmp *s = arg;

    if (s->host->room)
        s->host->room(s->host_arg, room);
}

static const struct qb_source_listen_cbs src_listen_cbs = {
    .named = src_named,
    .room = src_room,
};

/* ---- the source's ops ---------------------------------------------------- */

static int src_create(uv_loop_t *loop, const struct qb_config *cfg,
                      const struct qb_source_host *host, void *host_arg, struct qb_source **out)
{
    struct qb_source_qmp *s = calloc(1, sizeof(*s));

    *out = NULL;
    if (!s)
        return QB_ENOMEM;
    s->head.ops = &qb_source_qmp_ops;
    s->loop = loop;
    s->cfg = cfg;
    s->host = host;
    s->host_arg = host_arg;
    s->opts.max_line_bytes = cfg->qmp_max_line_bytes;
    s->opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    s->rng = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    if (qb_fair_reads_new(loop, &s->opts.fair) < 0 ||
        qb_source_listen_new(loop, cfg, &s->opts, &s->stats, &src_listen_cbs, s, &s->listen) < 0) {
        qb_fair_reads_close(s->opts.fair);
        free(s);
        return QB_ENOMEM;
    }
    *out = &s->head;
    return QB_OK;
}

static void src_set_config(struct qb_source *src, const struct qb_config *cfg)
{
    struct qb_source_qmp *s = (struct qb_source_qmp *)src;

    s->cfg = cfg;
    /* sessions copy these when they are created: they apply to VMs added from now on */
    s->opts.max_line_bytes = cfg->qmp_max_line_bytes;
    s->opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    if (s->listen)
        qb_source_listen_set_config(s->listen, cfg);
    /* a raised max_connecting lets links that wait for a slot go now, from a 0 ms timer */
    slots_grant(s);
}

static void src_stats(const struct qb_source *src, struct qb_source_stats *out)
{
    const struct qb_source_qmp *s = (const struct qb_source_qmp *)src;

    out->connect_failed += s->stats.connect_failed;
    out->held_over_events += s->stats.held_over_events;
    out->held_over_bytes += s->stats.held_over_bytes;
    out->listen_refused += s->stats.listen_refused;
    out->listen_forgotten += s->stats.listen_forgotten;
    out->connecting += s->n_connecting;
    for (const struct qmp_link *l = s->slot_head; l; l = l->slot_next)
        out->slot_waiting++;
}

static void src_close(struct qb_source *src)
{
    struct qb_source_qmp *s = (struct qb_source_qmp *)src;

    s->closing = true;
    qb_source_listen_free(s->listen); /* not named yet: nothing was published for them */
    s->listen = NULL;
}

static void src_free(struct qb_source *src)
{
    struct qb_source_qmp *s = (struct qb_source_qmp *)src;

    qb_source_listen_free(s->listen);
    qb_fair_reads_close(s->opts.fair); /* every session is gone: nothing is parked */
    free(s);
}

static int src_open(struct qb_source *src, const char *name, const char *address,
                    struct qb_source_link **out)
{
    struct qb_source_qmp *s = (struct qb_source_qmp *)src;
    struct qb_address addr;
    struct qmp_link *l;
    int rc;

    *out = NULL;
    if (qb_address_parse(address, QB_ADDRESS_QMP, &addr) != QB_OK)
        return QB_EINVAL;
    rc = link_new(s, name, address, true, &l);
    if (rc < 0)
        return rc;
    *out = &l->head;
    return QB_OK;
}

static int src_adopt(struct qb_source *src, int fd, pid_t pid, uid_t uid)
{
    struct qb_source_qmp *s = (struct qb_source_qmp *)src;

    if (s->closing || !s->listen) {
        close(fd);
        return QB_ECLOSED;
    }
    return qb_source_listen_adopt(s->listen, fd, pid, uid);
}

static void link_start(struct qb_source_link *link)
{
    link_connect(LINK(link));
}

static void link_release(struct qb_source_link *link, const char *why)
{
    struct qmp_link *l = LINK(link);

    l->released = true;
    if (l->listen) {
        if (l->listen_entry) {
            HASH_DEL(l->src->listen_links, l->listen_entry);
            free(l->listen_entry);
            l->listen_entry = NULL;
        }
        l->src->n_listen--;
    }
    slot_unqueue(l);
    uv_timer_stop(&l->timer);
    if (!l->qmp || qb_qmp_client_state(l->qmp) == QB_QMP_IDLE) {
        slot_release(l); /* granted a slot, but its connect timer will not fire now */
        link_maybe_free(l);
    } else {
        qb_qmp_client_disconnect(l->qmp, why);
    }
}

static void link_disconnect(struct qb_source_link *link, const char *why)
{
    struct qmp_link *l = LINK(link);

    l->asked_close = true;
    if (l->qmp)
        qb_qmp_client_disconnect(l->qmp, why);
}

static void link_settled(struct qb_source_link *link)
{
    slot_release(LINK(link));
}

static void link_pause(struct qb_source_link *link, bool paused)
{
    struct qmp_link *l = LINK(link);

    if (!l->qmp)
        return;
    if (paused)
        qb_qmp_client_pause_reading(l->qmp);
    else
        qb_qmp_client_resume_reading(l->qmp);
}

/* One query in flight: whom to answer. */
struct link_query {
    qb_source_answer_cb cb;
    void *arg;
};

static void link_query_reply(struct qb_qmp_client *c, int status, json_t *reply, void *arg)
{
    struct link_query q = *(struct link_query *)arg;

    (void)c;
    free(arg);
    q.cb(q.arg, status, reply);
}

static int link_query(struct qb_source_link *link, enum qb_source_query which,
                      qb_source_answer_cb cb, void *arg)
{
    struct qmp_link *l = LINK(link);
    struct link_query *q;
    int rc;

    if (!l->qmp)
        return QB_ECLOSED;
    q = malloc(sizeof(*q));
    if (!q)
        return QB_ENOMEM;
    q->cb = cb;
    q->arg = arg;
    rc = qb_qmp_client_execute(l->qmp, qb_source_query_name(which), NULL,
                               l->src->cfg->qmp_command_timeout_ms, link_query_reply, q);
    if (rc < 0)
        free(q);
    return rc;
}

static int link_command(struct qb_source_link *link, const struct qb_command *cmd,
                        qb_source_result_cb done, void *arg)
{
    struct qmp_link *l = LINK(link);
    const struct qb_config *cfg = l->src->cfg;

    if (!l->qmp)
        return QB_ECLOSED;
    return qb_command_exec_start(l->src->loop, l->qmp, cmd, &cfg->commands,
                                 cfg->qmp_command_timeout_ms, done, arg);
}

static enum qb_source_session link_session(const struct qb_source_link *link)
{
    const struct qmp_link *l = CLINK(link);

    switch (l->qmp ? qb_qmp_client_state(l->qmp) : QB_QMP_IDLE) {
    case QB_QMP_IDLE:
        return QB_SOURCE_IDLE;
    case QB_QMP_READY:
        return QB_SOURCE_READY;
    case QB_QMP_CLOSING:
        return QB_SOURCE_CLOSING;
    default:
        return QB_SOURCE_OPENING;
    }
}

static const char *link_session_name(const struct qb_source_link *link)
{
    const struct qmp_link *l = CLINK(link);

    return qb_qmp_state_name(l->qmp ? qb_qmp_client_state(l->qmp) : QB_QMP_IDLE);
}

static const char *link_address(const struct qb_source_link *link)
{
    return CLINK(link)->address;
}

static const json_t *link_greeting(const struct qb_source_link *link)
{
    const struct qmp_link *l = CLINK(link);

    return l->qmp ? qb_qmp_client_greeting(l->qmp) : NULL;
}

static const char *link_version(const struct qb_source_link *link)
{
    const struct qmp_link *l = CLINK(link);

    return l->qmp ? qb_qmp_client_version(l->qmp) : "";
}

const struct qb_source_ops qb_source_qmp_ops = {
    .name = "qmp",
    .create = src_create,
    .set_config = src_set_config,
    .stats = src_stats,
    .close = src_close,
    .free = src_free,
    .open = src_open,
    .adopt = src_adopt,
    .start = link_start,
    .release = link_release,
    .disconnect = link_disconnect,
    .settled = link_settled,
    .pause = link_pause,
    .query = link_query,
    .command = link_command,
    .session = link_session,
    .session_name = link_session_name,
    .address = link_address,
    .greeting = link_greeting,
    .version = link_version,
};
