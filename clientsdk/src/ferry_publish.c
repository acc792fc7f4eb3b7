/* ferry_publish.c -- publishing: the marked rows of a validated checkpoint into the app's tables
 *
 * Publishing writes the rows that ferry_oplog.c marked in ferry_updated as ops arrived, by the
 * rules in ferry_oplog.c's opening comment (the highest op id across buckets wins; no PUT left,
 * the row is deleted). A new bucket's whole-bucket mark is published set-based (publish_whole:
 * one INSERT OR REPLACE ... SELECT per table; for a large bucket with a second reader,
 * ferry_rows.c); rows marked one by one are published one by one (pub_row). Either way a row's
 * columns are read from its JSON in C (ferry_jrow.c), json_extract only for what that reader
 * does not take.
 *
 * Callers: ferry_oplog.c at a checkpoint_complete or partial_checkpoint_complete that validated
 * (ferry__publish); the sync thread after an upload (ferry__publish_try_pending); ferry_db.c
 * when the schema gained a table (ferry__republish_type). Invariants (ferry_oplog.c, 1 and 2):
 * a publish is one write transaction (BEGIN IMMEDIATE), so the app never sees half of a
 * checkpoint; a full checkpoint (and a partial one of priority > 0) is published only when the
 * upload queue is empty and the target write checkpoint is reached, checked inside that same
 * transaction; the WAL checkpoint waits until the app was told (ferry__oplog_checkpoint). */
#include "ferry_oplog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- rows one by one ----------------------------------------------------------------------- */

typedef struct pub {
    sqlite3 *conn;
    sqlite3_stmt *highest;
    sqlite3_stmt *put[FERRY_MAX_TABLES], *del[FERRY_MAX_TABLES];
    sqlite3_stmt *fast[FERRY_MAX_TABLES]; /* INSERT OR REPLACE with the columns bound from C */
    struct jrow *jrow;                    /* the row being bound */
    uint64_t changed;
    char err[200];
} pub_t;

static void pub_free(pub_t *p)
{
    sqlite3_finalize(p->highest);
    for (int i = 0; i < FERRY_MAX_TABLES; i++) {
        sqlite3_finalize(p->put[i]);
        sqlite3_finalize(p->del[i]);
        sqlite3_finalize(p->fast[i]);
    }
    ferry__jrow_free(p->jrow);
}

static int pub_init(ferry_db_t *db, pub_t *p, sqlite3 *conn)
{
    memset(p, 0, sizeof *p);
    p->conn = conn;
    if (!(p->jrow = ferry__jrow_new())) return FERRY_ENOMEM;
    if (sqlite3_prepare_v2(conn,
                           "SELECT data FROM ferry_oplog WHERE row_type = ? AND row_id = ? "
                           "ORDER BY op_id DESC LIMIT 1",
                           -1, &p->highest, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    (void)db;
    return 0;
}

static int pub_stmts(ferry_db_t *db, pub_t *p, int ti)
{
    if (p->put[ti]) return 0;
    ferry_tdef_t *t = &db->tables[ti];
    size_t cap = 256 + strlen(t->name) * 2;
    for (int i = 0; i < t->ncols; i++)
        cap += strlen(t->cols[i]) * 4 + 64;
    char *sql = malloc(cap);
    if (!sql) return FERRY_ENOMEM;
    size_t n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
    for (int i = 0; i < t->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
    size_t head = n;
    n += (size_t)snprintf(sql + n, cap - n, ") VALUES (?1");
    for (int i = 0; i < t->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, ", json_extract(?2, '$.\"%s\"')", t->cols[i]);
    snprintf(sql + n, cap - n, ")");
    int rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->put[ti], NULL);
    if (rc == SQLITE_OK) {
        n = head + (size_t)snprintf(sql + head, cap - head, ") VALUES (?1");
        for (int i = 0; i < t->ncols; i++)
            n += (size_t)snprintf(sql + n, cap - n, ", ?%d", i + 2);
        snprintf(sql + n, cap - n, ")");
        rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->fast[ti], NULL);
    }
    if (rc == SQLITE_OK) {
        snprintf(sql, cap, "DELETE FROM \"%s\" WHERE id = ?", t->name);
        rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->del[ti], NULL);
    }
    if (rc != SQLITE_OK) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
    free(sql);
    return rc == SQLITE_OK ? 0 : FERRY_ESQLITE;
}

/* Binds the columns of t from the JSON object d[0..n) to ins (?2 ... in column order; the
 * caller binds ?1); 0 when bound, -1 to leave the row to json_extract, FERRY_ENOMEM. */
static int bind_cols(pub_t *p, const ferry_tdef_t *t, sqlite3_stmt *ins, const char *d, size_t n)
{
    int ok = ferry__jrow_load(p->jrow, d, n);
    if (ok <= 0) return ok < 0 ? FERRY_ENOMEM : -1;
    sqlite3_clear_bindings(ins);
    for (int i = 0; i < t->ncols; i++) {
        const jcol_t *c = ferry__jrow_get(p->jrow, t->cols[i]);
        if (!c || c->type == SQLITE_NULL) continue;
        if (c->type == SQLITE_INTEGER) {
            sqlite3_bind_int64(ins, i + 2, c->i);
            continue;
        }
        size_t len;
        const char *v = ferry__jrow_text(p->jrow, c, &len);
        if (!v) return FERRY_ENOMEM;
        sqlite3_bind_text(ins, i + 2, v, (int)len, SQLITE_TRANSIENT);
    }
    return 0;
}

/* Writes one row of table ti from its data (a JSON object, or anything else: then the columns
 * are what json_extract makes of it, or NULL when it fails). Returns 0 or FERRY_E*. */
static int put_row(ferry_db_t *db, pub_t *p, int ti, const char *id, sqlite3_value *data)
{
    int rc = pub_stmts(db, p, ti);
    if (rc) return rc;
    int s = SQLITE_ERROR;
    if (sqlite3_value_type(data) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(data);
        int b = d ? bind_cols(p, &db->tables[ti], p->fast[ti], d, (size_t)sqlite3_value_bytes(data))
                  : -1;
        if (b == FERRY_ENOMEM) return b;
        if (b == 0) {
            sqlite3_bind_text(p->fast[ti], 1, id, -1, SQLITE_STATIC);
            s = sqlite3_step(p->fast[ti]);
            sqlite3_reset(p->fast[ti]);
            if (s != SQLITE_DONE) {
                snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
                return FERRY_ESQLITE;
            }
        }
    }
    if (s != SQLITE_DONE) {
        sqlite3_stmt *put = p->put[ti];
        sqlite3_bind_text(put, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_value(put, 2, data);
        s = sqlite3_step(put);
        sqlite3_reset(put);
        /* a data string that is not a JSON object makes json_extract fail: keep the id only */
        if (s != SQLITE_DONE) {
            sqlite3_bind_null(put, 2);
            s = sqlite3_step(put);
            if (s != SQLITE_DONE) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
            sqlite3_reset(put);
        }
        sqlite3_bind_null(put, 2);
    }
    if (s != SQLITE_DONE) return FERRY_ESQLITE;
    p->changed |= (uint64_t)1 << ti;
    return 0;
}

/* Re-evaluates one row: the highest-op PUT across buckets, or a delete. Unknown types stay in the
 * oplog only (published when the schema gains the table). */
static int pub_row(ferry_db_t *db, pub_t *p, const char *type, const char *id)
{
    int ti = ferry__table_index(db, type);
    if (ti < 0 || db->tables[ti].local_only) return 0;
    int rc = pub_stmts(db, p, ti);
    if (rc) return rc;
    sqlite3_bind_text(p->highest, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(p->highest, 2, id, -1, SQLITE_STATIC);
    int s = sqlite3_step(p->highest);
    if (s == SQLITE_ROW) {
        rc = put_row(db, p, ti, id, sqlite3_column_value(p->highest, 0));
    } else if (s == SQLITE_DONE) {
        sqlite3_bind_text(p->del[ti], 1, id, -1, SQLITE_STATIC);
        s = sqlite3_step(p->del[ti]);
        if (s != SQLITE_DONE) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
        sqlite3_reset(p->del[ti]);
        rc = s == SQLITE_DONE ? 0 : FERRY_ESQLITE;
        if (!rc) p->changed |= (uint64_t)1 << ti;
    } else {
        snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
        rc = FERRY_ESQLITE;
    }
    sqlite3_reset(p->highest);
    return rc;
}

int ferry__republish_type(ferry_db_t *db, sqlite3 *conn, const char *type)
{
    pub_t p;
    sqlite3_stmt *st = NULL;
    int rc = pub_init(db, &p, conn);
    if (!rc &&
        sqlite3_prepare_v2(conn, "SELECT DISTINCT row_id FROM ferry_oplog WHERE row_type = ?", -1,
                           &st, NULL) != SQLITE_OK)
        rc = FERRY_ESQLITE;
    if (!rc) {
        sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
        while (!rc && sqlite3_step(st) == SQLITE_ROW)
            rc = pub_row(db, &p, type, (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    pub_free(&p);
    return rc;
}

/* ---- whole buckets, set-based -------------------------------------------------------------- */

/* The share of the oplog's ops that are of one type (counted in the key index), 1 when the
 * count fails. */
static double type_share(sqlite3 *c, const char *type)
{
    sqlite3_stmt *st;
    double share = 1;
    /* no op of another type (two probes of the key index): 1 without counting them all */
    if (sqlite3_prepare_v2(c,
                           "SELECT EXISTS (SELECT 1 FROM ferry_oplog WHERE row_type < ?1) OR "
                           "EXISTS (SELECT 1 FROM ferry_oplog WHERE row_type > ?1)",
                           -1, &st, NULL) != SQLITE_OK)
        return share;
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    int others = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (!others) return share;
    if (sqlite3_prepare_v2(c,
                           "SELECT (SELECT count(*) FROM ferry_oplog WHERE row_type = ?), "
                           "(SELECT count(*) FROM ferry_oplog)",
                           -1, &st, NULL) != SQLITE_OK)
        return share;
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 1) > 0)
        share = (double)sqlite3_column_int64(st, 0) / (double)sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    return share;
}

/* The ops bucket bid holds (ferry_buckets.count); 0 when unknown. */
static int64_t bucket_count(sqlite3 *c, int64_t bid)
{
    sqlite3_stmt *st;
    int64_t n = 0;
    if (sqlite3_prepare_v2(c, "SELECT count FROM ferry_buckets WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    sqlite3_bind_int64(st, 1, bid);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* Publishes the buckets with a whole-bucket mark (matching filt), one statement per table and
 * bucket: every op of the bucket that is the highest op of its row across all buckets becomes
 * the row (REPLACE INTO with json_extract of its data). A row whose highest op is in another
 * bucket is left to that bucket's own mark (it has one: per row, or whole). When a data string
 * is not a JSON object the statement fails; that bucket's rows then go the row-by-row way.
 * When no other bucket holds any op (a first sync of one bucket), no row needs a probe: the
 * bucket's ops were stored in op order (a replaced op is deleted and the new one appended), so
 * the statement scans the table in rowid order and the last REPLACE of a row is its highest op.
 * When the table's rows are a small part of the oplog, scanning all of it would cost more than
 * walking the key index for the type, grouped by row, taking each row's highest op. (Sorting a
 * row's ops inside the walk cost more than both: about 1 us per row.) */
static int publish_whole(ferry_db_t *db, ferry_sync_t *s, pub_t *p, const char *filt)
{
    char q[256];
    sqlite3_stmt *sel = NULL, *st = NULL;
    int64_t *bids = NULL; /* the new buckets, read first: building the index (DDL) needs no
                             statement running */
    size_t nbids = 0, capbids = 0;
    snprintf(q, sizeof q, "SELECT bucket FROM ferry_updated WHERE row_type = '' AND row_id = ''%s",
             filt);
    if (sqlite3_prepare_v2(p->conn, q, -1, &sel, NULL) != SQLITE_OK) goto sqlfail;
    int rc = 0, r;
    while ((r = sqlite3_step(sel)) == SQLITE_ROW) {
        if (nbids == capbids) {
            capbids = capbids ? capbids * 2 : 16;
            int64_t *nb = realloc(bids, capbids * sizeof *nb);
            if (!nb) return sqlite3_finalize(sel), free(bids), FERRY_ENOMEM;
            bids = nb;
        }
        bids[nbids++] = sqlite3_column_int64(sel, 0);
    }
    if (r != SQLITE_DONE) goto sqlfail;
    sqlite3_finalize(sel);
    sel = NULL;
    for (size_t bi = 0; bi < nbids && !rc; bi++) {
        int64_t bid = bids[bi];
        sqlite3_stmt *alone_st;
        if (sqlite3_prepare_v2(p->conn,
                               "SELECT EXISTS (SELECT 1 FROM ferry_buckets WHERE id <> ?1 AND "
                               "count > 0)",
                               -1, &alone_st, NULL) != SQLITE_OK)
            goto sqlfail;
        sqlite3_bind_int64(alone_st, 1, bid);
        int alone = sqlite3_step(alone_st) == SQLITE_ROW && sqlite3_column_int(alone_st, 0) == 0;
        sqlite3_finalize(alone_st);
        /* without the key index (bulk), only the scan of a bucket holding every op is cheap */
        if (s->bulk == 1 && (!alone || !s->bulk_counted) && ferry__oplog_need_index(s))
            goto sqlfail;
        int64_t total = 0;
        for (int ti = 0; ti <= FERRY_MAX_TABLES; ti++)
            total += s->bulk_ops[ti];
        for (int ti = 0; ti < db->ntables && !rc; ti++) {
            ferry_tdef_t *t = &db->tables[ti];
            if (t->local_only) continue;
            int scan = 0;
            if (s->bulk == 1) {
                /* bulk: the table's ops are counted; none, nothing to do; a small share is
                 * cheaper found through the index */
                if (s->bulk_ops[ti] == 0) continue;
                scan = (double)s->bulk_ops[ti] >= 0.3 * (double)total;
                if (!scan && ferry__oplog_need_index(s)) goto sqlfail;
            }
            size_t cap = 512 + strlen(t->name) * 2;
            for (int i = 0; i < t->ncols; i++)
                cap += strlen(t->cols[i]) * 6 + 128;
            char *sql = malloc(cap);
            if (!sql) return free(bids), FERRY_ENOMEM;
            size_t n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
            for (int i = 0; i < t->ncols; i++)
                n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
            n += (size_t)snprintf(sql + n, cap - n, ") SELECT o.row_id");
            for (int i = 0; i < t->ncols; i++)
                n += (size_t)snprintf(sql + n, cap - n, ", ferry_col(o.data, '%s')", t->cols[i]);
            pread_t *rd = NULL;
            if (alone && !scan) scan = type_share(p->conn, t->name) >= 0.3;
            if (alone && scan &&
                bucket_count(p->conn, bid) >=
                    (s->pub_reader_min > 0 ? s->pub_reader_min : PR_MIN_OPS) &&
                (rd = ferry__rows_start(p->conn, t))) {
                s->pub_reader_used++;
                n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
                for (int i = 0; i < t->ncols; i++)
                    n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
                n += (size_t)snprintf(sql + n, cap - n, ") SELECT c0");
                for (int i = 0; i < t->ncols; i++)
                    n += (size_t)snprintf(sql + n, cap - n, ", c%d", i + 1);
                snprintf(sql + n, cap - n,
                         " FROM ferry_rows(?3) WHERE ?1 IS NOT NULL AND ?2 "
                         "IS NOT NULL");
            } else if (alone && scan)
                snprintf(sql + n, cap - n,
                         " FROM ferry_oplog o NOT INDEXED WHERE o.row_type = ?2 AND ?1 IS NOT "
                         "NULL ORDER BY o.rowid");
            else if (alone)
                snprintf(sql + n, cap - n,
                         " FROM (SELECT row_id, max(op_id), data FROM ferry_oplog WHERE "
                         "row_type = ?2 AND ?1 IS NOT NULL GROUP BY row_id) o");
            else
                snprintf(sql + n, cap - n,
                         " FROM ferry_oplog o WHERE o.bucket = ?1 AND o.row_type = ?2 AND NOT "
                         "EXISTS (SELECT 1 FROM ferry_oplog h WHERE h.row_type = o.row_type AND "
                         "h.row_id = o.row_id AND h.op_id > o.op_id)");
            r = sqlite3_prepare_v2(p->conn, sql, -1, &st, NULL);
            free(sql);
            if (r != SQLITE_OK) {
                ferry__rows_free(rd);
                goto sqlfail;
            }
            sqlite3_bind_int64(st, 1, bid);
            sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
            if (rd) sqlite3_bind_pointer(st, 3, rd, "ferry_rows", NULL);
            sqlite3_exec(p->conn, "SAVEPOINT ferry_whole", NULL, NULL, NULL);
            r = sqlite3_step(st);
            int changes = sqlite3_changes(p->conn);
            sqlite3_finalize(st);
            st = NULL;
            ferry__rows_free(rd);
            if (r == SQLITE_DONE) {
                sqlite3_exec(p->conn, "RELEASE ferry_whole", NULL, NULL, NULL);
                if (changes > 0) p->changed |= (uint64_t)1 << ti;
                continue;
            }
            /* e.g. a data string that is not JSON: this table's rows of the bucket one by one */
            sqlite3_exec(p->conn, "ROLLBACK TO ferry_whole; RELEASE ferry_whole", NULL, NULL, NULL);
            if (ferry__oplog_need_index(s)) goto sqlfail; /* pub_row looks rows up by the index */
            sqlite3_stmt *rows;
            if (sqlite3_prepare_v2(p->conn,
                                   "SELECT DISTINCT row_id FROM ferry_oplog WHERE bucket = ? AND "
                                   "row_type = ?",
                                   -1, &rows, NULL) != SQLITE_OK)
                goto sqlfail;
            sqlite3_bind_int64(rows, 1, bid);
            sqlite3_bind_text(rows, 2, t->name, -1, SQLITE_STATIC);
            while (!rc && sqlite3_step(rows) == SQLITE_ROW)
                rc = pub_row(db, p, t->name, (const char *)sqlite3_column_text(rows, 0));
            sqlite3_finalize(rows);
        }
    }
    free(bids);
    return rc;
sqlfail:
    snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
    sqlite3_finalize(st);
    sqlite3_finalize(sel);
    free(bids);
    return FERRY_ESQLITE;
}

/* ---- the publish transaction --------------------------------------------------------------- */

/* Can downloaded data be published now? Must run inside the publishing write transaction. */
static int can_apply(ferry_sync_t *s, int *ok)
{
    sqlite3_stmt *st = s->st[S_CRUD_COUNT];
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return -1;
    }
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    int64_t target = ferry__kv_get_int(s->conn, "target", -1);
    *ok = n == 0 && (target < 0 || (s->cp_write_cp >= 0 && target <= s->cp_write_cp));
    return 0;
}

/* Ferry's own triggers on the synced tables fire only WHEN NOT ferry_applying() (never on
 * this connection), or on an UPDATE of the id (which publishing never does); yet SQLite still
 * runs each AFTER INSERT trigger's program per row to evaluate that condition: a quarter of
 * publishing 1,000,000 rows. When no other trigger exists in the file, publishing runs with
 * triggers disabled on this connection. Called inside the publish transaction (the write lock
 * keeps the schema as checked); returns 1 when it disabled them. */
static int triggers_off(sqlite3 *c)
{
    sqlite3_stmt *st;
    int others = 1;
    if (sqlite3_prepare_v2(c,
                           "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND "
                           "name NOT IN ('ferry_ins_' || tbl_name, 'ferry_upd_' || tbl_name, "
                           "'ferry_del_' || tbl_name, 'ferry_id_' || tbl_name)",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW) others = sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    int was = 1;
    return !others && sqlite3_db_config(c, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, &was) == SQLITE_OK;
}

static int publish_tx(ferry_db_t *db, ferry_sync_t *s, int prio, int *trig_off);

/* Publishes the marked rows of buckets with priority <= prio (prio < 0: all, a full
 * checkpoint). Returns 1 when published, 0 when blocked by uploads, negative on error. */
int ferry__publish(ferry_db_t *db, ferry_sync_t *s, int prio)
{
    int trig_off = 0;
    s->defer_checkpoint = 1;
    int rc = publish_tx(db, s, prio, &trig_off);
    s->defer_checkpoint = 0;
    if (trig_off) sqlite3_db_config(s->conn, SQLITE_DBCONFIG_ENABLE_TRIGGER, 1, NULL);
    return rc;
}

/* 1 when rows are marked one by one for the next publish (not only whole buckets). */
static int rows_marked(sqlite3 *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c,
                           "SELECT EXISTS (SELECT 1 FROM ferry_updated WHERE row_type <> '' "
                           "OR row_id <> '')",
                           -1, &st, NULL) != SQLITE_OK)
        return 1;
    int marked = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return marked;
}

static int publish_tx(ferry_db_t *db, ferry_sync_t *s, int prio, int *trig_off)
{
    if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "start the publish transaction");
    int ok = 1;
    if (prio != 0 && can_apply(s, &ok) != 0) return ferry__oplog_sqlerr(s, "read the upload queue");
    if (!ok) {
        sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
        return 0;
    }
    *trig_off = triggers_off(s->conn);
    /* without the key index (bulk): rows marked one by one need it */
    s->bulk = ferry__oplog_unindexed(s->conn);
    if (s->bulk < 0) return ferry__oplog_sqlerr(s, "inspect the oplog");
    if (s->bulk && rows_marked(s->conn) && ferry__oplog_need_index(s))
        return ferry__oplog_sqlerr(s, "index the oplog");
    pub_t p;
    int rc = pub_init(db, &p, s->conn);
    sqlite3_stmt *sel = NULL;
    char q[512];
    /* buckets new since the last publish (whole-bucket marks) first, set-based; then the rows
     * marked one by one */
    char filt[128] = "";
    if (prio >= 0)
        snprintf(filt, sizeof filt,
                 " AND bucket IN (SELECT id FROM ferry_buckets WHERE priority <= %d)", prio);
    if (!rc) rc = publish_whole(db, s, &p, filt);
    snprintf(q, sizeof q,
             "SELECT row_type, row_id FROM ferry_updated WHERE (row_type <> '' OR row_id <> '')%s "
             "GROUP BY 1, 2",
             filt);
    if (!rc && sqlite3_prepare_v2(s->conn, q, -1, &sel, NULL) != SQLITE_OK) rc = FERRY_ESQLITE;
    while (!rc) {
        int st = sqlite3_step(sel);
        if (st == SQLITE_DONE) break;
        if (st != SQLITE_ROW) {
            snprintf(p.err, sizeof p.err, "%s", sqlite3_errmsg(s->conn));
            rc = FERRY_ESQLITE;
            break;
        }
        rc = pub_row(db, &p, (const char *)sqlite3_column_text(sel, 0),
                     (const char *)sqlite3_column_text(sel, 1));
    }
    sqlite3_finalize(sel);
    uint64_t changed = p.changed;
    pub_free(&p);
    if (rc) {
        ferry__oplog_sqlerr(s, "publish downloaded rows");
        if (p.err[0]) snprintf(s->errmsg, sizeof s->errmsg, "could not publish rows: %s", p.err);
        return rc;
    }
    if (prio < 0)
        snprintf(q, sizeof q, "DELETE FROM ferry_updated");
    else
        snprintf(q, sizeof q,
                 "DELETE FROM ferry_updated WHERE bucket IN "
                 "(SELECT id FROM ferry_buckets WHERE priority <= %d)",
                 prio);
    if (sqlite3_exec(s->conn, q, NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "clear the rows to publish");
    if (prio < 0) {
        sqlite3_bind_int64(s->st[S_LAST_OP_ALL], 1, s->cp_last_op);
        int64_t now = (int64_t)time(NULL);
        /* the write checkpoint was reached: no gate until the next local write */
        if (ferry__step_done(s->st[S_LAST_OP_ALL]) ||
            ferry__kv_set_int(s->conn, "last_synced_at", now) ||
            sqlite3_exec(s->conn, "DELETE FROM ferry_kv WHERE key = 'target'", NULL, NULL, NULL) ||
            ferry__kv_set_int(s->conn, "applied_checkpoint", s->cp_last_op) ||
            ferry__subs_synced(s))
            return ferry__oplog_sqlerr(s, "store the checkpoint");
        pthread_mutex_lock(&db->mu);
        db->status.last_synced_at = now;
        db->status.applied_checkpoint = s->cp_last_op;
        db->synced_ever = 1;
        pthread_mutex_unlock(&db->mu);
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "commit the checkpoint");
    if (s->bulk == 1) s->index_due = 1; /* once the app was told */
    if (prio < 0) {
        s->pending = 0;
        s->applied_cp = s->cp_last_op;
        pthread_mutex_lock(&db->mu);
        db->conn_applied_write_cp = s->cp_write_cp;
        pthread_mutex_unlock(&db->mu);
    }
    if (changed) ferry__notify(db, changed);
    return 1;
}

int ferry__publish_try_pending(ferry_db_t *db, ferry_sync_t *s)
{
    int rc = ferry__oplog_flush(s);
    if (rc) return rc;
    if (!s->pending) return 0;
    return ferry__publish(db, s, -1);
}
