/* gw_wcp.c -- write checkpoints: GET /write-checkpoint2.json, POST /sync/checkpoint-request
 *
 * A client that uploaded its writes asks for a write checkpoint and waits until a sync checkpoint
 * carries it (powersync-protocol §2.7). Here: authenticate on the loop thread; on a worker read
 * pg_current_wal_lsn(), emit a non-transactional logical message (prefix "ferry") so replication
 * passes that position even on an idle database, and have the replicator store counter+1 for
 * the client's user key (gw_app_user_key: the sub escaped, '/', the client_id) with that LSN. The
 * counter is visible to streams once replication has committed a checkpoint at or past the LSN; the
 * hook names the user key then. Answer: {"data":{"write_checkpoint":"N"}} (a decimal string).
 *
 * In `checkpointMode: 'requests'` (§1.3) the client picks the ids itself: POST
 * /sync/checkpoint-request {"client_id","checkpoint_request_id":"N"} (1 .. 2^63-1) stores N for
 * the same key only if it is larger than what is stored (with the current LSN, so it is reported
 * as `write_checkpoint` once replication passes it); a stale or repeated id changes nothing.
 * Answer: {"data":{"checkpoint_request_id":"M"}}, M the id stored now (larger than N when the
 * request was stale). Both share one value per key, as in the PowerSync service.
 */
#include "api/gw_api.h"
#include "pg/gw_pg.h"
#include "pg/gw_lsn.h"
#include "storage/gw_storage.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the blocking create (worker thread) ---- */

/* What the replicator stores: a copy travels with the task (gw_repl_call). */
typedef struct wcp_arg {
    char user_key[GW_USER_KEY_MAX];
    uint64_t lsn;
    uint64_t requested; /* 0: a write checkpoint; else a client's checkpoint request id */
} wcp_arg_t;

static int wcp_run(gw_storage_t *st, void *arg, void *result, gw_err_t *err)
{
    wcp_arg_t *a = arg;
    if (a->requested > 0)
        return gw_storage_request_checkpoint(st, a->user_key, a->lsn, a->requested, result, err);
    return gw_storage_write_checkpoint(st, a->user_key, a->lsn, result, err);
}

/*
 * Create a write checkpoint for user_key on a worker thread (conn from the worker): reads
 * pg_current_wal_lsn(), emits the replication marker, stores the counter through the replicator
 * and waits for it (at most until the job's deadline, postgres.timeout after the request).
 * Returns 0 and *counter, GW_EUNAVAIL, or GW_EPG.
 */
static int create_blocking(gw_app_t *app, gw_job_t *job, PGconn *conn, const char *user_key,
                           uint64_t requested, uint64_t *counter, gw_err_t *err)
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
    wcp_arg_t a = {.lsn = lsn, .requested = requested};
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
    char user_key[GW_USER_KEY_MAX];
    uint64_t requested; /* a checkpoint request id (POST /sync/checkpoint-request), or 0 */
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
    j->rc = create_blocking(j->app, job, conn, j->user_key, j->requested, &j->counter, &err);
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
    int n = snprintf(body, sizeof(body), "{\"data\":{\"%s\":\"%llu\"}}",
                     j->requested ? "checkpoint_request_id" : "write_checkpoint",
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
    char client_id[GW_CLIENT_ID_MAX + 1], user_key[GW_USER_KEY_MAX];
    int found = query_param(req, "client_id", client_id, sizeof(client_id));
    const char *problem = found < 0 ? "client_id is longer than 200 bytes"
                          : found == 0 || client_id[0] == '\0' ? "client_id is required"
                          : gw_app_user_key(tok->sub, client_id, user_key, sizeof(user_key)) != 0
                              ? "the token's subject is too long"
                              : NULL;
    auth_token_release(tok);
    if (problem != NULL) {
        gw_http_send_error(req, 400, "bad_request", "%s", problem);
        return 0;
    }
    wcp_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->app = app;
    j->req = req;
    j->guard = h2o_mem_alloc_shared(&req->pool, sizeof(wcp_guard_t), wcp_guard_dispose);
    j->guard->j = j;
    snprintf(j->user_key, sizeof(j->user_key), "%s", user_key);
    j->job.run = wcp_job_run;
    j->job.done = wcp_job_done;
    gw_workers_submit(app->workers, req->conn->ctx, &j->job);
    return 0;
}

/* POST /sync/checkpoint-request {"client_id": "...", "checkpoint_request_id": "N"} */
static int on_checkpoint_request(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    auth_token_t *tok;
    if (gw_app_authenticate(app, req, &tok) != 0) return 0;
    json_error_t jerr;
    json_t *body =
        req->entity.base != NULL ? json_loadb(req->entity.base, req->entity.len, 0, &jerr) : NULL;
    json_t *jc = body ? json_object_get(body, "client_id") : NULL;
    json_t *jid = body ? json_object_get(body, "checkpoint_request_id") : NULL;
    uint64_t id = 0;
    int ok = json_is_string(jc) && json_string_length(jc) <= GW_CLIENT_ID_MAX;
    if (ok && json_is_string(jid)) {
        const char *t = json_string_value(jid);
        char *end;
        errno = 0;
        unsigned long long v = strtoull(t, &end, 10);
        ok = *t >= '0' && *t <= '9' && *end == '\0' && errno == 0 && v <= 9223372036854775807ULL;
        id = v;
    } else if (ok && json_is_integer(jid)) {
        id = json_integer_value(jid) > 0 ? (uint64_t)json_integer_value(jid) : 0;
    } else {
        ok = 0;
    }
    char user_key[GW_USER_KEY_MAX];
    if (!ok || id == 0) {
        auth_token_release(tok);
        json_decref(body);
        gw_http_send_error(req, 400, "bad_request",
                           "expected {\"client_id\": \"...\" (at most %d bytes), "
                           "\"checkpoint_request_id\": \"N\"} with N between 1 and "
                           "9223372036854775807",
                           GW_CLIENT_ID_MAX);
        return 0;
    }
    if (gw_app_user_key(tok->sub, json_string_value(jc), user_key, sizeof(user_key)) != 0) {
        auth_token_release(tok);
        json_decref(body);
        gw_http_send_error(req, 400, "bad_request", "the token's subject is too long");
        return 0;
    }
    wcp_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->app = app;
    j->req = req;
    j->requested = id;
    j->guard = h2o_mem_alloc_shared(&req->pool, sizeof(wcp_guard_t), wcp_guard_dispose);
    j->guard->j = j;
    snprintf(j->user_key, sizeof(j->user_key), "%s", user_key);
    auth_token_release(tok);
    json_decref(body);
    j->job.run = wcp_job_run;
    j->job.done = wcp_job_done;
    gw_workers_submit(app->workers, req->conn->ctx, &j->job);
    return 0;
}

void gw_wcp_register(gw_app_t *app)
{
    gw_http_route(app->http, "/sync/checkpoint-request", "checkpoint_request", GW_HTTP_POST,
                  on_checkpoint_request, app);
    gw_http_route(app->http, "/write-checkpoint2.json", "write_checkpoint", GW_HTTP_GET,
                  on_write_checkpoint, app);
}
