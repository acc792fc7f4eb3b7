/* gw_metrics.c -- counters, readiness and Prometheus rendering (see gw_metrics.h)
 *
 * Request counts are a fixed [route][status] table of atomics: no locks and no allocation on the
 * request path. Readiness conditions are few and change rarely; a mutex guards their reasons.
 */
#include "base/gw_metrics.h"
#include "base/gw_err.h"
#include "base/gw_version.h"

#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define MAX_STATUS     600
#define MAX_COLLECTORS 16
#define MAX_READY      16

static struct {
    char names[GW_METRICS_MAX_ROUTES][32];
    _Atomic int nroutes;
    _Atomic uint64_t requests[GW_METRICS_MAX_ROUTES][MAX_STATUS];
    _Atomic int64_t open_conns;
    _Atomic uint64_t conns_total;
    struct timespec started;
    struct {
        gw_metrics_collector_fn fn;
        void *ud;
    } collectors[MAX_COLLECTORS];
    int ncollectors;
} M;

static struct {
    pthread_mutex_t lock;
    int n;
    struct {
        char name[48];
        int ready;
        char reason[512];
        gw_ready_fn fn; /* a live check: asked at every render instead of ready/reason */
        void *ud;
    } c[MAX_READY];
} R = {.lock = PTHREAD_MUTEX_INITIALIZER};

void gw_metrics_init(void)
{
    memset(&M, 0, sizeof(M));
    clock_gettime(CLOCK_MONOTONIC, &M.started);
    strcpy(M.names[0], "other");
    M.nroutes = 1;
    pthread_mutex_lock(&R.lock);
    R.n = 0;
    pthread_mutex_unlock(&R.lock);
}

int gw_metrics_route(const char *name)
{
    int n = atomic_load(&M.nroutes);
    for (int i = 0; i < n; i++)
        if (strcmp(M.names[i], name) == 0) return i;
    if (n >= GW_METRICS_MAX_ROUTES) return 0;
    snprintf(M.names[n], sizeof(M.names[n]), "%s", name);
    atomic_store(&M.nroutes, n + 1);
    return n;
}

void gw_metrics_request(int route, int status)
{
    if (route < 0 || route >= GW_METRICS_MAX_ROUTES) route = 0;
    if (status < 0 || status >= MAX_STATUS) status = 0;
    atomic_fetch_add_explicit(&M.requests[route][status], 1, memory_order_relaxed);
}

void gw_metrics_connections(int delta)
{
    atomic_fetch_add_explicit(&M.open_conns, delta, memory_order_relaxed);
    if (delta > 0) atomic_fetch_add_explicit(&M.conns_total, (uint64_t)delta, memory_order_relaxed);
}

int64_t gw_metrics_open_connections(void)
{
    return atomic_load(&M.open_conns);
}

double gw_metrics_uptime(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - M.started.tv_sec) +
           (double)(now.tv_nsec - M.started.tv_nsec) / 1e9;
}

void gw_metrics_add_collector(gw_metrics_collector_fn fn, void *ud)
{
    if (M.ncollectors < MAX_COLLECTORS) {
        M.collectors[M.ncollectors].fn = fn;
        M.collectors[M.ncollectors].ud = ud;
        M.ncollectors++;
    }
}

void gw_metrics_render(gw_buf_t *out)
{
    gw_buf_puts(out, "# HELP ferry_build_info Build of the running ferry.\n"
                     "# TYPE ferry_build_info gauge\n");
    gw_buf_printf(out, "ferry_build_info{version=\"%s\",revision=\"%s\"} 1\n", gw_version(),
                  gw_revision());
    gw_buf_puts(out, "# HELP ferry_uptime_seconds Seconds since ferry started.\n"
                     "# TYPE ferry_uptime_seconds gauge\n");
    gw_buf_printf(out, "ferry_uptime_seconds %.3f\n", gw_metrics_uptime());
    gw_buf_puts(out, "# HELP ferry_http_open_connections Open client connections.\n"
                     "# TYPE ferry_http_open_connections gauge\n");
    gw_buf_printf(out, "ferry_http_open_connections %lld\n", (long long)atomic_load(&M.open_conns));
    gw_buf_puts(out, "# HELP ferry_http_connections_total Client connections accepted.\n"
                     "# TYPE ferry_http_connections_total counter\n");
    gw_buf_printf(out, "ferry_http_connections_total %llu\n",
                  (unsigned long long)atomic_load(&M.conns_total));
    gw_buf_puts(out, "# HELP ferry_http_requests_total HTTP requests by route and status.\n"
                     "# TYPE ferry_http_requests_total counter\n");
    int n = atomic_load(&M.nroutes);
    for (int r = 0; r < n; r++) {
        for (int s = 0; s < MAX_STATUS; s++) {
            uint64_t v = atomic_load_explicit(&M.requests[r][s], memory_order_relaxed);
            if (v != 0)
                gw_buf_printf(out, "ferry_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                              M.names[r], s, (unsigned long long)v);
        }
    }
    gw_buf_puts(out, "# HELP ferry_ready Whether ferry is ready to serve (1) or not (0).\n"
                     "# TYPE ferry_ready gauge\n");
    gw_buf_t scratch = GW_BUF_INIT;
    gw_buf_printf(out, "ferry_ready %d\n", gw_ready_render(&scratch));
    gw_buf_free(&scratch);
    for (int i = 0; i < M.ncollectors; i++)
        M.collectors[i].fn(out, M.collectors[i].ud);
}

int gw_ready_register(const char *name, const char *reason)
{
    pthread_mutex_lock(&R.lock);
    int id = -1;
    if (R.n < MAX_READY) {
        id = R.n++;
        snprintf(R.c[id].name, sizeof(R.c[id].name), "%s", name);
        R.c[id].ready = 0;
        snprintf(R.c[id].reason, sizeof(R.c[id].reason), "%s", reason != NULL ? reason : "");
    }
    pthread_mutex_unlock(&R.lock);
    return id;
}

int gw_ready_register_fn(const char *name, gw_ready_fn fn, void *ud)
{
    int id = gw_ready_register(name, NULL);
    pthread_mutex_lock(&R.lock);
    if (id >= 0) {
        R.c[id].fn = fn;
        R.c[id].ud = ud;
    }
    pthread_mutex_unlock(&R.lock);
    return id;
}

void gw_ready_set(int id, int ready, const char *reason)
{
    pthread_mutex_lock(&R.lock);
    if (id >= 0 && id < R.n) {
        R.c[id].ready = ready;
        snprintf(R.c[id].reason, sizeof(R.c[id].reason), "%s",
                 ready || reason == NULL ? "" : reason);
    }
    pthread_mutex_unlock(&R.lock);
}

int gw_ready_render(gw_buf_t *out)
{
    pthread_mutex_lock(&R.lock);
    int all = 1;
    for (int i = 0; i < R.n; i++) {
        if (R.c[i].fn != NULL) {
            R.c[i].reason[0] = '\0';
            R.c[i].ready = R.c[i].fn(R.c[i].ud, R.c[i].reason, sizeof(R.c[i].reason)) != 0;
        }
        all &= R.c[i].ready;
    }
    gw_buf_printf(out, "{\"ready\":%s,\"checks\":{", all ? "true" : "false");
    for (int i = 0; i < R.n; i++) {
        if (i > 0) gw_buf_puts(out, ",");
        gw_buf_json_str(out, R.c[i].name);
        gw_buf_printf(out, ":{\"ready\":%s", R.c[i].ready ? "true" : "false");
        if (!R.c[i].ready) {
            gw_buf_puts(out, ",\"reason\":");
            gw_buf_json_str(out, R.c[i].reason);
        }
        gw_buf_puts(out, "}");
    }
    gw_buf_puts(out, "}}");
    pthread_mutex_unlock(&R.lock);
    return all;
}

/* ---- histograms ---- */

static const double hist_bounds_ms[GW_HIST_BUCKETS - 1] = {1, 2, 5, 10, 20, 50, 100, 250};

void gw_hist_observe(gw_hist_t *h, double ms)
{
    if (ms < 0) ms = 0;
    atomic_fetch_add(&h->count, 1);
    atomic_fetch_add(&h->sum_us, (uint64_t)(ms * 1000));
    int i = 0;
    while (i < GW_HIST_BUCKETS - 1 && ms > hist_bounds_ms[i])
        i++;
    atomic_fetch_add(&h->buckets[i], 1);
}

void gw_hist_since(gw_hist_t *h, const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    gw_hist_observe(h, (double)(now.tv_sec - since->tv_sec) * 1e3 +
                           (double)(now.tv_nsec - since->tv_nsec) / 1e6);
}

void gw_hist_render(gw_buf_t *out, const gw_hist_t *h, const char *name, const char *help)
{
    gw_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < GW_HIST_BUCKETS; i++) {
        cum += atomic_load(&h->buckets[i]);
        if (i < GW_HIST_BUCKETS - 1)
            gw_buf_printf(out, "%s_bucket{le=\"%g\"} %llu\n", name, hist_bounds_ms[i] / 1000,
                          (unsigned long long)cum);
        else
            gw_buf_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    gw_buf_printf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)atomic_load(&h->sum_us) / 1e6,
                  name, (unsigned long long)atomic_load(&h->count));
}
