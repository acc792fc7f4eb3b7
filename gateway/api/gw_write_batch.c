/* gw_write.c -- write-back: POST /api/write applies a client's queued writes to Postgres
 *
 * The body is the PowerSync CRUD batch: {"client_id":…,"batch":[{"op_id","op","type","id",
 * "data"},…]}. The loop thread authenticates, parses and checks the shape (400 when it is not a
 * batch), then hands the batch to a worker (gw_worker.h); the worker applies it in one Postgres
 * transaction and builds the per-op results; done() answers on the loop thread.
 *
 * Per batch (worker, batch_run -> run_attempt, the careful path):
 *   BEGIN; lock the client's row of ferry_write_log (created on first use) and read last_op_id;
 *   for each op, inside a SAVEPOINT: op_id <= the highest id seen -> "duplicate"; otherwise
 *     table with write rules?  operation allowed?  only listed columns?     -> else "rejected"
 *     SELECT the stored row FOR UPDATE, the sent data merged over it, and lww "older?"
 *     check_old over the stored row (update, delete), check over the new row (insert, update)
 *     lww_column older than the stored value                               -> "stale"
 *     apply: INSERT of the given columns | UPDATE of the given columns | DELETE by id
 *     each constraint of the table over the stored result; rows found -> ferry_violations
 *     a statement that fails rolls back to the savepoint: that op alone is "rejected"
 *   UPDATE ferry_write_log SET last_op_id; COMMIT.
 *
 * Batches in which nothing is rejected, stale or flagged go the same way but pipelined first
 * (run_pipelined): the statements of many ops are sent without waiting, in op order, and every
 * result is checked before COMMIT is sent. The first result that is not the plain one rolls the
 * whole attempt back and the batch runs again on the careful path, which decides every op.
 *
 *        batch ──▶ run_pipelined ──all plain──▶ COMMIT ──▶ 200 results
 *                      │ something not plain: ROLLBACK
 *                      ▼
 *                  run_attempt (savepoint per op) ──▶ COMMIT ──▶ 200 results
 *                      │ connection lost, deadlock, shutdown: ROLLBACK
 *                      ▼
 *                  503 + Retry-After (batch_try retries once on a fresh connection first)
 *
 * Invariants:
 *   1. SQL text comes only from the compiled rules and from names in them (quoted with
 *      PQescapeIdentifier); client values travel only as bound parameters.
 *   2. Nothing is half-applied: a lost connection, a deadlock or a shutdown mid-batch rolls the
 *      whole transaction back and answers 503; the client retries and ferry_write_log makes the
 *      retry apply each op once.
 *   3. A failing statement never aborts the batch, and the pipelined path never decides a
 *      rejection: only the careful path does, op by op.
 *   4. The worker connections run with synchronous_commit=on: a 200 lets the client drop its
 *      queue, so the commit is durable before the answer.
 *
 * Statements are prepared once per worker connection (prepare_conn; per-thread state, since a
 * worker owns its connection). A start-up job does the same on the first worker connection,
 * creates ferry's own tables when missing, and holds the readiness condition "write rules" until
 * every write-rule statement was accepted by Postgres; a rejected one is reported with its
 * position in the rules file.
 */
#include "api/gw_api.h"
#include "base/gw_buf.h"
#include "base/gw_log.h"
#include "base/gw_metrics.h"
#include "pg/gw_pg.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- ferry's own tables ---------------------------------------------------------------- */

/* Keep in step with deploy/postgres/setup.sql. */
static const char SETUP_SQL[] =
    "CREATE TABLE IF NOT EXISTS ferry_write_log ("
    " user_id text NOT NULL,"
    " client_id text NOT NULL,"
    " last_op_id bigint NOT NULL DEFAULT 0,"
    " updated_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (user_id, client_id));"
    "CREATE TABLE IF NOT EXISTS ferry_violations ("
    " id text PRIMARY KEY DEFAULT gen_random_uuid()::text,"
    " constraint_name text NOT NULL,"
    " table_name text NOT NULL,"
    " row_id text NOT NULL,"
    " user_id text NOT NULL,"
    " conflicting_ids jsonb NOT NULL DEFAULT '[]',"
    " message text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX IF NOT EXISTS ferry_violations_user_id ON ferry_violations (user_id)";

static const char LOG_GET_SQL[] =
    "INSERT INTO ferry_write_log AS w (user_id, client_id, last_op_id) VALUES ($1, $2, 0) "
    "ON CONFLICT (user_id, client_id) DO UPDATE SET last_op_id = w.last_op_id "
    "RETURNING last_op_id";
static const char LOG_SET_SQL[] = "UPDATE ferry_write_log SET last_op_id = $3, updated_at = now() "
                                  "WHERE user_id = $1 AND client_id = $2";
static const char VIOLATION_SQL[] =
    "INSERT INTO ferry_violations (constraint_name, table_name, row_id, user_id, "
    "conflicting_ids, message) VALUES ($1, $2, $3, $4, $5::jsonb, $6)";

/* ---- module state ---------------------------------------------------------------------- */

#define HIST_N 13
static const double HIST_LE[HIST_N] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};

enum { ST_APPLIED, ST_DUPLICATE, ST_REJECTED, ST_STALE, ST_N };
static const char *const ST_NAME[ST_N] = {"applied", "duplicate", "rejected", "stale"};

typedef struct write_mod {
    gw_app_t *app;
    int ready_id; /* -1: no write rules, no condition */
    size_t max_inflight;
    atomic_size_t inflight;
    /* start-up job and its interruptible wait */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stopping;
    int tables_done; /* ferry's tables exist (created or found) */
    char last_problem[1024];
    /* metrics */
    atomic_uint_fast64_t ops[ST_N];
    atomic_uint_fast64_t batches_ok, batches_bad, batches_unavail, violations;
    atomic_uint_fast64_t hist[HIST_N + 1];
    atomic_uint_fast64_t hist_sum_us;
} write_mod_t;

static write_mod_t g_mod = {
    .ready_id = -1, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* ---- per-connection statements (worker threads) ----------------------------------------- */

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
    size_t nins;
    struct {
        size_t table;
        uint64_t mask;
    } ins[INS_CACHE];
} conn_state_t;

static __thread conn_state_t tl_conn;

static const char *rule_file(void)
{
    return g_mod.app->cfg->sync_rules.path;
}

/* "schema.table", or "table" in schema public, into buf. */
static const char *table_label(const rules_write_rule_t *r, char *buf, size_t len)
{
    if (strcmp(r->schema, "public") == 0)
        snprintf(buf, len, "%s", r->table);
    else
        snprintf(buf, len, "%s.%s", r->schema, r->table);
    return buf;
}

/* Quoted "schema"."table" of r, malloc'd (the caller frees). */
static char *qualified(PGconn *conn, const rules_write_rule_t *r)
{
    char *s = gw_pg_ident(conn, r->schema), *t = gw_pg_ident(conn, r->table);
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b, "%s.%s", s, t);
    free(s);
    free(t);
    gw_buf_append(&b, "", 1);
    return b.data;
}

static int prepare(PGconn *conn, const char *name, const char *sql, char *msg, size_t len)
{
    PGresult *res = PQprepare(conn, name, sql, 0, NULL);
    int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        const char *m = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        char buf[512];
        if (m == NULL || m[0] == '\0') m = gw_pg_error(conn, buf, sizeof(buf));
        snprintf(msg, len, "%s", m);
        size_t n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
            msg[--n] = '\0';
    }
    PQclear(res);
    return ok ? 0 : -1;
}

/*
 * The constraint query in a form that returns the conflicting ids as a JSON array (NULL when
 * none): the rules library compiles `SELECT EXISTS (<query>)[ FROM jsonb_populate_record(…) AS
 * "new"]`; the first column of <query>'s rows is the conflicting id. NULL when the text does not
 * have that shape (then only the boolean form is used). Malloc'd; the caller frees.
 */
static char *constraint_ids_sql(const char *sql)
{
    static const char head[] = "SELECT EXISTS (";
    static const char from[] = ") FROM jsonb_populate_record(NULL::";
    size_t n = strlen(sql);
    if (strncmp(sql, head, sizeof(head) - 1) != 0) return NULL;
    const char *body = sql + sizeof(head) - 1, *end = NULL;
    static const char tail[] = "AS \"new\"";
    if (n > sizeof(tail) && strcmp(sql + n - (sizeof(tail) - 1), tail) == 0) {
        for (const char *p = strstr(body, from); p != NULL; p = strstr(p + 1, from))
            end = p;
    } else if (n > 0 && sql[n - 1] == ')') {
        end = sql + n - 1;
    }
    if (end == NULL || end < body) return NULL;
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b,
                  "SELECT (SELECT json_agg((SELECT e.value FROM json_each(row_to_json(q)) e "
                  "LIMIT 1))::text FROM (%.*s) AS q)%s",
                  (int)(end - body), body, end + 1);
    gw_buf_append(&b, "", 1);
    return b.data;
}

/*
 * check / check_old in a form that reads the row itself instead of taking it as a bound value,
 * for the pipelined path (no wait for the SELECT before sending the check). The rules library
 * compiles `… FROM jsonb_populate_record(NULL::<table>, $p::jsonb) AS "old"` (or "new"); the
 * bound row becomes COALESCE($p::jsonb, <the stored row, or the data merged over it>) with $p
 * sent as NULL, the id as $(nbinds+1) and, for "new", the data as $(nbinds+2). The expression
 * is evaluated over exactly the row that would have been bound. NULL when the text does not end
 * that way. Malloc'd; the caller frees.
 */
static char *self_reading_sql(const char *sql, const char *alias, const char *qt, int nbinds)
{
    char tail[32];
    snprintf(tail, sizeof(tail), "::jsonb) AS \"%s\"", alias);
    size_t n = strlen(sql), tl = strlen(tail);
    if (n < tl + 4 || strcmp(sql + n - tl, tail) != 0) return NULL;
    const char *p = sql + n - tl; /* just past the digits of $p */
    const char *d = p;
    while (d > sql && d[-1] >= '0' && d[-1] <= '9')
        d--;
    if (d == p || d - sql < 3 || d[-1] != '$' || d[-2] != ' ' || d[-3] != ',') return NULL;
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b,
                  "%.*sCOALESCE(%.*s::jsonb, (SELECT to_jsonb(%s) FROM %s AS x%s WHERE "
                  "x.\"id\" = $%d))) AS \"%s\"",
                  (int)(d - 1 - sql), sql, (int)(p - d + 1), d - 1, alias[0] == 'o' ? "x" : "r", qt,
                  alias[0] == 'o' ? "" : ", LATERAL jsonb_populate_record(x, $DATA::jsonb) AS r",
                  nbinds + 1, alias);
    gw_buf_append(&b, "", 1);
    char *out = b.data;
    char *m = strstr(out, "$DATA");
    if (m != NULL) { /* the data parameter's number, in place of the marker */
        char num[16];
        int k = snprintf(num, sizeof(num), "$%d", nbinds + 2);
        gw_buf_t o = GW_BUF_INIT;
        gw_buf_printf(&o, "%.*s%.*s%s", (int)(m - out), out, k, num, m + 5);
        gw_buf_append(&o, "", 1);
        free(out);
        out = o.data;
    }
    return out;
}

/* The position of a write rule in the rules file, for messages: its check, else its check_old. */
static void rule_pos(const rules_write_rule_t *r, int *line, int *col)
{
    const rules_pg_stmt_t *s = r->check.sql != NULL ? &r->check : &r->check_old;
    *line = s->sql != NULL ? s->line : 0;
    *col = s->sql != NULL ? s->col : 0;
}

static void set_rule_err(gw_err_t *err, int line, int col, const char *fmt, const char *what,
                         const char *pgmsg)
{
    char where[300];
    if (line > 0)
        snprintf(where, sizeof(where), "%s:%d:%d", rule_file(), line, col);
    else
        snprintf(where, sizeof(where), "%s", rule_file());
    gw_err_set(err, GW_ERULES, where, fmt, what, pgmsg);
}

/* Create ferry's tables when missing (once per process; serialized). */
static int ensure_tables(PGconn *conn, gw_err_t *err)
{
    pthread_mutex_lock(&g_mod.lock);
    int done = g_mod.tables_done;
    pthread_mutex_unlock(&g_mod.lock);
    if (done) return 0;
    gw_err_t e;
    if (gw_pg_exec(conn, SETUP_SQL, &e) != 0) {
        /* two first-time creators can race on the catalog; the loser retries once */
        if (gw_pg_exec(conn, SETUP_SQL, &e) != 0) {
            gw_err_set(err, GW_EPG, "postgres",
                       "could not create ferry's tables (ferry_write_log, ferry_violations): %s",
                       e.message);
            gw_err_detail(err, "Run deploy/postgres/setup.sql as an owner of the database.");
            return GW_EPG;
        }
    }
    pthread_mutex_lock(&g_mod.lock);
    g_mod.tables_done = 1;
    pthread_mutex_unlock(&g_mod.lock);
    return 0;
}

/*
 * Make sure conn has every write statement prepared (per-thread state). Returns 0; GW_EPG when
 * Postgres failed (connection, ferry's tables); GW_ERULES when Postgres rejected a statement
 * built from the rules (err->where is the rules file position).
 */
static int prepare_conn(PGconn *conn, const rules_set_t *set, gw_err_t *err)
{
    conn_state_t *cs = &tl_conn;
    if (cs->conn == conn && cs->pid == PQbackendPID(conn) && cs->prepared && cs->rules == set)
        return 0;
    memset(cs, 0, sizeof(*cs));
    gw_err_t e;
    /* a 200 lets the client drop its queue: the commit must be durable before we answer, even
     * where the server's default is synchronous_commit=off; so must ferry's own tables be */
    if (gw_pg_exec(conn, "DEALLOCATE ALL", &e) != 0 ||
        gw_pg_exec(conn, "SET synchronous_commit = on", &e) != 0)
        return gw_err_set(err, GW_EPG, "postgres", "%s", e.message);
    int rc = ensure_tables(conn, err);
    if (rc != 0) return rc;
    char msg[512], name[64];
    if (prepare(conn, "fw_log_get", LOG_GET_SQL, msg, sizeof(msg)) != 0 ||
        prepare(conn, "fw_log_set", LOG_SET_SQL, msg, sizeof(msg)) != 0 ||
        prepare(conn, "fw_vio", VIOLATION_SQL, msg, sizeof(msg)) != 0) {
        /* the tables may have gone since they were made (a restored database): make them
         * again on the next try */
        pthread_mutex_lock(&g_mod.lock);
        g_mod.tables_done = 0;
        pthread_mutex_unlock(&g_mod.lock);
        return gw_err_set(err, GW_EPG, "postgres", "could not prepare ferry's statements: %s", msg);
    }
    for (size_t i = 0; i < rules_write_count(set); i++) {
        const rules_write_rule_t *r = rules_write_at(set, i);
        char *qt = qualified(conn, r);
        char label[256];
        table_label(r, label, sizeof(label));
        int line, col;
        rule_pos(r, &line, &col);
        gw_buf_t b = GW_BUF_INIT;
        char *lww = r->lww_column != NULL ? gw_pg_ident(conn, r->lww_column) : NULL;
        if (lww != NULL)
            gw_buf_printf(&b,
                          "SELECT to_jsonb(t)::text, to_jsonb(r)::text, COALESCE(r.%s < t.%s, "
                          "false) FROM %s AS t, LATERAL jsonb_populate_record(t, $2::jsonb) AS "
                          "r WHERE t.\"id\" = $1 FOR UPDATE OF t",
                          lww, lww, qt);
        else
            gw_buf_printf(&b,
                          "SELECT to_jsonb(t)::text, to_jsonb(r)::text, false FROM %s AS t, "
                          "LATERAL jsonb_populate_record(t, $2::jsonb) AS r WHERE t.\"id\" = $1 "
                          "FOR UPDATE OF t",
                          qt);
        free(lww);
        gw_buf_append(&b, "", 1);
        snprintf(name, sizeof(name), "fw_sel_%zu", i);
        rc = prepare(conn, name, b.data, msg, sizeof(msg));
        gw_buf_reset(&b);
        if (rc == 0) {
            /* UPDATE of every writable column, each from the sent data or else itself */
            gw_buf_printf(&b, "UPDATE %s AS t SET (", qt);
            size_t n = 0;
            for (size_t c = 0; c < r->ncolumns; c++) {
                if (strcmp(r->columns[c], "id") == 0) continue;
                char *qc = gw_pg_ident(conn, r->columns[c]);
                gw_buf_printf(&b, "%s%s", n++ > 0 ? ", " : "", qc);
                free(qc);
            }
            gw_buf_puts(&b, ") = (SELECT ");
            n = 0;
            for (size_t c = 0; c < r->ncolumns; c++) {
                if (strcmp(r->columns[c], "id") == 0) continue;
                char *qc = gw_pg_ident(conn, r->columns[c]);
                gw_buf_printf(&b, "%sr.%s", n++ > 0 ? ", " : "", qc);
                free(qc);
            }
            gw_buf_puts(&b, " FROM jsonb_populate_record(t, $2::jsonb) AS r) WHERE t.\"id\" = $1 "
                            "RETURNING to_jsonb(t)::text");
            gw_buf_append(&b, "", 1);
            snprintf(name, sizeof(name), "fw_upd_%zu", i);
            if (n == 0) { /* only "id" is writable: an update changes nothing */
                gw_buf_reset(&b);
                gw_buf_printf(&b,
                              "SELECT to_jsonb(t)::text FROM %s AS t WHERE t.\"id\" = $1 "
                              "AND $2::jsonb IS NOT NULL",
                              qt);
                gw_buf_append(&b, "", 1);
            }
            rc = prepare(conn, name, b.data, msg, sizeof(msg));
            gw_buf_reset(&b);
        }
        if (rc == 0) {
            gw_buf_printf(&b, "DELETE FROM %s WHERE \"id\" = $1", qt);
            gw_buf_append(&b, "", 1);
            snprintf(name, sizeof(name), "fw_del_%zu", i);
            rc = prepare(conn, name, b.data, msg, sizeof(msg));
        }
        gw_buf_free(&b);
        free(qt);
        if (rc != 0) {
            set_rule_err(err, line, col, "write rules of table \"%s\" rejected by postgres: %s",
                         label, msg);
            return GW_ERULES;
        }
        if (r->check.sql != NULL) {
            snprintf(name, sizeof(name), "fw_chk_%zu", i);
            if (prepare(conn, name, r->check.sql, msg, sizeof(msg)) != 0) {
                set_rule_err(err, r->check.line, r->check.col,
                             "\"check\" of table \"%s\" rejected by postgres: %s", label, msg);
                return GW_ERULES;
            }
        }
        if (r->check_old.sql != NULL) {
            snprintf(name, sizeof(name), "fw_cko_%zu", i);
            if (prepare(conn, name, r->check_old.sql, msg, sizeof(msg)) != 0) {
                set_rule_err(err, r->check_old.line, r->check_old.col,
                             "\"check_old\" of table \"%s\" rejected by postgres: %s", label, msg);
                return GW_ERULES;
            }
        }
    }
    for (size_t i = 0; i < rules_write_count(set) && i < 256; i++) {
        const rules_write_rule_t *r = rules_write_at(set, i);
        char *qt = qualified(conn, r);
        char *so = r->check_old.sql != NULL
                       ? self_reading_sql(r->check_old.sql, "old", qt, r->check_old.nbinds)
                       : NULL;
        char *sn = r->check.sql != NULL ? self_reading_sql(r->check.sql, "new", qt, r->check.nbinds)
                                        : NULL;
        const char *qv[1] = {qt};
        PGresult *u = gw_pg_query_params(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
            "i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = $1::regclass AND "
            "i.indisunique AND i.indimmediate AND i.indnatts = 1 AND i.indpred IS NULL AND "
            "a.attname = 'id')",
            1, qv, NULL);
        cs->id_unique[i] = u != NULL && PQntuples(u) == 1 && PQgetvalue(u, 0, 0)[0] == 't';
        PQclear(u);
        snprintf(name, sizeof(name), "fw_ckos_%zu", i);
        cs->self_cko[i] = so != NULL && prepare(conn, name, so, msg, sizeof(msg)) == 0;
        snprintf(name, sizeof(name), "fw_chks_%zu", i);
        cs->self_chk[i] = sn != NULL && prepare(conn, name, sn, msg, sizeof(msg)) == 0;
        free(so);
        free(sn);
        free(qt);
    }
    for (size_t k = 0; k < rules_constraint_count(set); k++) {
        const rules_constraint_t *c = rules_constraint_at(set, k);
        snprintf(name, sizeof(name), "fw_con_%zu", k);
        if (prepare(conn, name, c->stmt.sql, msg, sizeof(msg)) != 0) {
            set_rule_err(err, c->stmt.line, c->stmt.col,
                         "constraint \"%s\" rejected by postgres: %s", c->name, msg);
            return GW_ERULES;
        }
        char *ids = constraint_ids_sql(c->stmt.sql);
        if (ids != NULL && k < sizeof(cs->con_ids) / sizeof(cs->con_ids[0])) {
            snprintf(name, sizeof(name), "fw_coi_%zu", k);
            cs->con_ids[k] = prepare(conn, name, ids, msg, sizeof(msg)) == 0;
        }
        free(ids);
    }
    cs->conn = conn;
    cs->pid = PQbackendPID(conn);
    cs->prepared = 1;
    cs->rules = set;
    return 0;
}

/* ---- a batch ---------------------------------------------------------------------------- */

enum { OP_PUT = 1, OP_PATCH, OP_DELETE };

typedef struct wop {
    long long op_id;
    int kind;                       /* OP_*; 0 when the op is malformed (code/message say why) */
    const rules_write_rule_t *rule; /* NULL: no write rules for the type */
    size_t rule_index;
    const char *type;
    char id[256];
    json_t *data; /* borrowed from the body; NULL for DELETE */
    /* result */
    int status;
    const char *code;
    char message[256];
} wop_t;

typedef struct wbatch wbatch_t;

/* Lives in req->pool: when h2o frees the request (the client went away while the batch ran),
 * its dispose callback tells the batch not to answer. */
typedef struct req_guard {
    wbatch_t *b;
} req_guard_t;

/* A batch in flight; malloc'd (not in req->pool, which may go away while a worker runs it). */
struct wbatch {
    gw_job_t job;
    h2o_req_t *req; /* NULL once the request was freed */
    req_guard_t *guard;
    json_t *body;
    char *user;   /* sub */
    char *jwt;    /* claims as JSON text */
    char *params; /* request parameters as JSON text */
    char client_id[256];
    const rules_set_t *rules; /* the write rules serving when it came (see gw_app_active) */
    wop_t *ops;
    size_t nops;
    struct timespec started;
    /* outcome */
    int http_status;
    gw_buf_t out; /* the response body */
    int counts[ST_N];
    int attempts; /* 1: the pipelined path applied it; 2: the careful path ran */
};

/* What a statement's failure means for the batch. */
enum { SQL_OK = 0, SQL_OP = 1, SQL_FATAL = 2 };

/* Classify a failed result: FATAL when the batch cannot go on (connection lost, the transaction
 * must be retried as a whole, the server is shutting down), else a failure of this op. */
static int classify(PGconn *conn, PGresult *res)
{
    if (PQstatus(conn) != CONNECTION_OK) return SQL_FATAL;
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (state == NULL) return SQL_FATAL;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "40", 2) == 0 ||
        strncmp(state, "53", 2) == 0 || strncmp(state, "57", 2) == 0 ||
        strncmp(state, "58", 2) == 0 || strncmp(state, "XX", 2) == 0 ||
        strncmp(state, "26", 2) == 0 /* prepared statement vanished */)
        return SQL_FATAL;
    return SQL_OP;
}

static void op_reject(wop_t *op, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void op_reject(wop_t *op, const char *code, const char *fmt, ...)
{
    op->status = ST_REJECTED;
    op->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->message, sizeof(op->message), fmt, ap);
    va_end(ap);
}

/* Map a Postgres failure of an op to its rejection code and message. */
static void op_reject_pg(wop_t *op, PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *code = "database_error";
    if (state != NULL && strncmp(state, "22", 2) == 0)
        code = "invalid_value";
    else if (state != NULL && strncmp(state, "23", 2) == 0)
        code = "integrity_violation";
    op_reject(op, code, "%s", primary != NULL ? primary : "the statement failed");
}

typedef struct wctx {
    wbatch_t *b;
    PGconn *conn;
    gw_app_t *app;
    int savepoints;
    PGresult *failed; /* the result of the statement that failed (SQL_OP), owned here */
} wctx_t;

/* Run a prepared statement; returns its result (caller PQclears) or NULL with *how set. */
static PGresult *exec_prepared(wctx_t *c, const char *name, int n, const char *const *values,
                               int *how)
{
    PGresult *res = PQexecPrepared(c->conn, name, n, values, NULL, NULL, 0);
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
        *how = SQL_OK;
        return res;
    }
    *how = classify(c->conn, res);
    PQclear(c->failed);
    c->failed = res;
    return NULL;
}

static void rule_values(wctx_t *c, const rules_pg_stmt_t *stmt, const char *new_row,
                        const char *old_row, const char **values, int *n)
{
    *n = stmt->nbinds < 16 ? stmt->nbinds : 16;
    for (int i = 0; i < *n; i++) {
        switch (stmt->binds[i]) {
        case RULES_BIND_NEW_ROW_JSONB:
            values[i] = new_row;
            break;
        case RULES_BIND_OLD_ROW_JSONB:
            values[i] = old_row;
            break;
        case RULES_BIND_USER_ID:
            values[i] = c->b->user;
            break;
        case RULES_BIND_JWT_JSONB:
            values[i] = c->b->jwt;
            break;
        case RULES_BIND_PARAMS_JSONB:
            values[i] = c->b->params;
            break;
        default:
            values[i] = NULL;
        }
    }
}

/* Run compiled rule statement stmt (prepared as name) with its binds. */
static PGresult *exec_rule(wctx_t *c, const char *name, const rules_pg_stmt_t *stmt,
                           const char *new_row, const char *old_row, int *how)
{
    const char *values[16];
    int n;
    rule_values(c, stmt, new_row, old_row, values, &n);
    return exec_prepared(c, name, n, values, how);
}

static int rule_says_true(PGresult *res)
{
    return PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) && PQgetvalue(res, 0, 0)[0] == 't';
}

static void insert_sql(wctx_t *c, const rules_write_rule_t *r, uint64_t mask, int wide,
                       gw_buf_t *sql);

/* The prepared INSERT of the columns in mask for table i (cached per connection); writes its
 * name into name, or "" when the cache is full (then sql is the text to run unnamed). */
static void insert_stmt(wctx_t *c, size_t ti, const rules_write_rule_t *r, uint64_t mask, int wide,
                        char *name, size_t nlen, gw_buf_t *sql)
{
    conn_state_t *cs = &tl_conn;
    if (!wide) {
        for (size_t k = 0; k < cs->nins; k++)
            if (cs->ins[k].table == ti && cs->ins[k].mask == mask) {
                snprintf(name, nlen, "fw_ins_%zu_%llx", ti, (unsigned long long)mask);
                return;
            }
    }
    insert_sql(c, r, mask, wide, sql);
    name[0] = '\0';
    if (wide || cs->nins >= INS_CACHE) return;
    char nm[64];
    snprintf(nm, sizeof(nm), "fw_ins_%zu_%llx", ti, (unsigned long long)mask);
    PGresult *res = PQprepare(c->conn, nm, sql->data, 0, NULL);
    if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK) {
        cs->ins[cs->nins].table = ti;
        cs->ins[cs->nins].mask = mask;
        cs->nins++;
        snprintf(name, nlen, "%s", nm);
    }
    PQclear(res); /* a failed prepare falls back to the unnamed statement, which reports it */
}

/* The INSERT of the columns in mask (all listed columns when wide) of r into sql. */
static void insert_sql(wctx_t *c, const rules_write_rule_t *r, uint64_t mask, int wide,
                       gw_buf_t *sql)
{
    char *qt = qualified(c->conn, r);
    gw_buf_printf(sql, "INSERT INTO %s AS t (", qt);
    gw_buf_t sel = GW_BUF_INIT;
    size_t n = 0;
    for (size_t col = 0; col < r->ncolumns; col++) {
        if (!wide && col < 64 && !(mask & (UINT64_C(1) << col))) continue;
        char *qc = gw_pg_ident(c->conn, r->columns[col]);
        gw_buf_printf(sql, "%s%s", n > 0 ? ", " : "", qc);
        gw_buf_printf(&sel, "%sr.%s", n > 0 ? ", " : "", qc);
        n++;
        free(qc);
    }
    gw_buf_printf(sql,
                  ") SELECT %.*s FROM jsonb_populate_record(NULL::%s, $1::jsonb) AS r "
                  "RETURNING to_jsonb(t)::text",
                  (int)sel.len, sel.data, qt);
    gw_buf_append(sql, "", 1);
    gw_buf_free(&sel);
    free(qt);
}

/* Record violations of the constraints of op's table over the stored row new_row. */
static int run_constraints(wctx_t *c, wop_t *op, const char *new_row)
{
    const rules_set_t *set = c->b->rules;
    for (size_t k = 0; k < rules_constraint_count(set); k++) {
        const rules_constraint_t *con = rules_constraint_at(set, k);
        if (strcmp(con->schema, op->rule->schema) != 0 || strcmp(con->table, op->rule->table) != 0)
            continue;
        char name[64];
        int ids = k < sizeof(tl_conn.con_ids) / sizeof(tl_conn.con_ids[0]) && tl_conn.con_ids[k];
        snprintf(name, sizeof(name), ids ? "fw_coi_%zu" : "fw_con_%zu", k);
        int how;
        PGresult *res = exec_rule(c, name, &con->stmt, new_row, NULL, &how);
        if (res == NULL) return how;
        const char *conflicting = NULL;
        int violated;
        if (ids) {
            violated = PQntuples(res) > 0 && !PQgetisnull(res, 0, 0);
            conflicting = violated ? PQgetvalue(res, 0, 0) : NULL;
        } else {
            violated = rule_says_true(res);
        }
        if (violated) {
            char label[256];
            table_label(op->rule, label, sizeof(label));
            const char *v[6] = {
                con->name,   label, op->id, c->b->user, conflicting != NULL ? conflicting : "[]",
                con->message};
            PGresult *ins = exec_prepared(c, "fw_vio", 6, v, &how);
            if (ins == NULL) {
                PQclear(res);
                return how;
            }
            PQclear(ins);
            atomic_fetch_add(&g_mod.violations, 1);
        }
        PQclear(res);
    }
    return SQL_OK;
}

/* The op's data as JSON text with "id" set (only listed columns; checked by check_columns). */
static char *data_json(const wop_t *op)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(op->id));
    if (op->data != NULL) {
        const char *k;
        json_t *v;
        json_object_foreach(op->data, k, v)
        {
            if (strcmp(k, "id") != 0) json_object_set(o, k, v);
        }
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(o);
    if (s == NULL) abort(); /* out of memory: the gateway's policy */
    return s;
}

/* Every key of the op's data must be a listed column; returns 0 and the column mask, or -1 with
 * the op rejected. wide = 1 when a listed column is past the 64 a mask can name. */
static int check_columns(wop_t *op, uint64_t *mask, int *wide)
{
    const rules_write_rule_t *r = op->rule;
    *mask = 0;
    *wide = r->ncolumns > 64;
    for (size_t c = 0; c < r->ncolumns && c < 64; c++)
        if (strcmp(r->columns[c], "id") == 0) *mask |= UINT64_C(1) << c;
    if (op->data == NULL) return 0;
    const char *k;
    json_t *v;
    json_object_foreach(op->data, k, v)
    {
        if (strcmp(k, "id") == 0) {
            const char *s = json_is_string(v) ? json_string_value(v) : NULL;
            char num[32];
            if (json_is_integer(v))
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v)), s = num;
            if (s == NULL || strcmp(s, op->id) != 0) {
                op_reject(op, "invalid_op", "\"data.id\" differs from the op's \"id\"");
                return -1;
            }
            continue;
        }
        size_t c = 0;
        while (c < r->ncolumns && strcmp(r->columns[c], k) != 0)
            c++;
        if (c == r->ncolumns) {
            char label[256];
            op_reject(op, "column_not_allowed", "column \"%.64s\" of table \"%s\" is not writable",
                      k, table_label(r, label, sizeof(label)));
            return -1;
        }
        if (c < 64) *mask |= UINT64_C(1) << c;
    }
    return 0;
}

/* Apply one op (its rule and shape were checked). Returns SQL_OK with op->status set, SQL_OP
 * when a statement failed (c->failed), SQL_FATAL. */
static int apply_op(wctx_t *c, wop_t *op)
{
    const rules_write_rule_t *r = op->rule;
    size_t ti = op->rule_index;
    char label[256];
    table_label(r, label, sizeof(label));
    if (op->kind == OP_DELETE && !(r->operations & RULES_OP_DELETE)) {
        op_reject(op, "operation_not_allowed", "delete is not allowed on table \"%s\"", label);
        return SQL_OK;
    }
    if (op->kind == OP_PATCH && !(r->operations & RULES_OP_UPDATE)) {
        op_reject(op, "operation_not_allowed", "update is not allowed on table \"%s\"", label);
        return SQL_OK;
    }
    uint64_t mask;
    int wide;
    if (check_columns(op, &mask, &wide) != 0) return SQL_OK;
    char *data = data_json(op);
    int how = SQL_OK;
    char name[64];
    PGresult *sel = NULL, *res = NULL;
    snprintf(name, sizeof(name), "fw_sel_%zu", ti);
    const char *sv[2] = {op->id, data};
    sel = exec_prepared(c, name, 2, sv, &how);
    if (sel == NULL) goto out;
    int exists = PQntuples(sel) > 0;
    const char *old_row = exists ? PQgetvalue(sel, 0, 0) : NULL;
    const char *merged = exists ? PQgetvalue(sel, 0, 1) : NULL;
    int stale = exists && PQgetvalue(sel, 0, 2)[0] == 't';
    int action = op->kind == OP_DELETE ? OP_DELETE : exists ? OP_PATCH : OP_PUT;
    if (op->kind == OP_PATCH && !exists) {
        op_reject(op, "not_found", "no row with this id in table \"%s\"", label);
        goto out;
    }
    if (op->kind == OP_DELETE && !exists) {
        op->status = ST_APPLIED; /* already gone */
        goto out;
    }
    if (action == OP_PUT && !(r->operations & RULES_OP_INSERT)) {
        op_reject(op, "operation_not_allowed", "insert is not allowed on table \"%s\"", label);
        goto out;
    }
    if (action == OP_PATCH && !(r->operations & RULES_OP_UPDATE)) {
        op_reject(op, "operation_not_allowed", "update is not allowed on table \"%s\"", label);
        goto out;
    }
    if (action != OP_PUT && r->check_old.sql != NULL) {
        snprintf(name, sizeof(name), "fw_cko_%zu", ti);
        res = exec_rule(c, name, &r->check_old, NULL, old_row, &how);
        if (res == NULL) goto out;
        int ok = rule_says_true(res);
        PQclear(res);
        res = NULL;
        if (!ok) {
            op_reject(op, "check_old_failed",
                      "the stored row does not pass \"check_old\" of table \"%s\"", label);
            goto out;
        }
    }
    if (action != OP_DELETE && r->check.sql != NULL) {
        snprintf(name, sizeof(name), "fw_chk_%zu", ti);
        res = exec_rule(c, name, &r->check, action == OP_PUT ? data : merged, NULL, &how);
        if (res == NULL) goto out;
        int ok = rule_says_true(res);
        PQclear(res);
        res = NULL;
        if (!ok) {
            op_reject(op, "check_failed", "the new row does not pass \"check\" of table \"%s\"",
                      label);
            goto out;
        }
    }
    if (action == OP_PATCH && stale) {
        op->status = ST_STALE;
        op->code = "stale";
        snprintf(op->message, sizeof(op->message),
                 "\"%s\" is older than the stored value; the stored row is kept", r->lww_column);
        goto out;
    }
    if (action == OP_DELETE) {
        snprintf(name, sizeof(name), "fw_del_%zu", ti);
        res = exec_prepared(c, name, 1, sv, &how);
    } else if (action == OP_PATCH) {
        snprintf(name, sizeof(name), "fw_upd_%zu", ti);
        res = exec_prepared(c, name, 2, sv, &how);
    } else {
        gw_buf_t sql = GW_BUF_INIT;
        insert_stmt(c, ti, r, mask, wide, name, sizeof(name), &sql);
        const char *iv[1] = {data};
        if (name[0] != '\0') {
            res = exec_prepared(c, name, 1, iv, &how);
        } else {
            res = PQexecParams(c->conn, sql.data, 1, NULL, iv, NULL, NULL, 0);
            if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                how = classify(c->conn, res);
                PQclear(c->failed);
                c->failed = res;
                res = NULL;
            }
        }
        gw_buf_free(&sql);
    }
    if (res == NULL) goto out;
    if (action != OP_DELETE && PQntuples(res) > 0)
        how = run_constraints(c, op, PQgetvalue(res, 0, 0));
    if (how == SQL_OK) op->status = ST_APPLIED;
out:
    PQclear(res);
    PQclear(sel);
    free(data);
    return how;
}

/* Run sql without results; SQL_OK or SQL_FATAL. */
static int exec_simple(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? SQL_OK : SQL_FATAL;
}

/* ---- the pipelined fast path ----------------------------------------------------------------
 *
 * Most batches are all "normal": PUTs of new rows, PATCHes and DELETEs of existing rows, every
 * check passing. run_pipelined() sends such a batch with libpq's pipeline mode, so a run of PUTs
 * costs one round trip in all instead of three per op: [SELECT FOR UPDATE, check, INSERT] per op
 * are queued without waiting. PATCH and DELETE need the stored row before their checks, so the
 * pipeline is synced there (one round trip per such op). The first result that is not the
 * normal one (an error, a check saying no, a PUT finding a row, a stale write, a violation to
 * record) makes it give up: roll back, and the caller runs the batch again the careful way
 * (run_attempt with savepoints), which decides every op from scratch. So the fast path never
 * decides a rejection; it only applies batches in which nothing is rejected.
 */

enum {
    PQ_PREPARE,
    PQ_BEGIN,
    PQ_LOG_GET,
    PQ_SEL_NEW,
    PQ_SEL_OLD,
    PQ_SEL_LOCK,
    PQ_CHECK,
    PQ_APPLY,
    PQ_APPLY_ROW,
    PQ_CON,
    PQ_LOG_SET,
    PQ_COMMIT
};

typedef struct pq_item {
    int kind;
    size_t op;
} pq_item_t;

typedef struct pq_state {
    pq_item_t *items;
    size_t n, cap;
    long long last; /* from PQ_LOG_GET */
    char *old_row;  /* from PQ_SEL_OLD (one op at a time) */
    char *merged;
    char *new_row; /* from PQ_APPLY_ROW */
    int deviated;  /* a result that is not the normal one */
    int fatal;
} pq_state_t;

static void pq_push(pq_state_t *q, int kind, size_t op)
{
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 64;
        q->items = gw_xrealloc(q->items, q->cap * sizeof(pq_item_t));
    }
    q->items[q->n].kind = kind;
    q->items[q->n].op = op;
    q->n++;
}

static int pq_send(wctx_t *c, pq_state_t *q, int kind, size_t op, const char *name, int n,
                   const char *const *values)
{
    if (!PQsendQueryPrepared(c->conn, name, n, values, NULL, NULL, 0)) return -1;
    pq_push(q, kind, op);
    return 0;
}

static int pq_send_rule(wctx_t *c, pq_state_t *q, int kind, size_t op, const char *name,
                        const rules_pg_stmt_t *stmt, const char *new_row, const char *old_row)
{
    const char *values[16];
    int n;
    rule_values(c, stmt, new_row, old_row, values, &n);
    return pq_send(c, q, kind, op, name, n, values);
}

/* Sync and read every queued result; sets q->deviated / q->fatal. 0 when all were normal. */
static int pq_sync(wctx_t *c, pq_state_t *q)
{
    if (!PQpipelineSync(c->conn)) {
        q->fatal = 1;
        return -1;
    }
    for (size_t i = 0; i < q->n; i++) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) { /* the connection broke */
            q->fatal = 1;
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        if (q->items[i].kind == PQ_PREPARE && st != PGRES_COMMAND_OK) {
            tl_conn.ins[q->items[i].op].table = SIZE_MAX; /* not prepared after all */
            tl_conn.ins[q->items[i].op].mask = 0;
        }
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            if (st != PGRES_PIPELINE_ABORTED && classify(c->conn, res) == SQL_FATAL) q->fatal = 1;
            q->deviated = 1;
        } else if (!q->deviated) {
            pq_item_t *it = &q->items[i];
            int rows = PQntuples(res);
            switch (it->kind) {
            case PQ_LOG_GET:
                q->last = rows > 0 ? atoll(PQgetvalue(res, 0, 0)) : 0;
                break;
            case PQ_SEL_NEW: /* a PUT must find no row */
                q->deviated = rows != 0;
                break;
            case PQ_SEL_OLD: /* a PATCH/DELETE must find its row, not stale */
                if (rows != 1 || PQgetvalue(res, 0, 2)[0] == 't') {
                    q->deviated = 1;
                } else {
                    free(q->old_row);
                    free(q->merged);
                    q->old_row = gw_xstrdup(PQgetvalue(res, 0, 0));
                    q->merged = gw_xstrdup(PQgetvalue(res, 0, 1));
                }
                break;
            case PQ_SEL_LOCK: /* a PATCH/DELETE must find its row, not stale */
                q->deviated = rows != 1 || PQgetvalue(res, 0, 2)[0] == 't';
                break;
            case PQ_CHECK:
                q->deviated = !rule_says_true(res);
                break;
            case PQ_APPLY_ROW:
                if (rows != 1) {
                    q->deviated = 1;
                } else {
                    free(q->new_row);
                    q->new_row = gw_xstrdup(PQgetvalue(res, 0, 0));
                }
                break;
            case PQ_CON: /* a violation is recorded by the careful path */
                if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) &&
                    strcmp(PQgetvalue(res, 0, 0), "f") != 0)
                    q->deviated = 1;
                break;
            default:
                break;
            }
        }
        PQclear(res);
        if (q->fatal) break;
        /* each query's results end with NULL */
        while (!q->fatal && (res = PQgetResult(c->conn)) != NULL) {
            if (PQresultStatus(res) == PGRES_PIPELINE_SYNC) { /* should not happen here */
                PQclear(res);
                q->fatal = 1;
                break;
            }
            PQclear(res);
        }
    }
    if (!q->fatal) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC) q->fatal = 1;
        PQclear(res);
    }
    if (PQstatus(c->conn) != CONNECTION_OK) q->fatal = 1;
    q->n = 0;
    return q->fatal || q->deviated ? -1 : 0;
}

static int table_has_constraints(const rules_set_t *set, const rules_write_rule_t *r)
{
    for (size_t k = 0; k < rules_constraint_count(set); k++) {
        const rules_constraint_t *con = rules_constraint_at(set, k);
        if (strcmp(con->schema, r->schema) == 0 && strcmp(con->table, r->table) == 0) return 1;
    }
    return 0;
}

/* Whether this connection has the INSERT of these columns of table ti prepared. */
static int insert_cached(size_t ti, uint64_t mask)
{
    for (size_t k = 0; k < tl_conn.nins; k++)
        if (tl_conn.ins[k].table == ti && tl_conn.ins[k].mask == mask) return 1;
    return 0;
}

/* Queue the constraint queries of op's table over q->new_row (after a sync). */
static int pq_send_constraints(wctx_t *c, pq_state_t *q, size_t i)
{
    const rules_set_t *set = c->b->rules;
    wop_t *op = &c->b->ops[i];
    for (size_t k = 0; k < rules_constraint_count(set); k++) {
        const rules_constraint_t *con = rules_constraint_at(set, k);
        if (strcmp(con->schema, op->rule->schema) != 0 || strcmp(con->table, op->rule->table) != 0)
            continue;
        char name[64];
        snprintf(name, sizeof(name), "fw_con_%zu", k);
        if (pq_send_rule(c, q, PQ_CON, i, name, &con->stmt, q->new_row, NULL) != 0) return -1;
    }
    return 0;
}

/* The whole batch through the pipeline. SQL_OK (committed), SQL_OP (not a normal batch: rolled
 * back, run it the careful way) or SQL_FATAL. */
static int run_pipelined(wctx_t *c)
{
    wbatch_t *b = c->b;
    pq_state_t q = {0};
    char **datas = gw_xcalloc(b->nops > 0 ? b->nops : 1, sizeof(char *));
    int rc = SQL_OP;
    if (!PQenterPipelineMode(c->conn)) {
        free(datas);
        return SQL_OP;
    }
    const char *lv[3] = {b->user, b->client_id, NULL};
    if (!PQsendQueryParams(c->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0)) goto fail;
    pq_push(&q, PQ_BEGIN, 0);
    if (pq_send(c, &q, PQ_LOG_GET, 0, "fw_log_get", 2, lv) != 0 || pq_sync(c, &q) != 0) goto fail;
    long long high = q.last;
    char name[64];
    for (size_t i = 0; i < b->nops; i++) {
        wop_t *op = &b->ops[i];
        op->status = ST_REJECTED;
        if (op->op_id <= high) {
            op->status = ST_DUPLICATE;
            continue;
        }
        high = op->op_id;
        if (op->kind == 0 || op->rule == NULL) continue; /* rejected when parsed */
        const rules_write_rule_t *r = op->rule;
        size_t ti = op->rule_index;
        op->code = NULL;
        op->message[0] = '\0';
        uint64_t mask;
        int wide;
        int need = op->kind == OP_PUT     ? RULES_OP_INSERT
                   : op->kind == OP_PATCH ? RULES_OP_UPDATE
                                          : RULES_OP_DELETE;
        if (!(r->operations & need) || check_columns(op, &mask, &wide) != 0)
            goto fail; /* a rejection: the careful path words it */
        datas[i] = data_json(op);
        const char *sv[2] = {op->id, datas[i]};
        snprintf(name, sizeof(name), "fw_sel_%zu", ti);
        int constraints = op->kind != OP_DELETE && table_has_constraints(c->b->rules, r);
        if (op->kind == OP_PUT) {
            /* taken as an insert; if the row exists after all, the INSERT fails on the unique
             * index of "id" and the careful path makes it the update it is (without such an
             * index, the SELECT must say the row is new) */
            if ((ti >= 256 || !tl_conn.id_unique[ti]) &&
                pq_send(c, &q, PQ_SEL_NEW, i, name, 2, sv) != 0)
                goto fail;
            if (r->check.sql != NULL) {
                snprintf(name, sizeof(name), "fw_chk_%zu", ti);
                if (pq_send_rule(c, &q, PQ_CHECK, i, name, &r->check, datas[i], NULL) != 0)
                    goto fail;
            }
            if (wide) goto fail; /* more columns than a mask names: the careful path */
            snprintf(name, sizeof(name), "fw_ins_%zu_%llx", ti, (unsigned long long)mask);
            if (!insert_cached(ti, mask)) { /* prepare it in the pipeline, ahead of its use */
                if (tl_conn.nins >= INS_CACHE) goto fail;
                gw_buf_t sql = GW_BUF_INIT;
                insert_sql(c, r, mask, 0, &sql);
                int sent = PQsendPrepare(c->conn, name, sql.data, 0, NULL);
                gw_buf_free(&sql);
                if (!sent) goto fail;
                tl_conn.ins[tl_conn.nins].table = ti;
                tl_conn.ins[tl_conn.nins].mask = mask;
                pq_push(&q, PQ_PREPARE, tl_conn.nins++);
            }
            const char *iv[1] = {datas[i]};
            if (pq_send(c, &q, constraints ? PQ_APPLY_ROW : PQ_APPLY, i, name, 1, iv) != 0)
                goto fail;
        } else if (ti < 256 && (r->check_old.sql == NULL || tl_conn.self_cko[ti]) &&
                   (op->kind == OP_DELETE || r->check.sql == NULL || tl_conn.self_chk[ti])) {
            /* the checks read the row themselves: no wait for the SELECT */
            if (pq_send(c, &q, PQ_SEL_LOCK, i, name, 2, sv) != 0) goto fail;
            const char *values[18];
            int n;
            if (r->check_old.sql != NULL) {
                rule_values(c, &r->check_old, NULL, NULL, values, &n);
                values[n++] = op->id;
                snprintf(name, sizeof(name), "fw_ckos_%zu", ti);
                if (pq_send(c, &q, PQ_CHECK, i, name, n, values) != 0) goto fail;
            }
            if (op->kind == OP_PATCH && r->check.sql != NULL) {
                rule_values(c, &r->check, NULL, NULL, values, &n);
                values[n++] = op->id;
                values[n++] = datas[i];
                snprintf(name, sizeof(name), "fw_chks_%zu", ti);
                if (pq_send(c, &q, PQ_CHECK, i, name, n, values) != 0) goto fail;
            }
            snprintf(name, sizeof(name), op->kind == OP_PATCH ? "fw_upd_%zu" : "fw_del_%zu", ti);
            if (pq_send(c, &q, constraints ? PQ_APPLY_ROW : PQ_APPLY, i, name,
                        op->kind == OP_PATCH ? 2 : 1, sv) != 0)
                goto fail;
        } else {
            if (pq_send(c, &q, PQ_SEL_OLD, i, name, 2, sv) != 0 || pq_sync(c, &q) != 0) goto fail;
            if (r->check_old.sql != NULL) {
                snprintf(name, sizeof(name), "fw_cko_%zu", ti);
                if (pq_send_rule(c, &q, PQ_CHECK, i, name, &r->check_old, NULL, q.old_row) != 0)
                    goto fail;
            }
            if (op->kind == OP_PATCH && r->check.sql != NULL) {
                snprintf(name, sizeof(name), "fw_chk_%zu", ti);
                if (pq_send_rule(c, &q, PQ_CHECK, i, name, &r->check, q.merged, NULL) != 0)
                    goto fail;
            }
            snprintf(name, sizeof(name), op->kind == OP_PATCH ? "fw_upd_%zu" : "fw_del_%zu", ti);
            if (pq_send(c, &q, constraints ? PQ_APPLY_ROW : PQ_APPLY, i, name,
                        op->kind == OP_PATCH ? 2 : 1, sv) != 0)
                goto fail;
        }
        if (constraints) {
            if (pq_sync(c, &q) != 0 || pq_send_constraints(c, &q, i) != 0) goto fail;
        }
        op->status = ST_APPLIED; /* provisional: any deviation later reruns the batch */
    }
    if (high > q.last) {
        char hs[32];
        snprintf(hs, sizeof(hs), "%lld", high);
        lv[2] = hs;
        if (pq_send(c, &q, PQ_LOG_SET, 0, "fw_log_set", 3, lv) != 0) goto fail;
    }
    if (pq_sync(c, &q) != 0) /* every result checked before COMMIT is even sent */
        goto fail;
    if (!PQsendQueryParams(c->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0)) goto fail;
    pq_push(&q, PQ_COMMIT, 0);
    if (pq_sync(c, &q) == 0) rc = SQL_OK;
fail:
    if (rc != SQL_OK && !q.fatal && q.n > 0) pq_sync(c, &q); /* drain what was queued */
    if (q.fatal || PQstatus(c->conn) != CONNECTION_OK) rc = SQL_FATAL;
    if (rc != SQL_FATAL && !PQexitPipelineMode(c->conn)) rc = SQL_FATAL;
    if (rc == SQL_OP && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        exec_simple(c->conn, "ROLLBACK");
    for (size_t i = 0; i < b->nops; i++)
        free(datas[i]);
    free(datas);
    free(q.items);
    free(q.old_row);
    free(q.merged);
    free(q.new_row);
    return rc;
}

/* One attempt at the whole batch in one transaction. Returns SQL_OK (committed), SQL_OP (a
 * statement failed without savepoints: rolled back, run again with them) or SQL_FATAL. */
static int run_attempt(wctx_t *c)
{
    wbatch_t *b = c->b;
    if (exec_simple(c->conn, "BEGIN") != SQL_OK) return SQL_FATAL;
    int how;
    const char *lv[3] = {b->user, b->client_id, NULL};
    PGresult *res = exec_prepared(c, "fw_log_get", 2, lv, &how);
    if (res == NULL) {
        exec_simple(c->conn, "ROLLBACK");
        return SQL_FATAL;
    }
    long long last = atoll(PQgetvalue(res, 0, 0)), high = last;
    PQclear(res);
    for (size_t i = 0; i < b->nops; i++) {
        wop_t *op = &b->ops[i];
        op->status = ST_REJECTED;
        if (op->op_id <= high) {
            op->status = ST_DUPLICATE;
            continue;
        }
        high = op->op_id;
        if (op->kind == 0 || op->rule == NULL) {
            op->status = ST_REJECTED; /* code and message were set when parsing */
            continue;
        }
        op->code = NULL;
        op->message[0] = '\0';
        if (c->savepoints && exec_simple(c->conn, "SAVEPOINT w") != SQL_OK) return SQL_FATAL;
        how = apply_op(c, op);
        if (how == SQL_FATAL) return SQL_FATAL;
        if (how == SQL_OP && !c->savepoints) {
            exec_simple(c->conn, "ROLLBACK");
            return SQL_OP;
        }
        if (how == SQL_OP) {
            op_reject_pg(op, c->failed);
            if (exec_simple(c->conn, "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w") != SQL_OK)
                return SQL_FATAL;
        } else if (c->savepoints && exec_simple(c->conn, "RELEASE SAVEPOINT w") != SQL_OK) {
            return SQL_FATAL;
        }
    }
    if (high > last) {
        char hs[32];
        snprintf(hs, sizeof(hs), "%lld", high);
        lv[2] = hs;
        res = exec_prepared(c, "fw_log_set", 3, lv, &how);
        if (res == NULL) {
            exec_simple(c->conn, "ROLLBACK");
            return SQL_FATAL;
        }
        PQclear(res);
    }
    res = PQexec(c->conn, "COMMIT");
    int ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    return ok ? SQL_OK : SQL_FATAL;
}

static void batch_fail(wbatch_t *b, int status, const char *code, const char *msg)
{
    b->http_status = status;
    gw_buf_reset(&b->out);
    gw_buf_puts(&b->out, "{\"error\":{\"code\":");
    gw_buf_json_str(&b->out, code);
    gw_buf_puts(&b->out, ",\"description\":");
    gw_buf_json_str(&b->out, msg);
    gw_buf_puts(&b->out, "}}");
}

static void batch_results(wbatch_t *b)
{
    b->http_status = 200;
    gw_buf_reset(&b->out);
    gw_buf_puts(&b->out, "{\"results\":[");
    for (size_t i = 0; i < b->nops; i++) {
        wop_t *op = &b->ops[i];
        b->counts[op->status]++;
        gw_buf_printf(&b->out, "%s{\"op_id\":%lld,\"status\":\"%s\"", i > 0 ? "," : "", op->op_id,
                      ST_NAME[op->status]);
        if (op->status == ST_REJECTED || op->status == ST_STALE) {
            gw_buf_puts(&b->out, ",\"code\":");
            gw_buf_json_str(&b->out, op->code != NULL ? op->code : "rejected");
            gw_buf_puts(&b->out, ",\"message\":");
            gw_buf_json_str(&b->out, op->message);
        }
        gw_buf_puts(&b->out, "}");
    }
    gw_buf_puts(&b->out, "]}");
}

/* Prepare and run the batch on conn: SQL_OK (committed), or -1 with the response set. */
static int batch_try(wbatch_t *b, PGconn *conn)
{
    gw_err_t err;
    gw_err_clear(&err);
    int rc = prepare_conn(conn, b->rules, &err);
    if (rc != 0) {
        char msg[1024];
        gw_err_format(&err, msg, sizeof(msg));
        if (rc == GW_ERULES)
            gw_error("write", "write rules rejected by postgres", "error=%s",
                     gw_log_qs(msg, (char[1100]){0}, 1100));
        batch_fail(b, 503, rc == GW_ERULES ? "not_ready" : "unavailable", msg);
        return -1;
    }
    wctx_t c = {.b = b, .conn = conn, .app = g_mod.app};
    b->attempts = 1;
    int how = run_pipelined(&c);
    if (how == SQL_OP) { /* not a normal batch: every op decided one by one, with savepoints */
        c.savepoints = 1;
        b->attempts = 2;
        how = run_attempt(&c);
    }
    PQclear(c.failed);
    if (how == SQL_OK) return SQL_OK;
    tl_conn.prepared = 0; /* prepare again on the next batch (statements may be gone) */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE && PQstatus(conn) == CONNECTION_OK)
        exec_simple(conn, "ROLLBACK");
    char pg[512];
    batch_fail(b, 503, "unavailable", "could not apply the batch; nothing was applied");
    gw_warn("write", "batch rolled back", "error=%s",
            gw_log_qs(gw_pg_error(conn, pg, sizeof(pg)), (char[600]){0}, 600));
    return -1;
}

static void batch_run(gw_job_t *job, PGconn *conn)
{
    wbatch_t *b = (wbatch_t *)job;
    if (conn == NULL) {
        batch_fail(b, 503, "unavailable", "postgres is not reachable; nothing was applied");
        return;
    }
    if (batch_try(b, conn) == SQL_OK) {
        batch_results(b);
        return;
    }
    /* A connection that died while idle (Postgres restarted) is only noticed on first use: try
     * once more on a fresh one. Safe: nothing of the batch committed, or, if the COMMIT itself
     * was lost, ferry_write_log answers the ops as duplicates. */
    if (PQstatus(conn) == CONNECTION_BAD) {
        PQreset(conn);
        if (PQstatus(conn) == CONNECTION_OK && batch_try(b, conn) == SQL_OK) batch_results(b);
    }
}

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
    atomic_fetch_add(&g_mod.hist[i], 1);
    atomic_fetch_add(&g_mod.hist_sum_us, (uint_fast64_t)(s * 1e6));
}

/* Free b and everything it owns. */
static void batch_free(wbatch_t *b)
{
    json_decref(b->body);
    free(b->user);
    free(b->jwt);
    free(b->params);
    gw_buf_free(&b->out);
    free(b->ops);
    free(b);
}

static void guard_dispose(void *p)
{
    req_guard_t *g = p;
    if (g->b != NULL) g->b->req = NULL;
}

static void batch_done(gw_job_t *job)
{
    wbatch_t *b = (wbatch_t *)job;
    atomic_fetch_sub(&g_mod.inflight, 1);
    double s = elapsed_s(&b->started);
    observe(s);
    if (b->http_status == 200) {
        atomic_fetch_add(&g_mod.batches_ok, 1);
        for (int i = 0; i < ST_N; i++)
            atomic_fetch_add(&g_mod.ops[i], (uint_fast64_t)b->counts[i]);
    } else {
        atomic_fetch_add(&g_mod.batches_unavail, 1);
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
                         "client=%s op_id=%lld status=%s code=%s "
                         "message=%s",
                         client, b->ops[i].op_id, ST_NAME[b->ops[i].status],
                         b->ops[i].code != NULL ? b->ops[i].code : "-",
                         gw_log_qs(b->ops[i].message, m, sizeof(m)));
            }
    if (b->req != NULL) {
        b->guard->b = NULL;
        if (b->http_status != 200)
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
        op_reject(op, "invalid_op", "\"op\" must be \"PUT\", \"PATCH\" or \"DELETE\"");
        return 0;
    }
    if (!json_is_string(type) || json_string_length(type) == 0) {
        op->kind = 0;
        op_reject(op, "invalid_op", "\"type\" must be a table name");
        return 0;
    }
    op->type = json_string_value(type);
    if (json_is_string(id) && json_string_length(id) > 0 && json_string_length(id) < sizeof(op->id))
        snprintf(op->id, sizeof(op->id), "%s", json_string_value(id));
    else if (json_is_integer(id))
        snprintf(op->id, sizeof(op->id), "%lld", (long long)json_integer_value(id));
    else {
        op->kind = 0;
        op_reject(op, "invalid_op", "\"id\" must be a non-empty string of at most %zu bytes",
                  sizeof(op->id) - 1);
        return 0;
    }
    if (data != NULL && !json_is_null(data) && !json_is_object(data)) {
        op->kind = 0;
        op_reject(op, "invalid_op", "\"data\" must be an object");
        return 0;
    }
    if (op->kind != OP_DELETE && json_is_object(data)) op->data = data;
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
        op_reject(op, "table_not_writable", "table \"%.64s\" has no write rules", op->type);
        return 0;
    }
    for (size_t k = 0; k < rules_write_count(rules); k++)
        if (rules_write_at(rules, k) == op->rule) op->rule_index = k;
    return 0;
}

static void bad_request(h2o_req_t *req, const char *msg)
{
    atomic_fetch_add(&g_mod.batches_bad, 1);
    gw_http_send_error(req, 400, "bad_request", "%s", msg);
}

static int on_write(h2o_req_t *req, void *ud)
{
    gw_app_t *app = ud;
    struct timespec started;
    clock_gettime(CLOCK_MONOTONIC, &started);
    auth_token_t *tok;
    if (gw_app_authenticate(app, req, &tok) != 0) return 0;
    json_error_t jerr;
    json_t *body = json_loadb(req->entity.base, req->entity.len, 0, &jerr);
    char msg[512];
    if (body == NULL || !json_is_object(body)) {
        if (body == NULL)
            snprintf(msg, sizeof(msg), "the body is not valid JSON: %s (line %d, column %d)",
                     jerr.text, jerr.line, jerr.column);
        else
            snprintf(msg, sizeof(msg), "the body must be a JSON object");
        json_decref(body);
        auth_token_release(tok);
        bad_request(req, msg);
        return 0;
    }
    json_t *client = json_object_get(body, "client_id"), *batch = json_object_get(body, "batch");
    json_t *params = json_object_get(body, "parameters");
    const char *problem = NULL;
    if (!json_is_string(client) || json_string_length(client) == 0)
        problem = "\"client_id\" must be a non-empty string";
    else if (json_string_length(client) > 200)
        problem = "\"client_id\" is longer than 200 bytes";
    else if (!json_is_array(batch))
        problem = "\"batch\" must be an array of operations";
    else if (params != NULL && !json_is_null(params) && !json_is_object(params))
        problem = "\"parameters\" must be an object";
    if (problem != NULL) {
        json_decref(body);
        auth_token_release(tok);
        bad_request(req, problem);
        return 0;
    }
    size_t n = json_array_size(batch);
    wbatch_t *b = gw_xcalloc(1, sizeof(*b));
    b->body = body;
    b->ops = gw_xcalloc(n > 0 ? n : 1, sizeof(wop_t));
    b->nops = n;
    b->rules = gw_app_active(app)->rules;
    for (size_t i = 0; i < n; i++) {
        if (parse_op(b->rules, json_array_get(batch, i), i, &b->ops[i], msg, sizeof(msg)) != 0) {
            batch_free(b);
            auth_token_release(tok);
            bad_request(req, msg);
            return 0;
        }
    }
    b->req = req;
    b->started = started;
    b->user = gw_xstrdup(tok->sub != NULL ? tok->sub : "");
    b->jwt = json_dumps(tok->claims, JSON_COMPACT);
    b->params = json_is_object(params) ? json_dumps(params, JSON_COMPACT) : gw_xstrdup("{}");
    if (b->jwt == NULL || b->params == NULL) abort();
    snprintf(b->client_id, sizeof(b->client_id), "%s", json_string_value(client));
    auth_token_release(tok);
    if (rules_write_count(b->rules) == 0) { /* nothing is writable: no need for Postgres */
        for (size_t i = 0; i < n; i++)
            b->ops[i].status = ST_REJECTED;
        batch_results(b);
        for (int i = 0; i < ST_N; i++)
            atomic_fetch_add(&g_mod.ops[i], (uint_fast64_t)b->counts[i]);
        atomic_fetch_add(&g_mod.batches_ok, 1);
        gw_http_send_json(req, 200, b->out.data, b->out.len);
        batch_free(b);
        return 0;
    }
    if (atomic_fetch_add(&g_mod.inflight, 1) >= g_mod.max_inflight) {
        atomic_fetch_sub(&g_mod.inflight, 1);
        atomic_fetch_add(&g_mod.batches_unavail, 1);
        batch_free(b);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, H2O_STRLIT("1"));
        gw_http_send_error(req, 503, "unavailable",
                           "too many write batches in progress; nothing was applied");
        return 0;
    }
    b->guard = h2o_mem_alloc_shared(&req->pool, sizeof(req_guard_t), guard_dispose);
    b->guard->b = b;
    b->job.run = batch_run;
    b->job.done = batch_done;
    gw_workers_submit(app->workers, req->conn->ctx, &b->job);
    return 0;
}

/* ---- start-up: ferry's tables, statements, readiness ------------------------------------ */

static gw_job_t g_startup;

/* Wait up to secs unless shutdown begins; returns 1 when stopping. */
static int wait_or_stop(int secs)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += secs;
    pthread_mutex_lock(&g_mod.lock);
    while (!g_mod.stopping)
        if (pthread_cond_timedwait(&g_mod.cond, &g_mod.lock, &until) != 0) break;
    int stop = g_mod.stopping;
    pthread_mutex_unlock(&g_mod.lock);
    return stop;
}

static void startup_run(gw_job_t *job, PGconn *conn)
{
    gw_err_t err;
    gw_err_clear(&err);
    int rc = conn == NULL ? gw_err_set(&err, GW_EUNAVAIL, NULL, "postgres is not reachable")
                          : prepare_conn(conn, gw_app_active(g_mod.app)->rules, &err);
    if (rc == 0) {
        gw_ready_set(g_mod.ready_id, 1, NULL);
        int self = 0;
        for (size_t i = 0; i < 256; i++)
            self += tl_conn.self_cko[i] + tl_conn.self_chk[i];
        gw_info("write", "write rules prepared",
                "tables=%zu constraints=%zu self_reading_checks=%d",
                rules_write_count(gw_app_active(g_mod.app)->rules),
                rules_constraint_count(gw_app_active(g_mod.app)->rules), self);
        job->ud = NULL;
        return;
    }
    char msg[1024], q[1100];
    gw_err_format(&err, msg, sizeof(msg));
    gw_ready_set(g_mod.ready_id, 0, msg);
    if (strcmp(msg, g_mod.last_problem) != 0) { /* log a problem once, not every retry */
        snprintf(g_mod.last_problem, sizeof(g_mod.last_problem), "%s", msg);
        if (rc == GW_EUNAVAIL)
            gw_warn("write", "write rules not prepared yet", "error=%s",
                    gw_log_qs(msg, q, sizeof(q)));
        else
            gw_error("write", "write rules not prepared", "error=%s detail=%s",
                     gw_log_qs(msg, q, sizeof(q)),
                     gw_log_qs(err.detail[0] != '\0' ? err.detail : "retrying every 5 s",
                               (char[600]){0}, 600));
    }
    job->ud = wait_or_stop(rc == GW_EUNAVAIL ? 1 : 5) ? NULL : job;
}

static void startup_done(gw_job_t *job)
{
    if (job->ud == NULL) return;
    pthread_mutex_lock(&g_mod.lock);
    int stop = g_mod.stopping;
    pthread_mutex_unlock(&g_mod.lock);
    if (!stop) gw_workers_submit(g_mod.app->workers, gw_http_context(g_mod.app->http, 0), job);
}

static void on_thread_start(h2o_context_t *ctx, size_t index, void *ud)
{
    (void)ud;
    if (index != 0) return;
    memset(&g_startup, 0, sizeof(g_startup));
    g_startup.run = startup_run;
    g_startup.done = startup_done;
    gw_workers_submit(g_mod.app->workers, ctx, &g_startup);
}

static void on_shutdown(h2o_context_t *ctx, size_t index, void *ud)
{
    (void)ctx;
    (void)index;
    (void)ud;
    pthread_mutex_lock(&g_mod.lock);
    g_mod.stopping = 1;
    pthread_cond_broadcast(&g_mod.cond);
    pthread_mutex_unlock(&g_mod.lock);
}

/* ---- metrics ---------------------------------------------------------------------------- */

static void collect(gw_buf_t *out, void *ud)
{
    (void)ud;
    gw_buf_puts(out, "# HELP ferry_write_batches_total Write-back batches by HTTP status.\n"
                     "# TYPE ferry_write_batches_total counter\n");
    gw_buf_printf(out, "ferry_write_batches_total{status=\"200\"} %llu\n",
                  (unsigned long long)atomic_load(&g_mod.batches_ok));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"400\"} %llu\n",
                  (unsigned long long)atomic_load(&g_mod.batches_bad));
    gw_buf_printf(out, "ferry_write_batches_total{status=\"503\"} %llu\n",
                  (unsigned long long)atomic_load(&g_mod.batches_unavail));
    gw_buf_puts(out, "# HELP ferry_write_ops_total Write-back ops by result.\n"
                     "# TYPE ferry_write_ops_total counter\n");
    for (int i = 0; i < ST_N; i++)
        gw_buf_printf(out, "ferry_write_ops_total{status=\"%s\"} %llu\n", ST_NAME[i],
                      (unsigned long long)atomic_load(&g_mod.ops[i]));
    gw_buf_puts(out, "# HELP ferry_write_violations_total Constraint violations recorded.\n"
                     "# TYPE ferry_write_violations_total counter\n");
    gw_buf_printf(out, "ferry_write_violations_total %llu\n",
                  (unsigned long long)atomic_load(&g_mod.violations));
    gw_buf_puts(out, "# HELP ferry_write_batch_duration_seconds Time from request to response "
                     "of a write-back batch.\n"
                     "# TYPE ferry_write_batch_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i <= HIST_N; i++) {
        cum += (unsigned long long)atomic_load(&g_mod.hist[i]);
        if (i < HIST_N)
            gw_buf_printf(out, "ferry_write_batch_duration_seconds_bucket{le=\"%g\"} %llu\n",
                          HIST_LE[i], cum);
        else
            gw_buf_printf(out, "ferry_write_batch_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
                          cum);
    }
    gw_buf_printf(out, "ferry_write_batch_duration_seconds_sum %.6f\n",
                  (double)atomic_load(&g_mod.hist_sum_us) / 1e6);
    gw_buf_printf(out, "ferry_write_batch_duration_seconds_count %llu\n", cum);
}

void gw_write_register(gw_app_t *app)
{
    g_mod.app = app;
    size_t pool = app->cfg->postgres.pool_size > 0 ? (size_t)app->cfg->postgres.pool_size : 1;
    g_mod.max_inflight = pool * 16 > 64 ? pool * 16 : 64;
    gw_http_route(app->http, "/api/write", "write", GW_HTTP_POST, on_write, app);
    gw_metrics_add_collector(collect, NULL);
    if (rules_write_count(gw_app_active(app)->rules) > 0) {
        g_mod.ready_id =
            gw_ready_register("write rules", "write rules not yet prepared in postgres");
        gw_http_on_thread_start(app->http, on_thread_start, NULL);
        gw_http_on_shutdown(app->http, on_shutdown, NULL);
    }
}
