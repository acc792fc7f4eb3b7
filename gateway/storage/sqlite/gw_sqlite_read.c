/* gw_sqlite_read.c -- the SQLite backend's readers: checkpoints, checksums, ops, lookups
 *
 * A reader is a read-only connection with its statements, used by one thread. Every call is its
 * own short read transaction (SQLite's snapshot isolation in WAL mode), so a reader never pins
 * the WAL while a client is slow. Checksums as of an older checkpoint subtract the few ops after
 * it from the bucket's running total; ops are rendered to wire JSON from their records
 * (gw_oprec_render), copies only.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "storage/sqlite/gw_sqlite.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    RD_STATE,
    RD_BUCKET,
    RD_OPS_AFTER,
    RD_OPS,
    RD_LOOKUP,
    RD_BUCKETS,
    RD_STATE_ONE,
    RD_WCP,
    RD_BEGIN,
    RD_COMMIT,
    RD_COUNT
};

static const char *const rd_sql[RD_COUNT] = {
    [RD_STATE] = "SELECT substr(k, length(?1) + 1), v FROM state WHERE k IN (?1 || 'last_op', "
                 "?1 || 'lsn', ?1 || 'consistent')",
    [RD_BUCKET] = "SELECT id, checksum, count, last_op FROM buckets WHERE name = ?1",
    [RD_OPS_AFTER] = "SELECT first_op, n, checksum, ops FROM op_chunks WHERE bucket_id = ?1 AND "
                     "last_op > ?2",
    [RD_OPS] = "SELECT ops FROM op_chunks WHERE bucket_id = ?1 AND last_op > ?2 ORDER BY last_op",
    [RD_LOOKUP] = "SELECT params FROM lookups WHERE key = ?3 || ?1 AND from_op <= ?2 AND (to_op "
                  "IS NULL OR to_op > ?2)",
    [RD_BUCKETS] = "SELECT name FROM buckets ORDER BY name",
    [RD_STATE_ONE] = "SELECT v FROM state WHERE k = ?1",
    [RD_WCP] = "SELECT counter, lsn FROM write_checkpoints WHERE user_key = ?1",
    /* prepared once: a stream's first round opens one read transaction per bucket */
    [RD_BEGIN] = "BEGIN",
    [RD_COMMIT] = "COMMIT",
};

struct gw_sqlite_reader {
    gw_storage_reader_t base; /* first: the contract's head */
    sqlite3 *db;
    sqlite3_stmt *st[RD_COUNT];
    char ns[40]; /* the served rule version's namespace, as of the last checkpoint read */
    int hold;    /* gw__sqlite_read_hold depth: reads share its transaction */
};

/* A short read transaction (BEGIN / COMMIT with the prepared statements). */
static int rd_begin(gw_sqlite_reader_t *r)
{
    if (r->hold > 0) return SQLITE_OK; /* inside a held transaction */
    int rc = sqlite3_step(r->st[RD_BEGIN]);
    sqlite3_reset(r->st[RD_BEGIN]);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void rd_commit(gw_sqlite_reader_t *r)
{
    if (r->hold > 0) return;
    sqlite3_step(r->st[RD_COMMIT]);
    sqlite3_reset(r->st[RD_COMMIT]);
}

int gw__sqlite_read_hold(gw_storage_reader_t *rd)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    if (r->hold == 0 && rd_begin(r) != SQLITE_OK) return GW_EIO;
    r->hold++;
    return 0;
}

void gw__sqlite_read_release(gw_storage_reader_t *rd)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    if (r->hold > 0 && --r->hold == 0) rd_commit(r);
}

/* The namespace of the version the file serves (another process may be writing it). */
static void reader_file_ns(gw_sqlite_reader_t *r)
{
    sqlite3_stmt *q = r->st[RD_STATE_ONE];
    sqlite3_bind_text(q, 1, "serving", -1, SQLITE_STATIC);
    r->ns[0] = '\0';
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0) != NULL)
        snprintf(r->ns, sizeof(r->ns), "%s#", (const char *)sqlite3_column_text(q, 0));
    sqlite3_reset(q);
}

int gw__sqlite_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err)
{
    const char *path = opts->path;
    if (path == NULL || path[0] == '\0')
        return gw_err_set(err, GW_ECONFIG, "storage.path", "the sqlite storage needs a file");
    gw_sqlite_reader_t *r = gw_xcalloc(1, sizeof(*r));
    r->base.type = &gw_sqlite_type;
    r->base.opts = opts;
    if (sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not open \"%s\" for reading: %s", path,
                   r->db ? sqlite3_errmsg(r->db) : "out of memory");
        gw__sqlite_reader_close(&r->base);
        return GW_EIO;
    }
    sqlite3_busy_timeout(r->db, 5000);
    for (int i = 0; i < RD_COUNT; i++) {
        if (sqlite3_prepare_v3(r->db, rd_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i], NULL) !=
            SQLITE_OK) {
            gw__sqlite_err(r->db, err, "prepare storage reads");
            gw__sqlite_reader_close(&r->base);
            return GW_EIO;
        }
    }
    reader_file_ns(r);
    *out = &r->base;
    return 0;
}

const char *gw__sqlite_reader_version(const gw_storage_reader_t *rd)
{
    const gw_sqlite_reader_t *r = (const gw_sqlite_reader_t *)rd;
    return r->ns;
}

void gw__sqlite_reader_close(gw_storage_reader_t *rd)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    if (r == NULL) return;
    for (int i = 0; i < RD_COUNT; i++)
        sqlite3_finalize(r->st[i]);
    if (r->db != NULL) sqlite3_close(r->db);
    free(r);
}

int gw__sqlite_read_checkpoint(gw_storage_reader_t *rd, uint64_t *last_op, uint64_t *lsn,
                               int *consistent)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    *last_op = *lsn = 0;
    *consistent = 0;
    gw_storage_cp_t cp;
    if (gw_storage_pub_get(r->base.opts->pub, &cp)) {
        /* this process writes: serve only what is on disk (a commit not yet synced may be
         * lost with the machine, and its op ids reused) */
        *last_op = cp.last_op;
        *lsn = cp.lsn;
        *consistent = cp.consistent;
        snprintf(r->ns, sizeof(r->ns), "%s", cp.ns);
        return 0;
    }
    if (rd_begin(r) != SQLITE_OK) return GW_EIO;
    reader_file_ns(r);
    sqlite3_stmt *q = r->st[RD_STATE];
    sqlite3_bind_text(q, 1, r->ns, -1, SQLITE_TRANSIENT);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(q, 0);
        const char *v = (const char *)sqlite3_column_text(q, 1);
        if (k == NULL || v == NULL) continue;
        if (strcmp(k, "last_op") == 0)
            *last_op = strtoull(v, NULL, 10);
        else if (strcmp(k, "lsn") == 0)
            *lsn = strtoull(v, NULL, 10);
        else if (strcmp(k, "consistent") == 0)
            *consistent = v[0] == '1';
    }
    sqlite3_reset(q);
    rd_commit(r);
    return rc == SQLITE_DONE ? 0 : GW_EIO;
}

int gw__sqlite_read_write_checkpoint(gw_storage_reader_t *rd, const char *user_key,
                                     uint64_t as_of_lsn, uint64_t *counter)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    sqlite3_stmt *q = r->st[RD_WCP];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW && (uint64_t)sqlite3_column_int64(q, 1) <= as_of_lsn) {
        *counter = (uint64_t)sqlite3_column_int64(q, 0);
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}

int gw__sqlite_read_state(gw_storage_reader_t *rd, const char *key, char *buf, size_t len)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    sqlite3_stmt *q = r->st[RD_STATE_ONE];
    char k[256];
    sqlite3_bind_text(q, 1, gw__sqlite_state_key(r->ns, key, k, sizeof(k)), -1, SQLITE_TRANSIENT);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(q, 0);
        snprintf(buf, len, "%s", v != NULL ? v : "");
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}

int gw__sqlite_bucket_checksum(gw_storage_reader_t *rd, const char *bucket, uint64_t as_of,
                               uint32_t *checksum, uint64_t *count)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    *checksum = 0;
    *count = 0;
    if (rd_begin(r) != SQLITE_OK) return GW_EIO;
    int rc = 0;
    sqlite3_stmt *q = r->st[RD_BUCKET];
    sqlite3_bind_text(q, 1, bucket, -1, SQLITE_STATIC);
    int64_t id = -1;
    uint64_t last = 0;
    int step = sqlite3_step(q);
    if (step == SQLITE_ROW) {
        id = sqlite3_column_int64(q, 0);
        *checksum = (uint32_t)sqlite3_column_int64(q, 1);
        *count = (uint64_t)sqlite3_column_int64(q, 2);
        last = (uint64_t)sqlite3_column_int64(q, 3);
    } else if (step != SQLITE_DONE) {
        rc = GW_EIO;
    }
    sqlite3_reset(q);
    if (rc == 0 && id >= 0 && last > as_of) {
        /* subtract the ops written after the checkpoint: whole chunks by their totals, the
         * chunk that straddles the checkpoint op by op */
        q = r->st[RD_OPS_AFTER];
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int64(q, 2, (sqlite3_int64)as_of);
        int step;
        while ((step = sqlite3_step(q)) == SQLITE_ROW) {
            if ((uint64_t)sqlite3_column_int64(q, 0) > as_of) {
                *count -= (uint64_t)sqlite3_column_int64(q, 1);
                *checksum -= (uint32_t)sqlite3_column_int64(q, 2);
                continue;
            }
            const unsigned char *p = sqlite3_column_blob(q, 3);
            size_t len = (size_t)sqlite3_column_bytes(q, 3);
            gw_oprec_t rec;
            for (size_t off = 0; p != NULL && gw_oprec_read(p + off, len - off, &rec);
                 off += rec.size) {
                if (rec.op_id > as_of) {
                    *count -= 1;
                    *checksum -= rec.checksum;
                }
            }
        }
        if (step != SQLITE_DONE) rc = GW_EIO;
        sqlite3_reset(q);
    }
    rd_commit(r);
    return rc;
}

int gw__sqlite_read_ops(gw_storage_reader_t *rd, const char *bucket, uint64_t after, uint64_t upto,
                        size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last,
                        int *has_more, size_t *nops)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    *last = after;
    *has_more = 0;
    *nops = 0;
    if (rd_begin(r) != SQLITE_OK) return GW_EIO;
    int rc = 0;
    sqlite3_stmt *q = r->st[RD_BUCKET];
    sqlite3_bind_text(q, 1, bucket, -1, SQLITE_STATIC);
    int64_t id = -1;
    if (sqlite3_step(q) == SQLITE_ROW) id = sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (id >= 0) {
        q = r->st[RD_OPS];
        sqlite3_bind_int64(q, 1, id);
        sqlite3_bind_int64(q, 2, (sqlite3_int64)after);
        size_t bytes = 0;
        int step, done = 0;
        while (!done && (step = sqlite3_step(q)) == SQLITE_ROW) {
            const unsigned char *p = sqlite3_column_blob(q, 0);
            size_t len = (size_t)sqlite3_column_bytes(q, 0);
            gw_oprec_t rec;
            for (size_t off = 0; p != NULL && gw_oprec_read(p + off, len - off, &rec);
                 off += rec.size) {
                if (rec.op_id <= after) continue;
                if (rec.op_id > upto) {
                    done = 1;
                    break;
                }
                if (*nops == max_ops || (bytes >= max_bytes && *nops > 0)) {
                    *has_more = 1;
                    done = 1;
                    break;
                }
                if (*nops > 0) gw_buf_append(out, ",", 1);
                size_t before = out->len;
                gw_oprec_render(out, &rec);
                bytes += out->len - before;
                *last = rec.op_id;
                (*nops)++;
            }
        }
        if (!done && step != SQLITE_DONE) rc = GW_EIO;
        sqlite3_reset(q);
    }
    rd_commit(r);
    return rc;
}

int gw__sqlite_lookup(gw_storage_reader_t *rd, const char *version, const char *key, uint64_t as_of,
                      int (*fn)(void *ud, const char *params), void *ud)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    sqlite3_stmt *q = r->st[RD_LOOKUP];
    char ns[40];
    if (version != NULL)
        snprintf(ns, sizeof(ns), "%s#", version);
    else
        snprintf(ns, sizeof(ns), "%s", r->ns);
    sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)as_of);
    sqlite3_bind_text(q, 3, ns, -1, SQLITE_TRANSIENT);
    int rc = 0, step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        rc = fn(ud, (const char *)sqlite3_column_text(q, 0));
        if (rc != 0) break;
    }
    if (rc == 0 && step != SQLITE_ROW && step != SQLITE_DONE) rc = GW_EIO;
    sqlite3_reset(q);
    return rc;
}

int gw__sqlite_each_bucket(gw_storage_reader_t *rd, uint64_t as_of,
                           int (*fn)(void *ud, const char *bucket, uint32_t checksum,
                                     uint64_t count),
                           void *ud)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    /* collect names first so the callback can use the reader */
    size_t n;
    char **names = gw__sqlite_collect_texts(r->st[RD_BUCKETS], &n);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cs;
        uint64_t count;
        if (rc == 0) rc = gw__sqlite_bucket_checksum(&r->base, names[i], as_of, &cs, &count);
        if (rc == 0) rc = fn(ud, names[i], cs, count);
        free(names[i]);
    }
    free(names);
    return rc;
}

/* The chunks' commits (not a prepared statement of the reader: a file a writer of this version
 * has not opened yet lacks the columns, and reads them as unknown). */
int gw__sqlite_chunk_commits(gw_storage_reader_t *rd, const char *bucket, uint64_t after,
                             uint64_t upto, int (*fn)(void *ud, const gw_storage_chunk_commit_t *c),
                             void *ud)
{
    gw_sqlite_reader_t *r = (gw_sqlite_reader_t *)rd;
    static const char *const sql[2] = {
        "SELECT c.first_op, c.last_op, c.commit_us, c.commit_lsn FROM op_chunks c JOIN buckets b "
        "ON b.id = c.bucket_id WHERE b.name = ?1 AND c.last_op > ?2 AND c.first_op <= ?3 "
        "ORDER BY c.last_op",
        "SELECT c.first_op, c.last_op, NULL, NULL FROM op_chunks c JOIN buckets b ON b.id = "
        "c.bucket_id WHERE b.name = ?1 AND c.last_op > ?2 AND c.first_op <= ?3 ORDER BY "
        "c.last_op"};
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(r->db, sql[0], -1, &q, NULL) != SQLITE_OK &&
        sqlite3_prepare_v2(r->db, sql[1], -1, &q, NULL) != SQLITE_OK)
        return GW_EIO;
    sqlite3_bind_text(q, 1, bucket, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)after);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)upto);
    gw_storage_chunk_commit_t *v = NULL;
    size_t n = 0, cap = 0;
    int step;
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = gw_xrealloc(v, cap * sizeof(*v));
        }
        v[n++] = (gw_storage_chunk_commit_t){.first_op = (uint64_t)sqlite3_column_int64(q, 0),
                                             .last_op = (uint64_t)sqlite3_column_int64(q, 1),
                                             .commit_us =
                                                 sqlite3_column_int64(q, 2), /* NULL reads as 0 */
                                             .lsn = (uint64_t)sqlite3_column_int64(q, 3)};
    }
    int rc = step == SQLITE_DONE ? 0 : GW_EIO;
    sqlite3_finalize(q);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = fn(ud, &v[i]);
    free(v);
    return rc;
}
