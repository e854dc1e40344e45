/*
 * source_registry.c - the VM sources a bridge has: one line per source.
 *
 * The VM manager makes one instance of each (ops->create) and asks them in
 * this order for a configured VM's address (ops->open). A new source is one
 * file behind source.h plus one line here. Kept apart from source.c, which
 * every source uses, so no source depends on the list that names it.
 */
#include "source.h"
#include "source_libvirt.h"
#include "source_qmp.h"

#include <stddef.h>

const struct qb_source_ops *const qb_source_registry[] = {
    &qb_source_qmp_ops,
    &qb_source_libvirt_ops,
    NULL,
};
