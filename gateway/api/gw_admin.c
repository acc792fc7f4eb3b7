/* gw_admin.c -- the admin API: diagnostics, compaction
 *
 * Routes under /api/admin/, registered by `ferry serve` with the shared gw_app_t:
 *
 *   GET  /api/admin/diagnostics   replication health as JSON (gw_repl_diagnostics): slot,
 *                                 confirmed LSN, lag in bytes and seconds, wal_status,
 *                                 safe_wal_size, ops/s, storage size, buckets, rows
 *   POST /api/admin/compact       compact bucket storage now (MOVE/CLEAR, powersync-protocol
 *                                 §3.4); answers with what it did
 *
 * Both need "Authorization: Bearer <admin.token>"; without admin.token in the config the routes
 * answer 404. Compaction runs on the replicator thread (the only storage writer) as a queued task
 * (gw_repl_call); a worker thread waits for it so the loop thread never blocks. `ferry compact`
 * (cli/gw_cli_compact.c) POSTs to this route.
 */
#include "api/gw_api.h"
#include "base/gw_buf.h"
#include "base/gw_log.h"
#include "storage/gw_storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define COMPACT_WAIT_S 300

/* Whether req carries the admin token; sends 404/401 and returns 0 when not. */
static int admin_allowed(gw_app_t *app, h2o_req_t *req)
{
    const char *token = app->cfg->admin.token;
    if (token == NULL || token[0] == '\0') {
        gw_http_send_error(req, 404, "not_found", "the admin API is disabled (no admin.token)");
        return 0;
    }
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    const char *v = i >= 0 ? req->headers.entries[i].value.base : "";
    size_t len = i >= 0 ? req->headers.entries[i].value.len : 0;
    size_t tl = strlen(token);
    int ok = len == tl + 7 && strncasecmp(v, "Bearer ", 7) == 0;
    /* compare in constant time over the token's length */
    unsigned char diff = ok ? 0 : 1;
    for (size_t k = 0; k < tl; k++)
        diff |= (unsigned char)(ok ? v[7 + k] ^ token[k] : 0);
    if (diff != 0) {
        /* anyone can send these: at most one line per 10 s, counting the ones left out */
        static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
        unsigned long long suppressed;
        char path[300];
        if (gw_log_limit_take(&limit, &suppressed))
            gw_warn("admin", "rejected an admin request", "path=%s suppressed=%llu",
                    gw_log_qsn(req->path.base, req->path.len, path, sizeof(path)), suppressed);
        gw_http_send_error(req, 401, "unauthorized", "a valid admin token is required");
        return 0;
    }
    return 1;
}

static int on_diagnostics(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    if (!admin_allowed(app, req)) return 0;
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_puts(&b, "{\"data\":");
    gw_repl_diagnostics(app->repl, &b);
    gw_buf_puts(&b, "}");
    gw_http_send_json(req, 200, b.data, b.len);
    gw_buf_free(&b);
    return 0;
}

/* ---- compaction through the replicator ---- */

static int compact_run(gw_storage_t *st, void *arg, void *result, gw_err_t *err)
{
    (void)arg;
    return gw_storage_compact(st, result, err);
}

typedef struct compact_job {
    gw_job_t job;
    gw_app_t *app;
    h2o_req_t *req;
    int status; /* 200, 503, 504 */
    gw_storage_compact_stats_t stats;
    double ms;
} compact_job_t;

static void compact_job_run(gw_job_t *job, PGconn *conn)
{
    (void)conn;
    compact_job_t *j = (compact_job_t *)job;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = gw_repl_call(j->app->repl, compact_run, NULL, 0, &j->stats, sizeof(j->stats),
                          COMPACT_WAIT_S * 1000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    j->ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    j->status = rc == GW_ETIMEOUT ? 504 : rc != 0 ? 503 : 200;
}

static void compact_job_done(gw_job_t *job)
{
    compact_job_t *j = (compact_job_t *)job;
    if (j->status == 504) {
        gw_http_send_error(j->req, 504, "timeout",
                           "compaction is still running on the replicator; see its log line");
        return;
    }
    if (j->status != 200) {
        gw_http_send_error(j->req, 503, "unavailable",
                           "could not compact: the replicator is not streaming (see the log)");
        return;
    }
    gw_info("admin", "compacted bucket storage on request",
            "buckets=%llu moved=%llu cleared=%llu ops_before=%llu ops_after=%llu ms=%.0f",
            (unsigned long long)j->stats.buckets, (unsigned long long)j->stats.moved,
            (unsigned long long)j->stats.cleared, (unsigned long long)j->stats.ops_before,
            (unsigned long long)j->stats.ops_after, j->ms);
    char body[512];
    int n = snprintf(body, sizeof(body),
                     "{\"data\":{\"buckets\":%llu,\"moved\":%llu,\"cleared\":%llu,"
                     "\"ops_before\":%llu,\"ops_after\":%llu,\"target_op\":\"%llu\","
                     "\"ms\":%.1f}}",
                     (unsigned long long)j->stats.buckets, (unsigned long long)j->stats.moved,
                     (unsigned long long)j->stats.cleared, (unsigned long long)j->stats.ops_before,
                     (unsigned long long)j->stats.ops_after, (unsigned long long)j->stats.target,
                     j->ms);
    gw_http_send_json(j->req, 200, body, (size_t)n);
}

static int on_compact(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    if (!admin_allowed(app, req)) return 0;
    compact_job_t *j = h2o_mem_alloc_pool(&req->pool, sizeof(*j));
    memset(j, 0, sizeof(*j));
    j->app = app;
    j->req = req;
    j->job.run = compact_job_run;
    j->job.done = compact_job_done;
    gw_workers_submit(app->workers, req->conn->ctx, &j->job);
    return 0;
}

void gw_admin_register(gw_app_t *app)
{
    gw_http_admin_route(app->http, "/api/admin/diagnostics", "admin_diagnostics", GW_HTTP_GET,
                        on_diagnostics, app);
    gw_http_admin_route(app->http, "/api/admin/compact", "admin_compact", GW_HTTP_POST, on_compact,
                        app);
}
