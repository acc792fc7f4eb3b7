/* load_hist.h -- fixed-size latency histograms for the load harness (mergeable across processes)
 *
 * A load_hist_t is a plain array with no pointers, so it can live in memory shared between the
 * harness's processes and be merged by adding counts. Values are microseconds: exact below
 * 1,024 µs, then 512 sub-buckets per power of two (relative error under 0.2 %), up to 2^36 µs.
 * A load_coarse_t is a smaller one (quarter powers of two, ~19 % steps) for per-second series.
 */
#ifndef LOAD_HIST_H
#define LOAD_HIST_H

#include <stdint.h>

#define LOAD_HIST_BUCKETS   (1024 + 26 * 512)
#define LOAD_COARSE_BUCKETS 144

typedef struct load_hist {
    uint64_t count, sum, min, max;
    uint64_t b[LOAD_HIST_BUCKETS];
} load_hist_t;

typedef struct load_coarse {
    uint32_t count;
    uint32_t b[LOAD_COARSE_BUCKETS];
} load_coarse_t;

/** Record one value (µs) in h; values beyond the range count in the last bucket. */
void load_hist_add(load_hist_t *h, uint64_t v);

/** Add every count of src into dst. */
void load_hist_merge(load_hist_t *dst, const load_hist_t *src);

/** The value (µs, bucket's lower bound, exact max for q >= 1) at quantile q in [0,1]; 0 when empty.
 */
uint64_t load_hist_quantile(const load_hist_t *h, double q);

/** Record one value (µs) in a coarse histogram. */
void load_coarse_add(load_coarse_t *c, uint64_t v);

/** Add src into dst. */
void load_coarse_merge(load_coarse_t *dst, const load_coarse_t *src);

/** Approximate value (µs, bucket's upper bound) at quantile q; 0 when empty. */
uint64_t load_coarse_quantile(const load_coarse_t *c, double q);

#endif
