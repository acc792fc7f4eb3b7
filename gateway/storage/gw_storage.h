/* gw_storage.h -- the bucket storage contract: ops, checksums, row state, lookups, replication
 * state
 *
 * Bucket storage keeps, per rule version, every bucket's ops and running totals, every source
 * row's bucket memberships and lookup entries, parameter lookups, write checkpoints and the
 * replication state (LSN, snapshot progress, op-id sequence). This header is the contract every
 * backend fulfils; callers never learn which backend they hold. A backend fills one static
 * gw_storage_type_t (the shape of Redis's ConnectionType) and embeds gw_storage_t /
 * gw_storage_reader_t as the first member of its own structs; the inline wrappers below call
 * through the table, so call sites read gw_storage_begin(s, err) whatever the backend. Backends:
 * storage/sqlite/ (one SQLite file, the default; kind "sqlite") and storage/postgres/ (a schema
 * of a Postgres database several instances share; kind "postgres"). The registry is
 * gw_storage.c.
 *
 * Shared storage. A storage several instances use (info.shared) has one leader at a time, the
 * writer that gw_storage_lead() answered 1: only it writes replicated data (rows, state,
 * compaction, versions); a commit of a writer that lost the lead fails. Every writer stores
 * write checkpoints, and every serving writer relays the leader's commits to its own process
 * (the hook and the pub), so streams on every instance see each checkpoint.
 *
 * Writers. A writer works in the namespace of one rule version. The replicator thread holds the
 * serving version's writer; while a new version is built, a second writer of the same storage
 * builds it beside the first. Writes happen inside gw_storage_begin()/gw_storage_commit(); a
 * commit is one storage transaction that holds every op of the replicated transactions it covers
 * and the replication state (LSN), so storage and the acknowledged LSN can never disagree.
 *
 * Checkpoints. After each commit the storage is at checkpoint (last_op, lsn): last_op is the
 * highest op id written so far (one global, strictly increasing sequence shared by every rule
 * version, never reused), lsn the source position it reflects. An LSN-only commit advances lsn
 * without new ops. Readers ask questions "as of checkpoint C" (an op id): ops in (after, C], a
 * bucket's checksum and count counting only ops <= C, parameter lookups valid at C. Each read
 * call is its own short read transaction, so no reader pins storage while a client is slow.
 *
 * Publication. The serving writer publishes each commit's checkpoint once it is durable to the
 * gw_storage_pub_t it was opened with; readers opened with the same pub serve that checkpoint
 * (never one that is not on disk yet). Readers without a pub (or before anything was
 * published) read the latest committed checkpoint from storage itself.
 *
 * Ops. Per source row the storage keeps its bucket memberships, its parameter-lookup entries and
 * a copy of the row (for unchanged-TOAST merges). gw_storage_put_row() turns the rules' output
 * for the new row into a PUT per bucket and a REMOVE per bucket the row left; delete and truncate
 * REMOVE everything. Each op's wire JSON is encoded once (gw_oprec.h) and stored ready to send.
 * subkey = "<schema>.<table>/<row key>", identical on every op of a row.
 *
 * Commit times. Every stored chunk of ops (one bucket's run of one commit) carries the commit
 * it came with: a wall-clock time (unix microseconds) and the LSN of that storage commit. The
 * time is the source transaction's commit time when the writer was told it
 * (gw_storage_set_commit_time: the replicator passes the Postgres commit time of the last source
 * transaction the storage commit holds), else the storage's clock when the chunk is written
 * (snapshots; ops of a transaction so large that they are written before its commit). Chunks
 * stored before Ferry kept these read as unknown (0). They are read apart from the ops
 * (gw_storage_chunk_commits), so the streams' reads do no more work for them.
 *
 * Threads: a writer is used by one thread at a time (the replicator, or its apply thread while
 * the pipeline runs); gw_storage_stats() may be called from any thread. A reader belongs to one
 * thread. The hook and the durable callback run on the backend's own thread.
 */
#ifndef GW_STORAGE_H
#define GW_STORAGE_H

#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "rules/rules.h"
#include "storage/gw_oprec.h"

#include <stddef.h>
#include <stdint.h>

typedef struct gw_storage gw_storage_t;
typedef struct gw_storage_reader gw_storage_reader_t;
typedef struct gw_storage_type gw_storage_type_t;
typedef struct gw_storage_pub gw_storage_pub_t;

/* ---- opening ---- */

/**
 * How to reach a storage. Filled by the caller (`ferry serve` from the config's storage section,
 * gw_cli_storage_opts); it must outlive every writer and reader opened with it.
 */
typedef struct gw_storage_opts {
    const char *kind;      /* backend: "sqlite" or "postgres" (NULL or "": sqlite) */
    const char *path;      /* sqlite: the storage file */
    const char *uri;       /* postgres: the storage database */
    const char *schema;    /* postgres: the schema of Ferry's tables (NULL: "ferry") */
    const char *read_uri;  /* postgres: readers' database (a hot standby), NULL: uri */
    int lock_timeout;      /* postgres: seconds until a silent leader's lock is freed (0: 5) */
    gw_storage_pub_t *pub; /* where the serving writer publishes its durable checkpoints and
                              readers of this process read them; NULL: none */
    long wcp_retention;    /* seconds a client's write checkpoint is kept after it was last
                              written (write_back.checkpoint_retention); 0: for ever */
} gw_storage_opts_t;

/**
 * Open (creating if needed) the storage for writing, in the namespace of the rule version it
 * serves (state "serving"; none for a fresh storage). Returns 0 and *out (release with
 * gw_storage_close), or GW_EIO with err naming the storage and the backend's message, or
 * GW_ECONFIG for an unknown kind. A storage of an older layout is migrated when it can be, else
 * refused with what to do.
 */
int gw_storage_open(const gw_storage_opts_t *opts, gw_storage_t **out, gw_err_t *err);

/**
 * Like gw_storage_open, in the namespace of rule version (e.g. "3"): a second writer that builds
 * a new rule version beside the serving one. The two writers share the storage and the op-id
 * sequence (each transaction holds the storage's write lock); rows, lookups, per-version state
 * and buckets ("3#…") are the version's own. Call gw_storage_set_serving(s, 0) before its first
 * commit so that it publishes nothing until it takes over.
 */
int gw_storage_open_version(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                            gw_err_t *err);

/** Open a read-only handle on the storage. 0 or GW_EIO. Release with gw_storage_reader_close. */
int gw_storage_reader_open(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err);

/** Bytes the storage takes on disk (any thread; 0 when it cannot tell). */
uint64_t gw_storage_size(const gw_storage_opts_t *opts);

/** Whether kind names a backend of this build ("sqlite"; NULL or "" is the default). */
int gw_storage_kind_known(const char *kind);

/** The kinds of this build's backends, the default first; NULL-terminated, static. */
const char *const *gw_storage_kinds(void);

/* ---- the published checkpoint ---- */

/** A checkpoint as readers serve it, with the namespace of the rule version it belongs to. */
typedef struct gw_storage_cp {
    uint64_t last_op, lsn;
    int consistent;
    char ns[40]; /* "3#"; "" for a storage without versions */
} gw_storage_cp_t;

/** A place to publish checkpoints (thread-safe). Free with gw_storage_pub_free. */
gw_storage_pub_t *gw_storage_pub_new(void);

/** Free p (after every writer and reader that used it is closed). NULL is fine. */
void gw_storage_pub_free(gw_storage_pub_t *p);

/** Publish cp when *serving is set, atomically with respect to gw_storage_pub_serve (backends). */
void gw_storage_pub_offer(gw_storage_pub_t *p, const _Atomic int *serving,
                          const gw_storage_cp_t *cp);

/** Set *serving to on; when on, publish cp in the same step (backends; p may be NULL). */
void gw_storage_pub_serve(gw_storage_pub_t *p, _Atomic int *serving, int on,
                          const gw_storage_cp_t *cp);

/** The last published checkpoint into *out: 1, or 0 when none was published yet (p may be NULL). */
int gw_storage_pub_get(gw_storage_pub_t *p, gw_storage_cp_t *out);

/* ---- replication state keys ---- */

/*
 * State keys shared by every rule version (gw_storage_state_get/set). Every other key belongs to
 * the writer's rule version and is stored in its namespace; "3#slot" names another version's key
 * itself. The replicator's per-version keys (slot, lsn, rules_hash, snapshot progress, …) and the
 * storage's own (next_op, last_op, lsn, consistent, compact_target) are in gateway/README.md.
 */
#define GW_STATE_LAYOUT      "layout"      /* the storage layout (backend) */
#define GW_STATE_NEXT_OP     "next_op"     /* the op-id sequence, shared by every version */
#define GW_STATE_SERVING     "serving"     /* the rule version readers serve */
#define GW_STATE_BUILDING    "building"    /* a rule version being built beside it ("" none) */
#define GW_STATE_SOURCE_ID   "source_id"   /* the source database the storage was built from */
#define GW_STATE_VERSION_SEQ "version_seq" /* the highest rule version number used */
#define GW_STATE_RETIRED     "retired"     /* "<version>:<slot>,…" to drop */

/** Whether key is one of the shared keys above. */
int gw_storage_key_shared(const char *key);

/* ---- what writers report ---- */

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

/** Called after every commit once it is durable, on the backend's thread (must not block). */
typedef void (*gw_storage_hook_fn)(const gw_storage_changes_t *changes, void *ud);

/** Totals of the storage (writer side). */
typedef struct gw_storage_stats {
    uint64_t buckets; /* buckets with ops */
    uint64_t rows;    /* source rows stored */
    uint64_t ops;     /* ops stored (after compaction) */
} gw_storage_stats_t;

/** One stored chunk's commit (gw_storage_chunk_commits). */
typedef struct gw_storage_chunk_commit {
    uint64_t first_op, last_op; /* the chunk's ops are within [first_op, last_op] */
    int64_t commit_us;          /* unix microseconds of its commit; 0: unknown (older chunk) */
    uint64_t lsn;               /* the LSN of its storage commit; 0: unknown */
} gw_storage_chunk_commit_t;

/** What one compaction did. */
typedef struct gw_storage_compact_stats {
    uint64_t buckets;    /* buckets looked at */
    uint64_t moved;      /* PUT/REMOVE ops turned into MOVE */
    uint64_t cleared;    /* ops folded into CLEAR ops */
    uint64_t ops_before; /* ops stored before and after */
    uint64_t ops_after;
    uint64_t target; /* the checkpoint (op id) compacted up to */
} gw_storage_compact_stats_t;

/** What a writer reports about its storage (gw_storage_info): diagnostics and /metrics. */
typedef struct gw_storage_info {
    const char *kind;         /* "sqlite", "postgres" (static) */
    int shared;               /* several instances may use it: leadership applies */
    int leader;               /* this writer replicates into it (always, unless shared) */
    uint64_t epoch;           /* the leader epoch this instance leads or last saw (shared) */
    char instance[96];        /* this instance ("host:pid:nonce"; "" unless shared) */
    char leader_instance[96]; /* the leader as last heard of ("" unknown) */
    char where[256];          /* the file, or "<schema> in <database>" */
    char location[160];       /* "<schema> <storage id>": lets the replicator find out whether
                                 storage lives in the source database ("" for a file) */
    int64_t notify_lag_us;    /* the last relayed commit: its commit to its relay, -1 none */
    uint64_t relayed;         /* other instances' commits relayed to this process */
    uint64_t catchups;        /* catch-ups from storage (reconnects, missed notifications) */
    uint64_t read_conns;      /* readers' connections open in this process */
    int reachable;            /* the writer's connection works (1 for a file) */
} gw_storage_info_t;

/* ---- the table every backend fills ---- */

/*
 * One backend's operations. Each writer operation receives the gw_storage_t the backend's open
 * returned, each reader operation its gw_storage_reader_t; their meaning is the documentation of
 * the wrapper of the same name below.
 */
struct gw_storage_type {
    const char *kind; /* "sqlite" */
    int (*open)(const gw_storage_opts_t *opts, const char *version, gw_storage_t **out,
                gw_err_t *err);
    uint64_t (*size)(const gw_storage_opts_t *opts);
    /* writer */
    void (*close)(gw_storage_t *s);
    int (*lead)(gw_storage_t *s, gw_err_t *err);
    void (*info)(gw_storage_t *s, gw_storage_info_t *out);
    void (*set_serving)(gw_storage_t *s, int on);
    void (*set_hook)(gw_storage_t *s, gw_storage_hook_fn fn, void *ud);
    void (*get_hook)(const gw_storage_t *s, gw_storage_hook_fn *fn, void **ud);
    void (*set_durable_fn)(gw_storage_t *s, void (*fn)(uint64_t lsn, void *ud), void *ud);
    void (*settle)(gw_storage_t *s);
    void (*move_pending)(gw_storage_t *from, gw_storage_t *to);
    int (*begin)(gw_storage_t *s, gw_err_t *err);
    int (*commit)(gw_storage_t *s, uint64_t lsn, int wait, gw_err_t *err);
    void (*rollback)(gw_storage_t *s);
    int (*in_txn)(const gw_storage_t *s);
    int (*state_get)(gw_storage_t *s, const char *key, char *buf, size_t len);
    int (*state_set)(gw_storage_t *s, const char *key, const char *value, gw_err_t *err);
    void (*checkpoint)(const gw_storage_t *s, uint64_t *last_op, uint64_t *lsn);
    int (*set_consistent)(gw_storage_t *s, int consistent, gw_err_t *err);
    int (*consistent)(const gw_storage_t *s);
    int (*stats)(gw_storage_t *s, gw_storage_stats_t *out);
    int (*set_version)(gw_storage_t *s, const char *version, gw_err_t *err);
    const char *(*version)(const gw_storage_t *s);
    int (*advance_checkpoint)(gw_storage_t *s, gw_err_t *err);
    int (*drop_version)(gw_storage_t *s, const char *version, uint64_t *dropped, gw_err_t *err);
    int (*compact)(gw_storage_t *s, gw_storage_compact_stats_t *out, gw_err_t *err);
    int (*prefetch)(gw_storage_t *s, const gw_row_ref_t *refs, size_t n, gw_err_t *err);
    int (*put_row)(gw_storage_t *s, const gw_row_ref_t *ref, const rules_ops_t *ops,
                   const gw_op_tail_t *tails, const rules_lookups_t *lookups, const void *copy,
                   size_t copy_len, gw_err_t *err);
    int (*write_checkpoint)(gw_storage_t *s, const char *user_key, uint64_t lsn, uint64_t *counter,
                            gw_err_t *err);
    int (*request_checkpoint)(gw_storage_t *s, const char *user_key, uint64_t lsn,
                              uint64_t requested, uint64_t *stored, gw_err_t *err);
    int (*delete_row)(gw_storage_t *s, const gw_row_ref_t *ref, gw_err_t *err);
    int (*truncate)(gw_storage_t *s, const char *table, gw_err_t *err);
    int (*row_copy)(gw_storage_t *s, const gw_row_ref_t *ref, void **out, size_t *len);
    void (*set_commit_time)(gw_storage_t *s, int64_t unix_us);
    /* reader */
    int (*reader_open)(const gw_storage_opts_t *opts, gw_storage_reader_t **out, gw_err_t *err);
    void (*reader_close)(gw_storage_reader_t *r);
    const char *(*reader_version)(const gw_storage_reader_t *r);
    int (*read_checkpoint)(gw_storage_reader_t *r, uint64_t *last_op, uint64_t *lsn,
                           int *consistent);
    int (*read_state)(gw_storage_reader_t *r, const char *key, char *buf, size_t len);
    int (*bucket_checksum)(gw_storage_reader_t *r, const char *bucket, uint64_t as_of,
                           uint32_t *checksum, uint64_t *count);
    int (*read_ops)(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                    size_t max_ops, size_t max_bytes, gw_buf_t *out, uint64_t *last, int *has_more,
                    size_t *nops);
    int (*read_write_checkpoint)(gw_storage_reader_t *r, const char *user_key, uint64_t as_of_lsn,
                                 uint64_t *counter);
    int (*lookup)(gw_storage_reader_t *r, const char *version, const char *key, uint64_t as_of,
                  int (*fn)(void *ud, const char *params), void *ud);
    int (*each_bucket)(gw_storage_reader_t *r, uint64_t as_of,
                       int (*fn)(void *ud, const char *bucket, uint32_t checksum, uint64_t count),
                       void *ud);
    int (*chunk_commits)(gw_storage_reader_t *r, const char *bucket, uint64_t after, uint64_t upto,
                         int (*fn)(void *ud, const gw_storage_chunk_commit_t *c), void *ud);
    /* optional (NULL: every read stays its own transaction) */
    int (*read_hold)(gw_storage_reader_t *r);
    void (*read_release)(gw_storage_reader_t *r);
};

/** The head of every backend's writer: its table and the options it was opened with. */
struct gw_storage {
    const gw_storage_type_t *type;
    const gw_storage_opts_t *opts;
};

/** The head of every backend's reader. */
struct gw_storage_reader {
    const gw_storage_type_t *type;
    const gw_storage_opts_t *opts;
};

/* ---- writer (the replicator thread; the apply thread while the pipeline runs) ---- */

/** The options s was opened with (to open another writer or a reader of the same storage). */
static inline const gw_storage_opts_t *gw_storage_opts(const gw_storage_t *s)
{
    return s->opts;
}

/** Close the writer and free everything; its queued commits are published first. NULL is fine. */
static inline void gw_storage_close(gw_storage_t *s)
{
    if (s != NULL) s->type->close(s);
}

/**
 * Become (or stay) the instance that replicates into this storage. Returns 1 when s may write
 * replicated data now, 0 when another instance leads (try again later; s still serves write
 * checkpoints and relays the leader's checkpoints to this process), or a negative code. A
 * storage one process owns (sqlite) always answers 1. Leadership is lost when s's connection to
 * the storage is; the next transaction then fails and the caller asks again.
 */
static inline int gw_storage_lead(gw_storage_t *s, gw_err_t *err)
{
    return s->type->lead(s, err);
}

/** What s is and its part in a storage several instances share (any thread; cheap). */
static inline void gw_storage_info(gw_storage_t *s, gw_storage_info_t *out)
{
    s->type->info(s, out);
}

/**
 * Whether s's durable checkpoints are what this process's readers serve, and whether its hook
 * runs. On: publishes s's current checkpoint and namespace right away (the switch to a new rule
 * version). Writer thread, outside a transaction.
 */
static inline void gw_storage_set_serving(gw_storage_t *s, int on)
{
    s->type->set_serving(s, on);
}

/** Install the hook called after each commit (one hook; NULL removes it). */
static inline void gw_storage_set_hook(gw_storage_t *s, gw_storage_hook_fn fn, void *ud)
{
    s->type->set_hook(s, fn, ud);
}

/** The hook installed with gw_storage_set_hook (to move it to another writer). */
static inline void gw_storage_get_hook(const gw_storage_t *s, gw_storage_hook_fn *fn, void **ud)
{
    s->type->get_hook(s, fn, ud);
}

/**
 * Install fn, called on the backend's thread with the LSN of each commit once it is durable (the
 * position that may be acknowledged to Postgres). Must not block. Set or clear it while no
 * commit awaits being made durable.
 */
static inline void gw_storage_set_durable_fn(gw_storage_t *s, void (*fn)(uint64_t lsn, void *ud),
                                             void *ud)
{
    s->type->set_durable_fn(s, fn, ud);
}

/** Wait until every commit made so far is durable and published. Writer thread. */
static inline void gw_storage_settle(gw_storage_t *s)
{
    s->type->settle(s);
}

/**
 * Move the write checkpoints waiting for a commit at their LSN (not yet visible) to another
 * writer of the same storage, which then reports them (a switch of rule versions). Both settled.
 */
static inline void gw_storage_move_pending(gw_storage_t *from, gw_storage_t *to)
{
    from->type->move_pending(from, to);
}

/** Start a write transaction (none when one is open already). 0 or GW_EIO. */
static inline int gw_storage_begin(gw_storage_t *s, gw_err_t *err)
{
    return s->type->begin(s, err);
}

/**
 * Commit with the checkpoint's source position lsn and wait until it is durable; the hook and
 * the durable callback have run for it when this returns. 0 or GW_EIO.
 */
static inline int gw_storage_commit(gw_storage_t *s, uint64_t lsn, gw_err_t *err)
{
    return s->type->commit(s, lsn, 1, err);
}

/**
 * Commit without waiting for the disk: the backend makes it durable (with any later commits),
 * then runs the hook and the durable callback for it, in commit order, on its own thread.
 * Readers of this process see the checkpoint only then. 0 or GW_EIO.
 */
static inline int gw_storage_commit_async(gw_storage_t *s, uint64_t lsn, gw_err_t *err)
{
    return s->type->commit(s, lsn, 0, err);
}

/** Abandon the transaction; in-memory caches are reloaded from storage. */
static inline void gw_storage_rollback(gw_storage_t *s)
{
    s->type->rollback(s);
}

/** Whether a write transaction is open. */
static inline int gw_storage_in_txn(const gw_storage_t *s)
{
    return s->type->in_txn(s);
}

/** Read a state value (copied into buf); 1 found, 0 absent, -1 when storage could not be read
 * (buf then ""). Works inside or outside a txn. A caller that would act on "absent" (create,
 * drop, start over) must tell -1 from 0: taking an unreadable value for a missing one once made
 * ferry drop its own replication slot during a storage outage, and lose the changes between. */
static inline int gw_storage_state_get(gw_storage_t *s, const char *key, char *buf, size_t len)
{
    return s->type->state_get(s, key, buf, len);
}

/** Set a state value inside the current transaction; 0 or GW_EIO. */
static inline int gw_storage_state_set(gw_storage_t *s, const char *key, const char *value,
                                       gw_err_t *err)
{
    return s->type->state_set(s, key, value, err);
}

/** The current checkpoint (highest committed op id and its LSN). */
static inline void gw_storage_checkpoint(const gw_storage_t *s, uint64_t *last_op, uint64_t *lsn)
{
    s->type->checkpoint(s, last_op, lsn);
}

/** Mark storage consistent (a servable checkpoint exists) or not, inside the current txn. */
static inline int gw_storage_set_consistent(gw_storage_t *s, int consistent, gw_err_t *err)
{
    return s->type->set_consistent(s, consistent, err);
}

/** Whether a consistent checkpoint exists. */
static inline int gw_storage_consistent(const gw_storage_t *s)
{
    return s->type->consistent(s);
}

/** Fill *out from the totals the writer keeps (any thread; cheap). Returns 0. */
static inline int gw_storage_stats(gw_storage_t *s, gw_storage_stats_t *out)
{
    return s->type->stats(s, out);
}

/**
 * Switch the writer to rule version's namespace ("2"): its rows, lookups and state keys (all but
 * the shared ones), and REMOVEs only to buckets named "2#…". Reloads the per-version caches.
 * Outside a txn; 0, or GW_EIO / GW_EINVAL.
 */
static inline int gw_storage_set_version(gw_storage_t *s, const char *version, gw_err_t *err)
{
    return s->type->set_version(s, version, err);
}

/** The writer's namespace prefix ("2#"; "" for a storage without versions). */
static inline const char *gw_storage_version(const gw_storage_t *s)
{
    return s->type->version(s);
}

/**
 * Inside a txn: make this commit's checkpoint the highest op id handed out by any writer of the
 * storage, so a version that takes over serves a checkpoint above every op id clients have seen.
 */
static inline int gw_storage_advance_checkpoint(gw_storage_t *s, gw_err_t *err)
{
    return s->type->advance_checkpoint(s, err);
}

/**
 * Delete everything of another rule version, inside a txn: its buckets and their ops, rows,
 * lookups and state. *dropped is the number of buckets removed. 0, GW_EIO, or GW_EINVAL for the
 * writer's own version.
 */
static inline int gw_storage_drop_version(gw_storage_t *s, const char *version, uint64_t *dropped,
                                          gw_err_t *err)
{
    return s->type->drop_version(s, version, dropped, err);
}

/**
 * Compact the writer's version's buckets up to the committed checkpoint, inside a txn
 * (powersync-protocol §3.4): a PUT/REMOVE followed later by a PUT/REMOVE of the same
 * (object_type, object_id, subkey) becomes {"op_id":"N","op":"MOVE","checksum":C}; the longest
 * prefix of REMOVE/MOVE/CLEAR ops becomes one {"op_id":"N","op":"CLEAR","checksum":SUM} at the
 * prefix's last op id. Checksums are unchanged, counts shrink. State "compact_target" is set to
 * that checkpoint: a client downloading an older checkpoint may see compacted ops and must be
 * moved to a newer checkpoint before checkpoint_complete (§3.4). *out may be NULL. 0 or GW_EIO.
 */
static inline int gw_storage_compact(gw_storage_t *s, gw_storage_compact_stats_t *out,
                                     gw_err_t *err)
{
    return s->type->compact(s, out, err);
}

/**
 * Inside a txn: the rows refs are about to be stored or deleted (one batch of the apply
 * pipeline). A backend whose storage is a round trip away loads their states at once; for the
 * others (no prefetch operation) this does nothing. 0 or an error.
 */
static inline int gw_storage_prefetch(gw_storage_t *s, const gw_row_ref_t *refs, size_t n,
                                      gw_err_t *err)
{
    return s->type->prefetch != NULL ? s->type->prefetch(s, refs, n, err) : 0;
}

/** Whether gw_storage_prefetch does anything for s (so a caller may skip gathering the refs). */
static inline int gw_storage_has_prefetch(const gw_storage_t *s)
{
    return s->type->prefetch != NULL;
}

/**
 * Store the new state of a row: ops (from rules_eval_row, the row's new bucket memberships),
 * lookups (from rules_eval_lookups) and copy (the encoded row, see gw_storage_row_encode; may be
 * NULL). Writes PUTs for every op and REMOVEs for memberships the row lost. tails (NULL, or one
 * per op) carry the PUT lines' JSON encoded by another thread. Inside a txn.
 */
static inline int gw_storage_put_row(gw_storage_t *s, const gw_row_ref_t *ref,
                                     const rules_ops_t *ops, const gw_op_tail_t *tails,
                                     const rules_lookups_t *lookups, const void *copy,
                                     size_t copy_len, gw_err_t *err)
{
    return s->type->put_row(s, ref, ops, tails, lookups, copy, copy_len, err);
}

/**
 * Create the next write checkpoint of user_key ("<sub>/<client_id>") for source position lsn,
 * inside a txn: *counter is the new value (1, 2, …). It becomes visible to readers, and is listed
 * in the hook's changes, with the first commit whose LSN is at least lsn. 0 or GW_EIO.
 */
static inline int gw_storage_write_checkpoint(gw_storage_t *s, const char *user_key, uint64_t lsn,
                                              uint64_t *counter, gw_err_t *err)
{
    return s->type->write_checkpoint(s, user_key, lsn, counter, err);
}

/**
 * A client-generated checkpoint request (POST /sync/checkpoint-request) for user_key at source
 * position lsn, inside a txn: the stored value becomes requested if that is larger (then it is
 * visible like a write checkpoint, with the first commit at or past lsn); a stale or repeated
 * request changes nothing. *stored is the value stored afterwards. 0 or GW_EIO.
 */
static inline int gw_storage_request_checkpoint(gw_storage_t *s, const char *user_key, uint64_t lsn,
                                                uint64_t requested, uint64_t *stored, gw_err_t *err)
{
    return s->type->request_checkpoint(s, user_key, lsn, requested, stored, err);
}

/** Remove a row: REMOVE ops for all its memberships, drop its lookups and copy. Inside a txn. */
static inline int gw_storage_delete_row(gw_storage_t *s, const gw_row_ref_t *ref, gw_err_t *err)
{
    return s->type->delete_row(s, ref, err);
}

/** Remove every stored row of table ("public.todos"), as for a TRUNCATE. Inside a txn. */
static inline int gw_storage_truncate(gw_storage_t *s, const char *table, gw_err_t *err)
{
    return s->type->truncate(s, table, err);
}

/**
 * The stored copy of a row (for unchanged-TOAST merges): 1 and a malloc'd copy in *out (caller
 * frees), 0 when there is none.
 */
static inline int gw_storage_row_copy(gw_storage_t *s, const gw_row_ref_t *ref, void **out,
                                      size_t *len)
{
    return s->type->row_copy(s, ref, out, len);
}

/**
 * The wall-clock commit time (unix microseconds) to stamp on the chunks this transaction's
 * commit writes: the source transaction's commit time. Inside a txn, before gw_storage_commit;
 * the transaction's commit forgets it. Without it chunks get the storage's clock at commit.
 */
static inline void gw_storage_set_commit_time(gw_storage_t *s, int64_t unix_us)
{
    s->type->set_commit_time(s, unix_us);
}

/* ---- readers (any thread; one reader per thread) ---- */

/** The namespace of the version served as of the last checkpoint read ("2#"; "" for none). */
static inline const char *gw_storage_reader_version(const gw_storage_reader_t *r)
{
    return r->type->reader_version(r);
}

/** Close a reader. NULL is fine. */
static inline void gw_storage_reader_close(gw_storage_reader_t *r)
{
    if (r != NULL) r->type->reader_close(r);
}

/**
 * The checkpoint to serve and whether it is consistent: the published one when the reader has a
 * pub that holds one (in a process that writes the storage, the latest durable one), else the
 * latest committed one. 0 or GW_EIO.
 */
static inline int gw_storage_read_checkpoint(gw_storage_reader_t *r, uint64_t *last_op,
                                             uint64_t *lsn, int *consistent)
{
    return r->type->read_checkpoint(r, last_op, lsn, consistent);
}

/** Read a replication state value (copied into buf); 1 found, 0 absent. */
static inline int gw_storage_read_state(gw_storage_reader_t *r, const char *key, char *buf,
                                        size_t len)
{
    return r->type->read_state(r, key, buf, len);
}

/**
 * Let the reads of r until gw_storage_read_release share one read transaction (nests; one
 * snapshot for all of them): for a loop of many short reads that runs to its end without waiting
 * (a stream's checksums of every bucket), never across waiting for a client. 0 or GW_EIO (then
 * do not release). A backend without it reads as before.
 */
static inline int gw_storage_read_hold(gw_storage_reader_t *r)
{
    return r->type->read_hold != NULL ? r->type->read_hold(r) : 0;
}

/** End what gw_storage_read_hold began (the outermost release ends the transaction). */
static inline void gw_storage_read_release(gw_storage_reader_t *r)
{
    if (r->type->read_release != NULL) r->type->read_release(r);
}

/** Checksum (wrapping u32 sum) and count of bucket's ops with op_id <= as_of. 0 or GW_EIO. */
static inline int gw_storage_bucket_checksum(gw_storage_reader_t *r, const char *bucket,
                                             uint64_t as_of, uint32_t *checksum, uint64_t *count)
{
    return r->type->bucket_checksum(r, bucket, as_of, checksum, count);
}

/**
 * Append the wire JSON of bucket's ops with after < op_id <= upto, in op-id order, comma
 * separated, to out: at most max_ops ops and about max_bytes bytes. *last is the op id of the
 * last op appended (after when none), *has_more whether ops remain up to upto. 0 or GW_EIO.
 */
static inline int gw_storage_read_ops(gw_storage_reader_t *r, const char *bucket, uint64_t after,
                                      uint64_t upto, size_t max_ops, size_t max_bytes,
                                      gw_buf_t *out, uint64_t *last, int *has_more, size_t *nops)
{
    return r->type->read_ops(r, bucket, after, upto, max_ops, max_bytes, out, last, has_more, nops);
}

/** The write checkpoint of user_key visible at source position as_of_lsn: 1 and *counter, or 0. */
static inline int gw_storage_read_write_checkpoint(gw_storage_reader_t *r, const char *user_key,
                                                   uint64_t as_of_lsn, uint64_t *counter)
{
    return r->type->read_write_checkpoint(r, user_key, as_of_lsn, counter);
}

/**
 * Call fn for each params JSON stored under lookup key of rule version ("3"; NULL: the version
 * served as of the last gw_storage_read_checkpoint) and valid at checkpoint as_of. fn returning
 * non-zero stops the walk with that value.
 */
static inline int gw_storage_lookup(gw_storage_reader_t *r, const char *version, const char *key,
                                    uint64_t as_of, int (*fn)(void *ud, const char *params),
                                    void *ud)
{
    return r->type->lookup(r, version, key, as_of, fn, ud);
}

/**
 * Call fn for each stored chunk of bucket holding ops in (after, upto], in op order, with the
 * commit it was stored with (see "Commit times" above; for `ferry debug history`). A read of
 * its own, apart from gw_storage_read_ops. fn returning non-zero stops the walk with that value.
 * 0 (also for an unknown bucket) or GW_EIO / GW_EUNAVAIL.
 */
static inline int gw_storage_chunk_commits(gw_storage_reader_t *r, const char *bucket,
                                           uint64_t after, uint64_t upto,
                                           int (*fn)(void *ud, const gw_storage_chunk_commit_t *c),
                                           void *ud)
{
    return r->type->chunk_commits(r, bucket, after, upto, fn, ud);
}

/** Every bucket name with ops, with its checksum/count as of as_of (for `ferry debug dump`). */
static inline int gw_storage_each_bucket(gw_storage_reader_t *r, uint64_t as_of,
                                         int (*fn)(void *ud, const char *bucket, uint32_t checksum,
                                                   uint64_t count),
                                         void *ud)
{
    return r->type->each_bucket(r, as_of, fn, ud);
}

#endif
