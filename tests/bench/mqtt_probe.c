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
 * Usage: mqtt_probe -p PORT [-h HOST] [-s SECONDS] [-w SECONDS] [-z BYTES] [-k VMS]
 *                   [-n MAX_INFLIGHT] [-o FILE.json]
 * Prints one line of JSON (also to -o): acked, window_s, msgs_per_s, max_inflight, bytes.
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct probe {
    bool connected, failed;
    unsigned inflight;
    bool counting;
    uint64_t acked; /* PUBACKs while counting */
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
}

static void usage(void)
{
    fprintf(stderr, "usage: mqtt_probe -p PORT [-h HOST] [-s SECONDS] [-w SECONDS] [-z BYTES] "
                    "[-k VMS] [-n MAX_INFLIGHT] [-o FILE.json]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *out_path = NULL;
    int port = 0, opt;
    double seconds = 8.0, warmup = 2.0;
    size_t bytes = 500;
    unsigned vms = 100, window = 100; /* the MQTT transport's max_inflight default */
    struct probe p = {0};
    mosquitto_property *props = NULL;
    struct mosquitto *mosq;
    char *payload, topic[128];
    uint64_t sent = 0;

    while ((opt = getopt(argc, argv, "h:p:s:w:z:k:n:o:")) != -1) {
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
        case 'o':
            out_path = optarg;
            break;
        default:
            usage();
        }
    }
    if (port <= 0 || seconds <= 0 || vms == 0 || window == 0 || window > 65535)
        usage();
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
    char line[256];
    snprintf(line, sizeof(line),
             "{\"acked\": %" PRIu64 ", \"window_s\": %.3f, \"msgs_per_s\": %.0f, "
             "\"max_inflight\": %u, \"bytes\": %zu, \"failed\": %s}",
             p.acked, span, t_first > 0 && span > 0 ? (double)p.acked / span : 0.0, window, bytes,
             p.failed ? "true" : "false");
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
    return p.failed ? 1 : 0;
}
