/*
 * command_journal.c - the idempotency cache on disk (see command_journal.h).
 *
 * JSON lines rather than a binary format: a record is small and rare (one or
 * two per command), a person can read the file, and a torn last line is one
 * line that fails to parse. Only begin is synced: it is the promise that the
 * command is not run a second time; every other record only improves the
 * answer a replay gets.
 */
#include "command_journal.h"

#include "command.h"
#include "error.h"
#include "log.h"
#include "private_files.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A record is a few KB (a result lists its steps); a longer line is not ours. */
#define JOURNAL_MAX_LINE (1024 * 1024)

struct qb_command_journal {
    char *dir;
    char *path;
    char *tmp_path;
    int fd;    /* open for appending */
    bool torn; /* the last append failed part-way: its bytes end in no newline */
    struct qb_command_cache *cache;
    size_t capacity_lines; /* lines appended since the last compaction that trigger the next */
    uint64_t window_usec, horizon_usec;               /* in force: what compaction records */
    uint64_t loaded_window_usec, loaded_horizon_usec; /* the file's last window record (0: none) */
    size_t appended;
};

static int journal_error(char *errbuf, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int journal_error(char *errbuf, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/*
 * Writes all len bytes of buf to fd. Returns QB_OK or QB_EIO (errno set);
 * *wrote says how many bytes reached the file either way.
 */
static int write_all(int fd, const char *buf, size_t len, size_t *wrote)
{
    *wrote = 0;
    while (len > 0) {
        ssize_t n = write(fd, buf, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return QB_EIO;
        buf += n;
        len -= (size_t)n;
        *wrote += (size_t)n;
    }
    return QB_OK;
}

static json_t *key_record(const char *op, const struct qb_command_key *key)
{
    return json_pack("{s:s, s:s, s:s, s:s}", "op", op, "source", key->source, "vm", key->vm, "id",
                     key->id);
}

/*
 * Appends rec (stolen) as one line to fd. Returns QB_OK, QB_ENOMEM or QB_EIO.
 * torn (NULL for a file that is dropped on failure) says whether the last
 * append left bytes without their newline (the disk filled part-way): then
 * the record starts with a newline, so the torn bytes become a line of their
 * own, skipped at load, instead of swallowing this record (a begin made
 * durable and then lost would let its command run twice after a restart).
 */
static int append_record(int fd, bool *torn, json_t *rec)
{
    bool lead = torn && *torn;
    char *text, *line;
    size_t len, wrote;
    int rc;

    if (!rec)
        return QB_ENOMEM;
    text = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(rec);
    if (!text)
        return QB_ENOMEM;
    len = strlen(text);
    text[len] = '\n'; /* json_dumps's NUL: the line ends here */
    line = text;
    if (lead) {
        if (!(line = malloc(len + 2))) {
            free(text);
            return QB_ENOMEM;
        }
        line[0] = '\n';
        memcpy(line + 1, text, len + 1);
        free(text);
        len++;
    }
    rc = write_all(fd, line, len + 1, &wrote);
    free(line);
    if (torn)
        /* torn now: bytes of this record are there without the newline that ends them */
        *torn = rc != QB_OK && (lead ? wrote != 1 : wrote > 0);
    return rc;
}

static json_t *window_record(uint64_t window_usec, uint64_t horizon_usec)
{
    return json_pack("{s:s, s:I, s:I}", "op", "window", "usec", (json_int_t)window_usec, "horizon",
                     (json_int_t)horizon_usec);
}

static json_t *begin_record(const struct qb_command_key *key, const struct qb_command_meta *meta)
{
    json_t *rec = key_record("begin", key);

    if (rec && json_object_set_new(rec, "fp", meta->fp ? json_string(meta->fp) : json_null()) |
                   json_object_set_new(rec, "command",
                                       meta->command ? json_string(meta->command) : json_null()) |
                   json_object_set_new(rec, "time", json_integer((json_int_t)meta->time_usec))) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

json_t *qb_command_journal_interrupted_result(const char *id, const char *command)
{
    return json_pack("{s:s?, s:s?, s:s, s:{s:s, s:s}, s:[]}", "command_id", id, "command", command,
                     "status", "failed", "error", "class", QB_CMD_ERR_INTERRUPTED, "message",
                     "the bridge stopped while this command ran: its outcome is unknown and it "
                     "is not run again (read the VM's state)",
                     "steps");
}

/* ---- loading ------------------------------------------------------------- */

struct load_ctx {
    struct qb_command_journal *j;
    uint64_t window_usec, now_usec;
    size_t expired, corrupt, over_capacity;
};

/* The key of a record, borrowed from rec; false when a member is missing or not a usable string. */
static bool record_key(json_t *rec, struct qb_command_key *key)
{
    const char *names[] = {"source", "vm", "id"};
    const char **dst[] = {&key->source, &key->vm, &key->id};

    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(rec, names[i]);

        if (!json_is_string(v) || json_string_length(v) == 0 ||
            strlen(json_string_value(v)) != json_string_length(v))
            return false;
        *dst[i] = json_string_value(v);
    }
    return true;
}

/* Applies one parsed record to the cache. Returns NULL, or why the record is unusable. */
static const char *load_record(struct load_ctx *c, json_t *rec)
{
    struct qb_command_key key;
    const char *op = json_string_value(json_object_get(rec, "op"));
    int rc;

    if (json_is_object(rec) && op && strcmp(op, "window") == 0) {
        json_t *w = json_object_get(rec, "usec"), *h = json_object_get(rec, "horizon");

        if (!json_is_integer(w) || json_integer_value(w) <= 0 || !json_is_integer(h) ||
            json_integer_value(h) < 0)
            return "window: usec or horizon of the wrong type";
        c->j->loaded_window_usec = (uint64_t)json_integer_value(w);
        c->j->loaded_horizon_usec = (uint64_t)json_integer_value(h);
        return NULL;
    }
    if (!json_is_object(rec) || !op || !record_key(rec, &key))
        return "not a journal record (op, source, vm, id)";
    if (strcmp(op, "begin") == 0) {
        json_t *t = json_object_get(rec, "time");
        json_t *fp = json_object_get(rec, "fp"), *cmd = json_object_get(rec, "command");
        struct qb_command_meta meta;

        if (!json_is_integer(t) || json_integer_value(t) < 0 ||
            (fp && !json_is_null(fp) && !json_is_string(fp)) ||
            (cmd && !json_is_null(cmd) && !json_is_string(cmd)))
            return "begin: time, fp or command of the wrong type";
        meta = (struct qb_command_meta){
            .fp = json_string_value(fp),
            .command = json_string_value(cmd),
            .time_usec = (uint64_t)json_integer_value(t),
        };
        meta.expires_usec = meta.time_usec + c->window_usec;
        if (meta.expires_usec < c->now_usec) {
            c->expired++;
            return NULL;
        }
        rc = qb_command_cache_begin(c->j->cache, &key, &meta, c->now_usec);
        if (rc == QB_EBUSY)
            c->over_capacity++;
        else if (rc == QB_ENOMEM)
            return "out of memory";
        return NULL;
    }
    if (strcmp(op, "end") == 0) {
        json_t *result = json_object_get(rec, "result");

        if (!json_is_object(result))
            return "end: result is not an object";
        qb_command_cache_finish(c->j->cache, &key, result); /* unknown key: its window is over */
        return NULL;
    }
    if (strcmp(op, "forget") == 0) {
        qb_command_cache_forget(c->j->cache, &key);
        return NULL;
    }
    return "unknown op";
}

/* Gives every key still running (the bridge stopped while it ran) its "interrupted" result. */
static void load_finish_running(void *arg, const struct qb_command_key *key,
                                const struct qb_command_meta *meta, const json_t *result)
{
    struct qb_command_cache *cache = arg;
    json_t *r;

    if (result)
        return;
    if (!(r = qb_command_journal_interrupted_result(key->id, meta->command)))
        return; /* stays running: a replay waits for a result that never comes, never runs */
    QB_LOG_WARN(key->vm,
                "command %s from %s was running when the bridge stopped: a replay is "
                "answered \"interrupted\", never run again",
                key->id, key->source);
    /* finish does not change the order the foreach walks */
    qb_command_cache_finish(cache, key, r);
    json_decref(r);
}

/*
 * Reads the next line of f into buf (cap bytes) with its newline. Returns its
 * length, 0 at the end of the file, or cap when the line is longer than buf
 * holds: the rest of it is skipped, so memory stays bounded whatever the file.
 */
static size_t read_line(FILE *f, char *buf, size_t cap)
{
    size_t len;
    int ch;

    if (!fgets(buf, (int)cap, f))
        return 0;
    len = strlen(buf);
    if (len + 1 < cap || buf[len - 1] == '\n')
        return len;
    while ((ch = fgetc(f)) != EOF && ch != '\n')
        ;
    return cap;
}

/* Reads fd (the journal at path) into the cache. Returns QB_OK or QB_ENOMEM. */
static int journal_load(struct qb_command_journal *j, int fd, uint64_t window_usec,
                        uint64_t now_usec)
{
    struct load_ctx c = {.j = j, .window_usec = window_usec, .now_usec = now_usec};
    size_t cap = JOURNAL_MAX_LINE + 2, lineno = 0, n;
    char *line = malloc(cap);
    FILE *f = line ? fdopen(fd, "r") : NULL;

    if (!f) {
        free(line);
        close(fd);
        return QB_ENOMEM;
    }
    while ((n = read_line(f, line, cap)) > 0) {
        json_error_t jerr;
        const char *why = NULL;
        json_t *rec;

        lineno++;
        if (n == cap) {
            why = "line too long";
        } else if (line[n - 1] != '\n') {
            why = "truncated (no end of line)";
        } else if (!(rec = json_loadb(line, n, JSON_REJECT_DUPLICATES, &jerr))) {
            why = "invalid JSON";
        } else {
            why = load_record(&c, rec);
            json_decref(rec);
        }
        if (why) {
            c.corrupt++;
            QB_LOG_WARN(NULL, "%s:%zu: %s: record skipped", j->path, lineno, why);
        }
    }
    free(line);
    fclose(f);
    qb_command_cache_foreach(j->cache, load_finish_running, j->cache);
    if (c.over_capacity)
        QB_LOG_WARN(NULL,
                    "%s: %zu commands still in their replay window did not fit "
                    "commands.cache_size and were dropped",
                    j->path, c.over_capacity);
    QB_LOG_INFO(NULL,
                "%s: %zu command ids loaded, %zu past their replay window dropped, %zu "
                "corrupt records skipped",
                j->path, qb_command_cache_count(j->cache), c.expired, c.corrupt);
    return QB_OK;
}

/* ---- compaction ---------------------------------------------------------- */

struct compact_ctx {
    int fd;
    int rc;
};

static void compact_entry(void *arg, const struct qb_command_key *key,
                          const struct qb_command_meta *meta, const json_t *result)
{
    struct compact_ctx *c = arg;
    json_t *end;

    if (c->rc != QB_OK)
        return;
    c->rc = append_record(c->fd, NULL, begin_record(key, meta));
    if (c->rc != QB_OK || !result)
        return;
    end = key_record("end", key);
    if (end && json_object_set(end, "result", (json_t *)result) != 0) {
        json_decref(end);
        end = NULL;
    }
    c->rc = append_record(c->fd, NULL, end);
}

/* fsyncs dir so a rename in it is durable. */
static void sync_dir(const char *dir)
{
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
}

/*
 * Writes the cache to a new file and renames it over the journal; the new
 * file becomes the one appended to. Returns QB_OK, or QB_EIO / QB_ENOMEM with
 * the old file left as it was (errbuf filled).
 */
static int journal_compact(struct qb_command_journal *j, char *errbuf, size_t errlen)
{
    struct compact_ctx c = {.rc = QB_OK};

    /* a leftover of a crash, or something planted: unlink removes a symlink, not its target */
    if (unlink(j->tmp_path) < 0 && errno != ENOENT)
        return journal_error(errbuf, errlen, QB_EIO, "%s: cannot remove: %s", j->tmp_path,
                             strerror(errno));
    c.fd = open(j->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (c.fd < 0)
        return journal_error(errbuf, errlen, QB_EIO, "%s: cannot create: %s", j->tmp_path,
                             strerror(errno));
    c.rc = append_record(c.fd, NULL, window_record(j->window_usec, j->horizon_usec));
    if (c.rc == QB_OK)
        qb_command_cache_foreach(j->cache, compact_entry, &c);
    if (c.rc == QB_OK && fsync(c.fd) < 0)
        c.rc = QB_EIO;
    if (c.rc == QB_OK && rename(j->tmp_path, j->path) < 0)
        c.rc = QB_EIO;
    if (c.rc != QB_OK) {
        int saved = errno;

        close(c.fd);
        unlink(j->tmp_path);
        return journal_error(errbuf, errlen, c.rc, "%s: cannot write: %s", j->tmp_path,
                             c.rc == QB_ENOMEM ? "out of memory" : strerror(saved));
    }
    sync_dir(j->dir);
    if (j->fd >= 0)
        close(j->fd);
    j->fd = c.fd; /* the renamed file: appends go on after what was just written */
    j->torn = false;
    j->appended = 0;
    return QB_OK;
}

/* Compacts once enough lines were appended; a failure is logged and appending goes on. */
static void journal_maybe_compact(struct qb_command_journal *j)
{
    char err[512];

    if (++j->appended < j->capacity_lines)
        return;
    if (journal_compact(j, err, sizeof(err)) != QB_OK) {
        QB_LOG_WARN(NULL, "command journal not compacted: %s", err);
        j->appended = 0; /* try again after as many lines, not on every one */
    }
}

/* ---- the interface ------------------------------------------------------- */

int qb_command_journal_open(const char *dir, struct qb_command_cache *cache, uint64_t window_usec,
                            uint64_t now_usec, struct qb_command_journal **out, char *errbuf,
                            size_t errlen)
{
    struct qb_command_journal *j = calloc(1, sizeof(*j));
    char msg[512];
    struct stat st;
    int fd, rc;

    *out = NULL;
    if (!j)
        return journal_error(errbuf, errlen, QB_ENOMEM, "%s: out of memory", dir);
    j->fd = -1;
    j->cache = cache;
    j->capacity_lines = 2 * qb_command_cache_capacity(cache) + 64;
    if (!(j->dir = strdup(dir)) || asprintf(&j->path, "%s/%s", dir, QB_COMMAND_JOURNAL_FILE) < 0 ||
        asprintf(&j->tmp_path, "%s/%s.tmp", dir, QB_COMMAND_JOURNAL_FILE) < 0) {
        j->path = j->tmp_path = NULL;
        qb_command_journal_close(j);
        return journal_error(errbuf, errlen, QB_ENOMEM, "%s: out of memory", dir);
    }
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        rc = journal_error(errbuf, errlen, QB_EIO, "bridge.state_directory %s: cannot create: %s",
                           dir, strerror(errno));
        goto fail;
    }
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        rc = journal_error(errbuf, errlen, QB_EIO,
                           "bridge.state_directory %s: not a directory (symbolic links are not "
                           "followed)",
                           dir);
        goto fail;
    }
    /* Another user who can create names here could plant the journal's temporary file. */
    if ((rc = qb_private_dir_check(dir, msg, sizeof(msg))) < 0) {
        rc = journal_error(errbuf, errlen, rc, "bridge.state_directory %s", msg);
        goto fail;
    }
    fd = open(j->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) {
        rc = journal_error(errbuf, errlen, QB_EIO, "%s: cannot open: %s", j->path,
                           errno == ELOOP ? "it is a symbolic link (not followed)"
                                          : strerror(errno));
        goto fail;
    }
    if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
        close(fd);
        rc = journal_error(errbuf, errlen, QB_EIO, "%s: not a regular file", j->path);
        goto fail;
    }
    if (fd >= 0 && (rc = journal_load(j, fd, window_usec, now_usec)) != QB_OK) {
        journal_error(errbuf, errlen, rc, "%s: out of memory while loading", j->path);
        goto fail;
    }
    /* keys forgotten under a smaller window than now: refuse what they could have been */
    j->window_usec = window_usec;
    j->horizon_usec = j->loaded_horizon_usec;
    if (j->loaded_window_usec && window_usec > j->loaded_window_usec &&
        now_usec > j->loaded_window_usec && now_usec - j->loaded_window_usec > j->horizon_usec) {
        j->horizon_usec = now_usec - j->loaded_window_usec;
        QB_LOG_INFO(NULL,
                    "%s: the replay window grew since it was written (%llu s -> %llu s): "
                    "commands timed before the old window are refused",
                    j->path, (unsigned long long)(j->loaded_window_usec / 1000000u),
                    (unsigned long long)(window_usec / 1000000u));
    }
    if ((rc = journal_compact(j, errbuf, errlen)) != QB_OK)
        goto fail;
    *out = j;
    return QB_OK;

fail:
    qb_command_journal_close(j);
    return rc;
}

uint64_t qb_command_journal_horizon(const struct qb_command_journal *j)
{
    return j ? j->horizon_usec : 0;
}

int qb_command_journal_set_window(struct qb_command_journal *j, uint64_t window_usec,
                                  uint64_t horizon_usec)
{
    int rc = append_record(j->fd, &j->torn, window_record(window_usec, horizon_usec));

    if (rc == QB_OK && fdatasync(j->fd) < 0)
        rc = QB_EIO;
    if (rc != QB_OK) {
        QB_LOG_ERR(NULL, "%s: cannot record the new replay window: %s", j->path,
                   rc == QB_ENOMEM ? "out of memory" : strerror(errno));
        return rc;
    }
    j->window_usec = window_usec;
    j->horizon_usec = horizon_usec;
    j->appended++;
    return QB_OK;
}

void qb_command_journal_close(struct qb_command_journal *j)
{
    if (!j)
        return;
    if (j->fd >= 0)
        close(j->fd);
    free(j->dir);
    free(j->path);
    free(j->tmp_path);
    free(j);
}

int qb_command_journal_begin(struct qb_command_journal *j, const struct qb_command_key *key,
                             const struct qb_command_meta *meta)
{
    int rc = append_record(j->fd, &j->torn, begin_record(key, meta));

    if (rc == QB_OK && fdatasync(j->fd) < 0)
        rc = QB_EIO;
    if (rc != QB_OK) {
        QB_LOG_ERR(key->vm, "%s: cannot record command %s: %s", j->path, key->id,
                   rc == QB_ENOMEM ? "out of memory" : strerror(errno));
        return rc;
    }
    journal_maybe_compact(j);
    return QB_OK;
}

int qb_command_journal_finish(struct qb_command_journal *j, const struct qb_command_key *key,
                              const json_t *result)
{
    json_t *rec = key_record("end", key);
    int rc;

    if (rec && json_object_set(rec, "result", (json_t *)result) != 0) {
        json_decref(rec);
        rec = NULL;
    }
    rc = append_record(j->fd, &j->torn, rec);
    if (rc != QB_OK) {
        QB_LOG_WARN(key->vm, "%s: cannot record the result of command %s: %s", j->path, key->id,
                    rc == QB_ENOMEM ? "out of memory" : strerror(errno));
        return rc;
    }
    journal_maybe_compact(j);
    return QB_OK;
}

int qb_command_journal_forget(struct qb_command_journal *j, const struct qb_command_key *key)
{
    int rc = append_record(j->fd, &j->torn, key_record("forget", key));

    if (rc != QB_OK) {
        QB_LOG_WARN(key->vm, "%s: cannot record that command %s did not run: %s", j->path, key->id,
                    rc == QB_ENOMEM ? "out of memory" : strerror(errno));
        return rc;
    }
    journal_maybe_compact(j);
    return QB_OK;
}
