/* gw_metrics.h -- process-wide counters, readiness conditions and the Prometheus text
 *
 * Counters are lock-free atomics, safe from any thread. Routes are registered once at start
 * (before threads run) and get a small index used on the hot path. Readiness is the AND of named
 * conditions that modules register and update (replication: "consistent checkpoint", …); with no
 * condition registered the gateway is ready. Modules add their own metric lines through
 * collectors called while /metrics renders.
 */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include "base/gw_buf.h"

#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define GW_METRICS_MAX_ROUTES 32

/** A latency histogram with fixed bounds (1, 2, 5, 10, 20, 50, 100, 250 ms, +Inf); lock-free,
 * safe from any thread; zero-initialized is empty. */
#define GW_HIST_BUCKETS 9
typedef struct gw_hist {
    _Atomic uint64_t count, sum_us;
    _Atomic uint64_t buckets[GW_HIST_BUCKETS];
} gw_hist_t;

/** Record one observation of ms milliseconds. */
void gw_hist_observe(gw_hist_t *h, double ms);

/** Record the time from since (CLOCK_MONOTONIC) to now. */
void gw_hist_since(gw_hist_t *h, const struct timespec *since);

/** Append h as Prometheus histogram `name` (in seconds) with its HELP text. */
void gw_hist_render(gw_buf_t *out, const gw_hist_t *h, const char *name, const char *help);

/** Reset all counters and record the start time (call once at start). */
void gw_metrics_init(void);

/** Register a route name ("liveness"); returns its index, or the "other" index when full. */
int gw_metrics_route(const char *name);

/** Count one finished request on route with HTTP status. */
void gw_metrics_request(int route, int status);

/** Add delta (+1/-1) to the number of open client connections. */
void gw_metrics_connections(int delta);

/** Current number of open client connections. */
int64_t gw_metrics_open_connections(void);

/** Seconds since gw_metrics_init(). */
double gw_metrics_uptime(void);

typedef void (*gw_metrics_collector_fn)(gw_buf_t *out, void *ud);

/** Add a collector that appends Prometheus text lines at render time (register before serving). */
void gw_metrics_add_collector(gw_metrics_collector_fn fn, void *ud);

/** Append the whole Prometheus text exposition to out. */
void gw_metrics_render(gw_buf_t *out);

/** Register a readiness condition (initially not ready with reason); returns its id. */
int gw_ready_register(const char *name, const char *reason);

/** A live readiness condition: returns non-zero when ready, else writes why into reason (len
 *  bytes). Called at every render under the registry's lock: it must be quick, must not block
 *  and must not call gw_ready_*. */
typedef int (*gw_ready_fn)(void *ud, char *reason, size_t len);

/** Register a live condition (fn and ud outlive the registry's use); returns its id. */
int gw_ready_register_fn(const char *name, gw_ready_fn fn, void *ud);

/** Set condition id to ready (reason ignored) or not ready with a reason (copied). */
void gw_ready_set(int id, int ready, const char *reason);

/** Append {"ready":bool,"checks":{name:{"ready":…,"reason":…}}} to out; returns 1 when ready. */
int gw_ready_render(gw_buf_t *out);

#endif
