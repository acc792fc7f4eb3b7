/* gw_sqlite_int.h -- what the SQLite backend's files share (storage/sqlite/ only)
 *
 * The backend is one module in several files, one job each:
 *   gw_sqlite.c           the file: schema and layout, open and close, the operations table
 *   gw_sqlite_txn.c       transactions, replication state, the queue of a transaction's ops
 *   gw_sqlite_rows.c      buckets, rows and their memberships, lookups, write checkpoints
 *   gw_sqlite_versions.c  rule-version namespaces, dropping a version, compaction
 *   gw_sqlite_sync.c      the syncer (durable commits, publication) and the checkpointer
 *   gw_sqlite_read.c      readers
 * gw_sqlite_t is a writer (gw_storage_t is its first member), gw_sqlite_reader_t a reader.
 * Functions named gw__sqlite_<op> are the contract's operations (gw_storage.h); other gw__sqlite_
 * functions are shared between these files.
 */
#ifndef GW_SQLITE_INT_H
#define GW_SQLITE_INT_H

#include "base/gw_buf.h"
#include "base/gw_map.h"
#include "storage/gw_storage.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct gw_sqlite gw_sqlite_t;
typedef struct gw_sqlite_reader gw_sqlite_reader_t;

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
    ST_WCP_REQUEST,
    ST_WCP_GET,
    ST_COUNT
};

/* A chunk holds at most this many ops / about this many bytes; queued ops are written out as
 * chunks at commit, or earlier when the queue holds PEND_MAX_BYTES. */
enum { CHUNK_MAX_OPS = 1000, CHUNK_MAX_BYTES = 128 * 1024, PEND_MAX_BYTES = 16 << 20 };

/* WAL frames (pages) that wake the checkpointer (16 MB), and past which the writer finishes the
 * checkpoint itself right after a commit (32 MB): a background checkpoint always lags the
 * writer a little, and SQLite restarts the WAL from its beginning only after a checkpoint that
 * copied every frame, so without this the WAL would grow for as long as writes continue. */
/* Each queued op (gw_sqlite_t.pend) is a record behind a 4-byte link to the next op of its
 * bucket. */
enum { PEND_LINK = 4 };

enum { CKPT_FRAMES = 4096, CKPT_RESTART_FRAMES = 8192, CKPT_WAIT_FRAMES = 12288 };

struct gw_sqlite {
    gw_storage_t base; /* first: the contract's head */
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

/* A commit waiting to be made durable and published (gw_sqlite_sync.c). */
typedef struct durable_job {
    struct durable_job *next;
    uint64_t last_op, lsn;
    int consistent;
    char **names; /* buckets, then lookup keys, then write-checkpoint keys */
    size_t nbuckets, nlookups, nwcps;
    int waited; /* the committer waits for it and frees it */
    int done;
} durable_job_t;

/* ---- gw_sqlite.c: the file ---- */

/** The backend's operations table (gw_sqlite.h). */
extern const gw_storage_type_t gw_sqlite_type;

/** Fill err with "could not <what>: <SQLite's message>"; returns GW_EIO. */
int gw__sqlite_err(sqlite3 *db, gw_err_t *err, const char *what);

/** Run sql (no rows); GW_EIO with err "could not <what>: …" on failure. */
int gw__sqlite_exec(sqlite3 *db, const char *sql, gw_err_t *err, const char *what);

/** Step q to the end, copying column 0 of each row: *n strings in a malloc'd array (the caller
 *  frees each and the array). The statement is reset. */
char **gw__sqlite_collect_texts(sqlite3_stmt *q, size_t *n);

/* ---- gw_sqlite_txn.c: transactions, state, the op queue ---- */

/** Store an integer state value inside the current transaction. */
int gw__sqlite_state_set_u64(gw_sqlite_t *s, const char *key, uint64_t v, gw_err_t *err);

/** The stored form of key in namespace ns ("3#slot"; shared keys as they are), into buf. */
const char *gw__sqlite_state_key(const char *ns, const char *key, char *buf, size_t len);

/** Write a dirty bucket's totals (a gw_map_each callback: key unused, value the bucket_t, ud the
 *  writer). */
void gw__sqlite_flush_bucket(const char *key, void *value, void *ud);

/** Queue an op of bucket b with a new op id (tail: its body encoded ahead, else encoded here),
 *  and update the bucket's totals. 0, or GW_EIO when an early flush of the queue failed. */
int gw__sqlite_write_op(gw_sqlite_t *s, bucket_t *b, int op, const char *type, const char *id,
                        const char *subkey, const char *data, uint32_t checksum,
                        const gw_op_tail_t *tail, gw_err_t *err);

/** Write every queued op as chunks and empty the queue. 0 or GW_EIO (then roll back). */
int gw__sqlite_flush_pending(gw_sqlite_t *s, gw_err_t *err);

/** Insert one chunk row of bucket_id holding the records in ops. 0 or GW_EIO. */
int gw__sqlite_chunk_insert(gw_sqlite_t *s, int64_t bucket_id, uint64_t first, uint64_t last,
                            uint64_t n, uint32_t checksum, const gw_buf_t *ops, gw_err_t *err);

/* ---- gw_sqlite_rows.c: buckets, rows, lookups ---- */

/** (Re)load the bucket totals, counters and checkpoint from the file (after open, a rollback or
 *  a namespace change). 0 or GW_EIO. */
int gw__sqlite_load_cache(gw_sqlite_t *s, gw_err_t *err);

/** Free the bucket cache. */
void gw__sqlite_drop_cache(gw_sqlite_t *s);

/** The bucket named name, created (row and cache entry) when new; NULL with err on failure. */
bucket_t *gw__sqlite_bucket_get(gw_sqlite_t *s, const char *name, gw_err_t *err);

/** Mark b dirty and note it among the transaction's touched buckets (for the hook). */
void gw__sqlite_touch(gw_sqlite_t *s, bucket_t *b);

/** (Re)build the row filter for about rows stored rows (disabled on any error: always safe). */
void gw__sqlite_filter_build(gw_sqlite_t *s, uint64_t rows);

/* ---- gw_sqlite_versions.c: namespaces ---- */

/** Whether a bucket, row table or lookup key name belongs to s's rule version. */
int gw__sqlite_own_name(const gw_sqlite_t *s, const char *name);

/** The text range [lo, hi) of names in namespace ns ("2#" -> ["2#", "2$")); all names for "". */
void gw__sqlite_ns_range(const char *ns, char *lo, char *hi, size_t len);

/** A table name in s's namespace ("2#public.todos"); valid until the next call. */
const char *gw__sqlite_ns_table(gw_sqlite_t *s, const char *table);

/** A lookup key in s's namespace; valid until the next call. */
const char *gw__sqlite_ns_key(gw_sqlite_t *s, const char *key);

/* ---- gw_sqlite_sync.c: durability and publication ---- */

/** Start the syncer and the checkpointer (after open); without a thread, do its work inline. */
void gw__sqlite_threads_start(gw_sqlite_t *s);

/** Stop both threads; the syncer publishes every queued job first. */
void gw__sqlite_threads_stop(gw_sqlite_t *s);

/** Sync the WAL; stops the process when that fails (a restart recovers from disk). */
void gw__sqlite_wal_sync(gw_sqlite_t *s);

/** Report a durable job: the hook, the published checkpoint, the durable callback. */
void gw__sqlite_job_publish(gw_sqlite_t *s, durable_job_t *j);

/** Free a job and the names it holds. */
void gw__sqlite_job_free(durable_job_t *j);

/* ---- the operations (gw_storage.h documents each under its gw_storage_ name) ---- */

int gw__sqlite_open(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                    gw_err_t *err);
uint64_t gw__sqlite_size(const gw_storage_opts_t *opts);
void gw__sqlite_close(gw_storage_t *st);
void gw__sqlite_set_serving(gw_storage_t *st, int on);
void gw__sqlite_set_hook(gw_storage_t *st, gw_storage_hook_fn fn, void *ud);
void gw__sqlite_get_hook(const gw_storage_t *st, gw_storage_hook_fn *fn, void **ud);
void gw__sqlite_set_durable_fn(gw_storage_t *st, void (*fn)(uint64_t lsn, void *ud), void *ud);
void gw__sqlite_settle(gw_storage_t *st);
void gw__sqlite_move_pending(gw_storage_t *from, gw_storage_t *to);
int gw__sqlite_begin(gw_storage_t *st, gw_err_t *err);
int gw__sqlite_commit(gw_storage_t *st, uint64_t lsn, int wait, gw_err_t *err);
void gw__sqlite_rollback(gw_storage_t *st);
int gw__sqlite_in_txn(const gw_storage_t *st);
int gw__sqlite_state_get(gw_storage_t *st, const char *key, char *buf, size_t len);
int gw__sqlite_state_set(gw_storage_t *st, const char *key, const char *value, gw_err_t *err);
void gw__sqlite_checkpoint(const gw_storage_t *st, uint64_t *last_op, uint64_t *lsn);
int gw__sqlite_set_consistent(gw_storage_t *st, int consistent, gw_err_t *err);
int gw__sqlite_consistent(const gw_storage_t *st);
int gw__sqlite_stats(gw_storage_t *st, gw_storage_stats_t *out);
int gw__sqlite_set_version(gw_storage_t *st, const char *version, gw_err_t *err);
const char *gw__sqlite_version(const gw_storage_t *st);
int gw__sqlite_advance_checkpoint(gw_storage_t *st, gw_err_t *err);
int gw__sqlite_drop_version(gw_storage_t *st, const char *version, uint64_t *dropped,
                            gw_err_t *err);
int gw__sqlite_compact(gw_storage_t *st, gw_storage_compact_stats_t *out, gw_err_t *err);
int gw__sqlite_put_row(gw_storage_t *st, const gw_row_ref_t *ref, const rules_ops_t *ops,
                       const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                       size_t copy_len, gw_err_t *err);
int gw__sqlite_request_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                  uint64_t requested, uint64_t *stored, gw_err_t *err);
int gw__sqlite_write_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                                uint64_t *counter, gw_err_t *err);
int gw__sqlite_delete_row(gw_storage_t *st, const gw_row_ref_t *ref, gw_err_t *err);
int gw__sqlite_truncate(gw_storage_t *st, const char *table, gw_err_t *err);
int gw__sqlite_row_copy(gw_storage_t *st, const gw_row_ref_t *ref, void **out, size_t *len);
int gw__sqlite_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err);
void gw__sqlite_reader_close(gw_storage_reader_t *rd);
const char *gw__sqlite_reader_version(const gw_storage_reader_t *rd);
int gw__sqlite_read_checkpoint(gw_storage_reader_t *rd, uint64_t *last_op, uint64_t *lsn,
                               int *consistent);
int gw__sqlite_read_state(gw_storage_reader_t *rd, const char *key, char *buf, size_t len);
int gw__sqlite_bucket_checksum(gw_storage_reader_t *rd, const char *bucket, uint64_t as_of,
                               uint32_t *checksum, uint64_t *count);
int gw__sqlite_read_ops(gw_storage_reader_t *rd, const char *bucket, uint64_t after, uint64_t upto,
                        size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last,
                        int *has_more, size_t *nops);
int gw__sqlite_read_write_checkpoint(gw_storage_reader_t *rd, const char *user_key,
                                     uint64_t as_of_lsn, uint64_t *counter);
int gw__sqlite_lookup(gw_storage_reader_t *rd, const char *version, const char *key, uint64_t as_of,
                      int (*fn)(void *ud, const char *params), void *ud);
int gw__sqlite_read_hold(gw_storage_reader_t *rd);
void gw__sqlite_read_release(gw_storage_reader_t *rd);
int gw__sqlite_each_bucket(gw_storage_reader_t *rd, uint64_t as_of,
                           int (*fn)(void *ud, const char *bucket, uint32_t checksum,
                                     uint64_t count),
                           void *ud);

#endif
