/*
 * probe_percentiles.h - the latency percentiles kafka_probe and mqtt_probe
 * print: nanosecond samples sorted in place, read at a quantile in ms.
 */
#ifndef QB_PROBE_PERCENTILES_H
#define QB_PROBE_PERCENTILES_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

static inline int probe_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Sorts the n samples of v in place (before probe_pct_ms). */
static inline void probe_sort_ns(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), probe_cmp_u64);
}

/* The sample at quantile q of the sorted v, in ms; -1 without samples. */
static inline double probe_pct_ms(const uint64_t *v, size_t n, double q)
{
    return n ? (double)v[(size_t)(q * (double)(n - 1) + 0.5)] / 1e6 : -1.0;
}

#endif
