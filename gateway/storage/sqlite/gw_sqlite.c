/* gw_sqlite.c -- the embedded SQLite backend: the file, its layout, open and close
 *
 * Schema (one file, WAL mode; commits are made durable by the publisher's thread before anything is
 * served or acknowledged, see gw_sqlite_sync.c):
 *   state(k, v)                                replication state: next_op, last_op, lsn, …
 *   buckets(id, name, checksum, count, last_op) running totals at the latest checkpoint
 *   op_chunks(id, bucket_id, first_op, last_op, n, checksum, ops, commit_us, commit_lsn)
 *                                               a bucket's ops in runs: ops is a blob of records
 *                                               (gw_oprec.h), at most CHUNK_MAX_OPS per chunk,
 *                                               found by op_chunks_by_bucket(bucket_id, last_op);
 *                                               commit_us (unix microseconds) and commit_lsn:
 *                                               the commit that wrote it (gw_storage.h, "Commit
 *                                               times"), NULL in files from before they were
 *                                               kept (added in place at open)
 *   rows(tbl, key, members, lookups, copy)      per source row: memberships, lookup text, copy
 *   lookups(key, tbl, rkey, params, from_op, to_op)
 *                                               parameter-lookup entries valid in [from_op, to_op)
 *   write_checkpoints(user_key, counter, lsn, seen)
 *                                               the latest write checkpoint per user key
 *                                               (gw_app_user_key), seen = unix seconds of its
 *                                               last write; unused ones are pruned after
 *                                               opts->wcp_retention (gw_sqlite_rows.c)
 *
 * Rule versions (layout 4). Everything but write_checkpoints and the shared state keys
 * (gw_storage_key_shared) belongs to one rule version, named by a prefix: buckets "2#name",
 * rows.tbl "2#public.todos", lookups.key "2#…", state "2#lsn". A writer works in one version's
 * namespace (gw_sqlite_versions.c). Two writers may work on the file at once, the serving
 * version's and one building a new version beside it: each transaction holds SQLite's write
 * lock, takes the shared op-id sequence up where the last commit of either left it, and touches
 * only its own namespace. Only the serving writer publishes its checkpoint (and runs the hook).
 *
 * Why chunks: a commit's ops land in thousands of buckets. One SQLite row per op (the second
 * layout) cost an index entry and a b-tree insert per op, 40 % of replication; clustering rows
 * by (bucket, op) (the first layout) dirtied one page per bucket per commit. Now the writer
 * queues a transaction's ops in memory, linked per bucket, and writes each bucket's run as one
 * row at commit: one insert per bucket per commit, appended in id order. Readers seek the first
 * chunk whose last_op is above their position and skip the records before it.
 *
 * The writer keeps every bucket's totals in memory (a map by name and an array by id), updates
 * them as ops are written and flushes the dirty ones at commit. A bucket's checksum as of an
 * older checkpoint C is its running total minus the ops after C, which are few and recent.
 */
#include "storage/sqlite/gw_sqlite_int.h"
#include "storage/sqlite/gw_sqlite.h"
#include "base/gw_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int gw__sqlite_err(sqlite3 *db, gw_err_t *err, const char *what)
{
    return gw_err_set(err, GW_EIO, "storage", "could not %s: %s", what, sqlite3_errmsg(db));
}

/* Step q to the end, copying column 0 of each row; *n strings in a malloc'd array the caller
 * frees (each string and the array). The statement is reset. */
char **gw__sqlite_collect_texts(sqlite3_stmt *q, size_t *n)
{
    char **v = NULL;
    size_t cap = 0;
    *n = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            v = gw_xrealloc(v, cap * sizeof(char *));
        }
        const char *t = (const char *)sqlite3_column_text(q, 0);
        v[(*n)++] = gw_xstrdup(t != NULL ? t : "");
    }
    sqlite3_reset(q);
    return v;
}

int gw__sqlite_exec(sqlite3 *db, const char *sql, gw_err_t *err, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not %s: %s", what, msg ? msg : "unknown");
        sqlite3_free(msg);
        return GW_EIO;
    }
    return 0;
}

static const char *const stmt_sql[ST_COUNT] = {
    [ST_STATE_GET] = "SELECT v FROM state WHERE k = ?1",
    [ST_STATE_SET] = "INSERT INTO state(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = "
                     "excluded.v",
    [ST_BUCKET_INSERT] = "INSERT INTO buckets(name, checksum, count, last_op) VALUES (?1, 0, 0, 0)",
    [ST_BUCKET_UPDATE] = "UPDATE buckets SET checksum = ?2, count = ?3, last_op = ?4 WHERE id = ?1",
    [ST_CHUNK_INSERT] = "INSERT INTO op_chunks(bucket_id, first_op, last_op, n, checksum, ops, "
                        "commit_us, commit_lsn) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    /* tables (?1 of the row and lookup statements) and lookup keys are bound in the writer's
     * namespace, "2#public.todos" (ns_table, ns_key) */
    [ST_ROW_GET] = "SELECT members, lookups, copy FROM rows WHERE tbl = ?1 AND key = ?2",
    [ST_ROW_INSERT] = "INSERT INTO rows(tbl, key, members, lookups, copy) VALUES (?1, ?2, ?3, ?4, "
                      "?5)",
    [ST_ROW_UPDATE] = "UPDATE rows SET members = ?3, lookups = ?4, copy = ?5 WHERE tbl = ?1 AND "
                      "key = ?2",
    [ST_ROW_DEL] = "DELETE FROM rows WHERE tbl = ?1 AND key = ?2",
    [ST_ROWS_OF_TABLE] = "SELECT key FROM rows WHERE tbl = ?1 LIMIT 2000",
    [ST_LOOKUP_CLOSE] = "UPDATE lookups SET to_op = ?3 WHERE tbl = ?1 AND rkey = ?2 AND to_op IS "
                        "NULL",
    [ST_LOOKUP_INSERT] = "INSERT INTO lookups(key, tbl, rkey, params, from_op) VALUES (?1, ?2, ?3, "
                         "?4, ?5)",
    [ST_WCP_UPSERT] =
        "INSERT INTO write_checkpoints(user_key, counter, lsn, seen) VALUES (?1, 1, ?2, ?3) "
        "ON CONFLICT(user_key) DO UPDATE SET counter = counter + 1, lsn = excluded.lsn, "
        "seen = excluded.seen RETURNING counter",
    [ST_WCP_PRUNE] = "DELETE FROM write_checkpoints WHERE seen < ?1",
    [ST_WCP_REQUEST] = "INSERT INTO write_checkpoints(user_key, counter, lsn, seen) "
                       "VALUES (?1, ?3, ?2, ?4) ON CONFLICT(user_key) DO UPDATE SET "
                       "counter = excluded.counter, lsn = excluded.lsn, seen = excluded.seen "
                       "WHERE excluded.counter > write_checkpoints.counter",
    [ST_WCP_GET] = "SELECT counter FROM write_checkpoints WHERE user_key = ?1",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS state(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    "  checksum INTEGER NOT NULL, count INTEGER NOT NULL, last_op INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS op_chunks(id INTEGER PRIMARY KEY, bucket_id INTEGER NOT NULL,"
    "  first_op INTEGER NOT NULL, last_op INTEGER NOT NULL, n INTEGER NOT NULL,"
    "  checksum INTEGER NOT NULL, ops BLOB NOT NULL, commit_us INTEGER, commit_lsn INTEGER);"
    "CREATE INDEX IF NOT EXISTS op_chunks_by_bucket ON op_chunks(bucket_id, last_op);"
    "CREATE TABLE IF NOT EXISTS rows(tbl TEXT NOT NULL, key TEXT NOT NULL, members BLOB,"
    "  lookups TEXT, copy BLOB, PRIMARY KEY(tbl, key)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS lookups(key TEXT NOT NULL, tbl TEXT NOT NULL, rkey TEXT NOT NULL,"
    "  params TEXT NOT NULL, from_op INTEGER NOT NULL, to_op INTEGER);"
    "CREATE INDEX IF NOT EXISTS lookups_by_key ON lookups(key, from_op);"
    "CREATE INDEX IF NOT EXISTS lookups_by_row ON lookups(tbl, rkey) WHERE to_op IS NULL;"
    "CREATE TABLE IF NOT EXISTS write_checkpoints(user_key TEXT PRIMARY KEY,"
    "  counter INTEGER NOT NULL, lsn INTEGER NOT NULL, seen INTEGER NOT NULL DEFAULT 0)"
    "  WITHOUT ROWID;";

/* Files written before write checkpoints were pruned lack "seen": add it (rows get 0, so
 * they count as unused since long and go at the first prune, unless written again). Older
 * ferry versions still read and write such a file (the column has a default). */
static int add_wcp_seen(sqlite3 *db, gw_err_t *err)
{
    sqlite3_stmt *q;
    int has = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM pragma_table_info('write_checkpoints') "
                           "WHERE name = 'seen'",
                           -1, &q, NULL) == SQLITE_OK) {
        has = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_finalize(q);
    }
    if (has) return 0;
    return gw__sqlite_exec(db,
                           "ALTER TABLE write_checkpoints ADD COLUMN seen INTEGER NOT NULL "
                           "DEFAULT 0",
                           err, "add \"seen\" to write_checkpoints");
}

/* Files written before chunks kept their commit lack op_chunks.commit_us and commit_lsn: add
 * them (NULL, "unknown", for the chunks already stored). Older ferry versions still read and
 * write such a file (they leave the columns NULL). */
static int add_chunk_commit(sqlite3 *db, gw_err_t *err)
{
    sqlite3_stmt *q;
    int has = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT 1 FROM pragma_table_info('op_chunks') WHERE name = 'commit_us'",
                           -1, &q, NULL) == SQLITE_OK) {
        has = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_finalize(q);
    }
    if (has) return 0;
    return gw__sqlite_exec(db,
                           "ALTER TABLE op_chunks ADD COLUMN commit_us INTEGER;"
                           "ALTER TABLE op_chunks ADD COLUMN commit_lsn INTEGER",
                           err, "add the commit time to op_chunks");
}

/* The layout this code writes (state "layout"). Layout 3 (rows, lookups and state of a single
 * rule version, unprefixed) is migrated in place; older layouts are refused. */
#define LAYOUT "4"

/* Layout 3 -> 4: put the rows, lookups and per-version state of the file's one rule version into
 * that version's namespace, in one transaction. */
static int migrate_layout3(sqlite3 *db, gw_err_t *err)
{
    char v[32] = "1";
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(db, "SELECT v FROM state WHERE k = 'rules_version'", -1, &q, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0) != NULL)
            snprintf(v, sizeof(v), "%s", (const char *)sqlite3_column_text(q, 0));
        sqlite3_finalize(q);
    }
    for (const char *p = v; *p; p++)
        if (*p < '0' || *p > '9')
            return gw_err_set(err, GW_EIO, "storage", "layout 3 file with rule version \"%s\"", v);
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "BEGIN IMMEDIATE;"
             "UPDATE rows SET tbl = '%s#' || tbl;"
             "UPDATE lookups SET key = '%s#' || key, tbl = '%s#' || tbl;"
             "UPDATE state SET k = '%s#' || k WHERE k NOT IN ('layout', 'next_op', 'source_id');"
             "INSERT OR REPLACE INTO state(k, v) VALUES ('serving', '%s'), ('version_seq', '%s'),"
             " ('layout', '" LAYOUT "');"
             "COMMIT;",
             v, v, v, v, v, v);
    if (gw__sqlite_exec(db, sql, err, "migrate the storage file to layout " LAYOUT) != 0) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return GW_EIO;
    }
    gw_info("storage", "migrated the storage file to layout " LAYOUT, "rule_version=%s", v);
    return 0;
}

/* 0 when the file holds this layout (a fresh file gets the mark, a layout 3 file is migrated);
 * GW_EIO for an older one: a table "ops" with one row per op (layouts 1 and 2), or stored rows
 * without the layout mark. */
static int check_layout(sqlite3 *db, gw_err_t *err)
{
    sqlite3_stmt *q;
    int old = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE name = 'ops'", -1, &q, NULL) ==
        SQLITE_OK) {
        old = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_finalize(q);
    }
    char *layout = NULL;
    int has_rows = 0;
    if (sqlite3_prepare_v2(db,
                           "SELECT (SELECT v FROM state WHERE k = 'layout'), EXISTS (SELECT 1 "
                           "FROM rows)",
                           -1, &q, NULL) == SQLITE_OK) {
        if (sqlite3_step(q) == SQLITE_ROW) {
            const char *v = (const char *)sqlite3_column_text(q, 0);
            layout = v != NULL ? gw_xstrdup(v) : NULL;
            has_rows = sqlite3_column_int(q, 1);
        }
        sqlite3_finalize(q);
    }
    int rc = 0;
    if (layout == NULL && !has_rows && !old)
        sqlite3_exec(db, "INSERT INTO state(k, v) VALUES ('layout', '" LAYOUT "')", NULL, NULL,
                     NULL);
    else if (layout != NULL && strcmp(layout, "3") == 0 && !old)
        rc = migrate_layout3(db, err);
    else if (layout == NULL || strcmp(layout, LAYOUT) != 0)
        rc = -1;
    free(layout);
    if (rc == -1)
        rc = gw_err_set(err, GW_EIO, "storage",
                        "it was written by an older ferry with another ops layout");
    return rc;
}

int gw__sqlite_open(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                    gw_err_t *err)
{
    const char *path = opts->path;
    if (path == NULL || path[0] == '\0')
        return gw_err_set(err, GW_ECONFIG, "storage.path", "the sqlite storage needs a file");
    /* no global allocation statistics: they take a mutex on every SQLite malloc. Only possible
     * before SQLite initializes (this runs on the main thread before any other uses SQLite);
     * afterwards the call fails harmlessly. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    gw_sqlite_t *s = gw_xcalloc(1, sizeof(*s));
    s->base.type = &gw_sqlite_type;
    s->base.opts = opts;
    gw_writer_init(&s->w, &gw__sqlite_writer_io, s);
    pthread_mutex_init(&s->ckpt_lock, NULL);
    pthread_cond_init(&s->ckpt_cond, NULL);
    pthread_mutex_init(&s->ckpt_run, NULL);
    s->wal_fd = -1;
    s->path = gw_xstrdup(path);
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not open \"%s\": %s", path,
                   s->db ? sqlite3_errmsg(s->db) : "out of memory");
        gw__sqlite_close(&s->base);
        return GW_EIO;
    }
    /* a second writer (a rule version built beside this one) may hold the write lock for a
     * while: a snapshot chunk, or dropping a retired version */
    sqlite3_busy_timeout(s->db, 60000);
    /* a 32 MB page cache keeps the hot b-tree pages (rows, the ops tails) out of pread();
     * checkpoints are the checkpointer thread's (see the file comment) */
    if (gw__sqlite_exec(
            s->db,
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; "
            "PRAGMA cache_size=-32768; PRAGMA wal_autocheckpoint=0; PRAGMA temp_store=MEMORY;",
            err, "set up the storage file") != 0 ||
        gw__sqlite_exec(s->db, schema_sql, err, "create the storage schema") != 0 ||
        add_wcp_seen(s->db, err) != 0 || add_chunk_commit(s->db, err) != 0) {
        gw__sqlite_close(&s->base);
        return GW_EIO;
    }
    gw_err_t lerr;
    if (check_layout(s->db, &lerr) != 0) {
        gw_err_set(err, GW_EIO, "storage", "cannot use \"%s\": %s", path, lerr.message);
        gw_err_detail(err, "Delete the file (and its -wal and -shm files) and drop the "
                           "replication slot; ferry then rebuilds storage from a new snapshot.");
        gw__sqlite_close(&s->base);
        return GW_EIO;
    }
    /* the namespace: the version asked for, else the one the file serves (none when fresh) */
    char serving[32] = "";
    if (version == NULL) {
        sqlite3_stmt *q;
        if (sqlite3_prepare_v2(s->db, "SELECT v FROM state WHERE k = 'serving'", -1, &q, NULL) ==
            SQLITE_OK) {
            if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0) != NULL)
                snprintf(serving, sizeof(serving), "%s", (const char *)sqlite3_column_text(q, 0));
            sqlite3_finalize(q);
        }
        version = serving;
    }
    gw_writer_set_version(&s->w, version);
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            gw__sqlite_err(s->db, err, "prepare storage statements");
            gw__sqlite_close(&s->base);
            return GW_EIO;
        }
    }
    if (gw__sqlite_load_cache(s, err) != 0) {
        gw__sqlite_close(&s->base);
        return GW_EIO;
    }
    gw__sqlite_filter_build(s, atomic_load(&s->w.n_rows));
    gw__sqlite_threads_start(s);
    *out = &s->base;
    return 0;
}

void gw__sqlite_close(gw_storage_t *st)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    if (s == NULL) return;
    if (s->in_txn) gw__sqlite_rollback(&s->base);
    gw__sqlite_threads_stop(s); /* the publisher reports every queued commit before it ends */
    if (s->wal_fd >= 0) close(s->wal_fd);
    pthread_mutex_destroy(&s->ckpt_lock);
    pthread_cond_destroy(&s->ckpt_cond);
    pthread_mutex_destroy(&s->ckpt_run);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db != NULL) sqlite3_close(s->db);
    gw_writer_free(&s->w);
    free(s->path);
    free(s);
}

void gw__sqlite_set_hook(gw_storage_t *st, gw_storage_hook_fn fn, void *ud)
{
    gw_publisher_set_hook(((gw_sqlite_t *)st)->publisher, fn, ud);
}

void gw__sqlite_get_hook(const gw_storage_t *st, gw_storage_hook_fn *fn, void **ud)
{
    gw_publisher_get_hook(((const gw_sqlite_t *)st)->publisher, fn, ud);
}

int gw__sqlite_stats(gw_storage_t *st, gw_storage_stats_t *out)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    out->rows = atomic_load(&s->w.n_rows);
    out->buckets = atomic_load(&s->w.n_buckets);
    out->ops = atomic_load(&s->w.n_ops);
    return 0;
}

uint64_t gw__sqlite_size(const gw_storage_opts_t *opts)
{
    /* the file and its WAL (the -shm file is an index of the WAL, a few pages) */
    if (opts->path == NULL) return 0;
    struct stat sb;
    uint64_t size = 0;
    char wal[1100];
    if (stat(opts->path, &sb) == 0) size += (uint64_t)sb.st_size;
    snprintf(wal, sizeof(wal), "%s-wal", opts->path);
    if (stat(wal, &sb) == 0) size += (uint64_t)sb.st_size;
    return size;
}

/* One process owns the file: it always leads. */
static int lead(gw_storage_t *st, gw_err_t *err)
{
    (void)st;
    (void)err;
    return 1;
}

static void info(gw_storage_t *st, gw_storage_info_t *out)
{
    gw_sqlite_t *s = (gw_sqlite_t *)st;
    memset(out, 0, sizeof(*out));
    out->kind = "sqlite";
    out->leader = 1;
    out->reachable = 1;
    out->notify_lag_us = -1;
    snprintf(out->where, sizeof(out->where), "%s", s->path);
}

/* ---- the operations table ---- */

const gw_storage_type_t gw_sqlite_type = {
    .kind = "sqlite",
    .open = gw__sqlite_open,
    .size = gw__sqlite_size,
    .close = gw__sqlite_close,
    .lead = lead,
    .info = info,
    .set_serving = gw__sqlite_set_serving,
    .set_hook = gw__sqlite_set_hook,
    .get_hook = gw__sqlite_get_hook,
    .set_durable_fn = gw__sqlite_set_durable_fn,
    .settle = gw__sqlite_settle,
    .move_pending = gw__sqlite_move_pending,
    .begin = gw__sqlite_begin,
    .commit = gw__sqlite_commit,
    .rollback = gw__sqlite_rollback,
    .in_txn = gw__sqlite_in_txn,
    .state_get = gw__sqlite_state_get,
    .state_set = gw__sqlite_state_set,
    .checkpoint = gw__sqlite_checkpoint,
    .set_consistent = gw__sqlite_set_consistent,
    .consistent = gw__sqlite_consistent,
    .stats = gw__sqlite_stats,
    .set_version = gw__sqlite_set_version,
    .version = gw__sqlite_version,
    .advance_checkpoint = gw__sqlite_advance_checkpoint,
    .drop_version = gw__sqlite_drop_version,
    .compact = gw__sqlite_compact,
    .put_row = gw__sqlite_put_row,
    .write_checkpoint = gw__sqlite_write_checkpoint,
    .request_checkpoint = gw__sqlite_request_checkpoint,
    .delete_row = gw__sqlite_delete_row,
    .truncate = gw__sqlite_truncate,
    .row_copy = gw__sqlite_row_copy,
    .set_commit_time = gw__sqlite_set_commit_time,
    .reader_open = gw__sqlite_reader_open,
    .reader_close = gw__sqlite_reader_close,
    .reader_version = gw__sqlite_reader_version,
    .read_checkpoint = gw__sqlite_read_checkpoint,
    .read_state = gw__sqlite_read_state,
    .bucket_checksum = gw__sqlite_bucket_checksum,
    .read_ops = gw__sqlite_read_ops,
    .read_write_checkpoint = gw__sqlite_read_write_checkpoint,
    .lookup = gw__sqlite_lookup,
    .each_bucket = gw__sqlite_each_bucket,
    .chunk_commits = gw__sqlite_chunk_commits,
    .read_hold = gw__sqlite_read_hold,
    .read_release = gw__sqlite_read_release,
};
