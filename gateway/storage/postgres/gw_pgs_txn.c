/* gw_pgs_txn.c -- the Postgres backend's transactions, state and the writer's batched I/O
 *
 * Storage is a round trip away, so the writer's I/O (gw_writer.h) is batched: a row's state is
 * read from a per-transaction cache, filled for a whole batch of the apply pipeline at once
 * (gw__pgs_prefetch: one query) or, on a miss, by one query; stores, deletes and lookup changes
 * go to the cache and to lists, written together in one statement (PS_WRITE_ROWS) every
 * ROWS_BATCH rows and at commit. Chunks wait in arrays and are written at commit with the bucket
 * totals, the replication state and the NOTIFY, in one statement, pipelined with COMMIT. A small
 * transaction costs three round trips (begin, rows, commit); a batch of thousands the same plus
 * one per ROWS_BATCH rows.
 *
 * Leadership and fencing: a transaction of replicated data begins by locking the next_op and
 * epoch rows (FOR UPDATE) and checks that the epoch is still the one this writer leads under; a
 * new leader increments the epoch under the same lock, so an instance that lost leadership can
 * never commit replicated data (the lock serializes it with the increment). A writer that does not
 * lead only stores write checkpoints (any instance serves them).
 *
 * Lookups within one transaction: an entry opened and closed in the same transaction is written
 * closed; the storage's open entries of a row are closed at the first change of that row since
 * the last write (the same result as writing each change in turn).
 */
#include "storage/postgres/gw_pgs_int.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ROWS_BATCH = 2000, CACHE_MAX = 50000, CHUNK_BATCH_BYTES = 8 << 20 };

enum { OID_INT8 = 20, OID_TEXT = 25, OID_BYTEA = 17 };

/* ---- statements ---- */

static const char *const ps_sql[PS_COUNT] = {
    [PS_BEGIN] = "SELECT k, v FROM %1$s.state WHERE k IN ('next_op', 'epoch') FOR UPDATE",
    [PS_STATE_GET] = "SELECT v FROM %1$s.state WHERE k = $1",
    [PS_STATE_SET] = "INSERT INTO %1$s.state (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE "
                     "SET v = excluded.v",
    [PS_ROW_GET] = "SELECT members, lookups, copy FROM %1$s.rows WHERE tbl = $1 AND key = $2",
    [PS_ROWS_GET] = "SELECT r.tbl, r.key, r.members, r.lookups, r.copy FROM %1$s.rows r "
                    "JOIN unnest($1::text[], $2::text[]) AS q(tbl, key) ON r.tbl = q.tbl AND "
                    "r.key = q.key",
    [PS_WRITE_ROWS] =
        "WITH up AS (INSERT INTO %1$s.rows (tbl, key, members, lookups, copy) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::bytea[]) "
        "ON CONFLICT (tbl, key) DO UPDATE SET members = excluded.members, lookups = "
        "excluded.lookups, copy = excluded.copy), "
        "upd AS (UPDATE %1$s.rows r SET members = u.members, lookups = u.lookups, copy = u.copy "
        "FROM unnest($17::text[], $18::text[], $19::bytea[], $20::text[], $21::bytea[]) AS "
        "u(tbl, key, members, lookups, copy) WHERE r.tbl = u.tbl AND r.key = u.key), "
        "del AS (DELETE FROM %1$s.rows r USING unnest($6::text[], $7::text[]) AS d(tbl, key) "
        "WHERE r.tbl = d.tbl AND r.key = d.key), "
        "cl AS (UPDATE %1$s.lookups l SET to_op = c.op FROM unnest($8::text[], $9::text[], "
        "$10::int8[]) AS c(tbl, rkey, op) WHERE l.tbl = c.tbl AND l.rkey = c.rkey AND l.to_op IS "
        "NULL) "
        "INSERT INTO %1$s.lookups (key, tbl, rkey, params, from_op, to_op) SELECT * FROM "
        "unnest($11::text[], $12::text[], $13::text[], $14::text[], $15::int8[], $16::int8[])",
    [PS_COMMIT] =
        "WITH c AS (INSERT INTO %1$s.op_chunks (bucket_id, first_op, last_op, n, checksum, ops, "
        "commit_us, commit_lsn) SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], "
        "$4::int8[], $5::int8[], $6::bytea[], $22::int8[], $23::int8[])), "
        "b AS (INSERT INTO %1$s.buckets (id, name, checksum, count, last_op) SELECT * FROM "
        "unnest($7::int8[], $8::text[], $9::int8[], $10::int8[], $11::int8[]) ON CONFLICT (id) "
        "DO UPDATE SET checksum = excluded.checksum, count = excluded.count, last_op = "
        "excluded.last_op), "
        "bu AS (UPDATE %1$s.buckets b SET checksum = u.checksum, count = u.count, last_op = "
        "u.last_op FROM unnest($18::int8[], $19::int8[], $20::int8[], $21::int8[]) AS u(id, "
        "checksum, count, last_op) WHERE b.id = u.id), "
        "s AS (INSERT INTO %1$s.state (k, v) SELECT * FROM unnest($12::text[], $13::text[]) ON "
        "CONFLICT (k) DO UPDATE SET v = excluded.v), "
        "ch AS (INSERT INTO %1$s.changes (last_op, body) SELECT $17::int8, $16::text WHERE "
        "$16::text IS NOT NULL ON CONFLICT (last_op) DO UPDATE SET body = excluded.body, at = "
        "now()), "
        "old AS (DELETE FROM %1$s.changes WHERE $16::text IS NOT NULL AND at < now() - "
        "interval '10 minutes') "
        "SELECT CASE WHEN $15::text IS NULL THEN NULL ELSE pg_notify($14::text, $15::text) END",
    [PS_BUCKET_IDS] = "SELECT nextval(%2$s) FROM generate_series(1, 64)",
    [PS_ROWS_OF_TBL] = "SELECT key FROM %1$s.rows WHERE tbl = $1 LIMIT 2000",
    [PS_WCP_UPSERT] = "WITH u AS (INSERT INTO %1$s.write_checkpoints (user_key, counter, lsn, "
                      "seen, seq) VALUES ($1, 1, $2, $5, nextval('%1$s.wcp_seq')) ON CONFLICT "
                      "(user_key) DO UPDATE SET counter = %1$s.write_checkpoints.counter + 1, lsn "
                      "= excluded.lsn, seen = excluded.seen, seq = excluded.seq RETURNING "
                      "counter) "
                      "SELECT u.counter, pg_notify($3::text, $4::text) FROM u",
    [PS_WCP_PRUNE] = "DELETE FROM %1$s.write_checkpoints WHERE seen < $1",
    /* a client's own checkpoint id, stored only when larger than the key's; answers the id the
     * key holds now (the snapshot's when the request was stale) and whether it was stored */
    [PS_WCP_REQUEST] =
        "WITH u AS (INSERT INTO %1$s.write_checkpoints (user_key, counter, lsn, seen, seq) VALUES "
        "($1, $6::int8, $2, $5, nextval('%1$s.wcp_seq')) ON CONFLICT (user_key) DO UPDATE SET "
        "counter = excluded.counter, lsn = excluded.lsn, seen = excluded.seen, seq = excluded.seq "
        "WHERE excluded.counter > %1$s.write_checkpoints.counter RETURNING counter), "
        "n AS (SELECT pg_notify($3::text, $4::text) FROM u) "
        "SELECT coalesce((SELECT counter FROM u), (SELECT counter FROM %1$s.write_checkpoints "
        "WHERE user_key = $1)), (SELECT count(*) FROM u), (SELECT count(*) FROM n)",
    /* compaction names a bucket's chunks by their last op id (the key's second half) */
    [PS_CHUNK_GET] = "SELECT ops FROM %1$s.op_chunks WHERE bucket_id = $1 AND last_op = $2",
    [PS_CHUNK_SET] = "UPDATE %1$s.op_chunks SET ops = $3, first_op = $4, n = $5, checksum = $6 "
                     "WHERE bucket_id = $1 AND last_op = $2",
    [PS_CHUNK_DEL] = "DELETE FROM %1$s.op_chunks WHERE bucket_id = $1 AND last_op = $2",
    [PS_CHUNK_IDS] = "SELECT last_op FROM %1$s.op_chunks WHERE bucket_id = $1 AND last_op <= $2 "
                     "ORDER BY last_op",
};

int gw__pgs_prepare(gw_pgs_t *s, gw_err_t *err)
{
    if (s->prepared) return 0;
    char *seq = NULL;
    {
        gw_buf_t b = GW_BUF_INIT;
        gw_buf_printf(&b, "%s.bucket_ids", s->schema_q);
        seq = PQescapeLiteral(s->conn, b.data, b.len);
        gw_buf_free(&b);
    }
    for (int i = 0; i < PS_COUNT; i++) {
        gw_buf_t sql = GW_BUF_INIT;
        gw_buf_printf(&sql, ps_sql[i], s->schema_q, seq != NULL ? seq : "''");
        char name[32];
        snprintf(name, sizeof(name), "ferry_w%d", i);
        PGresult *res = PQprepare(s->conn, name, sql.data, 0, NULL);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        gw_buf_free(&sql);
        if (!ok) {
            PQfreemem(seq);
            return gw__pgs_err(s->conn, err, "prepare storage statements");
        }
    }
    PQfreemem(seq);
    s->prepared = 1;
    return 0;
}

PGresult *gw__pgs_exec(gw_pgs_t *s, int i, int n, const char *const *values, const int *lengths,
                       const int *formats, int binary_result, gw_err_t *err)
{
    char name[32];
    snprintf(name, sizeof(name), "ferry_w%d", i);
    PGresult *res = PQexecPrepared(s->conn, name, n, values, lengths, formats, binary_result);
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) return res;
    gw_err_set(err, GW_EPG, "storage", "could not write storage: %s",
               PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res) : PQerrorMessage(s->conn));
    PQclear(res);
    return NULL;
}

/* Run a simple statement; 0 or GW_EPG. */
static int simple(gw_pgs_t *s, const char *sql, gw_err_t *err)
{
    PGresult *res = PQexec(s->conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK;
    PQclear(res);
    return ok ? 0 : gw__pgs_err(s->conn, err, sql);
}

/* ---- replication state ---- */

/* The stored form of key in namespace ns ("3#slot"; shared keys as they are), into buf. */
static const char *state_key(const char *ns, const char *key, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s", gw_storage_key_shared(key) || strchr(key, '#') != NULL ? "" : ns,
             key);
    return buf;
}

int gw__pgs_state_get(gw_storage_t *st, const char *key, char *buf, size_t len)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (len > 0) buf[0] = '\0';
    if (s->conn == NULL || !s->prepared) return -1;
    char k[256];
    const char *v[1] = {state_key(s->w.version, key, k, sizeof(k))};
    gw_err_t err;
    PGresult *res = gw__pgs_exec(s, PS_STATE_GET, 1, v, NULL, NULL, 0, &err);
    if (res == NULL) return -1;
    int found = PQntuples(res) == 1;
    if (found) snprintf(buf, len, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return found;
}

int gw__pgs_state_set(gw_storage_t *st, const char *key, const char *value, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->leader || (s->in_txn && !s->txn_repl))
        return gw_err_set(err, GW_EUNAVAIL, "storage",
                          "this instance does not lead the storage: it writes no replication "
                          "state");
    char k[256];
    const char *v[2] = {state_key(s->w.version, key, k, sizeof(k)), value};
    PGresult *res = gw__pgs_exec(s, PS_STATE_SET, 2, v, NULL, NULL, 0, err);
    PQclear(res);
    return res != NULL ? 0 : GW_EPG;
}

int gw__pgs_state_set_u64(gw_pgs_t *s, const char *key, uint64_t v, gw_err_t *err)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    return gw__pgs_state_set(&s->base, key, buf, err);
}

void gw__pgs_checkpoint(const gw_storage_t *st, uint64_t *last_op, uint64_t *lsn)
{
    const gw_pgs_t *s = (const gw_pgs_t *)st;
    *last_op = s->w.last_op;
    *lsn = s->w.lsn;
}

int gw__pgs_set_consistent(gw_storage_t *st, int consistent, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (gw__pgs_state_set(st, "consistent", consistent ? "1" : "0", err) != 0) return GW_EPG;
    s->w.consistent = consistent != 0;
    return 0;
}

int gw__pgs_consistent(const gw_storage_t *st)
{
    return ((const gw_pgs_t *)st)->w.consistent;
}

int gw__pgs_in_txn(const gw_storage_t *st)
{
    return ((const gw_pgs_t *)st)->in_txn;
}

/* ---- the bucket cache ---- */

int gw__pgs_load_cache(gw_pgs_t *s, gw_err_t *err)
{
    gw_writer_t *w = &s->w;
    gw_writer_drop_buckets(w);
    atomic_store(&w->n_buckets, 0);
    atomic_store(&w->n_ops, 0);
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql, "SELECT id, name, checksum, count, last_op FROM %s.buckets", s->schema_q);
    PGresult *res = PQexec(s->conn, sql.data);
    gw_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return gw__pgs_err(s->conn, err, "read buckets");
    }
    for (int i = 0; i < PQntuples(res); i++)
        gw_writer_load_bucket(w, gw__pgs_get_i64(res, i, 0), PQgetvalue(res, i, 1),
                              (uint32_t)gw__pgs_get_i64(res, i, 2),
                              (uint64_t)gw__pgs_get_i64(res, i, 3),
                              (uint64_t)gw__pgs_get_i64(res, i, 4));
    PQclear(res);
    char lo[48], hi[48];
    gw__pgs_ns_range(w->version, lo, hi, sizeof(lo));
    const char *pv[2] = {lo, hi};
    gw_buf_printf(&sql, "SELECT count(*) FROM %s.rows WHERE tbl >= $1 AND tbl < $2", s->schema_q);
    res = PQexecParams(s->conn, sql.data, 2, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        PQclear(res);
        return gw__pgs_err(s->conn, err, "count rows");
    }
    atomic_store(&w->n_rows, (uint64_t)gw__pgs_get_i64(res, 0, 0));
    PQclear(res);
    if (gw_writer_load_state(w, &s->base) != 0)
        return gw__pgs_err(s->conn, err, "read the replication state from storage");
    return 0;
}

int gw__pgs_bucket_flush(gw_pgs_t *s, gw_wbucket_t *b, gw_err_t *err)
{
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql,
                  "INSERT INTO %s.buckets (id, name, checksum, count, last_op) VALUES "
                  "($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET checksum = "
                  "excluded.checksum, count = excluded.count, last_op = excluded.last_op",
                  s->schema_q);
    char id[24], cs[24], n[24], lo[24];
    snprintf(id, sizeof(id), "%lld", (long long)b->id);
    snprintf(cs, sizeof(cs), "%u", b->checksum);
    snprintf(n, sizeof(n), "%llu", (unsigned long long)b->count);
    snprintf(lo, sizeof(lo), "%llu", (unsigned long long)b->last_op);
    const char *pv[5] = {id, b->name, cs, n, lo};
    PGresult *res = PQexecParams(s->conn, sql.data, 5, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&sql);
    int rc =
        PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : gw__pgs_err(s->conn, err, "write a bucket");
    PQclear(res);
    b->dirty = 0;
    return rc;
}

/* ---- the transaction's rows ---- */

static void row_free(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    pgs_row_t *r = value;
    gw_buf_free(&r->members);
    free(r->lookups);
    free(r->copy);
    free(r);
}

/* "<tbl>\x1f<key>" into out. */
static const char *row_key(gw_buf_t *out, const char *tbl, const char *key)
{
    gw_buf_reset(out);
    gw_buf_puts(out, tbl);
    gw_buf_append(out, "\x1f", 1);
    gw_buf_puts(out, key);
    return out->data;
}

static pgs_row_t *row_get(gw_pgs_t *s, const char *tbl, const char *key)
{
    gw_buf_t k = GW_BUF_INIT;
    pgs_row_t *r = gw_map_get(&s->rows, row_key(&k, tbl, key));
    gw_buf_free(&k);
    return r;
}

/* The cache entry of a row (created absent when new). */
static pgs_row_t *row_put(gw_pgs_t *s, const char *tbl, const char *key)
{
    gw_buf_t k = GW_BUF_INIT;
    row_key(&k, tbl, key);
    pgs_row_t *r = gw_map_get(&s->rows, k.data);
    if (r == NULL) {
        r = gw_xcalloc(1, sizeof(*r));
        r->lookups = gw_xstrdup("");
        gw_map_put(&s->rows, k.data, r);
    }
    gw_buf_free(&k);
    return r;
}

/* Fill a cache entry from a result row (members, lookups, copy at columns c..c+2, binary). */
static void row_fill(pgs_row_t *r, const PGresult *res, int i, int c)
{
    r->present = 1;
    r->in_db = 1;
    gw_buf_reset(&r->members);
    if (!PQgetisnull(res, i, c))
        gw_buf_append(&r->members, PQgetvalue(res, i, c), (size_t)PQgetlength(res, i, c));
    free(r->lookups);
    r->lookups = gw_xstrndup_len(PQgetvalue(res, i, c + 1), (size_t)PQgetlength(res, i, c + 1));
    free(r->copy);
    r->copy = NULL;
    r->copy_len = 0;
    if (!PQgetisnull(res, i, c + 2)) {
        r->copy_len = (size_t)PQgetlength(res, i, c + 2);
        r->copy = gw_xmalloc(r->copy_len + 1);
        memcpy(r->copy, PQgetvalue(res, i, c + 2), r->copy_len);
    }
}

void gw__pgs_clear_txn(gw_pgs_t *s)
{
    gw_map_each(&s->rows, row_free, NULL);
    gw_map_free(&s->rows);
    gw_map_init(&s->rows);
    s->nrows_dirty = 0;
    for (size_t i = 0; i < s->nlk; i++) {
        free(s->lk[i].key);
        free(s->lk[i].tbl);
        free(s->lk[i].rkey);
        free(s->lk[i].params);
    }
    s->nlk = 0;
    gw_map_free(&s->closed);
    gw_map_init(&s->closed);
    for (int i = 0; i < 8; i++)
        gw_buf_reset(&s->chunks[i]);
    s->nchunks = 0;
}

/* The arrays of one write of rows (built from the cache and the lookup lists). */
typedef struct rows_write {
    gw_buf_t e[21];
    size_t n_up, n_del, n_cl, n_ins, n_upd;
} rows_write_t;

typedef struct flush_ctx {
    gw_pgs_t *s;
    rows_write_t *rw;
} flush_ctx_t;

static void collect_dirty(const char *key, void *value, void *ud)
{
    flush_ctx_t *f = ud;
    pgs_row_t *r = value;
    if (!r->dirty) return;
    r->dirty = 0;
    const char *sep = strchr(key, '\x1f');
    size_t tl = (size_t)(sep - key);
    rows_write_t *rw = f->rw;
    if (r->present) {
        /* a row known to be in the table is updated; any other upserted */
        gw_buf_t *e = r->in_db ? &rw->e[16] : &rw->e[0];
        gw__pgs_elem_bytes(&e[0], key, tl);
        gw__pgs_elem_bytes(&e[1], sep + 1, strlen(sep + 1));
        gw__pgs_elem_bytes(&e[2], r->members.data, r->members.len);
        gw__pgs_elem_bytes(&e[3], r->lookups, strlen(r->lookups));
        if (r->copy != NULL)
            gw__pgs_elem_bytes(&e[4], r->copy, r->copy_len);
        else
            gw__pgs_elem_null(&e[4]);
        if (r->in_db)
            rw->n_upd++;
        else
            rw->n_up++;
        r->in_db = 1;
    } else {
        gw__pgs_elem_bytes(&rw->e[5], key, tl);
        gw__pgs_elem_bytes(&rw->e[6], sep + 1, strlen(sep + 1));
        rw->n_del++;
        r->in_db = 0;
    }
}

static void collect_closed(const char *key, void *value, void *ud)
{
    rows_write_t *rw = ud;
    const char *sep = strchr(key, '\x1f');
    gw__pgs_elem_bytes(&rw->e[7], key, (size_t)(sep - key));
    gw__pgs_elem_bytes(&rw->e[8], sep + 1, strlen(sep + 1));
    gw__pgs_elem_i64(&rw->e[9], (int64_t)(uintptr_t)value);
    rw->n_cl++;
}

int gw__pgs_flush_rows(gw_pgs_t *s, gw_err_t *err)
{
    if (s->nrows_dirty == 0 && s->nlk == 0 && gw_map_count(&s->closed) == 0) return 0;
    rows_write_t rw = {0};
    flush_ctx_t f = {.s = s, .rw = &rw};
    gw_map_each(&s->rows, collect_dirty, &f);
    gw_map_each(&s->closed, collect_closed, &rw);
    for (size_t i = 0; i < s->nlk; i++) {
        pgs_lookup_t *l = &s->lk[i];
        gw__pgs_elem_bytes(&rw.e[10], l->key, strlen(l->key));
        gw__pgs_elem_bytes(&rw.e[11], l->tbl, strlen(l->tbl));
        gw__pgs_elem_bytes(&rw.e[12], l->rkey, strlen(l->rkey));
        gw__pgs_elem_bytes(&rw.e[13], l->params, strlen(l->params));
        gw__pgs_elem_i64(&rw.e[14], (int64_t)l->from_op);
        if (l->to_op != 0)
            gw__pgs_elem_i64(&rw.e[15], (int64_t)l->to_op);
        else
            gw__pgs_elem_null(&rw.e[15]);
        rw.n_ins++;
    }
    static const uint32_t oid[21] = {OID_TEXT,  OID_TEXT, OID_BYTEA, OID_TEXT, OID_BYTEA, OID_TEXT,
                                     OID_TEXT,  OID_TEXT, OID_TEXT,  OID_INT8, OID_TEXT,  OID_TEXT,
                                     OID_TEXT,  OID_TEXT, OID_INT8,  OID_INT8, OID_TEXT,  OID_TEXT,
                                     OID_BYTEA, OID_TEXT, OID_BYTEA};
    static const int group[21] = {0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4};
    size_t counts[5] = {rw.n_up, rw.n_del, rw.n_cl, rw.n_ins, rw.n_upd};
    gw_buf_t arr[21];
    const char *values[21];
    int lengths[21], formats[21];
    for (int i = 0; i < 21; i++) {
        arr[i] = (gw_buf_t)GW_BUF_INIT;
        gw__pgs_array(&arr[i], oid[i], counts[group[i]], &rw.e[i]);
        values[i] = arr[i].data;
        lengths[i] = (int)arr[i].len;
        formats[i] = 1;
    }
    PGresult *res = gw__pgs_exec(s, PS_WRITE_ROWS, 21, values, lengths, formats, 0, err);
    int rc = res != NULL ? 0 : GW_EPG;
    PQclear(res);
    for (int i = 0; i < 21; i++) {
        gw_buf_free(&arr[i]);
        gw_buf_free(&rw.e[i]);
    }
    s->nrows_dirty = 0;
    for (size_t i = 0; i < s->nlk; i++) {
        free(s->lk[i].key);
        free(s->lk[i].tbl);
        free(s->lk[i].rkey);
        free(s->lk[i].params);
    }
    s->nlk = 0;
    gw_map_free(&s->closed);
    gw_map_init(&s->closed);
    if (rc == 0 && gw_map_count(&s->rows) > CACHE_MAX) { /* written: the storage is current */
        gw_map_each(&s->rows, row_free, NULL);
        gw_map_free(&s->rows);
        gw_map_init(&s->rows);
    }
    return rc;
}

/* ---- the writer's I/O ---- */

static int row_load(void *ud, const char *tbl, const char *key, gw_buf_t *members,
                    gw_buf_t *lookups, const void *copy, size_t copy_len, int *copy_same,
                    gw_err_t *err)
{
    gw_pgs_t *s = ud;
    pgs_row_t *r = row_get(s, tbl, key);
    if (r == NULL) {
        const char *pv[2] = {tbl, key};
        PGresult *res = gw__pgs_exec(s, PS_ROW_GET, 2, pv, NULL, NULL, 1, err);
        if (res == NULL) return GW_EPG;
        r = row_put(s, tbl, key);
        if (PQntuples(res) == 1) row_fill(r, res, 0, 0);
        PQclear(res);
    }
    *copy_same = 0;
    if (!r->present) return 0;
    if (r->members.len > 0) gw_buf_append(members, r->members.data, r->members.len);
    gw_buf_puts(lookups, r->lookups);
    if (r->copy == NULL)
        *copy_same = copy == NULL;
    else
        *copy_same =
            copy != NULL && r->copy_len == copy_len && memcmp(r->copy, copy, copy_len) == 0;
    return 1;
}

static int row_store(void *ud, const char *tbl, const char *key, int found, const void *members,
                     size_t members_len, const char *lookups, const void *copy, size_t copy_len,
                     gw_err_t *err)
{
    (void)found;
    gw_pgs_t *s = ud;
    pgs_row_t *r = row_put(s, tbl, key);
    r->present = 1;
    gw_buf_reset(&r->members);
    if (members_len > 0) gw_buf_append(&r->members, members, members_len);
    free(r->lookups);
    r->lookups = gw_xstrdup(lookups);
    free(r->copy);
    r->copy = NULL;
    r->copy_len = 0;
    if (copy != NULL) {
        r->copy = gw_xmalloc(copy_len + 1);
        memcpy(r->copy, copy, copy_len);
        r->copy_len = copy_len;
    }
    if (!r->dirty) {
        r->dirty = 1;
        s->nrows_dirty++;
    }
    return s->nrows_dirty >= ROWS_BATCH ? gw__pgs_flush_rows(s, err) : 0;
}

static int row_delete(void *ud, const char *tbl, const char *key, gw_err_t *err)
{
    gw_pgs_t *s = ud;
    pgs_row_t *r = row_put(s, tbl, key);
    r->present = 0;
    gw_buf_reset(&r->members);
    free(r->copy);
    r->copy = NULL;
    r->copy_len = 0;
    if (!r->dirty) {
        r->dirty = 1;
        s->nrows_dirty++;
    }
    return s->nrows_dirty >= ROWS_BATCH ? gw__pgs_flush_rows(s, err) : 0;
}

static int lookups_close(void *ud, const char *tbl, const char *key, uint64_t op_id, gw_err_t *err)
{
    (void)err;
    gw_pgs_t *s = ud;
    /* entries this transaction opened for the row and not yet wrote */
    for (size_t i = 0; i < s->nlk; i++)
        if (s->lk[i].to_op == 0 && strcmp(s->lk[i].rkey, key) == 0 &&
            strcmp(s->lk[i].tbl, tbl) == 0)
            s->lk[i].to_op = op_id;
    /* the stored open entries: closed at the first change since the last write */
    gw_buf_t k = GW_BUF_INIT;
    row_key(&k, tbl, key);
    if (gw_map_get(&s->closed, k.data) == NULL)
        gw_map_put(&s->closed, k.data, (void *)(uintptr_t)op_id);
    gw_buf_free(&k);
    return 0;
}

static int lookup_insert(void *ud, const char *key, const char *tbl, const char *rkey,
                         const char *params, uint64_t op_id, gw_err_t *err)
{
    (void)err;
    gw_pgs_t *s = ud;
    if (s->nlk == s->cap_lk) {
        s->cap_lk = s->cap_lk ? s->cap_lk * 2 : 256;
        s->lk = gw_xrealloc(s->lk, s->cap_lk * sizeof(*s->lk));
    }
    s->lk[s->nlk++] = (pgs_lookup_t){.key = gw_xstrdup(key),
                                     .tbl = gw_xstrdup(tbl),
                                     .rkey = gw_xstrdup(rkey),
                                     .params = gw_xstrdup(params),
                                     .from_op = op_id};
    return 0;
}

static int bucket_create(void *ud, const char *name, int64_t *id, gw_err_t *err)
{
    (void)name;
    gw_pgs_t *s = ud;
    if (s->nids == 0) {
        PGresult *res = gw__pgs_exec(s, PS_BUCKET_IDS, 0, NULL, NULL, NULL, 0, err);
        if (res == NULL) return GW_EPG;
        /* handed out last first: keep them in ascending order for the by-id array */
        for (int i = PQntuples(res) - 1; i >= 0 && s->nids < 64; i--)
            s->ids[s->nids++] = gw__pgs_get_i64(res, i, 0);
        PQclear(res);
        if (s->nids == 0) return gw_err_set(err, GW_EPG, "storage", "no bucket id");
    }
    *id = s->ids[--s->nids];
    return 0;
}

int gw__pgs_chunk_insert(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                         uint32_t checksum, const gw_buf_t *ops, int64_t commit_us, uint64_t lsn,
                         gw_err_t *err)
{
    gw_pgs_t *s = ud;
    gw__pgs_elem_i64(&s->chunks[0], bucket_id);
    gw__pgs_elem_i64(&s->chunks[1], (int64_t)first);
    gw__pgs_elem_i64(&s->chunks[2], (int64_t)last);
    gw__pgs_elem_i64(&s->chunks[3], (int64_t)n);
    gw__pgs_elem_i64(&s->chunks[4], (int64_t)checksum);
    gw__pgs_elem_bytes(&s->chunks[5], ops->data, ops->len);
    if (commit_us != 0)
        gw__pgs_elem_i64(&s->chunks[6], commit_us);
    else
        gw__pgs_elem_null(&s->chunks[6]);
    if (lsn != 0)
        gw__pgs_elem_i64(&s->chunks[7], (int64_t)lsn);
    else
        gw__pgs_elem_null(&s->chunks[7]);
    s->nchunks++;
    return s->chunks[5].len >= CHUNK_BATCH_BYTES ? gw__pgs_flush_chunks(s, err) : 0;
}

static void filter_rebuild(void *ud, uint64_t rows)
{
    gw_pgs_t *s = ud;
    if (!gw_writer_filter_reset(&s->w, rows)) return;
    char lo[48], hi[48];
    gw__pgs_ns_range(s->w.version, lo, hi, sizeof(lo));
    char from[16];
    snprintf(from, sizeof(from), "%d", (int)strlen(s->w.version) + 1);
    const char *pv[3] = {lo, hi, from};
    gw_buf_t sql = GW_BUF_INIT;
    gw_buf_printf(&sql,
                  "SELECT substr(tbl, $3::int), key FROM %s.rows WHERE tbl >= $1 AND "
                  "tbl < $2",
                  s->schema_q);
    PGresult *res = PQexecParams(s->conn, sql.data, 3, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        gw_writer_filter_off(&s->w); /* always safe */
    } else {
        for (int i = 0; i < PQntuples(res); i++)
            gw_writer_filter_add(&s->w, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    }
    PQclear(res);
}

void gw__pgs_filter_build(gw_pgs_t *s)
{
    filter_rebuild(s, atomic_load(&s->w.n_rows));
}

const gw_writer_io_t gw__pgs_writer_io = {
    .row_load = row_load,
    .row_store = row_store,
    .row_delete = row_delete,
    .lookups_close = lookups_close,
    .lookup_insert = lookup_insert,
    .bucket_create = bucket_create,
    .chunk_insert = gw__pgs_chunk_insert,
    .filter_rebuild = filter_rebuild,
};

/* ---- commit ---- */

/* The commit statement's parameters: chunks, dirty buckets, state, notification. */
typedef struct commit_params {
    gw_buf_t arr[19], be[9], se[2];
    const char *values[23];
    int lengths[23], formats[23];
    char last_op[24];
} commit_params_t;

enum { COMMIT_PARAMS = 23 };

static void commit_params_free(commit_params_t *p)
{
    for (int i = 0; i < 19; i++)
        gw_buf_free(&p->arr[i]);
    for (int i = 0; i < 9; i++)
        gw_buf_free(&p->be[i]);
    for (int i = 0; i < 2; i++)
        gw_buf_free(&p->se[i]);
}

/* Fill p: the waiting chunks, the given buckets' totals and state pairs; channel and payload
 * (NULL: no notification), the names that did not fit in it (NULL: none) for checkpoint last_op. */
static void commit_params(gw_pgs_t *s, commit_params_t *p, gw_wbucket_t **buckets, size_t nb,
                          const char *const *state, size_t ns, const char *payload,
                          const char *body, uint64_t last_op)
{
    memset(p, 0, sizeof(*p));
    static const uint32_t coid[6] = {OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_INT8, OID_BYTEA};
    for (int i = 0; i < 6; i++)
        gw__pgs_array(&p->arr[i], coid[i], s->nchunks, &s->chunks[i]);
    /* new buckets are inserted, the others updated */
    size_t nnew = 0, nold = 0;
    for (size_t i = 0; i < nb; i++) {
        if (buckets[i]->is_new) {
            gw__pgs_elem_i64(&p->be[0], buckets[i]->id);
            gw__pgs_elem_bytes(&p->be[1], buckets[i]->name, strlen(buckets[i]->name));
            gw__pgs_elem_i64(&p->be[2], buckets[i]->checksum);
            gw__pgs_elem_i64(&p->be[3], (int64_t)buckets[i]->count);
            gw__pgs_elem_i64(&p->be[4], (int64_t)buckets[i]->last_op);
            nnew++;
        } else {
            gw__pgs_elem_i64(&p->be[5], buckets[i]->id);
            gw__pgs_elem_i64(&p->be[6], buckets[i]->checksum);
            gw__pgs_elem_i64(&p->be[7], (int64_t)buckets[i]->count);
            gw__pgs_elem_i64(&p->be[8], (int64_t)buckets[i]->last_op);
            nold++;
        }
    }
    static const uint32_t boid[5] = {OID_INT8, OID_TEXT, OID_INT8, OID_INT8, OID_INT8};
    for (int i = 0; i < 5; i++)
        gw__pgs_array(&p->arr[6 + i], boid[i], nnew, &p->be[i]);
    for (int i = 0; i < 4; i++)
        gw__pgs_array(&p->arr[13 + i], OID_INT8, nold, &p->be[5 + i]);
    for (size_t i = 0; i < ns; i++) {
        gw__pgs_elem_bytes(&p->se[0], state[2 * i], strlen(state[2 * i]));
        gw__pgs_elem_bytes(&p->se[1], state[2 * i + 1], strlen(state[2 * i + 1]));
    }
    gw__pgs_array(&p->arr[11], OID_TEXT, ns, &p->se[0]);
    gw__pgs_array(&p->arr[12], OID_TEXT, ns, &p->se[1]);
    for (int i = 0; i < 13; i++) {
        p->values[i] = p->arr[i].data;
        p->lengths[i] = (int)p->arr[i].len;
        p->formats[i] = 1;
    }
    p->values[13] = s->channel_raw;
    p->values[14] = payload;
    p->values[15] = body;
    snprintf(p->last_op, sizeof(p->last_op), "%llu", (unsigned long long)last_op);
    p->values[16] = p->last_op;
    for (int i = 0; i < 4; i++) {
        p->values[17 + i] = p->arr[13 + i].data;
        p->lengths[17 + i] = (int)p->arr[13 + i].len;
        p->formats[17 + i] = 1;
    }
    /* the chunks' commits: $22, $23 */
    for (int i = 0; i < 2; i++) {
        gw__pgs_array(&p->arr[17 + i], OID_INT8, s->nchunks, &s->chunks[6 + i]);
        p->values[21 + i] = p->arr[17 + i].data;
        p->lengths[21 + i] = (int)p->arr[17 + i].len;
        p->formats[21 + i] = 1;
    }
}

int gw__pgs_flush_chunks(gw_pgs_t *s, gw_err_t *err)
{
    if (s->nchunks == 0) return 0;
    commit_params_t p;
    commit_params(s, &p, NULL, 0, NULL, 0, NULL, NULL, 0);
    PGresult *res =
        gw__pgs_exec(s, PS_COMMIT, COMMIT_PARAMS, p.values, p.lengths, p.formats, 0, err);
    int rc = res != NULL ? 0 : GW_EPG;
    PQclear(res);
    commit_params_free(&p);
    for (int i = 0; i < 8; i++)
        gw_buf_reset(&s->chunks[i]);
    s->nchunks = 0;
    return rc;
}

/* Send the statements in a pipeline (one round trip): prepared statement ps with params, then
 * "COMMIT". 0, or GW_EPG with the first error. */
static int commit_pipelined(gw_pgs_t *s, const commit_params_t *p, gw_err_t *err)
{
    if (PQtransactionStatus(s->conn) != PQTRANS_INTRANS)
        return gw_err_set(err, GW_EPG, "storage",
                          "could not commit to storage: the transaction is not open (an earlier "
                          "statement failed or the connection broke)");
    if (PQenterPipelineMode(s->conn) != 1) return gw__pgs_err(s->conn, err, "commit to storage");
    char name[32];
    snprintf(name, sizeof(name), "ferry_w%d", PS_COMMIT);
    int sent = PQsendQueryPrepared(s->conn, name, COMMIT_PARAMS, p->values, p->lengths, p->formats,
                                   0) == 1 &&
               PQsendQueryParams(s->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
               PQpipelineSync(s->conn) == 1;
    int rc = sent ? 0 : gw__pgs_err(s->conn, err, "commit to storage");
    /* every result, then the sync point */
    for (int done = 0; sent && !done;) {
        PGresult *res = PQgetResult(s->conn);
        if (res == NULL) continue; /* the end of one query's results */
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            done = 1;
        } else if (st == PGRES_COMMAND_OK && strcmp(PQcmdStatus(res), "ROLLBACK") == 0 && rc == 0) {
            /* COMMIT of a transaction an earlier statement aborted: nothing was stored, and
             * taking it for a commit would acknowledge changes storage does not hold */
            rc = gw_err_set(err, GW_EPG, "storage",
                            "could not commit to storage: the transaction had been aborted");
        } else if ((st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) && rc == 0) {
            rc = gw_err_set(err, GW_EPG, "storage", "could not commit to storage: %s",
                            PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                         : "the pipeline was aborted");
        }
        PQclear(res);
        if (PQstatus(s->conn) != CONNECTION_OK) break;
    }
    if (PQexitPipelineMode(s->conn) != 1 && rc == 0)
        rc = gw__pgs_err(s->conn, err, "commit to storage");
    return rc;
}

/* ---- transactions ---- */

int gw__pgs_begin(gw_storage_t *st, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (s->in_txn) return 0;
    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK) {
        gw__pgs_lost_lead(s, "the storage connection broke");
        return gw_err_set(err, GW_EUNAVAIL, "storage", "lost the connection to the storage");
    }
    if (!s->leader || s->follower) gw__pgs_follow(s); /* a builder follows its process's leader */
    if (simple(s, "BEGIN", err) != 0) {
        if (PQstatus(s->conn) != CONNECTION_OK)
            gw__pgs_lost_lead(s, "the storage connection broke");
        return GW_EUNAVAIL;
    }
    s->in_txn = 1;
    s->txn_repl = 0;
    if (!s->leader) return 0; /* write checkpoints only */
    PGresult *res = gw__pgs_exec(s, PS_BEGIN, 0, NULL, NULL, NULL, 0, err);
    if (res == NULL) {
        gw__pgs_rollback(st);
        return GW_EUNAVAIL;
    }
    uint64_t next = 0, epoch = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        if (strcmp(PQgetvalue(res, i, 0), "next_op") == 0)
            next = strtoull(PQgetvalue(res, i, 1), NULL, 10);
        else
            epoch = strtoull(PQgetvalue(res, i, 1), NULL, 10);
    }
    PQclear(res);
    if (epoch != s->epoch) {
        /* fenced: another instance took over (it incremented the epoch under this row lock) */
        uint64_t mine = s->epoch;
        gw__pgs_rollback(st);
        gw__pgs_lost_lead(s, "another instance took the lead");
        return gw_err_set(err, GW_EUNAVAIL, "storage",
                          "another instance leads the storage now (epoch %llu; this one led "
                          "epoch %llu)",
                          (unsigned long long)epoch, (unsigned long long)mine);
    }
    s->txn_repl = 1;
    gw_writer_begin(&s->w, next);
    return 0;
}

int gw__pgs_commit(gw_storage_t *st, uint64_t lsn, int wait, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "commit without a transaction");
    if (!s->txn_repl) { /* write checkpoints only: their notifications go with the commit */
        int rc = simple(s, "COMMIT", err);
        s->in_txn = 0;
        gw__pgs_clear_txn(s);
        return rc != 0 ? GW_EUNAVAIL : 0;
    }
    gw_writer_t *w = &s->w;
    gw_writer_stamp(w, lsn < w->lsn ? w->lsn : lsn);
    int rc = gw_writer_flush_pending(w, err);
    if (rc == 0) rc = gw__pgs_flush_rows(s, err);
    if (rc != 0) {
        gw__pgs_rollback(st);
        return rc;
    }
    uint64_t last_op = w->txn_last_op;
    if (lsn < w->lsn) lsn = w->lsn;
    gw_wbucket_t **dirty = gw_xmalloc((w->ntouched + 1) * sizeof(*dirty));
    size_t nd = 0;
    for (size_t i = 0; i < w->ntouched; i++) {
        gw_wbucket_t *b = gw_writer_bucket(w, w->touched[i]);
        if (b != NULL && b->dirty) dirty[nd++] = b;
    }
    char next[24], last[24], lsnv[24], klast[64], klsn[64];
    snprintf(next, sizeof(next), "%llu", (unsigned long long)w->next_op);
    snprintf(last, sizeof(last), "%llu", (unsigned long long)last_op);
    snprintf(lsnv, sizeof(lsnv), "%llu", (unsigned long long)lsn);
    const char *state[6] = {"next_op",
                            next,
                            state_key(w->version, "last_op", klast, sizeof(klast)),
                            last,
                            state_key(w->version, "lsn", klsn, sizeof(klsn)),
                            lsnv};
    gw_storage_cp_t cp = {.last_op = last_op, .lsn = lsn, .consistent = w->consistent};
    snprintf(cp.ns, sizeof(cp.ns), "%s", w->version);
    gw_buf_t payload = GW_BUF_INIT, body = GW_BUF_INIT;
    int serving = gw_publisher_serving(s->publisher);
    if (serving) gw__pgs_notify_payload(s, &cp, &payload, &body);
    commit_params_t p;
    commit_params(s, &p, dirty, nd, state, 3, serving ? payload.data : NULL,
                  body.len > 0 ? body.data : NULL, last_op);
    rc = commit_pipelined(s, &p, err);
    commit_params_free(&p);
    gw_buf_free(&payload);
    gw_buf_free(&body);
    s->in_txn = 0;
    if (rc != 0) {
        free(dirty);
        if (PQstatus(s->conn) != CONNECTION_OK) {
            gw__pgs_lost_lead(s, "the storage connection broke during a commit");
            rc = GW_EUNAVAIL;
        } else {
            simple(s, "ROLLBACK", NULL);
        }
        gw__pgs_clear_txn(s);
        gw_writer_discard_pending(w);
        /* the cache as storage has it; when it cannot be read, this writer lets go of the lead
         * (taking it again reloads everything) rather than go on with a partial cache */
        gw_err_t lerr;
        if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK ||
            gw__pgs_load_cache(s, &lerr) != 0)
            gw__pgs_lost_lead(s, "the storage cache could not be reloaded after a failed commit");
        return rc;
    }
    s->last_rt_ms = gw__pgs_now_ms();
    for (size_t i = 0; i < nd; i++)
        dirty[i]->dirty = dirty[i]->is_new = 0;
    free(dirty);
    w->last_op = last_op;
    w->lsn = lsn;
    gw__pgs_clear_txn(s);
    /* durable: the session commits with synchronous_commit = on */
    gw__pgs_gate_commit(s, &cp, w->touched, w->ntouched, (const char *const *)w->lookup_keys,
                        w->nlookup_keys, GW_PGS_OWN | (wait ? GW_PGS_WAIT : 0));
    return 0;
}

void gw__pgs_set_commit_time(gw_storage_t *st, int64_t unix_us)
{
    gw_writer_set_commit_time(&((gw_pgs_t *)st)->w, unix_us);
}

void gw__pgs_rollback(gw_storage_t *st)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn) return;
    s->in_txn = 0;
    if (s->conn != NULL && PQstatus(s->conn) == CONNECTION_OK) simple(s, "ROLLBACK", NULL);
    gw__pgs_clear_txn(s);
    gw_writer_discard_pending(&s->w);
    s->nids = 0; /* ids handed out in the transaction may be cached in dropped buckets */
    gw_err_t err;
    if (s->txn_repl && (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK ||
                        gw__pgs_load_cache(s, &err) != 0)) {
        gw_error("storage", "could not reload the storage cache after a rollback", NULL);
        gw__pgs_lost_lead(s, "the storage cache could not be reloaded after a rollback");
    }
}

/* ---- the contract's row operations ---- */

/* Fail when a transaction of replicated data is not open (this writer does not lead). */
static int need_repl(gw_pgs_t *s, gw_err_t *err)
{
    if (s->in_txn && s->txn_repl) return 0;
    return gw_err_set(err, GW_EUNAVAIL, "storage",
                      "this instance does not lead the storage: it writes no replicated data");
}

int gw__pgs_prefetch(gw_storage_t *st, const gw_row_ref_t *refs, size_t n, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (need_repl(s, err) != 0) return GW_EUNAVAIL;
    gw_buf_t te = GW_BUF_INIT, ke = GW_BUF_INIT, tn = GW_BUF_INIT;
    size_t nq = 0;
    for (size_t i = 0; i < n; i++) {
        const char *tbl = gw_writer_ns_table(&s->w, refs[i].table);
        if (row_get(s, tbl, refs[i].key) != NULL) continue;
        pgs_row_t *r = row_put(s, tbl, refs[i].key); /* absent unless the query finds it */
        (void)r;
        if (!gw_writer_maybe_stored(&s->w, &refs[i])) continue;
        gw__pgs_elem_bytes(&te, tbl, strlen(tbl));
        gw__pgs_elem_bytes(&ke, refs[i].key, strlen(refs[i].key));
        nq++;
    }
    int rc = 0;
    if (nq > 0) {
        gw_buf_t a1 = GW_BUF_INIT, a2 = GW_BUF_INIT;
        gw__pgs_array(&a1, OID_TEXT, nq, &te);
        gw__pgs_array(&a2, OID_TEXT, nq, &ke);
        const char *values[2] = {a1.data, a2.data};
        int lengths[2] = {(int)a1.len, (int)a2.len}, formats[2] = {1, 1};
        PGresult *res = gw__pgs_exec(s, PS_ROWS_GET, 2, values, lengths, formats, 1, err);
        if (res == NULL) {
            rc = GW_EPG;
        } else {
            for (int i = 0; i < PQntuples(res); i++) {
                gw_buf_reset(&tn);
                gw_buf_append(&tn, PQgetvalue(res, i, 0), (size_t)PQgetlength(res, i, 0));
                gw_buf_append(&tn, "", 1);
                char *key = gw_xstrndup_len(PQgetvalue(res, i, 1), (size_t)PQgetlength(res, i, 1));
                row_fill(row_put(s, tn.data, key), res, i, 2);
                free(key);
            }
            PQclear(res);
        }
        gw_buf_free(&a1);
        gw_buf_free(&a2);
    }
    gw_buf_free(&te);
    gw_buf_free(&ke);
    gw_buf_free(&tn);
    return rc;
}

int gw__pgs_put_row(gw_storage_t *st, const gw_row_ref_t *ref, const rules_ops_t *ops,
                    const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                    size_t copy_len, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (need_repl(s, err) != 0) return GW_EUNAVAIL;
    return gw_writer_put_row(&s->w, ref, ops, tails, lookups, copy, copy_len, err);
}

int gw__pgs_delete_row(gw_storage_t *st, const gw_row_ref_t *ref, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (need_repl(s, err) != 0) return GW_EUNAVAIL;
    return gw_writer_delete_row(&s->w, ref, err);
}

int gw__pgs_truncate(gw_storage_t *st, const char *table, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (need_repl(s, err) != 0) return GW_EUNAVAIL;
    for (;;) {
        /* the storage is current once the transaction's rows are written */
        if (gw__pgs_flush_rows(s, err) != 0) return GW_EPG;
        char *tbl = gw_xstrdup(gw_writer_ns_table(&s->w, table));
        const char *pv[1] = {tbl};
        PGresult *res = gw__pgs_exec(s, PS_ROWS_OF_TBL, 1, pv, NULL, NULL, 0, err);
        free(tbl);
        if (res == NULL) return GW_EPG;
        int n = PQntuples(res), rc = 0;
        for (int i = 0; i < n && rc == 0; i++) {
            gw_row_ref_t ref = {.table = table, .key = PQgetvalue(res, i, 0)};
            rc = gw_writer_delete_row(&s->w, &ref, err);
        }
        PQclear(res);
        if (rc != 0) return rc;
        if (n == 0) return 0;
    }
}

int gw__pgs_row_copy(gw_storage_t *st, const gw_row_ref_t *ref, void **out, size_t *len)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    gw_buf_t members = GW_BUF_INIT, lookups = GW_BUF_INIT;
    int same;
    gw_err_t err;
    const char *tbl = gw_writer_ns_table(&s->w, ref->table);
    int found = row_load(s, tbl, ref->key, &members, &lookups, NULL, 0, &same, &err);
    gw_buf_free(&members);
    gw_buf_free(&lookups);
    if (found <= 0) return 0;
    pgs_row_t *r = row_get(s, tbl, ref->key);
    if (r == NULL || r->copy == NULL) return 0;
    *out = gw_xmalloc(r->copy_len + 1);
    memcpy(*out, r->copy, r->copy_len);
    *len = r->copy_len;
    return 1;
}

/* Clients come and go: write checkpoints not written for opts->wcp_retention seconds are
 * deleted, in the open transaction, at most once an hour (as in the SQLite backend). 0 or GW_EPG.
 */
static int wcp_prune(gw_pgs_t *s, int64_t now, gw_err_t *err)
{
    long keep = s->base.opts != NULL ? s->base.opts->wcp_retention : 0;
    char before[24];
    if (keep > 0 && now >= s->wcp_next_prune) {
        snprintf(before, sizeof(before), "%lld", (long long)(now - keep));
        const char *bv[1] = {before};
        PGresult *pr = gw__pgs_exec(s, PS_WCP_PRUNE, 1, bv, NULL, NULL, 0, err);
        if (pr == NULL) return GW_EPG;
        long gone = strtol(PQcmdTuples(pr), NULL, 10);
        PQclear(pr);
        if (gone > 0)
            gw_info("storage", "forgot unused write checkpoints", "count=%ld older_than_s=%ld",
                    gone, keep);
        s->wcp_next_prune = now + (keep < 3600 ? keep : 3600);
    }
    return 0;
}

int gw__pgs_request_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                               uint64_t requested, uint64_t *stored, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "outside a transaction");
    int64_t now = (int64_t)time(NULL);
    if (wcp_prune(s, now, err) != 0) return GW_EPG;
    char seen[24], l[24], req[24];
    snprintf(seen, sizeof(seen), "%lld", (long long)now);
    snprintf(l, sizeof(l), "%llu", (unsigned long long)lsn);
    snprintf(req, sizeof(req), "%llu", (unsigned long long)requested);
    gw_buf_t payload = GW_BUF_INIT;
    gw__pgs_notify_wcp(s, user_key, lsn, &payload);
    const char *pv[6] = {user_key, l, s->channel_raw, payload.data, seen, req};
    PGresult *res = gw__pgs_exec(s, PS_WCP_REQUEST, 6, pv, NULL, NULL, 0, err);
    gw_buf_free(&payload);
    if (res == NULL) return GW_EPG;
    *stored = (uint64_t)gw__pgs_get_i64(res, 0, 0);
    int applied = gw__pgs_get_i64(res, 0, 1) > 0;
    PQclear(res);
    if (applied) gw_publisher_add_wcp(s->publisher, user_key, lsn);
    return 0;
}

int gw__pgs_write_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                             uint64_t *counter, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "outside a transaction");
    int64_t now = (int64_t)time(NULL);
    if (wcp_prune(s, now, err) != 0) return GW_EPG;
    char seen[24], l[24];
    snprintf(seen, sizeof(seen), "%lld", (long long)now);
    snprintf(l, sizeof(l), "%llu", (unsigned long long)lsn);
    gw_buf_t payload = GW_BUF_INIT;
    gw__pgs_notify_wcp(s, user_key, lsn, &payload);
    const char *pv[5] = {user_key, l, s->channel_raw, payload.data, seen};
    PGresult *res = gw__pgs_exec(s, PS_WCP_UPSERT, 5, pv, NULL, NULL, 0, err);
    gw_buf_free(&payload);
    if (res == NULL) return GW_EPG;
    *counter = (uint64_t)gw__pgs_get_i64(res, 0, 0);
    PQclear(res);
    gw_publisher_add_wcp(s->publisher, user_key, lsn);
    return 0;
}
