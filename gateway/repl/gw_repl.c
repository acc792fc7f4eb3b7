/* gw_repl.c -- the replicator: lifecycle, the thread, tasks from other threads (see gw_repl.h)
 *
 * State machine (one pass of run_once(); any failure returns to BACKOFF):
 *
 *   CHECK ------------------> SLOT ------------------> SNAPSHOT ----------------> STREAM
 *   gw__repl_check_source()   gw__repl_ensure_slot()   gw__repl_snapshot()        gw__repl_stream()
 *     | fails                 creates the permanent    per table, chunked in key  START_REPLICATION
 *     v                       slot before any table    order; progress stored     from the stored
 *   BACKOFF (0.5 s,           is read                  per chunk; marks "no       LSN; commits
 * become doubling to 5 s)                                   checkpoint before"         storage
 * commits, then the LSN is acked STREAM ends with switch_wanted -> gw__repl_do_switch()
 * (gw_repl_versions.c) -> CHECK
 *
 * Invariants:
 *   1. A storage commit holds every change of the source transactions it covers plus their end
 *      LSN; the LSN is acknowledged to Postgres only after that commit is durable
 *      (gw__repl_flush_batch(), gw__repl_maybe_ack()).
 *   2. A transaction whose commit LSN is below the stored LSN was already applied and is skipped
 *      (exactly once across restarts).
 *   3. Storage becomes consistent at the first commit at or past the highest "no checkpoint
 *      before" mark of the snapshot; until then readiness is 503.
 *   4. A row with an unchanged-TOAST value is completed from the stored copy (or re-read by key)
 *      before it is evaluated; a row with holes is never evaluated. The copy keeps only values
 *      of at least COPY_MIN_BYTES (shorter ones are almost never stored out of line, and a row
 *      copy of every value cost a fifth of replication); a shorter unchanged value is re-read.
 *
 * While streaming, the replicator thread receives, decodes and evaluates the rules; an apply
 * thread writes the results to storage in the same order (gw_repl_apply.c). Anything that
 * reads the writer's storage from the replicator thread first drains the pipeline.
 *
 * Where each part lives: gw_repl_int.h. Rule versions (a builder beside the serving
 * replicator, the switch, retiring): gw_repl_versions.c.
 */
#include "repl/gw_repl_int.h"
#include "base/gw_log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>

const char *const gw__repl_phase_names[] = {"checking source", "creating slot", "snapshot",
                                            "streaming",       "retrying",      "standby",
                                            "rebuilding"};

void gw__repl_set_phase(gw_repl_t *r, int phase, const char *reason)
{
    atomic_store(&r->m_phase, phase);
    if (!gw_storage_consistent(r->st))
        gw_ready_set(r->ready_id, 0, reason != NULL ? reason : gw__repl_phase_names[phase]);
}

static int valid_name(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 63) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    return 1;
}

/* ---- lifecycle ---- */

/* The storage's durable callback (syncer thread): note the LSN, wake the replicator to ack it. */
void gw__repl_on_durable(uint64_t lsn, void *ud)
{
    gw_repl_t *r = ud;
    uint64_t cur = atomic_load(&r->durable_lsn);
    while (lsn > cur && !atomic_compare_exchange_weak(&r->durable_lsn, &cur, lsn)) {
    }
    if (atomic_exchange(&r->storage_bad, 0)) gw_ready_set(r->storage_ready_id, 1, NULL);
    uint64_t one = 1;
    ssize_t w = write(r->task_fd, &one, sizeof(one));
    (void)w;
}

/* A replicator for rules of version on st (its namespace is version); not started. */
gw_repl_t *gw__repl_new(const gw_config_t *cfg, rules_set_t *rules, const char *hash,
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
    r->timeout_s = cfg->replication.timeout > 0 ? cfg->replication.timeout : 30;
    /* unique to this process, so a connection Postgres still holds after the network went
     * silent is recognised as our own (gw__repl_ensure_slot ends it) */
    char host[32] = "";
    gethostname(host, sizeof(host) - 1);
    snprintf(r->appname, sizeof(r->appname), "ferry replication %.31s:%d", host, (int)getpid());
    atomic_store(&r->msg_ms, gw__repl_now_ms()); /* silence is counted from the start */
    r->storage_ready_id = -1;
    r->sopts = gw_storage_opts(st);
    pthread_mutex_init(&r->diag_lock, NULL);
    pthread_mutex_init(&r->next_lock, NULL);
    snprintf(r->diag.wal_status, sizeof(r->diag.wal_status), "unknown");
    r->rules = rules_ref(rules);
    snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", hash);
    snprintf(r->version, sizeof(r->version), "%s", version);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, version);
    r->st = st;
    gw_storage_info_t info;
    gw_storage_info(st, &info);
    r->shared = info.shared;
    gw_map_init(&r->rels);
    gw_arena_init(&r->arena, 65536);
    r->ready_id = -1;
    pthread_mutex_init(&r->task_lock, NULL);
    r->task_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    gw_storage_set_durable_fn(st, gw__repl_on_durable, r);
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
    gw_repl_t *r = gw__repl_new(cfg, rules, rules_hash, "", storage);
    r->ready_id = gw_ready_register("replication", "starting");
    r->old_pending = 1;
    snprintf(r->file_hash, sizeof(r->file_hash), "%s", rules_hash);
    int lead = gw_storage_lead(storage, err);
    if (lead == 0) {
        /* another instance replicates: serve what it stored (gw_repl_lead.c) */
        int rc = gw__repl_follow_init(r, err);
        if (rc != 0) {
            gw_storage_set_durable_fn(storage, NULL, NULL);
            r->st = NULL;
            gw_repl_destroy(r);
            return rc;
        }
        gw__repl_rules_file_id(r, &r->rules_file);
        gw__repl_note_storage(r);
        *out = r;
        return 0;
    }
    rules_set_t *serve_rules = NULL;
    int rc = lead < 0
                 ? lead
                 : gw__repl_resolve_version(r, rules, rules_hash, rules_text, &serve_rules, err);
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
    if (gw_storage_state_get(storage, "rules_hash", h, sizeof(h)) > 0)
        snprintf(r->rules_hash, sizeof(r->rules_hash), "%s", h);
    snprintf(r->slot, sizeof(r->slot), "%s_%s", r->slot_prefix, r->version);
    gw__repl_add_active(r, r->rules, r->version, 0);
    gw__repl_rules_file_id(r, &r->rules_file);
    gw__repl_note_storage(r);
    /* the live check holds r: registered only once r is sure to live (until after HTTP stops) */
    gw_ready_register_fn("replication source", gw__repl_source_ready, r);
    r->storage_ready_id = gw_ready_register("storage", NULL);
    gw_ready_set(r->storage_ready_id, 1, NULL);
    /* ready only once the source is known to be the one this storage was built from */
    *out = r;
    return 0;
}

void gw__repl_free_rel(const char *key, void *value, void *ud)
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

static void disconnect(gw_repl_t *r)
{
    if (r->q != NULL) PQfinish(r->q);
    if (r->rc != NULL) PQfinish(r->rc);
    r->q = r->rc = NULL;
    gw_map_each(&r->rels, gw__repl_free_rel, NULL);
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
    gw__repl_set_next(r, NULL);
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
    gw__repl_free_tables(r);
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
    pthread_mutex_destroy(&r->diag_lock);
    pthread_mutex_destroy(&r->next_lock);
    free(r);
}

/* ---- tasks from other threads ---- */

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

/* A gw_repl_call: the task, its copies of arg and result, and the waiter's handshake. Freed by
 * whichever of the waiter and the task lets go of it last. */
typedef struct repl_call {
    gw_repl_task_t task;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs, finished, rc;
    int (*run)(gw_storage_t *st, void *arg, void *result, gw_err_t *err);
    void *arg, *result; /* in the same allocation, after the struct */
} repl_call_t;

static void call_unref(repl_call_t *c)
{
    pthread_mutex_lock(&c->lock);
    int last = --c->refs == 0;
    pthread_mutex_unlock(&c->lock);
    if (last) {
        pthread_mutex_destroy(&c->lock);
        pthread_cond_destroy(&c->cond);
        free(c);
    }
}

static int call_run(gw_storage_t *st, void *ud, gw_err_t *err)
{
    repl_call_t *c = ud;
    return c->run(st, c->arg, c->result, err);
}

static void call_done(void *ud, int rc)
{
    repl_call_t *c = ud;
    pthread_mutex_lock(&c->lock);
    c->finished = 1;
    c->rc = rc;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
    call_unref(c);
}

int gw_repl_call(gw_repl_t *r, int (*run)(gw_storage_t *st, void *arg, void *result, gw_err_t *err),
                 const void *arg, size_t arg_len, void *result, size_t result_len, int timeout_ms)
{
    repl_call_t *c = gw_xcalloc(1, sizeof(*c) + arg_len + result_len);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    c->refs = 2; /* the waiter and the task */
    c->run = run;
    c->arg = (char *)(c + 1);
    c->result = (char *)(c + 1) + arg_len;
    if (arg_len > 0) memcpy(c->arg, arg, arg_len);
    c->task.run = call_run;
    c->task.done = call_done;
    c->task.ud = c;
    gw_repl_submit(r, &c->task);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->lock);
    while (!c->finished)
        if (pthread_cond_timedwait(&c->cond, &c->lock, &deadline) == ETIMEDOUT) break;
    int finished = c->finished, rc = c->rc;
    if (finished && rc == 0 && result_len > 0) memcpy(result, c->result, result_len);
    pthread_mutex_unlock(&c->lock);
    call_unref(c);
    return !finished ? GW_ETIMEOUT : rc;
}

int gw_repl_ready(gw_repl_t *r)
{
    return atomic_load(&r->ready);
}

/* Run queued tasks in the open batch, commit it, then report each result. */
int gw__repl_run_tasks(gw_repl_t *r, gw_err_t *err)
{
    uint64_t drain;
    ssize_t n = read(r->task_fd, &drain, sizeof(drain));
    (void)n;
    pthread_mutex_lock(&r->task_lock);
    gw_repl_task_t *list = r->task_head;
    r->task_head = r->task_tail = NULL;
    pthread_mutex_unlock(&r->task_lock);
    if (list == NULL) return 0;
    int rc = gw__repl_batch_begin(r, err);
    if (rc == 0) rc = gw__repl_storage_direct(r, err);
    for (gw_repl_task_t *t = list; t != NULL; t = t->next)
        t->rc = rc == 0 ? t->run(r->st, t->ud, err) : rc;
    if (rc == 0) rc = gw__repl_flush_batch_mode(r, 1, err); /* results are reported once durable */
    for (gw_repl_task_t *t = list, *next; t != NULL; t = next) {
        next = t->next;
        t->done(t->ud, rc != 0 ? rc : t->rc);
    }
    return rc;
}

/* ---- the thread ---- */

static int run_once(gw_repl_t *r, gw_err_t *err)
{
    gw__repl_set_phase(r, 0, NULL);
    r->q = gw_pg_connect_timeout(r->uri, 0, "ferry", (int)r->timeout_s, err);
    if (r->q == NULL) return GW_EPG;
    int rc = gw__repl_check_source(r, err);
    if (rc != 0) return rc;
    r->rc = gw_pg_connect_timeout(r->uri, 1, r->appname, (int)r->timeout_s, err);
    if (r->rc == NULL) return GW_EPG;
    gw__repl_set_phase(r, 1, NULL);
    rc = gw__repl_ensure_slot(r, err);
    if (rc != 0 || r->switch_wanted) return rc; /* the slot was lost and rebuilt: switch */
    gw__repl_set_phase(r, 2, NULL);
    /* fault injection for tests: FERRY_TEST_BUILD_HOLD=FILE holds a builder before its snapshot
     * while FILE exists, so a test sees the serving version's state during a build */
    const char *hold = r->builder ? getenv("FERRY_TEST_BUILD_HOLD") : NULL;
    if (hold != NULL && access(hold, F_OK) == 0) {
        gw_info("repl", "test hold: build paused", "version=%s", r->version);
        while (access(hold, F_OK) == 0 && !atomic_load(&r->stop))
            usleep(50000);
    }
    rc = gw__repl_snapshot(r, err);
    if (rc != 0) return rc;
    gw__repl_drop_retired(r);
    return gw__repl_stream(r, err);
}

static void *repl_main(void *arg)
{
    gw_repl_t *r = arg;
    pthread_setname_np(pthread_self(), r->builder ? "ferry-build" : "ferry-repl"); /* top -H */
    unsigned backoff = 500;
    r->compact_ms =
        gw__repl_now_ms(); /* the first periodic compaction comes one interval after start */
    while (!atomic_load(&r->stop)) {
        gw_err_t err;
        gw_err_clear(&err);
        if (r->shared && !r->builder) {
            /* only the instance that leads the storage replicates (gw_repl_lead.c) */
            int lead = gw_storage_lead(r->st, &err);
            gw__repl_note_storage(r);
            if (lead != 1) {
                gw__repl_standby(r, lead, &err);
                continue;
            }
            if (r->standby && gw__repl_take_over(r, &err) != 0) {
                char msg[1024];
                gw_error("repl", "could not take over replication; retrying", "error=\"%s\"",
                         gw_err_format(&err, msg, sizeof(msg)));
                gw__repl_standby(r, 0, NULL);
                continue;
            }
            backoff = 500;
        }
        int rc = run_once(r, &err);
        disconnect(r);
        if (atomic_load(&r->stop)) break;
        if (rc == 0 && r->switch_wanted) {
            gw__repl_do_switch(r);
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
            char why[512];
            if (atomic_load(&r->src_state) == GW__SRC_OK &&
                gw__repl_source_silent(r, why, sizeof(why)))
                gw__repl_source_set(r, GW__SRC_SILENT, why);
            if (strcmp(err.where, "storage") == 0 && r->storage_ready_id >= 0) {
                /* a full disk, an I/O error: nothing new is served until a commit succeeds
                 * again (gw__repl_on_durable), which the retries find out by themselves */
                gw_storage_info_t si;
                memset(&si, 0, sizeof(si));
                gw_storage_info(r->st, &si);
                snprintf(why, sizeof(why),
                         "could not write bucket storage \"%.200s\": %.200s; retrying",
                         si.where[0] != '\0'      ? si.where
                         : r->sopts->path != NULL ? r->sopts->path
                                                  : "",
                         err.message);
                atomic_store(&r->storage_bad, 1);
                gw_ready_set(r->storage_ready_id, 0, why);
            }
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
