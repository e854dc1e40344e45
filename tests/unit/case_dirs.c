/*
 * case_dirs.c - walks the case folders of a data-driven unit test (case_dirs.h).
 */
#include "case_dirs.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int case_dirs_by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int qb_test_foreach_case_dir(const char *root, void (*fn)(const char *dir, void *arg), void *arg)
{
    struct dirent **names;
    int n = scandir(root, &names, NULL, case_dirs_by_name);
    int ran = 0;

    if (n <= 0)
        fail_msg("no case folders under %s", root);
    for (int i = 0; i < n; i++) {
        char dir[1024];

        if (names[i]->d_name[0] != '.') {
            snprintf(dir, sizeof(dir), "%s/%s", root, names[i]->d_name);
            fn(dir, arg);
            ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

static void case_dirs_run_one(const char *dir, void *arg)
{
    void (*run)(const char *dir) = *(void (**)(const char *))arg;
    const char *name = strrchr(dir, '/');

    print_message("case %s\n", name ? name + 1 : dir);
    run(dir);
}

int qb_test_run_case_dirs(const char *root, void (*run)(const char *dir))
{
    return qb_test_foreach_case_dir(root, case_dirs_run_one, &run);
}
