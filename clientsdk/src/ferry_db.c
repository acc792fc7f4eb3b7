/* ferry_db.c -- open a replica: schema, migrations, upload-queue triggers, watches
 *
 * A replica is one SQLite file (WAL mode) holding the app's tables as plain tables (id TEXT
 * PRIMARY KEY plus the schema's typed columns) and Ferry's own tables:
 *
 *   ferry_kv       client_id, target write checkpoint ("target"), last_synced_at, ...
 *   ferry_crud     the upload queue: (id, tx_id, op, type, row_id, data), oldest first
 *   ferry_buckets  per bucket: last_op (resume position), add/op checksums, count, priority
 *   ferry_oplog    the stored PUT op of every (bucket, type/id/subkey) key: a rowid table in
 *                  arrival order and one unique index (row_type, row_id, bucket, subkey), which
 *                  serves both the key lookups of a bucket and a row's ops across buckets; a
 *                  first sync stores its ops without the index and builds it afterwards
 *                  (ferry_oplog.c, "bulk"); subkeys "<prefix>/<id>" are stored as the prefix's
 *                  number in ferry_subkeys
 *   ferry_updated  rows to re-evaluate at the next publish (bucket 0 = a local write)
 *
 * Two SQLite connections: the app's (ferry_sqlite) and the sync thread's. Each registers the SQL
 * function ferry_applying(), 0 on the app connection and 1 on the sync connection, and the
 * synced tables' triggers fire only WHEN NOT ferry_applying(): local writes are queued, server
 * data is not. The triggers record PUT (all non-NULL columns), PATCH (changed columns only) and
 * DELETE with ferry_txid(), one id per app transaction (reset by the commit and rollback hooks),
 * mark the row for re-evaluation and set the write-checkpoint target to "unknown".
 *
 * Migrations: a missing table is created, a missing column added (ALTER TABLE ADD COLUMN),
 * triggers are recreated on every open; rows of a table or column that appeared are filled from
 * the oplog at once (data for unknown types is kept there, protocol §2.3).
 *
 * Watches: the app connection's update hook collects changed schema tables per transaction, the
 * commit hook hands them to the watch thread, which calls the callbacks; the sync thread hands
 * over the tables it published the same way (ferry__notify).
 */
#include "ferry_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

typedef struct ferry_watch {
    int id;
    uint64_t mask;
    ferry_watch_cb cb;
    void *ud;
    struct ferry_watch *next;
} ferry_watch_t;

const char *ferry_strerror(int code)
{
    switch (code) {
    case FERRY_OK:
        return "success";
    case FERRY_EINVAL:
        return "invalid argument";
    case FERRY_ENOMEM:
        return "out of memory";
    case FERRY_ESQLITE:
        return "SQLite error";
    case FERRY_ESTATE:
        return "not allowed in this state";
    case FERRY_ETIMEOUT:
        return "timed out";
    case FERRY_EPROTO:
        return "protocol violation";
    case FERRY_ENET:
        return "network error";
    case FERRY_EAUTH:
        return "not authorized";
    case FERRY_ECHECKSUM:
        return "checksum mismatch";
    }
    return "unknown error";
}

void ferry__seterr(ferry_error_t *err, int code, const char *fmt, ...)
{
    if (!err) return;
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* ---- SQL functions and hooks -------------------------------------------------------------- */

static void fn_applying(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    sqlite3_result_int(ctx, *(int *)sqlite3_user_data(ctx));
}

static int APPLYING_YES = 1;

static void fn_txid(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    ferry_db_t *db = sqlite3_user_data(ctx);
    if (!db) { /* connections other than the app's never queue writes */
        sqlite3_result_int64(ctx, 0);
        return;
    }
    if (db->cur_tx == 0) db->cur_tx = ++db->next_tx;
    sqlite3_result_int64(ctx, db->cur_tx);
}

int ferry__table_index(ferry_db_t *db, const char *name)
{
    for (int i = 0; i < db->ntables; i++)
        if (strcmp(db->tables[i].name, name) == 0) return i;
    return -1;
}

static void on_update(void *ud, int op, const char *dbname, const char *table, sqlite3_int64 rowid)
{
    (void)op;
    (void)dbname;
    (void)rowid;
    ferry_db_t *db = ud;
    if (strncmp(table, "ferry_", 6) == 0) return;
    int i = ferry__table_index(db, table);
    if (i >= 0) db->tx_changed |= (uint64_t)1 << i;
}

static int on_commit(void *ud)
{
    ferry_db_t *db = ud;
    db->cur_tx = 0;
    uint64_t ch = db->tx_changed;
    db->tx_changed = 0;
    /* the uploader must look at the queue again before anyone calls us synced */
    pthread_mutex_lock(&db->mu);
    db->app_commits++;
    db->changed |= ch;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->mu);
    return 0;
}

static void on_rollback(void *ud)
{
    ferry_db_t *db = ud;
    db->cur_tx = 0;
    db->tx_changed = 0;
}

void ferry__notify(ferry_db_t *db, uint64_t tables)
{
    pthread_mutex_lock(&db->mu);
    db->changed |= tables;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->mu);
}

/* ---- connections and small helpers --------------------------------------------------------- */

int ferry__open_conn(const char *path, sqlite3 **out, int *applying, ferry_error_t *err)
{
    sqlite3 *c = NULL;
    /* the sync and upload connections (applying == NULL) are private to one thread each: no
     * per-call mutex (it cost ~10% of an initial sync); the app's connection keeps it */
    int rc = sqlite3_open_v2(path, &c,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                 (applying ? SQLITE_OPEN_FULLMUTEX : SQLITE_OPEN_NOMUTEX),
                             NULL);
    if (rc != SQLITE_OK) {
        ferry__seterr(err, rc == SQLITE_NOMEM ? FERRY_ENOMEM : FERRY_ESQLITE,
                      "could not open database \"%s\": %s", path,
                      c ? sqlite3_errmsg(c) : sqlite3_errstr(rc));
        sqlite3_close(c);
        *out = NULL;
        return rc == SQLITE_NOMEM ? FERRY_ENOMEM : FERRY_ESQLITE;
    }
    sqlite3_busy_timeout(c, 10000);
    char *msg = NULL;
    if (sqlite3_exec(c, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL, &msg) !=
            SQLITE_OK ||
        sqlite3_create_function(c, "ferry_applying", 0, SQLITE_UTF8,
                                applying ? applying : &APPLYING_YES, fn_applying, NULL,
                                NULL) != SQLITE_OK ||
        sqlite3_create_function(c, "ferry_txid", 0, SQLITE_UTF8, NULL, fn_txid, NULL, NULL) !=
            SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not open database \"%s\": %s", path,
                      msg ? msg : sqlite3_errmsg(c));
        sqlite3_free(msg);
        sqlite3_close(c);
        *out = NULL;
        return FERRY_ESQLITE;
    }
    *out = c;
    return 0;
}

int64_t ferry__kv_get_int(sqlite3 *c, const char *key, int64_t dflt)
{
    sqlite3_stmt *st;
    int64_t v = dflt;
    if (sqlite3_prepare_v2(c, "SELECT value FROM ferry_kv WHERE key = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return dflt;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

int ferry__kv_set_int(sqlite3 *c, const char *key, int64_t v)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c, "INSERT OR REPLACE INTO ferry_kv(key, value) VALUES (?, ?)", -1, &st,
                           NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, v);
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : FERRY_ESQLITE;
}

void ferry_uuid(char buf[37])
{
    unsigned char b[16];
    int ok = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ok = read(fd, b, sizeof b) == (ssize_t)sizeof b;
        close(fd);
    }
    if (!ok) sqlite3_randomness(sizeof b, b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* A growable string for building SQL; on OOM it sets failed and stops growing. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int failed;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *fmt, ...); /* sqlite3_mprintf formats: %w, %q, %Q */
static void sb_add(sbuf_t *b, const char *fmt, ...)
{
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    char *s = sqlite3_vmprintf(fmt, ap); /* %w, %q available */
    va_end(ap);
    if (!s) {
        b->failed = 1;
        return;
    }
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            sqlite3_free(s);
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
    sqlite3_free(s);
}

static const char *TYPE_SQL[] = {"TEXT", "INTEGER", "REAL"};

static int exec_sql(sqlite3 *c, const char *sql, ferry_error_t *err, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(c, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        ferry__seterr(err, rc == SQLITE_NOMEM ? FERRY_ENOMEM : FERRY_ESQLITE, "could not %s: %s",
                      what, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        return rc == SQLITE_NOMEM ? FERRY_ENOMEM : FERRY_ESQLITE;
    }
    return 0;
}

static const char OWN_TABLES[] =
    "CREATE TABLE IF NOT EXISTS ferry_kv(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS ferry_crud(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " tx_id INTEGER NOT NULL, op TEXT NOT NULL, type TEXT NOT NULL, row_id TEXT NOT NULL,"
    " data TEXT, old TEXT, metadata TEXT);"
    "CREATE TABLE IF NOT EXISTS ferry_buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " last_op INTEGER NOT NULL DEFAULT 0, add_checksum INTEGER NOT NULL DEFAULT 0,"
    " op_checksum INTEGER NOT NULL DEFAULT 0, count INTEGER NOT NULL DEFAULT 0,"
    " priority INTEGER NOT NULL DEFAULT 3);"
    "CREATE TABLE IF NOT EXISTS ferry_oplog(bucket INTEGER NOT NULL, row_type TEXT NOT NULL,"
    " row_id TEXT NOT NULL, subkey TEXT NOT NULL, op_id INTEGER NOT NULL, hash INTEGER NOT NULL,"
    " data TEXT);"
    "CREATE TABLE IF NOT EXISTS ferry_updated(row_type TEXT NOT NULL, row_id TEXT NOT NULL,"
    " bucket INTEGER NOT NULL, PRIMARY KEY(row_type, row_id, bucket)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS ferry_subscriptions(id INTEGER PRIMARY KEY, stream TEXT NOT NULL,"
    " params TEXT NOT NULL, priority INTEGER, synced INTEGER NOT NULL DEFAULT 0, error TEXT,"
    " UNIQUE(stream, params));";

/* Files written before the oplog had its two-B-tree layout (a rowid table keyed by a "type/id/
 * subkey" string, with a unique (bucket, key) index and a (row_type, row_id, op_id) index) are
 * rewritten into it once: the subkey is what follows "type/id/" in the old key. Files of the
 * two-B-tree layout's first version have a virtual column key (type/id/subkey): it is dropped
 * (a schema change only, no row is rewritten), because SQLite computed it for every inserted
 * op, which was a third of storing one. */
static int migrate_oplog(sqlite3 *c, ferry_error_t *err)
{
    sqlite3_stmt *st;
    int old = 0;
    if (sqlite3_prepare_v2(c,
                           "SELECT count(*) FROM pragma_table_xinfo('ferry_oplog') "
                           "WHERE name = 'key' AND hidden = 2",
                           -1, &st, NULL) != SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not inspect the oplog: %s", sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    int virtual_key = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    if (virtual_key)
        return exec_sql(c, "ALTER TABLE ferry_oplog DROP COLUMN key", err, "migrate the oplog");
    if (sqlite3_prepare_v2(c,
                           "SELECT count(*) FROM pragma_table_info('ferry_oplog') "
                           "WHERE name = 'subkey'",
                           -1, &st, NULL) != SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not inspect the oplog: %s", sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    int has_subkey = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    if (sqlite3_prepare_v2(c, "SELECT count(*) FROM sqlite_schema WHERE name = 'ferry_oplog'", -1,
                           &st, NULL) == SQLITE_OK) {
        old = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0 && !has_subkey;
        sqlite3_finalize(st);
    }
    if (!old) return 0;
    return exec_sql(c,
                    "ALTER TABLE ferry_oplog RENAME TO ferry_oplog_old;"
                    "DROP INDEX IF EXISTS ferry_oplog_row;"
                    "CREATE TABLE ferry_oplog(bucket INTEGER NOT NULL, row_type TEXT NOT NULL,"
                    " row_id TEXT NOT NULL, subkey TEXT NOT NULL, op_id INTEGER NOT NULL,"
                    " hash INTEGER NOT NULL, data TEXT);"
                    "INSERT INTO ferry_oplog(bucket, row_type, row_id, subkey, op_id, hash, data)"
                    " SELECT bucket, row_type, row_id,"
                    " substr(key, length(row_type) + length(row_id) + 3), op_id, hash, data"
                    " FROM ferry_oplog_old ORDER BY rowid;"
                    "DROP TABLE ferry_oplog_old;",
                    err, "migrate the oplog");
}

/* Subkeys of the form "<prefix>/<object_id>" (a Ferry server sends "<schema.table>/<key>") are
 * stored in the oplog as the prefix's number in ferry_subkeys, as a short BLOB of its digits,
 * instead of the whole text (ferry_oplog.c, "subkeys"): the oplog's key index then holds a few
 * bytes per op instead of twenty and more. Only a file whose oplog is empty when it is opened
 * starts numbering (ferry_subkeys is created then), so an op stored as text is never compared
 * with a numbered one; other files keep text subkeys. */
static int enable_subkey_prefixes(sqlite3 *c, ferry_error_t *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c, "SELECT EXISTS (SELECT 1 FROM ferry_oplog)", -1, &st, NULL) !=
        SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not inspect the oplog: %s", sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    int r = sqlite3_step(st);
    int has_ops = r == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (r != SQLITE_ROW) {
        ferry__seterr(err, FERRY_ESQLITE, "could not inspect the oplog: %s", sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    if (has_ops) return 0;
    return exec_sql(c,
                    "CREATE TABLE IF NOT EXISTS ferry_subkeys(id INTEGER PRIMARY KEY,"
                    " prefix TEXT NOT NULL UNIQUE);",
                    err, "create Ferry's tables");
}

/* A queue made by an earlier release gets the columns "old" and "metadata". */
static int migrate_crud(sqlite3 *c, ferry_error_t *err)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(
            c, "SELECT count(*) FROM pragma_table_info('ferry_crud') WHERE name = 'old'", -1, &st,
            NULL) != SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not inspect the upload queue: %s",
                      sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    int has = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    if (has) return 0;
    return exec_sql(c,
                    "ALTER TABLE ferry_crud ADD COLUMN old TEXT;"
                    "ALTER TABLE ferry_crud ADD COLUMN metadata TEXT;",
                    err, "add old and metadata to the upload queue");
}

/* Creates or migrates one table and its triggers; *added is set when rows must be filled from
 * the oplog (the table or a column is new). */
static int migrate_table(ferry_db_t *db, const ferry_tdef_t *t, const ferry_table_t *src,
                         int *added, ferry_error_t *err)
{
    sqlite3 *c = db->app;
    sbuf_t b = {0};
    int rc = 0;
    *added = 0;
    /* existing columns */
    sqlite3_stmt *st;
    char *q = sqlite3_mprintf("SELECT name FROM pragma_table_info(%Q)", t->name);
    if (!q) return FERRY_ENOMEM;
    rc = sqlite3_prepare_v2(c, q, -1, &st, NULL);
    sqlite3_free(q);
    if (rc != SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not read table \"%s\": %s", t->name,
                      sqlite3_errmsg(c));
        return FERRY_ESQLITE;
    }
    int exists = 0, have_meta = 0;
    char *have = calloc((size_t)t->ncols + 1, 1);
    if (!have) {
        sqlite3_finalize(st);
        return FERRY_ENOMEM;
    }
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *n = (const char *)sqlite3_column_text(st, 0);
        exists = 1;
        for (int i = 0; i < t->ncols; i++)
            if (n && strcmp(n, t->cols[i]) == 0) have[i] = 1;
        if (n && strcmp(n, "_metadata") == 0) have_meta = 1;
    }
    sqlite3_finalize(st);
    if (!exists) {
        sb_add(&b, "CREATE TABLE \"%w\"(id TEXT PRIMARY KEY NOT NULL", t->name);
        for (int i = 0; i < t->ncols; i++)
            sb_add(&b, ", \"%w\" %s", t->cols[i], TYPE_SQL[t->types[i]]);
        if (t->track_metadata) sb_add(&b, ", _metadata TEXT");
        sb_add(&b, ");");
        *added = 1;
    } else {
        for (int i = 0; i < t->ncols; i++)
            if (!have[i]) {
                sb_add(&b, "ALTER TABLE \"%w\" ADD COLUMN \"%w\" %s;", t->name, t->cols[i],
                       TYPE_SQL[t->types[i]]);
                *added = 1;
            }
        if (t->track_metadata && !have_meta)
            sb_add(&b, "ALTER TABLE \"%w\" ADD COLUMN _metadata TEXT;", t->name);
    }
    free(have);
    if (src->indexes)
        for (const ferry_index_t *ix = src->indexes; ix->name; ix++) {
            sb_add(&b, "CREATE INDEX IF NOT EXISTS \"%w_%w\" ON \"%w\"(", t->name, ix->name,
                   t->name);
            for (int k = 0; k < 16 && ix->columns[k]; k++) {
                const char *col = ix->columns[k];
                size_t n = strlen(col);
                int desc = n > 5 && strcmp(col + n - 5, " DESC") == 0;
                sb_add(&b, "%s\"%.*w\"%s", k ? ", " : "", (int)(desc ? n - 5 : n), col,
                       desc ? " DESC" : "");
            }
            sb_add(&b, ");");
        }
    /* triggers: recreated on every open so they follow the columns */
    sb_add(&b,
           "DROP TRIGGER IF EXISTS \"ferry_ins_%w\"; DROP TRIGGER IF EXISTS \"ferry_upd_%w\";"
           "DROP TRIGGER IF EXISTS \"ferry_del_%w\"; DROP TRIGGER IF EXISTS \"ferry_id_%w\";",
           t->name, t->name, t->name, t->name);
    if (!t->local_only) {
        const char *mark = "INSERT OR IGNORE INTO ferry_updated(row_type, row_id, bucket) "
                           "VALUES (%Q, %s.id, 0); INSERT OR REPLACE INTO ferry_kv(key, value) "
                           "VALUES ('target', 9223372036854775807);";
        /* INSERT -> PUT with every non-NULL column (json_object takes at most 127 arguments,
         * so columns go in groups merged with json_patch, which also drops NULLs) */
        sb_add(&b,
               "CREATE TRIGGER \"ferry_ins_%w\" AFTER INSERT ON \"%w\" WHEN NOT "
               "ferry_applying() BEGIN INSERT INTO ferry_crud(tx_id, op, type, row_id, metadata, "
               "data) VALUES (ferry_txid(), 'PUT', %Q, NEW.id, %s, ",
               t->name, t->name, t->name, t->track_metadata ? "NEW._metadata" : "NULL");
        int groups = (t->ncols + 49) / 50;
        for (int g = 0; g < groups; g++)
            sb_add(&b, "json_patch(");
        sb_add(&b, "'{}'");
        for (int g = 0; g < groups; g++) {
            sb_add(&b, ", json_object(");
            for (int i = g * 50; i < t->ncols && i < (g + 1) * 50; i++)
                sb_add(&b, "%s%Q, NEW.\"%w\"", i > g * 50 ? ", " : "", t->cols[i], t->cols[i]);
            sb_add(&b, "))");
        }
        sb_add(&b, "); ");
        sb_add(&b, mark, t->name, "NEW");
        sb_add(&b, " END;");
        /* the id never changes */
        sb_add(&b,
               "CREATE TRIGGER \"ferry_id_%w\" BEFORE UPDATE OF id ON \"%w\" WHEN NEW.id IS "
               "NOT OLD.id BEGIN SELECT RAISE(ABORT, 'cannot change the id of a synced row');"
               " END;",
               t->name, t->name);
        /* UPDATE -> PATCH with the changed columns only; an update changing nothing is no op */
        if (t->ncols > 0) {
            sb_add(&b,
                   "CREATE TRIGGER \"ferry_upd_%w\" AFTER UPDATE ON \"%w\" WHEN NOT "
                   "ferry_applying() AND (",
                   t->name, t->name);
            for (int i = 0; i < t->ncols; i++)
                sb_add(&b, "%sNEW.\"%w\" IS NOT OLD.\"%w\"", i ? " OR " : "", t->cols[i],
                       t->cols[i]);
            sb_add(&b,
                   ") BEGIN INSERT INTO ferry_crud(tx_id, op, type, row_id, metadata, old, data) "
                   "VALUES (ferry_txid(), 'PATCH', %Q, NEW.id, %s, ",
                   t->name, t->track_metadata ? "NEW._metadata" : "NULL");
            /* old: the changed columns' previous values (track_previous, else NULL); data: their
             * new values */
            if (!t->track_previous) sb_add(&b, "NULL, ");
            for (int pass = t->track_previous ? 0 : 1; pass < 2; pass++) {
                const char *row = pass == 0 ? "OLD" : "NEW";
                sb_add(&b, "%s(SELECT json_group_object(k, v) FROM (",
                       pass == 1 && t->track_previous ? ", " : "");
                for (int i = 0; i < t->ncols; i++)
                    sb_add(&b,
                           "%sSELECT %Q AS k, %s.\"%w\" AS v WHERE NEW.\"%w\" IS NOT OLD.\"%w\"",
                           i ? " UNION ALL " : "", t->cols[i], row, t->cols[i], t->cols[i],
                           t->cols[i]);
                sb_add(&b, "))");
            }
            sb_add(&b, "); ");
            sb_add(&b, mark, t->name, "NEW");
            sb_add(&b, " END;");
        }
        sb_add(&b,
               "CREATE TRIGGER \"ferry_del_%w\" AFTER DELETE ON \"%w\" WHEN NOT "
               "ferry_applying() BEGIN INSERT INTO ferry_crud(tx_id, op, type, row_id, data) "
               "VALUES (ferry_txid(), 'DELETE', %Q, OLD.id, NULL); ",
               t->name, t->name, t->name);
        sb_add(&b, mark, t->name, "OLD");
        sb_add(&b, " END;");
    }
    if (b.failed) {
        free(b.p);
        return FERRY_ENOMEM;
    }
    char what[160];
    snprintf(what, sizeof what, "migrate table \"%s\"", t->name);
    rc = exec_sql(c, b.p, err, what);
    free(b.p);
    return rc;
}

static void free_tables(ferry_db_t *db)
{
    for (int i = 0; i < db->ntables; i++) {
        ferry_tdef_t *t = &db->tables[i];
        free(t->name);
        for (int k = 0; k < t->ncols; k++)
            free(t->cols[k]);
        free(t->cols);
        free(t->types);
    }
    db->ntables = 0;
}

static int copy_schema(ferry_db_t *db, const ferry_schema_t *schema, ferry_error_t *err)
{
    if (!schema || !schema->tables) {
        ferry__seterr(err, FERRY_EINVAL, "a schema with at least one table is required");
        return FERRY_EINVAL;
    }
    for (const ferry_table_t *src = schema->tables; src->name; src++) {
        if (db->ntables == FERRY_MAX_TABLES) {
            ferry__seterr(err, FERRY_EINVAL, "too many tables: at most %d", FERRY_MAX_TABLES);
            return FERRY_EINVAL;
        }
        if (!*src->name || strncmp(src->name, "ferry_", 6) == 0 ||
            strncmp(src->name, "sqlite_", 7) == 0 || ferry__table_index(db, src->name) >= 0) {
            ferry__seterr(err, FERRY_EINVAL, "invalid table name \"%s\"", src->name);
            return FERRY_EINVAL;
        }
        ferry_tdef_t *t = &db->tables[db->ntables++];
        memset(t, 0, sizeof *t);
        int n = 0;
        while (src->columns && src->columns[n].name)
            n++;
        t->name = strdup(src->name);
        t->cols = calloc((size_t)n + 1, sizeof *t->cols);
        t->types = calloc((size_t)n + 1, sizeof *t->types);
        t->local_only = src->local_only;
        t->track_previous = src->track_previous && !src->local_only;
        t->track_metadata = src->track_metadata && !src->local_only;
        if (!t->name || !t->cols || !t->types) return FERRY_ENOMEM;
        for (int i = 0; i < n; i++) {
            const ferry_column_t *col = &src->columns[i];
            if (!*col->name || strcmp(col->name, "id") == 0 || col->type < FERRY_TEXT ||
                col->type > FERRY_REAL) {
                ferry__seterr(err, FERRY_EINVAL, "invalid column \"%s\" in table \"%s\"", col->name,
                              src->name);
                return FERRY_EINVAL;
            }
            for (int k = 0; k < i; k++)
                if (strcmp(t->cols[k], col->name) == 0) {
                    ferry__seterr(err, FERRY_EINVAL, "duplicate column \"%s\" in table \"%s\"",
                                  col->name, src->name);
                    return FERRY_EINVAL;
                }
            t->cols[i] = strdup(col->name);
            if (!t->cols[i]) return FERRY_ENOMEM;
            t->types[i] = col->type;
            t->ncols = i + 1;
        }
    }
    if (db->ntables == 0) {
        ferry__seterr(err, FERRY_EINVAL, "a schema with at least one table is required");
        return FERRY_EINVAL;
    }
    return 0;
}

/* ---- watch thread -------------------------------------------------------------------------- */

static void *watch_main(void *arg)
{
    ferry_db_t *db = arg;
    pthread_mutex_lock(&db->mu);
    for (;;) {
        while (!db->watch_stop && db->changed == 0)
            pthread_cond_wait(&db->cond, &db->mu);
        if (db->watch_stop) break;
        uint64_t ch = db->changed;
        db->changed = 0;
        /* deliver to each watch; the list may change while a callback runs (unlocked), so
         * restart from the head after each call and skip watches already served */
        int served[256];
        int nserved = 0;
        for (;;) {
            ferry_watch_t *w = db->watches;
            for (; w; w = w->next) {
                int done = 0;
                for (int k = 0; k < nserved; k++)
                    done |= served[k] == w->id;
                if (!done && (w->mask & ch)) break;
            }
            if (!w || nserved == 256) break;
            served[nserved++] = w->id;
            const char *names[FERRY_MAX_TABLES + 1];
            size_t n = 0;
            for (int i = 0; i < db->ntables; i++)
                if ((w->mask & ch) & ((uint64_t)1 << i)) names[n++] = db->tables[i].name;
            names[n] = NULL;
            ferry_watch_cb cb = w->cb;
            void *ud = w->ud;
            db->in_watch_id = w->id;
            pthread_mutex_unlock(&db->mu);
            cb(ud, names, n);
            pthread_mutex_lock(&db->mu);
            db->in_watch_id = 0;
            pthread_cond_broadcast(&db->cond);
        }
    }
    pthread_mutex_unlock(&db->mu);
    return NULL;
}

int ferry_watch(ferry_db_t *db, const char *const *tables, ferry_watch_cb cb, void *ud)
{
    if (!db || !tables || !cb) return FERRY_EINVAL;
    uint64_t mask = 0;
    for (size_t i = 0; tables[i]; i++) {
        int ti = ferry__table_index(db, tables[i]);
        if (ti < 0) return FERRY_EINVAL;
        mask |= (uint64_t)1 << ti;
    }
    ferry_watch_t *w = calloc(1, sizeof *w);
    if (!w) return FERRY_ENOMEM;
    w->mask = mask;
    w->cb = cb;
    w->ud = ud;
    pthread_mutex_lock(&db->mu);
    w->id = ++db->next_watch_id;
    w->next = db->watches;
    db->watches = w;
    pthread_mutex_unlock(&db->mu);
    return w->id;
}

void ferry_unwatch(ferry_db_t *db, int id)
{
    if (!db) return;
    pthread_mutex_lock(&db->mu);
    for (ferry_watch_t **pp = &db->watches; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            ferry_watch_t *w = *pp;
            *pp = w->next;
            free(w);
            break;
        }
    if (!pthread_equal(pthread_self(), db->watch_thread))
        while (db->in_watch_id == id)
            pthread_cond_wait(&db->cond, &db->mu);
    pthread_mutex_unlock(&db->mu);
}

/* ---- open / close -------------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ferry_open(const char *path, const ferry_schema_t *schema, ferry_db_t **out, ferry_error_t *err)
{
    if (err) {
        err->code = 0;
        err->message[0] = 0;
    }
    if (!out) return FERRY_EINVAL;
    *out = NULL;
    if (!path || !*path) {
        ferry__seterr(err, FERRY_EINVAL, "a database path is required");
        return FERRY_EINVAL;
    }
    /* DROP COLUMN (the oplog migration) and SQLITE_VTAB_DIRECTONLY (ferry_ops) */
    if (sqlite3_libversion_number() < 3035000) {
        ferry__seterr(err, FERRY_ESQLITE, "libferry needs SQLite 3.35 or newer (this is %s)",
                      sqlite3_libversion());
        return FERRY_ESQLITE;
    }
    pthread_once(&curl_once, curl_init_once);
    ferry_db_t *db = calloc(1, sizeof *db);
    if (!db) {
        ferry__seterr(err, FERRY_ENOMEM, "out of memory");
        return FERRY_ENOMEM;
    }
    pthread_mutex_init(&db->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->cond, &ca);
    pthread_condattr_destroy(&ca);
    db->sync.applied_cp = -1;
    int rc = FERRY_ENOMEM;
    db->path = strdup(path);
    if (!db->path) goto fail;
    if ((rc = copy_schema(db, schema, err)) != 0) goto fail;
    if ((rc = ferry__open_conn(path, &db->app, &db->app_applying, err)) != 0) goto fail;
    if (sqlite3_create_function(db->app, "ferry_txid", 0, SQLITE_UTF8, db, fn_txid, NULL, NULL) !=
        SQLITE_OK) {
        rc = FERRY_ESQLITE;
        goto fail;
    }
    if ((rc = exec_sql(db->app, "BEGIN IMMEDIATE", err, "start the schema migration")) != 0)
        goto fail;
    if ((rc = migrate_oplog(db->app, err)) != 0) goto rollback;
    if ((rc = exec_sql(db->app, OWN_TABLES, err, "create Ferry's tables")) != 0) goto rollback;
    if ((rc = migrate_crud(db->app, err)) != 0) goto rollback;
    if ((rc = enable_subkey_prefixes(db->app, err)) != 0) goto rollback;
    /* the key index (made again here when a first sync without it was interrupted) */
    if (ferry__oplog_index(db->app) != SQLITE_OK) {
        ferry__seterr(err, FERRY_ESQLITE, "could not index the oplog: %s", sqlite3_errmsg(db->app));
        rc = FERRY_ESQLITE;
        goto rollback;
    }
    /* client id */
    {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db->app, "SELECT value FROM ferry_kv WHERE key = 'client_id'", -1,
                               &st, NULL) != SQLITE_OK) {
            rc = FERRY_ESQLITE;
            goto rollback;
        }
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 0) == 36)
            memcpy(db->client_id, sqlite3_column_text(st, 0), 37);
        sqlite3_finalize(st);
        if (!db->client_id[0]) {
            ferry_uuid(db->client_id);
            char *q = sqlite3_mprintf("INSERT OR REPLACE INTO ferry_kv VALUES ('client_id', %Q)",
                                      db->client_id);
            rc = q ? exec_sql(db->app, q, err, "store the client id") : FERRY_ENOMEM;
            sqlite3_free(q);
            if (rc) goto rollback;
        }
    }
    const ferry_table_t *src = schema->tables;
    for (int i = 0; i < db->ntables; i++, src++) {
        int added = 0;
        if ((rc = migrate_table(db, &db->tables[i], src, &added, err)) != 0) goto rollback;
        if (added && !db->tables[i].local_only) {
            db->app_applying = 1;
            rc = ferry__republish_type(db, db->app, db->tables[i].name);
            db->app_applying = 0;
        }
        if (rc) {
            ferry__seterr(err, rc, "could not fill table \"%s\" from synced data: %s",
                          db->tables[i].name, sqlite3_errmsg(db->app));
            goto rollback;
        }
    }
    if ((rc = exec_sql(db->app, "COMMIT", err, "commit the schema migration")) != 0) goto rollback;
    {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db->app, "SELECT ifnull(max(tx_id), 0) FROM ferry_crud", -1, &st,
                               NULL) == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW) db->next_tx = sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
        }
        db->status.last_synced_at = ferry__kv_get_int(db->app, "last_synced_at", 0);
        db->status.applied_checkpoint = ferry__kv_get_int(db->app, "applied_checkpoint", 0);
        db->synced_ever = db->status.last_synced_at > 0;
    }
    sqlite3_update_hook(db->app, on_update, db);
    sqlite3_commit_hook(db->app, on_commit, db);
    sqlite3_rollback_hook(db->app, on_rollback, db);
    if (pthread_create(&db->watch_thread, NULL, watch_main, db) != 0) {
        ferry__seterr(err, FERRY_ENOMEM, "could not start the watch thread");
        rc = FERRY_ENOMEM;
        goto fail;
    }
    db->watch_running = 1;
    *out = db;
    return 0;
rollback:
    sqlite3_exec(db->app, "ROLLBACK", NULL, NULL, NULL);
fail:
    if (rc == FERRY_ENOMEM && err && !err->message[0]) ferry__seterr(err, rc, "out of memory");
    if (rc == FERRY_ESQLITE && err && !err->message[0])
        ferry__seterr(err, rc, "could not open database \"%s\": %s", path,
                      db->app ? sqlite3_errmsg(db->app) : "unknown error");
    ferry_close(db);
    return rc;
}

void ferry_close(ferry_db_t *db)
{
    if (!db) return;
    ferry_disconnect(db);
    if (db->watch_running) {
        pthread_mutex_lock(&db->mu);
        db->watch_stop = 1;
        pthread_cond_broadcast(&db->cond);
        pthread_mutex_unlock(&db->mu);
        pthread_join(db->watch_thread, NULL);
    }
    while (db->watches) {
        ferry_watch_t *w = db->watches;
        db->watches = w->next;
        free(w);
    }
    if (db->app) sqlite3_close_v2(db->app);
    free_tables(db);
    free(db->path);
    pthread_mutex_destroy(&db->mu);
    pthread_cond_destroy(&db->cond);
    free(db);
}

sqlite3 *ferry_sqlite(ferry_db_t *db)
{
    return db ? db->app : NULL;
}

const char *ferry_client_id(ferry_db_t *db)
{
    return db ? db->client_id : NULL;
}

int ferry_exec(ferry_db_t *db, const char *sql, ferry_error_t *err)
{
    if (!db || !sql) return FERRY_EINVAL;
    return exec_sql(db->app, sql, err, "execute statement");
}

int ferry_begin(ferry_db_t *db, ferry_error_t *err)
{
    if (!db) return FERRY_EINVAL;
    return exec_sql(db->app, "BEGIN IMMEDIATE", err, "begin a transaction");
}

int ferry_commit(ferry_db_t *db, ferry_error_t *err)
{
    if (!db) return FERRY_EINVAL;
    return exec_sql(db->app, "COMMIT", err, "commit");
}

void ferry_rollback(ferry_db_t *db)
{
    if (db && !sqlite3_get_autocommit(db->app)) sqlite3_exec(db->app, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- upload queue -------------------------------------------------------------------------- */

int64_t ferry_queue_length(ferry_db_t *db)
{
    if (!db) return FERRY_EINVAL;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db->app, "SELECT count(*) FROM ferry_crud", -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : FERRY_ESQLITE;
    sqlite3_finalize(st);
    return n;
}

static char *dup_col(sqlite3_stmt *st, int i)
{
    const unsigned char *s = sqlite3_column_text(st, i);
    return s ? strdup((const char *)s) : NULL;
}

int ferry_queue_peek(ferry_db_t *db, size_t max, ferry_crud_t **out, size_t *n)
{
    if (!db || !out || !n) return FERRY_EINVAL;
    *out = NULL;
    *n = 0;
    if (max == 0) return 0;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(
            db->app,
            "SELECT id, tx_id, op, type, row_id, data, old, metadata FROM ferry_crud "
            "ORDER BY id LIMIT ?",
            -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(max > INT64_MAX ? INT64_MAX : max));
    ferry_crud_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0, s;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            ferry_crud_t *nv = realloc(v, cap * sizeof *v);
            if (!nv) {
                rc = FERRY_ENOMEM;
                break;
            }
            v = nv;
        }
        ferry_crud_t *e = &v[cnt];
        memset(e, 0, sizeof *e);
        e->op_id = sqlite3_column_int64(st, 0);
        e->tx_id = sqlite3_column_int64(st, 1);
        snprintf(e->op, sizeof e->op, "%s", (const char *)sqlite3_column_text(st, 2));
        e->type = dup_col(st, 3);
        e->id = dup_col(st, 4);
        e->data = dup_col(st, 5);
        e->old = dup_col(st, 6);
        e->metadata = dup_col(st, 7);
        cnt++;
        if (!e->type || !e->id || (!e->data && sqlite3_column_type(st, 5) != SQLITE_NULL) ||
            (!e->old && sqlite3_column_type(st, 6) != SQLITE_NULL) ||
            (!e->metadata && sqlite3_column_type(st, 7) != SQLITE_NULL)) {
            rc = FERRY_ENOMEM;
            break;
        }
    }
    if (!rc && s != SQLITE_DONE) rc = FERRY_ESQLITE;
    sqlite3_finalize(st);
    if (rc) {
        ferry_crud_free(v, cnt);
        return rc;
    }
    *out = v;
    *n = cnt;
    return 0;
}

int ferry_write_conflicts(ferry_db_t *db, char **json)
{
    if (!db || !json) return FERRY_EINVAL;
    *json = NULL;
    sqlite3_stmt *st;
    /* the newest op of each conflict row (a row may be in several buckets) */
    if (sqlite3_prepare_v2(
            db->app,
            "SELECT json_group_array(json(data)) FROM (SELECT data, max(op_id) FROM "
            "ferry_oplog WHERE row_type = 'ferry_write_conflicts' AND data IS NOT "
            "NULL GROUP BY row_id ORDER BY json_extract(data, '$.created_at'), row_id)",
            -1, &st, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    int rc = sqlite3_step(st) == SQLITE_ROW ? 0 : FERRY_ESQLITE;
    if (!rc) {
        const char *s = (const char *)sqlite3_column_text(st, 0);
        *json = strdup(s ? s : "[]");
        if (!*json) rc = FERRY_ENOMEM;
    }
    sqlite3_finalize(st);
    return rc;
}

void ferry_crud_free(ferry_crud_t *entries, size_t n)
{
    if (!entries) return;
    for (size_t i = 0; i < n; i++) {
        free(entries[i].type);
        free(entries[i].id);
        free(entries[i].data);
        free(entries[i].old);
        free(entries[i].metadata);
    }
    free(entries);
}

/* ---- status -------------------------------------------------------------------------------- */

void ferry_get_status(ferry_db_t *db, ferry_status_t *st)
{
    if (!db || !st) return;
    pthread_mutex_lock(&db->mu);
    *st = db->status;
    pthread_mutex_unlock(&db->mu);
}

void ferry__status_changed(ferry_db_t *db)
{
    ferry_status_t st;
    pthread_mutex_lock(&db->mu);
    st = db->status;
    pthread_cond_broadcast(&db->cond);
    pthread_mutex_unlock(&db->mu);
    if (db->opt.on_status) db->opt.on_status(db->opt.ud, &st);
}
