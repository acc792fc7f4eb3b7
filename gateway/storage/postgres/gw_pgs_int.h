/* gw_pgs_int.h -- what the Postgres backend's files share (storage/postgres/ only)
 *
 * The backend is one module in several files, one job each:
 *   gw_pgs.c           the schema and its layout, open and close, leadership, the operations table
 *   gw_pgs_txn.c       transactions, replication state, the writer's I/O (rows, lookups, chunks,
 *                      buckets) batched into a few statements per commit
 *   gw_pgs_versions.c  rule-version namespaces, version drops, compaction
 *   gw_pgs_notify.c    NOTIFY at commit, the listener that relays other instances' commits,
 *                      the gate that holds checkpoints back until a hot standby has them
 *   gw_pgs_read.c      readers
 *   gw_pgs_wire.c      binary arrays and values of the Postgres wire format
 * gw_pgs_t is a writer (gw_storage_t is its first member), gw_pgs_reader_t a reader.
 */
#ifndef GW_PGS_INT_H
#define GW_PGS_INT_H

#include "base/gw_buf.h"
#include "base/gw_map.h"
#include "storage/gw_publish.h"
#include "storage/gw_storage.h"
#include "storage/gw_writer.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct gw_pgs gw_pgs_t;
typedef struct gw_pgs_reader gw_pgs_reader_t;

/* The layout this code writes (state "layout"); a storage of a newer one is refused. */
#define GW_PGS_LAYOUT 1

/* Statements, prepared on the writer's connection (names "ferry_w<N>"). */
enum {
    PS_BEGIN,       /* lock next_op, read it and the epoch */
    PS_STATE_GET,   /* one state value */
    PS_STATE_SET,   /* one state value */
    PS_ROW_GET,     /* one row's state */
    PS_ROWS_GET,    /* many rows' states (prefetch) */
    PS_WRITE_ROWS,  /* rows upserted and deleted, lookups closed and opened */
    PS_COMMIT,      /* chunks, bucket totals, state, NOTIFY */
    PS_BUCKET_IDS,  /* new bucket ids */
    PS_ROWS_OF_TBL, /* keys of a table's rows (truncate) */
    PS_WCP_UPSERT,  /* the next write checkpoint of a user key */
    PS_CHUNK_GET,   /* compaction: one chunk's records */
    PS_CHUNK_SET,   /* compaction: a chunk rewritten */
    PS_CHUNK_DEL,   /* compaction: a chunk deleted */
    PS_CHUNK_IDS,   /* compaction: a bucket's chunks up to a checkpoint */
    PS_WCP_PRUNE,   /* write checkpoints not written since a time */
    PS_WCP_REQUEST, /* a client's own checkpoint id (checkpoint requests) */
    PS_COUNT
};

/* A row's state in the open transaction (the cache of gw_pgs_txn.c). */
typedef struct pgs_row {
    int present;      /* stored (or to be stored) */
    int dirty;        /* changed in the transaction, not yet written */
    int in_db;        /* certainly in the rows table now (read from it, or written to it in this
                         transaction): written back with an UPDATE; else an upsert */
    gw_buf_t members; /* memberships */
    char *lookups;    /* lookup text ("" for none) */
    void *copy;       /* the copy of long values, NULL for none */
    size_t copy_len;
} pgs_row_t;

/* A lookup entry opened in the open transaction, not yet written. */
typedef struct pgs_lookup {
    char *key, *tbl, *rkey, *params;
    uint64_t from_op, to_op; /* to_op 0: open */
} pgs_lookup_t;

struct gw_pgs_gate; /* gw_pgs_notify.c */

struct gw_pgs {
    gw_storage_t base; /* first: the contract's head */
    gw_writer_t w;     /* the in-memory half (gw_writer.h) */
    PGconn *conn;      /* writes; its session holds the leader's advisory lock */
    char *schema;      /* the schema's name, and quoted for SQL */
    char *schema_q;
    char *channel;       /* NOTIFY channel (quoted identifier) */
    char *channel_raw;   /* the same, as pg_notify's text argument */
    char instance[96];   /* this process ("host:pid:nonce"), in notifications */
    char storage_id[40]; /* state "storage_id": a random name of this storage */
    char where[256];     /* "<schema> in <database>" */
    int prepared;        /* statements prepared on conn */
    int leader;          /* may write replicated data: holds the lock, or follows its epoch */
    int follower;        /* a builder's writer following its process's leader */
    uint64_t epoch;      /* the leader epoch this writer writes under (or last saw) */
    uint64_t last_rt_ms; /* the last round trip that worked (monotonic ms) */
    int in_txn;
    int txn_repl; /* the open transaction writes replicated data */
    gw_publisher_t *publisher;
    struct gw_pgs_gate *gate;  /* read_uri: commits wait for the standby (NULL without) */
    pthread_mutex_t info_lock; /* guards what other threads read: epoch, leader_instance,
                                  pub_cp, durable_fn */
    char leader_instance[96];
    gw_storage_cp_t pub_cp; /* the newest checkpoint handed to the publisher */
    void (*durable_fn)(uint64_t lsn, void *ud);
    void *durable_ud;
    /* the open transaction's rows and writes (gw_pgs_txn.c) */
    gw_map_t rows; /* "<tbl>\x1f<key>" -> pgs_row_t* */
    size_t nrows_dirty;
    pgs_lookup_t *lk; /* lookups opened */
    size_t nlk, cap_lk;
    gw_map_t closed;    /* "<tbl>\x1f<rkey>" -> (void *)op: open entries closed in the storage */
    gw_buf_t chunks[8]; /* chunk columns, binary array elements: bucket, first, last, n, sum, ops,
                           commit_us, commit_lsn */
    size_t nchunks;
    int64_t ids[64];        /* bucket ids taken from the sequence, unused */
    int64_t wcp_next_prune; /* unix seconds: forget unused write checkpoints from then on */
    size_t nids;
    /* the listener: other instances' commits and write checkpoints (gw_pgs_notify.c) */
    pthread_t listen_thread;
    int listen_started;
    _Atomic int listen_stop;
    _Atomic int reachable;         /* the listener's connection works */
    _Atomic int64_t notify_lag_us; /* commit to relay, of the last relayed notification */
    _Atomic uint64_t relayed, catchups;
};

/* gw__pgs_gate_commit's flags */
enum { GW_PGS_OWN = 1, GW_PGS_WAIT = 2, GW_PGS_FORCE = 4 };

/* ---- gw_pgs.c ---- */

/** The backend's operations table (gw_pgs.h). */
extern const gw_storage_type_t gw_pgs_type;

/** The monotonic clock in milliseconds. */
uint64_t gw__pgs_now_ms(void);

/** Fill err with "could not <what>: <the server's message>"; returns GW_EPG. */
int gw__pgs_err(PGconn *conn, gw_err_t *err, const char *what);

/** Connect to uri for storage (keepalives and a user timeout of lock_timeout seconds on both
 *  ends); NULL with err set on failure. The caller PQfinish()es it. */
PGconn *gw__pgs_connect(const char *uri, int lock_timeout, const char *app, gw_err_t *err);

/** The schema's name (opts->schema or "ferry"), whether a name is valid, the lock timeout. */
const char *gw__pgs_schema(const gw_storage_opts_t *opts);
int gw__pgs_schema_valid(const char *schema);
int gw__pgs_lock_timeout(const gw_storage_opts_t *opts);

/** The epoch the leader of this process leads under for opts (0: it does not lead). */
uint64_t gw__pgs_leader_epoch(const gw_storage_opts_t *opts);

/** The text range [lo, hi) of names in namespace ns, as gw_writer_ns_range but valid UTF-8 (the
 *  range of every name, for "", ends below two U+10FFFF). Compared with COLLATE "C". */
void gw__pgs_ns_range(const char *ns, char *lo, char *hi, size_t len);

/** A builder's writer takes up its process's leader's epoch: 1, or 0 when none leads. */
int gw__pgs_follow(gw_pgs_t *s);

/** s no longer leads (its connection broke, or it was fenced); why is logged. */
void gw__pgs_lost_lead(gw_pgs_t *s, const char *why);

/* ---- gw_pgs_txn.c ---- */

/** The writer's I/O (gw_writer.h). */
extern const gw_writer_io_t gw__pgs_writer_io;

/** Prepare the writer's statements on its connection (after a connect). 0 or GW_EPG. */
int gw__pgs_prepare(gw_pgs_t *s, gw_err_t *err);

/** Run prepared statement i with n binary parameters (values, lengths, formats as PQexecPrepared);
 *  the result (caller PQclears) or NULL with err. */
PGresult *gw__pgs_exec(gw_pgs_t *s, int i, int n, const char *const *values, const int *lengths,
                       const int *formats, int binary_result, gw_err_t *err);

/** Write the rows, lookups (and the cache's dirty state) of the open transaction. 0 or error. */
int gw__pgs_flush_rows(gw_pgs_t *s, gw_err_t *err);

/** Forget the open transaction's rows, lookups and chunks (after commit or rollback). */
void gw__pgs_clear_txn(gw_pgs_t *s);

/** (Re)load the bucket cache, counters and checkpoint (after open, a rollback, a new version, or
 *  taking over leadership). 0 or an error. */
int gw__pgs_load_cache(gw_pgs_t *s, gw_err_t *err);

/** Store an integer state value in the open transaction. */
int gw__pgs_state_set_u64(gw_pgs_t *s, const char *key, uint64_t v, gw_err_t *err);

/** Write a bucket's totals now. */
int gw__pgs_bucket_flush(gw_pgs_t *s, gw_wbucket_t *b, gw_err_t *err);

/** Build the writer's row filter from the stored rows of its version. */
void gw__pgs_filter_build(gw_pgs_t *s);

/** Write the chunks waiting in the arrays now (compaction reads them back). */
int gw__pgs_flush_chunks(gw_pgs_t *s, gw_err_t *err);

/** The writer's chunk insert (compaction inserts through it too). */
int gw__pgs_chunk_insert(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                         uint32_t checksum, const gw_buf_t *ops, int64_t commit_us, uint64_t lsn,
                         gw_err_t *err);

/** gw_storage_set_commit_time. */
void gw__pgs_set_commit_time(gw_storage_t *st, int64_t unix_us);

/* ---- gw_pgs_notify.c ---- */

/** Start and stop the listener thread (the serving writer's). */
void gw__pgs_listen_start(gw_pgs_t *s);
void gw__pgs_listen_stop(gw_pgs_t *s);

/** Start and stop the gate (a thread only with storage.read_uri). */
void gw__pgs_gate_start(gw_pgs_t *s);
void gw__pgs_gate_stop(gw_pgs_t *s);

/** Hand a commit (own, or relayed from another instance) towards the publisher, through the
 *  gate: flags GW_PGS_OWN (this writer's: the durable callback runs), GW_PGS_WAIT (return once
 *  published, or durable with a gate), GW_PGS_FORCE (even when not newer than the last). */
void gw__pgs_gate_commit(gw_pgs_t *s, const gw_storage_cp_t *cp, const char *const *buckets,
                         size_t nb, const char *const *lookups, size_t nl, int flags);

/** gw_storage_set_serving through the gate; wait for the gate and the publisher to be idle. */
void gw__pgs_gate_serve(gw_pgs_t *s, int on, const gw_storage_cp_t *cp);
void gw__pgs_gate_settle(gw_pgs_t *s);

/** The notification announcing the open transaction's commit at cp into payload; when its names
 *  (touched buckets and lookup keys) do not fit they go to body (stored in the changes table)
 *  and payload says so; else body is empty. */
void gw__pgs_notify_payload(gw_pgs_t *s, const gw_storage_cp_t *cp, gw_buf_t *payload,
                            gw_buf_t *body);

/** The notification announcing a write checkpoint of user_key at lsn, into out. */
void gw__pgs_notify_wcp(gw_pgs_t *s, const char *user_key, uint64_t lsn, gw_buf_t *out);

/* ---- gw_pgs_read.c ---- */

/** Readers' connections open in this process. */
uint64_t gw__pgs_read_conns(void);

/* ---- gw_pgs_wire.c: the binary format of parameters and results ---- */

/** Append a value to a binary array's element buffer: an int8, a text/bytea, or NULL. */
void gw__pgs_elem_i64(gw_buf_t *elems, int64_t v);
void gw__pgs_elem_bytes(gw_buf_t *elems, const void *p, size_t n);
void gw__pgs_elem_null(gw_buf_t *elems);

/** A one-dimensional binary array of n elements of type oid (20 int8, 25 text, 17 bytea) from
 *  elems, into out (reset first). */
void gw__pgs_array(gw_buf_t *out, uint32_t oid, size_t n, const gw_buf_t *elems);

/** A big-endian int8 parameter into buf (8 bytes). */
void gw__pgs_param_i64(char buf[8], int64_t v);

/** An int8 (binary) or a decimal text value of a result field. */
int64_t gw__pgs_get_i64(const PGresult *res, int row, int col);

/* ---- the operations (gw_storage.h documents each under its gw_storage_ name) ---- */

int gw__pgs_open(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                 gw_err_t *err);
uint64_t gw__pgs_size(const gw_storage_opts_t *opts);
void gw__pgs_close(gw_storage_t *st);
int gw__pgs_lead(gw_storage_t *st, gw_err_t *err);
void gw__pgs_info(gw_storage_t *st, gw_storage_info_t *out);
void gw__pgs_set_serving(gw_storage_t *st, int on);
void gw__pgs_set_hook(gw_storage_t *st, gw_storage_hook_fn fn, void *ud);
void gw__pgs_get_hook(const gw_storage_t *st, gw_storage_hook_fn *fn, void **ud);
void gw__pgs_set_durable_fn(gw_storage_t *st, void (*fn)(uint64_t lsn, void *ud), void *ud);
void gw__pgs_settle(gw_storage_t *st);
void gw__pgs_move_pending(gw_storage_t *from, gw_storage_t *to);
int gw__pgs_begin(gw_storage_t *st, gw_err_t *err);
int gw__pgs_commit(gw_storage_t *st, uint64_t lsn, int wait, gw_err_t *err);
void gw__pgs_rollback(gw_storage_t *st);
int gw__pgs_in_txn(const gw_storage_t *st);
int gw__pgs_state_get(gw_storage_t *st, const char *key, char *buf, size_t len);
int gw__pgs_state_set(gw_storage_t *st, const char *key, const char *value, gw_err_t *err);
void gw__pgs_checkpoint(const gw_storage_t *st, uint64_t *last_op, uint64_t *lsn);
int gw__pgs_set_consistent(gw_storage_t *st, int consistent, gw_err_t *err);
int gw__pgs_consistent(const gw_storage_t *st);
int gw__pgs_stats(gw_storage_t *st, gw_storage_stats_t *out);
int gw__pgs_set_version(gw_storage_t *st, const char *version, gw_err_t *err);
const char *gw__pgs_version(const gw_storage_t *st);
int gw__pgs_advance_checkpoint(gw_storage_t *st, gw_err_t *err);
int gw__pgs_drop_version(gw_storage_t *st, const char *version, uint64_t *dropped, gw_err_t *err);
int gw__pgs_compact(gw_storage_t *st, gw_storage_compact_stats_t *out, gw_err_t *err);
int gw__pgs_prefetch(gw_storage_t *st, const gw_row_ref_t *refs, size_t n, gw_err_t *err);
int gw__pgs_put_row(gw_storage_t *st, const gw_row_ref_t *ref, const rules_ops_t *ops,
                    const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                    size_t copy_len, gw_err_t *err);
int gw__pgs_request_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                               uint64_t requested, uint64_t *stored, gw_err_t *err);
int gw__pgs_write_checkpoint(gw_storage_t *st, const char *user_key, uint64_t lsn,
                             uint64_t *counter, gw_err_t *err);
int gw__pgs_delete_row(gw_storage_t *st, const gw_row_ref_t *ref, gw_err_t *err);
int gw__pgs_truncate(gw_storage_t *st, const char *table, gw_err_t *err);
int gw__pgs_row_copy(gw_storage_t *st, const gw_row_ref_t *ref, void **out, size_t *len);
int gw__pgs_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err);
void gw__pgs_reader_close(gw_storage_reader_t *rd);
const char *gw__pgs_reader_version(const gw_storage_reader_t *rd);
int gw__pgs_read_checkpoint(gw_storage_reader_t *rd, uint64_t *last_op, uint64_t *lsn,
                            int *consistent);
int gw__pgs_read_state(gw_storage_reader_t *rd, const char *key, char *buf, size_t len);
int gw__pgs_bucket_checksum(gw_storage_reader_t *rd, const char *bucket, uint64_t as_of,
                            uint32_t *checksum, uint64_t *count);
int gw__pgs_read_ops(gw_storage_reader_t *rd, const char *bucket, uint64_t after, uint64_t upto,
                     size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last, int *has_more,
                     size_t *nops);
int gw__pgs_read_hold(gw_storage_reader_t *rd);
void gw__pgs_read_release(gw_storage_reader_t *rd);
int gw__pgs_read_write_checkpoint(gw_storage_reader_t *rd, const char *user_key, uint64_t as_of_lsn,
                                  uint64_t *counter);
int gw__pgs_lookup(gw_storage_reader_t *rd, const char *version, const char *key, uint64_t as_of,
                   int (*fn)(void *ud, const char *params), void *ud);
int gw__pgs_each_bucket(gw_storage_reader_t *rd, uint64_t as_of,
                        int (*fn)(void *ud, const char *bucket, uint32_t checksum, uint64_t count),
                        void *ud);
int gw__pgs_chunk_commits(gw_storage_reader_t *rd, const char *bucket, uint64_t after,
                          uint64_t upto, int (*fn)(void *ud, const gw_storage_chunk_commit_t *c),
                          void *ud);

#endif
