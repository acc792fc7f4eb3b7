/* ferry_oplog.c -- the local side of the sync protocol: lines, buckets, the oplog, checksums
 *
 * Fed one NDJSON line at a time by the sync thread (ferry_sync.c) or directly by unit tests,
 * this file keeps the per-bucket oplog and checksums and has validated checkpoints published
 * into the app's tables (ferry_publish.c). No network here. Semantics follow protocol §2.3
 * (ops), §2.4 (validation) and §2.7 (write checkpoints):
 *
 *   PUT     delete the stored op with the same key (type/id/subkey) in the bucket, moving its
 *           checksum from op_checksum to add_checksum; store the op; op_checksum += checksum
 *   REMOVE  the same deletion; add_checksum += checksum; the row is re-evaluated
 *   MOVE    add_checksum += checksum
 *   CLEAR   every row of the bucket re-evaluated, all its ops deleted, add_checksum = checksum,
 *           op_checksum = 0
 *
 * A bucket is valid when (add_checksum + op_checksum) mod 2^32 equals the checkpoint's checksum.
 * Publishing re-evaluates every row in ferry_updated: the stored PUT with the highest op id
 * across all buckets wins; no PUT left means the row is deleted. A bucket created since the
 * last publish has one whole-bucket mark (row_type = row_id = '') instead of one mark per PUT,
 * and is published set-based (publish_whole, ferry_publish.c). Invariants:
 *
 *   1. Data lines are applied whole: one line, or several consecutive ones (the stream's apply
 *      thread batches up to batch_ops ops or 250 ms per transaction), never part of one, so a
 *      bucket's stored position always matches its stored ops. A publish is one transaction,
 *      so the app never sees a half-applied checkpoint.
 *   2. A full checkpoint (and a partial one of priority > 0) is published only when ferry_crud is
 *      empty and the target write checkpoint (kv "target", absent = no gate) is <= the
 *      checkpoint's write_checkpoint; the check and the publish share one write transaction, so
 *      a local write cannot slip in between. Priority 0 is published regardless.
 *   3. On a checksum mismatch the failing buckets are deleted (their rows marked) and the stream
 *      iteration ends; the next request omits them, so the server sends them again from 0.
 *   4. After a full checkpoint validates, every bucket's last_op becomes its last_op_id, the
 *      resume position for the next connection (protocol §2.4).
 *
 * Line handling state (per stream iteration, in ferry_sync_t):
 *
 *   (no checkpoint) --checkpoint--> TRACKING --data--> (oplog grows)
 *   TRACKING --checkpoint_diff--> TRACKING (buckets replaced/removed, write_checkpoint replaced)
 *   TRACKING --partial_checkpoint_complete p--> validate prio <= p --> publish_rows(p)
 *   TRACKING --checkpoint_complete--> validate all --ok--> try_publish()  (pending when blocked)
 *                                                  --mismatch--> drop_bucket(), RECONNECT
 *   pending --ferry__publish_try_pending (after an upload)--> publish
 *
 * The sync engine is split by job; this file has the lines, the buckets and the oplog, and
 * calls the others (what they share is in ferry_oplog.h):
 *
 *   ferry_scan.c     the data-line scanner: a line's ops without a jansson tree (no database)
 *   ferry_ops.c      ferry_ops(?): a batch of PUTs as a table, stored with one statement
 *   ferry_publish.c  publishing: the marked rows of a validated checkpoint into the app's tables
 *   ferry_rows.c     publishing a large new bucket with a second reader: ferry_rows(?)
 *   ferry_jrow.c     a row's columns read from its JSON in C: ferry_jok, ferry_col
 */
#include "ferry_oplog.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *SQL[S_NSTMT] = {
    [S_BUCKET_GET] =
        "SELECT id, add_checksum, op_checksum, count FROM ferry_buckets WHERE name = ?",
    [S_BUCKET_INS] = "INSERT INTO ferry_buckets(name, priority) VALUES (?, ?)",
    [S_BUCKET_SET] = "UPDATE ferry_buckets SET add_checksum = ?, op_checksum = ?, count = ?, "
                     "last_op = ? WHERE id = ?",
    [S_OP_DEL_KEY] = "DELETE FROM ferry_oplog WHERE row_type = ?4 AND row_id = ?5 AND "
                     "bucket = ?1 AND subkey = ?2 RETURNING hash",
    [S_OP_INS] = "INSERT INTO ferry_oplog(bucket, subkey, op_id, row_type, row_id, data, hash) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?)",
    [S_MARK] = "INSERT OR IGNORE INTO ferry_updated(row_type, row_id, bucket) VALUES (?, ?, ?)",
    [S_CLEAR_MARK] = "INSERT OR IGNORE INTO ferry_updated(row_type, row_id, bucket) "
                     "SELECT row_type, row_id, ?2 FROM ferry_oplog WHERE bucket = ?1",
    [S_CLEAR_DEL] = "DELETE FROM ferry_oplog WHERE bucket = ?",
    [S_BUCKET_DROP] = "DELETE FROM ferry_buckets WHERE id = ?",
    [S_BUCKET_PRIO] = "UPDATE ferry_buckets SET priority = ? WHERE name = ?",
    [S_LAST_OP_ALL] = "UPDATE ferry_buckets SET last_op = ?",
    [S_CRUD_COUNT] = "SELECT count(*) FROM ferry_crud",
    [S_LIST] =
        "SELECT id, name, add_checksum, op_checksum, last_op FROM ferry_buckets ORDER BY name",
    [S_WHOLE_GET] =
        "SELECT 1 FROM ferry_updated WHERE row_type = '' AND row_id = '' AND bucket = ?",
    [S_WHOLE_SET] =
        "INSERT OR IGNORE INTO ferry_updated(row_type, row_id, bucket) VALUES ('', '', ?)",
    [S_OP_GET] = "SELECT op_id FROM ferry_oplog WHERE row_type = ?4 AND row_id = ?5 AND "
                 "bucket = ?1 AND subkey = ?2",
    [S_OP_INS_MANY] = "INSERT OR IGNORE INTO ferry_oplog(bucket, subkey, op_id, row_type, row_id, "
                      "data, hash) SELECT ?1, subkey, op_id, row_type, row_id, data, hash FROM "
                      "ferry_ops(?2)",
};

/* ---- small parsers (unit-tested) ------------------------------------------------------------ */

int ferry__ck_parse(const json_t *v, uint32_t *out)
{
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < -2147483648LL || i > 4294967295LL) return -1;
        *out = (uint32_t)(int64_t)i;
        return 0;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= -2147483648.0 && d <= 4294967295.0) || floor(d) != d) return -1;
        *out = (uint32_t)(int64_t)d;
        return 0;
    }
    return -1;
}

int ferry__parse_id(const json_t *v, int64_t *out)
{
    if (!json_is_string(v)) return -1;
    const char *s = json_string_value(v);
    if (!*s) return -1;
    int64_t n = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        if (n > (INT64_MAX - (*s - '0')) / 10) return -1;
        n = n * 10 + (*s - '0');
    }
    *out = n;
    return 0;
}

/* ---- setup ---------------------------------------------------------------------------------- */

static void sk_forget(ferry_sync_t *s);

/* The sync connection checkpoints the WAL itself: this hook replaces SQLite's automatic
 * checkpoint, with the same PASSIVE checkpoint at WAL_CHECKPOINT_FRAMES (s->checkpoint_frames
 * when set), except after a publish: that checkpoint (a first sync's: 0.3 s for 1,000,000 rows)
 * waits until the app was told (ferry__oplog_checkpoint). Durability is the same either way: a
 * checkpoint only copies committed pages from the WAL into the database file. */
#define WAL_CHECKPOINT_FRAMES 8192

static int checkpoint_frames(const ferry_sync_t *s)
{
    return s->checkpoint_frames > 0 ? s->checkpoint_frames : WAL_CHECKPOINT_FRAMES;
}

static int wal_hook(void *ud, sqlite3 *c, const char *dbname, int frames)
{
    ferry_sync_t *s = ud;
    s->wal_frames = frames;
    if (!s->defer_checkpoint && frames >= checkpoint_frames(s)) {
        sqlite3_wal_checkpoint_v2(c, dbname, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        s->wal_frames = 0;
    }
    return SQLITE_OK;
}

void ferry__oplog_checkpoint(ferry_sync_t *s)
{
    if (s->index_due && !s->in_tx) {
        /* a first sync's publish is done and told: the key index now (on failure, whatever
         * needs it next builds it) */
        s->index_due = 0;
        /* SQLite's sorter for the index takes as much memory as the page cache may: 4 MiB
         * instead of 16 (the peak RSS of a 1,000,000-op first sync 46 -> 34 MiB, the build
         * no slower) */
        sqlite3_exec(s->conn, "PRAGMA cache_size = -4096", NULL, NULL, NULL);
        if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK) {
            s->bulk = -1;
            int rc = ferry__oplog_need_index(s);
            sqlite3_exec(s->conn, rc ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
            s->bulk = -1;
        }
        sqlite3_exec(s->conn, "PRAGMA cache_size = -16384", NULL, NULL, NULL);
    }
    if (s->wal_frames < checkpoint_frames(s)) return;
    sqlite3_wal_checkpoint_v2(s->conn, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    s->wal_frames = 0;
}

int ferry__oplog_init(ferry_db_t *db, ferry_sync_t *s, sqlite3 *conn)
{
    (void)db;
    memset(s, 0, sizeof *s);
    s->conn = conn;
    /* Downloads insert into two B-trees per op (the oplog and its key index) in op order,
     * which is not key order: a larger page cache keeps their pages from being read
     * back again and again, and checkpointing the WAL less often writes a page that changed
     * many times once (16 MiB at most: 64 MiB was not measurably faster and cost 60 MiB of
     * RSS). */
    sqlite3_exec(conn, "PRAGMA cache_size = -16384", NULL, NULL, NULL);
    sqlite3_wal_hook(conn, wal_hook, s);
    s->applied_cp = -1;
    s->cp_write_cp = -1;
    s->jrow = ferry__jrow_new();
    if (!s->jrow || sqlite3_create_module(conn, "ferry_ops", &ferry__ops_module, NULL) ||
        sqlite3_create_module(conn, "ferry_rows", &ferry__rows_module, NULL) ||
        sqlite3_create_function(conn, "ferry_jok", 1, SQLITE_UTF8, s->jrow, ferry__jrow_fn_jok,
                                NULL, NULL) ||
        sqlite3_create_function(conn, "ferry_col", 2, SQLITE_UTF8, s->jrow, ferry__jrow_fn_col,
                                NULL, NULL)) {
        snprintf(s->errmsg, sizeof s->errmsg, "could not register the publishing functions");
        ferry__oplog_free(s);
        return FERRY_ENOMEM;
    }
    for (int i = 0; i < S_NSTMT; i++)
        if (sqlite3_prepare_v3(conn, SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            snprintf(s->errmsg, sizeof s->errmsg, "could not prepare sync statements: %s",
                     sqlite3_errmsg(conn));
            ferry__oplog_free(s);
            return FERRY_ESQLITE;
        }
    return 0;
}

static void clear_buckets(ferry_sync_t *s)
{
    for (size_t i = 0; i < s->nbuckets; i++)
        free(s->buckets[i].name);
    s->nbuckets = 0;
}

void ferry__oplog_free(ferry_sync_t *s)
{
    if (s->conn) ferry__oplog_flush(s);
    for (int i = 0; i < S_NSTMT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    clear_buckets(s);
    free(s->buckets);
    s->buckets = NULL;
    s->capbuckets = 0;
    ferry__scan_free(&s->scan);
    sk_forget(s);
    ferry__jrow_free(s->jrow);
    s->jrow = NULL;
    free(s->sub_ids);
    s->sub_ids = NULL;
    s->nsub_ids = 0;
}

void ferry__oplog_reset_connection(ferry_sync_t *s)
{
    clear_buckets(s);
    s->have_cp = 0;
    s->pending = 0;
    s->complete_seen = 0;
    s->cp_write_cp = -1;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ferry__oplog_flush(ferry_sync_t *s)
{
    if (!s->in_tx) return 0;
    s->in_tx = 0;
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(s->errmsg, sizeof s->errmsg, "could not commit data lines: %s",
                 sqlite3_errmsg(s->conn));
        sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
        return FERRY_ESQLITE;
    }
    return 0;
}

int ferry__oplog_flush_due(ferry_sync_t *s)
{
    return s->in_tx && mono_ms() - s->tx_start >= 250 ? ferry__oplog_flush(s) : 0;
}

int ferry__oplog_sqlerr(ferry_sync_t *s, const char *what)
{
    s->in_tx = 0;
    snprintf(s->errmsg, sizeof s->errmsg, "could not %s: %s", what, sqlite3_errmsg(s->conn));
    sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
    return FERRY_ESQLITE;
}

static int proto(ferry_sync_t *s, const char *fmt, const char *arg)
{
    snprintf(s->errmsg, sizeof s->errmsg, fmt, arg);
    return FERRY_EPROTO;
}

/* ---- buckets ------------------------------------------------------------------------------- */

/* Deletes a local bucket: its rows are marked for re-evaluation, its ops and row removed.
 * Runs inside a transaction. */
static int drop_bucket(ferry_sync_t *s, int64_t id)
{
    s->bulk = -1;
    if (ferry__oplog_need_index(s)) return -1;
    sqlite3_bind_int64(s->st[S_CLEAR_MARK], 1, id);
    sqlite3_bind_int64(s->st[S_CLEAR_MARK], 2, 0);
    sqlite3_bind_int64(s->st[S_CLEAR_DEL], 1, id);
    sqlite3_bind_int64(s->st[S_BUCKET_DROP], 1, id);
    if (ferry__step_done(s->st[S_CLEAR_MARK]) || ferry__step_done(s->st[S_CLEAR_DEL]) ||
        ferry__step_done(s->st[S_BUCKET_DROP]))
        return -1;
    return 0;
}

static ferry_cbucket_t *find_cbucket(ferry_sync_t *s, const char *name)
{
    for (size_t i = 0; i < s->nbuckets; i++)
        if (strcmp(s->buckets[i].name, name) == 0) return &s->buckets[i];
    return NULL;
}

/* Adds or replaces a bucket of the tracked checkpoint from a JSON entry. */
static int track_bucket(ferry_sync_t *s, json_t *e)
{
    const char *name = json_string_value(json_object_get(e, "bucket"));
    uint32_t ck;
    if (!name) return proto(s, "checkpoint bucket without a name%s", "");
    if (ferry__ck_parse(json_object_get(e, "checksum"), &ck))
        return proto(s, "invalid checksum for bucket \"%s\"", name);
    json_t *pr = json_object_get(e, "priority");
    int prio = json_is_integer(pr) ? (int)json_integer_value(pr) : 3;
    if (prio < 0 || prio > 3) prio = 3;
    json_t *cn = json_object_get(e, "count");
    ferry_cbucket_t *b = find_cbucket(s, name);
    if (!b) {
        if (s->nbuckets == s->capbuckets) {
            size_t cap = s->capbuckets ? s->capbuckets * 2 : 16;
            ferry_cbucket_t *nb = realloc(s->buckets, cap * sizeof *nb);
            if (!nb) return FERRY_ENOMEM;
            s->buckets = nb;
            s->capbuckets = cap;
        }
        b = &s->buckets[s->nbuckets];
        b->name = strdup(name);
        if (!b->name) return FERRY_ENOMEM;
        s->nbuckets++;
    }
    b->checksum = ck;
    b->priority = prio;
    b->count = json_is_integer(cn) ? json_integer_value(cn) : 0;
    sqlite3_bind_int(s->st[S_BUCKET_PRIO], 1, prio);
    sqlite3_bind_text(s->st[S_BUCKET_PRIO], 2, name, -1, SQLITE_STATIC);
    if (ferry__step_done(s->st[S_BUCKET_PRIO]))
        return ferry__oplog_sqlerr(s, "store a bucket priority");
    return 0;
}

static void untrack_bucket(ferry_sync_t *s, const char *name)
{
    ferry_cbucket_t *b = find_cbucket(s, name);
    if (!b) return;
    free(b->name);
    *b = s->buckets[--s->nbuckets];
}

/* Progress: expected ops = per bucket, its count minus what is stored locally. */
static void reset_progress(ferry_db_t *db, ferry_sync_t *s)
{
    int64_t tot[4] = {0};
    for (size_t i = 0; i < s->nbuckets; i++) {
        ferry_cbucket_t *b = &s->buckets[i];
        int64_t have = 0;
        sqlite3_stmt *st = s->st[S_BUCKET_GET];
        sqlite3_bind_text(st, 1, b->name, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) have = sqlite3_column_int64(st, 3);
        sqlite3_reset(st);
        if (b->count > have) tot[b->priority] += b->count - have;
    }
    pthread_mutex_lock(&db->mu);
    db->status.ops_total = 0;
    db->status.ops_downloaded = 0;
    for (int p = 0; p < 4; p++) {
        db->status.prio_total[p] = tot[p];
        db->status.prio_downloaded[p] = 0;
        db->status.ops_total += tot[p];
    }
    db->status.downloading = 1;
    pthread_mutex_unlock(&db->mu);
}

static int line_checkpoint(ferry_db_t *db, ferry_sync_t *s, json_t *cp, int diff)
{
    int64_t last;
    if (!json_is_object(cp) || ferry__parse_id(json_object_get(cp, "last_op_id"), &last))
        return proto(s, "%s line without a valid last_op_id",
                     diff ? "checkpoint_diff" : "checkpoint");
    if (diff && !s->have_cp) return proto(s, "checkpoint_diff before any checkpoint%s", "");
    json_t *wc = json_object_get(cp, "write_checkpoint");
    int64_t wcp = -1;
    if (wc && !json_is_null(wc) && ferry__parse_id(wc, &wcp))
        return proto(s, "invalid write_checkpoint%s", "");
    if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "start a transaction");
    int rc = 0;
    size_t i;
    json_t *e;
    if (!diff) {
        json_t *arr = json_object_get(cp, "buckets");
        if (!json_is_array(arr)) {
            sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
            return proto(s, "checkpoint without buckets%s", "");
        }
        clear_buckets(s);
        json_array_foreach(arr, i, e) if (!rc) rc = track_bucket(s, e);
        if (!rc) rc = ferry__subs_checkpoint(s, json_object_get(cp, "streams"));
        /* local buckets absent from a full checkpoint are deleted */
        if (!rc) {
            sqlite3_stmt *st = s->st[S_LIST];
            int64_t drop[256];
            int ndrop;
            do {
                ndrop = 0;
                while (ndrop < 256 && sqlite3_step(st) == SQLITE_ROW)
                    if (!find_cbucket(s, (const char *)sqlite3_column_text(st, 1)))
                        drop[ndrop++] = sqlite3_column_int64(st, 0);
                sqlite3_reset(st);
                for (int k = 0; k < ndrop && !rc; k++)
                    if (drop_bucket(s, drop[k])) rc = ferry__oplog_sqlerr(s, "delete a bucket");
            } while (!rc && ndrop == 256);
        }
    } else {
        json_t *up = json_object_get(cp, "updated_buckets");
        json_t *rm = json_object_get(cp, "removed_buckets");
        if (!json_is_array(up) || !json_is_array(rm)) {
            sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
            return proto(s, "checkpoint_diff without updated_buckets and removed_buckets%s", "");
        }
        json_array_foreach(up, i, e) if (!rc) rc = track_bucket(s, e);
        json_array_foreach(rm, i, e)
        {
            const char *name = json_string_value(e);
            if (!name || rc) continue;
            untrack_bucket(s, name);
            sqlite3_stmt *st = s->st[S_BUCKET_GET];
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            int64_t id = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
            sqlite3_reset(st);
            if (id >= 0 && drop_bucket(s, id)) rc = ferry__oplog_sqlerr(s, "delete a bucket");
        }
    }
    if (rc) {
        sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "commit a checkpoint");
    s->have_cp = 1;
    s->cp_last_op = last;
    s->cp_write_cp = wcp;
    s->pending = 0;
    s->complete_seen = 0;
    reset_progress(db, s);
    ferry__status_changed(db);
    return 0;
}

/* ---- data lines ---------------------------------------------------------------------------- */

static int apply_data(ferry_db_t *db, ferry_sync_t *s, const char *bname, const dop_t *ops,
                      size_t nops);

/* A data line that jansson parsed: the same checks as before the scanner existed. */
static int line_data(ferry_db_t *db, ferry_sync_t *s, json_t *d)
{
    const char *bname = json_string_value(json_object_get(d, "bucket"));
    json_t *arr = json_object_get(d, "data");
    if (!bname || !json_is_array(arr)) return proto(s, "data line without bucket or data%s", "");
    size_t n = json_array_size(arr);
    dop_t *ops = malloc((n ? n : 1) * sizeof *ops);
    if (!ops) return FERRY_ENOMEM;
    size_t i;
    json_t *op;
    json_array_foreach(arr, i, op)
    {
        dop_t *o = &ops[i];
        const char *kind = json_string_value(json_object_get(op, "op"));
        if (ferry__parse_id(json_object_get(op, "op_id"), &o->opid) || !kind ||
            ferry__ck_parse(json_object_get(op, "checksum"), &o->ck)) {
            free(ops);
            return proto(s, "invalid op in bucket \"%s\"", bname);
        }
        o->kind = ferry__op_kind(kind);
        o->type = json_string_value(json_object_get(op, "object_type"));
        o->oid = json_string_value(json_object_get(op, "object_id"));
        o->sub = json_string_value(json_object_get(op, "subkey"));
        o->data = json_string_value(json_object_get(op, "data"));
        if ((o->kind == OP_PUT || o->kind == OP_REMOVE) && (!o->type || !o->oid)) {
            free(ops);
            return proto(s, "PUT or REMOVE without object_type and object_id in \"%s\"", bname);
        }
    }
    int rc = apply_data(db, s, bname, ops, n);
    free(ops);
    return rc;
}

/* The scanner's result: offsets into the arena become pointers (ops converted in place). */
int ferry__oplog_apply_scanned(ferry_db_t *db, ferry_sync_t *s, ferry_scan_t *b)
{
    dop_off_t *in = b->ops;
    const char *a = b->arena;
    /* dop_t and dop_off_t have the same size and layout of the first three fields */
    _Static_assert(sizeof(dop_t) == sizeof(dop_off_t), "dop layout");
    dop_t *out = b->ops;
    for (size_t i = 0; i < b->nops; i++) {
        dop_off_t o = in[i];
        out[i].opid = o.opid;
        out[i].ck = o.ck;
        out[i].kind = o.kind;
        out[i].type = o.type == NOFF ? NULL : a + o.type;
        out[i].oid = o.oid == NOFF ? NULL : a + o.oid;
        out[i].sub = o.sub == NOFF ? NULL : a + o.sub;
        out[i].data = o.data == NOFF ? NULL : a + o.data;
    }
    return apply_data(db, s, a + b->bucket_off, out, b->nops);
}

/* ---- bulk: a first sync without the key index -------------------------------------------------
 *
 * The oplog's unique key index cost about half of storing an op. A first sync does not need it
 * while it lasts: when a data line creates a bucket and the oplog is empty, the index is dropped
 * (in the line's transaction), and the PUTs of new buckets (whole-bucket marks) go into the
 * table alone. A key stored twice in that time (a row the server sent again) is kept twice:
 * checksums stay right (a bucket's checksum is the sum of add_checksum and op_checksum, and a
 * replaced op only moves its checksum from one to the other), and publishing a new bucket scans
 * the oplog in rowid order, so the later op still wins. Anything that needs the index builds it
 * first, in its own transaction: an op other than PUT or MOVE, a PUT into a bucket that is not
 * new, dropping a bucket, publishing anything but new buckets that hold every op. After a
 * publish, the index is built once the app was told (ferry__oplog_checkpoint), and ferry_open
 * builds it when a first sync without it was interrupted. Building it removes the older op of
 * a key stored twice and moves its checksum to add_checksum, as a PUT would have. */

/* 1 when the oplog has no key index, 0 when it has, -1 on an SQLite error. */
int ferry__oplog_unindexed(sqlite3 *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c,
                           "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND "
                           "name = 'ferry_oplog_key'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    int r = sqlite3_step(st), n = r == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return n < 0 ? -1 : n == 0;
}

int ferry__oplog_index(sqlite3 *c)
{
    int rc = sqlite3_exec(c,
                          "CREATE UNIQUE INDEX IF NOT EXISTS ferry_oplog_key ON "
                          "ferry_oplog(row_type, row_id, bucket, subkey)",
                          NULL, NULL, NULL);
    if (rc != SQLITE_CONSTRAINT) return rc;
    /* keys stored twice: keep each key's highest op */
    return sqlite3_exec(
        c,
        "CREATE INDEX ferry_oplog_dups ON ferry_oplog(row_type, row_id, bucket, subkey, op_id);"
        "CREATE TEMP TABLE ferry_dups AS SELECT o.rowid AS r, o.bucket AS bucket, o.hash AS hash"
        " FROM ferry_oplog o WHERE EXISTS (SELECT 1 FROM ferry_oplog h WHERE"
        " h.row_type = o.row_type AND h.row_id = o.row_id AND h.bucket = o.bucket AND"
        " h.subkey = o.subkey AND (h.op_id > o.op_id OR (h.op_id = o.op_id AND"
        " h.rowid > o.rowid)));"
        "UPDATE ferry_buckets SET add_checksum = (add_checksum + d.s) % 4294967296,"
        " op_checksum = ((op_checksum - d.s) % 4294967296 + 4294967296) % 4294967296"
        " FROM (SELECT bucket, sum(hash) AS s FROM temp.ferry_dups GROUP BY bucket) d"
        " WHERE ferry_buckets.id = d.bucket;"
        "DELETE FROM ferry_oplog WHERE rowid IN (SELECT r FROM temp.ferry_dups);"
        "DROP TABLE temp.ferry_dups;"
        "DROP INDEX ferry_oplog_dups;"
        "CREATE UNIQUE INDEX ferry_oplog_key ON ferry_oplog(row_type, row_id, bucket, subkey);",
        NULL, NULL, NULL);
}

/* Builds the key index when the oplog has none (inside a transaction); 0 or -1. */
int ferry__oplog_need_index(ferry_sync_t *s)
{
    int u = s->bulk >= 0 ? s->bulk : ferry__oplog_unindexed(s->conn);
    if (u < 0) return -1;
    if (u && ferry__oplog_index(s->conn) != SQLITE_OK) return -1;
    s->bulk = 0;
    return 0;
}

/* ---- subkeys --------------------------------------------------------------------------------
 *
 * In a file that has ferry_subkeys (ferry_db.c: files whose oplog was empty when opened), a
 * subkey "<prefix>/<object_id>" is stored as the prefix's number there, as a BLOB of its decimal
 * digits ("3"), and any other subkey as its text: a BLOB never equals a TEXT, so the stored form
 * is as unique as the subkey. A server sends one prefix per source table; its first op numbers
 * it, in the op's transaction (at most FERRY_SUBKEY_PREFIXES; later prefixes stay text). The
 * numbers are read again at the start of every data-line transaction, under its write lock, so
 * a number of a rolled-back transaction is never used. Readable again in SQL as
 *   CASE typeof(subkey) WHEN 'blob' THEN (SELECT prefix FROM ferry_subkeys
 *        WHERE id = CAST(subkey AS TEXT)) || '/' || row_id ELSE subkey END
 * The key index was most of the cost of storing an op, and half of each of its entries was the
 * subkey (Ferry's "public.todos/<id>" repeats the type and id before it). */

static void sk_forget(ferry_sync_t *s)
{
    for (int i = 0; i < s->sk_n; i++)
        free(s->sk_prefix[i]);
    s->sk_n = 0;
    s->sk_last = 0;
    s->sk_loaded = 0;
}

/* Reads ferry_subkeys into s (a file without it: sk_loaded = -1). Returns 0 or -1 (SQLite). */
static int sk_load(ferry_sync_t *s)
{
    sk_forget(s);
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->conn,
                           "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND "
                           "name = 'ferry_subkeys'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    int r = sqlite3_step(st), have = r == SQLITE_ROW && sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    if (r != SQLITE_ROW) return -1;
    if (!have) {
        s->sk_loaded = -1;
        return 0;
    }
    if (sqlite3_prepare_v2(s->conn, "SELECT id, prefix FROM ferry_subkeys ORDER BY id", -1, &st,
                           NULL) != SQLITE_OK)
        return -1;
    while ((r = sqlite3_step(st)) == SQLITE_ROW && s->sk_n < FERRY_SUBKEY_PREFIXES) {
        int id = sqlite3_column_int(st, 0);
        const char *p = (const char *)sqlite3_column_text(st, 1);
        size_t len = (size_t)sqlite3_column_bytes(st, 1);
        if (id < 1 || id > FERRY_SUBKEY_PREFIXES || !p) continue; /* not ours: never used */
        if (!(s->sk_prefix[s->sk_n] = malloc(len + 1))) break;
        memcpy(s->sk_prefix[s->sk_n], p, len + 1);
        s->sk_len[s->sk_n] = len;
        s->sk_id[s->sk_n++] = id;
    }
    sqlite3_finalize(st);
    if (r != SQLITE_ROW && r != SQLITE_DONE) return sk_forget(s), -1;
    if (r == SQLITE_ROW && s->sk_n < FERRY_SUBKEY_PREFIXES) return sk_forget(s), -1; /* ENOMEM */
    s->sk_loaded = 1;
    return 0;
}

/* The stored form of op's subkey into *k (numbering its prefix when it is new and there is room).
 * Call inside the data-line transaction. Returns 0 or -1 (SQLite error). */
static int sk_encode(ferry_sync_t *s, const dop_t *op, skey_t *k)
{
    k->n = 0;
    if (!op->sub || !op->oid) return 0;
    if (!s->sk_loaded && sk_load(s)) return -1;
    if (s->sk_loaded < 0) return 0;
    size_t sl = strlen(op->sub), ol = strlen(op->oid);
    if (sl <= ol || op->sub[sl - ol - 1] != '/' || memcmp(op->sub + sl - ol, op->oid, ol) != 0)
        return 0;
    size_t pl = sl - ol - 1;
    int i = s->sk_last;
    if (i >= s->sk_n || s->sk_len[i] != pl || memcmp(s->sk_prefix[i], op->sub, pl) != 0)
        for (i = 0; i < s->sk_n; i++)
            if (s->sk_len[i] == pl && memcmp(s->sk_prefix[i], op->sub, pl) == 0) break;
    if (i == s->sk_n) {
        /* every number in use is in s (read under this transaction's write lock): a new one */
        if (s->sk_n >= FERRY_SUBKEY_PREFIXES) return 0;
        char *p = malloc(pl + 1);
        if (!p) return -1;
        memcpy(p, op->sub, pl);
        p[pl] = 0;
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(s->conn, "INSERT INTO ferry_subkeys(prefix) VALUES (?)", -1, &st,
                               NULL) != SQLITE_OK) {
            free(p);
            return -1;
        }
        sqlite3_bind_text(st, 1, p, (int)pl, SQLITE_STATIC);
        int r = sqlite3_step(st);
        sqlite3_finalize(st);
        int64_t id = sqlite3_last_insert_rowid(s->conn);
        if (r != SQLITE_DONE || id < 1 || id > FERRY_SUBKEY_PREFIXES) {
            free(p);
            return r == SQLITE_DONE ? 0 : -1; /* a number out of range: text from now on */
        }
        s->sk_prefix[i] = p;
        s->sk_len[i] = pl;
        s->sk_id[i] = (int)id;
        s->sk_n++;
    }
    s->sk_last = i;
    int id = s->sk_id[i]; /* 1 ... 255: up to three digits */
    k->n = 0;
    if (id >= 100) k->b[k->n++] = (char)('0' + id / 100);
    if (id >= 10) k->b[k->n++] = (char)('0' + id / 10 % 10);
    k->b[k->n++] = (char)('0' + id % 10);
    return 0;
}

/* Binds op's columns to st at parameter offset off (S_OP_INS's order); k: its stored subkey. */
static void bind_put(sqlite3_stmt *st, int off, int64_t bid, const dop_t *op, const skey_t *k)
{
    sqlite3_bind_int64(st, off + 1, bid);
    if (k->n)
        sqlite3_bind_blob(st, off + 2, k->b, k->n, SQLITE_STATIC);
    else
        sqlite3_bind_text(st, off + 2, op->sub ? op->sub : "null", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, off + 3, op->opid);
    sqlite3_bind_text(st, off + 4, op->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, off + 5, op->oid, -1, SQLITE_STATIC);
    if (op->data)
        sqlite3_bind_text(st, off + 6, op->data, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, off + 6);
    sqlite3_bind_int64(st, off + 7, op->ck);
}

/* ---- storing the ops of a data line -------------------------------------------------------- */

/* Stores up to PUT_BATCH PUTs (their checksums already added to *opck) with one INSERT OR
 * IGNORE ... SELECT from ferry_ops. When fewer rows went in than ops were given, a key was
 * stored already (or twice in the batch): each op whose key does not hold it replaces the
 * stored op the one-by-one way, in order (the old op's checksum moves to add_checksum).
 * Returns 0 or -1 (SQLite error). */
static int put_batch(ferry_sync_t *s, int64_t bid, const dop_t *const *b, const skey_t *sk,
                     size_t nb, uint32_t *addck, uint32_t *opck)
{
    sqlite3_stmt *many = s->st[S_OP_INS_MANY];
    ops_t ops = {b, sk, nb};
    sqlite3_bind_int64(many, 1, bid);
    sqlite3_bind_pointer(many, 2, &ops, "ferry_ops", NULL);
    int r = sqlite3_step(many);
    sqlite3_reset(many);
    sqlite3_bind_null(many, 2); /* ops lives on this stack frame */
    if (r != SQLITE_DONE) return -1;
    if ((size_t)sqlite3_changes(s->conn) == nb) return 0;
    sqlite3_stmt *get = s->st[S_OP_GET], *del = s->st[S_OP_DEL_KEY], *ins = s->st[S_OP_INS];
    for (size_t k = 0; k < nb; k++) {
        const dop_t *op = b[k];
        bind_put(get, 0, bid, op, &sk[k]); /* only ?1, ?2, ?4, ?5 are used */
        r = sqlite3_step(get);
        int stored = r == SQLITE_ROW && sqlite3_column_int64(get, 0) == op->opid;
        sqlite3_reset(get);
        if (r != SQLITE_ROW && r != SQLITE_DONE) return -1;
        if (stored) continue;
        bind_put(del, 0, bid, op, &sk[k]);
        while ((r = sqlite3_step(del)) == SQLITE_ROW) {
            uint32_t old = (uint32_t)sqlite3_column_int64(del, 0);
            *addck += old;
            *opck -= old;
        }
        sqlite3_reset(del);
        if (r != SQLITE_DONE) return -1;
        bind_put(ins, 0, bid, op, &sk[k]);
        if (ferry__step_done(ins)) return -1;
    }
    return 0;
}

/* 1 when the oplog holds no op (0 also on an SQLite error: then the index stays). */
static int oplog_empty(sqlite3 *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c, "SELECT EXISTS (SELECT 1 FROM ferry_oplog)", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    int empty = sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) == 0;
    sqlite3_finalize(st);
    return empty;
}

static int apply_data(ferry_db_t *db, ferry_sync_t *s, const char *bname, const dop_t *ops,
                      size_t nops)
{
    if (!s->in_tx) {
        if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
            return ferry__oplog_sqlerr(s, "start a transaction");
        s->in_tx = 1;
        s->tx_ops = 0;
        s->tx_start = mono_ms();
        s->sk_loaded = 0; /* read ferry_subkeys again under this write lock */
        s->bulk = -1;
    }
    sqlite3_stmt *st = s->st[S_BUCKET_GET];
    sqlite3_bind_text(st, 1, bname, -1, SQLITE_STATIC);
    int64_t bid = -1, count = 0;
    uint32_t addck = 0, opck = 0;
    if (sqlite3_step(st) == SQLITE_ROW) {
        bid = sqlite3_column_int64(st, 0);
        addck = (uint32_t)sqlite3_column_int64(st, 1);
        opck = (uint32_t)sqlite3_column_int64(st, 2);
        count = sqlite3_column_int64(st, 3);
    }
    sqlite3_reset(st);
    ferry_cbucket_t *cb = find_cbucket(s, bname);
    int prio = cb ? cb->priority : 3;
    /* A bucket created since the last publish carries one whole-bucket mark (row_type and
     * row_id '') instead of a mark per PUT: publishing then walks its oplog. The per-row marks
     * were most of the cost of an initial sync. REMOVE and CLEAR still mark their rows (they
     * delete ops, so the walk would not see those rows). */
    int whole = 0;
    if (bid < 0) {
        sqlite3_bind_text(s->st[S_BUCKET_INS], 1, bname, -1, SQLITE_STATIC);
        sqlite3_bind_int(s->st[S_BUCKET_INS], 2, prio);
        if (ferry__step_done(s->st[S_BUCKET_INS])) return ferry__oplog_sqlerr(s, "create a bucket");
        bid = sqlite3_last_insert_rowid(s->conn);
        sqlite3_bind_int64(s->st[S_WHOLE_SET], 1, bid);
        if (ferry__step_done(s->st[S_WHOLE_SET]))
            return ferry__oplog_sqlerr(s, "mark a new bucket");
        whole = 1;
        if (s->bulk < 0 && (s->bulk = ferry__oplog_unindexed(s->conn)) < 0)
            return ferry__oplog_sqlerr(s, "inspect the oplog");
        if (!s->bulk && oplog_empty(s->conn)) { /* a first sync: no key index for now */
            if (sqlite3_exec(s->conn, "DROP INDEX ferry_oplog_key", NULL, NULL, NULL) != SQLITE_OK)
                return ferry__oplog_sqlerr(s, "drop the oplog's key index");
            s->bulk = 1;
            s->bulk_counted = 1;
            memset(s->bulk_ops, 0, sizeof s->bulk_ops);
        }
    } else {
        sqlite3_bind_int64(s->st[S_WHOLE_GET], 1, bid);
        whole = sqlite3_step(s->st[S_WHOLE_GET]) == SQLITE_ROW;
        sqlite3_reset(s->st[S_WHOLE_GET]);
    }
    if (s->bulk < 0 && (s->bulk = ferry__oplog_unindexed(s->conn)) < 0)
        return ferry__oplog_sqlerr(s, "inspect the oplog");
    if (s->bulk) {
        int puts_only = whole;
        for (size_t i = 0; i < nops && puts_only; i++)
            puts_only = ops[i].kind == OP_PUT || ops[i].kind == OP_MOVE;
        if (!puts_only && ferry__oplog_need_index(s))
            return ferry__oplog_sqlerr(s, "index the oplog");
        if (s->bulk) /* count the ops per table: publishing chooses by them */
            for (size_t i = 0; i < nops; i++) {
                if (ops[i].kind != OP_PUT) continue;
                int ti = s->bulk_last;
                if (ti >= db->ntables || strcmp(db->tables[ti].name, ops[i].type) != 0)
                    for (ti = 0; ti < db->ntables; ti++)
                        if (strcmp(db->tables[ti].name, ops[i].type) == 0) break;
                s->bulk_ops[ti]++;
                if (ti < db->ntables) s->bulk_last = ti;
            }
    }
    int64_t last = -1;
    sqlite3_stmt *del = s->st[S_OP_DEL_KEY], *mark = s->st[S_MARK];
    const dop_t *batch[PUT_BATCH];
    skey_t bsk[PUT_BATCH];
    size_t nb = 0;
    for (size_t i = 0; i <= nops; i++) {
        const dop_t *op = i < nops ? &ops[i] : NULL;
        /* PUTs go in batches; any other op (and the end) stores the batch first */
        if (op && op->kind == OP_PUT) {
            last = op->opid;
            count++;
            opck += op->ck;
            if (!whole) {
                sqlite3_bind_text(mark, 1, op->type, -1, SQLITE_STATIC);
                sqlite3_bind_text(mark, 2, op->oid, -1, SQLITE_STATIC);
                sqlite3_bind_int64(mark, 3, bid);
                if (ferry__step_done(mark)) return ferry__oplog_sqlerr(s, "store an op");
            }
            if (sk_encode(s, op, &bsk[nb])) return ferry__oplog_sqlerr(s, "store an op");
            batch[nb++] = op;
            if (nb < PUT_BATCH) continue;
        }
        if (nb && put_batch(s, bid, batch, bsk, nb, &addck, &opck))
            return ferry__oplog_sqlerr(s, "store an op");
        nb = 0;
        if (!op || op->kind == OP_PUT) continue;
        int64_t opid = op->opid;
        uint32_t ck = op->ck;
        last = opid;
        count++;
        if (op->kind == OP_REMOVE) {
            /* the stored op of the key goes (its checksum moving to add_checksum) */
            skey_t k;
            if (sk_encode(s, op, &k)) return ferry__oplog_sqlerr(s, "store an op");
            bind_put(del, 0, bid, op, &k);
            int r;
            while ((r = sqlite3_step(del)) == SQLITE_ROW) {
                uint32_t old = (uint32_t)sqlite3_column_int64(del, 0);
                addck += old;
                opck -= old;
            }
            sqlite3_reset(del);
            addck += ck;
            sqlite3_bind_text(mark, 1, op->type, -1, SQLITE_STATIC);
            sqlite3_bind_text(mark, 2, op->oid, -1, SQLITE_STATIC);
            sqlite3_bind_int64(mark, 3, bid);
            if (r != SQLITE_DONE || ferry__step_done(mark))
                return ferry__oplog_sqlerr(s, "store an op");
        } else if (op->kind == OP_MOVE) {
            addck += ck;
        } else if (op->kind == OP_CLEAR) {
            sqlite3_bind_int64(s->st[S_CLEAR_MARK], 1, bid);
            sqlite3_bind_int64(s->st[S_CLEAR_MARK], 2, bid);
            sqlite3_bind_int64(s->st[S_CLEAR_DEL], 1, bid);
            if (ferry__step_done(s->st[S_CLEAR_MARK]) || ferry__step_done(s->st[S_CLEAR_DEL]))
                return ferry__oplog_sqlerr(s, "clear a bucket");
            addck = ck;
            opck = 0;
            count = 1;
        } /* unknown op kinds count towards nothing: ignored */
    }
    if (last >= 0) {
        sqlite3_stmt *set = s->st[S_BUCKET_SET];
        sqlite3_bind_int64(set, 1, addck);
        sqlite3_bind_int64(set, 2, opck);
        sqlite3_bind_int64(set, 3, count);
        sqlite3_bind_int64(set, 4, last);
        sqlite3_bind_int64(set, 5, bid);
        if (ferry__step_done(set)) return ferry__oplog_sqlerr(s, "update a bucket");
    }
    s->tx_ops += (int64_t)nops;
    if (s->batch_ops <= 0 || s->tx_ops >= s->batch_ops || mono_ms() - s->tx_start >= 250) {
        int rc = ferry__oplog_flush(s);
        if (rc) return rc;
    }
    pthread_mutex_lock(&db->mu);
    db->status.ops_downloaded += (int64_t)nops;
    db->status.ops_received_total += (int64_t)nops;
    db->status.prio_downloaded[prio] += (int64_t)nops;
    pthread_mutex_unlock(&db->mu);
    return 0;
}

/* ---- validation ------------------------------------------------------------------------------ */

/* Validates the buckets with priority <= prio (prio < 0: all); drops failing ones. Returns 0
 * when valid, FERRY_ECHECKSUM after dropping, or another negative code. */
static int validate(ferry_db_t *db, ferry_sync_t *s, int prio)
{
    int failed = 0;
    char first[160] = "";
    if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "start a transaction");
    for (size_t i = 0; i < s->nbuckets; i++) {
        ferry_cbucket_t *b = &s->buckets[i];
        if (prio >= 0 && b->priority > prio) continue;
        sqlite3_stmt *st = s->st[S_BUCKET_GET];
        sqlite3_bind_text(st, 1, b->name, -1, SQLITE_STATIC);
        uint32_t local = 0;
        int64_t id = -1;
        if (sqlite3_step(st) == SQLITE_ROW) {
            id = sqlite3_column_int64(st, 0);
            local = (uint32_t)sqlite3_column_int64(st, 1) + (uint32_t)sqlite3_column_int64(st, 2);
        }
        sqlite3_reset(st);
        if (local == b->checksum) continue;
        if (!failed)
            snprintf(first, sizeof first, "\"%s\" (local %u, server %u)", b->name, local,
                     b->checksum);
        failed++;
        if (id >= 0 && drop_bucket(s, id)) return ferry__oplog_sqlerr(s, "delete a bucket");
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return ferry__oplog_sqlerr(s, "commit");
    if (!failed) return 0;
    snprintf(s->errmsg, sizeof s->errmsg,
             "checksum mismatch in %d bucket(s), first %s; downloading again", failed, first);
    pthread_mutex_lock(&db->mu);
    db->status.checksum_failures += failed;
    pthread_mutex_unlock(&db->mu);
    return FERRY_ECHECKSUM;
}

static int line_complete(ferry_db_t *db, ferry_sync_t *s, int prio)
{
    if (!s->have_cp) return proto(s, "checkpoint complete before any checkpoint%s", "");
    int rc = validate(db, s, prio);
    if (rc == FERRY_ECHECKSUM) {
        ferry__oplog_reset_connection(s);
        return FERRY_LINE_RECONNECT;
    }
    if (rc) return rc;
    if (prio < 0) {
        s->complete_seen = 1;
        s->pending = 1;
        pthread_mutex_lock(&db->mu);
        db->status.downloading = 0;
        pthread_mutex_unlock(&db->mu);
    }
    rc = ferry__publish(db, s, prio);
    if (rc < 0) return rc;
    ferry__status_changed(db);
    ferry__oplog_checkpoint(s);
    return 0;
}

/* ---- lines --------------------------------------------------------------------------------- */

int ferry__oplog_line(ferry_db_t *db, ferry_sync_t *s, const char *line, size_t len)
{
    ferry__scan_trim(&line, &len);
    if (len == 0) return 0;
    int sc = ferry__scan_data_line(&s->scan, line, len, &s->scan.bucket_off);
    if (sc == 0) return ferry__oplog_apply_scanned(db, s, &s->scan);
    /* every other line starts with what the data lines before it stored committed */
    if (sc == 1) {
        int rc = ferry__oplog_flush(s);
        if (rc) return rc;
    }
    json_error_t jerr;
    json_t *root = json_loadb(line, len, 0, &jerr);
    if (!root) return proto(s, "could not parse a sync line: %s", jerr.text);
    int rc = 0;
    if (!json_is_object(root) || json_object_size(root) != 1) {
        rc = proto(s, "a sync line must be an object with exactly one key%s", "");
        goto out;
    }
    const char *key = json_object_iter_key(json_object_iter(root));
    json_t *v = json_object_iter_value(json_object_iter(root));
    if (strcmp(key, "data") != 0 && (rc = ferry__oplog_flush(s)) != 0) goto out;
    if (strcmp(key, "data") == 0) {
        rc = line_data(db, s, v);
    } else if (strcmp(key, "checkpoint") == 0) {
        rc = line_checkpoint(db, s, v, 0);
    } else if (strcmp(key, "checkpoint_diff") == 0) {
        rc = line_checkpoint(db, s, v, 1);
    } else if (strcmp(key, "checkpoint_complete") == 0) {
        rc = line_complete(db, s, -1);
    } else if (strcmp(key, "partial_checkpoint_complete") == 0) {
        json_t *p = json_object_get(v, "priority");
        if (!json_is_integer(p)) {
            rc = proto(s, "partial_checkpoint_complete without a priority%s", "");
        } else {
            int pr = (int)json_integer_value(p);
            rc = line_complete(db, s, pr < 0 ? 0 : pr > 3 ? 3 : pr);
        }
    } else if (strcmp(key, "token_expires_in") == 0) {
        json_int_t t = json_integer_value(v);
        if (json_is_integer(v) && t <= 30) rc = FERRY_LINE_REFRESH;
    } /* other line types are ignored (protocol §1.2) */
out:
    json_decref(root);
    return rc;
}

char *ferry__request_body(ferry_db_t *db, ferry_sync_t *s)
{
    json_t *body = json_object(), *arr = json_array();
    json_t *params = NULL;
    if (db->params_json) params = json_loads(db->params_json, 0, NULL);
    if (!json_is_object(params)) {
        json_decref(params);
        params = json_object();
    }
    int ok = body && arr && params;
    sqlite3_stmt *st = s->st[S_LIST];
    while (ok && sqlite3_step(st) == SQLITE_ROW) {
        char after[24];
        snprintf(after, sizeof after, "%lld", (long long)sqlite3_column_int64(st, 4));
        json_t *b = json_pack("{s:s,s:s}", "name", (const char *)sqlite3_column_text(st, 1),
                              "after", after);
        ok = b && json_array_append_new(arr, b) == 0;
    }
    sqlite3_reset(st);
    char *out = NULL;
    if (ok && json_object_set_new(body, "buckets", arr) == 0) {
        arr = NULL;
        json_object_set_new(body, "include_checksum", json_true());
        json_object_set_new(body, "raw_data", json_true());
        json_object_set_new(body, "binary_data", json_true());
        json_object_set_new(body, "client_id", json_string(db->client_id));
        json_object_set_new(body, "parameters", params);
        params = NULL;
        if (ferry__subs_request(db, s, body) == 0) out = json_dumps(body, JSON_COMPACT);
    }
    json_decref(arr);
    json_decref(params);
    json_decref(body);
    return out;
}
