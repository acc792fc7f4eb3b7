/* load_hist.c -- fixed-size latency histograms for the load harness
 *
 * See load_hist.h. No allocation: the caller owns the struct (often in shared memory).
 */
#include "load_hist.h"

#include <math.h>

static unsigned ilog2(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

static unsigned hist_index(uint64_t v)
{
    if (v < 1024) return (unsigned)v;
    unsigned e = ilog2(v); /* >= 10 */
    if (e >= 36) return LOAD_HIST_BUCKETS - 1;
    unsigned sub = (unsigned)((v >> (e - 9)) & 511);
    return 1024 + (e - 10) * 512 + sub;
}

static uint64_t hist_value(unsigned i)
{
    if (i < 1024) return i;
    unsigned e = (i - 1024) / 512 + 10, sub = (i - 1024) % 512;
    return ((uint64_t)(512 + sub)) << (e - 9);
}

void load_hist_add(load_hist_t *h, uint64_t v)
{
    if (h->count == 0 || v < h->min) h->min = v;
    if (v > h->max) h->max = v;
    h->count++;
    h->sum += v;
    h->b[hist_index(v)]++;
}

void load_hist_merge(load_hist_t *dst, const load_hist_t *src)
{
    if (src->count == 0) return;
    if (dst->count == 0 || src->min < dst->min) dst->min = src->min;
    if (src->max > dst->max) dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
    for (unsigned i = 0; i < LOAD_HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
}

uint64_t load_hist_quantile(const load_hist_t *h, double q)
{
    if (h->count == 0) return 0;
    if (q >= 1.0) return h->max;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count), seen = 0;
    if (rank == 0) rank = 1;
    for (unsigned i = 0; i < LOAD_HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v < h->min ? h->min : (v > h->max ? h->max : v);
        }
    }
    return h->max;
}

static unsigned coarse_index(uint64_t v)
{
    if (v < 2) return 0;
    unsigned i = (unsigned)(4.0 * log2((double)v));
    return i >= LOAD_COARSE_BUCKETS ? LOAD_COARSE_BUCKETS - 1 : i;
}

void load_coarse_add(load_coarse_t *c, uint64_t v)
{
    c->count++;
    c->b[coarse_index(v)]++;
}

void load_coarse_merge(load_coarse_t *dst, const load_coarse_t *src)
{
    dst->count += src->count;
    for (unsigned i = 0; i < LOAD_COARSE_BUCKETS; i++)
        dst->b[i] += src->b[i];
}

uint64_t load_coarse_quantile(const load_coarse_t *c, double q)
{
    if (c->count == 0) return 0;
    uint64_t rank = (uint64_t)ceil(q * c->count), seen = 0;
    if (rank == 0) rank = 1;
    for (unsigned i = 0; i < LOAD_COARSE_BUCKETS; i++) {
        seen += c->b[i];
        if (seen >= rank) return (uint64_t)pow(2.0, (i + 1) / 4.0);
    }
    return (uint64_t)pow(2.0, LOAD_COARSE_BUCKETS / 4.0);
}
