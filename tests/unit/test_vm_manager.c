/*
 * test_vm_manager.c - the VM manager driven through a scripted source and a
 * scripted transport backend, with no QEMU and no socket.
 *
 * The fake source (fake_*) implements source.h: the test brings sessions up
 * and down, feeds events and answers the snapshot and STOP-reason queries
 * and commands whenever it likes (never from inside the manager's call, as
 * the seam promises). The scripted backend (rec_*) records every message the
 * outbox hands it and delivers it from a 0 ms timer. What is checked is what
 * consumers see: per-VM order and numbering, bridge.vm.connected and the
 * snapshot before any qmp.* event of a session, a STOP held (with every later
 * event of its VM, but not of other VMs) until its reason query answers,
 * bridge.vm.disconnected with the state marked disconnected, and a command
 * result on the VM's stream.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "command.h"
#include "config.h"
#include "error.h"
#include "message.h"
#include "outbox.h"
#include "source.h"
#include "transport.h"
#include "transport_ops.h"
#include "vm_manager.h"

#include <jansson.h>
#include <uv.h>

/* ---- the scripted source ------------------------------------------------- */

#define FAKE_QUERIES 64

struct fake_query {
    bool open;
    enum qb_source_query which;
    qb_source_answer_cb cb;
    void *arg;
};

struct fake_link {
    struct qb_source_link head;
    char address[64];
    enum qb_source_session session;
    bool started, released, paused;
    int settled;
    struct fake_query q[FAKE_QUERIES];
    size_t nq;
    const struct qb_command *cmd; /* the running command, NULL when none */
    qb_source_result_cb cmd_done;
    void *cmd_arg;
    uv_timer_t release_timer;
    char release_why[64];
};

struct fake_source {
    struct qb_source head;
    uv_loop_t *loop;
};

static struct fake_link *links[4];
static size_t n_links;
static json_t *greeting;
static const struct qb_source_ops fake_ops;

static int fake_create(uv_loop_t *loop, const struct qb_config *cfg,
                       const struct qb_source_host *host, void *host_arg, struct qb_source **out)
{
    struct fake_source *s = calloc(1, sizeof(*s));

    (void)cfg;
    (void)host;
    (void)host_arg;
    assert_non_null(s);
    s->head.ops = &fake_ops;
    s->loop = loop;
    *out = &s->head;
    return QB_OK;
}

static void fake_set_config(struct qb_source *src, const struct qb_config *cfg)
{
    (void)src;
    (void)cfg;
}

static void fake_stats(const struct qb_source *src, struct qb_source_stats *out)
{
    (void)src;
    (void)out;
}

static void fake_close(struct qb_source *src)
{
    (void)src;
}

static void fake_free(struct qb_source *src)
{
    free(src);
}

static int fake_open(struct qb_source *src, const char *name, const char *address,
                     struct qb_source_link **out)
{
    struct fake_source *s = (struct fake_source *)src;
    struct fake_link *l;

    (void)name;
    if (strncmp(address, "fake:", 5) != 0)
        return QB_ENOTFOUND;
    assert_true(n_links < 4);
    l = calloc(1, sizeof(*l));
    assert_non_null(l);
    l->head.ops = &fake_ops;
    snprintf(l->address, sizeof(l->address), "%s", address);
    uv_timer_init(s->loop, &l->release_timer);
    l->release_timer.data = l;
    links[n_links++] = l;
    *out = &l->head;
    return QB_OK;
}

static void fake_start(struct qb_source_link *link)
{
    ((struct fake_link *)link)->started = true;
}

/* Fails every open query with status, as a session that closes does before on_closed. */
static void fake_fail_queries(struct fake_link *l, int status)
{
    for (size_t i = 0; i < l->nq; i++) {
        if (l->q[i].open) {
            l->q[i].open = false;
            l->q[i].cb(l->q[i].arg, status, NULL);
        }
    }
}

/* The session ends (the peer went away): queries fail, then on_closed. */
static void fake_close_session(struct fake_link *l, int err, const char *reason)
{
    if (l->session == QB_SOURCE_IDLE)
        return;
    l->session = QB_SOURCE_CLOSING;
    fake_fail_queries(l, QB_ECLOSED);
    l->session = QB_SOURCE_IDLE;
    l->head.cb->on_closed(l->head.cb_arg, err, reason);
}

static void fake_link_freed(uv_handle_t *h)
{
    struct fake_link *l = h->data;

    for (size_t i = 0; i < n_links; i++)
        if (links[i] == l)
            links[i] = NULL;
    free(l);
}

static void fake_release_cb(uv_timer_t *t)
{
    struct fake_link *l = t->data;

    fake_close_session(l, QB_ECLOSED, l->release_why);
    if (l->head.cb)
        l->head.cb->on_released(l->head.cb_arg);
    uv_close((uv_handle_t *)&l->release_timer, fake_link_freed);
}

static void fake_release(struct qb_source_link *link, const char *why)
{
    struct fake_link *l = (struct fake_link *)link;

    l->released = true;
    snprintf(l->release_why, sizeof(l->release_why), "%s", why);
    uv_timer_start(&l->release_timer, fake_release_cb, 0, 0); /* never from inside release */
}

static void fake_disconnect(struct qb_source_link *link, const char *why)
{
    fake_close_session((struct fake_link *)link, QB_ECLOSED, why);
}

static void fake_settled(struct qb_source_link *link)
{
    ((struct fake_link *)link)->settled++;
}

static void fake_pause(struct qb_source_link *link, bool paused)
{
    ((struct fake_link *)link)->paused = paused;
}

static int fake_query(struct qb_source_link *link, enum qb_source_query q, qb_source_answer_cb cb,
                      void *arg)
{
    struct fake_link *l = (struct fake_link *)link;

    if (l->session != QB_SOURCE_READY)
        return QB_ECLOSED;
    assert_true(l->nq < FAKE_QUERIES);
    l->q[l->nq++] = (struct fake_query){true, q, cb, arg};
    return QB_OK;
}

static int fake_command(struct qb_source_link *link, const struct qb_command *cmd,
                        qb_source_result_cb done, void *arg)
{
    struct fake_link *l = (struct fake_link *)link;

    assert_null(l->cmd);
    l->cmd = cmd;
    l->cmd_done = done;
    l->cmd_arg = arg;
    return QB_OK;
}

static enum qb_source_session fake_session(const struct qb_source_link *link)
{
    return ((const struct fake_link *)link)->session;
}

static const char *fake_session_name(const struct qb_source_link *link)
{
    static const char *const names[] = {"idle", "opening", "ready", "closing"};

    return names[((const struct fake_link *)link)->session];
}

static const char *fake_address(const struct qb_source_link *link)
{
    return ((const struct fake_link *)link)->address;
}

static const json_t *fake_greeting(const struct qb_source_link *link)
{
    (void)link;
    return greeting;
}

static const char *fake_version(const struct qb_source_link *link)
{
    (void)link;
    return "7.2.0";
}

static const struct qb_source_ops fake_ops = {
    .name = "fake",
    .create = fake_create,
    .set_config = fake_set_config,
    .stats = fake_stats,
    .close = fake_close,
    .free = fake_free,
    .open = fake_open,
    .start = fake_start,
    .release = fake_release,
    .disconnect = fake_disconnect,
    .settled = fake_settled,
    .pause = fake_pause,
    .query = fake_query,
    .command = fake_command,
    .session = fake_session,
    .session_name = fake_session_name,
    .address = fake_address,
    .greeting = fake_greeting,
    .version = fake_version,
};

static const struct qb_source_ops *const fake_registry[] = {&fake_ops, NULL};

/* The session of l comes up. */
static void fake_up(struct fake_link *l)
{
    l->session = QB_SOURCE_READY;
    l->head.cb->on_up(l->head.cb_arg, NULL);
}

/* Feeds one QMP-shaped event (JSON text) to l's VM. */
static void fake_event(struct fake_link *l, const char *text)
{
    json_error_t jerr;
    json_t *msg = json_loads(text, 0, &jerr);
    struct qb_source_event ev = {.msg = msg, .raw = text, .raw_len = strlen(text)};

    assert_non_null(msg);
    l->head.cb->on_event(l->head.cb_arg, &ev);
    json_decref(msg);
}

/* Open queries of l that ask which. */
static size_t fake_open_queries(const struct fake_link *l, enum qb_source_query which)
{
    size_t n = 0;

    for (size_t i = 0; i < l->nq; i++)
        if (l->q[i].open && l->q[i].which == which)
            n++;
    return n;
}

/* Answers l's oldest open query for which with status and answer (JSON text, may be NULL). */
static void fake_answer(struct fake_link *l, enum qb_source_query which, int status,
                        const char *answer)
{
    for (size_t i = 0; i < l->nq; i++) {
        if (l->q[i].open && l->q[i].which == which) {
            json_t *a = answer ? json_loads(answer, 0, NULL) : NULL;

            l->q[i].open = false;
            l->q[i].cb(l->q[i].arg, status, a);
            json_decref(a);
            return;
        }
    }
    fail_msg("no open query %s", qb_source_query_name(which));
}

/* Answers the six snapshot queries as a running QEMU 7.2 without COLO does. */
static void fake_answer_snapshot(struct fake_link *l, const char *status)
{
    char st[128];

    snprintf(st, sizeof(st), "{\"status\": \"%s\", \"running\": %s, \"singlestep\": false}", status,
             strcmp(status, "running") == 0 ? "true" : "false");
    fake_answer(l, QB_SOURCE_QUERY_STATUS, QB_OK, st);
    fake_answer(l, QB_SOURCE_QUERY_BLOCK, QB_OK, "[]");
    fake_answer(l, QB_SOURCE_QUERY_BLOCK_JOBS, QB_OK, "[]");
    fake_answer(l, QB_SOURCE_QUERY_COLO_STATUS, QB_EQMP,
                "{\"class\": \"CommandNotFound\", \"desc\": \"no COLO\"}");
    fake_answer(l, QB_SOURCE_QUERY_NAME, QB_OK, "{\"name\": \"guest\"}");
    fake_answer(l, QB_SOURCE_QUERY_UUID, QB_OK,
                "{\"UUID\": \"5b2e6d1c-8d7a-4b8e-9f51-0c2a3b4d5e6f\"}");
}

/* ---- the scripted transport backend -------------------------------------- */

#define REC_MAX 256

struct rec_msg {
    enum qb_msg_kind kind;
    char type[64];
    char vm[32];
    uint64_t seq;
    json_t *payload; /* parsed envelope; NULL for a clearing */
};

struct rec_backend {
    const struct qb_transport_backend_cb *cb;
    void *owner;
    void *tokens[REC_MAX];
    size_t n_tokens;
    uv_timer_t deliver;
    void (*closed)(void *arg);
    void *closed_arg;
};

static struct rec_msg recs[REC_MAX];
static size_t n_recs;

static int rec_validate(const struct qb_transport_config *cfg, char *errbuf, size_t errlen)
{
    (void)cfg;
    (void)errbuf;
    (void)errlen;
    return QB_OK;
}

static void rec_deliver_cb(uv_timer_t *t)
{
    struct rec_backend *b = t->data;
    size_t n = b->n_tokens;

    b->n_tokens = 0;
    for (size_t i = 0; i < n; i++)
        b->cb->delivered(b->owner, b->tokens[i], QB_OK);
}

static int rec_create(uv_loop_t *loop, const struct qb_transport_config *cfg,
                      const struct qb_bridge_info *bridge, const struct qb_transport_backend_cb *cb,
                      void *owner, void **backend, char *errbuf, size_t errlen)
{
    struct rec_backend *b = calloc(1, sizeof(*b));

    (void)cfg;
    (void)bridge;
    (void)errbuf;
    (void)errlen;
    assert_non_null(b);
    b->cb = cb;
    b->owner = owner;
    uv_timer_init(loop, &b->deliver);
    b->deliver.data = b;
    *backend = b;
    return QB_OK;
}

static int rec_publish(void *backend, const struct qb_message *msg, void *token)
{
    struct rec_backend *b = backend;
    struct rec_msg *r;

    assert_true(n_recs < REC_MAX && b->n_tokens < REC_MAX);
    r = &recs[n_recs++];
    r->kind = msg->kind;
    snprintf(r->type, sizeof(r->type), "%s", msg->type ? msg->type : "");
    snprintf(r->vm, sizeof(r->vm), "%s", msg->vm ? msg->vm : "");
    r->seq = msg->sequence;
    r->payload = msg->len ? json_loadb(msg->payload, msg->len, 0, NULL) : NULL;
    b->tokens[b->n_tokens++] = token;
    uv_timer_start(&b->deliver, rec_deliver_cb, 0, 0);
    return QB_OK;
}

static void rec_closed(uv_handle_t *h)
{
    struct rec_backend *b = h->data;
    void (*closed)(void *) = b->closed;
    void *arg = b->closed_arg;

    free(b);
    closed(arg);
}

static void rec_close(void *backend, void (*closed)(void *arg), void *arg)
{
    struct rec_backend *b = backend;

    for (size_t i = 0; i < b->n_tokens; i++)
        b->cb->delivered(b->owner, b->tokens[i], QB_ECLOSED);
    b->n_tokens = 0;
    b->closed = closed;
    b->closed_arg = arg;
    uv_close((uv_handle_t *)&b->deliver, rec_closed);
}

static const struct qb_transport_ops rec_ops = {
    .name = "rec",
    .caps = QB_TRANSPORT_CAP_RETAINED | QB_TRANSPORT_CAP_KEYED,
    .validate = rec_validate,
    .create = rec_create,
    .publish = rec_publish,
    .close = rec_close,
};

/* ---- the bridge under test ----------------------------------------------- */

static uv_loop_t loop;
static struct qb_config *cfg;
static struct qb_transport *tr;
static struct qb_outbox *outbox;
static struct qb_vm_manager *mgr;
static bool mgr_closed, tr_closed;

/* Lets the loop run its due timers and checks (deliveries, state copies, releases). */
static void pump(void)
{
    for (int i = 0; i < 20; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

static int setup(void **state)
{
    static const char yaml[] = "bridge: { id: br1 }\n"
                               "vms:\n"
                               "  - { name: unused, qmp: \"unix:/nonexistent.qmp\" }\n"
                               "transports:\n"
                               "  - { type: stdout, path: /dev/null }\n";
    char err[512] = "";
    struct qb_bridge_info bridge = {.id = "br1"};

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    if (qb_config_load_string("t.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)) != QB_OK)
        fail_msg("config: %s", err);
    assert_int_equal(qb_transport_create_with_ops(&rec_ops, &loop, &cfg->transports[0], &bridge,
                                                  &tr, err, sizeof(err)),
                     QB_OK);
    assert_int_equal(qb_outbox_new(&loop, cfg, &tr, 1, NULL, &outbox), QB_OK);
    assert_int_equal(qb_vm_manager_new_with_sources(&loop, cfg, outbox, fake_registry, &mgr),
                     QB_OK);
    greeting = json_pack("{s:{s:{s:i, s:i, s:i}, s:s}, s:[]}", "version", "qemu", "major", 7,
                         "minor", 2, "micro", 0, "package", "", "capabilities");
    n_recs = 0;
    n_links = 0;
    mgr_closed = tr_closed = false;
    return 0;
}

static void on_mgr_closed(void *arg)
{
    (void)arg;
    mgr_closed = true;
}

static void on_tr_closed(void *arg)
{
    (void)arg;
    tr_closed = true;
}

static int teardown(void **state)
{
    (void)state;
    qb_vm_manager_close(mgr, on_mgr_closed, NULL);
    for (int i = 0; i < 100 && !mgr_closed; i++)
        pump();
    assert_true(mgr_closed);
    qb_outbox_close(outbox);
    qb_transport_close_now(tr, on_tr_closed, NULL);
    for (int i = 0; i < 100 && !tr_closed; i++)
        pump();
    assert_true(tr_closed);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    for (size_t i = 0; i < n_recs; i++)
        json_decref(recs[i].payload);
    json_decref(greeting);
    qb_config_free(cfg);
    return 0;
}

/* ---- what consumers saw -------------------------------------------------- */

/* Index of the first recorded message of vm with kind and type at or after from, or -1. */
static int find(size_t from, const char *vm, enum qb_msg_kind kind, const char *type)
{
    for (size_t i = from; i < n_recs; i++)
        if (recs[i].kind == kind && strcmp(recs[i].vm, vm) == 0 && strcmp(recs[i].type, type) == 0)
            return (int)i;
    return -1;
}

/* How many event-stream messages of vm were published. */
static size_t count_events(const char *vm)
{
    size_t n = 0;

    for (size_t i = 0; i < n_recs; i++)
        if (recs[i].kind == QB_MSG_EVENT && strcmp(recs[i].vm, vm) == 0)
            n++;
    return n;
}

/* Every event-stream message of vm carries the next sequence number: 1, 2, 3, ... */
static void assert_vm_numbered(const char *vm)
{
    uint64_t want = 1;

    for (size_t i = 0; i < n_recs; i++) {
        if (recs[i].kind != QB_MSG_EVENT || strcmp(recs[i].vm, vm) != 0)
            continue;
        if (recs[i].seq != want)
            fail_msg("%s: message %zu (%s) has sequence %llu, expected %llu", vm, i, recs[i].type,
                     (unsigned long long)recs[i].seq, (unsigned long long)want);
        want++;
    }
}

/* The "data" member of recorded message i. */
static json_t *data_of(int i)
{
    assert_true(i >= 0);
    return json_object_get(recs[i].payload, "data");
}

static struct fake_link *add_vm(const char *name, const char *address)
{
    assert_int_equal(qb_vm_manager_add(mgr, name, address), QB_OK);
    assert_non_null(links[n_links - 1]);
    assert_true(links[n_links - 1]->started);
    return links[n_links - 1];
}

/* ---- the cases ----------------------------------------------------------- */

/* connected and the snapshot come before any qmp.* event read during the snapshot. */
static void test_snapshot_first(void **state)
{
    struct fake_link *l;
    int connected, snap, resumed;

    (void)state;
    l = add_vm("vm1", "fake:vm1");
    assert_int_equal(qb_vm_manager_add(mgr, "vm1", "fake:again"), QB_EEXIST);
    assert_int_equal(qb_vm_manager_add(mgr, "vm2", "nowhere:x"), QB_EINVAL);
    pump();
    assert_int_equal(n_recs, 0);

    fake_up(l);
    for (int q = 0; q < QB_SOURCE_QUERY_COUNT; q++)
        assert_int_equal(fake_open_queries(l, (enum qb_source_query)q), 1);
    /* read while the snapshot is taken: it waits */
    fake_event(l, "{\"event\": \"RESUME\", \"data\": {}, "
                  "\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 1}}");
    pump();
    assert_int_equal(count_events("vm1"), 0);

    fake_answer_snapshot(l, "running");
    pump();
    assert_int_equal(l->settled, 1);
    connected = find(0, "vm1", QB_MSG_EVENT, "bridge.vm.connected");
    snap = find(0, "vm1", QB_MSG_EVENT, "qmp.vm.state");
    resumed = find(0, "vm1", QB_MSG_EVENT, "qmp.vm.resumed");
    assert_true(connected >= 0 && snap > connected && resumed > snap);
    assert_string_equal(json_string_value(json_object_get(data_of(connected), "uuid")),
                        "5b2e6d1c-8d7a-4b8e-9f51-0c2a3b4d5e6f");
    assert_string_equal(json_string_value(json_object_get(data_of(connected), "address")),
                        "fake:vm1");
    assert_true(find(0, "vm1", QB_MSG_STATE, "qmp.vm.state") >= 0);
    assert_vm_numbered("vm1");
}

/* A STOP waits for its reason query, and so does every later event of its VM, not of others. */
static void test_stop_held_for_reason(void **state)
{
    struct fake_link *a, *b;
    size_t mark;
    int stopped, resumed, other;

    (void)state;
    a = add_vm("vm1", "fake:vm1");
    b = add_vm("vm2", "fake:vm2");
    fake_up(a);
    fake_up(b);
    fake_answer_snapshot(a, "running");
    fake_answer_snapshot(b, "running");
    pump();
    mark = n_recs;

    fake_event(a, "{\"event\": \"STOP\", \"data\": {}, "
                  "\"timestamp\": {\"seconds\": 1700000001, \"microseconds\": 0}}");
    assert_int_equal(fake_open_queries(a, QB_SOURCE_QUERY_STATUS), 1);
    fake_event(a, "{\"event\": \"RESUME\", \"data\": {}, "
                  "\"timestamp\": {\"seconds\": 1700000002, \"microseconds\": 0}}");
    fake_event(b, "{\"event\": \"RESUME\", \"data\": {}, "
                  "\"timestamp\": {\"seconds\": 1700000002, \"microseconds\": 5}}");
    pump();
    assert_int_equal(find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.stopped"), -1);
    assert_int_equal(find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.resumed"), -1);
    other = find(mark, "vm2", QB_MSG_EVENT, "qmp.vm.resumed");
    assert_true(other >= 0); /* vm2 does not wait for vm1's query */

    fake_answer(a, QB_SOURCE_QUERY_STATUS, QB_OK,
                "{\"status\": \"paused\", \"running\": false, \"singlestep\": false}");
    /* any further query the normaliser asks for answers the same way */
    while (fake_open_queries(a, QB_SOURCE_QUERY_STATUS))
        fake_answer(a, QB_SOURCE_QUERY_STATUS, QB_OK,
                    "{\"status\": \"paused\", \"running\": false, \"singlestep\": false}");
    pump();
    stopped = find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.stopped");
    resumed = find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.resumed");
    assert_true(stopped > other && resumed > stopped);
    assert_non_null(json_object_get(data_of(stopped), "reason"));
    assert_vm_numbered("vm1");
    assert_vm_numbered("vm2");
}

/* A session that fails publishes disconnected and the state marked disconnected; reconnected,
 * the next session starts with connected and a snapshot again. */
static void test_session_failure(void **state)
{
    struct fake_link *l;
    size_t mark;
    int disc, st, again, snap;

    (void)state;
    l = add_vm("vm1", "fake:vm1");
    fake_up(l);
    fake_answer_snapshot(l, "running");
    pump();
    mark = n_recs;

    fake_close_session(l, QB_EIO, "peer closed the connection");
    pump();
    disc = find(mark, "vm1", QB_MSG_EVENT, "bridge.vm.disconnected");
    st = find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.state");
    assert_true(disc >= 0 && st > disc);
    assert_string_equal(json_string_value(json_object_get(data_of(disc), "reason")),
                        "peer closed the connection");
    assert_true(json_is_false(json_object_get(data_of(st), "connected")));

    mark = n_recs;
    fake_up(l);
    fake_answer_snapshot(l, "paused");
    pump();
    again = find(mark, "vm1", QB_MSG_EVENT, "bridge.vm.connected");
    snap = find(mark, "vm1", QB_MSG_EVENT, "qmp.vm.state");
    assert_true(again >= 0 && snap > again);
    assert_vm_numbered("vm1");
}

static int results_seen;
static char result_status[16];

static void on_command_done(void *arg, const struct qb_command *cmd, const json_t *result)
{
    (void)arg;
    assert_string_equal(cmd->id, "c1");
    snprintf(result_status, sizeof(result_status), "%s",
             json_string_value(json_object_get(result, "status")));
    results_seen++;
}

/* A command runs whole on the source; its result is published on the VM's stream, then the
 * state is read again (a command may change what QEMU raises no event for). */
static void test_command_result(void **state)
{
    struct fake_link *l;
    struct qb_command *cmd = calloc(1, sizeof(*cmd));
    struct qb_command_origin origin = {0};
    struct qb_command_error err = {0};
    size_t mark;
    int res, snap;

    (void)state;
    l = add_vm("vm1", "fake:vm1");
    assert_non_null(cmd);
    cmd->id = strdup("c1");
    cmd->subject = strdup("vm1");
    cmd->source = strdup("test");
    cmd->name = QB_CMD_CONT;
    cmd->name_known = true;
    /* not connected yet: refused, cmd stays ours */
    assert_int_equal(qb_vm_manager_submit_command(mgr, cmd, &origin, on_command_done, NULL, &err),
                     QB_ECLOSED);
    assert_string_equal(err.cls, QB_CMD_ERR_NOT_CONNECTED);
    fake_up(l);
    fake_answer_snapshot(l, "paused");
    pump();
    mark = n_recs;
    results_seen = 0;

    assert_int_equal(qb_vm_manager_submit_command(mgr, cmd, &origin, on_command_done, NULL, &err),
                     QB_OK);
    assert_ptr_equal(l->cmd, cmd);
    l->cmd = NULL;
    l->cmd_done(l->cmd_arg, json_pack("{s:s, s:s, s:s, s:[{s:s, s:s}], s:s}", "command_id", "c1",
                                      "command", "cont", "status", "ok", "steps", "execute", "cont",
                                      "status", "ok", "run_state", "running"));
    pump();
    assert_int_equal(results_seen, 1);
    assert_string_equal(result_status, "ok");
    res = find(mark, "vm1", QB_MSG_EVENT, "bridge.command.result");
    assert_true(res >= 0);
    assert_string_equal(json_string_value(json_object_get(data_of(res), "command_id")), "c1");

    /* the state is read again after the command */
    assert_int_equal(fake_open_queries(l, QB_SOURCE_QUERY_STATUS), 1);
    fake_answer_snapshot(l, "running");
    pump();
    snap = find((size_t)res, "vm1", QB_MSG_EVENT, "qmp.vm.state");
    assert_true(snap > res);
    assert_vm_numbered("vm1");
}

/* A VM removed for good: disconnected, then its retained state cleared, and the entry goes. */
static void test_remove_clears_state(void **state)
{
    struct fake_link *l;
    size_t mark;
    int disc;
    bool cleared = false;

    (void)state;
    l = add_vm("vm1", "fake:vm1");
    fake_up(l);
    fake_answer_snapshot(l, "running");
    pump();
    mark = n_recs;
    assert_int_equal(qb_vm_manager_remove(mgr, "vm1", "removed by the test"), QB_OK);
    assert_false(qb_vm_manager_has_vm(mgr, "vm1"));
    pump();
    disc = find(mark, "vm1", QB_MSG_EVENT, "bridge.vm.disconnected");
    assert_true(disc >= 0);
    for (size_t i = (size_t)disc; i < n_recs; i++)
        if (recs[i].kind == QB_MSG_STATE && !recs[i].payload && strcmp(recs[i].vm, "vm1") == 0)
            cleared = true;
    assert_true(cleared);
    assert_null(links[0]); /* the source freed its link after on_released */
    assert_int_equal(qb_vm_manager_count(mgr, NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_held_for_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_result, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remove_clears_state, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
