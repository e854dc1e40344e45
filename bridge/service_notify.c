/*
 * service_notify.c - sd_notify(3) messages and the health-gated watchdog
 * (see service_notify.h).
 *
 * libsystemd's sd_notify() already does nothing when NOTIFY_SOCKET is unset
 * and returns 0; this file only adds the message texts, the escaping of
 * status lines, and the watchdog timer. The timer runs on the bridge's loop
 * on purpose: a ping proves that the loop still turns, which a thread could
 * not prove.
 */
#include "service_notify.h"

#include "error.h"
#include "log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

/* Longest STATUS= text we send; systemd shows one line in `systemctl status`. */
#define QB_SERVICE_STATUS_MAX 256

struct qb_service_watchdog {
    uv_timer_t timer;
    qb_service_health_fn health;
    void *arg;
    uint64_t interval_ms;
    bool withheld; /* the last attempt withheld the ping: log only on changes */
};

bool qb_service_notify_enabled(void)
{
    const char *s = getenv("NOTIFY_SOCKET");

    return s && *s;
}

/* Sends one message. Returns QB_OK (also when nobody listens) or QB_EIO (logged). */
static int service_send(const char *msg)
{
    int rc = sd_notify(0, msg);

    if (rc < 0) {
        QB_LOG_WARN(NULL, "sd_notify: cannot tell systemd '%.40s': %s", msg, strerror(-rc));
        return QB_EIO;
    }
    return QB_OK;
}

/*
 * Copies status into out as one line: newlines would start new assignments
 * (a status could otherwise say "READY=1"), other control characters make
 * `systemctl status` unreadable. Long texts are cut.
 */
static void service_status_line(const char *status, char *out, size_t outlen)
{
    size_t i = 0;

    for (; status[i] && i + 1 < outlen; i++)
        out[i] = ((unsigned char)status[i] < 0x20 || status[i] == 0x7f) ? ' ' : status[i];
    out[i] = '\0';
}

/* Sends first, plus "\nSTATUS=<status>" when status is not NULL. */
static int service_send_with_status(const char *first, const char *status)
{
    char line[QB_SERVICE_STATUS_MAX];
    char msg[QB_SERVICE_STATUS_MAX + 64];

    if (!qb_service_notify_enabled())
        return QB_OK;
    if (!status)
        return service_send(first);
    service_status_line(status, line, sizeof(line));
    snprintf(msg, sizeof(msg), "%s%sSTATUS=%s", first, *first ? "\n" : "", line);
    return service_send(msg);
}

int qb_service_notify_ready(const char *status)
{
    return service_send_with_status("READY=1", status);
}

int qb_service_notify_reloading(void)
{
    struct timespec ts;
    char msg[96];

    if (!qb_service_notify_enabled())
        return QB_OK;
    /* systemd 253+ compares this with the time it started the reload job. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading",
             (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
    return service_send(msg);
}

int qb_service_notify_stopping(void)
{
    return service_send_with_status("STOPPING=1", "stopping");
}

int qb_service_notify_status(const char *status)
{
    return service_send_with_status("", status ? status : "");
}

static void service_watchdog_tick(uv_timer_t *t)
{
    struct qb_service_watchdog *w = t->data;
    bool healthy = !w->health || w->health(w->arg);

    if (!healthy) {
        if (!w->withheld)
            QB_LOG_WARN(NULL, "unhealthy: withholding the systemd watchdog ping; systemd "
                              "restarts the bridge if this persists");
        w->withheld = true;
        return;
    }
    if (w->withheld)
        QB_LOG_INFO(NULL, "healthy again: systemd watchdog pings resumed");
    w->withheld = false;
    service_send("WATCHDOG=1");
}

int qb_service_watchdog_start(uv_loop_t *loop, qb_service_health_fn health, void *arg,
                              struct qb_service_watchdog **out)
{
    struct qb_service_watchdog *w;
    uint64_t usec = 0;

    *out = NULL;
    /* > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID (if set) is us. */
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return QB_OK;
    w = calloc(1, sizeof(*w));
    if (!w)
        return QB_ENOMEM;
    w->health = health;
    w->arg = arg;
    /* Half the interval, as sd_watchdog_enabled(3) advises: one late tick is not fatal. */
    w->interval_ms = usec / 2000u;
    if (w->interval_ms == 0)
        w->interval_ms = 1;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    /* First attempt at once, so a short WatchdogSec= cannot expire before the first tick. */
    uv_timer_start(&w->timer, service_watchdog_tick, 0, w->interval_ms);
    QB_LOG_INFO(NULL, "systemd watchdog: %" PRIu64 " ms, pinging every %" PRIu64 " ms while healthy",
                usec / 1000u, w->interval_ms);
    *out = w;
    return QB_OK;
}

uint64_t qb_service_watchdog_interval_ms(const struct qb_service_watchdog *w)
{
    return w ? w->interval_ms : 0;
}

void qb_service_watchdog_stop(struct qb_service_watchdog *w)
{
    if (w)
        uv_timer_stop(&w->timer);
}

static void service_watchdog_closed(uv_handle_t *h)
{
    free(h->data);
}

void qb_service_watchdog_close(struct qb_service_watchdog *w)
{
    if (!w)
        return;
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, service_watchdog_closed);
}
