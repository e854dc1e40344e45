/*
 * config_ref.c - expands ${env:}, ${file:} and ${cred:} references in configuration values.
 *
 * The output is built in one buffer that grows as needed. The only input that can make it
 * large is what references add (environment values and file contents), and that is charged
 * to a budget shared by the whole configuration; the literal text around references is
 * already bounded by the configuration's own size cap.
 */
#include "config_ref.h"

#include "buffer.h"
#include "error.h"
#include "private_files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A reference's text between "${" and "}" is quoted back in messages up to this length. */
#define QB_REF_QUOTE_MAX 200

static bool name_ok(const char *name, size_t len, const char *first, const char *rest)
{
    if (len == 0 || len > 255 || !strchr(first, name[0]))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!strchr(rest, name[i]))
            return false;
    return true;
}

#define QB_REF_ALPHA "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#define QB_REF_ALNUM QB_REF_ALPHA "0123456789"

/* ${env:NAME}: the variable's value, charged to the budget. */
static int ref_env(const char *ref, const char *name, size_t len, struct qb_buffer *o,
                   size_t *budget, char *why, size_t wl)
{
    char var[256];
    const char *value;
    size_t n;

    if (!name_ok(name, len, QB_REF_ALPHA "_", QB_REF_ALNUM "_")) {
        snprintf(why, wl, "%s: expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                 ref);
        return QB_ECONFIG;
    }
    memcpy(var, name, len);
    var[len] = '\0';
    if (!(value = getenv(var))) {
        snprintf(why, wl, "%s: environment variable %s is not set", ref, var);
        return QB_ECONFIG;
    }
    n = strlen(value);
    if (n > *budget) {
        snprintf(why, wl, "%s: the value is longer than the %zu bytes references may still add",
                 ref, *budget);
        return QB_ECONFIG;
    }
    *budget -= n;
    return qb_buffer_append(o, value, n);
}

/*
 * Reads the secret file path for the reference ref: at most *budget bytes, no NUL, one
 * trailing newline dropped.
 */
static int ref_read_file(const char *ref, const char *path, struct qb_buffer *o, size_t *budget,
                         char *why, size_t wl)
{
    char msg[512];
    char *buf = NULL;
    size_t len = 0, max = *budget;
    struct stat st;
    int fd, rc = QB_OK;

    /* A FIFO would block the open below for ever; the check after the open is the real one. */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        snprintf(why, wl, "%s: '%s' is not a regular file", ref, path);
        return QB_ECONFIG;
    }
    fd = qb_secret_open(ref, path, msg, sizeof(msg));
    if (fd < 0) {
        snprintf(why, wl, "%s: %s", ref, msg);
        return QB_ECONFIG;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, wl, "%s: '%s' is not a regular file", ref, path);
        close(fd);
        return QB_ECONFIG;
    }
    if (!(buf = malloc(max + 1))) {
        close(fd);
        return QB_ENOMEM;
    }
    /* One byte past the budget tells "too big" without trusting st_size. */
    while (len < max + 1) {
        ssize_t n = read(fd, buf + len, max + 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, wl, "%s: cannot read '%s': %s", ref, path, strerror(errno));
            rc = QB_ECONFIG;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    if (rc == QB_OK && len > max) {
        snprintf(why, wl, "%s: '%s' is larger than the %zu bytes references may still add", ref,
                 path, max);
        rc = QB_ECONFIG;
    }
    if (rc == QB_OK && memchr(buf, '\0', len)) {
        snprintf(why, wl, "%s: '%s' contains a NUL byte", ref, path);
        rc = QB_ECONFIG;
    }
    if (rc == QB_OK) {
        if (len > 0 && buf[len - 1] == '\n')
            len--;
        *budget -= len;
        rc = qb_buffer_append(o, buf, len);
    }
    explicit_bzero(buf, max + 1);
    free(buf);
    return rc;
}

/* ${file:/absolute/path} */
static int ref_file(const char *ref, const char *arg, size_t len, struct qb_buffer *o,
                    size_t *budget, char *why, size_t wl)
{
    char *path;
    int rc;

    if (len == 0 || arg[0] != '/') {
        snprintf(why, wl, "%s: expected an absolute path", ref);
        return QB_ECONFIG;
    }
    if (!(path = strndup(arg, len)))
        return QB_ENOMEM;
    rc = ref_read_file(ref, path, o, budget, why, wl);
    free(path);
    return rc;
}

/* ${cred:NAME}: $CREDENTIALS_DIRECTORY/NAME, as systemd's LoadCredential= provides it. */
static int ref_cred(const char *ref, const char *name, size_t len, struct qb_buffer *o,
                    size_t *budget, char *why, size_t wl)
{
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    char *path;
    int rc;

    if (!name_ok(name, len, QB_REF_ALNUM "_.-", QB_REF_ALNUM "_.-") ||
        (len <= 2 && strncmp(name, "..", len) == 0)) {
        snprintf(why, wl, "%s: expected a credential name ([A-Za-z0-9_.-], not . or ..)", ref);
        return QB_ECONFIG;
    }
    if (!dir || dir[0] != '/') {
        snprintf(why, wl,
                 "%s: $CREDENTIALS_DIRECTORY is not set (the bridge is not running under a "
                 "systemd unit with LoadCredential=%.*s:/path/to/the/secret)",
                 ref, (int)len, name);
        return QB_ECONFIG;
    }
    if (asprintf(&path, "%s/%.*s", dir, (int)len, name) < 0)
        return QB_ENOMEM;
    rc = ref_read_file(ref, path, o, budget, why, wl);
    free(path);
    return rc;
}

typedef int (*ref_fn)(const char *ref, const char *arg, size_t len, struct qb_buffer *o,
                      size_t *budget, char *why, size_t wl);

static const struct {
    const char *kind; /* with its colon */
    ref_fn fn;
} ref_kinds[] = {
    {"env:", ref_env},
    {"file:", ref_file},
    {"cred:", ref_cred},
};

/* Expands the reference starting at p ("${..."); *used is how much of the input it took. */
static int ref_one(const char *p, size_t *used, struct qb_buffer *o, size_t *budget, char *why,
                   size_t wl)
{
    const char *body = p + 2, *end = strchr(body, '}');
    char ref[QB_REF_QUOTE_MAX + 8];

    if (!end) {
        snprintf(why, wl,
                 "'%.*s': unterminated reference (no closing '}'; write $${ for a "
                 "literal ${)",
                 QB_REF_QUOTE_MAX, p);
        return QB_ECONFIG;
    }
    *used = (size_t)(end - p) + 1;
    snprintf(
        ref, sizeof(ref), "${%.*s}",
        (int)((size_t)(end - body) < QB_REF_QUOTE_MAX ? (size_t)(end - body) : QB_REF_QUOTE_MAX),
        body);
    for (size_t i = 0; i < sizeof(ref_kinds) / sizeof(ref_kinds[0]); i++) {
        size_t k = strlen(ref_kinds[i].kind);

        if (strncmp(body, ref_kinds[i].kind, k) == 0)
            return ref_kinds[i].fn(ref, body + k, (size_t)(end - body) - k, o, budget, why, wl);
    }
    snprintf(why, wl,
             "%s: unknown reference (expected ${env:NAME}, ${file:/path} or ${cred:NAME}; "
             "write $${ for a literal ${)",
             ref);
    return QB_ECONFIG;
}

bool qb_config_ref_present(const char *text)
{
    return strstr(text, "${") != NULL;
}

int qb_config_ref_expand(const char *text, char **out, size_t *budget, char *why, size_t wl)
{
    struct qb_buffer o;
    const char *p = text;
    int rc = QB_OK;

    *out = NULL;
    /* the expansion may hold a password or key read from a file: wiped wherever it goes */
    qb_buffer_init(&o, QB_BUFFER_WIPE);
    while (rc == QB_OK && *p) {
        const char *dollar = strchr(p, '$');
        size_t used = 0;

        if (!dollar) {
            rc = qb_buffer_append(&o, p, strlen(p));
            break;
        }
        if ((rc = qb_buffer_append(&o, p, (size_t)(dollar - p))) != QB_OK)
            break;
        if (strncmp(dollar, "$${", 3) == 0) {
            rc = qb_buffer_append(&o, "${", 2);
            p = dollar + 3;
        } else if (dollar[1] == '{') {
            rc = ref_one(dollar, &used, &o, budget, why, wl);
            p = dollar + used;
        } else {
            rc = qb_buffer_append(&o, "$", 1);
            p = dollar + 1;
        }
    }
    if (rc != QB_OK) {
        qb_buffer_free(&o);
        return rc;
    }
    *out = qb_buffer_take(&o, NULL);
    return *out ? QB_OK : QB_ENOMEM;
}
