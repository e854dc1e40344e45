/*
 * fuzz_config.c - libFuzzer harness for the YAML configuration loader.
 *
 * Each input is loaded with qb_config_load_string (libyaml events -> tree ->
 * field tables -> checks), from an exact-length copy so a read past the end is
 * an ASan error. Short inputs are also given to qb_config_parse_size and
 * qb_config_parse_duration_ms, whose results must round-trip as plain numbers.
 *
 * The loader reads files the config names (commands.hmac_key_file, ${file:} and
 * ${cred:} references). A fuzzer must not open arbitrary paths (a FIFO or
 * /dev/tty would hang it, /proc is nobody's business), so fopen/open are wrapped
 * at link time (-Wl,--wrap, see CMakeLists.txt). While a config is loading, a
 * plain file name (no '/') opened for reading is looked up in a private
 * temporary directory holding a few key files (good, short, empty, oversized),
 * and so is that directory's own path followed by such a name (what ${cred:NAME}
 * opens: $CREDENTIALS_DIRECTORY is set to the directory); every other open fails
 * with EACCES. ${env:QB_FUZZ_ENV} is set, ${env:} of anything else is not.
 * Outside a load the wrappers pass through, so libFuzzer itself is unaffected
 * (and relative corpus paths keep working: the working directory is not changed).
 */
#include "config.h"
#include "error.h"
#include "transport_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

FILE *__real_fopen(const char *path, const char *mode);
FILE *__real_fopen64(const char *path, const char *mode);
int __real_open(const char *path, int flags, ...);
int __real_open64(const char *path, int flags, ...);
FILE *__wrap_fopen(const char *path, const char *mode);
FILE *__wrap_fopen64(const char *path, const char *mode);
int __wrap_open(const char *path, int flags, ...);
int __wrap_open64(const char *path, int flags, ...);

/* True only while qb_config_load_string runs. */
static bool fz_sandboxed;
/* QB_FUZZ_VERBOSE=1: print each load's outcome (for reading a reproducer's run). */
static bool fz_verbose;
static char fz_dir[1024];

/* Files the sandbox offers, named in the seed corpus and the dictionary. */
static const struct {
    const char *name;
    size_t len;
} fz_files[] = {
    {"commands.key", 33}, /* 32 bytes and a newline: accepted */
    {"short.key", 6},     /* below the 16-byte minimum */
    {"empty.key", 0},
    {"big.key", 5000},    /* above the 4096-byte maximum */
};

/*
 * Where a sandboxed open really goes: buf (of size PATH_MAX) for a plain name
 * read from the sandbox directory, or NULL (errno set) when it is refused.
 * Outside a load, path itself.
 */
static const char *fz_path(const char *path, bool write, char *buf)
{
    if (!fz_sandboxed)
        return path;
    if (path && strncmp(path, fz_dir, strlen(fz_dir)) == 0 && path[strlen(fz_dir)] == '/')
        path += strlen(fz_dir) + 1;
    if (write || path == NULL || strchr(path, '/') != NULL) {
        errno = EACCES;
        return NULL;
    }
    if ((size_t)snprintf(buf, PATH_MAX, "%s/%s", fz_dir, path) >= PATH_MAX) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    return buf;
}

FILE *__wrap_fopen(const char *path, const char *mode)
{
    char buf[PATH_MAX];

    if (!(path = fz_path(path, strpbrk(mode, "wa+") != NULL, buf)))
        return NULL;
    return __real_fopen(path, mode);
}

FILE *__wrap_fopen64(const char *path, const char *mode)
{
    char buf[PATH_MAX];

    if (!(path = fz_path(path, strpbrk(mode, "wa+") != NULL, buf)))
        return NULL;
    return __real_fopen64(path, mode);
}

/* open's third argument exists only with O_CREAT or O_TMPFILE; reading it otherwise is harmless. */
int __wrap_open(const char *path, int flags, ...)
{
    char buf[PATH_MAX];
    va_list ap;
    mode_t mode;

    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, unsigned int);
    va_end(ap);
    if (!(path = fz_path(path, (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0, buf)))
        return -1;
    return __real_open(path, flags, mode);
}

int __wrap_open64(const char *path, int flags, ...)
{
    char buf[PATH_MAX];
    va_list ap;
    mode_t mode;

    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, unsigned int);
    va_end(ap);
    if (!(path = fz_path(path, (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)) != 0, buf)))
        return -1;
    return __real_open64(path, flags, mode);
}

static void fz_cleanup(void)
{
    char buf[PATH_MAX];

    for (size_t i = 0; i < sizeof(fz_files) / sizeof(fz_files[0]); i++) {
        snprintf(buf, sizeof(buf), "%s/%s", fz_dir, fz_files[i].name);
        unlink(buf);
    }
    rmdir(fz_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR");

    (void)argc;
    (void)argv;
    fz_verbose = getenv("QB_FUZZ_VERBOSE") != NULL;
    if (!tmp || !*tmp || strlen(tmp) > sizeof(fz_dir) - 32)
        tmp = "/tmp";
    snprintf(fz_dir, sizeof(fz_dir), "%s/qb-fuzz-config-XXXXXX", tmp);
    if (!mkdtemp(fz_dir)) {
        perror("fuzz_config: temporary directory");
        abort();
    }
    for (size_t i = 0; i < sizeof(fz_files) / sizeof(fz_files[0]); i++) {
        char path[PATH_MAX];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", fz_dir, fz_files[i].name);
        if (!(f = __real_fopen(path, "wbe")))
            abort();
        for (size_t j = 0; j + 1 < fz_files[i].len; j++)
            fputc('a' + (int)(j % 26), f);
        if (fz_files[i].len > 0)
            fputc('\n', f);
        fclose(f);
        chmod(path, 0600); /* a secret others can read is refused before it is read */
    }
    setenv("CREDENTIALS_DIRECTORY", fz_dir, 1);
    setenv("QB_FUZZ_ENV", "from-the-environment", 1);
    atexit(fz_cleanup);
    return 0;
}

/* Touches every string a loaded config owns, so ASan sees a dangling or short one. */
/* Reads every string a backend's config map describes in base (sections, pairs). */
static size_t fz_walk_keys(const struct qb_config_key *table, const void *base)
{
    size_t n = 0;

    for (const struct qb_config_key *k = table; k && k->key; k++) {
        const void *member = (const char *)base + k->offset;

        if (k->type == QB_CFG_SECTION) {
            n += fz_walk_keys(k->sub, base);
        } else if (k->type == QB_CFG_STRING) {
            const char *s = *(char *const *)member;

            n += s ? strlen(s) : 0;
        } else if (k->type == QB_CFG_PAIRS) {
            const struct qb_config_kv *kv = *(struct qb_config_kv *const *)member;
            size_t count = *(const size_t *)((const char *)base + k->count_offset);

            for (size_t j = 0; j < count; j++)
                n += strlen(kv[j].key) + strlen(kv[j].value);
        }
    }
    return n;
}

static size_t fz_walk(const struct qb_config *cfg)
{
    size_t n = 0;

#define FZ_LEN(s) (n += (s) ? strlen(s) : 0)
    FZ_LEN(cfg->path);
    for (size_t i = 0; i < cfg->n_files; i++)
        FZ_LEN(cfg->files[i]);
    FZ_LEN(cfg->bridge_id);
    FZ_LEN(cfg->schema_base_uri);
    FZ_LEN(cfg->discovery_directory);
    FZ_LEN(cfg->discovery_suffix);
    FZ_LEN(cfg->commands_hmac_key_file);
    for (size_t i = 0; i < cfg->n_vms; i++) {
        FZ_LEN(cfg->vms[i].name);
        FZ_LEN(cfg->vms[i].qmp);
    }
    for (size_t i = 0; i < cfg->n_events_exclude; i++)
        FZ_LEN(cfg->events_exclude[i]);
    for (size_t i = 0; i < cfg->n_transports; i++) {
        const struct qb_transport_config *t = &cfg->transports[i];

        FZ_LEN(t->file);
        FZ_LEN(t->type);
        FZ_LEN(t->name);
        if (t->backend)
            n += fz_walk_keys(qb_transport_ops_find(t->type)->config_keys, t->backend);
    }
#undef FZ_LEN
    if (cfg->commands.hmac_key_len > 0 && cfg->commands.hmac_key)
        n += cfg->commands.hmac_key[cfg->commands.hmac_key_len - 1];
    return n;
}

/* Size and duration parsers: an accepted value must come back from its plain form. */
static void fz_values(const uint8_t *data, size_t size)
{
    char text[64], again[32];
    size_t bytes, bytes2;
    uint32_t ms, ms2;

    if (size >= sizeof(text))
        return;
    memcpy(text, data, size);
    text[size] = '\0';
    if (qb_config_parse_size(text, &bytes) == QB_OK) {
        snprintf(again, sizeof(again), "%zu", bytes);
        if (qb_config_parse_size(again, &bytes2) != QB_OK || bytes2 != bytes)
            abort();
    }
    if (qb_config_parse_duration_ms(text, &ms) == QB_OK) {
        snprintf(again, sizeof(again), "%" PRIu32, ms);
        if (qb_config_parse_duration_ms(again, &ms2) != QB_OK || ms2 != ms)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qb_config *cfg = (struct qb_config *)1;
    /* A tiny buffer now and then checks that messages are truncated, not overrun. */
    size_t errlen = (size & 7) == 7 ? 9 : 512;
    char *errbuf = malloc(errlen);
    char *yaml = malloc(size ? size : 1);
    int rc;

    if (!errbuf || !yaml)
        goto out;
    memcpy(yaml, data, size);
    errbuf[0] = '\0';
    fz_sandboxed = true;
    rc = qb_config_load_string("fuzz.yaml", yaml, size, &cfg, errbuf, errlen);
    fz_sandboxed = false;
    if (fz_verbose)
        fprintf(stderr, "fuzz_config: %s%s%s\n", qb_strerror(rc), rc ? ": " : "",
                rc ? errbuf : "");
    if (rc == QB_OK) {
        if (cfg == NULL)
            abort();
        if (fz_walk(cfg) == SIZE_MAX)
            abort();
        qb_config_free(cfg);
    } else {
        if (cfg != NULL || (rc != QB_ECONFIG && rc != QB_ENOMEM && rc != QB_EIO))
            abort();
        /* Every failure tells the user something, NUL-terminated inside the buffer. */
        if (errbuf[0] == '\0' || memchr(errbuf, '\0', errlen) == NULL)
            abort();
    }
    fz_values(data, size);

out:
    free(yaml);
    free(errbuf);
    return 0;
}
