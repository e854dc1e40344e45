/*
 * libvirt_disks.c - a domain's disks from its live XML (see libvirt_disks.h).
 *
 * libxml2 reads the XML (it is libvirt's own parser too). Everything taken from
 * it is checked before use: targets are short [a-z0-9] names, indexes are
 * decimal numbers, and nothing from the XML reaches a log unchecked.
 */
#include "libvirt_disks.h"

#include "error.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Images per domain at most: chains are short, a hostile XML is not a reason to use memory. */
#define QB_LV_MAX_IMAGES 4096

static bool name_is(const xmlNode *n, const char *name)
{
    return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

static const xmlNode *child(const xmlNode *n, const char *name)
{
    for (const xmlNode *c = n ? n->children : NULL; c; c = c->next)
        if (name_is(c, name))
            return c;
    return NULL;
}

/* An attribute's value, a new string the caller frees with xmlFree, or NULL. */
static char *attr(const xmlNode *n, const char *name)
{
    return n ? (char *)xmlGetProp(n, (const xmlChar *)name) : NULL;
}

/* A decimal index in 1..UINT32_MAX, or 0. */
static unsigned parse_index(const char *text)
{
    char *end;
    unsigned long v;

    if (!text || text[0] < '0' || text[0] > '9')
        return 0;
    v = strtoul(text, &end, 10);
    return (*end == '\0' && v <= UINT32_MAX) ? (unsigned)v : 0;
}

static bool target_ok(const char *t)
{
    size_t len = t ? strlen(t) : 0;

    return len > 0 && len < QB_LV_TARGET_MAX &&
           strspn(t, "abcdefghijklmnopqrstuvwxyz0123456789") == len;
}

/* A copy of a source path made printable-safe (control characters refused), or NULL. */
static char *path_copy(const char *p)
{
    if (!p || strlen(p) > 4096)
        return NULL;
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return NULL;
    return strdup(p);
}

static int image_add(struct qb_lv_disks *d, unsigned index, size_t disk, unsigned depth)
{
    struct qb_lv_image *grown;

    if (index == 0 || d->n_images >= QB_LV_MAX_IMAGES)
        return QB_OK;
    grown = realloc(d->images, (d->n_images + 1) * sizeof(*grown));
    if (!grown)
        return QB_ENOMEM;
    d->images = grown;
    d->images[d->n_images++] = (struct qb_lv_image){.index = index, .disk = disk, .depth = depth};
    return QB_OK;
}

/* The backing chain below a disk's top image: <backingStore index='N'> nested. */
static int chain_add(struct qb_lv_disks *d, const xmlNode *store, size_t disk)
{
    unsigned depth = 1;

    for (; store && depth < QB_LV_MAX_IMAGES; store = child(store, "backingStore"), depth++) {
        char *idx = attr(store, "index");
        int rc = image_add(d, parse_index(idx), disk, depth);

        xmlFree(idx);
        if (rc < 0)
            return rc;
    }
    return QB_OK;
}

static void disk_clear(struct qb_lv_disk *k)
{
    free(k->file);
    free(k->driver);
}

/* Adds one <disk>; QB_EINVAL when it is skipped (no usable target). */
static int disk_add(struct qb_lv_disks *d, const xmlNode *n)
{
    const xmlNode *src = child(n, "source");
    char *dev = attr(child(n, "target"), "dev");
    char *kind = attr(n, "device");
    char *type = attr(child(n, "driver"), "type");
    char *file = attr(src, "file"), *blk = attr(src, "dev"), *vol = attr(src, "name");
    char *idx = attr(src, "index");
    struct qb_lv_disk k = {0};
    struct qb_lv_disk *grown;
    int rc = QB_EINVAL;

    if (!target_ok(dev))
        goto out;
    snprintf(k.target, sizeof(k.target), "%s", dev);
    k.cdrom = kind && (strcmp(kind, "cdrom") == 0 || strcmp(kind, "floppy") == 0);
    k.read_only = child(n, "readonly") != NULL;
    k.index = parse_index(idx);
    k.file = path_copy(file ? file : blk ? blk : vol);
    k.driver = (type && target_ok(type)) ? strdup(type) : NULL;
    rc = QB_ENOMEM;
    grown = realloc(d->disks, (d->n_disks + 1) * sizeof(*grown));
    if (!grown) {
        disk_clear(&k);
        goto out;
    }
    d->disks = grown;
    d->disks[d->n_disks] = k;
    rc = image_add(d, k.index, d->n_disks, 0);
    if (rc == QB_OK)
        rc = chain_add(d, child(n, "backingStore"), d->n_disks);
    d->n_disks++;
out:
    xmlFree(dev);
    xmlFree(kind);
    xmlFree(type);
    xmlFree(file);
    xmlFree(blk);
    xmlFree(vol);
    xmlFree(idx);
    return rc;
}

int qb_lv_disks_parse(const char *xml, size_t len, struct qb_lv_disks **out, size_t *skipped)
{
    xmlDoc *doc;
    const xmlNode *root, *devices;
    struct qb_lv_disks *d;
    int rc = QB_OK;

    *out = NULL;
    if (skipped)
        *skipped = 0;
    if (len > INT32_MAX)
        return QB_EINVAL;
    /* no network, no entities: the text is libvirtd's, but parts of it are the guest owner's */
    doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc)
        return QB_EINVAL;
    root = xmlDocGetRootElement(doc);
    if (!root || !name_is(root, "domain")) {
        xmlFreeDoc(doc);
        return QB_EINVAL;
    }
    d = calloc(1, sizeof(*d));
    if (!d) {
        xmlFreeDoc(doc);
        return QB_ENOMEM;
    }
    devices = child(root, "devices");
    for (const xmlNode *n = devices ? devices->children : NULL; n && rc != QB_ENOMEM; n = n->next) {
        if (!name_is(n, "disk"))
            continue;
        rc = disk_add(d, n);
        if (rc == QB_EINVAL && skipped)
            (*skipped)++;
    }
    xmlFreeDoc(doc);
    if (rc == QB_ENOMEM) {
        qb_lv_disks_free(d);
        return QB_ENOMEM;
    }
    *out = d;
    return QB_OK;
}

void qb_lv_disks_free(struct qb_lv_disks *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_disks; i++)
        disk_clear(&d->disks[i]);
    free(d->disks);
    free(d->images);
    free(d);
}

/* The index of "libvirt-N-format" / "libvirt-N-storage", or 0. */
static unsigned node_index(const char *node, size_t len)
{
    static const char prefix[] = "libvirt-";
    char digits[12];
    const char *dash;
    size_t n;

    if (len <= sizeof(prefix) - 1 || strncmp(node, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    node += sizeof(prefix) - 1;
    len -= sizeof(prefix) - 1;
    dash = memchr(node, '-', len);
    if (!dash)
        return 0;
    n = (size_t)(dash - node);
    len -= n + 1;
    if (n == 0 || n >= sizeof(digits) ||
        !((len == 6 && strncmp(dash + 1, "format", 6) == 0) ||
          (len == 7 && strncmp(dash + 1, "storage", 7) == 0)))
        return 0;
    memcpy(digits, node, n);
    digits[n] = '\0';
    return parse_index(digits);
}

const struct qb_lv_disk *qb_lv_disks_by_node(const struct qb_lv_disks *d, const char *node,
                                             unsigned *depth)
{
    unsigned idx = (d && node) ? node_index(node, strlen(node)) : 0;

    if (idx == 0)
        return NULL;
    for (size_t i = 0; i < d->n_images; i++)
        if (d->images[i].index == idx) {
            if (depth)
                *depth = d->images[i].depth;
            return &d->disks[d->images[i].disk];
        }
    return NULL;
}

const struct qb_lv_disk *qb_lv_disks_by_target(const struct qb_lv_disks *d, const char *target)
{
    for (size_t i = 0; d && target && i < d->n_disks; i++)
        if (strcmp(d->disks[i].target, target) == 0)
            return &d->disks[i];
    return NULL;
}

const struct qb_lv_disk *qb_lv_disks_by_job(const struct qb_lv_disks *d, const char *job)
{
    const struct qb_lv_disk *k = qb_lv_disks_by_target(d, job);
    size_t len = job ? strlen(job) : 0;

    if (k || len == 0 || len > 256)
        return k;
    /* libvirt's job ids: "<kind>-<target>-<node name>"; try every dash-separated tail and token */
    for (const char *p = job; p && *p; p = strchr(p, '-'), p = p ? p + 1 : NULL) {
        const char *end = strchr(p, '-');
        char token[QB_LV_TARGET_MAX];
        size_t n = end ? (size_t)(end - p) : strlen(p);

        if ((k = qb_lv_disks_by_node(d, p, NULL)) != NULL)
            return k;
        if (n > 0 && n < sizeof(token)) {
            memcpy(token, p, n);
            token[n] = '\0';
            if ((k = qb_lv_disks_by_target(d, token)) != NULL)
                return k;
        }
    }
    return NULL;
}

bool qb_lv_disk_node_name(const struct qb_lv_disk *disk, char *buf, size_t len)
{
    if (!disk || disk->index == 0)
        return false;
    return snprintf(buf, len, "libvirt-%u-format", disk->index) < (int)len;
}
