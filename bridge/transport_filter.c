/*
 * transport_filter.c - a transport's include / exclude lists applied to one
 * message (see transport_filter.h for what matches and what always passes).
 */
#include "transport_filter.h"

#include "transport_ops.h"

#include <fnmatch.h>
#include <string.h>

#define QB_FILTER_RESULT_TYPE "bridge.command.result"

bool qb_transport_filter_match(char *const *patterns, size_t n, const char *type)
{
    for (size_t i = 0; i < n; i++)
        if (fnmatch(patterns[i], type, 0) == 0)
            return true;
    return false;
}

bool qb_transport_filter_pass(const struct qb_transport_config *cfg, unsigned caps,
                              const struct qb_message *msg)
{
    const char *type = msg->type ? msg->type : "";

    if (!cfg->n_include && !cfg->n_exclude)
        return true;
    if (msg->kind == QB_MSG_REPLY)
        return true;
    /* a stream-only transport that takes commands answers them with this event alone */
    if (cfg->commands && (caps & QB_TRANSPORT_CAP_SUBSCRIBE) && !(caps & QB_TRANSPORT_CAP_REPLY) &&
        strcmp(type, QB_FILTER_RESULT_TYPE) == 0)
        return true;
    if (cfg->n_include && !qb_transport_filter_match(cfg->include, cfg->n_include, type))
        return false;
    return !qb_transport_filter_match(cfg->exclude, cfg->n_exclude, type);
}
