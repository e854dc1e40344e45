/*
 * kafka_mock.c - librdkafka's mock Kafka cluster as a process of its own.
 *
 * Integration tests and the demo need a Kafka cluster they can break on
 * purpose, without a JVM. librdkafka (2.0.2 here) ships one inside the
 * library; this tool hosts it and lets a test drive it over stdin/stdout.
 *
 * Usage:
 *   kafka_mock [--brokers N] [--topic NAME:PARTITIONS:REPLICATION ...]
 *
 * Protocol (line based, stdout is reserved for it; diagnostics and
 * librdkafka's own log lines go to stderr):
 *   first line out:   BOOTSTRAP 127.0.0.1:p1,127.0.0.1:p2,...
 *   then, per command line in, exactly one line out: OK | ERR <reason>
 *     down <broker-id>                     see "down" below
 *     up <broker-id>                       listen again on the same port
 *     alldown / allup                      the same for every broker
 *     leader <topic> <partition> <broker-id>   move leadership (-1: none);
 *                                          the mock creates a missing topic
 *     topic <name> <partitions> <replication>  create a topic
 *     quit                                 answer OK, then exit 0
 *   Blank lines are ignored (no answer). EOF on stdin, SIGTERM or SIGINT:
 *   destroy the cluster and exit 0. Broker ids are 1..N.
 *
 * What "down" means (rd_kafka_mock_broker_set_down in 2.0.2, read in
 * src/rdkafka_mock.c and checked by tests/integration/test_kafka_mock_tool.py):
 * the broker closes every open client connection and closes its listening
 * socket; a fresh socket is bound to the same port but not listen()ed on,
 * so new connections are refused (ECONNREFUSED) until "up". Partition
 * leadership does NOT move: partitions led by a down broker are simply
 * unavailable, so producers queue and retry and consumers stall, which is
 * what a crashed single broker looks like to a client. Use "leader" to
 * simulate a failover. Because set_down already makes the broker
 * unreachable, no request-error injection is added on top.
 *
 * Topics that were not created explicitly are auto-created by the mock when
 * a client asks for them in a Metadata request with AllowAutoTopicCreation,
 * as librdkafka producers (the self-test checks it) and kcat -C do; a
 * high-level KafkaConsumer asks only with allow.auto.create.topics=true.
 * They get the mock's defaults: 4 partitions, replication min(3, N); the
 * mock offers no API to change those.
 *
 * Why poll() on stdin and a signalfd instead of fgets() and a handler: the
 * mock cluster and rd_kafka_t run threads of their own, so a plain handler
 * could run on one of those and leave the main thread asleep in read().
 * SIGTERM/SIGINT are blocked before any thread exists (every thread
 * inherits the mask) and picked up here through the signalfd; the main
 * thread sleeps in poll() until a line or a signal arrives.
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "error.h"
#include "log.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define KMOCK_DEFAULT_BROKERS 3
#define KMOCK_MAX_BROKERS 64
#define KMOCK_LINE_MAX 1024
#define KMOCK_MAX_ARGS 4 /* command name + 3 arguments, the most any command takes */

struct kmock {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mcluster;
    int broker_cnt;
    bool quit;
};

/* One command: its name, the number of arguments after the name, and the
 * function that runs it. run returns QB_OK or a negative QB_E* code after
 * writing the reason into err. */
struct kmock_cmd {
    const char *name;
    int argc;
    const char *usage;
    int (*run)(struct kmock *km, char **argv, char *err, size_t errlen);
};

/* Parses a whole decimal integer in [min, max]. Returns QB_OK or QB_EINVAL. */
static int kmock_parse_int(const char *text, long min, long max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < min || v > max)
        return QB_EINVAL;
    *out = (int)v;
    return QB_OK;
}

static int kmock_parse_broker(const struct kmock *km, const char *text, int *id, char *err,
                              size_t errlen)
{
    if (kmock_parse_int(text, 1, km->broker_cnt, id) != QB_OK) {
        snprintf(err, errlen, "broker id '%s' is not in 1..%d", text, km->broker_cnt);
        return QB_EINVAL;
    }
    return QB_OK;
}

/* Maps a mock API result to ours, naming what failed in err. */
static int kmock_check(rd_kafka_resp_err_t rerr, const char *what, char *err, size_t errlen)
{
    if (rerr == RD_KAFKA_RESP_ERR_NO_ERROR)
        return QB_OK;
    /* Names come from a command line of up to KMOCK_LINE_MAX: the answer shows a prefix. */
    snprintf(err, errlen, "%.100s: %s", what, rd_kafka_err2str(rerr));
    return rerr == RD_KAFKA_RESP_ERR__UNKNOWN_BROKER ? QB_ENOTFOUND : QB_EINVAL;
}

/* Creates a topic after checking the counts, because the mock itself
 * accepts a replication factor larger than the cluster. */
static int kmock_topic_create(struct kmock *km, const char *name, const char *partitions,
                              const char *replication, char *err, size_t errlen)
{
    int parts, repl;

    if (*name == '\0') {
        snprintf(err, errlen, "empty topic name");
        return QB_EINVAL;
    }
    if (kmock_parse_int(partitions, 1, 100000, &parts) != QB_OK) {
        snprintf(err, errlen, "topic %.100s: bad partition count '%.32s'", name, partitions);
        return QB_EINVAL;
    }
    if (kmock_parse_int(replication, 1, km->broker_cnt, &repl) != QB_OK) {
        snprintf(err, errlen, "topic %.100s: replication '%.32s' is not in 1..%d", name,
                 replication, km->broker_cnt);
        return QB_EINVAL;
    }
    return kmock_check(rd_kafka_mock_topic_create(km->mcluster, name, parts, repl), name, err,
                       errlen);
}

static int kmock_cmd_down(struct kmock *km, char **argv, char *err, size_t errlen)
{
    int id;

    if (kmock_parse_broker(km, argv[1], &id, err, errlen) != QB_OK)
        return QB_EINVAL;
    return kmock_check(rd_kafka_mock_broker_set_down(km->mcluster, id), "down", err, errlen);
}

static int kmock_cmd_up(struct kmock *km, char **argv, char *err, size_t errlen)
{
    int id;

    if (kmock_parse_broker(km, argv[1], &id, err, errlen) != QB_OK)
        return QB_EINVAL;
    return kmock_check(rd_kafka_mock_broker_set_up(km->mcluster, id), "up", err, errlen);
}

static int kmock_cmd_alldown(struct kmock *km, char **argv, char *err, size_t errlen)
{
    (void)argv;
    return kmock_check(rd_kafka_mock_broker_set_down(km->mcluster, -1), "alldown", err, errlen);
}

static int kmock_cmd_allup(struct kmock *km, char **argv, char *err, size_t errlen)
{
    (void)argv;
    return kmock_check(rd_kafka_mock_broker_set_up(km->mcluster, -1), "allup", err, errlen);
}

static int kmock_cmd_leader(struct kmock *km, char **argv, char *err, size_t errlen)
{
    int partition, id;

    if (kmock_parse_int(argv[2], 0, INT_MAX, &partition) != QB_OK) {
        snprintf(err, errlen, "bad partition '%s'", argv[2]);
        return QB_EINVAL;
    }
    /* -1 is the mock's "leader-less partition". */
    if (strcmp(argv[3], "-1") == 0)
        id = -1;
    else if (kmock_parse_broker(km, argv[3], &id, err, errlen) != QB_OK)
        return QB_EINVAL;
    return kmock_check(rd_kafka_mock_partition_set_leader(km->mcluster, argv[1], partition, id),
                       "leader", err, errlen);
}

static int kmock_cmd_topic(struct kmock *km, char **argv, char *err, size_t errlen)
{
    return kmock_topic_create(km, argv[1], argv[2], argv[3], err, errlen);
}

static int kmock_cmd_quit(struct kmock *km, char **argv, char *err, size_t errlen)
{
    (void)argv;
    (void)err;
    (void)errlen;
    km->quit = true;
    return QB_OK;
}

static const struct kmock_cmd kmock_cmds[] = {
    {"down", 1, "down <broker-id>", kmock_cmd_down},
    {"up", 1, "up <broker-id>", kmock_cmd_up},
    {"alldown", 0, "alldown", kmock_cmd_alldown},
    {"allup", 0, "allup", kmock_cmd_allup},
    {"leader", 3, "leader <topic> <partition> <broker-id>", kmock_cmd_leader},
    {"topic", 3, "topic <name> <partitions> <replication>", kmock_cmd_topic},
    {"quit", 0, "quit", kmock_cmd_quit},
};

/* Writes one protocol line and flushes it: the test waits on each line.
 * Returns QB_OK or QB_EIO when stdout is gone (the test has died). */
static int kmock_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int kmock_reply(const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vprintf(fmt, ap);
    va_end(ap);
    if (rc < 0 || putchar('\n') == EOF || fflush(stdout) == EOF)
        return QB_EIO;
    return QB_OK;
}

/* Runs one command line (modified in place by tokenising) and answers it.
 * Returns QB_OK, or QB_EIO when the answer could not be written. */
static int kmock_handle_line(struct kmock *km, char *line)
{
    char *argv[KMOCK_MAX_ARGS + 1];
    char err[256];
    char *save = NULL;
    int argc = 0;
    const struct kmock_cmd *cmd = NULL;

    for (char *tok = strtok_r(line, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save)) {
        if (argc == KMOCK_MAX_ARGS + 1)
            return kmock_reply("ERR too many arguments");
        argv[argc++] = tok;
    }
    if (argc == 0)
        return QB_OK;

    for (size_t i = 0; i < sizeof(kmock_cmds) / sizeof(kmock_cmds[0]); i++) {
        if (strcmp(kmock_cmds[i].name, argv[0]) == 0) {
            cmd = &kmock_cmds[i];
            break;
        }
    }
    if (cmd == NULL)
        return kmock_reply("ERR unknown command '%s'", argv[0]);
    if (argc - 1 != cmd->argc)
        return kmock_reply("ERR usage: %s", cmd->usage);

    err[0] = '\0';
    if (cmd->run(km, argv, err, sizeof(err)) != QB_OK) {
        QB_LOG_WARN(NULL, "kafka_mock: %s failed: %s", argv[0], err);
        return kmock_reply("ERR %s", err);
    }
    QB_LOG_INFO(NULL, "kafka_mock: %s done", argv[0]);
    return kmock_reply("OK");
}

/* Parses --topic NAME:PARTITIONS:REPLICATION (split at the last two colons;
 * Kafka topic names cannot hold one anyway) and creates the topic. */
static int kmock_topic_arg(struct kmock *km, const char *arg)
{
    char buf[KMOCK_LINE_MAX];
    char err[256];
    char *repl, *parts;

    if (snprintf(buf, sizeof(buf), "%s", arg) >= (int)sizeof(buf) ||
        (repl = strrchr(buf, ':')) == NULL) {
        QB_LOG_ERR(NULL, "kafka_mock: --topic '%s': want NAME:PARTITIONS:REPLICATION", arg);
        return QB_EINVAL;
    }
    *repl++ = '\0';
    if ((parts = strrchr(buf, ':')) == NULL) {
        QB_LOG_ERR(NULL, "kafka_mock: --topic '%s': want NAME:PARTITIONS:REPLICATION", arg);
        return QB_EINVAL;
    }
    *parts++ = '\0';
    if (kmock_topic_create(km, buf, parts, repl, err, sizeof(err)) != QB_OK) {
        QB_LOG_ERR(NULL, "kafka_mock: --topic '%s': %s", arg, err);
        return QB_EINVAL;
    }
    return QB_OK;
}

/* Reads stdin until EOF, "quit", a signal on sfd, or a write error.
 * Returns QB_OK for every orderly end, QB_EIO otherwise. */
static int kmock_serve(struct kmock *km, int sfd)
{
    char buf[KMOCK_LINE_MAX];
    size_t len = 0;
    bool discarding = false; /* inside an over-long line, until its newline */
    struct pollfd pfd[2] = {{.fd = STDIN_FILENO, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};

    while (!km->quit) {
        ssize_t n;
        char *start, *nl;

        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            QB_LOG_ERR(NULL, "kafka_mock: poll: %s", strerror(errno));
            return QB_EIO;
        }
        if (pfd[1].revents) {
            struct signalfd_siginfo si;

            if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
                QB_LOG_INFO(NULL, "kafka_mock: signal %u, shutting down", si.ssi_signo);
            return QB_OK;
        }
        if (!pfd[0].revents)
            continue;

        n = read(STDIN_FILENO, buf + len, sizeof(buf) - 1 - len);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            QB_LOG_ERR(NULL, "kafka_mock: reading stdin: %s", strerror(errno));
            return QB_EIO;
        }
        if (n == 0) {
            /* A last line without its newline still counts. */
            buf[len] = '\0';
            if (len > 0 && !discarding && kmock_handle_line(km, buf) != QB_OK)
                return QB_EIO;
            return QB_OK;
        }
        len += (size_t)n;
        buf[len] = '\0';

        start = buf;
        while (!km->quit && (nl = strchr(start, '\n')) != NULL) {
            *nl = '\0';
            if (!discarding && kmock_handle_line(km, start) != QB_OK)
                return QB_EIO;
            discarding = false;
            start = nl + 1;
        }
        len -= (size_t)(start - buf);
        memmove(buf, start, len);
        if (len == sizeof(buf) - 1) {
            len = 0;
            if (!discarding && kmock_reply("ERR line too long") != QB_OK)
                return QB_EIO;
            discarding = true;
        }
    }
    return QB_OK;
}

static void kmock_usage(FILE *f)
{
    fprintf(f,
            "usage: kafka_mock [--brokers N (default %d)] "
            "[--topic NAME:PARTITIONS:REPLICATION ...]\n",
            KMOCK_DEFAULT_BROKERS);
}

int main(int argc, char **argv)
{
    struct kmock km = {.broker_cnt = KMOCK_DEFAULT_BROKERS};
    char errstr[512];
    rd_kafka_conf_t *conf = NULL;
    sigset_t sigs;
    int sfd = -1;
    int status = 1;

    /* Two passes: --brokers must be known before any topic is created. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            kmock_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--brokers") != 0 && strcmp(argv[i], "--topic") != 0) {
            QB_LOG_ERR(NULL, "kafka_mock: unknown argument '%s'", argv[i]);
            kmock_usage(stderr);
            return 2;
        }
        if (i + 1 == argc) {
            QB_LOG_ERR(NULL, "kafka_mock: %s needs a value", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--brokers") == 0 &&
            kmock_parse_int(argv[i + 1], 1, KMOCK_MAX_BROKERS, &km.broker_cnt) != QB_OK) {
            QB_LOG_ERR(NULL, "kafka_mock: --brokers '%s' is not in 1..%d", argv[i + 1],
                       KMOCK_MAX_BROKERS);
            return 2;
        }
        i++;
    }

    /* Before any librdkafka thread exists, so that all of them inherit it. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    if (pthread_sigmask(SIG_BLOCK, &sigs, NULL) != 0 ||
        (sfd = signalfd(-1, &sigs, SFD_CLOEXEC)) < 0) {
        QB_LOG_ERR(NULL, "kafka_mock: signalfd: %s", strerror(errno));
        goto out;
    }
    /* A vanished test must end us with a write error, not a signal. */
    signal(SIGPIPE, SIG_IGN);

    conf = rd_kafka_conf_new();
    /* The handle only hosts the cluster; it never talks to a broker. */
    km.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (km.rk == NULL) {
        QB_LOG_ERR(NULL, "kafka_mock: rd_kafka_new: %s", errstr);
        rd_kafka_conf_destroy(conf); /* only owned by rk on success */
        goto out;
    }
    km.mcluster = rd_kafka_mock_cluster_new(km.rk, km.broker_cnt);
    if (km.mcluster == NULL) {
        QB_LOG_ERR(NULL, "kafka_mock: cannot create a %d-broker mock cluster", km.broker_cnt);
        goto out;
    }

    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--topic") == 0 && kmock_topic_arg(&km, argv[i + 1]) != QB_OK)
            goto out;
    }

    if (kmock_reply("BOOTSTRAP %s", rd_kafka_mock_cluster_bootstraps(km.mcluster)) != QB_OK)
        goto out;
    QB_LOG_INFO(NULL, "kafka_mock: %d brokers at %s", km.broker_cnt,
                rd_kafka_mock_cluster_bootstraps(km.mcluster));

    if (kmock_serve(&km, sfd) == QB_OK)
        status = 0;

out:
    if (km.mcluster)
        rd_kafka_mock_cluster_destroy(km.mcluster);
    if (km.rk)
        rd_kafka_destroy(km.rk);
    if (sfd >= 0)
        close(sfd);
    return status;
}
