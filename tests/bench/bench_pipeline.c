/*
 * bench_pipeline.c - the per-event cost of qmp-bridge's hot path, on this machine.
 *
 * For one real QEMU 7.2 BLOCK_IO_ERROR line it times, over N iterations each:
 *   parse-only   jansson json_loadb alone: the reference every figure is read against
 *   reference    json_loadb + json_pack + json_dumps: what a naive bridge would do
 *   pipeline     what qmp-bridge does per event: frame the line (qb_framer), parse it
 *                once, normalise (qb_normalize_event) and write the envelope
 *                (qb_envelope_build)
 * and prints events/s, ns/event and the pipeline's rate as a share of parse-only
 * (the machine is shared and noisy, so ratios mean more than absolute figures).
 * Writes the same figures as JSON to the path given by -o. No transport, no socket:
 * this is the CPU cost per event; the end-to-end scenarios (tests/bench/run) read their
 * throughput against the parse-only rate measured here.
 *
 * -l FILE adds a second parse-only reference over the QMP lines in FILE (one per line,
 * optionally prefixed "<vm> " as in qmp_sim's --trace file), cycled N times in total: the
 * exact mix of lines an end-to-end scenario sends, so its ratio compares like with like.
 *
 * Usage: bench_pipeline [-n ITERATIONS] [-o FILE.json] [-l LINES_FILE]
 */
#include "envelope.h"
#include "error.h"
#include "normalize.h"
#include "qmp_framer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char LINE[] =
    "{\"timestamp\": {\"seconds\": 1732242124, \"microseconds\": 461230}, \"event\": "
    "\"BLOCK_IO_ERROR\", \"data\": {\"device\": \"data\", \"nospace\": true, \"node-name\": "
    "\"#block146\", \"reason\": \"No space left on device\", \"operation\": \"write\", "
    "\"action\": \"stop\"}}\n";

struct bench_state {
    struct qb_norm_vm *vm;
    struct qb_envelope_ctx env;
    uint64_t seq;
    size_t bytes_out;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int bench_line(void *arg, const char *line, size_t len)
{
    struct bench_state *st = arg;
    json_error_t jerr;
    struct qb_norm_event ev;
    json_t *msg = json_loadb(line, len, 0, &jerr);
    char *out = NULL;
    size_t out_len = 0;

    if (!msg)
        return QB_EPARSE;
    if (qb_normalize_event(st->vm, msg, NULL, 0, &ev) == 1) {
        struct qb_envelope_in in = {.vm = "vm1", .type = ev.type, .epoch = 1,
                                    .sequence = ++st->seq, .ts_sec = ev.ts_sec,
                                    .ts_usec = ev.ts_usec, .data = ev.data};
        if (qb_envelope_build(&st->env, &in, &out, &out_len) == QB_OK)
            st->bytes_out += out_len;
        free(out);
        qb_norm_event_clear(&ev);
    }
    json_decref(msg);
    return QB_OK;
}

/* The QMP lines of a -l file: one buffer, lines NUL-terminated inside it. */
struct line_set {
    char *buf;     /* owns the text */
    char **lines;  /* borrowed pointers into buf */
    size_t *lens;
    size_t n;
};

static void line_set_free(struct line_set *ls)
{
    free(ls->buf);
    free(ls->lines);
    free(ls->lens);
    memset(ls, 0, sizeof *ls);
}

/*
 * Reads path into ls (caller frees with line_set_free). "<vm> " prefixes are cut off,
 * lines not holding a JSON object are skipped. Returns 0, or -1 on an error or no line.
 */
static int line_set_read(struct line_set *ls, const char *path)
{
    FILE *f = fopen(path, "rb");
    size_t cap = 0, size;
    long flen;
    int rc = -1;

    memset(ls, 0, sizeof *ls);
    if (!f)
        return -1;
    if (fseek(f, 0, SEEK_END) != 0 || (flen = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out;
    size = (size_t)flen;
    ls->buf = malloc(size + 1);
    if (!ls->buf || fread(ls->buf, 1, size, f) != size)
        goto out;
    ls->buf[size] = '\0';
    for (char *p = ls->buf; p < ls->buf + size;) {
        char *nl = memchr(p, '\n', (size_t)(ls->buf + size - p));
        char *end = nl ? nl : ls->buf + size;
        char *start = p;

        *end = '\0';
        if (*start != '{') { /* "<vm> {...}" from a qmp_sim --trace file */
            char *sp = strchr(start, ' ');
            start = sp ? sp + 1 : end;
        }
        if (*start == '{') {
            if (ls->n == cap) {
                size_t ncap = cap ? cap * 2 : 64;
                char **nlines = realloc(ls->lines, ncap * sizeof *nlines);
                size_t *nlens;

                if (!nlines)
                    goto out;
                ls->lines = nlines;
                nlens = realloc(ls->lens, ncap * sizeof *nlens);
                if (!nlens)
                    goto out;
                ls->lens = nlens;
                cap = ncap;
            }
            ls->lines[ls->n] = start;
            ls->lens[ls->n++] = (size_t)(end - start);
        }
        p = end + 1;
    }
    rc = ls->n ? 0 : -1;
out:
    fclose(f);
    if (rc != 0)
        line_set_free(ls);
    return rc;
}

int main(int argc, char **argv)
{
    long n = 200000;
    const char *json_path = NULL, *lines_path = NULL;
    struct line_set ls = {0};
    double lines_s = 0, lines_bytes = 0;
    size_t len = strlen(LINE);
    double t0, parse_s, ref_s, pipe_s;
    json_error_t jerr;
    int opt;

    while ((opt = getopt(argc, argv, "n:o:l:")) != -1) {
        if (opt == 'n')
            n = atol(optarg);
        else if (opt == 'o')
            json_path = optarg;
        else if (opt == 'l')
            lines_path = optarg;
        else
            return 2;
    }
    if (n < 1)
        n = 1;
    if (lines_path && line_set_read(&ls, lines_path) != 0) {
        fprintf(stderr, "bench: no QMP lines in %s\n", lines_path);
        return 1;
    }

    t0 = now_s();
    for (long i = 0; i < n; i++)
        json_decref(json_loadb(LINE, len - 1, 0, &jerr));
    parse_s = now_s() - t0;

    if (ls.n) {
        t0 = now_s();
        for (long i = 0; i < n; i++) {
            size_t k = (size_t)i % ls.n;
            json_t *msg = json_loadb(ls.lines[k], ls.lens[k], 0, &jerr);

            if (!msg) {
                fprintf(stderr, "bench: line %zu of %s is not JSON: %s\n", k + 1, lines_path,
                        jerr.text);
                return 1;
            }
            json_decref(msg);
        }
        lines_s = now_s() - t0;
        for (size_t k = 0; k < ls.n; k++)
            lines_bytes += (double)ls.lens[k];
        lines_bytes /= (double)ls.n;
    }

    t0 = now_s();
    for (long i = 0; i < n; i++) {
        json_t *msg = json_loadb(LINE, len - 1, 0, &jerr);
        json_t *env = json_pack("{s:s, s:s, s:s, s:O}", "specversion", "1.0", "type",
                                "qmp.block.io_error", "subject", "vm1", "data",
                                json_object_get(msg, "data"));
        free(json_dumps(env, JSON_COMPACT));
        json_decref(env);
        json_decref(msg);
    }
    ref_s = now_s() - t0;

    struct bench_state st = {.vm = qb_norm_vm_new(),
                             .env = {.bridge_id = "bench-host",
                                     .schema_base_uri = "file:///usr/share/qmp-bridge/schema/v1/"}};
    struct qb_framer fr;
    qb_framer_init(&fr, 16u << 20);
    t0 = now_s();
    for (long i = 0; i < n; i++) {
        if (qb_framer_feed(&fr, LINE, len, bench_line, &st) != QB_OK) {
            fprintf(stderr, "bench: pipeline failed at iteration %ld\n", i);
            return 1;
        }
    }
    pipe_s = now_s() - t0;
    qb_framer_reset(&fr);
    qb_norm_vm_free(st.vm);
    if (st.seq != (uint64_t)n) {
        fprintf(stderr, "bench: %llu envelopes for %ld lines\n", (unsigned long long)st.seq, n);
        return 1;
    }

    printf("qmp-bridge pipeline benchmark: %ld x %zu-byte BLOCK_IO_ERROR line\n", n, len - 1);
    printf("%-14s %14s %12s %10s\n", "path", "events/s", "ns/event", "vs parse");
    printf("%-14s %14.0f %12.0f %9.0f%%\n", "parse-only", n / parse_s, parse_s * 1e9 / n, 100.0);
    printf("%-14s %14.0f %12.0f %9.0f%%\n", "reference", n / ref_s, ref_s * 1e9 / n,
           100.0 * parse_s / ref_s);
    printf("%-14s %14.0f %12.0f %9.0f%%\n", "pipeline", n / pipe_s, pipe_s * 1e9 / n,
           100.0 * parse_s / pipe_s);
    if (ls.n)
        printf("%-14s %14.0f %12.0f %9.0f%%  (%zu lines of %s, %.0f bytes on average)\n",
               "parse-lines", n / lines_s, lines_s * 1e9 / n, 100.0 * parse_s / lines_s, ls.n,
               lines_path, lines_bytes);
    printf("envelope: %zu bytes on average\n", st.bytes_out / (size_t)n);
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f) {
            perror(json_path);
            return 1;
        }
        fprintf(f,
                "{\"iterations\":%ld,\"line_bytes\":%zu,\"parse_only_eps\":%.0f,"
                "\"reference_eps\":%.0f,\"pipeline_eps\":%.0f,\"pipeline_vs_parse\":%.3f,"
                "\"envelope_bytes\":%zu,\"lines_count\":%zu,\"lines_avg_bytes\":%.0f,"
                "\"lines_parse_only_eps\":%.0f}\n",
                n, len - 1, n / parse_s, n / ref_s, n / pipe_s, parse_s / pipe_s,
                st.bytes_out / (size_t)n, ls.n, lines_bytes, ls.n ? n / lines_s : 0.0);
        fclose(f);
    }
    line_set_free(&ls);
    return 0;
}
