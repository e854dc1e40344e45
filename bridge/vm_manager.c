/*
 * vm_manager.c - the VMs of one bridge: the set, their sessions, back-off, teardown.
 *
 * Data flows one way: qmp_client -> normalize -> envelope -> transports. The
 * manager is the only place that decides when to reconnect and the only place
 * that numbers events, so ordering and sequence rules live in the vm_* files
 * and nowhere else. See vm_manager.h for the guarantees, and
 * vm_manager_internal.h for which vm_* file does what.
 *
 * This file holds the VM set (add, remove, discovery, lookups, statistics),
 * the session lifecycle (ready, closed, back-off, back-pressure), creation and
 * teardown of VM entries and of the manager, and configuration reload.
 *
 * Reply callbacks hold the VM alive (inflight counter), so a VM removed
 * mid-query is freed only after its last callback has run.
 *
 * Back-pressure: while any transport says its queue is near full, every VM
 * stops reading from its socket (QEMU keeps the events) once it is READY,
 * resynced and not waiting on a query, since those need their replies read.
 */
#include "vm_manager.h"
#include "vm_manager_internal.h"

#include "address.h"
#include "error.h"
#include "log.h"
#include "normalize.h"
#include "outbox.h"
#include "prom.h"
#include "publish.h"
#include "qmp_client.h"
#include "vm_state.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <uthash.h>

/* Sessions that stayed READY this long reset the back-off to its initial delay. */
#define QB_VM_STABLE_MS 10000

/* One counter of qb_vm_manager_foreach_count: key (and key2) own their text. */
struct qb_count {
    char *key; /* "<key>\0<key2>" for two-part keys: one allocation, one hash key */
    size_t keylen;
    enum qb_vm_count which;
    uint64_t n;
    UT_hash_handle hh;
};

/*
 * Adds one to the counter (which, key, key2) and returns its interned key
 * (stable for the manager's lifetime), or NULL when out of memory (the count
 * is lost, nothing else).
 */
const char *qb_vm_mgr_count(struct qb_vm_manager *m, enum qb_vm_count which, const char *key,
                            const char *key2)
{
    /* "<which><key>\0<key2>", built by hand: this runs once per event (snprintf was 2%) */
    char buf[256];
    size_t klen = strlen(key), k2len = key2 ? strlen(key2) : 0;
    size_t n = 1 + klen + 1 + k2len;
    struct qb_count *c = NULL;

    if (n >= sizeof(buf))
        return NULL;
    buf[0] = (char)('0' + (int)which);
    memcpy(buf + 1, key, klen);
    buf[1 + klen] = '\0';
    if (k2len)
        memcpy(buf + 2 + klen, key2, k2len);
    buf[n] = '\0';
    HASH_FIND(hh, m->counts, buf, n, c);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c || !(c->key = malloc(n + 1))) {
            free(c);
            return NULL;
        }
        memcpy(c->key, buf, n + 1);
        c->keylen = n;
        c->which = which;
        HASH_ADD_KEYPTR(hh, m->counts, c->key, c->keylen, c);
    }
    c->n++;
    return c->key + 1;
}

/* xorshift64*: jitter only needs to spread reconnects, not be unpredictable. */
static uint64_t mgr_random(struct qb_vm_manager *m)
{
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return m->rng * 2685821657736338717ull;
}

/* ---- session lifecycle --------------------------------------------------- */

void qb_vm_on_ready(struct qb_qmp_client *c, void *arg)
{
    struct qb_vm *vm = arg;
    json_t *greeting = qb_qmp_client_greeting(c);
    json_t *caps = json_object_get(greeting, "capabilities");
    json_t *data;

    vm->ready_at = uv_now(vm->mgr->loop);
    vm->was_ready = true;
    snprintf(vm->qemu_version, sizeof(vm->qemu_version), "%s", qb_qmp_client_version(c));
    qb_norm_vm_reset(vm->norm, NULL);
    QB_LOG_INFO(vm->name, "connected to QEMU %s at %s", qb_qmp_client_version(c), vm->address);

    const char *package =
        json_string_value(json_object_get(json_object_get(greeting, "version"), "package"));

    /* published when query-uuid answers (qb_vm_publish_connected), with the UUID */
    data = json_pack("{s:{s:s, s:s}, s:o, s:s, s:n}", "qemu", "version", qb_qmp_client_version(c),
                     "package", package ? package : "", "capabilities",
                     json_is_array(caps) ? json_incref(caps) : json_array(), "address", vm->address,
                     "uuid");
    json_decref(vm->connected_data);
    vm->connected_data = data;
    qb_vm_start_resync(vm);
}

uint32_t qb_vm_backoff_ms(struct qb_vm *vm)
{
    const struct qb_config *cfg = vm->mgr->cfg;
    uint64_t delay = cfg->qmp_reconnect_initial_ms;

    for (uint32_t i = 0; i < vm->attempts && delay < cfg->qmp_reconnect_max_ms; i++)
        delay *= 2;
    if (delay > cfg->qmp_reconnect_max_ms)
        delay = cfg->qmp_reconnect_max_ms;
    /* Equal jitter: half fixed, half random, so a storm of VMs spreads out but never hammers. */
    return (uint32_t)(delay / 2 + (delay > 1 ? mgr_random(vm->mgr) % (delay / 2 + 1) : 0));
}

struct qb_held_limits qb_vm_held_limits(const struct qb_vm_manager *m)
{
    return (struct qb_held_limits){.max_events = m->cfg->qmp_max_held_events,
                                   .max_bytes = m->cfg->qmp_max_held_bytes};
}

const char *qb_vm_held_overflow(struct qb_vm_manager *m, const char *who, const char *what,
                                size_t count, size_t bytes)
{
    const struct qb_config *cfg = m->cfg;
    bool by_count = count > cfg->qmp_max_held_events;

    if (by_count)
        m->stats.held_over_events++;
    else
        m->stats.held_over_bytes++;
    QB_LOG_WARN(who,
                "closing the QMP session: %zu events (%zu bytes) held back while waiting for %s, "
                "over qmp.%s (max_held_events %zu, max_held_bytes %zu); they are dropped, the "
                "snapshot of the next session gives the state",
                count, bytes, what, by_count ? "max_held_events" : "max_held_bytes",
                cfg->qmp_max_held_events, cfg->qmp_max_held_bytes);
    return by_count ? "more events held back than qmp.max_held_events"
                    : "more event bytes held back than qmp.max_held_bytes";
}

void qb_vm_reconnect_timer_cb(uv_timer_t *t)
{
    qb_vm_connect(t->data);
}

static void vm_on_closed(struct qb_qmp_client *c, int err, const char *reason, void *arg)
{
    struct qb_vm *vm = arg;
    uint64_t now = uv_now(vm->mgr->loop);

    (void)c;
    /* Events read before the close are all published by now: replies failed first, drain ran. */
    qb_vm_drain(vm);
    if (vm->was_ready) {
        json_t *data =
            json_pack("{s:s, s:s}", "reason", reason ? reason : "", "error", qb_strerror(err));
        struct qb_norm_event ev = {.type = "bridge.vm.disconnected", .data = data};

        qb_vm_publish_connected(vm, NULL); /* still due only if query-uuid never ran */
        if (data) {
            qb_vm_publish_bridge_event(vm, "bridge.vm.disconnected", data);
            json_decref(data);
        }
        /* The last known state, marked connected: false: consumers hold off until it is back. */
        if (vm->state && qb_vm_state_fold(vm->state, vm->mgr->state_cache, &ev))
            qb_vm_publish_state_event(vm);
        QB_LOG_INFO(vm->name, "disconnected: %s", reason ? reason : qb_strerror(err));
        if (!vm->removing && !vm->mgr->closing) {
            vm->reconnects++;
            vm->mgr->stats.reconnects++;
        }
        /* A session closed for holding too much was no success, however long it ran. */
        if (now - vm->ready_at >= QB_VM_STABLE_MS && !vm->held_over)
            vm->attempts = 0;
    } else if (vm->attempts == 0) {
        vm->mgr->stats.connect_failed++;
        QB_LOG_WARN(vm->name, "cannot connect to %s: %s (retrying with back-off)", vm->address,
                    reason ? reason : qb_strerror(err));
    } else {
        vm->mgr->stats.connect_failed++;
        QB_LOG_DEBUG(vm->name, "connect attempt %u to %s failed: %s", vm->attempts + 1, vm->address,
                     reason ? reason : qb_strerror(err));
    }
    vm->was_ready = false;
    vm->ready_at = 0;
    vm->held_over = false;
    qb_vm_slot_release(vm);
    qb_vm_cmd_flush(vm, QB_CMD_ERR_NOT_CONNECTED,
                    vm->removing ? "the VM was removed before the command ran"
                                 : "the QMP session closed before the command ran");

    if (vm->removing || vm->mgr->closing) {
        qb_vm_maybe_free(vm);
        return;
    }
    if (vm->listen) {
        /* Nothing to connect to: QEMU's chardev reconnects to qmp.listen by itself. */
        QB_LOG_INFO(vm->name, "waiting for QEMU to connect again");
        qb_vm_listen_closed(vm);
        return;
    }
    uint32_t delay = qb_vm_backoff_ms(vm);
    if (vm->attempts < 32)
        vm->attempts++;
    QB_LOG_DEBUG(vm->name, "reconnecting in %u ms (attempt %u)", delay, vm->attempts);
    uv_timer_start(&vm->reconnect_timer, qb_vm_reconnect_timer_cb, delay, 0);
}

/*
 * Pauses or resumes reading so it matches the manager's back-pressure, but
 * only where it is safe: a handshake, a snapshot or a pending query needs its
 * replies read, and events read meanwhile wait in the backlog (bounded by what
 * QEMU sends during one query).
 */
void qb_vm_apply_pause(struct qb_vm *vm)
{
    bool want = vm->mgr->pressure && !vm->removing && !vm->resyncing && vm->pending.type == NULL &&
                vm->cmd_running == NULL && qb_qmp_client_state(vm->qmp) == QB_QMP_READY;

    if (want != vm->read_paused) {
        vm->read_paused = want;
        if (want)
            qb_qmp_client_pause_reading(vm->qmp);
        else
            qb_qmp_client_resume_reading(vm->qmp);
    }
    /* Events held back under pressure go first, also for a VM that was never paused. */
    if (!want)
        qb_vm_drain(vm);
}

static void mgr_on_pressure(void *arg, bool pressure)
{
    struct qb_vm_manager *m = arg;

    if (pressure == m->pressure)
        return;
    m->pressure = pressure;
    QB_LOG_INFO(NULL, "%s reading from %u VMs (back-pressure %s)",
                pressure ? "pausing" : "resuming", HASH_COUNT(m->vms), pressure ? "on" : "off");
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next)
        qb_vm_apply_pause(vm);
}

const struct qb_qmp_callbacks qb_vm_qmp_callbacks = {
    .on_ready = qb_vm_on_ready,
    .on_event = qb_vm_on_event,
    .on_closed = vm_on_closed,
};

/* ---- creation and teardown ----------------------------------------------- */

/* Frees the manager and reports done; only once no VM struct is left. */
static void mgr_finish(struct qb_vm_manager *m)
{
    void (*done)(void *) = m->done;
    void *arg = m->done_arg;
    struct qb_count *c, *tmp;

    HASH_ITER(hh, m->counts, c, tmp)
    {
        HASH_DEL(m->counts, c);
        free(c->key);
        free(c);
    }
    qb_fair_reads_close(m->qmp_opts.fair);  /* every session is gone: nothing is parked */
    qb_vm_state_cache_free(m->state_cache); /* every holder is gone with its VM */
    qb_vm_state_copies_close(m->state_copies);
    qb_publisher_free(m->pub); /* every stream went with its VM */
    free(m);
    if (done)
        done(arg);
}

/*
 * A VM removed for good (socket gone, removed by reload, listen VM forgotten)
 * clears its retained state as its last message, unless a VM of that name is
 * on the bridge again by now (a changed address, a socket back at once): that
 * entry's snapshot replaces the state, and a clearing after it would erase it.
 */
static void vm_clear_retained(struct qb_vm *vm)
{
    if (qb_stream_superseded(vm->stream)) {
        QB_LOG_DEBUG(vm->name, "retained state not cleared: the VM is back with a new entry");
        qb_vm_state_copy_flush(vm);
        return;
    }
    QB_LOG_INFO(vm->name, "clearing its retained state: the VM is gone");
    qb_vm_publish_state_clear(vm);
}

static void vm_free_now(struct qb_vm *vm)
{
    struct qb_vm_manager *m = vm->mgr;

    if (vm->clear_on_free)
        vm_clear_retained(vm); /* after its last state copy, which goes first */
    else
        qb_vm_state_copy_flush(vm); /* its last change still reaches the state topic */

    while (vm->cmd_head) {
        struct qb_vm_cmd *c = vm->cmd_head;
        vm->cmd_head = c->next;
        qb_vm_cmd_free(c);
    }

    qb_held_events_clear(&vm->backlog);
    qb_norm_event_clear(&vm->pending);
    qb_norm_vm_free(vm->norm);
    qb_vm_state_free(vm->state);
    for (int i = 0; i < QB_VMQ_COUNT; i++)
        json_decref(vm->resync_replies[i]);
    json_decref(vm->connected_data);
    free(vm->identity);
    free(vm->name);
    free(vm->address);
    qb_stream_free(vm->stream);
    free(vm);
    if (--m->n_alive == 0 && m->closing)
        mgr_finish(m);
}

static void vm_timer_closed(uv_handle_t *h)
{
    struct qb_vm *vm = h->data;

    vm->timer_closed = true;
    qb_vm_maybe_free(vm);
}

/*
 * The last step of removing a VM: once the session is IDLE, release the client
 * and the timer; the struct goes when no callback can reach it any more.
 */
void qb_vm_maybe_free(struct qb_vm *vm)
{
    if (!vm->removing)
        return;
    if (vm->qmp && qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)
        return; /* on_closed will come back here */
    if (vm->qmp) {
        struct qb_qmp_client *c = vm->qmp;
        vm->qmp = NULL;
        qb_qmp_client_free(c);
    }
    if (!uv_is_closing((uv_handle_t *)&vm->reconnect_timer))
        uv_close((uv_handle_t *)&vm->reconnect_timer, vm_timer_closed);
    if (vm->timer_closed && vm->inflight == 0)
        vm_free_now(vm);
}

int qb_vm_manager_new(uv_loop_t *loop, const struct qb_config *cfg, struct qb_outbox *outbox,
                      struct qb_vm_manager **out)
{
    struct qb_vm_manager *m = calloc(1, sizeof(*m));

    *out = NULL;
    if (!m)
        return QB_ENOMEM;
    m->state_cache = qb_vm_state_cache_new(QB_VM_STATE_TREES_MAX);
    if (!m->state_cache || qb_publisher_new(cfg, outbox, &m->pub) < 0 ||
        qb_vm_state_copies_new(loop, &m->state_copies) < 0 ||
        qb_fair_reads_new(loop, &m->qmp_opts.fair) < 0) {
        qb_publisher_free(m->pub);
        qb_vm_state_cache_free(m->state_cache);
        qb_vm_state_copies_close(m->state_copies);
        free(m);
        return QB_ENOMEM;
    }
    m->loop = loop;
    m->cfg = cfg;
    m->outbox = outbox;
    qb_histogram_init_latency(&m->cmd_latency);
    m->qmp_opts.max_line_bytes = cfg->qmp_max_line_bytes;
    m->qmp_opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    m->rng = qb_publish_now_usec() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    qb_outbox_set_pressure_cb(outbox, mgr_on_pressure, m);
    m->pressure = qb_outbox_under_pressure(outbox);
    *out = m;
    return QB_OK;
}

/*
 * Creates the entry of VM name (valid, not taken) with an IDLE session and
 * its numbering (remembered, spooled or new), and adds it to the table.
 * address is copied. Returns QB_OK with *out (borrowed), or QB_ENOMEM.
 */
int qb_vm_create(struct qb_vm_manager *m, const char *name, const char *address, struct qb_vm **out)
{
    struct qb_vm *vm;
    int rc;

    vm = calloc(1, sizeof(*vm));
    if (!vm)
        return QB_ENOMEM;
    vm->mgr = m;
    vm->name = strdup(name);
    vm->address = strdup(address);
    vm->norm = qb_norm_vm_new();
    if (vm->norm && vm->name)
        qb_norm_vm_set_name(vm->norm, vm->name); /* "[vm1] normalize: ..." in its log lines */
    rc = QB_ENOMEM;
    if (!vm->name || !vm->address || !vm->norm)
        goto fail;
    rc = qb_stream_open(m->pub, name, &vm->stream);
    if (rc < 0)
        goto fail;
    rc = qb_qmp_client_new(m->loop, name, &m->qmp_opts, &qb_vm_qmp_callbacks, vm, &vm->qmp);
    if (rc < 0)
        goto fail;
    uv_timer_init(m->loop, &vm->reconnect_timer);
    vm->reconnect_timer.data = vm;

    HASH_ADD_KEYPTR(hh, m->vms, vm->name, strlen(vm->name), vm);
    m->n_alive++;
    QB_LOG_INFO(vm->name, "added, QMP at %s", address);
    *out = vm;
    return QB_OK;

fail:
    qb_stream_free(vm->stream);
    qb_norm_vm_free(vm->norm);
    free(vm->name);
    free(vm->address);
    free(vm);
    return rc;
}

int qb_vm_manager_add(struct qb_vm_manager *m, const char *name, const char *address)
{
    struct qb_address addr;
    struct qb_vm *vm;
    int rc;

    if (m->closing)
        return QB_ECLOSED;
    if (!qb_stream_name_valid(name))
        return QB_EINVAL;
    if (qb_address_parse(address, QB_ADDRESS_QMP, &addr) != QB_OK)
        return QB_EINVAL;
    HASH_FIND_STR(m->vms, name, vm);
    if (vm)
        return QB_EEXIST;
    rc = qb_vm_create(m, name, address, &vm);
    if (rc == QB_OK)
        qb_vm_connect(vm);
    return rc;
}

/*
 * Starts removing vm: remember keeps its numbering for a VM of that name
 * later; clear (a removal for good, not a shutdown) clears its retained state.
 */
static void vm_begin_removal(struct qb_vm *vm, const char *why, bool remember, bool clear)
{
    struct qb_vm_manager *m = vm->mgr;

    HASH_DEL(m->vms, vm);
    vm->clear_on_free = clear;
    if (vm->listen)
        m->n_listen--;
    qb_stream_retire(vm->stream, remember && !m->closing);
    vm->removing = true;
    qb_vm_slot_unqueue(vm);
    uv_timer_stop(&vm->reconnect_timer);
    if (qb_qmp_client_state(vm->qmp) == QB_QMP_IDLE)
        qb_vm_slot_release(vm); /* granted a slot, but its connect timer will not fire now */
    if (qb_qmp_client_state(vm->qmp) != QB_QMP_IDLE)
        qb_qmp_client_disconnect(vm->qmp, why);
    else
        qb_vm_maybe_free(vm);
}

int qb_vm_manager_remove(struct qb_vm_manager *m, const char *name, const char *why)
{
    struct qb_vm *vm;

    HASH_FIND_STR(m->vms, name, vm);
    if (!vm)
        return QB_ENOTFOUND;
    QB_LOG_INFO(vm->name, "removed: %s", why);
    vm_begin_removal(vm, why, true, true);
    return QB_OK;
}

void qb_vm_forget(struct qb_vm *vm, const char *why)
{
    QB_LOG_INFO(vm->name, "removed: %s", why);
    vm_begin_removal(vm, why, false, true);
}

/* ---- the VM set: discovery, lookups, statistics, close ------------------- */

void qb_vm_manager_discovered(void *mgr, const char *name, const char *path)
{
    char *address = NULL;
    int rc;

    if (asprintf(&address, "unix:%s", path) < 0)
        return;
    rc = qb_vm_manager_add(mgr, name, address);
    if (rc == QB_EEXIST)
        QB_LOG_WARN(name, "discovered socket %s ignored: a VM of that name is configured", path);
    else if (rc < 0)
        QB_LOG_ERR(name, "cannot add discovered VM: %s", qb_strerror(rc));
    free(address);
}

void qb_vm_manager_undiscovered(void *mgr, const char *name)
{
    qb_vm_manager_remove(mgr, name, "socket removed");
}

bool qb_vm_manager_has_vm(const struct qb_vm_manager *m, const char *name)
{
    struct qb_vm *vm = NULL;

    HASH_FIND_STR(m->vms, name, vm);
    return vm != NULL;
}

void qb_vm_manager_foreach(const struct qb_vm_manager *m,
                           void (*cb)(void *arg, const struct qb_vm_info *info), void *arg)
{
    for (const struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        struct qb_vm_info info = {
            .name = vm->name,
            .address = vm->address,
            .session = qb_qmp_state_name(qb_qmp_client_state(vm->qmp)),
            .qemu_version = vm->qemu_version,
            .run_state = vm->state && qb_vm_state_run_state(vm->state)[0]
                             ? qb_vm_state_run_state(vm->state)
                             : NULL,
            .last_event = vm->last_event,
            .last_event_usec = vm->last_event_usec,
            .sequence = qb_stream_sequence(vm->stream),
            .reconnects = vm->reconnects,
        };
        cb(arg, &info);
    }
}

void qb_vm_manager_foreach_count(const struct qb_vm_manager *m, enum qb_vm_count which,
                                 void (*cb)(void *arg, const char *key, const char *key2,
                                            uint64_t n),
                                 void *arg)
{
    for (const struct qb_count *c = m->counts; c; c = c->hh.next) {
        const char *key = c->key + 1;

        if (c->which == which)
            cb(arg, key, which == QB_VM_COUNT_COMMANDS ? key + strlen(key) + 1 : NULL, c->n);
    }
}

void qb_vm_manager_get_stats(const struct qb_vm_manager *m, struct qb_vm_manager_stats *out)
{
    *out = m->stats;
    out->connecting = m->n_connecting;
    out->slot_waiting = 0;
    for (const struct qb_vm *vm = m->slot_head; vm; vm = vm->slot_next)
        out->slot_waiting++;
}

const struct qb_histogram *qb_vm_manager_command_latency(const struct qb_vm_manager *m)
{
    return &m->cmd_latency;
}

size_t qb_vm_manager_count(const struct qb_vm_manager *m, size_t *ready)
{
    size_t n = 0, r = 0;

    for (const struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        n++;
        if (qb_qmp_client_state(vm->qmp) == QB_QMP_READY)
            r++;
    }
    if (ready)
        *ready = r;
    return n;
}

static void mgr_finish_async(uv_handle_t *h)
{
    struct qb_vm_manager *m = h->data;

    free(h);
    mgr_finish(m);
}

void qb_vm_manager_close(struct qb_vm_manager *m, void (*done)(void *arg), void *arg)
{
    struct qb_vm *vm, *tmp;

    m->closing = true;
    m->done = done;
    m->done_arg = arg;
    qb_outbox_set_pressure_cb(m->outbox, NULL, NULL);
    m->room_cb = NULL;
    qb_vm_listen_drop_all(m); /* not named yet: nothing was published for them */
    qb_publisher_closing(m->pub);
    if (m->n_alive == 0) {
        /* Nothing to wait for, but done must still come from the loop, not from here. */
        uv_idle_t *idle = malloc(sizeof(*idle));
        if (!idle) {
            mgr_finish(m);
            return;
        }
        uv_idle_init(m->loop, idle);
        idle->data = m;
        uv_close((uv_handle_t *)idle, mgr_finish_async);
        return;
    }
    /* not a removal: the retained state stays, connected: false, until the next start */
    HASH_ITER(hh, m->vms, vm, tmp) vm_begin_removal(vm, "bridge shutting down", true, false);
}

/* ---- configuration reload (reload.c) -------------------------------------- */

void qb_vm_manager_set_config(struct qb_vm_manager *m, const struct qb_config *cfg)
{
    m->cfg = cfg;
    qb_publisher_set_config(m->pub, cfg);
    /* sessions copy these when they are created: they apply to VMs added from now on */
    m->qmp_opts.max_line_bytes = cfg->qmp_max_line_bytes;
    m->qmp_opts.connect_timeout_ms = cfg->qmp_connect_timeout_ms;
    /* a raised max_connecting lets VMs that wait for a slot go now, from a 0 ms timer */
    qb_vm_slots_grant(m);
}

void qb_vm_manager_forget_transport(struct qb_vm_manager *m, const struct qb_transport *t)
{
    for (struct qb_vm *vm = m->vms; vm; vm = vm->hh.next) {
        if (vm->cmd_running && vm->cmd_running->transport == t)
            vm->cmd_running->transport = NULL;
        for (struct qb_vm_cmd *c = vm->cmd_head; c; c = c->next)
            if (c->transport == t)
                c->transport = NULL;
    }
}
