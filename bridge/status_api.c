/*
 * status_api.c - /metrics, /healthz, /readyz and /vms.
 *
 * Collectors run at request time on the loop thread (http_server.c drives
 * libmicrohttpd from the loop), so they read the live objects without locks.
 * Metric names follow Prometheus conventions: qmp_bridge_ prefix, counters end
 * in _total, durations in seconds. Label values are transport names, event
 * types, command names and statuses: bounded sets, never VM names (a host may
 * run thousands of VMs; /vms is where per-VM detail lives).
 */
#include "status_api.h"

#include "error.h"
#include "http_server.h"
#include "log.h"
#include "normalize.h"
#include "process_metrics.h"
#include "prom.h"
#include "qmp_client.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

struct qb_status_api {
    qb_status_view_fn view; /* what runs now, asked at every request */
    void *view_arg;
    struct qb_http_server *http;
};

static uint64_t now_usec(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* ---- /metrics ------------------------------------------------------------ */

/* The session states, in the order qmp_client.h defines them, so every state has a sample. */
static const enum qb_qmp_state all_states[] = {QB_QMP_IDLE,     QB_QMP_CONNECTING,
                                               QB_QMP_GREETING, QB_QMP_NEGOTIATING,
                                               QB_QMP_READY,    QB_QMP_CLOSING};
#define N_STATES (sizeof(all_states) / sizeof(all_states[0]))

struct vm_tally {
    uint64_t by_state[N_STATES];
    uint64_t by_run_state[QB_N_RUN_STATES + 1]; /* the last one is "unknown" */
};

const char *qb_status_run_state_label(const char *session, const char *run_state)
{
    if (!session || !run_state || strcmp(session, qb_qmp_state_name(QB_QMP_READY)) != 0)
        return "unknown";
    for (size_t i = 0; qb_run_states[i]; i++)
        if (strcmp(run_state, qb_run_states[i]) == 0)
            return qb_run_states[i];
    return "unknown";
}

static void tally_vm(void *arg, const struct qb_vm_info *info)
{
    struct vm_tally *t = arg;
    const char *run = qb_status_run_state_label(info->session, info->run_state);
    size_t i;

    for (i = 0; i < N_STATES; i++)
        if (strcmp(info->session, qb_qmp_state_name(all_states[i])) == 0)
            t->by_state[i]++;
    /* the label is one of qb_run_states or else "unknown", which lands on the last slot */
    for (i = 0; i < QB_N_RUN_STATES && qb_run_states[i] != run; i++)
        ;
    t->by_run_state[i]++;
}

/* Every run state gets a sample, zeros included: an alert's expression then always has a series. */
static void emit_run_states(struct qb_prom_writer *w, const struct vm_tally *t)
{
    for (size_t i = 0; i <= QB_N_RUN_STATES; i++) {
        const char *labels[] = {"run_state", i < QB_N_RUN_STATES ? qb_run_states[i] : "unknown",
                                NULL};
        qb_prom_sample_u64(w, "qmp_bridge_vms_by_run_state", labels, t->by_run_state[i]);
    }
}

static void emit_event_count(void *arg, const char *key, const char *key2, uint64_t n)
{
    const char *labels[] = {"type", key, NULL};

    (void)key2;
    qb_prom_sample_u64(arg, "qmp_bridge_qmp_events_total", labels, n);
}

static void emit_command_count(void *arg, const char *key, const char *key2, uint64_t n)
{
    const char *labels[] = {"command", key, "status", key2, NULL};

    qb_prom_sample_u64(arg, "qmp_bridge_commands_total", labels, n);
}

/* One sample per reason, zeros included, so a dashboard sees every reason from the start. */
static void emit_sessions_closed(struct qb_prom_writer *w, const struct qb_vm_manager_stats *st)
{
    const struct {
        const char *reason;
        uint64_t n;
    } closed[] = {
        {"held_events", st->held_over_events},
        {"held_bytes", st->held_over_bytes},
        {"listen_max_vms", st->listen_refused},
    };

    for (size_t i = 0; i < sizeof(closed) / sizeof(closed[0]); i++) {
        const char *labels[] = {"reason", closed[i].reason, NULL};
        qb_prom_sample_u64(w, "qmp_bridge_qmp_sessions_closed_total", labels, closed[i].n);
    }
}

static void collect_vms(struct qb_prom_writer *w, struct qb_vm_manager *mgr)
{
    struct vm_tally t = {{0}, {0}};
    struct qb_vm_manager_stats st = {0};

    qb_prom_family(w, "qmp_bridge_vms", "gauge", "VMs by QMP session state");
    qb_prom_family(w, "qmp_bridge_vms_by_run_state", "gauge",
                   "VMs by QEMU run state (query-status and the events since); \"unknown\" while "
                   "the QMP session is not ready");
    qb_prom_family(w, "qmp_bridge_qmp_events_total", "counter",
                   "Events published, by CloudEvents type (bridge events included)");
    qb_prom_family(w, "qmp_bridge_commands_total", "counter",
                   "Command results published, by command and status");
    qb_prom_family(w, "qmp_bridge_reconnects_total", "counter",
                   "QMP sessions lost after they were ready");
    qb_prom_family(w, "qmp_bridge_connect_failures_total", "counter",
                   "QMP connect attempts that never became ready");
    qb_prom_family(w, "qmp_bridge_vms_connecting", "gauge",
                   "VMs connecting, negotiating or taking their snapshot (bounded by "
                   "qmp.max_connecting)");
    qb_prom_family(w, "qmp_bridge_vms_waiting_to_connect", "gauge",
                   "VMs waiting for a connect slot");
    qb_prom_family(w, "qmp_bridge_command_latency_seconds", "histogram",
                   "Command received to its result published");
    qb_prom_family(w, "qmp_bridge_qmp_sessions_closed_total", "counter",
                   "QMP sessions the bridge closed to protect itself, by reason");
    qb_prom_family(w, "qmp_bridge_listen_vms_forgotten_total", "counter",
                   "Listen-mode VMs forgotten after qmp.listen_forget_after (retained state "
                   "cleared)");
    qb_prom_family(w, "qmp_bridge_libvirt_connected", "gauge",
                   "1 while the libvirt source is connected to libvirtd (only with libvirt.uri)");
    qb_prom_family(w, "qmp_bridge_libvirt_connections_lost_total", "counter",
                   "Connections to libvirtd lost after they were up (then made again)");
    qb_prom_family(w, "qmp_bridge_libvirt_connect_failures_total", "counter",
                   "Attempts to connect to libvirtd that failed");
    qb_prom_family(w, "qmp_bridge_libvirt_domains_refused_total", "counter",
                   "Domains not taken: a name that is not a valid VM name, or one the bridge "
                   "already has");
    qb_prom_family(w, "qmp_bridge_libvirt_events_dropped_total", "counter",
                   "Events libvirtd relayed that no session took (a domain not taken or not yet "
                   "up, a bad event name or data)");
    if (mgr) {
        qb_vm_manager_foreach(mgr, tally_vm, &t);
        qb_vm_manager_foreach_count(mgr, QB_VM_COUNT_EVENTS, emit_event_count, w);
        qb_vm_manager_foreach_count(mgr, QB_VM_COUNT_COMMANDS, emit_command_count, w);
        qb_vm_manager_get_stats(mgr, &st);
        qb_prom_histogram(w, "qmp_bridge_command_latency_seconds", NULL,
                          qb_vm_manager_command_latency(mgr));
    }
    for (size_t i = 0; i < N_STATES; i++) {
        const char *labels[] = {"state", qb_qmp_state_name(all_states[i]), NULL};
        qb_prom_sample_u64(w, "qmp_bridge_vms", labels, t.by_state[i]);
    }
    emit_run_states(w, &t);
    qb_prom_sample_u64(w, "qmp_bridge_reconnects_total", NULL, st.reconnects);
    qb_prom_sample_u64(w, "qmp_bridge_connect_failures_total", NULL, st.connect_failed);
    qb_prom_sample_u64(w, "qmp_bridge_vms_connecting", NULL, st.connecting);
    qb_prom_sample_u64(w, "qmp_bridge_vms_waiting_to_connect", NULL, st.slot_waiting);
    emit_sessions_closed(w, &st);
    qb_prom_sample_u64(w, "qmp_bridge_listen_vms_forgotten_total", NULL, st.listen_forgotten);
    if (st.libvirt_configured) {
        qb_prom_sample_u64(w, "qmp_bridge_libvirt_connected", NULL, st.libvirt_connected);
        qb_prom_sample_u64(w, "qmp_bridge_libvirt_connections_lost_total", NULL, st.libvirt_lost);
        qb_prom_sample_u64(w, "qmp_bridge_libvirt_connect_failures_total", NULL,
                           st.libvirt_connect_failed);
        qb_prom_sample_u64(w, "qmp_bridge_libvirt_domains_refused_total", NULL, st.libvirt_refused);
        qb_prom_sample_u64(w, "qmp_bridge_libvirt_events_dropped_total", NULL,
                           st.libvirt_events_dropped);
    }
}

static void collect_router(struct qb_prom_writer *w, const struct qb_command_router *r)
{
    struct qb_command_router_stats st;
    static const char *const answered[] = {"outcome", "answered", NULL};
    static const char *const dropped[] = {"outcome", "dropped", NULL};

    qb_command_router_get_stats(r, &st);
    qb_prom_family(w, "qmp_bridge_commands_unauthenticated_total", "counter",
                   "Messages on the command channel that were not authenticated commands: "
                   "rejection answered on the result topic, or dropped (rate limit, no reply "
                   "channel)");
    qb_prom_sample_u64(w, "qmp_bridge_commands_unauthenticated_total", answered,
                       st.unauthenticated_answered);
    qb_prom_sample_u64(w, "qmp_bridge_commands_unauthenticated_total", dropped,
                       st.unauthenticated_dropped);
    qb_prom_family(w, "qmp_bridge_commands_duplicates_total", "counter",
                   "Copies of a command that had already run: answered again with its first "
                   "result, or dropped (more than 10 a second)");
    qb_prom_sample_u64(w, "qmp_bridge_commands_duplicates_total", answered, st.duplicates_answered);
    qb_prom_sample_u64(w, "qmp_bridge_commands_duplicates_total", dropped, st.duplicates_dropped);
}

/* One table row per transport counter: name, help, and where it is in the stats. */
static const struct {
    const char *name, *type, *help;
    size_t offset;
} transport_metrics[] = {
    {"qmp_bridge_envelopes_queued_total", "counter", "Messages accepted into the transport queue",
     offsetof(struct qb_transport_stats, queued)},
    {"qmp_bridge_envelopes_published_total", "counter",
     "Messages handed to the backend (retries count again)",
     offsetof(struct qb_transport_stats, published)},
    {"qmp_bridge_envelopes_confirmed_total", "counter",
     "Deliveries confirmed (Kafka delivery report, MQTT PUBACK, write done)",
     offsetof(struct qb_transport_stats, confirmed)},
    {"qmp_bridge_events_confirmed_total", "counter",
     "Of the confirmed deliveries, the events (not the state copies, not command results)",
     offsetof(struct qb_transport_stats, confirmed_events)},
    {"qmp_bridge_envelopes_retried_total", "counter", "Failed deliveries, each sent again in order",
     offsetof(struct qb_transport_stats, retried)},
    {"qmp_bridge_envelopes_failed_total", "counter",
     "Messages the backend refused outright (dropped)",
     offsetof(struct qb_transport_stats, failed)},
    {"qmp_bridge_envelopes_dropped_total", "counter", "Messages refused because the queue was full",
     offsetof(struct qb_transport_stats, dropped)},
    {"qmp_bridge_envelopes_filtered_total", "counter",
     "Messages left out by the transport's include / exclude lists",
     offsetof(struct qb_transport_stats, filtered)},
    {"qmp_bridge_queue_messages", "gauge", "Messages in the transport queue (in flight included)",
     offsetof(struct qb_transport_stats, depth)},
    {"qmp_bridge_queue_bytes", "gauge", "Payload bytes in the transport queue",
     offsetof(struct qb_transport_stats, depth_bytes)},
    {"qmp_bridge_queue_max_messages", "gauge", "The transport queue's bound in messages",
     offsetof(struct qb_transport_stats, max_messages)},
    {"qmp_bridge_queue_max_bytes", "gauge", "The transport queue's bound in payload bytes",
     offsetof(struct qb_transport_stats, max_bytes)},
};

struct rtt_ctx {
    struct qb_prom_writer *w;
    const char *transport;
};

static void emit_broker_rtt(void *arg, const char *broker, double avg_s, double p99_s)
{
    const struct rtt_ctx *c = arg;
    const char *labels[] = {"transport", c->transport, "broker", broker, NULL};

    qb_prom_sample_double(c->w, "qmp_bridge_broker_rtt_seconds", labels, avg_s);
    qb_prom_sample_double(c->w, "qmp_bridge_broker_rtt_p99_seconds", labels, p99_s);
}

static void collect_transports(struct qb_prom_writer *w, struct qb_transport *const *tr, size_t n)
{
    for (size_t k = 0; k < sizeof(transport_metrics) / sizeof(transport_metrics[0]); k++)
        qb_prom_family(w, transport_metrics[k].name, transport_metrics[k].type,
                       transport_metrics[k].help);
    qb_prom_family(w, "qmp_bridge_queue_oldest_age_seconds", "gauge",
                   "How long the oldest queued message has waited");
    qb_prom_family(w, "qmp_bridge_transport_up", "gauge", "1 while the transport's link is up");
    qb_prom_family(w, "qmp_bridge_delivery_latency_seconds", "histogram",
                   "QMP event time to delivery confirmation");
    qb_prom_family(w, "qmp_bridge_broker_rtt_seconds", "gauge",
                   "Average request round trip to each broker over the client library's last "
                   "statistics window (Kafka; libmosquitto measures none)");
    qb_prom_family(w, "qmp_bridge_broker_rtt_p99_seconds", "gauge",
                   "99th percentile of the same round trips");
    for (size_t i = 0; tr && i < n; i++) {
        struct qb_transport_stats st;
        const char *labels[] = {"transport", qb_transport_name(tr[i]), NULL};

        qb_transport_get_stats(tr[i], &st);
        for (size_t k = 0; k < sizeof(transport_metrics) / sizeof(transport_metrics[0]); k++)
            qb_prom_sample_u64(
                w, transport_metrics[k].name, labels,
                *(const uint64_t *)((const char *)&st + transport_metrics[k].offset));
        qb_prom_sample_double(w, "qmp_bridge_queue_oldest_age_seconds", labels,
                              (double)st.oldest_age_ms / 1000.0);
        qb_prom_sample_u64(w, "qmp_bridge_transport_up", labels, st.link_up ? 1 : 0);
        qb_prom_histogram(w, "qmp_bridge_delivery_latency_seconds", labels,
                          qb_transport_latency(tr[i]));
        qb_transport_foreach_broker_rtt(tr[i], emit_broker_rtt,
                                        &(struct rtt_ctx){w, qb_transport_name(tr[i])});
    }
}

static void collect_spool(struct qb_prom_writer *w, struct qb_spool *spool, struct qb_outbox *ob,
                          const struct qb_config *cfg)
{
    struct qb_spool_stats st = {0};
    struct qb_outbox_stats os = {0};

    if (ob)
        qb_outbox_get_stats(ob, &os);
    qb_prom_family(w, "qmp_bridge_outbox_held_messages", "gauge",
                   "Messages held in memory because the spool cannot take them");
    qb_prom_family(w, "qmp_bridge_outbox_dropped_total", "counter",
                   "Messages lost: memory list full, or the spool dropped its oldest records");
    qb_prom_family(w, "qmp_bridge_outbox_replayed_total", "counter",
                   "Messages fed to lagging transports from the spool on disk");
    qb_prom_family(w, "qmp_bridge_outbox_lagging_transports", "gauge",
                   "Transports being fed from the spool instead of from memory");
    qb_prom_sample_u64(w, "qmp_bridge_outbox_held_messages", NULL, os.held);
    qb_prom_sample_u64(w, "qmp_bridge_outbox_dropped_total", NULL, os.dropped);
    qb_prom_sample_u64(w, "qmp_bridge_outbox_replayed_total", NULL, os.from_spool);
    qb_prom_sample_u64(w, "qmp_bridge_outbox_lagging_transports", NULL, os.lagging);
    if (!spool)
        return;
    qb_spool_get_stats(spool, &st);
    qb_prom_family(w, "qmp_bridge_spool_records", "gauge", "Records stored, not yet released");
    qb_prom_family(w, "qmp_bridge_spool_bytes", "gauge", "Bytes of all spool segments");
    qb_prom_family(w, "qmp_bridge_spool_max_bytes", "gauge",
                   "spool.max_size: at 90% of it QMP reads pause (or the oldest records go)");
    qb_prom_family(w, "qmp_bridge_spool_segments", "gauge", "Spool segment files");
    qb_prom_family(w, "qmp_bridge_spool_oldest_age_seconds", "gauge",
                   "Age of the oldest stored record");
    qb_prom_family(w, "qmp_bridge_spool_appended_total", "counter", "Records appended");
    qb_prom_family(w, "qmp_bridge_spool_released_total", "counter",
                   "Records released after every transport confirmed them");
    qb_prom_family(w, "qmp_bridge_spool_dropped_total", "counter",
                   "Records deleted undelivered (on_full: drop_oldest)");
    qb_prom_family(w, "qmp_bridge_spool_corrupt_total", "counter", "Corrupt records skipped");
    qb_prom_family(w, "qmp_bridge_spool_write_errors_total", "counter",
                   "Appends that failed (file system full, I/O error)");
    qb_prom_sample_u64(w, "qmp_bridge_spool_records", NULL, st.records);
    qb_prom_sample_u64(w, "qmp_bridge_spool_bytes", NULL, st.bytes);
    qb_prom_sample_u64(w, "qmp_bridge_spool_max_bytes", NULL, cfg->spool_max_bytes);
    qb_prom_sample_u64(w, "qmp_bridge_spool_segments", NULL, st.segments);
    qb_prom_sample_double(w, "qmp_bridge_spool_oldest_age_seconds", NULL,
                          st.oldest_usec ? (double)(now_usec() - st.oldest_usec) / 1e6 : 0.0);
    qb_prom_sample_u64(w, "qmp_bridge_spool_appended_total", NULL, st.appended);
    qb_prom_sample_u64(w, "qmp_bridge_spool_released_total", NULL, st.released);
    qb_prom_sample_u64(w, "qmp_bridge_spool_dropped_total", NULL, st.dropped);
    qb_prom_sample_u64(w, "qmp_bridge_spool_corrupt_total", NULL, st.corrupt);
    qb_prom_sample_u64(w, "qmp_bridge_spool_write_errors_total", NULL, st.write_errors);
}

static void collect_reload(struct qb_prom_writer *w, const struct qb_reload_outcome *o)
{
    if (!o)
        return;
    qb_prom_family(w, "qmp_bridge_config_last_reload_successful", "gauge",
                   "Whether the last configuration reload attempt was successful (start-up "
                   "counts as one)");
    qb_prom_family(w, "qmp_bridge_config_last_reload_success_timestamp_seconds", "gauge",
                   "Timestamp of the last successful configuration reload");
    qb_prom_sample_u64(w, "qmp_bridge_config_last_reload_successful", NULL, o->successful);
    qb_prom_sample_double(w, "qmp_bridge_config_last_reload_success_timestamp_seconds", NULL,
                          (double)o->success_usec / 1e6);
}

void qb_status_metrics_collect(struct qb_prom_writer *w, const struct qb_status_view *v)
{
    qb_prom_family(w, "qmp_bridge_info", "gauge",
                   "Constant 1, labelled with version and bridge id");
    qb_prom_sample_u64(
        w, "qmp_bridge_info",
        (const char *const[]){"version", QB_VERSION, "bridge", v->cfg->bridge_id, NULL}, 1);
    collect_vms(w, v->mgr);
    collect_router(w, v->router);
    collect_transports(w, v->transports, v->n_transports);
    collect_spool(w, v->spool, v->outbox, v->cfg);
    collect_reload(w, v->reload);
    qb_process_metrics_collect(w);
}

static int handle_metrics(void *arg, const struct qb_http_request *req,
                          struct qb_http_response *resp)
{
    struct qb_status_api *api = arg;
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct qb_status_view v;

    (void)req;
    if (!w)
        return QB_ENOMEM;
    api->view(api->view_arg, &v);
    qb_status_metrics_collect(w, &v);
    qb_prom_family(w, "qmp_bridge_http_connections", "gauge", "Open status API connections");
    qb_prom_sample_u64(w, "qmp_bridge_http_connections", NULL,
                       qb_http_server_connections(api->http));
    qb_prom_family(w, "qmp_bridge_http_head_timeouts_total", "counter",
                   "Status API connections closed without a complete request head in time");
    qb_prom_sample_u64(w, "qmp_bridge_http_head_timeouts_total", NULL,
                       qb_http_server_head_timeouts(api->http));
    qb_prom_family(w, "qmp_bridge_http_shared_answers_total", "counter",
                   "Requests for /metrics or /vms answered with the answer just built for "
                   "another (it is younger than twice what building it took)");
    qb_prom_sample_u64(w, "qmp_bridge_http_shared_answers_total", NULL,
                       qb_http_server_shared_answers(api->http));
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return qb_prom_writer_finish(w, &resp->body, &resp->body_len);
}

/* ---- /healthz, /readyz, /vms --------------------------------------------- */

static int respond_json(struct qb_http_response *resp, int status, json_t *body)
{
    char *text;

    if (!body)
        return QB_ENOMEM;
    text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        return QB_ENOMEM;
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = text;
    resp->body_len = strlen(text);
    return QB_OK;
}

static int handle_healthz(void *arg, const struct qb_http_request *req,
                          struct qb_http_response *resp)
{
    (void)arg, (void)req;
    /* Answering at all proves the loop turns: that is what liveness means here. */
    resp->content_type = "application/json";
    resp->static_body = "{\"status\":\"ok\"}";
    return QB_OK;
}

/* Appends every reason the bridge is not ready to reasons (a JSON array). */
static void readiness_reasons(const struct qb_status_view *v, json_t *reasons)
{
    char text[256];

    if (v->shutting_down)
        json_array_append_new(reasons, json_string("shutting down"));
    if (!v->mgr)
        json_array_append_new(reasons, json_string("VM manager not running"));
    if (v->mgr) {
        struct qb_vm_manager_stats st;

        qb_vm_manager_get_stats(v->mgr, &st);
        if (st.libvirt_configured && !st.libvirt_connected) {
            snprintf(text, sizeof(text), "libvirt: not connected to %s",
                     v->cfg && v->cfg->libvirt_uri ? v->cfg->libvirt_uri : "libvirtd");
            json_array_append_new(reasons, json_string(text));
        }
    }
    for (size_t i = 0; v->transports && i < v->n_transports; i++) {
        struct qb_transport *t = v->transports[i];
        struct qb_transport_stats st;

        qb_transport_get_stats(t, &st);
        if (!st.link_up) {
            snprintf(text, sizeof(text), "transport %s: not connected", qb_transport_name(t));
            json_array_append_new(reasons, json_string(text));
        }
    }
    if (v->outbox && qb_outbox_under_pressure(v->outbox)) {
        snprintf(text, sizeof(text), "%s: QMP reads paused (back-pressure)",
                 v->spool ? "spool over its high-water mark or not writable"
                          : "a transport queue is over its high-water mark");
        json_array_append_new(reasons, json_string(text));
    }
}

static int handle_readyz(void *arg, const struct qb_http_request *req,
                         struct qb_http_response *resp)
{
    struct qb_status_api *api = arg;
    json_t *reasons = json_array();
    struct qb_status_view v;
    bool ready;

    (void)req;
    if (!reasons)
        return QB_ENOMEM;
    api->view(api->view_arg, &v);
    readiness_reasons(&v, reasons);
    ready = json_array_size(reasons) == 0;
    return respond_json(resp, ready ? 200 : 503,
                        json_pack("{s:b, s:o}", "ready", ready, "reasons", reasons));
}

static void format_time(uint64_t usec, char *buf, size_t len)
{
    time_t sec = (time_t)(usec / 1000000u);
    struct tm tm;

    gmtime_r(&sec, &tm);
    char date[24];

    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%.19s.%06uZ", date, (unsigned)(usec % 1000000u));
}

static void add_vm(void *arg, const struct qb_vm_info *info)
{
    json_t *vms = arg;
    char when[48];
    json_t *vm;

    format_time(info->last_event_usec, when, sizeof(when));
    vm = json_pack("{s:s, s:s, s:s, s:s, s:s?, s:s?, s:s?, s:I, s:I}", "name", info->name,
                   "address", info->address, "session", info->session, "qemu_version",
                   info->qemu_version, "run_state", info->run_state, "last_event", info->last_event,
                   "last_event_time", info->last_event ? when : NULL, "sequence",
                   (json_int_t)info->sequence, "reconnects", (json_int_t)info->reconnects);
    if (vm)
        json_array_append_new(vms, vm);
}

static int cmp_vm_name(const void *a, const void *b)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "name")),
                  json_string_value(json_object_get(*(json_t *const *)b, "name")));
}

static int handle_vms(void *arg, const struct qb_http_request *req, struct qb_http_response *resp)
{
    struct qb_status_api *api = arg;
    json_t *vms = json_array(), *sorted;
    struct qb_status_view v;
    size_t n;

    (void)req;
    if (!vms)
        return QB_ENOMEM;
    api->view(api->view_arg, &v);
    if (v.mgr)
        qb_vm_manager_foreach(v.mgr, add_vm, vms);
    /* sorted by name: a person reads it, and scripts diff it */
    n = json_array_size(vms);
    if (n > 1) {
        json_t **items = malloc(n * sizeof(*items));
        if (!items) {
            json_decref(vms);
            return QB_ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
            items[i] = json_incref(json_array_get(vms, i));
        qsort(items, n, sizeof(*items), cmp_vm_name);
        sorted = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(sorted, items[i]);
        free(items);
        json_decref(vms);
        vms = sorted;
    }
    return respond_json(resp, 200, vms);
}

static const struct qb_http_route routes[] = {
    {"/metrics", handle_metrics, .shared = true},
    {"/healthz", handle_healthz},
    {"/readyz", handle_readyz},
    {"/vms", handle_vms, .shared = true},
};

int qb_status_api_start(uv_loop_t *loop, const char *listen, qb_status_view_fn view, void *arg,
                        struct qb_status_api **out, char *errbuf, size_t errlen)
{
    struct qb_status_api *api = calloc(1, sizeof(*api));
    int rc;

    *out = NULL;
    if (!api)
        return QB_ENOMEM;
    api->view = view;
    api->view_arg = arg;
    rc = qb_http_server_start(loop, listen, routes, sizeof(routes) / sizeof(routes[0]), api,
                              &api->http, errbuf, errlen);
    if (rc < 0) {
        free(api);
        return rc;
    }
    *out = api;
    return QB_OK;
}

struct close_ctx {
    struct qb_status_api *api;
    void (*done)(void *arg);
    void *arg;
};

static void status_closed(void *arg)
{
    struct close_ctx *c = arg;
    void (*done)(void *) = c->done;
    void *done_arg = c->arg;

    free(c->api);
    free(c);
    if (done)
        done(done_arg);
}

void qb_status_api_close(struct qb_status_api *api, void (*done)(void *arg), void *arg)
{
    struct close_ctx *c;

    if (!api)
        return;
    c = malloc(sizeof(*c));
    if (!c) {
        /* the server still has to go; its memory is the smaller loss */
        qb_http_server_close(api->http, done, arg);
        return;
    }
    c->api = api;
    c->done = done;
    c->arg = arg;
    qb_http_server_close(api->http, status_closed, c);
}
