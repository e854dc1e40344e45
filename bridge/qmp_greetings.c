/*
 * qmp_greetings.c - one shared tree per distinct QMP greeting (see
 * qmp_greetings.h). A deep copy goes into the table, never the session's own
 * parse: that one may share nodes with the line it came from.
 */
#include "qmp_greetings.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static bool greetings_oom; /* set by uthash when an insert cannot allocate; read right after */
#define uthash_nonfatal_oom(elt) (greetings_oom = true)
#include <uthash.h>

struct qb_qmp_greeting {
    UT_hash_handle hh;
    json_t *tree;
    size_t users;
    char *text; /* the key: compact, keys sorted */
};

static struct qb_qmp_greeting *greetings;

struct qb_qmp_greeting *qb_qmp_greeting_get(const json_t *value)
{
    struct qb_qmp_greeting *g = NULL;
    char *text = json_dumps(value, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    if (!text)
        return NULL;
    size_t len = strlen(text);
    HASH_FIND(hh, greetings, text, len, g);
    if (g) {
        free(text);
        g->users++;
        return g;
    }
    if (!(g = calloc(1, sizeof(*g))) || !(g->tree = json_deep_copy(value))) {
        free(g);
        free(text);
        return NULL;
    }
    g->text = text;
    g->users = 1;
    greetings_oom = false;
    HASH_ADD_KEYPTR(hh, greetings, g->text, len, g);
    if (greetings_oom) {
        json_decref(g->tree);
        free(g->text);
        free(g);
        return NULL;
    }
    return g;
}

const json_t *qb_qmp_greeting_tree(const struct qb_qmp_greeting *g)
{
    return g->tree;
}

void qb_qmp_greeting_put(struct qb_qmp_greeting *g)
{
    if (!g || --g->users > 0)
        return;
    HASH_DEL(greetings, g);
    json_decref(g->tree);
    free(g->text);
    free(g);
}

size_t qb_qmp_greetings_count(void)
{
    return HASH_COUNT(greetings);
}
