/*
 * service_notify.h - tell systemd what the daemon is doing (sd_notify(3)).
 *
 * The unit (packaging/systemd/qmp-bridge.service) is Type=notify with a
 * WatchdogSec=: systemd treats the bridge as started only once it says
 * READY=1 (after the configuration is loaded and the transports are up), and
 * restarts it when WATCHDOG=1 pings stop. The pings come from a timer on the
 * bridge's own libuv loop, and only while a health callback says the bridge
 * is healthy, so both a hung loop and a bridge that runs but does no useful
 * work get restarted.
 *
 * Every function is a no-op returning QB_OK when NOTIFY_SOCKET is unset (the
 * bridge was started by hand or by a test), so callers never need to ask
 * whether they run under systemd.
 *
 * Order in bridge.c: qb_service_notify_ready() once start-up succeeded;
 * qb_service_notify_reloading() on SIGHUP before re-reading the file, then
 * qb_service_notify_ready() again when the new config is in force (or still
 * the old one, with a status saying why); qb_service_notify_stopping() first
 * thing in the shutdown path; qb_service_watchdog_close() when the loop must
 * drain.
 */
#ifndef QB_SERVICE_NOTIFY_H
#define QB_SERVICE_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* True when NOTIFY_SOCKET is set, i.e. systemd (or a test) listens. */
bool qb_service_notify_enabled(void);

/*
 * Sends READY=1 with STATUS=<status>. status is borrowed and may be NULL (no
 * STATUS= line); newlines in it are sent as spaces, because a newline would
 * start another assignment. Returns QB_OK (also when NOTIFY_SOCKET is unset)
 * or QB_EIO when the datagram could not be sent (logged).
 */
int qb_service_notify_ready(const char *status);

/*
 * Sends RELOADING=1 with MONOTONIC_USEC=<CLOCK_MONOTONIC now>, which systemd
 * 253+ requires to match the reload to the ExecReload= job (older versions
 * ignore the extra field). Follow it with qb_service_notify_ready().
 * Returns QB_OK or QB_EIO.
 */
int qb_service_notify_reloading(void);

/* Sends STOPPING=1. Returns QB_OK or QB_EIO. */
int qb_service_notify_stopping(void);

/* Sends STATUS=<status> (borrowed, newlines become spaces). Returns QB_OK or QB_EIO. */
int qb_service_notify_status(const char *status);

/*
 * Health check for the watchdog, called on the loop at every ping interval.
 * Returns true when the bridge is doing its job; false withholds the ping.
 */
typedef bool (*qb_service_health_fn)(void *arg);

struct qb_service_watchdog;

/*
 * Starts pinging WATCHDOG=1 every half WATCHDOG_USEC from a uv_timer on loop,
 * but only when health(arg) returns true at that moment. health may be NULL
 * (always healthy: only a hung loop stops the pings). arg is borrowed and
 * must outlive the watchdog.
 *
 * When systemd did not enable a watchdog for this process (no WATCHDOG_USEC,
 * or WATCHDOG_PID names another process) returns QB_OK with *out NULL; every
 * other function accepts NULL. Otherwise returns QB_OK with *out owned by the
 * caller (release with qb_service_watchdog_close), or QB_ENOMEM.
 */
int qb_service_watchdog_start(uv_loop_t *loop, qb_service_health_fn health, void *arg,
                              struct qb_service_watchdog **out);

/* Interval between ping attempts in milliseconds, 0 for NULL. */
uint64_t qb_service_watchdog_interval_ms(const struct qb_service_watchdog *w);

/*
 * Stops pinging; the timer handle stays so the loop exits only after close.
 * Used when the bridge starts shutting down: systemd's stop timeout takes
 * over from the watchdog.
 */
void qb_service_watchdog_stop(struct qb_service_watchdog *w);

/* Stops and releases w; the memory is freed in libuv's close callback. NULL is fine. */
void qb_service_watchdog_close(struct qb_service_watchdog *w);

#endif
