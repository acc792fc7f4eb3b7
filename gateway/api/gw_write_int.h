/* gw_write_int.h -- what the write-back files share (api/gw_write*.c only)
 *
 * Write-back is one module in three files:
 *   gw_write.c        the route: admission and fair scheduling across users, parsing (on the
 *                     worker), answers, start-up, metrics
 *   gw_write_stmt.c   per-connection statements on the worker threads, ferry's own tables
 *   gw_write_batch.c  applying a batch in one Postgres transaction (pipelined, then careful)
 *   gw_write_janitor.c the background pass (history retention, violations re-checked and
 *                     expired) and the re-check of violations a write touches
 */
#ifndef GW_WRITE_INT_H
#define GW_WRITE_INT_H

#include "api/gw_api.h"
#include "base/gw_buf.h"
#include "pg/gw_pg.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

/* Buckets of the batch-duration histogram (ferry_write_batch_duration_seconds). */
#define HIST_N 13

/* An op's outcome. */
enum { ST_APPLIED, ST_DUPLICATE, ST_REJECTED, ST_STALE, ST_N };

typedef struct write_mod {
    gw_app_t *app;
    int ready_id; /* -1: no write rules, no condition */
    size_t max_inflight;
    atomic_size_t inflight; /* batches queued or running, all users */
    /* start-up job and its interruptible wait */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stopping;
    int tables_done; /* ferry's tables exist (created or found) */
    char last_problem[1024];
    /* metrics */
    atomic_uint_fast64_t ops[ST_N];
    atomic_uint_fast64_t batches_ok, batches_bad, batches_unavail, violations;
    atomic_uint_fast64_t conflicts; /* rows of ferry_write_conflicts written */
    atomic_uint_fast64_t violations_resolved, violations_expired, history_trimmed;
    atomic_uint_fast64_t violations_open;                    /* open at the last background pass */
    atomic_uint_fast64_t batches_too_large, batches_limited; /* 413 (ops), 429 (per user) */
    atomic_uint_fast64_t hist[HIST_N + 1];
    atomic_uint_fast64_t hist_sum_us;
} write_mod_t;

#define INS_CACHE 64

/* What this thread's current connection has prepared. A worker owns one connection at a time;
 * a new one (another PGconn or backend pid) starts from nothing. */
typedef struct conn_state {
    PGconn *conn;
    int pid;
    int prepared;
    const rules_set_t *rules; /* the write rules prepared (they change with the rule version) */
    int con_ids[256];         /* constraint i prepared in the "conflicting ids" form */
    unsigned char self_cko[256], self_chk[256]; /* table i has the self-reading forms */
    unsigned char id_unique[256]; /* table i has an immediate unique index on ("id") alone */
    unsigned char fast_upd[256], fast_del[256]; /* table i has fw_upf_i / fw_delf_i */
    unsigned char fast_mrg[256];                /* table i has fw_mrf_i (merge: tables) */
    size_t nins;
    struct {
        size_t table;
        uint64_t mask;
    } ins[INS_CACHE];
} conn_state_t;

enum { OP_PUT = 1, OP_PATCH, OP_DELETE };

typedef struct wop {
    long long op_id;
    int kind;                       /* OP_*; 0 when the op is malformed (code/message say why) */
    const rules_write_rule_t *rule; /* NULL: no write rules for the type */
    size_t rule_index;
    const char *type;
    char id[256];
    json_t *data;         /* borrowed from the body; NULL for DELETE */
    json_t *old;          /* the CRUD entry's "old" (previous values), borrowed; NULL if absent */
    const char *metadata; /* the CRUD entry's "metadata" string, borrowed; NULL if absent */
    json_t *outcome;      /* per column merge outcome {"col":"kept"|…}, owned; NULL: none */
    json_t *results;      /* the values a strategy decided {"col": value}, owned; NULL: none */
    json_t *violations;   /* names of the constraints this op violated (array), owned; or NULL */
    char *before;         /* the stored row before the op (JSON text) for the history, owned */
    json_t *ignored;      /* columns unknown_columns: ignore dropped, with the values sent, owned */
    /* result */
    int status;
    const char *code;
    char message[256];
    const char *reason; /* for ferry's log when it differs from code (e.g. "not_found") */
} wop_t;

typedef struct wbatch wbatch_t;

/* Lives in req->pool: when h2o frees the request (the client went away while the batch ran),
 * its dispose callback tells the batch not to answer. */
typedef struct req_guard {
    wbatch_t *b;
} req_guard_t;

/* Where a batch is (gw_write.c's scheduler; guarded by its lock). */
enum { BATCH_QUEUED = 1, BATCH_RUNNING };

/* A batch in flight; malloc'd (not in req->pool, which may go away while a worker runs it). */
struct wbatch {
    gw_job_t job;
    h2o_req_t *req; /* NULL once the request was freed */
    req_guard_t *guard;
    h2o_context_t *ctx;  /* the loop thread of the request: the answer goes there */
    struct wuser *owner; /* the scheduler's entry of user */
    wbatch_t *qnext;     /* the user's queue */
    int state;           /* BATCH_QUEUED / BATCH_RUNNING */
    char *raw;           /* the body as sent, until the worker parses it (compact while queued) */
    size_t raw_len;
    json_t *body; /* parsed on the worker */
    char *user;   /* sub */
    char *jwt;    /* claims as JSON text */
    char *params; /* request parameters as JSON text */
    char client_id[256];
    const rules_set_t *rules; /* the write rules serving when it came (see gw_app_active) */
    wop_t *ops;
    size_t nops;
    struct timespec started;
    uint64_t deadline_ms; /* CLOCK_MONOTONIC ms by which write_back.batch_timeout ends the
                             batch (between ops); 0: none */
    /* outcome */
    int http_status;
    gw_buf_t out; /* the response body */
    int counts[ST_N];
    int attempts; /* 1: the pipelined path applied it; 2: the careful path ran */
};

/* ---- gw_write.c ---- */

/** The module's state (one per process: one write-back route). */
extern write_mod_t gw__write_mod;

/** The names of the outcomes ("applied", …), by ST_*. */
extern const char *const gw__write_status_names[ST_N];

/** Count a sent column of table (a label) the rules do not list: column, or NULL when the table
 * does not have it (counted as "(unknown)", so clients cannot create series). */
void gw__write_unknown_column(const char *table, const char *column);

/** Wait up to secs seconds unless the server stops; returns 1 when it is stopping. */
int gw__write_wait(long secs);

/** Whether the server is stopping. */
int gw__write_stopping(void);

/* ---- gw_write_janitor.c ---- */

/**
 * Re-check the open violations of table label whose row or conflicting ids include row id (id
 * NULL: every open violation, oldest first, at most 1,000), over the rows as stored now; set
 * resolved_at on those whose constraint no longer finds rows (or whose row is gone), counting
 * them in *resolved. 0, or -1 with *failed the result of the statement that failed (the caller
 * PQclears it).
 */
int gw__write_recheck(PGconn *conn, const rules_set_t *set, const char *label, const char *id,
                      size_t *resolved, PGresult **failed);

/** Start the background pass (a detached thread with its own connection). */
void gw__write_janitor_start(void);

/* ---- gw_write_stmt.c ---- */

/** What this worker thread's connection has prepared. */
extern __thread conn_state_t gw__write_conn;

/**
 * Prepare set's statements on conn unless this thread already did for this connection and these
 * rules; creates ferry's own tables once when missing. 0; GW_EUNAVAIL / GW_EPG (Postgres);
 * GW_ERULES when Postgres rejects a write-rule statement (err names it and its position).
 */
int gw__write_prepare_conn(PGconn *conn, const rules_set_t *set, gw_err_t *err);

/** The write rule's table, schema-qualified and quoted for conn: malloc'd (caller frees). */
char *gw__write_qualified(PGconn *conn, const rules_write_rule_t *r);

/** "schema.table" of a write rule, into buf; returns buf. */
const char *gw__write_table_label(const rules_write_rule_t *r, char *buf, size_t len);

/* ---- gw_write_batch.c ---- */

/** Mark op rejected with code and a printf-style message. */
void gw__write_op_reject(wop_t *op, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Fill b's 200 response with every op's result (and count the outcomes). */
void gw__write_batch_results(wbatch_t *b);

/** Set b's answer to status with {"error":{"code":code,"description":msg}}. */
void gw__write_batch_fail(wbatch_t *b, int status, const char *code, const char *msg);

/** Forget what an attempt decided for op (its outcome, results, violations, stored row). */
void gw__write_op_reset(wop_t *op);

/** Apply the batch in job (a wbatch_t) on a worker thread: b->http_status and b->out are set. */
void gw__write_batch_run(gw_job_t *job, PGconn *conn);

#endif
