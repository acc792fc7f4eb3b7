/* gw_storage.h -- bucket storage: ops, checksums, row state, lookups, replication state
 *
 * The embedded backend is one SQLite file in WAL mode. There is exactly one writer, the
 * replicator thread, holding a gw_storage_t; every other thread reads through its own
 * gw_storage_reader_t. Writes happen inside gw_storage_begin()/gw_storage_commit(); a commit is
 * one SQLite transaction that holds every op of the replicated transactions it covers and the
 * replication state (LSN), so storage and the acknowledged LSN can never disagree.
 *
 * Checkpoints. After each commit the storage is at checkpoint (last_op, lsn): last_op is the
 * highest op id written so far (one global, strictly increasing sequence, never reused), lsn the
 * source position it reflects. An LSN-only commit advances lsn without new ops. Readers ask
 * questions "as of checkpoint C" (an op id): ops in (after, C], a bucket's checksum and count
 * counting only ops <= C, parameter lookups valid at C. Each read call is its own short read
 * transaction, so no reader pins the WAL while a client is slow.
 *
 * Ops. Per source row the storage keeps its bucket memberships, its parameter-lookup entries and
 * a copy of the row (for unchanged-TOAST merges). gw_storage_put_row() turns the rules' output
 * for the new row into a PUT per bucket and a REMOVE per bucket the row left; delete and truncate
 * REMOVE everything. Each op's wire JSON ({"op_id":…,"op":…,…}) is encoded once, here, and
 * stored ready to send. subkey = "<schema>.<table>/<row key>", identical on every op of a row.
 */
#ifndef GW_STORAGE_H
#define GW_STORAGE_H

#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "rules/rules.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_storage gw_storage_t;
typedef struct gw_storage_reader gw_storage_reader_t;

/** What a commit changed; handed to the notification hook. Owned by the storage. */
typedef struct gw_storage_changes {
    uint64_t last_op;           /* the new checkpoint */
    uint64_t lsn;               /* its source position */
    const char *const *buckets; /* names of buckets that got ops */
    size_t nbuckets;
    const char *const *lookups; /* lookup keys whose entries changed */
    size_t nlookups;
    const char *const *write_checkpoints; /* user keys whose write checkpoint became visible */
    size_t nwrite_checkpoints;
    int consistent; /* storage has a consistent checkpoint */
} gw_storage_changes_t;

/** Called after every commit once it is durable, on the syncer thread (must not block). */
typedef void (*gw_storage_hook_fn)(const gw_storage_changes_t *changes, void *ud);

/* ---- writer ---- */

/**
 * Open (creating if needed) the storage file at path for writing, in the namespace of the rule
 * version the file serves (state "serving"; none for a fresh file). Returns 0 and *out (release
 * with gw_storage_close), or GW_EIO with err naming the file and SQLite's message. A file of
 * layout 3 is migrated in place; older layouts are refused.
 */
int gw_storage_open(const char *path, gw_storage_t **out, gw_err_t *err);

/**
 * Like gw_storage_open, in the namespace of rule version (e.g. "3"): a second writer that builds
 * a new rule version beside the serving one. The two writers share the file and the op-id
 * sequence (each transaction takes SQLite's write lock); rows, lookups, per-version state and
 * buckets ("3#…") are the version's own. Call gw_storage_set_serving(s, 0) before its first
 * commit so that it publishes nothing until it takes over.
 */
int gw_storage_open_version(const char *path, const char *version, gw_storage_t **out,
                            gw_err_t *err);

/**
 * Whether s's durable checkpoints are what this process's readers serve, and whether its hook
 * runs. On: publishes s's current checkpoint and namespace right away (the switch to a new rule
 * version). Writer thread, outside a transaction.
 */
void gw_storage_set_serving(gw_storage_t *s, int on);

/** Close the writer and free everything. NULL is fine. */
void gw_storage_close(gw_storage_t *s);

/** Install the hook called after each commit (one hook; NULL removes it). */
void gw_storage_set_hook(gw_storage_t *s, gw_storage_hook_fn fn, void *ud);

/** The hook installed with gw_storage_set_hook (to move it to another writer). */
void gw_storage_get_hook(const gw_storage_t *s, gw_storage_hook_fn *fn, void **ud);

/** Start a write transaction. 0 or GW_EIO. */
int gw_storage_begin(gw_storage_t *s, gw_err_t *err);

/**
 * Commit with the checkpoint's source position lsn and wait until it is durable (synced); the
 * hook and the durable callback have run for it when this returns. 0 or GW_EIO.
 */
int gw_storage_commit(gw_storage_t *s, uint64_t lsn, gw_err_t *err);

/**
 * Commit without waiting for the disk: the syncer thread syncs it (with any later commits),
 * then runs the hook and the durable callback for it, in commit order, on its own thread.
 * Readers of this process see the checkpoint only then. 0 or GW_EIO.
 */
int gw_storage_commit_async(gw_storage_t *s, uint64_t lsn, gw_err_t *err);

/**
 * Install fn, called on the syncer thread with the LSN of each commit once it is durable (the
 * position that may be acknowledged to Postgres). Must not block. Set or clear it while no
 * commit awaits its sync.
 */
void gw_storage_set_durable_fn(gw_storage_t *s, void (*fn)(uint64_t lsn, void *ud), void *ud);

/** Wait until every commit queued for the syncer is durable and published. Writer thread. */
void gw_storage_settle(gw_storage_t *s);

/**
 * Move the write checkpoints from waiting for a commit at their LSN (not yet visible) to another
 * writer of the same file, which then reports them (a switch of rule versions). Both settled.
 */
void gw_storage_move_pending(gw_storage_t *from, gw_storage_t *to);

/** Abandon the transaction; in-memory caches are reloaded from the file. */
void gw_storage_rollback(gw_storage_t *s);

/** Whether a write transaction is open. */
int gw_storage_in_txn(const gw_storage_t *s);

/** Read a state value (copied into buf); 1 found, 0 absent. Works inside or outside a txn. */
int gw_storage_state_get(gw_storage_t *s, const char *key, char *buf, size_t len);

/** Set a state value inside the current transaction; 0 or GW_EIO. */
int gw_storage_state_set(gw_storage_t *s, const char *key, const char *value, gw_err_t *err);

/** The current checkpoint (highest committed op id and its LSN). */
void gw_storage_checkpoint(const gw_storage_t *s, uint64_t *last_op, uint64_t *lsn);

/** Mark storage consistent (a servable checkpoint exists) or not, inside the current txn. */
int gw_storage_set_consistent(gw_storage_t *s, int consistent, gw_err_t *err);

/** Whether a consistent checkpoint exists. */
int gw_storage_consistent(const gw_storage_t *s);

/** Totals of the storage (writer side). */
typedef struct gw_storage_stats {
    uint64_t buckets; /* buckets with ops */
    uint64_t rows;    /* source rows stored */
    uint64_t ops;     /* ops stored (after compaction) */
} gw_storage_stats_t;

/** Fill *out from the totals the writer keeps (any thread; cheap). Returns 0. */
int gw_storage_stats(gw_storage_t *s, gw_storage_stats_t *out);

/**
 * Switch the writer to rule version's namespace ("2"): its rows, lookups and state keys (all but
 * the shared ones: layout, next_op, serving, building, source_id, version_seq, retired), and
 * REMOVEs only to buckets named "2#…". Reloads the per-version caches. Outside a txn; 0, or
 * GW_EIO / GW_EINVAL.
 */
int gw_storage_set_version(gw_storage_t *s, const char *version, gw_err_t *err);

/** The writer's namespace prefix ("2#"; "" for a file without versions). */
const char *gw_storage_version(const gw_storage_t *s);

/**
 * Inside a txn: make this commit's checkpoint the highest op id handed out by any writer of the
 * file, so a version that takes over serves a checkpoint above every op id clients have seen.
 */
int gw_storage_advance_checkpoint(gw_storage_t *s, gw_err_t *err);

/**
 * Delete everything of another rule version, inside a txn: its buckets and their ops, rows,
 * lookups and state. *dropped is the number of buckets removed. 0, GW_EIO, or GW_EINVAL for the
 * writer's own version.
 */
int gw_storage_drop_version(gw_storage_t *s, const char *version, uint64_t *dropped, gw_err_t *err);

/** What one compaction did. */
typedef struct gw_storage_compact_stats {
    uint64_t buckets;    /* buckets looked at */
    uint64_t moved;      /* PUT/REMOVE ops turned into MOVE */
    uint64_t cleared;    /* ops folded into CLEAR ops */
    uint64_t ops_before; /* ops stored before and after */
    uint64_t ops_after;
    uint64_t target; /* the checkpoint (op id) compacted up to */
} gw_storage_compact_stats_t;

/**
 * Compact every bucket's ops up to the committed checkpoint, inside a txn (powersync-protocol
 * §3.4): a PUT/REMOVE followed later by a PUT/REMOVE of the same (object_type, object_id, subkey)
 * becomes {"op_id":"N","op":"MOVE","checksum":C}; the longest prefix of REMOVE/MOVE/CLEAR ops
 * becomes one {"op_id":"N","op":"CLEAR","checksum":SUM} at the prefix's last op id. Checksums
 * are unchanged, counts shrink. State "compact_target" is set to that checkpoint: a client
 * downloading an older checkpoint may see compacted ops and must be moved to a newer checkpoint
 * before checkpoint_complete (§3.4). *out may be NULL. 0 or GW_EIO.
 */
int gw_storage_compact(gw_storage_t *s, gw_storage_compact_stats_t *out, gw_err_t *err);

/** One source row: its table's qualified name ("public.todos") and its key text. */
typedef struct gw_row_ref {
    const char *table; /* "<schema>.<table>" */
    const char *key;   /* replica-identity values: the text of a single column, else JSON */
} gw_row_ref_t;

/** A PUT op's wire JSON after its op id, encoded ahead of time (gw_storage_encode_put). */
typedef struct gw_op_tail {
    const char *text; /* NULL: storage encodes the op itself */
    size_t len;
    size_t ident_off, ident_len; /* the object_type/object_id/subkey span within text */
} gw_op_tail_t;

/** The subkey of a row's ops, "<table>/<key>", into buf (truncated to len). Any thread. */
void gw_storage_subkey(const char *table, const char *key, char *buf, size_t len);

/**
 * Encode op's line tail for the row with subkey, appended to out (any thread): tail->len and the
 * identity span are set; tail->text is left to the caller (out's bytes move as out grows).
 */
void gw_storage_encode_put(gw_buf_t *out, const rules_op_t *op, const char *subkey,
                           gw_op_tail_t *tail);

/**
 * Store the new state of a row: ops (from rules_eval_row, the row's new bucket memberships),
 * lookups (from rules_eval_lookups) and copy (the encoded row, see gw_storage_row_encode; may be
 * NULL). Writes PUTs for every op and REMOVEs for memberships the row lost. tails (NULL, or one
 * per op) carry the PUT lines' JSON encoded by another thread. Inside a txn.
 */
int gw_storage_put_row(gw_storage_t *s, const gw_row_ref_t *ref, const rules_ops_t *ops,
                       const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                       size_t copy_len, gw_err_t *err);

/**
 * Create the next write checkpoint of user_key ("<sub>/<client_id>") for source position lsn,
 * inside a txn: *counter is the new value (1, 2, …). It becomes visible to readers, and is listed
 * in the hook's changes, with the first commit whose LSN is at least lsn. 0 or GW_EIO.
 */
int gw_storage_write_checkpoint(gw_storage_t *s, const char *user_key, uint64_t lsn,
                                uint64_t *counter, gw_err_t *err);

/** Remove a row: REMOVE ops for all its memberships, drop its lookups and copy. Inside a txn. */
int gw_storage_delete_row(gw_storage_t *s, const gw_row_ref_t *ref, gw_err_t *err);

/** Remove every stored row of table ("public.todos"), as for a TRUNCATE. Inside a txn. */
int gw_storage_truncate(gw_storage_t *s, const char *table, gw_err_t *err);

/**
 * The stored copy of a row (for unchanged-TOAST merges): 1 and a malloc'd copy in *out (caller
 * frees), 0 when there is none.
 */
int gw_storage_row_copy(gw_storage_t *s, const gw_row_ref_t *ref, void **out, size_t *len);

/* Row copies: a compact encoding of (name, kind, value) triples, kind 'n' (NULL) or 't'. */

/**
 * Encode the columns whose value is at least min_len bytes into out (appended); values[i] NULL
 * means SQL NULL (kept only when min_len is 0). Returns the number of columns encoded.
 */
size_t gw_storage_row_encode(gw_buf_t *out, size_t ncols, const char *const *names,
                             const char *const *values, const size_t *lens, size_t min_len);

/**
 * Find column name in an encoded copy: 1 and *value and *len (pointing into copy; *value NULL for
 * SQL NULL), 0 when absent or the copy is malformed.
 */
int gw_storage_row_find(const void *copy, size_t copy_len, const char *name, const char **value,
                        size_t *len);

/* ---- readers (any thread; one reader per thread) ---- */

/** Open a read-only handle on the storage file. 0 or GW_EIO. Release with ..._close. */
int gw_storage_reader_open(const char *path, gw_storage_reader_t **out, gw_err_t *err);

/** The namespace of the version served as of the last checkpoint read ("2#"; "" for none). */
const char *gw_storage_reader_version(const gw_storage_reader_t *r);

/** Close a reader. NULL is fine. */
void gw_storage_reader_close(gw_storage_reader_t *r);

/**
 * The latest committed checkpoint and whether it is consistent; in a process that writes the
 * storage, the latest durable one. 0 or GW_EIO.
 */
int gw_storage_read_checkpoint(gw_storage_reader_t *r, uint64_t *last_op, uint64_t *lsn,
                               int *consistent);

/** Read a replication state value (copied into buf); 1 found, 0 absent. */
int gw_storage_read_state(gw_storage_reader_t *r, const char *key, char *buf, size_t len);

/** Checksum (wrapping u32 sum) and count of bucket's ops with op_id <= as_of. 0 or GW_EIO. */
int gw_storage_bucket_checksum(gw_storage_reader_t *r, const char *bucket, uint64_t as_of,
                               uint32_t *checksum, uint64_t *count);

/**
 * Append the stored JSON of bucket's ops with after < op_id <= upto, in op-id order, comma
 * separated, to out: at most max_ops ops and about max_bytes bytes. *last is the op id of the
 * last op appended (after when none), *has_more whether ops remain up to upto. 0 or GW_EIO.
 */
int gw_storage_read_ops(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                        size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last,
                        int *has_more, size_t *nops);

/** The write checkpoint of user_key visible at source position as_of_lsn: 1 and *counter, or 0. */
int gw_storage_read_write_checkpoint(gw_storage_reader_t *r, const char *user_key,
                                     uint64_t as_of_lsn, uint64_t *counter);

/**
 * Call fn for each params JSON stored under lookup key of rule version ("3"; NULL: the version
 * served as of the last gw_storage_read_checkpoint) and valid at checkpoint as_of.
 */
int gw_storage_lookup(gw_storage_reader_t *r, const char *version, const char *key, uint64_t as_of,
                      int (*fn)(void *ud, const char *params), void *ud);

/** Every bucket name with ops, with its checksum/count as of as_of (for `ferry debug dump`). */
int gw_storage_each_bucket(gw_storage_reader_t *r, uint64_t as_of,
                           int (*fn)(void *ud, const char *bucket, uint32_t checksum,
                                     uint64_t count),
                           void *ud);

#endif
