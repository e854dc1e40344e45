/*
 * source_libvirt.c - the libvirt source (see source_libvirt.h): the one
 * connection to libvirtd, which domains are VMs, and libvirt's callbacks.
 * Each domain's link (its sessions, queries, commands) is libvirt_link.c.
 *
 * Threads: libvirt's callbacks for events run on the loop (its event loop is
 * the bridge's); the close callback may run on any thread, so it only wakes
 * the loop. Every blocking call (connect, listing domains, closing) is a job
 * on the worker thread. Jobs carry the connection's generation: the answer of
 * a job for a connection that was lost meanwhile is dropped.
 */
#include "source_libvirt.h"

#include "error.h"
#include "libvirt_event_loop.h"
#include "libvirt_link.h"
#include "libvirt_worker.h"
#include "log.h"
#include "publish.h"

#include <fnmatch.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uthash.h>

/*
 * Jobs that may wait for the worker. A reconnect queues one session opening per
 * running domain and then the six snapshot queries of each: 65536 covers about
 * 9,000 domains resyncing at once, far past what one host runs; each waiting
 * job is a pointer and an op of a few hundred bytes.
 */
#define QB_LV_MAX_JOBS 65536

enum lv_conn_state { LV_OFF, LV_DOWN, LV_CONNECTING, LV_UP };

/* A link in the source's table by domain name. */
struct lv_entry {
    struct qb_lv_link *link;
    uint64_t missing_since; /* uv_now when libvirt stopped having the domain; 0: it has it */
    UT_hash_handle hh;      /* keyed by the link's name */
};

struct qb_source_libvirt {
    struct qb_source head;
    const struct qb_source_host *host;
    void *host_arg;
    struct qb_lv_shared sh;
    struct lv_entry *links;
    enum lv_conn_state state;
    virConnectPtr conn;          /* the loop's view: set when a connect job came back */
    _Atomic(virConnectPtr) live; /* the connection callbacks may come from (any thread) */
    atomic_int lost_reason;      /* -1, or the close reason libvirt gave */
    unsigned gen;                /* bumped for each connect attempt and each loss */
    int cb_qemu, cb_life;        /* callback ids on conn */
    uint32_t attempts;
    uv_timer_t retry;
    uv_timer_t due;   /* runs the links' deferred work */
    uv_timer_t sweep; /* forgets VMs whose domain libvirt no longer has (libvirt.forget_after) */
    uv_async_t lost;  /* the close callback's wake-up */
    unsigned handles_open;
    uint64_t lost_count, connect_failed, refused;
    unsigned conn_jobs; /* connect and close jobs on the worker */
    bool closing, freeing, worker_closing;
    char address_prefix[1100]; /* "libvirt:<uri>#" */
};

#define SRC(s) ((struct qb_source_libvirt *)(s))

static void src_connect(struct qb_source_libvirt *s);
static void src_maybe_free(struct qb_source_libvirt *s);

/* ---- domain names and filters --------------------------------------------- */

static bool glob_any(char *const *globs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (fnmatch(globs[i], name, 0) == 0)
            return true;
    return false;
}

/* Whether libvirt.include / exclude take the domain of that name. */
static bool src_wants(const struct qb_source_libvirt *s, const char *name)
{
    const struct qb_config *cfg = s->sh.cfg;

    if (cfg->n_libvirt_include && !glob_any(cfg->libvirt_include, cfg->n_libvirt_include, name))
        return false;
    return !glob_any(cfg->libvirt_exclude, cfg->n_libvirt_exclude, name);
}

static struct lv_entry *src_entry(struct qb_source_libvirt *s, const char *name)
{
    struct lv_entry *e = NULL;

    HASH_FIND_STR(s->links, name, e);
    return e;
}

static struct qb_lv_link *src_find(struct qb_source_libvirt *s, const char *name)
{
    struct lv_entry *e = src_entry(s, name);

    return e ? e->link : NULL;
}

/*
 * libvirt no longer has the domain of e (a transient one stopped, one was
 * undefined): the VM stays, disconnected, for libvirt.forget_after, so a domain
 * of that name that comes back (oVirt runs its VMs as transient domains) keeps
 * its numbering; then it is removed and its retained state cleared.
 */
static void src_mark_missing(struct qb_source_libvirt *s, struct lv_entry *e, const char *why)
{
    if (e->missing_since)
        return;
    e->missing_since = uv_now(s->sh.loop) | 1; /* never 0 */
    if (s->sh.cfg->libvirt_forget_after_ms)
        QB_LOG_INFO(qb_lv_link_name(e->link),
                    "libvirt: %s; forgotten in %u ms unless it comes back", why,
                    (unsigned)s->sh.cfg->libvirt_forget_after_ms);
    else
        QB_LOG_INFO(qb_lv_link_name(e->link), "libvirt: %s; kept until the bridge restarts", why);
}

static void sweep_cb(uv_timer_t *t)
{
    struct qb_source_libvirt *s = t->data;
    uint64_t after = s->sh.cfg->libvirt_forget_after_ms, now = uv_now(s->sh.loop);
    struct lv_entry *e, *tmp;

    if (after == 0 || s->closing)
        return;
    HASH_ITER(hh, s->links, e, tmp)
    {
        if (e->missing_since && now - e->missing_since >= after && !qb_lv_link_in_session(e->link))
            qb_lv_link_gone(e->link, "libvirt has not had the domain for libvirt.forget_after");
    }
}

/* ---- domains ---------------------------------------------------------------- */

/*
 * A domain runs (found at connect or by its STARTED event): its link begins a
 * session, made first (and handed to the manager) when the domain is new.
 */
static void src_domain_running(struct qb_source_libvirt *s, virDomainPtr dom)
{
    const char *name = virDomainGetName(dom);
    char uuid[VIR_UUID_STRING_BUFLEN] = "";
    char address[1200];
    struct qb_lv_link *l;
    struct lv_entry *e;
    const char *other;
    int rc;

    /* filters first: a domain the operator left out is never refused, nor logged */
    if (!name || s->closing || !src_wants(s, name))
        return;
    if (!qb_stream_name_valid(name)) {
        s->refused++;
        QB_LOG_WARN(NULL,
                    "libvirt: domain '%s' refused: not a valid VM name (1 to 64 characters "
                    "from [A-Za-z0-9._-])",
                    name);
        return;
    }
    if ((e = src_entry(s, name))) {
        e->missing_since = 0;
        qb_lv_link_begin(e->link, dom);
        return;
    }
    if ((other = s->host->vm_lookup(s->host_arg, name))) {
        s->refused++;
        QB_LOG_WARN(name, "libvirt: domain refused: the bridge has a VM of that name at %s", other);
        return;
    }
    virDomainGetUUIDString(dom, uuid);
    snprintf(address, sizeof(address), "%s%s", s->address_prefix, name);
    e = calloc(1, sizeof(*e));
    if (!e || qb_lv_link_new(&s->sh, name, uuid, address, &l) < 0) {
        free(e);
        QB_LOG_ERR(name, "libvirt: out of memory taking the domain");
        return;
    }
    rc = s->host->vm_appeared(s->host_arg, name, qb_lv_link_head(l));
    if (rc < 0) {
        if (rc == QB_EEXIST)
            QB_LOG_WARN(name, "libvirt: domain refused: the bridge has a VM of that name");
        qb_lv_link_free(l);
        free(e);
        return;
    }
    e->link = l;
    HASH_ADD_KEYPTR(hh, s->links, qb_lv_link_name(l), strlen(qb_lv_link_name(l)), e);
    qb_lv_link_begin(l, dom);
}

static const char *stopped_why(int detail)
{
    switch (detail) {
    case VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN:
        return "the domain shut down";
    case VIR_DOMAIN_EVENT_STOPPED_DESTROYED:
        return "the domain was destroyed";
    case VIR_DOMAIN_EVENT_STOPPED_CRASHED:
        return "the domain crashed";
    case VIR_DOMAIN_EVENT_STOPPED_MIGRATED:
        return "the domain migrated away";
    case VIR_DOMAIN_EVENT_STOPPED_SAVED:
        return "the domain was saved";
    case VIR_DOMAIN_EVENT_STOPPED_FAILED:
        return "the domain's QEMU failed";
    default:
        return "the domain stopped";
    }
}

/* libvirt's lifecycle events: which domains run, which are gone. */
static int src_on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail,
                            void *opaque)
{
    struct qb_source_libvirt *s = opaque;
    const char *name = virDomainGetName(dom);
    struct lv_entry *e;

    if (conn != atomic_load(&s->live) || s->closing || !name)
        return 0;
    e = src_entry(s, name);
    switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
        src_domain_running(s, dom);
        break;
    case VIR_DOMAIN_EVENT_STOPPED:
        if (!e)
            break;
        qb_lv_link_end(e->link, QB_ECLOSED, stopped_why(detail));
        if (!qb_lv_link_persistent(e->link))
            src_mark_missing(s, e, "the transient domain stopped: libvirt no longer has it");
        break;
    case VIR_DOMAIN_EVENT_DEFINED:
        if (e) {
            qb_lv_link_set_persistent(e->link, true);
            e->missing_since = 0; /* libvirt has it again, running or not */
        }
        break;
    case VIR_DOMAIN_EVENT_UNDEFINED:
        if (!e)
            break;
        /* a running domain that is undefined only becomes transient: it goes when it stops */
        qb_lv_link_set_persistent(e->link, false);
        if (!qb_lv_link_in_session(e->link))
            src_mark_missing(s, e, "the domain was undefined");
        break;
    default:
        break; /* suspended, resumed...: the relayed STOP and RESUME say it, with QEMU's time */
    }
    return 0;
}

/* One QMP event of one domain, relayed by libvirtd. */
static void src_on_qmp_event(virConnectPtr conn, virDomainPtr dom, const char *event,
                             long long seconds, unsigned int micros, const char *details,
                             void *opaque)
{
    struct qb_source_libvirt *s = opaque;
    const char *name = virDomainGetName(dom);
    struct qb_lv_link *l;

    if (conn != atomic_load(&s->live) || s->closing || !name || !event)
        return;
    if ((l = src_find(s, name)))
        qb_lv_link_relay(l, event, seconds, micros, details);
    else
        s->sh.events_dropped++; /* a domain the bridge does not take, or not yet */
}

/* ---- the connection ---------------------------------------------------------- */

/* What a connect job learnt, back on the loop. */
struct lv_connect_job {
    struct qb_source_libvirt *s;
    unsigned gen;
    char *uri;
    int ka_interval, ka_count;
    virConnectPtr conn;
    int cb_qemu, cb_life;
    unsigned long hv_version, lib_version;
    virDomainPtr *running;
    int n_running;
    char **defined; /* names of every domain libvirt has, running or not */
    size_t n_defined;
    char err[300];
};

/* libvirt's close callback: any thread, so only a note and a wake-up. */
static void src_on_close(virConnectPtr conn, int reason, void *opaque)
{
    struct qb_source_libvirt *s = opaque;

    if (conn != atomic_load(&s->live))
        return;
    atomic_store(&s->lost_reason, reason);
    uv_async_send(&s->lost);
}

/* Unregisters what the bridge set on conn and closes it (worker thread). */
static void conn_teardown(virConnectPtr conn, int cb_qemu, int cb_life)
{
    if (cb_qemu >= 0)
        virConnectDomainQemuMonitorEventDeregister(conn, cb_qemu);
    if (cb_life >= 0)
        virConnectDomainEventDeregisterAny(conn, cb_life);
    virConnectUnregisterCloseCallback(conn, src_on_close);
    virConnectClose(conn);
}

static void job_error(char *buf, size_t len, const char *what)
{
    virErrorPtr err = virGetLastError();

    snprintf(buf, len, "%s: %s", what, err && err->message ? err->message : "no reason given");
}

/* The domains libvirt has: running ones (references) and every name. */
static int list_domains(virConnectPtr conn, struct lv_connect_job *j)
{
    virDomainPtr *all = NULL;
    int n_all = virConnectListAllDomains(conn, &all, 0);

    if (n_all < 0) {
        job_error(j->err, sizeof(j->err), "listing the domains failed");
        return -1;
    }
    j->defined = calloc((size_t)n_all + 1, sizeof(char *));
    j->running = calloc((size_t)n_all + 1, sizeof(virDomainPtr));
    for (int i = 0; i < n_all; i++) {
        const char *name = virDomainGetName(all[i]);

        if (j->defined && name && (j->defined[j->n_defined] = strdup(name)))
            j->n_defined++;
        if (j->running && virDomainIsActive(all[i]) == 1)
            j->running[j->n_running++] = all[i];
        else
            virDomainFree(all[i]);
    }
    free(all);
    if (!j->defined || !j->running) {
        snprintf(j->err, sizeof(j->err), "out of memory listing the domains");
        return -1;
    }
    return 0;
}

static void connect_work(void *arg)
{
    struct lv_connect_job *j = arg;
    virConnectPtr conn = virConnectOpen(j->uri);

    j->cb_qemu = j->cb_life = -1;
    if (!conn) {
        job_error(j->err, sizeof(j->err), "connecting failed");
        return;
    }
    /* from here libvirt may call back on the loop for this connection */
    atomic_store(&j->s->live, conn);
    /* 1 means the driver has no keepalive (a local one): fine */
    if (virConnectSetKeepAlive(conn, j->ka_interval, (unsigned)j->ka_count) < 0 ||
        virConnectRegisterCloseCallback(conn, src_on_close, j->s, NULL) < 0 ||
        (j->cb_life = virConnectDomainEventRegisterAny(conn, NULL, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                       VIR_DOMAIN_EVENT_CALLBACK(src_on_lifecycle),
                                                       j->s, NULL)) < 0 ||
        (j->cb_qemu = virConnectDomainQemuMonitorEventRegister(conn, NULL, NULL, src_on_qmp_event,
                                                               j->s, NULL, 0)) < 0) {
        job_error(j->err, sizeof(j->err), "subscribing to libvirtd's events failed");
        goto fail;
    }
    if (virConnectGetVersion(conn, &j->hv_version) < 0 ||
        virConnectGetLibVersion(conn, &j->lib_version) < 0) {
        job_error(j->err, sizeof(j->err), "asking libvirtd's versions failed");
        goto fail;
    }
    /* listed after subscribing: a domain that starts in between is seen twice, never missed */
    if (list_domains(conn, j) < 0)
        goto fail;
    j->conn = conn;
    return;
fail:
    atomic_store(&j->s->live, NULL);
    conn_teardown(conn, j->cb_qemu, j->cb_life);
}

static void connect_job_free(struct lv_connect_job *j)
{
    for (int i = 0; i < j->n_running; i++)
        virDomainFree(j->running[i]);
    free(j->running);
    for (size_t i = 0; i < j->n_defined; i++)
        free(j->defined[i]);
    free(j->defined);
    free(j->uri);
    free(j);
}

/* A QMP-shaped greeting for every session of this connection: QEMU's version as libvirt says it. */
static void src_set_greeting(struct qb_source_libvirt *s, unsigned long hv, unsigned long lib)
{
    char package[64];

    snprintf(package, sizeof(package), "libvirt %lu.%lu.%lu", lib / 1000000, lib / 1000 % 1000,
             lib % 1000);
    snprintf(s->sh.version, sizeof(s->sh.version), "%lu.%lu.%lu", hv / 1000000, hv / 1000 % 1000,
             hv % 1000);
    json_decref(s->sh.greeting);
    s->sh.greeting =
        json_pack("{s:{s:{s:I, s:I, s:I}, s:s}, s:[]}", "version", "qemu", "major",
                  (json_int_t)(hv / 1000000), "minor", (json_int_t)(hv / 1000 % 1000), "micro",
                  (json_int_t)(hv % 1000), "package", package, "capabilities");
}

static bool name_listed(char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

/*
 * Brings the VM set in line with what libvirt has: running domains begin
 * sessions (new ones become VMs), VMs whose domain libvirt no longer has, or
 * the filters no longer take, are removed.
 */
static void src_reconcile(struct qb_source_libvirt *s, struct lv_connect_job *j)
{
    struct lv_entry *e, *tmp;

    HASH_ITER(hh, s->links, e, tmp)
    {
        const char *name = qb_lv_link_name(e->link);

        if (!src_wants(s, name)) {
            qb_lv_link_end(e->link, QB_ECLOSED, "libvirt.include/exclude no longer take it");
            qb_lv_link_gone(e->link, "libvirt.include/exclude no longer take the domain");
        } else if (!name_listed(j->defined, j->n_defined, name)) {
            qb_lv_link_end(e->link, QB_ECLOSED, "libvirt no longer has the domain");
            src_mark_missing(s, e, "libvirt no longer has the domain");
        } else {
            e->missing_since = 0;
        }
    }
    for (int i = 0; i < j->n_running && !s->closing; i++)
        src_domain_running(s, j->running[i]);
}

static void retry_cb(uv_timer_t *t)
{
    src_connect(t->data);
}

/* The next connect after a failure or a loss, with qmp.reconnect_* back-off. */
static void src_schedule_retry(struct qb_source_libvirt *s)
{
    const struct qb_config *cfg = s->sh.cfg;
    uint64_t delay = cfg->qmp_reconnect_initial_ms;

    for (uint32_t i = 0; i < s->attempts && delay < cfg->qmp_reconnect_max_ms; i++)
        delay *= 2;
    if (delay > cfg->qmp_reconnect_max_ms)
        delay = cfg->qmp_reconnect_max_ms;
    s->attempts++;
    s->state = LV_DOWN;
    uv_timer_start(&s->retry, retry_cb, delay, 0);
}

/* Closing a connection that was lost or is no longer wanted (worker thread). */
struct lv_close_job {
    struct qb_source_libvirt *s;
    virConnectPtr conn;
    int cb_qemu, cb_life;
};

static void close_work(void *arg)
{
    struct lv_close_job *c = arg;

    conn_teardown(c->conn, c->cb_qemu, c->cb_life);
}

static void close_done(void *arg, bool cancelled)
{
    struct lv_close_job *c = arg;
    struct qb_source_libvirt *s = c->s;

    s->conn_jobs--;
    if (cancelled) /* the worker is closing: no thread will run it, so do it here */
        conn_teardown(c->conn, c->cb_qemu, c->cb_life);
    free(c);
    src_maybe_free(s);
}

/*
 * Closes conn with its callback ids on the worker; here only when the worker
 * takes nothing more (it is closing), where no call can block for long.
 */
static void src_close_conn(struct qb_source_libvirt *s, virConnectPtr conn, int cb_qemu,
                           int cb_life)
{
    struct lv_close_job *c = malloc(sizeof(*c));

    if (c) {
        *c = (struct lv_close_job){s, conn, cb_qemu, cb_life};
        if (s->sh.worker && !s->worker_closing &&
            qb_libvirt_worker_submit(s->sh.worker, close_work, close_done, c) == 0) {
            s->conn_jobs++;
            return;
        }
        free(c);
    }
    conn_teardown(conn, cb_qemu, cb_life);
}

/* Drops the loop's connection: no callback of it is taken from now on. */
static void src_drop_conn(struct qb_source_libvirt *s)
{
    atomic_store(&s->live, NULL);
    if (!s->conn)
        return;
    src_close_conn(s, s->conn, s->cb_qemu, s->cb_life);
    s->conn = NULL;
    s->cb_qemu = s->cb_life = -1;
}

static void connect_done(void *arg, bool cancelled)
{
    struct lv_connect_job *j = arg;
    struct qb_source_libvirt *s = j->s;

    s->conn_jobs--;
    if (cancelled || s->closing || j->gen != s->gen) {
        if (j->conn) {
            if (atomic_load(&s->live) == j->conn)
                atomic_store(&s->live, NULL);
            src_close_conn(s, j->conn, j->cb_qemu, j->cb_life);
        }
        connect_job_free(j);
        src_maybe_free(s);
        return;
    }
    if (!j->conn) {
        s->connect_failed++;
        QB_LOG_WARN(NULL, "libvirt: %s (%s); retrying", j->err, s->sh.cfg->libvirt_uri);
        src_schedule_retry(s);
        connect_job_free(j);
        return;
    }
    s->conn = j->conn;
    s->cb_qemu = j->cb_qemu;
    s->cb_life = j->cb_life;
    s->state = LV_UP;
    s->attempts = 0;
    src_set_greeting(s, j->hv_version, j->lib_version);
    if (atomic_load(&s->lost_reason) >= 0)
        uv_async_send(&s->lost); /* it closed while the connect job was coming back */
    QB_LOG_INFO(NULL, "libvirt: connected to %s (QEMU %s, %d running domains of %zu)",
                s->sh.cfg->libvirt_uri, s->sh.version, j->n_running, j->n_defined);
    src_reconcile(s, j);
    connect_job_free(j);
}

static void src_connect(struct qb_source_libvirt *s)
{
    const struct qb_config *cfg = s->sh.cfg;
    struct lv_connect_job *j;
    int rc = QB_ENOMEM;

    if (s->closing || !cfg->libvirt_uri)
        return;
    s->state = LV_CONNECTING;
    s->gen++;
    atomic_store(&s->lost_reason, -1); /* a close of an earlier connection no longer counts */
    if ((j = calloc(1, sizeof(*j))) && (j->uri = strdup(cfg->libvirt_uri))) {
        j->s = s;
        j->gen = s->gen;
        j->ka_interval = (int)(cfg->libvirt_keepalive_interval_ms / 1000);
        j->ka_count = (int)cfg->libvirt_keepalive_count;
        rc = qb_libvirt_worker_submit(s->sh.worker, connect_work, connect_done, j);
        if (rc == QB_OK)
            s->conn_jobs++;
    }
    if (rc < 0) {
        if (j)
            free(j->uri);
        free(j);
        QB_LOG_ERR(NULL, "libvirt: cannot start connecting: %s", qb_strerror(rc));
        src_schedule_retry(s);
    }
}

static const char *close_reason(int reason)
{
    switch (reason) {
    case VIR_CONNECT_CLOSE_REASON_EOF:
        return "libvirtd closed the connection";
    case VIR_CONNECT_CLOSE_REASON_KEEPALIVE:
        return "libvirtd did not answer keepalive probes";
    case VIR_CONNECT_CLOSE_REASON_CLIENT:
        return "the connection was closed";
    default:
        return "an I/O error on the connection";
    }
}

/* The close callback's wake-up, on the loop: every session ends, a new connection resyncs. */
static void lost_cb(uv_async_t *a)
{
    struct qb_source_libvirt *s = a->data;
    char why[160];
    struct lv_entry *e, *tmp;
    int reason;

    /* lost before its connect job came back: connect_done wakes this again once it is up */
    if (s->state != LV_UP || s->closing)
        return;
    if ((reason = atomic_exchange(&s->lost_reason, -1)) < 0)
        return;
    s->lost_count++;
    snprintf(why, sizeof(why), "libvirtd connection lost: %s", close_reason(reason));
    QB_LOG_WARN(NULL, "libvirt: %s (%s); reconnecting", why, s->sh.cfg->libvirt_uri);
    s->gen++;
    src_drop_conn(s);
    HASH_ITER(hh, s->links, e, tmp)
    {
        qb_lv_link_end(e->link, QB_ECLOSED, why);
        qb_lv_link_drop_domain(
            e->link); /* it holds the old connection; the next one gives it anew */
    }
    src_schedule_retry(s);
}

/* ---- the links' deferred work --------------------------------------------- */

static void due_cb(uv_timer_t *t)
{
    struct qb_source_libvirt *s = t->data;

    qb_lv_shared_run_due(&s->sh);
    src_maybe_free(s);
}

static void src_wake(void *arg)
{
    struct qb_source_libvirt *s = arg;

    if (!uv_is_closing((uv_handle_t *)&s->due))
        uv_timer_start(&s->due, due_cb, 0, 0);
}

static void src_forget(void *arg, struct qb_lv_link *l)
{
    struct qb_source_libvirt *s = arg;
    struct lv_entry *e = NULL;
    const char *name = qb_lv_link_name(l);

    HASH_FIND_STR(s->links, name, e);
    if (e && e->link == l) {
        HASH_DEL(s->links, e);
        free(e);
    }
}

/* ---- the source's ops ------------------------------------------------------ */

/* libvirt prints every error to stderr by default; the bridge logs what it needs itself. */
static void lv_quiet(void *arg, virErrorPtr err)
{
    (void)arg, (void)err;
}

static void handle_closed(uv_handle_t *h)
{
    struct qb_source_libvirt *s = h->data;

    if (--s->handles_open == 0) {
        json_decref(s->sh.greeting);
        free(s);
    }
}

static void worker_closed(void *arg)
{
    struct qb_source_libvirt *s = arg;

    s->sh.worker = NULL;
    /* the connection was closed by the worker's last jobs: libvirt's handles can go now */
    qb_libvirt_event_loop_shutdown();
    uv_close((uv_handle_t *)&s->retry, handle_closed);
    uv_close((uv_handle_t *)&s->due, handle_closed);
    uv_close((uv_handle_t *)&s->sweep, handle_closed);
    uv_close((uv_handle_t *)&s->lost, handle_closed);
}

/*
 * After free: once no link is left to run, the connection is closed on the
 * worker (its callbacks unregistered with libvirtd), then the worker goes,
 * then libvirt's handles on the loop and the source's own, then s.
 */
static void src_maybe_free(struct qb_source_libvirt *s)
{
    if (!s->freeing || s->links || s->sh.due || !s->sh.worker || s->worker_closing)
        return;
    src_drop_conn(s);
    if (s->conn_jobs)
        return; /* back here from the job's done */
    s->worker_closing = true;
    if (qb_libvirt_worker_close(s->sh.worker, worker_closed, s) < 0)
        worker_closed(s);
}

/* A sweep a quarter of forget_after apart (at most a minute, at least 250 ms): cheap, and close. */
static void src_start_sweep(struct qb_source_libvirt *s)
{
    uint64_t after = s->sh.cfg->libvirt_forget_after_ms, every = after / 4;

    if (after == 0) {
        uv_timer_stop(&s->sweep);
        return;
    }
    every = every < 250 ? 250 : every > 60000 ? 60000 : every;
    uv_timer_start(&s->sweep, sweep_cb, every, every);
}

static int src_create(uv_loop_t *loop, const struct qb_config *cfg,
                      const struct qb_source_host *host, void *host_arg, struct qb_source **out)
{
    struct qb_source_libvirt *s;
    int rc;

    *out = NULL;
    if (!(s = calloc(1, sizeof(*s))))
        return QB_ENOMEM;
    s->head.ops = &qb_source_libvirt_ops;
    s->host = host;
    s->host_arg = host_arg;
    s->sh.ops = &qb_source_libvirt_ops;
    s->sh.loop = loop;
    s->sh.cfg = cfg;
    s->sh.wake = src_wake;
    s->sh.forget = src_forget;
    s->sh.arg = s;
    s->cb_qemu = s->cb_life = -1;
    atomic_init(&s->live, NULL);
    atomic_init(&s->lost_reason, -1);
    if (!cfg->libvirt_uri) {
        s->state = LV_OFF; /* nothing to do: no handle, no thread */
        *out = &s->head;
        return QB_OK;
    }
    snprintf(s->address_prefix, sizeof(s->address_prefix), "libvirt:%s#", cfg->libvirt_uri);
    /* libvirt's own event loop and threads need these before any other call */
    if (virInitialize() < 0 || (rc = qb_libvirt_event_loop_install(loop)) < 0) {
        QB_LOG_ERR(NULL, "libvirt: cannot set up libvirt's event loop on the bridge's");
        free(s);
        return QB_EIO;
    }
    virSetErrorFunc(NULL, lv_quiet);
    rc = qb_libvirt_worker_create(loop, QB_LV_MAX_JOBS, &s->sh.worker);
    if (rc < 0) {
        free(s);
        return rc;
    }
    uv_timer_init(loop, &s->retry);
    uv_timer_init(loop, &s->due);
    uv_async_init(loop, &s->lost, lost_cb);
    s->retry.data = s->due.data = s->lost.data = s;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->handles_open = 4;
    src_start_sweep(s);
    *out = &s->head;
    src_connect(s);
    return QB_OK;
}

/* A fresh list of the domains on the live connection (worker thread). */
static void relist_work(void *arg)
{
    struct lv_connect_job *j = arg;

    if (list_domains(j->conn, j) < 0) {
        virConnectClose(j->conn); /* the job's reference; the connection stays */
        j->conn = NULL;
    }
}

/* Drops a reference to conn on the worker: the last one closes it, which waits for libvirtd. */
static void unref_work(void *arg)
{
    virConnectClose(arg);
}

static void unref_done(void *arg, bool cancelled)
{
    if (cancelled)
        virConnectClose(arg);
}

static void relist_done(void *arg, bool cancelled)
{
    struct lv_connect_job *j = arg;
    struct qb_source_libvirt *s = j->s;

    s->conn_jobs--;
    if (j->conn && !cancelled && !s->closing && j->gen == s->gen && s->state == LV_UP)
        src_reconcile(s, j);
    else if (!j->conn && !cancelled)
        QB_LOG_WARN(NULL, "libvirt: %s; the VM set is brought in line at the next connect", j->err);
    if (j->conn && qb_libvirt_worker_submit(s->sh.worker, unref_work, unref_done, j->conn) < 0)
        virConnectClose(j->conn); /* not the last reference: the loop's is still held */
    connect_job_free(j);
    src_maybe_free(s);
}

static void src_set_config(struct qb_source *src, const struct qb_config *cfg)
{
    struct qb_source_libvirt *s = SRC(src);
    const struct qb_config *old = s->sh.cfg;
    struct lv_connect_job *j;
    bool same = qb_config_strings_equal(old->libvirt_include, old->n_libvirt_include,
                                        cfg->libvirt_include, cfg->n_libvirt_include) &&
                qb_config_strings_equal(old->libvirt_exclude, old->n_libvirt_exclude,
                                        cfg->libvirt_exclude, cfg->n_libvirt_exclude);

    s->sh.cfg = cfg; /* libvirt.uri and keepalive need a restart (reload.c keeps them) */
    if (s->state != LV_OFF && old->libvirt_forget_after_ms != cfg->libvirt_forget_after_ms)
        src_start_sweep(s);
    if (same || s->state != LV_UP || s->closing)
        return; /* not connected: the next connect lists the domains with the new filters */
    /* the filters changed: a fresh list brings the VM set in line, sessions stay up */
    if (!(j = calloc(1, sizeof(*j))))
        return;
    j->s = s;
    j->gen = s->gen;
    j->conn = s->conn;
    virConnectRef(j->conn);
    if (qb_libvirt_worker_submit(s->sh.worker, relist_work, relist_done, j) < 0) {
        QB_LOG_WARN(NULL, "libvirt: the domains are not listed again after the reload: the "
                          "worker is full");
        virConnectClose(j->conn);
        free(j);
        return;
    }
    s->conn_jobs++;
}

static void src_stats(const struct qb_source *src, struct qb_source_stats *out)
{
    const struct qb_source_libvirt *s = (const struct qb_source_libvirt *)src;

    if (s->state == LV_OFF)
        return;
    out->libvirt_configured++;
    out->libvirt_connected += s->state == LV_UP;
    out->libvirt_lost += s->lost_count;
    out->libvirt_connect_failed += s->connect_failed;
    out->libvirt_refused += s->refused;
    out->libvirt_events_dropped += s->sh.events_dropped;
    out->held_over_events += s->sh.held_over_events;
    out->held_over_bytes += s->sh.held_over_bytes;
}

static void src_close(struct qb_source *src)
{
    struct qb_source_libvirt *s = SRC(src);

    s->closing = true;
    if (s->state != LV_OFF)
        uv_timer_stop(&s->retry), uv_timer_stop(&s->sweep);
}

static void src_free(struct qb_source *src)
{
    struct qb_source_libvirt *s = SRC(src);

    if (s->state == LV_OFF) {
        free(s);
        return;
    }
    s->closing = s->freeing = true;
    s->gen++;
    src_maybe_free(s);
}

const struct qb_source_ops qb_source_libvirt_ops = {
    .name = "libvirt",
    .create = src_create,
    .set_config = src_set_config,
    .stats = src_stats,
    .close = src_close,
    .free = src_free,
    .start = qb_lv_link_start,
    .release = qb_lv_link_release,
    .disconnect = qb_lv_link_disconnect,
    .settled = qb_lv_link_settled,
    .pause = qb_lv_link_pause,
    .query = qb_lv_link_query,
    .command = qb_lv_link_command,
    .session = qb_lv_link_session,
    .session_name = qb_lv_link_session_name,
    .address = qb_lv_link_address,
    .greeting = qb_lv_link_greeting,
    .version = qb_lv_link_version,
};
