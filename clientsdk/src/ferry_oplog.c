/* ferry_oplog.c -- the local side of the sync protocol: oplog, checksums, publishing
 *
 * Fed one NDJSON line at a time by the sync thread (ferry_sync.c) or directly by unit tests,
 * this file keeps the per-bucket oplog and checksums and publishes validated checkpoints into the
 * app's tables. No network here. Semantics follow protocol §2.3 (ops), §2.4 (validation) and
 * §2.7 (write checkpoints):
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
 * and is published set-based (publish_whole). Invariants:
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
 *   pending --ferry__sync_try_pending (after an upload)--> publish
 */
#include "ferry_int.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    S_BUCKET_GET,
    S_BUCKET_INS,
    S_BUCKET_SET,
    S_OP_DEL_KEY,
    S_OP_INS,
    S_MARK,
    S_CLEAR_MARK,
    S_CLEAR_DEL,
    S_BUCKET_DROP,
    S_BUCKET_PRIO,
    S_LAST_OP_ALL,
    S_CRUD_COUNT,
    S_LIST,
    S_WHOLE_GET,
    S_WHOLE_SET,
    S_OP_GET,
    S_OP_INS_MANY,
    S_NSTMT
};

/* PUTs are inserted up to PUT_BATCH at a time, with one INSERT ... SELECT from the ops in memory
 * (the ferry_ops table below). One statement per op cost about a third of storing it; 32 ops per
 * statement as VALUES rows bound 224 parameters and, at every reset, freed and allocated again
 * the buffers of their records (a fifth of storing an op). The bound: a batch where a key was
 * stored already is looked up op by op. */
#define PUT_BATCH 256

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

struct jrow;
static void sk_forget(ferry_sync_t *s);
static struct jrow *jrow_new(void);
static void jrow_free(struct jrow *r);
static void fn_jok(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void fn_col(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static const sqlite3_module OPS_MODULE, ROWS_MODULE;
static int oplog_unindexed(sqlite3 *c);
static int oplog_need_index(ferry_sync_t *s);
static int ops_disconnect(sqlite3_vtab *vt);

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
            int rc = oplog_need_index(s);
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
    s->jrow = jrow_new();
    if (!s->jrow || sqlite3_create_module(conn, "ferry_ops", &OPS_MODULE, NULL) ||
        sqlite3_create_module(conn, "ferry_rows", &ROWS_MODULE, NULL) ||
        sqlite3_create_function(conn, "ferry_jok", 1, SQLITE_UTF8, s->jrow, fn_jok, NULL, NULL) ||
        sqlite3_create_function(conn, "ferry_col", 2, SQLITE_UTF8, s->jrow, fn_col, NULL, NULL)) {
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
    jrow_free(s->jrow);
    s->jrow = NULL;
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

static int sqlerr(ferry_sync_t *s, const char *what)
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

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -1;
}

/* ---- publishing ------------------------------------------------------------------------------ */

typedef struct pub {
    sqlite3 *conn;
    sqlite3_stmt *highest;
    sqlite3_stmt *put[FERRY_MAX_TABLES], *del[FERRY_MAX_TABLES];
    sqlite3_stmt *fast[FERRY_MAX_TABLES]; /* INSERT OR REPLACE with the columns bound from C */
    struct jrow *jrow;                    /* the row being bound */
    uint64_t changed;
    char err[200];
} pub_t;

static void pub_free(pub_t *p)
{
    sqlite3_finalize(p->highest);
    for (int i = 0; i < FERRY_MAX_TABLES; i++) {
        sqlite3_finalize(p->put[i]);
        sqlite3_finalize(p->del[i]);
        sqlite3_finalize(p->fast[i]);
    }
    jrow_free(p->jrow);
}

static int pub_init(ferry_db_t *db, pub_t *p, sqlite3 *conn)
{
    memset(p, 0, sizeof *p);
    p->conn = conn;
    if (!(p->jrow = jrow_new())) return FERRY_ENOMEM;
    if (sqlite3_prepare_v2(conn,
                           "SELECT data FROM ferry_oplog WHERE row_type = ? AND row_id = ? "
                           "ORDER BY op_id DESC LIMIT 1",
                           -1, &p->highest, NULL) != SQLITE_OK)
        return FERRY_ESQLITE;
    (void)db;
    return 0;
}

static int pub_stmts(ferry_db_t *db, pub_t *p, int ti)
{
    if (p->put[ti]) return 0;
    ferry_tdef_t *t = &db->tables[ti];
    size_t cap = 256 + strlen(t->name) * 2;
    for (int i = 0; i < t->ncols; i++)
        cap += strlen(t->cols[i]) * 4 + 64;
    char *sql = malloc(cap);
    if (!sql) return FERRY_ENOMEM;
    size_t n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
    for (int i = 0; i < t->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
    size_t head = n;
    n += (size_t)snprintf(sql + n, cap - n, ") VALUES (?1");
    for (int i = 0; i < t->ncols; i++)
        n += (size_t)snprintf(sql + n, cap - n, ", json_extract(?2, '$.\"%s\"')", t->cols[i]);
    snprintf(sql + n, cap - n, ")");
    int rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->put[ti], NULL);
    if (rc == SQLITE_OK) {
        n = head + (size_t)snprintf(sql + head, cap - head, ") VALUES (?1");
        for (int i = 0; i < t->ncols; i++)
            n += (size_t)snprintf(sql + n, cap - n, ", ?%d", i + 2);
        snprintf(sql + n, cap - n, ")");
        rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->fast[ti], NULL);
    }
    if (rc == SQLITE_OK) {
        snprintf(sql, cap, "DELETE FROM \"%s\" WHERE id = ?", t->name);
        rc = sqlite3_prepare_v2(p->conn, sql, -1, &p->del[ti], NULL);
    }
    if (rc != SQLITE_OK) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
    free(sql);
    return rc == SQLITE_OK ? 0 : FERRY_ESQLITE;
}

/* ---- a row's columns read from its JSON in C -------------------------------------------------
 *
 * Publishing used json_extract once per column and row. The reader below (struct jrow) takes
 * the object apart once; rows it does not take are left to json_extract, so the values and
 * errors are always json_extract's. */
typedef struct jr {
    const char *p, *end;
} jr_t;

/* Bytes that a JSON string holds as they are (ASCII, not a quote, a backslash or a control
 * character): the readers below skip runs of them with one table look-up per byte. */
static const unsigned char PLAIN[256] = {
    [0x20 ... 0x21] = 1, [0x23 ... 0x5b] = 1, [0x5d ... 0x7f] = 1, /* not '"' (0x22), '\\' */
};

static void jr_ws(jr_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

/* A string at j->p (after ws): *s and *n give its raw contents; *esc is set when it holds
 * escapes. -1 when malformed or holding a \u escape or a control character. */
static int jr_str(jr_t *j, const char **s, size_t *n, int *esc)
{
    if (j->p >= j->end || *j->p != '"') return -1;
    const char *q = ++j->p;
    *esc = 0;
    while (q < j->end && *q != '"') {
        if (PLAIN[(unsigned char)*q]) {
            q++;
            continue;
        }
        if ((unsigned char)*q < 0x20) return -1;
        if (*q == '\\') {
            if (q + 1 >= j->end || !strchr("\"\\/bfnrt", q[1])) return -1;
            *esc = 1;
            q += 2;
            continue;
        }
        q++;
    }
    if (q >= j->end) return -1;
    *s = j->p;
    *n = (size_t)(q - j->p);
    j->p = q + 1;
    return 0;
}

/* Skips a value (nested ones too); -1 when malformed. */
static int jr_skip(jr_t *j, int depth)
{
    jr_ws(j);
    if (j->p >= j->end || depth > 64) return -1;
    const char *s;
    size_t n;
    int esc;
    char ch = *j->p;
    if (ch == '"') return jr_str(j, &s, &n, &esc);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        j->p++;
        jr_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (ch == '{') {
                jr_ws(j);
                if (jr_str(j, &s, &n, &esc)) return -1;
                jr_ws(j);
                if (j->p >= j->end || *j->p++ != ':') return -1;
            }
            if (jr_skip(j, depth + 1)) return -1;
            jr_ws(j);
            if (j->p >= j->end) return -1;
            if (*j->p == close) {
                j->p++;
                return 0;
            }
            if (*j->p++ != ',') return -1;
        }
    }
    const char *q = j->p;
    while (q < j->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E' || (*q >= 'a' && *q <= 'z')))
        q++;
    n = (size_t)(q - j->p);
    if (!((n == 4 && !memcmp(j->p, "true", 4)) || (n == 5 && !memcmp(j->p, "false", 5)) ||
          (n == 4 && !memcmp(j->p, "null", 4)))) {
        /* a number: the JSON grammar */
        const char *x = j->p;
        if (x < q && *x == '-') x++;
        if (x >= q || *x < '0' || *x > '9') return -1;
        if (*x == '0')
            x++;
        else
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        if (x < q && *x == '.') {
            x++;
            if (x >= q || *x < '0' || *x > '9') return -1;
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        }
        if (x < q && (*x == 'e' || *x == 'E')) {
            x++;
            if (x < q && (*x == '+' || *x == '-')) x++;
            if (x >= q || *x < '0' || *x > '9') return -1;
            while (x < q && *x >= '0' && *x <= '9')
                x++;
        }
        if (x != q) return -1;
    }
    j->p = q;
    return 0;
}

/* The row cache behind two SQL functions on the sync connection, for publishing a whole bucket
 * in one INSERT ... SELECT: ferry_jok(data) reads the object once per row and says whether
 * every top-level value is one this reader returns exactly as json_extract would (strings with
 * simple escapes, integers of up to 18 digits, true, false, null; keys without escapes; no
 * trailing text). ferry_col(data, name) returns json_extract(data, '$."name"'): for a row the
 * reader takes, the first value of that key (NULL when absent) read here; for any other row
 * (reals, nested values, \u escapes, malformed JSON) it runs json_extract itself on the same
 * connection, so values and errors are always json_extract's. json_extract parsed each row once
 * but looked each column's path up and copied its result; this cost 0.4-0.7 s of the 2-2.5 s of
 * publishing 1,000,000 rows. (The publish first called "CASE WHEN ferry_jok(d) THEN
 * ferry_col(d, 'c') ELSE json_extract(...) END": two calls per column instead of one.) */
typedef struct jcol {
    const char *k, *s; /* key; text value (raw, escaped when esc) */
    size_t kn, sn;
    int type; /* SQLITE_INTEGER, SQLITE_TEXT, SQLITE_NULL */
    int esc;
    int64_t i;
} jcol_t;

struct jrow {
    char *text; /* a copy of the row's data (the values point into it) */
    size_t len, cap;
    int loaded, ok;
    jcol_t *v;
    size_t nv, capv;
    char *ubuf; /* an unescaped string */
    size_t ucap;
    sqlite3_stmt *jx; /* "SELECT json_extract(?1, ?2)": ferry_col's answer for rows not taken */
    char *path;       /* its path argument, '$."name"' */
    size_t pcap;
};

static struct jrow *jrow_new(void)
{
    return calloc(1, sizeof(struct jrow));
}

static void jrow_free(struct jrow *r)
{
    if (!r) return;
    free(r->text);
    free(r->v);
    free(r->ubuf);
    sqlite3_finalize(r->jx);
    free(r->path);
    free(r);
}

/* Reads d into r unless it holds it already; returns r->ok, or -1 on out-of-memory. */
static int jrow_load(struct jrow *r, const char *d, size_t n)
{
    if (r->loaded && n == r->len && memcmp(r->text, d, n) == 0) return r->ok;
    r->loaded = 0;
    if (n + 1 > r->cap) {
        char *nt = realloc(r->text, n + 1);
        if (!nt) return -1;
        r->text = nt;
        r->cap = n + 1;
    }
    memcpy(r->text, d, n);
    r->text[n] = 0;
    r->len = n;
    r->nv = 0;
    r->ok = 0;
    r->loaded = 1;
    jr_t j = {r->text, r->text + n};
    jr_ws(&j);
    if (j.p >= j.end || *j.p++ != '{') return 0;
    jr_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            if (r->nv == r->capv) {
                size_t cap = r->capv ? r->capv * 2 : 16;
                jcol_t *nv = realloc(r->v, cap * sizeof *nv);
                if (!nv) {
                    r->loaded = 0;
                    return -1;
                }
                r->v = nv;
                r->capv = cap;
            }
            jcol_t *c = &r->v[r->nv];
            int esc;
            jr_ws(&j);
            if (jr_str(&j, &c->k, &c->kn, &esc) || esc) return 0;
            jr_ws(&j);
            if (j.p >= j.end || *j.p++ != ':') return 0;
            jr_ws(&j);
            if (j.p >= j.end || *j.p == '{' || *j.p == '[') return 0;
            if (*j.p == '"') {
                if (jr_str(&j, &c->s, &c->sn, &c->esc)) return 0;
                c->type = SQLITE_TEXT;
            } else {
                const char *v = j.p;
                if (jr_skip(&j, 0)) return 0;
                size_t len = (size_t)(j.p - v);
                if (*v == 't' || *v == 'f') {
                    c->type = SQLITE_INTEGER;
                    c->i = *v == 't';
                } else if (*v == 'n') {
                    c->type = SQLITE_NULL;
                } else {
                    size_t digits = len - (*v == '-');
                    if (memchr(v, '.', len) || memchr(v, 'e', len) || memchr(v, 'E', len) ||
                        digits > 18)
                        return 0;
                    int64_t x = 0;
                    for (const char *q = v + (*v == '-'); q < j.p; q++)
                        x = x * 10 + (*q - '0');
                    c->type = SQLITE_INTEGER;
                    c->i = *v == '-' ? -x : x;
                }
            }
            r->nv++;
            jr_ws(&j);
            if (j.p >= j.end) return 0;
            if (*j.p == '}') {
                j.p++;
                break;
            }
            if (*j.p++ != ',') return 0;
        }
    }
    jr_ws(&j);
    r->ok = j.p == j.end;
    return r->ok;
}

static void fn_jok(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    struct jrow *r = sqlite3_user_data(ctx);
    int ok = 0;
    if (sqlite3_value_type(argv[0]) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(argv[0]);
        ok = d ? jrow_load(r, d, (size_t)sqlite3_value_bytes(argv[0])) : 0;
        if (ok < 0) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
    }
    sqlite3_result_int(ctx, ok);
}

/* The first value of key name in r, NULL when absent. */
static const jcol_t *jrow_get(struct jrow *r, const char *name)
{
    size_t nn = strlen(name);
    for (size_t i = 0; i < r->nv; i++)
        if (r->v[i].kn == nn && memcmp(r->v[i].k, name, nn) == 0) return &r->v[i];
    return NULL;
}

/* A text value, unescaped (into r->ubuf when it holds escapes, valid until the next call);
 * NULL on out-of-memory. */
static const char *jcol_text(struct jrow *r, const jcol_t *c, size_t *n)
{
    if (!c->esc) {
        *n = c->sn;
        return c->s;
    }
    if (c->sn + 1 > r->ucap) {
        char *nb = realloc(r->ubuf, c->sn + 1);
        if (!nb) return NULL;
        r->ubuf = nb;
        r->ucap = c->sn + 1;
    }
    size_t o = 0;
    for (size_t k = 0; k < c->sn; k++) {
        char ch = c->s[k];
        if (ch == '\\') {
            ch = c->s[++k];
            ch = ch == 'b'   ? '\b'
                 : ch == 'f' ? '\f'
                 : ch == 'n' ? '\n'
                 : ch == 'r' ? '\r'
                 : ch == 't' ? '\t'
                             : ch;
        }
        r->ubuf[o++] = ch;
    }
    *n = o;
    return r->ubuf;
}

/* r's "SELECT json_extract(?1, ?2)" on connection c (prepared once), bound to data and
 * '$."name"', ready to step (the caller resets it and clears its bindings). NULL when it could
 * not be prepared or on out-of-memory. */
static sqlite3_stmt *jrow_extract(struct jrow *r, sqlite3 *c, sqlite3_value *data, const char *name)
{
    size_t need = strlen(name) + 5;
    if (need > r->pcap) {
        char *np = realloc(r->path, need);
        if (!np) return NULL;
        r->path = np;
        r->pcap = need;
    }
    snprintf(r->path, need, "$.\"%s\"", name);
    if (!r->jx && sqlite3_prepare_v2(c, "SELECT json_extract(?1, ?2)", -1, &r->jx, NULL))
        return NULL;
    sqlite3_bind_value(r->jx, 1, data);
    sqlite3_bind_text(r->jx, 2, r->path, -1, SQLITE_STATIC);
    return r->jx;
}

/* ferry_col for a row the reader does not take: json_extract(data, '$."name"') run on the
 * connection of ctx, its value or its error as the result. */
static void col_json_extract(sqlite3_context *ctx, struct jrow *r, sqlite3_value *data,
                             const char *name)
{
    sqlite3 *c = sqlite3_context_db_handle(ctx);
    if (!jrow_extract(r, c, data, name)) {
        if (r->jx)
            sqlite3_result_error_nomem(ctx);
        else
            sqlite3_result_error(ctx, sqlite3_errmsg(c), -1);
        return;
    }
    if (sqlite3_step(r->jx) == SQLITE_ROW)
        sqlite3_result_value(ctx, sqlite3_column_value(r->jx, 0));
    else
        sqlite3_result_error(ctx, sqlite3_errmsg(c), -1);
    sqlite3_reset(r->jx);
    sqlite3_clear_bindings(r->jx);
}

static void fn_col(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    struct jrow *r = sqlite3_user_data(ctx);
    const char *d = (const char *)sqlite3_value_text(argv[0]);
    const char *name = (const char *)sqlite3_value_text(argv[1]);
    if (!d || !name) return; /* NULL */
    int ok = jrow_load(r, d, (size_t)sqlite3_value_bytes(argv[0]));
    if (ok < 0) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    if (!ok) {
        col_json_extract(ctx, r, argv[0], name);
        return;
    }
    const jcol_t *c = jrow_get(r, name);
    if (!c || c->type == SQLITE_NULL) return;
    if (c->type == SQLITE_INTEGER) {
        sqlite3_result_int64(ctx, c->i);
        return;
    }
    size_t n;
    const char *v = jcol_text(r, c, &n);
    if (!v)
        sqlite3_result_error_nomem(ctx);
    else
        sqlite3_result_text(ctx, v, (int)n, SQLITE_TRANSIENT);
}

/* Binds the columns of t from the JSON object d[0..n) to ins (?2 ... in column order; the
 * caller binds ?1); 0 when bound, -1 to leave the row to json_extract, FERRY_ENOMEM. */
static int bind_cols(pub_t *p, const ferry_tdef_t *t, sqlite3_stmt *ins, const char *d, size_t n)
{
    int ok = jrow_load(p->jrow, d, n);
    if (ok <= 0) return ok < 0 ? FERRY_ENOMEM : -1;
    sqlite3_clear_bindings(ins);
    for (int i = 0; i < t->ncols; i++) {
        const jcol_t *c = jrow_get(p->jrow, t->cols[i]);
        if (!c || c->type == SQLITE_NULL) continue;
        if (c->type == SQLITE_INTEGER) {
            sqlite3_bind_int64(ins, i + 2, c->i);
            continue;
        }
        size_t len;
        const char *v = jcol_text(p->jrow, c, &len);
        if (!v) return FERRY_ENOMEM;
        sqlite3_bind_text(ins, i + 2, v, (int)len, SQLITE_TRANSIENT);
    }
    return 0;
}

/* Writes one row of table ti from its data (a JSON object, or anything else: then the columns
 * are what json_extract makes of it, or NULL when it fails). Returns 0 or FERRY_E*. */
static int put_row(ferry_db_t *db, pub_t *p, int ti, const char *id, sqlite3_value *data)
{
    int rc = pub_stmts(db, p, ti);
    if (rc) return rc;
    int s = SQLITE_ERROR;
    if (sqlite3_value_type(data) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(data);
        int b = d ? bind_cols(p, &db->tables[ti], p->fast[ti], d, (size_t)sqlite3_value_bytes(data))
                  : -1;
        if (b == FERRY_ENOMEM) return b;
        if (b == 0) {
            sqlite3_bind_text(p->fast[ti], 1, id, -1, SQLITE_STATIC);
            s = sqlite3_step(p->fast[ti]);
            sqlite3_reset(p->fast[ti]);
            if (s != SQLITE_DONE) {
                snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
                return FERRY_ESQLITE;
            }
        }
    }
    if (s != SQLITE_DONE) {
        sqlite3_stmt *put = p->put[ti];
        sqlite3_bind_text(put, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_value(put, 2, data);
        s = sqlite3_step(put);
        sqlite3_reset(put);
        /* a data string that is not a JSON object makes json_extract fail: keep the id only */
        if (s != SQLITE_DONE) {
            sqlite3_bind_null(put, 2);
            s = sqlite3_step(put);
            if (s != SQLITE_DONE) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
            sqlite3_reset(put);
        }
        sqlite3_bind_null(put, 2);
    }
    if (s != SQLITE_DONE) return FERRY_ESQLITE;
    p->changed |= (uint64_t)1 << ti;
    return 0;
}

/* Re-evaluates one row: the highest-op PUT across buckets, or a delete. Unknown types stay in the
 * oplog only (published when the schema gains the table). */
static int pub_row(ferry_db_t *db, pub_t *p, const char *type, const char *id)
{
    int ti = ferry__table_index(db, type);
    if (ti < 0 || db->tables[ti].local_only) return 0;
    int rc = pub_stmts(db, p, ti);
    if (rc) return rc;
    sqlite3_bind_text(p->highest, 1, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(p->highest, 2, id, -1, SQLITE_STATIC);
    int s = sqlite3_step(p->highest);
    if (s == SQLITE_ROW) {
        rc = put_row(db, p, ti, id, sqlite3_column_value(p->highest, 0));
    } else if (s == SQLITE_DONE) {
        sqlite3_bind_text(p->del[ti], 1, id, -1, SQLITE_STATIC);
        s = sqlite3_step(p->del[ti]);
        if (s != SQLITE_DONE) snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
        sqlite3_reset(p->del[ti]);
        rc = s == SQLITE_DONE ? 0 : FERRY_ESQLITE;
        if (!rc) p->changed |= (uint64_t)1 << ti;
    } else {
        snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
        rc = FERRY_ESQLITE;
    }
    sqlite3_reset(p->highest);
    return rc;
}

int ferry__republish_type(ferry_db_t *db, sqlite3 *conn, const char *type)
{
    pub_t p;
    sqlite3_stmt *st = NULL;
    int rc = pub_init(db, &p, conn);
    if (!rc &&
        sqlite3_prepare_v2(conn, "SELECT DISTINCT row_id FROM ferry_oplog WHERE row_type = ?", -1,
                           &st, NULL) != SQLITE_OK)
        rc = FERRY_ESQLITE;
    if (!rc) {
        sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
        while (!rc && sqlite3_step(st) == SQLITE_ROW)
            rc = pub_row(db, &p, type, (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    pub_free(&p);
    return rc;
}

/* Publishes the buckets with a whole-bucket mark (matching filt), one statement per table and
 * bucket: every op of the bucket that is the highest op of its row across all buckets becomes
 * the row (REPLACE INTO with json_extract of its data). A row whose highest op is in another
 * bucket is left to that bucket's own mark (it has one: per row, or whole). When a data string
 * is not a JSON object the statement fails; that bucket's rows then go the row-by-row way.
 * When no other bucket holds any op (a first sync of one bucket), no row needs a probe: the
 * bucket's ops were stored in op order (a replaced op is deleted and the new one appended), so
 * the statement scans the table in rowid order and the last REPLACE of a row is its highest op.
 * When the table's rows are a small part of the oplog, scanning all of it would cost more than
 * walking the key index for the type, grouped by row, taking each row's highest op. (Sorting a
 * row's ops inside the walk cost more than both: about 1 us per row.) */
/* The share of the oplog's ops that are of one type (counted in the key index), 1 when the
 * count fails. */
/* ---- publishing a whole bucket with a second reader ------------------------------------------
 *
 * A first sync publishes with one INSERT OR REPLACE ... SELECT per table over the oplog in
 * rowid order. About half of that statement's work is reading: stepping through the oplog and
 * taking every row's JSON apart (ferry_col). For a large bucket (PR_MIN_OPS ops or more) that
 * half runs on a second thread: the reader, with its own read-only connection, runs the same
 * SELECT and copies each row's values into blocks (PR_BLOCKS of PR_ROWS rows, reused: memory
 * stays bounded); the publishing statement takes them from ferry_rows(?), a table-valued
 * function over those blocks, and only writes.
 *
 * The reader sees what the publishing transaction sees: the transaction holds the write lock
 * (BEGIN IMMEDIATE) before the reader starts, so no commit comes between, and publishing never
 * changes the oplog; what it changed in other tables, the reader does not read. Values and
 * errors are ferry_col's (the reader runs it): an error ends the statement as before, and the
 * table's rows are then published one by one. When the reader cannot start (no thread, no
 * connection), the one-thread statement runs instead. */
#define PR_ROWS     512
#define PR_BLOCKS   4
#define PR_MAX_COLS 127 /* columns besides id that ferry_rows declares */
#define PR_MIN_OPS  20000

typedef struct prval {
    int type; /* SQLITE_NULL, SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT */
    int64_t i;
    double r;
    size_t off, n; /* a text's bytes in the block's arena */
} prval_t;

typedef struct prblock {
    size_t nrows;
    prval_t *v;  /* nrows rows of width values; owned */
    char *arena; /* owned */
    size_t alen, acap;
} prblock_t;

typedef struct pread {
    sqlite3 *conn;     /* the reader's connection (read-only); owned */
    sqlite3_stmt *sel; /* row_id, data of the table's ops in rowid order; owned */
    struct jrow *jrow; /* the row taken apart; owned (its json_extract statement too) */
    const ferry_tdef_t *t;
    int width; /* 1 + columns */
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    prblock_t blk[PR_BLOCKS];
    size_t produced, consumed; /* blocks handed over, blocks given back (both only grow) */
    int done;                  /* the reader handed over its last block (or failed: rc) */
    int cancel;                /* the writer stopped taking rows */
    int rc;                    /* SQLITE_OK, or the reader's error (err) */
    char err[200];
} pread_t;

/* A text value into block b's arena; 0, or -1 on out-of-memory. */
static int pr_text(prblock_t *b, prval_t *v, const char *s, size_t n)
{
    if (b->alen + n > b->acap) {
        size_t cap = b->acap ? b->acap : 65536;
        while (cap < b->alen + n)
            cap *= 2;
        char *na = realloc(b->arena, cap);
        if (!na) return -1;
        b->arena = na;
        b->acap = cap;
    }
    memcpy(b->arena + b->alen, s, n);
    v->type = SQLITE_TEXT;
    v->off = b->alen;
    v->n = n;
    b->alen += n;
    return 0;
}

/* A value of any type into v (text into b's arena); 0, or -1 on out-of-memory. */
static int pr_value(prblock_t *b, prval_t *v, sqlite3_value *x)
{
    v->type = sqlite3_value_type(x);
    if (v->type == SQLITE_INTEGER)
        v->i = sqlite3_value_int64(x);
    else if (v->type == SQLITE_FLOAT)
        v->r = sqlite3_value_double(x);
    else if (v->type != SQLITE_NULL) {
        const char *s = (const char *)sqlite3_value_text(x);
        return s ? pr_text(b, v, s, (size_t)sqlite3_value_bytes(x)) : -1;
    }
    return 0;
}

/* Copies the current row of r->sel into block b: its id and the values ferry_col gives for the
 * table's columns (the C reader for the rows it takes, json_extract for the others). Returns
 * SQLITE_OK, SQLITE_NOMEM, or json_extract's error (r->err set). */
static int pr_copy_row(pread_t *r, prblock_t *b)
{
    prval_t *v = &b->v[b->nrows * (size_t)r->width];
    const char *id = (const char *)sqlite3_column_text(r->sel, 0);
    if (!id || pr_text(b, &v[0], id, (size_t)sqlite3_column_bytes(r->sel, 0))) return SQLITE_NOMEM;
    sqlite3_value *data = sqlite3_column_value(r->sel, 1);
    int ok = 0;
    if (sqlite3_value_type(data) == SQLITE_NULL) {
        for (int i = 1; i < r->width; i++)
            v[i].type = SQLITE_NULL; /* ferry_col(NULL, c) */
        b->nrows++;
        return SQLITE_OK;
    }
    if (sqlite3_value_type(data) == SQLITE_TEXT) {
        const char *d = (const char *)sqlite3_value_text(data);
        if (!d || (ok = jrow_load(r->jrow, d, (size_t)sqlite3_value_bytes(data))) < 0)
            return SQLITE_NOMEM;
    }
    for (int i = 1; i < r->width; i++) {
        const char *name = r->t->cols[i - 1];
        if (ok) {
            const jcol_t *c = jrow_get(r->jrow, name);
            v[i].type = c ? c->type : SQLITE_NULL;
            if (c && c->type == SQLITE_INTEGER) v[i].i = c->i;
            if (c && c->type == SQLITE_TEXT) {
                size_t n;
                const char *s = jcol_text(r->jrow, c, &n);
                if (!s || pr_text(b, &v[i], s, n)) return SQLITE_NOMEM;
            }
            continue;
        }
        sqlite3_stmt *jx = jrow_extract(r->jrow, r->conn, data, name);
        int st = jx ? sqlite3_step(jx) : SQLITE_NOMEM;
        int rc = st == SQLITE_ROW ? pr_value(b, &v[i], sqlite3_column_value(jx, 0)) : st;
        if (rc != SQLITE_OK) {
            snprintf(r->err, sizeof r->err, "%s",
                     rc == SQLITE_NOMEM || rc < 0 ? "out of memory" : sqlite3_errmsg(r->conn));
            rc = rc < 0 ? SQLITE_NOMEM : rc;
        }
        if (jx) {
            sqlite3_reset(jx);
            sqlite3_clear_bindings(jx);
        }
        if (rc != SQLITE_OK) return rc;
    }
    b->nrows++;
    return SQLITE_OK;
}

static void *pr_main(void *arg)
{
    pread_t *r = arg;
    int rc = SQLITE_OK, step = SQLITE_ROW;
    while (step == SQLITE_ROW) {
        pthread_mutex_lock(&r->mu);
        while (r->produced - r->consumed >= PR_BLOCKS && !r->cancel)
            pthread_cond_wait(&r->cv, &r->mu);
        int cancel = r->cancel;
        pthread_mutex_unlock(&r->mu);
        if (cancel) break;
        prblock_t *b = &r->blk[r->produced % PR_BLOCKS];
        b->nrows = 0;
        b->alen = 0;
        while (b->nrows < PR_ROWS && (step = sqlite3_step(r->sel)) == SQLITE_ROW)
            if ((rc = pr_copy_row(r, b)) != SQLITE_OK) break;
        if (rc == SQLITE_OK && step != SQLITE_ROW && step != SQLITE_DONE) rc = step;
        if (rc != SQLITE_OK && !r->err[0])
            snprintf(r->err, sizeof r->err, "%s",
                     rc == SQLITE_NOMEM ? "out of memory" : sqlite3_errmsg(r->conn));
        pthread_mutex_lock(&r->mu);
        if (rc == SQLITE_OK && b->nrows) r->produced++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        if (rc != SQLITE_OK) break;
    }
    sqlite3_reset(r->sel); /* ends the read transaction */
    pthread_mutex_lock(&r->mu);
    r->rc = rc;
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Stops the reader (if running) and frees r and what it owns. */
static void pr_free(pread_t *r)
{
    if (!r) return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->cancel = 1;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->th, NULL);
    }
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    for (int i = 0; i < PR_BLOCKS; i++) {
        free(r->blk[i].v);
        free(r->blk[i].arena);
    }
    sqlite3_finalize(r->sel);
    jrow_free(r->jrow); /* its json_extract statement is on conn */
    sqlite3_close(r->conn);
    free(r);
}

/* Starts a reader of table t's rows in the oplog of the file of conn (rowid order, ferry_col's
 * values). Returns it (free with pr_free), or NULL when it could not start: publish with one
 * thread then. */
static pread_t *pr_start(sqlite3 *conn, const ferry_tdef_t *t)
{
    if (t->ncols > PR_MAX_COLS) return NULL;
    const char *path = sqlite3_db_filename(conn, "main");
    pread_t *r = calloc(1, sizeof *r);
    if (!r || !path || !*path) return free(r), NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->width = 1 + t->ncols;
    r->t = t;
    for (int i = 0; i < PR_BLOCKS; i++)
        if (!(r->blk[i].v = malloc(sizeof(prval_t) * PR_ROWS * (size_t)r->width)))
            return pr_free(r), NULL;
    if (sqlite3_open_v2(path, &r->conn, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
            SQLITE_OK ||
        !(r->jrow = jrow_new()) ||
        sqlite3_prepare_v2(r->conn,
                           "SELECT row_id, data FROM ferry_oplog NOT INDEXED WHERE "
                           "row_type = ? ORDER BY rowid",
                           -1, &r->sel, NULL) != SQLITE_OK)
        return pr_free(r), NULL;
    sqlite3_bind_text(r->sel, 1, t->name, -1, SQLITE_STATIC);
    sqlite3_busy_timeout(r->conn, 10000);
    if (pthread_create(&r->th, NULL, pr_main, r) != 0) return pr_free(r), NULL;
    r->started = 1;
    return r;
}

/* ferry_rows(?): the reader's rows (bound with sqlite3_bind_pointer, type "ferry_rows"), as
 * columns c0 (id), c1 ... in the table's column order. Values point into the current block
 * (SQLITE_STATIC); a block goes back to the reader only when the cursor has left it. */
typedef struct rows_cur {
    sqlite3_vtab_cursor base;
    pread_t *r;
    prblock_t *b; /* the block being read; NULL at the end */
    size_t row;
} rows_cur_t;

static int rows_connect(sqlite3 *c, void *aux, int argc, const char *const *argv,
                        sqlite3_vtab **out, char **err)
{
    (void)aux, (void)argc, (void)argv, (void)err;
    sqlite3_str *q = sqlite3_str_new(NULL);
    sqlite3_str_appendf(q, "CREATE TABLE x(c0");
    for (int i = 1; i <= PR_MAX_COLS; i++)
        sqlite3_str_appendf(q, ", c%d", i);
    sqlite3_str_appendf(q, ", src HIDDEN)");
    char *decl = sqlite3_str_finish(q);
    int rc = decl ? sqlite3_declare_vtab(c, decl) : SQLITE_NOMEM;
    sqlite3_free(decl);
    if (rc != SQLITE_OK) return rc;
    sqlite3_vtab_config(c, SQLITE_VTAB_DIRECTONLY);
    if (!(*out = sqlite3_malloc(sizeof **out))) return SQLITE_NOMEM;
    memset(*out, 0, sizeof **out);
    return SQLITE_OK;
}

static int rows_best_index(sqlite3_vtab *vt, sqlite3_index_info *ix)
{
    (void)vt;
    for (int i = 0; i < ix->nConstraint; i++)
        if (ix->aConstraint[i].iColumn == PR_MAX_COLS + 1 &&
            ix->aConstraint[i].op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!ix->aConstraint[i].usable) return SQLITE_CONSTRAINT;
            ix->aConstraintUsage[i].argvIndex = 1;
            ix->aConstraintUsage[i].omit = 1;
            ix->estimatedCost = 1;
            return SQLITE_OK;
        }
    return SQLITE_CONSTRAINT;
}

static int rows_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    (void)vt;
    rows_cur_t *c = sqlite3_malloc(sizeof *c);
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int rows_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

/* Waits for the reader's next block: c->b is it, or NULL at the end. An error of the reader
 * is the statement's. */
static int rows_wait(rows_cur_t *c)
{
    pread_t *r = c->r;
    pthread_mutex_lock(&r->mu);
    while (r->produced == r->consumed && !r->done)
        pthread_cond_wait(&r->cv, &r->mu);
    int rc = SQLITE_OK;
    c->b = NULL;
    c->row = 0;
    if (r->produced > r->consumed)
        c->b = &r->blk[r->consumed % PR_BLOCKS];
    else if (r->rc != SQLITE_OK)
        rc = SQLITE_ERROR;
    pthread_mutex_unlock(&r->mu);
    if (rc != SQLITE_OK) {
        sqlite3_free(c->base.pVtab->zErrMsg);
        c->base.pVtab->zErrMsg = sqlite3_mprintf("%s", r->err);
    }
    return rc;
}

static int rows_filter(sqlite3_vtab_cursor *cur, int idx, const char *idxs, int argc,
                       sqlite3_value **argv)
{
    (void)idx, (void)idxs;
    rows_cur_t *c = (rows_cur_t *)cur;
    c->r = argc == 1 ? sqlite3_value_pointer(argv[0], "ferry_rows") : NULL;
    c->b = NULL;
    return c->r ? rows_wait(c) : SQLITE_OK;
}

static int rows_next(sqlite3_vtab_cursor *cur)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    if (!c->b || ++c->row < c->b->nrows) return SQLITE_OK;
    pthread_mutex_lock(&c->r->mu);
    c->r->consumed++; /* the block goes back to the reader */
    pthread_cond_broadcast(&c->r->cv);
    pthread_mutex_unlock(&c->r->mu);
    return rows_wait(c);
}

static int rows_eof(sqlite3_vtab_cursor *cur)
{
    return ((rows_cur_t *)cur)->b == NULL;
}

static int rows_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    if (col >= c->r->width) return SQLITE_OK; /* NULL */
    const prval_t *v = &c->b->v[c->row * (size_t)c->r->width + (size_t)col];
    switch (v->type) {
    case SQLITE_INTEGER:
        sqlite3_result_int64(ctx, v->i);
        break;
    case SQLITE_FLOAT:
        sqlite3_result_double(ctx, v->r);
        break;
    case SQLITE_TEXT:
        sqlite3_result_text(ctx, c->b->arena + v->off, (int)v->n, SQLITE_STATIC);
        break;
    default:
        break;
    }
    return SQLITE_OK;
}

static int rows_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    rows_cur_t *c = (rows_cur_t *)cur;
    *rowid = (sqlite3_int64)c->row;
    return SQLITE_OK;
}

static const sqlite3_module ROWS_MODULE = {
    .xConnect = rows_connect,
    .xBestIndex = rows_best_index,
    .xDisconnect = ops_disconnect,
    .xOpen = rows_open,
    .xClose = rows_close,
    .xFilter = rows_filter,
    .xNext = rows_next,
    .xEof = rows_eof,
    .xColumn = rows_column,
    .xRowid = rows_rowid,
};

static double type_share(sqlite3 *c, const char *type)
{
    sqlite3_stmt *st;
    double share = 1;
    /* no op of another type (two probes of the key index): 1 without counting them all */
    if (sqlite3_prepare_v2(c,
                           "SELECT EXISTS (SELECT 1 FROM ferry_oplog WHERE row_type < ?1) OR "
                           "EXISTS (SELECT 1 FROM ferry_oplog WHERE row_type > ?1)",
                           -1, &st, NULL) != SQLITE_OK)
        return share;
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    int others = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (!others) return share;
    if (sqlite3_prepare_v2(c,
                           "SELECT (SELECT count(*) FROM ferry_oplog WHERE row_type = ?), "
                           "(SELECT count(*) FROM ferry_oplog)",
                           -1, &st, NULL) != SQLITE_OK)
        return share;
    sqlite3_bind_text(st, 1, type, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 1) > 0)
        share = (double)sqlite3_column_int64(st, 0) / (double)sqlite3_column_int64(st, 1);
    sqlite3_finalize(st);
    return share;
}

/* The ops bucket bid holds (ferry_buckets.count); 0 when unknown. */
static int64_t bucket_count(sqlite3 *c, int64_t bid)
{
    sqlite3_stmt *st;
    int64_t n = 0;
    if (sqlite3_prepare_v2(c, "SELECT count FROM ferry_buckets WHERE id = ?", -1, &st, NULL) !=
        SQLITE_OK)
        return 0;
    sqlite3_bind_int64(st, 1, bid);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

static int publish_whole(ferry_db_t *db, ferry_sync_t *s, pub_t *p, const char *filt)
{
    char q[256];
    sqlite3_stmt *sel = NULL, *st = NULL;
    int64_t *bids = NULL; /* the new buckets, read first: building the index (DDL) needs no
                             statement running */
    size_t nbids = 0, capbids = 0;
    snprintf(q, sizeof q, "SELECT bucket FROM ferry_updated WHERE row_type = '' AND row_id = ''%s",
             filt);
    if (sqlite3_prepare_v2(p->conn, q, -1, &sel, NULL) != SQLITE_OK) goto sqlfail;
    int rc = 0, r;
    while ((r = sqlite3_step(sel)) == SQLITE_ROW) {
        if (nbids == capbids) {
            capbids = capbids ? capbids * 2 : 16;
            int64_t *nb = realloc(bids, capbids * sizeof *nb);
            if (!nb) return sqlite3_finalize(sel), free(bids), FERRY_ENOMEM;
            bids = nb;
        }
        bids[nbids++] = sqlite3_column_int64(sel, 0);
    }
    if (r != SQLITE_DONE) goto sqlfail;
    sqlite3_finalize(sel);
    sel = NULL;
    for (size_t bi = 0; bi < nbids && !rc; bi++) {
        int64_t bid = bids[bi];
        sqlite3_stmt *alone_st;
        if (sqlite3_prepare_v2(p->conn,
                               "SELECT EXISTS (SELECT 1 FROM ferry_buckets WHERE id <> ?1 AND "
                               "count > 0)",
                               -1, &alone_st, NULL) != SQLITE_OK)
            goto sqlfail;
        sqlite3_bind_int64(alone_st, 1, bid);
        int alone = sqlite3_step(alone_st) == SQLITE_ROW && sqlite3_column_int(alone_st, 0) == 0;
        sqlite3_finalize(alone_st);
        /* without the key index (bulk), only the scan of a bucket holding every op is cheap */
        if (s->bulk == 1 && (!alone || !s->bulk_counted) && oplog_need_index(s)) goto sqlfail;
        int64_t total = 0;
        for (int ti = 0; ti <= FERRY_MAX_TABLES; ti++)
            total += s->bulk_ops[ti];
        for (int ti = 0; ti < db->ntables && !rc; ti++) {
            ferry_tdef_t *t = &db->tables[ti];
            if (t->local_only) continue;
            int scan = 0;
            if (s->bulk == 1) {
                /* bulk: the table's ops are counted; none, nothing to do; a small share is
                 * cheaper found through the index */
                if (s->bulk_ops[ti] == 0) continue;
                scan = (double)s->bulk_ops[ti] >= 0.3 * (double)total;
                if (!scan && oplog_need_index(s)) goto sqlfail;
            }
            size_t cap = 512 + strlen(t->name) * 2;
            for (int i = 0; i < t->ncols; i++)
                cap += strlen(t->cols[i]) * 6 + 128;
            char *sql = malloc(cap);
            if (!sql) return free(bids), FERRY_ENOMEM;
            size_t n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
            for (int i = 0; i < t->ncols; i++)
                n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
            n += (size_t)snprintf(sql + n, cap - n, ") SELECT o.row_id");
            for (int i = 0; i < t->ncols; i++)
                n += (size_t)snprintf(sql + n, cap - n, ", ferry_col(o.data, '%s')", t->cols[i]);
            pread_t *rd = NULL;
            if (alone && !scan) scan = type_share(p->conn, t->name) >= 0.3;
            if (alone && scan &&
                bucket_count(p->conn, bid) >=
                    (s->pub_reader_min > 0 ? s->pub_reader_min : PR_MIN_OPS) &&
                (rd = pr_start(p->conn, t))) {
                s->pub_reader_used++;
                n = (size_t)snprintf(sql, cap, "INSERT OR REPLACE INTO \"%s\"(id", t->name);
                for (int i = 0; i < t->ncols; i++)
                    n += (size_t)snprintf(sql + n, cap - n, ", \"%s\"", t->cols[i]);
                n += (size_t)snprintf(sql + n, cap - n, ") SELECT c0");
                for (int i = 0; i < t->ncols; i++)
                    n += (size_t)snprintf(sql + n, cap - n, ", c%d", i + 1);
                snprintf(sql + n, cap - n,
                         " FROM ferry_rows(?3) WHERE ?1 IS NOT NULL AND ?2 "
                         "IS NOT NULL");
            } else if (alone && scan)
                snprintf(sql + n, cap - n,
                         " FROM ferry_oplog o NOT INDEXED WHERE o.row_type = ?2 AND ?1 IS NOT "
                         "NULL ORDER BY o.rowid");
            else if (alone)
                snprintf(sql + n, cap - n,
                         " FROM (SELECT row_id, max(op_id), data FROM ferry_oplog WHERE "
                         "row_type = ?2 AND ?1 IS NOT NULL GROUP BY row_id) o");
            else
                snprintf(sql + n, cap - n,
                         " FROM ferry_oplog o WHERE o.bucket = ?1 AND o.row_type = ?2 AND NOT "
                         "EXISTS (SELECT 1 FROM ferry_oplog h WHERE h.row_type = o.row_type AND "
                         "h.row_id = o.row_id AND h.op_id > o.op_id)");
            r = sqlite3_prepare_v2(p->conn, sql, -1, &st, NULL);
            free(sql);
            if (r != SQLITE_OK) {
                pr_free(rd);
                goto sqlfail;
            }
            sqlite3_bind_int64(st, 1, bid);
            sqlite3_bind_text(st, 2, t->name, -1, SQLITE_STATIC);
            if (rd) sqlite3_bind_pointer(st, 3, rd, "ferry_rows", NULL);
            sqlite3_exec(p->conn, "SAVEPOINT ferry_whole", NULL, NULL, NULL);
            r = sqlite3_step(st);
            int changes = sqlite3_changes(p->conn);
            sqlite3_finalize(st);
            st = NULL;
            pr_free(rd);
            if (r == SQLITE_DONE) {
                sqlite3_exec(p->conn, "RELEASE ferry_whole", NULL, NULL, NULL);
                if (changes > 0) p->changed |= (uint64_t)1 << ti;
                continue;
            }
            /* e.g. a data string that is not JSON: this table's rows of the bucket one by one */
            sqlite3_exec(p->conn, "ROLLBACK TO ferry_whole; RELEASE ferry_whole", NULL, NULL, NULL);
            if (oplog_need_index(s)) goto sqlfail; /* pub_row looks rows up by the index */
            sqlite3_stmt *rows;
            if (sqlite3_prepare_v2(p->conn,
                                   "SELECT DISTINCT row_id FROM ferry_oplog WHERE bucket = ? AND "
                                   "row_type = ?",
                                   -1, &rows, NULL) != SQLITE_OK)
                goto sqlfail;
            sqlite3_bind_int64(rows, 1, bid);
            sqlite3_bind_text(rows, 2, t->name, -1, SQLITE_STATIC);
            while (!rc && sqlite3_step(rows) == SQLITE_ROW)
                rc = pub_row(db, p, t->name, (const char *)sqlite3_column_text(rows, 0));
            sqlite3_finalize(rows);
        }
    }
    free(bids);
    return rc;
sqlfail:
    snprintf(p->err, sizeof p->err, "%s", sqlite3_errmsg(p->conn));
    sqlite3_finalize(st);
    sqlite3_finalize(sel);
    free(bids);
    return FERRY_ESQLITE;
}

/* Can downloaded data be published now? Must run inside the publishing write transaction. */
static int can_apply(ferry_sync_t *s, int *ok)
{
    sqlite3_stmt *st = s->st[S_CRUD_COUNT];
    if (sqlite3_step(st) != SQLITE_ROW) {
        sqlite3_reset(st);
        return -1;
    }
    int64_t n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    int64_t target = ferry__kv_get_int(s->conn, "target", -1);
    *ok = n == 0 && (target < 0 || (s->cp_write_cp >= 0 && target <= s->cp_write_cp));
    return 0;
}

/* Ferry's own triggers on the synced tables fire only WHEN NOT ferry_applying() (never on
 * this connection), or on an UPDATE of the id (which publishing never does); yet SQLite still
 * runs each AFTER INSERT trigger's program per row to evaluate that condition: a quarter of
 * publishing 1,000,000 rows. When no other trigger exists in the file, publishing runs with
 * triggers disabled on this connection. Called inside the publish transaction (the write lock
 * keeps the schema as checked); returns 1 when it disabled them. */
static int triggers_off(sqlite3 *c)
{
    sqlite3_stmt *st;
    int others = 1;
    if (sqlite3_prepare_v2(c,
                           "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND "
                           "name NOT IN ('ferry_ins_' || tbl_name, 'ferry_upd_' || tbl_name, "
                           "'ferry_del_' || tbl_name, 'ferry_id_' || tbl_name)",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW) others = sqlite3_column_int(st, 0) > 0;
    sqlite3_finalize(st);
    int was = 1;
    return !others && sqlite3_db_config(c, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, &was) == SQLITE_OK;
}

static int publish_tx(ferry_db_t *db, ferry_sync_t *s, int prio, int *trig_off);

/* Publishes the marked rows of buckets with priority <= prio (prio < 0: all, a full
 * checkpoint). Returns 1 when published, 0 when blocked by uploads, negative on error. */
static int publish(ferry_db_t *db, ferry_sync_t *s, int prio)
{
    int trig_off = 0;
    s->defer_checkpoint = 1;
    int rc = publish_tx(db, s, prio, &trig_off);
    s->defer_checkpoint = 0;
    if (trig_off) sqlite3_db_config(s->conn, SQLITE_DBCONFIG_ENABLE_TRIGGER, 1, NULL);
    return rc;
}

/* 1 when rows are marked one by one for the next publish (not only whole buckets). */
static int rows_marked(sqlite3 *c)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(c,
                           "SELECT EXISTS (SELECT 1 FROM ferry_updated WHERE row_type <> '' "
                           "OR row_id <> '')",
                           -1, &st, NULL) != SQLITE_OK)
        return 1;
    int marked = sqlite3_step(st) != SQLITE_ROW || sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return marked;
}

static int publish_tx(ferry_db_t *db, ferry_sync_t *s, int prio, int *trig_off)
{
    if (sqlite3_exec(s->conn, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return sqlerr(s, "start the publish transaction");
    int ok = 1;
    if (prio != 0 && can_apply(s, &ok) != 0) return sqlerr(s, "read the upload queue");
    if (!ok) {
        sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
        return 0;
    }
    *trig_off = triggers_off(s->conn);
    /* without the key index (bulk): rows marked one by one need it */
    s->bulk = oplog_unindexed(s->conn);
    if (s->bulk < 0) return sqlerr(s, "inspect the oplog");
    if (s->bulk && rows_marked(s->conn) && oplog_need_index(s)) return sqlerr(s, "index the oplog");
    pub_t p;
    int rc = pub_init(db, &p, s->conn);
    sqlite3_stmt *sel = NULL;
    char q[512];
    /* buckets new since the last publish (whole-bucket marks) first, set-based; then the rows
     * marked one by one */
    char filt[128] = "";
    if (prio >= 0)
        snprintf(filt, sizeof filt,
                 " AND bucket IN (SELECT id FROM ferry_buckets WHERE priority <= %d)", prio);
    if (!rc) rc = publish_whole(db, s, &p, filt);
    snprintf(q, sizeof q,
             "SELECT row_type, row_id FROM ferry_updated WHERE (row_type <> '' OR row_id <> '')%s "
             "GROUP BY 1, 2",
             filt);
    if (!rc && sqlite3_prepare_v2(s->conn, q, -1, &sel, NULL) != SQLITE_OK) rc = FERRY_ESQLITE;
    while (!rc) {
        int st = sqlite3_step(sel);
        if (st == SQLITE_DONE) break;
        if (st != SQLITE_ROW) {
            snprintf(p.err, sizeof p.err, "%s", sqlite3_errmsg(s->conn));
            rc = FERRY_ESQLITE;
            break;
        }
        rc = pub_row(db, &p, (const char *)sqlite3_column_text(sel, 0),
                     (const char *)sqlite3_column_text(sel, 1));
    }
    sqlite3_finalize(sel);
    uint64_t changed = p.changed;
    pub_free(&p);
    if (rc) {
        sqlerr(s, "publish downloaded rows");
        if (p.err[0]) snprintf(s->errmsg, sizeof s->errmsg, "could not publish rows: %s", p.err);
        return rc;
    }
    if (prio < 0)
        snprintf(q, sizeof q, "DELETE FROM ferry_updated");
    else
        snprintf(q, sizeof q,
                 "DELETE FROM ferry_updated WHERE bucket IN "
                 "(SELECT id FROM ferry_buckets WHERE priority <= %d)",
                 prio);
    if (sqlite3_exec(s->conn, q, NULL, NULL, NULL) != SQLITE_OK)
        return sqlerr(s, "clear the rows to publish");
    if (prio < 0) {
        sqlite3_bind_int64(s->st[S_LAST_OP_ALL], 1, s->cp_last_op);
        int64_t now = (int64_t)time(NULL);
        /* the write checkpoint was reached: no gate until the next local write */
        if (step_done(s->st[S_LAST_OP_ALL]) || ferry__kv_set_int(s->conn, "last_synced_at", now) ||
            sqlite3_exec(s->conn, "DELETE FROM ferry_kv WHERE key = 'target'", NULL, NULL, NULL) ||
            ferry__kv_set_int(s->conn, "applied_checkpoint", s->cp_last_op))
            return sqlerr(s, "store the checkpoint");
        pthread_mutex_lock(&db->mu);
        db->status.last_synced_at = now;
        db->status.applied_checkpoint = s->cp_last_op;
        db->synced_ever = 1;
        pthread_mutex_unlock(&db->mu);
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return sqlerr(s, "commit the checkpoint");
    if (s->bulk == 1) s->index_due = 1; /* once the app was told */
    if (prio < 0) {
        s->pending = 0;
        s->applied_cp = s->cp_last_op;
        pthread_mutex_lock(&db->mu);
        db->conn_applied_write_cp = s->cp_write_cp;
        pthread_mutex_unlock(&db->mu);
    }
    if (changed) ferry__notify(db, changed);
    return 1;
}

int ferry__sync_try_pending(ferry_db_t *db, ferry_sync_t *s)
{
    int rc = ferry__oplog_flush(s);
    if (rc) return rc;
    if (!s->pending) return 0;
    return publish(db, s, -1);
}

/* ---- buckets ------------------------------------------------------------------------------- */

/* Deletes a local bucket: its rows are marked for re-evaluation, its ops and row removed.
 * Runs inside a transaction. */
static int drop_bucket(ferry_sync_t *s, int64_t id)
{
    s->bulk = -1;
    if (oplog_need_index(s)) return -1;
    sqlite3_bind_int64(s->st[S_CLEAR_MARK], 1, id);
    sqlite3_bind_int64(s->st[S_CLEAR_MARK], 2, 0);
    sqlite3_bind_int64(s->st[S_CLEAR_DEL], 1, id);
    sqlite3_bind_int64(s->st[S_BUCKET_DROP], 1, id);
    if (step_done(s->st[S_CLEAR_MARK]) || step_done(s->st[S_CLEAR_DEL]) ||
        step_done(s->st[S_BUCKET_DROP]))
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
    if (step_done(s->st[S_BUCKET_PRIO])) return sqlerr(s, "store a bucket priority");
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
        return sqlerr(s, "start a transaction");
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
                    if (drop_bucket(s, drop[k])) rc = sqlerr(s, "delete a bucket");
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
            if (id >= 0 && drop_bucket(s, id)) rc = sqlerr(s, "delete a bucket");
        }
    }
    if (rc) {
        sqlite3_exec(s->conn, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return sqlerr(s, "commit a checkpoint");
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

/* One op of a data line, parsed either by the scanner below or from a jansson tree. Strings
 * are NUL-terminated; NULL when absent or JSON null. */
enum { OP_PUT, OP_REMOVE, OP_MOVE, OP_CLEAR, OP_OTHER };
typedef struct dop {
    int64_t opid;
    uint32_t ck;
    int kind;
    const char *type, *oid, *sub, *data;
} dop_t;

/* ---- a scanner for data lines (no tree, no allocation per op) --------------------------------
 *
 * An initial sync is mostly data lines: building a jansson tree of every op and freeing it again
 * cost about a third of the time. The scanner accepts exactly the shape servers send
 * ({"data":{"bucket":…,"data":[{…},…],…}} with any other keys skipped) and unescapes strings
 * into s->arena; anything it does not expect (another type for a field, bad escapes, invalid
 * UTF-8, trailing text) makes it give up, and the line goes through jansson, which then reports
 * the error or handles what the scanner did not. */
typedef struct scan {
    const char *p, *end;
    ferry_scan_t *s;
} scan_t;

static void sk_ws(scan_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int sk_lit(scan_t *c, char ch)
{
    sk_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* Makes room for n more bytes in the arena; -1 on out-of-memory. */
static int arena_reserve(ferry_scan_t *s, size_t n)
{
    if (s->arena_len + n <= s->arena_cap) return 0;
    size_t cap = s->arena_cap ? s->arena_cap : 65536;
    while (cap < s->arena_len + n)
        cap *= 2;
    char *na = realloc(s->arena, cap);
    if (!na) return -1;
    s->arena = na;
    s->arena_cap = cap;
    return 0;
}

static int arena_put(ferry_scan_t *s, const char *b, size_t n)
{
    if (arena_reserve(s, n) != 0) return -1;
    memcpy(s->arena + s->arena_len, b, n);
    s->arena_len += n;
    return 0;
}

static int hexv(char h)
{
    return h >= '0' && h <= '9'   ? h - '0'
           : h >= 'a' && h <= 'f' ? h - 'a' + 10
           : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                  : -1;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexv(p[i]);
        if (h < 0) return -1;
        v = v << 4 | (unsigned)h;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), 0 when invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (!n || (size_t)(end - p) < n) return 0;
    unsigned cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A string value: unescaped, NUL-terminated, into the arena; *off = its offset there. The
 * unescaped string and its NUL are never longer than the rest of the line, so the room is made
 * once and the bytes are copied as they are read. */
static int sk_string(scan_t *c, size_t *off)
{
    sk_ws(c);
    if (c->p >= c->end || *c->p != '"') return -1;
    c->p++;
    *off = c->s->arena_len;
    if (arena_reserve(c->s, (size_t)(c->end - c->p) + 1)) return -1;
    for (;;) {
        const char *q = c->p;
        char *w = c->s->arena + c->s->arena_len;
        while (q < c->end && PLAIN[(unsigned char)*q])
            *w++ = *q++;
        c->s->arena_len += (size_t)(q - c->p);
        c->p = q;
        if (q >= c->end) return -1;
        unsigned char ch = (unsigned char)*q;
        if (ch == '"') {
            c->p++;
            c->s->arena[c->s->arena_len++] = 0;
            return 0;
        }
        if (ch < 0x20) return -1;
        if (ch >= 0x80) {
            size_t n = utf8_len((const unsigned char *)q, (const unsigned char *)c->end);
            if (!n || arena_put(c->s, q, n)) return -1;
            c->p += n;
            continue;
        }
        /* an escape */
        if (c->end - q < 2) return -1;
        char e = q[1], o;
        c->p = q + 2;
        switch (e) {
        case '"':
            o = '"';
            break;
        case '\\':
            o = '\\';
            break;
        case '/':
            o = '/';
            break;
        case 'b':
            o = '\b';
            break;
        case 'f':
            o = '\f';
            break;
        case 'n':
            o = '\n';
            break;
        case 'r':
            o = '\r';
            break;
        case 't':
            o = '\t';
            break;
        case 'u': {
            unsigned u, lo;
            if (hex4(c->p, c->end, &u)) return -1;
            c->p += 4;
            if (u >= 0xdc00 && u <= 0xdfff) return -1;
            if (u >= 0xd800 && u <= 0xdbff) {
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' ||
                    hex4(c->p + 2, c->end, &lo) || lo < 0xdc00 || lo > 0xdfff)
                    return -1;
                c->p += 6;
                u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (u == 0) return -1; /* a NUL inside: leave it to jansson */
            char b[4];
            size_t n;
            if (u < 0x80) {
                b[0] = (char)u;
                n = 1;
            } else if (u < 0x800) {
                b[0] = (char)(0xc0 | u >> 6);
                b[1] = (char)(0x80 | (u & 0x3f));
                n = 2;
            } else if (u < 0x10000) {
                b[0] = (char)(0xe0 | u >> 12);
                b[1] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[2] = (char)(0x80 | (u & 0x3f));
                n = 3;
            } else {
                b[0] = (char)(0xf0 | u >> 18);
                b[1] = (char)(0x80 | ((u >> 12) & 0x3f));
                b[2] = (char)(0x80 | ((u >> 6) & 0x3f));
                b[3] = (char)(0x80 | (u & 0x3f));
                n = 4;
            }
            if (arena_put(c->s, b, n)) return -1;
            continue;
        }
        default:
            return -1;
        }
        if (arena_put(c->s, &o, 1)) return -1;
    }
}

/* Skips any JSON value (strings go to the arena and are dropped again). */
static int sk_value(scan_t *c, int depth)
{
    sk_ws(c);
    if (c->p >= c->end || depth > 32) return -1;
    char ch = *c->p;
    if (ch == '"') {
        size_t off, keep = c->s->arena_len;
        int rc = sk_string(c, &off);
        c->s->arena_len = keep;
        return rc;
    }
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        if (sk_lit(c, close)) return 0;
        for (;;) {
            if (ch == '{') {
                size_t off, keep = c->s->arena_len;
                if (sk_string(c, &off)) return -1;
                c->s->arena_len = keep;
                if (!sk_lit(c, ':')) return -1;
            }
            if (sk_value(c, depth + 1)) return -1;
            if (sk_lit(c, close)) return 0;
            if (!sk_lit(c, ',')) return -1;
        }
    }
    const char *q = c->p;
    while (q < c->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E' || (*q >= 'a' && *q <= 'z')))
        q++;
    size_t n = (size_t)(q - c->p);
    if (n == 0) return -1;
    if ((*c->p >= 'a' && *c->p <= 'z') &&
        !((n == 4 && !memcmp(c->p, "true", 4)) || (n == 5 && !memcmp(c->p, "false", 5)) ||
          (n == 4 && !memcmp(c->p, "null", 4))))
        return -1;
    c->p = q;
    return 0;
}

static int sk_null(scan_t *c)
{
    sk_ws(c);
    if (c->end - c->p >= 4 && !memcmp(c->p, "null", 4)) {
        c->p += 4;
        return 1;
    }
    return 0;
}

/* A checksum number, the same range rules as ferry__ck_parse. */
static int sk_checksum(scan_t *c, uint32_t *out)
{
    sk_ws(c);
    const char *q = c->p;
    int isint = 1;
    while (q < c->end && ((*q >= '0' && *q <= '9') || *q == '-' || *q == '+' || *q == '.' ||
                          *q == 'e' || *q == 'E')) {
        if (*q == '.' || *q == 'e' || *q == 'E') isint = 0;
        q++;
    }
    size_t n = (size_t)(q - c->p);
    if (n == 0 || n > 40) return -1;
    char b[48];
    memcpy(b, c->p, n);
    b[n] = 0;
    if (!isint) return -1; /* reals: the jansson way */
    const char *d = b[0] == '-' ? b + 1 : b;
    if (!*d || (d[0] == '0' && d[1]) || strlen(d) > 11) return -1;
    for (const char *x = d; *x; x++)
        if (*x < '0' || *x > '9') return -1;
    long long v = strtoll(b, NULL, 10);
    if (v < -2147483648LL || v > 4294967295LL) return -1;
    *out = (uint32_t)(int64_t)v;
    c->p = q;
    return 0;
}

#define NOFF ((size_t)-1)
typedef struct dop_off {
    int64_t opid;
    uint32_t ck;
    int kind;
    size_t type, oid, sub, data;
} dop_off_t;

static int ops_reserve(ferry_scan_t *s, size_t n)
{
    if (n <= s->ops_cap) return 0;
    size_t cap = s->ops_cap ? s->ops_cap * 2 : 1024;
    while (cap < n)
        cap *= 2;
    void *no = realloc(s->ops, cap * sizeof(dop_off_t));
    if (!no) return -1;
    s->ops = no;
    s->ops_cap = cap;
    return 0;
}

static int kind_of(const char *k)
{
    return !strcmp(k, "PUT")      ? OP_PUT
           : !strcmp(k, "REMOVE") ? OP_REMOVE
           : !strcmp(k, "MOVE")   ? OP_MOVE
           : !strcmp(k, "CLEAR")  ? OP_CLEAR
                                  : OP_OTHER;
}

/* The field of an op a key names: 1 op_id, 2 op, 3 checksum, 4 object_type, 5 object_id,
 * 6 subkey, 7 data, 0 another (one comparison, chosen by the first letter). */
static int op_field(const char *k)
{
    switch (k[0]) {
    case 'o':
        return !strcmp(k, "op_id")         ? 1
               : !strcmp(k, "op")          ? 2
               : !strcmp(k, "object_type") ? 4
               : !strcmp(k, "object_id")   ? 5
                                           : 0;
    case 'c':
        return !strcmp(k, "checksum") ? 3 : 0;
    case 's':
        return !strcmp(k, "subkey") ? 6 : 0;
    case 'd':
        return !strcmp(k, "data") ? 7 : 0;
    default:
        return 0;
    }
}

/* Scans a whole line; on success *bucket_off and s->ops / s->nops describe it (strings in the
 * arena). Returns 0, 1 when the line is not a data line, -1 when jansson must take it. */
static int scan_data_line(ferry_scan_t *s, const char *line, size_t len, size_t *bucket_off)
{
    scan_t c = {line, line + len, s};
    s->arena_len = 0;
    s->nops = 0;
    if (!sk_lit(&c, '{')) return 1;
    size_t koff;
    if (sk_string(&c, &koff)) return -1;
    if (strcmp(s->arena + koff, "data") != 0) return 1;
    if (!sk_lit(&c, ':') || !sk_lit(&c, '{')) return -1;
    *bucket_off = NOFF;
    int have_data = 0;
    if (!sk_lit(&c, '}'))
        for (;;) {
            size_t keep = s->arena_len;
            if (sk_string(&c, &koff) || !sk_lit(&c, ':')) return -1;
            int isb = !strcmp(s->arena + koff, "bucket"), isd = !strcmp(s->arena + koff, "data");
            s->arena_len = keep;
            if (isb) {
                if (*bucket_off != NOFF || sk_string(&c, bucket_off)) return -1;
            } else if (isd) {
                if (have_data || !sk_lit(&c, '[')) return -1;
                have_data = 1;
                if (!sk_lit(&c, ']'))
                    for (;;) {
                        if (ops_reserve(s, s->nops + 1) || !sk_lit(&c, '{')) return -1;
                        dop_off_t *o = &((dop_off_t *)s->ops)[s->nops];
                        o->type = o->oid = o->sub = o->data = NOFF;
                        int have_id = 0, have_ck = 0, have_kind = 0;
                        if (!sk_lit(&c, '}'))
                            for (;;) {
                                size_t k2 = s->arena_len;
                                if (sk_string(&c, &koff) || !sk_lit(&c, ':')) return -1;
                                const char *k = s->arena + koff;
                                int f = op_field(k);
                                s->arena_len = k2;
                                size_t v;
                                if (f == 1) {
                                    if (have_id || sk_string(&c, &v)) return -1;
                                    /* parse the id the same way as ferry__parse_id */
                                    const char *x = s->arena + v;
                                    int64_t n = 0;
                                    if (!*x) return -1;
                                    for (; *x; x++) {
                                        if (*x < '0' || *x > '9' ||
                                            n > (INT64_MAX - (*x - '0')) / 10)
                                            return -1;
                                        n = n * 10 + (*x - '0');
                                    }
                                    o->opid = n;
                                    have_id = 1;
                                    s->arena_len = k2;
                                } else if (f == 2) {
                                    if (have_kind || sk_string(&c, &v)) return -1;
                                    o->kind = kind_of(s->arena + v);
                                    have_kind = 1;
                                    s->arena_len = k2;
                                } else if (f == 3) {
                                    if (have_ck || sk_checksum(&c, &o->ck)) return -1;
                                    have_ck = 1;
                                } else if (f >= 4) {
                                    size_t *dst = f == 4   ? &o->type
                                                  : f == 5 ? &o->oid
                                                  : f == 6 ? &o->sub
                                                           : &o->data;
                                    if (*dst != NOFF) return -1;
                                    if (!sk_null(&c) && sk_string(&c, dst)) return -1;
                                } else if (sk_value(&c, 0)) {
                                    return -1;
                                }
                                if (sk_lit(&c, '}')) break;
                                if (!sk_lit(&c, ',')) return -1;
                            }
                        if (!have_id || !have_ck || !have_kind) return -1;
                        if ((o->kind == OP_PUT || o->kind == OP_REMOVE) &&
                            (o->type == NOFF || o->oid == NOFF))
                            return -1;
                        s->nops++;
                        if (sk_lit(&c, ']')) break;
                        if (!sk_lit(&c, ',')) return -1;
                    }
            } else if (sk_value(&c, 0)) {
                return -1;
            }
            if (sk_lit(&c, '}')) break;
            if (!sk_lit(&c, ',')) return -1;
        }
    if (!sk_lit(&c, '}')) return -1;
    sk_ws(&c);
    if (c.p != c.end || *bucket_off == NOFF || !have_data) return -1;
    return 0;
}

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
        o->kind = kind_of(kind);
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

void ferry__scan_free(ferry_scan_t *b)
{
    free(b->arena);
    free(b->ops);
    memset(b, 0, sizeof *b);
}

static void trim(const char **line, size_t *len)
{
    const char *l = *line;
    size_t n = *len;
    while (n && (l[n - 1] == '\r' || l[n - 1] == ' ' || l[n - 1] == '\t'))
        n--;
    while (n && (*l == ' ' || *l == '\t' || *l == '\r')) {
        l++;
        n--;
    }
    *line = l;
    *len = n;
}

int ferry__sync_scan(ferry_scan_t *b, const char *line, size_t len)
{
    trim(&line, &len);
    if (len == 0) return 1;
    return scan_data_line(b, line, len, &b->bucket_off);
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
static int oplog_unindexed(sqlite3 *c)
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
static int oplog_need_index(ferry_sync_t *s)
{
    int u = s->bulk >= 0 ? s->bulk : oplog_unindexed(s->conn);
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
typedef struct skey {
    char b[4]; /* the prefix's number in digits, not terminated */
    int n;     /* its length; 0: the subkey is stored as text */
} skey_t;

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

/* ---- the ops of a batch as a table ----------------------------------------------------------
 *
 * ferry_ops(?) is an eponymous table-valued function over a batch of PUTs in memory (an ops_t
 * bound with sqlite3_bind_pointer, type "ferry_ops"): one row per op, in batch order, columns
 * subkey (its stored form; 'null' when absent), op_id, row_type, row_id, data, hash. Its values
 * point into the scanned line and the batch (SQLITE_STATIC), which outlive the statement's step.
 * Only statements may use it, not the schema (views, triggers). */
typedef struct ops {
    const dop_t *const *op;
    const skey_t *sk; /* the stored subkeys, op[i]'s at sk[i] */
    size_t n;
} ops_t;

typedef struct ops_cur {
    sqlite3_vtab_cursor base;
    const ops_t *ops;
    size_t i;
} ops_cur_t;

static int ops_connect(sqlite3 *c, void *aux, int argc, const char *const *argv, sqlite3_vtab **out,
                       char **err)
{
    (void)aux, (void)argc, (void)argv, (void)err;
    int rc = sqlite3_declare_vtab(c, "CREATE TABLE x(subkey, op_id, row_type, row_id, data, "
                                     "hash, batch HIDDEN)");
    if (rc != SQLITE_OK) return rc;
    sqlite3_vtab_config(c, SQLITE_VTAB_DIRECTONLY);
    if (!(*out = sqlite3_malloc(sizeof **out))) return SQLITE_NOMEM;
    memset(*out, 0, sizeof **out);
    return SQLITE_OK;
}

static int ops_disconnect(sqlite3_vtab *vt)
{
    sqlite3_free(vt);
    return SQLITE_OK;
}

/* Only "batch = ?" (the function's argument) is a usable plan. */
static int ops_best_index(sqlite3_vtab *vt, sqlite3_index_info *ix)
{
    (void)vt;
    for (int i = 0; i < ix->nConstraint; i++)
        if (ix->aConstraint[i].iColumn == 6 &&
            ix->aConstraint[i].op == SQLITE_INDEX_CONSTRAINT_EQ) {
            if (!ix->aConstraint[i].usable) return SQLITE_CONSTRAINT;
            ix->aConstraintUsage[i].argvIndex = 1;
            ix->aConstraintUsage[i].omit = 1;
            ix->estimatedCost = 1;
            ix->estimatedRows = PUT_BATCH;
            return SQLITE_OK;
        }
    return SQLITE_CONSTRAINT;
}

static int ops_open(sqlite3_vtab *vt, sqlite3_vtab_cursor **out)
{
    (void)vt;
    ops_cur_t *c = sqlite3_malloc(sizeof *c);
    if (!c) return SQLITE_NOMEM;
    memset(c, 0, sizeof *c);
    *out = &c->base;
    return SQLITE_OK;
}

static int ops_close(sqlite3_vtab_cursor *cur)
{
    sqlite3_free(cur);
    return SQLITE_OK;
}

static int ops_filter(sqlite3_vtab_cursor *cur, int idx, const char *idxs, int argc,
                      sqlite3_value **argv)
{
    (void)idx, (void)idxs;
    ops_cur_t *c = (ops_cur_t *)cur;
    c->ops = argc == 1 ? sqlite3_value_pointer(argv[0], "ferry_ops") : NULL;
    c->i = 0;
    return SQLITE_OK;
}

static int ops_next(sqlite3_vtab_cursor *cur)
{
    ((ops_cur_t *)cur)->i++;
    return SQLITE_OK;
}

static int ops_eof(sqlite3_vtab_cursor *cur)
{
    ops_cur_t *c = (ops_cur_t *)cur;
    return !c->ops || c->i >= c->ops->n;
}

static int ops_column(sqlite3_vtab_cursor *cur, sqlite3_context *ctx, int col)
{
    ops_cur_t *c = (ops_cur_t *)cur;
    const dop_t *op = c->ops->op[c->i];
    const char *t = NULL;
    switch (col) {
    case 0:
        if (c->ops->sk[c->i].n) {
            sqlite3_result_blob(ctx, c->ops->sk[c->i].b, c->ops->sk[c->i].n, SQLITE_STATIC);
            return SQLITE_OK;
        }
        t = op->sub ? op->sub : "null";
        break;
    case 1:
        sqlite3_result_int64(ctx, op->opid);
        return SQLITE_OK;
    case 2:
        t = op->type;
        break;
    case 3:
        t = op->oid;
        break;
    case 4:
        t = op->data;
        break;
    case 5:
        sqlite3_result_int64(ctx, op->ck);
        return SQLITE_OK;
    default:
        return SQLITE_OK; /* batch: NULL */
    }
    if (t) sqlite3_result_text(ctx, t, -1, SQLITE_STATIC);
    return SQLITE_OK;
}

static int ops_rowid(sqlite3_vtab_cursor *cur, sqlite3_int64 *rowid)
{
    *rowid = (sqlite3_int64)((ops_cur_t *)cur)->i;
    return SQLITE_OK;
}

static const sqlite3_module OPS_MODULE = {
    .xConnect = ops_connect,
    .xBestIndex = ops_best_index,
    .xDisconnect = ops_disconnect,
    .xOpen = ops_open,
    .xClose = ops_close,
    .xFilter = ops_filter,
    .xNext = ops_next,
    .xEof = ops_eof,
    .xColumn = ops_column,
    .xRowid = ops_rowid,
};

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
        if (step_done(ins)) return -1;
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
            return sqlerr(s, "start a transaction");
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
        if (step_done(s->st[S_BUCKET_INS])) return sqlerr(s, "create a bucket");
        bid = sqlite3_last_insert_rowid(s->conn);
        sqlite3_bind_int64(s->st[S_WHOLE_SET], 1, bid);
        if (step_done(s->st[S_WHOLE_SET])) return sqlerr(s, "mark a new bucket");
        whole = 1;
        if (s->bulk < 0 && (s->bulk = oplog_unindexed(s->conn)) < 0)
            return sqlerr(s, "inspect the oplog");
        if (!s->bulk && oplog_empty(s->conn)) { /* a first sync: no key index for now */
            if (sqlite3_exec(s->conn, "DROP INDEX ferry_oplog_key", NULL, NULL, NULL) != SQLITE_OK)
                return sqlerr(s, "drop the oplog's key index");
            s->bulk = 1;
            s->bulk_counted = 1;
            memset(s->bulk_ops, 0, sizeof s->bulk_ops);
        }
    } else {
        sqlite3_bind_int64(s->st[S_WHOLE_GET], 1, bid);
        whole = sqlite3_step(s->st[S_WHOLE_GET]) == SQLITE_ROW;
        sqlite3_reset(s->st[S_WHOLE_GET]);
    }
    if (s->bulk < 0 && (s->bulk = oplog_unindexed(s->conn)) < 0)
        return sqlerr(s, "inspect the oplog");
    if (s->bulk) {
        int puts_only = whole;
        for (size_t i = 0; i < nops && puts_only; i++)
            puts_only = ops[i].kind == OP_PUT || ops[i].kind == OP_MOVE;
        if (!puts_only && oplog_need_index(s)) return sqlerr(s, "index the oplog");
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
                if (step_done(mark)) return sqlerr(s, "store an op");
            }
            if (sk_encode(s, op, &bsk[nb])) return sqlerr(s, "store an op");
            batch[nb++] = op;
            if (nb < PUT_BATCH) continue;
        }
        if (nb && put_batch(s, bid, batch, bsk, nb, &addck, &opck)) return sqlerr(s, "store an op");
        nb = 0;
        if (!op || op->kind == OP_PUT) continue;
        int64_t opid = op->opid;
        uint32_t ck = op->ck;
        last = opid;
        count++;
        if (op->kind == OP_REMOVE) {
            /* the stored op of the key goes (its checksum moving to add_checksum) */
            skey_t k;
            if (sk_encode(s, op, &k)) return sqlerr(s, "store an op");
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
            if (r != SQLITE_DONE || step_done(mark)) return sqlerr(s, "store an op");
        } else if (op->kind == OP_MOVE) {
            addck += ck;
        } else if (op->kind == OP_CLEAR) {
            sqlite3_bind_int64(s->st[S_CLEAR_MARK], 1, bid);
            sqlite3_bind_int64(s->st[S_CLEAR_MARK], 2, bid);
            sqlite3_bind_int64(s->st[S_CLEAR_DEL], 1, bid);
            if (step_done(s->st[S_CLEAR_MARK]) || step_done(s->st[S_CLEAR_DEL]))
                return sqlerr(s, "clear a bucket");
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
        if (step_done(set)) return sqlerr(s, "update a bucket");
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
        return sqlerr(s, "start a transaction");
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
        if (id >= 0 && drop_bucket(s, id)) return sqlerr(s, "delete a bucket");
    }
    if (sqlite3_exec(s->conn, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) return sqlerr(s, "commit");
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
    rc = publish(db, s, prio);
    if (rc < 0) return rc;
    ferry__status_changed(db);
    ferry__oplog_checkpoint(s);
    return 0;
}

/* ---- lines --------------------------------------------------------------------------------- */

int ferry__oplog_line(ferry_db_t *db, ferry_sync_t *s, const char *line, size_t len)
{
    trim(&line, &len);
    if (len == 0) return 0;
    int sc = scan_data_line(&s->scan, line, len, &s->scan.bucket_off);
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
        out = json_dumps(body, JSON_COMPACT);
    }
    json_decref(arr);
    json_decref(params);
    json_decref(body);
    return out;
}
