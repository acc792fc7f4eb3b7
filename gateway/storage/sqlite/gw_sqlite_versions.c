/* gw_sqlite_versions.c -- the SQLite backend's rule-version namespaces, version drops, compaction
 *
 * Namespaces: a writer works in one rule version's namespace ("2#"): its buckets, rows, lookups
 * and state keys carry the prefix, so two writers (the serving version's and a builder's) share
 * one file without touching each other's data. A retired version is dropped with range deletes
 * over its prefix. Compaction (powersync-protocol §3.4) rewrites the chunks of the writer's own
 * buckets: superseded PUT/REMOVEs become MOVEs, a leading run of REMOVE/MOVE/CLEAR ops one CLEAR;
 * checksums stay, counts shrink.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "storage/gw_compact.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- namespaces ---- */

int gw__sqlite_set_version(gw_storage_t *st, const char *version, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    char ns[40];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->w.version) == 0) return 0;
    if (s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version change inside a transaction");
    gw_writer_set_version(&s->w, version);
    gw_writer_filter_off(&s->w);
    if (gw__sqlite_load_cache(s, err) != 0) return GW_EIO;
    gw__sqlite_filter_build(s, atomic_load(&s->w.n_rows));
    return 0;
}

const char *gw__sqlite_version(const gw_storage_t *st)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    return s->w.version;
}

int gw__sqlite_advance_checkpoint(gw_storage_t *st, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "checkpoint advance outside a transaction");
    if (s->w.next_op - 1 > s->w.txn_last_op) s->w.txn_last_op = s->w.next_op - 1;
    return 0;
}

/* Run sql (binding ?1/?2 to the text range [lo, hi)) and add the rows it changed to *n. */
static int exec_range(gw_sqlite_t *s, const char *sql, const char *lo, const char *hi, uint64_t *n,
                      gw_err_t *err)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK)
        return gw__sqlite_err(s->db, err, "drop a rule version");
    sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "drop a rule version");
    sqlite3_finalize(q);
    if (rc == 0 && n != NULL) *n += (uint64_t)sqlite3_changes(s->db);
    return rc;
}

int gw__sqlite_drop_version(gw_storage_t *st, const char *version, uint64_t *dropped, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    *dropped = 0;
    char ns[40], lo[48], hi[48];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->w.version) == 0 || version[0] == '\0')
        return gw_err_set(err, GW_EINVAL, "storage", "cannot drop the writer's own version");
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version drop outside a transaction");
    if (gw_writer_flush_pending(&s->w, err) != 0) return GW_EIO;
    gw_writer_ns_range(ns, lo, hi, sizeof(lo));
    int rc = exec_range(s,
                        "DELETE FROM op_chunks WHERE bucket_id IN (SELECT id FROM buckets WHERE "
                        "name >= ?1 AND name < ?2)",
                        lo, hi, NULL, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM buckets WHERE name >= ?1 AND name < ?2", lo, hi, dropped,
                        err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM rows WHERE tbl >= ?1 AND tbl < ?2", lo, hi, NULL, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM lookups WHERE key >= ?1 AND key < ?2", lo, hi, NULL, err);
    if (rc == 0)
        rc = exec_range(s, "DELETE FROM state WHERE k >= ?1 AND k < ?2", lo, hi, NULL, err);
    if (rc != 0) return rc;
    /* forget the dropped buckets this writer had cached (totals count its own version only) */
    gw_writer_forget_version(&s->w, ns);
    return 0;
}

/* ---- compaction (powersync-protocol §3.4; the algorithm is storage/gw_compact.c) ---- */

/* Statements of one compaction. */
enum { CQ_IDS, CQ_GET, CQ_SET, CQ_DEL, CQ_COUNT };

typedef struct compact_ctx {
    gw_sqlite_t *s;
    sqlite3_stmt *q[CQ_COUNT];
} compact_ctx_t;

static int chunk_ids(void *ud, int64_t bucket_id, uint64_t upto, int64_t **ids, size_t *n,
                     gw_err_t *err)
{
    (void)err;
    compact_ctx_t *c = ud;
    sqlite3_stmt *q = c->q[CQ_IDS];
    int64_t *v = NULL;
    size_t cap = 0;
    *n = 0;
    sqlite3_bind_int64(q, 1, bucket_id);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)upto);
    while (sqlite3_step(q) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = gw_xrealloc(v, cap * sizeof(*v));
        }
        v[(*n)++] = sqlite3_column_int64(q, 0);
    }
    sqlite3_reset(q);
    *ids = v;
    return 0;
}

static int chunk_load(void *ud, int64_t id, gw_buf_t *out, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    sqlite3_stmt *get = c->q[CQ_GET];
    gw_buf_reset(out);
    sqlite3_bind_int64(get, 1, id);
    int rc =
        sqlite3_step(get) == SQLITE_ROW ? 0 : gw__sqlite_err(c->s->db, err, "read ops to compact");
    if (rc == 0)
        gw_buf_append(out, sqlite3_column_blob(get, 0), (size_t)sqlite3_column_bytes(get, 0));
    sqlite3_reset(get);
    return rc;
}

static int chunk_store(void *ud, int64_t id, const gw_buf_t *ops, uint64_t first, uint64_t n,
                       uint32_t sum, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    sqlite3_stmt *set = c->q[CQ_SET];
    sqlite3_bind_int64(set, 1, id);
    sqlite3_bind_blob(set, 2, ops->data, (int)ops->len, SQLITE_STATIC);
    sqlite3_bind_int64(set, 3, (sqlite3_int64)first);
    sqlite3_bind_int64(set, 4, (sqlite3_int64)n);
    sqlite3_bind_int64(set, 5, sum);
    int rc = sqlite3_step(set) == SQLITE_DONE
                 ? 0
                 : gw__sqlite_err(c->s->db, err, "rewrite compacted ops");
    sqlite3_reset(set);
    return rc;
}

static int chunk_delete(void *ud, int64_t id, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    sqlite3_bind_int64(c->q[CQ_DEL], 1, id);
    int rc = sqlite3_step(c->q[CQ_DEL]) == SQLITE_DONE
                 ? 0
                 : gw__sqlite_err(c->s->db, err, "delete cleared ops");
    sqlite3_reset(c->q[CQ_DEL]);
    return rc;
}

static int chunk_insert(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                        uint32_t sum, const gw_buf_t *ops, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    /* a CLEAR op of its own: no commit of the source */
    return gw__sqlite_writer_io.chunk_insert(c->s, bucket_id, first, last, n, sum, ops, 0, 0, err);
}

static int bucket_flush(void *ud, gw_wbucket_t *b, gw_err_t *err)
{
    compact_ctx_t *c = ud;
    return gw__sqlite_bucket_flush(c->s, b, err);
}

static const gw_compact_io_t compact_io = {
    .chunk_ids = chunk_ids,
    .chunk_load = chunk_load,
    .chunk_store = chunk_store,
    .chunk_delete = chunk_delete,
    .chunk_insert = chunk_insert,
    .bucket_flush = bucket_flush,
};

int gw__sqlite_compact(gw_storage_t *st, gw_storage_compact_stats_t *out, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "compaction outside a transaction");
    if (gw_writer_flush_pending(&s->w, err) != 0) return GW_EIO;
    static const char *const sql[CQ_COUNT] = {
        [CQ_IDS] = "SELECT id FROM op_chunks WHERE bucket_id = ?1 AND last_op <= ?2 ORDER BY "
                   "last_op",
        [CQ_GET] = "SELECT ops FROM op_chunks WHERE id = ?1",
        [CQ_SET] = "UPDATE op_chunks SET ops = ?2, first_op = ?3, n = ?4, checksum = ?5 WHERE "
                   "id = ?1",
        [CQ_DEL] = "DELETE FROM op_chunks WHERE id = ?1",
    };
    compact_ctx_t c = {.s = s};
    gw_storage_compact_stats_t cs = {0};
    int rc = 0;
    for (int i = 0; i < CQ_COUNT && rc == 0; i++)
        if (sqlite3_prepare_v2(s->db, sql[i], -1, &c.q[i], NULL) != SQLITE_OK)
            rc = gw__sqlite_err(s->db, err, "prepare compaction");
    if (rc == 0) rc = gw_compact_writer(&s->w, &compact_io, &c, &cs, err);
    for (int i = 0; i < CQ_COUNT; i++)
        sqlite3_finalize(c.q[i]);
    if (rc == 0 && (cs.moved > 0 || cs.cleared > 0))
        rc = gw__sqlite_state_set_u64(s, "compact_target", cs.target, err);
    if (out != NULL) *out = cs;
    return rc;
}
