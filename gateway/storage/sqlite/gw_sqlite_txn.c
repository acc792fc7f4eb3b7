/* gw_sqlite_txn.c -- the SQLite backend's transactions, replication state and op queue
 *
 * gw__sqlite_begin() takes the file's write lock (BEGIN IMMEDIATE) and takes the shared op-id
 * sequence up where the last commit of either writer left it. Ops written in a transaction are
 * queued in memory, linked per bucket (gw__sqlite_write_op), and written as one chunk row per
 * bucket at commit (gw__sqlite_flush_pending), or earlier when the queue holds PEND_MAX_BYTES.
 * gw__sqlite_commit() writes the dirty bucket totals and next_op/last_op/lsn with the ops, commits
 * (appending to the WAL without syncing) and hands the commit to the syncer (gw_sqlite_sync.c),
 * which makes it durable before anything is published.
 *
 * Invariants (of the whole backend):
 *   1. op ids come from next_op (shared by the versions), strictly increasing; next_op is
 *      persisted in the same SQLite transaction as the ops, so a crash never reuses an id.
 *   2. a version's last_op is the highest op id of its committed ops (or, after a switch, of
 *      every version's: gw__sqlite_advance_checkpoint); its lsn the position committed with it.
 *      Both change only in gw__sqlite_commit().
 *   3. rows.members lists exactly the (bucket, object_type, object_id) with a live PUT.
 *   4. a chunk's first_op/last_op/n/checksum describe exactly its records, which are in op-id
 *      order; ops queued but not yet written are always above every written op of their bucket.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- transactions ---- */

int gw__sqlite_begin(gw_storage_t *st, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (s->in_txn) return 0;
    if (gw__sqlite_exec(s->db, "BEGIN IMMEDIATE", err, "begin a storage transaction") != 0)
        return GW_EIO;
    /* the op-id sequence is shared with a writer building another rule version beside this one:
     * take it up where the last commit of either left it (this transaction holds the lock) */
    char buf[32];
    int got = gw__sqlite_state_get(&s->base, "next_op", buf, sizeof(buf));
    if (got < 0) {
        gw__sqlite_exec(s->db, "ROLLBACK", NULL, "");
        return gw_err_set(err, GW_EIO, "storage", "could not read the op-id sequence: %s",
                          sqlite3_errmsg(s->db));
    }
    uint64_t stored = got ? strtoull(buf, NULL, 10) : 0;
    s->in_txn = 1;
    gw_writer_begin(&s->w, stored);
    return 0;
}

int gw__sqlite_in_txn(const gw_storage_t *st)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    return s->in_txn;
}

int gw__sqlite_state_set_u64(gw_sqlite_t *s, const char *key, uint64_t v, gw_err_t *err)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    return gw__sqlite_state_set(&s->base, key, buf, err);
}

int gw__sqlite_bucket_flush(gw_sqlite_t *s, gw_wbucket_t *b, gw_err_t *err)
{
    sqlite3_stmt *q = s->st[ST_BUCKET_UPDATE];
    sqlite3_bind_int64(q, 1, b->id);
    sqlite3_bind_int64(q, 2, b->checksum);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)b->count);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)b->last_op);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "write bucket totals");
    sqlite3_reset(q);
    b->dirty = 0;
    return rc;
}

/* Commit; the publisher reports it once durable. With wait, return only after that. */
int gw__sqlite_commit(gw_storage_t *st, uint64_t lsn, int wait, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "commit without a transaction");
    gw_writer_t *w = &s->w;
    gw_writer_stamp(w, lsn < w->lsn ? w->lsn : lsn);
    if (gw_writer_flush_pending(w, err) != 0) return GW_EIO;
    for (size_t i = 0; i < w->ntouched; i++) {
        gw_wbucket_t *b = gw_writer_bucket(w, w->touched[i]);
        if (b->dirty) gw__sqlite_bucket_flush(s, b, err);
    }
    uint64_t last_op = w->txn_last_op;
    if (lsn < w->lsn) lsn = w->lsn;
    if (gw__sqlite_state_set_u64(s, "next_op", w->next_op, err) != 0 ||
        gw__sqlite_state_set_u64(s, "last_op", last_op, err) != 0 ||
        gw__sqlite_state_set_u64(s, "lsn", lsn, err) != 0)
        return GW_EIO;
    if (gw__sqlite_exec(s->db, "COMMIT", err, "commit to storage") != 0) {
        gw__sqlite_rollback(&s->base);
        return GW_EIO;
    }
    s->in_txn = 0;
    w->last_op = last_op;
    w->lsn = lsn;
    if (s->ckpt_started && s->wal_frames >= CKPT_RESTART_FRAMES) {
        /* copies only what the checkpointer has not yet. While it runs, try again after the
         * next commit, unless the WAL is long enough to wait for it. */
        int locked = s->wal_frames >= CKPT_WAIT_FRAMES ? pthread_mutex_lock(&s->ckpt_run) == 0
                                                       : pthread_mutex_trylock(&s->ckpt_run) == 0;
        int log, done;
        if (locked) {
            if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) ==
                    SQLITE_OK &&
                log >= 0 && done == log)
                s->wal_frames = 0;
            pthread_mutex_unlock(&s->ckpt_run);
        }
    }
    gw_storage_cp_t cp = gw__sqlite_cp(s, last_op, lsn, w->consistent);
    gw_publisher_commit(s->publisher, &cp, w->touched, w->ntouched,
                        (const char *const *)w->lookup_keys, w->nlookup_keys, 1, wait);
    return 0;
}

void gw__sqlite_set_commit_time(gw_storage_t *st, int64_t unix_us)
{
    gw_writer_set_commit_time(&((gw_sqlite_t *)st)->w, unix_us);
}

void gw__sqlite_rollback(gw_storage_t *st)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn) return;
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    s->in_txn = 0;
    gw_writer_discard_pending(&s->w);
    gw_err_t err;
    if (gw__sqlite_load_cache(s, &err) != 0)
        gw_error("storage", "could not reload the storage cache after a rollback", NULL);
}

/* The stored form of key in namespace ns, into buf; returns buf. */
const char *gw__sqlite_state_key(const char *ns, const char *key, char *buf, size_t len)
{
    /* "3#slot" names another version's key itself */
    snprintf(buf, len, "%s%s", gw_storage_key_shared(key) || strchr(key, '#') != NULL ? "" : ns,
             key);
    return buf;
}

int gw__sqlite_state_get(gw_storage_t *st, const char *key, char *buf, size_t len)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_STATE_GET];
    if (len > 0) buf[0] = '\0';
    if (q == NULL) return -1;
    char k[256];
    sqlite3_bind_text(q, 1, gw__sqlite_state_key(s->w.version, key, k, sizeof(k)), -1,
                      SQLITE_TRANSIENT);
    int found = 0;
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(q, 0);
        snprintf(buf, len, "%s", v != NULL ? v : "");
        found = 1;
    } else if (step != SQLITE_DONE) {
        found = -1; /* busy, I/O error: not "absent" */
    }
    sqlite3_reset(q);
    return found;
}

int gw__sqlite_state_set(gw_storage_t *st, const char *key, const char *value, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_STATE_SET];
    char k[256];
    sqlite3_bind_text(q, 1, gw__sqlite_state_key(s->w.version, key, k, sizeof(k)), -1,
                      SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "store replication state");
}

void gw__sqlite_checkpoint(const gw_storage_t *st, uint64_t *last_op, uint64_t *lsn)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    *last_op = s->w.last_op;
    *lsn = s->w.lsn;
}

int gw__sqlite_set_consistent(gw_storage_t *st, int consistent, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (gw__sqlite_state_set(&s->base, "consistent", consistent ? "1" : "0", err) != 0)
        return GW_EIO;
    s->w.consistent = consistent != 0;
    return 0;
}

int gw__sqlite_consistent(const gw_storage_t *st)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    return s->w.consistent;
}
