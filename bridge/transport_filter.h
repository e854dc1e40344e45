/*
 * transport_filter.h - which messages a transport's include / exclude lists let
 * through.
 *
 * A filter looks at the CloudEvents type of every message handed to a
 * transport: QMP events (qmp.block.io_error, ...), bridge events
 * (bridge.vm.connected, bridge.command.result, ...) and the state channel,
 * whose type is qmp.vm.state (the message that clears a VM's retained state
 * included, so it passes exactly when the state does). Patterns are fnmatch(3)
 * globs without flags: * ? and [...] match any character, dots included.
 *
 * A message passes when include is empty or one of its patterns matches, and
 * no exclude pattern matches (exclude wins). What always passes, whatever the
 * lists say, is what a command's requester waits for: a reply (QB_MSG_REPLY),
 * and bridge.command.result on a transport that receives commands but has no
 * reply channel (Kafka), where that event is the only answer.
 */
#ifndef QB_TRANSPORT_FILTER_H
#define QB_TRANSPORT_FILTER_H

#include "transport_config.h"
#include "message.h"

#include <stdbool.h>

/*
 * True when msg (borrowed) may go to a transport configured by cfg (borrowed)
 * whose backend announces caps (QB_TRANSPORT_CAP_*).
 */
bool qb_transport_filter_pass(const struct qb_transport_config *cfg, unsigned caps,
                              const struct qb_message *msg);

/* True when type (borrowed) matches one of the n patterns. */
bool qb_transport_filter_match(char *const *patterns, size_t n, const char *type);

#endif
