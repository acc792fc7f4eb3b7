/* gw_write.c -- write-back: POST /api/write applies a client's queued writes to Postgres
 *
 * The body is the PowerSync CRUD batch: {"client_id":…,"batch":[{"op_id","op","type","id",
 * "data","old","metadata"},…]} ("old" and "metadata" feed the merge strategies). The loop thread
 * only authenticates, copies the body as sent (compact: a queued batch costs its size, not a parsed
 * tree) and admits it to the scheduler below; a batch that has to wait gives h2o's input buffer
 * back at once (gw_http_release_body), so a queued batch is held once. A worker (gw_worker.h)
 * parses it and checks the shape (400 when it is not a batch, 413 past write_back.max_ops_per_batch
 * ops), applies it in one Postgres transaction and builds the per-op results; done() answers on the
 * request's loop thread. So a loop thread never spends more than a memcpy on a batch, whatever its
 * size.
 *
 * (gw_write_batch.c applies a batch: its machine is drawn there; gw_write_stmt.c prepares the
 * statements each worker connection needs.)
 *
 * Fairness (one user must not starve the others). Each user (token sub) has a queue; a batch
 * is QUEUED there, then RUNNING on a worker, then answered:
 *
 *      on_write --admit--> QUEUED --dispatch()--> RUNNING --batch_done()--> answered, freed
 *                            | the client went away (guard_dispose): dropped, never applied
 *
 * dispatch() keeps at most postgres.pool_size batches running and picks, among users with a
 * queued batch, the one with the fewest running, and among those the one served longest ago (a
 * user new to the queue first). A user with nothing running is therefore served at the next free
 * worker: another user's queue delays it by at most the batch a worker is busy with. Admission: at
 * most write_back.max_batches_per_user batches queued or running per user (429 with Retry-After
 * past it) and max_inflight in all (16 per worker connection, at least 64; 503 with Retry-After).
 * Every statement of a batch runs under write_back.statement_timeout, the whole batch under
 * write_back.batch_timeout (gw_write_batch.c, invariant 5).
 *
 * Start-up: statements are prepared once per worker connection (gw__write_prepare_conn;
 * per-thread state, since a worker owns its connection). A start-up job does the same on the first
 * worker connection, creates ferry's own tables when missing, and holds the readiness condition
 * "write rules" until every write-rule statement was accepted by Postgres; a rejected one is
 * reported with its position in the rules file.
 */
#include "api/gw_write_int.h"
#include "base/gw_log.h"
#include "base/gw_map.h"
#include "base/gw_metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ---- module state ---------------------------------------------------------------------- */

static const double HIST_LE[HIST_N] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};

const char *const gw__write_status_names[ST_N] = {"applied", "duplicate", "rejected", "stale"};

write_mod_t gw__write_mod = {
    .ready_id = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static double elapsed_s(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void observe(double s)
{
    size_t i = 0;
    while (i < HIST_N && s > HIST_LE[i])
        i++;
    atomic_fetch_add(&gw__write_mod.hist[i], 1);
    atomic_fetch_add(&gw__write_mod.hist_sum_us, (uint_fast64_t)(s * 1e6));
}

/* Free b and everything it owns. */
static void batch_free(wbatch_t *b)
{
    free(b->raw);
    json_decref(b->body);
    free(b->user);
    free(b->jwt);
    free(b->params);
    gw_buf_free(&b->out);
    for (size_t i = 0; b->ops != NULL && i < b->nops; i++) {
        gw__write_op_reset(&b->ops[i]);
        json_decref(b->ops[i].ignored);
    }
    free(b->ops);
    free(b);
}

/* ---- the scheduler: a queue per user, fair dispatch to the workers ------------------------ */

typedef struct wuser {
    char *sub;
    wbatch_t *head, *tail; /* QUEUED batches, oldest first */
    size_t queued, running;
    uint64_t served;           /* sched.seq when a batch of this user last started; 0: never */
    struct wuser *prev, *next; /* the ready list (users with queued batches) */
    int ready;
} wuser_t;

static struct {
    pthread_mutex_t lock;
    gw_map_t users; /* sub -> wuser_t* (users with batches queued or running) */
    wuser_t ring;   /* anchor of the ready list (users with queued batches) */
    size_t running, max_running, max_per_user;
    uint64_t seq; /* batches started */
} sched = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void ring_unlink(wuser_t *u)
{
    if (!u->ready) return;
    u->prev->next = u->next;
    u->next->prev = u->prev;
    u->ready = 0;
}

static void ring_append(wuser_t *u)
{
    if (u->ready) return;
    u->prev = sched.ring.prev;
    u->next = &sched.ring;
    sched.ring.prev->next = u;
    sched.ring.prev = u;
    u->ready = 1;
}

static void user_release_locked(wuser_t *u)
{
    if (u->queued > 0 || u->running > 0) return;
    ring_unlink(u);
    gw_map_del(&sched.users, u->sub);
    free(u->sub);
    free(u);
}

static void batch_job_run(gw_job_t *job, PGconn *conn);
static void batch_done(gw_job_t *job);

/* Start queued batches while a worker is free; the scheduler lock is held. */
static void dispatch_locked(void)
{
    while (sched.running < sched.max_running) {
        wuser_t *best = NULL;
        for (wuser_t *u = sched.ring.next; u != &sched.ring; u = u->next)
            if (best == NULL || u->running < best->running ||
                (u->running == best->running && u->served < best->served))
                best = u;
        if (best == NULL) return;
        wbatch_t *b = best->head;
        best->head = b->qnext;
        if (best->head == NULL) best->tail = NULL;
        best->queued--;
        best->running++;
        best->served = ++sched.seq;
        sched.running++;
        if (best->queued == 0) ring_unlink(best);
        b->state = BATCH_RUNNING;
        b->job.run = batch_job_run;
        b->job.done = batch_done;
        gw_workers_submit(gw__write_mod.app->workers, b->ctx, &b->job);
    }
}

/* Admit b for its user: 0 (queued, maybe already running), 429 or 503 (not admitted). */
static int admit(wbatch_t *b)
{
    pthread_mutex_lock(&sched.lock);
    wuser_t *u = gw_map_get(&sched.users, b->user);
    if (u != NULL && u->queued + u->running >= sched.max_per_user) {
        pthread_mutex_unlock(&sched.lock);
        return 429;
    }
    if (atomic_fetch_add(&gw__write_mod.inflight, 1) >= gw__write_mod.max_inflight) {
        atomic_fetch_sub(&gw__write_mod.inflight, 1);
        pthread_mutex_unlock(&sched.lock);
        return 503;
    }
    if (u == NULL) {
        u = gw_xcalloc(1, sizeof(*u));
        u->sub = gw_xstrdup(b->user);
        gw_map_put(&sched.users, u->sub, u);
    }
    b->owner = u;
    b->state = BATCH_QUEUED;
    if (u->tail != NULL)
        u->tail->qnext = b;
    else
        u->head = b;
    u->tail = b;
    u->queued++;
    ring_append(u);
    dispatch_locked();
    pthread_mutex_unlock(&sched.lock);
    return 0;
}

/* A running batch was answered (or dropped): free its worker for the next one. */
static void finished(wbatch_t *b)
{
    pthread_mutex_lock(&sched.lock);
    wuser_t *u = b->owner;
    u->running--;
    sched.running--;
    user_release_locked(u);
    dispatch_locked();
    pthread_mutex_unlock(&sched.lock);
    atomic_fetch_sub(&gw__write_mod.inflight, 1);
}

/* The request is being freed (answered, or the client went away). A batch still queued is
 * dropped unapplied (the client retries; ferry_write_log keeps the retry exact); a running one
 * finishes and its answer is dropped in batch_done(). Loop thread of the request. */
static void guard_dispose(void *p)
{
    req_guard_t *g = p;
    wbatch_t *b = g->b;
    if (b == NULL) return;
    pthread_mutex_lock(&sched.lock);
    if (b->state == BATCH_QUEUED) {
        wuser_t *u = b->owner;
        wbatch_t **pp = &u->head, *prev = NULL;
        while (*pp != b) {
            prev = *pp;
            pp = &(*pp)->qnext;
        }
        *pp = b->qnext;
        if (u->tail == b) u->tail = prev;
        u->queued--;
        if (u->queued == 0) ring_unlink(u);
        user_release_locked(u);
        pthread_mutex_unlock(&sched.lock);
        atomic_fetch_sub(&gw__write_mod.inflight, 1);
        char user[300];
        gw_info("write", "client went away before its batch ran; dropped it", "user=%s",
                gw_log_qs(b->user, user, sizeof(user)));
        batch_free(b);
        return;
    }
    b->req = NULL;
    pthread_mutex_unlock(&sched.lock);
}

static void batch_done(gw_job_t *job)
{
    wbatch_t *b = (wbatch_t *)job;
    finished(b);
    double s = elapsed_s(&b->started);
    observe(s);
    if (b->http_status == 200) {
        atomic_fetch_add(&gw__write_mod.batches_ok, 1);
        for (int i = 0; i < ST_N; i++)
            atomic_fetch_add(&gw__write_mod.ops[i], (uint_fast64_t)b->counts[i]);
    } else if (b->http_status == 400) {
        atomic_fetch_add(&gw__write_mod.batches_bad, 1);
    } else if (b->http_status == 413) {
        atomic_fetch_add(&gw__write_mod.batches_too_large, 1);
    } else {
        atomic_fetch_add(&gw__write_mod.batches_unavail, 1);
    }
    char user[300], client[300];
    gw_info("write", "batch",
            "user=%s client=%s status=%d ops=%zu applied=%d duplicate=%d "
            "rejected=%d stale=%d path=%s duration_ms=%.2f",
            gw_log_qs(b->user, user, sizeof(user)), gw_log_qs(b->client_id, client, sizeof(client)),
            b->http_status, b->nops, b->counts[ST_APPLIED], b->counts[ST_DUPLICATE],
            b->counts[ST_REJECTED], b->counts[ST_STALE],
            b->attempts == 1   ? "pipelined"
            : b->attempts == 2 ? "careful"
                               : "none",
            s * 1e3);
    if (gw_log_get_level() <= GW_LOG_DEBUG)
        for (size_t i = 0; b->http_status == 200 && i < b->nops; i++)
            if (b->ops[i].status == ST_REJECTED || b->ops[i].status == ST_STALE) {
                char m[600];
                gw_debug("write", "op not applied",
                         "client=%s op_id=%lld status=%s code=%s reason=%s "
                         "message=%s",
                         client, b->ops[i].op_id, gw__write_status_names[b->ops[i].status],
                         b->ops[i].code != NULL ? b->ops[i].code : "-",
                         b->ops[i].reason != NULL ? b->ops[i].reason
                         : b->ops[i].code != NULL ? b->ops[i].code
                                                  : "-",
                         gw_log_qs(b->ops[i].message, m, sizeof(m)));
            }
    if (b->req != NULL) {
        b->guard->b = NULL;
        if (b->http_status == 503)
            h2o_add_header(&b->req->pool, &b->req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
                           H2O_STRLIT("2"));
        gw_http_send_json(b->req, b->http_status, b->out.data, b->out.len);
    } else {
        gw_info("write", "client went away before the answer", "user=%s client=%s status=%d", user,
                client, b->http_status);
    }
    batch_free(b);
}

/* ---- parsing (loop thread) -------------------------------------------------------------- */

/* op_id: a positive integer, as a JSON number or a decimal string. */
static int parse_op_id(json_t *v, long long *out)
{
    if (json_is_integer(v)) {
        *out = (long long)json_integer_value(v);
        return *out > 0 ? 0 : -1;
    }
    if (!json_is_string(v)) return -1;
    const char *s = json_string_value(v);
    if (s[0] == '\0' || strlen(s) > 19) return -1;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long u = strtoull(s, &end, 10);
    if (errno != 0 || u == 0 || u > (unsigned long long)INT64_MAX) return -1;
    *out = (long long)u;
    return 0;
}

/* Fill op from the batch entry e; a shape problem of an op with a valid op_id rejects only that
 * op (code/message set, kind 0). Returns -1 (with msg) when even op_id is unusable. */
static int parse_op(const rules_set_t *rules, json_t *e, size_t i, wop_t *op, char *msg, size_t len)
{
    memset(op, 0, sizeof(*op));
    if (!json_is_object(e)) {
        snprintf(msg, len, "batch[%zu] is not an object", i);
        return -1;
    }
    if (parse_op_id(json_object_get(e, "op_id"), &op->op_id) != 0) {
        snprintf(msg, len, "batch[%zu].op_id must be a positive integer or a decimal string", i);
        return -1;
    }
    const char *kind = json_string_value(json_object_get(e, "op"));
    json_t *type = json_object_get(e, "type"), *id = json_object_get(e, "id");
    json_t *data = json_object_get(e, "data");
    if (kind != NULL && strcmp(kind, "PUT") == 0)
        op->kind = OP_PUT;
    else if (kind != NULL && strcmp(kind, "PATCH") == 0)
        op->kind = OP_PATCH;
    else if (kind != NULL && strcmp(kind, "DELETE") == 0)
        op->kind = OP_DELETE;
    else {
        gw__write_op_reject(op, "invalid_op", "\"op\" must be \"PUT\", \"PATCH\" or \"DELETE\"");
        return 0;
    }
    if (!json_is_string(type) || json_string_length(type) == 0) {
        op->kind = 0;
        gw__write_op_reject(op, "invalid_op", "\"type\" must be a table name");
        return 0;
    }
    op->type = json_string_value(type);
    if (json_is_string(id) && json_string_length(id) > 0 && json_string_length(id) < sizeof(op->id))
        snprintf(op->id, sizeof(op->id), "%s", json_string_value(id));
    else if (json_is_integer(id))
        snprintf(op->id, sizeof(op->id), "%lld", (long long)json_integer_value(id));
    else {
        op->kind = 0;
        gw__write_op_reject(op, "invalid_op",
                            "\"id\" must be a non-empty string of at most %zu bytes",
                            sizeof(op->id) - 1);
        return 0;
    }
    if (data != NULL && !json_is_null(data) && !json_is_object(data)) {
        op->kind = 0;
        gw__write_op_reject(op, "invalid_op", "\"data\" must be an object");
        return 0;
    }
    if (op->kind != OP_DELETE && json_is_object(data)) op->data = data;
    json_t *old = json_object_get(e, "old"), *meta = json_object_get(e, "metadata");
    if (old != NULL && !json_is_null(old) && !json_is_object(old)) {
        op->kind = 0;
        gw__write_op_reject(op, "invalid_op", "\"old\" must be an object");
        return 0;
    }
    if (meta != NULL && !json_is_null(meta) && !json_is_string(meta)) {
        op->kind = 0;
        gw__write_op_reject(op, "invalid_op", "\"metadata\" must be a string");
        return 0;
    }
    if (json_is_object(old)) op->old = old;
    if (json_is_string(meta)) op->metadata = json_string_value(meta);
    /* the table: exact match against the compiled rules only ("schema.table" or "table") */
    const char *dot = strchr(op->type, '.');
    if (dot != NULL) {
        char schema[128];
        snprintf(schema, sizeof(schema), "%.*s", (int)(dot - op->type), op->type);
        op->rule = rules_write_find(rules, schema, dot + 1);
    } else {
        op->rule = rules_write_find(rules, NULL, op->type);
    }
    if (op->rule == NULL) {
        gw__write_op_reject(op, "table_not_writable", "table \"%.64s\" has no write rules",
                            op->type);
        return 0;
    }
    for (size_t k = 0; k < rules_write_count(rules); k++)
        if (rules_write_at(rules, k) == op->rule) op->rule_index = k;
    return 0;
}

/* Parse b->raw into b->body and b->ops on the worker; 0, or -1 with b's 400/413 answer set. */
static int parse_batch(wbatch_t *b)
{
    json_error_t jerr;
    json_t *body = json_loadb(b->raw, b->raw_len, 0, &jerr);
    free(b->raw);
    b->raw = NULL;
    char msg[512];
    if (body == NULL || !json_is_object(body)) {
        if (body == NULL)
            snprintf(msg, sizeof(msg), "the body is not valid JSON: %s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
        else
            snprintf(msg, sizeof(msg), "the body must be a JSON object");
        json_decref(body);
        gw__write_batch_fail(b, 400, "bad_request", msg);
        return -1;
    }
    b->body = body;
    json_t *client = json_object_get(body, "client_id"), *batch = json_object_get(body, "batch");
    json_t *params = json_object_get(body, "parameters");
    const char *problem = NULL;
    if (!json_is_string(client) || json_string_length(client) == 0)
        problem = "\"client_id\" must be a non-empty string";
    else if (json_string_length(client) > GW_CLIENT_ID_MAX)
        problem = "\"client_id\" is longer than 200 bytes";
    else if (!json_is_array(batch))
        problem = "\"batch\" must be an array of operations";
    else if (params != NULL && !json_is_null(params) && !json_is_object(params))
        problem = "\"parameters\" must be an object";
    if (problem != NULL) {
        gw__write_batch_fail(b, 400, "bad_request", problem);
        return -1;
    }
    size_t n = json_array_size(batch),
           max = (size_t)gw__write_mod.app->cfg->write_back.max_ops_per_batch;
    if (n > max) {
        snprintf(msg, sizeof(msg),
                 "the batch has %zu operations, more than %zu (write_back.max_ops_per_batch); "
                 "nothing was applied: send smaller batches",
                 n, max);
        gw__write_batch_fail(b, 413, "payload_too_large", msg);
        return -1;
    }
    b->ops = gw_xcalloc(n > 0 ? n : 1, sizeof(wop_t));
    b->nops = n;
    for (size_t i = 0; i < n; i++) {
        if (parse_op(b->rules, json_array_get(batch, i), i, &b->ops[i], msg, sizeof(msg)) != 0) {
            b->nops = 0;
            gw__write_batch_fail(b, 400, "bad_request", msg);
            return -1;
        }
    }
    b->params = json_is_object(params) ? json_dumps(params, JSON_COMPACT) : gw_xstrdup("{}");
    if (b->params == NULL) abort();
    snprintf(b->client_id, sizeof(b->client_id), "%s", json_string_value(client));
    return 0;
}

/* On a worker: parse, then apply (gw_write_batch.c). */
static void batch_job_run(gw_job_t *job, PGconn *conn)
{
    wbatch_t *b = (wbatch_t *)job;
    if (parse_batch(b) != 0) return;
    if (rules_write_count(b->rules) == 0) { /* nothing is writable: no need for Postgres */
        for (size_t i = 0; i < b->nops; i++)
            b->ops[i].status = ST_REJECTED;
        gw__write_batch_results(b);
        return;
    }
    gw__write_batch_run(job, conn);
}

static int on_write(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    auth_token_t *tok;
    if (gw_app_authenticate(app, req, &tok) != 0) return 0;
    wbatch_t *b = gw_xcalloc(1, sizeof(*b));
    b->raw_len = req->entity.len;
    b->raw = gw_xmalloc(b->raw_len + 1);
    if (b->raw_len > 0) memcpy(b->raw, req->entity.base, b->raw_len);
    b->rules = gw_app_active(app)->rules;
    b->req = req;
    b->ctx = req->conn->ctx;
    b->started = started;
    b->user = gw_xstrdup(tok->sub != NULL ? tok->sub : "");
    b->jwt = json_dumps(tok->claims, JSON_COMPACT);
    if (b->jwt == NULL) abort();
    auth_token_release(tok);
    /* the guard exists before admit() (which may hand the batch to a worker at once); it points
     * at the batch only once admitted, and the answer comes on this thread, after we return */
    b->guard = h2o_mem_alloc_shared(&req->pool, sizeof(req_guard_t), guard_dispose);
    b->guard->b = NULL;
    int rc = admit(b);
    if (rc != 0) {
        char user[300];
        if (rc == 429) {
            atomic_fetch_add(&gw__write_mod.batches_limited, 1);
            gw_info("write", "too many batches of one user in progress; answered 429",
                    "user=%s max_batches_per_user=%zu", gw_log_qs(b->user, user, sizeof(user)),
                    sched.max_per_user);
        } else {
            atomic_fetch_add(&gw__write_mod.batches_unavail, 1);
        }
        batch_free(b);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
        gw_http_send_error(req, rc, rc == 429 ? "too_many_requests" : "unavailable",
                           rc == 429 ? "this user has too many write batches in progress; "
                                       "nothing was applied, retry later"
                                     : "too many write batches in progress; nothing was applied");
        return 0;
    }
    b->guard->b = b; /* answered later on this thread, by batch_done() */
    /* A batch that waits in its user's queue keeps only its copy: h2o's input buffer, which
     * still holds the body, is freed now (and the connection closes after the answer). One that
     * started at once keeps the connection (a client's next upload reuses it); at most
     * postgres.pool_size batches run, so what they hold twice is bounded. Safe against a worker
     * taking the batch meanwhile: the worker reads only the copy, and the answer is sent on this
     * thread, after we return. */
    pthread_mutex_lock(&sched.lock);
    int queued = b->state == BATCH_QUEUED;
    pthread_mutex_unlock(&sched.lock);
    if (queued) gw_http_release_body(req);
    return 0;
}

/* ---- start-up: ferry's tables, statements, readiness ------------------------------------ */

static gw_job_t g_startup;

int gw__write_stopping(void)
{
    pthread_mutex_lock(&gw__write_mod.lock);
    int stop = gw__write_mod.stopping;
    pthread_mutex_unlock(&gw__write_mod.lock);
    return stop;
}

int gw__write_wait(long secs)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += secs;
    pthread_mutex_lock(&gw__write_mod.lock);
    while (!gw__write_mod.stopping)
        if (pthread_cond_timedwait(&gw__write_mod.cond, &gw__write_mod.lock, &until) != 0) break;
    int stop = gw__write_mod.stopping;
    pthread_mutex_unlock(&gw__write_mod.lock);
    return stop;
}

static void startup_run(gw_job_t *job, PGconn *conn)
{
    gw_err_t err;
    gw_err_clear(&err);
    int rc = conn == NULL
                 ? gw_err_set(&err, GW_EUNAVAIL, NULL, "postgres is not reachable")
                 : gw__write_prepare_conn(conn, gw_app_active(gw__write_mod.app)->rules, &err);
    if (rc == 0) {
        gw_ready_set(gw__write_mod.ready_id, 1, NULL);
        int self = 0, fast = 0;
        for (size_t i = 0; i < 256; i++) {
            self += gw__write_conn.self_cko[i] + gw__write_conn.self_chk[i];
            fast += gw__write_conn.fast_upd[i] + gw__write_conn.fast_del[i] +
                    gw__write_conn.fast_mrg[i];
        }
        gw_info("write", "write rules prepared",
                "tables=%zu constraints=%zu self_reading_checks=%d one_statement_writes=%d",
                rules_write_count(gw_app_active(gw__write_mod.app)->rules),
                rules_constraint_count(gw_app_active(gw__write_mod.app)->rules), self, fast);
        job->ud = NULL;
        return;
    }
    char msg[1024], q[1100];
    gw_err_format(&err, msg, sizeof(msg));
    gw_ready_set(gw__write_mod.ready_id, 0, msg);
    if (strcmp(msg, gw__write_mod.last_problem) != 0) { /* log a problem once, not every retry */
        snprintf(gw__write_mod.last_problem, sizeof(gw__write_mod.last_problem), "%s", msg);
        if (rc == GW_EUNAVAIL)
            gw_warn("write", "write rules not prepared yet", "error=%s",
                    gw_log_qs(msg, q, sizeof(q)));
        else
            gw_error("write", "write rules not prepared", "error=%s detail=%s",
                     gw_log_qs(msg, q, sizeof(q)),
                     gw_log_qs(err.detail[0] != '\0' ? err.detail : "retrying every 5 s",
                               (char[600]){0}, 600));
    }
    job->ud = gw__write_wait(rc == GW_EUNAVAIL ? 1 : 5) ? NULL : job;
}

static void startup_done(gw_job_t *job)
{
    if (job->ud == NULL) return;
    pthread_mutex_lock(&gw__write_mod.lock);
    int stop = gw__write_mod.stopping;
    pthread_mutex_unlock(&gw__write_mod.lock);
    if (!stop)
        gw_workers_submit_background(gw__write_mod.app->workers,
                                     gw_http_context(gw__write_mod.app->http, 0), job);
}

static void on_thread_start(h2o_context_t *ctx, size_t index, void *ud)
{
    (void)ud;
    if (index != 0) return;
    memset(&g_startup, 0, sizeof(g_startup));
    g_startup.run = startup_run;
    g_startup.done = startup_done;
    gw_workers_submit_background(gw__write_mod.app->workers, ctx, &g_startup);
}

static void on_shutdown(h2o_context_t *ctx, size_t index, void *ud)
{
    (void)ctx;
    (void)index;
    (void)ud;
    pthread_mutex_lock(&gw__write_mod.lock);
    gw__write_mod.stopping = 1;
    pthread_cond_broadcast(&gw__write_mod.cond);
    pthread_mutex_unlock(&gw__write_mod.lock);
}

/* ---- metrics ---------------------------------------------------------------------------- */

/* ferry_write_unknown_columns_total: "table\tcolumn" -> uint64_t* (bounded by the schema:
 * columns the table does not have are one series per table) */
static struct {
    pthread_mutex_t lock;
    gw_map_t counts;
    int init;
} unknown_cols = {.lock = PTHREAD_MUTEX_INITIALIZER};

void gw__write_unknown_column(const char *table, const char *column)
{
    char key[600];
    snprintf(key, sizeof(key), "%s\t%s", table, column != NULL ? column : "(unknown)");
    pthread_mutex_lock(&unknown_cols.lock);
    if (!unknown_cols.init) {
        gw_map_init(&unknown_cols.counts);
        unknown_cols.init = 1;
    }
    uint64_t *n = gw_map_get(&unknown_cols.counts, key);
    if (n == NULL) {
        n = gw_xcalloc(1, sizeof(*n));
        gw_map_put(&unknown_cols.counts, key, n);
    }
    (*n)++;
    pthread_mutex_unlock(&unknown_cols.lock);
}

/* n bytes of s as a quoted Prometheus label value (\\, \" and \n escaped). */
static void label_value(gw_buf_t *out, const char *s, size_t n)
{
    gw_buf_puts(out, "\"");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' || s[i] == '"')
            gw_buf_printf(out, "\\%c", s[i]);
        else if (s[i] == '\n')
            gw_buf_puts(out, "\\n");
        else
            gw_buf_append(out, s + i, 1);
    }
    gw_buf_puts(out, "\"");
}

static void render_unknown(const char *key, void *value, void *ud)
{
    const char *tab = strchr(key, '\t');
    gw_buf_t *out = ud;
    gw_buf_puts(out, "ferry_write_unknown_columns_total{table=");
    label_value(out, key, (size_t)(tab - key));
    gw_buf_puts(out, ",column=");
    label_value(out, tab + 1, strlen(tab + 1));
    gw_buf_printf(out, "} %llu\n", (unsigned long long)*(uint64_t *)value);
}

static void collect(gw_buf_t *out, void *ud)
{
    (void)ud;
    gw_buf_puts(out, "# HELP ferry_write_batches_total Write-back batches by HTTP status.\n"
                     "# TYPE ferry_write_batches_total counter\n");
    gw_buf_printf(out, "ferry_write_batches_total{status=\"200\"} %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.batches_ok));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"400\"} %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.batches_bad));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"413\"} %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.batches_too_large));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"429\"} %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.batches_limited));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"503\"} %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.batches_unavail));
    pthread_mutex_lock(&sched.lock);
    size_t running = sched.running, users = sched.users.n;
    pthread_mutex_unlock(&sched.lock);
    size_t inflight = atomic_load(&gw__write_mod.inflight);
    gw_buf_puts(out, "# HELP ferry_write_batches_queued Write-back batches waiting for a worker.\n"
                     "# TYPE ferry_write_batches_queued gauge\n");
    gw_buf_printf(out, "ferry_write_batches_queued %zu\n",
                  inflight > running ? inflight - running : 0);
    gw_buf_puts(out, "# HELP ferry_write_batches_running Write-back batches on a worker.\n"
                     "# TYPE ferry_write_batches_running gauge\n");
    gw_buf_printf(out, "ferry_write_batches_running %zu\n", running);
    gw_buf_puts(out, "# HELP ferry_write_users_active Users with write-back batches queued or "
                     "running.\n"
                     "# TYPE ferry_write_users_active gauge\n");
    gw_buf_printf(out, "ferry_write_users_active %zu\n", users);
    gw_buf_puts(out, "# HELP ferry_write_ops_total Write-back ops by result.\n"
                     "# TYPE ferry_write_ops_total counter\n");
    for (int i = 0; i < ST_N; i++)
        gw_buf_printf(out, "ferry_write_ops_total{status=\"%s\"} %llu\n", gw__write_status_names[i],
                      (unsigned long long)atomic_load(&gw__write_mod.ops[i]));
    gw_buf_puts(out, "# HELP ferry_write_violations_total Constraint violations recorded.\n"
                     "# TYPE ferry_write_violations_total counter\n");
    gw_buf_printf(out, "ferry_write_violations_total %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.violations));
    gw_buf_puts(out, "# HELP ferry_write_violations_open Constraint violations neither resolved "
                     "nor expired (at the last background pass).\n"
                     "# TYPE ferry_write_violations_open gauge\n");
    gw_buf_printf(out, "ferry_write_violations_open %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.violations_open));
    gw_buf_puts(out, "# HELP ferry_write_violations_resolved_total Violations resolved by a "
                     "re-check (a later write, or the background pass).\n"
                     "# TYPE ferry_write_violations_resolved_total counter\n");
    gw_buf_printf(out, "ferry_write_violations_resolved_total %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.violations_resolved));
    gw_buf_puts(out, "# HELP ferry_write_violations_expired_total Violations expired "
                     "(constraints.<name>.expire_after).\n"
                     "# TYPE ferry_write_violations_expired_total counter\n");
    gw_buf_printf(out, "ferry_write_violations_expired_total %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.violations_expired));
    gw_buf_puts(out, "# HELP ferry_write_history_trimmed_total Entries of ferry_write_history "
                     "older than write_back.history.keep, deleted.\n"
                     "# TYPE ferry_write_history_trimmed_total counter\n");
    gw_buf_printf(out, "ferry_write_history_trimmed_total %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.history_trimmed));
    gw_buf_puts(out, "# HELP ferry_write_conflicts_total Columns a merge strategy decided against "
                     "or combined with the sent value (rows of ferry_write_conflicts).\n"
                     "# TYPE ferry_write_conflicts_total counter\n");
    gw_buf_printf(out, "ferry_write_conflicts_total %llu\n",
                  (unsigned long long)atomic_load(&gw__write_mod.conflicts));
    gw_buf_puts(out, "# HELP ferry_write_unknown_columns_total Sent columns the write rules do "
                     "not list, by table and column (\"(unknown)\": the table has no such "
                     "column).\n"
                     "# TYPE ferry_write_unknown_columns_total counter\n");
    pthread_mutex_lock(&unknown_cols.lock);
    if (unknown_cols.init) gw_map_each(&unknown_cols.counts, render_unknown, out);
    pthread_mutex_unlock(&unknown_cols.lock);
    gw_buf_puts(out, "# HELP ferry_write_batch_duration_seconds Time from request to response "
                     "of a write-back batch.\n"
                     "# TYPE ferry_write_batch_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i <= HIST_N; i++) {
        cum += (unsigned long long)atomic_load(&gw__write_mod.hist[i]);
        if (i < HIST_N)
            gw_buf_printf(out, "ferry_write_batch_duration_seconds_bucket{le=\"%g\"} %llu\n",
                          HIST_LE[i], cum);
        else
            gw_buf_printf(out, "ferry_write_batch_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                          cum);
    }
    gw_buf_printf(out, "ferry_write_batch_duration_seconds_sum %.6f\n",
                  (double)atomic_load(&gw__write_mod.hist_sum_us) / 1e6);
    gw_buf_printf(out, "ferry_write_batch_duration_seconds_count %llu\n", cum);
}

void gw_write_register(gw_app_t *app)
{
    gw__write_mod.app = app;
    size_t pool = app->cfg->postgres.pool_size > 0 ? (size_t)app->cfg->postgres.pool_size : 1;
    gw__write_mod.max_inflight = pool * 16 > 64 ? pool * 16 : 64;
    sched.ring.next = sched.ring.prev = &sched.ring;
    sched.max_running = pool;
    sched.max_per_user = (size_t)app->cfg->write_back.max_batches_per_user;
    gw_http_route(app->http, "/api/write", "write", GW_HTTP_POST, on_write, app);
    gw_metrics_add_collector(collect, NULL);
    if (rules_write_count(gw_app_active(app)->rules) > 0) {
        gw__write_mod.ready_id =
            gw_ready_register("write rules", "write rules not yet prepared in postgres");
        gw_http_on_thread_start(app->http, on_thread_start, NULL);
        gw_http_on_shutdown(app->http, on_shutdown, NULL);
        gw__write_janitor_start();
    }
}
