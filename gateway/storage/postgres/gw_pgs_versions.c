/* gw_pgs_versions.c -- the Postgres backend's rule-version namespaces, version drops, compaction
 *
 * As in the SQLite layout (storage/sqlite/gw_sqlite_versions.c): a writer works in one rule
 * version's namespace ("2#"), a retired version is dropped with range deletes over its prefix,
 * and compaction rewrites the chunks of the writer's own buckets through storage/gw_compact.c.
 * Here a chunk is named by its bucket and its last op id (the primary key); compaction works on
 * one bucket at a time, so the chunk id it passes around is the last op id.
 */
#include "storage/postgres/gw_pgs_int.h"
#include "storage/gw_compact.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { OID_INT8 = 20, OID_BYTEA = 17 };

/* ---- namespaces ---- */

int gw__pgs_set_version(gw_storage_t *st, const char *version, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    char ns[40];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->w.version) == 0) return 0;
    if (s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version change inside a transaction");
    gw_writer_set_version(&s->w, version);
    gw_writer_filter_off(&s->w);
    if (s->conn == NULL || PQstatus(s->conn) != CONNECTION_OK)
        return gw_err_set(err, GW_EUNAVAIL, "storage", "lost the connection to the storage");
    if (gw__pgs_load_cache(s, err) != 0) return GW_EIO;
    if (s->leader) gw__pgs_filter_build(s); /* a standby's is built when it takes the lead */
    return 0;
}

const char *gw__pgs_version(const gw_storage_t *st)
{
    return ((const gw_pgs_t *)st)->w.version;
}

int gw__pgs_advance_checkpoint(gw_storage_t *st, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn || !s->txn_repl)
        return gw_err_set(err, GW_EINVAL, "storage", "checkpoint advance outside a transaction");
    if (s->w.next_op - 1 > s->w.txn_last_op) s->w.txn_last_op = s->w.next_op - 1;
    return 0;
}

/* Run sql with $1/$2 the text range [lo, hi); add the rows it changed to *n. */
static int exec_range(gw_pgs_t *s, const char *sql, const char *lo, const char *hi, uint64_t *n,
                      gw_err_t *err)
{
    gw_buf_t q = GW_BUF_INIT;
    gw_buf_printf(&q, sql, s->schema_q);
    const char *pv[2] = {lo, hi};
    PGresult *res = PQexecParams(s->conn, q.data, 2, NULL, pv, NULL, NULL, 0);
    gw_buf_free(&q);
    int rc = PQresultStatus(res) == PGRES_COMMAND_OK
                 ? 0
                 : gw__pgs_err(s->conn, err, "drop a rule version");
    if (rc == 0 && n != NULL) *n += strtoull(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return rc;
}

int gw__pgs_drop_version(gw_storage_t *st, const char *version, uint64_t *dropped, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    *dropped = 0;
    char ns[40], lo[48], hi[48];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->w.version) == 0 || version[0] == '\0')
        return gw_err_set(err, GW_EINVAL, "storage", "cannot drop the writer's own version");
    if (!s->in_txn || !s->txn_repl)
        return gw_err_set(err, GW_EINVAL, "storage", "version drop outside a transaction");
    if (gw_writer_flush_pending(&s->w, err) != 0 || gw__pgs_flush_chunks(s, err) != 0 ||
        gw__pgs_flush_rows(s, err) != 0)
        return GW_EPG;
    gw__pgs_ns_range(ns, lo, hi, sizeof(lo));
    int rc =
        exec_range(s,
                   "DELETE FROM %1$s.op_chunks WHERE bucket_id IN (SELECT id FROM %1$s.buckets "
                   "WHERE name >= $1 AND name < $2)",
                   lo, hi, NULL, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM %1$s.buckets WHERE name >= $1 AND name < $2", lo, hi,
                        dropped, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM %1$s.rows WHERE tbl >= $1 AND tbl < $2", lo, hi, NULL, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM %1$s.lookups WHERE key >= $1 AND key < $2", lo, hi, NULL,
                        err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM %1$s.state WHERE k >= $1 AND k < $2", lo, hi, NULL, err);
    if (rc != 0) return rc;
    gw_writer_forget_version(&s->w, ns);
    return 0;
}

/* ---- compaction (powersync-protocol §3.4; the algorithm is storage/gw_compact.c) ---- */

typedef struct compact_ctx {
    gw_pgs_t *s;
    int64_t bucket; /* the bucket whose chunk ids (last op ids) were listed last */
} compact_ctx_t;

/* Parameters: the bucket and a chunk's last op id, binary. */
typedef struct key_params {
    char b[8], l[8];
    const char *values[6];
    int lengths[6], formats[6];
} key_params_t;

static void key_params(key_params_t *k, int64_t bucket, int64_t last)
{
    memset(k, 0, sizeof(*k));
    gw__pgs_param_i64(k->b, bucket);
    gw__pgs_param_i64(k->l, last);
    k->values[0] = k->b;
    k->values[1] = k->l;
    k->lengths[0] = k->lengths[1] = 8;
    for (int i = 0; i < 6; i++)
        k->formats[i] = 1;
}

static int chunk_ids(void *ud, int64_t bucket_id, uint64_t upto, int64_t **ids, size_t *n,
                     gw_err_t *err)
{
    compact_ctx_t *c = ud;
    c->bucket = bucket_id;
    key_params_t k;
    key_params(&k, bucket_id, (int64_t)upto);
    PGresult *res = gw__pgs_exec(c->s, PS_CHUNK_IDS, 2, k.values, k.lengths, k.formats, 1, err);
    if (res == NULL) return GW_EPG;
    *n = (size_t)PQntuples(res);
    *ids = gw_xmalloc((*n + 1) * sizeof(int64_t));
    for (size_t i = 0; i < *n; i++)
        (*ids)[i] = gw__pgs_get_i64(res, (int)i, 0);
    PQclear(res);
    return 0;
}

static int chunk_load(void *ud, int64_t id, gw_buf_t *out, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    gw_buf_reset(out);
    key_params_t k;
    key_params(&k, c->bucket, id);
    PGresult *res = gw__pgs_exec(c->s, PS_CHUNK_GET, 2, k.values, k.lengths, k.formats, 1, err);
    if (res == NULL) return GW_EPG;
    int rc = PQntuples(res) == 1
                 ? 0
                 : gw_err_set(err, GW_EIO, "storage", "a chunk to compact went missing");
    if (rc == 0) gw_buf_append(out, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    PQclear(res);
    return rc;
}

static int chunk_store(void *ud, int64_t id, const gw_buf_t *ops, uint64_t first, uint64_t n,
                       uint32_t sum, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    key_params_t k;
    key_params(&k, c->bucket, id);
    char f[8], nn[8], cs[8];
    gw__pgs_param_i64(f, (int64_t)first);
    gw__pgs_param_i64(nn, (int64_t)n);
    gw__pgs_param_i64(cs, (int64_t)sum);
    k.values[2] = ops->data != NULL ? ops->data : "";
    k.lengths[2] = (int)ops->len;
    k.values[3] = f;
    k.values[4] = nn;
    k.values[5] = cs;
    k.lengths[3] = k.lengths[4] = k.lengths[5] = 8;
    PGresult *res = gw__pgs_exec(c->s, PS_CHUNK_SET, 6, k.values, k.lengths, k.formats, 0, err);
    PQclear(res);
    return res != NULL ? 0 : GW_EPG;
}

static int chunk_delete(void *ud, int64_t id, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    key_params_t k;
    key_params(&k, c->bucket, id);
    PGresult *res = gw__pgs_exec(c->s, PS_CHUNK_DEL, 2, k.values, k.lengths, k.formats, 0, err);
    PQclear(res);
    return res != NULL ? 0 : GW_EPG;
}

static int chunk_insert(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                        uint32_t sum, const gw_buf_t *ops, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    /* a CLEAR op of its own: no commit of the source */
    int rc = gw__pgs_chunk_insert(c->s, bucket_id, first, last, n, sum, ops, 0, 0, err);
    return rc == 0 ? gw__pgs_flush_chunks(c->s, err) : rc;
}

static int bucket_flush(void *ud, gw_wbucket_t *b, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    return gw__pgs_bucket_flush(c->s, b, err);
}

static const gw_compact_io_t compact_io = {
    .chunk_ids = chunk_ids,
    .chunk_load = chunk_load,
    .chunk_store = chunk_store,
    .chunk_delete = chunk_delete,
    .chunk_insert = chunk_insert,
    .bucket_flush = bucket_flush,
};

int gw__pgs_compact(gw_storage_t *st, gw_storage_compact_stats_t *out, gw_err_t *err)
{
    gw_pgs_t *s = (gw_pgs_t *)st;
    if (!s->in_txn || !s->txn_repl)
        return gw_err_set(err, GW_EINVAL, "storage", "compaction outside a transaction");
    if (gw_writer_flush_pending(&s->w, err) != 0 || gw__pgs_flush_chunks(s, err) != 0)
        return GW_EPG;
    compact_ctx_t c = {.s = s, .bucket = -1};
    gw_storage_compact_stats_t cs = {0};
    int rc = gw_compact_writer(&s->w, &compact_io, &c, &cs, err);
    if (rc == 0 && (cs.moved > 0 || cs.cleared > 0))
        rc = gw__pgs_state_set_u64(s, "compact_target", cs.target, err);
    if (out != NULL) *out = cs;
    return rc;
}
