/* gw_write_batch.c -- write-back: apply one batch in one Postgres transaction (worker threads)
 *
 * Per batch (worker, gw__write_batch_run -> run_attempt, the careful path):
 *   BEGIN; statement_timeout for this transaction (write_back.statement_timeout);
 *   lock the client's row of ferry_write_log (created on first use) and read last_op_id;
 *   for each op, inside a SAVEPOINT: op_id <= the highest id seen -> "duplicate"; otherwise
 *     table with write rules?  operation allowed?  only listed columns?     -> else "rejected"
 *     SELECT the stored row FOR UPDATE, the sent data merged over it, and lww "older?"
 *     check_old over the stored row (update, delete)
 *     merge strategies (a rule's merge:, updates only): fw_mrg decides each merged column from
 *       the stored row, the op's "old" and its time -> the data to write (kept columns leave it)
 *     check over the new row (insert, update)
 *     lww_column older than the stored value                               -> "stale"
 *     apply: INSERT of the given columns | UPDATE of the given columns | DELETE by id
 *     each constraint of the table over the stored result; rows found -> ferry_violations
 *     merged columns: lww times -> ferry_write_times, decided columns -> ferry_write_conflicts
 *     a statement that fails rolls back to the savepoint: that op alone is "rejected"
 *   UPDATE ferry_write_log SET last_op_id; COMMIT.
 *
 * Batches in which nothing is rejected, stale or flagged (and no table merges) go the same way
 * but pipelined first
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
 *   5. No statement of a batch runs longer than write_back.statement_timeout (SET LOCAL, so the
 *      connection's other jobs keep their own settings): a slow check or a lock held elsewhere
 *      costs one worker that long at most, then the batch is rolled back and answered 503.
 *      The batch as a whole has write_back.batch_timeout from when its worker starts it: the
 *      careful path looks at the clock before each op (a statement running when the time is up
 *      ends first, at most statement_timeout later); the pipelined one waits for results at most
 *      until then and cancels the statement Postgres runs, so the queued rest is skipped
 *      (wait_input). Either way the batch is rolled back and answered 503, never once its COMMIT
 *      was sent. postgres.timeout, the worker's deadline, cuts the connection if nothing else
 *      ended the batch by then.
 *   6. A user learns nothing about rows check_old hides: where a table has check_old, an
 *      update or delete of an id that does not exist is answered exactly like one whose stored
 *      row fails check_old (code, message); ferry's debug log keeps the real reason.
 */
#include "api/gw_write_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- a batch ---------------------------------------------------------------------------- */

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

void gw__write_op_reject(wop_t *op, const char *code, const char *fmt, ...)
{
    op->status = ST_REJECTED;
    op->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(op->message, sizeof(op->message), fmt, ap);
    va_end(ap);
}

static int table_has_constraints(const rules_set_t *set, const rules_write_rule_t *r);

/* What a user hears when check_old refuses, or when there is no row to check (invariant 6). */
#define CHECK_OLD_MESSAGE "no row with this id that \"check_old\" of table \"%s\" lets you change"

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
    gw__write_op_reject(op, code, "%s", primary != NULL ? primary : "the statement failed");
}

/* The statement timeout of a batch's transaction, in ms as text ($1). */
#define TIMEOUT_SQL "SELECT set_config('statement_timeout', $1, true)"

typedef struct wctx {
    wbatch_t *b;
    PGconn *conn;
    gw_app_t *app;
    char timeout[24]; /* statement_timeout in ms ("" when none) */
    char fatal[256];  /* Postgres's message of the result that stopped the batch, for the log */
    int savepoints;
    int timed_out;    /* write_back.batch_timeout ended the batch */
    size_t ops_begun; /* ops sent (pipelined) or started (careful) when it did */
    PGresult *failed; /* the result of the statement that failed (SQL_OP), owned here */
} wctx_t;

static uint64_t mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Whether the batch's write_back.batch_timeout is up (and from now on says so: timed_out). */
static int past_deadline(wctx_t *c)
{
    if (!c->timed_out && c->b->deadline_ms != 0 && mono_ms() >= c->b->deadline_ms) c->timed_out = 1;
    return c->timed_out;
}

/* Ask Postgres to cancel what c's connection is running (the batch's time is up): the running
 * statement fails with query_canceled and the rest of the pipeline up to its sync is skipped.
 * A cancel that arrives while the backend waits for input is ignored by Postgres. */
static void cancel_running(wctx_t *c)
{
    PGcancel *cn = PQgetCancel(c->conn);
    char errbuf[256];
    if (cn != NULL && !PQcancel(cn, errbuf, sizeof(errbuf)))
        gw_warn("write", "could not cancel the statement of a batch past its deadline", "error=%s",
                gw_log_qs(errbuf, (char[300]){0}, 300));
    PQfreeCancel(cn);
}

/* Keep the message of a result that stops the batch (the first one), for the log. */
static void note_fatal(wctx_t *c, PGresult *res)
{
    const char *m = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (c->fatal[0] == '\0' && m != NULL) snprintf(c->fatal, sizeof(c->fatal), "%s", m);
}

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
    if (*how == SQL_FATAL) note_fatal(c, res);
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
    conn_state_t *cs = &gw__write_conn;
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
    char *qt = gw__write_qualified(c->conn, r);
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
        int ids = k < sizeof(gw__write_conn.con_ids) / sizeof(gw__write_conn.con_ids[0]) &&
                  gw__write_conn.con_ids[k];
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
            gw__write_table_label(op->rule, label, sizeof(label));
            /* what a re-check needs of this request: the claims and parameters, when read */
            gw_buf_t req = GW_BUF_INIT;
            for (int i = 0; i < con->stmt.nbinds && req.len == 0; i++)
                if (con->stmt.binds[i] == RULES_BIND_JWT_JSONB ||
                    con->stmt.binds[i] == RULES_BIND_PARAMS_JSONB)
                    gw_buf_printf(&req, "{\"jwt\":%s,\"parameters\":%s}",
                                  c->b->jwt != NULL ? c->b->jwt : "{}",
                                  c->b->params != NULL ? c->b->params : "{}");
            const char *v[7] = {con->name,
                                label,
                                op->id,
                                c->b->user,
                                conflicting != NULL ? conflicting : "[]",
                                con->message,
                                req.len > 0 ? req.data : NULL};
            PGresult *ins = exec_prepared(c, "fw_vio", 7, v, &how);
            gw_buf_free(&req);
            if (ins == NULL) {
                PQclear(res);
                return how;
            }
            if (atoi(PQcmdTuples(ins)) > 0) atomic_fetch_add(&gw__write_mod.violations, 1);
            PQclear(ins);
            if (op->violations == NULL) op->violations = json_array();
            json_array_append_new(op->violations, json_string(con->name));
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

/* Whether the table of rule r has a column named col (a catalog lookup in the batch's
 * transaction; only for columns the rules do not list, which are rare). */
static int table_has_column(wctx_t *c, const rules_write_rule_t *r, const char *col)
{
    char *qt = gw__write_qualified(c->conn, r);
    const char *v[2] = {qt, col};
    PGresult *res = PQexecParams(c->conn,
                                 "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
                                 "$1::regclass AND attname = $2 AND attnum > 0 AND NOT "
                                 "attisdropped)",
                                 2, NULL, v, NULL, NULL, 0);
    int has = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
              PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    free(qt);
    return has;
}

/* Count and log (rate-limited) a sent column that the rules do not list. */
static void unknown_column(wctx_t *c, wop_t *op, const char *col, const char *label)
{
    int has = table_has_column(c, op->rule, col);
    gw__write_unknown_column(label, has ? col : NULL);
    static gw_log_limit_t limit = GW_LOG_LIMIT_INIT(10000);
    unsigned long long suppressed;
    if (gw_log_limit_take(&limit, &suppressed)) {
        char qc[200], qu[300], qcl[300];
        gw_warn("write",
                has ? "a client wrote a column the write rules do not list"
                    : "a client wrote a column the table does not have",
                "table=%s column=%s user=%s client=%s action=%s suppressed=%llu", label,
                gw_log_qs(col, qc, sizeof(qc)), gw_log_qs(c->b->user, qu, sizeof(qu)),
                gw_log_qs(c->b->client_id, qcl, sizeof(qcl)),
                op->rule->unknown_columns == RULES_UNKNOWN_IGNORE ? "ignored" : "rejected",
                suppressed);
    }
}

/* Every key of the op's data must be a listed column; returns 0 and the column mask, or -1 with
 * the op rejected. wide = 1 when a listed column is past the 64 a mask can name. A column the
 * rule does not list rejects the op, or with unknown_columns: ignore is dropped from its data;
 * both are counted and logged when c is given (the careful path); without c (the pipelined
 * path) such an op only returns -1, and the careful path decides it. */
static int check_columns(wctx_t *c, wop_t *op, uint64_t *mask, int *wide)
{
    const rules_write_rule_t *r = op->rule;
    *mask = 0;
    *wide = r->ncolumns > 64;
    for (size_t col = 0; col < r->ncolumns && col < 64; col++)
        if (strcmp(r->columns[col], "id") == 0) *mask |= UINT64_C(1) << col;
    if (op->data == NULL) return 0;
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(op->data, tmp, k, v)
    {
        if (strcmp(k, "id") == 0) {
            const char *s = json_is_string(v) ? json_string_value(v) : NULL;
            char num[32];
            if (json_is_integer(v))
                snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v)), s = num;
            if (s == NULL || strcmp(s, op->id) != 0) {
                gw__write_op_reject(op, "invalid_op", "\"data.id\" differs from the op's \"id\"");
                return -1;
            }
            continue;
        }
        size_t col = 0;
        while (col < r->ncolumns && strcmp(r->columns[col], k) != 0)
            col++;
        if (col == r->ncolumns) {
            char label[256];
            gw__write_table_label(r, label, sizeof(label));
            if (c == NULL) return -1;
            unknown_column(c, op, k, label);
            if (r->unknown_columns == RULES_UNKNOWN_IGNORE) {
                if (op->ignored == NULL) op->ignored = json_object(); /* for the history */
                json_object_set(op->ignored, k, v);
                json_object_del(op->data, k);
                continue;
            }
            gw__write_op_reject(op, "column_not_allowed",
                                "column \"%.64s\" of table \"%s\" is not writable", k, label);
            return -1;
        }
        if (col < 64) *mask |= UINT64_C(1) << col;
    }
    return 0;
}

/* ---- the sync history (ferry_write_history) ------------------------------------------------ */

/* Whether ops are recorded (write_back.history.keep > 0). */
static int history_on(void)
{
    return gw__write_mod.app->cfg->write_back.history.keep > 0;
}

/* Append v as compact JSON to out. */
static void put_json(gw_buf_t *out, json_t *v)
{
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (t == NULL) abort(); /* out of memory: the gateway's policy */
    gw_buf_puts(out, t);
    free(t);
}

/*
 * op's entry of the history, appended to out as one JSON object: "op_id", "op", "t" (table),
 * "r" (row id), "s" (status), "c"/"m" (a rejection's code and message), "sent" (the data as
 * sent), "old" (the client's previous values), "ignored" (sent columns unknown_columns: ignore
 * dropped, with their values), "stored" (the stored values of the sent columns
 * before the op; the whole row for a DELETE), "decided" ({column: {"strategy", "resolution",
 * "result"}} for the columns a merge strategy decided; every other sent column of an applied
 * op was written as sent, by client_wins), "v" (the constraints it violated). Written as text,
 * not built as a tree: this runs for every op of every batch.
 */
static void history_entry(gw_buf_t *out, const wop_t *op, char *label, size_t llen)
{
    static const char *const kinds[] = {"invalid", "PUT", "PATCH", "DELETE"};
    const char *t = op->rule != NULL   ? gw__write_table_label(op->rule, label, llen)
                    : op->type != NULL ? op->type
                                       : "";
    if (t != label) snprintf(label, llen, "%s", t);
    gw_buf_printf(out, "{\"op_id\":%lld,\"op\":\"%s\",\"t\":", op->op_id,
                  kinds[op->kind >= 0 && op->kind <= 3 ? op->kind : 0]);
    gw_buf_json_str(out, label);
    gw_buf_puts(out, ",\"r\":");
    gw_buf_json_str(out, op->id);
    gw_buf_printf(out, ",\"s\":\"%s\"", gw__write_status_names[op->status]);
    if (op->code != NULL && (op->status == ST_REJECTED || op->status == ST_STALE)) {
        gw_buf_puts(out, ",\"c\":");
        gw_buf_json_str(out, op->code);
        gw_buf_puts(out, ",\"m\":");
        gw_buf_json_str(out, op->message);
    }
    if (op->status != ST_DUPLICATE) {
        if (op->data != NULL) {
            gw_buf_puts(out, ",\"sent\":");
            put_json(out, op->data);
        }
        if (op->old != NULL) {
            gw_buf_puts(out, ",\"old\":");
            put_json(out, op->old);
        }
        if (op->ignored != NULL) {
            gw_buf_puts(out, ",\"ignored\":");
            put_json(out, op->ignored);
        }
        if (op->before != NULL && op->kind == OP_DELETE) {
            gw_buf_printf(out, ",\"stored\":%s", op->before);
        } else if (op->before != NULL && op->data != NULL) {
            json_t *before = json_loads(op->before, 0, NULL), *st = json_object();
            const char *k;
            json_t *v;
            json_object_foreach(op->data, k, v)
            {
                json_t *b = json_object_get(before, k);
                if (b != NULL && strcmp(k, "id") != 0) json_object_set(st, k, b);
            }
            gw_buf_puts(out, ",\"stored\":");
            put_json(out, st);
            json_decref(st);
            json_decref(before);
        }
        if (op->results != NULL && op->status == ST_APPLIED) {
            gw_buf_puts(out, ",\"decided\":{");
            const char *k;
            json_t *v;
            int n = 0;
            json_object_foreach(op->results, k, v)
            {
                const char *how =
                    op->outcome != NULL ? json_string_value(json_object_get(op->outcome, k)) : NULL;
                const char *strategy = "client_wins";
                for (size_t x = 0; op->rule->merge != NULL && x < op->rule->ncolumns; x++)
                    if (strcmp(op->rule->columns[x], k) == 0)
                        strategy = rules_merge_name(op->rule->merge[x]);
                gw_buf_puts(out, n++ > 0 ? "," : "");
                gw_buf_json_str(out, k);
                gw_buf_printf(out,
                              ":{\"strategy\":\"%s\",\"resolution\":\"%s\",\"result\":", strategy,
                              how != NULL ? how : "applied");
                put_json(out, v);
                gw_buf_puts(out, "}");
            }
            gw_buf_puts(out, "}");
        }
    }
    if (op->violations != NULL) {
        gw_buf_puts(out, ",\"v\":");
        put_json(out, op->violations);
    }
    gw_buf_puts(out, "}");
}

/*
 * The history of b: its ops' entries as one JSON array, and *rows the keys of the rows they
 * name, one per line, each the compact JSON array ["table","id"] (what `ferry debug history`
 * looks for, so one row per batch is found without an index per op). Both malloc'd text; the
 * caller frees them.
 */
static char *history_json(const wbatch_t *b, char **rows)
{
    gw_buf_t a = GW_BUF_INIT, keys = GW_BUF_INIT;
    char label[256];
    gw_buf_puts(&a, "[");
    for (size_t i = 0; i < b->nops; i++) {
        if (i > 0) gw_buf_puts(&a, ",");
        history_entry(&a, &b->ops[i], label, sizeof(label));
        gw_buf_puts(&keys, "[");
        gw_buf_json_str(&keys, label);
        gw_buf_puts(&keys, ",");
        gw_buf_json_str(&keys, b->ops[i].id);
        gw_buf_puts(&keys, "]\n");
    }
    gw_buf_puts(&a, "]");
    gw_buf_append(&a, "", 1);
    gw_buf_append(&keys, "", 1);
    *rows = keys.data;
    return a.data;
}

/* ---- merge strategies (a write rule's merge:) ------------------------------------------------ */

/* Whether op sends a column whose strategy is m. */
static int sends_merge(const wop_t *op, rules_merge_t m)
{
    const rules_write_rule_t *r = op->rule;
    if (r->merge == NULL || op->data == NULL) return 0;
    for (size_t k = 0; k < r->ncolumns; k++)
        if (r->merge[k] == m && json_object_get(op->data, r->columns[k]) != NULL) return 1;
    return 0;
}

/* The first column op sends whose strategy is m ("" when none). */
static const char *first_merge_column(const wop_t *op, rules_merge_t m)
{
    const rules_write_rule_t *r = op->rule;
    for (size_t k = 0; r->merge != NULL && op->data != NULL && k < r->ncolumns; k++)
        if (r->merge[k] == m && json_object_get(op->data, r->columns[k]) != NULL)
            return r->columns[k];
    return "";
}

/* A JSON scalar as text into buf (strings as they are, numbers printed); -1 for other kinds. */
static int scalar_text(json_t *v, char *buf, size_t len)
{
    if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, len, "%.17g", json_real_value(v));
    else
        return -1;
    return buf[0] != '\0' ? 0 : -1;
}

/* The op's timestamp for its lww columns (lww_timestamp of the rule), as text into buf; 0, or
 * -1 with the op rejected saying what it lacks. */
static int op_timestamp(wop_t *op, char *buf, size_t len)
{
    const rules_write_rule_t *r = op->rule;
    char label[256];
    gw__write_table_label(r, label, sizeof(label));
    const char *col = first_merge_column(op, RULES_MERGE_LWW);
    if (r->ts_source == RULES_TS_COLUMN) {
        if (scalar_text(json_object_get(op->data, r->ts_name), buf, len) == 0) return 0;
        gw__write_op_reject(op, "timestamp_required",
                            "column \"%s\" of table \"%s\" merges with \"lww\", which needs "
                            "the op's time: send column \"%s\" with it",
                            col, label, r->ts_name);
        return -1;
    }
    json_t *m = op->metadata != NULL ? json_loads(op->metadata, 0, NULL) : NULL;
    int rc = json_is_object(m) ? scalar_text(json_object_get(m, r->ts_name), buf, len) : -1;
    json_decref(m);
    if (rc == 0) return 0;
    gw__write_op_reject(op, "timestamp_required",
                        "column \"%s\" of table \"%s\" merges with \"lww\", which needs the "
                        "op's time: field \"%s\" of its \"metadata\" (a JSON object; enable "
                        "trackMetadata for the table in the client schema)",
                        col, label, r->ts_name);
    return -1;
}

static char *dumps(json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (s == NULL) abort(); /* out of memory: the gateway's policy */
    return s;
}

/* What a merged update writes: the data to send to fw_upd, the new row for check, and the
 * columns to record. Owned by the caller (merge_free). */
typedef struct merge_out {
    char *data;      /* NULL: write the op's data as sent */
    char *row;       /* NULL: the sent data merged over the stored row (fw_sel's answer) */
    json_t *lww;     /* columns whose lww time to record (array), or NULL */
    json_t *records; /* conflicts to record: [{column, strategy, resolution, sent, stored,
                        result}] or NULL */
} merge_out_t;

static void merge_free(merge_out_t *m)
{
    free(m->data);
    free(m->row);
    json_decref(m->lww);
    json_decref(m->records);
}

/* Note what a strategy decided for column col of op: the value (for the history) and, when
 * other than "applied", the resolution (for its result). */
static void note_outcome(wop_t *op, const char *col, const char *resolution, json_t *value)
{
    if (op->results == NULL) op->results = json_object();
    json_object_set(op->results, col, value != NULL ? value : json_null());
    if (strcmp(resolution, "applied") == 0) return;
    if (op->outcome == NULL) op->outcome = json_object();
    json_object_set_new(op->outcome, col, json_string(resolution));
}

void gw__write_op_reset(wop_t *op)
{
    json_decref(op->outcome);
    json_decref(op->results);
    json_decref(op->violations);
    free(op->before);
    op->outcome = op->results = op->violations = NULL;
    op->before = NULL;
}

/*
 * The merge decisions for an update of the stored row old_row by op (data: the op's data as
 * JSON text): runs fw_mrg_<i> and fills out. SQL_OK (op->code set when the op is rejected),
 * SQL_OP, SQL_FATAL.
 */
static int merge_update(wctx_t *c, wop_t *op, const char *data, const char *old_row, const char *ts,
                        merge_out_t *out)
{
    const rules_write_rule_t *r = op->rule;
    char label[256], name[64];
    gw__write_table_label(r, label, sizeof(label));
    char *old = op->old != NULL ? dumps(op->old) : NULL;
    const char *v[5] = {op->id, data, old, ts, label};
    snprintf(name, sizeof(name), "fw_mrg_%zu", op->rule_index);
    int how;
    PGresult *res = exec_prepared(c, name, 5, v, &how);
    free(old);
    if (res == NULL) return how;
    json_t *dec = PQntuples(res) == 1 ? json_loads(PQgetvalue(res, 0, 0), 0, NULL) : NULL;
    PQclear(res);
    json_t *d = json_loads(data, 0, NULL), *row = json_loads(old_row, 0, NULL);
    const char *col;
    json_t *e;
    json_object_foreach(dec, col, e)
    {
        size_t k = 0;
        while (k < r->ncolumns && strcmp(r->columns[k], col) != 0)
            k++;
        if (k == r->ncolumns || json_is_null(e)) continue;
        rules_merge_t m = r->merge[k];
        if (json_is_string(e)) { /* "no_old" ("no_ts" is caught before) */
            gw__write_op_reject(op, "old_required",
                                "column \"%s\" of table \"%s\" merges with \"%s\", which needs "
                                "its previous value in the op's \"old\": enable trackPrevious "
                                "for the table in the client schema",
                                col, label, rules_merge_name(m));
            break;
        }
        const char *resolution = json_string_value(json_array_get(e, 0));
        json_t *value = json_array_get(e, 1);
        if (resolution == NULL) continue;
        json_t *sent = json_object_get(d, col);
        if (strcmp(resolution, "applied") != 0) {
            if (out->records == NULL) out->records = json_array();
            json_t *rec = json_object();
            json_object_set_new(rec, "column", json_string(col));
            json_object_set_new(rec, "strategy", json_string(rules_merge_name(m)));
            json_object_set_new(rec, "resolution", json_string(resolution));
            json_object_set(rec, "sent", sent != NULL ? sent : json_null());
            json_object_set(rec, "stored",
                            json_object_get(row, col) != NULL ? json_object_get(row, col)
                                                              : json_null());
            json_object_set(rec, "result", value != NULL ? value : json_null());
            json_array_append_new(out->records, rec);
        }
        note_outcome(op, col, resolution, value);
        if (strcmp(resolution, "kept") == 0) {
            json_object_del(d, col);
            continue;
        }
        if (value != NULL) json_object_set(d, col, value);
        if (m == RULES_MERGE_LWW) {
            if (out->lww == NULL) out->lww = json_array();
            json_array_append_new(out->lww, json_string(col));
        }
    }
    if (op->code == NULL && d != NULL && row != NULL) {
        out->data = dumps(d);
        json_object_update(row, d);
        out->row = dumps(row);
    }
    json_decref(dec);
    json_decref(d);
    json_decref(row);
    return SQL_OK;
}

/* After op's write: record the lww times and the conflicts of out. */
static int merge_record(wctx_t *c, wop_t *op, const char *ts, const merge_out_t *out)
{
    char label[256];
    gw__write_table_label(op->rule, label, sizeof(label));
    int how = SQL_OK;
    if (out->lww != NULL && json_array_size(out->lww) > 0 && ts != NULL) {
        char *cols = dumps(out->lww);
        const char *v[4] = {label, op->id, cols, ts};
        PGresult *res = exec_prepared(c, "fw_tms", 4, v, &how);
        free(cols);
        if (res == NULL) return how;
        PQclear(res);
    }
    char opid[32];
    snprintf(opid, sizeof(opid), "%lld", op->op_id);
    char *old;
    size_t i;
    json_t *rec;
    json_array_foreach(out->records, i, rec)
    {
        const char *col = json_string_value(json_object_get(rec, "column"));
        char *sent = dumps(json_object_get(rec, "sent"));
        char *stored = dumps(json_object_get(rec, "stored"));
        char *result = dumps(json_object_get(rec, "result"));
        json_t *o = op->old != NULL ? json_object_get(op->old, col) : NULL;
        old = o != NULL ? dumps(o) : NULL;
        const char *v[12] = {label,
                             op->id,
                             col,
                             c->b->user,
                             c->b->client_id,
                             opid,
                             json_string_value(json_object_get(rec, "strategy")),
                             json_string_value(json_object_get(rec, "resolution")),
                             sent,
                             old,
                             stored,
                             result};
        PGresult *res = exec_prepared(c, "fw_cfl", 12, v, &how);
        free(sent);
        free(stored);
        free(result);
        free(old);
        if (res == NULL) return how;
        PQclear(res);
    }
    return SQL_OK;
}

/* Apply one op (its rule and shape were checked). Returns SQL_OK with op->status set, SQL_OP
 * when a statement failed (c->failed), SQL_FATAL. */
static int apply_op(wctx_t *c, wop_t *op)
{
    const rules_write_rule_t *r = op->rule;
    size_t ti = op->rule_index;
    char label[256];
    gw__write_table_label(r, label, sizeof(label));
    if (op->kind == OP_DELETE && !(r->operations & RULES_OP_DELETE)) {
        gw__write_op_reject(op, "operation_not_allowed", "delete is not allowed on table \"%s\"",
                            label);
        return SQL_OK;
    }
    if (op->kind == OP_PATCH && !(r->operations & RULES_OP_UPDATE)) {
        gw__write_op_reject(op, "operation_not_allowed", "update is not allowed on table \"%s\"",
                            label);
        return SQL_OK;
    }
    uint64_t mask;
    int wide;
    if (check_columns(c, op, &mask, &wide) != 0) return SQL_OK;
    char *data = data_json(op);
    int how = SQL_OK;
    char name[64], ts[128];
    int have_ts = 0;
    merge_out_t mo = {0};
    PGresult *sel = NULL, *res = NULL;
    snprintf(name, sizeof(name), "fw_sel_%zu", ti);
    const char *sv[2] = {op->id, data};
    sel = exec_prepared(c, name, 2, sv, &how);
    if (sel == NULL) goto out;
    int exists = PQntuples(sel) > 0;
    const char *old_row = exists ? PQgetvalue(sel, 0, 0) : NULL;
    if (old_row != NULL && history_on()) op->before = gw_xstrdup(old_row);
    const char *merged = exists ? PQgetvalue(sel, 0, 1) : NULL;
    int stale = exists && PQgetvalue(sel, 0, 2)[0] == 't';
    int action = op->kind == OP_DELETE ? OP_DELETE : exists ? OP_PATCH : OP_PUT;
    if (!exists && op->kind != OP_PUT && r->check_old.sql != NULL) {
        /* the same answer as a stored row check_old refuses (invariant 6) */
        gw__write_op_reject(op, "check_old_failed", CHECK_OLD_MESSAGE, label);
        op->reason = "not_found";
        goto out;
    }
    if (op->kind == OP_PATCH && !exists) {
        gw__write_op_reject(op, "not_found", "no row with this id in table \"%s\"", label);
        goto out;
    }
    if (op->kind == OP_DELETE && !exists) {
        op->status = ST_APPLIED; /* already gone */
        goto out;
    }
    if (action == OP_PUT && !(r->operations & RULES_OP_INSERT)) {
        gw__write_op_reject(op, "operation_not_allowed", "insert is not allowed on table \"%s\"",
                            label);
        goto out;
    }
    if (action == OP_PATCH && !(r->operations & RULES_OP_UPDATE)) {
        gw__write_op_reject(op, "operation_not_allowed", "update is not allowed on table \"%s\"",
                            label);
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
            gw__write_op_reject(op, "check_old_failed", CHECK_OLD_MESSAGE, label);
            goto out;
        }
    }
    if (r->merge != NULL && action != OP_DELETE) {
        if (sends_merge(op, RULES_MERGE_LWW)) {
            if (op_timestamp(op, ts, sizeof(ts)) != 0) goto out;
            have_ts = 1;
        }
        if (action == OP_PATCH) {
            how = merge_update(c, op, data, old_row, have_ts ? ts : NULL, &mo);
            if (how != SQL_OK || op->code != NULL) goto out;
            if (mo.row != NULL) merged = mo.row;
            if (mo.data != NULL) sv[1] = mo.data;
        } else {
            for (size_t k = 0; k < r->ncolumns; k++)
                if (r->merge[k] == RULES_MERGE_LWW && json_object_get(op->data, r->columns[k])) {
                    if (mo.lww == NULL) mo.lww = json_array();
                    json_array_append_new(mo.lww, json_string(r->columns[k]));
                }
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
            gw__write_op_reject(op, "check_failed",
                                "the new row does not pass \"check\" of table \"%s\"", label);
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
    if (table_has_constraints(c->b->rules, r)) { /* violations this row is part of: again */
        size_t resolved = 0;
        PGresult *failed = NULL;
        if (gw__write_recheck(c->conn, c->b->rules, label, op->id, &resolved, &failed) != 0) {
            how = classify(c->conn, failed);
            if (how == SQL_FATAL) note_fatal(c, failed);
            PQclear(c->failed);
            c->failed = failed;
            goto out;
        }
    }
    if (action != OP_DELETE && PQntuples(res) > 0)
        how = run_constraints(c, op, PQgetvalue(res, 0, 0));
    if (how == SQL_OK && r->merge != NULL && action != OP_DELETE)
        how = merge_record(c, op, have_ts ? ts : NULL, &mo);
    if (how == SQL_OK && action == OP_DELETE && r->merge_lww) {
        PGresult *t = exec_prepared(c, "fw_tmd", 2, (const char *[2]){label, op->id}, &how);
        PQclear(t);
    }
    if (how == SQL_OK) op->status = ST_APPLIED;
out:
    PQclear(res);
    PQclear(sel);
    merge_free(&mo);
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
 * are queued without waiting. A PATCH or DELETE is one statement (fw_upf_<i> / fw_delf_<i>,
 * gw_write_stmt.c: lock, check_old, check, lww_column and the write in one WITH … UPDATE|DELETE
 * … RETURNING) that changes its row exactly when the careful path would have applied the op
 * plainly; no changed row is a deviation like any other. Without that form (a rule Postgres
 * would not prepare it for) the older sequence below is used. PATCH and DELETE need the stored row
 * before their checks, so the pipeline is synced there (one round trip per such op). The first
 * result that is not the normal one (an error, a check saying no, a PUT finding a row, a stale
 * write, a violation to record) makes it give up: roll back, and the caller runs the batch again
 * the careful way (run_attempt with savepoints), which decides every op from scratch. So the fast
 * path never decides a rejection; it only applies batches in which nothing is rejected.
 */

enum {
    PQ_PREPARE,
    PQ_BEGIN,
    PQ_TIMEOUT,
    PQ_LOG_GET,
    PQ_SEL_NEW,
    PQ_SEL_OLD,
    PQ_SEL_LOCK,
    PQ_CHECK,
    PQ_APPLY,
    PQ_APPLY_ROW,
    PQ_FAST,
    PQ_MERGE,
    PQ_TIMES,
    PQ_CON,
    PQ_VIO_OPEN,
    PQ_LOG_SET,
    PQ_HIST,
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
    int final; /* the COMMIT is queued: write_back.batch_timeout is no longer looked at */
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

/* The decisions fw_mrf_<i> made for op (a JSON object {column: [resolution, value]}): its
 * outcome and results, as merge_update would have noted them. */
static void take_decisions(wop_t *op, const char *text)
{
    json_t *dec = json_loads(text, 0, NULL);
    const char *col;
    json_t *e;
    json_object_foreach(dec, col, e)
    {
        const char *resolution = json_string_value(json_array_get(e, 0));
        if (resolution == NULL) continue;
        note_outcome(op, col, resolution, json_array_get(e, 1));
    }
    json_decref(dec);
}

/* Keep the stored row op i found, for the history. */
static void keep_before(wctx_t *c, size_t i, const char *row)
{
    if (!history_on()) return;
    free(c->b->ops[i].before);
    c->b->ops[i].before = gw_xstrdup(row);
}

/*
 * Before a PQgetResult that would block: wait for Postgres's answer at most until the batch's
 * write_back.batch_timeout, and past it cancel the statement it runs (once; the canceled one
 * fails, the rest up to the sync is skipped, and those results are read as usual). Postgres
 * sends a pipeline's results when it reaches the sync, so looking at the clock between results
 * would only see the time once every queued statement had run.
 */
static void wait_input(wctx_t *c, pq_state_t *q)
{
    if (q->final || c->timed_out || c->b->deadline_ms == 0) return;
    while (PQisBusy(c->conn)) {
        uint64_t now = mono_ms();
        if (now >= c->b->deadline_ms) {
            c->timed_out = 1;
            cancel_running(c);
            return;
        }
        struct pollfd p = {.fd = PQsocket(c->conn), .events = POLLIN};
        uint64_t left = c->b->deadline_ms - now;
        int n = poll(&p, 1, left > 60000 ? 60000 : (int)left);
        if (n < 0 && errno != EINTR) return;
        if (n > 0 && !PQconsumeInput(c->conn)) return; /* broken: PQgetResult says so */
    }
}

/* Sync and read every queued result; sets q->deviated / q->fatal. 0 when all were normal. */
static int pq_sync(wctx_t *c, pq_state_t *q)
{
    if (!PQpipelineSync(c->conn)) {
        q->fatal = 1;
        return -1;
    }
    for (size_t i = 0; i < q->n; i++) {
        wait_input(c, q);
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL) { /* the connection broke */
            q->fatal = 1;
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        if (q->items[i].kind == PQ_PREPARE && st != PGRES_COMMAND_OK) {
            gw__write_conn.ins[q->items[i].op].table = SIZE_MAX; /* not prepared after all */
            gw__write_conn.ins[q->items[i].op].mask = 0;
        }
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            if (st != PGRES_PIPELINE_ABORTED && classify(c->conn, res) == SQL_FATAL) {
                q->fatal = 1;
                note_fatal(c, res);
            }
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
                    keep_before(c, it->op, PQgetvalue(res, 0, 0));
                    free(q->old_row);
                    free(q->merged);
                    q->old_row = gw_xstrdup(PQgetvalue(res, 0, 0));
                    q->merged = gw_xstrdup(PQgetvalue(res, 0, 1));
                }
                break;
            case PQ_SEL_LOCK: /* a PATCH/DELETE must find its row, not stale */
                q->deviated = rows != 1 || PQgetvalue(res, 0, 2)[0] == 't';
                if (!q->deviated) keep_before(c, it->op, PQgetvalue(res, 0, 0));
                break;
            case PQ_CHECK:
                q->deviated = !rule_says_true(res);
                break;
            case PQ_FAST: /* one row changed: every check passed (else the careful path) */
                if (rows != 1) {
                    q->deviated = 1;
                } else {
                    keep_before(c, it->op, PQgetvalue(res, 0, 1));
                    free(q->new_row);
                    q->new_row = PQgetisnull(res, 0, 0) ? NULL : gw_xstrdup(PQgetvalue(res, 0, 0));
                }
                break;
            case PQ_MERGE: /* one row changed: decided, checked, written */
                if (rows != 1) {
                    q->deviated = 1;
                } else {
                    keep_before(c, it->op, PQgetvalue(res, 0, 1));
                    take_decisions(&c->b->ops[it->op], PQgetvalue(res, 0, 2));
                    free(q->new_row);
                    q->new_row = gw_xstrdup(PQgetvalue(res, 0, 0));
                }
                break;
            case PQ_APPLY_ROW:
                if (rows != 1) {
                    q->deviated = 1;
                } else {
                    free(q->new_row);
                    q->new_row = gw_xstrdup(PQgetvalue(res, 0, 0));
                }
                break;
            case PQ_VIO_OPEN: /* open violations to re-check: the careful path does it */
                q->deviated = rows > 0;
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
        wait_input(c, q);
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC) q->fatal = 1;
        PQclear(res);
    }
    if (!q->final && past_deadline(c)) q->fatal = 1; /* rolled back by the caller */
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
    for (size_t k = 0; k < gw__write_conn.nins; k++)
        if (gw__write_conn.ins[k].table == ti && gw__write_conn.ins[k].mask == mask) return 1;
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

/*
 * After a fatal result on a live connection (a statement timeout, a deadlock) the pipeline still
 * holds results up to its sync point: read them and leave pipeline mode, so the connection can
 * roll back and serve the next batch. When that does not work out, reconnect (the statements
 * are prepared again: the backend pid changed).
 */
static void pq_leave(PGconn *conn)
{
    for (int i = 0; i < 100000 && PQpipelineStatus(conn) != PQ_PIPELINE_OFF; i++) {
        if (PQexitPipelineMode(conn)) return;
        PGresult *res = PQgetResult(conn);
        if (res == NULL && PQisBusy(conn) == 0 && PQstatus(conn) != CONNECTION_OK) break;
        PQclear(res);
    }
    if (PQpipelineStatus(conn) != PQ_PIPELINE_OFF) {
        gw_warn("write", "could not leave pipeline mode; reconnecting", NULL);
        PQreset(conn);
    }
}

/* The whole batch through the pipeline. SQL_OK (committed), SQL_OP (not a normal batch: rolled
 * back, run it the careful way) or SQL_FATAL. */
static int run_pipelined(wctx_t *c)
{
    wbatch_t *b = c->b;
    pq_state_t q = {0};
    char **datas = gw_xcalloc(b->nops > 0 ? b->nops : 1, sizeof(char *));
    char *history = NULL, *history_rows = NULL;
    int rc = SQL_OP;
    if (!PQenterPipelineMode(c->conn)) {
        free(datas);
        return SQL_OP;
    }
    const char *lv[3] = {b->user, b->client_id, NULL};
    if (!PQsendQueryParams(c->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0)) goto fail;
    pq_push(&q, PQ_BEGIN, 0);
    if (c->timeout[0] != '\0') {
        const char *tv[1] = {c->timeout};
        if (!PQsendQueryParams(c->conn, TIMEOUT_SQL, 1, NULL, tv, NULL, NULL, 0)) goto fail;
        pq_push(&q, PQ_TIMEOUT, 0);
    }
    if (pq_send(c, &q, PQ_LOG_GET, 0, "fw_log_get", 2, lv) != 0 || pq_sync(c, &q) != 0) goto fail;
    long long high = q.last;
    char name[64];
    for (size_t i = 0; i < b->nops; i++) {
        wop_t *op = &b->ops[i];
        c->ops_begun = i;
        if (past_deadline(c)) { /* (sending blocked behind a slow statement) */
            cancel_running(c);
            pq_sync(c, &q);
            goto fail;
        }
        op->status = ST_REJECTED;
        if (op->op_id <= high) {
            op->status = ST_DUPLICATE;
            continue;
        }
        high = op->op_id;
        if (op->kind == 0 || op->rule == NULL) continue; /* rejected when parsed */
        const rules_write_rule_t *r = op->rule;
        size_t ti = op->rule_index;
        gw__write_op_reset(op);
        op->code = NULL;
        op->message[0] = '\0';
        uint64_t mask;
        int wide;
        int need = op->kind == OP_PUT     ? RULES_OP_INSERT
                   : op->kind == OP_PATCH ? RULES_OP_UPDATE
                                          : RULES_OP_DELETE;
        if (!(r->operations & need) || check_columns(NULL, op, &mask, &wide) != 0)
            goto fail; /* a rejection: the careful path words it */
        datas[i] = data_json(op);
        const char *sv[2] = {op->id, datas[i]};
        snprintf(name, sizeof(name), "fw_sel_%zu", ti);
        int constraints = op->kind != OP_DELETE && table_has_constraints(c->b->rules, r);
        if (r->merge != NULL && op->kind == OP_PUT && sends_merge(op, RULES_MERGE_LWW))
            goto fail; /* its lww times are recorded by the careful path */
        if (r->merge != NULL && op->kind == OP_PATCH) {
            /* one statement: lock, the merge decisions, checks, write, times, conflicts */
            if (ti >= 256 || !gw__write_conn.fast_mrg[ti]) goto fail;
            char ts[128], label[256], opid[32];
            int have_ts = 0;
            if (sends_merge(op, RULES_MERGE_LWW)) {
                if (op_timestamp(op, ts, sizeof(ts)) != 0) goto fail; /* careful: rejects */
                have_ts = 1;
            }
            char *old = op->old != NULL ? dumps(op->old) : NULL;
            snprintf(opid, sizeof(opid), "%lld", op->op_id);
            const char *mv[10] = {op->id,
                                  datas[i],
                                  b->user,
                                  b->jwt,
                                  b->params,
                                  old,
                                  have_ts ? ts : NULL,
                                  gw__write_table_label(r, label, sizeof(label)),
                                  b->client_id,
                                  opid};
            snprintf(name, sizeof(name), "fw_mrf_%zu", ti);
            int sent = pq_send(c, &q, PQ_MERGE, i, name, 10, mv);
            free(old);
            if (sent != 0) goto fail;
        } else if (op->kind == OP_PUT) {
            /* taken as an insert; if the row exists after all, the INSERT fails on the unique
             * index of "id" and the careful path makes it the update it is (without such an
             * index, the SELECT must say the row is new) */
            if ((ti >= 256 || !gw__write_conn.id_unique[ti]) &&
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
                if (gw__write_conn.nins >= INS_CACHE) goto fail;
                gw_buf_t sql = GW_BUF_INIT;
                insert_sql(c, r, mask, 0, &sql);
                int sent = PQsendPrepare(c->conn, name, sql.data, 0, NULL);
                gw_buf_free(&sql);
                if (!sent) goto fail;
                gw__write_conn.ins[gw__write_conn.nins].table = ti;
                gw__write_conn.ins[gw__write_conn.nins].mask = mask;
                pq_push(&q, PQ_PREPARE, gw__write_conn.nins++);
            }
            const char *iv[1] = {datas[i]};
            if (pq_send(c, &q, constraints ? PQ_APPLY_ROW : PQ_APPLY, i, name, 1, iv) != 0)
                goto fail;
        } else if (ti < 256 && (op->kind == OP_PATCH ? gw__write_conn.fast_upd[ti]
                                                     : gw__write_conn.fast_del[ti])) {
            /* one statement: lock, check_old, check, lww_column and the write */
            const char *fv[5] = {op->id, datas[i], b->user, b->jwt, b->params};
            snprintf(name, sizeof(name), op->kind == OP_PATCH ? "fw_upf_%zu" : "fw_delf_%zu", ti);
            if (pq_send(c, &q, PQ_FAST, i, name, 5, fv) != 0) goto fail;
            if (op->kind == OP_DELETE && r->merge_lww) { /* the row's lww times go with it */
                char label[256];
                const char *tv[2] = {gw__write_table_label(r, label, sizeof(label)), op->id};
                if (pq_send(c, &q, PQ_TIMES, i, "fw_tmd", 2, tv) != 0) goto fail;
            }
        } else if (ti < 256 && (r->check_old.sql == NULL || gw__write_conn.self_cko[ti]) &&
                   (op->kind == OP_DELETE || r->check.sql == NULL || gw__write_conn.self_chk[ti])) {
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
        if (table_has_constraints(c->b->rules, r)) {
            char label[256];
            const char *vv[2] = {gw__write_table_label(r, label, sizeof(label)), op->id};
            if (pq_send(c, &q, PQ_VIO_OPEN, i, "fw_vop", 2, vv) != 0) goto fail;
        }
        op->status = ST_APPLIED; /* provisional: any deviation later reruns the batch */
    }
    if (high > q.last) {
        char hs[32];
        snprintf(hs, sizeof(hs), "%lld", high);
        lv[2] = hs;
        if (pq_send(c, &q, PQ_LOG_SET, 0, "fw_log_set", 3, lv) != 0) goto fail;
    }
    c->ops_begun = b->nops;
    if (pq_sync(c, &q) != 0) /* every result checked before COMMIT is even sent */
        goto fail;
    q.final = 1;
    if (history_on() && b->nops > 0) { /* every op's outcome is known now */
        history = history_json(b, &history_rows);
        const char *hv[4] = {b->user, b->client_id, history, history_rows};
        if (pq_send(c, &q, PQ_HIST, 0, "fw_hist", 4, hv) != 0) goto fail;
    }
    if (!PQsendQueryParams(c->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0)) goto fail;
    pq_push(&q, PQ_COMMIT, 0);
    if (pq_sync(c, &q) == 0) rc = SQL_OK;
fail:
    if (rc != SQL_OK && !q.fatal && q.n > 0) pq_sync(c, &q); /* drain what was queued */
    if (q.fatal || PQstatus(c->conn) != CONNECTION_OK) rc = SQL_FATAL;
    if (rc != SQL_FATAL && !PQexitPipelineMode(c->conn)) rc = SQL_FATAL;
    if (rc == SQL_FATAL && PQstatus(c->conn) == CONNECTION_OK) pq_leave(c->conn);
    if (rc == SQL_OP && PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        exec_simple(c->conn, "ROLLBACK");
    for (size_t i = 0; i < b->nops; i++)
        free(datas[i]);
    free(datas);
    free(history);
    free(history_rows);
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
    if (c->timeout[0] != '\0') {
        const char *tv[1] = {c->timeout};
        PGresult *t = PQexecParams(c->conn, TIMEOUT_SQL, 1, NULL, tv, NULL, NULL, 0);
        int ok = t != NULL && PQresultStatus(t) == PGRES_TUPLES_OK;
        PQclear(t);
        if (!ok) {
            exec_simple(c->conn, "ROLLBACK");
            return SQL_FATAL;
        }
    }
    const char *lv[3] = {b->user, b->client_id, NULL};
    PGresult *res = exec_prepared(c, "fw_log_get", 2, lv, &how);
    if (res == NULL) {
        exec_simple(c->conn, "ROLLBACK");
        return SQL_FATAL;
    }
    long long last = atoll(PQgetvalue(res, 0, 0)), high = last;
    PQclear(res);
    for (size_t i = 0; i <= b->nops; i++) {
        c->ops_begun = i;
        if (past_deadline(c)) { /* between ops, and before the COMMIT */
            exec_simple(c->conn, "ROLLBACK");
            return SQL_FATAL;
        }
        if (i == b->nops) break;
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
        gw__write_op_reset(op);
        if (c->savepoints && exec_simple(c->conn, "SAVEPOINT w") != SQL_OK) return SQL_FATAL;
        how = apply_op(c, op);
        if (how == SQL_FATAL) return SQL_FATAL;
        if (how == SQL_OP && !c->savepoints) {
            exec_simple(c->conn, "ROLLBACK");
            return SQL_OP;
        }
        if (how == SQL_OP) {
            char *before = op->before; /* the decisions were rolled back with the op */
            op->before = NULL;
            gw__write_op_reset(op);
            op->before = before;
            op_reject_pg(op, c->failed);
            if (exec_simple(c->conn, "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w") != SQL_OK)
                return SQL_FATAL;
        } else if (c->savepoints && exec_simple(c->conn, "RELEASE SAVEPOINT w") != SQL_OK) {
            return SQL_FATAL;
        }
    }
    if (history_on() && b->nops > 0) {
        char *rows;
        char *h = history_json(b, &rows);
        const char *hv[4] = {b->user, b->client_id, h, rows};
        res = exec_prepared(c, "fw_hist", 4, hv, &how);
        free(h);
        free(rows);
        if (res == NULL) {
            exec_simple(c->conn, "ROLLBACK");
            return SQL_FATAL;
        }
        PQclear(res);
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

void gw__write_batch_fail(wbatch_t *b, int status, const char *code, const char *msg)
{
    b->http_status = status;
    gw_buf_reset(&b->out);
    gw_buf_puts(&b->out, "{\"error\":{\"code\":");
    gw_buf_json_str(&b->out, code);
    gw_buf_puts(&b->out, ",\"description\":");
    gw_buf_json_str(&b->out, msg);
    gw_buf_puts(&b->out, "}}");
}

void gw__write_batch_results(wbatch_t *b)
{
    b->http_status = 200;
    gw_buf_reset(&b->out);
    gw_buf_puts(&b->out, "{\"results\":[");
    for (size_t i = 0; i < b->nops; i++) {
        wop_t *op = &b->ops[i];
        b->counts[op->status]++;
        gw_buf_printf(&b->out, "%s{\"op_id\":%lld,\"status\":\"%s\"", i > 0 ? "," : "", op->op_id,
                      gw__write_status_names[op->status]);
        if (op->status == ST_REJECTED || op->status == ST_STALE) {
            gw_buf_puts(&b->out, ",\"code\":");
            gw_buf_json_str(&b->out, op->code != NULL ? op->code : "rejected");
            gw_buf_puts(&b->out, ",\"message\":");
            gw_buf_json_str(&b->out, op->message);
        }
        if (op->status == ST_APPLIED && op->outcome != NULL) { /* columns a strategy decided */
            /* each is a row of ferry_write_conflicts, committed with the batch */
            atomic_fetch_add(&gw__write_mod.conflicts, json_object_size(op->outcome));
            char *cols = json_dumps(op->outcome, JSON_COMPACT);
            if (cols == NULL) abort(); /* out of memory: the gateway's policy */
            gw_buf_printf(&b->out, ",\"columns\":%s", cols);
            free(cols);
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
    int rc = gw__write_prepare_conn(conn, b->rules, &err);
    if (rc != 0) {
        char msg[1024];
        gw_err_format(&err, msg, sizeof(msg));
        if (rc == GW_ERULES)
            gw_error("write", "write rules rejected by postgres", "error=%s",
                     gw_log_qs(msg, (char[1100]){0}, 1100));
        gw__write_batch_fail(b, 503, rc == GW_ERULES ? "not_ready" : "unavailable", msg);
        return -1;
    }
    wctx_t c = {.b = b, .conn = conn, .app = gw__write_mod.app};
    long secs = gw__write_mod.app->cfg->write_back.statement_timeout;
    if (secs > 0) snprintf(c.timeout, sizeof(c.timeout), "%ld", secs * 1000);
    b->attempts = 1;
    int how = run_pipelined(&c);
    if (how == SQL_OP) { /* not a normal batch: every op decided one by one, with savepoints */
        c.savepoints = 1;
        b->attempts = 2;
        how = run_attempt(&c);
    }
    PQclear(c.failed);
    if (how == SQL_OK) return SQL_OK;
    gw__write_conn.prepared = 0; /* prepare again on the next batch (statements may be gone) */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE && PQstatus(conn) == CONNECTION_OK)
        exec_simple(conn, "ROLLBACK");
    if (c.timed_out) {
        long bt = gw__write_mod.app->cfg->write_back.batch_timeout;
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "the batch took longer than write_back.batch_timeout (%ld s); nothing was "
                 "applied: send it again, or in smaller batches",
                 bt);
        gw__write_batch_fail(b, 503, "unavailable", msg);
        gw_warn("write", "batch rolled back",
                "error=\"write_back.batch_timeout passed\" batch_timeout_s=%ld ops_started=%zu "
                "ops=%zu path=%s",
                bt, c.ops_begun, b->nops, b->attempts == 1 ? "pipelined" : "careful");
        return -1;
    }
    char pg[512];
    gw__write_batch_fail(b, 503, "unavailable", "could not apply the batch; nothing was applied");
    gw_warn("write", "batch rolled back", "error=%s",
            gw_log_qs(c.fatal[0] != '\0' ? c.fatal : gw_pg_error(conn, pg, sizeof(pg)),
                      (char[600]){0}, 600));
    return -1;
}

void gw__write_batch_run(gw_job_t *job, PGconn *conn)
{
    wbatch_t *b = (wbatch_t *)job;
    long bt = gw__write_mod.app->cfg->write_back.batch_timeout;
    b->deadline_ms = bt > 0 ? mono_ms() + (uint64_t)bt * 1000 : 0;
    if (conn == NULL) {
        gw__write_batch_fail(b, 503, "unavailable",
                             "postgres is not reachable; nothing was applied");
        return;
    }
    if (batch_try(b, conn) == SQL_OK) {
        gw__write_batch_results(b);
        return;
    }
    /* A connection that died while idle (Postgres restarted) is only noticed on first use: try
     * once more on a fresh one. Safe: nothing of the batch committed, or, if the COMMIT itself
     * was lost, ferry_write_log answers the ops as duplicates. Not past postgres.timeout: the
     * pool cut a connection that stopped answering, and the client is owed its 503 now. */
    if (PQstatus(conn) == CONNECTION_BAD && !gw_job_expired(job)) {
        PQreset(conn);
        if (PQstatus(conn) == CONNECTION_OK && batch_try(b, conn) == SQL_OK)
            gw__write_batch_results(b);
    }
}
