/*
 * rate_limit.h - a token bucket, and a limiter for repetitive log lines.
 *
 * Both are plain structs driven by a clock the caller passes in (ms, any
 * monotonic origin), so they cost no timer and unit tests need no sleeping.
 */
#ifndef QB_RATE_LIMIT_H
#define QB_RATE_LIMIT_H

#include <stdbool.h>
#include <stdint.h>

/* rate tokens a second, at most burst saved up; starts full. */
struct qb_token_bucket {
    double tokens;
    double rate;
    double burst;
    uint64_t last_ms;
};

void qb_token_bucket_init(struct qb_token_bucket *b, double rate, double burst, uint64_t now_ms);

/* Takes one token if there is one. Returns true when taken. */
bool qb_token_bucket_take(struct qb_token_bucket *b, uint64_t now_ms);

/*
 * Log lines of one kind: the first `first` of each interval_ms are logged,
 * the rest counted; the first line of a later interval reports how many were
 * suppressed.
 */
struct qb_log_limit {
    uint32_t first;
    uint64_t interval_ms;
    uint64_t window_start_ms;
    uint32_t in_window;
    uint64_t suppressed;
    bool started;
};

void qb_log_limit_init(struct qb_log_limit *l, uint32_t first, uint64_t interval_ms);

/*
 * Returns true when a line may be logged now. *suppressed (may be NULL) is set
 * to the number of lines suppressed since the last report when one is due
 * (the caller logs it as a summary), else 0.
 */
bool qb_log_limit_allow(struct qb_log_limit *l, uint64_t now_ms, uint64_t *suppressed);

/* Monotonic milliseconds (CLOCK_MONOTONIC). */
uint64_t qb_monotonic_ms(void);

/*
 * A reconnect delay: initial_ms doubled attempts times, at most max_ms, with
 * equal jitter (half fixed, half random), so a storm of sessions spreads out
 * but never hammers. *rng is the caller's xorshift64* state (not 0); jitter
 * only needs to spread retries, not be unpredictable.
 */
uint64_t qb_backoff_ms(uint64_t initial_ms, uint64_t max_ms, unsigned attempts, uint64_t *rng);

#endif
