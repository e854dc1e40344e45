/*
 * prom.c - Prometheus text format writer and fixed-bucket latency histograms.
 *
 * Each family keeps its own growing buffer: its "# HELP"/"# TYPE" header and
 * then its sample lines. qb_prom_writer_finish concatenates the buffers in
 * registration order, which is what lets collectors interleave families.
 * The number of families is small (tens), so lookups are a linear scan with a
 * one-entry cache for the common "many samples of the same family" case.
 */
#include "prom.h"

#include "buffer.h"
#include "error.h"
#include "utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum prom_type { PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM };

static const char *const prom_type_names[] = {
    [PROM_COUNTER] = "counter",
    [PROM_GAUGE] = "gauge",
    [PROM_HISTOGRAM] = "histogram",
};

struct prom_family {
    char *name;
    enum prom_type type;
    struct qb_buffer text; /* header lines, then sample lines */
};

struct qb_prom_writer {
    struct prom_family *fams;
    size_t nfams, capfams;
    size_t last; /* index of the family used last, a lookup cache */
    int err;     /* sticky */
};

const double qb_histogram_latency_bounds[] = {
    /* dense around the 2 ms (MQTT) and 5 ms (Kafka) latency targets, so p99 reads true */
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075,
    0.01,   0.015,   0.025,  0.05,    0.1,   0.25,   0.5,   1,     2.5,   5,     10,
};
const size_t qb_histogram_latency_nbounds =
    sizeof qb_histogram_latency_bounds / sizeof qb_histogram_latency_bounds[0];

/* ---- text ------------------------------------------------------------------------------ */

/* Appends every string up to the terminating NULL. */
static int buf_cat(struct qb_buffer *b, ...)
{
    const char *s;
    va_list ap;
    int rc = QB_OK;

    va_start(ap, b);
    while (rc == QB_OK && (s = va_arg(ap, const char *)) != NULL)
        rc = qb_buffer_append_str(b, s);
    va_end(ap);
    return rc;
}

/*
 * Appends s escaped for a label value (quote true: \ " newline) or a HELP text
 * (quote false: \ newline). Invalid UTF-8 becomes U+FFFD so a VM name from a
 * config file in another encoding cannot make the scrape fail.
 */
static int buf_escaped(struct qb_buffer *b, const char *s, bool quote)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, run = 0, k;
    int rc = QB_OK;

    while (i < n && rc == QB_OK) {
        const char *rep = NULL;

        if (p[i] == '\\')
            rep = "\\\\", k = 1;
        else if (p[i] == '\n')
            rep = "\\n", k = 1;
        else if (p[i] == '"' && quote)
            rep = "\\\"", k = 1;
        else if ((k = qb_utf8_seq_len(p + i, n - i)) == 0)
            rep = "\xef\xbf\xbd", k = 1;
        if (!rep) {
            i += k;
            run += k;
            continue;
        }
        rc = qb_buffer_append(b, s + i - run, run);
        if (rc == QB_OK)
            rc = qb_buffer_append_str(b, rep);
        run = 0;
        i += k;
    }
    if (rc == QB_OK)
        rc = qb_buffer_append(b, s + i - run, run);
    return rc;
}

/* ---- names and values ------------------------------------------------------------------- */

static bool valid_name(const char *s, bool colon)
{
    size_t i;

    if (!s || !*s)
        return false;
    for (i = 0; s[i]; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* Label names: valid, not reserved ("__" prefix), not repeated, "le" only where allowed. */
static bool valid_labels(const char *const *labels, bool allow_le)
{
    size_t i, j;

    if (!labels)
        return true;
    for (i = 0; labels[i]; i += 2) {
        if (!labels[i + 1] || !valid_name(labels[i], false) || !strncmp(labels[i], "__", 2))
            return false;
        if (!allow_le && !strcmp(labels[i], "le"))
            return false;
        for (j = 0; j < i; j += 2)
            if (!strcmp(labels[i], labels[j]))
                return false;
    }
    return true;
}

char *qb_prom_format_double(double v, char buf[32])
{
    int prec;

    if (isnan(v)) {
        strcpy(buf, "NaN");
        return buf;
    }
    if (isinf(v)) {
        strcpy(buf, v > 0 ? "+Inf" : "-Inf");
        return buf;
    }
    /* %.17g always reads back exactly; shorter forms are tried first for readability. */
    for (prec = 15; prec <= 17; prec++) {
        snprintf(buf, 32, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

/* ---- writer ----------------------------------------------------------------------------- */

struct qb_prom_writer *qb_prom_writer_new(void)
{
    return calloc(1, sizeof(struct qb_prom_writer));
}

void qb_prom_writer_free(struct qb_prom_writer *w)
{
    size_t i;

    if (!w)
        return;
    for (i = 0; i < w->nfams; i++) {
        free(w->fams[i].name);
        qb_buffer_free(&w->fams[i].text);
    }
    free(w->fams);
    free(w);
}

int qb_prom_writer_error(const struct qb_prom_writer *w)
{
    return w ? w->err : QB_EINVAL;
}

/* Records rc as the sticky error if it is the first one; returns rc. */
static int fail(struct qb_prom_writer *w, int rc)
{
    if (rc < 0 && w->err == QB_OK)
        w->err = rc;
    return rc;
}

static struct prom_family *find_family(struct qb_prom_writer *w, const char *name)
{
    size_t i;

    if (w->last < w->nfams && !strcmp(w->fams[w->last].name, name))
        return &w->fams[w->last];
    for (i = 0; i < w->nfams; i++) {
        if (!strcmp(w->fams[i].name, name)) {
            w->last = i;
            return &w->fams[i];
        }
    }
    return NULL;
}

int qb_prom_family(struct qb_prom_writer *w, const char *name, const char *type, const char *help)
{
    struct prom_family *f;
    enum prom_type t;
    int rc;

    if (!w)
        return QB_EINVAL;
    if (w->err)
        return w->err;
    if (!type || !valid_name(name, true))
        return fail(w, QB_EINVAL);
    if (!strcmp(type, "counter"))
        t = PROM_COUNTER;
    else if (!strcmp(type, "gauge"))
        t = PROM_GAUGE;
    else if (!strcmp(type, "histogram"))
        t = PROM_HISTOGRAM;
    else
        return fail(w, QB_EINVAL);

    f = find_family(w, name);
    if (f)
        return f->type == t ? QB_OK : fail(w, QB_EINVAL);

    if (w->nfams == w->capfams) {
        size_t cap = w->capfams ? w->capfams * 2 : 16;
        struct prom_family *fams = realloc(w->fams, cap * sizeof *fams);
        if (!fams)
            return fail(w, QB_ENOMEM);
        w->fams = fams;
        w->capfams = cap;
    }
    f = &w->fams[w->nfams];
    memset(f, 0, sizeof *f);
    qb_buffer_init(&f->text, 0);
    f->type = t;
    f->name = strdup(name);
    if (!f->name)
        return fail(w, QB_ENOMEM);
    w->last = w->nfams++; /* counted now so qb_prom_writer_free releases a half-built one */

    rc = buf_cat(&f->text, "# HELP ", name, " ", NULL);
    if (rc == QB_OK)
        rc = buf_escaped(&f->text, help ? help : "", false);
    if (rc == QB_OK)
        rc = buf_cat(&f->text, "\n# TYPE ", name, " ", prom_type_names[t], "\n", NULL);
    return fail(w, rc);
}

/*
 * Appends one sample line: <name><suffix>{labels[,le="<le>"]} <value>\n.
 * le is NULL except for histogram buckets.
 */
static int add_line(struct qb_buffer *b, const char *name, const char *suffix,
                    const char *const *labels, const char *le, const char *value)
{
    bool any = false;
    size_t i;
    int rc;

    rc = buf_cat(b, name, suffix, NULL);
    for (i = 0; labels && labels[i] && rc == QB_OK; i += 2) {
        rc = buf_cat(b, any ? "," : "{", labels[i], "=\"", NULL);
        if (rc == QB_OK)
            rc = buf_escaped(b, labels[i + 1], true);
        if (rc == QB_OK)
            rc = qb_buffer_append_str(b, "\"");
        any = true;
    }
    /* le comes from our own number formatting: nothing to escape. */
    if (le && rc == QB_OK) {
        rc = buf_cat(b, any ? ",le=\"" : "{le=\"", le, "\"", NULL);
        any = true;
    }
    if (rc == QB_OK)
        rc = buf_cat(b, any ? "} " : " ", value, "\n", NULL);
    return rc;
}

/* Finds the family for a sample of the given kind, or records QB_EINVAL. */
static struct prom_family *sample_family(struct qb_prom_writer *w, const char *name,
                                         const char *const *labels, bool histogram)
{
    struct prom_family *f;

    if (!name || !valid_labels(labels, !histogram)) {
        fail(w, QB_EINVAL);
        return NULL;
    }
    f = find_family(w, name);
    if (!f || (f->type == PROM_HISTOGRAM) != histogram) {
        fail(w, QB_EINVAL);
        return NULL;
    }
    return f;
}

static int sample_text(struct qb_prom_writer *w, const char *name, const char *const *labels,
                       const char *value)
{
    struct prom_family *f;

    if (!w)
        return QB_EINVAL;
    if (w->err)
        return w->err;
    f = sample_family(w, name, labels, false);
    if (!f)
        return w->err;
    return fail(w, add_line(&f->text, name, "", labels, NULL, value));
}

int qb_prom_sample_u64(struct qb_prom_writer *w, const char *name, const char *const *labels,
                       uint64_t value)
{
    char num[24];

    snprintf(num, sizeof num, "%" PRIu64, value);
    return sample_text(w, name, labels, num);
}

int qb_prom_sample_double(struct qb_prom_writer *w, const char *name, const char *const *labels,
                          double value)
{
    char num[32];

    return sample_text(w, name, labels, qb_prom_format_double(value, num));
}

int qb_prom_writer_finish(struct qb_prom_writer *w, char **out, size_t *len)
{
    size_t total = 0, i, off = 0;
    char *p;
    int rc;

    *out = NULL;
    *len = 0;
    if (!w)
        return QB_EINVAL;
    rc = w->err;
    for (i = 0; i < w->nfams && rc == QB_OK; i++)
        total += w->fams[i].text.len;
    p = rc == QB_OK ? malloc(total + 1) : NULL;
    if (rc == QB_OK && !p)
        rc = QB_ENOMEM;
    if (rc == QB_OK) {
        for (i = 0; i < w->nfams; i++) {
            memcpy(p + off, w->fams[i].text.data, w->fams[i].text.len);
            off += w->fams[i].text.len;
        }
        p[off] = '\0';
        *out = p;
        *len = off;
    }
    qb_prom_writer_free(w);
    return rc;
}

/* ---- histogram -------------------------------------------------------------------------- */

int qb_histogram_init(struct qb_histogram *h, const double *bounds, size_t nbounds)
{
    size_t i;

    memset(h, 0, sizeof *h);
    if (!bounds || nbounds == 0 || nbounds > QB_HISTOGRAM_MAX_BOUNDS)
        return QB_EINVAL;
    for (i = 0; i < nbounds; i++) {
        /* Bounds must stay distinct after rounding to microseconds, or a bucket would be empty
         * forever and the binary search ambiguous. */
        if (!(bounds[i] > 0) || !isfinite(bounds[i]) || bounds[i] > 1e12)
            return QB_EINVAL;
        h->bounds[i] = bounds[i];
        h->bounds_usec[i] = (uint64_t)llround(bounds[i] * 1e6);
        if (i > 0 && h->bounds_usec[i] <= h->bounds_usec[i - 1])
            return QB_EINVAL;
    }
    h->nbounds = nbounds;
    return QB_OK;
}

void qb_histogram_init_latency(struct qb_histogram *h)
{
    (void)qb_histogram_init(h, qb_histogram_latency_bounds, qb_histogram_latency_nbounds);
}

void qb_histogram_observe_usec(struct qb_histogram *h, uint64_t usec)
{
    size_t lo = 0, hi = h->nbounds;

    /* First bound >= usec (buckets are "less than or equal"); nbounds means +Inf. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->bounds_usec[mid] >= usec)
            hi = mid;
        else
            lo = mid + 1;
    }
    h->buckets[lo]++;
    h->count++;
    h->sum_usec += usec;
}

double qb_histogram_quantile(const struct qb_histogram *h, double q)
{
    double rank, cum = 0, lower = 0;
    size_t i;

    if (h->count == 0 || h->nbounds == 0 || !(q >= 0 && q <= 1))
        return NAN;
    rank = q * (double)h->count;
    for (i = 0; i < h->nbounds; i++) {
        double in = (double)h->buckets[i];
        /* The first bucket whose cumulative count reaches the rank; q = 0 picks the first
         * non-empty bucket's lower edge. */
        if (in > 0 && cum + in >= rank)
            return lower + (h->bounds[i] - lower) * ((rank - cum) / in);
        cum += in;
        lower = h->bounds[i];
    }
    /* The rank lies in the +Inf bucket: nothing better than the highest finite bound. */
    return h->bounds[h->nbounds - 1];
}

int qb_prom_histogram(struct qb_prom_writer *w, const char *name, const char *const *labels,
                      const struct qb_histogram *h)
{
    struct prom_family *f;
    uint64_t cum = 0;
    char le[32], num[32];
    size_t i;
    int rc = QB_OK;

    if (!w)
        return QB_EINVAL;
    if (w->err)
        return w->err;
    if (!h)
        return fail(w, QB_EINVAL);
    f = sample_family(w, name, labels, true);
    if (!f)
        return w->err;
    for (i = 0; i <= h->nbounds && rc == QB_OK; i++) {
        cum += h->buckets[i];
        if (i < h->nbounds)
            qb_prom_format_double(h->bounds[i], le);
        else
            strcpy(le, "+Inf");
        snprintf(num, sizeof num, "%" PRIu64, cum);
        rc = add_line(&f->text, name, "_bucket", labels, le, num);
    }
    if (rc == QB_OK) {
        double sum = (double)h->sum_usec / 1e6;
        rc = add_line(&f->text, name, "_sum", labels, NULL, qb_prom_format_double(sum, num));
    }
    if (rc == QB_OK) {
        snprintf(num, sizeof num, "%" PRIu64, h->count);
        rc = add_line(&f->text, name, "_count", labels, NULL, num);
    }
    return fail(w, rc);
}
