/* gw_wcp.c -- write checkpoints: GET /write-checkpoint2.json?client_id=…
 *
 * A client that uploaded its writes asks for a write checkpoint and waits until a sync checkpoint
 * carries it (powersync-protocol §2.7). Here: authenticate on the loop thread; on a worker read
 * pg_current_wal_lsn(), emit a non-transactional logical message (prefix "ferry") so replication
 * passes that position even on an idle database, and have the replicator store counter+1 for
 * "<sub>/<client_id>" with that LSN. The counter is visible to streams once replication has
 * committed a checkpoint at or past the LSN; the hook names the user key then.
 * Answer: {"data":{"write_checkpoint":"N"}} (a decimal string).
 */
#include "api/gw_api.h"
#include "pg/gw_pg.h"
#include "pg/gw_lsn.h"
#include "storage/gw_storage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the blocking create (worker thread) ---- */

/* What the replicator stores: a copy travels with the task (gw_repl_call). */
typedef struct wcp_arg {
    char user_key[512];
    uint64_t lsn;
} wcp_arg_t;

static int wcp_run(gw_storage_t *st, void *arg, void *result, gw_err_t *err)
{
    wcp_arg_t *a = arg;
    return gw_storage_write_checkpoint(st, a->user_key, a->lsn, result, err);
}

/*
 * Create a write checkpoint for user_key on a worker thread (conn from the worker): reads
 * pg_current_wal_lsn(), emits the replication marker, stores the counter through the replicator
 * and waits for it (at most until the job's deadline, postgres.timeout after the request).
 * Returns 0 and *counter, GW_EUNAVAIL, or GW_EPG.
 */
static int create_blocking(gw_app_t *app, gw_job_t *job, PGconn *conn, const char *user_key,
                           uint64_t *counter, gw_err_t *err)
{
    if (conn == NULL) return gw_err_set(err, GW_EUNAVAIL, "wcp", "postgres is not reachable");
    if (!gw_repl_ready(app->repl))
        return gw_err_set(err, GW_EUNAVAIL, "wcp", "replication is not ready yet");
    PGresult *res = gw_pg_query(conn,
                                "SELECT pg_current_wal_lsn()::text, "
                                "pg_logical_emit_message(false, 'ferry', 'write-checkpoint')::text",
                                err);
    if (res == NULL) return GW_EPG;
    uint64_t lsn = 0;
    gw_lsn_parse(PQgetvalue(res, 0, 0), &lsn);
    PQclear(res);
    wcp_arg_t a = {.lsn = lsn};
    snprintf(a.user_key, sizeof(a.user_key), "%s", user_key);
    uint64_t value = 0;
    int left = gw_job_remaining_ms(job);
    int rc = left <= 0
                 ? GW_ETIMEOUT
                 : gw_repl_call(app->repl, wcp_run, &a, sizeof(a), &value, sizeof(value), left);
    if (rc == GW_ETIMEOUT)
        return gw_err_set(err, GW_EUNAVAIL, "wcp", "the replicator did not answer in time");
    if (rc != 0) return gw_err_set(err, GW_EUNAVAIL, "wcp", "could not store the write checkpoint");
    *counter = value;
    return 0;
}

/* ---- the route ---- */

typedef struct wcp_job wcp_job_t;

/* Lives in req->pool: if h2o frees the request while a worker runs the job, its dispose
 * callback tells the job not to answer. */
typedef struct wcp_guard {
    wcp_job_t *j;
} wcp_guard_t;

/* malloc'd, not in req->pool, which may go away while the worker runs */
struct wcp_job {
    gw_job_t job;
    gw_app_t *app;
    h2o_req_t *req; /* NULL once the request was freed */
    wcp_guard_t *guard;
    char user_key[512];
    uint64_t counter;
    int rc;
    char message[sizeof(((gw_err_t *)0)->message)];
};

static void wcp_guard_dispose(void *p)
{
    wcp_guard_t *g = p;
    if (g->j != NULL) g->j->req = NULL;
}

static void wcp_job_run(gw_job_t *job, PGconn *conn)
{
    wcp_job_t *j = (wcp_job_t *)job;
    gw_err_t err;
    gw_err_clear(&err);
    j->rc = create_blocking(j->app, job, conn, j->user_key, &j->counter, &err);
    snprintf(j->message, sizeof(j->message), "%s", err.message);
}

static void wcp_job_done(gw_job_t *job)
{
    wcp_job_t *j = (wcp_job_t *)job;
    if (j->req == NULL) {
        free(j); /* the client went away */
        return;
    }
    j->guard->j = NULL;
    if (j->rc != 0) {
        h2o_add_header(&j->req->pool, &j->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                       H2O_STRLIT("2"));
        gw_http_send_error(j->req, 503, "unavailable", "%s", j->message);
        free(j);
        return;
    }
    char body[128];
    int n = snprintf(body, sizeof(body), "{\"data\":{\"write_checkpoint\":\"%llu\"}}",
                     (unsigned long long)j->counter);
    gw_http_send_json(j->req, 200, body, (size_t)n);
    free(j);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The value of query parameter name in req's path ("" when absent), URL-decoded into buf. */
static int query_param(h2o_req_t *req, const char *name, char *buf, size_t len)
{
    if (req->query_at == SIZE_MAX) return 0;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    size_t nl = strlen(name);
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp != NULL ? amp : end;
        if ((size_t)(stop - q) > nl && memcmp(q, name, nl) == 0 && q[nl] == '=') {
            size_t o = 0;
            for (const char *p = q + nl + 1; p < stop; p++) {
                if (o + 1 >= len) return -1;
                int hi, lo;
                if (*p == '%' && stop - p >= 3 && (hi = hex_digit(p[1])) >= 0 &&
                    (lo = hex_digit(p[2])) >= 0) {
                    buf[o++] = (char)(hi * 16 + lo);
                    p += 2;
                } else {
                    buf[o++] = *p == '+' ? ' ' : *p;
                }
            }
            buf[o] = '\0';
            return 1;
        }
        q = stop + 1;
    }
    return 0;
}

static int on_write_checkpoint(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    auth_token_t *tok;
    if (gw_app_authenticate(app, req, &tok) != 0) return 0;
    char client_id[256];
    int found = query_param(req, "client_id", client_id, sizeof(client_id));
    if (found <= 0 || client_id[0] == '\0') {
        auth_token_release(tok);
        gw_http_send_error(req, 400, "bad_request",
                           found < 0 ? "client_id is too long" : "client_id is required");
        return 0;
    }
    wcp_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->app = app;
    j->req = req;
    j->guard = h2o_mem_alloc_shared(&req->pool, sizeof(wcp_guard_t), wcp_guard_dispose);
    j->guard->j = j;
    gw_app_user_key(tok->sub, client_id, j->user_key, sizeof(j->user_key));
    auth_token_release(tok);
    j->job.run = wcp_job_run;
    j->job.done = wcp_job_done;
    gw_workers_submit(app->workers, req->conn->ctx, &j->job);
    return 0;
}

void gw_wcp_register(gw_app_t *app)
{
    gw_http_route(app->http, "/write-checkpoint2.json", "write_checkpoint", GW_HTTP_GET,
                  on_write_checkpoint, app);
}
