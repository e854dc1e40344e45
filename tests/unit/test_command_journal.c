/*
 * test_command_journal.c - executed command keys on disk (bridge/command_journal.c).
 *
 * A journal written by one "run" is loaded by the next: finished keys come
 * back with their result, a key that was running comes back "interrupted",
 * keys past their replay window are dropped. Corrupt and truncated lines are
 * skipped and the rest kept; the file is compacted (mode 0600) and stays
 * bounded; planted symbolic links are never followed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "command_cache.h"
#include "command_journal.h"
#include "error.h"

#define SEC 1000000ull
#define NOW (1800000000ull * SEC)
#define WINDOW (361 * SEC)

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    strcpy(f->dir, "/tmp/qb-journal-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, QB_COMMAND_JOURNAL_FILE);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static struct qb_command_key K(const char *id) {
    return (struct qb_command_key){.source = "orch", .vm = "vm1", .id = id};
}

static struct qb_command_meta
M(uint64_t time_usec) {
    return (struct qb_command_meta){.fp = "ab12",
                                    .command = "cont",
                                    .time_usec = time_usec,
                                    .expires_usec = time_usec + WINDOW};
}

static struct qb_command_journal *
open_j(struct fixture *f, struct qb_command_cache *c, uint64_t now)
{
    struct qb_command_journal *j = NULL;
    char err[256];
    int rc = qb_command_journal_open(f->dir, c, WINDOW, now, &j, err, sizeof(err));

    if (rc != QB_OK)
        fail_msg("open: %s", err);
    return j;
}

/* Runs begin (and, with result, end) of id through both the cache and the journal. */
static void run(struct qb_command_cache *c, struct qb_command_journal *j, const char *id,
                uint64_t time_usec, const char *status)
{
    struct qb_command_key k = K(id);
    struct qb_command_meta m = M(time_usec);

    assert_int_equal(qb_command_cache_begin(c, &k, &m, NOW), QB_OK);
    assert_int_equal(qb_command_journal_begin(j, &k, &m), QB_OK);
    if (status) {
        json_t *r = json_pack("{s:s, s:s}", "command_id", id, "status", status);

        assert_int_equal(qb_command_cache_finish(c, &k, r), QB_OK);
        assert_int_equal(qb_command_journal_finish(j, &k, r), QB_OK);
        json_decref(r);
    }
}

static const char *status_of(struct qb_command_cache *c, const char *id, const char **cls)
{
    struct qb_command_key k = K(id);
    json_t *r = NULL;

    if (qb_command_cache_lookup(c, &k, "ab12", &r) != QB_OK)
        return NULL;
    if (cls)
        *cls = json_string_value(json_object_get(json_object_get(r, "error"), "class"));
    return json_string_value(json_object_get(r, "status"));
}

static size_t count_lines(const char *path)
{
    FILE *fp = fopen(path, "r");
    size_t n = 0;
    int ch;

    assert_non_null(fp);
    while ((ch = fgetc(fp)) != EOF)
        n += ch == '\n';
    fclose(fp);
    return n;
}

static void test_restart(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(16);
    struct qb_command_journal *j = open_j(f, c, NOW);
    const char *cls = NULL;
    struct stat st;

    run(c, j, "done-1", NOW, "ok");
    run(c, j, "running-1", NOW, NULL);
    run(c, j, "old-1", NOW - WINDOW + 10 * SEC, "ok");
    run(c, j, "dropped-1", NOW, NULL);
    {
        struct qb_command_key k = K("dropped-1");
        assert_int_equal(qb_command_cache_forget(c, &k), QB_OK);
        assert_int_equal(qb_command_journal_forget(j, &k), QB_OK);
    }
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    /* the next run, 20 s later: old-1's window is over */
    c = qb_command_cache_new(16);
    j = open_j(f, c, NOW + 20 * SEC);
    assert_string_equal(status_of(c, "done-1", NULL), "ok");
    assert_string_equal(status_of(c, "running-1", &cls), "failed");
    assert_string_equal(cls, "interrupted");
    assert_null(status_of(c, "old-1", NULL));
    assert_null(status_of(c, "dropped-1", NULL));
    assert_int_equal(qb_command_cache_count(c), 2);
    assert_int_equal(qb_command_cache_running(c), 0);
    /* compacted: the window record, then two entries, begin + end each */
    assert_int_equal(count_lines(f->path), 5);
    assert_int_equal(lstat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    /* and once more: the interrupted answer itself is kept */
    c = qb_command_cache_new(16);
    j = open_j(f, c, NOW + 30 * SEC);
    assert_string_equal(status_of(c, "running-1", &cls), "failed");
    assert_string_equal(cls, "interrupted");
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_corrupt_lines(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(16);
    struct qb_command_journal *j;
    char text[2048];
    unsigned long long t = (unsigned long long)NOW;

    snprintf(text, sizeof(text),
             "{\"op\":\"begin\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"a\",\"fp\":\"ab12\","
             "\"command\":\"stop\",\"time\":%llu}\n"
             "garbage \x01\xff not json\n"
             "{\"op\":\"end\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"a\","
             "\"result\":{\"status\":\"ok\"}}\n"
             "{\"op\":\"begin\",\"source\":\"orch\",\"vm\":\"vm1\"}\n"
             "{\"op\":\"begin\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"b\",\"time\":\"x\"}\n"
             "{\"op\":\"launch\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"b\"}\n"
             "[1,2]\n"
             "\n"
             "{\"op\":\"begin\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"c\",\"fp\":\"ab12\","
             "\"command\":\"stop\",\"time\":%llu}\n"
             "{\"op\":\"end\",\"source\":\"orch\",\"vm\":\"vm1\",\"id\":\"c\",\"resu",
             t, t);
    {
        /* a 2 MiB line in the middle: skipped without holding it in memory */
        FILE *fp = fopen(f->path, "w");
        const char *mid = strstr(text, "[1,2]\n");

        assert_non_null(fp);
        fwrite(text, 1, (size_t)(mid - text), fp);
        for (int i = 0; i < 2 * 1024 * 1024; i++)
            fputc('x', fp);
        fputc('\n', fp);
        fputs(mid, fp);
        fclose(fp);
    }
    j = open_j(f, c, NOW + SEC);
    assert_string_equal(status_of(c, "a", NULL), "ok");
    assert_null(status_of(c, "b", NULL));
    /* c's end was torn off: it ran, with an unknown outcome */
    assert_string_equal(status_of(c, "c", NULL), "failed");
    assert_int_equal(qb_command_cache_count(c), 2);
    assert_int_equal(count_lines(f->path), 5);
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

/*
 * A record cut off by a failed write (the disk filled, here RLIMIT_FSIZE) must
 * not take the next record with it: appended to the torn line, the next begin
 * was made durable and then lost on restart, and its command could run twice.
 */
static void test_torn_record_then_more(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(16);
    struct qb_command_journal *j = open_j(f, c, NOW);
    struct qb_command_key ka = K("a"), kb = K("b");
    struct qb_command_meta ma = M(NOW), mb = M(NOW);
    json_t *r = json_pack("{s:s, s:s, s:s}", "command_id", "a", "status", "ok", "pad",
                          "a result long enough to be cut by the size limit");
    struct rlimit old, lim;
    struct stat st;
    void (*was)(int) = signal(SIGXFSZ, SIG_IGN);

    assert_int_equal(qb_command_cache_begin(c, &ka, &ma, NOW), QB_OK);
    assert_int_equal(qb_command_journal_begin(j, &ka, &ma), QB_OK);
    assert_int_equal(qb_command_cache_finish(c, &ka, r), QB_OK);
    /* a's end record gets 20 bytes onto the disk, then the disk is full */
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 20;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    assert_int_equal(qb_command_journal_finish(j, &ka, r), QB_EIO);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, was);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_size, lim.rlim_cur); /* the torn line is there */
    /* space again: b is recorded, and must survive the restart */
    assert_int_equal(qb_command_cache_begin(c, &kb, &mb, NOW), QB_OK);
    assert_int_equal(qb_command_journal_begin(j, &kb, &mb), QB_OK);
    qb_command_journal_close(j);
    qb_command_cache_free(c);
    json_decref(r);

    c = qb_command_cache_new(16);
    j = open_j(f, c, NOW + SEC);
    /* b ran, with an outcome unknown to the journal */
    assert_int_equal(qb_command_cache_lookup(c, &kb, "ab12", NULL), QB_OK);
    assert_string_equal(status_of(c, "b", NULL), "failed");
    assert_string_equal(status_of(c, "a", NULL), "failed"); /* its end was torn */
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

static struct qb_command_journal *open_w(struct fixture *f, struct qb_command_cache *c,
                                         uint64_t window, uint64_t now)
{
    struct qb_command_journal *j = NULL;
    char err[256];

    if (qb_command_journal_open(f->dir, c, window, now, &j, err, sizeof(err)) != QB_OK)
        fail_msg("open: %s", err);
    return j;
}

/*
 * Keys forgotten under a small window, then a larger one (a restart with a
 * new max_age, or a reload recorded in the file): commands older than the old
 * window must be refused, as the journal can no longer tell them from ones
 * that ran. A window that shrank or stayed sets no horizon.
 */
static void test_window_grew(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(16);
    struct qb_command_journal *j = open_w(f, c, WINDOW, NOW);

    assert_int_equal(qb_command_journal_horizon(j), 0);
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    /* the same window again: nothing was forgotten that a replay could pass with */
    c = qb_command_cache_new(16);
    j = open_w(f, c, WINDOW, NOW + 100 * SEC);
    assert_int_equal(qb_command_journal_horizon(j), 0);
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    /* a restart with max_age raised: older than the old window is refused */
    c = qb_command_cache_new(16);
    j = open_w(f, c, 3 * WINDOW, NOW + 200 * SEC);
    assert_int_equal(qb_command_journal_horizon(j), NOW + 200 * SEC - WINDOW);
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    /* kept across the next restart (the compacted file records it) */
    c = qb_command_cache_new(16);
    j = open_w(f, c, 3 * WINDOW, NOW + 300 * SEC);
    assert_int_equal(qb_command_journal_horizon(j), NOW + 200 * SEC - WINDOW);
    /* a reload recorded a larger window and horizon: the next start knows */
    assert_int_equal(qb_command_journal_set_window(j, 5 * WINDOW, NOW + 300 * SEC - 3 * WINDOW),
                     QB_OK);
    assert_int_equal(qb_command_journal_horizon(j), NOW + 300 * SEC - 3 * WINDOW);
    qb_command_journal_close(j);
    qb_command_cache_free(c);

    c = qb_command_cache_new(16);
    j = open_w(f, c, 5 * WINDOW, NOW + 400 * SEC);
    assert_int_equal(qb_command_journal_horizon(j), NOW + 300 * SEC - 3 * WINDOW);
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

/* Appending goes on for ever; the file holds about twice the cache at most. */
static void test_bounded(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(4);
    struct qb_command_journal *j = open_j(f, c, NOW);
    char id[32];

    for (int i = 0; i < 300; i++) {
        struct qb_command_key k;

        snprintf(id, sizeof(id), "id-%d", i);
        k = K(id);
        /* windows long over, so each new key evicts the oldest */
        run(c, j, id, NOW - 2 * WINDOW, "ok");
        assert_int_equal(qb_command_cache_lookup(c, &k, NULL, NULL), QB_OK);
        assert_true(count_lines(f->path) <= 2 * (2 * 4 + 64) + 2 * 4);
    }
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

static void test_symlinks_not_followed(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(4);
    struct qb_command_journal *j = NULL;
    char victim[128], tmp[160], err[256];
    struct stat st;
    FILE *fp;
    char buf[64] = "";

    snprintf(victim, sizeof(victim), "%s/victim", f->dir);
    write_file(victim, "precious\n");

    /* in place of the journal: refused, the target untouched */
    assert_int_equal(symlink(victim, f->path), 0);
    assert_int_equal(qb_command_journal_open(f->dir, c, WINDOW, NOW, &j, err, sizeof(err)), QB_EIO);
    assert_null(j);
    assert_non_null(strstr(err, "symbolic link"));
    assert_non_null(strstr(err, f->path));
    assert_int_equal(unlink(f->path), 0);

    /* in place of the compaction's temporary file: removed, never written through */
    snprintf(tmp, sizeof(tmp), "%s.tmp", f->path);
    assert_int_equal(symlink(victim, tmp), 0);
    j = open_j(f, c, NOW);
    run(c, j, "x", NOW, "ok");
    assert_int_equal(lstat(f->path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    qb_command_journal_close(j);

    fp = fopen(victim, "r");
    assert_non_null(fp);
    assert_non_null(fgets(buf, sizeof(buf), fp));
    fclose(fp);
    assert_string_equal(buf, "precious\n");

    /* the state directory itself as a symbolic link: refused */
    {
        char link[128];

        snprintf(link, sizeof(link), "%s/link-dir", f->dir);
        assert_int_equal(symlink(f->dir, link), 0);
        assert_int_equal(qb_command_journal_open(link, c, WINDOW, NOW, &j, err, sizeof(err)),
                         QB_EIO);
    }
    qb_command_cache_free(c);
}

/* A state directory others may write (or another user owns) is refused, naming its mode. */
static void test_directory_private(void **state)
{
    struct fixture *f = *state;
    struct qb_command_cache *c = qb_command_cache_new(4);
    struct qb_command_journal *j = NULL;
    char err[512];

    assert_int_equal(chmod(f->dir, 0777), 0);
    assert_int_equal(qb_command_journal_open(f->dir, c, WINDOW, NOW, &j, err, sizeof(err)),
                     QB_EINVAL);
    assert_null(j);
    assert_non_null(strstr(err, "bridge.state_directory"));
    assert_non_null(strstr(err, "mode 0777"));
    assert_int_equal(chmod(f->dir, 0700), 0);
    if (geteuid() == 0) {
        assert_int_equal(chown(f->dir, 65534, 65534), 0);
        assert_int_equal(qb_command_journal_open(f->dir, c, WINDOW, NOW, &j, err, sizeof(err)),
                         QB_EINVAL);
        assert_non_null(strstr(err, "owned by uid 65534"));
        assert_int_equal(chown(f->dir, 0, 0), 0);
    }
    j = open_j(f, c, NOW);
    qb_command_journal_close(j);
    qb_command_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_record_then_more, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_grew, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_symlinks_not_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_directory_private, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
