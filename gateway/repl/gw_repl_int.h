/* gw_repl_int.h -- what the replicator's files share (not for use outside repl/)
 *
 * The replicator is one module in several files, one job each (see gw_repl.c for the whole
 * state machine):
 *   gw_repl.c           lifecycle, the thread and its pass CHECK -> SLOT -> SNAPSHOT -> STREAM,
 *                       tasks from other threads
 *   gw_repl_source.c    source checks (wal_level, role, publication, tables) and the slot
 *   gw_repl_snapshot.c  the initial snapshot, per table, chunked and resumable
 *   gw_repl_apply.c     a row through the rules, the apply pipeline, batches and commits
 *   gw_repl_stream.c    the pgoutput stream loop: decoding, TOAST merges, acknowledgements
 *   gw_repl_versions.c  rule versions: build beside, switch, retire (the machine drawn there)
 *   gw_repl_lead.c      several instances on one storage: standby, following, taking over
 *   gw_repl_diag.c      slot health, diagnostics and metrics
 * One gw_repl_t is a replicator: the serving one, or a builder of a new rule version.
 */
#ifndef GW_REPL_INT_H
#define GW_REPL_INT_H

#include "base/gw_arena.h"
#include "base/gw_buf.h"
#include "base/gw_map.h"
#include "base/gw_metrics.h"
#include "pg/gw_lsn.h"
#include "pg/gw_pg.h"
#include "pg/gw_pgoutput.h"
#include "repl/gw_repl.h"
#include "storage/gw_storage.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define BATCH_MAX_CHANGES 100000

/* Row copies keep values of at least this many bytes (invariant 4) */
#define COPY_MIN_BYTES 256

/* A batch closes when no more data waits, so the time bound only applies while catching up
 * (a backlog): 500 ms rather than 100 ms halves the index and WAL pages written per change there
 * without delaying changes that arrive at a pace ferry keeps up with. */
#define BATCH_MAX_MS 500

/* The same bound with a storage several instances share (a round trip away): each storage
 * commit costs a row per touched bucket and per chunk, so while catching up fewer, larger commits
 * (about four times the changes each) write a fraction of those rows. */
#define BATCH_MAX_MS_SHARED 2000

#define STATUS_INTERVAL_MS 10000

typedef struct rel {
    uint32_t relid;
    char *schema, *name, *qname; /* qname: "schema.name" */
    int tracked;
    char replident;
    size_t ncols;
    char **names;
    uint32_t *types;
    int *is_key;
} rel_t;

typedef struct snap_table {
    char *schema, *name, *qname;
    char *sql_ident; /* "schema"."name", quoted */
} snap_table_t;

struct gw_repl {
    char *uri, *publication, *slot_prefix;
    long chunk_rows;
    const gw_config_t *cfg; /* outlives the replicator */
    rules_set_t *rules;
    char rules_hash[32];
    char version[32];
    char slot[160];

    /* rule versions (see "rule versions"). A builder is a second replicator, with its own
     * thread, slot and storage writer (the same file, its own namespace), that builds a new
     * version while this one serves; it has no readiness, tasks or compaction. */
    int builder;
    struct gw_repl *next;      /* serving: the builder, while one runs */
    pthread_mutex_t next_lock; /* guards next against other threads' reads (diagnostics) */
    int switch_wanted;         /* serving: leave the stream loop and take the builder's version */
    int slot_lost;             /* builder: its slot vanished (the serving one starts it again) */
    int rebuilding;            /* serving: its slot is gone; the builder builds the same rules */
    uint64_t switched_ms;      /* when this process last switched (the old version's data is
                                  dropped a little later: streams move over first) */
    uint64_t rules_poll_ms;    /* serving: when the rules file was last looked at */
    struct gw__file_id {
        struct timespec mtime;
        off_t size;
        ino_t ino;
    } rules_file, rules_seen; /* the file acted on; a change seen at the last look */
    int rules_seen_set;
    char rules_bad_hash[32];       /* a changed file that did not compile (logged once) */
    _Atomic(gw_active_t *) active; /* what request handlers use now */
    /* several instances on one storage (gw_repl_lead.c): only the leader replicates; the
     * others are standbys that serve, run write checkpoints and follow its rule versions */
    int shared;              /* the storage is shared (storage info) */
    _Atomic int standby;     /* this instance does not lead (serving replicator only; read by
                                the live check on HTTP threads) */
    char file_hash[32];      /* the hash of this instance's own rules file, at start */
    char warned_version[32]; /* the version whose rules differ from the file, warned about */
    uint64_t lead_ms;        /* when the stream loop last checked the lead */
    gw_active_t **actives;   /* every rules/version pair handed out; freed at destroy */
    size_t nactives;
    void (*on_switch)(const gw_active_t *now, void *ud);
    void *switch_ud;
    gw_storage_t *st;
    pthread_t tid;
    int running;
    _Atomic int stop;
    int ready_id;
    int storage_ready_id;    /* readiness check "storage" (serving only; else -1) */
    _Atomic int storage_bad; /* the last storage write failed; cleared by a durable commit */

    /* the source's health (see "source health" in gw_repl_diag.c) */
    long timeout_s;          /* replication.timeout */
    char appname[64];        /* application_name of our connections: unique to this process */
    _Atomic int src_state;   /* GW__SRC_* */
    _Atomic uint64_t msg_ms; /* monotonic ms the source last sent data (or this run started),
                                moved forward past the replicator's own work */
    char src_reason[512];    /* why the source is not healthy (diag_lock) */
    _Atomic int busy; /* depth of the replicator's own work (storage waits, tasks, compaction):
                         not reading the source, so not its silence (gw__repl_busy_begin) */

    PGconn *q;     /* queries (source check, snapshot, TOAST re-reads) */
    PGconn *rc;    /* replication */
    gw_map_t rels; /* "relid" -> rel_t* */
    snap_table_t *tables;
    size_t ntables;
    uint64_t nocp_lsn; /* highest "no checkpoint before" mark */

    gw_arena_t arena;
    rules_ops_t ops;
    rules_lookups_t lookups;
    gw_buf_t copy, key;

    /* streaming batch */
    int in_pg_txn, skip_txn;
    int batch_open;
    uint64_t batch_lsn;
    size_t batch_changes;
    struct timespec batch_started;
    int64_t batch_source_us; /* Postgres commit time of the batch's first transaction (0: none) */
    int64_t batch_source_last_us; /* … and of its last: the chunks' commit time (0: none) */
    uint64_t acked_lsn;
    _Atomic uint64_t durable_lsn; /* highest LSN whose storage commit is on disk */
    int test_replay; /* FERRY_TEST_REPLAY=1: start from the slot, ack nothing new (tests only) */
    uint64_t test_snapshot_hold; /* FERRY_TEST_SNAPSHOT_HOLD=N: stop after N rows (tests only) */
    struct timespec last_status;

    /* the apply pipeline while streaming (see "apply pipeline") */
    int pipe_on;
    pthread_t apply_tid;
    pthread_mutex_t plock;
    pthread_cond_t pwork, pidle;
    struct seg *phead, *ptail, *pcur;
    size_t pqueued;
    int pbusy, pstop, pfailed;
    gw_err_t perr;
    gw_map_t qnames;  /* interned table names the queued items point to */
    uint64_t pos_lsn; /* LSN of everything handed to storage (committed or queued) */
    int old_pending;  /* a previous rule version may still have a slot and data to drop */

    /* tasks from other threads (gw_repl_submit) */
    pthread_mutex_t task_lock;
    gw_repl_task_t *task_head, *task_tail;
    int task_fd; /* eventfd that wakes the stream loop */
    _Atomic int ready;

    /* observability (read from other threads) */
    _Atomic uint64_t m_snapshot_rows, m_snapshot_estimate, m_changes, m_txns, m_commits;
    _Atomic uint64_t m_commit_us; /* wall time spent in storage commits */
    gw_hist_t h_commit;           /* each storage commit's duration */
    gw_hist_t h_source;           /* source commit to durable storage commit */
    _Atomic uint64_t m_lsn, m_server_wal_end;
    _Atomic int m_phase; /* 0 check, 1 slot, 2 snapshot, 3 streaming, 4 backoff, 5 standby,
                            6 rebuilding */
    _Atomic int64_t m_recv_commit_us; /* commit time of the last transaction received */
    _Atomic int64_t m_caught_up_us;   /* when storage last held all the server had sent (same
                                         clock): other databases' WAL (storage in the source
                                         cluster) is not lag */
    _Atomic uint64_t m_last_op;

    /* slot health, polled by the replicator (gw__repl_poll_slot), read by the admin API and
     * /metrics */
    long lag_warn_seconds, wal_warn_bytes, compact_interval;
    const gw_storage_opts_t *sopts; /* how the storage was opened (outlives the replicator) */
    pthread_mutex_t diag_lock;
    struct {
        int known;             /* the slot was found at the last poll */
        char wal_status[16];   /* reserved, extended, unreserved, lost */
        int64_t safe_wal_size; /* -1: unlimited (max_slot_wal_keep_size = -1) */
        uint64_t retained;     /* bytes of WAL the slot keeps (current LSN - restart_lsn) */
        uint64_t confirmed;    /* confirmed_flush_lsn */
        uint64_t server_lsn;   /* pg_current_wal_lsn() at the poll */
        double ops_per_s;      /* op ids handed out per second since the previous poll */
        uint64_t rows, buckets, ops;
        char last_error[256];
        gw_storage_info_t storage; /* the writer's storage info, as last noted (gw_repl_lead.c) */
    } diag;
    uint64_t old_check_ms;
    uint64_t poll_ms, poll_last_op, warn_lag_ms, warn_wal_ms, compact_ms;
};

/* Milliseconds of the monotonic clock. */
static inline uint64_t gw__repl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Microseconds since since (monotonic). */
static inline uint64_t gw__repl_elapsed_us(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)((now.tv_sec - since->tv_sec) * 1000000 +
                      (now.tv_nsec - since->tv_nsec) / 1000);
}

/* Milliseconds since since (monotonic). */
static inline uint64_t gw__repl_elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)(now.tv_sec - since->tv_sec) * 1000 +
           (uint64_t)((now.tv_nsec - since->tv_nsec) / 1000000);
}

/* The source's health, as readiness and diagnostics show it (gw_repl_diag.c). */
enum {
    GW__SRC_OK = 0,       /* the source answers */
    GW__SRC_SILENT = 1,   /* it answered nothing for replication.timeout (silent or unreachable) */
    GW__SRC_SLOT_LOST = 2 /* the serving version's slot is gone: rebuilding from a snapshot */
};

/* The replicator thread starts work of its own (waiting for storage, tasks, compaction), during
 * which it does not read the source: silence then is not the source's. Returns what
 * gw__repl_busy_end takes; nests. */
static inline uint64_t gw__repl_busy_begin(gw_repl_t *r)
{
    return atomic_fetch_add(&r->busy, 1) == 0 ? gw__repl_now_ms() : 0;
}

/* The end of that work: the time it took does not count as silence. */
static inline void gw__repl_busy_end(gw_repl_t *r, uint64_t t0)
{
    if (t0 != 0) atomic_fetch_add(&r->msg_ms, gw__repl_now_ms() - t0);
    atomic_fetch_sub(&r->busy, 1);
}

/* ---- gw_repl.c ---- */

/** Phase names by m_phase (0 check, 1 slot, 2 snapshot, 3 streaming, 4 retrying, 5 standby (another
 *  instance leads the storage), 6 rebuilding after the slot was lost). */
extern const char *const gw__repl_phase_names[];

/** Set the phase; while storage is not consistent, readiness says reason (or the phase). */
void gw__repl_set_phase(gw_repl_t *r, int phase, const char *reason);

/** A replicator for rules of version on st (its namespace is version); not started. */
gw_repl_t *gw__repl_new(const gw_config_t *cfg, rules_set_t *rules, const char *hash,
                        const char *version, gw_storage_t *st);

/** The storage's durable callback (syncer thread): note the LSN, wake the replicator. */
void gw__repl_on_durable(uint64_t lsn, void *ud);

/** Free a rel_t (a gw_map_each callback; key and ud unused). */
void gw__repl_free_rel(const char *key, void *value, void *ud);

/** Run queued tasks in the open batch, commit it, then report each result. */
int gw__repl_run_tasks(gw_repl_t *r, gw_err_t *err);

/* ---- gw_repl_source.c ---- */

/** Check the source (wal_level, role, publication, tables); each problem is logged with the
 *  SQL that fixes it. Fills r->tables. 0, GW_EPG or GW_EUNAVAIL. */
int gw__repl_check_source(gw_repl_t *r, gw_err_t *err);

/** Create the permanent slot unless it exists (stored "slot_created"). 0, GW_EPG, GW_EUNAVAIL. */
int gw__repl_ensure_slot(gw_repl_t *r, gw_err_t *err);

/** Whether the rules read schema.name (data or parameter lookups). */
int gw__repl_is_tracked(gw_repl_t *r, const char *schema, const char *name);

/** Free r->tables. */
void gw__repl_free_tables(gw_repl_t *r);

/** Drop slot when it exists and is not in use: 1 gone, 0 still there, -1 error. */
int gw__repl_drop_slot(gw_repl_t *r, const char *slot);

/* ---- gw_repl_snapshot.c ---- */

/** Snapshot every table the rules read that is not done yet. 0, or an error code. */
int gw__repl_snapshot(gw_repl_t *r, gw_err_t *err);

/* ---- gw_repl_apply.c ---- */

/** The key text of a row: a single key column's value, else a JSON array of the key values. */
void gw__repl_row_key(gw_buf_t *out, size_t ncols, const int *is_key, const char *const *values,
                      const size_t *lens);

/** Evaluate the rules for a row and store (or queue) its new state. 0 or an error code. */
int gw__repl_apply_row(gw_repl_t *r, const char *schema, const char *table, const char *qname,
                       size_t ncols, const char *const *names, const uint32_t *types,
                       const char *const *values, const size_t *lens, const char *key,
                       gw_err_t *err);

/** Delete a row: queued while the pipeline runs, else directly. */
int gw__repl_store_delete(gw_repl_t *r, const char *table, const char *key, gw_err_t *err);

/** Open the streaming batch (and, without the pipeline, its storage transaction). */
int gw__repl_batch_begin(gw_repl_t *r, gw_err_t *err);

/** Commit the open batch at batch_lsn (queued while streaming; with wait, made here and durable
 *  when this returns), then acknowledge what is durable. */
int gw__repl_flush_batch_mode(gw_repl_t *r, int wait, gw_err_t *err);

/** gw__repl_flush_batch_mode without waiting (the streaming path). */
int gw__repl_flush_batch(gw_repl_t *r, gw_err_t *err);

/** Start the apply thread (r->pipe_on). 0 or GW_ESYS. */
int gw__repl_pipe_start(gw_repl_t *r, gw_err_t *err);

/** Drain and stop the apply thread: rc, or when rc is 0 the apply thread's error in err. */
int gw__repl_pipe_stop(gw_repl_t *r, int rc, gw_err_t *err);

/** Wait until the apply thread wrote everything queued. 0, or the apply thread's error. */
int gw__repl_pipe_drain(gw_repl_t *r, gw_err_t *err);

/** For the replicator's own storage writes while streaming: drain, and open a transaction. */
int gw__repl_storage_direct(gw_repl_t *r, gw_err_t *err);

/* ---- gw_repl_stream.c ---- */

/** Stream the slot from the stored LSN until stopped, failed or a switch is wanted. */
int gw__repl_stream(gw_repl_t *r, gw_err_t *err);

/** Acknowledge the durable LSN to Postgres when it moved (invariant 1). */
int gw__repl_maybe_ack(gw_repl_t *r, gw_err_t *err);

/* ---- gw_repl_versions.c ---- */

/** Set r->next (the builder) under its lock. */
void gw__repl_set_next(gw_repl_t *r, gw_repl_t *b);

/** Record a new rules/version pair for request handlers (owned by r until destroy). */
gw_active_t *gw__repl_add_active(gw_repl_t *r, rules_set_t *rules, const char *version,
                                 uint64_t since_op);

/** At start: which version serves and with which rules (*serve_rules, a reference), and
 *  whether a new one is built beside it. 0 or an error code. */
int gw__repl_resolve_version(gw_repl_t *r, rules_set_t *rules, const char *hash, const char *text,
                             rules_set_t **serve_rules, gw_err_t *err);

/** The rules file's identity (modification time, size, inode); 0, or -1 when unreadable. */
int gw__repl_rules_file_id(gw_repl_t *r, struct gw__file_id *id);

/** A stored state text of any length into *out (malloc'd, caller frees; NULL when absent):
 * 1 found, 0 absent, or a negative code with err set when storage could not be read. */
int gw__repl_state_text(gw_storage_t *st, const char *key, char **out, gw_err_t *err);

/** gw_storage_state_get with an unreadable value as an error: 1 found, 0 absent, or a negative
 * code with err set. Every decision taken on "absent" (drop a slot, snapshot again, start a new
 * rule version) reads through here: an outage of storage is never taken for a missing value. */
int gw__repl_state_read(gw_storage_t *st, const char *key, char *buf, size_t len, gw_err_t *err);

/** Drop retired versions' slots and data (serving replicator, consistent, after a grace). */
void gw__repl_drop_retired(gw_repl_t *r);

/** Serving replicator, idle: want a switch once the builder caught up; else poll the rules. */
int gw__repl_rule_versions(gw_repl_t *r, gw_err_t *err);

/** Take the builder's version over (the stream loop ended with switch_wanted). */
void gw__repl_do_switch(gw_repl_t *r);

/* ---- gw_repl_lead.c ---- */

/** At start, on a storage another instance leads: serve the version it serves, with the rules
 *  it stored (a fresh storage: this file's rules until the leader made the first version). */
int gw__repl_follow_init(gw_repl_t *r, gw_err_t *err);

/** One standby pass (about a second): write checkpoints, following the leader's rule versions,
 *  readiness. lead_rc/lerr: what asking for the lead answered (negative: storage unreachable). */
void gw__repl_standby(gw_repl_t *r, int lead_rc, const gw_err_t *lerr);

/** A standby won the lead: take up the stored state as the leader (the rules file decides, a
 *  build in progress resumes). 0 or an error (the next pass tries again). */
int gw__repl_take_over(gw_repl_t *r, gw_err_t *err);

/** The stream loop, idle: whether this instance still leads (drains the pipeline first). 0, or
 *  GW_EUNAVAIL when the lead is gone (the stream ends; repl_main turns standby). */
int gw__repl_check_lead(gw_repl_t *r, gw_err_t *err);

/** Note the writer's storage info for diagnostics and metrics (replicator thread). */
void gw__repl_note_storage(gw_repl_t *r);

/**
 * The serving version's slot is gone (why says how): build the same rules into a new version
 * from a new snapshot beside it (or go on with the build already running), report it (readiness
 * 503, diagnostics) and wait until that version is consistent; then return 0 with
 * switch_wanted set. The old version keeps serving meanwhile. An error code when stopped or
 * when the build cannot start.
 */
int gw__repl_rebuild(gw_repl_t *r, const char *why, gw_err_t *err);

/* ---- gw_repl_diag.c ---- */

/** Poll the slot's health and storage totals (every 5 s at most); warn above the limits. */
void gw__repl_poll_slot(gw_repl_t *r);

/** Set the source's health (GW__SRC_*) and why (NULL when OK): diagnostics and one log line
 *  per change. */
void gw__repl_source_set(gw_repl_t *r, int state, const char *reason);

/** The source sent data (a replication message, a snapshot chunk): it is healthy. */
void gw__repl_heard(gw_repl_t *r);

/** Whether the source sent nothing for replication.timeout (with why, for the log). */
int gw__repl_source_silent(gw_repl_t *r, char *why, size_t len);

/** The readiness check "replication source" (a gw_ready_fn; ud is the serving replicator). */
int gw__repl_source_ready(void *ud, char *reason, size_t len);

#endif
