/* gw_repl.c -- the replicator thread: source check, slot, snapshot, streaming (see gw_repl.h)
 *
 * State machine (one pass of run_once(); any failure returns to BACKOFF):
 *
 *   CHECK ----------> SLOT ------------> SNAPSHOT -----------> STREAM
 *   check_source()    ensure_slot()      snapshot_table()       stream()
 *     | fails           creates the        per table, chunked     START_REPLICATION from the
 *     v                 permanent slot     in key order;          stored LSN; commits become
 *   BACKOFF (0.5 s,     before any table   progress stored per    storage commits, then the
 *   doubling to 5 s)    is read              chunk; marks "no       LSN is acknowledged
 *                                          checkpoint before"
 *
 * Invariants:
 *   1. A storage commit holds every change of the source transactions it covers plus their end
 *      LSN; the LSN is acknowledged to Postgres only after that commit (flush_batch()).
 *   2. A transaction whose commit LSN is below the stored LSN was already applied and is skipped
 *      (exactly once across restarts).
 *   3. Storage becomes consistent at the first commit at or past the highest "no checkpoint
 *      before" mark of the snapshot; until then readiness is 503.
 *
 * While streaming, the replicator thread receives, decodes and evaluates the rules; an apply
 * thread writes the results to storage in the same order (see "apply pipeline"). Anything that
 * reads the writer's storage from the replicator thread first drains the pipeline.
 *
 *   4. A row with an unchanged-TOAST value is completed from the stored copy (or re-read by key)
 *      before it is evaluated; a row with holes is never evaluated. The copy keeps only values
 *      of at least COPY_MIN_BYTES (shorter ones are almost never stored out of line, and a row
 *      copy of every value cost a fifth of replication); a shorter unchanged value is re-read.
 */
#include "repl/gw_repl.h"
#include "base/gw_log.h"
#include "base/gw_map.h"
#include "base/gw_metrics.h"
#include "pg/gw_pg.h"
#include "pg/gw_pgoutput.h"
#include "config/gw_rules.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BATCH_MAX_CHANGES 100000
/* Row copies keep values of at least this many bytes (invariant 4) */
#define COPY_MIN_BYTES 256
/* A batch closes when no more data waits, so the time bound only applies while catching up
 * (a backlog): 500 ms rather than 100 ms halves the index and WAL pages written per change there
 * without delaying changes that arrive at a pace ferry keeps up with. */
#define BATCH_MAX_MS       500
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
    uint64_t switched_ms;      /* when this process last switched (the old version's data is
                                  dropped a little later: streams move over first) */
    uint64_t rules_poll_ms;    /* serving: when the rules file was last looked at */
    struct file_id {
        struct timespec mtime;
        off_t size;
        ino_t ino;
    } rules_file, rules_seen; /* the file acted on; a change seen at the last look */
    int rules_seen_set;
    char rules_bad_hash[32];       /* a changed file that did not compile (logged once) */
    _Atomic(gw_active_t *) active; /* what request handlers use now */
    gw_active_t **actives;         /* every rules/version pair handed out; freed at destroy */
    size_t nactives;
    void (*on_switch)(const gw_active_t *now, void *ud);
    void *switch_ud;
    gw_storage_t *st;
    pthread_t tid;
    int running;
    _Atomic int stop;
    int ready_id;

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
    _Atomic int m_phase;              /* 0 check, 1 slot, 2 snapshot, 3 streaming, 4 backoff */
    _Atomic int64_t m_recv_commit_us; /* commit time of the last transaction received */
    _Atomic uint64_t m_last_op;

    /* slot health, polled by the replicator (poll_slot), read by the admin API and /metrics */
    long lag_warn_seconds, wal_warn_bytes, compact_interval;
    char *storage_path;
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
    } diag;
    uint64_t old_check_ms;
    uint64_t poll_ms, poll_last_op, warn_lag_ms, warn_wal_ms, compact_ms;
};

static int pipe_put(gw_repl_t *r, const char *table, const char *key, const void *copy,
                    size_t copy_len, gw_err_t *err);
static int pipe_drain(gw_repl_t *r, gw_err_t *err);
static int store_delete(gw_repl_t *r, const char *table, const char *key, gw_err_t *err);
static int storage_direct(gw_repl_t *r, gw_err_t *err);
static int pipe_start(gw_repl_t *r, gw_err_t *err);
static int pipe_stop(gw_repl_t *r, int rc, gw_err_t *err);

static const char *const phase_names[] = {"checking source", "creating slot", "snapshot",
                                          "streaming", "retrying"};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t elapsed_us(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)((now.tv_sec - since->tv_sec) * 1000000 +
                      (now.tv_nsec - since->tv_nsec) / 1000);
}

static uint64_t elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)(now.tv_sec - since->tv_sec) * 1000 +
           (uint64_t)((now.tv_nsec - since->tv_nsec) / 1000000);
}

static void set_phase(gw_repl_t *r, int phase, const char *reason)
{
    atomic_store(&r->m_phase, phase);
    if (!gw_storage_consistent(r->st))
        gw_ready_set(r->ready_id, 0, reason != NULL ? reason : phase_names[phase]);
}

static int valid_name(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 63) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    return 1;
}

/* ---- rule versions ----
 *
 * The storage serves one rule version (state "serving"). Each version has its own slot
 * ("<slot_prefix>_<version>"), rows, lookups, state and buckets ("<version>#…"), and keeps the
 * hash and text of its rules. A new version (number "version_seq" + 1) is built beside the
 * serving one by a builder (state "building"): a second replicator with its own thread, slot and
 * storage writer. Once the builder is consistent and its stored LSN is at or past the serving
 * one's (it has everything the old version serves), the serving replicator leaves its stream
 * loop, stops the builder and takes its version over in one
 * storage commit (serving = new, building = none, the old version retired; the checkpoint is
 * advanced past every op id handed out), then streams the new slot from the new version's LSN.
 * Retired versions ("retired": "<version>:<slot>,…") lose their slot and data in
 * drop_retired(), a little after the switch (streams re-evaluate their buckets first).
 * Every step is one storage commit, so a crash at any point restarts from a state that is
 * either "building" (the builder resumes) or "switched".
 */

static void on_durable(uint64_t lsn, void *ud);

static void set_next(gw_repl_t *r, gw_repl_t *b)
{
    pthread_mutex_lock(&r->next_lock);
    r->next = b;
    pthread_mutex_unlock(&r->next_lock);
}

/* The version number for a new version: above every one the file has seen. */
static long next_version(gw_storage_t *st)
{
    static const char *const keys[] = {"version_seq", "serving", "building"};
    long v = 0;
    for (size_t i = 0; i < 3; i++) {
        char b[32] = "";
        if (gw_storage_state_get(st, keys[i], b, sizeof(b)) && strtol(b, NULL, 10) > v)
            v = strtol(b, NULL, 10);
    }
    return v + 1;
}

/* Write a new version's own state through st (in that version's namespace), inside a txn. */
static int init_version(gw_repl_t *r, gw_storage_t *st, const char *version, const char *hash,
                        const char *text, gw_err_t *err)
{
    char slot[160];
    snprintf(slot, sizeof(slot), "%s_%s", r->slot_prefix, version);
    int rc = gw_storage_state_set(st, "version_seq", version, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_hash", hash, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_text", text, err);
    if (rc == 0) rc = gw_storage_state_set(st, "rules_version", version, err);
    if (rc == 0) rc = gw_storage_state_set(st, "slot", slot, err);
    if (rc == 0) rc = gw_storage_state_set(st, "slot_created", "0", err);
    if (rc == 0) rc = gw_storage_set_consistent(st, 0, err);
    return rc;
}

/* Add "<version>:<slot>" to the retired versions, inside a txn. */
static int retire(gw_storage_t *st, const char *version, const char *slot, gw_err_t *err)
{
    char cur[2048] = "", buf[2300];
    gw_storage_state_get(st, "retired", cur, sizeof(cur));
    snprintf(buf, sizeof(buf), "%s%s%s:%s", cur, cur[0] ? "," : "", version, slot);
    return gw_storage_state_set(st, "retired", buf, err);
}

/* No version is being built any more: version (slot slot) is retired, in one commit. */
static int abandon_build(gw_storage_t *st, const char *version, const char *slot, gw_err_t *err)
{
    int rc = gw_storage_begin(st, err);
    if (rc == 0) rc = gw_storage_state_set(st, "building", "", err);
    if (rc == 0) rc = retire(st, version, slot, err);
    if (rc == 0)
        rc = gw_storage_commit(st, 0, err);
    else
        gw_storage_rollback(st);
    return rc;
}

/* abandon_build for the stored build of version (at start, before any builder runs). */
static int abandon_stored_build(gw_storage_t *st, const char *version, gw_err_t *err)
{
    char key[64], slot[160] = "";
    snprintf(key, sizeof(key), "%s#slot", version);
    gw_storage_state_get(st, key, slot, sizeof(slot));
    return abandon_build(st, version, slot, err);
}

/* A stored state text of any length: malloc'd (caller frees), or NULL when absent. */
static char *state_text(gw_storage_t *st, const char *key)
{
    size_t len = 4096;
    for (;;) {
        char *buf = gw_xmalloc(len);
        if (!gw_storage_state_get(st, key, buf, len)) {
            free(buf);
            return NULL;
        }
        if (strlen(buf) + 1 < len) return buf;
        free(buf);
        if (len >= ((size_t)64 << 20)) return NULL;
        len *= 4;
    }
}

/* A replicator for rules of version on st (its namespace is version); not started. */
static gw_repl_t *engine_new(const gw_config_t *cfg, rules_set_t *rules, const char *hash,
                             const char *version, gw_storage_t *st)
{
    gw_repl_t *r = gw_xcalloc(1, sizeof(*r));
    r->cfg = cfg;
    r->uri = gw_xstrdup(cfg->postgres.uri);
    r->publication = gw_xstrdup(cfg->replication.publication);
    r->slot_prefix = gw_xstrdup(cfg->replication.slot_prefix);
    r->chunk_rows = cfg->replication.snapshot_chunk_rows;
    r->lag_warn_seconds = cfg->replication.lag_warn_seconds;
    r->wal_warn_bytes = cfg->replication.wal_warn_bytes;
    r->compact_interval = cfg->replication.compact_interval;
    r->storage_path = gw_xstrdup(cfg->storage.path);
    pthread_mutex_init(&r->diag_lock, NULL);
    pthread_mutex_init(&r->next_lock, NULL);
    snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "unknown");
    r->rules = rules_ref(rules);
    snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", hash);
    snprintf(r->version, sizeof(r->version), "%s", version);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, version);
    r->st = st;
    gw_map_init(&r->rels);
    gw_arena_init(&r->arena, 65536);
    r->ready_id = -1;
    pthread_mutex_init(&r->task_lock, NULL);
    r->task_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    gw_storage_set_durable_fn(st, on_durable, r);
    /* fault injection for tests: stream from the slot's confirmed position (not the stored LSN)
     * and never confirm more, so after a restart Postgres resends transactions storage already
     * holds and the exactly-once skip (invariant 2) is exercised on every restart */
    const char *replay = getenv("FERRY_TEST_REPLAY");
    r->test_replay = replay != NULL && strcmp(replay, "1") == 0;
    /* fault injection for tests: once this run's snapshot has stored N rows (a durable chunk
     * commit), log "test hold" and wait until stopped, so a test kills ferry at a point it
     * chooses instead of racing the snapshot's speed */
    const char *hold = getenv("FERRY_TEST_SNAPSHOT_HOLD");
    r->test_snapshot_hold = hold != NULL ? strtoull(hold, NULL, 10) : 0;
    return r;
}

/* Record a new rules/version pair for request handlers (owned by r until destroy). */
static gw_active_t *add_active(gw_repl_t *r, rules_set_t *rules, const char *version,
                               uint64_t since_op)
{
    gw_active_t *a = gw_xcalloc(1, sizeof(*a));
    a->rules = rules_ref(rules);
    snprintf(a->version, sizeof(a->version), "%s", version);
    a->since_op = since_op;
    r->actives = gw_xrealloc(r->actives, (r->nactives + 1) * sizeof(*r->actives));
    r->actives[r->nactives++] = a;
    atomic_store(&r->active, a);
    return a;
}

/*
 * Create the builder of a new version with rules (hash, text) beside r; resume is the number of
 * a version being built already (its state is kept), NULL for a new one. Not started.
 */
static int builder_create(gw_repl_t *r, rules_set_t *rules, const char *hash, const char *text,
                          const char *resume, gw_err_t *err)
{
    char v[32];
    if (resume != NULL)
        snprintf(v, sizeof(v), "%s", resume);
    else
        snprintf(v, sizeof(v), "%ld", next_version(r->st));
    gw_storage_t *bst;
    if (gw_storage_open_version(r->storage_path, v, &bst, err) != 0) return GW_EIO;
    gw_storage_set_serving(bst, 0);
    int rc = 0;
    if (resume == NULL) {
        rc = gw_storage_begin(bst, err);
        if (rc == 0) rc = gw_storage_state_set(bst, "building", v, err);
        if (rc == 0) rc = init_version(r, bst, v, hash, text, err);
        if (rc == 0)
            rc = gw_storage_commit(bst, 0, err);
        else
            gw_storage_rollback(bst);
    }
    if (rc != 0) {
        gw_storage_close(bst);
        return rc;
    }
    gw_repl_t *b = engine_new(r->cfg, rules, hash, v, bst);
    b->builder = 1;
    b->compact_interval = 0;
    set_next(r, b);
    gw_info("repl",
            resume != NULL ? "resuming the build of a new rule version beside the serving one"
                           : "building a new rule version beside the serving one",
            "version=%s serving=%s slot=%s", v, r->version, b->slot);
    return 0;
}

/* Stop and forget the builder; its version is retired (slot and data dropped later). r's
 * storage must have no open transaction. */
static int builder_discard(gw_repl_t *r, const char *why, gw_err_t *err)
{
    gw_repl_t *b = r->next;
    if (b == NULL) return 0;
    gw_repl_stop(b);
    char version[32], slot[160];
    snprintf(version, sizeof(version), "%s", b->version);
    snprintf(slot, sizeof(slot), "%s", b->slot);
    set_next(r, NULL);
    gw_repl_destroy(b);
    int rc = abandon_build(r->st, version, slot, err);
    r->old_pending = 1;
    gw_info("repl", "stopped building a rule version", "version=%s reason=\"%s\"", version, why);
    return rc;
}

static int resolve_version(gw_repl_t *r, rules_set_t *rules, const char *hash, const char *text,
                           rules_set_t **serve_rules, gw_err_t *err)
{
    gw_storage_t *st = r->st;
    char serving[32] = "", building[32] = "", stored_hash[64] = "";
    gw_storage_state_get(st, "serving", serving, sizeof(serving));
    gw_storage_state_get(st, "building", building, sizeof(building));
    *serve_rules = rules_ref(rules);
    if (serving[0] != '\0' &&
        gw_storage_state_get(st, "rules_hash", stored_hash, sizeof(stored_hash)) &&
        strcmp(stored_hash, hash) == 0) {
        /* the version the storage serves: go on (a build of other rules is abandoned) */
        snprintf(r->version, sizeof(r->version), "%s", serving);
        if (building[0] != '\0') {
            int rc = abandon_stored_build(st, building, err);
            if (rc != 0) return rc;
            gw_info("repl",
                    "the sync rules are the serving version's again: dropping the version "
                    "that was being built",
                    "version=%s", building);
        }
        return 0;
    }
    if (serving[0] != '\0') {
        /* other rules: keep serving the stored version with its stored rules, if it has them */
        char *old_text = state_text(st, "rules_text");
        rules_set_t *old = NULL;
        char old_hash[32], what[64];
        gw_err_t cerr;
        snprintf(what, sizeof(what), "stored sync rules of version %s", serving);
        if (old_text != NULL &&
            gw_rules_compile_text(old_text, strlen(old_text), what, &old, old_hash,
                                  sizeof(old_hash), NULL, &cerr) == 0) {
            free(old_text);
            rules_unref(*serve_rules);
            *serve_rules = old;
            snprintf(r->version, sizeof(r->version), "%s", serving);
            gw_info("repl",
                    "the sync rules changed: the stored version serves while the new one "
                    "is built",
                    "serving=%s", serving);
            char key[64], bhash[64] = "";
            snprintf(key, sizeof(key), "%s#rules_hash", building);
            int resume = building[0] != '\0' &&
                         gw_storage_state_get(st, key, bhash, sizeof(bhash)) &&
                         strcmp(bhash, hash) == 0;
            if (building[0] != '\0' && !resume) {
                int rc = abandon_stored_build(st, building, err);
                if (rc != 0) return rc;
            }
            return builder_create(r, rules, hash, text, resume ? building : NULL, err);
        }
        char m[512] = "none";
        if (old_text != NULL) gw_err_format(&cerr, m, sizeof(m));
        free(old_text);
        gw_warn("repl",
                "the sync rules changed and the storage cannot serve its version with "
                "the rules it stored: building the new version in its place (not "
                "ready until it is consistent)",
                "serving=%s stored_rules=\"%s\"", serving, m);
        if (building[0] != '\0') {
            int rc = abandon_stored_build(st, building, err);
            if (rc != 0) return rc;
        }
    }
    /* a fresh storage, or no way to serve the old version: the new version serves from now on,
     * 503 until consistent; an old version is retired */
    long v = next_version(st);
    char version[32], old_slot[160] = "";
    snprintf(version, sizeof(version), "%ld", v);
    gw_storage_state_get(st, "slot", old_slot, sizeof(old_slot));
    /* one commit, in the new version's namespace */
    int rc = gw_storage_set_version(st, version, err);
    if (rc == 0) rc = gw_storage_begin(st, err);
    if (rc == 0 && serving[0] != '\0') rc = retire(st, serving, old_slot, err);
    if (rc == 0) rc = gw_storage_state_set(st, "serving", version, err);
    if (rc == 0) rc = init_version(r, st, version, hash, text, err);
    if (rc == 0) rc = gw_storage_commit(st, 0, err);
    if (rc != 0) return rc;
    snprintf(r->version, sizeof(r->version), "%s", version);
    if (serving[0] != '\0')
        gw_info("repl", "the sync rules changed: building a new rule version",
                "old_version=%s version=%s", serving, version);
    return 0;
}

const gw_active_t *gw_repl_active(gw_repl_t *r)
{
    return atomic_load(&r->active);
}

const char *gw_repl_version(gw_repl_t *r)
{
    return atomic_load(&r->active)->version;
}

void gw_repl_on_switch(gw_repl_t *r, void (*fn)(const gw_active_t *now, void *ud), void *ud)
{
    r->on_switch = fn;
    r->switch_ud = ud;
}

/* ---- lifecycle ---- */

/* The storage's durable callback (syncer thread): note the LSN, wake the replicator to ack it. */
static void on_durable(uint64_t lsn, void *ud)
{
    gw_repl_t *r = ud;
    uint64_t cur = atomic_load(&r->durable_lsn);
    while (lsn > cur && !atomic_compare_exchange_weak(&r->durable_lsn, &cur, lsn)) {
    }
    uint64_t one = 1;
    ssize_t w = write(r->task_fd, &one, sizeof(one));
    (void)w;
}

/* The rules file's identity (modification time, size, inode); 0, or -1 when it cannot be read. */
static int rules_file_id(gw_repl_t *r, struct file_id *id)
{
    struct stat sb;
    if (stat(r->cfg->sync_rules.path, &sb) != 0) return -1;
    *id = (struct file_id){.mtime = sb.st_mtim, .size = sb.st_size, .ino = sb.st_ino};
    return 0;
}

static int same_file_id(const struct file_id *a, const struct file_id *b)
{
    return a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
           a->size == b->size && a->ino == b->ino;
}

int gw_repl_create(const gw_config_t *cfg, rules_set_t *rules, const char *rules_hash,
                   const char *rules_text, gw_storage_t *storage, gw_repl_t **out, gw_err_t *err)
{
    if (!valid_name(cfg->replication.publication))
        return gw_err_set(err, GW_ECONFIG, "replication.publication",
                          "\"%s\" must be a lowercase name of letters, digits and _",
                          cfg->replication.publication);
    if (!valid_name(cfg->replication.slot_prefix) || strlen(cfg->replication.slot_prefix) > 40)
        return gw_err_set(err, GW_ECONFIG, "replication.slot_prefix",
                          "\"%s\" must be a lowercase name of letters, digits and _ (at most 40)",
                          cfg->replication.slot_prefix);
    gw_repl_t *r = engine_new(cfg, rules, rules_hash, "", storage);
    r->ready_id = gw_ready_register("replication", "starting");
    r->old_pending = 1;
    rules_set_t *serve_rules = NULL;
    int rc = resolve_version(r, rules, rules_hash, rules_text, &serve_rules, err);
    if (rc == 0) rc = gw_storage_set_version(storage, r->version, err);
    if (rc != 0) {
        rules_unref(serve_rules);
        gw_storage_set_durable_fn(storage, NULL, NULL); /* the caller keeps the storage */
        r->st = NULL;
        gw_repl_destroy(r);
        return rc;
    }
    /* the serving version's rules and hash (the stored ones while a new version is built) */
    rules_unref(r->rules);
    r->rules = serve_rules;
    char h[32];
    if (gw_storage_state_get(storage, "rules_hash", h, sizeof(h)))
        snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", h);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, r->version);
    add_active(r, r->rules, r->version, 0);
    rules_file_id(r, &r->rules_file);
    /* ready only once the source is known to be the one this storage was built from */
    *out = r;
    return 0;
}

static void free_rel(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    rel_t *rel = value;
    free(rel->schema);
    free(rel->name);
    free(rel->qname);
    for (size_t i = 0; i < rel->ncols; i++)
        free(rel->names[i]);
    free(rel->names);
    free(rel->types);
    free(rel->is_key);
    free(rel);
}

static void free_tables(gw_repl_t *r)
{
    for (size_t i = 0; i < r->ntables; i++) {
        free(r->tables[i].schema);
        free(r->tables[i].name);
        free(r->tables[i].qname);
        free(r->tables[i].sql_ident);
    }
    free(r->tables);
    r->tables = NULL;
    r->ntables = 0;
}

static void disconnect(gw_repl_t *r)
{
    if (r->q != NULL) PQfinish(r->q);
    if (r->rc != NULL) PQfinish(r->rc);
    r->q = r->rc = NULL;
    gw_map_each(&r->rels, free_rel, NULL);
    gw_map_free(&r->rels);
    gw_map_init(&r->rels);
    if (r->st != NULL && gw_storage_in_txn(r->st)) gw_storage_rollback(r->st);
    r->batch_open = 0;
    r->in_pg_txn = 0;
}

void gw_repl_stop(gw_repl_t *r)
{
    if (r == NULL) return;
    if (r->running) {
        atomic_store(&r->stop, 1);
        pthread_join(r->tid, NULL);
        r->running = 0;
    }
    gw_repl_stop(r->next);
}

void gw_repl_destroy(gw_repl_t *r)
{
    if (r == NULL) return;
    gw_repl_stop(r);
    gw_repl_t *b = r->next;
    set_next(r, NULL);
    gw_repl_destroy(b);
    disconnect(r);
    for (gw_repl_task_t *t = r->task_head, *next; t != NULL; t = next) {
        next = t->next;
        t->done(t->ud, GW_EUNAVAIL);
    }
    /* closing storage publishes its last commits, which write to task_fd: close it first */
    gw_storage_close(r->st);
    if (r->task_fd >= 0) close(r->task_fd);
    pthread_mutex_destroy(&r->task_lock);
    gw_map_free(&r->rels);
    free_tables(r);
    rules_unref(r->rules);
    for (size_t i = 0; i < r->nactives; i++) {
        rules_unref(r->actives[i]->rules);
        free(r->actives[i]);
    }
    free(r->actives);
    rules_ops_free(&r->ops);
    rules_lookups_free(&r->lookups);
    gw_buf_free(&r->copy);
    gw_buf_free(&r->key);
    gw_arena_free(&r->arena);
    free(r->uri);
    free(r->publication);
    free(r->slot_prefix);
    free(r->storage_path);
    pthread_mutex_destroy(&r->diag_lock);
    pthread_mutex_destroy(&r->next_lock);
    free(r);
}

/* ---- source check ---- */

static int table_matches(const rules_table_t *t, const char *schema, const char *name)
{
    const char *ts = t->schema != NULL ? t->schema : "public";
    if (strcmp(ts, schema) != 0) return 0;
    size_t n = strlen(t->name);
    if (n > 0 && t->name[n - 1] == '%') return strncmp(t->name, name, n - 1) == 0;
    return strcmp(t->name, name) == 0;
}

static int is_tracked(gw_repl_t *r, const char *schema, const char *name)
{
    size_t n = rules_table_count(r->rules);
    for (size_t i = 0; i < n; i++) {
        const rules_table_t *t = rules_table_at(r->rules, i);
        if ((t->uses & (RULES_USE_DATA | RULES_USE_LOOKUP)) && table_matches(t, schema, name))
            return 1;
    }
    return 0;
}

static void source_problem(gw_repl_t *r, const char *what, const char *fix)
{
    gw_error("repl", what, "fix=\"%s\"", fix);
    char reason[512];
    snprintf(reason, sizeof(reason), "%s; fix: %s", what, fix);
    gw_ready_set(r->ready_id, gw_storage_consistent(r->st), reason);
}

/*
 * The storage belongs to one database of one cluster: refuse to serve (or extend) it from another,
 * e.g. after the database was re-created, since its slot, LSNs and rows would all be wrong.
 */
static int check_same_source(gw_repl_t *r, gw_err_t *err)
{
    PGresult *res = gw_pg_query(r->q,
                                "SELECT (SELECT system_identifier FROM pg_control_system())::text"
                                " || '/' || (SELECT oid FROM pg_database WHERE datname = "
                                "current_database())::text",
                                err);
    if (res == NULL) return GW_EPG;
    char id[128], stored[128] = "";
    snprintf(id, sizeof(id), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (gw_storage_state_get(r->st, "source_id", stored, sizeof(stored)) && stored[0] != '\0') {
        if (strcmp(stored, id) == 0) return 0;
        char msg[512];
        snprintf(msg, sizeof(msg),
                 "the storage file was built from another database (source %s, now %s)", stored,
                 id);
        /* nothing in this storage may be served any more */
        atomic_store(&r->ready, 0);
        gw_error("repl", msg,
                 "fix=\"stop ferry, delete the storage file (storage.path) and start "
                 "it again to rebuild from this database\"");
        gw_ready_set(r->ready_id, 0, msg);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    int rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, "source_id", id, err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    return rc;
}

static int check_source(gw_repl_t *r, gw_err_t *err)
{
    char msg[512], fix[512];
    int rc0 = check_same_source(r, err);
    if (rc0 != 0) return rc0;
    if (gw_storage_consistent(r->st) && !atomic_load(&r->ready)) {
        gw_ready_set(r->ready_id, 1, NULL);
        atomic_store(&r->ready, 1);
    }
    PGresult *res = gw_pg_query(r->q, "SHOW wal_level", err);
    if (res == NULL) return GW_EPG;
    int ok = strcmp(PQgetvalue(res, 0, 0), "logical") == 0;
    snprintf(msg, sizeof(msg), "wal_level is \"%s\", logical replication needs \"logical\"",
             PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!ok) {
        source_problem(r, msg, "ALTER SYSTEM SET wal_level = logical; then restart postgres");
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    res = gw_pg_query(r->q,
                      "SELECT rolreplication OR rolsuper, current_user FROM pg_roles WHERE "
                      "rolname = current_user",
                      err);
    if (res == NULL) return GW_EPG;
    ok = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
    char *role = gw_xstrdup(PQntuples(res) == 1 ? PQgetvalue(res, 0, 1) : "?");
    PQclear(res);
    if (!ok) {
        snprintf(msg, sizeof(msg), "role \"%s\" may not replicate", role);
        snprintf(fix, sizeof(fix), "ALTER ROLE \"%s\" REPLICATION;", role);
        free(role);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    free(role);
    const char *pv[1] = {r->publication};
    res = gw_pg_query_params(r->q,
                             "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM "
                             "pg_publication WHERE pubname = $1",
                             1, pv, err);
    if (res == NULL) return GW_EPG;
    int exists = PQntuples(res) == 1;
    ok = exists && PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    if (!exists) {
        snprintf(msg, sizeof(msg), "publication \"%s\" does not exist", r->publication);
        snprintf(fix, sizeof(fix), "CREATE PUBLICATION %s FOR ALL TABLES;", r->publication);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (!ok) {
        snprintf(msg, sizeof(msg),
                 "publication \"%s\" must publish insert, update, delete and truncate",
                 r->publication);
        snprintf(fix, sizeof(fix),
                 "ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');",
                 r->publication);
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    /* every table the rules read must exist in the publication and have a usable identity */
    size_t nrt = rules_table_count(r->rules);
    for (size_t i = 0; i < nrt; i++) {
        const rules_table_t *t = rules_table_at(r->rules, i);
        if (!(t->uses & (RULES_USE_DATA | RULES_USE_LOOKUP))) continue;
        const char *schema = t->schema != NULL ? t->schema : "public";
        size_t n = strlen(t->name);
        if (n > 0 && t->name[n - 1] == '%')
            continue; /* patterns match whatever the publication has */
        const char *p2[3] = {r->publication, schema, t->name};
        res = gw_pg_query_params(
            r->q,
            "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
            "AND i.indisprimary), EXISTS (SELECT 1 FROM pg_publication_tables p WHERE p.pubname "
            "= $1 AND p.schemaname = $2 AND p.tablename = $3) FROM pg_class c JOIN "
            "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relname = $3",
            3, p2, err);
        if (res == NULL) return GW_EPG;
        if (PQntuples(res) == 0) {
            PQclear(res);
            gw_warn("repl", "a table the sync rules read does not exist; its rules match nothing",
                    "table=%s.%s", schema, t->name);
            continue;
        }
        char ident = PQgetvalue(res, 0, 0)[0];
        int has_pk = PQgetvalue(res, 0, 1)[0] == 't';
        int published = PQgetvalue(res, 0, 2)[0] == 't';
        PQclear(res);
        if (!published) {
            snprintf(msg, sizeof(msg), "table \"%s.%s\" is not in publication \"%s\"", schema,
                     t->name, r->publication);
            snprintf(fix, sizeof(fix), "ALTER PUBLICATION %s ADD TABLE \"%s\".\"%s\";",
                     r->publication, schema, t->name);
            source_problem(r, msg, fix);
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
        if (ident == 'n' || (ident == 'd' && !has_pk)) {
            snprintf(msg, sizeof(msg),
                     "table \"%s.%s\" has no primary key or replica identity, so its updates "
                     "and deletes cannot be replicated",
                     schema, t->name);
            snprintf(fix, sizeof(fix),
                     "ALTER TABLE \"%s\".\"%s\" ADD PRIMARY KEY (id); or ALTER TABLE "
                     "\"%s\".\"%s\" REPLICA IDENTITY FULL;",
                     schema, t->name, schema, t->name);
            source_problem(r, msg, fix);
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
    }
    /* the tables to snapshot: published tables the rules read, in name order */
    free_tables(r);
    res = gw_pg_query_params(r->q,
                             "SELECT schemaname, tablename FROM pg_publication_tables WHERE "
                             "pubname = $1 ORDER BY 1, 2",
                             1, pv, err);
    if (res == NULL) return GW_EPG;
    r->tables = gw_xcalloc((size_t)PQntuples(res) + 1, sizeof(snap_table_t));
    for (int i = 0; i < PQntuples(res); i++) {
        const char *s = PQgetvalue(res, i, 0), *n = PQgetvalue(res, i, 1);
        if (!is_tracked(r, s, n)) continue;
        snap_table_t *t = &r->tables[r->ntables++];
        t->schema = gw_xstrdup(s);
        t->name = gw_xstrdup(n);
        size_t ql = strlen(s) + strlen(n) + 2;
        t->qname = gw_xmalloc(ql);
        snprintf(t->qname, ql, "%s.%s", s, n);
        char *qs = gw_pg_ident(r->q, s), *qn = gw_pg_ident(r->q, n);
        size_t il = strlen(qs) + strlen(qn) + 2;
        t->sql_ident = gw_xmalloc(il);
        snprintf(t->sql_ident, il, "%s.%s", qs, qn);
        free(qs);
        free(qn);
    }
    PQclear(res);
    return 0;
}

/* ---- slot ---- */

static int ensure_slot(gw_repl_t *r, gw_err_t *err)
{
    char created[8] = "";
    gw_storage_state_get(r->st, "slot_created", created, sizeof(created));
    const char *pv[1] = {r->slot};
    PGresult *res = gw_pg_query_params(r->q,
                                       "SELECT wal_status, database = current_database(), active "
                                       "FROM pg_replication_slots WHERE slot_name = $1",
                                       1, pv, err);
    if (res == NULL) return GW_EPG;
    int exists = PQntuples(res) == 1;
    int lost = exists && strcmp(PQgetvalue(res, 0, 0), "lost") == 0;
    int same_db = exists && PQgetvalue(res, 0, 1)[0] == 't';
    int active = exists && PQgetvalue(res, 0, 2)[0] == 't';
    PQclear(res);
    if (exists && !same_db) {
        char msg[512], fix[256];
        snprintf(msg, sizeof(msg),
                 "replication slot \"%s\" belongs to another database (another ferry?)", r->slot);
        snprintf(fix, sizeof(fix), "set replication.slot_prefix to a name no other ferry uses");
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (exists && !lost && created[0] == '1') return 0;
    if (created[0] == '1') {
        /* our slot vanished (dropped, or its WAL was removed): the stream cannot resume */
        char msg[512], fix[256];
        snprintf(msg, sizeof(msg), "replication slot \"%s\" %s", r->slot,
                 exists ? "lost WAL it needed (wal_status = lost)" : "was dropped");
        snprintf(fix, sizeof(fix),
                 "delete the storage file %s so ferry rebuilds it from a new snapshot",
                 "(storage.path)");
        source_problem(r, msg, fix);
        return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
    }
    if (exists) {
        /* our leftover from a crash between creating the slot and storing that fact */
        if (active) {
            char msg[512];
            snprintf(msg, sizeof(msg), "replication slot \"%s\" is in use by another process",
                     r->slot);
            source_problem(r, msg, "stop the other ferry or set replication.slot_prefix");
            return gw_err_set(err, GW_EUNAVAIL, "repl", "%s", msg);
        }
        char sql[256];
        snprintf(sql, sizeof(sql), "SELECT pg_drop_replication_slot('%s')", r->slot);
        if (gw_pg_exec(r->q, sql, err) != 0) return GW_EPG;
    }
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE_REPLICATION_SLOT %s LOGICAL pgoutput NOEXPORT_SNAPSHOT",
             r->slot);
    res = gw_pg_query(r->rc, sql, err);
    if (res == NULL) return GW_EPG;
    char lsntext[64];
    snprintf(lsntext, sizeof(lsntext), "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    int rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, "slot_created", "1", err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    if (rc == 0)
        gw_info("repl", "created the replication slot", "slot=%s consistent_point=%s", r->slot,
                lsntext);
    return rc;
}

/* ---- applying one row ---- */

/* Key text of a row: a single key column's value, else a JSON array of the key values. */
static void row_key(gw_buf_t *out, size_t ncols, const int *is_key, const char *const *values,
                    const size_t *lens)
{
    gw_buf_reset(out);
    size_t nkeys = 0;
    for (size_t i = 0; i < ncols; i++)
        nkeys += is_key[i] != 0;
    if (nkeys == 1) {
        for (size_t i = 0; i < ncols; i++)
            if (is_key[i]) {
                if (values[i] != NULL)
                    gw_buf_append(out, values[i], lens[i]);
                else
                    gw_buf_puts(out, "");
            }
        if (out->data == NULL) gw_buf_puts(out, "");
        return;
    }
    gw_buf_puts(out, "[");
    int first = 1;
    for (size_t i = 0; i < ncols; i++) {
        if (!is_key[i]) continue;
        if (!first) gw_buf_puts(out, ",");
        first = 0;
        if (values[i] == NULL) {
            gw_buf_puts(out, "null");
        } else {
            char *v = gw_xmalloc(lens[i] + 1);
            memcpy(v, values[i], lens[i]);
            v[lens[i]] = '\0';
            gw_buf_json_str(out, v);
            free(v);
        }
    }
    gw_buf_puts(out, "]");
}

static int apply_row(gw_repl_t *r, const char *schema, const char *table, const char *qname,
                     size_t ncols, const char *const *names, const uint32_t *types,
                     const char *const *values, const size_t *lens, const char *key, gw_err_t *err)
{
    rules_row_t row = {.schema = schema,
                       .table = table,
                       .ncols = ncols,
                       .names = names,
                       .types = types,
                       .values = values,
                       .lens = lens};
    rules_error_t rerr = {0};
    rules_ops_free(&r->ops);
    rules_lookups_free(&r->lookups);
    int rc = rules_eval_row(r->rules, r->version, &row, &r->ops, &rerr);
    if (rc == 0) rc = rules_eval_lookups(r->rules, &row, &r->lookups, &rerr);
    if (rc != 0) {
        /* a row the rules cannot evaluate is skipped, loudly, rather than stopping replication */
        gw_error("repl", "could not evaluate the sync rules for a row; skipping it",
                 "table=%s error=\"%s\"", qname, rerr.message);
        return 0;
    }
    gw_buf_reset(&r->copy);
    size_t kept = gw_storage_row_encode(&r->copy, ncols, names, values, lens, COPY_MIN_BYTES);
    if (r->pipe_on)
        return pipe_put(r, qname, key, kept ? r->copy.data : NULL, kept ? r->copy.len : 0, err);
    gw_row_ref_t ref = {.table = qname, .key = key};
    return gw_storage_put_row(r->st, &ref, &r->ops, NULL, &r->lookups, kept ? r->copy.data : NULL,
                              kept ? r->copy.len : 0, err);
}

/* ---- snapshot ---- */

typedef struct keycols {
    size_t n;
    char **names; /* quoted identifiers */
    char **raw;   /* plain names */
    char **types; /* format_type() */
} keycols_t;

static void keycols_free(keycols_t *k)
{
    for (size_t i = 0; i < k->n; i++) {
        free(k->names[i]);
        free(k->raw[i]);
        free(k->types[i]);
    }
    free(k->names);
    free(k->raw);
    free(k->types);
    memset(k, 0, sizeof(*k));
}

static int load_keycols(gw_repl_t *r, const snap_table_t *t, keycols_t *k, gw_err_t *err)
{
    const char *pv[1] = {t->sql_ident};
    PGresult *res = gw_pg_query_params(
        r->q,
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i JOIN "
        "pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE "
        "i.indrelid = $1::regclass AND (i.indisprimary OR i.indisreplident) ORDER BY "
        "i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)",
        1, pv, err);
    if (res == NULL) return GW_EPG;
    memset(k, 0, sizeof(*k));
    int n = PQntuples(res);
    k->names = gw_xcalloc((size_t)n + 1, sizeof(char *));
    k->raw = gw_xcalloc((size_t)n + 1, sizeof(char *));
    k->types = gw_xcalloc((size_t)n + 1, sizeof(char *));
    for (int i = 0; i < n; i++) {
        /* the primary key's columns come first; stop at the first duplicate (replident index) */
        int dup = 0;
        for (size_t j = 0; j < k->n; j++)
            dup |= strcmp(k->raw[j], PQgetvalue(res, i, 0)) == 0;
        if (dup) break;
        k->raw[k->n] = gw_xstrdup(PQgetvalue(res, i, 0));
        k->names[k->n] = gw_pg_ident(r->q, PQgetvalue(res, i, 0));
        k->types[k->n] = gw_xstrdup(PQgetvalue(res, i, 1));
        k->n++;
    }
    PQclear(res);
    return 0;
}

/* The query for one snapshot chunk of t into sql: in key order after the last key ($1…) when
 * after, else from the start; the whole table in one pass when it has no key. */
static void chunk_sql(gw_buf_t *sql, const snap_table_t *t, const keycols_t *k,
                      const gw_buf_t *order, const gw_buf_t *cmp, int after, long rows)
{
    gw_buf_reset(sql);
    if (k->n == 0)
        gw_buf_printf(sql, "SELECT * FROM %s", t->sql_ident);
    else if (!after)
        gw_buf_printf(sql, "SELECT * FROM %s ORDER BY %s LIMIT %ld", t->sql_ident, order->data,
                      rows);
    else
        gw_buf_printf(sql, "SELECT * FROM %s WHERE (%s) > (%s) ORDER BY %s LIMIT %ld", t->sql_ident,
                      order->data, cmp->data, order->data, rows);
}

static int snapshot_table(gw_repl_t *r, const snap_table_t *t, gw_err_t *err)
{
    char statekey[512], progress[4096] = "";
    snprintf(statekey, sizeof(statekey), "snap:%s:%s", r->version, t->qname);
    gw_storage_state_get(r->st, statekey, progress, sizeof(progress));
    if (strcmp(progress, "done") == 0) return 0;
    keycols_t k;
    if (load_keycols(r, t, &k, err) != 0) return GW_EPG;
    const char *pv[1] = {t->sql_ident};
    PGresult *res = gw_pg_query_params(
        r->q, "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1::regclass", 1, pv,
        err);
    uint64_t estimate =
        res != NULL && PQntuples(res) == 1 ? strtoull(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    atomic_fetch_add(&r->m_snapshot_estimate, estimate);
    gw_info("repl", "snapshotting a table", "table=%s estimated_rows=%llu resume=%s", t->qname,
            (unsigned long long)estimate, progress[0] != '\0' ? "yes" : "no");

    /* keyset pagination over the key columns; without keys, one pass (not resumable) */
    gw_buf_t sql = GW_BUF_INIT, order = GW_BUF_INIT, cmp = GW_BUF_INIT;
    for (size_t i = 0; i < k.n; i++) {
        gw_buf_printf(&order, "%s%s", i ? ", " : "", k.names[i]);
        gw_buf_printf(&cmp, "%s$%zu::%s", i ? ", " : "", i + 1, k.types[i]);
    }
    uint64_t done = 0;
    int rc = 0;
    char **last = gw_xcalloc(k.n + 1, sizeof(char *));
    /* resume: progress is a JSON-ish list of key texts separated by \x1f */
    if (progress[0] != '\0' && k.n > 0) {
        char *save = NULL, *copy = gw_xstrdup(progress);
        size_t i = 0;
        for (char *tok = strtok_r(copy, "\x1f", &save); tok != NULL && i < k.n;
             tok = strtok_r(NULL, "\x1f", &save))
            last[i++] = gw_xstrdup(tok);
        free(copy);
        if (i != k.n) {
            for (size_t j = 0; j < k.n; j++) {
                free(last[j]);
                last[j] = NULL;
            }
        }
    }
    int *is_key = NULL;
    const char **names = NULL, **values = NULL;
    size_t *lens = NULL;
    uint32_t *types = NULL;
    /* the next chunk's query runs in Postgres while this chunk is evaluated and written */
    chunk_sql(&sql, t, &k, &order, &cmp, last[0] != NULL, r->chunk_rows);
    res = gw_pg_query_params(r->q, sql.data, last[0] != NULL ? (int)k.n : 0,
                             (const char *const *)last, err);
    int inflight = 0;
    if (res == NULL) rc = GW_EPG;
    while (rc == 0 && res != NULL && !atomic_load(&r->stop)) {
        int nrows = PQntuples(res), ncols = PQnfields(res);
        free(is_key);
        free(names);
        free(values);
        free(lens);
        free(types);
        is_key = gw_xcalloc((size_t)ncols + 1, sizeof(int));
        names = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        values = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        lens = gw_xcalloc((size_t)ncols + 1, sizeof(size_t));
        types = gw_xcalloc((size_t)ncols + 1, sizeof(uint32_t));
        int keyidx[64];
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = PQftype(res, c);
            for (size_t j = 0; j < k.n && j < 64; j++)
                if (strcmp(k.raw[j], names[c]) == 0) {
                    is_key[c] = 1;
                    keyidx[j] = c;
                }
        }
        if (k.n == 0)
            for (int c = 0; c < ncols; c++)
                is_key[c] = 1; /* no key: the whole row identifies it (REPLICA IDENTITY FULL) */
        int more = k.n > 0 && nrows >= r->chunk_rows;
        gw_buf_t prog = GW_BUF_INIT;
        if (nrows > 0 && k.n > 0) {
            for (size_t j = 0; j < k.n; j++) {
                free(last[j]);
                last[j] = gw_xstrdup(PQgetvalue(res, nrows - 1, keyidx[j]));
                gw_buf_printf(&prog, "%s%s", j ? "\x1f" : "", last[j]);
            }
        }
        if (more) {
            chunk_sql(&sql, t, &k, &order, &cmp, 1, r->chunk_rows);
            rc = gw_pg_send_params(r->q, sql.data, (int)k.n, (const char *const *)last, err);
            inflight = rc == 0;
        }
        if (rc == 0 && nrows > 0 && !r->pipe_on) rc = gw_storage_begin(r->st, err);
        for (int i = 0; i < nrows && rc == 0; i++) {
            for (int c = 0; c < ncols; c++) {
                values[c] = PQgetisnull(res, i, c) ? NULL : PQgetvalue(res, i, c);
                lens[c] = (size_t)PQgetlength(res, i, c);
            }
            row_key(&r->key, (size_t)ncols, is_key, values, lens);
            rc = apply_row(r, t->schema, t->name, t->qname, (size_t)ncols, names, types, values,
                           lens, r->key.data, err);
        }
        if (rc == 0 && nrows > 0)
            rc = storage_direct(r, err); /* the chunk's rows are written; its txn is open */
        if (rc == 0 && nrows > 0 && k.n > 0)
            rc = gw_storage_state_set(r->st, statekey, prog.data, err);
        gw_buf_free(&prog);
        PQclear(res);
        res = NULL;
        if (rc == 0 && nrows > 0) rc = gw_storage_commit(r->st, 0, err);
        done += (uint64_t)nrows;
        atomic_fetch_add(&r->m_snapshot_rows, (uint64_t)nrows);
        if (nrows > 0) {
            char reason[256];
            snprintf(reason, sizeof(reason), "snapshot in progress: %llu of about %llu rows",
                     (unsigned long long)atomic_load(&r->m_snapshot_rows),
                     (unsigned long long)atomic_load(&r->m_snapshot_estimate));
            set_phase(r, 2, reason);
        }
        if (rc == 0 && r->test_snapshot_hold > 0 &&
            atomic_load(&r->m_snapshot_rows) >= r->test_snapshot_hold) {
            gw_info("repl", "test hold: snapshot paused", "table=%s rows=%llu", t->qname,
                    (unsigned long long)atomic_load(&r->m_snapshot_rows));
            while (!atomic_load(&r->stop))
                usleep(50000);
        }
        if (rc != 0 || !more) break;
        inflight = 0;
        res = gw_pg_wait_result(r->q, sql.data, err);
        if (res == NULL) rc = GW_EPG;
    }
    PQclear(res);
    if (inflight) {
        gw_err_t ignored;
        PQclear(gw_pg_wait_result(r->q, sql.data, &ignored)); /* the connection stays usable */
    }
    free(is_key);
    free(names);
    free(values);
    free(lens);
    free(types);
    for (size_t j = 0; j < k.n; j++)
        free(last[j]);
    free(last);
    gw_buf_free(&sql);
    gw_buf_free(&order);
    gw_buf_free(&cmp);
    keycols_free(&k);
    if (rc != 0 || atomic_load(&r->stop)) return rc != 0 ? rc : GW_EUNAVAIL;
    /* the table's "no checkpoint before" mark */
    res = gw_pg_query(r->q, "SELECT pg_current_wal_lsn()::text", err);
    if (res == NULL) return GW_EPG;
    uint64_t mark = 0;
    gw_lsn_parse(PQgetvalue(res, 0, 0), &mark);
    PQclear(res);
    if (mark > r->nocp_lsn) r->nocp_lsn = mark;
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)r->nocp_lsn);
    char nocpkey[64];
    snprintf(nocpkey, sizeof(nocpkey), "nocp:%s", r->version);
    rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_state_set(r->st, statekey, "done", err);
    if (rc == 0) rc = gw_storage_state_set(r->st, nocpkey, buf, err);
    if (rc == 0) rc = gw_storage_commit(r->st, 0, err);
    char lsntext[32];
    gw_info("repl", "snapshotted a table", "table=%s rows=%llu no_checkpoint_before=%s", t->qname,
            (unsigned long long)done, gw_lsn_format(mark, lsntext, sizeof(lsntext)));
    return rc;
}

static int snapshot(gw_repl_t *r, gw_err_t *err)
{
    char buf[64], nocpkey[64];
    snprintf(nocpkey, sizeof(nocpkey), "nocp:%s", r->version);
    if (gw_storage_state_get(r->st, nocpkey, buf, sizeof(buf)))
        r->nocp_lsn = strtoull(buf, NULL, 10);
    /* rows are evaluated here and written by the apply thread, as while streaming */
    int rc = pipe_start(r, err);
    for (size_t i = 0; rc == 0 && i < r->ntables && !atomic_load(&r->stop); i++)
        rc = snapshot_table(r, &r->tables[i], err);
    rc = pipe_stop(r, rc, err);
    if (rc != 0) return rc;
    return atomic_load(&r->stop) ? GW_EUNAVAIL : 0;
}

/* ---- slot health ---- */

#define POLL_INTERVAL_MS 5000
#define WARN_INTERVAL_MS 60000

static double lag_seconds(gw_repl_t *r, uint64_t lag_bytes)
{
    int64_t commit = atomic_load(&r->m_recv_commit_us);
    if (lag_bytes == 0 || commit == 0) return 0;
    int64_t d = gw_pgo_now() - commit;
    return d > 0 ? (double)d / 1e6 : 0;
}

static uint64_t lag_bytes(gw_repl_t *r)
{
    uint64_t lsn = atomic_load(&r->m_lsn), end = atomic_load(&r->m_server_wal_end);
    return end > lsn ? end - lsn : 0;
}

/* Read the slot's state from Postgres and storage totals; warn above the configured limits. */
static void poll_slot(gw_repl_t *r)
{
    uint64_t now = now_ms();
    if (r->poll_ms != 0 && now - r->poll_ms < POLL_INTERVAL_MS) return;
    double dt = r->poll_ms != 0 ? (double)(now - r->poll_ms) / 1000.0 : 0;
    r->poll_ms = now;
    gw_err_t err;
    const char *pv[1] = {r->slot};
    PGresult *res =
        r->q == NULL
            ? NULL
            : gw_pg_query_params(r->q,
                                 "SELECT coalesce(wal_status, ''), coalesce(safe_wal_size, "
                                 "-1), coalesce(pg_current_wal_lsn() - restart_lsn, 0), "
                                 "coalesce(confirmed_flush_lsn::text, '0/0'), "
                                 "pg_current_wal_lsn()::text FROM pg_replication_slots "
                                 "WHERE slot_name = $1",
                                 1, pv, &err);
    uint64_t last_op = atomic_load(&r->m_last_op);
    gw_storage_stats_t stats;
    int have_stats = gw_storage_stats(r->st, &stats) == 0;
    pthread_mutex_lock(&r->diag_lock);
    if (res != NULL && PQntuples(res) == 1) {
        r->diag.known = 1;
        snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "%s", PQgetvalue(res, 0, 0));
        r->diag.safe_wal_size = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
        r->diag.retained = strtoull(PQgetvalue(res, 0, 2), NULL, 10);
        gw_lsn_parse(PQgetvalue(res, 0, 3), &r->diag.confirmed);
        gw_lsn_parse(PQgetvalue(res, 0, 4), &r->diag.server_lsn);
    } else if (res != NULL) {
        r->diag.known = 0;
        snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "missing");
    }
    if (dt > 0 && last_op >= r->poll_last_op)
        r->diag.ops_per_s = (double)(last_op - r->poll_last_op) / dt;
    r->poll_last_op = last_op;
    if (have_stats) {
        r->diag.rows = stats.rows;
        r->diag.buckets = stats.buckets;
        r->diag.ops = stats.ops;
    }
    uint64_t retained = r->diag.retained;
    int known = r->diag.known;
    pthread_mutex_unlock(&r->diag_lock);
    PQclear(res);
    uint64_t lb = lag_bytes(r);
    double ls = lag_seconds(r, lb);
    if (ls > (double)r->lag_warn_seconds && now - r->warn_lag_ms >= WARN_INTERVAL_MS) {
        r->warn_lag_ms = now;
        gw_warn("repl", "replication lags behind Postgres",
                "slot=%s lag_seconds=%.0f "
                "lag_bytes=%llu limit_seconds=%ld",
                r->slot, ls, (unsigned long long)lb, r->lag_warn_seconds);
    }
    if (known && retained > (uint64_t)r->wal_warn_bytes &&
        now - r->warn_wal_ms >= WARN_INTERVAL_MS) {
        r->warn_wal_ms = now;
        gw_warn("repl", "the replication slot retains much WAL on the Postgres server",
                "slot=%s retained_bytes=%llu limit_bytes=%ld", r->slot,
                (unsigned long long)retained, r->wal_warn_bytes);
    }
}

void gw_repl_diagnostics(gw_repl_t *r, gw_buf_t *out)
{
    uint64_t lsn = atomic_load(&r->m_lsn), lb = lag_bytes(r);
    char t1[32], t2[32], t3[32];
    pthread_mutex_lock(&r->diag_lock);
    gw_buf_puts(out, "{\"slot\":");
    gw_buf_json_str(out, r->slot);
    gw_buf_puts(out, ",\"rules_version\":");
    gw_buf_json_str(out, r->version);
    gw_buf_puts(out, ",\"phase\":");
    gw_buf_json_str(out, phase_names[atomic_load(&r->m_phase)]);
    gw_buf_printf(out,
                  ",\"ready\":%s,\"stored_lsn\":\"%s\",\"confirmed_lsn\":\"%s\","
                  "\"server_lsn\":\"%s\",\"lag_bytes\":%llu,\"lag_seconds\":%.3f,",
                  atomic_load(&r->ready) ? "true" : "false", gw_lsn_format(lsn, t1, sizeof(t1)),
                  gw_lsn_format(r->diag.confirmed, t2, sizeof(t2)),
                  gw_lsn_format(r->diag.server_lsn, t3, sizeof(t3)), (unsigned long long)lb,
                  lag_seconds(r, lb));
    gw_buf_puts(out, "\"wal_status\":");
    gw_buf_json_str(out, r->diag.wal_status);
    if (r->diag.safe_wal_size >= 0)
        gw_buf_printf(out, ",\"safe_wal_size\":%lld", (long long)r->diag.safe_wal_size);
    else
        gw_buf_puts(out, ",\"safe_wal_size\":null");
    struct stat sb;
    uint64_t size = 0;
    char wal[1100];
    if (stat(r->storage_path, &sb) == 0) size += (uint64_t)sb.st_size;
    snprintf(wal, sizeof(wal), "%s-wal", r->storage_path);
    if (stat(wal, &sb) == 0) size += (uint64_t)sb.st_size;
    gw_buf_printf(out,
                  ",\"retained_wal_bytes\":%llu,\"ops_per_second\":%.1f,\"last_op\":\"%llu\","
                  "\"storage_bytes\":%llu,\"buckets\":%llu,\"rows\":%llu,\"ops\":%llu,"
                  "\"changes\":%llu,\"transactions\":%llu,\"last_error\":",
                  (unsigned long long)r->diag.retained, r->diag.ops_per_s,
                  (unsigned long long)atomic_load(&r->m_last_op), (unsigned long long)size,
                  (unsigned long long)r->diag.buckets, (unsigned long long)r->diag.rows,
                  (unsigned long long)r->diag.ops, (unsigned long long)atomic_load(&r->m_changes),
                  (unsigned long long)atomic_load(&r->m_txns));
    if (r->diag.last_error[0] != '\0')
        gw_buf_json_str(out, r->diag.last_error);
    else
        gw_buf_puts(out, "null");
    pthread_mutex_unlock(&r->diag_lock);
    /* a new rule version being built beside this one (the replicator thread sets and clears
     * next; a builder lives until that thread destroys it, after the switch or a discard) */
    pthread_mutex_lock(&r->next_lock);
    gw_repl_t *b = r->next;
    if (b != NULL) {
        pthread_mutex_lock(&b->diag_lock);
        gw_buf_puts(out, ",\"building\":{\"rules_version\":");
        gw_buf_json_str(out, b->version);
        gw_buf_puts(out, ",\"slot\":");
        gw_buf_json_str(out, b->slot);
        gw_buf_puts(out, ",\"phase\":");
        gw_buf_json_str(out, phase_names[atomic_load(&b->m_phase)]);
        gw_buf_printf(out,
                      ",\"consistent\":%s,\"snapshot_rows\":%llu,\"snapshot_rows_estimated\":%llu,"
                      "\"stored_lsn\":\"%s\",\"last_error\":",
                      gw_storage_consistent(b->st) ? "true" : "false",
                      (unsigned long long)atomic_load(&b->m_snapshot_rows),
                      (unsigned long long)atomic_load(&b->m_snapshot_estimate),
                      gw_lsn_format(atomic_load(&b->m_lsn), t1, sizeof(t1)));
        if (b->diag.last_error[0] != '\0')
            gw_buf_json_str(out, b->diag.last_error);
        else
            gw_buf_puts(out, "null");
        gw_buf_puts(out, "}");
        pthread_mutex_unlock(&b->diag_lock);
    }
    pthread_mutex_unlock(&r->next_lock);
    gw_buf_puts(out, "}");
}

static void drop_retired(gw_repl_t *r);
static int rule_versions(gw_repl_t *r, gw_err_t *err);

/* ---- compaction ---- */

/* Compact storage in its own transaction every replication.compact_interval seconds. */
static int maybe_compact(gw_repl_t *r, gw_err_t *err)
{
    uint64_t now = now_ms();
    if (r->compact_interval <= 0 || r->compact_ms == 0 ||
        now - r->compact_ms < (uint64_t)r->compact_interval * 1000)
        return 0;
    r->compact_ms = now;
    gw_storage_compact_stats_t st;
    int rc = pipe_drain(r, err);
    if (rc == 0) rc = gw_storage_begin(r->st, err);
    if (rc == 0) rc = gw_storage_compact(r->st, &st, err);
    if (rc == 0)
        rc = gw_storage_commit(r->st, 0, err);
    else
        gw_storage_rollback(r->st);
    if (rc == 0)
        gw_info("repl", "compacted bucket storage",
                "buckets=%llu moved=%llu cleared=%llu ops_before=%llu ops_after=%llu ms=%llu",
                (unsigned long long)st.buckets, (unsigned long long)st.moved,
                (unsigned long long)st.cleared, (unsigned long long)st.ops_before,
                (unsigned long long)st.ops_after, (unsigned long long)(now_ms() - now));
    return rc;
}

/* ---- streaming ---- */

static int send_status(gw_repl_t *r, uint64_t lsn, int reply, gw_err_t *err)
{
    char msg[34];
    gw_pgo_status_update(msg, lsn, lsn, lsn, gw_pgo_now(), reply);
    if (PQputCopyData(r->rc, msg, sizeof(msg)) != 1 || PQflush(r->rc) != 0) {
        char m[256];
        return gw_err_set(err, GW_EPG, "repl", "could not send a status update: %s",
                          gw_pg_error(r->rc, m, sizeof(m)));
    }
    clock_gettime(CLOCK_MONOTONIC, &r->last_status);
    return 0;
}

static int batch_begin(gw_repl_t *r, gw_err_t *err)
{
    if (r->batch_open) return 0;
    int rc = r->pipe_on ? 0 : gw_storage_begin(r->st, err);
    if (rc == 0) {
        r->batch_open = 1;
        r->batch_changes = 0;
        r->batch_source_us = 0;
        clock_gettime(CLOCK_MONOTONIC, &r->batch_started);
    }
    return rc;
}

/* Acknowledge the durable LSN to Postgres when it moved (invariant 1). */
static int maybe_ack(gw_repl_t *r, gw_err_t *err)
{
    uint64_t d = atomic_load(&r->durable_lsn);
    if (d <= r->acked_lsn || r->test_replay) return 0;
    r->acked_lsn = d;
    return send_status(r, d, 0, err);
}

/* Commit storage's open transaction (begun here when empty: an LSN-only checkpoint) at lsn;
 * with wait, return once durable. Runs on the apply thread, or on the replicator when the
 * pipeline is drained or off. source_us: Postgres commit time of the first transaction. */
static int do_commit(gw_repl_t *r, uint64_t lsn, int wait, int64_t source_us, gw_err_t *err)
{
    if (gw_storage_begin(r->st, err) != 0) return GW_EIO;
    if (!gw_storage_consistent(r->st) && lsn >= r->nocp_lsn && lsn > 0) {
        if (gw_storage_set_consistent(r->st, 1, err) != 0) return GW_EIO;
        char t[32];
        if (r->builder)
            gw_info("repl", "the new rule version has a consistent checkpoint", "version=%s lsn=%s",
                    r->version, gw_lsn_format(lsn, t, sizeof(t)));
        else
            gw_info("repl", "storage has a consistent checkpoint; ready to serve", "lsn=%s",
                    gw_lsn_format(lsn, t, sizeof(t)));
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = wait ? gw_storage_commit(r->st, lsn, err) : gw_storage_commit_async(r->st, lsn, err);
    if (rc != 0) return rc;
    atomic_fetch_add(&r->m_commits, 1);
    atomic_fetch_add(&r->m_commit_us, elapsed_us(&t0));
    gw_hist_since(&r->h_commit, &t0);
    if (source_us != 0) {
        /* Postgres commit times count microseconds from 2000-01-01 */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        int64_t now_pg = ((int64_t)now.tv_sec - 946684800) * 1000000 + now.tv_nsec / 1000;
        gw_hist_observe(&r->h_source, (double)(now_pg - source_us) / 1e3);
    }
    atomic_store(&r->m_lsn, lsn);
    {
        uint64_t lo, l2;
        gw_storage_checkpoint(r->st, &lo, &l2);
        atomic_store(&r->m_last_op, lo);
    }
    if (gw_storage_consistent(r->st)) {
        gw_ready_set(r->ready_id, 1, NULL);
        atomic_store(&r->ready, 1);
    }
    return 0;
}

/* ---- apply pipeline ----
 *
 * Items (a row's evaluated ops, a delete, a commit) are queued in segments of SEG_ITEMS; the
 * apply thread takes whole segments and writes them to storage in order. At most PIPE_MAX_SEGS
 * segments wait (the replicator blocks beyond: bounded memory). The first storage error stops
 * the apply thread's writes; the replicator sees it at its next hand-over or drain and the
 * stream ends with it (the open storage transaction is then rolled back). */
enum { IT_PUT, IT_DELETE, IT_COMMIT, SEG_ITEMS = 256, PIPE_MAX_SEGS = 64 };

/* Everything an item points to lives in its segment's mem (offsets, resolved by the apply
 * thread once the segment is handed over and no longer grows): one allocation per segment,
 * freed by the apply thread, instead of several per row crossing threads. The PUT lines are
 * encoded here, on the replicator thread (gw_storage_encode_put). */
typedef struct op_rec {
    size_t bucket, type, id, data, data_len, tail, tail_len, ident_off, ident_len;
    uint32_t checksum;
} op_rec_t;

typedef struct item {
    int kind;
    const char *table;        /* interned in qnames */
    size_t key;               /* offsets in the segment's mem */
    size_t ops, nops;         /* nops op_rec_t in recs, from index ops */
    size_t lookups, nlookups; /* pairs of (key, params) string offsets in mem, from index lookups */
    size_t copy, copy_len;    /* copy_len 0: none */
    uint64_t lsn;             /* IT_COMMIT */
    int64_t source_us;        /* IT_COMMIT */
} item_t;

typedef struct seg {
    struct seg *next;
    size_t n;
    gw_buf_t mem;  /* strings and copies */
    gw_buf_t recs; /* op_rec_t array */
    gw_buf_t lks;  /* size_t pairs: lookup key and params offsets */
    item_t it[SEG_ITEMS];
} seg_t;

static size_t mem_put(gw_buf_t *m, const void *p, size_t n)
{
    size_t at = m->len;
    gw_buf_append(m, p, n);
    gw_buf_append(m, "", 1); /* NUL-terminated */
    return at;
}

static void seg_free(seg_t *sg)
{
    gw_buf_free(&sg->mem);
    gw_buf_free(&sg->recs);
    gw_buf_free(&sg->lks);
    free(sg);
}

/* The apply thread's views of an item (reused buffers). */
typedef struct apply_scratch {
    rules_ops_t ops;
    rules_lookups_t lookups;
    gw_op_tail_t *tails;
    size_t cap_tails;
} apply_scratch_t;

static int apply_item(gw_repl_t *r, const seg_t *sg, const item_t *it, apply_scratch_t *x,
                      gw_err_t *err)
{
    if (it->kind == IT_COMMIT) return do_commit(r, it->lsn, 0, it->source_us, err);
    if (gw_storage_begin(r->st, err) != 0) return GW_EIO;
    const char *mem = sg->mem.data;
    gw_row_ref_t ref = {.table = it->table, .key = mem + it->key};
    if (it->kind == IT_DELETE) return gw_storage_delete_row(r->st, &ref, err);
    if (it->nops > x->ops.cap) {
        x->ops.cap = it->nops;
        x->ops.items = gw_xrealloc(x->ops.items, x->ops.cap * sizeof(rules_op_t));
    }
    if (it->nops > x->cap_tails) {
        x->cap_tails = it->nops;
        x->tails = gw_xrealloc(x->tails, x->cap_tails * sizeof(gw_op_tail_t));
    }
    for (size_t i = 0; i < it->nops; i++) {
        op_rec_t o;
        memcpy(&o, sg->recs.data + (it->ops + i) * sizeof(op_rec_t), sizeof(o));
        x->ops.items[i] = (rules_op_t){.bucket = (char *)mem + o.bucket,
                                       .object_type = (char *)mem + o.type,
                                       .object_id = (char *)mem + o.id,
                                       .data = (char *)mem + o.data,
                                       .data_len = o.data_len,
                                       .checksum = o.checksum};
        x->tails[i] = (gw_op_tail_t){.text = mem + o.tail,
                                     .len = o.tail_len,
                                     .ident_off = o.ident_off,
                                     .ident_len = o.ident_len};
    }
    x->ops.n = it->nops;
    if (it->nlookups > x->lookups.cap) {
        x->lookups.cap = it->nlookups;
        x->lookups.items = gw_xrealloc(x->lookups.items, x->lookups.cap * sizeof(rules_lookup_t));
    }
    for (size_t i = 0; i < it->nlookups; i++) {
        size_t kp[2];
        memcpy(kp, sg->lks.data + (it->lookups + i) * sizeof(kp), sizeof(kp));
        x->lookups.items[i] =
            (rules_lookup_t){.key = (char *)mem + kp[0], .params = (char *)mem + kp[1]};
    }
    x->lookups.n = it->nlookups;
    return gw_storage_put_row(r->st, &ref, &x->ops, x->tails, &x->lookups,
                              it->copy_len ? mem + it->copy : NULL, it->copy_len, err);
}

static void *apply_main(void *arg)
{
    pthread_setname_np(pthread_self(), "ferry-apply"); /* top -H, perf */
    gw_repl_t *r = arg;
    apply_scratch_t x = {0};
    pthread_mutex_lock(&r->plock);
    for (;;) {
        if (r->phead == NULL) {
            if (r->pstop) break;
            pthread_cond_wait(&r->pwork, &r->plock);
            continue;
        }
        seg_t *sg = r->phead;
        r->phead = sg->next;
        if (r->phead == NULL) r->ptail = NULL;
        r->pqueued--;
        r->pbusy = 1;
        int failed = r->pfailed;
        pthread_mutex_unlock(&r->plock);
        gw_err_t e = {0};
        int rc = 0;
        for (size_t i = 0; i < sg->n && !failed && rc == 0; i++)
            rc = apply_item(r, sg, &sg->it[i], &x, &e);
        seg_free(sg);
        pthread_mutex_lock(&r->plock);
        if (rc != 0 && !r->pfailed) {
            r->pfailed = 1;
            r->perr = e;
        }
        r->pbusy = 0;
        pthread_cond_broadcast(&r->pidle);
    }
    pthread_mutex_unlock(&r->plock);
    free(x.ops.items);
    free(x.lookups.items);
    free(x.tails);
    return NULL;
}

/* Hand the segment being filled to the apply thread (waits while the queue is full). */
static int pipe_hand(gw_repl_t *r, gw_err_t *err)
{
    seg_t *sg = r->pcur;
    r->pcur = NULL;
    pthread_mutex_lock(&r->plock);
    while (sg != NULL && r->pqueued >= PIPE_MAX_SEGS && !r->pfailed)
        pthread_cond_wait(&r->pidle, &r->plock);
    if (sg != NULL) {
        if (r->ptail != NULL)
            r->ptail->next = sg;
        else
            r->phead = sg;
        r->ptail = sg;
        r->pqueued++;
        pthread_cond_signal(&r->pwork);
    }
    int failed = r->pfailed;
    if (failed && err != NULL) *err = r->perr;
    pthread_mutex_unlock(&r->plock);
    return failed ? GW_EIO : 0;
}

/* Wait until the apply thread has written everything queued; then the replicator may use the
 * storage writer itself until it queues again. 0, or the apply thread's error. */
static int pipe_drain(gw_repl_t *r, gw_err_t *err)
{
    if (!r->pipe_on) return 0;
    int rc = pipe_hand(r, err);
    pthread_mutex_lock(&r->plock);
    while ((r->phead != NULL || r->pbusy) && !r->pfailed)
        pthread_cond_wait(&r->pidle, &r->plock);
    if (r->pfailed) {
        if (err != NULL) *err = r->perr;
        rc = GW_EIO;
    }
    pthread_mutex_unlock(&r->plock);
    return rc;
}

/* A free item slot (hands full segments over). The caller fills it completely. */
static item_t *pipe_slot(gw_repl_t *r, gw_err_t *err, int *rc)
{
    *rc = 0;
    if (r->pcur != NULL && r->pcur->n == SEG_ITEMS) *rc = pipe_hand(r, err);
    if (*rc != 0) return NULL;
    if (r->pcur == NULL) r->pcur = gw_xcalloc(1, sizeof(seg_t));
    item_t *it = &r->pcur->it[r->pcur->n++];
    memset(it, 0, sizeof(*it));
    return it;
}

static const char *intern(gw_repl_t *r, const char *name)
{
    char *v = gw_map_get(&r->qnames, name);
    if (v == NULL) {
        v = gw_xstrdup(name);
        gw_map_put(&r->qnames, name, v);
    }
    return v;
}

/* Queue a row's new state: r->ops (with their lines encoded here), r->lookups and copy are
 * copied into the segment. */
static int pipe_put(gw_repl_t *r, const char *table, const char *key, const void *copy,
                    size_t copy_len, gw_err_t *err)
{
    int rc;
    item_t *it = pipe_slot(r, err, &rc);
    if (it == NULL) return rc;
    seg_t *sg = r->pcur;
    it->kind = IT_PUT;
    it->table = intern(r, table);
    it->key = mem_put(&sg->mem, key, strlen(key));
    char subkey[2048];
    gw_storage_subkey(table, key, subkey, sizeof(subkey));
    it->ops = sg->recs.len / sizeof(op_rec_t);
    it->nops = r->ops.n;
    for (size_t i = 0; i < r->ops.n; i++) {
        const rules_op_t *o = &r->ops.items[i];
        op_rec_t rec = {0};
        rec.bucket = mem_put(&sg->mem, o->bucket, strlen(o->bucket));
        rec.type = mem_put(&sg->mem, o->object_type, strlen(o->object_type));
        rec.id = mem_put(&sg->mem, o->object_id, strlen(o->object_id));
        rec.data = mem_put(&sg->mem, o->data, o->data_len);
        rec.data_len = o->data_len;
        rec.checksum = o->checksum;
        gw_op_tail_t t;
        rec.tail = sg->mem.len;
        gw_storage_encode_put(&sg->mem, o, subkey, &t);
        rec.tail_len = t.len;
        rec.ident_off = t.ident_off;
        rec.ident_len = t.ident_len;
        gw_buf_append(&sg->recs, &rec, sizeof(rec));
    }
    it->lookups = sg->lks.len / (2 * sizeof(size_t));
    it->nlookups = r->lookups.n;
    for (size_t i = 0; i < r->lookups.n; i++) {
        size_t kp[2] = {
            mem_put(&sg->mem, r->lookups.items[i].key, strlen(r->lookups.items[i].key)),
            mem_put(&sg->mem, r->lookups.items[i].params, strlen(r->lookups.items[i].params))};
        gw_buf_append(&sg->lks, kp, sizeof(kp));
    }
    if (copy != NULL && copy_len > 0) {
        it->copy = mem_put(&sg->mem, copy, copy_len);
        it->copy_len = copy_len;
    }
    return 0;
}

/* Delete a row: queued while streaming, else directly. */
static int store_delete(gw_repl_t *r, const char *table, const char *key, gw_err_t *err)
{
    if (!r->pipe_on) {
        gw_row_ref_t ref = {.table = table, .key = key};
        return gw_storage_delete_row(r->st, &ref, err);
    }
    int rc;
    item_t *it = pipe_slot(r, err, &rc);
    if (it == NULL) return rc;
    it->kind = IT_DELETE;
    it->table = intern(r, table);
    it->key = mem_put(&r->pcur->mem, key, strlen(key));
    return 0;
}

/* For the replicator's own storage writes while streaming: drain, and open a transaction. */
static int storage_direct(gw_repl_t *r, gw_err_t *err)
{
    if (!r->pipe_on) return 0;
    if (pipe_drain(r, err) != 0) return GW_EIO;
    return gw_storage_begin(r->st, err);
}

static void free_qname(const char *key, void *value, void *ud)
{
    (void)key;
    (void)ud;
    free(value);
}

static int pipe_start(gw_repl_t *r, gw_err_t *err)
{
    pthread_mutex_init(&r->plock, NULL);
    pthread_cond_init(&r->pwork, NULL);
    pthread_cond_init(&r->pidle, NULL);
    r->phead = r->ptail = r->pcur = NULL;
    r->pqueued = 0;
    r->pbusy = r->pstop = r->pfailed = 0;
    gw_map_init(&r->qnames);
    if (pthread_create(&r->apply_tid, NULL, apply_main, r) != 0) {
        pthread_mutex_destroy(&r->plock);
        pthread_cond_destroy(&r->pwork);
        pthread_cond_destroy(&r->pidle);
        gw_map_free(&r->qnames);
        return gw_err_set(err, GW_ESYS, "repl", "could not start the apply thread");
    }
    r->pipe_on = 1;
    return 0;
}

/* Drain and stop the apply thread. Returns rc (the caller's result so far, err already set) or,
 * when rc is 0, the apply thread's error in err. */
static int pipe_stop(gw_repl_t *r, int rc, gw_err_t *err)
{
    if (!r->pipe_on) return rc;
    gw_err_t perr;
    int prc = pipe_drain(r, &perr);
    if (rc == 0 && prc != 0) {
        *err = perr;
        rc = prc;
    }
    pthread_mutex_lock(&r->plock);
    r->pstop = 1;
    pthread_cond_signal(&r->pwork);
    pthread_mutex_unlock(&r->plock);
    pthread_join(r->apply_tid, NULL);
    if (r->pcur != NULL) { /* left when the apply thread failed */
        seg_free(r->pcur);
        r->pcur = NULL;
    }
    pthread_mutex_destroy(&r->plock);
    pthread_cond_destroy(&r->pwork);
    pthread_cond_destroy(&r->pidle);
    gw_map_each(&r->qnames, free_qname, NULL);
    gw_map_free(&r->qnames);
    r->pipe_on = 0;
    return rc;
}

/* Commit the open batch at batch_lsn. While streaming the commit is queued (the syncer makes
 * it durable while the next batch is built); with wait, it is made here and this returns once
 * durable. Acknowledged to Postgres only once durable (maybe_ack), never before. */
static int flush_batch_mode(gw_repl_t *r, int wait, gw_err_t *err)
{
    if (!r->batch_open) return 0;
    uint64_t lsn = r->batch_lsn;
    int64_t source_us = r->batch_source_us;
    r->batch_open = 0;
    if (lsn > r->pos_lsn) r->pos_lsn = lsn;
    int rc = 0;
    if (r->pipe_on && !wait) {
        item_t *it = pipe_slot(r, err, &rc);
        if (it != NULL) {
            it->kind = IT_COMMIT;
            it->lsn = lsn;
            it->source_us = source_us;
            rc = pipe_hand(r, err); /* never hold a commit back */
        }
    } else {
        rc = pipe_drain(r, err);
        if (rc == 0) rc = do_commit(r, lsn, wait, source_us, err);
    }
    if (rc == 0) rc = maybe_ack(r, err);
    return rc;
}

/* The streaming path: the syncer makes the batch durable while the next one is built. */
static int flush_batch(gw_repl_t *r, gw_err_t *err)
{
    return flush_batch_mode(r, 0, err);
}

void gw_repl_submit(gw_repl_t *r, gw_repl_task_t *task)
{
    task->next = NULL;
    pthread_mutex_lock(&r->task_lock);
    if (r->task_tail != NULL)
        r->task_tail->next = task;
    else
        r->task_head = task;
    r->task_tail = task;
    pthread_mutex_unlock(&r->task_lock);
    uint64_t one = 1;
    ssize_t w = write(r->task_fd, &one, sizeof(one));
    (void)w;
}

int gw_repl_ready(gw_repl_t *r)
{
    return atomic_load(&r->ready);
}

/* Run queued tasks in the open batch, commit it, then report each result. */
static int run_tasks(gw_repl_t *r, gw_err_t *err)
{
    uint64_t drain;
    ssize_t n = read(r->task_fd, &drain, sizeof(drain));
    (void)n;
    pthread_mutex_lock(&r->task_lock);
    gw_repl_task_t *list = r->task_head;
    r->task_head = r->task_tail = NULL;
    pthread_mutex_unlock(&r->task_lock);
    if (list == NULL) return 0;
    int rc = batch_begin(r, err);
    if (rc == 0) rc = storage_direct(r, err);
    for (gw_repl_task_t *t = list; t != NULL; t = t->next)
        t->rc = rc == 0 ? t->run(r->st, t->ud, err) : rc;
    if (rc == 0) rc = flush_batch_mode(r, 1, err); /* results are reported once durable */
    for (gw_repl_task_t *t = list, *next; t != NULL; t = next) {
        next = t->next;
        t->done(t->ud, rc != 0 ? rc : t->rc);
    }
    return rc;
}

static rel_t *find_rel(gw_repl_t *r, uint32_t relid)
{
    char k[16];
    snprintf(k, sizeof(k), "%u", relid);
    return gw_map_get(&r->rels, k);
}

static void on_relation(gw_repl_t *r, const gw_pgo_msg_t *m)
{
    char k[16];
    snprintf(k, sizeof(k), "%u", m->u.relation.relid);
    rel_t *old = gw_map_del(&r->rels, k);
    if (old != NULL) free_rel(NULL, old, NULL);
    rel_t *rel = gw_xcalloc(1, sizeof(*rel));
    rel->relid = m->u.relation.relid;
    rel->schema = gw_xstrdup(m->u.relation.nspname);
    rel->name = gw_xstrdup(m->u.relation.relname);
    size_t ql = strlen(rel->schema) + strlen(rel->name) + 2;
    rel->qname = gw_xmalloc(ql);
    snprintf(rel->qname, ql, "%s.%s", rel->schema, rel->name);
    rel->tracked = is_tracked(r, rel->schema, rel->name);
    rel->replident = m->u.relation.replident;
    rel->ncols = m->u.relation.ncols;
    rel->names = gw_xcalloc(rel->ncols + 1, sizeof(char *));
    rel->types = gw_xcalloc(rel->ncols + 1, sizeof(uint32_t));
    rel->is_key = gw_xcalloc(rel->ncols + 1, sizeof(int));
    for (size_t i = 0; i < rel->ncols; i++) {
        rel->names[i] = gw_xstrdup(m->u.relation.cols[i].name);
        rel->types[i] = m->u.relation.cols[i].type_oid;
        rel->is_key[i] = (m->u.relation.cols[i].flags & 1) != 0;
    }
    gw_map_put(&r->rels, k, rel);
}

/* Resolve a tuple into values/lens; 'u' values from old tuple or stored copy. 0 when complete. */
static int resolve_tuple(gw_repl_t *r, rel_t *rel, const gw_pgo_tuple_t *tup,
                         const gw_pgo_tuple_t *old, const char *key, const char **values,
                         size_t *lens, void **copy_out)
{
    void *copy = NULL;
    size_t copy_len = 0;
    int have_copy = -1;
    for (size_t i = 0; i < rel->ncols; i++) {
        const gw_pgo_value_t *v = i < tup->ncols ? &tup->cols[i] : NULL;
        if (v == NULL || v->kind == 'n') {
            values[i] = NULL;
            lens[i] = 0;
        } else if (v->kind == 't' || v->kind == 'b') {
            values[i] = v->data;
            lens[i] = v->len;
        } else { /* 'u': unchanged TOAST */
            if (old != NULL && i < old->ncols && (old->cols[i].kind == 't')) {
                values[i] = old->cols[i].data;
                lens[i] = old->cols[i].len;
                continue;
            }
            if (have_copy < 0) {
                gw_row_ref_t ref = {.table = rel->qname, .key = key};
                have_copy = gw_storage_row_copy(r->st, &ref, &copy, &copy_len);
            }
            const char *val;
            size_t len;
            if (have_copy > 0 && gw_storage_row_find(copy, copy_len, rel->names[i], &val, &len)) {
                values[i] = val;
                lens[i] = len;
            } else {
                free(copy);
                *copy_out = NULL;
                return -1;
            }
        }
    }
    *copy_out = copy;
    return 0;
}

/* Re-read a row by key when its TOAST values cannot be merged (invariant 4). */
static int reread_row(gw_repl_t *r, rel_t *rel, const char *key, gw_err_t *err)
{
    gw_buf_t sql = GW_BUF_INIT;
    size_t nk = 0;
    const char *params[64];
    char *qs = gw_pg_ident(r->q, rel->schema), *qn = gw_pg_ident(r->q, rel->name);
    gw_buf_printf(&sql, "SELECT * FROM %s.%s WHERE ", qs, qn);
    free(qs);
    free(qn);
    /* the key text: one value, or a JSON array of values (see row_key) */
    size_t nkeys = 0;
    for (size_t i = 0; i < rel->ncols; i++)
        nkeys += rel->is_key[i] != 0;
    json_t *arr = nkeys == 1 ? NULL : json_loads(key, 0, NULL);
    if (nkeys > 64 || (nkeys != 1 && (!json_is_array(arr) || json_array_size(arr) != nkeys))) {
        json_decref(arr);
        gw_buf_free(&sql);
        gw_error("repl", "cannot re-read a row with unchanged TOAST values; skipping it",
                 "table=%s key_columns=%zu", rel->qname, nkeys);
        return 0;
    }
    for (size_t i = 0; i < rel->ncols; i++) {
        if (!rel->is_key[i]) continue;
        char *qc = gw_pg_ident(r->q, rel->names[i]);
        gw_buf_printf(&sql, "%s%s::text IS NOT DISTINCT FROM $%zu", nk > 0 ? " AND " : "", qc,
                      nk + 1);
        free(qc);
        params[nk] = arr == NULL ? key : json_string_value(json_array_get(arr, nk));
        nk++;
    }
    PGresult *res = gw_pg_query_params(r->q, sql.data, (int)nk, params, err);
    gw_buf_free(&sql);
    json_decref(arr);
    if (res == NULL) return GW_EPG;
    int rc = 0;
    if (PQntuples(res) == 1) {
        int ncols = PQnfields(res);
        const char **names = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        const char **values = gw_xcalloc((size_t)ncols + 1, sizeof(char *));
        size_t *lens = gw_xcalloc((size_t)ncols + 1, sizeof(size_t));
        uint32_t *types = gw_xcalloc((size_t)ncols + 1, sizeof(uint32_t));
        for (int c = 0; c < ncols; c++) {
            names[c] = PQfname(res, c);
            types[c] = PQftype(res, c);
            values[c] = PQgetisnull(res, 0, c) ? NULL : PQgetvalue(res, 0, c);
            lens[c] = (size_t)PQgetlength(res, 0, c);
        }
        rc = apply_row(r, rel->schema, rel->name, rel->qname, (size_t)ncols, names, types, values,
                       lens, key, err);
        free(names);
        free(values);
        free(lens);
        free(types);
    }
    PQclear(res);
    return rc;
}

static int on_change(gw_repl_t *r, const gw_pgo_msg_t *m, gw_err_t *err)
{
    uint32_t relid = m->kind == GW_PGO_INSERT   ? m->u.insert.relid
                     : m->kind == GW_PGO_UPDATE ? m->u.update.relid
                                                : m->u.del.relid;
    rel_t *rel = find_rel(r, relid);
    if (rel == NULL)
        return gw_err_set(err, GW_EINVAL, "repl", "change for unknown relation %u", relid);
    if (!rel->tracked) return 0;
    int rc = batch_begin(r, err);
    if (rc != 0) return rc;
    r->batch_changes++;
    atomic_fetch_add(&r->m_changes, 1);
    const char **values = gw_arena_alloc(&r->arena, sizeof(char *) * (rel->ncols + 1));
    size_t *lens = gw_arena_alloc(&r->arena, sizeof(size_t) * (rel->ncols + 1));
    const gw_pgo_tuple_t *keytup = NULL;
    if (m->kind == GW_PGO_DELETE)
        keytup = &m->u.del.oldtup;
    else if (m->kind == GW_PGO_UPDATE && m->u.update.oldkind != 0)
        keytup = &m->u.update.oldtup;
    char *oldkey = NULL;
    if (keytup != NULL) {
        for (size_t i = 0; i < rel->ncols; i++) {
            const gw_pgo_value_t *v = i < keytup->ncols ? &keytup->cols[i] : NULL;
            values[i] = v != NULL && v->kind == 't' ? v->data : NULL;
            lens[i] = v != NULL && v->kind == 't' ? v->len : 0;
        }
        /* with REPLICA IDENTITY FULL every column is flagged key in the Relation message */
        row_key(&r->key, rel->ncols, rel->is_key, values, lens);
        oldkey = gw_arena_strndup(&r->arena, r->key.data, r->key.len);
    }
    if (m->kind == GW_PGO_DELETE) return store_delete(r, rel->qname, oldkey, err);
    const gw_pgo_tuple_t *tup =
        m->kind == GW_PGO_INSERT ? &m->u.insert.newtup : &m->u.update.newtup;
    /* key of the new row (key columns are never unchanged-TOAST) */
    for (size_t i = 0; i < rel->ncols; i++) {
        const gw_pgo_value_t *v = i < tup->ncols ? &tup->cols[i] : NULL;
        values[i] = v != NULL && v->kind == 't' ? v->data : NULL;
        lens[i] = v != NULL && v->kind == 't' ? v->len : 0;
    }
    row_key(&r->key, rel->ncols, rel->is_key, values, lens);
    char *newkey = gw_arena_strndup(&r->arena, r->key.data, r->key.len);
    if (oldkey != NULL && strcmp(oldkey, newkey) != 0) {
        /* the key changed: delete the old row, insert the new one */
        rc = store_delete(r, rel->qname, oldkey, err);
        if (rc != 0) return rc;
    }
    const gw_pgo_tuple_t *old =
        m->kind == GW_PGO_UPDATE && m->u.update.oldkind == 'O' ? &m->u.update.oldtup : NULL;
    void *copy = NULL;
    for (size_t i = 0; i < tup->ncols; i++)
        if (tup->cols[i].kind == 'u') {
            /* the stored copy is read from the writer: let the apply thread catch up */
            if (pipe_drain(r, err) != 0) return GW_EIO;
            break;
        }
    if (resolve_tuple(r, rel, tup, old, newkey, values, lens, &copy) != 0)
        return reread_row(r, rel, newkey, err);
    rc = apply_row(r, rel->schema, rel->name, rel->qname, rel->ncols,
                   (const char *const *)rel->names, rel->types, values, lens, newkey, err);
    free(copy);
    return rc;
}

static int on_truncate(gw_repl_t *r, const gw_pgo_msg_t *m, gw_err_t *err)
{
    for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
        rel_t *rel = find_rel(r, m->u.truncate.relids[i]);
        if (rel == NULL || !rel->tracked) continue;
        int rc = batch_begin(r, err);
        if (rc == 0) rc = storage_direct(r, err);
        if (rc == 0) rc = gw_storage_truncate(r->st, rel->qname, err);
        if (rc != 0) return rc;
        gw_info("repl", "table truncated; removed its rows", "table=%s", rel->qname);
    }
    return 0;
}

static int on_xlogdata(gw_repl_t *r, const gw_pgo_frame_t *f, gw_err_t *err)
{
    gw_pgo_msg_t m;
    gw_arena_reset(&r->arena);
    int rc = gw_pgo_decode(f->payload, f->payload_len, &r->arena, &m, err);
    if (rc != 0) return rc;
    uint64_t stored_lsn = r->pos_lsn; /* everything below was applied (invariant 2) */
    switch (m.kind) {
    case GW_PGO_BEGIN:
        r->in_pg_txn = 1;
        r->skip_txn = m.u.begin.final_lsn < stored_lsn;
        atomic_store(&r->m_recv_commit_us, m.u.begin.commit_time);
        return 0;
    case GW_PGO_COMMIT:
        r->in_pg_txn = 0;
        atomic_fetch_add(&r->m_txns, 1);
        if (!r->skip_txn && r->batch_open && m.u.commit.end_lsn > r->batch_lsn)
            r->batch_lsn = m.u.commit.end_lsn;
        if (!r->skip_txn && r->batch_open && r->batch_source_us == 0)
            r->batch_source_us = m.u.commit.commit_time;
        r->skip_txn = 0;
        return 0;
    case GW_PGO_RELATION:
        on_relation(r, &m);
        return 0;
    case GW_PGO_INSERT:
    case GW_PGO_UPDATE:
    case GW_PGO_DELETE:
        return r->skip_txn ? 0 : on_change(r, &m, err);
    case GW_PGO_TRUNCATE:
        return r->skip_txn ? 0 : on_truncate(r, &m, err);
    case GW_PGO_MESSAGE:
        if (!r->in_pg_txn && m.u.message.lsn > stored_lsn) {
            /* a non-transactional message (write checkpoint marker): an LSN-only checkpoint */
            rc = batch_begin(r, err);
            if (rc == 0 && m.u.message.lsn > r->batch_lsn) r->batch_lsn = m.u.message.lsn;
            return rc;
        }
        return 0;
    default:
        return 0;
    }
}

static int stream(gw_repl_t *r, gw_err_t *err)
{
    uint64_t last_op, lsn;
    gw_storage_checkpoint(r->st, &last_op, &lsn);
    char lsntext[32], sql[512];
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL %s (proto_version '1', publication_names '%s', "
             "messages 'true')",
             r->slot, gw_lsn_format(r->test_replay ? 0 : lsn, lsntext, sizeof(lsntext)),
             r->publication);
    PGresult *res = PQexec(r->rc, sql);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        char m[512];
        gw_err_set(err, GW_EPG, "repl", "could not start replication: %s",
                   PQresultErrorMessage(res)[0] ? PQresultErrorMessage(res)
                                                : gw_pg_error(r->rc, m, sizeof(m)));
        PQclear(res);
        return GW_EPG;
    }
    PQclear(res);
    r->acked_lsn = lsn;
    r->batch_lsn = lsn;
    r->pos_lsn = lsn;
    atomic_store(&r->m_last_op, last_op);
    atomic_store(&r->m_lsn, lsn); /* what storage holds, before this run's first commit */
    if (pipe_start(r, err) != 0) return GW_ESYS;
    gw_info("repl", "streaming changes", "slot=%s from=%s", r->slot, lsntext);
    r->poll_ms = 0;
    poll_slot(r);
    set_phase(r, 3,
              gw_storage_consistent(r->st) ? NULL : "waiting for the stream to pass the snapshot");
    clock_gettime(CLOCK_MONOTONIC, &r->last_status);
    int rc = 0;
    uint64_t last_lsn_only = 0, ask_ms = 0;
    while (rc == 0 && !atomic_load(&r->stop) && !r->switch_wanted) {
        char *buf = NULL;
        int len = PQgetCopyData(r->rc, &buf, 1);
        if (len > 0) {
            gw_pgo_frame_t f;
            rc = gw_pgo_frame(buf, (size_t)len, &f, err);
            if (rc == 0 && f.kind == GW_PGO_XLOGDATA) {
                atomic_store(&r->m_server_wal_end, f.wal_end);
                rc = on_xlogdata(r, &f, err);
            } else if (rc == 0 && f.kind == GW_PGO_KEEPALIVE) {
                atomic_store(&r->m_server_wal_end, f.wal_end);
                if (!r->in_pg_txn && !r->batch_open && f.wal_end > r->pos_lsn &&
                    (f.reply_requested || !gw_storage_consistent(r->st) ||
                     now_ms() - last_lsn_only >= 1000)) {
                    /* nothing pending: an LSN-only checkpoint at the server's position */
                    rc = batch_begin(r, err);
                    r->batch_lsn = f.wal_end;
                    if (rc == 0) rc = flush_batch(r, err);
                    last_lsn_only = now_ms();
                }
                if (rc == 0 && f.reply_requested) rc = send_status(r, r->acked_lsn, 0, err);
            }
            PQfreemem(buf);
            if (rc == 0) rc = maybe_ack(r, err);
            if (rc == 0 && r->batch_open && !r->in_pg_txn &&
                (r->batch_changes >= BATCH_MAX_CHANGES ||
                 elapsed_ms(&r->batch_started) >= BATCH_MAX_MS)) {
                rc = flush_batch(r, err);
                if (rc == 0) poll_slot(r);
            }
            continue;
        }
        if (len == 0) {
            /* nothing more is waiting: never hold a finished transaction back */
            if (r->batch_open && !r->in_pg_txn) {
                rc = flush_batch(r, err);
                if (rc != 0) break;
            }
            if (!r->in_pg_txn) {
                rc = maybe_ack(r, err);
                if (rc == 0) rc = run_tasks(r, err);
                if (rc == 0 && !r->batch_open) rc = maybe_compact(r, err);
                if (rc == 0 && !r->batch_open && now_ms() - r->old_check_ms >= 1000) {
                    r->old_check_ms = now_ms();
                    drop_retired(r);
                }
                if (rc == 0 && !r->batch_open && !r->builder) rc = rule_versions(r, err);
                if (rc != 0) break;
            }
            poll_slot(r);
            if (!gw_storage_consistent(r->st) && !r->in_pg_txn && now_ms() - ask_ms >= 250) {
                /* not consistent yet and nothing arrives (an idle database): ask the server
                 * for a keepalive, whose position makes an LSN-only checkpoint past the
                 * snapshot's marks */
                ask_ms = now_ms();
                rc = send_status(r, r->acked_lsn, 1, err);
                if (rc != 0) break;
            }
            if (elapsed_ms(&r->last_status) >= STATUS_INTERVAL_MS) {
                rc = send_status(r, r->acked_lsn, 0, err);
                if (rc != 0) break;
            }
            int fd = PQsocket(r->rc);
            fd_set rfds;
            FD_ZERO(&rfds);
            FD_SET(fd, &rfds);
            FD_SET(r->task_fd, &rfds);
            struct timeval tv = {0, 100000};
            int maxfd = fd > r->task_fd ? fd : r->task_fd;
            if (select(maxfd + 1, &rfds, NULL, NULL, &tv) < 0 && errno != EINTR) {
                rc = gw_err_set(err, GW_ESYS, "repl", "select failed: %s", strerror(errno));
                break;
            }
            if (PQconsumeInput(r->rc) == 0) {
                char m[256];
                rc = gw_err_set(err, GW_EPG, "repl", "lost the replication connection: %s",
                                gw_pg_error(r->rc, m, sizeof(m)));
            }
            continue;
        }
        char m[256];
        if (len == -1) {
            res = PQgetResult(r->rc);
            rc = gw_err_set(err, GW_EPG, "repl", "replication ended: %s",
                            res != NULL && PQresultErrorMessage(res)[0]
                                ? PQresultErrorMessage(res)
                                : "the server closed the stream");
            PQclear(res);
        } else {
            rc = gw_err_set(err, GW_EPG, "repl", "replication failed: %s",
                            gw_pg_error(r->rc, m, sizeof(m)));
        }
    }
    if (rc == 0 && r->batch_open && !r->in_pg_txn) rc = flush_batch(r, err);
    return pipe_stop(r, rc, err);
}

/* ---- the thread ---- */

/* Drop the slot slot when it exists and is not in use: 1 when it is gone, 0 when it is still
 * there (in use: try again later), -1 on an error. */
static int drop_slot(gw_repl_t *r, const char *slot)
{
    const char *pv[1] = {slot};
    gw_err_t err;
    PGresult *res = gw_pg_query_params(
        r->q,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = "
        "$1 AND NOT active",
        1, pv, &err);
    if (res == NULL) return -1;
    PQclear(res);
    res = gw_pg_query_params(r->q, "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", 1, pv,
                             &err);
    int gone = res != NULL && PQntuples(res) == 0;
    if (res == NULL) gone = -1;
    PQclear(res);
    return gone;
}

/* Streams re-evaluate their buckets at a switch; the old version's data waits this long. */
#define DROP_GRACE_MS 10000

/* Retired rule versions (state "retired", "<version>:<slot>,…"): drop each one's slot, then its
 * buckets, ops, rows, lookups and state, one storage commit per version. Serving replicator
 * only, while the serving version is consistent; retried from the stream loop until all are
 * gone (a slot may stay active for a moment after its replicator stopped). */
static void drop_retired(gw_repl_t *r)
{
    if (!r->old_pending || r->builder || r->q == NULL)
        return; /* nothing to drop since the last look (the drain below is not free) */
    if (!gw_storage_consistent(r->st) ||
        (r->switched_ms != 0 && now_ms() - r->switched_ms < DROP_GRACE_MS))
        return;
    if (r->pipe_on) {
        gw_err_t derr;
        if (pipe_drain(r, &derr) != 0) return; /* the stream ends with the apply thread's error */
    }
    char list[2048] = "", legacy[160] = "";
    gw_storage_state_get(r->st, "retired", list, sizeof(list));
    /* a storage of layout 3 named the version it replaced by its slot only */
    gw_storage_state_get(r->st, "old_slot", legacy, sizeof(legacy));
    if (list[0] == '\0' && legacy[0] == '\0') {
        r->old_pending = 0;
        return;
    }
    if (legacy[0] != '\0') {
        const char *us = strrchr(legacy, '_');
        gw_err_t err;
        if (drop_slot(r, legacy) == 1 && gw_storage_begin(r->st, &err) == 0) {
            int rc = retire(r->st, us != NULL ? us + 1 : "0", "", &err);
            if (rc == 0) rc = gw_storage_state_set(r->st, "old_slot", "", &err);
            if (rc == 0)
                gw_storage_commit(r->st, 0, &err);
            else
                gw_storage_rollback(r->st);
        }
        return;
    }
    /* the first entry */
    char entry[256];
    const char *comma = strchr(list, ',');
    size_t n = comma != NULL ? (size_t)(comma - list) : strlen(list);
    snprintf(entry, sizeof(entry), "%.*s", (int)n, list);
    const char *rest = comma != NULL ? comma + 1 : "";
    char *colon = strchr(entry, ':');
    const char *slot = colon != NULL ? colon + 1 : "";
    if (colon != NULL) *colon = '\0';
    if (slot[0] != '\0' && drop_slot(r, slot) != 1) return;
    uint64_t dropped = 0;
    gw_err_t err;
    int rc = gw_storage_begin(r->st, &err);
    if (rc == 0 && entry[0] != '\0' && strcmp(entry, r->version) != 0)
        rc = gw_storage_drop_version(r->st, entry, &dropped, &err);
    if (rc == 0) rc = gw_storage_state_set(r->st, "retired", rest, &err);
    if (rc == 0)
        rc = gw_storage_commit(r->st, 0, &err);
    else
        gw_storage_rollback(r->st);
    char msg[512];
    if (rc == 0)
        gw_info("repl", "dropped a previous rule version's slot and data",
                "version=%s slot=%s buckets=%llu", entry, slot[0] ? slot : "none",
                (unsigned long long)dropped);
    else
        gw_warn("repl", "could not drop a previous rule version; retrying",
                "version=%s error=\"%s\"", entry, gw_err_format(&err, msg, sizeof(msg)));
}

#define RULES_POLL_MS 2000

/* Serving replicator, idle, pipeline drained: look at the rules file; a changed one that compiles
 * starts a builder (replacing one of other rules). */
static int poll_rules(gw_repl_t *r, gw_err_t *err)
{
    const char *path = r->cfg->sync_rules.path;
    struct file_id id;
    if (rules_file_id(r, &id) != 0)
        return 0; /* being replaced, or gone: the version serving goes on */
    if (same_file_id(&id, &r->rules_file)) {
        r->rules_seen_set = 0;
        return 0;
    }
    /* act on a change only once the file stayed the same for one more look, so that a file
     * being written in place is never read half-way */
    if (!r->rules_seen_set || !same_file_id(&id, &r->rules_seen)) {
        r->rules_seen = id;
        r->rules_seen_set = 1;
        return 0;
    }
    r->rules_file = id;
    r->rules_seen_set = 0;
    gw_buf_t text = GW_BUF_INIT;
    rules_set_t *rules = NULL;
    char hash[32];
    gw_err_t lerr;
    if (gw_rules_load_text(path, &rules, hash, sizeof(hash), &text, NULL, &lerr) != 0) {
        char msg[512];
        if (strcmp(hash, r->rules_bad_hash) != 0)
            gw_error("repl", "the changed sync rules do not load; the serving version goes on",
                     "version=%s error=\"%s\"", r->version, gw_err_format(&lerr, msg, sizeof(msg)));
        snprintf(r->rules_bad_hash, sizeof(r->rules_bad_hash), "%s", hash);
        gw_buf_free(&text);
        return 0;
    }
    gw_buf_append(&text, "", 1); /* NUL-terminated for storage */
    int rc = 0;
    if (strcmp(hash, r->rules_hash) == 0) {
        if (r->next != NULL)
            rc = builder_discard(r, "the rules file is the serving version's again", err);
    } else if (r->next == NULL || strcmp(hash, r->next->rules_hash) != 0) {
        gw_info("repl", "the sync rules file changed", "file=%s serving=%s", path, r->version);
        if (r->next != NULL) rc = builder_discard(r, "the rules file changed again", err);
        if (rc == 0) rc = builder_create(r, rules, hash, text.data, NULL, err);
        if (rc == 0) rc = gw_repl_start(r->next, err);
    }
    rules_unref(rules);
    gw_buf_free(&text);
    return rc;
}

/* Serving replicator, idle: switch to the builder's version once it has everything this one
 * serves; otherwise poll the rules file. */
static int rule_versions(gw_repl_t *r, gw_err_t *err)
{
    gw_repl_t *b = r->next;
    if (b != NULL && b->running && gw_storage_consistent(b->st) &&
        atomic_load(&b->m_lsn) >= atomic_load(&r->m_lsn)) {
        r->switch_wanted = 1; /* the stream loop ends; repl_main switches */
        return 0;
    }
    if (now_ms() - r->rules_poll_ms < RULES_POLL_MS) return 0;
    r->rules_poll_ms = now_ms();
    if (r->pipe_on && pipe_drain(r, err) != 0) return GW_EIO;
    return poll_rules(r, err);
}

/*
 * Take the builder's version over (repl_main, with this replicator's stream stopped): stop the
 * builder, make its version the serving one in one storage commit whose checkpoint is above
 * every op id handed out, move serving (readers, hook, durable callback) to its storage writer,
 * and swap the version's rules, slot and storage into r. Then tell the request handlers.
 */
static void do_switch(gw_repl_t *r)
{
    gw_repl_t *b = r->next;
    r->switch_wanted = 0;
    if (b == NULL) return;
    gw_repl_stop(b);
    set_next(r, NULL); /* diagnostics stop looking at it; restored if the switch fails */
    gw_storage_t *nst = b->st, *ost = r->st;
    gw_storage_settle(ost);
    gw_storage_settle(nst);
    gw_err_t err;
    int rc = gw_storage_consistent(nst) ? 0 : GW_EUNAVAIL;
    if (rc == 0) rc = gw_storage_begin(nst, &err);
    if (rc == 0) rc = gw_storage_advance_checkpoint(nst, &err);
    if (rc == 0) rc = gw_storage_state_set(nst, "serving", b->version, &err);
    if (rc == 0) rc = gw_storage_state_set(nst, "building", "", &err);
    if (rc == 0) rc = retire(nst, r->version, r->slot, &err);
    if (rc == 0)
        rc = gw_storage_commit(nst, 0, &err);
    else if (gw_storage_in_txn(nst))
        gw_storage_rollback(nst);
    if (rc != 0) {
        char msg[512];
        gw_error("repl", "could not switch to the new rule version; it goes on building",
                 "version=%s error=\"%s\"", b->version,
                 rc == GW_EUNAVAIL ? "not consistent" : gw_err_format(&err, msg, sizeof(msg)));
        set_next(r, b);
        gw_repl_start(b, &err);
        return;
    }
    /* from here on the new version is the serving one, on disk and for this process */
    char old_version[32];
    snprintf(old_version, sizeof(old_version), "%s", r->version);
    gw_storage_set_durable_fn(ost, NULL, NULL);
    gw_storage_set_durable_fn(nst, on_durable, r);
    gw_storage_move_pending(ost, nst);
    gw_storage_hook_fn hook;
    void *hook_ud;
    gw_storage_get_hook(ost, &hook, &hook_ud);
    gw_storage_set_hook(nst, hook, hook_ud);
    gw_storage_set_hook(ost, NULL, NULL);
    gw_storage_set_serving(ost, 0);
    gw_storage_set_serving(nst, 1);
    r->st = nst;
    b->st = ost;
    rules_set_t *rs = r->rules;
    r->rules = b->rules;
    b->rules = rs;
    snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", b->rules_hash);
    pthread_mutex_lock(&r->diag_lock);
    snprintf(r->version, sizeof(r->version), "%s", b->version);
    snprintf(r->slot, sizeof(r->slot), "%s", b->slot);
    pthread_mutex_unlock(&r->diag_lock);
    r->nocp_lsn = b->nocp_lsn;
    atomic_store(&r->durable_lsn, 0);
    r->acked_lsn = r->pos_lsn = 0;
    r->old_pending = 1;
    r->switched_ms = now_ms();
    gw_repl_destroy(b); /* closes the old version's writer */
    uint64_t last_op, lsn;
    gw_storage_checkpoint(nst, &last_op, &lsn);
    atomic_store(&r->m_last_op, last_op);
    atomic_store(&r->m_lsn, lsn);
    const gw_active_t *a = add_active(r, r->rules, r->version, last_op);
    char t[32];
    gw_info("repl", "switched to the new rule version",
            "version=%s old_version=%s checkpoint=%llu lsn=%s", r->version, old_version,
            (unsigned long long)last_op, gw_lsn_format(lsn, t, sizeof(t)));
    if (r->on_switch != NULL) r->on_switch(a, r->switch_ud);
}

static int run_once(gw_repl_t *r, gw_err_t *err)
{
    set_phase(r, 0, NULL);
    r->q = gw_pg_connect(r->uri, 0, "ferry", err);
    if (r->q == NULL) return GW_EPG;
    int rc = check_source(r, err);
    if (rc != 0) return rc;
    r->rc = gw_pg_connect(r->uri, 1, "ferry replication", err);
    if (r->rc == NULL) return GW_EPG;
    set_phase(r, 1, NULL);
    rc = ensure_slot(r, err);
    if (rc != 0) return rc;
    set_phase(r, 2, NULL);
    rc = snapshot(r, err);
    if (rc != 0) return rc;
    drop_retired(r);
    return stream(r, err);
}

static void *repl_main(void *arg)
{
    gw_repl_t *r = arg;
    pthread_setname_np(pthread_self(), r->builder ? "ferry-build" : "ferry-repl"); /* top -H */
    unsigned backoff = 500;
    r->compact_ms = now_ms(); /* the first periodic compaction comes one interval after start */
    while (!atomic_load(&r->stop)) {
        gw_err_t err;
        gw_err_clear(&err);
        int rc = run_once(r, &err);
        disconnect(r);
        if (atomic_load(&r->stop)) break;
        if (rc == 0 && r->switch_wanted) {
            do_switch(r);
            backoff = 500;
            continue;
        }
        char msg[1024];
        if (rc != 0) {
            gw_error("repl", "replication stopped; retrying", "error=\"%s\" retry_ms=%u",
                     gw_err_format(&err, msg, sizeof(msg)), backoff);
            pthread_mutex_lock(&r->diag_lock);
            snprintf(r->diag.last_error, sizeof(r->diag.last_error), "%.200s", msg);
            pthread_mutex_unlock(&r->diag_lock);
            if (!gw_storage_consistent(r->st) && err.code != GW_EUNAVAIL)
                gw_ready_set(r->ready_id, 0, msg);
        }
        atomic_store(&r->m_phase, 4);
        for (unsigned waited = 0; waited < backoff && !atomic_load(&r->stop); waited += 100)
            usleep(100000);
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    return NULL;
}

int gw_repl_start(gw_repl_t *r, gw_err_t *err)
{
    atomic_store(&r->stop, 0);
    if (pthread_create(&r->tid, NULL, repl_main, r) != 0)
        return gw_err_set(err, GW_ESYS, "repl", "could not start the replication thread");
    r->running = 1;
    if (r->next != NULL && !r->next->running) return gw_repl_start(r->next, err);
    return 0;
}

void gw_repl_metrics(gw_buf_t *out, void *arg)
{
    gw_repl_t *r = arg;
    uint64_t lsn = atomic_load(&r->m_lsn), end = atomic_load(&r->m_server_wal_end);
    gw_buf_puts(out,
                "# HELP ferry_replication_phase Replicator phase (0 check, 1 slot, 2 snapshot, "
                "3 streaming, 4 retrying).\n# TYPE ferry_replication_phase gauge\n");
    gw_buf_printf(out, "ferry_replication_phase %d\n", atomic_load(&r->m_phase));
    gw_buf_puts(out, "# TYPE ferry_snapshot_rows_total counter\n");
    gw_buf_printf(out, "ferry_snapshot_rows_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_snapshot_rows));
    gw_buf_puts(out, "# TYPE ferry_snapshot_rows_estimated gauge\n");
    gw_buf_printf(out, "ferry_snapshot_rows_estimated %llu\n",
                  (unsigned long long)atomic_load(&r->m_snapshot_estimate));
    gw_buf_puts(out, "# TYPE ferry_replication_changes_total counter\n");
    gw_buf_printf(out, "ferry_replication_changes_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_changes));
    gw_buf_puts(out, "# TYPE ferry_replication_transactions_total counter\n");
    gw_buf_printf(out, "ferry_replication_transactions_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_txns));
    gw_buf_puts(out, "# TYPE ferry_storage_commits_total counter\n");
    gw_buf_printf(out, "ferry_storage_commits_total %llu\n",
                  (unsigned long long)atomic_load(&r->m_commits));
    gw_buf_puts(out, "# HELP ferry_storage_commit_seconds_total Time spent committing to storage "
                     "(writing the WAL; the syncer thread syncs it).\n"
                     "# TYPE ferry_storage_commit_seconds_total counter\n");
    gw_buf_printf(out, "ferry_storage_commit_seconds_total %.6f\n",
                  (double)atomic_load(&r->m_commit_us) / 1e6);
    gw_hist_render(out, &r->h_commit, "ferry_storage_commit_duration_seconds",
                   "Duration of each storage commit (writing the WAL; the syncer thread "
                   "syncs it).");
    gw_hist_render(out, &r->h_source, "ferry_replication_source_to_storage_seconds",
                   "From a Postgres commit to the storage commit that holds it (the "
                   "first transaction of each batch).");
    gw_buf_puts(out, "# HELP ferry_replication_lag_bytes WAL the server has sent past our last "
                     "commit.\n# TYPE ferry_replication_lag_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_lag_bytes %llu\n",
                  (unsigned long long)(end > lsn ? end - lsn : 0));
    gw_buf_puts(out, "# HELP ferry_replication_lag_seconds Age of the transaction being applied "
                     "while behind.\n# TYPE ferry_replication_lag_seconds gauge\n");
    gw_buf_printf(out, "ferry_replication_lag_seconds %.3f\n",
                  lag_seconds(r, end > lsn ? end - lsn : 0));
    gw_buf_puts(out, "# HELP ferry_replication_stored_lsn Source position of the last storage "
                     "commit.\n# TYPE ferry_replication_stored_lsn gauge\n");
    gw_buf_printf(out, "ferry_replication_stored_lsn %llu\n", (unsigned long long)lsn);
    gw_buf_puts(out, "# TYPE ferry_replication_last_op gauge\n");
    gw_buf_printf(out, "ferry_replication_last_op %llu\n",
                  (unsigned long long)atomic_load(&r->m_last_op));
    pthread_mutex_lock(&r->diag_lock);
    gw_buf_puts(out, "# HELP ferry_replication_slot_info The replication slot and its wal_status."
                     "\n# TYPE ferry_replication_slot_info gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_info{slot=\"%s\",wal_status=\"%s\"} 1\n", r->slot,
                  r->diag.wal_status);
    gw_buf_puts(out, "# HELP ferry_replication_slot_retained_bytes WAL the slot keeps on the "
                     "server.\n# TYPE ferry_replication_slot_retained_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_retained_bytes %llu\n",
                  (unsigned long long)r->diag.retained);
    gw_buf_puts(out, "# HELP ferry_replication_slot_safe_wal_size_bytes WAL that may still be "
                     "written before the slot is lost (-1: unlimited).\n"
                     "# TYPE ferry_replication_slot_safe_wal_size_bytes gauge\n");
    gw_buf_printf(out, "ferry_replication_slot_safe_wal_size_bytes %lld\n",
                  (long long)r->diag.safe_wal_size);
    gw_buf_puts(out, "# TYPE ferry_replication_confirmed_lsn gauge\n");
    gw_buf_printf(out, "ferry_replication_confirmed_lsn %llu\n",
                  (unsigned long long)r->diag.confirmed);
    gw_buf_puts(out, "# TYPE ferry_storage_ops_per_second gauge\n");
    gw_buf_printf(out, "ferry_storage_ops_per_second %.1f\n", r->diag.ops_per_s);
    gw_buf_puts(out, "# TYPE ferry_storage_buckets gauge\n");
    gw_buf_printf(out, "ferry_storage_buckets %llu\n", (unsigned long long)r->diag.buckets);
    gw_buf_puts(out, "# TYPE ferry_storage_rows gauge\n");
    gw_buf_printf(out, "ferry_storage_rows %llu\n", (unsigned long long)r->diag.rows);
    gw_buf_puts(out, "# TYPE ferry_storage_ops gauge\n");
    gw_buf_printf(out, "ferry_storage_ops %llu\n", (unsigned long long)r->diag.ops);
    pthread_mutex_unlock(&r->diag_lock);
    gw_buf_puts(out, "# HELP ferry_rules_version_building A new rule version being built beside "
                     "the serving one (1 with its version and phase; none while there is none).\n"
                     "# TYPE ferry_rules_version_building gauge\n");
    pthread_mutex_lock(&r->next_lock);
    if (r->next != NULL)
        gw_buf_printf(out, "ferry_rules_version_building{version=\"%s\",phase=\"%s\"} 1\n",
                      r->next->version, phase_names[atomic_load(&r->next->m_phase)]);
    pthread_mutex_unlock(&r->next_lock);
}
