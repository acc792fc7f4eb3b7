/* gw_repl.h -- the replicator: Postgres logical replication into bucket storage
 *
 * One thread. It checks the source (wal_level, publication, tables, replica identity, role),
 * creates the permanent slot, snapshots every table the rules read in key order and in chunks
 * (resumable), then streams pgoutput changes, turning each committed transaction into ops with
 * the rules and writing them to storage in one storage transaction with the commit LSN before
 * acknowledging that LSN. It is the only writer of the serving rule version's storage. When the
 * rules change it runs a second replicator (a builder) that builds the new version beside the
 * serving one and then takes it over (see gw_repl_versions.c). Failures (Postgres
 * down, source not ready) are logged with the SQL that fixes them and retried with backoff;
 * readiness stays 503 until storage holds a consistent checkpoint.
 */
#ifndef GW_REPL_H
#define GW_REPL_H

#include "base/gw_buf.h"
#include "base/gw_err.h"
#include "config/gw_config.h"
#include "rules/rules.h"

typedef struct gw_repl gw_repl_t;
/* The storage writer (storage/gw_storage.h): callers that use it include that header. */
typedef struct gw_storage gw_storage_t;

/** The rules that serve requests and their version ("3", the bucket-id prefix). Immutable;
 *  valid until the replicator is destroyed, even after a newer one took over. */
typedef struct gw_active {
    rules_set_t *rules;
    char version[32];
    uint64_t since_op; /* the checkpoint it took over at: serve no older one with these rules */
} gw_active_t;

/**
 * Prepare a replicator for cfg and storage (owned by the replicator from now on; it closes it).
 * rules (a reference is taken) were compiled from rules_text (NUL-terminated), whose hash is
 * rules_hash. The storage keeps each rule version's hash and text:
 *   - same hash as the version the storage serves: that version goes on;
 *   - another hash: the stored version keeps serving with its stored rules while a new version
 *     is built beside it (new slot, snapshot and buckets; op ids continue) and takes over once
 *     it caught up; a storage without the old text (written by an older ferry) builds the new
 *     version in its place instead (readiness 503 until it is consistent);
 *   - a fresh storage starts version 1.
 * While running, the rules file is looked at every 2 s (a change is read once the file stayed
 * the same for one more look); a changed file that compiles starts a
 * new version the same way (a file that does not compile is logged and ignored).
 * Returns 0 and *out, or GW_EIO / GW_ERULES with err set.
 */
int gw_repl_create(const gw_config_t *cfg, rules_set_t *rules, const char *rules_hash,
                   const char *rules_text, gw_storage_t *storage, gw_repl_t **out, gw_err_t *err);

/** The rules and version serving now (any thread). */
const gw_active_t *gw_repl_active(gw_repl_t *r);

/** The rule version serving now ("3"): the prefix of bucket ids. Valid while r lives. */
const char *gw_repl_version(gw_repl_t *r);

/**
 * Install fn, called on the replicator thread right after a new rule version took over (its
 * checkpoint is served from then on), with the new rules and version. Set before gw_repl_start.
 */
void gw_repl_on_switch(gw_repl_t *r, void (*fn)(const gw_active_t *now, void *ud), void *ud);

/** Start the replication thread. 0 or GW_ESYS. */
int gw_repl_start(gw_repl_t *r, gw_err_t *err);

/** Ask the thread to stop and join it (bounded by Postgres timeouts; about a second). */
void gw_repl_stop(gw_repl_t *r);

/** Release everything (stops first when running). NULL is fine. */
void gw_repl_destroy(gw_repl_t *r);

/**
 * Work for the storage writer from another thread. run() executes on the replicator thread
 * inside a storage transaction; after that transaction committed (or failed) done() runs there
 * too with run's result (GW_EUNAVAIL when the replicator stopped first). Neither may block.
 * The submitter keeps the task alive until done() ran.
 */
typedef struct gw_repl_task gw_repl_task_t;
struct gw_repl_task {
    gw_repl_task_t *next; /* internal */
    int (*run)(gw_storage_t *st, void *ud, gw_err_t *err);
    void (*done)(void *ud, int rc);
    void *ud;
    int rc; /* internal */
};

/** Queue a task for the replicator (any thread); it runs while replication streams. */
void gw_repl_submit(gw_repl_t *r, gw_repl_task_t *task);

/**
 * Run run(st, arg, result, err) on the replicator thread inside a storage transaction and wait,
 * at most timeout_ms, until that transaction is durable. Blocks: worker threads only, never an
 * event loop. arg (arg_len bytes) is copied before the call returns and result (result_len bytes)
 * is copied back when it finished, so a call that timed out leaves nothing the caller owns
 * behind. Returns 0 with *result filled, GW_ETIMEOUT when it did not finish in time (it may still
 * run), or the run's error / the commit's (GW_EUNAVAIL when the replicator stopped first).
 */
int gw_repl_call(gw_repl_t *r, int (*run)(gw_storage_t *st, void *arg, void *result, gw_err_t *err),
                 const void *arg, size_t arg_len, void *result, size_t result_len, int timeout_ms);

/** Whether storage has a consistent checkpoint (streams and write checkpoints may be served). */
int gw_repl_ready(gw_repl_t *r);

/**
 * Append one JSON object describing replication health to out (any thread): slot, phase, stored
 * and confirmed LSN, lag in bytes and seconds, wal_status, safe_wal_size, retained WAL, ops/s,
 * storage size, buckets, rows, ops, the last error. Slot figures are polled every 5 s.
 */
void gw_repl_diagnostics(gw_repl_t *r, gw_buf_t *out);

/** Append Prometheus lines about replication to out (a gw_metrics collector). */
void gw_repl_metrics(gw_buf_t *out, void *r);

#endif
