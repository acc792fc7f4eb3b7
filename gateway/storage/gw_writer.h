/* gw_writer.h -- what every backend's storage writer does in memory (storage/ and backends only)
 *
 * A storage writer is two halves. This one is the same for every backend: the bucket cache (each
 * bucket's running checksum, count and last op, by name and by id), the rule version's namespace
 * ("2#"), the op-id sequence of the open transaction, the queue of its ops (records linked per
 * bucket, written as one chunk per bucket at commit or when the queue grows large), what the
 * transaction touched (for the hook), the row filter, and the meaning of storing a row: a PUT per
 * current bucket membership, a REMOVE per lost one, its lookup entries closed and opened, its
 * state rewritten only when it changed. The other half, the backend's, does the I/O through a
 * gw_writer_io_t: load and store a row's state, close and insert lookup entries, create a bucket,
 * insert a chunk. A backend may batch that I/O as it likes, as long as a load sees every store
 * made before it.
 *
 * Invariants (every backend):
 *   1. op ids come from next_op, strictly increasing; the backend persists next_op with the ops,
 *      so a crash never reuses an id (gw_writer_begin takes up a larger stored value).
 *   2. a version's last_op is the highest op id of its committed ops; it changes only at commit.
 *   3. a row's stored members list exactly the (bucket, object_type, object_id) with a live PUT.
 *   4. a chunk's first/last op, count and checksum describe exactly its records, in op-id order;
 *      ops queued but not yet written are above every written op of their bucket.
 * One thread uses a writer at a time (the replicator, or its apply thread); the totals are read
 * by any thread (atomics).
 */
#ifndef GW_WRITER_H
#define GW_WRITER_H

#include "base/gw_buf.h"
#include "base/gw_map.h"
#include "storage/gw_storage.h"

#include <stdatomic.h>
#include <stdint.h>

/** A bucket's running totals at the latest checkpoint, and its queued ops. */
typedef struct gw_wbucket {
    int64_t id;
    char *name;
    uint32_t checksum;
    uint64_t count;
    uint64_t last_op;
    int dirty;            /* totals changed in the open transaction */
    int is_new;           /* created in the open transaction (backends that create lazily) */
    uint64_t compacted;   /* ops up to here were compacted (this process; 0 after a start) */
    uint64_t touched_gen; /* == the writer's gen when it got ops in the open transaction */
    uint32_t pend_head;   /* offset + 1 of its first/last queued op in the queue; 0: none */
    uint32_t pend_tail;
} gw_wbucket_t;

/* A chunk holds at most this many ops / about this many bytes; queued ops are written out as
 * chunks at commit, or earlier when the queue holds GW_WRITER_PEND_MAX bytes. */
enum {
    GW_CHUNK_MAX_OPS = 1000,
    GW_CHUNK_MAX_BYTES = 128 * 1024,
    GW_WRITER_PEND_MAX = 16 << 20,
};

/** The backend's half: I/O of one writer. Every call is inside the open transaction. */
typedef struct gw_writer_io {
    /* The stored state of row (tbl in the writer's namespace): 1 (members and lookups appended,
     * *copy_same whether its copy equals copy/copy_len, NULL meaning none), 0 not stored, or a
     * negative code with err. */
    int (*row_load)(void *ud, const char *tbl, const char *key, gw_buf_t *members,
                    gw_buf_t *lookups, const void *copy, size_t copy_len, int *copy_same,
                    gw_err_t *err);
    /* Store a row's new state (found: it was stored before). */
    int (*row_store)(void *ud, const char *tbl, const char *key, int found, const void *members,
                     size_t members_len, const char *lookups, const void *copy, size_t copy_len,
                     gw_err_t *err);
    /* Delete a stored row. */
    int (*row_delete)(void *ud, const char *tbl, const char *key, gw_err_t *err);
    /* Close the row's open lookup entries at op_id (to_op = op_id). */
    int (*lookups_close)(void *ud, const char *tbl, const char *key, uint64_t op_id, gw_err_t *err);
    /* Open a lookup entry (key and tbl in the writer's namespace) valid from op_id. */
    int (*lookup_insert)(void *ud, const char *key, const char *tbl, const char *rkey,
                         const char *params, uint64_t op_id, gw_err_t *err);
    /* Create bucket name (no ops yet): 0 and *id, or a negative code. */
    int (*bucket_create)(void *ud, const char *name, int64_t *id, gw_err_t *err);
    /* Insert one chunk of bucket_id holding the records in ops, committed at commit_us (unix
     * microseconds) with lsn (either 0: unknown, stored as such). */
    int (*chunk_insert)(void *ud, int64_t bucket_id, uint64_t first, uint64_t last, uint64_t n,
                        uint32_t checksum, const gw_buf_t *ops, int64_t commit_us, uint64_t lsn,
                        gw_err_t *err);
    /* Rebuild the row filter for about rows rows (gw_writer_filter_reset, then add each stored
     * row); NULL: a full filter is turned off instead. */
    void (*filter_rebuild)(void *ud, uint64_t rows);
} gw_writer_io_t;

typedef struct gw_writer {
    const gw_writer_io_t *io;
    void *ud;
    char version[40]; /* "<rule version>#": the namespace of rows, lookups, state, buckets; "" */
    gw_buf_t ns_tbl, ns_lkey; /* scratch: names in the namespace */
    gw_map_t by_name;         /* name -> gw_wbucket_t* */
    gw_wbucket_t **by_id;     /* index = id */
    size_t by_id_cap;
    uint64_t next_op;     /* next op id to hand out */
    uint64_t last_op;     /* committed checkpoint */
    uint64_t lsn;         /* its source position */
    uint64_t txn_last_op; /* highest op written in the open transaction */
    /* the commit the open transaction's chunks are stamped with (gw_storage.h, "Commit times"):
     * commit_us from gw_writer_set_commit_time (0: the clock when a chunk is written),
     * commit_lsn from gw_writer_stamp at commit (0 before: unknown) */
    int64_t commit_us;
    uint64_t commit_lsn;
    _Atomic int consistent;
    _Atomic uint64_t n_rows, n_ops, n_buckets; /* totals of the writer's version, any thread */
    uint64_t gen;
    /* per transaction: touched buckets and lookup keys, for the hook */
    const char **touched;
    size_t ntouched, cap_touched;
    char **lookup_keys;
    size_t nlookup_keys, cap_lookup_keys;
    /* Row filter: a Bloom filter over the (tbl, key) of every row ever stored by this writer or
     * present when it was built. A miss proves the row is not stored, so storing it skips the
     * load (false positives only cost that load). Deleted or rolled-back rows stay set. NULL
     * when disabled (then every row is loaded). */
    uint64_t *filter;
    size_t filter_bits, filter_keys;
    /* ops of the open transaction not yet in chunks: records, each behind a 4-byte link to the
     * next record of the same bucket; pend_buckets lists the buckets with queued ops */
    gw_buf_t pend;
    gw_wbucket_t **pend_buckets;
    size_t npend_buckets, cap_pend_buckets;
    gw_buf_t chunk;   /* scratch for a chunk's records */
    gw_buf_t members; /* scratch for a row's memberships */
} gw_writer_t;

/** Set up w with the backend's io (w zeroed by the caller). */
void gw_writer_init(gw_writer_t *w, const gw_writer_io_t *io, void *ud);

/** Free everything w holds. */
void gw_writer_free(gw_writer_t *w);

/* ---- namespace ---- */

/** Make version ("2") the namespace ("2#"; "" for none). The caches must be reloaded after. */
void gw_writer_set_version(gw_writer_t *w, const char *version);

/** Whether a bucket, row table or lookup key name belongs to w's version. */
int gw_writer_own_name(const gw_writer_t *w, const char *name);

/** The text range [lo, hi) of names in namespace ns ("2#" -> ["2#", "2$")); all names for "". */
void gw_writer_ns_range(const char *ns, char *lo, char *hi, size_t len);

/** A table name in w's namespace ("2#public.todos"); valid until the next call. */
const char *gw_writer_ns_table(gw_writer_t *w, const char *table);

/** A lookup key in w's namespace; valid until the next call. */
const char *gw_writer_ns_key(gw_writer_t *w, const char *key);

/* ---- the bucket cache ---- */

/** Empty the bucket cache (before a reload, and at free). */
void gw_writer_drop_buckets(gw_writer_t *w);

/** Add a stored bucket to the cache (loading); totals count w's own version's only. */
void gw_writer_load_bucket(gw_writer_t *w, int64_t id, const char *name, uint32_t checksum,
                           uint64_t count, uint64_t last_op);

/** The cached bucket name, or NULL. */
gw_wbucket_t *gw_writer_bucket(gw_writer_t *w, const char *name);

/** Forget the cached buckets of namespace ns (a dropped version). */
void gw_writer_forget_version(gw_writer_t *w, const char *ns);

/* ---- transactions ---- */

/** A transaction begins; stored_next_op: the op-id sequence as stored (another writer of the
 *  same storage may have moved it), 0 when unknown. */
void gw_writer_begin(gw_writer_t *w, uint64_t stored_next_op);

/** Load w's op ids, LSN and consistency from st's state (through st's state_get, so a backend
 * may call it while loading its cache): 0, or -1 when a value could not be read (never a default
 * then: op ids from 1 and LSN 0 would reuse ids and replay the source). */
int gw_writer_load_state(gw_writer_t *w, gw_storage_t *st);

/** The source commit time of the open transaction (gw_storage_set_commit_time). */
void gw_writer_set_commit_time(gw_writer_t *w, int64_t unix_us);

/** At commit, before the last gw_writer_flush_pending: the chunks it writes carry lsn, and the
 *  clock now unless a commit time was set. */
void gw_writer_stamp(gw_writer_t *w, uint64_t lsn);

/** The wall clock in unix microseconds. */
int64_t gw_writer_now_us(void);

/** Write every queued op as chunks (io->chunk_insert) and empty the queue. 0 or an error. */
int gw_writer_flush_pending(gw_writer_t *w, gw_err_t *err);

/** Forget the queue (a rollback; the caches are reloaded by the backend). */
void gw_writer_discard_pending(gw_writer_t *w);

/* ---- rows ---- */

/** Store a row's new state (gw_storage_put_row). */
int gw_writer_put_row(gw_writer_t *w, const gw_row_ref_t *ref, const rules_ops_t *ops,
                      const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                      size_t copy_len, gw_err_t *err);

/** Remove a row (gw_storage_delete_row). */
int gw_writer_delete_row(gw_writer_t *w, const gw_row_ref_t *ref, gw_err_t *err);

/* ---- the row filter ---- */

/** Size the filter for about rows stored rows: 1 when the backend should now add every stored
 *  row of w's version with gw_writer_filter_add, 0 when filtering is off (too many rows). */
int gw_writer_filter_reset(gw_writer_t *w, uint64_t rows);

/** Add a stored row (tbl without the namespace) while building the filter. */
void gw_writer_filter_add(gw_writer_t *w, const char *tbl, const char *key);

/** Turn the filter off (a failed build: always safe). */
void gw_writer_filter_off(gw_writer_t *w);

/** Whether ref may be stored (0: certainly not, so loading its state can be skipped). */
int gw_writer_maybe_stored(const gw_writer_t *w, const gw_row_ref_t *ref);

#endif
