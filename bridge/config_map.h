/*
 * config_map.h - typed key tables: what one section of the configuration accepts.
 *
 * A table lists the keys of one struct side by side: name, value type, where the value
 * lives (offset in the struct the table describes), its default as YAML text (parsed by
 * the same converter as a value from the file, so a default can never disagree with the
 * documented syntax), bounds or a check, and one line saying what the key is for. The
 * loader (config.c) walks the YAML against these tables; every backend in transports/
 * declares its own table next to its ops (transport_ops.h), so the loader and the reload
 * comparison never name a backend's keys. Adding a key is one table line.
 *
 * The pure helpers below work on a filled struct: free what a table owns, compare two.
 */
#ifndef QB_CONFIG_MAP_H
#define QB_CONFIG_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum qb_config_type {
    QB_CFG_STRING,   /* char *, a copy owned by the struct */
    QB_CFG_UINT,     /* unsigned integer into an int/uint32_t/size_t member, range min..max */
    QB_CFG_SIZE,     /* byte count with units into size_t */
    QB_CFG_DURATION, /* milliseconds with units into uint32_t */
    QB_CFG_SECONDS,  /* duration syntax, whole seconds only, stored as seconds in uint32_t */
    QB_CFG_BOOL,     /* bool */
    QB_CFG_ENUM,     /* name -> int value from a qb_config_enum table, into an int-sized member */
    QB_CFG_SECTION,  /* nested mapping whose keys live in the same struct */
    QB_CFG_PAIRS,    /* mapping of name -> scalar kept in order as strings (struct qb_config_kv
                        array at offset, its count as size_t at count_offset) */
    QB_CFG_CUSTOM,   /* lists and the like: a loader function does the work (config.c only) */
    QB_CFG_TYPE_COUNT
};

/* One accepted name of a QB_CFG_ENUM key; tables end with a NULL name. */
struct qb_config_enum {
    const char *name;
    int value;
};

/* One key/value pair of a pass-through map (QB_CFG_PAIRS, e.g. kafka properties:). */
struct qb_config_kv {
    char *key;
    char *value;
    int line, column;
};

/* The loader's walk and YAML node, for QB_CFG_CUSTOM functions inside config.c. */
struct qb_config_walk;
struct qb_config_node;

struct qb_config_key {
    const char *key;
    enum qb_config_type type;
    size_t offset;     /* of the member in the struct the table describes */
    size_t size;       /* of that member, so UINT/ENUM/BOOL know how wide to store */
    const char *def;   /* default as YAML text, or NULL (member stays zero/NULL) */
    const char *desc;  /* what the key is for, one line */
    bool required;     /* a missing key or null value is an error */
    bool append;       /* CUSTOM lists a drop-in adds to rather than replaces (vms, transports) */
    unsigned caps;     /* common transport keys: only backends with all these capability bits
                          (QB_TRANSPORT_CAP_*) accept the key; 0 = every backend */
    uint64_t min, max; /* UINT/SIZE/DURATION bounds; max 0 = the member's limit */
    const struct qb_config_enum *enums; /* ENUM, terminated by a NULL name */
    const struct qb_config_key *sub;    /* SECTION, terminated by a NULL key */
    int (*custom)(struct qb_config_walk *w, const struct qb_config_node *node, void *base);
    const char *(*check)(const char *text); /* STRING: NULL if fine, else what was expected */
    /* STRING: the value names a secret file, refused when other users may read it; the
       text names it in messages ("mqtt password_file"). PAIRS: the same for the value of
       the item named secret_item. */
    const char *secret;
    const char *secret_item;
    /* STRING: when absent after the walk, the value is this prefix followed by bridge.id */
    const char *id_prefix;
    size_t count_offset; /* PAIRS: where the item count (size_t) lives */
};

#define QB_CONFIG_KEY(S, k, t, m, ...)                                                             \
    {                                                                                              \
        .key = (k), .type = (t), .offset = offsetof(S, m), .size = sizeof(((S *)0)->m),            \
        __VA_ARGS__                                                                                \
    }
#define QB_CONFIG_SECTION(k, table, ...)                                                           \
    {                                                                                              \
        .key = (k), .type = QB_CFG_SECTION, .sub = (table), __VA_ARGS__                            \
    }
#define QB_CONFIG_PAIRS(S, k, m, n, ...)                                                           \
    {                                                                                              \
        .key = (k), .type = QB_CFG_PAIRS, .offset = offsetof(S, m),                                \
        .count_offset = offsetof(S, n), __VA_ARGS__                                                \
    }

/*
 * A cross-key problem a backend's config_finish reports: the key it is about (a path
 * below the transport such as "tls.key_file"), the key whose value the message points
 * at (looked up in the transport's mapping; NULL or absent: the mapping itself), and
 * the message. The loader turns it into "file:line:col: transports[i].key: msg".
 */
struct qb_config_problem {
    const char *key;
    const char *at;
    char msg[256];
};

/* A check (qb_config_key.check) for strings that must not be empty. */
const char *qb_config_check_nonempty(const char *text);

/*
 * Frees what table describes in base (strings, pairs; recursing into sections) and
 * sets those members back to NULL/0. CUSTOM members are the caller's business.
 */
void qb_config_map_free(const struct qb_config_key *table, void *base);

/*
 * True when every key of table has the same value in a and b (strings by content,
 * pairs in order; recursing into sections). CUSTOM members are not compared.
 */
bool qb_config_map_equal(const struct qb_config_key *table, const void *a, const void *b);

#endif
