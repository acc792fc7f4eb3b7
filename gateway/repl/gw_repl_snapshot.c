/* gw_repl_snapshot.c -- the initial snapshot: every table the rules read, chunked and resumable
 *
 * Per table, in key order, snapshot_chunk_rows rows per storage commit (keyset pagination over
 * the primary key: WHERE (k) > ($last) ORDER BY k LIMIT n). The progress (the last key) is stored
 * in the chunk's commit, so a crash resumes after the last stored chunk. The next chunk's query
 * runs in Postgres while a chunk is evaluated here and written by the apply thread. After each
 * table, pg_current_wal_lsn() is its "no checkpoint before" mark (invariant 3 of gw_repl.c).
 */
#include "repl/gw_repl_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- snapshot ---- */

typedef struct keycols {
    size_t n;
    char **names; /* quoted identifiers */
    char **raw;   /* plain names */
    char **types; /* format_type() */
} keycols_t;

static void keycols_free(keycols_t *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->names[i]);
        free(k->raw[i]);
        free(k->types[i]);
    }
    free(k->names);
    free(k->raw);
    free(k->types);
    memset(k, 0, sizeof(*k));
}

static int load_keycols(gw_repl_t *r, const snap_table_t *t, keycols_t *k, gw_err_t *err)
{
    const char *pv[1] = {t->sql_ident};
    PGresult *res = gw_pg_query_params(
        r->q,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i JOIN "
        "pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE "
        "i.indrelid = $1::regclass AND (i.indisprimary OR i.indisreplident) ORDER BY "
        "i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)",
        1, pv, err);
    if (res == NULL) return GW_EPG;
    memset(k, 0, sizeof(*k));
    int n = PQntuples(res);
    k->names = gw_xcalloc((size_t)n + 1, sizeof(char *));
    k->raw = gw_xcalloc((size_t)n + 1, sizeof(char *));
    k->types = gw_xcalloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++) {
        /* the primary key's columns come first; stop at the first duplicate (replident index) */
        int dup = 0;
        for (size_t j = 0; j < k->n; j++)
            dup |= strcmp(k->raw[j], PQgetvalue(res, i, 0)) == 0;
        if (dup) break;
        k->raw[k->n] = gw_xstrdup(PQgetvalue(res, i, 0));
        k->names[k->n] = gw_pg_ident(r->q, PQgetvalue(res, i, 0));
        k->types[k->n] = gw_xstrdup(PQgetvalue(res, i, 1));
        k->n++;
    }
    PQclear(res);
    return 0;
}

/* The query for one snapshot chunk of t into sql: in key order after the last key ($1…) when
 * after, else from the start; the whole table in one pass when it has no key. */
static void chunk_sql(gw_buf_t *sql, const snap_table_t *t, const keycols_t *k,
                      const gw_buf_t *order, const gw_buf_t *cmp, int after, long rows)
{
    gw_buf_reset(sql);
    if (k->n == 0)
        gw_buf_printf(sql, "SELECT * FROM %s", t->sql_ident);
    else if (!after)
        gw_buf_printf(sql, "SELECT * FROM %s ORDER BY %s LIMIT %ld", t->sql_ident, order->data,
                      rows);
    else
        gw_buf_printf(sql, "SELECT * FROM %s WHERE (%s) > (%s) ORDER BY %s LIMIT %ld", t->sql_ident,
                      order->data, cmp->data, order->data, rows);
}

static int snapshot_table(gw_repl_t *r, const snap_table_t *t, gw_err_t *err)
{
    char statekey[512], progress[4096] = "";
    snprintf(statekey, sizeof(statekey), "snap:%s:%s", r->version, t->qname);
    if (gw__repl_state_read(r->st, statekey, progress, sizeof(progress), err) < 0)
        return err->code; /* an outage is not "never snapshotted" */
    if (strcmp(progress, "done") == 0) return 0;
    keycols_t k;
    if (load_keycols(r, t, &k, err) != 0) return GW_EPG;
    const char *pv[1] = {t->sql_ident};
    PGresult *res = gw_pg_query_params(
        r->q, "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass", 1, pv,
        err);
    uint64_t estimate =
        res != NULL && PQntuples(res) == 1 ? strtoull(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    atomic_fetch_add(&r->m_snapshot_estimate, estimate);
    gw_info("repl", "snapshotting a table", "table=%s estimated_rows=%llu resume=%s", t->qname,
            (unsigned long long)estimate, progress[0] != '\0' ? "yes" : "no");

    /* keyset pagination over the key columns; without keys, one pass (not resumable) */
    gw_buf_t sql = GW_BUF_INIT, order = GW_BUF_INIT, cmp = GW_BUF_INIT;
    for (size_t i = 0; i < k.n; i++) {
        gw_buf_printf(&order, "%s%s", i ? ", " : "", k.names[i]);
        gw_buf_printf(&cmp, "%s$%zu::%s", i ? ", " : "", i + 1, k.types[i]);
    }
    uint64_t done = 0;
    int rc = 0;
    char **last = gw_xcalloc(k.n + 1, sizeof(char *));
    /* resume: progress is a JSON-ish list of key texts separated by \x1f */
    if (progress[0] != '\0' && k.n > 0) {
        char *save = NULL, *copy = gw_xstrdup(progress);
        size_t i = 0;
        for (char *tok = strtok_r(copy, "\x1f", &save); tok != NULL && i < k.n;
             tok = strtok_r(NULL, "\x1f", &save))
            last[i++] = gw_xstrdup(tok);
        free(copy);
        if (i != k.n) {
            for (size_t j = 0; j < k.n; j++) {
                free(last[j]);
                last[j] = NULL;
            }
        }
    }
    int *is_key = NULL;
    const char **names = NULL, **values = NULL;
    size_t *lens = NULL;
    uint32_t *types = NULL;
    /* the next chunk's query runs in Postgres while this chunk is evaluated and written */
    chunk_sql(&sql, t, &k, &order, &cmp, last[0] != NULL, r->chunk_rows);
    res = gw_pg_query_params(r->q, sql.data, last[0] != NULL ? (int)k.n : 0,
                             (const char *const *)last, err);
    int inflight = 0;
    if (res == NULL) rc = GW_EPG;
    while (rc == 0 && res != NULL && !atomic_load(&r->stop)) {
        int nrows = PQntuples(res), ncols = PQnfields(res);
        free(is_key);
        free(names);
        free(values);
        free(lens);
        free(types);
        is_key = gw_xcalloc((size_t)ncols + 1, sizeof(int));
        names = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        values = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        lens = gw_xcalloc((size_t)ncols + 1, sizeof(size_t));
        types = gw_xcalloc((size_t)ncols + 1, sizeof(uint32_t));
        int keyidx[64];
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = PQftype(res, c);
            for (size_t j = 0; j < k.n && j < 64; j++)
                if (strcmp(k.raw[j], names[c]) == 0) {
                    is_key[c] = 1;
                    keyidx[j] = c;
                }
        }
        if (k.n == 0)
            for (int c = 0; c < ncols; c++)
                is_key[c] = 1; /* no key: the whole row identifies it (REPLICA IDENTITY FULL) */
        int more = k.n > 0 && nrows >= r->chunk_rows;
        gw_buf_t prog = GW_BUF_INIT;
        if (nrows > 0 && k.n > 0) {
            for (size_t j = 0; j < k.n; j++) {
                free(last[j]);
                last[j] = gw_xstrdup(PQgetvalue(res, nrows - 1, keyidx[j]));
                gw_buf_printf(&prog, "%s%s", j ? "\x1f" : "", last[j]);
            }
        }
        if (more) {
            chunk_sql(&sql, t, &k, &order, &cmp, 1, r->chunk_rows);
            rc = gw_pg_send_params(r->q, sql.data, (int)k.n, (const char *const *)last, err);
            inflight = rc == 0;
        }
        if (rc == 0 && nrows > 0 && !r->pipe_on) rc = gw_storage_begin(r->st, err);
        for (int i = 0; i < nrows && rc == 0; i++) {
            for (int c = 0; c < ncols; c++) {
                values[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
                lens[c] = (size_t)PQgetlength(res, i, c);
            }
            gw__repl_row_key(&r->key, (size_t)ncols, is_key, values, lens);
            rc = gw__repl_apply_row(r, t->schema, t->name, t->qname, (size_t)ncols, names, types,
                                    values, lens, r->key.data, err);
        }
        if (rc == 0 && nrows > 0)
            rc =
                gw__repl_storage_direct(r, err); /* the chunk's rows are written; its txn is open */
        if (rc == 0 && nrows > 0 && k.n > 0)
            rc = gw_storage_state_set(r->st, statekey, prog.data, err);
        gw_buf_free(&prog);
        PQclear(res);
        res = NULL;
        if (rc == 0 && nrows > 0) rc = gw_storage_commit(r->st, 0, err);
        done += (uint64_t)nrows;
        atomic_fetch_add(&r->m_snapshot_rows, (uint64_t)nrows);
        gw__repl_heard(r);
        if (nrows > 0) {
            char reason[256];
            snprintf(reason, sizeof(reason), "snapshot in progress: %llu of about %llu rows",
                     (unsigned long long)atomic_load(&r->m_snapshot_rows),
                     (unsigned long long)atomic_load(&r->m_snapshot_estimate));
            gw__repl_set_phase(r, 2, reason);
        }
        if (rc == 0 && r->test_snapshot_hold > 0 &&
            atomic_load(&r->m_snapshot_rows) >= r->test_snapshot_hold) {
            gw_info("repl", "test hold: snapshot paused", "table=%s rows=%llu", t->qname,
                    (unsigned long long)atomic_load(&r->m_snapshot_rows));
            while (!atomic_load(&r->stop))
                usleep(50000);
        }
        if (rc != 0 || !more) break;
        inflight = 0;
        res = gw_pg_wait_result(r->q, sql.data, err);
        if (res == NULL) rc = GW_EPG;
    }
    PQclear(res);
    if (inflight) {
        gw_err_t ignored;
        PQclear(gw_pg_wait_result(r->q, sql.data, &ignored)); /* the connection stays usable */
    }
    free(is_key);
    free(names);
    free(values);
    free(lens);
    free(types);
    for (size_t j = 0; j < k.n; j++)
        free(last[j]);
    free(last);
    gw_buf_free(&sql);
    gw_buf_free(&order);
    gw_buf_free(&cmp);
    keycols_free(&k);
    if (rc != 0 || atomic_load(&r->stop)) return rc != 0 ? rc : GW_EUNAVAIL;
    /* the table's "no checkpoint before" mark */
    res = gw_pg_query(r->q, "SELECT pg_current_wal_lsn()::text", err);
    if (res == NULL) return GW_EPG;
    uint64_t mark = 0;
    gw_lsn_parse(PQgetvalue(res, 0, 0), &mark);
    PQclear(res);
    if (mark > r->nocp_lsn) r->nocp_lsn = mark;
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)r->nocp_lsn);
    char nocpkey[64];
    snprintf(nocpkey, sizeof(nocpkey), "nocp:%s", r->version);
    rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, statekey, "done", err);
    if (rc == 0) rc = gw_storage_state_set(r->st, nocpkey, buf, err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    char lsntext[32];
    gw_info("repl", "snapshotted a table", "table=%s rows=%llu no_checkpoint_before=%s", t->qname,
            (unsigned long long)done, gw_lsn_format(mark, lsntext, sizeof(lsntext)));
    return rc;
}

int gw__repl_snapshot(gw_repl_t *r, gw_err_t *err)
{
    char buf[64], nocpkey[64];
    snprintf(nocpkey, sizeof(nocpkey), "nocp:%s", r->version);
    int got = gw__repl_state_read(r->st, nocpkey, buf, sizeof(buf), err);
    if (got < 0) return err->code;
    if (got) r->nocp_lsn = strtoull(buf, NULL, 10);
    /* rows are evaluated here and written by the apply thread, as while streaming */
    int rc = gw__repl_pipe_start(r, err);
    for (size_t i = 0; rc == 0 && i < r->ntables && !atomic_load(&r->stop); i++)
        rc = snapshot_table(r, &r->tables[i], err);
    rc = gw__repl_pipe_stop(r, rc, err);
    if (rc != 0) return rc;
    return atomic_load(&r->stop) ? GW_EUNAVAIL : 0;
}
