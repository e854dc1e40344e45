/*
 * qmp_greetings.h - QMP greetings shared between sessions.
 *
 * Every session keeps its greeting for the snapshots it takes (QEMU's version
 * and package, the capabilities), and the VMs of one host nearly all run the
 * same QEMU build, so their greetings are the same object. Parsed, one is
 * about 1.2 KiB of jansson objects: a third of what an idle VM costs. Sessions
 * therefore hold a counted reference to one shared, read-only tree per
 * distinct greeting (keyed by its compact, key-sorted text). A peer sending
 * greetings of its own costs what it did before: one tree per session.
 * Loop thread only.
 */
#ifndef QB_QMP_GREETINGS_H
#define QB_QMP_GREETINGS_H

#include <jansson.h>
#include <stddef.h>

struct qb_qmp_greeting;

/*
 * The shared greeting equal to value (borrowed: the table keeps a deep copy
 * of the first of its kind, so value may be released after). Returns a
 * counted reference (give it back with qb_qmp_greeting_put) or NULL when out
 * of memory.
 */
struct qb_qmp_greeting *qb_qmp_greeting_get(const json_t *value);

/* The greeting's tree, borrowed until the reference is put; never modify it. */
const json_t *qb_qmp_greeting_tree(const struct qb_qmp_greeting *g);

/* Gives back one reference; the last one frees the greeting. NULL is ignored. */
void qb_qmp_greeting_put(struct qb_qmp_greeting *g);

/* Distinct greetings held now (for tests). */
size_t qb_qmp_greetings_count(void);

#endif
