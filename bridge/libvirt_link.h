/*
 * libvirt_link.h - one libvirt domain's link behind the seam (source.h): its
 * sessions, the events libvirt relays for it, its snapshot queries and its
 * commands. source_libvirt.c owns the connection to libvirtd and decides
 * when a domain's session begins and ends; this file is what the VM manager
 * talks to.
 *
 * A session is one run of the domain as libvirt sees it: it begins when the
 * domain is found running (at connect, on its STARTED event, after libvirtd
 * came back) and its disk map is read, and ends when the domain stops, the
 * connection to libvirtd is lost, or the manager closes it.
 *
 * Every blocking libvirt call runs on the shared worker thread; answers come
 * back on the loop, in order. A query or command still on the worker when its
 * session ends is answered at once (QB_ECLOSED, or a "disconnected" result)
 * and its late result dropped, so the contract's "before on_closed" holds
 * even while libvirtd hangs.
 */
#ifndef QB_LIBVIRT_LINK_H
#define QB_LIBVIRT_LINK_H

#include "config.h"
#include "libvirt_worker.h"
#include "source.h"

#include <jansson.h>
#include <libvirt/libvirt.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct qb_lv_link;

/* What every link of one libvirt source shares; the source owns it. */
struct qb_lv_shared {
    const struct qb_source_ops *ops;
    uv_loop_t *loop;
    const struct qb_config *cfg; /* borrowed, the current one */
    struct qb_libvirt_worker *worker;
    json_t *greeting;        /* QMP-shaped, of the current connection, or NULL */
    char version[32];        /* QEMU's version as libvirt reports it ("7.2.0") */
    uint64_t events_dropped; /* relayed events no session could take */
    uint64_t held_over_events, held_over_bytes;
    /* Links with something left for the loop (qb_lv_shared_run_due runs them). */
    struct qb_lv_link *due;
    /* Asks the source to call qb_lv_shared_run_due soon, from the loop (never from inside). */
    void (*wake)(void *arg);
    /* The manager released l: the source drops it from its tables now (it is freed later). */
    void (*forget)(void *arg, struct qb_lv_link *l);
    void *arg; /* of wake and forget */
};

/* Runs what links left for the loop: a close the manager asked for, a release. */
void qb_lv_shared_run_due(struct qb_lv_shared *sh);

/*
 * A link for domain name (valid, copied) with uuid (copied) reached as
 * address (copied). Returns QB_OK with *out (the source's until the manager
 * binds it) or QB_ENOMEM.
 */
int qb_lv_link_new(struct qb_lv_shared *sh, const char *name, const char *uuid, const char *address,
                   struct qb_lv_link **out);

/* Frees a link the manager never took. */
void qb_lv_link_free(struct qb_lv_link *l);

struct qb_source_link *qb_lv_link_head(struct qb_lv_link *l);
const char *qb_lv_link_name(const struct qb_lv_link *l);
/* A session is opening or up. */
bool qb_lv_link_in_session(const struct qb_lv_link *l);

/*
 * The domain (dom: a reference is taken) runs: begins a session unless one
 * is opening or up. Persistent says whether libvirt keeps its definition.
 */
void qb_lv_link_begin(struct qb_lv_link *l, virDomainPtr dom);

/* Lets go of the domain (and so of its connection) while no session is opening or up. */
void qb_lv_link_drop_domain(struct qb_lv_link *l);

/* The session (if any) ends: err and reason go to on_closed (reason copied). */
void qb_lv_link_end(struct qb_lv_link *l, int err, const char *reason);

/* The domain is gone for good (undefined, or a transient one stopped): on_gone(why). */
void qb_lv_link_gone(struct qb_lv_link *l, const char *why);

/* Whether the domain's definition outlives its run (false for a transient domain). */
bool qb_lv_link_persistent(const struct qb_lv_link *l);
void qb_lv_link_set_persistent(struct qb_lv_link *l, bool persistent);

/*
 * One QMP event libvirt relayed for this domain: name, QEMU's timestamp and
 * the data as JSON text (details, may be NULL), all borrowed. Dropped (and
 * counted) unless a session is up.
 */
void qb_lv_link_relay(struct qb_lv_link *l, const char *event, long long seconds, unsigned micros,
                      const char *details);

/* The link's side of struct qb_source_ops (source_libvirt.c lists them in its ops). */
void qb_lv_link_start(struct qb_source_link *link);
void qb_lv_link_release(struct qb_source_link *link, const char *why);
void qb_lv_link_disconnect(struct qb_source_link *link, const char *why);
void qb_lv_link_settled(struct qb_source_link *link);
void qb_lv_link_pause(struct qb_source_link *link, bool paused);
int qb_lv_link_query(struct qb_source_link *link, enum qb_source_query q, qb_source_answer_cb cb,
                     void *arg);
int qb_lv_link_command(struct qb_source_link *link, const struct qb_command *cmd,
                       qb_source_result_cb done, void *arg);
enum qb_source_session qb_lv_link_session(const struct qb_source_link *link);
const char *qb_lv_link_session_name(const struct qb_source_link *link);
const char *qb_lv_link_address(const struct qb_source_link *link);
const json_t *qb_lv_link_greeting(const struct qb_source_link *link);
const char *qb_lv_link_version(const struct qb_source_link *link);

#endif
