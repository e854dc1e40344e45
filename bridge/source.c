/*
 * source.c - what every VM source shares: the query names and the held-event
 * bounds (source.h has the seam's contract; the list of sources is
 * source_registry.c, above every source).
 */
#include "source.h"

#include "log.h"

/* Indexed by enum qb_source_query. */
static const char *const query_names[QB_SOURCE_QUERY_COUNT] = {
    "query-status",      "query-block", "query-block-jobs",
    "query-colo-status", "query-name",  "query-uuid",
};

const char *qb_source_query_name(enum qb_source_query q)
{
    return (unsigned)q < QB_SOURCE_QUERY_COUNT ? query_names[q] : "?";
}

struct qb_held_limits qb_source_held_limits(const struct qb_config *cfg)
{
    return (struct qb_held_limits){.max_events = cfg->qmp_max_held_events,
                                   .max_bytes = cfg->qmp_max_held_bytes};
}

const char *qb_source_held_overflow(const struct qb_config *cfg, const char *who, const char *what,
                                    size_t count, size_t bytes, uint64_t *events, uint64_t *bytes_n)
{
    bool by_count = count > cfg->qmp_max_held_events;

    if (by_count)
        (*events)++;
    else
        (*bytes_n)++;
    QB_LOG_WARN(who,
                "closing the QMP session: %zu events (%zu bytes) held back while waiting for %s, "
                "over qmp.%s (max_held_events %zu, max_held_bytes %zu); they are dropped, the "
                "snapshot of the next session gives the state",
                count, bytes, what, by_count ? "max_held_events" : "max_held_bytes",
                cfg->qmp_max_held_events, cfg->qmp_max_held_bytes);
    return by_count ? "more events held back than qmp.max_held_events"
                    : "more event bytes held back than qmp.max_held_bytes";
}
