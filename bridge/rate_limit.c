/*
 * rate_limit.c - token bucket and log line limiter (see rate_limit.h).
 */
#include "rate_limit.h"

#include <time.h>

void qb_token_bucket_init(struct qb_token_bucket *b, double rate, double burst, uint64_t now_ms)
{
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->last_ms = now_ms;
}

bool qb_token_bucket_take(struct qb_token_bucket *b, uint64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
    if (b->tokens < 1.0)
        return false;
    b->tokens -= 1.0;
    return true;
}

void qb_log_limit_init(struct qb_log_limit *l, uint32_t first, uint64_t interval_ms)
{
    *l = (struct qb_log_limit){.first = first, .interval_ms = interval_ms};
}

bool qb_log_limit_allow(struct qb_log_limit *l, uint64_t now_ms, uint64_t *suppressed)
{
    if (suppressed)
        *suppressed = 0;
    if (!l->started || now_ms - l->window_start_ms >= l->interval_ms) {
        if (suppressed)
            *suppressed = l->suppressed;
        l->suppressed = 0;
        l->started = true;
        l->window_start_ms = now_ms;
        l->in_window = 0;
    }
    if (l->in_window < l->first) {
        l->in_window++;
        return true;
    }
    l->suppressed++;
    return false;
}

uint64_t qb_monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t qb_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned attempts, uint64_t *rng)
{
    uint64_t delay = initial_ms;

    for (unsigned i = 0; i < attempts && delay < max_ms; i++)
        delay *= 2;
    if (delay > max_ms)
        delay = max_ms;
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    return delay / 2 + (delay > 1 ? (*rng * 2685821657736338717ull) % (delay / 2 + 1) : 0);
}
