/*
 * config.c - YAML file -> struct qb_config, through field tables.
 *
 * Two passes. First libyaml's event parser builds a small tree of our own
 * (scalar / list / mapping nodes, each with its 1-based line:column). Building
 * our own tree instead of using yaml_parser_load lets us refuse anchors and
 * aliases outright (its document shares an aliased node, and walking it visits
 * that node once per alias: the "billion laughs" blow-up) and cap the nesting
 * depth so freeing and walking can recurse safely. Then the tree is walked
 * against key tables (config_map.h): each entry names a key, its value type,
 * where it lives in the struct (offsetof), its default as text (parsed by the
 * same code as the file's value, so a default can never disagree with the
 * documented syntax). This file holds the tables of the common sections and of
 * the keys every transport has; a transport's own keys come from its backend's
 * table, found through the transport registry by its type (transport_ops.h),
 * so no backend is named here. Adding a key is one table line.
 *
 * Every error is written as "<file>:<line>:<column>: <key path>: <what>" into
 * the caller's errbuf; the walk keeps the key path ("transports[1].qos") in a
 * buffer as it descends. The loader does not log: the caller decides where
 * the message goes (main prints it and exits).
 */
#include "config.h"

#include "config_map.h"

#include "address.h"
#include "config_dropins.h"
#include "config_ref.h"
#include "error.h"
#include "http_server.h"
#include "private_files.h"
#include "transport_ops.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

/* Configs are a few KiB; anything bigger is a mistake or an attack. */
#define QB_CONFIG_MAX_BYTES (1024 * 1024)
/* Our deepest legal path is transports[i].tls.x (depth 4); leave room, but bound recursion. */
#define QB_CONFIG_MAX_DEPTH 16
/* How much of an offending value is quoted back in a message. */
#define QB_CONFIG_QUOTE_MAX 64
/* What describe_node writes at most: a quoted value with "the value of " before it. */
#define QB_CONFIG_DESCRIBE_MAX (QB_CONFIG_QUOTE_MAX + 24)

/* ------------------------------------------------------------------------ */
/* The tree                                                                  */

enum ynode_kind { YN_SCALAR, YN_SEQ, YN_MAP };

/*
 * One YAML node. A mapping keeps keys and values interleaved in items
 * (key0, value0, key1, value1, ...) so document order survives.
 */
struct qb_config_node {
    enum ynode_kind kind;
    int line, column; /* 1-based */
    const char *file; /* the file it was read from (borrowed from the load) */
    bool plain;       /* unquoted scalar: only these can mean null */
    char *text;       /* scalar text, NUL-terminated (embedded NULs are refused) */
    char *raw;        /* the text as written when it held references; text is then their
                         expansion, which may be a secret and is never quoted back */
    size_t len;
    struct qb_config_node **items;
    size_t n, cap;
};

static void ynode_free(struct qb_config_node *node)
{
    if (!node)
        return;
    for (size_t i = 0; i < node->n; i++)
        ynode_free(node->items[i]);
    free(node->items);
    if (node->raw && node->text)
        explicit_bzero(node->text, node->len);
    free(node->text);
    free(node->raw);
    free(node);
}

/* "~", "null" and an empty unquoted value are YAML's null; quoted, they are strings. */
static bool ynode_is_null(const struct qb_config_node *node)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};

    if (!node || node->kind != YN_SCALAR || !node->plain)
        return false;
    for (size_t i = 0; i < sizeof(nulls) / sizeof(nulls[0]); i++)
        if (strcmp(node->text, nulls[i]) == 0)
            return true;
    return false;
}

/* Returns the value node of key in map (borrowed), or NULL. */
static const struct qb_config_node *ynode_map_get(const struct qb_config_node *map, const char *key)
{
    if (!map || map->kind != YN_MAP)
        return NULL;
    for (size_t i = 0; i + 1 < map->n; i += 2)
        if (map->items[i]->kind == YN_SCALAR && strcmp(map->items[i]->text, key) == 0)
            return map->items[i + 1];
    return NULL;
}

/* Appends node to parent's items, taking it; on QB_ENOMEM the caller still owns node. */
static int ynode_push(struct qb_config_node *parent, struct qb_config_node *node)
{
    if (parent->n == parent->cap) {
        size_t cap = parent->cap ? parent->cap * 2 : 8;
        struct qb_config_node **items = realloc(parent->items, cap * sizeof(*items));

        if (!items)
            return QB_ENOMEM;
        parent->items = items;
        parent->cap = cap;
    }
    parent->items[parent->n++] = node;
    return QB_OK;
}

/* ------------------------------------------------------------------------ */
/* Context and error messages                                                */

struct qb_config_walk {
    const char *name; /* file being read, for messages before there is a node to name */
    char *errbuf;
    size_t errlen;
    char path[256]; /* key path of the node being looked at; "" at the root */
    size_t path_len;
    const char *transport_type; /* while walking a transport, for "unknown key" hints */
    unsigned caps;              /* the transport's backend capabilities; CAPS_ALL elsewhere */
    size_t ref_budget;          /* bytes references may still add (config_ref.h) */
};

static int cfg_error_in(struct qb_config_walk *c, const char *file, int line, int column,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/*
 * Formats "file:line:column: path: message" into errbuf, truncating safely. file NULL means
 * the file being read. Always returns QB_ECONFIG.
 */
static int cfg_error_in(struct qb_config_walk *c, const char *file, int line, int column,
                        const char *fmt, ...)
{
    va_list ap;
    int n;

    if (!c->errbuf || c->errlen == 0)
        return QB_ECONFIG;
    n = snprintf(c->errbuf, c->errlen, "%s:%d:%d: %s: ", file ? file : c->name, line, column,
                 c->path_len ? c->path : "(root)");
    if (n < 0 || (size_t)n >= c->errlen)
        return QB_ECONFIG;
    va_start(ap, fmt);
    vsnprintf(c->errbuf + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return QB_ECONFIG;
}

/* At a position of the file being read; at a node, in the file the node came from. */
#define cfg_error_at(c, line, column, ...) cfg_error_in((c), NULL, (line), (column), __VA_ARGS__)
#define cfg_error(c, node, ...)                                                                    \
    cfg_error_in((c), (node)->file, (node)->line, (node)->column, __VA_ARGS__)

static int cfg_oom(struct qb_config_walk *c)
{
    if (c->errbuf && c->errlen)
        snprintf(c->errbuf, c->errlen, "%s: out of memory", c->name);
    return QB_ENOMEM;
}

/* Appends ".key" (or "key" at the root) to the path; returns the length to restore. */
static size_t path_push_key(struct qb_config_walk *c, const char *key)
{
    size_t mark = c->path_len;

    snprintf(c->path + mark, sizeof(c->path) - mark, "%s%.*s", mark ? "." : "", QB_CONFIG_QUOTE_MAX,
             key);
    c->path_len = strlen(c->path);
    return mark;
}

static size_t path_push_index(struct qb_config_walk *c, size_t index)
{
    size_t mark = c->path_len;

    snprintf(c->path + mark, sizeof(c->path) - mark, "[%zu]", index);
    c->path_len = strlen(c->path);
    return mark;
}

static void path_pop(struct qb_config_walk *c, size_t mark)
{
    c->path[mark] = '\0';
    c->path_len = mark;
}

/*
 * Copies at most QB_CONFIG_QUOTE_MAX bytes of text into buf (size >= QB_CONFIG_QUOTE_MAX + 4)
 * with control characters replaced, so an error message stays one printable line.
 */
static const char *quote_value(char *buf, const char *text)
{
    size_t i;

    for (i = 0; text[i] && i < QB_CONFIG_QUOTE_MAX; i++)
        buf[i] = ((unsigned char)text[i] < 0x20 || text[i] == 0x7f) ? '?' : text[i];
    buf[i] = '\0';
    if (text[i])
        strcpy(buf + i, "...");
    return buf;
}

/* Describes what a node is, for "expected X, got Y". buf as for quote_value plus quotes. */
static const char *describe_node(char *buf, size_t len, const struct qb_config_node *node)
{
    char quoted[QB_CONFIG_QUOTE_MAX + 4];

    if (node->kind == YN_MAP)
        return "a mapping";
    if (node->kind == YN_SEQ)
        return "a list";
    if (ynode_is_null(node))
        return "null";
    if (node->raw)
        snprintf(buf, len, "the value of '%s'", quote_value(quoted, node->raw));
    else
        snprintf(buf, len, "'%s'", quote_value(quoted, node->text));
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Pass 1: libyaml events -> tree                                            */

struct tree_builder {
    struct qb_config_node *stack[QB_CONFIG_MAX_DEPTH]; /* open lists and mappings */
    size_t depth;
    struct qb_config_node *root;
    int documents;
    bool done;
};

/*
 * Rebuilds c->path from the open containers, so build-time errors name a key too.
 * An outer container's last item is the open child; the innermost one's next item
 * is the node that failed (for a mapping, the key just read, if any).
 */
static void builder_path(struct qb_config_walk *c, const struct tree_builder *b)
{
    path_pop(c, 0);
    for (size_t i = 0; i < b->depth; i++) {
        const struct qb_config_node *open = b->stack[i];
        size_t child = i + 1 < b->depth ? open->n - 1 : open->n;

        if (open->kind == YN_SEQ) {
            path_push_index(c, child);
        } else if (child % 2 == 1) {
            const char *key = open->items[child - 1]->text;

            path_push_key(c, key ? key : "?");
        }
    }
}

static int builder_error(struct qb_config_walk *c, const struct tree_builder *b,
                         const yaml_mark_t *mark, const char *what)
{
    builder_path(c, b);
    return cfg_error_at(c, (int)mark->line + 1, (int)mark->column + 1, "%s", what);
}

/* Makes a node at the event's position and links it into its parent (or as root). */
static int builder_add(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev,
                       enum ynode_kind kind, struct qb_config_node **out)
{
    struct qb_config_node *node = calloc(1, sizeof(*node));
    struct qb_config_node *parent = b->depth ? b->stack[b->depth - 1] : NULL;

    if (!node)
        return cfg_oom(c);
    node->kind = kind;
    node->file = c->name;
    node->line = (int)ev->start_mark.line + 1;
    node->column = (int)ev->start_mark.column + 1;
    if (!parent) {
        b->root = node;
    } else if (ynode_push(parent, node) != QB_OK) {
        free(node);
        return cfg_oom(c);
    }
    *out = node;
    return QB_OK;
}

/* Anchors are refused as well as aliases: an anchor is only ever there to be aliased. */
static int builder_check_anchor(struct qb_config_walk *c, const struct tree_builder *b,
                                const yaml_event_t *ev, const yaml_char_t *anchor)
{
    if (anchor)
        return builder_error(c, b, &ev->start_mark, "anchors and aliases are not supported");
    return QB_OK;
}

static int on_nothing(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev)
{
    (void)c, (void)b, (void)ev;
    return QB_OK;
}

static int on_stream_end(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev)
{
    (void)c, (void)ev;
    b->done = true;
    return QB_OK;
}

static int on_document_start(struct qb_config_walk *c, struct tree_builder *b,
                             const yaml_event_t *ev)
{
    if (b->documents++ > 0)
        return builder_error(c, b, &ev->start_mark, "only one YAML document is allowed");
    return QB_OK;
}

static int on_alias(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev)
{
    return builder_error(c, b, &ev->start_mark, "anchors and aliases are not supported");
}

static int on_scalar(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev)
{
    const char *value = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    struct qb_config_node *node = NULL; /* set by builder_add on QB_OK; -O3 cannot see that */
    int rc;

    if ((rc = builder_check_anchor(c, b, ev, ev->data.scalar.anchor)) != QB_OK)
        return rc;
    /* A double-quoted "\0" would cut the value short behind our back in every C string API. */
    if (memchr(value, '\0', len))
        return builder_error(c, b, &ev->start_mark, "NUL characters are not allowed");
    if ((rc = builder_add(c, b, ev, YN_SCALAR, &node)) != QB_OK)
        return rc;
    node->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    node->len = len;
    node->text = strndup(value, len);
    return node->text ? QB_OK : cfg_oom(c);
}

static int builder_open(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev,
                        enum ynode_kind kind, const yaml_char_t *anchor)
{
    struct qb_config_node *node = NULL; /* set by builder_add on QB_OK; -O3 cannot see that */
    int rc;

    if ((rc = builder_check_anchor(c, b, ev, anchor)) != QB_OK)
        return rc;
    if (b->depth == QB_CONFIG_MAX_DEPTH)
        return builder_error(c, b, &ev->start_mark, "nesting is too deep");
    if ((rc = builder_add(c, b, ev, kind, &node)) != QB_OK)
        return rc;
    b->stack[b->depth++] = node;
    return QB_OK;
}

static int on_sequence_start(struct qb_config_walk *c, struct tree_builder *b,
                             const yaml_event_t *ev)
{
    return builder_open(c, b, ev, YN_SEQ, ev->data.sequence_start.anchor);
}

static int on_mapping_start(struct qb_config_walk *c, struct tree_builder *b,
                            const yaml_event_t *ev)
{
    return builder_open(c, b, ev, YN_MAP, ev->data.mapping_start.anchor);
}

static int on_close(struct qb_config_walk *c, struct tree_builder *b, const yaml_event_t *ev)
{
    (void)c, (void)ev;
    b->depth--; /* libyaml guarantees balanced start/end events */
    return QB_OK;
}

typedef int (*event_fn)(struct qb_config_walk *, struct tree_builder *, const yaml_event_t *);

static const event_fn event_handlers[] = {
    [YAML_NO_EVENT] = on_nothing,
    [YAML_STREAM_START_EVENT] = on_nothing,
    [YAML_STREAM_END_EVENT] = on_stream_end,
    [YAML_DOCUMENT_START_EVENT] = on_document_start,
    [YAML_DOCUMENT_END_EVENT] = on_nothing,
    [YAML_ALIAS_EVENT] = on_alias,
    [YAML_SCALAR_EVENT] = on_scalar,
    [YAML_SEQUENCE_START_EVENT] = on_sequence_start,
    [YAML_SEQUENCE_END_EVENT] = on_close,
    [YAML_MAPPING_START_EVENT] = on_mapping_start,
    [YAML_MAPPING_END_EVENT] = on_close,
};

/* Reports libyaml's own problem text at its mark (reader errors only carry a byte offset). */
static int builder_syntax_error(struct qb_config_walk *c, const struct tree_builder *b,
                                const yaml_parser_t *p, const char *buf, size_t len)
{
    int line = (int)p->problem_mark.line + 1, column = (int)p->problem_mark.column + 1;
    const char *problem = p->problem ? p->problem : "unknown error";

    if (p->error == YAML_MEMORY_ERROR)
        return cfg_oom(c);
    builder_path(c, b);
    if (p->error == YAML_READER_ERROR) {
        line = 1, column = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (buf[i] == '\n')
                line++, column = 1;
            else
                column++;
        }
        if (p->problem_value != -1)
            return cfg_error_at(c, line, column, "YAML syntax error: %s (#%X)", problem,
                                (unsigned)p->problem_value);
        return cfg_error_at(c, line, column, "YAML syntax error: %s", problem);
    }
    if (p->context)
        return cfg_error_at(c, line, column, "YAML syntax error: %s (%s at %d:%d)", problem,
                            p->context, (int)p->context_mark.line + 1,
                            (int)p->context_mark.column + 1);
    return cfg_error_at(c, line, column, "YAML syntax error: %s", problem);
}

/* Parses buf into a new tree (*out, NULL for an empty stream); free with ynode_free. */
static int tree_build(struct qb_config_walk *c, const char *buf, size_t len,
                      struct qb_config_node **out)
{
    struct tree_builder b = {0};
    yaml_parser_t parser;
    yaml_event_t ev;
    int rc = QB_OK;

    if (!yaml_parser_initialize(&parser))
        return cfg_oom(c);
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    while (!b.done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = builder_syntax_error(c, &b, &parser, buf, len);
            break;
        }
        if ((size_t)ev.type < sizeof(event_handlers) / sizeof(event_handlers[0]))
            rc = event_handlers[ev.type](c, &b, &ev);
        yaml_event_delete(&ev);
        if (rc != QB_OK)
            break;
    }
    yaml_parser_delete(&parser);
    path_pop(c, 0);
    if (rc != QB_OK) {
        ynode_free(b.root);
        return rc;
    }
    *out = b.root;
    return QB_OK;
}

/* ------------------------------------------------------------------------ */
/* Value syntax: numbers with units                                          */

enum num_result { NUM_OK, NUM_BAD, NUM_NEGATIVE, NUM_RANGE };

struct num_unit {
    const char *suffix;
    uint64_t factor;
};

static const struct num_unit size_units[] = {
    {"", 1},
    {"B", 1},
    {"k", 1ULL << 10},
    {"K", 1ULL << 10},
    {"KiB", 1ULL << 10},
    {"M", 1ULL << 20},
    {"MiB", 1ULL << 20},
    {"G", 1ULL << 30},
    {"GiB", 1ULL << 30},
};

static const struct num_unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000},
};

static const struct num_unit plain_units[] = {{"", 1}};

/*
 * Parses decimal digits, optional spaces, then one of units' suffixes, into
 * *out <= max. No sign, no leading space, no fractions: strtoull would
 * accept " -1" and wrap it, which is exactly what we must refuse.
 */
static enum num_result parse_number(const char *text, const struct num_unit *units, size_t n_units,
                                    uint64_t max, uint64_t *out)
{
    uint64_t value = 0;
    bool range = false;
    const char *p = text;

    if (!text)
        return NUM_BAD;
    if (p[0] == '-' && p[1] >= '0' && p[1] <= '9')
        return NUM_NEGATIVE;
    if (!(*p >= '0' && *p <= '9'))
        return NUM_BAD;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned)(*p - '0');

        if (value > (UINT64_MAX - digit) / 10)
            range = true;
        else
            value = value * 10 + digit;
    }
    if (*p == ' ') {
        while (*p == ' ')
            p++;
        if (!*p) /* "5 " */
            return NUM_BAD;
    }
    for (size_t i = 0; i < n_units; i++) {
        if (strcmp(p, units[i].suffix) != 0)
            continue;
        if (range || value > max / units[i].factor)
            return NUM_RANGE;
        *out = value * units[i].factor;
        return NUM_OK;
    }
    return NUM_BAD;
}

int qb_config_parse_size(const char *text, size_t *out)
{
    uint64_t v;

    if (parse_number(text, size_units, sizeof(size_units) / sizeof(size_units[0]), SIZE_MAX, &v) !=
        NUM_OK)
        return QB_EINVAL;
    *out = (size_t)v;
    return QB_OK;
}

int qb_config_parse_duration_ms(const char *text, uint32_t *out)
{
    uint64_t v;

    if (parse_number(text, duration_units, sizeof(duration_units) / sizeof(duration_units[0]),
                     UINT32_MAX, &v) != NUM_OK)
        return QB_EINVAL;
    *out = (uint32_t)v;
    return QB_OK;
}

/* ------------------------------------------------------------------------ */
/* Field tables                                                              */

/* Walking a common section (not a transport): every capability-limited key is accepted. */
#define CAPS_ALL (~0u)

#define FIELD(S, k, t, m, ...) QB_CONFIG_KEY(S, k, t, m, __VA_ARGS__)
#define SECTION(k, table, ...) QB_CONFIG_SECTION(k, table, __VA_ARGS__)
#define CUSTOM(k, fn, ...)                                                                         \
    {                                                                                              \
        .key = (k), .type = QB_CFG_CUSTOM, .custom = (fn), __VA_ARGS__                             \
    }

/* Stores v into an unsigned member of 1, 4 or 8 bytes (bool, int/enum/uint32_t, size_t). */
static void store_uint(void *dst, size_t size, uint64_t v)
{
    if (size == sizeof(uint8_t)) {
        uint8_t x = (uint8_t)v;
        memcpy(dst, &x, sizeof(x));
    } else if (size == sizeof(uint32_t)) {
        uint32_t x = (uint32_t)v;
        memcpy(dst, &x, sizeof(x));
    } else {
        memcpy(dst, &v, sizeof(v));
    }
}

/* The largest value a member of this size holds; int members (port, qos) stop at INT32_MAX. */
static uint64_t field_max(const struct qb_config_key *f)
{
    if (f->max)
        return f->max;
    return f->size == sizeof(uint32_t) ? (f->type == QB_CFG_DURATION ? UINT32_MAX : INT32_MAX)
                                       : (uint64_t)SIZE_MAX;
}

/* ---- string checks: return NULL when text is fine ---- */

static const char *check_name(const char *text)
{
    size_t len = strlen(text);

    if (len < 1 || len > 64 ||
        strspn(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                     "0123456789._-") != len)
        return "1 to 64 characters from [A-Za-z0-9._-]";
    return NULL;
}

/*
 * libvirt.uri: a libvirt connection URI for the QEMU driver. Only the shape is
 * checked here (libvirt parses it when it connects); control characters and
 * spaces would end up in logs and in every libvirt VM's address.
 */
static const char *check_libvirt_uri(const char *text)
{
    size_t len = strlen(text);

    if (len < 8 || len > 1024 || strncmp(text, "qemu", 4) != 0 || !strstr(text, "://"))
        return "a libvirt URI of the QEMU driver such as \"qemu:///system\" (at most 1024 "
               "characters)";
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] <= ' ' || (unsigned char)text[i] >= 0x7f)
            return "a libvirt URI without spaces or control characters";
    return NULL;
}

/* metrics.listen: what the HTTP server accepts (its own parser, so the two never disagree). */
static const char *check_listen(const char *text)
{
    char err[256];

    if (qb_http_listen_validate(text, err, sizeof(err)) == QB_OK)
        return NULL;
    return "\"host:port\" with an IP literal or localhost (IPv6 in brackets), or "
           "\"unix:/absolute/path\"";
}

/* "unix:<path>" or "tcp:<host>:<port>"; the host may be a bracketed IPv6 address. */
static const char *check_qmp_address(const char *text)
{
    struct qb_address a;

    if (qb_address_parse(text, QB_ADDRESS_QMP, &a) != QB_OK)
        return "'unix:<path>' or 'tcp:<host>:<port>' (port 1-65535)";
    return NULL;
}

/* qmp.listen: only a Unix socket, with a path that fits sun_path (108 bytes with its NUL). */
static const char *check_listen_unix(const char *text)
{
    struct qb_address a;

    if (qb_address_parse(text, QB_ADDRESS_UNIX_ABSOLUTE, &a) != QB_OK || strlen(a.path) >= 108)
        return "'unix:/absolute/path' (at most 107 bytes of path)";
    return NULL;
}

/* qmp.listen_name_template: expands with the widest values, so no real name is ever too long. */
static const char *check_name_template(const char *text)
{
    char name[65];

    if (qb_config_listen_name(text, UINT32_MAX, UINT32_MAX, "123456789012345", name,
                              sizeof(name)) != QB_OK)
        return "characters from [A-Za-z0-9._-] and the placeholders {pid}, {uid} and {comm}, "
               "at most 64 characters once expanded";
    return NULL;
}

/* ---- converters: text -> member; on a bad value fill why with what was expected ---- */

static int conv_string(const struct qb_config_key *f, const char *text, void *dst, char *why,
                       size_t wl)
{
    const char *bad = f->check ? f->check(text) : NULL;
    char *copy;

    if (bad) {
        snprintf(why, wl, "%s", bad);
        return QB_EINVAL;
    }
    if (!(copy = strdup(text)))
        return QB_ENOMEM;
    free(*(char **)dst); /* the default, if any */
    *(char **)dst = copy;
    return QB_OK;
}

/* Shared by the three numeric types: what the user gets told for each result. */
static int conv_numeric(const struct qb_config_key *f, const char *text, void *dst, char *why,
                        size_t wl, const struct num_unit *units, size_t n_units, const char *noun)
{
    uint64_t v, max = field_max(f);
    enum num_result r = parse_number(text, units, n_units, max, &v);

    if (r == NUM_OK && v >= f->min) {
        store_uint(dst, f->size, v);
        return QB_OK;
    }
    if (r == NUM_BAD) {
        snprintf(why, wl, "%s", noun);
    } else if (r == NUM_NEGATIVE) {
        snprintf(why, wl, "a non-negative value");
    } else {
        static const char *const whats[QB_CFG_TYPE_COUNT] = {[QB_CFG_UINT] = "an integer",
                                                             [QB_CFG_SIZE] = "a size",
                                                             [QB_CFG_DURATION] = "a duration"};
        static const char *const suffixes[QB_CFG_TYPE_COUNT] = {
            [QB_CFG_UINT] = "", [QB_CFG_SIZE] = " bytes", [QB_CFG_DURATION] = "ms"};
        const char *what = whats[f->type], *unit = suffixes[f->type];

        if (f->max)
            snprintf(why, wl, "%s from %llu%s to %llu%s", what, (unsigned long long)f->min, unit,
                     (unsigned long long)max, unit);
        else if (r == NUM_RANGE)
            snprintf(why, wl, "%s of at most %llu%s", what, (unsigned long long)max, unit);
        else
            snprintf(why, wl, "%s of at least %llu%s", what, (unsigned long long)f->min, unit);
    }
    return QB_EINVAL;
}

static int conv_uint(const struct qb_config_key *f, const char *text, void *dst, char *why,
                     size_t wl)
{
    return conv_numeric(f, text, dst, why, wl, plain_units, 1, "an integer");
}

static int conv_size(const struct qb_config_key *f, const char *text, void *dst, char *why,
                     size_t wl)
{
    return conv_numeric(f, text, dst, why, wl, size_units,
                        sizeof(size_units) / sizeof(size_units[0]),
                        "a size such as 4096, 64KiB or 16MiB");
}

static int conv_duration(const struct qb_config_key *f, const char *text, void *dst, char *why,
                         size_t wl)
{
    return conv_numeric(f, text, dst, why, wl, duration_units,
                        sizeof(duration_units) / sizeof(duration_units[0]),
                        "a duration such as 250ms, 30s, 5m or 2h");
}

/* Duration syntax, stored in whole seconds (MQTT carries its session expiry that way). */
static int conv_seconds(const struct qb_config_key *f, const char *text, void *dst, char *why,
                        size_t wl)
{
    struct qb_config_key ms_key = *f;
    uint32_t ms;
    int rc;

    ms_key.type = QB_CFG_DURATION;
    ms_key.size = sizeof(ms);
    if ((rc = conv_duration(&ms_key, text, &ms, why, wl)) != QB_OK)
        return rc;
    if (ms % 1000 != 0) {
        snprintf(why, wl, "a whole number of seconds");
        return QB_EINVAL;
    }
    store_uint(dst, f->size, ms / 1000);
    return QB_OK;
}

static int conv_bool(const struct qb_config_key *f, const char *text, void *dst, char *why,
                     size_t wl)
{
    static const struct qb_config_enum bools[] = {{"true", 1},  {"yes", 1}, {"on", 1},
                                                  {"false", 0}, {"no", 0},  {"off", 0}};

    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
        if (strcasecmp(text, bools[i].name) == 0) {
            store_uint(dst, f->size, (uint64_t)bools[i].value);
            return QB_OK;
        }
    }
    snprintf(why, wl, "true or false");
    return QB_EINVAL;
}

/* Writes "a, b or c" from an enum table. */
static void enum_describe(const struct qb_config_enum *values, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; values[i].name && used < len; i++) {
        const char *sep = i == 0 ? "" : values[i + 1].name ? ", " : " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, values[i].name);

        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int conv_enum(const struct qb_config_key *f, const char *text, void *dst, char *why,
                     size_t wl)
{
    for (const struct qb_config_enum *e = f->enums; e->name; e++) {
        if (strcasecmp(text, e->name) == 0) {
            int v = e->value;
            memcpy(dst, &v, sizeof(v));
            return QB_OK;
        }
    }
    enum_describe(f->enums, why, wl);
    return QB_EINVAL;
}

typedef int (*conv_fn)(const struct qb_config_key *f, const char *text, void *dst, char *why,
                       size_t wl);

/* Per type: how to convert a scalar, and what to call it when the node is not a scalar. */
static const struct {
    conv_fn conv;
    const char *noun;
} field_types[QB_CFG_TYPE_COUNT] = {
    [QB_CFG_STRING] = {conv_string, "a string"},
    [QB_CFG_UINT] = {conv_uint, "an integer"},
    [QB_CFG_SIZE] = {conv_size, "a size"},
    [QB_CFG_DURATION] = {conv_duration, "a duration"},
    [QB_CFG_SECONDS] = {conv_seconds, "a duration"},
    [QB_CFG_BOOL] = {conv_bool, "true or false"},
    [QB_CFG_ENUM] = {conv_enum, NULL}, /* the list of names says it better */
    [QB_CFG_SECTION] = {NULL, "a mapping"},
    [QB_CFG_PAIRS] = {NULL, "a mapping"},
    [QB_CFG_CUSTOM] = {NULL, NULL},
};

/* Whether a key is accepted where the walk is (common transport keys limited to some backends). */
static bool field_accepts(const struct qb_config_key *f, unsigned caps)
{
    return (f->caps & ~caps) == 0;
}

/* Sets every defaulted field of table in base (recursing into sections) for caps. */
static int apply_defaults(const struct qb_config_key *table, void *base, unsigned caps)
{
    char why[160];
    int rc;

    for (const struct qb_config_key *f = table; f && f->key; f++) {
        if (!field_accepts(f, caps))
            continue;
        if (f->type == QB_CFG_SECTION)
            rc = apply_defaults(f->sub, base, caps);
        else if (f->def)
            rc = field_types[f->type].conv(f, f->def, (char *)base + f->offset, why, sizeof(why));
        else
            rc = QB_OK;
        if (rc != QB_OK)
            return rc; /* QB_EINVAL here is a bad default in a table: the unit test loads them all
                        */
    }
    return QB_OK;
}

/* ------------------------------------------------------------------------ */
/* Pass 2: the walk                                                          */

struct dup_entry {
    const char *text;
    size_t index;
};

static int dup_compare(const void *a, const void *b)
{
    const struct dup_entry *x = a, *y = b;
    int cmp = strcmp(x->text, y->text);

    if (cmp)
        return cmp;
    return x->index < y->index ? -1 : x->index > y->index;
}

/*
 * Finds the earliest (in document order) string that repeats an earlier one.
 * Sets *dup to its index and *first to the earlier one's, or *dup = SIZE_MAX.
 * Sorting keeps hostile inputs with thousands of keys from going quadratic.
 */
static int find_duplicate(const char *const *strs, size_t n, size_t *dup, size_t *first)
{
    struct dup_entry *e;

    *dup = SIZE_MAX;
    if (n < 2)
        return QB_OK;
    if (!(e = malloc(n * sizeof(*e))))
        return QB_ENOMEM;
    for (size_t i = 0; i < n; i++)
        e[i] = (struct dup_entry){strs[i], i};
    qsort(e, n, sizeof(*e), dup_compare);
    /* Equal strings form runs ordered by index: a run's head is the original. */
    for (size_t i = 1, head = 0; i < n; i++) {
        if (strcmp(e[i].text, e[head].text) != 0) {
            head = i;
        } else if (e[i].index < *dup) {
            *dup = e[i].index;
            *first = e[head].index;
        }
    }
    free(e);
    return QB_OK;
}

/* Every key of a mapping must be a scalar and appear once. */
static int check_map_keys(struct qb_config_walk *c, const struct qb_config_node *map)
{
    size_t n = map->n / 2, dup, first;
    const char **keys;
    int rc;

    for (size_t i = 0; i < n; i++)
        if (map->items[2 * i]->kind != YN_SCALAR)
            return cfg_error(c, map->items[2 * i], "mapping keys must be scalars");
    if (n < 2)
        return QB_OK;
    if (!(keys = malloc(n * sizeof(*keys))))
        return cfg_oom(c);
    for (size_t i = 0; i < n; i++)
        keys[i] = map->items[2 * i]->text;
    rc = find_duplicate(keys, n, &dup, &first);
    free(keys);
    if (rc != QB_OK)
        return cfg_oom(c);
    if (dup != SIZE_MAX) {
        const struct qb_config_node *k = map->items[2 * dup], *orig = map->items[2 * first];
        size_t mark = path_push_key(c, k->text);

        rc = cfg_error(c, k, "duplicate key (first at %d:%d)", orig->line, orig->column);
        path_pop(c, mark);
        return rc;
    }
    return QB_OK;
}

/* Accepts a mapping, or null meaning an empty one (e.g. "qmp:" with nothing under it). */
static int expect_map(struct qb_config_walk *c, const struct qb_config_node *node)
{
    char buf[QB_CONFIG_DESCRIBE_MAX];

    if (node->kind == YN_MAP)
        return check_map_keys(c, node);
    if (ynode_is_null(node))
        return QB_OK;
    return cfg_error(c, node, "expected a mapping, got %s", describe_node(buf, sizeof(buf), node));
}

/* Accepts a list, or null meaning an empty one. */
static int expect_list(struct qb_config_walk *c, const struct qb_config_node *node)
{
    char buf[QB_CONFIG_DESCRIBE_MAX];

    if (node->kind == YN_SEQ || ynode_is_null(node))
        return QB_OK;
    return cfg_error(c, node, "expected a list, got %s", describe_node(buf, sizeof(buf), node));
}

/* One table and the struct it fills; a transport's mapping is walked with two. */
struct key_layer {
    const struct qb_config_key *table;
    void *base;
};

static int walk_layers(struct qb_config_walk *c, const struct qb_config_node *map,
                       const struct key_layer *layers, size_t n_layers, bool transport);

static int walk_map(struct qb_config_walk *c, const struct qb_config_node *map,
                    const struct qb_config_key *table, void *base)
{
    const struct key_layer layer = {table, base};

    return walk_layers(c, map, &layer, 1, false);
}

static int parse_pairs(struct qb_config_walk *c, const struct qb_config_key *f,
                       const struct qb_config_node *node, void *base);

/* Applies one YAML value to one field; c->path already names the key. */
static int field_apply(struct qb_config_walk *c, const struct qb_config_key *f,
                       const struct qb_config_node *value, void *base)
{
    char why[160], buf[QB_CONFIG_DESCRIBE_MAX];
    int rc;

    if (f->type == QB_CFG_SECTION)
        return walk_map(c, value, f->sub, base);
    if (f->type == QB_CFG_PAIRS)
        return parse_pairs(c, f, value, base);
    if (f->type == QB_CFG_CUSTOM)
        return f->custom(c, value, base);
    if (ynode_is_null(value)) /* "key:" with no value keeps the default */
        return f->required ? cfg_error(c, value, "missing required value") : QB_OK;
    if (value->kind != YN_SCALAR) {
        if (f->type == QB_CFG_ENUM)
            enum_describe(f->enums, why, sizeof(why));
        else
            snprintf(why, sizeof(why), "%s", field_types[f->type].noun);
        return cfg_error(c, value, "expected %s, got %s", why,
                         describe_node(buf, sizeof(buf), value));
    }
    rc = field_types[f->type].conv(f, value->text, (char *)base + f->offset, why, sizeof(why));
    if (rc == QB_ENOMEM)
        return cfg_oom(c);
    if (rc != QB_OK)
        return cfg_error(c, value, "expected %s, got %s", why,
                         describe_node(buf, sizeof(buf), value));
    return QB_OK;
}

static const struct qb_config_key *field_find(const struct qb_config_key *table, const char *key)
{
    for (const struct qb_config_key *f = table; f && f->key; f++)
        if (strcmp(f->key, key) == 0)
            return f;
    return NULL;
}

/*
 * Whether a transport key the current backend does not accept is one that another
 * backend (or the common table, for other capabilities) does: then the message says
 * it is not valid for this type rather than unknown.
 */
static bool key_known_elsewhere(const char *key)
{
    const struct qb_transport_ops *ops;

    if (field_find(qb_config_transport_keys, key))
        return true;
    for (size_t i = 0; (ops = qb_transport_ops_at(i)); i++)
        if (field_find(ops->config_keys, key))
            return true;
    return false;
}

/*
 * Walks map against the layers' tables in order, filling each layer's base. Keys in
 * no table, or not valid for c->caps, are errors; so are missing required keys
 * (reported at the mapping itself, since there is no key to point at). A null map is
 * empty. transport: the mapping is a transport, where an unknown key that another
 * type accepts is named as such.
 */
static int walk_layers(struct qb_config_walk *c, const struct qb_config_node *map,
                       const struct key_layer *layers, size_t n_layers, bool transport)
{
    uint64_t seen[2] = {0, 0};
    int rc;

    if ((rc = expect_map(c, map)) != QB_OK)
        return rc;
    for (size_t i = 0; map->kind == YN_MAP && i + 1 < map->n; i += 2) {
        const struct qb_config_node *key = map->items[i];
        const struct qb_config_key *f = NULL;
        size_t l = 0, mark = path_push_key(c, key->text);

        for (; l < n_layers && !(f = field_find(layers[l].table, key->text)); l++)
            ;
        if (!f)
            rc = transport && key_known_elsewhere(key->text)
                     ? cfg_error(c, key, "unknown key (not valid for type %s)", c->transport_type)
                     : cfg_error(c, key, "unknown key");
        else if (!field_accepts(f, c->caps))
            rc = cfg_error(c, key, "unknown key (not valid for type %s)", c->transport_type);
        else
            rc = field_apply(c, f, map->items[i + 1], layers[l].base);
        path_pop(c, mark);
        if (rc != QB_OK)
            return rc;
        seen[l] |= 1ULL << (f - layers[l].table);
    }
    for (size_t l = 0; l < n_layers; l++) {
        for (const struct qb_config_key *f = layers[l].table; f && f->key; f++) {
            if (f->required && field_accepts(f, c->caps) &&
                !(seen[l] & (1ULL << (f - layers[l].table)))) {
                size_t mark = path_push_key(c, f->key);

                rc = cfg_error(c, map, "missing required key");
                path_pop(c, mark);
                return rc;
            }
        }
    }
    return QB_OK;
}

/* ---- the tables ---- */

static const struct qb_config_enum log_levels[] = {
    {"error", QB_LOG_ERROR}, {"warn", QB_LOG_WARN},   {"warning", QB_LOG_WARN},
    {"info", QB_LOG_INFO},   {"debug", QB_LOG_DEBUG}, {NULL, 0},
};
static const struct qb_config_enum log_formats[] = {
    {"auto", QB_LOG_FORMAT_AUTO},
    {"text", QB_LOG_FORMAT_TEXT},
    {"json", QB_LOG_FORMAT_JSON},
    {"journal", QB_LOG_FORMAT_JOURNAL},
    {NULL, 0},
};
static const struct qb_config_enum full_policies[] = {
    {"backpressure", QB_ON_FULL_BACKPRESSURE}, {"drop", QB_ON_FULL_DROP}, {NULL, 0}};
static const struct qb_config_enum fsync_policies[] = {{"batch", QB_SPOOL_FSYNC_BATCH},
                                                       {"always", QB_SPOOL_FSYNC_ALWAYS},
                                                       {"off", QB_SPOOL_FSYNC_OFF},
                                                       {NULL, 0}};
static const struct qb_config_enum spool_full_policies[] = {
    {"backpressure", QB_SPOOL_FULL_BACKPRESSURE},
    {"drop_oldest", QB_SPOOL_FULL_DROP_OLDEST},
    {NULL, 0}};
static const struct qb_config_enum listen_names[] = {
    {"query-name", QB_LISTEN_NAME_QUERY}, {"pid", QB_LISTEN_NAME_PID}, {NULL, 0}};

_Static_assert(sizeof(enum qb_log_level) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_log_format) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_queue_full_policy) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_spool_fsync) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_spool_full_policy) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(enum qb_listen_name) == sizeof(int), "QB_CFG_ENUM stores an int");
_Static_assert(sizeof(bool) == 1 && sizeof(int) == 4 && sizeof(size_t) == 8,
               "store_uint handles 1, 4 and 8 byte members");

static int parse_vms(struct qb_config_walk *c, const struct qb_config_node *node, void *base);
static int parse_transports(struct qb_config_walk *c, const struct qb_config_node *node,
                            void *base);
static int parse_exclude(struct qb_config_walk *c, const struct qb_config_node *node, void *base);
static int parse_include_types(struct qb_config_walk *c, const struct qb_config_node *node,
                               void *base);
static int parse_exclude_types(struct qb_config_walk *c, const struct qb_config_node *node,
                               void *base);
static int parse_allow(struct qb_config_walk *c, const struct qb_config_node *node, void *base);
static int parse_libvirt_include(struct qb_config_walk *c, const struct qb_config_node *node,
                                 void *base);
static int parse_libvirt_exclude(struct qb_config_walk *c, const struct qb_config_node *node,
                                 void *base);

#define C struct qb_config
static const struct qb_config_key bridge_fields[] = {
    /* default: the host name (finish_bridge_id) */
    FIELD(C, "id", QB_CFG_STRING, bridge_id, .check = check_name),
    FIELD(C, "log_level", QB_CFG_ENUM, log_level, .def = "info", .enums = log_levels),
    FIELD(C, "log_format", QB_CFG_ENUM, log_format, .def = "auto", .enums = log_formats),
    FIELD(C, "schema_base_uri", QB_CFG_STRING, schema_base_uri,
          .def = "file:///usr/share/qmp-bridge/schema/v1/", .check = qb_config_check_nonempty),
    FIELD(C, "state_directory", QB_CFG_STRING, state_directory, .check = qb_config_check_nonempty),
    {0},
};

static const struct qb_config_key qmp_fields[] = {
    FIELD(C, "max_line_bytes", QB_CFG_SIZE, qmp_max_line_bytes, .def = "16MiB", .min = 1024),
    FIELD(C, "command_timeout", QB_CFG_DURATION, qmp_command_timeout_ms, .def = "10s", .min = 1),
    FIELD(C, "connect_timeout", QB_CFG_DURATION, qmp_connect_timeout_ms, .def = "5s", .min = 1),
    FIELD(C, "reconnect_initial", QB_CFG_DURATION, qmp_reconnect_initial_ms, .def = "250ms",
          .min = 1),
    FIELD(C, "reconnect_max", QB_CFG_DURATION, qmp_reconnect_max_ms, .def = "30s", .min = 1),
    FIELD(C, "max_connecting", QB_CFG_UINT, qmp_max_connecting, .def = "64", .min = 1,
          .max = 100000),
    FIELD(C, "max_held_events", QB_CFG_UINT, qmp_max_held_events, .def = "8192", .min = 16,
          .max = 1000000),
    FIELD(C, "max_held_bytes", QB_CFG_SIZE, qmp_max_held_bytes, .def = "2MiB", .min = 4096),
    FIELD(C, "listen", QB_CFG_STRING, qmp_listen, .check = check_listen_unix),
    FIELD(C, "listen_name", QB_CFG_ENUM, qmp_listen_name, .def = "query-name",
          .enums = listen_names),
    FIELD(C, "listen_name_template", QB_CFG_STRING, qmp_listen_name_template, .def = "vm-{pid}",
          .check = check_name_template),
    FIELD(C, "listen_max_vms", QB_CFG_UINT, qmp_listen_max_vms, .def = "1024", .min = 1,
          .max = 1000000),
    FIELD(C, "listen_forget_after", QB_CFG_DURATION, qmp_listen_forget_after_ms, .def = "1h"),
    {0},
};

static const struct qb_config_key spool_fields[] = {
    FIELD(C, "directory", QB_CFG_STRING, spool_directory, .check = qb_config_check_nonempty),
    FIELD(C, "max_size", QB_CFG_SIZE, spool_max_bytes, .def = "1GiB", .min = 1024 * 1024),
    FIELD(C, "segment_size", QB_CFG_SIZE, spool_segment_bytes, .def = "16MiB", .min = 64 * 1024),
    FIELD(C, "fsync", QB_CFG_ENUM, spool_fsync, .def = "batch", .enums = fsync_policies),
    FIELD(C, "fsync_interval", QB_CFG_DURATION, spool_fsync_interval_ms, .def = "50ms", .min = 1),
    FIELD(C, "on_full", QB_CFG_ENUM, spool_on_full, .def = "backpressure",
          .enums = spool_full_policies),
    FIELD(C, "memory_max_messages", QB_CFG_UINT, spool_memory_max_messages, .def = "10000",
          .min = 1),
    {0},
};

static const struct qb_config_key metrics_fields[] = {
    FIELD(C, "listen", QB_CFG_STRING, metrics_listen, .check = check_listen),
    {0},
};

static const struct qb_config_key discovery_fields[] = {
    FIELD(C, "directory", QB_CFG_STRING, discovery_directory, .check = qb_config_check_nonempty),
    FIELD(C, "suffix", QB_CFG_STRING, discovery_suffix, .def = ""),
    {0},
};

/* libvirt keepalive: whole seconds on the wire (virConnectSetKeepAlive takes an int interval) */
static const struct qb_config_key libvirt_fields[] = {
    FIELD(C, "uri", QB_CFG_STRING, libvirt_uri, .check = check_libvirt_uri),
    CUSTOM("include", parse_libvirt_include),
    CUSTOM("exclude", parse_libvirt_exclude),
    FIELD(C, "keepalive_interval", QB_CFG_DURATION, libvirt_keepalive_interval_ms, .def = "5s",
          .min = 1000, .max = 3600 * 1000),
    FIELD(C, "keepalive_count", QB_CFG_UINT, libvirt_keepalive_count, .def = "3", .min = 1,
          .max = 100),
    FIELD(C, "forget_after", QB_CFG_DURATION, libvirt_forget_after_ms, .def = "1h"),
    {0},
};

static const struct qb_config_key events_fields[] = {
    CUSTOM("exclude", parse_exclude),
    {0},
};

/* commands: allow's default (all) and the key file are handled in finish_commands */
static const struct qb_config_key commands_fields[] = {
    FIELD(C, "enabled", QB_CFG_BOOL, commands.enabled, .def = "false"),
    CUSTOM("allow", parse_allow),
    FIELD(C, "max_size", QB_CFG_SIZE, commands.max_size, .def = "0"),
    FIELD(C, "max_growth", QB_CFG_SIZE, commands.max_growth, .def = "0"),
    FIELD(C, "max_age", QB_CFG_DURATION, commands.max_age_ms, .def = "5m", .min = 1000),
    FIELD(C, "max_skew", QB_CFG_DURATION, commands.max_skew_ms, .def = "60s"),
    /* the smallest real command is about 200 bytes; 16MiB is far past any use */
    FIELD(C, "max_message_bytes", QB_CFG_SIZE, commands.max_message_bytes, .def = "64KiB",
          .min = 256, .max = 16 * 1024 * 1024),
    FIELD(C, "hmac_key_file", QB_CFG_STRING, commands_hmac_key_file,
          .check = qb_config_check_nonempty),
    FIELD(C, "cache_size", QB_CFG_UINT, commands_cache_size, .def = "10000", .min = 1),
    FIELD(C, "queue_per_vm", QB_CFG_UINT, commands_queue_per_vm, .def = "16", .min = 1),
    FIELD(C, "timeout", QB_CFG_DURATION, commands_timeout_ms, .def = "60s", .min = 1),
    {0},
};

static const struct qb_config_key root_fields[] = {
    SECTION("bridge", bridge_fields),
    SECTION("qmp", qmp_fields),
    CUSTOM("vms", parse_vms, .append = true),
    SECTION("discovery", discovery_fields),
    SECTION("libvirt", libvirt_fields),
    SECTION("events", events_fields),
    SECTION("commands", commands_fields),
    SECTION("spool", spool_fields),
    SECTION("metrics", metrics_fields),
    CUSTOM("transports", parse_transports, .append = true),
    {0},
};
#undef C

#define V struct qb_vm_config
static const struct qb_config_key vm_fields[] = {
    FIELD(V, "name", QB_CFG_STRING, name, .required = true, .check = check_name),
    FIELD(V, "qmp", QB_CFG_STRING, qmp, .required = true, .check = check_qmp_address),
    {0},
};
#undef V

/*
 * The keys every transport accepts; each backend's own keys are in its ops' config map
 * (transport_ops.h). commands: only backends that can receive them.
 */
#define T struct qb_transport_config
const struct qb_config_key qb_config_transport_keys[] = {
    FIELD(T, "type", QB_CFG_STRING, type, .required = true,
          .desc = "the backend: a name in the transport registry"),
    FIELD(T, "name", QB_CFG_STRING, name, .check = qb_config_check_nonempty,
          .desc = "label in logs and metrics; default the type, or type#N if repeated"),
    FIELD(T, "queue_max_messages", QB_CFG_UINT, queue_max_messages, .def = "10000", .min = 1,
          .desc = "messages the in-memory queue holds at most"),
    FIELD(T, "queue_max_bytes", QB_CFG_SIZE, queue_max_bytes, .def = "16MiB", .min = 1,
          .desc = "bytes the in-memory queue holds at most"),
    FIELD(T, "shutdown_timeout", QB_CFG_DURATION, shutdown_timeout_ms, .def = "5s",
          .desc = "how long the flush at shutdown may take"),
    FIELD(T, "on_full", QB_CFG_ENUM, on_full, .def = "backpressure", .enums = full_policies,
          .desc = "what a full queue does: stall QMP reads, or drop"),
    CUSTOM("include", parse_include_types,
           .desc = "CloudEvents type patterns this transport publishes; default all"),
    CUSTOM("exclude", parse_exclude_types,
           .desc = "CloudEvents type patterns this transport never publishes"),
    FIELD(T, "commands", QB_CFG_BOOL, commands, .def = "true", .caps = QB_TRANSPORT_CAP_SUBSCRIBE,
          .desc = "receive commands on this transport when commands.enabled"),
    {0},
};
#undef T

/* ---- custom fields ---- */

/*
 * A list of non-empty strings into *out / *n (owned by the config). what names
 * an item in the error ("an event name"); check (may be NULL) says what a bad
 * item should have been; empty: an empty list is an error too (it would mean
 * something else than leaving the key out).
 */
static int parse_string_list(struct qb_config_walk *c, const struct qb_config_node *node,
                             char ***out, size_t *n, const char *what,
                             const char *(*check)(const char *text), bool empty)
{
    char buf[QB_CONFIG_DESCRIBE_MAX];
    int rc;

    if ((rc = expect_list(c, node)) != QB_OK || node->kind != YN_SEQ)
        return rc;
    if (!empty && node->n == 0)
        return cfg_error(c, node, "an empty list: leave the key out instead");
    if (!(*out = calloc(node->n ? node->n : 1, sizeof(char *))))
        return cfg_oom(c);
    for (size_t i = 0; i < node->n; i++) {
        const struct qb_config_node *item = node->items[i];
        const char *bad = NULL;

        if (item->kind != YN_SCALAR || item->len == 0 || ynode_is_null(item) ||
            (check && (bad = check(item->text)))) {
            size_t mark = path_push_index(c, i);

            if (bad)
                rc = cfg_error(c, item, "expected %s, got %s", bad,
                               describe_node(buf, sizeof(buf), item));
            else
                rc = cfg_error(c, item, "expected %s, got %s", what,
                               describe_node(buf, sizeof(buf), item));
            path_pop(c, mark);
            return rc;
        }
        if (!((*out)[i] = strdup(item->text)))
            return cfg_oom(c);
        *n = i + 1;
    }
    return QB_OK;
}

/* events.exclude: QMP event names. */
static int parse_exclude(struct qb_config_walk *c, const struct qb_config_node *node, void *base)
{
    struct qb_config *cfg = base;

    return parse_string_list(c, node, &cfg->events_exclude, &cfg->n_events_exclude, "an event name",
                             NULL, true);
}

/* libvirt.include / exclude: fnmatch globs over domain names. */
static const char *check_domain_glob(const char *text)
{
    size_t len = strlen(text);

    if (len > 128 || strspn(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789._-*?[]!") != len)
        return "a domain-name glob (1 to 128 characters from [A-Za-z0-9._-] and the wildcards "
               "* ? [...])";
    return NULL;
}

static int parse_libvirt_include(struct qb_config_walk *c, const struct qb_config_node *node,
                                 void *base)
{
    struct qb_config *cfg = base;

    return parse_string_list(c, node, &cfg->libvirt_include, &cfg->n_libvirt_include,
                             "a domain-name glob", check_domain_glob, false);
}

static int parse_libvirt_exclude(struct qb_config_walk *c, const struct qb_config_node *node,
                                 void *base)
{
    struct qb_config *cfg = base;

    return parse_string_list(c, node, &cfg->libvirt_exclude, &cfg->n_libvirt_exclude,
                             "a domain-name glob", check_domain_glob, true);
}

/* A transport's include / exclude: CloudEvents type patterns. */
static const char *check_type_pattern(const char *text)
{
    size_t len = strlen(text);

    if (len > 128 || strspn(text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789._-*?[]!") != len)
        return "an event type pattern (1 to 128 characters from [A-Za-z0-9._-] and the "
               "wildcards * ? [...])";
    return NULL;
}

static int parse_include_types(struct qb_config_walk *c, const struct qb_config_node *node,
                               void *base)
{
    struct qb_transport_config *t = base;

    return parse_string_list(c, node, &t->include, &t->n_include, "an event type pattern",
                             check_type_pattern, false);
}

static int parse_exclude_types(struct qb_config_walk *c, const struct qb_config_node *node,
                               void *base)
{
    struct qb_transport_config *t = base;

    return parse_string_list(c, node, &t->exclude, &t->n_exclude, "an event type pattern",
                             check_type_pattern, false);
}

/*
 * QB_CFG_PAIRS (kafka properties:): a mapping of name -> scalar, kept in order as
 * strings in the struct qb_config_kv array at f->offset, its count at f->count_offset.
 */
static int parse_pairs(struct qb_config_walk *c, const struct qb_config_key *f,
                       const struct qb_config_node *node, void *base)
{
    struct qb_config_kv **pairs = (struct qb_config_kv **)((char *)base + f->offset);
    size_t *n = (size_t *)((char *)base + f->count_offset);
    char buf[QB_CONFIG_DESCRIBE_MAX];
    int rc;

    if ((rc = expect_map(c, node)) != QB_OK || node->kind != YN_MAP)
        return rc;
    if (!(*pairs = calloc(node->n / 2 + 1, sizeof(**pairs))))
        return cfg_oom(c);
    for (size_t i = 0; i + 1 < node->n; i += 2) {
        const struct qb_config_node *key = node->items[i], *value = node->items[i + 1];
        struct qb_config_kv *kv = &(*pairs)[*n];

        if (value->kind != YN_SCALAR || ynode_is_null(value) || key->len == 0) {
            size_t mark = path_push_key(c, key->text);

            rc = key->len == 0 ? cfg_error(c, key, "property names must not be empty")
                               : cfg_error(c, value, "expected a scalar value, got %s",
                                           describe_node(buf, sizeof(buf), value));
            path_pop(c, mark);
            return rc;
        }
        kv->line = key->line;
        kv->column = key->column;
        kv->key = strdup(key->text);
        kv->value = strdup(value->text);
        (*n)++; /* counted before the check so qb_config_free releases a half pair */
        if (!kv->key || !kv->value)
            return cfg_oom(c);
    }
    return QB_OK;
}

/* commands.allow: a list of command wire names (command.c's table) -> allow_mask. */
static int parse_allow(struct qb_config_walk *c, const struct qb_config_node *node, void *base)
{
    struct qb_config *cfg = base;
    char buf[QB_CONFIG_DESCRIBE_MAX];
    int rc;

    if ((rc = expect_list(c, node)) != QB_OK || node->kind != YN_SEQ)
        return rc; /* null: the default (all) is set in finish_commands */
    cfg->commands.allow_mask = 0;
    for (size_t i = 0; i < node->n; i++) {
        const struct qb_config_node *item = node->items[i];
        enum qb_cmd_name name;

        if (item->kind != YN_SCALAR || qb_cmd_name_parse(item->text, &name) != QB_OK) {
            size_t mark = path_push_index(c, i);

            rc = cfg_error(c, item, "expected a command name such as resize-and-cont, got %s",
                           describe_node(buf, sizeof(buf), item));
            path_pop(c, mark);
            return rc;
        }
        cfg->commands.allow_mask |= 1u << name;
    }
    return QB_OK;
}

/* vms: a list of { name, qmp } mappings with unique names. */
static int parse_vms(struct qb_config_walk *c, const struct qb_config_node *node, void *base)
{
    struct qb_config *cfg = base;
    const char **names;
    size_t dup, first;
    int rc;

    if ((rc = expect_list(c, node)) != QB_OK || node->kind != YN_SEQ)
        return rc;
    if (!(cfg->vms = calloc(node->n ? node->n : 1, sizeof(*cfg->vms))))
        return cfg_oom(c);
    cfg->n_vms = node->n;
    for (size_t i = 0; i < node->n; i++) {
        size_t mark = path_push_index(c, i);

        cfg->vms[i].line = node->items[i]->line;
        cfg->vms[i].file = node->items[i]->file;
        rc = walk_map(c, node->items[i], vm_fields, &cfg->vms[i]);
        path_pop(c, mark);
        if (rc != QB_OK)
            return rc;
    }
    if (!(names = malloc((node->n ? node->n : 1) * sizeof(*names))))
        return cfg_oom(c);
    for (size_t i = 0; i < node->n; i++)
        names[i] = cfg->vms[i].name;
    rc = find_duplicate(names, node->n, &dup, &first);
    free(names);
    if (rc != QB_OK)
        return cfg_oom(c);
    if (dup != SIZE_MAX) {
        size_t mark = path_push_index(c, dup);

        path_push_key(c, "name");
        const struct qb_config_node *orig = ynode_map_get(node->items[first], "name");

        rc = cfg_error(c, ynode_map_get(node->items[dup], "name"),
                       "duplicate VM name '%s' (also vms[%zu] at %s:%d:%d)", cfg->vms[dup].name,
                       first, orig->file, orig->line, orig->column);
        path_pop(c, mark);
        return rc;
    }
    return QB_OK;
}

/*
 * A secret file named at key (node at): refused when other users may read it
 * (qb_secret_open). A file that cannot be opened is left to the code that
 * reads it at start, which names it; the configuration may be checked on
 * another host than the one it runs on.
 */
static int check_secret(struct qb_config_walk *c, const struct qb_config_node *at, const char *key,
                        const char *what, const char *file)
{
    char msg[512];
    size_t mark;
    int fd, rc;

    if (!file)
        return QB_OK;
    fd = qb_secret_open(what, file, msg, sizeof(msg));
    if (fd >= 0)
        close(fd);
    if (fd != QB_ECONFIG)
        return QB_OK;
    mark = path_push_key(c, key);
    rc = cfg_error(c, at, "%s", msg);
    path_pop(c, mark);
    return rc;
}

/*
 * The secret files a backend's keys name (qb_config_key.secret), in table order; map is
 * the mapping table describes (a transport's, or a section's in it), prefix the path of
 * the section from the transport ("" or "tls.").
 */
static int check_secrets(struct qb_config_walk *c, const struct qb_config_node *map,
                         const struct qb_config_key *table, const void *base, const char *prefix)
{
    char path[128];
    int rc = QB_OK;

    for (const struct qb_config_key *f = table; rc == QB_OK && f && f->key; f++) {
        const void *member = (const char *)base + f->offset;

        snprintf(path, sizeof(path), "%s%s", prefix, f->key);
        if (f->type == QB_CFG_SECTION) {
            char sub[sizeof(path) + 1];

            snprintf(sub, sizeof(sub), "%s.", path);
            rc = check_secrets(c, ynode_map_get(map, f->key), f->sub, base, sub);
        } else if (f->secret && f->type == QB_CFG_STRING) {
            rc = check_secret(c, ynode_map_get(map, f->key), path, f->secret,
                              *(char *const *)member);
        } else if (f->secret && f->type == QB_CFG_PAIRS) {
            const struct qb_config_kv *kv = *(struct qb_config_kv *const *)member;
            size_t n = *(const size_t *)((const char *)base + f->count_offset);
            char item[192];

            snprintf(item, sizeof(item), "%s.%s", path, f->secret_item);
            for (size_t i = 0; rc == QB_OK && i < n; i++)
                if (strcmp(kv[i].key, f->secret_item) == 0)
                    rc = check_secret(c, ynode_map_get(ynode_map_get(map, f->key), f->secret_item),
                                      item, f->secret, kv[i].value);
        }
    }
    return rc;
}

/*
 * Checks across keys of one transport, after the walk: the backend's secret files, then
 * its own config_finish. map is the transport's mapping; c->path names it.
 */
static int finish_transport(struct qb_config_walk *c, const struct qb_config_node *map,
                            const struct qb_transport_ops *ops, void *bcfg)
{
    struct qb_config_problem p = {0};
    const struct qb_config_node *at;
    size_t mark;
    int rc;

    if (bcfg && (rc = check_secrets(c, map, ops->config_keys, bcfg, "")) != QB_OK)
        return rc;
    if (!ops->config_finish || (rc = ops->config_finish(bcfg, &p)) == QB_OK)
        return QB_OK;
    if (rc != QB_ECONFIG)
        return cfg_oom(c);
    at = p.at ? ynode_map_get(map, p.at) : NULL;
    mark = path_push_key(c, p.key);
    rc = cfg_error(c, at ? at : map, "%s", p.msg);
    path_pop(c, mark);
    return rc;
}

/* The registry's type names as "a, b or c", for messages. */
static void transport_type_names(char *buf, size_t len)
{
    const struct qb_transport_ops *ops;
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; (ops = qb_transport_ops_at(i)) && used < len; i++) {
        const char *sep = i == 0 ? "" : qb_transport_ops_at(i + 1) ? ", " : " or ";
        int n = snprintf(buf + used, len - used, "%s%s", sep, ops->name);

        if (n < 0)
            break;
        used += (size_t)n;
    }
}

/*
 * Gives t the backend's config struct (ops->config_size bytes, freed by qb_config_free)
 * and sets the defaults of the common keys and of ops' keys. Returns QB_OK or QB_ENOMEM.
 */
static int transport_defaults(struct qb_transport_config *t, const struct qb_transport_ops *ops)
{
    int rc;

    if (ops->config_size && !(t->backend = calloc(1, ops->config_size)))
        return QB_ENOMEM;
    rc = apply_defaults(qb_config_transport_keys, t, ops->caps);
    if (rc == QB_OK && t->backend)
        rc = apply_defaults(ops->config_keys, t->backend, CAPS_ALL);
    return rc;
}

/* One entry of transports:; the type is read first since it decides which keys are valid. */
static int parse_transport(struct qb_config_walk *c, const struct qb_config_node *map,
                           struct qb_transport_config *t)
{
    char buf[QB_CONFIG_DESCRIBE_MAX], names[128];
    const struct qb_transport_ops *ops = NULL;
    const struct qb_config_node *type;
    struct key_layer layers[2];
    size_t mark;
    int rc = QB_OK;

    t->file = map->file;
    t->line = map->line;
    t->column = map->column;
    if (map->kind != YN_MAP)
        return cfg_error(c, map, "expected a mapping, got %s",
                         describe_node(buf, sizeof(buf), map));
    if ((rc = check_map_keys(c, map)) != QB_OK)
        return rc;
    transport_type_names(names, sizeof(names));
    type = ynode_map_get(map, "type");
    mark = path_push_key(c, "type");
    if (!type)
        rc = cfg_error(c, map, "missing required key");
    else if (ynode_is_null(type))
        rc = cfg_error(c, type, "missing required value");
    else if (type->kind != YN_SCALAR)
        rc =
            cfg_error(c, type, "expected %s, got %s", names, describe_node(buf, sizeof(buf), type));
    else if (!(ops = qb_transport_ops_find(type->text)))
        rc = cfg_error(c, type, "unknown transport type %s (expected %s)",
                       describe_node(buf, sizeof(buf), type), names);
    path_pop(c, mark);
    if (rc != QB_OK)
        return rc;
    /* set before the walk, so qb_config_free finds the backend's keys whatever fails */
    if (!(t->type = strdup(ops->name)))
        return cfg_oom(c);
    c->transport_type = ops->name;
    c->caps = ops->caps;
    if ((rc = transport_defaults(t, ops)) != QB_OK)
        return rc == QB_ENOMEM ? cfg_oom(c) : rc;
    layers[0] = (struct key_layer){qb_config_transport_keys, t};
    layers[1] = (struct key_layer){t->backend ? ops->config_keys : NULL, t->backend};
    if ((rc = walk_layers(c, map, layers, 2, true)) != QB_OK)
        return rc;
    return finish_transport(c, map, ops, t->backend);
}

static int parse_transports(struct qb_config_walk *c, const struct qb_config_node *node, void *base)
{
    struct qb_config *cfg = base;
    int rc;

    if ((rc = expect_list(c, node)) != QB_OK || node->kind != YN_SEQ)
        return rc; /* null: as if absent, the default stdout transport follows */
    if (node->n == 0)
        return cfg_error(c, node, "at least one transport is required");
    if (!(cfg->transports = calloc(node->n, sizeof(*cfg->transports))))
        return cfg_oom(c);
    cfg->n_transports = node->n;
    for (size_t i = 0; i < node->n; i++) {
        size_t mark = path_push_index(c, i);

        rc = parse_transport(c, node->items[i], &cfg->transports[i]);
        c->transport_type = NULL;
        c->caps = CAPS_ALL;
        path_pop(c, mark);
        if (rc != QB_OK)
            return rc;
    }
    return QB_OK;
}

/* ---- after the walk: checks and defaults that span sections ---- */

static int finish_qmp(struct qb_config_walk *c, const struct qb_config_node *root,
                      struct qb_config *cfg)
{
    const struct qb_config_node *qmp = ynode_map_get(root, "qmp"), *at;
    size_t mark;
    int rc;

    if (cfg->qmp_reconnect_initial_ms <= cfg->qmp_reconnect_max_ms)
        return QB_OK;
    at = ynode_map_get(qmp, "reconnect_initial");
    mark = path_push_key(c, "qmp");
    path_push_key(c, "reconnect_initial");
    rc = cfg_error(c, at ? at : qmp, "must not be greater than reconnect_max (%ums > %ums)",
                   cfg->qmp_reconnect_initial_ms, cfg->qmp_reconnect_max_ms);
    path_pop(c, mark);
    return rc;
}

/*
 * A full spool frees space a segment at a time (release, drop_oldest), so a
 * segment as large as the whole spool would make "full" mean "stuck".
 */
static int finish_spool(struct qb_config_walk *c, const struct qb_config_node *root,
                        struct qb_config *cfg)
{
    const struct qb_config_node *spool = ynode_map_get(root, "spool"), *at;
    size_t mark;
    int rc;

    if (cfg->spool_segment_bytes <= cfg->spool_max_bytes / 4)
        return QB_OK;
    at = ynode_map_get(spool, "segment_size");
    mark = path_push_key(c, "spool");
    path_push_key(c, at ? "segment_size" : "max_size");
    rc = cfg_error(c, at ? at : (ynode_map_get(spool, "max_size") ? ynode_map_get(spool, "max_size") : spool),
                   "segment_size (%zu bytes) must be at most a quarter of max_size (%zu bytes)",
                   cfg->spool_segment_bytes, cfg->spool_max_bytes);
    path_pop(c, mark);
    return rc;
}

/* HMAC keys shorter than this are guessable; RFC 2104 suggests at least the hash's output. */
#define QB_CONFIG_HMAC_KEY_MIN 16
#define QB_CONFIG_HMAC_KEY_MAX 4096

/*
 * commands: allow defaults to every command; hmac_key_file is read now, so a
 * missing, weak or world-readable key stops the bridge at start-up rather than
 * at the first command. One trailing newline (what editors and echo add) is
 * not key.
 */
static int finish_commands(struct qb_config_walk *c, const struct qb_config_node *root,
                           struct qb_config *cfg)
{
    const struct qb_config_node *section = ynode_map_get(root, "commands"), *at;
    const char *file = cfg->commands_hmac_key_file;
    unsigned char *key = NULL;
    size_t len = 0, mark;
    FILE *f = NULL;
    char msg[512];
    int rc = QB_OK, fd;

    at = ynode_map_get(section, "allow");
    if (!at || ynode_is_null(at))
        cfg->commands.allow_mask = (1u << QB_CMD__COUNT) - 1;
    if (!file)
        return QB_OK;
    at = ynode_map_get(section, "hmac_key_file");
    mark = path_push_key(c, "commands");
    path_push_key(c, "hmac_key_file");
    if (!(key = malloc(QB_CONFIG_HMAC_KEY_MAX + 1))) {
        rc = cfg_oom(c);
        goto done;
    }
    fd = qb_secret_open("commands.hmac_key_file", file, msg, sizeof(msg));
    if (fd < 0 || !(f = fdopen(fd, "rb"))) {
        if (fd >= 0) {
            snprintf(msg, sizeof(msg), "cannot read '%s': %s", file, strerror(errno));
            close(fd);
        }
        rc = cfg_error(c, at, "%s", msg);
        goto done;
    }
    len = fread(key, 1, QB_CONFIG_HMAC_KEY_MAX + 1, f);
    if (ferror(f)) {
        rc = cfg_error(c, at, "cannot read '%s': %s", file, strerror(errno));
        goto done;
    }
    if (len > QB_CONFIG_HMAC_KEY_MAX) {
        rc = cfg_error(c, at, "'%s' is larger than %d bytes", file, QB_CONFIG_HMAC_KEY_MAX);
        goto done;
    }
    if (len > 0 && key[len - 1] == '\n')
        len--;
    if (len == 0) {
        rc = cfg_error(c, at, "'%s' is empty", file);
        goto done;
    }
    if (len < QB_CONFIG_HMAC_KEY_MIN) {
        rc = cfg_error(c, at, "the key in '%s' is %zu bytes; at least %d are required", file, len,
                       QB_CONFIG_HMAC_KEY_MIN);
        goto done;
    }
    cfg->commands_hmac_key = key;
    cfg->commands.hmac_key = key;
    cfg->commands.hmac_key_len = len;
    key = NULL;

done:
    path_pop(c, mark);
    if (f)
        fclose(f);
    if (key) {
        explicit_bzero(key, QB_CONFIG_HMAC_KEY_MAX + 1);
        free(key);
    }
    return rc;
}

/* Explicit names must be unique; defaults take the type, then "type#2", "type#3", ... */
static int finish_transport_names(struct qb_config_walk *c, const struct qb_config_node *root,
                                  struct qb_config *cfg)
{
    size_t n = cfg->n_transports, dup, first;
    const char **names = calloc(n, sizeof(*names));
    int rc;

    if (!names)
        return cfg_oom(c);
    for (size_t i = 0; i < n; i++)
        names[i] = cfg->transports[i].name ? cfg->transports[i].name : "";
    rc = find_duplicate(names, n, &dup, &first);
    free(names);
    if (rc != QB_OK)
        return cfg_oom(c);
    /* "" stands for "not named" above, and those may repeat */
    if (dup != SIZE_MAX && cfg->transports[dup].name) {
        const struct qb_config_node *list = ynode_map_get(root, "transports");
        const struct qb_config_node *orig = ynode_map_get(list->items[first], "name");
        size_t mark = path_push_key(c, "transports");

        path_push_index(c, dup);
        path_push_key(c, "name");
        rc = cfg_error(c, ynode_map_get(list->items[dup], "name"),
                       "duplicate transport name '%s' (also transports[%zu] at %s:%d:%d)",
                       cfg->transports[dup].name, first, orig->file, orig->line, orig->column);
        path_pop(c, mark);
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        struct qb_transport_config *t = &cfg->transports[i];
        char name[96];
        bool taken = true;

        if (t->name)
            continue;
        for (unsigned k = 1; taken; k++) {
            if (k == 1)
                snprintf(name, sizeof(name), "%s", t->type);
            else
                snprintf(name, sizeof(name), "%s#%u", t->type, k);
            taken = false;
            for (size_t j = 0; j < n && !taken; j++)
                taken = cfg->transports[j].name && strcmp(cfg->transports[j].name, name) == 0;
        }
        if (!(t->name = strdup(name)))
            return cfg_oom(c);
    }
    return QB_OK;
}

/*
 * bridge.id defaults to the host name, as gethostname() reports it (short or
 * fully qualified, whatever the host is set to). A host name the id rules do
 * not accept is refused rather than rewritten: a derived id could equal
 * another host's, and two bridges sharing an id share topics and sessions.
 */
static int finish_bridge_id(struct qb_config_walk *c, const struct qb_config_node *root,
                            struct qb_config *cfg)
{
    const struct qb_config_node *at = ynode_map_get(root, "bridge");
    char host[256], quoted[QB_CONFIG_QUOTE_MAX + 4];
    size_t mark;
    int rc;

    if (cfg->bridge_id)
        return QB_OK;
    if (gethostname(host, sizeof(host)) != 0)
        host[0] = '\0';
    host[sizeof(host) - 1] = '\0';
    if (!check_name(host)) {
        if (!(cfg->bridge_id = strdup(host)))
            return cfg_oom(c);
        cfg->bridge_id_from_host = true;
        return QB_OK;
    }
    at = ynode_map_get(at, "id") ? ynode_map_get(at, "id") : at ? at : root;
    mark = path_push_key(c, "bridge");
    path_push_key(c, "id");
    rc = cfg_error(c, at,
                   "not set, and the host name '%s' is not a valid bridge id (%s): set bridge.id",
                   quote_value(quoted, host), check_name(host));
    path_pop(c, mark);
    return rc;
}

/* Keys whose default is a prefix and bridge.id (qb_config_key.id_prefix), where unset. */
static int finish_id_defaults(const struct qb_config_key *table, void *base, const char *id)
{
    for (const struct qb_config_key *f = table; f && f->key; f++) {
        char **s = (char **)((char *)base + f->offset);

        if (f->type != QB_CFG_STRING || !f->id_prefix || *s)
            continue;
        if (asprintf(s, "%s%s", f->id_prefix, id) < 0) {
            *s = NULL;
            return QB_ENOMEM;
        }
    }
    return QB_OK;
}

static int finish_config(struct qb_config_walk *c, const struct qb_config_node *root,
                         struct qb_config *cfg)
{
    int rc;

    if ((rc = finish_bridge_id(c, root, cfg)) != QB_OK ||
        (rc = finish_qmp(c, root, cfg)) != QB_OK || (rc = finish_spool(c, root, cfg)) != QB_OK ||
        (rc = finish_commands(c, root, cfg)) != QB_OK)
        return rc;
    if (!cfg->transports) {
        const struct qb_transport_ops *ops = qb_transport_ops_find("stdout");

        if (!(cfg->transports = calloc(1, sizeof(*cfg->transports))))
            return cfg_oom(c);
        cfg->n_transports = 1;
        if (!ops || !(cfg->transports[0].type = strdup(ops->name)))
            return cfg_oom(c);
        cfg->transports[0].file = cfg->path;
        if (transport_defaults(&cfg->transports[0], ops) != QB_OK)
            return cfg_oom(c);
    }
    for (size_t i = 0; i < cfg->n_transports; i++) {
        struct qb_transport_config *t = &cfg->transports[i];
        const struct qb_transport_ops *ops = qb_transport_ops_find(t->type);

        if (t->backend && finish_id_defaults(ops->config_keys, t->backend, cfg->bridge_id) != QB_OK)
            return cfg_oom(c);
    }
    return finish_transport_names(c, root, cfg);
}

/* ------------------------------------------------------------------------ */
/* Drop-ins and references                                                   */

/*
 * Merges the mapping src, read from a drop-in, into the mapping dst, taking src's nodes (src
 * keeps NULL items, for the caller to free). table describes dst's keys: a section is merged
 * key by key, a list marked append (vms, transports) gets src's items after its own, anything
 * else (a scalar, any other list, a key the table does not know) is replaced by src's value.
 * A null in src adds nothing to a section or an append list, and sets anything else back to
 * its default. Keys are checked first on both sides, so a drop-in's duplicate key is reported
 * at the drop-in instead of being merged twice.
 */
static int tree_merge(struct qb_config_walk *c, struct qb_config_node *dst,
                      struct qb_config_node *src, const struct qb_config_key *table)
{
    int rc;

    if ((rc = check_map_keys(c, dst)) != QB_OK || (rc = check_map_keys(c, src)) != QB_OK)
        return rc;
    for (size_t i = 0; rc == QB_OK && i + 1 < src->n; i += 2) {
        struct qb_config_node *key = src->items[i], *value = src->items[i + 1], *old;
        const struct qb_config_key *f = table ? field_find(table, key->text) : NULL;
        bool section = f && f->type == QB_CFG_SECTION, append = f && f->append;
        size_t j = 0, mark;

        while (j + 1 < dst->n && strcmp(dst->items[j]->text, key->text) != 0)
            j += 2;
        if (j + 1 >= dst->n) { /* a new key: the pair moves over */
            if (ynode_push(dst, key) != QB_OK)
                return cfg_oom(c);
            src->items[i] = NULL;
            if (ynode_push(dst, value) != QB_OK)
                return cfg_oom(c);
            src->items[i + 1] = NULL;
            continue;
        }
        old = dst->items[j + 1];
        mark = path_push_key(c, key->text);
        if ((section || append) && ynode_is_null(value)) {
            /* nothing to add */
        } else if (section && old->kind == YN_MAP && value->kind == YN_MAP) {
            rc = tree_merge(c, old, value, f->sub);
        } else if (append && old->kind == YN_SEQ && value->kind == YN_SEQ) {
            for (size_t k = 0; rc == QB_OK && k < value->n; k++) {
                if (ynode_push(old, value->items[k]) != QB_OK)
                    rc = cfg_oom(c);
                else
                    value->items[k] = NULL;
            }
        } else { /* the drop-in's key and value, so messages point there */
            ynode_free(dst->items[j]);
            ynode_free(old);
            dst->items[j] = key;
            dst->items[j + 1] = value;
            src->items[i] = src->items[i + 1] = NULL;
        }
        path_pop(c, mark);
    }
    return rc;
}

/* Merges the drop-in tree src (taken) over *root; an empty drop-in changes nothing. */
static int tree_merge_root(struct qb_config_walk *c, struct qb_config_node **root,
                           struct qb_config_node *src)
{
    char buf[QB_CONFIG_DESCRIBE_MAX];
    int rc = QB_OK;

    if (!src || ynode_is_null(src)) {
        ynode_free(src);
        return QB_OK;
    }
    if (src->kind != YN_MAP)
        rc = cfg_error(c, src, "expected a mapping, got %s", describe_node(buf, sizeof(buf), src));
    else if (*root && (*root)->kind != YN_MAP && !ynode_is_null(*root))
        rc = cfg_error(c, *root, "expected a mapping, got %s",
                       describe_node(buf, sizeof(buf), *root));
    if (rc == QB_OK && (!*root || ynode_is_null(*root))) {
        ynode_free(*root);
        *root = src;
        return QB_OK;
    }
    if (rc == QB_OK)
        rc = tree_merge(c, *root, src, root_fields);
    ynode_free(src);
    return rc;
}

/*
 * Expands the references (config_ref.h) in every scalar value under node; keys are left
 * alone. An expanded value is a quoted string from then on: an empty expansion is "", not
 * null, so a required key cannot silently fall back to its default.
 */
static int tree_expand(struct qb_config_walk *c, struct qb_config_node *node)
{
    char why[512];
    char *text;
    int rc;

    if (node->kind == YN_SCALAR) {
        if (!qb_config_ref_present(node->text))
            return QB_OK;
        rc = qb_config_ref_expand(node->text, &text, &c->ref_budget, why, sizeof(why));
        if (rc == QB_ENOMEM)
            return cfg_oom(c);
        if (rc != QB_OK)
            return cfg_error(c, node, "%s", why);
        node->raw = node->text;
        node->text = text;
        node->len = strlen(text);
        node->plain = false;
        return QB_OK;
    }
    for (size_t i = node->kind == YN_MAP ? 1 : 0; i < node->n; i += node->kind == YN_MAP ? 2 : 1) {
        const struct qb_config_node *key = node->kind == YN_MAP ? node->items[i - 1] : NULL;
        size_t mark = key ? path_push_key(c, key->kind == YN_SCALAR ? key->text : "?")
                          : path_push_index(c, i);

        rc = tree_expand(c, node->items[i]);
        path_pop(c, mark);
        if (rc != QB_OK)
            return rc;
    }
    return QB_OK;
}

/* Parses one file's text (c->name names it) into *out, held to the engine's bounds. */
static int tree_parse(struct qb_config_walk *c, const char *buf, size_t len,
                      struct qb_config_node **out)
{
    *out = NULL;
    if (len > QB_CONFIG_MAX_BYTES)
        return cfg_error_at(c, 1, 1, "the file is larger than %d bytes", QB_CONFIG_MAX_BYTES);
    if (!buf) /* libyaml asserts on a NULL input */
        buf = "", len = 0;
    return tree_build(c, buf, len, out);
}

/* Walks the tree of the main file, with its drop-ins merged in, into cfg. */
static int config_from_tree(struct qb_config_walk *c, struct qb_config_node *root,
                            struct qb_config *cfg)
{
    char buf[QB_CONFIG_DESCRIBE_MAX];
    int rc;

    c->name = cfg->path;
    if (!root || ynode_is_null(root))
        return cfg_error_at(c, root ? root->line : 1, root ? root->column : 1,
                            "the file is empty");
    if (apply_defaults(root_fields, cfg, CAPS_ALL) != QB_OK)
        return cfg_oom(c);
    if (root->kind != YN_MAP)
        return cfg_error(c, root, "expected a mapping, got %s",
                         describe_node(buf, sizeof(buf), root));
    c->ref_budget = QB_CONFIG_MAX_BYTES;
    if ((rc = tree_expand(c, root)) != QB_OK || (rc = walk_map(c, root, root_fields, cfg)) != QB_OK)
        return rc;
    return finish_config(c, root, cfg);
}

/* A new config owning a copy of name as its path and first file; NULL when out of memory. */
static struct qb_config *config_new(const char *name, size_t n_dropins)
{
    struct qb_config *cfg = calloc(1, sizeof(*cfg));

    if (!cfg)
        return NULL;
    cfg->files = calloc(n_dropins + 1, sizeof(*cfg->files));
    cfg->path = strdup(name);
    if (cfg->files && (cfg->files[0] = strdup(name)))
        cfg->n_files = 1;
    if (!cfg->path || !cfg->n_files) {
        qb_config_free(cfg);
        return NULL;
    }
    return cfg;
}

/*
 * Reads the file at path into a new buffer (*buf, *len), one byte past the size cap at most,
 * so "too big" is told without trusting st_size. Returns QB_OK, QB_ENOMEM or QB_EIO (errbuf
 * names the file).
 */
static int read_capped(const char *path, char **buf, size_t *len, char *errbuf, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), err = 0;

    *buf = NULL;
    *len = 0;
    if (fd < 0)
        err = errno;
    else if (!(*buf = malloc(QB_CONFIG_MAX_BYTES + 1)))
        err = ENOMEM;
    while (!err && *len < QB_CONFIG_MAX_BYTES + 1) {
        ssize_t n = read(fd, *buf + *len, QB_CONFIG_MAX_BYTES + 1 - *len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            err = errno;
        if (n <= 0)
            break;
        *len += (size_t)n;
    }
    if (fd >= 0)
        close(fd);
    if (!err)
        return QB_OK;
    free(*buf);
    *buf = NULL;
    if (errbuf && errlen)
        snprintf(errbuf, errlen, err == ENOMEM ? "%s: out of memory" : "%s: cannot read: %s", path,
                 strerror(err));
    return err == ENOMEM ? QB_ENOMEM : QB_EIO;
}

/*
 * Reads the drop-ins of cfg->path (config_dropins.h) into cfg->files and merges each over
 * *root in name order. Errors name the drop-in and its line:column.
 */
static int merge_dropins(struct qb_config_walk *c, struct qb_config *cfg,
                         struct qb_config_node **root)
{
    char **paths = NULL, *dir = NULL, *buf = NULL, **files;
    size_t n = 0, len;
    struct qb_config_node *tree;
    int rc;

    rc = qb_config_dropin_dir(cfg->path, &dir, c->errbuf, c->errlen);
    if (rc == QB_OK)
        rc = qb_config_dropin_list(dir, &paths, &n, c->errbuf, c->errlen);
    free(dir);
    if (rc != QB_OK || n == 0)
        return rc == QB_ENOMEM ? cfg_oom(c) : rc;
    if (!(files = realloc(cfg->files, (n + 1) * sizeof(*files)))) {
        qb_config_dropin_list_free(paths, n);
        return cfg_oom(c);
    }
    cfg->files = files;
    for (size_t i = 0; i < n; i++)
        cfg->files[cfg->n_files++] = paths[i]; /* the config owns them from here */
    free(paths);
    for (size_t i = 1; rc == QB_OK && i < cfg->n_files; i++) {
        c->name = cfg->files[i];
        if ((rc = read_capped(c->name, &buf, &len, c->errbuf, c->errlen)) != QB_OK)
            break;
        rc = tree_parse(c, buf, len, &tree);
        free(buf);
        if (rc == QB_OK)
            rc = tree_merge_root(c, root, tree);
    }
    c->name = cfg->path;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Public API                                                                */

int qb_config_listen_name(const char *tmpl, uint32_t pid, uint32_t uid, const char *comm,
                          char *out, size_t outlen)
{
    size_t used = 0;

    for (const char *p = tmpl; *p;) {
        char num[16];
        const char *value = NULL;
        size_t n;

        if (strncmp(p, "{pid}", 5) == 0 || strncmp(p, "{uid}", 5) == 0) {
            snprintf(num, sizeof(num), "%u", p[1] == 'p' ? pid : uid);
            value = num;
            p += 5;
        } else if (strncmp(p, "{comm}", 6) == 0) {
            value = comm;
            p += 6;
        } else if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", *p)) {
            num[0] = *p++;
            num[1] = '\0';
            value = num;
        } else {
            return QB_EINVAL;
        }
        n = strlen(value);
        if (used + n >= outlen || used + n > 64)
            return QB_EINVAL;
        memcpy(out + used, value, n);
        used += n;
    }
    if (used == 0 || outlen == 0)
        return QB_EINVAL;
    out[used] = '\0';
    return QB_OK;
}

bool qb_config_strings_equal(char *const *a, size_t na, char *const *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i], b[i]) != 0)
            return false;
    return true;
}

void qb_config_free(struct qb_config *cfg)
{
    if (!cfg)
        return;
    qb_config_map_free(root_fields, cfg);
    if (cfg->commands_hmac_key) {
        explicit_bzero(cfg->commands_hmac_key, cfg->commands.hmac_key_len);
        free(cfg->commands_hmac_key);
    }
    for (size_t i = 0; i < cfg->n_vms; i++)
        qb_config_map_free(vm_fields, &cfg->vms[i]);
    free(cfg->vms);
    for (size_t i = 0; i < cfg->n_events_exclude; i++)
        free(cfg->events_exclude[i]);
    free(cfg->events_exclude);
    for (size_t i = 0; i < cfg->n_libvirt_include; i++)
        free(cfg->libvirt_include[i]);
    free(cfg->libvirt_include);
    for (size_t i = 0; i < cfg->n_libvirt_exclude; i++)
        free(cfg->libvirt_exclude[i]);
    free(cfg->libvirt_exclude);
    for (size_t i = 0; i < cfg->n_transports; i++) {
        struct qb_transport_config *t = &cfg->transports[i];
        const struct qb_transport_ops *ops = qb_transport_ops_find(t->type);

        if (ops && t->backend)
            qb_config_map_free(ops->config_keys, t->backend);
        free(t->backend);
        qb_config_map_free(qb_config_transport_keys, t);
        for (size_t j = 0; j < t->n_include; j++)
            free(t->include[j]);
        free(t->include);
        for (size_t j = 0; j < t->n_exclude; j++)
            free(t->exclude[j]);
        free(t->exclude);
    }
    free(cfg->transports);
    for (size_t i = 0; i < cfg->n_files; i++)
        free(cfg->files[i]);
    free(cfg->files);
    free(cfg->path);
    free(cfg);
}

int qb_config_load_string(const char *name, const char *yaml, size_t len, struct qb_config **out,
                          char *errbuf, size_t errlen)
{
    struct qb_config_walk c = {
        .name = name ? name : "<config>", .errbuf = errbuf, .errlen = errlen, .caps = CAPS_ALL};
    struct qb_config *cfg = NULL;
    struct qb_config_node *root = NULL;
    int rc;

    *out = NULL;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!(cfg = config_new(c.name, 0)))
        return cfg_oom(&c);
    c.name = cfg->path;
    if ((rc = tree_parse(&c, yaml, len, &root)) == QB_OK)
        rc = config_from_tree(&c, root, cfg);
    ynode_free(root);
    if (rc != QB_OK)
        qb_config_free(cfg);
    else
        *out = cfg;
    return rc;
}

int qb_config_load_file(const char *path, struct qb_config **out, char *errbuf, size_t errlen)
{
    struct qb_config_walk c = {.name = path, .errbuf = errbuf, .errlen = errlen, .caps = CAPS_ALL};
    struct qb_config *cfg = NULL;
    struct qb_config_node *root = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if ((rc = read_capped(path, &buf, &len, errbuf, errlen)) != QB_OK)
        return rc;
    if (!(cfg = config_new(path, 0))) {
        free(buf);
        return cfg_oom(&c);
    }
    c.name = cfg->path;
    rc = tree_parse(&c, buf, len, &root);
    free(buf);
    if (rc == QB_OK)
        rc = merge_dropins(&c, cfg, &root);
    if (rc == QB_OK)
        rc = config_from_tree(&c, root, cfg);
    ynode_free(root);
    if (rc != QB_OK)
        qb_config_free(cfg);
    else
        *out = cfg;
    return rc;
}
