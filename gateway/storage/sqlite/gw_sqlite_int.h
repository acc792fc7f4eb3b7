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
#include "storage/gw_publish.h"
#include "storage/gw_storage.h"
#include "storage/gw_writer.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct gw_sqlite gw_sqlite_t;
typedef struct gw_sqlite_reader gw_sqlite_reader_t;

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
    ST_WCP_PRUNE,
    ST_WCP_REQUEST,
    ST_WCP_GET,
    ST_COUNT
};

/* WAL frames (pages) that wake the checkpointer (16 MB), and past which the writer finishes the
 * checkpoint itself right after a commit (32 MB): a background checkpoint always lags the
 * writer a little, and SQLite restarts the WAL from its beginning only after a checkpoint that
 * copied every frame, so without this the WAL would grow for as long as writes continue. */
enum { CKPT_FRAMES = 4096, CKPT_RESTART_FRAMES = 8192, CKPT_WAIT_FRAMES = 12288 };

struct gw_sqlite {
    gw_storage_t base; /* first: the contract's head */
    gw_writer_t w;     /* the in-memory half: buckets, namespace, op queue, rows (gw_writer.h) */
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[ST_COUNT];
    int in_txn;
    _Atomic uint64_t n_checkpoints; /* WAL checkpoints run by the checkpointer */
    int wal_frames;                 /* frames in the WAL after the last commit (writer only) */
    /* reports durable commits in order (gw_publish.h); its thread syncs the WAL first */
    gw_publisher_t *publisher;
    int64_t wcp_next_prune; /* unix seconds: forget unused write checkpoints from then on */
    int wal_fd;
    /* the checkpointer thread */
    pthread_t ckpt_thread;
    int ckpt_started;
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;
    pthread_mutex_t ckpt_run; /* held while either thread checkpoints */
    int ckpt_wanted, ckpt_stop;
};

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

/** Write a bucket's totals. 0 or GW_EIO. */
int gw__sqlite_bucket_flush(gw_sqlite_t *s, gw_wbucket_t *b, gw_err_t *err);

/* ---- gw_sqlite_rows.c: buckets, rows, lookups (the writer's I/O) ---- */

/** The SQLite half of the writer (gw_writer.h). */
extern const gw_writer_io_t gw__sqlite_writer_io;

/** (Re)load the bucket totals, counters and checkpoint from the file (after open, a rollback or
 *  a namespace change). 0 or GW_EIO. */
int gw__sqlite_load_cache(gw_sqlite_t *s, gw_err_t *err);

/** (Re)build the row filter for about rows stored rows (disabled on any error: always safe). */
void gw__sqlite_filter_build(void *ud, uint64_t rows);

/* ---- gw_sqlite_sync.c: durability and publication ---- */

/** Start the publisher (its thread syncs the WAL) and the checkpointer (after open); without a
 *  thread, do its work inline. */
void gw__sqlite_threads_start(gw_sqlite_t *s);

/** Stop both threads; the publisher publishes every queued commit first. */
void gw__sqlite_threads_stop(gw_sqlite_t *s);

/** The checkpoint s is at (last_op, lsn, consistent), in its namespace. */
gw_storage_cp_t gw__sqlite_cp(const gw_sqlite_t *s, uint64_t last_op, uint64_t lsn, int consistent);

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
int gw__sqlite_chunk_commits(gw_storage_reader_t *rd, const char *bucket, uint64_t after,
                             uint64_t upto, int (*fn)(void *ud, const gw_storage_chunk_commit_t *c),
                             void *ud);
void gw__sqlite_set_commit_time(gw_storage_t *st, int64_t unix_us);

#endif
