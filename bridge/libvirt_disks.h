/*
 * libvirt_disks.h - a libvirt domain's disks, from its live XML: which disk
 * target ("vda", "hda") a QEMU block node name belongs to.
 *
 * libvirt starts QEMU with -blockdev, so QEMU names a libvirt disk only by
 * node names: BLOCK_IO_ERROR says "device": "" and "node-name":
 * "libvirt-1-format". libvirt (since 5.10, which chose these names) gives
 * every image of a disk's chain an index, shown in the live XML as
 * <source ... index='N'/> (the top image) and <backingStore index='N'> (the
 * images below), and names that image's nodes libvirt-N-format and
 * libvirt-N-storage. What a consumer needs is the target, as in virsh and the
 * domain XML, and that is what this map gives.
 *
 * Pure data: no libvirt call, so it is unit-tested with XML text. Immutable
 * once parsed, so a map made on the worker thread may be read on the loop.
 */
#ifndef QB_LIBVIRT_DISKS_H
#define QB_LIBVIRT_DISKS_H

#include <stdbool.h>
#include <stddef.h>

#define QB_LV_TARGET_MAX 32 /* libvirt's targets are short ("vda", "sdaa"); longer is refused */

struct qb_lv_disk {
    char target[QB_LV_TARGET_MAX]; /* <target dev=...>, checked: [a-z0-9] */
    char *file;                    /* the top image's file or device path, or NULL */
    char *driver;                  /* <driver type=...> ("raw", "qcow2"), or NULL */
    bool read_only;
    bool cdrom;     /* device='cdrom' (or floppy): no medium is normal */
    unsigned index; /* the top image's index; 0: none known (no medium, or an old libvirt) */
};

/* One image of a chain: which disk it belongs to and how deep (0: the top image). */
struct qb_lv_image {
    unsigned index;
    size_t disk; /* into disks[] */
    unsigned depth;
};

struct qb_lv_disks {
    struct qb_lv_disk *disks;
    size_t n_disks;
    struct qb_lv_image *images;
    size_t n_images;
};

/*
 * Parses the live XML of a domain (xml, len bytes, borrowed). Disks whose
 * target is missing or not [a-z0-9]{1,31} are skipped (counted in *skipped
 * when not NULL). Returns QB_OK with *out (the caller owns it:
 * qb_lv_disks_free), QB_EINVAL (not a domain's XML) or QB_ENOMEM.
 */
int qb_lv_disks_parse(const char *xml, size_t len, struct qb_lv_disks **out, size_t *skipped);

void qb_lv_disks_free(struct qb_lv_disks *d);

/*
 * The disk a QEMU node name ("libvirt-3-format", "libvirt-3-storage") belongs
 * to (borrowed from d), with the image's depth in its chain; NULL when the
 * name is not libvirt's or names no image of d.
 */
const struct qb_lv_disk *qb_lv_disks_by_node(const struct qb_lv_disks *d, const char *node,
                                             unsigned *depth);

/* The disk of target (borrowed from d), or NULL. */
const struct qb_lv_disk *qb_lv_disks_by_target(const struct qb_lv_disks *d, const char *target);

/*
 * The disk a block job id names (borrowed), or NULL: a target itself ("vda"),
 * or a QEMU job id of libvirt ("copy-vda-libvirt-3-format", "commit-vda-...")
 * that carries a target or one of the disk's node names between dashes.
 */
const struct qb_lv_disk *qb_lv_disks_by_job(const struct qb_lv_disks *d, const char *job);

/* The node name of a disk's top image ("libvirt-N-format") into buf; false when its index is 0. */
bool qb_lv_disk_node_name(const struct qb_lv_disk *disk, char *buf, size_t len);

#endif
