/*
 * config_map.c - the pure helpers over typed key tables (config_map.h): free what a
 * table owns, compare two structs a table describes. The loader that fills them is
 * config.c.
 */
#include "config_map.h"

#include <stdlib.h>
#include <string.h>

static bool str_eq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static void *member(const void *base, size_t offset)
{
    return (char *)base + offset;
}

const char *qb_config_check_nonempty(const char *text)
{
    return *text ? NULL : "a non-empty string";
}

void qb_config_map_free(const struct qb_config_key *table, void *base)
{
    for (const struct qb_config_key *k = table; k && k->key; k++) {
        if (k->type == QB_CFG_SECTION) {
            qb_config_map_free(k->sub, base);
        } else if (k->type == QB_CFG_STRING) {
            char **s = member(base, k->offset);

            free(*s);
            *s = NULL;
        } else if (k->type == QB_CFG_PAIRS) {
            struct qb_config_kv **kv = member(base, k->offset);
            size_t *n = member(base, k->count_offset);

            for (size_t i = 0; *kv && i < *n; i++) {
                free((*kv)[i].key);
                free((*kv)[i].value);
            }
            free(*kv);
            *kv = NULL;
            *n = 0;
        }
    }
}

bool qb_config_map_equal(const struct qb_config_key *table, const void *a, const void *b)
{
    for (const struct qb_config_key *k = table; k && k->key; k++) {
        switch (k->type) {
        case QB_CFG_SECTION:
            if (!qb_config_map_equal(k->sub, a, b))
                return false;
            break;
        case QB_CFG_STRING:
            if (!str_eq(*(char *const *)member(a, k->offset), *(char *const *)member(b, k->offset)))
                return false;
            break;
        case QB_CFG_PAIRS: {
            const struct qb_config_kv *x = *(struct qb_config_kv *const *)member(a, k->offset);
            const struct qb_config_kv *y = *(struct qb_config_kv *const *)member(b, k->offset);
            size_t n = *(const size_t *)member(a, k->count_offset);

            if (n != *(const size_t *)member(b, k->count_offset))
                return false;
            for (size_t i = 0; i < n; i++)
                if (!str_eq(x[i].key, y[i].key) || !str_eq(x[i].value, y[i].value))
                    return false;
            break;
        }
        case QB_CFG_CUSTOM:
            break;
        default: /* numbers, bools and enums: the member's bytes */
            if (memcmp(member(a, k->offset), member(b, k->offset), k->size) != 0)
                return false;
            break;
        }
    }
    return true;
}
