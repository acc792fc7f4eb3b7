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
    if (gw__sqlite_state_get(&s->base, "next_op", buf, sizeof(buf))) {
        uint64_t next = strtoull(buf, NULL, 10);
        if (next > s->next_op) s->next_op = next;
    }
    s->in_txn = 1;
    s->gen++;
    s->ntouched = 0;
    for (size_t i = 0; i < s->nlookup_keys; i++)
        free(s->lookup_keys[i]);
    s->nlookup_keys = 0;
    s->txn_last_op = s->last_op;
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

void gw__sqlite_flush_bucket(const char *key, void *value, void *ud)
{
    (void)key;
    gw_sqlite_t *s = ud;
    bucket_t *b = value;
    if (!b->dirty) return;
    sqlite3_stmt *q = s->st[ST_BUCKET_UPDATE];
    sqlite3_bind_int64(q, 1, b->id);
    sqlite3_bind_int64(q, 2, b->checksum);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)b->count);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)b->last_op);
    sqlite3_step(q);
    sqlite3_reset(q);
    b->dirty = 0;
}

/* Commit; the publisher reports it once durable. With wait, return only after that. */
int gw__sqlite_commit(gw_storage_t *st, uint64_t lsn, int wait, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "commit without a transaction");
    if (gw__sqlite_flush_pending(s, err) != 0) return GW_EIO;
    for (size_t i = 0; i < s->ntouched; i++) {
        bucket_t *b = gw_map_get(&s->by_name, s->touched[i]);
        gw__sqlite_flush_bucket(NULL, b, s);
    }
    uint64_t last_op = s->txn_last_op;
    if (lsn < s->lsn) lsn = s->lsn;
    if (gw__sqlite_state_set_u64(s, "next_op", s->next_op, err) != 0 ||
        gw__sqlite_state_set_u64(s, "last_op", last_op, err) != 0 ||
        gw__sqlite_state_set_u64(s, "lsn", lsn, err) != 0)
        return GW_EIO;
    if (gw__sqlite_exec(s->db, "COMMIT", err, "commit to storage") != 0) {
        gw__sqlite_rollback(&s->base);
        return GW_EIO;
    }
    s->in_txn = 0;
    s->last_op = last_op;
    s->lsn = lsn;
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
    gw_storage_cp_t cp = gw__sqlite_cp(s, last_op, lsn, s->consistent);
    gw_publisher_commit(s->publisher, &cp, s->touched, s->ntouched,
                        (const char *const *)s->lookup_keys, s->nlookup_keys, wait);
    return 0;
}

void gw__sqlite_rollback(gw_storage_t *st)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn) return;
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    s->in_txn = 0;
    gw_buf_reset(&s->pend);
    s->npend_buckets = 0;
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
    if (q == NULL) return 0;
    char k[256];
    sqlite3_bind_text(q, 1, gw__sqlite_state_key(s->version, key, k, sizeof(k)), -1,
                      SQLITE_TRANSIENT);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(q, 0);
        snprintf(buf, len, "%s", v != NULL ? v : "");
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}

int gw__sqlite_state_set(gw_storage_t *st, const char *key, const char *value, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    sqlite3_stmt *q = s->st[ST_STATE_SET];
    char k[256];
    sqlite3_bind_text(q, 1, gw__sqlite_state_key(s->version, key, k, sizeof(k)), -1,
                      SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "store replication state");
}

void gw__sqlite_checkpoint(const gw_storage_t *st, uint64_t *last_op, uint64_t *lsn)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    *last_op = s->last_op;
    *lsn = s->lsn;
}

int gw__sqlite_set_consistent(gw_storage_t *st, int consistent, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (gw__sqlite_state_set(&s->base, "consistent", consistent ? "1" : "0", err) != 0)
        return GW_EIO;
    s->consistent = consistent != 0;
    return 0;
}

int gw__sqlite_consistent(const gw_storage_t *st)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    return s->consistent;
}

/* Write one chunk row. 0 or GW_EIO. */
int gw__sqlite_chunk_insert(gw_sqlite_t *s, int64_t bucket_id, uint64_t first, uint64_t last,
                            uint64_t n, uint32_t checksum, const gw_buf_t *ops, gw_err_t *err)
{
    sqlite3_stmt *q = s->st[ST_CHUNK_INSERT];
    sqlite3_bind_int64(q, 1, bucket_id);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)first);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)last);
    sqlite3_bind_int64(q, 4, (sqlite3_int64)n);
    sqlite3_bind_int64(q, 5, checksum);
    sqlite3_bind_blob(q, 6, ops->data, (int)ops->len, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "write ops");
}

/* Write every bucket's pending ops as chunks of at most CHUNK_MAX_OPS ops / ~CHUNK_MAX_BYTES,
 * then empty the pending buffer. 0 or GW_EIO (the transaction must then be rolled back). */
int gw__sqlite_flush_pending(gw_sqlite_t *s, gw_err_t *err)
{
    int rc = 0;
    gw_buf_t *c = &s->chunk;
    for (size_t i = 0; i < s->npend_buckets && rc == 0; i++) {
        bucket_t *b = s->pend_buckets[i];
        size_t at = b->pend_head;
        while (at != 0 && rc == 0) {
            gw_buf_reset(c);
            uint64_t first = 0, last = 0, n = 0;
            uint32_t sum = 0;
            while (at != 0 && n < CHUNK_MAX_OPS && c->len < CHUNK_MAX_BYTES) {
                const unsigned char *e = (const unsigned char *)s->pend.data + at - 1;
                uint32_t next;
                memcpy(&next, e, PEND_LINK);
                gw_oprec_t r = {0}; /* the queue holds whole records: the read cannot fail */
                gw_oprec_read(e + PEND_LINK, s->pend.len - (at - 1) - PEND_LINK, &r);
                gw_buf_append(c, e + PEND_LINK, r.size);
                if (n++ == 0) first = r.op_id;
                last = r.op_id;
                sum += r.checksum;
                at = next;
            }
            rc = gw__sqlite_chunk_insert(s, b->id, first, last, n, sum, c, err);
        }
        b->pend_head = b->pend_tail = 0;
    }
    s->npend_buckets = 0;
    gw_buf_reset(&s->pend);
    if (c->cap > 4 * CHUNK_MAX_BYTES) gw_buf_free(c);
    return rc;
}

/* Queue an op of bucket b, its body encoded once, here or ahead by another thread (tail); the
 * wire JSON {"op_id":"N","op":"PUT","checksum":C,"object_type":…,"object_id":…,"subkey":…,
 * "data":"…"} is rendered from it by readers (checksum before the identity, so the identity is
 * one contiguous span). */
int gw__sqlite_write_op(gw_sqlite_t *s, bucket_t *b, int op, const char *type, const char *id,
                        const char *subkey, const char *data, uint32_t checksum,
                        const gw_op_tail_t *tail, gw_err_t *err)
{
    uint64_t op_id = s->next_op++;
    gw_buf_t *l = &s->pend;
    size_t at = l->len;
    static const unsigned char zero[PEND_LINK + GW_OPREC_HDR];
    gw_buf_append(l, zero, sizeof(zero));
    size_t line_at = l->len;
    size_t ident_at, ident_end;
    if (tail != NULL) {
        ident_at = l->len + tail->ident_off;
        ident_end = ident_at + tail->ident_len;
        gw_buf_append(l, tail->text, tail->len);
    } else {
        gw_oprec_encode_body(l, op, type, id, subkey, data, &ident_at, &ident_end);
    }
    /* fill in the record header and link it behind the bucket's last pending op */
    unsigned char *e = (unsigned char *)l->data + at;
    uint32_t io = (uint32_t)(ident_at - line_at), il = (uint32_t)(ident_end - ident_at);
    uint32_t ll = (uint32_t)(l->len - line_at);
    memcpy(e + PEND_LINK, &op_id, 8);
    memcpy(e + PEND_LINK + 8, &checksum, 4);
    e[PEND_LINK + 12] = (unsigned char)op;
    memcpy(e + PEND_LINK + 13, &io, 4);
    memcpy(e + PEND_LINK + 17, &il, 4);
    memcpy(e + PEND_LINK + 21, &ll, 4);
    uint32_t self = (uint32_t)at + 1;
    if (b->pend_tail != 0) {
        memcpy(l->data + b->pend_tail - 1, &self, PEND_LINK);
    } else {
        if (s->npend_buckets == s->cap_pend_buckets) {
            s->cap_pend_buckets = s->cap_pend_buckets ? s->cap_pend_buckets * 2 : 256;
            s->pend_buckets =
                gw_xrealloc(s->pend_buckets, s->cap_pend_buckets * sizeof(bucket_t *));
        }
        s->pend_buckets[s->npend_buckets++] = b;
        b->pend_head = self;
    }
    b->pend_tail = self;
    b->checksum += checksum;
    b->count++;
    atomic_fetch_add(&s->n_ops, 1);
    b->last_op = op_id;
    s->txn_last_op = op_id;
    gw__sqlite_touch(s, b);
    return l->len >= PEND_MAX_BYTES ? gw__sqlite_flush_pending(s, err) : 0;
}
