/* gw_admin.c -- the admin API (diagnostics, compaction) and `ferry compact`
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
 * answer 404. Compaction runs on the replicator thread (the only storage writer) as a queued task;
 * a worker thread waits for it so the loop thread never blocks.
 *
 * `ferry compact --config FILE` reads the same config and POSTs to the running server over
 * loopback with libcurl.
 */
#include "api/gw_api.h"
#include "base/gw_buf.h"
#include "cli/gw_cli.h"
#include "base/gw_log.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
        gw_warn("admin", "rejected an admin request", "path=%.*s", (int)req->path.len,
                req->path.base);
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

typedef struct compact_wait {
    gw_repl_task_t task;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs, finished, rc;
    gw_storage_compact_stats_t stats;
} compact_wait_t;

static void compact_unref(compact_wait_t *w)
{
    pthread_mutex_lock(&w->lock);
    int last = --w->refs == 0;
    pthread_mutex_unlock(&w->lock);
    if (last) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        free(w);
    }
}

static int compact_run(gw_storage_t *st, void *ud, gw_err_t *err)
{
    compact_wait_t *w = ud;
    return gw_storage_compact(st, &w->stats, err);
}

static void compact_done(void *ud, int rc)
{
    compact_wait_t *w = ud;
    pthread_mutex_lock(&w->lock);
    w->finished = 1;
    w->rc = rc;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    compact_unref(w);
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
    compact_wait_t *w = gw_xcalloc(1, sizeof(*w));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->refs = 2;
    w->task.run = compact_run;
    w->task.done = compact_done;
    w->task.ud = w;
    struct timespec t0, t1, deadline;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    gw_repl_submit(j->app->repl, &w->task);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += COMPACT_WAIT_S;
    pthread_mutex_lock(&w->lock);
    while (!w->finished)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &deadline) == ETIMEDOUT) break;
    int finished = w->finished, rc = w->rc;
    j->stats = w->stats;
    pthread_mutex_unlock(&w->lock);
    compact_unref(w);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    j->ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    j->status = !finished ? 504 : rc != 0 ? 503 : 200;
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
    gw_http_route(app->http, "/api/admin/diagnostics", "admin_diagnostics", GW_HTTP_GET,
                  on_diagnostics, app);
    gw_http_route(app->http, "/api/admin/compact", "admin_compact", GW_HTTP_POST, on_compact, app);
}

/* ---- ferry compact ---- */

static size_t collect(char *data, size_t size, size_t n, void *ud)
{
    gw_buf_append(ud, data, size * n);
    return size * n;
}

static void compact_usage(FILE *out)
{
    fprintf(out, "usage: ferry compact --config FILE\n"
                 "  asks the running ferry (http.listen of FILE) to compact bucket storage now;\n"
                 "  needs admin.token in FILE\n");
}

int gw_cli_compact(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"help", no_argument, NULL, 'h'}, {0}};
    const char *config = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config = optarg;
            break;
        case 'h':
            compact_usage(stdout);
            return 0;
        default:
            compact_usage(stderr);
            return 2;
        }
    }
    const char *path = gw_cli_config_path(config);
    if (path == NULL || optind < argc) {
        compact_usage(stderr);
        return 2;
    }
    gw_config_t cfg;
    gw_err_t err;
    char msg[1024];
    if (gw_config_load(&cfg, path, &err) != 0) {
        fprintf(stderr, "ferry compact: %s\n", gw_err_format(&err, msg, sizeof(msg)));
        return 1;
    }
    if (cfg.admin.token == NULL || cfg.admin.token[0] == '\0') {
        fprintf(stderr, "ferry compact: %s has no admin.token, so the admin API is disabled\n",
                path);
        gw_config_free(&cfg);
        return 1;
    }
    char host[256], url[512], auth[1024];
    int port;
    if (gw_config_parse_listen(cfg.http.listen, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ferry compact: cannot parse http.listen \"%s\"\n", cfg.http.listen);
        gw_config_free(&cfg);
        return 1;
    }
    /* a server listening on every address is reached over loopback */
    const char *h = strcmp(host, "0.0.0.0") == 0 || host[0] == '\0' ? "127.0.0.1"
                    : strcmp(host, "::") == 0                       ? "::1"
                                                                    : host;
    snprintf(url, sizeof(url),
             strchr(h, ':') != NULL ? "http://[%s]:%d/api/admin/compact"
                                    : "http://%s:%d/api/admin/compact",
             h, port);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg.admin.token);
    gw_config_free(&cfg);
    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        fprintf(stderr, "ferry compact: could not initialise libcurl\n");
        return 1;
    }
    gw_buf_t body = GW_BUF_INIT;
    struct curl_slist *hdrs = curl_slist_append(NULL, auth);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)COMPACT_WAIT_S + 30);
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(curl);
    int rc = 0;
    if (cc != CURLE_OK) {
        fprintf(stderr, "ferry compact: could not reach %s: %s\n", url, curl_easy_strerror(cc));
        rc = 1;
    } else if (status != 200) {
        fprintf(stderr, "ferry compact: the server answered %ld: %.*s\n", status, (int)body.len,
                body.data != NULL ? body.data : "");
        rc = 1;
    } else {
        printf("%.*s\n", (int)body.len, body.data != NULL ? body.data : "");
    }
    gw_buf_free(&body);
    return rc;
}
