/* gw_sqlite_rows.c -- the SQLite backend's buckets, rows, lookups and write checkpoints
 *
 * The writer's I/O (gw_writer.h: what storing a row means is the same for every backend): a
 * row's state is one row of `rows` (memberships, lookup text, copy), read and written with the
 * prepared statements; lookups close and open with two statements; a bucket is created at its
 * first op (its id is the rowid); chunks are inserted as they are written. Also here: loading the
 * bucket cache, the row filter's build, truncate, row copies and write checkpoints.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the bucket cache ---- */

int gw__sqlite_load_cache(gw_sqlite_t *s, gw_err_t *err)
{
    gw_writer_t *w = &s->w;
    gw_writer_drop_buckets(w);
    atomic_store(&w->n_buckets, 0);
    atomic_store(&w->n_ops, 0);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT id, name, checksum, count, last_op FROM buckets", -1, &q,
                           NULL) != SQLITE_OK)
        return gw__sqlite_err(s->db, err, "read buckets");
    while (sqlite3_step(q) == SQLITE_ROW)
        gw_writer_load_bucket(
            w, sqlite3_column_int64(q, 0), (const char *)sqlite3_column_text(q, 1),
            (uint32_t)sqlite3_column_int64(q, 2), (uint64_t)sqlite3_column_int64(q, 3),
            (uint64_t)sqlite3_column_int64(q, 4));
    sqlite3_finalize(q);
    char lo[48], hi[48];
    gw_writer_ns_range(w->version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM rows WHERE tbl >= ?1 AND tbl < ?2", -1, &q,
                           NULL) != SQLITE_OK)
        return gw__sqlite_err(s->db, err, "count rows");
    sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW)
        atomic_store(&w->n_rows, (uint64_t)sqlite3_column_int64(q, 0));
    sqlite3_finalize(q);
    if (gw_writer_load_state(w, &s->base) != 0)
        return gw__sqlite_err(s->db, err, "read the replication state");
    return 0;
}

/* ---- the row filter ---- */

/* (Re)build the filter from every stored row of the writer's version. Runs inside or outside a
 * transaction (the writer sees its own uncommitted rows). On any error the filter is disabled,
 * which is always safe. */
void gw__sqlite_filter_build(void *ud, uint64_t rows)
{
    gw_sqlite_t *s = ud;
    if (!gw_writer_filter_reset(&s->w, rows)) return;
    sqlite3_stmt *q;
    int step = SQLITE_ERROR;
    char lo[48], hi[48];
    gw_writer_ns_range(s->w.version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db,
                           "SELECT substr(tbl, ?3), key FROM rows WHERE tbl >= ?1 AND "
                           "tbl < ?2",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 3, (int)strlen(s->w.version) + 1);
        while ((step = sqlite3_step(q)) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(q, 0);
            const char *k = (const char *)sqlite3_column_text(q, 1);
            gw_writer_filter_add(&s->w, t != NULL ? t : "", k != NULL ? k : "");
        }
        sqlite3_finalize(q);
    }
    if (step != SQLITE_DONE) gw_writer_filter_off(&s->w);
}

/* ---- the writer's I/O ---- */

/* Load a row's stored members and lookups (copies into the given buffers). 1 found, 0 not.
 * *copy_same: whether its stored copy equals copy/copy_len (NULL: none). */
static int row_load(void *ud, const char *tbl, const char *key, gw_buf_t *members,
                    gw_buf_t *lookups, const void *copy, size_t copy_len, int *copy_same,
                    gw_err_t *err)
{
    (void)err;
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
    int found = 0;
    *copy_same = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        found = 1;
        const void *m = sqlite3_column_blob(q, 0);
        int ml = sqlite3_column_bytes(q, 0);
        if (m != NULL && ml > 0) gw_buf_append(members, m, (size_t)ml);
        const char *lk = (const char *)sqlite3_column_text(q, 1);
        if (lk != NULL) gw_buf_puts(lookups, lk);
        if (sqlite3_column_type(q, 2) == SQLITE_NULL) {
            *copy_same = copy == NULL;
        } else {
            const void *c = sqlite3_column_blob(q, 2);
            size_t cl = (size_t)sqlite3_column_bytes(q, 2);
            *copy_same = copy != NULL && cl == copy_len && memcmp(c, copy, cl) == 0;
        }
    }
    sqlite3_reset(q);
    return found;
}

static int row_store(void *ud, const char *tbl, const char *key, int found, const void *members,
                     size_t members_len, const char *lookups, const void *copy, size_t copy_len,
                     gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[found ? ST_ROW_UPDATE : ST_ROW_INSERT];
    sqlite3_bind_text(q, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(q, 3, members, (int)members_len, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, lookups, -1, SQLITE_STATIC);
    if (copy != NULL)
        sqlite3_bind_blob(q, 5, copy, (int)copy_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(q, 5);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "store a row");
    sqlite3_reset(q);
    return rc;
}

static int row_delete(void *ud, const char *tbl, const char *key, gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_ROW_DEL];
    sqlite3_bind_text(q, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "delete a row");
    sqlite3_reset(q);
    return rc;
}

static int lookups_close(void *ud, const char *tbl, const char *key, uint64_t op_id, gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_LOOKUP_CLOSE];
    sqlite3_bind_text(q, 1, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)op_id);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "update parameter lookups");
}

static int lookup_insert(void *ud, const char *key, const char *tbl, const char *rkey,
                         const char *params, uint64_t op_id, gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_LOOKUP_INSERT];
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, tbl, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, rkey, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, params, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)op_id);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "write parameter lookups");
}

static int bucket_create(void *ud, const char *name, int64_t *id, gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_BUCKET_INSERT];
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "create a bucket");
    *id = sqlite3_last_insert_rowid(s->db);
    return 0;
}

static int chunk_insert(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                        uint32_t checksum, const gw_buf_t *ops, int64_t commit_us, uint64_t lsn,
                        gw_err_t *err)
{
    gw_sqlite_t *s = ud;
    sqlite3_stmt *q = s->st[ST_CHUNK_INSERT];
    sqlite3_bind_int64(q, 1, bucket_id);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)first);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)last);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)n);
    sqlite3_bind_int64(q, 5, checksum);
    sqlite3_bind_blob(q, 6, ops->data, (int)ops->len, SQLITE_STATIC);
    if (commit_us != 0)
        sqlite3_bind_int64(q, 7, commit_us);
    else
        sqlite3_bind_null(q, 7);
    if (lsn != 0)
        sqlite3_bind_int64(q, 8, (sqlite3_int64)lsn);
    else
        sqlite3_bind_null(q, 8);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "write ops");
}

const gw_writer_io_t gw__sqlite_writer_io = {
    .row_load = row_load,
    .row_store = row_store,
    .row_delete = row_delete,
    .lookups_close = lookups_close,
    .lookup_insert = lookup_insert,
    .bucket_create = bucket_create,
    .chunk_insert = chunk_insert,
    .filter_rebuild = gw__sqlite_filter_build,
};

/* ---- the contract's row operations ---- */

int gw__sqlite_put_row(gw_storage_t *st, const gw_row_ref_t *ref, const rules_ops_t *ops,
                       const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                       size_t copy_len, gw_err_t *err)
{
    return gw_writer_put_row(&((gw_sqlite_t *)st)->w, ref, ops, tails, lookups, copy, copy_len,
                             err);
}

int gw__sqlite_request_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                  uint64_t requested, uint64_t *stored, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_WCP_REQUEST];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)lsn);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)requested);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q);
    int applied = rc == SQLITE_DONE && sqlite3_changes(s->db) > 0;
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "store a checkpoint request");
    q = s->st[ST_WCP_GET];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) *stored = (uint64_t)sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) return gw__sqlite_err(s->db, err, "read a checkpoint request");
    if (!applied) return 0; /* stale or repeated: nothing new becomes visible */
    gw_publisher_add_wcp(s->publisher, user_key, lsn);
    return 0;
}

int gw__sqlite_delete_row(gw_storage_t *st, const gw_row_ref_t *ref, gw_err_t *err)
{
    return gw_writer_delete_row(&((gw_sqlite_t *)st)->w, ref, err);
}

/*
 * Stores counter+1 for user_key and stamps it with the time. Clients come and go (a reinstall is
 * a new client_id), so write checkpoints not written for opts->wcp_retention seconds are deleted,
 * in the same transaction, at most once per hour (or per retention, when shorter). A client
 * that comes back after that starts again at 1, which is what its next upload waits for.
 */
int gw__sqlite_write_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                uint64_t *counter, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    int64_t now = (int64_t)time(NULL);
    long keep = st->opts != NULL ? st->opts->wcp_retention : 0;
    if (keep > 0 && now >= s->wcp_next_prune) {
        sqlite3_stmt *p = s->st[ST_WCP_PRUNE];
        sqlite3_bind_int64(p, 1, (sqlite3_int64)(now - keep));
        int prc = sqlite3_step(p);
        int gone = sqlite3_changes(s->db);
        sqlite3_reset(p);
        if (prc != SQLITE_DONE) return gw__sqlite_err(s->db, err, "prune write checkpoints");
        if (gone > 0)
            gw_info("storage", "forgot unused write checkpoints", "count=%d older_than_s=%ld", gone,
                    keep);
        s->wcp_next_prune = now + (keep < 3600 ? keep : 3600);
    }
    sqlite3_stmt *q = s->st[ST_WCP_UPSERT];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)lsn);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)now);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) *counter = (uint64_t)sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) return gw__sqlite_err(s->db, err, "store a write checkpoint");
    gw_publisher_add_wcp(s->publisher, user_key, lsn);
    return 0;
}

int gw__sqlite_truncate(gw_storage_t *st, const char *table, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    for (;;) {
        /* collect a batch of keys first: deleting while stepping the same table is unsafe */
        sqlite3_stmt *q = s->st[ST_ROWS_OF_TABLE];
        sqlite3_bind_text(q, 1, gw_writer_ns_table(&s->w, table), -1, SQLITE_STATIC);
        size_t n;
        char **keys = gw__sqlite_collect_texts(q, &n);
        int rc = 0;
        for (size_t i = 0; i < n; i++) {
            gw_row_ref_t ref = {.table = table, .key = keys[i]};
            if (rc == 0) rc = gw__sqlite_delete_row(&s->base, &ref, err);
            free(keys[i]);
        }
        free(keys);
        if (rc != 0) return rc;
        if (n == 0) return 0;
    }
}

int gw__sqlite_row_copy(gw_storage_t *st, const gw_row_ref_t *ref, void **out, size_t *len)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, gw_writer_ns_table(&s->w, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_type(q, 2) == SQLITE_BLOB) {
        int n = sqlite3_column_bytes(q, 2);
        *out = gw_xmalloc((size_t)n);
        memcpy(*out, sqlite3_column_blob(q, 2), (size_t)n);
        *len = (size_t)n;
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}
