/*
 * prom.h - Prometheus text exposition format (version 0.0.4) and latency histograms.
 *
 * The writer collects metric families and their samples, then serialises them
 * in one buffer for the /metrics response. Samples are grouped under their
 * family as they are added, so collectors may interleave families freely (each
 * transport's collector can add to "published" then "confirmed" and the next
 * transport to both again): the format requires every family's samples to
 * stand together, and the writer guarantees it rather than the callers.
 *
 * Errors are sticky: the first failure (allocation, bad metric or label name,
 * sample for an unregistered family) is remembered, later calls do nothing,
 * and qb_prom_writer_finish reports it. Collectors therefore need not check
 * every call.
 *
 * Output follows https://prometheus.io/docs/instrumenting/exposition_formats/:
 * one "# HELP" (backslash and newline escaped) and one "# TYPE" line per
 * family, label values with backslash, double quote and newline escaped,
 * invalid UTF-8 replaced by U+FFFD, integers printed exactly, doubles in the
 * shortest form that reads back to the same value, "+Inf", "-Inf", "NaN".
 *
 * Everything here runs on the loop thread; nothing is thread-safe.
 */
#ifndef QB_PROM_H
#define QB_PROM_H

#include <stddef.h>
#include <stdint.h>

struct qb_prom_writer;

/* Returns a new, empty writer (owned by the caller: finish or free it), or NULL without memory. */
struct qb_prom_writer *qb_prom_writer_new(void);

/* Frees a writer and everything it collected. NULL is a no-op. */
void qb_prom_writer_free(struct qb_prom_writer *w);

/*
 * Serialises every family in the order they were first registered and frees
 * the writer (also on error).
 * Returns: QB_OK with *out a NUL-terminated malloc'd buffer the caller frees and
 *          *len its length (without the NUL); or the writer's sticky error
 *          (QB_ENOMEM, QB_EINVAL) with *out = NULL.
 */
int qb_prom_writer_finish(struct qb_prom_writer *w, char **out, size_t *len);

/* Returns the writer's sticky error, QB_OK when none. */
int qb_prom_writer_error(const struct qb_prom_writer *w);

/*
 * Registers a family: name [a-zA-Z_:][a-zA-Z0-9_:]*, type "counter", "gauge"
 * or "histogram", help any text (borrowed during the call). Registering the
 * same name again with the same type does nothing (the first help text stays),
 * so a collector that runs per VM or per transport may call it each time.
 * Returns QB_OK, QB_EINVAL (bad name or type, or the name is already registered
 * with another type), QB_ENOMEM, or the sticky error.
 */
int qb_prom_family(struct qb_prom_writer *w, const char *name, const char *type, const char *help);

/*
 * Adds one sample of a counter or gauge family registered before. labels is
 * NULL or a NULL-terminated array of name, value, name, value, ...; names must
 * match [a-zA-Z_][a-zA-Z0-9_]*, not start with "__", and not repeat. Values
 * are any text (escaped here). All strings are borrowed during the call.
 * Returns QB_OK, QB_EINVAL (unknown family, histogram family, bad label),
 * QB_ENOMEM, or the sticky error.
 */
int qb_prom_sample_u64(struct qb_prom_writer *w, const char *name, const char *const *labels,
                       uint64_t value);
int qb_prom_sample_double(struct qb_prom_writer *w, const char *name, const char *const *labels,
                          double value);

/* Bucket bounds of the latency histograms, in seconds: 100 us to 10 s. */
extern const double qb_histogram_latency_bounds[];
extern const size_t qb_histogram_latency_nbounds;

/* The most finite bounds a histogram can have (the +Inf bucket is extra). */
#define QB_HISTOGRAM_MAX_BOUNDS 24

/*
 * A histogram of durations with fixed bounds. Observations are kept in
 * integer microseconds so the sum is exact; no allocation after init.
 * Members are private to prom.c; read them through the functions below.
 */
struct qb_histogram {
    size_t nbounds;
    double bounds[QB_HISTOGRAM_MAX_BOUNDS];        /* seconds, strictly ascending */
    uint64_t bounds_usec[QB_HISTOGRAM_MAX_BOUNDS]; /* the same, rounded to microseconds */
    uint64_t buckets[QB_HISTOGRAM_MAX_BOUNDS + 1]; /* per bucket, not cumulative; last is +Inf */
    uint64_t count;
    uint64_t sum_usec;
};

/*
 * Initialises h with the given finite upper bounds in seconds (copied;
 * strictly ascending, positive, at most QB_HISTOGRAM_MAX_BOUNDS).
 * Returns QB_OK or QB_EINVAL.
 */
int qb_histogram_init(struct qb_histogram *h, const double *bounds, size_t nbounds);

/* Initialises h with qb_histogram_latency_bounds. */
void qb_histogram_init_latency(struct qb_histogram *h);

/* Records one duration. O(log buckets), no allocation. */
void qb_histogram_observe_usec(struct qb_histogram *h, uint64_t usec);

/*
 * Estimates the q-quantile (0 <= q <= 1) in seconds the way PromQL's
 * histogram_quantile() does: linear interpolation inside the bucket that holds
 * the rank, the first bucket starting at 0, and a rank in the +Inf bucket
 * answered with the highest finite bound. Returns NaN for an empty histogram
 * or q outside [0, 1] (or NaN).
 */
double qb_histogram_quantile(const struct qb_histogram *h, double q);

/*
 * Adds a histogram's samples to a family registered with type "histogram":
 * <name>_bucket{labels...,le="<bound>"} cumulative counts ending with
 * le="+Inf", <name>_sum{labels} in seconds and <name>_count{labels}. labels as
 * for qb_prom_sample_u64, and must not contain "le".
 * Returns QB_OK, QB_EINVAL, QB_ENOMEM or the sticky error.
 */
int qb_prom_histogram(struct qb_prom_writer *w, const char *name, const char *const *labels,
                      const struct qb_histogram *h);

/*
 * Formats v as the exposition format wants a float: "+Inf", "-Inf", "NaN", or
 * the shortest %.15g..%.17g form that reads back to v. buf needs 32 bytes.
 * Returns buf.
 */
char *qb_prom_format_double(double v, char buf[32]);

#endif
