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
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- namespaces ---- */

/* Whether a bucket, row table or lookup key name belongs to this instance's version. */
int gw__sqlite_own_name(const gw_sqlite_t *s, const char *name)
{
    return strncmp(name, s->version, strlen(s->version)) == 0;
}

/* The text range [lo, hi) of names in namespace ns ("2#" -> ["2#", "2$")); every name for "". */
void gw__sqlite_ns_range(const char *ns, char *lo, char *hi, size_t len)
{
    snprintf(lo, len, "%s", ns);
    if (ns[0] == '\0') {
        snprintf(hi, len, "\xff");
        return;
    }
    snprintf(hi, len, "%s", ns);
    hi[strlen(hi) - 1] = '$'; /* '#' + 1 */
}

/* A table name in the writer's namespace ("2#public.todos"); the last one is kept, since a
 * transaction's rows mostly come from a few tables. Valid until the next call. */
const char *gw__sqlite_ns_table(gw_sqlite_t *s, const char *table)
{
    size_t vlen = strlen(s->version);
    if (s->ns_tbl.data == NULL || s->ns_tbl.len < vlen ||
        memcmp(s->ns_tbl.data, s->version, vlen) != 0 ||
        strcmp(s->ns_tbl.data + vlen, table) != 0) {
        gw_buf_reset(&s->ns_tbl);
        gw_buf_puts(&s->ns_tbl, s->version);
        gw_buf_puts(&s->ns_tbl, table);
    }
    return s->ns_tbl.data;
}

/* A lookup key in the writer's namespace; valid until the next call. */
const char *gw__sqlite_ns_key(gw_sqlite_t *s, const char *key)
{
    gw_buf_reset(&s->ns_lkey);
    gw_buf_puts(&s->ns_lkey, s->version);
    gw_buf_puts(&s->ns_lkey, key);
    return s->ns_lkey.data;
}

int gw__sqlite_set_version(gw_storage_t *st, const char *version, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    char ns[40];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->version) == 0) return 0;
    if (s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version change inside a transaction");
    snprintf(s->version, sizeof(s->version), "%s", ns);
    gw_buf_reset(&s->ns_tbl);
    free(s->filter);
    s->filter = NULL;
    if (gw__sqlite_load_cache(s, err) != 0) return GW_EIO;
    gw_storage_stats_t stats;
    if (gw__sqlite_stats(&s->base, &stats) == 0) gw__sqlite_filter_build(s, stats.rows);
    return 0;
}

const char *gw__sqlite_version(const gw_storage_t *st)
{
    const gw_sqlite_t *s = (const gw_sqlite_t *)st;
    return s->version;
}

int gw__sqlite_advance_checkpoint(gw_storage_t *st, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "checkpoint advance outside a transaction");
    if (s->next_op - 1 > s->txn_last_op) s->txn_last_op = s->next_op - 1;
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
    if (strcmp(ns, s->version) == 0 || version[0] == '\0')
        return gw_err_set(err, GW_EINVAL, "storage", "cannot drop the writer's own version");
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version drop outside a transaction");
    if (gw__sqlite_flush_pending(s, err) != 0) return GW_EIO;
    gw__sqlite_ns_range(ns, lo, hi, sizeof(lo));
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
    for (size_t id = 0; id < s->by_id_cap; id++) {
        bucket_t *b = s->by_id[id];
        if (b == NULL || strncmp(b->name, ns, strlen(ns)) != 0) continue;
        gw_map_del(&s->by_name, b->name);
        s->by_id[id] = NULL;
        free(b->name);
        free(b);
    }
    return 0;
}

/* ---- compaction (powersync-protocol §3.4) ---- */

/* Statements of one compaction. */
enum { CQ_IDS, CQ_GET, CQ_SET, CQ_DEL, CQ_COUNT };

/* The ids of bucket b's chunks with ops <= upto, in op order: malloc'd (caller frees). */
static int64_t *chunk_ids(sqlite3_stmt *ids, const bucket_t *b, uint64_t upto, size_t *n)
{
    int64_t *v = NULL;
    size_t cap = 0;
    *n = 0;
    sqlite3_bind_int64(ids, 1, b->id);
    sqlite3_bind_int64(ids, 2, (sqlite3_int64)upto);
    while (sqlite3_step(ids) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = gw_xrealloc(v, cap * sizeof(*v));
        }
        v[(*n)++] = sqlite3_column_int64(ids, 0);
    }
    sqlite3_reset(ids);
    return v;
}

/* Load chunk id's records into out. 0 or GW_EIO. */
static int chunk_load(gw_sqlite_t *s, sqlite3_stmt *get, int64_t id, gw_buf_t *out, gw_err_t *err)
{
    gw_buf_reset(out);
    sqlite3_bind_int64(get, 1, id);
    int rc =
        sqlite3_step(get) == SQLITE_ROW ? 0 : gw__sqlite_err(s->db, err, "read ops to compact");
    if (rc == 0)
        gw_buf_append(out, sqlite3_column_blob(get, 0), (size_t)sqlite3_column_bytes(get, 0));
    sqlite3_reset(get);
    return rc;
}

/* Replace chunk id's records (and its first op, count and checksum sum). 0 or GW_EIO. */
static int chunk_store(gw_sqlite_t *s, sqlite3_stmt *set, int64_t id, const gw_buf_t *ops,
                       gw_err_t *err)
{
    uint64_t first = 0, n = 0;
    uint32_t sum = 0;
    gw_oprec_t r;
    for (size_t off = 0; gw_oprec_read((const unsigned char *)ops->data + off, ops->len - off, &r);
         off += r.size) {
        if (n++ == 0) first = r.op_id;
        sum += r.checksum;
    }
    sqlite3_bind_int64(set, 1, id);
    sqlite3_bind_blob(set, 2, ops->data, (int)ops->len, SQLITE_STATIC);
    sqlite3_bind_int64(set, 3, (sqlite3_int64)first);
    sqlite3_bind_int64(set, 4, (sqlite3_int64)n);
    sqlite3_bind_int64(set, 5, sum);
    int rc =
        sqlite3_step(set) == SQLITE_DONE ? 0 : gw__sqlite_err(s->db, err, "rewrite compacted ops");
    sqlite3_reset(set);
    return rc;
}

/* MOVE: every PUT/REMOVE <= upto with a later PUT/REMOVE of the same row in the bucket. Chunks
 * are visited newest first; a chunk is rewritten only when one of its ops became a MOVE. */
static int compact_moves(gw_sqlite_t *s, const int64_t *ids, size_t nids, sqlite3_stmt *const *q,
                         uint64_t *moved, gw_err_t *err)
{
    gw_map_t seen;
    gw_map_init(&seen);
    gw_buf_t in = GW_BUF_INIT, out = GW_BUF_INIT, key = GW_BUF_INIT;
    size_t *offs = NULL, cap = 0;
    int rc = 0;
    for (size_t c = nids; c-- > 0 && rc == 0;) {
        rc = chunk_load(s, q[CQ_GET], ids[c], &in, err);
        size_t n = 0;
        gw_oprec_t r;
        for (size_t off = 0;
             rc == 0 && gw_oprec_read((const unsigned char *)in.data + off, in.len - off, &r);
             off += r.size) {
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                offs = gw_xrealloc(offs, cap * sizeof(*offs));
            }
            offs[n++] = off;
        }
        /* newest op first: an identity already seen has a later op, so this one moves */
        unsigned char *is_move = gw_xcalloc(n ? n : 1, 1);
        size_t nmove = 0;
        for (size_t i = n; i-- > 0;) {
            gw_oprec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
            if (r.op != GW_OP_PUT && r.op != GW_OP_REMOVE) continue;
            /* the identity's three strings joined by 0x1f (they are escaped: no control bytes;
             * the body's length prefixes hold NULs, and map keys are C strings) */
            gw_buf_reset(&key);
            const unsigned char *ip = (const unsigned char *)r.ident, *ie = ip + r.ident_len;
            const char *str;
            size_t n;
            for (int f = 0; f < 3 && gw_oprec_body_field(&ip, ie, &str, &n); f++) {
                if (f > 0) gw_buf_append(&key, "\x1f", 1);
                gw_buf_append(&key, str, n);
            }
            if (key.data == NULL) gw_buf_puts(&key, "");
            if (gw_map_get(&seen, key.data) == NULL) {
                gw_map_put(&seen, key.data, (void *)1);
            } else {
                is_move[i] = 1;
                nmove++;
            }
        }
        if (nmove > 0) {
            gw_buf_reset(&out);
            for (size_t i = 0; i < n; i++) {
                gw_oprec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
                if (is_move[i]) {
                    gw_oprec_append(&out, r.op_id, r.checksum, GW_OP_MOVE, 0, 0, "", 0);
                } else {
                    gw_buf_append(&out, in.data + offs[i], r.size);
                }
            }
            rc = chunk_store(s, q[CQ_SET], ids[c], &out, err);
            *moved += nmove;
        }
        free(is_move);
    }
    gw_map_free(&seen);
    gw_buf_free(&in);
    gw_buf_free(&out);
    gw_buf_free(&key);
    free(offs);
    return rc;
}

/* CLEAR: the longest prefix of REMOVE/MOVE/CLEAR ops (all <= upto) becomes one CLEAR op at the
 * prefix's last op id, at the start of the chunk that holds the rest (or alone). */
static int compact_clear(gw_sqlite_t *s, bucket_t *b, const int64_t *ids, size_t nids,
                         sqlite3_stmt *const *q, uint64_t *cleared, gw_err_t *err)
{
    gw_buf_t in = GW_BUF_INIT, out = GW_BUF_INIT;
    uint64_t n = 0, last = 0;
    uint32_t sum = 0;
    int only_clear = 1, rc = 0, stopped = 0;
    size_t c = 0, stop_off = 0; /* the chunk and offset of the first op kept */
    for (; c < nids && rc == 0 && !stopped; c++) {
        rc = chunk_load(s, q[CQ_GET], ids[c], &in, err);
        gw_oprec_t r;
        for (size_t off = 0;
             rc == 0 && gw_oprec_read((const unsigned char *)in.data + off, in.len - off, &r);
             off += r.size) {
            if (r.op == GW_OP_PUT) {
                stopped = 1;
                stop_off = off;
                break;
            }
            last = r.op_id;
            sum += r.checksum;
            only_clear &= r.op == GW_OP_CLEAR;
            n++;
        }
    }
    /* c is one past the last chunk read; `in` holds it */
    if (rc == 0 && n > 0 && !(n == 1 && only_clear)) {
        size_t ndel = stopped ? c - 1 : c; /* chunks wholly inside the prefix */
        for (size_t i = 0; i < ndel && rc == 0; i++) {
            sqlite3_bind_int64(q[CQ_DEL], 1, ids[i]);
            if (sqlite3_step(q[CQ_DEL]) != SQLITE_DONE)
                rc = gw__sqlite_err(s->db, err, "delete cleared ops");
            sqlite3_reset(q[CQ_DEL]);
        }
        gw_oprec_append(&out, last, sum, GW_OP_CLEAR, 0, 0, "", 0);
        if (rc == 0 && stopped) {
            /* the CLEAR replaces the prefix part of the chunk that holds the first PUT */
            gw_buf_append(&out, in.data + stop_off, in.len - stop_off);
            rc = chunk_store(s, q[CQ_SET], ids[c - 1], &out, err);
        } else if (rc == 0) {
            rc = gw__sqlite_chunk_insert(s, b->id, last, last, 1, sum, &out, err);
        }
        if (rc == 0) {
            b->count -= n - 1;
            atomic_fetch_sub(&s->n_ops, n - 1);
            *cleared += n;
        }
    }
    gw_buf_free(&in);
    gw_buf_free(&out);
    return rc;
}

int gw__sqlite_compact(gw_storage_t *st, gw_storage_compact_stats_t *out, gw_err_t *err)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    gw_storage_compact_stats_t cs = {0};
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "compaction outside a transaction");
    if (gw__sqlite_flush_pending(s, err) != 0) return GW_EIO;
    uint64_t upto = s->last_op;
    cs.target = upto;
    static const char *const sql[CQ_COUNT] = {
        [CQ_IDS] = "SELECT id FROM op_chunks WHERE bucket_id = ?1 AND last_op <= ?2 ORDER BY "
                   "last_op",
        [CQ_GET] = "SELECT ops FROM op_chunks WHERE id = ?1",
        [CQ_SET] = "UPDATE op_chunks SET ops = ?2, first_op = ?3, n = ?4, checksum = ?5 WHERE "
                   "id = ?1",
        [CQ_DEL] = "DELETE FROM op_chunks WHERE id = ?1",
    };
    sqlite3_stmt *q[CQ_COUNT] = {0};
    int rc = 0;
    for (int i = 0; i < CQ_COUNT && rc == 0; i++)
        if (sqlite3_prepare_v2(s->db, sql[i], -1, &q[i], NULL) != SQLITE_OK)
            rc = gw__sqlite_err(s->db, err, "prepare compaction");
    for (size_t id = 0; id < s->by_id_cap && rc == 0; id++) {
        bucket_t *b = s->by_id[id];
        if (b == NULL ||
            !gw__sqlite_own_name(s, b->name)) /* another version's writer owns the others */
            continue;
        cs.ops_before += b->count;
        if (b->last_op <= b->compacted || b->count < 2) {
            cs.ops_after += b->count;
            continue;
        }
        cs.buckets++;
        uint64_t before = b->count;
        size_t nids;
        int64_t *ids = chunk_ids(q[CQ_IDS], b, upto, &nids);
        rc = compact_moves(s, ids, nids, q, &cs.moved, err);
        if (rc == 0) rc = compact_clear(s, b, ids, nids, q, &cs.cleared, err);
        free(ids);
        if (rc == 0) {
            b->compacted = upto;
            if (b->count != before) {
                b->dirty = 1;
                gw__sqlite_flush_bucket(NULL, b, s);
            }
        }
        cs.ops_after += b->count;
    }
    for (int i = 0; i < CQ_COUNT; i++)
        sqlite3_finalize(q[i]);
    if (rc == 0 && (cs.moved > 0 || cs.cleared > 0))
        rc = gw__sqlite_state_set_u64(s, "compact_target", upto, err);
    if (out != NULL) *out = cs;
    return rc;
}
