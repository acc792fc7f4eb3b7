/* gw_storage.c -- the embedded SQLite bucket storage (see gw_storage.h)
 *
 * Schema (one file, WAL mode; commits are synced by the syncer thread before anything is served
 * or acknowledged, see "syncer" below):
 *   state(k, v)                                replication state: next_op, last_op, lsn, …
 *   buckets(id, name, checksum, count, last_op) running totals at the latest checkpoint
 *   op_chunks(id, bucket_id, first_op, last_op, n, checksum, ops)
 *                                               a bucket's ops in runs: ops is a blob of records
 *                                               (op id, checksum, kind, identity span, wire JSON
 *                                               line), at most CHUNK_MAX_OPS per chunk, found by
 *                                               op_chunks_by_bucket(bucket_id, last_op)
 *   rows(tbl, key, members, lookups, copy)      per source row: memberships, lookup text, copy
 *   lookups(key, tbl, rkey, params, from_op, to_op)
 *                                               parameter-lookup entries valid in [from_op, to_op)
 *   write_checkpoints(user_key, counter, lsn)   the latest write checkpoint per "<sub>/<client>"
 *
 * Rule versions (layout 4). Everything but write_checkpoints and a few shared state keys
 * (global_key) belongs to one rule version, named by a prefix: buckets "2#name", rows.tbl
 * "2#public.todos", lookups.key "2#…", state "2#lsn". A writer works in one version's namespace
 * (s->version; the statements take it as parameter ?9). Two writers may work on the file at
 * once, the serving version's and one building a new version beside it: each transaction holds
 * SQLite's write lock, takes the shared op-id sequence up where the last commit of either left
 * it, and touches only its own namespace. Only the serving writer publishes its checkpoint to
 * this process's readers (and runs the hook).
 *
 * Why chunks: a commit's ops land in thousands of buckets. One SQLite row per op (the second
 * layout) cost an index entry and a b-tree insert per op, 40 % of replication; clustering rows
 * by (bucket, op) (the first layout) dirtied one page per bucket per commit. Now the writer
 * queues a transaction's ops in memory, linked per bucket, and writes each bucket's run as one
 * row at commit: one insert per bucket per commit, appended in id order. Readers seek the first
 * chunk whose last_op is above their position and skip the records before it.
 *
 * Checkpoints (copying the WAL into the main file) run on a thread of their own with its own
 * connection (PASSIVE: they never block the writer), started when the WAL has CKPT_FRAMES new
 * frames; the writer's commits only append to the WAL and sync it.
 *
 * The writer keeps every bucket's totals in memory (a map by name and an array by id), updates
 * them as ops are written and flushes the dirty ones at commit. A bucket's checksum as of an
 * older checkpoint C is its running total minus the ops after C, which are few and recent.
 *
 * Invariants:
 *   1. op ids come from next_op (shared by the versions), strictly increasing; next_op is
 *      persisted in the same SQLite transaction as the ops, so a crash never reuses an id.
 *   2. a version's last_op is the highest op id of its committed ops (or, after a switch, of
 *      every version's: gw_storage_advance_checkpoint); its lsn the position committed with it.
 *      Both change only in gw_storage_commit().
 *   3. rows.members lists exactly the (bucket, object_type, object_id) with a live PUT.
 *   4. a chunk's first_op/last_op/n/checksum describe exactly its records, which are in op-id
 *      order; ops queued but not yet written are always above every written op of their bucket.
 */
#include "storage/gw_storage.h"
#include "base/gw_log.h"
#include "base/gw_map.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct bucket {
    int64_t id;
    char *name;
    uint32_t checksum;
    uint64_t count;
    uint64_t last_op;
    int dirty;
    uint64_t compacted;   /* ops up to here were compacted (this process; 0 after a start) */
    uint64_t touched_gen; /* == s->gen when it got ops in the open transaction */
    uint32_t pend_head;   /* offset + 1 of its first/last queued op in s->pend; 0: none */
    uint32_t pend_tail;
} bucket_t;

enum {
    ST_STATE_GET,
    ST_STATE_SET,
    ST_BUCKET_INSERT,
    ST_BUCKET_UPDATE,
    ST_CHUNK_INSERT,
    ST_ROW_GET,
    ST_ROW_INSERT,
    ST_ROW_UPDATE,
    ST_ROW_DEL,
    ST_ROWS_OF_TABLE,
    ST_LOOKUP_CLOSE,
    ST_LOOKUP_INSERT,
    ST_WCP_UPSERT,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_STATE_GET] = "SELECT v FROM state WHERE k = ?1",
    [ST_STATE_SET] = "INSERT INTO state(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = "
                     "excluded.v",
    [ST_BUCKET_INSERT] = "INSERT INTO buckets(name, checksum, count, last_op) VALUES (?1, 0, 0, 0)",
    [ST_BUCKET_UPDATE] = "UPDATE buckets SET checksum = ?2, count = ?3, last_op = ?4 WHERE id = ?1",
    [ST_CHUNK_INSERT] = "INSERT INTO op_chunks(bucket_id, first_op, last_op, n, checksum, ops) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
        "INSERT INTO write_checkpoints(user_key, counter, lsn) VALUES (?1, 1, ?2) "
        "ON CONFLICT(user_key) DO UPDATE SET counter = counter + 1, lsn = excluded.lsn "
        "RETURNING counter",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS state(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS buckets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    "  checksum INTEGER NOT NULL, count INTEGER NOT NULL, last_op INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS op_chunks(id INTEGER PRIMARY KEY, bucket_id INTEGER NOT NULL,"
    "  first_op INTEGER NOT NULL, last_op INTEGER NOT NULL, n INTEGER NOT NULL,"
    "  checksum INTEGER NOT NULL, ops BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS op_chunks_by_bucket ON op_chunks(bucket_id, last_op);"
    "CREATE TABLE IF NOT EXISTS rows(tbl TEXT NOT NULL, key TEXT NOT NULL, members BLOB,"
    "  lookups TEXT, copy BLOB, PRIMARY KEY(tbl, key)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS lookups(key TEXT NOT NULL, tbl TEXT NOT NULL, rkey TEXT NOT NULL,"
    "  params TEXT NOT NULL, from_op INTEGER NOT NULL, to_op INTEGER);"
    "CREATE INDEX IF NOT EXISTS lookups_by_key ON lookups(key, from_op);"
    "CREATE INDEX IF NOT EXISTS lookups_by_row ON lookups(tbl, rkey) WHERE to_op IS NULL;"
    "CREATE TABLE IF NOT EXISTS write_checkpoints(user_key TEXT PRIMARY KEY,"
    "  counter INTEGER NOT NULL, lsn INTEGER NOT NULL) WITHOUT ROWID;";

enum { OP_PUT = 1, OP_REMOVE = 2, OP_MOVE = 3, OP_CLEAR = 4 };

/* A chunk holds at most this many ops / about this many bytes; queued ops are written out as
 * chunks at commit, or earlier when the queue holds PEND_MAX_BYTES. */
enum { CHUNK_MAX_OPS = 1000, CHUNK_MAX_BYTES = 128 * 1024, PEND_MAX_BYTES = 16 << 20 };

struct gw_storage {
    sqlite3 *db;
    char *path;
    char version[40];    /* "<rule version>#": this instance's namespace (rows, lookups, state) and
                          * the prefix of its buckets; "" for a file without versions */
    _Atomic int serving; /* publishes the checkpoint this process's readers serve (and the hook) */
    gw_buf_t ns_tbl, ns_lkey; /* scratch: names in the namespace (ns_table, ns_key) */
    sqlite3_stmt *st[ST_COUNT];
    gw_map_t by_name; /* name -> bucket_t* */
    bucket_t **by_id; /* index = id */
    size_t by_id_cap;
    int in_txn;
    uint64_t next_op; /* next op id to hand out */
    uint64_t last_op; /* committed checkpoint */
    uint64_t lsn;
    uint64_t txn_last_op; /* highest op written in the open transaction */
    _Atomic int consistent;
    /* totals, kept by the writer, read by any thread (gw_storage_stats) */
    _Atomic uint64_t n_rows, n_ops, n_buckets;
    _Atomic uint64_t n_checkpoints; /* WAL checkpoints run by the checkpointer */
    int wal_frames;                 /* frames in the WAL after the last commit (writer only) */
    uint64_t gen;
    /* per transaction: touched buckets and lookup keys, for the hook */
    const char **touched;
    size_t ntouched, cap_touched;
    char **lookup_keys;
    size_t nlookup_keys, cap_lookup_keys;
    /* write checkpoints not yet covered by a commit's LSN */
    struct pending_wcp {
        char *key;
        uint64_t lsn;
    } * wcp;
    size_t nwcp, cap_wcp;
    char **wcp_done; /* resolved by the commit being reported */
    size_t nwcp_done;
    /* Row filter: a Bloom filter over the (tbl, key) of every row ever stored by this process or
     * present at open. A miss proves the row is not in `rows`, so put_row skips the lookup
     * (false positives only cost that lookup). Deleted or rolled-back rows stay set (harmless).
     * NULL when disabled (then every put_row looks the row up). */
    uint64_t *filter;
    size_t filter_bits; /* a power of two */
    size_t filter_keys; /* keys added since the last rebuild */
    /* ops of the open transaction not yet in op_chunks: records, each behind a 4-byte link to
     * the next record of the same bucket; pend_buckets lists the buckets with queued ops */
    gw_buf_t pend;
    bucket_t **pend_buckets;
    size_t npend_buckets, cap_pend_buckets;
    gw_buf_t chunk; /* scratch for a chunk's records */
    gw_buf_t members;
    gw_storage_hook_fn hook;
    void *hook_ud;
    /* the syncer thread: makes commits durable (fdatasync of the WAL), then reports them */
    pthread_t sync_thread;
    int sync_started, sync_stop;
    int sync_busy; /* the syncer is publishing jobs it took off the queue */
    pthread_mutex_t sync_lock;
    pthread_cond_t sync_cond;      /* jobs queued, or stop */
    pthread_cond_t sync_done_cond; /* a job became durable */
    struct durable_job *jobs_head, *jobs_tail;
    int wal_fd;
    void (*durable_fn)(uint64_t lsn, void *ud);
    void *durable_ud;
    /* the checkpointer thread */
    pthread_t ckpt_thread;
    int ckpt_started;
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;
    pthread_mutex_t ckpt_run; /* held while either thread checkpoints */
    int ckpt_wanted, ckpt_stop;
};

/* WAL frames (pages) that wake the checkpointer (16 MB), and past which the writer finishes the
 * checkpoint itself right after a commit (32 MB): a background checkpoint always lags the
 * writer a little, and SQLite restarts the WAL from its beginning only after a checkpoint that
 * copied every frame, so without this the WAL would grow for as long as writes continue. */
enum { CKPT_FRAMES = 4096, CKPT_RESTART_FRAMES = 8192, CKPT_WAIT_FRAMES = 12288 };

static int flush_pending(gw_storage_t *s, gw_err_t *err);

static int sql_err(sqlite3 *db, gw_err_t *err, const char *what)
{
    return gw_err_set(err, GW_EIO, "storage", "could not %s: %s", what, sqlite3_errmsg(db));
}

/* Step q to the end, copying column 0 of each row; *n strings in a malloc'd array the caller
 * frees (each string and the array). The statement is reset. */
static char **collect_texts(sqlite3_stmt *q, size_t *n)
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

static int exec(sqlite3 *db, const char *sql, gw_err_t *err, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not %s: %s", what, msg ? msg : "unknown");
        sqlite3_free(msg);
        return GW_EIO;
    }
    return 0;
}

/* ---- bucket cache ---- */

static void index_bucket(gw_storage_t *s, bucket_t *b)
{
    if ((size_t)b->id >= s->by_id_cap) {
        size_t cap = s->by_id_cap ? s->by_id_cap : 1024;
        while (cap <= (size_t)b->id)
            cap *= 2;
        s->by_id = gw_xrealloc(s->by_id, cap * sizeof(bucket_t *));
        memset(s->by_id + s->by_id_cap, 0, (cap - s->by_id_cap) * sizeof(bucket_t *));
        s->by_id_cap = cap;
    }
    s->by_id[b->id] = b;
    gw_map_put(&s->by_name, b->name, b);
}

static void free_bucket(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    bucket_t *b = value;
    free(b->name);
    free(b);
}

static void drop_cache(gw_storage_t *s)
{
    gw_map_each(&s->by_name, free_bucket, NULL);
    gw_map_free(&s->by_name);
    free(s->by_id);
    s->by_id = NULL;
    s->by_id_cap = 0;
}

/* Whether a bucket, row table or lookup key name belongs to this instance's version. */
static int own_name(const gw_storage_t *s, const char *name)
{
    return strncmp(name, s->version, strlen(s->version)) == 0;
}

/* The text range [lo, hi) of names in namespace ns ("2#" -> ["2#", "2$")); every name for "". */
static void ns_range(const char *ns, char *lo, char *hi, size_t len)
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
static const char *ns_table(gw_storage_t *s, const char *table)
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
static const char *ns_key(gw_storage_t *s, const char *key)
{
    gw_buf_reset(&s->ns_lkey);
    gw_buf_puts(&s->ns_lkey, s->version);
    gw_buf_puts(&s->ns_lkey, key);
    return s->ns_lkey.data;
}

static int load_cache(gw_storage_t *s, gw_err_t *err)
{
    drop_cache(s);
    gw_map_init(&s->by_name);
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT id, name, checksum, count, last_op FROM buckets", -1, &q,
                           NULL) != SQLITE_OK)
        return sql_err(s->db, err, "read buckets");
    uint64_t nb = 0, nops = 0;
    while (sqlite3_step(q) == SQLITE_ROW) {
        bucket_t *b = gw_xcalloc(1, sizeof(*b));
        b->id = sqlite3_column_int64(q, 0);
        b->name = gw_xstrdup((const char *)sqlite3_column_text(q, 1));
        b->checksum = (uint32_t)sqlite3_column_int64(q, 2);
        b->count = (uint64_t)sqlite3_column_int64(q, 3);
        b->last_op = (uint64_t)sqlite3_column_int64(q, 4);
        index_bucket(s, b);
        if (own_name(s, b->name)) { /* totals count this version's buckets only */
            nb++;
            nops += b->count;
        }
    }
    sqlite3_finalize(q);
    atomic_store(&s->n_buckets, nb);
    atomic_store(&s->n_ops, nops);
    char lo[48], hi[48];
    ns_range(s->version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM rows WHERE tbl >= ?1 AND tbl < ?2", -1, &q,
                           NULL) != SQLITE_OK)
        return sql_err(s->db, err, "count rows");
    sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW)
        atomic_store(&s->n_rows, (uint64_t)sqlite3_column_int64(q, 0));
    sqlite3_finalize(q);
    char buf[64];
    s->next_op = gw_storage_state_get(s, "next_op", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 1;
    s->last_op = gw_storage_state_get(s, "last_op", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
    s->lsn = gw_storage_state_get(s, "lsn", buf, sizeof(buf)) ? strtoull(buf, NULL, 10) : 0;
    s->consistent = gw_storage_state_get(s, "consistent", buf, sizeof(buf)) && buf[0] == '1';
    if (s->next_op <= s->last_op) s->next_op = s->last_op + 1;
    return 0;
}

static bucket_t *bucket_get(gw_storage_t *s, const char *name, gw_err_t *err)
{
    bucket_t *b = gw_map_get(&s->by_name, name);
    if (b != NULL) return b;
    sqlite3_stmt *q = s->st[ST_BUCKET_INSERT];
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) {
        sql_err(s->db, err, "create a bucket");
        return NULL;
    }
    b = gw_xcalloc(1, sizeof(*b));
    b->id = sqlite3_last_insert_rowid(s->db);
    b->name = gw_xstrdup(name);
    index_bucket(s, b);
    atomic_fetch_add(&s->n_buckets, 1);
    return b;
}

static void touch(gw_storage_t *s, bucket_t *b)
{
    b->dirty = 1;
    if (b->touched_gen == s->gen) return;
    b->touched_gen = s->gen;
    if (s->ntouched == s->cap_touched) {
        s->cap_touched = s->cap_touched ? s->cap_touched * 2 : 64;
        s->touched = gw_xrealloc(s->touched, s->cap_touched * sizeof(char *));
    }
    s->touched[s->ntouched++] = b->name;
}

/* ---- row filter ---- */

enum { FILTER_MIN_BITS = 1u << 23, FILTER_MAX_BITS = 1u << 26 }; /* 1 MB .. 8 MB */

static uint64_t row_hash(const char *tbl, const char *key)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a, then a final mix */
    for (const unsigned char *p = (const unsigned char *)tbl; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separator no table name contains */
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* Three probes by double hashing over the filter's bits. */
static void filter_add_hash(gw_storage_t *s, uint64_t h)
{
    uint64_t a = h, b = (h >> 32) | 1, mask = s->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        s->filter[(a & mask) >> 6] |= 1ull << (a & 63);
}

static int filter_maybe(const gw_storage_t *s, const gw_row_ref_t *ref)
{
    if (s->filter == NULL) return 1;
    uint64_t h = row_hash(ref->table, ref->key);
    uint64_t a = h, b = (h >> 32) | 1, mask = s->filter_bits - 1;
    for (int i = 0; i < 3; i++, a += b)
        if ((s->filter[(a & mask) >> 6] & (1ull << (a & 63))) == 0) return 0;
    return 1;
}

/* (Re)build the filter from every stored row, sized for about 16 bits per row and room to grow.
 * Runs inside or outside a transaction (the writer sees its own uncommitted rows). On any error
 * the filter is disabled, which is always safe. */
static void filter_build(gw_storage_t *s, uint64_t rows)
{
    free(s->filter);
    s->filter = NULL;
    size_t bits = FILTER_MIN_BITS;
    while (bits < FILTER_MAX_BITS && bits < rows * 32)
        bits *= 2;
    if (rows * 16 > bits)
        return; /* too many rows for a useful filter within the cap: always look rows up */
    uint64_t *f = calloc(bits / 64, sizeof(uint64_t));
    if (f == NULL) return;
    s->filter = f;
    s->filter_bits = bits;
    s->filter_keys = 0;
    sqlite3_stmt *q;
    int step = SQLITE_ERROR;
    char lo[48], hi[48];
    ns_range(s->version, lo, hi, sizeof(lo));
    if (sqlite3_prepare_v2(s->db,
                           "SELECT substr(tbl, ?3), key FROM rows WHERE tbl >= ?1 AND "
                           "tbl < ?2",
                           -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 3, (int)strlen(s->version) + 1);
        while ((step = sqlite3_step(q)) == SQLITE_ROW) {
            const char *t = (const char *)sqlite3_column_text(q, 0);
            const char *k = (const char *)sqlite3_column_text(q, 1);
            filter_add_hash(s, row_hash(t != NULL ? t : "", k != NULL ? k : ""));
            s->filter_keys++;
        }
        sqlite3_finalize(q);
    }
    if (step != SQLITE_DONE) {
        free(s->filter);
        s->filter = NULL;
    }
}

/* Note a stored row; rebuild larger when the filter gets too full for its false-positive rate. */
static void filter_add(gw_storage_t *s, const gw_row_ref_t *ref)
{
    if (s->filter == NULL) return;
    filter_add_hash(s, row_hash(ref->table, ref->key));
    if (++s->filter_keys * 12 <= s->filter_bits) return;
    if (s->filter_bits >= FILTER_MAX_BITS) {
        free(s->filter); /* at the cap: stop filtering rather than rebuild again and again */
        s->filter = NULL;
        return;
    }
    filter_build(s, s->filter_keys);
}

/* ---- open / close ---- */

/* ---- syncer ----
 *
 * Commits run with synchronous=NORMAL: COMMIT appends to the WAL without syncing it. Each
 * commit queues a durable job (its checkpoint and what it changed, copied); the syncer thread
 * takes every queued job, syncs the WAL once for all of them (group commit), and only then
 * publishes each job in order: the hook (streams see the checkpoint), the durable checkpoint that
 * readers of this process serve, and the durable callback (the replicator acknowledges the LSN to
 * Postgres). So nothing is served or acknowledged before it is on disk, and the writer never
 * waits for the disk on the streaming path. */
typedef struct durable_job {
    struct durable_job *next;
    uint64_t last_op, lsn;
    int consistent;
    char **names; /* buckets, then lookup keys, then write-checkpoint keys */
    size_t nbuckets, nlookups, nwcps;
    int waited; /* the committer waits for it and frees it */
    int done;
} durable_job_t;

/* What this process's readers serve: the durable checkpoint of the serving writer (and its rule
 * version's namespace), once one published. A writer that builds a new rule version beside the
 * serving one does not publish until it takes over (gw_storage_set_serving). */
static _Atomic int durable_set;
static _Atomic uint64_t durable_last_op, durable_lsn;
static _Atomic int durable_consistent;
static char durable_ns[40]; /* under durable_lock */
static pthread_mutex_t durable_lock = PTHREAD_MUTEX_INITIALIZER;

/* Make s's checkpoint the one this process's readers serve; durable_lock held. */
static void publish_locked(gw_storage_t *s, uint64_t last_op, uint64_t lsn, int consistent)
{
    atomic_store(&durable_last_op, last_op);
    atomic_store(&durable_lsn, lsn);
    atomic_store(&durable_consistent, consistent);
    snprintf(durable_ns, sizeof(durable_ns), "%s", s->version);
    atomic_store(&durable_set, 1);
}

static void job_free(durable_job_t *j)
{
    size_t n = j->nbuckets + j->nlookups + j->nwcps;
    for (size_t i = 0; i < n; i++)
        free(j->names[i]);
    free(j->names);
    free(j);
}

static void job_publish(gw_storage_t *s, durable_job_t *j)
{
    if (s->hook != NULL && atomic_load(&s->serving)) {
        gw_storage_changes_t ch = {
            .last_op = j->last_op,
            .lsn = j->lsn,
            .buckets = (const char *const *)j->names,
            .nbuckets = j->nbuckets,
            .lookups = (const char *const *)j->names + j->nbuckets,
            .nlookups = j->nlookups,
            .write_checkpoints = (const char *const *)j->names + j->nbuckets + j->nlookups,
            .nwrite_checkpoints = j->nwcps,
            .consistent = j->consistent,
        };
        s->hook(&ch, s->hook_ud);
    }
    pthread_mutex_lock(&durable_lock);
    if (atomic_load(&s->serving)) publish_locked(s, j->last_op, j->lsn, j->consistent);
    pthread_mutex_unlock(&durable_lock);
    if (s->durable_fn != NULL) s->durable_fn(j->lsn, s->durable_ud);
}

/* Sync the WAL file. A failed sync cannot be retried safely (the kernel may have dropped the
 * dirty pages): like Postgres, stop the process; a restart recovers from what is on disk. */
static void wal_sync(gw_storage_t *s)
{
    if (s->wal_fd < 0) {
        char *wal = gw_xmalloc(strlen(s->path) + 5);
        sprintf(wal, "%s-wal", s->path);
        s->wal_fd = open(wal, O_RDWR | O_CLOEXEC);
        free(wal);
    }
    if (s->wal_fd < 0 || fdatasync(s->wal_fd) != 0) {
        gw_error("storage", "could not sync the storage WAL; stopping so that a restart recovers",
                 "path=\"%s\" error=\"%s\"", s->path, strerror(errno));
        abort();
    }
}

static void *sync_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-sync"); /* top -H, perf */
    gw_storage_t *s = arg;
    pthread_mutex_lock(&s->sync_lock);
    for (;;) {
        if (s->jobs_head == NULL) {
            if (s->sync_stop) break;
            pthread_cond_wait(&s->sync_cond, &s->sync_lock);
            continue;
        }
        durable_job_t *list = s->jobs_head;
        s->jobs_head = s->jobs_tail = NULL;
        s->sync_busy = 1;
        pthread_mutex_unlock(&s->sync_lock);
        wal_sync(s);
        for (durable_job_t *j = list; j != NULL; j = j->next)
            job_publish(s, j);
        pthread_mutex_lock(&s->sync_lock);
        s->sync_busy = 0;
        for (durable_job_t *j = list, *next; j != NULL; j = next) {
            next = j->next;
            if (j->waited)
                j->done = 1;
            else
                job_free(j);
        }
        pthread_cond_broadcast(&s->sync_done_cond);
    }
    pthread_mutex_unlock(&s->sync_lock);
    return NULL;
}

void gw_storage_settle(gw_storage_t *s)
{
    pthread_mutex_lock(&s->sync_lock);
    while (s->sync_started && (s->jobs_head != NULL || s->sync_busy))
        pthread_cond_wait(&s->sync_done_cond, &s->sync_lock);
    pthread_mutex_unlock(&s->sync_lock);
}

void gw_storage_move_pending(gw_storage_t *from, gw_storage_t *to)
{
    for (size_t i = 0; i < from->nwcp; i++) {
        if (to->nwcp == to->cap_wcp) {
            to->cap_wcp = to->cap_wcp ? to->cap_wcp * 2 : 16;
            to->wcp = gw_xrealloc(to->wcp, to->cap_wcp * sizeof(*to->wcp));
        }
        to->wcp[to->nwcp++] = from->wcp[i];
    }
    from->nwcp = 0;
}

void gw_storage_set_durable_fn(gw_storage_t *s, void (*fn)(uint64_t lsn, void *ud), void *ud)
{
    pthread_mutex_lock(&s->sync_lock); /* the syncer takes this lock between jobs */
    s->durable_fn = fn;
    s->durable_ud = ud;
    pthread_mutex_unlock(&s->sync_lock);
}

/* ---- checkpointer ---- */

static void *ckpt_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-ckpt"); /* top -H, perf */
    gw_storage_t *s = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        gw_warn("storage",
                "could not open the checkpointer's connection; the WAL grows until "
                "ferry stops",
                "error=\"%s\"", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, 1000);
    /* a connection that has not read the file yet does not know it is in WAL mode, and its
     * checkpoints do nothing (log and done come back -1) */
    sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
    pthread_mutex_lock(&s->ckpt_lock);
    while (!s->ckpt_stop) {
        if (!s->ckpt_wanted) {
            pthread_cond_wait(&s->ckpt_cond, &s->ckpt_lock);
            continue;
        }
        s->ckpt_wanted = 0;
        pthread_mutex_unlock(&s->ckpt_lock);
        int log = 0, done = 0;
        pthread_mutex_lock(&s->ckpt_run);
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        pthread_mutex_unlock(&s->ckpt_run);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            gw_warn("storage", "checkpoint failed", "error=\"%s\"", sqlite3_errmsg(db));
        else
            atomic_fetch_add(&s->n_checkpoints, 1);
        if (rc == SQLITE_OK && log < 0)
            gw_warn("storage", "a checkpoint did not run (the file is not in WAL mode?)", NULL);
        pthread_mutex_lock(&s->ckpt_lock);
    }
    pthread_mutex_unlock(&s->ckpt_lock);
    sqlite3_close(db);
    return NULL;
}

/* The writer's WAL hook: after each commit, wake the checkpointer when the WAL is long. */
static int on_wal(void *ud, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    gw_storage_t *s = ud;
    s->wal_frames = frames;
    if (frames >= CKPT_FRAMES && s->ckpt_started) {
        pthread_mutex_lock(&s->ckpt_lock);
        s->ckpt_wanted = 1;
        pthread_cond_signal(&s->ckpt_cond);
        pthread_mutex_unlock(&s->ckpt_lock);
    }
    return SQLITE_OK;
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
    if (exec(db, sql, err, "migrate the storage file to layout " LAYOUT) != 0) {
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

int gw_storage_open(const char *path, gw_storage_t **out, gw_err_t *err)
{
    return gw_storage_open_version(path, NULL, out, err);
}

int gw_storage_open_version(const char *path, const char *version, gw_storage_t **out,
                            gw_err_t *err)
{
    /* no global allocation statistics: they take a mutex on every SQLite malloc. Only possible
     * before SQLite initializes (this runs on the main thread before any other uses SQLite);
     * afterwards the call fails harmlessly. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    gw_storage_t *s = gw_xcalloc(1, sizeof(*s));
    gw_map_init(&s->by_name);
    pthread_mutex_init(&s->ckpt_lock, NULL);
    pthread_cond_init(&s->ckpt_cond, NULL);
    pthread_mutex_init(&s->ckpt_run, NULL);
    pthread_mutex_init(&s->sync_lock, NULL);
    pthread_cond_init(&s->sync_cond, NULL);
    pthread_cond_init(&s->sync_done_cond, NULL);
    s->wal_fd = -1;
    s->path = gw_xstrdup(path);
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not open \"%s\": %s", path,
                   s->db ? sqlite3_errmsg(s->db) : "out of memory");
        gw_storage_close(s);
        return GW_EIO;
    }
    /* a second writer (a rule version built beside this one) may hold the write lock for a
     * while: a snapshot chunk, or dropping a retired version */
    sqlite3_busy_timeout(s->db, 60000);
    /* a 32 MB page cache keeps the hot b-tree pages (rows, the ops tails) out of pread();
     * checkpoints are the checkpointer thread's (see the file comment) */
    if (exec(s->db,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF; "
             "PRAGMA cache_size=-32768; PRAGMA wal_autocheckpoint=0; PRAGMA temp_store=MEMORY;",
             err, "set up the storage file") != 0 ||
        exec(s->db, schema_sql, err, "create the storage schema") != 0) {
        gw_storage_close(s);
        return GW_EIO;
    }
    gw_err_t lerr;
    if (check_layout(s->db, &lerr) != 0) {
        gw_err_set(err, GW_EIO, "storage", "cannot use \"%s\": %s", path, lerr.message);
        gw_err_detail(err, "Delete the file (and its -wal and -shm files) and drop the "
                           "replication slot; ferry then rebuilds storage from a new snapshot.");
        gw_storage_close(s);
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
    if (version[0] != '\0') snprintf(s->version, sizeof(s->version), "%s#", version);
    atomic_store(&s->serving, 1);
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            sql_err(s->db, err, "prepare storage statements");
            gw_storage_close(s);
            return GW_EIO;
        }
    }
    if (load_cache(s, err) != 0) {
        gw_storage_close(s);
        return GW_EIO;
    }
    gw_storage_stats_t st;
    if (gw_storage_stats(s, &st) == 0) filter_build(s, st.rows);
    if (pthread_create(&s->sync_thread, NULL, sync_main, s) == 0) s->sync_started = 1;
    if (pthread_create(&s->ckpt_thread, NULL, ckpt_main, s) == 0) {
        s->ckpt_started = 1;
        sqlite3_wal_hook(s->db, on_wal, s);
    } else {
        /* without the thread the writer checkpoints itself, as SQLite does by default */
        sqlite3_wal_autocheckpoint(s->db, CKPT_FRAMES);
    }
    *out = s;
    return 0;
}

/* Set *stop under lock, wake the thread waiting on cond, and join it. */
static void stop_thread(pthread_t t, pthread_mutex_t *lock, pthread_cond_t *cond, int *stop)
{
    pthread_mutex_lock(lock);
    *stop = 1;
    pthread_cond_signal(cond);
    pthread_mutex_unlock(lock);
    pthread_join(t, NULL);
}

void gw_storage_close(gw_storage_t *s)
{
    if (s == NULL) return;
    if (s->in_txn) gw_storage_rollback(s);
    /* the syncer publishes every queued commit before it ends */
    if (s->sync_started) stop_thread(s->sync_thread, &s->sync_lock, &s->sync_cond, &s->sync_stop);
    pthread_mutex_destroy(&s->sync_lock);
    pthread_cond_destroy(&s->sync_cond);
    pthread_cond_destroy(&s->sync_done_cond);
    if (s->wal_fd >= 0) close(s->wal_fd);
    if (s->ckpt_started) stop_thread(s->ckpt_thread, &s->ckpt_lock, &s->ckpt_cond, &s->ckpt_stop);
    pthread_mutex_destroy(&s->ckpt_lock);
    pthread_cond_destroy(&s->ckpt_cond);
    pthread_mutex_destroy(&s->ckpt_run);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (s->db != NULL) sqlite3_close(s->db);
    drop_cache(s);
    free(s->touched);
    for (size_t i = 0; i < s->nlookup_keys; i++)
        free(s->lookup_keys[i]);
    free(s->lookup_keys);
    for (size_t i = 0; i < s->nwcp; i++)
        free(s->wcp[i].key);
    free(s->wcp);
    for (size_t i = 0; i < s->nwcp_done; i++)
        free(s->wcp_done[i]);
    free(s->wcp_done);
    gw_buf_free(&s->pend);
    gw_buf_free(&s->chunk);
    free(s->pend_buckets);
    gw_buf_free(&s->members);
    gw_buf_free(&s->ns_tbl);
    gw_buf_free(&s->ns_lkey);
    free(s->filter);
    free(s->path);
    free(s);
}

void gw_storage_set_hook(gw_storage_t *s, gw_storage_hook_fn fn, void *ud)
{
    s->hook = fn;
    s->hook_ud = ud;
}

void gw_storage_get_hook(const gw_storage_t *s, gw_storage_hook_fn *fn, void **ud)
{
    *fn = s->hook;
    *ud = s->hook_ud;
}

void gw_storage_set_serving(gw_storage_t *s, int on)
{
    pthread_mutex_lock(&durable_lock);
    atomic_store(&s->serving, on != 0);
    if (on) publish_locked(s, s->last_op, s->lsn, s->consistent);
    pthread_mutex_unlock(&durable_lock);
}

/* ---- transactions ---- */

int gw_storage_begin(gw_storage_t *s, gw_err_t *err)
{
    if (s->in_txn) return 0;
    if (exec(s->db, "BEGIN IMMEDIATE", err, "begin a storage transaction") != 0) return GW_EIO;
    /* the op-id sequence is shared with a writer building another rule version beside this one:
     * take it up where the last commit of either left it (this transaction holds the lock) */
    char buf[32];
    if (gw_storage_state_get(s, "next_op", buf, sizeof(buf))) {
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

int gw_storage_in_txn(const gw_storage_t *s)
{
    return s->in_txn;
}

static int state_set_u64(gw_storage_t *s, const char *key, uint64_t v, gw_err_t *err)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    return gw_storage_state_set(s, key, buf, err);
}

static void flush_bucket(const char *key, void *value, void *ud)
{
    (void)key;
    gw_storage_t *s = ud;
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

static char **names_append(char **v, size_t at, const char *const *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        v[at + i] = gw_xstrdup(src[i]);
    return v;
}

/* Commit; the job describing it is published by the syncer once durable. With wait, return only
 * after that. */
static int commit(gw_storage_t *s, uint64_t lsn, int wait, gw_err_t *err)
{
    if (!s->in_txn) return gw_err_set(err, GW_EINVAL, "storage", "commit without a transaction");
    if (flush_pending(s, err) != 0) return GW_EIO;
    for (size_t i = 0; i < s->ntouched; i++) {
        bucket_t *b = gw_map_get(&s->by_name, s->touched[i]);
        flush_bucket(NULL, b, s);
    }
    uint64_t last_op = s->txn_last_op;
    if (lsn < s->lsn) lsn = s->lsn;
    if (state_set_u64(s, "next_op", s->next_op, err) != 0 ||
        state_set_u64(s, "last_op", last_op, err) != 0 || state_set_u64(s, "lsn", lsn, err) != 0)
        return GW_EIO;
    if (exec(s->db, "COMMIT", err, "commit to storage") != 0) {
        gw_storage_rollback(s);
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
    for (size_t i = 0; i < s->nwcp_done; i++)
        free(s->wcp_done[i]);
    s->nwcp_done = 0;
    size_t keep = 0;
    for (size_t i = 0; i < s->nwcp; i++) {
        if (s->wcp[i].lsn <= lsn) {
            s->wcp_done = gw_xrealloc(s->wcp_done, (s->nwcp_done + 1) * sizeof(char *));
            s->wcp_done[s->nwcp_done++] = s->wcp[i].key;
        } else {
            s->wcp[keep++] = s->wcp[i];
        }
    }
    s->nwcp = keep;
    durable_job_t *j = gw_xcalloc(1, sizeof(*j));
    j->last_op = last_op;
    j->lsn = lsn;
    j->consistent = s->consistent;
    j->nbuckets = s->ntouched;
    j->nlookups = s->nlookup_keys;
    j->nwcps = s->nwcp_done;
    j->names = gw_xmalloc((j->nbuckets + j->nlookups + j->nwcps + 1) * sizeof(char *));
    names_append(j->names, 0, (const char *const *)s->touched, j->nbuckets);
    names_append(j->names, j->nbuckets, (const char *const *)s->lookup_keys, j->nlookups);
    names_append(j->names, j->nbuckets + j->nlookups, (const char *const *)s->wcp_done, j->nwcps);
    if (!s->sync_started) {
        /* no syncer (it could not start): sync here */
        wal_sync(s);
        job_publish(s, j);
        job_free(j);
        return 0;
    }
    j->waited = wait;
    pthread_mutex_lock(&s->sync_lock);
    if (s->jobs_tail != NULL)
        s->jobs_tail->next = j;
    else
        s->jobs_head = j;
    s->jobs_tail = j;
    pthread_cond_signal(&s->sync_cond);
    while (wait && !j->done)
        pthread_cond_wait(&s->sync_done_cond, &s->sync_lock);
    pthread_mutex_unlock(&s->sync_lock);
    if (wait) job_free(j);
    return 0;
}

int gw_storage_commit(gw_storage_t *s, uint64_t lsn, gw_err_t *err)
{
    return commit(s, lsn, 1, err);
}

int gw_storage_commit_async(gw_storage_t *s, uint64_t lsn, gw_err_t *err)
{
    return commit(s, lsn, 0, err);
}

void gw_storage_rollback(gw_storage_t *s)
{
    if (!s->in_txn) return;
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    s->in_txn = 0;
    gw_buf_reset(&s->pend);
    s->npend_buckets = 0;
    gw_err_t err;
    if (load_cache(s, &err) != 0)
        gw_error("storage", "could not reload the storage cache after a rollback", NULL);
}

/* State keys shared by every rule version; every other key belongs to one version and is
 * stored as "<version>#key". */
static int global_key(const char *k)
{
    static const char *const keys[] = {"layout",    "next_op",     "serving", "building",
                                       "source_id", "version_seq", "retired"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(k, keys[i]) == 0) return 1;
    return 0;
}

/* The stored form of key in namespace ns, into buf; returns buf. */
static const char *state_key(const char *ns, const char *key, char *buf, size_t len)
{
    /* "3#slot" names another version's key itself */
    snprintf(buf, len, "%s%s", global_key(key) || strchr(key, '#') != NULL ? "" : ns, key);
    return buf;
}

int gw_storage_state_get(gw_storage_t *s, const char *key, char *buf, size_t len)
{
    sqlite3_stmt *q = s->st[ST_STATE_GET];
    if (q == NULL) return 0;
    char k[256];
    sqlite3_bind_text(q, 1, state_key(s->version, key, k, sizeof(k)), -1, SQLITE_TRANSIENT);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(q, 0);
        snprintf(buf, len, "%s", v != NULL ? v : "");
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}

int gw_storage_state_set(gw_storage_t *s, const char *key, const char *value, gw_err_t *err)
{
    sqlite3_stmt *q = s->st[ST_STATE_SET];
    char k[256];
    sqlite3_bind_text(q, 1, state_key(s->version, key, k, sizeof(k)), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    return rc == SQLITE_DONE ? 0 : sql_err(s->db, err, "store replication state");
}

void gw_storage_checkpoint(const gw_storage_t *s, uint64_t *last_op, uint64_t *lsn)
{
    *last_op = s->last_op;
    *lsn = s->lsn;
}

int gw_storage_set_consistent(gw_storage_t *s, int consistent, gw_err_t *err)
{
    if (gw_storage_state_set(s, "consistent", consistent ? "1" : "0", err) != 0) return GW_EIO;
    s->consistent = consistent != 0;
    return 0;
}

int gw_storage_consistent(const gw_storage_t *s)
{
    return s->consistent;
}

int gw_storage_stats(gw_storage_t *s, gw_storage_stats_t *out)
{
    out->rows = atomic_load(&s->n_rows);
    out->buckets = atomic_load(&s->n_buckets);
    out->ops = atomic_load(&s->n_ops);
    return 0;
}

/* ---- ops ---- */

/* Append v in decimal (the op line is built for every op: no printf on this path). */
static void append_u64(gw_buf_t *b, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    gw_buf_append(b, tmp + n, sizeof(tmp) - n);
}

/* Append s escaped for the inside of a JSON string (as gw_buf_json_str does, without the quotes,
 * copying runs of plain bytes at once: this runs for every op's type, id, subkey and data). */
static void append_json_chars(gw_buf_t *b, const char *str)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)str, *run = p;
    for (;; p++) {
        unsigned char c = *p;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (p > run) gw_buf_append(b, run, (size_t)(p - run));
        if (c == '\0') break;
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        gw_buf_append(b, esc, n);
        run = p + 1;
    }
}

/* ---- op chunks ----
 *
 * A record: [u64 op_id][u32 checksum][u8 op][u32 ident_off][u32 ident_len][u32 line_len][line].
 * line is the op's body, not its JSON (the JSON is rendered on reading, by render_op: a third
 * fewer bytes to write, and readers only copy): for PUT/REMOVE [u32 n][object_type][u32 n]
 * [object_id][u32 n][subkey] then, for PUT, the data to the end, every string already escaped
 * for the inside of a JSON string; empty for MOVE/CLEAR. ident = line[ident_off, +ident_len) is
 * the identity compaction compares (type, id and subkey). Multi-byte fields are in host byte
 * order: the file is private to one machine's ferry. */
enum { REC_HDR = 25, PEND_LINK = 4 };

typedef struct rec {
    uint64_t op_id;
    uint32_t checksum;
    int op;
    const char *ident;
    size_t ident_len;
    const char *line;
    size_t line_len;
    size_t size; /* bytes of the whole record */
} rec_t;

/* Decode the record at p (avail bytes left): 1 and *r, or 0 when p is the end or malformed. */
static int rec_read(const unsigned char *p, size_t avail, rec_t *r)
{
    if (avail < REC_HDR) return 0;
    uint32_t io, il, ll;
    memcpy(&r->op_id, p, 8);
    memcpy(&r->checksum, p + 8, 4);
    r->op = p[12];
    memcpy(&io, p + 13, 4);
    memcpy(&il, p + 17, 4);
    memcpy(&ll, p + 21, 4);
    if (ll > avail - REC_HDR || io > ll || il > ll - io) return 0;
    r->line = (const char *)p + REC_HDR;
    r->line_len = ll;
    r->ident = r->line + io;
    r->ident_len = il;
    r->size = REC_HDR + (size_t)ll;
    return 1;
}

/* Append a record to out. */
static void rec_append(gw_buf_t *out, uint64_t op_id, uint32_t checksum, int op, size_t ident_off,
                       size_t ident_len, const char *line, size_t line_len)
{
    unsigned char h[REC_HDR];
    uint32_t io = (uint32_t)ident_off, il = (uint32_t)ident_len, ll = (uint32_t)line_len;
    memcpy(h, &op_id, 8);
    memcpy(h + 8, &checksum, 4);
    h[12] = (unsigned char)op;
    memcpy(h + 13, &io, 4);
    memcpy(h + 17, &il, 4);
    memcpy(h + 21, &ll, 4);
    gw_buf_append(out, h, REC_HDR);
    gw_buf_append(out, line, line_len);
}

/* Write one chunk row. 0 or GW_EIO. */
static int chunk_insert(gw_storage_t *s, int64_t bucket_id, uint64_t first, uint64_t last,
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
    return rc == SQLITE_DONE ? 0 : sql_err(s->db, err, "write ops");
}

/* Write every bucket's pending ops as chunks of at most CHUNK_MAX_OPS ops / ~CHUNK_MAX_BYTES,
 * then empty the pending buffer. 0 or GW_EIO (the transaction must then be rolled back). */
static int flush_pending(gw_storage_t *s, gw_err_t *err)
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
                rec_t r;
                rec_read(e + PEND_LINK, s->pend.len - (at - 1) - PEND_LINK, &r);
                gw_buf_append(c, e + PEND_LINK, r.size);
                if (n++ == 0) first = r.op_id;
                last = r.op_id;
                sum += r.checksum;
                at = next;
            }
            rc = chunk_insert(s, b->id, first, last, n, sum, c, err);
        }
        b->pend_head = b->pend_tail = 0;
    }
    s->npend_buckets = 0;
    gw_buf_reset(&s->pend);
    if (c->cap > 4 * CHUNK_MAX_BYTES) gw_buf_free(c);
    return rc;
}

/* Queue an op of bucket b; its wire JSON is encoded here, once:
 * {"op_id":"N","op":"PUT","checksum":C,"object_type":…,"object_id":…,"subkey":…,"data":"…"}
 * (checksum before the identity, so the identity is one contiguous span of the line). */
/* Append a length-prefixed escaped string (the u32 length patched in after escaping). */
static void append_field(gw_buf_t *l, const char *str)
{
    size_t at = l->len;
    static const unsigned char zero[4];
    gw_buf_append(l, zero, 4);
    append_json_chars(l, str);
    uint32_t n = (uint32_t)(l->len - at - 4);
    memcpy(l->data + at, &n, 4);
}

/* Append an op's body (see "op chunks"); ident_at/ident_end: the identity span in l. */
static void encode_body(gw_buf_t *l, int op, const char *type, const char *id, const char *subkey,
                        const char *data, size_t *ident_at, size_t *ident_end)
{
    *ident_at = l->len;
    append_field(l, type);
    append_field(l, id);
    append_field(l, subkey);
    *ident_end = l->len;
    if (op == OP_PUT) append_json_chars(l, data); /* data is NUL-free JSON text */
}

/* Take the next length-prefixed field of an op body: 1 and *str, *n, or 0 when malformed. */
static int body_field(const unsigned char **p, const unsigned char *end, const char **str,
                      size_t *n)
{
    uint32_t len;
    if (end - *p < 4) return 0;
    memcpy(&len, *p, 4);
    if (len > (size_t)(end - *p - 4)) return 0;
    *str = (const char *)*p + 4;
    *n = len;
    *p += 4 + len;
    return 1;
}

/* Append op line's JSON, rendered from the record, to out. */
static void render_op(gw_buf_t *out, const rec_t *r)
{
    static const char *const names[] = {"", "PUT", "REMOVE", "MOVE", "CLEAR"};
    gw_buf_puts(out, "{\"op_id\":\"");
    append_u64(out, r->op_id);
    gw_buf_puts(out, "\",\"op\":\"");
    gw_buf_puts(out, r->op >= OP_PUT && r->op <= OP_CLEAR ? names[r->op] : "");
    gw_buf_puts(out, "\",\"checksum\":");
    append_u64(out, r->checksum);
    if (r->op == OP_PUT || r->op == OP_REMOVE) {
        static const char *const keys[3] = {",\"object_type\":\"", "\",\"object_id\":\"",
                                            "\",\"subkey\":\""};
        const unsigned char *p = (const unsigned char *)r->line, *end = p + r->line_len;
        int ok = 1;
        for (int i = 0; i < 3; i++) {
            const char *str = "";
            size_t n = 0;
            /* malformed: render empty fields rather than read past the record */
            ok = ok && body_field(&p, end, &str, &n);
            gw_buf_puts(out, keys[i]);
            gw_buf_append(out, str, ok ? n : 0);
        }
        gw_buf_puts(out, "\"");
        if (r->op == OP_PUT && ok) {
            gw_buf_puts(out, ",\"data\":\"");
            gw_buf_append(out, p, (size_t)(end - p));
            gw_buf_puts(out, "\"");
        }
    }
    gw_buf_puts(out, "}");
}

void gw_storage_encode_put(gw_buf_t *out, const rules_op_t *op, const char *subkey,
                           gw_op_tail_t *tail)
{
    size_t start = out->len, ia, ie;
    encode_body(out, OP_PUT, op->object_type, op->object_id, subkey, op->data, &ia, &ie);
    tail->len = out->len - start;
    tail->ident_off = ia - start;
    tail->ident_len = ie - ia;
}

static int write_op(gw_storage_t *s, bucket_t *b, int op, const char *type, const char *id,
                    const char *subkey, const char *data, uint32_t checksum,
                    const gw_op_tail_t *tail, gw_err_t *err)
{
    uint64_t op_id = s->next_op++;
    gw_buf_t *l = &s->pend;
    size_t at = l->len;
    static const unsigned char zero[PEND_LINK + REC_HDR];
    gw_buf_append(l, zero, sizeof(zero));
    size_t line_at = l->len;
    size_t ident_at, ident_end;
    if (tail != NULL) {
        ident_at = l->len + tail->ident_off;
        ident_end = ident_at + tail->ident_len;
        gw_buf_append(l, tail->text, tail->len);
    } else {
        encode_body(l, op, type, id, subkey, data, &ident_at, &ident_end);
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
    touch(s, b);
    return l->len >= PEND_MAX_BYTES ? flush_pending(s, err) : 0;
}

/* Whether bucket id exists and belongs to the current rule version (older versions' buckets
 * get no REMOVEs while the new version re-snapshots; they are dropped whole afterwards). */
static int live_bucket(const gw_storage_t *s, int64_t id)
{
    if ((size_t)id >= s->by_id_cap || s->by_id[id] == NULL) return 0;
    size_t n = strlen(s->version);
    return n == 0 || strncmp(s->by_id[id]->name, s->version, n) == 0;
}

/* Memberships: [u32 bucket id][u8 flags] then [u16 type len][type] unless flags & M_TYPE (the
 * type is the row's table name without its schema) and [u16 id len][id] unless flags & M_ID (the
 * id is the row's key), repeated: the usual membership takes 5 bytes, so the rows table stays
 * small (every commit rewrites the pages of the rows it touched). */
enum { M_TYPE = 1, M_ID = 2 };

typedef struct member {
    int64_t bucket_id;
    const char *type;
    size_t tlen;
    const char *id;
    size_t ilen;
} member_t;

/* The table name without its schema: "public.todos" -> "todos". */
static const char *bare_table(const char *table)
{
    const char *dot = strchr(table, '.');
    return dot != NULL ? dot + 1 : table;
}

/* One string of a membership: implied (then it is `value`) or [u16 n][bytes] at *q. 0 when
 * malformed. */
static int member_str(const unsigned char **q, const unsigned char *end, int implied,
                      const char *value, const char **str, size_t *n)
{
    if (implied) {
        *str = value;
        *n = strlen(value);
        return 1;
    }
    uint16_t len;
    if (end - *q < 2) return 0;
    memcpy(&len, *q, 2);
    if (end - *q < 2 + len) return 0;
    *str = (const char *)*q + 2;
    *n = len;
    *q += 2 + len;
    return 1;
}

static void put_member_str(gw_buf_t *out, int implied, const char *str)
{
    if (implied) return;
    uint16_t len = (uint16_t)strnlen(str, 65535);
    gw_buf_append(out, &len, 2);
    gw_buf_append(out, str, len);
}

static int next_member(const unsigned char **p, const unsigned char *end, const gw_row_ref_t *ref,
                       member_t *m)
{
    if (end - *p < 5) return 0;
    uint32_t bid;
    memcpy(&bid, *p, 4);
    unsigned flags = (*p)[4];
    const unsigned char *q = *p + 5;
    m->bucket_id = bid;
    if (!member_str(&q, end, flags & M_TYPE, bare_table(ref->table), &m->type, &m->tlen) ||
        !member_str(&q, end, flags & M_ID, ref->key, &m->id, &m->ilen))
        return 0;
    *p = q;
    return 1;
}

static void add_member(gw_buf_t *out, const gw_row_ref_t *ref, int64_t bucket_id, const char *type,
                       const char *id)
{
    uint32_t bid = (uint32_t)bucket_id;
    unsigned char flags = (unsigned char)((strcmp(type, bare_table(ref->table)) == 0 ? M_TYPE : 0) |
                                          (strcmp(id, ref->key) == 0 ? M_ID : 0));
    gw_buf_append(out, &bid, 4);
    gw_buf_append(out, &flags, 1);
    put_member_str(out, flags & M_TYPE, type);
    put_member_str(out, flags & M_ID, id);
}

/* Copy n bytes of p into buf (len bytes) as a string, truncated to fit. */
static void copy_span(char *buf, size_t len, const char *p, size_t n)
{
    if (n >= len) n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
}

void gw_storage_subkey(const char *table, const char *key, char *buf, size_t len)
{
    size_t tl = strlen(table), kl = strlen(key);
    copy_span(buf, len, table, tl);
    if (tl + 1 < len) {
        buf[tl] = '/';
        copy_span(buf + tl + 1, len - tl - 1, key, kl);
    }
}

static void subkey_of(const gw_row_ref_t *ref, char *buf, size_t len)
{
    gw_storage_subkey(ref->table, ref->key, buf, len);
}

static void note_lookup_key(gw_storage_t *s, const char *key)
{
    for (size_t i = 0; i < s->nlookup_keys; i++)
        if (strcmp(s->lookup_keys[i], key) == 0) return;
    if (s->nlookup_keys == s->cap_lookup_keys) {
        s->cap_lookup_keys = s->cap_lookup_keys ? s->cap_lookup_keys * 2 : 16;
        s->lookup_keys = gw_xrealloc(s->lookup_keys, s->cap_lookup_keys * sizeof(char *));
    }
    s->lookup_keys[s->nlookup_keys++] = gw_xstrdup(key);
}

/* Lookups text of a row: "key\tparams\n" per entry, in the rules' order. */
static void lookups_text(const rules_lookups_t *l, gw_buf_t *out)
{
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        gw_buf_puts(out, l->items[i].key);
        gw_buf_puts(out, "\t");
        gw_buf_puts(out, l->items[i].params);
        gw_buf_puts(out, "\n");
    }
}

/* Close the row's current lookup entries and open new ones; remember changed keys. */
static int replace_lookups(gw_storage_t *s, const gw_row_ref_t *ref, const char *old_text,
                           const rules_lookups_t *l, gw_err_t *err)
{
    uint64_t op_id = s->next_op++; /* lookups share the op-id sequence */
    s->txn_last_op = op_id;
    sqlite3_stmt *q = s->st[ST_LOOKUP_CLOSE];
    sqlite3_bind_text(q, 1, ns_table(s, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, (sqlite3_int64)op_id);
    int rc = sqlite3_step(q);
    sqlite3_reset(q);
    if (rc != SQLITE_DONE) return sql_err(s->db, err, "update parameter lookups");
    /* keys of the old entries changed too */
    for (const char *p = old_text; p != NULL && *p != '\0';) {
        const char *tab = strchr(p, '\t');
        const char *nl = strchr(p, '\n');
        if (tab == NULL || nl == NULL) break;
        char key[1024];
        snprintf(key, sizeof(key), "%.*s", (int)(tab - p), p);
        note_lookup_key(s, key);
        p = nl + 1;
    }
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        q = s->st[ST_LOOKUP_INSERT];
        sqlite3_bind_text(q, 1, ns_key(s, l->items[i].key), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, ref->key, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, l->items[i].params, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 5, (sqlite3_int64)op_id);
        rc = sqlite3_step(q);
        sqlite3_reset(q);
        if (rc != SQLITE_DONE) return sql_err(s->db, err, "write parameter lookups");
        note_lookup_key(s, l->items[i].key);
    }
    return 0;
}

/* Load a row's stored members and lookups (copies into the given buffers). 1 found, 0 not.
 * *copy_same: whether its stored copy equals copy/copy_len (NULL: none). */
static int row_load(gw_storage_t *s, const gw_row_ref_t *ref, gw_buf_t *members, gw_buf_t *lookups,
                    const void *copy, size_t copy_len, int *copy_same)
{
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, ns_table(s, ref->table), -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
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

int gw_storage_put_row(gw_storage_t *s, const gw_row_ref_t *ref, const rules_ops_t *ops,
                       const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                       size_t copy_len, gw_err_t *err)
{
    char subkey[2048];
    subkey_of(ref, subkey, sizeof(subkey));
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT, new_lookups = GW_BUF_INIT;
    int rc = 0, found = 0, copy_same = 0;
    if (filter_maybe(s, ref))
        found = row_load(s, ref, &old_members, &old_lookups, copy, copy_len, &copy_same);
    gw_buf_reset(&s->members);
    /* PUT every current membership */
    for (size_t i = 0; ops != NULL && i < ops->n && rc == 0; i++) {
        const rules_op_t *o = &ops->items[i];
        bucket_t *b = bucket_get(s, o->bucket, err);
        if (b == NULL) {
            rc = GW_EIO;
            break;
        }
        rc = write_op(s, b, OP_PUT, o->object_type, o->object_id, subkey, o->data, o->checksum,
                      tails != NULL && tails[i].text != NULL ? &tails[i] : NULL, err);
        add_member(&s->members, ref, b->id, o->object_type, o->object_id);
    }
    /* REMOVE memberships the row lost */
    const unsigned char *p = (const unsigned char *)old_members.data;
    const unsigned char *end = p + old_members.len;
    member_t m;
    uint32_t rm_checksum = 0;
    int have_rm_checksum = 0;
    while (rc == 0 && p != NULL && next_member(&p, end, ref, &m)) {
        int kept = 0;
        for (size_t i = 0; ops != NULL && i < ops->n && !kept; i++) {
            const rules_op_t *o = &ops->items[i];
            bucket_t *b = gw_map_get(&s->by_name, o->bucket);
            kept = b != NULL && b->id == m.bucket_id && strlen(o->object_type) == m.tlen &&
                   memcmp(o->object_type, m.type, m.tlen) == 0 && strlen(o->object_id) == m.ilen &&
                   memcmp(o->object_id, m.id, m.ilen) == 0;
        }
        if (kept || !live_bucket(s, m.bucket_id)) continue;
        if (!have_rm_checksum) {
            rm_checksum = rules_checksum_delete(subkey);
            have_rm_checksum = 1;
        }
        char type[512], id[1024];
        copy_span(type, sizeof(type), m.type, m.tlen);
        copy_span(id, sizeof(id), m.id, m.ilen);
        rc = write_op(s, s->by_id[m.bucket_id], OP_REMOVE, type, id, subkey, NULL, rm_checksum,
                      NULL, err);
    }
    int lookups_same = 1;
    if (rc == 0) {
        lookups_text(lookups, &new_lookups);
        const char *oldl = old_lookups.data != NULL ? old_lookups.data : "";
        const char *newl = new_lookups.data != NULL ? new_lookups.data : "";
        lookups_same = strcmp(oldl, newl) == 0;
        if (!lookups_same) rc = replace_lookups(s, ref, oldl, lookups, err);
    }
    /* the stored row changes only when its memberships, lookups or copy do */
    int same =
        found && lookups_same && copy_same && old_members.len == s->members.len &&
        (s->members.len == 0 || memcmp(old_members.data, s->members.data, s->members.len) == 0);
    if (rc == 0 && !same) {
        sqlite3_stmt *q = s->st[found ? ST_ROW_UPDATE : ST_ROW_INSERT];
        sqlite3_bind_text(q, 1, ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
        sqlite3_bind_blob(q, 3, s->members.data, (int)s->members.len, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, new_lookups.data != NULL ? new_lookups.data : "", -1,
                          SQLITE_STATIC);
        if (copy != NULL)
            sqlite3_bind_blob(q, 5, copy, (int)copy_len, SQLITE_STATIC);
        else
            sqlite3_bind_null(q, 5);
        if (sqlite3_step(q) != SQLITE_DONE) rc = sql_err(s->db, err, "store a row");
        sqlite3_reset(q);
        if (rc == 0 && !found) {
            filter_add(s, ref);
            atomic_fetch_add(&s->n_rows, 1);
        }
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    gw_buf_free(&new_lookups);
    return rc;
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
static int chunk_load(gw_storage_t *s, sqlite3_stmt *get, int64_t id, gw_buf_t *out, gw_err_t *err)
{
    gw_buf_reset(out);
    sqlite3_bind_int64(get, 1, id);
    int rc = sqlite3_step(get) == SQLITE_ROW ? 0 : sql_err(s->db, err, "read ops to compact");
    if (rc == 0)
        gw_buf_append(out, sqlite3_column_blob(get, 0), (size_t)sqlite3_column_bytes(get, 0));
    sqlite3_reset(get);
    return rc;
}

/* Replace chunk id's records (and its first op, count and checksum sum). 0 or GW_EIO. */
static int chunk_store(gw_storage_t *s, sqlite3_stmt *set, int64_t id, const gw_buf_t *ops,
                       gw_err_t *err)
{
    uint64_t first = 0, n = 0;
    uint32_t sum = 0;
    rec_t r;
    for (size_t off = 0; rec_read((const unsigned char *)ops->data + off, ops->len - off, &r);
         off += r.size) {
        if (n++ == 0) first = r.op_id;
        sum += r.checksum;
    }
    sqlite3_bind_int64(set, 1, id);
    sqlite3_bind_blob(set, 2, ops->data, (int)ops->len, SQLITE_STATIC);
    sqlite3_bind_int64(set, 3, (sqlite3_int64)first);
    sqlite3_bind_int64(set, 4, (sqlite3_int64)n);
    sqlite3_bind_int64(set, 5, sum);
    int rc = sqlite3_step(set) == SQLITE_DONE ? 0 : sql_err(s->db, err, "rewrite compacted ops");
    sqlite3_reset(set);
    return rc;
}

/* MOVE: every PUT/REMOVE <= upto with a later PUT/REMOVE of the same row in the bucket. Chunks
 * are visited newest first; a chunk is rewritten only when one of its ops became a MOVE. */
static int compact_moves(gw_storage_t *s, const int64_t *ids, size_t nids, sqlite3_stmt *const *q,
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
        rec_t r;
        for (size_t off = 0;
             rc == 0 && rec_read((const unsigned char *)in.data + off, in.len - off, &r);
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
            rec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
            if (r.op != OP_PUT && r.op != OP_REMOVE) continue;
            /* the identity's three strings joined by 0x1f (they are escaped: no control bytes;
             * the body's length prefixes hold NULs, and map keys are C strings) */
            gw_buf_reset(&key);
            const unsigned char *ip = (const unsigned char *)r.ident, *ie = ip + r.ident_len;
            const char *str;
            size_t n;
            for (int f = 0; f < 3 && body_field(&ip, ie, &str, &n); f++) {
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
                rec_read((const unsigned char *)in.data + offs[i], in.len - offs[i], &r);
                if (is_move[i]) {
                    rec_append(&out, r.op_id, r.checksum, OP_MOVE, 0, 0, "", 0);
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
static int compact_clear(gw_storage_t *s, bucket_t *b, const int64_t *ids, size_t nids,
                         sqlite3_stmt *const *q, uint64_t *cleared, gw_err_t *err)
{
    gw_buf_t in = GW_BUF_INIT, out = GW_BUF_INIT;
    uint64_t n = 0, last = 0;
    uint32_t sum = 0;
    int only_clear = 1, rc = 0, stopped = 0;
    size_t c = 0, stop_off = 0; /* the chunk and offset of the first op kept */
    for (; c < nids && rc == 0 && !stopped; c++) {
        rc = chunk_load(s, q[CQ_GET], ids[c], &in, err);
        rec_t r;
        for (size_t off = 0;
             rc == 0 && rec_read((const unsigned char *)in.data + off, in.len - off, &r);
             off += r.size) {
            if (r.op == OP_PUT) {
                stopped = 1;
                stop_off = off;
                break;
            }
            last = r.op_id;
            sum += r.checksum;
            only_clear &= r.op == OP_CLEAR;
            n++;
        }
    }
    /* c is one past the last chunk read; `in` holds it */
    if (rc == 0 && n > 0 && !(n == 1 && only_clear)) {
        size_t ndel = stopped ? c - 1 : c; /* chunks wholly inside the prefix */
        for (size_t i = 0; i < ndel && rc == 0; i++) {
            sqlite3_bind_int64(q[CQ_DEL], 1, ids[i]);
            if (sqlite3_step(q[CQ_DEL]) != SQLITE_DONE)
                rc = sql_err(s->db, err, "delete cleared ops");
            sqlite3_reset(q[CQ_DEL]);
        }
        rec_append(&out, last, sum, OP_CLEAR, 0, 0, "", 0);
        if (rc == 0 && stopped) {
            /* the CLEAR replaces the prefix part of the chunk that holds the first PUT */
            gw_buf_append(&out, in.data + stop_off, in.len - stop_off);
            rc = chunk_store(s, q[CQ_SET], ids[c - 1], &out, err);
        } else if (rc == 0) {
            rc = chunk_insert(s, b->id, last, last, 1, sum, &out, err);
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

int gw_storage_set_version(gw_storage_t *s, const char *version, gw_err_t *err)
{
    char ns[40];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->version) == 0) return 0;
    if (s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version change inside a transaction");
    snprintf(s->version, sizeof(s->version), "%s", ns);
    gw_buf_reset(&s->ns_tbl);
    free(s->filter);
    s->filter = NULL;
    if (load_cache(s, err) != 0) return GW_EIO;
    gw_storage_stats_t st;
    if (gw_storage_stats(s, &st) == 0) filter_build(s, st.rows);
    return 0;
}

const char *gw_storage_version(const gw_storage_t *s)
{
    return s->version;
}

int gw_storage_advance_checkpoint(gw_storage_t *s, gw_err_t *err)
{
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "checkpoint advance outside a transaction");
    if (s->next_op - 1 > s->txn_last_op) s->txn_last_op = s->next_op - 1;
    return 0;
}

/* Run sql (binding ?1/?2 to the text range [lo, hi)) and add the rows it changed to *n. */
static int exec_range(gw_storage_t *s, const char *sql, const char *lo, const char *hi, uint64_t *n,
                      gw_err_t *err)
{
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) != SQLITE_OK)
        return sql_err(s->db, err, "drop a rule version");
    sqlite3_bind_text(q, 1, lo, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hi, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : sql_err(s->db, err, "drop a rule version");
    sqlite3_finalize(q);
    if (rc == 0 && n != NULL) *n += (uint64_t)sqlite3_changes(s->db);
    return rc;
}

int gw_storage_drop_version(gw_storage_t *s, const char *version, uint64_t *dropped, gw_err_t *err)
{
    *dropped = 0;
    char ns[40], lo[48], hi[48];
    snprintf(ns, sizeof(ns), "%s#", version);
    if (strcmp(ns, s->version) == 0 || version[0] == '\0')
        return gw_err_set(err, GW_EINVAL, "storage", "cannot drop the writer's own version");
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "version drop outside a transaction");
    if (flush_pending(s, err) != 0) return GW_EIO;
    ns_range(ns, lo, hi, sizeof(lo));
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

int gw_storage_compact(gw_storage_t *s, gw_storage_compact_stats_t *out, gw_err_t *err)
{
    gw_storage_compact_stats_t st = {0};
    if (!s->in_txn)
        return gw_err_set(err, GW_EINVAL, "storage", "compaction outside a transaction");
    if (flush_pending(s, err) != 0) return GW_EIO;
    uint64_t upto = s->last_op;
    st.target = upto;
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
            rc = sql_err(s->db, err, "prepare compaction");
    for (size_t id = 0; id < s->by_id_cap && rc == 0; id++) {
        bucket_t *b = s->by_id[id];
        if (b == NULL || !own_name(s, b->name)) /* another version's writer owns the others */
            continue;
        st.ops_before += b->count;
        if (b->last_op <= b->compacted || b->count < 2) {
            st.ops_after += b->count;
            continue;
        }
        st.buckets++;
        uint64_t before = b->count;
        size_t nids;
        int64_t *ids = chunk_ids(q[CQ_IDS], b, upto, &nids);
        rc = compact_moves(s, ids, nids, q, &st.moved, err);
        if (rc == 0) rc = compact_clear(s, b, ids, nids, q, &st.cleared, err);
        free(ids);
        if (rc == 0) {
            b->compacted = upto;
            if (b->count != before) {
                b->dirty = 1;
                flush_bucket(NULL, b, s);
            }
        }
        st.ops_after += b->count;
    }
    for (int i = 0; i < CQ_COUNT; i++)
        sqlite3_finalize(q[i]);
    if (rc == 0 && (st.moved > 0 || st.cleared > 0))
        rc = state_set_u64(s, "compact_target", upto, err);
    if (out != NULL) *out = st;
    return rc;
}

int gw_storage_write_checkpoint(gw_storage_t *s, const char *user_key, uint64_t lsn,
                                uint64_t *counter, gw_err_t *err)
{
    sqlite3_stmt *q = s->st[ST_WCP_UPSERT];
    sqlite3_bind_text(q, 1, user_key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)lsn);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) *counter = (uint64_t)sqlite3_column_int64(q, 0);
    sqlite3_reset(q);
    if (rc != SQLITE_ROW) return sql_err(s->db, err, "store a write checkpoint");
    if (s->nwcp == s->cap_wcp) {
        s->cap_wcp = s->cap_wcp ? s->cap_wcp * 2 : 16;
        s->wcp = gw_xrealloc(s->wcp, s->cap_wcp * sizeof(*s->wcp));
    }
    s->wcp[s->nwcp].key = gw_xstrdup(user_key);
    s->wcp[s->nwcp].lsn = lsn;
    s->nwcp++;
    return 0;
}

int gw_storage_delete_row(gw_storage_t *s, const gw_row_ref_t *ref, gw_err_t *err)
{
    gw_buf_t old_members = GW_BUF_INIT, old_lookups = GW_BUF_INIT;
    int copy_same;
    if (!row_load(s, ref, &old_members, &old_lookups, NULL, 0, &copy_same))
        return 0; /* never stored: nothing to remove */
    int rc = 0;
    char subkey[2048];
    subkey_of(ref, subkey, sizeof(subkey));
    uint32_t rm_checksum = rules_checksum_delete(subkey);
    const unsigned char *p = (const unsigned char *)old_members.data;
    const unsigned char *end = p + old_members.len;
    member_t m;
    while (rc == 0 && p != NULL && next_member(&p, end, ref, &m)) {
        if (!live_bucket(s, m.bucket_id)) continue;
        char type[512], id[1024];
        copy_span(type, sizeof(type), m.type, m.tlen);
        copy_span(id, sizeof(id), m.id, m.ilen);
        rc = write_op(s, s->by_id[m.bucket_id], OP_REMOVE, type, id, subkey, NULL, rm_checksum,
                      NULL, err);
    }
    if (rc == 0 && old_lookups.len > 0) rc = replace_lookups(s, ref, old_lookups.data, NULL, err);
    if (rc == 0) {
        sqlite3_stmt *q = s->st[ST_ROW_DEL];
        sqlite3_bind_text(q, 1, ns_table(s, ref->table), -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ref->key, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_DONE)
            rc = sql_err(s->db, err, "delete a row");
        else
            atomic_fetch_sub(&s->n_rows, 1);
        sqlite3_reset(q);
    }
    gw_buf_free(&old_members);
    gw_buf_free(&old_lookups);
    return rc;
}

int gw_storage_truncate(gw_storage_t *s, const char *table, gw_err_t *err)
{
    for (;;) {
        /* collect a batch of keys first: deleting while stepping the same table is unsafe */
        sqlite3_stmt *q = s->st[ST_ROWS_OF_TABLE];
        sqlite3_bind_text(q, 1, ns_table(s, table), -1, SQLITE_STATIC);
        size_t n;
        char **keys = collect_texts(q, &n);
        int rc = 0;
        for (size_t i = 0; i < n; i++) {
            gw_row_ref_t ref = {.table = table, .key = keys[i]};
            if (rc == 0) rc = gw_storage_delete_row(s, &ref, err);
            free(keys[i]);
        }
        free(keys);
        if (rc != 0) return rc;
        if (n == 0) return 0;
    }
}

int gw_storage_row_copy(gw_storage_t *s, const gw_row_ref_t *ref, void **out, size_t *len)
{
    sqlite3_stmt *q = s->st[ST_ROW_GET];
    sqlite3_bind_text(q, 1, ns_table(s, ref->table), -1, SQLITE_STATIC);
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

/* Copy encoding: [u16 ncols] then per column [u16 name len][name][u8 kind][u32 len][bytes]. */
size_t gw_storage_row_encode(gw_buf_t *out, size_t ncols, const char *const *names,
                             const char *const *values, const size_t *lens, size_t min_len)
{
    size_t start = out->len;
    uint16_t n = 0;
    gw_buf_append(out, &n, 2);
    for (size_t i = 0; i < ncols; i++) {
        size_t len = values[i] == NULL ? 0 : lens ? lens[i] : strlen(values[i]);
        if (min_len > 0 && (values[i] == NULL || len < min_len)) continue;
        n++;
        uint16_t nl = (uint16_t)strlen(names[i]);
        gw_buf_append(out, &nl, 2);
        gw_buf_append(out, names[i], nl);
        char kind = values[i] != NULL ? 't' : 'n';
        gw_buf_append(out, &kind, 1);
        uint32_t vl = values[i] == NULL ? 0 : (uint32_t)(lens ? lens[i] : strlen(values[i]));
        gw_buf_append(out, &vl, 4);
        if (values[i] != NULL) gw_buf_append(out, values[i], vl);
    }
    memcpy(out->data + start, &n, 2);
    return n;
}

int gw_storage_row_find(const void *copy, size_t copy_len, const char *name, const char **value,
                        size_t *len)
{
    const char *p = copy, *end = p + copy_len;
    if (copy_len < 2) return 0;
    uint16_t n;
    memcpy(&n, p, 2);
    p += 2;
    size_t want = strlen(name);
    for (uint16_t i = 0; i < n; i++) {
        uint16_t nl;
        uint32_t vl;
        if (end - p < 2) return 0;
        memcpy(&nl, p, 2);
        if (end - p < 2 + nl + 5) return 0;
        const char *nm = p + 2;
        char kind = p[2 + nl];
        memcpy(&vl, p + 3 + nl, 4);
        const char *v = p + 7 + nl;
        if (end - v < (ptrdiff_t)vl) return 0;
        if (nl == want && memcmp(nm, name, nl) == 0) {
            *value = kind == 't' ? v : NULL;
            *len = vl;
            return 1;
        }
        p = v + vl;
    }
    return 0;
}

/* ---- readers ---- */

enum {
    RD_STATE,
    RD_BUCKET,
    RD_OPS_AFTER,
    RD_OPS,
    RD_LOOKUP,
    RD_BUCKETS,
    RD_STATE_ONE,
    RD_WCP,
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
};

struct gw_storage_reader {
    sqlite3 *db;
    sqlite3_stmt *st[RD_COUNT];
    char ns[40]; /* the served rule version's namespace, as of the last checkpoint read */
};

/* The namespace of the version the file serves (another process may be writing it). */
static void reader_file_ns(gw_storage_reader_t *r)
{
    sqlite3_stmt *q = r->st[RD_STATE_ONE];
    sqlite3_bind_text(q, 1, "serving", -1, SQLITE_STATIC);
    r->ns[0] = '\0';
    if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0) != NULL)
        snprintf(r->ns, sizeof(r->ns), "%s#", (const char *)sqlite3_column_text(q, 0));
    sqlite3_reset(q);
}

int gw_storage_reader_open(const char *path, gw_storage_reader_t **out, gw_err_t *err)
{
    gw_storage_reader_t *r = gw_xcalloc(1, sizeof(*r));
    if (sqlite3_open_v2(path, &r->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        gw_err_set(err, GW_EIO, "storage", "could not open \"%s\" for reading: %s", path,
                   r->db ? sqlite3_errmsg(r->db) : "out of memory");
        gw_storage_reader_close(r);
        return GW_EIO;
    }
    sqlite3_busy_timeout(r->db, 5000);
    for (int i = 0; i < RD_COUNT; i++) {
        if (sqlite3_prepare_v3(r->db, rd_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &r->st[i], NULL) !=
            SQLITE_OK) {
            sql_err(r->db, err, "prepare storage reads");
            gw_storage_reader_close(r);
            return GW_EIO;
        }
    }
    reader_file_ns(r);
    *out = r;
    return 0;
}

const char *gw_storage_reader_version(const gw_storage_reader_t *r)
{
    return r->ns;
}

void gw_storage_reader_close(gw_storage_reader_t *r)
{
    if (r == NULL) return;
    for (int i = 0; i < RD_COUNT; i++)
        sqlite3_finalize(r->st[i]);
    if (r->db != NULL) sqlite3_close(r->db);
    free(r);
}

int gw_storage_read_checkpoint(gw_storage_reader_t *r, uint64_t *last_op, uint64_t *lsn,
                               int *consistent)
{
    *last_op = *lsn = 0;
    *consistent = 0;
    if (atomic_load(&durable_set)) {
        /* this process writes: serve only what is on disk (a commit not yet synced may be
         * lost with the machine, and its op ids reused) */
        pthread_mutex_lock(&durable_lock);
        *last_op = atomic_load(&durable_last_op);
        *lsn = atomic_load(&durable_lsn);
        *consistent = atomic_load(&durable_consistent);
        snprintf(r->ns, sizeof(r->ns), "%s", durable_ns);
        pthread_mutex_unlock(&durable_lock);
        return 0;
    }
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return GW_EIO;
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
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    return rc == SQLITE_DONE ? 0 : GW_EIO;
}

int gw_storage_read_write_checkpoint(gw_storage_reader_t *r, const char *user_key,
                                     uint64_t as_of_lsn, uint64_t *counter)
{
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

int gw_storage_read_state(gw_storage_reader_t *r, const char *key, char *buf, size_t len)
{
    sqlite3_stmt *q = r->st[RD_STATE_ONE];
    char k[256];
    sqlite3_bind_text(q, 1, state_key(r->ns, key, k, sizeof(k)), -1, SQLITE_TRANSIENT);
    int found = 0;
    if (sqlite3_step(q) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(q, 0);
        snprintf(buf, len, "%s", v != NULL ? v : "");
        found = 1;
    }
    sqlite3_reset(q);
    return found;
}

int gw_storage_bucket_checksum(gw_storage_reader_t *r, const char *bucket, uint64_t as_of,
                               uint32_t *checksum, uint64_t *count)
{
    *checksum = 0;
    *count = 0;
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return GW_EIO;
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
            rec_t rec;
            for (size_t off = 0; p != NULL && rec_read(p + off, len - off, &rec); off += rec.size) {
                if (rec.op_id > as_of) {
                    *count -= 1;
                    *checksum -= rec.checksum;
                }
            }
        }
        if (step != SQLITE_DONE) rc = GW_EIO;
        sqlite3_reset(q);
    }
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    return rc;
}

int gw_storage_read_ops(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                        size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last,
                        int *has_more, size_t *nops)
{
    *last = after;
    *has_more = 0;
    *nops = 0;
    if (sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) return GW_EIO;
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
            rec_t rec;
            for (size_t off = 0; p != NULL && rec_read(p + off, len - off, &rec); off += rec.size) {
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
                render_op(out, &rec);
                bytes += out->len - before;
                *last = rec.op_id;
                (*nops)++;
            }
        }
        if (!done && step != SQLITE_DONE) rc = GW_EIO;
        sqlite3_reset(q);
    }
    sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
    return rc;
}

int gw_storage_lookup(gw_storage_reader_t *r, const char *version, const char *key, uint64_t as_of,
                      int (*fn)(void *ud, const char *params), void *ud)
{
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

int gw_storage_each_bucket(gw_storage_reader_t *r, uint64_t as_of,
                           int (*fn)(void *ud, const char *bucket, uint32_t checksum,
                                     uint64_t count),
                           void *ud)
{
    /* collect names first so the callback can use the reader */
    size_t n;
    char **names = collect_texts(r->st[RD_BUCKETS], &n);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t cs;
        uint64_t count;
        if (rc == 0) rc = gw_storage_bucket_checksum(r, names[i], as_of, &cs, &count);
        if (rc == 0) rc = fn(ud, names[i], cs, count);
        free(names[i]);
    }
    free(names);
    return rc;
}
