/* gw_write_stmt.c -- write-back's statements, prepared per worker connection, and ferry's tables
 *
 * Statements are prepared once per worker connection (gw__write_prepare_conn; per-thread state,
 * since a worker owns its connection). A start-up job (gw_write.c) does the same on the first
 * worker connection,
 * creates ferry's own tables when missing, and holds the readiness condition "write rules" until
 * every write-rule statement was accepted by Postgres; a rejected one is reported with its
 * position in the rules file.
 *
 * SQL text here comes only from the compiled write rules and from names in them, quoted with
 * PQescapeIdentifier (invariant 1 of gw_write_batch.c); values are always bound parameters.
 */
#include "api/gw_write_int.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    "CREATE INDEX IF NOT EXISTS ferry_violations_user_id ON ferry_violations (user_id);"
    "ALTER TABLE ferry_violations ADD COLUMN IF NOT EXISTS resolved_at timestamptz,"
    " ADD COLUMN IF NOT EXISTS expired_at timestamptz, ADD COLUMN IF NOT EXISTS request jsonb;"
    "CREATE INDEX IF NOT EXISTS ferry_violations_open ON ferry_violations (table_name)"
    " WHERE resolved_at IS NULL AND expired_at IS NULL;"
    "CREATE TABLE IF NOT EXISTS ferry_write_times ("
    " table_name text NOT NULL,"
    " row_id text NOT NULL,"
    " column_name text NOT NULL,"
    " ts text NOT NULL,"
    " PRIMARY KEY (table_name, row_id, column_name));"
    "CREATE TABLE IF NOT EXISTS ferry_write_conflicts ("
    " id text PRIMARY KEY DEFAULT gen_random_uuid()::text,"
    " table_name text NOT NULL,"
    " row_id text NOT NULL,"
    " column_name text NOT NULL,"
    " user_id text NOT NULL,"
    " client_id text NOT NULL,"
    " op_id bigint NOT NULL,"
    " strategy text NOT NULL,"
    " resolution text NOT NULL,"
    " sent jsonb,"
    " old jsonb,"
    " stored jsonb,"
    " result jsonb,"
    " created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX IF NOT EXISTS ferry_write_conflicts_user_id ON ferry_write_conflicts (user_id);"
    "CREATE TABLE IF NOT EXISTS ferry_write_history ("
    " id bigserial PRIMARY KEY,"
    " at timestamptz NOT NULL DEFAULT now(),"
    " user_id text NOT NULL,"
    " client_id text NOT NULL,"
    " ops text NOT NULL,"
    " rows text NOT NULL);"
    "CREATE INDEX IF NOT EXISTS ferry_write_history_at ON ferry_write_history USING brin (at);"
    "CREATE OR REPLACE VIEW ferry_write_history_ops AS SELECT h.id AS batch_id, h.at, h.user_id,"
    " h.client_id, (e->>'op_id')::bigint AS op_id, e->>'op' AS op, e->>'t' AS table_name,"
    " e->>'r' AS row_id, e->>'s' AS status, e->>'c' AS code, e->>'m' AS message,"
    " e->'sent' AS sent, e->'old' AS old, e->'stored' AS stored, e->'decided' AS decided,"
    " e->'v' AS violations, e->'ignored' AS ignored"
    " FROM ferry_write_history h, jsonb_array_elements(h.ops::jsonb) AS e";

static const char LOG_GET_SQL[] =
    "INSERT INTO ferry_write_log AS w (user_id, client_id, last_op_id) VALUES ($1, $2, 0) "
    "ON CONFLICT (user_id, client_id) DO UPDATE SET last_op_id = w.last_op_id "
    "RETURNING last_op_id";

static const char LOG_SET_SQL[] = "UPDATE ferry_write_log SET last_op_id = $3, updated_at = now() "
                                  "WHERE user_id = $1 AND client_id = $2";

/* a violation: a new row, unless the row's violation of this constraint is still open (then
 * its conflicting ids are brought up to date); $7 the writer's {"jwt", "parameters"} when the
 * constraint reads them (a re-check runs with them), else NULL */
static const char VIOLATION_SQL[] =
    "WITH open AS (UPDATE ferry_violations SET conflicting_ids = $5::jsonb, message = $6, "
    "request = $7::jsonb WHERE constraint_name = $1 AND table_name = $2 AND row_id = $3 AND "
    "resolved_at IS NULL AND expired_at IS NULL RETURNING 1) "
    "INSERT INTO ferry_violations (constraint_name, table_name, row_id, user_id, "
    "conflicting_ids, message, request) SELECT $1, $2, $3, $4, $5::jsonb, $6, $7::jsonb "
    "WHERE NOT EXISTS (SELECT 1 FROM open)";

/* lww: the columns in $3 (a JSON array) of row $2 of table $1 were written at $4 */
static const char TIMES_SET_SQL[] =
    "INSERT INTO ferry_write_times AS w (table_name, row_id, column_name, ts) "
    "SELECT $1, $2, c, $4 FROM jsonb_array_elements_text($3::jsonb) AS c "
    "ON CONFLICT (table_name, row_id, column_name) DO UPDATE SET ts = EXCLUDED.ts";

static const char TIMES_DEL_SQL[] =
    "DELETE FROM ferry_write_times WHERE table_name = $1 AND row_id = $2";

static const char CONFLICT_SQL[] =
    "INSERT INTO ferry_write_conflicts (table_name, row_id, column_name, user_id, client_id, "
    "op_id, strategy, resolution, sent, old, stored, result) VALUES ($1, $2, $3, $4, $5, $6, $7, "
    "$8, $9::jsonb, $10::jsonb, $11::jsonb, $12::jsonb)";

/* whether row $2 of table $1 is part of an open violation (its row or a conflicting id) */
static const char VIOLATION_OPEN_SQL[] =
    "SELECT 1 FROM ferry_violations WHERE resolved_at IS NULL AND expired_at IS NULL AND "
    "table_name = $1 AND (row_id = $2 OR conflicting_ids ? $2) LIMIT 1";

/* the history of one batch: $1 user, $2 client, $3 its ops' entries (a JSON array, kept as
 * text: one row per batch, nothing parsed), $4 the keys of the rows they wrote (see
 * gw_write_batch.c, history_json) */
static const char HISTORY_SQL[] =
    "INSERT INTO ferry_write_history (user_id, client_id, ops, rows) VALUES ($1, $2, $3, $4)";

/* ---- per-connection statements (worker threads) ----------------------------------------- */

__thread conn_state_t gw__write_conn;

static const char *rule_file(void)
{
    return gw__write_mod.app->cfg->sync_rules.path;
}

/* "schema.table", or "table" in schema public, into buf. */
const char *gw__write_table_label(const rules_write_rule_t *r, char *buf, size_t len)
{
    if (strcmp(r->schema, "public") == 0)
        snprintf(buf, len, "%s", r->table);
    else
        snprintf(buf, len, "%s.%s", r->schema, r->table);
    return buf;
}

/* Quoted "schema"."table" of r, malloc'd (the caller frees). */
char *gw__write_qualified(PGconn *conn, const rules_write_rule_t *r)
{
    char *s = gw_pg_ident(conn, r->schema), *t = gw_pg_ident(conn, r->table);
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b, "%s.%s", s, t);
    free(s);
    free(t);
    gw_buf_append(&b, "", 1);
    return b.data;
}

/* Append r's writable columns but "id", each quoted and after prefix ("", "r.", "\"new\"."),
 * separated by ", " (the two lists of an UPDATE ... SET (cols) = (SELECT values)); returns how
 * many. */
static size_t put_set_columns(PGconn *conn, gw_buf_t *b, const rules_write_rule_t *r,
                              const char *prefix)
{
    size_t n = 0;
    for (size_t c = 0; c < r->ncolumns; c++) {
        if (strcmp(r->columns[c], "id") == 0) continue;
        char *qc = gw_pg_ident(conn, r->columns[c]);
        gw_buf_printf(b, "%s%s%s", n++ > 0 ? ", " : "", prefix, qc);
        free(qc);
    }
    return n;
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

/* Prepare n statements (no parameter types) in one round trip (libpq's pipeline mode): 0, or -1
 * with the first failure's message in msg. Ferry's own statements, prepared on every new
 * connection: one by one they cost a round trip each. */
static int prepare_pipelined(PGconn *conn, const char *const *names, const char *const *sqls,
                             size_t n, char *msg, size_t len)
{
    msg[0] = '\0';
    if (PQenterPipelineMode(conn) != 1) {
        for (size_t i = 0; i < n; i++)
            if (prepare(conn, names[i], sqls[i], msg, len) != 0) return -1;
        return 0;
    }
    int sent = 1;
    for (size_t i = 0; i < n && sent; i++)
        sent = PQsendPrepare(conn, names[i], sqls[i], 0, NULL) == 1;
    sent = sent && PQpipelineSync(conn) == 1;
    int failed = !sent;
    if (!sent) {
        char buf[512];
        snprintf(msg, len, "%s", gw_pg_error(conn, buf, sizeof(buf)));
    }
    /* every result, then the sync point */
    for (int done = !sent; !done;) {
        PGresult *res = PQgetResult(conn);
        if (res == NULL) {
            if (PQstatus(conn) != CONNECTION_OK) break;
            continue; /* the end of one statement's results */
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            done = 1;
        } else if (st != PGRES_COMMAND_OK && !failed) {
            failed = 1;
            const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            snprintf(msg, len, "%s", m != NULL && m[0] ? m : "the pipeline was aborted");
        }
        PQclear(res);
        if (PQstatus(conn) != CONNECTION_OK) {
            if (!failed) snprintf(msg, len, "the connection to postgres broke");
            failed = 1;
            break;
        }
    }
    if (PQexitPipelineMode(conn) != 1 && !failed) {
        char buf[512];
        snprintf(msg, len, "%s", gw_pg_error(conn, buf, sizeof(buf)));
        failed = 1;
    }
    return failed ? -1 : 0;
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

/* The parameters a merge decision reads: the sent data, the op's old values, its time (text). */
typedef struct merge_params {
    const char *data, *old, *ts;
} merge_params_t;

/* One column's merge decision as a jsonb expression over t (stored), n (sent merged over
 * stored), o (the op's old values) and lw.m (the row's lww times): NULL when the op does not
 * send the column, "no_old" or "no_ts" when the strategy lacks what it needs, else [resolution,
 * value to write or keep]. */
static void merge_expr(gw_buf_t *b, PGconn *conn, const rules_write_rule_t *r, size_t col,
                       const char *qt, const merge_params_t *p)
{
    char *qc = gw_pg_ident(conn, r->columns[col]);
    char *lit = PQescapeLiteral(conn, r->columns[col], strlen(r->columns[col]));
    gw_buf_printf(b, "%s, CASE WHEN NOT (%s::jsonb ? %s) THEN NULL ", lit, p->data, lit);
    char has_old[64];
    snprintf(has_old, sizeof(has_old), "COALESCE(%s::jsonb, '{}') ?", p->old);
    switch (r->merge[col]) {
    case RULES_MERGE_SERVER_WINS_IF_CHANGED:
        gw_buf_printf(b,
                      "WHEN t.%s IS NOT DISTINCT FROM n.%s THEN jsonb_build_array('applied', "
                      "to_jsonb(n.%s)) WHEN NOT (%s %s) THEN '\"no_old\"'::jsonb "
                      "WHEN t.%s IS NOT DISTINCT FROM o.%s THEN jsonb_build_array('applied', "
                      "to_jsonb(n.%s)) ELSE jsonb_build_array('kept', to_jsonb(t.%s)) END",
                      qc, qc, qc, has_old, lit, qc, qc, qc, qc);
        break;
    case RULES_MERGE_ADD:
        gw_buf_printf(b,
                      "WHEN NOT (%s %s) THEN '\"no_old\"'::jsonb ELSE jsonb_build_array(CASE WHEN "
                      "t.%s IS NOT DISTINCT FROM o.%s THEN 'applied' ELSE 'merged' END, "
                      "to_jsonb(COALESCE(t.%s, 0) + (COALESCE(n.%s, 0) - COALESCE(o.%s, 0)))) END",
                      has_old, lit, qc, qc, qc, qc, qc);
        break;
    case RULES_MERGE_MAX:
    case RULES_MERGE_MIN: {
        const char *f = r->merge[col] == RULES_MERGE_MAX ? "GREATEST" : "LEAST";
        gw_buf_printf(b,
                      "ELSE jsonb_build_array(CASE WHEN n.%s IS NOT DISTINCT FROM %s(t.%s, n.%s) "
                      "THEN 'applied' ELSE 'kept' END, to_jsonb(%s(t.%s, n.%s))) END",
                      qc, f, qc, qc, f, qc, qc);
        break;
    }
    case RULES_MERGE_LWW: {
        /* the op's time against the column's last write-back time, in the time's type */
        gw_buf_t newer = GW_BUF_INIT;
        if (r->ts_source == RULES_TS_COLUMN) {
            char *tc = gw_pg_ident(conn, r->ts_name);
            char *tl = PQescapeLiteral(conn, r->ts_name, strlen(r->ts_name));
            gw_buf_printf(&newer,
                          "(jsonb_populate_record(NULL::%s, jsonb_build_object(%s, %s::text))).%s "
                          ">= (jsonb_populate_record(NULL::%s, jsonb_build_object(%s, "
                          "lw.m->>%s))).%s",
                          qt, tl, p->ts, tc, qt, tl, lit, tc);
            PQfreemem(tl);
            free(tc);
        } else {
            gw_buf_printf(&newer, "%s::timestamptz >= (lw.m->>%s)::timestamptz", p->ts, lit);
        }
        gw_buf_printf(b,
                      "WHEN %s::text IS NULL THEN '\"no_ts\"'::jsonb "
                      "WHEN lw.m->>%s IS NULL OR %.*s THEN jsonb_build_array(CASE WHEN (%s %s) "
                      "AND t.%s IS DISTINCT FROM o.%s AND t.%s IS DISTINCT FROM n.%s THEN "
                      "'overwritten' ELSE 'applied' END, to_jsonb(n.%s)) "
                      "ELSE jsonb_build_array('kept', to_jsonb(t.%s)) END",
                      p->ts, lit, (int)newer.len, newer.data, has_old, lit, qc, qc, qc, qc, qc, qc);
        gw_buf_free(&newer);
        break;
    }
    default:
        gw_buf_puts(b, "ELSE NULL END");
    }
    PQfreemem(lit);
    free(qc);
}

/* Every merged column's decision as one jsonb object (see merge_expr). */
static void merge_object(gw_buf_t *b, PGconn *conn, const rules_write_rule_t *r, const char *qt,
                         const merge_params_t *p)
{
    gw_buf_puts(b, "(jsonb_build_object(");
    size_t n = 0;
    for (size_t c = 0; c < r->ncolumns; c++) {
        if (r->merge[c] == RULES_MERGE_CLIENT_WINS) continue;
        if (n > 0 && n % 40 == 0) /* at most 100 arguments a call */
            gw_buf_puts(b, ") || jsonb_build_object(");
        else if (n > 0)
            gw_buf_puts(b, ", ");
        merge_expr(b, conn, r, c, qt, p);
        n++;
    }
    gw_buf_puts(b, "))");
}

/*
 * fw_mrf_<i>: a whole merged update in one statement, for the pipelined path: lock the row, the
 * decisions (as fw_mrg), the data they leave to write (kept columns out, decided values in),
 * check_old and check, the write, the lww times and the conflicts. Parameters: $1 id, $2 data,
 * $3 user id, $4 claims, $5 client parameters (check_expr's numbering), $6 old, $7 the op's
 * time, $8 the table's label, $9 client id, $10 op id. Changes the row (and returns it, the row
 * before and the decisions) exactly when the careful path would have applied the op; an op a
 * decision rejects ("no_old", "no_ts"), a failing check or a missing row change nothing.
 */
static void prepare_merge_fast(PGconn *conn, conn_state_t *cs, const rules_write_rule_t *r,
                               size_t i, const char *qt)
{
    if (i >= 256 || (r->check.sql != NULL && r->check_expr == NULL) ||
        (r->check_old.sql != NULL && r->check_old_expr == NULL))
        return;
    static const merge_params_t fp = {"$2", "$6", "$7"};
    static const Oid types[10] = {0, 0, 25, 25, 25, 0, 25, 25, 25, 20};
    gw_buf_t b = GW_BUF_INIT;
    gw_buf_printf(&b,
                  "WITH lk AS (SELECT x AS row FROM %s AS x WHERE x.\"id\" = $1 FOR UPDATE), "
                  "d AS (SELECT ",
                  qt);
    merge_object(&b, conn, r, qt, &fp);
    gw_buf_printf(&b,
                  " AS dec FROM lk, LATERAL (SELECT (lk.row).*) AS t, "
                  "LATERAL jsonb_populate_record(lk.row, $2::jsonb) AS n, "
                  "LATERAL jsonb_populate_record(NULL::%s, COALESCE($6::jsonb, '{}')) AS o, "
                  "LATERAL (SELECT jsonb_object_agg(w.column_name, w.ts) AS m FROM "
                  "ferry_write_times w WHERE w.table_name = $8::text AND w.row_id = $1::text AND "
                  "$7::text IS NOT NULL) AS lw), "
                  "nd AS (SELECT ($2::jsonb - COALESCE((SELECT array_agg(e.key) FROM "
                  "jsonb_each(d.dec) e WHERE jsonb_typeof(e.value) = 'array' AND e.value->>0 = "
                  "'kept'), '{}')) || COALESCE((SELECT jsonb_object_agg(e.key, e.value->1) FROM "
                  "jsonb_each(d.dec) e WHERE jsonb_typeof(e.value) = 'array' AND e.value->>0 <> "
                  "'kept'), '{}') AS data, d.dec FROM d WHERE NOT EXISTS (SELECT 1 FROM "
                  "jsonb_each(d.dec) e WHERE jsonb_typeof(e.value) = 'string')), "
                  "u AS (UPDATE %s AS t SET (",
                  qt, qt);
    put_set_columns(conn, &b, r, "");
    gw_buf_puts(&b, ") = (SELECT ");
    size_t n = put_set_columns(conn, &b, r, "\"new\".");
    gw_buf_puts(&b, " FROM jsonb_populate_record(lk.row, nd.data) AS \"new\") FROM lk, nd WHERE "
                    "t.\"id\" = $1");
    if (r->check_old_expr != NULL)
        gw_buf_printf(&b,
                      " AND (SELECT COALESCE((%s)::boolean, false) FROM "
                      "jsonb_populate_record(NULL::%s, to_jsonb(lk.row)) AS \"old\")",
                      r->check_old_expr, qt);
    if (r->check_expr != NULL)
        gw_buf_printf(&b,
                      " AND (SELECT COALESCE((%s)::boolean, false) FROM "
                      "jsonb_populate_record(lk.row, nd.data) AS \"new\")",
                      r->check_expr);
    gw_buf_puts(&b, " RETURNING to_jsonb(t)::text AS after, to_jsonb(lk.row) AS before, nd.dec), ");
    /* the lww times of the columns written, the conflicts of the columns decided otherwise */
    gw_buf_puts(&b, "tm AS (INSERT INTO ferry_write_times AS w (table_name, row_id, column_name, "
                    "ts) SELECT $8, $1, e.key, $7 FROM u, jsonb_each(u.dec) e WHERE "
                    "jsonb_typeof(e.value) = 'array' AND e.value->>0 <> 'kept' AND e.key IN (");
    n = 0;
    for (size_t c = 0; c < r->ncolumns; c++) {
        if (r->merge[c] != RULES_MERGE_LWW) continue;
        char *lit = PQescapeLiteral(conn, r->columns[c], strlen(r->columns[c]));
        gw_buf_printf(&b, "%s%s", n++ > 0 ? ", " : "", lit);
        PQfreemem(lit);
    }
    if (n == 0) gw_buf_puts(&b, "NULL");
    gw_buf_puts(&b, ") ON CONFLICT (table_name, row_id, column_name) DO UPDATE SET ts = "
                    "EXCLUDED.ts), cf AS (INSERT INTO ferry_write_conflicts (table_name, row_id, "
                    "column_name, user_id, client_id, op_id, strategy, resolution, sent, old, "
                    "stored, result) SELECT $8, $1, e.key, $3, $9, $10, CASE e.key");
    for (size_t c = 0; c < r->ncolumns; c++) {
        if (r->merge[c] == RULES_MERGE_CLIENT_WINS) continue;
        char *lit = PQescapeLiteral(conn, r->columns[c], strlen(r->columns[c]));
        gw_buf_printf(&b, " WHEN %s THEN '%s'", lit, rules_merge_name(r->merge[c]));
        PQfreemem(lit);
    }
    gw_buf_puts(&b, " END, e.value->>0, $2::jsonb->e.key, $6::jsonb->e.key, u.before->e.key, "
                    "e.value->1 FROM u, jsonb_each(u.dec) e WHERE jsonb_typeof(e.value) = "
                    "'array' AND e.value->>0 <> 'applied') "
                    "SELECT u.after, u.before::text, u.dec::text FROM u");
    gw_buf_append(&b, "", 1);
    char name[64];
    snprintf(name, sizeof(name), "fw_mrf_%zu", i);
    PGresult *res = PQprepare(conn, name, b.data, 10, types);
    cs->fast_mrg[i] = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!cs->fast_mrg[i]) {
        char pg[512];
        const char *m = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        gw_debug("write", "no one-statement merge", "table=%s error=%s", r->table,
                 gw_log_qs(m != NULL ? m : gw_pg_error(conn, pg, sizeof(pg)), (char[600]){0}, 600));
    }
    PQclear(res);
    gw_buf_free(&b);
}

/*
 * fw_mrg_<i>: the merge decisions of write rule r for an update of a stored (locked) row:
 * $1 id, $2 the sent data (with id), $3 the op's "old" (or NULL), $4 the op's timestamp (text,
 * or NULL), $5 the table's label (for ferry_write_times). Returns the decisions as one JSON
 * object {column: decision} (see merge_expr). Also checks that "add" columns are numeric.
 */
static int prepare_merge(PGconn *conn, const rules_write_rule_t *r, size_t i, const char *label,
                         gw_err_t *err)
{
    char *qt = gw__write_qualified(conn, r);
    char msg[512], name[64];
    int line, col;
    rule_pos(r, &line, &col);
    for (size_t c = 0; c < r->ncolumns; c++) {
        if (r->merge[c] != RULES_MERGE_ADD) continue;
        const char *v[2] = {qt, r->columns[c]};
        PGresult *res = gw_pg_query_params(
            conn,
            "SELECT t.typcategory, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = $1::regclass AND "
            "a.attname = $2 AND NOT a.attisdropped",
            2, v, NULL);
        int numeric = res != NULL && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 'N';
        char type[128];
        snprintf(type, sizeof(type), "%s",
                 res != NULL && PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "missing");
        PQclear(res);
        if (!numeric) {
            free(qt);
            set_rule_err(err, line, col,
                         "merge strategy \"add\" of table \"%s\" needs numeric columns: %s", label,
                         type);
            gw_err_detail(err, "Column \"%s\" is not numeric.", r->columns[c]);
            return GW_ERULES;
        }
    }
    gw_buf_t b = GW_BUF_INIT;
    static const merge_params_t mp = {"$2", "$3", "$4"};
    gw_buf_puts(&b, "SELECT ");
    merge_object(&b, conn, r, qt, &mp);
    gw_buf_printf(&b,
                  "::text FROM %s AS t, LATERAL jsonb_populate_record(t, $2::jsonb) AS n, "
                  "LATERAL jsonb_populate_record(NULL::%s, COALESCE($3::jsonb, '{}')) AS o, "
                  "LATERAL (SELECT jsonb_object_agg(w.column_name, w.ts) AS m FROM "
                  "ferry_write_times w WHERE w.table_name = $5::text AND w.row_id = $1 AND "
                  "$4::text IS NOT NULL) AS lw WHERE t.\"id\" = $1",
                  qt, qt);
    gw_buf_append(&b, "", 1);
    snprintf(name, sizeof(name), "fw_mrg_%zu", i);
    int rc = prepare(conn, name, b.data, msg, sizeof(msg));
    gw_buf_free(&b);
    if (rc != 0) {
        free(qt);
        set_rule_err(err, line, col, "\"merge\" of table \"%s\" rejected by postgres: %s", label,
                     msg);
        return GW_ERULES;
    }
    prepare_merge_fast(conn, &gw__write_conn, r, i, qt);
    free(qt);
    return 0;
}

/*
 * The one-statement forms of the pipelined path, for a PATCH (fw_upf_<i>) and a DELETE
 * (fw_delf_<i>) of table i: lock the stored row, run check_old over it and check over the sent
 * data merged over it, the lww_column comparison, and write, all in one statement that changes
 * one row exactly when the four-statement path (fw_sel, check_old, check, fw_upd/fw_del) would
 * have applied the op plainly; otherwise it changes nothing and the careful path decides the op.
 * $1 id, $2 the data (jsonb), $3 user id, $4 claims, $5 client parameters (rules_write_rule_t's
 * check_expr numbering). Returns the row after the write (UPDATE) and the stored row before.
 */
static void prepare_fast(PGconn *conn, conn_state_t *cs, const rules_write_rule_t *r, size_t i,
                         const char *qt)
{
    if (i >= 256 || (r->check.sql != NULL && r->check_expr == NULL) ||
        (r->check_old.sql != NULL && r->check_old_expr == NULL))
        return;
    /* the types of $3..$5 (text; the expressions cast them), $1 and $2 inferred */
    static const Oid types[5] = {0, 0, 25, 25, 25};
    gw_buf_t cond = GW_BUF_INIT, b = GW_BUF_INIT;
    if (r->check_old_expr != NULL)
        gw_buf_printf(&cond,
                      " AND (SELECT COALESCE((%s)::boolean, false) FROM "
                      "jsonb_populate_record(NULL::%s, to_jsonb(o.row)) AS \"old\")",
                      r->check_old_expr, qt);
    gw_buf_t dcond = GW_BUF_INIT;
    gw_buf_append(&dcond, cond.data != NULL ? cond.data : "", cond.len);
    gw_buf_append(&dcond, "", 1);
    if (r->check_expr != NULL)
        gw_buf_printf(&cond,
                      " AND (SELECT COALESCE((%s)::boolean, false) FROM "
                      "jsonb_populate_record(o.row, $2::jsonb) AS \"new\")",
                      r->check_expr);
    if (r->lww_column != NULL) {
        char *lc = gw_pg_ident(conn, r->lww_column);
        gw_buf_printf(
            &cond,
            " AND NOT COALESCE((jsonb_populate_record(o.row, $2::jsonb)).%s < (o.row).%s, "
            "false)",
            lc, lc);
        free(lc);
    }
    gw_buf_append(&cond, "", 1);
    gw_buf_printf(&b,
                  "WITH o AS (SELECT x AS row FROM %s AS x WHERE x.\"id\" = $1 FOR UPDATE) "
                  "UPDATE %s AS t SET (",
                  qt, qt);
    put_set_columns(conn, &b, r, "");
    gw_buf_puts(&b, ") = (SELECT ");
    size_t n = put_set_columns(conn, &b, r, "\"new\".");
    gw_buf_printf(&b,
                  " FROM jsonb_populate_record(o.row, $2::jsonb) AS \"new\") FROM o WHERE "
                  "t.\"id\" = $1%s RETURNING to_jsonb(t)::text, to_jsonb(o.row)::text",
                  cond.data);
    gw_buf_append(&b, "", 1);
    char name[64];
    snprintf(name, sizeof(name), "fw_upf_%zu", i);
    PGresult *res = n > 0 ? PQprepare(conn, name, b.data, 5, types) : NULL;
    cs->fast_upd[i] = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    gw_buf_reset(&b);
    gw_buf_printf(&b,
                  "WITH o AS (SELECT x AS row FROM %s AS x WHERE x.\"id\" = $1 FOR UPDATE) "
                  "DELETE FROM %s AS t USING o WHERE t.\"id\" = $1 AND $2::jsonb IS NOT NULL%s "
                  "RETURNING NULL::text, to_jsonb(o.row)::text",
                  qt, qt, dcond.data);
    gw_buf_append(&b, "", 1);
    snprintf(name, sizeof(name), "fw_delf_%zu", i);
    res = PQprepare(conn, name, b.data, 5, types);
    cs->fast_del[i] = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    gw_buf_free(&b);
    gw_buf_free(&cond);
    gw_buf_free(&dcond);
}

/* Create ferry's tables when missing (once per process; serialized). */
static int ensure_tables(PGconn *conn, gw_err_t *err)
{
    pthread_mutex_lock(&gw__write_mod.lock);
    int done = gw__write_mod.tables_done;
    pthread_mutex_unlock(&gw__write_mod.lock);
    if (done) return 0;
    gw_err_t e;
    if (gw_pg_exec(conn, SETUP_SQL, &e) != 0) {
        /* two first-time creators can race on the catalog; the loser retries once */
        if (gw_pg_exec(conn, SETUP_SQL, &e) != 0) {
            gw_err_set(err, GW_EPG, "postgres",
                       "could not create ferry's tables (ferry_write_log, ferry_violations, "
                       "ferry_write_times, ferry_write_conflicts, ferry_write_history): %s",
                       e.message);
            gw_err_detail(err, "Run deploy/postgres/setup.sql as an owner of the database.");
            return GW_EPG;
        }
    }
    pthread_mutex_lock(&gw__write_mod.lock);
    gw__write_mod.tables_done = 1;
    pthread_mutex_unlock(&gw__write_mod.lock);
    return 0;
}

/*
 * Make sure conn has every write statement prepared (per-thread state). Returns 0; GW_EPG when
 * Postgres failed (connection, ferry's tables); GW_ERULES when Postgres rejected a statement
 * built from the rules (err->where is the rules file position).
 */
int gw__write_prepare_conn(PGconn *conn, const rules_set_t *set, gw_err_t *err)
{
    conn_state_t *cs = &gw__write_conn;
    if (cs->conn == conn && cs->pid == PQbackendPID(conn) && cs->prepared && cs->rules == set)
        return 0;
    memset(cs, 0, sizeof(*cs));
    gw_err_t e;
    /* a 200 lets the client drop its queue: the commit must be durable before we answer, even
     * where the server's default is synchronous_commit=off; so must ferry's own tables be */
    /* generic plans: the statements are keyed by id, and a custom plan of the one-statement
     * forms costs more to make than to run (a merged PATCH: 2.4 ms of planning, 0.5 ms of
     * execution, measured with EXPLAIN ANALYZE); Postgres would re-plan them on every call */
    /* one round trip for the three (a simple query may hold several statements): behind a
     * distant database every round trip of a new connection counts against postgres.timeout */
    if (gw_pg_exec(conn,
                   "DEALLOCATE ALL; SET synchronous_commit = on; SET plan_cache_mode = "
                   "force_generic_plan",
                   &e) != 0)
        return gw_err_set(err, GW_EPG, "postgres", "%s", e.message);
    int rc = ensure_tables(conn, err);
    if (rc != 0) return rc;
    char msg[512], name[64];
    static const char *const fixed_names[] = {"fw_log_get", "fw_log_set", "fw_vio",  "fw_tms",
                                              "fw_tmd",     "fw_cfl",     "fw_hist", "fw_vop"};
    const char *const fixed_sql[] = {LOG_GET_SQL,   LOG_SET_SQL,       VIOLATION_SQL,
                                     TIMES_SET_SQL, TIMES_DEL_SQL,     CONFLICT_SQL,
                                     HISTORY_SQL,   VIOLATION_OPEN_SQL};
    if (prepare_pipelined(conn, fixed_names, fixed_sql, 8, msg, sizeof(msg)) != 0) {
        /* the tables may have gone since they were made (a restored database): make them
         * again on the next try */
        pthread_mutex_lock(&gw__write_mod.lock);
        gw__write_mod.tables_done = 0;
        pthread_mutex_unlock(&gw__write_mod.lock);
        return gw_err_set(err, GW_EPG, "postgres", "could not prepare ferry's statements: %s", msg);
    }
    for (size_t i = 0; i < rules_write_count(set); i++) {
        const rules_write_rule_t *r = rules_write_at(set, i);
        char *qt = gw__write_qualified(conn, r);
        char label[256];
        gw__write_table_label(r, label, sizeof(label));
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
        /* the select, the update and the delete: prepared together, in one round trip */
        gw_buf_t bsel = b, bd = GW_BUF_INIT;
        b = (gw_buf_t)GW_BUF_INIT; /* b: the update, built next */
        {
            /* UPDATE of every writable column, each from the sent data or else itself */
            gw_buf_printf(&b, "UPDATE %s AS t SET (", qt);
            put_set_columns(conn, &b, r, "");
            gw_buf_puts(&b, ") = (SELECT ");
            size_t n = put_set_columns(conn, &b, r, "r.");
            gw_buf_puts(&b, " FROM jsonb_populate_record(t, $2::jsonb) AS r) WHERE t.\"id\" = $1 "
                            "RETURNING to_jsonb(t)::text");
            gw_buf_append(&b, "", 1);
            if (n == 0) { /* only "id" is writable: an update changes nothing */
                gw_buf_reset(&b);
                gw_buf_printf(&b,
                              "SELECT to_jsonb(t)::text FROM %s AS t WHERE t.\"id\" = $1 "
                              "AND $2::jsonb IS NOT NULL",
                              qt);
                gw_buf_append(&b, "", 1);
            }
        }
        gw_buf_printf(&bd, "DELETE FROM %s WHERE \"id\" = $1", qt);
        gw_buf_append(&bd, "", 1);
        char n_sel[64], n_upd[64], n_del[64];
        snprintf(n_sel, sizeof(n_sel), "fw_sel_%zu", i);
        snprintf(n_upd, sizeof(n_upd), "fw_upd_%zu", i);
        snprintf(n_del, sizeof(n_del), "fw_del_%zu", i);
        const char *const trio_names[3] = {n_sel, n_upd, n_del};
        const char *const trio_sql[3] = {bsel.data, b.data, bd.data};
        rc = prepare_pipelined(conn, trio_names, trio_sql, 3, msg, sizeof(msg));
        gw_buf_free(&bsel);
        gw_buf_free(&bd);
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
        if (r->merge != NULL) {
            rc = prepare_merge(conn, r, i, label, err);
            if (rc != 0) return rc;
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
        char *qt = gw__write_qualified(conn, r);
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
        prepare_fast(conn, cs, r, i, qt);
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
