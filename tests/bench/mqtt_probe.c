/*
 * mqtt_probe.c - libmosquitto alone: how many QoS 1 publishes per second one C
 * publisher gets acknowledged by the broker, flat out.
 *
 * The bridge's MQTT throughput is bounded by what the broker takes from one
 * connection with a bounded window of unacknowledged publishes. This probe
 * measures that bound with nothing of the bridge: one client with the
 * bridge's MQTT transport defaults (MQTT 5, the CloudEvents content-type
 * property, TCP_NODELAY, QoS 1, at most -n publishes in flight, like
 * max_inflight), publishing messages of -z bytes to topics spread over -k
 * VMs like the bridge's event topics, as fast as PUBACKs come back. It counts
 * the PUBACKs that arrive within a window of -s seconds after -w seconds of
 * warm-up. Read the bridge's MQTT throughput as a share of this, measured in
 * the same run on the same broker.
 *
 * The client is driven single-threaded by mosquitto_loop: before each call
 * the window is topped up, so the socket always has work.
 *
 * -r RATE paces the publishes at RATE a second instead (the latency scenarios'
 * 2,000) and reports publish -> PUBACK percentiles over the PUBACKs of what was
 * published in the window: what one client and a broker take at that rate
 * without the bridge, the floor of the bridge's MQTT latency in the same run.
 * It drives the socket itself (poll with a sub-millisecond timeout up to the
 * next send, then mosquitto_loop_read/write/misc), as mosquitto_loop's
 * millisecond timeout would send in bursts, and acknowledges each read at once
 * (TCP_QUICKACK) as the MQTT transport does.
 *
 * Usage: mqtt_probe -p PORT [-h HOST] [-s SECONDS] [-w SECONDS] [-z BYTES] [-k VMS]
 *                   [-n MAX_INFLIGHT] [-r RATE] [-o FILE.json]
 * Prints one line of JSON (also to -o): acked, window_s, msgs_per_s, max_inflight, bytes;
 * with -r also rate, samples, p50_ms, p99_ms, p999_ms.
 */
#include "probe_percentiles.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct probe {
    bool connected, failed;
    unsigned inflight;
    bool counting;
    uint64_t acked; /* PUBACKs while counting */
    /* paced (-r): when each mid was published, 0 for one published before the window */
    double sent_at[65536];
    uint64_t *lat_ns; /* publish -> PUBACK of what was published in the window */
    size_t n_lat, cap_lat;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void probe_on_connect(struct mosquitto *m, void *arg, int rc, int flags,
                             const mosquitto_property *props)
{
    struct probe *p = arg;

    (void)m, (void)flags, (void)props;
    if (rc != 0) {
        fprintf(stderr, "mqtt_probe: connection refused: %s\n", mosquitto_reason_string(rc));
        p->failed = true;
        return;
    }
    p->connected = true;
}

static void probe_on_publish(struct mosquitto *m, void *arg, int mid, int reason,
                             const mosquitto_property *props)
{
    struct probe *p = arg;

    (void)m, (void)mid, (void)props;
    if (p->inflight)
        p->inflight--;
    if (reason >= 0x80) {
        fprintf(stderr, "mqtt_probe: publish refused: %s\n", mosquitto_reason_string(reason));
        p->failed = true;
        return;
    }
    if (p->counting)
        p->acked++;
    if (mid > 0 && mid < 65536 && p->sent_at[mid] > 0) {
        if (p->n_lat < p->cap_lat)
            p->lat_ns[p->n_lat++] = (uint64_t)((now_s() - p->sent_at[mid]) * 1e9);
        p->sent_at[mid] = 0;
    }
}

/* Waits for the socket until the next send is due (at most 10 ms), then serves it. */
static int serve_until(struct mosquitto *mosq, double due)
{
    double wait = due - now_s();
    struct pollfd pfd = {.fd = mosquitto_socket(mosq), .events = POLLIN};
    struct timespec ts;
    int rc = MOSQ_ERR_SUCCESS;

    if (wait < 0)
        wait = 0;
    if (wait > 0.01)
        wait = 0.01;
    if (mosquitto_want_write(mosq))
        pfd.events |= POLLOUT;
    ts.tv_sec = 0;
    ts.tv_nsec = (long)(wait * 1e9);
    if (ppoll(&pfd, 1, &ts, NULL) > 0) {
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            int one = 1;

            rc = mosquitto_loop_read(mosq, 1);
            /* as the transport does: mosquitto's Nagle holds a PUBACK for our ACK */
            (void)setsockopt(pfd.fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
        }
        if (rc == MOSQ_ERR_SUCCESS && (pfd.revents & POLLOUT))
            rc = mosquitto_loop_write(mosq, 1);
    }
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_loop_misc(mosq);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: mqtt_probe -p PORT [-h HOST] [-s SECONDS] [-w SECONDS] [-z BYTES] "
                    "[-k VMS] [-n MAX_INFLIGHT] [-r RATE] [-o FILE.json]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *out_path = NULL;
    int port = 0, opt;
    double seconds = 8.0, warmup = 2.0, rate = 0;
    size_t bytes = 500;
    unsigned vms = 100, window = 100; /* the MQTT transport's max_inflight default */
    static struct probe p; /* sent_at: half a megabyte, not on the stack */
    mosquitto_property *props = NULL;
    struct mosquitto *mosq;
    char *payload, topic[128];
    uint64_t sent = 0;

    while ((opt = getopt(argc, argv, "h:p:s:w:z:k:n:r:o:")) != -1) {
        switch (opt) {
        case 'h':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        case 's':
            seconds = atof(optarg);
            break;
        case 'w':
            warmup = atof(optarg);
            break;
        case 'z':
            bytes = (size_t)strtoul(optarg, NULL, 10);
            break;
        case 'k':
            vms = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'n':
            window = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'r':
            rate = atof(optarg);
            break;
        case 'o':
            out_path = optarg;
            break;
        default:
            usage();
        }
    }
    if (port <= 0 || seconds <= 0 || vms == 0 || window == 0 || window > 65535 || rate < 0)
        usage();
    if (rate > 0) {
        p.cap_lat = (size_t)(rate * seconds * 1.5) + 1000;
        if (!(p.lat_ns = malloc(p.cap_lat * sizeof(*p.lat_ns))))
            return 1;
    }
    if (!(payload = malloc(bytes + 1)))
        return 1;
    /* JSON-looking filler, like an envelope */
    memset(payload, 'x', bytes);
    if (bytes >= 2) {
        payload[0] = '{';
        payload[bytes - 1] = '}';
    }
    payload[bytes] = '\0';

    mosquitto_lib_init();
    if (!(mosq = mosquitto_new(NULL, true, &p))) {
        fprintf(stderr, "mqtt_probe: mosquitto_new failed\n");
        return 1;
    }
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, (int)window);
    mosquitto_connect_v5_callback_set(mosq, probe_on_connect);
    mosquitto_publish_v5_callback_set(mosq, probe_on_publish);
    mosquitto_property_add_string(&props, MQTT_PROP_CONTENT_TYPE, "application/cloudevents+json");
    if (mosquitto_connect_bind_v5(mosq, host, port, 30, NULL, NULL) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt_probe: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    for (double t0 = now_s(); !p.connected && !p.failed && now_s() - t0 < 10;)
        mosquitto_loop(mosq, 100, 1);
    if (!p.connected)
        return 1;

    double start = now_s(), t_count = start + warmup, t_end = t_count + seconds, t_first = 0;
    while (!p.failed) {
        double now = now_s();

        if (!p.counting && now >= t_count) {
            p.counting = true;
            t_first = now;
        }
        if (now >= t_end)
            break;
        if (rate > 0) {
            double due = start + (double)sent / rate;
            int mid = 0, rc;

            if (now >= due && p.inflight < window) {
                snprintf(topic, sizeof(topic),
                         "qmp/probe/vm%" PRIu64 "/event/qmp.block.io_error", sent % vms);
                rc = mosquitto_publish_v5(mosq, &mid, topic, (int)bytes, payload, 1, false,
                                          props);
                if (rc != MOSQ_ERR_SUCCESS) {
                    fprintf(stderr, "mqtt_probe: publish: %s\n", mosquitto_strerror(rc));
                    p.failed = true;
                    break;
                }
                /* libmosquitto wrote it inside the call: stamp it with the call's start */
                if (p.counting && mid > 0 && mid < 65536)
                    p.sent_at[mid] = now;
                p.inflight++;
                sent++;
                continue;
            }
            if (serve_until(mosq, due) != MOSQ_ERR_SUCCESS) {
                fprintf(stderr, "mqtt_probe: connection lost\n");
                p.failed = true;
            }
            continue;
        }
        while (p.inflight < window) {
            int rc;

            snprintf(topic, sizeof(topic), "qmp/probe/vm%" PRIu64 "/event/qmp.block.io_error",
                     sent % vms);
            rc = mosquitto_publish_v5(mosq, NULL, topic, (int)bytes, payload, 1, false, props);
            if (rc != MOSQ_ERR_SUCCESS) {
                fprintf(stderr, "mqtt_probe: publish: %s\n", mosquitto_strerror(rc));
                p.failed = true;
                break;
            }
            p.inflight++;
            sent++;
        }
        if (mosquitto_loop(mosq, 10, 1) != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt_probe: connection lost\n");
            p.failed = true;
        }
    }
    double span = now_s() - t_first;
    /* paced: the PUBACKs of the window's last publishes, for at most 2 s */
    for (double t_drain = now_s(); rate > 0 && !p.failed && p.inflight && now_s() - t_drain < 2;)
        if (serve_until(mosq, now_s() + 0.01) != MOSQ_ERR_SUCCESS)
            p.failed = true;
    char line[512], paced[200] = "";
    if (rate > 0) {
        probe_sort_ns(p.lat_ns, p.n_lat);
        snprintf(paced, sizeof(paced),
                 ", \"rate\": %.0f, \"samples\": %zu, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
                 "\"p999_ms\": %.3f",
                 rate, p.n_lat, probe_pct_ms(p.lat_ns, p.n_lat, 0.5),
                 probe_pct_ms(p.lat_ns, p.n_lat, 0.99), probe_pct_ms(p.lat_ns, p.n_lat, 0.999));
    }
    snprintf(line, sizeof(line),
             "{\"acked\": %" PRIu64 ", \"window_s\": %.3f, \"msgs_per_s\": %.0f, "
             "\"max_inflight\": %u, \"bytes\": %zu%s, \"failed\": %s}",
             p.acked, span, t_first > 0 && span > 0 ? (double)p.acked / span : 0.0, window, bytes,
             paced, p.failed ? "true" : "false");
    puts(line);
    if (out_path) {
        FILE *f = fopen(out_path, "w");

        if (f) {
            fprintf(f, "%s\n", line);
            fclose(f);
        }
    }
    mosquitto_disconnect(mosq);
    mosquitto_property_free_all(&props);
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    free(payload);
    free(p.lat_ns);
    return p.failed || (rate > 0 && !p.n_lat) ? 1 : 0;
}
