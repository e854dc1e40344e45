/*
 * kafka_probe.c - librdkafka alone: produce -> delivery report latency at a steady rate.
 *
 * The bridge's Kafka latency (QMP timestamp -> delivery report) includes what
 * librdkafka and the broker take on their own. This probe measures that part
 * with nothing of the bridge: one producer with the bridge's default
 * properties (idempotence, acks all, linger.ms 1, Nagle off; -X adds or
 * overrides), sending small messages at a steady rate with keys spread like
 * VMs, serving delivery reports in between, and reporting the latency of
 * each from just before rd_kafka_producev to its report. Read the bridge's
 * figures against these, measured in the same run on the same mock cluster.
 *
 * With -r 0 it runs flat out instead (-q bounds the messages in flight, as
 * the bridge's queue_max_messages does): deliveries per second over the
 * seconds after -w warm-up, what the client and this broker take with
 * nothing of the bridge in front, to read the bridge's flat-out figure
 * against.
 *
 * Usage: kafka_probe -b BROKERS -t TOPIC [-r MSGS_PER_S|0] [-s SECONDS] [-w WARMUP_S]
 *                    [-q IN_FLIGHT] [-z BYTES] [-k KEYS] [-X prop=value]... [-o FILE.json]
 * Prints one line of JSON (also to -o): sent, delivered, failed, p50/p99/p99.9/max in ms
 * (flat out: delivered_per_s instead of the percentiles).
 */
#include "probe_percentiles.h"

#include <librdkafka/rdkafka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct probe {
    uint64_t *lat_ns; /* one per delivered message */
    size_t n_lat, cap_lat;
    uint64_t failed;
    uint64_t in_flight;                 /* flat out: produced, not reported yet */
    uint64_t window_start, window_end;  /* flat out: deliveries counted between (ns) */
    uint64_t in_window;
};

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void probe_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct probe *p = opaque;
    uint64_t sent = (uint64_t)(uintptr_t)m->_private;

    (void)rk;
    if (p->in_flight)
        p->in_flight--;
    if (m->err) {
        p->failed++;
        return;
    }
    if (p->window_end) {
        uint64_t t = now_ns();
        p->in_window += t >= p->window_start && t < p->window_end;
        return;
    }
    if (sent && p->n_lat < p->cap_lat) /* the warm-up message has no send time */
        p->lat_ns[p->n_lat++] = now_ns() - sent;
}

static int set_prop(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];

    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kafka_probe: %s=%s: %s\n", name, value, err);
        return -1;
    }
    return 0;
}

static int write_line(const char *line, const char *out_path)
{
    puts(line);
    if (out_path) {
        FILE *f = fopen(out_path, "w");

        if (!f || fprintf(f, "%s\n", line) < 0 || fclose(f) != 0) {
            fprintf(stderr, "kafka_probe: cannot write %s: %s\n", out_path, strerror(errno));
            return 1;
        }
    }
    return 0;
}

/* -r 0: produce as fast as the in-flight bound lets, count deliveries in the window. */
static int flat_out(rd_kafka_t *rk, struct probe *p, const char *topic, char *payload,
                    size_t size, size_t keys, size_t max_in_flight, double warmup,
                    double seconds, const char *out_path)
{
    uint64_t start = now_ns(), sent = 0;
    char key[32];

    p->window_start = start + (uint64_t)(warmup * 1e9);
    p->window_end = p->window_start + (uint64_t)(seconds * 1e9);
    while (now_ns() < p->window_end) {
        if (p->in_flight >= max_in_flight) {
            rd_kafka_poll(rk, 1);
            continue;
        }
        snprintf(key, sizeof key, "probe/vm-%zu", (size_t)(sent % keys));
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(payload, size), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE(NULL), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(rk, 1);
            continue;
        }
        if (e)
            p->failed++;
        else {
            sent++;
            p->in_flight++;
        }
        if ((sent & 63) == 0)
            rd_kafka_poll(rk, 0);
    }
    rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rk, 10000);
    rd_kafka_destroy(rk);
    char line[256];
    snprintf(line, sizeof line,
             "{\"sent\": %" PRIu64 ", \"delivered_in_window\": %" PRIu64
             ", \"window_s\": %.3f, \"delivered_per_s\": %.0f}",
             sent, p->in_window, seconds, (double)p->in_window / seconds);
    free(payload);
    free(p->lat_ns);
    return write_line(line, out_path);
}

int main(int argc, char **argv)
{
    const char *brokers = NULL, *topic = NULL, *out_path = NULL;
    double rate = 2000.0, seconds = 5.0, warmup = 1.0;
    size_t size = 500, keys = 1000, max_in_flight = 10000;
    struct probe p = {0};
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    int c;

    /* the bridge's producer defaults (transports/kafka.c) */
    if (set_prop(conf, "enable.idempotence", "true") || set_prop(conf, "acks", "all") ||
        set_prop(conf, "linger.ms", "1") || set_prop(conf, "socket.nagle.disable", "true"))
        return 2;
    while ((c = getopt(argc, argv, "b:t:r:s:w:q:z:k:X:o:")) != -1) {
        switch (c) {
        case 'b': brokers = optarg; break;
        case 't': topic = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'q': max_in_flight = (size_t)atol(optarg); break;
        case 'z': size = (size_t)atol(optarg); break;
        case 'k': keys = (size_t)atol(optarg); break;
        case 'o': out_path = optarg; break;
        case 'X': {
            char *eq = strchr(optarg, '=');

            if (!eq) {
                fprintf(stderr, "kafka_probe: -X wants prop=value\n");
                return 2;
            }
            *eq = '\0';
            if (set_prop(conf, optarg, eq + 1))
                return 2;
            break;
        }
        default:
            fprintf(stderr, "usage: kafka_probe -b BROKERS -t TOPIC [-r RATE] [-s SECONDS] "
                            "[-z BYTES] [-k KEYS] [-X prop=value] [-o FILE]\n");
            return 2;
        }
    }
    if (!brokers || !topic || rate < 0 || seconds <= 0 || warmup < 0 || keys == 0 ||
        max_in_flight == 0) {
        fprintf(stderr, "kafka_probe: -b and -t are required; rate >= 0, seconds, keys > 0\n");
        return 2;
    }
    if (set_prop(conf, "bootstrap.servers", brokers))
        return 2;
    rd_kafka_conf_set_dr_msg_cb(conf, probe_on_delivery);
    rd_kafka_conf_set_opaque(conf, &p);
    p.cap_lat = rate > 0 ? (size_t)(rate * seconds) + 16 : 16;
    p.lat_ns = calloc(p.cap_lat, sizeof(*p.lat_ns));
    char *payload = malloc(size + 1);
    if (!p.lat_ns || !payload)
        return 1;
    memset(payload, 'x', size);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kafka_probe: %s\n", err);
        return 1;
    }

    /* warm up: one message delivered first, so metadata and the producer id are in place */
    rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_VALUE(payload, size),
                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(NULL),
                      RD_KAFKA_V_END);
    rd_kafka_flush(rk, 10000);
    p.n_lat = 0;
    p.failed = 0;
    if (rate == 0)
        return flat_out(rk, &p, topic, payload, size, keys, max_in_flight, warmup, seconds,
                        out_path);

    uint64_t interval = (uint64_t)(1e9 / rate);
    uint64_t start = now_ns(), next = start, end = start + (uint64_t)(seconds * 1e9);
    uint64_t sent = 0;
    char key[32];

    while (next < end) {
        uint64_t t = now_ns();

        if (t < next) {
            /* serve reports while waiting for the next slot */
            int ms = (int)((next - t) / 1000000u);
            rd_kafka_poll(rk, ms);
            continue;
        }
        snprintf(key, sizeof key, "probe/vm-%zu", (size_t)(sent % keys));
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE(payload, size), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE((void *)(uintptr_t)now_ns()), RD_KAFKA_V_END);
        if (e) {
            p.failed++;
        } else {
            sent++;
        }
        next += interval;
        rd_kafka_poll(rk, 0);
    }
    rd_kafka_flush(rk, 10000);
    rd_kafka_destroy(rk);

    probe_sort_ns(p.lat_ns, p.n_lat);
    char line[512];
    snprintf(line, sizeof line,
             "{\"sent\": %" PRIu64 ", \"delivered\": %zu, \"failed\": %" PRIu64
             ", \"rate\": %.0f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f,"
             " \"max_ms\": %.3f}",
             sent, p.n_lat, p.failed, rate, probe_pct_ms(p.lat_ns, p.n_lat, 0.5),
             probe_pct_ms(p.lat_ns, p.n_lat, 0.99), probe_pct_ms(p.lat_ns, p.n_lat, 0.999),
             p.n_lat ? (double)p.lat_ns[p.n_lat - 1] / 1e6 : -1.0);
    int rc = write_line(line, out_path);
    free(p.lat_ns);
    free(payload);
    return rc ? rc : p.n_lat > 0 ? 0 : 1;
}
