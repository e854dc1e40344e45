/*
 * test_prom.c - the Prometheus text writer and the latency histogram.
 *
 * Every exposition the writer produces here is read back by a strict checker
 * (check_exposition below) that knows the line grammar of the text format:
 * HELP then TYPE once per family, samples only under their own family, label
 * and HELP escapes, float syntax, no duplicate series, histogram buckets
 * cumulative with ascending "le" ending in +Inf and matching _count. Label
 * values are unescaped again and compared with what went in. When promtool is
 * available (QB_PROMTOOL=/path/to/promtool, or promtool on PATH) a realistic
 * exposition is also checked with `promtool check metrics`; otherwise that
 * test is skipped.
 *
 * The collectors of /metrics (status_api.c, process_metrics.c) and the reload
 * outcome they report (reload.c) are tested here too, without a server: the
 * families the alert rules and the dashboard rely on must be there, with every
 * bounded label value, even when there is nothing to count.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "normalize.h"
#include "process_metrics.h"
#include "prom.h"
#include "reload.h"
#include "status_api.h"

#include <sys/time.h>

/* ---- a strict reader of the text format ------------------------------------------------- */

#define MAX_LABELS 8
#define MAX_SAMPLES 20000
#define MAX_FAMS 64

struct sample {
    char name[128];
    int nlabels;
    char lname[MAX_LABELS][64];
    char lval[MAX_LABELS][256];
    char value[64];
    char series[700]; /* name + raw label text, for duplicate detection */
};

struct parsed {
    int n, nfam;
    struct sample s[MAX_SAMPLES];
    char fam[MAX_FAMS][128];
    char type[MAX_FAMS][16];
    char help[MAX_FAMS][256]; /* unescaped */
};

static bool is_name(const char *s, size_t n, bool colon)
{
    size_t i;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
              (i > 0 && c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

/* Unescapes [s, s+n) into out; quote says whether \" is allowed (label values) or not (HELP). */
static bool unescape(const char *s, size_t n, char *out, size_t outlen, bool quote)
{
    size_t i, o = 0;

    for (i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\n' || (quote && c == '"'))
            return false;
        if (c == '\\') {
            if (++i == n)
                return false;
            if (s[i] == 'n')
                c = '\n';
            else if (s[i] == '\\')
                c = '\\';
            else if (s[i] == '"' && quote)
                c = '"';
            else
                return false;
        }
        if (o + 1 >= outlen)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

static bool is_value(const char *v)
{
    char *end;

    if (!strcmp(v, "+Inf") || !strcmp(v, "-Inf") || !strcmp(v, "NaN"))
        return true;
    /* strtod also takes "inf", "nan", hex and leading blanks: the format does not. */
    if (!*v || strpbrk(v, "xXiInN \t"))
        return false;
    strtod(v, &end);
    return *end == '\0';
}

static double value_of(const char *v)
{
    if (!strcmp(v, "+Inf"))
        return INFINITY;
    if (!strcmp(v, "-Inf"))
        return -INFINITY;
    return strtod(v, NULL);
}

/* Histogram series state while reading one histogram family. */
struct hist_state {
    char key[512]; /* label text without le */
    double last_le, last_count;
    bool saw_inf, saw_sum;
    double inf_count;
};

/*
 * Parses text strictly into p. Returns NULL when it is valid, or a static
 * message naming the first problem (the line number goes into where).
 */
static const char *check_exposition(const char *text, struct parsed *p, int *where)
{
    const char *line = text;
    int lineno = 0, cur = -1;
    struct hist_state hs = {0};

    memset(p, 0, sizeof *p);
    *where = 0;
    if (*text && text[strlen(text) - 1] != '\n')
        return "no final newline";
    while (*line) {
        const char *eol = strchr(line, '\n');
        size_t n = (size_t)(eol - line);
        char buf[2048];

        *where = ++lineno;
        if (n == 0)
            return "empty line";
        if (n >= sizeof buf)
            return "line too long for the checker";
        memcpy(buf, line, n);
        buf[n] = '\0';
        line = eol + 1;

        if (buf[0] == '#') {
            char *name, *sp;
            int i;

            if (strncmp(buf, "# HELP ", 7))
                return "comment that is not HELP (TYPE must follow HELP)";
            name = buf + 7;
            sp = strchr(name, ' ');
            if (!sp || !is_name(name, (size_t)(sp - name), true))
                return "bad HELP line";
            *sp = '\0';
            if (hs.key[0] || hs.last_count > 0 || hs.saw_sum)
                return "histogram series not closed by _count";
            for (i = 0; i < p->nfam; i++)
                if (!strcmp(p->fam[i], name))
                    return "family appears twice";
            if (p->nfam == MAX_FAMS)
                return "too many families for the checker";
            cur = p->nfam++;
            snprintf(p->fam[cur], sizeof p->fam[cur], "%.127s", name);
            if (!unescape(sp + 1, strlen(sp + 1), p->help[cur], sizeof p->help[cur], false))
                return "bad escape in HELP";
            /* The TYPE line must be next. */
            eol = strchr(line, '\n');
            *where = ++lineno;
            if (!eol)
                return "HELP without TYPE";
            n = (size_t)(eol - line);
            if (n < 8 || strncmp(line, "# TYPE ", 7) || strncmp(line + 7, name, strlen(name)) ||
                line[7 + strlen(name)] != ' ')
                return "TYPE line missing or for another family";
            snprintf(p->type[cur], sizeof p->type[cur], "%.*s", (int)(n - 8 - strlen(name)),
                     line + 8 + strlen(name));
            if (strcmp(p->type[cur], "counter") && strcmp(p->type[cur], "gauge") &&
                strcmp(p->type[cur], "histogram"))
                return "unknown TYPE";
            line = eol + 1;
            continue;
        }

        /* A sample: name [{labels}] value */
        {
            struct sample *s;
            char *c = buf, *nend, *vstart;
            char labeltext[512] = "", nole[512] = "", le[64] = "";
            size_t nlen;
            int i, j;

            if (cur < 0)
                return "sample before any family";
            if (p->n == MAX_SAMPLES)
                return "too many samples for the checker";
            s = &p->s[p->n];
            memset(s, 0, sizeof *s);
            nend = c + strcspn(c, "{ ");
            nlen = (size_t)(nend - c);
            if (!is_name(c, nlen, true) || nlen >= sizeof s->name)
                return "bad metric name";
            memcpy(s->name, c, nlen);
            c = nend;
            if (*c == '{') {
                char *lstart = c;
                c++;
                for (;;) {
                    char *eq = strchr(c, '=');
                    char *q;
                    if (!eq || !is_name(c, (size_t)(eq - c), false) || eq[1] != '"')
                        return "bad label name";
                    if (s->nlabels == MAX_LABELS || (size_t)(eq - c) >= 64)
                        return "too many labels for the checker";
                    memcpy(s->lname[s->nlabels], c, (size_t)(eq - c));
                    q = eq + 2;
                    while (*q && *q != '"')
                        q += (*q == '\\' && q[1]) ? 2 : 1;
                    if (*q != '"')
                        return "unterminated label value";
                    if (!unescape(eq + 2, (size_t)(q - eq - 2), s->lval[s->nlabels],
                                  sizeof s->lval[0], true))
                        return "bad escape in label value";
                    for (j = 0; j < s->nlabels; j++)
                        if (!strcmp(s->lname[j], s->lname[s->nlabels]))
                            return "label repeated";
                    if (!strcmp(s->lname[s->nlabels], "le"))
                        snprintf(le, sizeof le, "%.63s", s->lval[s->nlabels]);
                    else
                        snprintf(nole + strlen(nole), sizeof nole - strlen(nole), "%.*s,",
                                 (int)(q + 1 - c), c);
                    s->nlabels++;
                    c = q + 1;
                    if (*c == ',') {
                        c++;
                        continue;
                    }
                    if (*c != '}')
                        return "expected , or } after a label";
                    c++;
                    break;
                }
                snprintf(labeltext, sizeof labeltext, "%.*s", (int)(c - lstart), lstart);
            }
            if (*c != ' ')
                return "expected one space before the value";
            vstart = c + 1;
            if (strchr(vstart, ' '))
                return "timestamps or extra fields are not expected";
            if (!is_value(vstart) || strlen(vstart) >= sizeof s->value)
                return "bad value";
            snprintf(s->value, sizeof s->value, "%s", vstart);
            memcpy(s->series, s->name, nlen);
            memcpy(s->series + nlen, labeltext, strlen(labeltext) + 1);
            for (i = 0; i < p->n; i++)
                if (!strcmp(p->s[i].series, s->series))
                    return "duplicate series";

            if (strcmp(p->type[cur], "histogram")) {
                if (strcmp(s->name, p->fam[cur]))
                    return "sample outside its family";
            } else {
                size_t fl = strlen(p->fam[cur]);
                const char *suffix = s->name + fl;
                double v = value_of(s->value);

                if (strncmp(s->name, p->fam[cur], fl))
                    return "sample outside its histogram family";
                if (!strcmp(suffix, "_bucket")) {
                    double lev;
                    if (!le[0] || !is_value(le))
                        return "bucket without a valid le";
                    lev = value_of(le);
                    if (hs.key[0] && strcmp(hs.key, nole))
                        return "histogram series interleaved";
                    if (hs.saw_inf || hs.saw_sum)
                        return "bucket after +Inf or _sum";
                    if (hs.key[0] && !(lev > hs.last_le))
                        return "le not ascending";
                    if (hs.key[0] && v < hs.last_count)
                        return "bucket counts not cumulative";
                    snprintf(hs.key, sizeof hs.key, "%s", nole[0] ? nole : ",");
                    hs.last_le = lev;
                    hs.last_count = v;
                    if (isinf(lev)) {
                        hs.saw_inf = true;
                        hs.inf_count = v;
                    }
                } else if (!strcmp(suffix, "_sum")) {
                    if (le[0] || !hs.saw_inf || hs.saw_sum || strcmp(hs.key, nole[0] ? nole : ","))
                        return "_sum out of place";
                    hs.saw_sum = true;
                } else if (!strcmp(suffix, "_count")) {
                    if (le[0] || !hs.saw_sum || strcmp(hs.key, nole[0] ? nole : ","))
                        return "_count out of place";
                    if (v != hs.inf_count)
                        return "_count differs from the +Inf bucket";
                    memset(&hs, 0, sizeof hs);
                } else {
                    return "unknown histogram sample suffix";
                }
            }
            p->n++;
        }
    }
    if (hs.key[0])
        return "histogram series not closed by _count";
    return NULL;
}

/* Finishes w, checks the text, and returns it (caller frees); fails the test when invalid. */
static char *finish_checked(struct qb_prom_writer *w, struct parsed *p)
{
    char *text = NULL;
    size_t len = 0;
    const char *why;
    int where;

    assert_int_equal(qb_prom_writer_finish(w, &text, &len), QB_OK);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    why = check_exposition(text, p, &where);
    if (why)
        fail_msg("invalid exposition at line %d: %s\n%s", where, why, text);
    return text;
}

/* The value of the sample name{k=v} (one label or none), or NULL. */
static const char *find_value(const struct parsed *p, const char *name, const char *k,
                              const char *v)
{
    int i, j;

    for (i = 0; i < p->n; i++) {
        if (strcmp(p->s[i].name, name))
            continue;
        if (!k && p->s[i].nlabels == 0)
            return p->s[i].value;
        for (j = 0; k && j < p->s[i].nlabels; j++)
            if (!strcmp(p->s[i].lname[j], k) && !strcmp(p->s[i].lval[j], v))
                return p->s[i].value;
    }
    return NULL;
}

static struct parsed *new_parsed(void)
{
    struct parsed *p = malloc(sizeof *p);
    assert_non_null(p);
    return p;
}

/* The checker itself must refuse what the format forbids, or passing it proves nothing. */
static void test_checker_rejects_bad_text(void **state)
{
    static const char *const bad[] = {
        "a 1",                                            /* no final newline */
        "a 1\n",                                          /* no family */
        "# HELP a x\na 1\n",                              /* no TYPE */
        "# HELP a x\n# TYPE a counter\nb 1\n",            /* other family's sample */
        "# HELP a x\n# TYPE a counter\na{v=\"\\t\"} 1\n", /* bad escape */
        "# HELP a x\n# TYPE a counter\na{v=\"x\",v=\"y\"} 1\n",
        "# HELP a x\n# TYPE a counter\na inf\n",
        "# HELP a x\n# TYPE a counter\na 1\na 2\n", /* duplicate series */
        "# HELP a x\n# TYPE a counter\n# HELP a x\n# TYPE a counter\n",
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\n"
        "h_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n", /* not cumulative */
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
        "h_sum 1\nh_count 3\n", /* count differs */
        "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
    };
    struct parsed *p = new_parsed();
    size_t i;
    int where;

    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (!check_exposition(bad[i], p, &where))
            fail_msg("checker accepted bad text #%zu:\n%s", i, bad[i]);
    free(p);
}

static void test_escaping_round_trips(void **state)
{
    static const char *const nasty[] = {
        "plain",
        "back\\slash",
        "quo\"te",
        "new\nline",
        "all \\\"\n\\n",
        "",
        "caf\xc3\xa9 \xe2\x82\xac",
    };
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    char *text;
    size_t i;

    (void)state;
    assert_int_equal(qb_prom_family(w, "qb_test_total", "counter",
                                    "Help with \\ backslash,\nnewline, \"quotes\""),
                     QB_OK);
    for (i = 0; i < sizeof nasty / sizeof nasty[0]; i++) {
        const char *labels[] = {"vm", nasty[i], NULL};
        assert_int_equal(qb_prom_sample_u64(w, "qb_test_total", labels, i), QB_OK);
    }
    text = finish_checked(w, p);
    /* The escapes as the format spells them. */
    assert_non_null(strstr(text, "# HELP qb_test_total Help with \\\\ backslash,\\nnewline, "
                                 "\"quotes\"\n"));
    assert_non_null(strstr(text, "qb_test_total{vm=\"all \\\\\\\"\\n\\\\n\"} 4\n"));
    assert_string_equal(p->help[0], "Help with \\ backslash,\nnewline, \"quotes\"");
    for (i = 0; i < sizeof nasty / sizeof nasty[0]; i++) {
        char want[8];
        snprintf(want, sizeof want, "%zu", i);
        const char *v = find_value(p, "qb_test_total", "vm", nasty[i]);
        if (!v || strcmp(v, want))
            fail_msg("label value #%zu did not round-trip:\n%s", i, text);
    }
    free(text);
    free(p);
}

static void test_invalid_utf8_replaced(void **state)
{
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    const char *labels[] = {"vm",
                            "a\xff"
                            "b\xc3",
                            NULL}; /* stray byte, truncated sequence */
    const char *surrogate[] = {"vm", "\xed\xa0\x80", NULL};
    char *text;

    (void)state;
    qb_prom_family(w, "qb_g", "gauge", "g");
    qb_prom_sample_u64(w, "qb_g", labels, 1);
    qb_prom_sample_u64(w, "qb_g", surrogate, 2);
    text = finish_checked(w, p);
    assert_non_null(find_value(p, "qb_g", "vm",
                               "a\xef\xbf\xbd"
                               "b\xef\xbf\xbd"));
    assert_non_null(find_value(p, "qb_g", "vm", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"));
    free(text);
    free(p);
}

static void test_values(void **state)
{
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    const char *l[] = {"k", "max", NULL};
    char buf[32];
    char *text;

    (void)state;
    qb_prom_family(w, "qb_u", "counter", "u");
    qb_prom_sample_u64(w, "qb_u", l, UINT64_MAX);
    qb_prom_family(w, "qb_d", "gauge", "d");
    l[1] = "tenth";
    qb_prom_sample_double(w, "qb_d", l, 0.1);
    l[1] = "third";
    qb_prom_sample_double(w, "qb_d", l, 1.0 / 3);
    l[1] = "inf";
    qb_prom_sample_double(w, "qb_d", l, INFINITY);
    l[1] = "ninf";
    qb_prom_sample_double(w, "qb_d", l, -INFINITY);
    l[1] = "nan";
    qb_prom_sample_double(w, "qb_d", l, NAN);
    l[1] = "tiny";
    qb_prom_sample_double(w, "qb_d", l, 5e-324);
    text = finish_checked(w, p);
    assert_string_equal(find_value(p, "qb_u", "k", "max"), "18446744073709551615");
    assert_string_equal(find_value(p, "qb_d", "k", "tenth"), "0.1");
    assert_string_equal(find_value(p, "qb_d", "k", "third"), "0.3333333333333333");
    assert_true(strtod(find_value(p, "qb_d", "k", "third"), NULL) == 1.0 / 3);
    assert_string_equal(find_value(p, "qb_d", "k", "inf"), "+Inf");
    assert_string_equal(find_value(p, "qb_d", "k", "ninf"), "-Inf");
    assert_string_equal(find_value(p, "qb_d", "k", "nan"), "NaN");
    assert_true(strtod(find_value(p, "qb_d", "k", "tiny"), NULL) == 5e-324);
    assert_string_equal(qb_prom_format_double(2.5, buf), "2.5");
    assert_string_equal(qb_prom_format_double(10, buf), "10");
    assert_string_equal(qb_prom_format_double(0.00025, buf), "0.00025");
    free(text);
    free(p);
}

/* Collectors interleave families; the output still groups every family's samples. */
static void test_families_grouped_and_once(void **state)
{
    static const char *const transports[] = {"kafka", "mqtt", "stdout"};
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    char *text;
    size_t i;

    (void)state;
    for (i = 0; i < 3; i++) {
        const char *l[] = {"transport", transports[i], NULL};
        assert_int_equal(qb_prom_family(w, "qb_published_total", "counter", "Published."), QB_OK);
        qb_prom_sample_u64(w, "qb_published_total", l, i + 1);
        assert_int_equal(qb_prom_family(w, "qb_confirmed_total", "counter", "Other help, ignored"),
                         QB_OK);
        qb_prom_sample_u64(w, "qb_confirmed_total", l, i);
    }
    text = finish_checked(w, p); /* the checker refuses a family appearing twice */
    assert_int_equal(p->nfam, 2);
    assert_string_equal(p->fam[0], "qb_published_total");
    assert_string_equal(p->fam[1], "qb_confirmed_total");
    assert_int_equal(p->n, 6);
    assert_string_equal(find_value(p, "qb_confirmed_total", "transport", "stdout"), "2");
    free(text);
    free(p);
}

static void test_errors_are_sticky(void **state)
{
    struct qb_prom_writer *w;
    const char *dup[] = {"a", "1", "a", "2", NULL};
    const char *reserved[] = {"__name__", "x", NULL};
    const char *badlabel[] = {"a-b", "x", NULL};
    const char *le[] = {"le", "1", NULL};
    const char *odd[] = {"a", NULL};
    struct qb_histogram h;
    char *text;
    size_t len;

    (void)state;
    qb_histogram_init_latency(&h);
#define EXPECT_EINVAL(call)                                                                        \
    do {                                                                                           \
        w = qb_prom_writer_new();                                                                  \
        qb_prom_family(w, "qb_c", "counter", "c");                                                 \
        qb_prom_family(w, "qb_h", "histogram", "h");                                               \
        assert_int_equal((call), QB_EINVAL);                                                       \
        /* Later calls do nothing and report the first error. */                                   \
        assert_int_equal(qb_prom_sample_u64(w, "qb_c", NULL, 1), QB_EINVAL);                       \
        assert_int_equal(qb_prom_writer_finish(w, &text, &len), QB_EINVAL);                        \
        assert_null(text);                                                                         \
    } while (0)
    EXPECT_EINVAL(qb_prom_family(w, "1abc", "gauge", "x"));
    EXPECT_EINVAL(qb_prom_family(w, "a-b", "gauge", "x"));
    EXPECT_EINVAL(qb_prom_family(w, "qb_x", "summary", "x"));
    EXPECT_EINVAL(qb_prom_family(w, "qb_c", "gauge", "same name, other type"));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_unknown", NULL, 1));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_c", dup, 1));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_c", reserved, 1));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_c", badlabel, 1));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_c", odd, 1));
    EXPECT_EINVAL(qb_prom_sample_u64(w, "qb_h", NULL, 1));
    EXPECT_EINVAL(qb_prom_histogram(w, "qb_c", NULL, &h));
    EXPECT_EINVAL(qb_prom_histogram(w, "qb_h", le, &h));
#undef EXPECT_EINVAL
}

static void test_histogram_buckets(void **state)
{
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    const char *l[] = {"transport", "mqtt", NULL};
    struct qb_histogram h, empty;
    char *text;

    (void)state;
    qb_histogram_init_latency(&h);
    qb_histogram_init_latency(&empty);
    qb_histogram_observe_usec(&h, 0);        /* le=0.0001 */
    qb_histogram_observe_usec(&h, 100);      /* le=0.0001: bounds are inclusive */
    qb_histogram_observe_usec(&h, 101);      /* le=0.00025 */
    qb_histogram_observe_usec(&h, 1000000);  /* le=1 */
    qb_histogram_observe_usec(&h, 10000000); /* le=10 */
    qb_histogram_observe_usec(&h, 10000001); /* +Inf only */
    qb_prom_family(w, "qb_confirm_latency_seconds", "histogram", "Event to confirmation.");
    assert_int_equal(qb_prom_histogram(w, "qb_confirm_latency_seconds", l, &h), QB_OK);
    l[1] = "kafka";
    assert_int_equal(qb_prom_histogram(w, "qb_confirm_latency_seconds", l, &empty), QB_OK);
    text = finish_checked(w, p); /* cumulative, ascending, +Inf == _count */
    assert_non_null(
        strstr(text, "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"0.0001\"} 2\n"
                     "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"0.00025\"} 3\n"));
    assert_non_null(strstr(text,
                           "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"0.5\"} 3\n"
                           "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"1\"} 4\n"));
    assert_non_null(strstr(text,
                           "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"10\"} 5\n"
                           "qb_confirm_latency_seconds_bucket{transport=\"mqtt\",le=\"+Inf\"} 6\n"
                           "qb_confirm_latency_seconds_sum{transport=\"mqtt\"} 21.000202\n"
                           "qb_confirm_latency_seconds_count{transport=\"mqtt\"} 6\n"));
    assert_non_null(strstr(text, "qb_confirm_latency_seconds_count{transport=\"kafka\"} 0\n"));
    /* 22 bounds + the +Inf bucket + sum + count, twice */
    assert_int_equal(p->n, 2 * (23 + 2));
    free(text);
    free(p);
}

/* Binary search against a linear reference over every boundary and its neighbours. */
static void test_histogram_observe_matches_linear(void **state)
{
    struct qb_histogram h;
    uint64_t expect[QB_HISTOGRAM_MAX_BOUNDS + 1] = {0};
    size_t i, b;
    int d;

    (void)state;
    qb_histogram_init_latency(&h);
    for (i = 0; i < qb_histogram_latency_nbounds; i++) {
        for (d = -1; d <= 1; d++) {
            uint64_t v = (uint64_t)llround(qb_histogram_latency_bounds[i] * 1e6) + (uint64_t)d;
            for (b = 0; b < qb_histogram_latency_nbounds; b++)
                if ((double)v / 1e6 <= qb_histogram_latency_bounds[b])
                    break;
            expect[b]++;
            qb_histogram_observe_usec(&h, v);
        }
    }
    qb_histogram_observe_usec(&h, UINT64_MAX / 2);
    expect[qb_histogram_latency_nbounds]++;
    assert_memory_equal(h.buckets, expect, sizeof expect);
    assert_int_equal(h.count, 3 * qb_histogram_latency_nbounds + 1);
}

static void test_histogram_init_checks(void **state)
{
    static const double unsorted[] = {0.1, 0.01};
    static const double zero[] = {0, 1};
    static const double same_usec[] = {0.0000011, 0.0000012}; /* both 1 us */
    static const double ok[] = {0.5, 1, 2};
    double many[QB_HISTOGRAM_MAX_BOUNDS + 1];
    struct qb_histogram h;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof many / sizeof many[0]; i++)
        many[i] = (double)(i + 1);
    assert_int_equal(qb_histogram_init(&h, unsorted, 2), QB_EINVAL);
    assert_int_equal(qb_histogram_init(&h, zero, 2), QB_EINVAL);
    assert_int_equal(qb_histogram_init(&h, same_usec, 2), QB_EINVAL);
    assert_int_equal(qb_histogram_init(&h, many, QB_HISTOGRAM_MAX_BOUNDS + 1), QB_EINVAL);
    assert_int_equal(qb_histogram_init(&h, ok, 0), QB_EINVAL);
    assert_int_equal(qb_histogram_init(&h, ok, 3), QB_OK);
    assert_int_equal(qb_histogram_init(&h, many, QB_HISTOGRAM_MAX_BOUNDS), QB_OK);
}

static void test_histogram_quantile(void **state)
{
    struct qb_histogram h;
    int i;

    (void)state;
    qb_histogram_init_latency(&h);
    assert_true(isnan(qb_histogram_quantile(&h, 0.5)));
    /* 50 in (0.75 ms, 1 ms], 50 in (1.5 ms, 2 ms] */
    for (i = 0; i < 50; i++) {
        qb_histogram_observe_usec(&h, 1000);
        qb_histogram_observe_usec(&h, 2000);
    }
    assert_float_equal(qb_histogram_quantile(&h, 0.5), 0.001, 1e-12);
    assert_float_equal(qb_histogram_quantile(&h, 0.25), 0.000875, 1e-12);
    assert_float_equal(qb_histogram_quantile(&h, 0.75), 0.00175, 1e-12);
    assert_float_equal(qb_histogram_quantile(&h, 1), 0.002, 1e-12);
    assert_float_equal(qb_histogram_quantile(&h, 0), 0.00075, 1e-12);
    assert_true(isnan(qb_histogram_quantile(&h, 1.5)));
    assert_true(isnan(qb_histogram_quantile(&h, -0.1)));
    assert_true(isnan(qb_histogram_quantile(&h, NAN)));

    /* The first bucket interpolates from 0. */
    qb_histogram_init_latency(&h);
    for (i = 0; i < 4; i++)
        qb_histogram_observe_usec(&h, 50);
    assert_float_equal(qb_histogram_quantile(&h, 0.5), 0.00005, 1e-12);

    /* Ranks in the +Inf bucket answer the highest finite bound. */
    qb_histogram_init_latency(&h);
    qb_histogram_observe_usec(&h, 1000);
    for (i = 0; i < 9; i++)
        qb_histogram_observe_usec(&h, 60000000);
    assert_float_equal(qb_histogram_quantile(&h, 0.99), 10, 1e-12);
    assert_float_equal(qb_histogram_quantile(&h, 0.05), 0.00075 + 0.00025 * 0.5, 1e-12);
}

/* Enough samples to make the buffers grow many times. */
static void test_many_samples(void **state)
{
    struct qb_prom_writer *w = qb_prom_writer_new();
    struct parsed *p = new_parsed();
    char vm[32], *text;
    int i;

    (void)state;
    qb_prom_family(w, "qb_events_total", "counter", "QMP events.");
    qb_prom_family(w, "qb_vm_up", "gauge", "1 when the QMP session is ready.");
    for (i = 0; i < 5000; i++) {
        const char *l[] = {"vm", vm, "type", "vm.lifecycle.stopped", NULL};
        snprintf(vm, sizeof vm, "vm-%05d", i);
        qb_prom_sample_u64(w, "qb_events_total", l, (uint64_t)i);
        qb_prom_sample_u64(w, "qb_vm_up", l, (uint64_t)(i & 1));
    }
    text = finish_checked(w, p);
    assert_int_equal(p->n, 10000);
    assert_string_equal(find_value(p, "qb_events_total", "vm", "vm-04999"), "4999");
    free(text);
    free(p);
}

/* ---- the collectors ------------------------------------------------------------------- */

/* A real /proc/<pid>/stat line of a process whose name holds ") (" and spaces. */
#define STAT_LINE                                                                                  \
    "4242 (qb ) (x 1 2) S 1 4242 4242 0 -1 4194560 1234 0 5 0 250 130 0 0 20 0 3 0 987654 "        \
    "123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n"

static void test_process_stat_parse(void **state)
{
    struct qb_process_stat st;
    static const char *const bad[] = {
        "",
        "4242 qb S 1",       /* no command name in parentheses */
        "4242 (qb) S 1 2 3", /* cut short */
        "4242 (qb) S 1 4242 4242 0 -1 4194560 1234 0 5 0 x 130 0 0 20 0 3 0 987654 1 2\n",
        "4242 (qb)  S 1 4242 4242 0 -1 4194560 1234 0 5 0 250 130 0 0 20 0 3 0 987654 1 2\n",
    };

    (void)state;
    assert_int_equal(qb_process_stat_parse(STAT_LINE, 100, 4096, &st), QB_OK);
    assert_float_equal(st.cpu_seconds, 3.8, 1e-9); /* (250 + 130) / 100 */
    assert_float_equal(st.start_seconds, 9876.54, 1e-9);
    assert_int_equal(st.vsize_bytes, 123456789);
    assert_int_equal(st.rss_bytes, 2048u * 4096u);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (qb_process_stat_parse(bad[i], 100, 4096, &st) != QB_EPARSE)
            fail_msg("accepted bad stat line #%zu: %s", i, bad[i]);
    assert_int_equal(qb_process_stat_parse(NULL, 100, 4096, &st), QB_EPARSE);
    assert_int_equal(qb_process_stat_parse(STAT_LINE, 0, 4096, &st), QB_EPARSE);
}

static void test_process_boot_time_parse(void **state)
{
    uint64_t bt = 0;

    (void)state;
    assert_int_equal(qb_process_boot_time_parse("cpu  1 2 3\nintr 5\nbtime 1700000000\n"
                                                "processes 9\n",
                                                &bt),
                     QB_OK);
    assert_int_equal(bt, 1700000000u);
    assert_int_equal(qb_process_boot_time_parse("btime 17\n", &bt), QB_OK);
    assert_int_equal(bt, 17u);
    assert_int_equal(qb_process_boot_time_parse("cpu 1\nxbtime 5\n", &bt), QB_EPARSE);
    assert_int_equal(qb_process_boot_time_parse("btime \n", &bt), QB_EPARSE);
    assert_int_equal(qb_process_boot_time_parse("btime 12x\n", &bt), QB_EPARSE);
    assert_int_equal(qb_process_boot_time_parse("", &bt), QB_EPARSE);
}

static void test_run_state_label(void **state)
{
    (void)state;
    assert_string_equal(qb_status_run_state_label("ready", "io-error"), "io-error");
    assert_string_equal(qb_status_run_state_label("ready", "running"), "running");
    assert_string_equal(qb_status_run_state_label("ready", "guest-panicked"), "guest-panicked");
    /* the label set stays QEMU's RunState: anything else, or no live session, is unknown */
    assert_string_equal(qb_status_run_state_label("ready", "io-error\n"), "unknown");
    assert_string_equal(qb_status_run_state_label("ready", "vm-42-special"), "unknown");
    assert_string_equal(qb_status_run_state_label("ready", ""), "unknown");
    assert_string_equal(qb_status_run_state_label("ready", NULL), "unknown");
    assert_string_equal(qb_status_run_state_label("connecting", "io-error"), "unknown");
    assert_string_equal(qb_status_run_state_label("idle", "paused"), "unknown");
    assert_string_equal(qb_status_run_state_label(NULL, "paused"), "unknown");
    for (size_t i = 0; i < QB_N_RUN_STATES; i++)
        assert_ptr_equal(qb_status_run_state_label("ready", qb_run_states[i]), qb_run_states[i]);
    assert_null(qb_run_states[QB_N_RUN_STATES]);
}

static double wall_seconds(void)
{
    struct timeval tv;

    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* /metrics of a bridge with nothing running yet, read by the strict checker. */
static char *collect_idle(const struct qb_reload_outcome *outcome, struct parsed *p)
{
    static struct qb_config cfg = {.bridge_id = "unit"};
    const struct qb_status_view view = {
        .cfg = &cfg,
        .reload = outcome,
    };
    struct qb_prom_writer *w = qb_prom_writer_new();

    qb_status_metrics_collect(w, &view);
    return finish_checked(w, p);
}

static void test_metrics_run_states_process_reload(void **state)
{
    struct qb_reload_outcome outcome;
    struct parsed *p = new_parsed();
    double before = wall_seconds(), v;
    const char *val;
    char *text;
    int n = 0;

    (void)state;
    qb_reload_outcome_init(&outcome);
    text = collect_idle(&outcome, p);

    /* every RunState and "unknown", each 0, and nothing else under that family */
    for (size_t i = 0; i < QB_N_RUN_STATES; i++) {
        val = find_value(p, "qmp_bridge_vms_by_run_state", "run_state", qb_run_states[i]);
        if (!val || strcmp(val, "0"))
            fail_msg("run_state=%s: %s\n%s", qb_run_states[i], val ? val : "missing", text);
    }
    assert_string_equal(find_value(p, "qmp_bridge_vms_by_run_state", "run_state", "unknown"), "0");
    assert_non_null(find_value(p, "qmp_bridge_vms_by_run_state", "run_state", "io-error"));
    for (int i = 0; i < p->n; i++)
        n += !strcmp(p->s[i].name, "qmp_bridge_vms_by_run_state");
    assert_int_equal(n, QB_N_RUN_STATES + 1);

    /* the start-up load counts as a successful reload, now */
    assert_string_equal(find_value(p, "qmp_bridge_config_last_reload_successful", NULL, NULL), "1");
    v = strtod(find_value(p, "qmp_bridge_config_last_reload_success_timestamp_seconds", NULL, NULL),
               NULL);
    assert_true(v >= before - 1 && v <= wall_seconds() + 1);

    /* this very process, as client_golang would report it */
    assert_true(strtod(find_value(p, "process_cpu_seconds_total", NULL, NULL), NULL) >= 0);
    assert_true(strtod(find_value(p, "process_resident_memory_bytes", NULL, NULL), NULL) > 0);
    assert_true(strtod(find_value(p, "process_virtual_memory_bytes", NULL, NULL), NULL) >=
                strtod(find_value(p, "process_resident_memory_bytes", NULL, NULL), NULL));
    v = strtod(find_value(p, "process_open_fds", NULL, NULL), NULL);
    assert_true(v >= 3); /* stdin, stdout, stderr at least */
    assert_true(strtod(find_value(p, "process_max_fds", NULL, NULL), NULL) >= v);
    v = strtod(find_value(p, "process_start_time_seconds", NULL, NULL), NULL);
    assert_true(v > 1e9 && v <= wall_seconds() + 1);
    free(text);
    free(p);
}

/* A reload whose file cannot be read changes nothing and is reported as failed. */
static void test_reload_failure_reported(void **state)
{
    static const char yaml[] = "bridge: { id: unit }\n";
    struct qb_config *cfg = NULL;
    struct qb_reload_outcome outcome;
    struct qb_reload_target t = {0};
    struct qb_reload_result res;
    struct parsed *p = new_parsed();
    char err[512], status[512], *text;
    uint64_t first;

    (void)state;
    assert_int_equal(qb_config_load_string("/nonexistent/qb-unit/qmp-bridge.yaml", yaml,
                                           strlen(yaml), &cfg, err, sizeof(err)),
                     QB_OK);
    qb_reload_outcome_init(&outcome);
    first = outcome.success_usec;
    t.cfg = cfg;
    t.outcome = &outcome;
    assert_int_equal(qb_reload_run(&t, &res, status, sizeof(status)), QB_ECONFIG);
    assert_false(outcome.successful);
    assert_int_equal(outcome.success_usec, first);
    text = collect_idle(&outcome, p);
    assert_string_equal(find_value(p, "qmp_bridge_config_last_reload_successful", NULL, NULL), "0");
    assert_true(
        strtod(find_value(p, "qmp_bridge_config_last_reload_success_timestamp_seconds", NULL, NULL),
               NULL) == (double)first / 1e6);
    free(text);
    free(p);
    qb_config_free(cfg);
}

static const char *promtool_path(void)
{
    static char found[4096];
    const char *env = getenv("QB_PROMTOOL");
    const char *path = getenv("PATH");

    if (env && *env)
        return access(env, X_OK) == 0 ? env : NULL;
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(found, sizeof found, "%.*s/promtool", (int)n, path);
        if (n > 0 && access(found, X_OK) == 0)
            return found;
        path += n + (path[n] == ':');
    }
    return NULL;
}

/* The kind of exposition the bridge serves, judged by Prometheus's own linter. */
static void test_promtool_accepts(void **state)
{
    const char *tool = promtool_path();
    struct qb_prom_writer *w;
    struct qb_histogram h;
    char *text, cmd[4600], tmpl[] = "/tmp/qb-prom-XXXXXX", outbuf[4096] = "";
    size_t len, got;
    FILE *f;
    int fd, status;

    (void)state;
    if (!tool) {
        print_message("promtool not found (set QB_PROMTOOL): skipped\n");
        skip();
    }
    w = qb_prom_writer_new();
    qb_prom_family(w, "qmp_bridge_vms", "gauge", "VMs by QMP session state.");
    {
        const char *l1[] = {"state", "ready", NULL}, *l2[] = {"state", "backoff", NULL};
        qb_prom_sample_u64(w, "qmp_bridge_vms", l1, 3);
        qb_prom_sample_u64(w, "qmp_bridge_vms", l2, 1);
    }
    qb_prom_family(w, "qmp_bridge_qmp_events_total", "counter", "QMP events by type.");
    {
        const char *l[] = {"vm", "we\"ird\\vm\nname", "type", "STOP", NULL};
        qb_prom_sample_u64(w, "qmp_bridge_qmp_events_total", l, 7);
    }
    qb_prom_family(w, "qmp_bridge_spool_oldest_age_seconds", "gauge",
                   "Age of the oldest spooled message.");
    qb_prom_sample_double(w, "qmp_bridge_spool_oldest_age_seconds", NULL, 0.25);
    qb_prom_family(w, "qmp_bridge_confirm_latency_seconds", "histogram",
                   "QMP event to transport confirmation.");
    qb_histogram_init_latency(&h);
    qb_histogram_observe_usec(&h, 1500);
    qb_histogram_observe_usec(&h, 20000000);
    {
        const char *l[] = {"transport", "mqtt", NULL};
        qb_prom_histogram(w, "qmp_bridge_confirm_latency_seconds", l, &h);
    }
    assert_int_equal(qb_prom_writer_finish(w, &text, &len), QB_OK);

    fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    snprintf(cmd, sizeof cmd, "'%s' check metrics < %s 2>&1", tool, tmpl);
    f = popen(cmd, "r");
    assert_non_null(f);
    got = fread(outbuf, 1, sizeof outbuf - 1, f);
    outbuf[got] = '\0';
    status = pclose(f);
    unlink(tmpl);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got > 0)
        fail_msg("promtool check metrics refused (status %d):\n%s\n--- input:\n%s", status, outbuf,
                 text);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker_rejects_bad_text),
        cmocka_unit_test(test_escaping_round_trips),
        cmocka_unit_test(test_invalid_utf8_replaced),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_families_grouped_and_once),
        cmocka_unit_test(test_errors_are_sticky),
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_histogram_observe_matches_linear),
        cmocka_unit_test(test_histogram_init_checks),
        cmocka_unit_test(test_histogram_quantile),
        cmocka_unit_test(test_many_samples),
        cmocka_unit_test(test_process_stat_parse),
        cmocka_unit_test(test_process_boot_time_parse),
        cmocka_unit_test(test_run_state_label),
        cmocka_unit_test(test_metrics_run_states_process_reload),
        cmocka_unit_test(test_reload_failure_reported),
        cmocka_unit_test(test_promtool_accepts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
