/* gw_repl.h -- the replicator: Postgres logical replication into bucket storage
 *
 * One thread. It checks the source (wal_level, publication, tables, replica identity, role),
 * creates the permanent slot, snapshots every table the rules read in key order and in chunks
 * (resumable), then streams pgoutput changes, turning each committed transaction into ops with
 * the rules and writing them to storage in one storage transaction with the commit LSN before
 * acknowledging that LSN. It is the only storage writer. Failures (Postgres down, source not
 * ready) are logged with the SQL that fixes them and retried with backoff; readiness stays 503
 * until storage holds a consistent checkpoint.
 */
#ifndef GW_REPL_H
#define GW_REPL_H

#include "gw_config.h"
#include "gw_err.h"
#include "gw_storage.h"
#include "rules/rules.h"

typedef struct gw_repl gw_repl_t;

/**
 * Prepare a replicator for cfg using rules (a reference is taken) and storage (owned by the
 * replicator from now on; it closes it). rules_hash identifies the rules text: the storage keeps
 * the rule version of the last hash, and a different hash starts a new version (new bucket ids,
 * new slot, new snapshot; op ids continue). Returns 0 and *out, or GW_EIO with err set.
 */
int gw_repl_create(const gw_config_t *cfg, rules_set_t *rules, const char *rules_hash,
                   gw_storage_t *storage, gw_repl_t **out, gw_err_t *err);

/** The rule version in use ("3"): the prefix of bucket ids. Valid while r lives. */
const char *gw_repl_version(const gw_repl_t *r);

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
