/*
 * config_dropins.c - finds the drop-in directory of a configuration file and lists it.
 *
 * The names are sorted with strcmp, not the locale's collation: the merge order must not
 * depend on LANG, which differs between a shell running --check-config and the service.
 */
#include "config_dropins.h"

#include "error.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static bool ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);

    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

int qb_config_dropin_dir(const char *main_path, char **out, char *errbuf, size_t errlen)
{
    const char *slash = strrchr(main_path, '/');
    const char *base = slash ? slash + 1 : main_path;
    int dirlen = (int)(base - main_path);
    size_t stem = strlen(base);

    *out = NULL;
    if (strcmp(base, "qmp-bridge.yaml") == 0)
        return asprintf(out, "%.*sconf.d", dirlen, main_path) < 0 ? (*out = NULL, QB_ENOMEM)
                                                                  : QB_OK;
    if (ends_with(base, stem, ".yaml"))
        stem -= 5;
    else if (ends_with(base, stem, ".yml"))
        stem -= 4;
    if (stem == 4 && strncmp(base, "conf", 4) == 0) {
        snprintf(errbuf, errlen,
                 "%s: a configuration named '%s' would read the drop-ins of qmp-bridge.yaml in "
                 "%.*sconf.d/; rename it",
                 main_path, base, dirlen, main_path);
        return QB_ECONFIG;
    }
    if (asprintf(out, "%.*s%.*s.d", dirlen, main_path, (int)stem, base) < 0) {
        *out = NULL;
        return QB_ENOMEM;
    }
    return QB_OK;
}

static int path_compare(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void qb_config_dropin_list_free(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

int qb_config_dropin_list(const char *dir, char ***paths, size_t *n, char *errbuf, size_t errlen)
{
    char **list = NULL;
    size_t count = 0;
    struct dirent *de;
    struct stat st;
    DIR *d;
    int rc = QB_OK;

    *paths = NULL;
    *n = 0;
    if (!(d = opendir(dir))) {
        if (errno == ENOENT)
            return QB_OK;
        snprintf(errbuf, errlen, "%s: cannot read the drop-in directory: %s", dir, strerror(errno));
        return QB_ECONFIG;
    }
    if (!(list = calloc(QB_CONFIG_MAX_DROPINS, sizeof(*list)))) {
        closedir(d);
        return QB_ENOMEM;
    }
    errno = 0;
    while (rc == QB_OK && (de = readdir(d))) {
        size_t len = strlen(de->d_name);

        if (de->d_name[0] == '.' || !ends_with(de->d_name, len, ".yaml"))
            continue;
        if (count == QB_CONFIG_MAX_DROPINS) {
            snprintf(errbuf, errlen, "%s: more than %d drop-ins", dir, QB_CONFIG_MAX_DROPINS);
            rc = QB_ECONFIG;
        } else if (asprintf(&list[count], "%s/%s", dir, de->d_name) < 0) {
            list[count] = NULL;
            rc = QB_ENOMEM;
        } else if (stat(list[count++], &st) < 0 || !S_ISREG(st.st_mode)) {
            snprintf(errbuf, errlen, "%s: %s", list[count - 1],
                     errno ? strerror(errno) : "not a regular file");
            rc = QB_ECONFIG;
        }
        errno = 0;
    }
    if (rc == QB_OK && errno) {
        snprintf(errbuf, errlen, "%s: cannot read the drop-in directory: %s", dir, strerror(errno));
        rc = QB_ECONFIG;
    }
    closedir(d);
    if (rc != QB_OK || count == 0) {
        qb_config_dropin_list_free(list, count);
        return rc;
    }
    qsort(list, count, sizeof(*list), path_compare);
    *paths = list;
    *n = count;
    return QB_OK;
}
